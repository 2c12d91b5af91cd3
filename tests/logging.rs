//! What eventbus logs: one line per event and outcome, and nothing at error
//! level on a graceful shutdown. Alone in its test
//! binary: a scoped `tracing` subscriber shares the global callsite interest
//! and level caches with every other test thread.

mod common;

use std::sync::{Arc, Mutex};

use common::{OrderPlaced, placed};
use eventbus::{Bus, HandlerError};

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

#[tokio::test]
async fn a_failed_event_is_logged_once_however_many_handlers_failed() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
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
    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
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

/// A graceful shutdown on RabbitMQ logs no error, from eventbus or from lapin:
/// each group's channel is closed, and answered, before its connection (a
/// channel only dropped closed in the background, crossed the connection's
/// close, and lapin logged "Connection error" in about two shutdowns of three).
#[tokio::test]
async fn a_graceful_rabbitmq_shutdown_logs_no_error() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Global: lapin logs from threads of its own. The other test of this
    // binary logs to a subscriber of its own thread.
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
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
        let all = tokio::time::timeout(std::time::Duration::from_secs(30), handled.acquire_many(3))
            .await
            .expect("all three handled within 30 s");
        all.expect("open").forget();
        bus.shutdown(std::time::Duration::from_secs(10))
            .await
            .expect("stops");
        let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
        assert!(
            !text.contains("ERROR"),
            "shutdown {round} logged an error:\n{text}"
        );
    }
}
