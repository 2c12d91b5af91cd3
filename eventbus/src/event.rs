//! The [`DomainEvent`] trait that `#[derive(DomainEvent)]` implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed domain event: a struct with named fields that travels in an
/// [`Envelope`](crate::Envelope).
///
/// Implement it with `#[derive(DomainEvent)]`, never by hand: the derive also
/// registers the event's decoder so a consumer can turn a message into this
/// type from its `event_type`.
///
/// ```
/// use eventbus::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// #[event(aggregate = "Order")]
/// struct OrderPlaced {
///     customer_id: String,
///     total_amount: f64,
/// }
///
/// assert_eq!(OrderPlaced::EVENT_TYPE, "OrderPlaced");
/// assert_eq!(OrderPlaced::ROUTING_KEY, "Order.OrderPlaced");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event",
    label = "not a domain event",
    note = "add `#[derive(DomainEvent)]` and `#[event(aggregate = \"...\")]` to `{Self}`"
)]
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The event type name written to `event_type` (default: the struct's name).
    const EVENT_TYPE: &'static str;
    /// The aggregate type written to `aggregate_type`.
    const AGGREGATE_TYPE: &'static str;
    /// `{AGGREGATE_TYPE}.{EVENT_TYPE}`: the AMQP routing key.
    const ROUTING_KEY: &'static str;
    /// The schema version written to `event_version` (default 1).
    const EVENT_VERSION: u32;
}
