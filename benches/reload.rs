//! Reload cost and reload-under-load (issue #2: "a reload of 100,000 rules
//! never blocks deciding threads").
//!
//! First, what one reload of 100,000 rules costs on the reloading thread:
//! parsing and validating the TOML (`parse_files`), indexing (`RuleSet::new`)
//! and a whole `RuleStore::set_file_rules`. Then one thread decides events in
//! a loop through the store, timing every decision, while another thread
//! publishes a fresh 100,000-rule set back to back; phases with and without
//! that reloader alternate in the same run, so the quantiles compare like
//! with like. Plain `main` (harness = false): `cargo bench --bench reload`.
//! Set `RELOAD_BENCH_SECS` to change the length of each phase (default 2).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event};
use bouncer::reload::RuleStore;
use bouncer::rules::{Rule, RuleSet};

const RULES: usize = 100_000;
const EVENTS: usize = 4_096;
const ROUNDS: usize = 3;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// How deciding threads reach the live set.
#[derive(Clone, Copy, PartialEq)]
enum Reader {
    /// `store.live().load()` per decision: a borrowed guard, no refcount.
    Guard,
    /// `store.current()` per decision: an `Arc` clone and drop.
    Arc,
}

impl Reader {
    fn name(self) -> &'static str {
        match self {
            Reader::Guard => "live().load()",
            Reader::Arc => "current()",
        }
    }
}

/// The calling thread's scheduling counters from procfs (Linux): whether
/// it ever blocked (a voluntary switch) and how long it waited for a CPU.
#[derive(Clone, Copy, Default)]
struct Sched {
    voluntary: u64,
    involuntary: u64,
    on_cpu_ns: u64,
    runqueue_ns: u64,
}

impl Sched {
    fn now() -> Option<Sched> {
        let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        let mut times = schedstat.split_whitespace().map(|v| v.parse().ok());
        Some(Sched {
            voluntary: field("voluntary_ctxt_switches:")?,
            involuntary: field("nonvoluntary_ctxt_switches:")?,
            on_cpu_ns: times.next()??,
            runqueue_ns: times.next()??,
        })
    }

    fn since(self, start: Sched) -> Sched {
        Sched {
            voluntary: self.voluntary - start.voluntary,
            involuntary: self.involuntary - start.involuntary,
            on_cpu_ns: self.on_cpu_ns - start.on_cpu_ns,
            runqueue_ns: self.runqueue_ns - start.runqueue_ns,
        }
    }

    fn add(&mut self, other: Sched) {
        self.voluntary += other.voluntary;
        self.involuntary += other.involuntary;
        self.on_cpu_ns += other.on_cpu_ns;
        self.runqueue_ns += other.runqueue_ns;
    }
}

#[derive(Default)]
struct Phase {
    /// Nanoseconds per decision, timer included.
    latencies: Vec<u32>,
    decisions: u64,
    elapsed: Duration,
    swaps: u64,
    /// How many different sets the decider saw.
    sets_seen: u64,
    /// The deciding thread's scheduling during the phase.
    sched: Option<Sched>,
}

fn run_phase(
    store: &RuleStore,
    rules: &[Rule],
    events: &[Event<'_>],
    reader: Reader,
    swaps: bool,
    length: Duration,
) -> Phase {
    let now = common::now();
    let stop = AtomicBool::new(false);
    let mut phase = Phase {
        latencies: Vec::with_capacity(16_000_000),
        ..Phase::default()
    };
    thread::scope(|s| {
        let reloader = swaps.then(|| {
            s.spawn(|| {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    store.set_file_rules(rules.to_vec());
                    n += 1;
                }
                n
            })
        });
        let sched = Sched::now();
        let start = Instant::now();
        let mut last: *const RuleSet = std::ptr::null();
        'outer: loop {
            for event in events {
                let t0 = Instant::now();
                let ptr = match reader {
                    Reader::Guard => {
                        let set = store.live().load();
                        black_box(set.decide(event, now).outcome);
                        Arc::as_ptr(&set)
                    }
                    Reader::Arc => {
                        let set = store.current();
                        black_box(set.decide(event, now).outcome);
                        Arc::as_ptr(&set)
                    }
                };
                let nanos = t0.elapsed().as_nanos();
                phase
                    .latencies
                    .push(u32::try_from(nanos).unwrap_or(u32::MAX));
                if ptr != last {
                    phase.sets_seen += 1;
                    last = ptr;
                }
            }
            phase.decisions += events.len() as u64;
            if start.elapsed() >= length {
                break 'outer;
            }
        }
        phase.elapsed = start.elapsed();
        phase.sched = sched.zip(Sched::now()).map(|(start, end)| end.since(start));
        stop.store(true, Ordering::Relaxed);
        phase.swaps = reloader.map_or(0, |h| h.join().expect("reloader"));
    });
    phase
}

