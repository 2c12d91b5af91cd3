//! Compile-fail and compile-pass tests of eventbus's macros.
//!
//! Grouped per macro, as pin-project and axum-macros do: `ui/{macro}/fail`
//! holds one mistake per file, named after it, with the compiler's output
//! beside it in a `.stderr` file; `ui/{macro}/pass` holds code that must
//! compile. To re-bless after changing a message, see `DEVELOPMENT.md`.

#[test]
fn ui() {
    // One `TestCases`: trybuild builds every case in one shared project.
    let t = trybuild::TestCases::new();
    for group in ["domain_event", "projection", "handles"] {
        t.compile_fail(format!("tests/ui/{group}/fail/*.rs"));
        t.pass(format!("tests/ui/{group}/pass/*.rs"));
    }
}
