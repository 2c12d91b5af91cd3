//! Consuming a group's queue: decode, dispatch to the group's handlers, ack.
//!
//! Deliveries run concurrently up to the prefetch count, through the group's
//! sequencer: by default deliveries of one aggregate (the `aggregate_id`
//! header) run one after another in delivery order (see
//! [`DeliveryOrder`](crate::DeliveryOrder)). A delivery is settled
//! only after every handler of the group succeeded (or, on a fanout or
//! headers exchange, which delivers everything to every group, when the group
//! has no handler for that known event type), or after the broker confirmed
//! its retry, deferral or dead-letter copy (see [`super::retry`]). On a direct
//! or topic exchange a delivery this member cannot handle (no handler for it,
//! or an event type it does not know) is left to the other members of its
//! group, never acked away. Nothing is dropped silently.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ExchangeType;
use crate::runtime::{self, BusContext};
use crate::stats::add;
use crate::wire::HEADER_AGGREGATE_ID;

use super::amqp;
use super::errors::{Failure, broker, is_channel_error, scrub};
use super::link::Session;
use super::publish::{Outgoing, Publisher};
use super::retry::{self, DeadLetter};
use super::settle::{self, Settle, Settled};
pub(crate) use crate::transport::{ConsumerStates, set_state};

/// What every group consumer of one consuming run shares.
pub(crate) struct ConsumeRun {
    pub(crate) shared: Arc<BusContext>,
    /// Fired by `stop_consuming`.
    pub(crate) stop: CancellationToken,
    /// In-flight deliveries, awaited on shutdown.
    pub(crate) deliveries: TaskTracker,
    pub(crate) states: ConsumerStates,
    /// Where retries and dead letters are published.
    pub(crate) publisher: Arc<Publisher>,
}

/// Starts a consumer for `group` on `session`, returning once the broker accepted it.
pub(crate) async fn start_group(
    session: Arc<Session>,
    ctx: Arc<ConsumeRun>,
    group: Arc<str>,
    tag: String,
) -> Result<(), Failure> {
    let shared = ctx.shared.clone();
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
        .map_err(|e| {
            super::errors::of_group(
                super::errors::declare_failure(&e, "consumer on queue", &queue),
                &group,
            )
        })?;
    set_state(&ctx.states, &queue, true);
    let order = config.ordering_for(&group);
    tracing::debug!(%queue, %tag, prefetch = config.prefetch_count, %order, "consuming");
    let sequencer = runtime::sequencer(order);
    let (settled, settler) = tokio::sync::mpsc::unbounded_channel::<Settled>();
    // Tracked with the deliveries: stopping waits for its last flush.
    ctx.deliveries.spawn(settle::run(
        settler,
        channel.clone(),
        session.clone(),
        settle::batch_size(config.prefetch_count),
    ));
    let this = Arc::new(GroupConsumer {
        shared,
        group,
        queue,
        publisher: ctx.publisher.clone(),
        settled,
        session,
        channel,
        stop: ctx.stop.clone(),
    });
    tokio::spawn(async move {
        let GroupConsumer {
            group,
            queue,
            session,
            channel,
            ..
        } = &*this;
        loop {
            tokio::select! {
                biased;
                () = ctx.stop.cancelled() => {
                    // Stop new deliveries; in-flight ones finish and ack on this channel.
                    if let Err(e) = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await {
                        tracing::debug!(error = %broker("cancelling consumer", &e), "consumer cancel failed");
                    }
                    break;
                }
                () = session.broken.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        // Taken here, in delivery order: the turn fixes this
                        // delivery's place behind earlier ones of its aggregate.
                        let mut turn = sequencer.enter(aggregate_key(&delivery.properties));
                        let this = this.clone();
                        ctx.deliveries.spawn(async move {
                            turn.wait().await;
                            if this.session.broken.is_cancelled() || !this.channel.status().connected() {
                                // Its channel is gone while it waited: the
                                // broker has put it back and delivers it again,
                                // on the new channel, in order. Running it now
                                // would run it beside or after that copy, out
                                // of order.
                                return;
                            }
                            // A retry of an earlier version arrives with the
                            // queue's name as its key: name the original.
                            let routing_key = retry::original_routing_key(
                                &delivery.properties,
                                delivery.routing_key.as_str(),
                                &this.queue,
                            );
                            let work = handle(&this, &routing_key, &delivery);
                            let (how, message_id) = traced(&this, &routing_key, &delivery, work).await;
                            if matches!(how, Settle::Requeue) {
                                // Its retry or DLQ copy could not be published
                                // (a refused write, say): back to the queue, but
                                // not at once, or its handlers would run again in
                                // a hot loop. It waits as long as a publish may.
                                tokio::select! {
                                    () = tokio::time::sleep(this.shared.config.confirm_timeout) => {}
                                    () = this.stop.cancelled() => {}
                                }
                            }
                            drop(turn);
                            // The settler outlives every delivery task.
                            let _ = this.settled.send(Settled {
                                tag: delivery.delivery_tag,
                                acker: delivery.acker,
                                how,
                                message_id,
                            });
                        });
                    }
                    Some(Err(e)) => {
                        let reason = scrub(&e.to_string());
                        if is_channel_error(&e)
                            && session.connection.status().connected()
                            && !session.broken.is_cancelled()
                        {
                            // The broker closed this group's channel only (a
                            // consumer timeout, say): reopen it, the connection
                            // and the other groups go on. Its unacked deliveries
                            // are already back in the queue; acks still pending
                            // for them are dropped by the poisoned ackers.
                            tracing::warn!(%queue, %reason, "the broker closed the consumer channel; reopening it");
                            restart_group(session.clone(), ctx.clone(), group.clone(), tag.clone());
                        } else {
                            session.fail(&format!("consumer on {queue}: {reason}"));
                        }
                        break;
                    }
                    None => {
                        if !ctx.stop.is_cancelled() {
                            session.fail(&format!("the broker cancelled the consumer on {queue}"));
                        }
                        break;
                    }
                },
            }
        }
        set_state(&ctx.states, queue, false);
    });
    Ok(())
}

