//! Borrowed view of a delivery event (SPEC §1).
//!
//! Only the fields that rules read are parsed; everything else is checked to
//! be JSON and skipped. Strings borrow from the input unless they contain
//! escapes. Parsing never panics on hostile input: every failure is one of the
//! fixed reason codes of [`Reason`].

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use chrono::NaiveDateTime;
use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::domain::AddressDomain;

/// `max_event_bytes` default: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// MailerQ's timestamp layout, UTC.
pub const MAILERQ_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The fields of SPEC §1's table: the only ones bouncer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Recipient,
    Envelope,
    Ips,
    Pool,
    Tags,
    MaxDeliverTime,
    MaxAttempts,
    Results,
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::Recipient,
        Field::Envelope,
        Field::Ips,
        Field::Pool,
        Field::Tags,
        Field::MaxDeliverTime,
        Field::MaxAttempts,
        Field::Results,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Recipient => "recipient",
            Field::Envelope => "envelope",
            Field::Ips => "ips",
            Field::Pool => "pool",
            Field::Tags => "tags",
            Field::MaxDeliverTime => "maxdelivertime",
            Field::MaxAttempts => "maxattempts",
            Field::Results => "results",
        }
    }

    fn from_key(key: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == key)
    }
}

/// Why an event is invalid; its text is the `bouncer-error` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotUtf8,
    NotJson,
    NotObject,
    RecipientMissing,
    RecipientNoDomain,
    WrongType(Field),
    DuplicateKey(Field),
    TooLarge,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotUtf8 => f.write_str("not-utf8"),
            Reason::NotJson => f.write_str("not-json"),
            Reason::NotObject => f.write_str("not-object"),
            Reason::RecipientMissing => f.write_str("recipient-missing"),
            Reason::RecipientNoDomain => f.write_str("recipient-no-domain"),
            Reason::WrongType(field) => write!(f, "wrong-type:{}", field.name()),
            Reason::DuplicateKey(field) => write!(f, "duplicate-key:{}", field.name()),
            Reason::TooLarge => f.write_str("too-large"),
        }
    }
}

/// An invalid event: the reason code and a human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: Reason,
    pub detail: String,
}

impl Invalid {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Invalid {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.reason, self.detail)
        }
    }
}

impl std::error::Error for Invalid {}

/// What rules see of a delivery event.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub recipient: Cow<'a, str>,
    /// Normalised recipient domain; `None` for an address literal.
    pub recipient_domain: Option<Cow<'a, str>>,
    /// Normalised envelope sender domain; `None` for the null sender, an
    /// address without a domain, or an address literal.
    pub sender_domain: Option<Cow<'a, str>>,
    /// Candidate sending IPs; an entry that is not an IP address is `None`
    /// (it is in no range, so it fails `mta_match = "all"`).
    pub ips: SmallVec<[Option<IpAddr>; 2]>,
    pub pool: Option<Cow<'a, str>>,
    pub tags: SmallVec<[Cow<'a, str>; 4]>,
    /// `maxdelivertime` as Unix seconds, UTC.
    pub max_deliver_time: Option<i64>,
    /// `maxattempts`; 0 means no limit.
    pub max_attempts: u64,
    /// The raw `results` array, counted only when a decision needs it
    /// ([`Event::attempts`]).
    results: Option<&'a str>,
    /// Where a result record's edits go in the event's text; `None` when the
    /// event has more than one top-level `mime` (the writer then reads the
    /// event again).
    pub layout: Option<Layout>,
}

/// Byte offsets, in the event's text, of what a result or retry record
/// changes (SPEC §3): found by [`Event::parse`] on its way through, so the
/// records are written without reading the event a second time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The top-level `mime` member, from its key's opening quote to the end
    /// of its value.
    pub mime: Option<Range<usize>>,
    /// The top-level `results` value: an array or `null`.
    pub results: Option<Range<usize>>,
    /// The last top-level `keepmime` is `true` (MailerQ keeps `mime` in
    /// results only then).
    pub keep_mime: bool,
}

impl Layout {
    /// The layout of any JSON object's text, an event or not.
    #[cfg(test)]
    pub(crate) fn find(text: &str) -> Option<Layout> {
        match parse_top(text, false)
            .or_else(|_| parse_top(text, true))
            .ok()?
        {
            Top::Object(fields) => fields.layout(),
            Top::NotObject(_) => None,
        }
    }
}

