//! Hostile input (issue #2): events and rule files built to break a parser.
//! Every event gets the exact reason code SPEC §1 gives it (or parses), the
//! `eval` verdict agrees and is one JSON line; every rule directory loads or
//! is refused with located diagnostics. Nothing panics or overflows the
//! stack. The fuzz targets under `fuzz/` search the same ground at random.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use bouncer::eval::{Verdict, evaluate};
use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event, Field, Reason};
use bouncer::rules::{LoadError, RuleSet, load_dir};
use chrono::{DateTime, Utc};

const NOW: &str = "2026-11-27T12:00:00Z";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .unwrap()
        .with_timezone(&Utc)
}

/// Events far beyond the default limit are allowed where a test says so.
const NO_LIMIT: usize = usize::MAX;

/// A realistic MailerQ event: every field of the table, escapes, non-ASCII
/// text, a MIME body and fields bouncer does not read.
const REALISTIC: &str = r#"{"envelope":"bounce+7f3a@news.customer-z.example","recipient":"J\u00fcrgen.M\u00fcller+tag@B\u00fccher.Example.","ips":["192.0.2.10","2001:db8:10::5"],"pool":"shared-pool-1","tags":["campaign_X","customer_Y","gr\u00fc\u00dfe"],"maxdelivertime":"2026-12-01 08:00:00","maxattempts":5,"results":[{"time":"2026-11-27 11:00:00","state":"connect","result":"error","code":421,"description":"try \"later\""}],"mime":"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: n@news.customer-z.example\r\n\r\nH\u00e9llo \ud83d\ude00 \u2603","keepmime":false,"id":"a1b2","x":{"deep":[1,2.5e-3,-0,true,null,{"k":"v"}]},"ünïcode":"ключ"}"#;

/// The rules every event here is decided against: one per condition kind.
const RULES: &str = r#"
[[rule]]
id = "cancel-campaign-x"
code = 550
status = "5.7.1"
description = "Campaign X cancelled"
tags = ["campaign_X", "customer_Y"]

[[rule]]
id = "idn"
code = 553
description = "IDN domains"
domain = ["bücher.example", "xn--zz.example", "*.xn--e28h.example", "paypal.com", "example.com"]

[[rule]]
id = "defer-pool"
code = 451
description = "Pool deferral"
pool = "shared-pool-1"

[[rule]]
id = "shadow-everything"
code = 550
description = "Shadow catch-all"
match_all = true
mode = "shadow"
"#;

fn rule_set() -> RuleSet {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    RuleSet::new(load_dir(dir.path()).expect("the test rules are valid"))
}

/// The reason code of an event (without detail), or `ok`; also checks that
/// `eval`'s verdict says the same in one JSON line.
fn code_with_limit(set: &RuleSet, bytes: &[u8], limit: usize) -> String {
    let parsed = Event::parse(bytes, limit);
    let verdict = evaluate(set, bytes, now(), limit);
    let line = serde_json::to_string(&verdict).expect("verdicts serialise");
    assert!(!line.contains('\n'), "a verdict is one line: {line}");
    let value: serde_json::Value = serde_json::from_str(&line).expect("a verdict is JSON");
    match (&parsed, &verdict) {
        (Err(invalid), Verdict::Invalid { outcome, error }) => {
            assert_eq!(*outcome, "invalid");
            assert_eq!(*error, invalid.to_string());
            assert_eq!(value["error"].as_str(), Some(error.as_str()));
            invalid.reason.to_string()
        }
        (Ok(event), Verdict::Decided { outcome, rule, .. }) => {
            let decision = set.decide(event, now());
            assert_eq!(*outcome, decision.outcome.as_str());
            assert_eq!(*rule, decision.rule.map(|r| r.id.as_str()));
            "ok".to_owned()
        }
        _ => panic!("parse {parsed:?} and verdict {line} disagree"),
    }
}

fn code(set: &RuleSet, bytes: impl AsRef<[u8]>) -> String {
    code_with_limit(set, bytes.as_ref(), DEFAULT_MAX_EVENT_BYTES)
}

