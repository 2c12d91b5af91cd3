//! The RabbitMQ transport (lapin 4): separate publisher and consumer
//! connections, each supervised and rebuilt after a drop.

mod amqp;
mod consume;
mod dlq;
mod errors;
mod link;
mod publish;
mod retry;
mod settle;
mod tls;
mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::runtime::{BusContext, DlqMessage, HealthStatus, QueueInfo, ReplayFilter, ReplayReport};
use crate::transport::{Replay, Transport};

use consume::ConsumerStates;
use errors::{Failure, broker};
use link::{Link, LinkState, Session, Setup};
use publish::Publisher;

type ExtraBindings = Arc<Mutex<Vec<(String, String)>>>;

struct Consuming {
    link: Arc<Link>,
    stop: CancellationToken,
}

/// A connection to RabbitMQ with its topology declared.
pub(crate) struct RabbitTransport {
    ctx: Arc<BusContext>,
    publisher: Arc<Publisher>,
    consuming: Arc<tokio::sync::Mutex<Option<Consuming>>>,
    deliveries: TaskTracker,
    states: ConsumerStates,
    extra: ExtraBindings,
    /// Groups the broker refused to the publisher's declares.
    publisher_refused: Refused,
    /// Groups the broker refused to the consumer's declares or consume.
    consumer_refused: Refused,
    consumer_tag: String,
    watcher: CancellationToken,
}

impl fmt::Debug for RabbitTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitTransport")
            .field("consumer_tag", &self.consumer_tag)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `{hostname}-{8 hex}`, eventsource-py's default consumer name.
fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "eventbus".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// An access refusal of one group's topology: what [`Error::AccessRefused`] says.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    kind: &'static str,
    name: String,
    reason: String,
}

