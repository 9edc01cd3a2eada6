//! The immutable, indexed rule set and the decision.
//!
//! Each rule is filed under one *anchor*: the value of its most selective
//! condition (an exact domain, a wildcard suffix, one of its tags, a pool or
//! a CIDR). Deciding looks up the event's own values in those indexes, so it
//! touches only the few rules that could match, however many there are; the
//! candidates are then checked in full, in precedence order.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;

use super::{Mode, Rule, Source, parent_suffixes};
use crate::event::Event;

/// The three outcomes a decision can have (invalid events never get here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Forwarded,
    Failed,
    Deferred,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Failed => "failed",
            Outcome::Deferred => "deferred",
        }
    }
}

/// What to do with one event, borrowing from the rule set that decided it.
#[derive(Debug, Clone)]
pub struct Decision<'s> {
    pub outcome: Outcome,
    /// The winning enforce rule; `None` when forwarded.
    pub rule: Option<&'s Rule>,
    /// Every active rule that matched, enforce and shadow, in precedence order.
    pub matched: SmallVec<[&'s Rule; 2]>,
}

impl<'s> Decision<'s> {
    /// Ids of the matching shadow rules, sorted.
    pub fn shadow_ids(&self) -> Vec<&'s str> {
        let mut ids: Vec<&str> = self
            .matched
            .iter()
            .filter(|r| r.mode == Mode::Shadow)
            .map(|r| r.id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }
}

type Postings = FxHashMap<Box<str>, Vec<u32>>;

#[derive(Default)]
struct PrefixIndex {
    /// Prefix lengths present, longest first.
    lens: Vec<u8>,
    map: FxHashMap<(u8, u128), Vec<u32>>,
}

impl PrefixIndex {
    fn insert(&mut self, bits: u128, len: u8, width: u8, rule: u32) {
        let key = (len, mask(bits, len, width));
        self.map.entry(key).or_default().push(rule);
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    fn lookup(&self, bits: u128, width: u8, out: &mut SmallVec<[u32; 16]>) {
        for &len in &self.lens {
            if let Some(rules) = self.map.get(&(len, mask(bits, len, width))) {
                out.extend_from_slice(rules);
            }
        }
    }
}

fn mask(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let host = u32::from(width - len);
        (bits >> host) << host
    }
}

/// The anchor a rule is filed under.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Anchor {
    Domain,
    SenderDomain,
    Tags,
    Pool,
    Mta,
    None,
}

pub struct RuleSet {
    /// In precedence order: a rule's index is its rank.
    rules: Vec<Rule>,
    by_id: FxHashMap<Box<str>, u32>,
    domain_exact: Postings,
    domain_suffix: Postings,
    sender_exact: Postings,
    sender_suffix: Postings,
    pools: Postings,
    tags: Postings,
    mta_v4: PrefixIndex,
    mta_v6: PrefixIndex,
    /// The longest key of `domain_suffix` and `sender_suffix`: a domain's
    /// longer parents are not looked up, so that a name of many labels
    /// costs time linear in its length, not quadratic.
    longest_suffix: usize,
    /// `match_all` rules without conditions: candidates for every event.
    unanchored: Vec<u32>,
    hash: String,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("hash", &self.hash)
            .finish()
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new(Vec::new())
    }
}

impl RuleSet {
    /// Indexes rules whose ids are unique (loading guarantees it).
    pub fn new(mut rules: Vec<Rule>) -> RuleSet {
        rules.sort_by(|a, b| a.precedence_key().cmp(&b.precedence_key()));
        let hash = hash_rules(&rules);
        let mut set = RuleSet {
            by_id: FxHashMap::default(),
            domain_exact: Postings::default(),
            domain_suffix: Postings::default(),
            sender_exact: Postings::default(),
            sender_suffix: Postings::default(),
            pools: Postings::default(),
            tags: Postings::default(),
            mta_v4: PrefixIndex::default(),
            mta_v6: PrefixIndex::default(),
            longest_suffix: 0,
            unanchored: Vec::new(),
            hash,
            rules: Vec::new(),
        };

        // How many rules name each value: anchoring on rarer values keeps
        // candidate lists short.
        let mut freq: FxHashMap<(Anchor, String), u32> = FxHashMap::default();
        for rule in &rules {
            for (anchor, value) in anchor_values(rule) {
                *freq.entry((anchor, value)).or_default() += 1;
            }
        }
        for (index, rule) in rules.iter().enumerate() {
            let index = u32::try_from(index).expect("fewer than 2^32 rules");
            debug_assert!(
                !set.by_id.contains_key(rule.id.as_str()),
                "duplicate id {}",
                rule.id
            );
            set.by_id.insert(rule.id.clone().into_boxed_str(), index);
            set.file(rule, index, &freq);
        }
        set.longest_suffix = set
            .domain_suffix
            .keys()
            .chain(set.sender_suffix.keys())
            .map(|k| k.len())
            .max()
            .unwrap_or(0);
        set.rules = rules;
        set
    }

