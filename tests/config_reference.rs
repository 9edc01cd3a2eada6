//! The configuration reference in `docs/operations.md` is generated: every
//! setting with its environment variable and default comes from
//! `Config::default()` (serialised), bouncer's librdkafka defaults from
//! `PRODUCER_DEFAULTS` / `CONSUMER_DEFAULTS`, the refused properties from
//! `OWNED_PROPERTIES`. A new setting without a description here, or a
//! changed default not yet in the document, fails this test, so the runbook
//! can't go stale. To regenerate the block after a change:
//!
//! ```sh
//! BOUNCER_BLESS=1 cargo test --test config_reference
//! ```

use std::path::PathBuf;

use bouncer::config::{CONSUMER_DEFAULTS, Config, OWNED_PROPERTIES, PRODUCER_DEFAULTS};

const BEGIN: &str = "<!-- BEGIN GENERATED CONFIG REFERENCE (BOUNCER_BLESS=1 cargo test --test config_reference) -->";
const END: &str = "<!-- END GENERATED CONFIG REFERENCE -->";

/// What each setting is for, by its path in the TOML file. Every setting of
/// `Config` needs one line here.
const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "group",
        "Kafka consumer group of the input topic. Instances sharing it split the input partitions between them.",
    ),
    (
        "rules_dir",
        "Directory of rule files, read recursively (`.toml`, `.json`; names starting with `.` skipped), watched and hot-reloaded. A missing directory is waited for: nothing is consumed before a valid rule set is loaded.",
    ),
    (
        "http_listen",
        "Address of the HTTP listener: REST API, `/metrics`, `/healthz`, `/readyz`, `/status`.",
    ),
    (
        "api_tokens_file",
        "File of `name:token` or `name:token:read` lines for the REST API. Empty: the API answers 503.",
    ),
    (
        "guarantee",
        "`\"at-least-once\"` or `\"exactly-once\"` (Kafka transactions: outputs and input offsets committed together; a `read_committed` reader sees each output once).",
    ),
    (
        "transactional_id",
        "Exactly-once only: the producer's `transactional.id`, stable across restarts and unique per instance. Empty: `bouncer-<group>-<host name>` (the pod name in Kubernetes).",
    ),
    (
        "on_missing_offset",
        "Where a partition without a committed offset starts: `\"earliest\"`, `\"latest\"` or `\"fail\"`.",
    ),
    (
        "forward_partitioning",
        "`\"same\"`: forward and retry records go to the input's partition number (those topics need at least as many partitions, checked at start); `\"key\"`: by key, murmur2 as Java clients do.",
    ),
    (
        "max_event_bytes",
        "Largest event accepted, in bytes; larger ones become dead letters (`too-large`). Must fit the producer's `message.max.bytes` with 64 KiB to spare.",
    ),
    (
        "log_outcomes",
        "`\"each\"`: one structured log record per failed or deferred delivery; `\"none\"`: no such records.",
    ),
    (
        "log_format",
        "`\"text\"`: human-readable log lines; `\"json\"`: one JSON object per line. Logging never blocks: lines that do not fit the buffer are dropped and counted (`bouncer_log_lines_dropped_total`).",
    ),
    (
        "stall_after",
        "`/status` reports consumption as stalled when there is lag and no event has been consumed for this long.",
    ),
    (
        "fetch_start_timeout",
        "An assigned input partition that has not started fetching after this long (librdkafka can leave one waiting for its committed offset for ever after a group coordinator error) ends the run: the pipeline shuts down (commits, leaves the group) and starts again with new clients (`bouncer_pipeline_restarts_total{reason=\"fetch-stuck\"}`). Exactly once, `transaction.timeout.ms` is added.",
    ),
    (
        "max_rule_series",
        "Most per-rule metric series; matches of further rules are counted under `rule=\"(other)\"`.",
    ),
    (
        "shutdown_timeout",
        "After SIGTERM: stop fetching, finish and commit what is in flight, and exit at the latest after this long.",
    ),
    (
        "max_in_flight",
        "Most events consumed and not yet acknowledged per instance; above it input partitions are paused.",
    ),
    (
        "commit_interval",
        "At least once: how often the offsets of fully acknowledged events are committed; every 10th commit sends every partition's position again, changed or not, so that a commit that failed (e.g. during a rebalance) does not leave an idle partition's last events uncommitted.",
    ),
    (
        "transaction_interval",
        "Exactly once: how long a transaction collects events before it commits (outputs become visible to `read_committed` readers then, so this is about the latency exactly once adds). At most half of `transaction.timeout.ms` (default 10000).",
    ),
    (
        "transaction_max_events",
        "Exactly once: a transaction also commits once it holds this many events.",
    ),
    (
        "max_api_rules",
        "Most API rules in force at once; a POST of a new rule above it is refused.",
    ),
    (
        "api_expired_retention",
        "How long an expired API rule stays listed before it is removed from the control topic.",
    ),
    (
        "topics.input",
        "Delivery events to check (what the MTA's queue writes).",
    ),
    (
        "topics.forward",
        "Events no enforce rule stopped, unchanged (what the sender reads).",
    ),
    (
        "topics.results",
        "A result record for every failed or deferred delivery.",
    ),
    (
        "topics.retry",
        "Deferred deliveries, with the attempt appended, for the MTA's retry machinery. Must differ from `topics.input`.",
    ),
    (
        "topics.dead_letter",
        "Invalid events and records that could not be produced, with `bouncer-error`.",
    ),
    (
        "topics.control",
        "Compacted topic carrying API rules to every instance; created if missing (1 partition, `cleanup.policy=compact`).",
    ),
];

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md")
}

