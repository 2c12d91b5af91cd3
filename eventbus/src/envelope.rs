//! Events with their metadata: [`Envelope`] (typed) and [`AnyEnvelope`] (type-erased).

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::DomainEvent;
use crate::registration::EventRegistration;

/// The metadata every event carries: exactly the envelope fields of
/// eventsource-py's `DomainEvent`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMeta {
    pub(crate) event_id: Uuid,
    pub(crate) event_type: Cow<'static, str>,
    pub(crate) event_version: u32,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) aggregate_id: Uuid,
    pub(crate) aggregate_type: Cow<'static, str>,
    pub(crate) aggregate_version: u64,
    pub(crate) tenant_id: Option<Uuid>,
    pub(crate) actor_id: Option<String>,
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) metadata: Map<String, Value>,
}

impl EventMeta {
    fn new<E: DomainEvent>(aggregate_id: Uuid) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: Cow::Borrowed(E::EVENT_TYPE),
            event_version: E::EVENT_VERSION,
            // The wire carries microseconds; truncating here makes a round trip exact.
            occurred_at: Utc::now().trunc_subsecs(6),
            aggregate_id,
            aggregate_type: Cow::Borrowed(E::AGGREGATE_TYPE),
            aggregate_version: 1,
            tenant_id: None,
            actor_id: None,
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            metadata: Map::new(),
        }
    }

    /// Unique id of this event (AMQP `message_id`).
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }
    /// The event type name, e.g. `OrderPlaced`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// Schema version of the event (>= 1).
    pub fn event_version(&self) -> u32 {
        self.event_version
    }
    /// When the event happened (UTC, microsecond precision).
    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
    /// Id of the aggregate the event belongs to.
    pub fn aggregate_id(&self) -> Uuid {
        self.aggregate_id
    }
    /// Type of the aggregate, e.g. `Order`.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// Version of the aggregate after this event (>= 1).
    pub fn aggregate_version(&self) -> u64 {
        self.aggregate_version
    }
    /// Tenant, for multi-tenant systems.
    pub fn tenant_id(&self) -> Option<Uuid> {
        self.tenant_id
    }
    /// User or system that caused the event.
    pub fn actor_id(&self) -> Option<&str> {
        self.actor_id.as_deref()
    }
    /// Id shared by every event of one business flow.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }
    /// Id of the event that caused this one.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.causation_id
    }
    /// Free-form metadata (a JSON object).
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }
    /// `{aggregate_type}.{event_type}`: the routing key of this event.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.aggregate_type, self.event_type)
    }
}

/// A typed event with its metadata.
///
/// Build one with [`Envelope::new`] and the `with_*` methods; read the event's
/// fields through `Deref` (`envelope.customer_id`) and the metadata through
/// [`Envelope::meta`].
///
/// ```
/// # use eventbus::{DomainEvent, Envelope};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// # #[event(aggregate = "Order")]
/// # struct OrderPlaced { customer_id: String }
/// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// # #[event(aggregate = "Order")]
/// # struct OrderShipped { tracking_number: String }
/// let order_id = uuid::Uuid::new_v4();
/// let placed = Envelope::new(order_id, OrderPlaced { customer_id: "C-1".into() })
///     .with_actor("alice");
/// let shipped = Envelope::new(order_id, OrderShipped { tracking_number: "T-9".into() })
///     .aggregate_version(2)
///     .caused_by(&placed);
/// assert_eq!(shipped.meta().correlation_id(), placed.meta().correlation_id());
/// assert_eq!(shipped.meta().causation_id(), Some(placed.meta().event_id()));
/// assert_eq!(placed.customer_id, "C-1");
/// ```
#[derive(Clone, PartialEq)]
pub struct Envelope<E> {
    pub(crate) meta: EventMeta,
    pub(crate) event: E,
}

impl<E: DomainEvent> Envelope<E> {
    /// A new event for `aggregate_id`: fresh `event_id` and `correlation_id`,
    /// `occurred_at` now, `aggregate_version` 1.
    pub fn new(aggregate_id: Uuid, event: E) -> Self {
        Self {
            meta: EventMeta::new::<E>(aggregate_id),
            event,
        }
    }

    /// Sets `aggregate_version` (must be >= 1; checked when published).
    #[must_use]
    pub fn aggregate_version(mut self, aggregate_version: u64) -> Self {
        self.meta.aggregate_version = aggregate_version;
        self
    }

    /// Marks this event as caused by `cause`: copies its `correlation_id` (and
    /// `tenant_id` when this event has none) and sets `causation_id` to its `event_id`.
    #[must_use]
    pub fn caused_by(mut self, cause: &impl AsRef<EventMeta>) -> Self {
        let cause = cause.as_ref();
        self.meta.correlation_id = cause.correlation_id;
        self.meta.causation_id = Some(cause.event_id);
        if self.meta.tenant_id.is_none() {
            self.meta.tenant_id = cause.tenant_id;
        }
        self
    }

    /// Adds one entry to `metadata`.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.meta.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets `tenant_id`.
    #[must_use]
    pub fn with_tenant(mut self, tenant_id: Uuid) -> Self {
        self.meta.tenant_id = Some(tenant_id);
        self
    }