    fn file(&mut self, rule: &Rule, index: u32, freq: &FxHashMap<(Anchor, String), u32>) {
        let cost = |anchor: Anchor, values: &mut dyn Iterator<Item = String>| {
            values
                .map(|v| freq.get(&(anchor, v)).copied().unwrap_or(0))
                .max()
                .unwrap_or(u32::MAX)
        };
        let c = &rule.conditions;
        let mut best: Option<(u32, Anchor)> = None;
        let mut consider = |anchor: Anchor, cost: u32| {
            if best.is_none_or(|(b, _)| cost < b) {
                best = Some((cost, anchor));
            }
        };
        if let Some(d) = &c.domain {
            consider(Anchor::Domain, cost(Anchor::Domain, &mut d.patterns()));
        }
        if let Some(d) = &c.sender_domain {
            consider(
                Anchor::SenderDomain,
                cost(Anchor::SenderDomain, &mut d.patterns()),
            );
        }
        if let Some(tags) = &c.tags {
            // All-of: filing under the rarest tag is enough.
            let rarest = tags
                .iter()
                .map(|t| {
                    freq.get(&(Anchor::Tags, t.to_owned()))
                        .copied()
                        .unwrap_or(0)
                })
                .min()
                .unwrap_or(u32::MAX);
            consider(Anchor::Tags, rarest);
        }
        if let Some(pools) = &c.pool {
            consider(
                Anchor::Pool,
                cost(Anchor::Pool, &mut pools.iter().map(str::to_owned)),
            );
        }
        if let Some(nets) = &c.mta {
            consider(
                Anchor::Mta,
                cost(Anchor::Mta, &mut nets.iter().map(|n| n.to_string())),
            );
        }
        let push = |map: &mut Postings, key: &str| map.entry(key.into()).or_default().push(index);
        match best.map_or(Anchor::None, |(_, a)| a) {
            Anchor::Domain => {
                let d = c.domain.as_ref().expect("chosen anchor exists");
                d.exact.iter().for_each(|v| push(&mut self.domain_exact, v));
                d.suffixes
                    .iter()
                    .for_each(|v| push(&mut self.domain_suffix, v));
            }
            Anchor::SenderDomain => {
                let d = c.sender_domain.as_ref().expect("chosen anchor exists");
                d.exact.iter().for_each(|v| push(&mut self.sender_exact, v));
                d.suffixes
                    .iter()
                    .for_each(|v| push(&mut self.sender_suffix, v));
            }
            Anchor::Tags => {
                let tags = c.tags.as_ref().expect("chosen anchor exists");
                let rarest = tags
                    .iter()
                    .min_by_key(|t| {
                        freq.get(&(Anchor::Tags, (*t).to_owned()))
                            .copied()
                            .unwrap_or(0)
                    })
                    .expect("tag lists are never empty");
                push(&mut self.tags, rarest);
            }
            Anchor::Pool => {
                for pool in c.pool.as_ref().expect("chosen anchor exists").iter() {
                    push(&mut self.pools, pool);
                }
            }
            Anchor::Mta => {
                for net in c.mta.as_ref().expect("chosen anchor exists") {
                    match net {
                        ipnet::IpNet::V4(n) => self.mta_v4.insert(
                            u128::from(u32::from(n.network())),
                            n.prefix_len(),
                            32,
                            index,
                        ),
                        ipnet::IpNet::V6(n) => {
                            self.mta_v6
                                .insert(u128::from(n.network()), n.prefix_len(), 128, index)
                        }
                    }
                }
            }
            Anchor::None => self.unanchored.push(index),
        }
    }

