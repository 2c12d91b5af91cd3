//! A library crate holding a service's events and handlers, as teams split
//! them: the binary that runs the bus (`shop-service`) names nothing here.

use std::sync::atomic::{AtomicU64, Ordering};

use eventbus::{Envelope, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};

// `pub fn eventbus_handlers()`: what the service passes to `BusBuilder::link`.
eventbus::export_handlers!();

/// A customer placed an order.
#[derive(Debug, Clone, Serialize, Deserialize, eventbus::DomainEvent)]
#[event(aggregate = "Order")]
pub struct OrderPlaced {
    /// Who ordered.
    pub customer_id: String,
    /// How much.
    pub total_amount: f64,
}

/// Running revenue, built from `OrderPlaced`.
#[derive(Debug, Default)]
pub struct Revenue {
    cents: AtomicU64,
}

#[projection(group = "revenue")]
impl Revenue {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        let cents = (event.total_amount * 100.0).round() as u64;
        let total = self.cents.fetch_add(cents, Ordering::Relaxed) + cents;
        println!("revenue now {total} cents");
        Ok(())
    }
}

/// Sends the confirmation mail.
#[handles(OrderPlaced)]
async fn send_confirmation(event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
    println!("confirmation sent to {}", event.customer_id);
    Ok(())
}
