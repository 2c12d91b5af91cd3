use eventbus::{DomainEvent, Envelope, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

#[derive(Default)]
struct Stats;

struct NotAnEvent {
    customer_id: String,
}

#[projection]
impl Stats {
    #[handles(NotAnEvent)]
    async fn on_placed(&self, event: &Envelope<NotAnEvent>) -> Result<(), HandlerError> {
        let _ = &event.customer_id;
        Ok(())
    }
}

fn main() {}
