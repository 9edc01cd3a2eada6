//! At least once under faults (SPEC §6), against a real broker: bouncer
//! killed mid-stream, the broker restarted mid-stream, and a second instance
//! joining and the first leaving the group mid-stream. Afterwards every
//! input has its output; duplicates are counted and allowed. And a Kafka
//! that does not answer at start is waited for, not a reason to exit.

mod kafka_support;
mod metadata_proxy;

use std::time::{Duration, Instant};

use kafka_support::{
    Bouncer, FEED_RULES, Fed, Feed, Reader, Setup, TestProducer, TopicSpec, assert_no_loss,
    bootstrap, broker_is_managed, create_topics, free_port, inputs_by_coordinates, kafka_sh,
    metric, serial, unique, wait_committed_to_end,
};
use metadata_proxy::MetadataProxy;

/// After the feed is done: the group commits the end of the input, and
/// every input has an output. Returns the number of duplicates.
fn check_no_loss(setup: &Setup, fed: Fed) -> usize {
    let t = &setup.topics;
    wait_committed_to_end(&setup.group, &t.input, Duration::from_secs(90));
    let inputs = inputs_by_coordinates(&t.input);
    fed.assert_in_input(&inputs);
    let total = inputs.len();
    let mut reader = Reader::new(&[&t.forward, &t.results, &t.retry, &t.dead_letter]);
    reader.read_to_end();
    let duplicates = assert_no_loss(&inputs, &reader.records);
    assert_eq!(reader.of(&t.dead_letter).count(), 0, "no dead letters");
    assert_eq!(reader.of(&t.retry).count(), 0, "no retries");
    eprintln!(
        "{}: {total} inputs, {} outputs, {duplicates} duplicated",
        setup.name,
        reader.records.len()
    );
    duplicates
}

#[test]
fn sigkill_mid_stream_loses_nothing() {
    let _serial = serial();
    let setup = Setup::new("sigkill", &[("r.toml", FEED_RULES)]);
    setup.create_topics(4);
    let t = setup.topics.clone();
    let mut bouncer = setup.start("sigkill-0");
    bouncer.wait_ready();
    let feed = Feed::start(&t.input, "kill", 4, 9000, Duration::from_secs(24));

    for round in 1..=3 {
        feed.wait_sent(round * 2000);
        bouncer.wait_processed(300.0);
        bouncer.kill();
        // The killed member's partitions go to the next one once its session
        // (6 s) expires.
        bouncer = setup.start(&format!("sigkill-{round}"));
        bouncer.wait_ready();
    }
    let fed = feed.join();
    check_no_loss(&setup, fed);
    bouncer.terminate();
    assert!(
        bouncer
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
}

/// Starts the broker again when dropped, so a failing test never leaves it
/// down.
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = kafka_sh(&["start"]);
    }
}

