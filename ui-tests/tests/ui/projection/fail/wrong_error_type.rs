use eventbus::{DomainEvent, Envelope, handles, projection};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

#[derive(Default)]
struct Stats;

struct MyError;

#[projection]
impl Stats {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), MyError> {
        let _ = event;
        Err(MyError)
    }
}

fn main() {}
