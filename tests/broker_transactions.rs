//! A check of the broker, not of bouncer (docs/operations.md, "Broker
//! anomalies seen in the fault campaign"): a transaction whose commit the
//! broker acknowledged must stay committed across a broker restart.
//!
//! One transactional producer commits small transactions back to back (a
//! record and a consumer offset each) while `scripts/kafka.sh restart`
//! stops the broker with SIGTERM (a controlled shutdown) and starts it
//! again, several times. Afterwards every record whose `commit_transaction`
//! returned Ok must be visible to a `read_committed` reader. Exactly once in
//! bouncer rests on this; the fault campaign saw it broken by Kafka 4.4.0.
//!
//! Ignored by `cargo test` (it restarts the broker); run it with
//! `cargo test --test broker_transactions -- --ignored --nocapture` against
//! a broker of `scripts/kafka.sh` (KAFKA_DIR, KAFKA_PORT as for the tests).
//! `BOUNCER_BROKER_RESTARTS` sets the number of restarts (default 5).

mod kafka_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_support::{
    Isolation, TopicSpec, bootstrap, broker_is_managed, create_topics, kafka_sh, scan_topic,
    serial_exclusive_on_broker, unique,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn producer(txid: &str) -> BaseProducer {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", txid)
        .set("transaction.timeout.ms", "10000")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    loop {
        match p.init_transactions(Duration::from_secs(10)) {
            Ok(()) => return p,
            Err(e) => {
                eprintln!("init_transactions: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// One transaction: record `n` and the offset `n + 1`. Ok when the broker
/// acknowledged the commit.
fn transaction(
    p: &BaseProducer,
    out: &str,
    input: &str,
    meta: &rdkafka::consumer::ConsumerGroupMetadata,
    n: u64,
) -> Result<(), String> {
    p.begin_transaction().map_err(|e| e.to_string())?;
    let payload = n.to_string();
    p.send(BaseRecord::<str, str>::to(out).payload(&payload))
        .map_err(|(e, _)| e.to_string())?;
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(input, 0, Offset::Offset(n as i64 + 1))
        .map_err(|e| e.to_string())?;
    p.send_offsets_to_transaction(&offsets, meta, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    // Deliver first, as bouncer does: rust-rdkafka's commit flushes in
    // 100 ms steps otherwise.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.in_flight_count() > 0 && Instant::now() < deadline {
        p.poll(Duration::from_millis(1));
    }
    p.commit_transaction(Duration::from_secs(10))
        .map_err(|e| e.to_string())
}

#[test]
#[ignore]
fn acknowledged_commits_survive_broker_restarts() {
    let _serial = serial_exclusive_on_broker();
    assert!(
        broker_is_managed(),
        "this test restarts the broker: run it against scripts/kafka.sh's"
    );
    let restarts: usize = std::env::var("BOUNCER_BROKER_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let name = unique("broker-txn");
    let input = format!("{name}.in");
    let out = format!("{name}.out");
    create_topics(&[
        TopicSpec {
            name: &input,
            partitions: 1,
            config: &[],
        },
        TopicSpec {
            name: &out,
            partitions: 1,
            config: &[],
        },
    ]);
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("{name}.group"))
        .create()
        .expect("consumer");
    let meta = group.group_metadata().expect("group metadata");

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let txid = format!("{name}-tx");
            let mut p = producer(&txid);
            let mut acknowledged = BTreeSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                match transaction(&p, &out, &input, &meta, n) {
                    Ok(()) => {
                        acknowledged.insert(n);
                    }
                    Err(_) => {
                        // Whatever the state: a new producer aborts or
                        // completes what was open.
                        drop(p);
                        p = producer(&txid);
                    }
                }
                n += 1;
            }
            acknowledged
        });
        for i in 1..=restarts {
            std::thread::sleep(Duration::from_secs(3));
            let began = Instant::now();
            assert!(kafka_sh(&["restart"]).success(), "restart {i} failed");
            eprintln!("restart {i}: broker back after {:?}", began.elapsed());
        }
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, Ordering::Release);
        worker.join().expect("producer thread")
    });

    let mut visible = BTreeSet::new();
    scan_topic(
        &out,
        Isolation::ReadCommitted,
        Duration::from_secs(60),
        |r| {
            if let Some(n) = r
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                visible.insert(n);
            }
        },
    );
    let missing: Vec<u64> = acknowledged.difference(&visible).copied().collect();
    eprintln!(
        "{} transactions acknowledged, {} records visible to read_committed, {} acknowledged but not visible: {:?}",
        acknowledged.len(),
        visible.len(),
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        missing.is_empty(),
        "the broker lost {} transactions whose commit it had acknowledged",
        missing.len()
    );
}
