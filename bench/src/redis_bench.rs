//! `bench-redis`: eventbus on Redis Streams vs a plain loop on the `redis`
//! crate vs eventsource-py's `RedisEventBus`, in the same run.
//!
//! ```text
//! cargo run --release -p eventbus-bench --bin bench-redis -- --events 20000 --backlog 100000 \
//!     --python target/tmp/interop-venv/bin/python --write BENCHMARKS.md
//! ```
//!
//! Each (system, scenario) runs in a process of its own; consume runs start on
//! a stream the harness pre-filled (a new group reads it from the start).
//! `--write` replaces the Redis section of the file (from its marker line to
//! the next section marker) and keeps the rest.

mod cpu;
mod sections;
mod side;

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use eventbus::{Bus, Envelope};
use futures_util::StreamExt;
use serde::Serialize;

use side::{
    ChildCmd, Figure, OrderPlaced, Scenario, System, order, over, peak_rss_mb, scenario_name,
    target,
};

const MARKER: &str = "<!-- bench-redis: this section is written by `bench-redis --write` -->";

#[derive(Debug, Parser)]
struct Cli {
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    url: String,
    /// Events for the publish and consume runs.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// The big backlog for the memory run (the small one is a tenth).
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Python with `eventsource-py[redis]` 0.15.1 (skipped when absent).
    #[arg(long)]
    python: Option<String>,
    /// Replace the Redis section of this Markdown file.
    #[arg(long)]
    write: Option<String>,
    #[command(subcommand)]
    child: Option<ChildCmd>,
}

fn builder(url: &str, prefix: &str) -> eventbus::BusBuilder {
    let prefix = prefix.to_owned();
    Bus::builder()
        .url(url)
        .without_discovery()
        .configure(move |c| {
            c.stream_prefix = prefix;
            c.block_ms = 100;
        })
}

/// The same XADD fields eventbus writes, built the plain way.
fn fields(e: &Envelope<OrderPlaced>) -> Vec<(&'static str, String)> {
    let m = e.meta();
    vec![
        ("event_id", m.event_id().to_string()),
        ("event_type", m.event_type().to_owned()),
        ("aggregate_id", m.aggregate_id().to_string()),
        ("aggregate_type", m.aggregate_type().to_owned()),
        ("tenant_id", String::new()),
        (
            "occurred_at",
            m.occurred_at()
                .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                .to_string(),
        ),
        (
            "payload",
            serde_json::to_string(&Body::of(e)).unwrap_or_default(),
        ),
    ]
}

/// eventsource-py's JSON body, serialized the plain serde way.
#[derive(Serialize)]
struct Body<'a> {
    event_id: uuid::Uuid,
    event_type: &'a str,
    event_version: u32,
    occurred_at: String,
    aggregate_id: uuid::Uuid,
    aggregate_type: &'a str,
    aggregate_version: u64,
    tenant_id: Option<uuid::Uuid>,
    actor_id: Option<&'a str>,
    correlation_id: uuid::Uuid,
    causation_id: Option<uuid::Uuid>,
    metadata: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    event: &'a OrderPlaced,
}

impl<'a> Body<'a> {
    fn of(e: &'a Envelope<OrderPlaced>) -> Self {
        let m = e.meta();
        Self {
            event_id: m.event_id(),
            event_type: m.event_type(),
            event_version: m.event_version(),
            occurred_at: m.occurred_at().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            aggregate_id: m.aggregate_id(),
            aggregate_type: m.aggregate_type(),
            aggregate_version: m.aggregate_version(),
            tenant_id: m.tenant_id(),
            actor_id: m.actor_id(),
            correlation_id: m.correlation_id(),
            causation_id: m.causation_id(),
            metadata: m.metadata(),
            event: e.event(),
        }
    }
}

/// The name of the broker's process, whose CPU the consume runs report.
const BROKER_PROCESS: &str = "redis-server";

