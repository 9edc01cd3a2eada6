//! `bouncer run` against a real broker (issue #3): the records it writes for
//! every outcome, start-up refusals, an unproducible record, graceful
//! shutdown and rule changes while events flow. Crash, broker-restart and
//! rebalance tests are in `pipeline_faults.rs`.
//!
//! Each test runs the real binary as a child process with its own topics,
//! group and rule directory, and reads the output topics back.

mod kafka_support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use serde_json::{Value, json};

use kafka_support::{
    Feed, Input, Reader, Rec, Setup, TestProducer, TopicSpec, WAIT, assert_no_loss, create_topics,
    event, inputs_by_coordinates, metric, serial, wait_committed_to_end,
};

const CANCEL_RULES: &str = r#"
[[rule]]
id = "cancel-campaign-x"
code = 550
status = "5.7.1"
description = "Campaign X cancelled by the customer"
tags = ["campaign_X", "customer_Y"]

[[rule]]
id = "suspend-customer-z"
code = 554
description = "Sending suspended for customer Z pending review"
sender_domain = "news.customer-z.example"
"#;

const DEFER_RULES: &str = r#"
[[rule]]
id = "defer-gmail-shared"
code = 451
status = "4.7.0"
description = "Deferred: gmail is rate limiting the shared pools"
pool = ["shared-pool-1", "shared-pool-2"]
domain = "gmail.com"
"#;

const SHADOW_RULES: &str = r#"{"rule": [
  {"id": "shadow-disposable", "code": 550, "description": "Disposable mailbox provider",
   "domain": ["mailinator.example"], "mode": "shadow"},
  {"id": "shadow-warmup-ips", "code": 421, "description": "IPs being warmed up",
   "mta": "198.51.100.0/24", "mode": "shadow"}
]}"#;

/// What bouncer must do with one generated input.
#[derive(Debug, Clone)]
enum Expect {
    Forward {
        shadow: Option<&'static str>,
    },
    Failed {
        rule: &'static str,
        code: u16,
        keepmime: bool,
    },
    Deferred,
    Invalid(&'static str),
}

struct RuleInfo {
    code: u16,
    status: Option<&'static str>,
    description: &'static str,
    source: &'static str,
}

fn rule_info(id: &str) -> RuleInfo {
    match id {
        "cancel-campaign-x" => RuleInfo {
            code: 550,
            status: Some("5.7.1"),
            description: "Campaign X cancelled by the customer",
            source: "file:campaigns/cancel.toml",
        },
        "suspend-customer-z" => RuleInfo {
            code: 554,
            status: None,
            description: "Sending suspended for customer Z pending review",
            source: "file:campaigns/cancel.toml",
        },
        "defer-gmail-shared" => RuleInfo {
            code: 451,
            status: Some("4.7.0"),
            description: "Deferred: gmail is rate limiting the shared pools",
            source: "file:isp/defer.toml",
        },
        other => panic!("unknown rule {other}"),
    }
}

/// Pseudo-random printable text that lz4 cannot shrink much.
fn noise(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            alphabet[(x % 64) as usize] as char
        })
        .collect()
}

