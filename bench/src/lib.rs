//! The benchmarks, load tools and peers of `pool-manager`, in a package of
//! their own so that the library's dev-dependencies stay small. Everything
//! is in `examples/` (the load tools `load` and `pubsub_load`, the peers
//! `peer_*`, the driver `compare`), `benches/` (criterion) and `tests/`;
//! the scripts in the repository's `benches/` build and run them.
#![forbid(unsafe_code)]
