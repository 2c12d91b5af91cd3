//! DLQ tooling on Kafka: one DLQ topic for every group (`{topic}.dlq`), each
//! record naming its group in `dlq_consumer_group` (a record without one
//! belongs to the default consumer group).
//!
//! A Kafka topic is append-only, so a DLQ record cannot be deleted: a replay
//! or a purge writes a marker (key `{partition}:{offset}`, header
//! `dlq_consumer_group`) to `{dlq topic}.settled`, and the tooling skips
//! marked records. A replay of a record eventbus dead-lettered (it names its
//! group in `eventbus_retry_group`) goes to the failing group's retry topic
//! (read by that group only); one eventsource-py dead-lettered goes to the
//! main topic, as eventsource-py's `replay_dlq_message` sends it (its Python
//! members read no retry topic; every group reads the replay). Either way with
//! `retry_count=0` and `dlq_replay_count=n+1`, and its marker is written only
//! after the broker has the replayed copy; past `dlq_max_replay_attempts` (3)
//! a record is kept.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::Error;
use crate::runtime::{DlqMessage, ReplayFilter, ReplayReport};
use crate::wire::{self, HEADER_EVENT_TYPE};

use super::record::{self, Record};
use super::{KafkaTransport, blocking, broker, produce};

/// eventsource-py's `dlq_max_replay_attempts`.
const MAX_REPLAYS: u32 = 3;

