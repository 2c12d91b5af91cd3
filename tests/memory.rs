//! The programmatic API on the in-memory transport.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::{AnyEnvelope, Bus, DomainEvent, Envelope, Error, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
    total_amount: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {
    tracking_number: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Customer", name = "CustomerRegistered", version = 2)]
struct Registered {
    email: String,
}

fn placed(customer: &str) -> Envelope<OrderPlaced> {
    Envelope::new(
        Uuid::new_v4(),
        OrderPlaced {
            customer_id: customer.into(),
            total_amount: 10.0,
        },
    )
}

fn shipped() -> Envelope<OrderShipped> {
    Envelope::new(
        Uuid::new_v4(),
        OrderShipped {
            tracking_number: "T-1".into(),
        },
    )
}

#[derive(Default)]
struct Seen {
    log: Mutex<Vec<String>>,
}

impl Seen {
    fn push(&self, entry: String) {
        self.log.lock().expect("not poisoned").push(entry);
    }
    fn entries(&self) -> Vec<String> {
        let mut v = self.log.lock().expect("not poisoned").clone();
        v.sort();
        v
    }
}

/// Discovered through inventory: registered in the default group.
#[derive(Default)]
struct Discovered {
    seen: Arc<Seen>,
}

#[projection]
impl Discovered {
    #[handles(OrderPlaced)]
    async fn placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        self.seen.push(format!("placed:{}", event.customer_id));
        Ok(())
    }

    #[handles(all)]
    async fn everything(&self, event: &AnyEnvelope) -> Result<(), HandlerError> {
        self.seen.push(format!("all:{}", event.meta().event_type()));
        Ok(())
    }
}

