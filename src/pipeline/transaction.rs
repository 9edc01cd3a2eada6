//! Exactly once (SPEC §6): Kafka transactions as in KIP-447.
//!
//! One transactional producer per instance, with a stable
//! `transactional.id`. The outputs of the events consumed since the last
//! commit and the input positions after them go into one transaction,
//! committed every `transaction_interval` or `transaction_max_events`, on
//! revoke and at shutdown. The consumer group metadata sent with the offsets
//! lets the group coordinator fence a zombie that lost its partitions.
//!
//! A failed transaction is aborted and its partitions rewound to where it
//! started (the offsets of the last committed transaction), so a
//! `read_committed` reader sees each output once. When the outcome of a
//! commit or abort is unknown (a timeout), or the producer is fenced or
//! failed fatally, the producer cannot be trusted for another transaction:
//! the caller restarts the pipeline with new clients (librdkafka lacks
//! KIP-890, so a timed-out commit cannot simply be retried on a fresh
//! transaction).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};

use super::broker_watch::BrokerWatch;
use super::{Producer_, RestartReason, lock};
use crate::metrics::Metrics;

/// How one transaction ended.
#[derive(Debug)]
pub enum Ended {
    /// Committed, or nothing was open.
    Committed,
    /// Aborted: nothing of it is visible. Re-consume each partition from the
    /// offset given (where the transaction started on it).
    Aborted(BTreeMap<i32, i64>),
    /// The producer cannot go on: restart the pipeline with new clients.
    Fatal(RestartReason, String),
}

#[derive(Debug, Default)]
struct Open {
    started: Option<Instant>,
    events: usize,
    /// Per partition: the first offset consumed in this transaction (where
    /// an abort rewinds to) and the offset after the last (what commits).
    partitions: BTreeMap<i32, (i64, i64)>,
    /// When each event was consumed, for the processing-duration histogram.
    consumed_at: Vec<Instant>,
}

/// The transaction state of one pipeline run.
pub struct Transactions {
    producer: Arc<Producer_>,
    metrics: Arc<Metrics>,
    input_topic: String,
    /// Bound on each transactional call (send offsets, commit, abort).
    timeout: Duration,
    open: Mutex<Option<Open>>,
    /// The transactional call in progress, for [`watch_calls`].
    in_call: Arc<Mutex<Option<InCall>>>,
    /// The consumer's broker watch: see [`Transactions::stranded_client`].
    consumer_brokers: Arc<Mutex<BrokerWatch>>,
}

/// How long a transactional call may go on past its own timeout before
/// [`watch_calls`] ends the process.
const STUCK_MARGIN: Duration = Duration::from_secs(20);

struct InCall {
    call: &'static str,
    since: Instant,
}

/// The last resort against a transactional call that never returns: with
/// a producer left with no broker (confluentinc/librdkafka#5301), librdkafka
/// 2.12's `send_offsets_to_transaction` was seen to wait for its reply for
/// good, whatever the timeout passed (the test through a metadata proxy in
/// `tests/exactly_once.rs`; the stack showed it waiting without a bound in
/// `rd_kafka_txn_op_req0`); commit and abort are watched the same way
/// (stranded in a smaller case, all three returned within 10 s:
/// docs/operations.md, "A client that knows no broker"). The
/// thread cannot be unblocked, and its consumer and producer cannot be
/// replaced while it holds them, so when a call has gone on for its
/// timeout plus [`STUCK_MARGIN`], the process exits (status 1) for its
/// supervisor to start it again; the next producer, with the same
/// `transactional.id`, aborts the open transaction when it initialises.
/// Ends with the run (when `in_call` is dropped).
fn watch_calls(in_call: Weak<Mutex<Option<InCall>>>, limit: Duration) {
    let spawned = std::thread::Builder::new()
        .name("bouncer-txn-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let Some(in_call) = in_call.upgrade() else {
                    return;
                };
                let stuck = lock(&in_call)
                    .as_ref()
                    .map(|c| (c.call, c.since.elapsed()))
                    .filter(|(_, lasted)| *lasted >= limit);
                if let Some((call, lasted)) = stuck {
                    let message = format!(
                        "librdkafka's {call} has not returned after {} s (its timeout is {} s): \
                         exiting so that the process is started again (a producer left with no \
                         broker never gets a reply, confluentinc/librdkafka#5301)",
                        lasted.as_secs(),
                        (limit - STUCK_MARGIN).as_secs()
                    );
                    tracing::error!("{message}");
                    // The log thread may not write the line before the exit.
                    eprintln!("bouncer: {message}");
                    std::process::exit(1);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the transactional call watch");
    }
}

