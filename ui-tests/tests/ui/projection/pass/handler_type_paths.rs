//! The event may be named differently in `#[handles(...)]` and in the
//! parameter, as long as it is the same type.

use eventbus::{Envelope, HandlerError, handles, projection};

mod events {
    use eventbus::DomainEvent;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    #[event(aggregate = "Order")]
    pub struct OrderPlaced {
        pub customer_id: String,
    }
}

use events::OrderPlaced;

type Placed = events::OrderPlaced;

#[derive(Default)]
struct Stats;

#[projection]
impl Stats {
    #[handles(crate::events::OrderPlaced)]
    async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let _ = &event.customer_id;
        Ok(())
    }
}

#[handles(Placed)]
async fn notify(event: &'_ Envelope<events::OrderPlaced>) -> Result<(), HandlerError> {
    let _ = &event.customer_id;
    Ok(())
}

fn main() {
    let _ = (Stats, notify);
}
