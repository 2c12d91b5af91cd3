//! Shared by the interoperability tests with eventsource-py (RabbitMQ, Redis,
//! Kafka): the events the Rust side publishes, the Rust consumer that
//! collects what it receives, the Python consumer child.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use eventbus::{AnyEnvelope, Bus, BusBuilder, Envelope, HandlerError};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{ChildGuard, OrderPlaced, OrderShipped};

/// Events with every envelope field set, as the Rust side publishes them:
/// two event types, tenant, actor, causation, metadata, non-ASCII text.
pub fn rich_events(n: usize) -> Vec<AnyEnvelope> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let cause = Uuid::new_v4();
                AnyEnvelope::from(
                    Envelope::new(
                        Uuid::new_v4(),
                        OrderPlaced {
                            customer_id: format!("Zoë ✓ {i} 日本"),
                            total_amount: i as f64 + 0.1,
                        },
                    )
                    .aggregate_version(i as u64 + 1)
                    .event_version(3)
                    .with_tenant(Uuid::new_v4())
                    .with_actor(format!("rust:ünï-{i}"))
                    .with_metadata("source", "rust")
                    .with_metadata("weights", serde_json::json!([1.5, -2, null]))
                    .caused_by(&Envelope::new(
                        cause,
                        OrderShipped {
                            tracking_number: String::new(),
                        },
                    )),
                )
            } else {
                AnyEnvelope::from(
                    Envelope::new(
                        Uuid::new_v4(),
                        OrderShipped {
                            tracking_number: format!("TRACK-{i}-ß"),
                        },
                    )
                    .with_actor("rust")
                    .with_metadata("nested", serde_json::json!({"a": {"b": "c"}})),
                )
            }
        })
        .collect()
}

/// JSON lines (events) by `event_id`.
pub fn by_id(json_lines: impl IntoIterator<Item = String>) -> BTreeMap<String, Value> {
    json_lines
        .into_iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            (v["event_id"].as_str().expect("event_id").to_owned(), v)
        })
        .collect()
}

/// A consuming bus from `builder` (its group set by the caller) forwarding
/// every event, as its wire JSON, to a channel.
pub async fn rust_consumer(builder: BusBuilder) -> (Bus, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bus = builder
        .event::<OrderPlaced>()
        .event::<OrderShipped>()
        .wildcard_handler("collect", None, move |e: AnyEnvelope| {
            let _ = tx.send(e.to_json().expect("encodes"));
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    (bus, rx)
}

/// The next `n` events of `rx` by `event_id`, each at most `wait` apart;
/// fails on a duplicate.
pub async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Value>,
    n: usize,
    wait: Duration,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let v = tokio::time::timeout(wait, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        let id = v["event_id"].as_str().expect("event_id").to_owned();
        assert!(
            out.insert(id.clone(), v).is_none(),
            "event {id} received twice"
        );
    }
    out
}

/// Starts a Python consumer (`cmd`, a peer's `consume`); returns once it
/// printed "ready" (within `wait`), with the lines it prints next.
pub fn python_consumer(
    mut cmd: Command,
    wait: Duration,
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python starts");
    let out = super::lines(child.stdout.take().expect("piped"));
    let guard = ChildGuard(child);
    assert_eq!(
        out.recv_timeout(wait)
            .expect("the Python consumer is ready"),
        "ready"
    );
    (guard, out)
}

/// Publishes `n` rich events through `publisher` and waits for the Python
/// consumer (started by [`python_consumer`], printing each event it
/// accepted) to exit: it must succeed, having accepted each event exactly
/// once, equal on every field.
pub async fn python_accepts_every_event(
    publisher: &Bus,
    (python, out): &mut (ChildGuard, std::sync::mpsc::Receiver<String>),
    n: usize,
) {
    let events = rich_events(n);
    let sent = by_id(
        events
            .iter()
            .map(|e| e.to_json().expect("encodes").to_string()),
    );
    publisher.publish(events).await.expect("published");
    let status = python.0.wait().expect("python exits");
    let received: Vec<String> = out.try_iter().collect();
    assert!(
        status.success(),
        "the Python consumer did not accept every event: {received:?}"
    );
    assert_eq!(received.len(), n, "once each: {received:?}");
    assert_eq!(by_id(received), sent);
}
