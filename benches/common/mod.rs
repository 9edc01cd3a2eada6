//! Deterministic generators of realistic rule sets and delivery events,
//! shared by the `decide`, `reload` and `e2e` benches (see BENCHMARKS.md).
//!
//! Rules are written as TOML and loaded through `parse_files`, the path a
//! real reload takes, so every benchmarked `Rule` is one validation produced.
//! Events are MailerQ JSON of about 1 KB with a MIME body. Most events are
//! drawn from the "traffic" value spaces (a few thousand recipient domains,
//! a thousand customers with fifty campaigns each, forty shared pools); the
//! rules draw from much larger spaces that overlap them partly, as a
//! production rule set of cancelled campaigns, blocklisted domains and IPs
//! does. Events are then aimed at random rules until about 5% match, so that
//! even the 10-rule set sees matches; the resulting match rate is printed.
#![allow(dead_code)] // each bench uses a different part

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event};
use bouncer::rules::load::{RuleFiles, parse_files};
use bouncer::rules::{Rule, RuleSet};
use chrono::{DateTime, Utc};

/// The instant every decision is made at: fixed, so time windows and
/// `maxdelivertime` give the same answers in every run.
pub fn now() -> DateTime<Utc> {
    "2026-11-27T12:00:00Z".parse().expect("valid instant")
}

/// SplitMix64: tiny, seeded, and good enough to shape test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Skewed towards the front of `items`, like real mailbox providers.
    pub fn pick_skewed<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let n = items.len() as u64;
        &items[self.below(n).min(self.below(n)) as usize]
    }
}

/// The big mailbox providers: about half of all traffic goes to them.
pub const TOP_DOMAINS: &[&str] = &[
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "aol.com",
    "gmx.de",
    "web.de",
    "orange.fr",
    "comcast.net",
    "yahoo.co.uk",
    "live.com",
    "t-online.de",
    "free.fr",
    "mail.ru",
    "qq.com",
];

/// Traffic value spaces (what events carry).
const TRAFFIC_CUSTOMERS: u64 = 1_000;
const CAMPAIGNS_PER_CUSTOMER: u64 = 50;
const TRAFFIC_TAIL_DOMAINS: u64 = 5_000;
const TRAFFIC_ISPS: u64 = 200;
const SHARED_POOLS: u64 = 40;
const CATEGORIES: &[&str] = &["newsletter", "transactional", "promo"];

/// Share of events that match some rule, in per mille.
const MATCH_PER_MILLE: u64 = 50;

#[derive(Clone, Copy, Debug)]
pub enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    fn render(self) -> String {
        match self {
            Net::V4(bits, 32) => Ipv4Addr::from(bits).to_string(),
            Net::V4(bits, len) => format!("{}/{len}", Ipv4Addr::from(bits)),
            Net::V6(bits, 128) => Ipv6Addr::from(bits).to_string(),
            Net::V6(bits, len) => format!("{}/{len}", Ipv6Addr::from(bits)),
        }
    }

    /// An address inside the range.
    fn member(self) -> String {
        match self {
            Net::V4(bits, len) => Ipv4Addr::from(bits | u32::from(len < 32)).to_string(),
            Net::V6(bits, len) => Ipv6Addr::from(bits | u128::from(len < 128)).to_string(),
        }
    }

    fn v4(rng: &mut Rng, base: u32, base_len: u8, len: u8) -> Net {
        let host = 32 - u32::from(len);
        let free = u32::from(len - base_len);
        let sub = if free == 0 {
            0
        } else {
            (rng.next_u64() as u32) & ((1u32 << free) - 1)
        };
        Net::V4(base | (sub << host), len)
    }
}

/// One generated rule, kept structured so events can be aimed at it.
#[derive(Clone, Debug, Default)]
pub struct RuleSpec {
    pub id: String,
    pub code: u16,
    pub status: Option<&'static str>,
    pub mta: Vec<Net>,
    pub mta_any: bool,
    pub pool: Vec<String>,
    pub domain: Vec<String>,
    pub sender: Vec<String>,
    pub tags: Vec<String>,
    pub shadow: bool,
    pub not_before: Option<&'static str>,
    pub expires: Option<&'static str>,
    pub match_all: bool,
}

fn campaign(c: u64, k: u64) -> String {
    format!("campaign_{c}_{k}")
}

fn customer(c: u64) -> String {
    format!("customer_{c}")
}

