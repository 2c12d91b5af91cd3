//! Consuming one consumer group: read, decode, dispatch, then settle.
//!
//! Each group has a reader (`XREADGROUP` on its own connection, reading the
//! main stream and the group's replay stream), a retry worker, a recovery
//! loop (`XAUTOCLAIM`) and an acker that coalesces `XACK`s. Entries run
//! concurrently, at most `stream_read_count` per group, through the group's
//! sequencer (per-aggregate order by default, the `aggregate_id` field).
//!
//! An entry is settled only after every handler of the group succeeded
//! (`XACK`), or after its retry is scheduled in Redis (it stays pending in
//! this group only), or after its DLQ copy was added in the same `MULTI` as
//! the `XACK`. A crash at any point leaves the entry pending; a live member
//! claims it after `pending_idle_ms`: duplicates are possible, losses are not.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::FuturesUnordered;
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::error::{DecodeError, Error};
use crate::runtime::{self, BusContext, Sequencer};
use crate::stats::add;
use crate::wire::{self, HEADER_AGGREGATE_ID, HEADER_EVENT_TYPE, Incoming};

use super::conn::{self, broker, is_nogroup};
use super::entry::{self, Entry, Source};
use super::retry::{self, RetryState};
use crate::transport::spawn_all;
pub(crate) use crate::transport::{ConsumerStates, set_state};

/// What every group of one consuming run shares.
pub(crate) struct Run {
    pub(crate) ctx: Arc<BusContext>,
    /// Acks, retries, DLQ copies: short commands on the shared connection.
    pub(crate) ops: ConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) consumer: String,
    pub(crate) stop: CancellationToken,
    /// Readers, retry workers and recovery loops.
    pub(crate) workers: TaskTracker,
    /// Entries being handled.
    pub(crate) deliveries: TaskTracker,
    pub(crate) states: ConsumerStates,
}

/// The Redis keys of one group.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) stream: String,
    pub(crate) replay: String,
    pub(crate) dlq: String,
    pub(crate) schedule: String,
    pub(crate) state: String,
}

impl Keys {
    pub(crate) fn new(config: &crate::config::Config, group: &str) -> Self {
        Self {
            stream: config.stream_name(),
            replay: config.replay_stream_name(group),
            dlq: config.dlq_stream_name(),
            schedule: config.retry_schedule_key(group),
            state: config.retry_state_key(group),
        }
    }

    pub(crate) fn of(&self, source: Source) -> &str {
        match source {
            Source::Main => &self.stream,
            Source::Replay => &self.replay,
        }
    }
}

/// An entry to acknowledge.
struct Ack {
    source: Source,
    id: String,
    /// It was retried or recovered: remove its retry state too.
    cleanup: bool,
}

enum AckMsg {
    Ack(Ack),
    Flush(oneshot::Sender<()>),
    /// An entry's handling ended: it leaves the in-flight set once the acks
    /// sent before this are written (until then it is still pending in
    /// Redis, and recovery must not take it).
    Done(InFlight),
}

/// One consumer group of a run.
pub(crate) struct Group {
    pub(crate) run: Arc<Run>,
    pub(crate) name: Arc<str>,
    pub(crate) keys: Keys,
    sequencer: Arc<Sequencer<Uuid>>,
    pub(crate) permits: Arc<Semaphore>,
    acks: mpsc::UnboundedSender<AckMsg>,
    /// `CLIENT ID` of the reader's connection, to unblock it on stop.
    reader_id: AtomicI64,
    /// Entries this member has taken and not finished with, queued behind
    /// their aggregate or running: recovery must not take them back from
    /// itself (their idle time counts from the read, not from the handler's
    /// start) and run them a second time.
    in_flight: Mutex<HashSet<(Source, String)>>,
}