impl<'a> Event<'a> {
    /// Parses one Kafka record value.
    pub fn parse(bytes: &'a [u8], max_event_bytes: usize) -> Result<Event<'a>, Invalid> {
        if bytes.len() > max_event_bytes {
            return Err(Invalid::new(
                Reason::TooLarge,
                format!("{} bytes, limit {}", bytes.len(), max_event_bytes),
            ));
        }
        let text = simdutf8::compat::from_utf8(bytes).map_err(|e| {
            Invalid::new(
                Reason::NotUtf8,
                format!("invalid byte at offset {}", e.valid_up_to()),
            )
        })?;
        Self::parse_str(text)
    }

    /// Number of entries in `results`: the attempts made so far.
    pub fn attempts(&self) -> u64 {
        let Some(raw) = self.results else { return 0 };
        let counted = LenientSeed::<Count>::new(true)
            .deserialize(&mut serde_json::Deserializer::from_str(raw));
        match counted {
            Ok(Lenient::Ok(Count(n))) => n,
            // The parse read this text as an array already.
            _ => 0,
        }
    }

    /// Parses an event already known to be UTF-8 and within the size limit.
    pub fn parse_str(text: &'a str) -> Result<Event<'a>, Invalid> {
        let raw = match parse_top(text, false) {
            Ok(raw) => raw,
            Err(e) => {
                // Valid JSON that the fast way refused: read it again carefully.
                let careful = serde_json::from_str::<IgnoredAny>(text)
                    .ok()
                    .and_then(|_| parse_top(text, true).ok());
                careful.ok_or_else(|| Invalid::new(Reason::NotJson, e.to_string()))?
            }
        };
        let fields = match raw {
            Top::NotObject(kind) => {
                return Err(Invalid::new(
                    Reason::NotObject,
                    format!("the event is {kind}, not an object"),
                ));
            }
            Top::Object(fields) => fields,
        };
        if let Some(invalid) = fields.first_error {
            return Err(invalid);
        }
        fields.into_event()
    }
}

/// The top-level value: an object's fields, or what it was instead.
enum Top<'a> {
    Object(Box<RawFields<'a>>),
    NotObject(&'static str),
}

#[derive(Default)]
struct RawFields<'a> {
    seen: [bool; Field::ALL.len()],
    first_error: Option<Invalid>,
    recipient: Option<Cow<'a, str>>,
    envelope: Option<Cow<'a, str>>,
    ips: Option<SmallVec<[Cow<'a, str>; 2]>>,
    pool: Option<Cow<'a, str>>,
    tags: Option<SmallVec<[Cow<'a, str>; 4]>>,
    max_deliver_time: Option<Cow<'a, str>>,
    max_attempts: Option<u64>,
    results: Option<&'a str>,
    layout: Layout,
    /// A top-level `mime` member left `layout.mime` unset or unusable: more
    /// than one, so the record writer reads the event again.
    no_layout: bool,
}

impl<'a> RawFields<'a> {
    fn fail(&mut self, invalid: Invalid) {
        if self.first_error.is_none() {
            self.first_error = Some(invalid);
        }
    }

    fn layout(&self) -> Option<Layout> {
        (!self.no_layout).then(|| self.layout.clone())
    }

    fn into_event(self) -> Result<Event<'a>, Invalid> {
        let layout = self.layout();
        let recipient = self.recipient.ok_or_else(|| {
            Invalid::new(
                Reason::RecipientMissing,
                "the event has no \"recipient\" string",
            )
        })?;
        let recipient_domain = match domain_of(&recipient) {
            AddressDomain::Name(name) => Some(name),
            AddressDomain::Literal => None,
            AddressDomain::Missing => {
                return Err(Invalid::new(
                    Reason::RecipientNoDomain,
                    "the recipient has no domain after its last \"@\"",
                ));
            }
        };
        let sender_domain = self
            .envelope
            .as_ref()
            .and_then(|envelope| match domain_of(envelope) {
                AddressDomain::Name(name) => Some(name),
                _ => None,
            });
        let max_deliver_time = match self.max_deliver_time.as_deref() {
            None | Some("") => None,
            Some(text) => Some(parse_mailerq_time(text).ok_or_else(|| {
                Invalid::new(
                    Reason::WrongType(Field::MaxDeliverTime),
                    format!("expected \"YYYY-MM-DD HH:MM:SS\" (UTC), found {text:?}"),
                )
            })?),
        };
        let ips = self
            .ips
            .unwrap_or_default()
            .iter()
            .map(|ip| ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()))
            .collect();
        Ok(Event {
            recipient_domain,
            sender_domain,
            ips,
            pool: self.pool,
            tags: self.tags.unwrap_or_default(),
            max_deliver_time,
            max_attempts: self.max_attempts.unwrap_or(0),
            results: self.results,
            layout,
            recipient,
        })
    }
}

/// The domain of an address, borrowing from the input when the address does.
fn domain_of<'a>(address: &Cow<'a, str>) -> AddressDomain<'a> {
    match address {
        Cow::Borrowed(s) => AddressDomain::of(s),
        Cow::Owned(s) => match AddressDomain::of(s) {
            AddressDomain::Name(name) => AddressDomain::Name(Cow::Owned(name.into_owned())),
            AddressDomain::Literal => AddressDomain::Literal,
            AddressDomain::Missing => AddressDomain::Missing,
        },
    }
}

