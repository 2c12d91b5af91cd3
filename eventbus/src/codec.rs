//! The wire format shared with eventsource-py: one place, used by every transport.
//!
//! Body: a flat UTF-8 JSON object, the envelope fields first in eventsource-py's
//! order (nulls written), then the event's own fields. Headers and AMQP
//! properties: see [`WireMessage`].

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::{AnyEnvelope, Envelope, EventMeta};
use crate::error::DecodeError;
use crate::event::DomainEvent;

/// `content_type` of every message.
pub const CONTENT_TYPE: &str = "application/json";
/// `content_encoding` of every message.
pub const CONTENT_ENCODING: &str = "utf-8";
/// Header naming the event type; consumers pick the decoder from it.
pub const HEADER_EVENT_TYPE: &str = "event_type";
/// Header with the aggregate type.
pub const HEADER_AGGREGATE_TYPE: &str = "aggregate_type";
/// Header with the aggregate id.
pub const HEADER_AGGREGATE_ID: &str = "aggregate_id";
/// Header with the aggregate version.
pub const HEADER_AGGREGATE_VERSION: &str = "aggregate_version";
/// Header counting retries (0 on first publish).
pub const HEADER_RETRY_COUNT: &str = "x-retry-count";
/// Header with the tenant id, when set.
pub const HEADER_TENANT_ID: &str = "tenant_id";
/// Header with the correlation id.
pub const HEADER_CORRELATION_ID: &str = "correlation_id";
/// Header with the causation id, when set.
pub const HEADER_CAUSATION_ID: &str = "causation_id";

/// A header value, independent of the transport.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    /// A string.
    Str(String),
    /// A signed integer (any AMQP width is read into this).
    Int(i64),
}

impl HeaderValue {
    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::Int(_) => None,
        }
    }

    /// The value as an integer; strings holding an integer are accepted too.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Str(s) => s.trim().parse().ok(),
        }
    }
}

/// One event as it travels: routing key, body, headers and the AMQP properties.
#[derive(Debug, Clone, PartialEq)]
pub struct WireMessage {
    /// `{aggregate_type}.{event_type}`.
    pub routing_key: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Headers, in the order eventsource-py writes them.
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// `message_id`: the event id, lowercase hyphenated.
    pub message_id: String,
    /// `timestamp`: `occurred_at` in POSIX seconds.
    pub timestamp: u64,
}

impl WireMessage {
    /// The header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// Encodes an event for the wire.
pub fn encode(envelope: &AnyEnvelope) -> Result<WireMessage, serde_json::Error> {
    let meta = envelope.meta();
    let body = envelope.encode_body()?;
    Ok(WireMessage {
        routing_key: meta.routing_key(),
        body,
        headers: headers(meta),
        message_id: meta.event_id.to_string(),
        timestamp: u64::try_from(meta.occurred_at.timestamp()).unwrap_or(0),
    })
}

/// The headers eventsource-py writes for an event, in its order.
pub fn headers(meta: &EventMeta) -> Vec<(&'static str, HeaderValue)> {
    let mut headers = vec![
        (HEADER_EVENT_TYPE, HeaderValue::Str(meta.event_type.to_string())),
        (
            HEADER_AGGREGATE_TYPE,
            HeaderValue::Str(meta.aggregate_type.to_string()),
        ),
        (
            HEADER_AGGREGATE_ID,
            HeaderValue::Str(meta.aggregate_id.to_string()),
        ),
        (
            HEADER_AGGREGATE_VERSION,
            HeaderValue::Int(i64::try_from(meta.aggregate_version).unwrap_or(i64::MAX)),
        ),
        (HEADER_RETRY_COUNT, HeaderValue::Int(0)),
    ];
    if let Some(tenant) = meta.tenant_id {
        headers.push((HEADER_TENANT_ID, HeaderValue::Str(tenant.to_string())));
    }
    headers.push((
        HEADER_CORRELATION_ID,
        HeaderValue::Str(meta.correlation_id.to_string()),
    ));
    if let Some(causation) = meta.causation_id {
        headers.push((HEADER_CAUSATION_ID, HeaderValue::Str(causation.to_string())));
    }
    headers
}

/// Formats a time as eventsource-py (pydantic) does: `2026-01-15T10:30:00.123456Z`,
/// without the fraction when it is zero.
pub fn format_time(at: &DateTime<Utc>) -> String {
    let format = if at.nanosecond() / 1_000 == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    at.to_rfc3339_opts(format, true)
}

fn serialize_time<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(at))
}

fn deserialize_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = Cow::<'de, str>::deserialize(d)?;
    parse_time(&text).map_err(serde::de::Error::custom)
}

/// Parses an ISO-8601 time; a time without offset is taken as UTC (as pydantic does).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| format!("`{text}` is not an ISO-8601 time: {e}"))
}

