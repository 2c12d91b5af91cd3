//! Side-by-side benchmark of eventbus, raw lapin and eventsource-py on the
//! local RabbitMQ: one run, the same workload, a table with ratios, written to
//! BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p eventbus-bench --bin bench -- --write BENCHMARKS.md
//! ```
//!
//! Every (system, scenario) runs in a child process of its own so that peak
//! memory is that system's alone.

mod cpu;
mod many;
mod poison;
mod raw;
mod sections;
mod soak;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use eventbus::{Bus, BusBuilder, DeliveryOrder, DomainEvent, Envelope, HandlerError};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The seed's OrderPlaced, about 400 bytes of JSON with its envelope.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
pub(crate) struct OrderPlaced {
    pub(crate) customer_id: String,
    pub(crate) total_amount: f64,
    pub(crate) currency: String,
    pub(crate) note: String,
}

pub(crate) fn order(i: usize) -> Envelope<OrderPlaced> {
    Envelope::new(
        uuid::Uuid::new_v4(),
        OrderPlaced {
            customer_id: format!("CUST-{i:08}"),
            total_amount: 99.99 + i as f64,
            currency: "EUR".into(),
            note: "leave the parcel with the neighbour".into(),
        },
    )
}

#[derive(Debug, Parser)]
#[command(about = "eventbus vs raw lapin vs eventsource-py on one RabbitMQ")]
struct Cli {
    #[command(subcommand)]
    command: Option<Child>,
    /// Broker.
    #[arg(
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        global = true
    )]
    url: String,
    /// Events for the publish and consume throughput runs.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Events for the latency run (at --rate per second).
    #[arg(long, default_value_t = 5_000)]
    latency_events: usize,
    /// Rate of the latency run, events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Backlog for the memory run.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Runs of each Rust throughput scenario; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Python interpreter with eventsource-py installed (skip Python when absent).
    #[arg(long)]
    python: Option<String>,
    /// Write the table to this file (BENCHMARKS.md).
    #[arg(long)]
    write: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    /// eventbus with its default ordering (per aggregate).
    Eventbus,
    /// eventbus with ordering off.
    EventbusUnordered,
    /// raw lapin acking each message.
    Lapin,
    /// raw lapin acking with `multiple` every 50 deliveries.
    LapinBatched,
}

#[derive(Debug, Subcommand)]
enum Child {
    /// Run one scenario for one system and print its figure as JSON.
    Run {
        #[arg(value_enum)]
        system: System,
        #[arg(value_enum)]
        scenario: Scenario,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long)]
        exchange: String,
    },
    /// Chaos soak (RELIABILITY.md): publish and consume COUNT events at RATE
    /// per second through a fault proxy in front of a RabbitMQ node of its
    /// own, cutting every connection and restarting the node on a schedule;
    /// prints confirmed, delivered, dead-lettered, lost and duplicates, and
    /// exits non-zero if anything confirmed was lost.
    Soak {
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds between cuts of every connection.
        #[arg(long, default_value_t = 15.0)]
        cut_every: f64,
        /// Seconds between broker restarts (stop_app / start_app).
        #[arg(long, default_value_t = 40.0)]
        restart_every: f64,
    },
    /// Fault case 7's latency figure (RELIABILITY.md): COUNT healthy events
    /// at RATE per second, publish-to-handler latency without and then with
    /// POISON events among them (each fails every attempt and is
    /// dead-lettered); exits non-zero unless each poison event was attempted
    /// max_retries + 1 times and dead-lettered once.
    Poison {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 20)]
        poison: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 3)]
        max_retries: u32,
        /// Milliseconds before the first retry (doubling after).
        #[arg(long, default_value_t = 200)]
        retry_base_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Publish,
    Consume,
    Latency,
    Memory,
}

/// One scenario's result.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Figure {
    pub(crate) per_second: Option<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    pub(crate) peak_rss_mb: Option<f64>,
    /// CPU of the consuming process per event, microseconds.
    #[serde(default)]
    pub(crate) cpu_us: Option<f64>,
    /// CPU of the (local) broker per event meanwhile, microseconds.
    #[serde(default)]
    pub(crate) broker_cpu_us: Option<f64>,
}

