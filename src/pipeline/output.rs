//! The output records of one consumed record (SPEC §3): pure functions, no
//! I/O, no clock, no Kafka client types.
//!
//! Forwards borrow the input's key, value and headers: the hot path copies no
//! payload byte and serialises nothing. Result and retry records rewrite the
//! event at the top level only: every field keeps its raw JSON text and its
//! place, so numbers such as `1e400`, unknown and duplicate fields survive
//! exactly; `mime` is dropped from result records unless `"keepmime": true`,
//! and the result entry is appended to `results`. They are written at the
//! offsets the event's parse found ([`Layout`]), without reading it again,
//! unless it has no layout (more than one `mime`).
//!
//! Every record carries the input's key, the input's headers in order
//! (duplicates kept), then bouncer's own headers, `bouncer-input` last. Since
//! bouncer's headers come after the input's, a reader taking the last header
//! of a name (Java's `Headers::lastHeader`) sees this pass's values even when
//! the input already carried `bouncer-*` headers from an earlier pass.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::config::Partitioning;
use crate::event::{Event, Field, Invalid, Layout, Reason, format_mailerq_time};
use crate::rules::{Decision, Mode, Outcome, Rule, Source};

/// `bouncer-outcome`: the decision, on forward, result and retry records.
pub const HEADER_OUTCOME: &str = "bouncer-outcome";
/// `bouncer-shadow`: ids of the matching shadow rules, sorted, comma-separated.
pub const HEADER_SHADOW: &str = "bouncer-shadow";
/// `bouncer-rule`: the winning rule's id, on result and retry records.
pub const HEADER_RULE: &str = "bouncer-rule";
/// `bouncer-input`: `<topic>/<partition>/<offset>` of the consumed record.
pub const HEADER_INPUT: &str = "bouncer-input";
/// `bouncer-error`: why a record is a dead letter, `<reason code>[: detail]`.
pub const HEADER_ERROR: &str = "bouncer-error";
/// `bouncer-original-size`: bytes of a value left out because it could not be
/// produced.
pub const HEADER_ORIGINAL_SIZE: &str = "bouncer-original-size";

/// `bouncer-error` reason code of a dead letter written because an output
/// record failed permanently (SPEC §6).
pub const PRODUCE_FAILED: &str = "produce-failed";

/// One input header: name and value (`None` for a null value).
pub type InputHeader<'a> = (&'a str, Option<&'a [u8]>);

/// An input's headers (most records carry only a few).
pub type InputHeaders<'a> = SmallVec<[InputHeader<'a>; 4]>;

/// One consumed record, as the pipeline hands it over.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// In record order, duplicates kept; a few inline, without allocating.
    pub headers: InputHeaders<'a>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
}

impl Input<'_> {
    /// `<topic>/<partition>/<offset>`: identifies the input in `bouncer-input`,
    /// the result entry and logs, so duplicates after a crash can be matched.
    pub fn coordinates(&self) -> String {
        // Sized once: the partition and offset take at most 31 bytes.
        let mut s = String::with_capacity(self.topic.len() + 33);
        let _ = self.coordinates_display().write_to(&mut s);
        s
    }

    /// [`Input::coordinates`] as a `Display` value: log fields write it
    /// without a `String` of their own.
    pub fn coordinates_display(&self) -> Coordinates<'_> {
        Coordinates {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// `<topic>/<partition>/<offset>` for logs, written without a `String`.
pub struct Coordinates<'i> {
    topic: &'i str,
    partition: i32,
    offset: i64,
}

impl Coordinates<'_> {
    /// Once per output record: without the formatting machinery.
    fn write_to(&self, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str(self.topic)?;
        out.write_str("/")?;
        out.write_str(itoa::Buffer::new().format(self.partition))?;
        out.write_str("/")?;
        out.write_str(itoa::Buffer::new().format(self.offset))
    }
}

impl fmt::Display for Coordinates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// Which configured topic a record goes to (`topics.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    Forward,
    Results,
    Retry,
    DeadLetter,
}

impl Destination {
    /// The key under `[topics]` that names the topic.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Forward => "forward",
            Destination::Results => "results",
            Destination::Retry => "retry",
            Destination::DeadLetter => "dead_letter",
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the producer picks the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionChoice {
    /// This partition number: the input's own, so per-partition order holds.
    Same(i32),
    /// The producer's partitioner hashes the key (murmur2, as Java clients).
    ByKey,
}

/// One record to produce. Borrows from the [`Input`] it was built from;
/// produce it (the client copies the bytes) before dropping the input.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord<'a> {
    pub destination: Destination,
    pub partition: PartitionChoice,
    pub key: Option<&'a [u8]>,
    pub value: Option<Cow<'a, [u8]>>,
    /// The input's headers, unchanged; [`OutputRecord::headers`] yields them
    /// followed by `bouncer_headers`.
    pub input_headers: &'a [InputHeader<'a>],
    pub bouncer_headers: SmallVec<[(&'static str, Cow<'static, str>); 4]>,
    /// Milliseconds since the Unix epoch; `None` lets the producer stamp
    /// the record when it is sent.
    pub timestamp: Option<i64>,
}

impl<'a> OutputRecord<'a> {
    /// Every header in produce order: the input's, then bouncer's.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> + '_ {
        self.input_headers.iter().copied().chain(
            self.bouncer_headers
                .iter()
                .map(|(name, value)| (*name, Some(value.as_bytes()))),
        )
    }

    /// The last value of a bouncer header.
    pub fn bouncer_header(&self, name: &str) -> Option<&str> {
        self.bouncer_headers
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| &**v)
    }

    /// The same record without its value, for when the value itself cannot be
    /// produced (too large for the topic, say): `bouncer-original-size` keeps
    /// its length, and the timestamp is left to the producer in case the
    /// broker refused the original one. A record without a value is
    /// returned as it is, timestamp aside.
    pub fn without_value(mut self) -> OutputRecord<'a> {
        if let Some(value) = self.value.take() {
            self.bouncer_headers
                .push((HEADER_ORIGINAL_SIZE, value.len().to_string().into()));
        }
        self.timestamp = None;
        self
    }
}

