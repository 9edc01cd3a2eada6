//! consume → decide → produce, at least once or exactly once.
//!
//! One thread runs the loop with a `BaseConsumer`, so rebalance callbacks run
//! on it too and may block to drain. Each consumed event is decided against
//! the live rule set, its output records are handed to an idempotent producer
//! (`acks=all`) without waiting, and the [`offsets::OffsetTracker`] advances a
//! partition's committable position only over events whose every output is
//! acknowledged. A bounded window of events is in flight; above it the
//! partitions are paused while the loop keeps polling, so the group never
//! evicts a slow instance.
//!
//! Failures: a record the broker refuses for good (too large, invalid) is
//! replaced by a dead letter; any other failed delivery rewinds its input
//! partition to the first unacknowledged event and re-processes from there,
//! in order (authorisation and missing-topic errors also pause the
//! partition for a while and show in `/status`).
//!
//! Exactly once ([`transaction`]): the same loop, with a transactional
//! producer; the outputs and the input positions are committed together in
//! one transaction every `transaction_interval`, and any failure aborts the
//! transaction and rewinds its partitions. A fatal client error (a fenced
//! or failed producer, a transaction whose outcome is unknown) ends the run
//! with [`PipelineError::Restart`]; the caller starts a new one with new
//! clients.

pub(crate) mod broker_watch;
mod fetch_watch;
pub mod kafka;
pub mod offsets;
pub mod output;
mod transaction;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use self::broker_watch::{BrokerWatch, NO_BROKER_TIMEOUT};
use self::fetch_watch::FetchWatch;
use self::offsets::{OffsetTracker, Ticket};
use self::output::{
    Destination, Input, InputHeaders, Meta, OutputRecord, Outputs, PartitionChoice,
};
use self::transaction::{Ended, Transactions};
use crate::config::{Config, Guarantee, LogOutcomes};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::reload::RuleStore;
use crate::rules::{Outcome, Rule};

/// How long a partition stays paused after an authorisation or
/// missing-topic error before it is tried again.
const ERROR_PAUSE: Duration = Duration::from_secs(5);
/// How long the loop waits for acknowledgements, without consuming, before
/// backpressure pauses the partitions.
const BACKPRESSURE_GRACE: Duration = Duration::from_millis(200);
/// Events processed between two rounds of housekeeping at most.
const HOUSEKEEPING_EVENTS: u32 = 64;
/// At least once, every this many commit intervals all positions are
/// committed again, changed or not (see [`Loop::commit_progress`]).
const FULL_COMMIT_EVERY: u32 = 10;
/// Pause after a retriable failure, so a dead broker is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long a wait for delivery reports sleeps between polls (see
/// [`await_deliveries`]).
const DELIVERY_WAIT_STEP: Duration = Duration::from_micros(200);

/// What `/status` shows of the pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineStatus {
    pub kafka_connected: bool,
    pub last_kafka_error: Option<String>,
    /// When `last_kafka_error` happened (UTC, RFC 3339): an error stays
    /// shown after the client recovers, so that one seen minutes ago is not
    /// taken for a current one.
    pub last_kafka_error_at: Option<String>,
    pub assigned: Vec<i32>,
    /// Partitions paused because of a produce error, with the error.
    pub partition_errors: BTreeMap<i32, String>,
    pub backpressure: bool,
    /// End offset minus the next offset to process.
    pub lag: BTreeMap<i32, i64>,
    pub in_flight: usize,
    /// Assigned partitions librdkafka has not started fetching, with their
    /// fetch state and for how many seconds (see `fetch_start_timeout`).
    pub not_fetching: BTreeMap<i32, String>,
}

/// State shared between the pipeline thread, its client callbacks and the
/// HTTP server.
pub struct Shared {
    status: Mutex<PipelineStatus>,
    /// Set once the pipeline is consuming.
    pub running: AtomicBool,
    /// When the last event was consumed, in ms since `epoch`.
    last_consumed_ms: AtomicU64,
    epoch: Instant,
    stall_after_ms: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            status: Mutex::default(),
            running: AtomicBool::new(false),
            last_consumed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stall_after_ms: AtomicU64::new(60_000),
        }
    }
}

