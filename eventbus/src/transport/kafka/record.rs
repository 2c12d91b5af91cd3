//! Kafka records as eventsource-py's `KafkaEventBus` writes and reads them:
//! key = aggregate id, value = the event JSON, UTF-8 string headers in its order.

use std::sync::Arc;

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};

use crate::envelope::EventMeta;
use crate::wire::{self, HeaderValue};

/// Header (eventsource-py): retries so far; absent means 0.
pub(crate) const RETRY_COUNT: &str = "retry_count";
/// Header (eventsource-py): POSIX seconds (a float) before which a retry waits.
pub(crate) const RETRY_AFTER: &str = "retry_after";
/// Header (eventbus): JSON array of the handlers a retry (or replay) runs.
pub(crate) const FAILED_HANDLERS: &str = "eventbus_failed_handlers";
/// Header (eventbus): the consumer group a retry record is for; on a DLQ
/// record, the group whose retry topic a replay goes to (eventsource-py's
/// DLQ records have none).
pub(crate) const RETRY_GROUP: &str = "eventbus_retry_group";
/// DLQ headers (eventsource-py's names, plus `dlq_handler`).
pub(crate) const DLQ_REASON: &str = "dlq_reason";
pub(crate) const DLQ_ERROR_TYPE: &str = "dlq_error_type";
pub(crate) const DLQ_ERROR_MESSAGE: &str = "dlq_error_message";
pub(crate) const DLQ_RETRY_COUNT: &str = "dlq_retry_count";
pub(crate) const DLQ_TIMESTAMP: &str = "dlq_timestamp";
pub(crate) const DLQ_ORIGINAL_TOPIC: &str = "dlq_original_topic";
pub(crate) const DLQ_ORIGINAL_PARTITION: &str = "dlq_original_partition";
pub(crate) const DLQ_ORIGINAL_OFFSET: &str = "dlq_original_offset";
pub(crate) const DLQ_CONSUMER_GROUP: &str = "dlq_consumer_group";
pub(crate) const DLQ_HANDLER: &str = "dlq_handler";
pub(crate) const DLQ_REPLAY_COUNT: &str = "dlq_replay_count";
/// eventsource-py cuts `dlq_error_message` to this many characters.
pub(crate) const MAX_ERROR_MESSAGE: usize = 1000;

/// The headers of a first publish, in eventsource-py's order, then the
/// trace context.
pub(crate) fn publish_headers(
    meta: &EventMeta,
    trace: &[(&'static str, HeaderValue)],
) -> Vec<(String, String)> {
    let mut h = vec![
        (wire::FIELD_EVENT_ID.to_owned(), meta.event_id.to_string()),
        (
            wire::HEADER_EVENT_TYPE.to_owned(),
            meta.event_type.to_string(),
        ),
        (
            wire::HEADER_AGGREGATE_ID.to_owned(),
            meta.aggregate_id.to_string(),
        ),
        (
            wire::HEADER_AGGREGATE_TYPE.to_owned(),
            meta.aggregate_type.to_string(),
        ),
        (
            wire::HEADER_AGGREGATE_VERSION.to_owned(),
            meta.aggregate_version.to_string(),
        ),
        (
            wire::FIELD_OCCURRED_AT.to_owned(),
            wire::python_isoformat(&meta.occurred_at),
        ),
        (
            wire::HEADER_CORRELATION_ID.to_owned(),
            meta.correlation_id.to_string(),
        ),
    ];
    if let Some(t) = meta.tenant_id {
        h.push((wire::HEADER_TENANT_ID.to_owned(), t.to_string()));
    }
    if let Some(c) = meta.causation_id {
        h.push((wire::HEADER_CAUSATION_ID.to_owned(), c.to_string()));
    }
    if let Some(a) = &meta.actor_id {
        h.push(("actor_id".to_owned(), a.clone()));
    }
    for (name, value) in wire::trace::fields(trace) {
        h.push((name.to_owned(), value.to_owned()));
    }
    h
}

/// `rdkafka` headers from name/value pairs.
pub(crate) fn owned_headers(headers: &[(String, String)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |acc, (k, v)| {
            acc.insert(Header {
                key: k,
                value: Some(v.as_str()),
            })
        },
    )
}

/// One record taken from a topic, owned.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// Shared by the records of one topic (see [`Record::from_message`]).
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    headers: HeaderBuf,
}

/// Every header of a record, values as (lossy) UTF-8, in record order, in
/// one buffer: two allocations per record instead of two per header.
#[derive(Debug, Clone, Default)]
struct HeaderBuf {
    text: String,
    /// For each header, where its name ends and where its value ends in `text`.
    ends: Vec<(u32, u32)>,
    /// For each name of [`INDEXED`], 1 + the position of its last header
    /// (0: none), so that the lookups every record needs scan nothing.
    indexed: [u32; INDEXED.len()],
}

/// The headers the consumer looks up for every record (about nine lookups
/// per record; a scan of eventsource-py's seven headers each took about 2% of
/// a consuming process's CPU).
const INDEXED: [&str; 9] = [
    wire::FIELD_EVENT_ID,
    wire::HEADER_EVENT_TYPE,
    wire::HEADER_AGGREGATE_ID,
    RETRY_COUNT,
    RETRY_AFTER,
    FAILED_HANDLERS,
    wire::trace::HEADER_TRACEPARENT,
    wire::trace::HEADER_TRACESTATE,
    wire::trace::HEADER_BAGGAGE,
];

/// `name`'s place in [`INDEXED`].
fn indexed(name: &str) -> Option<usize> {
    INDEXED.iter().position(|n| *n == name)
}

impl HeaderBuf {
    fn push(&mut self, key: &str, value: &str) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(value);
        // Records are far below 4 GiB (`message.max.bytes`).
        self.ends.push((key_end as u32, self.text.len() as u32));
        if let Some(i) = indexed(key) {
            self.indexed[i] = self.ends.len() as u32;
        }
    }

    /// The header at `i` (in record order).
    fn at(&self, i: usize) -> (&str, &str) {
        // Each header starts where the one before it ends.
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p].1 as usize);
        let (key_end, end) = (self.ends[i].0 as usize, self.ends[i].1 as usize);
        (&self.text[start..key_end], &self.text[key_end..end])
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> + '_ {
        (0..self.ends.len()).map(|i| self.at(i))
    }

    /// The value of the last header named `name`.
    fn get(&self, name: &str) -> Option<&str> {
        match indexed(name) {
            Some(i) => self.indexed[i]
                .checked_sub(1)
                .map(|at| self.at(at as usize).1),
            None => self.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v),
        }
    }
}