/// Parses MailerQ's `YYYY-MM-DD HH:MM:SS` (UTC) into Unix seconds.
pub fn parse_mailerq_time(text: &str) -> Option<i64> {
    fixed_layout_time(text.as_bytes())
        .or_else(|| NaiveDateTime::parse_from_str(text, MAILERQ_TIME_FORMAT).ok())
        .map(|t| t.and_utc().timestamp())
}

/// Writes `t` in MailerQ's layout (`YYYY-MM-DD HH:MM:SS`, UTC) as
/// chrono's `format(MAILERQ_TIME_FORMAT)` does, without its format
/// interpreter; years outside 0..=9999 go chrono's way.
pub fn format_mailerq_time(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike as _, Timelike as _};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.format(MAILERQ_TIME_FORMAT).to_string();
    }
    let mut out = String::with_capacity(19);
    push_digits(&mut out, year as u32, 4, Some('-'));
    push_digits(&mut out, t.month(), 2, Some('-'));
    push_digits(&mut out, t.day(), 2, Some(' '));
    push_digits(&mut out, t.hour(), 2, Some(':'));
    push_digits(&mut out, t.minute(), 2, Some(':'));
    // A leap second (60) is written as chrono writes it.
    let second = t.second() + t.nanosecond() / 1_000_000_000;
    push_digits(&mut out, second, 2, None);
    out
}

/// The last `digits` decimal digits of `n`, zero-padded, then `then`.
fn push_digits(out: &mut String, n: u32, digits: u32, then: Option<char>) {
    for place in (0..digits).rev() {
        let digit = (n / 10u32.pow(place)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
    out.extend(then);
}

/// The common exact layout `YYYY-MM-DD HH:MM:SS` without chrono's format
/// interpreter (a measurable share of an event's parse); anything else goes
/// the general way.
fn fixed_layout_time(b: &[u8]) -> Option<NaiveDateTime> {
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    chrono::NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)?.and_hms_opt(
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
    )
}

/// Reads the top-level value. serde_json refuses, as a syntax error, a number
/// beyond f64's range (`1e400`) wherever it converts one, though it is JSON.
/// The fast way converts every value of the table as it goes; the `careful`
/// way, for a text the fast way refused, takes each as raw text first, so
/// that such a number is just the wrong type, and only names what a
/// top-level value other than an object is.
fn parse_top(text: &str, careful: bool) -> Result<Top<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let first = text.trim_start_matches(JSON_WHITESPACE).bytes().next();
    let top = match first {
        Some(first) if careful && first != b'{' => {
            <IgnoredAny as de::Deserialize>::deserialize(&mut de)?;
            Top::NotObject(match first {
                b'"' => "a string",
                b'[' => "an array",
                b't' | b'f' => "a boolean",
                b'n' => "null",
                _ => "a number",
            })
        }
        _ => de.deserialize_any(TopVisitor { careful, text })?,
    };
    de.end()?;
    Ok(top)
}

/// What a raw JSON value other than an array or `null` is, named as the
/// careful reading names it (a string is not decoded, so one with a lone
/// surrogate escape is still "a string").
fn kind_of(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b't' | b'f') => "a boolean",
        _ if raw.contains(['.', 'e', 'E']) => "a non-integer number",
        _ => "a number",
    }
}

