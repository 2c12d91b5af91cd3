//! What eventbus logs: one line per event and outcome. Alone in its test
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
