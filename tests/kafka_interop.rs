//! Rust and Python on one Kafka topic: eventsource-py 0.15.1's own
//! `KafkaEventBus` (aiokafka; venv created by the test), driven through
//! `tests/interop/kafka_peer.py`, each test on a Tansu broker of its own.
//! Group joins are slow on Tansu (15-25 s, librdkafka and aiokafka alike):
//! the waits are long, but every one polls.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::OrderPlaced;
use common::interop::{
    by_id, collect, python_accepts_every_event, python_consumer, rich_events, rust_consumer,
};
use common::kafka::{self, Tansu, builder, prefix, records};
use common::python::{python, script};
use eventbus::{AnyEnvelope, DomainEvent, Envelope};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

fn peer(tansu: &Tansu, prefix: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script("kafka_peer.py")).args(args).args([
        "--bootstrap",
        &tansu.bootstrap(),
        "--prefix",
        prefix,
    ]);
    cmd
}

/// Runs `kafka_peer.py publish` (its own publisher group); the events it
/// published, by id.
fn python_publishes(tansu: &Tansu, prefix: &str, count: usize) -> BTreeMap<String, Value> {
    let out = peer(tansu, prefix, &["publish", "--count", &count.to_string()])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = by_id(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned),
    );
    assert_eq!(sent.len(), count);
    sent
}

/// `group`'s committed offset and the end (last offset + 1) of each
/// partition of `topic` that has records. The ends are read from the records:
/// Tansu's high watermark counts a batch of several records as one.
fn commits_and_ends(tansu: &Tansu, group: &str, topic: &str) -> Vec<(i32, i64, i64)> {
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records(tansu, topic) {
        let end = ends.entry(r.partition).or_default();
        *end = (*end).max(r.offset + 1);
    }
    kafka::committed(tansu, group, topic)
        .into_iter()
        .filter_map(|(p, o)| ends.get(&p).map(|&end| (p, o, end)))
        .collect()
}

