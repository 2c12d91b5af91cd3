use eventbus::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order", version = 5000000000)]
struct OrderPlaced {
    customer_id: String,
}

fn main() {}
