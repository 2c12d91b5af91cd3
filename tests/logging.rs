//! What eventbus logs: one line per event and outcome, and nothing at error
//! level on a graceful shutdown. Alone in its test
//! binary: a scoped `tracing` subscriber shares the global callsite interest
//! and level caches with every other test thread.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka::{self, Tansu};
use common::{OrderPlaced, placed};
use eventbus::{Bus, HandlerError};
use tracing_subscriber::util::SubscriberInitExt as _;

/// Captures what a fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything written so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("log buffer").clone()).expect("utf-8")
    }
}

/// A fmt subscriber writing what is logged at `level` or above into a buffer.
fn capturing(level: tracing::Level) -> (Captured, impl tracing::Subscriber + Send + Sync) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (logs, subscriber)
}

#[tokio::test]
async fn a_failed_event_is_logged_once_however_many_handlers_failed() {
    let (logs, subscriber) = capturing(tracing::Level::INFO);
    // A current-thread test runtime: the default applies to the whole test.
    let _guard = tracing::subscriber::set_default(subscriber);
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("first", |_e| async {
            Err::<(), _>(HandlerError::new("db down"))
        })
        .handler::<OrderPlaced, _, _>("second", |_e| async {
            Err::<(), _>(HandlerError::new("mail down"))
        })
        .build()
        .await
        .expect("builds");
    bus.publish([placed("A"), placed("B")])
        .await
        .expect("publish succeeds");
    let text = logs.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one line per failed event: {text}");
    for line in lines {
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains("first: db down") && line.contains("second: mail down"),
            "{line}"
        );
    }
}

/// What every thread logs at warn or above, the `log` crate's records
/// (rdkafka's) included, for the broker tests of this binary. The first test
/// above logs to a subscriber of its own thread instead.
fn global_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let (logs, subscriber) = capturing(tracing::Level::WARN);
        subscriber.try_init().expect("the only global subscriber");
        logs
    })
    .clone()
}

/// Panics with the captured logs if any line is at error level.
fn assert_no_error(logs: &Captured, what: &str) {
    let text = logs.text();
    assert!(
        !text.contains("ERROR"),
        "{what}: an error was logged (the broker tests of this binary share one log):\n{text}"
    );
}

/// A graceful shutdown on RabbitMQ logs no error, from eventbus or from lapin:
/// each group's channel is closed, and answered, before its connection (a
/// channel only dropped closed in the background, crossed the connection's
/// close, and lapin logged "Connection error" in about two shutdowns of three).
#[tokio::test]
async fn a_graceful_rabbitmq_shutdown_logs_no_error() {
    let logs = global_logs();
    let scope = common::Scope::new("shutdown-logs");
    for round in 0..5 {
        let handled = Arc::new(tokio::sync::Semaphore::new(0));
        let h = handled.clone();
        let bus = scope
            .builder()
            .handler::<OrderPlaced, _, _>("count", move |_e| {
                h.add_permits(1);
                std::future::ready(Ok::<_, HandlerError>(()))
            })
            .build()
            .await
            .expect("connects");
        bus.start_consuming().await.expect("consumes");
        bus.publish([placed("A"), placed("B"), placed("C")])
            .await
            .expect("publish succeeds");
        let all = tokio::time::timeout(Duration::from_secs(30), handled.acquire_many(3))
            .await
            .expect("all three handled within 30 s");
        all.expect("open").forget();
        bus.shutdown(Duration::from_secs(10)).await.expect("stops");
        assert_no_error(&logs, &format!("shutdown {round}"));
    }
}

/// Reading a Kafka DLQ to its end logs no error: the end of each partition,
/// which the reader asks librdkafka to report, was logged by rdkafka's default
/// context as "ERROR librdkafka: Global error: PartitionEOF".
#[tokio::test]
async fn reading_a_kafka_dlq_logs_no_error() {
    let logs = global_logs();
    let tansu = Tansu::start();
    let prefix = kafka::prefix("dlq-logs");
    let bus = kafka::builder(&tansu, &prefix)
        .handler::<OrderPlaced, _, _>("count", |_e| std::future::ready(Ok::<_, HandlerError>(())))
        .build()
        .await
        .expect("connects");
    kafka::produce(
        &tansu,
        &format!("{prefix}.stream.dlq"),
        "key",
        Some("{}"),
        &[
            ("event_type", "OrderPlaced"),
            ("dlq_reason", "deserialization_error"),
            ("dlq_consumer_group", "default"),
        ],
    )
    .await;
    let listed = bus.dlq("default").list(10).await.expect("lists the DLQ");
    assert_eq!(listed.len(), 1, "{listed:?}");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_no_error(&logs, "reading the DLQ");
}

/// Publishes one event whose only handler fails for good on the bus `builder`
/// makes, waits until it is in the DLQ, and returns what was logged at warn
/// or above on this thread meanwhile (a current-thread runtime: the bus's
/// consuming tasks run here).
async fn logs_of_one_dead_letter(builder: eventbus::BusBuilder) -> String {
    let (logs, subscriber) = capturing(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(subscriber);
    let bus = builder
        .handler::<OrderPlaced, _, _>("charge", |_e| async {
            Err::<(), _>(HandlerError::permanent("card declined"))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus.publish([placed("A")]).await.expect("publish succeeds");
    let dlq = bus.dlq("default");
    common::eventually(
        "the event is dead-lettered",
        Duration::from_secs(60),
        || {
            let dlq = dlq.clone();
            async move { dlq.count().await.unwrap_or(0) == 1 }
        },
    )
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    logs.text()
}

/// One `ERROR` line per dead-lettered event, the README's promise, on every
/// broker (Redis and Kafka logged it at warn).
#[tokio::test]
async fn a_dead_lettered_event_is_one_error_line_on_every_broker() {
    let scope = common::Scope::new("dead-letter-logs");
    let redis = common::redis_scope::RedisScope::new("dead-letter-logs");
    let tansu = Tansu::start();
    let kafka_prefix = kafka::prefix("dead-letter-logs");
    for (broker, builder) in [
        ("RabbitMQ", scope.builder()),
        ("Redis", redis.builder()),
        ("Kafka", kafka::builder(&tansu, &kafka_prefix)),
    ] {
        let text = logs_of_one_dead_letter(builder).await;
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{broker}: one error line: {text}");
        assert!(
            errors[0].contains("dead-lettered") && errors[0].contains("card declined"),
            "{broker}: {}",
            errors[0]
        );
    }
}
