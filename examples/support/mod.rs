//! Shared by the examples: pick the transport, wait for handlers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventbus::{Bus, BusBuilder, Config};
use tokio::sync::Notify;

/// `Bus::from_env()`, on the in-memory transport when `EVENTBUS_URL` is unset.
pub(crate) fn builder() -> BusBuilder {
    logging();
    if std::env::var_os("EVENTBUS_URL").is_none() {
        println!("EVENTBUS_URL is not set: using the in-memory transport (memory://)");
        Bus::from_env().memory()
    } else {
        Bus::from_env()
    }
}

/// Gives the example `name` as its exchange, stream prefix and topic prefix,
/// each where the environment names none (`EVENTBUS_EXCHANGE_NAME`,
/// `EVENTBUS_STREAM_PREFIX`, `EVENTBUS_TOPIC_PREFIX`): examples run on one
/// broker do not read each other's events, and the tests' names of their
/// own still apply.
pub(crate) fn own_names(c: &mut Config, name: &str) {
    let unset = |var: &str| std::env::var_os(var).is_none();
    if unset("EVENTBUS_EXCHANGE_NAME") {
        c.exchange_name = name.into();
    }
    if unset("EVENTBUS_STREAM_PREFIX") {
        c.stream_prefix = name.into();
    }
    if unset("EVENTBUS_TOPIC_PREFIX") {
        c.topic_prefix = name.into();
    }
}

/// `Bus::from_env()` on RabbitMQ, for examples that need several processes' worth of consumers.
pub(crate) fn rabbitmq_builder() -> BusBuilder {
    logging();
    if std::env::var_os("EVENTBUS_URL").is_none() {
        println!(
            "this example needs RabbitMQ: using amqp://guest:guest@localhost:5672/ (set EVENTBUS_URL to change)"
        );
    }
    Bus::from_env()
}

/// Logs at `info` unless `RUST_LOG` says otherwise.
pub(crate) fn logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,eventbus=info")),
        )
        .try_init();
}

/// Counts handled events and wakes a waiter when a target is reached.
pub(crate) struct Counter {
    count: AtomicUsize,
    changed: Notify,
}

impl Counter {
    pub(crate) const fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
            changed: Notify::const_new(),
        }
    }

    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until `target` events were counted (30 s at most).
    pub(crate) async fn wait_for(&self, target: usize) -> Result<(), String> {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let changed = self.changed.notified();
                if self.get() >= target {
                    return;
                }
                changed.await;
            }
        })
        .await
        .map_err(|_| {
            format!(
                "only {} of {target} events were handled within 30 s",
                self.get()
            )
        })
    }
}
