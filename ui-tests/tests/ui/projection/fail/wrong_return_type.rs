use eventbus::{DomainEvent, Envelope, handles, projection};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

#[derive(Default)]
struct Stats;

#[projection]
impl Stats {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> String {
        event.customer_id.clone()
    }
}

fn main() {}
