//! The `eventbus` tool on Kafka (a Tansu broker of the test's own): health,
//! queue info and the DLQ commands.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{Tansu, builder};
use common::{OrderPlaced, placed};
use eventbus::{Envelope, HandlerError};

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
