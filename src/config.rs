//! `bouncer run` configuration (SPEC §5): a TOML file, then `BOUNCER_…`
//! environment overrides, then validation. Every error names the setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::DEFAULT_MAX_EVENT_BYTES;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub group: String,
    pub rules_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub api_tokens_file: PathBuf,
    pub guarantee: Guarantee,
    pub transactional_id: String,
    pub on_missing_offset: OnMissingOffset,
    pub forward_partitioning: Partitioning,
    pub max_event_bytes: usize,
    pub log_outcomes: LogOutcomes,
    /// `text` (default) or `json`.
    pub log_format: crate::logging::LogFormat,
    /// `/status` reports consumption as stalled when there is lag and no
    /// event has been consumed for this long.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// An assigned input partition that has not started fetching after this
    /// long (librdkafka can leave one waiting for its committed offset for
    /// ever after a coordinator error) restarts the pipeline with new
    /// clients. Exactly once, `transaction.timeout.ms` is added: an open
    /// transaction of a killed instance legitimately holds the offsets back
    /// that long.
    #[serde(with = "humantime_serde")]
    pub fetch_start_timeout: Duration,
    /// Most per-rule metric series; matches of further rules are counted
    /// under `rule="(other)"`.
    pub max_rule_series: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Most events in flight (consumed, not yet acknowledged) per instance;
    /// above it partitions are paused.
    pub max_in_flight: usize,
    /// At least once: how often the offsets of fully acknowledged events
    /// are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Exactly once: a transaction is committed after this long…
    #[serde(with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// …or after this many events, whichever comes first.
    pub transaction_max_events: usize,
    /// Most API rules in force at once; a POST of a new rule above it is refused.
    pub max_api_rules: usize,
    /// How long an expired API rule stays listed before it is tombstoned.
    #[serde(with = "humantime_serde")]
    pub api_expired_retention: Duration,
    pub topics: Topics,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingOffset {
    Earliest,
    Latest,
    Fail,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    /// The input's partition number.
    Same,
    /// By key, murmur2 as Java clients do.
    Key,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogOutcomes {
    Each,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub input: String,
    pub forward: String,
    pub results: String,
    pub retry: String,
    pub dead_letter: String,
    pub control: String,
}

/// librdkafka properties: for every client, and for consumers or producers only.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct KafkaConfig {
    #[serde(flatten, deserialize_with = "properties")]
    pub common: BTreeMap<String, String>,
    #[serde(deserialize_with = "properties")]
    pub consumer: BTreeMap<String, String>,
    #[serde(deserialize_with = "properties")]
    pub producer: BTreeMap<String, String>,
}

/// librdkafka takes every property as text; TOML numbers and booleans are
/// accepted and converted, so `"linger.ms" = 5` works as well as `"5"`.
fn properties<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Prop {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw = BTreeMap::<String, Prop>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Prop::Text(s) => s,
                Prop::Int(i) => i.to_string(),
                Prop::Float(f) => f.to_string(),
                Prop::Bool(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            group: "bouncer".into(),
            rules_dir: "rules".into(),
            http_listen: "0.0.0.0:9464".parse().expect("valid address"),
            api_tokens_file: PathBuf::new(),
            guarantee: Guarantee::AtLeastOnce,
            transactional_id: String::new(),
            on_missing_offset: OnMissingOffset::Earliest,
            forward_partitioning: Partitioning::Same,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            log_outcomes: LogOutcomes::Each,
            log_format: crate::logging::LogFormat::Text,
            stall_after: Duration::from_secs(60),
            fetch_start_timeout: Duration::from_secs(30),
            max_rule_series: 1_000,
            shutdown_timeout: Duration::from_secs(20),
            max_in_flight: 10_000,
            commit_interval: Duration::from_secs(1),
            transaction_interval: Duration::from_millis(100),
            transaction_max_events: 10_000,
            max_api_rules: 10_000,
            api_expired_retention: Duration::from_secs(24 * 3600),
            topics: Topics::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            input: "deliveries".into(),
            forward: "deliveries.accepted".into(),
            results: "deliveries.results".into(),
            retry: "deliveries.retry".into(),
            dead_letter: "deliveries.invalid".into(),
            control: "bouncer.rules".into(),
        }
    }
}

