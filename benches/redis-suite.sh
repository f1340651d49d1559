#!/usr/bin/env bash
# Runs Redis's own pub/sub tests (tests/unit/pubsub.tcl, RESP2) against the
# `resp` example, in the test suite's external-server mode.
#
#   benches/redis-suite.sh SNAPSHOT_DIR [UNIT]
#
# SNAPSHOT_DIR is a Redis source tree (only its `tests/` is used), which is
# not kept in this repository: recent Redis test files are not under a
# licence compatible with ours. Needs `tclsh` (Debian's `tcl`). UNIT
# defaults to unit/pubsub; keyspace notifications, MULTI and scripts are
# out of the example's scope, so their tests fail.
set -euo pipefail
src=${1:?usage: benches/redis-suite.sh SNAPSHOT_DIR [UNIT]}
unit=${2:-unit/pubsub}
cd "$(dirname "$0")/.."
root=$(pwd)
command -v tclsh >/dev/null || { echo "redis-suite: tclsh is missing (apt-get install tcl)" >&2; exit 2; }
start=$(date +%s)
cargo build --release --quiet --example resp
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$root/target/release/examples/resp" --addr "127.0.0.1:$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done
cd "$src"
log=$(mktemp)
status=0
tclsh tests/test_helper.tcl --host 127.0.0.1 --port "$port" --singledb \
    --single "$unit" --tags -resp3 --timeout 60 2>&1 | tee "$log" || status=$?
# The tests that ran, each `[ok]` or `[err]`; the suite stops at the first
# exception (for unit/pubsub: `CONFIG SET notify-keyspace-events`, the
# keyspace notifications, which the example does not have).
clean=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
ok=$(grep -c '^\[ok\]' <<<"$clean" || true)
err=$(grep -c '^\[err\]' <<<"$clean" || true)
stopped=$(grep -m1 '^\[exception\]' <<<"$clean" || true)
rm -f "$log"
echo "redis-suite: $unit against resp: $ok passed, $err failed in $(($(date +%s) - start)) s (the suite exited $status)" >&2
[[ -n $stopped ]] && echo "redis-suite: then stopped at: $stopped" >&2
((err == 0 && ok > 0))
