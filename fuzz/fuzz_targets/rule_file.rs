//! Arbitrary bytes as a TOML and as a JSON rule file. Loading never panics;
//! every error has a position inside the file; a valid set obeys SPEC §2,
//! indexes, and decides events built from its own rules as a linear scan
//! does.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use bouncer::domain::normalize;
use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event};
use bouncer::rules::load::{LoadError, RuleFiles, parse_files};
use bouncer::rules::{Mode, Rule, RuleSet, Source};
use libfuzzer_sys::fuzz_target;

/// Events every valid set is asked about, besides those built from its rules.
const EVENTS: &[&str] = &[
    r#"{"recipient":"user@gmail.com","pool":"shared-pool-1","ips":["192.0.2.1"],"tags":["campaign_X","customer_Y"]}"#,
    r#"{"recipient":"user@[192.0.2.1]","envelope":"","ips":["2001:db8::1","::ffff:10.1.2.3"]}"#,
    r#"{"recipient":"user@bücher.example","envelope":"a@News.Example.ORG.","maxattempts":1,"results":[{}]}"#,
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let root = Path::new("rules");
    for name in ["fuzz.toml", "fuzz.json"] {
        let files = RuleFiles {
            files: vec![(name.to_owned(), text.clone())],
        };
        match parse_files(root, &files) {
            Ok(rules) => check_valid(name, &text, rules),
            Err(LoadError::Invalid(diags)) => {
                assert!(!diags.is_empty(), "an invalid set without diagnostics");
                let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
                for d in &diags {
                    assert_eq!(d.file, root.join(name));
                    assert!(d.line >= 1 && d.line <= lines, "{d}: line out of range");
                    let line_text = text.split('\n').nth(d.line - 1).unwrap_or("");
                    let cols = line_text.chars().count() + 1;
                    assert!(d.col >= 1 && d.col <= cols, "{d}: column out of range");
                    assert!(!d.message.is_empty(), "{d}: empty message");
                }
            }
            Err(e @ LoadError::Missing(_)) => panic!("parse_files read the disk: {e}"),
        }
    }
});

fn check_valid(name: &str, text: &str, rules: Vec<Rule>) {
    for rule in &rules {
        check_rule(name, rule);
    }
    // The same file twice: all-or-nothing, every id is now a duplicate.
    if !rules.is_empty() {
        let twice = RuleFiles {
            files: vec![
                (name.to_owned(), text.to_owned()),
                (format!("copy/{name}"), text.to_owned()),
            ],
        };
        match parse_files(Path::new("rules"), &twice) {
            Err(LoadError::Invalid(diags)) => {
                assert!(diags.iter().all(|d| d.message.contains("duplicate id")));
            }
            other => panic!("duplicate ids accepted: {other:?}"),
        }
    }

    let now = common::now();
    let set = RuleSet::new(rules.clone());
    assert_eq!(set.len(), rules.len());
    for json in EVENTS {
        let event = Event::parse(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES).expect("valid");
        common::check_decision(&set, &event, now);
    }
    for rule in &rules {
        let Some(json) = event_for(rule) else {
            continue;
        };
        let event = Event::parse(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES)
            .unwrap_or_else(|e| panic!("event {json} built from rule {} is {e}", rule.id));
        assert!(rule.matches(&event), "rule {} misses {json}", rule.id);
        common::check_decision(&set, &event, now);
        if rule.is_active(now) && rule.mode == Mode::Enforce {
            let winner = set
                .decide(&event, now)
                .rule
                .expect("an enforce rule matched");
            assert!(winner.precedence_key() <= rule.precedence_key());
        }
    }
}

/// What SPEC §2 guarantees of every rule that loads.
fn check_rule(name: &str, rule: &Rule) {
    let id = &rule.id;
    assert!((1..=128).contains(&id.len()), "id {id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
        "id {id:?}"
    );
    assert!(!id.starts_with("api-"), "id {id:?}");
    assert!((400..=599).contains(&rule.code), "{id}: code {}", rule.code);
    if let Some(status) = &rule.status {
        let class = status.split('.').next().unwrap();
        assert_eq!(
            class,
            (rule.code / 100).to_string(),
            "{id}: status {status}"
        );
    }
    let chars = rule.description.chars().count();
    assert!(
        (1..=512).contains(&chars),
        "{id}: description length {chars}"
    );
    assert!(!rule.description.chars().any(char::is_control), "{id}");
    assert!(
        rule.match_all || rule.condition_count() > 0,
        "{id}: no condition without match_all"
    );
    if let Some(nets) = &rule.conditions.mta {
        assert!(!nets.is_empty(), "{id}: empty mta");
        assert!(
            rule.match_all || nets.iter().all(|n| n.prefix_len() > 0),
            "{id}: /0 without match_all"
        );
    }
    if let (Some(nb), Some(exp)) = (rule.not_before, rule.expires) {
        assert!(nb < exp, "{id}: expires not after not_before");
    }
    assert_eq!(rule.source, Source::File(name.to_owned()));
}

/// An event that the rule's conditions all hold for, or `None` where one
/// cannot be written down (a domain that normalises differently a second
/// time, such as `a..`, or a v6 range whose first address is IPv4-mapped).
fn event_for(rule: &Rule) -> Option<String> {
    let c = &rule.conditions;
    let domain = |set: &bouncer::rules::DomainSet| -> Option<String> {
        let d = match set.exact.iter().next() {
            Some(d) => d.to_owned(),
            None => format!("x.{}", set.suffixes.iter().next()?),
        };
        (normalize(&d) == d).then_some(d)
    };
    let mut event = serde_json::Map::new();
    let recipient = match &c.domain {
        Some(set) => format!("user@{}", domain(set)?),
        None => "user@example.net".to_owned(),
    };
    event.insert("recipient".into(), recipient.into());
    if let Some(set) = &c.sender_domain {
        event.insert("envelope".into(), format!("sender@{}", domain(set)?).into());
    }
    if let Some(nets) = &c.mta {
        let ip = nets.first()?.network();
        if ip.to_canonical() != ip {
            return None;
        }
        event.insert("ips".into(), vec![ip.to_string()].into());
    }
    if let Some(pools) = &c.pool {
        event.insert("pool".into(), pools.iter().next()?.into());
    }
    if let Some(tags) = &c.tags {
        let tags: Vec<&str> = tags.iter().collect();
        event.insert("tags".into(), tags.into());
    }
    Some(serde_json::Value::Object(event).to_string())
}