fn parse(bytes: &[u8]) -> Event<'_> {
    Event::parse(bytes, NO_LIMIT).unwrap_or_else(|e| {
        panic!(
            "{:?} is invalid: {e}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })
}

fn recipient_domain(json: &str) -> Option<String> {
    parse(json.as_bytes())
        .recipient_domain
        .map(|d| d.into_owned())
}

// -------------------------------------------------------------- truncation

#[test]
fn the_realistic_event_decides() {
    let set = rule_set();
    let event = parse(REALISTIC.as_bytes());
    assert_eq!(
        event.recipient_domain.as_deref(),
        Some("xn--bcher-kva.example")
    );
    assert_eq!(
        event.sender_domain.as_deref(),
        Some("news.customer-z.example")
    );
    assert_eq!(event.tags.len(), 3);
    assert_eq!((event.max_attempts, event.attempts()), (5, 1));
    let decision = set.decide(&event, now());
    // Both 5xx rules match; more condition keys do not decide between one
    // key each, the smaller id does.
    assert_eq!(decision.rule.unwrap().id, "cancel-campaign-x");
    assert_eq!(decision.shadow_ids(), ["shadow-everything"]);
}

#[test]
fn every_truncation_of_a_realistic_event_is_invalid() {
    let set = rule_set();
    let bytes = REALISTIC.as_bytes();
    for len in 0..bytes.len() {
        let prefix = &bytes[..len];
        // A cut inside a multi-byte character is caught as bad UTF-8 first.
        let want = if std::str::from_utf8(prefix).is_ok() {
            "not-json"
        } else {
            "not-utf8"
        };
        assert_eq!(code(&set, prefix), want, "prefix of {len} bytes");
    }
    assert_eq!(code(&set, bytes), "ok");
}

#[test]
fn every_truncation_keeps_the_detail_short_and_located() {
    // The detail names where parsing stopped, never echoes the input.
    let bytes = REALISTIC.as_bytes();
    for len in (1..bytes.len()).filter(|&l| std::str::from_utf8(&bytes[..l]).is_ok()) {
        let invalid = Event::parse(&bytes[..len], NO_LIMIT).unwrap_err();
        assert_eq!(invalid.reason, Reason::NotJson);
        assert!(invalid.detail.contains("line 1 column"), "{invalid}");
        assert!(invalid.detail.len() < 100, "{invalid}");
    }
}

// ----------------------------------------------------------------- nesting

#[test]
fn deep_unclosed_nesting_is_not_json() {
    let set = rule_set();
    let n = 100_000;
    let brackets = "[".repeat(n);
    let braces = r#"{"a":"#.repeat(n);
    assert_eq!(code(&set, &brackets), "not-json");
    assert_eq!(code(&set, &braces), "not-json");
    for field in ["x", "recipient", "tags", "results", "maxattempts"] {
        let event = format!(r#"{{"recipient":"a@b.example","{field}":{brackets}"#);
        assert_eq!(code(&set, &event), "not-json", "{field}");
        let event = format!(r#"{{"{field}":{braces}"#);
        assert_eq!(code(&set, &event), "not-json", "{field}");
    }
}

#[test]
fn deep_closed_nesting_is_skipped_without_recursion() {
    // Valid JSON however deep: values bouncer does not read are skipped
    // without recursing (serde_json's skipping is iterative), so the event
    // is valid, and forwarded untouched; read fields get their type error.
    let set = rule_set();
    let n = 100_000;
    let array = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let object = format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    for deep in [&array, &object] {
        let event = |field: &str| format!(r#"{{"recipient":"a@b.example","{field}":{deep}}}"#);
        assert_eq!(code(&set, event("x")), "ok");
        assert_eq!(code(&set, event("mime")), "ok");
        assert_eq!(code(&set, event("tags")), "wrong-type:tags");
        assert_eq!(code(&set, event("ips")), "wrong-type:ips");
        assert_eq!(code(&set, event("envelope")), "wrong-type:envelope");
        assert_eq!(code(&set, event("maxattempts")), "wrong-type:maxattempts");
        assert_eq!(code(&set, event("recipient")), "duplicate-key:recipient");
        assert_eq!(
            code(&set, format!(r#"{{"recipient":{deep}}}"#)),
            "wrong-type:recipient"
        );
    }
    assert_eq!(code(&set, &array), "not-object");
    assert_eq!(code(&set, &object), "recipient-missing");
    // In `results` only the entries are counted.
    let event = format!(r#"{{"recipient":"a@b.example","results":[{array},{object}]}}"#);
    assert_eq!(parse(event.as_bytes()).attempts(), 2);
    let event = format!(r#"{{"recipient":"a@b.example","results":{object}}}"#);
    assert_eq!(code(&set, event), "wrong-type:results");
    // Inside a tag list.
    let event = format!(r#"{{"recipient":"a@b.example","tags":["a",{array}]}}"#);
    assert_eq!(code(&set, event), "wrong-type:tags");
}

// ------------------------------------------------------------------- sizes

#[test]
fn huge_strings_parse_and_decide_when_allowed() {
    let set = rule_set();
    let label = "x".repeat(5 << 20);
    let event = format!(r#"{{"recipient":"a@{label}.example","envelope":"b@{label}"}}"#);
    assert_eq!(code(&set, &event), "too-large");
    let parsed = parse(event.as_bytes());
    assert_eq!(parsed.recipient_domain.unwrap().len(), label.len() + 8);
    assert_eq!(code_with_limit(&set, event.as_bytes(), NO_LIMIT), "ok");

    // Escapes make the strings owned; the result is the same.
    let escaped = r"\u0041".repeat(1 << 20);
    let event = format!(r#"{{"recipient":"{escaped}@{escaped}.Example"}}"#);
    let parsed = parse(event.as_bytes());
    assert_eq!(parsed.recipient.len(), 2 * (1 << 20) + 9);
    assert_eq!(
        parsed.recipient_domain.as_deref(),
        Some(format!("{}.example", "a".repeat(1 << 20)).as_str())
    );

    // Non-ASCII labels go through IDNA, in linear time.
    let label = "ü".repeat(1 << 20);
    let started = Instant::now();
    let event = format!(r#"{{"recipient":"a@{label}.example"}}"#);
    assert_eq!(code_with_limit(&set, event.as_bytes(), NO_LIMIT), "ok");
    let distinct: String = ('\u{4E00}'..='\u{9FFF}').collect();
    let event = format!(r#"{{"recipient":"a@{distinct}{distinct}.example"}}"#);
    assert_eq!(code_with_limit(&set, event.as_bytes(), NO_LIMIT), "ok");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn huge_tag_and_ip_lists_decide() {
    let set = rule_set();
    let mut tags = vec![r#""campaign_X""#; 200_000];
    tags.push(r#""customer_Y""#);
    let ips = [r#""192.0.2.1""#, r#""not an ip""#].repeat(100_000);
    let event = format!(
        r#"{{"recipient":"a@b.example","tags":[{}],"ips":[{}]}}"#,
        tags.join(","),
        ips.join(",")
    );
    assert!(event.len() > 4 << 20);
    assert_eq!(code(&set, &event), "too-large");
    let parsed = parse(event.as_bytes());
    assert_eq!((parsed.tags.len(), parsed.ips.len()), (200_001, 200_000));
    let decision = set.decide(&parsed, now());
    assert_eq!(decision.rule.unwrap().id, "cancel-campaign-x");
    // One element of the wrong type anywhere makes the list the wrong type.
    let event = format!(
        r#"{{"recipient":"a@b.example","tags":[{},1]}}"#,
        tags.join(",")
    );
    assert_eq!(
        code_with_limit(&set, event.as_bytes(), NO_LIMIT),
        "wrong-type:tags"
    );
}

#[test]
fn size_limit_is_checked_first() {
    let set = rule_set();
    let limit = 64;
    let valid = br#"{"recipient":"a@b.example"}"#;
    assert_eq!(code_with_limit(&set, valid, limit), "ok");
    assert_eq!(code_with_limit(&set, valid, valid.len()), "ok");
    assert_eq!(code_with_limit(&set, valid, valid.len() - 1), "too-large");
    // Even bad UTF-8 or garbage over the limit is `too-large`.
    assert_eq!(code_with_limit(&set, &[0xff; 65], limit), "too-large");
    assert_eq!(code_with_limit(&set, &[b'['; 65], limit), "too-large");
    assert_eq!(code_with_limit(&set, b"", limit), "not-json");
}

// ------------------------------------------------------------------- UTF-8

#[test]
fn invalid_utf8_anywhere_is_not_utf8_with_its_offset() {
    let set = rule_set();
    let valid = r#"{"recipient":"a@b.example","tags":["t"],"x":"y"}"#;
    let bad: &[&[u8]] = &[
        b"\xff",             // never valid
        b"\x80",             // a lone continuation byte
        b"\xc3",             // truncated two-byte sequence
        b"\xe2\x82",         // truncated three-byte sequence
        b"\xc0\x80",         // overlong NUL
        b"\xed\xa0\x80",     // a UTF-16 surrogate encoded in UTF-8
        b"\xf4\x90\x80\x80", // beyond U+10FFFF
        b"\xfe\xff",         // a UTF-16 byte order mark
    ];
    // Positions: the start, inside a key, inside the recipient, inside an
    // unread value, between tokens, at the very end.
    let positions = [0, 3, 17, 44, 26, valid.len()];
    for seq in bad {
        for &at in &positions {
            let mut bytes = valid.as_bytes()[..at].to_vec();
            bytes.extend_from_slice(seq);
            bytes.extend_from_slice(&valid.as_bytes()[at..]);
            assert_eq!(code(&set, &bytes), "not-utf8", "{seq:x?} at {at}");
            let invalid = Event::parse(&bytes, NO_LIMIT).unwrap_err();
            assert_eq!(
                invalid.detail,
                format!("invalid byte at offset {at}"),
                "{seq:x?} at {at}"
            );
        }
    }
    // The whole event as UTF-16.
    let utf16: Vec<u8> = valid.encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert_eq!(code(&set, utf16), "not-json");
}

#[test]
fn byte_order_mark_is_not_json() {
    // RFC 8259 forbids sending one; MailerQ never does.
    let set = rule_set();
    assert_eq!(
        code(&set, "\u{feff}{\"recipient\":\"a@b.example\"}"),
        "not-json"
    );
    // Inside a string it is just a character.
    assert_eq!(
        recipient_domain("{\"recipient\":\"a@\u{feff}b.example\"}").as_deref(),
        Some("b.example")
    );
}

// ------------------------------------------------------ NULs and surrogates

#[test]
fn nul_bytes() {
    let set = rule_set();
    // Raw control characters are not allowed in JSON strings or between tokens.
    assert_eq!(code(&set, b"{\"recipient\":\"a\0@b.example\"}"), "not-json");
    assert_eq!(code(&set, b"{\"recipient\":\"a@b.example\"}\0"), "not-json");
    assert_eq!(code(&set, b"\0{\"recipient\":\"a@b.example\"}"), "not-json");
    assert_eq!(code(&set, b"{\"recipient\":\0\"a@b.example\"}"), "not-json");
    assert_eq!(code(&set, b"\0"), "not-json");
    // Escaped, a NUL is an ordinary character of the string.
    let event = br#"{"recipient":"a\u0000@b.example\u0000","tags":["\u0000"],"x":"\u0000"}"#;
    let parsed = parse(event);
    assert_eq!(parsed.recipient, "a\0@b.example\0");
    assert_eq!(parsed.recipient_domain.as_deref(), Some("b.example\0"));
    assert_eq!(parsed.tags[0], "\0");
    assert_eq!(code(&set, event), "ok");
    // A NUL domain is a domain; a NUL key is another key.
    assert_eq!(code(&set, br#"{"recipient":"a@\u0000"}"#), "ok");
    assert_eq!(
        code(&set, br#"{"recipient\u0000":"a@b.example"}"#),
        "recipient-missing"
    );
}

#[test]
fn lone_surrogate_escapes() {
    let set = rule_set();
    // A value bouncer does not read is skipped, not decoded, and forwarded
    // untouched.
    for escape in [r"\ud800", r"\udfff", r"\ud800\u0041", r"\udc00\ud800"] {
        let event = format!(r#"{{"recipient":"a@b.example","mime":"{escape}"}}"#);
        assert_eq!(code(&set, &event), "ok", "{escape}");
    }
    // A read string has to become text, and a lone surrogate is none
    // (RFC 8259 §8.2: its meaning is unpredictable): the event is refused as
    // not-json rather than matched on a guess.
    for escape in [
        r"\ud800",
        r"\udfff",
        r"\ud800\u0041",
        r"\udc00\ud800",
        r"\ud800\ud800",
    ] {
        for field in ["recipient", "envelope", "pool", "maxdelivertime"] {
            let event = format!(r#"{{"recipient":"a@b.example","{field}":"a@{escape}"}}"#);
            // A second recipient is a duplicate, skipped without decoding.
            let want = if field == "recipient" {
                "duplicate-key:recipient"
            } else {
                "not-json"
            };
            assert_eq!(code(&set, &event), want, "{field} {escape}");
            let event = format!(r#"{{"{field}":"a@{escape}","recipient":"a@b.example"}}"#);
            assert_eq!(code(&set, &event), "not-json", "{field} {escape}");
        }
        let event = format!(r#"{{"recipient":"a@b.example","tags":["{escape}"]}}"#);
        assert_eq!(code(&set, &event), "not-json", "tags {escape}");
        // And so is a key with one.
        let event = format!(r#"{{"recipient":"a@b.example","k{escape}":1}}"#);
        assert_eq!(code(&set, &event), "not-json", "key {escape}");
    }
    // Whatever a top-level string holds, it is not an object.
    for text in [r#""\ud800""#, r#" "a\ud83d\r\n" "#, r#"["\udc00"]"#] {
        assert_eq!(code(&set, text), "not-object", "{text}");
    }
    assert_eq!(code(&set, r#""\ud800" x"#), "not-json");
    // A proper pair is a character like any other.
    assert_eq!(
        recipient_domain(r#"{"recipient":"a@\ud83d\ude00.example"}"#).as_deref(),
        Some("xn--e28h.example")
    );
}

// ------------------------------------------------------------- wrong types

#[test]
fn wrong_types_for_every_field() {
    let set = rule_set();
    let string_fields = [
        Field::Recipient,
        Field::Envelope,
        Field::Pool,
        Field::MaxDeliverTime,
    ];
    let not_strings = [
        "1",
        "-1",
        "1.5",
        "1e400",
        "true",
        "false",
        "[]",
        r#"["a@b.example"]"#,
        "{}",
        r#"{"recipient":"a@b.example"}"#,
    ];
    for field in string_fields {
        for value in not_strings {
            let event = if field == Field::Recipient {
                format!(r#"{{"recipient":{value}}}"#)
            } else {
                format!(
                    r#"{{"recipient":"a@b.example","{}":{value}}}"#,
                    field.name()
                )
            };
            assert_eq!(
                code(&set, &event),
                format!("wrong-type:{}", field.name()),
                "{event}"
            );
        }
    }
    let not_string_lists = [
        "1",
        "1e400",
        r#""campaign_X""#,
        "true",
        "{}",
        "[1]",
        "[1e400]",
        r#"["a",null]"#,
        r#"["a",["b"]]"#,
        r#"["a",{}]"#,
        r#"["a",true]"#,
    ];
    for field in [Field::Ips, Field::Tags] {
        for value in not_string_lists {
            let event = format!(
                r#"{{"recipient":"a@b.example","{}":{value}}}"#,
                field.name()
            );
            assert_eq!(
                code(&set, &event),
                format!("wrong-type:{}", field.name()),
                "{event}"
            );
        }
    }
    for value in ["1", "1e400", r#""[]""#, "true", "{}"] {
        let event = format!(r#"{{"recipient":"a@b.example","results":{value}}}"#);
        assert_eq!(code(&set, &event), "wrong-type:results", "{event}");
    }
    // null is absent, for every field.
    for field in Field::ALL {
        let event = format!(r#"{{"recipient":"a@b.example","{}":null}}"#, field.name());
        let want = if field == Field::Recipient {
            "duplicate-key:recipient"
        } else {
            "ok"
        };
        assert_eq!(code(&set, &event), want, "{event}");
    }
    assert_eq!(code(&set, r#"{"recipient":null}"#), "recipient-missing");
    // The first problem in document order is the one reported.
    assert_eq!(
        code(&set, r#"{"tags":1,"pool":2,"recipient":3}"#),
        "wrong-type:tags"
    );
    assert_eq!(
        code(&set, r#"{"pool":2,"recipient":"x"}"#),
        "wrong-type:pool"
    );
    // ... but a syntax error anywhere wins.
    assert_eq!(
        code(&set, r#"{"tags":1,"recipient":"a@b.example",}"#),
        "not-json"
    );
    assert_eq!(
        code(&set, r#"{"tags":1,"recipient":"a@b.example"} x"#),
        "not-json"
    );
}

#[test]
fn maxdelivertime_strings_that_are_not_mailerq_times() {
    let set = rule_set();
    for value in [
        "2026-13-01 00:00:00",
        "2026-02-30 00:00:00",
        "2026-12-01T00:00:00Z",
        "2026-12-01",
        "yesterday",
        "2026-12-01 24:00:01",
        "99999999-12-01 00:00:00",
    ] {
        let event = format!(r#"{{"recipient":"a@b.example","maxdelivertime":"{value}"}}"#);
        assert_eq!(code(&set, &event), "wrong-type:maxdelivertime", "{value}");
    }
    // Empty means none, as in MailerQ.
    assert_eq!(
        code(&set, r#"{"recipient":"a@b.example","maxdelivertime":""}"#),
        "ok"
    );
}

// ----------------------------------------------------------------- numbers

#[test]
fn numbers_for_maxattempts() {
    let set = rule_set();
    let event = |n: &str| format!(r#"{{"recipient":"a@b.example","maxattempts":{n}}}"#);
    for n in ["0", "5", "18446744073709551615"] {
        let max = parse(event(n).as_bytes()).max_attempts;
        assert_eq!(max.to_string(), n);
    }
    for n in [
        "-1",
        "-0",
        "1.0",
        "1.5",
        "1e2",
        "1E2",
        "5e-1",
        "0e0",
        "1e400",
        "-1e400",
        "1e-400",
        "18446744073709551616",
        &"9".repeat(400),
        &format!("1{}", "0".repeat(400)),
        r#""5""#,
    ] {
        assert_eq!(code(&set, event(n)), "wrong-type:maxattempts", "{n}");
    }
    // Numbers that are not JSON.
    for n in ["01", "+1", ".5", "1.", "0x10", "NaN", "Infinity", "-", "1e"] {
        assert_eq!(code(&set, event(n)), "not-json", "{n}");
    }
}

#[test]
fn numbers_beyond_f64_are_json() {
    // serde_json refuses 1e400 where it converts a number; bouncer reads the
    // text again so that only the reason code SPEC §1 gives is reported.
    let set = rule_set();
    let huge = ["1e400", "-1e400", &format!("1{}", "0".repeat(400))];
    for n in huge {
        // Where bouncer does not read it: valid.
        let event = format!(r#"{{"recipient":"a@b.example","x":{n},"results":[{n}]}}"#);
        assert_eq!(code(&set, &event), "ok", "{n}");
        assert_eq!(parse(event.as_bytes()).attempts(), 1);
        // Where it does: the wrong type.
        for field in Field::ALL {
            let event = format!(r#"{{"recipient":"a@b.example","{}":{n}}}"#, field.name());
            let want = if field == Field::Recipient {
                "duplicate-key:recipient".to_owned()
            } else {
                format!("wrong-type:{}", field.name())
            };
            assert_eq!(code(&set, &event), want, "{event}");
        }
        assert_eq!(
            code(
                &set,
                format!(r#"{{"tags":["a",{n}],"recipient":"a@b.example"}}"#)
            ),
            "wrong-type:tags"
        );
        // An earlier problem still wins; a syntax error anywhere still wins.
        assert_eq!(
            code(
                &set,
                format!(r#"{{"pool":1,"maxattempts":{n},"recipient":"a@b"}}"#)
            ),
            "wrong-type:pool"
        );
        assert_eq!(
            code(&set, format!(r#"{{"maxattempts":{n},"recipient":"a@b",}}"#)),
            "not-json"
        );
        assert_eq!(
            code(
                &set,
                format!(r#"{{"maxattempts":{n},"recipient":"\ud800@b"}}"#)
            ),
            "not-json"
        );
        // The whole event.
        assert_eq!(code(&set, n), "not-object");
        assert_eq!(code(&set, format!(" \r\n\t{n} ")), "not-object");
        assert_eq!(code(&set, format!("[{n}]")), "not-object");
        assert_eq!(code(&set, format!("{n} 1")), "not-json");
    }
    assert_eq!(code(&set, "1"), "not-object");
    assert_eq!(code(&set, "-"), "not-json");
}

// ---------------------------------------------------------- duplicate keys

#[test]
fn duplicate_keys_however_spelt() {
    let set = rule_set();
    for (first, second, field) in [
        ("recipient", r"recip\u0069ent", "recipient"),
        (r"\u0072ecipient", "recipient", "recipient"),
        ("tags", r"t\u0061gs", "tags"),
        ("ips", r"\u0069\u0070\u0073", "ips"),
        ("envelope", "envelope", "envelope"),
        ("maxattempts", r"maxattempt\u0073", "maxattempts"),
        ("results", "results", "results"),
    ] {
        let value = |key: &str| match field {
            "recipient" | "envelope" => format!(r#""{key}@b.example""#),
            "tags" | "ips" | "results" => "[]".to_owned(),
            _ => "1".to_owned(),
        };
        let event = if field == "recipient" {
            format!(r#"{{"{first}":{},"{second}":{}}}"#, value("a"), value("c"))
        } else {
            format!(
                r#"{{"recipient":"a@b.example","{first}":{},"{second}":{}}}"#,
                value("a"),
                value("c")
            )
        };
        assert_eq!(
            code(&set, &event),
            format!("duplicate-key:{field}"),
            "{event}"
        );
    }
    // Other keys may repeat; case matters.
    assert_eq!(
        code(
            &set,
            r#"{"recipient":"a@b.example","x":1,"x":2,"Recipient":3}"#
        ),
        "ok"
    );
    assert_eq!(
        code(
            &set,
            r#"{"Recipient":"a@b.example","RECIPIENT":"a@b.example"}"#
        ),
        "recipient-missing"
    );
    // A duplicate after a wrong type: the first problem is reported.
    assert_eq!(
        code(&set, r#"{"recipient":5,"recipient":"a@b.example"}"#),
        "wrong-type:recipient"
    );
    // A null still counts as the field's one occurrence.
    assert_eq!(
        code(
            &set,
            r#"{"pool":null,"pool":"p","recipient":"a@b.example"}"#
        ),
        "duplicate-key:pool"
    );
}

// ----------------------------------------------------------------- domains

#[test]
fn odd_unicode_and_punycode_domains() {
    let set = rule_set();
    for (domain, want) in [
        // Punycode that does not decode is compared as it is, lower-cased.
        ("xn--zz.example", "xn--zz.example"),
        ("XN--ZZ.Example.", "xn--zz.example"),
        ("xn--.example", "xn--.example"),
        ("xn--a.example", "xn--a.example"),
        ("xn--bcher-kva.EXAMPLE", "xn--bcher-kva.example"),
        ("XN--ZZ-ü.example", "xn--zz-ü.example"),
        // Mixed scripts are not confused with the Latin name.
        ("pаypal.com", "xn--pypal-4ve.com"),
        ("ΣΑΣ.example", "xn--mxa9ab.example"),
        ("İstanbul.example", "xn--istanbul-o0e.example"),
        // Emoji, right to left.
        ("😀.EXAMPLE", "xn--e28h.example"),
        ("مثال.إختبار", "xn--mgbh0fb.xn--kgbechtv"),
        ("\u{202e}moc.elpmaxe", "\u{202e}moc.elpmaxe"),
        // Joiners in the wrong context cannot be mapped.
        ("a\u{200d}b.example", "a\u{200d}b.example"),
        ("a\u{200c}b.example", "a\u{200c}b.example"),
        // Ignored code points vanish; full-width and ideographic dots are dots.
        ("exa\u{00ad}mple.com", "example.com"),
        ("ｅｘａｍｐｌｅ．ｃｏｍ", "example.com"),
        ("example。com。", "example.com"),
        ("example｡com", "example.com"),
        // One trailing dot goes, not two; whitespace stays.
        ("example.com..", "example.com."),
        ("..", "."),
        ("ex ample.com", "ex ample.com"),
    ] {
        let event = format!(r#"{{"recipient":"a@{domain}"}}"#);
        assert_eq!(recipient_domain(&event).as_deref(), Some(want), "{domain}");
        assert_eq!(code(&set, &event), "ok", "{domain}");
    }
    // Decisions follow the normalised names.
    let rule_of = |recipient: &str| {
        let event = format!(r#"{{"recipient":"{recipient}"}}"#);
        let event = parse(event.as_bytes());
        set.decide(&event, now()).rule.map(|r| r.id.clone())
    };
    assert_eq!(rule_of("a@BÜCHER.example.").as_deref(), Some("idn"));
    assert_eq!(rule_of("a@xn--bcher-kva.example").as_deref(), Some("idn"));
    assert_eq!(rule_of("a@XN--ZZ.EXAMPLE").as_deref(), Some("idn"));
    assert_eq!(rule_of("a@x.😀.example").as_deref(), Some("idn"));
    assert_eq!(rule_of("a@ｅｘａｍｐｌｅ．ｃｏｍ").as_deref(), Some("idn"));
    assert_eq!(rule_of("a@pаypal.com"), None);
    // UTS #46 ignores a zero-width space, as resolvers do.
    assert_eq!(rule_of("a@pay\u{200b}pal.com").as_deref(), Some("idn"));
    assert_eq!(rule_of("a@example.com.."), None);
}

#[test]
fn domains_that_are_empty_after_mapping() {
    let set = rule_set();
    for recipient in [
        "a@",
        "a@.",
        "a@。",
        "a@．",
        "a@\u{00ad}",
        "a@\u{00ad}.",
        "@",
    ] {
        let event = format!(r#"{{"recipient":"{recipient}"}}"#);
        assert_eq!(code(&set, &event), "recipient-no-domain", "{recipient:?}");
    }
    for recipient in ["", "a", "a.example", "\u{ff20}b.example"] {
        let event = format!(r#"{{"recipient":"{recipient}"}}"#);
        assert_eq!(code(&set, &event), "recipient-no-domain", "{recipient:?}");
    }
    // The sender may lack a domain: it just has none.
    for envelope in ["", "a", "a@", "a@.", "a@[192.0.2.1]", "@"] {
        let event = format!(r#"{{"recipient":"a@b.example","envelope":"{envelope}"}}"#);
        assert!(
            parse(event.as_bytes()).sender_domain.is_none(),
            "{envelope:?}"
        );
    }
    // An address literal, however malformed, has no domain to match.
    for recipient in ["a@[192.0.2.1]", "a@[", "a@[IPv6:::1]", "a@[x"] {
        let event = format!(r#"{{"recipient":"{recipient}"}}"#);
        assert_eq!(recipient_domain(&event), None, "{recipient:?}");
    }
}

#[test]
fn very_long_labels_and_names() {
    let set = rule_set();
    let long_ascii = "a".repeat(64);
    let event = format!(r#"{{"recipient":"a@{long_ascii}.example"}}"#);
    assert_eq!(
        recipient_domain(&event),
        Some(format!("{long_ascii}.example"))
    );
    let long_unicode = "ü".repeat(300);
    let event = format!(r#"{{"recipient":"a@{long_unicode}.example"}}"#);
    let domain = recipient_domain(&event).unwrap();
    assert!(
        domain.starts_with("xn--") && domain.ends_with(".example"),
        "{domain}"
    );
    // Many labels, many dots.
    let many = vec!["ü"; 10_000].join(".");
    let event = format!(r#"{{"recipient":"a@{many}"}}"#);
    assert_eq!(code(&set, &event), "ok");
    let dots = ".".repeat(100_000);
    let event = format!(r#"{{"recipient":"a@x{dots}x.example"}}"#);
    assert_eq!(code(&set, &event), "ok");
    let punycode = format!("xn--{}", "a".repeat(5000));
    let event = format!(r#"{{"recipient":"a@{punycode}.example"}}"#);
    assert_eq!(
        recipient_domain(&event),
        Some(format!("{punycode}.example"))
    );
}

#[test]
fn domains_of_many_labels_decide_in_linear_time() {
    // Half a million labels fit in the default 1 MiB; looking each parent
    // up in the wildcard index once hashed ~10^11 bytes (13 s in release).
    let set = rule_set();
    let started = Instant::now();
    for tail in ["x.😀.example", "xn--e28h.example", "example.org"] {
        let event = format!(r#"{{"recipient":"a@{}{tail}"}}"#, "x.".repeat(500_000));
        assert!(event.len() < DEFAULT_MAX_EVENT_BYTES);
        let parsed = parse(event.as_bytes());
        let decision = set.decide(&parsed, now());
        let want = (tail != "example.org").then_some("idn");
        assert_eq!(decision.rule.map(|r| r.id.as_str()), want, "{tail}");
        assert_eq!(code(&set, &event), "ok");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn odd_ips() {
    let set = rule_set();
    let event = br#"{"recipient":"a@b.example","ips":["","::ffff:192.0.2.1","1.2.3.4.5","192.0.2.1/24","fe80::1%eth0"," 192.0.2.1","\u0031\u0039\u0032.0.2.1","999.0.0.1"]}"#;
    let parsed = parse(event);
    let ips: Vec<String> = parsed
        .ips
        .iter()
        .map(|ip| ip.map_or("-".to_owned(), |ip| ip.to_string()))
        .collect();
    assert_eq!(
        ips,
        ["-", "192.0.2.1", "-", "-", "-", "-", "192.0.2.1", "-"]
    );
    assert_eq!(code(&set, event), "ok");
}

// -------------------------------------------------------------- rule files

/// Writes `files` into a fresh directory and loads it.
fn load(files: &[(&str, &[u8])]) -> Result<usize, Vec<bouncer::rules::Diagnostic>> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    match load_dir(dir.path()) {
        Ok(rules) => {
            let count = rules.len();
            let set = RuleSet::new(rules);
            for event in [REALISTIC, r#"{"recipient":"a@d7.example","tags":["t"]}"#] {
                set.decide(&parse(event.as_bytes()), now());
            }
            Ok(count)
        }
        Err(LoadError::Invalid(diags)) => {
            assert!(!diags.is_empty());
            for (name, bytes) in files {
                let text = String::from_utf8_lossy(bytes);
                let line_chars: Vec<usize> = text.split('\n').map(|l| l.chars().count()).collect();
                for d in diags.iter().filter(|d| d.file == dir.path().join(name)) {
                    assert!(d.line >= 1 && d.line <= line_chars.len(), "{d}");
                    assert!(d.col >= 1 && d.col <= line_chars[d.line - 1] + 1, "{d}");
                }
            }
            for d in &diags {
                assert!(d.line >= 1 && d.col >= 1, "{d}");
                assert!(d.file.starts_with(dir.path()), "{d}");
            }
            Err(diags)
        }
        Err(e @ LoadError::Missing(_)) => panic!("{e}"),
    }
}

fn toml_rule(extra: &str) -> String {
    format!("[[rule]]\nid = \"r\"\ncode = 550\ndescription = \"d\"\n{extra}\n")
}

fn json_rule(extra: &str) -> String {
    format!(r#"{{"rule": [{{"id": "r", "code": 550, "description": "d", {extra}}}]}}"#)
}

fn messages(diags: &[bouncer::rules::Diagnostic]) -> String {
    diags
        .iter()
        .take(5)
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn huge_condition_lists_load() {
    let domains: Vec<String> = (0..200_000).map(|i| format!("\"d{i}.example\"")).collect();
    let list = domains.join(",");
    let toml = toml_rule(&format!("domain = [{list}]\ntags = [{list}]"));
    assert_eq!(load(&[("big.toml", toml.as_bytes())]), Ok(1));
    let json = json_rule(&format!(r#""domain": [{list}]"#));
    assert_eq!(load(&[("big.json", json.as_bytes())]), Ok(1));
    // Many rules.
    let rules: String = (0..20_000)
        .map(|i| format!("[[rule]]\nid = \"r{i}\"\ncode = 550\ndescription = \"d\"\ndomain = \"d{i}.example\"\n"))
        .collect();
    assert_eq!(load(&[("many.toml", rules.as_bytes())]), Ok(20_000));
}

#[test]
fn huge_lists_of_errors_are_reported_in_linear_time() {
    let started = Instant::now();
    let items: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    let json = json_rule(&format!(r#""tags": [{}]"#, items.join(",")));
    let diags = load(&[("bad.json", json.as_bytes())]).unwrap_err();
    assert_eq!(diags.len(), 100_000);
    assert_eq!(diags[99_999].line, 1);
    assert_eq!(
        diags[99_999].col,
        json.find("99999").unwrap() + 1,
        "{}",
        diags[99_999]
    );
    let rules: String = (0..20_000)
        .map(|i| {
            format!("[[rule]]\nid = \"same\"\ncode = 550\ndescription = \"d\"\ndomain = \"d{i}\"\n")
        })
        .collect();
    let diags = load(&[("dups.toml", rules.as_bytes())]).unwrap_err();
    assert_eq!(diags.len(), 19_999);
    assert_eq!((diags[0].line, diags[0].col), (7, 6));
    assert!(
        diags[0].message.contains("dups.toml:2:6"),
        "{}",
        diags[0].message
    );
    // Quadratic counting took tens of seconds here.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn deep_nesting_in_rule_files_is_refused_not_overflowed() {
    let n = 100_000;
    let arrays = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let tables = format!("{}1{}", "{a = ".repeat(n), "}".repeat(n));
    let objects = format!("{}1{}", r#"{"a": "#.repeat(n), "}".repeat(n));
    let dotted = format!("{}a = 1", "a.".repeat(n));
    let header = format!("[{}a]\nb = 1", "a.".repeat(n));
    let cases: Vec<(&str, String)> = vec![
        ("arrays.toml", toml_rule(&format!("domain = {arrays}"))),
        ("tables.toml", toml_rule(&format!("domain = {tables}"))),
        ("dotted.toml", toml_rule(&dotted)),
        ("header.toml", header),
        ("top.toml", format!("rule = {arrays}")),
        (
            "unclosed.toml",
            toml_rule(&format!("domain = {}", "[".repeat(n))),
        ),
        ("arrays.json", json_rule(&format!(r#""domain": {arrays}"#))),
        (
            "objects.json",
            json_rule(&format!(r#""domain": {objects}"#)),
        ),
        ("top.json", arrays.clone()),
        (
            "unclosed.json",
            json_rule(&format!(r#""domain": {}"#, "{\"a\":".repeat(n))),
        ),
    ];
    for (name, text) in &cases {
        let diags = load(&[(name, text.as_bytes())]).unwrap_err();
        assert_eq!(diags.len(), 1, "{name}: {}", messages(&diags));
    }
    // Shallow nesting is just the wrong type, located.
    let nested = toml_rule("domain = [[[\"a\"]]]");
    let diags = load(&[("shallow.toml", nested.as_bytes())]).unwrap_err();
    assert_eq!(
        (diags[0].line, diags[0].col),
        (5, 11),
        "{}",
        messages(&diags)
    );
    let nested = toml_rule("domain = {a = {b = \"c\"}}");
    let diags = load(&[("shallow.toml", nested.as_bytes())]).unwrap_err();
    assert!(
        diags[0].message.contains("found a table"),
        "{}",
        messages(&diags)
    );
}

#[test]
fn invalid_utf8_rule_files() {
    for (name, bytes) in [
        ("a.toml", &b"[[rule]]\nid = \"\xff\"\n"[..]),
        ("a.json", &b"{\"rule\": [\xc3]}"[..]),
        ("a.toml", &b"\xef\xbb"[..]),
        ("a.toml", &b"\xed\xa0\x80"[..]),
    ] {
        let diags = load(&[(name, bytes)]).unwrap_err();
        assert_eq!(diags.len(), 1);
        assert_eq!((diags[0].line, diags[0].col), (1, 1));
        assert!(diags[0].message.contains("UTF-8"), "{}", diags[0]);
    }
    // One bad file spoils the set, whatever else is valid.
    let good = toml_rule("domain = \"a.example\"");
    let diags = load(&[("good.toml", good.as_bytes()), ("z/bad.toml", b"\xff")]).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert!(diags[0].file.ends_with("z/bad.toml"), "{}", diags[0]);
}

#[test]
fn very_long_lines_in_rule_files() {
    let long = "é".repeat(1 << 20);
    // A description far over the limit, on a long line: located at its value.
    let toml = toml_rule(&format!("domain = \"a\"\ndescription2 = 1 # {long}"));
    let diags = load(&[("a.toml", toml.as_bytes())]).unwrap_err();
    assert_eq!(
        (diags[0].line, diags[0].col),
        (6, 1),
        "{}",
        messages(&diags)
    );
    let toml =
        format!("[[rule]]\nid = \"r\"\ncode = 550\ndomain = \"a\"\ndescription = \"{long}\"\n");
    let diags = load(&[("a.toml", toml.as_bytes())]).unwrap_err();
    assert_eq!(
        (diags[0].line, diags[0].col),
        (5, 15),
        "{}",
        messages(&diags)
    );
    assert!(diags[0].message.contains("1048576"), "{}", diags[0].message);
    // A syntax error at the end of a long line: the column counts characters.
    let toml = format!("# {long}\n[[rule]] {long} = 1\n");
    let diags = load(&[("a.toml", toml.as_bytes())]).unwrap_err();
    assert_eq!(
        (diags[0].line, diags[0].col),
        (2, 10),
        "{}",
        messages(&diags)
    );
    let json = format!(r#"{{"rule": [{{"id": "r", "x": "{long}" "code": 550}}]}}"#);
    let diags = load(&[("a.json", json.as_bytes())]).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].line, 1);
    assert!(diags[0].col > long.chars().count(), "{}", diags[0]);
    // A long unknown key still gets its (absent) suggestion quickly.
    let key = "k".repeat(1 << 20);
    let toml = toml_rule(&format!("domain = \"a\"\n{key} = 1"));
    let diags = load(&[("a.toml", toml.as_bytes())]).unwrap_err();
    assert_eq!((diags[0].line, diags[0].col), (6, 1));
    assert!(!diags[0].message.contains("did you mean"));
}

#[test]
fn odd_bytes_in_rule_files() {
    let cases: &[(&str, &[u8])] = &[
        ("nul.toml", b"[[rule]]\nid = \"r\0\"\n"),
        ("nul-escaped.toml", b"[[rule]]\nid = \"r\\u0000\"\ncode = 550\ndescription = \"d\"\ndomain = \"a\"\n"),
        ("nul.json", b"{\"rule\": [{\"id\": \"r\", \"code\": 550, \"description\": \"d\\u0000\", \"domain\": \"a\"}]}"),
        ("bom.json", b"\xef\xbb\xbf{\"rule\": []}"),
        ("surrogate.json", b"{\"rule\": [{\"id\": \"\\ud800\", \"code\": 550, \"description\": \"d\", \"domain\": \"a\"}]}"),
        ("number.json", b"{\"rule\": [{\"id\": \"r\", \"code\": 1e400, \"description\": \"d\", \"domain\": \"a\"}]}"),
        ("bigint.toml", b"[[rule]]\nid = \"r\"\ncode = 99999999999999999999999\ndescription = \"d\"\ndomain = \"a\"\n"),
        ("cr.toml", b"[[rule]]\rid = \"r\"\r"),
        ("empty-key.toml", b"[[rule]]\n\"\" = 1\n"),
        ("rule-table.toml", b"[rule]\nid = \"r\"\n"),
        ("rule-string.json", b"{\"rule\": \"r\"}"),
        ("top-array.json", b"[]"),
        ("null.json", b"null"),
    ];
    for (name, bytes) in cases {
        let diags = load(&[(name, bytes)]).unwrap_err();
        assert!(!diags.is_empty(), "{name}");
    }
    // What loads: CRLF line endings, a BOM in TOML, an empty file.
    let crlf = toml_rule("domain = \"a\"").replace('\n', "\r\n");
    assert_eq!(load(&[("crlf.toml", crlf.as_bytes())]), Ok(1));
    let bom = format!("\u{feff}{}", toml_rule("domain = \"a\""));
    assert_eq!(load(&[("bom.toml", bom.as_bytes())]), Ok(1));
    assert_eq!(load(&[("empty.toml", b""), ("empty.json", b"")]), Ok(0));
    // CRLF errors are located on the right line.
    let crlf = toml_rule("domian = \"a\"").replace('\n', "\r\n");
    let diags = load(&[("crlf.toml", crlf.as_bytes())]).unwrap_err();
    assert_eq!(
        (diags[0].line, diags[0].col),
        (5, 1),
        "{}",
        messages(&diags)
    );
}

#[test]
fn rule_directory_oddities() {
    // Nothing but skipped names: an empty, valid set.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
    fs::write(dir.path().join(".git/x.toml"), b"\xff").unwrap();
    fs::write(dir.path().join(".hidden.toml"), b"garbage").unwrap();
    fs::write(dir.path().join("notes.txt"), b"\xff").unwrap();
    fs::create_dir(dir.path().join("dir.toml")).unwrap();
    assert_eq!(load_dir(dir.path()).map(|r| r.len()).ok(), Some(0));
    // A symbolic link loop is read once.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        fs::write(dir.path().join("r.toml"), toml_rule("domain = \"a\"")).unwrap();
        assert_eq!(load_dir(dir.path()).map(|r| r.len()).ok(), Some(1));
    }
    // A file where the directory should be.
    let file = dir.path().join("r.toml");
    let Err(LoadError::Invalid(diags)) = load_dir(&file) else {
        panic!("a file is not a rules directory");
    };
    assert_eq!((diags[0].line, diags[0].col), (1, 1));
    assert!(matches!(
        load_dir(Path::new("/nonexistent/bouncer-rules")),
        Err(LoadError::Missing(_))
    ));
}
