//! The Kafka transport (`rdkafka`, bundled librdkafka), wire-compatible with
//! eventsource-py's `KafkaEventBus` (see `WIRE-KAFKA.md`).
//!
//! Every event is one record on `{topic_prefix}.stream`: key = aggregate id
//! (librdkafka's `murmur2_random` partitioner: the partition aiokafka and the
//! Java client pick for the same key), value = the event JSON, eventsource-py's
//! headers. Every consumer group of the bus is a Kafka consumer group of that
//! topic and of its own retry topic `{topic}.retry.{group}`; see [`consume`]
//! for delivery, offsets and retries, [`dlq`] for the DLQ tooling.
//!
//! Topics are created (partitions and replication from the configuration)
//! when missing, instead of relying on broker auto-create. Production runs
//! Apache Kafka; the tests run Tansu, and nothing here is specific to it.

mod consume;
mod dlq;
mod offsets;
mod producer;
mod record;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::runtime::{
    BusContext, DlqMessage, HealthStatus, QueueInfo, ReplayFilter, ReplayReport, StreamGroupInfo,
    StreamInfo, StreamState,
};
use crate::stats::add;
use crate::transport::{Replay, Transport};
use crate::wire;

use consume::{Group, Run};
use producer::Producer;

/// The context of every client but the group consumers (which have their
/// own): librdkafka's errors through `tracing` at warn, and the end of a
/// partition, which a reader asks for, not at all. rdkafka's default sends
/// each to the `log` crate at error level, `PartitionEOF` included.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Logged;

impl ClientContext for Logged {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        tracing::warn!(%error, %reason, "Kafka client error");
    }
}

impl ConsumerContext for Logged {}

/// The bus's producer type.
pub(crate) type KafkaProducer = FutureProducer<Logged>;
/// A consumer for tooling: reads by assignment or looks up a group's offsets.
pub(crate) type ToolConsumer = BaseConsumer<Logged>;

/// `{hostname}-{8 hex}`, eventsource-py's default consumer name (its `client_id`).
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

/// The librdkafka settings every client of this bus shares: servers,
/// client id, TLS and SASL.
pub(crate) fn client_config(config: &Config, client_id: &str) -> Result<ClientConfig, Error> {
    let servers = config
        .url
        .kafka_bootstrap_servers()
        .ok_or_else(|| Error::Connect {
            url: config.url.redacted(),
            reason: "not a kafka:// URL".to_owned(),
        })?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers)
        .set("client.id", client_id)
        .set(
            "security.protocol",
            config.security_protocol.to_ascii_lowercase(),
        )
        .set(
            "socket.connection.setup.timeout.ms",
            config
                .socket_connect_timeout
                .as_millis()
                .max(1000)
                .to_string(),
        );
    if let Some(m) = &config.sasl_mechanism {
        c.set("sasl.mechanism", m);
    }
    if let Some(u) = &config.sasl_username {
        c.set("sasl.username", u);
    }
    if let Some(p) = &config.sasl_password {
        c.set("sasl.password", p.expose());
    }
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    if let Some(ca) = &config.ssl_cafile {
        c.set("ssl.ca.location", path(ca));
    }
    if let Some(cert) = &config.ssl_certfile {
        c.set("ssl.certificate.location", path(cert));
    }
    if let Some(key) = &config.ssl_keyfile {
        c.set("ssl.key.location", path(key));
    }
    if !config.ssl_check_hostname {
        c.set("ssl.endpoint.identification.algorithm", "none");
    }
    Ok(c)
}

/// A client error as ours, with what we were doing (no credentials: librdkafka
/// never prints `sasl.password`).
pub(crate) fn broker(context: impl Into<String>, e: &KafkaError) -> Error {
    Error::Broker {
        context: context.into(),
        reason: e.to_string(),
    }
}