/// Everything one input produces: at most a result and a retry record.
pub type Outputs<'a> = SmallVec<[OutputRecord<'a>; 2]>;

/// What output records need beyond the input and the decision.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'m> {
    /// This instance's name, recorded in the result entry.
    pub instance: &'m str,
    /// The instant of the decision: the result entry's `time`.
    pub now: DateTime<Utc>,
    pub forward_partitioning: Partitioning,
}

impl Meta<'_> {
    /// Forward and retry records keep the input's partition number unless
    /// `forward_partitioning = "key"`.
    fn forward_partition(&self, input: &Input<'_>) -> PartitionChoice {
        match self.forward_partitioning {
            Partitioning::Same => PartitionChoice::Same(input.partition),
            Partitioning::Key => PartitionChoice::ByKey,
        }
    }
}

/// The records for an event decided on, parsed from `input`'s value: a
/// forward, or a result record and, when deferred, a retry record. An `Err`
/// means the value is not the JSON object the decision was made on;
/// dead-letter it with [`dead_letter`].
pub fn outputs<'a>(
    input: &'a Input<'_>,
    event: &Event<'_>,
    decision: &Decision<'_>,
    meta: &Meta<'_>,
) -> Result<Outputs<'a>, Invalid> {
    match decision.rule {
        Some(rule) if decision.outcome != Outcome::Forwarded => {
            stopped(input, event.layout.as_ref(), rule, decision.outcome, meta)
        }
        _ => {
            let mut out = Outputs::new();
            let shadow: SmallVec<[&str; 4]> = decision
                .matched
                .iter()
                .filter(|r| r.mode == Mode::Shadow)
                .map(|r| r.id.as_str())
                .collect();
            out.push(forward(input, &shadow, meta));
            Ok(out)
        }
    }
}

/// The forward record: key, value and headers borrowed from the input,
/// timestamp kept, then `bouncer-outcome: forwarded`, `bouncer-shadow` when
/// shadow rules matched (sorted here, whatever the order given), and
/// `bouncer-input`.
pub fn forward<'a>(input: &'a Input<'_>, shadow_ids: &[&str], meta: &Meta<'_>) -> OutputRecord<'a> {
    let mut bouncer_headers = SmallVec::new();
    bouncer_headers.push((HEADER_OUTCOME, Cow::Borrowed(Outcome::Forwarded.as_str())));
    if !shadow_ids.is_empty() {
        let mut ids: SmallVec<[&str; 4]> = shadow_ids.iter().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        bouncer_headers.push((HEADER_SHADOW, Cow::Owned(ids.join(","))));
    }
    bouncer_headers.push((HEADER_INPUT, Cow::Owned(input.coordinates())));
    OutputRecord {
        destination: Destination::Forward,
        partition: meta.forward_partition(input),
        key: input.key,
        value: input.value.map(Cow::Borrowed),
        input_headers: &input.headers,
        bouncer_headers,
        timestamp: input.timestamp,
    }
}

/// The records of a stopped event, in produce order: for a deferral the retry
/// record (with `mime`), then the result record (without `mime` unless
/// `"keepmime": true`), each with the result entry appended to `results`.
/// They are new attempts, so the producer stamps their time.
///
/// `layout` is that of the event parsed from `input`'s value; with `None`
/// the value is read again. `outcome` is `Failed` or `Deferred`; the rule
/// gives the entry's code, status and description. An `Err` means the value
/// is not a JSON object with a `results` array or null, which
/// [`Event::parse`] has already refused for any event that got a decision.
pub fn stopped<'a>(
    input: &'a Input<'_>,
    layout: Option<&Layout>,
    rule: &Rule,
    outcome: Outcome,
    meta: &Meta<'_>,
) -> Result<Outputs<'a>, Invalid> {
    debug_assert!(outcome != Outcome::Forwarded, "a forward is not stopped");
    let bytes = input.value.ok_or_else(|| Invalid {
        reason: Reason::NotJson,
        detail: "the record has no value".into(),
    })?;
    let coordinates = input.coordinates();
    let entry = result_entry(rule, &coordinates, meta);
    let deferred = outcome == Outcome::Deferred;
    // The retry record keeps `mime`; the result record keeps it if the event
    // says so.
    let at_layout = layout.and_then(|layout| {
        let retry = if deferred {
            Some(write_at(bytes, layout, &entry, false)?)
        } else {
            None
        };
        Some((retry, write_at(bytes, layout, &entry, !layout.keep_mime)?))
    });
    let (retry, result) = match at_layout {
        Some(values) => values,
        None => {
            let text = std::str::from_utf8(bytes).map_err(|e| Invalid {
                reason: Reason::NotUtf8,
                detail: format!("invalid byte at offset {}", e.valid_up_to()),
            })?;
            let event = TopLevel::parse(text)?;
            let retry = deferred.then(|| event.write(&entry, false));
            (retry, event.write(&entry, !event.keeps_mime()))
        }
    };

    let record = |destination, partition, value: Vec<u8>| {
        let mut bouncer_headers = SmallVec::new();
        bouncer_headers.push((HEADER_OUTCOME, Cow::Borrowed(outcome.as_str())));
        bouncer_headers.push((HEADER_RULE, Cow::Owned(rule.id.clone())));
        bouncer_headers.push((HEADER_INPUT, Cow::Owned(coordinates.clone())));
        OutputRecord {
            destination,
            partition,
            key: input.key,
            value: Some(Cow::Owned(value)),
            input_headers: &input.headers,
            bouncer_headers,
            timestamp: None,
        }
    };
    let mut out = Outputs::new();
    if let Some(retry) = retry {
        out.push(record(
            Destination::Retry,
            meta.forward_partition(input),
            retry,
        ));
    }
    out.push(record(Destination::Results, PartitionChoice::ByKey, result));
    Ok(out)
}

