//! Ordering and acks on RabbitMQ: each aggregate in order under handlers of
//! varying duration, strict mode, a single active consumer taking over after a
//! crash, and a crash with failed and stuck handlers that loses nothing and
//! acks nothing early (acks are coalesced with `multiple`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ChildGuard, Scope};
use eventbus::{Bus, DeliveryOrder, DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The event of `src/bin/ledger_consumer.rs`.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Ledger")]
struct Step {
    seq: u32,
}

const WAIT: Duration = Duration::from_secs(60);

/// `aggregates` x `per_aggregate` steps, in bursts of `burst` per aggregate,
/// interleaved: a0 0..5, a1 0..5, ..., a0 5..10, ...
fn steps(aggregates: usize, per_aggregate: u32, burst: u32) -> (Vec<Uuid>, Vec<Envelope<Step>>) {
    let ids: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
    let mut out = Vec::new();
    for start in (0..per_aggregate).step_by(burst as usize) {
        for id in &ids {
            for seq in start..(start + burst).min(per_aggregate) {
                out.push(Envelope::new(*id, Step { seq }).aggregate_version(u64::from(seq) + 1));
            }
        }
    }
    (ids, out)
}

/// Per aggregate, how many times a step came before a lower one already seen.
fn inversions(seen: &[(Uuid, u32)]) -> usize {
    let mut highest: HashMap<Uuid, u32> = HashMap::new();
    let mut count = 0;
    for (id, seq) in seen {
        match highest.get(id) {
            Some(h) if seq < h => count += 1,
            _ => {
                highest.insert(*id, *seq);
            }
        }
    }
    count
}

/// A handler recording the order of steps and the most that ran at once.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(Uuid, u32)>>,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Recorder {
    async fn handle(&self, event: &Envelope<Step>) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        // 0-4 ms of "database work", varying by event.
        let work = (event.meta().aggregate_id().as_u128() as u64 + u64::from(event.seq) * 3) % 5;
        tokio::time::sleep(Duration::from_millis(work)).await;
        self.seen
            .lock()
            .expect("not poisoned")
            .push((event.meta().aggregate_id(), event.seq));
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<(Uuid, u32)> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

async fn consuming_bus(
    scope: &Scope,
    order: Option<DeliveryOrder>,
    recorder: Arc<Recorder>,
) -> Bus {
    let mut builder = scope
        .builder()
        .configure(|c| c.prefetch_count = 100)
        .handler::<Step, _, _>("record", move |event| {
            let recorder = recorder.clone();
            async move {
                recorder.handle(&event).await;
                Ok::<_, HandlerError>(())
            }
        });
    if let Some(order) = order {
        builder = builder.group_ordering("default", order);
    }
    let bus = builder.build().await.expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus
}

#[tokio::test]
async fn each_aggregate_is_handled_in_order_while_aggregates_run_concurrently() {
    let scope = Scope::new("order");
    let recorder = Arc::new(Recorder::default());
    let bus = consuming_bus(&scope, None, recorder.clone()).await;
    let (_, events) = steps(20, 25, 5);
    bus.publish(events).await.expect("publishes");
    common::eventually("500 handled", WAIT, || async {
        recorder.seen().len() >= 500
    })
    .await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 500, "each handled once");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 500);
    assert_eq!(inversions(&seen), 0, "an aggregate's events out of order");
    assert!(
        recorder.most.load(Ordering::SeqCst) > 1,
        "different aggregates never ran concurrently"
    );
    assert_eq!(
        common::message_count(&scope.queue("default")).await,
        0,
        "all acked"
    );
}

