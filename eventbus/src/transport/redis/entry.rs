//! Stream entries as replies carry them, parsed from `redis::Value` by hand so
//! field order is kept and a deleted entry (`[id, nil]`) is told apart.

use redis::Value;

/// Which stream of a group an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// `{prefix}:stream`, read by every group.
    Main,
    /// `{prefix}:stream_replay:{group}`: DLQ replays for this group only.
    Replay,
}

impl Source {
    /// The member of the retry schedule for entry `id` of this stream.
    pub(crate) fn member(self, id: &str) -> String {
        match self {
            Self::Main => format!("m|{id}"),
            Self::Replay => format!("r|{id}"),
        }
    }

    /// Inverse of [`Source::member`].
    pub(crate) fn parse_member(member: &str) -> Option<(Self, &str)> {
        match member.split_once('|')? {
            ("m", id) => Some((Self::Main, id)),
            ("r", id) => Some((Self::Replay, id)),
            _ => None,
        }
    }
}

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `1700000000000-0`.
    pub(crate) id: String,
    /// Its fields in order; `None` when the entry was deleted (trimmed) while pending.
    pub(crate) fields: Option<Vec<(String, String)>>,
}

impl Entry {
    /// The field `name`, if present.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A string-like value as text.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// An integer, or a string holding one.
pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

fn into_items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// A string-like value as text, taking its bytes without a copy (one UTF-8
/// check; invalid bytes become U+FFFD, as in [`text`]).
fn into_text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        other => text(&other),
    }
}

/// Pairs of a flat `[k, v, k, v]` array or of a RESP3 map.
pub(crate) fn pairs(value: &Value) -> Vec<(&Value, &Value)> {
    match value {
        Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
        other => items(other)
            .chunks_exact(2)
            .map(|kv| (&kv[0], &kv[1]))
            .collect(),
    }
}

/// Owned pairs of a flat `[k, v, k, v]` array or of a RESP3 map.
fn into_pairs(value: Value) -> Vec<(Value, Value)> {
    match value {
        Value::Map(map) => map,
        other => {
            let mut flat = into_items(other).into_iter();
            let mut out = Vec::with_capacity(flat.len() / 2);
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                out.push((k, v));
            }
            out
        }
    }
}

fn entry(value: Value) -> Option<Entry> {
    let mut parts = into_items(value).into_iter();
    let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let id = into_text(id)?;
    let fields = match fields {
        Value::Nil => None,
        other => Some(
            into_pairs(other)
                .into_iter()
                .filter_map(|(k, v)| Some((into_text(k)?, into_text(v)?)))
                .collect(),
        ),
    };
    Some(Entry { id, fields })
}

/// An array of entries (`XRANGE`, `XCLAIM`, one stream of `XREADGROUP`).
pub(crate) fn entries(value: Value) -> Vec<Entry> {
    into_items(value).into_iter().filter_map(entry).collect()
}

/// An `XREADGROUP` reply: entries per stream key; nothing when it timed out.
pub(crate) fn read_reply(value: Value) -> Vec<(String, Vec<Entry>)> {
    let streams: Vec<(Value, Value)> = match value {
        Value::Map(map) => map,
        other => into_items(other)
            .into_iter()
            .filter_map(|s| {
                let mut kv = into_items(s).into_iter();
                match (kv.next(), kv.next(), kv.next()) {
                    (Some(key), Some(list), None) => Some((key, list)),
                    _ => None,
                }
            })
            .collect(),
    };
    streams
        .into_iter()
        .filter_map(|(key, list)| Some((into_text(key)?, entries(list))))
        .collect()
}

/// An `XAUTOCLAIM ... JUSTID` reply: the next cursor and the claimed ids.
pub(crate) fn autoclaim_ids(value: Value) -> (String, Vec<String>) {
    let mut parts = into_items(value).into_iter();
    match (parts.next(), parts.next()) {
        (Some(cursor), Some(ids)) => (
            into_text(cursor).unwrap_or_else(|| "0-0".to_owned()),
            into_items(ids).into_iter().filter_map(into_text).collect(),
        ),
        _ => ("0-0".to_owned(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_read_replies_in_field_order_and_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("events:stream"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("1")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let streams = read_reply(reply);
        assert_eq!(streams.len(), 1);
        let (key, list) = &streams[0];
        assert_eq!(key, "events:stream");
        assert_eq!(
            list[0].fields,
            Some(vec![("b".into(), "2".into()), ("a".into(), "1".into())])
        );
        assert_eq!(list[0].field("a"), Some("1"));
        assert_eq!(list[1].fields, None);
        assert!(read_reply(Value::Nil).is_empty());
        let (cursor, claimed) = autoclaim_ids(Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![bulk("3-0"), bulk("4-0")]),
            Value::Array(vec![]),
        ]));
        assert_eq!(
            (cursor.as_str(), claimed),
            ("5-0", vec!["3-0".to_owned(), "4-0".to_owned()])
        );
        assert_eq!(
            Source::parse_member(&Source::Replay.member("3-1")),
            Some((Source::Replay, "3-1"))
        );
    }
}