/// A rule set of `n` rules, the same for the same `(n, seed)`.
pub fn rule_specs(n: usize, seed: u64) -> Vec<RuleSpec> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = RuleSpec {
            id: format!("rule-{i:06}"),
            ..RuleSpec::default()
        };
        let kind = rng.below(100);
        match kind {
            // Recipient domains: mostly blocklists of domains that see
            // little traffic; now and then a long list in one rule.
            0..22 => {
                let count = match rng.below(100) {
                    0..90 => 1,
                    90..99 => 2 + rng.below(4),
                    _ => 50 + rng.below(450),
                };
                for _ in 0..count {
                    r.domain.push(if rng.percent(85) {
                        format!("blk{}.example", rng.below(10_000_000))
                    } else {
                        format!("corp{}.example", rng.below(200_000))
                    });
                }
            }
            // Wildcards, sometimes with the parent named as well.
            22..26 => {
                let isp = rng.below(50_000);
                r.domain.push(format!("*.isp{isp}.example"));
                if rng.percent(30) {
                    r.domain.push(format!("isp{isp}.example"));
                }
            }
            // One campaign to one big provider.
            26..31 => {
                r.domain.push(rng.pick_skewed(TOP_DOMAINS).to_string());
                r.tags.push(campaign(
                    rng.below(100_000),
                    rng.below(CAMPAIGNS_PER_CUSTOMER),
                ));
            }
            // Sender domains, exact or wildcard.
            31..40 => {
                let brand = rng.below(1_000_000);
                r.sender.push(if rng.percent(80) {
                    format!("news.brand{brand}.example")
                } else {
                    format!("*.brand{brand}.example")
                });
            }
            // "Cancel campaign X": the most common rule.
            40..65 => r.tags.push(campaign(
                rng.below(100_000),
                rng.below(CAMPAIGNS_PER_CUSTOMER),
            )),
            // All-of tag pairs.
            65..69 => {
                let c = rng.below(100_000);
                r.tags.push(customer(c));
                r.tags.push(campaign(c, rng.below(CAMPAIGNS_PER_CUSTOMER)));
            }
            69..72 => {
                r.tags.push(customer(rng.below(500_000)));
                r.tags.push(rng.pick(CATEGORIES).to_string());
            }
            // A whole customer.
            72..75 => r.tags.push(customer(rng.below(1_000_000))),
            // Pools: a dedicated pool, or a shared pool to one domain.
            75..80 => {
                if rng.percent(60) {
                    r.pool.push(format!("dedicated-{}", rng.below(1_000_000)));
                } else {
                    r.pool.push(format!("shared-{}", rng.below(SHARED_POOLS)));
                    r.domain.push(format!("corp{}.example", rng.below(200_000)));
                }
            }
            // Sending IPs: blocklisted addresses and ranges outside the
            // traffic's own, IPv4 and IPv6.
            80..92 => {
                let nets = 1 + rng.below(3) * u64::from(rng.percent(20));
                for _ in 0..nets {
                    let net = match rng.below(100) {
                        0..70 => Net::v4(&mut rng, 0x0a00_0000, 8, 32),
                        70..78 => Net::v4(&mut rng, 0x0a00_0000, 8, 28),
                        78..85 => Net::v4(&mut rng, 0x0a00_0000, 8, 24),
                        85..93 => {
                            let x = rng.below(1 << 32) as u128;
                            Net::V6((0x2001_0db8_u128 << 96) | (x << 64), 64)
                        }
                        _ => {
                            let x = rng.next_u64() as u128;
                            Net::V6((0x2001_0db8_u128 << 96) | (1 << 95) | x, 128)
                        }
                    };
                    r.mta.push(net);
                }
                r.mta_any = rng.percent(30);
            }
            // An IP range of the traffic's own, to one domain.
            92..94 => {
                r.mta
                    .push(Net::V4(0xc612_0000 | ((rng.below(256) as u32) << 8), 24));
                r.mta_any = rng.percent(50);
                r.domain.push(format!("corp{}.example", rng.below(200_000)));
            }
            // Multi-condition: a campaign on one pool; a sender to a domain.
            94..97 => {
                let c = rng.below(100_000);
                r.tags.push(campaign(c, rng.below(CAMPAIGNS_PER_CUSTOMER)));
                r.pool.push(format!("shared-{}", rng.below(SHARED_POOLS)));
            }
            _ => {
                r.sender
                    .push(format!("news.brand{}.example", rng.below(100_000)));
                r.domain.push(rng.pick_skewed(TOP_DOMAINS).to_string());
            }
        }
        if rng.percent(5) {
            r.code = *rng.pick(&[421, 450, 451, 452]);
            r.status = if rng.percent(80) { Some("4.7.1") } else { None };
        } else {
            r.code = *rng.pick(&[550, 550, 550, 552, 553, 554]);
            r.status = if rng.percent(80) { Some("5.7.1") } else { None };
        }
        r.shadow = rng.percent(3);
        if rng.percent(5) {
            match rng.below(4) {
                0 | 1 => {
                    r.not_before = Some("2026-11-01T00:00:00Z");
                    r.expires = Some("2026-12-31T00:00:00Z");
                }
                2 => r.expires = Some("2026-11-20T00:00:00Z"),
                _ => r.not_before = Some("2026-12-05T22:00:00Z"),
            }
        }
        out.push(r);
    }
    // The incident rule someone left in the files, long expired: no
    // condition, so it is a candidate for every event.
    if n >= 1_000
        && let Some(last) = out.last_mut()
    {
        *last = RuleSpec {
            id: last.id.clone(),
            code: 451,
            status: Some("4.3.2"),
            match_all: true,
            expires: Some("2026-10-01T00:00:00Z"),
            ..RuleSpec::default()
        };
    }
    out
}

