//! Turns one rule's raw table into a [`Rule`], or into every error it has.
//! Shared by rule files and (with [`Origin::Api`]) the REST API.

use std::ops::Range;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, Utc};
use ipnet::IpNet;

use super::raw::{Key, Node, Value};
use super::{Conditions, DomainSet, Mode, MtaMatch, Rule, Source, StrSet};
use crate::domain;

/// Every key a rule may have.
pub const RULE_KEYS: &[&str] = &[
    "id",
    "code",
    "status",
    "description",
    "mta",
    "mta_match",
    "pool",
    "domain",
    "sender_domain",
    "tags",
    "match_all",
    "mode",
    "not_before",
    "expires",
];

pub const MAX_ID_LEN: usize = 128;
pub const MAX_DESCRIPTION_CHARS: usize = 512;
/// Ids with this prefix are derived by the API; files may not use them.
pub const API_ID_PREFIX: &str = "api-";

/// Who is asking: files may not use the `api-` id prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    File,
    Api,
}

/// One problem with one rule: where it is and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The key at fault, when there is one.
    pub field: Option<String>,
    pub span: Range<usize>,
    pub message: String,
}

impl FieldError {
    fn at(field: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.to_owned()),
            span,
            message: message.into(),
        }
    }
}

/// Validates one rule table. `rule_span` locates the rule as a whole, for
/// errors that belong to no single key.
pub fn validate_rule(
    table: &[(Key, Node)],
    rule_span: Range<usize>,
    origin: Origin,
    source: Source,
) -> Result<Rule, Vec<FieldError>> {
    // `null` means absent (JSON rule files and API bodies may write it).
    let table: Vec<(Key, Node)> = table
        .iter()
        .filter(|(_, node)| node.value != Value::Null)
        .cloned()
        .collect();
    let table = table.as_slice();
    let mut v = Validator {
        errors: Vec::new(),
        origin,
    };
    let mut seen: Vec<&str> = Vec::new();
    let get = |name: &str| {
        table
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, n)| (k, n))
    };

    for (key, _) in table {
        if !RULE_KEYS.contains(&key.name.as_str()) {
            let hint = closest(&key.name, RULE_KEYS)
                .map(|k| format!(" (did you mean \"{k}\"?)"))
                .unwrap_or_default();
            v.errors.push(FieldError::at(
                &key.name,
                key.span.clone(),
                format!("unknown key \"{}\"{hint}", key.name),
            ));
        } else if seen.contains(&key.name.as_str()) {
            v.errors.push(FieldError::at(
                &key.name,
                key.span.clone(),
                format!("duplicate key \"{}\"", key.name),
            ));
        } else {
            seen.push(&key.name);
        }
    }

    let id = match get("id") {
        Some((_, node)) => v.id(node),
        None => {
            v.missing("id", &rule_span);
            None
        }
    };
    let code = match get("code") {
        Some((_, node)) => v.code(node),
        None => {
            v.missing("code", &rule_span);
            None
        }
    };
    let status = get("status").and_then(|(_, node)| v.status(node, code));
    let description = match get("description") {
        Some((_, node)) => v.description(node),
        None => {
            v.missing("description", &rule_span);
            None
        }
    };

    let mta = get("mta").and_then(|(_, node)| v.mta(node));
    let mta_match = match get("mta_match") {
        Some((key, node)) => {
            let parsed = v.one_of(
                node,
                "mta_match",
                &[("all", MtaMatch::All), ("any", MtaMatch::Any)],
            );
            if get("mta").is_none() {
                v.errors.push(FieldError::at(
                    "mta_match",
                    key.span.clone(),
                    "\"mta_match\" has no effect without \"mta\"; add \"mta\" or remove it",
                ));
            }
            parsed
        }
        None => mta.as_ref().map(|_| MtaMatch::All),
    };
    let pool = get("pool").and_then(|(_, node)| v.strings(node, "pool").map(StrSet::new));
    let domain = get("domain").and_then(|(_, node)| v.domains(node, "domain"));
    let sender_domain = get("sender_domain").and_then(|(_, node)| v.domains(node, "sender_domain"));
    let tags = get("tags").and_then(|(_, node)| v.strings(node, "tags").map(StrSet::new));
    let match_all = match get("match_all") {
        Some((_, node)) => match &node.value {
            Value::Bool(b) => *b,
            other => {
                v.type_error("match_all", node, "true or false", other);
                false
            }
        },
        None => false,
    };
    let mode = get("mode")
        .and_then(|(_, node)| {
            v.one_of(
                node,
                "mode",
                &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
            )
        })
        .unwrap_or_default();
    let not_before = get("not_before").and_then(|(_, node)| v.instant(node, "not_before"));
    let expires = get("expires").and_then(|(_, node)| v.instant(node, "expires"));
    if let (Some(nb), Some(exp)) = (not_before, expires)
        && exp <= nb
    {
        let span = get("expires")
            .map(|(k, _)| k.span.clone())
            .unwrap_or_default();
        v.errors.push(FieldError::at(
            "expires",
            span,
            format!(
                "\"expires\" ({}) must be after \"not_before\" ({})",
                exp.to_rfc3339(),
                nb.to_rfc3339()
            ),
        ));
    }

    let conditions = Conditions {
        mta,
        mta_match,
        pool,
        domain,
        sender_domain,
        tags,
    };
    let has_condition = ["mta", "pool", "domain", "sender_domain", "tags"]
        .iter()
        .any(|k| get(k).is_some());
    // An unknown key is most likely a misspelt condition: report the typo,
    // not the "no condition" it causes.
    let has_unknown_key = table
        .iter()
        .any(|(k, _)| !RULE_KEYS.contains(&k.name.as_str()));
    if !match_all {
        if !has_condition && !has_unknown_key {
            v.errors.push(FieldError {
                field: None,
                span: rule_span.clone(),
                message: "rule has no condition, so it would stop all traffic; add a condition \
                          (mta, pool, domain, sender_domain, tags) or set match_all = true"
                    .into(),
            });
        } else if let Some(nets) = &conditions.mta
            && nets.iter().any(|n| n.prefix_len() == 0)
        {
            let span = get("mta").map(|(_, n)| n.span.clone()).unwrap_or_default();
            v.errors.push(FieldError::at(
                "mta",
                span,
                "a /0 range matches every IP and could stop all traffic; narrow it or set match_all = true",
            ));
        }
    }

    if !v.errors.is_empty() {
        v.errors.sort_by_key(|e| e.span.start);
        return Err(v.errors);
    }
    Ok(Rule {
        id: id.expect("validated"),
        source,
        code: code.expect("validated"),
        status,
        description: description.expect("validated"),
        conditions,
        match_all,
        mode,
        not_before,
        expires,
        created_by: None,
        created_at: None,
    })
}

