//! Configuration: the fields of eventsource-py's `RabbitMQEventBusConfig`, their
//! defaults, and `EVENTBUS_*` environment variables.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

/// The broker URL used when `EVENTBUS_URL` is unset (eventsource-py's default).
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672/";

/// A broker URL whose password never leaves it: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    raw: String,
    kind: UrlKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlKind {
    Memory,
    Amqp,
    Amqps,
    Redis,
    Rediss,
    Kafka,
}

impl BrokerUrl {
    /// Parses `memory://`, `amqp://...`, `amqps://...`, `redis://...`, `rediss://...`
    /// or `kafka://host:port[,host:port...]`.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        Self::parse_named(raw, "the broker URL")
    }

    pub(crate) fn parse_named(raw: &str, name: &str) -> Result<Self, ConfigError> {
        let raw = raw.trim();
        let invalid = |reason: String| ConfigError::InvalidUrl {
            name: name.to_owned(),
            url: redact_url(raw),
            reason,
        };
        let (scheme, _) = raw.split_once("://").ok_or_else(|| {
            invalid(
                "expected `memory://`, `amqp://user:pass@host:port/vhost`, `amqps://...`, `redis://host:port/db`, `rediss://...` or `kafka://host:port[,host:port]`".into(),
            )
        })?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "memory" => UrlKind::Memory,
            "amqp" => UrlKind::Amqp,
            "amqps" => UrlKind::Amqps,
            "redis" => UrlKind::Redis,
            "rediss" => UrlKind::Rediss,
            "kafka" => UrlKind::Kafka,
            other => {
                return Err(invalid(format!(
                    "unknown scheme `{other}`, expected `memory`, `amqp`, `amqps`, `redis`, `rediss` or `kafka`"
                )));
            }
        };
        if kind == UrlKind::Kafka {
            kafka_bootstrap(raw).map_err(invalid)?;
        } else if matches!(kind, UrlKind::Redis | UrlKind::Rediss) {
            // The redis crate's parser: its errors are replaced by ours (no URL echoed).
            redis::Client::open(raw).map_err(|_| {
                invalid(
                    "not a valid Redis URL (expected `redis://[user:pass@]host:port/db`)".into(),
                )
            })?;
        } else if kind != UrlKind::Memory {
            // lapin's own parser echoes the whole URL in its errors: keep only our words.
            lapin::uri::AMQPUri::from_str(raw).map_err(|_| {
                invalid("not a valid AMQP URI (expected `amqp://user:pass@host:port/vhost`)".into())
            })?;
        }
        Ok(Self {
            raw: raw.to_owned(),
            kind,
        })
    }

    /// Is this `memory://`?
    pub fn is_memory(&self) -> bool {
        self.kind == UrlKind::Memory
    }

    /// Is this `amqps://` or `rediss://`?
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, UrlKind::Amqps | UrlKind::Rediss)
    }

    /// Is this `redis://` or `rediss://` (Redis Streams)?
    pub fn is_redis(&self) -> bool {
        matches!(self.kind, UrlKind::Redis | UrlKind::Rediss)
    }

    /// Is this `kafka://` (Apache Kafka, or a broker speaking its protocol)?
    pub fn is_kafka(&self) -> bool {
        self.kind == UrlKind::Kafka
    }

    /// The bootstrap servers of a `kafka://` URL: `host:port,host:port`.
    pub fn kafka_bootstrap_servers(&self) -> Option<String> {
        self.is_kafka()
            .then(|| kafka_bootstrap(&self.raw).ok())
            .flatten()
    }

    /// The URL with its password; hand it to the client library only.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.raw)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `kafka://host:port[,host:port...][/]` to `host:port,host:port`. Credentials
/// do not belong in it (they are `EVENTBUS_SASL_*`), so none is accepted.
fn kafka_bootstrap(raw: &str) -> Result<String, String> {
    let rest = raw
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or_default()
        .trim_end_matches('/');
    let expected = "expected `kafka://host:port[,host:port...]` (credentials go in EVENTBUS_SASL_USERNAME / EVENTBUS_SASL_PASSWORD)";
    if rest.is_empty() || rest.contains('@') || rest.contains('/') || rest.contains('?') {
        return Err(expected.to_owned());
    }
    let mut servers = Vec::new();
    for server in rest.split(',').map(str::trim) {
        let (host, port) = server.rsplit_once(':').ok_or_else(|| expected.to_owned())?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(expected.to_owned());
        }
        servers.push(server);
    }
    Ok(servers.join(","))
}

/// A secret setting (a password): `Debug` shows `***`, never the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; hand it to the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
///
/// The user information ends at the last `@`, wherever it is: a password with
/// an unescaped `/`, `?` or `#` (which makes the URL malformed, so it reaches
/// an error message) must not be taken for the start of the path. A path that
/// holds an `@` is then hidden too, which errs on the safe side.
pub(crate) fn redact_url(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        // Not a URL: it could be anything, including a bare secret.
        return "<unparseable URL>".to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => raw.to_owned(),
        },
        None => raw.to_owned(),
    }
}

/// How the exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ExchangeType {
    /// Pattern match on `{aggregate_type}.{event_type}` (default).
    #[default]
    Topic,
    /// Exact match on the routing key.
    Direct,
    /// Every bound queue gets every message.
    Fanout,
    /// Match on headers (`event_type`, `aggregate_type`).
    Headers,
}

impl ExchangeType {
    /// The AMQP name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Headers => "headers",
        }
    }
}

impl FromStr for ExchangeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "topic" => Ok(Self::Topic),
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "headers" => Ok(Self::Headers),
            _ => Err("one of `topic`, `direct`, `fanout`, `headers`".to_owned()),
        }
    }
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a consumer group orders the deliveries it handles.
///
/// Retries are the one exception under every mode: a retried event waits in
/// its group's delay queue and comes back after later events of its
/// aggregate (as in eventsource-py).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DeliveryOrder {
    /// Deliveries of one aggregate (the `aggregate_id` header) are handled
    /// one after another, in delivery order; different aggregates run
    /// concurrently up to the prefetch count. The default.
    #[default]
    PerAggregate,
    /// Every delivery runs concurrently, up to the prefetch count.
    Unordered,
    /// One delivery at a time, in delivery order (eventsource-py's behaviour).
    Strict,
}

impl DeliveryOrder {
    /// The name `EVENTBUS_ORDERING` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerAggregate => "per_aggregate",
            Self::Unordered => "none",
            Self::Strict => "strict",
        }
    }
}

impl FromStr for DeliveryOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "per_aggregate" | "aggregate" => Ok(Self::PerAggregate),
            "none" | "unordered" => Ok(Self::Unordered),
            "strict" => Ok(Self::Strict),
            _ => Err("one of `per_aggregate`, `none`, `strict`".to_owned()),
        }
    }
}

