//! Retries kept in Redis, and dead letters: the Redis side of the failure policy.
//!
//! A failed entry is not acked: it stays in its group's pending list (no
//! other group sees anything) and is put in the group's retry schedule, a
//! sorted set `{prefix}:retry:{group}:due` scored by due time, with what must
//! run again (attempt, failed handlers) in the hash `{prefix}:retry:{group}:state`.
//! A retry worker per group takes due entries (`ZREM` decides which member
//! wins), `XCLAIM`s them and runs only the handlers that failed. Nothing
//! sleeps holding an entry: a crash loses no schedule, and an entry whose
//! retry was taken by a member that died is claimed again by recovery.
//! eventsource-py's counter key `{prefix}:retry:{entry id}` is kept in step,
//! so a Python member's `recover_pending_messages()` sees the same count.
//!
//! After `max_retries` (at once for a permanent error or an undecodable
//! entry) the entry is copied to the DLQ stream and acked in one `MULTI`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use redis::Value;

use crate::error::Error;
use crate::wire;

use super::conn::broker;
use super::consume::{Group, Why, pause};
use super::entry::{self, Entry, Source};

/// What a (re)delivery of an entry must do.
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryState {
    /// Retries so far (0 on first delivery).
    pub(crate) attempt: u32,
    /// Only these handlers run (a retry, or a replay from the DLQ).
    pub(crate) only: Option<Vec<String>>,
    /// Retry state may exist for it in Redis: remove it when settled.
    pub(crate) retried: bool,
    /// Recovered without retry state: times Redis delivered it.
    pub(crate) crash_deliveries: Option<u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    attempt: u32,
    failed: Vec<String>,
}

fn failed_handlers(entry: &Entry) -> Option<Vec<String>> {
    entry
        .field(wire::FIELD_FAILED_HANDLERS)
        .and_then(|json| serde_json::from_str(json).ok())
        .filter(|v: &Vec<String>| !v.is_empty())
}

impl RetryState {
    /// A first delivery; a replay runs only the handlers that had failed.
    pub(crate) fn fresh(source: Source, entry: &Entry) -> Self {
        match source {
            Source::Main => Self::default(),
            Source::Replay => Self {
                only: failed_handlers(entry),
                ..Self::default()
            },
        }
    }
}

/// The state of an entry claimed by recovery, or `None` when it waits in the
/// retry schedule (the retry worker will take it).
pub(crate) async fn recovered_state(
    group: &Arc<Group>,
    source: Source,
    entry: &Entry,
) -> Result<Option<RetryState>, Error> {
    let run = &group.run;
    let url = &run.ctx.config.url;
    let key = group.keys.of(source);
    let member = source.member(&entry.id);
    let mut ops = run.ops.clone();
    let (scheduled, stored, pending): (Option<f64>, Option<String>, Value) = redis::pipe()
        .cmd("ZSCORE")
        .arg(&group.keys.schedule)
        .arg(&member)
        .cmd("HGET")
        .arg(&group.keys.state)
        .arg(&member)
        .cmd("XPENDING")
        .arg(key)
        .arg(&*group.name)
        .arg(&entry.id)
        .arg(&entry.id)
        .arg(1)
        .query_async(&mut ops)
        .await
        .map_err(|e| {
            broker(
                url,
                format!("reading the retry state of `{}`", entry.id),
                &e,
            )
        })?;
    if scheduled.is_some() {
        return Ok(None);
    }
    // [[id, consumer, idle, delivered]]
    let delivered = match &pending {
        Value::Array(rows) => rows.first().and_then(|row| match row {
            Value::Array(cols) => cols.get(3).and_then(entry::int),
            _ => None,
        }),
        _ => None,
    }
    .and_then(|d| u64::try_from(d).ok())
    .unwrap_or(1);
    if let Some(stored) = stored.and_then(|s| serde_json::from_str::<Stored>(&s).ok()) {
        // A retry that was taken and never settled (its consumer crashed or
        // stalled in it): the delivery limit applies to it too, or a retry
        // that crashes its consumers would come back forever. Each retry
        // is one delivery (XCLAIM), so a healthy run stays within the limit.
        return Ok(Some(RetryState {
            attempt: stored.attempt,
            only: (!stored.failed.is_empty()).then_some(stored.failed),
            retried: true,
            crash_deliveries: Some(delivered),
        }));
    }
    let mut state = RetryState::fresh(source, entry);
    state.attempt = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
    state.retried = true;
    state.crash_deliveries = Some(delivered);
    Ok(Some(state))
}

