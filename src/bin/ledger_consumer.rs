//! A consuming service for the ordering and crash tests
//! (`tests/rabbit_ordering.rs`): group `ledger` handles `Ledger.Step` events,
//! printing `done {aggregate} {seq}` after each (stdout is line-buffered, so
//! a killed process has printed exactly what it finished).
//!
//! Test knobs: `LEDGER_HANG_SEQ=n` never finishes events with `seq == n`
//! (a handler stuck when the process is killed); `LEDGER_FAIL_SEQ=n` fails
//! them permanently (dead-lettered at once). Handlers take 0-4 ms, as a
//! projection writing to a database does.

use std::time::Duration;

use eventbus::{Bus, DomainEvent, Envelope, HandlerError, handles};
use serde::{Deserialize, Serialize};

/// One step of a ledger; `seq` counts from 0 per aggregate.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Ledger")]
struct Step {
    seq: u32,
}

fn knob(name: &str) -> Option<u32> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[handles(Step, group = "ledger")]
async fn apply(event: &Envelope<Step>) -> Result<(), HandlerError> {
    let aggregate = event.meta().aggregate_id();
    if knob("LEDGER_FAIL_SEQ") == Some(event.seq) {
        println!("fail {aggregate} {}", event.seq);
        return Err(HandlerError::permanent("ledger step rejected"));
    }
    if knob("LEDGER_HANG_SEQ") == Some(event.seq) {
        println!("hang {aggregate} {}", event.seq);
        std::future::pending::<()>().await;
    }
    let work = (aggregate.as_u128() as u64).wrapping_add(u64::from(event.seq)) % 5;
    tokio::time::sleep(Duration::from_millis(work)).await;
    println!("done {aggregate} {}", event.seq);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    eventbus_examples::log_to_stderr();
    Bus::from_env().run().await
}