/// Runs a blocking librdkafka call off the runtime, bounded by `timeout` (the
/// call is given the same bound; this is the backstop).
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::time::timeout(
        timeout + Duration::from_secs(1),
        tokio::task::spawn_blocking(f),
    )
    .await
    {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Error::Broker {
            context: what.to_owned(),
            reason: format!("the client call failed: {join}"),
        }),
        Err(_) => Err(Error::Broker {
            context: what.to_owned(),
            reason: format!("no answer within {timeout:?}"),
        }),
    }
}

struct Consuming {
    run: Arc<Run>,
    groups: Arc<tokio::sync::Mutex<BTreeMap<Arc<str>, Arc<Group>>>>,
    watcher: CancellationToken,
}

/// A producer (publishing, retries, DLQ copies) and, while consuming, one
/// consumer per group.
pub(crate) struct KafkaTransport {
    ctx: Arc<BusContext>,
    producer: Producer,
    consumer_name: String,
    consuming: tokio::sync::Mutex<Option<Consuming>>,
    states: consume::ConsumerStates,
}

impl fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("topic", &self.ctx.config.kafka_topic())
            .field("consumer", &self.consumer_name)
            .finish_non_exhaustive()
    }
}

impl KafkaTransport {
    /// Creates the producer, checks the cluster answers (within
    /// `connect_timeout`) and creates the topics of every registered group.
    pub(crate) async fn connect(ctx: &Arc<BusContext>) -> Result<Self, Error> {
        let config = &ctx.config;
        let consumer_name = config
            .consumer_name
            .clone()
            .unwrap_or_else(default_consumer_name);
        let confirm_ms = config
            .confirm_timeout
            .as_millis()
            .clamp(1, i32::MAX as u128);
        let mut settings = client_config(config, &consumer_name)?;
        settings
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("compression.type", &config.compression_type)
            .set("linger.ms", config.linger_ms.to_string())
            .set("batch.size", config.batch_size.to_string())
            .set("message.timeout.ms", confirm_ms.to_string())
            .set("queue.buffering.max.messages", "100000");
        let producer = Producer::new(settings, ctx.clone()).map_err(|e| Error::Connect {
            url: config.url.redacted(),
            reason: format!("invalid Kafka client settings: {e}"),
        })?;
        let probe = producer.get();
        let timeout = config.connect_timeout;
        blocking("connecting", timeout, move || {
            probe
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map(|_| ())
                .map_err(|e| broker("reading the cluster metadata", &e))
        })
        .await
        .map_err(|e| Error::Connect {
            url: config.url.redacted(),
            reason: e.to_string(),
        })?;
        ctx.stats.connected_at.now();
        let transport = Self {
            ctx: ctx.clone(),
            producer,
            consumer_name,
            consuming: tokio::sync::Mutex::default(),
            states: consume::ConsumerStates::default(),
        };
        if ctx.declare {
            let mut topics = vec![config.kafka_topic()];
            if config.enable_dlq {
                topics.push(config.kafka_dlq_topic());
            }
            for group in ctx.dispatcher.snapshot().groups.keys() {
                topics.push(config.kafka_retry_topic(group));
            }
            transport.create_topics(&topics).await?;
        }
        Ok(transport)
    }

    /// Creates `topics` that do not exist yet.
    pub(crate) async fn create_topics(&self, topics: &[String]) -> Result<(), Error> {
        create_topics(&self.ctx.config, &self.consumer_name, topics).await
    }

    /// The producer to use now.
    pub(crate) fn producer(&self) -> KafkaProducer {
        self.producer.get()
    }

    /// A consumer of no group (reading by assignment), or of `group`.
    pub(crate) fn plain_consumer(&self, group: Option<&str>) -> Result<ToolConsumer, Error> {
        let config = &self.ctx.config;
        let mut c = client_config(config, &self.consumer_name)?;
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        // librdkafka wants a group id even for assign(); never joined here.
        c.set("group.id", group.unwrap_or("eventbus-tooling"));
        c.create_with_context(Logged)
            .map_err(|e| broker("creating a Kafka consumer", &e))
    }

    /// A consumer of no group that reports the end of each partition.
    pub(crate) fn reader(&self) -> Result<ToolConsumer, Error> {
        let mut c = client_config(&self.ctx.config, &self.consumer_name)?;
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("group.id", "eventbus-tooling");
        c.create_with_context(Logged)
            .map_err(|e| broker("creating a Kafka consumer", &e))
    }

