use eventbus::{DomainEvent, projection};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

#[projection]
struct Reporting {
    count: u64,
}

fn main() {}
