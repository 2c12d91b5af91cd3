//! Faults: a suite that cuts, stalls and kills, and checks that nothing
//! reported as confirmed is lost (issue 12; see RELIABILITY.md).
//!
//! Broker crashes and alarms use a RabbitMQ node each test starts itself
//! ([`node::Node`], its own ports and data under `target/tmp`); network faults
//! go through a small proxy in front of the shared broker ([`proxy::Proxy`]).
//! Every published event has a unique id; [`ledger::Ledger`] checks
//! confirmed - delivered - dead-lettered is empty and counts duplicates.
#![allow(dead_code, unreachable_pub)]

#[path = "common/mod.rs"]
mod common;
#[path = "faults/ledger.rs"]
mod ledger;
#[path = "faults/node.rs"]
mod node;
#[path = "faults/proxy.rs"]
mod proxy;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use eventbus::{Bus, BusBuilder, DomainEvent, Envelope, Error, HandlerError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use ledger::Ledger;
use node::Node;

/// One event of a fault run; `seq` counts from 0 per test.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Fault")]
struct Tick {
    seq: u64,
}

/// Slack on top of a configured timeout for a call to return (scheduling on
/// a loaded 2-core machine, closing a connection).
const SLACK: Duration = Duration::from_millis(2500);

fn ticks(from: u64, n: u64) -> Vec<Envelope<Tick>> {
    (from..from + n)
        .map(|seq| Envelope::new(Uuid::new_v4(), Tick { seq }))
        .collect()
}

fn ids(events: &[Envelope<Tick>]) -> Vec<Uuid> {
    events.iter().map(|e| e.meta().event_id()).collect()
}

fn unique(test: &str) -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("faults.{test}.{}", &id[..8])
}

/// A bus on `url` and `exchange`: quick reconnects, short timeouts.
fn builder(url: &str, exchange: &str, confirm_timeout: Duration) -> BusBuilder {
    // RUST_LOG=eventbus=debug shows what the bus did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let exchange = exchange.to_owned();
    Bus::builder()
        .url(url)
        .without_discovery()
        .event::<Tick>()
        .configure(move |c| {
            c.exchange_name = exchange;
            c.reconnect_delay = Duration::from_millis(100);
            c.max_reconnect_delay = Duration::from_millis(500);
            c.connect_timeout = Duration::from_secs(10);
            c.confirm_timeout = confirm_timeout;
            c.shutdown_timeout = Duration::from_secs(5);
        })
}

/// Adds a handler that records every delivery in `ledger`.
fn recording(builder: BusBuilder, ledger: &Ledger) -> BusBuilder {
    let ledger = ledger.clone();
    builder.handler::<Tick, _, _>("record", move |e: Arc<Envelope<Tick>>| {
        ledger.delivered(e.meta().event_id());
        std::future::ready(Ok::<_, HandlerError>(()))
    })
}

async fn start_node(tag: &'static str) -> Node {
    tokio::task::spawn_blocking(move || Node::start(tag))
        .await
        .expect("node thread")
}

/// Publishes `events` in one call, recording the outcome; the call must end
/// within `bound`.
async fn publish_timed(
    bus: &Bus,
    ledger: &Ledger,
    events: Vec<Envelope<Tick>>,
    bound: Duration,
) -> Result<(), Error> {
    let batch = ids(&events);
    let started = Instant::now();
    let result = bus.publish(events).await;
    let took = started.elapsed();
    assert!(
        took <= bound,
        "publish took {took:?}, past its bound {bound:?} ({result:?})"
    );
    match result {
        Ok(report) => {
            assert_eq!(report.published, batch.len());
            ledger.confirmed(batch);
            Ok(())
        }
        Err(e) => {
            ledger.unsure(batch);
            Err(e)
        }
    }
}

/// Polls `check` every 50 ms until true; fails after `timeout`.
async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Case 12: memory alarm.
// ---------------------------------------------------------------------------

/// Memory alarm on the test's own node: fresh publishers each get
/// `Error::Blocked` (with the broker's reason) within the confirm timeout,
/// as does shutdown; the consumer connection keeps acking; after the alarm,
/// publishing resumes on the connection that was blocked, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case12_memory_alarm_fails_publishes_in_time_and_consumers_keep_acking() {
    let node = start_node("alarm").await;
    let exchange = unique("alarm");
    let confirm = Duration::from_secs(3);
    let ledger = Ledger::default();
    // Handlers wait on the gate: deliveries stay unacked until it opens.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (l, g) = (ledger.clone(), gate.clone());
    let consumer = builder(&node.url(), &exchange, confirm)
        .configure(|c| c.prefetch_count = 100)
        .handler::<Tick, _, _>("record", move |e: Arc<Envelope<Tick>>| {
            let (l, g) = (l.clone(), g.clone());
            async move {
                g.acquire().await.map_err(HandlerError::new)?.forget();
                l.delivered(e.meta().event_id());
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    consumer.start_consuming().await.expect("consumes");
    let queue = format!("{exchange}.default");
    publish_timed(&consumer, &ledger, ticks(0, 200), confirm + SLACK)
        .await
        .expect("confirmed before the alarm");
    let n = &node;
    let q = queue.clone();
    eventually("100 in flight, 100 ready", Duration::from_secs(30), || {
        n.queue_counts(&q) == Some((100, 100))
    })
    .await;

    node.memory_alarm(true);
    // As measured on main: fresh processes in a row, each publishing 3 events.
    for round in 0..4u64 {
        let started = Instant::now();
        let bus = builder(&node.url(), &exchange, confirm)
            .build()
            .await
            .expect("connecting and declaring work during an alarm");
        assert!(started.elapsed() <= Duration::from_secs(10) + SLACK);
        let error = publish_timed(&bus, &ledger, ticks(1000 + round * 3, 3), confirm + SLACK)
            .await
            .expect_err("a blocked publish is not confirmed");
        match &error {
            Error::Blocked { reason, .. } => {
                assert!(reason.contains("memory"), "the broker's reason: {reason}");
            }
            other => panic!("round {round}: expected Error::Blocked, got {other:?}"),
        }
        let started = Instant::now();
        let _ = bus.shutdown(Duration::from_secs(2)).await;
        assert!(
            started.elapsed() <= Duration::from_secs(2) + 2 * SLACK,
            "shutdown of a blocked bus took {:?}",
            started.elapsed()
        );
    }
    // The consuming bus's own publisher is blocked too once it publishes.
    let error = publish_timed(&consumer, &ledger, ticks(2000, 5), confirm + SLACK)
        .await
        .expect_err("blocked");
    assert!(matches!(error, Error::Blocked { .. }), "{error:?}");
    // A second call while blocked writes nothing and fails in time as well.
    let error = publish_timed(&consumer, &ledger, ticks(2100, 5), confirm + SLACK)
        .await
        .expect_err("still blocked");
    assert!(matches!(error, Error::Blocked { .. }), "{error:?}");

    // Acks are not blocked: the consumer drains the queue during the alarm.
    gate.add_permits(1_000_000);
    let q = queue.clone();
    eventually(
        "the 200 handled and acked during the alarm",
        Duration::from_secs(30),
        || ledger.distinct_delivered() >= 200 && n.queue_counts(&q) == Some((0, 0)),
    )
    .await;

    node.memory_alarm(false);
    // Publishing resumes on the connection that was blocked.
    let resumed = Instant::now();
    let mut seq = 3000;
    loop {
        match publish_timed(&consumer, &ledger, ticks(seq, 100), confirm + SLACK).await {
            Ok(()) => break,
            Err(e) => assert!(
                resumed.elapsed() < Duration::from_secs(15),
                "publishing did not resume within 15 s of the alarm: {e}"
            ),
        }
        seq += 100;
    }
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(30),
        || ledger.missing() == 0,
    )
    .await;
    ledger
        .tally(&BTreeSet::new())
        .assert_nothing_lost("case 12");
    consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// Cases 1 and 2: broker restart and crash while publishing.
// ---------------------------------------------------------------------------

/// Publishes chunks of `chunk` in a loop from `seq` until `stop` fires,
/// recording every outcome; each call must end within `bound`. Returns the
/// number of failed calls and the first error seen.
fn publish_loop(
    bus: Bus,
    ledger: Ledger,
    chunk: u64,
    bound: Duration,
    stop: Stop,
    first_seq: u64,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut seq = first_seq;
        let mut errors = Vec::new();
        while !stop.fired() {
            if let Err(e) = publish_timed(&bus, &ledger, ticks(seq, chunk), bound).await {
                errors.push(e.to_string());
            }
            seq += chunk;
        }
        (seq, errors)
    })
}