/// librdkafka properties that carry bouncer's guarantees: setting one is an
/// error naming it.
pub const OWNED_PROPERTIES: &[&str] = &[
    "group.id",
    "transactional.id",
    "enable.auto.commit",
    "auto.commit.enable",
    "enable.auto.offset.store",
    "isolation.level",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "auto.offset.reset",
    "enable.partition.eof",
    "enable.gapless.guarantee",
    "partition.assignment.strategy",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "retries",
    "message.send.max.retries",
];

/// bouncer's producer defaults, applied before `[kafka]` and
/// `[kafka.producer]`: batching, compression, and a bounded queue.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("compression.type", "lz4"),
    ("queue.buffering.max.messages", "100000"),
    // With max_in_flight and the consumer's queue, bounds memory: steady
    // RSS stays under 128 MiB whatever the backlog (BENCHMARKS.md).
    ("queue.buffering.max.kbytes", "16384"),
    // Room for a 1 MiB event plus headers and the appended result.
    ("message.max.bytes", "2097152"),
    ("message.timeout.ms", "300000"),
    // Keys hash as Java clients do, so by-key records land where they expect.
    ("partitioner", "murmur2_random"),
];

/// Exactly once: `transaction.timeout.ms` unless set. Short, so that an
/// instance killed for good holds back `read_committed` readers of its
/// partitions for 10 s at most; a restarted one (same `transactional_id`)
/// aborts its open transaction at once.
pub const TRANSACTION_TIMEOUT_MS: u64 = 10_000;

/// bouncer's consumer defaults: a bounded pre-fetch queue, batched fetches.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // 4 MiB is ~3,000 events of 1.3 KB, 13 ms of a drain: no throughput
    // lost against 8 MiB, and 12-18 MiB less RSS (BENCHMARKS.md).
    ("queued.max.messages.kbytes", "4096"),
    // librdkafka's 1000 ms idles a consumer for a second whenever its
    // pre-fetch queue was full: it capped a drain at ~40k events/s with the
    // CPU mostly idle (BENCHMARKS.md).
    ("fetch.queue.backoff.ms", "10"),
    ("fetch.max.bytes", "16777216"),
    // A fetch waits for 64 KiB (~100 events, compressed) or 10 ms, where
    // librdkafka's 1 byte answers at every few events: below a drain's
    // rate, fewer and larger fetches cut bouncer's CPU per event by a fifth
    // at 30,000 events/s and by 40-60% at 1,000-5,000, and the broker's by
    // 20-40%, for up to 10 ms more latency at light load; drains do not
    // change (BENCHMARKS.md).
    ("fetch.min.bytes", "65536"),
    ("fetch.wait.max.ms", "10"),
    // A fetch buffer stays in memory until its last message is processed:
    // 512 KiB per partition instead of 1 MiB took 20-25 MiB off the memory
    // check's RSS at the same drain rate (BENCHMARKS.md). A larger record
    // batch still comes whole (the broker always returns the first one).
    ("max.partition.fetch.bytes", "524288"),
    ("session.timeout.ms", "45000"),
    ("receive.message.max.bytes", "33554432"),
];

/// Bytes kept free beside `max_event_bytes` for headers and the result entry.
pub const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

