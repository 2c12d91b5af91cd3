//! The wire format shared with eventsource-py: one place, used by every transport.
//!
//! Body: a flat UTF-8 JSON object, the envelope fields first in eventsource-py's
//! order (nulls written), then the event's own fields. Headers: see
//! [`WireMessage`]; every header name any transport reads or writes is defined
//! here. Incoming messages of every transport are decoded by [`decode`].

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::{AnyEnvelope, Envelope, EventMeta};
use crate::error::DecodeError;
use crate::event::DomainEvent;
use crate::registry::EventTypes;

/// `content_type` of every message.
pub(crate) const CONTENT_TYPE: &str = "application/json";
/// `content_encoding` of every message.
pub(crate) const CONTENT_ENCODING: &str = "utf-8";
/// Header naming the event type; consumers pick the decoder from it.
pub(crate) const HEADER_EVENT_TYPE: &str = "event_type";
/// Header with the aggregate type.
pub(crate) const HEADER_AGGREGATE_TYPE: &str = "aggregate_type";
/// Header with the aggregate id.
pub(crate) const HEADER_AGGREGATE_ID: &str = "aggregate_id";
/// Header with the aggregate version.
pub(crate) const HEADER_AGGREGATE_VERSION: &str = "aggregate_version";
/// Header counting retries (0 on first publish).
pub(crate) const HEADER_RETRY_COUNT: &str = "x-retry-count";
/// Header with the tenant id, when set.
pub(crate) const HEADER_TENANT_ID: &str = "tenant_id";
/// Header with the correlation id.
pub(crate) const HEADER_CORRELATION_ID: &str = "correlation_id";
/// Header with the causation id, when set.
pub(crate) const HEADER_CAUSATION_ID: &str = "causation_id";
/// Header: when the last retry was scheduled.
pub(crate) const HEADER_LAST_RETRY_AT: &str = "x-last-retry-at";
/// Header: the routing key the event was first published with.
pub(crate) const HEADER_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// Header: the handlers that still have to succeed (eventbus only).
pub(crate) const HEADER_FAILED_HANDLERS: &str = "x-failed-handlers";
/// Header: how often a member of the group that could not handle the event
/// left it to another member (eventbus only; separate from `x-retry-count`).
pub(crate) const HEADER_UNHANDLED_COUNT: &str = "x-unhandled-count";
/// RabbitMQ's sender-selected distribution: extra queues (by name, through
/// the default exchange) a message goes to; the broker removes it on delivery.
pub(crate) const HEADER_BCC: &str = "BCC";
/// Header: why the message was dead-lettered (at most [`MAX_REASON`] bytes).
pub(crate) const HEADER_DLQ_REASON: &str = "x-dlq-reason";
/// Header: the error's type.
pub(crate) const HEADER_DLQ_ERROR_TYPE: &str = "x-dlq-error-type";
/// Header: retries before it was dead-lettered.
pub(crate) const HEADER_DLQ_RETRY_COUNT: &str = "x-dlq-retry-count";
/// Header: when it was dead-lettered.
pub(crate) const HEADER_DLQ_TIMESTAMP: &str = "x-dlq-timestamp";
/// Header: the handler that failed last.
pub(crate) const HEADER_DLQ_HANDLER: &str = "x-dlq-handler";
/// Header: when a message was replayed from the DLQ.
pub(crate) const HEADER_REPLAYED_FROM_DLQ: &str = "x-replayed-from-dlq";
/// Prefix of every dead-letter header.
pub(crate) const DLQ_HEADER_PREFIX: &str = "x-dlq-";

/// `x-dlq-reason` is cut to this many bytes: a long error must never exceed the frame size.
pub(crate) const MAX_REASON: usize = 1024;

/// Cuts `reason` to at most [`MAX_REASON`] bytes on a character boundary.
pub(crate) fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_owned();
    }
    const MARK: &str = "... (truncated)";
    let mut end = MAX_REASON - MARK.len();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &reason[..end])
}