/// A flag one task sets and others poll.
#[derive(Clone, Default)]
struct Stop(Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    fn fire(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    fn fired(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a broker outage does in [`outage_during_publish`].
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `rabbitmqctl stop_app`, then `start_app`.
    Restart,
    /// `kill -9` of the node's VM, then a fresh boot on the same data.
    Kill9,
}

/// Publishes (two publishers, chunks of 100) while consuming; once
/// `before` events are confirmed the node goes down and comes back.
/// Every call returns Ok or an error within its bound, publishing succeeds
/// again within 15 s of the node being back, and once `total` events are
/// confirmed, every confirmed event is delivered.
async fn outage_during_publish(tag: &'static str, outage: Outage, quorum: bool, total: usize) {
    let mut node = start_node(tag).await;
    let exchange = unique(tag);
    let confirm = Duration::from_secs(5);
    let bound = confirm + SLACK;
    let ledger = Ledger::default();
    let quorum_args = move |c: &mut eventbus::Config| {
        if quorum {
            c.queue_arguments.insert(
                "x-queue-type".into(),
                eventbus::QueueArgument::Str("quorum".into()),
            );
        }
    };
    let consumer = recording(builder(&node.url(), &exchange, confirm), &ledger)
        .configure(quorum_args)
        .configure(|c| c.prefetch_count = 200)
        .build()
        .await
        .expect("connects");
    consumer.start_consuming().await.expect("consumes");
    let stop = Stop::default();
    let mut publishers = Vec::new();
    for p in 0..2u64 {
        let bus = builder(&node.url(), &exchange, confirm)
            .configure(quorum_args)
            .build()
            .await
            .expect("connects");
        publishers.push((
            bus.clone(),
            publish_loop(
                bus,
                ledger.clone(),
                100,
                bound,
                stop.clone(),
                p * 10_000_000,
            ),
        ));
    }
    eventually("publishing under way", Duration::from_secs(60), || {
        ledger.confirmed_count() >= total / 5
    })
    .await;
    let confirmed_before = ledger.confirmed_count();
    node = tokio::task::spawn_blocking(move || {
        match outage {
            Outage::Restart => {
                node.ctl(&["stop_app"]);
                node.ctl(&["start_app"]);
            }
            Outage::Kill9 => {
                node.kill9();
                node.boot();
            }
        }
        node
    })
    .await
    .expect("outage thread");
    let back = Instant::now();
    let after = ledger.confirmed_count();
    eventually(
        "publishing confirmed again after the outage",
        Duration::from_secs(15),
        || ledger.confirmed_count() > after,
    )
    .await;
    let resumed = back.elapsed();
    eventually("the total confirmed", Duration::from_secs(120), || {
        ledger.confirmed_count() >= total
    })
    .await;
    stop.fire();
    let mut failed_calls = Vec::new();
    for (bus, task) in publishers {
        let (_, errors) = task.await.expect("publisher task");
        failed_calls.extend(errors);
        bus.shutdown(Duration::from_secs(5))
            .await
            .expect("publisher shuts down");
    }
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(120),
        || ledger.missing() == 0,
    )
    .await;
    let tally = ledger.tally(&BTreeSet::new());
    eprintln!(
        "{tag}: {confirmed_before} confirmed before the outage, publishing again {resumed:?} after it, {} failed call(s): {:?}",
        failed_calls.len(),
        failed_calls.iter().take(3).collect::<Vec<_>>()
    );
    tally.assert_nothing_lost(tag);
    consumer
        .shutdown(Duration::from_secs(5))
        .await
        .expect("consumer shuts down");
    drop(node);
}

/// Case 1, classic queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case01_restart_during_confirmed_publish_classic() {
    outage_during_publish("restart-classic", Outage::Restart, false, 10_000).await;
}

/// Case 1, quorum queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case01_restart_during_confirmed_publish_quorum() {
    outage_during_publish("restart-quorum", Outage::Restart, true, 10_000).await;
}

/// Case 2: `kill -9` of the node mid-publish; nothing reported confirmed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case02_kill9_mid_publish() {
    outage_during_publish("kill9", Outage::Kill9, false, 5_000).await;
}

// ---------------------------------------------------------------------------
// Case 3: a consumer process killed mid-handler.
// ---------------------------------------------------------------------------

/// The event of `src/bin/ledger_consumer.rs` (group `ledger`).
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Ledger")]
struct Step {
    seq: u32,
}

/// One `Step` per fresh aggregate: the aggregate id identifies the event.
fn steps(n: usize, seq: u32) -> Vec<Envelope<Step>> {
    (0..n)
        .map(|_| Envelope::new(Uuid::new_v4(), Step { seq }))
        .collect()
}

