//! `RuleSet::decide` (SPEC §1–3): conditions and list semantics, domain and
//! IP matching, absent fields, precedence, shadow and inactive rules, time
//! windows, and deferrals that become final. Rules go through the real
//! loader, so every test also exercises the rule syntax users write.

mod common;

use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event};
use bouncer::rules::{Mode, Rule, RuleSet};
use chrono::{DateTime, Duration, Utc};
use common::*;

// ---------------------------------------------------------------- conditions

#[test]
fn domain_matches_the_recipient_domain() {
    let set = ruleset(&[rule("r", 550, r#"domain = "example.com""#)]);
    assert!(matches(&set, r#"{"recipient": "a@example.com"}"#));
    assert!(!matches(&set, r#"{"recipient": "a@example.org"}"#));
    assert!(!matches(&set, r#"{"recipient": "a@mail.example.com"}"#));
    // The sender's domain is not the recipient's.
    assert!(!matches(
        &set,
        r#"{"recipient": "a@example.org", "envelope": "b@example.com"}"#
    ));
    // The domain is what follows the last "@".
    assert!(matches(&set, r#"{"recipient": "\"a@b\"@example.com"}"#));
}

#[test]
fn sender_domain_matches_the_envelope_domain() {
    let set = ruleset(&[rule("r", 550, r#"sender_domain = "news.example.org""#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "envelope": "bounce@news.example.org"}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "envelope": "bounce@example.org"}"#
    ));
    // The recipient's domain is not the sender's.
    assert!(!matches(
        &set,
        r#"{"recipient": "a@news.example.org", "envelope": "b@x.example"}"#
    ));
}

#[test]
fn pool_matches_the_event_pool_exactly() {
    let set = ruleset(&[rule("r", 550, r#"pool = "shared-pool-1""#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "pool": "shared-pool-1"}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "pool": "shared-pool-10"}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "pool": "shared-pool"}"#
    ));
}

#[test]
fn mta_matches_the_event_ips() {
    let set = ruleset(&[rule("r", 550, r#"mta = "192.0.2.10""#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["192.0.2.10"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["192.0.2.11"]}"#
    ));
}

#[test]
fn tags_match_exactly_and_case_sensitively() {
    let set = ruleset(&[rule("r", 550, r#"tags = "campaign_X""#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "tags": ["other", "campaign_X"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "tags": ["campaign_x"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "tags": ["campaign_X2"]}"#
    ));
}

#[test]
fn all_present_conditions_must_hold() {
    let set = ruleset(&[rule(
        "r",
        550,
        r#"domain = "gmail.com"
pool = "p1"
sender_domain = "news.example.org"
mta = "192.0.2.0/24"
tags = "t""#,
    )]);
    let full = r#"{"recipient": "a@gmail.com", "pool": "p1", "envelope": "b@news.example.org",
                   "ips": ["192.0.2.1"], "tags": ["t"]}"#;
    assert!(matches(&set, full));
    // Change one field at a time: each alone stops the match.
    for (from, to) in [
        ("a@gmail.com", "a@yahoo.com"),
        (r#""p1""#, r#""p2""#),
        ("b@news.example.org", "b@example.org"),
        ("192.0.2.1", "198.51.100.1"),
        (r#"["t"]"#, r#"["u"]"#),
    ] {
        let event = full.replace(from, to);
        assert!(!matches(&set, &event), "still matches with {to}: {event}");
    }
}

// ---------------------------------------------------------- list semantics

#[test]
fn a_list_is_any_of_for_domain_pool_sender_domain_and_mta() {
    let set = ruleset(&[
        rule("domains", 550, r#"domain = ["a.example", "b.example"]"#),
        rule("pools", 550, r#"pool = ["p1", "p2"]"#),
        rule(
            "senders",
            550,
            r#"sender_domain = ["s1.example", "s2.example"]"#,
        ),
        rule("ips", 550, r#"mta = ["192.0.2.10", "2001:db8::/32"]"#),
    ]);
    for (event, id) in [
        (r#"{"recipient": "x@a.example"}"#, "domains"),
        (r#"{"recipient": "x@b.example"}"#, "domains"),
        (r#"{"recipient": "x@c.example", "pool": "p1"}"#, "pools"),
        (r#"{"recipient": "x@c.example", "pool": "p2"}"#, "pools"),
        (
            r#"{"recipient": "x@c.example", "envelope": "y@s1.example"}"#,
            "senders",
        ),
        (
            r#"{"recipient": "x@c.example", "envelope": "y@s2.example"}"#,
            "senders",
        ),
        (
            r#"{"recipient": "x@c.example", "ips": ["192.0.2.10"]}"#,
            "ips",
        ),
        (
            r#"{"recipient": "x@c.example", "ips": ["2001:db8::7"]}"#,
            "ips",
        ),
    ] {
        assert_eq!(decide(&set, event).matched, [id], "for {event}");
    }
    let none = r#"{"recipient": "x@c.example", "pool": "p3", "envelope": "y@s3.example",
                   "ips": ["192.0.2.11"]}"#;
    assert!(!matches(&set, none));
}

#[test]
fn tags_are_all_of() {
    let set = ruleset(&[rule("r", 550, r#"tags = ["campaign_X", "customer_Y"]"#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "tags": ["customer_Y", "other", "campaign_X"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "tags": ["campaign_X"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "tags": ["customer_Y"]}"#
    ));
}

// ----------------------------------------------------------------- domains

#[test]
fn wildcard_matches_subdomains_at_any_depth_but_not_the_domain_itself() {
    let set = ruleset(&[rule("r", 550, r#"domain = "*.example.com""#)]);
    assert!(matches(&set, r#"{"recipient": "a@mail.example.com"}"#));
    assert!(matches(&set, r#"{"recipient": "a@a.b.c.example.com"}"#));
    assert!(!matches(&set, r#"{"recipient": "a@example.com"}"#));
    assert!(!matches(&set, r#"{"recipient": "a@badexample.com"}"#));
    assert!(!matches(&set, r#"{"recipient": "a@example.com.evil.org"}"#));
    assert!(!matches(&set, r#"{"recipient": "a@com"}"#));
}

#[test]
fn a_domain_and_its_wildcard_together_cover_both() {
    let set = ruleset(&[rule(
        "r",
        550,
        r#"domain = ["example.com", "*.example.com"]"#,
    )]);
    assert!(matches(&set, r#"{"recipient": "a@example.com"}"#));
    assert!(matches(&set, r#"{"recipient": "a@x.example.com"}"#));
    assert!(!matches(&set, r#"{"recipient": "a@example.org"}"#));
}

#[test]
fn sender_domain_wildcards_work_like_domain_wildcards() {
    let set = ruleset(&[rule("r", 550, r#"sender_domain = "*.mail.example.org""#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "envelope": "b@eu.mail.example.org"}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "envelope": "b@mail.example.org"}"#
    ));
}

#[test]
fn case_and_a_trailing_dot_are_ignored_on_both_sides() {
    let set = ruleset(&[
        rule("upper-rule", 550, r#"domain = "Example.COM.""#),
        rule("wild", 550, r#"domain = "*.Example.NET""#),
    ]);
    assert_eq!(
        winner(&set, r#"{"recipient": "a@example.com"}"#).as_deref(),
        Some("upper-rule")
    );
    assert_eq!(
        winner(&set, r#"{"recipient": "A@EXAMPLE.Com."}"#).as_deref(),
        Some("upper-rule")
    );
    assert_eq!(
        winner(&set, r#"{"recipient": "a@Mail.example.net."}"#).as_deref(),
        Some("wild")
    );
    let senders = ruleset(&[rule("r", 550, r#"sender_domain = "news.example.org""#)]);
    assert!(matches(
        &senders,
        r#"{"recipient": "a@x.example", "envelope": "b@NEWS.Example.org."}"#
    ));
}

#[test]
fn unicode_and_punycode_domains_are_the_same_in_rule_or_event() {
    let unicode_rule = ruleset(&[rule("r", 550, r#"domain = "bücher.example""#)]);
    let ascii_rule = ruleset(&[rule("r", 550, r#"domain = "xn--bcher-kva.example""#)]);
    for set in [&unicode_rule, &ascii_rule] {
        assert!(matches(set, r#"{"recipient": "a@bücher.example"}"#));
        assert!(matches(set, r#"{"recipient": "a@BÜCHER.example"}"#));
        assert!(matches(set, r#"{"recipient": "a@xn--bcher-kva.example"}"#));
        assert!(matches(set, r#"{"recipient": "a@XN--BCHER-KVA.EXAMPLE."}"#));
        assert!(matches(set, r#"{"recipient": "a@Bücher.Example."}"#));
        // A JSON escape is the same character.
        assert!(matches(set, r#"{"recipient": "a@b\u00fccher.example"}"#));
        assert!(!matches(set, r#"{"recipient": "a@bucher.example"}"#));
    }
}

#[test]
fn unicode_wildcards_and_sender_domains_are_normalised_too() {
    let set = ruleset(&[
        rule("wild", 550, r#"domain = "*.bücher.example""#),
        rule("sender", 550, r#"sender_domain = "xn--bcher-kva.example""#),
    ]);
    assert_eq!(
        winner(&set, r#"{"recipient": "a@shop.xn--bcher-kva.example"}"#).as_deref(),
        Some("wild")
    );
    assert_eq!(
        winner(
            &set,
            r#"{"recipient": "a@x.example", "envelope": "n@bücher.example"}"#
        )
        .as_deref(),
        Some("sender")
    );
}

#[test]
fn sharp_s_is_not_folded_to_ss() {
    let sharp = ruleset(&[rule("r", 550, r#"domain = "faß.de""#)]);
    assert!(matches(&sharp, r#"{"recipient": "a@faß.de"}"#));
    assert!(matches(&sharp, r#"{"recipient": "a@xn--fa-hia.de"}"#));
    assert!(!matches(&sharp, r#"{"recipient": "a@fass.de"}"#));
    let ss = ruleset(&[rule("r", 550, r#"domain = "fass.de""#)]);
    assert!(matches(&ss, r#"{"recipient": "a@fass.de"}"#));
    assert!(!matches(&ss, r#"{"recipient": "a@faß.de"}"#));
}

#[test]
fn an_address_literal_never_matches_a_domain_condition() {
    let set = ruleset(&[
        rule(
            "ip-as-domain",
            550,
            r#"domain = ["192.0.2.1", "*.2.1", "*.1"]"#,
        ),
        rule(
            "sender-ip",
            550,
            r#"sender_domain = ["192.0.2.1", "*.2.1"]"#,
        ),
        rule("pool", 451, r#"pool = "p1""#),
    ]);
    let d = decide(&set, r#"{"recipient": "user@[192.0.2.1]"}"#);
    assert_eq!(d.outcome, "forwarded");
    assert!(d.matched.is_empty());
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "envelope": "b@[192.0.2.1]"}"#
    ));
    // The event itself is valid: conditions on other fields still apply.
    assert_eq!(
        winner(&set, r#"{"recipient": "user@[192.0.2.1]", "pool": "p1"}"#).as_deref(),
        Some("pool")
    );
}

// --------------------------------------------------------------------- IPs

#[test]
fn ipv4_and_ipv6_cidrs() {
    let set = ruleset(&[rule(
        "r",
        550,
        r#"mta = ["198.51.100.0/24", "2001:db8:10::/64"]"#,
    )]);
    for ip in [
        "198.51.100.0",
        "198.51.100.7",
        "198.51.100.255",
        "2001:db8:10::5",
        "2001:DB8:10:0:0:0:ffff:1",
    ] {
        let event = format!(r#"{{"recipient": "a@x.example", "ips": ["{ip}"]}}"#);
        assert!(matches(&set, &event), "{ip} is in the ranges");
    }
    for ip in [
        "198.51.101.0",
        "198.51.99.255",
        "2001:db8:11::5",
        "::1",
        "not-an-ip",
    ] {
        let event = format!(r#"{{"recipient": "a@x.example", "ips": ["{ip}"]}}"#);
        assert!(!matches(&set, &event), "{ip} is not in the ranges");
    }
}

#[test]
fn an_ipv4_range_never_matches_an_ipv6_address_and_vice_versa() {
    let set = ruleset(&[rule("r", 550, r#"mta = ["192.0.2.0/24", "2001:db8::/32"]"#)]);
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["2001:db9::1"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["::c000:201"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["193.0.2.1"]}"#
    ));
}

#[test]
fn mta_match_all_needs_at_least_one_ip_and_every_one_in_the_ranges() {
    for extra in [
        r#"mta = ["192.0.2.0/28", "2001:db8::/32"]"#,
        "mta = [\"192.0.2.0/28\", \"2001:db8::/32\"]\nmta_match = \"all\"",
    ] {
        let set = ruleset(&[rule("r", 550, extra)]);
        let m = |ips: &str| {
            let event = format!(r#"{{"recipient": "a@x.example", "ips": {ips}}}"#);
            matches(&set, &event)
        };
        assert!(m(r#"["192.0.2.1"]"#), "{extra}");
        assert!(
            m(r#"["192.0.2.1", "192.0.2.15", "2001:db8::1"]"#),
            "{extra}"
        );
        assert!(!m(r#"["192.0.2.1", "192.0.2.16"]"#), "{extra}");
        assert!(!m(r#"["203.0.113.1", "192.0.2.1"]"#), "{extra}");
        assert!(!m(r#"["192.0.2.1", "garbage"]"#), "{extra}");
        assert!(!m("[]"), "{extra}: empty ips never match");
        assert!(!m("null"), "{extra}: null ips never match");
        assert!(
            !matches(&set, r#"{"recipient": "a@x.example"}"#),
            "{extra}: absent ips never match"
        );
    }
}

#[test]
fn mta_match_any_needs_one_ip_in_the_ranges() {
    let set = ruleset(&[rule(
        "r",
        550,
        "mta = \"192.0.2.0/28\"\nmta_match = \"any\"",
    )]);
    let m = |ips: &str| {
        let event = format!(r#"{{"recipient": "a@x.example", "ips": {ips}}}"#);
        matches(&set, &event)
    };
    assert!(m(r#"["192.0.2.1"]"#));
    assert!(m(r#"["203.0.113.1", "192.0.2.1"]"#));
    assert!(m(r#"["garbage", "192.0.2.1"]"#));
    assert!(!m(r#"["203.0.113.1", "192.0.2.16"]"#));
    assert!(!m("[]"));
    assert!(!m("null"));
    assert!(!matches(&set, r#"{"recipient": "a@x.example"}"#));
}

#[test]
fn ipv4_mapped_ipv6_event_addresses_match_ipv4_ranges() {
    let set = ruleset(&[rule("r", 550, r#"mta = "198.51.100.0/24""#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["::ffff:198.51.100.7"]}"#
    ));
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["::FFFF:c633:6407"]}"#
    ));
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["::ffff:198.51.100.7", "198.51.100.8"]}"#
    ));
    assert!(!matches(
        &set,
        r#"{"recipient": "a@x.example", "ips": ["::ffff:198.51.101.7"]}"#
    ));
    // A range written in the mapped form is the IPv4 range.
    let mapped = ruleset(&[rule("r", 550, r#"mta = "::ffff:198.51.100.0/120""#)]);
    assert!(matches(
        &mapped,
        r#"{"recipient": "a@x.example", "ips": ["198.51.100.7"]}"#
    ));
    assert!(!matches(
        &mapped,
        r#"{"recipient": "a@x.example", "ips": ["198.51.101.7"]}"#
    ));
}

// ------------------------------------------------------ absent and null fields

#[test]
fn a_condition_on_a_field_the_event_lacks_does_not_match() {
    let set = ruleset(&[
        rule("pool", 550, r#"pool = "p1""#),
        rule("sender", 550, r#"sender_domain = "*.example""#),
        rule("tags", 550, r#"tags = "t""#),
        rule("mta-all", 550, r#"mta = "192.0.2.0/24""#),
        rule(
            "mta-any",
            550,
            "mta = \"192.0.2.0/24\"\nmta_match = \"any\"",
        ),
    ]);
    let d = decide(&set, r#"{"recipient": "a@x.example"}"#);
    assert_eq!(d.outcome, "forwarded");
    assert!(d.matched.is_empty(), "{d:?}");
}

#[test]
fn null_fields_are_absent() {
    let set = ruleset(&[
        rule("pool", 550, r#"pool = "p1""#),
        rule("sender", 550, r#"sender_domain = "*.example""#),
        rule("tags", 550, r#"tags = "t""#),
        rule("mta-all", 550, r#"mta = "192.0.2.0/24""#),
        rule(
            "mta-any",
            550,
            "mta = \"192.0.2.0/24\"\nmta_match = \"any\"",
        ),
        rule("defer", 451, r#"domain = "x.example""#),
    ]);
    let d = decide(
        &set,
        r#"{"recipient": "a@x.example", "envelope": null, "ips": null, "pool": null,
            "tags": null, "maxdelivertime": null, "maxattempts": null, "results": null}"#,
    );
    assert_eq!(d.matched, ["defer"]);
    // null deadlines and attempt counts impose no limit.
    assert_eq!(d.outcome, "deferred");
}

#[test]
fn an_empty_envelope_is_the_null_sender_with_no_domain() {
    let set = ruleset(&[rule(
        "r",
        550,
        r#"sender_domain = ["x.example", "*.x.example"]"#,
    )]);
    let d = decide(&set, r#"{"recipient": "a@x.example", "envelope": ""}"#);
    assert_eq!(d.outcome, "forwarded");
    assert!(d.matched.is_empty());
}

#[test]
fn an_absent_condition_matches_anything() {
    let set = ruleset(&[rule("r", 550, r#"domain = "x.example""#)]);
    assert!(matches(
        &set,
        r#"{"recipient": "a@x.example", "pool": "any", "ips": ["203.0.113.9"],
            "tags": ["whatever"], "envelope": "b@y.example"}"#
    ));
}

#[test]
fn match_all_rules_match_every_event() {
    let set = ruleset(&[rule("everything", 421, "match_all = true")]);
    for event in [
        r#"{"recipient": "a@x.example"}"#,
        r#"{"recipient": "user@[192.0.2.1]", "envelope": ""}"#,
    ] {
        assert_eq!(
            winner(&set, event).as_deref(),
            Some("everything"),
            "{event}"
        );
    }
}

// -------------------------------------------------------------- precedence

#[test]
fn a_5xx_rule_beats_a_4xx_rule_with_more_condition_keys() {
    let set = ruleset(&[
        rule(
            "a-defer",
            451,
            "domain = \"gmail.com\"\npool = \"p1\"\ntags = \"t\"\nsender_domain = \"s.example\"",
        ),
        rule("z-fail", 550, r#"domain = "gmail.com""#),
    ]);
    let d = decide(
        &set,
        r#"{"recipient": "a@gmail.com", "pool": "p1", "tags": ["t"], "envelope": "b@s.example"}"#,
    );
    assert_eq!(d.rule.as_deref(), Some("z-fail"));
    assert_eq!(d.outcome, "failed");
    assert_eq!(d.matched, ["z-fail", "a-defer"]);
}

#[test]
fn more_condition_keys_win_within_a_class() {
    let set = ruleset(&[
        rule("a-broad", 550, r#"domain = "gmail.com""#),
        rule("z-narrow", 554, "domain = \"gmail.com\"\ntags = \"t\""),
        rule("a-broad-defer", 451, r#"domain = "gmail.com""#),
        rule(
            "z-narrow-defer",
            421,
            "domain = \"gmail.com\"\npool = \"p\"",
        ),
    ]);
    let both = r#"{"recipient": "a@gmail.com", "tags": ["t"], "pool": "p"}"#;
    assert_eq!(winner(&set, both).as_deref(), Some("z-narrow"));
    let set_4xx = ruleset(&[
        rule("a-broad-defer", 451, r#"domain = "gmail.com""#),
        rule(
            "z-narrow-defer",
            421,
            "domain = \"gmail.com\"\npool = \"p\"",
        ),
    ]);
    assert_eq!(winner(&set_4xx, both).as_deref(), Some("z-narrow-defer"));
}

#[test]
fn each_condition_key_counts_once_whatever_its_list_length() {
    let set = ruleset(&[
        rule(
            "a-long-list",
            550,
            r#"domain = ["gmail.com", "googlemail.com", "*.gmail.com", "g.example"]"#,
        ),
        rule("b-two-keys", 550, "domain = \"gmail.com\"\npool = \"p\""),
    ]);
    assert_eq!(
        winner(&set, r#"{"recipient": "a@gmail.com", "pool": "p"}"#).as_deref(),
        Some("b-two-keys")
    );
}

#[test]
fn mta_match_and_match_all_are_not_condition_keys() {
    let set = ruleset(&[
        rule(
            "a-mta",
            550,
            "mta = \"192.0.2.0/24\"\nmta_match = \"all\"\nmatch_all = true",
        ),
        rule("b-mta-pool", 550, "mta = \"192.0.2.0/24\"\npool = \"p\""),
    ]);
    assert_eq!(
        winner(
            &set,
            r#"{"recipient": "a@x.example", "pool": "p", "ips": ["192.0.2.1"]}"#
        )
        .as_deref(),
        Some("b-mta-pool")
    );
}

#[test]
fn ties_go_to_the_smallest_id_in_byte_order() {
    // Uppercase sorts before lowercase in bytes; "1" sorts before "9".
    let set = ruleset(&[
        rule("a", 550, r#"domain = "x.example""#),
        rule("B", 554, r#"domain = "x.example""#),
    ]);
    assert_eq!(
        winner(&set, r#"{"recipient": "u@x.example"}"#).as_deref(),
        Some("B")
    );
    let set = ruleset(&[
        rule("rule-9", 550, r#"domain = "x.example""#),
        rule("rule-10", 551, r#"domain = "x.example""#),
    ]);
    assert_eq!(
        winner(&set, r#"{"recipient": "u@x.example"}"#).as_deref(),
        Some("rule-10")
    );
    let set = ruleset(&[
        rule("b", 451, r#"pool = "p""#),
        rule("a.z", 421, r#"tags = "t""#),
        rule("a-z", 452, r#"domain = "x.example""#),
    ]);
    // '-' (0x2d) < '.' (0x2e) < 'b'
    assert_eq!(
        winner(
            &set,
            r#"{"recipient": "u@x.example", "pool": "p", "tags": ["t"]}"#
        )
        .as_deref(),
        Some("a-z")
    );
}

#[test]
fn precedence_does_not_depend_on_file_order() {
    let winner_last = [
        rule("z", 550, r#"domain = "x.example""#),
        rule("m", 550, r#"domain = "x.example""#),
        rule("a", 550, r#"domain = "x.example""#),
    ];
    let mut winner_first = winner_last.clone();
    winner_first.reverse();
    for tables in [&winner_last[..], &winner_first[..]] {
        let set = ruleset(tables);
        let d = decide(&set, r#"{"recipient": "u@x.example"}"#);
        assert_eq!(d.rule.as_deref(), Some("a"));
        assert_eq!(d.matched, ["a", "m", "z"]);
    }
}

// ----------------------------------------------------------- shadow / active

#[test]
fn shadow_rules_never_win_and_are_reported_sorted() {
    let set = ruleset(&[
        rule(
            "b-shadow",
            554,
            "domain = \"x.example\"\npool = \"p\"\nmode = \"shadow\"",
        ),
        rule("a-shadow", 550, "domain = \"x.example\"\nmode = \"shadow\""),
        rule("A-shadow", 451, "domain = \"x.example\"\nmode = \"shadow\""),
        rule(
            "z-enforce",
            451,
            "domain = \"x.example\"\nmode = \"enforce\"",
        ),
    ]);
    let d = decide(&set, r#"{"recipient": "u@x.example", "pool": "p"}"#);
    assert_eq!(d.rule.as_deref(), Some("z-enforce"));
    assert_eq!(d.outcome, "deferred");
    assert_eq!(d.shadow, ["A-shadow", "a-shadow", "b-shadow"]);
}

#[test]
fn only_shadow_matches_forward_the_event_and_report_them() {
    let set = ruleset(&[
        rule("s2", 550, "domain = \"x.example\"\nmode = \"shadow\""),
        rule("s1", 550, "tags = \"t\"\nmode = \"shadow\""),
        rule("other", 550, r#"domain = "y.example""#),
    ]);
    let d = decide(&set, r#"{"recipient": "u@x.example", "tags": ["t"]}"#);
    assert_eq!(d.outcome, "forwarded");
    assert_eq!(d.rule, None);
    assert_eq!(d.shadow, ["s1", "s2"]);
}

#[test]
fn inactive_rules_neither_win_nor_are_reported() {
    let set = ruleset(&[
        rule(
            "expired-fail",
            550,
            "domain = \"x.example\"\nexpires = 2026-11-27T12:00:00Z",
        ),
        rule(
            "scheduled-fail",
            550,
            "domain = \"x.example\"\nnot_before = 2026-11-27T12:00:01Z",
        ),
        rule(
            "expired-shadow",
            550,
            "domain = \"x.example\"\nmode = \"shadow\"\nexpires = 2026-11-01T00:00:00Z",
        ),
        rule(
            "scheduled-shadow",
            550,
            "domain = \"x.example\"\nmode = \"shadow\"\nnot_before = 2026-12-01T00:00:00Z",
        ),
        rule(
            "active-shadow",
            550,
            "domain = \"x.example\"\nmode = \"shadow\"",
        ),
        rule("active-defer", 451, r#"domain = "x.example""#),
    ]);
    let d = decide(&set, r#"{"recipient": "u@x.example"}"#);
    assert_eq!(d.rule.as_deref(), Some("active-defer"));
    assert_eq!(d.outcome, "deferred");
    assert_eq!(d.shadow, ["active-shadow"]);
    assert_eq!(d.matched, ["active-shadow", "active-defer"]);
}

// ------------------------------------------------------------ time windows

fn windowed(extra: &str) -> RuleSet {
    ruleset(&[rule("w", 550, &format!("domain = \"x.example\"\n{extra}"))])
}

fn active_at(set: &RuleSet, t: DateTime<Utc>) -> bool {
    decide_at(set, r#"{"recipient": "u@x.example"}"#, t)
        .rule
        .is_some()
}

#[test]
fn not_before_is_inclusive() {
    let start = at("2026-12-01T08:00:00Z");
    for extra in [
        "not_before = 2026-12-01T08:00:00Z",
        "not_before = 2026-12-01T09:00:00+01:00",
        "not_before = \"2026-12-01T08:00:00Z\"",
        "not_before = \"2026-12-01T03:00:00-05:00\"",
    ] {
        let set = windowed(extra);
        assert!(
            active_at(&set, start),
            "{extra}: active at exactly not_before"
        );
        assert!(
            !active_at(&set, start - Duration::nanoseconds(1)),
            "{extra}: 1 ns before"
        );
        assert!(
            !active_at(&set, start - Duration::seconds(1)),
            "{extra}: 1 s before"
        );
        assert!(
            active_at(&set, start + Duration::days(365)),
            "{extra}: long after"
        );
    }
}

#[test]
fn expires_is_exclusive() {
    let end = at("2026-12-02T08:00:00Z");
    for extra in [
        "expires = 2026-12-02T08:00:00Z",
        "expires = 2026-12-02T10:00:00+02:00",
        "expires = \"2026-12-02T08:00:00Z\"",
        "expires = \"2026-12-02T08:00:00+00:00\"",
    ] {
        let set = windowed(extra);
        assert!(!active_at(&set, end), "{extra}: expired at exactly expires");
        assert!(
            !active_at(&set, end + Duration::seconds(1)),
            "{extra}: after"
        );
        assert!(
            active_at(&set, end - Duration::nanoseconds(1)),
            "{extra}: 1 ns before"
        );
        assert!(
            active_at(&set, end - Duration::days(365)),
            "{extra}: long before"
        );
    }
}

#[test]
fn a_window_with_both_ends() {
    let set =
        windowed("not_before = 2026-12-05T22:00:00Z\nexpires = \"2026-12-06T04:00:00+00:00\"");
    assert!(!active_at(&set, at("2026-12-05T21:59:59Z")));
    assert!(active_at(&set, at("2026-12-05T22:00:00Z")));
    assert!(active_at(&set, at("2026-12-06T03:59:59.999999999Z")));
    assert!(!active_at(&set, at("2026-12-06T04:00:00Z")));
}

#[test]
fn fractional_seconds_in_window_bounds_are_kept() {
    let set = windowed("not_before = 2026-12-01T08:00:00.5Z");
    assert!(!active_at(&set, at("2026-12-01T08:00:00.499999999Z")));
    assert!(active_at(&set, at("2026-12-01T08:00:00.5Z")));
}

// ------------------------------------------------- deferrals becoming final

fn defer_rule() -> RuleSet {
    ruleset(&[rule("defer", 451, r#"domain = "x.example""#)])
}

fn outcome_with(set: &RuleSet, fields: &str, now: DateTime<Utc>) -> (&'static str, Option<String>) {
    let event = format!(r#"{{"recipient": "u@x.example"{fields}}}"#);
    let d = decide_at(set, &event, now);
    (d.outcome, d.rule)
}

#[test]
fn a_4xx_deferral_fails_at_exactly_maxdelivertime() {
    let set = defer_rule();
    let deadline = r#", "maxdelivertime": "2026-11-27 12:00:00""#;
    let failed = ("failed", Some("defer".to_owned()));
    let deferred = ("deferred", Some("defer".to_owned()));
    assert_eq!(
        outcome_with(&set, deadline, at("2026-11-27T12:00:00Z")),
        failed
    );
    assert_eq!(
        outcome_with(&set, deadline, at("2026-11-27T12:00:00.5Z")),
        failed
    );
    assert_eq!(
        outcome_with(&set, deadline, at("2026-11-28T00:00:00Z")),
        failed
    );
    // maxdelivertime one second later than now.
    assert_eq!(
        outcome_with(&set, deadline, at("2026-11-27T11:59:59Z")),
        deferred
    );
    assert_eq!(
        outcome_with(&set, deadline, at("2026-11-27T11:59:59.999999999Z")),
        deferred
    );
}

#[test]
fn maxdelivertime_is_utc_whatever_the_rule_offsets() {
    let set = defer_rule();
    let deadline = r#", "maxdelivertime": "2026-11-27 12:00:00""#;
    // 13:00 at +01:00 is 12:00 UTC.
    let now = DateTime::parse_from_rfc3339("2026-11-27T12:59:59+01:00")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(outcome_with(&set, deadline, now).0, "deferred");
    assert_eq!(
        outcome_with(&set, deadline, now + Duration::seconds(1)).0,
        "failed"
    );
}

#[test]
fn a_4xx_deferral_fails_once_results_hold_maxattempts_entries() {
    let set = defer_rule();
    let n = now();
    assert_eq!(
        outcome_with(&set, r#", "maxattempts": 3, "results": [{}, {}, {}]"#, n).0,
        "failed"
    );
    assert_eq!(
        outcome_with(
            &set,
            r#", "maxattempts": 3, "results": [{}, {}, {}, {}]"#,
            n
        )
        .0,
        "failed"
    );
    assert_eq!(
        outcome_with(&set, r#", "maxattempts": 3, "results": [{}, {}]"#, n).0,
        "deferred"
    );
    assert_eq!(
        outcome_with(
            &set,
            r#", "maxattempts": 1, "results": [{"state": "x"}]"#,
            n
        )
        .0,
        "failed"
    );
    // No results yet: nothing is used up.
    assert_eq!(outcome_with(&set, r#", "maxattempts": 1"#, n).0, "deferred");
    assert_eq!(
        outcome_with(&set, r#", "maxattempts": 1, "results": []"#, n).0,
        "deferred"
    );
}

#[test]
fn maxattempts_zero_is_no_limit() {
    let set = defer_rule();
    let many = format!(
        r#", "maxattempts": 0, "results": [{}]"#,
        vec!["{}"; 50].join(",")
    );
    assert_eq!(outcome_with(&set, &many, now()).0, "deferred");
    let no_max = format!(r#", "results": [{}]"#, vec!["{}"; 50].join(","));
    assert_eq!(outcome_with(&set, &no_max, now()).0, "deferred");
}

#[test]
fn a_5xx_rule_fails_whatever_the_deadline() {
    let set = ruleset(&[rule("fail", 550, r#"domain = "x.example""#)]);
    let far = r#", "maxdelivertime": "2099-01-01 00:00:00", "maxattempts": 10, "results": []"#;
    assert_eq!(
        outcome_with(&set, far, now()),
        ("failed", Some("fail".to_owned()))
    );
}

#[test]
fn a_deadline_without_a_matching_rule_forwards() {
    let set = defer_rule();
    let event = r#"{"recipient": "u@y.example", "maxdelivertime": "2000-01-01 00:00:00",
                    "maxattempts": 1, "results": [{}]}"#;
    assert_eq!(decide(&set, event).outcome, "forwarded");
}

// ------------------------------------------ the index agrees with the rules

/// A small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn some<'a>(&mut self, items: &[&'a str], max: usize) -> Vec<&'a str> {
        let n = 1 + (self.next() % max as u64) as usize;
        (0..n).map(|_| self.pick(items)).collect()
    }
}

const DOMAINS: &[&str] = &[
    "a.example",
    "b.example",
    "*.a.example",
    "*.example",
    "bücher.example",
];
const EVENT_DOMAINS: &[&str] = &[
    "a.example",
    "b.example",
    "x.a.example",
    "y.b.example",
    "xn--bcher-kva.example",
    "c.test",
];
const POOLS: &[&str] = &["p1", "p2", "p3"];
const TAGS: &[&str] = &["t1", "t2", "t3", "t4"];
const NETS: &[&str] = &[
    "192.0.2.0/24",
    "192.0.2.0/28",
    "192.0.2.7",
    "198.51.100.0/24",
    "2001:db8::/32",
    "2001:db8::1",
];
const IPS: &[&str] = &[
    "192.0.2.7",
    "192.0.2.100",
    "198.51.100.1",
    "203.0.113.1",
    "2001:db8::1",
    "2001:db8::2",
    "::ffff:192.0.2.7",
];

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// What `decide` must return, computed by checking every rule in full.
fn reference(
    set: &RuleSet,
    event: &Event<'_>,
    now: DateTime<Utc>,
) -> (Option<String>, Vec<String>) {
    let mut matching: Vec<&Rule> = set
        .rules()
        .iter()
        .filter(|r| r.is_active(now) && r.matches(event))
        .collect();
    matching.sort_by(|a, b| a.precedence_key().cmp(&b.precedence_key()));
    let winner = matching
        .iter()
        .find(|r| r.mode == Mode::Enforce)
        .map(|r| r.id.clone());
    (winner, matching.iter().map(|r| r.id.clone()).collect())
}

#[test]
fn the_index_never_hides_or_invents_a_match() {
    let mut rng = Rng(0x5eed_b0b0_cafe_f00d);
    let mut tables = Vec::new();
    for i in 0..300 {
        let mut extra = String::new();
        if rng.chance(40) {
            extra += &format!("domain = {}\n", list(&rng.some(DOMAINS, 3)));
        }
        if rng.chance(25) {
            extra += &format!("sender_domain = {}\n", list(&rng.some(DOMAINS, 2)));
        }
        if rng.chance(30) {
            extra += &format!("pool = {}\n", list(&rng.some(POOLS, 2)));
        }
        if rng.chance(30) {
            extra += &format!("tags = {}\n", list(&rng.some(TAGS, 2)));
        }
        if rng.chance(30) {
            extra += &format!("mta = {}\n", list(&rng.some(NETS, 2)));
            extra += &format!("mta_match = {:?}\n", rng.pick(&["all", "any"]));
        }
        if extra.is_empty() {
            extra += "match_all = true\n";
        }
        if rng.chance(20) {
            extra += "mode = \"shadow\"\n";
        }
        if rng.chance(10) {
            extra += "expires = 2026-11-27T12:00:00Z\n";
        }
        let code = *[421u16, 451, 550, 554]
            .get((rng.next() % 4) as usize)
            .unwrap();
        tables.push(rule(&format!("r{i}"), code, &extra));
    }
    let set = ruleset(&tables);
    let now = now();
    let mut matched_events = 0;
    for _ in 0..2000 {
        let mut fields = format!(r#""recipient": "u@{}""#, rng.pick(EVENT_DOMAINS));
        if rng.chance(60) {
            fields += &format!(r#", "envelope": "s@{}""#, rng.pick(EVENT_DOMAINS));
        }
        if rng.chance(60) {
            fields += &format!(r#", "pool": "{}""#, rng.pick(POOLS));
        }
        if rng.chance(60) {
            fields += &format!(r#", "tags": {}"#, list(&rng.some(TAGS, 3)));
        }
        if rng.chance(60) {
            fields += &format!(r#", "ips": {}"#, list(&rng.some(IPS, 2)));
        }
        let json = format!("{{{fields}}}");
        let event = Event::parse(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap();
        let d = set.decide(&event, now);
        let (want_winner, want_matched) = reference(&set, &event, now);
        let got_matched: Vec<String> = d.matched.iter().map(|r| r.id.clone()).collect();
        assert_eq!(
            d.rule.map(|r| r.id.clone()),
            want_winner,
            "winner for {json}"
        );
        assert_eq!(got_matched, want_matched, "matching rules for {json}");
        matched_events += usize::from(!want_matched.is_empty());
    }
    // The generator must exercise matches, not only misses.
    assert!(matched_events > 500, "only {matched_events} events matched");
}
