//! Basic publish and subscribe: a closure subscribed to one event type.
//!
//! ```text
//! cargo run --example basic_pubsub                      # in memory
//! EVENTBUS_URL=amqp://guest:guest@localhost:5672/ cargo run --example basic_pubsub
//! ```

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use support::Counter;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderCreated {
    customer_id: String,
    total: f64,
}

static HANDLED: Counter = Counter::new();

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = support::builder()
        .configure(|c| support::own_names(c, "examples.basic"))
        .handler::<OrderCreated, _, _>(
            "print_order",
            |event: Arc<Envelope<OrderCreated>>| async move {
                println!(
                    "received {} for {}: ${:.2} (routing key {})",
                    event.meta().event_type(),
                    event.customer_id,
                    event.total,
                    event.meta().routing_key()
                );
                HANDLED.add();
                Ok::<_, HandlerError>(())
            },
        )
        .build()
        .await?;
    bus.start_consuming().await?;

    let events: Vec<_> = (1..=3)
        .map(|i| {
            Envelope::new(
                uuid::Uuid::new_v4(),
                OrderCreated {
                    customer_id: format!("CUST-{i:03}"),
                    total: f64::from(i) * 10.0,
                },
            )
        })
        .collect();
    let report = bus.publish(events).await?;
    println!("published {} of {}", report.published, report.total);
    HANDLED.wait_for(3).await?;
    bus.shutdown(Duration::from_secs(10)).await?;
    println!("handled {} events", HANDLED.get());
    Ok(())
}
