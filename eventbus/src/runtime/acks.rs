//! Which delivery tags may be acknowledged with `multiple = true`.
//!
//! Deliveries on a channel carry tags 1, 2, 3, ... and are handled
//! concurrently, so they settle out of order. A `multiple` ack for tag `N`
//! covers every outstanding tag `<= N`, so it is only safe once no lower tag is
//! still being handled. Tags settled by an individual nack count as settled:
//! the broker no longer considers them outstanding, so acking "over" them is
//! harmless.

use std::collections::BTreeSet;

/// Tracks settled delivery tags of one channel and yields the longest settled
/// prefix that has not been acknowledged yet.
///
/// Tags restart at 1 on a new channel, so use one tracker per channel.
#[derive(Debug, Default)]
pub(crate) struct AckTracker {
    /// Every tag `<= acked_upto` has been acknowledged.
    acked_upto: u64,
    /// Every tag in `(acked_upto, frontier]` is settled. Kept up to date on
    /// each `settle`, so `ackable` never rescans.
    frontier: u64,
    /// Settled tags beyond a gap, i.e. `> frontier + 1`. They join the
    /// frontier once the gap below them closes.
    ahead: BTreeSet<u64>,
}

impl AckTracker {
    /// A tracker for a fresh channel: nothing acknowledged, first tag is 1.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Marks `tag` as settled. Settling a tag twice, or a tag that is already
    /// acknowledged, does nothing.
    pub(crate) fn settle(&mut self, tag: u64) {
        if tag <= self.frontier {
            return;
        }
        if tag != self.frontier + 1 {
            self.ahead.insert(tag);
            return;
        }
        self.frontier = tag;
        // Each tag is inserted and popped at most once: amortised O(log n).
        while self.ahead.first() == Some(&(self.frontier + 1)) {
            self.ahead.pop_first();
            self.frontier += 1;
        }
    }

    /// The highest tag that may be acknowledged with `multiple = true` now,
    /// or `None` when no tag above [`acked_upto`](Self::acked_upto) can be.
    pub(crate) fn ackable(&self) -> Option<u64> {
        (self.frontier > self.acked_upto).then_some(self.frontier)
    }

    /// Like [`ackable`](Self::ackable), and records the returned tag as
    /// acknowledged, so the caller must send the ack.
    pub(crate) fn take(&mut self) -> Option<u64> {
        let tag = self.ackable()?;
        self.acked_upto = tag;
        Some(tag)
    }

    /// How many tags one `multiple` ack would cover now.
    pub(crate) fn ackable_count(&self) -> usize {
        usize::try_from(self.frontier - self.acked_upto).unwrap_or(usize::MAX)
    }

    /// How many settled tags wait for an acknowledgement, whether or not they
    /// are ackable yet.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        // Only a gap of more than usize::MAX tags could saturate.
        self.ackable_count().saturating_add(self.ahead.len())
    }

    /// Every tag up to and including this one has been acknowledged
    /// (0 before the first ack).
    #[cfg(test)]
    pub(crate) fn acked_upto(&self) -> u64 {
        self.acked_upto
    }
}

#[cfg(test)]
mod tests {
    use super::AckTracker;
    use proptest::prelude::*;