/// Generated input `n`: the record, and what bouncer must make of it.
/// `matches` collects the rules each event matches, by (rule, mode).
fn generate(
    n: usize,
    partitions: i32,
    ts_base: i64,
) -> (Input, Expect, Vec<(&'static str, &'static str)>) {
    let id = format!("e2e-{n}");
    let key_index = n % 41;
    let key = format!("rcpt-{key_index}");
    let kind = n % 20;
    // Keyless events go round-robin; keyed ones stay on their key's partition.
    let (key, partition) = if kind == 19 {
        (None, (n / 20) as i32 % partitions)
    } else {
        (Some(key.as_str()), key_index as i32 % partitions)
    };
    let mut matches = Vec::new();
    let (value, expect): (Option<Vec<u8>>, Expect) = match kind {
        0..=7 | 19 => {
            // Plain deliveries; one carries only one of the two campaign tags.
            let tags: &[&str] = if kind == 1 {
                &["campaign_X"]
            } else {
                &["newsletter", "customer_A"]
            };
            let e = event(&id, &format!("user{n}@example.org"), "dedicated-1", tags);
            (
                Some(e.to_string().into_bytes()),
                Expect::Forward { shadow: None },
            )
        }
        8 | 9 => {
            matches.push(("shadow-disposable", "shadow"));
            let e = event(
                &id,
                &format!("u{n}@mailinator.example"),
                "dedicated-1",
                &["weekly"],
            );
            (
                Some(e.to_string().into_bytes()),
                Expect::Forward {
                    shadow: Some("shadow-disposable"),
                },
            )
        }
        10 => {
            matches.push(("shadow-disposable", "shadow"));
            matches.push(("shadow-warmup-ips", "shadow"));
            let mut e = event(
                &id,
                &format!("u{n}@mailinator.example"),
                "warmup",
                &["weekly"],
            );
            e["ips"] = json!(["198.51.100.7"]);
            (
                Some(e.to_string().into_bytes()),
                Expect::Forward {
                    shadow: Some("shadow-disposable,shadow-warmup-ips"),
                },
            )
        }
        11 => {
            matches.push(("cancel-campaign-x", "enforce"));
            let e = event(
                &id,
                &format!("u{n}@example.net"),
                "dedicated-1",
                &["campaign_X", "weekly", "customer_Y"],
            );
            (
                Some(e.to_string().into_bytes()),
                Expect::Failed {
                    rule: "cancel-campaign-x",
                    code: 550,
                    keepmime: false,
                },
            )
        }
        12 => {
            // A 5xx rule beats a 4xx rule that matches too.
            matches.push(("cancel-campaign-x", "enforce"));
            matches.push(("defer-gmail-shared", "enforce"));
            let e = event(
                &id,
                &format!("u{n}@gmail.com"),
                "shared-pool-1",
                &["campaign_X", "customer_Y"],
            );
            (
                Some(e.to_string().into_bytes()),
                Expect::Failed {
                    rule: "cancel-campaign-x",
                    code: 550,
                    keepmime: false,
                },
            )
        }
        13 => {
            matches.push(("suspend-customer-z", "enforce"));
            let mut e = event(
                &id,
                &format!("u{n}@example.com"),
                "dedicated-2",
                &["weekly"],
            );
            e["envelope"] = json!("bounces@news.customer-z.example");
            e["keepmime"] = json!(true);
            (
                Some(e.to_string().into_bytes()),
                Expect::Failed {
                    rule: "suspend-customer-z",
                    code: 554,
                    keepmime: true,
                },
            )
        }
        14 | 15 => {
            matches.push(("defer-gmail-shared", "enforce"));
            let mut e = event(
                &id,
                &format!("u{n}@gmail.com"),
                "shared-pool-2",
                &["weekly"],
            );
            e["results"] =
                json!([{"time": "2026-11-27 11:00:00", "state": "deferred", "code": 421}]);
            (Some(e.to_string().into_bytes()), Expect::Deferred)
        }
        16 => {
            // maxattempts used up: the deferral becomes final.
            matches.push(("defer-gmail-shared", "enforce"));
            let mut e = event(
                &id,
                &format!("u{n}@GMail.com."),
                "shared-pool-1",
                &["weekly"],
            );
            e["maxattempts"] = json!(2);
            e["results"] = json!([{"state": "deferred"}, {"state": "deferred"}]);
            (
                Some(e.to_string().into_bytes()),
                Expect::Failed {
                    rule: "defer-gmail-shared",
                    code: 451,
                    keepmime: false,
                },
            )
        }
        17 => {
            // maxdelivertime passed: the deferral becomes final.
            matches.push(("defer-gmail-shared", "enforce"));
            let mut e = event(
                &id,
                &format!("u{n}@gmail.com"),
                "shared-pool-1",
                &["weekly"],
            );
            e["maxdelivertime"] = json!("2020-01-01 00:00:00");
            e.as_object_mut().unwrap().remove("results");
            (
                Some(e.to_string().into_bytes()),
                Expect::Failed {
                    rule: "defer-gmail-shared",
                    code: 451,
                    keepmime: false,
                },
            )
        }
        18 => {
            let (value, reason): (Option<Vec<u8>>, &'static str) = match (n / 20) % 9 {
                0 => (Some(format!("{{\"id\":\"{id}\",\"recipient\":\"a@b.example\"").into_bytes()), "not-json"),
                1 => {
                    let mut v = format!("{{\"id\":\"{id}\",\"recipient\":\"").into_bytes();
                    v.extend_from_slice(b"\xff\xfe@example.org\"}");
                    (Some(v), "not-utf8")
                }
                2 => (Some(format!("[\"{id}\", \"a@b.example\"]").into_bytes()), "not-object"),
                3 => (Some(json!({"id": id, "envelope": "x@y.example"}).to_string().into_bytes()), "recipient-missing"),
                4 => (Some(json!({"id": id, "recipient": "postmaster"}).to_string().into_bytes()), "recipient-no-domain"),
                5 => (
                    Some(json!({"id": id, "recipient": "a@b.example", "ips": "192.0.2.1"}).to_string().into_bytes()),
                    "wrong-type:ips",
                ),
                6 => (
                    Some(format!("{{\"id\":\"{id}\",\"recipient\":\"a@b.example\",\"recipient\":\"c@d.example\"}}").into_bytes()),
                    "duplicate-key:recipient",
                ),
                7 => {
                    let mut e = event(&id, "big@example.org", "dedicated-1", &["weekly"]);
                    e["mime"] = json!(noise(20_000, n as u64));
                    (Some(e.to_string().into_bytes()), "too-large")
                }
                _ => (None, "not-json"), // a tombstone: no value at all
            };
            (value, Expect::Invalid(reason))
        }
        _ => unreachable!(),
    };
    let mut headers = Vec::new();
    if n.is_multiple_of(3) {
        headers.push(("trace-id".to_owned(), Some(format!("t-{n}").into_bytes())));
        headers.push(("x-dup".to_owned(), Some(b"first".to_vec())));
        headers.push(("x-dup".to_owned(), Some(b"second".to_vec())));
    }
    if n.is_multiple_of(5) {
        headers.push(("x-null".to_owned(), None));
    }
    if n.is_multiple_of(50) {
        // A header from an earlier pass: bouncer's own comes after it.
        headers.push(("bouncer-input".to_owned(), Some(b"older/0/0".to_vec())));
    }
    let input = Input {
        partition,
        key: key.map(|k| k.as_bytes().to_vec()),
        value,
        headers,
        timestamp: Some(ts_base + n as i64),
    };
    (input, expect, matches)
}

