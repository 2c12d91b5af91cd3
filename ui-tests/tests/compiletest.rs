//! Compile-fail and compile-pass tests of eventbus's macros.
//!
//! Each file in `ui/fail` holds one mistake, named after it, and the
//! compiler's output beside it in a `.stderr` file; `ui/pass` holds code that
//! must compile. To re-bless after changing a message, see `DEVELOPMENT.md`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
