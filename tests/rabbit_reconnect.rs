//! Reconnection against the real broker: connections cut by the broker, and a
//! broker restart. Its own test binary, because both disturb every connection
//! on the broker; the tests in it run one at a time.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OrderPlaced, Scope, placed};
use eventbus::{Bus, Envelope, HandlerError};
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use uuid::Uuid;

/// One test at a time in this binary.
static SERIAL: AsyncMutex<()> = AsyncMutex::const_new(());

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

type Handled = Arc<Mutex<BTreeSet<Uuid>>>;

async fn consuming_bus(scope: &Scope, handled: &Handled) -> Bus {
    let h = handled.clone();
    let bus = scope
        .builder()
        .configure(|c| c.prefetch_count = 50)
        .handler::<OrderPlaced, _, _>("record", move |e: Arc<Envelope<OrderPlaced>>| {
            let h = h.clone();
            async move {
                h.lock().expect("not poisoned").insert(e.meta().event_id());
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus
}

/// Publishes `batches` batches of 10 from a task, reporting each confirmed batch.
fn publish_in_background(
    bus: &Bus,
    batches: usize,
) -> (
    mpsc::UnboundedReceiver<usize>,
    tokio::task::JoinHandle<BTreeSet<Uuid>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bus = bus.clone();
    let task = tokio::spawn(async move {
        let mut confirmed = BTreeSet::new();
        for batch in 0..batches {
            let events: Vec<_> = (0..10).map(|i| placed(&format!("{batch}-{i}"))).collect();
            let ids: Vec<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
            match bus.publish(events).await {
                Ok(report) => {
                    assert_eq!(report.published, 10);
                    confirmed.extend(ids);
                }
                // A failed publish is allowed during an outage; it must say so.
                Err(e) => eprintln!("batch {batch} not confirmed: {e}"),
            }
            let _ = tx.send(batch);
        }
        confirmed
    });
    (rx, task)
}

async fn assert_all_handled(confirmed: &BTreeSet<Uuid>, handled: &Handled) {
    common::eventually(
        "every confirmed event handled",
        Duration::from_secs(60),
        || async { handled.lock().expect("not poisoned").is_superset(confirmed) },
    )
    .await;
}

#[tokio::test]
async fn confirmed_events_survive_the_broker_closing_every_connection() {
    let _serial = SERIAL.lock().await;
    let scope = Scope::new("cut");
    let handled = Handled::default();
    let bus = consuming_bus(&scope, &handled).await;
    let (mut progress, task) = publish_in_background(&bus, 30);
    // Cut once some batches went out, while the rest are still to come.
    while progress.recv().await.is_some_and(|batch| batch < 5) {}
    rabbitmqctl(&["close_all_connections", "eventbus reconnect test"]);
    let confirmed = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("publishing finishes: no publish may hang")
        .expect("publisher task");
    assert!(
        confirmed.len() >= 250,
        "most batches confirmed: {}",
        confirmed.len()
    );
    assert_all_handled(&confirmed, &handled).await;
    let stats = bus.stats();
    assert!(
        stats.reconnections >= 2,
        "publisher and consumer reconnected: {stats:?}"
    );
    let health = bus.health_check().await;
    assert!(health.healthy && health.consuming, "{health:?}");
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn confirmed_events_survive_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    let scope = Scope::new("restart");
    let handled = Handled::default();
    let bus = consuming_bus(&scope, &handled).await;
    let (mut progress, task) = publish_in_background(&bus, 20);
    while progress.recv().await.is_some_and(|batch| batch < 3) {}
    rabbitmqctl(&["stop_app"]);
    common::eventually(
        "health to report the outage",
        Duration::from_secs(20),
        || async {
            let health = bus.health_check().await;
            !health.healthy && !health.connected && health.error.is_some()
        },
    )
    .await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    let confirmed = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("publishing finishes: no publish may hang")
        .expect("publisher task");
    assert!(!confirmed.is_empty());
    assert_all_handled(&confirmed, &handled).await;
    assert!(bus.stats().reconnections >= 2);
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}
