//! Confirmed, pipelined publishing with `mandatory` set.
//!
//! Up to `publish_confirm_window` confirms are in flight across all callers.
//! A publish is reported only when the broker confirmed it; messages whose
//! confirm was lost with the connection are sent again on the next one
//! (same `message_id`, so consumers can tell duplicates). Events, retries,
//! dead letters and DLQ replays all go through here.

use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::future::OptionFuture;
use futures_util::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::runtime::BusContext;
use crate::stats::add;
use crate::wire;

use super::amqp;
use super::errors::scrub;
use super::link::Link;

/// One message to publish.
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    /// For error messages.
    pub(crate) message_id: String,
}

/// The publisher connection and the window of confirms in flight.
pub(crate) struct Publisher {
    pub(crate) link: Arc<Link>,
    window: Arc<Semaphore>,
}

enum ConfirmOutcome {
    Confirmed,
    /// The connection went away before the confirm: send again.
    Lost(String),
    Failed(Error),
}

impl Publisher {
    pub(crate) fn new(link: Arc<Link>, window: usize) -> Self {
        Self {
            link,
            window: Arc::new(Semaphore::new(window)),
        }
    }

    /// Publishes events to the main exchange; returns how many were confirmed.
    pub(crate) async fn publish_events(
        &self,
        shared: &Arc<BusContext>,
        events: &[AnyEnvelope],
    ) -> Result<usize, Error> {
        let config = &shared.config;
        let mut outgoing = Vec::with_capacity(events.len());
        for event in events {
            let message = wire::encode_for_publish(event, config.enable_tracing)?;
            outgoing.push(Outgoing {
                exchange: config.exchange_name.clone(),
                properties: amqp::properties(&message),
                routing_key: message.routing_key,
                body: message.body,
                message_id: message.message_id,
            });
        }
        let result = self.send(shared, &outgoing).await;
        match &result {
            Ok(n) => {
                add(&shared.stats.events_published, *n as u64);
                shared.stats.last_publish_at.now();
            }
            Err(_) => shared.stats.last_error_at.now(),
        }
        result
    }

    /// Publishes prepared messages, all confirmed or an error, within the
    /// confirm timeout whatever the broker does.
    ///
    /// Messages are written one after the other (in order) while up to the
    /// window's confirms are in flight. Nothing here awaits the broker outside
    /// the `select!` that also watches the deadline: lapin stops writing
    /// while the broker blocks the connection (a resource alarm), so a write
    /// can wait for as long as the alarm lasts. While blocked, no further
    /// message is written; at the deadline the call fails with
    /// [`Error::Blocked`] naming the broker's reason.
    pub(crate) async fn send(
        &self,
        shared: &BusContext,
        outgoing: &[Outgoing],
    ) -> Result<usize, Error> {
        let timeout = shared.config.confirm_timeout;
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = (0..outgoing.len()).collect();
        let mut settled = vec![false; outgoing.len()];
        let mut confirmed = 0;
        while !pending.is_empty() {
            let session = self
                .link
                .wait_up(deadline.saturating_duration_since(Instant::now()))
                .await?;
            let mut blocked = session.blocked.subscribe();
            let mut lost = Vec::new();
            let mut first_error: Option<Error> = None;
            let mut inflight = FuturesUnordered::new();
            let mut next = pending.iter().copied().peekable();
            // The message being written, with its window permit.
            let mut writing: Option<Writing<'_>> = None;
            // One timer for the whole batch, not one per message.
            let expired = tokio::time::sleep_until(deadline);
            tokio::pin!(expired);
            loop {
                let is_blocked = blocked.borrow_and_update().is_some();
                let more = next.peek().is_some();
                if inflight.is_empty() && writing.is_none() && !more {
                    break;
                }
                tokio::select! {
                    biased;
                    Some((index, outcome)) = inflight.next(), if !inflight.is_empty() => {
                        settled[index] = true;
                        match confirm_outcome(outcome, &outgoing[index]) {
                            ConfirmOutcome::Confirmed => confirmed += 1,
                            ConfirmOutcome::Lost(reason) => {
                                session.fail(&reason);
                                lost.push(index);
                            }
                            ConfirmOutcome::Failed(error) => {
                                first_error.get_or_insert(error);
                            }
                        }
                    },
                    Some(sent) = OptionFuture::from(writing.as_mut().map(|w| &mut w.sent)), if writing.is_some() => {
                        let Some(Writing { index, permit, .. }) = writing.take() else {
                            continue;
                        };
                        match sent {
                            Ok(confirm) => inflight.push(async move {
                                let result = confirm.await;
                                drop(permit);
                                (index, result)
                            }),
                            Err(e) => {
                                session.fail(&scrub(&e.to_string()));
                                lost.push(index);
                                lost.extend(next.by_ref());
                            }
                        }
                    },
                    () = &mut expired => {
                        let first = settled.iter().position(|s| !s).unwrap_or(0);
                        let event_id = outgoing[first].message_id.clone();
                        first_error.get_or_insert(match session.blocked_reason() {
                            Some(reason) => Error::Blocked {
                                operation: format!("publishing event {event_id}"),
                                reason,
                                timeout,
                            },
                            None => Error::ConfirmTimeout { event_id, timeout },
                        });
                        break;
                    },
                    Ok(()) = blocked.changed(), if is_blocked => {},
                    permit = self.window.clone().acquire_owned(), if more && writing.is_none() && !is_blocked => {
                        let Ok(permit) = permit else { break };
                        let Some(index) = next.next() else { continue };
                        let message = &outgoing[index];
                        writing = Some(Writing {
                            index,
                            permit,
                            sent: Box::pin(session.channel.basic_publish(
                                message.exchange.as_str().into(),
                                message.routing_key.as_str().into(),
                                BasicPublishOptions { mandatory: true, immediate: false },
                                &message.body,
                                message.properties.clone(),
                            )),
                        });
                    },
                }
            }
            if let Some(error) = first_error {
                return Err(error);
            }
            if !lost.is_empty() {
                tracing::warn!(
                    unconfirmed = lost.len(),
                    "connection lost with publishes unconfirmed; sending them again after reconnecting"
                );
            }
            pending = lost;
        }
        Ok(confirmed)
    }
}

/// A message lapin is writing to the socket, and its place in the window.
struct Writing<'a> {
    index: usize,
    permit: OwnedSemaphorePermit,
    sent: Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a>>,
}

fn confirm_outcome(result: lapin::Result<Confirmation>, message: &Outgoing) -> ConfirmOutcome {
    match result {
        Ok(Confirmation::Ack(None)) => ConfirmOutcome::Confirmed,
        Ok(Confirmation::Ack(Some(_))) => ConfirmOutcome::Failed(Error::Unroutable {
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            event_id: message.message_id.clone(),
        }),
        Ok(Confirmation::Nack(_)) => ConfirmOutcome::Failed(Error::Nacked {
            routing_key: message.routing_key.clone(),
            event_id: message.message_id.clone(),
        }),
        Ok(Confirmation::NotRequested) => ConfirmOutcome::Failed(Error::Broker {
            context: "publishing".into(),
            reason: "the channel is not in confirm mode (eventbus bug)".into(),
        }),
        Err(e) => ConfirmOutcome::Lost(scrub(&e.to_string())),
    }
}