/// What each delivery task of one group consumer needs: shared, so that a
/// delivery costs one reference count, not one per part.
struct GroupConsumer {
    shared: Arc<BusContext>,
    group: Arc<str>,
    /// The group's queue.
    queue: String,
    /// Where retries and dead letters are published.
    publisher: Arc<Publisher>,
    /// The settler's inbox.
    settled: tokio::sync::mpsc::UnboundedSender<Settled>,
    session: Arc<Session>,
    channel: lapin::Channel,
    stop: CancellationToken,
}

/// Starts `group`'s consumer again on a fresh channel of the same session,
/// after the reconnect delay; a failure to do so rebuilds the session.
fn restart_group(session: Arc<Session>, ctx: Arc<ConsumeRun>, group: Arc<str>, tag: String) {
    let delay = ctx.shared.config.reconnect_delay;
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = session.broken.cancelled() => return,
            () = ctx.stop.cancelled() => return,
        }
        let queue = ctx.shared.config.group_queue_name(&group);
        let restart: std::pin::Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>> =
            Box::pin(start_group(session.clone(), ctx, group, tag));
        match restart.await {
            Ok(()) => tracing::info!(%queue, "consumer channel reopened"),
            Err(e) => session.fail(&format!("cannot reopen the consumer on {queue}: {e:?}")),
        }
    });
}

/// What to do with a delivery after its handlers ran.
enum Verdict {
    Ack,
    Retry {
        failed: Vec<String>,
        reason: String,
    },
    /// No handler of this member takes it (or a retry names handlers this
    /// member does not have): leave it to another member.
    Defer {
        event_type: String,
        /// The handlers still to run, when a retry names some.
        failed: Option<Vec<String>>,
    },
    DeadLetter {
        reason: String,
        error_type: String,
        handler: Option<String>,
        failed: Vec<String>,
    },
}

/// The aggregate a delivery belongs to, from eventsource-py's header.
fn aggregate_key(properties: &lapin::BasicProperties) -> Option<uuid::Uuid> {
    amqp::str_header(properties, HEADER_AGGREGATE_ID).and_then(|id| id.parse().ok())
}

/// Runs `work` (the handling of `delivery`) in a consumer span whose parent
/// is the trace context the message carries; while it runs, that context is
/// also the current one, so a handler's publishes continue the trace even
/// without an OpenTelemetry layer.
fn traced<'d, F: std::future::Future>(
    this: &GroupConsumer,
    routing_key: &str,
    delivery: &'d Delivery,
    work: F,
) -> impl Future<Output = F::Output> + use<'d, F> {
    let properties = &delivery.properties;
    let config = &this.shared.config;
    let delivered = crate::runtime::traced::Delivered {
        system: "rabbitmq",
        destination: &config.exchange_name,
        source: &this.queue,
        group: &this.group,
        routing_key: Some(routing_key),
        message_id: properties.message_id().as_ref().map(|id| id.as_str()),
    };
    let header = |name: &str| amqp::string_header(properties, name);
    crate::runtime::traced::consume(config.enable_tracing, delivered, header, work)
}

