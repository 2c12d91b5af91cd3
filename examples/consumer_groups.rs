//! Consumer groups sharing work: two workers in one group split 10 events
//! between them (RabbitMQ load-balances the group's queue). Needs RabbitMQ.
//!
//! ```text
//! cargo run --example consumer_groups   # uses amqp://guest:guest@localhost:5672/ unless EVENTBUS_URL is set
//! ```

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use support::Counter;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Task")]
struct TaskSubmitted {
    number: u32,
}

static TOTAL: Counter = Counter::new();
static PER_WORKER: [Counter; 2] = [Counter::new(), Counter::new()];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut workers = Vec::new();
    for (id, counter) in PER_WORKER.iter().enumerate() {
        let bus = support::rabbitmq_builder()
            .configure(|c| {
                support::own_names(c, "examples.tasks");
                c.consumer_group = "task-processors".into();
                c.consumer_name = Some(format!("worker-{}", id + 1));
                // One at a time each: fair dispatch between the workers.
                c.prefetch_count = 1;
            })
            .handler::<TaskSubmitted, _, _>(
                "work",
                move |task: Arc<Envelope<TaskSubmitted>>| async move {
                    println!("  worker-{} processed task {}", id + 1, task.number);
                    tokio::time::sleep(Duration::from_millis(20)).await; // the "work"
                    counter.add();
                    TOTAL.add();
                    Ok::<_, HandlerError>(())
                },
            )
            .build()
            .await?;
        bus.start_consuming().await?;
        workers.push(bus);
    }
    println!(
        "both workers share queue `{}`",
        workers[0].config().queue_name()
    );
    workers[0]
        .publish(
            (1..=10).map(|number| Envelope::new(uuid::Uuid::new_v4(), TaskSubmitted { number })),
        )
        .await?;
    TOTAL.wait_for(10).await?;
    for bus in &workers {
        bus.shutdown(Duration::from_secs(10)).await?;
    }
    println!(
        "worker-1: {}, worker-2: {}, total: {}",
        PER_WORKER[0].get(),
        PER_WORKER[1].get(),
        TOTAL.get()
    );
    Ok(())
}
