//! TLS against the local RabbitMQ: the test makes its own CA and certificates
//! (openssl, tests/common/pki.rs), opens TLS listeners on the running broker (`rabbitmqctl eval`),
//! and closes them afterwards.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::pki::{Pki, run};
use common::{OrderPlaced, Scope, placed};
use eventbus::{Envelope, Error, HandlerError};
use tokio::sync::mpsc;

/// A TLS listener on the running broker, stopped when dropped.
struct Listener {
    port: u16,
}

impl Listener {
    fn start(pki: &Pki, require_client_cert: bool) -> Self {
        Self::serving(pki, "server", require_client_cert)
    }

    /// A listener presenting `cert` (`{cert}.pem` / `{cert}.key` of `pki`).
    fn serving(pki: &Pki, cert: &str, require_client_cert: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let opts = format!(
            "[{{cacertfile,\"{}\"}},{{certfile,\"{}\"}},{{keyfile,\"{}\"}},{{verify,verify_peer}},{{fail_if_no_peer_cert,{require_client_cert}}}]",
            pki.path("ca.pem").display(),
            pki.path(&format!("{cert}.pem")).display(),
            pki.path(&format!("{cert}.key")).display(),
        );
        run(Command::new("rabbitmqctl").args([
            "eval",
            &format!("ok = rabbit_networking:start_ssl_listener({port}, {opts}, 1)."),
        ]));
        Self { port }
    }

    fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.port)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args([
                "eval",
                &format!("rabbit_networking:stop_tcp_listener({}).", self.port),
            ])
            .output();
    }
}

