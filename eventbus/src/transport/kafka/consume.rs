//! Consuming one consumer group: receive, dispatch, settle, commit.
//!
//! Each group has two Kafka consumers: one of the main topic (group id = the
//! group's name, as eventsource-py's) and one of the group's retry topic
//! (group id `{group}.retry`, [`retry_group_id`]). The main consumer's
//! fetches thus carry only the main topic's partitions, not the retry
//! topic's, which are empty almost always (on Tansu, the empty partitions of
//! each fetch cost the broker more than the records: one consumer of both
//! topics read about 25% slower, measured with `bench-kafka`), and the retry
//! consumer's group, which no other member joins, rebalances without the
//! main group. Records of both run concurrently
//! (at most `stream_read_count` per group) through the group's sequencer:
//! per-aggregate order by default, and the key is the aggregate id, so one
//! aggregate's records are in one partition, in order.
//!
//! A record is settled once every handler of the group succeeded, or its
//! retry copy (on the group's retry topic) or DLQ copy is acknowledged by the
//! broker. Offsets are committed per partition up to the lowest record not
//! yet settled ([`AckTracker`]), never past it: every `commit_interval_ms`,
//! when partitions are revoked (rebalance) and on shutdown. A crash or a
//! rebalance reprocesses at most the uncommitted tail; nothing is lost.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::stream::FuturesUnordered;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::error::{DecodeError, Error};
use crate::runtime::{self, BusContext, Sequencer};
use crate::stats::add;
use crate::wire::{self, HEADER_AGGREGATE_ID, HEADER_EVENT_TYPE, Incoming};

use super::offsets::AckTracker;
use super::producer::Producer;
use super::record::{self, Record};
use super::{blocking, broker, client_config, produce};
pub(crate) use crate::transport::{ConsumerStates, set_state, spawn_all};

/// What every group of one consuming run shares.
pub(crate) struct Run {
    pub(crate) ctx: Arc<BusContext>,
    pub(crate) producer: Producer,
    pub(crate) consumer_name: String,
    pub(crate) stop: CancellationToken,
    /// Receive and commit loops.
    pub(crate) workers: TaskTracker,
    /// Records being handled.
    pub(crate) deliveries: TaskTracker,
    pub(crate) states: ConsumerStates,
}

impl Run {
    pub(crate) fn new(
        ctx: Arc<BusContext>,
        producer: Producer,
        consumer_name: String,
        states: ConsumerStates,
    ) -> Self {
        Self {
            ctx,
            producer,
            consumer_name,
            stop: CancellationToken::new(),
            workers: TaskTracker::new(),
            deliveries: TaskTracker::new(),
            states,
        }
    }
}

/// The tracker of each partition this member holds, with the assignment
/// generation it belongs to (a record of an earlier assignment settles nothing).
#[derive(Debug, Default)]
pub(crate) struct Trackers {
    partitions: HashMap<(Arc<str>, i32), (u64, AckTracker)>,
    generation: u64,
    /// The partitions the group has given this member, as the rebalance
    /// callbacks report them.
    assigned: std::collections::HashSet<(Arc<str>, i32)>,
}

impl Trackers {
    /// The group gave this member `partitions` (all of them, or, with a
    /// cooperative assignor, more of them).
    fn assign(&mut self, partitions: &TopicPartitionList) {
        for e in partitions.elements() {
            self.assigned.insert((Arc::from(e.topic()), e.partition()));
        }
    }

    /// Does this member hold `partition` of `topic` now?
    fn holds(&self, topic: &Arc<str>, partition: i32) -> bool {
        self.assigned.contains(&(topic.clone(), partition))
    }

    /// Registers a received record; returns the generation to settle it
    /// with, or `None` for a record of a partition this member no longer
    /// holds: one fetched before a rebalance took the partition away, which
    /// its new owner reads from the committed offset. Handling it here would
    /// run it twice and commit for a partition another member owns.
    fn received(&mut self, topic: &Arc<str>, partition: i32, offset: i64) -> Option<u64> {
        if !self.holds(topic, partition) {
            return None;
        }
        let next = &mut self.generation;
        let (generation, tracker) = self
            .partitions
            .entry((topic.clone(), partition))
            .or_insert_with(|| {
                *next += 1;
                (*next, AckTracker::new())
            });
        tracker.received(offset);
        Some(*generation)
    }

