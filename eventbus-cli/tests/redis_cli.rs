//! The `eventbus` tool on Redis Streams: a dead letter eventsource-py made is
//! listed and replayed by the CLI; DLQ, queue and health commands.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::python::{python, script};
use common::redis_scope::RedisScope;
use common::{OrderPlaced, placed};
use eventbus::{Envelope, HandlerError};

fn eventbus(scope: &RedisScope, vars: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args(args)
        .env("EVENTBUS_URL", &scope.url)
        .env("EVENTBUS_STREAM_PREFIX", &scope.prefix)
        .env_remove("EVENTBUS_CONSUMER_GROUP")
        .envs(vars.iter().copied())
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
async fn a_dead_letter_made_by_eventsource_py_is_listed_and_replayed_by_the_cli() {
    let scope = RedisScope::new("cli-py-dlq");
    // eventsource-py publishes one event, consumes it with a failing handler,
    // then its own recovery dead-letters it.
    let published = Command::new(python())
        .arg(script("redis_peer.py"))
        .args(["publish", "--group", "pyg", "--count", "1"])
        .args(["--url", &scope.url, "--prefix", &scope.prefix])
        .output()
        .expect("python runs");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let out = Command::new(python())
        .arg(script("redis_peer.py"))
        .args(["deadletter", "--group", "pyg", "--count", "1"])
        .args(["--url", &scope.url, "--prefix", &scope.prefix])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py = String::from_utf8_lossy(&out.stdout);
    assert!(py.contains(r#""dlq": 1"#), "{py}");
    let vars = [("EVENTBUS_CONSUMER_GROUP", "pyg")];
    let listed = json(eventbus(&scope, &vars, &["--json", "dlq", "list"]));
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["message_id"]
        .as_str()
        .expect("event id")
        .to_owned();
    assert_eq!(listed[0]["retry_count"], 0);
    assert_eq!(
        json(eventbus(&scope, &vars, &["--json", "dlq", "count"]))["count"],
        1
    );
    let shown = json(eventbus(&scope, &vars, &["--json", "dlq", "show", &id]));
    assert_eq!(shown["message_id"], id.as_str());
    // A Python consumer of the group is waiting; the CLI replays to it.
    let mut child = Command::new(python())
        .arg(script("redis_peer.py"))
        .args(["consume", "--group", "pyg", "--count", "1"])
        .args(["--url", &scope.url, "--prefix", &scope.prefix])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python starts");
    let lines = common::lines(child.stdout.take().expect("piped"));
    let mut consumer = common::ChildGuard(child);
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(60)).expect("ready"),
        "ready"
    );
    ok(eventbus(&scope, &vars, &["dlq", "replay", &id]));
    assert!(
        consumer.0.wait().expect("python exits").success(),
        "the Python group got the replay"
    );
    let got: serde_json::Value =
        serde_json::from_str(&lines.recv_timeout(Duration::from_secs(5)).expect("event"))
            .expect("JSON");
    assert_eq!(got["event_id"], id.as_str());
    assert_eq!(
        json(eventbus(&scope, &vars, &["--json", "dlq", "count"]))["count"],
        0
    );
    let missing = eventbus(&scope, &vars, &["dlq", "replay", &id]);
    assert_eq!(missing.status.code(), Some(3));
}

#[tokio::test]
async fn dlq_queue_and_health_commands_on_redis() {
    let scope = RedisScope::new("cli-redis");
    let bus = scope
        .builder()
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
    let health = json(eventbus(&scope, &[], &["--json", "health"]));
    assert_eq!(health["healthy"], true);
    assert_eq!(health["transport"], "redis");
    let info = json(eventbus(
        &scope,
        &[],
        &["--json", "queue", "info", g[0], g[1]],
    ));
    assert!(info.to_string().contains("billing"), "{info}");
    let count = json(eventbus(
        &scope,
        &[],
        &["--json", "dlq", "count", g[0], g[1]],
    ));
    assert_eq!(count["count"], 3);
    assert_eq!(count["queue"], format!("{}:stream_dlq", scope.prefix));
    let table = ok(eventbus(&scope, &[], &["dlq", "list", g[0], g[1]]));
    assert!(
        table.contains("rejected by test") && table.contains("reject"),
        "{table}"
    );
    let id = events[0].meta().event_id().to_string();
    let shown = json(eventbus(
        &scope,
        &[],
        &["--json", "dlq", "show", g[0], g[1], &id],
    ));
    assert_eq!(shown["handler"], "reject");
    let refused = eventbus(&scope, &[], &["dlq", "purge", g[0], g[1]]);
    assert_eq!(refused.status.code(), Some(4), "purge asks first");
    let replayed = json(eventbus(
        &scope,
        &[],
        &[
            "--json",
            "dlq",
            "replay-all",
            g[0],
            g[1],
            "--event-type",
            "OrderPlaced",
            "--yes",
        ],
    ));
    assert_eq!(replayed["replayed"], 3);
    // The handler still rejects: back in the DLQ, once each.
    common::eventually("dead-lettered again", Duration::from_secs(30), || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 3 }
    })
    .await;
    let purged = json(eventbus(
        &scope,
        &[],
        &["--json", "dlq", "purge", g[0], g[1], "--yes"],
    ));
    assert_eq!(purged["purged"], 3);
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

#[tokio::test]
async fn health_over_rediss_with_a_ca_and_fails_closed_without_it() {
    use common::pki::Pki;
    use common::tls_redis::TlsRedis;

    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "server", true);
    let scope = RedisScope::on("cli-tls", &server.url("localhost"));
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let tls = [
        ("EVENTBUS_CA_FILE", ca.to_str().expect("UTF-8 path")),
        ("EVENTBUS_CERT_FILE", cert.to_str().expect("UTF-8 path")),
        ("EVENTBUS_KEY_FILE", key.to_str().expect("UTF-8 path")),
    ];
    let health = json(eventbus(&scope, &tls, &["--json", "health"]));
    assert_eq!(health["transport"], "redis", "{health}");
    assert_eq!(health["connected"], true, "{health}");
    assert_eq!(health["healthy"], true, "{health}");
    // Without the CA the server is not trusted: a non-zero exit naming TLS, in time.
    let started = std::time::Instant::now();
    let out = eventbus(
        &scope,
        &[("EVENTBUS_CONNECT_TIMEOUT", "8")],
        &["--json", "health"],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("TLS"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}: {text}",
        started.elapsed()
    );
}