/// Waits until `group` has committed every partition of `topic` to its end.
async fn await_committed(tansu: &Tansu, group: &str, topic: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = commits_and_ends(tansu, group, topic);
        if state.iter().all(|(_, o, high)| o == high) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {group} did not commit {topic} to its end: (partition, committed, end) {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn python_publishes_and_rust_receives_every_field() {
    let tansu = Tansu::start();
    let prefix = prefix("py2rs");
    let (bus, mut rx) =
        rust_consumer(builder(&tansu, &prefix).configure(|c| c.consumer_group = "rust".into()))
            .await;
    let sent = python_publishes(&tansu, &prefix, 10);
    let received = collect(&mut rx, 10, WAIT).await;
    assert_eq!(received, sent);
    let types: BTreeSet<&str> = received
        .values()
        .map(|v| v["event_type"].as_str().expect("a type"))
        .collect();
    assert_eq!(types, BTreeSet::from(["OrderPlaced", "OrderShipped"]));
    for v in received.values() {
        for field in ["tenant_id", "causation_id", "actor_id", "correlation_id"] {
            assert!(v[field].is_string(), "{field} set: {v}");
        }
    }
    let topic = format!("{prefix}.stream");
    await_committed(&tansu, "rust", &topic).await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    assert!(rx.try_recv().is_err(), "nothing more");
}

#[tokio::test]
async fn rust_publishes_and_a_python_handler_accepts_every_event() {
    let tansu = Tansu::start();
    let prefix = prefix("rs2py");
    // Creates the topic (three partitions) before Python subscribes to it.
    let publisher = builder(&tansu, &prefix).build().await.expect("connects");
    let mut python = python_consumer(
        peer(
            &tansu,
            &prefix,
            &["consume", "--group", "python", "--count", "10"],
        ),
        WAIT,
    );
    python_accepts_every_event(&publisher, &mut python, 10).await;
    await_committed(&tansu, "python", &format!("{prefix}.stream")).await;
    publisher
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn python_and_rust_groups_each_receive_every_event_once() {
    let tansu = Tansu::start();
    let prefix = prefix("groups");
    let (bus, mut rx) =
        rust_consumer(builder(&tansu, &prefix).configure(|c| c.consumer_group = "rs-group".into()))
            .await;
    let (mut python, out) = python_consumer(
        peer(
            &tansu,
            &prefix,
            &["consume", "--group", "py-group", "--count", "20"],
        ),
        WAIT,
    );
    let events = rich_events(10);
    let mut sent: BTreeSet<String> = events
        .iter()
        .map(|e| e.meta().event_id().to_string())
        .collect();
    bus.publish(events).await.expect("published");
    sent.extend(python_publishes(&tansu, &prefix, 10).into_keys());
    assert_eq!(sent.len(), 20);
    let rust_got: BTreeSet<String> = collect(&mut rx, 20, WAIT).await.into_keys().collect();
    assert_eq!(rust_got, sent);
    let status = python.0.wait().expect("python exits");
    let python_lines: Vec<String> = out.try_iter().collect();
    assert!(status.success(), "{python_lines:?}");
    assert_eq!(
        python_lines.len(),
        20,
        "exactly once each: {python_lines:?}"
    );
    assert_eq!(
        by_id(python_lines).into_keys().collect::<BTreeSet<_>>(),
        sent
    );
    let topic = format!("{prefix}.stream");
    await_committed(&tansu, "py-group", &topic).await;
    await_committed(&tansu, "rs-group", &topic).await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    assert!(rx.try_recv().is_err(), "nothing twice");
}

/// The header names of a record, without the trace context.
fn header_names(r: &kafka::Raw) -> Vec<&str> {
    r.headers
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !["traceparent", "tracestate", "baggage"].contains(k))
        .collect()
}

/// Each header eventsource-py writes equals its field in the record's value.
fn assert_headers_match_value(r: &kafka::Raw) {
    let value: Value = serde_json::from_str(r.value.as_deref().expect("a value")).expect("JSON");
    for name in [
        "event_id",
        "event_type",
        "aggregate_id",
        "aggregate_type",
        "correlation_id",
        "tenant_id",
        "causation_id",
        "actor_id",
    ] {
        assert_eq!(r.header(name), value[name].as_str(), "{name} of {value}");
    }
    assert_eq!(
        r.header("aggregate_version"),
        Some(value["aggregate_version"].to_string().as_str())
    );
    let occurred = value["occurred_at"].as_str().expect("occurred_at");
    assert_eq!(
        r.header("occurred_at"),
        Some(occurred.replace('Z', "+00:00").as_str()),
        "Python's isoformat of {occurred}"
    );
}

#[tokio::test]
async fn the_same_key_lands_on_the_same_partition_from_both() {
    let tansu = Tansu::start();
    let prefix = prefix("keys");
    const PARTITIONS: i32 = 7;
    // eventbus creates the topic with the configured partitions.
    let bus = builder(&tansu, &prefix)
        .configure(|c| c.topic_partitions = PARTITIONS)
        .build()
        .await
        .expect("connects");
    let topic = format!("{prefix}.stream");
    assert_eq!(kafka::watermarks(&tansu, &topic).len(), 7);
    let python_sent = python_publishes(&tansu, &prefix, 20);
    let events: Vec<AnyEnvelope> = python_sent
        .values()
        .map(|v| {
            let aggregate: Uuid = v["aggregate_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("a UUID");
            let cause = Envelope::new(Uuid::new_v4(), placed_by_rust());
            AnyEnvelope::from(
                Envelope::new(aggregate, placed_by_rust())
                    .with_tenant(Uuid::new_v4())
                    .with_actor("rust")
                    .caused_by(&cause),
            )
        })
        .collect();
    bus.publish(events).await.expect("published");
    let recs = records(&tansu, &topic);
    assert_eq!(recs.len(), 40);
    let mut by_key: BTreeMap<&str, Vec<&kafka::Raw>> = BTreeMap::new();
    for r in &recs {
        by_key
            .entry(r.key.as_deref().expect("a key"))
            .or_default()
            .push(r);
    }
    assert_eq!(by_key.len(), 20);
    let mut used = BTreeSet::new();
    for (key, rs) in &by_key {
        let [a, b] = rs.as_slice() else {
            panic!("key {key}: {} records", rs.len())
        };
        let python_made = [a, b]
            .iter()
            .filter(|r| python_sent.contains_key(r.header("event_id").unwrap_or_default()))
            .count();
        assert_eq!(python_made, 1, "key {key}: one from each side");
        assert_eq!(a.partition, b.partition, "key {key}");
        assert_eq!(
            a.partition,
            kafka::java_partition(key.as_bytes(), PARTITIONS),
            "key {key}: murmur2"
        );
        assert_eq!(
            header_names(a),
            header_names(b),
            "key {key}: the same headers in the same order"
        );
        assert_headers_match_value(a);
        assert_headers_match_value(b);
        used.insert(a.partition);
    }
    assert!(used.len() > 3, "keys spread over partitions: {used:?}");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

/// An event type eventsource-py's side does not register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Invoice")]
struct InvoiceSent {
    number: String,
}

fn placed_by_rust() -> OrderPlaced {
    OrderPlaced {
        customer_id: "rust".to_owned(),
        total_amount: 1.0,
    }
}

#[tokio::test]
async fn dead_letters_made_by_python_are_listed_and_replayed_by_rust() {
    let tansu = Tansu::start();
    let prefix = prefix("dlq");
    // No handlers: it publishes and reads the DLQ (creating the topic and the DLQ topic).
    let bus = builder(&tansu, &prefix).build().await.expect("connects");
    // A Rust group next to the failing Python one.
    let (rust, mut rx) =
        rust_consumer(builder(&tansu, &prefix).configure(|c| c.consumer_group = "rs".into())).await;
    let (mut python, out) = python_consumer(
        peer(
            &tansu,
            &prefix,
            &[
                "deadletter",
                "--group",
                "py",
                "--count",
                "3",
                "--max-retries",
                "1",
            ],
        ),
        WAIT,
    );
    let events = rich_events(2);
    // A type the Python side does not know: dead-lettered at once.
    let unknown = Envelope::new(
        Uuid::new_v4(),
        InvoiceSent {
            number: "INV-1".to_owned(),
        },
    );
    let mut all = events.clone();
    all.push(AnyEnvelope::from(unknown.clone()));
    bus.publish(all).await.expect("published");
    let status = python.0.wait().expect("python exits");
    let lines: Vec<String> = out.try_iter().collect();
    assert!(status.success(), "{lines:?}");
    assert_eq!(lines, [r#"{"dead_lettered": 3}"#]);
    let dlq = bus.dlq("py");
    let listed = dlq.list(10).await.expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(dlq.count().await.expect("count"), 3);
    let id = unknown.meta().event_id().to_string();
    let m = dlq.show(&id).await.expect("show").expect("listed");
    assert_eq!(m.event_type.as_deref(), Some("InvoiceSent"));
    assert_eq!(m.error_type.as_deref(), Some("DeserializationError"));
    assert_eq!(m.reason.as_deref(), Some("Unknown event type: InvoiceSent"));
    assert_eq!(m.retry_count, Some(0), "no retry");
    assert_eq!(
        m.headers.get("dlq_reason"),
        Some(&Value::from("deserialization_error"))
    );
    assert_eq!(bus.dlq("default").count().await.expect("count"), 0);
    for event in &events {
        let id = event.meta().event_id().to_string();
        let m = dlq.show(&id).await.expect("show").expect("listed");
        assert_eq!(m.message_id.as_deref(), Some(id.as_str()));
        assert_eq!(m.event_type.as_deref(), Some(event.meta().event_type()));
        assert_eq!(m.error_type.as_deref(), Some("RuntimeError"));
        assert!(
            m.reason
                .as_deref()
                .is_some_and(|r| r.contains("python handler rejects")),
            "{m:?}"
        );
        assert_eq!(m.retry_count, Some(1), "one retry, then the DLQ");
        assert!(
            m.dead_lettered_at
                .as_deref()
                .is_some_and(|t| t.ends_with("+00:00"))
        );
        assert_eq!(
            m.headers.get("dlq_reason"),
            Some(&Value::from("max_retries_exceeded"))
        );
        assert_eq!(
            m.headers.get("dlq_original_topic"),
            Some(&Value::from(format!("{prefix}.stream")))
        );
        let body: Value = serde_json::from_str(&m.body).expect("JSON");
        assert_eq!(body, event.to_json().expect("encodes"));
    }
    // eventsource-py retries on the main topic: each failed event is there twice.
    let topic = format!("{prefix}.stream");
    let main = records(&tansu, &topic);
    assert_eq!(main.len(), 5);
    assert_eq!(
        main.iter()
            .filter(|r| r.header("retry_count") == Some("1"))
            .count(),
        2
    );

    // Rust replays one: to the main topic, as eventsource-py replays (its
    // members read no retry topic), and the Python group handles it again.
    let (mut python, out) = python_consumer(
        peer(
            &tansu,
            &prefix,
            &["consume", "--group", "py", "--count", "1"],
        ),
        WAIT,
    );
    let replayed = &events[0];
    let id = replayed.meta().event_id().to_string();
    assert!(dlq.replay(&id).await.expect("replay"), "replayed");
    let status = python.0.wait().expect("python exits");
    let lines: Vec<String> = out.try_iter().collect();
    assert!(
        status.success(),
        "the Python group got the replay: {lines:?}"
    );
    assert_eq!(
        by_id(lines),
        BTreeMap::from([(id.clone(), replayed.to_json().expect("encodes"))])
    );
    let main = records(&tansu, &topic);
    assert_eq!(main.len(), 6);
    let copy = main
        .iter()
        .find(|r| r.header("dlq_replay_count").is_some())
        .expect("the replayed copy");
    assert_eq!(copy.header("event_id"), Some(id.as_str()));
    assert_eq!(copy.header("dlq_replay_count"), Some("1"));
    assert_eq!(copy.header("retry_count"), Some("0"));
    assert_eq!(copy.header("retry_after"), None);
    assert!(
        copy.headers
            .iter()
            .all(|(k, _)| !k.starts_with("dlq_") || k == "dlq_replay_count"),
        "{:?}",
        copy.headers
    );
    assert_eq!(
        dlq.count().await.expect("count"),
        2,
        "the replayed one is settled"
    );

    // eventsource-py's retries and replays are on the main topic: the Rust
    // group receives them too (as every eventsource-py group does), so the
    // replayed event three times, the other twice; the unknown type is not its.
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..5 {
        let v = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        *deliveries
            .entry(v["event_id"].as_str().expect("event_id").to_owned())
            .or_default() += 1;
    }
    let other = events[1].meta().event_id().to_string();
    assert_eq!(deliveries, BTreeMap::from([(id, 3), (other, 2)]));
    await_committed(&tansu, "rs", &topic).await;
    rust.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert!(rx.try_recv().is_err(), "nothing more");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}
