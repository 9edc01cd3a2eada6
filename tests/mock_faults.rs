//! Client faults injected by librdkafka's mock cluster (SPEC §6: fault
//! injection; the pipeline runs in-process, as in `bouncer demo`).
//!
//! A partition whose fetcher never starts (issue #7): librdkafka (2.12)
//! leaves an assigned partition waiting for its committed offset for ever
//! when the group coordinator answers the OffsetFetch with a request-level
//! error such as NOT_COORDINATOR, which happens while a restarted broker
//! loads the group (confluentinc/librdkafka#5586). The consumer stays in
//! the group, owns the partition and consumes nothing from it.
//!
//! bouncer watches the fetch state of its assigned partitions and, when one
//! has not started fetching for `fetch_start_timeout`, ends the run so that
//! `bouncer run` starts it again with new clients (`reason="fetch-stuck"`).
//!
//! An offset commit that fails (at least once; e.g. with ILLEGAL_GENERATION
//! during a rebalance) is sent again with the next one, even when the
//! partition has gone idle: otherwise its last events stay uncommitted, and
//! the next owner processes them again.
//!
//! The start-up checks (SPEC §5) wait for a Kafka that is unreachable or not
//! ready yet (a leader being elected after a restart) and pass once it is
//! back; what needs the operator (a missing topic, a refused authorisation)
//! still ends the start at once, naming the setting.

mod metadata_proxy;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bouncer::config::{Config, ConfigError};
use bouncer::metrics::Metrics;
use bouncer::pipeline::kafka::check_topics;
use bouncer::pipeline::{self, Options, PipelineError, RestartReason, Shared};
use bouncer::reload::RuleStore;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

const EVENTS: usize = 200;

/// A mock cluster with bouncer's topics (two partitions each), `EVENTS`
/// events in the input, and a configuration for it; `settings` are
/// `BOUNCER_…` variables over the test's defaults.
fn setup(settings: &[(&str, &str)]) -> (MockCluster<'static, DefaultProducerContext>, Config) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let config = config(&cluster.bootstrap_servers(), settings);
    let t = &config.topics;
    for topic in [&t.input, &t.forward, &t.results, &t.retry, &t.dead_letter] {
        cluster.create_topic(topic, 2, 1).expect("topic");
    }
    cluster.create_topic(&t.control, 1, 1).expect("topic");
    produce(&cluster.bootstrap_servers(), &t.input, EVENTS);
    (cluster, config)
}

fn config(bootstrap: &str, settings: &[(&str, &str)]) -> Config {
    let mut vars = vec![
        ("BOUNCER_KAFKA__BOOTSTRAP_SERVERS", bootstrap),
        ("BOUNCER_HTTP_LISTEN", "127.0.0.1:0"),
        ("BOUNCER_GROUP", "mock-faults"),
        ("BOUNCER_SHUTDOWN_TIMEOUT", "5s"),
        ("BOUNCER_FETCH_START_TIMEOUT", "3s"),
        ("BOUNCER_COMMIT_INTERVAL", "100ms"),
    ];
    for (key, value) in settings {
        vars.retain(|(k, _)| k != key);
        vars.push((key, value));
    }
    // Short group timeouts: the mock cluster's rebalance after the first
    // run leaves the group waits about a session timeout.
    Config::from_parts(
        "[kafka.consumer]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 1000\n\"max.poll.interval.ms\" = 10000\n",
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
    .expect("config")
}

fn produce(bootstrap: &str, topic: &str, n: usize) {
    produce_range(bootstrap, topic, 0..n);
}

/// Events with keys (and recipients) numbered `keys`.
fn produce_range(bootstrap: &str, topic: &str, keys: std::ops::Range<usize>) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for i in keys {
        let event = format!(
            r#"{{"recipient":"user{i}@example.com","envelope":"b@shop.example","pool":"p1","ips":["192.0.2.1"],"tags":["t"],"mime":"Subject: hi\r\n\r\nHello"}}"#
        );
        let key = i.to_string();
        producer
            .send(BaseRecord::to(topic).key(&key).payload(&event))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Records in `topic` (all partitions), read from the start.
fn count(bootstrap: &str, topic: &str, partitions: i32) -> usize {
    keys(bootstrap, topic, partitions).len()
}

/// The keys of the records in `topic` (all partitions), read from the start.
fn keys(bootstrap: &str, topic: &str, partitions: i32) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fetch-watchdog-reader")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut keys = Vec::new();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof < partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                keys.push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    keys
}

#[test]
fn a_partition_that_never_starts_fetching_restarts_the_pipeline() {
    let (cluster, config) = setup(&[]);
    let bootstrap = cluster.bootstrap_servers();
    let t = &config.topics;

    // The group coordinator answers the first OffsetFetch with a
    // request-level NOT_COORDINATOR.
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR],
    );

    let pipeline = Pipeline::new();
    let started = Instant::now();
    // Bounded: without the watchdog the run never ends by itself.
    let result = pipeline.run_while(&config, Duration::from_secs(40), || true);
    match result {
        Err(PipelineError::Restart(RestartReason::FetchStuck, message)) => {
            assert!(
                message.contains("fetch_start_timeout"),
                "the reason names the setting: {message}"
            );
        }
        other => panic!(
            "expected the run to end with a fetch-stuck restart after ~3 s; it ended with {other:?} \
             after {:?} having consumed {} events",
            started.elapsed(),
            pipeline.consumed()
        ),
    }

    // A new run (as `bouncer run` starts) gets the partitions going.
    pipeline
        .run_while(&config, Duration::from_secs(30), || {
            pipeline.consumed() < EVENTS as u64
        })
        .expect("the second run ends cleanly");
    assert_eq!(
        pipeline.consumed(),
        EVENTS as u64,
        "the second run processes every event"
    );
    assert_eq!(
        count(&bootstrap, &t.forward, 2),
        EVENTS,
        "every event forwarded"
    );
}

