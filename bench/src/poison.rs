//! `bench poison`: fault case 7's latency figure (RELIABILITY.md). Publishes
//! `count` healthy events at a fixed rate and measures their
//! publish-to-handler latency twice in one run: once alone, once with
//! `poison` events spread among them, each failing every attempt (retried
//! `max_retries` times, then dead-lettered). Healthy latency should not move.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventbus::{Bus, Envelope, HandlerError};
use tokio::time::Instant;

use crate::{Counter, Figure, OrderPlaced, PREFETCH, WINDOW, order, percentiles, raw};

/// What the run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) count: usize,
    pub(crate) poison: usize,
    pub(crate) rate: u64,
    pub(crate) max_retries: u32,
    pub(crate) base_delay: Duration,
}

/// One phase's outcome.
struct Phase {
    healthy: Figure,
    attempts: usize,
    dead_lettered: u32,
    took: Duration,
}

const POISON: &str = "POISON-";

/// Runs both phases and prints them; false if a poison event was not
/// dead-lettered exactly once after `max_retries + 1` attempts.
pub(crate) async fn run(url: &str, plan: Plan) -> bool {
    let clean = phase(url, plan, 0).await;
    let poisoned = phase(url, plan, plan.poison).await;
    let line = |name: &str, p: &Phase| {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        println!(
            "{name:<22} healthy p50 {} ms  p99 {} ms  max {} ms  ({:.1} s; poison attempts {}, dead-lettered {})",
            ms(p.healthy.p50_ms),
            ms(p.healthy.p99_ms),
            ms(p.healthy.max_ms),
            p.took.as_secs_f64(),
            p.attempts,
            p.dead_lettered,
        );
    };
    println!(
        "poison: {} healthy events at {}/s, prefetch {PREFETCH}, max_retries {}, retry base delay {:?}",
        plan.count, plan.rate, plan.max_retries, plan.base_delay
    );
    line("without poison", &clean);
    line(&format!("with {} poison", plan.poison), &poisoned);
    let expected_attempts = plan.poison * (plan.max_retries as usize + 1);
    let ok = poisoned.attempts == expected_attempts
        && poisoned.dead_lettered as usize == plan.poison
        && clean.dead_lettered == 0;
    if !ok {
        eprintln!(
            "expected {expected_attempts} poison attempts and {} dead-lettered",
            plan.poison
        );
    }
    ok
}

async fn phase(url: &str, plan: Plan, poison: usize) -> Phase {
    let exchange = format!(
        "bench.poison.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let counter = Arc::new(Counter::default());
    let attempts = Arc::new(AtomicUsize::new(0));
    let (c, a) = (counter.clone(), attempts.clone());
    let target = plan.count;
    let x = exchange.clone();
    let bus = Bus::builder()
        .url(url)
        .without_discovery()
        .configure(move |c| {
            c.exchange_name = x;
            c.prefetch_count = PREFETCH;
            c.publish_confirm_window = WINDOW;
            c.max_retries = plan.max_retries;
            c.retry_base_delay = plan.base_delay;
            c.retry_jitter = 0.1;
        })
        .handler::<OrderPlaced, _, _>("count", move |e: Arc<Envelope<OrderPlaced>>| {
            let result = if e.event().customer_id.starts_with(POISON) {
                a.fetch_add(1, Ordering::Relaxed);
                Err(HandlerError::new("poison"))
            } else {
                c.hit(e.meta().occurred_at(), target);
                Ok(())
            };
            std::future::ready(result)
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let started = Instant::now();
    let every = plan
        .count
        .checked_div(poison)
        .map_or(usize::MAX, |e| e.max(1));
    let mut poisoned = 0;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / plan.rate));
    for i in 0..plan.count {
        tick.tick().await;
        bus.publish_background([order(i)]);
        if poisoned < poison && i % every == every / 2 {
            let bad = Envelope::new(
                uuid::Uuid::new_v4(),
                OrderPlaced {
                    customer_id: format!("{POISON}{i}"),
                    total_amount: 0.0,
                    currency: "EUR".into(),
                    note: String::new(),
                },
            );
            bus.publish_background([bad]);
            poisoned += 1;
        }
    }
    counter.wait().await;
    let dlq = bus.dlq("default");
    let deadline = Instant::now() + Duration::from_secs(120);
    let dead_lettered = loop {
        let n = dlq.count().await.unwrap_or(0);
        if n as usize >= poison || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    bus.shutdown(Duration::from_secs(10)).await.expect("closes");
    raw::cleanup_blocking(url, &exchange);
    Phase {
        healthy: percentiles(counter.latencies()),
        attempts: attempts.load(Ordering::Relaxed),
        dead_lettered,
        took,
    }
}
