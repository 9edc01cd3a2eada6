//! `Event::parse` (SPEC §1): what rules see of a delivery event, and every
//! invalid reason code.

use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event, Field, Invalid, Reason};

fn parse(bytes: &[u8]) -> Result<Event<'_>, Invalid> {
    Event::parse(bytes, DEFAULT_MAX_EVENT_BYTES)
}

/// The full `bouncer-error` text of an invalid event.
fn error(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(event) => panic!(
            "expected {:?} to be invalid, parsed {event:?}",
            String::from_utf8_lossy(bytes)
        ),
        Err(invalid) => invalid.to_string(),
    }
}

/// The reason code alone: the error text up to `: ` (detail is free-form).
fn reason(bytes: &[u8]) -> String {
    let text = error(bytes);
    let code = text.split(": ").next().unwrap().to_owned();
    // The code is the whole text or is followed by ": detail".
    assert!(
        text == code || text.starts_with(&format!("{code}: ")),
        "{text}"
    );
    code
}

#[test]
fn the_default_limit_is_one_mebibyte() {
    assert_eq!(DEFAULT_MAX_EVENT_BYTES, 1024 * 1024);
}

#[test]
fn a_valid_event_exposes_what_rules_read() {
    let json = br#"{
        "recipient": "Someone@B\u00dcCHER.example.",
        "envelope": "bounce@News.Example.org",
        "ips": ["192.0.2.10", "::ffff:198.51.100.7", "2001:db8::1", "not an ip"],
        "pool": "shared-pool-1",
        "tags": ["campaign_X", "customer_Y"],
        "maxdelivertime": "2026-11-27 12:00:00",
        "maxattempts": 5,
        "results": [{"state": "deferred"}, {"state": "deferred"}],
        "mime": "From: a\r\n\r\nbody",
        "keepmime": true,
        "other": {"nested": [1, 2, {"recipient": 5}]}
    }"#;
    let event = parse(json).expect("valid");
    assert_eq!(event.recipient, "Someone@B\u{dc}CHER.example.");
    assert_eq!(
        event.recipient_domain.as_deref(),
        Some("xn--bcher-kva.example")
    );
    assert_eq!(event.sender_domain.as_deref(), Some("news.example.org"));
    let ips: Vec<Option<String>> = event
        .ips
        .iter()
        .map(|ip| ip.map(|ip| ip.to_string()))
        .collect();
    assert_eq!(
        ips,
        [
            Some("192.0.2.10".to_owned()),
            Some("198.51.100.7".to_owned()),
            Some("2001:db8::1".to_owned()),
            None
        ]
    );
    assert_eq!(event.pool.as_deref(), Some("shared-pool-1"));
    assert_eq!(event.tags.as_slice(), ["campaign_X", "customer_Y"]);
    assert_eq!(
        event.max_deliver_time,
        Some(
            chrono::DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
                .unwrap()
                .timestamp()
        )
    );
    assert_eq!(event.max_attempts, 5);
    assert_eq!(event.attempts(), 2);
}

#[test]
fn absent_and_null_fields_are_the_same() {
    let absent = parse(br#"{"recipient": "a@x.example"}"#).unwrap();
    let null = parse(
        br#"{"recipient": "a@x.example", "envelope": null, "ips": null, "pool": null, "tags": null,
            "maxdelivertime": null, "maxattempts": null, "results": null}"#,
    )
    .unwrap();
    for event in [absent, null] {
        assert_eq!(event.sender_domain, None);
        assert!(event.ips.is_empty());
        assert_eq!(event.pool, None);
        assert!(event.tags.is_empty());
        assert_eq!(event.max_deliver_time, None);
        assert_eq!(event.max_attempts, 0);
        assert_eq!(event.attempts(), 0);
    }
}