/// A configuration problem: the setting at fault and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads `file` (if any), applies the process environment, validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?,
            None => String::new(),
        };
        Config::from_parts(&text, std::env::vars())
    }

    /// Builds a configuration from TOML text and `(name, value)` variables;
    /// only `BOUNCER_…` variables are read.
    pub fn from_parts(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::new("config file", e.message().to_owned()))?;
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("BOUNCER_"))
            .collect();
        vars.sort();
        for (name, value) in vars {
            apply_env(&mut table, &name, &value)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let setting = if path == "." {
                    "config file".to_owned()
                } else {
                    path
                };
                ConfigError::new(setting, e.into_inner().message().to_owned())
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let sections = [
            ("kafka", &self.kafka.common),
            ("kafka.consumer", &self.kafka.consumer),
            ("kafka.producer", &self.kafka.producer),
        ];
        for (section, props) in sections {
            for key in props.keys() {
                if OWNED_PROPERTIES.contains(&key.as_str()) {
                    let hint = match key.as_str() {
                        "group.id" => "; set the top-level \"group\" instead",
                        "transactional.id" => "; set the top-level \"transactional_id\" instead",
                        "auto.offset.reset" => "; set the top-level \"on_missing_offset\" instead",
                        "isolation.level"
                        | "enable.idempotence"
                        | "acks"
                        | "request.required.acks" => "; choose \"guarantee\" instead",
                        _ => "",
                    };
                    return Err(ConfigError::new(
                        format!("{section}.\"{key}\""),
                        format!(
                            "is set by bouncer to keep its delivery guarantees and cannot be overridden{hint}"
                        ),
                    ));
                }
            }
        }
        let t = &self.topics;
        for (name, value) in [
            ("topics.input", &t.input),
            ("topics.forward", &t.forward),
            ("topics.results", &t.results),
            ("topics.retry", &t.retry),
            ("topics.dead_letter", &t.dead_letter),
            ("topics.control", &t.control),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(name, "must name a topic"));
            }
        }
        for (name, value) in [
            ("topics.forward", &t.forward),
            ("topics.results", &t.results),
            ("topics.retry", &t.retry),
            ("topics.dead_letter", &t.dead_letter),
            ("topics.control", &t.control),
        ] {
            if *value == t.input {
                return Err(ConfigError::new(
                    name,
                    format!(
                        "must differ from topics.input ({:?}), or events would loop",
                        t.input
                    ),
                ));
            }
        }
        if self.group.trim().is_empty() {
            return Err(ConfigError::new("group", "must name a consumer group"));
        }
        if self.max_event_bytes == 0 {
            return Err(ConfigError::new("max_event_bytes", "must be at least 1"));
        }
        let max_message = self
            .producer_property("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(max_message) = max_message
            && self.max_event_bytes + RECORD_OVERHEAD_BYTES > max_message
        {
            return Err(ConfigError::new(
                "max_event_bytes",
                format!(
                    "{} plus {RECORD_OVERHEAD_BYTES} bytes for headers and the result entry exceeds the producer's \
                     message.max.bytes ({max_message}); lower max_event_bytes or raise kafka.producer.\"message.max.bytes\"",
                    self.max_event_bytes
                ),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        if self.transaction_max_events == 0 {
            return Err(ConfigError::new(
                "transaction_max_events",
                "must be at least 1",
            ));
        }
        if self.fetch_start_timeout.is_zero() {
            return Err(ConfigError::new(
                "fetch_start_timeout",
                "must be longer than 0 (e.g. \"30s\")",
            ));
        }
        if self.transaction_interval.is_zero() {
            return Err(ConfigError::new(
                "transaction_interval",
                "must be longer than 0 (e.g. \"100ms\")",
            ));
        }
        if self.guarantee == Guarantee::ExactlyOnce {
            self.validate_transaction_timeouts()?;
        }
        if self
            .kafka
            .common
            .get("bootstrap.servers")
            .is_none_or(|s| s.trim().is_empty())
        {
            return Err(ConfigError::new(
                "kafka.\"bootstrap.servers\"",
                "is required (e.g. \"127.0.0.1:9092\", or BOUNCER_KAFKA__BOOTSTRAP_SERVERS)",
            ));
        }
        Ok(())
    }

    /// The effective value of a producer property: bouncer's default,
    /// overridden by `[kafka]`, overridden by `[kafka.producer]`.
    pub fn producer_property(&self, key: &str) -> Option<String> {
        self.producer_properties().remove(key)
    }

    /// Properties for producers, defaults first. Exactly once adds a short
    /// `transaction.timeout.ms` and, unless set, a `message.timeout.ms`
    /// equal to it (librdkafka requires it to be no longer).
    pub fn producer_properties(&self) -> BTreeMap<String, String> {
        let mut properties = merged(PRODUCER_DEFAULTS, &self.kafka.common, &self.kafka.producer);
        if self.guarantee == Guarantee::ExactlyOnce {
            let timeout = properties
                .entry("transaction.timeout.ms".to_owned())
                .or_insert_with(|| TRANSACTION_TIMEOUT_MS.to_string())
                .clone();
            if self.user_producer_property("message.timeout.ms").is_none() {
                properties.insert("message.timeout.ms".to_owned(), timeout);
            }
        }
        properties
    }

    /// A producer property as the user set it, `[kafka.producer]` first.
    fn user_producer_property(&self, key: &str) -> Option<&String> {
        self.kafka
            .producer
            .get(key)
            .or_else(|| self.kafka.common.get(key))
    }

    /// The setting that holds a producer property, for error messages.
    fn producer_setting(&self, key: &str) -> String {
        if self.kafka.producer.contains_key(key) {
            format!("kafka.producer.\"{key}\"")
        } else {
            format!("kafka.\"{key}\"")
        }
    }

    fn validate_transaction_timeouts(&self) -> Result<(), ConfigError> {
        let properties = self.producer_properties();
        let ms = |key: &str| -> Result<u64, ConfigError> {
            let value = &properties[key];
            value.trim().parse().map_err(|_| {
                ConfigError::new(
                    self.producer_setting(key),
                    format!("must be a number of milliseconds, got \"{value}\""),
                )
            })
        };
        let transaction = ms("transaction.timeout.ms")?;
        let message = ms("message.timeout.ms")?;
        if message > transaction {
            return Err(ConfigError::new(
                self.producer_setting("message.timeout.ms"),
                format!(
                    "is {message} but must not exceed transaction.timeout.ms ({transaction}) with \
                     guarantee = \"exactly-once\"; lower it or leave it unset"
                ),
            ));
        }
        if self.transaction_interval.as_millis() * 2 > u128::from(transaction) {
            return Err(ConfigError::new(
                "transaction_interval",
                format!(
                    "is {} ms, but a transaction must commit well within transaction.timeout.ms \
                     ({transaction} ms); make it at most half of that",
                    self.transaction_interval.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// Properties for consumers, defaults first.
    pub fn consumer_properties(&self) -> BTreeMap<String, String> {
        merged(CONSUMER_DEFAULTS, &self.kafka.common, &self.kafka.consumer)
    }
}

fn merged(
    defaults: &[(&str, &str)],
    common: &BTreeMap<String, String>,
    specific: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = defaults
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    out.extend(common.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.extend(specific.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Applies one `BOUNCER_A__B__C=value` variable to the table.
fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), ConfigError> {
    let path = &name["BOUNCER_".len()..];
    let parts: Vec<&str> = path.split("__").collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::new(
            name,
            "malformed variable name; use BOUNCER_SECTION__KEY",
        ));
    }
    let mut keys: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
    let is_kafka = keys[0] == "kafka";
    if is_kafka {
        // Under [kafka], the last part is a librdkafka property: `_` → `.`.
        let last = keys.len() - 1;
        if last == 0 {
            return Err(ConfigError::new(
                name,
                "names no property; use BOUNCER_KAFKA__PROPERTY_NAME",
            ));
        }
        keys[last] = keys[last].replace('_', ".");
    }
    let (leaf, sections) = keys.split_last().expect("at least one part");
    let mut current = table;
    let mut walked = String::new();
    for section in sections {
        walked = if walked.is_empty() {
            section.clone()
        } else {
            format!("{walked}.{section}")
        };
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::new(name, format!("{walked} is not a section")))?;
    }
    let parsed = if is_kafka {
        toml::Value::String(value.to_owned())
    } else {
        // Numbers and booleans as TOML would read them; anything else is text.
        toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table())
            .unwrap_or_else(|| toml::Value::String(value.to_owned()))
    };
    current.insert(leaf.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    const MINIMAL: &str = "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:9092\"\n";

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_parts(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.group, "bouncer");
        assert_eq!(c.topics.input, "deliveries");
        assert_eq!(c.topics.control, "bouncer.rules");
        assert_eq!(c.guarantee, Guarantee::AtLeastOnce);
        assert_eq!(c.http_listen.port(), 9464);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
        assert_eq!(
            c.producer_property("message.max.bytes").as_deref(),
            Some("2097152")
        );
    }

    #[test]
    fn environment_overrides_file() {
        let c = Config::from_parts(
            "group = \"a\"\n[topics]\ninput = \"in\"\n",
            env(&[
                ("BOUNCER_GROUP", "b"),
                ("BOUNCER_TOPICS__INPUT", "events"),
                ("BOUNCER_MAX_EVENT_BYTES", "1000"),
                ("BOUNCER_KAFKA__BOOTSTRAP_SERVERS", "k:9092"),
                ("BOUNCER_KAFKA__SASL_PASSWORD", "secret"),
                ("BOUNCER_KAFKA__CONSUMER__FETCH_MAX_BYTES", "1024"),
                ("BOUNCER_SHUTDOWN_TIMEOUT", "5s"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.group, "b");
        assert_eq!(c.topics.input, "events");
        assert_eq!(c.max_event_bytes, 1000);
        assert_eq!(c.kafka.common["bootstrap.servers"], "k:9092");
        assert_eq!(c.kafka.common["sasl.password"], "secret");
        assert_eq!(c.kafka.consumer["fetch.max.bytes"], "1024");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.consumer_properties()["fetch.max.bytes"], "1024");
    }

    #[test]
    fn owned_properties_are_refused_by_name() {
        let text = format!("{MINIMAL}[kafka.producer]\nacks = \"1\"\n");
        let e = Config::from_parts(&text, env(&[])).unwrap_err();
        assert_eq!(e.setting, "kafka.producer.\"acks\"");
        let e = Config::from_parts(MINIMAL, env(&[("BOUNCER_KAFKA__GROUP_ID", "x")])).unwrap_err();
        assert_eq!(e.setting, "kafka.\"group.id\"");
        assert!(e.message.contains("\"group\""), "{e}");
    }

    #[test]
    fn exactly_once_gets_a_short_transaction_timeout() {
        let eos = "guarantee = \"exactly-once\"\n";
        let c = Config::from_parts(&format!("{eos}{MINIMAL}"), env(&[])).unwrap();
        let p = c.producer_properties();
        assert_eq!(p["transaction.timeout.ms"], "10000");
        assert_eq!(
            p["message.timeout.ms"], "10000",
            "librdkafka requires message.timeout.ms <= transaction.timeout.ms"
        );
        let c = Config::from_parts(MINIMAL, env(&[])).unwrap();
        assert!(
            !c.producer_properties()
                .contains_key("transaction.timeout.ms")
        );

        let text = format!("{eos}{MINIMAL}[kafka.producer]\n\"message.timeout.ms\" = 60000\n");
        let e = Config::from_parts(&text, env(&[])).unwrap_err();
        assert_eq!(e.setting, "kafka.producer.\"message.timeout.ms\"");
        assert!(e.message.contains("transaction.timeout.ms"), "{e}");
        let text = format!("{eos}{MINIMAL}[kafka.producer]\n\"transaction.timeout.ms\" = 60000\n");
        let c = Config::from_parts(&text, env(&[])).unwrap();
        assert_eq!(c.producer_properties()["message.timeout.ms"], "60000");

        let text = format!("{eos}transaction_interval = \"6s\"\n{MINIMAL}");
        let e = Config::from_parts(&text, env(&[])).unwrap_err();
        assert_eq!(e.setting, "transaction_interval");
        let e = Config::from_parts(MINIMAL, env(&[("BOUNCER_TRANSACTION_MAX_EVENTS", "0")]))
            .unwrap_err();
        assert_eq!(e.setting, "transaction_max_events");
    }

    #[test]
    fn oversize_max_event_bytes_is_refused() {
        let e = Config::from_parts(MINIMAL, env(&[("BOUNCER_MAX_EVENT_BYTES", "2097152")]))
            .unwrap_err();
        assert_eq!(e.setting, "max_event_bytes");
        assert!(e.message.contains("message.max.bytes"), "{e}");
        let text = format!("{MINIMAL}[kafka.producer]\n\"message.max.bytes\" = 8388608\n");
        Config::from_parts(&text, env(&[("BOUNCER_MAX_EVENT_BYTES", "2097152")])).unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        let e =
            Config::from_parts(&format!("guarantee = \"twice\"\n{MINIMAL}"), env(&[])).unwrap_err();
        assert_eq!(e.setting, "guarantee");
        let e = Config::from_parts(&format!("[topics]\ninptu = \"x\"\n{MINIMAL}"), env(&[]))
            .unwrap_err();
        assert_eq!(e.setting, "topics.inptu");
        let e = Config::from_parts(
            &format!("[topics]\nretry = \"deliveries\"\n{MINIMAL}"),
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(e.setting, "topics.retry");
        let e = Config::from_parts("", env(&[])).unwrap_err();
        assert_eq!(e.setting, "kafka.\"bootstrap.servers\"");
        let e =
            Config::from_parts(MINIMAL, env(&[("BOUNCER_MAX_EVENT_BYTES", "lots")])).unwrap_err();
        assert_eq!(e.setting, "max_event_bytes");
    }
}
