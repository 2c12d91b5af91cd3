//! The Redis Streams transport (the `redis` crate: tokio, streams, connection
//! manager), wire-compatible with eventsource-py's `RedisEventBus`.
//!
//! Every event is one `XADD` to `{stream_prefix}:stream` with eventsource-py's
//! fields; every consumer group of the bus is a Redis consumer group of that
//! stream (created at `0`, as eventsource-py does, so a new group reads the
//! history). See [`consume`] for delivery, [`retry`] for the failure policy,
//! [`dlq`] for the DLQ tooling.

mod conn;
mod consume;
mod dlq;
mod entry;
mod retry;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::runtime::{
    BusContext, DlqMessage, HealthStatus, QueueInfo, ReplayFilter, ReplayReport, StreamGroupInfo,
    StreamInfo, StreamState,
};
use crate::stats::add;
use crate::transport::{Replay, Transport};
use crate::wire;

use conn::{broker, is_connection_error};
use consume::{ConsumerStates, Group, Run};
use entry::{int, pairs, text};

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

struct Consuming {
    run: Arc<Run>,
    groups: Arc<tokio::sync::Mutex<BTreeMap<Arc<str>, Arc<Group>>>>,
    watcher: CancellationToken,
}

/// A connection to Redis (publishing and short commands), plus one blocking
/// reader connection per consumer group while consuming.
pub(crate) struct RedisTransport {
    ctx: Arc<BusContext>,
    client: redis::Client,
    ops: ConnectionManager,
    consumer: String,
    consuming: tokio::sync::Mutex<Option<Consuming>>,
    states: ConsumerStates,
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTransport")
            .field("stream", &self.ctx.config.stream_name())
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl RedisTransport {
    /// Connects (retrying an unreachable server for `connect_timeout`) and
    /// creates the consumer group of every registered group.
    pub(crate) async fn connect(ctx: &Arc<BusContext>) -> Result<Self, Error> {
        let config = &ctx.config;
        let client = conn::client(config)?;
        let mut ops = conn::connect(&client, config, config.socket_timeout).await?;
        ctx.stats.connected_at.now();
        if ctx.declare {
            let groups: Vec<Arc<str>> = ctx.dispatcher.snapshot().groups.keys().cloned().collect();
            for group in groups {
                conn::create_group(&mut ops, &config.url, &config.stream_name(), &group).await?;
            }
        }
        Ok(Self {
            ctx: ctx.clone(),
            client,
            ops,
            consumer: config
                .consumer_name
                .clone()
                .unwrap_or_else(default_consumer_name),
            consuming: tokio::sync::Mutex::default(),
            states: ConsumerStates::default(),
        })
    }

    fn trim_args(&self) -> Vec<String> {
        let config = &self.ctx.config;
        if let Some(age) = config.stream_max_age {
            let cutoff = chrono::Utc::now().timestamp_millis()
                - i64::try_from(age.as_millis()).unwrap_or(i64::MAX / 2);
            vec!["MINID".into(), "~".into(), cutoff.max(0).to_string()]
        } else if let Some(max) = config.stream_maxlen {
            vec!["MAXLEN".into(), "~".into(), max.to_string()]
        } else {
            Vec::new()
        }
    }

    /// One pass of recovery in every consuming group.
    async fn recover_now(&self) -> Result<usize, Error> {
        let guard = self.consuming.lock().await;
        let Some(consuming) = guard.as_ref() else {
            return Err(Error::NotConnected(
                "not consuming: call start_consuming before recover_pending".to_owned(),
            ));
        };
        let groups: Vec<Arc<Group>> = consuming.groups.lock().await.values().cloned().collect();
        drop(guard);
        let mut taken = 0;
        for group in groups {
            taken += consume::recover(&group, self.ctx.config.pending_idle_ms, None).await?;
        }
        Ok(taken)
    }

    async fn group_info(&self) -> Result<Vec<StreamGroupInfo>, Error> {
        let config = &self.ctx.config;
        let stream = config.stream_name();
        let mut ops = self.ops.clone();
        let reply: Result<Value, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut ops)
            .await;
        let reply = match reply {
            Ok(v) => v,
            Err(e) if e.to_string().contains("no such key") => return Ok(Vec::new()),
            Err(e) => {
                return Err(broker(
                    &config.url,
                    format!("reading the groups of `{stream}`"),
                    &e,
                ));
            }
        };
        let Value::Array(groups) = reply else {
            return Ok(Vec::new());
        };
        Ok(groups
            .iter()
            .map(|g| {
                let fields: BTreeMap<String, &Value> = pairs(g)
                    .into_iter()
                    .filter_map(|(k, v)| Some((text(k)?, v)))
                    .collect();
                let num = |k: &str| {
                    fields
                        .get(k)
                        .and_then(|v| int(v))
                        .and_then(|n| u64::try_from(n).ok())
                };
                StreamGroupInfo {
                    name: fields.get("name").and_then(|v| text(v)).unwrap_or_default(),
                    consumers: num("consumers").unwrap_or(0),
                    pending: num("pending").unwrap_or(0),
                    lag: num("lag"),
                }
            })
            .collect())
    }