fn toml_list(out: &mut String, key: &str, items: impl IntoIterator<Item = String>) {
    let items: Vec<String> = items.into_iter().map(|s| format!("{s:?}")).collect();
    if items.len() == 1 {
        let _ = writeln!(out, "{key} = {}", items[0]);
    } else if !items.is_empty() {
        let _ = writeln!(out, "{key} = [{}]", items.join(", "));
    }
}

/// Renders specs as rule files of `per_file` rules each.
pub fn rule_files(specs: &[RuleSpec], per_file: usize) -> RuleFiles {
    let mut files = RuleFiles::default();
    for (f, chunk) in specs.chunks(per_file).enumerate() {
        let mut text = String::with_capacity(chunk.len() * 200);
        for r in chunk {
            text.push_str("[[rule]]\n");
            let _ = writeln!(text, "id = {:?}", r.id);
            let _ = writeln!(text, "code = {}", r.code);
            if let Some(status) = r.status {
                let _ = writeln!(text, "status = {status:?}");
            }
            let _ = writeln!(
                text,
                "description = \"Forced error {}: stopped at the customer's request\"",
                r.id
            );
            toml_list(&mut text, "mta", r.mta.iter().map(|n| n.render()));
            if !r.mta.is_empty() {
                let mode = if r.mta_any { "any" } else { "all" };
                let _ = writeln!(text, "mta_match = {mode:?}");
            }
            toml_list(&mut text, "pool", r.pool.iter().cloned());
            toml_list(&mut text, "domain", r.domain.iter().cloned());
            toml_list(&mut text, "sender_domain", r.sender.iter().cloned());
            toml_list(&mut text, "tags", r.tags.iter().cloned());
            if r.match_all {
                text.push_str("match_all = true\n");
            }
            if r.shadow {
                text.push_str("mode = \"shadow\"\n");
            }
            if let Some(t) = r.not_before {
                let _ = writeln!(text, "not_before = {t}");
            }
            if let Some(t) = r.expires {
                let _ = writeln!(text, "expires = {t:?}");
            }
            text.push('\n');
        }
        files.files.push((format!("gen/part-{f:03}.toml"), text));
    }
    files
}

/// Loads rule files the way a reload does.
pub fn load(files: &RuleFiles) -> Vec<Rule> {
    parse_files(Path::new("rules"), files).unwrap_or_else(|e| panic!("generated rules: {e}"))
}

/// What an event is made of before it is written as JSON.
struct EventSpec {
    recipient: String,
    envelope: String,
    ips: Vec<String>,
    pool: String,
    tags: Vec<String>,
    customer: u64,
    campaign: u64,
}

fn pool_ips(rng: &mut Rng, pool: &str, customer: u64) -> Vec<String> {
    let (v4_base, v6_base) = if let Some(p) = pool.strip_prefix("shared-") {
        let p: u32 = p.parse().expect("pool number");
        (
            0xc612_0000 | (p << 8),
            (0x2001_0db8_u128 << 96) | (u128::from(p) << 80),
        )
    } else {
        let c = customer as u32;
        (
            0xc613_0000 | (c << 4),
            (0x2001_0db8_u128 << 96) | (u128::from(1_000 + c) << 80),
        )
    };
    let count = 1 + rng.below(3);
    let mixed = rng.percent(20);
    (0..count)
        .map(|i| {
            let host = 1 + rng.below(8);
            if mixed && i % 2 == 1 {
                Ipv6Addr::from(v6_base | u128::from(host)).to_string()
            } else {
                Ipv4Addr::from(v4_base | host as u32).to_string()
            }
        })
        .collect()
}

