//! Mixed fleets on RabbitMQ, eventbus only: members of one consumer group
//! that handle different event types (an older and a newer version, or a
//! service that only publishes a type), and what the group's queue does with
//! an event no member handles. The same with eventsource-py is in
//! tests/interop.rs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OrderPlaced, OrderShipped, Scope, shipped};
use eventbus::{Bus, Envelope, ExchangeType, HandlerError};

const WAIT: Duration = Duration::from_secs(60);

/// A member of `group` that knows `OrderShipped` but handles only `OrderPlaced`.
async fn member_without_shipped_handler(scope: &Scope, group: &str, kind: ExchangeType) -> Bus {
    let group = group.to_owned();
    scope
        .builder()
        .configure(move |c| {
            c.exchange_type = kind;
            c.consumer_group = group;
            c.unhandled_delay = Duration::from_millis(100);
            c.max_unhandled_deferrals = 100;
        })
        .event::<OrderShipped>()
        .handler::<OrderPlaced, _, _>("placed", |_e: Arc<Envelope<OrderPlaced>>| async {
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .expect("connects")
}

#[tokio::test]
async fn a_member_without_the_handler_leaves_the_event_to_one_that_has_it() {
    for kind in [ExchangeType::Topic, ExchangeType::Direct] {
        let scope = Scope::new(&format!("mixed-{kind}"));
        let group = scope.group("billing");
        let old = member_without_shipped_handler(&scope, &group, kind).await;
        let seen: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
        let s = seen.clone();
        let new = scope
            .builder()
            .configure({
                let group = group.clone();
                move |c| {
                    c.exchange_type = kind;
                    c.consumer_group = group;
                }
            })
            .handler::<OrderShipped, _, _>("shipped", move |e: Arc<Envelope<OrderShipped>>| {
                *s.lock()
                    .expect("not poisoned")
                    .entry(e.tracking_number.clone())
                    .or_default() += 1;
                async { Ok::<_, HandlerError>(()) }
            })
            .build()
            .await
            .expect("connects");
        // Only the member without the handler consumes at first: it gets all 20.
        old.start_consuming().await.expect("consumes");
        let events: Vec<_> = (0..20).map(|i| shipped(&format!("T-{i}"))).collect();
        old.publish(events).await.expect("confirmed");
        common::eventually("the old member deferred all 20", WAIT, || async {
            old.stats().events_deferred_unhandled >= 20
        })
        .await;
        assert_eq!(old.stats().events_processed_success, 0, "{kind}");
        // Then the member with the handler joins: every event reaches it, once.
        new.start_consuming().await.expect("consumes");
        common::eventually("the new member handled all 20", WAIT, || async {
            seen.lock().expect("not poisoned").len() == 20
        })
        .await;
        let queue = scope.queue(&group);
        common::eventually("nothing left waiting", WAIT, || async {
            common::message_count(&queue).await == 0
                && common::message_count(&format!("{queue}.unhandled")).await == 0
        })
        .await;
        assert_eq!(old.dlq(&group).count().await.ok(), Some(0), "{kind}");
        old.shutdown(Duration::from_secs(5))
            .await
            .expect("shuts down");
        new.shutdown(Duration::from_secs(5))
            .await
            .expect("shuts down");
        let seen = seen.lock().expect("not poisoned").clone();
        assert!(seen.values().all(|n| *n == 1), "{kind}: {seen:?}");
        let stats = old.stats();
        assert_eq!(stats.messages_sent_to_dlq, 0, "{kind}");
        assert_eq!(stats.events_processed_failed, 0, "{kind}");
        assert_eq!(stats.handlers_invoked, 0, "{kind}");
        assert_eq!(new.stats().messages_sent_to_dlq, 0, "{kind}");
    }
}

#[tokio::test]
async fn an_event_no_member_handles_is_dead_lettered_with_that_reason() {
    for kind in [ExchangeType::Topic, ExchangeType::Direct] {
        let scope = Scope::new(&format!("unhandled-{kind}"));
        let group = scope.group("billing");
        let bus = scope
            .builder()
            .configure({
                let group = group.clone();
                move |c| {
                    c.exchange_type = kind;
                    c.consumer_group = group;
                    c.unhandled_delay = Duration::from_millis(50);
                    c.max_unhandled_deferrals = 2;
                }
            })
            .event::<OrderShipped>()
            .handler::<OrderPlaced, _, _>("placed", |_e: Arc<Envelope<OrderPlaced>>| async {
                Ok::<_, HandlerError>(())
            })
            .build()
            .await
            .expect("connects");
        // The queue is bound for the key (as by another member, now gone).
        bus.bind_event_type::<OrderShipped>().await.expect("binds");
        bus.start_consuming().await.expect("consumes");
        let events = [shipped("A"), shipped("B"), shipped("C")];
        bus.publish(events).await.expect("confirmed");
        let dlq = bus.dlq(&group);
        common::eventually("three dead letters", WAIT, || async {
            dlq.count().await.ok() == Some(3)
        })
        .await;
        for m in dlq.list(10).await.expect("lists") {
            assert_eq!(
                m.reason.as_deref(),
                Some("no member of group billing handles Order.OrderShipped"),
                "{kind}"
            );
            assert_eq!(m.error_type.as_deref(), Some("UnhandledEvent"));
            assert_eq!(
                m.original_routing_key.as_deref(),
                Some("Order.OrderShipped")
            );
            // Counted apart from handler retries.
            assert_eq!(m.retry_count, Some(0));
            assert_eq!(m.headers["x-unhandled-count"], serde_json::json!(2));
        }
        let stats = bus.stats();
        assert_eq!(stats.events_deferred_unhandled, 6, "{kind}");
        let metrics = bus.metrics_text();
        assert!(
            metrics.contains("eventbus_deferred_unhandled_total 6"),
            "{metrics}"
        );
        assert_eq!(stats.messages_sent_to_dlq, 3, "{kind}");
        assert_eq!(stats.handlers_invoked, 0, "{kind}");
        bus.shutdown(Duration::from_secs(5))
            .await
            .expect("shuts down");
    }
}

/// A retry names the handlers that still have to run. A member of another
/// version, without them, leaves the retry to the group instead of acking it.
#[tokio::test]
async fn a_retry_for_a_handler_only_another_member_has_is_left_to_that_member() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let scope = Scope::new("mixed-retry");
    let group = scope.group("billing");
    let configure = {
        let group = group.clone();
        move |c: &mut eventbus::Config| {
            c.consumer_group = group.clone();
            c.retry_base_delay = Duration::from_millis(300);
            c.retry_jitter = 0.0;
            c.unhandled_delay = Duration::from_millis(50);
            c.max_unhandled_deferrals = 1000;
        }
    };
    let (ledger_calls, old_audit_calls) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (l, a) = (ledger_calls.clone(), old_audit_calls.clone());
    // The old version: `ledger` (fails its first call) and `audit`.
    let old = scope
        .builder()
        .configure(configure.clone())
        .handler::<OrderPlaced, _, _>("ledger", move |_e: Arc<Envelope<OrderPlaced>>| {
            let first = l.fetch_add(1, SeqCst) == 0;
            async move {
                if first {
                    Err(HandlerError::new("the ledger is busy"))
                } else {
                    Ok(())
                }
            }
        })
        .handler::<OrderPlaced, _, _>("audit", move |_e: Arc<Envelope<OrderPlaced>>| {
            a.fetch_add(1, SeqCst);
            async { Ok::<_, HandlerError>(()) }
        })
        .build()
        .await
        .expect("connects");
    // The new version: `audit` only.
    let new_audit_calls = Arc::new(AtomicUsize::new(0));
    let n = new_audit_calls.clone();
    let new = scope
        .builder()
        .configure(configure)
        .handler::<OrderPlaced, _, _>("audit", move |_e: Arc<Envelope<OrderPlaced>>| {
            n.fetch_add(1, SeqCst);
            async { Ok::<_, HandlerError>(()) }
        })
        .build()
        .await
        .expect("connects");
    old.start_consuming().await.expect("consumes");
    old.publish([common::placed("p")]).await.expect("confirmed");
    common::eventually("the first attempt failed", WAIT, || async {
        ledger_calls.load(SeqCst) == 1 && old_audit_calls.load(SeqCst) == 1
    })
    .await;
    // The old version goes away while the retry waits; the new one takes over.
    old.stop_consuming().await.expect("stops");
    new.start_consuming().await.expect("consumes");
    common::eventually("the new member handed the retry on", WAIT, || async {
        new.stats().events_deferred_unhandled >= 1
    })
    .await;
    assert_eq!(new_audit_calls.load(SeqCst), 0, "audit already succeeded");
    // The old version is back: its `ledger` gets the retry.
    old.start_consuming().await.expect("consumes again");
    common::eventually("ledger ran again", WAIT, || async {
        ledger_calls.load(SeqCst) == 2
    })
    .await;
    assert_eq!(old_audit_calls.load(SeqCst), 1);
    assert_eq!(new_audit_calls.load(SeqCst), 0);
    assert_eq!(old.dlq(&group).count().await.ok(), Some(0));
    old.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    new.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}
