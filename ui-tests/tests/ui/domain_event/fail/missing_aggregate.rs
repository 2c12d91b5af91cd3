use eventbus::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
struct OrderPlaced {
    customer_id: String,
}

fn main() {}
