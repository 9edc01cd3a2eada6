//! Arbitrary bytes as `bouncer eval`'s input, read through a small buffer
//! with a small `max_event_bytes`: one output line per input line, in order,
//! each exactly what evaluating that line alone gives.
#![no_main]

#[path = "common.rs"]
mod common;

use std::io::BufReader;

use bouncer::eval::{Verdict, eval_stream, evaluate};
use libfuzzer_sys::fuzz_target;

const MAX_EVENT_BYTES: usize = 48;

fuzz_target!(|input: &[u8]| {
    // The first byte picks the read buffer size, so that lines straddle
    // reads in every way.
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let capacity = usize::from(first % 64) + 1;
    let set = common::rule_set();
    let now = common::now();

    let mut output = Vec::new();
    let reader = BufReader::with_capacity(capacity, data);
    let lines = eval_stream(set, reader, &mut output, now, MAX_EVENT_BYTES)
        .expect("reading a slice and writing a Vec cannot fail");

    // The expected lines, one input line at a time.
    let mut segments: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if segments.last().is_some_and(|s| s.is_empty()) {
        segments.pop(); // a final newline ends the last line, it starts none
    }
    let newlines = data.iter().filter(|&&b| b == b'\n').count();
    let trailing = usize::from(!data.ends_with(b"\n") && !data.is_empty());
    assert_eq!(segments.len(), newlines + trailing);
    assert_eq!(lines, segments.len() as u64);

    let text = std::str::from_utf8(&output).expect("eval writes UTF-8");
    assert!(output.is_empty() || output.ends_with(b"\n"));
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), segments.len(), "one output line per input line");
    for (segment, line) in segments.iter().zip(&got) {
        let want = if segment.len() > MAX_EVENT_BYTES + 1 {
            Verdict::Invalid {
                outcome: "invalid",
                error: format!(
                    "too-large: {} bytes, limit {MAX_EVENT_BYTES}",
                    segment.len()
                ),
            }
        } else {
            let event = segment.strip_suffix(b"\r").unwrap_or(segment);
            if event.is_empty() {
                Verdict::Invalid {
                    outcome: "invalid",
                    error: "not-json: empty line".to_owned(),
                }
            } else {
                evaluate(set, event, now, MAX_EVENT_BYTES)
            }
        };
        let want = serde_json::to_string(&want).expect("verdicts serialise");
        assert_eq!(
            *line,
            want,
            "for input line {:?}",
            String::from_utf8_lossy(segment)
        );
    }
});
