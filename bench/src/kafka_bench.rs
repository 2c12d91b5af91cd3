//! `bench-kafka`: eventbus on Kafka vs a plain loop on `rdkafka` vs
//! eventsource-py's `KafkaEventBus` (aiokafka), in the same run.
//!
//! ```text
//! bash tests/kafka/tansu.sh    # the Kafka-protocol broker the tests use
//! cargo run --release -p eventbus-bench --bin bench-kafka -- --events 20000 \
//!     --python target/tmp/interop-venv/bin/python --write BENCHMARKS.md
//! ```
//!
//! Without `--url` it starts Tansu (`target/tmp/tansu`, in-memory storage) on
//! a free port and stops it by its pid at the end. Each (system, scenario)
//! runs in a process of its own; consume runs read a topic the harness
//! pre-filled (a new group reads it from the start). `--write` replaces the
//! Kafka section of the file and keeps the rest.

mod cpu;
mod sections;
mod side;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use eventbus::{Bus, Envelope};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use side::{
    ChildCmd, Figure, OrderPlaced, Scenario, System, order, over, peak_rss_mb, scenario_name,
    target,
};

const MARKER: &str = "<!-- bench-kafka: this section is written by `bench-kafka --write` -->";

#[derive(Debug, Parser)]
struct Cli {
    /// `kafka://host:port`; without it, a Tansu of the bench's own.
    #[arg(long)]
    url: Option<String>,
    /// Events for the publish and consume runs.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Python with `eventsource-py[kafka]` 0.15.1 (skipped when absent).
    #[arg(long)]
    python: Option<String>,
    /// Replace the Kafka section of this Markdown file.
    #[arg(long)]
    write: Option<String>,
    #[command(subcommand)]
    child: Option<ChildCmd>,
}

/// The name of the broker's process, whose CPU the consume runs report.
const BROKER_PROCESS: &str = "tansu";

fn builder(url: &str, prefix: &str) -> eventbus::BusBuilder {
    let prefix = prefix.to_owned();
    Bus::builder()
        .url(url)
        .without_discovery()
        .configure(move |c| c.topic_prefix = prefix)
}

fn bootstrap(url: &str) -> &str {
    url.strip_prefix("kafka://").unwrap_or(url)
}

/// eventsource-py's headers, built the plain way.
fn headers(e: &Envelope<OrderPlaced>) -> OwnedHeaders {
    let m = e.meta();
    let values = [
        ("event_id", m.event_id().to_string()),
        ("event_type", m.event_type().to_owned()),
        ("aggregate_id", m.aggregate_id().to_string()),
        ("aggregate_type", m.aggregate_type().to_owned()),
        ("aggregate_version", m.aggregate_version().to_string()),
        (
            "occurred_at",
            m.occurred_at()
                .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                .to_string(),
        ),
        ("correlation_id", m.correlation_id().to_string()),
    ];
    values
        .iter()
        .fold(OwnedHeaders::new_with_capacity(8), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
}

async fn plain_child(scenario: Scenario, count: usize, prefix: &str, url: &str) -> Figure {
    let topic = format!("{prefix}.stream");
    let per_second = match scenario {
        Scenario::Publish => {
            // The producer settings eventbus uses (eventsource-py's plus idempotence).
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap(url))
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("partitioner", "murmur2_random")
                .set("compression.type", "gzip")
                .set("linger.ms", "5")
                .set("batch.size", "16384")
                .set("queue.buffering.max.messages", "100000")
                .create()
                .expect("producer");
            let events: Vec<_> = (0..count).map(order).collect();
            let start = Instant::now();
            let mut pending: FuturesUnordered<_> = events
                .iter()
                .map(|e| {
                    let key = e.meta().aggregate_id().to_string();
                    let any = eventbus::AnyEnvelope::from(e.clone());
                    let value = serde_json::to_vec(&any.to_json().expect("encodes")).expect("JSON");
                    let producer = producer.clone();
                    let topic = topic.clone();
                    let headers = headers(e);
                    async move {
                        let record = FutureRecord::to(&topic)
                            .key(&key)
                            .payload(&value)
                            .headers(headers);
                        producer
                            .send(record, Duration::from_secs(30))
                            .await
                            .expect("delivered");
                    }
                })
                .collect();
            while pending.next().await.is_some() {}
            count as f64 / start.elapsed().as_secs_f64()
        }
        Scenario::Consume => {
            let consumer: StreamConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap(url))
                .set("group.id", "plain")
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .expect("consumer");
            consumer.subscribe(&[&topic]).expect("subscribes");
            let mut window = None;
            let mut handled = 0;
            while handled < count {
                let message = consumer.recv().await.expect("a record");
                let window = *window.get_or_insert_with(|| side::Window::open(BROKER_PROCESS));
                if let Some(value) = message.payload() {
                    let _: OrderPlaced = serde_json::from_slice(value).expect("JSON");
                }
                handled += 1;
                // Commit every 1,000 records and at the end, as a batch consumer does.
                if handled % 1000 == 0 || handled == count {
                    consumer
                        .commit_message(&message, CommitMode::Async)
                        .expect("commit");
                }
                if handled == count {
                    return window.close(count - 1);
                }
            }
            0.0
        }
    };
    Figure {
        per_second,
        peak_rss_mb: peak_rss_mb(),
        ..Figure::default()
    }
}

