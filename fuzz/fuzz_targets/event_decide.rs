//! Arbitrary bytes as a delivery event: parse, decide against a fixed
//! realistic rule set, and evaluate as `bouncer eval` does. Nothing may
//! panic; every answer is checked against SPEC §1, §3 and §4 and against a
//! linear scan of the rules.
#![no_main]

#[path = "common.rs"]
mod common;

use bouncer::config::Partitioning;
use bouncer::eval::{Verdict, evaluate};
use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event, Reason};
use bouncer::pipeline::output::{Destination, Input, Meta, outputs, stopped};
use bouncer::rules::{Decision, Outcome};
use libfuzzer_sys::fuzz_target;

/// A small limit, so that `too-large` is reached too.
const SMALL_LIMIT: usize = 512;

fuzz_target!(|data: &[u8]| {
    let set = common::rule_set();
    let now = common::now();

    let parsed = Event::parse(data, DEFAULT_MAX_EVENT_BYTES);
    common::check_parse(data, &parsed);
    if let Ok(event) = &parsed {
        common::check_decision(set, event, now);
        check_outputs(data, event, &set.decide(event, now));
    }

    // The size limit is checked first and only depends on the length.
    let small = Event::parse(data, SMALL_LIMIT);
    if data.len() > SMALL_LIMIT {
        assert_eq!(small.unwrap_err().reason, Reason::TooLarge);
    } else {
        assert_eq!(small.as_ref().err(), parsed.as_ref().err());
    }

    // `eval`'s verdict agrees with the parse and the decision, and is one
    // JSON line.
    let verdict = evaluate(set, data, now, DEFAULT_MAX_EVENT_BYTES);
    let line = serde_json::to_string(&verdict).expect("verdicts serialise");
    assert!(!line.contains('\n'), "verdict spans lines: {line}");
    let value: serde_json::Value = serde_json::from_str(&line).expect("a verdict is JSON");
    assert!(value.is_object());
    match (&parsed, &verdict) {
        (Err(invalid), Verdict::Invalid { outcome, error }) => {
            assert_eq!(*outcome, "invalid");
            assert_eq!(*error, invalid.to_string());
            assert_eq!(value["error"].as_str(), Some(error.as_str()));
        }
        (
            Ok(event),
            Verdict::Decided {
                outcome,
                rule,
                code,
                status,
                description,
                shadow,
            },
        ) => {
            let decision = set.decide(event, now);
            assert_eq!(*outcome, decision.outcome.as_str());
            assert_eq!(rule.is_none(), *outcome == "forwarded");
            assert_eq!(code.is_none(), rule.is_none());
            assert_eq!(description.is_none(), rule.is_none());
            assert!(status.is_none() || rule.is_some());
            if let Some(id) = rule {
                let r = set.get(id).expect("the winner is in the set");
                assert_eq!(*code, Some(r.code));
                assert_eq!(*status, r.status.as_deref());
                if r.code >= 500 {
                    assert_eq!(*outcome, "failed");
                } else {
                    assert!(matches!(*outcome, "failed" | "deferred"));
                }
            }
            assert_eq!(*shadow, decision.shadow_ids());
            for key in ["outcome", "rule", "code", "status", "description", "shadow"] {
                assert!(value.get(key).is_some(), "verdict lacks {key}: {line}");
            }
        }
        _ => panic!("verdict {line} disagrees with the parse {parsed:?}"),
    }
});

/// The records the pipeline writes for a decided event: a forward is the
/// input unchanged; a result or retry record is an event again, with one
/// more entry in `results`, and the result record has no `mime` unless the
/// event keeps it.
fn check_outputs(data: &[u8], event: &Event<'_>, decision: &Decision<'_>) {
    let input = Input {
        topic: "deliveries",
        partition: 3,
        offset: 10452,
        key: Some(b"key"),
        value: Some(data),
        headers: vec![("h", Some(&b"v"[..]))].into(),
        timestamp: Some(1_700_000_000_000),
    };
    let meta = Meta {
        instance: "bouncer-fuzz",
        now: common::now(),
        forward_partitioning: Partitioning::Same,
    };
    let records = outputs(&input, event, decision, &meta)
        .unwrap_or_else(|e| panic!("no output records for a decided event: {e}"));
    if decision.outcome == Outcome::Forwarded {
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].destination, Destination::Forward);
        assert_eq!(records[0].value.as_deref(), Some(data));
        return;
    }
    let want = if decision.outcome == Outcome::Deferred {
        &[Destination::Retry, Destination::Results][..]
    } else {
        &[Destination::Results][..]
    };
    let got: Vec<Destination> = records.iter().map(|r| r.destination).collect();
    assert_eq!(got, want);
    // Written at the parse's offsets, the records are those of reading the
    // event again, but for whitespace between members.
    let rule = decision.rule.expect("a stopped decision has a rule");
    let reread = stopped(&input, None, rule, decision.outcome, &meta)
        .unwrap_or_else(|e| panic!("the event read again is refused: {e}"));
    assert_eq!(reread.len(), records.len());
    for (record, reread) in records.iter().zip(&reread) {
        let (a, b) = (record.value.as_deref(), reread.value.as_deref());
        assert_eq!(
            a.map(compact),
            b.map(compact),
            "{} record differs from the event read again",
            record.destination
        );
    }
    for record in &records {
        let value = record
            .value
            .as_deref()
            .expect("a stopped event's record has a value");
        let again = Event::parse(value, usize::MAX).unwrap_or_else(|e| {
            panic!(
                "{} record is not an event ({e}): {}",
                record.destination,
                String::from_utf8_lossy(value)
            )
        });
        assert_eq!(again.recipient, event.recipient);
        assert_eq!(again.tags, event.tags);
        assert_eq!(again.attempts(), event.attempts() + 1, "one entry appended");
        let mut de = serde_json::Deserializer::from_slice(value);
        let last = last_result(&mut de);
        assert_eq!(last["state"], "forced");
        assert_eq!(last["forced"]["input"], "deliveries/3/10452");
        assert_eq!(
            last["forced"]["rule"].as_str(),
            decision.rule.map(|r| r.id.as_str())
        );
    }
}

/// `text` without JSON whitespace outside strings.
fn compact(text: &[u8]) -> Vec<u8> {
    let (mut out, mut in_string, mut escaped) = (Vec::new(), false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        out.push(b);
    }
    out
}

/// The last entry of the top-level `results` array, skipping every other
/// value without building it (they may nest deeper than serde_json::Value
/// allows).
fn last_result(
    de: &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
) -> serde_json::Value {
    use serde::Deserializer as _;
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Top;
    impl<'de> Visitor<'de> for Top {
        type Value = serde_json::Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut last = serde_json::Value::Null;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "results" {
                    last = map.next_value::<Last>()?.0;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(last)
        }
    }
    struct Last(serde_json::Value);
    impl<'de> serde::Deserialize<'de> for Last {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Last;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an array")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Last, A::Error> {
                    // Only the last element is built; earlier ones are
                    // skipped by reading each as raw text.
                    let mut last = None;
                    while let Some(raw) = seq.next_element::<&'de serde_json::value::RawValue>()? {
                        last = Some(raw);
                    }
                    let last = last.map(|raw| raw.get()).unwrap_or("null");
                    Ok(Last(
                        serde_json::from_str(last).map_err(serde::de::Error::custom)?,
                    ))
                }
            }
            d.deserialize_seq(V)
        }
    }
    de.deserialize_map(Top)
        .expect("an output record is an object")
}