impl Record {
    /// An owned copy of `m`; `topic` is reused when it names `m`'s topic.
    pub(crate) fn from_message(m: &BorrowedMessage<'_>, topic: Option<&Arc<str>>) -> Self {
        let topic = match topic {
            Some(t) if **t == *m.topic() => t.clone(),
            _ => Arc::from(m.topic()),
        };
        let mut headers = HeaderBuf::default();
        if let Some(hs) = m.headers() {
            // eventsource-py's first-publish headers take about 250 bytes.
            headers.text.reserve(320);
            headers.ends.reserve_exact(hs.count());
            for h in hs.iter() {
                let value = h.value.unwrap_or_default();
                // Checked first: the lossy conversion is slower on valid text.
                match std::str::from_utf8(value) {
                    Ok(v) => headers.push(h.key, v),
                    Err(_) => headers.push(h.key, &String::from_utf8_lossy(value)),
                }
            }
        }
        Self {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// Every header, in record order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.headers.iter()
    }

    /// The header `name` (the last one, when repeated).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// `retry_count`, 0 when absent or not a number.
    pub(crate) fn retry_count(&self) -> u32 {
        self.header(RETRY_COUNT)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `retry_after` in POSIX seconds, when set.
    pub(crate) fn retry_after(&self) -> Option<f64> {
        self.header(RETRY_AFTER)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite())
    }

    /// The handlers a retry or replay runs (`None`: all of the group's).
    pub(crate) fn failed_handlers(&self) -> Option<Vec<String>> {
        self.header(FAILED_HANDLERS)
            .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
            .filter(|v| !v.is_empty())
    }

    /// Headers without those named in `drop`, then `extra` appended.
    pub(crate) fn headers_with(
        &self,
        drop: &[&str],
        extra: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .headers()
            .filter(|(k, _)| !drop.contains(k) && !extra.iter().any(|(e, _)| e == k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        out.extend(extra);
        out
    }
}

/// `now` as POSIX seconds with a fraction, as Python's `time.time()` prints.
pub(crate) fn posix_seconds(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{:.6}", at.timestamp_micros() as f64 / 1e6)
}

/// Cuts `text` to at most `max` characters.
pub(crate) fn cut_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_their_order_and_the_last_of_a_repeated_name_wins() {
        let mut headers = HeaderBuf::default();
        for (k, v) in [
            ("event_type", "OrderPlaced"),
            ("", ""),
            ("retry_count", "1"),
            ("retry_count", "2"),
            ("é", "ü"),
            ("aggregate_id", "a"),
        ] {
            headers.push(k, v);
        }
        let record = Record {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            key: None,
            value: None,
            headers,
        };
        let all: Vec<_> = record.headers().collect();
        assert_eq!(
            all,
            [
                ("event_type", "OrderPlaced"),
                ("", ""),
                ("retry_count", "1"),
                ("retry_count", "2"),
                ("é", "ü"),
                ("aggregate_id", "a")
            ]
        );
        assert_eq!(record.header("event_type"), Some("OrderPlaced"));
        assert_eq!(record.header("aggregate_id"), Some("a"));
        assert_eq!(record.header(RETRY_AFTER), None);
        assert_eq!(record.header(""), Some(""));
        assert_eq!(record.header("retry_count"), Some("2"));
        assert_eq!(record.retry_count(), 2);
        assert_eq!(record.header("é"), Some("ü"));
        assert_eq!(record.header("missing"), None);
        let rewritten =
            record.headers_with(&["event_type"], vec![("retry_count".into(), "3".into())]);
        assert_eq!(
            rewritten,
            [
                ("".to_owned(), "".to_owned()),
                ("é".into(), "ü".into()),
                ("aggregate_id".into(), "a".into()),
                ("retry_count".into(), "3".into())
            ]
        );
    }

    proptest::proptest! {
        /// The index finds what a scan from the end finds, for every name.
        #[test]
        fn a_lookup_finds_the_last_header_of_its_name(
            headers in proptest::collection::vec((0..12usize, "[a-z]{0,3}"), 0..20)
        ) {
            let names: Vec<&str> = INDEXED.iter().copied().chain(["x", "", "event"]).collect();
            let mut buf = HeaderBuf::default();
            for (n, v) in &headers {
                buf.push(names[*n], v);
            }
            for name in &names {
                let scanned = headers.iter().rev().find(|(n, _)| names[*n] == *name).map(|(_, v)| v.as_str());
                proptest::prop_assert_eq!(buf.get(name), scanned);
            }
        }
    }
}
