//! Retries that wait on the broker, and dead letters: the RabbitMQ side of
//! the failure policy.
//!
//! A failed delivery is republished to a delay queue of its own group,
//! `{exchange}.{group}.retry.{n}` (one per attempt, so a message never waits
//! behind a longer delay), with a per-message TTL. When the TTL expires the
//! broker dead-letters it through the default exchange straight back to the
//! group's queue: other groups never see a retry, no consumer sleeps while
//! holding a delivery, and a waiting retry survives a consumer crash.
//! Only the handlers that failed run again (`x-failed-handlers`).
//!
//! After `max_retries` (or at once for a permanent error or an undecodable
//! message) the message is published to the dead-letter exchange with the
//! seed's `x-dlq-*` headers. The original is acked only after the broker
//! confirmed the copy: a crash in between can duplicate, never lose.

use std::time::Duration;

use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};

use crate::config::Config;
use crate::wire::{
    self, HEADER_DLQ_ERROR_TYPE, HEADER_DLQ_HANDLER, HEADER_DLQ_REASON, HEADER_DLQ_RETRY_COUNT,
    HEADER_DLQ_TIMESTAMP, HEADER_FAILED_HANDLERS, HEADER_LAST_RETRY_AT,
    HEADER_ORIGINAL_ROUTING_KEY, HEADER_REPLAYED_FROM_DLQ, HEADER_RETRY_COUNT,
};

use super::amqp::{self, long_string as string};

/// The delay before retry number `retry_count + 1`: eventsource-py's policy,
/// `min(base * 2^retry_count, max)` with symmetric jitter.
pub(crate) fn retry_delay(config: &Config, retry_count: u32) -> Duration {
    let base = config.retry_base_delay.as_secs_f64();
    let nominal = (base * 2f64.powi(i32::try_from(retry_count).unwrap_or(i32::MAX)))
        .min(config.retry_max_delay.as_secs_f64());
    let jitter = config.retry_jitter * (2.0 * unit_random() - 1.0);
    Duration::from_secs_f64((nominal * (1.0 + jitter)).max(0.0))
}

/// A uniform number in [0, 1), from the OS's randomness via a v4 UUID.
fn unit_random() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

fn now() -> String {
    wire::format_time(&Utc::now())
}

fn headers_of(properties: &BasicProperties) -> FieldTable {
    properties.headers().clone().unwrap_or_default()
}

fn with_headers(properties: &BasicProperties, headers: FieldTable) -> BasicProperties {
    properties.clone().with_headers(headers)
}

/// The routing key the message was first published with.
pub(crate) fn original_routing_key(properties: &BasicProperties, delivered_with: &str) -> String {
    amqp::string_header(properties, HEADER_ORIGINAL_ROUTING_KEY)
        .unwrap_or_else(|| delivered_with.to_owned())
}

/// `x-retry-count` of a delivery (any integer width, or a string).
pub(crate) fn retry_count(properties: &BasicProperties) -> u32 {
    amqp::int_header(properties, HEADER_RETRY_COUNT)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// The handlers a redelivery must run, if it carries the list.
pub(crate) fn failed_handlers(properties: &BasicProperties) -> Option<Vec<String>> {
    let value = properties
        .headers()
        .as_ref()?
        .inner()
        .get(HEADER_FAILED_HANDLERS)?;
    let AMQPValue::FieldArray(items) = value else {
        return None;
    };
    Some(
        items
            .as_slice()
            .iter()
            .filter_map(|v| amqp::read_header(v).and_then(|h| h.as_str().map(str::to_owned)))
            .collect(),
    )
}

fn failed_array(handlers: &[String]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        handlers.iter().map(|h| string(h)).collect::<Vec<_>>(),
    ))
}

/// Properties for the retry copy: count + 1, time, original key, what failed, TTL.
pub(crate) fn retry_properties(
    properties: &BasicProperties,
    retry_count: u32,
    original_routing_key: &str,
    failed: &[String],
    delay: Duration,
) -> BasicProperties {
    let mut headers = headers_of(properties);
    headers.insert(
        HEADER_RETRY_COUNT.into(),
        AMQPValue::LongLongInt(i64::from(retry_count) + 1),
    );
    headers.insert(HEADER_LAST_RETRY_AT.into(), string(&now()));
    headers.insert(
        HEADER_ORIGINAL_ROUTING_KEY.into(),
        string(original_routing_key),
    );
    headers.insert(HEADER_FAILED_HANDLERS.into(), failed_array(failed));
    with_headers(properties, headers)
        .with_expiration(ShortString::from(delay.as_millis().to_string()))
}

/// Why a message is dead-lettered.
pub(crate) struct DeadLetter<'a> {
    pub(crate) reason: &'a str,
    pub(crate) error_type: &'a str,
    pub(crate) handler: Option<&'a str>,
    pub(crate) failed: &'a [String],
}

