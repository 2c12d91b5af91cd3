//! `rediss://`: TLS against a `redis-server` this test starts on a port of its
//! own (plain port off) with certificates it makes itself
//! (tests/common/pki.rs), stopped by its pid. Round trips with a CA and with a
//! client certificate; every misconfiguration fails closed with a typed error
//! in time, never falling back to plain Redis.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::redis_scope::RedisScope;
use common::tls_redis::{READY, TlsRedis, free_port};
use common::{ChildGuard, OrderPlaced, lines, placed};
use eventbus::{Envelope, Error, HandlerError};
use tokio::sync::mpsc;

fn forward(
    tx: mpsc::UnboundedSender<String>,
) -> impl Fn(Arc<Envelope<OrderPlaced>>) -> std::future::Ready<Result<(), HandlerError>>
+ Send
+ Sync
+ 'static {
    move |e| {
        let _ = tx.send(e.customer_id.clone());
        std::future::ready(Ok(()))
    }
}

/// Publishes one event over TLS and waits for the handler to get it.
async fn round_trip(
    scope: &RedisScope,
    configure: impl FnOnce(&mut eventbus::Config) + Send + 'static,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = scope
        .builder()
        .configure(configure)
        .handler::<OrderPlaced, _, _>("tls", forward(tx))
        .build()
        .await
        .expect("connects over TLS");
    assert!(bus.config().url.is_tls());
    let health = bus.health_check().await;
    assert!(health.connected, "{health:?}");
    bus.start_consuming().await.expect("consumes over TLS");
    bus.publish([placed("over-tls")])
        .await
        .expect("published over TLS");
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("handled in time");
    assert_eq!(got.as_deref(), Some("over-tls"));
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

/// Building a bus must fail with `Error::Connect` whose text holds `needle`,
/// well before the connect timeout (no retrying a handshake that cannot work).
async fn fails_closed(
    scope: &RedisScope,
    configure: impl FnOnce(&mut eventbus::Config) + Send + 'static,
    needle: &str,
) -> String {
    let started = Instant::now();
    let err = scope
        .builder()
        .configure(|c| c.connect_timeout = Duration::from_secs(8))
        .configure(configure)
        .build()
        .await
        .expect_err("must not connect");
    let elapsed = started.elapsed();
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{text}");
    assert!(text.contains(needle), "{needle:?} not in {text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}: {text}");
    text
}

#[tokio::test]
async fn round_trip_over_rediss_with_a_custom_ca() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "server", false);
    let ca = pki.path("ca.pem");
    let scope = RedisScope::on("tls-ca", &server.url("localhost"));
    round_trip(&scope, move |c| c.ca_file = Some(ca)).await;
    // The certificate names 127.0.0.1 too.
    let ca = pki.path("ca.pem");
    let scope = RedisScope::on("tls-ip", &server.url("127.0.0.1"));
    round_trip(&scope, move |c| c.ca_file = Some(ca)).await;
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "server", true);
    let scope = RedisScope::on("mtls", &server.url("localhost"));
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    round_trip(&scope, move |c| {
        c.ca_file = Some(ca);
        c.cert_file = Some(cert);
        c.key_file = Some(key);
    })
    .await;
}

#[tokio::test]
async fn no_client_certificate_where_one_is_required_fails_closed() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "server", true);
    let scope = RedisScope::on("mtls-missing", &server.url("localhost"));
    let ca = pki.path("ca.pem");
    fails_closed(&scope, move |c| c.ca_file = Some(ca), "TLS").await;
}

#[tokio::test]
async fn a_wrong_ca_fails_closed_in_time() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "server", false);
    // A password in the URL never shows in the error.
    let url = format!("rediss://:s3cret@localhost:{}/0", server.port);
    let scope = RedisScope::on("wrong-ca", &url);
    let other = pki.path("other-ca.pem");
    let text = fails_closed(&scope, move |c| c.ca_file = Some(other), "TLS").await;
    assert!(text.contains("UnknownIssuer"), "{text}");
    // No CA configured: the system roots do not know ours either.
    let scope = RedisScope::on("no-ca", &server.url("localhost"));
    fails_closed(&scope, |_| {}, "TLS").await;
}