fn traffic_event(rng: &mut Rng) -> EventSpec {
    let c = rng.below(TRAFFIC_CUSTOMERS);
    let k = rng.below(CAMPAIGNS_PER_CUSTOMER);
    let domain = match rng.below(100) {
        0..55 => rng.pick_skewed(TOP_DOMAINS).to_string(),
        55..95 => format!("corp{}.example", rng.below(TRAFFIC_TAIL_DOMAINS)),
        _ => format!("mx{}.isp{}.example", rng.below(10), rng.below(TRAFFIC_ISPS)),
    };
    let pool = if c.is_multiple_of(10) {
        format!("dedicated-{c}")
    } else {
        format!("shared-{}", c % SHARED_POOLS)
    };
    let ips = pool_ips(rng, &pool, c);
    let envelope = if rng.percent(3) {
        String::new()
    } else {
        format!("bounce-{}@news.brand{c}.example", rng.below(1 << 40))
    };
    EventSpec {
        recipient: format!("user{}@{domain}", rng.below(10_000_000)),
        envelope,
        ips,
        pool,
        tags: vec![
            customer(c),
            campaign(c, k),
            rng.pick(CATEGORIES).to_string(),
        ],
        customer: c,
        campaign: k,
    }
}

/// Bends an event so that `rule`'s conditions hold (its time window may
/// still make it inactive).
fn aim(e: &mut EventSpec, rule: &RuleSpec, rng: &mut Rng) {
    let concrete = |pattern: &str| match pattern.strip_prefix("*.") {
        Some(parent) => format!("mx1.{parent}"),
        None => pattern.to_owned(),
    };
    if !rule.domain.is_empty() {
        let d = concrete(rng.pick(&rule.domain).as_str());
        e.recipient = format!("user{}@{d}", rng.below(10_000_000));
    }
    if !rule.sender.is_empty() {
        let d = concrete(rng.pick(&rule.sender).as_str());
        e.envelope = format!("bounce-{}@{d}", rng.below(1 << 40));
    }
    if !rule.pool.is_empty() {
        e.pool = rng.pick(&rule.pool).clone();
    }
    for tag in &rule.tags {
        if !e.tags.contains(tag) {
            e.tags.push(tag.clone());
        }
    }
    if !rule.mta.is_empty() {
        e.ips = vec![rng.pick(&rule.mta).member()];
    }
}

const MIME_BODY: &str = "Hello,\r\n\r\nOur winter collection is here: warm coats, \
    scarves and boots, with free shipping on every order this week. Browse the \
    full range online and find the store nearest to you.\r\n\r\nYou receive this \
    message because you subscribed to our newsletter. To unsubscribe, follow the \
    link in the footer of this message.\r\n";

fn event_json(e: &EventSpec, rng: &mut Rng) -> String {
    let message_id = format!("{:016x}.{:08x}", rng.next_u64(), rng.next_u64() as u32);
    let mime = format!(
        "Return-Path: <{env}>\r\nMessage-ID: <{message_id}@news.brand{c}.example>\r\n\
         From: \"Brand {c}\" <hello@news.brand{c}.example>\r\nTo: <{rcpt}>\r\n\
         Subject: Campaign {k}: our winter collection\r\nDate: Fri, 27 Nov 2026 11:58:03 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\nList-Unsubscribe: <https://news.brand{c}.example/u/{message_id}>\r\n\r\n{MIME_BODY}",
        env = e.envelope,
        c = e.customer,
        k = e.campaign,
        rcpt = e.recipient,
    );
    let attempts = match rng.below(10) {
        0..7 => 0,
        7..9 => 1,
        _ => 2,
    };
    let results: Vec<serde_json::Value> = (0..attempts)
        .map(|i| {
            serde_json::json!({
                "time": format!("2026-11-27 1{i}:00:00"),
                "state": "connect", "result": "error", "code": 421,
                "status": "4.7.0", "description": "Try again later",
                "ip": "192.0.2.25"
            })
        })
        .collect();
    let max_deliver_time = if rng.percent(3) {
        "2026-11-27 06:00:00"
    } else {
        "2026-11-29 12:00:00"
    };
    let mut value = serde_json::json!({
        "envelope": e.envelope,
        "recipient": e.recipient,
        "mime": mime,
        "ips": e.ips,
        "pool": e.pool,
        "tags": e.tags,
        "maxdelivertime": max_deliver_time,
        "maxattempts": 5,
        "dsn": {"notify": "FAILURE,DELAY", "ret": "HDRS", "envid": message_id},
        "data": {"customer": e.customer, "campaign": e.campaign, "message": message_id},
        "queue": "outbox"
    });
    if attempts > 0 {
        value["results"] = serde_json::Value::Array(results);
    }
    serde_json::to_string(&value).expect("serialisable")
}

