//! Metrics and probes, scraped over HTTP with a real client while events
//! flow, fail and retry; readiness flips while the consumer reconnects.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{OrderPlaced, Scope, eventually, placed};
use eventbus::{Bus, Envelope, HandlerError};

const WAIT: Duration = Duration::from_secs(30);

/// GET `path`: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let mut response = agent.get(&url).call().expect("the listener answers");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().expect("a text body");
        (status, body)
    })
    .await
    .expect("the request task")
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// `eventbus_handled_total` of `handler` (group `default`, `OrderPlaced`) with `outcome`.
fn handled(text: &str, handler: &str, outcome: &str) -> Option<f64> {
    sample(
        text,
        &format!(
            "eventbus_handled_total{{group=\"default\",handler=\"{handler}\",event_type=\"OrderPlaced\",outcome=\"{outcome}\"}}"
        ),
    )
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn memory_metrics_count_handled_and_failed_events_by_handler() {
    let bus = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("ok", |_e| async { Ok::<_, HandlerError>(()) })
        .handler::<OrderPlaced, _, _>("flaky", |e: Arc<Envelope<OrderPlaced>>| async move {
            if e.customer_id == "bad" {
                Err(HandlerError::new("no"))
            } else {
                Ok(())
            }
        })
        .build()
        .await
        .expect("builds");
    let addr = bus
        .serve_metrics("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listens");
    bus.publish([placed("a"), placed("b"), placed("bad")])
        .await
        .expect("publishes");

    let text = scrape(addr).await;
    assert_eq!(handled(&text, "ok", "success"), Some(3.0), "{text}");
    assert_eq!(handled(&text, "flaky", "success"), Some(2.0), "{text}");
    assert_eq!(handled(&text, "flaky", "error"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "eventbus_published_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "eventbus_handler_errors_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "eventbus_handler_duration_seconds_count{group=\"default\",handler=\"ok\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "eventbus_publish_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "eventbus_in_flight_deliveries"),
        Some(0.0),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    // No event id ever becomes a label.
    assert!(!text.contains("event_id"), "{text}");

    assert_eq!(get(addr, "/health/live").await.0, 200);
    assert_eq!(get(addr, "/health/ready").await.0, 200);
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost of this test's own, so refusing connections to it touches nothing
/// else on the shared broker; deleted (with everything in it) on drop.
struct Vhost(String);

impl Vhost {
    fn new() -> Self {
        let name = format!(
            "test-observe-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self(name)
    }

    fn url(&self) -> String {
        let base = common::url();
        let root = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(root, _)| root);
        format!("{root}/{}", self.0)
    }

    /// Refuses (`true`) or allows new connections to this vhost.
    fn refuse_connections(&self, refuse: bool) {
        let limits = if refuse {
            r#"{"max-connections": 0}"#
        } else {
            "{}"
        };
        rabbitmqctl(&["set_vhost_limits", "-p", &self.0, limits]);
    }

    /// Closes the connection named `name` (ours only).
    fn close_connection(&self, name: &str) {
        let text = rabbitmqctl(&[
            "list_connections",
            "-p",
            &self.0,
            "pid",
            "client_properties",
        ]);
        let pid = text
            .lines()
            .find(|l| l.contains(name))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("connection {name} is listed: {text}"))
            .to_owned();
        rabbitmqctl(&["close_connection", &pid, "observe test"]);
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.0])
            .status();
    }
}

