//! The baseline: lapin used directly, the plain good way, with the same
//! settings as eventbus (persistent, confirms with WINDOW in flight,
//! mandatory, manual acks, prefetch PREFETCH) and the same messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventbus::AnyEnvelope;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::{
    Counter, Figure, OrderPlaced, PREFETCH, Scenario, WINDOW, order, peak_rss_mb, percentiles,
};

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connects")
}

/// The same bytes and headers eventbus writes, encoded the plain way
/// (serde_json of the envelope) as a raw-lapin user would.
fn message(event: &AnyEnvelope) -> (String, Vec<u8>, BasicProperties) {
    let meta = event.meta();
    let body = serde_json::to_vec(&event.to_json().expect("encodes")).expect("encodes");
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
    let mut headers = FieldTable::default();
    headers.insert("event_type".into(), text(meta.event_type()));
    headers.insert("aggregate_type".into(), text(meta.aggregate_type()));
    headers.insert(
        "aggregate_id".into(),
        text(&meta.aggregate_id().to_string()),
    );
    headers.insert(
        "aggregate_version".into(),
        AMQPValue::LongLongInt(i64::try_from(meta.aggregate_version()).unwrap_or(i64::MAX)),
    );
    headers.insert("x-retry-count".into(), AMQPValue::LongLongInt(0));
    headers.insert(
        "correlation_id".into(),
        text(&meta.correlation_id().to_string()),
    );
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_message_id(meta.event_id().to_string().as_str().into())
        .with_timestamp(u64::try_from(meta.occurred_at().timestamp()).unwrap_or(0))
        .with_headers(headers);
    (meta.routing_key(), body, props)
}

/// What the raw consumer decodes: the envelope time and the event's fields.
#[derive(serde::Deserialize)]
struct RawOrderPlaced {
    occurred_at: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    _event: OrderPlaced,
}

async fn declare(channel: &Channel, exchange: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let queue = format!("{exchange}.default");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "Order.OrderPlaced".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
}

/// Publishes `count` messages with WINDOW confirms in flight; all must be acked.
async fn publish(
    channel: &Channel,
    exchange: &str,
    count: usize,
    make: impl Fn(usize) -> (String, Vec<u8>, BasicProperties),
) {
    let mut inflight = FuturesUnordered::new();
    for i in 0..count {
        if inflight.len() >= WINDOW {
            let confirm: lapin::Result<lapin::Confirmation> =
                inflight.next().await.expect("in flight");
            assert!(confirm.expect("confirmed").is_ack());
        }
        let (key, body, props) = make(i);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                props,
            )
            .await
            .expect("sent");
        inflight.push(confirm);
    }
    while let Some(confirm) = inflight.next().await {
        let confirm = confirm.expect("confirmed");
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "routed and acked"
        );
    }
}

/// Fills the exchange's bound queue(s) with `count` OrderPlaced messages.
pub(crate) async fn prefill(url: &str, exchange: &str, count: usize) {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // Messages made ahead of time: the prefill is not what is measured.
    let messages: Vec<_> = (0..count).map(|i| message(&order(i).into())).collect();
    publish(&ch, exchange, count, |i| messages[i].clone()).await;
    let _ = conn.close(200, "done".into()).await;
}

/// Acks with `multiple = true` once this many deliveries are handled (the
/// batched baseline): the best plain consume loop.
const ACK_EVERY: u64 = 50;

async fn consume(
    url: &str,
    exchange: &str,
    counter: Arc<Counter>,
    target: usize,
    batched: bool,
) -> Connection {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            format!("{exchange}.default").as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let event: RawOrderPlaced = serde_json::from_slice(&delivery.data).expect("decodes");
            counter.hit(event.occurred_at, target);
            if batched && delivery.delivery_tag % ACK_EVERY != 0 {
                continue;
            }
            // After the last event the harness closes the connection: stop quietly.
            if delivery
                .ack(BasicAckOptions { multiple: batched })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    conn
}

pub(crate) async fn run(
    url: &str,
    batched: bool,
    scenario: Scenario,
    count: usize,
    rate: u64,
    exchange: &str,
) -> Figure {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, exchange).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    match scenario {
        Scenario::Publish => {
            let events: Vec<AnyEnvelope> = (0..count).map(|i| order(i).into()).collect();
            let started = Instant::now();
            // The same work as eventbus's publish: encode each event, then send.
            publish(&ch, exchange, count, |i| message(&events[i])).await;
            Figure {
                per_second: Some(count as f64 / started.elapsed().as_secs_f64()),
                ..Figure::default()
            }
        }
        Scenario::Consume | Scenario::Memory => {
            crate::ready_then_wait_for_go();
            let counter = Arc::new(Counter::default());
            let cpu = crate::cpu::Mark::now(crate::BROKER_PROCESS);
            let started = Instant::now();
            let consumer = consume(url, exchange, counter.clone(), count, batched).await;
            counter.wait().await;
            let elapsed = started.elapsed();
            let (cpu_us, broker_cpu_us) = cpu.per_event(count);
            let _ = consumer.close(200, "done".into()).await;
            Figure {
                per_second: Some(count as f64 / elapsed.as_secs_f64()),
                peak_rss_mb: Some(peak_rss_mb()),
                cpu_us,
                broker_cpu_us,
                ..Figure::default()
            }
        }
        Scenario::Latency => {
            let counter = Arc::new(Counter::default());
            let consumer = consume(url, exchange, counter.clone(), count, false).await;
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for i in 0..count {
                tick.tick().await;
                let (key, body, props) = message(&order(i).into());
                let ch = ch.clone();
                let exchange = exchange.to_owned();
                tokio::spawn(async move {
                    let confirm = ch
                        .basic_publish(
                            exchange.as_str().into(),
                            key.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &body,
                            props,
                        )
                        .await
                        .expect("sent");
                    assert!(confirm.await.expect("confirmed").is_ack());
                });
            }
            counter.wait().await;
            let _ = consumer.close(200, "done".into()).await;
            percentiles(counter.latencies())
        }
    }
}

/// Deletes a run's exchange and queues (whoever declared them).
pub(crate) fn cleanup_blocking(url: &str, exchange: &str) {
    let url = url.to_owned();
    let exchange = exchange.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
                return;
            };
            let mut queues: Vec<String> = Vec::new();
            for group in ["default", "python"] {
                for suffix in ["", ".dlq", ".unhandled"] {
                    queues.push(format!("{exchange}.{group}{suffix}"));
                }
                queues.extend((1..=3).map(|n| format!("{exchange}.{group}.delay.{n}")));
            }
            for q in queues {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            for x in [
                exchange.clone(),
                format!("{exchange}_dlq"),
                format!("{exchange}.default.redeliver"),
                format!("{exchange}.python.redeliver"),
            ] {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "done".into()).await;
        });
    })
    .join();
}
