//! Free `async fn` handlers, with and without a consumer group.

use eventbus::{AnyEnvelope, DomainEvent, Envelope, HandlerError, handles};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {
    tracking_number: String,
}

#[handles(OrderShipped, group = "notifications")]
async fn notify(event: &Envelope<OrderShipped>) -> Result<(), HandlerError> {
    let _ = &event.tracking_number;
    Ok(())
}

#[handles(all, group = "audit-log")]
async fn audit(event: &AnyEnvelope) -> Result<(), HandlerError> {
    let _ = event.meta().event_type();
    Ok(())
}

#[handles(OrderShipped)]
async fn in_default_group(event: &Envelope<OrderShipped>) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {
    // The functions stay callable as written.
    let _ = (notify, audit, in_default_group);
}