/// The result entry bouncer must have appended for `rule` to the input at
/// `coordinates`; `time` is taken from `got` after checking its format and
/// range.
fn expected_entry(rule: &str, coordinates: &str, got: &Value, window: (i64, i64)) -> Value {
    let time = got["time"].as_str().expect("entry time is a string");
    let parsed = NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("entry time {time:?} is not MailerQ's format: {e}"))
        .and_utc()
        .timestamp();
    assert!(
        parsed >= window.0 - 1 && parsed <= window.1 + 1,
        "entry time {time} is not the time of processing"
    );
    let info = rule_info(rule);
    json!({
        "time": time,
        "state": "forced",
        "result": "error",
        "code": info.code,
        "status": info.status,
        "description": info.description,
        "forced": {
            "rule": rule,
            "source": info.source,
            "instance": "e2e-bouncer",
            "input": coordinates,
        },
    })
}

/// `input` with `entry` appended to `results`, and `mime` dropped unless kept.
fn with_entry(input: &[u8], entry: &Value, keep_mime: bool) -> Value {
    let mut v: Value = serde_json::from_slice(input).expect("input is JSON");
    let object = v.as_object_mut().expect("input is an object");
    if !keep_mime {
        object.remove("mime");
    }
    match object.get_mut("results") {
        Some(Value::Array(a)) => a.push(entry.clone()),
        _ => {
            object.insert("results".into(), json!([entry]));
        }
    }
    v
}