/// Removes an entry from its group's in-flight set when its handling ends,
/// however it ends.
struct InFlight {
    group: Arc<Group>,
    entry: Option<(Source, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.group.in_flight().remove(&entry);
        }
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Creates `group` on the main stream and on its replay stream.
pub(crate) async fn create_groups(
    conn: &mut ConnectionManager,
    ctx: &BusContext,
    group: &str,
) -> Result<(), Error> {
    let config = &ctx.config;
    conn::create_group(conn, &config.url, &config.stream_name(), group).await?;
    conn::create_group(conn, &config.url, &config.replay_stream_name(group), group).await
}

impl Group {
    /// Creates the group in Redis and starts its reader, retry worker,
    /// recovery loop and acker.
    pub(crate) async fn start(run: Arc<Run>, name: Arc<str>) -> Result<Arc<Self>, Error> {
        let config = &run.ctx.config;
        let mut ops = run.ops.clone();
        create_groups(&mut ops, &run.ctx, &name).await?;
        let (acks, ack_rx) = mpsc::unbounded_channel();
        let group = Arc::new(Self {
            keys: Keys::new(config, &name),
            sequencer: runtime::sequencer(config.ordering_for(&name)),
            permits: Arc::new(Semaphore::new(config.stream_read_count.max(1))),
            acks,
            reader_id: AtomicI64::new(-1),
            in_flight: Mutex::default(),
            name,
            run: run.clone(),
        });
        tracing::debug!(group = %group.name, stream = %group.keys.stream, consumer = %run.consumer, order = %config.ordering_for(&group.name), "consuming");
        tokio::spawn(acker(group.clone(), ack_rx));
        run.workers.spawn(read_loop(group.clone()));
        run.workers.spawn(retry::retry_loop(group.clone()));
        run.workers.spawn(recovery_loop(group.clone()));
        Ok(group)
    }

    /// Unblocks the reader's `XREADGROUP`, so stopping does not wait `block_ms`.
    pub(crate) async fn unblock(&self) {
        let id = self.reader_id.load(Ordering::Acquire);
        if id >= 0 {
            let mut ops = self.run.ops.clone();
            let _: Result<Value, _> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut ops)
                .await;
        }
    }

    /// Waits until every ack sent so far is written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.acks.send(AckMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// `tracked` leaves the in-flight set after the acks sent so far.
    fn done(&self, tracked: InFlight) {
        // When the acker is gone, `tracked` is dropped here, at once.
        let _ = self.acks.send(AckMsg::Done(tracked));
    }

    fn ack(&self, source: Source, id: &str, cleanup: bool) {
        // The acker lives as long as any group handle.
        let _ = self.acks.send(AckMsg::Ack(Ack {
            source,
            id: id.to_owned(),
            cleanup,
        }));
    }

    pub(crate) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// A permit for an entry the reader did not read: a due retry or a
    /// recovered entry. On a quiet stream the reader holds every free permit
    /// while its `XREADGROUP` blocks, up to `block_ms` (5 s by default): it
    /// is woken to give them back, so a retry runs at its delay, not up to
    /// `block_ms` later. `None` once the group stops.
    pub(crate) async fn permit_beside_reader(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        let waiting = self.permits.clone().acquire_owned();
        tokio::pin!(waiting);
        // Queued first (the semaphore is fair): the reader, once woken, asks
        // again behind this.
        if let std::task::Poll::Ready(p) = futures_util::poll!(&mut waiting) {
            return p.ok();
        }
        loop {
            self.unblock().await;
            tokio::select! {
                p = &mut waiting => return p.ok(),
                () = self.run.stop.cancelled() => return None,
                // The reader was between two reads, or handlers hold the
                // permits: wake it again if it blocked since.
                () = tokio::time::sleep(WAKE_READER_AGAIN) => {}
            }
        }
    }