/// The event `text` with `entry` appended to its `results` (added last if
/// absent) and, if `drop_mime`, its `mime` member left out: the text copied
/// around the two edits at the offsets of `layout`. `None` if the offsets do
/// not fit the text.
fn write_at(text: &[u8], layout: &Layout, entry: &str, drop_mime: bool) -> Option<Vec<u8>> {
    let close = text.iter().rposition(|&b| b == b'}')?;
    let mut edits: SmallVec<[(Range<usize>, bool); 2]> = SmallVec::new();
    if let Some(mime) = layout.mime.clone().filter(|_| drop_mime) {
        edits.push((with_separator(text, mime)?, false));
    }
    if let Some(results) = layout.results.clone() {
        edits.push((results, true));
    }
    edits.sort_unstable_by_key(|(range, _)| range.start);
    let mut out = Vec::with_capacity(text.len() + entry.len() + 16);
    let mut at = 0;
    for (range, is_results) in edits {
        out.extend_from_slice(text.get(at..range.start)?);
        if is_results {
            append_to_array(&mut out, text.get(range.clone())?, entry);
        }
        at = range.end;
    }
    if layout.results.is_none() {
        out.extend_from_slice(text.get(at..close)?);
        if out.iter().rev().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            out.push(b',');
        }
        out.extend_from_slice(b"\"results\":");
        append_to_array(&mut out, b"null", entry);
        at = close;
    }
    out.extend_from_slice(text.get(at..)?);
    Some(out)
}

/// A member's span widened to one separating comma: the one after it, or,
/// for the last member, the one before it.
fn with_separator(text: &[u8], member: Range<usize>) -> Option<Range<usize>> {
    let after = member.end
        + text
            .get(member.end..)?
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    match text.get(after)? {
        b',' => Some(member.start..after + 1),
        b'}' => {
            let before = text
                .get(..member.start)?
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())?;
            match text[before] {
                b',' => Some(before..member.end),
                b'{' => Some(member),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The dead letter of an invalid event: the input value unchanged, its
/// timestamp kept, `bouncer-error: <reason code>[: detail]`. If this record
/// cannot be produced in turn, produce [`OutputRecord::without_value`].
pub fn dead_letter<'a>(input: &'a Input<'_>, invalid: &Invalid) -> OutputRecord<'a> {
    dead_letter_with(input, invalid.to_string())
}

/// The dead letter for an output record that failed permanently (SPEC §6:
/// "a permanent per-record error sends that record to the dead-letter
/// topic"): the input value unchanged, with
/// `bouncer-error: produce-failed: <destination>: <error>`. If the value is
/// what the broker refused, produce [`OutputRecord::without_value`] of it.
pub fn dead_letter_unproducible<'a>(
    input: &'a Input<'_>,
    failed: Destination,
    error: &str,
) -> OutputRecord<'a> {
    dead_letter_with(input, format!("{PRODUCE_FAILED}: {failed}: {error}"))
}

fn dead_letter_with<'a>(input: &'a Input<'_>, error: String) -> OutputRecord<'a> {
    let mut bouncer_headers = SmallVec::new();
    bouncer_headers.push((HEADER_ERROR, Cow::Owned(error)));
    bouncer_headers.push((HEADER_INPUT, Cow::Owned(input.coordinates())));
    OutputRecord {
        destination: Destination::DeadLetter,
        partition: PartitionChoice::ByKey,
        key: input.key,
        value: input.value.map(Cow::Borrowed),
        input_headers: &input.headers,
        bouncer_headers,
        timestamp: input.timestamp,
    }
}

/// The entry appended to `results`, as compact JSON, fields in SPEC order.
fn result_entry(rule: &Rule, coordinates: &str, meta: &Meta<'_>) -> String {
    #[derive(Serialize)]
    struct Entry<'r> {
        time: String,
        state: &'static str,
        result: &'static str,
        code: u16,
        status: Option<&'r str>,
        description: &'r str,
        forced: Forced<'r>,
    }
    #[derive(Serialize)]
    struct Forced<'r> {
        rule: &'r str,
        source: &'r Source,
        instance: &'r str,
        input: &'r str,
    }
    let entry = Entry {
        time: format_mailerq_time(meta.now),
        state: "forced",
        result: "error",
        code: rule.code,
        status: rule.status.as_deref(),
        description: &rule.description,
        forced: Forced {
            rule: &rule.id,
            source: &rule.source,
            instance: meta.instance,
            input: coordinates,
        },
    };
    serde_json::to_string(&entry).expect("serialising plain fields cannot fail")
}

/// The top-level fields of an event, each key and value as its raw JSON text.
struct TopLevel<'t> {
    fields: Vec<(&'t RawValue, &'t RawValue)>,
    /// Index of the `results` field, if any.
    results: Option<usize>,
    len: usize,
}