impl Refusal {
    fn error(&self, group: &str) -> Error {
        Error::AccessRefused {
            group: group.to_owned(),
            kind: self.kind,
            name: self.name.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// Groups whose topology (or consumer) the broker refused this user, by group.
pub(crate) type Refused = Arc<Mutex<BTreeMap<String, Refusal>>>;

/// Records `failure` of `group` when it is an access refusal (and returns
/// `None`); any other failure comes back.
fn refuse(refused: &Refused, group: &str, failure: Failure) -> Option<Failure> {
    match failure {
        Failure::Fatal(Error::AccessRefused {
            kind, name, reason, ..
        }) => {
            let refusal = Refusal { kind, name, reason };
            let error = refusal.error(group);
            let first = lock(refused).insert(group.to_owned(), refusal).is_none();
            if first {
                tracing::error!(%group, %error, "group refused by the broker; the other groups go on, this one is retried in the background");
            } else {
                tracing::debug!(%group, %error, "group still refused by the broker");
            }
            None
        }
        other => Some(other),
    }
}

/// Declares `group` on a channel of its own, so that a refusal (a
/// channel-level error) closes only that channel.
async fn declare_group_alone(
    session: &Session,
    shared: &BusContext,
    group: &str,
    bindings: &[topology::Binding],
) -> Result<(), Failure> {
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(|e| Failure::Retry(errors::scrub(&e.to_string())))?;
    let result = topology::declare_group(&channel, &shared.config, group, bindings).await;
    if channel.status().connected() {
        let _ = channel.close(200, "declared".into()).await;
    }
    result
}

/// Declares everything the registry implies: the exchange on the session's
/// main channel, each group on a channel of its own. A group the broker
/// refuses is recorded in `refused` (and retried in the background by the
/// caller); the others are declared.
async fn declare_topology(
    session: &Session,
    shared: &BusContext,
    extra: &ExtraBindings,
    refused: &Refused,
) -> Result<(), Failure> {
    if !shared.declare {
        return Ok(());
    }
    let extra = lock(extra).clone();
    topology::declare_exchange(&session.channel, &shared.config).await?;
    let plan = topology::plan(
        &shared.config,
        &shared.dispatcher.snapshot(),
        &shared.event_types(),
        &extra,
    );
    for (group, bindings) in plan {
        match declare_group_alone(session, shared, &group, &bindings).await {
            Ok(()) => {
                lock(refused).remove(&group);
            }
            Err(failure) => {
                if let Some(failure) = refuse(refused, &group, failure) {
                    return Err(failure);
                }
            }
        }
    }
    Ok(())
}

/// Declares the refused `group` again in the background, with backoff
/// (`reconnect_delay` doubling up to `max_reconnect_delay`), until the broker
/// accepts it; then, with `consume`, starts its consumer. Ends when the
/// session breaks (its next setup starts over) or consuming stops.
fn redeclare_refused(
    session: Arc<Session>,
    shared: Arc<BusContext>,
    extra: ExtraBindings,
    refused: Refused,
    group: String,
    consume: Option<(Arc<consume::ConsumeRun>, String)>,
) {
    tokio::spawn(async move {
        let config = &shared.config;
        let stop = consume
            .as_ref()
            .map_or_else(CancellationToken::new, |(ctx, _)| ctx.stop.clone());
        let mut delay = config.reconnect_delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = session.broken.cancelled() => return,
                () = stop.cancelled() => return,
            }
            if !session.connection.status().connected() {
                return;
            }
            delay = (delay * 2).min(config.max_reconnect_delay);
            let bindings = topology::group_bindings(
                config,
                &shared.dispatcher.snapshot(),
                &shared.event_types(),
                &lock(&extra).clone(),
                &group,
            );
            let attempt = async {
                if shared.declare {
                    declare_group_alone(&session, &shared, &group, &bindings).await?;
                }
                if let Some((ctx, tag)) = &consume {
                    consume::start_group(
                        session.clone(),
                        ctx.clone(),
                        group.as_str().into(),
                        tag.clone(),
                    )
                    .await
                    .map_err(|f| errors::of_group(f, &group))?;
                }
                Ok::<_, Failure>(())
            };
            match tokio::time::timeout(config.connect_timeout, attempt).await {
                Ok(Ok(())) => {
                    lock(&refused).remove(&group);
                    tracing::info!(%group, consuming = consume.is_some(), "the broker accepts the group now; declared");
                    return;
                }
                Ok(Err(failure)) => {
                    if let Some(failure) = refuse(&refused, &group, failure) {
                        tracing::warn!(%group, error = ?failure, "declaring the refused group again failed; retrying");
                    }
                }
                Err(_) => {
                    tracing::warn!(%group, timeout = ?config.connect_timeout, "declaring the refused group again timed out; retrying");
                }
            }
        }
    });
}

impl RabbitTransport {
    /// Declares `group`'s queue with a binding for `routing_key`, on the
    /// publisher's session, within `confirm_timeout`.
    async fn declare_binding(&self, group: &str, routing_key: &str) -> Result<(), Error> {
        let shared = &self.ctx;
        let timeout = shared.config.confirm_timeout;
        let session = self.publisher.link.wait_up(timeout).await?;
        let binding = topology::binding_for_key(&shared.config, routing_key);
        let context = format!("binding `{routing_key}` for group `{group}`");
        session
            .bounded(&context, timeout, async {
                topology::declare_group(&session.channel, &shared.config, group, &[binding])
                    .await
                    .map_err(|f| match f {
                        Failure::Fatal(e) => e,
                        Failure::Retry(reason) => Error::Broker {
                            context: context.clone(),
                            reason,
                        },
                    })
            })
            .await
    }

    /// Connects the publisher (retrying an unreachable broker for
    /// `connect_timeout`), enables confirms and declares the topology.
    pub(crate) async fn connect(shared: &Arc<BusContext>) -> Result<Self, Error> {
        let extra: ExtraBindings = Arc::default();
        let publisher_refused: Refused = Arc::default();
        let setup: Setup = {
            let shared = shared.clone();
            let extra = extra.clone();
            let refused = publisher_refused.clone();
            Arc::new(move |session: Arc<Session>| {
                let shared = shared.clone();
                let extra = extra.clone();
                let refused = refused.clone();
                Box::pin(async move {
                    session
                        .channel
                        .confirm_select(lapin::options::ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| Failure::Retry(errors::scrub(&e.to_string())))?;
                    declare_topology(&session, &shared, &extra, &refused).await?;
                    let groups: Vec<String> = lock(&refused).keys().cloned().collect();
                    for group in groups {
                        redeclare_refused(
                            session.clone(),
                            shared.clone(),
                            extra.clone(),
                            refused.clone(),
                            group,
                            None,
                        );
                    }
                    Ok(())
                })
            })
        };
        let link = Link::start("publisher", shared.clone(), setup);
        if let Err(error) = link.wait_up(shared.config.connect_timeout).await {
            // Not left retrying in the background: nothing could stop it.
            link.close().await;
            return Err(error);
        }
        let transport = Self {
            ctx: shared.clone(),
            publisher: Arc::new(Publisher::new(link, shared.config.publish_confirm_window)),
            consuming: Arc::default(),
            deliveries: TaskTracker::new(),
            states: ConsumerStates::default(),
            extra,
            publisher_refused,
            consumer_refused: Arc::default(),
            consumer_tag: shared
                .config
                .consumer_name
                .clone()
                .unwrap_or_else(default_consumer_name),
            watcher: CancellationToken::new(),
        };
        transport.watch_subscriptions(shared.clone());
        Ok(transport)
    }

