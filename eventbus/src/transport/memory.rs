//! The in-memory transport: the same encode, route, decode and dispatch steps as
//! the broker, inside one process.
//!
//! Every event goes through the wire codec, so a test written against this
//! transport exercises the same bytes RabbitMQ would carry. Each consumer group
//! receives every event it has a handler for, once; an event no group takes is
//! [`Error::Unroutable`], as with `mandatory` publishing on RabbitMQ.

use std::sync::Arc;

use futures_util::future::join_all;

use crate::bus::Shared;
use crate::codec;
use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::stats::add;

/// Publishes `events` in order, awaiting every handler of every group.
pub(crate) async fn publish(shared: &Arc<Shared>, events: &[AnyEnvelope]) -> Result<usize, Error> {
    let mut published = 0;
    for event in events {
        let meta = event.meta();
        let wire = codec::encode_for_publish(event)?;
        let table = shared.dispatcher.snapshot();
        let groups: Vec<_> = table
            .groups
            .iter()
            .filter(|(_, g)| g.takes(meta.event_type()))
            .map(|(name, _)| name.clone())
            .collect();
        if groups.is_empty() {
            return Err(Error::Unroutable {
                exchange: shared.config.exchange_name.clone(),
                routing_key: wire.routing_key,
                event_id: wire.message_id,
            });
        }
        // Decode what was encoded: the consumer sees exactly what the wire carries.
        let delivered = event.registration().decode(&wire.body)?;
        add(&shared.stats.events_published, 1);
        shared.stats.last_publish_at.now();
        published += 1;
        let deliveries = groups.iter().map(|group| {
            let table = &table;
            let delivered = &delivered;
            async move {
                add(&shared.stats.events_consumed, 1);
                shared.stats.last_consume_at.now();
                let outcome = shared
                    .dispatcher
                    .dispatch(table, group, delivered, &shared.stats)
                    .await;
                if outcome.failures.is_empty() {
                    add(&shared.stats.events_processed_success, 1);
                } else {
                    add(&shared.stats.events_processed_failed, 1);
                }
            }
        });
        join_all(deliveries).await;
    }
    Ok(published)
}
