//! Error types. Every variant names what was wrong; none carries a password.

use std::fmt;
use std::time::Duration;

/// Anything the bus can fail with.
///
/// `Debug` prints the same readable message as `Display`, followed by its
/// causes, so `main() -> Result<(), eventbus::Error>` reports
/// `Error: no publisher confirm for event ... within 30s` rather than a struct
/// dump. Match on the variants for the details.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The registered events, projections and handlers conflict.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A message could not be turned into an event.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An event could not be serialized.
    #[error("cannot encode event {event_type}: {source}")]
    Encode {
        /// The event type.
        event_type: String,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// An envelope about to be published breaks a rule of the wire format
    /// (the rule a consumer would reject it with, [`DecodeError::InvalidEnvelope`]).
    #[error("invalid envelope of {event_type} {event_id}: {detail}")]
    InvalidEnvelope {
        /// The event type.
        event_type: String,
        /// The event id.
        event_id: String,
        /// Which rule.
        detail: String,
    },
    /// No queue is bound for the event's routing key: the broker returned it.
    #[error(
        "event {event_id} is unroutable: no queue is bound to exchange `{exchange}` for routing key `{routing_key}`"
    )]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key nothing was bound for.
        routing_key: String,
        /// The event id.
        event_id: String,
    },
    /// The broker refused a publish (negative confirm).
    #[error("the broker nacked event {event_id} (routing key `{routing_key}`)")]
    Nacked {
        /// The routing key.
        routing_key: String,
        /// The event id.
        event_id: String,
    },
    /// The broker did not confirm a publish in time.
    #[error("no publisher confirm for event {event_id} within {timeout:?}")]
    ConfirmTimeout {
        /// The event id.
        event_id: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// An event is larger than the broker's `max_message_size`: the broker
    /// would close the channel for it, so it is not sent.
    #[error("event {event_id} is {size} bytes, over the broker's max_message_size of {max} bytes")]
    TooLarge {
        /// The event id.
        event_id: String,
        /// The size of its body.
        size: usize,
        /// The broker's limit.
        max: usize,
    },
    /// The broker blocked the connection (a memory or disk alarm: RabbitMQ
    /// stops reading from publishing connections) and did not unblock it in
    /// time. Nothing was confirmed for `operation`; a message already handed
    /// to the socket may still reach the broker once the alarm clears.
    #[error(
        "RabbitMQ blocked the connection ({reason}): {operation} did not complete within {timeout:?}"
    )]
    Blocked {
        /// What was waiting (`publishing event <id>`, `declaring ...`).
        operation: String,
        /// The broker's reason (`low on memory`, `low on disk`).
        reason: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Connecting to the broker failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection is down and did not come back in time.
    #[error("not connected to the broker: {0}")]
    NotConnected(String),
    /// A queue or exchange exists with arguments that conflict with ours.
    #[error(
        "{kind} `{name}` already exists with different arguments ({detail}); delete it or make the configuration match"
    )]
    TopologyConflict {
        /// `queue` or `exchange`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What the broker said.
        detail: String,
    },
    /// The broker refused this user access to one group's topology (a
    /// channel-level 403, `ACCESS_REFUSED`): the user lacks the configure,
    /// write or read permission it needs. Only that group is affected: the
    /// other groups consume, and the refused one is declared again in the
    /// background until the permission is granted.
    #[error(
        "the broker refused access to {kind} `{name}` of group `{group}` (check the user's permissions on it): {reason}"
    )]
    AccessRefused {
        /// The consumer group whose topology was refused.
        group: String,
        /// `queue`, `exchange` or `binding`.
        kind: &'static str,
        /// The queue or exchange name (for a binding, the queue's).
        name: String,
        /// What the broker said.
        reason: String,
    },
    /// Any other broker error, with what we were doing.
    #[error("broker error while {context}: {reason}")]
    Broker {
        /// What we were doing.
        context: String,
        /// What the broker or client said (credentials redacted).
        reason: String,
    },
    /// Shutdown ran out of time with work still running.
    #[error("shutdown timed out after {timeout:?} with {pending} task(s) still running")]
    ShutdownTimeout {
        /// How long we waited.
        timeout: Duration,
        /// Tasks left.
        pending: usize,
    },
    /// `run()` or `start_consuming()` on a bus without a single handler: it
    /// would consume nothing. Usually the crate holding the handlers is not
    /// linked into the binary.
    #[error(
        "no event handler is registered, so this service would consume nothing. \
         If your #[handles] functions and #[projection]s live in another crate, that crate is not \
         linked into this binary: put `eventbus::export_handlers!();` in its lib.rs and build the \
         bus with `Bus::from_env().link(that_crate::eventbus_handlers())` (or write \
         `use that_crate as _;` in main.rs). A service that only publishes uses `build()` and \
         `publish`, not `run()` or `start_consuming()`"
    )]
    NoHandlers,
    /// The metrics and health listener could not be opened.
    #[error("cannot serve metrics and health on {addr}: {source}")]
    Listen {
        /// The address asked for (`EVENTBUS_METRICS_ADDR`).
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Setting up the OpenTelemetry export failed (feature `opentelemetry`).
    #[error("cannot set up OpenTelemetry export: {0}")]
    Telemetry(String),
    /// Waiting for a termination signal failed.
    #[error("cannot listen for shutdown signals: {0}")]
    Signal(#[source] std::io::Error),
    /// The operation needs a transport this bus does not use.
    #[error("{operation} is not available on the {transport} transport")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// The transport in use.
        transport: &'static str,
    },
    /// The configuration asks for something this build of eventbus was
    /// compiled without (a cargo feature).
    #[error("{what} needs eventbus's cargo feature `{feature}`, which this build does not have")]
    FeatureDisabled {
        /// The cargo feature (`kafka`).
        feature: &'static str,
        /// What needed it.
        what: String,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.to_string();
        f.write_str(&message)?;
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            let text = error.to_string();
            // Most messages already end with their cause's text.
            if !message.contains(&text) {
                write!(f, "\n  caused by: {text}")?;
            }
            cause = error.source();
        }
        Ok(())
    }
}

