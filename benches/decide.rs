//! The decision's cost at 10, 1,000 and 100,000 rules (issue #2), beside
//! two baselines measured in the same run: parsing the event (the per-event
//! cost every decision pays first) and a linear scan that calls
//! `Rule::matches` on every rule (what the index saves). The parse has its
//! own floor beside it (checking the text is UTF-8 and JSON, reading
//! nothing), and `outputs` measures the records of a decided event (issue
//! #8). Method and figures: BENCHMARKS.md; `scripts/bench.sh` runs it.

mod common;

use std::hint::black_box;

use bouncer::config::Partitioning;
use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event, Layout};
use bouncer::logging::{self, LogFormat};
use bouncer::pipeline;
use bouncer::pipeline::output::{self, Input, Meta};
use bouncer::rules::{Mode, Outcome, Rule};
use chrono::{DateTime, Utc};
use common::Fixture;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tracing_appender::non_blocking::NonBlockingBuilder;

const SIZES: [usize; 3] = [10, 1_000, 100_000];
/// Distinct events per fixture: each iteration takes the next `BATCH` of
/// them, so the caches see 4,096 different events, not the same few.
const EVENTS: usize = 4_096;
const BATCH: usize = 1_024;
/// Events per iteration of the linear scan, which costs about 10 ns per rule.
fn linear_batch(rules: usize) -> usize {
    match rules {
        0..=100 => BATCH,
        101..=10_000 => 128,
        _ => 8,
    }
}

/// The next batch of `items`, round and round.
fn batches<'a, T>(items: &'a [T]) -> impl FnMut() -> &'a [T] {
    let mut start = 0;
    move || {
        let batch = &items[start..start + BATCH];
        start = (start + BATCH) % items.len();
        batch
    }
}

fn parse(json: &str) -> Event<'_> {
    Event::parse(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES).expect("generated events are valid")
}

/// A consumed record carrying `json`, as the pipeline hands it to `output`.
fn input(json: &str) -> Input<'_> {
    Input {
        topic: "mailerq-outgoing",
        partition: 3,
        offset: 123_456_789,
        key: Some(b"3f0c1a9e"),
        value: Some(json.as_bytes()),
        headers: Default::default(),
        timestamp: None,
    }
}

/// The naive decision: every rule, in precedence order, checked in full.
/// Same answer as `RuleSet::decide` (checked below), none of its index.
fn linear_decide<'s>(
    rules: &'s [Rule],
    event: &Event<'_>,
    now: DateTime<Utc>,
) -> (Option<&'s Rule>, Vec<&'s Rule>) {
    let mut winner = None;
    let mut matched = Vec::new();
    for rule in rules {
        if rule.is_active(now) && rule.matches(event) {
            if winner.is_none() && rule.mode == Mode::Enforce {
                winner = Some(rule);
            }
            matched.push(rule);
        }
    }
    (winner, matched)
}

