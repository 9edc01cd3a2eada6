//! Forced-error rules: the model, loading from files, and the indexed
//! [`RuleSet`] whose [`RuleSet::decide`] is the one decision every entry point
//! (pipeline, `eval`, REST API, demo) calls.

mod index;
pub mod load;
mod raw;
pub(crate) mod validate;

use std::cmp::Reverse;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::event::Event;

pub use index::{Decision, Outcome, RuleSet};
pub use load::{Diagnostic, LoadError, load_dir};
pub use raw::{Key, Node, Value, line_col};
pub use validate::{FieldError, Origin, validate_rule};

/// One forced error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub id: String,
    pub source: Source,
    pub code: u16,
    pub status: Option<String>,
    pub description: String,
    #[serde(flatten)]
    pub conditions: Conditions,
    pub match_all: bool,
    pub mode: Mode,
    pub not_before: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    /// Who created an API rule (the token's name); `None` for file rules.
    pub created_by: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// The match conditions; an absent one matches anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Conditions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mta: Option<Vec<IpNet>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mta_match: Option<MtaMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<StrSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_domain: Option<DomainSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<StrSet>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaMatch {
    /// The event has at least one IP, and every one is in the ranges.
    #[default]
    All,
    /// At least one of the event's IPs is in the ranges.
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Matches are counted, logged and reported, but the event is forwarded.
    Shadow,
}

/// Where a rule comes from: serialised as `file:<path>` or `api`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// Path relative to `rules_dir`, with `/` separators.
    File(String),
    Api,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "file:{path}"),
            Source::Api => f.write_str("api"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether a rule is in force at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleState {
    Scheduled,
    Active,
    Expired,
}

/// A sorted, de-duplicated set of strings, searched by bisection so that a
/// rule with thousands of values costs a few comparisons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrSet(Box<[Box<str>]>);

impl StrSet {
    pub fn new(items: impl IntoIterator<Item = String>) -> Self {
        let mut items: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        items.sort_unstable();
        items.dedup();
        StrSet(items.into_boxed_slice())
    }

    pub fn contains(&self, value: &str) -> bool {
        self.0.binary_search_by(|item| (**item).cmp(value)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for StrSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Domain patterns: exact names, and `*.suffix` wildcards that match
/// subdomains of the suffix but not the suffix itself. Stored normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSet {
    pub exact: StrSet,
    pub suffixes: StrSet,
}

impl DomainSet {
    pub fn matches(&self, domain: &str) -> bool {
        if self.exact.contains(domain) {
            return true;
        }
        if self.suffixes.is_empty() {
            return false;
        }
        parent_suffixes(domain).any(|suffix| self.suffixes.contains(suffix))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.suffixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The patterns as written in normalised form (`x`, `*.x`).
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.exact
            .iter()
            .map(str::to_owned)
            .chain(self.suffixes.iter().map(|s| format!("*.{s}")))
    }
}

impl Serialize for DomainSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.patterns())
    }
}

/// Every proper parent of a domain: `a.b.c` gives `b.c`, then `c`.
pub fn parent_suffixes(domain: &str) -> impl Iterator<Item = &str> {
    domain
        .char_indices()
        .filter(|&(_, c)| c == '.')
        .map(move |(i, _)| &domain[i + 1..])
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
impl Rule {
    /// An API rule with no conditions, for unit tests.
    pub(crate) fn for_test(id: &str, code: u16, mode: Mode) -> Rule {
        Rule {
            id: id.into(),
            source: Source::Api,
            code,
            status: None,
            description: "test".into(),
            conditions: Conditions::default(),
            match_all: true,
            mode,
            not_before: None,
            expires: None,
            created_by: None,
            created_at: None,
        }
    }
}

impl Rule {
    /// Condition keys present (`mta`, `pool`, `domain`, `sender_domain`,
    /// `tags`), the second precedence step.
    pub fn condition_count(&self) -> usize {
        let c = &self.conditions;
        usize::from(c.mta.is_some())
            + usize::from(c.pool.is_some())
            + usize::from(c.domain.is_some())
            + usize::from(c.sender_domain.is_some())
            + usize::from(c.tags.is_some())
    }

    /// Sort key for precedence: smaller wins. 5xx before 4xx, then more
    /// condition keys, then the smaller id in byte order.
    pub fn precedence_key(&self) -> (bool, Reverse<usize>, &[u8]) {
        (
            self.code < 500,
            Reverse(self.condition_count()),
            self.id.as_bytes(),
        )
    }

    pub fn state(&self, now: DateTime<Utc>) -> RuleState {
        if self.not_before.is_some_and(|t| now < t) {
            RuleState::Scheduled
        } else if self.expires.is_some_and(|t| now >= t) {
            RuleState::Expired
        } else {
            RuleState::Active
        }
    }

    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.state(now) == RuleState::Active
    }

    /// Whether every present condition holds for the event. Time windows
    /// are not checked here; see [`Rule::is_active`].
    pub fn matches(&self, event: &Event<'_>) -> bool {
        let c = &self.conditions;
        if let Some(nets) = &c.mta {
            let in_ranges =
                |ip: &Option<IpAddr>| ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)));
            let ok = match c.mta_match.unwrap_or_default() {
                MtaMatch::All => !event.ips.is_empty() && event.ips.iter().all(in_ranges),
                MtaMatch::Any => event.ips.iter().any(in_ranges),
            };
            if !ok {
                return false;
            }
        }
        if let Some(pools) = &c.pool
            && !event.pool.as_deref().is_some_and(|p| pools.contains(p))
        {
            return false;
        }
        if let Some(domains) = &c.domain
            && !event
                .recipient_domain
                .as_deref()
                .is_some_and(|d| domains.matches(d))
        {
            return false;
        }
        if let Some(domains) = &c.sender_domain
            && !event
                .sender_domain
                .as_deref()
                .is_some_and(|d| domains.matches(d))
        {
            return false;
        }
        if let Some(tags) = &c.tags
            && !tags.iter().all(|t| event.tags.iter().any(|et| et == t))
        {
            return false;
        }
        true
    }
}
