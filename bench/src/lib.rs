//! The benchmarks, load tools and peers of `pool-manager`, in a package of
//! their own so that the library's dev-dependencies stay small. Everything
//! is in this package's `bench/examples/` (the load tools `load` and
//! `pubsub_load`, the peers `peer_*`, the driver `compare`),
//! `bench/benches/` (criterion) and `bench/tests/`; the scripts in the
//! repository's top-level `benches/` build and run them.
#![forbid(unsafe_code)]
