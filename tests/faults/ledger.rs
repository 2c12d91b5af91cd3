//! The checker: what publish reported as confirmed, what handlers received
//! (a multiset), what was dead-lettered. Lost = confirmed - delivered -
//! dead-lettered must be empty; duplicates are counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

#[derive(Default)]
struct Inner {
    confirmed: BTreeSet<Uuid>,
    /// Published ids whose call returned an error: delivery optional.
    unsure: BTreeSet<Uuid>,
    delivered: BTreeMap<Uuid, usize>,
}

/// Shared by publishers and handlers of one test.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<Inner>>);

/// The verdict.
#[derive(Debug)]
pub struct Tally {
    pub confirmed: usize,
    pub unsure: usize,
    pub delivered: usize,
    pub dead_lettered: usize,
    pub lost: Vec<Uuid>,
    pub duplicates: usize,
    /// Delivered though never published by this test.
    pub strangers: usize,
}

impl Ledger {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publish said these were confirmed.
    pub fn confirmed(&self, ids: impl IntoIterator<Item = Uuid>) {
        self.inner().confirmed.extend(ids);
    }

    /// Publish failed for these: they may or may not arrive.
    pub fn unsure(&self, ids: impl IntoIterator<Item = Uuid>) {
        self.inner().unsure.extend(ids);
    }

    /// A handler received `id`.
    pub fn delivered(&self, id: Uuid) {
        *self.inner().delivered.entry(id).or_default() += 1;
    }

    /// Distinct ids delivered so far.
    pub fn distinct_delivered(&self) -> usize {
        self.inner().delivered.len()
    }

    /// Confirmed ids not delivered yet.
    pub fn missing(&self) -> usize {
        let inner = self.inner();
        inner
            .confirmed
            .iter()
            .filter(|id| !inner.delivered.contains_key(id))
            .count()
    }

    pub fn confirmed_count(&self) -> usize {
        self.inner().confirmed.len()
    }

    /// The verdict, given what is in the dead-letter queue.
    pub fn tally(&self, dead_lettered: &BTreeSet<Uuid>) -> Tally {
        let inner = self.inner();
        let lost: Vec<Uuid> = inner
            .confirmed
            .iter()
            .filter(|id| !inner.delivered.contains_key(id) && !dead_lettered.contains(id))
            .copied()
            .collect();
        Tally {
            confirmed: inner.confirmed.len(),
            unsure: inner.unsure.len(),
            delivered: inner.delivered.len(),
            dead_lettered: dead_lettered.len(),
            lost,
            duplicates: inner.delivered.values().map(|n| n - 1).sum(),
            strangers: inner
                .delivered
                .keys()
                .filter(|id| !inner.confirmed.contains(id) && !inner.unsure.contains(id))
                .count(),
        }
    }
}

impl Tally {
    /// Fails unless nothing confirmed was lost and nothing unknown arrived.
    pub fn assert_nothing_lost(&self, case: &str) {
        eprintln!("{case}: {self:?}");
        assert!(
            self.lost.is_empty(),
            "{case}: {} confirmed event(s) lost: {:?}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(10)]
        );
        assert_eq!(self.strangers, 0, "{case}: deliveries nobody published");
    }
}