#[tokio::test]
async fn strict_ordering_handles_one_delivery_at_a_time_in_publish_order() {
    let scope = Scope::new("strict");
    let recorder = Arc::new(Recorder::default());
    let bus = consuming_bus(&scope, Some(DeliveryOrder::Strict), recorder.clone()).await;
    let (_, events) = steps(5, 12, 3);
    let expected: Vec<(Uuid, u32)> = events
        .iter()
        .map(|e| (e.meta().aggregate_id(), e.seq))
        .collect();
    bus.publish(events).await.expect("publishes");
    common::eventually("60 handled", WAIT, || async { recorder.seen().len() >= 60 }).await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    assert_eq!(recorder.seen(), expected);
    assert_eq!(recorder.most.load(Ordering::SeqCst), 1);
}

/// A `ledger_consumer` process on the scope's exchange.
fn ledger_consumer(
    scope: &Scope,
    envs: &[(&str, &str)],
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledger_consumer"));
    command
        .env("EVENTBUS_URL", common::url())
        .env("EVENTBUS_EXCHANGE_NAME", &scope.exchange)
        .env("EVENTBUS_RETRY_BASE_DELAY", "0.05")
        .env("RUST_LOG", "eventbus=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = ChildGuard(command.spawn().expect("the ledger_consumer binary starts"));
    let stdout = common::lines(child.0.stdout.take().expect("stdout piped"));
    let stderr = common::lines(child.0.stderr.take().expect("stderr piped"));
    loop {
        let line = stderr
            .recv_timeout(WAIT)
            .expect("the consumer reports it is running");
        if line.contains("eventbus running on") {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while stderr.recv().is_ok() {});
    (child, stdout)
}

/// Parses `done {aggregate} {seq}` lines (others are returned as they are).
fn parse(line: &str) -> Option<(&str, Uuid, u32)> {
    let mut parts = line.split_whitespace();
    let kind = parts.next()?;
    let id = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((kind, id, seq))
}

/// Reads lines until `until` holds for what was read, or fails after WAIT.
fn read_until(
    lines: &std::sync::mpsc::Receiver<String>,
    read: &mut Vec<(String, Uuid, u32)>,
    until: impl Fn(&[(String, Uuid, u32)]) -> bool,
) {
    while !until(read) {
        let line = lines
            .recv_timeout(WAIT)
            .expect("the consumer keeps reporting");
        if let Some((kind, id, seq)) = parse(&line) {
            read.push((kind.to_owned(), id, seq));
        }
    }
}

/// Kills the child with SIGKILL and reads what it printed before dying.
fn kill_and_drain(
    child: &mut ChildGuard,
    lines: &std::sync::mpsc::Receiver<String>,
    read: &mut Vec<(String, Uuid, u32)>,
) {
    child.0.kill().expect("kill -9 the consumer");
    child.0.wait().expect("reaped");
    // The pipe is closed once the process is gone: this ends.
    while let Ok(line) = lines.recv_timeout(WAIT) {
        if let Some((kind, id, seq)) = parse(&line) {
            read.push((kind.to_owned(), id, seq));
        }
    }
}

/// A bus that only publishes `Step`s.
async fn step_publisher(scope: &Scope) -> Bus {
    scope
        .builder()
        .event::<Step>()
        .build()
        .await
        .expect("connects")
}

fn done(read: &[(String, Uuid, u32)]) -> Vec<(Uuid, u32)> {
    read.iter()
        .filter(|(k, _, _)| k == "done")
        .map(|(_, id, seq)| (*id, *seq))
        .collect()
}

#[tokio::test]
async fn a_single_active_consumer_takes_over_after_a_crash_in_order() {
    let scope = Scope::new("sac");
    scope.group("ledger");
    let envs = [("EVENTBUS_QUEUE_ARGUMENTS", "x-single-active-consumer=true")];
    let (mut first, first_out) = ledger_consumer(&scope, &envs);
    let (_second, second_out) = ledger_consumer(&scope, &envs);
    let publisher = step_publisher(&scope).await;
    let (_, events) = steps(10, 20, 4);
    publisher.publish(events).await.expect("publishes");

    // The first member is the active one; kill it mid-stream.
    let mut first_read = Vec::new();
    read_until(&first_out, &mut first_read, |r| done(r).len() >= 60);
    kill_and_drain(&mut first, &first_out, &mut first_read);
    let by_first = done(&first_read);
    assert!(
        by_first.len() < 200,
        "the first member finished before it was killed"
    );

    // The other member takes over everything the first did not finish.
    let mut second_read = Vec::new();
    read_until(&second_out, &mut second_read, |r| {
        let all: BTreeSet<(Uuid, u32)> = by_first.iter().chain(done(r).iter()).copied().collect();
        all.len() >= 200
    });
    let by_second = done(&second_read);
    assert_eq!(inversions(&by_first), 0, "first member out of order");
    assert_eq!(inversions(&by_second), 0, "second member out of order");
    // Only one member was active: the second started where the first stopped.
    let first_done: BTreeSet<_> = by_first.iter().copied().collect();
    for (id, seq) in &by_second {
        if first_done.contains(&(*id, *seq)) {
            continue; // handled, not yet acked when killed: redelivered
        }
        let last_by_first = by_first
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, s)| *s)
            .max();
        assert!(
            last_by_first.is_none_or(|l| *seq > l),
            "aggregate {id}: step {seq} handled by the second member before the first's {last_by_first:?}"
        );
    }
    publisher
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn a_crash_with_failed_and_stuck_handlers_loses_nothing_and_acks_nothing_early() {
    let scope = Scope::new("crash");
    scope.group("ledger");
    let (mut child, out) = ledger_consumer(
        &scope,
        &[
            ("EVENTBUS_PREFETCH_COUNT", "60"),
            ("LEDGER_FAIL_SEQ", "3"),
            ("LEDGER_HANG_SEQ", "5"),
        ],
    );
    let publisher = step_publisher(&scope).await;
    // Bursts of 3: a0 0-2, a1 0-2, ..., a0 3-5, a1 3-5, ...: step 5 of a0
    // hangs while steps 3 and 4 of a1.., delivered after it, settle.
    let (ids, events) = steps(10, 10, 3);
    publisher.publish(events).await.expect("publishes");

    // Every aggregate's step 5 hangs (its later steps wait behind it) while
    // steps of other aggregates, delivered after it, finish: settled above an
    // unsettled delivery, which must not be acked. 10 hung + 40 waiting fit
    // in the prefetch of 60.
    let mut read = Vec::new();
    read_until(&out, &mut read, |r| {
        r.iter().filter(|(k, _, _)| k == "hang").count() >= 10
    });
    kill_and_drain(&mut child, &out, &mut read);
    let finished: BTreeSet<(Uuid, u32)> = done(&read).into_iter().collect();
    assert!(finished.len() < 100);

    // Step 3 of each aggregate failed permanently: dead-lettered (the copy
    // confirmed before the original was settled).
    let dlq = publisher.dlq("ledger");
    common::eventually("10 dead letters", WAIT, || async {
        dlq.count().await.is_ok_and(|n| n >= 10)
    })
    .await;
    let dead: BTreeSet<(Uuid, u32)> = dlq
        .list(100)
        .await
        .expect("lists")
        .iter()
        .map(|m| {
            let body: serde_json::Value = serde_json::from_str(&m.body).expect("JSON");
            (
                body["aggregate_id"]
                    .as_str()
                    .expect("id")
                    .parse()
                    .expect("uuid"),
                u32::try_from(body["seq"].as_u64().expect("seq")).expect("small"),
            )
        })
        .collect();
    assert_eq!(dead.len(), 10);

    // A healthy member gets every delivery the crashed one had not settled.
    let recorder = Arc::new(Recorder::default());
    let recorded = recorder.clone();
    let second = scope
        .builder()
        .configure(|c| {
            c.consumer_group = "ledger".into();
            c.prefetch_count = 30;
        })
        .handler::<Step, _, _>("record", move |event| {
            let recorder = recorded.clone();
            async move {
                recorder.handle(&event).await;
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    second.start_consuming().await.expect("consumes");
    let everything: BTreeSet<(Uuid, u32)> = ids
        .iter()
        .flat_map(|id| (0..10).map(move |seq| (*id, seq)))
        .collect();
    common::eventually("nothing lost", WAIT, || async {
        let mut covered = finished.clone();
        covered.extend(dead.iter().copied());
        covered.extend(recorder.seen());
        covered == everything
    })
    .await;
    let redelivered: BTreeSet<(Uuid, u32)> = recorder.seen().into_iter().collect();
    // Nothing acked early: every step the crashed member did not finish (and
    // did not dead-letter) came again, including each hung step 5.
    let unfinished: BTreeSet<_> = everything
        .difference(&finished)
        .filter(|e| !dead.contains(e))
        .copied()
        .collect();
    assert!(
        unfinished.is_subset(&redelivered),
        "missing: {:?}",
        unfinished.difference(&redelivered).collect::<Vec<_>>()
    );
    for id in &ids {
        assert!(
            redelivered.contains(&(*id, 5)),
            "stuck step 5 of {id} was acked"
        );
    }
    assert_eq!(inversions(&recorder.seen()), 0);
    let per_aggregate: BTreeMap<Uuid, usize> =
        recorder
            .seen()
            .iter()
            .fold(BTreeMap::new(), |mut m, (id, _)| {
                *m.entry(*id).or_default() += 1;
                m
            });
    assert_eq!(per_aggregate.len(), 10);
    second
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    publisher
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

/// After the consumer's connection is closed under a running handler, the
/// deliveries that were waiting their turn on the lost channel are not run:
/// the broker delivers them again, and their copies run in order. They still
/// ran after the interrupted handler, beside and after their own copies, so
/// the aggregate's later steps ran twice and out of order. (The interrupted
/// handler itself may overlap its own redelivered copy: a handler stuck past
/// the broker's consumer timeout must not hold up its copy, or the group.)
#[tokio::test]
async fn after_a_reconnect_queued_deliveries_of_the_lost_channel_do_not_run() {
    let scope = Scope::new("order-reconnect");
    let aggregate = Uuid::new_v4();
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let release = Arc::new(tokio::sync::Notify::new());
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (s, r, f) = (seen.clone(), release.clone(), first.clone());
    let bus = scope
        .builder()
        .handler::<Step, _, _>("apply", move |e: Arc<Envelope<Step>>| {
            let (s, r, f) = (s.clone(), r.clone(), f.clone());
            async move {
                s.lock().expect("not poisoned").push(e.seq);
                // The first run of the first step holds until its connection is gone.
                if e.seq == 0 && f.swap(false, Ordering::SeqCst) {
                    r.notified().await;
                }
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let steps: Vec<_> = (0..3)
        .map(|seq| Envelope::new(aggregate, Step { seq }).aggregate_version(u64::from(seq) + 1))
        .collect();
    bus.publish(steps).await.expect("published");
    common::eventually("the first step runs", WAIT, || {
        let started = !seen.lock().expect("not poisoned").is_empty();
        async move { started }
    })
    .await;
    let consumer = format!("eventbus consumer ({})", scope.exchange);
    let closed = tokio::task::spawn_blocking(move || common::close_connections_named(&consumer))
        .await
        .expect("rabbitmqctl thread");
    assert_eq!(closed, 1);
    common::eventually("the redelivered steps are handled", WAIT, || {
        let again = seen.lock().expect("not poisoned").len() >= 4;
        let queue = scope.queue("default");
        async move { again && common::message_count(&queue).await == 0 }
    })
    .await;
    // The interrupted run ends now; its ack belongs to the lost channel.
    release.notify_one();
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(
        seen,
        [0, 0, 1, 2],
        "the lost channel's queued steps did not run"
    );
}
