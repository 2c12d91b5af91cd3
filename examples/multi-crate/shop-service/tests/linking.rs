//! Handlers in a second crate of the workspace: linked explicitly they run;
//! left unlinked, `run()` refuses to start and says how to link them.

use std::process::Command;

/// Runs one of this package's binaries on the in-memory transport.
fn run(binary: &str) -> (bool, String) {
    let output = Command::new(binary)
        .env("EVENTBUS_URL", "memory://")
        .env("SHOP_EXIT_AFTER_START", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_linked_crate_serves_its_handlers_and_says_so_without_a_subscriber() {
    let (ok, stderr) = run(env!("CARGO_BIN_EXE_shop-linked"));
    assert!(ok, "the linked service runs: {stderr}");
    // No tracing subscriber is installed: the startup line goes to stderr.
    let line = stderr
        .lines()
        .find(|l| l.starts_with("eventbus running on memory memory://"))
        .unwrap_or_else(|| panic!("one startup line on stderr, got: {stderr}"));
    assert!(
        line.contains("group default: handlers [shop_core::send_confirmation]"),
        "{line}"
    );
    assert!(
        line.contains("group revenue: handlers [shop_core::Revenue::on_placed]"),
        "{line}"
    );
}

#[test]
fn an_unlinked_crate_is_refused_with_how_to_link_it() {
    let (ok, stderr) = run(env!("CARGO_BIN_EXE_shop-unlinked"));
    assert!(!ok, "an unlinked service must not start: {stderr}");
    // `main -> Result<(), eventbus::Error>` prints the readable message.
    assert!(
        stderr.starts_with("Error: no event handler is registered"),
        "{stderr}"
    );
    assert!(stderr.contains("eventbus::export_handlers!();"), "{stderr}");
    assert!(
        stderr.contains(".link(that_crate::eventbus_handlers())"),
        "{stderr}"
    );
    assert!(!stderr.contains("NoHandlers"), "no Debug dump: {stderr}");
}
