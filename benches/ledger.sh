#!/usr/bin/env bash
# The ledger under 10× overload: tests/ledger.rs in release, for longer.
# Ten times more clients than the pool holds (max_workers 4, and a queue
# of 4 in dedicated mode) connect again and again through the built-in
# acceptor, against a handler that blocks 20 ms before its echo and then
# closes; one connection in eight sends nothing (closed at the 300 ms
# first-byte deadline). The test asserts that both sides of the ledger
# agree exactly (tests/accounting/mod.rs); this prints them as a Markdown
# table, with the rates, for docs/performance.md.
#
#   benches/ledger.sh                       # 4 runs of 10 s (polled, dedicated, each also restarted)
#   SECONDS_PER_RUN=30 benches/ledger.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

if ! POOL_LEDGER_SECONDS=$SECONDS_PER_RUN cargo test --release --quiet --test ledger \
    -- --nocapture --test-threads=1 >"$out" 2>&1; then
    cat "$out" >&2
    exit 1
fi
echo "| mode | clients | s | accepted | accepted/s | echoed | echoed/s | refused at accept | queue timeout | busy close | busy at a stop | first-byte close | other bare close | unaccounted (clients) | unaccounted (server) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
sed -n 's/^LEDGER|/|/p' "$out"
echo
echo "accepted = echoed + the four busy columns (the client read the busy reply) + the two bare ones (a close"
echo "with nothing); unaccounted = a client that saw none of these, or an accepted connection that stats() does"
echo "not count. \"restarted\": Server::stop and Server::start once in the middle (other bare = closed by the stop)."
echo "Release build, clients in the same process, loopback; every client resets its connection once it has seen"
echo "the end (no TIME_WAIT), and a refused client connects again at once."
