//! `bouncer demo` runs the real pipeline on the in-process mock cluster.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_accounts_for_every_event() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let summary = bouncer::demo::demo(&rules, 2_000).expect("demo runs");
    let stopped: u64 =
        summary.failed.values().sum::<u64>() + summary.deferred.values().sum::<u64>();
    let invalid: u64 = summary.invalid.values().sum();
    assert_eq!(summary.forwarded + stopped + invalid, 2_000, "{summary:?}");
    assert_eq!(
        summary.retry,
        summary.deferred.values().sum::<u64>(),
        "one retry record per deferral"
    );
    for rule in ["cancel-campaign-x", "suspend-customer-z"] {
        assert!(
            summary.failed.get(rule).copied().unwrap_or(0) > 0,
            "{rule} stopped nothing: {summary:?}"
        );
    }
    assert!(
        summary
            .deferred
            .get("defer-gmail-shared-pools")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(
        summary
            .shadow
            .get("shadow-disposable-domains")
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(invalid > 0);
    // The rule posted through the REST API half-way stops campaign Z from then on.
    let api: u64 = summary
        .failed
        .iter()
        .filter(|(rule, _)| rule.starts_with("api-"))
        .map(|(_, n)| *n)
        .sum();
    assert!(api > 0, "the API rule stopped nothing: {summary:?}");
}

#[test]
fn demo_command_prints_the_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_bouncer"))
        .args(["demo", "--events", "500", "--rules"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("500 events on an in-process Kafka mock cluster"),
        "{text}"
    );
    for word in [
        "forwarded",
        "failed",
        "deferred",
        "invalid",
        "bouncer_events_total",
        "POST /v1/errors",
        "the metric totals equal the records in the output topics",
    ] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
}