async fn plain_child(scenario: Scenario, count: usize, prefix: &str, url: &str) -> Figure {
    let client = redis::Client::open(url).expect("URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let stream = format!("{prefix}:stream");
    let per_second = match scenario {
        Scenario::Publish => {
            let events: Vec<_> = (0..count).map(order).collect();
            let start = Instant::now();
            // Chunks of 100 in one pipeline each, 10 in flight.
            futures_util::stream::iter(events.chunks(100))
                .map(|chunk| {
                    let mut conn = conn.clone();
                    let stream = stream.clone();
                    async move {
                        let mut pipe = redis::pipe();
                        for e in chunk {
                            pipe.cmd("XADD").arg(&stream).arg("*");
                            for (k, v) in fields(e) {
                                pipe.arg(k).arg(v);
                            }
                        }
                        pipe.query_async::<Vec<String>>(&mut conn)
                            .await
                            .expect("XADD")
                    }
                })
                .buffer_unordered(10)
                .collect::<Vec<_>>()
                .await;
            count as f64 / start.elapsed().as_secs_f64()
        }
        Scenario::Consume => {
            let window = side::Window::open(BROKER_PROCESS);
            let _: Result<(), _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg("plain")
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            let mut handled = 0;
            while handled < count {
                let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("plain")
                    .arg("c1")
                    .arg("COUNT")
                    .arg(100)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .expect("XREADGROUP");
                let mut ids = Vec::new();
                for key in reply.keys {
                    for entry in key.ids {
                        if let Some(redis::Value::BulkString(p)) = entry.map.get("payload") {
                            let _: OrderPlaced = serde_json::from_slice(p).expect("JSON");
                        }
                        ids.push(entry.id);
                    }
                }
                if !ids.is_empty() {
                    handled += ids.len();
                    let _: i64 = redis::cmd("XACK")
                        .arg(&stream)
                        .arg("plain")
                        .arg(&ids)
                        .query_async(&mut conn)
                        .await
                        .expect("XACK");
                }
            }
            return window.close(count);
        }
    };
    Figure {
        per_second,
        peak_rss_mb: peak_rss_mb(),
        ..Figure::default()
    }
}

fn run_python(cli: &Cli, scenario: Scenario, count: usize, prefix: &str) -> Option<Figure> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/redis_py_bench.py");
    side::run_python(
        cli.python.as_deref(),
        script,
        &[
            scenario_name(scenario),
            "--url",
            &cli.url,
            "--prefix",
            prefix,
            "--count",
            &count.to_string(),
        ],
    )
}

fn delete_prefix(url: &str, prefix: &str) {
    let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    for key in keys {
        let _: Result<(), _> = redis::cmd("DEL").arg(key).query(&mut conn);
    }
}

