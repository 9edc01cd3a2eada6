//! `bouncer demo`: the real pipeline end to end on librdkafka's in-process
//! mock cluster, with this repository's rules, generated events, the HTTP
//! endpoints and metrics; then a summary read back from the output topics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::api::Api;
use crate::api::tokens::{self, Tokens};
use crate::config::Config;
use crate::control::{self, ControlState, ControlWriter};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::pipeline::{self, Options, Shared, kafka};
use crate::reload::{ReloadOptions, Reloader, RuleStore};

const PARTITIONS: i32 = 3;
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs the demo; returns the printed summary's counts for tests.
pub fn demo(rules_dir: &Path, events: usize) -> Result<DemoSummary, String> {
    let cluster = MockCluster::new(1).map_err(|e| format!("cannot start the mock cluster: {e}"))?;
    let bootstrap = cluster.bootstrap_servers();
    let vars = [
        ("BOUNCER_KAFKA__BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("BOUNCER_HTTP_LISTEN", "127.0.0.1:0"),
        ("BOUNCER_GROUP", "bouncer-demo"),
        ("BOUNCER_SHUTDOWN_TIMEOUT", "5s"),
    ];
    let mut config = Config::from_parts(
        "",
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
    .map_err(|e| e.to_string())?;
    config.rules_dir = rules_dir.to_path_buf();
    let t = &config.topics;
    for topic in [&t.input, &t.forward, &t.results, &t.retry, &t.dead_letter] {
        cluster
            .create_topic(topic, PARTITIONS, 1)
            .map_err(|e| format!("cannot create {topic}: {e}"))?;
    }
    cluster
        .create_topic(&t.control, 1, 1)
        .map_err(|e| e.to_string())?;

    let store = Arc::new(RuleStore::new());
    let _reloader = Reloader::spawn(
        config.rules_dir.clone(),
        store.clone(),
        ReloadOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    while !store.file_rules_loaded() {
        if let Some(errors) = Some(store.status().errors.clone()).filter(|e| !e.is_empty()) {
            return Err(format!(
                "the rules in {} are invalid:\n{}",
                rules_dir.display(),
                errors.join("\n")
            ));
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("no rules loaded from {}", rules_dir.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The mock cluster has no configuration API: existence checks only.
    kafka::check_topics_once(&config, false).map_err(|e| e.error().to_string())?;

    let first_half = events / 2;
    let mut rng = SplitMix(0x5eed);
    produce_events(&bootstrap, &config.topics.input, &mut rng, 0..first_half)?;

    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _guard = runtime.enter();

    // The REST API, with a token made for this run, writing to the control
    // topic that a control reader applies: the same code as `bouncer run`.
    let control = Arc::new(ControlState::new());
    let _reader = control::spawn_reader(&config, store.clone(), control.clone(), shutdown.clone())?;
    let writer = Arc::new(ControlWriter::new(&config).map_err(|e| e.to_string())?);
    let token = format!(
        "demo{:016x}",
        SplitMix(u64::from(std::process::id())).next()
    );
    let tokens = tokens::parse(&format!("demo:{token}"))?;
    let api = Api {
        store: store.clone(),
        control: control.clone(),
        writer: Some(writer),
        tokens: Arc::new(Tokens::new(Some(tokens))),
        metrics: metrics.clone(),
        max_event_bytes: config.max_event_bytes,
        max_api_rules: config.max_api_rules,
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.http_listen))
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        pipeline: shared.clone(),
        control: control.clone(),
        api: Some(api),
    };
    let stop_http = shutdown.clone();
    runtime.spawn(http::serve_on(listener, state, async move {
        while !stop_http.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }));
    let deadline = Instant::now() + DEADLINE;
    while !control.caught_up.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            return Err("the control topic was never read".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("bouncer demo: {events} events on an in-process Kafka mock cluster ({bootstrap})");
    println!(
        "  rules: {} ({} rules, hash {})",
        rules_dir.display(),
        store.current().len(),
        store.current().hash()
    );
    println!("  http:  http://{addr}/status  http://{addr}/metrics  http://{addr}/v1/errors");

    let pipeline = {
        let (config, store, metrics, shared, shutdown) = (
            config.clone(),
            store.clone(),
            metrics.clone(),
            shared.clone(),
            shutdown.clone(),
        );
        std::thread::spawn(move || {
            let options = Options {
                instance: "bouncer-demo".into(),
            };
            pipeline::run(&config, store, metrics, shared, shutdown, &options)
        })
    };
    let processed = || {
        ["forwarded", "failed", "deferred", "invalid"]
            .iter()
            .map(|o| metrics.events(o))
            .sum::<u64>()
    };
    let wait_processed = |n: usize| {
        while (processed() < n as u64 || shared.status().in_flight > 0) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_processed(first_half);

    // Mid-run, a customer cancels campaign Z: one POST, in force at once.
    let body = r#"{"tag": "campaign_Z", "code": 550, "status": "5.7.1", "description": "Campaign Z cancelled through the API"}"#;
    let (status, answer) = http_request(addr, "POST", "/v1/errors", &token, body)?;
    let id = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    println!(
        "  after {first_half} events: POST /v1/errors {{\"tag\": \"campaign_Z\", \"code\": 550}} -> {status} {id}"
    );
    if status != 201 {
        return Err(format!("the API refused the demo rule: {status} {answer}"));
    }

    produce_events(
        &bootstrap,
        &config.topics.input,
        &mut rng,
        first_half..events,
    )?;
    wait_processed(events);
    shutdown.store(true, Ordering::Release);
    pipeline
        .join()
        .map_err(|_| "the pipeline thread panicked".to_owned())?
        .map_err(|e| e.to_string())?;
    if processed() < events as u64 {
        return Err(format!(
            "only {} of {events} events processed in time",
            processed()
        ));
    }

    let summary = read_outputs(&bootstrap, &config)?;
    summary.print(&metrics);
    // What the output topics hold and what the metrics counted must agree.
    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
    for (outcome, counted) in [
        ("forwarded", summary.forwarded),
        ("failed", total(&summary.failed)),
        ("deferred", total(&summary.deferred)),
        ("invalid", total(&summary.invalid)),
    ] {
        if metrics.events(outcome) != counted {
            return Err(format!(
                "bouncer_events_total{{outcome=\"{outcome}\"}} is {} but the output topics hold {counted}",
                metrics.events(outcome)
            ));
        }
    }
    println!("  the metric totals equal the records in the output topics");
    Ok(summary)
}

/// What the output topics hold after the run.
#[derive(Debug, Default)]
pub struct DemoSummary {
    pub forwarded: u64,
    pub failed: BTreeMap<String, u64>,
    pub deferred: BTreeMap<String, u64>,
    pub retry: u64,
    pub invalid: BTreeMap<String, u64>,
    pub shadow: BTreeMap<String, u64>,
}

impl DemoSummary {
    fn print(&self, metrics: &Metrics) {
        let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let line = |name: &str, count: u64, detail: &BTreeMap<String, u64>| {
            let parts: Vec<String> = detail.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  {name:<10} {count:>7}   {}", parts.join(", "));
        };
        println!();
        println!("  outcome      count   by rule (or reason)");
        line("forwarded", self.forwarded, &BTreeMap::new());
        line("failed", total(&self.failed), &self.failed);
        line("deferred", total(&self.deferred), &self.deferred);
        line("invalid", total(&self.invalid), &self.invalid);
        if !self.shadow.is_empty() {
            line("shadow", total(&self.shadow), &self.shadow);
        }
        println!("  retry topic: {} records (one per deferral)", self.retry);
        println!();
        println!(
            "  metrics: bouncer_events_total forwarded={} failed={} deferred={} invalid={}",
            metrics.events("forwarded"),
            metrics.events("failed"),
            metrics.events("deferred"),
            metrics.events("invalid")
        );
    }
}

fn produce_events(
    bootstrap: &str,
    topic: &str,
    rng: &mut SplitMix,
    ids: std::ops::Range<usize>,
) -> Result<(), String> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    for i in ids {
        let (key, value) = generate_event(rng, i);
        let headers = OwnedHeaders::new().insert(Header {
            key: "source",
            value: Some("demo"),
        });
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| e.to_string())
}

/// A minimal HTTP/1.1 request to the demo's own listener.
fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A small deterministic generator: the demo prints the same summary every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// One realistic MailerQ-style event (and its key), or now and then a
/// malformed one.
fn generate_event(rng: &mut SplitMix, i: usize) -> (String, String) {
    const DOMAINS: &[&str] = &[
        "gmail.com",
        "googlemail.com",
        "hotmail.com",
        "outlook.com",
        "eu.outlook.com",
        "yahoo.com",
        "example.org",
        "bücher.example",
        "x.throwaway.example",
        "mailinator.example",
        "web.example",
        "mail.example.net",
    ];
    const POOLS: &[&str] = &["shared-pool-1", "shared-pool-2", "warmup", "dedicated-7"];
    // Customer Z (suspended by an example rule) sends a small share.
    const SENDERS: &[&str] = &[
        "news.shop.example",
        "news.shop.example",
        "news.shop.example",
        "mail.other.example",
        "mail.other.example",
        "news.shop.example",
        "mail.other.example",
        "news.shop.example",
        "mail.other.example",
        "news.shop.example",
        "mail.other.example",
        "news.shop.example",
        "news.customer-z.example",
        "eu.mail.customer-z.example",
    ];
    const TAGS: &[&str] = &[
        "campaign_X",
        "campaign_Z",
        "weekly",
        "customer_V",
        "customer_W",
    ];
    let key = format!("msg-{i}");
    let roll = rng.next() % 100;
    if roll < 2 {
        let bad = match rng.next() % 4 {
            0 => r#"{"recipient":"no-domain"}"#.to_owned(),
            1 => r#"{"recipient":"a@example.com","ips":"192.0.2.1"}"#.to_owned(),
            2 => "[1,2,3]".to_owned(),
            _ => r#"{"recipient":"truncated@example.com","#.to_owned(),
        };
        return (key, bad);
    }
    let domain = rng.pick(DOMAINS);
    let pool = rng.pick(POOLS);
    let ip = if pool == "warmup" {
        format!("192.0.2.{}", rng.next() % 16)
    } else {
        format!("198.51.100.{}", rng.next() % 250)
    };
    let mut tags = vec![rng.pick(TAGS)];
    if rng.next().is_multiple_of(3) {
        tags.push(rng.pick(TAGS));
    }
    if rng.next().is_multiple_of(25) {
        tags = vec!["campaign_X", "customer_Y"];
    }
    let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
    let value = format!(
        r#"{{"id":{i},"recipient":"user{n}@{domain}","envelope":"bounces@{sender}","pool":"{pool}","ips":["{ip}"],"tags":[{tags}],"maxattempts":5,"results":[],"mime":"From: news@{sender}\r\nSubject: Offer {i}\r\n\r\nHello"}}"#,
        n = rng.next() % 10_000,
        sender = rng.pick(SENDERS),
        tags = tags.join(","),
    );
    (key, value)
}

fn read_outputs(bootstrap: &str, config: &Config) -> Result<DemoSummary, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bouncer-demo-reader")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let t = &config.topics;
    let mut tpl = TopicPartitionList::new();
    let mut expected = 0i64;
    for topic in [&t.forward, &t.results, &t.retry, &t.dead_letter] {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            expected += high - low;
        }
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut summary = DemoSummary::default();
    let mut seen = 0i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen < expected && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|e| e.to_string())?;
        seen += 1;
        let header = |name: &str| -> Option<String> {
            message.headers().and_then(|h| {
                h.iter()
                    .filter(|h| h.key == name)
                    .last()
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            })
        };
        let topic = message.topic();
        if topic == t.forward {
            summary.forwarded += 1;
            for id in header("bouncer-shadow")
                .iter()
                .flat_map(|s| s.split(',').map(str::to_owned).collect::<Vec<_>>())
            {
                *summary.shadow.entry(id).or_default() += 1;
            }
        } else if topic == t.results {
            let rule = header("bouncer-rule").unwrap_or_default();
            match header("bouncer-outcome").as_deref() {
                Some("deferred") => *summary.deferred.entry(rule).or_default() += 1,
                _ => *summary.failed.entry(rule).or_default() += 1,
            }
        } else if topic == t.retry {
            summary.retry += 1;
        } else {
            let error = header("bouncer-error").unwrap_or_default();
            let reason = error.split(": ").next().unwrap_or_default().to_owned();
            *summary.invalid.entry(reason).or_default() += 1;
        }
    }
    if seen < expected {
        return Err(format!("read {seen} of {expected} output records"));
    }
    Ok(summary)
}