/// Schedules retry number `attempt` of entry `id` after `delay`.
pub(crate) async fn schedule(
    group: &Group,
    source: Source,
    id: &str,
    attempt: u32,
    failed: &[String],
    delay: Duration,
) -> Result<(), Error> {
    let run = &group.run;
    let config = &run.ctx.config;
    let member = source.member(id);
    let due =
        Utc::now().timestamp_millis() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
    let stored = serde_json::to_string(&Stored {
        attempt,
        failed: failed.to_vec(),
    })
    .unwrap_or_default();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(&group.keys.state)
        .arg(&member)
        .arg(stored)
        .ignore()
        .cmd("ZADD")
        .arg(&group.keys.schedule)
        .arg(due)
        .arg(&member)
        .ignore();
    if source == Source::Main {
        pipe.cmd("SET")
            .arg(config.retry_counter_key(id))
            .arg(attempt)
            .arg("EX")
            .arg(config.retry_key_expiry_seconds.max(1))
            .ignore();
    }
    let mut ops = run.ops.clone();
    pipe.query_async::<()>(&mut ops)
        .await
        .map_err(|e| broker(&config.url, format!("scheduling a retry of `{id}`"), &e))
}

/// The DLQ entry: the original fields (eventsource-py's), its three, then ours.
fn dead_letter_fields(
    group: &str,
    entry: &Entry,
    attempt: u32,
    why: &Why,
) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = entry
        .fields
        .iter()
        .flatten()
        .filter(|(k, _)| !is_dlq_field(k))
        .cloned()
        .collect();
    let mut push = |k: &str, v: String| fields.push((k.to_owned(), v));
    push(wire::FIELD_ORIGINAL_MESSAGE_ID, entry.id.clone());
    push(wire::FIELD_RETRY_COUNT, attempt.to_string());
    push(
        wire::FIELD_DLQ_TIMESTAMP,
        wire::python_isoformat(&Utc::now()),
    );
    push(wire::FIELD_DLQ_REASON, wire::bounded_reason(&why.reason));
    push(wire::FIELD_DLQ_ERROR_TYPE, why.error_type.clone());
    push(wire::FIELD_DLQ_GROUP, group.to_owned());
    if let Some(handler) = &why.handler {
        push(wire::FIELD_DLQ_HANDLER, handler.clone());
    }
    if !why.failed.is_empty() {
        push(
            wire::FIELD_FAILED_HANDLERS,
            serde_json::to_string(&why.failed).unwrap_or_default(),
        );
    }
    fields
}

/// Fields a DLQ entry adds, stripped on replay (and before dead-lettering again).
pub(crate) fn is_dlq_field(name: &str) -> bool {
    [
        wire::FIELD_ORIGINAL_MESSAGE_ID,
        wire::FIELD_RETRY_COUNT,
        wire::FIELD_DLQ_TIMESTAMP,
        wire::FIELD_DLQ_REASON,
        wire::FIELD_DLQ_ERROR_TYPE,
        wire::FIELD_DLQ_GROUP,
        wire::FIELD_DLQ_HANDLER,
        wire::FIELD_FAILED_HANDLERS,
        wire::FIELD_REPLAYED_FROM_DLQ,
    ]
    .contains(&name)
}