#[test]
fn clients_left_with_no_broker_restart_the_pipeline_which_goes_on_through_new_ones() {
    // The clients reach the mock broker through a proxy that, on demand,
    // answers Metadata with no broker in it (confluentinc/librdkafka#5301):
    // librdkafka then drops the only broker it knew and never asks again.
    // They ask for metadata every second, so each meets such an answer.
    let cluster = MockCluster::new(1).expect("mock cluster");
    let proxy = metadata_proxy::MetadataProxy::start(&cluster.bootstrap_servers());
    let config = config(
        &proxy.bootstrap(),
        &[
            ("BOUNCER_KAFKA__TOPIC_METADATA_REFRESH_INTERVAL_MS", "1000"),
            // Only the no-brokers watch is to end the run here.
            ("BOUNCER_FETCH_START_TIMEOUT", "600s"),
        ],
    );
    let t = &config.topics;
    for topic in [&t.input, &t.forward, &t.results, &t.retry, &t.dead_letter] {
        cluster.create_topic(topic, 2, 1).expect("topic");
    }
    cluster.create_topic(&t.control, 1, 1).expect("topic");
    let direct = cluster.bootstrap_servers();
    produce(&direct, &t.input, EVENTS);

    let pipeline = Pipeline::new();
    let started = Instant::now();
    // Once the first events are through: strand the clients for 3 s (each
    // asks for metadata at least twice meanwhile), then write more events,
    // which only new clients can read.
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while pipeline.consumed() < EVENTS as u64 {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the first events were never processed"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            proxy.strand_for(Duration::from_secs(3));
            produce_range(&direct, &t.input, EVENTS..2 * EVENTS);
        });
        pipeline.run_while(&config, Duration::from_secs(90), || true)
    });
    match result {
        Err(PipelineError::Restart(RestartReason::NoBrokers, message)) => {
            assert!(
                message.contains("5301"),
                "the reason names the upstream issue: {message}"
            );
        }
        other => panic!(
            "expected the run to end with a no-brokers restart about 30 s after the clients lost \
             their broker; it ended with {other:?} after {:?}, having processed {} events",
            started.elapsed(),
            pipeline.consumed()
        ),
    }

    // The next run (as `bouncer run` starts it) bootstraps again and
    // forwards the events written while the first was cut off.
    let checked = std::sync::Mutex::new(Instant::now());
    pipeline
        .run_while(&config, Duration::from_secs(60), || {
            let mut checked = checked.lock().unwrap();
            if checked.elapsed() < Duration::from_secs(1) {
                return true;
            }
            *checked = Instant::now();
            let forwarded: BTreeSet<String> = keys(&direct, &t.forward, 2).into_iter().collect();
            forwarded.len() < 2 * EVENTS
        })
        .expect("the second run ends cleanly");
    let forwarded: BTreeSet<String> = keys(&direct, &t.forward, 2).into_iter().collect();
    let missing: Vec<usize> = (0..2 * EVENTS)
        .filter(|i| !forwarded.contains(&i.to_string()))
        .collect();
    assert!(missing.is_empty(), "events never forwarded: {missing:?}");
}