    /// Keeps bindings (and consumers) in step with runtime subscriptions.
    fn watch_subscriptions(&self, shared: Arc<BusContext>) {
        let mut changes = shared.dispatcher.changes();
        let publisher = self.publisher.link.clone();
        let extra = self.extra.clone();
        let refused = self.publisher_refused.clone();
        let stop = self.watcher.clone();
        let consuming = self.consuming.clone();
        let consumer_groups = {
            let states = self.states.clone();
            move || lock(&states).keys().cloned().collect::<BTreeSet<_>>()
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = stop.cancelled() => break,
                }
                // A link that is down declares the whole topology when it
                // comes back up.
                if let LinkState::Up(session) = publisher.state() {
                    let timeout = shared.config.confirm_timeout;
                    match tokio::time::timeout(
                        timeout,
                        declare_topology(&session, &shared, &extra, &refused),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = ?e, "cannot update bindings after a subscription change");
                        }
                        Err(_) => {
                            let error = session.timed_out(
                                "updating bindings after a subscription change",
                                timeout,
                            );
                            tracing::error!(%error, "cannot update bindings after a subscription change");
                        }
                    }
                }
                // Under the lock `start_consuming` holds until its consumers
                // are up: a group subscribed while they start is either in
                // the snapshot they started from or missing from `running`.
                let consuming = consuming.lock().await;
                let Some(c) = consuming.as_ref() else {
                    continue;
                };
                let running = consumer_groups();
                let wanted: BTreeSet<String> = shared
                    .dispatcher
                    .snapshot()
                    .groups
                    .keys()
                    .map(|g| shared.config.group_queue_name(g))
                    .collect();
                if !wanted.is_subset(&running) {
                    tracing::info!("new consumer group subscribed; restarting consumers");
                    // The consumer link's next session consumes every group.
                    if let LinkState::Up(session) = c.link.state() {
                        session.fail("consumer groups changed");
                    }
                }
            }
        });
    }

    /// The groups the broker refuses this user (consumer side first), each
    /// with its [`Error::AccessRefused`].
    fn refused(&self) -> Vec<(String, Error)> {
        let mut out: BTreeMap<String, Error> = BTreeMap::new();
        for refused in [&self.publisher_refused, &self.consumer_refused] {
            for (group, refusal) in lock(refused).iter() {
                out.insert(group.clone(), refusal.error(group));
            }
        }
        out.into_iter().collect()
    }

    /// A fresh channel on the publisher connection, for one-off operations whose
    /// failure (a passive declare of a missing queue) must not close a shared one.
    pub(crate) async fn side_channel(&self) -> Result<lapin::Channel, Error> {
        let timeout = self.ctx.config.confirm_timeout;
        let session = self.publisher.link.wait_up(timeout).await?;
        session
            .bounded("opening a channel", timeout, async {
                session
                    .connection
                    .create_channel()
                    .await
                    .map_err(|e| broker("opening a channel", &e))
            })
            .await
    }

    /// Message and consumer counts of queue `queue`, which must exist.
    pub(crate) async fn queue_state(&self, queue: &str) -> Result<QueueInfo, Error> {
        let channel = self.side_channel().await?;
        let timeout = self.ctx.config.confirm_timeout;
        let context = format!("reading queue `{queue}` (does it exist?)");
        let declared = tokio::time::timeout(
            timeout,
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        let _ = tokio::time::timeout(timeout, channel.close(200, "done".into())).await;
        let q = match declared {
            Ok(declared) => declared.map_err(|e| broker(context, &e))?,
            Err(_) => {
                return Err(match self.publisher.link.state() {
                    LinkState::Up(session) => session.timed_out(&context, timeout),
                    _ => Error::Broker {
                        context,
                        reason: format!("no answer within {timeout:?}"),
                    },
                });
            }
        };
        Ok(QueueInfo {
            name: queue.to_owned(),
            message_count: q.message_count(),
            consumer_count: q.consumer_count(),
        })
    }
}

