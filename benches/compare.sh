#!/usr/bin/env bash
# Builds the servers and the load tool in release, then compares them on
# loopback: thread-per-connection, tokio (also with spawn_blocking for the
# blocking scenarios), actix-server, and this crate, interleaved, three
# rounds; prints Markdown tables of medians and ratios. The TLS scenarios
# (tls, tls-connect, tls-idle) run ours against tokio + tokio-rustls.
#
#   benches/compare.sh                      # all scenarios (about 10 minutes)
#   benches/compare.sh --scenarios small --rounds 1
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --features tls --example echo --example peer_threads \
    --example peer_tokio --example peer_actix --example load --example compare
exec target/release/examples/compare "$@"
