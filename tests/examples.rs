//! Every example runs unchanged on every transport: the in-memory one, RabbitMQ
//! (in a vhost of the test's own, made and deleted with `rabbitmqctl`), Redis
//! Streams (a stream prefix of the test's own) and Kafka (a Tansu of the
//! test's own). Each example exits non-zero when its events do not all come
//! back in time; the test also checks the line that says what it did.
//!
//! The binaries are the ones `cargo test` builds next to the test
//! (`target/<profile>/examples/`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::{self, Tansu};
use common::redis_scope::RedisScope;

/// An example and what its output must contain on every transport it runs on.
struct Example {
    name: &'static str,
    /// Runs without `EVENTBUS_URL` on the in-memory transport (the others
    /// need several consumers or a broker's DLQ).
    in_memory: bool,
    expect: &'static str,
}

const EXAMPLES: &[Example] = &[
    Example {
        name: "quickstart",
        in_memory: true,
        expect: "orders placed: 3, shipped: 2",
    },
    Example {
        name: "basic_pubsub",
        in_memory: true,
        expect: "handled 3 events",
    },
    Example {
        name: "consumer_groups",
        in_memory: false,
        expect: "total: 10",
    },
    Example {
        name: "multiple_groups",
        in_memory: true,
        expect: "every group got every event",
    },
    Example {
        name: "microservices",
        in_memory: true,
        expect: "each service received only its own event",
    },
    Example {
        name: "operations",
        in_memory: false,
        expect: "\"consuming\":true",
    },
    Example {
        name: "observability",
        in_memory: true,
        expect: "eventbus_published_total 3",
    },
    Example {
        name: "failure_path",
        in_memory: false,
        expect: "4. done: 1 charged, 1 left in",
    },
    Example {
        name: "kafka",
        in_memory: true,
        expect: "after 5 deposits, in order",
    },
];

/// Where `cargo test` put the example binaries: beside this test's `deps`.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>")
        .join("examples");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test` builds the examples (or `cargo build --examples`)",
        bin.display()
    );
    bin
}

/// Runs one example with `env` (and no inherited `EVENTBUS_*`), waiting at
/// most two minutes; panics with its output unless it succeeded and printed
/// `expect`.
fn run(example: &Example, transport: &str, env: &[(&str, String)]) {
    let started = Instant::now();
    let mut cmd = Command::new(example_binary(example.name));
    for (key, _) in std::env::vars() {
        if key.starts_with("EVENTBUS_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", example.name));
    let pid = child.id();
    // A hung example is killed, so the test fails instead of hanging.
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if waited.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("example output");
    let _ = done.send(());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(example.expect),
        "example `{}` on {transport}: {} after {:?}, expected a line with {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        example.name,
        out.status,
        started.elapsed(),
        example.expect,
    );
}

#[test]
fn every_example_runs_in_memory() {
    let mut ran = 0;
    for example in EXAMPLES.iter().filter(|e| e.in_memory) {
        run(example, "memory", &[]);
        ran += 1;
    }
    assert!(ran >= 6, "only {ran} examples run in memory");
}

#[test]
fn every_example_runs_on_redis() {
    for example in EXAMPLES {
        let scope = RedisScope::new(&format!("example-{}", example.name));
        run(
            example,
            "Redis",
            &[
                ("EVENTBUS_URL", scope.url.clone()),
                ("EVENTBUS_STREAM_PREFIX", scope.prefix.clone()),
            ],
        );
        // Its stream is the test's, deleted with the scope: an example that
        // named its own would leave it behind in the shared Redis.
        let exists: bool = redis::cmd("EXISTS")
            .arg(scope.stream())
            .query(&mut scope.conn())
            .expect("EXISTS");
        assert!(
            exists,
            "example `{}` on Redis did not write {} (it ignored EVENTBUS_STREAM_PREFIX)",
            example.name,
            scope.stream()
        );
    }
}

#[test]
fn every_example_runs_on_kafka() {
    // Joining a group on Tansu takes most of an example's 15-40 s, waiting:
    // three at a time, each three on a Tansu of their own (most examples
    // name their group `default`: on one broker they would join one group).
    std::thread::scope(|s| {
        for chunk in EXAMPLES.chunks(EXAMPLES.len().div_ceil(3)) {
            s.spawn(move || {
                let tansu = Tansu::start();
                for example in chunk {
                    run(
                        example,
                        "Kafka",
                        &[
                            ("EVENTBUS_URL", tansu.url()),
                            ("EVENTBUS_TOPIC_PREFIX", kafka::prefix(example.name)),
                        ],
                    );
                }
            });
        }
    });
}

/// A RabbitMQ vhost of the test's own, deleted (with everything the examples
/// declared in it) when dropped.
struct Vhost {
    name: String,
}

impl Vhost {
    fn new() -> Self {
        let name = format!(
            "eventbus-examples-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self { name }
    }

    /// The tests' broker URL with this vhost.
    fn url(&self) -> String {
        let base = common::url();
        let server = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(server, _vhost)| server);
        format!("{server}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (the RabbitMQ admin tool, package rabbitmq-server)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_example_runs_on_rabbitmq() {
    let vhost = Vhost::new();
    for example in EXAMPLES {
        run(example, "RabbitMQ", &[("EVENTBUS_URL", vhost.url())]);
    }
}
