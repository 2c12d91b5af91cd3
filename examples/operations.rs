//! Operations: health check, queue info and statistics (struct and map).
//!
//! ```text
//! EVENTBUS_URL=amqp://guest:guest@localhost:5672/ cargo run --example operations
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use support::Counter;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Sensor")]
struct Reading {
    celsius: f64,
}

static HANDLED: Counter = Counter::new();

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = support::rabbitmq_builder()
        .configure(|c| support::own_names(c, "examples.operations"))
        .handler::<Reading, _, _>("store", |_r| async {
            HANDLED.add();
            Ok::<_, HandlerError>(())
        })
        .build()
        .await?;
    let health = bus.health_check().await;
    println!("before consuming: {}", serde_json::to_string(&health)?);
    bus.start_consuming().await?;
    bus.publish((0..5).map(|i| {
        Envelope::new(
            uuid::Uuid::new_v4(),
            Reading {
                celsius: 20.0 + f64::from(i),
            },
        )
    }))
    .await?;
    HANDLED.wait_for(5).await?;
    println!(
        "while consuming:  {}",
        serde_json::to_string(&bus.health_check().await)?
    );
    println!(
        "queue info:       {}",
        serde_json::to_string(&bus.queue_info().await?)?
    );
    println!(
        "stats:            {}",
        serde_json::to_string(&bus.stats().to_map())?
    );
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