struct Validator {
    errors: Vec<FieldError>,
    origin: Origin,
}

impl Validator {
    fn missing(&mut self, field: &str, rule_span: &Range<usize>) {
        self.errors.push(FieldError::at(
            field,
            rule_span.clone(),
            format!("missing required key \"{field}\""),
        ));
    }

    fn type_error(&mut self, field: &str, node: &Node, expected: &str, found: &Value) {
        self.errors.push(FieldError::at(
            field,
            node.span.clone(),
            format!(
                "\"{field}\" must be {expected}, found {}",
                found.type_name()
            ),
        ));
    }

    fn id(&mut self, node: &Node) -> Option<String> {
        let Value::Str(id) = &node.value else {
            self.type_error("id", node, "a string", &node.value);
            return None;
        };
        let valid_chars = id.bytes().all(is_id_byte);
        if id.is_empty() || id.len() > MAX_ID_LEN || !valid_chars {
            self.errors.push(FieldError::at(
                "id",
                node.span.clone(),
                format!("id {id:?} must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -"),
            ));
            return None;
        }
        if self.origin == Origin::File && id.starts_with(API_ID_PREFIX) {
            self.errors.push(FieldError::at(
                "id",
                node.span.clone(),
                format!("id {id:?} uses the \"{API_ID_PREFIX}\" prefix, which is reserved for rules created through the API"),
            ));
            return None;
        }
        Some(id.clone())
    }

    fn code(&mut self, node: &Node) -> Option<u16> {
        match &node.value {
            Value::Int(n) if (400..=599).contains(n) => Some(*n as u16),
            Value::Int(n) => {
                self.errors.push(FieldError::at(
                    "code",
                    node.span.clone(),
                    format!("code {n} is outside 400..=599 (4xx defers, 5xx fails)"),
                ));
                None
            }
            other => {
                self.type_error("code", node, "an integer from 400 to 599", other);
                None
            }
        }
    }