#[test]
fn a_failed_offset_commit_is_sent_again_while_the_partition_is_idle() {
    // Every event is in the input before the run starts, so the pipeline
    // drains it in its first commit interval and then has nothing new.
    let (cluster, config) = setup(&[("BOUNCER_COMMIT_INTERVAL", "500ms")]);
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", &config.group)
        .create()
        .expect("reader");
    let input = config.topics.input.clone();
    let committed = || -> i64 {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&input, 0);
        tpl.add_partition(&input, 1);
        reader
            .committed_offsets(tpl, Duration::from_secs(5))
            .map(|t| {
                t.elements()
                    .iter()
                    .filter_map(|e| e.offset().to_raw())
                    .filter(|o| *o > 0)
                    .sum()
            })
            .unwrap_or_else(|e| {
                eprintln!("committed offsets: {e}");
                0
            })
    };
    // Checked while the pipeline runs: its shutdown commits synchronously,
    // which would hide a commit that was never sent again.
    let all_committed = AtomicBool::new(false);
    let pipeline = Pipeline::new();
    pipeline
        .run_while(&config, Duration::from_secs(30), || {
            let done = committed() == EVENTS as i64;
            all_committed.store(done, Ordering::Relaxed);
            !done
        })
        .expect("the run ends cleanly");
    assert_eq!(pipeline.consumed(), EVENTS as u64);
    assert!(
        all_committed.load(Ordering::Relaxed),
        "the group committed the end of the input while the pipeline ran \
         (committed now: {})",
        committed()
    );
}

#[test]
fn a_slow_broker_holds_the_pipeline_back_without_losing_events() {
    // Acknowledgements take 100 ms, at most 20 events may be in flight and
    // the producer's queue holds 5 records: the pipeline keeps waiting for
    // deliveries, both before pausing (`max_in_flight`) and with its local
    // queue full, and must still forward every event once.
    let (cluster, config) = setup(&[
        ("BOUNCER_MAX_IN_FLIGHT", "20"),
        ("BOUNCER_KAFKA__PRODUCER__QUEUE_BUFFERING_MAX_MESSAGES", "5"),
        ("BOUNCER_KAFKA__PRODUCER__LINGER_MS", "0"),
    ]);
    cluster
        .broker_round_trip_time(1, Duration::from_millis(100))
        .expect("round-trip time");
    let pipeline = Pipeline::new();
    pipeline
        .run_while(&config, Duration::from_secs(60), || {
            pipeline.consumed() < EVENTS as u64
        })
        .expect("the run ends cleanly");
    assert_eq!(pipeline.consumed(), EVENTS as u64, "every event processed");
    assert_eq!(pipeline.metrics.events("forwarded"), EVENTS as u64);
    assert_eq!(
        count(&cluster.bootstrap_servers(), &config.topics.forward, 2),
        EVENTS,
        "every event forwarded once"
    );
}

/// What `bouncer run` hands each pipeline run, kept across runs.
struct Pipeline {
    store: Arc<RuleStore>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    options: Options,
}

impl Pipeline {
    fn new() -> Pipeline {
        Pipeline {
            store: Arc::new(RuleStore::new()),
            metrics: Arc::new(Metrics::new()),
            shared: Arc::new(Shared::default()),
            shutdown: Arc::new(AtomicBool::new(false)),
            options: Options {
                instance: "fetch-watchdog".into(),
            },
        }
    }