/// An invalid setting, naming the variable (or builder field) and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("invalid value `{value}` for {name}: expected {expected}")]
    InvalidValue {
        /// The environment variable or field.
        name: String,
        /// The value found (redacted if it could hold a secret).
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A broker URL that does not parse.
    #[error("invalid broker URL `{url}` in {name}: {reason}")]
    InvalidUrl {
        /// Where it came from.
        name: String,
        /// The URL, password redacted.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// Conflicts found while building the registry; every one is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RegistryError {
    /// One line per conflict.
    pub conflicts: Vec<String>,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conflict(s) in the event registry:",
            self.conflicts.len()
        )?;
        for conflict in &self.conflicts {
            write!(f, "\n  - {conflict}")?;
        }
        Ok(())
    }
}

/// Why a message could not become an event. Such messages are never dropped silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No `event_type` header and none in the body.
    #[error("message has no `event_type` header or body field")]
    MissingEventType,
    /// No event type of this name is registered.
    #[error("unknown event type `{event_type}`; registered: {known}")]
    UnknownEventType {
        /// The name found.
        event_type: String,
        /// The names registered, comma-separated.
        known: String,
    },
    /// A `content_type` other than JSON.
    #[error("unsupported content type `{found}`, expected `application/json`")]
    WrongContentType {
        /// What the message said.
        found: String,
    },
    /// The body is not UTF-8.
    #[error("body is not UTF-8: {detail}")]
    InvalidUtf8 {
        /// Where it broke.
        detail: String,
    },
    /// The body is not JSON.
    #[error("body is not valid JSON: {detail}")]
    InvalidJson {
        /// What serde_json said.
        detail: String,
    },
    /// The body is JSON but does not match the event type.
    #[error("body does not match event type `{event_type}` ({rust_type}): {detail}")]
    BodyMismatch {
        /// The event type.
        event_type: String,
        /// The Rust type it was decoded into.
        rust_type: &'static str,
        /// What serde said.
        detail: String,
    },
    /// The header names one event type, the body another.
    #[error("header says event type `{expected}` but the body says `{found}`")]
    EventTypeMismatch {
        /// From the header.
        expected: &'static str,
        /// From the body.
        found: String,
    },
    /// An envelope field breaks a rule (e.g. `aggregate_version` 0).
    #[error("invalid envelope: {detail}")]
    InvalidEnvelope {
        /// Which rule.
        detail: String,
    },
}