#[test]
fn broker_restart_mid_stream_loses_nothing() {
    let _serial = kafka_support::serial_exclusive();
    kafka_support::bootstrap();
    if !broker_is_managed() {
        eprintln!("skipped: the broker on KAFKA_BOOTSTRAP is not managed by scripts/kafka.sh");
        return;
    }
    let setup = Setup::new("broker-restart", &[("r.toml", FEED_RULES)]);
    setup.create_topics(4);
    let t = setup.topics.clone();
    let mut bouncer = setup.start("broker-restart");
    bouncer.wait_ready();
    let feed = Feed::start(&t.input, "restart", 4, 6000, Duration::from_secs(20));
    feed.wait_sent(1500);
    bouncer.wait_processed(500.0);
    {
        let _guard = BrokerGuard;
        assert!(kafka_sh(&["restart"]).success(), "scripts/kafka.sh restart");
    }
    let fed = feed.join();
    check_no_loss(&setup, fed);
    assert!(
        bouncer.exited().is_none(),
        "bouncer survived the broker restart"
    );
    bouncer.terminate();
    assert!(
        bouncer
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn instances_joining_and_leaving_mid_stream_lose_nothing() {
    let _serial = serial();
    let setup = Setup::new("rebalance", &[("r.toml", FEED_RULES)]);
    setup.create_topics(6);
    let t = setup.topics.clone();
    let mut a = setup.start("rebalance-a");
    a.wait_ready();
    a.wait_assigned();
    let feed = Feed::start(&t.input, "rebalance", 6, 8000, Duration::from_secs(20));
    feed.wait_sent(1500);

    // B joins: some partitions move to it while events flow.
    let mut b = setup.start("rebalance-b");
    b.wait_ready();
    b.wait_assigned();
    b.wait_processed(200.0);
    let a_events = metric(
        &a.metrics(),
        "bouncer_events_total",
        &[("outcome", "forwarded")],
    )
    .unwrap_or(0.0);
    assert!(a_events > 0.0, "a processed events before leaving");

    // A leaves cleanly: its partitions are drained, committed and handed over.
    feed.wait_sent(5000);
    a.terminate();
    let exit = a.wait_exit(Duration::from_secs(15)).expect("a exits");
    assert!(exit.success(), "exit status {exit}");

    let fed = feed.join();
    check_no_loss(&setup, fed);
    b.terminate();
    assert!(
        b.wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn a_kafka_that_does_not_answer_at_start_is_waited_for_and_sigterm_still_exits_0() {
    // No broker is needed: the bootstrap address is a port nothing listens on.
    let setup = Setup::new("unreachable-at-start", &[("feed.toml", FEED_RULES)]);
    let closed = free_port();
    let port = free_port();
    let t = &setup.topics;
    let config = setup.dir.path().join("unreachable.toml");
    std::fs::write(
        &config,
        format!(
            "group = {group:?}\nrules_dir = {rules:?}\nhttp_listen = \"127.0.0.1:{port}\"\n\
             shutdown_timeout = \"10s\"\n\n[topics]\ninput = {:?}\nforward = {:?}\nresults = {:?}\n\
             retry = {:?}\ndead_letter = {:?}\ncontrol = {:?}\n\n[kafka]\n\
             \"bootstrap.servers\" = \"127.0.0.1:{closed}\"\n",
            t.input,
            t.forward,
            t.results,
            t.retry,
            t.dead_letter,
            t.control,
            group = setup.group,
            rules = setup.rules_dir.display().to_string(),
        ),
    )
    .expect("config file");
    let log = setup.dir.path().join("unreachable.log");
    // Truncated as /status writes it, to milliseconds.
    let started = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3);
    let mut bouncer = Bouncer::spawn(&config, port, &log, "unreachable");

    // The first check waits up to 15 s for an answer, then says so and
    // tries again; the process carries on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bouncer
        .log()
        .contains("Kafka is not available for the start-up checks")
    {
        if let Some(status) = bouncer.exited() {
            panic!(
                "bouncer exited ({status}) instead of waiting:\n{}",
                bouncer.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no warning about the start-up checks:\n{}",
            bouncer.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        bouncer.log().contains("bootstrap.servers"),
        "names the setting:\n{}",
        bouncer.log()
    );
    let status = bouncer.status().expect("/status answers while waiting");
    let last_error = status["kafka"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("cannot reach Kafka"), "{status}");
    // With when it happened, so an old error is not taken for a current one.
    let at = status["kafka"]["last_error_at"]
        .as_str()
        .unwrap_or_default();
    let at = chrono::DateTime::parse_from_rfc3339(at)
        .unwrap_or_else(|e| panic!("last_error_at is not RFC 3339 ({e}): {status}"))
        .with_timezone(&chrono::Utc);
    assert!(started <= at && at <= chrono::Utc::now(), "{status}");
    assert_eq!(bouncer.get("/healthz").map(|(code, _)| code), Some(200));
    assert_eq!(
        bouncer.get("/readyz").map(|(code, _)| code),
        Some(503),
        "not ready before the checks pass"
    );

    // SIGTERM ends the wait at once, even during a check that is waiting
    // for an answer (the second one starts 1 s after the warning and waits
    // up to 15 s): before the 10 s shutdown timeout, with status 0.
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    bouncer.terminate();
    let exit = bouncer
        .wait_exit(Duration::from_secs(30))
        .expect("bouncer exits after SIGTERM");
    assert!(exit.success(), "exit status {exit}:\n{}", bouncer.log());
    assert!(
        !bouncer.log().contains("shutdown timeout reached"),
        "the wait ended by itself, not by the shutdown timeout ({:?}):\n{}",
        started.elapsed(),
        bouncer.log()
    );
}

/// The tests' feed is a client too: a metadata response that lists no
/// broker (confluentinc/librdkafka#5301; a single broker answers so during
/// its controlled shutdown, as in the broker restarts above and in the
/// fault campaign) leaves its producer with no broker. The feed replaces it
/// and sends again what was not acknowledged, so every event reaches the
/// input topic and the tests' checks stay about bouncer.
#[test]
fn the_test_feed_replaces_a_producer_left_with_no_broker_and_sends_everything() {
    let _serial = serial();
    let topic = unique("feed-stranded");
    create_topics(&[TopicSpec {
        name: &topic,
        partitions: 4,
        config: &[],
    }]);
    let proxy = MetadataProxy::start(bootstrap());
    let producer = TestProducer::through(&topic, &proxy.bootstrap());
    let feed = Feed::start_with(producer, "stranded", 4, 3000, Duration::from_secs(8));
    feed.wait_sent(500);
    proxy.strand_for(Duration::from_secs(3));
    let fed = feed.join();
    assert!(
        fed.renewed >= 1,
        "the producer was left with no broker and replaced: {fed:?}"
    );
    let inputs = inputs_by_coordinates(&topic);
    fed.assert_in_input(&inputs);
}
