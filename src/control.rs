//! API rules on the compacted control topic (SPEC §7).
//!
//! Every instance reads the whole topic without a consumer group and keeps
//! the API rules it holds merged into the live rule set; a POST on any
//! instance therefore reaches all of them. Record key = rule id, value =
//! `{"v": 1, "rule": {…}, "created_by": …, "created_at": …}`, tombstone =
//! deleted. Each record is validated on its own: a bad one is skipped,
//! counted and listed, and never blocks the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::api::body::rule_json;
use crate::config::Config;
use crate::pipeline::broker_watch::BrokerWatch;
use crate::reload::RuleStore;
use crate::rules::{Node, Origin, Rule, Source, Value, validate_rule};

/// The control record format this version writes and reads.
pub const VERSION: u64 = 1;

/// A control record that was skipped, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub error: String,
}

/// What every part of the process knows about the control topic.
#[derive(Default)]
pub struct ControlState {
    /// Read up to the end offsets taken at start.
    pub caught_up: AtomicBool,
    rules: Mutex<BTreeMap<String, Rule>>,
    rejected: Mutex<BTreeMap<String, Rejected>>,
    pub rejected_total: AtomicU64,
    /// Next offset to apply, per partition: a writer waits until its record
    /// is applied here.
    applied: Mutex<HashMap<i32, i64>>,
    changed: Option<watch::Sender<u64>>,
}

impl ControlState {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(0);
        ControlState {
            changed: Some(tx),
            ..Default::default()
        }
    }

    pub fn api_rules(&self) -> Vec<Rule> {
        lock(&self.rules).values().cloned().collect()
    }

    pub fn api_rule_count(&self) -> usize {
        lock(&self.rules).len()
    }

    /// Rejected records still in the topic (a later valid record or a
    /// tombstone for the key clears them).
    pub fn rejected(&self) -> Vec<Rejected> {
        lock(&self.rejected).values().cloned().collect()
    }

    pub fn is_applied(&self, partition: i32, offset: i64) -> bool {
        lock(&self.applied)
            .get(&partition)
            .is_some_and(|&next| next > offset)
    }

    /// Waits until the record at `offset` has been applied, or `timeout`.
    pub async fn wait_applied(&self, partition: i32, offset: i64, timeout: Duration) -> bool {
        let Some(tx) = &self.changed else {
            return false;
        };
        let mut rx = tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_applied(partition, offset) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return self.is_applied(partition, offset);
            }
        }
    }

    fn notify(&self) {
        if let Some(tx) = &self.changed {
            tx.send_modify(|n| *n += 1);
        }
    }
}

/// A control client's watch for being left with no broker (see
/// [`crate::pipeline::broker_watch`]): set by the first statistics report
/// that lists none, and the client is then replaced. The pipeline waits
/// [`crate::pipeline::broker_watch::NO_BROKER_TIMEOUT`] before it restarts,
/// since a restart processes events again; a new control client costs only
/// a connection, and a POST waits for both of them.
struct Stranded {
    watch: Mutex<BrokerWatch>,
    stranded: AtomicBool,
}

impl Default for Stranded {
    fn default() -> Stranded {
        Stranded {
            watch: Mutex::new(BrokerWatch::new(Duration::ZERO)),
            stranded: AtomicBool::new(false),
        }
    }
}

impl Stranded {
    fn observe(&self, statistics: &rdkafka::statistics::Statistics) {
        if lock(&self.watch)
            .observe_report(Instant::now(), statistics)
            .is_some()
        {
            self.stranded.store(true, Ordering::Release);
        }
    }

    fn is_set(&self) -> bool {
        self.stranded.load(Ordering::Acquire)
    }
}

/// Keeps librdkafka's fetch positions, which move past compaction gaps and
/// transaction markers that no record reports.
#[derive(Default)]
struct ControlCtx {
    fetch_positions: Mutex<HashMap<i32, i64>>,
    stranded: Stranded,
}

