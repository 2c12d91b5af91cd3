//! The `eventbus` tool on Kafka (a Tansu broker of the test's own): health,
//! queue info and the DLQ commands.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{self, Tansu, builder, records};
use common::{OrderPlaced, placed};
use eventbus::{AnyEnvelope, Envelope, HandlerError};

fn eventbus(tansu: &Tansu, prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args(args)
        .env("EVENTBUS_URL", tansu.url())
        .env("EVENTBUS_TOPIC_PREFIX", prefix)
        .env("EVENTBUS_CONNECT_TIMEOUT", "10")
        .env_remove("EVENTBUS_CONSUMER_GROUP")
        .stdin(Stdio::null())
        .output()
        .expect("the eventbus binary runs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("valid JSON")
}

#[tokio::test]
async fn dlq_queue_and_health_commands_on_kafka() {
    let tansu = Tansu::start();
    let prefix = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let bus = builder(&tansu, &prefix)
        .configure(|c| c.consumer_group = "billing".into())
        .handler::<OrderPlaced, _, _>("reject", |_e: Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Err::<(), _>(HandlerError::permanent("rejected by test")))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let events: Vec<_> = (0..3).map(|i| placed(&format!("cli-{i}"))).collect();
    bus.publish(events.clone()).await.expect("published");
    let dlq = bus.dlq("billing");
    common::eventually("dead-lettered", Duration::from_secs(30), || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 3 }
    })
    .await;
    let g = ["--group", "billing"];
    let health = json(eventbus(&tansu, &prefix, &["--json", "health"]));
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["transport"], "kafka");
    let info = json(eventbus(
        &tansu,
        &prefix,
        &["--json", "queue", "info", g[0], g[1]],
    ));
    assert!(info.to_string().contains("billing"), "{info}");
    let count = json(eventbus(
        &tansu,
        &prefix,
        &["--json", "dlq", "count", g[0], g[1]],
    ));
    assert_eq!(count["count"], 3);
    assert_eq!(count["queue"], format!("{prefix}.stream.dlq"));
    let table = ok(eventbus(&tansu, &prefix, &["dlq", "list", g[0], g[1]]));
    assert!(table.contains("rejected by test"), "{table}");
    let id = events[0].meta().event_id().to_string();
    let shown = json(eventbus(
        &tansu,
        &prefix,
        &["--json", "dlq", "show", g[0], g[1], &id],
    ));
    assert_eq!(shown["handler"], "reject");
    let replayed = json(eventbus(
        &tansu,
        &prefix,
        &["--json", "dlq", "replay", g[0], g[1], &id],
    ));
    assert_eq!(replayed["to"], format!("{prefix}.stream.retry.billing"));
    // The handler still rejects: back in the DLQ.
    common::eventually("dead-lettered again", Duration::from_secs(30), || {
        let dlq = dlq.clone();
        let stats = bus.stats().messages_sent_to_dlq;
        async move { stats == 4 && dlq.count().await.unwrap_or(0) == 3 }
    })
    .await;
    let purged = json(eventbus(
        &tansu,
        &prefix,
        &["--json", "dlq", "purge", g[0], g[1], "--yes"],
    ));
    assert_eq!(purged["purged"], 3);
    assert_eq!(dlq.count().await.expect("count"), 0);
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

#[tokio::test]
async fn dlq_replay_sends_an_eventsource_py_dead_letter_to_the_main_topic() {
    let tansu = Tansu::start();
    let prefix = kafka::prefix("cli-pydlq");
    // Creates the topic and the DLQ topic.
    let bus = builder(&tansu, &prefix).build().await.expect("connects");
    let topic = format!("{prefix}.stream");
    let event = placed("py");
    let id = event.meta().event_id().to_string();
    let key = event.meta().aggregate_id().to_string();
    let body = AnyEnvelope::from(event)
        .to_json()
        .expect("encodes")
        .to_string();
    // As eventsource-py's consumer writes a dead letter after one retry:
    // the retry's headers, then its dlq_* headers; no eventbus_* header.
    kafka::produce(
        &tansu,
        &format!("{topic}.dlq"),
        &key,
        Some(&body),
        &[
            ("event_id", &id),
            ("event_type", "OrderPlaced"),
            ("aggregate_id", &key),
            ("retry_count", "1"),
            ("retry_after", "1764700000.25"),
            ("dlq_reason", "max_retries_exceeded"),
            ("dlq_error_type", "RuntimeError"),
            ("dlq_error_message", "the Python handler fails"),
            ("dlq_retry_count", "1"),
            ("dlq_timestamp", "2026-12-03T09:00:00.000001+00:00"),
            ("dlq_original_topic", &topic),
            ("dlq_original_partition", "0"),
            ("dlq_original_offset", "1"),
            ("dlq_consumer_group", "py"),
        ],
    )
    .await;
    let replayed = json(eventbus(
        &tansu,
        &prefix,
        &["--json", "dlq", "replay", "--group", "py", &id],
    ));
    assert_eq!(replayed["to"], topic.as_str(), "{replayed}");
    let main = records(&tansu, &topic);
    assert_eq!(main.len(), 1, "{main:?}");
    let r = &main[0];
    assert_eq!(r.key.as_deref(), Some(key.as_str()));
    assert_eq!(r.value.as_deref(), Some(body.as_str()));
    assert_eq!(r.header("event_id"), Some(id.as_str()));
    assert_eq!(r.header("retry_count"), Some("0"));
    assert_eq!(r.header("dlq_replay_count"), Some("1"));
    assert_eq!(r.header("retry_after"), None);
    assert_eq!(r.header("eventbus_retry_group"), None);
    assert!(
        r.headers
            .iter()
            .all(|(k, _)| !k.starts_with("dlq_") || k == "dlq_replay_count"),
        "{:?}",
        r.headers
    );
    assert!(
        records(&tansu, &format!("{topic}.retry.py")).is_empty(),
        "nothing on the retry topic"
    );
    assert_eq!(bus.dlq("py").count().await.expect("count"), 0, "settled");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}