#[derive(Serialize)]
struct BodyOut<'a, E> {
    event_id: &'a Uuid,
    event_type: &'a str,
    event_version: u32,
    #[serde(serialize_with = "serialize_time")]
    occurred_at: &'a DateTime<Utc>,
    aggregate_id: &'a Uuid,
    aggregate_type: &'a str,
    aggregate_version: u64,
    tenant_id: &'a Option<Uuid>,
    actor_id: &'a Option<String>,
    correlation_id: &'a Uuid,
    causation_id: &'a Option<Uuid>,
    metadata: &'a Map<String, Value>,
    #[serde(flatten)]
    event: &'a E,
}

/// Encodes the JSON body of an event.
pub fn encode_body<E: Serialize>(meta: &EventMeta, event: &E) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(512);
    BodyOut {
        event_id: &meta.event_id,
        event_type: &meta.event_type,
        event_version: meta.event_version,
        occurred_at: &meta.occurred_at,
        aggregate_id: &meta.aggregate_id,
        aggregate_type: &meta.aggregate_type,
        aggregate_version: meta.aggregate_version,
        tenant_id: &meta.tenant_id,
        actor_id: &meta.actor_id,
        correlation_id: &meta.correlation_id,
        causation_id: &meta.causation_id,
        metadata: &meta.metadata,
        event,
    }
    .serialize(&mut serde_json::Serializer::new(&mut out))?;
    Ok(out)
}

fn default_version() -> u32 {
    1
}
fn default_aggregate_version() -> u64 {
    1
}

#[derive(Deserialize)]
struct BodyIn<E> {
    #[serde(default = "Uuid::new_v4")]
    event_id: Uuid,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default = "default_version")]
    event_version: u32,
    #[serde(deserialize_with = "deserialize_time", default = "Utc::now")]
    occurred_at: DateTime<Utc>,
    aggregate_id: Uuid,
    aggregate_type: String,
    #[serde(default = "default_aggregate_version")]
    aggregate_version: u64,
    #[serde(default)]
    tenant_id: Option<Uuid>,
    #[serde(default)]
    actor_id: Option<String>,
    #[serde(default = "Uuid::new_v4")]
    correlation_id: Uuid,
    #[serde(default)]
    causation_id: Option<Uuid>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(flatten)]
    event: E,
}

/// Decodes the JSON body of an `E`.
pub fn decode_body<E: DomainEvent>(body: &[u8]) -> Result<Envelope<E>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::InvalidUtf8 {
        detail: e.to_string(),
    })?;
    let parsed: BodyIn<E> = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            DecodeError::InvalidJson {
                detail: e.to_string(),
            }
        } else {
            DecodeError::BodyMismatch {
                event_type: E::EVENT_TYPE.to_owned(),
                rust_type: std::any::type_name::<E>(),
                detail: e.to_string(),
            }
        }
    })?;
    if let Some(found) = &parsed.event_type
        && found != E::EVENT_TYPE
    {
        return Err(DecodeError::EventTypeMismatch {
            expected: E::EVENT_TYPE,
            found: found.clone(),
        });
    }
    let invalid = |detail: String| DecodeError::InvalidEnvelope { detail };
    if parsed.event_version == 0 {
        return Err(invalid("event_version must be >= 1, got 0".into()));
    }
    if parsed.aggregate_version == 0 {
        return Err(invalid("aggregate_version must be >= 1, got 0".into()));
    }
    let aggregate_type = if parsed.aggregate_type == E::AGGREGATE_TYPE {
        Cow::Borrowed(E::AGGREGATE_TYPE)
    } else {
        Cow::Owned(parsed.aggregate_type)
    };
    Ok(Envelope {
        meta: EventMeta {
            event_id: parsed.event_id,
            event_type: Cow::Borrowed(E::EVENT_TYPE),
            event_version: parsed.event_version,
            occurred_at: parsed.occurred_at,
            aggregate_id: parsed.aggregate_id,
            aggregate_type,
            aggregate_version: parsed.aggregate_version,
            tenant_id: parsed.tenant_id,
            actor_id: parsed.actor_id,
            correlation_id: parsed.correlation_id,
            causation_id: parsed.causation_id,
            metadata: parsed.metadata.unwrap_or_default(),
        },
        event: parsed.event,
    })
}

/// Decodes an `E` into an [`AnyEnvelope`]; the function every event registration points at.
pub(crate) fn decode_any<E: DomainEvent>(body: &[u8]) -> Result<AnyEnvelope, DecodeError> {
    decode_body::<E>(body).map(AnyEnvelope::from)
}

/// Checks an envelope before it is published.
pub(crate) fn validate(meta: &EventMeta) -> Result<(), String> {
    if meta.aggregate_version == 0 {
        return Err(format!(
            "aggregate_version of {} {} must be >= 1, got 0",
            meta.event_type, meta.event_id
        ));
    }
    if meta.event_version == 0 {
        return Err(format!(
            "event_version of {} {} must be >= 1, got 0",
            meta.event_type, meta.event_id
        ));
    }
    Ok(())
}
