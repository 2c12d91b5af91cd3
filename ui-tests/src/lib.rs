//! Holds the trybuild driver in `tests/compiletest.rs`.