/// Adds the DLQ copy and acks the entry, in one `MULTI`.
pub(crate) async fn dead_letter(
    group: &Group,
    source: Source,
    entry: &Entry,
    attempt: u32,
    why: &Why,
) -> Result<(), Error> {
    let run = &group.run;
    let config = &run.ctx.config;
    let key = group.keys.of(source);
    let member = source.member(&entry.id);
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("XADD").arg(&group.keys.dlq).arg("*");
    for (k, v) in dead_letter_fields(&group.name, entry, attempt, why) {
        pipe.arg(k).arg(v);
    }
    pipe.ignore()
        .cmd("XACK")
        .arg(key)
        .arg(&*group.name)
        .arg(&entry.id)
        .ignore()
        .cmd("HDEL")
        .arg(&group.keys.state)
        .arg(&member)
        .ignore()
        .cmd("ZREM")
        .arg(&group.keys.schedule)
        .arg(&member)
        .ignore();
    if source == Source::Replay {
        pipe.cmd("XDEL").arg(key).arg(&entry.id).ignore();
    } else {
        pipe.cmd("DEL")
            .arg(config.retry_counter_key(&entry.id))
            .ignore();
    }
    let mut ops = run.ops.clone();
    pipe.query_async::<()>(&mut ops).await.map_err(|e| {
        broker(
            &config.url,
            format!("dead-lettering `{}` to `{}`", entry.id, group.keys.dlq),
            &e,
        )
    })
}

/// Takes due retries of the group and runs them again.
pub(crate) async fn retry_loop(group: Arc<Group>) {
    let run = &group.run;
    let every = (run.ctx.config.retry_base_delay / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    while pause(&run.stop, every).await {
        if let Err(error) = take_due(&group).await {
            tracing::warn!(group = %group.name, %error, "cannot take due retries");
        }
    }
}

async fn take_due(group: &Arc<Group>) -> Result<(), Error> {
    let run = &group.run;
    let config = &run.ctx.config;
    let url = &config.url;
    let mut ops = run.ops.clone();
    let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&group.keys.schedule)
        .arg("-inf")
        .arg(Utc::now().timestamp_millis())
        .arg("LIMIT")
        .arg(0)
        .arg(config.stream_read_count.max(1))
        .query_async(&mut ops)
        .await
        .map_err(|e| broker(url, "reading the retry schedule", &e))?;
    for member in due {
        if run.stop.is_cancelled() {
            break;
        }
        let Some((source, id)) = Source::parse_member(&member) else {
            continue;
        };
        // Taken before the entry: between its claim and its handling it is
        // in no schedule and not yet in flight, where recovery would take it
        // a second time.
        let Some(permit) = group.permit_beside_reader().await else {
            return Ok(());
        };
        let (removed, stored): (i64, Option<String>) = redis::pipe()
            .cmd("ZREM")
            .arg(&group.keys.schedule)
            .arg(&member)
            .cmd("HGET")
            .arg(&group.keys.state)
            .arg(&member)
            .query_async(&mut ops)
            .await
            .map_err(|e| broker(url, "taking a due retry", &e))?;
        if removed == 0 {
            // Another member of the group took it.
            continue;
        }
        let stored = stored.and_then(|s| serde_json::from_str::<Stored>(&s).ok());
        let claimed: Value = redis::cmd("XCLAIM")
            .arg(group.keys.of(source))
            .arg(&*group.name)
            .arg(&run.consumer)
            .arg(0)
            .arg(id)
            .query_async(&mut ops)
            .await
            .map_err(|e| broker(url, format!("claiming `{id}` for its retry"), &e))?;
        let Some(entry) = entry::entries(claimed).into_iter().next() else {
            // No longer pending (settled meanwhile): nothing to retry.
            let _: Result<(), _> = redis::cmd("HDEL")
                .arg(&group.keys.state)
                .arg(&member)
                .query_async(&mut ops)
                .await;
            continue;
        };
        let state = match stored {
            Some(s) => RetryState {
                attempt: s.attempt,
                only: (!s.failed.is_empty()).then_some(s.failed),
                retried: true,
                crash_deliveries: None,
            },
            None => RetryState {
                attempt: 1,
                retried: true,
                ..RetryState::default()
            },
        };
        group.spawn(source, entry, state, permit);
    }
    Ok(())
}
