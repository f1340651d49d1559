#!/usr/bin/env bash
# Builds the servers and the load tool in release, then compares them on
# loopback: thread-per-connection, tokio (also with spawn_blocking for the
# blocking scenarios), actix-server, and this crate, interleaved, three
# rounds; prints Markdown tables of medians and ratios. The TLS scenarios
# (tls, tls-connect, tls-idle) run ours against tokio + tokio-rustls. The
# pub/sub scenarios (fanout, fanout-200, slow-readers, slow-readers0) run the `resp`
# example against a tokio peer (`peer_tokio_pubsub`, tokio's broadcast
# channels) under `pubsub_load`; `benches/real-clients.sh` runs them
# against redis-server.
#
#   benches/compare.sh                      # all scenarios (about 15 minutes)
#   benches/compare.sh --scenarios small --rounds 1
set -euo pipefail
cd "$(dirname "$0")/.."
# Ours (the library's examples) and the rest (the workspace member bench/).
cargo build --release --quiet --features tls -p pool-manager -p pool-manager-bench \
    --example echo --example resp --example peer_threads --example peer_tokio \
    --example peer_actix --example load --example compare --example peer_tokio_pubsub \
    --example pubsub_load
exec target/release/examples/compare "$@"
