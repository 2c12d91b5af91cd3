//! What a user gets wrong does not panic eventbus or stall its consumers.
//!
//! A handler that panics fails like one that returns an error: its event is
//! retried, then dead-lettered with the panic's message, and the events after
//! it are handled and settled. Before, the panic unwound past the transport:
//! on RabbitMQ its delivery tag was never settled, so no later tag of the
//! channel was acked and the group stopped after `prefetch_count` deliveries;
//! on Kafka the partition's commits stopped at it; on Redis it stayed pending.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::kafka::{self, Tansu};
use common::{OrderPlaced, placed};
use eventbus::{Bus, BusBuilder, Envelope, HandlerError};

/// Events published after the one whose handler panics: more than the
/// prefetch count, so a stalled RabbitMQ channel cannot deliver them all.
const GOOD: usize = 30;

/// Publishes one event whose handler panics, then [`GOOD`] others; checks
/// that every other one is handled and the bad one is dead-lettered, naming
/// the panic, after its retry.
async fn a_panic_is_a_failure(broker: &str, builder: BusBuilder) {
    let handled = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (h, a) = (handled.clone(), attempts.clone());
    let bus = builder
        .configure(|c| {
            c.max_retries = 1;
            c.retry_base_delay = Duration::from_millis(50);
            c.retry_max_delay = Duration::from_millis(200);
            c.prefetch_count = 10;
        })
        .handler::<OrderPlaced, _, _>("charge", move |e: Arc<Envelope<OrderPlaced>>| {
            let (h, a) = (h.clone(), a.clone());
            async move {
                if e.customer_id == "bad" {
                    a.fetch_add(1, Ordering::SeqCst);
                    panic!("no card on file");
                }
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .unwrap_or_else(|e| panic!("{broker}: connects: {e}"));
    bus.start_consuming().await.expect("consumes");
    let mut events = vec![placed("bad")];
    events.extend((0..GOOD).map(|i| placed(&format!("good-{i}"))));
    bus.publish(events).await.expect("publish succeeds");
    let dlq = bus.dlq("default");
    common::eventually(
        &format!("{broker}: every good event handled, the bad one dead-lettered"),
        Duration::from_secs(60),
        || {
            let dlq = dlq.clone();
            let handled = handled.clone();
            async move {
                handled.load(Ordering::SeqCst) == GOOD && dlq.count().await.unwrap_or(0) == 1
            }
        },
    )
    .await;
    let listed = dlq.list(10).await.expect("lists the DLQ");
    assert_eq!(listed.len(), 1, "{broker}: {listed:?}");
    let reason = listed[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("handler panicked: no card on file"),
        "{broker}: the DLQ names the panic: {reason}"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "{broker}: the first attempt and one retry"
    );
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(
        bus.stats().handler_errors,
        2,
        "{broker}: both attempts count as failures"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered_on_rabbitmq() {
    let scope = common::Scope::new("handler-panics");
    a_panic_is_a_failure("RabbitMQ", scope.builder()).await;
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered_on_redis() {
    let redis = common::redis_scope::RedisScope::new("handler-panics");
    a_panic_is_a_failure("Redis", redis.builder()).await;
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered_on_kafka() {
    let tansu = Tansu::start();
    let prefix = kafka::prefix("handler-panics");
    a_panic_is_a_failure("Kafka", kafka::builder(&tansu, &prefix)).await;
}

/// A closure handler that panics before it returns its future (in the
/// closure's own body, not in an `async` block) fails the same way.
#[tokio::test]
async fn a_handler_panicking_before_its_future_fails_one_event() {
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("charge", move |e: Arc<Envelope<OrderPlaced>>| {
            assert_ne!(e.customer_id, "bad", "no card on file");
            h.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("builds");
    let report = bus
        .publish(vec![placed("bad"), placed("good")])
        .await
        .expect("publish succeeds");
    assert_eq!(report.published, 2);
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert_eq!(bus.stats().handler_errors, 1);
}

/// In memory there is no retry: the panic is a logged failure, and the
/// publish and the events after it go on.
#[tokio::test]
async fn a_panicking_handler_fails_one_event_in_memory() {
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("charge", move |e: Arc<Envelope<OrderPlaced>>| {
            let h = h.clone();
            async move {
                assert_ne!(e.customer_id, "bad", "no card on file");
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("builds");
    let events = vec![placed("bad"), placed("good")];
    let report = bus.publish(events).await.expect("publish succeeds");
    assert_eq!(report.published, 2);
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    let stats = bus.stats();
    assert_eq!(
        (stats.handler_errors, stats.events_processed_failed),
        (1, 1)
    );
}

/// `Duration::MAX` as a shutdown timeout means "no limit": it panicked
/// computing its deadline (`Instant + Duration` overflows).
#[tokio::test]
async fn a_shutdown_without_a_time_limit_does_not_panic() {
    let memory = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("noop", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("builds");
    memory.shutdown(Duration::MAX).await.expect("stops");
    let redis = common::redis_scope::RedisScope::new("no-time-limit");
    let bus = redis
        .builder()
        .configure(|c| c.confirm_timeout = Duration::MAX)
        .handler::<OrderPlaced, _, _>("noop", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus.publish([placed("A")]).await.expect("publish succeeds");
    bus.shutdown(Duration::MAX).await.expect("stops");
}
