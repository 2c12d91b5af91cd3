//! Retries that wait on the broker, and dead letters: the RabbitMQ side of
//! the failure policy.
//!
//! A failed delivery is republished to a delay queue of its own group,
//! `{exchange}.{group}.delay.{n}` (one per attempt, so a message never waits
//! behind a longer delay), with a per-message TTL. When the TTL expires the
//! broker dead-letters it through the group's fanout exchange
//! `{exchange}.{group}.redeliver` straight back to the group's queue: other
//! groups never see a retry, no consumer sleeps while holding a delivery, and
//! a waiting retry survives a consumer crash. Only the handlers that failed
//! run again (`x-failed-handlers`).
//!
//! The copy is published through the default exchange under its original
//! routing key, with the delay queue in RabbitMQ's `BCC` header: the key
//! travels with the message, so whichever member (eventbus or eventsource-py)
//! takes it next sees the key it was published with, retries it under that
//! key and dead-letters it with that key in `x-original-routing-key`.
//!
//! A delivery that no handler of this member takes, on a direct or topic
//! exchange (which routes by key, so some member of the group is meant to
//! handle it), is left to the other members the same way, through the
//! group's `{exchange}.{group}.unhandled` queue, counted in
//! `x-unhandled-count` (never in `x-retry-count`), and dead-lettered after
//! `max_unhandled_deferrals` deferrals with the reason
//! `no member of group {group} handles {routing key}`.
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
    self, HEADER_AGGREGATE_TYPE, HEADER_BCC, HEADER_DLQ_ERROR_TYPE, HEADER_DLQ_HANDLER,
    HEADER_DLQ_REASON, HEADER_DLQ_RETRY_COUNT, HEADER_DLQ_TIMESTAMP, HEADER_EVENT_TYPE,
    HEADER_FAILED_HANDLERS, HEADER_LAST_RETRY_AT, HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_REPLAYED_FROM_DLQ, HEADER_RETRY_COUNT, HEADER_UNHANDLED_COUNT,
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