impl rdkafka::client::ClientContext for ControlCtx {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.stranded.observe(&statistics);
        let mut positions = lock(&self.fetch_positions);
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.next_offset >= 0 {
                    positions.insert(*partition, p.next_offset);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ControlCtx {}

type ControlConsumer = BaseConsumer<ControlCtx>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value of a control record for `rule`.
pub fn record_value(rule: &Rule) -> String {
    json!({
        "v": VERSION,
        "rule": rule_json(rule),
        "created_by": rule.created_by,
        "created_at": rule.created_at.map(|t| t.to_rfc3339()),
    })
    .to_string()
}

/// Validates one control record on its own.
pub fn parse_record(key: &str, value: &[u8]) -> Result<Rule, String> {
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let version = json.get("v").and_then(|v| v.as_u64());
    if version != Some(VERSION) {
        return Err(format!(
            "unknown control record version {:?}; this bouncer reads v{VERSION}",
            json.get("v")
        ));
    }
    let rule = json.get("rule").ok_or("no \"rule\" object")?;
    let node = Node::from_serde_json(rule);
    let Value::Table(table) = node.value else {
        return Err("\"rule\" is not an object".into());
    };
    let mut rule = validate_rule(&table, 0..0, Origin::Api, Source::Api).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    if rule.id != key {
        return Err(format!(
            "key {key:?} differs from the rule's id {:?}",
            rule.id
        ));
    }
    rule.created_by = json
        .get("created_by")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    rule.created_at = json
        .get("created_at")
        .and_then(|v| v.as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(rule)
}

/// Writes control records with its own idempotent producer (never the
/// pipeline's).
pub struct ControlWriter {
    client: ClientConfig,
    /// Replaced when it has been left with no broker; its watch is shared
    /// with its context (rust-rdkafka hides a future producer's context).
    producer: Mutex<(Arc<WriterProducer>, Arc<Stranded>)>,
    topic: String,
}

struct WriterCtx {
    stranded: Arc<Stranded>,
}

impl rdkafka::client::ClientContext for WriterCtx {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.stranded.observe(&statistics);
    }
}

type WriterProducer = FutureProducer<WriterCtx>;

#[derive(Debug, thiserror::Error)]
#[error("kafka unavailable: {0}")]
pub struct Unavailable(pub String);

impl ControlWriter {
    pub fn new(config: &Config) -> Result<Self, rdkafka::error::KafkaError> {
        let mut client = ClientConfig::new();
        for (k, v) in &config.kafka.common {
            client.set(k, v);
        }
        for (k, v) in &config.kafka.producer {
            client.set(k, v);
        }
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            // A POST answers 503 rather than hang when Kafka is away.
            .set("message.timeout.ms", "5000");
        if client.get("statistics.interval.ms").is_none() {
            client.set("statistics.interval.ms", "5000");
        }
        crate::pipeline::kafka::set_log_level(&mut client);
        let producer = Self::create(&client)?;
        Ok(ControlWriter {
            client,
            producer: Mutex::new(producer),
            topic: config.topics.control.clone(),
        })
    }

    fn create(
        client: &ClientConfig,
    ) -> Result<(Arc<WriterProducer>, Arc<Stranded>), rdkafka::error::KafkaError> {
        let stranded = Arc::new(Stranded::default());
        let ctx = WriterCtx {
            stranded: stranded.clone(),
        };
        Ok((Arc::new(client.create_with_context(ctx)?), stranded))
    }

    /// The producer to write with: a new one if the current one has been
    /// left with no broker.
    fn producer(&self) -> Arc<WriterProducer> {
        let mut producer = lock(&self.producer);
        if producer.1.is_set() {
            match Self::create(&self.client) {
                Ok(new) => {
                    tracing::error!(
                        topic = %self.topic,
                        "the control topic's producer knows no Kafka broker \
                         (confluentinc/librdkafka#5301): replaced by a new one"
                    );
                    *producer = new;
                }
                Err(e) => tracing::warn!(error = %e, "cannot create the control topic's producer"),
            }
        }
        producer.0.clone()
    }

    /// Writes a rule (or, with `None`, a tombstone for `id`); returns where.
    pub async fn write(&self, id: &str, rule: Option<&Rule>) -> Result<(i32, i64), Unavailable> {
        let value = rule.map(record_value);
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&self.topic).key(id);
        if let Some(value) = value.as_deref() {
            record = record.payload(value);
        }
        let producer = self.producer();
        match producer.send(record, Duration::from_secs(5)).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((e, _)) => Err(Unavailable(e.to_string())),
        }
    }

