#!/usr/bin/env bash
# The protocol examples against the real thing, driven by real clients,
# same run, rounds interleaved, medians:
#   - redis-benchmark -t ping,set,get -c 50 -n 200000, plain and -P 16,
#     against redis-server (no persistence) and the resp example;
#   - wrk -t2 -c100 -d5s on GET / against the http example and a Go
#     net/http hello world (benches/go-hello/main.go);
#   - the pub/sub scenarios of the compare tool (fanout, fanout-200, slow-readers,
#     slow-readers0: see bench/examples/pubsub_load) against redis-server, each
#     server started afresh per run.
# Prints Markdown tables. Needs redis-server, redis-tools, wrk and go
# (Debian: redis-server redis-tools wrk golang-go); a missing peer is
# skipped with a message.
#
#   benches/real-clients.sh            # 3 rounds (about 8 minutes)
#   ROUNDS=5 benches/real-clients.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
RESP_PORT=16380 REDIS_PORT=16379 HTTP_PORT=18080 GO_PORT=18081
raw=$(mktemp)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -f "$raw"' EXIT

cargo build --release --quiet --example resp --example http
target/release/examples/resp --addr 127.0.0.1:$RESP_PORT >/dev/null &
pids+=($!)
target/release/examples/http --addr 127.0.0.1:$HTTP_PORT >/dev/null &
pids+=($!)
have() { command -v "$1" >/dev/null || { echo "skipped: $1 is not installed" >&2; return 1; }; }
redis=false go=false
if have redis-server; then
    redis-server --port $REDIS_PORT --save '' --appendonly no --daemonize no \
        --logfile /dev/null &
    pids+=($!)
    redis=true
fi
if have go; then
    GOCACHE=${GOCACHE:-/tmp/go-cache} go build -o target/go-hello benches/go-hello/main.go
    target/go-hello 127.0.0.1:$GO_PORT &
    pids+=($!)
    go=true
fi
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
for p in "$RESP_PORT" "$HTTP_PORT"; do wait_port "$p"; done
$redis && wait_port $REDIS_PORT
$go && wait_port $GO_PORT

# The CPU time (clock ticks) and context switches of every thread of the
# process listening on port $1 so far: `ticks switches`.
usage() {
    local pid
    pid=$(ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    local ticks cs=0
    ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    for f in /proc/"$pid"/task/*/status; do
        cs=$((cs + $(awk '/ctxt_switches/ { n += $2 } END { print n + 0 }' "$f" 2>/dev/null || echo 0)))
    done
    echo "$ticks $cs"
}
# Appends `server pipeline cpu µs-per-request` and `server pipeline cs
# switches-per-request` to $raw, from two `usage` readings.
per_request() { # server pipeline requests before after
    read -r t0 c0 <<<"$4"
    read -r t1 c1 <<<"$5"
    awk -v s="$1" -v p="$2" -v n="$3" -v t="$((t1 - t0))" -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { print s, p, "cpu", t * 1e6 / hz / n; print s, p, "cs", c / n }' >>"$raw"
}
N=200000
bench_redis() { # server port pipeline
    local before out
    before=$(usage "$2")
    out=$(redis-benchmark -h 127.0.0.1 -p "$2" -t ping,set,get -c 50 -n $N -P "$3" --csv 2>/dev/null)
    per_request "$1" "$3" $((4 * N)) "$before" "$(usage "$2")"
    awk -F'"' -v s="$1" -v p="$3" 'NR > 1 && $2 != "" { print s, p, $2, $4 }' <<<"$out" >>"$raw"
}
bench_wrk() { # server port
    local before out
    before=$(usage "$2")
    out=$(wrk -t2 -c100 -d5s "http://127.0.0.1:$2/")
    per_request "$1" - "$(awk '/requests in/ { print $1 }' <<<"$out")" "$before" "$(usage "$2")"
    awk -v s="$1" '/^Requests\/sec:/ { print s, "-", "wrk", $2 }' <<<"$out" >>"$raw"
}
for round in $(seq "$ROUNDS"); do
    echo "round $round" >&2
    for pipeline in 1 16; do
        $redis && bench_redis redis-server $REDIS_PORT $pipeline
        bench_redis ours $RESP_PORT $pipeline
    done
    if have wrk; then
        bench_wrk ours $HTTP_PORT
        $go && bench_wrk go-net/http $GO_PORT
    fi
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rate() { awk -v s="$1" -v p="$2" -v t="$3" '$1 == s && $2 == p && $3 == t { print $4 }' "$raw" | median; }
echo
cmp() { [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }' || echo "–"; }
fmt() { [ -n "$1" ] && awk -v v="$1" -v d="$2" 'BEGIN { printf "%." d "f", v }' || echo "–"; }
echo "| client | test | pipeline | ours req/s | peer | peer req/s | ours / peer |"
echo "|---|---|---:|---:|---|---:|---:|"
for pipeline in 1 16; do
    for t in PING_INLINE PING_MBULK SET GET; do
        ours=$(rate ours $pipeline $t)
        peer=$(if $redis; then rate redis-server $pipeline $t; fi)
        echo "| redis-benchmark | $t | $pipeline | $(fmt "$ours" 0) | redis-server | $(fmt "$peer" 0) | $(cmp "$ours" "$peer") |"
    done
done
ours=$(rate ours - wrk)
peer=$(if $go; then rate go-net/http - wrk; fi)
echo "| wrk -t2 -c100 -d5s | GET / | – | $(fmt "$ours" 0) | Go net/http | $(fmt "$peer" 0) | $(cmp "$ours" "$peer") |"
echo
echo "| client | pipeline | server | CPU µs/request | context switches/request |"
echo "|---|---:|---|---:|---:|"
for row in "redis-benchmark 1 redis-server" "redis-benchmark 1 ours" "redis-benchmark 16 redis-server" \
    "redis-benchmark 16 ours" "wrk - go-net/http" "wrk - ours"; do
    read -r client pipeline server <<<"$row"
    cpu=$(rate "$server" "$pipeline" cpu)
    [ -n "$cpu" ] || continue
    echo "| $client | $pipeline | $server | $(fmt "$cpu" 2) | $(fmt "$(rate "$server" "$pipeline" cs)" 3) |"
done
echo
echo "Medians of $ROUNDS interleaved rounds."

if $redis; then
    echo
    cargo build --release --quiet -p pool-manager -p pool-manager-bench --example compare \
        --example resp --example pubsub_load --example peer_tokio_pubsub
    target/release/examples/compare --rounds "$ROUNDS" --servers ours,redis-server \
        --scenarios fanout,fanout-200,slow-readers,slow-readers0 --raw target/real-clients-pubsub.jsonl
fi
