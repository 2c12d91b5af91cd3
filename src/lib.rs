//! Examples and integration tests of eventbus live in `examples/` and `tests/`.
