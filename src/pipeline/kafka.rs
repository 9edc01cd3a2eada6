//! Kafka clients with bouncer's settings, and the start-up topic checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;

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

/// Why a start-up check did not pass.
#[derive(Debug)]
pub enum CheckError {
    /// The configuration or the topics are wrong: the error names what to
    /// fix, and checking again cannot help.
    Refused(ConfigError),
    /// Kafka did not answer in time or is not ready yet (unreachable,
    /// restarting, electing a leader or a coordinator): checked again.
    Unavailable(ConfigError),
}

impl CheckError {
    pub fn error(&self) -> &ConfigError {
        match self {
            CheckError::Refused(e) | CheckError::Unavailable(e) => e,
        }
    }

    /// A failed request: unavailable if its error passes by itself.
    fn request(setting: &str, what: &str, error: &KafkaError) -> CheckError {
        let code = match error {
            KafkaError::AdminOp(code) | KafkaError::MetadataFetch(code) => Some(*code),
            other => other.rdkafka_error_code(),
        };
        CheckError::with(
            code.is_some_and(is_transient),
            setting,
            format!("{what}: {error}"),
        )
    }

    /// An error the broker returned for one topic.
    fn topic(setting: &str, what: &str, code: RDKafkaErrorCode) -> CheckError {
        CheckError::with(is_transient(code), setting, format!("{what}: {code}"))
    }

    fn with(transient: bool, setting: &str, message: String) -> CheckError {
        let error = ConfigError::new(setting, message);
        if transient {
            CheckError::Unavailable(error)
        } else {
            CheckError::Refused(error)
        }
    }
}

/// Kafka errors that pass by themselves: no answer in time, no connection,
/// or a broker still electing a leader or loading a coordinator (as right
/// after it restarts). Anything else, such as a refused authorisation or an
/// invalid request, needs the operator.
pub fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::OperationTimedOut
            | C::RequestTimedOut
            | C::TimedOutQueue
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NetworkException
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::NotController
            | C::KafkaStorageError
            | C::ThrottlingQuotaExceeded
    )
}

/// The wait between two attempts against a Kafka that is away (start-up
/// checks, pipeline restarts): 1 s, doubling up to 30 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(30);

    /// The wait [`Backoff::sleep`] makes next.
    pub fn next(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the next wait, which then doubles; false as soon as
    /// `shutdown` is set.
    pub fn sleep(&mut self, shutdown: &AtomicBool) -> bool {
        let until = Instant::now() + self.next;
        while Instant::now() < until {
            if shutdown.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.next = (self.next * 2).min(Self::MAX);
        true
    }
}

/// [`check_topics_once`] until it passes or is refused: while Kafka is
/// unavailable (unreachable, restarting, slow to answer) the checks are made
/// again after a wait that doubles from 1 s to 30 s, `waiting` being told
/// each error and wait first. `Ok(None)` when `shutdown` is set meanwhile.
/// A pod started beside a broker that is restarting thus waits for it
/// instead of exiting.
pub fn check_topics(
    config: &Config,
    check_control_config: bool,
    shutdown: &AtomicBool,
    mut waiting: impl FnMut(&ConfigError, Duration),
) -> Result<Option<TopicLayout>, ConfigError> {
    let mut backoff = Backoff::default();
    loop {
        match check_topics_once(config, check_control_config) {
            Ok(layout) => return Ok(Some(layout)),
            Err(CheckError::Refused(error)) => return Err(error),
            Err(CheckError::Unavailable(error)) => {
                waiting(&error, backoff.next());
                if !backoff.sleep(shutdown) {
                    return Ok(None);
                }
            }
        }
    }
}

/// Checks the topics before anything is consumed (SPEC §5): input, forward,
/// results, retry and dead-letter must exist; forward and retry need at
/// least the input's partitions when `forward_partitioning = "same"`; the
/// control topic is created if missing and must be compacted.
/// `check_control_config` is false on the mock cluster, which has no
/// configuration API.
pub fn check_topics_once(
    config: &Config,
    check_control_config: bool,
) -> Result<TopicLayout, CheckError> {
    let admin: AdminClient<DefaultClientContext> = admin_config(config).create().map_err(|e| {
        CheckError::Refused(ConfigError::new(
            "kafka",
            format!("cannot create a Kafka client: {e}"),
        ))
    })?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|e| {
            CheckError::request("kafka.\"bootstrap.servers\"", "cannot reach Kafka", &e)
        })?;
    let t = &config.topics;
    let partitions = |setting: &str, name: &str| {
        partition_count(&metadata, name).map_err(|code| {
            CheckError::topic(setting, &format!("topic \"{name}\" is not available"), code)
        })
    };
    let mut found = Vec::new();
    for (setting, name) in [
        ("topics.input", &t.input),
        ("topics.forward", &t.forward),
        ("topics.results", &t.results),
        ("topics.retry", &t.retry),
        ("topics.dead_letter", &t.dead_letter),
    ] {
        match partitions(setting, name)? {
            Some(n) => found.push(n),
            None => {
                return Err(CheckError::Refused(ConfigError::new(
                    setting,
                    format!(
                        "topic \"{name}\" does not exist; create it (bouncer never auto-creates topics)"
                    ),
                )));
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
                return Err(CheckError::Refused(ConfigError::new(
                    setting,
                    format!(
                        "topic \"{name}\" has {n} partitions but the input has {input_partitions}; \
                         forward_partitioning = \"same\" needs at least as many (add partitions or set \"key\")"
                    ),
                )));
            }
        }
    }
    ensure_control_topic(
        config,
        &admin,
        partitions("topics.control", &t.control)?.is_some(),
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
) -> Result<Option<usize>, CheckError> {
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
        .map_err(|e| CheckError::request("topics", "cannot describe the output topics", &e))?;
    // A topic the broker cannot describe right now is checked again; one it
    // refuses to describe (no DescribeConfigs right) keeps librdkafka's
    // batch size, as a topic without the setting does.
    for (name, result) in outputs.iter().zip(&results) {
        if let Err(code) = result {
            if is_transient(*code) {
                return Err(CheckError::topic(
                    "topics",
                    &format!("cannot describe topic \"{name}\""),
                    *code,
                ));
            }
            tracing::warn!(
                topic = %name,
                error = %code,
                "cannot read the topic's max.message.bytes; producer batches are not fitted to it"
            );
        }
    }
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
            Ok(set) if set > limit => Err(CheckError::Refused(ConfigError::new(
                setting,
                format!(
                    "is {set}, but topic \"{topic}\" takes batches of at most {limit} bytes \
                     (max.message.bytes); a larger batch is refused whole, with every record in it; \
                     set it to at most {fits}"
                ),
            ))),
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

/// A topic's partitions in `metadata`; `None` if it does not exist, the
/// broker's error if it exists and cannot be described now (a leader being
/// elected after a restart, a refused authorisation).
fn partition_count(metadata: &Metadata, topic: &str) -> Result<Option<usize>, RDKafkaErrorCode> {
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(t.partitions().len())),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            Ok(None)
        }
        Some(code) => Err(code),
    }
}

