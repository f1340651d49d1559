#!/usr/bin/env bash
# Deployment figures, on loopback, with the release echo example and load
# tool (docs/deployment.md quotes them):
#
# - scale-out: the same load against one process directly, through HAProxy
#   (mode tcp, send-proxy-v2) to one process, and through HAProxy to two
#   processes; interleaved rounds, medians;
# - restart: a new process takes the listening socket over (--handover)
#   in the middle of a load of a new connection per request; the load's
#   errors and requests, and each process's share.
#
#   benches/deploy.sh                         # 3 rounds of 5 s, then a restart
#   ROUNDS=1 SECONDS_PER_RUN=2 benches/deploy.sh
#
# Needs haproxy (Debian's `haproxy`) and python3 (for the medians).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MS=$(( ${SECONDS_PER_RUN:-5} * 1000 ))
CONNECTIONS=${CONNECTIONS:-50}
command -v haproxy >/dev/null || { echo "haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }

cargo build --release --quiet -p pool-manager -p pool-manager-bench --example echo --example load
ECHO=target/release/examples/echo
LOAD=target/release/examples/load
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
[[ -n ${KEEP:-} ]] && trap - EXIT && echo "work dir: $WORK" >&2

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts an echo process on port $1 with extra flags; echoes its pid.
start_echo() {
    local port=$1; shift
    "$ECHO" --addr "127.0.0.1:$port" --read-deadline-ms 0 "$@" >"$WORK/echo-$port.out" 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$WORK/echo-$port.out" 2>/dev/null && break
        sleep 0.05
    done
    echo "$pid"
}

# Starts HAProxy on port $1 in front of the ports that follow; echoes its pid.
start_haproxy() {
    local port=$1; shift
    {
        printf 'global\n    maxconn 4000\n'
        printf 'defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n'
        printf 'frontend fe\n    bind 127.0.0.1:%s\n    default_backend be\n' "$port"
        printf 'backend be\n    balance roundrobin\n'
        local i=0
        for backend in "$@"; do
            printf '    server s%s 127.0.0.1:%s send-proxy-v2 check inter 1s\n' "$i" "$backend"
            i=$((i + 1))
        done
    } >"$WORK/haproxy.cfg"
    haproxy -db -q -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
    echo "$pid"
}

# One measured run against $1; prints the load tool's JSON line.
run_load() {
    "$LOAD" --addr "$1" --connections "$CONNECTIONS" --size 64 --duration-ms "$MS" \
        --warmup-ms 500 --label "$2" "${@:3}"
}

RESULTS="$WORK/results.jsonl"
for round in $(seq "$ROUNDS"); do
    for setup in direct haproxy-1 haproxy-2; do
        a=$(free_port); b=$(free_port); front=$(free_port)
        pids=()
        case $setup in
        direct)
            pids+=("$(start_echo "$a")")
            target=$a;;
        haproxy-1)
            pids+=("$(start_echo "$a" --proxy-protocol)")
            pids+=("$(start_haproxy "$front" "$a")")
            target=$front;;
        haproxy-2)
            pids+=("$(start_echo "$a" --proxy-protocol)")
            pids+=("$(start_echo "$b" --proxy-protocol)")
            pids+=("$(start_haproxy "$front" "$a" "$b")")
            target=$front;;
        esac
        PIDS+=("${pids[@]}")
        # The CPU measured is the echo's (direct) or HAProxy's (the last pid).
        run_load "127.0.0.1:$target" "$setup" --server-pid "${pids[-1]}" >>"$RESULTS"
        tail -1 "$RESULTS" | python3 -c 'import json, sys
r = json.load(sys.stdin)
print("round", sys.argv[1], r["label"], ":", round(r["throughput_rps"]), "req/s, p99", r["p99_us"], "us, errors", r["errors"]["total"])' "$round" >&2
        for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
        wait "${pids[@]}" 2>/dev/null || true
    done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in runs:
    by.setdefault(r["label"], []).append(r)
med = lambda label, key: statistics.median(r[key] for r in by[label])
base = med("direct", "throughput_rps")
cpu = lambda label: statistics.median(r["server"]["cpu_us_per_request"] for r in by[label])
print("| setup | req/s (median) | vs direct | p99 µs | CPU µs/req of the echo (direct) or HAProxy | errors |")
print("|---|---|---|---|---|---|")
for label in ["direct", "haproxy-1", "haproxy-2"]:
    rps = med(label, "throughput_rps")
    errors = sum(r["errors"]["total"] for r in by[label])
    print(f"| {label} | {rps:.0f} | {rps / base:.2f}× | {med(label, 'p99_us'):.0f} | {cpu(label):.1f} | {errors} |")
print(f"\n{len(by['direct'])} interleaved rounds of {runs[0]['duration_s']:.0f} s, "
      f"{runs[0]['connections']} connections, 64 B echo.")
EOF

# The restart: the load runs throughout; a successor takes over midway.
port=$(free_port)
old=$(start_echo "$port" --handover "$WORK/handover.sock")
PIDS+=("$old")
"$LOAD" --addr "127.0.0.1:$port" --connections 8 --connect-per-request --size 64 \
    --duration-ms "$MS" --warmup-ms 0 --label restart >"$WORK/restart.json" &
load=$!
sleep "$(( MS / 2000 ))"
"$ECHO" --addr "127.0.0.1:1" --read-deadline-ms 0 --handover "$WORK/handover.sock" \
    >"$WORK/new.out" 2>/dev/null &
new=$!
PIDS+=("$new")
# The old process drains and exits (it is not this shell's child).
while kill -0 "$old" 2>/dev/null; do sleep 0.1; done
wait "$load"
kill -TERM "$new"; wait "$new" || true
python3 - "$WORK/restart.json" "$WORK/echo-$port.out" "$WORK/new.out" <<'EOF'
import json, re, sys
r = json.load(open(sys.argv[1]))
def served(path):
    m = re.search(r"(\d+) connections in all", open(path).read())
    return m.group(1) if m else "?"
print(f"\nrestart under load (a new connection per request, 8 at a time, {r['duration_s']:.0f} s): "
      f"{r['requests']} requests measured, errors {r['errors']}; "
      f"old process served {served(sys.argv[2])} connections, new {served(sys.argv[3])}")
EOF