fn merge(phases: Vec<Phase>) -> Phase {
    let mut out = Phase {
        sched: Some(Sched::default()),
        ..Phase::default()
    };
    for p in phases {
        match (&mut out.sched, p.sched) {
            (Some(total), Some(s)) => total.add(s),
            _ => out.sched = None,
        }
        out.latencies.extend_from_slice(&p.latencies);
        out.decisions += p.decisions;
        out.elapsed += p.elapsed;
        out.swaps += p.swaps;
        out.sets_seen += p.sets_seen;
    }
    out.latencies.sort_unstable();
    out
}

fn quantile(sorted: &[u32], q: f64) -> u32 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let length = Duration::from_secs_f64(
        std::env::var("RELOAD_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    );
    let specs = common::rule_specs(RULES, 0x5eed_0000 + RULES as u64);
    let files = common::rule_files(&specs, 1_000);
    let toml_bytes: usize = files.files.iter().map(|(_, t)| t.len()).sum();

    // What one reload costs the reloading thread.
    let parse = median(
        (0..5)
            .map(|_| time(|| black_box(common::load(&files))).0)
            .collect(),
    );
    let rules = common::load(&files);
    let build = median(
        (0..5)
            .map(|_| {
                let input = rules.clone();
                time(|| black_box(RuleSet::new(input))).0
            })
            .collect(),
    );
    let store = RuleStore::new();
    store.set_file_rules(rules.clone());
    let publish = median(
        (0..5)
            .map(|_| {
                let input = rules.clone();
                time(|| store.set_file_rules(input)).0
            })
            .collect(),
    );
    println!(
        "reload cost, {RULES} rules in {} files ({:.1} MB of TOML), median of 5:",
        files.files.len(),
        toml_bytes as f64 / 1e6
    );
    println!("| step | time |\n|---|---|");
    println!("| parse_files (TOML parse + validate) | {} |", ms(parse));
    println!("| RuleSet::new (sort, hash, index) | {} |", ms(build));
    println!(
        "| RuleStore::set_file_rules (merge, RuleSet::new, swap, free old set) | {} |",
        ms(publish)
    );

    let json = common::events(&specs, &store.current(), EVENTS, 0xe7e7_0000 + RULES as u64);
    let events: Vec<Event<'_>> = json
        .iter()
        .map(|j| Event::parse(j.as_bytes(), DEFAULT_MAX_EVENT_BYTES).expect("valid event"))
        .collect();

    // What the timer itself adds to every figure below.
    let mut overhead: Vec<u32> = (0..1_000_000)
        .map(|_| {
            let t0 = Instant::now();
            t0.elapsed().as_nanos() as u32
        })
        .collect();
    overhead.sort_unstable();

    println!(
        "\ndecision latency, {RULES} rules, {ROUNDS} alternating rounds of {:.1} s per phase \
         (timer overhead p50 {} ns, p99 {} ns):",
        length.as_secs_f64(),
        quantile(&overhead, 0.5),
        quantile(&overhead, 0.99)
    );
    println!(
        "| reader | reloader | decisions/s | p50 ns | p99 ns | p99.9 ns | p99.99 ns | max µs | >1 ms | \
         decider on CPU | waited for CPU | blocked (voluntary switches) | preempted | swaps | sets seen |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for reader in [Reader::Guard, Reader::Arc] {
        let mut quiet = Vec::new();
        let mut loaded = Vec::new();
        for _ in 0..ROUNDS {
            quiet.push(run_phase(&store, &rules, &events, reader, false, length));
            loaded.push(run_phase(&store, &rules, &events, reader, true, length));
        }
        for (label, phases) in [("none", quiet), ("back-to-back swaps", loaded)] {
            let p = merge(phases);
            let l = &p.latencies;
            let over = |ns: u32| l.len() - l.partition_point(|&x| x <= ns);
            let wall = p.elapsed.as_nanos() as f64;
            let sched = p.sched.map_or_else(
                || "- | - | - | -".to_owned(),
                |s| {
                    format!(
                        "{:.1}% | {:.1}% | {} | {}",
                        100.0 * s.on_cpu_ns as f64 / wall,
                        100.0 * s.runqueue_ns as f64 / wall,
                        s.voluntary,
                        s.involuntary
                    )
                },
            );
            println!(
                "| {} | {label} | {:.2} M | {} | {} | {} | {} | {:.0} | {} | {sched} | {} | {} |",
                reader.name(),
                p.decisions as f64 / p.elapsed.as_secs_f64() / 1e6,
                quantile(l, 0.5),
                quantile(l, 0.99),
                quantile(l, 0.999),
                quantile(l, 0.9999),
                f64::from(*l.last().expect("samples")) / 1e3,
                over(1_000_000),
                p.swaps,
                p.sets_seen,
            );
        }
    }
}