impl Transport for RabbitTransport {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn describe_group(&self, group: &str) -> String {
        let extra = lock(&self.extra).clone();
        let bindings = topology::group_bindings(
            &self.ctx.config,
            &self.ctx.dispatcher.snapshot(),
            &self.ctx.event_types(),
            &extra,
            group,
        );
        let keys: Vec<String> = bindings.iter().map(topology::Binding::describe).collect();
        format!(
            "queue {} bound to [{}]",
            self.ctx.config.group_queue_name(group),
            keys.join(", ")
        )
    }

    async fn publish(&self, events: &[AnyEnvelope]) -> Result<usize, Error> {
        self.publisher.publish_events(&self.ctx, events).await
    }

    async fn start_consuming(&self) -> Result<(), Error> {
        let shared = &self.ctx;
        let mut consuming = self.consuming.lock().await;
        if consuming.is_some() {
            return Ok(());
        }
        let stop = CancellationToken::new();
        let ctx = Arc::new(consume::ConsumeRun {
            shared: shared.clone(),
            stop: stop.clone(),
            deliveries: self.deliveries.clone(),
            states: self.states.clone(),
            publisher: self.publisher.clone(),
        });
        let refused = self.consumer_refused.clone();
        let setup: Setup = {
            let extra = self.extra.clone();
            let base_tag = self.consumer_tag.clone();
            let refused = refused.clone();
            Arc::new(move |session: Arc<Session>| {
                let ctx = ctx.clone();
                let extra = extra.clone();
                let base_tag = base_tag.clone();
                let refused = refused.clone();
                Box::pin(async move {
                    let shared = &ctx.shared;
                    declare_topology(&session, shared, &extra, &refused).await?;
                    let groups: Vec<Arc<str>> = shared
                        .dispatcher
                        .snapshot()
                        .groups
                        .keys()
                        .cloned()
                        .collect();
                    for group in groups {
                        let tag = if *group == *shared.config.consumer_group {
                            base_tag.clone()
                        } else {
                            format!("{base_tag}.{group}")
                        };
                        // A group refused by the broker waits in the
                        // background; the others consume.
                        let declared = !lock(&refused).contains_key(&*group);
                        if declared {
                            match consume::start_group(
                                session.clone(),
                                ctx.clone(),
                                group.clone(),
                                tag.clone(),
                            )
                            .await
                            {
                                Ok(()) => continue,
                                Err(failure) => {
                                    if let Some(failure) = refuse(&refused, &group, failure) {
                                        return Err(failure);
                                    }
                                }
                            }
                        }
                        consume::set_state(
                            &ctx.states,
                            &shared.config.group_queue_name(&group),
                            false,
                        );
                        redeclare_refused(
                            session.clone(),
                            shared.clone(),
                            extra.clone(),
                            refused.clone(),
                            group.to_string(),
                            Some((ctx.clone(), tag)),
                        );
                    }
                    Ok(())
                })
            })
        };
        let link = Link::start("consumer", shared.clone(), setup);
        if let Err(error) = link.wait_up(shared.config.connect_timeout).await {
            // Not left consuming in the background once a broker answers:
            // stop_consuming could not reach it, and a second start would
            // make a second consumer.
            stop.cancel();
            link.close().await;
            return Err(error);
        }
        // Consuming goes on with the groups the broker accepts; when it
        // refuses every one, there is nothing to consume.
        let groups: Vec<String> = shared
            .dispatcher
            .snapshot()
            .groups
            .keys()
            .map(ToString::to_string)
            .collect();
        let all_refused = {
            let refused = lock(&refused);
            groups
                .first()
                .and_then(|g| refused.get(g).map(|r| r.error(g)))
                .filter(|_| groups.iter().all(|g| refused.contains_key(g)))
        };
        if let Some(error) = all_refused {
            stop.cancel();
            link.close().await;
            return Err(error);
        }
        *consuming = Some(Consuming { link, stop });
        Ok(())
    }