#[tokio::test]
async fn rabbit_metrics_move_with_retries_and_readiness_flips_on_reconnect() {
    let scope = Scope::new("observe");
    let vhost = Vhost::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let bus = scope
        .builder()
        .url(&vhost.url())
        .configure(|c| {
            c.retry_base_delay = Duration::from_millis(50);
            c.retry_max_delay = Duration::from_millis(100);
            c.reconnect_delay = Duration::from_millis(500);
        })
        // Fails the first attempt of each event, succeeds on the retry.
        .handler::<OrderPlaced, _, _>(
            "first_try_fails",
            common::fails_first_attempt(attempts.clone()),
        )
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let addr = bus
        .serve_metrics("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listens");
    eventually("ready", WAIT, || async {
        get(addr, "/health/ready").await.0 == 200
    })
    .await;

    bus.publish([placed("a"), placed("b")])
        .await
        .expect("publishes");
    eventually("two failures then a retry each", WAIT, || async {
        let text = scrape(addr).await;
        sample(&text, "eventbus_retries_total") == Some(2.0)
    })
    .await;
    eventually("both retries handled", WAIT, || async {
        handled(&scrape(addr).await, "first_try_fails", "success") == Some(2.0)
    })
    .await;
    let text = scrape(addr).await;
    assert_eq!(
        handled(&text, "first_try_fails", "error"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        4,
        "each event failed once, then passed"
    );
    assert_eq!(
        sample(&text, "eventbus_published_total"),
        Some(2.0),
        "{text}"
    );

    bus.sample_metrics().await;
    let text = scrape(addr).await;
    assert_eq!(sample(&text, "eventbus_connected"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "eventbus_consumer_up{group=\"default\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "eventbus_queue_messages{group=\"default\",queue=\"main\"}"
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "eventbus_queue_messages{group=\"default\",queue=\"dlq\"}"
        ),
        Some(0.0),
        "{text}"
    );

    // The broker drops our consumer connection and refuses new ones: not
    // ready; once it accepts connections again: ready.
    vhost.refuse_connections(true);
    vhost.close_connection(&format!("eventbus consumer ({})", scope.exchange));
    eventually("not ready while reconnecting", WAIT, || async {
        get(addr, "/health/ready").await.0 == 503
    })
    .await;
    vhost.refuse_connections(false);
    eventually("ready after the reconnect", WAIT, || async {
        get(addr, "/health/ready").await.0 == 200
    })
    .await;
    let text = scrape(addr).await;
    assert!(
        sample(&text, "eventbus_reconnections_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}

#[tokio::test]
async fn redis_metrics_move_with_retries_and_queue_depths_are_sampled() {
    let scope = common::redis_scope::RedisScope::new("observe");
    let attempts = Arc::new(AtomicUsize::new(0));
    let bus = scope
        .builder()
        .configure(|c| {
            c.retry_base_delay = Duration::from_millis(50);
            c.retry_max_delay = Duration::from_millis(100);
        })
        .handler::<OrderPlaced, _, _>(
            "first_try_fails",
            common::fails_first_attempt(attempts.clone()),
        )
        .build()
        .await
        .expect("connects to Redis");
    bus.start_consuming().await.expect("consumes");
    let addr = bus
        .serve_metrics("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listens");
    eventually("ready", WAIT, || async {
        get(addr, "/health/ready").await.0 == 200
    })
    .await;

    bus.publish([placed("a"), placed("b")])
        .await
        .expect("publishes");
    eventually(
        "both events handled after one failure each",
        WAIT,
        || async { handled(&scrape(addr).await, "first_try_fails", "success") == Some(2.0) },
    )
    .await;
    let text = scrape(addr).await;
    assert_eq!(
        handled(&text, "first_try_fails", "error"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "eventbus_retries_total"), Some(2.0), "{text}");
    assert_eq!(
        sample(&text, "eventbus_published_total"),
        Some(2.0),
        "{text}"
    );

    bus.sample_metrics().await;
    let text = scrape(addr).await;
    assert_eq!(sample(&text, "eventbus_connected"), Some(1.0), "{text}");
    assert!(
        sample(
            &text,
            "eventbus_queue_messages{group=\"default\",queue=\"main\"}"
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "eventbus_queue_messages{group=\"default\",queue=\"dlq\"}"
        ),
        Some(0.0),
        "{text}"
    );
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
}
