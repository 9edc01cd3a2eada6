//! Support for the tests that run the real `bouncer` binary against the real
//! broker of `scripts/kafka.sh`: topics, a producer, a reader of output
//! topics, the child process and its HTTP endpoints.
//!
//! Kafka tests share one broker and run one at a time ([`serial`]); every
//! topic and group name is unique per test run, so other test binaries
//! running at the same time never collide with them.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tempfile::TempDir;

/// Generous bound for anything the broker or bouncer should do "soon".
pub const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The broker.
// ---------------------------------------------------------------------------

/// The broker's address: `$KAFKA_BOOTSTRAP`, or the broker of
/// `scripts/kafka.sh start` (run once per test binary) on 127.0.0.1:9092.
pub fn bootstrap() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP")
            && !b.trim().is_empty()
        {
            return b;
        }
        let status = kafka_sh(&["start"]);
        assert!(
            status.success(),
            "scripts/kafka.sh start failed ({status}); set KAFKA_BOOTSTRAP to use another broker"
        );
        "127.0.0.1:9092".to_owned()
    })
}

/// Runs `scripts/kafka.sh ARGS`, its output going to the test's output.
pub fn kafka_sh(args: &[&str]) -> ExitStatus {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    Command::new(script)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .expect("scripts/kafka.sh runs")
}

/// Whether the broker on [`bootstrap`] is the one `scripts/kafka.sh`
/// manages (so a test may stop and start it).
pub fn broker_is_managed() -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    Command::new(script)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("running:")
        })
}

/// Held for the whole of a Kafka test: see [`serial`].
pub struct Serial {
    _broker: Option<BrokerLock>,
    _thread: MutexGuard<'static, ()>,
}

/// Kafka tests of one test binary run one at a time; hold this guard for
/// the whole test. It also takes a shared lock that other processes running
/// these tests take too (someone else's `cargo test` on the same machine), so
/// that a test restarting the broker ([`serial_exclusive`]) waits for them.
pub fn serial() -> Serial {
    let thread = thread_lock();
    let serial = Serial {
        _broker: BrokerLock::acquire(false),
        _thread: thread,
    };
    ensure_broker();
    serial
}

/// Like [`serial`], but alone on the broker: no Kafka test of any process
/// runs meanwhile. For tests that stop the broker.
pub fn serial_exclusive() -> Serial {
    let thread = thread_lock();
    let serial = Serial {
        _broker: BrokerLock::acquire(true),
        _thread: thread,
    };
    ensure_broker();
    serial
}

/// Starts the broker of `scripts/kafka.sh` again if it no longer answers
/// (another process on this machine may have stopped it since this binary
/// started); a broker given by `$KAFKA_BOOTSTRAP` elsewhere is left alone.
fn ensure_broker() {
    let address = bootstrap();
    let port = std::env::var("KAFKA_PORT").unwrap_or_else(|_| "9092".into());
    let ours = address == format!("127.0.0.1:{port}");
    let answers = address
        .parse()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some();
    if ours && !answers {
        eprintln!("the broker on {address} does not answer; starting it");
        assert!(kafka_sh(&["start"]).success(), "scripts/kafka.sh start");
    }
}

/// Like [`serial_exclusive`], but the machine-wide lock is the broker's own
/// when the broker is not the default one (127.0.0.1:9092): a campaign on a
/// broker of its own (another `KAFKA_PORT`) neither waits for nor blocks the
/// Kafka tests that other processes run on the default broker. On the
/// default broker it is [`serial_exclusive`].
pub fn serial_exclusive_on_broker() -> Serial {
    let thread = thread_lock();
    let address = bootstrap();
    let file = if address == "127.0.0.1:9092" {
        "bouncer-kafka-tests.lock".to_owned()
    } else {
        let name: String = address
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("bouncer-kafka-tests-{name}.lock")
    };
    let serial = Serial {
        _broker: BrokerLock::acquire_at(&std::env::temp_dir().join(file), true),
        _thread: thread,
    };
    ensure_broker();
    serial
}

fn thread_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A machine-wide reader-writer lock: an flock(1) child holding
/// `$TMPDIR/bouncer-kafka-tests.lock` until its standard input closes, which
/// also happens when the test process dies.
struct BrokerLock(Child);

impl BrokerLock {
    fn acquire(exclusive: bool) -> Option<BrokerLock> {
        let path = std::env::temp_dir().join("bouncer-kafka-tests.lock");
        BrokerLock::acquire_at(&path, exclusive)
    }