/// The wait before a delivery no handler of this member takes is offered
/// to the group again: `unhandled_delay` ± `retry_jitter`.
pub(crate) fn unhandled_delay(config: &Config) -> Duration {
    let jitter = config.retry_jitter * (2.0 * unit_random() - 1.0);
    let nominal = config.unhandled_delay.as_secs_f64();
    Duration::from_secs_f64((nominal * (1.0 + jitter)).max(0.001))
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

/// The routing key the message was first published with: its
/// `x-original-routing-key`, else the key it was delivered with, skipping
/// either when it names one of the group's own queues (`group_queue` or
/// `{group_queue}.*`: what an earlier version's delay queue or replay, or a
/// dead letter made from such a delivery, left there); failing both,
/// `{aggregate_type}.{event_type}` from the headers, the key every publisher
/// of eventsource-py and eventbus uses.
pub(crate) fn original_routing_key(
    properties: &BasicProperties,
    delivered_with: &str,
    group_queue: &str,
) -> String {
    let ours = |key: &str| {
        key == group_queue
            || key
                .strip_prefix(group_queue)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    let header = amqp::str_header(properties, HEADER_ORIGINAL_ROUTING_KEY);
    if let Some(key) = header.as_deref().filter(|k| !k.is_empty() && !ours(k)) {
        return key.to_owned();
    }
    if !delivered_with.is_empty() && !ours(delivered_with) {
        return delivered_with.to_owned();
    }
    match (
        amqp::str_header(properties, HEADER_AGGREGATE_TYPE),
        amqp::str_header(properties, HEADER_EVENT_TYPE),
    ) {
        (Some(aggregate), Some(event)) => format!("{aggregate}.{event}"),
        _ => header.map_or_else(|| delivered_with.to_owned(), std::borrow::Cow::into_owned),
    }
}

/// `x-unhandled-count` of a delivery.
pub(crate) fn unhandled_count(properties: &BasicProperties) -> u32 {
    amqp::int_header(properties, HEADER_UNHANDLED_COUNT)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// Sends a copy published through the default exchange under its routing
/// key to queue `queue` alone (RabbitMQ's `BCC`, removed on delivery).
fn bcc(headers: &mut FieldTable, queue: &str) {
    headers.insert(
        HEADER_BCC.into(),
        AMQPValue::FieldArray(FieldArray::from(vec![string(queue)])),
    );
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

/// Properties for the retry copy: count + 1, time, original key, what
/// failed, TTL, and `BCC` to `delay_queue` (publish it through the default
/// exchange under the original key).
pub(crate) fn retry_properties(
    properties: &BasicProperties,
    retry_count: u32,
    original_routing_key: &str,
    failed: &[String],
    delay: Duration,
    delay_queue: &str,
) -> BasicProperties {
    let mut headers = headers_of(properties);
    bcc(&mut headers, delay_queue);
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

/// Properties for a delivery left to another member: `x-unhandled-count` + 1,
/// the original key, TTL, and `BCC` to `unhandled_queue` (publish it through
/// the default exchange under the original key). The handler retry count
/// stays; so do the failed handlers, unless `failed` names those still to run
/// (this member ran the others).
pub(crate) fn defer_properties(
    properties: &BasicProperties,
    unhandled_count: u32,
    original_routing_key: &str,
    delay: Duration,
    unhandled_queue: &str,
    failed: Option<&[String]>,
) -> BasicProperties {
    let mut headers = headers_of(properties);
    bcc(&mut headers, unhandled_queue);
    if let Some(failed) = failed {
        headers.insert(HEADER_FAILED_HANDLERS.into(), failed_array(failed));
    }
    headers.insert(
        HEADER_UNHANDLED_COUNT.into(),
        AMQPValue::LongLongInt(i64::from(unhandled_count) + 1),
    );
    headers.insert(
        HEADER_ORIGINAL_ROUTING_KEY.into(),
        string(original_routing_key),
    );
    with_headers(properties, headers)
        .with_expiration(ShortString::from(delay.as_millis().max(1).to_string()))
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
/// `x-retry-count` and `x-unhandled-count` 0, `x-replayed-from-dlq` set, and
/// `BCC` to `group_queue` (publish it through the default exchange under the
/// original key, so the group's queue alone gets it, under that key, as from
/// eventsource-py's replay). `x-failed-handlers` stays, so handlers that had
/// already succeeded do not run twice.
pub(crate) fn replay_properties(
    properties: &BasicProperties,
    group_queue: &str,
) -> BasicProperties {
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
            || k == HEADER_LAST_RETRY_AT
            || k == HEADER_UNHANDLED_COUNT
            || k == HEADER_BCC;
        if !strip {
            headers.insert(key.clone(), value.clone());
        }
    }
    headers.insert(HEADER_RETRY_COUNT.into(), AMQPValue::LongLongInt(0));
    headers.insert(HEADER_REPLAYED_FROM_DLQ.into(), string(&now()));
    bcc(&mut headers, group_queue);
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
        h.insert(HEADER_UNHANDLED_COUNT.into(), AMQPValue::LongLongInt(7));
        h.insert(
            HEADER_ORIGINAL_ROUTING_KEY.into(),
            string("Order.OrderPlaced"),
        );
        let p = replay_properties(&BasicProperties::default().with_headers(h), "x.g");
        let headers = p.headers().clone().unwrap_or_default();
        let keys: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                HEADER_BCC,
                "event_type",
                HEADER_FAILED_HANDLERS,
                HEADER_REPLAYED_FROM_DLQ,
                HEADER_RETRY_COUNT,
            ]
        );
        assert_eq!(retry_count(&p), 0);
        assert_eq!(unhandled_count(&p), 0);
        assert_eq!(failed_handlers(&p), Some(vec!["a::b".to_owned()]));
    }

    fn with(headers: &[(&str, &str)]) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in headers {
            h.insert((*k).into(), string(v));
        }
        BasicProperties::default().with_headers(h)
    }

    #[test]
    fn the_original_routing_key_is_never_one_of_the_groups_queues() {
        let q = "shop.billing";
        let header = |k: &str| {
            with(&[
                (HEADER_ORIGINAL_ROUTING_KEY, k),
                (HEADER_AGGREGATE_TYPE, "Order"),
                (HEADER_EVENT_TYPE, "OrderShipped"),
            ])
        };
        // The header wins over the key it was delivered with.
        assert_eq!(
            original_routing_key(&header("Order.X"), "shop.billing", q),
            "Order.X"
        );
        // No header: the delivered key.
        assert_eq!(
            original_routing_key(&with(&[]), "Order.OrderPlaced", q),
            "Order.OrderPlaced"
        );
        // A queue name in the header (an older replay, or eventsource-py's dead
        // letter of a delivery that came back under the queue's name): the
        // delivered key, else the key the headers give.
        assert_eq!(
            original_routing_key(&header("shop.billing"), "Order.OrderShipped", q),
            "Order.OrderShipped"
        );
        assert_eq!(
            original_routing_key(&header("shop.billing"), "shop.billing", q),
            "Order.OrderShipped"
        );
        assert_eq!(
            original_routing_key(&header("shop.billing.retry.2"), "shop.billing", q),
            "Order.OrderShipped"
        );
        // Another name that merely starts like the queue is a key.
        assert_eq!(
            original_routing_key(&header("shop.billingX"), "shop.billing", q),
            "shop.billingX"
        );
    }

    #[test]
    fn a_deferral_counts_apart_from_retries_and_travels_by_bcc() {
        let mut h = FieldTable::default();
        h.insert(HEADER_RETRY_COUNT.into(), AMQPValue::LongLongInt(2));
        let original = BasicProperties::default().with_headers(h);
        let p = defer_properties(
            &original,
            4,
            "Order.OrderShipped",
            Duration::from_millis(250),
            "shop.billing.unhandled",
            None,
        );
        assert_eq!(unhandled_count(&p), 5);
        assert_eq!(retry_count(&p), 2);
        assert_eq!(p.expiration().as_ref().map(|e| e.as_str()), Some("250"));
        assert_eq!(
            amqp::string_header(&p, HEADER_ORIGINAL_ROUTING_KEY).as_deref(),
            Some("Order.OrderShipped")
        );
        let headers = p.headers().clone().unwrap_or_default();
        let Some(AMQPValue::FieldArray(bcc)) = headers.inner().get(HEADER_BCC) else {
            panic!("no BCC: {headers:?}");
        };
        assert_eq!(bcc.as_slice(), [string("shop.billing.unhandled")]);
    }
}
