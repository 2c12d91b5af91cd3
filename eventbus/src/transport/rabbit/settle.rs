//! Settling deliveries on one consumer channel: acks coalesced with `multiple`.
//!
//! Delivery tasks report each delivery as settled (handled, or its retry /
//! dead-letter copy confirmed) to one task per channel, which owns the
//! [`AckTracker`]: it acks the longest settled prefix of delivery tags with a
//! single `multiple = true` ack, never a tag while a lower one is unsettled.
//! It flushes once `batch` deliveries can be acked (the settled ones above a
//! gap do not count), after `interval` otherwise, and
//! when the consumer stops (every delivery task has reported). A delivery
//! that must go back to the queue is nacked on its own at once.
//!
//! At-least-once is unchanged: a crash loses only acks, and the broker
//! redelivers exactly the deliveries that were not acked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::runtime::AckTracker;

use super::errors::scrub;
use super::link::Session;

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done with: ack.
    Ack,
    /// Could not be parked for retry: back to the queue.
    Requeue,
}

/// One settled delivery, reported to the channel's settler.
pub(crate) struct Settled {
    pub(crate) tag: u64,
    pub(crate) acker: Acker,
    pub(crate) how: Settle,
    /// For logs.
    pub(crate) message_id: String,
}

/// How many ackable deliveries wait before a flush: half the prefetch, so
/// the broker never stalls on a full window, and at most 50.
pub(crate) fn batch_size(prefetch: u16) -> usize {
    if prefetch == 0 {
        50
    } else {
        usize::from(prefetch / 2).clamp(1, 50)
    }
}

/// The longest a settled delivery waits for its ack when deliveries are sparse.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// Runs until every sender is dropped (the consumer stopped and every delivery
/// task reported), then flushes what is left. Holds the consumer's `channel`
/// until then: lapin closes a channel when its last handle is dropped, and
/// the last acks must go out before that.
pub(crate) async fn run(
    mut settled: mpsc::UnboundedReceiver<Settled>,
    channel: lapin::Channel,
    session: Arc<Session>,
    batch: usize,
) {
    let mut tracker = AckTracker::new();
    let mut ackers: BTreeMap<u64, Acker> = BTreeMap::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            next = settled.recv() => next,
            () = sleep_until(deadline), if deadline.is_some() => {
                deadline = None;
                flush(&mut tracker, &mut ackers, &session).await;
                continue;
            }
        };
        let Some(Settled {
            tag,
            acker,
            how,
            message_id,
        }) = next
        else {
            break;
        };
        match how {
            Settle::Ack => {
                ackers.insert(tag, acker);
            }
            Settle::Requeue => {
                let requeued = unless_broken(
                    &session,
                    acker.nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    }),
                )
                .await;
                if let Some(requeued) = requeued {
                    report(&session, &message_id, requeued);
                }
            }
        }
        tracker.settle(tag);
        if tracker.ackable().is_some() {
            // Ackable ones only: settled deliveries above a gap (a slow one
            // still running) cannot be acked yet, and counting them made
            // every delivery that extended the prefix an ack of its own.
            if tracker.ackable_count() >= batch {
                deadline = None;
                flush(&mut tracker, &mut ackers, &session).await;
            } else if deadline.is_none() {
                deadline = Some(Instant::now() + FLUSH_INTERVAL);
            }
        }
    }
    flush(&mut tracker, &mut ackers, &session).await;
    // Closed here, and answered, before the connection closes: a channel that
    // is only dropped closes in the background, and its close crossing the
    // connection's made lapin log a connection error at every shutdown.
    if channel.status().connected() && !session.broken.is_cancelled() {
        let _ = tokio::time::timeout(
            CHANNEL_CLOSE_TIMEOUT,
            channel.close(200, "eventbus shutdown".into()),
        )
        .await;
    }
}

/// How long the closing of a group's channel waits for the broker's answer.
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Acks every delivery of the settled prefix with one `multiple` ack.
async fn flush(tracker: &mut AckTracker, ackers: &mut BTreeMap<u64, Acker>, session: &Session) {
    let Some(upto) = tracker.take() else {
        return;
    };
    // The highest delivery of the prefix that is to be acked (the others
    // below it were nacked on their own and are no longer outstanding).
    let rest = ackers.split_off(&(upto + 1));
    let prefix = std::mem::replace(ackers, rest);
    if let Some((tag, acker)) = prefix.into_iter().next_back() {
        let acked = unless_broken(session, acker.ack(BasicAckOptions { multiple: true })).await;
        if let Some(acked) = acked {
            report(session, &format!("up to delivery {tag}"), acked);
        }
    }
}

/// `settle` (an ack or nack), or `None` once the session broke. lapin checks
/// the channel's state before queueing the frame, but a connection that dies
/// around that moment can leave the frame queued on an I/O loop that has
/// exited, and its promise never resolves: found by fault case 4 (a cut under
/// load), where such a settler kept stopping waiting until ShutdownTimeout.
/// Once the session broke the ack is moot: the broker returns every unacked
/// delivery of the dead connection to the queue.
async fn unless_broken(
    session: &Session,
    settle: impl Future<Output = lapin::Result<bool>>,
) -> Option<lapin::Result<bool>> {
    tokio::select! {
        result = settle => Some(result),
        () = session.broken.cancelled() => {
            tracing::debug!(generation = session.generation, "session broke before the ack was written; the broker redelivers");
            None
        }
    }
}

fn report(session: &Session, what: &str, result: lapin::Result<bool>) {
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            what,
            "the channel was replaced before the ack; the broker redelivers these messages"
        ),
        // The channel closed (the broker closed it, or it is being replaced) while
        // the connection lives: the broker requeued these; the consumer reopens it.
        Err(e) if session.connection.status().connected() => {
            tracing::warn!(
                what,
                error = %scrub(&e.to_string()),
                "the channel closed before the ack; the broker redelivers these messages"
            );
        }
        Err(e) => session.fail(&format!("ack failed: {}", scrub(&e.to_string()))),
    }
}