fn run_python(
    cli: &Cli,
    url: &str,
    scenario: Scenario,
    count: usize,
    prefix: &str,
) -> Option<Figure> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/kafka_py_bench.py");
    side::run_python(
        cli.python.as_deref(),
        script,
        &[
            scenario_name(scenario),
            "--bootstrap",
            bootstrap(url),
            "--prefix",
            prefix,
            "--count",
            &count.to_string(),
        ],
    )
}

/// A topic of `count` events for a consume run, written by eventbus (which
/// also creates the topic; publish runs get theirs created the same way).
async fn prefill(url: &str, prefix: &str, count: usize) {
    let bus = builder(url, prefix)
        .event::<OrderPlaced>()
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

/// Tansu on a free port, stopped by its pid when dropped.
struct Tansu(Child);

impl Tansu {
    fn start() -> (Self, String) {
        let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tmp/tansu");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listener = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} starts (fetch it with tests/kafka/tansu.sh): {e}"));
        let tansu = Self(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Tansu did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (tansu, format!("kafka://127.0.0.1:{port}"))
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
                        true,
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
    let (_tansu, url) = match &cli.url {
        Some(url) => (None, url.clone()),
        None => {
            let (tansu, url) = Tansu::start();
            (Some(tansu), url)
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = |what: &str| format!("bench-{}-{what}", &run_id[..8]);
    // Every run gets topics of its own; consume runs read one the harness
    // pre-filled with `prefilled` events.
    let best_of_two = |scenario: Scenario, prefilled: usize| -> Vec<Option<Figure>> {
        side::best_of_two(|system, n| {
            let p = prefix(&format!("{}-{system:?}-{n}", scenario_name(scenario)));
            rt.block_on(prefill(&url, &p, prefilled));
            side::run_measurement(&url, system, scenario, cli.events, &p)
        })
        .map(Some)
        .to_vec()
    };
    let mut publish = best_of_two(Scenario::Publish, 0);
    let p = prefix("p-py");
    rt.block_on(prefill(&url, &p, 0));
    publish.push(run_python(
        &cli,
        &url,
        Scenario::Publish,
        cli.events / 4,
        &p,
    ));
    let mut consume = best_of_two(Scenario::Consume, cli.events);
    let p = prefix("c-py");
    rt.block_on(prefill(&url, &p, cli.events / 4));
    consume.push(run_python(
        &cli,
        &url,
        Scenario::Consume,
        cli.events / 4,
        &p,
    ));
    let [client_cpu, broker_cpu] = side::cpu_rows(&consume, "Tansu");
    let (publish, consume) = (side::rates(&publish), side::rates(&consume));
    let rows = [
        ("publish throughput (events/s)".to_owned(), publish.clone()),
        (
            "consume throughput, ordering per aggregate (events/s)".to_owned(),
            consume.clone(),
        ),
        client_cpu,
        broker_cpu,
    ];
    let table = side::table("plain rdkafka loop", &rows);
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
            "consume >= 5 x eventsource-py",
            over(consume[0], consume[2]),
            |x| x >= 5.0,
        ),
    ]
    .concat();
    let broker = if cli.url.is_some() {
        "the given broker"
    } else {
        "Tansu 0.6 (in-memory storage) started by the bench; production runs Apache Kafka, whose figures differ"
    };
    let section = format!(
        "## Kafka\n\nOne run of `bench-kafka` against {broker}: eventbus, a plain loop on `rdkafka` (the same producer \
settings: idempotent, `acks=all`, gzip, `linger.ms=5`, every send awaited concurrently; a `StreamConsumer` that decodes \
each record and commits every 1,000), and eventsource-py's `KafkaEventBus` (`bench/kafka_py_bench.py`, aiokafka; its runs \
use a quarter of the events). One process per run; eventbus and the plain loop run twice each, in the order eventbus, \
plain, plain, eventbus, and each one's best run counts; consume runs read a topic the harness pre-filled \
(3 partitions, eventbus's default) and are timed from the first record handled: joining a group on Tansu takes 15-25 s \
with librdkafka (about 1 s with aiokafka), which would otherwise swamp the figure. The CPU rows are the user + system \
time of the consuming process, and of the broker's, over that same window divided by its events (`/proc`, 10 ms \
resolution; `os.times` for eventsource-py).\n\n```sh\nbash tests/kafka/tansu.sh\ncargo run --release -p eventbus-bench \
--bin bench-kafka -- --events {} --python target/tmp/interop-venv/bin/python --write BENCHMARKS.md\n```\n\n\
{table}\n### Targets\n\n{targets}",
        cli.events
    );
    println!("{section}");
    if let Some(path) = &cli.write {
        sections::write_section(path, Some(MARKER), &section).expect("write");
    }
}
