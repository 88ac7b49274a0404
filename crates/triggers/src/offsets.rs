//! Which offset of each partition a Kafka consumer may commit. Records
//! are called `concurrency` at a time and finish in any order; Kafka keeps
//! one committed offset per partition, "everything before this is done",
//! so the offset committed is the lowest record received and not yet
//! settled (or one past the last received when all are): a record still
//! in flight, waiting for a retry or given back at a stop holds the
//! partition's commit where it is, and is delivered again after a restart.

use std::collections::{BTreeSet, HashMap};

/// Per partition: the records in flight and what was committed.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    partitions: HashMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Received and not settled.
    unsettled: BTreeSet<i64>,
    /// One past the highest offset received.
    end: i64,
    /// The last offset given out to commit (-1: none yet).
    committed: Option<i64>,
}

impl Offsets {
    /// Record `offset` of `partition` was received and is being delivered.
    pub(crate) fn received(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.unsettled.insert(offset);
        p.end = p.end.max(offset + 1);
    }

    /// Record `offset` of `partition` is settled (called successfully or
    /// stored as a dead letter). Returns the offset to commit when it moved
    /// forward.
    pub(crate) fn settled(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        p.unsettled.remove(&offset);
        let next = p.unsettled.first().copied().unwrap_or(p.end);
        if p.committed.is_some_and(|c| c >= next) {
            return None;
        }
        p.committed = Some(next);
        Some(next)
    }

    /// Every partition's offset to commit now, for a last commit at a stop.
    pub(crate) fn positions(&self) -> Vec<(i32, i64)> {
        let mut all: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(&partition, p)| {
                let next = p.unsettled.first().copied().unwrap_or(p.end);
                (next > 0).then_some((partition, next))
            })
            .collect();
        all.sort_unstable();
        all
    }

    /// Records received and not settled, over every partition.
    #[cfg(test)]
    fn unsettled(&self) -> usize {
        self.partitions.values().map(|p| p.unsettled.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_settlements_commit_each_next_offset() {
        let mut o = Offsets::default();
        for n in 0..3 {
            o.received(0, n);
        }
        assert_eq!(o.settled(0, 0), Some(1));
        assert_eq!(o.settled(0, 1), Some(2));
        assert_eq!(o.settled(0, 2), Some(3));
        assert_eq!(o.unsettled(), 0);
    }

    #[test]
    fn only_the_highest_contiguous_settled_offset_is_committed() {
        let mut o = Offsets::default();
        for n in 10..15 {
            o.received(3, n);
        }
        assert_eq!(
            o.settled(3, 12),
            Some(10),
            "10 is still the first unsettled"
        );
        assert_eq!(o.settled(3, 11), None, "nothing moved");
        assert_eq!(o.settled(3, 10), Some(13), "10-12 done");
        assert_eq!(o.settled(3, 14), None, "13 holds it");
        assert_eq!(o.positions(), [(3, 13)]);
        assert_eq!(o.settled(3, 13), Some(15));
        assert_eq!(o.positions(), [(3, 15)]);
    }

    #[test]
    fn partitions_are_independent_and_gaps_in_offsets_are_fine() {
        let mut o = Offsets::default();
        o.received(0, 5);
        o.received(1, 0);
        // Offsets 6-8 were compacted away or are transaction markers.
        o.received(0, 9);
        assert_eq!(o.settled(0, 9), Some(5));
        assert_eq!(o.settled(1, 0), Some(1));
        assert_eq!(o.settled(0, 5), Some(10));
        assert_eq!(o.positions(), [(0, 10), (1, 1)]);
        assert_eq!(o.settled(7, 0), None, "a partition never received");
    }

    #[test]
    fn a_record_given_back_holds_its_partition() {
        let mut o = Offsets::default();
        o.received(0, 0);
        o.received(0, 1);
        assert_eq!(o.settled(0, 1), Some(0));
        // 0 is never settled (the trigger stopped while it waited).
        assert_eq!(o.positions(), [], "nothing to commit before offset 0");
        assert_eq!(o.unsettled(), 1);
        // Received again after a rebalance: still one record.
        o.received(0, 0);
        assert_eq!(o.settled(0, 0), Some(2));
    }
}
