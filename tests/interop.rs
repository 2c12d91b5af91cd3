//! Rust and Python on one exchange: eventsource-py 0.15.1 from PyPI, in a
//! virtual environment this test creates (Python 3.13, found on PATH or under
//! pyenv; `EVENTBUS_INTEROP_PYTHON` overrides), driven through
//! `tests/interop/peer.py`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::python::python;
use common::{ChildGuard, OrderPlaced, OrderShipped, Scope};
use eventbus::{AnyEnvelope, Bus, Envelope, HandlerError};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
fn peer(scope: &Scope, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/peer.py"
    ))
    .args(args)
    .args(["--url", &common::url(), "--exchange", &scope.exchange]);
    cmd
}

/// Starts a Python consumer in `group` expecting `count` events; returns once it is consuming.
fn python_consumer(
    scope: &Scope,
    group: &str,
    count: usize,
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    let mut child = peer(
        scope,
        &["consume", "--group", group, "--count", &count.to_string()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("python starts");
    let out = common::lines(child.stdout.take().expect("piped"));
    let peer = ChildGuard(child);
    assert_eq!(
        out.recv_timeout(WAIT)
            .expect("the Python consumer is ready"),
        "ready"
    );
    (peer, out)
}

/// Events with every envelope field set, as the Rust side publishes them.
fn rich_events(n: usize) -> Vec<AnyEnvelope> {
    (0..n)
        .map(|i| {
            let cause = Uuid::new_v4();
            if i % 2 == 0 {
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

fn by_id(json_lines: impl IntoIterator<Item = String>) -> BTreeMap<String, Value> {
    json_lines
        .into_iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            (v["event_id"].as_str().expect("event_id").to_owned(), v)
        })
        .collect()
}

/// A Rust bus in `group` forwarding every event (as its wire JSON) to a channel.
async fn rust_consumer(scope: &Scope, group: &str) -> (Bus, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let group = scope.group(group);
    let bus = scope
        .builder()
        .configure(move |c| c.consumer_group = group)
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

async fn collect(rx: &mut mpsc::UnboundedReceiver<Value>, n: usize) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let v = tokio::time::timeout(WAIT, rx.recv())
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

#[tokio::test]
async fn python_publishes_and_rust_receives_every_field() {
    let scope = Scope::new("interop-py2rs");
    scope.group("python");
    let (bus, mut rx) = rust_consumer(&scope, "rust").await;
    let out = peer(&scope, &["publish", "--count", "10"])
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
    assert_eq!(sent.len(), 10);
    let received = collect(&mut rx, 10).await;
    // Field for field, value for value: what Python wrote is what Rust handed the handler.
    assert_eq!(received, sent);
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn rust_publishes_and_a_python_handler_validates_every_event() {
    let scope = Scope::new("interop-rs2py");
    scope.group("python");
    let (mut python, out) = python_consumer(&scope, "python", 10);
    let publisher = scope.builder().build().await.expect("connects");
    let events = rich_events(10);
    let sent = by_id(
        events
            .iter()
            .map(|e| e.to_json().expect("encodes").to_string()),
    );
    publisher.publish(events).await.expect("confirmed");
    let status = python.0.wait().expect("python exits");
    let received: Vec<String> = out.try_iter().collect();
    assert!(
        status.success(),
        "the Python consumer did not accept every event: {received:?}"
    );
    // The Python model forbids unknown fields: each event was validated there.
    assert_eq!(by_id(received), sent);
    publisher
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn python_and_rust_groups_each_receive_every_event_once() {
    let scope = Scope::new("interop-groups");
    scope.group("python");
    let (mut python, out) = python_consumer(&scope, "py-group", 20);
    scope.group("py-group");
    let (bus, mut rx) = rust_consumer(&scope, "rs-group").await;
    let events = rich_events(10);
    let mut sent: BTreeSet<String> = events
        .iter()
        .map(|e| e.meta().event_id().to_string())
        .collect();
    bus.publish(events).await.expect("confirmed");
    let py = peer(&scope, &["publish", "--count", "10"])
        .output()
        .expect("python runs");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    sent.extend(
        by_id(
            String::from_utf8_lossy(&py.stdout)
                .lines()
                .map(str::to_owned),
        )
        .into_keys(),
    );
    assert_eq!(sent.len(), 20);

    let rust_got: BTreeSet<String> = collect(&mut rx, 20).await.into_keys().collect();
    assert_eq!(rust_got, sent);
    let status = python.0.wait().expect("python exits");
    assert!(status.success());
    let python_lines: Vec<String> = out.try_iter().collect();
    assert_eq!(
        python_lines.len(),
        20,
        "exactly once each: {python_lines:?}"
    );
    assert_eq!(
        by_id(python_lines).into_keys().collect::<BTreeSet<_>>(),
        sent
    );
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    // Nothing more arrived for the Rust group either.
    assert!(rx.try_recv().is_err());
}