    fn status(&mut self, node: &Node, code: Option<u16>) -> Option<String> {
        let Value::Str(status) = &node.value else {
            self.type_error("status", node, "a string such as \"5.7.1\"", &node.value);
            return None;
        };
        let parts: Vec<&str> = status.split('.').collect();
        let well_formed = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed {
            self.errors.push(FieldError::at(
                "status",
                node.span.clone(),
                format!("status {status:?} is not an enhanced status code such as \"5.7.1\""),
            ));
            return None;
        }
        if let Some(code) = code {
            let class = (code / 100).to_string();
            if parts[0] != class {
                self.errors.push(FieldError::at(
                    "status",
                    node.span.clone(),
                    format!(
                        "status {status:?} has class {} but code {code} has class {class}",
                        parts[0]
                    ),
                ));
                return None;
            }
        }
        Some(status.clone())
    }

    fn description(&mut self, node: &Node) -> Option<String> {
        let Value::Str(text) = &node.value else {
            self.type_error("description", node, "a string", &node.value);
            return None;
        };
        let chars = text.chars().count();
        if chars == 0 || chars > MAX_DESCRIPTION_CHARS {
            self.errors.push(FieldError::at(
                "description",
                node.span.clone(),
                format!(
                    "description must be 1 to {MAX_DESCRIPTION_CHARS} characters, found {chars}"
                ),
            ));
            return None;
        }
        if text.chars().any(char::is_control) {
            self.errors.push(FieldError::at(
                "description",
                node.span.clone(),
                "description must not contain control characters (newlines, tabs, ...)",
            ));
            return None;
        }
        Some(text.clone())
    }

    fn one_of<T: Copy>(&mut self, node: &Node, field: &str, choices: &[(&str, T)]) -> Option<T> {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let expected = names.join(" or ");
        match &node.value {
            Value::Str(s) => match choices.iter().find(|(n, _)| n == s) {
                Some((_, value)) => Some(*value),
                None => {
                    self.errors.push(FieldError::at(
                        field,
                        node.span.clone(),
                        format!("\"{field}\" must be {expected}, found {s:?}"),
                    ));
                    None
                }
            },
            other => {
                self.type_error(field, node, &expected, other);
                None
            }
        }
    }

