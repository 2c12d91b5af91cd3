use eventbus::{DomainEvent, Envelope, HandlerError, handles};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

struct NotAnEvent;

#[handles(NotAnEvent)]
async fn notify(event: &Envelope<NotAnEvent>) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {}