    #[test]
    fn fresh_tracker_has_nothing_to_ack() {
        let mut t = AckTracker::new();
        assert_eq!(t.acked_upto(), 0);
        assert_eq!(t.ackable(), None);
        assert_eq!(t.take(), None);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn in_order_settles_are_ackable_at_once() {
        let mut t = AckTracker::new();
        t.settle(1);
        t.settle(2);
        assert_eq!(t.ackable(), Some(2));
        assert_eq!(t.pending(), 2);
        assert_eq!(t.take(), Some(2));
        assert_eq!(t.acked_upto(), 2);
        assert_eq!(t.pending(), 0);
        assert_eq!(t.take(), None);
    }

    #[test]
    fn gap_holds_back_higher_tags_until_it_closes() {
        let mut t = AckTracker::new();
        t.settle(2);
        t.settle(3);
        t.settle(5);
        assert_eq!(t.ackable(), None);
        assert_eq!(t.pending(), 3);

        t.settle(1);
        assert_eq!(t.take(), Some(3));
        assert_eq!(t.pending(), 1, "tag 5 still waits behind 4");

        t.settle(4);
        assert_eq!(t.take(), Some(5));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn duplicate_and_already_acked_settles_are_ignored() {
        let mut t = AckTracker::new();
        t.settle(0); // tags start at 1
        assert_eq!(t.pending(), 0);

        t.settle(3);
        t.settle(3);
        assert_eq!(t.pending(), 1);

        t.settle(1);
        t.settle(1);
        assert_eq!(t.take(), Some(1));
        t.settle(1);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.take(), None);

        t.settle(2);
        assert_eq!(t.take(), Some(3));
        t.settle(2);
        t.settle(3);
        assert_eq!(t.pending(), 0);
        assert_eq!(t.acked_upto(), 3);
    }

    /// `1..=n` in random order, each paired with whether to `take()` after it.
    fn shuffled_tags() -> impl Strategy<Value = (u64, Vec<u64>, Vec<bool>)> {
        (1u64..=300).prop_flat_map(|n| {
            let len = usize::try_from(n).expect("small n");
            (
                Just(n),
                Just((1..=n).collect::<Vec<_>>()).prop_shuffle(),
                proptest::collection::vec(any::<bool>(), len),
            )
        })
    }

    proptest! {
        #[test]
        fn take_never_passes_an_unsettled_tag((n, order, takes) in shuffled_tags()) {
            let mut t = AckTracker::new();
            let mut settled = vec![false; order.len() + 2]; // index = tag
            let mut last = 0;
            for (&tag, &take) in order.iter().zip(&takes) {
                t.settle(tag);
                settled[usize::try_from(tag).expect("small tag")] = true;
                let lowest_unsettled = (1..).find(|&i| !settled[i]).expect("sentinel");
                let lowest_unsettled = u64::try_from(lowest_unsettled).expect("small tag");
                let waiting = settled[1..].iter().filter(|&&s| s).count()
                    - usize::try_from(last).expect("small tag");
                prop_assert_eq!(t.pending(), waiting);
                if take {
                    match t.take() {
                        Some(h) => {
                            prop_assert!(h < lowest_unsettled, "acked {h} over unsettled {lowest_unsettled}");
                            prop_assert!(h > last, "{h} after {last}");
                            prop_assert_eq!(h, lowest_unsettled - 1, "prefix not maximal");
                            last = h;
                        }
                        None => prop_assert_eq!(lowest_unsettled - 1, last),
                    }
                    prop_assert_eq!(t.acked_upto(), last);
                }
            }
            t.take();
            prop_assert_eq!(t.acked_upto(), n);
            prop_assert_eq!(t.pending(), 0);
            prop_assert_eq!(t.take(), None);
        }

        /// Acking once `batch` tags are ackable (what the RabbitMQ settler
        /// does, besides its timer) sends at most one ack per `batch`
        /// deliveries in any completion order, and never lets `batch` ackable
        /// tags wait. Counting the settled tags beyond a gap too, as it once
        /// did, sent an ack for nearly every delivery while a slow one held a
        /// gap open with `batch` settled above it.
        #[test]
        fn acking_by_the_batch_sends_one_ack_per_batch(
            (n, order, _) in shuffled_tags(),
            batch in 1usize..60,
        ) {
            let mut t = AckTracker::new();
            let mut acks = 0;
            for &tag in &order {
                t.settle(tag);
                if t.ackable_count() >= batch {
                    let upto = t.take().expect("ackable");
                    prop_assert_eq!(t.ackable_count(), 0, "acked up to {}", upto);
                    acks += 1;
                }
                prop_assert!(t.ackable_count() < batch);
            }
            let n = usize::try_from(n).expect("small n");
            prop_assert!(acks <= n / batch, "{} acks for {} deliveries in batches of {}", acks, n, batch);
            prop_assert_eq!(t.ackable_count() + usize::try_from(t.acked_upto()).expect("small"), n);
        }

        /// Arbitrary tags, repeats and tag 0 included, against a rescanning model.
        #[test]
        fn matches_naive_model(ops in proptest::collection::vec((0u64..40, any::<bool>()), 0..200)) {
            let mut t = AckTracker::new();
            let mut model = std::collections::BTreeSet::new();
            let mut acked = 0;
            for (tag, take) in ops {
                t.settle(tag);
                if tag > acked {
                    model.insert(tag);
                }
                let mut prefix = acked;
                while model.contains(&(prefix + 1)) {
                    prefix += 1;
                }
                let expected = (prefix > acked).then_some(prefix);
                prop_assert_eq!(t.ackable(), expected);
                prop_assert_eq!(t.pending(), model.len());
                if take {
                    prop_assert_eq!(t.take(), expected);
                    acked = prefix;
                    model.retain(|&s| s > acked);
                }
                prop_assert_eq!(t.acked_upto(), acked);
            }
        }
    }
}