impl<'t> TopLevel<'t> {
    fn parse(text: &'t str) -> Result<TopLevel<'t>, Invalid> {
        let not_json = |e: serde_json::Error| Invalid {
            reason: Reason::NotJson,
            detail: e.to_string(),
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = de.deserialize_any(FieldsVisitor).map_err(not_json)?;
        de.end().map_err(not_json)?;
        let fields = fields.ok_or_else(|| Invalid {
            reason: Reason::NotObject,
            detail: "the event is not an object".into(),
        })?;
        let mut results = None;
        for (index, (key, value)) in fields.iter().enumerate() {
            if !key_is(key, Field::Results.name()) {
                continue;
            }
            if results.replace(index).is_some() {
                return Err(Invalid {
                    reason: Reason::DuplicateKey(Field::Results),
                    detail: "\"results\" appears more than once".into(),
                });
            }
            let raw = value.get();
            if !raw.starts_with('[') && raw != "null" {
                return Err(Invalid {
                    reason: Reason::WrongType(Field::Results),
                    detail: "expected an array".into(),
                });
            }
        }
        Ok(TopLevel {
            fields,
            results,
            len: text.len(),
        })
    }

    /// MailerQ keeps `mime` in results only for `"keepmime": true`; the last
    /// `keepmime` counts, as in most JSON readers.
    fn keeps_mime(&self) -> bool {
        self.fields
            .iter()
            .rev()
            .find(|(key, _)| key_is(key, "keepmime"))
            .is_some_and(|(_, value)| value.get() == "true")
    }

    /// The object again, each field's raw text in its place, `entry` appended
    /// to `results` (added last if absent), and every `mime` left out if
    /// `drop_mime`.
    fn write(&self, entry: &str, drop_mime: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len + entry.len() + 16);
        out.push(b'{');
        let mut first = true;
        let mut separator = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        for (index, (key, value)) in self.fields.iter().enumerate() {
            if drop_mime && key_is(key, "mime") {
                continue;
            }
            separator(&mut out);
            out.extend_from_slice(key.get().as_bytes());
            out.push(b':');
            if self.results == Some(index) {
                append_to_array(&mut out, value.get().as_bytes(), entry);
            } else {
                out.extend_from_slice(value.get().as_bytes());
            }
        }
        if self.results.is_none() {
            separator(&mut out);
            out.extend_from_slice(b"\"results\":");
            append_to_array(&mut out, b"null", entry);
        }
        out.push(b'}');
        out
    }
}

/// Writes `array` (raw JSON text of an array, or `null` for none) with
/// `entry` as its new last element; existing elements keep their raw text.
fn append_to_array(out: &mut Vec<u8>, array: &[u8], entry: &str) {
    let body = array
        .strip_prefix(b"[")
        .and_then(|a| a.strip_suffix(b"]"))
        .filter(|body| !body.trim_ascii().is_empty());
    match body {
        Some(_) => {
            out.extend_from_slice(&array[..array.len() - 1]);
            out.push(b',');
        }
        None => out.push(b'['),
    }
    out.extend_from_slice(entry.as_bytes());
    out.push(b']');
}

/// Whether a raw JSON key (quotes included) names `name`, escapes decoded:
/// `"mi\u006de"` is `mime`.
fn key_is(key: &RawValue, name: &str) -> bool {
    let raw = key.get();
    let inner = &raw[1..raw.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str::<Cow<'_, str>>(raw).is_ok_and(|k| k == name)
    } else {
        inner == name
    }
}

/// Collects an object's fields in order; `None` for any other value.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Option<Vec<(&'de RawValue, &'de RawValue)>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            fields.push((key, map.next_value::<&'de RawValue>()?));
        }
        Ok(Some(fields))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    /// The SPEC §3 example entry, for a rule from `campaigns/x.toml` decided
    /// at 2026-11-27 12:00:00 on `bouncer-7f9c` for `deliveries/3/10452`.
    const ENTRY: &str = concat!(
        r#"{"time":"2026-11-27 12:00:00","state":"forced","result":"error","#,
        r#""code":550,"status":"5.7.1","description":"Campaign X cancelled by the customer","#,
        r#""forced":{"rule":"cancel-campaign-x","source":"file:campaigns/x.toml","#,
        r#""instance":"bouncer-7f9c","input":"deliveries/3/10452"}}"#
    );

    const TIMESTAMP: i64 = 1_795_780_800_000;

    fn input<'a>(value: &'a [u8], headers: Vec<InputHeader<'a>>) -> Input<'a> {
        let headers = headers.into_iter().collect();
        Input {
            topic: "deliveries",
            partition: 3,
            offset: 10452,
            key: Some(b"msg-1"),
            value: Some(value),
            headers,
            timestamp: Some(TIMESTAMP),
        }
    }

    fn meta(partitioning: Partitioning) -> Meta<'static> {
        Meta {
            instance: "bouncer-7f9c",
            // Sub-second digits never reach the MailerQ time.
            now: "2026-11-27T12:00:00.987654Z".parse().unwrap(),
            forward_partitioning: partitioning,
        }
    }

    fn rule(id: &str, code: u16, status: Option<&str>, source: Source) -> Rule {
        Rule {
            source,
            status: status.map(Into::into),
            description: "Campaign X cancelled by the customer".into(),
            ..Rule::for_test(id, code, Mode::Enforce)
        }
    }

    fn cancel_x() -> Rule {
        rule(
            "cancel-campaign-x",
            550,
            Some("5.7.1"),
            Source::File("campaigns/x.toml".into()),
        )
    }

    fn defer_x() -> Rule {
        rule(
            "cancel-campaign-x",
            451,
            Some("4.7.1"),
            Source::File("campaigns/x.toml".into()),
        )
    }

    /// [`ENTRY`] for [`defer_x`].
    fn defer_entry() -> String {
        ENTRY
            .replace(r#""code":550"#, r#""code":451"#)
            .replace("5.7.1", "4.7.1")
    }

    fn text<'r>(record: &'r OutputRecord<'_>) -> &'r str {
        std::str::from_utf8(record.value.as_deref().expect("a value")).unwrap()
    }

    fn names(record: &OutputRecord<'_>) -> Vec<String> {
        record.headers().map(|(n, _)| n.to_owned()).collect()
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
            } else if b.is_ascii_whitespace() {
                continue;
            }
            out.push(b);
        }
        out
    }

    /// [`stopped`] reading the value again; when the value has a layout,
    /// checked to give the same records as [`stopped`] writing at its
    /// offsets, but for whitespace between members (which the layout keeps).
    fn stopped_both<'a>(
        input: &'a Input<'_>,
        rule: &Rule,
        outcome: Outcome,
        meta: &Meta<'_>,
    ) -> Result<Outputs<'a>, Invalid> {
        let reread = stopped(input, None, rule, outcome, meta);
        let layout = input
            .value
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(Layout::find);
        if let (Ok(reread), Some(layout)) = (&reread, layout) {
            let at = stopped(input, Some(&layout), rule, outcome, meta).unwrap();
            assert_eq!(at.len(), reread.len());
            let value = input.value.unwrap();
            for (at, reread) in at.iter().zip(reread) {
                let (a, r) = (
                    at.value.as_deref().unwrap(),
                    reread.value.as_deref().unwrap(),
                );
                assert_eq!(compact(a), compact(r), "{}", String::from_utf8_lossy(value));
                if compact(value) == value {
                    assert_eq!(a, r);
                }
                assert_eq!(at.destination, reread.destination);
                assert_eq!(at.partition, reread.partition);
                assert!(at.headers().eq(reread.headers()));
            }
        }
        reread
    }

    /// The single results record of a failed event.
    fn failed(value: &str) -> String {
        let input = input(value.as_bytes(), vec![]);
        let out = stopped_both(
            &input,
            &cancel_x(),
            Outcome::Failed,
            &meta(Partitioning::Same),
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].destination, Destination::Results);
        text(&out[0]).to_owned()
    }

    #[test]
    fn forward_is_the_input_byte_for_byte_plus_bouncer_headers() {
        let value = br#"{"recipient" : "a@example.com",  "n": 1e400, "mime": "x"}"#;
        let headers = vec![
            ("trace", Some(&b"1"[..])),
            ("empty", None),
            ("trace", Some(&b"2"[..])),
            ("bouncer-outcome", Some(&b"deferred"[..])),
        ];
        let input = input(value, headers);
        let record = forward(&input, &[], &meta(Partitioning::Same));

        assert_eq!(record.destination, Destination::Forward);
        assert_eq!(record.key, Some(&b"msg-1"[..]));
        assert_eq!(record.value.as_deref(), Some(&value[..]));
        // Borrowed, not copied: the hot path allocates no payload.
        assert!(matches!(record.value, Some(Cow::Borrowed(v)) if v.as_ptr() == value.as_ptr()));
        assert_eq!(record.timestamp, Some(TIMESTAMP));
        let headers: Vec<(&str, Option<&[u8]>)> = record.headers().collect();
        assert_eq!(
            headers,
            vec![
                ("trace", Some(&b"1"[..])),
                ("empty", None),
                ("trace", Some(&b"2"[..])),
                ("bouncer-outcome", Some(&b"deferred"[..])),
                ("bouncer-outcome", Some(&b"forwarded"[..])),
                ("bouncer-input", Some(&b"deliveries/3/10452"[..])),
            ]
        );
        // The last header of a name is this pass's.
        assert_eq!(record.bouncer_header(HEADER_OUTCOME), Some("forwarded"));
        assert_eq!(record.bouncer_header(HEADER_SHADOW), None);
    }

    #[test]
    fn coordinates_for_logs_are_those_of_the_header() {
        let record = input(b"{}", vec![]);
        assert_eq!(record.coordinates(), "deliveries/3/10452");
        assert_eq!(
            record.coordinates_display().to_string(),
            record.coordinates()
        );
        let mut extreme = record.clone();
        (extreme.partition, extreme.offset) = (i32::MIN, i64::MIN);
        assert_eq!(
            extreme.coordinates(),
            format!("deliveries/{}/{}", i32::MIN, i64::MIN)
        );
    }

    #[test]
    fn forward_keeps_a_missing_key_value_and_timestamp_missing() {
        let input = Input {
            topic: "deliveries",
            partition: 0,
            offset: 7,
            key: None,
            value: None,
            headers: SmallVec::new(),
            timestamp: None,
        };
        let record = forward(&input, &[], &meta(Partitioning::Same));
        assert_eq!(record.key, None);
        assert_eq!(record.value, None);
        assert_eq!(record.timestamp, None);
        assert_eq!(record.bouncer_header(HEADER_INPUT), Some("deliveries/0/7"));
    }

    #[test]
    fn shadow_ids_are_sorted_and_comma_separated() {
        let input = input(b"{}", vec![("h", Some(b"v"))]);
        let record = forward(
            &input,
            &["zeta", "alpha", "mid-1", "alpha"],
            &meta(Partitioning::Same),
        );
        assert_eq!(
            record.bouncer_header(HEADER_SHADOW),
            Some("alpha,mid-1,zeta")
        );
        assert_eq!(
            names(&record),
            ["h", "bouncer-outcome", "bouncer-shadow", "bouncer-input"]
        );
    }

    #[test]
    fn a_forwarded_decision_reports_its_shadow_matches() {
        let mut b = rule("shadow-b", 550, None, Source::Api);
        b.mode = Mode::Shadow;
        let mut a = rule("shadow-a", 421, None, Source::Api);
        a.mode = Mode::Shadow;
        let decision = Decision {
            outcome: Outcome::Forwarded,
            rule: None,
            matched: [&b, &a].into_iter().collect(),
        };
        let input = input(br#"{"recipient":"a@b.c"}"#, vec![]);
        let out = outputs(
            &input,
            &Event::parse(input.value.unwrap(), usize::MAX).unwrap(),
            &decision,
            &meta(Partitioning::Same),
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].destination, Destination::Forward);
        assert_eq!(
            out[0].bouncer_header(HEADER_SHADOW),
            Some("shadow-a,shadow-b")
        );
        assert_eq!(out[0].value.as_deref(), input.value);
    }

    #[test]
    fn forward_partition_follows_the_setting() {
        let input = input(b"{}", vec![]);
        let same = forward(&input, &[], &meta(Partitioning::Same));
        assert_eq!(same.partition, PartitionChoice::Same(3));
        let by_key = forward(&input, &[], &meta(Partitioning::Key));
        assert_eq!(by_key.partition, PartitionChoice::ByKey);
    }

    #[test]
    fn result_entry_is_the_spec_example_exactly() {
        let value = r#"{"recipient":"user@example.com","tags":["campaign_X"]}"#;
        assert_eq!(
            failed(value),
            format!(
                r#"{{"recipient":"user@example.com","tags":["campaign_X"],"results":[{ENTRY}]}}"#
            )
        );
    }

    #[test]
    fn result_entry_status_is_null_without_one_and_source_api() {
        let input = input(br#"{"recipient":"a@b.c"}"#, vec![]);
        let rule = rule("api-0123", 451, None, Source::Api);
        let out = stopped_both(&input, &rule, Outcome::Failed, &meta(Partitioning::Same)).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(out[0].value.as_deref().unwrap()).unwrap();
        let entry = &value["results"][0];
        assert_eq!(entry["status"], serde_json::Value::Null);
        assert_eq!(entry["code"], 451);
        assert_eq!(entry["forced"]["source"], "api");
        assert_eq!(entry["forced"]["rule"], "api-0123");
    }

    #[test]
    fn result_entry_escapes_the_description() {
        let input = input(br#"{"recipient":"a@b.c"}"#, vec![]);
        let mut rule = cancel_x();
        rule.description = r#"say "no" \ stop – für immer"#.into();
        let out = stopped_both(&input, &rule, Outcome::Failed, &meta(Partitioning::Same)).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(out[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(value["results"][0]["description"], rule.description);
    }

    /// The records of a failed and of a deferred decision on `value`, written
    /// at the offsets its parse found.
    fn at_layout(value: &str) -> (String, String, String) {
        let input = input(value.as_bytes(), vec![]);
        let event = Event::parse(value.as_bytes(), usize::MAX).unwrap();
        let layout = event.layout.as_ref().expect("one mime at most");
        let meta = meta(Partitioning::Same);
        let failed = stopped(&input, Some(layout), &cancel_x(), Outcome::Failed, &meta).unwrap();
        let deferred = stopped(&input, Some(layout), &defer_x(), Outcome::Deferred, &meta).unwrap();
        (
            text(&failed[0]).to_owned(),
            text(&deferred[0]).to_owned(),
            text(&deferred[1]).to_owned(),
        )
    }

    #[test]
    fn written_at_the_layout_the_text_between_members_is_kept() {
        let entry = defer_entry();
        let value = "{ \"recipient\" : \"a@b.c\" ,\n \"mime\" : \"m\" , \"results\" : [ 1 ] }\n";
        let (failed, retry, result) = at_layout(value);
        assert_eq!(
            failed,
            format!("{{ \"recipient\" : \"a@b.c\" ,\n  \"results\" : [ 1 ,{ENTRY}] }}\n")
        );
        assert_eq!(
            retry,
            format!(
                "{{ \"recipient\" : \"a@b.c\" ,\n \"mime\" : \"m\" , \"results\" : [ 1 ,{entry}] }}\n"
            )
        );
        assert_eq!(
            result,
            format!("{{ \"recipient\" : \"a@b.c\" ,\n  \"results\" : [ 1 ,{entry}] }}\n")
        );
        // mime last, first, alone with the recipient; results absent or null.
        let cases = [
            (
                r#"{"recipient":"a@b.c", "mime":"m" }"#,
                format!(r#"{{"recipient":"a@b.c" ,"results":[{ENTRY}]}}"#),
            ),
            (
                r#"{ "mime":"m","recipient":"a@b.c"}"#,
                format!(r#"{{ "recipient":"a@b.c","results":[{ENTRY}]}}"#),
            ),
            (
                r#"{"mime":"m" , "recipient":"a@b.c","results":null}"#,
                format!(r#"{{ "recipient":"a@b.c","results":[{ENTRY}]}}"#),
            ),
            (
                r#"{"results":[],"mi\u006de":{"mime":1},"recipient":"a@b.c"}"#,
                format!(r#"{{"results":[{ENTRY}],"recipient":"a@b.c"}}"#),
            ),
            (
                r#"{"recipient":"a@b.c","results":[{"a":[]}] ,"mime":"m"}"#,
                format!(r#"{{"recipient":"a@b.c","results":[{{"a":[]}},{ENTRY}] }}"#),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(at_layout(value).0, want, "{value}");
        }
    }

    #[test]
    fn an_event_with_two_mimes_is_read_again_and_loses_both() {
        let value = br#"{"recipient":"a@b.c","mime":"a","mi\u006de":"b"}"#;
        let event = Event::parse(value, usize::MAX).unwrap();
        assert_eq!(event.layout, None);
        let input = input(value, vec![]);
        let rule = cancel_x();
        let decision = Decision {
            outcome: Outcome::Failed,
            rule: Some(&rule),
            matched: [&rule].into_iter().collect(),
        };
        let out = outputs(&input, &event, &decision, &meta(Partitioning::Same)).unwrap();
        assert_eq!(
            text(&out[0]),
            format!(r#"{{"recipient":"a@b.c","results":[{ENTRY}]}}"#)
        );
    }

    #[test]
    fn mime_is_dropped_from_results_unless_keepmime_is_true() {
        assert_eq!(
            failed(r#"{"recipient":"a@b.c","mime":"From: x\r\n\r\nbody","z":1}"#),
            format!(r#"{{"recipient":"a@b.c","z":1,"results":[{ENTRY}]}}"#)
        );
        assert_eq!(
            failed(r#"{"recipient":"a@b.c","mime":"m","keepmime":true}"#),
            format!(r#"{{"recipient":"a@b.c","mime":"m","keepmime":true,"results":[{ENTRY}]}}"#)
        );
        // Only JSON `true` keeps it, as in MailerQ.
        for keep in [r#"false"#, r#""true""#, "1", "null", "[true]"] {
            assert_eq!(
                failed(&format!(r#"{{"mime":"m","keepmime":{keep}}}"#)),
                format!(r#"{{"keepmime":{keep},"results":[{ENTRY}]}}"#),
                "keepmime {keep}"
            );
        }
        // The last keepmime counts.
        assert_eq!(
            failed(r#"{"keepmime":true,"mime":"m","keepmime":false}"#),
            format!(r#"{{"keepmime":true,"keepmime":false,"results":[{ENTRY}]}}"#)
        );
        // Every mime goes, however its key is spelled.
        assert_eq!(
            failed(r#"{"mime":"a","mi\u006de":"b","Mime":"c"}"#),
            format!(r#"{{"Mime":"c","results":[{ENTRY}]}}"#)
        );
    }

    #[test]
    fn results_is_created_when_absent_or_null_and_appended_to_otherwise() {
        assert_eq!(
            failed(r#"{"results":null,"after":1}"#),
            format!(r#"{{"results":[{ENTRY}],"after":1}}"#)
        );
        assert_eq!(
            failed(r#"{"results":[ ],"after":1}"#),
            format!(r#"{{"results":[{ENTRY}],"after":1}}"#)
        );
        assert_eq!(failed("{}"), format!(r#"{{"results":[{ENTRY}]}}"#));
        // Earlier entries keep their raw text, numbers included.
        assert_eq!(
            failed(r#"{"results": [ {"code": 421, "n": 1e400} ,  "x" ], "a": 2}"#),
            format!(r#"{{"results":[ {{"code": 421, "n": 1e400}} ,  "x" ,{ENTRY}],"a":2}}"#)
        );
        // An escaped "results" key is the results field.
        assert_eq!(
            failed(r#"{"re\u0073ults":[1]}"#),
            format!(r#"{{"re\u0073ults":[1,{ENTRY}]}}"#)
        );
    }

    #[test]
    fn every_other_field_keeps_its_raw_text_and_place() {
        let value = concat!(
            "{ \"unknown\" : {\"deep\": [1.0, -0, 2E+10, \"\\u00e9\\n\"]},\n",
            "  \"big\": 123456789012345678901234567890, \"huge\": 1e400,\n",
            "  \"dup\": 1, \"dup\": \"two\", \"x\\u0041\": true, \"mime\": \"m\",\n",
            "  \"recipient\": \"user@example.com\", \"empty\": {}, \"n\": null }"
        );
        assert_eq!(
            failed(value),
            format!(
                "{{{},{},{},{},{},{},{},{},{},\"results\":[{ENTRY}]}}",
                r#""unknown":{"deep": [1.0, -0, 2E+10, "\u00e9\n"]}"#,
                r#""big":123456789012345678901234567890"#,
                r#""huge":1e400"#,
                r#""dup":1"#,
                r#""dup":"two""#,
                r#""x\u0041":true"#,
                r#""recipient":"user@example.com""#,
                r#""empty":{}"#,
                r#""n":null"#,
            )
        );
    }

    #[test]
    fn a_result_record_is_an_event_with_one_more_attempt() {
        let value = br#"{"recipient":"a@b.c","maxattempts":3,"results":[{"code":421}]}"#;
        let before = Event::parse(value, usize::MAX).unwrap().attempts();
        let result = failed(std::str::from_utf8(value).unwrap());
        let after = Event::parse(result.as_bytes(), usize::MAX).unwrap();
        assert_eq!(after.attempts(), before + 1);
        assert_eq!(after.max_attempts, 3);
    }

    #[test]
    fn failed_gives_one_result_record_by_key() {
        let headers = vec![("trace", Some(&b"1"[..])), ("trace", None)];
        let input = input(br#"{"recipient":"a@b.c"}"#, headers);
        let out = stopped_both(
            &input,
            &cancel_x(),
            Outcome::Failed,
            &meta(Partitioning::Same),
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        let record = &out[0];
        assert_eq!(record.destination, Destination::Results);
        assert_eq!(record.partition, PartitionChoice::ByKey);
        assert_eq!(record.key, Some(&b"msg-1"[..]));
        assert_eq!(record.timestamp, None);
        let headers: Vec<(&str, Option<&[u8]>)> = record.headers().collect();
        assert_eq!(
            headers,
            vec![
                ("trace", Some(&b"1"[..])),
                ("trace", None),
                ("bouncer-outcome", Some(&b"failed"[..])),
                ("bouncer-rule", Some(&b"cancel-campaign-x"[..])),
                ("bouncer-input", Some(&b"deliveries/3/10452"[..])),
            ]
        );
    }

    #[test]
    fn deferred_gives_a_retry_record_with_mime_and_a_result_record_without() {
        let value = r#"{"recipient":"a@b.c","mime":"m","results":[]}"#;
        let input = input(value.as_bytes(), vec![("h", Some(b"v"))]);
        let rule = defer_x();
        let decision = Decision {
            outcome: Outcome::Deferred,
            rule: Some(&rule),
            matched: [&rule].into_iter().collect(),
        };
        let entry = defer_entry();
        assert!(entry.contains(r#""code":451,"status":"4.7.1""#));
        for (partitioning, retry_partition) in [
            (Partitioning::Same, PartitionChoice::Same(3)),
            (Partitioning::Key, PartitionChoice::ByKey),
        ] {
            let out = outputs(
                &input,
                &Event::parse(input.value.unwrap(), usize::MAX).unwrap(),
                &decision,
                &meta(partitioning),
            )
            .unwrap();
            assert_eq!(out.len(), 2);
            let (retry, result) = (&out[0], &out[1]);
            assert_eq!(retry.destination, Destination::Retry);
            assert_eq!(retry.partition, retry_partition);
            assert_eq!(
                text(retry),
                format!(r#"{{"recipient":"a@b.c","mime":"m","results":[{entry}]}}"#)
            );
            assert_eq!(result.destination, Destination::Results);
            assert_eq!(result.partition, PartitionChoice::ByKey);
            assert_eq!(
                text(result),
                format!(r#"{{"recipient":"a@b.c","results":[{entry}]}}"#)
            );
            for record in [retry, result] {
                assert_eq!(record.bouncer_header(HEADER_OUTCOME), Some("deferred"));
                assert_eq!(record.key, Some(&b"msg-1"[..]));
                assert_eq!(names(record)[0], "h");
            }
        }
    }

    #[test]
    fn a_failed_decision_gives_no_retry_record() {
        let input = input(br#"{"recipient":"a@b.c"}"#, vec![]);
        let rule = cancel_x();
        let decision = Decision {
            outcome: Outcome::Failed,
            rule: Some(&rule),
            matched: [&rule].into_iter().collect(),
        };
        let out = outputs(
            &input,
            &Event::parse(input.value.unwrap(), usize::MAX).unwrap(),
            &decision,
            &meta(Partitioning::Key),
        )
        .unwrap();
        let destinations: Vec<Destination> = out.iter().map(|r| r.destination).collect();
        assert_eq!(destinations, [Destination::Results]);
    }

    #[test]
    fn a_value_that_is_not_an_event_object_is_refused_not_rewritten() {
        let cases: [(Option<&[u8]>, &str); 7] = [
            (None, "not-json"),
            (Some(b"\xff{}"), "not-utf8"),
            (Some(b"{\"a\":"), "not-json"),
            (Some(b"{} x"), "not-json"),
            (Some(b"[1]"), "not-object"),
            (Some(br#"{"results":{}}"#), "wrong-type:results"),
            (
                Some(br#"{"results":[],"result\u0073":[]}"#),
                "duplicate-key:results",
            ),
        ];
        for (value, reason) in cases {
            let mut input = input(b"", vec![]);
            input.value = value;
            let err = stopped_both(
                &input,
                &cancel_x(),
                Outcome::Failed,
                &meta(Partitioning::Same),
            )
            .unwrap_err();
            assert_eq!(err.reason.to_string(), reason, "{value:?}");
        }
    }

    #[test]
    fn dead_letter_keeps_the_value_and_names_the_error() {
        let value = b"not json at all";
        let input = input(value, vec![("h", Some(b"1")), ("h", Some(b"2"))]);
        let invalid = Event::parse(value, 1 << 20).unwrap_err();
        let record = dead_letter(&input, &invalid);
        assert_eq!(record.destination, Destination::DeadLetter);
        assert_eq!(record.partition, PartitionChoice::ByKey);
        assert_eq!(record.key, Some(&b"msg-1"[..]));
        assert!(matches!(record.value, Some(Cow::Borrowed(v)) if v.as_ptr() == value.as_ptr()));
        assert_eq!(record.timestamp, Some(TIMESTAMP));
        let error = record.bouncer_header(HEADER_ERROR).unwrap();
        assert!(error.starts_with("not-json: "), "{error}");
        assert_eq!(names(&record), ["h", "h", "bouncer-error", "bouncer-input"]);
        assert_eq!(record.bouncer_header(HEADER_ORIGINAL_SIZE), None);

        let bare = Invalid {
            reason: Reason::WrongType(Field::MaxAttempts),
            detail: String::new(),
        };
        let record = dead_letter(&input, &bare);
        assert_eq!(
            record.bouncer_header(HEADER_ERROR),
            Some("wrong-type:maxattempts")
        );
    }

    #[test]
    fn a_dead_letter_that_cannot_be_produced_goes_without_its_value() {
        let value = vec![b'x'; 3_000_000];
        let input = input(&value, vec![("h", Some(b"v"))]);
        let invalid = Event::parse(&value, 1 << 20).unwrap_err();
        let record = dead_letter(&input, &invalid).without_value();
        assert_eq!(record.value, None);
        assert_eq!(record.timestamp, None);
        assert_eq!(record.key, Some(&b"msg-1"[..]));
        assert_eq!(record.bouncer_header(HEADER_ORIGINAL_SIZE), Some("3000000"));
        assert!(
            record
                .bouncer_header(HEADER_ERROR)
                .unwrap()
                .starts_with("too-large: ")
        );
        assert_eq!(
            names(&record),
            [
                "h",
                "bouncer-error",
                "bouncer-input",
                "bouncer-original-size"
            ]
        );
    }

    #[test]
    fn a_null_value_stays_null_without_an_original_size() {
        let mut input = input(b"", vec![]);
        input.value = None;
        let invalid = Event::parse(b"", 1 << 20).unwrap_err();
        let record = dead_letter(&input, &invalid).without_value();
        assert_eq!(record.value, None);
        assert_eq!(record.bouncer_header(HEADER_ORIGINAL_SIZE), None);
    }

    #[test]
    fn an_unproducible_record_is_dead_lettered_with_the_input_value() {
        let value = br#"{"recipient":"a@b.c"}"#;
        let input = input(value, vec![("h", None)]);
        let record = dead_letter_unproducible(
            &input,
            Destination::Results,
            "Broker: Message size too large",
        );
        assert_eq!(record.destination, Destination::DeadLetter);
        assert_eq!(record.partition, PartitionChoice::ByKey);
        assert_eq!(record.value.as_deref(), Some(&value[..]));
        assert_eq!(
            record.bouncer_header(HEADER_ERROR),
            Some("produce-failed: results: Broker: Message size too large")
        );
        let record = record.without_value();
        assert_eq!(record.value, None);
        assert_eq!(
            record.bouncer_header(HEADER_ORIGINAL_SIZE),
            Some(value.len().to_string().as_str())
        );
    }

    #[test]
    fn every_record_carries_the_input_key_headers_and_coordinates() {
        let value = br#"{"recipient":"a@b.c","mime":"m"}"#;
        let input = input(value, vec![("a", Some(b"1")), ("b", None)]);
        let rule = defer_x();
        let meta = meta(Partitioning::Same);
        let invalid = Invalid {
            reason: Reason::NotJson,
            detail: "x".into(),
        };
        let mut records = vec![forward(&input, &["s"], &meta)];
        records.extend(stopped_both(&input, &rule, Outcome::Deferred, &meta).unwrap());
        records.extend(stopped_both(&input, &rule, Outcome::Failed, &meta).unwrap());
        records.push(dead_letter(&input, &invalid));
        records.push(dead_letter(&input, &invalid).without_value());
        records.push(dead_letter_unproducible(&input, Destination::Forward, "e"));
        for record in &records {
            assert_eq!(record.key, Some(&b"msg-1"[..]));
            let headers: Vec<_> = record.headers().collect();
            assert_eq!(headers[..2], [("a", Some(&b"1"[..])), ("b", None)]);
            assert_eq!(
                record.bouncer_header(HEADER_INPUT),
                Some("deliveries/3/10452"),
                "{:?}",
                record.destination
            );
        }
    }

    #[test]
    fn time_is_the_given_instant_in_mailerq_format() {
        let input = input(b"{}", vec![]);
        let mut meta = meta(Partitioning::Same);
        meta.now = "1999-12-31T23:59:59.999Z".parse().unwrap();
        let out = stopped_both(&input, &cancel_x(), Outcome::Failed, &meta).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(out[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(value["results"][0]["time"], "1999-12-31 23:59:59");
        assert_eq!(value["results"][0]["forced"]["instance"], "bouncer-7f9c");
    }
}