/// A `ledger_consumer` process; its stdout lines (`hang|done {aggregate} {seq}`).
fn ledger_consumer(
    exchange: &str,
    hang_seq: u32,
) -> (common::ChildGuard, std::sync::mpsc::Receiver<String>) {
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledger_consumer"));
    command
        .env("EVENTBUS_URL", common::url())
        .env("EVENTBUS_EXCHANGE_NAME", exchange)
        .env("EVENTBUS_PREFETCH_COUNT", "20")
        .env("EVENTBUS_ORDERING", "none")
        .env("LEDGER_HANG_SEQ", hang_seq.to_string())
        .env("RUST_LOG", "eventbus=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = common::ChildGuard(command.spawn().expect("ledger_consumer starts"));
    let stdout = common::lines(child.0.stdout.take().expect("stdout piped"));
    let stderr = common::lines(child.0.stderr.take().expect("stderr piped"));
    loop {
        let line = stderr
            .recv_timeout(Duration::from_secs(60))
            .expect("the consumer reports it is running");
        if line.contains("eventbus running") || line.contains("event bus running") {
            break;
        }
    }
    std::thread::spawn(move || while stderr.recv().is_ok() {});
    (child, stdout)
}

/// Case 3: SIGKILL of a consumer process with 10 handlers in flight: all 10
/// are redelivered to the other member of the group, which keeps handling
/// its own deliveries meanwhile; nothing confirmed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case03_consumer_killed_mid_handler_is_redelivered_to_the_other_member() {
    let scope = common::Scope::new("faults-kill-consumer");
    let group = scope.group("ledger");
    let ledger = Ledger::default();
    // Member A: another process whose handlers hang on seq 7.
    let (mut a, a_lines) = ledger_consumer(&scope.exchange, 7);
    let publisher = scope
        .builder()
        .event::<Step>()
        .build()
        .await
        .expect("connects");
    let hanging = steps(10, 7);
    let hanging_ids: BTreeSet<Uuid> = hanging.iter().map(|e| e.meta().aggregate_id()).collect();
    publisher.publish(hanging).await.expect("confirmed");
    ledger.confirmed(hanging_ids.iter().copied());
    let mut in_flight = 0;
    while in_flight < 10 {
        let line = a_lines
            .recv_timeout(Duration::from_secs(30))
            .expect("member A starts its handlers");
        if line.starts_with("hang ") {
            in_flight += 1;
        }
    }
    // Member B: in this process, same group.
    let l = ledger.clone();
    let b_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = b_seen.clone();
    let b = scope
        .builder()
        .configure(move |c| {
            c.consumer_group = group;
            c.prefetch_count = 20;
        })
        .handler::<Step, _, _>("apply", move |e: Arc<Envelope<Step>>| {
            l.delivered(e.meta().aggregate_id());
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    b.start_consuming().await.expect("consumes");
    // Healthy traffic shared by A and B.
    let healthy = steps(200, 1);
    ledger.confirmed(healthy.iter().map(|e| e.meta().aggregate_id()));
    publisher.publish(healthy).await.expect("confirmed");
    eventually("B handles its share", Duration::from_secs(30), || {
        b_seen.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;

    a.0.kill().expect("kill -9 member A");
    a.0.wait().expect("reaped");
    // What A finished before dying counts as delivered (it may come again).
    while let Ok(line) = a_lines.recv_timeout(Duration::from_secs(10)) {
        let mut parts = line.split_whitespace();
        if parts.next() == Some("done")
            && let Some(id) = parts.next().and_then(|id| id.parse::<Uuid>().ok())
        {
            ledger.delivered(id);
        }
    }
    eventually(
        "the 10 in-flight events redelivered to B",
        Duration::from_secs(30),
        || ledger.missing() == 0,
    )
    .await;
    ledger.tally(&BTreeSet::new()).assert_nothing_lost("case 3");
    b.shutdown(Duration::from_secs(5))
        .await
        .expect("B shuts down");
    publisher
        .shutdown(Duration::from_secs(5))
        .await
        .expect("publisher shuts down");
}

// ---------------------------------------------------------------------------
// Case 5: blackhole.
// ---------------------------------------------------------------------------

/// A `start_consuming` that times out (the broker does not answer) leaves
/// nothing behind: its consumer kept reconnecting in the background, and
/// once the broker answered it consumed beside the next start's consumer,
/// beyond the reach of `shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_timed_out_leaves_no_consumer_behind() {
    let scope = common::Scope::new("faults-start-timeout");
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let ledger = Ledger::default();
    let bus = recording(scope.builder().url(&proxy.url()).event::<Tick>(), &ledger)
        .configure(|c| c.connect_timeout = Duration::from_secs(2))
        .build()
        .await
        .expect("connects through the proxy");
    proxy.set(proxy::Mode::Blackhole);
    let error = bus
        .start_consuming()
        .await
        .expect_err("no consumer connection");
    assert!(matches!(error, eventbus::Error::NotConnected(_)), "{error}");
    proxy.set(proxy::Mode::Pass);
    bus.start_consuming().await.expect("consumes");
    let events = ticks(0, 50);
    ledger.confirmed(ids(&events));
    bus.publish(events).await.expect("published");
    eventually("every event delivered", Duration::from_secs(30), || {
        ledger.missing() == 0
    })
    .await;
    let info = bus.group_queue_info("default").await.expect("declared");
    assert_eq!(info.consumer_count, 1, "one consumer, the second start's");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    let conn = common::raw().await;
    let ch = conn.create_channel().await.expect("channel");
    let queue = scope.queue("default");
    common::eventually(
        "no consumer after shutdown",
        Duration::from_secs(10),
        || {
            let (ch, queue) = (ch.clone(), queue.clone());
            async move {
                ch.queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("the queue is there")
                .consumer_count()
                    == 0
            }
        },
    )
    .await;
    let _ = conn.close(200, "done".into()).await;
}

/// `shutdown(timeout)` returns by its timeout when the broker stops
/// answering: closing the channels and connections waited for close-oks that
/// never came, two seconds each, past the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_by_its_timeout_when_the_broker_stops_answering() {
    let scope = common::Scope::new("faults-shutdown-bound");
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let ledger = Ledger::default();
    let bus = recording(scope.builder().url(&proxy.url()).event::<Tick>(), &ledger)
        .build()
        .await
        .expect("connects through the proxy");
    bus.start_consuming().await.expect("consumes");
    let events = ticks(0, 20);
    ledger.confirmed(ids(&events));
    bus.publish(events).await.expect("published");
    eventually("every event delivered", Duration::from_secs(30), || {
        ledger.missing() == 0
    })
    .await;
    proxy.set(proxy::Mode::Blackhole);
    let timeout = Duration::from_secs(3);
    // The slack covers scheduling only, not a close-ok wait.
    let slack = Duration::from_millis(500);
    let returned = tokio::time::timeout(timeout + slack, bus.shutdown(timeout)).await;
    assert!(
        returned.is_ok(),
        "shutdown({timeout:?}) still running after {:?}",
        timeout + slack
    );
    proxy.set(proxy::Mode::Pass);
}

/// Case 5: the proxy forwards nothing for 30 s (sockets stay open) with a
/// 5 s heartbeat: the dead link is noticed within about two heartbeats,
/// every publish meanwhile fails within its timeout, and after the heal
/// publishing and consuming recover with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case05_blackhole_is_noticed_by_heartbeats_and_recovered() {
    let scope = common::Scope::new("faults-blackhole");
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let confirm = Duration::from_secs(5);
    let ledger = Ledger::default();
    let bus = recording(scope.builder().url(&proxy.url()).event::<Tick>(), &ledger)
        .configure(move |c| {
            c.heartbeat = 5;
            c.confirm_timeout = confirm;
            c.connect_timeout = Duration::from_secs(10);
        })
        .build()
        .await
        .expect("connects through the proxy");
    bus.start_consuming().await.expect("consumes");
    publish_timed(&bus, &ledger, ticks(0, 100), confirm + SLACK)
        .await
        .expect("confirmed before the fault");

    proxy.set(proxy::Mode::Blackhole);
    let started = Instant::now();
    let watcher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            while bus.health_check().await.healthy {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            started.elapsed()
        })
    };
    let mut seq = 1000;
    while started.elapsed() < Duration::from_secs(30) {
        let _ = publish_timed(&bus, &ledger, ticks(seq, 10), confirm + SLACK).await;
        seq += 10;
    }
    assert!(
        watcher.is_finished(),
        "the dead link is noticed during the blackhole"
    );
    let noticed = watcher.await.expect("health watcher");
    assert!(
        noticed <= Duration::from_secs(16),
        "noticed after {noticed:?}, more than about two 5 s heartbeats"
    );
    proxy.set(proxy::Mode::Pass);
    let healed = Instant::now();
    loop {
        match publish_timed(&bus, &ledger, ticks(seq, 10), confirm + SLACK).await {
            Ok(()) => break,
            Err(e) => assert!(
                healed.elapsed() < Duration::from_secs(20),
                "no recovery 20 s after the heal: {e}"
            ),
        }
        seq += 10;
    }
    eprintln!(
        "case 5: dead link noticed after {noticed:?}, publishing again {:?} after the heal",
        healed.elapsed()
    );
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(30),
        || ledger.missing() == 0,
    )
    .await;
    ledger.tally(&BTreeSet::new()).assert_nothing_lost("case 5");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// Cases 9 and 13: oversized events, channel-level errors.
// ---------------------------------------------------------------------------

/// An event whose size the test chooses.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Fault")]
struct Blob {
    data: String,
}