fn ensure_control_topic(
    config: &Config,
    admin: &AdminClient<DefaultClientContext>,
    exists: bool,
    check_config: bool,
) -> Result<(), CheckError> {
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
                CheckError::request(
                    "topics.control",
                    &format!("cannot create topic \"{name}\""),
                    &e,
                )
            })?;
        for result in results {
            if let Err((_, code)) = result
                && code != RDKafkaErrorCode::TopicAlreadyExists
            {
                // InvalidReplicationFactor: the cluster's default replication
                // factor is more brokers than are up, as while one restarts.
                return Err(CheckError::with(
                    is_transient(code) || code == RDKafkaErrorCode::InvalidReplicationFactor,
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
            CheckError::request(
                "topics.control",
                &format!("cannot describe topic \"{name}\""),
                &e,
            )
        })?;
    let policy = match results.into_iter().next() {
        Some(Ok(resource)) => resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_default(),
        Some(Err(code)) => {
            return Err(CheckError::topic(
                "topics.control",
                &format!("cannot describe topic \"{name}\""),
                code,
            ));
        }
        None => String::new(),
    };
    if !policy.split(',').any(|p| p.trim() == "compact") {
        return Err(CheckError::Refused(ConfigError::new(
            "topics.control",
            format!(
                "topic \"{name}\" has cleanup.policy={policy}; the control topic must be compacted \
                 (cleanup.policy=compact) or API rules would be lost"
            ),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_unavailable_brokers_are_waited_for_refusals_are_not() {
        use RDKafkaErrorCode as C;
        let admin_timeout = KafkaError::AdminOp(C::OperationTimedOut);
        assert!(matches!(
            CheckError::request("topics.control", "cannot describe topic", &admin_timeout),
            CheckError::Unavailable(_)
        ));
        let unreachable = KafkaError::MetadataFetch(C::BrokerTransportFailure);
        let error = CheckError::request(
            "kafka.\"bootstrap.servers\"",
            "cannot reach Kafka",
            &unreachable,
        );
        assert!(matches!(error, CheckError::Unavailable(_)));
        assert_eq!(error.error().setting, "kafka.\"bootstrap.servers\"");
        for refused in [
            KafkaError::AdminOp(C::TopicAuthorizationFailed),
            KafkaError::AdminOp(C::ClusterAuthorizationFailed),
            KafkaError::AdminOp(C::PolicyViolation),
            KafkaError::MetadataFetch(C::Authentication),
            KafkaError::AdminOpCreation("bad option".into()),
        ] {
            assert!(
                matches!(
                    CheckError::request("topics", "x", &refused),
                    CheckError::Refused(_)
                ),
                "{refused:?}"
            );
        }
        assert!(matches!(
            CheckError::topic("topics.forward", "x", C::LeaderNotAvailable),
            CheckError::Unavailable(_)
        ));
        assert!(matches!(
            CheckError::topic("topics.forward", "x", C::TopicAuthorizationFailed),
            CheckError::Refused(_)
        ));
    }
}
