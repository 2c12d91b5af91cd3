//! WireMessage <-> AMQP properties and headers; incoming messages -> events.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::codec::{self, HeaderValue, WireMessage};
use crate::envelope::AnyEnvelope;
use crate::error::DecodeError;
use crate::registry::EventTypes;

/// Delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

pub(crate) fn header_value(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
    }
}

/// Reads a header the way eventsource-py may have written it: any integer width, or a string.
pub(crate) fn read_header(value: &AMQPValue) -> Option<HeaderValue> {
    Some(match value {
        AMQPValue::LongString(s) => {
            HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        _ => return None,
    })
}

pub(crate) fn properties(message: &WireMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(ShortString::from(*name), header_value(value));
    }
    BasicProperties::default()
        .with_content_type(codec::CONTENT_TYPE.into())
        .with_content_encoding(codec::CONTENT_ENCODING.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(message.message_id.as_str().into())
        .with_timestamp(message.timestamp)
        .with_headers(headers)
}

/// A string header of an incoming message.
pub(crate) fn string_header(properties: &BasicProperties, name: &str) -> Option<String> {
    header(properties, name).and_then(|v| v.as_str().map(str::to_owned))
}

/// An integer header of an incoming message (any width, or a string holding one).
pub(crate) fn int_header(properties: &BasicProperties, name: &str) -> Option<i64> {
    header(properties, name).and_then(|v| v.as_int())
}

fn header(properties: &BasicProperties, name: &str) -> Option<HeaderValue> {
    properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)
        .and_then(read_header)
}

/// Turns a delivery into an event, or says exactly why it cannot.
pub(crate) fn decode(
    event_types: &EventTypes,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<AnyEnvelope, DecodeError> {
    if let Some(content_type) = properties.content_type() {
        let content_type = content_type.as_str();
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case(codec::CONTENT_TYPE) {
            return Err(DecodeError::WrongContentType {
                found: content_type.to_owned(),
            });
        }
    }
    let event_type = match string_header(properties, codec::HEADER_EVENT_TYPE) {
        Some(event_type) => event_type,
        // eventsource-py always sets the header; without it, fall back to the body.
        None => body_event_type(body)?.ok_or(DecodeError::MissingEventType)?,
    };
    event_types.decode(&event_type, body)
}

fn body_event_type(body: &[u8]) -> Result<Option<String>, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        event_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .map(|p| p.event_type)
        .map_err(|e| DecodeError::InvalidJson {
            detail: e.to_string(),
        })
}
