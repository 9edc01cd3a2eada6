//! Per-partition, in-order acknowledgement tracking.
//!
//! An input offset may be committed only once every record produced for it,
//! and for every earlier offset of its partition, is acknowledged (SPEC §6).
//! Each partition keeps its in-flight offsets in consume order with the
//! number of outputs still unacknowledged; the committable position advances
//! over the acknowledged prefix only.
//!
//! A rewind (after a produce error, or a revoke and re-assign) starts a new
//! *generation*: acknowledgements from an older generation are ignored, so a
//! late delivery report can never advance the position past a re-processed
//! event.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

#[derive(Debug, Default)]
struct Partition {
    /// (offset, outputs not yet acknowledged), in consume order.
    pending: VecDeque<(i64, u32)>,
    /// Offset + 1 of the last event of the acknowledged prefix: what to commit.
    committable: Option<i64>,
    /// Last committable position handed out by `take_commits`.
    committed: Option<i64>,
    generation: u64,
}

impl Partition {
    fn new(last_generation: &mut u64) -> Partition {
        *last_generation += 1;
        Partition {
            generation: *last_generation,
            ..Partition::default()
        }
    }

    /// Where `offset` is in `pending`. Offsets usually follow each other
    /// without gaps, so its distance from the first one in flight is tried
    /// first; gaps (compaction, transaction markers) take a binary search.
    fn index_of(&self, offset: i64) -> Option<usize> {
        let &(first, _) = self.pending.front()?;
        let guess = usize::try_from(offset.checked_sub(first)?).ok()?;
        match self.pending.get(guess) {
            Some(&(o, _)) if o == offset => Some(guess),
            _ => self.pending.binary_search_by_key(&offset, |&(o, _)| o).ok(),
        }
    }
}

