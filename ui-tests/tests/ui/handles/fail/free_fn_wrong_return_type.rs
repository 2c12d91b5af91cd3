use eventbus::{AnyEnvelope, DomainEvent, handles};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

#[handles(all)]
async fn audit(event: &AnyEnvelope) -> bool {
    let _ = event;
    true
}

fn main() {}
