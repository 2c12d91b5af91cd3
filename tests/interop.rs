//! Rust and Python on one exchange: eventsource-py 0.15.1 from PyPI, in a
//! virtual environment this test creates (Python 3.13, found on PATH or under
//! pyenv; `EVENTBUS_INTEROP_PYTHON` overrides), driven through
//! `tests/interop/peer.py`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::interop::{self, by_id, python_accepts_every_event, rich_events};
use common::python::python;
use common::{ChildGuard, OrderPlaced, OrderShipped, Scope};
use eventbus::{AnyEnvelope, Bus, Envelope, HandlerError, ReplayFilter};
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
    interop::python_consumer(
        peer(
            scope,
            &["consume", "--group", group, "--count", &count.to_string()],
        ),
        WAIT,
    )
}

/// A Rust bus in `group` forwarding every event (as its wire JSON) to a channel.
async fn rust_consumer(scope: &Scope, group: &str) -> (Bus, mpsc::UnboundedReceiver<Value>) {
    let group = scope.group(group);
    interop::rust_consumer(scope.builder().configure(move |c| c.consumer_group = group)).await
}

async fn collect(rx: &mut mpsc::UnboundedReceiver<Value>, n: usize) -> BTreeMap<String, Value> {
    interop::collect(rx, n, WAIT).await
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
    let mut python = python_consumer(&scope, "python", 10);
    let publisher = scope.builder().build().await.expect("connects");
    // The Python model forbids unknown fields: each event was validated there.
    python_accepts_every_event(&publisher, &mut python, 10).await;
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

/// One consumer group, two members: eventsource-py handling `OrderShipped`,
/// and an eventbus member that knows the type but has no handler for it (an
/// older version, or a service that only publishes it). The eventbus member
/// leaves every such delivery to the group; the Python member handles all.
#[tokio::test]
async fn a_rust_member_without_the_handler_leaves_events_to_the_python_member() {
    let scope = Scope::new("interop-mixed");
    let group = scope.group("billing");
    let rust = scope
        .builder()
        .configure({
            let group = group.clone();
            move |c| {
                c.consumer_group = group;
                c.unhandled_delay = Duration::from_millis(100);
                c.max_unhandled_deferrals = 200;
            }
        })
        .event::<OrderShipped>()
        .handler::<OrderPlaced, _, _>("placed", |_e: std::sync::Arc<Envelope<OrderPlaced>>| {
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    // The group's queue is bound for the key, as the Python member binds it.
    rust.bind_event_type::<OrderShipped>().await.expect("binds");
    rust.start_consuming().await.expect("consumes");
    let events: Vec<AnyEnvelope> = (0..20)
        .map(|i| {
            Envelope::new(
                Uuid::new_v4(),
                OrderShipped {
                    tracking_number: format!("TRACK-{i}"),
                },
            )
            .into()
        })
        .collect();
    let sent: BTreeSet<String> = events
        .iter()
        .map(|e| e.meta().event_id().to_string())
        .collect();
    rust.publish(events).await.expect("confirmed");
    // First the eventbus member alone has every event, and hands each back.
    common::eventually("the eventbus member deferred all 20", WAIT, || async {
        rust.stats().events_deferred_unhandled >= 20
    })
    .await;
    // Then the Python member joins and competes with it for each.
    // (Events already wait: some may be handled before it says "ready".)
    let mut child = peer(&scope, &["consume", "--group", &group, "--count", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python starts");
    let out = common::lines(child.stdout.take().expect("piped"));
    let mut python = ChildGuard(child);
    // Waited for off the runtime: the eventbus member keeps competing meanwhile.
    let (status, lines) = tokio::task::spawn_blocking(move || {
        let status = python.0.wait().expect("python exits");
        let lines: Vec<String> = out.iter().filter(|l| l != "ready").collect();
        (status, lines)
    })
    .await
    .expect("joins");
    assert!(status.success(), "the Python member got: {lines:?}");
    assert_eq!(lines.len(), 20, "each once: {lines:?}");
    assert_eq!(by_id(lines).into_keys().collect::<BTreeSet<_>>(), sent);
    let queue = scope.queue(&group);
    common::eventually("nothing left waiting", WAIT, || async {
        common::message_count(&queue).await == 0
            && common::message_count(&format!("{queue}.unhandled")).await == 0
    })
    .await;
    assert_eq!(rust.dlq(&group).count().await.expect("counts"), 0);
    let stats = rust.stats();
    assert_eq!(stats.handlers_invoked, 0);
    assert_eq!(stats.messages_sent_to_dlq, 0);
    rust.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

/// Runs eventsource-py's `replay_dlq_message` for every message in `group`'s
/// DLQ; returns how many it replayed.
async fn python_replays(scope: &Scope, group: &str) -> usize {
    let mut cmd = peer(
        scope,
        &["replay", "--group", group, "--bind", "Order.OrderPlaced"],
    );
    // Off the runtime: the eventbus consumer keeps running meanwhile.
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("python runs"))
        .await
        .expect("joins");
    assert!(
        out.status.success(),
        "python replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .inspect(|v| assert_eq!(v["replayed"], true, "{v}"))
        .count()
}

/// Every message in `group`'s DLQ (there are `n`) remembers `Order.OrderPlaced`.
async fn dead_letters_keep_the_key(bus: &Bus, group: &str, n: usize, round: &str) {
    let listed = bus.dlq(group).list(100).await.expect("lists");
    assert_eq!(listed.len(), n, "{round}: {listed:#?}");
    for m in listed {
        assert_eq!(
            m.original_routing_key.as_deref(),
            Some("Order.OrderPlaced"),
            "{round}: {m:#?}"
        );
    }
}

/// eventbus retries and dead-letters; eventsource-py's `replay_dlq_message`
/// and eventbus's replay take turns: each replay arrives under the key it was
/// published with, and each new dead letter remembers that key.
#[tokio::test]
async fn eventbus_dead_letters_keep_their_routing_key_through_both_replays() {
    let scope = Scope::new("interop-replay-rs");
    let group = scope.group("ledger");
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = attempts.clone();
    let bus = scope
        .builder()
        .configure({
            let group = group.clone();
            move |c| {
                c.consumer_group = group;
                c.max_retries = 1;
                c.retry_base_delay = Duration::from_millis(50);
            }
        })
        .handler::<OrderPlaced, _, _>(
            "ledger",
            move |_e: std::sync::Arc<Envelope<OrderPlaced>>| {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::ready(Err::<(), _>(HandlerError::new("the ledger is down")))
            },
        )
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let events = [common::placed("a"), common::placed("b")];
    bus.publish(events).await.expect("confirmed");
    let dlq = bus.dlq(&group);
    // Each round: two events, each tried twice (once more after its retry).
    let round = |n: usize| {
        let (dlq, attempts) = (dlq.clone(), attempts.clone());
        async move {
            common::eventually("the round's dead letters", WAIT, || async {
                attempts.load(std::sync::atomic::Ordering::SeqCst) == 4 * n
                    && dlq.count().await.ok() == Some(2)
            })
            .await;
        }
    };
    round(1).await;
    dead_letters_keep_the_key(&bus, &group, 2, "made by eventbus").await;
    assert_eq!(python_replays(&scope, &group).await, 2);
    round(2).await;
    dead_letters_keep_the_key(&bus, &group, 2, "after eventsource-py's replay").await;
    let report = dlq.replay_all(&ReplayFilter::all()).await.expect("replays");
    assert_eq!(report.replayed, 2);
    round(3).await;
    dead_letters_keep_the_key(&bus, &group, 2, "after eventbus's replay").await;
    assert_eq!(python_replays(&scope, &group).await, 2);
    round(4).await;
    dead_letters_keep_the_key(&bus, &group, 2, "after both").await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

/// eventsource-py retries and dead-letters; eventbus's replay and
/// eventsource-py's take turns. eventsource-py writes the key a delivery
/// came with into `x-original-routing-key` and republishes its retries under
/// it, so an eventbus replay must arrive under the original key.
#[tokio::test]
async fn eventsource_dead_letters_keep_their_routing_key_through_both_replays() {
    let scope = Scope::new("interop-replay-py");
    let group = scope.group("pyledger");
    // Four rounds of two dead letters.
    let mut child = peer(
        &scope,
        &[
            "fail",
            "--group",
            &group,
            "--count",
            "8",
            "--max-retries",
            "1",
            "--bind",
            "Order.OrderPlaced",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("python starts");
    let out = common::lines(child.stdout.take().expect("piped"));
    let mut python = ChildGuard(child);
    assert_eq!(out.recv_timeout(WAIT).expect("ready"), "ready");
    let bus = scope.builder().build().await.expect("connects");
    bus.publish([common::placed("a"), common::placed("b")])
        .await
        .expect("confirmed");
    let dlq = bus.dlq(&group);
    let mut attempts = 0;
    // Each round: two events, each tried twice by the Python member.
    let mut round = async |n: usize| {
        common::eventually("the round's dead letters", WAIT, || {
            attempts += out.try_iter().count();
            let dlq = dlq.clone();
            let done = attempts == 4 * n;
            async move { done && dlq.count().await.ok() == Some(2) }
        })
        .await;
    };
    round(1).await;
    dead_letters_keep_the_key(&bus, &group, 2, "made by eventsource-py").await;
    let report = dlq.replay_all(&ReplayFilter::all()).await.expect("replays");
    assert_eq!(report.replayed, 2);
    round(2).await;
    dead_letters_keep_the_key(&bus, &group, 2, "after eventbus's replay").await;
    assert_eq!(python_replays(&scope, &group).await, 2);
    round(3).await;
    dead_letters_keep_the_key(&bus, &group, 2, "after eventsource-py's replay").await;
    let report = dlq.replay_all(&ReplayFilter::all()).await.expect("replays");
    assert_eq!(report.replayed, 2);
    round(4).await;
    dead_letters_keep_the_key(&bus, &group, 2, "after both").await;
    let status = tokio::task::spawn_blocking(move || python.0.wait().expect("exits"))
        .await
        .expect("joins");
    assert!(status.success());
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

/// A declaration case: its name, the eventbus setting, eventsource-py's (peer.py flags).
type DeclarationCase = (&'static str, fn(&mut eventbus::Config), Vec<&'static str>);

/// Every declaration option that changes an object, as an eventbus setting
/// and as eventsource-py's.
fn declaration_cases() -> Vec<DeclarationCase> {
    use eventbus::ExchangeType;
    vec![
        ("defaults", |_| {}, vec![]),
        (
            "auto_delete",
            |c| c.auto_delete = true,
            vec!["--auto-delete", "true"],
        ),
        (
            "not durable",
            |c| c.durable = false,
            vec!["--durable", "false"],
        ),
        (
            "no dlq",
            |c| c.enable_dlq = false,
            vec!["--enable-dlq", "false"],
        ),
        (
            "dlq ttl and max length",
            |c| {
                c.dlq_message_ttl = Some(60_000);
                c.dlq_max_length = Some(1000);
            },
            vec!["--dlq-ttl", "60000", "--dlq-max-length", "1000"],
        ),
        (
            "direct",
            |c| c.exchange_type = ExchangeType::Direct,
            vec!["--exchange-type", "direct"],
        ),
        (
            "fanout",
            |c| c.exchange_type = ExchangeType::Fanout,
            vec!["--exchange-type", "fanout"],
        ),
        (
            "headers",
            |c| c.exchange_type = ExchangeType::Headers,
            vec!["--exchange-type", "headers"],
        ),
        (
            "routing_key_pattern",
            |c| c.routing_key_pattern = Some("Order.*".into()),
            vec!["--bind", "Order.*"],
        ),
        (
            "auto_delete, not durable, no dlq",
            |c| {
                c.auto_delete = true;
                c.durable = false;
                c.enable_dlq = false;
            },
            vec![
                "--auto-delete",
                "true",
                "--durable",
                "false",
                "--enable-dlq",
                "false",
            ],
        ),
    ]
}

/// For each option, in both orders (eventsource-py declares first, then
/// eventbus; and the reverse), the second declaration succeeds, and an event
/// published by the second goes to a consumer of the first.
#[tokio::test]
async fn every_declaration_equals_eventsource_in_both_orders() {
    for (case, configure, flags) in declaration_cases() {
        // Group names as they come: a dot and a dash in one.
        let group_name = if case == "defaults" {
            "billing.v2-eu"
        } else {
            "billing"
        };

        // eventsource-py first: its consumer, then an eventbus member of the group.
        let scope = Scope::new("interop-declare-py");
        let group = scope.group(group_name);
        let args = [&["consume", "--group", &group, "--count", "1"][..], &flags].concat();
        let mut child = peer(&scope, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python starts");
        let out = common::lines(child.stdout.take().expect("piped"));
        let python = ChildGuard(child);
        assert_eq!(out.recv_timeout(WAIT).expect("ready"), "ready", "{case}");
        let rust = scope
            .builder()
            .configure({
                let group = group.clone();
                move |c| {
                    c.consumer_group = group;
                    configure(c);
                }
            })
            .handler::<OrderPlaced, _, _>("h", |_e: std::sync::Arc<Envelope<OrderPlaced>>| {
                std::future::ready(Ok::<_, HandlerError>(()))
            })
            .build()
            .await
            .unwrap_or_else(|e| panic!("{case}: eventbus after eventsource-py: {e}"));
        let event = common::placed("across");
        let id = event.meta().event_id().to_string();
        rust.publish([event]).await.expect("confirmed");
        let (status, lines) = tokio::task::spawn_blocking(move || {
            let mut python = python;
            let status = python.0.wait().expect("exits");
            (status, out.iter().collect::<Vec<_>>())
        })
        .await
        .expect("joins");
        assert!(status.success(), "{case}: python got {lines:?}");
        assert_eq!(by_id(lines).into_keys().collect::<Vec<_>>(), [id], "{case}");
        rust.shutdown(Duration::from_secs(10))
            .await
            .expect("shuts down");
        drop(scope);

        // eventbus first: its consumer, then eventsource-py's publisher in the group.
        let scope = Scope::new("interop-declare-rs");
        let group = scope.group(group_name);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let rust = scope
            .builder()
            .configure({
                let group = group.clone();
                move |c| {
                    c.consumer_group = group;
                    configure(c);
                }
            })
            .handler::<OrderPlaced, _, _>("h", move |e: std::sync::Arc<Envelope<OrderPlaced>>| {
                let _ = tx.send(e.meta().event_id().to_string());
                std::future::ready(Ok::<_, HandlerError>(()))
            })
            .build()
            .await
            .unwrap_or_else(|e| panic!("{case}: eventbus first: {e}"));
        rust.start_consuming().await.expect("consumes");
        let args = [&["publish", "--group", &group, "--count", "1"][..], &flags].concat();
        let mut cmd = peer(&scope, &args);
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("python runs"))
            .await
            .expect("joins");
        assert!(
            out.status.success(),
            "{case}: eventsource-py after eventbus: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = by_id(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{case}: the event reached eventbus"))
            .expect("open");
        assert_eq!(sent.into_keys().collect::<Vec<_>>(), [got], "{case}");
        rust.shutdown(Duration::from_secs(10))
            .await
            .expect("shuts down");
    }
}
