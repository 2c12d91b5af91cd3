//! TLS against the local RabbitMQ: the test makes its own CA and certificates
//! (openssl), opens TLS listeners on the running broker (`rabbitmqctl eval`),
//! and closes them afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{OrderPlaced, Scope, placed};
use eventbus::{Envelope, Error, HandlerError};
use tokio::sync::mpsc;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

/// A CA, a server certificate for localhost, a client certificate, and an
/// unrelated CA, in a fresh directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("eventbus-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let days = ["-days", "2"];
        for ca in ["ca", "other-ca"] {
            openssl(
                &dir,
                &[
                    &[
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-keyout",
                        &format!("{ca}.key"),
                    ][..],
                    &[
                        "-out",
                        &format!("{ca}.pem"),
                        "-subj",
                        &format!("/CN=eventbus test {ca}"),
                    ],
                    &days[..],
                ]
                .concat(),
            );
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
        for (name, cn) in [("server", "localhost"), ("client", "eventbus-client")] {
            openssl(
                &dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-out",
                    &format!("{name}.key"),
                ],
            );
            openssl(
                &dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
            openssl(
                &dir,
                &[
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{name}.csr"),
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                    ][..],
                    &[
                        "-out",
                        &format!("{name}.pem"),
                        "-extfile",
                        &format!("{name}.ext"),
                    ],
                    &days[..],
                ]
                .concat(),
            );
        }
        // The broker runs as its own user: let it read the files.
        run(Command::new("chmod").args(["-R", "a+rX"]).arg(&dir));
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS listener on the running broker, stopped when dropped.
struct Listener {
    port: u16,
}

impl Listener {
    fn start(pki: &Pki, require_client_cert: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let opts = format!(
            "[{{cacertfile,\"{}\"}},{{certfile,\"{}\"}},{{keyfile,\"{}\"}},{{verify,verify_peer}},{{fail_if_no_peer_cert,{require_client_cert}}}]",
            pki.path("ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
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
