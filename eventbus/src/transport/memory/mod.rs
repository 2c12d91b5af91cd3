//! The in-memory transport: the same encode, route, decode and dispatch steps as
//! a broker, inside one process.
//!
//! Every event goes through the wire codec and the one decode path of every
//! transport ([`crate::wire`]), so a test written against this transport
//! exercises the same bytes RabbitMQ would carry. Each consumer group receives
//! every event it has a handler for, once; an event no group takes is
//! [`Error::Unroutable`], as with `mandatory` publishing on RabbitMQ. Each
//! group runs its handlers under the same [`DeliveryOrder`](crate::DeliveryOrder)
//! as on a broker, so concurrent publishers see the same ordering guarantees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use uuid::Uuid;

use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::runtime::{self, BusContext, HealthStatus, Sequencer};
use crate::stats::add;
use crate::transport::Transport;
use crate::wire::{self, HEADER_EVENT_TYPE, Incoming};

/// In-process delivery to every group of the bus.
#[derive(Debug)]
pub(crate) struct MemoryTransport {
    ctx: Arc<BusContext>,
    /// Each group's sequencer, made on its first delivery.
    sequencers: Mutex<HashMap<Arc<str>, Arc<Sequencer<Uuid>>>>,
}

impl MemoryTransport {
    pub(crate) fn new(ctx: Arc<BusContext>) -> Self {
        Self {
            ctx,
            sequencers: Mutex::default(),
        }
    }

    fn sequencer(&self, group: &Arc<str>) -> Arc<Sequencer<Uuid>> {
        self.sequencers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(group.clone())
            .or_insert_with(|| runtime::sequencer(self.ctx.config.ordering_for(group)))
            .clone()
    }

    /// Encodes and decodes `event` as a broker would carry it, and queues one
    /// delivery per group that takes it, each in its group's sequencer now.
    fn route(
        &self,
        event: &AnyEnvelope,
        trace: &[(&'static str, wire::HeaderValue)],
    ) -> Result<Vec<Delivery>, Error> {
        let ctx = &self.ctx;
        let meta = event.meta();
        let message = wire::encode_for_publish(event, trace)?;
        let table = ctx.dispatcher.snapshot();
        let groups: Vec<_> = table
            .groups
            .iter()
            .filter(|(_, g)| g.takes(meta.event_type()))
            .map(|(name, _)| name.clone())
            .collect();
        if groups.is_empty() {
            return Err(Error::Unroutable {
                exchange: ctx.config.exchange_name.clone(),
                routing_key: message.routing_key,
                event_id: message.message_id,
            });
        }
        // A bus decodes what it publishes (a wildcard group may take a type
        // no handler names).
        ctx.register_event(event.registration())?;
        // Decode what was encoded: the consumer sees exactly what the wire carries.
        let delivered = Arc::new(wire::decode(
            &ctx.event_types(),
            Incoming {
                content_type: Some(wire::CONTENT_TYPE),
                event_type: message
                    .header(HEADER_EVENT_TYPE)
                    .and_then(wire::HeaderValue::as_str),
                body: &message.body,
            },
        )?);
        add(&ctx.stats.events_published, 1);
        ctx.stats.last_publish_at.now();
        let deliveries = groups.into_iter().map(|group| {
            let mut turn = self.sequencer(&group).enter(Some(meta.aggregate_id()));
            let (ctx, table, delivered) = (ctx.clone(), table.clone(), delivered.clone());
            let delivery: Delivery = Box::pin(async move {
                turn.wait().await;
                add(&ctx.stats.events_consumed, 1);
                ctx.stats.last_consume_at.now();
                let outcome = ctx
                    .dispatcher
                    .dispatch(&table, &group, &delivered, &ctx.stats)
                    .await;
                if outcome.failures.is_empty() {
                    add(&ctx.stats.events_processed_success, 1);
                } else {
                    add(&ctx.stats.events_processed_failed, 1);
                    let meta = delivered.meta();
                    // In memory there is no retry or dead-letter queue.
                    tracing::error!(
                        %group,
                        event_type = %meta.event_type(),
                        event_id = %meta.event_id(),
                        reason = %outcome.describe_failures(),
                        "event handler failed (the in-memory transport does not retry)"
                    );
                }
                drop(turn);
            });
            delivery
        });
        Ok(deliveries.collect())
    }
}

/// One group's handling of one event.
type Delivery = futures_util::future::BoxFuture<'static, ()>;

/// Deliveries of events published from inside a handler, run by the publish
/// that ran the handler once its own deliveries are done.
type Deferred = Mutex<Vec<Delivery>>;

tokio::task_local! {
    /// Set while a publish runs handlers (on the publishing task).
    static DEFERRED: Arc<Deferred>;
}

impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    /// Publishes `events` in order, awaiting every handler of every group,
    /// and the handlers of what those handlers publish, before the next.
    async fn publish(&self, events: &[AnyEnvelope]) -> Result<usize, Error> {
        let trace = wire::publish_trace(self.ctx.config.enable_tracing);
        if let Ok(deferred) = DEFERRED.try_with(Arc::clone) {
            // From inside a handler, whose turn is held until it returns: the
            // deliveries run once it has (as on a broker), awaited by the
            // publish that ran it. Awaited here, a delivery of the handler's
            // own aggregate and group would wait for it forever.
            for event in events {
                let deliveries = self.route(event, &trace)?;
                deferred
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(deliveries);
            }
            return Ok(events.len());
        }
        let deferred = Arc::new(Deferred::default());
        DEFERRED
            .scope(deferred.clone(), async {
                for event in events {
                    join_all(self.route(event, &trace)?).await;
                    // What the handlers published, round by round (their
                    // handlers may publish too).
                    loop {
                        let round = std::mem::take(
                            &mut *deferred
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner),
                        );
                        if round.is_empty() {
                            break;
                        }
                        join_all(round).await;
                    }
                }
                Ok(events.len())
            })
            .await
    }

    /// Publishing delivers directly: nothing to start.
    async fn start_consuming(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn stop_consuming(&self, _drain: Duration) -> Result<(), Error> {
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn health(&self) -> HealthStatus {
        HealthStatus::up(self.name())
    }
}