impl PipelineStatus {
    fn kafka_error(&mut self, error: String) {
        self.last_kafka_error = Some(error);
        self.last_kafka_error_at =
            Some(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
}

impl Shared {
    pub fn status(&self) -> PipelineStatus {
        self.lock().clone()
    }

    fn consumed(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_consumed_ms.store(ms, Ordering::Relaxed);
    }

    /// Consumption is stalled: there is lag, and nothing has been consumed
    /// for `stall_after` (since start, if nothing ever was).
    pub fn stalled(&self) -> bool {
        let lag: i64 = self.lock().lag.values().sum();
        let idle_ms = (self.epoch.elapsed().as_millis() as u64)
            .saturating_sub(self.last_consumed_ms.load(Ordering::Relaxed));
        lag > 0 && idle_ms > self.stall_after_ms.load(Ordering::Relaxed)
    }

    /// The last Kafka error, as `/status` shows it.
    pub fn kafka_error(&self, error: String) {
        self.lock().kafka_error(error);
    }

    fn lock(&self) -> MutexGuard<'_, PipelineStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Pipeline settings that do not come from the configuration file.
#[derive(Debug, Clone)]
pub struct Options {
    /// This instance's name, in result entries.
    pub instance: String,
}

/// A delivery in flight: which event it belongs to and where it goes.
struct Pending {
    ticket: Ticket,
    destination: Destination,
    consumed_at: Instant,
}

/// A failed delivery, handed from the producer thread to the loop.
struct Failure {
    pending: Box<Pending>,
    error: KafkaError,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// The refused record's value, so its dead letter can keep it.
    payload: Option<Vec<u8>>,
}

struct ProducerCtx {
    tracker: Arc<Mutex<OffsetTracker>>,
    failures: Mutex<mpsc::Sender<Failure>>,
    metrics: Arc<Metrics>,
    /// At least once, an event is done when acknowledged; exactly once,
    /// when its transaction commits.
    observe_acks: bool,
    restart: Arc<RestartFlag>,
    /// Delivery reports handled so far, so that serving stops once a poll
    /// finds none.
    reports: AtomicU64,
    broker_watch: Mutex<BrokerWatch>,
}

impl ProducerCtx {
    /// Whether the producer's last statistics report listed no broker it
    /// can connect to (see [`broker_watch`]).
    fn knows_no_broker(&self) -> bool {
        lock(&self.broker_watch).knows_none()
    }
}

impl ClientContext for ProducerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
            // The idempotent or transactional producer cannot go on.
            tracing::error!(error = %error, reason, "fatal kafka producer error");
            self.restart
                .set(RestartReason::ProducerFatal, format!("{error}: {reason}"));
        } else {
            tracing::warn!(error = %error, reason, "kafka producer error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.metrics.client_statistics("producer", &statistics);
        watch_brokers(&self.broker_watch, &self.restart, "producer", &statistics);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(_) => {
                let current = lock(&self.tracker).acked(pending.ticket);
                if current && self.observe_acks {
                    self.metrics
                        .processing_duration
                        .observe(pending.consumed_at.elapsed().as_secs_f64());
                }
            }
            Err((error, message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                let failure = Failure {
                    pending,
                    error: error.clone(),
                    key: message.key().map(<[u8]>::to_vec),
                    headers,
                    payload: message.payload().map(<[u8]>::to_vec),
                };
                let _ = self
                    .failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send(failure);
            }
        }
    }
}

/// The log line of a failed or deferred delivery (SPEC §3).
pub fn log_stopped(outcome: Outcome, rule: &Rule, event: &Event<'_>, input: &Input<'_>) {
    tracing::info!(
        outcome = outcome.as_str(),
        rule = %rule.id,
        code = rule.code,
        domain = event.recipient_domain.as_deref().unwrap_or(""),
        tags = ?event.tags,
        input = %input.coordinates_display(),
        "delivery stopped"
    );
}

/// Polled by the loop thread itself (see [`serve_deliveries`]): the
/// delivery reports update the tracker without a second thread contending
/// for its lock or freeing what this one allocated.
type Producer_ = BaseProducer<ProducerCtx>;

/// Serves the producer's delivery reports until none is waiting.
fn serve_deliveries(producer: &Producer_) {
    let reports = &producer.context().reports;
    for _ in 0..1000 {
        let before = reports.load(Ordering::Relaxed);
        producer.poll(Duration::ZERO);
        if reports.load(Ordering::Relaxed) == before {
            return;
        }
    }
}

/// Serves delivery reports, waiting up to `max` for the first. Not
/// `producer.poll(max)`: rust-rdkafka's poll
/// serves events until the whole timeout has passed, asking librdkafka for
/// the rest rounded down to whole milliseconds, so once less than 1 ms is
/// left it polls without blocking: a `poll(1 ms)` spun for most of its
/// millisecond. In a drain, where the pipeline keeps waiting on
/// acknowledgements, its clock reads alone took 12% of the pipeline
/// thread's CPU (BENCHMARKS.md). This sleeps [`DELIVERY_WAIT_STEP`] between
/// polls instead.
fn await_deliveries(producer: &Producer_, max: Duration) {
    let reports = &producer.context().reports;
    let before = reports.load(Ordering::Relaxed);
    let deadline = Instant::now() + max;
    loop {
        serve_deliveries(producer);
        let now = Instant::now();
        if reports.load(Ordering::Relaxed) != before || now >= deadline {
            return;
        }
        std::thread::sleep(DELIVERY_WAIT_STEP.min(deadline - now));
    }
}

/// Ends the run when `client` has known no broker for [`NO_BROKER_TIMEOUT`]
/// (see [`broker_watch`]): its new clients bootstrap again.
fn watch_brokers(
    watch: &Mutex<BrokerWatch>,
    restart: &RestartFlag,
    client: &str,
    statistics: &Statistics,
) {
    let Some(lasted) = lock(watch).observe_report(Instant::now(), statistics) else {
        return;
    };
    if !restart.is_set() {
        restart.set(
            RestartReason::NoBrokers,
            format!(
                "the Kafka {client} has known no broker for {} s: librdkafka dropped every \
                 broker after a metadata response that listed none (confluentinc/librdkafka#5301)",
                lasted.as_secs()
            ),
        );
    }
}

struct ConsumerCtx {
    tracker: Arc<Mutex<OffsetTracker>>,
    producer: Arc<Producer_>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    input_topic: String,
    drain_timeout: Duration,
    backpressure: Arc<AtomicBool>,
    /// Exactly once: the transactions of this run.
    transactions: Option<Arc<Transactions>>,
    restart: Arc<RestartFlag>,
    fetch_watch: Mutex<FetchWatch>,
    broker_watch: Arc<Mutex<BrokerWatch>>,
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, statistics: Statistics) {
        self.metrics.client_statistics("consumer", &statistics);
        watch_brokers(&self.broker_watch, &self.restart, "consumer", &statistics);
        let mut status = self.shared.lock();
        status.kafka_connected = statistics.brokers.values().any(|b| b.state == "UP");
        let topic = statistics.topics.get(&self.input_topic);
        let states = status.assigned.iter().map(|p| {
            let state = topic
                .and_then(|t| t.partitions.get(p))
                .map(|p| p.fetch_state.as_str());
            (*p, state)
        });
        let now = Instant::now();
        let mut watch = lock(&self.fetch_watch);
        let stuck = watch.observe(now, status.kafka_connected, states);
        status.not_fetching = watch
            .waiting(now)
            .map(|(p, state, waited)| (p, format!("{state} for {} s", waited.as_secs())))
            .collect();
        if !stuck.is_empty() && !self.restart.is_set() {
            self.restart.set(
                RestartReason::FetchStuck,
                format!(
                    "input partitions {stuck:?} have been assigned for {} s without starting to \
                     fetch (librdkafka is not fetching their committed offsets; fetch_start_timeout)",
                    watch.timeout().as_secs()
                ),
            );
        }
        drop(watch);
        let Some(topic) = topic else {
            return;
        };
        for partition in &status.assigned.clone() {
            let Some(p) = topic.partitions.get(partition) else {
                continue;
            };
            let end = if p.ls_offset >= 0 {
                p.ls_offset
            } else {
                p.hi_offset
            };
            let next = if p.app_offset >= 0 {
                p.app_offset
            } else {
                p.committed_offset
            };
            if end >= 0 && next >= 0 {
                let lag = (end - next).max(0);
                status.lag.insert(*partition, lag);
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&partition.to_string()])
                    .set(lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka consumer error");
        let mut status = self.shared.lock();
        status.kafka_error(format!("{error}: {reason}"));
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            status.kafka_connected = false;
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                if self.restart.is_set() {
                    // Restarting after a fatal error: nothing can be
                    // committed with these clients.
                    tracing::warn!(?partitions, "partitions revoked while restarting");
                } else if let Some(transactions) = &self.transactions {
                    self.end_transaction_on_revoke(consumer, transactions, &partitions);
                } else if consumer.assignment_lost() {
                    // Another member may own these already: committing
                    // could move its position. Drop them.
                    tracing::warn!(?partitions, "assignment lost; nothing committed for it");
                } else {
                    // Finish what is in flight, then commit the revoked
                    // partitions so the next owner starts where we stopped.
                    let _ = self.producer.flush(self.drain_timeout);
                    let positions: Vec<(i32, i64)> = {
                        let tracker = lock(&self.tracker);
                        partitions
                            .iter()
                            .filter_map(|&p| tracker.position(p).map(|o| (p, o)))
                            .collect()
                    };
                    commit(
                        consumer,
                        &self.input_topic,
                        &positions,
                        CommitMode::Sync,
                        &self.metrics,
                    );
                    tracing::info!(?partitions, "partitions revoked after draining");
                }
                let mut tracker = lock(&self.tracker);
                let mut status = self.shared.lock();
                for p in &partitions {
                    tracker.remove(*p);
                    status.lag.remove(p);
                    status.partition_errors.remove(p);
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[&p.to_string()]);
                }
            }
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();

                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && self.backpressure.load(Ordering::Relaxed)
        {
            let _ = consumer.pause(tpl);
        }
        let assigned = consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        self.shared.lock().assigned = assigned;
    }
}

