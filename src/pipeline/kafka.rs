//! Kafka clients with bouncer's settings, and the start-up topic checks.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;

use crate::config::{Config, ConfigError, OnMissingOffset, Partitioning};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// librdkafka logs warnings and errors, or everything when the user set its
/// `debug` property (e.g. `debug = "cgrp,eos"` under `[kafka]`): those lines
/// go to bouncer's log with the target `librdkafka` at level debug, so
/// `RUST_LOG=info,librdkafka=debug` shows them.
pub fn set_log_level(client: &mut ClientConfig) {
    let level = if client.get("debug").is_some_and(|d| !d.trim().is_empty()) {
        rdkafka::config::RDKafkaLogLevel::Debug
    } else {
        rdkafka::config::RDKafkaLogLevel::Warning
    };
    client.set_log_level(level);
}

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
    set_log_level(&mut client);
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
    set_log_level(&mut client);
    client
}

/// This instance's `transactional.id` (exactly once): the configured
/// `transactional_id`, or one derived from the group and the host (pod)
/// name, which a StatefulSet keeps across restarts.
pub fn transactional_id(config: &Config, instance: &str) -> String {
    if config.transactional_id.trim().is_empty() {
        format!("bouncer-{}-{instance}", config.group)
    } else {
        config.transactional_id.trim().to_owned()
    }
}

/// librdkafka's `batch.size` when nobody sets it.
const LIBRDKAFKA_BATCH_SIZE: usize = 1_000_000;

/// What the start-up checks learnt about the topics.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    pub input_partitions: usize,
    /// A producer `batch.size` that keeps every batch within the output
    /// topics' `max.message.bytes`, when librdkafka's default is above it.
    pub batch_size: Option<usize>,
}

impl TopicLayout {
    /// `config` with what the topics require applied.
    pub fn fit(&self, mut config: Config) -> Config {
        if let Some(size) = self.batch_size {
            config
                .kafka
                .producer
                .insert("batch.size".into(), size.to_string());
        }
        config
    }
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
    let batch_size = if check_control_config {
        batch_size_for(config, &admin)?
    } else {
        None
    };
    Ok(TopicLayout {
        input_partitions,
        batch_size,
    })
}

/// The broker refuses a whole batch larger than the topic's
/// `max.message.bytes`, and librdkafka never splits it: every record batched
/// with an oversize one would fail with it and go to the dead-letter topic.
/// A `batch.size` below the smallest limit of the output topics keeps an
/// oversize record alone in its batch, so that only it is refused. Returns
/// the `batch.size` to use when librdkafka's default is too large; a larger
/// `batch.size` set by the user is an error naming it.
fn batch_size_for(
    config: &Config,
    admin: &AdminClient<DefaultClientContext>,
) -> Result<Option<usize>, ConfigError> {
    let t = &config.topics;
    let outputs = [&t.forward, &t.results, &t.retry, &t.dead_letter];
    let resources: Vec<ResourceSpecifier<'_>> = outputs
        .iter()
        .map(|name| ResourceSpecifier::Topic(name))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    let results = runtime
        .block_on(admin.describe_configs(&resources, &options))
        .map_err(|e| {
            ConfigError::new("topics", format!("cannot describe the output topics: {e}"))
        })?;
    let smallest = outputs
        .iter()
        .zip(results)
        .filter_map(|(name, result)| {
            let limit = result
                .ok()?
                .get("max.message.bytes")?
                .value
                .as_deref()?
                .parse::<usize>()
                .ok()?;
            Some((limit, *name))
        })
        .min();
    let Some((limit, topic)) = smallest else {
        return Ok(None);
    };
    // Room for a batch's header and for compression that cannot shrink the
    // records (lz4 adds up to 1/255 of the input).
    let fits = limit.saturating_sub(limit / 100 + 1024).max(1);
    let setting = if config.kafka.producer.contains_key("batch.size") {
        "kafka.producer.\"batch.size\""
    } else {
        "kafka.\"batch.size\""
    };
    match config.producer_property("batch.size") {
        Some(set) => match set.parse::<usize>() {
            Ok(set) if set > limit => Err(ConfigError::new(
                setting,
                format!(
                    "is {set}, but topic \"{topic}\" takes batches of at most {limit} bytes \
                     (max.message.bytes); a larger batch is refused whole, with every record in it; \
                     set it to at most {fits}"
                ),
            )),
            _ => Ok(None),
        },
        None if LIBRDKAFKA_BATCH_SIZE > fits => {
            tracing::info!(
                topic,
                max_message_bytes = limit,
                batch_size = fits,
                "producer batches limited to the output topics' max.message.bytes"
            );
            Ok(Some(fits))
        }
        None => Ok(None),
    }
}

fn admin_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in &config.kafka.common {
        client.set(k, v);
    }
    set_log_level(&mut client);
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