/// A header value, independent of the transport.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HeaderValue {
    /// A string.
    Str(String),
    /// A signed integer (any AMQP width is read into this).
    Int(i64),
}

impl HeaderValue {
    /// The value as a string, if it is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::Int(_) => None,
        }
    }

    /// The value as an integer; strings holding an integer are accepted too.
    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Str(s) => s.trim().parse().ok(),
        }
    }
}

/// One event as it travels: routing key, body, headers and the AMQP properties.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireMessage {
    /// `{aggregate_type}.{event_type}`.
    pub(crate) routing_key: String,
    /// The JSON body.
    pub(crate) body: Vec<u8>,
    /// Headers, in the order eventsource-py writes them.
    pub(crate) headers: Vec<(&'static str, HeaderValue)>,
    /// `message_id`: the event id, lowercase hyphenated.
    pub(crate) message_id: String,
    /// `timestamp`: `occurred_at` in POSIX seconds.
    pub(crate) timestamp: u64,
}

impl WireMessage {
    /// The header `name`, if present.
    pub(crate) fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Encodes an event for the wire.
pub(crate) fn encode(envelope: &AnyEnvelope) -> Result<WireMessage, serde_json::Error> {
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
pub(crate) fn headers(meta: &EventMeta) -> Vec<(&'static str, HeaderValue)> {
    let mut headers = vec![
        (
            HEADER_EVENT_TYPE,
            HeaderValue::Str(meta.event_type.to_string()),
        ),
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

/// Redis stream entry field: the event id.
pub(crate) const FIELD_EVENT_ID: &str = "event_id";
/// Redis stream entry field: the whole event JSON (the body).
pub(crate) const FIELD_PAYLOAD: &str = "payload";
/// Redis stream entry field: `occurred_at` in Python's `isoformat()`.
pub(crate) const FIELD_OCCURRED_AT: &str = "occurred_at";
/// Redis DLQ entry field (eventsource-py): the entry id in the main stream.
pub(crate) const FIELD_ORIGINAL_MESSAGE_ID: &str = "original_message_id";
/// Redis DLQ entry field (eventsource-py): retries before dead-lettering.
pub(crate) const FIELD_RETRY_COUNT: &str = "retry_count";
/// Redis DLQ entry field (eventsource-py): when it was dead-lettered.
pub(crate) const FIELD_DLQ_TIMESTAMP: &str = "dlq_timestamp";
/// Redis DLQ entry field (eventbus only): why, at most [`MAX_REASON`] bytes.
pub(crate) const FIELD_DLQ_REASON: &str = "dlq_reason";
/// Redis DLQ entry field (eventbus only): the error's type.
pub(crate) const FIELD_DLQ_ERROR_TYPE: &str = "dlq_error_type";
/// Redis DLQ entry field (eventbus only): the consumer group that failed.
pub(crate) const FIELD_DLQ_GROUP: &str = "dlq_group";
/// Redis DLQ entry field (eventbus only): the handler that failed last.
pub(crate) const FIELD_DLQ_HANDLER: &str = "dlq_handler";
/// Redis entry field (eventbus only): JSON array of the handlers that still
/// have to succeed (DLQ entries and their replays).
pub(crate) const FIELD_FAILED_HANDLERS: &str = "failed_handlers";
/// Redis replay entry field (eventbus only): when it was replayed from the DLQ.
pub(crate) const FIELD_REPLAYED_FROM_DLQ: &str = "replayed_from_dlq";

/// The fields of eventsource-py's `XADD`, in its order, all strings.
pub(crate) fn stream_fields<'b>(
    meta: &EventMeta,
    body: &'b [u8],
) -> [(&'static str, Cow<'b, [u8]>); 7] {
    let text = |s: String| Cow::Owned(s.into_bytes());
    [
        (FIELD_EVENT_ID, text(meta.event_id.to_string())),
        (HEADER_EVENT_TYPE, text(meta.event_type.to_string())),
        (HEADER_AGGREGATE_ID, text(meta.aggregate_id.to_string())),
        (HEADER_AGGREGATE_TYPE, text(meta.aggregate_type.to_string())),
        (
            HEADER_TENANT_ID,
            text(meta.tenant_id.map(|t| t.to_string()).unwrap_or_default()),
        ),
        (FIELD_OCCURRED_AT, text(python_isoformat(&meta.occurred_at))),
        // The body is JSON text already: written as it is, not copied.
        (FIELD_PAYLOAD, Cow::Borrowed(body)),
    ]
}

/// Python's `datetime.isoformat()` of an aware UTC time:
/// `2026-01-15T10:30:00.123456+00:00`, without the fraction when it is zero.
pub(crate) fn python_isoformat(at: &DateTime<Utc>) -> String {
    let format = if at.nanosecond() / 1_000 == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    // RFC 3339 with a numeric offset is Python's form (and, unlike a
    // strftime pattern, is not parsed again for every event).
    at.to_rfc3339_opts(format, false)
}

/// Formats a time as eventsource-py (pydantic) does: `2026-01-15T10:30:00.123456Z`,
/// without the fraction when it is zero.
pub(crate) fn format_time(at: &DateTime<Utc>) -> String {
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
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
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
pub(crate) fn encode_body<E: Serialize>(
    meta: &EventMeta,
    event: &E,
) -> Result<Vec<u8>, serde_json::Error> {
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

/// The envelope's fields of a body.
#[derive(Deserialize)]
struct MetaIn<'a> {
    #[serde(default = "Uuid::new_v4")]
    event_id: Uuid,
    #[serde(default, borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(default = "default_version")]
    event_version: u32,
    #[serde(deserialize_with = "deserialize_time", default = "Utc::now")]
    occurred_at: DateTime<Utc>,
    aggregate_id: Uuid,
    #[serde(borrow)]
    aggregate_type: Cow<'a, str>,
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
}

/// A body read through flatten: the envelope's fields, and the event's from
/// what remains (serde buffers every field of the event to do so).
#[derive(Deserialize)]
struct BodyIn<'a, E> {
    #[serde(flatten, borrow)]
    meta: MetaIn<'a>,
    #[serde(flatten)]
    event: E,
}

/// Decodes the JSON body of an `E`.
pub(crate) fn decode_body<E: DomainEvent>(body: &[u8]) -> Result<Envelope<E>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::InvalidUtf8 {
        detail: e.to_string(),
    })?;
    match one_pass::read::<E>(text) {
        Some((meta, event)) => envelope(meta, event),
        None => decode_flattened(text),
    }
}

/// [`decode_body`]'s way when [`one_pass::read`] fails: through
/// `#[serde(flatten)]` (about half as fast), which decides, and words the
/// error, as before.
fn decode_flattened<E: DomainEvent>(text: &str) -> Result<Envelope<E>, DecodeError> {
    let body = serde_json::from_str::<BodyIn<'_, E>>(text).map_err(|e| {
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
    envelope(body.meta, body.event)
}

/// The envelope of `event`, once its fields are checked.
fn envelope<E: DomainEvent>(parsed: MetaIn<'_>, event: E) -> Result<Envelope<E>, DecodeError> {
    if let Some(found) = &parsed.event_type
        && found != E::EVENT_TYPE
    {
        return Err(DecodeError::EventTypeMismatch {
            expected: E::EVENT_TYPE,
            found: found.to_string(),
        });
    }
    check_versions(parsed.event_version, parsed.aggregate_version)
        .map_err(|detail| DecodeError::InvalidEnvelope { detail })?;
    let aggregate_type = if parsed.aggregate_type == E::AGGREGATE_TYPE {
        Cow::Borrowed(E::AGGREGATE_TYPE)
    } else {
        Cow::Owned(parsed.aggregate_type.into_owned())
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
        event,
    })
}