impl ConsumerCtx {
    /// Exactly once, on revoke: commit the open transaction so the next
    /// owner starts after it; if the assignment was lost, another member
    /// may own the partitions already, so abort instead (the group
    /// coordinator would fence the commit anyway). Partitions kept are
    /// rewound to where an aborted transaction started on them.
    fn end_transaction_on_revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        transactions: &Transactions,
        revoked: &[i32],
    ) {
        let lost = consumer.assignment_lost();
        let ended = if lost {
            tracing::warn!(
                partitions = ?revoked,
                "assignment lost; the open transaction is aborted, nothing committed for it"
            );
            let ended = transactions.abort("assignment lost");
            if let Ended::Fatal(reason, message) = &ended {
                // Not aborted (a client knows no broker): the run ends.
                self.restart.set(*reason, message.clone());
            }
            ended
        } else {
            self.transactions_commit(consumer, transactions)
        };
        if let Ended::Aborted(mut rewind) = ended {
            rewind.retain(|p, _| !revoked.contains(p));
            rewind_partitions(consumer, &self.input_topic, &self.tracker, &rewind);
        }
        if !lost {
            tracing::info!(partitions = ?revoked, "partitions revoked after committing");
        }
    }

    fn transactions_commit(
        &self,
        consumer: &BaseConsumer<Self>,
        transactions: &Transactions,
    ) -> Ended {
        let ended = transactions.commit(consumer);
        if let Ended::Fatal(reason, message) = &ended {
            self.restart.set(*reason, message.clone());
        }
        ended
    }
}

/// Re-consumes each partition from the offset given, forgetting what is in
/// flight on it (its late reports become stale).
fn rewind_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    tracker: &Mutex<OffsetTracker>,
    from: &BTreeMap<i32, i64>,
) {
    for (&partition, &offset) in from {
        lock(tracker).rewind(partition);
        tracing::info!(partition, offset, "rewinding partition");
        if let Err(e) = consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(10),
        ) {
            tracing::error!(partition, error = %e, "seek failed");
        }
    }
}

/// Why a run ended to be started again with new clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// Another producer with the same `transactional.id` took over.
    Fenced,
    /// A transaction's commit or abort timed out: its outcome is unknown.
    TransactionOutcomeUnknown,
    /// The producer failed fatally (idempotence or transaction state).
    ProducerFatal,
    /// An assigned partition did not start fetching within
    /// `fetch_start_timeout` (see [`fetch_watch`]). The clients still work:
    /// the run ends with a normal shutdown (commit, leave the group).
    FetchStuck,
    /// The consumer or the producer has known no broker for
    /// [`NO_BROKER_TIMEOUT`] (see [`broker_watch`]); nothing can be
    /// committed through it.
    NoBrokers,
}

impl RestartReason {
    pub const ALL: [RestartReason; 5] = [
        RestartReason::Fenced,
        RestartReason::TransactionOutcomeUnknown,
        RestartReason::ProducerFatal,
        RestartReason::FetchStuck,
        RestartReason::NoBrokers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Fenced => "fenced",
            RestartReason::TransactionOutcomeUnknown => "transaction-outcome-unknown",
            RestartReason::ProducerFatal => "producer-fatal",
            RestartReason::FetchStuck => "fetch-stuck",
            RestartReason::NoBrokers => "no-brokers",
        }
    }
}

/// Set once by whoever meets a fatal error first; the loop then ends the run.
#[derive(Default)]
struct RestartFlag {
    set: AtomicBool,
    why: Mutex<Option<(RestartReason, String)>>,
}

