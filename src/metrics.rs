//! Every metric bouncer exports, defined in one place (SPEC §8).
//!
//! Hot-path counters are resolved to their label values once and updated
//! with one atomic add; per-rule series are created on first match and
//! removed when the rule leaves the rule set.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reload::RuleStore;
use crate::rules::{Mode, Outcome, Rule, RuleSet};

pub struct Metrics {
    pub registry: Registry,
    events: IntCounterVec,
    events_forwarded: IntCounter,
    events_failed: IntCounter,
    events_deferred: IntCounter,
    events_invalid: IntCounter,
    forced: IntCounterVec,
    rule_matches: IntCounterVec,
    rules_active: IntGaugeVec,
    reload_total: IntCounterVec,
    reload_last_successful: IntGauge,
    rules_info: IntGaugeVec,
    pub processing_duration: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub produce_errors: IntCounterVec,
    pub in_flight: IntGauge,
    pub paused_partitions: IntGauge,
    pub rebalances: IntCounterVec,
    pub commits: IntCounterVec,
    /// Exactly once: transactions by result (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Exactly once: how long committing a transaction takes.
    pub transaction_commit_duration: Histogram,
    /// Pipeline restarts with new Kafka clients, by reason.
    pub pipeline_restarts: IntCounterVec,
    pub api_requests: IntCounterVec,
    control_rejected: IntCounter,
    reload_last_attempt: Gauge,
    reload_last_success: Gauge,
    log_dropped: IntCounter,
    pub stalled: IntGauge,
    pub kafka_rtt: GaugeVec,
    pub kafka_queue: IntGaugeVec,
    /// Per-rule series allowed before further rules count as `(other)`.
    max_rule_series: usize,
    state: Mutex<ExportState>,
}