    /// A string or a non-empty list of non-empty strings.
    fn strings(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        let items: Vec<&Node> = match &node.value {
            Value::Str(_) => vec![node],
            Value::Array(items) if items.is_empty() => {
                self.errors.push(FieldError::at(
                    field,
                    node.span.clone(),
                    format!("\"{field}\" is an empty list; remove the key to match anything, or list at least one value"),
                ));
                return None;
            }
            Value::Array(items) => items.iter().collect(),
            other => {
                self.type_error(field, node, "a string or a list of strings", other);
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match &item.value {
                Value::Str(s) if s.trim().is_empty() => self.errors.push(FieldError::at(
                    field,
                    item.span.clone(),
                    format!("\"{field}\" value {} is empty", i + 1),
                )),
                Value::Str(s) => out.push(s.clone()),
                other => self.errors.push(FieldError::at(
                    field,
                    item.span.clone(),
                    format!(
                        "\"{field}\" value {} must be a string, found {}",
                        i + 1,
                        other.type_name()
                    ),
                )),
            }
        }
        Some(out)
    }

    fn mta(&mut self, node: &Node) -> Option<Vec<IpNet>> {
        let values = self.strings(node, "mta")?;
        let items = element_spans(node);
        let mut nets = Vec::with_capacity(values.len());
        for (value, span) in values.iter().zip(items) {
            match parse_net(value) {
                Ok(net) => nets.push(net),
                Err(message) => self.errors.push(FieldError::at("mta", span, message)),
            }
        }
        nets.sort();
        nets.dedup();
        Some(nets)
    }

    fn domains(&mut self, node: &Node, field: &str) -> Option<DomainSet> {
        let values = self.strings(node, field)?;
        let items = element_spans(node);
        let mut exact = Vec::new();
        let mut suffixes = Vec::new();
        for (value, span) in values.iter().zip(items) {
            match parse_domain_pattern(value) {
                Ok(DomainPattern::Exact(d)) => exact.push(d),
                Ok(DomainPattern::Suffix(d)) => suffixes.push(d),
                Err(message) => self.errors.push(FieldError::at(
                    field,
                    span,
                    format!("\"{field}\": {message}"),
                )),
            }
        }
        Some(DomainSet {
            exact: StrSet::new(exact),
            suffixes: StrSet::new(suffixes),
        })
    }

    fn instant(&mut self, node: &Node, field: &str) -> Option<DateTime<Utc>> {
        let local = || {
            format!(
                "\"{field}\" is a local time without offset; add Z or an offset such as +01:00 (e.g. 2026-12-01T08:00:00Z)"
            )
        };
        match &node.value {
            Value::Datetime(dt) => match (dt.date, dt.time, dt.offset) {
                (Some(date), Some(time), Some(offset)) => {
                    let offset_secs = match offset {
                        toml::value::Offset::Z => 0,
                        toml::value::Offset::Custom { minutes } => i32::from(minutes) * 60,
                    };
                    let naive = NaiveDate::from_ymd_opt(
                        date.year.into(),
                        date.month.into(),
                        date.day.into(),
                    )
                    .zip(NaiveTime::from_hms_nano_opt(
                        time.hour.into(),
                        time.minute.into(),
                        time.second.unwrap_or(0).into(),
                        time.nanosecond.unwrap_or(0),
                    ))
                    .map(|(d, t)| d.and_time(t));
                    let offset = FixedOffset::east_opt(offset_secs);
                    match (naive, offset) {
                        (Some(naive), Some(offset)) => naive
                            .and_local_timezone(offset)
                            .single()
                            .map(|t| t.with_timezone(&Utc)),
                        _ => {
                            self.errors.push(FieldError::at(
                                field,
                                node.span.clone(),
                                format!("\"{field}\" is not a valid date-time"),
                            ));
                            None
                        }
                    }
                }
                _ => {
                    self.errors
                        .push(FieldError::at(field, node.span.clone(), local()));
                    None
                }
            },
            Value::Str(s) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    let message = if chrono::NaiveDateTime::from_str(s).is_ok() {
                        local()
                    } else {
                        format!(
                            "\"{field}\" value {s:?} is not an RFC 3339 date-time such as 2026-12-01T08:00:00Z"
                        )
                    };
                    self.errors
                        .push(FieldError::at(field, node.span.clone(), message));
                    None
                }
            },
            other => {
                self.type_error(field, node, "a date-time with offset", other);
                None
            }
        }
    }
}

fn element_spans(node: &Node) -> Vec<Range<usize>> {
    match &node.value {
        Value::Array(items) => items.iter().map(|n| n.span.clone()).collect(),
        _ => vec![node.span.clone()],
    }
}

/// An IP address (a /32 or /128) or a CIDR range without host bits.
pub fn parse_net(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    if let Ok(ip) = value.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    match value.parse::<IpNet>() {
        Ok(net) if net.network() != net.addr() => Err(format!(
            "\"{value}\" has host bits set; did you mean \"{}\"?",
            net.trunc()
        )),
        Ok(net) => Ok(canonical_net(net)),
        Err(_) => Err(format!(
            "\"{value}\" is not an IP address or CIDR range (e.g. 192.0.2.10, 198.51.100.0/24, 2001:db8::/32)"
        )),
    }
}

/// IPv4-mapped IPv6 ranges become IPv4, since events' IPs are canonicalised too.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(v4.into(), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

pub enum DomainPattern {
    Exact(String),
    Suffix(String),
}

/// `example.com` or `*.example.com`, normalised like event domains.
pub fn parse_domain_pattern(value: &str) -> Result<DomainPattern, String> {
    let (wildcard, name) = match value.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    if name.is_empty()
        || name.contains(['*', '@', '[', ']'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
        || name.starts_with('.')
    {
        return Err(format!(
            "{value:?} is not a domain or a \"*.\" wildcard (e.g. \"example.com\", \"*.example.com\")"
        ));
    }
    let normalized = domain::normalize(name).into_owned();
    if normalized.is_empty() {
        return Err(format!("{value:?} is not a domain"));
    }
    Ok(if wildcard {
        DomainPattern::Suffix(normalized)
    } else {
        DomainPattern::Exact(normalized)
    })
}

/// The closest valid name to a misspelt one, if any is close enough.
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Whether a byte may appear in a rule id (SPEC §2: `[A-Za-z0-9._-]`).
pub(crate) fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}
