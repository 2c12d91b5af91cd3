//! The wire format in AMQP terms: `WireMessage` <-> properties and headers,
//! header values of any width, and deliveries handed to the one decode path.

use std::borrow::Cow;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::envelope::AnyEnvelope;
use crate::error::DecodeError;
use crate::registry::EventTypes;
use crate::wire::{self, HeaderValue, Incoming, WireMessage};

/// Delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// A string as AMQP writes it (a long string, as eventsource-py's aio-pika does).
pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

pub(crate) fn header_value(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Str(s) => long_string(s),
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
        .with_content_type(wire::CONTENT_TYPE.into())
        .with_content_encoding(wire::CONTENT_ENCODING.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(message.message_id.as_str().into())
        .with_timestamp(message.timestamp)
        .with_headers(headers)
}

/// A string header of an incoming message.
pub(crate) fn string_header(properties: &BasicProperties, name: &str) -> Option<String> {
    str_header(properties, name).map(Cow::into_owned)
}

/// A string header of an incoming message, borrowed unless it is not UTF-8.
pub(crate) fn str_header<'p>(properties: &'p BasicProperties, name: &str) -> Option<Cow<'p, str>> {
    raw_header(properties, name).and_then(text)
}

/// A string value, borrowed unless it is not UTF-8.
fn text(value: &AMQPValue) -> Option<Cow<'_, str>> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(Cow::Borrowed(s.as_str())),
        _ => None,
    }
}

/// An integer header of an incoming message (any width, or a string holding one).
pub(crate) fn int_header(properties: &BasicProperties, name: &str) -> Option<i64> {
    let value = raw_header(properties, name)?;
    match text(value) {
        Some(text) => text.trim().parse().ok(),
        None => read_header(value)?.as_int(),
    }
}

fn raw_header<'p>(properties: &'p BasicProperties, name: &str) -> Option<&'p AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

/// Turns a delivery into an event, or says exactly why it cannot.
pub(crate) fn decode(
    event_types: &EventTypes,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<AnyEnvelope, DecodeError> {
    let event_type = str_header(properties, wire::HEADER_EVENT_TYPE);
    wire::decode(
        event_types,
        Incoming {
            content_type: properties.content_type().as_ref().map(|c| c.as_str()),
            event_type: event_type.as_deref(),
            body,
        },
    )
}