/// Handle for one consumed event, carried by its outputs' delivery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// Hashed with Fx: looked up for every event and every report.
    partitions: FxHashMap<i32, Partition>,
    in_flight: usize,
    /// Generations are unique across partitions and re-assignments, so a
    /// late delivery report from before a revoke never counts for the same
    /// offset consumed again after the partition comes back.
    last_generation: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a consumed event that will produce `outputs` records.
    /// Offsets of a partition must be handed in increasing order.
    pub fn consumed(&mut self, partition: i32, offset: i64, outputs: u32) -> Ticket {
        let last_generation = &mut self.last_generation;
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition::new(last_generation));
        debug_assert!(
            p.pending.back().is_none_or(|&(last, _)| last < offset),
            "offsets out of order"
        );
        let ticket = Ticket {
            partition,
            offset,
            generation: p.generation,
        };
        if outputs == 0 && p.pending.is_empty() {
            p.committable = Some(offset + 1);
        } else {
            p.pending.push_back((offset, outputs));
            self.in_flight += 1;
            Self::advance(p, &mut self.in_flight);
        }
        ticket
    }

    /// Records one acknowledged output. Returns false for a stale ticket (an
    /// older generation, or a partition no longer tracked).
    pub fn acked(&mut self, ticket: Ticket) -> bool {
        let Some(p) = self.partitions.get_mut(&ticket.partition) else {
            return false;
        };
        if p.generation != ticket.generation {
            return false;
        }
        let Some(i) = p.index_of(ticket.offset) else {
            return false;
        };
        let remaining = &mut p.pending[i].1;
        debug_assert!(*remaining > 0, "more acknowledgements than outputs");
        *remaining = remaining.saturating_sub(1);
        if i == 0 {
            Self::advance(p, &mut self.in_flight);
        }
        true
    }

    fn advance(p: &mut Partition, in_flight: &mut usize) {
        while let Some(&(offset, 0)) = p.pending.front() {
            p.pending.pop_front();
            *in_flight -= 1;
            p.committable = Some(offset + 1);
        }
    }

    /// Forgets everything in flight on a partition and starts a new
    /// generation; the caller seeks the consumer back to [`Self::position`]
    /// (or the last committed offset) and re-processes from there.
    pub fn rewind(&mut self, partition: i32) -> u64 {
        let last_generation = &mut self.last_generation;
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition::new(last_generation));
        self.in_flight -= p.pending.len();
        p.pending.clear();
        *last_generation += 1;
        p.generation = *last_generation;
        p.generation
    }

    /// Rewinds the ticket's partition if the ticket is still current, and
    /// returns where to re-consume from: the earliest event not fully
    /// acknowledged. `None` for a stale ticket (already rewound or revoked).
    pub fn rewind_for(&mut self, ticket: Ticket) -> Option<i64> {
        let p = self.partitions.get(&ticket.partition)?;
        if p.generation != ticket.generation {
            return None;
        }
        let from = p.pending.front().map(|&(offset, _)| offset)?;
        self.rewind(ticket.partition);
        Some(from)
    }

    /// Whether a ticket belongs to the current generation of a tracked
    /// partition.
    pub fn is_current(&self, ticket: Ticket) -> bool {
        self.partitions
            .get(&ticket.partition)
            .is_some_and(|p| p.generation == ticket.generation)
    }

    /// Partitions currently tracked.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// Stops tracking a revoked partition.
    pub fn remove(&mut self, partition: i32) {
        if let Some(p) = self.partitions.remove(&partition) {
            self.in_flight -= p.pending.len();
        }
    }

    /// The position to commit for a partition, if any event is done.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.committable)
    }

    /// Positions that advanced since the last call: what to store/commit.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        self.commits(false)
    }

    /// Every partition's committable position, changed or not: committed
    /// again now and then, so that an asynchronous commit that failed (e.g.
    /// with ILLEGAL_GENERATION during a rebalance) does not leave an idle
    /// partition's last events uncommitted.
    pub fn all_commits(&mut self) -> Vec<(i32, i64)> {
        self.commits(true)
    }

    fn commits(&mut self, all: bool) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&partition, p) in &mut self.partitions {
            if let Some(position) = p.committable
                && (all || p.committed != Some(position))
            {
                p.committed = Some(position);
                out.push((partition, position));
            }
        }
        out.sort_unstable();
        out
    }

    /// Events consumed and not yet fully acknowledged, on all partitions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Events in flight on one partition.
    pub fn in_flight_on(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_advances_only_over_the_acknowledged_prefix() {
        let mut t = OffsetTracker::new();
        let a = t.consumed(0, 10, 1);
        let b = t.consumed(0, 11, 2);
        let c = t.consumed(0, 13, 1); // gaps in offsets are normal (compaction, markers)
        assert_eq!(t.in_flight(), 3);
        assert!(t.acked(c));
        assert_eq!(t.position(0), None, "a later ack alone commits nothing");
        assert!(t.acked(a));
        assert_eq!(t.position(0), Some(11));
        assert!(t.acked(b));
        assert_eq!(t.position(0), Some(11), "b still has an output outstanding");
        assert!(t.acked(b));
        assert_eq!(
            t.position(0),
            Some(14),
            "b and the already-acked c both done"
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn offsets_are_found_with_and_without_gaps_and_unknown_ones_are_not() {
        let mut p = Partition::default();
        p.pending
            .extend([(10, 1), (11, 1), (12, 1), (20, 1), (21, 1), (40, 1)]);
        for (i, &(offset, _)) in p.pending.iter().enumerate() {
            assert_eq!(p.index_of(offset), Some(i), "offset {offset}");
        }
        for missing in [i64::MIN, 0, 9, 13, 19, 22, 39, 41, i64::MAX] {
            assert_eq!(p.index_of(missing), None, "offset {missing}");
        }
        p.pending.pop_front();
        assert_eq!(p.index_of(10), None, "gone once acknowledged");
        assert_eq!(p.index_of(20), Some(2));
        assert_eq!(Partition::default().index_of(0), None);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        let a = t.consumed(0, 5, 1);
        let b = t.consumed(1, 7, 1);
        assert!(t.acked(b));
        assert_eq!(t.position(1), Some(8));
        assert_eq!(t.position(0), None);
        assert!(t.acked(a));
        assert_eq!(t.take_commits(), vec![(0, 6), (1, 8)]);
        assert_eq!(t.take_commits(), vec![], "nothing new to commit");
        assert_eq!(t.all_commits(), vec![(0, 6), (1, 8)], "all, changed or not");
        assert_eq!(t.take_commits(), vec![]);
    }

    #[test]
    fn stale_acks_after_rewind_are_ignored() {
        let mut t = OffsetTracker::new();
        let a = t.consumed(0, 1, 1);
        let b = t.consumed(0, 2, 1);
        assert!(t.acked(a));
        assert_eq!(t.position(0), Some(2));
        t.rewind(0);
        assert_eq!(t.in_flight(), 0);
        assert!(!t.acked(b), "an ack from before the rewind must not count");
        assert_eq!(t.position(0), Some(2));
        let b2 = t.consumed(0, 2, 1);
        assert!(t.acked(b2));
        assert_eq!(t.position(0), Some(3));
    }

    #[test]
    fn rewind_for_returns_the_first_unacknowledged_offset_once() {
        let mut t = OffsetTracker::new();
        let a = t.consumed(0, 4, 1);
        let b = t.consumed(0, 5, 1);
        let c = t.consumed(0, 6, 1);
        assert!(t.acked(a));
        assert_eq!(t.rewind_for(c), Some(5), "b is the first not acknowledged");
        assert_eq!(
            t.rewind_for(b),
            None,
            "a second failure of the same generation is stale"
        );
        assert_eq!(t.position(0), Some(5));
    }

    #[test]
    fn acks_from_before_a_revoke_do_not_count_after_reassignment() {
        // Assignment lost while records are in flight; the partition comes
        // back and the same offsets are consumed again. The late report of
        // the old retry record must not stand in for the new result record.
        let mut t = OffsetTracker::new();
        let old = t.consumed(2, 7, 2);
        t.remove(2);
        let new = t.consumed(2, 7, 2);
        assert!(!t.acked(old), "a report from the lost assignment is stale");
        assert!(t.acked(new));
        assert_eq!(t.position(2), None, "one of two outputs acknowledged");
        assert!(t.acked(new));
        assert_eq!(t.position(2), Some(8));
    }

    #[test]
    fn removed_partitions_drop_their_in_flight_events() {
        let mut t = OffsetTracker::new();
        let a = t.consumed(3, 1, 1);
        t.consumed(3, 2, 1);
        t.remove(3);
        assert_eq!(t.in_flight(), 0);
        assert!(!t.acked(a));
        assert_eq!(t.position(3), None);
    }
}