    fn acquire_at(path: &Path, exclusive: bool) -> Option<BrokerLock> {
        let mut child = Command::new("flock")
            .arg(if exclusive { "--exclusive" } else { "--shared" })
            .args(["--timeout", "900"])
            .arg(path)
            .args(["-c", "echo locked; exec cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?; // without flock(1), only this process is serialised
        let mut line = [0u8; 7];
        let locked = child
            .stdout
            .as_mut()
            .is_some_and(|out| out.read_exact(&mut line).is_ok() && &line == b"locked\n");
        assert!(locked, "could not lock {}", path.display());
        Some(BrokerLock(child))
    }
}

impl Drop for BrokerLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// A name no other test run uses: `<prefix>-<pid>-<time>-<counter>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
        % 1_000_000_000_000;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client")
}

/// One topic to create: name, partitions, topic configs.
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub config: &'a [(&'a str, &'a str)],
}

/// Creates topics and waits until the broker's metadata shows them.
pub fn create_topics(specs: &[TopicSpec<'_>]) {
    let admin = admin();
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(s.name, s.partitions, TopicReplication::Fixed(1));
            for (k, v) in s.config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics(&topics, &options)).expect("create topics");
    for r in results {
        if let Err((name, code)) = r {
            panic!("cannot create topic {name}: {code}");
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        let ready = specs.iter().all(|s| {
            metadata.topics().iter().any(|t| {
                t.name() == s.name
                    && t.error().is_none()
                    && t.partitions().len() == s.partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topics not visible in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The partition count of a topic.
pub fn partitions_of(topic: &str) -> i32 {
    let admin = admin();
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len() as i32
}

/// The committed offsets of `group` on `topic`, per partition (-1: none).
pub fn committed(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    try_committed(group, topic).unwrap_or_else(|e| panic!("committed offsets of {group}: {e}"))
}

fn try_committed(group: &str, topic: &str) -> Result<BTreeMap<i32, i64>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions_of(topic) {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// The end (high watermark) offsets of `topic`, per partition.
pub fn end_offsets(topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("consumer");
    (0..partitions_of(topic))
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, high)
        })
        .collect()
}

/// Waits until `group` has committed the end of every partition of `topic`:
/// at least once, every input's outputs are then acknowledged.
pub fn wait_committed_to_end(group: &str, topic: &str, timeout: Duration) {
    let end = end_offsets(topic);
    let deadline = Instant::now() + timeout;
    loop {
        // Right after a broker restart the coordinator may not answer yet.
        let c = try_committed(group, topic).unwrap_or_default();
        if end
            .iter()
            .all(|(p, &e)| e == 0 || c.get(p).copied() == Some(e))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} did not commit the end of {topic}: end {end:?}, committed {c:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Producing input.
// ---------------------------------------------------------------------------

/// Counts delivery reports.
#[derive(Default)]
pub struct Deliveries {
    pub ok: AtomicUsize,
    pub failed: AtomicUsize,
    pub last_error: Mutex<Option<String>>,
    /// Times the producer was replaced because it knew no broker.
    pub renewed: AtomicUsize,
}

/// A [`TestProducer`]'s context: counts delivery reports, keeps each record
/// until it is acknowledged, notes whether librdkafka's last statistics
/// listed a broker, and, if it has a file, writes librdkafka's log lines
/// there.
#[derive(Default)]
pub struct DeliveryCtx {
    deliveries: Arc<Deliveries>,
    /// Records sent and not yet acknowledged, by send number.
    unacked: Arc<Mutex<BTreeMap<usize, Input>>>,
    /// The last statistics listed no broker the client can connect to.
    stranded: AtomicBool,
    /// Being replaced: what it purges is sent again by its successor.
    retiring: AtomicBool,
    log: Option<Arc<Mutex<fs::File>>>,
}

impl DeliveryCtx {
    /// A context for a new client that goes on with this one's counts,
    /// records and log.
    fn successor(&self) -> DeliveryCtx {
        DeliveryCtx {
            deliveries: self.deliveries.clone(),
            unacked: self.unacked.clone(),
            stranded: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            log: self.log.clone(),
        }
    }

    fn note(&self, line: &str) {
        if let Some(file) = &self.log {
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(file, "{now} {line}");
        }
    }
}

impl ClientContext for DeliveryCtx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, line: &str) {
        self.note(&format!("{level:?} {fac} {line}"));
    }

    /// A client left with no broker (confluentinc/librdkafka#5301) lists
    /// none: see bouncer's `src/pipeline/broker_watch.rs`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let none = !statistics
            .brokers
            .values()
            .any(|b| matches!(b.source.as_str(), "learned" | "configured"));
        self.stranded.store(none, Ordering::Relaxed);
    }
}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, number: usize) {
        let d = &self.deliveries;
        match result {
            Ok(_) => {
                self.unacked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&number);
                d.ok.fetch_add(1, Ordering::Relaxed);
            }
            // Purged when a stranded producer is replaced; sent again.
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::PurgeQueue
                    | rdkafka::types::RDKafkaErrorCode::PurgeInflight,
                ),
                _,
            )) if self.retiring.load(Ordering::Relaxed) => {}
            Err((e, _)) => {
                self.unacked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&number);
                d.failed.fetch_add(1, Ordering::Relaxed);
                *d.last_error.lock().unwrap() = Some(e.to_string());
            }
        }
    }
}