/// Cases 9 and 13: on a node whose `max_message_size` is 64 KiB, an
/// oversized event fails with `Error::TooLarge` (the first one when the
/// broker closes the publishing channel for it, later ones before they are
/// sent); that channel alone is reopened: the connection stays (no
/// reconnection), small publishes in flight at the same time are all
/// confirmed and consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case09_case13_oversized_event_resets_only_the_publishing_channel() {
    let node = tokio::task::spawn_blocking(|| {
        Node::start_with("maxsize", "max_message_size = 65536", "[]")
    })
    .await
    .expect("node thread");
    let exchange = unique("maxsize");
    let confirm = Duration::from_secs(5);
    let ledger = Ledger::default();
    let bus = recording(builder(&node.url(), &exchange, confirm), &ledger)
        .event::<Blob>()
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let stop = Stop::default();
    let small = publish_loop(
        bus.clone(),
        ledger.clone(),
        50,
        confirm + SLACK,
        stop.clone(),
        0,
    );
    eventually("small publishes under way", Duration::from_secs(30), || {
        ledger.confirmed_count() >= 500
    })
    .await;
    let big = || {
        Envelope::new(
            Uuid::new_v4(),
            Blob {
                data: "x".repeat(100_000),
            },
        )
    };
    let error = bus
        .publish([big()])
        .await
        .expect_err("over the broker's limit");
    assert!(
        matches!(error, Error::TooLarge { max: 65_536, .. }),
        "first oversized event: {error:?}"
    );
    let started = Instant::now();
    let error = bus
        .publish([big()])
        .await
        .expect_err("over the broker's limit");
    assert!(matches!(error, Error::TooLarge { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the second oversized event fails before sending"
    );
    let after = ledger.confirmed_count();
    eventually("small publishes continue", Duration::from_secs(30), || {
        ledger.confirmed_count() >= after + 500
    })
    .await;
    stop.fire();
    let (_, errors) = small.await.expect("publisher task");
    assert!(errors.is_empty(), "small publishes failed: {errors:?}");
    assert_eq!(
        bus.stats().reconnections,
        0,
        "a channel-level error must not reset the connection"
    );
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(30),
        || ledger.missing() == 0,
    )
    .await;
    ledger
        .tally(&BTreeSet::new())
        .assert_nothing_lost("case 9/13");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

/// Case 13, consumer side: the broker closes one group's channel (its
/// consumer timeout expires on a stuck handler). Only that channel is
/// reopened: no reconnection, the other group on the same connection keeps
/// consuming, the stuck delivery is redelivered on the new channel, and the
/// stale ack of the stuck handler, once it finishes, does no harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case13_consumer_channel_closed_by_the_broker_is_reopened_alone() {
    let node = tokio::task::spawn_blocking(|| {
        Node::start_with(
            "ctimeout",
            "consumer_timeout = 3000",
            "[{rabbit, [{channel_tick_interval, 500}]}]",
        )
    })
    .await
    .expect("node thread");
    let exchange = unique("ctimeout");
    let confirm = Duration::from_secs(5);
    let fast = Ledger::default();
    let slow = Ledger::default();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, r, h) = (slow.clone(), release.clone(), hung.clone());
    let bus = recording(builder(&node.url(), &exchange, confirm), &fast)
        .configure(|c| c.prefetch_count = 10)
        .wildcard_handler("slow", Some("slow"), move |e: eventbus::AnyEnvelope| {
            let (s, r, h) = (s.clone(), r.clone(), h.clone());
            async move {
                // The first delivery is stuck past the consumer timeout.
                if !h.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    r.acquire().await.map_err(HandlerError::new)?.forget();
                }
                s.delivered(e.meta().event_id());
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let mut seq = 0;
    let started = Instant::now();
    // Steady traffic across the consumer timeout (3 s, checked every 0.5 s).
    while started.elapsed() < Duration::from_secs(8) {
        let events = ticks(seq, 20);
        let batch = ids(&events);
        publish_timed(&bus, &fast, events, confirm + SLACK)
            .await
            .expect("confirmed");
        slow.confirmed(batch);
        seq += 20;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(
        "the fast group got everything",
        Duration::from_secs(10),
        || fast.missing() == 0,
    )
    .await;
    eventually(
        "the slow group got everything on its reopened channel",
        Duration::from_secs(20),
        || slow.missing() == 0,
    )
    .await;
    // The stuck handler finishes now: its ack belongs to the closed channel.
    release.add_permits(1);
    let events = ticks(seq, 20);
    let batch = ids(&events);
    publish_timed(&bus, &fast, events, confirm + SLACK)
        .await
        .expect("confirmed");
    slow.confirmed(batch);
    eventually(
        "both groups keep consuming",
        Duration::from_secs(10),
        || fast.missing() == 0 && slow.missing() == 0,
    )
    .await;
    let n = &node;
    let queues = [format!("{exchange}.default"), format!("{exchange}.slow")];
    eventually("both queues settled", Duration::from_secs(10), || {
        queues.iter().all(|q| n.queue_counts(q) == Some((0, 0)))
    })
    .await;
    assert_eq!(
        bus.stats().reconnections,
        0,
        "a closed consumer channel must not reset the connection"
    );
    fast.tally(&BTreeSet::new())
        .assert_nothing_lost("case 13 fast group");
    slow.tally(&BTreeSet::new())
        .assert_nothing_lost("case 13 slow group");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// Proxy cases on the shared broker: 4 (cuts under load), 6 (latency).
// ---------------------------------------------------------------------------

/// The shared test broker's address, for the proxy.
fn shared_broker_addr() -> std::net::SocketAddr {
    let uri = common::url()
        .parse::<lapin::uri::AMQPUri>()
        .expect("test URL parses");
    format!("{}:{}", uri.authority.host, uri.authority.port)
        .parse()
        .expect("a numeric test broker address")
}

/// `messages_unacknowledged` of `queue` on the shared broker (read-only).
fn shared_unacked(queue: &str) -> Option<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (name, n) = l.split_once('\t')?;
        (name == queue).then(|| n.trim().parse().ok())?
    })
}

/// Case 4: every connection cut (RST) twice during a minute of steady load
/// (1,000 events a second): after each cut both links come back with their
/// topology, consumer and prefetch (with the handlers paused, exactly the
/// prefetch is unacked on the broker), the broker never shows more unacked
/// deliveries than the prefetch, nothing confirmed is lost; duplicates are
/// reported. Throughput is not asserted (a busy 2-core machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case04_connections_cut_twice_under_load_recover_fully() {
    const RUN: Duration = Duration::from_secs(60);
    let scope = common::Scope::new("faults-cut");
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let confirm = Duration::from_secs(5);
    let ledger = Ledger::default();
    let prefetch = 20u16;
    let l = ledger.clone();
    // While paused, handlers wait: deliveries pile up unacked to the prefetch.
    let (pause, paused) = tokio::sync::watch::channel(false);
    let bus = scope
        .builder()
        .url(&proxy.url())
        .event::<Tick>()
        .configure(move |c| {
            c.prefetch_count = prefetch;
            c.confirm_timeout = confirm;
        })
        .handler::<Tick, _, _>("record", move |e: Arc<Envelope<Tick>>| {
            let (l, mut paused) = (l.clone(), paused.clone());
            async move {
                while *paused.borrow_and_update() {
                    if paused.changed().await.is_err() {
                        break;
                    }
                }
                l.delivered(e.meta().event_id());
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects through the proxy");
    bus.start_consuming().await.expect("consumes");
    let bus = Arc::new(bus);
    let queue = scope.queue("default");

    // The broker's unacked count, sampled all along: never above the prefetch.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let (queue, sampling) = (queue.clone(), sampling.clone());
        move || {
            let (mut max, mut samples) = (0u64, 0usize);
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(n) = shared_unacked(&queue) {
                    max = max.max(n);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (max, samples)
        }
    });

    // 100 events every 100 ms for a minute, on a task of its own.
    let started = Instant::now();
    let publisher = tokio::spawn({
        let (bus, ledger) = (bus.clone(), ledger.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut seq, mut failed) = (0, 0);
            while started.elapsed() < RUN {
                tick.tick().await;
                if publish_timed(&bus, &ledger, ticks(seq, 100), confirm + SLACK)
                    .await
                    .is_err()
                {
                    failed += 1;
                }
                seq += 100;
            }
            (seq, failed)
        }
    });

    let unacked_now = |queue: String| async move {
        tokio::task::spawn_blocking(move || shared_unacked(&queue))
            .await
            .expect("rabbitmqctl thread")
            .unwrap_or(0)
    };
    let mut restored = Vec::new();
    for cut in 1..=2u64 {
        tokio::time::sleep_until(started + RUN * u32::try_from(cut).expect("small") / 3).await;
        proxy.cut_all();
        // Both links (publisher, consumer) come back.
        eventually("both connections back", Duration::from_secs(30), || {
            bus.stats().reconnections >= 2 * cut
        })
        .await;
        // The consumer is back with its prefetch: with handlers paused while
        // events keep coming, exactly the prefetch is unacked.
        pause.send_replace(true);
        let deadline = Instant::now() + Duration::from_secs(20);
        let unacked = loop {
            let n = unacked_now(queue.clone()).await;
            if n >= u64::from(prefetch) || Instant::now() >= deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        pause.send_replace(false);
        assert_eq!(
            unacked,
            u64::from(prefetch),
            "after cut {cut}: consumer and prefetch restored ({unacked} unacked with handlers paused)"
        );
        restored.push(unacked);
    }
    let (published, failed_calls) = publisher.await.expect("publisher task");
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(60),
        || ledger.missing() == 0,
    )
    .await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (max_unacked, samples) = tokio::task::spawn_blocking(move || sampler.join())
        .await
        .expect("sampler thread")
        .expect("sampler");
    let health = bus.health_check().await;
    assert!(health.healthy && health.consuming, "{health:?}");
    let reconnections = bus.stats().reconnections;
    assert!(
        max_unacked <= u64::from(prefetch),
        "the broker showed {max_unacked} unacked, above the prefetch {prefetch}"
    );
    let tally = ledger.tally(&BTreeSet::new());
    eprintln!(
        "case 4: {published} published in {RUN:?} ({failed_calls} calls failed with typed errors), {} confirmed, {} duplicates, {reconnections} reconnections, unacked after each cut with handlers paused {restored:?}, at most {max_unacked} unacked in {samples} samples",
        tally.confirmed, tally.duplicates
    );
    tally.assert_nothing_lost("case 4");
    // Every confirmed event is handled (and acked or about to be): shutdown
    // drains well within its bound.
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

/// Case 6: 200 ms +- 50 ms latency each way with a 2 s heartbeat: no false
/// heartbeat timeouts, no reconnections, every confirm matched to its event
/// (each event delivered once, nothing lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case06_latency_with_jitter_causes_no_reconnects() {
    let scope = common::Scope::new("faults-latency");
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let confirm = Duration::from_secs(10);
    let ledger = Ledger::default();
    let bus = recording(scope.builder().url(&proxy.url()).event::<Tick>(), &ledger)
        .configure(move |c| {
            c.heartbeat = 2;
            c.prefetch_count = 200;
            c.confirm_timeout = confirm;
        })
        .build()
        .await
        .expect("connects through the proxy");
    bus.start_consuming().await.expect("consumes");
    proxy.set(proxy::Mode::Latency {
        base: Duration::from_millis(200),
        jitter: Duration::from_millis(50),
    });
    let started = Instant::now();
    let mut seq = 0;
    // Publishing and consuming for longer than a few heartbeat timeouts.
    while started.elapsed() < Duration::from_secs(12) {
        publish_timed(&bus, &ledger, ticks(seq, 100), confirm + SLACK)
            .await
            .expect("confirmed despite the latency");
        seq += 100;
    }
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(30),
        || ledger.missing() == 0,
    )
    .await;
    assert_eq!(
        bus.stats().reconnections,
        0,
        "no reconnection under latency"
    );
    assert_eq!(
        proxy.accepted(),
        2,
        "the publisher and consumer connections only"
    );
    let tally = ledger.tally(&BTreeSet::new());
    assert_eq!(tally.duplicates, 0, "each confirmed event delivered once");
    tally.assert_nothing_lost("case 6");
    proxy.set(proxy::Mode::Pass);
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// Case 11: queue full. Case 16: shutdown under load.
// ---------------------------------------------------------------------------

