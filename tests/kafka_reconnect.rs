//! The Kafka broker restarted mid-run: a Tansu of the test's own whose topics,
//! records and committed offsets live in an S3 bucket (moto's server), stopped
//! by its pid while a bus consumes and publishes at a steady rate, then
//! started again on the same port and storage. A publish during the outage
//! either succeeds after the restart or fails with a typed error by its
//! `confirm_timeout`; every acknowledged event is handled (duplicates allowed,
//! nothing lost), offsets keep advancing, and health goes down, then up.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{S3Store, Tansu, builder, committed};
use common::{OrderPlaced, eventually, placed};
use eventbus::{Envelope, Error, HandlerError};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// The steady publisher's `confirm_timeout` (the builder's).
const CONFIRM: Duration = Duration::from_secs(20);
/// The short publisher's, shorter than the outage.
const SHORT_CONFIRM: Duration = Duration::from_secs(2);
/// Time a failing call may take past its bound (scheduling on a busy machine).
const SLACK: Duration = Duration::from_secs(3);

/// What the steady publisher saw.
#[derive(Debug, Default)]
struct Published {
    confirmed: BTreeSet<Uuid>,
    failed: Vec<String>,
    slowest: Duration,
    batches: usize,
    /// When each confirmed batch was started.
    confirmed_at: Vec<Instant>,
}

fn total(offsets: &[(i32, i64)]) -> i64 {
    offsets.iter().map(|(_, o)| (*o).max(0)).sum()
}

/// A bus on `tansu` with short socket timeouts whose default group records
/// the id of each event it handles.
async fn recording_bus(tansu: &Tansu, prefix: &str) -> (eventbus::Bus, Arc<Mutex<Vec<Uuid>>>) {
    recording_bus_with(tansu, prefix, |c| {
        c.socket_timeout = Duration::from_secs(2);
        c.socket_connect_timeout = Duration::from_secs(1);
    })
    .await
}

