use eventbus::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Sales.Order")]
struct OrderPlaced {
    customer_id: String,
}

fn main() {}