fn starts_number(json: &str) -> bool {
    json.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

struct TopVisitor<'t> {
    careful: bool,
    /// The whole event, for the offsets of [`Layout`].
    text: &'t str,
}

impl TopVisitor<'_> {
    /// Where `part`, a slice of the event's text, starts in it.
    fn offset(&self, part: &str) -> usize {
        part.as_ptr() as usize - self.text.as_ptr() as usize
    }

    /// The span of a member whose value is `value`: from its key's opening
    /// quote. The key decodes to a name without a quote, so its raw text
    /// holds none either (an escaped one would decode to a quote).
    fn member(&self, value: &str) -> Option<Range<usize>> {
        let start = self.offset(value);
        let key = self.text[..start]
            .trim_end_matches(JSON_WHITESPACE)
            .strip_suffix(':')?
            .trim_end_matches(JSON_WHITESPACE)
            .strip_suffix('"')?;
        Some(key.rfind('"')?..start + value.len())
    }
}

const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

impl<'de> Visitor<'de> for TopVisitor<'de> {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let careful = self.careful;
        let mut fields = Box::<RawFields<'de>>::default();
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let Some(field) = Field::from_key(&key.0) else {
                match &*key.0 {
                    "mime" => {
                        let raw = map.next_value::<&RawValue>()?.get();
                        let first = fields.layout.mime.is_none();
                        fields.layout.mime = self.member(raw);
                        fields.no_layout |= !first || fields.layout.mime.is_none();
                    }
                    "keepmime" => {
                        fields.layout.keep_mime = map.next_value::<&RawValue>()?.get() == "true";
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                continue;
            };
            let index = field as usize;
            if fields.seen[index] {
                fields.fail(Invalid::new(
                    Reason::DuplicateKey(field),
                    format!("\"{}\" appears more than once", field.name()),
                ));
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            fields.seen[index] = true;
            let wrong = |found: &str, expected: &str| {
                Invalid::new(
                    Reason::WrongType(field),
                    format!("expected {expected}, found {found}"),
                )
            };
            match field {
                Field::Recipient | Field::Envelope | Field::Pool | Field::MaxDeliverTime => {
                    match map.next_value_seed(LenientSeed::new(careful))? {
                        Lenient::Null => {}
                        Lenient::Wrong(found) => fields.fail(wrong(found, "a string")),
                        Lenient::Ok(CowStr(s)) => match field {
                            Field::Recipient => fields.recipient = Some(s),
                            Field::Envelope => fields.envelope = Some(s),
                            Field::Pool => fields.pool = Some(s),
                            _ => fields.max_deliver_time = Some(s),
                        },
                    }
                }
                Field::Ips | Field::Tags => match map.next_value_seed(LenientSeed::new(careful))? {
                    Lenient::Null => {}
                    Lenient::Wrong(found) => fields.fail(wrong(found, "an array of strings")),
                    Lenient::Ok(StrList(list)) => {
                        if field == Field::Ips {
                            fields.ips = Some(list.into_iter().collect());
                        } else {
                            fields.tags = Some(list);
                        }
                    }
                },
                Field::MaxAttempts => match map.next_value_seed(LenientSeed::new(careful))? {
                    Lenient::Null => {}
                    Lenient::Wrong(found) => fields.fail(wrong(found, "an integer of at least 0")),
                    Lenient::Ok(n) => fields.max_attempts = Some(n),
                },
                Field::Results => {
                    // Only its type is checked here; its entries are counted
                    // if a decision needs them.
                    let raw = map.next_value::<&RawValue>()?.get();
                    let start = self.offset(raw);
                    if raw.starts_with('[') || raw == "null" {
                        fields.layout.results = Some(start..start + raw.len());
                        fields.results = raw.starts_with('[').then_some(raw);
                    } else {
                        fields.fail(wrong(kind_of(raw), "an array"));
                    }
                }
            }
        }
        Ok(Top::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::NotObject("an array"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a string"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Top::NotObject("a number"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Top::NotObject("null"))
    }
}

/// A value of the expected type, `null`, or the name of what was found
/// instead. Wrong values are consumed whole, so parsing carries on and a
/// later syntax error still wins as `not-json`.
enum Lenient<T> {
    Ok(T),
    Null,
    Wrong(&'static str),
}

/// A string that borrows from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

/// An array of strings; any other element makes it the wrong type.
struct StrList<'a>(SmallVec<[Cow<'a, str>; 4]>);

/// An array's length; its elements are skipped.
struct Count(u64);

/// What a lenient visitor expects; the shared type-mismatch arms below
/// report everything else as `Wrong`.
trait Expect<'de>: Sized {
    fn string(_: Cow<'de, str>) -> Option<Self> {
        None
    }
    fn unsigned(_: u64) -> Option<Self> {
        None
    }
    fn seq<A: SeqAccess<'de>>(
        seq: A,
        _careful: bool,
    ) -> Result<Result<Self, &'static str>, A::Error> {
        drain(seq)?;
        Ok(Err("an array"))
    }
}