impl RestartFlag {
    fn set(&self, reason: RestartReason, message: String) {
        let mut why = lock(&self.why);
        if why.is_none() {
            *why = Some((reason, message));
            self.set.store(true, Ordering::Release);
        }
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    fn take(&self) -> Option<(RestartReason, String)> {
        lock(&self.why).take()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn commit(
    consumer: &BaseConsumer<ConsumerCtx>,
    topic: &str,
    positions: &[(i32, i64)],
    mode: CommitMode,
    metrics: &Metrics,
) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &(partition, offset) in positions {
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => metrics.commits.with_label_values(&["success"]).inc(),
        Err(e) => {
            metrics.commits.with_label_values(&["failure"]).inc();
            tracing::warn!(error = %e, "offset commit failed; it is retried with the next one");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A fatal client error: start a new run with new clients.
    #[error("restart ({reason}): {message}", reason = .0.as_str(), message = .1)]
    Restart(RestartReason, String),
}

/// What a finished run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub consumed: u64,
}

/// Runs the pipeline until `shutdown` is set, then drains, commits and
/// returns within `config.shutdown_timeout`.
pub fn run(
    config: &Config,
    store: Arc<RuleStore>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    options: &Options,
) -> Result<Summary, PipelineError> {
    // Produce-error series exist from the start at 0, so that the first
    // error shows in rate() and alerts.
    let t = &config.topics;
    for topic in [&t.forward, &t.results, &t.retry, &t.dead_letter] {
        for kind in ["permanent", "blocked", "retriable"] {
            metrics.produce_errors.with_label_values(&[topic, kind]);
        }
    }
    let exactly_once = config.guarantee == Guarantee::ExactlyOnce;
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let restart = Arc::new(RestartFlag::default());
    let (failures_tx, failures) = mpsc::channel();
    let mut producer_config = kafka::producer_config(config);
    if producer_config.get("statistics.interval.ms").is_none() {
        producer_config.set("statistics.interval.ms", "5000");
    }
    let transactional_id = kafka::transactional_id(config, &options.instance);
    if exactly_once {
        producer_config.set("transactional.id", &transactional_id);
    }
    let producer: Arc<Producer_> = Arc::new(producer_config.create_with_context(ProducerCtx {
        tracker: tracker.clone(),
        failures: Mutex::new(failures_tx),
        metrics: metrics.clone(),
        observe_acks: !exactly_once,
        restart: restart.clone(),
        reports: AtomicU64::new(0),
        broker_watch: Mutex::new(BrokerWatch::new(NO_BROKER_TIMEOUT)),
    })?);
    // Shared with the transactions, which check it before each send of
    // offsets, commit and abort, and while waiting for deliveries.
    let consumer_brokers = Arc::new(Mutex::new(BrokerWatch::new(NO_BROKER_TIMEOUT)));
    let transactions = if exactly_once {
        let timeout = Duration::from_millis(
            config
                .producer_property("transaction.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(crate::config::TRANSACTION_TIMEOUT_MS),
        );
        let give_up = || shutdown.load(Ordering::Acquire);
        let transactions = Transactions::init(
            producer.clone(),
            consumer_brokers.clone(),
            metrics.clone(),
            &config.topics.input,
            timeout,
            give_up,
        )
        .map_err(|(reason, message)| PipelineError::Restart(reason, message))?;
        tracing::info!(transactional_id, "exactly once: transactions initialised");
        Some(Arc::new(transactions))
    } else {
        None
    };
    let backpressure = Arc::new(AtomicBool::new(false));
    // Exactly once, an open transaction of a killed instance holds the
    // committed offsets back (UNSTABLE_OFFSET_COMMIT) until it times out.
    let fetch_start_timeout = config.fetch_start_timeout
        + transactions
            .as_ref()
            .map_or(Duration::ZERO, |t| t.timeout());
    let mut consumer_config = kafka::consumer_config(config);
    if consumer_config.get("statistics.interval.ms").is_none() {
        consumer_config.set("statistics.interval.ms", "1000");
    }
    let consumer: BaseConsumer<ConsumerCtx> = consumer_config.create_with_context(ConsumerCtx {
        tracker: tracker.clone(),
        producer: producer.clone(),
        metrics: metrics.clone(),
        shared: shared.clone(),
        input_topic: config.topics.input.clone(),
        drain_timeout: config.shutdown_timeout / 2,
        backpressure: backpressure.clone(),
        transactions: transactions.clone(),
        restart: restart.clone(),
        fetch_watch: Mutex::new(FetchWatch::new(fetch_start_timeout)),
        broker_watch: consumer_brokers,
    })?;
    consumer.subscribe(&[&config.topics.input])?;
    shared
        .stall_after_ms
        .store(config.stall_after.as_millis() as u64, Ordering::Relaxed);
    shared.consumed(Instant::now());
    shared.running.store(true, Ordering::Release);
    tracing::info!(topic = %config.topics.input, group = %config.group, "consuming");

    let mut pipeline = Loop {
        config,
        store,
        metrics,
        shared,
        options,
        consumer: Arc::new(consumer),
        producer,
        tracker,
        failures,
        backpressure,
        paused_until: BTreeMap::new(),
        summary: Summary::default(),
        transactions,
        restart,
        refused: HashMap::new(),
        now: Utc::now(),
        last_consumed_at: Instant::now(),
        last_full_commit: Instant::now(),
    };
    let mut last_commit = Instant::now();
    // Housekeeping (failures, backpressure, commits) runs when the consumer
    // is idle and otherwise every HOUSEKEEPING_EVENTS events or 1 ms, not
    // for every event: it takes locks the producer thread also needs.
    let mut since_housekeeping = HOUSEKEEPING_EVENTS;
    let mut last_housekeeping = Instant::now();
    let mut timeout = Duration::ZERO;
    while !shutdown.load(Ordering::Acquire) && !pipeline.restart.is_set() {
        // The clock is read once per event, by `process`.
        if since_housekeeping < HOUSEKEEPING_EVENTS
            && pipeline
                .last_consumed_at
                .saturating_duration_since(last_housekeeping)
                < Duration::from_millis(1)
        {
            since_housekeeping += 1;
            let consumer = pipeline.consumer.clone();
            match consumer.poll(timeout) {
                None => since_housekeeping = HOUSEKEEPING_EVENTS,
                Some(Ok(message)) => pipeline.process(&message),
                Some(Err(e)) => pipeline.consumer_error(e),
            }
            continue;
        }
        since_housekeeping = 0;
        last_housekeeping = Instant::now();
        pipeline.now = Utc::now();
        pipeline.handle_failures();
        let in_flight = pipeline.apply_backpressure();
        pipeline.resume_after_errors();
        // Deliveries are served between polls: wait briefly while any are due.
        timeout = if in_flight > 0 {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        if let Some(transactions) = pipeline.transactions.clone() {
            if let Some(due_in) =
                transactions.due_in(config.transaction_interval, config.transaction_max_events)
            {
                if due_in.is_zero() {
                    pipeline.commit_transaction(&transactions);
                } else {
                    timeout = timeout.min(due_in);
                }
            }
        } else if last_commit.elapsed() >= config.commit_interval {
            pipeline.commit_progress();
            last_commit = Instant::now();
        }
        let consumer = pipeline.consumer.clone();
        match consumer.poll(timeout) {
            None => since_housekeeping = HOUSEKEEPING_EVENTS,
            Some(Ok(message)) => pipeline.process(&message),
            Some(Err(e)) => pipeline.consumer_error(e),
        }
    }
    if let Some((reason, message)) = pipeline.restart.take() {
        if reason == RestartReason::FetchStuck {
            tracing::warn!(reason = %message, "restarting the pipeline: shutting down first");
            pipeline.shut_down();
        } else {
            pipeline.abandon(&message);
        }
        return Err(PipelineError::Restart(reason, message));
    }
    pipeline.shut_down();
    Ok(pipeline.summary)
}

struct Loop<'c> {
    config: &'c Config,
    store: Arc<RuleStore>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    options: &'c Options,
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    producer: Arc<Producer_>,
    tracker: Arc<Mutex<OffsetTracker>>,
    failures: mpsc::Receiver<Failure>,
    backpressure: Arc<AtomicBool>,
    /// Partitions paused after an error, and until when.
    paused_until: BTreeMap<i32, Instant>,
    summary: Summary,
    /// Exactly once: the transactions of this run.
    transactions: Option<Arc<Transactions>>,
    restart: Arc<RestartFlag>,
    /// Exactly once: output records the broker refused for good in an
    /// aborted transaction, by (partition, offset, destination), with the
    /// error. When the event is processed again, a dead letter is sent in
    /// their place.
    refused: HashMap<(i32, i64, Destination), String>,
    /// The time decisions are made at.
    now: chrono::DateTime<Utc>,
    /// When the last event was consumed.
    last_consumed_at: Instant,
    /// At least once: when every position was last committed.
    last_full_commit: Instant,
}

impl Loop<'_> {
    fn process(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        self.summary.consumed += 1;
        let consumed_at = Instant::now();
        self.last_consumed_at = consumed_at;
        self.shared.consumed(consumed_at);
        let headers: InputHeaders<'_> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let input = Input {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            value: message.payload(),
            headers,
            timestamp: message.timestamp().to_millis(),
        };
        // Refreshed at each round of housekeeping (1 ms at most): rule time
        // windows and result times have a resolution of a second.
        let now = self.now;
        let meta = Meta {
            instance: &self.options.instance,
            now,
            forward_partitioning: self.config.forward_partitioning,
        };
        let rules = self.store.live().load();
        let outputs: Outputs<'_> = match Event::parse(
            input.value.unwrap_or_default(),
            self.config.max_event_bytes,
        ) {
            Err(invalid) => {
                self.metrics.invalid();
                tracing::debug!(input = %input.coordinates_display(), error = %invalid, "invalid event to the dead-letter topic");
                smallvec::smallvec![output::dead_letter(&input, &invalid)]
            }
            Ok(event) => {
                let decision = rules.decide(&event, now);
                self.metrics
                    .decided(decision.outcome, decision.rule, &decision.matched);
                if let Some(rule) = decision.rule
                    && decision.outcome != Outcome::Forwarded
                    && self.config.log_outcomes == LogOutcomes::Each
                {
                    log_stopped(decision.outcome, rule, &event, &input);
                }
                match output::outputs(&input, &event, &decision, &meta) {
                    Ok(outputs) => outputs,
                    Err(invalid) => smallvec::smallvec![output::dead_letter(&input, &invalid)],
                }
            }
        };
        if let Some(transactions) = &self.transactions
            && let Err((reason, message)) =
                transactions.record(input.partition, input.offset, consumed_at)
        {
            // Not processed: the next run consumes it again.
            self.restart.set(reason, message);
            return;
        }
        let ticket =
            lock(&self.tracker).consumed(input.partition, input.offset, outputs.len() as u32);
        for record in outputs {
            self.send(record, ticket, consumed_at, &input);
        }
    }

    fn topic(&self, destination: Destination) -> &str {
        let t = &self.config.topics;
        match destination {
            Destination::Forward => &t.forward,
            Destination::Results => &t.results,
            Destination::Retry => &t.retry,
            Destination::DeadLetter => &t.dead_letter,
        }
    }

    /// Hands one record to the producer. A full local queue waits; a record
    /// the client refuses at once for good is replaced by a dead letter.
    fn send<'a>(
        &mut self,
        mut record: OutputRecord<'a>,
        ticket: Ticket,
        consumed_at: Instant,
        input: &'a Input<'_>,
    ) {
        if !self.refused.is_empty() {
            record = self.instead_of_refused(record, input);
        }
        let destination = record.destination;
        let result = self.produce(&record, ticket, consumed_at);
        if let Err(error) = result {
            self.metrics
                .produce_errors
                .with_label_values(&[self.topic(destination), kind(&error)])
                .inc();
            tracing::warn!(input = %input.coordinates_display(), topic = self.topic(destination), error = %error, "record refused; sending a dead letter instead");
            let dead = output::dead_letter_unproducible(input, destination, &error.to_string());
            if self.produce(&dead, ticket, consumed_at).is_err()
                && let Err(e) = self.produce(&dead.clone().without_value(), ticket, consumed_at)
            {
                // Nothing can be written for this event: rewind so it is not
                // skipped, and pause the partition for a while.
                tracing::error!(input = %input.coordinates_display(), error = %e, "dead letter refused too");
                self.rewind(ticket, &e.to_string(), ERROR_PAUSE);
            }
        }
    }