/// Case 11: a group queue with `x-max-length` 100 and `reject-publish`, no
/// consumer: of 200 publishes, 100 are nacked with a typed error (never
/// reported as success) and the 100 accepted are delivered later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case11_full_queue_nacks_are_typed_errors() {
    let scope = common::Scope::new("faults-full");
    let ledger = Ledger::default();
    let bus = recording(scope.builder().event::<Tick>(), &ledger)
        .configure(|c| {
            c.queue_arguments
                .insert("x-max-length".into(), eventbus::QueueArgument::Int(100));
            c.queue_arguments.insert(
                "x-overflow".into(),
                eventbus::QueueArgument::Str("reject-publish".into()),
            );
        })
        .build()
        .await
        .expect("connects");
    let mut nacked = 0;
    for seq in 0..200 {
        match publish_timed(
            &bus,
            &ledger,
            ticks(seq, 1),
            Duration::from_secs(20) + SLACK,
        )
        .await
        {
            Ok(()) => {}
            Err(Error::Nacked { .. }) => nacked += 1,
            Err(other) => panic!("expected a nack, got {other:?}"),
        }
    }
    assert_eq!(nacked, 100);
    assert_eq!(ledger.confirmed_count(), 100);
    bus.start_consuming().await.expect("consumes");
    eventually(
        "the 100 accepted delivered",
        Duration::from_secs(30),
        || ledger.distinct_delivered() == 100,
    )
    .await;
    let tally = ledger.tally(&BTreeSet::new());
    tally.assert_nothing_lost("case 11");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

