//! `/metrics` of a real `bouncer run` on the real broker (issue 5): a broken
//! rule file sets `bouncer_rules_last_reload_successful` to 0 (and fixing it
//! back to 1), and a revoked partition's `bouncer_consumer_lag` series
//! disappears from the instance that lost it.
//!
//! That `bouncer_events_total` and the per-rule counters equal the outcomes
//! produced is checked in `pipeline.rs`; the Grafana dashboard and the alert
//! rules against a real Prometheus in `scripts/prometheus-check.sh`.

mod kafka_support;

use std::fs;
use std::time::{Duration, Instant};

use kafka_support::{Bouncer, Input, Setup, TestProducer, WAIT, event, metric, serial};

const RULES: &str = r#"
[[rule]]
id = "cancel-campaign-x"
code = 550
description = "Campaign X cancelled by the customer"
tags = ["campaign_X"]

[[rule]]
id = "defer-throttling-isp"
code = 451
description = "Deferred: throttling.example rate limits us"
domain = "throttling.example"
"#;

/// Cut off mid-array, as an editor saving half a change would.
const BROKEN: &str = "[[rule]]\nid = \"half-written\"\ncode = 550\ndomain = [\n";

const FIXED: &str = r#"
[[rule]]
id = "late-fix"
code = 550
description = "The fixed file"
domain = "never-sent.example"
"#;

/// Polls `cond` until it holds; panics with `what` after [`WAIT`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

fn gauge(bouncer: &Bouncer, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric(&bouncer.metrics(), name, labels)
}

fn lag(bouncer: &Bouncer, partition: i32) -> Option<f64> {
    gauge(
        bouncer,
        "bouncer_consumer_lag",
        &[("partition", &partition.to_string())],
    )
}

fn assigned(bouncer: &Bouncer) -> Vec<i32> {
    let status = bouncer.status().expect("/status");
    let mut partitions: Vec<i32> = status["kafka"]["assigned_partitions"]
        .as_array()
        .expect("assigned_partitions")
        .iter()
        .map(|p| p.as_i64().expect("partition") as i32)
        .collect();
    partitions.sort();
    partitions
}

fn rules_hash(bouncer: &Bouncer) -> String {
    bouncer.status().expect("/status")["rules"]["hash"]
        .as_str()
        .expect("hash")
        .to_owned()
}

#[test]
fn a_broken_rule_file_sets_last_reload_successful_to_zero() {
    let _serial = serial();
    let setup = Setup::new("metrics-reload", &[("rules.toml", RULES)]);
    setup.create_topics(1);
    let mut bouncer = setup.start("metrics-reload");
    bouncer.wait_ready();

    let text = bouncer.metrics();
    assert_eq!(
        metric(&text, "bouncer_rules_last_reload_successful", &[]),
        Some(1.0),
        "{text}"
    );
    let hash = rules_hash(&bouncer);
    assert_eq!(
        metric(&text, "bouncer_rules_info", &[("hash", &hash)]),
        Some(1.0)
    );
    let failures = metric(
        &text,
        "bouncer_rules_reload_total",
        &[("result", "failure")],
    )
    .expect("bouncer_rules_reload_total{result=\"failure\"} exists from the start");

    fs::write(setup.rules_dir.join("broken.toml"), BROKEN).unwrap();
    let took = wait_until("bouncer_rules_last_reload_successful 0", || {
        gauge(&bouncer, "bouncer_rules_last_reload_successful", &[]) == Some(0.0)
    });
    eprintln!("the failed reload showed on /metrics after {took:?}");

    let text = bouncer.metrics();
    assert_eq!(
        metric(
            &text,
            "bouncer_rules_reload_total",
            &[("result", "failure")]
        ),
        Some(failures + 1.0),
        "one failed reload counted"
    );
    // The previous rule set stays in force, and says so.
    assert_eq!(
        metric(&text, "bouncer_rules_info", &[("hash", &hash)]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "bouncer_rules_active", &[("source", "file")]),
        Some(2.0)
    );
    let attempt = metric(&text, "bouncer_rules_last_reload_timestamp_seconds", &[])
        .expect("last attempt timestamp");
    let success = metric(
        &text,
        "bouncer_rules_last_reload_success_timestamp_seconds",
        &[],
    )
    .expect("last success timestamp");
    assert!(
        attempt > success,
        "the failed attempt ({attempt}) is later than the last success ({success})"
    );
    let status = bouncer.status().expect("/status");
    let reload = status["rules"]["reload"].to_string();
    assert!(
        regex_like_location(&reload, "broken.toml"),
        "/status names the error as broken.toml:LINE:COL: {reload}"
    );

    // Fixed: back to 1, the new rule set in force, the old hash gone.
    fs::write(setup.rules_dir.join("broken.toml"), FIXED).unwrap();
    wait_until("bouncer_rules_last_reload_successful back to 1", || {
        gauge(&bouncer, "bouncer_rules_last_reload_successful", &[]) == Some(1.0)
    });
    let text = bouncer.metrics();
    assert_eq!(
        metric(&text, "bouncer_rules_active", &[("source", "file")]),
        Some(3.0)
    );
    let fixed = rules_hash(&bouncer);
    assert_ne!(fixed, hash);
    assert_eq!(
        metric(&text, "bouncer_rules_info", &[("hash", &fixed)]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "bouncer_rules_info", &[("hash", &hash)]),
        None
    );
    assert_eq!(
        metric(
            &text,
            "bouncer_rules_reload_total",
            &[("result", "failure")]
        ),
        Some(failures + 1.0)
    );
    let success_after = metric(
        &text,
        "bouncer_rules_last_reload_success_timestamp_seconds",
        &[],
    )
    .expect("last success timestamp");
    assert!(success_after >= attempt, "the fix is the last success");
}