/// The name of RabbitMQ's process (the Erlang VM), whose CPU the consume runs report.
pub(crate) const BROKER_PROCESS: &str = "beam.smp";

pub(crate) const PREFETCH: u16 = 100;
pub(crate) const WINDOW: usize = 1000;

/// Peak resident memory of this process, MiB.
pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn percentiles(mut ms: Vec<f64>) -> Figure {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Figure {
        p50_ms: Some(at(0.5)),
        p99_ms: Some(at(0.99)),
        max_ms: ms.last().copied(),
        ..Figure::default()
    }
}

fn builder(url: &str, exchange: &str, ordering: DeliveryOrder) -> BusBuilder {
    let exchange = exchange.to_owned();
    Bus::builder()
        .url(url)
        .without_discovery()
        .configure(move |c| {
            c.exchange_name = exchange;
            c.ordering = ordering;
            c.prefetch_count = PREFETCH;
            c.publish_confirm_window = WINDOW;
        })
}

/// A bus whose one handler counts events and records their latency.
async fn counting_bus(
    url: &str,
    exchange: &str,
    target: usize,
    ordering: DeliveryOrder,
) -> (Bus, Arc<Counter>) {
    let counter = Arc::new(Counter::default());
    let c = counter.clone();
    let bus = builder(url, exchange, ordering)
        .handler::<OrderPlaced, _, _>("count", move |e: Arc<Envelope<OrderPlaced>>| {
            c.hit(e.meta().occurred_at(), target);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    (bus, counter)
}

#[derive(Default)]
pub(crate) struct Counter {
    n: AtomicUsize,
    done: Notify,
    latencies: std::sync::Mutex<Vec<f64>>,
}

impl Counter {
    pub(crate) fn hit(&self, occurred_at: chrono::DateTime<chrono::Utc>, target: usize) {
        let ms = (chrono::Utc::now() - occurred_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0;
        if let Ok(mut l) = self.latencies.lock() {
            l.push(ms);
        }
        if self.n.fetch_add(1, Ordering::AcqRel) + 1 == target {
            self.done.notify_one();
        }
    }

    pub(crate) async fn wait(&self) {
        self.done.notified().await;
    }

    pub(crate) fn latencies(&self) -> Vec<f64> {
        self.latencies.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

async fn eventbus_run(
    url: &str,
    ordering: DeliveryOrder,
    scenario: Scenario,
    count: usize,
    rate: u64,
    exchange: &str,
) -> Figure {
    match scenario {
        Scenario::Publish => {
            let (bus, _) = counting_bus(url, exchange, usize::MAX, ordering).await;
            let events: Vec<_> = (0..count).map(order).collect();
            let started = Instant::now();
            let report = bus.publish(events).await.expect("confirmed");
            let elapsed = started.elapsed();
            assert_eq!(report.published, count);
            bus.shutdown(Duration::from_secs(10)).await.expect("closes");
            Figure {
                per_second: Some(count as f64 / elapsed.as_secs_f64()),
                ..Figure::default()
            }
        }
        Scenario::Consume | Scenario::Memory => {
            let (bus, counter) = counting_bus(url, exchange, count, ordering).await;
            ready_then_wait_for_go();
            let cpu = cpu::Mark::now(BROKER_PROCESS);
            let started = Instant::now();
            bus.start_consuming().await.expect("consumes");
            counter.wait().await;
            let elapsed = started.elapsed();
            let (cpu_us, broker_cpu_us) = cpu.per_event(count);
            bus.shutdown(Duration::from_secs(10)).await.expect("closes");
            Figure {
                per_second: Some(count as f64 / elapsed.as_secs_f64()),
                peak_rss_mb: Some(peak_rss_mb()),
                cpu_us,
                broker_cpu_us,
                ..Figure::default()
            }
        }
        Scenario::Latency => {
            let (bus, counter) = counting_bus(url, exchange, count, ordering).await;
            bus.start_consuming().await.expect("consumes");
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for i in 0..count {
                tick.tick().await;
                // Tracked: shutdown waits for every confirm.
                bus.publish_background([order(i)]);
            }
            counter.wait().await;
            bus.shutdown(Duration::from_secs(10)).await.expect("closes");
            percentiles(counter.latencies())
        }
    }
}

/// Tells the harness the queue exists, then waits until it has filled it
/// (filling it here would count the prefill's memory as ours).
pub(crate) fn ready_then_wait_for_go() {
    use std::io::{BufRead, Write};
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// Nanoseconds per in-memory publish+dispatch with `types` registered event types.
async fn dispatch_ns(types: usize, rounds: usize) -> f64 {
    let mut b = Bus::builder()
        .memory()
        .without_discovery()
        .handler::<OrderPlaced, _, _>("count", |_e| std::future::ready(Ok::<_, HandlerError>(())));
    if types > 1 {
        b = many::register(b);
    }
    let bus = b.build().await.expect("builds");
    assert_eq!(
        bus.event_types().len(),
        if types > 1 { types + 1 } else { 1 }
    );
    let events: Vec<_> = (0..1000).map(order).collect();
    // Warm up, then measure.
    bus.publish(events.clone()).await.expect("delivers");
    let started = Instant::now();
    for _ in 0..rounds {
        bus.publish(events.clone()).await.expect("delivers");
    }
    started.elapsed().as_nanos() as f64 / (rounds * events.len()) as f64
}

fn child(
    rt: &tokio::runtime::Runtime,
    url: &str,
    system: System,
    scenario: Scenario,
    count: usize,
    rate: u64,
) -> Figure {
    let exchange = format!(
        "bench.{system:?}.{scenario:?}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
    .to_lowercase();
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.args([
        "run",
        system
            .to_possible_value()
            .expect("no skipped variants")
            .get_name(),
        &format!("{scenario:?}").to_lowercase(),
    ])
    .args([
        "--count",
        &count.to_string(),
        "--rate",
        &rate.to_string(),
        "--exchange",
        &exchange,
        "--url",
        url,
    ]);
    figure_of(rt, cmd, url, &exchange, count)
}

/// Runs a scenario process: fills its queue when it says "ready", returns its last line as a figure.
fn figure_of(
    rt: &tokio::runtime::Runtime,
    mut cmd: Command,
    url: &str,
    exchange: &str,
    count: usize,
) -> Figure {
    use std::io::{BufRead, BufReader, Write};
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("scenario process starts");
    let out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut last = String::new();
    for line in out {
        let line = line.expect("utf-8");
        if line == "ready" {
            rt.block_on(raw::prefill(url, exchange, count));
            let mut stdin = child.stdin.take().expect("piped");
            writeln!(stdin, "go").expect("the scenario reads");
            continue;
        }
        last = line;
    }
    let status = child.wait().expect("exits");
    raw::cleanup_blocking(url, exchange);
    assert!(status.success(), "{cmd:?} failed");
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{cmd:?}: not a figure ({e}): {last}"))
}

fn python(
    rt: &tokio::runtime::Runtime,
    python: &str,
    url: &str,
    scenario: &str,
    count: usize,
    rate: u64,
) -> Figure {
    let exchange = format!(
        "bench.python.{scenario}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let mut cmd = Command::new(python);
    cmd.args([
        concat!(env!("CARGO_MANIFEST_DIR"), "/py_bench.py"),
        scenario,
        "--url",
        url,
        "--exchange",
        &exchange,
    ])
    .args(["--count", &count.to_string(), "--rate", &rate.to_string()]);
    figure_of(rt, cmd, url, &exchange, count)
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(Child::Run {
        system,
        scenario,
        count,
        rate,
        exchange,
    }) = cli.command
    {
        let figure = rt.block_on(async {
            match system {
                System::Eventbus => {
                    let order = DeliveryOrder::PerAggregate;
                    eventbus_run(&cli.url, order, scenario, count, rate, &exchange).await
                }
                System::EventbusUnordered => {
                    let order = DeliveryOrder::Unordered;
                    eventbus_run(&cli.url, order, scenario, count, rate, &exchange).await
                }
                System::Lapin => raw::run(&cli.url, false, scenario, count, rate, &exchange).await,
                System::LapinBatched => {
                    raw::run(&cli.url, true, scenario, count, rate, &exchange).await
                }
            }
        });
        println!("{}", serde_json::to_string(&figure).expect("serializes"));
        return;
    }
    if let Some(Child::Soak {
        count,
        rate,
        cut_every,
        restart_every,
    }) = cli.command
    {
        let plan = soak::Plan {
            count,
            rate,
            cut_every: Duration::from_secs_f64(cut_every),
            restart_every: Duration::from_secs_f64(restart_every),
        };
        if !rt.block_on(soak::run(plan)) {
            std::process::exit(1);
        }
        return;
    }
    if let Some(Child::Poison {
        count,
        poison,
        rate,
        max_retries,
        retry_base_ms,
    }) = cli.command
    {
        let plan = poison::Plan {
            count,
            poison,
            rate,
            max_retries,
            base_delay: Duration::from_millis(retry_base_ms),
        };
        if !rt.block_on(poison::run(&cli.url, plan)) {
            std::process::exit(1);
        }
        return;
    }
    report::run(&cli, &rt);
}

mod report {
    use super::*;

    pub(super) fn run(cli: &Cli, rt: &tokio::runtime::Runtime) {
        let mut rows: Vec<(String, [Option<f64>; 3], bool)> = Vec::new();
        let py = cli.python.as_deref();
        let figures_of = |systems: [System; 2], scenario: Scenario, count: usize| -> [Figure; 3] {
            eprintln!("running {scenario:?} ({count} events)...");
            // Throughput is noisy (the broker syncs to disk): alternate the two Rust
            // systems `repeat` times and keep each one's median run.
            let runs = if matches!(scenario, Scenario::Publish | Scenario::Consume) {
                cli.repeat.max(1)
            } else {
                1
            };
            let mut all: [Vec<Figure>; 2] = [Vec::new(), Vec::new()];
            for _ in 0..runs {
                for (i, s) in systems.iter().enumerate() {
                    all[i].push(child(rt, &cli.url, *s, scenario, count, cli.rate));
                }
            }
            let [a, b] = all.map(|mut v| {
                v.sort_by(|x, y| {
                    x.per_second
                        .unwrap_or(0.0)
                        .total_cmp(&y.per_second.unwrap_or(0.0))
                });
                v.swap_remove(v.len() / 2)
            });
            let c = py
                .map(|p| {
                    python(
                        rt,
                        p,
                        &cli.url,
                        &format!("{scenario:?}").to_lowercase(),
                        count,
                        cli.rate,
                    )
                })
                .unwrap_or_default();
            [a, b, c]
        };
        let figures = |scenario: Scenario, count: usize| {
            figures_of([System::Eventbus, System::Lapin], scenario, count)
        };
        let publish = figures(Scenario::Publish, cli.events);
        rows.push((
            "publish throughput (events/s)".into(),
            publish.clone().map(|f| f.per_second),
            true,
        ));
        // Consume against the best plain loop (acks batched with `multiple`).
        let consume = figures_of(
            [System::Eventbus, System::LapinBatched],
            Scenario::Consume,
            cli.events,
        );
        rows.push((
            "consume throughput, ordering per aggregate (default) vs raw lapin with batched acks (events/s)".into(),
            consume.clone().map(|f| f.per_second),
            true,
        ));
        rows.push((
            "client CPU per consumed event, the same runs (µs)".into(),
            consume.clone().map(|f| f.cpu_us),
            false,
        ));
        rows.push((
            "RabbitMQ's CPU per consumed event, the same runs (µs)".into(),
            consume.clone().map(|f| f.broker_cpu_us),
            false,
        ));
        let unordered = figures_of(
            [System::EventbusUnordered, System::Lapin],
            Scenario::Consume,
            cli.events,
        );
        rows.push((
            "consume throughput, ordering off vs raw lapin acking each message (events/s)".into(),
            unordered.clone().map(|f| f.per_second),
            true,
        ));
        let latency = figures(Scenario::Latency, cli.latency_events);
        rows.push((
            format!("latency p50 at {}/s (ms)", cli.rate),
            latency.clone().map(|f| f.p50_ms),
            false,
        ));
        rows.push((
            format!("latency p99 at {}/s (ms)", cli.rate),
            latency.clone().map(|f| f.p99_ms),
            false,
        ));
        rows.push((
            format!("latency max at {}/s (ms)", cli.rate),
            latency.map(|f| f.max_ms),
            false,
        ));
        let small = figures(Scenario::Memory, cli.backlog / 10);
        rows.push((
            format!("peak client memory, {} backlog (MiB)", cli.backlog / 10),
            small.clone().map(|f| f.peak_rss_mb),
            false,
        ));
        let big = figures(Scenario::Memory, cli.backlog);
        rows.push((
            format!("peak client memory, {} backlog (MiB)", cli.backlog),
            big.clone().map(|f| f.peak_rss_mb),
            false,
        ));
        let (one, two_hundred) =
            rt.block_on(async { (dispatch_ns(1, 20).await, dispatch_ns(200, 20).await) });
        let (py_one, py_200) = py.map_or((None, None), |p| {
            let f = python(rt, p, &cli.url, "dispatch", 1, 0);
            (f.p50_ms.map(|ms| ms * 1e6), f.p99_ms.map(|ms| ms * 1e6))
        });
        rows.push((
            "dispatch, 1 event type (ns/event)".into(),
            [Some(one), None, py_one],
            false,
        ));
        rows.push((
            "dispatch, 200 event types (ns/event)".into(),
            [Some(two_hundred), None, py_200],
            false,
        ));

        let table = render(&rows);
        println!("{table}");
        let targets = targets(&publish, &consume, &small, &big, &rows, one, two_hundred);
        println!("{targets}");
        if let Some(path) = &cli.write {
            let doc = document(cli, &table, &targets);
            crate::sections::write_section(path, None, &doc).expect("writes the report");
            eprintln!("wrote {path}");
        }
    }

    fn fmt(v: Option<f64>) -> String {
        match v {
            Some(v) if v >= 100.0 => format!("{v:.0}"),
            Some(v) => format!("{v:.2}"),
            None => "-".into(),
        }
    }

    fn ratio(a: Option<f64>, b: Option<f64>) -> String {
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        }
    }

    fn render(rows: &[(String, [Option<f64>; 3], bool)]) -> String {
        let mut out = String::from(
            "| figure | eventbus | raw lapin | eventsource-py | eventbus / lapin | eventbus / eventsource-py |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for (name, [a, b, c], _) in rows {
            out += &format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                fmt(*a),
                fmt(*b),
                fmt(*c),
                ratio(*a, *b),
                ratio(*a, *c)
            );
        }
        out
    }

    fn targets(
        publish: &[Figure; 3],
        consume: &[Figure; 3],
        small: &[Figure; 3],
        memory: &[Figure; 3],
        rows: &[(String, [Option<f64>; 3], bool)],
        one: f64,
        two_hundred: f64,
    ) -> String {
        let check = |ok: bool| if ok { "met" } else { "MISSED" };
        let r = |f: &[Figure; 3], i: usize| match (f[0].per_second, f[i].per_second) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let p99 = rows
            .iter()
            .find(|r| r.0.contains("p99"))
            .and_then(|r| r.1[0]);
        let lines = [
            format!(
                "- publish throughput >= 0.95 x raw lapin: {} ({})",
                check(r(publish, 1).is_some_and(|x| x >= 0.95)),
                ratio(r(publish, 1), Some(1.0))
            ),
            format!(
                "- consume throughput (ordering per aggregate) >= 0.9 x raw lapin with batched acks: {} ({})",
                check(r(consume, 1).is_some_and(|x| x >= 0.9)),
                ratio(r(consume, 1), Some(1.0))
            ),
            format!(
                "- publish >= 5 x eventsource-py: {} ({})",
                check(r(publish, 2).is_some_and(|x| x >= 5.0)),
                ratio(r(publish, 2), Some(1.0))
            ),
            format!(
                "- consume (ordering per aggregate) >= 8 x eventsource-py: {} ({})",
                check(r(consume, 2).is_some_and(|x| x >= 8.0)),
                ratio(r(consume, 2), Some(1.0))
            ),
            format!(
                "- p99 latency at 1,000 events/s < 5 ms: {} ({} ms)",
                check(p99.is_some_and(|p| p < 5.0)),
                fmt(p99)
            ),
            format!(
                "- client memory < 64 MB with the big backlog: {} ({} MiB)",
                check(memory[0].peak_rss_mb.is_some_and(|m| m < 64.0)),
                fmt(memory[0].peak_rss_mb)
            ),
            format!(
                "- client memory flat from the small to the big backlog (within 10%): {} ({} -> {} MiB)",
                check(matches!(
                    (small[0].peak_rss_mb, memory[0].peak_rss_mb),
                    (Some(a), Some(b)) if b <= a * 1.1
                )),
                fmt(small[0].peak_rss_mb),
                fmt(memory[0].peak_rss_mb)
            ),
            format!(
                "- dispatch with 200 types within 10% of 1 type: {} ({:.2} x)",
                check(two_hundred <= one * 1.10),
                two_hundred / one
            ),
        ];
        lines.join("\n")
    }

    fn machine() -> String {
        let run = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        format!(
            "- {} CPU(s): {cpu}\n- {}\n- RabbitMQ {} (local, 127.0.0.1)\n- {}",
            run("nproc", &[]),
            run("uname", &["-srm"]),
            run("rabbitmqctl", &["version"]),
            run("rustc", &["--version"]),
        )
    }

    fn document(cli: &Cli, table: &str, targets: &str) -> String {
        format!(
            "# Benchmarks\n\nOne run of `bench` against the local RabbitMQ: eventbus, raw lapin written the plain good way \
with the same settings (persistent messages, publisher confirms with {WINDOW} in flight, `mandatory`, manual acks, \
prefetch {PREFETCH}), and eventsource-py's `RabbitMQEventBus` driven by `bench/py_bench.py`. Each (system, scenario) \
runs in its own process; the Rust throughput figures are the median of `--repeat` alternating runs, eventsource-py's \
a single run. The event is the seed's OrderPlaced, about 400 bytes of JSON.\n\n\
Command:\n\n```sh\ncargo run --release -p eventbus-bench --bin bench -- --events {} --latency-events {} --rate {} --backlog {} \
--repeat {} --python target/tmp/interop-venv/bin/python --write BENCHMARKS.md\n```\n\nMachine:\n\n{}\n\n## Results\n\n{table}\n\
Throughput: publish = confirmed events/s for one `publish` of all events; consume = events/s handled and acked from a \
pre-filled backlog. CPU per consumed event: user + system time of the consuming process, and of the broker's \
`beam.smp` (it shares the machine's cores), from `/proc` over the same timed window, divided by the events (10 ms \
resolution). Latency: from `occurred_at` (set just before publishing) to the handler, at a fixed rate. Memory: \
peak RSS (VmHWM / ru_maxrss) of the consuming process over the whole run. Dispatch: in-memory publish + dispatch of one \
event type with 1 or 200 event types registered (eventsource-py: `InMemoryEventBus`).\n\n## Targets\n\n{targets}\n",
            cli.events,
            cli.latency_events,
            cli.rate,
            cli.backlog,
            cli.repeat,
            machine()
        )
    }
}
