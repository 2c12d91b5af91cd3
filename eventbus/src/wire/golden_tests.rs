//! A message captured from eventsource-py's publisher (`tests/interop/peer.py
//! capture`), decoded by the Rust codec and encoded again: no Python needed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{self as codec, HeaderValue};
use crate::{AnyEnvelope, DomainEvent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
    total_amount: f64,
}

fn golden() -> Value {
    serde_json::from_str(include_str!("../../tests/golden/python_order_placed.json"))
        .expect("valid golden file")
}

#[test]
fn the_rust_codec_reads_and_writes_what_eventsource_py_sends() {
    let golden = golden();
    let body = golden["body"].as_str().expect("body");
    let event = codec::decode_body::<OrderPlaced>(body.as_bytes()).expect("decodes");
    let meta = event.meta();
    let python: Value = serde_json::from_str(body).expect("JSON body");

    // Every field, one by one.
    assert_eq!(meta.event_id().to_string(), python["event_id"]);
    assert_eq!(meta.event_type(), python["event_type"]);
    assert_eq!(u64::from(meta.event_version()), python["event_version"]);
    assert_eq!(
        codec::format_time(&meta.occurred_at()),
        python["occurred_at"]
    );
    assert_eq!(meta.aggregate_id().to_string(), python["aggregate_id"]);
    assert_eq!(meta.aggregate_type(), python["aggregate_type"]);
    assert_eq!(meta.aggregate_version(), python["aggregate_version"]);
    assert_eq!(
        meta.tenant_id().map(|t| t.to_string()),
        python["tenant_id"].as_str().map(str::to_owned)
    );
    assert_eq!(meta.actor_id(), python["actor_id"].as_str());
    assert_eq!(meta.correlation_id().to_string(), python["correlation_id"]);
    assert_eq!(
        meta.causation_id().map(|c| c.to_string()),
        python["causation_id"].as_str().map(str::to_owned)
    );
    assert_eq!(&Value::Object(meta.metadata().clone()), &python["metadata"]);
    assert_eq!(event.customer_id, python["customer_id"]);
    assert_eq!(Some(event.total_amount), python["total_amount"].as_f64());

    // Encoded again: the same bytes.
    let any = AnyEnvelope::from(event);
    let wire = codec::encode(&any).expect("encodes");
    assert_eq!(std::str::from_utf8(&wire.body).expect("utf-8"), body);

    // The same routing key, properties and headers.
    assert_eq!(wire.routing_key, golden["routing_key"]);
    let props = &golden["properties"];
    assert_eq!(props["content_type"], codec::CONTENT_TYPE);
    assert_eq!(props["content_encoding"], codec::CONTENT_ENCODING);
    assert_eq!(props["delivery_mode"], 2);
    assert_eq!(props["message_id"], wire.message_id.as_str());
    assert_eq!(props["timestamp"], wire.timestamp);
    let ours: BTreeMap<&str, Value> = wire
        .headers
        .iter()
        .map(|(k, v)| {
            let v = match v {
                HeaderValue::Str(s) => Value::from(s.as_str()),
                HeaderValue::Int(i) => Value::from(*i),
            };
            (*k, v)
        })
        .collect();
    let theirs: BTreeMap<&str, Value> = golden["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(ours, theirs);
}