/// One input record.
#[derive(Debug, Clone)]
pub struct Input {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl Input {
    pub fn new(partition: i32, key: Option<&str>, value: impl Into<Vec<u8>>) -> Input {
        Input {
            partition,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: None,
        }
    }
}

/// An idempotent producer for test input; it survives a broker restart
/// (long message timeout), and a producer left with no broker
/// (confluentinc/librdkafka#5301, as after a graceful restart of a single
/// broker): [`TestProducer::send`] and [`TestProducer::flush`] then replace
/// it with a new one and send again every record not acknowledged, which
/// can write some of them twice (at new offsets; tests match outputs to
/// inputs by coordinates).
pub struct TestProducer {
    producer: BaseProducer<DeliveryCtx>,
    config: ClientConfig,
    pub deliveries: Arc<Deliveries>,
    topic: String,
    /// Send number of the next record.
    next: usize,
}

impl TestProducer {
    pub fn new(topic: &str) -> TestProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap())
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
        TestProducer::create(topic, config, DeliveryCtx::default())
    }

    /// Like [`TestProducer::new`], reaching the broker at `bootstrap` (a
    /// `tests/metadata_proxy`) and asking for metadata every second.
    pub fn through(topic: &str, bootstrap: &str) -> TestProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
        TestProducer::create(topic, config, DeliveryCtx::default())
    }

    /// Like [`TestProducer::new`], and writes librdkafka's debug log of the
    /// connection, metadata and idempotence state (`debug` =
    /// `broker,topic,metadata,eos`) to `log`: what shows why a producer got
    /// no acknowledgements after a broker restart.
    pub fn logging_to(topic: &str, log: &Path) -> TestProducer {
        let file = fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap())
            .set("debug", "broker,topic,metadata,eos")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        let ctx = DeliveryCtx {
            log: Some(Arc::new(Mutex::new(file))),
            ..DeliveryCtx::default()
        };
        TestProducer::create(topic, config, ctx)
    }

    fn create(topic: &str, mut config: ClientConfig, ctx: DeliveryCtx) -> TestProducer {
        config
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "180000")
            .set("message.max.bytes", "4000000")
            .set("statistics.interval.ms", "1000");
        let deliveries = ctx.deliveries.clone();
        let producer = config.create_with_context(ctx).expect("producer");
        TestProducer {
            producer,
            config,
            deliveries,
            topic: topic.to_owned(),
            next: 0,
        }
    }

    pub fn send(&mut self, input: &Input) {
        self.renew_if_stranded();
        let number = self.next;
        self.next += 1;
        self.producer
            .context()
            .unacked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number, input.clone());
        self.produce(number, input);
    }

    /// Sends one record; whether the producer was replaced meanwhile, in
    /// which case it and every other unacknowledged record were sent again
    /// by the new one.
    fn produce(&mut self, number: usize, input: &Input) -> bool {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &input.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let topic = self.topic.clone();
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&topic, number).partition(input.partition);
        if !input.headers.is_empty() {
            record = record.headers(headers);
        }
        if let Some(k) = &input.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &input.value {
            record = record.payload(v.as_slice());
        }
        if let Some(ts) = input.timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                    if self.renew_if_stranded() {
                        return true;
                    }
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        false
    }

    /// Replaces a producer whose last statistics listed no broker, and sends
    /// again what it had not got acknowledged; whether it did.
    fn renew_if_stranded(&mut self) -> bool {
        if !self.producer.context().stranded.load(Ordering::Relaxed) {
            return false;
        }
        self.producer
            .context()
            .retiring
            .store(true, Ordering::Relaxed);
        let successor = self.producer.context().successor();
        let unacked = successor.unacked.clone();
        let fresh: BaseProducer<DeliveryCtx> = self
            .config
            .create_with_context(successor)
            .expect("producer");
        // Dropping the stranded producer purges what it held (reported as
        // purged, not failed, and kept in `unacked`).
        drop(std::mem::replace(&mut self.producer, fresh));
        let again: Vec<(usize, Input)> = unacked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, input)| (*n, input.clone()))
            .collect();
        self.deliveries.renewed.fetch_add(1, Ordering::Relaxed);
        self.producer.context().note(&format!(
            "test producer: the last statistics listed no broker \
             (confluentinc/librdkafka#5301); replaced, sending {} unacknowledged records again",
            again.len()
        ));
        for (number, input) in again {
            if self.produce(number, &input) {
                // Replaced again meanwhile: the newer one sent the rest.
                break;
            }
        }
        true
    }

    /// Waits until every record sent is acknowledged (up to 180 s);
    /// panics on a failure.
    pub fn flush(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            self.renew_if_stranded();
            if self.producer.flush(Duration::from_secs(1)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "input not flushed in 180 s: {} unacknowledged",
                self.producer
                    .context()
                    .unacked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len()
            );
        }
        let failed = self.deliveries.failed.load(Ordering::Relaxed);
        assert_eq!(
            failed,
            0,
            "input records failed: {:?}",
            self.deliveries.last_error.lock().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------
// Reading topics back.
// ---------------------------------------------------------------------------

/// One record read back.
#[derive(Debug, Clone)]
pub struct Rec {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl Rec {
    /// A copy of a consumed record.
    pub fn of(m: &impl Message) -> Rec {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Rec {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: m.timestamp().to_millis(),
        }
    }

    /// The last value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// `bouncer-input`: which input this record is for.
    pub fn input(&self) -> String {
        self.header("bouncer-input")
            .unwrap_or_else(|| panic!("record without bouncer-input: {self:?}"))
    }

    pub fn coordinates(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", self.coordinates()))
    }
}

/// Reads topics from the beginning, every partition, `read_committed`.
pub struct Reader {
    consumer: BaseConsumer,
    partitions: Vec<(String, i32)>,
    /// Next offset to read per (topic, partition).
    next: HashMap<(String, i32), i64>,
    pub records: Vec<Rec>,
}

impl Reader {
    pub fn new(topics: &[&str]) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        let mut partitions = Vec::new();
        for topic in topics {
            for p in 0..partitions_of(topic) {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .expect("add partition");
                partitions.push(((*topic).to_owned(), p));
            }
        }
        consumer.assign(&tpl).expect("assign");
        Reader {
            consumer,
            partitions,
            next: HashMap::new(),
            records: Vec::new(),
        }
    }

    /// Polls for up to `d`; returns how many records arrived.
    pub fn poll_for(&mut self, d: Duration) -> usize {
        let deadline = Instant::now() + d;
        let mut n = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) => {
                    self.next
                        .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                    self.records.push(Rec::of(&m));
                    n += 1;
                    continue; // drain what is there before looking at the clock
                }
                Some(Err(e)) => panic!("reading: {e}"),
                None => {}
            }
            if Instant::now() >= deadline {
                return n;
            }
        }
    }

    /// Polls until `done(records)` holds; panics after `timeout` with `what`.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[Rec]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.records) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for: {what} ({} records read)",
                self.records.len()
            );
            self.poll_for(Duration::from_millis(200));
        }
    }

    /// Reads until every partition is read up to its current end.
    pub fn read_to_end(&mut self) {
        let mut end = HashMap::new();
        for (topic, p) in &self.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .expect("watermarks");
            end.insert((topic.clone(), *p), high);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let behind: Vec<_> = end
                .iter()
                .filter(|(tp, high)| {
                    **high > 0 && self.next.get(*tp).copied().unwrap_or(0) < **high
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "could not read to the end: {behind:?}"
            );
            self.poll_for(Duration::from_millis(200));
        }
    }

    pub fn of<'r>(&'r self, topic: &'r str) -> impl Iterator<Item = &'r Rec> + 'r {
        self.records.iter().filter(move |r| r.topic == topic)
    }
}