#[test]
fn an_empty_envelope_is_the_null_sender() {
    let event = parse(br#"{"recipient": "a@x.example", "envelope": ""}"#).unwrap();
    assert_eq!(event.sender_domain, None);
    // A sender without a domain or with an address literal has no domain either.
    for envelope in ["bounce", "bounce@", "bounce@[192.0.2.1]"] {
        let json = format!(r#"{{"recipient": "a@x.example", "envelope": "{envelope}"}}"#);
        let event = parse(json.as_bytes()).expect("an odd sender is not an invalid event");
        assert_eq!(event.sender_domain, None, "{envelope}");
    }
}

#[test]
fn an_address_literal_recipient_is_valid_without_a_domain() {
    let event = parse(br#"{"recipient": "user@[192.0.2.1]"}"#).unwrap();
    assert_eq!(event.recipient_domain, None);
    let event = parse(br#"{"recipient": "user@[IPv6:2001:db8::1]"}"#).unwrap();
    assert_eq!(event.recipient_domain, None);
}

#[test]
fn fields_outside_the_table_pass_whatever_their_type_or_repetition() {
    let json = br#"{"recipient": "a@x.example", "Recipient": 5, "ip": {}, "mime": null,
                    "x": [1, "two", {"three": 3}], "x": true, "pools": ["p"]}"#;
    let event = parse(json).expect("unknown fields are not bouncer's business");
    assert_eq!(event.pool, None);
}

// ------------------------------------------------------------------ reasons

#[test]
fn not_utf8() {
    assert_eq!(reason(b"{\"recipient\": \"a@x.example\xff\"}"), "not-utf8");
    assert_eq!(reason(b"\xc3\x28"), "not-utf8");
    // An overlong encoding of "/" is not UTF-8 either.
    assert_eq!(
        reason(b"{\"recipient\": \"a\xc0\xafb@x.example\"}"),
        "not-utf8"
    );
}

#[test]
fn not_json() {
    for text in [
        "",
        " ",
        "{",
        "{\"recipient\": \"a@x.example\"",
        "{\"recipient\": \"a@x.example\"} x",
        "{\"recipient\": \"a@x.example\"}{}",
        "{'recipient': 'a@x.example'}",
        "{\"recipient\": \"a@x.example\",}",
        "recipient=a@x.example",
        "{\"recipient\": \"a@x.example\", \"ips\": 5,",
    ] {
        assert_eq!(reason(text.as_bytes()), "not-json", "{text:?}");
    }
}

#[test]
fn not_object() {
    for text in [
        "[]",
        "[{\"recipient\": \"a@x.example\"}]",
        "\"a@x.example\"",
        "1",
        "-1.5",
        "null",
        "true",
    ] {
        assert_eq!(reason(text.as_bytes()), "not-object", "{text:?}");
    }
}

#[test]
fn recipient_missing_when_absent_or_null() {
    for text in [
        "{}",
        r#"{"recipient": null}"#,
        r#"{"envelope": "a@x.example", "ips": ["192.0.2.1"]}"#,
        r#"{"to": "a@x.example"}"#,
    ] {
        assert_eq!(reason(text.as_bytes()), "recipient-missing", "{text:?}");
    }
}

#[test]
fn recipient_no_domain() {
    for recipient in ["", "user", "user@", "user@.", "@", "a@b@"] {
        let json = format!(r#"{{"recipient": "{recipient}"}}"#);
        assert_eq!(
            reason(json.as_bytes()),
            "recipient-no-domain",
            "{recipient:?}"
        );
    }
}

#[test]
fn wrong_type_for_every_field_of_the_table() {
    let cases: &[(&str, &[&str])] = &[
        ("recipient", &["5", "[\"a@x.example\"]", "{}", "true"]),
        ("envelope", &["5", "[]", "{}", "false"]),
        (
            "ips",
            &["\"192.0.2.1\"", "[5]", "[\"192.0.2.1\", null]", "{}", "1"],
        ),
        ("pool", &["5", "[\"p\"]", "{}", "true"]),
        (
            "tags",
            &["\"campaign_X\"", "[1]", "[[\"a\"]]", "{}", "true"],
        ),
        (
            "maxdelivertime",
            &[
                "5",
                "[]",
                "\"2026-11-27T12:00:00Z\"",
                "\"tomorrow\"",
                "\"2026-13-01 00:00:00\"",
            ],
        ),
        (
            "maxattempts",
            &["\"3\"", "-1", "1.5", "3.0", "[]", "true", "1e2"],
        ),
        ("results", &["{}", "\"none\"", "0", "true"]),
    ];
    let all: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
    let covered: Vec<&str> = cases.iter().map(|(f, _)| *f).collect();
    assert_eq!(covered, all, "every field of the table is covered");
    for (field, values) in cases {
        for value in *values {
            let json = if *field == "recipient" {
                format!(r#"{{"recipient": {value}}}"#)
            } else {
                format!(r#"{{"recipient": "a@x.example", "{field}": {value}}}"#)
            };
            assert_eq!(
                reason(json.as_bytes()),
                format!("wrong-type:{field}"),
                "{json}"
            );
        }
    }
}

#[test]
fn wrong_type_and_duplicate_key_name_the_field_in_the_reason_enum() {
    for field in Field::ALL {
        assert_eq!(
            Reason::WrongType(field).to_string(),
            format!("wrong-type:{}", field.name())
        );
        assert_eq!(
            Reason::DuplicateKey(field).to_string(),
            format!("duplicate-key:{}", field.name())
        );
    }
}

#[test]
fn duplicate_key_for_every_field_of_the_table() {
    let values = [
        ("recipient", "\"b@y.example\""),
        ("envelope", "\"s@x.example\""),
        ("ips", "[\"192.0.2.1\"]"),
        ("pool", "\"p\""),
        ("tags", "[\"t\"]"),
        ("maxdelivertime", "\"2026-11-27 12:00:00\""),
        ("maxattempts", "3"),
        ("results", "[]"),
    ];
    for (field, value) in values {
        // Repeated with the same value, and repeated far apart.
        let twice =
            format!(r#"{{"recipient": "a@x.example", "{field}": {value}, "{field}": {value}}}"#);
        let apart = format!(
            r#"{{"{field}": {value}, "recipient": "a@x.example", "x": 1, "{field}": null}}"#
        );
        for json in [twice, apart] {
            assert_eq!(
                reason(json.as_bytes()),
                format!("duplicate-key:{field}"),
                "{json}"
            );
        }
    }
}

#[test]
fn an_escaped_key_is_the_same_key() {
    // "recip\u0069ent" is "recipient": a second copy must not slip past.
    let json = br#"{"recipient": "a@x.example", "recip\u0069ent": "b@y.example"}"#;
    assert_eq!(reason(json), "duplicate-key:recipient");
    let json = br#"{"p\u006fol": "p1", "recipient": "a@x.example"}"#;
    assert_eq!(parse(json).unwrap().pool.as_deref(), Some("p1"));
}

#[test]
fn too_large_above_the_limit_only() {
    let body = r#"{"recipient": "a@x.example", "pad": ""}"#;
    let pad = |n: usize| body.replace("\"\"", &format!("\"{}\"", "x".repeat(n)));
    let at_limit = pad(100 - body.len());
    assert_eq!(at_limit.len(), 100);
    assert!(Event::parse(at_limit.as_bytes(), 100).is_ok());
    let over = pad(101 - body.len());
    let err = Event::parse(over.as_bytes(), 100).unwrap_err();
    assert_eq!(err.reason, Reason::TooLarge);
    assert!(err.to_string().starts_with("too-large: "), "{err}");
    // The size is checked before anything else.
    let garbage = vec![0xff; 101];
    assert_eq!(
        Event::parse(&garbage, 100).unwrap_err().reason,
        Reason::TooLarge
    );
    // The default limit: 1 MiB.
    let big = pad(DEFAULT_MAX_EVENT_BYTES + 1 - body.len());
    assert_eq!(reason(big.as_bytes()), "too-large");
    let fits = pad(DEFAULT_MAX_EVENT_BYTES - body.len());
    assert!(parse(fits.as_bytes()).is_ok());
}

#[test]
fn invalid_events_carry_a_human_detail_after_the_code() {
    let err = parse(br#"{"recipient": "a@x.example", "ips": "192.0.2.1"}"#).unwrap_err();
    assert_eq!(err.reason, Reason::WrongType(Field::Ips));
    assert!(
        err.to_string().starts_with("wrong-type:ips: ") && !err.detail.is_empty(),
        "{err}"
    );
}

#[test]
fn maxdelivertime_empty_string_is_no_deadline() {
    let event = parse(br#"{"recipient": "a@x.example", "maxdelivertime": ""}"#).unwrap();
    assert_eq!(event.max_deliver_time, None);
}

#[test]
fn maxdelivertime_fast_path_agrees_with_chrono() {
    let chrono_way = |t: &str| {
        chrono::NaiveDateTime::parse_from_str(t, bouncer::event::MAILERQ_TIME_FORMAT)
            .ok()
            .map(|t| t.and_utc().timestamp())
    };
    for t in [
        "2026-11-27 12:00:00",
        "1970-01-01 00:00:00",
        "2024-02-29 23:59:59",
        "2023-02-29 10:00:00",
        "2026-13-01 00:00:00",
        "2026-11-27 24:00:00",
        "2026-11-27 23:59:60",
        "2026-11-27T12:00:00",
        "2026-1-27 12:00:00",
        "2026-11-27 12:00:0x",
        "+202-11-27 12:00:00",
        "9999-12-31 23:59:59",
        "0000-01-01 00:00:00",
        "",
    ] {
        assert_eq!(
            bouncer::event::parse_mailerq_time(t),
            chrono_way(t),
            "{t:?}"
        );
    }
}
