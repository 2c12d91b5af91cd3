//! The dispatch table: who handles what, per group; subscriptions by kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use super::{Dispatcher, SubscriptionKind};
use crate::handler::{HandlerEntry, Invoke};
use crate::registration::EventRegistration;
use crate::stats::Stats;
use crate::{AnyEnvelope, DomainEvent, Envelope, HandlerError};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {}

fn counting(
    name: &str,
    group: &str,
    event: Option<EventRegistration>,
    hits: &Arc<AtomicUsize>,
    fail: bool,
) -> HandlerEntry {
    let hits = hits.clone();
    HandlerEntry::new(
        name,
        group,
        event,
        Invoke::any(move |_: AnyEnvelope| {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                if fail {
                    Err(HandlerError::new("boom"))
                } else {
                    Ok(())
                }
            }
        }),
    )
}

fn placed() -> AnyEnvelope {
    Envelope::new(uuid::Uuid::new_v4(), OrderPlaced {}).into()
}

#[test]
fn tables_index_typed_and_wildcard_handlers_per_group() {
    let d = Dispatcher::default();
    let hits = Arc::new(AtomicUsize::new(0));
    d.add(counting(
        "p",
        "a",
        Some(EventRegistration::of::<OrderPlaced>()),
        &hits,
        false,
    ));
    d.add(counting(
        "s",
        "a",
        Some(EventRegistration::of::<OrderShipped>()),
        &hits,
        false,
    ));
    d.add(counting("all", "b", None, &hits, false));
    let t = d.snapshot();
    let a = &t.groups[&Arc::<str>::from("a")];
    let b = &t.groups[&Arc::<str>::from("b")];
    let names = |it: &mut dyn Iterator<Item = &Arc<HandlerEntry>>| {
        it.map(|h| h.name.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names(&mut a.handlers_for("OrderPlaced")), ["p"]);
    assert!(a.takes("OrderShipped") && !a.takes("Other"));
    assert!(!a.has_wildcard());
    assert_eq!(
        a.events().map(|e| e.event_type).collect::<Vec<_>>(),
        ["OrderPlaced", "OrderShipped"]
    );
    assert_eq!(names(&mut b.handlers_for("Anything")), ["all"]);
    assert!(b.takes("Other") && b.has_wildcard());
    assert_eq!(d.len(), 3);
}

#[test]
fn unsubscribe_removes_only_the_given_kind() {
    let d = Dispatcher::default();
    let hits = Arc::new(AtomicUsize::new(0));
    let typed = d.add(counting(
        "p",
        "a",
        Some(EventRegistration::of::<OrderPlaced>()),
        &hits,
        false,
    ));
    let wild = d.add(counting("all", "a", None, &hits, false));
    assert!(!d.remove(typed, SubscriptionKind::Wildcard));
    assert!(!d.remove(wild, SubscriptionKind::Typed));
    assert!(d.remove(typed, SubscriptionKind::Typed));
    assert!(!d.remove(typed, SubscriptionKind::Typed), "already gone");
    assert!(d.remove(wild, SubscriptionKind::Wildcard));
    assert!(d.snapshot().groups.is_empty());
}

#[tokio::test]
async fn dispatch_isolates_failures_and_reruns_only_named_handlers() {
    let d = Dispatcher::default();
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    d.add(counting(
        "ok",
        "a",
        Some(EventRegistration::of::<OrderPlaced>()),
        &ok,
        false,
    ));
    d.add(counting("bad", "a", None, &bad, true));
    let stats = Stats::default();
    let table = d.snapshot();
    let out = d.dispatch(&table, "a", &placed(), &stats).await;
    assert_eq!(out.failures.len(), 1);
    assert_eq!(&*out.failures[0].0, "bad");
    assert_eq!(
        (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst)),
        (1, 1)
    );
    let only = vec!["bad".to_owned()];
    d.dispatch_only(&table, "a", &placed(), &stats, Some(&only))
        .await;
    assert_eq!(
        (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst)),
        (1, 2)
    );
    let none = d.dispatch(&table, "no-such-group", &placed(), &stats).await;
    assert!(none.failures.is_empty());
}
