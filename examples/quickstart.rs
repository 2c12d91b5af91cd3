//! The seed's order flow: two event types, a statistics projection, an audit
//! logger on every event.
//!
//! ```text
//! cargo run --example quickstart                                   # in memory
//! EVENTBUS_URL=amqp://guest:guest@localhost:5672/ cargo run --example quickstart
//! ```
//!
//! It publishes three orders and ships two, waits until its own handlers have
//! seen all five events (on RabbitMQ they make the round trip through the
//! broker), prints the statistics and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::{AnyEnvelope, Bus, DomainEvent, Envelope, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {
    customer_id: String,
    total_amount: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {
    tracking_number: String,
}

/// Order statistics, kept up to date by the events.
#[derive(Default)]
struct Counts {
    placed: AtomicU64,
    shipped: AtomicU64,
    revenue: Mutex<f64>,
}

/// The projection; the application supplies the instance so it can read the counts.
#[derive(Default)]
struct OrderStatistics {
    counts: Arc<Counts>,
}

#[projection]
impl OrderStatistics {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        self.counts.placed.fetch_add(1, Ordering::Relaxed);
        *self
            .counts
            .revenue
            .lock()
            .map_err(|e| HandlerError::new(e.to_string()))? += event.total_amount;
        println!(
            "[stats] order {} placed by {} for ${:.2}",
            event.meta().aggregate_id(),
            event.customer_id,
            event.total_amount
        );
        projected();
        Ok(())
    }

    #[handles(OrderShipped)]
    async fn on_shipped(&self, event: &Envelope<OrderShipped>) -> Result<(), HandlerError> {
        self.counts.shipped.fetch_add(1, Ordering::Relaxed);
        println!(
            "[stats] order {} shipped, tracking {}",
            event.meta().aggregate_id(),
            event.tracking_number
        );
        projected();
        Ok(())
    }
}

/// Every event, whatever its type: an audit log, in a consumer group of its
/// own (on RabbitMQ: its own queue, bound to `#`).
static AUDITED: AtomicU64 = AtomicU64::new(0);
static AUDIT_DONE: Notify = Notify::const_new();
/// Events the projection has handled (its group consumes on its own: on
/// Kafka, for one, it may lag the audit group).
static PROJECTED: AtomicU64 = AtomicU64::new(0);
static PROJECTION_DONE: Notify = Notify::const_new();

fn projected() {
    if PROJECTED.fetch_add(1, Ordering::AcqRel) + 1 == EVENTS {
        PROJECTION_DONE.notify_one();
    }
}
const EVENTS: u64 = 5;

#[handles(all, group = "audit")]
async fn audit_log(event: &AnyEnvelope) -> Result<(), HandlerError> {
    let meta = event.meta();
    println!(
        "[audit] {} v{} of {} {} at {}",
        meta.event_type(),
        meta.aggregate_version(),
        meta.aggregate_type(),
        meta.aggregate_id(),
        meta.occurred_at().format("%H:%M:%S%.3f")
    );
    if AUDITED.fetch_add(1, Ordering::AcqRel) + 1 == EVENTS {
        AUDIT_DONE.notify_one();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,eventbus=info")),
        )
        .init();
    let mut builder = Bus::from_env();
    if std::env::var_os("EVENTBUS_URL").is_none() {
        println!("EVENTBUS_URL is not set: using the in-memory transport (memory://)");
        builder = builder.memory();
    }
    let counts = Arc::new(Counts::default());
    let bus = builder
        .projection(OrderStatistics {
            counts: counts.clone(),
        })
        .build()
        .await?;
    println!(
        "transport: {}, exchange: {}",
        bus.transport_name(),
        bus.config().exchange_name
    );
    bus.start_consuming().await?;

    let orders: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let placed: Vec<Envelope<OrderPlaced>> = orders
        .iter()
        .zip(["CUST-001", "CUST-002", "CUST-003"])
        .zip([99.99, 149.50, 20.00])
        .map(|((id, customer), total)| {
            Envelope::new(
                *id,
                OrderPlaced {
                    customer_id: customer.to_owned(),
                    total_amount: total,
                },
            )
            .with_actor("quickstart")
        })
        .collect();
    let shipped: Vec<Envelope<OrderShipped>> = placed
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, cause)| {
            Envelope::new(
                cause.meta().aggregate_id(),
                OrderShipped {
                    tracking_number: format!("TRACK-{i:03}"),
                },
            )
            .aggregate_version(2)
            .caused_by(cause)
        })
        .collect();
    bus.publish(placed).await?;
    bus.publish(shipped).await?;

    // On RabbitMQ the handlers run when the events come back from the broker.
    tokio::time::timeout(Duration::from_secs(30), async {
        while AUDITED.load(Ordering::Acquire) < EVENTS || PROJECTED.load(Ordering::Acquire) < EVENTS
        {
            tokio::select! {
                () = AUDIT_DONE.notified() => {}
                () = PROJECTION_DONE.notified() => {}
            }
        }
    })
    .await
    .map_err(|_| {
        format!(
            "only {} (audit) and {} (projection) of {EVENTS} events came back within 30 s",
            AUDITED.load(Ordering::Acquire),
            PROJECTED.load(Ordering::Acquire)
        )
    })?;

    bus.shutdown(Duration::from_secs(10)).await?;
    println!(
        "orders placed: {}, shipped: {}, revenue: ${:.2}",
        counts.placed.load(Ordering::Relaxed),
        counts.shipped.load(Ordering::Relaxed),
        *counts.revenue.lock().map_err(|e| e.to_string())?
    );
    let s = bus.stats();
    println!(
        "bus stats: published {}, handlers invoked {}, handler errors {}",
        s.events_published, s.handlers_invoked, s.handler_errors
    );
    Ok(())
}