    /// Exactly once: the record to send for one the broker refused for good
    /// in an aborted transaction (SPEC §6: that record goes to the
    /// dead-letter topic, without its value if that was refused too).
    fn instead_of_refused<'a>(
        &mut self,
        record: OutputRecord<'a>,
        input: &'a Input<'_>,
    ) -> OutputRecord<'a> {
        let key = (input.partition, input.offset, record.destination);
        let Some(error) = self.refused.remove(&key) else {
            return record;
        };
        if record.destination == Destination::DeadLetter {
            return record.without_value();
        }
        let dead = output::dead_letter_unproducible(input, record.destination, &error);
        let dead_key = (input.partition, input.offset, Destination::DeadLetter);
        if self.refused.remove(&dead_key).is_some() {
            dead.without_value()
        } else {
            dead
        }
    }

    /// Exactly once: commits the open transaction; an aborted one is
    /// processed again, a fatal error ends the run.
    fn commit_transaction(&mut self, transactions: &Transactions) {
        match transactions.commit(&self.consumer) {
            Ended::Committed => {}
            Ended::Aborted(rewind) => self.rewind_transaction(rewind, RETRY_PAUSE, "commit failed"),
            Ended::Fatal(reason, message) => self.restart.set(reason, message),
        }
    }

    /// Exactly once: aborts the open transaction after a failed delivery.
    fn abort_transaction(&mut self, transactions: &Transactions, why: &str, pause: Duration) {
        match transactions.abort(why) {
            Ended::Committed => {}
            Ended::Aborted(rewind) => self.rewind_transaction(rewind, pause, why),
            Ended::Fatal(reason, message) => self.restart.set(reason, message),
        }
    }

    /// Re-processes every partition of an aborted transaction from where
    /// it started there, after pausing them for `pause`.
    fn rewind_transaction(&mut self, rewind: BTreeMap<i32, i64>, pause: Duration, why: &str) {
        let mut tpl = TopicPartitionList::new();
        for &partition in rewind.keys() {
            let _ = tpl.add_partition(&self.config.topics.input, partition);
        }
        let _ = self.consumer.pause(&tpl);
        rewind_partitions(
            &self.consumer,
            &self.config.topics.input,
            &self.tracker,
            &rewind,
        );
        let until = Instant::now() + pause;
        let mut status = self.shared.lock();
        for &partition in rewind.keys() {
            self.paused_until.insert(partition, until);
            status
                .partition_errors
                .insert(partition, format!("transaction aborted: {why}"));
        }
        drop(status);
        self.metrics
            .paused_partitions
            .set(self.paused_until.len() as i64);
    }

    /// After a fatal error: drop the clients without committing anything.
    fn abandon(&mut self, why: &str) {
        tracing::error!(
            reason = why,
            consumed = self.summary.consumed,
            "pipeline stopped after a fatal error; uncommitted events are processed again"
        );
        self.shared.lock().kafka_error(why.to_owned());
    }

    fn produce(
        &self,
        record: &OutputRecord<'_>,
        ticket: Ticket,
        consumed_at: Instant,
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(
            record.input_headers.len() + record.bouncer_headers.len(),
        );
        for (key, value) in record.headers() {
            headers = headers.insert(Header { key, value });
        }
        let pending = Box::new(Pending {
            ticket,
            destination: record.destination,
            consumed_at,
        });
        let mut base: BaseRecord<'_, [u8], [u8], Box<Pending>> =
            BaseRecord::with_opaque_to(self.topic(record.destination), pending).headers(headers);
        if let Some(key) = record.key {
            base = base.key(key);
        }
        if let Some(value) = record.value.as_deref() {
            base = base.payload(value);
        }
        if let PartitionChoice::Same(partition) = record.partition {
            base = base.partition(partition);
        }
        if let Some(ts) = record.timestamp {
            base = base.timestamp(ts);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: serve deliveries until it drains.
                    base = back;
                    await_deliveries(&self.producer, Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Deals with failed deliveries reported by the producer.
    fn handle_failures(&mut self) {
        serve_deliveries(&self.producer);
        while let Ok(failure) = self.failures.try_recv() {
            let topic = self.topic(failure.pending.destination).to_owned();
            self.metrics
                .produce_errors
                .with_label_values(&[&topic, kind(&failure.error)])
                .inc();
            if let Some(transactions) = self.transactions.clone() {
                self.transaction_failure(&transactions, failure, &topic);
                continue;
            }
            match classify(&failure.error) {
                FailureKind::Permanent => {
                    tracing::warn!(topic, error = %failure.error, "record refused by the broker; sending a dead letter instead");
                    self.dead_letter_failed(failure);
                }
                FailureKind::Blocked => {
                    let reason = format!("producing to {topic}: {}", failure.error);
                    self.rewind(failure.pending.ticket, &reason, ERROR_PAUSE);
                }
                FailureKind::Retriable => {
                    let reason = format!("producing to {topic}: {}", failure.error);
                    self.rewind(failure.pending.ticket, &reason, RETRY_PAUSE);
                }
            }
        }
    }

    /// Exactly once: a failed delivery fails its transaction. A record
    /// refused for good is remembered, so that a dead letter replaces it
    /// when its event is processed again.
    fn transaction_failure(&mut self, transactions: &Transactions, failure: Failure, topic: &str) {
        let ticket = failure.pending.ticket;
        if !lock(&self.tracker).is_current(ticket) {
            return; // from an aborted transaction, or a revoked partition
        }
        let why = format!("producing to {topic}: {}", failure.error);
        let pause = match classify(&failure.error) {
            FailureKind::Permanent => {
                tracing::warn!(topic, error = %failure.error, "record refused by the broker; its event is processed again with a dead letter instead");
                self.refused.insert(
                    (ticket.partition, ticket.offset, failure.pending.destination),
                    failure.error.to_string(),
                );
                Duration::ZERO
            }
            FailureKind::Blocked => ERROR_PAUSE,
            FailureKind::Retriable => RETRY_PAUSE,
        };
        self.abort_transaction(transactions, &why, pause);
    }

    /// A dead letter for an output record the broker refused: its key,
    /// headers and value with `bouncer-error` (SPEC §3: the value unchanged
    /// unless it cannot be produced). A dead letter refused in turn is sent
    /// again without its value, with `bouncer-original-size`; if even that
    /// is refused, the partition is rewound and paused rather than skipped.
    fn dead_letter_failed(&mut self, failure: Failure) {
        let ticket = failure.pending.ticket;
        if !lock(&self.tracker).is_current(ticket) {
            return;
        }
        let refused_dead_letter = failure.pending.destination == Destination::DeadLetter;
        if refused_dead_letter && failure.payload.is_none() {
            let reason = format!("dead letter refused: {}", failure.error);
            self.rewind(ticket, &reason, ERROR_PAUSE);
            return;
        }
        let mut headers = OwnedHeaders::new();
        for (key, value) in &failure.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let size = failure.payload.as_ref().map_or(0, Vec::len).to_string();
        let error = format!(
            "{}: {}: {}",
            output::PRODUCE_FAILED,
            failure.pending.destination,
            failure.error
        );
        let value = if refused_dead_letter {
            // Its headers already say why it is a dead letter.
            headers = headers.insert(Header {
                key: output::HEADER_ORIGINAL_SIZE,
                value: Some(&size),
            });
            None
        } else {
            headers = headers.insert(Header {
                key: output::HEADER_ERROR,
                value: Some(&error),
            });
            failure.payload.as_deref()
        };
        let pending = Box::new(Pending {
            ticket,
            destination: Destination::DeadLetter,
            consumed_at: failure.pending.consumed_at,
        });
        let mut record: BaseRecord<'_, [u8], [u8], Box<Pending>> =
            BaseRecord::with_opaque_to(&self.config.topics.dead_letter, pending).headers(headers);
        if let Some(key) = failure.key.as_deref() {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Err((e, _)) = self.producer.send(record) {
            self.rewind(ticket, &format!("dead letter refused: {e}"), ERROR_PAUSE);
        }
    }

    /// Re-processes a partition from its first unacknowledged event, after
    /// pausing it for `pause`.
    fn rewind(&mut self, ticket: Ticket, reason: &str, pause: Duration) {
        let Some(from) = lock(&self.tracker).rewind_for(ticket) else {
            return; // already rewound, or no longer ours
        };
        let partition = ticket.partition;
        tracing::warn!(partition, offset = from, reason, "rewinding partition");
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition(&self.config.topics.input, partition);
        let _ = self.consumer.pause(&tpl);
        if let Err(e) = self.consumer.seek(
            &self.config.topics.input,
            partition,
            Offset::Offset(from),
            Duration::from_secs(10),
        ) {
            tracing::error!(partition, error = %e, "seek failed");
        }
        self.paused_until.insert(partition, Instant::now() + pause);
        self.shared
            .lock()
            .partition_errors
            .insert(partition, reason.to_owned());
        self.metrics
            .paused_partitions
            .set(self.paused_until.len() as i64);
    }

    fn resume_after_errors(&mut self) {
        let now = Instant::now();
        let due: Vec<i32> = self
            .paused_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        if due.is_empty() || self.backpressure.load(Ordering::Relaxed) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for p in &due {
            self.paused_until.remove(p);
            let _ = tpl.add_partition(&self.config.topics.input, *p);
        }
        let _ = self.consumer.resume(&tpl);
        let mut status = self.shared.lock();
        for p in &due {
            status.partition_errors.remove(p);
        }
        self.metrics
            .paused_partitions
            .set(self.paused_until.len() as i64);
    }

    /// Pauses every partition while too much is in flight, resumes below
    /// half. Returns the number in flight.
    fn apply_backpressure(&mut self) -> usize {
        let mut in_flight = lock(&self.tracker).in_flight();
        let paused = self.backpressure.load(Ordering::Relaxed);
        if !paused && in_flight >= self.config.max_in_flight {
            // A short wait for acknowledgements first: pausing makes
            // librdkafka drop its pre-fetched messages and fetch them again
            // on resume, which costs more than the wait when the producer
            // is merely a few milliseconds behind. Only a longer stall (a
            // broker away) pauses the partitions.
            let until = Instant::now() + BACKPRESSURE_GRACE;
            while in_flight > self.config.max_in_flight * 3 / 4 && Instant::now() < until {
                await_deliveries(&self.producer, Duration::from_millis(1));
                self.handle_failures();
                in_flight = lock(&self.tracker).in_flight();
            }
        }
        self.metrics.in_flight.set(in_flight as i64);
        if !paused && in_flight >= self.config.max_in_flight {
            if let Ok(assignment) = self.consumer.assignment() {
                let _ = self.consumer.pause(&assignment);
            }
            self.backpressure.store(true, Ordering::Relaxed);
        } else if paused && in_flight <= self.config.max_in_flight / 2 {
            if let Ok(assignment) = self.consumer.assignment() {
                let mut tpl = TopicPartitionList::new();
                for e in assignment.elements() {
                    if !self.paused_until.contains_key(&e.partition()) {
                        let _ = tpl.add_partition(e.topic(), e.partition());
                    }
                }
                let _ = self.consumer.resume(&tpl);
            }
            self.backpressure.store(false, Ordering::Relaxed);
        }
        let mut status = self.shared.lock();
        status.in_flight = in_flight;
        status.backpressure = self.backpressure.load(Ordering::Relaxed);
        in_flight
    }

    /// At least once: commits the positions that advanced, and every
    /// `FULL_COMMIT_EVERY` commit intervals all of them, since an
    /// asynchronous commit can fail (ILLEGAL_GENERATION during a
    /// rebalance) and an idle partition would otherwise keep its last
    /// events uncommitted.
    fn commit_progress(&mut self) {
        let full =
            self.last_full_commit.elapsed() >= self.config.commit_interval * FULL_COMMIT_EVERY;
        let positions = if full {
            self.last_full_commit = Instant::now();
            lock(&self.tracker).all_commits()
        } else {
            lock(&self.tracker).take_commits()
        };
        commit(
            &self.consumer,
            &self.config.topics.input,
            &positions,
            CommitMode::Async,
            &self.metrics,
        );
    }

    fn consumer_error(&mut self, error: KafkaError) {
        tracing::warn!(error = %error, "consumer error");
        self.shared.lock().kafka_error(error.to_string());
        if let KafkaError::PartitionEOF(_) = error {
            return;
        }
        // `on_missing_offset = "fail"`: librdkafka reports the partition; it
        // stays stopped and shows in /status.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// SIGTERM: stop fetching, let in-flight deliveries finish, commit, leave.
    fn shut_down(&mut self) {
        let deadline = Instant::now() + self.config.shutdown_timeout.mul_f64(0.8);
        if let Ok(assignment) = self.consumer.assignment() {
            let _ = self.consumer.pause(&assignment);
        }
        if let Some(transactions) = self.transactions.clone() {
            tracing::info!("shutting down: committing the open transaction");
            match transactions.commit(&self.consumer) {
                Ended::Committed => {}
                Ended::Aborted(_) => tracing::warn!(
                    "the last transaction was aborted: its events will be processed again"
                ),
                Ended::Fatal(_, message) => tracing::error!(
                    error = %message,
                    "the last transaction failed: its events will be processed again"
                ),
            }
            // Nothing to commit when the partitions are revoked now.
            self.consumer.unsubscribe();
            tracing::info!(consumed = self.summary.consumed, "pipeline stopped");
            return;
        }
        tracing::info!("shutting down: draining in-flight events");
        while lock(&self.tracker).in_flight() > 0 && Instant::now() < deadline {
            self.handle_failures();
            let _ = self.consumer.poll(Duration::from_millis(10));
        }
        let _ = self
            .producer
            .flush(deadline.saturating_duration_since(Instant::now()));
        let positions: Vec<(i32, i64)> = {
            let tracker = lock(&self.tracker);
            tracker
                .partitions()
                .filter_map(|p| tracker.position(p).map(|o| (p, o)))
                .collect()
        };
        commit(
            &self.consumer,
            &self.config.topics.input,
            &positions,
            CommitMode::Sync,
            &self.metrics,
        );
        let left = lock(&self.tracker).in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "shutdown timeout: uncommitted events will be processed again"
            );
        }
        self.consumer.unsubscribe();
        tracing::info!(consumed = self.summary.consumed, "pipeline stopped");
    }
}

enum FailureKind {
    /// The broker will never take this record: dead-letter it.
    Permanent,
    /// Missing topic or no authorisation: pause the partition, retry later.
    Blocked,
    /// Anything else: rewind and try again.
    Retriable,
}

fn classify(error: &KafkaError) -> FailureKind {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidRecord
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::InvalidTimestamp
            | C::PolicyViolation,
        ) => FailureKind::Permanent,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition,
        ) => FailureKind::Blocked,
        _ => FailureKind::Retriable,
    }
}