impl fmt::Display for DeliveryOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A queue argument value (`x-queue-type=quorum`, `x-max-length=1000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArgument {
    /// A string value.
    Str(String),
    /// An integer value.
    Int(i64),
    /// A boolean value.
    Bool(bool),
}

/// Every setting of the bus. Defaults are eventsource-py's.
///
/// Read it from the environment with [`Config::from_env`] (see the README for
/// every variable), or start from [`Config::default`] and set fields:
///
/// ```
/// let mut config = eventbus::Config::default();
/// config.prefetch_count = 50;
/// config.consumer_group = "billing".into();
/// assert!(config.validate().is_ok());
/// ```
///
/// or change settings on a builder without losing the environment's:
/// `Bus::from_env().configure(|c| c.prefetch_count = 50)`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// `EVENTBUS_URL`: `memory://`, `amqp://...`, `amqps://...`, `redis://host:port/db`, `rediss://...` or `kafka://host:port[,host:port]`. Default: `amqp://guest:guest@localhost:5672/`.
    pub url: BrokerUrl,
    /// `EVENTBUS_EXCHANGE_NAME`. Default: `events`.
    pub exchange_name: String,
    /// `EVENTBUS_EXCHANGE_TYPE`. Default: `topic`.
    pub exchange_type: ExchangeType,
    /// `EVENTBUS_CONSUMER_GROUP`: group of projections without `group = ...`. Default: `default`.
    pub consumer_group: String,
    /// `EVENTBUS_CONSUMER_NAME`: consumer tag prefix. Default: `{hostname}-{8 hex}`.
    pub consumer_name: Option<String>,
    /// `EVENTBUS_PREFETCH_COUNT`. Default: 10.
    pub prefetch_count: u16,
    /// `EVENTBUS_ORDERING`: `per_aggregate`, `none` or `strict`. Default: `per_aggregate`.
    pub ordering: DeliveryOrder,
    /// Per-group overrides of `ordering`, in code (`BusBuilder::group_ordering`)
    /// or `EVENTBUS_GROUP_ORDERING=billing=strict,audit=none`. Default: none.
    pub group_ordering: BTreeMap<String, DeliveryOrder>,
    /// `EVENTBUS_MAX_RETRIES`. Default: 3.
    pub max_retries: u32,
    /// `EVENTBUS_ENABLE_DLQ`. Default: true.
    pub enable_dlq: bool,
    /// `EVENTBUS_DLQ_EXCHANGE_SUFFIX`. Default: `_dlq`.
    pub dlq_exchange_suffix: String,
    /// `EVENTBUS_DLQ_MESSAGE_TTL` in milliseconds. Default: none.
    pub dlq_message_ttl: Option<u32>,
    /// `EVENTBUS_DLQ_MAX_LENGTH`. Default: none.
    pub dlq_max_length: Option<u32>,
    /// `EVENTBUS_DURABLE`. Default: true.
    pub durable: bool,
    /// `EVENTBUS_AUTO_DELETE`. Default: false.
    pub auto_delete: bool,
    /// `EVENTBUS_RECONNECT_DELAY` in seconds. Default: 1.0.
    pub reconnect_delay: Duration,
    /// `EVENTBUS_MAX_RECONNECT_DELAY` in seconds. Default: 60.0.
    pub max_reconnect_delay: Duration,
    /// `EVENTBUS_HEARTBEAT` in seconds. Default: 60.
    pub heartbeat: u16,
    /// `EVENTBUS_ENABLE_TRACING`. Default: true.
    pub enable_tracing: bool,
    /// `EVENTBUS_METRICS_ADDR`: where `run()` serves `/metrics`,
    /// `/health/live` and `/health/ready` (`0.0.0.0:9090`). Default: none (off).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `EVENTBUS_METRICS_INTERVAL` in seconds: how often queue depths and
    /// consumer state are sampled for `/metrics`. Default: 15.0.
    pub metrics_interval: Duration,
    /// `EVENTBUS_VERIFY_SSL`: `false` disables certificate checks (logged as a warning). Default: true.
    pub verify_ssl: bool,
    /// `EVENTBUS_CA_FILE`: PEM CA to trust. Default: none.
    pub ca_file: Option<PathBuf>,
    /// `EVENTBUS_CERT_FILE`: PEM client certificate for mutual TLS. Default: none.
    pub cert_file: Option<PathBuf>,
    /// `EVENTBUS_KEY_FILE`: PEM client key for mutual TLS. Default: none.
    pub key_file: Option<PathBuf>,
    /// `EVENTBUS_RETRY_BASE_DELAY` in seconds. Default: 1.0.
    pub retry_base_delay: Duration,
    /// `EVENTBUS_RETRY_MAX_DELAY` in seconds. Default: 60.0.
    pub retry_max_delay: Duration,
    /// `EVENTBUS_RETRY_JITTER`: fraction, 0.0..=1.0. Default: 0.1.
    pub retry_jitter: f64,
    /// `EVENTBUS_UNHANDLED_DELAY` in seconds: how long a delivery this member
    /// cannot handle waits in its group's `{exchange}.{group}.unhandled` queue
    /// before the group's queue offers it again (± `retry_jitter`); must be
    /// more than 0. Default: 5.0.
    pub unhandled_delay: Duration,
    /// `EVENTBUS_MAX_UNHANDLED_DEFERRALS`: how often a delivery is left to
    /// another member of the group (direct and topic exchanges) before it is
    /// dead-lettered as handled by no member. Default: 60 (with the default
    /// delay, about five minutes).
    pub max_unhandled_deferrals: u32,
    /// `EVENTBUS_SHUTDOWN_TIMEOUT` in seconds. Default: 30.0.
    pub shutdown_timeout: Duration,
    /// `EVENTBUS_ROUTING_KEY_PATTERN`: bind this instead of the handled keys. Default: none.
    pub routing_key_pattern: Option<String>,
    /// `EVENTBUS_ALTERNATE_EXCHANGE`: where the broker puts events no queue
    /// is bound for, instead of returning them (`Error::Unroutable`). The
    /// main exchange is declared with `alternate-exchange` set to it, and it
    /// is declared (fanout) with a queue of the same name bound. Default: none.
    pub alternate_exchange: Option<String>,
    /// `EVENTBUS_PUBLISH_CHUNK_SIZE`. Default: 100.
    pub publish_chunk_size: usize,
    /// `EVENTBUS_MAX_CONCURRENT_PUBLISHES`. Default: 10.
    pub max_concurrent_publishes: usize,
    /// `EVENTBUS_PUBLISH_CONFIRM_WINDOW`: publisher confirms in flight. Default: 1000.
    pub publish_confirm_window: usize,
    /// `EVENTBUS_CONFIRM_TIMEOUT` in seconds. Default: 30.0.
    pub confirm_timeout: Duration,
    /// `EVENTBUS_CONNECT_TIMEOUT` in seconds: how long startup keeps retrying an
    /// unreachable broker before failing. Default: 30.0.
    pub connect_timeout: Duration,
    /// `EVENTBUS_QUEUE_ARGUMENTS`: `key=value,...` for the group queues, e.g.
    /// `x-queue-type=quorum`. Default: none.
    pub queue_arguments: BTreeMap<String, QueueArgument>,
    /// Redis: `EVENTBUS_STREAM_PREFIX`: the stream is `{stream_prefix}:stream`. Default: `events`.
    pub stream_prefix: String,
    /// Redis: `EVENTBUS_STREAM_READ_COUNT`: entries per `XREADGROUP`, and at most
    /// this many in flight per group. Default: 100.
    pub stream_read_count: usize,
    /// Redis: `EVENTBUS_BLOCK_MS`: how long one `XREADGROUP` blocks. Default: 5000.
    pub block_ms: u64,
    /// Redis: `EVENTBUS_PENDING_IDLE_MS`: an entry pending this long (its consumer
    /// died, or its handler is stuck) is claimed by a live member of the group. Default: 60000.
    pub pending_idle_ms: u64,
    /// Redis: `EVENTBUS_DLQ_STREAM_SUFFIX`: the DLQ stream is `{stream}{suffix}`. Default: `_dlq`.
    pub dlq_stream_suffix: String,
    /// Redis: `EVENTBUS_RETRY_KEY_PREFIX`: retry keys are `{stream_prefix}:{retry_key_prefix}:...`. Default: `retry`.
    pub retry_key_prefix: String,
    /// Redis: `EVENTBUS_RETRY_KEY_EXPIRY_SECONDS`: lifetime of eventsource-py's retry counter keys. Default: 86400.
    pub retry_key_expiry_seconds: u64,
    /// Redis: `EVENTBUS_SOCKET_TIMEOUT` in seconds: how long a command may take. Default: 5.0.
    pub socket_timeout: Duration,
    /// Redis: `EVENTBUS_SOCKET_CONNECT_TIMEOUT` in seconds: one connection attempt. Default: 5.0.
    pub socket_connect_timeout: Duration,
    /// Redis: `EVENTBUS_STREAM_MAXLEN`: trim the stream to about this many
    /// entries on publish (`XADD ... MAXLEN ~ n`). Default: none (never trimmed).
    pub stream_maxlen: Option<u64>,
    /// Redis: `EVENTBUS_STREAM_MAX_AGE` in seconds: trim entries older than this
    /// on publish (`XADD ... MINID ~ now-age`). Default: none (never trimmed).
    pub stream_max_age: Option<Duration>,
    /// Kafka: `EVENTBUS_TOPIC_PREFIX`: the topic is `{topic_prefix}.stream`. Default: `events`.
    pub topic_prefix: String,
    /// Kafka: `EVENTBUS_DLQ_TOPIC_SUFFIX`: the DLQ topic is `{topic}{suffix}`. Default: `.dlq`.
    pub dlq_topic_suffix: String,
    /// Kafka: `EVENTBUS_TOPIC_PARTITIONS`: partitions of the topics the bus
    /// creates when missing. Default: 3.
    pub topic_partitions: i32,
    /// Kafka: `EVENTBUS_TOPIC_REPLICATION_FACTOR` of the topics the bus creates. Default: 1.
    pub topic_replication_factor: i32,
    /// Kafka: `EVENTBUS_SECURITY_PROTOCOL`: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`
    /// or `SASL_SSL`. Default: `PLAINTEXT`.
    pub security_protocol: String,
    /// Kafka: `EVENTBUS_SASL_MECHANISM`: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`. Default: none.
    pub sasl_mechanism: Option<String>,
    /// Kafka: `EVENTBUS_SASL_USERNAME`. Default: none.
    pub sasl_username: Option<String>,
    /// Kafka: `EVENTBUS_SASL_PASSWORD` (shown as `***`). Default: none.
    pub sasl_password: Option<Secret>,
    /// Kafka: `EVENTBUS_SSL_CAFILE`: PEM CA to trust. Default: none.
    pub ssl_cafile: Option<PathBuf>,
    /// Kafka: `EVENTBUS_SSL_CERTFILE`: PEM client certificate. Default: none.
    pub ssl_certfile: Option<PathBuf>,
    /// Kafka: `EVENTBUS_SSL_KEYFILE`: PEM client key. Default: none.
    pub ssl_keyfile: Option<PathBuf>,
    /// Kafka: `EVENTBUS_SSL_CHECK_HOSTNAME`. Default: true.
    pub ssl_check_hostname: bool,
    /// Kafka: `EVENTBUS_COMPRESSION_TYPE`: `none`, `gzip`, `snappy`, `lz4`, `zstd`. Default: `gzip`.
    pub compression_type: String,
    /// Kafka: `EVENTBUS_LINGER_MS`: how long the producer waits to fill a batch. Default: 5.
    pub linger_ms: u32,
    /// Kafka: `EVENTBUS_BATCH_SIZE` in bytes. Default: 16384.
    pub batch_size: u32,
    /// Kafka: `EVENTBUS_AUTO_OFFSET_RESET`: where a new group starts, `earliest`
    /// or `latest`. Default: `earliest`.
    pub auto_offset_reset: String,
    /// Kafka: `EVENTBUS_SESSION_TIMEOUT_MS`. Default: 30000.
    pub session_timeout_ms: u32,
    /// Kafka: `EVENTBUS_HEARTBEAT_INTERVAL_MS`. Default: 10000.
    pub heartbeat_interval_ms: u32,
    /// Kafka: `EVENTBUS_MAX_POLL_INTERVAL_MS`. Default: 300000.
    pub max_poll_interval_ms: u32,
    /// Kafka: `EVENTBUS_COMMIT_INTERVAL_MS`: how often handled offsets are
    /// committed (also on rebalance and shutdown). Default: 1000.
    pub commit_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: BrokerUrl {
                raw: DEFAULT_URL.to_owned(),
                kind: UrlKind::Amqp,
            },
            exchange_name: "events".to_owned(),
            exchange_type: ExchangeType::Topic,
            consumer_group: "default".to_owned(),
            consumer_name: None,
            prefetch_count: 10,
            ordering: DeliveryOrder::default(),
            group_ordering: BTreeMap::new(),
            max_retries: 3,
            enable_dlq: true,
            dlq_exchange_suffix: "_dlq".to_owned(),
            dlq_message_ttl: None,
            dlq_max_length: None,
            durable: true,
            auto_delete: false,
            reconnect_delay: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(60),
            heartbeat: 60,
            enable_tracing: true,
            metrics_addr: None,
            metrics_interval: Duration::from_secs(15),
            verify_ssl: true,
            ca_file: None,
            cert_file: None,
            key_file: None,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            retry_jitter: 0.1,
            unhandled_delay: Duration::from_secs(5),
            max_unhandled_deferrals: 60,
            shutdown_timeout: Duration::from_secs(30),
            routing_key_pattern: None,
            alternate_exchange: None,
            publish_chunk_size: 100,
            max_concurrent_publishes: 10,
            publish_confirm_window: 1000,
            confirm_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            queue_arguments: BTreeMap::new(),
            stream_prefix: "events".to_owned(),
            stream_read_count: 100,
            block_ms: 5000,
            pending_idle_ms: 60_000,
            dlq_stream_suffix: "_dlq".to_owned(),
            retry_key_prefix: "retry".to_owned(),
            retry_key_expiry_seconds: 86_400,
            socket_timeout: Duration::from_secs(5),
            socket_connect_timeout: Duration::from_secs(5),
            stream_maxlen: None,
            stream_max_age: None,
            topic_prefix: "events".to_owned(),
            dlq_topic_suffix: ".dlq".to_owned(),
            topic_partitions: 3,
            topic_replication_factor: 1,
            security_protocol: "PLAINTEXT".to_owned(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_cafile: None,
            ssl_certfile: None,
            ssl_keyfile: None,
            ssl_check_hostname: true,
            compression_type: "gzip".to_owned(),
            linger_ms: 5,
            batch_size: 16_384,
            auto_offset_reset: "earliest".to_owned(),
            session_timeout_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            max_poll_interval_ms: 300_000,
            commit_interval_ms: 1000,
        }
    }
}

