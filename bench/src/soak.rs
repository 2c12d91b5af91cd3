//! `bench soak`: the chaos soak of RELIABILITY.md. Publishes and consumes
//! `count` events at a fixed rate through a fault proxy in front of a
//! RabbitMQ node of its own, cutting every connection and restarting the
//! node on a schedule; prints confirmed, delivered, dead-lettered, lost
//! (must be 0) and duplicates. Never touches the shared broker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use eventbus::{Bus, DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/faults/ledger.rs"]
mod ledger;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/faults/node.rs"]
mod node;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/faults/proxy.rs"]
mod proxy;

use ledger::Ledger;

/// The soak's event.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Soak")]
struct Pulse {
    seq: u64,
}

/// What the soak does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) count: u64,
    pub(crate) rate: u64,
    pub(crate) cut_every: Duration,
    pub(crate) restart_every: Duration,
}

/// Runs the soak; returns false if anything confirmed was lost.
pub(crate) async fn run(plan: Plan) -> bool {
    let node = Arc::new(std::sync::Mutex::new(
        tokio::task::spawn_blocking(|| node::Node::start("soak"))
            .await
            .expect("node thread"),
    ));
    let addr = node.lock().expect("not poisoned").addr();
    let proxy = Arc::new(proxy::Proxy::start(addr).await);
    let ledger = Ledger::default();
    let l = ledger.clone();
    let exchange = format!("soak.{}", &Uuid::new_v4().simple().to_string()[..8]);
    let bus = Bus::builder()
        .url(&proxy.url())
        .without_discovery()
        .event::<Pulse>()
        .configure(move |c| {
            c.exchange_name = exchange;
            c.reconnect_delay = Duration::from_millis(200);
            c.max_reconnect_delay = Duration::from_secs(2);
            c.confirm_timeout = Duration::from_secs(5);
            c.connect_timeout = Duration::from_secs(30);
            c.prefetch_count = 200;
        })
        .handler::<Pulse, _, _>("record", move |e: Arc<Envelope<Pulse>>| {
            l.delivered(e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("the soak's bus connects");
    bus.start_consuming().await.expect("consumes");

    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The chaos schedule: cuts and node restarts until publishing is done.
    let chaos = {
        let (proxy, node, done) = (proxy.clone(), node.clone(), done.clone());
        tokio::spawn(async move {
            let (mut cuts, mut restarts) = (0u32, 0u32);
            let mut next_cut = Instant::now() + plan.cut_every;
            let mut next_restart = Instant::now() + plan.restart_every;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = Instant::now();
                if now >= next_cut {
                    proxy.cut_all();
                    cuts += 1;
                    next_cut = now + plan.cut_every;
                }
                if now >= next_restart {
                    let node = node.clone();
                    tokio::task::spawn_blocking(move || {
                        let node = node.lock().expect("not poisoned");
                        node.ctl(&["stop_app"]);
                        node.ctl(&["start_app"]);
                    })
                    .await
                    .expect("restart thread");
                    restarts += 1;
                    next_restart = Instant::now() + plan.restart_every;
                }
            }
            (cuts, restarts)
        })
    };

    // Fixed rate: a chunk every 10 ms.
    let per_tick = (plan.rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    let mut failed_calls = 0u64;
    let mut in_flight = tokio::task::JoinSet::new();
    while seq < plan.count {
        tick.tick().await;
        let n = per_tick.min(plan.count - seq);
        let events: Vec<Envelope<Pulse>> = (seq..seq + n)
            .map(|seq| Envelope::new(Uuid::new_v4(), Pulse { seq }))
            .collect();
        seq += n;
        let (bus, ledger) = (bus.clone(), ledger.clone());
        // Calls overlap so an outage does not stop the clock.
        in_flight.spawn(async move {
            let ids: Vec<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
            match bus.publish(events).await {
                Ok(_) => {
                    ledger.confirmed(ids);
                    true
                }
                Err(_) => {
                    ledger.unsure(ids);
                    false
                }
            }
        });
        while in_flight.len() > 200 {
            if let Some(Ok(false)) = in_flight.join_next().await {
                failed_calls += 1;
            }
        }
    }
    while let Some(ok) = in_flight.join_next().await {
        if let Ok(false) = ok {
            failed_calls += 1;
        }
    }
    let publishing = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (cuts, restarts) = chaos.await.expect("chaos task");
    let deadline = Instant::now() + Duration::from_secs(120);
    while ledger.missing() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead_lettered: BTreeSet<Uuid> = bus
        .dlq("default")
        .list(10_000)
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.message_id.as_deref()?.parse().ok())
        .collect();
    let tally = ledger.tally(&dead_lettered);
    let stats = bus.stats();
    let _ = bus.shutdown(Duration::from_secs(10)).await;
    println!(
        "soak: {} events at {}/s in {:.1} s, {cuts} connection cuts, {restarts} broker restarts, {} reconnections",
        plan.count,
        plan.rate,
        publishing.as_secs_f64(),
        stats.reconnections
    );
    println!(
        "confirmed {}  failed (typed errors) {} in {failed_calls} calls  delivered {}  dead-lettered {}  lost {}  duplicates {}",
        tally.confirmed,
        tally.unsure,
        tally.delivered,
        tally.dead_lettered,
        tally.lost.len(),
        tally.duplicates
    );
    tally.lost.is_empty() && tally.strangers == 0
}