    /// Handles `entry` in its turn (the sequencer's), holding `permit`.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        source: Source,
        entry: Entry,
        state: RetryState,
        permit: OwnedSemaphorePermit,
    ) {
        self.run
            .deliveries
            .spawn(self.prepare(source, entry, state, permit));
    }

    /// The handling of `entry`, its place in the sequencer taken now (in
    /// read order); runs when polled.
    fn prepare(
        self: &Arc<Self>,
        source: Source,
        entry: Entry,
        state: RetryState,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let ctx = &self.run.ctx;
        add(&ctx.stats.events_consumed, 1);
        ctx.stats.last_consume_at.now();
        let key = entry
            .field(HEADER_AGGREGATE_ID)
            .and_then(|id| id.parse().ok());
        let mut turn = self.sequencer.enter(key);
        self.in_flight().insert((source, entry.id.clone()));
        let tracked = InFlight {
            group: self.clone(),
            entry: Some((source, entry.id.clone())),
        };
        let group = self.clone();
        async move {
            turn.wait().await;
            group.handle(source, &entry, state).await;
            drop(turn);
            group.done(tracked);
            drop(permit);
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<(Source, String)>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Is `id` taken by this member and not finished with?
    fn is_in_flight(&self, source: Source, id: &str) -> bool {
        self.in_flight().contains(&(source, id.to_owned()))
    }

    /// Runs the group's handlers for one entry and settles it.
    async fn handle(&self, source: Source, entry: &Entry, state: RetryState) {
        let ctx = &self.run.ctx;
        let config = &ctx.config;
        let stats = &ctx.stats;
        let group = &*self.name;
        let cleanup = state.retried;
        let stream = config.stream_name();
        let delivered = crate::runtime::traced::Delivered {
            system: "redis",
            destination: &stream,
            source: &stream,
            group,
            routing_key: None,
            message_id: entry.field(wire::FIELD_EVENT_ID),
        };
        let field = |name: &str| entry.field(name).map(str::to_owned);
        let verdict = crate::runtime::traced::consume(
            config.enable_tracing,
            delivered,
            field,
            self.verdict(entry, &state),
        )
        .await;
        match verdict {
            Verdict::Ack => {
                add(&stats.events_processed_success, 1);
                self.ack(source, &entry.id, cleanup);
            }
            Verdict::NotOurs => self.ack(source, &entry.id, cleanup),
            Verdict::Retry { failed, reason } => {
                let delay = runtime::retry_delay(config, state.attempt);
                tracing::warn!(
                    %group, entry_id = %entry.id, attempt = state.attempt + 1, max_retries = config.max_retries,
                    delay_ms = delay.as_millis() as u64, %reason, "handler failed; retrying later"
                );
                match retry::schedule(self, source, &entry.id, state.attempt + 1, &failed, delay)
                    .await
                {
                    Ok(()) => {
                        stats.metrics.retries.inc();
                    }
                    Err(error) => {
                        stats.last_error_at.now();
                        tracing::error!(%group, entry_id = %entry.id, %error, "cannot schedule the retry; the entry stays pending and is claimed again after pending_idle_ms");
                    }
                }
            }
            Verdict::DeadLetter(why) => {
                stats.last_error_at.now();
                add(&stats.events_processed_failed, 1);
                if config.enable_dlq {
                    tracing::error!(%group, entry_id = %entry.id, retries = state.attempt, reason = %why.reason, "entry dead-lettered");
                    match retry::dead_letter(self, source, entry, state.attempt, &why).await {
                        Ok(()) => add(&stats.messages_sent_to_dlq, 1),
                        Err(error) => {
                            tracing::error!(%group, entry_id = %entry.id, %error, "cannot add the entry to the DLQ; it stays pending and is claimed again after pending_idle_ms")
                        }
                    }
                } else {
                    tracing::error!(%group, entry_id = %entry.id, reason = %why.reason, payload = entry.field(wire::FIELD_PAYLOAD).unwrap_or(""), "entry dropped after its last attempt: the dead-letter stream is disabled (EVENTBUS_ENABLE_DLQ=false)");
                    self.ack(source, &entry.id, true);
                }
            }
        }
    }

    async fn verdict(&self, entry: &Entry, state: &RetryState) -> Verdict {
        let ctx = &self.run.ctx;
        let config = &ctx.config;
        let group = &*self.name;
        if entry.fields.is_none() {
            tracing::warn!(%group, entry_id = %entry.id, "pending entry was deleted from the stream (trimmed?); acked");
            return Verdict::NotOurs;
        }
        if let Some(delivered) = state.crash_deliveries
            && delivered > u64::from(config.max_retries) + 1
        {
            return Verdict::DeadLetter(Why {
                reason: format!(
                    "delivered {delivered} times without being settled (its consumers died or stalled mid-handler)"
                ),
                error_type: "DeliveryLimitExceeded".to_owned(),
                handler: None,
                failed: state.only.clone().unwrap_or_default(),
            });
        }
        let Some(payload) = entry.field(wire::FIELD_PAYLOAD) else {
            return Verdict::DeadLetter(Why::undecodable(
                "entry has no `payload` field".to_owned(),
                "DecodeError::MissingPayload",
            ));
        };
        let event_types = ctx.event_types();
        let table = ctx.dispatcher.snapshot();
        let event_type = entry.field(HEADER_EVENT_TYPE);
        if let Some(t) = event_type
            && (event_types.get(t).is_none()
                || !table.groups.get(group).is_some_and(|g| g.takes(t)))
        {
            // Every group reads the whole stream: types other services
            // publish are not ours (eventsource-py acks them too).
            tracing::debug!(%group, entry_id = %entry.id, event_type = %t, "no handler in this group; acked");
            return Verdict::NotOurs;
        }
        let event = match wire::decode(
            &event_types,
            Incoming {
                content_type: None,
                event_type,
                body: payload.as_bytes(),
            },
        ) {
            Ok(event) => event,
            Err(DecodeError::UnknownEventType { event_type, .. }) => {
                tracing::debug!(%group, entry_id = %entry.id, %event_type, "unknown event type; acked");
                return Verdict::NotOurs;
            }
            Err(error) => {
                // Logged once, at error, when dead-lettered (with this reason).
                tracing::debug!(%group, entry_id = %entry.id, %error, "cannot decode stream entry");
                return Verdict::DeadLetter(Why::undecodable(
                    format!("undecodable entry: {error}"),
                    error.kind(),
                ));
            }
        };
        let outcome = ctx
            .dispatcher
            .dispatch_only(&table, group, &event, &ctx.stats, state.only.as_deref())
            .await;
        if outcome.failures.is_empty() {
            return Verdict::Ack;
        }
        let failed: Vec<String> = outcome
            .failures
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        let reason = outcome
            .failures
            .iter()
            .map(|(name, error)| format!("{name}: {error}"))
            .collect::<Vec<_>>()
            .join("; ");
        let permanent = outcome.failures.iter().find(|(_, e)| e.is_permanent());
        let (last_name, last_error) = permanent.unwrap_or(&outcome.failures[0]);
        if permanent.is_some() || state.attempt >= config.max_retries {
            Verdict::DeadLetter(Why {
                reason,
                error_type: last_error.error_type().to_owned(),
                handler: Some(last_name.to_string()),
                failed,
            })
        } else {
            Verdict::Retry { failed, reason }
        }
    }
}

/// Why an entry goes to the DLQ.
pub(crate) struct Why {
    pub(crate) reason: String,
    pub(crate) error_type: String,
    pub(crate) handler: Option<String>,
    pub(crate) failed: Vec<String>,
}

impl Why {
    fn undecodable(reason: String, error_type: &str) -> Self {
        Self {
            reason,
            error_type: error_type.to_owned(),
            handler: None,
            failed: Vec::new(),
        }
    }
}

enum Verdict {
    Ack,
    /// Not for this group: acked without counting.
    NotOurs,
    Retry {
        failed: Vec<String>,
        reason: String,
    },
    DeadLetter(Why),
}

/// Writes acks in batches: one `XACK` per stream for whatever is waiting.
async fn acker(group: Arc<Group>, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
    let run = &group.run;
    let mut ops = run.ops.clone();
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut done = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                AckMsg::Ack(ack) => batch.push(ack),
                AckMsg::Flush(tx) => flushes.push(tx),
                AckMsg::Done(tracked) => done.push(tracked),
            }
            if batch.len() < 1000 {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let mut pipe = redis::pipe();
            for source in [Source::Main, Source::Replay] {
                let ids: Vec<&str> = batch
                    .iter()
                    .filter(|a| a.source == source)
                    .map(|a| a.id.as_str())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let key = group.keys.of(source);
                pipe.cmd("XACK")
                    .arg(key)
                    .arg(&*group.name)
                    .arg(&ids)
                    .ignore();
                if source == Source::Replay {
                    // A replay entry is for this group only: gone once handled.
                    pipe.cmd("XDEL").arg(key).arg(&ids).ignore();
                }
            }
            for ack in batch.iter().filter(|a| a.cleanup) {
                pipe.cmd("HDEL")
                    .arg(&group.keys.state)
                    .arg(ack.source.member(&ack.id))
                    .ignore();
                if ack.source == Source::Main {
                    pipe.cmd("DEL")
                        .arg(run.ctx.config.retry_counter_key(&ack.id))
                        .ignore();
                }
            }
            if let Err(e) = pipe.query_async::<()>(&mut ops).await {
                run.ctx.stats.last_error_at.now();
                tracing::error!(group = %group.name, entries = batch.len(), error = %conn::scrub(&run.ctx.config.url, &e), "cannot acknowledge handled entries; they stay pending and are claimed again after pending_idle_ms");
            }
        }
        // Only now, with their acks written, may recovery see these
        // entries as not in flight.
        drop(done);
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// How often a task waiting for a permit beside the reader wakes it again.
const WAKE_READER_AGAIN: Duration = Duration::from_millis(250);

/// What happens to an entry whose handler panicked.
const NOT_SETTLED: &str = "its entry stays pending and is claimed again after pending_idle_ms";

/// Sleeps `delay` unless stopped first; `false` when stopped.
pub(crate) async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Reads new entries with `XREADGROUP ... BLOCK` on a connection of its own.
async fn read_loop(group: Arc<Group>) {
    let run = &group.run;
    let config = &run.ctx.config;
    let name = &*group.name;
    let mut conn: Option<ConnectionManager> = None;
    let mut delay = config.reconnect_delay;
    let mut failing = false;
    let mut own_pending_done = false;
    // Reads wait for half the in-flight budget to be free, so a busy group
    // reads in batches instead of one entry per round trip.
    let budget = config.stream_read_count.max(1);
    let want = u32::try_from((budget / 2).max(1)).unwrap_or(u32::MAX);
    while !run.stop.is_cancelled() {
        if !own_pending_done {
            // Entries this consumer name left pending (a restart with a fixed
            // EVENTBUS_CONSUMER_NAME) come first. Taken back before this loop
            // holds any permit: each of them waits for one.
            match recover(&group, 0, Some(&run.consumer)).await {
                Ok(_) => own_pending_done = true,
                Err(error) => {
                    tracing::warn!(group = %name, %error, "cannot read this consumer's pending entries; trying again");
                    if !pause(&run.stop, delay).await {
                        break;
                    }
                    delay = (delay * 2).min(config.max_reconnect_delay);
                    continue;
                }
            }
        }
        let Some(mut batch) = (tokio::select! {
            p = group.permits.clone().acquire_many_owned(want) => p.ok(),
            () = run.stop.cancelled() => None,
        }) else {
            break;
        };
        let free = u32::try_from(group.permits.available_permits()).unwrap_or(0);
        if free > 0
            && let Ok(extra) = group.permits.clone().try_acquire_many_owned(free)
        {
            batch.merge(extra);
        }
        let reader = match &mut conn {
            Some(c) => c,
            None => {
                let timeout = Duration::from_millis(config.block_ms) + config.socket_timeout;
                match conn::connect(&run.client, config, timeout).await {
                    Ok(mut c) => {
                        let id: Result<i64, _> =
                            redis::cmd("CLIENT").arg("ID").query_async(&mut c).await;
                        group.reader_id.store(id.unwrap_or(-1), Ordering::Release);
                        conn.insert(c)
                    }
                    Err(error) => {
                        set_state(&run.states, name, false);
                        tracing::warn!(group = %name, %error, "reader cannot connect; retrying");
                        if !pause(&run.stop, delay).await {
                            break;
                        }
                        delay = (delay * 2).min(config.max_reconnect_delay);
                        continue;
                    }
                }
            }
        };
        let count = batch.num_permits();
        let read: Result<Value, redis::RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(name)
            .arg(&run.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(config.block_ms)
            .arg("STREAMS")
            .arg(&group.keys.stream)
            .arg(&group.keys.replay)
            .arg(">")
            .arg(">")
            .query_async(reader)
            .await;
        match read {
            Ok(reply) => {
                if failing {
                    failing = false;
                    add(&run.ctx.stats.reconnections, 1);
                    run.ctx.stats.connected_at.now();
                    tracing::info!(group = %name, "reader reconnected");
                    let id: Result<i64, _> =
                        redis::cmd("CLIENT").arg("ID").query_async(reader).await;
                    group.reader_id.store(id.unwrap_or(-1), Ordering::Release);
                }
                set_state(&run.states, name, true);
                delay = config.reconnect_delay;
                // One task runs the whole read (entries still run concurrently
                // inside it, in their sequencer's order): a spawn per entry
                // costs more than handling a fast one.
                let mut handling = FuturesUnordered::new();
                for (key, entries) in entry::read_reply(reply) {
                    let source = if key == group.keys.replay {
                        Source::Replay
                    } else {
                        Source::Main
                    };
                    for entry in entries {
                        // Never more entries than permits: COUNT is the batch's size.
                        let permit = match batch.split(1) {
                            Some(p) => p,
                            None => {
                                // Those taken so far hold permits: let them run first.
                                spawn_all(
                                    &run.deliveries,
                                    std::mem::take(&mut handling),
                                    NOT_SETTLED,
                                );
                                match group.permit().await {
                                    Some(p) => p,
                                    None => return,
                                }
                            }
                        };
                        let state = RetryState::fresh(source, &entry);
                        handling.push(
                            AssertUnwindSafe(group.prepare(source, entry, state, permit))
                                .catch_unwind(),
                        );
                    }
                }
                spawn_all(&run.deliveries, handling, NOT_SETTLED);
            }
            Err(e) if is_nogroup(&e) => {
                // Redis lost the group (restarted without persistence, or the
                // stream was deleted): make it again and go on.
                tracing::warn!(group = %name, "consumer group missing; creating it again");
                let mut ops = run.ops.clone();
                if let Err(error) = create_groups(&mut ops, &run.ctx, name).await {
                    tracing::warn!(group = %name, %error, "cannot create the consumer group");
                    failing = true;
                    set_state(&run.states, name, false);
                    if !pause(&run.stop, delay).await {
                        break;
                    }
                    delay = (delay * 2).min(config.max_reconnect_delay);
                }
            }
            Err(e) => {
                if run.stop.is_cancelled() {
                    break;
                }
                failing = true;
                set_state(&run.states, name, false);
                run.ctx.stats.last_error_at.now();
                tracing::warn!(group = %name, error = %conn::scrub(&config.url, &e), retry_in_ms = delay.as_millis() as u64, "XREADGROUP failed; retrying");
                if !pause(&run.stop, delay).await {
                    break;
                }
                delay = (delay * 2).min(config.max_reconnect_delay);
            }
        }
    }
    set_state(&run.states, name, false);
}

/// Claims entries idle for `min_idle_ms` (of any consumer, or only of
/// `owner`) and handles them; returns how many were taken.
pub(crate) async fn recover(
    group: &Arc<Group>,
    min_idle_ms: u64,
    owner: Option<&str>,
) -> Result<usize, Error> {
    let run = &group.run;
    let url = &run.ctx.config.url;
    let mut ops = run.ops.clone();
    let mut taken = 0;
    for source in [Source::Main, Source::Replay] {
        let key = group.keys.of(source);
        let mut cursor = "0-0".to_owned();
        loop {
            let claimed: Vec<Entry> = if let Some(owner) = owner {
                // Our own pending entries: XREADGROUP from id 0 (no claim needed).
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&*group.name)
                    .arg(owner)
                    .arg("COUNT")
                    .arg(run.ctx.config.stream_read_count.max(1))
                    .arg("STREAMS")
                    .arg(key)
                    .arg(&cursor)
                    .query_async(&mut ops)
                    .await
                    .map_err(|e| broker(url, format!("reading pending entries of `{key}`"), &e))?;
                let entries: Vec<Entry> = entry::read_reply(reply)
                    .into_iter()
                    .flat_map(|(_, e)| e)
                    .collect();
                cursor = entries
                    .last()
                    .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
                entries
            } else {
                // JUSTID first: claiming adds no delivery, so entries this
                // member still handles and retries waiting in the schedule
                // are left as they were; only those taken count one.
                let reply: Value = redis::cmd("XAUTOCLAIM")
                    .arg(key)
                    .arg(&*group.name)
                    .arg(&run.consumer)
                    .arg(min_idle_ms)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(run.ctx.config.stream_read_count.max(1))
                    .arg("JUSTID")
                    .query_async(&mut ops)
                    .await
                    .map_err(|e| broker(url, format!("claiming idle entries of `{key}`"), &e))?;
                let (next, ids) = entry::autoclaim_ids(reply);
                cursor = next;
                let ids: Vec<String> = ids
                    .into_iter()
                    .filter(|id| !group.is_in_flight(source, id))
                    .collect();
                take_unscheduled(group, source, ids).await?
            };
            for entry in claimed {
                if group.is_in_flight(source, &entry.id) {
                    // Ours, still queued or running: claiming it only reset its idle time.
                    continue;
                }
                let Some(state) = retry::recovered_state(group, source, &entry).await? else {
                    // Waiting in the retry schedule: the retry worker takes it.
                    continue;
                };
                let Some(permit) = group.permit_beside_reader().await else {
                    return Ok(taken);
                };
                tracing::info!(group = %group.name, entry_id = %entry.id, attempt = state.attempt, "recovered a pending entry");
                taken += 1;
                group.spawn(source, entry, state, permit);
            }
            if cursor == "0-0" {
                break;
            }
        }
    }
    if taken > 0 {
        add(&run.ctx.stats.messages_recovered, taken as u64);
    }
    Ok(taken)
}

/// Takes `ids` (claimed with JUSTID) with `XCLAIM`, one delivery each, but
/// for those waiting in the retry schedule, which the retry worker takes.
async fn take_unscheduled(
    group: &Arc<Group>,
    source: Source,
    ids: Vec<String>,
) -> Result<Vec<Entry>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let run = &group.run;
    let url = &run.ctx.config.url;
    let key = group.keys.of(source);
    let mut ops = run.ops.clone();
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("ZSCORE")
            .arg(&group.keys.schedule)
            .arg(source.member(id));
    }
    let scheduled: Vec<Option<f64>> = pipe
        .query_async(&mut ops)
        .await
        .map_err(|e| broker(url, "reading the retry schedule", &e))?;
    let due: Vec<&String> = ids
        .iter()
        .zip(scheduled)
        .filter_map(|(id, at)| at.is_none().then_some(id))
        .collect();
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let reply: Value = redis::cmd("XCLAIM")
        .arg(key)
        .arg(&*group.name)
        .arg(&run.consumer)
        .arg(0)
        .arg(&due)
        .query_async(&mut ops)
        .await
        .map_err(|e| broker(url, format!("claiming idle entries of `{key}`"), &e))?;
    Ok(entry::entries(reply))
}

/// Claims entries left idle past `pending_idle_ms` by dead (or stuck)
/// members, every half of that time.
async fn recovery_loop(group: Arc<Group>) {
    let run = &group.run;
    let idle = run.ctx.config.pending_idle_ms;
    let every =
        Duration::from_millis(idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(30));
    while pause(&run.stop, every).await {
        if let Err(error) = recover(&group, idle, None).await {
            tracing::warn!(group = %group.name, %error, "recovery of pending entries failed");
        }
    }
}