/// The prefix of every environment variable.
pub const ENV_PREFIX: &str = "EVENTBUS_";

impl Config {
    /// A configuration for the in-memory transport.
    pub fn memory() -> Self {
        Self {
            url: BrokerUrl {
                raw: "memory://".to_owned(),
                kind: UrlKind::Memory,
            },
            ..Self::default()
        }
    }

    /// Reads every `EVENTBUS_*` variable; unset ones keep their defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { lookup: &lookup };
        let mut c = Self::default();
        if let Some(url) = env.get("URL") {
            c.url = BrokerUrl::parse_named(&url, "EVENTBUS_URL")?;
        }
        env.string("EXCHANGE_NAME", &mut c.exchange_name)?;
        env.parse("EXCHANGE_TYPE", &mut c.exchange_type, "")?;
        env.string("CONSUMER_GROUP", &mut c.consumer_group)?;
        if let Some(name) = env.get("CONSUMER_NAME") {
            c.consumer_name = Some(name);
        }
        env.parse(
            "PREFETCH_COUNT",
            &mut c.prefetch_count,
            "an integer 0..=65535",
        )?;
        env.parse("ORDERING", &mut c.ordering, "")?;
        if let Some(raw) = env.get("GROUP_ORDERING") {
            c.group_ordering = parse_group_ordering(&raw)?;
        }
        env.parse("MAX_RETRIES", &mut c.max_retries, "a non-negative integer")?;
        env.flag("ENABLE_DLQ", &mut c.enable_dlq)?;
        env.string("DLQ_EXCHANGE_SUFFIX", &mut c.dlq_exchange_suffix)?;
        env.optional(
            "DLQ_MESSAGE_TTL",
            &mut c.dlq_message_ttl,
            "milliseconds, a non-negative integer",
        )?;
        env.optional(
            "DLQ_MAX_LENGTH",
            &mut c.dlq_max_length,
            "a non-negative integer",
        )?;
        env.flag("DURABLE", &mut c.durable)?;
        env.flag("AUTO_DELETE", &mut c.auto_delete)?;
        env.seconds("RECONNECT_DELAY", &mut c.reconnect_delay)?;
        env.seconds("MAX_RECONNECT_DELAY", &mut c.max_reconnect_delay)?;
        env.parse(
            "HEARTBEAT",
            &mut c.heartbeat,
            "seconds, an integer 0..=65535",
        )?;
        env.flag("ENABLE_TRACING", &mut c.enable_tracing)?;
        env.optional(
            "METRICS_ADDR",
            &mut c.metrics_addr,
            "an IP address and port, e.g. 0.0.0.0:9090",
        )?;
        env.seconds("METRICS_INTERVAL", &mut c.metrics_interval)?;
        env.flag("VERIFY_SSL", &mut c.verify_ssl)?;
        env.path("CA_FILE", &mut c.ca_file);
        env.path("CERT_FILE", &mut c.cert_file);
        env.path("KEY_FILE", &mut c.key_file);
        env.seconds("RETRY_BASE_DELAY", &mut c.retry_base_delay)?;
        env.seconds("RETRY_MAX_DELAY", &mut c.retry_max_delay)?;
        env.parse(
            "RETRY_JITTER",
            &mut c.retry_jitter,
            "a fraction between 0.0 and 1.0",
        )?;
        env.seconds("UNHANDLED_DELAY", &mut c.unhandled_delay)?;
        env.parse(
            "MAX_UNHANDLED_DEFERRALS",
            &mut c.max_unhandled_deferrals,
            "a non-negative integer",
        )?;
        env.seconds("SHUTDOWN_TIMEOUT", &mut c.shutdown_timeout)?;
        if let Some(name) = env.get("ALTERNATE_EXCHANGE") {
            c.alternate_exchange = Some(name).filter(|n| !n.trim().is_empty());
        }
        if let Some(pattern) = env.get("ROUTING_KEY_PATTERN") {
            c.routing_key_pattern = Some(pattern);
        }
        env.parse(
            "PUBLISH_CHUNK_SIZE",
            &mut c.publish_chunk_size,
            "a positive integer",
        )?;
        env.parse(
            "MAX_CONCURRENT_PUBLISHES",
            &mut c.max_concurrent_publishes,
            "a positive integer",
        )?;
        env.parse(
            "PUBLISH_CONFIRM_WINDOW",
            &mut c.publish_confirm_window,
            "a positive integer",
        )?;
        env.seconds("CONFIRM_TIMEOUT", &mut c.confirm_timeout)?;
        env.seconds("CONNECT_TIMEOUT", &mut c.connect_timeout)?;
        if let Some(args) = env.get("QUEUE_ARGUMENTS") {
            c.queue_arguments = parse_queue_arguments(&args)?;
        }
        env.string("STREAM_PREFIX", &mut c.stream_prefix)?;
        env.parse(
            "STREAM_READ_COUNT",
            &mut c.stream_read_count,
            "a positive integer",
        )?;
        env.parse(
            "BLOCK_MS",
            &mut c.block_ms,
            "milliseconds, a non-negative integer",
        )?;
        env.parse(
            "PENDING_IDLE_MS",
            &mut c.pending_idle_ms,
            "milliseconds, a non-negative integer",
        )?;
        env.string("DLQ_STREAM_SUFFIX", &mut c.dlq_stream_suffix)?;
        env.string("RETRY_KEY_PREFIX", &mut c.retry_key_prefix)?;
        env.parse(
            "RETRY_KEY_EXPIRY_SECONDS",
            &mut c.retry_key_expiry_seconds,
            "seconds, a non-negative integer",
        )?;
        env.seconds("SOCKET_TIMEOUT", &mut c.socket_timeout)?;
        env.seconds("SOCKET_CONNECT_TIMEOUT", &mut c.socket_connect_timeout)?;
        env.optional("STREAM_MAXLEN", &mut c.stream_maxlen, "a positive integer")?;
        if env.get("STREAM_MAX_AGE").is_some() {
            let mut age = Duration::ZERO;
            env.seconds("STREAM_MAX_AGE", &mut age)?;
            c.stream_max_age = Some(age);
        }
        env.string("TOPIC_PREFIX", &mut c.topic_prefix)?;
        env.string("DLQ_TOPIC_SUFFIX", &mut c.dlq_topic_suffix)?;
        env.parse(
            "TOPIC_PARTITIONS",
            &mut c.topic_partitions,
            "a positive integer",
        )?;
        env.parse(
            "TOPIC_REPLICATION_FACTOR",
            &mut c.topic_replication_factor,
            "a positive integer",
        )?;
        env.string("SECURITY_PROTOCOL", &mut c.security_protocol)?;
        if let Some(v) = env.get("SASL_MECHANISM") {
            c.sasl_mechanism = Some(v.trim().to_owned());
        }
        if let Some(v) = env.get("SASL_USERNAME") {
            c.sasl_username = Some(v);
        }
        if let Some(v) = env.get("SASL_PASSWORD") {
            c.sasl_password = Some(Secret(v));
        }
        env.path("SSL_CAFILE", &mut c.ssl_cafile);
        env.path("SSL_CERTFILE", &mut c.ssl_certfile);
        env.path("SSL_KEYFILE", &mut c.ssl_keyfile);
        env.flag("SSL_CHECK_HOSTNAME", &mut c.ssl_check_hostname)?;
        env.string("COMPRESSION_TYPE", &mut c.compression_type)?;
        env.parse(
            "LINGER_MS",
            &mut c.linger_ms,
            "milliseconds, a non-negative integer",
        )?;
        env.parse("BATCH_SIZE", &mut c.batch_size, "bytes, a positive integer")?;
        env.string("AUTO_OFFSET_RESET", &mut c.auto_offset_reset)?;
        env.parse(
            "SESSION_TIMEOUT_MS",
            &mut c.session_timeout_ms,
            "milliseconds, a positive integer",
        )?;
        env.parse(
            "HEARTBEAT_INTERVAL_MS",
            &mut c.heartbeat_interval_ms,
            "milliseconds, a positive integer",
        )?;
        env.parse(
            "MAX_POLL_INTERVAL_MS",
            &mut c.max_poll_interval_ms,
            "milliseconds, a positive integer",
        )?;
        env.parse(
            "COMMIT_INTERVAL_MS",
            &mut c.commit_interval_ms,
            "milliseconds, a positive integer",
        )?;
        c.validate()?;
        Ok(c)
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, value: String, expected: &str| ConfigError::InvalidValue {
            name: format!("{ENV_PREFIX}{name}"),
            value,
            expected: expected.to_owned(),
        };
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            return Err(invalid(
                "RETRY_JITTER",
                self.retry_jitter.to_string(),
                "a fraction between 0.0 and 1.0",
            ));
        }
        if self.unhandled_delay.is_zero() {
            // Zero would hand a delivery back and forth between members at full speed.
            return Err(invalid(
                "UNHANDLED_DELAY",
                "0".into(),
                "seconds, more than 0",
            ));
        }
        for (name, value) in [
            ("PUBLISH_CHUNK_SIZE", self.publish_chunk_size),
            ("MAX_CONCURRENT_PUBLISHES", self.max_concurrent_publishes),
            ("PUBLISH_CONFIRM_WINDOW", self.publish_confirm_window),
            ("STREAM_READ_COUNT", self.stream_read_count),
        ] {
            if value == 0 {
                return Err(invalid(name, "0".into(), "a positive integer"));
            }
        }
        for (name, value) in [
            ("EXCHANGE_NAME", &self.exchange_name),
            ("CONSUMER_GROUP", &self.consumer_group),
            ("STREAM_PREFIX", &self.stream_prefix),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(name, value.clone(), "a non-empty name"));
            }
        }
        if self.metrics_interval.is_zero() {
            return Err(invalid(
                "METRICS_INTERVAL",
                "0".into(),
                "seconds, greater than 0",
            ));
        }
        if self.topic_partitions < 1 {
            return Err(invalid(
                "TOPIC_PARTITIONS",
                self.topic_partitions.to_string(),
                "a positive integer",
            ));
        }
        if self.topic_replication_factor < 1 {
            return Err(invalid(
                "TOPIC_REPLICATION_FACTOR",
                self.topic_replication_factor.to_string(),
                "a positive integer",
            ));
        }
        if self.commit_interval_ms == 0 {
            return Err(invalid(
                "COMMIT_INTERVAL_MS",
                "0".into(),
                "milliseconds, a positive integer",
            ));
        }
        let protocol = self.security_protocol.to_ascii_uppercase();
        if !["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"].contains(&protocol.as_str()) {
            return Err(invalid(
                "SECURITY_PROTOCOL",
                self.security_protocol.clone(),
                "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
            ));
        }
        if !["earliest", "latest"].contains(&self.auto_offset_reset.to_ascii_lowercase().as_str()) {
            return Err(invalid(
                "AUTO_OFFSET_RESET",
                self.auto_offset_reset.clone(),
                "earliest or latest",
            ));
        }
        if self.stream_maxlen == Some(0) {
            return Err(invalid("STREAM_MAXLEN", "0".into(), "a positive integer"));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                if self.cert_file.is_some() {
                    "KEY_FILE"
                } else {
                    "CERT_FILE"
                },
                "(unset)".into(),
                "EVENTBUS_CERT_FILE and EVENTBUS_KEY_FILE set together, for mutual TLS",
            ));
        }
        Ok(())
    }

    /// The ordering of consumer group `group`: its override, or `ordering`.
    pub fn ordering_for(&self, group: &str) -> DeliveryOrder {
        self.group_ordering
            .get(group)
            .copied()
            .unwrap_or(self.ordering)
    }

    /// The queue of the default consumer group: `{exchange_name}.{consumer_group}`.
    pub fn queue_name(&self) -> String {
        self.group_queue_name(&self.consumer_group)
    }

    /// The queue of consumer group `group`: `{exchange_name}.{group}`.
    pub fn group_queue_name(&self, group: &str) -> String {
        format!("{}.{}", self.exchange_name, group)
    }

    /// The dead-letter exchange: `{exchange_name}{dlq_exchange_suffix}`.
    pub fn dlq_exchange_name(&self) -> String {
        format!("{}{}", self.exchange_name, self.dlq_exchange_suffix)
    }

    /// The dead-letter queue of the default group: `{queue_name}.dlq`.
    pub fn dlq_queue_name(&self) -> String {
        format!("{}.dlq", self.queue_name())
    }

    /// The dead-letter queue of consumer group `group`: `{exchange_name}.{group}.dlq`.
    pub fn group_dlq_queue_name(&self, group: &str) -> String {
        format!("{}.dlq", self.group_queue_name(group))
    }

    /// The delay queue of `group` for retry number `attempt` (1-based):
    /// `{exchange_name}.{group}.delay.{attempt}`. When its TTL expires a
    /// message goes back through [`Config::group_redeliver_exchange_name`].
    pub fn group_delay_queue_name(&self, group: &str, attempt: u32) -> String {
        format!("{}.delay.{attempt}", self.group_queue_name(group))
    }

    /// Where deliveries no handler of this member takes wait before the
    /// group's queue offers them again: `{exchange_name}.{group}.unhandled`.
    pub fn group_unhandled_queue_name(&self, group: &str) -> String {
        format!("{}.unhandled", self.group_queue_name(group))
    }

    /// The fanout exchange bound to `group`'s queue alone, through which the
    /// delay queues return a message with its original routing key:
    /// `{exchange_name}.{group}.redeliver`.
    pub fn group_redeliver_exchange_name(&self, group: &str) -> String {
        format!("{}.redeliver", self.group_queue_name(group))
    }

    /// The delay queue of retry number `attempt` as earlier eventbus versions
    /// declared it, `{exchange_name}.{group}.retry.{attempt}` (it returned a
    /// message under the group queue's name, not its routing key). Only
    /// `eventbus topology` looks for these, to show and remove them.
    pub fn group_retry_queue_name(&self, group: &str, attempt: u32) -> String {
        format!("{}.retry.{attempt}", self.group_queue_name(group))
    }
}

