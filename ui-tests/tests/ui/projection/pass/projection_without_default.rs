//! A projection whose type has no `Default`: the application supplies the instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use eventbus::{DomainEvent, Envelope, HandlerError, Projection, handles, projection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
}

/// No `Default`: a database handle, say.
struct Database {
    rows: AtomicU64,
}

struct OrderTable {
    db: Arc<Database>,
}

#[projection]
impl OrderTable {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let _ = &event.customer_id;
        self.db.rows.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn main() {
    let registration = OrderTable::registration();
    assert_eq!(registration.group, None);
    assert!((registration.default_instance)().is_none());
    let _ = OrderTable {
        db: Arc::new(Database {
            rows: AtomicU64::new(0),
        }),
    };
}