/// Decodes an `E` into an [`AnyEnvelope`]; the function every event registration points at.
pub(crate) fn decode_any<E: DomainEvent>(body: &[u8]) -> Result<AnyEnvelope, DecodeError> {
    decode_body::<E>(body).map(AnyEnvelope::from)
}

/// The trace headers every message of one publish call carries: the current
/// trace context (`EVENTBUS_ENABLE_TRACING`), read once per call rather than
/// once per event; empty when tracing is off or there is no context.
pub(crate) fn publish_trace(enabled: bool) -> Vec<(&'static str, HeaderValue)> {
    if enabled {
        trace::inject(&trace::current_context())
    } else {
        Vec::new()
    }
}

/// Checks and encodes an event about to be published: what every transport
/// does first. `trace` is the call's [`publish_trace`].
pub(crate) fn encode_for_publish(
    event: &AnyEnvelope,
    trace: &[(&'static str, HeaderValue)],
) -> Result<WireMessage, crate::Error> {
    check_for_publish(event)?;
    let mut message = encode(event).map_err(|source| encode_error(event, source))?;
    message.headers.extend_from_slice(trace);
    Ok(message)
}

/// [`encode_for_publish`] for a transport that carries the metadata in
/// fields of its own (Redis, Kafka): only the checked JSON body, without
/// building AMQP headers it would not send.
pub(crate) fn encode_body_for_publish(event: &AnyEnvelope) -> Result<Vec<u8>, crate::Error> {
    check_for_publish(event)?;
    event
        .encode_body()
        .map_err(|source| encode_error(event, source))
}

fn check_for_publish(event: &AnyEnvelope) -> Result<(), crate::Error> {
    let meta = event.meta();
    check_versions(meta.event_version, meta.aggregate_version).map_err(|detail| {
        crate::Error::InvalidEnvelope {
            event_type: meta.event_type().to_owned(),
            event_id: meta.event_id.to_string(),
            detail,
        }
    })
}

fn encode_error(event: &AnyEnvelope, source: serde_json::Error) -> crate::Error {
    crate::Error::Encode {
        event_type: event.meta().event_type().to_owned(),
        source,
    }
}

/// The envelope rule eventsource-py's model enforces, checked on publish and on decode.
fn check_versions(event_version: u32, aggregate_version: u64) -> Result<(), String> {
    if event_version == 0 {
        return Err("event_version must be >= 1, got 0".to_owned());
    }
    if aggregate_version == 0 {
        return Err("aggregate_version must be >= 1, got 0".to_owned());
    }
    Ok(())
}

/// What a transport knows of an incoming message before decoding it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    /// The content type, when the transport carries one.
    pub(crate) content_type: Option<&'a str>,
    /// The `event_type` header, when present.
    pub(crate) event_type: Option<&'a str>,
    /// The body.
    pub(crate) body: &'a [u8],
}

/// Turns an incoming message into an event, or says exactly why it cannot:
/// the one decode path of every transport.
pub(crate) fn decode(
    event_types: &EventTypes,
    incoming: Incoming<'_>,
) -> Result<AnyEnvelope, DecodeError> {
    if let Some(content_type) = incoming.content_type {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case(CONTENT_TYPE) {
            return Err(DecodeError::WrongContentType {
                found: content_type.to_owned(),
            });
        }
    }
    let event_type = match incoming.event_type {
        Some(event_type) => Cow::Borrowed(event_type),
        // eventsource-py always sets the header; without it, fall back to the body.
        None => Cow::Owned(body_event_type(incoming.body)?.ok_or(DecodeError::MissingEventType)?),
    };
    event_types.decode(&event_type, incoming.body)
}

fn body_event_type(body: &[u8]) -> Result<Option<String>, DecodeError> {
    #[derive(Deserialize)]
    struct Probe {
        event_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .map(|p| p.event_type)
        .map_err(|e| DecodeError::InvalidJson {
            detail: e.to_string(),
        })
}

mod one_pass;
pub(crate) mod trace;

#[cfg(test)]
mod golden_tests;

#[cfg(test)]
mod redis_field_tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn occurred_at_is_python_isoformat() {
        let t = Utc
            .with_ymd_and_hms(2026, 1, 15, 10, 30, 0)
            .single()
            .expect("valid");
        assert_eq!(python_isoformat(&t), "2026-01-15T10:30:00+00:00");
        let t = t + chrono::Duration::microseconds(123_456);
        assert_eq!(python_isoformat(&t), "2026-01-15T10:30:00.123456+00:00");
        let t = Utc
            .with_ymd_and_hms(2026, 1, 15, 10, 30, 0)
            .single()
            .expect("valid")
            + chrono::Duration::microseconds(5);
        assert_eq!(python_isoformat(&t), "2026-01-15T10:30:00.000005+00:00");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainEvent;
    use chrono::TimeZone;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
    #[event(aggregate = "Order")]
    struct OrderPlaced {
        customer_id: String,
        total_amount: f64,
    }

    fn uuid(s: &str) -> Uuid {
        Uuid::parse_str(s).expect("valid uuid")
    }

    fn sample() -> Envelope<OrderPlaced> {
        Envelope::new(
            uuid("83b41aa6-b88a-49c8-811d-1eff6f1e7f42"),
            OrderPlaced {
                customer_id: "Zoë".into(),
                total_amount: 1.5,
            },
        )
        .with_event_id(uuid("f9b98ff4-654e-405f-9ea3-a85ae7cd1165"))
        .with_correlation_id(uuid("ebeda83f-2d26-4203-a51a-e21cc068e3ab"))
        .occurred_at(
            Utc.with_ymd_and_hms(2026, 11, 23, 16, 15, 43)
                .single()
                .expect("valid time")
                + chrono::Duration::microseconds(366_655),
        )
    }

    #[test]
    fn body_matches_eventsource_py_byte_for_byte() {
        // Written by eventsource-py 0.15.1 (`model_dump_json()`) for the same event.
        let expected = r#"{"event_id":"f9b98ff4-654e-405f-9ea3-a85ae7cd1165","event_type":"OrderPlaced","event_version":1,"occurred_at":"2026-11-23T16:15:43.366655Z","aggregate_id":"83b41aa6-b88a-49c8-811d-1eff6f1e7f42","aggregate_type":"Order","aggregate_version":1,"tenant_id":null,"actor_id":null,"correlation_id":"ebeda83f-2d26-4203-a51a-e21cc068e3ab","causation_id":null,"metadata":{},"customer_id":"Zoë","total_amount":1.5}"#;
        let event = sample();
        let body = encode_body(event.meta(), event.event()).expect("encodes");
        assert_eq!(std::str::from_utf8(&body).expect("utf-8"), expected);
    }

    #[test]
    fn whole_seconds_have_no_fraction_like_pydantic() {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(format_time(&at), "2026-01-01T00:00:00Z");
        let at = at + chrono::Duration::microseconds(120);
        assert_eq!(format_time(&at), "2026-01-01T00:00:00.000120Z");
    }

    #[test]
    fn every_field_set_round_trips() {
        let cause = sample();
        let event = Envelope::new(
            uuid("83b41aa6-b88a-49c8-811d-1eff6f1e7f42"),
            OrderPlaced {
                customer_id: "C-2".into(),
                total_amount: 1e-7,
            },
        )
        .aggregate_version(7)
        .event_version(3)
        .with_tenant(uuid("11111111-2222-4333-8444-555555555555"))
        .with_actor("user:ünïcode")
        .with_metadata("source", "test")
        .with_metadata("nested", serde_json::json!({"a": [1, 2.5, null]}))
        .caused_by(&cause);
        let body = encode_body(event.meta(), event.event()).expect("encodes");
        let back = decode_body::<OrderPlaced>(&body).expect("decodes");
        assert_eq!(back, event);
        assert_eq!(back.meta().causation_id(), Some(cause.meta().event_id()));
        assert_eq!(back.meta().correlation_id(), cause.meta().correlation_id());
    }

    #[test]
    fn decodes_a_python_body_with_every_field() {
        let body = r#"{"event_id":"b97dfc38-2782-4b9f-b091-0fbc104dabce","event_type":"OrderPlaced","event_version":2,"occurred_at":"2026-01-01T00:00:00Z","aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Order","aggregate_version":4,"tenant_id":"11111111-2222-4333-8444-555555555555","actor_id":"alice","correlation_id":"b7f0ad93-d836-4d79-a0fc-d4ebd2404a20","causation_id":"f9b98ff4-654e-405f-9ea3-a85ae7cd1165","metadata":{"a":"é"},"customer_id":"c","total_amount":1.0}"#;
        let e = decode_body::<OrderPlaced>(body.as_bytes()).expect("decodes");
        let m = e.meta();
        assert_eq!(m.event_version(), 2);
        assert_eq!(m.aggregate_version(), 4);
        assert_eq!(m.actor_id(), Some("alice"));
        assert_eq!(
            m.tenant_id(),
            Some(uuid("11111111-2222-4333-8444-555555555555"))
        );
        assert_eq!(
            m.causation_id(),
            Some(uuid("f9b98ff4-654e-405f-9ea3-a85ae7cd1165"))
        );
        assert_eq!(m.metadata().get("a"), Some(&serde_json::json!("é")));
        assert_eq!(format_time(&m.occurred_at()), "2026-01-01T00:00:00Z");
        assert!((e.total_amount - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn headers_follow_eventsource_py() {
        let event = sample().aggregate_version(3);
        let h = headers(event.meta());
        let names: Vec<_> = h.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "event_type",
                "aggregate_type",
                "aggregate_id",
                "aggregate_version",
                "x-retry-count",
                "correlation_id"
            ]
        );
        assert_eq!(h[3].1, HeaderValue::Int(3));
        assert_eq!(h[4].1, HeaderValue::Int(0));
        let wire = encode(&AnyEnvelope::from(event)).expect("encodes");
        assert_eq!(wire.routing_key, "Order.OrderPlaced");
        assert_eq!(wire.message_id, "f9b98ff4-654e-405f-9ea3-a85ae7cd1165");
        assert_eq!(wire.timestamp, 1_795_450_543);
    }

    #[test]
    fn reasons_are_bounded_on_a_char_boundary() {
        assert_eq!(bounded_reason("short"), "short");
        let long = "é".repeat(2000);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON, "{}", cut.len());
        assert!(cut.ends_with("(truncated)"));
    }

    /// One pass gives what `#[serde(flatten)]` gives.
    #[test]
    fn one_pass_reads_what_flatten_reads() {
        let cause = sample();
        let full = Envelope::new(
            uuid("83b41aa6-b88a-49c8-811d-1eff6f1e7f42"),
            OrderPlaced {
                customer_id: "C-\"2\"\n\u{e9}".into(),
                total_amount: -0.0,
            },
        )
        .aggregate_version(7)
        .with_tenant(uuid("11111111-2222-4333-8444-555555555555"))
        .with_actor("user:\"quoted\"")
        .with_metadata("nested", serde_json::json!({"a": [1, 2.5, null]}))
        .caused_by(&cause);
        let mut bodies = vec![
            encode_body(cause.meta(), cause.event()).expect("encodes"),
            encode_body(full.meta(), full.event()).expect("encodes"),
        ];
        // eventsource-py's order, another aggregate type, escapes in the envelope's strings.
        bodies.push(br#"{"event_id":"b97dfc38-2782-4b9f-b091-0fbc104dabce","event_type":"Order\u0050laced","event_version":2,"occurred_at":"2026-01-01T00:00:00","aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Legacy\tOrder","aggregate_version":4,"tenant_id":null,"actor_id":null,"correlation_id":"b7f0ad93-d836-4d79-a0fc-d4ebd2404a20","causation_id":null,"metadata":{},"customer_id":"c","total_amount":1.0,"added_later":[1]}"#.to_vec());
        for body in &bodies {
            let text = std::str::from_utf8(body).expect("utf-8");
            assert!(one_pass::read::<OrderPlaced>(text).is_some(), "{text}");
            assert_eq!(
                decode_body::<OrderPlaced>(body).expect("decodes"),
                decode_flattened::<OrderPlaced>(text).expect("decodes"),
                "{text}"
            );
        }
        // What one pass cannot read, flatten decides, as before.
        let twice = br#"{"aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Order","customer_id":"c","total_amount":1}"#;
        assert!(
            one_pass::read::<OrderPlaced>(std::str::from_utf8(twice).expect("utf-8")).is_none()
        );
        let err = decode_body::<OrderPlaced>(twice).expect_err("a field twice");
        assert!(
            err.to_string().contains("duplicate field `aggregate_id`"),
            "{err}"
        );
        let legacy = decode_body::<OrderPlaced>(&bodies[2]).expect("decodes");
        assert_eq!(legacy.meta().aggregate_type(), "Legacy\tOrder");
        assert_eq!(
            decode_body::<OrderPlaced>(&bodies[1]).expect("decodes"),
            full
        );
    }

    /// An event type that denies unknown fields decodes, as through
    /// `#[serde(flatten)]`, which hands it only its own fields.
    #[test]
    fn an_event_that_denies_unknown_fields_decodes() {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
        #[event(aggregate = "Order")]
        #[serde(deny_unknown_fields)]
        struct Strict {
            customer_id: String,
        }
        let event = Envelope::new(
            uuid("83b41aa6-b88a-49c8-811d-1eff6f1e7f42"),
            Strict {
                customer_id: "c".into(),
            },
        );
        let body = encode_body(event.meta(), event.event()).expect("encodes");
        assert_eq!(decode_body::<Strict>(&body).expect("decodes"), event);
        let text = String::from_utf8(body).expect("utf-8");
        let extra = format!(r#"{},"extra":1}}"#, &text[..text.len() - 1]);
        // Nor does either refuse fields added by a later version.
        assert_eq!(
            decode_body::<Strict>(extra.as_bytes()).expect("decodes"),
            decode_flattened::<Strict>(&extra).expect("decodes")
        );
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let err = decode_body::<OrderPlaced>(b"{not json").expect_err("invalid");
        assert!(matches!(err, DecodeError::InvalidJson { .. }), "{err}");
        let err = decode_body::<OrderPlaced>(br#"{"aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Order","customer_id":"c"}"#)
            .expect_err("missing field");
        assert!(err.to_string().contains("total_amount"), "{err}");
        assert!(err.to_string().contains("OrderPlaced"), "{err}");
        let err = decode_body::<OrderPlaced>(br#"{"event_type":"OrderShipped","aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Order","customer_id":"c","total_amount":1}"#)
            .expect_err("wrong type");
        assert!(
            matches!(err, DecodeError::EventTypeMismatch { .. }),
            "{err}"
        );
        let err = decode_body::<OrderPlaced>(br#"{"aggregate_version":0,"aggregate_id":"f87dabfc-43c9-461c-8a94-9ed40c65ca5b","aggregate_type":"Order","customer_id":"c","total_amount":1}"#)
            .expect_err("version 0");
        assert!(err.to_string().contains("aggregate_version"), "{err}");
        let err = decode_body::<OrderPlaced>(&[0xff, 0xfe]).expect_err("not utf-8");
        assert!(matches!(err, DecodeError::InvalidUtf8 { .. }), "{err}");
    }
}
