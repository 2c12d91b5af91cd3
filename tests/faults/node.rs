//! A RabbitMQ node owned by one test: its own node name, ports, data and log
//! directories under `target/tmp`, started with the installed `rabbitmq-server`,
//! killed (`kill -9`) by its own pid. The machine's shared broker is never
//! touched by it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to boot on a loaded machine.
const BOOT: Duration = Duration::from_secs(90);

/// A broker node started by the test, killed when dropped.
pub struct Node {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
    dist_port: u16,
    /// The `rabbitmq-server` shell script, whose child is the Erlang VM.
    script: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

fn server_script() -> PathBuf {
    // As root, /usr/sbin/rabbitmq-server re-runs itself as the `rabbitmq`
    // user, who cannot write under target/; the packaged script runs as is.
    let packaged = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if packaged.exists() {
        packaged.to_owned()
    } else {
        PathBuf::from("rabbitmq-server")
    }
}

fn ctl_script() -> PathBuf {
    let packaged = Path::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
    if packaged.exists() {
        packaged.to_owned()
    } else {
        PathBuf::from("rabbitmqctl")
    }
}

impl Node {
    /// Starts a fresh node named after `tag` and waits until it accepts AMQP
    /// connections.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, "", "[]")
    }

    /// Like [`Node::start`], with extra `rabbitmq.conf` lines and an
    /// `advanced.config` term.
    pub fn start_with(tag: &str, extra_config: &str, advanced: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("evfault-{tag}-{}@localhost", &id[..6]);
        // target/tmp for the tests; the bench's soak (which includes this
        // file) runs outside cargo's test environment.
        let base =
            option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = base.join(format!("node-{tag}-{}", &id[..6]));
        for sub in ["mnesia", "log", "home"] {
            std::fs::create_dir_all(dir.join(sub)).expect("node directories");
        }
        let port = free_port();
        let dist_port = free_port();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{port}\n\
                 loopback_users = none\n\
                 management.tcp.port = 0\n\
                 log.file.level = info\n\
                 log.console = false\n\
                 {extra_config}\n"
            ),
        )
        .expect("node config");
        std::fs::write(dir.join("advanced.config"), format!("{advanced}.\n"))
            .expect("advanced config");
        // No plugins: no management or other listeners on shared ports.
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        // An empty env file, so /etc/rabbitmq/rabbitmq-env.conf (the shared
        // node's name) is not read.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        let mut node = Self {
            name,
            port,
            dir,
            dist_port,
            script: None,
        };
        node.boot();
        node
    }

    fn env(&self, command: &mut Command) {
        let dir = &self.dir;
        command
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env_remove("ERL_FLAGS")
            .env_remove("RABBITMQ_CONFIG_FILES");
    }

    /// Starts the VM (again, after a kill: same data directory) and waits for AMQP.
    pub fn boot(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let mut command = Command::new(server_script());
        self.env(&mut command);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .expect("server output file");
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("file handle"))
            .stderr(out);
        self.script = Some(command.spawn().expect("rabbitmq-server starts"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + BOOT;
        loop {
            if let Some(script) = self.script.as_mut()
                && let Ok(Some(status)) = script.try_wait()
            {
                panic!(
                    "node {} exited while booting ({status}); see {}",
                    self.name,
                    self.dir.join("server.out").display()
                );
            }
            // `await_startup` returns once the broker (listeners, vhosts, users) is up.
            let ok = self
                .ctl_status(&["await_startup", "--timeout", "5"])
                .is_ok_and(|s| s.success());
            if ok && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start within {BOOT:?}; see {}",
                self.name,
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `amqp://` URL of this node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The address of its AMQP listener.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn ctl_status(&self, args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
        let mut command = Command::new(ctl_script());
        self.env(&mut command);
        command
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }

    /// `rabbitmqctl -n <this node> args...`; panics when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut command = Command::new(ctl_script());
        self.env(&mut command);
        let out = command
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `(messages ready, messages unacknowledged)` of `queue` on this node.
    pub fn queue_counts(&self, queue: &str) -> Option<(u64, u64)> {
        let out = self.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        out.lines().find_map(|l| {
            let mut parts = l.split('\t');
            if parts.next()? != queue {
                return None;
            }
            Some((
                parts.next()?.trim().parse().ok()?,
                parts.next()?.trim().parse().ok()?,
            ))
        })
    }

    /// The Erlang VM's pid, from the pid file.
    fn vm_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    fn stop_now(&mut self) {
        if let Some(pid) = self.vm_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if let Some(mut script) = self.script.take() {
            let _ = script.kill();
            let _ = script.wait();
        }
    }

    /// `kill -9` of the VM (by its own pid) and its start script.
    pub fn kill9(&mut self) {
        self.stop_now();
        // The listener is gone once the VM is.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "node {} still listening after kill -9",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets or clears a memory alarm: a watermark nothing fits under, or the default.
    pub fn memory_alarm(&self, on: bool) {
        let watermark = if on { "0.0000001" } else { "0.4" };
        self.ctl(&["set_vm_memory_high_watermark", watermark]);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_now();
        // Kept after a failure, for its logs.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