fn kind(error: &KafkaError) -> &'static str {
    match classify(error) {
        FailureKind::Permanent => "permanent",
        FailureKind::Blocked => "blocked",
        FailureKind::Retriable => "retriable",
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::logging::{self, LogFormat};
    use crate::rules::Mode;

    /// The lines a subscriber wrote.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The log output of one stopped delivery, in `format`.
    fn logged(format: LogFormat) -> String {
        let lines = Lines::default();
        let writer = {
            let lines = lines.clone();
            move || lines.clone()
        };
        let filter = tracing_subscriber::EnvFilter::new("info");
        let subscriber = logging::subscriber(format, filter, writer, false);
        let json = br#"{"recipient":"jo@Mail.Example.COM","from":"news@shop.example",
            "tags":["campaign-x","customer 42"],"mime":"Subject: hi\r\n\r\nhello"}"#;
        let event = Event::parse(json, crate::event::DEFAULT_MAX_EVENT_BYTES).unwrap();
        let input = Input {
            topic: "mailerq-outgoing",
            partition: 3,
            offset: 1_234_567,
            key: None,
            value: Some(json),
            headers: Default::default(),
            timestamp: None,
        };
        let rule = Rule::for_test("cancel-campaign-x", 550, Mode::Enforce);
        tracing::subscriber::with_default(subscriber, || {
            log_stopped(Outcome::Failed, &rule, &event, &input);
        });
        let out = lines.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_stopped_delivery_is_one_json_record_with_rule_code_domain_tags_and_input() {
        let out = logged(LogFormat::Json);
        assert_eq!(out.lines().count(), 1, "{out}");
        let record: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(record["level"], "INFO", "{record}");
        assert_eq!(record["message"], "delivery stopped");
        assert_eq!(record["outcome"], "failed");
        assert_eq!(record["rule"], "cancel-campaign-x");
        assert_eq!(record["code"], 550);
        assert_eq!(record["domain"], "mail.example.com");
        assert_eq!(record["input"], "mailerq-outgoing/3/1234567");
        let tags = record["tags"].as_str().unwrap();
        assert!(
            tags.contains("\"campaign-x\"") && tags.contains("\"customer 42\""),
            "{tags}"
        );
    }

    #[test]
    fn a_stopped_delivery_is_one_text_line_with_the_same_fields() {
        let out = logged(LogFormat::Text);
        assert_eq!(out.lines().count(), 1, "{out}");
        for field in [
            "delivery stopped",
            "outcome=\"failed\"",
            "rule=cancel-campaign-x",
            "code=550",
            "domain=\"mail.example.com\"",
            "input=mailerq-outgoing/3/1234567",
            "\"customer 42\"",
        ] {
            assert!(out.contains(field), "{field} missing from {out}");
        }
    }

    /// Keeps librdkafka's raw statistics reports.
    #[derive(Default)]
    struct RawStats(Mutex<Vec<String>>);

    impl ClientContext for RawStats {
        fn stats_raw(&self, statistics: &[u8]) {
            let text = String::from_utf8_lossy(statistics).into_owned();
            self.0.lock().unwrap().push(text);
        }
    }

    impl ProducerContext for RawStats {
        type DeliveryOpaque = ();

        fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
    }

    /// The broker sources the watch reads are librdkafka's own: a real
    /// report of a producer on the mock cluster keeps the run going, and the
    /// same report without its learned broker (what a metadata response
    /// listing no broker leaves, confluentinc/librdkafka#5301) ends it with
    /// `no-brokers`.
    #[test]
    fn a_client_left_with_no_broker_ends_the_run() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let producer: BaseProducer<RawStats> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("statistics.interval.ms", "50")
            .create_with_context(RawStats::default())
            .expect("producer");
        producer
            .send(BaseRecord::<(), [u8]>::to("t").payload(b"x"))
            .map_err(|(e, _)| e)
            .expect("queued");
        let deadline = Instant::now() + Duration::from_secs(30);
        let report = loop {
            producer.poll(Duration::from_millis(50));
            let learned = producer
                .context()
                .0
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find_map(|r| {
                    let json: serde_json::Value = serde_json::from_str(r).ok()?;
                    let brokers = json["brokers"].as_object()?;
                    brokers
                        .values()
                        .any(|b| b["source"] == "learned")
                        .then_some(json)
                });
            if let Some(json) = learned {
                break json;
            }
            assert!(Instant::now() < deadline, "no report with a learned broker");
        };
        let watch = Mutex::new(BrokerWatch::new(Duration::ZERO));
        let restart = RestartFlag::default();
        let statistics: Statistics = serde_json::from_value(report.clone()).expect("statistics");
        watch_brokers(&watch, &restart, "producer", &statistics);
        assert!(!restart.is_set(), "{:?}", restart.take());

        let mut stranded = report;
        let brokers = stranded["brokers"].as_object_mut().expect("brokers");
        // What is left once librdkafka dropped the brokers: the report
        // lists neither its internal broker nor, for a producer, any other.
        brokers.retain(|_, b| b["source"] != "learned" && b["source"] != "configured");
        let statistics: Statistics = serde_json::from_value(stranded).expect("statistics");
        watch_brokers(&watch, &restart, "producer", &statistics);
        let (reason, message) = restart.take().expect("the run ends");
        assert_eq!(reason, RestartReason::NoBrokers);
        assert!(
            message.contains("producer has known no broker"),
            "{message}"
        );
    }
}
