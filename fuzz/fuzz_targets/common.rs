//! Shared by the fuzz targets: a fixed, realistic rule set and the oracles
//! every decision is checked against.

#![allow(dead_code)] // each target uses a different part of this file

use std::path::Path;
use std::sync::OnceLock;

use bouncer::event::{Event, Field, Invalid};
use bouncer::rules::load::{parse_files, read_dir};
use bouncer::rules::{Mode, Outcome, Rule, RuleSet};
use chrono::{DateTime, TimeZone, Utc};

/// The instant every decision is made at: inside the repository's
/// maintenance window, so its time-windowed rule is active, and after
/// `EXTRA_RULES`' expired rule.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 6, 0, 0, 0).unwrap()
}

/// Rules that reach the parts of the index the repository's examples leave
/// out: `mta_match = "any"`, IPv4-mapped ranges, IDN and wildcard domains,
/// sender domains with tags, a shadow `match_all` rule, an expired rule, and
/// rules sharing anchors so that precedence decides.
const EXTRA_RULES: &str = r#"
[[rule]]
id = "fuzz-any-v4"
code = 550
description = "fuzz: any IP in 10/8 or a mapped 172.16/12"
mta = ["10.0.0.0/8", "::ffff:172.16.0.0/108"]
mta_match = "any"

[[rule]]
id = "fuzz-v6-all"
code = 450
status = "4.4.1"
description = "fuzz: every IP in the documentation ranges"
mta = ["2001:db8::/32", "192.0.2.0/24"]

[[rule]]
id = "fuzz-pool"
code = 421
description = "fuzz: a pool deferral"
pool = ["p1", "shared-pool-1"]

[[rule]]
id = "fuzz-idn"
code = 553
status = "5.1.3"
description = "fuzz: internationalised names"
domain = ["bücher.example", "*.xn--fa-hia.de", "*.例え.jp", "GMAIL.com."]

[[rule]]
id = "fuzz-sender-tags"
code = 451
description = "fuzz: a sender domain with two tags"
sender_domain = ["*.example.org", "news.customer-z.example"]
tags = ["a", "campaign_X"]

[[rule]]
id = "fuzz-gmail-4xx"
code = 452
description = "fuzz: loses to any 5xx rule on gmail"
domain = "gmail.com"
pool = "p1"

[[rule]]
id = "fuzz-shadow-all"
code = 550
description = "fuzz: a shadow rule that matches everything"
match_all = true
mode = "shadow"

[[rule]]
id = "fuzz-expired"
code = 550
description = "fuzz: expired"
domain = "gmail.com"
expires = 2020-01-01T00:00:00Z

[[rule]]
id = "fuzz-not-yet"
code = 550
description = "fuzz: not yet in force"
tags = "a"
not_before = "2030-01-01T00:00:00+01:00"
"#;

/// The repository's `rules/` plus [`EXTRA_RULES`], indexed once.
pub fn rule_set() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        let mut files = read_dir(&root).expect("the repository's rules/ is readable");
        files
            .files
            .push(("fuzz/extra.toml".to_owned(), EXTRA_RULES.to_owned()));
        let rules = parse_files(&root, &files).expect("the fuzz rule set is valid");
        RuleSet::new(rules)
    })
}

/// Whether a 4xx deferral is final for this event (SPEC §3).
fn deferral_is_final(event: &Event<'_>, now: DateTime<Utc>) -> bool {
    event.max_deliver_time.is_some_and(|t| now.timestamp() >= t)
        || (event.max_attempts > 0 && event.attempts() >= event.max_attempts)
}

