//! Exactly once (SPEC §6) against a real broker: a `read_committed` reader
//! sees each output an input requires once, across SIGKILLs, an aborted
//! transaction, a fenced producer and a lost assignment. (librdkafka's mock
//! cluster has no `read_committed`, so none of this can run there.)

mod kafka_support;
mod metadata_proxy;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use kafka_support::{
    Bouncer, FEED_RULES, Fed, Feed, Input, Isolation, Rec, Setup, TestProducer, WAIT, bootstrap,
    event, inputs_by_coordinates, metric, scan_topic, serial, wait_committed_to_end,
};
use serde_json::json;

/// Top-level settings of an exactly-once instance.
fn exactly_once(transactional_id: &str, interval: &str) -> Vec<String> {
    vec![
        "guarantee = \"exactly-once\"".into(),
        format!("transactional_id = {transactional_id:?}"),
        format!("transaction_interval = {interval:?}"),
    ]
}

fn start(setup: &Setup, instance: &str, transactional_id: &str) -> Bouncer {
    let mut b = setup.start_with(instance, &exactly_once(transactional_id, "200ms"));
    b.wait_ready();
    b
}

/// Every committed output record of the test's output topics.
fn committed_outputs(setup: &Setup) -> Vec<Rec> {
    let t = &setup.topics;
    let mut out = Vec::new();
    for topic in [&t.forward, &t.results, &t.retry, &t.dead_letter] {
        scan_topic(topic, Isolation::ReadCommitted, WAIT, |r| out.push(r));
    }
    out
}

