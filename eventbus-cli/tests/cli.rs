//! The `eventbus` tool end to end, against the local RabbitMQ.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{OrderPlaced, OrderShipped, Scope, placed, shipped};
use eventbus::{AnyEnvelope, Envelope, HandlerError};

fn eventbus(scope: &Scope, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args(args)
        .env("EVENTBUS_URL", common::url())
        .env("EVENTBUS_EXCHANGE_NAME", &scope.exchange)
        .env_remove("EVENTBUS_CONSUMER_GROUP")
        .stdin(Stdio::null())
        .output()
        .expect("the eventbus binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("valid JSON")
}

#[tokio::test]
async fn inspect_replay_and_purge_from_the_shell() {
    let scope = Scope::new("cli");
    // A service whose handlers reject everything, so the DLQ fills.
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("reject", |_e: Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Err::<(), _>(HandlerError::permanent("rejected by test")))
        })
        .handler::<OrderShipped, _, _>("reject-shipped", |_e: Arc<Envelope<OrderShipped>>| {
            std::future::ready(Err::<(), _>(HandlerError::permanent("rejected by test")))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let first = placed("cli-1");
    let id = first.meta().event_id().to_string();
    bus.publish([
        AnyEnvelope::from(first),
        placed("cli-2").into(),
        shipped("cli-3").into(),
    ])
    .await
    .expect("confirmed");
    let dlq = bus.dlq("default");
    common::eventually("three in the DLQ", Duration::from_secs(30), || async {
        dlq.count().await.ok() == Some(3)
    })
    .await;
    // Stop the service, so replays stay in its queue where we can count them.
    bus.stop_consuming().await.expect("stops");

    assert_eq!(ok(eventbus(&scope, &["dlq", "count"])).trim(), "3");
    let counted = json(eventbus(
        &scope,
        &["--json", "dlq", "count", "--group", "default"],
    ));
    assert_eq!(counted["count"], 3);

    let table = ok(eventbus(&scope, &["dlq", "list"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&id) && table.contains("rejected by test"),
        "{table}"
    );
    let listed = json(eventbus(
        &scope,
        &["--json", "dlq", "list", "--limit", "10"],
    ));
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["error_type"], "str");
    assert_eq!(listed[0]["retry_count"], 0);
    assert_eq!(
        ok(eventbus(&scope, &["dlq", "count"])).trim(),
        "3",
        "listing consumed nothing"
    );

    let shown = json(eventbus(&scope, &["--json", "dlq", "show", &id]));
    assert_eq!(shown["message_id"], id.as_str());
    assert_eq!(shown["handler"], "reject");
    let missing = eventbus(&scope, &["dlq", "show", "no-such-id"]);
    assert_eq!(missing.status.code(), Some(3));

    // Destructive commands want confirmation.
    let refused = eventbus(&scope, &["dlq", "purge"]);
    assert_eq!(refused.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(ok(eventbus(&scope, &["dlq", "count"])).trim(), "3");

    assert!(ok(eventbus(&scope, &["dlq", "replay", &id])).contains("replayed"));
    assert_eq!(
        eventbus(&scope, &["dlq", "replay", &id]).status.code(),
        Some(3),
        "already replayed"
    );
    let report = json(eventbus(
        &scope,
        &[
            "--json",
            "dlq",
            "replay-all",
            "--yes",
            "--event-type",
            "OrderShipped",
        ],
    ));
    assert_eq!(report["replayed"], 1);
    assert_eq!(report["kept"], 1);
    let info = json(eventbus(&scope, &["--json", "queue", "info"]));
    assert_eq!(
        info["message_count"], 2,
        "both replays are in the group's queue: {info}"
    );

    assert_eq!(
        ok(eventbus(&scope, &["dlq", "purge", "--yes"])).trim(),
        "purged 1"
    );
    assert_eq!(ok(eventbus(&scope, &["dlq", "count"])).trim(), "0");

    let health = json(eventbus(&scope, &["--json", "health"]));
    assert_eq!(health["healthy"], true);
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[test]
fn errors_are_clear_and_never_show_the_password() {
    let scope = Scope::new("cli-errors");
    let out = Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args([
            "--url",
            "amqp://bob:s3cret@localhost:notaport/",
            "dlq",
            "count",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid broker URL") && err.contains("bob:***@"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    let out = eventbus(&scope, &["dlq", "count", "--group", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}.nobody.dlq", scope.exchange)),
        "{err}"
    );

    let out = eventbus(&scope, &["dlq", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}
