use eventbus::{DomainEvent, Envelope, HandlerError, handles};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {
    tracking_number: String,
}

#[handles(OrderPlaced, OrderShipped)]
async fn on_order(event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {}
