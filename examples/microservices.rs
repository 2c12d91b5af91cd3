//! The seed's exercise: Customer, Order and Payment services on one topic
//! exchange, each receiving only its own events. Each service is a consumer
//! group whose queue is bound to exactly the routing keys it handles.
//!
//! ```text
//! cargo run --example microservices                      # in memory
//! EVENTBUS_URL=amqp://guest:guest@localhost:5672/ cargo run --example microservices
//! ```

#[path = "support/mod.rs"]
mod support;

use std::sync::Mutex;
use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};
use support::Counter;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Customer")]
struct CustomerCreated {
    name: String,
    email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderCreated {
    customer_id: String,
    total: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Payment")]
struct PaymentReceived {
    order_id: String,
    amount: f64,
}

static HANDLED: Counter = Counter::new();

#[derive(Default)]
struct CustomerService {
    customers: Mutex<Vec<String>>,
}

#[projection(group = "customer-service")]
impl CustomerService {
    #[handles(CustomerCreated)]
    async fn registered(&self, event: &Envelope<CustomerCreated>) -> Result<(), HandlerError> {
        println!(
            "  [CustomerService] registered {} <{}>",
            event.name, event.email
        );
        self.customers
            .lock()
            .map_err(|e| HandlerError::new(e.to_string()))?
            .push(event.name.clone());
        HANDLED.add();
        Ok(())
    }
}

#[derive(Default)]
struct OrderService;

#[projection(group = "order-service")]
impl OrderService {
    #[handles(OrderCreated)]
    async fn created(&self, event: &Envelope<OrderCreated>) -> Result<(), HandlerError> {
        println!(
            "  [OrderService] order ${:.2} for {}",
            event.total, event.customer_id
        );
        HANDLED.add();
        Ok(())
    }
}

#[derive(Default)]
struct PaymentService;

#[projection(group = "payment-service")]
impl PaymentService {
    #[handles(PaymentReceived)]
    async fn received(&self, event: &Envelope<PaymentReceived>) -> Result<(), HandlerError> {
        println!(
            "  [PaymentService] payment ${:.2} for order {}",
            event.amount, event.order_id
        );
        HANDLED.add();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = support::builder()
        .configure(|c| support::own_names(c, "examples.microservices"))
        .build()
        .await?;
    println!(
        "exchange `{}` ({}):",
        bus.config().exchange_name,
        bus.config().exchange_type
    );
    for (group, events) in bus.groups() {
        println!(
            "  queue {:<40} receives {events:?}",
            bus.config().group_queue_name(&group)
        );
    }
    bus.start_consuming().await?;

    let customer = Envelope::new(
        Uuid::new_v4(),
        CustomerCreated {
            name: "Alice Smith".into(),
            email: "alice@example.com".into(),
        },
    );
    let order = Envelope::new(
        Uuid::new_v4(),
        OrderCreated {
            customer_id: customer.meta().aggregate_id().to_string(),
            total: 150.0,
        },
    )
    .caused_by(&customer);
    let payment = Envelope::new(
        Uuid::new_v4(),
        PaymentReceived {
            order_id: order.meta().aggregate_id().to_string(),
            amount: 150.0,
        },
    )
    .caused_by(&order);
    bus.publish([
        customer.into(),
        order.into(),
        eventbus::AnyEnvelope::from(payment),
    ])
    .await?;
    HANDLED.wait_for(3).await?;
    bus.shutdown(Duration::from_secs(10)).await?;
    println!("3 events, 3 deliveries: each service received only its own event");
    Ok(())
}