    /// Partitions of `topic` and their low and high watermarks.
    async fn watermarks(&self, topic: &str) -> Result<Vec<(i32, i64, i64)>, Error> {
        let consumer = self.plain_consumer(None)?;
        let topic = topic.to_owned();
        let t = self.ctx.config.socket_timeout;
        blocking(
            &format!("reading the partitions of `{topic}`"),
            t * 4,
            move || {
                let meta = consumer
                    .fetch_metadata(Some(&topic), Timeout::After(t))
                    .map_err(|e| broker(format!("reading the metadata of `{topic}`"), &e))?;
                let Some(m) = meta.topics().iter().find(|m| m.name() == topic) else {
                    return Ok(Vec::new());
                };
                if m.error().is_some() {
                    return Ok(Vec::new());
                }
                let mut out = Vec::new();
                for p in m.partitions() {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p.id(), Timeout::After(t))
                        .map_err(|e| broker(format!("reading the offsets of `{topic}`"), &e))?;
                    out.push((p.id(), low, high));
                }
                out.sort_unstable();
                Ok(out)
            },
        )
        .await
    }

    /// Records `group` has not committed yet, over `topic`'s partitions.
    async fn lag(&self, group: &str, topic: &str) -> Result<u64, Error> {
        let marks = self.watermarks(topic).await?;
        if marks.is_empty() {
            return Ok(0);
        }
        let consumer = self.plain_consumer(Some(group))?;
        let mut tpl = TopicPartitionList::new();
        for (p, _, _) in &marks {
            tpl.add_partition(topic, *p);
        }
        let t = self.ctx.config.socket_timeout;
        let committed = blocking(
            &format!("reading the offsets group `{group}` committed"),
            t,
            move || {
                consumer
                    .committed_offsets(tpl, Timeout::After(t))
                    .map_err(|e| broker("reading committed offsets", &e))
            },
        )
        .await?;
        let mut lag = 0u64;
        for (p, low, high) in marks {
            let done = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low);
            lag += u64::try_from(high - done.max(low)).unwrap_or(0);
        }
        Ok(lag)
    }

    /// The topic, its partitions and every group of this bus, as
    /// eventsource-py's `get_topic_info()`.
    pub(crate) async fn topic_info(&self) -> Result<StreamInfo, Error> {
        let config = &self.ctx.config;
        let topic = config.kafka_topic();
        let marks = self.watermarks(&topic).await?;
        let length: u64 = marks
            .iter()
            .map(|(_, low, high)| u64::try_from(high - low).unwrap_or(0))
            .sum();
        let groups: Vec<Arc<str>> = self
            .ctx
            .dispatcher
            .snapshot()
            .groups
            .keys()
            .cloned()
            .collect();
        let states = self.states_now();
        let mut infos = Vec::new();
        for g in groups {
            let lag = self.lag(&g, &topic).await?;
            infos.push(StreamGroupInfo {
                name: g.to_string(),
                consumers: u64::from(states.get(&*g).copied().unwrap_or(false)),
                pending: 0,
                lag: Some(lag),
            });
        }
        let dlq = if config.enable_dlq {
            self.watermarks(&config.kafka_dlq_topic())
                .await?
                .iter()
                .map(|(_, low, high)| u64::try_from(high - low).unwrap_or(0))
                .sum()
        } else {
            0
        };
        let describe = |ends: &[(i32, i64, i64)], low: bool| -> Option<String> {
            let parts: Vec<String> = ends
                .iter()
                .map(|(p, l, h)| format!("{p}:{}", if low { l } else { h }))
                .collect();
            (!parts.is_empty()).then(|| parts.join(","))
        };
        Ok(StreamInfo {
            connected: true,
            stream: StreamState {
                name: topic,
                length,
                first_entry_id: describe(&marks, true),
                last_entry_id: describe(&marks, false),
            },
            pending_messages: 0,
            active_consumers: infos.iter().map(|g| g.consumers).sum(),
            consumer_groups: infos,
            dlq_messages: dlq,
            stats: self.ctx.stats.snapshot(),
        })
    }

    fn states_now(&self) -> BTreeMap<String, bool> {
        super::states_now(&self.states)
    }
}

