//! The `eventbus` tool end to end, against the local RabbitMQ.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{OrderPlaced, OrderShipped, Scope, placed, shipped};
use eventbus::{AnyEnvelope, Envelope, HandlerError};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// Handler names as `#[projection]` gives them: long paths that begin each reason.
const REJECT: &str = "billing::projections::OrderLedger::on_order_placed";
const REJECT_SHIPPED: &str = "billing::projections::OrderLedger::on_order_shipped";

fn eventbus(scope: &Scope, args: &[&str]) -> Output {
    eventbus_with(scope, &[], args)
}

/// `eventbus` with these variables set besides the scope's.
fn eventbus_with(scope: &Scope, vars: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args(args)
        .env("EVENTBUS_URL", common::url())
        .env("EVENTBUS_EXCHANGE_NAME", &scope.exchange)
        .env_remove("EVENTBUS_CONSUMER_GROUP")
        .env_remove("EVENTBUS_MANAGEMENT_URL")
        .env_remove("EVENTBUS_MAX_RETRIES")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the eventbus binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
        .handler::<OrderPlaced, _, _>(REJECT, |_e: Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Err::<(), _>(HandlerError::permanent("rejected by test")))
        })
        .handler::<OrderShipped, _, _>(REJECT_SHIPPED, |_e: Arc<Envelope<OrderShipped>>| {
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
        table.lines().next().is_some_and(|h| h.contains("HANDLER")),
        "{table}"
    );
    assert!(table.contains(&id), "{table}");
    let listed = json(eventbus(
        &scope,
        &["--json", "dlq", "list", "--limit", "10"],
    ));
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 3);
    // Handler and reason in full, however long the handler's path.
    for message in listed {
        let (handler, reason) = (
            message["handler"].as_str().expect("a handler"),
            message["reason"].as_str().expect("a reason"),
        );
        assert!(handler == REJECT || handler == REJECT_SHIPPED, "{message}");
        assert!(reason.contains("rejected by test"), "{message}");
        let row = table
            .lines()
            .position(|l| l.starts_with(message["message_id"].as_str().expect("an id")))
            .expect("a row per message");
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[row].contains(handler), "{table}");
        assert_eq!(lines[row + 1], format!("  reason: {reason}"), "{table}");
    }
    assert_eq!(listed[0]["error_type"], "str");
    assert_eq!(listed[0]["retry_count"], 0);
    assert_eq!(
        ok(eventbus(&scope, &["dlq", "count"])).trim(),
        "3",
        "listing consumed nothing"
    );

    let shown = json(eventbus(&scope, &["--json", "dlq", "show", &id]));
    assert_eq!(shown["message_id"], id.as_str());
    assert_eq!(shown["handler"], REJECT);
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