    fn handled(&mut self, topic: &Arc<str>, partition: i32, offset: i64, generation: u64) {
        if let Some((g, tracker)) = self.partitions.get_mut(&(topic.clone(), partition))
            && *g == generation
        {
            tracker.handled(offset);
        }
    }

    /// Offsets of `of` to commit now (those that moved since the last call).
    fn take_commits(&mut self, of: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), (_, tracker)) in &mut self.partitions {
            if **topic != *of {
                continue;
            }
            if let Some(offset) = tracker.take() {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset));
            }
        }
        tpl
    }

    /// The commit of `offsets` failed: send them again at the next interval.
    fn commit_failed(&mut self, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let Some((_, tracker)) = self
                .partitions
                .get_mut(&(Arc::from(e.topic()), e.partition()))
            {
                tracker.commit_failed();
            }
        }
    }

    /// Forgets revoked partitions; returns their last offsets to commit.
    fn revoke(&mut self, revoked: &TopicPartitionList) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for e in revoked.elements() {
            self.assigned.remove(&(Arc::from(e.topic()), e.partition()));
            if let Some((_, mut tracker)) = self
                .partitions
                .remove(&(Arc::from(e.topic()), e.partition()))
                && let Some(offset) = tracker.take()
            {
                let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset));
            }
        }
        tpl
    }
}

/// Commits the handled prefix of partitions being revoked, before another
/// member gets them, and marks the group as not receiving while no broker
/// answers.
pub(crate) struct GroupContext {
    group: Arc<str>,
    trackers: Arc<Mutex<Trackers>>,
    /// Set once the group has given this member its (possibly empty) share.
    assigned: tokio::sync::watch::Sender<bool>,
    states: ConsumerStates,
    /// librdkafka reported every broker down, or a receive failed, and
    /// nothing since has shown a broker answering (librdkafka reconnects by
    /// itself; `recv` returns no error meanwhile, it only waits). The one
    /// source, with the group's other consumer's, of the group's state in
    /// [`ConsumerStates`] while it runs.
    unreachable: AtomicBool,
    /// How many of the group's two consumers are unreachable: the group is
    /// receiving when none is.
    down: Arc<std::sync::atomic::AtomicUsize>,
    /// The main topic's consumer (the one whose assignment is waited for,
    /// and which logs a broker outage both consumers see).
    main: bool,
}

impl GroupContext {
    /// Marks this consumer, and so its group, as not receiving; `true` when
    /// this consumer was receiving.
    fn mark_unreachable(&self) -> bool {
        let was_receiving = !self.unreachable.swap(true, Ordering::AcqRel);
        if was_receiving && self.down.fetch_add(1, Ordering::AcqRel) == 0 {
            set_state(&self.states, &self.group, false);
        }
        was_receiving
    }