/// What the scrape-time synchronisation remembers between scrapes.
#[derive(Default)]
struct ExportState {
    reloads_exported: (u64, u64),
    control_rejected_exported: u64,
    log_dropped_exported: u64,
    hash: String,
    /// Label sets of per-rule series created so far: (rule, code, outcome)
    /// for `bouncer_forced_total`, (rule, mode) for the matches.
    forced_series: HashSet<(String, String, String)>,
    /// Rule ids that have series of their own (at most the cap).
    rule_names: HashSet<String>,
    match_series: HashSet<(String, String)>,
    /// Matches of every rule that matched on this instance, enforce and
    /// shadow together, whether or not it has series of its own: the API's
    /// `matches_this_instance`. An id's entry goes when a new rule set no
    /// longer holds it.
    matches: HashMap<Box<str>, u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The label under which rules beyond the series cap are counted: not a
/// valid rule id (SPEC §2 allows `[A-Za-z0-9._-]`), so it never names one.
pub const OTHER_RULE: &str = "(other)";

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let metric = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::with_rule_series_cap(1_000)
    }

    pub fn with_rule_series_cap(max_rule_series: usize) -> Self {
        let registry = Registry::new();
        let events = counter_vec(
            &registry,
            "bouncer_events_total",
            "Events processed, by outcome.",
            &["outcome"],
        );
        let processing_duration = Histogram::with_opts(
            HistogramOpts::new(
                "bouncer_processing_duration_seconds",
                "Time from consuming an event to the acknowledgement of all its outputs.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(processing_duration.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let rebalances = counter_vec(
            &registry,
            "bouncer_rebalances_total",
            "Partition rebalances seen.",
            &["kind"],
        );
        let commits = counter_vec(
            &registry,
            "bouncer_commits_total",
            "Offset commits, by result.",
            &["result"],
        );
        // Series with fixed label values start at 0: one born at 1 shows no
        // increase() or rate(), so its first occurrence would never show.
        for kind in ["assign", "revoke"] {
            rebalances.with_label_values(&[kind]);
        }
        for result in ["success", "failure"] {
            commits.with_label_values(&[result]);
        }
        let transactions = counter_vec(
            &registry,
            "bouncer_transactions_total",
            "Exactly once: transactions of outputs and offsets, by result.",
            &["result"],
        );
        for result in ["committed", "aborted"] {
            transactions.with_label_values(&[result]);
        }
        let transaction_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "bouncer_transaction_commit_duration_seconds",
                "Exactly once: time to send the offsets and commit a transaction.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(transaction_commit_duration.clone()))
            .expect("unique metric");
        let pipeline_restarts = counter_vec(
            &registry,
            "bouncer_pipeline_restarts_total",
            "Restarts of the pipeline with new Kafka clients after a fatal error, by reason.",
            &["reason"],
        );
        for reason in crate::pipeline::RestartReason::ALL {
            pipeline_restarts.with_label_values(&[reason.as_str()]);
        }
        Metrics {
            events_forwarded: events.with_label_values(&["forwarded"]),
            events_failed: events.with_label_values(&["failed"]),
            events_deferred: events.with_label_values(&["deferred"]),
            events_invalid: events.with_label_values(&["invalid"]),
            events,
            forced: counter_vec(
                &registry,
                "bouncer_forced_total",
                "Deliveries stopped, by winning rule, code and outcome.",
                &["rule", "code", "outcome"],
            ),
            rule_matches: counter_vec(
                &registry,
                "bouncer_rule_matches_total",
                "Matches of every rule, enforce and shadow.",
                &["rule", "mode"],
            ),
            rules_active: gauge_vec(
                &registry,
                "bouncer_rules_active",
                "Rules in force, by source.",
                &["source"],
            ),
            reload_total: counter_vec(
                &registry,
                "bouncer_rules_reload_total",
                "Rule file reload attempts, by result.",
                &["result"],
            ),
            reload_last_successful: gauge(
                &registry,
                "bouncer_rules_last_reload_successful",
                "1 if the last rule file reload succeeded, else 0.",
            ),
            rules_info: gauge_vec(
                &registry,
                "bouncer_rules_info",
                "The rule set in force (value 1).",
                &["hash"],
            ),
            processing_duration,
            consumer_lag: gauge_vec(
                &registry,
                "bouncer_consumer_lag",
                "End offset minus the next offset to process, per assigned partition.",
                &["partition"],
            ),
            produce_errors: counter_vec(
                &registry,
                "bouncer_produce_errors_total",
                "Records whose production failed, by destination topic and kind.",
                &["topic", "kind"],
            ),
            in_flight: gauge(
                &registry,
                "bouncer_in_flight_events",
                "Events consumed and not yet fully acknowledged.",
            ),
            paused_partitions: gauge(
                &registry,
                "bouncer_paused_partitions",
                "Input partitions paused for backpressure or errors.",
            ),
            rebalances,
            commits,
            transactions,
            transaction_commit_duration,
            pipeline_restarts,
            api_requests: counter_vec(
                &registry,
                "bouncer_api_requests_total",
                "HTTP requests, by route, method and status.",
                &["route", "method", "status"],
            ),
            control_rejected: counter(
                &registry,
                "bouncer_control_records_rejected_total",
                "Control-topic records skipped as invalid or of an unknown version.",
            ),
            reload_last_attempt: float_gauge(
                &registry,
                "bouncer_rules_last_reload_timestamp_seconds",
                "Unix time of the last rule file reload attempt.",
            ),
            reload_last_success: float_gauge(
                &registry,
                "bouncer_rules_last_reload_success_timestamp_seconds",
                "Unix time of the last successful rule file reload.",
            ),
            log_dropped: counter(
                &registry,
                "bouncer_log_lines_dropped_total",
                "Log lines dropped because the log writer could not keep up.",
            ),
            stalled: gauge(
                &registry,
                "bouncer_consumer_stalled",
                "1 when there is lag and nothing has been consumed for stall_after.",
            ),
            kafka_rtt: float_gauge_vec(
                &registry,
                "bouncer_kafka_broker_rtt_seconds",
                "Average broker round-trip time, from librdkafka statistics.",
                &["client", "broker"],
            ),
            kafka_queue: gauge_vec(
                &registry,
                "bouncer_kafka_queue_messages",
                "Messages in librdkafka's queues: the producer's outgoing queue and the consumer's fetch queue.",
                &["client"],
            ),
            max_rule_series,
            state: Mutex::new(ExportState::default()),
            registry,
        }
    }

    /// Counts one decided event: its outcome, its winner, every match.
    pub fn decided(&self, outcome: Outcome, winner: Option<&Rule>, matched: &[&Rule]) {
        match outcome {
            Outcome::Forwarded => self.events_forwarded.inc(),
            Outcome::Failed => self.events_failed.inc(),
            Outcome::Deferred => self.events_deferred.inc(),
        }
        if matched.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rule) = winner {
            let name = state.rule_label(&rule.id, self.max_rule_series);
            let key = (name, rule.code.to_string(), outcome.as_str().to_owned());
            self.forced
                .with_label_values(&[&key.0, &key.1, &key.2])
                .inc();
            state.forced_series.insert(key);
        }
        for rule in matched {
            match state.matches.get_mut(rule.id.as_str()) {
                Some(count) => *count += 1,
                None => {
                    state.matches.insert(rule.id.as_str().into(), 1);
                }
            }
            let mode = match rule.mode {
                Mode::Enforce => "enforce",
                Mode::Shadow => "shadow",
            };
            let name = state.rule_label(&rule.id, self.max_rule_series);
            self.rule_matches.with_label_values(&[&name, mode]).inc();
            state.match_series.insert((name, mode.to_owned()));
        }
    }

    pub fn invalid(&self) {
        self.events_invalid.inc();
    }

    /// Brings rule and reload series up to date with the store: called at
    /// scrape time, so the hot path never pays for it.
    pub fn sync_rules(&self, store: &RuleStore) {
        let set = store.current();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (files, api) = set.counts();
        self.rules_active
            .with_label_values(&["file"])
            .set(files as i64);
        self.rules_active
            .with_label_values(&["api"])
            .set(api as i64);
        let (ok, failed) = store.reload_counts();
        let (ok_before, failed_before) = state.reloads_exported;
        self.reload_total
            .with_label_values(&["success"])
            .inc_by(ok - ok_before);
        self.reload_total
            .with_label_values(&["failure"])
            .inc_by(failed - failed_before);
        state.reloads_exported = (ok, failed);
        let status = store.status();
        if let Some(t) = status.last_attempt {
            self.reload_last_attempt
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
        if let Some(t) = status.last_success {
            self.reload_last_success
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
        let dropped = crate::logging::dropped_lines();
        self.log_dropped
            .inc_by(dropped.saturating_sub(state.log_dropped_exported));
        state.log_dropped_exported = state.log_dropped_exported.max(dropped);
        self.reload_last_successful
            .set(i64::from(status.ok || status.last_attempt.is_none()));
        if state.hash != set.hash() {
            // Once per rule set, not per scrape: at 100,000 matched rules
            // this walk takes milliseconds, and the pipeline waits for the
            // lock to count a match.
            state.matches.retain(|id, _| set.get(id).is_some());
            if !state.hash.is_empty() {
                let _ = self.rules_info.remove_label_values(&[&state.hash]);
            }
            self.rules_info.with_label_values(&[set.hash()]).set(1);
            state.hash = set.hash().to_owned();
        }
        remove_gone_rules(&mut state, &set, &self.forced, &self.rule_matches);
    }

    /// The librdkafka statistics that matter to an operator: broker
    /// round-trip times and the client's queue depth.
    pub fn client_statistics(&self, client: &str, statistics: &rdkafka::statistics::Statistics) {
        for broker in statistics.brokers.values() {
            if let Some(rtt) = &broker.rtt
                && broker.nodeid >= 0
            {
                self.kafka_rtt
                    .with_label_values(&[client, &broker.nodeid.to_string()])
                    .set(rtt.avg as f64 / 1_000_000.0);
            }
        }
        let queued = match client {
            "producer" => statistics.msg_cnt as i64,
            _ => statistics
                .topics
                .values()
                .flat_map(|t| t.partitions.values())
                .filter(|p| p.partition >= 0)
                .map(|p| p.fetchq_cnt)
                .sum(),
        };
        self.kafka_queue.with_label_values(&[client]).set(queued);
    }

    /// Brings the control-topic counters up to date (at scrape time).
    pub fn sync_control(&self, rejected_total: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.control_rejected
            .inc_by(rejected_total.saturating_sub(state.control_rejected_exported));
        state.control_rejected_exported = state.control_rejected_exported.max(rejected_total);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, store: &RuleStore) -> String {
        self.sync_rules(store);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("exposition is UTF-8")
    }

    /// Matches of a rule (enforce or shadow) on this instance since it
    /// joined the rule set, including those of a rule beyond the series cap.
    pub fn matches_of(&self, rule: &str) -> u64 {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.matches.get(rule).copied().unwrap_or(0)
    }

    /// The current value of `bouncer_events_total{outcome}`.
    pub fn events(&self, outcome: &str) -> u64 {
        self.events.with_label_values(&[outcome]).get()
    }
}

impl ExportState {
    /// The `rule` label for a rule id: the id itself while under the cap (or
    /// already exported), else `(other)`, so label values stay bounded.
    fn rule_label(&mut self, id: &str, cap: usize) -> String {
        if self.rule_names.contains(id) {
            id.to_owned()
        } else if self.rule_names.len() < cap {
            self.rule_names.insert(id.to_owned());
            id.to_owned()
        } else {
            OTHER_RULE.to_owned()
        }
    }
}

fn remove_gone_rules(
    state: &mut ExportState,
    set: &RuleSet,
    forced: &IntCounterVec,
    matches: &IntCounterVec,
) {
    state.rule_names.retain(|rule| set.get(rule).is_some());
    state.forced_series.retain(|(rule, code, outcome)| {
        let keep = rule == OTHER_RULE || set.get(rule).is_some();
        if !keep {
            let _ = forced.remove_label_values(&[rule, code, outcome]);
        }
        keep
    });
    state.match_series.retain(|(rule, mode)| {
        let keep = rule == OTHER_RULE || set.get(rule).is_some();
        if !keep {
            let _ = matches.remove_label_values(&[rule, mode]);
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, code: u16, mode: Mode) -> Rule {
        Rule::for_test(id, code, mode)
    }

    fn store_with(rules: &[&Rule]) -> RuleStore {
        let store = RuleStore::new();
        store.set_api_rules(rules.iter().map(|r| (*r).clone()).collect());
        store
    }

    /// (labels, value) of every series of `name` in the exposition.
    fn series(metrics: &Metrics, store: &RuleStore, name: &str) -> Vec<(String, u64)> {
        let text = metrics.render(store);
        let mut found: Vec<(String, u64)> = text
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
            .filter_map(|rest| {
                let (labels, value) = rest.split_once("} ")?;
                Some((labels.to_owned(), value.parse().ok()?))
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn stopped_deliveries_count_per_rule_code_outcome_and_matches_per_mode() {
        let metrics = Metrics::with_rule_series_cap(10);
        let (a, shadow) = (rule("a", 550, Mode::Enforce), rule("s", 550, Mode::Shadow));
        let store = store_with(&[&a, &shadow]);
        for _ in 0..3 {
            metrics.decided(Outcome::Failed, Some(&a), &[&a, &shadow]);
        }
        metrics.decided(Outcome::Deferred, Some(&a), &[&a]);
        metrics.decided(Outcome::Forwarded, None, &[&shadow]);
        metrics.decided(Outcome::Forwarded, None, &[]);
        assert_eq!(
            series(&metrics, &store, "bouncer_forced_total"),
            [
                (r#"code="550",outcome="deferred",rule="a""#.into(), 1),
                (r#"code="550",outcome="failed",rule="a""#.into(), 3),
            ]
        );
        assert_eq!(
            series(&metrics, &store, "bouncer_rule_matches_total"),
            [
                (r#"mode="enforce",rule="a""#.into(), 4),
                (r#"mode="shadow",rule="s""#.into(), 4),
            ]
        );
        assert_eq!(metrics.matches_of("a"), 4);
        assert_eq!(metrics.matches_of("s"), 4);
        assert_eq!(metrics.matches_of("nothing"), 0);
        assert_eq!(metrics.events("forwarded"), 2);
        assert_eq!(metrics.events("failed"), 3);
    }

    #[test]
    fn rules_over_the_cap_share_the_other_series_but_keep_their_own_match_count() {
        let metrics = Metrics::with_rule_series_cap(1);
        let (a, b) = (rule("a", 550, Mode::Enforce), rule("b", 550, Mode::Enforce));
        let both = store_with(&[&a, &b]);
        metrics.decided(Outcome::Failed, Some(&a), &[&a]);
        metrics.decided(Outcome::Failed, Some(&b), &[&b]);
        metrics.decided(Outcome::Failed, Some(&b), &[&b]);
        assert_eq!(
            series(&metrics, &both, "bouncer_forced_total"),
            [
                (r#"code="550",outcome="failed",rule="(other)""#.into(), 2),
                (r#"code="550",outcome="failed",rule="a""#.into(), 1),
            ]
        );
        assert_eq!(metrics.matches_of("a"), 1);
        assert_eq!(metrics.matches_of("b"), 2, "the API counts past the cap");

        // `a` leaves the set: its series and count go, `(other)` stays, and
        // `b` now has room for a series of its own.
        let only_b = store_with(&[&b]);
        assert_eq!(
            series(&metrics, &only_b, "bouncer_forced_total"),
            [(r#"code="550",outcome="failed",rule="(other)""#.into(), 2)]
        );
        assert_eq!(metrics.matches_of("a"), 0);
        metrics.decided(Outcome::Failed, Some(&b), &[&b]);
        assert_eq!(
            series(&metrics, &only_b, "bouncer_forced_total"),
            [
                (r#"code="550",outcome="failed",rule="(other)""#.into(), 2),
                (r#"code="550",outcome="failed",rule="b""#.into(), 1),
            ]
        );
        assert_eq!(
            series(&metrics, &only_b, "bouncer_rule_matches_total"),
            [
                (r#"mode="enforce",rule="(other)""#.into(), 2),
                (r#"mode="enforce",rule="b""#.into(), 1),
            ]
        );
        assert_eq!(metrics.matches_of("b"), 3);
    }

    #[test]
    fn a_rule_with_the_id_other_is_not_confused_with_the_overflow() {
        // `_other` is a valid rule id (SPEC §2); the overflow label is not.
        let metrics = Metrics::with_rule_series_cap(1);
        let (named, a) = (
            rule("_other", 550, Mode::Enforce),
            rule("a", 550, Mode::Enforce),
        );
        let store = store_with(&[&named, &a]);
        metrics.decided(Outcome::Failed, Some(&named), &[&named]);
        metrics.decided(Outcome::Failed, Some(&a), &[&a]);
        assert_eq!(
            series(&metrics, &store, "bouncer_rule_matches_total"),
            [
                (r#"mode="enforce",rule="(other)""#.into(), 1),
                (r#"mode="enforce",rule="_other""#.into(), 1),
            ]
        );
        assert_eq!(metrics.matches_of("_other"), 1);
        assert_eq!(metrics.matches_of("a"), 1);
        assert!(
            !OTHER_RULE.bytes().all(crate::rules::validate::is_id_byte),
            "{OTHER_RULE:?} must be outside the rule id grammar"
        );
    }

    #[test]
    fn an_id_that_turns_from_enforce_to_shadow_counts_in_both_modes() {
        let metrics = Metrics::with_rule_series_cap(10);
        let (enforce, shadow) = (rule("a", 550, Mode::Enforce), rule("a", 550, Mode::Shadow));
        let store = store_with(&[&shadow]);
        metrics.decided(Outcome::Failed, Some(&enforce), &[&enforce]);
        metrics.decided(Outcome::Forwarded, None, &[&shadow]);
        metrics.decided(Outcome::Forwarded, None, &[&shadow]);
        assert_eq!(
            series(&metrics, &store, "bouncer_rule_matches_total"),
            [
                (r#"mode="enforce",rule="a""#.into(), 1),
                (r#"mode="shadow",rule="a""#.into(), 2),
            ]
        );
        assert_eq!(metrics.matches_of("a"), 3);
    }

    #[test]
    fn a_rule_that_left_and_came_back_counts_from_zero_again() {
        let metrics = Metrics::with_rule_series_cap(10);
        let a = rule("a", 550, Mode::Enforce);
        let with_a = store_with(&[&a]);
        metrics.decided(Outcome::Failed, Some(&a), &[&a]);
        assert_eq!(series(&metrics, &with_a, "bouncer_forced_total").len(), 1);
        let empty = store_with(&[]);
        assert_eq!(series(&metrics, &empty, "bouncer_forced_total"), []);
        assert_eq!(metrics.matches_of("a"), 0);
        metrics.decided(Outcome::Failed, Some(&a), &[&a]);
        assert_eq!(
            series(&metrics, &with_a, "bouncer_forced_total"),
            [(r#"code="550",outcome="failed",rule="a""#.into(), 1)]
        );
        assert_eq!(metrics.matches_of("a"), 1);
    }
}
