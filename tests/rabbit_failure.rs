//! The failure path against the real broker: retries waiting on the broker,
//! the dead-letter queue and its tooling.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{OrderPlaced, OrderShipped, Scope, placed, shipped};
use eventbus::{AnyEnvelope, Bus, BusBuilder, Envelope, HandlerError, ReplayFilter};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

type Attempts = Arc<Mutex<BTreeMap<Uuid, Vec<Instant>>>>;

fn record(attempts: &Attempts, id: Uuid) -> usize {
    let mut map = attempts.lock().expect("not poisoned");
    let list = map.entry(id).or_default();
    list.push(Instant::now());
    list.len()
}

fn fast_retries(builder: BusBuilder, base_ms: u64) -> BusBuilder {
    builder.configure(move |c| {
        c.max_retries = 3;
        c.retry_base_delay = Duration::from_millis(base_ms);
        c.retry_max_delay = Duration::from_secs(10);
        c.retry_jitter = 0.1;
        c.prefetch_count = 50;
    })
}

#[tokio::test]
async fn failing_events_are_retried_with_backoff_then_dead_lettered_once() {
    let scope = Scope::new("retries");
    let audit_group = scope.group("audit");
    let events: Vec<Envelope<OrderPlaced>> = (0..1000).map(|i| placed(&format!("C-{i}"))).collect();
    let failing: BTreeSet<Uuid> = events
        .iter()
        .step_by(100)
        .map(|e| e.meta().event_id())
        .collect();
    assert_eq!(failing.len(), 10);

    let attempts = Attempts::default();
    let (a, f) = (attempts.clone(), failing.clone());
    let bus = fast_retries(scope.builder(), 200)
        .handler::<OrderPlaced, _, _>("flaky", move |e: Arc<Envelope<OrderPlaced>>| {
            let id = e.meta().event_id();
            record(&a, id);
            let fails = f.contains(&id);
            async move {
                if fails {
                    return Err(HandlerError::new(format!("cannot process {id}")));
                }
                Ok(())
            }
        })
        .build()
        .await
        .expect("connects");
    let seen_by_audit = Attempts::default();
    let s = seen_by_audit.clone();
    let audit = fast_retries(scope.builder(), 200)
        .configure(move |c| c.consumer_group = audit_group)
        .handler::<OrderPlaced, _, _>("audit", move |e: Arc<Envelope<OrderPlaced>>| {
            record(&s, e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    audit.start_consuming().await.expect("consumes");
    let report = bus.publish(events.clone()).await.expect("confirmed");
    assert_eq!(report.published, 1000);

    let dlq = bus.dlq("default");
    common::eventually("10 messages in the DLQ", WAIT, || async {
        dlq.count().await.ok() == Some(10)
    })
    .await;
    common::eventually("the audit group saw all 1000", WAIT, || async {
        seen_by_audit.lock().expect("not poisoned").len() == 1000
    })
    .await;
    let attempts = attempts.lock().expect("not poisoned").clone();
    assert_eq!(attempts.len(), 1000);
    for (id, times) in &attempts {
        if failing.contains(id) {
            assert_eq!(times.len(), 4, "max_retries + 1 attempts for {id}");
            for (k, pair) in times.windows(2).enumerate() {
                let gap = pair[1] - pair[0];
                let nominal = 0.2 * 2f64.powi(k as i32);
                assert!(
                    gap.as_secs_f64() >= nominal * 0.9 - 0.005,
                    "retry {k} of {id} after {gap:?}"
                );
            }
        } else {
            assert_eq!(times.len(), 1, "healthy event {id} handled once");
        }
    }
    assert!(
        seen_by_audit
            .lock()
            .expect("not poisoned")
            .values()
            .all(|t| t.len() == 1),
        "the other group saw each event exactly once"
    );

    let parked = dlq.list(100).await.expect("lists");
    assert_eq!(
        dlq.count().await.expect("count"),
        10,
        "listing consumes nothing"
    );
    let ids: BTreeSet<Uuid> = parked
        .iter()
        .map(|m| Uuid::parse_str(m.message_id.as_deref().expect("message id")).expect("uuid"))
        .collect();
    assert_eq!(ids, failing);
    for m in &parked {
        assert!(
            m.reason
                .as_deref()
                .is_some_and(|r| r.contains("cannot process")),
            "{m:?}"
        );
        assert_eq!(m.error_type.as_deref(), Some("String"), "{m:?}");
        assert_eq!(m.retry_count, Some(3));
        assert_eq!(m.handler.as_deref(), Some("flaky"));
        assert_eq!(m.original_routing_key.as_deref(), Some("Order.OrderPlaced"));
        assert_eq!(m.event_type.as_deref(), Some("OrderPlaced"));
        assert!(m.dead_lettered_at.is_some());
    }
    assert_eq!(bus.stats().messages_sent_to_dlq, 10);
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    audit
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn only_the_handlers_that_failed_run_again() {
    let scope = Scope::new("only-failed");
    let steady = Arc::new(AtomicUsize::new(0));
    let shaky = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (s, k, d) = (steady.clone(), shaky.clone(), done.clone());
    let bus = fast_retries(scope.builder(), 100)
        .handler::<OrderPlaced, _, _>("steady", move |_e| {
            s.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .handler::<OrderPlaced, _, _>("shaky", move |_e| {
            let n = k.fetch_add(1, Ordering::SeqCst);
            if n > 0 {
                d.notify_one();
            }
            std::future::ready(if n == 0 {
                Err(HandlerError::new("first try fails"))
            } else {
                Ok(())
            })
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus.publish([placed("once")]).await.expect("confirmed");
    tokio::time::timeout(WAIT, done.notified())
        .await
        .expect("the retry ran");
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    assert_eq!(shaky.load(Ordering::SeqCst), 2);
    assert_eq!(
        steady.load(Ordering::SeqCst),
        1,
        "the handler that succeeded did not run again"
    );
    assert_eq!(
        bus.dlq("default").count().await.ok(),
        None,
        "shut down: no connection"
    );
}

#[tokio::test]
async fn permanent_errors_skip_retries_and_healthy_messages_are_not_delayed() {
    let scope = Scope::new("permanent");
    let attempts = Attempts::default();
    let healthy_at = Arc::new(Mutex::new(None));
    let (a, h) = (attempts.clone(), healthy_at.clone());
    let bus = fast_retries(scope.builder(), 1500)
        .handler::<OrderPlaced, _, _>("judge", move |e: Arc<Envelope<OrderPlaced>>| {
            let n = record(&a, e.meta().event_id());
            let result = match e.customer_id.as_str() {
                "invalid" => Err(HandlerError::permanent("customer id is invalid")),
                "transient" if n == 1 => Err(HandlerError::new("database busy")),
                _ => {
                    if e.customer_id == "healthy" {
                        *h.lock().expect("not poisoned") = Some(Instant::now());
                    }
                    Ok(())
                }
            };
            std::future::ready(result)
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let invalid = placed("invalid");
    let transient = placed("transient");
    bus.publish([invalid.clone(), transient.clone()])
        .await
        .expect("confirmed");
    bus.publish([placed("healthy")]).await.expect("confirmed");
    let dlq = bus.dlq("default");
    common::eventually("the invalid event in the DLQ", WAIT, || async {
        dlq.count().await.ok() == Some(1)
    })
    .await;
    common::eventually("the transient event retried", WAIT, || async {
        attempts
            .lock()
            .expect("not poisoned")
            .get(&transient.meta().event_id())
            .is_some_and(|t| t.len() == 2)
    })
    .await;
    let attempts = attempts.lock().expect("not poisoned").clone();
    assert_eq!(
        attempts[&invalid.meta().event_id()].len(),
        1,
        "a permanent error is not retried"
    );
    let retried = &attempts[&transient.meta().event_id()];
    let healthy = healthy_at
        .lock()
        .expect("not poisoned")
        .expect("healthy handled");
    assert!(
        healthy < retried[1],
        "the healthy event did not wait behind the retry"
    );
    assert!(retried[1] - retried[0] >= Duration::from_millis(1350));
    let parked = dlq.list(10).await.expect("lists");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].retry_count, Some(0));
    assert!(
        parked[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("customer id is invalid"))
    );
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn replay_one_replay_all_and_purge() {
    let scope = Scope::new("replay");
    let other_group = scope.group("other");
    let fixed = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (f, h) = (fixed.clone(), handled.clone());
    let bus = fast_retries(scope.builder(), 50)
        .handler::<OrderPlaced, _, _>("buggy", {
            let (f, h) = (f.clone(), h.clone());
            move |e: Arc<Envelope<OrderPlaced>>| {
                let result = if f.load(Ordering::SeqCst) {
                    h.lock().expect("not poisoned").push(e.customer_id.clone());
                    Ok(())
                } else {
                    Err(HandlerError::permanent("bug #12"))
                };
                std::future::ready(result)
            }
        })
        .handler::<OrderShipped, _, _>("buggy-shipping", move |e: Arc<Envelope<OrderShipped>>| {
            let result = if f.load(Ordering::SeqCst) {
                h.lock()
                    .expect("not poisoned")
                    .push(e.tracking_number.clone());
                Ok(())
            } else {
                Err(HandlerError::permanent("bug #13"))
            };
            std::future::ready(result)
        })
        .build()
        .await
        .expect("connects");
    let other_seen = Arc::new(AtomicUsize::new(0));
    let o = other_seen.clone();
    let other = scope
        .builder()
        .configure(move |c| c.consumer_group = other_group)
        .wildcard_handler("other", None, move |_e: AnyEnvelope| {
            o.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .event::<OrderPlaced>()
        .event::<OrderShipped>()
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    other.start_consuming().await.expect("consumes");
    let first = placed("P-1");
    bus.publish([
        AnyEnvelope::from(first.clone()),
        placed("P-2").into(),
        shipped("S-1").into(),
    ])
    .await
    .expect("confirmed");
    let dlq = bus.dlq("default");
    common::eventually("three parked", WAIT, || async {
        dlq.count().await.ok() == Some(3)
    })
    .await;
    common::eventually("the other group saw three", WAIT, || async {
        other_seen.load(Ordering::SeqCst) == 3
    })
    .await;

    // The bug is fixed: replay one, by id.
    fixed.store(true, Ordering::SeqCst);
    let id = first.meta().event_id().to_string();
    assert!(dlq.show(&id).await.expect("shows").is_some());
    assert!(dlq.replay(&id).await.expect("replays"));
    assert!(
        !dlq.replay(&Uuid::new_v4().to_string())
            .await
            .expect("no such id")
    );
    common::eventually("P-1 handled", WAIT, || async {
        handled
            .lock()
            .expect("not poisoned")
            .contains(&"P-1".to_owned())
    })
    .await;
    assert_eq!(dlq.count().await.expect("count"), 2);
    assert!(
        dlq.show(&id).await.expect("shows").is_none(),
        "removed after the replay was confirmed"
    );

    // Replay all of one event type; the rest stays.
    let report = dlq
        .replay_all(&ReplayFilter::all().event_type("OrderShipped"))
        .await
        .expect("replays");
    assert_eq!((report.replayed, report.kept), (1, 1));
    common::eventually("S-1 handled", WAIT, || async {
        handled
            .lock()
            .expect("not poisoned")
            .contains(&"S-1".to_owned())
    })
    .await;
    // Age filter: nothing is an hour old.
    let report = dlq
        .replay_all(&ReplayFilter::all().older_than(Duration::from_secs(3600)))
        .await
        .expect("replays");
    assert_eq!((report.replayed, report.kept), (0, 1));

    assert_eq!(dlq.purge().await.expect("purges"), 1);
    assert_eq!(dlq.count().await.expect("count"), 0);
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    other
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    assert_eq!(
        other_seen.load(Ordering::SeqCst),
        3,
        "replays never reached the other group"
    );
    let handled = handled.lock().expect("not poisoned").clone();
    assert_eq!(
        handled.iter().filter(|h| *h == "P-1").count(),
        1,
        "{handled:?}"
    );
}

#[tokio::test]
async fn dlq_tooling_needs_the_broker() {
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .build()
        .await
        .expect("builds");
    let err = bus
        .dlq("default")
        .list(10)
        .await
        .expect_err("memory has no DLQ");
    assert!(err.to_string().contains("memory"), "{err}");
}

#[tokio::test]
async fn dlq_ttl_and_max_length_are_set_on_the_dead_letter_queue() {
    let scope = Scope::new("dlq-args");
    let bus = scope
        .builder()
        .configure(|c| {
            c.dlq_message_ttl = Some(60_000);
            c.dlq_max_length = Some(100);
        })
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "arguments",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let dlq = format!("{}.dlq", scope.queue("default"));
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split('\t').next() == Some(dlq.as_str()))
        .map(str::to_owned)
        .expect("the DLQ exists");
    assert!(line.contains("{\"x-message-ttl\",60000}"), "{line}");
    assert!(line.contains("{\"x-max-length\",100}"), "{line}");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}