/// Kafka topic names (eventsource-py's `KafkaEventBusConfig` for the shared ones).
impl Config {
    /// The topic every event goes to: `{topic_prefix}.stream`.
    pub fn kafka_topic(&self) -> String {
        format!("{}.stream", self.topic_prefix)
    }

    /// The dead-letter topic, shared by every group (each record names its
    /// group in `dlq_consumer_group`): `{topic}{dlq_topic_suffix}`.
    pub fn kafka_dlq_topic(&self) -> String {
        format!("{}{}", self.kafka_topic(), self.dlq_topic_suffix)
    }

    /// Group `group`'s retries, read by that group only: `{topic}.retry.{group}`.
    pub fn kafka_retry_topic(&self, group: &str) -> String {
        format!("{}.retry.{group}", self.kafka_topic())
    }
}

/// Redis Streams names (eventsource-py's `RedisEventBusConfig` for the shared ones).
impl Config {
    /// The stream every event goes to: `{stream_prefix}:stream`.
    pub fn stream_name(&self) -> String {
        format!("{}:stream", self.stream_prefix)
    }

    /// The dead-letter stream: `{stream_prefix}:stream{dlq_stream_suffix}`,
    /// shared by every group (each entry names its group).
    pub fn dlq_stream_name(&self) -> String {
        format!("{}{}", self.stream_name(), self.dlq_stream_suffix)
    }