static FREE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[handles(Registered, group = "crm")]
async fn on_registered(event: &Envelope<Registered>) -> Result<(), HandlerError> {
    assert_eq!(event.meta().event_version(), 2);
    FREE_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn discovered_projections_and_functions_receive_their_events() {
    let seen = Arc::new(Seen::default());
    let bus = Bus::builder()
        .memory()
        .projection(Discovered { seen: seen.clone() })
        .build()
        .await
        .expect("builds");
    let groups = bus.groups();
    assert_eq!(groups.get("default").map(Vec::len), Some(2), "{groups:?}");
    assert_eq!(
        groups.get("crm"),
        Some(&vec!["CustomerRegistered".to_owned()])
    );

    let before = FREE_CALLS.load(Ordering::SeqCst);
    let report = bus
        .publish([
            AnyEnvelope::from(placed("C-1")),
            shipped().into(),
            Envelope::new(
                Uuid::new_v4(),
                Registered {
                    email: "a@b".into(),
                },
            )
            .into(),
        ])
        .await
        .expect("publishes");
    assert_eq!((report.published, report.total), (3, 3));
    assert_eq!(
        seen.entries(),
        [
            "all:CustomerRegistered",
            "all:OrderPlaced",
            "all:OrderShipped",
            "placed:C-1"
        ]
    );
    assert!(FREE_CALLS.load(Ordering::SeqCst) > before);
    let types: Vec<_> = bus.event_types().names().collect();
    assert!(
        types.contains(&"CustomerRegistered") && types.contains(&"OrderPlaced"),
        "{types:?}"
    );
}

#[tokio::test]
async fn subscribe_unsubscribe_and_counts() {
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .build()
        .await
        .expect("builds");
    assert_eq!(bus.total_subscriber_count(), 0);
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let id = bus
        .subscribe(move |e: Arc<Envelope<OrderPlaced>>| {
            let h = h.clone();
            async move {
                assert_eq!(e.customer_id, "C-9");
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .expect("subscribes");
    let w = hits.clone();
    let wild = bus.subscribe_to_all_events(move |_e: AnyEnvelope| {
        let w = w.clone();
        async move {
            w.fetch_add(100, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        }
    });
    assert_eq!(bus.subscriber_count::<OrderPlaced>(), 1);
    assert_eq!(bus.subscriber_count::<OrderShipped>(), 0);
    assert_eq!(bus.wildcard_subscriber_count(), 1);
    assert_eq!(bus.total_subscriber_count(), 2);

    bus.publish([placed("C-9")]).await.expect("publishes");
    assert_eq!(hits.load(Ordering::SeqCst), 101);

    assert!(
        !bus.unsubscribe(wild),
        "a wildcard id is not a typed subscription"
    );
    assert!(bus.unsubscribe_from_all_events(wild));
    assert!(!bus.unsubscribe_from_all_events(wild), "already gone");
    bus.publish([placed("C-9")]).await.expect("publishes");
    assert_eq!(hits.load(Ordering::SeqCst), 102);

    assert!(bus.unsubscribe(id));
    assert_eq!(bus.total_subscriber_count(), 0);
    let err = bus
        .publish([placed("C-9")])
        .await
        .expect_err("nobody handles it");
    assert!(matches!(err, Error::Unroutable { .. }), "{err}");
    assert!(err.to_string().contains("Order.OrderPlaced"), "{err}");
}

#[tokio::test]
async fn subscribe_all_and_clear_subscribers() {
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .build()
        .await
        .expect("builds");
    let seen = Arc::new(Seen::default());
    let ids = bus
        .subscribe_all(Discovered { seen: seen.clone() })
        .expect("subscribes");
    assert_eq!(ids.len(), 2);
    bus.publish([placed("X")]).await.expect("publishes");
    assert_eq!(seen.entries(), ["all:OrderPlaced", "placed:X"]);
    bus.clear_subscribers();
    assert_eq!(bus.total_subscriber_count(), 0);
    assert_eq!(bus.wildcard_subscriber_count(), 0);
}

#[tokio::test]
async fn a_failing_handler_does_not_stop_the_others() {
    let ok_calls = Arc::new(AtomicUsize::new(0));
    let ok = ok_calls.clone();
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("failing", |_e| async {
            Err::<(), _>(HandlerError::new("boom"))
        })
        .handler::<OrderPlaced, _, _>("working", move |_e| {
            let ok = ok.clone();
            async move {
                ok.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        })
        .build()
        .await
        .expect("builds");
    bus.publish([placed("A"), placed("B")])
        .await
        .expect("publish succeeds");
    assert_eq!(ok_calls.load(Ordering::SeqCst), 2);
    let stats = bus.stats();
    assert_eq!(stats.events_published, 2);
    assert_eq!(stats.handlers_invoked, 4);
    assert_eq!(stats.handler_errors, 2);
    assert_eq!(stats.events_processed_failed, 2);
    assert!(stats.last_error_at.is_some());
    let map = stats.to_map();
    assert_eq!(map.get("handler_errors"), Some(&serde_json::json!(2)));
    assert_eq!(map.get("connected_at"), Some(&serde_json::Value::Null));
}

#[tokio::test]
async fn background_publishes_are_tracked_and_awaited_by_shutdown() {
    let release = Arc::new(Notify::new());
    let done = Arc::new(AtomicUsize::new(0));
    let (r, d) = (release.clone(), done.clone());
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("slow", move |_e| {
            let (r, d) = (r.clone(), d.clone());
            async move {
                r.notified().await;
                d.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("builds");
    bus.publish_background([placed("bg")]);
    assert_eq!(bus.stats().background_tasks_created, 1);
    assert_eq!(bus.background_task_count(), 1);
    // The handler waits; a short shutdown times out naming the pending task.
    let err = bus
        .shutdown(Duration::from_millis(50))
        .await
        .expect_err("handler still running");
    assert!(
        matches!(err, Error::ShutdownTimeout { pending: 1, .. }),
        "{err}"
    );
    release.notify_one();
    bus.shutdown(Duration::from_secs(5)).await.expect("drains");
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(bus.background_task_count(), 0);
}

#[tokio::test]
async fn publish_batch_reports_counts_and_errors() {
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .configure(|c| c.publish_chunk_size = 3)
        .handler::<OrderPlaced, _, _>("count", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("builds");
    let report = bus
        .publish_batch((0..10).map(|i| placed(&i.to_string())), false)
        .await;
    assert_eq!((report.published, report.total), (10, 10));
    assert!(report.errors.is_empty());
    // OrderShipped has no handler: its chunk fails, the rest goes out.
    let mixed: Vec<AnyEnvelope> = vec![
        placed("a").into(),
        placed("b").into(),
        placed("c").into(),
        shipped().into(),
    ];
    let report = bus.publish_batch(mixed, true).await;
    assert_eq!((report.published, report.total), (3, 4));
    assert_eq!(report.errors.len(), 1);
}

#[tokio::test]
async fn invalid_envelopes_are_rejected() {
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("h", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("builds");
    let err = bus
        .publish([placed("x").aggregate_version(0)])
        .await
        .expect_err("version 0");
    assert!(matches!(err, Error::InvalidEnvelope { .. }), "{err}");
    assert!(err.to_string().contains("aggregate_version"), "{err}");
}

#[tokio::test]
async fn run_until_serves_then_shuts_down() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderShipped, _, _>("h", move |_e| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("builds");
    let publisher = bus.clone();
    bus.run_until(async move {
        publisher.publish([shipped(), shipped()]).await?;
        Ok(())
    })
    .await
    .expect("runs");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(bus.health_check().await.healthy);
}

#[tokio::test]
async fn manual_registration_conflicts_are_all_listed() {
    let err = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("same", |_e| async { Ok::<_, HandlerError>(()) })
        .handler::<OrderShipped, _, _>("same", |_e| async { Ok::<_, HandlerError>(()) })
        .projection(Discovered::default())
        .projection(Discovered::default())
        .build()
        .await
        .expect_err("conflicts");
    let text = err.to_string();
    assert!(text.contains("2 conflict(s)"), "{text}");
    assert!(
        text.contains("handler `same` is registered 2 times"),
        "{text}"
    );
    assert!(text.contains("supplied twice"), "{text}");
}

#[tokio::test]
async fn the_builder_never_falls_back_to_memory() {
    let bus = Bus::builder()
        .url("amqp://guest:guest@127.0.0.1:1/")
        .configure(|c| {
            c.connect_timeout = Duration::from_millis(300);
            c.reconnect_delay = Duration::from_millis(50);
        });
    let err = bus.build().await.expect_err("nothing listens on port 1");
    assert!(matches!(err, Error::NotConnected(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("did not come up"), "{text}");
    assert!(!text.contains("guest:guest"), "{text}");
}

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    let err = Bus::builder()
        .url("amqp://u:secret@host:port/")
        .build()
        .await
        .expect_err("bad url");
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(!format!("{err:?}").contains("secret"), "{err:?}");
}

/// The in-memory transport orders deliveries as a broker consumer does: with
/// concurrent publishers, one aggregate's events never overlap (per
/// aggregate), different aggregates do, and `strict` runs one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_orders_like_the_broker() {
    use eventbus::DeliveryOrder;

    async fn most_at_once(order: DeliveryOrder, same_aggregate: bool) -> usize {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        let bus = Bus::builder()
            .memory()
            .without_discovery()
            .group_ordering("default", order)
            .handler::<OrderPlaced, _, _>("slow", move |_| {
                let (r, m) = (r.clone(), m.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    // Long enough that concurrent publishers overlap if allowed.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            })
            .build()
            .await
            .expect("builds");
        let aggregate = Uuid::new_v4();
        let publishers: Vec<_> = (0..4)
            .map(|i| {
                let bus = bus.clone();
                let id = if same_aggregate {
                    aggregate
                } else {
                    Uuid::new_v4()
                };
                tokio::spawn(async move {
                    let event = Envelope::new(
                        id,
                        OrderPlaced {
                            customer_id: format!("C-{i}"),
                            total_amount: 1.0,
                        },
                    );
                    bus.publish([event]).await.expect("publishes");
                })
            })
            .collect();
        for p in publishers {
            p.await.expect("publisher ran");
        }
        most.load(Ordering::SeqCst)
    }

    assert_eq!(most_at_once(DeliveryOrder::PerAggregate, true).await, 1);
    assert!(most_at_once(DeliveryOrder::PerAggregate, false).await > 1);
    assert_eq!(most_at_once(DeliveryOrder::Strict, false).await, 1);
    assert!(most_at_once(DeliveryOrder::Unordered, true).await > 1);
}

#[tokio::test]
async fn a_bus_without_any_handler_refuses_to_consume() {
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .build()
        .await
        .expect("a publish-only bus builds");
    let err = bus.start_consuming().await.expect_err("nothing to consume");
    assert!(matches!(err, eventbus::Error::NoHandlers), "{err}");
    let err = bus
        .run_until(async { Ok(()) })
        .await
        .expect_err("run refuses too");
    assert!(err.to_string().contains("export_handlers"), "{err}");
    // Once a handler is subscribed, the same bus consumes.
    bus.subscribe_to_all_events(|_event: eventbus::AnyEnvelope| async {
        Ok::<_, eventbus::HandlerError>(())
    });
    bus.start_consuming().await.expect("a handler: consumes");
}

/// A handler that publishes the next event of its own aggregate (a saga, a
/// process manager): the publish from inside it returns, and the next event's
/// handler runs once it has, before the outer publish returns. Awaited inside
/// the handler, the inner delivery queued behind the handler's own turn and
/// both waited forever.
#[tokio::test]
async fn a_handler_publishing_to_its_own_aggregate_does_not_deadlock() {
    for order in [
        eventbus::DeliveryOrder::PerAggregate,
        eventbus::DeliveryOrder::Strict,
    ] {
        let bus_slot: Arc<std::sync::OnceLock<Bus>> = Arc::default();
        let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let (slot, placed_log, shipped_log) = (bus_slot.clone(), log.clone(), log.clone());
        let bus = Bus::builder()
            .memory()
            .without_discovery()
            .configure(move |c| c.ordering = order)
            .handler::<OrderPlaced, _, _>("ship", move |e: Arc<Envelope<OrderPlaced>>| {
                let (slot, log) = (slot.clone(), placed_log.clone());
                async move {
                    log.lock().expect("not poisoned").push("placed");
                    let shipped = Envelope::new(
                        e.meta().aggregate_id(),
                        OrderShipped {
                            tracking_number: "T-1".into(),
                        },
                    )
                    .caused_by(&*e);
                    let bus = slot.get().expect("the bus is built");
                    bus.publish([shipped]).await.map_err(HandlerError::new)?;
                    log.lock().expect("not poisoned").push("placed done");
                    Ok::<_, HandlerError>(())
                }
            })
            .handler::<OrderShipped, _, _>("record", move |_e: Arc<Envelope<OrderShipped>>| {
                shipped_log.lock().expect("not poisoned").push("shipped");
                std::future::ready(Ok::<_, HandlerError>(()))
            })
            .build()
            .await
            .expect("builds");
        assert!(bus_slot.set(bus.clone()).is_ok());
        tokio::time::timeout(Duration::from_secs(10), bus.publish([placed("C-1")]))
            .await
            .unwrap_or_else(|_| panic!("{order}: the publish deadlocked"))
            .expect("published");
        assert_eq!(
            *log.lock().expect("not poisoned"),
            ["placed", "placed done", "shipped"],
            "{order}: the inner event is handled after the handler that published it, before the publish returns"
        );
    }
}
