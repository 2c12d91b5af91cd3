//! A private TLS-only `redis-server` (plain port off) on a free port, with
//! the certificates of a test PKI, killed by its pid when dropped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::Pki;
use super::{ChildGuard, lines};

pub const READY: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A private TLS-only redis-server (no persistence), killed when dropped.
pub struct TlsRedis {
    pub port: u16,
    _child: ChildGuard,
}

impl TlsRedis {
    /// Serves `cert`/`key` (names in `pki`); clients must show a certificate
    /// signed by the CA when `require_client_cert`.
    pub fn start(pki: &Pki, cert: &str, require_client_cert: bool) -> Self {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .arg("--tls-cert-file")
            .arg(pki.path(&format!("{cert}.pem")))
            .arg("--tls-key-file")
            .arg(pki.path(&format!("{cert}.key")))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .args([
                "--tls-auth-clients",
                if require_client_cert { "yes" } else { "no" },
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let out = lines(child.stdout.take().expect("piped stdout"));
        let guard = ChildGuard(child);
        // Its log says when it listens; the wait is bounded.
        let deadline = Instant::now() + READY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match out.recv_timeout(left) {
                Ok(line) if line.contains("Ready to accept connections") => break,
                Ok(_) => {}
                Err(e) => panic!("the TLS redis-server on {port} did not start: {e}"),
            }
        }
        Self {
            port,
            _child: guard,
        }
    }

    pub fn url(&self, host: &str) -> String {
        format!("rediss://{host}:{}/0", self.port)
    }
}
