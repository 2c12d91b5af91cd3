//! What the side-by-side benchmarks of one broker share (`bench-redis`,
//! `bench-kafka`): a child process per measurement reporting a [`Figure`],
//! eventsource-py's script run the same way, and the Markdown table.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use eventbus::{BusBuilder, DomainEvent, Envelope, HandlerError};
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

#[derive(Debug, Subcommand)]
pub(crate) enum ChildCmd {
    /// One measurement (run by the harness).
    Child {
        #[arg(long)]
        system: System,
        #[arg(long)]
        scenario: Scenario,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        url: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum System {
    Eventbus,
    Plain,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Scenario {
    Publish,
    Consume,
}

pub(crate) fn scenario_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Publish => "publish",
        Scenario::Consume => "consume",
    }
}

/// eventbus's side of one measurement: `count` events published in one
/// `publish_batch`, or handled from a pre-filled stream (timed from the first
/// event handled when `from_first_event`, so that a group join is not measured).
pub(crate) async fn eventbus_child(
    builder: BusBuilder,
    scenario: Scenario,
    count: usize,
    from_first_event: bool,
    broker_process: &'static str,
) -> Figure {
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let first = Arc::new(OnceLock::new());
    let (s, d, f) = (seen.clone(), done.clone(), first.clone());
    let bus = builder
        .handler::<OrderPlaced, _, _>("count", move |e: Arc<Envelope<OrderPlaced>>| {
            let _ = &e.customer_id;
            f.get_or_init(|| Window::open(broker_process));
            if s.fetch_add(1, Ordering::AcqRel) + 1 == count {
                d.notify_one();
            }
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    let figure = match scenario {
        Scenario::Publish => {
            let events: Vec<_> = (0..count).map(order).collect();
            let start = Instant::now();
            let report = bus.publish_batch(events, false).await;
            assert_eq!(report.published, count, "{:?}", report.errors);
            Figure {
                per_second: count as f64 / start.elapsed().as_secs_f64(),
                peak_rss_mb: peak_rss_mb(),
                ..Figure::default()
            }
        }
        Scenario::Consume => {
            let window = Window::open(broker_process);
            bus.start_consuming().await.expect("consumes");
            while seen.load(Ordering::Acquire) < count {
                let _ = tokio::time::timeout(Duration::from_millis(50), done.notified()).await;
            }
            if from_first_event {
                first.get().expect("handled").close(count - 1)
            } else {
                window.close(count)
            }
        }
    };
    bus.shutdown(Duration::from_secs(30)).await.expect("stops");
    figure
}

/// Runs eventbus and the plain loop twice each, in the order eventbus,
/// plain, plain, eventbus, and returns each one's best figure (eventbus
/// first): whoever always ran first would pay for a broker warming up, and a
/// single run on a 2-core machine varies by 10-20%. `run` gets the system
/// and the run's number (0-3).
pub(crate) fn best_of_two(mut run: impl FnMut(System, usize) -> Figure) -> [Figure; 2] {
    let mut best = [Figure::default(); 2];
    for (n, (i, system)) in [
        (0, System::Eventbus),
        (1, System::Plain),
        (1, System::Plain),
        (0, System::Eventbus),
    ]
    .into_iter()
    .enumerate()
    {
        let figure = run(system, n);
        if figure.per_second > best[i].per_second {
            best[i] = figure;
        }
    }
    best
}

/// Runs one measurement in a child process of this executable.
pub(crate) fn run_measurement(
    url: &str,
    system: System,
    scenario: Scenario,
    count: usize,
    prefix: &str,
) -> Figure {
    let system = match system {
        System::Eventbus => "eventbus",
        System::Plain => "plain",
    };
    run_child(&[
        "--system",
        system,
        "--scenario",
        scenario_name(scenario),
        "--count",
        &count.to_string(),
        "--prefix",
        prefix,
        "--url",
        url,
    ])
}

/// One measurement, printed by a child process as one JSON line.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Figure {
    pub(crate) per_second: f64,
    pub(crate) peak_rss_mb: f64,
    /// CPU of the measured process per event over the timed window, microseconds.
    #[serde(default)]
    pub(crate) cpu_us: Option<f64>,
    /// CPU of the (local) broker per event meanwhile, microseconds.
    #[serde(default)]
    pub(crate) broker_cpu_us: Option<f64>,
}

/// The timed window of a consume run: its start, and the CPU used so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    start: Instant,
    cpu: crate::cpu::Mark,
}

impl Window {
    pub(crate) fn open(broker_process: &'static str) -> Self {
        Self {
            start: Instant::now(),
            cpu: crate::cpu::Mark::now(broker_process),
        }
    }

    /// The figure of `events` handled since the window opened.
    pub(crate) fn close(&self, events: usize) -> Figure {
        let per_second = events as f64 / self.start.elapsed().as_secs_f64();
        let (cpu_us, broker_cpu_us) = self.cpu.per_event(events);
        Figure {
            per_second,
            peak_rss_mb: peak_rss_mb(),
            cpu_us,
            broker_cpu_us,
        }
    }
}

/// Peak resident memory of this process (VmHWM), in MiB.
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

/// Runs this executable's `child` subcommand with `args`; its last line is a
/// [`Figure`].
pub(crate) fn run_child(args: &[&str]) -> Figure {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .arg("child")
        .args(args)
        .output()
        .expect("child runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).expect("a figure")
}

/// Runs eventsource-py's side (`python script args...`); `None` when no
/// Python was given or the script failed (its error is printed).
pub(crate) fn run_python(python: Option<&str>, script: &str, args: &[&str]) -> Option<Figure> {
    let out = Command::new(python?).arg(script).args(args).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "eventsource-py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last()?).ok()
}

pub(crate) fn fmt(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// `a / b` when both are known.
pub(crate) fn over(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a / b)
}

/// The Markdown table: each row is (figure, [eventbus, plain, eventsource-py]).
pub(crate) fn table(plain: &str, rows: &[(String, Vec<Option<f64>>)]) -> String {
    let mut table = format!(
        "| figure | eventbus | {plain} | eventsource-py | eventbus / plain | eventbus / eventsource-py |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (name, v) in rows {
        table.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            fmt(v[0]),
            fmt(v[1]),
            fmt(v[2]),
            ratio(v[0], v[1]),
            ratio(v[0], v[2])
        ));
    }
    table
}

/// The events/s of each figure (`None` where there is none).
pub(crate) fn rates(figures: &[Option<Figure>]) -> Vec<Option<f64>> {
    figures.iter().map(|f| f.map(|f| f.per_second)).collect()
}

/// The two CPU rows of a consume row's figures: the measured process's CPU
/// per event, and the broker's (named `broker`) in the same runs.
pub(crate) fn cpu_rows(
    figures: &[Option<Figure>],
    broker: &str,
) -> [(String, Vec<Option<f64>>); 2] {
    [
        (
            "client CPU per consumed event, the same runs (µs)".to_owned(),
            figures.iter().map(|f| f.and_then(|f| f.cpu_us)).collect(),
        ),
        (
            format!("{broker}'s CPU per consumed event, the same runs (µs)"),
            figures
                .iter()
                .map(|f| f.and_then(|f| f.broker_cpu_us))
                .collect(),
        ),
    ]
}

/// One line of the targets list: `- {what}: met (x)` or `MISSED`.
pub(crate) fn target(what: &str, value: Option<f64>, ok: impl Fn(f64) -> bool) -> String {
    let verdict = if value.is_some_and(ok) {
        "met"
    } else {
        "MISSED"
    };
    format!("- {what}: {verdict} ({})\n", fmt(value))
}