#[tokio::test]
async fn a_certificate_for_another_host_fails_closed() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "elsewhere", false);
    let scope = RedisScope::on("wrong-host", &server.url("localhost"));
    let ca = pki.path("ca.pem");
    let text = fails_closed(&scope, move |c| c.ca_file = Some(ca), "TLS").await;
    assert!(text.contains("not valid for name"), "{text}");
}

#[tokio::test]
async fn verification_off_connects_to_a_self_signed_server() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, "self", false);
    // Verified by default: a self-signed certificate is refused.
    let scope = RedisScope::on("self-signed", &server.url("localhost"));
    fails_closed(&scope, |_| {}, "TLS").await;
    // Switched off explicitly (logged as a warning): connects.
    round_trip(&scope, |c| c.verify_ssl = false).await;
}

#[tokio::test]
async fn a_plain_server_behind_rediss_is_an_error_never_plain_redis() {
    // The test's own plain redis-server (no TLS at all) on its port.
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    let out = lines(child.stdout.take().expect("piped stdout"));
    let _guard = ChildGuard(child);
    let deadline = Instant::now() + READY;
    while !out
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("the plain redis-server starts")
        .contains("Ready to accept connections")
    {}
    let url = format!("rediss://localhost:{port}/0");
    let scope = RedisScope::on("plain", &url);
    // The server waits for the end of a command that never comes: the
    // handshake cannot finish, and the bus gives up at its connect timeout.
    let started = Instant::now();
    let err = scope
        .builder()
        .configure(|c| {
            c.verify_ssl = false;
            c.connect_timeout = Duration::from_secs(3);
            c.socket_connect_timeout = Duration::from_secs(1);
            c.socket_timeout = Duration::from_secs(1);
        })
        .build()
        .await
        .expect_err("a plain server cannot complete a TLS handshake");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}: {err}");
    // Nothing was sent in plain text: the server never ran a command.
    let mut conn = common::redis_scope::raw(&format!("redis://127.0.0.1:{port}/0"));
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO");
    assert!(!info.contains("cmdstat_xgroup"), "{info}");
    assert!(!info.contains("cmdstat_hello"), "{info}");
    assert!(!info.contains("cmdstat_client"), "{info}");
}

#[tokio::test]
async fn tls_files_are_checked_before_connecting() {
    let pki = Pki::new();
    // Certificates with a plain redis:// URL: refused, not silently ignored.
    let scope = RedisScope::new("plain-with-ca");
    let ca = pki.path("ca.pem");
    fails_closed(&scope, move |c| c.ca_file = Some(ca), "rediss://").await;
    // Unreadable or unusable files name their variable (nothing listens on port 1).
    let scope = RedisScope::on("bad-files", "rediss://localhost:1/0");
    let missing = pki.path("missing.pem");
    fails_closed(
        &scope,
        move |c| c.ca_file = Some(missing),
        "cannot read EVENTBUS_CA_FILE",
    )
    .await;
    let not_pem = pki.path("server.ext");
    fails_closed(
        &scope,
        move |c| c.ca_file = Some(not_pem),
        "EVENTBUS_CA_FILE",
    )
    .await;
    let (cert, key) = (pki.path("client.pem"), pki.path("missing.key"));
    fails_closed(
        &scope,
        move |c| {
            c.cert_file = Some(cert);
            c.key_file = Some(key);
        },
        "cannot read EVENTBUS_KEY_FILE",
    )
    .await;
    let (cert, key) = (pki.path("client.pem"), pki.path("client.csr"));
    fails_closed(
        &scope,
        move |c| {
            c.cert_file = Some(cert);
            c.key_file = Some(key);
        },
        "EVENTBUS_KEY_FILE",
    )
    .await;
}
