//! A projection with two typed handlers and a wildcard, built with `Default`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use eventbus::{AnyEnvelope, DomainEvent, Envelope, HandlerError, Projection, handles, projection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
    total_amount: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {
    tracking_number: String,
}

#[derive(Default)]
struct OrderStatistics {
    placed: AtomicU64,
    shipped: AtomicU64,
    seen: AtomicU64,
    revenue: Mutex<f64>,
}

#[projection(group = "reporting")]
impl OrderStatistics {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        self.placed.fetch_add(1, Ordering::Relaxed);
        *self.revenue.lock().map_err(|e| HandlerError::new(e.to_string()))? += event.total_amount;
        let _ = &event.customer_id;
        Ok(())
    }

    /// Any error type that converts into `HandlerError` will do.
    #[handles(OrderShipped)]
    async fn on_shipped(&self, event: &Envelope<OrderShipped>) -> Result<(), std::io::Error> {
        self.shipped.fetch_add(1, Ordering::Relaxed);
        let _ = &event.tracking_number;
        Ok(())
    }

    #[handles(all)]
    async fn audit(&self, event: &AnyEnvelope) -> Result<(), HandlerError> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let _ = event.meta().event_type();
        Ok(())
    }

    /// Methods without `#[handles]` are left alone.
    fn total(&self) -> u64 {
        self.placed.load(Ordering::Relaxed) + self.shipped.load(Ordering::Relaxed)
    }
}

fn main() {
    let registration = OrderStatistics::registration();
    assert_eq!(registration.group, Some("reporting"));
    assert_eq!(registration.handlers.len(), 3);
    assert!((registration.default_instance)().is_some());
    assert_eq!(OrderStatistics::default().total(), 0);
}