/// A service with two groups declares its topology (`default` takes
/// OrderPlaced, `audit` everything), and one OrderPlaced waits in each group's
/// queue. Its names: `(exchanges, queues)`, queues in `show`'s order.
async fn two_groups_holding_a_message(scope: &Scope) -> (Vec<String>, Vec<String>) {
    let audit = scope.group("audit");
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("billing::on_placed", |_e: Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .wildcard_handler("audit::record", Some(&audit), |_e: AnyEnvelope| {
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .build()
        .await
        .expect("connects and declares");
    bus.publish([AnyEnvelope::from(placed("topology-1"))])
        .await
        .expect("confirmed");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    let x = &scope.exchange;
    for group in ["audit", "default"] {
        let queue = scope.queue(group);
        common::eventually("the message in its queue", Duration::from_secs(10), || {
            let queue = queue.clone();
            async move { common::message_count(&queue).await == 1 }
        })
        .await;
    }
    let exchanges = vec![
        x.clone(),
        format!("{x}_dlq"),
        format!("{x}.audit.redeliver"),
        format!("{x}.default.redeliver"),
    ];
    let mut queues = Vec::new();
    for group in ["audit", "default"] {
        queues.push(format!("{x}.{group}"));
        queues.extend((1..=3).map(|n| format!("{x}.{group}.delay.{n}")));
        queues.push(format!("{x}.{group}.unhandled"));
        queues.push(format!("{x}.{group}.dlq"));
    }
    (exchanges, queues)
}

/// Does the queue (or else the exchange) exist? Asked with a passive declare.
async fn exists(name: &str, exchange: bool) -> bool {
    let conn = common::raw().await;
    let ch = conn.create_channel().await.expect("channel");
    let passive = if exchange {
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
    } else {
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
    };
    let _ = conn.close(200, "done".into()).await;
    passive
}

/// The words of the line of `table` that begins with `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&first))
        .unwrap_or_else(|| panic!("no line for {first} in\n{table}"))
}

fn names(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| {
            v.as_str()
                .or_else(|| v["name"].as_str())
                .expect("a name")
                .to_owned()
        })
        .collect()
}

/// `delete` refuses while a queue holds a message and names it; with
/// `--force` it deletes everything `show` listed, and nothing is left.
async fn refuses_then_deletes_everything(
    scope: &Scope,
    vars: &[(&str, &str)],
    groups: &[&str],
    exchanges: &[String],
    queues: &[String],
) {
    let x = &scope.exchange;
    let args = |extra: &[&'static str]| {
        let mut args = vec!["topology", "delete"];
        args.extend(extra);
        args.extend(groups);
        args
    };
    let refused = eventbus_with(scope, vars, &args(&["--yes"]));
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let err = stderr(&refused);
    for group in ["audit", "default"] {
        assert!(err.contains(&format!("{x}.{group} (1 message)")), "{err}");
    }
    assert!(err.contains("--force"), "{err}");
    // It listed exactly what it would delete first.
    let plan = stdout(&refused);
    for name in queues.iter().chain(exchanges) {
        let kind = if exchanges.contains(name) {
            "exchange"
        } else {
            "queue"
        };
        assert_eq!(row(&plan, kind).len(), if kind == "queue" { 4 } else { 2 });
        assert!(
            plan.lines()
                .any(|l| l.split_whitespace().take(2).eq([kind, name.as_str()])),
            "{name} in\n{plan}"
        );
    }
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("queue ")).count(),
        queues.len()
    );
    assert_eq!(
        common::message_count(&scope.queue("default")).await,
        1,
        "nothing deleted"
    );

    let unconfirmed = eventbus_with(scope, vars, &args(&["--force"]));
    assert_eq!(
        unconfirmed.status.code(),
        Some(4),
        "{}",
        stderr(&unconfirmed)
    );
    assert!(stderr(&unconfirmed).contains("--yes"));
    assert!(exists(x, true).await, "nothing deleted");

    let mut json_args = vec!["--json"];
    json_args.extend(args(&["--yes", "--force"]));
    let deleted = json(eventbus_with(scope, vars, &json_args));
    let mut deleted_queues = names(&deleted["queues"]);
    deleted_queues.sort();
    let mut expected = queues.to_vec();
    expected.sort();
    assert_eq!(deleted_queues, expected, "{deleted}");
    assert_eq!(names(&deleted["exchanges"]), exchanges, "{deleted}");
    assert_eq!(deleted["messages_deleted"], 2, "{deleted}");
    for name in queues {
        assert!(!exists(name, false).await, "{name} is gone");
    }
    for name in exchanges {
        assert!(!exists(name, true).await, "{name} is gone");
    }
    let mut show_args = vec!["--json", "topology", "show"];
    show_args.extend(groups);
    let left = json(eventbus_with(scope, vars, &show_args));
    assert_eq!(left["exchanges"], serde_json::json!([]), "{left}");
    assert_eq!(left["queues"], serde_json::json!([]), "{left}");
    let again = ok(eventbus_with(scope, vars, &args(&["--yes"])));
    assert!(again.contains("nothing to delete"), "{again}");
}

