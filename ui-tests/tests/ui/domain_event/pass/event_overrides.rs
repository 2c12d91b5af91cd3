//! `name` and `version` override the defaults; `crate` names where eventbus is.

use eventbus::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order", name = "order-placed_v2", version = 2)]
struct OrderPlacedV2 {
    customer_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
#[event(version = 3)]
struct OrderShipped {
    tracking_number: String,
}

mod reexport {
    pub use eventbus as bus;
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Customer", crate = "crate::reexport::bus")]
struct CustomerCreated {
    name: String,
}

fn main() {
    assert_eq!(OrderPlacedV2::EVENT_TYPE, "order-placed_v2");
    assert_eq!(OrderPlacedV2::AGGREGATE_TYPE, "Order");
    assert_eq!(OrderPlacedV2::ROUTING_KEY, "Order.order-placed_v2");
    assert_eq!(OrderPlacedV2::EVENT_VERSION, 2);
    assert_eq!(OrderShipped::EVENT_TYPE, "OrderShipped");
    assert_eq!(OrderShipped::EVENT_VERSION, 3);
    assert_eq!(CustomerCreated::ROUTING_KEY, "Customer.CustomerCreated");
    assert_eq!(CustomerCreated::EVENT_VERSION, 1);
}
