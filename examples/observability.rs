//! Watching a service: the `/metrics` and `/health/*` listener, and the spans
//! eventbus records. Publishes a few events (one of which a handler rejects),
//! then reads its own endpoints and prints what a Prometheus scrape would see.
//!
//! ```text
//! cargo run --example observability                      # in memory
//! EVENTBUS_URL=amqp://guest:guest@localhost:5672/ cargo run --example observability
//! ```
//! A service gets the same listener from `run()` with
//! `EVENTBUS_METRICS_ADDR=0.0.0.0:9090`; to export its spans over OTLP, see
//! `src/bin/traced.rs` (`eventbus::telemetry::init()`, feature `opentelemetry`).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use support::Counter;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Invoice")]
struct InvoiceIssued {
    amount: f64,
}

static SEEN: Counter = Counter::new();

/// A plain HTTP/1.0 GET, enough to read our own endpoint.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = support::builder()
        .configure(|c| {
            support::own_names(c, "examples.observability");
            c.max_retries = 0;
        })
        .handler::<InvoiceIssued, _, _>(
            "book_invoice",
            |event: Arc<Envelope<InvoiceIssued>>| async move {
                SEEN.add();
                if event.amount < 0.0 {
                    return Err(HandlerError::permanent("negative amount"));
                }
                Ok(())
            },
        )
        .build()
        .await?;
    bus.start_consuming().await?;
    let addr = bus.serve_metrics("127.0.0.1:0".parse()?).await?;
    println!("serving http://{addr}/metrics, /health/live, /health/ready");

    let events: Vec<_> = [120.0, 80.5, -3.0]
        .into_iter()
        .map(|amount| Envelope::new(uuid::Uuid::new_v4(), InvoiceIssued { amount }))
        .collect();
    bus.publish(events).await?;
    SEEN.wait_for(3).await?;
    bus.sample_metrics().await;

    let ready = tokio::task::spawn_blocking(move || get(addr, "/health/ready")).await??;
    println!("{}", ready.lines().next().unwrap_or_default());
    let metrics = tokio::task::spawn_blocking(move || get(addr, "/metrics")).await??;
    for line in metrics.lines().filter(|l| {
        l.starts_with("eventbus_handled_total")
            || l.starts_with("eventbus_published_total")
            || l.starts_with("eventbus_queue_messages")
    }) {
        println!("{line}");
    }
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