#[tokio::test]
async fn topology_through_the_management_api() {
    let scope = Scope::new("cli-topology");
    let (exchanges, queues) = two_groups_holding_a_message(&scope).await;
    let x = &scope.exchange;

    // The default management URL: the broker's host, port 15672, its credentials.
    let table = ok(eventbus(&scope, &["topology", "show"]));
    assert!(
        table.starts_with("mode: management API at http://"),
        "{table}"
    );
    assert_eq!(row(&table, x), [x.as_str(), "topic", "main"]);
    assert_eq!(
        row(&table, &exchanges[1]),
        [exchanges[1].as_str(), "direct", "dead-letter"]
    );
    for group in ["audit", "default"] {
        let queue = format!("{x}.{group}");
        assert_eq!(
            row(&table, &queue),
            [queue.as_str(), group, "group", "1", "0"]
        );
        let dlq = format!("{queue}.dlq");
        assert_eq!(row(&table, &dlq), [dlq.as_str(), group, "dlq", "0", "0"]);
        let retry = format!("{queue}.delay.2");
        assert_eq!(
            row(&table, &retry),
            [retry.as_str(), group, "retry", "2", "0", "0"]
        );
    }
    let bindings: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.len() == 3 && exchanges.iter().any(|x| x == w[0]))
        .collect();
    let dlq_key = |g: &str| format!("{x}.{g}");
    let (audit_dlq, default_dlq) = (format!("{x}.audit.dlq"), format!("{x}.default.dlq"));
    let (audit_key, default_key) = (dlq_key("audit"), dlq_key("default"));
    for binding in [
        [x.as_str(), audit_key.as_str(), "#"],
        [x.as_str(), default_key.as_str(), "Order.OrderPlaced"],
        [
            exchanges[1].as_str(),
            audit_dlq.as_str(),
            audit_key.as_str(),
        ],
        [
            exchanges[1].as_str(),
            default_dlq.as_str(),
            default_key.as_str(),
        ],
    ] {
        assert!(
            bindings.iter().any(|b| b[..] == binding[..]),
            "{binding:?} in\n{table}"
        );
    }

    let shown = json(eventbus(&scope, &["--json", "topology", "show"]));
    assert_eq!(shown["mode"], "management", "{shown}");
    assert_eq!(names(&shown["exchanges"]), exchanges);
    assert_eq!(shown["exchanges"][0]["type"], "topic");
    assert_eq!(shown["exchanges"][1]["role"], "dead-letter");
    assert_eq!(names(&shown["queues"]), queues, "{shown}");
    for queue in shown["queues"].as_array().expect("queues") {
        let waiting = u64::from(queue["role"] == "group");
        assert_eq!(queue["messages"], waiting, "{queue}");
    }
    assert_eq!(shown["queues"][1]["role"], "retry");
    assert_eq!(shown["queues"][1]["attempt"], 1);
    let bindings = shown["bindings"].as_array().expect("bindings");
    assert_eq!(bindings.len(), 4, "{shown}");
    assert!(bindings.iter().any(|b| b["source"] == x.as_str()
        && b["destination"] == default_key.as_str()
        && b["routing_key"] == "Order.OrderPlaced"));

    refuses_then_deletes_everything(&scope, &[], &[], &exchanges, &queues).await;
}

#[tokio::test]
async fn topology_over_amqp_when_the_management_api_is_unreachable() {
    let scope = Scope::new("cli-topology-amqp");
    let (exchanges, queues) = two_groups_holding_a_message(&scope).await;
    let x = &scope.exchange;
    // A closed port, and credentials that must never be shown.
    let vars = [("EVENTBUS_MANAGEMENT_URL", "http://bob:s3cret@127.0.0.1:1")];
    let groups = ["--group", "default", "-g", "audit"];

    let out = eventbus_with(
        &scope,
        &vars,
        &[&["topology", "show"][..], &groups].concat(),
    );
    let table = ok(out);
    assert!(
        table.starts_with("mode: amqp, passive declares for group(s) default, audit"),
        "{table}"
    );
    assert!(
        table.contains("http://127.0.0.1:1 is not reachable"),
        "{table}"
    );
    assert!(!table.contains("s3cret"), "{table}");
    assert_eq!(row(&table, x), [x.as_str(), "-", "main"]);
    let queue = format!("{x}.audit");
    assert_eq!(
        row(&table, &queue),
        [queue.as_str(), "audit", "group", "1", "0"]
    );
    assert!(
        table.contains("bindings: not visible without the management API"),
        "{table}"
    );

    let shown = json(eventbus_with(
        &scope,
        &vars,
        &[&["--json", "topology", "show"][..], &groups].concat(),
    ));
    assert_eq!(shown["mode"], "amqp", "{shown}");
    assert_eq!(shown["groups"], serde_json::json!(["default", "audit"]));
    assert_eq!(shown["bindings"], serde_json::Value::Null);
    assert_eq!(names(&shown["exchanges"]), exchanges);
    assert_eq!(names(&shown["queues"]), queues, "{shown}");

    // Without --group: the configured group only.
    let default_only = json(eventbus_with(
        &scope,
        &vars,
        &["--json", "topology", "show"],
    ));
    assert_eq!(
        names(&default_only["queues"]),
        queues[6..],
        "{default_only}"
    );

    refuses_then_deletes_everything(&scope, &vars, &groups, &exchanges, &queues).await;
}