/// Whether `text` holds `file:LINE:COL`.
fn regex_like_location(text: &str, file: &str) -> bool {
    text.match_indices(&format!("{file}:")).any(|(at, m)| {
        let rest = &text[at + m.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let col: String = parts
            .next()
            .unwrap_or("")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        !line.is_empty() && line.chars().all(|c| c.is_ascii_digit()) && !col.is_empty()
    })
}

#[test]
fn a_revoked_partitions_lag_series_disappears() {
    let _serial = serial();
    let setup = Setup::new("metrics-lag", &[("rules.toml", RULES)]);
    setup.create_topics(2);
    let t = setup.topics.clone();
    let mut a = setup.start("metrics-lag-a");
    a.wait_ready();
    a.wait_assigned();

    // Events on both partitions: a lag series needs a position to measure from.
    let mut producer = TestProducer::new(&t.input);
    for n in 0..40 {
        let value = event(
            &format!("lag-{n}"),
            &format!("u{n}@example.org"),
            "pool-a",
            &["weekly"],
        );
        producer.send(&Input::new(
            n % 2,
            Some(&format!("k{n}")),
            value.to_string(),
        ));
    }
    producer.flush();
    a.wait_processed(40.0);
    wait_until("A's lag series for both partitions", || {
        lag(&a, 0).is_some() && lag(&a, 1).is_some()
    });
    assert_eq!(assigned(&a), vec![0, 1]);

    // B joins: one partition moves to it.
    let mut b = setup.start("metrics-lag-b");
    b.wait_ready();
    let took = wait_until("the partitions split between A and B", || {
        assigned(&a).len() == 1 && assigned(&b).len() == 1
    });
    let (kept, moved) = (assigned(&a)[0], assigned(&b)[0]);
    eprintln!("B took partition {moved} after {took:?}; A keeps {kept}");

    // The revoked partition's series is gone from A, and stays gone while
    // A's statistics keep coming (every second).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let text = a.metrics();
        assert_eq!(
            metric(
                &text,
                "bouncer_consumer_lag",
                &[("partition", &moved.to_string())]
            ),
            None,
            "A still exports the lag of partition {moved}, which it no longer owns:\n{text}"
        );
        assert!(
            metric(
                &text,
                "bouncer_consumer_lag",
                &[("partition", &kept.to_string())]
            )
            .is_some(),
            "A lost the lag series of partition {kept}, which it kept"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until("B's lag series for the partition it took", || {
        lag(&b, moved).is_some()
    });
    assert_eq!(lag(&b, kept), None, "B exports no lag for A's partition");
    let text = a.metrics();
    assert!(
        metric(&text, "bouncer_rebalances_total", &[("kind", "revoke")]).unwrap_or(0.0) >= 1.0,
        "A counted the revocation"
    );

    // B leaves: the partition and its series come back to A.
    b.terminate();
    let exit = b.wait_exit(Duration::from_secs(30)).expect("B exits");
    assert!(exit.success(), "B exit status {exit}");
    wait_until("A to own both partitions again", || {
        assigned(&a) == vec![0, 1]
    });
    wait_until("A's lag series for the returned partition", || {
        lag(&a, moved).is_some()
    });
    a.terminate();
    assert!(
        a.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}