/// Which records of transactional producers a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Committed transactions and non-transactional records only.
    ReadCommitted,
    /// Everything written, aborted transactions included.
    ReadUncommitted,
}

impl Isolation {
    fn property(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

fn scan_consumer(isolation: Isolation, eof: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("scan"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation.property())
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set("fetch.wait.max.ms", "100")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Error)
        .create()
        .expect("scan consumer")
}

/// Per partition of `topic`: the last stable offset (end of what a
/// `read_committed` reader may read) and the high watermark. They differ
/// while a transaction is open on the partition.
pub fn stable_and_high_offsets(topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let committed = scan_consumer(Isolation::ReadCommitted, false);
    let uncommitted = scan_consumer(Isolation::ReadUncommitted, false);
    (0..partitions_of(topic))
        .map(|p| {
            // librdkafka asks for the end offset with the client's isolation
            // level: the last stable offset for a read_committed client.
            let (_, stable) = committed
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("last stable offset");
            let (_, high) = uncommitted
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("high watermark");
            (p, (stable, high))
        })
        .collect()
}

/// Waits up to `timeout` until no transaction is open on any partition of
/// `topic` (last stable offset = high watermark).
pub fn wait_transactions_settled(topic: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let offsets = stable_and_high_offsets(topic);
        let open: BTreeMap<_, _> = offsets.iter().filter(|(_, (s, h))| s != h).collect();
        if open.is_empty() {
            return;
        }
        let expired = Instant::now() >= deadline;
        if expired && broker_is_managed() {
            // What the broker says about them: the producer that holds each
            // one open, and whether the broker calls it hanging (its
            // coordinator will never end it).
            eprintln!("transactions still open on {topic}: the broker's view");
            kafka_sh(&["transactions", "find-hanging", "--broker-id", "1"]);
            kafka_sh(&["transactions", "list"]);
            for partition in open.keys() {
                kafka_sh(&[
                    "transactions",
                    "describe-producers",
                    "--topic",
                    topic,
                    "--partition",
                    &partition.to_string(),
                ]);
            }
        }
        assert!(
            !expired,
            "transactions still open on {topic} after {timeout:?} \
             (partition: (last stable offset, high watermark)): {open:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads `topic` from the beginning to its end with `isolation`, handing
/// each record to `f`; returns how many there were. Nothing may be writing
/// to `topic` meanwhile. With `read_committed` it first waits (up to
/// `timeout`) for open transactions to end, so that the end is final.
///
/// Unlike [`Reader::read_to_end`], the end of a partition is the consumer's
/// partition-EOF event, not the offset of the last record delivered: a
/// partition written by transactions ends with a commit or abort marker,
/// which is never delivered, and an aborted transaction's records are
/// skipped by `read_committed`.
pub fn scan_topic(
    topic: &str,
    isolation: Isolation,
    timeout: Duration,
    mut f: impl FnMut(Rec),
) -> usize {
    let deadline = Instant::now() + timeout;
    if isolation == Isolation::ReadCommitted {
        wait_transactions_settled(topic, timeout);
    }
    let consumer = scan_consumer(isolation, true);
    let partitions = partitions_of(topic);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut at_end = vec![false; partitions as usize];
    let mut n = 0;
    while at_end.iter().any(|e| !e) {
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end within {timeout:?} ({n} records read; \
             partitions at the end: {at_end:?})"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                n += 1;
                f(Rec::of(&m));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end[p as usize] = true;
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    n
}

// ---------------------------------------------------------------------------
// The topics and configuration of one test.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Topics {
    pub input: String,
    pub forward: String,
    pub results: String,
    pub retry: String,
    pub dead_letter: String,
    pub control: String,
}

/// A tempdir, unique topic and group names, and config files for one test.
pub struct Setup {
    pub dir: TempDir,
    pub name: String,
    pub topics: Topics,
    pub group: String,
    pub rules_dir: PathBuf,
    /// `kafka."bootstrap.servers"` when not the test broker's [`bootstrap`]
    /// (a proxy in front of it).
    pub bootstrap: Option<String>,
    /// Extra top-level settings (`key = value` lines).
    pub top_level: Vec<String>,
    /// Extra `[kafka]`, `[kafka.consumer]`, `[kafka.producer]` lines.
    pub kafka: Vec<String>,
    pub consumer: Vec<String>,
    pub producer: Vec<String>,
    configs: AtomicUsize,
}

impl Setup {
    /// Names for `test`; the rule directory exists with `rules` in it.
    pub fn new(test: &str, rules: &[(&str, &str)]) -> Setup {
        let name = unique(test);
        let dir = tempfile::tempdir().expect("tempdir");
        let rules_dir = dir.path().join("rules");
        let setup = Setup {
            topics: Topics {
                input: format!("{name}.in"),
                forward: format!("{name}.accepted"),
                results: format!("{name}.results"),
                retry: format!("{name}.retry"),
                dead_letter: format!("{name}.invalid"),
                control: format!("{name}.rules"),
            },
            group: format!("{name}.group"),
            name,
            rules_dir,
            dir,
            bootstrap: None,
            top_level: vec![
                "shutdown_timeout = \"10s\"".into(),
                "commit_interval = \"500ms\"".into(),
            ],
            kafka: Vec::new(),
            consumer: vec![
                "\"session.timeout.ms\" = 6000".into(),
                "\"heartbeat.interval.ms\" = 1000".into(),
            ],
            producer: Vec::new(),
            configs: AtomicUsize::new(0),
        };
        write_rules(&setup.rules_dir, rules);
        setup
    }

    /// The instances reach the broker through a proxy at `bootstrap`
    /// (`tests/metadata_proxy`), and their clients ask for metadata every
    /// second.
    pub fn through_proxy(&mut self, bootstrap: String) {
        self.bootstrap = Some(bootstrap);
        self.kafka
            .push("\"topic.metadata.refresh.interval.ms\" = 1000".into());
    }

    /// Creates input, forward, results, retry and dead-letter topics
    /// (`partitions` each, forward and retry one more) and the compacted
    /// control topic.
    pub fn create_topics(&self, partitions: i32) {
        let t = &self.topics;
        create_topics(&[
            TopicSpec {
                name: &t.input,
                partitions,
                config: &[],
            },
            TopicSpec {
                name: &t.forward,
                partitions: partitions + 1,
                config: &[],
            },
            TopicSpec {
                name: &t.results,
                partitions,
                config: &[],
            },
            TopicSpec {
                name: &t.retry,
                partitions: partitions + 1,
                config: &[],
            },
            TopicSpec {
                name: &t.dead_letter,
                partitions: 2,
                config: &[],
            },
            TopicSpec {
                name: &t.control,
                partitions: 1,
                config: &[("cleanup.policy", "compact")],
            },
        ]);
    }

    /// Two-partition topics (one for dead letters) whose forward topic
    /// takes batches of at most `max_message_bytes`: a record larger than
    /// that is refused by the broker, not by the client.
    pub fn create_topics_with_small_forward(&self, max_message_bytes: &str) {
        let t = &self.topics;
        let limit = [("max.message.bytes", max_message_bytes)];
        let topic = |name, partitions, config| TopicSpec {
            name,
            partitions,
            config,
        };
        create_topics(&[
            topic(&t.input, 2, &[]),
            topic(&t.forward, 2, &limit),
            topic(&t.results, 2, &[]),
            topic(&t.retry, 2, &[]),
            topic(&t.dead_letter, 1, &[]),
            topic(&t.control, 1, &[("cleanup.policy", "compact")]),
        ]);
    }

    /// Writes a configuration file listening on `port`; returns its path.
    pub fn config_file(&self, port: u16) -> PathBuf {
        self.config_file_with(port, &[])
    }

    /// [`Setup::config_file`] with `extra` top-level settings (`key = value`
    /// lines) after [`Setup::top_level`], for one instance only (e.g. its
    /// `transactional_id`).
    pub fn config_file_with(&self, port: u16, extra: &[String]) -> PathBuf {
        let t = &self.topics;
        let mut text = format!(
            "group = {group:?}\nrules_dir = {rules:?}\nhttp_listen = \"127.0.0.1:{port}\"\n",
            group = self.group,
            rules = self.rules_dir.display().to_string(),
        );
        for line in self.top_level.iter().chain(extra) {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\n[topics]\ninput = {:?}\nforward = {:?}\nresults = {:?}\nretry = {:?}\ndead_letter = {:?}\ncontrol = {:?}\n",
            t.input, t.forward, t.results, t.retry, t.dead_letter, t.control
        ));
        text.push_str(&format!(
            "\n[kafka]\n\"bootstrap.servers\" = {:?}\n",
            self.bootstrap.as_deref().unwrap_or_else(|| bootstrap())
        ));
        for line in &self.kafka {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("\n[kafka.consumer]\n");
        for line in &self.consumer {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("\n[kafka.producer]\n");
        for line in &self.producer {
            text.push_str(line);
            text.push('\n');
        }
        let n = self.configs.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("bouncer-{n}.toml"));
        fs::write(&path, text).expect("write config");
        path
    }

    /// Starts `bouncer run` with a fresh configuration file; `instance`
    /// names it (HOSTNAME, log file).
    pub fn start(&self, instance: &str) -> Bouncer {
        self.start_with(instance, &[])
    }

    /// [`Setup::start`] with `extra` top-level settings for this instance
    /// ([`Setup::config_file_with`]).
    pub fn start_with(&self, instance: &str, extra: &[String]) -> Bouncer {
        let port = free_port();
        let config = self.config_file_with(port, extra);
        Bouncer::spawn(
            &config,
            port,
            &self.dir.path().join(format!("{instance}.log")),
            instance,
        )
    }
}

pub fn write_rules(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("rules dir");
        fs::write(&path, text).expect("write rule file");
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

// ---------------------------------------------------------------------------
// The bouncer process.
// ---------------------------------------------------------------------------

/// A running `bouncer run`; killed when dropped, even on panic (its log is
/// printed then).
pub struct Bouncer {
    child: Child,
    pub port: u16,
    pub instance: String,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Bouncer {
    pub fn spawn(config: &Path, port: u16, log: &Path, instance: &str) -> Bouncer {
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("log file")
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_bouncer"));
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("HOSTNAME", instance)
            // TEST_BOUNCER_RUST_LOG replaces the filter, e.g.
            // `info,librdkafka=debug` with librdkafka's `debug` property.
            .env(
                "RUST_LOG",
                std::env::var("TEST_BOUNCER_RUST_LOG")
                    .unwrap_or_else(|_| "info,rdkafka=warn".to_owned()),
            )
            .env_remove("BOUNCER_GROUP");
        // The fault campaign's knobs (tests/fault_campaign.rs) are for the
        // test, not settings: bouncer would refuse `fault_…` as unknown.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BOUNCER_FAULT_") {
                command.env_remove(name);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(open(&log.with_extension("stdout")))
            .stderr(open(log))
            .spawn()
            .expect("bouncer starts");
        Bouncer {
            child,
            port,
            instance: instance.to_owned(),
            log: log.to_owned(),
            exit: None,
        }
    }

    /// What the process wrote to stderr (its log).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.instance,
                    self.log()
                );
            }
            if self.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in time:\n{}",
                self.instance,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until this instance has partitions assigned (`/status`).
    pub fn wait_assigned(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exited() {
                panic!("{} exited ({status}):\n{}", self.instance, self.log());
            }
            if let Some(s) = self.status()
                && s["kafka"]["assigned_partitions"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} got no partitions",
                self.instance
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until this instance has decided at least `n` events
    /// (`bouncer_events_total`, every outcome).
    pub fn wait_processed(&mut self, n: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exited() {
                panic!("{} exited ({status}):\n{}", self.instance, self.log());
            }
            let text = self.metrics();
            let done: f64 = ["forwarded", "failed", "deferred", "invalid"]
                .iter()
                .filter_map(|o| metric(&text, "bouncer_events_total", &[("outcome", o)]))
                .sum();
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} processed only {done} events",
                self.instance
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET `path` on the HTTP listener: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.get("/status")?;
        (code == 200).then(|| serde_json::from_str(&body).expect("/status is JSON"))
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics").expect("/metrics answers");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -TERM {} failed", self.pid());
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.exit = Some(self.child.wait().expect("wait"));
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- last lines of {} ({}) ----",
                self.instance,
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A one-shot HTTP/1.1 GET on 127.0.0.1:`port`; `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[], b"")
}

/// A one-shot HTTP/1.1 request on 127.0.0.1:`port` with extra `headers`;
/// the status and the (de-chunked) body, or `None` if nothing answers.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample `name{labels}` in a Prometheus text exposition;
/// labels must match exactly.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let got: BTreeMap<&str, &str> = label_text
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (got == want).then(|| value.parse().ok())?
        })
}

// ---------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------

/// A MailerQ-style delivery event with a unique `id`.
pub fn event(id: &str, recipient: &str, pool: &str, tags: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "envelope": "bounces@mail.shop.example",
        "recipient": recipient,
        "pool": pool,
        "ips": ["203.0.113.5", "203.0.113.6"],
        "tags": tags,
        "maxdelivertime": "2099-01-01 00:00:00",
        "maxattempts": 5,
        "results": [],
        "mime": format!("From: news@shop.example\r\nTo: {recipient}\r\nSubject: {id}\r\n\r\nHello!"),
    })
}

/// The `id` field of an event value, if it is a JSON object with one.
pub fn id_of(value: Option<&[u8]>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(value?).ok()?;
    v.get("id")?.as_str().map(str::to_owned)
}

/// The rule that fails every 7th event of a [`Feed`] (tags `campaign_X`
/// and `customer_Y`): its output is a result record, every other event's a
/// forward.
pub const FEED_RULES: &str = r#"
[[rule]]
id = "cancel-campaign-x"
code = 550
status = "5.7.1"
description = "Campaign X cancelled by the customer"
tags = ["campaign_X", "customer_Y"]
"#;

/// A [`Feed`]'s counts.
#[derive(Clone)]
pub struct FeedProgress {
    sent: Arc<AtomicUsize>,
    deliveries: Arc<Deliveries>,
}

impl std::fmt::Display for FeedProgress {
    /// Sent, acknowledged and failed so far, and the last delivery error:
    /// printed when a campaign's wait times out, to tell a feed the broker
    /// stopped acknowledging from consumers that stopped consuming.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.deliveries;
        write!(
            f,
            "{} sent, {} acknowledged, {} failed (last error: {})",
            self.sent.load(Ordering::Relaxed),
            d.ok.load(Ordering::Relaxed),
            d.failed.load(Ordering::Relaxed),
            d.last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                .unwrap_or("none")
        )
    }
}

/// Events produced at a steady pace by a background thread.
pub struct Feed {
    handle: Option<std::thread::JoinHandle<usize>>,
    progress: FeedProgress,
}

impl Feed {
    /// Sends `total` events to `topic` over about `duration`, spread over
    /// `partitions`; each forwarded except every 7th (failed by a rule
    /// on the tag `campaign_X`+`customer_Y`, if the test has one).
    pub fn start(
        topic: &str,
        prefix: &str,
        partitions: i32,
        total: usize,
        duration: Duration,
    ) -> Feed {
        Feed::start_with(
            TestProducer::new(topic),
            prefix,
            partitions,
            total,
            duration,
        )
    }

    /// Like [`Feed::start`], with `producer` (and to its topic).
    pub fn start_with(
        producer: TestProducer,
        prefix: &str,
        partitions: i32,
        total: usize,
        duration: Duration,
    ) -> Feed {
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let prefix = prefix.to_owned();
        let deliveries = producer.deliveries.clone();
        let handle = std::thread::spawn(move || {
            let mut producer = producer;
            let started = Instant::now();
            for n in 0..total {
                let due = duration.mul_f64(n as f64 / total as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                let tags: &[&str] = if n.is_multiple_of(7) {
                    &["campaign_X", "customer_Y"]
                } else {
                    &["newsletter"]
                };
                let id = format!("{prefix}-{n}");
                let value = event(&id, &format!("user{n}@example.org"), "dedicated-1", tags);
                let key = format!("rcpt-{}", n % 23);
                let mut input = Input::new(n as i32 % partitions, Some(&key), value.to_string());
                input
                    .headers
                    .push(("trace-id".into(), Some(id.into_bytes())));
                producer.send(&input);
                counter.fetch_add(1, Ordering::Relaxed);
            }
            producer.flush();
            total
        });
        Feed {
            handle: Some(handle),
            progress: FeedProgress { sent, deliveries },
        }
    }

    pub fn sent(&self) -> usize {
        self.progress.sent.load(Ordering::Relaxed)
    }

    /// A handle on the feed's counts that outlives borrows of the feed.
    pub fn progress(&self) -> FeedProgress {
        self.progress.clone()
    }

    /// Waits until at least `n` events are sent.
    pub fn wait_sent(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.sent() < n {
            assert!(Instant::now() < deadline, "feed stalled at {}", self.sent());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the feed to finish: every event acknowledged.
    pub fn join(mut self) -> Fed {
        let sent = self
            .handle
            .take()
            .expect("joined once")
            .join()
            .expect("feed thread");
        Fed {
            sent,
            renewed: self.progress.deliveries.renewed.load(Ordering::Relaxed),
        }
    }
}

/// What a finished [`Feed`] did.
#[derive(Debug, Clone, Copy)]
pub struct Fed {
    /// Events sent (and acknowledged).
    pub sent: usize,
    /// Times its producer was replaced, having been left with no broker
    /// (each can write some events twice; see [`TestProducer`]).
    pub renewed: usize,
}

impl Fed {
    /// The input topic holds every event of the feed: exactly once each,
    /// or at least once if its producer was replaced.
    pub fn assert_in_input(&self, inputs: &BTreeMap<String, Rec>) {
        let ids: std::collections::BTreeSet<String> = inputs
            .values()
            .filter_map(|r| id_of(r.value.as_deref()))
            .collect();
        assert_eq!(
            ids.len(),
            self.sent,
            "every event sent is in the input topic"
        );
        if self.renewed == 0 {
            assert_eq!(
                inputs.len(),
                self.sent,
                "every event sent is in the input topic once"
            );
        } else {
            eprintln!(
                "the feed's producer was replaced {} times (no broker left): {} input records for {} events",
                self.renewed,
                inputs.len(),
                self.sent
            );
        }
    }
}

/// Every input record of `topic`, by `topic/partition/offset`.
pub fn inputs_by_coordinates(topic: &str) -> BTreeMap<String, Rec> {
    let mut reader = Reader::new(&[topic]);
    reader.read_to_end();
    reader
        .records
        .into_iter()
        .map(|r| (r.coordinates(), r))
        .collect()
}

/// Checks that every input has its outputs: each coordinate of `inputs`
/// appears in the `bouncer-input` of at least one record of `outputs`, and
/// no output names an input that does not exist. Returns the number of
/// duplicated (input, topic) pairs.
pub fn assert_no_loss(inputs: &BTreeMap<String, Rec>, outputs: &[Rec]) -> usize {
    let mut seen: HashMap<String, HashMap<&str, usize>> = HashMap::new();
    for r in outputs {
        let input = r.input();
        assert!(
            inputs.contains_key(&input),
            "output {} names an unknown input {input}",
            r.coordinates()
        );
        *seen.entry(input).or_default().entry(&r.topic).or_default() += 1;
    }
    let missing: Vec<&String> = inputs.keys().filter(|c| !seen.contains_key(*c)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} inputs have no output (lost), e.g. {:?}",
        missing.len(),
        inputs.len(),
        &missing[..missing.len().min(10)]
    );
    seen.values()
        .flat_map(|per_topic| per_topic.values())
        .filter(|&&n| n > 1)
        .count()
}