    /// Where DLQ replays of group `group` go, read by that group only:
    /// `{stream_prefix}:stream_replay:{group}`.
    pub fn replay_stream_name(&self, group: &str) -> String {
        format!("{}:stream_replay:{group}", self.stream_prefix)
    }

    /// eventsource-py's retry counter of an entry: `{stream_prefix}:{retry_key_prefix}:{entry id}`.
    pub fn retry_counter_key(&self, entry_id: &str) -> String {
        format!(
            "{}:{}:{entry_id}",
            self.stream_prefix, self.retry_key_prefix
        )
    }

    /// The retry schedule of group `group` (a sorted set by due time):
    /// `{stream_prefix}:{retry_key_prefix}:{group}:due`.
    pub fn retry_schedule_key(&self, group: &str) -> String {
        format!(
            "{}:{}:{group}:due",
            self.stream_prefix, self.retry_key_prefix
        )
    }

    /// What each scheduled retry of group `group` must run (a hash):
    /// `{stream_prefix}:{retry_key_prefix}:{group}:state`.
    pub fn retry_state_key(&self, group: &str) -> String {
        format!(
            "{}:{}:{group}:state",
            self.stream_prefix, self.retry_key_prefix
        )
    }
}

fn parse_group_ordering(raw: &str) -> Result<BTreeMap<String, DeliveryOrder>, ConfigError> {
    let invalid = |expected: String| ConfigError::InvalidValue {
        name: format!("{ENV_PREFIX}GROUP_ORDERING"),
        value: raw.to_owned(),
        expected,
    };
    let mut out = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (group, order) = pair.split_once('=').ok_or_else(|| {
            invalid("comma-separated `group=ordering` pairs, e.g. `billing=strict`".to_owned())
        })?;
        let order = order
            .parse()
            .map_err(|e: String| invalid(format!("ordering of group `{}`: {e}", group.trim())))?;
        out.insert(group.trim().to_owned(), order);
    }
    Ok(out)
}

