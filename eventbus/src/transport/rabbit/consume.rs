//! Consuming a group's queue: decode, dispatch to the group's handlers, ack.
//!
//! Deliveries run concurrently up to the prefetch count. A delivery is acked
//! only after every handler of the group succeeded (or when the group has no
//! handler for that event type: a fanout exchange delivers everything). A delivery that cannot be
//! decoded, or whose handlers failed, is rejected without requeue: the queue's
//! dead-letter exchange parks it in the group's DLQ (never dropped silently;
//! with the DLQ disabled it is logged as an error and dropped by the broker).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Shared;
use crate::stats::add;

use super::errors::{Failure, broker, scrub};
use super::link::Session;
use super::wire;

/// Which group consumers are active, for health checks.
pub(crate) type ConsumerStates = Arc<Mutex<BTreeMap<String, bool>>>;

pub(crate) fn set_state(states: &ConsumerStates, queue: &str, active: bool) {
    states
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(queue.to_owned(), active);
}

/// Starts a consumer for `group` on `session`, returning once the broker accepted it.
pub(crate) async fn start_group(
    session: Arc<Session>,
    shared: Arc<Shared>,
    group: Arc<str>,
    tag: String,
    stop: CancellationToken,
    deliveries: TaskTracker,
    states: ConsumerStates,
) -> Result<(), Failure> {
    let config = &shared.config;
    let queue = config.group_queue_name(&group);
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(|e| Failure::Retry(scrub(&e.to_string())))?;
    channel
        .basic_qos(config.prefetch_count, BasicQosOptions::default())
        .await
        .map_err(|e| Failure::Retry(scrub(&e.to_string())))?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| super::errors::declare_failure(&e, "consumer on queue", &queue))?;
    set_state(&states, &queue, true);
    tracing::debug!(%queue, %tag, prefetch = config.prefetch_count, "consuming");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    // Stop new deliveries; in-flight ones finish and ack on this channel.
                    if let Err(e) = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await {
                        tracing::debug!(error = %broker("cancelling consumer", &e), "consumer cancel failed");
                    }
                    break;
                }
                () = session.broken.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let shared = shared.clone();
                        let group = group.clone();
                        let session = session.clone();
                        deliveries.spawn(async move { handle(&shared, &group, &session, delivery).await });
                    }
                    Some(Err(e)) => {
                        session.fail(&format!("consumer on {queue}: {}", scrub(&e.to_string())));
                        break;
                    }
                    None => {
                        if !stop.is_cancelled() {
                            session.fail(&format!("the broker cancelled the consumer on {queue}"));
                        }
                        break;
                    }
                },
            }
        }
        set_state(&states, &queue, false);
    });
    Ok(())
}

async fn handle(shared: &Shared, group: &str, session: &Session, delivery: Delivery) {
    let stats = &shared.stats;
    add(&stats.events_consumed, 1);
    stats.last_consume_at.now();
    let event_types = shared.event_types();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |id| id.as_str().to_owned());
    let table = shared.dispatcher.snapshot();
    if let Some(event_type) =
        wire::string_header(&delivery.properties, crate::codec::HEADER_EVENT_TYPE)
        && event_types.get(&event_type).is_some()
        && !table
            .groups
            .get(group)
            .is_some_and(|g| g.takes(&event_type))
    {
        // A known event type delivered by a fanout exchange or a custom binding,
        // and nothing in this group handles it: not ours. (An unknown type is
        // dead-lettered below: it may be a message nobody can read.)
        tracing::debug!(%group, %message_id, %event_type, "no handler in this group; acked");
        add(&stats.events_processed_success, 1);
        return finish(
            session,
            &message_id,
            delivery.acker.ack(BasicAckOptions::default()).await,
        );
    }
    let failure = match wire::decode(&event_types, &delivery.properties, &delivery.data) {
        Ok(event) => {
            let outcome = shared
                .dispatcher
                .dispatch(&table, group, &event, stats)
                .await;
            if outcome.invoked == 0 {
                // A known event this group has no handler for (a fanout exchange, a
                // custom binding, a handler unsubscribed at runtime): nobody here wants it.
                tracing::debug!(%group, %message_id, event_type = %event.meta().event_type(), "no handler in this group; acked");
                None
            } else if outcome.failures.is_empty() {
                None
            } else {
                Some(
                    outcome
                        .failures
                        .iter()
                        .map(|(name, error)| format!("{name}: {error}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            }
        }
        Err(error) => {
            tracing::error!(
                %group,
                %message_id,
                routing_key = %delivery.routing_key,
                %error,
                "cannot decode message"
            );
            Some(format!("undecodable message: {error}"))
        }
    };
    let acked = match &failure {
        None => {
            add(&stats.events_processed_success, 1);
            delivery.acker.ack(BasicAckOptions::default()).await
        }
        Some(reason) => {
            add(&stats.events_processed_failed, 1);
            stats.last_error_at.now();
            if shared.config.enable_dlq {
                add(&stats.messages_sent_to_dlq, 1);
                tracing::warn!(%group, %message_id, %reason, "message dead-lettered");
            } else {
                tracing::error!(%group, %message_id, %reason, "message rejected and dropped: the dead-letter queue is disabled");
            }
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
        }
    };
    finish(session, &message_id, acked);
}

fn finish(session: &Session, message_id: &str, acked: lapin::Result<bool>) {
    match acked {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            %message_id,
            "the channel was replaced before the ack; the broker redelivers this message"
        ),
        Err(e) => session.fail(&format!("ack failed: {}", scrub(&e.to_string()))),
    }
}
