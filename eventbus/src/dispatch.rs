//! Who handles what, per consumer group, and calling them with errors isolated.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use tracing::Instrument as _;

use futures_util::FutureExt as _;
use futures_util::future::join_all;

use crate::envelope::AnyEnvelope;
use crate::error::HandlerError;
use crate::handler::HandlerEntry;
use crate::registration::EventRegistration;
use crate::stats::{Stats, add};

/// Identifies one subscription, for [`Bus::unsubscribe`](crate::Bus::unsubscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(u64);

/// The handlers of one consumer group, indexed by event type.
#[derive(Debug, Default)]
pub(crate) struct GroupTable {
    by_type: HashMap<&'static str, Vec<Arc<HandlerEntry>>>,
    wildcard: Vec<Arc<HandlerEntry>>,
    /// The event types handled by name (for bindings), sorted.
    events: BTreeMap<&'static str, EventRegistration>,
}

impl GroupTable {
    pub(crate) fn handlers_for<'a>(
        &'a self,
        event_type: &str,
    ) -> impl Iterator<Item = &'a Arc<HandlerEntry>> + 'a {
        self.by_type
            .get(event_type)
            .into_iter()
            .flatten()
            .chain(self.wildcard.iter())
    }

    /// Does this group take every event?
    pub(crate) fn has_wildcard(&self) -> bool {
        !self.wildcard.is_empty()
    }

    /// The event types this group's typed handlers take, sorted by name.
    pub(crate) fn events(&self) -> impl Iterator<Item = &EventRegistration> {
        self.events.values()
    }

    /// Every handler's name, sorted, each once.
    pub(crate) fn handler_names(&self) -> std::collections::BTreeSet<&str> {
        self.by_type
            .values()
            .flatten()
            .chain(&self.wildcard)
            .map(|entry| &*entry.name)
            .collect()
    }

    pub(crate) fn takes(&self, event_type: &str) -> bool {
        self.has_wildcard() || self.by_type.contains_key(event_type)
    }
}

/// An immutable snapshot: rebuilt on every (rare) subscription change, read on every event.
#[derive(Debug, Default)]
pub(crate) struct DispatchTable {
    pub(crate) groups: BTreeMap<Arc<str>, GroupTable>,
}

impl DispatchTable {
    fn build(entries: &[(SubscriptionId, Arc<HandlerEntry>)]) -> Self {
        let mut groups: BTreeMap<Arc<str>, GroupTable> = BTreeMap::new();
        for (_, entry) in entries {
            let group = groups.entry(entry.group.clone()).or_default();
            match entry.event {
                Some(event) => {
                    group.events.insert(event.event_type, event);
                    group
                        .by_type
                        .entry(event.event_type)
                        .or_default()
                        .push(entry.clone());
                }
                None => group.wildcard.push(entry.clone()),
            }
        }
        Self { groups }
    }
}

#[derive(Debug, Default)]
struct Subscriptions {
    next_id: u64,
    entries: Vec<(SubscriptionId, Arc<HandlerEntry>)>,
}

