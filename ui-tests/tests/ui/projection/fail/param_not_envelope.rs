use eventbus::{DomainEvent, HandlerError, handles, projection};
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
    async fn on_placed(&self, event: OrderPlaced) -> Result<(), HandlerError> {
        let _ = event.customer_id;
        Ok(())
    }
}

fn main() {}
