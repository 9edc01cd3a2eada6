//! Kafka clients with bouncer's settings, and the start-up topic checks.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;

use crate::config::{Config, ConfigError, Guarantee, OnMissingOffset, Partitioning};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Consumer properties: the user's over bouncer's defaults, then the ones
/// bouncer owns.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in config.consumer_properties() {
        client.set(k, v);
    }
    let reset = match config.on_missing_offset {
        OnMissingOffset::Earliest => "earliest",
        OnMissingOffset::Latest => "latest",
        OnMissingOffset::Fail => "error",
    };
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", reset)
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Inputs written by transactional producers are read once committed.
        .set("isolation.level", "read_committed");
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    client
}

/// Producer properties: idempotent, `acks=all`, bouncer's batching defaults
/// under the user's settings.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in config.producer_properties() {
        client.set(k, v);
    }
    client.set("enable.idempotence", "true").set("acks", "all");
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    client
}

/// Settings accepted by the configuration but not implemented yet.
pub fn check_supported(config: &Config) -> Result<(), ConfigError> {
    if config.guarantee == Guarantee::ExactlyOnce {
        return Err(ConfigError::new(
            "guarantee",
            "\"exactly-once\" is not available in this version; use \"at-least-once\"",
        ));
    }
    Ok(())
}

/// What the start-up checks learnt about the topics.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    pub input_partitions: usize,
}

/// Checks the topics before anything is consumed (SPEC §5): input, forward,
/// results, retry and dead-letter must exist; forward and retry need at
/// least the input's partitions when `forward_partitioning = "same"`; the
/// control topic is created if missing and must be compacted.
/// `check_control_config` is false on the mock cluster, which has no
/// configuration API.
pub fn check_topics(
    config: &Config,
    check_control_config: bool,
) -> Result<TopicLayout, ConfigError> {
    let admin: AdminClient<DefaultClientContext> = admin_config(config)
        .create()
        .map_err(|e| ConfigError::new("kafka", format!("cannot create a Kafka client: {e}")))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|e| {
            ConfigError::new(
                "kafka.\"bootstrap.servers\"",
                format!("cannot reach Kafka: {e}"),
            )
        })?;
    let t = &config.topics;
    let partitions = |name: &str| partition_count(&metadata, name);
    let mut found = Vec::new();
    for (setting, name) in [
        ("topics.input", &t.input),
        ("topics.forward", &t.forward),
        ("topics.results", &t.results),
        ("topics.retry", &t.retry),
        ("topics.dead_letter", &t.dead_letter),
    ] {
        match partitions(name) {
            Some(n) => found.push(n),
            None => {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "topic \"{name}\" does not exist; create it (bouncer never auto-creates topics)"
                    ),
                ));
            }
        }
    }
    let input_partitions = found[0];
    if config.forward_partitioning == Partitioning::Same {
        for (setting, name, n) in [
            ("topics.forward", &t.forward, found[1]),
            ("topics.retry", &t.retry, found[3]),
        ] {
            if n < input_partitions {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "topic \"{name}\" has {n} partitions but the input has {input_partitions}; \
                         forward_partitioning = \"same\" needs at least as many (add partitions or set \"key\")"
                    ),
                ));
            }
        }
    }
    ensure_control_topic(
        config,
        &admin,
        partitions(&t.control).is_some(),
        check_control_config,
    )?;
    Ok(TopicLayout { input_partitions })
}

fn admin_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in &config.kafka.common {
        client.set(k, v);
    }
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    client
}

fn partition_count(metadata: &Metadata, topic: &str) -> Option<usize> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
}

fn ensure_control_topic(
    config: &Config,
    admin: &AdminClient<DefaultClientContext>,
    exists: bool,
    check_config: bool,
) -> Result<(), ConfigError> {
    let name = &config.topics.control;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    if !exists {
        let topic =
            NewTopic::new(name, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let results = runtime
            .block_on(admin.create_topics([&topic], &options))
            .map_err(|e| {
                ConfigError::new(
                    "topics.control",
                    format!("cannot create topic \"{name}\": {e}"),
                )
            })?;
        for result in results {
            if let Err((_, code)) = result
                && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
            {
                return Err(ConfigError::new(
                    "topics.control",
                    format!("cannot create topic \"{name}\": {code}"),
                ));
            }
        }
        tracing::info!(topic = %name, "created the compacted control topic");
        return Ok(());
    }
    if !check_config {
        return Ok(());
    }
    let results = runtime
        .block_on(admin.describe_configs([&ResourceSpecifier::Topic(name)], &options))
        .map_err(|e| {
            ConfigError::new(
                "topics.control",
                format!("cannot describe topic \"{name}\": {e}"),
            )
        })?;
    let policy = results
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .and_then(|resource| resource.get("cleanup.policy").and_then(|e| e.value.clone()))
        .unwrap_or_default();
    if !policy.split(',').any(|p| p.trim() == "compact") {
        return Err(ConfigError::new(
            "topics.control",
            format!(
                "topic \"{name}\" has cleanup.policy={policy}; the control topic must be compacted \
                 (cleanup.policy=compact) or API rules would be lost"
            ),
        ));
    }
    Ok(())
}