    /// Runs the pipeline until it ends by itself, `limit` passes or
    /// `go_on` says no; then shuts it down and returns how it ended.
    fn run_while(
        &self,
        config: &Config,
        limit: Duration,
        go_on: impl Fn() -> bool,
    ) -> Result<pipeline::Summary, PipelineError> {
        self.shutdown.store(false, Ordering::Release);
        let started = Instant::now();
        std::thread::scope(|s| {
            let run = s.spawn(|| {
                pipeline::run(
                    config,
                    self.store.clone(),
                    self.metrics.clone(),
                    self.shared.clone(),
                    self.shutdown.clone(),
                    &self.options,
                )
            });
            while !run.is_finished() && started.elapsed() < limit && go_on() {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.shutdown.store(true, Ordering::Release);
            run.join().expect("pipeline thread")
        })
    }

    /// Events processed so far, in every outcome.
    fn consumed(&self) -> u64 {
        ["forwarded", "failed", "deferred", "invalid"]
            .iter()
            .map(|o| self.metrics.events(o))
            .sum()
    }
}

/// Runs the start-up checks (without the configuration API, which the mock
/// cluster lacks); `waiting` is called with each error before a wait, and
/// the errors are returned with the outcome.
fn check_with(
    config: &Config,
    shutdown: &AtomicBool,
    mut waiting: impl FnMut(usize),
) -> (Result<bool, ConfigError>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let outcome = check_topics(config, false, shutdown, |error, _wait| {
        errors.push(ConfigError::new(&error.setting, &error.message));
        waiting(errors.len());
    });
    (outcome.map(|layout| layout.is_some()), errors)
}

#[test]
fn start_up_checks_wait_for_an_unreachable_broker_and_pass_once_it_is_back() {
    let (cluster, config) = setup(&[]);
    cluster.broker_down(1).expect("broker down");
    let shutdown = AtomicBool::new(false);
    let (outcome, errors) = check_with(&config, &shutdown, |attempts| {
        assert_eq!(attempts, 1, "the broker is back after the first wait");
        cluster.broker_up(1).expect("broker up");
    });
    assert!(
        matches!(outcome, Ok(true)),
        "the checks pass once the broker is back: {outcome:?}"
    );
    assert_eq!(
        errors.len(),
        1,
        "checked again once the broker was back: {errors:?}"
    );
    for error in &errors {
        assert_eq!(error.setting, "kafka.\"bootstrap.servers\"");
        assert!(error.message.contains("cannot reach Kafka"), "{error:?}");
    }
}

#[test]
fn a_topic_without_a_leader_yet_is_waited_for_not_reported_missing() {
    let (cluster, config) = setup(&[]);
    let forward = config.topics.forward.clone();
    cluster
        .topic_error(
            &forward,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        )
        .expect("topic error");
    let shutdown = AtomicBool::new(false);
    // Still without a leader at the second check; elected before the third.
    let (outcome, errors) = check_with(&config, &shutdown, |attempts| {
        if attempts == 2 {
            cluster
                .topic_error(&forward, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
                .expect("topic error cleared");
        }
    });
    assert!(matches!(outcome, Ok(true)), "{outcome:?}");
    assert_eq!(errors.len(), 2, "{errors:?}");
    for error in &errors {
        assert_eq!(error.setting, "topics.forward");
        assert!(
            error
                .message
                .contains(&format!("topic \"{forward}\" is not available")),
            "{error:?}"
        );
    }

    // A shutdown while waiting ends the checks without an error.
    cluster
        .topic_error(
            &forward,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        )
        .expect("topic error");
    let (outcome, errors) = check_with(&config, &shutdown, |_| {
        shutdown.store(true, Ordering::Release);
    });
    assert!(matches!(outcome, Ok(false)), "{outcome:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn what_needs_the_operator_still_ends_the_start_at_once() {
    let (cluster, config) = setup(&[]);
    let shutdown = AtomicBool::new(false);

    let results = config.topics.results.clone();
    cluster
        .topic_error(
            &results,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .expect("topic error");
    let (outcome, errors) = check_with(&config, &shutdown, |_| {});
    let error = outcome.expect_err("a refused authorisation is not waited for");
    assert!(errors.is_empty(), "no wait: {errors:?}");
    assert_eq!(error.setting, "topics.results");
    assert!(
        error.message.contains("is not available") && error.message.contains("authorization"),
        "{error:?}"
    );
    cluster
        .topic_error(&results, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .expect("topic error cleared");

    let mut missing = config.clone();
    missing.topics.retry = "no-such-topic".into();
    let (outcome, errors) = check_with(&missing, &shutdown, |_| {});
    let error = outcome.expect_err("a missing topic is not waited for");
    assert!(errors.is_empty(), "no wait: {errors:?}");
    assert_eq!(error.setting, "topics.retry");
    assert!(error.message.contains("does not exist"), "{error:?}");
}
