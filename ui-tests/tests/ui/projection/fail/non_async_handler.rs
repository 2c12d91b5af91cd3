use eventbus::{DomainEvent, Envelope, HandlerError, handles, projection};
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
    fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let _ = event;
        Ok(())
    }
}

fn main() {}
