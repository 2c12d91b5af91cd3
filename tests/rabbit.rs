//! The RabbitMQ transport against the local broker. Each test has its own
//! exchange and queues (see `common::Scope`) and removes them afterwards.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OrderPlaced, OrderShipped, Scope, placed, shipped};
use eventbus::{AnyEnvelope, Envelope, Error, ExchangeType, HandlerError};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A handler that forwards what it receives to a channel.
fn forward<E: eventbus::DomainEvent + Clone>(
    tx: mpsc::UnboundedSender<Envelope<E>>,
) -> impl Fn(Arc<Envelope<E>>) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
{
    move |e: Arc<Envelope<E>>| {
        let _ = tx.send((*e).clone());
        std::future::ready(Ok(()))
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event arrives in time")
        .expect("channel open")
}

#[tokio::test]
async fn a_round_trip_keeps_every_envelope_field() {
    let scope = Scope::new("roundtrip");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("forward", forward(tx))
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let cause = shipped("T-0");
    let sent = placed("Zoë – ünïcode ✓")
        .aggregate_version(3)
        .event_version(2)
        .with_tenant(Uuid::new_v4())
        .with_actor("user:42")
        .with_metadata("trace", serde_json::json!({"hops": [1, 2.5]}))
        .caused_by(&cause);
    let report = bus.publish([sent.clone()]).await.expect("confirmed");
    assert_eq!(report.published, 1);
    let got = recv(&mut rx).await;
    assert_eq!(got, sent);
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    let stats = bus.stats();
    assert_eq!(stats.events_published, 1);
    assert_eq!(stats.events_consumed, 1);
    assert_eq!(stats.events_processed_success, 1);
    assert!(
        stats.connected_at.is_some()
            && stats.last_publish_at.is_some()
            && stats.last_consume_at.is_some()
    );
}

#[tokio::test]
async fn topology_binds_exactly_the_handled_keys() {
    let scope = Scope::new("topology");
    let audit = scope.group("audit");
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .handler::<OrderShipped, _, _>("s", |_e| async { Ok::<_, HandlerError>(()) })
        .wildcard_handler("audit", Some(&audit), |_e| async {
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .expect("connects");
    let x = &scope.exchange;
    assert_eq!(
        common::bindings_of(x),
        vec![
            (format!("{x}.audit"), "#".to_owned()),
            (format!("{x}.default"), "Order.OrderPlaced".to_owned()),
            (format!("{x}.default"), "Order.OrderShipped".to_owned()),
        ]
    );
    assert_eq!(
        common::bindings_of(&format!("{x}_dlq")),
        vec![
            (format!("{x}.audit.dlq"), format!("{x}.audit")),
            (format!("{x}.default.dlq"), format!("{x}.default")),
        ]
    );
    let config = bus.config();
    assert_eq!(config.queue_name(), format!("{x}.default"));
    assert_eq!(config.dlq_exchange_name(), format!("{x}_dlq"));
    assert_eq!(config.dlq_queue_name(), format!("{x}.default.dlq"));
    let info = bus.queue_info().await.expect("queue exists");
    assert_eq!(
        (info.name.as_str(), info.message_count, info.consumer_count),
        (config.queue_name().as_str(), 0, 0)
    );
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn every_exchange_type_routes_each_event_to_the_groups_that_handle_it() {
    for kind in [
        ExchangeType::Topic,
        ExchangeType::Direct,
        ExchangeType::Fanout,
        ExchangeType::Headers,
    ] {
        let scope = Scope::new(&format!("kind-{kind}"));
        let (ptx, mut prx) = mpsc::unbounded_channel();
        let (stx, mut srx) = mpsc::unbounded_channel();
        let placed_group = scope.group("placed");
        let shipped_group = scope.group("shipped");
        let placed_bus = scope
            .builder()
            .configure(|c| {
                c.exchange_type = kind;
                c.consumer_group = placed_group.clone();
            })
            .event::<OrderShipped>()
            .handler::<OrderPlaced, _, _>("placed", forward(ptx))
            .build()
            .await
            .expect("connects");
        let shipped_bus = scope
            .builder()
            .configure(|c| {
                c.exchange_type = kind;
                c.consumer_group = shipped_group.clone();
            })
            .event::<OrderPlaced>()
            .handler::<OrderShipped, _, _>("shipped", forward(stx))
            .build()
            .await
            .expect("connects");
        placed_bus.start_consuming().await.expect("consumes");
        shipped_bus.start_consuming().await.expect("consumes");
        placed_bus
            .publish([AnyEnvelope::from(placed("P-1")), shipped("S-1").into()])
            .await
            .unwrap_or_else(|e| panic!("{kind}: publish failed: {e}"));
        assert_eq!(recv(&mut prx).await.customer_id, "P-1", "{kind}");
        assert_eq!(recv(&mut srx).await.tracking_number, "S-1", "{kind}");
        // On fanout the placed group also takes (and acks, unhandled) S-1, in no
        // particular order relative to P-1: wait until it has settled both.
        let expected_consumed = if kind == ExchangeType::Fanout { 2 } else { 1 };
        common::eventually("the placed group settled its deliveries", WAIT, || async {
            placed_bus.stats().events_processed_success >= expected_consumed
        })
        .await;
        placed_bus
            .shutdown(Duration::from_secs(5))
            .await
            .expect("shuts down");
        shipped_bus
            .shutdown(Duration::from_secs(5))
            .await
            .expect("shuts down");
        // Nothing else arrived: each group got only its own event type.
        assert!(prx.try_recv().is_err(), "{kind}: placed group got more");
        assert!(srx.try_recv().is_err(), "{kind}: shipped group got more");
        let stats = placed_bus.stats();
        assert_eq!(stats.events_consumed, expected_consumed, "{kind}");
        assert_eq!(stats.events_processed_failed, 0, "{kind}");
    }
}

#[tokio::test]
async fn members_of_one_group_share_the_work() {
    let scope = Scope::new("share");
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let all = Arc::new(Notify::new());
    let mut buses = Vec::new();
    for (i, count) in counts.iter().enumerate() {
        let (count, all) = (count.clone(), all.clone());
        let counts = counts.clone();
        let bus = scope
            .builder()
            .configure(|c| {
                c.prefetch_count = 1;
                c.consumer_name = Some(format!("worker-{i}"));
            })
            .handler::<OrderPlaced, _, _>("work", move |_e| {
                let (count, all, counts) = (count.clone(), all.clone(), counts.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    if counts
                        .iter()
                        .map(|c| c.load(Ordering::SeqCst))
                        .sum::<usize>()
                        == 10
                    {
                        all.notify_one();
                    }
                    Ok::<_, HandlerError>(())
                }
            })
            .build()
            .await
            .expect("connects");
        bus.start_consuming().await.expect("consumes");
        buses.push(bus);
    }
    let info = buses[0].queue_info().await.expect("queue info");
    assert_eq!(info.consumer_count, 2);
    buses[0]
        .publish((0..10).map(|i| placed(&format!("C-{i}"))))
        .await
        .expect("confirmed");
    tokio::time::timeout(WAIT, all.notified())
        .await
        .expect("all 10 handled");
    for bus in &buses {
        bus.shutdown(Duration::from_secs(5))
            .await
            .expect("shuts down");
    }
    let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(got.iter().sum::<usize>(), 10, "{got:?}");
    assert!(got.iter().all(|n| *n > 0), "both workers got some: {got:?}");
}

#[tokio::test]
async fn each_group_receives_every_event() {
    let scope = Scope::new("groups");
    let mut receivers = Vec::new();
    let mut buses = Vec::new();
    for name in ["billing", "shipping", "analytics"] {
        let group = scope.group(name);
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = scope
            .builder()
            .configure(|c| c.consumer_group = group)
            .handler::<OrderPlaced, _, _>(name, forward(tx))
            .build()
            .await
            .expect("connects");
        bus.start_consuming().await.expect("consumes");
        receivers.push(rx);
        buses.push(bus);
    }
    let sent: BTreeSet<String> = (0..5).map(|i| format!("C-{i}")).collect();
    buses[0]
        .publish(sent.iter().map(|c| placed(c)))
        .await
        .expect("confirmed");
    for rx in &mut receivers {
        let mut got = BTreeSet::new();
        for _ in 0..5 {
            got.insert(recv(rx).await.customer_id.clone());
        }
        assert_eq!(got, sent);
    }
    for bus in &buses {
        bus.shutdown(Duration::from_secs(5))
            .await
            .expect("shuts down");
    }
}

#[tokio::test]
async fn an_event_nobody_is_bound_for_is_unroutable() {
    let scope = Scope::new("unroutable");
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    let err = bus.publish([shipped("S-1")]).await.expect_err("unroutable");
    assert!(matches!(err, Error::Unroutable { .. }), "{err}");
    assert!(err.to_string().contains("Order.OrderShipped"), "{err}");
    assert_eq!(bus.stats().events_published, 0);
    // Binding it at runtime makes it routable.
    bus.bind_event_type::<OrderShipped>().await.expect("binds");
    bus.publish([shipped("S-2")]).await.expect("now routable");
    assert_eq!(common::message_count(&scope.queue("default")).await, 1);
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn a_conflicting_queue_fails_startup_naming_queue_and_argument() {
    let scope = Scope::new("conflict");
    let conn = common::raw().await;
    let ch = conn.create_channel().await.expect("channel");
    // Everything as eventbus declares it, plus a length limit it does not ask for.
    let mut args = FieldTable::default();
    let queue = scope.queue("default");
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{}_dlq", scope.exchange).into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.clone().into()),
    );
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    ch.queue_declare(
        scope.queue("default").as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("pre-declared");
    let err = scope
        .builder()
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect_err("conflicting arguments");
    let text = err.to_string();
    assert!(
        matches!(err, Error::TopologyConflict { kind: "queue", .. }),
        "{text}"
    );
    assert!(text.contains(&scope.queue("default")), "{text}");
    assert!(text.contains("x-max-length"), "{text}");
    let _ = conn.close(200, "done".into()).await;
}

/// A binding the broker refuses is an error and is forgotten: it stayed in
/// the bindings every reconnect declares, so each reconnect hit the same
/// conflict and the bus never published again (`NotConnected`).
#[tokio::test]
async fn a_refused_binding_is_forgotten_and_the_bus_goes_on() {
    let scope = Scope::new("refused-bind");
    let conn = common::raw().await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    ch.queue_declare(
        scope.queue("default").as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("pre-declared");
    // A publish-only service: the default group is not declared at start.
    let bus = scope
        .builder()
        .configure(|c| c.confirm_timeout = Duration::from_secs(10))
        .event::<OrderPlaced>()
        .build()
        .await
        .expect("connects");
    let err = bus
        .bind_routing_key("Order.OrderPlaced")
        .await
        .expect_err("the queue conflicts");
    assert!(
        matches!(err, Error::TopologyConflict { kind: "queue", .. }),
        "{err}"
    );
    // Someone else's queue takes the events: publishing works again.
    let other = scope.queue(&scope.group("other"));
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        other.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declared");
    ch.queue_bind(
        other.as_str().into(),
        scope.exchange.as_str().into(),
        "Order.OrderPlaced".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("bound");
    let report = bus.publish([placed("A")]).await.expect("publishes");
    assert_eq!(report.published, 1);
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    let _ = conn.close(200, "done".into()).await;
}

/// An exchange deleted under a running bus is declared again: the publish
/// that found it gone reconnects (which declares the topology) and succeeds.
#[tokio::test]
async fn a_deleted_exchange_is_declared_again_by_the_next_publish() {
    let scope = Scope::new("deleted-exchange");
    let bus = scope
        .builder()
        .configure(|c| c.confirm_timeout = Duration::from_secs(15))
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    let conn = common::raw().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_delete(
        scope.exchange.as_str().into(),
        lapin::options::ExchangeDeleteOptions::default(),
    )
    .await
    .expect("deleted");
    let report = bus.publish([placed("A")]).await.expect("published");
    assert_eq!(report.published, 1);
    ch.exchange_declare(
        scope.exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declared again");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    let _ = conn.close(200, "done".into()).await;
}

/// A bus that declares nothing (`without_topology`, as the CLI's) and
/// publishes to an exchange that does not exist gets the broker's reason
/// after one reconnect, not a `ConfirmTimeout` after reconnecting until the
/// timeout.
#[tokio::test]
async fn a_publish_to_a_missing_exchange_without_topology_names_it() {
    let scope = Scope::new("missing-exchange");
    let bus = scope
        .builder()
        .without_topology()
        .configure(|c| c.confirm_timeout = Duration::from_secs(15))
        .event::<OrderPlaced>()
        .build()
        .await
        .expect("connects");
    let err = bus
        .publish([placed("A")])
        .await
        .expect_err("no exchange to publish to");
    let text = err.to_string();
    assert!(matches!(err, Error::Broker { .. }), "{text}");
    assert!(
        text.contains("NOT_FOUND") && text.contains(&scope.exchange),
        "{text}"
    );
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

#[tokio::test]
async fn queue_arguments_pass_through_for_quorum_queues() {
    let scope = Scope::new("quorum");
    let bus = scope
        .builder()
        .configure(|c| {
            c.queue_arguments.insert(
                "x-queue-type".into(),
                eventbus::QueueArgument::Str("quorum".into()),
            );
        })
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("declares a quorum queue");
    assert_eq!(common::queue_type(&scope.queue("default")), "quorum");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn shutdown_lets_in_flight_handlers_finish_and_ack() {
    let scope = Scope::new("shutdown");
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let (s, r, f) = (started.clone(), release.clone(), finished.clone());
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("slow", move |_e| {
            let (s, r, f) = (s.clone(), r.clone(), f.clone());
            async move {
                s.notify_one();
                r.notified().await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus.publish([placed("slow")]).await.expect("confirmed");
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("handler started");
    let closing = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.shutdown(Duration::from_secs(20)).await })
    };
    // Shutdown is waiting for the handler; no new delivery is taken meanwhile.
    assert!(!closing.is_finished());
    release.notify_one();
    closing.await.expect("joins").expect("graceful");
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    // It was acked: nothing is left in the queue, nothing redelivered.
    assert_eq!(common::message_count(&scope.queue("default")).await, 0);
    assert_eq!(bus.stats().events_processed_success, 1);
}

/// `shutdown(timeout)` returns by `timeout` even when a handler never ends
/// and the configured shutdown timeout is much longer; the stuck delivery is
/// not acked, so the group's next member gets it.
#[tokio::test]
async fn shutdown_returns_by_its_timeout_and_a_stuck_delivery_goes_to_the_next_member() {
    let scope = Scope::new("stuck");
    common::assert_stuck_shutdown_returns_by_its_timeout(scope.builder()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let next = scope
        .builder()
        .handler::<OrderPlaced, _, _>("next", forward(tx))
        .build()
        .await
        .expect("connects");
    next.start_consuming().await.expect("consumes");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("redelivered to the next member")
        .expect("open");
    assert_eq!(got.customer_id, "stuck");
    next.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn health_reports_connection_and_consumers() {
    let scope = Scope::new("health");
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    let health = bus.health_check().await;
    assert!(
        health.healthy && health.connected && !health.consuming,
        "{health:?}"
    );
    bus.start_consuming().await.expect("consumes");
    let health = bus.health_check().await;
    assert!(health.healthy && health.consuming, "{health:?}");
    assert_eq!(
        health.consumers.get(&scope.queue("default")),
        Some(&true),
        "{health:?}"
    );
    assert_eq!(bus.queue_info().await.expect("info").consumer_count, 1);
    bus.stop_consuming().await.expect("stops");
    assert!(!bus.health_check().await.consuming);
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    let health = bus.health_check().await;
    assert!(!health.healthy && !health.connected, "{health:?}");
    assert!(
        health
            .error
            .as_deref()
            .is_some_and(|e| e.contains("closed")),
        "{health:?}"
    );
}

#[tokio::test]
async fn undecodable_and_failing_messages_are_dead_lettered_not_dropped() {
    let scope = Scope::new("dlq");
    let failures = Arc::new(Mutex::new(Vec::new()));
    let f = failures.clone();
    let bus = scope
        .builder()
        // The unknown type is first left to other members of the group, once.
        .configure(|c| {
            c.max_unhandled_deferrals = 1;
            c.unhandled_delay = Duration::from_millis(50);
        })
        .handler::<OrderPlaced, _, _>("picky", move |e: Arc<Envelope<OrderPlaced>>| {
            let f = f.clone();
            async move {
                if e.customer_id == "bad" {
                    f.lock().expect("not poisoned").push(e.customer_id.clone());
                    return Err(HandlerError::permanent("customer `bad` is not allowed"));
                }
                Ok(())
            }
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    // By hand: invalid JSON, an unknown event type, a body missing a field.
    let conn = common::raw().await;
    let ch = conn.create_channel().await.expect("channel");
    let header = |event_type: &str| {
        let mut h = FieldTable::default();
        h.insert(
            "event_type".into(),
            AMQPValue::LongString(event_type.into()),
        );
        lapin::BasicProperties::default().with_headers(h)
    };
    let raw_messages: [(&[u8], &str); 3] = [
        (b"{not json", "OrderPlaced"),
        (
            br#"{"aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Order"}"#,
            "Nope",
        ),
        (
            br#"{"aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Order"}"#,
            "OrderPlaced",
        ),
    ];
    for (body, event_type) in raw_messages {
        ch.basic_publish(
            scope.exchange.as_str().into(),
            "Order.OrderPlaced".into(),
            BasicPublishOptions::default(),
            body,
            header(event_type),
        )
        .await
        .expect("sent")
        .await
        .expect("confirmed");
    }
    bus.publish([placed("bad"), placed("good")])
        .await
        .expect("confirmed");
    // No event_type header at all, and a wrong content type.
    ch.basic_publish(
        scope.exchange.as_str().into(),
        "Order.OrderPlaced".into(),
        BasicPublishOptions::default(),
        b"{}",
        lapin::BasicProperties::default(),
    )
    .await
    .expect("sent")
    .await
    .expect("confirmed");
    ch.basic_publish(
        scope.exchange.as_str().into(),
        "Order.OrderPlaced".into(),
        BasicPublishOptions::default(),
        b"<xml/>",
        header("OrderPlaced").with_content_type("text/xml".into()),
    )
    .await
    .expect("sent")
    .await
    .expect("confirmed");
    let dlq = bus.dlq("default");
    common::eventually("six dead-lettered messages", WAIT, || async {
        dlq.count().await.ok() == Some(6)
    })
    .await;
    let reasons: Vec<String> = dlq
        .list(10)
        .await
        .expect("lists")
        .into_iter()
        .map(|m| m.reason.unwrap_or_default())
        .collect();
    for expected in [
        "not valid JSON",
        "no member of group default handles Order.OrderPlaced (unknown event type `Nope` here)",
        "missing field `customer_id`",
        "customer `bad` is not allowed",
        "no `event_type` header",
        "unsupported content type `text/xml`",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:#?}"
        );
    }
    assert_eq!(failures.lock().expect("not poisoned").as_slice(), ["bad"]);
    let stats = bus.stats();
    assert_eq!(stats.messages_sent_to_dlq, 6);
    assert_eq!(stats.events_processed_failed, 6);
    assert_eq!(stats.events_processed_success, 1);
    assert_eq!(stats.events_deferred_unhandled, 1);
    let _ = conn.close(200, "done".into()).await;
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn subscribing_at_runtime_binds_the_new_event_type() {
    let scope = Scope::new("runtime-sub");
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(forward::<OrderShipped>(tx))
        .expect("subscribes");
    common::eventually("the new binding", WAIT, || async {
        common::bindings_of(&scope.exchange)
            .iter()
            .any(|(_, key)| key == "Order.OrderShipped")
    })
    .await;
    bus.publish([shipped("late")]).await.expect("routable now");
    assert_eq!(recv(&mut rx).await.tracking_number, "late");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

/// A projection of its own group, subscribed while the bus is running.
struct LateAudit {
    tx: mpsc::UnboundedSender<Envelope<OrderPlaced>>,
}

#[eventbus::projection(group = "late")]
impl LateAudit {
    #[eventbus::handles(OrderPlaced)]
    async fn audit(&self, order: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let _ = self.tx.send(order.clone());
        Ok(())
    }
}

/// A group subscribed while the consumers start (or right after) is
/// consumed: its queue is declared and bound, and its consumer started.
#[tokio::test]
async fn a_group_subscribed_while_consumers_start_is_consumed() {
    let scope = Scope::new("late-group");
    scope.group("late");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("p", forward(tx))
        .build()
        .await
        .expect("connects");
    let (late_tx, mut late_rx) = mpsc::unbounded_channel();
    let (started, subscribed) = tokio::join!(bus.start_consuming(), async {
        tokio::task::yield_now().await;
        bus.subscribe_all(LateAudit { tx: late_tx })
    });
    started.expect("consumes");
    subscribed.expect("subscribes");
    assert!(bus.groups().contains_key("late"), "{:?}", bus.groups());
    common::eventually("the late group's consumer", WAIT, || async {
        bus.health_check()
            .await
            .consumers
            .get(&scope.queue("late"))
            .copied()
            == Some(true)
    })
    .await;
    bus.publish([placed("both")]).await.expect("confirmed");
    assert_eq!(recv(&mut rx).await.customer_id, "both");
    assert_eq!(recv(&mut late_rx).await.customer_id, "both");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn batch_publishing_chunks_caps_concurrency_and_reports_counts() {
    let scope = Scope::new("batch");
    let bus = scope
        .builder()
        .configure(|c| {
            c.publish_chunk_size = 40;
            c.max_concurrent_publishes = 3;
        })
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    let report = bus
        .publish_batch((0..250).map(|i| placed(&format!("B-{i}"))), false)
        .await;
    assert_eq!((report.published, report.total), (250, 250));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // In order, with one chunk that cannot be routed: counted, and the error kept.
    let mut mixed: Vec<AnyEnvelope> = (0..80).map(|i| placed(&format!("C-{i}")).into()).collect();
    mixed.push(shipped("nobody binds this").into());
    let report = bus.publish_batch(mixed, true).await;
    assert_eq!((report.published, report.total), (80, 81));
    assert!(
        matches!(report.errors.as_slice(), [Error::Unroutable { .. }]),
        "{:?}",
        report.errors
    );
    assert_eq!(common::message_count(&scope.queue("default")).await, 330);
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn with_an_alternate_exchange_an_unroutable_event_lands_there() {
    let scope = Scope::new("alternate");
    let alternate = scope.group("unrouted");
    let alternate_exchange = scope.queue(&alternate);
    let ae = alternate_exchange.clone();
    let bus = scope
        .builder()
        .configure(move |c| c.alternate_exchange = Some(ae))
        .handler::<OrderPlaced, _, _>("p", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects");
    // Nothing is bound for OrderShipped: the broker keeps it in the
    // alternate exchange's queue instead of returning it.
    bus.publish([shipped("S-1")])
        .await
        .expect("routed to the alternate exchange");
    assert_eq!(common::message_count(&alternate_exchange).await, 1);
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    let conn = common::raw().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_delete(
        alternate_exchange.as_str().into(),
        lapin::options::ExchangeDeleteOptions::default(),
    )
    .await
    .expect("deletes the alternate exchange");
}