    /// Decides one event at `now`. Pure: no I/O, no clock, no allocation
    /// unless an event matches more than a handful of candidate rules.
    pub fn decide<'s>(&'s self, event: &Event<'_>, now: DateTime<Utc>) -> Decision<'s> {
        let mut candidates: SmallVec<[u32; 16]> = SmallVec::new();
        if let Some(domain) = event.recipient_domain.as_deref() {
            lookup_domain(
                &self.domain_exact,
                &self.domain_suffix,
                self.longest_suffix,
                domain,
                &mut candidates,
            );
        }
        if let Some(domain) = event.sender_domain.as_deref() {
            lookup_domain(
                &self.sender_exact,
                &self.sender_suffix,
                self.longest_suffix,
                domain,
                &mut candidates,
            );
        }
        if let Some(pool) = event.pool.as_deref()
            && let Some(rules) = self.pools.get(pool)
        {
            candidates.extend_from_slice(rules);
        }
        for tag in &event.tags {
            if let Some(rules) = self.tags.get(tag.as_ref()) {
                candidates.extend_from_slice(rules);
            }
        }
        for ip in event.ips.iter().flatten() {
            match ip {
                IpAddr::V4(v4) => {
                    self.mta_v4
                        .lookup(u128::from(u32::from(*v4)), 32, &mut candidates)
                }
                IpAddr::V6(v6) => self.mta_v6.lookup(u128::from(*v6), 128, &mut candidates),
            }
        }
        candidates.extend_from_slice(&self.unanchored);
        candidates.sort_unstable();
        candidates.dedup();

        let mut winner: Option<&Rule> = None;
        let mut matched = SmallVec::new();
        for index in candidates {
            let rule = &self.rules[index as usize];
            if !rule.is_active(now) || !rule.matches(event) {
                continue;
            }
            if winner.is_none() && rule.mode == Mode::Enforce {
                winner = Some(rule);
            }
            matched.push(rule);
        }
        let outcome = match winner {
            None => Outcome::Forwarded,
            Some(rule) if rule.code >= 500 => Outcome::Failed,
            Some(_) if deferral_is_final(event, now) => Outcome::Failed,
            Some(_) => Outcome::Deferred,
        };
        Decision {
            outcome,
            rule: winner,
            matched,
        }
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.by_id.get(id).map(|&i| &self.rules[i as usize])
    }

    /// Every rule, in precedence order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Number of rules from files and from the API.
    pub fn counts(&self) -> (usize, usize) {
        let api = self
            .rules
            .iter()
            .filter(|r| r.source == Source::Api)
            .count();
        (self.rules.len() - api, api)
    }

    /// SHA-256 (first 16 hex digits) over the rules' canonical JSON sorted by
    /// id: equal on every instance that holds the same rules.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// A 4xx deferral becomes a failure once the event's time or attempts are up.
fn deferral_is_final(event: &Event<'_>, now: DateTime<Utc>) -> bool {
    event.max_deliver_time.is_some_and(|t| now.timestamp() >= t)
        || (event.max_attempts > 0 && event.attempts() >= event.max_attempts)
}

fn lookup_domain(
    exact: &Postings,
    suffix: &Postings,
    longest_suffix: usize,
    domain: &str,
    out: &mut SmallVec<[u32; 16]>,
) {
    if let Some(rules) = exact.get(domain) {
        out.extend_from_slice(rules);
    }
    if !suffix.is_empty() {
        for parent in parent_suffixes(domain).filter(|p| p.len() <= longest_suffix) {
            if let Some(rules) = suffix.get(parent) {
                out.extend_from_slice(rules);
            }
        }
    }
}

/// The (anchor, value) pairs a rule could be filed under, for the frequency
/// count that picks each rule's anchor.
fn anchor_values(rule: &Rule) -> Vec<(Anchor, String)> {
    let c = &rule.conditions;
    let mut out = Vec::new();
    if let Some(d) = &c.domain {
        out.extend(d.patterns().map(|v| (Anchor::Domain, v)));
    }
    if let Some(d) = &c.sender_domain {
        out.extend(d.patterns().map(|v| (Anchor::SenderDomain, v)));
    }
    if let Some(tags) = &c.tags {
        out.extend(tags.iter().map(|v| (Anchor::Tags, v.to_owned())));
    }
    if let Some(pools) = &c.pool {
        out.extend(pools.iter().map(|v| (Anchor::Pool, v.to_owned())));
    }
    if let Some(nets) = &c.mta {
        out.extend(nets.iter().map(|n| (Anchor::Mta, n.to_string())));
    }
    out
}

fn hash_rules(rules: &[Rule]) -> String {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let mut hasher = Sha256::new();
    for rule in sorted {
        let json = serde_json::to_vec(rule).expect("rules serialise");
        hasher.update((json.len() as u64).to_be_bytes());
        hasher.update(&json);
    }
    let digest = hasher.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
