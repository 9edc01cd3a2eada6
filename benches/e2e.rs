//! End to end on the real broker (issue #8): `bouncer run` beside a
//! pass-through baseline measured in the same run, in both delivery modes.
//!
//! For each mode (at-least-once, exactly-once) and each run:
//!
//! 1. **Drain**: the baseline, then bouncer (10,000 rules), each as a child
//!    process with a fresh consumer group, drains the same pre-loaded backlog
//!    of ~1.3 KB MailerQ events (`benches/common`). Throughput counts from
//!    the first output to the last: outputs visible in the output topics
//!    (at least once) or the group's committed offsets (exactly once, where
//!    they commit with the outputs). CPU (utime + stime) and RSS come from
//!    `/proc/PID` of the child.
//! 2. **Latency**: each again, on an empty input topic fed by a paced
//!    producer at a fixed rate, and a `read_committed` reader of the output
//!    topics that times each record from the input's send (a
//!    `bench-sent-us` header, which both keep: bouncer copies input headers
//!    onto every output, and its result records get a new timestamp) to its
//!    receipt. The rate is half the most the baseline passes with that
//!    producer and reader beside it (offered 1.5 times its drain rate for a
//!    few seconds, outputs counted), measured once per mode, or `--rate`.
//!
//! Then once: **reload under load** (bouncer with 100,000 rules at the same
//! rate while the rule files are replaced by another 100,000-rule set, file
//! by file via rename) and a **memory check** (bouncer with default settings
//! draining a backlog of millions of events).
//!
//! The baseline is this binary too (`e2e baseline --config FILE`): consume
//! → produce with no parsing and no rules, its clients built by
//! `bouncer::pipeline::kafka::{consumer_config, producer_config}` from the
//! same configuration file bouncer gets, with the same guarantee: at least
//! once, offsets are committed every `commit_interval` up to the last
//! acknowledged record of each partition; exactly once, a transaction per
//! `transaction_interval` (or `transaction_max_events`) with the offsets
//! sent in it. It runs on bouncer's allocator (jemalloc for the whole
//! process, `bouncer::alloc`), configured the same way, so that the
//! comparison is of the work done, not of the allocators.
//!
//! `scripts/bench-e2e.sh` builds, starts a broker, runs this and stops it;
//! method and figures are in BENCHMARKS.md. Options: `--help`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bouncer::config::{Config, Guarantee};
use bouncer::rules::RuleSet;
use bouncer::rules::load::RuleFiles;
use common::{EventStream, RuleSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// The header carrying an input's send time, in µs since the driver's epoch.
const SENT_HEADER: &str = "bench-sent-us";
/// Seeds: the same rules and events in every run.
const RULES_SEED: u64 = 0x5eed_e2e0;
const RELOAD_SEED_A: u64 = 0x5eed_a000;
const RELOAD_SEED_B: u64 = 0x5eed_b000;
const BACKLOG_SEED: u64 = 0xe7e7_e2e0;
const PACED_SEED: u64 = 0xe7e7_9ace;
/// Distinct events the paced producer cycles through.
const PACED_POOL: usize = 50_000;
/// Other processes' share of the machine above which a phase's figures are
/// flagged as unreliable.
const NOISY_PCT: f64 = 15.0;
/// Give up on a phase that makes no progress for this long.
const STUCK: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("baseline") {
        if let Err(e) = bouncer::alloc::configure() {
            eprintln!("baseline: {e}");
        }
        baseline::main(&args[1..]);
        return;
    }
    let opts = match Options::parse(&args) {
        Ok(opts) => opts,
        Err(e) if e == "help" => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("e2e: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = driver::run(&opts) {
        eprintln!("e2e: error: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Options.
// ---------------------------------------------------------------------------

const USAGE: &str = "\
usage: e2e [OPTIONS]            (cargo bench --bench e2e -- [OPTIONS])
       e2e baseline --config FILE

  --bootstrap ADDR     broker (default: $KAFKA_BOOTSTRAP, else 127.0.0.1:29092)
  --bouncer PATH       bouncer binary (default: target/release/bouncer)
  --quick              200,000 events, 6 s latency phases, 1 reload swap, 400,000-event memory check
  --events N           backlog drained per process (default 1000000)
  --memory-events N    backlog of the memory check (default 5000000; 0 skips it)
  --modes LIST         alo,eos (default both; also at-least-once, exactly-once)
  --runs N             repeats of the drain and latency phases; medians reported (default 1)
  --latency-secs S     measured seconds of each latency phase (default 20; 0 skips them)
  --warmup-secs S      paced seconds before measuring (default 3)
  --rate R             offered load in events/s (default: half what the baseline passes beside
                       the paced producer and reader, measured once per mode)
  --rules N            rules bouncer runs with (default 10000)
  --match-percent P    share of the events that match a rule (default 5; e.g. 50 for a
                       campaign cancelled while half the queue is its mail)
  --reload-rules N     rules of each set swapped in the reload phase (default 100000)
  --reload-swaps K     swaps in the reload phase (default 3; 0 skips it)
  --partitions P       input partitions (default 6)
  --out DIR            where results go (default target/bench-summary)
  --perf               perf record each drain of run 1 (out/perf-<phase>.data; PERF_CALL_GRAPH=dwarf)
  --set KEY=VALUE      a top-level setting in every configuration (e.g. max_in_flight=5000)
  --consumer KEY=VALUE a [kafka.consumer] property for bouncer and the baseline
  --producer KEY=VALUE a [kafka.producer] property for bouncer and the baseline";

#[derive(Debug, Clone)]
struct Options {
    bootstrap: String,
    bouncer: PathBuf,
    events: u64,
    memory_events: u64,
    modes: Vec<Mode>,
    runs: usize,
    latency_secs: f64,
    warmup_secs: f64,
    rate: Option<f64>,
    rules: usize,
    /// Per mille of the events matching a rule (default 50).
    match_per_mille: u64,
    reload_rules: usize,
    reload_swaps: usize,
    partitions: i32,
    out: PathBuf,
    quick: bool,
    /// `perf record` each drain of run 1 into `out`.
    perf: bool,
    /// Extra settings for every process's configuration file, for tuning
    /// experiments: top-level ones, and librdkafka properties of
    /// `[kafka.consumer]` and `[kafka.producer]` (the baseline's clients
    /// take them too).
    settings: Vec<(String, String)>,
    consumer: Vec<(String, String)>,
    producer: Vec<(String, String)>,
}

/// `KEY=VALUE`; the value is written to TOML as it is when it parses as a
/// TOML value (`5`, `"1s"`, `true`), else as a string.
fn setting(name: &str, text: String) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{name}: expected KEY=VALUE, got {text:?}"))?;
    let value = value.trim();
    let literal = format!("x = {value}").parse::<toml::Table>().is_ok();
    let value = if literal {
        value.to_owned()
    } else {
        format!("{value:?}")
    };
    Ok((key.trim().to_owned(), value))
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("target"));
        let mut o = Options {
            bootstrap: std::env::var("KAFKA_BOOTSTRAP")
                .ok()
                .filter(|b| !b.trim().is_empty())
                .unwrap_or_else(|| "127.0.0.1:29092".into()),
            bouncer: target.join("release/bouncer"),
            events: 1_000_000,
            memory_events: 5_000_000,
            modes: vec![Mode::AtLeastOnce, Mode::ExactlyOnce],
            runs: 1,
            latency_secs: 20.0,
            warmup_secs: 3.0,
            rate: None,
            rules: 10_000,
            match_per_mille: 50,
            reload_rules: 100_000,
            reload_swaps: 3,
            partitions: 6,
            out: target.join("bench-summary"),
            quick: false,
            perf: false,
            settings: Vec::new(),
            consumer: Vec::new(),
            producer: Vec::new(),
        };
        // --quick first, so that explicit options given with it win.
        if args.iter().any(|a| a == "--quick") {
            o.quick = true;
            o.events = 200_000;
            o.memory_events = 400_000;
            o.latency_secs = 6.0;
            o.warmup_secs = 2.0;
            o.reload_swaps = 1;
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
                v.replace('_', "")
                    .parse()
                    .map_err(|_| format!("{name}: not a number: {v:?}"))
            }
            match arg.as_str() {
                "--quick" => {}
                "-h" | "--help" => return Err("help".into()),
                "--bootstrap" => o.bootstrap = value(arg)?,
                "--bouncer" => o.bouncer = value(arg)?.into(),
                "--events" => o.events = num(arg, value(arg)?)?,
                "--memory-events" => o.memory_events = num(arg, value(arg)?)?,
                "--runs" => o.runs = num(arg, value(arg)?)?,
                "--latency-secs" => o.latency_secs = num(arg, value(arg)?)?,
                "--warmup-secs" => o.warmup_secs = num(arg, value(arg)?)?,
                "--rate" => o.rate = Some(num(arg, value(arg)?)?),
                "--rules" => o.rules = num(arg, value(arg)?)?,
                "--match-percent" => {
                    let pct: f64 = num(arg, value(arg)?)?;
                    if !(0.0..=100.0).contains(&pct) {
                        return Err(format!("{arg}: {pct} is not a percentage (0 to 100)"));
                    }
                    o.match_per_mille = (pct * 10.0).round() as u64;
                }
                "--reload-rules" => o.reload_rules = num(arg, value(arg)?)?,
                "--reload-swaps" => o.reload_swaps = num(arg, value(arg)?)?,
                "--partitions" => o.partitions = num(arg, value(arg)?)?,
                "--out" => o.out = value(arg)?.into(),
                "--perf" => o.perf = true,
                "--set" => o.settings.push(setting(arg, value(arg)?)?),
                "--consumer" => o.consumer.push(setting(arg, value(arg)?)?),
                "--producer" => o.producer.push(setting(arg, value(arg)?)?),
                "--modes" => {
                    o.modes = value(arg)?
                        .split(',')
                        .filter(|m| !m.trim().is_empty())
                        .map(|m| match m.trim() {
                            "alo" | "at-least-once" => Ok(Mode::AtLeastOnce),
                            "eos" | "exactly-once" => Ok(Mode::ExactlyOnce),
                            other => Err(format!("--modes: unknown mode {other:?}")),
                        })
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.events == 0 || o.runs == 0 || o.partitions < 1 || o.modes.is_empty() {
            return Err("--events, --runs, --partitions and --modes must not be empty".into());
        }
        Ok(o)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    AtLeastOnce,
    ExactlyOnce,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::AtLeastOnce => "at-least-once",
            Mode::ExactlyOnce => "exactly-once",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Mode::AtLeastOnce => "alo",
            Mode::ExactlyOnce => "eos",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Subject {
    Baseline,
    Bouncer,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Baseline => "baseline",
            Subject::Bouncer => "bouncer",
        }
    }
}

/// Microseconds since the driver's epoch: send and receive times of the
/// latency phases, both taken in this process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros() -> u64 {
    epoch().elapsed().as_micros() as u64
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn note(message: impl AsRef<str>) {
    eprintln!(
        "[e2e {:>7.1}s] {}",
        epoch().elapsed().as_secs_f64(),
        message.as_ref()
    );
}

// ---------------------------------------------------------------------------
// The baseline: consume → produce, nothing else.
// ---------------------------------------------------------------------------

mod baseline {
    use super::*;

    /// Most input partitions the baseline tracks.
    const MAX_PARTITIONS: usize = 1024;

    /// Delivery reports: per input partition, the offset after the last
    /// acknowledged record (forward records go to the input's partition
    /// number, and an idempotent producer acknowledges a partition's
    /// records in order, so every earlier one is acknowledged too). Any
    /// failed delivery ends the baseline: it has no retry logic.
    struct Ctx {
        failed: AtomicU64,
        acked: Vec<AtomicI64>,
    }

    impl ClientContext for Ctx {}

    impl ProducerContext for Ctx {
        /// The input record's offset.
        type DeliveryOpaque = usize;

        fn delivery(&self, result: &DeliveryResult<'_>, offset: usize) {
            match result {
                Ok(m) => {
                    if let Some(acked) = self.acked.get(m.partition() as usize) {
                        acked.fetch_max(offset as i64 + 1, Ordering::Relaxed);
                    }
                }
                Err((e, _)) => {
                    if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("baseline: delivery failed: {e}");
                    }
                }
            }
        }
    }

    pub fn main(args: &[String]) {
        let stop = Arc::new(AtomicBool::new(false));
        watch_sigterm(stop.clone());
        let path = match args {
            [flag, path] if flag == "--config" => PathBuf::from(path),
            _ => {
                eprintln!("usage: e2e baseline --config FILE");
                std::process::exit(2);
            }
        };
        let config = Config::load(Some(&path)).unwrap_or_else(|e| {
            eprintln!("baseline: configuration error: {e}");
            std::process::exit(2);
        });
        let result = match config.guarantee {
            Guarantee::AtLeastOnce => at_least_once(&config, &stop),
            Guarantee::ExactlyOnce => exactly_once(&config, &stop),
        };
        if let Err(e) = result {
            eprintln!("baseline: {e}");
            std::process::exit(1);
        }
    }

    /// SIGTERM sets `stop`; the loop then commits what it has and exits.
    fn watch_sigterm(stop: Arc<AtomicBool>) {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                let _ = ready_tx.send(());
                term.recv().await;
                stop.store(true, Ordering::Release);
            });
        });
        let _ = ready.recv();
    }

    /// Polled by the consuming thread, as bouncer's producer is: delivery
    /// reports run there, between events.
    type Prod = BaseProducer<Ctx>;

    /// bouncer's clients, from the same configuration; the transactional
    /// id is set here since bouncer's `producer_config` leaves it to the
    /// pipeline.
    fn clients(config: &Config, transactional: bool) -> Result<(BaseConsumer, Prod), KafkaError> {
        let consumer: BaseConsumer = bouncer::pipeline::kafka::consumer_config(config).create()?;
        let mut producer_config = bouncer::pipeline::kafka::producer_config(config);
        if transactional {
            producer_config.set("transactional.id", &config.transactional_id);
        }
        let producer: Prod = producer_config.create_with_context(Ctx {
            failed: AtomicU64::new(0),
            acked: (0..MAX_PARTITIONS).map(|_| AtomicI64::new(-1)).collect(),
        })?;
        consumer.subscribe(&[&config.topics.input])?;
        Ok((consumer, producer))
    }

    /// The input record, as it is (key, value, headers, timestamp), to the
    /// forward topic's partition of the same number.
    fn pass(producer: &Prod, topic: &str, m: &rdkafka::message::BorrowedMessage<'_>) {
        if m.partition() as usize >= MAX_PARTITIONS {
            eprintln!(
                "baseline: partition {} above {MAX_PARTITIONS}",
                m.partition()
            );
            std::process::exit(1);
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(topic, m.offset() as usize).partition(m.partition());
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(value) = m.payload() {
            record = record.payload(value);
        }
        if let Some(headers) = m.headers() {
            record = record.headers(headers.detach());
        }
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // As bouncer waits (`await_deliveries`): serve what is
                    // there, then sleep. rust-rdkafka's `poll(1 ms)` spins
                    // once less than a millisecond is left.
                    record = back;
                    producer.poll(Duration::ZERO);
                    thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => {
                    eprintln!("baseline: produce refused: {e}");
                    std::process::exit(1);
                }
            }
        }
    }

    fn check(producer: &Prod) -> Result<(), String> {
        match producer.context().failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(format!("{n} deliveries failed")),
        }
    }

    /// Every `commit_interval`, commits per partition the offset after its
    /// last acknowledged record: an offset is committed only once every
    /// record produced for it and before it is acknowledged. Nothing waits
    /// for acknowledgements on the consuming thread.
    fn at_least_once(config: &Config, stop: &AtomicBool) -> Result<(), String> {
        let (consumer, producer) = clients(config, false).map_err(|e| e.to_string())?;
        let input = &config.topics.input;
        let topic = &config.topics.forward;
        let mut committed = vec![-1i64; MAX_PARTITIONS];
        let mut last_commit = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping {
                let deadline = Instant::now() + config.shutdown_timeout;
                while producer.in_flight_count() > 0 && Instant::now() < deadline {
                    producer.poll(Duration::from_millis(1));
                }
            }
            if stopping || last_commit.elapsed() >= config.commit_interval {
                check(&producer)?;
                let mut tpl = TopicPartitionList::new();
                for (p, acked) in producer.context().acked.iter().enumerate() {
                    let acked = acked.load(Ordering::Relaxed);
                    if acked > committed[p] {
                        tpl.add_partition_offset(input, p as i32, Offset::Offset(acked))
                            .map_err(|e| e.to_string())?;
                        committed[p] = acked;
                    }
                }
                if tpl.count() > 0 {
                    let mode = if stopping {
                        CommitMode::Sync
                    } else {
                        CommitMode::Async
                    };
                    consumer.commit(&tpl, mode).map_err(|e| e.to_string())?;
                }
                last_commit = Instant::now();
            }
            if stopping {
                return Ok(());
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => pass(&producer, topic, &m),
                Some(Err(e)) => eprintln!("baseline: consumer error: {e}"),
            }
            producer.poll(Duration::ZERO);
        }
    }

    /// Serves delivery reports until nothing is in flight, as bouncer does
    /// before it commits: `commit_transaction` flushes first, and
    /// rust-rdkafka's flush waits in steps of 100 ms once anything is
    /// outstanding, which would cap the baseline at a transaction per
    /// ~200 ms and make it no limit at all.
    fn serve_until_delivered(producer: &Prod, deadline: Instant) {
        loop {
            let before = producer.in_flight_count();
            if before == 0 || Instant::now() >= deadline {
                return;
            }
            producer.poll(Duration::ZERO);
            if producer.in_flight_count() == before {
                thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Next offsets of the partitions consumed from so far.
    fn positions(consumer: &BaseConsumer) -> Result<TopicPartitionList, KafkaError> {
        let all = consumer.position()?;
        let mut tpl = TopicPartitionList::new();
        for e in all.elements() {
            if let Offset::Offset(o) = e.offset() {
                tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
            }
        }
        Ok(tpl)
    }

    /// A transaction per `transaction_interval` or `transaction_max_events`,
    /// as bouncer's: begin, produce, send the consumed offsets, commit
    /// (KIP-447, with the group's metadata).
    fn exactly_once(config: &Config, stop: &AtomicBool) -> Result<(), String> {
        let (consumer, producer) = clients(config, true).map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs(30);
        producer
            .init_transactions(timeout)
            .map_err(|e| format!("init_transactions: {e}"))?;
        producer
            .begin_transaction()
            .map_err(|e| format!("begin_transaction: {e}"))?;
        let topic = &config.topics.forward;
        let mut last_commit = Instant::now();
        let mut dirty = false;
        let mut in_transaction = 0usize;
        let (mut commits, mut commit_time) = (0u64, Duration::ZERO);
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping && !dirty {
                // The open transaction is empty.
                let _ = producer.abort_transaction(timeout);
                let mean_ms = commit_time.as_secs_f64() * 1e3 / commits.max(1) as f64;
                eprintln!("baseline: transactions={commits} commit_ms_mean={mean_ms:.2}");
                return Ok(());
            }
            let due = last_commit.elapsed() >= config.transaction_interval
                || in_transaction >= config.transaction_max_events;
            if dirty && (stopping || due) {
                let started = Instant::now();
                serve_until_delivered(&producer, started + timeout);
                let tpl = positions(&consumer).map_err(|e| e.to_string())?;
                let group = consumer
                    .group_metadata()
                    .ok_or("no consumer group metadata")?;
                producer
                    .send_offsets_to_transaction(&tpl, &group, timeout)
                    .map_err(|e| format!("send_offsets_to_transaction: {e}"))?;
                producer
                    .commit_transaction(timeout)
                    .map_err(|e| format!("commit_transaction: {e}"))?;
                commits += 1;
                commit_time += started.elapsed();
                check(&producer)?;
                if !stopping {
                    producer
                        .begin_transaction()
                        .map_err(|e| format!("begin_transaction: {e}"))?;
                }
                last_commit = Instant::now();
                dirty = false;
                in_transaction = 0;
            }
            if stopping {
                let mean_ms = commit_time.as_secs_f64() * 1e3 / commits.max(1) as f64;
                eprintln!("baseline: transactions={commits} commit_ms_mean={mean_ms:.2}");
                return Ok(());
            }
            match consumer.poll(Duration::from_millis(10)) {
                None => {}
                Some(Ok(m)) => {
                    pass(&producer, topic, &m);
                    dirty = true;
                    in_transaction += 1;
                }
                Some(Err(e)) => eprintln!("baseline: consumer error: {e}"),
            }
            producer.poll(Duration::ZERO);
        }
    }
}

// ---------------------------------------------------------------------------
// Kafka: topics, loading events, progress.
// ---------------------------------------------------------------------------

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

struct Kafka {
    bootstrap: String,
    admin: AdminClient<DefaultClientContext>,
    /// For watermarks.
    meta: BaseConsumer,
}

impl Kafka {
    fn new(bootstrap: &str) -> Result<Kafka, String> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
            .create()
            .map_err(|e| format!("admin client: {e}"))?;
        let meta: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
            .create()
            .map_err(|e| format!("consumer: {e}"))?;
        meta.fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| format!("cannot reach the broker on {bootstrap}: {e}"))?;
        Ok(Kafka {
            bootstrap: bootstrap.to_owned(),
            admin,
            meta,
        })
    }

    fn create(&self, topics: &[(&str, i32)]) -> Result<(), String> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, p)| NewTopic::new(name, *p, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in block_on(self.admin.create_topics(&new, &options)).map_err(|e| e.to_string())? {
            if let Err((name, code)) = r {
                return Err(format!("cannot create topic {name}: {code}"));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let md = self
                .meta
                .fetch_metadata(None, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            let ready = topics.iter().all(|(name, p)| {
                md.topics().iter().any(|t| {
                    t.name() == *name
                        && t.error().is_none()
                        && t.partitions().len() == *p as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("created topics not visible in time".into());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes topics (their data is what fills the disk); errors ignored.
    fn delete(&self, topics: &[String]) {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let _ = block_on(self.admin.delete_topics(&names, &options));
    }

    /// Sum over partitions of the high watermarks: records written so far
    /// (no transaction markers in at-least-once output topics).
    fn end_offsets(&self, topic: &str, partitions: i32) -> i64 {
        (0..partitions)
            .map(|p| {
                self.meta
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map(|(_, high)| high)
                    .unwrap_or(0)
            })
            .sum()
    }

    /// A client that reads `group`'s committed offsets.
    fn group_reader(&self, group: &str) -> Result<BaseConsumer, String> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            // Committed offsets as they stand: with read_committed the
            // broker holds the answer while a transaction has offsets
            // pending, which in exactly-once mode is most of the time.
            .set("isolation.level", "read_uncommitted")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
            .create()
            .map_err(|e| e.to_string())
    }
}

/// Sum of `group`'s committed offsets on `topic` (0 for none).
fn committed(reader: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|c| {
            c.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
}

#[derive(Clone, Default)]
struct DeliveryCtx(Arc<Deliveries>);

impl ClientContext for DeliveryCtx {}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The MTA's side: an idempotent producer of input events.
fn input_producer<
    C: ClientContext + ProducerContext,
    P: rdkafka::config::FromClientConfigAndContext<C>,
>(
    bootstrap: &str,
    linger_ms: &str,
    ctx: C,
) -> P {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms)
        .set("compression.type", "lz4")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "300000")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
        .create_with_context(ctx)
        .expect("input producer")
}

/// Writes `count` events of `stream` to `topic`, round-robin over its
/// partitions, keyed by their sequence number; returns how long it took.
fn load(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    stream: &mut EventStream<'_>,
    first: u64,
    count: u64,
) -> Result<Duration, String> {
    let started = Instant::now();
    let ctx = DeliveryCtx::default();
    let deliveries = ctx.0.clone();
    let producer: BaseProducer<DeliveryCtx> = input_producer(bootstrap, "20", ctx);
    let mut last_note = Instant::now();
    for seq in first..first + count {
        let value = stream.next_event();
        let key = format!("{seq:012}");
        let mut record: BaseRecord<'_, str, str, ()> = BaseRecord::to(topic)
            .partition((seq % partitions as u64) as i32)
            .key(key.as_str())
            .payload(value.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("loading {topic}: {e}")),
            }
        }
        producer.poll(Duration::ZERO);
        if last_note.elapsed() > Duration::from_secs(10) {
            note(format!("  loaded {} of {count}", seq - first));
            last_note = Instant::now();
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .map_err(|e| format!("loading {topic}: {e}"))?;
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("loading {topic}: {failed} records failed"));
    }
    Ok(started.elapsed())
}

// ---------------------------------------------------------------------------
// Child processes and /proc.
// ---------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// One look at a process: CPU seconds so far (user + system), RSS and
/// peak RSS in KiB.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    at: Instant,
    cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn sample(pid: u32) -> Option<ProcSample> {
    let at = Instant::now();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is the
    // first of them, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(ProcSample {
        at,
        cpu_s: ticks as f64 / clock_ticks(),
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// What the rest of the machine did during a measurement: the broker's CPU
/// per million events, this driver's, and how busy all cores were (100% =
/// every core busy). On a shared machine these say how far to trust a figure.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Around {
    broker_cpu_s_per_m: f64,
    driver_cpu_s_per_m: f64,
    machine_busy_pct: f64,
    /// The share of all cores that other processes used (builds, tests):
    /// above a few percent, the figures are not to be trusted.
    others_busy_pct: f64,
}

#[derive(Debug, Clone, Copy)]
struct MachineSample {
    process_cpu_s: f64,
    broker_cpu_s: f64,
    driver_cpu_s: f64,
    busy: u64,
    total: u64,
}

impl MachineSample {
    /// The machine beside `process` (the measured one) and the broker.
    fn now(process: u32, broker: Option<u32>) -> MachineSample {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let jiffies: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = jiffies.iter().sum();
        let idle = jiffies.get(3).copied().unwrap_or(0) + jiffies.get(4).copied().unwrap_or(0);
        MachineSample {
            process_cpu_s: sample(process).map_or(0.0, |s| s.cpu_s),
            broker_cpu_s: broker.and_then(sample).map_or(0.0, |s| s.cpu_s),
            driver_cpu_s: sample(std::process::id()).map_or(0.0, |s| s.cpu_s),
            busy: total - idle,
            total,
        }
    }

    fn since(self, start: MachineSample, events: u64) -> Around {
        let per_m = |d: f64| d / events.max(1) as f64 * 1e6;
        let total = (self.total - start.total).max(1) as f64;
        let busy = (self.busy - start.busy) as f64;
        let ours = (self.process_cpu_s - start.process_cpu_s)
            + (self.broker_cpu_s - start.broker_cpu_s)
            + (self.driver_cpu_s - start.driver_cpu_s);
        Around {
            broker_cpu_s_per_m: per_m(self.broker_cpu_s - start.broker_cpu_s),
            driver_cpu_s_per_m: per_m(self.driver_cpu_s - start.driver_cpu_s),
            machine_busy_pct: 100.0 * busy / total,
            others_busy_pct: (100.0 * (busy - ours * clock_ticks()) / total).max(0.0),
        }
    }
}

/// The broker started by `scripts/kafka.sh` with `$KAFKA_DIR`, if it runs.
fn broker_pid() -> Option<u32> {
    let dir = std::env::var("KAFKA_DIR").unwrap_or_else(|_| "/tmp/bouncer-bench-kafka".into());
    let pid: u32 = fs::read_to_string(Path::new(&dir).join("kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == b"kafka.Kafka")
        .then_some(pid)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A measured child process (bouncer or the baseline); killed if dropped.
struct Proc {
    child: Child,
    log: PathBuf,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Proc {
    fn spawn(mut command: Command, log: &Path) -> Result<Proc, String> {
        let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let out = file.try_clone().map_err(|e| e.to_string())?;
        // Default settings: nothing from the environment may change them.
        for (name, _) in std::env::vars() {
            if name.starts_with("BOUNCER_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        Ok(Proc {
            child,
            log: log.to_owned(),
            started: Instant::now(),
            exit: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    fn sample(&self) -> Option<ProcSample> {
        if self.exit.is_some() {
            return None;
        }
        sample(self.pid())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.exited().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
                self.exit = self.child.wait().ok();
            }
        }
        self.exit
    }

    /// The last lines of its log that say what went wrong, for a report.
    fn why(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let pick = lines
            .iter()
            .rev()
            .find(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("not available") || l.contains("refused")
            })
            .or(lines.last())
            .copied()
            .unwrap_or("no output");
        pick.chars().take(300).collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` on bouncer's HTTP listener; the body if it answered 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?;
    (code == "200").then(|| body.to_owned())
}

/// Values of a metric in Prometheus text, by their label text (`{...}` or
/// empty).
fn metric(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if rest.starts_with('{') {
                let end = rest.find('}')?;
                (&rest[..=end], rest[end + 1..].trim())
            } else if rest.starts_with(' ') {
                ("", rest.trim())
            } else {
                return None;
            };
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Stages: one process, its topics and configuration.
// ---------------------------------------------------------------------------

/// Topics, group and configuration file of one measured process.
struct Stage {
    label: String,
    mode: Mode,
    subject: Subject,
    input: String,
    forward: String,
    results: String,
    retry: String,
    dead_letter: String,
    control: String,
    group: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Stage {
    /// Names the stage's topics and writes its configuration; `input` is
    /// the topic to read (an existing backlog, or the stage's own).
    fn new(
        ctx: &Ctx,
        label: &str,
        mode: Mode,
        subject: Subject,
        input: Option<&str>,
        rules_dir: &Path,
    ) -> Result<Stage, String> {
        let name = format!("{}.{label}", ctx.run_id);
        let stage = Stage {
            label: label.to_owned(),
            mode,
            subject,
            input: input.map_or_else(|| format!("{name}.in"), str::to_owned),
            forward: format!("{name}.accepted"),
            results: format!("{name}.results"),
            retry: format!("{name}.retry"),
            dead_letter: format!("{name}.invalid"),
            control: format!("{name}.rules"),
            group: format!("{name}.group"),
            port: free_port(),
            config: ctx.dir.join("logs").join(format!("{label}.toml")),
            log: ctx.dir.join("logs").join(format!("{label}.log")),
        };
        let mut text = String::new();
        let _ = writeln!(text, "group = {:?}", stage.group);
        let _ = writeln!(text, "rules_dir = {:?}", rules_dir.display().to_string());
        let _ = writeln!(text, "http_listen = \"127.0.0.1:{}\"", stage.port);
        if mode == Mode::ExactlyOnce {
            let _ = writeln!(text, "guarantee = \"exactly-once\"");
            let _ = writeln!(text, "transactional_id = \"bench-{name}\"");
        }
        for (key, value) in &ctx.opts.settings {
            let _ = writeln!(text, "{key} = {value}");
        }
        let _ = writeln!(text, "\n[topics]");
        for (key, topic) in [
            ("input", &stage.input),
            ("forward", &stage.forward),
            ("results", &stage.results),
            ("retry", &stage.retry),
            ("dead_letter", &stage.dead_letter),
            ("control", &stage.control),
        ] {
            let _ = writeln!(text, "{key} = {topic:?}");
        }
        let _ = writeln!(
            text,
            "\n[kafka]\n\"bootstrap.servers\" = {:?}",
            ctx.opts.bootstrap
        );
        for (section, props) in [
            ("consumer", &ctx.opts.consumer),
            ("producer", &ctx.opts.producer),
        ] {
            let _ = writeln!(text, "\n[kafka.{section}]");
            for (key, value) in props {
                let _ = writeln!(text, "{key:?} = {value}");
            }
        }
        fs::write(&stage.config, text).map_err(|e| e.to_string())?;
        let p = ctx.opts.partitions;
        let mut topics: Vec<(&str, i32)> = vec![
            (&stage.forward, p),
            (&stage.results, p),
            (&stage.retry, p),
            (&stage.dead_letter, 2),
        ];
        if input.is_none() {
            topics.push((&stage.input, p));
        }
        ctx.kafka.create(&topics)?;
        Ok(stage)
    }

    /// Topics a `read_committed` reader sees one record per input in.
    fn outputs(&self) -> Vec<&str> {
        match self.subject {
            Subject::Baseline => vec![&self.forward],
            Subject::Bouncer => vec![&self.forward, &self.results],
        }
    }

    fn start(&self, ctx: &Ctx) -> Result<Proc, String> {
        let command = match self.subject {
            Subject::Baseline => {
                let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
                c.arg("baseline").arg("--config").arg(&self.config);
                c
            }
            Subject::Bouncer => {
                let mut c = Command::new(&ctx.opts.bouncer);
                c.arg("run")
                    .arg("--config")
                    .arg(&self.config)
                    .env("HOSTNAME", format!("bench-{}", self.label));
                c
            }
        };
        Proc::spawn(command, &self.log)
    }

    /// Deletes the stage's own topics.
    fn drop_topics(&self, ctx: &Ctx, own_input: bool) {
        let mut topics = vec![
            self.forward.clone(),
            self.results.clone(),
            self.retry.clone(),
            self.dead_letter.clone(),
            self.control.clone(),
        ];
        if own_input {
            topics.push(self.input.clone());
        }
        ctx.kafka.delete(&topics);
    }
}

/// What every phase needs.
struct Ctx {
    opts: Options,
    kafka: Kafka,
    run_id: String,
    dir: PathBuf,
    rules_dir: PathBuf,
    /// The broker's process, when it is `scripts/kafka.sh`'s.
    broker: Option<u32>,
}

// ---------------------------------------------------------------------------
// Results.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize)]
struct Drain {
    events: u64,
    /// Events processed between the first output seen and the last.
    measured_events: u64,
    events_per_s: f64,
    cpu_s_per_m: f64,
    /// CPU before the first output (start-up, rule loading, group join).
    startup_cpu_s: f64,
    startup_s: f64,
    drain_s: f64,
    peak_rss_mib: f64,
    steady_rss_mib: f64,
    max_rss_during_mib: f64,
    /// The rest of the machine over the same window.
    around: Around,
    /// bouncer's `bouncer_events_total` by outcome.
    outcomes: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Quantiles {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Quantiles {
    fn of(mut latencies_us: Vec<u32>) -> Quantiles {
        if latencies_us.is_empty() {
            return Quantiles::default();
        }
        latencies_us.sort_unstable();
        let q = |p: f64| {
            let rank =
                ((p * latencies_us.len() as f64).ceil() as usize).clamp(1, latencies_us.len());
            f64::from(latencies_us[rank - 1]) / 1000.0
        };
        Quantiles {
            samples: latencies_us.len(),
            p50_ms: q(0.50),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: q(1.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
struct Latency {
    rate: f64,
    sent: u64,
    received: u64,
    quantiles: Quantiles,
    cpu_s_per_m: f64,
    steady_rss_mib: f64,
    around: Around,
    /// Exactly once: transactions committed, and their mean commit time
    /// (bouncer's `bouncer_transaction_commit_duration_seconds`; the
    /// baseline's own count).
    transactions: Option<f64>,
    commit_ms_mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
enum Outcome<T> {
    Ok(T),
    NotAvailable { reason: String },
    Failed { reason: String },
}

impl<T> Outcome<T> {
    fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Measurement {
    run: usize,
    mode: Mode,
    subject: Subject,
    drain: Outcome<Drain>,
    latency: Option<Outcome<Latency>>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Reload {
    rules: usize,
    rate: f64,
    swaps: usize,
    sent: u64,
    received: u64,
    outside: Quantiles,
    during: Quantiles,
    /// Per swap: seconds from the renames to the reload's completion
    /// (`bouncer_rules_last_reload_success_timestamp_seconds`), the
    /// debounce included.
    swap_to_reloaded_s: Vec<f64>,
    /// `elapsed_ms` of bouncer's "rules reloaded" log lines after start.
    reload_elapsed_ms: Vec<u64>,
    reload_success_total: f64,
    reload_failure_total: f64,
    peak_rss_mib: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Memory {
    events: u64,
    drain: Drain,
    settings: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Report {
    started_unix: f64,
    machine: String,
    options: BTreeMap<String, String>,
    match_share: String,
    /// Offered load of the latency phases, events/s, by mode.
    rates: BTreeMap<String, f64>,
    /// The baseline's events/s while the paced producer and the reader run
    /// too (its drain rate is higher: they compete for the same cores).
    capacities: BTreeMap<String, f64>,
    measurements: Vec<Measurement>,
    reload: Option<Outcome<Reload>>,
    memory: Option<Outcome<Memory>>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

// ---------------------------------------------------------------------------
// Phases.
// ---------------------------------------------------------------------------

mod phases {
    use super::*;

    /// Starts the stage's process on a backlog of `events` and times it
    /// from its first output to its last.
    pub fn drain(ctx: &Ctx, stage: &Stage, events: u64) -> Outcome<Drain> {
        match try_drain(ctx, stage, events) {
            Ok(outcome) => outcome,
            Err(reason) => Outcome::Failed { reason },
        }
    }

    fn try_drain(ctx: &Ctx, stage: &Stage, events: u64) -> Result<Outcome<Drain>, String> {
        let p = ctx.opts.partitions;
        let group_reader = ctx.kafka.group_reader(&stage.group)?;
        let progress = || -> i64 {
            match stage.mode {
                // Outputs visible as they are acknowledged.
                Mode::AtLeastOnce => stage
                    .outputs()
                    .iter()
                    .map(|t| ctx.kafka.end_offsets(t, p))
                    .sum(),
                // Outputs visible when their transaction commits, and the
                // offsets with them.
                Mode::ExactlyOnce => committed(&group_reader, &stage.input, p),
            }
        };
        let mut proc = stage.start(ctx)?;
        let mut samples: Vec<ProcSample> = Vec::new();
        let mut first: Option<(Instant, i64, f64)> = None;
        let mut machine_from = None;
        let mut perf: Option<Child> = None;
        let mut last_progress = (Instant::now(), 0i64);
        let end = loop {
            thread::sleep(Duration::from_millis(50));
            let s = proc.sample();
            let done = progress();
            let now = Instant::now();
            if let Some(s) = s {
                samples.push(s);
            }
            if let Some(status) = proc.exited() {
                let reason = format!("{} exited ({status}): {}", stage.subject.name(), proc.why());
                return Ok(if done == 0 {
                    Outcome::NotAvailable { reason }
                } else {
                    Outcome::Failed { reason }
                });
            }
            if done > 0 && first.is_none() {
                let cpu = s.map_or(0.0, |s| s.cpu_s);
                first = Some((now, done, cpu));
                machine_from = Some(MachineSample::now(proc.pid(), ctx.broker));
                if ctx.opts.perf && stage.label.starts_with("r1.") {
                    perf = start_perf(ctx, stage, proc.pid());
                }
            }
            if done >= events as i64 {
                break (now, s);
            }
            if done > last_progress.1 {
                last_progress = (now, done);
            } else if now - last_progress.0 > STUCK {
                proc.stop(Duration::from_secs(5));
                return Ok(Outcome::Failed {
                    reason: format!(
                        "no progress for {}s at {done} of {events}: {}",
                        STUCK.as_secs(),
                        proc.why()
                    ),
                });
            }
        };
        let (first_at, first_done, first_cpu) = first.expect("progress seen");
        let (end_at, end_sample) = end;
        let measured = (events as i64 - first_done).max(1) as u64;
        let around = machine_from.map_or_else(Around::default, |from| {
            MachineSample::now(proc.pid(), ctx.broker).since(from, measured)
        });
        let last = end_sample.or_else(|| samples.last().copied());
        let outcomes = match stage.subject {
            Subject::Bouncer => http_get(stage.port, "/metrics")
                .map(|m| {
                    metric(&m, "bouncer_events_total")
                        .into_iter()
                        .map(|(labels, v)| {
                            let outcome = labels
                                .trim_start_matches("{outcome=\"")
                                .trim_end_matches("\"}");
                            (outcome.to_owned(), v)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Subject::Baseline => BTreeMap::new(),
        };
        if let Some(mut perf) = perf {
            let _ = Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status();
            let _ = perf.wait();
        }
        let peak = proc.sample().or(last).map_or(0, |s| s.hwm_kib);
        proc.stop(Duration::from_secs(25));
        let drain_s = (end_at - first_at).as_secs_f64().max(1e-3);
        let cpu = last.map_or(0.0, |s| s.cpu_s) - first_cpu;
        let during: Vec<&ProcSample> = samples
            .iter()
            .filter(|s| s.at >= first_at && s.at <= end_at)
            .collect();
        Ok(Outcome::Ok(Drain {
            events,
            measured_events: measured,
            events_per_s: measured as f64 / drain_s,
            cpu_s_per_m: cpu / measured as f64 * 1e6,
            startup_cpu_s: first_cpu,
            startup_s: (first_at - proc.started).as_secs_f64(),
            drain_s,
            peak_rss_mib: mib(peak),
            steady_rss_mib: median(during.iter().map(|s| mib(s.rss_kib)).collect()).unwrap_or(0.0),
            max_rss_during_mib: during.iter().map(|s| mib(s.rss_kib)).fold(0.0, f64::max),
            around,
            outcomes,
        }))
    }

    /// `perf record` of the process until interrupted, into
    /// `out/perf-<label>.data`, for `perf report` (`PERF_CALL_GRAPH=dwarf`
    /// for stacks through code without frame pointers; default `fp`).
    fn start_perf(ctx: &Ctx, stage: &Stage, pid: u32) -> Option<Child> {
        let data = ctx.opts.out.join(format!("perf-{}.data", stage.label));
        let _ = fs::create_dir_all(&ctx.opts.out);
        note(format!(
            "{}: perf record into {}",
            stage.label,
            data.display()
        ));
        Command::new("perf")
            .args(["record", "-F", "999", "--call-graph"])
            .arg(std::env::var("PERF_CALL_GRAPH").unwrap_or_else(|_| "fp".into()))
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| note(format!("perf: {e}")))
            .ok()
    }

    /// A `read_committed` reader of output topics recording, for every
    /// record with a send-time header, (sent µs, latency µs).
    pub struct Reader {
        stop: Arc<AtomicBool>,
        pub samples: Arc<Mutex<Vec<(u64, u32)>>>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl Reader {
        pub fn start(bootstrap: &str, topics: &[&str], partitions: i32) -> Result<Reader, String> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", format!("e2e-reader-{}", std::process::id()))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "false")
                .set("fetch.wait.max.ms", "10")
                .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
                .create()
                .map_err(|e| e.to_string())?;
            let mut tpl = TopicPartitionList::new();
            for topic in topics {
                for p in 0..partitions {
                    tpl.add_partition_offset(topic, p, Offset::Beginning)
                        .map_err(|e| e.to_string())?;
                }
            }
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            let stop = Arc::new(AtomicBool::new(false));
            let samples = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
            let thread = {
                let (stop, samples) = (stop.clone(), samples.clone());
                thread::spawn(move || {
                    let mut batch = Vec::with_capacity(4096);
                    while !stop.load(Ordering::Acquire) {
                        match consumer.poll(Duration::from_millis(20)) {
                            Some(Ok(m)) => {
                                let now = micros();
                                let sent = m.headers().and_then(|h| {
                                    h.iter()
                                        .find(|h| h.key == SENT_HEADER)
                                        .and_then(|h| h.value)
                                        .and_then(|v| std::str::from_utf8(v).ok())
                                        .and_then(|v| v.parse::<u64>().ok())
                                });
                                if let Some(sent) = sent {
                                    let latency = now.saturating_sub(sent).min(u64::from(u32::MAX));
                                    batch.push((sent, latency as u32));
                                }
                                if batch.len() < 4096 {
                                    continue;
                                }
                            }
                            Some(Err(e)) => eprintln!("reader: {e}"),
                            None => {}
                        }
                        samples.lock().expect("samples").append(&mut batch);
                    }
                    samples.lock().expect("samples").append(&mut batch);
                })
            };
            Ok(Reader {
                stop,
                samples,
                thread: Some(thread),
            })
        }

        /// Samples of records sent at or after `since` µs.
        pub fn count_since(&self, since: u64) -> u64 {
            let samples = self.samples.lock().expect("samples");
            samples.iter().filter(|(sent, _)| *sent >= since).count() as u64
        }

        pub fn finish(mut self) -> Vec<(u64, u32)> {
            self.stop.store(true, Ordering::Release);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            std::mem::take(&mut *self.samples.lock().expect("samples"))
        }
    }

    /// Sends events of `pool` to `topic` at `rate` per second for `total`
    /// events, each with its send time; returns how many were sent.
    pub struct Pacer {
        pub sent: Arc<AtomicU64>,
        pub thread: thread::JoinHandle<u64>,
    }

    /// The MTA's producer of the latency phases: librdkafka's default
    /// 5 ms linger (smaller batches cost the broker far more CPU per event
    /// on this 2-core machine, which the measured processes share).
    pub fn paced_producer(bootstrap: &str) -> (ThreadedProducer<DeliveryCtx>, Arc<Deliveries>) {
        let ctx = DeliveryCtx::default();
        let deliveries = ctx.0.clone();
        (input_producer(bootstrap, "5", ctx), deliveries)
    }

    pub fn send_one(
        producer: &ThreadedProducer<DeliveryCtx>,
        topic: &str,
        partition: i32,
        key: &str,
        value: &str,
    ) {
        let sent = micros().to_string();
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: SENT_HEADER,
            value: Some(&sent),
        });
        let mut record: BaseRecord<'_, str, str, ()> = BaseRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(value)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, back)) => {
                    record = back;
                    thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    pub fn pace(
        producer: Arc<ThreadedProducer<DeliveryCtx>>,
        topic: String,
        partitions: i32,
        pool: Arc<Vec<String>>,
        rate: f64,
        total: u64,
        stop: Arc<AtomicBool>,
    ) -> Pacer {
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut n = 0u64;
            while n < total && !stop.load(Ordering::Relaxed) {
                let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
                while n < due {
                    let key = format!("p{n:011}");
                    let value = &pool[(n % pool.len() as u64) as usize];
                    send_one(
                        &producer,
                        &topic,
                        (n % partitions as u64) as i32,
                        &key,
                        value,
                    );
                    n += 1;
                }
                counter.store(n, Ordering::Relaxed);
                thread::sleep(Duration::from_micros(500));
            }
            n
        });
        Pacer { sent, thread }
    }

    /// What the latency and reload phases share: the process running on an
    /// empty input topic, probes until an output comes back, then paced
    /// load while `during` runs (swaps, samples); then the tail is awaited.
    pub struct Paced {
        pub sent: u64,
        pub received: u64,
        /// (sent µs, latency µs) of events sent after the warm-up.
        pub samples: Vec<(u64, u32)>,
        pub cpu_s: f64,
        pub rss: Vec<f64>,
        pub peak_rss_mib: f64,
        pub around: Around,
    }

    pub fn paced(
        ctx: &Ctx,
        stage: &Stage,
        proc: &mut Proc,
        pool: &Arc<Vec<String>>,
        rate: f64,
        secs: f64,
        mut during: impl FnMut(&mut Proc, Instant),
    ) -> Result<Outcome<Paced>, String> {
        let p = ctx.opts.partitions;
        let reader = Reader::start(&ctx.kafka.bootstrap, &stage.outputs(), p)?;
        let (producer, deliveries) = paced_producer(&ctx.kafka.bootstrap);
        let producer = Arc::new(producer);
        if let Some(reason) = first_output(stage, proc, &reader, &producer, pool, p)? {
            reader.finish();
            return Ok(Outcome::NotAvailable { reason });
        }
        let warmup = ctx.opts.warmup_secs;
        let total = ((warmup + secs) * rate) as u64;
        let start_us = micros();
        let measure_from_us = start_us + (warmup * 1e6) as u64;
        let start = Instant::now();
        let pacer = pace(
            producer.clone(),
            stage.input.clone(),
            p,
            pool.clone(),
            rate,
            total,
            Arc::new(AtomicBool::new(false)),
        );
        let mut cpu_from = None;
        let mut machine_from = None;
        let mut rss = Vec::new();
        let mut last = None;
        while !pacer.thread.is_finished() {
            thread::sleep(Duration::from_millis(100));
            during(proc, start);
            if let Some(s) = proc.sample() {
                if cpu_from.is_none() && micros() >= measure_from_us {
                    cpu_from = Some((s.cpu_s, pacer.sent.load(Ordering::Relaxed)));
                    machine_from = Some(MachineSample::now(proc.pid(), ctx.broker));
                }
                if cpu_from.is_some() {
                    rss.push(mib(s.rss_kib));
                }
                last = Some((s, pacer.sent.load(Ordering::Relaxed)));
            }
        }
        let sent = pacer.thread.join().expect("pacer");
        let around = match (machine_from, cpu_from) {
            (Some(from), Some((_, n0))) => {
                MachineSample::now(proc.pid(), ctx.broker).since(from, sent - n0)
            }
            _ => Around::default(),
        };
        // The tail: everything sent comes back, or 30 s pass.
        let tail = Instant::now() + Duration::from_secs(30);
        while reader.count_since(start_us) < sent && Instant::now() < tail {
            during(proc, start);
            thread::sleep(Duration::from_millis(100));
        }
        let peak = proc.sample().map_or(0, |s| s.hwm_kib);
        let samples = reader.finish();
        let failed = deliveries.failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(format!("{failed} input records failed"));
        }
        let received = samples.iter().filter(|(s, _)| *s >= start_us).count() as u64;
        let cpu_s = match (cpu_from, last) {
            (Some((from, n0)), Some((s, n1))) if n1 > n0 => {
                (s.cpu_s - from) / (n1 - n0) as f64 * 1e6
            }
            _ => 0.0,
        };
        Ok(Outcome::Ok(Paced {
            sent,
            received,
            samples: samples
                .into_iter()
                .filter(|(s, _)| *s >= measure_from_us)
                .collect(),
            cpu_s,
            rss,
            peak_rss_mib: mib(peak),
            around,
        }))
    }

    /// Sends probes until the process's first output comes back, so that
    /// start-up is not measured; `Some(reason)` if the process exited.
    fn first_output(
        stage: &Stage,
        proc: &mut Proc,
        reader: &Reader,
        producer: &ThreadedProducer<DeliveryCtx>,
        pool: &[String],
        partitions: i32,
    ) -> Result<Option<String>, String> {
        let deadline = Instant::now() + STUCK;
        let mut i = 0;
        while reader.count_since(0) == 0 {
            if let Some(status) = proc.exited() {
                let name = stage.subject.name();
                return Ok(Some(format!("{name} exited ({status}): {}", proc.why())));
            }
            if Instant::now() > deadline {
                return Err(format!("no output for the probes: {}", proc.why()));
            }
            send_one(producer, &stage.input, i % partitions, "probe", &pool[0]);
            i += 1;
            thread::sleep(Duration::from_millis(100));
        }
        thread::sleep(Duration::from_millis(500));
        Ok(None)
    }

    /// The most events per second the stage's process passes while the
    /// paced producer and the reader share the machine with it: `offered`
    /// (more than it can take) is sent, and outputs are counted over the
    /// last `secs` seconds.
    pub fn capacity(
        ctx: &Ctx,
        stage: &Stage,
        pool: &Arc<Vec<String>>,
        offered: f64,
        secs: f64,
    ) -> Outcome<f64> {
        let run = || -> Result<Outcome<f64>, String> {
            let p = ctx.opts.partitions;
            let mut proc = stage.start(ctx)?;
            let reader = Reader::start(&ctx.kafka.bootstrap, &stage.outputs(), p)?;
            let (producer, _) = paced_producer(&ctx.kafka.bootstrap);
            let producer = Arc::new(producer);
            if let Some(reason) = first_output(stage, &mut proc, &reader, &producer, pool, p)? {
                reader.finish();
                return Ok(Outcome::NotAvailable { reason });
            }
            let start_us = micros();
            let stop = Arc::new(AtomicBool::new(false));
            let total = (offered * (secs + 2.0)) as u64;
            let pacer = pace(
                producer.clone(),
                stage.input.clone(),
                p,
                pool.clone(),
                offered,
                total,
                stop.clone(),
            );
            thread::sleep(Duration::from_millis(1500));
            let (c0, t0) = (reader.count_since(start_us), Instant::now());
            thread::sleep(Duration::from_secs_f64(secs));
            let (c1, t1) = (reader.count_since(start_us), Instant::now());
            stop.store(true, Ordering::Relaxed);
            let _ = pacer.thread.join();
            producer.purge(rdkafka::producer::PurgeConfig::default().queue());
            drop(producer);
            reader.finish();
            proc.stop(Duration::from_secs(25));
            Ok(Outcome::Ok((c1 - c0) as f64 / (t1 - t0).as_secs_f64()))
        };
        run().unwrap_or_else(|reason| Outcome::Failed { reason })
    }

    /// The baseline's last `transactions=N commit_ms_mean=X` line.
    fn baseline_commits(log: &Path) -> Option<(f64, f64)> {
        let log = fs::read_to_string(log).ok()?;
        let line = log
            .lines()
            .rev()
            .find(|l| l.starts_with("baseline: transactions="))?;
        let value = |key: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))?
                .parse()
                .ok()
        };
        Some((value("transactions=")?, value("commit_ms_mean=")?))
    }

    /// Latency at a fixed offered load.
    pub fn latency(
        ctx: &Ctx,
        stage: &Stage,
        pool: &Arc<Vec<String>>,
        rate: f64,
    ) -> Outcome<Latency> {
        let run = || -> Result<Outcome<Latency>, String> {
            let mut proc = stage.start(ctx)?;
            let outcome = paced(
                ctx,
                stage,
                &mut proc,
                pool,
                rate,
                ctx.opts.latency_secs,
                |_, _| {},
            )?;
            // How long transactions took to commit, as each reports it.
            let mut commits = match (stage.mode, stage.subject) {
                (Mode::ExactlyOnce, Subject::Bouncer) => {
                    http_get(stage.port, "/metrics").and_then(|m| {
                        let sum = metric(&m, "bouncer_transaction_commit_duration_seconds_sum");
                        let count = metric(&m, "bouncer_transaction_commit_duration_seconds_count");
                        let (sum, count) = (sum.first()?.1, count.first()?.1);
                        (count > 0.0).then(|| (count, sum / count * 1e3))
                    })
                }
                _ => None,
            };
            proc.stop(Duration::from_secs(25));
            if (stage.mode, stage.subject) == (Mode::ExactlyOnce, Subject::Baseline) {
                commits = baseline_commits(&stage.log);
            }
            Ok(match outcome {
                Outcome::Ok(p) => Outcome::Ok(Latency {
                    rate,
                    sent: p.sent,
                    received: p.received,
                    quantiles: Quantiles::of(p.samples.iter().map(|(_, l)| *l).collect()),
                    cpu_s_per_m: p.cpu_s,
                    steady_rss_mib: median(p.rss).unwrap_or(0.0),
                    around: p.around,
                    transactions: commits.map(|c| c.0),
                    commit_ms_mean: commits.map(|c| c.1),
                }),
                Outcome::NotAvailable { reason } => Outcome::NotAvailable { reason },
                Outcome::Failed { reason } => Outcome::Failed { reason },
            })
        };
        run().unwrap_or_else(|reason| Outcome::Failed { reason })
    }

    /// Two rule sets of `n` rules in the same file names, and the staging
    /// directory (skipped by bouncer: its name starts with a dot) each swap
    /// is written to before its files are renamed into place.
    pub struct Swapper {
        pub dir: PathBuf,
        sets: [RuleFiles; 2],
        next: usize,
    }

    impl Swapper {
        pub fn new(dir: PathBuf, a: RuleFiles, b: RuleFiles) -> Swapper {
            Swapper {
                dir,
                sets: [a, b],
                next: 1,
            }
        }

        /// Writes the next set to the staging directory.
        pub fn stage(&self) -> Result<(), String> {
            common::write_rule_files(&self.dir.join(".incoming"), &self.sets[self.next])
                .map_err(|e| e.to_string())
        }

        /// Renames every staged file over its live counterpart.
        pub fn swap(&mut self) -> Result<(), String> {
            for (name, _) in &self.sets[self.next].files {
                fs::rename(self.dir.join(".incoming").join(name), self.dir.join(name))
                    .map_err(|e| format!("rename {name}: {e}"))?;
            }
            self.next = 1 - self.next;
            Ok(())
        }
    }

    /// Bouncer at `rate` with `n`-rule sets swapped `swaps` times.
    pub fn reload(
        ctx: &Ctx,
        stage: &Stage,
        swapper: &mut Swapper,
        pool: &Arc<Vec<String>>,
        rate: f64,
    ) -> Outcome<Reload> {
        let mut run = || -> Result<Outcome<Reload>, String> {
            let swaps = ctx.opts.reload_swaps;
            // Each swap gets its own quiet stretch: the reload (2-7 s for
            // 100,000 rules here, at niceness 10 beside a busy pipeline)
            // and a margin either side, so the last one completes in the
            // phase and each window ends before the next swap.
            let spacing = 12.0;
            let secs = spacing * swaps as f64 + 2.0;
            let mut proc = stage.start(ctx)?;
            let mut swap_times: Vec<(u64, f64)> = Vec::new();
            let mut reloaded: Vec<f64> = Vec::new();
            let mut staged = false;
            let mut error = None;
            let warmup = ctx.opts.warmup_secs;
            let outcome = paced(ctx, stage, &mut proc, pool, rate, secs, |_, start| {
                let t = start.elapsed().as_secs_f64();
                let k = swap_times.len();
                let due = warmup + 3.0 + spacing * k as f64;
                if k < swaps && !staged && t > due - 2.0 {
                    if let Err(e) = swapper.stage() {
                        error = Some(e);
                    }
                    staged = true;
                }
                if k < swaps && staged && t >= due {
                    let at = (micros(), unix_now());
                    if let Err(e) = swapper.swap() {
                        error = Some(e);
                    }
                    swap_times.push(at);
                    staged = false;
                }
                if reloaded.len() < swap_times.len() {
                    let (_, at) = swap_times[reloaded.len()];
                    let done = http_get(stage.port, "/metrics").and_then(|m| {
                        metric(&m, "bouncer_rules_last_reload_success_timestamp_seconds")
                            .first()
                            .map(|(_, v)| *v)
                    });
                    if let Some(done) = done.filter(|d| *d >= at) {
                        reloaded.push(done);
                    }
                }
            })?;
            if let Some(e) = error {
                return Err(e);
            }
            let metrics = http_get(stage.port, "/metrics").unwrap_or_default();
            let totals = metric(&metrics, "bouncer_rules_reload_total");
            let total = |result: &str| {
                totals
                    .iter()
                    .find(|(l, _)| l.contains(result))
                    .map_or(0.0, |(_, v)| *v)
            };
            proc.stop(Duration::from_secs(25));
            let p = match outcome {
                Outcome::Ok(p) => p,
                Outcome::NotAvailable { reason } => return Ok(Outcome::NotAvailable { reason }),
                Outcome::Failed { reason } => return Ok(Outcome::Failed { reason }),
            };
            let log = fs::read_to_string(&stage.log).unwrap_or_default();
            let reload_elapsed_ms: Vec<u64> = log
                .lines()
                .filter(|l| l.contains("rules reloaded"))
                .filter_map(|l| {
                    let rest = &l[l.find("elapsed_ms=")? + "elapsed_ms=".len()..];
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .skip(1) // the initial load
                .collect();
            // An event is in a swap window when it was sent between the
            // renames and one second after the reload completed.
            let windows: Vec<(u64, u64)> = swap_times
                .iter()
                .enumerate()
                .map(|(i, (us, unix))| {
                    let done = reloaded.get(i).copied().unwrap_or(unix + 10.0);
                    (*us, us + ((done - unix + 1.0) * 1e6) as u64)
                })
                .collect();
            let (mut inside, mut outside) = (Vec::new(), Vec::new());
            for (sent, latency) in &p.samples {
                if windows.iter().any(|(a, b)| sent >= a && sent <= b) {
                    inside.push(*latency);
                } else {
                    outside.push(*latency);
                }
            }
            Ok(Outcome::Ok(Reload {
                rules: ctx.opts.reload_rules,
                rate,
                swaps: swap_times.len(),
                sent: p.sent,
                received: p.received,
                outside: Quantiles::of(outside),
                during: Quantiles::of(inside),
                swap_to_reloaded_s: swap_times
                    .iter()
                    .zip(&reloaded)
                    .map(|((_, at), done)| done - at)
                    .collect(),
                reload_elapsed_ms,
                reload_success_total: total("success"),
                reload_failure_total: total("failure"),
                peak_rss_mib: p.peak_rss_mib,
            }))
        };
        run().unwrap_or_else(|reason| Outcome::Failed { reason })
    }
}

// ---------------------------------------------------------------------------
// The driver.
// ---------------------------------------------------------------------------

mod driver {
    use super::*;

    pub fn run(opts: &Options) -> Result<(), String> {
        let _ = epoch();
        if !opts.bouncer.is_file() {
            return Err(format!(
                "{} not found: build it with `cargo build --release` or pass --bouncer",
                opts.bouncer.display()
            ));
        }
        let started_unix = unix_now();
        let kafka = Kafka::new(&opts.bootstrap)?;
        let run_id = format!(
            "e2e-{}-{}",
            std::process::id(),
            (started_unix as u64) % 1_000_000
        );
        let dir = std::env::temp_dir().join(&run_id);
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        note(format!(
            "run {run_id}: broker {}, bouncer {}, work dir {}",
            opts.bootstrap,
            opts.bouncer.display(),
            dir.display()
        ));

        // Rules and events.
        let specs: Vec<RuleSpec> = common::rule_specs(opts.rules, RULES_SEED);
        let files = common::rule_files(&specs, 1_000);
        // Logs and configuration files in a directory of their own: bouncer
        // watches every directory on the way to its rules, and a log
        // written beside them would make it re-scan the rules all along.
        fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        let rules_dir = dir.join("rules").join("default");
        common::write_rule_files(&rules_dir, &files).map_err(|e| e.to_string())?;
        let set = RuleSet::new(common::load(&files));
        let sample = (opts.events as usize).clamp(1, 20_000);
        let share = opts.match_per_mille;
        let mut backlog = EventStream::matching(&specs, &set, sample, BACKLOG_SEED, share);
        let (traffic, aimed) = backlog.shares();
        let match_share = format!(
            "{} rules; {:.1}% of the traffic matches on its own, {:.1}% more aimed at a rule",
            opts.rules,
            traffic as f64 / 10.0,
            aimed as f64 / 10.0
        );
        note(&match_share);
        let mut paced_stream = EventStream::matching(&specs, &set, sample, PACED_SEED, share);
        let pool: Arc<Vec<String>> = Arc::new(
            (0..PACED_POOL.min((opts.events as usize).max(1000)))
                .map(|_| paced_stream.next_event())
                .collect(),
        );
        let ctx = Ctx {
            opts: opts.clone(),
            kafka,
            run_id: run_id.clone(),
            dir: dir.clone(),
            rules_dir,
            broker: broker_pid(),
        };

        let backlog_topic = format!("{run_id}.backlog");
        ctx.kafka.create(&[(&backlog_topic, opts.partitions)])?;
        note(format!(
            "loading {} events into {backlog_topic}",
            opts.events
        ));
        let took = load(
            &opts.bootstrap,
            &backlog_topic,
            opts.partitions,
            &mut backlog,
            0,
            opts.events,
        )?;
        let mean_bytes = pool.iter().map(String::len).sum::<usize>() / pool.len().max(1);
        note(format!(
            "loaded in {:.1}s ({:.0} events/s), mean event {mean_bytes} bytes",
            took.as_secs_f64(),
            opts.events as f64 / took.as_secs_f64()
        ));

        let mut measurements = Vec::new();
        // Offered load of the latency phases, per mode: fixed once measured.
        let mut rates: BTreeMap<Mode, f64> = BTreeMap::new();
        // The baseline's throughput beside the paced producer and reader.
        let mut capacities: BTreeMap<Mode, f64> = BTreeMap::new();
        for run in 1..=opts.runs {
            for &mode in &opts.modes {
                for subject in [Subject::Baseline, Subject::Bouncer] {
                    let label = format!("r{run}.{}.{}.drain", mode.short(), subject.name());
                    let stage = Stage::new(
                        &ctx,
                        &label,
                        mode,
                        subject,
                        Some(&backlog_topic),
                        &ctx.rules_dir,
                    )?;
                    note(format!("{label}: draining {} events", opts.events));
                    let drain = phases::drain(&ctx, &stage, opts.events);
                    report_drain(&label, &drain);
                    stage.drop_topics(&ctx, false);
                    measurements.push(Measurement {
                        run,
                        mode,
                        subject,
                        drain,
                        latency: None,
                    });
                }
                if opts.latency_secs <= 0.0 {
                    continue;
                }
                if !rates.contains_key(&mode)
                    && let Some((rate, capacity)) =
                        latency_rate(&ctx, run, mode, &measurements, &pool)?
                {
                    rates.insert(mode, rate);
                    if let Some(capacity) = capacity {
                        capacities.insert(mode, capacity);
                    }
                }
                let Some(&rate) = rates.get(&mode) else {
                    note("no rate for the latency phases (the baseline failed); skipped");
                    continue;
                };
                for subject in [Subject::Baseline, Subject::Bouncer] {
                    let entry = measurements
                        .iter_mut()
                        .rev()
                        .find(|m| m.run == run && m.mode == mode && m.subject == subject)
                        .expect("drain measured");
                    if let Outcome::NotAvailable { reason } = &entry.drain {
                        entry.latency = Some(Outcome::NotAvailable {
                            reason: reason.clone(),
                        });
                        continue;
                    }
                    let label = format!("r{run}.{}.{}.latency", mode.short(), subject.name());
                    let stage = Stage::new(&ctx, &label, mode, subject, None, &ctx.rules_dir)?;
                    note(format!(
                        "{label}: {rate:.0} events/s for {}s after {}s warm-up",
                        opts.latency_secs, opts.warmup_secs
                    ));
                    let latency = phases::latency(&ctx, &stage, &pool, rate);
                    report_latency(&label, &latency);
                    stage.drop_topics(&ctx, true);
                    entry.latency = Some(latency);
                }
            }
        }

        let reload = if opts.reload_swaps > 0 {
            let rate = rates
                .get(&Mode::AtLeastOnce)
                .or(rates.values().next())
                .copied();
            Some(reload_phase(&ctx, rate.or(opts.rate).unwrap_or(10_000.0)))
        } else {
            None
        };

        let memory = if opts.memory_events > 0 {
            Some(memory_phase(&ctx, &backlog_topic, &mut backlog))
        } else {
            None
        };
        ctx.kafka.delete(&[backlog_topic]);

        let report = Report {
            started_unix,
            machine: machine(),
            options: options_map(opts),
            match_share,
            rates: rates
                .iter()
                .map(|(m, r)| (m.name().to_owned(), *r))
                .collect(),
            capacities: capacities
                .iter()
                .map(|(m, r)| (m.name().to_owned(), *r))
                .collect(),
            measurements,
            reload,
            memory,
        };
        let text = summary(&report);
        println!("{text}");
        write_results(opts, &report, &text)?;
        let failed = serde_json::to_string(&report)
            .map_or(true, |json| json.contains("\"status\":\"failed\""));
        if failed {
            note(format!(
                "something failed: logs and configuration files kept in {}",
                dir.join("logs").display()
            ));
        } else {
            let _ = fs::remove_dir_all(&dir);
        }
        Ok(())
    }

    /// The offered load of a mode's latency phases, and the capacity it is
    /// half of: `--rate`, else half of what the baseline passes beside the
    /// paced producer and the reader, offered 1.5 times its drain rate
    /// (more than it can take there).
    fn latency_rate(
        ctx: &Ctx,
        run: usize,
        mode: Mode,
        measurements: &[Measurement],
        pool: &Arc<Vec<String>>,
    ) -> Result<Option<(f64, Option<f64>)>, String> {
        if let Some(rate) = ctx.opts.rate {
            return Ok(Some((rate, None)));
        }
        let Some(drain_rate) = measurements
            .iter()
            .find(|m| m.mode == mode && m.subject == Subject::Baseline)
            .and_then(|m| m.drain.ok())
            .map(|d| d.events_per_s)
        else {
            return Ok(None);
        };
        let label = format!("r{run}.{}.baseline.capacity", mode.short());
        let stage = Stage::new(ctx, &label, mode, Subject::Baseline, None, &ctx.rules_dir)?;
        let secs = if ctx.opts.quick { 3.0 } else { 5.0 };
        note(format!(
            "{label}: offering {:.0} events/s (1.5× its drain rate) for {secs}s to find the most it passes beside the producer and reader",
            drain_rate * 1.5
        ));
        let outcome = phases::capacity(ctx, &stage, pool, drain_rate * 1.5, secs);
        stage.drop_topics(ctx, true);
        match outcome {
            Outcome::Ok(capacity) => {
                let rate = (capacity / 2.0).round();
                // All that was offered went through: the most is higher.
                let at_least = if capacity >= 0.97 * drain_rate * 1.5 {
                    " (all it was offered: at least that)"
                } else {
                    ""
                };
                note(format!(
                    "{label}: {capacity:.0} events/s{at_least}; offered load of the {} latency phases: {rate:.0} events/s",
                    mode.name()
                ));
                Ok(Some((rate, Some(capacity))))
            }
            other => {
                note(format!("{label}: {other:?}"));
                Ok(None)
            }
        }
    }

    fn reload_phase(ctx: &Ctx, rate: f64) -> Outcome<Reload> {
        let n = ctx.opts.reload_rules;
        note(format!("reload: generating two sets of {n} rules"));
        let specs_a = common::rule_specs(n, RELOAD_SEED_A);
        let files_a = common::rule_files(&specs_a, 1_000);
        let files_b = common::rule_files(&common::rule_specs(n, RELOAD_SEED_B), 1_000);
        let dir = ctx.dir.join("rules").join("reload");
        if let Err(e) = common::write_rule_files(&dir, &files_a) {
            return Outcome::Failed {
                reason: e.to_string(),
            };
        }
        // Events aimed at the first set, as the pipeline's traffic would be.
        let set_a = RuleSet::new(common::load(&files_a));
        let share = ctx.opts.match_per_mille;
        let mut stream = EventStream::matching(&specs_a, &set_a, 20_000, PACED_SEED ^ 1, share);
        let pool: Arc<Vec<String>> =
            Arc::new((0..PACED_POOL).map(|_| stream.next_event()).collect());
        drop(stream);
        drop(set_a);
        let mut swapper = phases::Swapper::new(dir.clone(), files_a, files_b);
        let label = "reload.alo.bouncer";
        let stage = match Stage::new(ctx, label, Mode::AtLeastOnce, Subject::Bouncer, None, &dir) {
            Ok(s) => s,
            Err(reason) => return Outcome::Failed { reason },
        };
        note(format!(
            "{label}: {rate:.0} events/s, {} swaps of {n} rules",
            ctx.opts.reload_swaps
        ));
        let outcome = phases::reload(ctx, &stage, &mut swapper, &pool, rate);
        stage.drop_topics(ctx, true);
        match &outcome {
            Outcome::Ok(r) => note(format!(
                "{label}: p99 outside {:.2} ms, during swaps {:.2} ms; reloads {:?} ms",
                r.outside.p99_ms, r.during.p99_ms, r.reload_elapsed_ms
            )),
            other => note(format!("{label}: {other:?}")),
        }
        outcome
    }

    fn memory_phase(
        ctx: &Ctx,
        backlog_topic: &str,
        backlog: &mut EventStream<'_>,
    ) -> Outcome<Memory> {
        let opts = &ctx.opts;
        let events = opts.memory_events.max(opts.events);
        if events > opts.events {
            note(format!(
                "memory: adding {} events to {backlog_topic}",
                events - opts.events
            ));
            if let Err(reason) = load(
                &opts.bootstrap,
                backlog_topic,
                opts.partitions,
                backlog,
                opts.events,
                events - opts.events,
            ) {
                return Outcome::Failed { reason };
            }
        }
        let label = "memory.alo.bouncer";
        let stage = match Stage::new(
            ctx,
            label,
            Mode::AtLeastOnce,
            Subject::Bouncer,
            Some(backlog_topic),
            &ctx.rules_dir,
        ) {
            Ok(s) => s,
            Err(reason) => return Outcome::Failed { reason },
        };
        note(format!("{label}: draining {events} events"));
        let drain = phases::drain(ctx, &stage, events);
        report_drain(label, &drain);
        stage.drop_topics(ctx, false);
        let config = Config::default();
        let consumer = config.consumer_properties();
        let producer = config.producer_properties();
        let mut settings = BTreeMap::new();
        settings.insert("max_in_flight".into(), config.max_in_flight.to_string());
        for key in [
            "queued.max.messages.kbytes",
            "fetch.max.bytes",
            "max.partition.fetch.bytes",
            "receive.message.max.bytes",
        ] {
            if let Some(v) = consumer.get(key) {
                settings.insert(format!("consumer {key}"), v.clone());
            }
        }
        for key in [
            "queue.buffering.max.kbytes",
            "queue.buffering.max.messages",
            "batch.num.messages",
        ] {
            if let Some(v) = producer.get(key) {
                settings.insert(format!("producer {key}"), v.clone());
            }
        }
        match drain {
            Outcome::Ok(drain) => Outcome::Ok(Memory {
                events,
                drain,
                settings,
            }),
            Outcome::NotAvailable { reason } => Outcome::NotAvailable { reason },
            Outcome::Failed { reason } => Outcome::Failed { reason },
        }
    }

    fn report_drain(label: &str, d: &Outcome<Drain>) {
        match d {
            Outcome::Ok(d) => note(format!(
                "{label}: {:.0} events/s, {:.2} CPU s per M events, peak RSS {:.1} MiB, steady {:.1} MiB (start-up {:.1}s; broker {:.2} CPU s per M, machine {:.0}% busy)",
                d.events_per_s,
                d.cpu_s_per_m,
                d.peak_rss_mib,
                d.steady_rss_mib,
                d.startup_s,
                d.around.broker_cpu_s_per_m,
                d.around.machine_busy_pct
            )),
            Outcome::NotAvailable { reason } => note(format!("{label}: not available: {reason}")),
            Outcome::Failed { reason } => note(format!("{label}: FAILED: {reason}")),
        }
    }

    fn report_latency(label: &str, l: &Outcome<Latency>) {
        match l {
            Outcome::Ok(l) => note(format!(
                "{label}: {}/{} received; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; {:.2} CPU s per M events (broker {:.2}, driver {:.2}; machine {:.0}% busy)",
                l.received,
                l.sent,
                l.quantiles.p50_ms,
                l.quantiles.p99_ms,
                l.quantiles.p999_ms,
                l.quantiles.max_ms,
                l.cpu_s_per_m,
                l.around.broker_cpu_s_per_m,
                l.around.driver_cpu_s_per_m,
                l.around.machine_busy_pct
            )),
            Outcome::NotAvailable { reason } => note(format!("{label}: not available: {reason}")),
            Outcome::Failed { reason } => note(format!("{label}: FAILED: {reason}")),
        }
    }

    fn machine() -> String {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let cores = thread::available_parallelism().map_or(0, |n| n.get());
        format!("{cores} cores, {cpu}")
    }

    fn options_map(o: &Options) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("events".into(), o.events.to_string());
        m.insert("memory_events".into(), o.memory_events.to_string());
        m.insert(
            "modes".into(),
            o.modes
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(","),
        );
        m.insert("runs".into(), o.runs.to_string());
        m.insert("latency_secs".into(), o.latency_secs.to_string());
        m.insert("warmup_secs".into(), o.warmup_secs.to_string());
        m.insert("rules".into(), o.rules.to_string());
        m.insert("match_per_mille".into(), o.match_per_mille.to_string());
        m.insert("reload_rules".into(), o.reload_rules.to_string());
        let join = |v: &[(String, String)]| {
            v.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        m.insert("settings".into(), join(&o.settings));
        m.insert("consumer".into(), join(&o.consumer));
        m.insert("producer".into(), join(&o.producer));
        m.insert("reload_swaps".into(), o.reload_swaps.to_string());
        m.insert("partitions".into(), o.partitions.to_string());
        m.insert("quick".into(), o.quick.to_string());
        m
    }

    /// A figure for one (mode, subject) across runs: its median and the
    /// values of each run.
    fn figures(
        report: &Report,
        mode: Mode,
        subject: Subject,
        f: impl Fn(&Measurement) -> Option<f64>,
    ) -> (Option<f64>, Vec<f64>) {
        let values: Vec<f64> = report
            .measurements
            .iter()
            .filter(|m| m.mode == mode && m.subject == subject)
            .filter_map(f)
            .collect();
        (median(values.clone()), values)
    }

    fn unavailable(report: &Report, mode: Mode, subject: Subject) -> Option<String> {
        report
            .measurements
            .iter()
            .filter(|m| m.mode == mode && m.subject == subject)
            .find_map(|m| match &m.drain {
                Outcome::NotAvailable { reason } => Some(format!("not available: {reason}")),
                Outcome::Failed { reason } => Some(format!("FAILED: {reason}")),
                Outcome::Ok(_) => None,
            })
    }

    type Column = (&'static str, fn(&Measurement) -> Option<f64>, &'static str);

    const COLUMNS: &[Column] = &[
        (
            "events/s",
            |m| m.drain.ok().map(|d| d.events_per_s),
            "{:.0}",
        ),
        (
            "CPU s/M ev",
            |m| m.drain.ok().map(|d| d.cpu_s_per_m),
            "{:.2}",
        ),
        (
            "peak RSS MiB",
            |m| m.drain.ok().map(|d| d.peak_rss_mib),
            "{:.1}",
        ),
        (
            "steady RSS MiB",
            |m| m.drain.ok().map(|d| d.steady_rss_mib),
            "{:.1}",
        ),
        ("p50 ms", |m| lat(m).map(|l| l.quantiles.p50_ms), "{:.2}"),
        ("p99 ms", |m| lat(m).map(|l| l.quantiles.p99_ms), "{:.2}"),
        ("p99.9 ms", |m| lat(m).map(|l| l.quantiles.p999_ms), "{:.2}"),
        ("CPU s/M @load", |m| lat(m).map(|l| l.cpu_s_per_m), "{:.2}"),
    ];

    fn lat(m: &Measurement) -> Option<&Latency> {
        m.latency.as_ref().and_then(Outcome::ok)
    }

    fn fmt(v: Option<f64>, spec: &str) -> String {
        match (v, spec) {
            (None, _) => "-".into(),
            (Some(v), "{:.0}") => format!("{v:.0}"),
            (Some(v), "{:.1}") => format!("{v:.1}"),
            (Some(v), _) => format!("{v:.2}"),
        }
    }

    pub fn summary(report: &Report) -> String {
        let mut out = String::new();
        let runs = report.measurements.iter().map(|m| m.run).max().unwrap_or(0);
        let _ = writeln!(out, "\n== end-to-end benchmark ({}) ==", report.machine);
        let _ = writeln!(
            out,
            "backlog {} events per drain, {} input partitions, {}; medians of {runs} run(s)",
            report.options["events"], report.options["partitions"], report.match_share
        );
        for key in ["settings", "consumer", "producer"] {
            if !report.options[key].is_empty() {
                let _ = writeln!(out, "extra {key} settings: {}", report.options[key]);
            }
        }
        if report.rates.is_empty() {
            let _ = writeln!(out, "latency: not measured");
        } else {
            let rates: Vec<String> = report
                .rates
                .iter()
                .map(|(m, r)| match report.capacities.get(m) {
                    Some(c) => format!("{m} {r:.0} of {c:.0}"),
                    None => format!("{m} {r:.0} (--rate)"),
                })
                .collect();
            let _ = writeln!(
                out,
                "latency: input send → output received by a read_committed reader, for {}s after {}s warm-up, at half the most the baseline passes with the paced producer and the reader beside it (events/s: {})",
                report.options["latency_secs"],
                report.options["warmup_secs"],
                rates.join(", ")
            );
        }
        let modes: Vec<Mode> = {
            let mut m: Vec<Mode> = report.measurements.iter().map(|m| m.mode).collect();
            m.dedup();
            m.sort();
            m.dedup();
            m
        };
        let mut header = format!("\n| {:<13} | {:<8} |", "mode", "process");
        let mut rule = format!("|{}|{}|", "-".repeat(15), "-".repeat(10));
        for (name, _, _) in COLUMNS {
            let _ = write!(header, " {name:>14} |");
            let _ = write!(rule, "{}:|", "-".repeat(15));
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for &mode in &modes {
            let mut medians = Vec::new();
            for subject in [Subject::Baseline, Subject::Bouncer] {
                let mut row = format!("| {:<13} | {:<8} |", mode.name(), subject.name());
                let mut values = Vec::new();
                match unavailable(report, mode, subject) {
                    Some(why) if figures(report, mode, subject, COLUMNS[0].1).1.is_empty() => {
                        let why: String = why.chars().take(140).collect();
                        let _ = write!(row, " {why} |");
                        for _ in 0..COLUMNS.len() {
                            values.push(None);
                        }
                    }
                    _ => {
                        for (_, f, spec) in COLUMNS {
                            let (m, _) = figures(report, mode, subject, f);
                            let _ = write!(row, " {:>14} |", fmt(m, spec));
                            values.push(m);
                        }
                    }
                }
                let _ = writeln!(out, "{row}");
                medians.push(values);
            }
            let mut row = format!("| {:<13} | {:<8} |", mode.name(), "ratio");
            for (i, _) in COLUMNS.iter().enumerate() {
                let r = match (medians[0][i], medians[1][i]) {
                    (Some(b), Some(x)) if b > 0.0 => format!("{:.2}×", x / b),
                    _ => "-".into(),
                };
                let _ = write!(row, " {r:>14} |");
            }
            let _ = writeln!(out, "{row}");
        }
        // The rest of the machine: a process that leaves the cores idle is
        // waiting on something other than CPU; a busy machine slows all.
        let _ = writeln!(
            out,
            "\naround each process (medians): broker CPU s per M events; machine busy (100% = both cores); others = the share other processes took"
        );
        for &mode in &modes {
            for subject in [Subject::Baseline, Subject::Bouncer] {
                let get = |f: fn(&Measurement) -> Option<f64>| {
                    figures(report, mode, subject, f)
                        .0
                        .map_or("-".to_owned(), |v| format!("{v:.1}"))
                };
                let _ = writeln!(
                    out,
                    "  {:<13} {:<8}  drain: broker {:>5}, busy {:>5}%, others {:>5}%   latency: broker {:>5}, driver {:>5}, busy {:>5}%, others {:>5}%",
                    mode.name(),
                    subject.name(),
                    get(|m| m.drain.ok().map(|d| d.around.broker_cpu_s_per_m)),
                    get(|m| m.drain.ok().map(|d| d.around.machine_busy_pct)),
                    get(|m| m.drain.ok().map(|d| d.around.others_busy_pct)),
                    get(|m| lat(m).map(|l| l.around.broker_cpu_s_per_m)),
                    get(|m| lat(m).map(|l| l.around.driver_cpu_s_per_m)),
                    get(|m| lat(m).map(|l| l.around.machine_busy_pct)),
                    get(|m| lat(m).map(|l| l.around.others_busy_pct)),
                );
            }
        }
        let noisy: Vec<String> = report
            .measurements
            .iter()
            .flat_map(|m| {
                let drain = m.drain.ok().map(|d| ("drain", d.around));
                let latency = lat(m).map(|l| ("latency", l.around));
                [drain, latency]
                    .into_iter()
                    .flatten()
                    .filter(|(_, a)| a.others_busy_pct > NOISY_PCT)
                    .map(move |(phase, a)| {
                        format!(
                            "r{} {} {} {phase} ({:.0}%)",
                            m.run,
                            m.mode.name(),
                            m.subject.name(),
                            a.others_busy_pct
                        )
                    })
            })
            .collect();
        if !noisy.is_empty() {
            let _ = writeln!(
                out,
                "WARNING: other processes took more than {NOISY_PCT}% of the machine during: {}; those figures are unreliable (rerun with scripts/bench-e2e.sh --wait-idle)",
                noisy.join(", ")
            );
        }
        if runs > 1 {
            let _ = writeln!(out, "\nper run (events/s baseline / bouncer = ratio):");
            for &mode in &modes {
                let (_, b) = figures(report, mode, Subject::Baseline, COLUMNS[0].1);
                let (_, x) = figures(report, mode, Subject::Bouncer, COLUMNS[0].1);
                let runs: Vec<String> = b
                    .iter()
                    .zip(&x)
                    .map(|(b, x)| format!("{b:.0} / {x:.0} = {:.2}", x / b))
                    .collect();
                let _ = writeln!(out, "  {}: {}", mode.name(), runs.join("; "));
            }
        }
        // Bouncer's outcomes, to check the match share.
        if let Some(d) = report.measurements.iter().find_map(|m| {
            (m.subject == Subject::Bouncer)
                .then(|| m.drain.ok())
                .flatten()
        }) {
            let outcomes: Vec<String> = d
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            let _ = writeln!(
                out,
                "\nbouncer outcomes in one drain: {}",
                outcomes.join(", ")
            );
        }
        // Targets of issue #8.
        let _ = writeln!(out, "\ntargets (issue #8):");
        if modes.contains(&Mode::AtLeastOnce) {
            let m = Mode::AtLeastOnce;
            let ratio = |col: usize| {
                let (b, _) = figures(report, m, Subject::Baseline, COLUMNS[col].1);
                let (x, _) = figures(report, m, Subject::Bouncer, COLUMNS[col].1);
                b.zip(x).map(|(b, x)| x / b)
            };
            if let Some(r) = ratio(0) {
                let _ = writeln!(
                    out,
                    "  at-least-once throughput ≥ 0.9× baseline: {:.2}× {}",
                    r,
                    verdict(r >= 0.9)
                );
            }
            if let Some(r) = ratio(1) {
                let _ = writeln!(
                    out,
                    "  at-least-once CPU per event ≤ 1.5× baseline (goal 1.2×): {:.2}× {}",
                    r,
                    verdict(r <= 1.5)
                );
            }
            let (b, _) = figures(report, m, Subject::Baseline, COLUMNS[5].1);
            let (x, _) = figures(report, m, Subject::Bouncer, COLUMNS[5].1);
            if let (Some(b), Some(x)) = (b, x) {
                let _ = writeln!(
                    out,
                    "  at-least-once p99 added latency < 5 ms: {:+.2} ms (p99 {x:.2} vs {b:.2}) {}",
                    x - b,
                    verdict(x - b < 5.0)
                );
            }
        }
        if modes.contains(&Mode::ExactlyOnce) {
            let (x, _) = figures(report, Mode::ExactlyOnce, Subject::Bouncer, COLUMNS[5].1);
            match x {
                Some(x) => {
                    let commit = |subject| {
                        figures(report, Mode::ExactlyOnce, subject, |m| {
                            lat(m).and_then(|l| l.commit_ms_mean)
                        })
                        .0
                        .map_or("-".to_owned(), |v| format!("{v:.1} ms"))
                    };
                    let _ = writeln!(
                        out,
                        "  exactly-once p99 {x:.2} ms against a transaction interval of {} ms (mean commit time: baseline {}, bouncer {})",
                        Config::default().transaction_interval.as_millis(),
                        commit(Subject::Baseline),
                        commit(Subject::Bouncer)
                    );
                }
                None => {
                    let _ = writeln!(out, "  exactly-once: bouncer not measured (see the table)");
                }
            }
        }
        match &report.memory {
            Some(Outcome::Ok(m)) => {
                let _ = writeln!(
                    out,
                    "  steady RSS < 128 MiB (default settings, {} rules, backlog of {} events): steady {:.1} MiB, max during drain {:.1} MiB, peak {:.1} MiB {}",
                    report.options["rules"],
                    m.events,
                    m.drain.steady_rss_mib,
                    m.drain.max_rss_during_mib,
                    m.drain.peak_rss_mib,
                    verdict(m.drain.steady_rss_mib < 128.0)
                );
                let settings: Vec<String> = m
                    .settings
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "    memory-bounding settings in force: {}",
                    settings.join(", ")
                );
                let _ = writeln!(
                    out,
                    "    memory-check drain: {:.0} events/s",
                    m.drain.events_per_s
                );
            }
            Some(other) => {
                let _ = writeln!(out, "  memory check: {other:?}");
            }
            None => {}
        }
        match &report.reload {
            Some(Outcome::Ok(r)) => {
                let _ = writeln!(
                    out,
                    "\nreload under load: bouncer at-least-once at {:.0} events/s, {} swaps of {} rules ({} sent, {} received)",
                    r.rate, r.swaps, r.rules, r.sent, r.received
                );
                let _ = writeln!(
                    out,
                    "| window      | samples |  p50 ms |  p99 ms | p99.9 ms |  max ms |"
                );
                let _ = writeln!(
                    out,
                    "|-------------|--------:|--------:|--------:|---------:|--------:|"
                );
                for (name, q) in [("outside", &r.outside), ("during swap", &r.during)] {
                    let _ = writeln!(
                        out,
                        "| {name:<11} | {:>7} | {:>7.2} | {:>7.2} | {:>8.2} | {:>7.1} |",
                        q.samples, q.p50_ms, q.p99_ms, q.p999_ms, q.max_ms
                    );
                }
                let _ = writeln!(
                    out,
                    "reloads: {:.0} successful, {:.0} failed (bouncer_rules_reload_total); reload thread {:?} ms (log elapsed_ms); renames → reloaded {} s (metrics, 0.25 s debounce included)",
                    r.reload_success_total,
                    r.reload_failure_total,
                    r.reload_elapsed_ms,
                    (0..r.swaps)
                        .map(|i| r.swap_to_reloaded_s.get(i).map_or_else(
                            || "not seen in the phase".to_owned(),
                            |s| format!("{s:.2}")
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Some(other) => {
                let _ = writeln!(out, "\nreload under load: {other:?}");
            }
            None => {}
        }
        out
    }

    fn verdict(ok: bool) -> &'static str {
        if ok { "met" } else { "NOT met" }
    }

    fn write_results(opts: &Options, report: &Report, text: &str) -> Result<(), String> {
        fs::create_dir_all(&opts.out).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let path = opts.out.join(format!("e2e-{stamp}.json"));
        fs::write(&path, &json).map_err(|e| e.to_string())?;
        fs::write(opts.out.join("e2e-latest.json"), &json).map_err(|e| e.to_string())?;
        fs::write(opts.out.join("e2e-latest.txt"), text).map_err(|e| e.to_string())?;
        // One row per figure, for spreadsheets and scripts.
        let mut tsv = String::from("run\tmode\tprocess\tfigure\tvalue\n");
        for m in &report.measurements {
            let mut row = |figure: &str, v: f64| {
                let _ = writeln!(
                    tsv,
                    "{}\t{}\t{}\t{figure}\t{v}",
                    m.run,
                    m.mode.name(),
                    m.subject.name()
                );
            };
            if let Outcome::Ok(d) = &m.drain {
                row("events_per_s", d.events_per_s);
                row("cpu_s_per_m_events", d.cpu_s_per_m);
                row("peak_rss_mib", d.peak_rss_mib);
                row("steady_rss_mib", d.steady_rss_mib);
            }
            if let Some(l) = lat(m) {
                row("latency_p50_ms", l.quantiles.p50_ms);
                row("latency_p99_ms", l.quantiles.p99_ms);
                row("latency_p999_ms", l.quantiles.p999_ms);
                row("latency_cpu_s_per_m_events", l.cpu_s_per_m);
            }
        }
        fs::write(opts.out.join("e2e-latest.tsv"), tsv).map_err(|e| e.to_string())?;
        note(format!(
            "results: {} (and e2e-latest.json, .tsv, .txt)",
            path.display()
        ));
        Ok(())
    }
}
