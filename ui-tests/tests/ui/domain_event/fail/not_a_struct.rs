use eventbus::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
enum OrderEvent {
    Placed { customer_id: String },
    Shipped { tracking_number: String },
}

fn main() {}