/// The mutable set of subscriptions and its current snapshot.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    subscriptions: Mutex<Subscriptions>,
    table: RwLock<Arc<DispatchTable>>,
    /// Bumped on every change, so the broker transport can update its bindings.
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self {
            subscriptions: Mutex::default(),
            table: RwLock::default(),
            version: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Which subscriptions an unsubscribe may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscriptionKind {
    /// Handlers of one event type.
    Typed,
    /// Handlers of every event.
    Wildcard,
}

/// The result of calling one group's handlers for one event.
#[derive(Debug, Default)]
pub(crate) struct DispatchOutcome {
    pub(crate) failures: Vec<(Arc<str>, HandlerError)>,
}

impl DispatchOutcome {
    /// `handler: error; handler: error`.
    pub(crate) fn describe_failures(&self) -> String {
        self.failures
            .iter()
            .map(|(name, error)| format!("{name}: {error}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Dispatcher {
    pub(crate) fn snapshot(&self) -> Arc<DispatchTable> {
        match self.table.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update<R>(&self, change: impl FnOnce(&mut Subscriptions) -> R) -> R {
        let mut subs = self
            .subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = change(&mut subs);
        let table = Arc::new(DispatchTable::build(&subs.entries));
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = table;
        self.version.send_modify(|v| *v += 1);
        result
    }

    /// Notified on every subscription change.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub(crate) fn add(&self, entry: HandlerEntry) -> SubscriptionId {
        self.update(|subs| {
            subs.next_id += 1;
            let id = SubscriptionId(subs.next_id);
            subs.entries.push((id, Arc::new(entry)));
            id
        })
    }

    /// Removes subscription `id` if it is of `kind`.
    pub(crate) fn remove(&self, id: SubscriptionId, kind: SubscriptionKind) -> bool {
        self.update(|subs| {
            let before = subs.entries.len();
            subs.entries.retain(|(sid, entry)| {
                let entry_kind = if entry.event.is_some() {
                    SubscriptionKind::Typed
                } else {
                    SubscriptionKind::Wildcard
                };
                *sid != id || entry_kind != kind
            });
            subs.entries.len() != before
        })
    }

    pub(crate) fn clear(&self) {
        self.update(|subs| subs.entries.clear());
    }

    /// How many subscriptions there are.
    pub(crate) fn len(&self) -> usize {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries
            .len()
    }

    /// Calls every handler of `group` that takes `event`, concurrently; one
    /// failing handler does not stop the others. Each failure is counted and
    /// returned with the handler's name (logged at debug level: the transport
    /// logs the event's outcome).
    pub(crate) async fn dispatch(
        &self,
        table: &DispatchTable,
        group: &str,
        event: &AnyEnvelope,
        stats: &Stats,
    ) -> DispatchOutcome {
        self.dispatch_only(table, group, event, stats, None).await
    }

    /// [`Dispatcher::dispatch`], calling only the handlers named in `only` when given
    /// (a retry runs only the handlers that failed).
    pub(crate) async fn dispatch_only(
        &self,
        table: &DispatchTable,
        group: &str,
        event: &AnyEnvelope,
        stats: &Stats,
        only: Option<&[String]>,
    ) -> DispatchOutcome {
        let Some(handlers) = table.groups.get(group) else {
            return DispatchOutcome::default();
        };
        let meta = event.meta();
        let selected = handlers
            .handlers_for(meta.event_type())
            .filter(|entry| only.is_none_or(|names| names.iter().any(|n| **n == *entry.name)));
        let _in_flight = stats.metrics.in_flight();
        let calls = selected.map(|entry| {
            let span = tracing::debug_span!(
                "handle",
                otel.name = %format!("handle {}", entry.name),
                otel.kind = "internal",
                messaging.consumer.group.name = %entry.group,
                eventsource.handler = %entry.name,
                eventsource.event.id = %meta.event_id(),
                eventsource.event.type = %meta.event_type(),
                eventsource.aggregate.id = %meta.aggregate_id(),
            );
            async move {
                let started = std::time::Instant::now();
                // A panic is this handler's failure, retried and dead-lettered
                // like an error: unwinding further would leave its delivery
                // unsettled (on RabbitMQ, every later ack of the channel too).
                // Called inside the guarded future: a closure handler's code
                // before its first await runs in `call` itself.
                let result = std::panic::AssertUnwindSafe(async { entry.invoke.call(event).await })
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|payload| Err(HandlerError::panicked(&*payload)));
                (entry, result, started.elapsed())
            }
            .instrument(span)
        });
        // Collected first: `join_all` of an iterator without an upper bound
        // (`handlers_for`'s) polls through a `FuturesOrdered`, a task
        // allocated per handler; the usual single handler needs no join.
        let mut calls: Vec<_> = calls.collect();
        let results = if calls.len() == 1
            && let Some(call) = calls.pop()
        {
            vec![call.await]
        } else {
            join_all(calls).await
        };
        let mut outcome = DispatchOutcome {
            failures: Vec::new(),
        };
        add(&stats.handlers_invoked, results.len() as u64);
        for (entry, result, took) in results {
            let label = match &result {
                Ok(()) => "success",
                Err(error) if error.is_permanent() => "permanent_error",
                Err(_) => "error",
            };
            stats.metrics.handler_done(
                &entry.group,
                &entry.name,
                meta.event_type.clone(),
                label,
                took,
            );
            if let Err(error) = result {
                add(&stats.handler_errors, 1);
                stats.last_error_at.now();
                // The transport logs the event's outcome once (retry, dead
                // letter, failure); this is the per-handler detail.
                tracing::debug!(
                    handler = %entry.name,
                    group = %entry.group,
                    event_type = %meta.event_type(),
                    event_id = %meta.event_id(),
                    permanent = error.is_permanent(),
                    error = %error,
                    "event handler failed"
                );
                outcome.failures.push((entry.name.clone(), error));
            }
        }
        outcome
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
