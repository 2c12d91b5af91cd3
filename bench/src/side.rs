//! What the side-by-side benchmarks of one broker share (`bench-redis`,
//! `bench-kafka`): a child process per measurement reporting a [`Figure`],
//! eventsource-py's script run the same way, and the Markdown table.

use std::process::Command;

use serde::{Deserialize, Serialize};

/// One measurement, printed by a child process as one JSON line.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Figure {
    pub(crate) per_second: f64,
    pub(crate) peak_rss_mb: f64,
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

/// One line of the targets list: `- {what}: met (x)` or `MISSED`.
pub(crate) fn target(what: &str, value: Option<f64>, ok: impl Fn(f64) -> bool) -> String {
    let verdict = if value.is_some_and(ok) {
        "met"
    } else {
        "MISSED"
    };
    format!("- {what}: {verdict} ({})\n", fmt(value))
}