fn drain<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de> Expect<'de> for CowStr<'de> {
    fn string(s: Cow<'de, str>) -> Option<Self> {
        Some(CowStr(s))
    }
}

impl<'de> Expect<'de> for u64 {
    fn unsigned(n: u64) -> Option<Self> {
        Some(n)
    }
}

impl<'de> Expect<'de> for Count {
    fn seq<A: SeqAccess<'de>>(
        mut seq: A,
        _careful: bool,
    ) -> Result<Result<Self, &'static str>, A::Error> {
        let mut n = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Ok(Count(n)))
    }
}

impl<'de> Expect<'de> for StrList<'de> {
    fn seq<A: SeqAccess<'de>>(
        mut seq: A,
        careful: bool,
    ) -> Result<Result<Self, &'static str>, A::Error> {
        let mut list = SmallVec::new();
        let mut wrong = false;
        while let Some(item) = seq.next_element_seed(LenientSeed::new(careful))? {
            match item {
                Lenient::Ok(CowStr(s)) if !wrong => list.push(s),
                _ => wrong = true,
            }
        }
        Ok(if wrong {
            Err("an array with a non-string element")
        } else {
            Ok(StrList(list))
        })
    }
}

/// Reads a [`Lenient`] value, the fast or the careful way (see [`parse_top`]).
struct LenientSeed<T> {
    careful: bool,
    expect: std::marker::PhantomData<T>,
}

