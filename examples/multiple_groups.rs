//! Several consumer groups, each receiving every event: billing, shipping and
//! analytics each keep their own queue (`{exchange}.{group}` on RabbitMQ).
//!
//! ```text
//! cargo run --example multiple_groups                      # in memory
//! EVENTBUS_URL=amqp://guest:guest@localhost:5672/ cargo run --example multiple_groups
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};
use support::Counter;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
    total_amount: f64,
}

static HANDLED: Counter = Counter::new();

#[derive(Default)]
struct Billing;

#[projection(group = "billing")]
impl Billing {
    #[handles(OrderPlaced)]
    async fn invoice(&self, order: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        println!(
            "  [billing]   invoice {} for ${:.2}",
            order.customer_id, order.total_amount
        );
        HANDLED.add();
        Ok(())
    }
}

#[derive(Default)]
struct Shipping;

#[projection(group = "shipping")]
impl Shipping {
    #[handles(OrderPlaced)]
    async fn pack(&self, order: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        println!("  [shipping]  pack order {}", order.meta().aggregate_id());
        HANDLED.add();
        Ok(())
    }
}

#[derive(Default)]
struct Analytics;

#[projection(group = "analytics")]
impl Analytics {
    #[handles(OrderPlaced)]
    async fn record(&self, order: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        println!("  [analytics] record sale to {}", order.customer_id);
        HANDLED.add();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = support::builder()
        .configure(|c| support::own_names(c, "examples.groups"))
        .build()
        .await?;
    for (group, events) in bus.groups() {
        println!(
            "group {group:<10} queue {:<28} handles {events:?}",
            bus.config().group_queue_name(&group)
        );
    }
    bus.start_consuming().await?;
    let orders = ["CUST-1", "CUST-2"].map(|customer| {
        Envelope::new(
            uuid::Uuid::new_v4(),
            OrderPlaced {
                customer_id: customer.into(),
                total_amount: 25.0,
            },
        )
    });
    bus.publish(orders).await?;
    // 2 events x 3 groups.
    HANDLED.wait_for(6).await?;
    bus.shutdown(Duration::from_secs(10)).await?;
    println!(
        "2 events published, {} deliveries: every group got every event",
        HANDLED.get()
    );
    Ok(())
}
