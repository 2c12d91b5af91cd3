//! Confirmed, pipelined publishing with `mandatory` set.
//!
//! Up to `publish_confirm_window` confirms are in flight across all callers.
//! A publish is reported only when the broker confirmed it; messages whose
//! confirm was lost with the connection are sent again on the next one
//! (same `message_id`, so consumers can tell duplicates). Events, retries,
//! dead letters and DLQ replays all go through here.
//!
//! Publishes go on a channel of their own, opened per connection. When the
//! broker closes it (a channel-level error, an oversized message say), only
//! that channel is reopened, not the connection; the broker's
//! `max_message_size` learned from such a close makes later oversized
//! events fail with [`Error::TooLarge`] before they are sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::future::OptionFuture;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Channel, Confirmation, ErrorKind, PublisherConfirm};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::runtime::BusContext;
use crate::stats::add;
use crate::wire;

use super::amqp;
use super::errors::{broker, scrub};
use super::link::{Link, Session};

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
    /// The publishing channel and the session generation it belongs to.
    channel: tokio::sync::Mutex<Option<(u64, Channel)>>,
    /// The broker's `max_message_size`, once a close told us; 0 = unknown.
    max_size: AtomicUsize,
}

enum ConfirmOutcome {
    Confirmed,
    /// The channel or connection went away before the confirm: send again.
    Lost(lapin::Error),
    Failed(Error),
}

/// What a lost confirm says about where the failure is.
enum Scope {
    /// The broker closed the publishing channel; the connection is fine.
    Channel,
    /// The connection is gone.
    Connection,
}

impl Publisher {
    pub(crate) fn new(link: Arc<Link>, window: usize) -> Self {
        Self {
            link,
            window: Arc::new(Semaphore::new(window)),
            channel: tokio::sync::Mutex::new(None),
            max_size: AtomicUsize::new(0),
        }
    }

