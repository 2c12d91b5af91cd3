//! Examples and integration tests of eventbus live in `examples/` and `tests/`;
//! the service binaries in `src/bin/` share what is here.

/// Logs to stderr at `RUST_LOG` (default `info`), keeping stdout for the
/// lines the tests read.
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
