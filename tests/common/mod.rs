//! Shared by the broker tests: unique names, cleanup, events, waiting.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use eventbus::{Bus, BusBuilder, DomainEvent, Envelope};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The broker the tests use: `EVENTBUS_TEST_URL`, default the local RabbitMQ.
pub fn url() -> String {
    std::env::var("EVENTBUS_TEST_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
pub struct OrderPlaced {
    pub customer_id: String,
    pub total_amount: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
pub struct OrderShipped {
    pub tracking_number: String,
}

pub fn placed(customer: &str) -> Envelope<OrderPlaced> {
    Envelope::new(
        Uuid::new_v4(),
        OrderPlaced {
            customer_id: customer.to_owned(),
            total_amount: 42.5,
        },
    )
}

pub fn shipped(tracking: &str) -> Envelope<OrderShipped> {
    Envelope::new(
        Uuid::new_v4(),
        OrderShipped {
            tracking_number: tracking.to_owned(),
        },
    )
}

/// A test's own exchange and queues, deleted when dropped (even on panic).
pub struct Scope {
    pub exchange: String,
    groups: std::sync::Mutex<Vec<String>>,
}

impl Scope {
    pub fn new(test: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            exchange: format!("test.{test}.{}", &id[..8]),
            groups: std::sync::Mutex::new(vec!["default".to_owned()]),
        }
    }

    /// A builder on this scope's exchange, discovery off, fast retries.
    pub fn builder(&self) -> BusBuilder {
        let exchange = self.exchange.clone();
        Bus::builder()
            .url(&url())
            .without_discovery()
            .configure(move |c| {
                c.exchange_name = exchange;
                c.reconnect_delay = Duration::from_millis(100);
                c.max_reconnect_delay = Duration::from_secs(1);
                c.connect_timeout = Duration::from_secs(10);
                c.confirm_timeout = Duration::from_secs(20);
            })
    }

    /// Also delete the queues of `group`.
    pub fn group(&self, group: &str) -> String {
        self.groups
            .lock()
            .expect("not poisoned")
            .push(group.to_owned());
        group.to_owned()
    }

    pub fn queue(&self, group: &str) -> String {
        format!("{}.{group}", self.exchange)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let exchange = self.exchange.clone();
        let groups = self.groups.lock().map(|g| g.clone()).unwrap_or_default();
        // Drop is synchronous: clean up on a runtime of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(&url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                // A delete of a missing queue closes its channel: one channel per delete.
                let mut queues = Vec::new();
                let mut exchanges = vec![exchange.clone(), format!("{exchange}_dlq")];
                for g in groups {
                    queues.push(format!("{exchange}.{g}"));
                    queues.push(format!("{exchange}.{g}.dlq"));
                    queues.push(format!("{exchange}.{g}.unhandled"));
                    queues.extend((1..=10).map(|n| format!("{exchange}.{g}.delay.{n}")));
                    queues.extend((1..=10).map(|n| format!("{exchange}.{g}.retry.{n}")));
                    exchanges.push(format!("{exchange}.{g}.redeliver"));
                }
                for q in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                        let _ = ch.close(200, "done".into()).await;
                    }
                }
                for x in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                            .await;
                        let _ = ch.close(200, "done".into()).await;
                    }
                }
                let _ = conn.close(200, "cleanup".into()).await;
            });
        })
        .join();
    }
}

/// Polls `check` until it returns true, failing after `timeout`. Used to wait
/// for broker-side state (queue counts), never as a fixed sleep.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw lapin connection for poking at the broker directly.
pub async fn raw() -> Connection {
    Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("the local RabbitMQ is reachable (start it with `rabbitmq-server -detached`)")
}

/// Ready messages in `queue`.
pub async fn message_count(queue: &str) -> u32 {
    let conn = raw().await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

/// `rabbitmqctl list_bindings` for one exchange: `(queue, routing key)` pairs, sorted.
pub fn bindings_of(exchange: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "destination_name",
            "routing_key",
        ])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let (src, dst, key) = (parts.next()?, parts.next()?, parts.next()?);
            (src == exchange).then(|| (dst.to_owned(), key.to_owned()))
        })
        .collect();
    v.sort();
    v
}

/// `rabbitmqctl list_queues name type` for one queue.
pub fn queue_type(queue: &str) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "type"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (name, kind) = l.split_once('\t')?;
            (name == queue).then(|| kind.trim().to_owned())
        })
        .unwrap_or_default()
}

/// A child process killed (and reaped) if the test fails while it runs.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's output, read on a thread so that waits can time out.
pub fn lines(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A handler of `OrderPlaced` that fails the first attempt of each event and
/// succeeds on its retry, counting every call in `calls`.
pub fn fails_first_attempt(
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(
    std::sync::Arc<Envelope<OrderPlaced>>,
) -> std::future::Ready<Result<(), eventbus::HandlerError>>
+ Send
+ Sync
+ 'static {
    let failed_once = std::sync::Mutex::new(std::collections::HashSet::new());
    move |event| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let first = failed_once
            .lock()
            .expect("not poisoned")
            .insert(event.meta().event_id());
        std::future::ready(if first {
            Err(eventbus::HandlerError::new("first attempt fails"))
        } else {
            Ok(())
        })
    }
}

/// Builds a bus from `builder` whose handler never ends (and whose configured
/// shutdown timeout is 600 s), gets one event into that handler, and checks
/// that `shutdown(300 ms)` returns by its own timeout with `ShutdownTimeout`.
#[allow(dead_code)]
pub async fn assert_stuck_shutdown_returns_by_its_timeout(builder: BusBuilder) {
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let stuck = builder
        .configure(|c| c.shutdown_timeout = Duration::from_secs(600))
        .handler::<OrderPlaced, _, _>("stuck", move |_e| {
            s.notify_one();
            std::future::pending::<Result<(), eventbus::HandlerError>>()
        })
        .build()
        .await
        .expect("connects");
    stuck.start_consuming().await.expect("consumes");
    stuck.publish([placed("stuck")]).await.expect("published");
    let wait = Duration::from_secs(20);
    tokio::time::timeout(wait, started.notified())
        .await
        .expect("handler started");
    let result = tokio::time::timeout(wait, stuck.shutdown(Duration::from_millis(300)))
        .await
        .expect("shutdown(300 ms) returns long before the configured 600 s");
    assert!(
        matches!(
            result,
            Err(eventbus::Error::ShutdownTimeout { pending: 1.., .. })
        ),
        "{result:?}"
    );
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to process `pid` with `kill`, and
/// fails the test when it cannot.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

pub mod interop;
pub mod kafka;
pub mod pki;
pub mod python;
pub mod redis_scope;
pub mod tls_redis;

/// Held by a test for as long as it installs a scoped `tracing` subscriber:
/// scoped subscribers of parallel tests share tracing's global interest and
/// level caches, and one being dropped can hide another's spans for a moment.
pub static SCOPED_SUBSCRIBER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Closes the connections of the shared broker whose client properties name
/// `name` (a test's own, e.g. `eventbus consumer (<its exchange>)`), with
/// `rabbitmqctl close_connection`; returns how many it closed.
pub fn close_connections_named(name: &str) -> usize {
    let list = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&list.stdout);
    let pids: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(name))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for pid in &pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "eventbus test"])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl close_connection {pid}");
    }
    pids.len()
}
