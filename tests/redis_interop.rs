//! Rust and Python on one Redis stream: eventsource-py 0.15.1's own
//! `RedisEventBus` (venv created by the test), driven through
//! `tests/interop/redis_peer.py`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::interop::{self, by_id, python_accepts_every_event, rich_events};
use common::python::{python, script};
use common::redis_scope::RedisScope;
use common::{ChildGuard, OrderPlaced};
use eventbus::{Bus, Envelope, HandlerError};
use serde_json::Value;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(60);

fn peer(scope: &RedisScope, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script("redis_peer.py")).args(args).args([
        "--url",
        &scope.url,
        "--prefix",
        &scope.prefix,
    ]);
    cmd
}

fn python_consumer(
    scope: &RedisScope,
    group: &str,
    count: usize,
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    interop::python_consumer(
        peer(
            scope,
            &["consume", "--group", group, "--count", &count.to_string()],
        ),
        WAIT,
    )
}

async fn rust_consumer(scope: &RedisScope, group: &str) -> (Bus, mpsc::UnboundedReceiver<Value>) {
    let group = group.to_owned();
    interop::rust_consumer(scope.builder().configure(move |c| c.consumer_group = group)).await
}

async fn collect(rx: &mut mpsc::UnboundedReceiver<Value>, n: usize) -> BTreeMap<String, Value> {
    interop::collect(rx, n, WAIT).await
}

#[tokio::test]
async fn python_publishes_and_rust_receives_every_field() {
    let scope = RedisScope::new("interop-py2rs");
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
    assert_eq!(received, sent);
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    assert_eq!(scope.pending("rust"), 0);
}

#[tokio::test]
async fn rust_publishes_and_a_python_handler_validates_every_event() {
    let scope = RedisScope::new("interop-rs2py");
    let mut python = python_consumer(&scope, "python", 10);
    let publisher = scope.builder().build().await.expect("connects");
    python_accepts_every_event(&publisher, &mut python, 10).await;
    assert_eq!(scope.pending("python"), 0, "Python acked them all");
    publisher
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn python_and_rust_groups_each_receive_every_event_once() {
    let scope = RedisScope::new("interop-groups");
    let (mut python, out) = python_consumer(&scope, "py-group", 20);
    let (bus, mut rx) = rust_consumer(&scope, "rs-group").await;
    let events = rich_events(10);
    let mut sent: BTreeSet<String> = events
        .iter()
        .map(|e| e.meta().event_id().to_string())
        .collect();
    bus.publish(events).await.expect("published");
    let py = peer(&scope, &["publish", "--group", "py-group", "--count", "10"])
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
    assert!(rx.try_recv().is_err());
    assert_eq!(scope.pending("py-group") + scope.pending("rs-group"), 0);
}

#[tokio::test]
async fn a_dead_letter_made_by_rust_is_read_by_eventsource_py() {
    let scope = RedisScope::new("interop-dlq");
    let bus = scope
        .builder()
        .configure(|c| c.consumer_group = "py".into())
        .handler::<OrderPlaced, _, _>("reject", |_e: std::sync::Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Err::<(), _>(HandlerError::permanent("rejected")))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let event = rich_events(1).remove(0);
    bus.publish([event.clone()]).await.expect("published");
    let dlq = bus.dlq("py");
    common::eventually("dead-lettered", WAIT, || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 1 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    // eventsource-py's get_dlq_messages reads it with its own three fields.
    let code = r#"
import asyncio, json, sys
from eventsource.adapters.redis import RedisEventBus, RedisEventBusConfig
async def main():
    b = RedisEventBus(config=RedisEventBusConfig(redis_url=sys.argv[1], stream_prefix=sys.argv[2], consumer_group="py", enable_tracing=False))
    await b.connect()
    print(json.dumps(await b.get_dlq_messages()))
    await b.disconnect()
asyncio.run(main())
"#;
    let out = Command::new(python())
        .args(["-c", code, &scope.url, &scope.prefix])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let data = &messages[0]["data"];
    assert_eq!(data["event_id"], event.meta().event_id().to_string());
    assert_eq!(data["retry_count"], "0");
    assert!(
        data["original_message_id"]
            .as_str()
            .is_some_and(|s| s.contains('-'))
    );
    assert!(data["dlq_timestamp"].as_str().is_some());
    let payload: Value =
        serde_json::from_str(data["payload"].as_str().expect("payload")).expect("JSON");
    assert_eq!(payload, event.to_json().expect("encodes"));
}
