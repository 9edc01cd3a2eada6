//! The REST API against the real broker (SPEC §7): rules posted on one
//! instance are in force on every instance, survive restarts and compaction,
//! and every documented error answers as documented.

mod kafka_support;
mod metadata_proxy;

use std::time::{Duration, Instant};

use kafka_support::*;
use serde_json::{Value as Json, json};

const WRITE: &str = "0123456789abcdef-ops";
const READ: &str = "fedcba9876543210-viewer";

const FILE_RULE: &str = r#"
[[rule]]
id = "file-owned"
code = 550
description = "owned by git"
tags = "file_tag"
"#;

/// A request with an optional bearer token and body; the status and body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let (content_type, bytes) = body.unwrap_or(("application/json", b""));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(authorization) = authorization.as_deref() {
        headers.push(("Authorization", authorization));
    }
    http_request(port, method, path, &headers, bytes).unwrap_or((0, String::new()))
}

fn post(port: u16, body: &Json) -> (u16, Json) {
    let text = body.to_string();
    let (code, answer) = request(
        port,
        "POST",
        "/v1/errors",
        Some(WRITE),
        Some(("application/json", text.as_bytes())),
    );
    (code, serde_json::from_str(&answer).unwrap_or(Json::Null))
}

fn setup(test: &str) -> Setup {
    let mut setup = Setup::new(test, &[("git.toml", FILE_RULE)]);
    let tokens = setup.dir.path().join("tokens");
    std::fs::write(&tokens, format!("ops:{WRITE}\nviewer:{READ}:read\n")).unwrap();
    setup.top_level.push(format!(
        "api_tokens_file = {:?}",
        tokens.display().to_string()
    ));
    setup.create_topics(2);
    setup
}