/// `count` events as JSON, about `MATCH_PER_MILLE` of them matching a rule
/// of `set`: traffic events first, to see how many match on their own, then
/// enough of them aimed at a random rule to make up the rest.
pub fn events(specs: &[RuleSpec], set: &RuleSet, count: usize, seed: u64) -> Vec<String> {
    let mut stream = EventStream::new(specs, set, count, seed);
    (0..count).map(|_| stream.next_event()).collect()
}

/// The events of [`events`], one at a time and without end, for workloads
/// too large to hold in memory (the end-to-end bench writes millions). The
/// share of aimed events is set from the first `sample` traffic events;
/// with `sample` equal to the count taken, the events are those of
/// [`events`].
pub struct EventStream<'s> {
    /// Rules inside their time window: the only ones events can be aimed at.
    active: Vec<&'s RuleSpec>,
    rng: Rng,
    aim_rng: Rng,
    aim_per_mille: u64,
    /// How many of the sampled traffic events matched some rule, per mille.
    traffic_per_mille: u64,
}

impl<'s> EventStream<'s> {
    pub fn new(specs: &'s [RuleSpec], set: &RuleSet, sample: usize, seed: u64) -> Self {
        Self::matching(specs, set, sample, seed, MATCH_PER_MILLE)
    }

    /// As [`EventStream::new`], with about `match_per_mille` of the events
    /// matching a rule instead of the default 5%: a campaign cancelled
    /// while much of the queue is its mail.
    pub fn matching(
        specs: &'s [RuleSpec],
        set: &RuleSet,
        sample: usize,
        seed: u64,
        match_per_mille: u64,
    ) -> Self {
        let active: Vec<&RuleSpec> = specs
            .iter()
            .filter(|r| set.get(&r.id).is_some_and(|r| r.is_active(now())))
            .collect();
        let mut rng = Rng::new(seed);
        let mut traffic = 0;
        for _ in 0..sample {
            let e = traffic_event(&mut rng);
            let _ = (rng.below(1000), rng.below(active.len().max(1) as u64));
            let json = event_json(&e, &mut rng);
            let event =
                Event::parse(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES).expect("valid event");
            traffic += usize::from(!set.decide(&event, now()).matched.is_empty());
        }
        let traffic_per_mille = (traffic * 1000 / sample.max(1)) as u64;
        EventStream {
            active,
            rng: Rng::new(seed),
            aim_rng: Rng::new(!seed),
            aim_per_mille: match_per_mille.saturating_sub(traffic_per_mille),
            traffic_per_mille,
        }
    }

    /// The next event as JSON.
    pub fn next_event(&mut self) -> String {
        let rng = &mut self.rng;
        let mut e = traffic_event(rng);
        // The same draws as in `new`, so the traffic is the same events.
        let roll = rng.below(1000);
        let rule = rng.below(self.active.len().max(1) as u64) as usize;
        if roll < self.aim_per_mille && !self.active.is_empty() {
            aim(&mut e, self.active[rule], &mut self.aim_rng);
        }
        event_json(&e, rng)
    }

    /// Per mille of the sampled traffic that matched some rule on its own,
    /// and per mille of events aimed at a rule on top.
    pub fn shares(&self) -> (u64, u64) {
        (self.traffic_per_mille, self.aim_per_mille)
    }
}

/// Writes rule files under `dir` (their names are relative paths).
pub fn write_rule_files(dir: &Path, files: &RuleFiles) -> std::io::Result<()> {
    // The directory exists even for an empty set (`e2e --rules 0`).
    std::fs::create_dir_all(dir)?;
    for (name, text) in &files.files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// A rule set with its events, as the benches use them.
pub struct Fixture {
    pub size: usize,
    pub rules: Vec<Rule>,
    pub set: RuleSet,
    pub events: Vec<String>,
}

impl Fixture {
    pub fn new(size: usize, events: usize) -> Fixture {
        let specs = rule_specs(size, 0x5eed_0000 + size as u64);
        let rules = load(&rule_files(&specs, 1_000));
        assert_eq!(rules.len(), size);
        let set = RuleSet::new(rules.clone());
        let events = self::events(&specs, &set, events, 0xe7e7_0000 + size as u64);
        Fixture {
            size,
            rules,
            set,
            events,
        }
    }
}
