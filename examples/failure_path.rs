//! The failure path: a handler that fails, its retries waiting on the broker,
//! the dead-letter queue, and a replay once the bug is fixed. Needs RabbitMQ.
//!
//! ```text
//! cargo run --example failure_path
//! cargo run -p eventbus-cli -- --exchange examples.failures dlq list --group payments
//! ```
//!
//! It leaves one message in the DLQ of group `payments` for the CLI to show.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use support::Counter;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Payment")]
struct PaymentRequested {
    order_id: String,
    amount: f64,
}

/// Until "the fix is deployed", every payment to the sandbox gateway fails.
static FIXED: AtomicBool = AtomicBool::new(false);
static ATTEMPTS: Counter = Counter::new();
static CHARGED: Counter = Counter::new();

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = support::rabbitmq_builder()
        .configure(|c| {
            support::own_names(c, "examples.failures");
            c.consumer_group = "payments".into();
            c.max_retries = 2;
            c.retry_base_delay = Duration::from_millis(300);
        })
        .handler::<PaymentRequested, _, _>(
            "charge",
            |p: Arc<Envelope<PaymentRequested>>| async move {
                ATTEMPTS.add();
                if p.order_id == "ORDER-INVALID" {
                    println!(
                        "  charge {}: invalid order, giving up at once (permanent error)",
                        p.order_id
                    );
                    return Err(HandlerError::permanent("order id is not valid"));
                }
                if !FIXED.load(Ordering::SeqCst) {
                    println!(
                        "  charge {}: gateway timeout (attempt {}), will retry",
                        p.order_id,
                        ATTEMPTS.get()
                    );
                    return Err(HandlerError::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "gateway timeout",
                    )));
                }
                println!("  charge {}: ${:.2} charged", p.order_id, p.amount);
                CHARGED.add();
                Ok(())
            },
        )
        .build()
        .await?;
    let dlq = bus.dlq("payments");
    dlq.purge().await?;
    bus.start_consuming().await?;

    println!("1. publishing a payment the handler cannot process yet, and an invalid one");
    bus.publish([
        Envelope::new(
            uuid::Uuid::new_v4(),
            PaymentRequested {
                order_id: "ORDER-1".into(),
                amount: 99.5,
            },
        ),
        Envelope::new(
            uuid::Uuid::new_v4(),
            PaymentRequested {
                order_id: "ORDER-INVALID".into(),
                amount: 1.0,
            },
        ),
    ])
    .await?;
    // 3 attempts for ORDER-1 (max_retries = 2), 1 for the invalid one.
    ATTEMPTS.wait_for(4).await?;
    while dlq.count().await? < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "2. after its retries, ORDER-1 is in the dead-letter queue `{}`:",
        dlq.queue_name()
    );
    for m in dlq.list(10).await? {
        println!(
            "   {} {} retries={} reason={:?}",
            m.message_id.unwrap_or_default(),
            m.event_type.unwrap_or_default(),
            m.retry_count.unwrap_or_default(),
            m.reason.unwrap_or_default()
        );
    }

    println!("3. the fix is deployed; replaying the timed-out payment by id");
    FIXED.store(true, Ordering::SeqCst);
    for m in dlq.list(10).await? {
        if m.retry_count == Some(2)
            && let Some(id) = m.message_id
        {
            let replayed = dlq.replay(&id).await?;
            println!("   replayed {id}: {replayed}");
        }
    }
    CHARGED.wait_for(1).await?;
    let left = dlq.count().await?;
    let queue = dlq.queue_name();
    // The `eventbus` tool finds the DLQ as the bus did: by the exchange on
    // RabbitMQ, by the stream or topic prefix elsewhere (the example's own
    // names, or the environment's).
    let config = bus.config();
    let tool = match bus.transport_name() {
        "rabbitmq" => format!(
            "eventbus --exchange {} dlq list --group payments",
            config.exchange_name
        ),
        "redis" => format!(
            "EVENTBUS_STREAM_PREFIX={} eventbus dlq list --group payments",
            config.stream_prefix
        ),
        "kafka" => format!(
            "EVENTBUS_TOPIC_PREFIX={} eventbus dlq list --group payments",
            config.topic_prefix
        ),
        _ => "eventbus dlq list --group payments, with the same EVENTBUS_* settings".to_owned(),
    };
    bus.shutdown(Duration::from_secs(10)).await?;
    println!(
        "4. done: {} charged, {left} left in {queue} (see `{tool}`)",
        CHARGED.get()
    );
    Ok(())
}