/// A stream of `count` events for a consume run, written by eventbus.
async fn prefill(url: &str, prefix: &str, count: usize) {
    let bus = builder(url, prefix)
        .event::<OrderPlaced>()
        .without_topology()
        .build()
        .await
        .expect("connects");
    for start in (0..count).step_by(10_000) {
        let events: Vec<_> = (start..(start + 10_000).min(count)).map(order).collect();
        let report = bus.publish_batch(events, false).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

fn main() {
    let cli = Cli::parse();
    if let Some(ChildCmd::Child {
        system,
        scenario,
        count,
        prefix,
        url,
    }) = &cli.child
    {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let figure = rt.block_on(async {
            match system {
                System::Eventbus => {
                    side::eventbus_child(
                        builder(url, prefix),
                        *scenario,
                        *count,
                        false,
                        BROKER_PROCESS,
                    )
                    .await
                }
                System::Plain => plain_child(*scenario, *count, prefix, url).await,
            }
        });
        println!("{}", serde_json::to_string(&figure).expect("JSON"));
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let n = std::cell::Cell::new(0);
    let fresh = || {
        n.set(n.get() + 1);
        format!("bench-{}-{}", &run_id[..8], n.get())
    };
    // Publish runs write into an empty stream of their own; consume runs read
    // a stream of their own that the harness pre-filled with `prefilled`.
    let best_of_two = |scenario: Scenario, prefilled: usize| -> [Figure; 2] {
        side::best_of_two(|system, _| {
            let prefix = fresh();
            rt.block_on(prefill(&cli.url, &prefix, prefilled));
            let figure = side::run_measurement(&cli.url, system, scenario, cli.events, &prefix);
            delete_prefix(&cli.url, &prefix);
            figure
        })
    };
    let mut publish = best_of_two(Scenario::Publish, 0).map(Some).to_vec();
    let prefix = fresh();
    publish.push(run_python(&cli, Scenario::Publish, cli.events / 4, &prefix));
    delete_prefix(&cli.url, &prefix);
    let mut consume = best_of_two(Scenario::Consume, cli.events)
        .map(Some)
        .to_vec();
    let prefix = fresh();
    rt.block_on(prefill(&cli.url, &prefix, cli.events));
    consume.push(run_python(&cli, Scenario::Consume, cli.events, &prefix));
    delete_prefix(&cli.url, &prefix);
    let [client_cpu, broker_cpu] = side::cpu_rows(&consume, "Redis");
    let (publish, consume) = (side::rates(&publish), side::rates(&consume));
    // Memory: one run each, from a small and a big pre-filled backlog.
    let consume_at = |count: usize| -> Vec<Option<Figure>> {
        let mut out = Vec::new();
        for system in [System::Eventbus, System::Plain] {
            let prefix = format!("bench-{}-c{count}-{system:?}", &run_id[..8]);
            rt.block_on(prefill(&cli.url, &prefix, count));
            out.push(Some(side::run_measurement(
                &cli.url,
                system,
                Scenario::Consume,
                count,
                &prefix,
            )));
            delete_prefix(&cli.url, &prefix);
        }
        out.push(None);
        out
    };
    let small = consume_at(cli.backlog / 10);
    let big = consume_at(cli.backlog);
    let rss = |v: &[Option<Figure>]| {
        v.iter()
            .map(|f| f.map(|f| f.peak_rss_mb))
            .collect::<Vec<_>>()
    };
    let rows = [
        ("publish throughput (events/s)", publish.clone()),
        (
            "consume throughput, ordering per aggregate (events/s)",
            consume.clone(),
        ),
        (&*client_cpu.0, client_cpu.1),
        (&*broker_cpu.0, broker_cpu.1),
        (
            &*format!("peak client memory, {} backlog (MiB)", cli.backlog / 10),
            rss(&small),
        ),
        (
            &*format!("peak client memory, {} backlog (MiB)", cli.backlog),
            rss(&big),
        ),
    ]
    .map(|(name, v)| (name.to_owned(), v));
    let table = side::table("plain redis loop", &rows);
    let flat = over(rss(&big)[0], rss(&small)[0]);
    let targets = [
        target(
            "publish >= 0.9 x the plain loop",
            over(publish[0], publish[1]),
            |x| x >= 0.9,
        ),
        target(
            "consume >= 0.9 x the plain loop",
            over(consume[0], consume[1]),
            |x| x >= 0.9,
        ),
        target(
            "publish >= 5 x eventsource-py",
            over(publish[0], publish[2]),
            |x| x >= 5.0,
        ),
        target(
            "consume >= 5 x eventsource-py",
            over(consume[0], consume[2]),
            |x| x >= 5.0,
        ),
        target(
            &format!(
                "memory flat from the small to the big backlog (within 10%; {} -> {} MiB)",
                side::fmt(rss(&small)[0]),
                side::fmt(rss(&big)[0])
            ),
            flat,
            |x| x <= 1.1,
        ),
    ]
    .concat();
    let redis_version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let section = format!(
        "## Redis Streams\n\nOne run of `bench-redis` against the local Redis ({redis_version}): eventbus, a plain loop on the \
`redis` crate (pipelined `XADD`s in chunks of 100 with 10 in flight; `XREADGROUP COUNT 100`, decode, one `XACK` per read), \
and eventsource-py's `RedisEventBus` (`bench/redis_py_bench.py`; its publish run uses a quarter of the events). One process \
per run; the throughput runs go eventbus, plain, plain, eventbus and each system's best of two counts (the first run into \
a fresh server pays for growing its memory, and a single run on this 2-core machine varies by 10-20%); consume runs read a \
stream the harness pre-filled; the CPU rows are the user + system time of the consuming process, and of \
`redis-server`, over the consume run's timed window divided by its events (`/proc`, 10 ms resolution; `os.times` for \
eventsource-py); the memory rows are one run each.\n\n```sh\ncargo run --release -p eventbus-bench \
--bin bench-redis -- --events {} --backlog {} --python target/tmp/interop-venv/bin/python --write BENCHMARKS.md\n```\n\n\
{table}\n### Targets\n\n{targets}",
        cli.events, cli.backlog
    );
    println!("{section}");
    if let Some(path) = &cli.write {
        sections::write_section(path, Some(MARKER), &section).expect("write");
    }
}