/// A deploy removed the `OrderShipped` handler: `topology unbind` shows the
/// binding no member handles any more, asks, and removes only that one.
#[tokio::test]
async fn unbind_removes_only_bindings_no_member_handles_after_asking() {
    let scope = Scope::new("cli-unbind");
    let group = scope.group("billing");
    // The old version handled both.
    let old = scope
        .builder()
        .configure({
            let group = group.clone();
            move |c| c.consumer_group = group
        })
        .handler::<OrderPlaced, _, _>("placed", |_e: Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .handler::<OrderShipped, _, _>("shipped", |_e: Arc<Envelope<OrderShipped>>| {
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    old.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    let x = &scope.exchange;
    let queue = scope.queue(&group);
    let both = vec![
        (queue.clone(), "Order.OrderPlaced".to_owned()),
        (queue.clone(), "Order.OrderShipped".to_owned()),
    ];
    assert_eq!(common::bindings_of(x), both);
    let args = [
        "topology",
        "unbind",
        "--group",
        "billing",
        "--keep",
        "Order.OrderPlaced",
    ];

    // Not confirmed (no terminal, no --yes): the plan, exit 4, nothing unbound.
    let unconfirmed = eventbus(&scope, &args);
    assert_eq!(
        unconfirmed.status.code(),
        Some(4),
        "{}",
        stderr(&unconfirmed)
    );
    let plan = stdout(&unconfirmed);
    assert_eq!(
        row(&plan, "unbind"),
        ["unbind", queue.as_str(), "Order.OrderShipped"]
    );
    assert_eq!(
        row(&plan, "keep"),
        ["keep", queue.as_str(), "Order.OrderPlaced"]
    );
    assert!(stderr(&unconfirmed).contains("--yes"));
    assert_eq!(common::bindings_of(x), both, "nothing unbound");

    // Confirmed: only the stale binding goes.
    let done = json(eventbus(
        &scope,
        &[&["--json"][..], &args, &["--yes"]].concat(),
    ));
    assert_eq!(
        done["unbound"][0]["routing_key"], "Order.OrderShipped",
        "{done}"
    );
    assert_eq!(done["unbound"].as_array().map(Vec::len), Some(1));
    assert_eq!(done["kept"][0]["routing_key"], "Order.OrderPlaced");
    assert_eq!(
        common::bindings_of(x),
        [(queue.clone(), "Order.OrderPlaced".to_owned())]
    );
    // The DLQ exchange's binding is not the main exchange's: untouched.
    assert!(exists(&format!("{queue}.dlq"), false).await);

    // Again: nothing to unbind, nothing asked.
    let again = ok(eventbus(&scope, &args));
    assert!(again.contains("nothing to unbind"), "{again}");

    // Without the management API it says what it needs.
    let vars = [("EVENTBUS_MANAGEMENT_URL", "http://127.0.0.1:1")];
    let blind = eventbus_with(&scope, &vars, &[&args[..], &["--yes"]].concat());
    assert_eq!(blind.status.code(), Some(1));
    assert!(
        stderr(&blind).contains("needs the management API"),
        "{}",
        stderr(&blind)
    );
}

/// On a headers exchange a binding is known by the headers it matches.
#[tokio::test]
async fn unbind_finds_headers_bindings_by_the_event_they_match() {
    let scope = Scope::new("cli-unbind-headers");
    let bus = scope
        .builder()
        .configure(|c| c.exchange_type = eventbus::ExchangeType::Headers)
        .handler::<OrderPlaced, _, _>("placed", |_e: Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .handler::<OrderShipped, _, _>("shipped", |_e: Arc<Envelope<OrderShipped>>| {
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    let x = &scope.exchange;
    assert_eq!(common::bindings_of(x).len(), 2);
    let done = json(eventbus(
        &scope,
        &[
            "--json",
            "topology",
            "unbind",
            "--keep",
            "Order.OrderPlaced",
            "--yes",
        ],
    ));
    assert_eq!(
        done["unbound"][0]["arguments"]["event_type"], "OrderShipped",
        "{done}"
    );
    // The broker removed exactly that binding (arguments and all).
    assert_eq!(common::bindings_of(x).len(), 1);
    assert_eq!(done["kept"][0]["arguments"]["event_type"], "OrderPlaced");
}