impl<T> LenientSeed<T> {
    fn new(careful: bool) -> Self {
        LenientSeed {
            careful,
            expect: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Expect<'de>> DeserializeSeed<'de> for LenientSeed<T> {
    type Value = Lenient<T>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Lenient<T>, D::Error> {
        let visitor = LenientVisitor(self);
        if !visitor.0.careful {
            return d.deserialize_any(visitor);
        }
        let raw = <&'de RawValue as de::Deserialize>::deserialize(d)?.get();
        if starts_number(raw) {
            return Ok(match raw.parse::<u64>().ok().and_then(T::unsigned) {
                Some(value) => Lenient::Ok(value),
                None if raw.contains(['.', 'e', 'E']) => Lenient::Wrong("a non-integer number"),
                None => Lenient::Wrong("a number"),
            });
        }
        serde_json::Deserializer::from_str(raw)
            .deserialize_any(visitor)
            .map_err(de::Error::custom)
    }
}

struct LenientVisitor<T>(LenientSeed<T>);

impl<T> LenientVisitor<T> {
    fn found(value: Option<T>, kind: &'static str) -> Lenient<T> {
        match value {
            Some(v) => Lenient::Ok(v),
            None => Lenient::Wrong(kind),
        }
    }
}

impl<'de, T: Expect<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = Lenient<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Self::found(T::string(Cow::Borrowed(s)), "a string"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Self::found(T::string(Cow::Owned(s.to_owned())), "a string"))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Self::found(T::string(Cow::Owned(s)), "a string"))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Self::found(T::unsigned(n), "a number"))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        let value = u64::try_from(n).ok().and_then(T::unsigned);
        Ok(Self::found(value, "a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Lenient::Wrong("a non-integer number"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Lenient::Wrong("a boolean"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Ok(match T::seq(seq, self.0.careful)? {
            Ok(v) => Lenient::Ok(v),
            Err(kind) => Lenient::Wrong(kind),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Lenient::Wrong("an object"))
    }
}

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_another_type_is_named_and_entries_are_counted_on_demand() {
        for (value, found) in [
            (r#""[]""#, "a string"),
            ("1", "a number"),
            ("123456789012345678901234567890", "a number"),
            ("1e400", "a non-integer number"),
            ("true", "a boolean"),
            ("false", "a boolean"),
            ("-1", "a number"),
            (r#"{"a":[]}"#, "an object"),
            // Valid JSON whatever the escape means: not an array.
            (r#""\ud800""#, "a string"),
        ] {
            let text = format!(r#"{{"recipient":"a@b.c","results":{value}}}"#);
            let invalid = Event::parse(text.as_bytes(), usize::MAX).unwrap_err();
            assert_eq!(invalid.reason, Reason::WrongType(Field::Results), "{text}");
            assert_eq!(
                invalid.detail,
                format!("expected an array, found {found}"),
                "{text}"
            );
        }
        for (value, attempts) in [
            ("null", 0),
            ("[]", 0),
            ("[ [1,[2]], {\"a\":[3,4]}, \"x,y\" ]", 3),
        ] {
            let text = format!(r#"{{"recipient":"a@b.c","results":{value}}}"#);
            let event = Event::parse(text.as_bytes(), usize::MAX).unwrap();
            assert_eq!(event.attempts(), attempts, "{text}");
        }
    }

    #[test]
    fn the_layout_spans_mime_results_and_keepmime_at_the_top_level() {
        let text = r#"{"x":{"mime":1,"results":[]}, "mi\u006de" : "m\"", "keepmime":true,"recipient":"a@b.c","results": [1,2] ,"keepmime":1}"#;
        let event = Event::parse(text.as_bytes(), usize::MAX).unwrap();
        let layout = event.layout.clone().expect("one mime");
        assert_eq!(&text[layout.mime.unwrap()], r#""mi\u006de" : "m\"""#);
        assert_eq!(&text[layout.results.unwrap()], "[1,2]");
        assert!(!layout.keep_mime, "the last keepmime counts");
        assert_eq!(event.attempts(), 2);

        let event = Event::parse(br#"{"recipient":"a@b.c","keepmime":true}"#, usize::MAX).unwrap();
        assert_eq!(
            event.layout,
            Some(Layout {
                mime: None,
                results: None,
                keep_mime: true
            })
        );
        let event =
            Event::parse(br#"{"recipient":"a@b.c","mime":1,"mime":2}"#, usize::MAX).unwrap();
        assert_eq!(event.layout, None, "two mimes: no single span to drop");
        // The careful reading finds the same spans.
        let text = r#"{"recipient":"a@b.c","n":1e400,"mime":"m","results":null}"#;
        let layout = Event::parse(text.as_bytes(), usize::MAX)
            .unwrap()
            .layout
            .unwrap();
        assert_eq!(&text[layout.mime.unwrap()], r#""mime":"m""#);
        assert_eq!(&text[layout.results.unwrap()], "null");
    }

    #[test]
    fn mailerq_time_is_written_as_chrono_writes_it() {
        let mut times: Vec<chrono::DateTime<chrono::Utc>> = [
            "0000-01-01T00:00:00Z",
            "0999-12-31T23:59:59.999Z",
            "1970-01-01T00:00:00Z",
            "2026-11-27T12:00:00.987654Z",
            "2016-12-31T23:59:60.5Z",
            "9999-12-31T23:59:59Z",
        ]
        .iter()
        .map(|t| t.parse().expect("valid"))
        .collect();
        times.push(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        times.push(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        times.push(
            chrono::NaiveDate::from_ymd_opt(-1, 3, 4)
                .and_then(|d| d.and_hms_opt(5, 6, 7))
                .expect("valid")
                .and_utc(),
        );
        let mut seconds = -62_167_219_200_i64; // 0000-01-01
        while seconds < 253_402_300_800 {
            times.push(chrono::DateTime::from_timestamp(seconds, 0).expect("in range"));
            seconds += 987_654_321 + seconds.rem_euclid(86_399);
        }
        for t in times {
            assert_eq!(
                format_mailerq_time(t),
                t.format(MAILERQ_TIME_FORMAT).to_string(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn every_field_is_found_by_its_name_and_nothing_else_is() {
        for field in Field::ALL {
            assert_eq!(Field::from_key(field.name()), Some(field));
        }
        for other in ["", "Recipient", "recipient ", "mime", "result", "ip"] {
            assert_eq!(Field::from_key(other), None, "{other:?}");
        }
    }
}