/// Runs the group's handlers for one delivery and parks it for retry or in
/// the DLQ when they fail; returns how to settle it, and its message id.
async fn handle(this: &GroupConsumer, original_key: &str, delivery: &Delivery) -> (Settle, String) {
    let GroupConsumer {
        shared,
        group,
        queue,
        publisher,
        ..
    } = this;
    let group: &str = group;
    let stats = &shared.stats;
    let config = &shared.config;
    add(&stats.events_consumed, 1);
    stats.last_consume_at.now();
    let event_types = shared.event_types();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |id| id.as_str().to_owned());
    let table = shared.dispatcher.snapshot();
    let retry_count = retry::retry_count(&delivery.properties);
    let event_type = amqp::str_header(&delivery.properties, crate::wire::HEADER_EVENT_TYPE);
    let known = event_type
        .as_deref()
        .is_some_and(|t| event_types.get(t).is_some());
    let taken = event_type
        .as_deref()
        .is_some_and(|t| table.groups.get(group).is_some_and(|g| g.takes(t)));
    let routed_by_key = matches!(
        config.exchange_type,
        ExchangeType::Direct | ExchangeType::Topic
    );
    let unhandled = retry::unhandled_count(&delivery.properties);
    let verdict = if let Some(event_type) = event_type.as_deref()
        && routed_by_key
        && !(known && taken)
    {
        // The group's queue is bound for this key, so some member of the
        // group is meant to handle it, just not this one (an older or newer
        // version, or a service that only publishes the type).
        if unhandled < config.max_unhandled_deferrals {
            Verdict::Defer {
                event_type: event_type.to_owned(),
                failed: None,
            }
        } else {
            tracing::warn!(%group, %message_id, %event_type, routing_key = %original_key, deferrals = unhandled, "no member of the group handled the event");
            let unknown = if known {
                String::new()
            } else {
                format!(" (unknown event type `{event_type}` here)")
            };
            Verdict::DeadLetter {
                reason: format!("no member of group {group} handles {original_key}{unknown}"),
                error_type: "UnhandledEvent".to_owned(),
                handler: None,
                failed: Vec::new(),
            }
        }
    } else if let Some(event_type) = event_type
        && known
        && !taken
    {
        // A known event type delivered by a fanout or headers exchange, which
        // deliver everything to every group, and nothing in this group
        // handles it: not ours. (An unknown type is dead-lettered below: it
        // may be a message nobody can read.)
        tracing::debug!(%group, %message_id, %event_type, "no handler in this group; acked");
        Verdict::Ack
    } else {
        match amqp::decode(&event_types, &delivery.properties, &delivery.data) {
            Ok(event) => {
                let only = retry::failed_handlers(&delivery.properties);
                // A retry may name handlers of another member (another version):
                // they still have to run, somewhere else.
                let missing: Vec<String> = only
                    .iter()
                    .flatten()
                    .filter(|name| {
                        !table.groups.get(group).is_some_and(|g| {
                            g.handlers_for(event.meta().event_type())
                                .any(|h| *h.name == ***name)
                        })
                    })
                    .cloned()
                    .collect();
                let outcome = shared
                    .dispatcher
                    .dispatch_only(&table, group, &event, stats, only.as_deref())
                    .await;
                if outcome.failures.is_empty() && missing.is_empty() {
                    Verdict::Ack
                } else if outcome.failures.is_empty() {
                    let event_type = event.meta().event_type().to_owned();
                    if unhandled < config.max_unhandled_deferrals {
                        Verdict::Defer {
                            event_type,
                            failed: Some(missing),
                        }
                    } else {
                        tracing::warn!(%group, %message_id, %event_type, routing_key = %original_key, handlers = ?missing, deferrals = unhandled, "no member of the group has the handlers this retry names");
                        Verdict::DeadLetter {
                            reason: format!(
                                "no member of group {group} handles {original_key} with {}",
                                missing.join(", ")
                            ),
                            error_type: "UnhandledEvent".to_owned(),
                            handler: missing.first().cloned(),
                            failed: missing,
                        }
                    }
                } else {
                    let mut failed: Vec<String> = outcome
                        .failures
                        .iter()
                        .map(|(n, _)| n.to_string())
                        .collect();
                    failed.extend(missing);
                    let reason = outcome.describe_failures();
                    let permanent = outcome.failures.iter().find(|(_, e)| e.is_permanent());
                    let (last_name, last_error) = permanent.unwrap_or(&outcome.failures[0]);
                    if permanent.is_some() || retry_count >= config.max_retries {
                        Verdict::DeadLetter {
                            reason,
                            error_type: last_error.error_type().to_owned(),
                            handler: Some(last_name.to_string()),
                            failed,
                        }
                    } else {
                        Verdict::Retry { failed, reason }
                    }
                }
            }
            // Logged once, with the dead-letter outcome below.
            Err(error) => Verdict::DeadLetter {
                reason: format!("undecodable message: {error}"),
                error_type: error.kind().to_owned(),
                handler: None,
                failed: Vec::new(),
            },
        }
    };

    let copy = match &verdict {
        Verdict::Ack => None,
        Verdict::Retry { failed, reason } => {
            let delay = retry::retry_delay(config, retry_count);
            tracing::warn!(
                %group, %message_id, routing_key = %original_key, attempt = retry_count + 1,
                max_retries = config.max_retries, delay_ms = delay.as_millis() as u64, %reason,
                "handler failed; retrying later"
            );
            Some(Outgoing {
                exchange: String::new(),
                routing_key: original_key.to_owned(),
                body: delivery.data.clone(),
                properties: retry::retry_properties(
                    &delivery.properties,
                    retry_count,
                    original_key,
                    failed,
                    delay,
                    &config.group_delay_queue_name(group, retry_count + 1),
                ),
                message_id: message_id.clone(),
            })
        }
        Verdict::Defer { event_type, failed } => {
            let delay = retry::unhandled_delay(config);
            tracing::debug!(
                %group, %message_id, %event_type, routing_key = %original_key,
                deferral = unhandled + 1, max = config.max_unhandled_deferrals,
                delay_ms = delay.as_millis() as u64,
                "no handler of this member takes the event; left to another member of the group"
            );
            Some(Outgoing {
                exchange: String::new(),
                routing_key: original_key.to_owned(),
                body: delivery.data.clone(),
                properties: retry::defer_properties(
                    &delivery.properties,
                    unhandled,
                    original_key,
                    delay,
                    &config.group_unhandled_queue_name(group),
                    failed.as_deref(),
                ),
                message_id: message_id.clone(),
            })
        }
        Verdict::DeadLetter {
            reason,
            error_type,
            handler,
            failed,
        } => {
            stats.last_error_at.now();
            if config.enable_dlq {
                tracing::error!(%group, %message_id, routing_key = %original_key, retries = retry_count, %reason, "message dead-lettered");
                Some(Outgoing {
                    exchange: config.dlq_exchange_name(),
                    routing_key: queue.clone(),
                    body: delivery.data.clone(),
                    properties: retry::dead_letter_properties(
                        &delivery.properties,
                        retry_count,
                        original_key,
                        &DeadLetter {
                            reason,
                            error_type,
                            handler: handler.as_deref(),
                            failed,
                        },
                    ),
                    message_id: message_id.clone(),
                })
            } else {
                tracing::error!(%group, %message_id, %reason, body = %String::from_utf8_lossy(&delivery.data), "message dropped after its last attempt: the dead-letter queue is disabled (EVENTBUS_ENABLE_DLQ=false)");
                None
            }
        }
    };
    if let Some(copy) = copy {
        // The original goes only once its copy is safe with the broker.
        // Boxed: the publish's state is large and rarely needed; unboxed, every
        // delivery task would carry room for it.
        if let Err(error) = Box::pin(publisher.send(shared, std::slice::from_ref(&copy))).await {
            stats.last_error_at.now();
            tracing::error!(%group, %message_id, %error, "cannot park the message for retry or in the DLQ; returning it to the queue");
            return (Settle::Requeue, message_id);
        }
    }
    match &verdict {
        Verdict::Ack => add(&stats.events_processed_success, 1),
        Verdict::Retry { .. } => {
            stats.metrics.retries.inc();
        }
        Verdict::Defer { .. } => add(&stats.events_deferred_unhandled, 1),
        Verdict::DeadLetter { .. } => {
            add(&stats.events_processed_failed, 1);
            if config.enable_dlq {
                add(&stats.messages_sent_to_dlq, 1);
            }
        }
    }
    (Settle::Ack, message_id)
}