/// Reads every record of `topic` from the beginning up to its current end
/// (the end-of-partition event of each partition: what the fetches say,
/// not a watermark read before).
fn read_all(
    consumer: super::ToolConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, Error> {
    let deadline = crate::runtime::deadline(timeout).into_std();
    let meta = consumer
        .fetch_metadata(Some(topic), Timeout::After(timeout))
        .map_err(|e| broker(format!("reading the metadata of `{topic}`"), &e))?;
    let Some(m) = meta.topics().iter().find(|m| m.name() == topic) else {
        return Ok(Vec::new());
    };
    if m.error().is_some() || m.partitions().is_empty() {
        // Not created yet: nothing in it.
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    let mut open: HashSet<i32> = HashSet::new();
    for p in m.partitions() {
        open.insert(p.id());
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .map_err(|e| broker(format!("reading `{topic}`"), &e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| broker(format!("reading `{topic}`"), &e))?;
    let mut out = Vec::new();
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Error::Broker {
                context: format!("reading `{topic}`"),
                reason: format!("not read to its end within {timeout:?}"),
            });
        }
        match consumer.poll(Timeout::After(left.min(Duration::from_millis(500)))) {
            Some(Ok(m)) => out.push(Record::from_message(&m, None)),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(broker(format!("reading `{topic}`"), &e)),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// The topic of replay and purge markers.
fn settled_topic(dlq: &str) -> String {
    format!("{dlq}.settled")
}

fn marker_key(r: &Record) -> String {
    format!("{}:{}", r.partition, r.offset)
}

fn group_of<'a>(r: &'a Record, default: &'a str) -> &'a str {
    r.header(record::DLQ_CONSUMER_GROUP).unwrap_or(default)
}

pub(super) fn to_message(r: &Record) -> DlqMessage {
    let text = |name: &str| r.header(name).map(str::to_owned);
    let mut headers: std::collections::BTreeMap<String, serde_json::Value> =
        r.headers().map(|(k, v)| (k.to_owned(), v.into())).collect();
    headers.insert("dlq_partition".to_owned(), r.partition.into());
    headers.insert("dlq_offset".to_owned(), r.offset.into());
    DlqMessage {
        message_id: text(wire::FIELD_EVENT_ID).or_else(|| Some(marker_key(r))),
        event_type: text(HEADER_EVENT_TYPE),
        reason: text(record::DLQ_ERROR_MESSAGE).or_else(|| text(record::DLQ_REASON)),
        error_type: text(record::DLQ_ERROR_TYPE),
        handler: text(record::DLQ_HANDLER),
        retry_count: r
            .header(record::DLQ_RETRY_COUNT)
            .and_then(|n| n.trim().parse().ok()),
        dead_lettered_at: text(record::DLQ_TIMESTAMP),
        original_routing_key: None,
        headers,
        body: r
            .value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
    }
}

fn matches(r: &Record, filter: &ReplayFilter) -> bool {
    filter.matches(r.header(HEADER_EVENT_TYPE), r.header(record::DLQ_TIMESTAMP))
}

impl KafkaTransport {
    /// `group`'s DLQ records not yet replayed or purged, oldest first per
    /// partition, up to `limit`.
    pub(super) async fn kafka_dlq_scan(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<Record>, Error> {
        let config = &self.ctx.config;
        let dlq = config.kafka_dlq_topic();
        let timeout = config.socket_timeout * 6;
        let consumer = self.reader()?;
        let topic = dlq.clone();
        let records = blocking(&format!("reading `{dlq}`"), timeout, move || {
            read_all(consumer, &topic, timeout)
        })
        .await?;
        let consumer = self.reader()?;
        let topic = settled_topic(&dlq);
        let markers = blocking(&format!("reading `{topic}`"), timeout, move || {
            read_all(consumer, &topic, timeout)
        })
        .await?;
        let default = config.consumer_group.as_str();
        let settled: HashSet<String> = markers
            .iter()
            .filter(|m| group_of(m, default) == group)
            .filter_map(|m| {
                m.key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
            })
            .collect();
        Ok(records
            .into_iter()
            .filter(|r| group_of(r, default) == group && !settled.contains(&marker_key(r)))
            .take(limit)
            .collect())
    }

    async fn mark_settled(&self, group: &str, r: &Record, how: &str) -> Result<(), Error> {
        let config = &self.ctx.config;
        let topic = settled_topic(&config.kafka_dlq_topic());
        let key = marker_key(r);
        let headers = vec![
            (record::DLQ_CONSUMER_GROUP.to_owned(), group.to_owned()),
            ("dlq_settled".to_owned(), how.to_owned()),
            (
                record::DLQ_TIMESTAMP.to_owned(),
                wire::python_isoformat(&Utc::now()),
            ),
        ];
        let rec = FutureRecord::<[u8], [u8]>::to(&topic)
            .key(key.as_bytes())
            .headers(record::owned_headers(&headers));
        produce(&self.producer(), rec, config.confirm_timeout)
            .await
            .map(|_| ())
            .map_err(|e| broker(format!("marking DLQ record {key} {how}"), &e))
    }

    pub(super) async fn kafka_dlq_replay(
        &self,
        group: &str,
        id: Option<&str>,
        filter: &ReplayFilter,
    ) -> Result<ReplayReport, Error> {
        let config = &self.ctx.config;
        let dlq = config.kafka_dlq_topic();
        let main_topic = config.kafka_topic();
        let retry_topic = config.kafka_retry_topic(group);
        self.create_topics(&[retry_topic.clone(), settled_topic(&dlq)])
            .await?;
        let mut report = ReplayReport::default();
        for r in self.kafka_dlq_scan(group, usize::MAX).await? {
            let wanted = match id {
                Some(id) => r.header(wire::FIELD_EVENT_ID) == Some(id) || marker_key(&r) == id,
                None => matches(&r, filter),
            };
            let replays: u32 = r
                .header(record::DLQ_REPLAY_COUNT)
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if !wanted || replays >= MAX_REPLAYS {
                if wanted {
                    tracing::warn!(%group, offset = r.offset, replays, "DLQ record replayed too often already; kept");
                }
                report.kept += 1;
                continue;
            }
            let by_eventbus = r.header(record::RETRY_GROUP).is_some();
            let mut headers: Vec<(String, String)> = r
                .headers()
                .filter(|(k, _)| {
                    (!k.starts_with("dlq_")
                        && *k != record::RETRY_COUNT
                        && *k != record::RETRY_AFTER
                        && *k != record::RETRY_GROUP)
                        || *k == record::FAILED_HANDLERS
                })
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .chain([
                    (record::RETRY_COUNT.to_owned(), "0".to_owned()),
                    (
                        record::DLQ_REPLAY_COUNT.to_owned(),
                        (replays + 1).to_string(),
                    ),
                ])
                .collect();
            let target = if by_eventbus {
                headers.push((record::RETRY_GROUP.to_owned(), group.to_owned()));
                &retry_topic
            } else {
                &main_topic
            };
            let mut rec =
                FutureRecord::<[u8], [u8]>::to(target).headers(record::owned_headers(&headers));
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            if let Some(v) = &r.value {
                rec = rec.payload(v);
            }
            produce(&self.producer(), rec, config.confirm_timeout)
                .await
                .map_err(|e| broker(format!("replaying DLQ record {}", marker_key(&r)), &e))?;
            self.mark_settled(group, &r, "replayed").await?;
            report.replayed += 1;
            if id.is_some() {
                break;
            }
        }
        Ok(report)
    }

    pub(super) async fn kafka_dlq_purge(&self, group: &str) -> Result<u32, Error> {
        let dlq = self.ctx.config.kafka_dlq_topic();
        self.create_topics(&[settled_topic(&dlq)]).await?;
        let mut n = 0u32;
        for r in self.kafka_dlq_scan(group, usize::MAX).await? {
            self.mark_settled(group, &r, "purged").await?;
            n = n.saturating_add(1);
        }
        Ok(n)
    }
}