    pub fn flush(&self) {
        let producer = lock(&self.producer).0.clone();
        let _ = producer.flush(Duration::from_secs(5));
    }
}

/// Tombstones API rules that expired more than `retention` ago, so the
/// control topic does not grow without bound. Every instance does it;
/// tombstoning twice is harmless.
pub async fn expire_api_rules(
    state: Arc<ControlState>,
    writer: Arc<ControlWriter>,
    retention: Duration,
) {
    // Look about twice per retention period, but at most once a second and
    // at least once a minute.
    let every = (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = Utc::now();
        for rule in state.api_rules() {
            let Some(expires) = rule.expires else {
                continue;
            };
            let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            if expires
                .checked_add_signed(retention)
                .is_some_and(|t| t <= now)
            {
                match writer.write(&rule.id, None).await {
                    Ok(_) => {
                        tracing::info!(target: "audit", action = "expire", rule = %rule.id, "expired api rule tombstoned")
                    }
                    Err(e) => {
                        tracing::warn!(rule = %rule.id, error = %e, "cannot tombstone an expired api rule")
                    }
                }
            }
        }
    }
}

/// Reads the control topic from the beginning, forever: applies every
/// record to `state` and publishes the API rules into `store`.
pub fn spawn_reader(
    config: &Config,
    store: Arc<RuleStore>,
    state: Arc<ControlState>,
    shutdown: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let mut client = ClientConfig::new();
    for (k, v) in &config.kafka.common {
        client.set(k, v);
    }
    for (k, v) in &config.kafka.consumer {
        client.set(k, v);
    }
    // Assigned, not subscribed: no group membership, no commits.
    client
        .set("group.id", format!("{}.control-reader", config.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "500");
    crate::pipeline::kafka::set_log_level(&mut client);
    let consumer: ControlConsumer = client
        .create_with_context(ControlCtx::default())
        .map_err(|e| e.to_string())?;
    let topic = config.topics.control.clone();
    std::thread::Builder::new()
        .name("bouncer-control".into())
        .spawn(move || read_loop(&client, consumer, &topic, &store, &state, &shutdown))
        .map_err(|e| e.to_string())
}

/// A new consumer for `client`, assigned every partition of `end` from the
/// position after the last record applied: the reader's replacement for one
/// left with no broker.
fn replace(
    client: &ClientConfig,
    topic: &str,
    state: &ControlState,
    end: &BTreeMap<i32, i64>,
) -> Result<ControlConsumer, rdkafka::error::KafkaError> {
    let consumer: ControlConsumer = client.create_with_context(ControlCtx::default())?;
    let applied = lock(&state.applied).clone();
    let mut tpl = TopicPartitionList::new();
    for &partition in end.keys() {
        let offset = applied
            .get(&partition)
            .map_or(Offset::Beginning, |&next| Offset::Offset(next));
        tpl.add_partition_offset(topic, partition, offset)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

fn read_loop(
    client: &ClientConfig,
    mut consumer: ControlConsumer,
    topic: &str,
    store: &RuleStore,
    state: &ControlState,
    shutdown: &AtomicBool,
) {
    // The end offsets at start: readiness means having read up to them.
    let end = loop {
        match end_offsets(&consumer, topic) {
            Ok(end) => break end,
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read the control topic's end offsets; retrying");
                if shutdown.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let mut tpl = TopicPartitionList::new();
    for &partition in end.keys() {
        let _ = tpl.add_partition_offset(topic, partition, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(topic, error = %e, "cannot assign the control topic");
        return;
    }
    let started = Instant::now();
    while !shutdown.load(Ordering::Acquire) {
        if consumer.context().stranded.is_set() {
            match replace(client, topic, state, &end) {
                Ok(new) => {
                    tracing::error!(
                        topic,
                        "the control topic's reader knows no Kafka broker \
                         (confluentinc/librdkafka#5301): replaced by a new one, reading on from \
                         the last record applied"
                    );
                    consumer = new;
                }
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot replace the control topic's reader");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let mut changed = false;
        let mut positions: HashMap<i32, i64> = HashMap::new();
        let mut batch = 0;
        let mut next = consumer.poll(Duration::from_millis(200));
        while let Some(result) = next {
            match result {
                Ok(message) => {
                    changed |= apply(state, &message);
                    positions.insert(message.partition(), message.offset() + 1);
                }
                Err(e) => tracing::warn!(topic, error = %e, "control topic read error"),
            }
            batch += 1;
            // Apply a large backlog in batches, not one rebuild per record.
            next = if batch < 10_000 {
                consumer.poll(Duration::ZERO)
            } else {
                None
            };
        }
        if changed {
            store.set_api_rules(state.api_rules());
        }
        if !positions.is_empty() {
            // Only now is the batch in force: writers waiting on it may answer.
            lock(&state.applied).extend(positions);
            state.notify();
        }
        if !state.caught_up.load(Ordering::Acquire) && caught_up(&consumer, state, &end) {
            state.caught_up.store(true, Ordering::Release);
            tracing::info!(
                topic,
                api_rules = state.api_rule_count(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "control topic read to its end"
            );
        }
    }
}

/// Applies one record; true if the API rule set changed.
fn apply(state: &ControlState, message: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        reject(state, "", message, "record without a UTF-8 key".into());
        return false;
    };
    let Some(value) = message.payload() else {
        lock(&state.rejected).remove(key);
        return lock(&state.rules).remove(key).is_some();
    };
    match parse_record(key, value) {
        Ok(rule) => {
            lock(&state.rejected).remove(key);
            let mut rules = lock(&state.rules);
            if rules.get(key) == Some(&rule) {
                return false;
            }
            rules.insert(key.to_owned(), rule);
            true
        }
        Err(error) => {
            reject(state, key, message, error);
            false
        }
    }
}

fn reject(
    state: &ControlState,
    key: &str,
    message: &rdkafka::message::BorrowedMessage<'_>,
    error: String,
) {
    tracing::warn!(key, partition = message.partition(), offset = message.offset(), error = %error, "invalid control record skipped");
    state.rejected_total.fetch_add(1, Ordering::Relaxed);
    lock(&state.rejected).insert(
        key.to_owned(),
        Rejected {
            key: key.to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            error,
        },
    );
}

fn end_offsets(consumer: &ControlConsumer, topic: &str) -> Result<BTreeMap<i32, i64>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(format!("topic \"{topic}\" has no partitions"));
    }
    let mut end = BTreeMap::new();
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        end.insert(partition, high);
    }
    Ok(end)
}

/// At or past the end offsets taken at start, on every partition: by the
/// last record applied, or by the fetch position (compaction and transaction
/// markers leave gaps no record reports).
fn caught_up(consumer: &ControlConsumer, state: &ControlState, end: &BTreeMap<i32, i64>) -> bool {
    let fetched = lock(&consumer.context().fetch_positions).clone();
    let applied = lock(&state.applied).clone();
    end.iter().all(|(partition, &end)| {
        let position = applied
            .get(partition)
            .copied()
            .unwrap_or(0)
            .max(fetched.get(partition).copied().unwrap_or(0));
        end <= 0 || position >= end
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord};

    use super::*;

    /// A reader replaced after being left with no broker goes on after the
    /// last record applied on each partition, from the start on one where
    /// nothing was applied yet: nothing is skipped, nothing applied twice.
    #[test]
    fn a_replaced_reader_reads_on_after_the_last_record_applied() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("control", 2, 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        for (partition, count) in [(0, 3), (1, 2)] {
            for n in 0..count {
                let key = format!("rule-{partition}-{n}");
                let record = BaseRecord::to("control")
                    .partition(partition)
                    .key(&key)
                    .payload("{}");
                producer.send(record).map_err(|(e, _)| e).expect("queued");
            }
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");

        let state = ControlState::new();
        lock(&state.applied).insert(0, 2);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "control-test")
            .set("enable.auto.commit", "false");
        let end = BTreeMap::from([(0, 3), (1, 2)]);
        let consumer = replace(&client, "control", &state, &end).expect("replaced");
        let mut read = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while read.len() < 3 && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("message");
                read.insert((message.partition(), message.offset()));
            }
        }
        // Nothing more comes.
        let extra = consumer.poll(Duration::from_millis(500));
        assert!(
            extra.is_none(),
            "read again: {:?}",
            extra.map(|m| m.map(|m| m.offset()))
        );
        assert_eq!(read, BTreeSet::from([(0, 2), (1, 0), (1, 1)]));
    }
}
