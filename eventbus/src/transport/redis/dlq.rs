//! DLQ tooling on Redis: one DLQ stream for every group, each entry naming
//! its group (`dlq_group`; an entry without one, as eventsource-py writes
//! them, belongs to the default consumer group). Listing reads with `XRANGE`
//! and removes nothing; a replay adds the entry to the failing group's
//! replay stream and deletes the DLQ copy in the same `MULTI`, so only that
//! group sees it again. An entry eventsource-py dead-lettered (no
//! `dlq_group`) is replayed as eventsource-py does, to the main stream: a
//! Python group reads nothing else (every group sees it again).

use chrono::Utc;
use redis::Value;

use crate::error::Error;
use crate::runtime::{DlqMessage, ReplayFilter, ReplayReport};
use crate::wire::{self, HEADER_EVENT_TYPE};

use super::RedisTransport;
use super::conn::{self, broker};
use super::entry::{self, Entry};
use super::retry::is_dlq_field;

/// DLQ entries are read this many at a time.
const PAGE: usize = 500;

impl RedisTransport {
    /// Every DLQ entry of `group`, oldest first, up to `limit`.
    async fn dlq_entries(&self, group: &str, limit: usize) -> Result<Vec<Entry>, Error> {
        let config = &self.ctx.config;
        let key = config.dlq_stream_name();
        let mut ops = self.ops.clone();
        let mut out = Vec::new();
        let mut start = "-".to_owned();
        while out.len() < limit {
            let page: Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut ops)
                .await
                .map_err(|e| broker(&config.url, format!("reading `{key}`"), &e))?;
            let entries = entry::entries(page);
            let Some(last) = entries.last() else {
                break;
            };
            start = format!("({}", last.id);
            let full = entries.len() == PAGE;
            out.extend(
                entries
                    .into_iter()
                    .filter(|e| {
                        e.field(wire::FIELD_DLQ_GROUP)
                            .unwrap_or(&config.consumer_group)
                            == group
                    })
                    .take(limit - out.len()),
            );
            if !full {
                break;
            }
        }
        Ok(out)
    }

    fn describe(entry: &Entry) -> DlqMessage {
        let text = |name: &str| entry.field(name).map(str::to_owned);
        let mut headers: std::collections::BTreeMap<String, serde_json::Value> = entry
            .fields
            .iter()
            .flatten()
            .filter(|(k, _)| k != wire::FIELD_PAYLOAD)
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        headers.insert("dlq_entry_id".to_owned(), entry.id.clone().into());
        DlqMessage {
            message_id: text(wire::FIELD_EVENT_ID).or_else(|| Some(entry.id.clone())),
            event_type: text(HEADER_EVENT_TYPE),
            reason: text(wire::FIELD_DLQ_REASON),
            error_type: text(wire::FIELD_DLQ_ERROR_TYPE),
            handler: text(wire::FIELD_DLQ_HANDLER),
            retry_count: entry
                .field(wire::FIELD_RETRY_COUNT)
                .and_then(|n| n.parse().ok()),
            dead_lettered_at: text(wire::FIELD_DLQ_TIMESTAMP),
            original_routing_key: None,
            headers,
            body: text(wire::FIELD_PAYLOAD).unwrap_or_default(),
        }
    }

    /// Is `entry` the one `id` names (its DLQ entry id or its event id)?
    fn is(entry: &Entry, id: &str) -> bool {
        entry.id == id || entry.field(wire::FIELD_EVENT_ID) == Some(id)
    }

    pub(super) async fn redis_dlq_count(&self, group: &str) -> Result<u32, Error> {
        let n = self.dlq_entries(group, usize::MAX).await?.len();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub(super) async fn redis_dlq_list(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DlqMessage>, Error> {
        Ok(self
            .dlq_entries(group, limit)
            .await?
            .iter()
            .map(Self::describe)
            .collect())
    }

    pub(super) async fn redis_dlq_show(
        &self,
        group: &str,
        id: &str,
    ) -> Result<Option<DlqMessage>, Error> {
        Ok(self
            .dlq_entries(group, usize::MAX)
            .await?
            .iter()
            .find(|e| Self::is(e, id))
            .map(Self::describe))
    }

    pub(super) async fn redis_dlq_replay(
        &self,
        group: &str,
        id: Option<&str>,
        filter: &ReplayFilter,
    ) -> Result<ReplayReport, Error> {
        let config = &self.ctx.config;
        let mut ops = self.ops.clone();
        let replay = config.replay_stream_name(group);
        let main = config.stream_name();
        let dlq = config.dlq_stream_name();
        // The group reads its replay stream from the start, even if no member ran yet.
        conn::create_group(&mut ops, &config.url, &replay, group).await?;
        let mut report = ReplayReport::default();
        for entry in self.dlq_entries(group, usize::MAX).await? {
            let wanted = match id {
                Some(id) => Self::is(&entry, id),
                None => matches(&entry, filter),
            };
            if !wanted {
                report.kept += 1;
                continue;
            }
            let target = if entry.field(wire::FIELD_DLQ_GROUP).is_some() {
                &replay
            } else {
                &main
            };
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("XADD").arg(target).arg("*");
            for (k, v) in entry.fields.iter().flatten() {
                if !is_dlq_field(k) || k == wire::FIELD_FAILED_HANDLERS {
                    pipe.arg(k).arg(v);
                }
            }
            pipe.arg(wire::FIELD_REPLAYED_FROM_DLQ)
                .arg(wire::python_isoformat(&Utc::now()))
                .ignore()
                .cmd("XDEL")
                .arg(&dlq)
                .arg(&entry.id)
                .ignore();
            pipe.query_async::<()>(&mut ops)
                .await
                .map_err(|e| broker(&config.url, format!("replaying `{}`", entry.id), &e))?;
            report.replayed += 1;
            if id.is_some() {
                break;
            }
        }
        Ok(report)
    }

    pub(super) async fn redis_dlq_purge(&self, group: &str) -> Result<u32, Error> {
        let config = &self.ctx.config;
        let dlq = config.dlq_stream_name();
        let mut ops = self.ops.clone();
        let ids: Vec<String> = self
            .dlq_entries(group, usize::MAX)
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect();
        for chunk in ids.chunks(PAGE) {
            let _: i64 = redis::cmd("XDEL")
                .arg(&dlq)
                .arg(chunk)
                .query_async(&mut ops)
                .await
                .map_err(|e| broker(&config.url, format!("purging `{dlq}`"), &e))?;
        }
        Ok(u32::try_from(ids.len()).unwrap_or(u32::MAX))
    }
}

fn matches(entry: &Entry, filter: &ReplayFilter) -> bool {
    filter.matches(
        entry.field(HEADER_EVENT_TYPE),
        entry.field(wire::FIELD_DLQ_TIMESTAMP),
    )
}