    async fn stop_consuming(&self, drain: Duration) -> Result<(), Error> {
        let Some(consuming) = self.consuming.lock().await.take() else {
            return Ok(());
        };
        consuming.stop.cancel();
        // In-flight handlers finish and ack before the channel closes, within
        // the shutdown timeout; what is still unacked then goes back to the
        // queue when the connection closes.
        self.deliveries.close();
        let deadline = crate::runtime::deadline(drain);
        let drained = tokio::time::timeout_at(deadline, self.deliveries.wait()).await;
        let pending = self.deliveries.len();
        if drained.is_err() {
            tracing::warn!(
                pending,
                timeout = ?drain,
                "handlers still running at the shutdown timeout; closing the consumer connection (the broker redelivers what was not acked)"
            );
        }
        self.deliveries.reopen();
        // A broker that stopped answering never sends the close-ok: past
        // the deadline the close goes on in the background.
        let link = consuming.link.clone();
        let closing = tokio::spawn(async move { link.close().await });
        let _ = tokio::time::timeout_at(deadline, closing).await;
        match drained {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::ShutdownTimeout {
                timeout: drain,
                pending,
            }),
        }
    }

    async fn close(&self) -> Result<(), Error> {
        self.stop_consuming(self.ctx.config.shutdown_timeout)
            .await?;
        self.watcher.cancel();
        self.publisher.link.close().await;
        Ok(())
    }

    async fn health(&self) -> HealthStatus {
        let describe = |state: &LinkState, role: &str| match state {
            LinkState::Up(s) if !s.broken.is_cancelled() && s.connection.status().connected() => {
                None
            }
            LinkState::Up(_) | LinkState::Connecting(None) => {
                Some(format!("{role} connection is reconnecting"))
            }
            LinkState::Connecting(Some(e)) => {
                Some(format!("{role} connection is reconnecting: {e}"))
            }
            LinkState::Failed(e) => Some(format!("{role} connection failed: {e}")),
            LinkState::Closed => Some(format!("{role} connection is closed")),
        };
        let mut errors: Vec<String> = describe(&self.publisher.link.state(), "publisher")
            .into_iter()
            .collect();
        let consuming = self.consuming.lock().await;
        let consumer_up = match &*consuming {
            Some(c) => {
                let problem = describe(&c.link.state(), "consumer");
                let up = problem.is_none();
                errors.extend(problem);
                up
            }
            None => false,
        };
        let mut consumers = lock(&self.states).clone();
        for (group, error) in self.refused() {
            consumers.insert(self.ctx.config.group_queue_name(&group), false);
            errors.push(error.to_string());
        }
        let connected = matches!(self.publisher.link.state(), LinkState::Up(ref s) if !s.broken.is_cancelled() && s.connection.status().connected());
        HealthStatus {
            healthy: errors.is_empty(),
            transport: "rabbitmq",
            connected,
            consuming: consumer_up && consumers.values().all(|a| *a),
            consumers,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        }
    }

    async fn bind(&self, group: &str, routing_key: &str) -> Result<(), Error> {
        // Remembered first, so a reconnect in the middle declares it too, and
        // forgotten if it fails: a binding the broker refused (a conflicting
        // queue) would fail every later reconnect's declare, for good.
        let entry = (group.to_owned(), routing_key.to_owned());
        lock(&self.extra).push(entry.clone());
        let bound = self.declare_binding(group, routing_key).await;
        if bound.is_err() {
            let mut extra = lock(&self.extra);
            if let Some(at) = extra.iter().rposition(|e| *e == entry) {
                extra.remove(at);
            }
        }
        bound
    }

    async fn queue_info(&self, group: &str) -> Result<QueueInfo, Error> {
        if let Some((_, error)) = self.refused().into_iter().find(|(g, _)| g == group) {
            return Err(error);
        }
        self.queue_state(&self.ctx.config.group_queue_name(group))
            .await
    }

    async fn dlq_count(&self, group: &str) -> Result<u32, Error> {
        Ok(self
            .queue_state(&self.ctx.config.group_dlq_queue_name(group))
            .await?
            .message_count)
    }

    async fn dlq_list(&self, group: &str, limit: usize) -> Result<Vec<DlqMessage>, Error> {
        self.dlq_list_queue(&self.ctx.config.group_dlq_queue_name(group), limit)
            .await
    }

    async fn dlq_show(&self, group: &str, id: &str) -> Result<Option<DlqMessage>, Error> {
        self.dlq_show_queue(&self.ctx.config.group_dlq_queue_name(group), id)
            .await
    }

    async fn dlq_replay(&self, group: &str, which: Replay<'_>) -> Result<ReplayReport, Error> {
        let config = &self.ctx.config;
        let (id, filter) = match which {
            Replay::One(id) => (Some(id), ReplayFilter::all()),
            Replay::Matching(filter) => (None, filter.clone()),
        };
        self.dlq_replay_queue(
            &config.group_dlq_queue_name(group),
            &config.group_queue_name(group),
            id,
            &filter,
        )
        .await
    }

    async fn dlq_purge(&self, group: &str) -> Result<u32, Error> {
        self.dlq_purge_queue(&self.ctx.config.group_dlq_queue_name(group))
            .await
    }
}