async fn round_trip(bus: eventbus::Bus, rx: &mut mpsc::UnboundedReceiver<String>) {
    bus.start_consuming().await.expect("consumes over TLS");
    bus.publish([placed("tls")])
        .await
        .expect("confirmed over TLS");
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("in time");
    assert_eq!(got.as_deref(), Some("tls"));
    bus.shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

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

#[tokio::test]
async fn tls_with_a_custom_ca_and_mutual_tls() {
    let pki = Pki::new();
    let server_auth = Listener::start(&pki, false);
    let mutual = Listener::start(&pki, true);

    // Server authentication with our CA.
    let scope = Scope::new("tls");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = scope
        .builder()
        .url(&server_auth.url())
        .configure(|c| c.ca_file = Some(pki.path("ca.pem")))
        .handler::<OrderPlaced, _, _>("tls", forward(tx))
        .build()
        .await
        .expect("connects over TLS");
    assert!(bus.config().url.is_tls());
    round_trip(bus, &mut rx).await;

    // Mutual TLS: a client certificate is required and given.
    let scope = Scope::new("mtls");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = scope
        .builder()
        .url(&mutual.url())
        .configure(|c| {
            c.ca_file = Some(pki.path("ca.pem"));
            c.cert_file = Some(pki.path("client.pem"));
            c.key_file = Some(pki.path("client.key"));
        })
        .handler::<OrderPlaced, _, _>("mtls", forward(tx))
        .build()
        .await
        .expect("connects with a client certificate");
    round_trip(bus, &mut rx).await;

    // Without the client certificate the broker refuses: a typed error, quickly.
    let started = std::time::Instant::now();
    let err = Scope::new("mtls-missing")
        .builder()
        .url(&mutual.url())
        .configure(|c| {
            c.ca_file = Some(pki.path("ca.pem"));
            c.connect_timeout = Duration::from_secs(5);
        })
        .build()
        .await
        .expect_err("no client certificate");
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    assert!(!err.to_string().contains("guest:guest"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_wrong_ca_is_a_typed_error_never_a_fallback() {
    let pki = Pki::new();
    let listener = Listener::start(&pki, false);
    let started = std::time::Instant::now();
    let err = Scope::new("wrong-ca")
        .builder()
        .url(&listener.url())
        .configure(|c| c.ca_file = Some(pki.path("other-ca.pem")))
        .build()
        .await
        .expect_err("the server certificate is not signed by this CA");
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{text}");
    assert!(text.contains("TLS"), "{text}");
    assert!(text.contains("guest:***@localhost"), "{text}");
    assert!(!text.contains("guest:guest"), "{text}");
    // Fatal at once: no retry storm until the connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Certificates configured with a plain amqp:// URL: refused, not silently ignored.
    let err = Scope::new("plain-with-ca")
        .builder()
        .configure(|c| c.ca_file = Some(pki.path("ca.pem")))
        .build()
        .await
        .expect_err("TLS files with amqp://");
    assert!(err.to_string().contains("amqps://"), "{err}");
}

#[tokio::test]
async fn verification_can_be_switched_off_explicitly() {
    let pki = Pki::new();
    let listener = Listener::start(&pki, false);
    // Default: verify against the system roots, which do not know our CA.
    let err = Scope::new("no-ca")
        .builder()
        .url(&listener.url())
        .build()
        .await
        .expect_err("self-signed CA is not trusted by default");
    assert!(err.to_string().contains("TLS"), "{err}");
    // Switched off: connects (and logs a warning).
    let scope = Scope::new("no-verify");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = scope
        .builder()
        .url(&listener.url())
        .configure(|c| c.verify_ssl = false)
        .handler::<OrderPlaced, _, _>("insecure", forward(tx))
        .build()
        .await
        .expect("connects without verification");
    round_trip(bus, &mut rx).await;
}

/// Building a bus on `url` must fail with `Error::Connect` naming a TLS
/// failure (and `needle`), well before the 8 s connect timeout, without the
/// password.
async fn fails_closed(
    test: &str,
    url: String,
    configure: impl FnOnce(&mut eventbus::Config) + Send + 'static,
    needle: &str,
) {
    let started = std::time::Instant::now();
    let err = Scope::new(test)
        .builder()
        .url(&url)
        .configure(|c| c.connect_timeout = Duration::from_secs(8))
        .configure(configure)
        .build()
        .await
        .expect_err("must not connect");
    let elapsed = started.elapsed();
    let text = err.to_string();
    eprintln!("{test}: {text} ({elapsed:?})");
    assert!(matches!(err, Error::Connect { .. }), "{test}: {text}");
    assert!(text.contains("TLS"), "{test}: {text}");
    assert!(text.contains(needle), "{test}: {needle:?} not in {text}");
    assert!(!text.contains("guest:guest"), "{test}: {text}");
    assert!(
        elapsed < Duration::from_secs(5),
        "{test}: took {elapsed:?}: {text}"
    );
}

/// Issue 12, case 15: TLS fails closed, never falling back to plain AMQP.
#[tokio::test]
async fn tls_fails_closed_without_a_client_certificate_on_a_wrong_host_and_on_a_plain_port() {
    let pki = Pki::new();
    // No client certificate where the listener requires one.
    let mutual = Listener::start(&pki, true);
    let ca = pki.path("ca.pem");
    fails_closed(
        "no-client-cert",
        mutual.url(),
        move |c| c.ca_file = Some(ca),
        "CertificateRequired",
    )
    .await;

    // A certificate signed by the trusted CA, but for another host.
    let elsewhere = Listener::serving(&pki, "elsewhere", false);
    let ca = pki.path("ca.pem");
    fails_closed(
        "wrong-host",
        elsewhere.url(),
        move |c| c.ca_file = Some(ca),
        "not valid for name",
    )
    .await;

    // The plain AMQP port behind amqps://: the handshake fails, verified or not;
    // nothing is ever spoken in plain AMQP.
    let plain = format!(
        "amqps://guest:guest@localhost:{}/%2f",
        common::url()
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|port| port.parse::<u16>().ok())
            .unwrap_or(5672)
    );
    let ca = pki.path("ca.pem");
    fails_closed(
        "plain-port",
        plain.clone(),
        move |c| c.ca_file = Some(ca),
        "",
    )
    .await;
    fails_closed("plain-port-unverified", plain, |c| c.verify_ssl = false, "").await;
}
