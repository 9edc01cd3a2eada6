//! Assigned partitions that never start fetching.
//!
//! After `assign`, librdkafka asks the group coordinator for each
//! partition's committed offset and starts its fetcher once the answer
//! comes. When the coordinator answers with a request-level error (e.g.
//! NOT_COORDINATOR while a restarted broker loads the group), librdkafka
//! 2.12 neither retries nor starts the fetcher: the partition stays
//! assigned, owned by this member and unread until it is assigned again
//! (confluentinc/librdkafka#5586). Nothing is logged at warning level and the
//! group looks healthy.
//!
//! The watch reads the per-partition fetch state from librdkafka's
//! statistics and names the partitions that have not started fetching for
//! longer than the timeout while a broker is reachable; the pipeline then
//! restarts with new clients, whose new assignment fetches the offsets
//! again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// librdkafka's fetch states (`rd_kafka_fetch_states`) before a fetcher is
/// started or after it is stopped. Every other state ("offset-query",
/// "offset-wait", "validate-epoch-wait", "active") means it is running.
fn fetching(state: Option<&str>) -> bool {
    !matches!(state, None | Some("none" | "stopping" | "stopped"))
}

#[derive(Debug)]
pub struct FetchWatch {
    timeout: Duration,
    /// Since when each assigned partition has been seen not fetching while
    /// a broker was reachable, and its last fetch state.
    waiting: BTreeMap<i32, (Instant, String)>,
}

impl FetchWatch {
    pub fn new(timeout: Duration) -> FetchWatch {
        FetchWatch {
            timeout,
            waiting: BTreeMap::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The partitions waiting to start fetching: their fetch state
    /// (`unknown` when the report did not list one) and for how long.
    pub fn waiting(&self, now: Instant) -> impl Iterator<Item = (i32, &str, Duration)> + '_ {
        self.waiting.iter().map(move |(p, (since, state))| {
            (*p, state.as_str(), now.saturating_duration_since(*since))
        })
    }

    /// One statistics report: the assigned partitions with their fetch
    /// state (`None` when the report does not list one) and whether any
    /// broker is up. Returns the partitions that have not been fetching
    /// for longer than the timeout. While no broker is up, waiting does not
    /// count: the offsets cannot be fetched, and librdkafka retries on its
    /// own once a broker is back.
    pub fn observe<'s>(
        &mut self,
        now: Instant,
        connected: bool,
        assigned: impl IntoIterator<Item = (i32, Option<&'s str>)>,
    ) -> Vec<i32> {
        let mut seen = BTreeMap::new();
        for (partition, state) in assigned {
            if fetching(state) {
                continue;
            }
            let since = self
                .waiting
                .get(&partition)
                .map_or(now, |(since, _)| *since);
            let since = if connected { since } else { now };
            seen.insert(partition, (since, state.unwrap_or("unknown").to_owned()));
        }
        self.waiting = seen;
        self.waiting
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= self.timeout)
            .map(|(p, _)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn a_partition_not_fetching_past_the_timeout_is_named() {
        let mut watch = FetchWatch::new(T);
        let t0 = Instant::now();
        let report = |s0, s1| vec![(0, Some(s0)), (1, Some(s1))];
        assert!(watch.observe(t0, true, report("none", "active")).is_empty());
        assert!(
            watch
                .observe(t0 + T / 2, true, report("none", "active"))
                .is_empty()
        );
        assert_eq!(watch.observe(t0 + T, true, report("none", "active")), [0]);
    }

    #[test]
    fn a_fetcher_that_starts_clears_the_wait() {
        let mut watch = FetchWatch::new(T);
        let t0 = Instant::now();
        watch.observe(t0, true, [(0, Some("none"))]);
        watch.observe(t0 + T / 2, true, [(0, Some("offset-query"))]);
        // Stopped again (e.g. revoked and assigned back): a new wait.
        assert!(
            watch
                .observe(t0 + T, true, [(0, Some("stopped"))])
                .is_empty()
        );
        assert_eq!(watch.observe(t0 + 2 * T, true, [(0, Some("stopped"))]), [0]);
    }

    #[test]
    fn a_partition_missing_from_the_report_counts_as_not_fetching() {
        let mut watch = FetchWatch::new(T);
        let t0 = Instant::now();
        watch.observe(t0, true, [(3, None)]);
        assert_eq!(watch.observe(t0 + T, true, [(3, None)]), [3]);
    }

    #[test]
    fn unassigned_partitions_are_forgotten() {
        let mut watch = FetchWatch::new(T);
        let t0 = Instant::now();
        watch.observe(t0, true, [(0, Some("none"))]);
        watch.observe(t0 + T / 2, true, []);
        assert!(watch.observe(t0 + T, true, [(0, Some("none"))]).is_empty());
    }

    #[test]
    fn time_without_a_broker_does_not_count() {
        let mut watch = FetchWatch::new(T);
        let t0 = Instant::now();
        watch.observe(t0, true, [(0, Some("none"))]);
        assert!(
            watch
                .observe(t0 + 2 * T, false, [(0, Some("none"))])
                .is_empty()
        );
        assert!(
            watch
                .observe(t0 + 2 * T + T / 2, true, [(0, Some("none"))])
                .is_empty()
        );
        assert_eq!(watch.observe(t0 + 3 * T, true, [(0, Some("none"))]), [0]);
    }
}