/// Case 16: shutdown with 500 handlers in flight and 300 publishes
/// unconfirmed: the handlers finish and ack within the drain timeout,
/// every publish resolves (confirmed or an error), and what was confirmed
/// but not consumed is still in the queue for the next consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case16_shutdown_drains_handlers_and_resolves_publishes() {
    let scope = common::Scope::new("faults-shutdown");
    let ledger = Ledger::default();
    let started_handlers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (l, st) = (ledger.clone(), started_handlers.clone());
    let bus = scope
        .builder()
        .event::<Tick>()
        .configure(|c| {
            c.prefetch_count = 500;
            c.ordering = eventbus::DeliveryOrder::Unordered;
        })
        .handler::<Tick, _, _>("slow", move |e: Arc<Envelope<Tick>>| {
            let (l, st) = (l.clone(), st.clone());
            async move {
                st.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                l.delivered(e.meta().event_id());
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    publish_timed(
        &bus,
        &ledger,
        ticks(0, 500),
        Duration::from_secs(20) + SLACK,
    )
    .await
    .expect("confirmed");
    bus.start_consuming().await.expect("consumes");
    eventually("500 handlers in flight", Duration::from_secs(30), || {
        started_handlers.load(std::sync::atomic::Ordering::SeqCst) >= 500
    })
    .await;
    let publishes: Vec<_> = (0..300)
        .map(|i| {
            let (bus, ledger) = (bus.clone(), ledger.clone());
            tokio::spawn(async move {
                publish_timed(
                    &bus,
                    &ledger,
                    ticks(1000 + i, 1),
                    Duration::from_secs(20) + SLACK,
                )
                .await
            })
        })
        .collect();
    let drain = Duration::from_secs(10);
    let started = Instant::now();
    bus.shutdown(drain)
        .await
        .expect("shuts down within the drain timeout");
    assert!(
        started.elapsed() <= drain + SLACK,
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(
        ledger.distinct_delivered(),
        500,
        "every in-flight handler finished"
    );
    let mut resolved = 0;
    for publish in publishes {
        let _ = tokio::time::timeout(Duration::from_secs(30), publish)
            .await
            .expect("every publish resolves")
            .expect("publish task");
        resolved += 1;
    }
    assert_eq!(resolved, 300);
    // The next consumer gets what was confirmed and not yet consumed.
    let next = recording(scope.builder().event::<Tick>(), &ledger)
        .build()
        .await
        .expect("connects");
    next.start_consuming().await.expect("consumes");
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(30),
        || ledger.missing() == 0,
    )
    .await;
    let tally = ledger.tally(&BTreeSet::new());
    assert_eq!(
        tally.duplicates, 0,
        "the 500 were acked before the connection closed"
    );
    tally.assert_nothing_lost("case 16");
    next.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// Case 14: secret hygiene.
// ---------------------------------------------------------------------------

/// Log output captured by a thread-local subscriber (the test runs on a
/// current-thread runtime, so every task of the bus logs through it).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// A user with a sentinel password on the shared broker, deleted when dropped.
struct SentinelUser {
    name: String,
}

impl SentinelUser {
    fn create(name: &str, password: &str) -> Self {
        let ctl = |args: &[&str]| {
            let out = std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .expect("rabbitmqctl runs");
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ctl(&["add_user", name, password]);
        let user = Self {
            name: name.to_owned(),
        };
        ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for SentinelUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// Case 14: a sentinel password through every error path (an invalid URL,
/// a wrong password, a TLS failure, reconnections after cuts): it never
/// appears in the logs (every level) or in `Debug` / `Display` output.
#[tokio::test]
async fn case14_the_password_never_appears_in_errors_or_logs() {
    let sentinel = format!("S3ntinel{}", &Uuid::new_v4().simple().to_string()[..10]);
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let scope = common::Scope::new("faults-secret");
    let mut outputs = Vec::new();
    let quick = |b: BusBuilder| {
        b.configure(|c| {
            c.connect_timeout = Duration::from_secs(3);
            c.confirm_timeout = Duration::from_secs(3);
        })
    };

    // An invalid URL (a port that is not a number).
    let bad = format!("amqp://guest:{sentinel}@127.0.0.1:notaport/%2f");
    let error = quick(scope.builder().url(&bad))
        .build()
        .await
        .expect_err("invalid URL");
    outputs.push(format!("{error} {error:?}"));
    // A wrong password.
    let wrong = format!("amqp://guest:{sentinel}@{}/%2f", shared_broker_addr());
    let error = quick(scope.builder().url(&wrong))
        .build()
        .await
        .expect_err("refused");
    outputs.push(format!("{error} {error:?}"));
    // TLS against the plain port.
    let tls = format!("amqps://guest:{sentinel}@{}/%2f", shared_broker_addr());
    let error = quick(scope.builder().url(&tls))
        .build()
        .await
        .expect_err("no TLS there");
    outputs.push(format!("{error} {error:?}"));
    // Reconnections of a working bus, with its password the sentinel.
    let user = format!("faults-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let _user = SentinelUser::create(&user, &sentinel);
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let url = format!("amqp://{user}:{sentinel}@{}/%2f", proxy.addr);
    let ledger = Ledger::default();
    let bus = recording(quick(scope.builder().url(&url)).event::<Tick>(), &ledger)
        .build()
        .await
        .expect("the sentinel user connects");
    bus.start_consuming().await.expect("consumes");
    for round in 0..2u64 {
        proxy.cut_all();
        proxy.set(proxy::Mode::Refuse);
        let error = bus
            .publish(ticks(round * 10, 1))
            .await
            .expect_err("refused meanwhile");
        outputs.push(format!("{error} {error:?}"));
        outputs.push(format!("{:?}", bus.health_check().await));
        proxy.set(proxy::Mode::Pass);
        let healed = Instant::now();
        while bus.publish(ticks(round * 10 + 1, 1)).await.is_err() {
            assert!(
                healed.elapsed() < Duration::from_secs(20),
                "no reconnection"
            );
        }
    }
    outputs.push(format!("{bus:?}"));
    outputs.push(format!("{:?}", bus.config()));
    outputs.push(format!("{}", bus.config().url));
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    drop(_guard);

    let logs = logs.text();
    assert!(
        logs.contains("reconnected to RabbitMQ") && logs.contains("cannot connect"),
        "the error paths were logged: {logs}"
    );
    for output in &outputs {
        assert!(!output.contains(&sentinel), "the password leaked: {output}");
    }
    if let Some(line) = logs.lines().find(|l| l.contains(&sentinel)) {
        panic!("the password leaked into the logs: {line}");
    }
}

/// Case 4b: connections cut in the middle of a frame (the proxy forwards the
/// first N bytes of a chunk towards the broker, then resets), three times
/// while publishing 2 KB events: each link comes back, nothing confirmed is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case04b_cuts_mid_frame_lose_nothing() {
    let scope = common::Scope::new("faults-midframe");
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let confirm = Duration::from_secs(5);
    let ledger = Ledger::default();
    let bus = recording(
        scope
            .builder()
            .url(&proxy.url())
            .event::<Blob>()
            .event::<Tick>(),
        &ledger,
    )
    .configure(move |c| c.confirm_timeout = confirm)
    .handler::<Blob, _, _>("blobs", {
        let ledger = ledger.clone();
        move |e: Arc<Envelope<Blob>>| {
            ledger.delivered(e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        }
    })
    .build()
    .await
    .expect("connects through the proxy");
    bus.start_consuming().await.expect("consumes");
    let mut cuts = 0;
    let mut calls = 0;
    while cuts < 3 || calls < 40 {
        if calls % 10 == 5 && cuts < 3 {
            // 2,000-byte bodies: 64 KiB + 37 lands inside a frame.
            proxy.cut_after(65_536 + 37);
            cuts += 1;
        }
        let events: Vec<Envelope<Blob>> = (0..50)
            .map(|_| {
                Envelope::new(
                    Uuid::new_v4(),
                    Blob {
                        data: "y".repeat(2_000),
                    },
                )
            })
            .collect();
        let batch: Vec<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
        let started = Instant::now();
        match bus.publish(events).await {
            Ok(_) => ledger.confirmed(batch),
            Err(_) => ledger.unsure(batch),
        }
        assert!(started.elapsed() <= confirm + SLACK);
        calls += 1;
    }
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(60),
        || ledger.missing() == 0,
    )
    .await;
    let reconnections = bus.stats().reconnections;
    assert!(
        reconnections >= 3,
        "three mid-frame cuts, {reconnections} reconnections"
    );
    ledger
        .tally(&BTreeSet::new())
        .assert_nothing_lost("case 4b");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// Case 8: malformed input. Case 12b: disk alarm.
// ---------------------------------------------------------------------------

/// Case 8: malformed messages (invalid JSON, a body that does not match the
/// type, a wrong content type, invalid UTF-8 in the `event_type` header, an
/// unknown event type) go straight to the DLQ with a reason, without
/// retries; the consumer keeps running and handles the next good event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case08_malformed_input_goes_straight_to_the_dlq() {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString};

    let scope = common::Scope::new("faults-malformed");
    let ledger = Ledger::default();
    let bus = recording(scope.builder().event::<Tick>(), &ledger)
        .configure(|c| {
            c.max_retries = 3;
            c.retry_base_delay = Duration::from_millis(50);
            // An unknown type routed to the group is first left to other
            // members (a mixed fleet) that many times; this bus is the whole
            // group, so it goes to the DLQ at once.
            c.max_unhandled_deferrals = 0;
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let conn = common::raw().await;
    let channel = conn.create_channel().await.expect("channel");
    let string = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let cases: Vec<(&str, Vec<u8>, Option<&str>, AMQPValue)> = vec![
        (
            "invalid-json",
            b"{not json".to_vec(),
            Some("application/json"),
            string(Tick::EVENT_TYPE),
        ),
        (
            "schema",
            br#"{"unexpected": true}"#.to_vec(),
            Some("application/json"),
            string(Tick::EVENT_TYPE),
        ),
        (
            "content-type",
            br#"{"seq": 1}"#.to_vec(),
            Some("text/plain"),
            string(Tick::EVENT_TYPE),
        ),
        (
            "utf8-header",
            br#"{"seq": 1}"#.to_vec(),
            Some("application/json"),
            AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0xfe, 0xfd])),
        ),
        (
            "unknown-type",
            br#"{"seq": 1}"#.to_vec(),
            Some("application/json"),
            string("Nobody.Knows"),
        ),
    ];
    for (id, body, content_type, event_type) in &cases {
        let mut headers = FieldTable::default();
        headers.insert("event_type".into(), event_type.clone());
        let mut properties = lapin::BasicProperties::default()
            .with_message_id((*id).into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(ct) = content_type {
            properties = properties.with_content_type((*ct).into());
        }
        channel
            .basic_publish(
                scope.exchange.as_str().into(),
                Tick::ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("published")
            .await
            .expect("written");
    }
    let _ = conn.close(200, "done".into()).await;
    let dlq = bus.dlq("default");
    let deadline = Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let parked = dlq.list(100).await.expect("lists the DLQ");
        if parked.len() >= cases.len() {
            break parked;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} malformed messages in the DLQ: {parked:?}",
            parked.len(),
            cases.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(parked.len(), cases.len(), "each parked once: {parked:?}");
    for (id, ..) in &cases {
        let message = parked
            .iter()
            .find(|m| m.message_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} is in the DLQ: {parked:?}"));
        assert!(
            message.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{id} has a reason"
        );
        assert_eq!(message.retry_count.unwrap_or(0), 0, "{id} was not retried");
    }
    assert_eq!(
        ledger.distinct_delivered(),
        0,
        "no handler saw a malformed message"
    );
    publish_timed(&bus, &ledger, ticks(0, 10), Duration::from_secs(20) + SLACK)
        .await
        .expect("confirmed");
    eventually(
        "the consumer keeps running",
        Duration::from_secs(10),
        || ledger.missing() == 0,
    )
    .await;
    let _ = dlq.purge().await;
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

/// Case 12b: a disk alarm blocks like a memory alarm: `Error::Blocked`
/// naming the disk within the confirm timeout; publishing resumes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case12b_disk_alarm_fails_publishes_in_time() {
    let node = start_node("disk").await;
    let exchange = unique("disk");
    let confirm = Duration::from_secs(3);
    let ledger = Ledger::default();
    let bus = recording(builder(&node.url(), &exchange, confirm), &ledger)
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    publish_timed(&bus, &ledger, ticks(0, 10), confirm + SLACK)
        .await
        .expect("confirmed before the alarm");
    node.ctl(&["set_disk_free_limit", "100000GB"]);
    let n = &node;
    eventually("the disk alarm is on", Duration::from_secs(30), || {
        n.ctl(&["status"]).contains("Free disk space alarm")
            || n.ctl(&["status"]).contains("disk alarm")
    })
    .await;
    let error = publish_timed(&bus, &ledger, ticks(100, 3), confirm + SLACK)
        .await
        .expect_err("blocked");
    match &error {
        Error::Blocked { reason, .. } => assert!(reason.contains("disk"), "{reason}"),
        other => panic!("expected Error::Blocked, got {other:?}"),
    }
    node.ctl(&["set_disk_free_limit", "1MB"]);
    let resumed = Instant::now();
    let mut seq = 200;
    while publish_timed(&bus, &ledger, ticks(seq, 10), confirm + SLACK)
        .await
        .is_err()
    {
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "publishing did not resume"
        );
        seq += 10;
    }
    eventually(
        "every confirmed event delivered",
        Duration::from_secs(30),
        || ledger.missing() == 0,
    )
    .await;
    ledger
        .tally(&BTreeSet::new())
        .assert_nothing_lost("case 12b");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// Readiness during a broker restart (observability).
// ---------------------------------------------------------------------------

/// The status of `GET http://{addr}/health/ready`.
async fn ready_status(addr: std::net::SocketAddr) -> u16 {
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        agent
            .get(&format!("http://{addr}/health/ready"))
            .call()
            .expect("the probe answers")
            .status()
            .as_u16()
    })
    .await
    .expect("probe task")
}

/// Polls the readiness probe until it answers `status`.
async fn probe_until(addr: std::net::SocketAddr, status: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready_status(addr).await != status {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readiness_probe_flips_during_a_broker_restart() {
    let node = start_node("probe").await;
    let exchange = unique("probe");
    let ledger = Ledger::default();
    let bus = recording(
        builder(&node.url(), &exchange, Duration::from_secs(5)),
        &ledger,
    )
    .build()
    .await
    .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let addr = bus
        .serve_metrics("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listens");
    probe_until(addr, 200, "ready before the restart").await;

    let node = tokio::task::spawn_blocking(move || {
        node.ctl(&["stop_app"]);
        node
    })
    .await
    .expect("ctl thread");
    probe_until(addr, 503, "not ready while the broker is down").await;
    let node = tokio::task::spawn_blocking(move || {
        node.ctl(&["start_app"]);
        node
    })
    .await
    .expect("ctl thread");
    probe_until(addr, 200, "ready again after the restart").await;
    assert!(bus.stats().reconnections >= 1);
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    drop(node);
}

// ---------------------------------------------------------------------------
// Case 15 (second half): a user without configure permission on one group's
// queue.
// ---------------------------------------------------------------------------

/// `rabbitmqctl` with `args`, which must succeed.
fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A user on the shared broker's `/` vhost, deleted when dropped (even when
/// the test fails), so the shared broker ends as it was.
struct TestUser {
    name: String,
}

impl TestUser {
    /// Creates the user with `configure` as its configure permission
    /// (write and read: everything).
    fn create(name: &str, password: &str, configure: &str) -> Self {
        rabbitmqctl(&["add_user", name, password]);
        let user = Self {
            name: name.to_owned(),
        };
        user.permit(configure);
        user
    }

    fn permit(&self, configure: &str) {
        permit(&self.name, configure);
    }
}

/// Sets `user`'s permissions on `/`: `configure`, and everything to write
/// and read.
fn permit(user: &str, configure: &str) {
    rabbitmqctl(&["set_permissions", "-p", "/", user, configure, ".*", ".*"]);
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// A regex matching every name but `name` (Erlang `re`, which is PCRE).
fn all_but(name: &str) -> String {
    let escaped: String = name
        .chars()
        .flat_map(|c| {
            let special = !c.is_ascii_alphanumeric() && c != '_' && c != '-';
            special.then_some('\\').into_iter().chain([c])
        })
        .collect();
    format!("^(?!{escaped}$).*")
}

/// A user who may not write to the exchange gets the broker's refusal from
/// `publish` at once: it was sent again on new channels, each closed by the
/// broker, until `confirm_timeout` ended it as a `ConfirmTimeout` hiding why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_broker_refuses_fails_at_once_with_its_reason() {
    let scope = common::Scope::new("faults-write-acl");
    let id = Uuid::new_v4().simple().to_string();
    let (name, password) = (format!("eventbus-wacl-{}", &id[..8]), id[8..].to_owned());
    let user = tokio::task::spawn_blocking({
        let (name, password) = (name.clone(), password.clone());
        let exchange = scope.exchange.clone();
        move || {
            let user = TestUser::create(&name, &password, ".*");
            // Everything but the exchange the bus publishes to.
            rabbitmqctl(&[
                "set_permissions",
                "-p",
                "/",
                &name,
                ".*",
                &all_but(&exchange),
                ".*",
            ]);
            user
        }
    })
    .await
    .expect("rabbitmqctl thread");
    let url = format!("amqp://{name}:{password}@{}/%2f", shared_broker_addr());
    let confirm = Duration::from_secs(20);
    let bus = scope
        .builder()
        .url(&url)
        .configure(move |c| c.confirm_timeout = confirm)
        .handler::<Tick, _, _>("noop", |_e| async { Ok::<_, HandlerError>(()) })
        .build()
        .await
        .expect("connects: declaring needs no write permission on the exchange");
    let error = bus
        .publish(ticks(0, 3))
        .await
        .expect_err("the write is refused");
    let text = error.to_string();
    assert!(matches!(error, eventbus::Error::Broker { .. }), "{text}");
    assert!(
        text.contains("ACCESS_REFUSED") && text.contains(&scope.exchange),
        "{text}"
    );
    assert!(!text.contains(&password), "{text}");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    drop(user);
}

/// Case 15: the broker refuses the user configure permission on one group's
/// queue: that group gets `Error::AccessRefused` (in its queue info and in
/// health, which is not ready), without resetting the connection; the other
/// group consumes everything; a bus with only the refused group fails to
/// start consuming with the same typed error. Once the permission is granted,
/// the background retry declares the refused group and it consumes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case15_access_refused_to_one_group_leaves_the_others_working() {
    let scope = common::Scope::new("faults-acl");
    let (ok, refused) = (scope.group("open"), scope.group("closed"));
    let refused_queue = scope.queue(&refused);
    let id = Uuid::new_v4().simple().to_string();
    let (name, password) = (format!("eventbus-acl-{}", &id[..8]), id[8..].to_owned());
    let user = tokio::task::spawn_blocking({
        let (name, password, configure) = (name.clone(), password.clone(), all_but(&refused_queue));
        move || TestUser::create(&name, &password, &configure)
    })
    .await
    .expect("rabbitmqctl thread");
    let url = format!("amqp://{name}:{password}@{}/%2f", shared_broker_addr());
    let (open_ledger, closed_ledger) = (Ledger::default(), Ledger::default());
    let record = |ledger: &Ledger| {
        let ledger = ledger.clone();
        move |e: eventbus::AnyEnvelope| {
            ledger.delivered(e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        }
    };
    let bus = scope
        .builder()
        .url(&url)
        .event::<Tick>()
        .configure(|c| c.max_reconnect_delay = Duration::from_millis(300))
        .wildcard_handler("open", Some(&ok), record(&open_ledger))
        .wildcard_handler("closed", Some(&refused), record(&closed_ledger))
        .build()
        .await
        .expect("builds: one refused group does not fail the bus");
    bus.start_consuming()
        .await
        .expect("consumes: only one of two groups is refused");

    let health = bus.health_check().await;
    assert!(
        !health.healthy,
        "a refused group shows in health: {health:?}"
    );
    assert_eq!(
        health.consumers.get(&scope.queue(&ok)),
        Some(&true),
        "{health:?}"
    );
    assert_eq!(
        health.consumers.get(&refused_queue),
        Some(&false),
        "{health:?}"
    );
    let error = health.error.clone().unwrap_or_default();
    assert!(
        error.contains("refused access") && error.contains(&refused_queue),
        "{error}"
    );
    match bus.group_queue_info(&refused).await {
        Err(Error::AccessRefused {
            group, kind, name, ..
        }) => {
            assert_eq!(
                (group.as_str(), kind, name.as_str()),
                (refused.as_str(), "queue", refused_queue.as_str())
            );
        }
        other => panic!("expected AccessRefused for the refused group, got {other:?}"),
    }

    // The open group consumes everything meanwhile, on a connection that
    // was never reset.
    let confirm = Duration::from_secs(5);
    let first = ticks(0, 100);
    publish_timed(&bus, &open_ledger, first.clone(), confirm + SLACK)
        .await
        .expect("published");
    eventually(
        "the open group handles all 100",
        Duration::from_secs(20),
        || open_ledger.missing() == 0,
    )
    .await;
    assert_eq!(closed_ledger.distinct_delivered(), 0);
    assert_eq!(bus.stats().reconnections, 0, "no connection was reset");

    // A bus whose only group is refused: start_consuming is the typed error.
    let alone = scope
        .builder()
        .url(&url)
        .event::<Tick>()
        .wildcard_handler("closed", Some(&refused), record(&Ledger::default()))
        .build()
        .await
        .expect("builds (the exchange is allowed)");
    match alone.start_consuming().await {
        Err(Error::AccessRefused { group, .. }) => assert_eq!(group, refused),
        other => panic!("every group refused: expected AccessRefused, got {other:?}"),
    }
    alone
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");

    // Granted: the background retry declares the group and consumes it.
    tokio::task::spawn_blocking({
        let name = user.name.clone();
        move || permit(&name, ".*")
    })
    .await
    .expect("rabbitmqctl thread");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = bus.health_check().await;
        if health.healthy && health.consumers.values().all(|up| *up) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not recovered after the grant: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = bus.group_queue_info(&refused).await.expect("declared now");
    assert_eq!(info.consumer_count, 1);
    let second = ticks(100, 100);
    publish_timed(&bus, &closed_ledger, second.clone(), confirm + SLACK)
        .await
        .expect("published");
    open_ledger.confirmed(ids(&second));
    eventually(
        "both groups handle the next 100",
        Duration::from_secs(20),
        || open_ledger.missing() == 0 && closed_ledger.missing() == 0,
    )
    .await;
    assert_eq!(bus.stats().reconnections, 0, "no connection was reset");
    open_ledger
        .tally(&BTreeSet::new())
        .assert_nothing_lost("case 15 open group");
    closed_ledger
        .tally(&BTreeSet::new())
        .assert_nothing_lost("case 15 refused group");
    eprintln!("case 15: refused group reported as {error}; recovered after the grant");
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
    drop(user);
}

// ---------------------------------------------------------------------------
// Case 7: poison events among 10,000 healthy ones.
// ---------------------------------------------------------------------------

/// Case 7: 20 poison events (failing every attempt) among 10,000 healthy
/// ones: each poison event is attempted exactly `max_retries + 1` times, no
/// sooner than the configured gaps, and dead-lettered once; each healthy event
/// is handled once; another group (on the same bus) handles every event,
/// poison included, exactly once. Healthy latency with and without poison is
/// measured by `bench poison` (RELIABILITY.md), not asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case07_poison_events_among_10000_are_retried_then_dead_lettered_once() {
    const HEALTHY: u64 = 10_000;
    const POISON: u64 = 20;
    const MAX_RETRIES: u32 = 3;
    const BASE: Duration = Duration::from_millis(200);
    let scope = common::Scope::new("faults-poison");
    let audit = scope.group("audit");
    let total = HEALTHY + POISON;
    let events = ticks(0, total);
    // Spread evenly: every 501st event is poison.
    let every = total / POISON;
    let poison: BTreeSet<Uuid> = events
        .iter()
        .filter(|e| e.event().seq % every == every / 2)
        .map(|e| e.meta().event_id())
        .collect();
    assert_eq!(poison.len() as u64, POISON);
    type Attempts = Arc<std::sync::Mutex<std::collections::HashMap<Uuid, Vec<Instant>>>>;
    let attempts = Attempts::default();
    let audited = Ledger::default();
    let (a, p) = (attempts.clone(), Arc::new(poison.clone()));
    let au = audited.clone();
    let bus = scope
        .builder()
        .event::<Tick>()
        .configure(|c| {
            c.max_retries = MAX_RETRIES;
            c.retry_base_delay = BASE;
            c.retry_max_delay = Duration::from_secs(10);
            c.retry_jitter = 0.1;
            c.prefetch_count = 100;
            c.confirm_timeout = Duration::from_secs(10);
        })
        .handler::<Tick, _, _>("main", move |e: Arc<Envelope<Tick>>| {
            let id = e.meta().event_id();
            a.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(id)
                .or_default()
                .push(Instant::now());
            let result = if p.contains(&id) {
                Err(HandlerError::new(format!("poison {id}")))
            } else {
                Ok(())
            };
            std::future::ready(result)
        })
        .wildcard_handler("audit", Some(&audit), move |e: eventbus::AnyEnvelope| {
            au.delivered(e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let started = Instant::now();
    for chunk in events.chunks(1000) {
        let batch = chunk.to_vec();
        bus.publish(batch).await.expect("confirmed");
        audited.confirmed(ids(chunk));
    }
    let dlq = bus.dlq("default");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let handled = attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len() as u64;
        let parked = dlq.count().await.unwrap_or(0);
        if handled == total && u64::from(parked) == POISON && audited.missing() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {handled} of {total} handled, {parked} of {POISON} dead-lettered, {} missing in the audit group",
            audited.missing()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let attempts = attempts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut late = Duration::ZERO;
    for (id, times) in &attempts {
        if poison.contains(id) {
            assert_eq!(
                times.len(),
                MAX_RETRIES as usize + 1,
                "max_retries + 1 attempts for poison {id}"
            );
            for (k, pair) in times.windows(2).enumerate() {
                let gap = pair[1] - pair[0];
                let nominal = BASE * 2u32.pow(k as u32);
                // Jitter 0.1; the timer and the broker's TTL sweep round a little.
                assert!(
                    gap.as_secs_f64() >= nominal.as_secs_f64() * 0.9 - 0.005,
                    "retry {k} of {id} after {gap:?}, before its gap {nominal:?}"
                );
                late = late.max(gap.saturating_sub(nominal));
            }
        } else {
            assert_eq!(times.len(), 1, "healthy event {id} handled once");
        }
    }
    let parked = dlq.list(100).await.expect("lists the DLQ");
    let parked_ids: BTreeSet<Uuid> = parked
        .iter()
        .filter_map(|m| m.message_id.as_deref()?.parse().ok())
        .collect();
    assert_eq!(parked.len() as u64, POISON, "each dead-lettered once");
    assert_eq!(parked_ids, poison);
    assert!(
        parked
            .iter()
            .all(|m| m.retry_count == Some(i64::from(MAX_RETRIES))),
        "{parked:?}"
    );
    let audit_tally = audited.tally(&BTreeSet::new());
    assert_eq!(
        audit_tally.duplicates, 0,
        "the other group handles each event once"
    );
    audit_tally.assert_nothing_lost("case 7 audit group");
    assert_eq!(
        bus.queue_info().await.expect("queue").message_count,
        0,
        "nothing left in the main queue"
    );
    eprintln!(
        "case 7: {total} events ({POISON} poison) in {took:.1?}; each poison attempted {} times, dead-lettered once; retries at most {late:?} past their gap; audit group 0 lost, 0 duplicates",
        MAX_RETRIES + 1
    );
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

// ---------------------------------------------------------------------------
// DLQ tooling on a blackholed broker.
// ---------------------------------------------------------------------------

/// DLQ operations (count, list, show, replay, replay_all, purge) on a broker
/// blackholed through the proxy each return a typed error within the confirm
/// timeout instead of waiting on the stalled broker; after the heal the
/// dead-lettered message is still there, and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_operations_on_a_blackholed_broker_fail_within_the_confirm_timeout() {
    let scope = common::Scope::new("faults-dlq-blackhole");
    let proxy = proxy::Proxy::start(shared_broker_addr()).await;
    let confirm = Duration::from_secs(2);
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ledger = Ledger::default();
    let (f, l) = (failing.clone(), ledger.clone());
    let bus = scope
        .builder()
        .url(&proxy.url())
        .event::<Tick>()
        .configure(move |c| {
            // Long heartbeats: the link stays "up" for the whole blackhole,
            // so every call reaches the stalled socket.
            c.heartbeat = 60;
            c.confirm_timeout = confirm;
            c.max_retries = 0;
        })
        .handler::<Tick, _, _>("record", move |e: Arc<Envelope<Tick>>| {
            let result = if f.load(std::sync::atomic::Ordering::SeqCst) {
                Err(HandlerError::new("parked for the test"))
            } else {
                l.delivered(e.meta().event_id());
                Ok(())
            };
            std::future::ready(result)
        })
        .build()
        .await
        .expect("connects through the proxy");
    bus.start_consuming().await.expect("consumes");
    let event = ticks(0, 1);
    let id = event[0].meta().event_id();
    publish_timed(&bus, &ledger, event, confirm + SLACK)
        .await
        .expect("confirmed");
    let dlq = bus.dlq("default");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dlq.count().await.ok() != Some(1) {
        assert!(Instant::now() < deadline, "the event never reached the DLQ");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.stop_consuming().await.expect("stops consuming");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);

    proxy.set(proxy::Mode::Blackhole);
    let bound = confirm + SLACK;
    let mut errors = Vec::new();
    macro_rules! stalled {
        ($name:literal, $call:expr) => {{
            let started = Instant::now();
            let result = $call.await;
            let took = started.elapsed();
            assert!(
                took <= bound,
                "{} took {took:?} on a blackholed broker, past {bound:?}: {result:?}",
                $name
            );
            match result {
                Err(
                    error @ (Error::Broker { .. } | Error::NotConnected(_) | Error::Blocked { .. }),
                ) => errors.push(format!("{}: {error} ({took:.1?})", $name)),
                other => panic!(
                    "{} on a blackholed broker: expected a typed broker error, got {other:?}",
                    $name
                ),
            }
        }};
    }
    stalled!("count", dlq.count());
    stalled!("list", dlq.list(10));
    stalled!("show", dlq.show(&id.to_string()));
    stalled!("replay", dlq.replay(&id.to_string()));
    stalled!("replay_all", dlq.replay_all(&eventbus::ReplayFilter::all()));
    stalled!("purge", dlq.purge());
    proxy.set(proxy::Mode::Pass);

    // After the heal (the link may rebuild its connection first), the
    // message is still parked: nothing was removed by the failed calls.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        match dlq.list(10).await {
            Ok(listed) => break listed,
            Err(e) => assert!(Instant::now() < deadline, "no recovery after the heal: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].message_id.as_deref(),
        Some(id.to_string().as_str())
    );
    assert!(dlq.replay(&id.to_string()).await.expect("replays"));
    bus.start_consuming().await.expect("consumes again");
    eventually(
        "the replayed event is handled",
        Duration::from_secs(20),
        || ledger.missing() == 0,
    )
    .await;
    for line in &errors {
        eprintln!("dlq on a blackholed broker: {line}");
    }
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}
