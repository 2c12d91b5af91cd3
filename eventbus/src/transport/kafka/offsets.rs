//! Which offset of a partition may be committed.
//!
//! Records of one partition are handled concurrently (different aggregates)
//! and finish out of order. A Kafka commit of offset `N` says "every record
//! below `N` is done", so it may only name the lowest record still being
//! handled, never one past it. Offsets can have gaps (compaction, transaction
//! markers), so the tracker keeps the offsets it was given, not a counter.

use std::collections::BTreeSet;

/// The handled prefix of one partition's records, as received by this member.
#[derive(Debug, Default)]
pub(crate) struct AckTracker {
    /// Received, not yet handled.
    in_flight: BTreeSet<i64>,
    /// The highest offset received.
    highest: Option<i64>,
    /// The last offset returned by [`AckTracker::take`] (next to read).
    committed: Option<i64>,
}

impl AckTracker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A record at `offset` was taken from the partition (in partition order).
    pub(crate) fn received(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.highest = Some(self.highest.map_or(offset, |h| h.max(offset)));
    }

    /// The record at `offset` is settled: its handlers all succeeded, or its
    /// retry or DLQ copy is safely written.
    pub(crate) fn handled(&mut self, offset: i64) {
        self.in_flight.remove(&offset);
    }

    /// The offset a commit may name now: the lowest record still in flight,
    /// or one past the highest received when none is.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(&lowest) => Some(lowest),
            None => self.highest.map(|h| h + 1),
        }
    }

    /// Like [`AckTracker::commit_point`] when it moved since the last call
    /// (the caller commits it).
    pub(crate) fn take(&mut self) -> Option<i64> {
        let point = self.commit_point()?;
        if self.committed.is_some_and(|c| c >= point) {
            return None;
        }
        self.committed = Some(point);
        Some(point)
    }

    /// A commit of this partition failed: the next [`AckTracker::take`]
    /// returns the commit point again.
    pub(crate) fn commit_failed(&mut self) {
        self.committed = None;
    }

    /// Records received and not yet handled.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_handled_prefix() {
        let mut t = AckTracker::new();
        assert_eq!(t.take(), None);
        for o in [10, 11, 13, 14] {
            t.received(o);
        }
        t.handled(11);
        t.handled(13);
        assert_eq!(t.take(), Some(10));
        assert_eq!(t.take(), None);
        t.handled(10);
        assert_eq!(t.take(), Some(14));
        t.commit_failed();
        assert_eq!(t.take(), Some(14), "a failed commit is sent again");
        t.handled(14);
        assert_eq!(t.take(), Some(15));
        assert_eq!(t.in_flight(), 0);
    }

    proptest! {
        /// Offsets with random gaps, handled in a random order: a commit
        /// never names an offset past an unhandled record, never goes back,
        /// and ends one past the last record.
        #[test]
        fn never_commits_past_an_unhandled_record(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let mut offset = 100;
            let offsets: Vec<i64> = gaps.iter().map(|g| { offset += g; offset }).collect();
            let mut t = AckTracker::new();
            for &o in &offsets {
                t.received(o);
            }
            let mut pending: Vec<i64> = offsets.clone();
            let mut last = None;
            let mut i = 0;
            while !pending.is_empty() {
                let pick = order[i % order.len()].index(pending.len());
                i += 1;
                let done = pending.swap_remove(pick);
                t.handled(done);
                if let Some(c) = t.take() {
                    prop_assert!(pending.iter().all(|&p| c <= p), "commit {c} past an unhandled record in {pending:?}");
                    prop_assert!(last.is_none_or(|l| c > l));
                    last = Some(c);
                }
            }
            prop_assert_eq!(last, offsets.last().map(|o| o + 1));
        }
    }
}
