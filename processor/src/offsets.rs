//! Contiguous-completion offset tracking, so records of one partition can be processed
//! concurrently and out of order while the committed offset never passes an unfinished one
//! (the approach of Confluent's Parallel Consumer).

use std::collections::{BTreeSet, HashMap};

/// Identifies a record's place: (topic, partition).
pub type TopicPartition = (String, i32);

/// A record handed out for processing; give it back to [`OffsetTracker::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub tp: TopicPartition,
    pub offset: i64,
    /// Which assignment of the partition the record came from: a ticket from before a
    /// revocation must not move the offset of a later assignment.
    epoch: u64,
}

#[derive(Debug)]
struct PartitionState {
    epoch: u64,
    pending: BTreeSet<i64>,
    /// One past the highest offset seen.
    next: i64,
    /// Last offset reported as committable.
    committed: i64,
}

/// Tracks in-flight offsets per partition and computes the safe commit point.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
    epochs: u64,
}

impl OffsetTracker {
    /// Record that `offset` was read and is now in flight.
    pub fn begin(&mut self, tp: TopicPartition, offset: i64) -> Ticket {
        let epochs = &mut self.epochs;
        let state = self.partitions.entry(tp.clone()).or_insert_with(|| {
            *epochs += 1;
            PartitionState {
                epoch: *epochs,
                pending: BTreeSet::new(),
                next: offset,
                committed: offset,
            }
        });
        state.pending.insert(offset);
        state.next = state.next.max(offset + 1);
        Ticket {
            tp,
            offset,
            epoch: state.epoch,
        }
    }

    /// Record that a ticket's work is finished (its outputs durably written). Returns the new
    /// commit offset (next offset to consume) for its partition if it advanced.
    pub fn complete(&mut self, ticket: &Ticket) -> Option<i64> {
        let state = self.partitions.get_mut(&ticket.tp)?;
        if state.epoch != ticket.epoch || !state.pending.remove(&ticket.offset) {
            return None;
        }
        let commit = state.pending.first().copied().unwrap_or(state.next);
        (commit > state.committed).then(|| {
            state.committed = commit;
            commit
        })
    }

    /// Forget a partition (revoked in a rebalance): outstanding tickets for it become inert.
    pub fn revoke(&mut self, tp: &TopicPartition) {
        self.partitions.remove(tp);
    }

    /// Records still in flight, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        ("t".into(), 0)
    }

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::default();
        let a = t.begin(tp(), 10);
        let b = t.begin(tp(), 11);
        let c = t.begin(tp(), 12);
        assert_eq!(
            t.complete(&c),
            None,
            "12 done but 10 is not: nothing to commit"
        );
        assert_eq!(t.complete(&b), None);
        assert_eq!(t.complete(&a), Some(13), "all done: commit past 12");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partial_progress_and_duplicates() {
        let mut t = OffsetTracker::default();
        let a = t.begin(tp(), 0);
        let b = t.begin(tp(), 1);
        assert_eq!(t.complete(&a), Some(1));
        assert_eq!(t.complete(&a), None, "completing twice is harmless");
        assert_eq!(t.complete(&b), Some(2));
    }

    #[test]
    fn tickets_from_a_revoked_assignment_are_inert() {
        let mut t = OffsetTracker::default();
        let old = t.begin(tp(), 5);
        t.revoke(&tp());
        let new = t.begin(tp(), 5);
        let later = t.begin(tp(), 6);
        assert_eq!(
            t.complete(&old),
            None,
            "old ticket must not complete the new record 5"
        );
        assert_eq!(t.complete(&later), None);
        assert_eq!(t.complete(&new), Some(7));
    }
}