    /// The publishing channel of `session`, opened (in confirm mode) on first
    /// use and again after the broker closed it.
    async fn channel_for(&self, session: &Session, deadline: Instant) -> Result<Channel, Error> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        // Another caller may be opening it on a connection that stopped
        // answering: wait no longer than this call may.
        let Ok(mut slot) = tokio::time::timeout_at(deadline, self.channel.lock()).await else {
            return Err(session.timed_out("opening the publishing channel", timeout));
        };
        if let Some((generation, channel)) = &*slot
            && *generation == session.generation
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let reopening = slot
            .as_ref()
            .is_some_and(|(generation, _)| *generation == session.generation);
        let open = async {
            let channel = session
                .connection
                .create_channel()
                .await
                .map_err(|e| broker("opening the publishing channel", &e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| broker("enabling publisher confirms", &e))?;
            Ok::<_, Error>(channel)
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let channel = session
            .bounded("opening the publishing channel", timeout, open)
            .await?;
        if reopening {
            tracing::warn!(
                generation = session.generation,
                "the broker closed the publishing channel; reopened it on the same connection"
            );
        }
        *slot = Some((session.generation, channel.clone()));
        Ok(channel)
    }

    /// Where a lost confirm or failed write went wrong; learns the broker's
    /// max message size from a close that names it.
    fn scope_of(&self, error: &lapin::Error, session: &Session) -> Scope {
        let channel_level = match error.kind() {
            ErrorKind::ProtocolError(e) => {
                if let AMQPErrorKind::Soft(_) = e.kind() {
                    if let Some(max) = max_size_in(e.get_message().as_str()) {
                        self.max_size.store(max, Ordering::Relaxed);
                    }
                    true
                } else {
                    false
                }
            }
            ErrorKind::InvalidChannelState(..) => true,
            _ => false,
        };
        if channel_level
            && session.connection.status().connected()
            && !session.broken.is_cancelled()
        {
            Scope::Channel
        } else {
            Scope::Connection
        }
    }

    /// [`Error::TooLarge`] if `message` is over the broker's known limit.
    fn too_large(&self, message: &Outgoing) -> Option<Error> {
        let max = self.max_size.load(Ordering::Relaxed);
        (max > 0 && message.body.len() > max).then(|| Error::TooLarge {
            event_id: message.message_id.clone(),
            size: message.body.len(),
            max,
        })
    }

    /// Publishes events to the main exchange; returns how many were confirmed.
    pub(crate) async fn publish_events(
        &self,
        shared: &Arc<BusContext>,
        events: &[AnyEnvelope],
    ) -> Result<usize, Error> {
        let config = &shared.config;
        let mut outgoing = Vec::with_capacity(events.len());
        let trace = wire::publish_trace(config.enable_tracing);
        for event in events {
            let message = wire::encode_for_publish(event, &trace)?;
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
        let deadline = crate::runtime::deadline(timeout);
        let mut pending: Vec<usize> = (0..outgoing.len()).collect();
        let mut settled = vec![false; outgoing.len()];
        let mut confirmed = 0;
        // A missing exchange reconnects once (declaring the topology again);
        // missing again after that, it is an error with the broker's reason.
        let mut redeclared = false;
        while !pending.is_empty() {
            let after_redeclare = redeclared;
            let session = self
                .link
                .wait_up(deadline.saturating_duration_since(Instant::now()))
                .await?;
            let channel = match self.channel_for(&session, deadline).await {
                Ok(channel) => channel,
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(error) => {
                    // The connection cannot open a channel: start over on a new one.
                    session.fail(&error.to_string());
                    continue;
                }
            };
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
                            ConfirmOutcome::Lost(error) => {
                                let not_found = soft_error(&error) == Some(AMQPSoftError::NOTFOUND);
                                if let Scope::Connection = self.scope_of(&error, &session) {
                                    session.fail(&scrub(&error.to_string()));
                                } else if not_found && !after_redeclare {
                                    // An exchange was deleted under the bus: connect
                                    // again, which declares the topology again.
                                    redeclared = true;
                                    session.fail(&scrub(&error.to_string()));
                                }
                                // The message that made the broker close the channel
                                // fails; the others go again. A refused write fails
                                // them all: sending again on a new channel would only
                                // close it again, until the timeout hid the reason.
                                let message = &outgoing[index];
                                match self.too_large(message).or_else(|| refused(&error, message)).or_else(|| {
                                    (not_found && after_redeclare).then(|| Error::Broker {
                                        context: format!("publishing event {} to exchange `{}`", message.message_id, message.exchange),
                                        reason: scrub(&error.to_string()),
                                    })
                                }) {
                                    Some(failed) => {
                                        first_error.get_or_insert(failed);
                                    }
                                    None => lost.push(index),
                                }
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
                                if let Scope::Connection = self.scope_of(&e, &session) {
                                    session.fail(&scrub(&e.to_string()));
                                }
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
                        if let Some(too_large) = self.too_large(message) {
                            // The broker would close the channel for it.
                            settled[index] = true;
                            first_error.get_or_insert(too_large);
                            continue;
                        }
                        writing = Some(Writing {
                            index,
                            permit,
                            sent: Box::pin(channel.basic_publish(
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
                    "the channel or connection closed with publishes unconfirmed; sending them again"
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
        Err(e) => ConfirmOutcome::Lost(e),
    }
}

/// The broker closed the channel because this user may not write to
/// `message`'s exchange (`ACCESS_REFUSED`, naming it): an error no resend
/// fixes, with the broker's reason. A refusal naming another exchange (a
/// message beside it on the shared channel) is not this message's: it goes
/// again.
fn refused(error: &lapin::Error, message: &Outgoing) -> Option<Error> {
    let ErrorKind::ProtocolError(e) = error.kind() else {
        return None;
    };
    let exchange = if message.exchange.is_empty() {
        "amq.default"
    } else {
        &message.exchange
    };
    (soft_error(error) == Some(AMQPSoftError::ACCESSREFUSED)
        && e.get_message()
            .as_str()
            .contains(&format!("exchange '{exchange}'")))
    .then(|| Error::Broker {
        context: format!(
            "publishing event {} to exchange `{exchange}`",
            message.message_id
        ),
        reason: scrub(&error.to_string()),
    })
}

/// The channel-level error the broker closed a channel with, if that is what
/// `error` is.
fn soft_error(error: &lapin::Error) -> Option<AMQPSoftError> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// `max size M` from RabbitMQ's close for an oversized message ("message
/// size N is larger than configured max size M").
fn max_size_in(text: &str) -> Option<usize> {
    let (_, rest) = text.split_once("larger than configured max size ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::max_size_in;

    #[test]
    fn reads_the_max_size_from_the_brokers_close() {
        assert_eq!(
            max_size_in(
                "PRECONDITION_FAILED - message size 200000 is larger than configured max size 131072"
            ),
            Some(131_072)
        );
        assert_eq!(
            max_size_in("PRECONDITION_FAILED - unknown delivery tag 3"),
            None
        );
    }
}
