//! `Bus::from_env().run()` in a real process: it serves, and SIGTERM stops it
//! gracefully with exit status 0.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ChildGuard, Scope};
use eventbus::{Bus, DomainEvent, Envelope};
use serde::{Deserialize, Serialize};

/// The same event type as the service's (`src/bin/serve.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Service")]
struct Ping {
    note: String,
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_stops_the_service_gracefully() {
    let scope = Scope::new("serve");
    let child = Command::new(env!("CARGO_BIN_EXE_serve"))
        .env("EVENTBUS_URL", common::url())
        .env("EVENTBUS_EXCHANGE_NAME", &scope.exchange)
        .env("RUST_LOG", "eventbus=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the serve binary starts");
    let mut service = ChildGuard(child);
    let stdout = common::lines(service.0.stdout.take().expect("stdout piped"));
    let stderr = common::lines(service.0.stderr.take().expect("stderr piped"));
    // It logs one startup line once it consumes: broker without the
    // password, exchange, and each group's queue, bindings and handlers.
    let startup = loop {
        let line = stderr
            .recv_timeout(WAIT)
            .expect("the service reports it is running");
        if line.contains("eventbus running on") {
            break line;
        }
    };
    assert!(
        startup.contains("eventbus running on rabbitmq amqp://guest:***@"),
        "{startup}"
    );
    assert!(!startup.contains("guest:guest"), "{startup}");
    assert!(
        startup.contains(&format!(
            "exchange {} (topic); group default: queue {}.default bound to [#], handlers [serve::log_every_event]",
            scope.exchange, scope.exchange
        )),
        "{startup}"
    );
    // Publish one event to its exchange: the service's wildcard handler takes it.
    let publisher = Bus::builder()
        .url(&common::url())
        .without_discovery()
        .configure(|c| c.exchange_name = scope.exchange.clone())
        .build()
        .await
        .expect("connects");
    let event = Envelope::new(
        uuid::Uuid::new_v4(),
        Ping {
            note: "hello".into(),
        },
    );
    let id = event.meta().event_id().to_string();
    publisher
        .publish([event])
        .await
        .expect("routed to the service queue");
    publisher
        .shutdown(Duration::from_secs(5))
        .await
        .expect("closes");

    let first = stdout
        .recv_timeout(WAIT)
        .expect("the service handles the event");
    assert_eq!(first, format!("handled Ping {id}"));

    common::send_signal(service.0.id(), "-TERM");
    let last = stdout.recv_timeout(WAIT).expect("the service stops");
    assert_eq!(last, "stopped cleanly");
    let exit = service.0.wait().expect("the service exits");
    assert!(exit.success(), "graceful exit, got {exit:?}");
}