/// A bus on `tansu`, set up by `configure`, whose default group records the
/// id of each event it handles.
async fn recording_bus_with(
    tansu: &Tansu,
    prefix: &str,
    configure: impl FnOnce(&mut eventbus::Config),
) -> (eventbus::Bus, Arc<Mutex<Vec<Uuid>>>) {
    let handled: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let h = handled.clone();
    let bus = builder(tansu, prefix)
        .configure(configure)
        .handler::<OrderPlaced, _, _>("record", move |e: Arc<Envelope<OrderPlaced>>| {
            h.lock().expect("not poisoned").push(e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    (bus, handled)
}

/// Publishes `count` events (customers `{tag}0`, `{tag}1`, ...) and waits
/// until each of them is handled.
async fn publish_and_handle(
    bus: &eventbus::Bus,
    handled: &Arc<Mutex<Vec<Uuid>>>,
    tag: &str,
    count: usize,
) {
    let events: Vec<_> = (0..count).map(|i| placed(&format!("{tag}{i}"))).collect();
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    bus.publish(events).await.expect("published");
    eventually("every event handled", WAIT, || {
        let seen: BTreeSet<Uuid> = handled
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .collect();
        let all = ids.is_subset(&seen);
        async move { all }
    })
    .await;
}

#[tokio::test]
async fn a_restarted_broker_loses_no_acknowledged_event() {
    let store = S3Store::start();
    let mut tansu = Tansu::start_persistent(&store);
    let prefix = format!("t-restart-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let topic = format!("{prefix}.stream");
    let (bus, handled) = recording_bus(&tansu, &prefix).await;
    assert_eq!(bus.config().confirm_timeout, CONFIRM);
    // A second publisher whose confirm_timeout ends within the outage.
    let short = builder(&tansu, &prefix)
        .configure(|c| {
            c.confirm_timeout = SHORT_CONFIRM;
            c.socket_timeout = Duration::from_secs(1);
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let handled_ids = || -> BTreeSet<Uuid> {
        handled
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .collect()
    };

    // Batches of 5 every 100 ms until told to stop.
    let published: Arc<Mutex<Published>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, published, stop) = (bus.clone(), published.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for batch in 0.. {
                tick.tick().await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let events: Vec<_> = (0..5).map(|i| placed(&format!("{batch}-{i}"))).collect();
                let ids: Vec<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
                let started = Instant::now();
                let result = bus.publish(events).await;
                let took = started.elapsed();
                let mut p = published.lock().expect("not poisoned");
                p.batches += 1;
                p.slowest = p.slowest.max(took);
                match result {
                    Ok(report) => {
                        assert_eq!(report.published, 5);
                        p.confirmed.extend(ids);
                        p.confirmed_at.push(started);
                    }
                    // Allowed during the outage, typed and by confirm_timeout.
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                Error::ConfirmTimeout { .. }
                                    | Error::Broker { .. }
                                    | Error::NotConnected(_)
                            ),
                            "untyped failure: {e:?}"
                        );
                        p.failed.push(e.to_string());
                    }
                }
            }
        })
    };

    eventually("events flow before the outage", WAIT, || {
        let n = handled.lock().expect("not poisoned").len();
        let c = total(&committed(&tansu, "default", &topic));
        async move { n >= 50 && c > 0 }
    })
    .await;
    assert!(bus.health_check().await.healthy);
    let committed_before = total(&committed(&tansu, "default", &topic));
    let batches_before = published.lock().expect("not poisoned").batches;

    tansu.stop();
    let stopped = Instant::now();
    eventually("the outage shows in health", WAIT, || {
        let bus = bus.clone();
        async move {
            let h = bus.health_check().await;
            // The group's own consumer says so too, not only the probe.
            !h.healthy && h.error.is_some() && h.consumers.get("default") == Some(&false)
        }
    })
    .await;
    // A publish that cannot be confirmed in time says so, by its timeout.
    let lost = placed("during-the-outage");
    let started = Instant::now();
    let refused = short.publish([lost.clone()]).await;
    let took = started.elapsed();
    assert!(
        matches!(
            refused,
            Err(Error::ConfirmTimeout { .. } | Error::Broker { .. } | Error::NotConnected(_))
        ),
        "a publish while the broker is down: {refused:?}"
    );
    assert!(took <= SHORT_CONFIRM + SLACK, "took {took:?}");
    eprintln!("while down: {took:?}: {refused:?}");

    let restarting = Instant::now();
    tansu.start_again();
    eventually("healthy again", WAIT, || {
        let bus = bus.clone();
        async move {
            let h = bus.health_check().await;
            h.healthy && h.consumers.get("default") == Some(&true)
        }
    })
    .await;
    // The publisher that timed out publishes again: the broker fences its old
    // producer id, and the bus goes on through a new producer (a try that
    // meets the fence late fails with a typed error, by its timeout).
    let again = placed("after-the-outage");
    let deadline = Instant::now() + WAIT;
    let mut tries = Vec::new();
    while let Err(e) = short.publish([again.clone()]).await {
        assert!(
            matches!(e, Error::ConfirmTimeout { .. } | Error::Broker { .. }),
            "untyped failure: {e:?}"
        );
        tries.push(e.to_string());
        assert!(
            Instant::now() < deadline,
            "the publisher that timed out never publishes again: {tries:?}"
        );
    }
    eprintln!(
        "published again after {} failed tries: {tries:?}",
        tries.len()
    );
    let committed_again = total(&committed(&tansu, "default", &topic));
    assert!(
        committed_again >= committed_before,
        "the restarted broker kept the group's offsets: {committed_again} < {committed_before}"
    );
    eventually("publishing resumes", WAIT, || {
        let p = published.lock().expect("not poisoned");
        let ok = p.batches >= batches_before + 30;
        async move { ok }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    publisher.await.expect("the publisher ran");
    let published = std::mem::take(&mut *published.lock().expect("not poisoned"));
    assert!(
        published.slowest <= CONFIRM + SLACK,
        "a publish took {:?}",
        published.slowest
    );
    assert!(
        published
            .confirmed_at
            .iter()
            .any(|t| (stopped..restarting).contains(t)),
        "no publish made while the broker was down was confirmed after the restart"
    );
    let mut confirmed = published.confirmed.clone();
    confirmed.insert(again.meta().event_id());
    eventually("every acknowledged event is handled", WAIT, || {
        let missing = confirmed.difference(&handled_ids()).count();
        async move { missing == 0 }
    })
    .await;
    // Every acknowledged record is committed by the group (counted by the
    // publisher: Tansu 0.6 answers a partition's end offset with its last
    // batch's first offset + 1, so its watermarks undercount).
    let acknowledged = i64::try_from(confirmed.len()).expect("small");
    eventually(
        "offsets advance past every acknowledged record",
        WAIT,
        || {
            let c = total(&committed(&tansu, "default", &topic));
            async move { c >= acknowledged }
        },
    )
    .await;
    assert!(bus.health_check().await.healthy);

    let all = handled.lock().expect("not poisoned").clone();
    let unique: BTreeSet<Uuid> = all.iter().copied().collect();
    eprintln!(
        "batches {}, acknowledged {}, failed {} ({:?}), handled {} ({} duplicates), slowest publish {:?}",
        published.batches,
        published.confirmed.len(),
        published.failed.len(),
        published.failed.first(),
        all.len(),
        all.len() - unique.len(),
        published.slowest
    );
    assert!(published.confirmed.len() >= 100);
    short
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

/// A group with nothing to read: the outage shows in the group's own state
/// (not only in the metadata probe), and once the broker answers again the
/// group is receiving again, although no record arrives to show it.
#[tokio::test]
async fn an_idle_group_reports_the_outage_and_the_recovery() {
    let store = S3Store::start();
    let mut tansu = Tansu::start_persistent(&store);
    let prefix = format!("t-idle-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let (bus, handled) = recording_bus(&tansu, &prefix).await;
    bus.start_consuming().await.expect("consumes");
    let group_state = |bus: &eventbus::Bus| {
        let bus = bus.clone();
        async move {
            let h = bus.health_check().await;
            (h.healthy, h.consumers.get("default").copied())
        }
    };
    eventually("the idle group is receiving", WAIT, || {
        let state = group_state(&bus);
        async move { state.await == (true, Some(true)) }
    })
    .await;

    tansu.stop();
    eventually("the outage shows in the idle group's state", WAIT, || {
        let state = group_state(&bus);
        async move { state.await == (false, Some(false)) }
    })
    .await;

    tansu.start_again();
    eventually("the idle group is receiving again", WAIT, || {
        let state = group_state(&bus);
        async move { state.await == (true, Some(true)) }
    })
    .await;
    // And it does receive.
    let after = placed("after-the-outage");
    bus.publish([after.clone()]).await.expect("published");
    eventually(
        "the event published after the outage is handled",
        WAIT,
        || {
            let seen = handled
                .lock()
                .expect("not poisoned")
                .contains(&after.meta().event_id());
            async move { seen }
        },
    )
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

/// `shutdown(timeout)` returns by its timeout when the broker stops
/// answering, and the runtime then stops at once: each group's last commit
/// and leave waited up to twice `socket_timeout` (20 s here), one group after
/// the other, past it, and librdkafka's synchronous commit, with no timeout
/// of its own, held the runtime's blocking pool (which a dropped runtime
/// waits for) until a broker answered.
#[test]
fn shutdown_returns_by_its_timeout_when_the_broker_stops_answering() {
    let tansu = Tansu::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let timeout = Duration::from_secs(3);
    // The slack covers scheduling only, not a wait for the broker.
    let slack = Duration::from_secs(1);
    let returned = rt.block_on(async {
        let prefix = format!("t-frozen-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let (bus, handled) = recording_bus_with(&tansu, &prefix, |c| {
            c.socket_timeout = Duration::from_secs(10);
        })
        .await;
        bus.start_consuming().await.expect("consumes");
        publish_and_handle(&bus, &handled, "c", 20).await;
        tansu.freeze();
        tokio::time::timeout(timeout + slack, bus.shutdown(timeout)).await
    });
    // Dropped on a thread of its own: a runtime stuck waiting for a blocking
    // call fails the test instead of hanging it.
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(rt);
        let _ = dropped_tx.send(());
    });
    let stopped = dropped.recv_timeout(Duration::from_secs(5));
    tansu.thaw();
    assert!(
        returned.is_ok(),
        "shutdown({timeout:?}) still running after {:?}",
        timeout + slack
    );
    assert!(
        stopped.is_ok(),
        "the runtime did not stop within 5 s of shutdown: a blocking call waits for the frozen broker"
    );
}

/// A broker that stops answering for longer than the session timeout while
/// handled records are not yet committed: librdkafka revokes the lost
/// partitions from the task that polls the consumer, and the revoke's commit
/// (synchronous, without a timeout, with no coordinator to answer it) held
/// that runtime worker until the broker came back. With one worker, nothing
/// else ran. Once the broker answers again, new events are handled.
#[test]
fn a_lost_assignment_does_not_block_the_runtime() {
    let tansu = Tansu::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let session = Duration::from_secs(6);
    let (bus, handled) = rt.block_on(async {
        let prefix = format!("t-lost-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let (bus, handled) = recording_bus_with(&tansu, &prefix, |c| {
            c.socket_timeout = Duration::from_secs(2);
            c.session_timeout_ms = session.as_millis() as u32;
            c.heartbeat_interval_ms = 1000;
            // Handled records stay uncommitted when the broker freezes.
            c.commit_interval_ms = 600_000;
        })
        .await;
        bus.start_consuming().await.expect("consumes");
        publish_and_handle(&bus, &handled, "c", 5).await;
        (bus, handled)
    });
    let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = ticks.clone();
    rt.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.fetch_add(1, Ordering::SeqCst);
        }
    });
    tansu.freeze();
    // The outage itself: past the session timeout, so the assignment is lost.
    std::thread::sleep(session + Duration::from_secs(3));
    let before = ticks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(2));
    let after = ticks.load(Ordering::SeqCst);
    tansu.thaw();
    assert!(
        after > before,
        "the runtime's only worker stopped running tasks during the outage ({before} -> {after} ticks)"
    );
    rt.block_on(async {
        publish_and_handle(&bus, &handled, "d", 5).await;
        bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    });
}
