//! `bouncer eval` and `POST /v1/evaluate`: one event in, one JSON line out.

use std::io::{self, BufRead, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::{Event, Invalid, Reason};
use crate::rules::RuleSet;

/// One `eval` output line (SPEC §4).
#[derive(Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Verdict<'s> {
    Decided {
        outcome: &'static str,
        rule: Option<&'s str>,
        code: Option<u16>,
        status: Option<&'s str>,
        description: Option<&'s str>,
        shadow: Vec<&'s str>,
    },
    Invalid {
        outcome: &'static str,
        error: String,
    },
}

impl Verdict<'_> {
    fn invalid(invalid: &Invalid) -> Self {
        Verdict::Invalid {
            outcome: "invalid",
            error: invalid.to_string(),
        }
    }
}

/// Evaluates one event against a rule set.
pub fn evaluate<'s>(
    rules: &'s RuleSet,
    bytes: &[u8],
    now: DateTime<Utc>,
    max_event_bytes: usize,
) -> Verdict<'s> {
    let event = match Event::parse(bytes, max_event_bytes) {
        Ok(event) => event,
        Err(invalid) => return Verdict::invalid(&invalid),
    };
    let decision = rules.decide(&event, now);
    let rule = decision.rule;
    Verdict::Decided {
        outcome: decision.outcome.as_str(),
        rule: rule.map(|r| r.id.as_str()),
        code: rule.map(|r| r.code),
        status: rule.and_then(|r| r.status.as_deref()),
        description: rule.map(|r| r.description.as_str()),
        shadow: decision.shadow_ids(),
    }
}

/// Reads events as lines and writes one verdict line per input line, in
/// order. Memory stays bounded by `max_event_bytes` whatever the input: an
/// oversize line is skipped through without being held.
pub fn eval_stream<R: BufRead, W: Write>(
    rules: &RuleSet,
    mut input: R,
    mut output: W,
    now: DateTime<Utc>,
    max_event_bytes: usize,
) -> io::Result<u64> {
    // The most a line may hold: the limit plus room for a trailing `\r`
    // (saturating, so a huge `--max-event-bytes` means "no limit").
    let keep = max_event_bytes.saturating_add(1);
    let mut line: Vec<u8> = Vec::with_capacity(4096.min(keep));
    let mut lines = 0u64;
    let mut oversize_len: Option<usize> = None;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            if !line.is_empty() || oversize_len.is_some() {
                lines += 1;
                write_line(
                    rules,
                    &mut line,
                    oversize_len.take(),
                    &mut output,
                    now,
                    max_event_bytes,
                )?;
            }
            output.flush()?;
            return Ok(lines);
        }
        let (part, complete) = match memchr(chunk) {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        match oversize_len.as_mut() {
            Some(total) => *total = total.saturating_add(part.len()),
            None if line.len() + part.len() > keep => {
                oversize_len = Some(line.len() + part.len());
                line.clear();
                line.shrink_to(4096);
            }
            None => line.extend_from_slice(part),
        }
        let consumed = part.len() + usize::from(complete);
        input.consume(consumed);
        if complete {
            lines += 1;
            write_line(
                rules,
                &mut line,
                oversize_len.take(),
                &mut output,
                now,
                max_event_bytes,
            )?;
            if input.fill_buf()?.is_empty() {
                // Nothing more is buffered: the next read may block, so let
                // a reader of a pipe see what is done so far.
                output.flush()?;
            }
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

fn write_line<W: Write>(
    rules: &RuleSet,
    line: &mut Vec<u8>,
    oversize_len: Option<usize>,
    output: &mut W,
    now: DateTime<Utc>,
    max_event_bytes: usize,
) -> io::Result<()> {
    let verdict = if let Some(len) = oversize_len {
        Verdict::Invalid {
            outcome: "invalid",
            error: format!("{}: {len} bytes, limit {max_event_bytes}", Reason::TooLarge),
        }
    } else {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            Verdict::Invalid {
                outcome: "invalid",
                error: format!("{}: empty line", Reason::NotJson),
            }
        } else {
            evaluate(rules, line, now, max_event_bytes)
        }
    };
    serde_json::to_writer(&mut *output, &verdict)?;
    output.write_all(b"\n")?;
    line.clear();
    Ok(())
}