/// Properties for the DLQ copy: the seed's `x-dlq-*` headers added.
pub(crate) fn dead_letter_properties(
    properties: &BasicProperties,
    retry_count: u32,
    original_routing_key: &str,
    why: &DeadLetter<'_>,
) -> BasicProperties {
    let mut headers = headers_of(properties);
    headers.insert(
        HEADER_DLQ_REASON.into(),
        string(&wire::bounded_reason(why.reason)),
    );
    headers.insert(HEADER_DLQ_ERROR_TYPE.into(), string(why.error_type));
    headers.insert(
        HEADER_DLQ_RETRY_COUNT.into(),
        AMQPValue::LongLongInt(i64::from(retry_count)),
    );
    headers.insert(HEADER_DLQ_TIMESTAMP.into(), string(&now()));
    headers.insert(
        HEADER_ORIGINAL_ROUTING_KEY.into(),
        string(original_routing_key),
    );
    if let Some(handler) = why.handler {
        headers.insert(HEADER_DLQ_HANDLER.into(), string(handler));
    }
    if !why.failed.is_empty() {
        headers.insert(HEADER_FAILED_HANDLERS.into(), failed_array(why.failed));
    }
    // A dead letter must not expire on its way: drop any retry TTL.
    let mut out = with_headers(properties, headers);
    if out.expiration().is_some() {
        out = BasicProperties::default()
            .with_headers(headers_of(&out))
            .with_content_type(wire::CONTENT_TYPE.into())
            .with_content_encoding(wire::CONTENT_ENCODING.into())
            .with_delivery_mode(2);
        if let Some(id) = properties.message_id() {
            out = out.with_message_id(id.clone());
        }
        if let Some(ts) = properties.timestamp() {
            out = out.with_timestamp(*ts);
        }
    }
    out
}

/// Properties for a replay from the DLQ: DLQ headers and `x-death` removed,
/// `x-retry-count` 0, `x-replayed-from-dlq` set. `x-failed-handlers` stays,
/// so handlers that had already succeeded do not run twice.
pub(crate) fn replay_properties(properties: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in headers_of(properties).inner() {
        let k = key.as_str();
        let strip = k.starts_with(wire::DLQ_HEADER_PREFIX)
            || k == "x-death"
            || k == "x-first-death-exchange"
            || k == "x-first-death-queue"
            || k == "x-first-death-reason"
            || k == "x-last-death-exchange"
            || k == "x-last-death-queue"
            || k == "x-last-death-reason"
            || k == HEADER_ORIGINAL_ROUTING_KEY
            || k == HEADER_LAST_RETRY_AT;
        if !strip {
            headers.insert(key.clone(), value.clone());
        }
    }
    headers.insert(HEADER_RETRY_COUNT.into(), AMQPValue::LongLongInt(0));
    headers.insert(HEADER_REPLAYED_FROM_DLQ.into(), string(&now()));
    with_headers(properties, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_seed_policy_within_the_jitter() {
        let config = Config {
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            retry_jitter: 0.1,
            ..Config::default()
        };
        for (retry, nominal) in [
            (0, 1.0),
            (1, 2.0),
            (2, 4.0),
            (5, 32.0),
            (6, 60.0),
            (30, 60.0),
        ] {
            for _ in 0..50 {
                let d = retry_delay(&config, retry).as_secs_f64();
                assert!(
                    d >= nominal * 0.9 - 1e-9 && d <= nominal * 1.1 + 1e-9,
                    "{retry}: {d}"
                );
            }
        }
        let no_jitter = Config {
            retry_jitter: 0.0,
            ..config
        };
        assert_eq!(retry_delay(&no_jitter, 2), Duration::from_secs(4));
    }

    #[test]
    fn replay_strips_dead_letter_headers_and_resets_the_count() {
        let mut h = FieldTable::default();
        h.insert("event_type".into(), string("OrderPlaced"));
        h.insert(HEADER_RETRY_COUNT.into(), AMQPValue::LongLongInt(3));
        h.insert(HEADER_DLQ_REASON.into(), string("boom"));
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        h.insert(
            HEADER_FAILED_HANDLERS.into(),
            failed_array(&["a::b".to_owned()]),
        );
        let p = replay_properties(&BasicProperties::default().with_headers(h));
        let headers = p.headers().clone().unwrap_or_default();
        let keys: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "event_type",
                HEADER_FAILED_HANDLERS,
                HEADER_REPLAYED_FROM_DLQ,
                HEADER_RETRY_COUNT,
            ]
        );
        assert_eq!(retry_count(&p), 0);
        assert_eq!(failed_handlers(&p), Some(vec!["a::b".to_owned()]));
    }
}