impl Transactions {
    /// Initialises transactions for the producer: fences an older producer
    /// with the same `transactional.id` and aborts its open transaction.
    /// Retries while the coordinator is unreachable until `give_up` says so.
    pub fn init(
        producer: Arc<Producer_>,
        consumer_brokers: Arc<Mutex<BrokerWatch>>,
        metrics: Arc<Metrics>,
        input_topic: &str,
        timeout: Duration,
        give_up: impl Fn() -> bool,
    ) -> Result<Transactions, (RestartReason, String)> {
        loop {
            match producer.init_transactions(timeout) {
                Ok(()) => break,
                Err(e) if is_fatal(&e) || give_up() => return Err(fatal(&e, "initialising")),
                Err(e) => {
                    tracing::warn!(error = %e, "initialising transactions; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        let in_call = Arc::new(Mutex::new(None));
        watch_calls(Arc::downgrade(&in_call), timeout + STUCK_MARGIN);
        Ok(Transactions {
            producer,
            metrics,
            input_topic: input_topic.to_owned(),
            timeout,
            open: Mutex::new(None),
            in_call,
            consumer_brokers,
        })
    }

    /// Runs one transactional call of librdkafka under [`watch_calls`].
    fn call<T>(&self, call: &'static str, f: impl FnOnce() -> T) -> T {
        *lock(&self.in_call) = Some(InCall {
            call,
            since: Instant::now(),
        });
        let result = f();
        *lock(&self.in_call) = None;
        result
    }

    /// The bound on each transactional call: `transaction.timeout.ms`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Adds a consumed event to the open transaction, opening one if
    /// none is; call before producing its outputs.
    pub fn record(
        &self,
        partition: i32,
        offset: i64,
        consumed_at: Instant,
    ) -> Result<(), (RestartReason, String)> {
        let mut guard = lock(&self.open);
        if guard.is_none() {
            self.producer
                .begin_transaction()
                .map_err(|e| fatal(&e, "beginning a transaction"))?;
        }
        let open = guard.get_or_insert_with(|| Open {
            started: Some(Instant::now()),
            ..Open::default()
        });
        open.events += 1;
        open.consumed_at.push(consumed_at);
        open.partitions
            .entry(partition)
            .and_modify(|(_, next)| *next = offset + 1)
            .or_insert((offset, offset + 1));
        Ok(())
    }

    /// How long until the open transaction is due, if one is open.
    pub fn due_in(&self, interval: Duration, max_events: usize) -> Option<Duration> {
        let open = lock(&self.open);
        let open = open.as_ref()?;
        if open.events >= max_events {
            return Some(Duration::ZERO);
        }
        let age = open.started.map_or(interval, |s| s.elapsed());
        Some(interval.saturating_sub(age))
    }

    /// Sends the positions after the transaction's events with the group
    /// metadata, and commits. On failure, aborts (or reports a fatal error).
    pub fn commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> Ended {
        let mut guard = lock(&self.open);
        let Some(open) = guard.take() else {
            return Ended::Committed;
        };
        let started = Instant::now();
        self.serve_until_delivered(started + self.timeout);
        if let Some(stranded) = self.stranded("committing") {
            return stranded;
        }
        let result = self.send_offsets_and_commit(consumer, &open);
        match result {
            Ok(()) => {
                self.metrics
                    .transaction_commit_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                let now = Instant::now();
                for at in &open.consumed_at {
                    self.metrics
                        .processing_duration
                        .observe(now.saturating_duration_since(*at).as_secs_f64());
                }
                Ended::Committed
            }
            Err(e) if is_fatal(&e) => {
                Ended::Fatal(reason_of(&e), format!("committing a transaction: {e}"))
            }
            Err(KafkaError::Transaction(e)) if !e.txn_requires_abort() && e.is_retriable() => {
                // Typically a timeout: the broker may or may not have
                // committed. Only a new producer (whose initialisation
                // completes or aborts it) can tell.
                Ended::Fatal(
                    RestartReason::TransactionOutcomeUnknown,
                    format!("committing a transaction: {e}"),
                )
            }
            Err(e) => self.abort_open(open, &format!("committing a transaction: {e}")),
        }
    }

    /// Serves delivery reports until every message is delivered, before
    /// committing: rust-rdkafka's `commit_transaction` flushes first, and
    /// its flush waits in steps of 100 ms once anything is outstanding.
    fn serve_until_delivered(&self, deadline: Instant) {
        while self.producer.in_flight_count() > 0
            && Instant::now() < deadline
            && self.stranded_client().is_none()
        {
            super::await_deliveries(&self.producer, Duration::from_millis(1));
        }
    }

    /// The client whose last statistics report listed no broker (see
    /// [`super::broker_watch`]), if any. The consumer is asked too: a
    /// transactional producer's own reports go on listing the broker it
    /// dropped while the transaction coordinator holds it (librdkafka 2.12
    /// keeps the broker's thread until then), and its metadata comes from
    /// the same brokers as the consumer's.
    fn stranded_client(&self) -> Option<&'static str> {
        if self.producer.context().knows_no_broker() {
            Some("producer")
        } else if lock(&self.consumer_brokers).knows_none() {
            Some("consumer")
        } else {
            None
        }
    }

    /// A producer left with no broker must not be asked to send offsets,
    /// commit or abort: librdkafka 2.12 can then wait for the transaction
    /// coordinator for ever, whatever the timeout (seen with
    /// `send_offsets_to_transaction`). A consumer left so stands in for the
    /// producer, whose own reports hide it (see [`Self::stranded_client`]).
    /// The run ends instead; the next run's producer aborts the open
    /// transaction when it initialises.
    fn stranded(&self, doing: &str) -> Option<Ended> {
        self.stranded_client().map(|client| {
            Ended::Fatal(
                RestartReason::NoBrokers,
                format!(
                    "{doing} a transaction: the Kafka {client} knows no broker (librdkafka \
                     dropped every broker after a metadata response that listed none, \
                     confluentinc/librdkafka#5301)"
                ),
            )
        })
    }

    fn send_offsets_and_commit<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        open: &Open,
    ) -> Result<(), KafkaError> {
        let mut offsets = TopicPartitionList::new();
        for (&partition, &(_, next)) in &open.partitions {
            offsets.add_partition_offset(&self.input_topic, partition, Offset::Offset(next))?;
        }
        if offsets.count() > 0 {
            let metadata = consumer
                .group_metadata()
                .ok_or(KafkaError::MessageProduction(RDKafkaErrorCode::State))?;
            self.call("send_offsets_to_transaction", || {
                self.producer
                    .send_offsets_to_transaction(&offsets, &metadata, self.timeout)
            })?;
        }
        self.call("commit_transaction", || {
            self.producer.commit_transaction(self.timeout)
        })
    }

    /// Aborts the open transaction, if any.
    pub fn abort(&self, why: &str) -> Ended {
        let open = lock(&self.open).take();
        match open {
            Some(open) => self.abort_open(open, why),
            None => Ended::Committed,
        }
    }

    fn abort_open(&self, open: Open, why: &str) -> Ended {
        // librdkafka's abort waits until every outstanding message is gone,
        // which needs their delivery reports served: purge them and serve
        // the reports here, on the thread that polls the producer.
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        let deadline = Instant::now() + self.timeout;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(10));
        }
        if let Some(stranded) = self.stranded(&format!("after {why}, aborting")) {
            return stranded;
        }
        match self.call("abort_transaction", || {
            self.producer.abort_transaction(self.timeout)
        }) {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!(
                    reason = why,
                    events = open.events,
                    "transaction aborted; its events are processed again"
                );
                Ended::Aborted(
                    open.partitions
                        .into_iter()
                        .map(|(partition, (first, _))| (partition, first))
                        .collect(),
                )
            }
            Err(e) => {
                let reason = if is_fatal(&e) {
                    reason_of(&e)
                } else {
                    RestartReason::TransactionOutcomeUnknown
                };
                Ended::Fatal(reason, format!("aborting a transaction after {why}: {e}"))
            }
        }
    }
}

fn is_fatal(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_fatal(),
        _ => false,
    }
}

fn reason_of(error: &KafkaError) -> RestartReason {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::Fenced
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::TransactionCoordinatorFenced,
        ) => RestartReason::Fenced,
        _ => RestartReason::ProducerFatal,
    }
}

fn fatal(error: &KafkaError, doing: &str) -> (RestartReason, String) {
    let reason = if is_fatal(error) {
        reason_of(error)
    } else {
        RestartReason::ProducerFatal
    };
    (reason, format!("{doing}: {error}"))
}