/// Checks the index against the linear scan on `sample` events, and prints
/// what the events look like, so a figure can be read against its workload.
fn describe(f: &Fixture, events: &[Event<'_>], now: DateTime<Utc>) {
    let set = &f.set;
    let ids = |rules: &[&Rule]| rules.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let sample = if f.size >= 100_000 { 256 } else { events.len() };
    for event in &events[..sample] {
        let fast = set.decide(event, now);
        let (winner, matched) = linear_decide(set.rules(), event, now);
        assert_eq!(fast.rule.map(|r| &r.id), winner.map(|r| &r.id));
        assert_eq!(ids(&fast.matched), ids(&matched));
    }
    let (mut any, mut stopped) = (0, 0);
    for event in events {
        let d = set.decide(event, now);
        any += usize::from(!d.matched.is_empty());
        stopped += usize::from(d.rule.is_some());
    }
    let bytes: usize = f.events.iter().map(String::len).sum();
    eprintln!(
        "fixture rules={} events={} mean_event_bytes={} matching_any_rule={:.1}% stopped={:.1}% \
         (index = linear scan on {sample} events)",
        f.size,
        events.len(),
        bytes / f.events.len(),
        100.0 * any as f64 / events.len() as f64,
        100.0 * stopped as f64 / events.len() as f64,
    );
}

fn benches(c: &mut Criterion) {
    let now = common::now();
    let fixtures: Vec<Fixture> = SIZES.iter().map(|&n| Fixture::new(n, EVENTS)).collect();

    let mut decide = c.benchmark_group("decide");
    decide
        .sample_size(50)
        .throughput(Throughput::Elements(BATCH as u64));
    for f in &fixtures {
        let events: Vec<Event<'_>> = f.events.iter().map(|j| parse(j)).collect();
        describe(f, &events, now);
        decide.bench_function(BenchmarkId::from_parameter(f.size), |b| {
            let mut next = batches(&events);
            b.iter(|| {
                for event in next() {
                    black_box(f.set.decide(black_box(event), now));
                }
            })
        });
    }
    decide.finish();

    // Parsing does not depend on the rules: one figure, on the largest
    // fixture's events.
    let mut parse_only = c.benchmark_group("parse");
    parse_only
        .sample_size(50)
        .throughput(Throughput::Elements(BATCH as u64));
    let largest = fixtures.last().expect("fixtures");
    parse_only.bench_function("event", |b| {
        let mut next = batches(&largest.events);
        b.iter(|| {
            for json in next() {
                black_box(parse(black_box(json)));
            }
        })
    });
    // Its floor: the same checks of the bytes as `Event::parse` (UTF-8,
    // then serde_json reading the JSON), keeping nothing.
    parse_only.bench_function("json_only", |b| {
        let mut next = batches(&largest.events);
        b.iter(|| {
            for json in next() {
                let text = simdutf8::compat::from_utf8(black_box(json).as_bytes());
                let text = text.expect("generated events are UTF-8");
                let checked = serde_json::from_str::<serde::de::IgnoredAny>(text);
                black_box(checked.expect("generated events are JSON"));
            }
        })
    });
    parse_only.finish();

    // The records of a decided event (SPEC §3): a forward borrows the
    // input; a stopped delivery's are the event rewritten.
    let mut records = c.benchmark_group("outputs");
    records
        .sample_size(50)
        .throughput(Throughput::Elements(BATCH as u64));
    let meta = Meta {
        instance: "bench-0",
        now,
        forward_partitioning: Partitioning::Same,
    };
    let events = &largest.events;
    let rule = &largest.rules[0];
    records.bench_function("forward", |b| {
        let mut next = batches(events);
        b.iter(|| {
            for json in next() {
                black_box(output::forward(&input(black_box(json)), &[], &meta));
            }
        })
    });
    // Written at the offsets the event's parse found (as the pipeline does),
    // and, the baseline, reading the event again.
    let laid_out: Vec<(&str, Option<Layout>)> = events
        .iter()
        .map(|json| (json.as_str(), parse(json).layout))
        .collect();
    for (name, outcome) in [("failed", Outcome::Failed), ("deferred", Outcome::Deferred)] {
        for reread in [false, true] {
            let name = if reread {
                format!("{name}_reread")
            } else {
                name.to_owned()
            };
            records.bench_function(name, |b| {
                let mut next = batches(&laid_out);
                b.iter(|| {
                    for (json, layout) in next() {
                        let input = input(black_box(json));
                        let layout = layout.as_ref().filter(|_| !reread);
                        let records = output::stopped(&input, layout, rule, outcome, &meta);
                        black_box(records.expect("generated events are objects"));
                    }
                })
            });
        }
    }
    // The metrics of a stopped delivery: its outcome, the winning rule's
    // forced-error series and its match series, over 2,048 rules.
    let metrics = bouncer::metrics::Metrics::new();
    let winners: Vec<&Rule> = largest.rules.iter().take(2 * BATCH).collect();
    records.bench_function("metrics_stopped", |b| {
        let mut next = batches(&winners);
        b.iter(|| {
            for &rule in next() {
                metrics.decided(Outcome::Failed, Some(rule), &[rule]);
            }
        })
    });
    records.finish();

    // The log line of a stopped delivery (SPEC §3, `log_outcomes = "each"`)
    // in each format, as the pipeline thread pays for it: formatting and
    // handing the line to the log thread, which writes it to a sink here.
    let mut log_lines = c.benchmark_group("log_line");
    log_lines
        .sample_size(50)
        .throughput(Throughput::Elements(BATCH as u64));
    let parsed: Vec<Event<'_>> = events.iter().map(|json| parse(json)).collect();
    for (name, format) in [("text", LogFormat::Text), ("json", LogFormat::Json)] {
        let (writer, _guard) = NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::sink());
        let filter = tracing_subscriber::EnvFilter::new("info");
        let subscriber = logging::subscriber(format, filter, writer, false);
        tracing::subscriber::with_default(subscriber, || {
            log_lines.bench_function(name, |b| {
                let mut next = batches(&parsed);
                let input = input(events[0].as_str());
                b.iter(|| {
                    for event in next() {
                        pipeline::log_stopped(Outcome::Failed, rule, black_box(event), &input);
                    }
                })
            });
        });
    }
    log_lines.finish();

    let mut parse_decide = c.benchmark_group("parse_decide");
    parse_decide
        .sample_size(50)
        .throughput(Throughput::Elements(BATCH as u64));
    for f in &fixtures {
        parse_decide.bench_function(BenchmarkId::from_parameter(f.size), |b| {
            let mut next = batches(&f.events);
            b.iter(|| {
                for json in next() {
                    let event = parse(black_box(json));
                    black_box(f.set.decide(&event, now).outcome);
                }
            })
        });
    }
    parse_decide.finish();

    let mut linear = c.benchmark_group("linear_scan");
    for f in &fixtures {
        let events: Vec<Event<'_>> = f.events.iter().map(|j| parse(j)).collect();
        let events = &events[..linear_batch(f.size)];
        linear.sample_size(if f.size >= 100_000 { 10 } else { 50 });
        linear.throughput(Throughput::Elements(events.len() as u64));
        linear.bench_with_input(BenchmarkId::from_parameter(f.size), events, |b, events| {
            b.iter(|| {
                for event in events {
                    black_box(linear_decide(f.set.rules(), black_box(event), now));
                }
            })
        });
    }
    linear.finish();
}

criterion_group!(decide, benches);
criterion_main!(decide);