/// The headers bouncer added after the input's (which must come first, in
/// order); panics if the input's are not a prefix.
fn added_headers<'r>(rec: &'r Rec, input: &Input) -> Vec<(&'r str, String)> {
    let n = input.headers.len();
    assert!(
        rec.headers.len() >= n,
        "{}: input headers missing",
        rec.coordinates()
    );
    assert_eq!(
        &rec.headers[..n],
        &input.headers[..],
        "{}: input headers not kept in order",
        rec.coordinates()
    );
    rec.headers[n..]
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

#[test]
fn end_to_end_every_outcome_as_specified() {
    let _serial = serial();
    const EVENTS: usize = 3000;
    const PARTITIONS: i32 = 6;
    let mut setup = Setup::new(
        "e2e",
        &[
            ("campaigns/cancel.toml", CANCEL_RULES),
            ("isp/defer.toml", DEFER_RULES),
            ("shadow.json", SHADOW_RULES),
            (
                ".hidden/ignored.toml",
                "this is not TOML and must be skipped",
            ),
        ],
    );
    setup.top_level.push("max_event_bytes = 16384".into());
    setup.create_topics(PARTITIONS);
    let t = setup.topics.clone();

    let ts_base = Utc::now().timestamp_millis() - 600_000;
    let generated: Vec<_> = (0..EVENTS)
        .map(|n| generate(n, PARTITIONS, ts_base))
        .collect();
    // An idempotent producer writing to fresh partitions in order: the i-th
    // record of a partition is at offset i.
    let mut next_offset = vec![0i64; PARTITIONS as usize];
    let coordinates: Vec<String> = generated
        .iter()
        .map(|(input, _, _)| {
            let o = &mut next_offset[input.partition as usize];
            *o += 1;
            format!("{}/{}/{}", t.input, input.partition, *o - 1)
        })
        .collect();

    let mut bouncer = setup.start("e2e-bouncer");
    bouncer.wait_ready();
    let started = Utc::now().timestamp();
    let mut producer = TestProducer::new(&t.input);
    for (input, _, _) in &generated {
        producer.send(input);
    }
    producer.flush();

    // Every input as written, to check the offsets assumed above.
    let inputs = inputs_by_coordinates(&t.input);
    assert_eq!(inputs.len(), EVENTS);
    for ((input, _, _), c) in generated.iter().zip(&coordinates) {
        assert_eq!(inputs[c].value, input.value, "input at {c}");
    }

    let mut want: HashMap<&str, usize> = HashMap::new();
    for (_, expect, _) in &generated {
        match expect {
            Expect::Forward { .. } => *want.entry(&t.forward).or_default() += 1,
            Expect::Failed { .. } => *want.entry(&t.results).or_default() += 1,
            Expect::Deferred => {
                *want.entry(&t.results).or_default() += 1;
                *want.entry(&t.retry).or_default() += 1;
            }
            Expect::Invalid(_) => *want.entry(&t.dead_letter).or_default() += 1,
        }
    }
    let mut reader = Reader::new(&[&t.forward, &t.results, &t.retry, &t.dead_letter]);
    reader.wait_until(WAIT, "every output record", |records| {
        let mut got: HashMap<&str, usize> = HashMap::new();
        for r in records {
            *got.entry(&r.topic).or_default() += 1;
        }
        want.iter()
            .all(|(topic, n)| got.get(topic).copied().unwrap_or(0) >= *n)
    });
    wait_committed_to_end(&setup.group, &t.input, WAIT);
    reader.read_to_end();
    let finished = Utc::now().timestamp();

    // Exactly the expected outputs, each once: no fault, no duplicate.
    let mut by_input: HashMap<String, Vec<&Rec>> = HashMap::new();
    for r in &reader.records {
        by_input.entry(r.input()).or_default().push(r);
    }
    let mut got: HashMap<&str, usize> = HashMap::new();
    for r in &reader.records {
        *got.entry(&r.topic).or_default() += 1;
    }
    for topic in [&t.forward, &t.results, &t.retry, &t.dead_letter] {
        assert_eq!(
            got.get(topic.as_str()).copied().unwrap_or(0),
            want.get(topic.as_str()).copied().unwrap_or(0),
            "records on {topic}"
        );
    }

    for (n, ((input, expect, _), coords)) in generated.iter().zip(&coordinates).enumerate() {
        let outputs = by_input
            .get(coords)
            .unwrap_or_else(|| panic!("event {n} ({coords}) has no output"));
        let on = |topic: &str| -> Vec<&Rec> {
            outputs
                .iter()
                .copied()
                .filter(|r| r.topic == topic)
                .collect()
        };
        match expect {
            Expect::Forward { shadow } => {
                let f = on(&t.forward);
                assert_eq!(
                    (f.len(), outputs.len()),
                    (1, 1),
                    "event {n}: one forward, nothing else"
                );
                let f = f[0];
                assert_eq!(
                    f.value, input.value,
                    "event {n}: forward value byte-identical"
                );
                assert_eq!(f.key, input.key, "event {n}: forward key");
                assert_eq!(
                    f.partition, input.partition,
                    "event {n}: forward partition (\"same\")"
                );
                assert_eq!(
                    f.timestamp, input.timestamp,
                    "event {n}: forward timestamp kept"
                );
                let mut tail = vec![("bouncer-outcome", "forwarded".to_owned())];
                if let Some(ids) = shadow {
                    tail.push(("bouncer-shadow", (*ids).to_owned()));
                }
                tail.push(("bouncer-input", coords.clone()));
                assert_eq!(added_headers(f, input), tail, "event {n}: forward headers");
            }
            Expect::Failed {
                rule,
                code: _,
                keepmime,
            } => {
                let r = on(&t.results);
                assert_eq!(
                    (r.len(), outputs.len()),
                    (1, 1),
                    "event {n}: one result, nothing else"
                );
                let r = r[0];
                assert_eq!(r.key, input.key, "event {n}: result key");
                let added = added_headers(r, input);
                assert!(
                    added.contains(&("bouncer-outcome", "failed".into())),
                    "event {n}: {added:?}"
                );
                assert_eq!(
                    added.last(),
                    Some(&("bouncer-input", coords.clone())),
                    "event {n}"
                );
                let value = r.json();
                let entry = value["results"]
                    .as_array()
                    .and_then(|a| a.last())
                    .expect("results entry");
                let entry = expected_entry(rule, coords, entry, (started, finished));
                let want = with_entry(input.value.as_deref().unwrap(), &entry, *keepmime);
                assert_eq!(value, want, "event {n}: result record");
                assert_eq!(
                    value.get("mime").is_some(),
                    *keepmime,
                    "event {n}: mime kept only with keepmime"
                );
            }
            Expect::Deferred => {
                let (r, q) = (on(&t.results), on(&t.retry));
                assert_eq!(
                    (r.len(), q.len(), outputs.len()),
                    (1, 1, 2),
                    "event {n}: a result and a retry"
                );
                let (r, q) = (r[0], q[0]);
                for rec in [r, q] {
                    assert_eq!(rec.key, input.key, "event {n}: key");
                    let added = added_headers(rec, input);
                    assert!(
                        added.contains(&("bouncer-outcome", "deferred".into())),
                        "event {n}: {added:?}"
                    );
                    assert_eq!(
                        added.last(),
                        Some(&("bouncer-input", coords.clone())),
                        "event {n}"
                    );
                }
                assert_eq!(
                    q.partition, input.partition,
                    "event {n}: retry partition (\"same\")"
                );
                let (rv, qv) = (r.json(), q.json());
                let entry = rv["results"]
                    .as_array()
                    .and_then(|a| a.last())
                    .expect("results entry");
                let entry =
                    expected_entry("defer-gmail-shared", coords, entry, (started, finished));
                let raw = input.value.as_deref().unwrap();
                assert_eq!(
                    rv,
                    with_entry(raw, &entry, false),
                    "event {n}: result record without mime"
                );
                assert_eq!(
                    qv,
                    with_entry(raw, &entry, true),
                    "event {n}: retry record with mime"
                );
                assert_eq!(
                    qv["results"].as_array().unwrap().len(),
                    2,
                    "entry appended to the history"
                );
            }
            Expect::Invalid(reason) => {
                let d = on(&t.dead_letter);
                assert_eq!(
                    (d.len(), outputs.len()),
                    (1, 1),
                    "event {n}: one dead letter, nothing else"
                );
                let d = d[0];
                assert_eq!(
                    d.value, input.value,
                    "event {n}: dead letter value unchanged"
                );
                assert_eq!(d.key, input.key, "event {n}: dead letter key");
                let error = d.header("bouncer-error").expect("bouncer-error");
                assert!(
                    error == *reason || error.starts_with(&format!("{reason}: ")),
                    "event {n}: bouncer-error {error:?}, want {reason}"
                );
                let added = added_headers(d, input);
                assert_eq!(
                    added.last(),
                    Some(&("bouncer-input", coords.clone())),
                    "event {n}"
                );
            }
        }
    }

    // Per key, forwards come out in input order.
    let mut in_order: BTreeMap<Vec<u8>, Vec<&str>> = BTreeMap::new();
    for ((input, expect, _), coords) in generated.iter().zip(&coordinates) {
        if let (Expect::Forward { .. }, Some(key)) = (expect, &input.key) {
            in_order.entry(key.clone()).or_default().push(coords);
        }
    }
    let mut forwards: Vec<&Rec> = reader.of(&t.forward).collect();
    forwards.sort_by_key(|r| (r.partition, r.offset));
    let mut out_order: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for f in forwards {
        if let Some(key) = &f.key {
            out_order.entry(key.clone()).or_default().push(f.input());
        }
    }
    assert_eq!(in_order.len(), 41);
    for (key, ins) in &in_order {
        assert_eq!(
            out_order
                .get(key)
                .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(ins.clone()),
            "forward order of key {}",
            String::from_utf8_lossy(key)
        );
    }

    // The metrics count the same.
    let mut outcomes: HashMap<&str, f64> = HashMap::new();
    let mut forced: HashMap<(&str, u16, &str), f64> = HashMap::new();
    let mut matched: HashMap<(&str, &str), f64> = HashMap::new();
    for (_, expect, matches) in &generated {
        let outcome = match expect {
            Expect::Forward { .. } => "forwarded",
            Expect::Failed { rule, code, .. } => {
                *forced.entry((rule, *code, "failed")).or_default() += 1.0;
                "failed"
            }
            Expect::Deferred => {
                *forced
                    .entry(("defer-gmail-shared", 451, "deferred"))
                    .or_default() += 1.0;
                "deferred"
            }
            Expect::Invalid(_) => "invalid",
        };
        *outcomes.entry(outcome).or_default() += 1.0;
        for m in matches {
            *matched.entry(*m).or_default() += 1.0;
        }
    }
    let text = bouncer.metrics();
    for outcome in ["forwarded", "failed", "deferred", "invalid"] {
        assert_eq!(
            metric(&text, "bouncer_events_total", &[("outcome", outcome)]),
            Some(outcomes[outcome]),
            "bouncer_events_total{{outcome={outcome:?}}}"
        );
    }
    for ((rule, code, outcome), n) in &forced {
        let code = code.to_string();
        assert_eq!(
            metric(
                &text,
                "bouncer_forced_total",
                &[("rule", rule), ("code", &code), ("outcome", outcome)]
            ),
            Some(*n),
            "bouncer_forced_total for {rule} {outcome}"
        );
    }
    for ((rule, mode), n) in &matched {
        assert_eq!(
            metric(
                &text,
                "bouncer_rule_matches_total",
                &[("rule", rule), ("mode", mode)]
            ),
            Some(*n),
            "bouncer_rule_matches_total for {rule} {mode}"
        );
    }
    assert_eq!(
        metric(&text, "bouncer_rules_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "bouncer_rules_active", &[("source", "file")]),
        Some(5.0)
    );
    let status = bouncer.status().expect("/status");
    let hash = status["rules"]["hash"]
        .as_str()
        .expect("rule-set hash")
        .to_owned();
    assert_eq!(
        metric(&text, "bouncer_rules_info", &[("hash", &hash)]),
        Some(1.0)
    );
    assert_eq!(
        status["kafka"]["assigned_partitions"]
            .as_array()
            .map(Vec::len),
        Some(PARTITIONS as usize)
    );

    bouncer.terminate();
    let exit = bouncer
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(exit.success(), "exit status {exit}");
}

// ---------------------------------------------------------------------------
// Start-up refusals: each names the setting on stderr and exits non-zero
// before consuming anything.
// ---------------------------------------------------------------------------

fn refused(setup: &Setup, setting: &str) -> String {
    let mut bouncer = setup.start("refused");
    let exit = bouncer.wait_exit(WAIT).unwrap_or_else(|| {
        panic!(
            "bouncer kept running instead of refusing {setting}:\n{}",
            bouncer.log()
        )
    });
    let stderr = bouncer.log();
    assert!(!exit.success(), "exit status {exit} for a bad {setting}");
    assert!(
        stderr.contains(setting),
        "stderr does not name {setting}:\n{stderr}"
    );
    assert!(bouncer.get("/healthz").is_none());
    stderr
}

#[test]
fn refuses_a_missing_output_topic() {
    let _serial = serial();
    let setup = Setup::new("no-results", &[("r.toml", CANCEL_RULES)]);
    let t = &setup.topics;
    create_topics(&[
        TopicSpec {
            name: &t.input,
            partitions: 2,
            config: &[],
        },
        TopicSpec {
            name: &t.forward,
            partitions: 2,
            config: &[],
        },
        TopicSpec {
            name: &t.retry,
            partitions: 2,
            config: &[],
        },
        TopicSpec {
            name: &t.dead_letter,
            partitions: 1,
            config: &[],
        },
    ]);
    let stderr = refused(&setup, "topics.results");
    assert!(stderr.contains(&t.results), "{stderr}");
    // Nothing was consumed, and the missing topic was not created.
    assert_eq!(kafka_support::partitions_of(&t.results), 0);
    assert!(
        kafka_support::committed(&setup.group, &t.input)
            .values()
            .all(|&o| o < 0)
    );
}

#[test]
fn refuses_a_control_topic_that_is_not_compacted() {
    let _serial = serial();
    let setup = Setup::new("ctl-delete", &[("r.toml", CANCEL_RULES)]);
    let t = &setup.topics;
    create_topics(&[
        TopicSpec {
            name: &t.input,
            partitions: 2,
            config: &[],
        },
        TopicSpec {
            name: &t.forward,
            partitions: 2,
            config: &[],
        },
        TopicSpec {
            name: &t.results,
            partitions: 2,
            config: &[],
        },
        TopicSpec {
            name: &t.retry,
            partitions: 2,
            config: &[],
        },
        TopicSpec {
            name: &t.dead_letter,
            partitions: 1,
            config: &[],
        },
        TopicSpec {
            name: &t.control,
            partitions: 1,
            config: &[("cleanup.policy", "delete")],
        },
    ]);
    let stderr = refused(&setup, "topics.control");
    assert!(stderr.contains("compact"), "{stderr}");
}

#[test]
fn refuses_bouncer_owned_kafka_properties() {
    // No broker needed: the configuration is refused before connecting.
    let mut setup = Setup::new("owned", &[("r.toml", CANCEL_RULES)]);
    setup.kafka.push("\"enable.auto.commit\" = \"true\"".into());
    refused(&setup, "enable.auto.commit");

    let mut setup = Setup::new("owned", &[("r.toml", CANCEL_RULES)]);
    setup.producer.push("acks = \"1\"".into());
    let stderr = refused(&setup, "acks");
    assert!(stderr.contains("kafka.producer"), "{stderr}");
}

#[test]
fn refuses_max_event_bytes_above_the_producer_limit() {
    let mut setup = Setup::new("oversize", &[("r.toml", CANCEL_RULES)]);
    setup.top_level.push("max_event_bytes = 4194304".into());
    let stderr = refused(&setup, "max_event_bytes");
    assert!(stderr.contains("message.max.bytes"), "{stderr}");
}

#[test]
fn refuses_a_batch_size_an_output_topic_would_refuse() {
    let _serial = serial();
    let mut setup = Setup::new("batch-size", &[("r.toml", CANCEL_RULES)]);
    setup.producer.push("\"batch.size\" = 500000".into());
    let t = &setup.topics;
    create_topics(&[
        TopicSpec {
            name: &t.input,
            partitions: 1,
            config: &[],
        },
        TopicSpec {
            name: &t.forward,
            partitions: 1,
            config: &[],
        },
        TopicSpec {
            name: &t.results,
            partitions: 1,
            config: &[("max.message.bytes", "100000")],
        },
        TopicSpec {
            name: &t.retry,
            partitions: 1,
            config: &[],
        },
        TopicSpec {
            name: &t.dead_letter,
            partitions: 1,
            config: &[],
        },
    ]);
    let stderr = refused(&setup, "kafka.producer.\"batch.size\"");
    assert!(stderr.contains(&t.results), "{stderr}");
}

// ---------------------------------------------------------------------------
// A record the broker refuses for good.
// ---------------------------------------------------------------------------

#[test]
fn an_unproducible_record_is_dead_lettered_and_its_partition_keeps_flowing() {
    let _serial = serial();
    // The forward topic takes at most 20000 bytes per batch, far below
    // librdkafka's default batch.size: bouncer must keep its batches below
    // that (the broker refuses a batch whole and librdkafka never splits
    // it), or the normal events batched with the big one would be refused
    // with it.
    let setup = Setup::new("too-big", &[("r.toml", CANCEL_RULES)]);
    let t = setup.topics.clone();
    setup.create_topics_with_small_forward("20000");
    let mut bouncer = setup.start("too-big");
    bouncer.wait_ready();

    let mut producer = TestProducer::new(&t.input);
    let mut sent = Vec::new();
    for n in 0..301 {
        let partition = if n % 3 == 2 { 1 } else { 0 };
        let mut e = event(
            &format!("big-{n}"),
            &format!("u{n}@example.org"),
            "dedicated-1",
            &["weekly"],
        );
        if n == 150 {
            // Larger than the forward topic takes, smaller than max_event_bytes.
            e["mime"] = json!(noise(60_000, 7));
        }
        let input = Input::new(partition, Some(&format!("k{}", n % 5)), e.to_string());
        producer.send(&input);
        sent.push(input);
    }
    producer.flush();
    let inputs = inputs_by_coordinates(&t.input);
    let big = inputs
        .values()
        .find(|r| r.value.as_ref().is_some_and(|v| v.len() > 60_000))
        .expect("the big input")
        .clone();
    assert_eq!(big.partition, 0);

    let mut reader = Reader::new(&[&t.forward, &t.dead_letter]);
    reader.wait_until(WAIT, "300 forwards and a dead letter", |records| {
        records.iter().filter(|r| r.topic == t.forward).count() >= 300
            && records.iter().any(|r| r.topic == t.dead_letter)
    });
    wait_committed_to_end(&setup.group, &t.input, WAIT);
    reader.read_to_end();

    let dead: Vec<&Rec> = reader.of(&t.dead_letter).collect();
    assert_eq!(
        dead.len(),
        1,
        "only the big record is dead-lettered: {dead:?}"
    );
    let d = dead[0];
    assert_eq!(d.input(), big.coordinates());
    let error = d.header("bouncer-error").expect("bouncer-error");
    assert!(
        error.starts_with("produce-failed"),
        "bouncer-error {error:?}"
    );
    assert_eq!(d.key, big.key);
    // SPEC §3: the input value unchanged, as the dead-letter topic takes it.
    assert!(
        d.value == big.value,
        "dead letter keeps the value (got {:?} bytes)",
        d.value.as_ref().map(Vec::len)
    );

    // Every other event is forwarded once, later ones on partition 0 too,
    // in order.
    let forwards: Vec<&Rec> = reader.of(&t.forward).collect();
    assert_eq!(forwards.len(), 300);
    let mut on_zero: Vec<i64> = forwards
        .iter()
        .filter(|r| r.partition == 0)
        .map(|r| r.input().rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    let want: Vec<i64> = inputs
        .values()
        .filter(|r| r.partition == 0 && r.offset != big.offset)
        .map(|r| r.offset)
        .collect();
    assert!(
        want.iter().any(|&o| o > big.offset),
        "events after the big one"
    );
    let in_forward_order = on_zero.clone();
    on_zero.sort();
    assert_eq!(in_forward_order, on_zero, "partition 0 forwarded in order");
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(on_zero, want_sorted);
    let text = bouncer.metrics();
    assert_eq!(
        metric(&text, "bouncer_events_total", &[("outcome", "forwarded")]),
        Some(301.0)
    );
}

// ---------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------

#[test]
fn sigterm_drains_commits_and_exits_zero_so_a_restart_repeats_nothing() {
    let _serial = serial();
    let setup = Setup::new("sigterm", &[("r.toml", CANCEL_RULES)]);
    setup.create_topics(3);
    let t = setup.topics.clone();
    let mut first = setup.start("sigterm-1");
    first.wait_ready();
    let feed = Feed::start(&t.input, "term", 3, 4000, Duration::from_secs(8));

    // SIGTERM while events flow.
    let deadline = Instant::now() + WAIT;
    while feed.sent() < 1500 {
        assert!(Instant::now() < deadline, "feed stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.wait_processed(1000.0);
    first.terminate();
    let exit = first
        .wait_exit(Duration::from_secs(10 + 5))
        .unwrap_or_else(|| panic!("no exit within shutdown_timeout:\n{}", first.log()));
    assert!(exit.success(), "exit status {exit}");
    let log = first.log();
    assert!(
        !log.contains("shutdown timeout reached"),
        "shutdown was not clean:\n{log}"
    );
    let committed = kafka_support::committed(&setup.group, &t.input);
    assert!(
        committed.values().any(|&o| o > 0),
        "nothing committed on shutdown: {committed:?}"
    );

    // The next instance picks up exactly where the first stopped.
    let mut second = setup.start("sigterm-2");
    second.wait_ready();
    let fed = feed.join();
    wait_committed_to_end(&setup.group, &t.input, WAIT);
    second.terminate();
    let exit = second
        .wait_exit(Duration::from_secs(15))
        .expect("second exits");
    assert!(exit.success(), "exit status {exit}");

    let inputs = inputs_by_coordinates(&t.input);
    fed.assert_in_input(&inputs);
    let mut reader = Reader::new(&[&t.forward, &t.results, &t.retry, &t.dead_letter]);
    reader.read_to_end();
    let duplicates = assert_no_loss(&inputs, &reader.records);
    assert_eq!(duplicates, 0, "a clean shutdown repeats nothing");
    assert_eq!(
        reader.records.len(),
        inputs.len(),
        "exactly one output per input"
    );
    // Every 7th event of the feed is failed (see `Feed::start`).
    let cancelled = inputs
        .values()
        .filter(|r| {
            kafka_support::id_of(r.value.as_deref())
                .and_then(|id| id.rsplit('-').next()?.parse::<usize>().ok())
                .is_some_and(|n| n.is_multiple_of(7))
        })
        .count();
    assert_eq!(
        reader.of(&t.results).count(),
        cancelled,
        "every 7th event is failed"
    );
}

// ---------------------------------------------------------------------------
// Rule changes while events flow.
// ---------------------------------------------------------------------------

const LATE_RULE: &str = r#"
[[rule]]
id = "stop-late-example"
code = 550
status = "5.7.1"
description = "late.example stopped by an operator"
domain = "late.example"
"#;

fn late_events(prefix: &str, count: usize, partitions: i32) -> Vec<Input> {
    (0..count)
        .map(|n| {
            let domain = if n % 2 == 0 {
                "late.example"
            } else {
                "example.org"
            };
            let e = event(
                &format!("{prefix}-{n}"),
                &format!("u{n}@{domain}"),
                "dedicated-1",
                &["weekly"],
            );
            Input::new(n as i32 % partitions, Some(&format!("k{n}")), e.to_string())
        })
        .collect()
}

fn ids_on(reader: &Reader, topic: &str) -> Vec<String> {
    reader
        .of(topic)
        .filter_map(|r| kafka_support::id_of(r.value.as_deref()))
        .collect()
}

#[test]
fn a_rule_file_added_while_events_flow_stops_later_events() {
    let _serial = serial();
    let setup = Setup::new("reload", &[("campaigns/cancel.toml", CANCEL_RULES)]);
    setup.create_topics(3);
    let t = setup.topics.clone();
    let mut bouncer = setup.start("reload");
    bouncer.wait_ready();
    let before = bouncer.status().expect("/status")["rules"]["hash"]
        .as_str()
        .expect("hash")
        .to_owned();

    let mut producer = TestProducer::new(&t.input);
    for input in late_events("before", 200, 3) {
        producer.send(&input);
    }
    producer.flush();
    let mut reader = Reader::new(&[&t.forward, &t.results]);
    reader.wait_until(WAIT, "the first batch forwarded", |r| r.len() >= 200);

    // An operator adds a file the way editors do: write, then rename.
    let dir = setup.rules_dir.join("late");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(".stop.toml.tmp"), LATE_RULE).unwrap();
    fs::rename(dir.join(".stop.toml.tmp"), dir.join("stop.toml")).unwrap();
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let status = bouncer.status().expect("/status");
        let hash = status["rules"]["hash"].as_str().expect("hash").to_owned();
        if hash != before {
            break hash;
        }
        assert!(
            Instant::now() < deadline,
            "the new rule file was not loaded: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = bouncer.metrics();
    assert_eq!(
        metric(&text, "bouncer_rules_info", &[("hash", &after)]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "bouncer_rules_info", &[("hash", &before)]),
        None
    );
    assert_eq!(
        metric(&text, "bouncer_rules_last_reload_successful", &[]),
        Some(1.0)
    );

    for input in late_events("after", 200, 3) {
        producer.send(&input);
    }
    producer.flush();
    reader.wait_until(WAIT, "the second batch", |r| r.len() >= 400);
    wait_committed_to_end(&setup.group, &t.input, WAIT);
    reader.read_to_end();
    assert_eq!(reader.records.len(), 400);

    let forwarded = ids_on(&reader, &t.forward);
    let failed = ids_on(&reader, &t.results);
    let mut want_failed: Vec<String> = (0..200).step_by(2).map(|n| format!("after-{n}")).collect();
    let mut failed_sorted = failed.clone();
    failed_sorted.sort();
    want_failed.sort();
    assert_eq!(
        failed_sorted, want_failed,
        "the second batch's late.example events, and only those, fail"
    );
    assert_eq!(forwarded.len(), 300);
    assert!(
        forwarded
            .iter()
            .filter(|id| id.starts_with("before-"))
            .count()
            == 200
    );
    for r in reader.of(&t.results) {
        let entry = r.json()["results"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(entry["forced"]["rule"], "stop-late-example");
        assert_eq!(entry["forced"]["source"], "file:late/stop.toml");
    }
}

#[test]
fn nothing_is_consumed_until_the_rules_directory_exists() {
    let _serial = serial();
    // No rule files: the directory does not exist yet.
    let setup = Setup::new("late-dir", &[]);
    assert!(!setup.rules_dir.exists());
    setup.create_topics(2);
    let t = setup.topics.clone();
    let mut bouncer = setup.start("late-dir");
    let deadline = Instant::now() + WAIT;
    while bouncer.get("/healthz").is_none_or(|(code, _)| code != 200) {
        assert!(
            bouncer.exited().is_none(),
            "bouncer exited:\n{}",
            bouncer.log()
        );
        assert!(Instant::now() < deadline, "no /healthz");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut producer = TestProducer::new(&t.input);
    for input in late_events("early", 100, 2) {
        producer.send(&input);
    }
    producer.flush();

    // For a few seconds: not ready, no output, no commit.
    let mut reader = Reader::new(&[&t.forward, &t.results, &t.retry, &t.dead_letter]);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (code, body) = bouncer.get("/readyz").expect("/readyz answers");
        assert_eq!(code, 503, "ready without rules: {body}");
        reader.poll_for(Duration::from_millis(250));
        assert!(
            reader.records.is_empty(),
            "consumed before the rules were loaded"
        );
    }
    assert!(
        bouncer.exited().is_none(),
        "bouncer gave up:\n{}",
        bouncer.log()
    );
    assert!(
        kafka_support::committed(&setup.group, &t.input)
            .values()
            .all(|&o| o < 0)
    );

    // The directory appears at once, as a ConfigMap or git-sync swap does.
    let staging = setup.dir.path().join("rules.staging");
    kafka_support::write_rules(&staging, &[("late.toml", LATE_RULE)]);
    fs::rename(&staging, &setup.rules_dir).unwrap();
    bouncer.wait_ready();
    reader.wait_until(WAIT, "outputs after the rules appear", |r| r.len() >= 100);
    wait_committed_to_end(&setup.group, &t.input, WAIT);
    reader.read_to_end();
    assert_eq!(reader.records.len(), 100);
    let mut failed = ids_on(&reader, &t.results);
    failed.sort();
    let mut want: Vec<String> = (0..100).step_by(2).map(|n| format!("early-{n}")).collect();
    want.sort();
    assert_eq!(failed, want, "events matching the late rules are stopped");
    assert_eq!(reader.of(&t.forward).count(), 50);
}