/// Every setting of `Config` except the free-form `[kafka]` maps, as
/// (dotted path, default) in the order the serialised file has them.
fn settings() -> Vec<(String, toml::Value)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in defaults_file().lines() {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']').to_owned();
        } else if let Some((key, value)) = line.split_once(" = ") {
            let path = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            };
            let value: toml::Table = toml::from_str(&format!("v = {value}")).expect("a TOML value");
            out.push((path, value["v"].clone()));
        }
    }
    out.retain(|(path, _)| !path.starts_with("kafka"));
    out
}

fn env_name(path: &str) -> String {
    format!("BOUNCER_{}", path.to_ascii_uppercase().replace('.', "__"))
}

fn description(path: &str) -> &'static str {
    DESCRIPTIONS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, d)| *d)
        .unwrap_or_else(|| {
            panic!(
                "setting `{path}` has no description: add one to DESCRIPTIONS in \
                 tests/config_reference.rs, then run BOUNCER_BLESS=1 cargo test --test config_reference"
            )
        })
}

/// The generated block, between the markers.
fn render() -> String {
    let mut s = String::new();
    s.push_str(BEGIN);
    s.push_str(
        "\n\n| setting | environment variable | default | what it does |\n|---|---|---|---|\n",
    );
    for (path, value) in settings() {
        s.push_str(&format!(
            "| `{path}` | `{}` | `{value}` | {} |\n",
            env_name(&path),
            description(&path)
        ));
    }
    s.push_str(
        "| `kafka.\"bootstrap.servers\"` | `BOUNCER_KAFKA__BOOTSTRAP_SERVERS` | none: required | Kafka brokers, `host:port,…`. |\n\
         | `kafka.\"<property>\"` | `BOUNCER_KAFKA__<PROPERTY>` | see below | Any librdkafka property, for every client (`sasl.password` → `BOUNCER_KAFKA__SASL_PASSWORD`). |\n\
         | `kafka.consumer.\"<property>\"` | `BOUNCER_KAFKA__CONSUMER__<PROPERTY>` | see below | librdkafka property for consumers only. |\n\
         | `kafka.producer.\"<property>\"` | `BOUNCER_KAFKA__PRODUCER__<PROPERTY>` | see below | librdkafka property for producers only. |\n",
    );
    s.push_str(
        "\nDurations take `ms`, `s`, `m`, `h`, `day` (`\"20s\"`, `\"1m 30s\"`, `\"1day\"`). In an environment variable \
         under `kafka`, the last part is lower-cased and `_` becomes `.`.\n\n\
         bouncer's librdkafka defaults, applied before `[kafka]`, which `[kafka.producer]` and \
         `[kafka.consumer]` then override:\n\n| client | property | default |\n|---|---|---|\n",
    );
    for (key, value) in PRODUCER_DEFAULTS {
        s.push_str(&format!("| producer | `{key}` | `{value}` |\n"));
    }
    for (key, value) in CONSUMER_DEFAULTS {
        s.push_str(&format!("| consumer | `{key}` | `{value}` |\n"));
    }
    s.push_str(
        "\nProperties bouncer sets itself to keep its guarantees; setting one under any \
         `[kafka…]` section is a configuration error naming it:\n",
    );
    let owned: Vec<String> = OWNED_PROPERTIES.iter().map(|p| format!("`{p}`")).collect();
    s.push_str(&owned.join(", "));
    s.push_str(".\n\nEvery setting at its default, as a file (add `\"bootstrap.servers\"` under `[kafka]`):\n\n```toml\n");
    s.push_str(&defaults_file());
    s.push_str("```\n\n");
    s.push_str(END);
    s
}