/// Checks `decide` against a linear scan of every rule: the index may only
/// narrow the candidates, never change the answer.
pub fn check_decision(set: &RuleSet, event: &Event<'_>, now: DateTime<Utc>) {
    let rules = set.rules();
    for pair in rules.windows(2) {
        assert!(
            pair[0].precedence_key() < pair[1].precedence_key(),
            "rules() is not in strict precedence order: {} before {}",
            pair[0].id,
            pair[1].id
        );
    }
    let decision = set.decide(event, now);
    let expected: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.is_active(now) && r.matches(event))
        .collect();
    let got: Vec<&str> = decision.matched.iter().map(|r| r.id.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, want, "matched rules differ from a linear scan");

    let winner = expected.iter().find(|r| r.mode == Mode::Enforce);
    assert_eq!(
        decision.rule.map(|r| r.id.as_str()),
        winner.map(|r| r.id.as_str()),
        "winner differs from a linear scan"
    );
    let outcome = match winner {
        None => Outcome::Forwarded,
        Some(r) if r.code >= 500 => Outcome::Failed,
        Some(_) if deferral_is_final(event, now) => Outcome::Failed,
        Some(_) => Outcome::Deferred,
    };
    assert_eq!(decision.outcome, outcome);

    let shadow = decision.shadow_ids();
    assert!(shadow.is_sorted(), "shadow ids are not sorted: {shadow:?}");
    let mut want_shadow: Vec<&str> = expected
        .iter()
        .filter(|r| r.mode == Mode::Shadow)
        .map(|r| r.id.as_str())
        .collect();
    want_shadow.sort_unstable();
    assert_eq!(shadow, want_shadow);
}

/// The reason codes SPEC §1 allows, with their field where they have one.
pub fn check_reason_code(error: &str) {
    let code = error.split_once(": ").map_or(error, |(code, _)| code);
    let ok = matches!(
        code,
        "not-utf8"
            | "not-json"
            | "not-object"
            | "recipient-missing"
            | "recipient-no-domain"
            | "too-large"
    ) || ["wrong-type:", "duplicate-key:"].iter().any(|prefix| {
        code.strip_prefix(prefix)
            .is_some_and(|field| Field::ALL.iter().any(|f| f.name() == field))
    });
    assert!(ok, "unknown reason code in {error:?}");
}

/// Checks what SPEC §1 fixes about a parse result, independently of how the
/// parser works.
pub fn check_parse(data: &[u8], parsed: &Result<Event<'_>, Invalid>) {
    let text = std::str::from_utf8(data);
    let syntax_ok = text
        .as_ref()
        .is_ok_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
    match parsed {
        Err(invalid) => {
            let error = invalid.to_string();
            check_reason_code(&error);
            let code = error.split_once(": ").map_or(&*error, |(code, _)| code);
            match code {
                "not-utf8" => assert!(text.is_err()),
                // Valid JSON is only refused for a string that must be read
                // but holds a lone surrogate escape, so is no text.
                "not-json" => assert!(
                    !syntax_ok || error.contains("surrogate") || error.contains("hex escape"),
                    "valid JSON reported as not-json: {error}"
                ),
                "too-large" => panic!("too-large within the limit"),
                _ => assert!(syntax_ok, "invalid JSON not reported as not-json: {error}"),
            }
            if code == "not-object" {
                let first = text.unwrap().trim_start_matches([' ', '\t', '\n', '\r']);
                assert!(!first.starts_with('{'), "an object reported as not-object");
            }
        }
        Ok(event) => {
            assert!(syntax_ok, "invalid JSON accepted as an event");
            let (_, domain) = event
                .recipient
                .rsplit_once('@')
                .expect("an accepted recipient has an @");
            assert_eq!(event.recipient_domain.is_none(), domain.starts_with('['));
            if let Some(d) = event.recipient_domain.as_deref() {
                assert!(!d.is_empty());
                assert!(!d.bytes().any(|b| b.is_ascii_uppercase()), "{d:?}");
            }
            if let Some(d) = event.sender_domain.as_deref() {
                assert!(!d.is_empty());
                assert!(!d.bytes().any(|b| b.is_ascii_uppercase()), "{d:?}");
            }
        }
    }
}