    /// Marks this consumer as receiving again (its group too, unless its
    /// other consumer is not); `true` when this consumer was not receiving.
    fn mark_reachable(&self) -> bool {
        let was_unreachable = self.unreachable.swap(false, Ordering::AcqRel);
        if was_unreachable && self.down.fetch_sub(1, Ordering::AcqRel) == 1 {
            set_state(&self.states, &self.group, true);
        }
        was_unreachable
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Both consumers of a group see it; the main one says so.
            if self.mark_unreachable() && self.main {
                tracing::warn!(group = %self.group, %reason, "no broker answers; the group is not receiving until one does");
            }
        } else {
            tracing::warn!(group = %self.group, %error, %reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => {
                let tpl = self
                    .trackers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .revoke(revoked);
                // Lost (no coordinator answered within the session
                // timeout): the partitions may have a new owner already, and
                // librdkafka's synchronous commit, which has no timeout,
                // would hold the task polling this consumer (and its runtime
                // worker) until a coordinator answers.
                if consumer.assignment_lost() {
                    if tpl.count() > 0 {
                        tracing::warn!(group = %self.group, revoked = revoked.count(), uncommitted_partitions = tpl.count(), "the group's partitions were lost (no coordinator answered within session_timeout_ms); their handled records are not committed and their next owner reprocesses them");
                    }
                    return;
                }
                tracing::debug!(group = %self.group, revoked = revoked.count(), committing = tpl.count(), "partitions revoked");
                if tpl.count() > 0
                    && let Err(error) = consumer.commit(&tpl, CommitMode::Sync)
                {
                    tracing::warn!(group = %self.group, %error, "cannot commit the handled offsets of revoked partitions; their next owner reprocesses them");
                }
            }
            Rebalance::Assign(assigned) => {
                self.trackers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .assign(assigned);
                tracing::debug!(group = %self.group, assigned = assigned.count(), "partitions assigned");
            }
            Rebalance::Error(error) => {
                tracing::warn!(group = %self.group, %error, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.main && matches!(rebalance, Rebalance::Assign(_)) {
            self.assigned.send_replace(true);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(error) = result {
            tracing::warn!(group = %self.group, %error, "committing handled offsets failed; trying again at the next interval");
            self.trackers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .commit_failed(offsets);
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// One consumer group of a run.
pub(crate) struct Group {
    pub(crate) run: Arc<Run>,
    pub(crate) name: Arc<str>,
    topic: String,
    retry_topic: String,
    /// The main topic's consumer and the retry topic's, each with the
    /// topic it reads, until closed.
    consumers: Mutex<Vec<(Arc<GroupConsumer>, String)>>,
    trackers: Arc<Mutex<Trackers>>,
    sequencer: Arc<Sequencer<Uuid>>,
    permits: Arc<Semaphore>,
    /// Retries waiting for their time without an in-flight permit (at most
    /// [`WAITING_PER_PERMIT`] per permit): past that, a waiting retry keeps
    /// its permit, and reading slows down instead of memory growing.
    waiting: Arc<Semaphore>,
    assigned: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a record goes to the DLQ.
struct Why {
    /// eventsource-py's `dlq_reason`: `deserialization_error`, `max_retries_exceeded`, `permanent_error`.
    reason: &'static str,
    message: String,
    error_type: String,
    handler: Option<String>,
    failed: Vec<String>,
}

enum Verdict {
    Ack,
    /// Not for this group: settled without counting.
    NotOurs,
    Retry {
        failed: Vec<String>,
        reason: String,
    },
    DeadLetter(Why),
}

impl Group {
    /// Creates the group's consumer, subscribes it and starts its loops.
    pub(crate) async fn start(run: Arc<Run>, name: Arc<str>) -> Result<Arc<Self>, Error> {
        let config = &run.ctx.config;
        let topic = config.kafka_topic();
        let retry_topic = config.kafka_retry_topic(&name);
        if run.ctx.declare {
            super::create_topics(
                config,
                &run.consumer_name,
                &[topic.clone(), retry_topic.clone()],
            )
            .await?;
        }
        let trackers = Arc::new(Mutex::new(Trackers::default()));
        let (assigned, assigned_rx) = tokio::sync::watch::channel(false);
        let down = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let consumer = |group_id: &str, topic: &str, offset_reset: &str, main: bool| {
            let mut c = client_config(config, &run.consumer_name)?;
            c.set("group.id", group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", offset_reset)
                .set("session.timeout.ms", config.session_timeout_ms.to_string())
                .set(
                    "heartbeat.interval.ms",
                    config.heartbeat_interval_ms.to_string(),
                )
                .set(
                    "max.poll.interval.ms",
                    config.max_poll_interval_ms.to_string(),
                );
            let consumer: GroupConsumer = c
                .create_with_context(GroupContext {
                    group: name.clone(),
                    trackers: trackers.clone(),
                    // Only the main consumer's assignment is waited for.
                    assigned: if main {
                        assigned.clone()
                    } else {
                        tokio::sync::watch::Sender::new(false)
                    },
                    states: run.states.clone(),
                    unreachable: AtomicBool::new(false),
                    down: down.clone(),
                    main,
                })
                .map_err(|e| broker(format!("creating the consumer of group `{name}`"), &e))?;
            consumer
                .subscribe(&[topic])
                .map_err(|e| broker(format!("subscribing group `{name}` to `{topic}`"), &e))?;
            Ok::<_, Error>(Arc::new(consumer))
        };
        let main = consumer(
            &name,
            &topic,
            &config.auto_offset_reset.to_ascii_lowercase(),
            true,
        )?;
        // Every record of the retry topic is this group's: from the start,
        // whatever `auto_offset_reset` says (a retry written before this
        // consumer's first assignment is read, not skipped).
        let retries = consumer(&retry_group_id(&name), &retry_topic, "earliest", false)?;
        let consumers = vec![(main, topic.clone()), (retries, retry_topic.clone())];
        let group = Arc::new(Self {
            sequencer: runtime::sequencer(config.ordering_for(&name)),
            permits: Arc::new(Semaphore::new(config.stream_read_count.max(1))),
            waiting: Arc::new(Semaphore::new(
                config.stream_read_count.max(1) * WAITING_PER_PERMIT,
            )),
            consumers: Mutex::new(consumers.clone()),
            assigned: assigned_rx,
            trackers,
            topic,
            retry_topic,
            name,
            run: run.clone(),
        });
        // Subscribed: receiving until an error says otherwise (an idle group is healthy).
        set_state(&run.states, &group.name, true);
        tracing::debug!(group = %group.name, topic = %group.topic, consumer = %run.consumer_name, "consuming");
        for (consumer, topic) in consumers {
            run.workers
                .spawn(receive_loop(group.clone(), consumer.clone()));
            run.workers
                .spawn(commit_loop(group.clone(), consumer, topic));
        }
        Ok(group)
    }

    /// Waits (at most `timeout`) until the group has assigned this member
    /// its partitions, so what is published next is consumed promptly.
    pub(crate) async fn assigned(&self, timeout: Duration) {
        let mut rx = self.assigned.clone();
        if tokio::time::timeout(timeout, rx.wait_for(|a| *a))
            .await
            .is_err()
        {
            tracing::warn!(group = %self.name, ?timeout, "no partitions assigned yet; consuming once the group has rebalanced");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Trackers> {
        self.trackers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits what is handled, waits for it (bounded), and closes the consumer
    /// (leaving the group, so its partitions move at once).
    ///
    /// librdkafka's synchronous commit has no timeout: with no coordinator
    /// answering it waits until one does. It runs on a thread of its own,
    /// not the runtime's blocking pool, which a runtime waits for when it
    /// is dropped: a service whose broker is gone still exits after
    /// `shutdown`.
    pub(crate) async fn close(&self, timeout: Duration) {
        let consumers = std::mem::take(
            &mut *self
                .consumers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut closing = Vec::new();
        for (consumer, topic) in consumers {
            let tpl = self.lock().take_commits(&topic);
            let name = self.name.clone();
            let (done, closed) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("eventbus-kafka-close".into())
                .spawn(move || {
                    if tpl.count() > 0
                        && let Err(error) = consumer.commit(&tpl, CommitMode::Sync)
                    {
                        tracing::warn!(group = %name, %error, "cannot commit the handled offsets on shutdown; the group's next member reprocesses them");
                    }
                    consumer.unsubscribe();
                    drop(consumer);
                    let _ = done.send(());
                });
            match spawned {
                Ok(_) => closing.push(closed),
                Err(error) => {
                    tracing::warn!(group = %self.name, %error, "cannot start a thread to close the group consumer; the group's next member reprocesses what it did not commit");
                }
            }
        }
        // Both close at once: the bound is for the pair.
        let all = futures_util::future::join_all(closing);
        if tokio::time::timeout(timeout * 2, all).await.is_err() {
            tracing::warn!(group = %self.name, timeout = ?(timeout * 2), "the group consumer did not commit and close in time; the group's next member reprocesses what it did not commit");
        }
    }

    /// The handling of each record of `batch` (received in this order), its
    /// place in the sequencer taken now; they run when polled.
    fn prepare(
        self: &Arc<Self>,
        batch: Vec<(Record, OwnedSemaphorePermit)>,
    ) -> FuturesUnordered<impl Future<Output = std::thread::Result<()>> + Send + 'static> {
        let ctx = &self.run.ctx;
        ctx.stats.last_consume_at.now();
        let mut trackers = self.lock();
        let handling = FuturesUnordered::new();
        for (record, permit) in batch {
            let Some(generation) =
                trackers.received(&record.topic, record.partition, record.offset)
            else {
                tracing::debug!(group = %self.name, topic = %record.topic, partition = record.partition, offset = record.offset, "record of a partition no longer held; left to its new owner");
                continue;
            };
            add(&ctx.stats.events_consumed, 1);
            let key: Option<Uuid> = record
                .header(HEADER_AGGREGATE_ID)
                .and_then(|id| id.parse().ok());
            // A retry not yet due takes its turn (behind its aggregate's
            // records then in flight) only once due, and waits without its
            // permit: a waiting retry holds up neither its aggregate, nor
            // the group (strict ordering), nor the reading of new records.
            let waits = record.retry_after().is_some_and(|due| due > now_seconds());
            let (taken, waiting) = if waits {
                match self.waiting.clone().try_acquire_owned() {
                    Ok(slot) => (None, Some(Err(slot))),
                    Err(_) => (None, Some(Ok(permit))),
                }
            } else {
                (Some((self.sequencer.enter(key), permit)), None)
            };
            let group = self.clone();
            let handle = async move {
                let (mut turn, permit) = match (taken, waiting) {
                    (Some(taken), _) => taken,
                    (None, waiting) => {
                        // Not settled when stopped, nor when its partition
                        // moved meanwhile: it is read again.
                        let Some(permit) = Box::pin(group.wait_until_due(&record, waiting)).await
                        else {
                            return;
                        };
                        (group.sequencer.enter(key), permit)
                    }
                };
                turn.wait().await;
                if group.handle(&record).await {
                    group.lock().handled(
                        &record.topic,
                        record.partition,
                        record.offset,
                        generation,
                    );
                }
                drop(turn);
                drop(permit);
            };
            handling.push(AssertUnwindSafe(handle).catch_unwind());
        }
        handling
    }

    /// Waits until the retry `record` is due (at most a day: its time comes
    /// from the broker), holding `waiting`: its in-flight permit, or a
    /// waiting slot to trade for one then. `None` when the run stops first,
    /// or the record's partition has moved to another member meanwhile.
    async fn wait_until_due(
        &self,
        record: &Record,
        waiting: Option<Result<OwnedSemaphorePermit, OwnedSemaphorePermit>>,
    ) -> Option<OwnedSemaphorePermit> {
        let wait = record.retry_after().unwrap_or(0.0) - now_seconds();
        let wait = Duration::from_secs_f64(wait.clamp(0.0, 86_400.0));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.run.stop.cancelled() => return None,
        }
        if !self.lock().holds(&record.topic, record.partition) {
            return None;
        }
        if let Some(Ok(permit)) = waiting {
            return Some(permit);
        }
        tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok(),
            () = self.run.stop.cancelled() => None,
        }
    }

    /// Runs the group's handlers for `record` (due, holding its turn);
    /// `true` once it is settled.
    async fn handle(&self, record: &Record) -> bool {
        let ctx = &self.run.ctx;
        let config = &ctx.config;
        let stats = &ctx.stats;
        let group = &*self.name;
        let delivered = runtime::traced::Delivered {
            system: "kafka",
            destination: &record.topic,
            source: &record.topic,
            group,
            routing_key: None,
            message_id: record.header(wire::FIELD_EVENT_ID),
        };
        let field = |name: &str| record.header(name).map(str::to_owned);
        let verdict = runtime::traced::consume(
            config.enable_tracing,
            delivered,
            field,
            self.verdict(record),
        )
        .await;
        match verdict {
            Verdict::Ack => {
                add(&stats.events_processed_success, 1);
                true
            }
            Verdict::NotOurs => true,
            Verdict::Retry { failed, reason } => {
                let attempt = record.retry_count();
                let delay = runtime::retry_delay(config, attempt);
                tracing::warn!(
                    %group, topic = %record.topic, partition = record.partition, offset = record.offset,
                    attempt = attempt + 1, max_retries = config.max_retries,
                    delay_ms = delay.as_millis() as u64, %reason, "handler failed; retrying later"
                );
                let due = chrono::Utc::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
                let headers = record.headers_with(
                    &[],
                    vec![
                        (record::RETRY_COUNT.to_owned(), (attempt + 1).to_string()),
                        (record::RETRY_AFTER.to_owned(), record::posix_seconds(due)),
                        (
                            record::FAILED_HANDLERS.to_owned(),
                            serde_json::to_string(&failed).unwrap_or_default(),
                        ),
                        (record::RETRY_GROUP.to_owned(), group.to_owned()),
                    ],
                );
                let written = Box::pin(self.write(&self.retry_topic, record, &headers)).await;
                if written {
                    stats.metrics.retries.inc();
                }
                written
            }
            Verdict::DeadLetter(why) => {
                stats.last_error_at.now();
                add(&stats.events_processed_failed, 1);
                if !config.enable_dlq {
                    tracing::error!(%group, topic = %record.topic, offset = record.offset, reason = %why.message, "record dropped after its last attempt: the DLQ is disabled (EVENTBUS_ENABLE_DLQ=false)");
                    return true;
                }
                tracing::error!(%group, topic = %record.topic, partition = record.partition, offset = record.offset, retries = record.retry_count(), reason = %why.message, "record dead-lettered");
                let message = wire::bounded_reason(&record::cut_chars(
                    &why.message,
                    record::MAX_ERROR_MESSAGE,
                ));
                let mut extra = vec![
                    (record::DLQ_REASON.to_owned(), why.reason.to_owned()),
                    (record::DLQ_ERROR_TYPE.to_owned(), why.error_type),
                    (record::DLQ_ERROR_MESSAGE.to_owned(), message),
                    (
                        record::DLQ_RETRY_COUNT.to_owned(),
                        record.retry_count().to_string(),
                    ),
                    (
                        record::DLQ_TIMESTAMP.to_owned(),
                        wire::python_isoformat(&chrono::Utc::now()),
                    ),
                    (
                        record::DLQ_ORIGINAL_TOPIC.to_owned(),
                        record.topic.to_string(),
                    ),
                    (
                        record::DLQ_ORIGINAL_PARTITION.to_owned(),
                        record.partition.to_string(),
                    ),
                    (
                        record::DLQ_ORIGINAL_OFFSET.to_owned(),
                        record.offset.to_string(),
                    ),
                    (record::DLQ_CONSUMER_GROUP.to_owned(), group.to_owned()),
                    // Made by eventbus: a replay goes to the group's retry topic.
                    (record::RETRY_GROUP.to_owned(), group.to_owned()),
                ];
                if let Some(h) = why.handler {
                    extra.push((record::DLQ_HANDLER.to_owned(), h));
                }
                if !why.failed.is_empty() {
                    extra.push((
                        record::FAILED_HANDLERS.to_owned(),
                        serde_json::to_string(&why.failed).unwrap_or_default(),
                    ));
                }
                let headers =
                    record.headers_with(&[record::RETRY_AFTER, record::FAILED_HANDLERS], extra);
                let written =
                    Box::pin(self.write(&config.kafka_dlq_topic(), record, &headers)).await;
                if written {
                    add(&stats.messages_sent_to_dlq, 1);
                }
                written
            }
        }
    }

    /// Produces a copy of `record` with `headers` to `topic`, trying again
    /// (with backoff) until the broker has it or the run stops. Callers box
    /// this future (and [`Group::wait_until_due`]'s): each record's handling
    /// is moved into its task, and these rare paths inline made it about 1.5
    /// times as large (1,656 bytes instead of 1,072).
    async fn write(&self, topic: &str, record: &Record, headers: &[(String, String)]) -> bool {
        let config = &self.run.ctx.config;
        let mut delay = config.reconnect_delay;
        loop {
            let mut r =
                FutureRecord::<[u8], [u8]>::to(topic).headers(record::owned_headers(headers));
            if let Some(k) = &record.key {
                r = r.key(k);
            }
            if let Some(v) = &record.value {
                r = r.payload(v);
            }
            let producer = self.run.producer.get();
            match produce(&producer, r, config.confirm_timeout).await {
                Ok(_) => return true,
                Err(error) => {
                    self.run.producer.failed(&producer, &error);
                    self.run.ctx.stats.last_error_at.now();
                    tracing::error!(group = %self.name, %topic, %error, "cannot write to the topic; trying again (the record stays uncommitted meanwhile)");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.run.stop.cancelled() => return false,
                    }
                    delay = (delay * 2).min(config.max_reconnect_delay);
                }
            }
        }
    }

    async fn verdict(&self, record: &Record) -> Verdict {
        let ctx = &self.run.ctx;
        let config = &ctx.config;
        let group = &*self.name;
        let Some(value) = record.value.as_deref() else {
            return Verdict::DeadLetter(Why::undecodable(
                "record has no value".to_owned(),
                "DecodeError::MissingValue",
            ));
        };
        let event_types = ctx.event_types();
        let table = ctx.dispatcher.snapshot();
        let event_type = record.header(HEADER_EVENT_TYPE);
        if let Some(t) = event_type
            && (event_types.get(t).is_none()
                || !table.groups.get(group).is_some_and(|g| g.takes(t)))
        {
            // Every group reads the whole topic: types other services publish are not ours.
            tracing::debug!(%group, offset = record.offset, event_type = %t, "no handler in this group; settled");
            return Verdict::NotOurs;
        }
        let event = match wire::decode(
            &event_types,
            Incoming {
                content_type: None,
                event_type,
                body: value,
            },
        ) {
            Ok(event) => event,
            Err(DecodeError::UnknownEventType { event_type, .. }) => {
                tracing::debug!(%group, offset = record.offset, %event_type, "unknown event type; settled");
                return Verdict::NotOurs;
            }
            Err(error) => {
                // Logged once, at error, when dead-lettered (with this reason).
                tracing::debug!(%group, topic = %record.topic, offset = record.offset, %error, "cannot decode record");
                return Verdict::DeadLetter(Why::undecodable(
                    format!("undecodable record: {error}"),
                    error.kind(),
                ));
            }
        };
        let only = record.failed_handlers();
        let outcome = ctx
            .dispatcher
            .dispatch_only(&table, group, &event, &ctx.stats, only.as_deref())
            .await;
        if outcome.failures.is_empty() {
            return Verdict::Ack;
        }
        let failed: Vec<String> = outcome
            .failures
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        let reason = outcome.describe_failures();
        let permanent = outcome.failures.iter().find(|(_, e)| e.is_permanent());
        let (last_name, last_error) = permanent.unwrap_or(&outcome.failures[0]);
        let attempt = record.retry_count();
        if permanent.is_some() || attempt >= config.max_retries {
            Verdict::DeadLetter(Why {
                reason: if permanent.is_some() {
                    "permanent_error"
                } else {
                    "max_retries_exceeded"
                },
                message: reason,
                error_type: last_error.error_type().to_owned(),
                handler: Some(last_name.to_string()),
                failed,
            })
        } else {
            Verdict::Retry { failed, reason }
        }
    }
}

impl Why {
    fn undecodable(message: String, error_type: &str) -> Self {
        Self {
            reason: "deserialization_error",
            message,
            error_type: error_type.to_owned(),
            handler: None,
            failed: Vec::new(),
        }
    }
}

/// The Kafka group id of `group`'s retry-topic consumer: `{group}.retry`
/// (a group of its own, so that its members joining and leaving do not
/// rebalance the main topic's group; an ACL on the prefix `{group}` covers it).
fn retry_group_id(group: &str) -> String {
    format!("{group}.retry")
}

/// Now, in POSIX seconds (the unit of the `retry_after` header).
fn now_seconds() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Waiting retries that give their in-flight permit back, per permit.
const WAITING_PER_PERMIT: usize = 10;

/// At most this many records are taken at once (each still needs a permit).
const MAX_BATCH: usize = 256;

/// Takes records while a permit is free, those already fetched in one batch,
/// and runs each batch on one task (a spawn per record costs more than
/// handling a fast one); records of a batch still run concurrently, in their
/// sequencer's order.
async fn receive_loop(group: Arc<Group>, consumer: Arc<GroupConsumer>) {
    let run = &group.run;
    let config = &run.ctx.config;
    let name = &*group.name;
    let mut delay = config.reconnect_delay;
    let mut topic: Option<Arc<str>> = None;
    loop {
        let permit = tokio::select! {
            p = group.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = run.stop.cancelled() => break,
        };
        let received = tokio::select! {
            m = consumer.recv() => m,
            () = run.stop.cancelled() => break,
        };
        let mut failed = None;
        match received {
            Ok(message) => {
                let mut batch = vec![(Record::from_message(&message, topic.as_ref()), permit)];
                drop(message);
                while batch.len() < MAX_BATCH
                    && let Ok(permit) = group.permits.clone().try_acquire_owned()
                {
                    match consumer.recv().now_or_never() {
                        Some(Ok(message)) => {
                            let record =
                                Record::from_message(&message, batch.last().map(|(r, _)| &r.topic));
                            batch.push((record, permit));
                        }
                        Some(Err(error)) => {
                            failed = Some(error);
                            break;
                        }
                        None => break,
                    }
                }
                topic = batch.last().map(|(r, _)| r.topic.clone());
                // Records arriving show a broker answers again.
                consumer.context().mark_reachable();
                delay = config.reconnect_delay;
                spawn_all(&run.deliveries, group.prepare(batch), NOT_SETTLED);
            }
            Err(error) => failed = Some(error),
        }
        if let Some(error) = failed {
            // Until a record arrives or the commit loop sees a broker answer.
            consumer.context().mark_unreachable();
            run.ctx.stats.last_error_at.now();
            tracing::warn!(group = %name, %error, retry_in_ms = delay.as_millis() as u64, "receiving failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = run.stop.cancelled() => break,
            }
            delay = (delay * 2).min(config.max_reconnect_delay);
        }
    }
    set_state(&run.states, name, false);
}

/// What happens to a record whose handler panicked.
const NOT_SETTLED: &str =
    "its record is not committed and is read again after a restart or rebalance";

/// Commits the handled prefix of every partition every `commit_interval_ms`;
/// while no broker answered, asks for the topic's metadata instead, to see
/// when one does (an idle group gets no record that would show it).
async fn commit_loop(group: Arc<Group>, consumer: Arc<GroupConsumer>, topic: String) {
    let run = &group.run;
    let every = Duration::from_millis(run.ctx.config.commit_interval_ms.max(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = run.stop.cancelled() => break,
        }
        if consumer.context().unreachable.load(Ordering::Acquire) {
            let probe = consumer.clone();
            let topic = topic.clone();
            let t = run.ctx.config.socket_timeout;
            let answered = blocking("reading the topic's metadata", t, move || {
                probe
                    .fetch_metadata(Some(&topic), Timeout::After(t))
                    .map(|m| m.brokers().len())
                    .map_err(|e| broker("reading the topic's metadata", &e))
            })
            .await
            .is_ok_and(|brokers| brokers > 0);
            if !answered {
                continue;
            }
            if consumer.context().mark_reachable() && consumer.context().main {
                tracing::info!(group = %group.name, "a broker answers again; the group is receiving");
            }
        }
        let tpl = group.lock().take_commits(&topic);
        if tpl.count() > 0
            && let Err(error) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(group = %group.name, %error, "cannot commit handled offsets; trying again at the next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Trackers;
    use rdkafka::{Offset, TopicPartitionList};
    use std::sync::Arc;

    fn partition(topic: &str, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        tpl
    }

    fn committed(tpl: &TopicPartitionList) -> Vec<(String, i32, Offset)> {
        tpl.elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect()
    }

    /// A record fetched before a rebalance took its partition away is not
    /// taken (its new owner reads it), and nothing is committed for it.
    #[test]
    fn records_of_a_revoked_partition_are_left_to_its_new_owner() {
        let topic: Arc<str> = Arc::from("t");
        let mut trackers = Trackers::default();
        assert_eq!(trackers.received(&topic, 0, 0), None, "not assigned yet");
        trackers.assign(&partition("t", 0));
        let first = trackers.received(&topic, 0, 5).expect("assigned");
        trackers.handled(&topic, 0, 5, first);
        let revoked = trackers.revoke(&partition("t", 0));
        assert_eq!(
            committed(&revoked),
            [("t".to_owned(), 0, Offset::Offset(6))]
        );
        assert_eq!(trackers.received(&topic, 0, 6), None, "revoked");
        assert_eq!(trackers.take_commits("t").count(), 0);
        // Given back later: a new generation; the old one settles nothing.
        trackers.assign(&partition("t", 0));
        let second = trackers.received(&topic, 0, 6).expect("assigned again");
        assert_ne!(first, second);
        trackers.handled(&topic, 0, 6, first);
        assert_eq!(
            committed(&trackers.take_commits("t")),
            [("t".to_owned(), 0, Offset::Offset(6))],
            "not past 6, which the old generation cannot settle"
        );
        trackers.handled(&topic, 0, 6, second);
        assert_eq!(
            committed(&trackers.take_commits("t")),
            [("t".to_owned(), 0, Offset::Offset(7))]
        );
    }
}