    /// The stream, its groups, pending and DLQ counts, as eventsource-py's
    /// `get_stream_info()`.
    pub(crate) async fn redis_stream_info(&self) -> Result<StreamInfo, Error> {
        let config = &self.ctx.config;
        let stream = config.stream_name();
        let mut ops = self.ops.clone();
        let (length, first, last, dlq): (u64, Value, Value, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("XLEN")
            .arg(config.dlq_stream_name())
            .query_async(&mut ops)
            .await
            .map_err(|e| broker(&config.url, format!("reading `{stream}`"), &e))?;
        let id = |v: Value| entry::entries(v).into_iter().next().map(|e| e.id);
        let groups = self.group_info().await?;
        Ok(StreamInfo {
            connected: true,
            stream: StreamState {
                name: stream,
                length,
                first_entry_id: id(first),
                last_entry_id: id(last),
            },
            pending_messages: groups.iter().map(|g| g.pending).sum(),
            active_consumers: groups.iter().map(|g| g.consumers).sum(),
            consumer_groups: groups,
            dlq_messages: dlq,
            stats: self.ctx.stats.snapshot(),
        })
    }
}

impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, events: &[AnyEnvelope]) -> Result<usize, Error> {
        if events.is_empty() {
            return Ok(0);
        }
        let config = &self.ctx.config;
        let stream = config.stream_name();
        let trim = self.trim_args();
        // One pipeline, not a transaction (eventsource-py's batch).
        let mut pipe = redis::pipe();
        let trace = wire::publish_trace(config.enable_tracing);
        for event in events {
            let body = wire::encode_body_for_publish(event)?;
            pipe.cmd("XADD").arg(&stream).arg(&trim).arg("*");
            for (k, v) in wire::stream_fields(event.meta(), &body) {
                pipe.arg(k).arg(&*v);
            }
            // eventsource-py's entries have no trace context: W3C trace
            // headers travel as extra fields (its consumer ignores them).
            for (k, v) in wire::trace::fields(&trace) {
                pipe.arg(k).arg(v);
            }
        }
        let deadline = crate::runtime::deadline(config.confirm_timeout);
        let mut delay = config.reconnect_delay;
        let mut ops = self.ops.clone();
        loop {
            match pipe.query_async::<Vec<String>>(&mut ops).await {
                Ok(ids) => {
                    add(&self.ctx.stats.events_published, ids.len() as u64);
                    self.ctx.stats.last_publish_at.now();
                    return Ok(ids.len());
                }
                // The connection manager reconnects; try again until confirm_timeout.
                Err(e) if is_connection_error(&e) && crate::runtime::deadline(delay) < deadline => {
                    tracing::warn!(error = %conn::scrub(&config.url, &e), "publish failed; retrying after reconnecting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(config.max_reconnect_delay);
                }
                Err(e) => {
                    self.ctx.stats.last_error_at.now();
                    return Err(if is_connection_error(&e) {
                        Error::NotConnected(format!(
                            "publishing to `{stream}`: {}",
                            conn::scrub(&config.url, &e)
                        ))
                    } else {
                        broker(&config.url, format!("publishing to `{stream}`"), &e)
                    });
                }
            }
        }
    }

    async fn start_consuming(&self) -> Result<(), Error> {
        let mut consuming = self.consuming.lock().await;
        if consuming.is_some() {
            return Ok(());
        }
        let run = Arc::new(Run {
            ctx: self.ctx.clone(),
            ops: self.ops.clone(),
            client: self.client.clone(),
            consumer: self.consumer.clone(),
            stop: CancellationToken::new(),
            workers: TaskTracker::new(),
            deliveries: TaskTracker::new(),
            states: self.states.clone(),
        });
        let groups: Arc<tokio::sync::Mutex<BTreeMap<Arc<str>, Arc<Group>>>> = Arc::default();
        // Watched from before the snapshot: a subscription made meanwhile is seen.
        let mut changes = self.ctx.dispatcher.changes();
        changes.mark_unchanged();
        let names: Vec<Arc<str>> = self
            .ctx
            .dispatcher
            .snapshot()
            .groups
            .keys()
            .cloned()
            .collect();
        for name in names {
            match Group::start(run.clone(), name.clone()).await {
                Ok(group) => {
                    groups.lock().await.insert(name, group);
                }
                Err(e) => {
                    run.stop.cancel();
                    return Err(e);
                }
            }
        }
        let watcher = CancellationToken::new();
        let (r, rs) = (run.clone(), run.clone());
        super::watch_new_groups(
            changes,
            self.ctx.clone(),
            groups.clone(),
            watcher.clone(),
            move || rs.stop.is_cancelled(),
            move |name| Group::start(r.clone(), name),
        );
        *consuming = Some(Consuming {
            run,
            groups,
            watcher,
        });
        Ok(())
    }

    async fn stop_consuming(&self, drain: Duration) -> Result<(), Error> {
        let deadline = crate::runtime::deadline(drain);
        let Some(consuming) = self.consuming.lock().await.take() else {
            return Ok(());
        };
        consuming.watcher.cancel();
        let run = &consuming.run;
        run.stop.cancel();
        let drained = tokio::time::timeout_at(deadline, async {
            let groups: Vec<Arc<Group>> = consuming.groups.lock().await.values().cloned().collect();
            for group in &groups {
                group.unblock().await;
            }
            run.workers.close();
            run.workers.wait().await;
            // In-flight handlers finish; their acks are written before we return.
            run.deliveries.close();
            run.deliveries.wait().await;
            for group in &groups {
                group.flush().await;
            }
        })
        .await;
        match drained {
            Ok(()) => Ok(()),
            Err(_) => {
                // Entries not acked stay pending in their group: a live member
                // claims them after the claim idle time (or this one, restarted).
                let pending = run.deliveries.len();
                tracing::warn!(
                    pending,
                    timeout = ?drain,
                    "handlers still running at the shutdown timeout; their entries stay pending for the group to claim"
                );
                Err(Error::ShutdownTimeout {
                    timeout: drain,
                    pending,
                })
            }
        }
    }

    async fn close(&self) -> Result<(), Error> {
        self.stop_consuming(self.ctx.config.shutdown_timeout).await
    }

    async fn health(&self) -> HealthStatus {
        let config = &self.ctx.config;
        let mut ops = self.ops.clone();
        let ping = tokio::time::timeout(
            config.socket_timeout,
            redis::cmd("PING").query_async::<String>(&mut ops),
        )
        .await;
        let error = match ping {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("PING failed: {}", conn::scrub(&config.url, &e))),
            Err(_) => Some(format!(
                "no answer to PING within {:?}",
                config.socket_timeout
            )),
        };
        let consuming_now = self.consuming.lock().await.is_some();
        super::stream_health(
            "redis",
            error,
            consuming_now,
            super::states_now(&self.states),
            |g| format!("the reader of group `{g}` is reconnecting"),
        )
    }

    fn describe_group(&self, group: &str) -> String {
        let config = &self.ctx.config;
        format!(
            "consumer group {group} of stream {} (replays: {})",
            config.stream_name(),
            config.replay_stream_name(group)
        )
    }

    async fn queue_info(&self, group: &str) -> Result<QueueInfo, Error> {
        let stream = self.ctx.config.stream_name();
        let info = self
            .group_info()
            .await?
            .into_iter()
            .find(|g| g.name == group)
            .ok_or_else(|| Error::Broker {
                context: format!("reading consumer group `{group}`"),
                reason: format!("`{stream}` has no consumer group `{group}` (does it exist?)"),
            })?;
        Ok(QueueInfo {
            name: format!("{stream} (group {group})"),
            message_count: u32::try_from(info.lag.unwrap_or(0) + info.pending).unwrap_or(u32::MAX),
            consumer_count: u32::try_from(info.consumers).unwrap_or(u32::MAX),
        })
    }

    async fn dlq_count(&self, group: &str) -> Result<u32, Error> {
        self.redis_dlq_count(group).await
    }

    async fn dlq_list(&self, group: &str, limit: usize) -> Result<Vec<DlqMessage>, Error> {
        self.redis_dlq_list(group, limit).await
    }

    async fn dlq_show(&self, group: &str, id: &str) -> Result<Option<DlqMessage>, Error> {
        self.redis_dlq_show(group, id).await
    }

    async fn dlq_replay(&self, group: &str, which: Replay<'_>) -> Result<ReplayReport, Error> {
        match which {
            Replay::One(id) => {
                self.redis_dlq_replay(group, Some(id), &ReplayFilter::all())
                    .await
            }
            Replay::Matching(filter) => self.redis_dlq_replay(group, None, filter).await,
        }
    }

    async fn dlq_purge(&self, group: &str) -> Result<u32, Error> {
        self.redis_dlq_purge(group).await
    }

    async fn recover_pending(&self) -> Result<usize, Error> {
        self.recover_now().await
    }

    async fn stream_info(&self) -> Result<StreamInfo, Error> {
        self.redis_stream_info().await
    }
}

impl Drop for RedisTransport {
    fn drop(&mut self) {
        if let Ok(mut consuming) = self.consuming.try_lock()
            && let Some(c) = consuming.take()
        {
            c.watcher.cancel();
            c.run.stop.cancel();
        }
    }
}
