//! The subscription API of eventsource-py's `EventBus`, at runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::dispatch::{SubscriptionId, SubscriptionKind};
use crate::envelope::{AnyEnvelope, Envelope};
use crate::error::Error;
use crate::event::DomainEvent;
use crate::handler::{HandlerEntry, Instance, IntoHandlerResult, Invoke};
use crate::registration::{EventRegistration, Projection};

use super::Bus;

impl Bus {
    /// Subscribes a handler to `E` in the default consumer group.
    ///
    /// ```
    /// # use eventbus::{Bus, DomainEvent, Envelope, HandlerError};
    /// # use serde::{Deserialize, Serialize};
    /// # use std::sync::Arc;
    /// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// # #[event(aggregate = "Order")]
    /// # struct OrderPlaced { customer_id: String }
    /// # async fn demo(bus: Bus) -> Result<(), eventbus::Error> {
    /// let id = bus.subscribe(|event: Arc<Envelope<OrderPlaced>>| async move {
    ///     println!("order for {}", event.customer_id);
    ///     Ok::<_, HandlerError>(())
    /// })?;
    /// assert!(bus.unsubscribe(id));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// An error if another type already uses `E`'s event type name: its
    /// messages would be decoded as that type.
    pub fn subscribe<E, F, Fut>(&self, handler: F) -> Result<SubscriptionId, Error>
    where
        E: DomainEvent,
        F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        self.subscribe_named::<E, F, Fut>(std::any::type_name::<F>(), handler)
    }

    /// [`Bus::subscribe`] with a name for logs and retries (a retry re-runs
    /// only the handlers that failed, by name).
    pub fn subscribe_named<E, F, Fut>(
        &self,
        name: &str,
        handler: F,
    ) -> Result<SubscriptionId, Error>
    where
        E: DomainEvent,
        F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        let reg = EventRegistration::of::<E>();
        self.ctx.register_event(reg)?;
        Ok(self.ctx.dispatcher.add(HandlerEntry::new(
            name,
            self.ctx.config.consumer_group.as_str(),
            Some(reg),
            Invoke::typed(handler),
        )))
    }

    /// Removes a subscription made with [`Bus::subscribe`].
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.ctx.dispatcher.remove(id, SubscriptionKind::Typed)
    }

    /// Subscribes every `#[handles]` method of a projection instance (the
    /// seed's `subscribe_all`: the projection declares its event types).
    ///
    /// An error, and nothing subscribed, if one of its event type names is
    /// taken by another type.
    pub fn subscribe_all<P: Projection>(
        &self,
        projection: P,
    ) -> Result<Vec<SubscriptionId>, Error> {
        let instance: Instance = Arc::new(projection);
        let entries = HandlerEntry::of_projection(
            P::registration(),
            &instance,
            &self.ctx.config.consumer_group,
        );
        for event in entries.iter().filter_map(|e| e.event) {
            self.ctx.register_event(event)?;
        }
        Ok(entries
            .into_iter()
            .map(|entry| self.ctx.dispatcher.add(entry))
            .collect())
    }

    /// Subscribes a handler to every event (audit logs, metrics).
    pub fn subscribe_to_all_events<F, Fut>(&self, handler: F) -> SubscriptionId
    where
        F: Fn(AnyEnvelope) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        self.ctx.dispatcher.add(HandlerEntry::new(
            std::any::type_name::<F>(),
            self.ctx.config.consumer_group.as_str(),
            None,
            Invoke::any(handler),
        ))
    }

    /// Removes a subscription made with [`Bus::subscribe_to_all_events`].
    pub fn unsubscribe_from_all_events(&self, id: SubscriptionId) -> bool {
        self.ctx.dispatcher.remove(id, SubscriptionKind::Wildcard)
    }

    /// Removes every subscription, including the registered projections.
    pub fn clear_subscribers(&self) {
        self.ctx.dispatcher.clear();
    }

    /// Handlers of `E` (typed only), across groups.
    pub fn subscriber_count<E: DomainEvent>(&self) -> usize {
        self.subscriber_count_for(E::EVENT_TYPE)
    }

    /// Handlers of the event type named `event_type` (typed only), across groups.
    pub fn subscriber_count_for(&self, event_type: &str) -> usize {
        self.ctx
            .dispatcher
            .snapshot()
            .groups
            .values()
            .map(|g| {
                g.handlers_for(event_type)
                    .filter(|h| h.event.is_some())
                    .count()
            })
            .sum()
    }

    /// Wildcard handlers, across groups.
    pub fn wildcard_subscriber_count(&self) -> usize {
        self.ctx
            .dispatcher
            .snapshot()
            .groups
            .values()
            .map(|g| g.handlers_for("").count())
            .sum()
    }

    /// Every handler, typed and wildcard.
    pub fn total_subscriber_count(&self) -> usize {
        self.ctx.dispatcher.len()
    }

    /// The consumer groups and the event types each handles (`*` = all).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        self.ctx
            .dispatcher
            .snapshot()
            .groups
            .iter()
            .map(|(name, g)| {
                let mut events: Vec<String> = g.events().map(|e| e.event_type.to_owned()).collect();
                if g.has_wildcard() {
                    events.push("*".to_owned());
                }
                (name.to_string(), events)
            })
            .collect()
    }
}