/// After the input is consumed and committed to its end: every input has
/// exactly one output record visible to `read_committed`. Returns the
/// outputs.
fn assert_exactly_once(setup: &Setup, fed: Option<Fed>) -> Vec<Rec> {
    let t = &setup.topics;
    wait_committed_to_end(&setup.group, &t.input, Duration::from_secs(120));
    let inputs = inputs_by_coordinates(&t.input);
    if let Some(fed) = fed {
        fed.assert_in_input(&inputs);
    }
    let outputs = committed_outputs(setup);
    let mut per_input: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &outputs {
        let input = r.input();
        assert!(
            inputs.contains_key(&input),
            "output {} names an unknown input {input}",
            r.coordinates()
        );
        per_input.entry(input).or_default().push(r.coordinates());
    }
    let lost: Vec<&String> = inputs
        .keys()
        .filter(|c| !per_input.contains_key(*c))
        .collect();
    let duplicated: Vec<(&String, &Vec<String>)> =
        per_input.iter().filter(|(_, o)| o.len() > 1).collect();
    eprintln!(
        "{}: {} inputs, {} committed outputs, {} lost, {} duplicated",
        setup.name,
        inputs.len(),
        outputs.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(
        lost.is_empty(),
        "{} inputs without output, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "{} inputs with more than one output, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    outputs
}

fn metric_of(b: &Bouncer, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&b.metrics(), name, labels).unwrap_or(0.0)
}

fn stop(mut b: Bouncer) {
    b.terminate();
    let status = b.wait_exit(Duration::from_secs(20)).expect("bouncer exits");
    assert!(status.success(), "exit status {status}\n{}", b.log());
}

#[test]
fn outputs_are_visible_once_across_sigkills() {
    let _serial = serial();
    let setup = Setup::new("eos-kill", &[("r.toml", FEED_RULES)]);
    setup.create_topics(4);
    let t = setup.topics.clone();
    let mut bouncer = start(&setup, "eos-kill-0", "eos-kill");
    let feed = Feed::start(&t.input, "kill", 4, 6000, Duration::from_secs(15));
    for round in 1..=2 {
        feed.wait_sent(round * 2000);
        bouncer.wait_processed(300.0);
        bouncer.kill();
        // The same transactional_id: the new producer aborts the killed
        // one's open transaction when it initialises.
        bouncer = start(&setup, &format!("eos-kill-{round}"), "eos-kill");
    }
    let fed = feed.join();
    let outputs = assert_exactly_once(&setup, Some(fed));
    let stopped = outputs.iter().filter(|r| r.topic == t.results).count();
    if fed.renewed == 0 {
        assert_eq!(stopped, 6000usize.div_ceil(7), "every 7th event is stopped");
    }
    assert!(
        metric_of(
            &bouncer,
            "bouncer_transactions_total",
            &[("result", "committed")]
        ) > 0.0
    );
    stop(bouncer);
}

fn noise(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[test]
fn an_aborted_transaction_leaves_no_visible_output() {
    let _serial = serial();
    let setup = Setup::new("eos-abort", &[("r.toml", FEED_RULES)]);
    let t = setup.topics.clone();
    // The forward topic refuses batches above 20000 bytes: one big event's
    // forward record fails at the broker, which fails its transaction.
    setup.create_topics_with_small_forward("20000");
    // A long transaction, so that the events before the big one are
    // written in the transaction that fails.
    let mut bouncer = setup.start_with("eos-abort", &exactly_once("eos-abort", "3s"));
    bouncer.wait_ready();
    let mut producer = TestProducer::new(&t.input);
    for n in 0..301 {
        let mut e = event(
            &format!("e-{n}"),
            &format!("u{n}@example.org"),
            "dedicated-1",
            &["weekly"],
        );
        if n == 150 {
            e["mime"] = json!(noise(60_000));
        }
        producer.send(&Input::new(n % 2, Some(&format!("k{n}")), e.to_string()));
    }
    producer.flush();

    let outputs = assert_exactly_once(&setup, None);
    let forwards = outputs.iter().filter(|r| r.topic == t.forward).count();
    let dead: Vec<&Rec> = outputs
        .iter()
        .filter(|r| r.topic == t.dead_letter)
        .collect();
    assert_eq!(forwards, 300, "every other event forwarded once");
    assert_eq!(dead.len(), 1, "the big event is dead-lettered once");
    let error = dead[0].header("bouncer-error").expect("bouncer-error");
    assert!(error.starts_with("produce-failed: forward"), "{error}");
    assert!(
        dead[0].value.as_ref().is_some_and(|v| v.len() > 60_000),
        "the dead letter keeps the value"
    );
    assert!(
        metric_of(
            &bouncer,
            "bouncer_transactions_total",
            &[("result", "aborted")]
        ) >= 1.0,
        "a transaction was aborted"
    );
    // The aborted transaction's records are in the log, visible only to a
    // read_uncommitted reader.
    let written = scan_topic(&t.forward, Isolation::ReadUncommitted, WAIT, |_| {});
    assert!(
        written > forwards,
        "the aborted transaction wrote records ({written} in the log, {forwards} committed)"
    );
    stop(bouncer);
}

#[test]
fn a_fenced_producer_restarts_and_nothing_is_duplicated() {
    let _serial = serial();
    let setup = Setup::new("eos-fenced", &[("r.toml", FEED_RULES)]);
    setup.create_topics(4);
    let t = setup.topics.clone();
    let a = start(&setup, "eos-fenced-a", "eos-same-id");
    let feed = Feed::start(&t.input, "fenced", 4, 4000, Duration::from_secs(10));
    feed.wait_sent(1000);
    // A second instance, misconfigured with the same transactional_id:
    // its initialisation fences the first one's producer.
    let b = start(&setup, "eos-fenced-b", "eos-same-id");
    let deadline = Instant::now() + WAIT;
    while metric_of(
        &a,
        "bouncer_pipeline_restarts_total",
        &[("reason", "fenced")],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the first instance never noticed it was fenced:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        a.log().contains("same transactional_id"),
        "the log says what to fix"
    );
    let fed = feed.join();
    stop(b);
    assert_exactly_once(&setup, Some(fed));
    stop(a);
}

#[test]
fn clients_left_with_no_broker_restart_and_nothing_is_duplicated() {
    // The instance reaches the broker through a proxy that, for three
    // seconds, answers Metadata with no broker in it; its clients ask for
    // metadata every second, and librdkafka 2.12 drops the only broker it
    // knew (confluentinc/librdkafka#5301). The pipeline abandons its run
    // with a transaction open; the next run's producer, with the same
    // transactional_id, aborts it, and its events are processed again.
    let _serial = serial();
    let proxy = metadata_proxy::MetadataProxy::start(bootstrap());
    let mut setup = Setup::new("eos-stranded", &[("r.toml", FEED_RULES)]);
    setup.through_proxy(proxy.bootstrap());
    setup.create_topics(4);
    let t = setup.topics.clone();
    let mut bouncer = start(&setup, "eos-stranded", "eos-stranded");
    // The feed writes to the broker directly.
    let feed = Feed::start(&t.input, "stranded", 4, 4000, Duration::from_secs(10));
    feed.wait_sent(1000);
    bouncer.wait_processed(300.0);
    proxy.strand_for(Duration::from_secs(3));
    // Either the pipeline notices before it next commits and restarts with
    // new clients, or a transactional call blocks for good and the process
    // exits, for its supervisor (here the test) to start it again.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = bouncer.exited() {
            let log = bouncer.log();
            assert_eq!(status.code(), Some(1), "{log}");
            assert!(
                log.contains("has not returned after"),
                "the log names the call that never returned:\n{log}"
            );
            eprintln!("the instance exited: a transactional call never returned");
            bouncer = start(&setup, "eos-stranded-again", "eos-stranded");
            break;
        }
        if metric_of(
            &bouncer,
            "bouncer_pipeline_restarts_total",
            &[("reason", "no-brokers")],
        ) >= 1.0
        {
            eprintln!("the pipeline restarted with new clients");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "neither a no-brokers restart nor an exit 90 s after the clients lost their \
             broker:\n{}",
            bouncer.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fed = feed.join();
    assert_exactly_once(&setup, Some(fed));
    stop(bouncer);
}

/// The other way out of the test above, made certain: with a transaction
/// open and idle when the clients lose their broker, the consumer's
/// statistics (every second) list no broker before the commit is due, so
/// the commit does not start (librdkafka would wait for ever); the run ends
/// with `no-brokers` and the process goes on with new clients. Nothing is
/// lost or duplicated. (The producer's own statistics go on listing the
/// dropped broker, which its transaction coordinator holds: found by this
/// test, whose first version relied on them and whose instance exited.)
#[test]
fn a_commit_due_after_the_clients_lost_every_broker_is_not_started() {
    let _serial = serial();
    let proxy = metadata_proxy::MetadataProxy::start(bootstrap());
    let mut setup = Setup::new("eos-stranded-idle", &[("r.toml", FEED_RULES)]);
    setup.through_proxy(proxy.bootstrap());
    // The commit, 15 s after the transaction began, comes well after the
    // consumer's statistics have shown no broker, and well before its
    // session times out or its own watch ends the run (30 s after it lost
    // its broker). A transaction may last at most half of
    // `transaction.timeout.ms`.
    setup
        .producer
        .push("\"transaction.timeout.ms\" = 60000".into());
    setup.consumer = vec!["\"session.timeout.ms\" = 25000".into()];
    setup.create_topics(4);
    let t = setup.topics.clone();
    let mut bouncer = setup.start_with(
        "eos-stranded-idle",
        &exactly_once("eos-stranded-idle", "15s"),
    );
    bouncer.wait_ready();
    // Written to the broker directly, before the proxy strands the instance.
    let fed = Feed::start(&t.input, "idle", 4, 200, Duration::from_secs(1)).join();
    bouncer.wait_processed(200.0);
    proxy.strand_for(Duration::from_secs(3));

    let deadline = Instant::now() + Duration::from_secs(90);
    while metric_of(
        &bouncer,
        "bouncer_pipeline_restarts_total",
        &[("reason", "no-brokers")],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no no-brokers restart 90 s after the clients lost their broker:\n{}",
            bouncer.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = bouncer.log();
    assert!(
        log.contains("committing a transaction: the Kafka consumer knows no broker"),
        "the commit was not started, and the log says why:\n{log}"
    );
    assert!(!log.contains("has not returned after"), "{log}");
    assert!(bouncer.exited().is_none(), "the process goes on:\n{log}");
    let outputs = assert_exactly_once(&setup, Some(fed));
    assert_eq!(outputs.len(), 200);
    stop(bouncer);
}

fn signal(b: &Bouncer, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &b.pid().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {}", b.pid());
}

#[test]
fn a_lost_assignment_never_commits() {
    let _serial = serial();
    let setup = Setup::new("eos-lost", &[("r.toml", FEED_RULES)]);
    setup.create_topics(4);
    let t = setup.topics.clone();
    // Long transactions: A surely has one open when it is frozen.
    let mut a = setup.start_with("eos-lost-a", &exactly_once("eos-lost-a", "2s"));
    a.wait_ready();
    a.wait_assigned();
    let mut b = setup.start_with("eos-lost-b", &exactly_once("eos-lost-b", "2s"));
    b.wait_ready();
    b.wait_assigned();
    let feed = Feed::start(&t.input, "lost", 4, 6000, Duration::from_secs(20));
    feed.wait_sent(1500);
    a.wait_processed(200.0);
    // Frozen past its session timeout (6 s), not past the transaction
    // timeout (10 s): the group gives A's partitions to B, and A wakes up
    // with an open transaction for partitions it no longer owns.
    signal(&a, "-STOP");
    std::thread::sleep(Duration::from_secs(8));
    signal(&a, "-CONT");
    let deadline = Instant::now() + WAIT;
    while !a.log().contains("assignment lost") {
        assert!(
            Instant::now() < deadline,
            "A never saw its assignment lost:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fed = feed.join();
    // Had A committed what it did for the lost partitions, B's work on
    // them would show twice.
    assert_exactly_once(&setup, Some(fed));
    stop(a);
    stop(b);
}
