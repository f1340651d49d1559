//! The `http` example's unit and property tests (its modules' `#[cfg(test)]`
//! code), built here so that `cargo test` runs them and still builds the
//! example itself for the tests that run it as a process.

#[allow(dead_code)]
#[path = "../examples/http/main.rs"]
mod http;