/// Creates the `topics` that do not exist yet, with the configured
/// partitions and replication (bounded by `socket_timeout`).
pub(crate) async fn create_topics(
    config: &Config,
    client_id: &str,
    topics: &[String],
) -> Result<(), Error> {
    let admin: AdminClient<Logged> = client_config(config, client_id)?
        .create_with_context(Logged)
        .map_err(|e| broker("creating the Kafka admin client", &e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                config.topic_partitions,
                TopicReplication::Fixed(config.topic_replication_factor),
            )
        })
        .collect();
    let timeout = config.socket_timeout.max(Duration::from_secs(5));
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = tokio::time::timeout(timeout * 2, admin.create_topics(&new, &options))
        .await
        .map_err(|_| Error::Broker {
            context: format!("creating topics {topics:?}"),
            reason: format!("no answer within {:?}", timeout * 2),
        })?
        .map_err(|e| broker(format!("creating topics {topics:?}"), &e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Broker {
                    context: format!("creating topic `{topic}`"),
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Produces `record` and waits for the broker's acknowledgement.
pub(crate) async fn produce(
    producer: &KafkaProducer,
    record: FutureRecord<'_, [u8], [u8]>,
    timeout: Duration,
) -> Result<(i32, i64), KafkaError> {
    // `send` retries a full local queue until the timeout, then awaits delivery.
    match producer.send(record, Timeout::After(timeout)).await {
        Ok(d) => Ok((d.partition, d.offset)),
        Err((e, _)) => Err(e),
    }
}

impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, events: &[AnyEnvelope]) -> Result<usize, Error> {
        if events.is_empty() {
            return Ok(0);
        }
        let config = &self.ctx.config;
        let topic = config.kafka_topic();
        let trace = wire::publish_trace(config.enable_tracing);
        let mut encoded = Vec::with_capacity(events.len());
        for event in events {
            let body = wire::encode_body_for_publish(event)?;
            let meta = event.meta();
            encoded.push((
                meta.event_id.to_string(),
                meta.aggregate_id.to_string(),
                body,
                record::owned_headers(&record::publish_headers(meta, &trace)),
            ));
        }
        let deadline = crate::runtime::deadline(config.confirm_timeout);
        let mut from = 0;
        let mut attempts = 0;
        loop {
            let producer = self.producer.get();
            attempts += 1;
            let sent = send(
                (&self.producer, &producer),
                &topic,
                &encoded[from..],
                deadline,
                &self.ctx,
            )
            .await;
            match sent {
                Ok(()) => break,
                // The producer stopped for good (fenced by the broker, say): the
                // records it did not confirm go once more through a new one.
                Err((error, confirmed))
                    if attempts == 1
                        && self.producer.replaced(&producer)
                        && tokio::time::Instant::now() < deadline =>
                {
                    from += confirmed;
                    tracing::warn!(%error, unconfirmed = encoded.len() - from, "the producer failed for good; sending the unconfirmed records again through a new one");
                }
                Err((error, _)) => return Err(error),
            }
        }
        self.ctx.stats.last_publish_at.now();
        Ok(events.len())
    }

    async fn start_consuming(&self) -> Result<(), Error> {
        let mut consuming = self.consuming.lock().await;
        if consuming.is_some() {
            return Ok(());
        }
        let run = Arc::new(Run::new(
            self.ctx.clone(),
            self.producer.clone(),
            self.consumer_name.clone(),
            self.states.clone(),
        ));
        let groups: Arc<tokio::sync::Mutex<BTreeMap<Arc<str>, Arc<Group>>>> = Arc::default();
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
        // Returns once every group has joined (bounded by connect_timeout).
        let started: Vec<Arc<Group>> = groups.lock().await.values().cloned().collect();
        let timeout = self.ctx.config.connect_timeout;
        futures_util::future::join_all(started.iter().map(|g| g.assigned(timeout))).await;
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
        let groups: Vec<Arc<Group>> = consuming.groups.lock().await.values().cloned().collect();
        // Handlers get the timeout less what the last commits may need (a
        // quarter of it, at most `socket_timeout`): handled records are
        // committed within the timeout even when a handler is stuck.
        let reserve = (drain / 4).min(self.ctx.config.socket_timeout);
        let handlers_by = deadline.checked_sub(reserve).unwrap_or(deadline);
        let drained = tokio::time::timeout_at(handlers_by, async {
            run.workers.close();
            run.workers.wait().await;
            run.deliveries.close();
            run.deliveries.wait().await;
        })
        .await;
        // Whatever is handled is committed, even when handlers are still
        // running: every group commits and leaves at once, by the deadline.
        // A broker that stopped answering would hold each close up to twice
        // `socket_timeout`: past the deadline they finish in the background
        // (what they could not commit, the group's next member reprocesses).
        // (Each close hands its commit to a thread of its own at once, which
        // goes on when this stops waiting.)
        let socket_timeout = self.ctx.config.socket_timeout;
        let closing =
            futures_util::future::join_all(groups.iter().map(|g| g.close(socket_timeout)));
        if tokio::time::timeout_at(deadline, closing).await.is_err() {
            tracing::warn!(
                timeout = ?drain,
                "the group consumers did not commit and leave their groups by the shutdown timeout; they go on in the background"
            );
        }
        match drained {
            Ok(()) => Ok(()),
            Err(_) => {
                let pending = run.deliveries.len();
                tracing::warn!(
                    pending,
                    timeout = ?drain,
                    "handlers still running at the shutdown timeout; their records stay uncommitted for the group's next member"
                );
                Err(Error::ShutdownTimeout {
                    timeout: drain,
                    pending,
                })
            }
        }
    }

    async fn close(&self) -> Result<(), Error> {
        let stopped = self.stop_consuming(self.ctx.config.shutdown_timeout).await;
        let producer = self.producer.get();
        let t = self.ctx.config.confirm_timeout;
        let _ = blocking("flushing the producer", t, move || {
            producer
                .flush(Timeout::After(t))
                .map_err(|e| broker("flushing the producer", &e))
        })
        .await;
        stopped
    }

    async fn health(&self) -> HealthStatus {
        let config = &self.ctx.config;
        let producer = self.producer.get();
        let t = config.socket_timeout;
        let probe = blocking("reading the cluster metadata", t, move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(t))
                .map(|m| m.brokers().len())
                .map_err(|e| broker("reading the cluster metadata", &e))
        })
        .await;
        let error = match probe {
            Ok(0) => Some("the cluster reports no broker".to_owned()),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        let consuming_now = self.consuming.lock().await.is_some();
        super::stream_health("kafka", error, consuming_now, self.states_now(), |g| {
            format!("the consumer of group `{g}` is not receiving")
        })
    }

    fn describe_group(&self, group: &str) -> String {
        let config = &self.ctx.config;
        format!(
            "consumer group {group} of topic {} (retries: {})",
            config.kafka_topic(),
            config.kafka_retry_topic(group)
        )
    }

    async fn queue_info(&self, group: &str) -> Result<QueueInfo, Error> {
        let topic = self.ctx.config.kafka_topic();
        let lag = self.lag(group, &topic).await?;
        let active = self.states_now().get(group).copied().unwrap_or(false);
        Ok(QueueInfo {
            name: format!("{topic} (group {group})"),
            message_count: u32::try_from(lag).unwrap_or(u32::MAX),
            consumer_count: u32::from(active),
        })
    }

    async fn dlq_count(&self, group: &str) -> Result<u32, Error> {
        let n = self.kafka_dlq_scan(group, usize::MAX).await?.len();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn dlq_list(&self, group: &str, limit: usize) -> Result<Vec<DlqMessage>, Error> {
        Ok(self
            .kafka_dlq_scan(group, limit)
            .await?
            .iter()
            .map(dlq::to_message)
            .collect())
    }

    async fn dlq_show(&self, group: &str, id: &str) -> Result<Option<DlqMessage>, Error> {
        Ok(self
            .kafka_dlq_scan(group, usize::MAX)
            .await?
            .iter()
            .find(|r| r.header(wire::FIELD_EVENT_ID) == Some(id))
            .map(dlq::to_message))
    }

    async fn dlq_replay(&self, group: &str, which: Replay<'_>) -> Result<ReplayReport, Error> {
        match which {
            Replay::One(id) => {
                self.kafka_dlq_replay(group, Some(id), &ReplayFilter::all())
                    .await
            }
            Replay::Matching(filter) => self.kafka_dlq_replay(group, None, filter).await,
        }
    }

    async fn dlq_purge(&self, group: &str) -> Result<u32, Error> {
        self.kafka_dlq_purge(group).await
    }

    async fn stream_info(&self) -> Result<StreamInfo, Error> {
        self.topic_info().await
    }
}

/// One encoded event: its id, the record key, value and headers.
type Encoded = (String, String, Vec<u8>, rdkafka::message::OwnedHeaders);

/// Sends `records` through `producer` and awaits the broker's
/// acknowledgement of each, by `deadline`. On failure, also how many of
/// them (a prefix) the broker acknowledged.
async fn send(
    (handle, producer): (&Producer, &KafkaProducer),
    topic: &str,
    records: &[Encoded],
    deadline: tokio::time::Instant,
    ctx: &BusContext,
) -> Result<(), (Error, usize)> {
    let mut pending = std::collections::VecDeque::with_capacity(records.len());
    let mut confirmed = 0;
    for (event_id, key, body, headers) in records {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .key(key.as_bytes())
            .payload(body)
            .headers(headers.clone());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back((event_id, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: wait for the oldest delivery to free room.
                    record = back;
                    let Some((id, oldest)) = pending.pop_front() else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    settle((handle, producer), oldest, id, deadline, topic, ctx)
                        .await
                        .map_err(|e| (e, confirmed))?;
                    confirmed += 1;
                }
                Err((e, _)) => {
                    ctx.stats.last_error_at.now();
                    handle.failed(producer, &e);
                    return Err((broker(format!("publishing to `{topic}`"), &e), confirmed));
                }
            }
        }
    }
    while let Some((id, d)) = pending.pop_front() {
        settle((handle, producer), d, id, deadline, topic, ctx)
            .await
            .map_err(|e| (e, confirmed))?;
        confirmed += 1;
    }
    Ok(())
}