    /// Sets `actor_id`.
    #[must_use]
    pub fn with_actor(mut self, actor_id: impl Into<String>) -> Self {
        self.meta.actor_id = Some(actor_id.into());
        self
    }

    /// Sets `correlation_id` (default: a new one).
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.meta.correlation_id = correlation_id;
        self
    }

    /// Sets `event_id` (default: a new v4 UUID).
    #[must_use]
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.meta.event_id = event_id;
        self
    }

    /// Sets `occurred_at` (default: now), truncated to microseconds as on the wire.
    #[must_use]
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.meta.occurred_at = at.trunc_subsecs(6);
        self
    }

    /// Sets `event_version` (default: the type's `#[event(version = N)]`).
    #[must_use]
    pub fn event_version(mut self, version: u32) -> Self {
        self.meta.event_version = version;
        self
    }
}

impl<E> Envelope<E> {
    /// The event's metadata.
    pub fn meta(&self) -> &EventMeta {
        &self.meta
    }

    /// The event itself.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// Splits into metadata and event.
    pub fn into_parts(self) -> (EventMeta, E) {
        (self.meta, self.event)
    }
}

impl<E> AsRef<EventMeta> for Envelope<E> {
    fn as_ref(&self) -> &EventMeta {
        &self.meta
    }
}

impl AsRef<EventMeta> for EventMeta {
    fn as_ref(&self) -> &EventMeta {
        self
    }
}

impl<E> Deref for Envelope<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

impl<E: fmt::Debug> fmt::Debug for Envelope<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("meta", &self.meta)
            .field("event", &self.event)
            .finish()
    }
}

/// What the bus needs from an envelope without knowing its event type.
pub(crate) trait ErasedEnvelope: Any + Send + Sync {
    fn meta(&self) -> &EventMeta;
    fn as_any(&self) -> &dyn Any;
    fn encode_body(&self) -> Result<Vec<u8>, serde_json::Error>;
    fn rust_type(&self) -> &'static str;
    fn registration(&self) -> EventRegistration;
}

impl<E: DomainEvent> ErasedEnvelope for Envelope<E> {
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn encode_body(&self) -> Result<Vec<u8>, serde_json::Error> {
        crate::wire::encode_body(&self.meta, &self.event)
    }
    fn rust_type(&self) -> &'static str {
        std::any::type_name::<E>()
    }
    fn registration(&self) -> EventRegistration {
        EventRegistration::of::<E>()
    }
}

/// An envelope of any event type: what wildcard handlers receive and what
/// [`Bus::publish`](crate::Bus::publish) takes, so one call can publish
/// several event types. Cheap to clone.
///
/// ```
/// # use eventbus::{AnyEnvelope, DomainEvent, Envelope};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
/// # #[event(aggregate = "Order")]
/// # struct OrderPlaced { customer_id: String }
/// let any: AnyEnvelope = Envelope::new(uuid::Uuid::new_v4(), OrderPlaced { customer_id: "C".into() }).into();
/// assert_eq!(any.meta().event_type(), "OrderPlaced");
/// assert_eq!(any.downcast_ref::<OrderPlaced>().map(|e| e.customer_id.as_str()), Some("C"));
/// ```
#[derive(Clone)]
pub struct AnyEnvelope {
    inner: Arc<dyn ErasedEnvelope>,
}

impl AnyEnvelope {
    /// The event's metadata.
    pub fn meta(&self) -> &EventMeta {
        self.inner.meta()
    }

    /// The typed envelope, if this is an `E`.
    pub fn downcast_ref<E: DomainEvent>(&self) -> Option<&Envelope<E>> {
        self.inner.as_any().downcast_ref::<Envelope<E>>()
    }

    /// Is this an `E`?
    pub fn is<E: DomainEvent>(&self) -> bool {
        self.inner.as_any().is::<Envelope<E>>()
    }

    /// The event's own fields and the metadata, as the JSON body sent on the wire.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.inner.encode_body()?)
    }

    pub(crate) fn encode_body(&self) -> Result<Vec<u8>, serde_json::Error> {
        self.inner.encode_body()
    }

    /// The typed envelope as a shared pointer, if this is an `E`.
    pub fn downcast_arc<E: DomainEvent>(&self) -> Option<Arc<Envelope<E>>> {
        let any: Arc<dyn Any + Send + Sync> = self.inner.clone();
        any.downcast::<Envelope<E>>().ok()
    }

    /// The registration of this event's type.
    pub(crate) fn registration(&self) -> EventRegistration {
        self.inner.registration()
    }

    /// The Rust type the event was decoded into.
    pub fn rust_type(&self) -> &'static str {
        self.inner.rust_type()
    }
}

impl AsRef<EventMeta> for AnyEnvelope {
    fn as_ref(&self) -> &EventMeta {
        self.meta()
    }
}

impl<E: DomainEvent> From<Envelope<E>> for AnyEnvelope {
    fn from(envelope: Envelope<E>) -> Self {
        Self {
            inner: Arc::new(envelope),
        }
    }
}

impl fmt::Debug for AnyEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEnvelope")
            .field("rust_type", &self.rust_type())
            .field("meta", self.meta())
            .finish_non_exhaustive()
    }
}
