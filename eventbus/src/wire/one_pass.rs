//! Reading a body's envelope fields and its event's in one pass, without
//! `#[serde(flatten)]`.
//!
//! Flatten copies every field it does not know into a buffer of serde
//! `Content` values, then reads the event from that buffer: half the time of a
//! consumed event's decoding went there. Here the event reads the body's map
//! directly, through a [`MapAccess`] that takes the envelope's fields out of
//! its way as they go by.
//!
//! Only the way that works: anything else (an error, a duplicate envelope
//! field, an event that is not a map) gives `None`, and `decode_body` reads
//! the body through flatten, which decides, and words the error, as before.

use std::borrow::Cow;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{MetaIn, default_aggregate_version, default_version};

/// `text`'s envelope fields and its event, when they read in one pass.
pub(super) fn read<'de, E: Deserialize<'de>>(text: &'de str) -> Option<(MetaIn<'de>, E)> {
    let mut de = serde_json::Deserializer::from_str(text);
    let read = de.deserialize_map(Body(PhantomData)).ok()?;
    de.end().ok()?;
    Some(read)
}

/// A string, borrowed from the body unless it holds escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `occurred_at`, read as `MetaIn` reads it.
struct Time(DateTime<Utc>);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::deserialize_time(d).map(Time)
    }
}

/// The envelope's fields met so far (`None`: not yet).
#[derive(Default)]
struct EnvelopeFields<'de> {
    event_id: Option<Uuid>,
    event_type: Option<Option<Text<'de>>>,
    event_version: Option<u32>,
    occurred_at: Option<Time>,
    aggregate_id: Option<Uuid>,
    aggregate_type: Option<Text<'de>>,
    aggregate_version: Option<u64>,
    tenant_id: Option<Option<Uuid>>,
    actor_id: Option<Option<String>>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Option<Uuid>>,
    metadata: Option<Option<Map<String, Value>>>,
}

/// Reads the value of `field` into `slot`; a second one is an error.
fn put<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    field: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(field));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de> EnvelopeFields<'de> {
    /// Takes the value of `key` when it is an envelope field; `false` when not.
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "event_id" => put(&mut self.event_id, "event_id", map)?,
            "event_type" => put(&mut self.event_type, "event_type", map)?,
            "event_version" => put(&mut self.event_version, "event_version", map)?,
            "occurred_at" => put(&mut self.occurred_at, "occurred_at", map)?,
            "aggregate_id" => put(&mut self.aggregate_id, "aggregate_id", map)?,
            "aggregate_type" => put(&mut self.aggregate_type, "aggregate_type", map)?,
            "aggregate_version" => put(&mut self.aggregate_version, "aggregate_version", map)?,
            "tenant_id" => put(&mut self.tenant_id, "tenant_id", map)?,
            "actor_id" => put(&mut self.actor_id, "actor_id", map)?,
            "correlation_id" => put(&mut self.correlation_id, "correlation_id", map)?,
            "causation_id" => put(&mut self.causation_id, "causation_id", map)?,
            "metadata" => put(&mut self.metadata, "metadata", map)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The fields with `MetaIn`'s defaults; an error when a required one is missing.
    fn finish<Err: de::Error>(self) -> Result<MetaIn<'de>, Err> {
        Ok(MetaIn {
            event_id: self.event_id.unwrap_or_else(Uuid::new_v4),
            event_type: self.event_type.flatten().map(|t| t.0),
            event_version: self.event_version.unwrap_or_else(default_version),
            occurred_at: self.occurred_at.map_or_else(Utc::now, |t| t.0),
            aggregate_id: self
                .aggregate_id
                .ok_or_else(|| Err::missing_field("aggregate_id"))?,
            aggregate_type: self
                .aggregate_type
                .ok_or_else(|| Err::missing_field("aggregate_type"))?
                .0,
            aggregate_version: self
                .aggregate_version
                .unwrap_or_else(default_aggregate_version),
            tenant_id: self.tenant_id.flatten(),
            actor_id: self.actor_id.flatten(),
            correlation_id: self.correlation_id.unwrap_or_else(Uuid::new_v4),
            causation_id: self.causation_id.flatten(),
            metadata: self.metadata.flatten(),
        })
    }
}

/// The body's map, read as the envelope and the event.
struct Body<E>(PhantomData<E>);

impl<'de, E: Deserialize<'de>> Visitor<'de> for Body<E> {
    type Value = (MetaIn<'de>, E);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event's JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = EnvelopeFields::default();
        let event = E::deserialize(EventFields {
            map: &mut map,
            envelope: &mut envelope,
        })?;
        // An event may stop reading before the end: what it left.
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if !envelope.take(&key.0, &mut map)? {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((envelope.finish()?, event))
    }
}

/// The body's map as the event sees it: without the envelope's fields,
/// which go to `envelope` as they go by.
struct EventFields<'a, 'de, A> {
    map: &'a mut A,
    envelope: &'a mut EnvelopeFields<'de>,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for EventFields<'_, 'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for EventFields<'_, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<Text<'de>>()? {
            if self.envelope.take(&key.0, self.map)? {
                continue;
            }
            return match key.0 {
                Cow::Borrowed(k) => seed.deserialize(BorrowedStrDeserializer::new(k)),
                Cow::Owned(k) => seed.deserialize(StringDeserializer::new(k)),
            }
            .map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}