/// `Config::default()` as a TOML file, with the `[kafka]` table the
/// brokers go in (the serialiser leaves an empty table out).
fn defaults_file() -> String {
    let text = toml::to_string(&Config::default()).expect("the configuration serialises");
    if text.contains("\n[kafka]\n") {
        text
    } else {
        text.replacen("[kafka.", "[kafka]\n\n[kafka.", 1)
    }
}

fn split(doc: &str) -> (&str, &str, &str) {
    let start = doc.find(BEGIN).unwrap_or_else(|| {
        panic!("docs/operations.md lacks the line {BEGIN}");
    });
    let end = doc[start..]
        .find(END)
        .map(|i| start + i + END.len())
        .unwrap_or_else(|| panic!("docs/operations.md lacks the line {END}"));
    (&doc[..start], &doc[start..end], &doc[end..])
}

#[test]
fn operations_doc_has_the_generated_configuration_reference() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).expect("docs/operations.md is readable");
    let (before, block, after) = split(&doc);
    let fresh = render();
    if block == fresh {
        return;
    }
    if std::env::var_os("BOUNCER_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, format!("{before}{fresh}{after}"))
            .expect("docs/operations.md is writable");
        eprintln!("rewrote the configuration reference in {}", path.display());
        return;
    }
    let first_difference = block
        .lines()
        .zip(fresh.lines())
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("\n  document: {a}\n  expected: {b}"))
        .unwrap_or_else(|| "\n  (one is a prefix of the other)".to_owned());
    panic!(
        "the configuration reference in docs/operations.md is out of date with src/config.rs; \
         regenerate it with: BOUNCER_BLESS=1 cargo test --test config_reference{first_difference}"
    );
}

#[test]
fn every_description_names_a_setting() {
    let paths: Vec<String> = settings().into_iter().map(|(p, _)| p).collect();
    for (path, _) in DESCRIPTIONS {
        assert!(
            paths.iter().any(|p| p == path),
            "DESCRIPTIONS in tests/config_reference.rs names `{path}`, which is no setting of Config"
        );
    }
}

const BOOTSTRAP: &str = "[kafka]\n\"bootstrap.servers\" = \"k:9092\"\n";

#[test]
fn the_documented_file_loads_as_the_defaults() {
    let text = defaults_file().replacen("[kafka]\n", BOOTSTRAP, 1);
    let loaded = Config::from_parts(&text, Vec::new()).expect("the documented defaults load");
    let mut expected = Config::default();
    expected
        .kafka
        .common
        .insert("bootstrap.servers".into(), "k:9092".into());
    assert_eq!(loaded, expected);
}

#[test]
fn every_documented_variable_sets_its_setting() {
    let base = Config::from_parts(BOOTSTRAP, Vec::new()).unwrap();
    for (path, value) in settings() {
        // A value different from the default, in the form the variable takes.
        let text = match &value {
            toml::Value::String(s) => match path.as_str() {
                "http_listen" => "127.0.0.1:1".to_owned(),
                "guarantee" => "exactly-once".to_owned(),
                "on_missing_offset" => "fail".to_owned(),
                "forward_partitioning" => "key".to_owned(),
                "log_outcomes" => "none".to_owned(),
                "log_format" => "json".to_owned(),
                // Durations ("20s", "1day").
                _ if s.starts_with(|c: char| c.is_ascii_digit()) => "7s".to_owned(),
                _ => "changed.by.env".to_owned(),
            },
            toml::Value::Integer(i) => (i - 1).to_string(),
            other => panic!(
                "setting `{path}` has a {} default; teach this test its form",
                other.type_str()
            ),
        };
        let loaded = Config::from_parts(BOOTSTRAP, vec![(env_name(&path), text.clone())])
            .unwrap_or_else(|e| {
                panic!(
                    "{}={text}: {e} (a new setting with named values? add one of them to this test)",
                    env_name(&path)
                )
            });
        assert_ne!(
            loaded,
            base,
            "{}={text} did not change the configuration",
            env_name(&path)
        );
    }
}
