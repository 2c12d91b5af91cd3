//! The failure path on Redis Streams: retries scheduled in Redis and scoped to
//! the failing group, the DLQ stream and its tooling, replay to one group.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_scope::{RedisScope, field};
use common::{OrderPlaced, eventually, placed};
use eventbus::{BusBuilder, Envelope, HandlerError, ReplayFilter};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

type Attempts = Arc<Mutex<BTreeMap<Uuid, Vec<Instant>>>>;

fn record(attempts: &Attempts, id: Uuid) -> usize {
    let mut map = attempts.lock().expect("not poisoned");
    let list = map.entry(id).or_default();
    list.push(Instant::now());
    list.len()
}

fn total(attempts: &Attempts) -> usize {
    attempts
        .lock()
        .expect("not poisoned")
        .values()
        .map(Vec::len)
        .sum()
}

fn fast_retries(builder: BusBuilder, base_ms: u64) -> BusBuilder {
    builder.configure(move |c| {
        c.max_retries = 3;
        c.retry_base_delay = Duration::from_millis(base_ms);
        c.retry_max_delay = Duration::from_secs(10);
        c.retry_jitter = 0.1;
    })
}

fn recorder(
    attempts: &Attempts,
) -> impl Fn(Arc<Envelope<OrderPlaced>>) -> std::future::Ready<Result<(), HandlerError>>
+ Send
+ Sync
+ 'static {
    let a = attempts.clone();
    move |e: Arc<Envelope<OrderPlaced>>| {
        record(&a, e.meta().event_id());
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn failures_are_retried_with_backoff_in_their_group_only_then_dead_lettered() {
    let scope = RedisScope::new("retries");
    let events: Vec<Envelope<OrderPlaced>> = (0..200).map(|i| placed(&format!("C-{i}"))).collect();
    let failing: BTreeSet<Uuid> = events
        .iter()
        .step_by(40)
        .map(|e| e.meta().event_id())
        .collect();
    assert_eq!(failing.len(), 5);
    let (flaky, steady, audit) = (
        Attempts::default(),
        Attempts::default(),
        Attempts::default(),
    );
    let (a, f) = (flaky.clone(), failing.clone());
    let bus = fast_retries(scope.builder(), 100)
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
        .handler::<OrderPlaced, _, _>("steady", recorder(&steady))
        .build()
        .await
        .expect("connects");
    let audit_bus = fast_retries(scope.builder(), 100)
        .configure(|c| c.consumer_group = "audit".into())
        .handler::<OrderPlaced, _, _>("audit", recorder(&audit))
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    audit_bus.start_consuming().await.expect("consumes");
    bus.publish(events).await.expect("published");
    let dlq = bus.dlq("default");
    eventually("five dead letters", WAIT, || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 5 }
    })
    .await;
    eventually("audit saw everything", WAIT, || {
        let n = total(&audit);
        async move { n == 200 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    audit_bus
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");

    let flaky = flaky.lock().expect("ok").clone();
    for (id, times) in &flaky {
        if failing.contains(id) {
            assert_eq!(times.len(), 4, "first try + 3 retries of {id}");
            let gaps: Vec<f64> = times
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64())
                .collect();
            for (n, gap) in gaps.iter().enumerate() {
                let nominal = 0.1 * 2f64.powi(n as i32);
                assert!(
                    *gap >= nominal * 0.9 - 0.01,
                    "retry {n} of {id} after {gap}s, nominal {nominal}s"
                );
            }
        } else {
            assert_eq!(times.len(), 1);
        }
    }
    // Only the failed handler runs again; the other group never sees a retry.
    assert!(steady.lock().expect("ok").values().all(|t| t.len() == 1));
    assert_eq!(total(&steady), 200);
    assert!(audit.lock().expect("ok").values().all(|t| t.len() == 1));
    assert_eq!(scope.pending("default") + scope.pending("audit"), 0);

    let messages = dlq.list(10).await.expect("list");
    assert_eq!(messages.len(), 5);
    let listed: BTreeSet<Uuid> = messages
        .iter()
        .map(|m| m.message_id.as_deref().expect("id").parse().expect("uuid"))
        .collect();
    assert_eq!(listed, failing);
    for m in &messages {
        assert_eq!(m.retry_count, Some(3));
        assert_eq!(m.handler.as_deref(), Some("flaky"));
        assert!(
            m.reason
                .as_deref()
                .is_some_and(|r| r.contains("cannot process")),
            "{m:?}"
        );
        assert_eq!(m.event_type.as_deref(), Some("OrderPlaced"));
        assert_eq!(
            m.headers.get("dlq_group").and_then(|v| v.as_str()),
            Some("default")
        );
    }
    // eventsource-py's fields of the DLQ entry are all there.
    let (_, fields) = &scope.entries(&scope.dlq())[0];
    for name in [
        "event_id",
        "event_type",
        "aggregate_id",
        "payload",
        "original_message_id",
        "retry_count",
        "dlq_timestamp",
    ] {
        assert!(field(fields, name).is_some(), "{name} in {fields:?}");
    }
    let stats = bus.stats();
    assert_eq!(stats.messages_sent_to_dlq, 5);
    assert_eq!(stats.events_processed_failed, 5);
    // The schedule is empty again.
    let mut conn = scope.conn();
    let scheduled: u64 = redis::cmd("ZCARD")
        .arg(format!("{}:retry:default:due", scope.prefix))
        .query(&mut conn)
        .expect("ZCARD");
    assert_eq!(scheduled, 0);
}

#[tokio::test]
async fn permanent_errors_skip_the_retries() {
    let scope = RedisScope::new("permanent");
    let attempts = Attempts::default();
    let a = attempts.clone();
    let bus = fast_retries(scope.builder(), 50)
        .handler::<OrderPlaced, _, _>("strict", move |e: Arc<Envelope<OrderPlaced>>| {
            record(&a, e.meta().event_id());
            std::future::ready(Err::<(), _>(HandlerError::permanent("invalid order")))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus.publish([placed("C")]).await.expect("published");
    let dlq = bus.dlq("default");
    eventually("dead-lettered", WAIT, || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 1 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(total(&attempts), 1, "no retry");
    let m = &dlq.list(1).await.expect("list")[0];
    assert_eq!(m.retry_count, Some(0));
    assert!(
        m.reason
            .as_deref()
            .is_some_and(|r| r.contains("invalid order"))
    );
}

/// A consumer named `first` fails an event once, its retry is scheduled in
/// Redis `base_ms` later, and the consumer stops before the retry is due.
async fn leave_a_scheduled_retry(scope: &RedisScope, base_ms: u64) {
    let first = Attempts::default();
    let a = first.clone();
    let bus = fast_retries(scope.builder(), base_ms)
        .configure(|c| c.consumer_name = Some("first".into()))
        .handler::<OrderPlaced, _, _>("flaky", move |e: Arc<Envelope<OrderPlaced>>| {
            record(&a, e.meta().event_id());
            std::future::ready(Err::<(), _>(HandlerError::new("down")))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let event = placed("C");
    bus.publish([event.clone()]).await.expect("published");
    let schedule = format!("{}:retry:default:due", scope.prefix);
    eventually("the retry is scheduled in Redis", WAIT, || {
        let mut conn = scope.conn();
        let n: u64 = redis::cmd("ZCARD")
            .arg(&schedule)
            .query(&mut conn)
            .unwrap_or(0);
        async move { n == 1 }
    })
    .await;
    // The first consumer goes away before the retry is due.
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    drop(bus);
    assert_eq!(total(&first), 1);
    assert_eq!(scope.pending("default"), 1, "still pending, not acked");
}

#[tokio::test]
async fn a_scheduled_retry_survives_its_consumer_and_runs_on_the_next_one() {
    let scope = RedisScope::new("crashsafe");
    leave_a_scheduled_retry(&scope, 1500).await;

    let second = Attempts::default();
    let next = scope
        .builder()
        .configure(|c| c.consumer_name = Some("second".into()))
        .handler::<OrderPlaced, _, _>("flaky", recorder(&second))
        .handler::<OrderPlaced, _, _>("other", move |_e: Arc<Envelope<OrderPlaced>>| {
            // Never failed: must not run on the retry.
            std::future::ready(Err::<(), _>(HandlerError::permanent("must not run")))
        })
        .build()
        .await
        .expect("connects");
    next.start_consuming().await.expect("consumes");
    eventually("the retry ran on the second consumer", WAIT, || {
        let n = total(&second);
        async move { n == 1 }
    })
    .await;
    next.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(scope.pending("default"), 0);
    assert_eq!(next.dlq("default").count().await.expect("count"), 0);
    let mut conn = scope.conn();
    let left: u64 = redis::cmd("HLEN")
        .arg(format!("{}:retry:default:state", scope.prefix))
        .query(&mut conn)
        .expect("HLEN");
    assert_eq!(left, 0, "retry state cleaned up");
}

/// On a quiet stream the reader holds every free in-flight permit while its
/// `XREADGROUP` blocks: a retry that falls due then must not wait for that
/// read to time out (`block_ms`, two minutes here) before it runs.
#[tokio::test]
async fn a_due_retry_does_not_wait_for_the_readers_blocking_read() {
    let scope = RedisScope::new("retry-wakes-reader");
    leave_a_scheduled_retry(&scope, 3000).await;
    let second = Attempts::default();
    let next = scope
        .builder()
        .configure(|c| {
            c.consumer_name = Some("second".into());
            c.block_ms = 120_000;
        })
        .handler::<OrderPlaced, _, _>("flaky", recorder(&second))
        .build()
        .await
        .expect("connects");
    next.start_consuming().await.expect("consumes");
    // Due about 3 s after it failed; the reader's read ends after 120 s.
    eventually(
        "the retry ran long before the blocking read timed out",
        Duration::from_secs(40),
        || {
            let n = total(&second);
            async move { n == 1 }
        },
    )
    .await;
    next.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(scope.pending("default"), 0);
}

#[tokio::test]
async fn dlq_tooling_lists_shows_replays_to_the_failed_group_only_and_purges() {
    let scope = RedisScope::new("dlqtools");
    let healthy = Arc::new(AtomicBool::new(false));
    let (billing, audit) = (Attempts::default(), Attempts::default());
    let (b, h) = (billing.clone(), healthy.clone());
    let bus = fast_retries(scope.builder(), 20)
        .configure(|c| c.max_retries = 1)
        .handler::<OrderPlaced, _, _>("billing", move |e: Arc<Envelope<OrderPlaced>>| {
            record(&b, e.meta().event_id());
            let ok = h.load(Ordering::SeqCst);
            std::future::ready(if ok {
                Ok(())
            } else {
                Err(HandlerError::new("billing down"))
            })
        })
        .build()
        .await
        .expect("connects");
    let audit_bus = scope
        .builder()
        .configure(|c| c.consumer_group = "audit".into())
        .handler::<OrderPlaced, _, _>("audit", recorder(&audit))
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    audit_bus.start_consuming().await.expect("consumes");
    let events: Vec<_> = (0..4).map(|i| placed(&format!("C-{i}"))).collect();
    bus.publish(events.clone()).await.expect("published");
    let dlq = bus.dlq("default");
    eventually("all four dead-lettered", WAIT, || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 4 }
    })
    .await;
    assert_eq!(
        audit_bus.dlq("audit").count().await.expect("count"),
        0,
        "per group"
    );
    let id0 = events[0].meta().event_id().to_string();
    let shown = dlq.show(&id0).await.expect("show").expect("found");
    assert_eq!(shown.message_id.as_deref(), Some(id0.as_str()));
    assert!(shown.body.contains("C-0"));
    assert!(dlq.show("no-such-id").await.expect("show").is_none());
    // The DLQ entry id works too.
    let entry_id = shown.headers["dlq_entry_id"]
        .as_str()
        .expect("entry id")
        .to_owned();
    assert!(dlq.show(&entry_id).await.expect("show").is_some());

    healthy.store(true, Ordering::SeqCst);
    assert!(dlq.replay(&id0).await.expect("replay"));
    assert!(
        !dlq.replay(&id0).await.expect("replay again"),
        "gone from the DLQ"
    );
    eventually("the replay is handled", WAIT, || {
        let n = billing
            .lock()
            .expect("ok")
            .get(&events[0].meta().event_id())
            .map_or(0, Vec::len);
        async move { n == 3 }
    })
    .await;
    assert_eq!(dlq.count().await.expect("count"), 3);
    let report = dlq
        .replay_all(&ReplayFilter::all().event_type("OrderShipped"))
        .await
        .expect("replay none");
    assert_eq!((report.replayed, report.kept), (0, 3));
    let report = dlq
        .replay_all(&ReplayFilter::all().event_type("OrderPlaced"))
        .await
        .expect("replay all");
    assert_eq!((report.replayed, report.kept), (2 + 1, 0));
    eventually("every replay handled", WAIT, || {
        let n = total(&billing);
        async move { n == 4 * 3 }
    })
    .await;
    assert_eq!(dlq.count().await.expect("count"), 0);
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    audit_bus
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
    // The audit group saw each event once: replays reached only billing.
    assert_eq!(total(&audit), 4);
    assert_eq!(scope.pending("default"), 0);
    // Purge.
    let mut conn = scope.conn();
    for _ in 0..2 {
        let _: String = redis::cmd("XADD")
            .arg(scope.dlq())
            .arg("*")
            .arg("event_type")
            .arg("OrderPlaced")
            .arg("payload")
            .arg("{}")
            .query(&mut conn)
            .expect("XADD");
    }
    assert_eq!(
        dlq.count().await.expect("count"),
        2,
        "python-made entries: default group"
    );
    assert_eq!(dlq.purge().await.expect("purge"), 2);
    assert_eq!(dlq.count().await.expect("count"), 0);
}

#[tokio::test]
async fn a_panicking_handler_leaves_only_its_entry_pending_and_the_batch_goes_on() {
    let scope = RedisScope::new("panic");
    let handled = Attempts::default();
    let h = handled.clone();
    let bus = scope
        .builder()
        .configure(|c| c.pending_idle_ms = 600_000)
        .handler::<OrderPlaced, _, _>("h", move |e: Arc<Envelope<OrderPlaced>>| {
            assert_ne!(e.customer_id, "boom", "this handler panics on purpose");
            record(&h, e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    // One backlog, so the panicking entry is read in the same batch as others.
    let mut events: Vec<Envelope<OrderPlaced>> =
        (0..20).map(|i| placed(&format!("P-{i}"))).collect();
    events.insert(10, placed("boom"));
    bus.publish(events).await.expect("published");
    bus.start_consuming().await.expect("consumes");
    eventually("the other 20 handled", WAIT, || {
        let n = total(&handled);
        async move { n == 20 }
    })
    .await;
    // Still consuming after the panic.
    let after = placed("after");
    let after_id = after.meta().event_id();
    bus.publish([after]).await.expect("published");
    eventually("the next event handled", WAIT, || {
        let seen = handled.lock().expect("ok").contains_key(&after_id);
        async move { seen }
    })
    .await;
    // The panicking entry is neither acked nor lost: it stays pending for recovery.
    eventually("only the panicking entry pending", WAIT, || {
        let pending = scope.pending("default");
        async move { pending == 1 }
    })
    .await;
    assert_eq!(total(&handled), 21);
    bus.shutdown(Duration::from_secs(5)).await.expect("stops");
}
