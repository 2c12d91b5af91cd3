//! The real eventsource-py 0.15.1 (RabbitMQ, Redis and Kafka extras, and
//! OpenTelemetry's SDK) in a virtual
//! environment the tests create once (Python 3.13, found on PATH or under
//! pyenv; `EVENTBUS_INTEROP_PYTHON` overrides).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const EVENTSOURCE: &str = "eventsource-py[rabbitmq,redis,kafka]==0.15.1";
/// OpenTelemetry's SDK, for the cross-language trace tests.
pub const OTEL_SDK: &str = "opentelemetry-sdk==1.45.2";

fn python313() -> Result<PathBuf, String> {
    let works = |p: &Path| {
        Command::new(p)
            .args(["-c", "import sys; assert sys.version_info[:2] == (3, 13)"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(p) = std::env::var_os("EVENTBUS_INTEROP_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from("python3.13")];
    if let Some(home) = std::env::var_os("HOME") {
        let versions = Path::new(&home).join(".pyenv/versions");
        if let Ok(entries) = std::fs::read_dir(&versions) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("3.13"))
                .map(|e| e.path().join("bin/python3.13"))
                .collect();
            found.sort();
            candidates.extend(found.into_iter().rev());
        }
    }
    candidates.into_iter().find(|p| works(p)).ok_or_else(|| {
        "Python 3.13 not found (PATH, ~/.pyenv/versions/3.13*); set EVENTBUS_INTEROP_PYTHON".into()
    })
}

/// The venv's python, created (once per test binary) with eventsource-py installed.
pub fn python() -> &'static Path {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = VENV.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-venv");
        let venv_python = dir.join("bin/python");
        let marker = dir.join(".eventsource-installed");
        let wanted = format!("{EVENTSOURCE} {OTEL_SDK}");
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
            return Ok(venv_python);
        }
        let base = python313()?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        run(Command::new(&base)
            .args(["-m", "venv", "--clear"])
            .arg(&dir))?;
        run(Command::new(&venv_python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            EVENTSOURCE,
            OTEL_SDK,
        ]))?;
        std::fs::write(&marker, &wanted).map_err(|e| e.to_string())?;
        Ok(venv_python)
    });
    match result {
        Ok(p) => p,
        Err(e) => panic!("cannot set up eventsource-py: {e}"),
    }
}

/// `tests/interop/{name}` of the workspace, from any package's tests.
pub fn script(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("tests/interop").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "tests/interop/{name} not found above {}",
                manifest.display()
            )
        })
}
