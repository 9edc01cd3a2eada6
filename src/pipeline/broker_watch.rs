//! A Kafka client left with no broker to connect to.
//!
//! librdkafka (2.10 and later) drops the brokers that a metadata response
//! does not list. A response that lists none at all (a single broker answers
//! so during its controlled shutdown, and brokers of a cluster being upgraded
//! have been seen to) drops every broker the client knew; librdkafka 2.12
//! then sends no metadata request, so its re-bootstrap timer never starts,
//! and the client stays disconnected for good, saying so only at debug
//! level ("no usable brokers"; confluentinc/librdkafka#5301). The fault
//! campaign met it after a graceful restart of its single broker: the
//! test's own producer got no acknowledgement for the rest of the run.
//!
//! The watch reads the brokers listed in a client's statistics. A broker
//! that is down still counts (librdkafka keeps it and reconnects on its
//! own); a logical one (a coordinator is a role of a real broker) does not. When a client has known no other broker for
//! [`NO_BROKER_TIMEOUT`], the pipeline restarts with new clients, which
//! bootstrap from `kafka."bootstrap.servers"` again; the control topic's
//! reader and writer (`crate::control`) replace their client at the first
//! report that lists none. `tests/metadata_proxy` strands clients for real.

use std::time::{Duration, Instant};

/// How long a client may know no broker before the pipeline restarts. A
/// client re-bootstrapping lists its bootstrap brokers at once, so this is
/// only ever reached in the state described above.
pub const NO_BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a broker of `source` (the `source` field of librdkafka's
/// statistics: `learned`, `configured`, `internal` or `logical`) is one the
/// client can connect to.
fn connectable(source: &str) -> bool {
    matches!(source, "learned" | "configured")
}

#[derive(Debug)]
pub struct BrokerWatch {
    timeout: Duration,
    /// Since when the client has known no broker it can connect to.
    since: Option<Instant>,
}

impl Default for BrokerWatch {
    fn default() -> BrokerWatch {
        BrokerWatch::new(NO_BROKER_TIMEOUT)
    }
}

impl BrokerWatch {
    pub fn new(timeout: Duration) -> BrokerWatch {
        BrokerWatch {
            timeout,
            since: None,
        }
    }

    /// [`BrokerWatch::observe`] with the brokers of one of librdkafka's
    /// statistics reports.
    pub fn observe_report(
        &mut self,
        now: Instant,
        statistics: &rdkafka::statistics::Statistics,
    ) -> Option<Duration> {
        self.observe(now, statistics.brokers.values().map(|b| b.source.as_str()))
    }

    /// Whether the last report listed no broker the client can connect to.
    pub fn knows_none(&self) -> bool {
        self.since.is_some()
    }

    /// One statistics report: the `source` of every broker it lists.
    /// Returns for how long the client has known no broker it can connect
    /// to, once that is at least the timeout.
    pub fn observe<'s>(
        &mut self,
        now: Instant,
        sources: impl IntoIterator<Item = &'s str>,
    ) -> Option<Duration> {
        if sources.into_iter().any(connectable) {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let lasted = now.saturating_duration_since(since);
        (lasted >= self.timeout).then_some(lasted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    /// A consumer's brokers after librdkafka dropped them all: the group
    /// coordinator's logical one remains (librdkafka's internal broker is
    /// never listed, but would not count either).
    const NONE_LEFT: [&str; 2] = ["internal", "logical"];

    #[test]
    fn a_client_with_no_broker_for_the_timeout_is_reported() {
        let t0 = Instant::now();
        let mut watch = BrokerWatch::new(T);
        assert_eq!(watch.observe(t0, NONE_LEFT), None);
        assert_eq!(watch.observe(t0 + T / 2, NONE_LEFT), None);
        assert_eq!(watch.observe(t0 + T, NONE_LEFT), Some(T));
        assert_eq!(watch.observe(t0 + 2 * T, []), Some(2 * T));
    }

    #[test]
    fn a_known_broker_counts_whatever_its_state() {
        // Brokers that are down are still listed with their source: a
        // broker outage is librdkafka's to wait out, not a reason to restart.
        let t0 = Instant::now();
        let mut watch = BrokerWatch::new(T);
        for n in 0..10 {
            let now = t0 + n * T;
            assert_eq!(watch.observe(now, ["internal", "learned"]), None);
            assert_eq!(watch.observe(now, ["configured", "internal"]), None);
        }
    }

    #[test]
    fn a_broker_seen_again_starts_the_wait_over() {
        let t0 = Instant::now();
        let mut watch = BrokerWatch::new(T);
        assert_eq!(watch.observe(t0, NONE_LEFT), None);
        assert_eq!(watch.observe(t0 + T / 2, ["learned", "logical"]), None);
        // Re-bootstrapping: the configured brokers are back.
        assert_eq!(watch.observe(t0 + T / 2, ["configured"]), None);
        assert_eq!(watch.observe(t0 + T, NONE_LEFT), None);
        assert_eq!(
            watch.observe(t0 + 2 * T - Duration::from_secs(1), NONE_LEFT),
            None
        );
        assert_eq!(watch.observe(t0 + 2 * T, NONE_LEFT), Some(T));
    }
}