/// Awaits one delivery report, by `deadline`.
async fn settle(
    (handle, producer): (&Producer, &KafkaProducer),
    delivery: rdkafka::producer::DeliveryFuture,
    event_id: &str,
    deadline: tokio::time::Instant,
    topic: &str,
    ctx: &BusContext,
) -> Result<(), Error> {
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    match tokio::time::timeout_at(deadline, delivery).await {
        Ok(Ok(Ok(_))) => {
            add(&ctx.stats.events_published, 1);
            Ok(())
        }
        Ok(Ok(Err((e, _)))) => {
            ctx.stats.last_error_at.now();
            handle.failed(producer, &e);
            Err(match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => {
                    Error::ConfirmTimeout {
                        event_id: event_id.to_owned(),
                        timeout,
                    }
                }
                e => broker(format!("publishing to `{topic}`"), &e),
            })
        }
        Ok(Err(_)) => Err(Error::NotConnected(format!(
            "the producer of `{topic}` was closed before the broker confirmed"
        ))),
        Err(_) => {
            ctx.stats.last_error_at.now();
            Err(Error::ConfirmTimeout {
                event_id: event_id.to_owned(),
                timeout,
            })
        }
    }
}

impl Drop for KafkaTransport {
    fn drop(&mut self) {
        if let Ok(mut consuming) = self.consuming.try_lock()
            && let Some(c) = consuming.take()
        {
            c.watcher.cancel();
            c.run.stop.cancel();
        }
    }
}