fn parse_queue_arguments(raw: &str) -> Result<BTreeMap<String, QueueArgument>, ConfigError> {
    let mut out = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| ConfigError::InvalidValue {
                name: format!("{ENV_PREFIX}QUEUE_ARGUMENTS"),
                value: raw.to_owned(),
                expected: "comma-separated `key=value` pairs, e.g. `x-queue-type=quorum`"
                    .to_owned(),
            })?;
        let value = value.trim();
        let value = if let Ok(i) = value.parse::<i64>() {
            QueueArgument::Int(i)
        } else if let Ok(b) = value.parse::<bool>() {
            QueueArgument::Bool(b)
        } else {
            QueueArgument::Str(value.to_owned())
        };
        out.insert(key.trim().to_owned(), value);
    }
    Ok(out)
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(&format!("{ENV_PREFIX}{name}")).filter(|v| !v.trim().is_empty())
    }

    fn invalid(name: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::InvalidValue {
            name: format!("{ENV_PREFIX}{name}"),
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }

    fn string(&self, name: &str, slot: &mut String) -> Result<(), ConfigError> {
        if let Some(v) = self.get(name) {
            *slot = v.trim().to_owned();
        }
        Ok(())
    }

    fn path(&self, name: &str, slot: &mut Option<PathBuf>) {
        if let Some(v) = self.get(name) {
            *slot = Some(PathBuf::from(v));
        }
    }

    fn parse<T: FromStr>(&self, name: &str, slot: &mut T, expected: &str) -> Result<(), ConfigError>
    where
        T::Err: fmt::Display,
    {
        if let Some(v) = self.get(name) {
            *slot = v.trim().parse().map_err(|e: T::Err| {
                let expected = if expected.is_empty() {
                    e.to_string()
                } else {
                    expected.to_owned()
                };
                Self::invalid(name, &v, &expected)
            })?;
        }
        Ok(())
    }

    fn optional<T: FromStr>(
        &self,
        name: &str,
        slot: &mut Option<T>,
        expected: &str,
    ) -> Result<(), ConfigError> {
        if let Some(v) = self.get(name) {
            *slot = Some(
                v.trim()
                    .parse()
                    .map_err(|_| Self::invalid(name, &v, expected))?,
            );
        }
        Ok(())
    }

    fn flag(&self, name: &str, slot: &mut bool) -> Result<(), ConfigError> {
        if let Some(v) = self.get(name) {
            *slot = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(Self::invalid(name, &v, "`true` or `false`")),
            };
        }
        Ok(())
    }

    fn seconds(&self, name: &str, slot: &mut Duration) -> Result<(), ConfigError> {
        if let Some(v) = self.get(name) {
            *slot = v
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| {
                    Self::invalid(name, &v, "seconds, a non-negative number such as `1.5`")
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_are_eventsource_py_defaults() {
        let c = from(&[]).expect("defaults are valid");
        assert_eq!(c.url.expose(), DEFAULT_URL);
        assert_eq!(c.exchange_name, "events");
        assert_eq!(c.exchange_type, ExchangeType::Topic);
        assert_eq!(c.consumer_group, "default");
        assert_eq!(c.prefetch_count, 10);
        assert_eq!(c.max_retries, 3);
        assert!(c.enable_dlq && c.durable && !c.auto_delete);
        assert_eq!(c.queue_name(), "events.default");
        assert_eq!(c.dlq_exchange_name(), "events_dlq");
        assert_eq!(c.dlq_queue_name(), "events.default.dlq");
        assert_eq!(c.retry_base_delay, Duration::from_secs(1));
        assert_eq!(c.retry_max_delay, Duration::from_secs(60));
        assert!((c.retry_jitter - 0.1).abs() < f64::EPSILON);
    }

    #[test]
    fn reads_every_kind_of_variable() {
        let c = from(&[
            ("EVENTBUS_URL", "memory://"),
            ("EVENTBUS_EXCHANGE_NAME", "orders"),
            ("EVENTBUS_EXCHANGE_TYPE", "fanout"),
            ("EVENTBUS_CONSUMER_GROUP", "billing"),
            ("EVENTBUS_PREFETCH_COUNT", "50"),
            ("EVENTBUS_ENABLE_DLQ", "false"),
            ("EVENTBUS_DLQ_MESSAGE_TTL", "86400000"),
            ("EVENTBUS_RECONNECT_DELAY", "0.5"),
            (
                "EVENTBUS_QUEUE_ARGUMENTS",
                "x-queue-type=quorum, x-max-length=10",
            ),
        ])
        .expect("valid");
        assert!(c.url.is_memory());
        assert_eq!(c.queue_name(), "orders.billing");
        assert_eq!(c.exchange_type, ExchangeType::Fanout);
        assert_eq!(c.prefetch_count, 50);
        assert!(!c.enable_dlq);
        assert_eq!(c.dlq_message_ttl, Some(86_400_000));
        assert_eq!(c.reconnect_delay, Duration::from_millis(500));
        assert_eq!(
            c.queue_arguments.get("x-queue-type"),
            Some(&QueueArgument::Str("quorum".into()))
        );
        assert_eq!(
            c.queue_arguments.get("x-max-length"),
            Some(&QueueArgument::Int(10))
        );
    }

    #[test]
    fn deferrals_of_unhandled_deliveries_are_configurable_but_never_instant() {
        let c = Config::default();
        assert_eq!(c.unhandled_delay, Duration::from_secs(5));
        assert_eq!(c.max_unhandled_deferrals, 60);
        let c = from(&[
            ("EVENTBUS_UNHANDLED_DELAY", "0.25"),
            ("EVENTBUS_MAX_UNHANDLED_DEFERRALS", "3"),
        ])
        .expect("valid");
        assert_eq!(c.unhandled_delay, Duration::from_millis(250));
        assert_eq!(c.max_unhandled_deferrals, 3);
        let err = from(&[("EVENTBUS_UNHANDLED_DELAY", "0")]).expect_err("a hot loop");
        assert!(
            err.to_string().contains("EVENTBUS_UNHANDLED_DELAY"),
            "{err}"
        );
        assert_eq!(
            c.group_delay_queue_name("billing", 2),
            "events.billing.delay.2"
        );
        assert_eq!(
            c.group_unhandled_queue_name("billing"),
            "events.billing.unhandled"
        );
        assert_eq!(
            c.group_redeliver_exchange_name("billing"),
            "events.billing.redeliver"
        );
    }

    #[test]
    fn invalid_values_name_the_variable_and_what_is_expected() {
        let err = from(&[("EVENTBUS_PREFETCH_COUNT", "lots")]).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid value `lots` for EVENTBUS_PREFETCH_COUNT: expected an integer 0..=65535"
        );
        let err = from(&[("EVENTBUS_EXCHANGE_TYPE", "round-robin")]).expect_err("invalid");
        assert!(err.to_string().contains("EVENTBUS_EXCHANGE_TYPE"), "{err}");
        assert!(
            err.to_string()
                .contains("`topic`, `direct`, `fanout`, `headers`"),
            "{err}"
        );
        let err = from(&[("EVENTBUS_ENABLE_DLQ", "maybe")]).expect_err("invalid");
        assert!(err.to_string().contains("`true` or `false`"), "{err}");
        let err = from(&[("EVENTBUS_RETRY_JITTER", "2")]).expect_err("invalid");
        assert!(err.to_string().contains("EVENTBUS_RETRY_JITTER"), "{err}");
        let err = from(&[("EVENTBUS_CERT_FILE", "/c.pem")]).expect_err("invalid");
        assert!(err.to_string().contains("EVENTBUS_KEY_FILE"), "{err}");
    }

    #[test]
    fn malformed_urls_are_rejected_without_echoing_the_password() {
        let err =
            from(&[("EVENTBUS_URL", "amqp://bob:s3cret@host:notaport/")]).expect_err("bad port");
        let text = err.to_string();
        assert!(text.contains("EVENTBUS_URL"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("bob:***@host"), "{text}");
        let err = from(&[("EVENTBUS_URL", "nats://localhost")]).expect_err("bad scheme");
        assert!(err.to_string().contains("unknown scheme `nats`"), "{err}");
        let err =
            from(&[("EVENTBUS_URL", "redis://bob:s3cret@host:notaport/0")]).expect_err("bad port");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = from(&[("EVENTBUS_URL", "s3cret")]).expect_err("no scheme");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn urls_never_show_their_password() {
        let url = BrokerUrl::parse("amqp://bob:s3cret@rabbit:5672/prod").expect("valid");
        assert_eq!(url.to_string(), "amqp://bob:***@rabbit:5672/prod");
        assert!(!format!("{url:?}").contains("s3cret"));
        let config = Config {
            url,
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(redact_url("amqp://rabbit/"), "amqp://rabbit/");
        assert_eq!(redact_url("amqp://bob@rabbit/"), "amqp://bob@rabbit/");
        // A password with characters that end a URL's authority, unescaped:
        // the URL is malformed, and its error must still hide the password.
        for raw in [
            "kafka://admin:pa/ss@k1:9092",
            "amqp://bob:s3?cret@rabbit/",
            "redis://:se#cret@cache:6379/0",
            "amqp://bob:a@b@rabbit/vhost",
        ] {
            let shown = redact_url(raw);
            for secret in ["pa/ss", "s3?cret", "se#cret", "a@b"] {
                assert!(!shown.contains(secret), "{raw} -> {shown}");
            }
            if let Err(error) = BrokerUrl::parse(raw) {
                let text = error.to_string();
                for secret in ["pa/ss", "s3?cret", "se#cret", "a@b"] {
                    assert!(!text.contains(secret), "{text}");
                }
            }
        }
        assert_eq!(
            redact_url("kafka://admin:pa/ss@k1:9092"),
            "kafka://admin:***@k1:9092"
        );
    }

    #[test]
    fn redis_urls_and_settings_follow_redis_event_bus_config() {
        let c = from(&[("EVENTBUS_URL", "redis://:s3cret@127.0.0.1:6379/0")]).expect("valid");
        assert!(c.url.is_redis() && !c.url.is_tls() && !c.url.is_memory());
        assert_eq!(c.url.to_string(), "redis://:***@127.0.0.1:6379/0");
        assert!(!format!("{c:?}").contains("s3cret"));
        let tls = BrokerUrl::parse("rediss://user:pw@cache:6380/1").expect("valid");
        assert!(tls.is_redis() && tls.is_tls());
        assert_eq!(tls.to_string(), "rediss://user:***@cache:6380/1");
        assert_eq!(c.stream_name(), "events:stream");
        assert_eq!(c.dlq_stream_name(), "events:stream_dlq");
        assert_eq!(c.retry_counter_key("1-0"), "events:retry:1-0");
        assert_eq!(
            (c.stream_read_count, c.block_ms, c.pending_idle_ms),
            (100, 5000, 60_000)
        );
        assert_eq!(c.retry_key_expiry_seconds, 86_400);
        assert_eq!(c.socket_timeout, Duration::from_secs(5));
        assert_eq!((c.stream_maxlen, c.stream_max_age), (None, None));
        let c = from(&[
            ("EVENTBUS_STREAM_PREFIX", "orders"),
            ("EVENTBUS_BLOCK_MS", "250"),
            ("EVENTBUS_STREAM_MAXLEN", "10000"),
            ("EVENTBUS_STREAM_MAX_AGE", "3600"),
        ])
        .expect("valid");
        assert_eq!(c.stream_name(), "orders:stream");
        assert_eq!(c.block_ms, 250);
        assert_eq!(c.stream_maxlen, Some(10_000));
        assert_eq!(c.stream_max_age, Some(Duration::from_secs(3600)));
        let err = from(&[("EVENTBUS_STREAM_MAXLEN", "0")]).expect_err("zero");
        assert!(err.to_string().contains("EVENTBUS_STREAM_MAXLEN"), "{err}");
    }

    #[test]
    fn ordering_defaults_per_aggregate_and_is_set_per_group() {
        let c = from(&[]).expect("valid");
        assert_eq!(c.ordering_for("any"), DeliveryOrder::PerAggregate);
        let c = from(&[
            ("EVENTBUS_ORDERING", "none"),
            (
                "EVENTBUS_GROUP_ORDERING",
                "billing=strict, audit = per-aggregate",
            ),
        ])
        .expect("valid");
        assert_eq!(c.ordering_for("billing"), DeliveryOrder::Strict);
        assert_eq!(c.ordering_for("audit"), DeliveryOrder::PerAggregate);
        assert_eq!(c.ordering_for("other"), DeliveryOrder::Unordered);
        let err = from(&[("EVENTBUS_ORDERING", "random")]).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid value `random` for EVENTBUS_ORDERING: expected one of `per_aggregate`, `none`, `strict`"
        );
        let err = from(&[("EVENTBUS_GROUP_ORDERING", "billing=sometimes")]).expect_err("invalid");
        assert!(
            err.to_string().contains("ordering of group `billing`"),
            "{err}"
        );
    }

    #[test]
    fn kafka_urls_topics_and_secrets() {
        let c = Config::from_lookup(|k| match k {
            "EVENTBUS_URL" => Some("kafka://k1:9092,k2:9093".into()),
            "EVENTBUS_SASL_PASSWORD" => Some("hunter2".into()),
            "EVENTBUS_TOPIC_PREFIX" => Some("orders".into()),
            _ => None,
        })
        .expect("valid");
        assert!(c.url.is_kafka() && !c.url.is_redis() && !c.url.is_memory());
        assert_eq!(
            c.url.kafka_bootstrap_servers().as_deref(),
            Some("k1:9092,k2:9093")
        );
        assert_eq!(c.kafka_topic(), "orders.stream");
        assert_eq!(c.kafka_dlq_topic(), "orders.stream.dlq");
        assert_eq!(
            c.kafka_retry_topic("billing"),
            "orders.stream.retry.billing"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        for bad in [
            "kafka://",
            "kafka://u:p@k1:9092",
            "kafka://k1",
            "kafka://k1:x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        let bad =
            Config::from_lookup(|k| (k == "EVENTBUS_SECURITY_PROTOCOL").then(|| "TLS".to_owned()));
        assert!(bad.is_err());
    }
}