impl DecodeError {
    /// The variant's name, for `x-dlq-error-type` (`DecodeError::InvalidJson`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingEventType => "DecodeError::MissingEventType",
            Self::UnknownEventType { .. } => "DecodeError::UnknownEventType",
            Self::WrongContentType { .. } => "DecodeError::WrongContentType",
            Self::InvalidUtf8 { .. } => "DecodeError::InvalidUtf8",
            Self::InvalidJson { .. } => "DecodeError::InvalidJson",
            Self::BodyMismatch { .. } => "DecodeError::BodyMismatch",
            Self::EventTypeMismatch { .. } => "DecodeError::EventTypeMismatch",
            Self::InvalidEnvelope { .. } => "DecodeError::InvalidEnvelope",
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler returns on failure. Any error converts into it with `?`.
///
/// Mark an error [`permanent`](HandlerError::permanent) when retrying cannot help
/// (a validation failure, say): the broker transport then skips retries.
pub struct HandlerError {
    source: BoxError,
    error_type: &'static str,
    permanent: bool,
}

/// The last path segment of a type name, without generics: `std::io::Error` -> `Error`.
fn short_type_name<E>() -> &'static str {
    let full = std::any::type_name::<E>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::")
        .next()
        .unwrap_or(base)
        .trim_start_matches('&')
}

impl HandlerError {
    /// A retryable failure.
    pub fn new<E: Into<BoxError>>(source: E) -> Self {
        Self {
            source: source.into(),
            error_type: short_type_name::<E>(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix: the broker transport dead-letters
    /// the message at once.
    pub fn permanent<E: Into<BoxError>>(source: E) -> Self {
        Self {
            permanent: true,
            ..Self::new(source)
        }
    }

    /// The failure of a handler that panicked, from the panic's payload
    /// (`error_type` `Panic`, retryable like an error).
    pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a non-string payload");
        Self {
            source: format!("handler panicked: {message}").into(),
            error_type: "Panic",
            permanent: false,
        }
    }

    /// Was it marked permanent?
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The type name of the underlying error (`x-dlq-error-type`), e.g. `Error`
    /// for `std::io::Error`, `String` for a message.
    pub fn error_type(&self) -> &'static str {
        self.error_type
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(source: E) -> Self {
        Self::new(source)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("source", &self.source)
            .field("permanent", &self.permanent)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

/// What handlers return.
pub type HandlerResult = Result<(), HandlerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_readable_message_with_its_causes() {
        let timeout = Error::ConfirmTimeout {
            event_id: "e-1".into(),
            timeout: Duration::from_secs(30),
        };
        // What `main() -> Result<(), Error>` prints after "Error: ".
        assert_eq!(
            format!("{timeout:?}"),
            "no publisher confirm for event e-1 within 30s"
        );
        let signal = Error::Signal(std::io::Error::other("no signal handler"));
        assert_eq!(
            format!("{signal:?}"),
            "cannot listen for shutdown signals: no signal handler"
        );
        let registry = Error::Registry(RegistryError {
            conflicts: vec!["one".into()],
        });
        assert_eq!(
            format!("{registry:?}"),
            "1 conflict(s) in the event registry:\n  - one"
        );
    }
}