/// Polls `GET path` on `port` until `done(status)`; returns the time taken.
fn until(port: u16, path: &str, what: &str, done: impl Fn(u16) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (code, _) = request(port, "GET", path, Some(READ), None);
        if done(code) {
            return started.elapsed();
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn campaign_event(id: &str, campaign: &str) -> Input {
    let value = event(id, &format!("{id}@example.org"), "pool-a", &[campaign]);
    Input::new(0, Some(id), value.to_string())
}

/// Outcome of each event id, read from the forward and results topics.
fn outcomes(setup: &Setup, expected: usize) -> std::collections::HashMap<String, String> {
    let t = &setup.topics;
    let mut reader = Reader::new(&[&t.forward, &t.results]);
    reader.wait_until(WAIT, "every event decided", |records| {
        records.len() >= expected
    });
    reader
        .records
        .iter()
        .filter_map(|r| Some((id_of(r.value.as_deref())?, r.header("bouncer-outcome")?)))
        .collect()
}

#[test]
fn a_rule_posted_on_one_instance_is_in_force_on_all_and_survives_restarts() {
    let _serial = serial();
    let setup = setup("api-cluster");
    let mut a = setup.start("bouncer-a");
    let mut b = setup.start("bouncer-b");
    a.wait_ready();
    b.wait_ready();

    let (code, rule) = post(
        a.port,
        &json!({"code": 550, "tag": "campaign_api", "description": "cancelled via API"}),
    );
    assert_eq!(code, 201, "{rule}");
    let id = rule["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("api-"), "{id}");
    assert_eq!(rule["created_by"], "ops");
    assert_eq!(rule["source"], "api");
    // In force on A already (answered once applied), on B within seconds.
    assert_eq!(
        request(a.port, "GET", &format!("/v1/errors/{id}"), Some(READ), None).0,
        200
    );
    let propagation = until(b.port, &format!("/v1/errors/{id}"), "the rule on B", |c| {
        c == 200
    });
    eprintln!("propagation to the second instance: {propagation:?}");

    // Events produced now fail, whichever instance decides them.
    let mut producer = TestProducer::new(&setup.topics.input);
    for n in 0..40 {
        let mut input = campaign_event(
            &format!("e{n}"),
            if n % 2 == 0 { "campaign_api" } else { "other" },
        );
        input.partition = n % 2;
        producer.send(&input);
    }
    producer.flush();
    let seen = outcomes(&setup, 40);
    for n in 0..40 {
        let expected = if n % 2 == 0 { "failed" } else { "forwarded" };
        assert_eq!(
            seen.get(&format!("e{n}")).map(String::as_str),
            Some(expected),
            "event e{n}"
        );
    }

    // A DELETE on B ends it on A.
    let (code, body) = request(
        b.port,
        "DELETE",
        &format!("/v1/errors/{id}"),
        Some(WRITE),
        None,
    );
    assert_eq!(code, 204, "{body}");
    until(
        a.port,
        &format!("/v1/errors/{id}"),
        "the delete on A",
        |c| c == 404,
    );

    // A file rule cannot be deleted through the API.
    let (code, body) = request(a.port, "DELETE", "/v1/errors/file-owned", Some(WRITE), None);
    assert_eq!(code, 409, "{body}");
    let (code, _) = post(
        a.port,
        &json!({"id": "file-owned", "code": 550, "tag": "x"}),
    );
    assert_eq!(code, 409);

    // A rule posted while B is down is in force on B before B consumes
    // anything, even for events produced while it was down.
    b.terminate();
    assert!(
        b.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    a.terminate();
    assert!(
        a.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    let mut c = setup.start("bouncer-c");
    c.wait_ready();
    let (code, rule) = post(c.port, &json!({"code": 550, "tag": "campaign_late"}));
    assert_eq!(code, 201, "{rule}");
    c.terminate();
    assert!(
        c.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    for n in 40..60 {
        producer.send(&campaign_event(&format!("e{n}"), "campaign_late"));
    }
    producer.flush();
    // d keeps no per-rule series at all: its matches are metrics under
    // `rule="(other)"`, and the API still counts them for the rule.
    let mut d = setup.start_with("bouncer-d", &["max_rule_series = 0".to_owned()]);
    d.wait_ready();
    let seen = outcomes(&setup, 60);
    for n in 40..60 {
        assert_eq!(
            seen.get(&format!("e{n}")).map(String::as_str),
            Some("failed"),
            "event e{n}"
        );
    }
    let listed = request(d.port, "GET", "/v1/errors", Some(READ), None).1;
    let listed: Json = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(ids.contains(&rule["id"].as_str().unwrap()), "{ids:?}");
    let late = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == rule["id"])
        .unwrap();
    assert_eq!(late["matches_this_instance"], 20, "{late}");
    let metrics = request(d.port, "GET", "/metrics", None, None).1;
    assert!(
        metrics.contains(r#"bouncer_rule_matches_total{mode="enforce",rule="(other)"} 20"#),
        "{metrics}"
    );
    assert!(
        !ids.contains(&id.as_str()),
        "the deleted rule stays deleted: {ids:?}"
    );
    assert!(ids.contains(&"file-owned"));
}

#[test]
fn invalid_control_records_are_skipped_and_reported_and_compaction_keeps_the_rule_set() {
    let _serial = serial();
    let setup = setup("api-control");
    // Make the control topic compact quickly.
    kafka_sh(&[
        "configs",
        "--alter",
        "--entity-type",
        "topics",
        "--entity-name",
        &setup.topics.control,
        "--add-config",
        "segment.ms=200,min.cleanable.dirty.ratio=0.01,delete.retention.ms=100,min.compaction.lag.ms=0",
    ]);
    let mut a = setup.start("bouncer-a");
    a.wait_ready();

    // Records written by hand: one invalid, one of an unknown version, one valid.
    let mut control = TestProducer::new(&setup.topics.control);
    let raw = |key: &str, value: &str| {
        let mut input = Input::new(0, Some(key), value.as_bytes().to_vec());
        input.partition = 0;
        input
    };
    control.send(&raw(
        "api-bad",
        r#"{"v": 1, "rule": {"id": "api-bad", "code": 999, "description": "x", "tags": "t"}}"#,
    ));
    control.send(&raw("api-future", r#"{"v": 2, "rule": {}}"#));
    control.send(&raw(
        "hand-written",
        r#"{"v": 1, "rule": {"id": "hand-written", "code": 451, "description": "by hand", "domain": "hand.example"}, "created_by": "ops", "created_at": "2026-11-27T10:00:00Z"}"#,
    ));
    control.flush();
    until(
        a.port,
        "/v1/errors/hand-written",
        "the valid hand-written record",
        |c| c == 200,
    );
    let status = a.status().unwrap();
    let rejected: Vec<&str> = status["control"]["rejected_records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert!(
        rejected.contains(&"api-bad") && rejected.contains(&"api-future"),
        "{status}"
    );
    let metrics = a.metrics();
    assert!(
        metric(&metrics, "bouncer_control_records_rejected_total", &[]).unwrap_or(0.0) >= 2.0,
        "rejections are counted"
    );

    // Churn: replace and delete rules so compaction has work to do.
    for n in 0..5 {
        let (code, _) = post(
            a.port,
            &json!({"id": "churn", "code": 550, "tag": format!("t{n}")}),
        );
        assert_eq!(code, 201);
    }
    let (code, kept) = post(a.port, &json!({"code": 550, "domain": "kept.example"}));
    assert_eq!(code, 201);
    let (code, gone) = post(a.port, &json!({"code": 550, "domain": "gone.example"}));
    assert_eq!(code, 201);
    let gone = gone["id"].as_str().unwrap().to_owned();
    assert_eq!(
        request(
            a.port,
            "DELETE",
            &format!("/v1/errors/{gone}"),
            Some(WRITE),
            None
        )
        .0,
        204
    );
    let hash_before = a.status().unwrap()["rules"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let written = end_offsets(&setup.topics.control).values().sum::<i64>();

    // Wait until the cleaner has compacted the log (fewer records than written).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // A record after segment.ms rolls the active segment so it can be cleaned.
        std::thread::sleep(Duration::from_millis(300));
        let (code, _) = post(a.port, &json!({"id": "roller", "code": 550, "tag": "roll"}));
        assert_eq!(code, 201);
        let mut reader = Reader::new(&[&setup.topics.control]);
        reader.read_to_end();
        if (reader.records.len() as i64) < written {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the control topic was never compacted"
        );
    }
    let (code, _) = request(a.port, "DELETE", "/v1/errors/roller", Some(WRITE), None);
    assert_eq!(code, 204);
    let hash_before_restart = a.status().unwrap()["rules"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(hash_before, hash_before_restart, "roller added and removed");
    a.terminate();
    assert!(a.wait_exit(Duration::from_secs(20)).is_some());

    let mut b = setup.start("bouncer-b");
    b.wait_ready();
    let status = b.status().unwrap();
    assert_eq!(
        status["rules"]["hash"].as_str().unwrap(),
        hash_before,
        "{status}"
    );
    let kept_path = format!("/v1/errors/{}", kept["id"].as_str().unwrap());
    assert_eq!(request(b.port, "GET", &kept_path, Some(READ), None).0, 200);
    assert_eq!(
        request(
            b.port,
            "GET",
            &format!("/v1/errors/{gone}"),
            Some(READ),
            None
        )
        .0,
        404
    );
    let churn: Json =
        serde_json::from_str(&request(b.port, "GET", "/v1/errors/churn", Some(READ), None).1)
            .unwrap();
    assert_eq!(churn["tags"], json!(["t4"]), "the last write of a key wins");
}

#[test]
fn every_documented_error() {
    // Stops the broker: no other Kafka test may run meanwhile.
    let _serial = serial_exclusive();
    let setup = setup("api-errors");
    let mut a = setup.start("bouncer-a");
    a.wait_ready();
    let port = a.port;
    let field = |body: &Json| body["field"].as_str().map(str::to_owned);

    for (body, expected) in [
        (json!({"code": 600, "tag": "x"}), "code"),
        (json!({"code": "five", "tag": "x"}), "code"),
        (json!({"code": 550, "mta": "198.51.100.0/33"}), "mta"),
        (
            json!({"code": 550, "tag": "x", "domian": "a.example"}),
            "domian",
        ),
        (json!({"code": 550, "tag": "x", "ip": "203.0.113.7"}), "ip"),
        (
            json!({"code": 550, "tag": "x", "cluster": false}),
            "cluster",
        ),
    ] {
        let (code, answer) = post(port, &body);
        assert_eq!(code, 400, "{body} -> {answer}");
        assert_eq!(
            field(&answer).as_deref(),
            Some(expected),
            "{body} -> {answer}"
        );
    }
    let (code, answer) = post(port, &json!({"code": 550}));
    assert_eq!(code, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("no condition"),
        "{answer}"
    );
    let (code, _) = request(
        port,
        "POST",
        "/v1/errors",
        Some(WRITE),
        Some(("application/json", b"{not json")),
    );
    assert_eq!(code, 400);

    // Form bodies, MailerQ style.
    let (code, answer) = request(
        port,
        "POST",
        "/v1/errors",
        Some(WRITE),
        Some((
            "application/x-www-form-urlencoded",
            b"code=451&domain=form.example&extended=4.7.1",
        )),
    );
    assert_eq!(code, 201, "{answer}");

    // Tokens.
    assert_eq!(request(port, "GET", "/v1/errors", None, None).0, 401);
    assert_eq!(
        request(
            port,
            "GET",
            "/v1/errors",
            Some("wrong-token-wrong-token"),
            None
        )
        .0,
        401
    );
    let body = json!({"code": 550, "tag": "x"}).to_string();
    let (code, _) = request(
        port,
        "POST",
        "/v1/errors",
        Some(READ),
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(code, 403);
    assert_eq!(
        request(port, "DELETE", "/v1/errors/file-owned", Some(READ), None).0,
        403
    );
    let (code, answer) = request(
        port,
        "POST",
        "/v1/evaluate",
        Some(READ),
        Some(("application/json", br#"{"recipient": "a@form.example"}"#)),
    );
    assert_eq!(code, 200, "read tokens may evaluate");
    assert_eq!(
        serde_json::from_str::<Json>(&answer).unwrap()["outcome"],
        "deferred"
    );

    // Sizes and unknown ids.
    let big = format!(
        r#"{{"code": 550, "tag": "x", "description": "{}"}}"#,
        "a".repeat(70 * 1024)
    );
    assert_eq!(
        request(
            port,
            "POST",
            "/v1/errors",
            Some(WRITE),
            Some(("application/json", big.as_bytes()))
        )
        .0,
        413
    );
    assert_eq!(
        request(port, "GET", "/v1/errors/nope", Some(READ), None).0,
        404
    );
    assert_eq!(
        request(port, "DELETE", "/v1/errors/nope", Some(WRITE), None).0,
        404
    );

    // No tokens configured: /v1 is unavailable, the rest works.
    let mut plain = Setup::new("api-notokens", &[("git.toml", FILE_RULE)]);
    plain
        .top_level
        .retain(|l| !l.starts_with("api_tokens_file"));
    plain.create_topics(1);
    let mut b = plain.start("bouncer-b");
    b.wait_ready();
    assert_eq!(
        request(b.port, "GET", "/v1/errors", Some(WRITE), None).0,
        503
    );
    assert_eq!(b.get("/healthz").unwrap().0, 200);

    // Kafka down: writes answer 503 with Retry-After, never hang or 500.
    if broker_is_managed() {
        assert!(kafka_sh(&["stop"]).success());
        let started = Instant::now();
        let (code, answer) = post(port, &json!({"code": 550, "tag": "while-down"}));
        let took = started.elapsed();
        let _restart = kafka_sh(&["start"]);
        assert_eq!(code, 503, "{answer}");
        assert!(took < Duration::from_secs(20), "answered in {took:?}");
    }
}

#[test]
fn the_api_rule_cap_holds_and_expired_rules_are_tombstoned() {
    let _serial = serial();
    let mut setup = setup("api-cap");
    setup.top_level.push("max_api_rules = 2".into());
    setup
        .top_level
        .push("api_expired_retention = \"1s\"".into());
    let mut a = setup.start("bouncer-a");
    a.wait_ready();
    let (code, first) = post(a.port, &json!({"code": 550, "tag": "one"}));
    assert_eq!(code, 201, "{first}");
    assert_eq!(post(a.port, &json!({"code": 550, "tag": "two"})).0, 201);
    let (code, answer) = post(a.port, &json!({"code": 550, "tag": "three"}));
    assert_eq!(code, 409, "a third rule is over the cap: {answer}");
    assert_eq!(
        post(a.port, &json!({"code": 451, "tag": "two"})).0,
        201,
        "replacing is not adding"
    );

    // An expiring rule: listed as expired once past `expires`, then
    // tombstoned after the retention, so the topic does not keep it.
    let first = first["id"].as_str().unwrap();
    assert_eq!(
        request(
            a.port,
            "DELETE",
            &format!("/v1/errors/{first}"),
            Some(WRITE),
            None
        )
        .0,
        204
    );
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (code, rule) = post(
        a.port,
        &json!({"code": 550, "tag": "brief", "expires": expires}),
    );
    assert_eq!(code, 201, "{rule}");
    assert_eq!(rule["state"], "active");
    let path = format!("/v1/errors/{}", rule["id"].as_str().unwrap());
    let deadline = Instant::now() + WAIT;
    let mut seen_expired = false;
    loop {
        let (code, body) = request(a.port, "GET", &path, Some(READ), None);
        if code == 404 {
            break;
        }
        let body: Json = serde_json::from_str(&body).unwrap();
        seen_expired |= body["state"] == "expired";
        assert!(Instant::now() < deadline, "never tombstoned: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_expired, "listed as expired before it was removed");
}

#[test]
fn an_instance_whose_clients_lose_every_broker_recovers_with_its_api_rules() {
    // Every client of the instance reaches the broker through a proxy that,
    // for three seconds, answers Metadata with no broker in it (what a
    // single broker answers during its controlled shutdown): librdkafka
    // 2.12 then drops the only broker it knew and never asks again
    // (confluentinc/librdkafka#5301). The clients ask for metadata every
    // second, so the pipeline's consumer and producer and the control
    // topic's reader all meet such an answer.
    let _serial = serial();
    let proxy = metadata_proxy::MetadataProxy::start(bootstrap());
    let mut setup = setup("api-stranded");
    setup.through_proxy(proxy.bootstrap());
    let mut a = setup.start("bouncer-a");
    a.wait_ready();
    let (code, before) = post(a.port, &json!({"code": 550, "tag": "campaign_before"}));
    assert_eq!(code, 201, "{before}");

    proxy.strand_for(Duration::from_secs(3));

    // The control topic's reader and writer are replaced at their next
    // statistics report (the writer when it next writes); the pipeline
    // starts again with new clients about 30 s later.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let restarts = metric(
            &a.metrics(),
            "bouncer_pipeline_restarts_total",
            &[("reason", "no-brokers")],
        );
        if restarts.unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no no-brokers restart 90 s after the clients lost their broker; log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A rule posted now is written and read back (the POST answers once
    // this instance has applied it), and both rules are in force.
    let (code, after) = post(a.port, &json!({"code": 550, "tag": "campaign_after"}));
    assert_eq!(code, 201, "{after}; log:\n{}", a.log());
    let mut producer = TestProducer::new(&setup.topics.input);
    let campaigns = ["campaign_before", "campaign_after", "other"];
    for (n, campaign) in campaigns.iter().enumerate() {
        producer.send(&campaign_event(&format!("s{n}"), campaign));
    }
    producer.flush();
    let seen = outcomes(&setup, campaigns.len());
    for (n, expected) in ["failed", "failed", "forwarded"].iter().enumerate() {
        assert_eq!(
            seen.get(&format!("s{n}")).map(String::as_str),
            Some(*expected),
            "event s{n} ({})",
            campaigns[n]
        );
    }
    let log = a.log();
    for client in ["reader", "producer"] {
        assert!(
            log.contains(&format!(
                "the control topic's {client} knows no Kafka broker"
            )),
            "the control topic's {client} says it was replaced; log:\n{log}"
        );
    }
    a.terminate();
    assert!(a.wait_exit(WAIT).is_some_and(|s| s.success()), "clean exit");
}
