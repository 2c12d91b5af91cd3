use eventbus::{DomainEvent, Envelope, HandlerError, handles};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

#[handles(OrderPlacd)]
async fn on_placed(event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {}
