//! Messages captured from eventsource-py's publisher (`tests/interop/peer.py
//! capture [--variant V]`), decoded by the Rust codec and encoded again, byte
//! for byte, headers and properties too: no Python needed. One file has every
//! envelope field set; the variants leave out the tenant, the causation, or
//! every optional field, raise `event_version`, or nest the metadata.

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {
    tracking_number: String,
}

/// The header variants: (file, its text).
const VARIANTS: [(&str, &str); 5] = [
    (
        "no_tenant",
        include_str!("../../tests/golden/python_no_tenant.json"),
    ),
    (
        "no_causation",
        include_str!("../../tests/golden/python_no_causation.json"),
    ),
    (
        "event_version",
        include_str!("../../tests/golden/python_event_version.json"),
    ),
    (
        "nested_metadata",
        include_str!("../../tests/golden/python_nested_metadata.json"),
    ),
    (
        "minimal",
        include_str!("../../tests/golden/python_minimal.json"),
    ),
];

fn golden() -> Value {
    serde_json::from_str(include_str!("../../tests/golden/python_order_placed.json"))
        .expect("valid golden file")
}

#[test]
fn the_rust_codec_reads_and_writes_what_eventsource_py_sends() {
    let golden = golden();
    let body = golden["body"].as_str().expect("body");
    let event = codec::decode_body::<OrderPlaced>(body.as_bytes()).expect("decodes");
    let python: Value = serde_json::from_str(body).expect("JSON body");

    same_envelope(&event, &python, "everything");
    assert_eq!(event.customer_id, python["customer_id"]);
    assert_eq!(Some(event.total_amount), python["total_amount"].as_f64());

    same_on_the_wire(AnyEnvelope::from(event), &golden, "everything");
}

#[test]
fn every_header_variant_is_read_and_written_byte_for_byte() {
    for (variant, text) in VARIANTS {
        let golden: Value = serde_json::from_str(text).expect("valid golden file");
        assert_eq!(golden["variant"], variant);
        let body = golden["body"].as_str().expect("body");
        let python: Value = serde_json::from_str(body).expect("JSON body");
        let any = match python["event_type"].as_str() {
            Some("OrderPlaced") => {
                let event = codec::decode_body::<OrderPlaced>(body.as_bytes()).expect("decodes");
                same_envelope(&event, &python, variant);
                AnyEnvelope::from(event)
            }
            Some("OrderShipped") => {
                let event = codec::decode_body::<OrderShipped>(body.as_bytes()).expect("decodes");
                same_envelope(&event, &python, variant);
                AnyEnvelope::from(event)
            }
            other => panic!("{variant}: unexpected event type {other:?}"),
        };
        same_on_the_wire(any, &golden, variant);
    }
    // What each variant is about, as captured.
    let body = |name: &str| -> Value {
        let (_, text) = VARIANTS.iter().find(|(v, _)| *v == name).expect("variant");
        let golden: Value = serde_json::from_str(text).expect("valid");
        serde_json::from_str(golden["body"].as_str().expect("body")).expect("JSON")
    };
    assert!(body("no_tenant")["tenant_id"].is_null());
    assert!(body("no_causation")["causation_id"].is_null());
    assert_eq!(body("event_version")["event_version"], 7);
    assert_eq!(
        body("nested_metadata")["metadata"]["trace"]["spans"][0]["tags"]["ok"],
        true
    );
    assert_eq!(body("minimal")["metadata"], serde_json::json!({}));
}

/// Every envelope field of the decoded `event`, one by one, against Python's JSON.
fn same_envelope<E: DomainEvent>(event: &crate::Envelope<E>, python: &Value, variant: &str) {
    let meta = event.meta();
    assert_eq!(meta.event_id().to_string(), python["event_id"], "{variant}");
    assert_eq!(meta.event_type(), python["event_type"], "{variant}");
    assert_eq!(
        u64::from(meta.event_version()),
        python["event_version"],
        "{variant}"
    );
    assert_eq!(
        codec::format_time(&meta.occurred_at()),
        python["occurred_at"],
        "{variant}"
    );
    assert_eq!(meta.aggregate_id().to_string(), python["aggregate_id"]);
    assert_eq!(meta.aggregate_type(), python["aggregate_type"]);
    assert_eq!(meta.aggregate_version(), python["aggregate_version"]);
    assert_eq!(
        meta.tenant_id().map(|t| t.to_string()),
        python["tenant_id"].as_str().map(str::to_owned),
        "{variant}"
    );
    assert_eq!(meta.actor_id(), python["actor_id"].as_str(), "{variant}");
    assert_eq!(meta.correlation_id().to_string(), python["correlation_id"]);
    assert_eq!(
        meta.causation_id().map(|c| c.to_string()),
        python["causation_id"].as_str().map(str::to_owned),
        "{variant}"
    );
    assert_eq!(
        &Value::Object(meta.metadata().clone()),
        &python["metadata"],
        "{variant}"
    );
}

/// `any` encoded again: the captured body byte for byte, routing key,
/// properties and headers.
fn same_on_the_wire(any: AnyEnvelope, golden: &Value, variant: &str) {
    let body = golden["body"].as_str().expect("body");
    // Encoded again: the same bytes.
    let wire = codec::encode(&any).expect("encodes");
    assert_eq!(
        std::str::from_utf8(&wire.body).expect("utf-8"),
        body,
        "{variant}"
    );

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
    assert_eq!(ours, theirs, "{variant}");
}
