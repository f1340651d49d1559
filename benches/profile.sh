#!/usr/bin/env bash
# Where an echo server's CPU goes, per request: ours (`examples/echo.rs`,
# with the flags `benches/compare.sh` gives it) against tokio
# (`bench/examples/peer_tokio.rs`), in the same run. Builds both in
# release; then for each server and each round: start it on a free
# loopback port, run the
# `load` tool against it (no warm-up, so that every request the server saw
# is counted) with `perf stat` attached to all its threads, then a second
# load with `perf record --call-graph dwarf` attached (release builds keep
# no frame pointers; DWARF unwinding needs none, and costs a few tens of
# MB of data a server). Prints:
#
# - a Markdown table of medians per request: CPU µs (task-clock), context
#   switches, CPU migrations, system calls and futex calls, and
#   instructions and cycles where the machine counts them (a VM often
#   does not: "n/a");
# - for each server, the share of CPU samples in the kernel, the server's
#   binary and the C library, and the functions that took the most (self
#   time), from a last load under `perf record`, whose data stays in the
#   output folder.
#
#   benches/profile.sh                              # small, ours and tokio, 3 rounds of 3 s
#   benches/profile.sh --scenario many --rounds 5
#   benches/profile.sh --servers ours --seconds 5 --out /tmp/prof
#
# The rounds interleave the servers (ours, tokio, tokio, ours, ...), so
# that no server always runs first. Scenarios: small = 50 connections,
# many = 1,000; 64-byte requests. `perf record` samples at 999 Hz, so the
# function list is a share of samples, not a speed. Loopback only; every
# process it starts is killed on exit. Needs perf (linux-perf) and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=small seconds=3 servers=ours,tokio rounds=3 out=target/profile top=25
while (($#)); do
    case $1 in
        --scenario) scenario=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --servers) servers=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --top) top=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $scenario in
    small) connections=50 ;;
    many) connections=1000 ;;
    *) echo "--scenario: small or many" >&2; exit 2 ;;
esac
for n in "$seconds" "$rounds" "$top"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "--seconds, --rounds, --top: whole numbers > 0" >&2; exit 2; }
done
for need in perf:linux-perf jq:jq; do
    command -v "${need%%:*}" >/dev/null || { echo "${need%%:*} not found: apt-get install ${need#*:}" >&2; exit 1; }
done

cargo build --release --quiet --features tls -p pool-manager -p pool-manager-bench \
    --example echo --example peer_tokio --example load
bin=target/release/examples
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$out"
tmp=$(mktemp -d)
server_pid='' perf_pid=''
cleanup() {
    for pid in $perf_pid $server_pid; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_for, echo_server.
# shellcheck source=benches/common.sh
source benches/common.sh

# start SERVER: starts it, sets server_pid and addr.
start() {
    local name=$1 cmd
    addr=127.0.0.1:$(free_port)
    echo_server "$name" "$addr"
    "${cmd[@]}" >"$tmp/$name.out" 2>&1 &
    server_pid=$!
    wait_for "$tmp/$name.out" listening
}

stop() {
    kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=''
}

# load: runs the load tool for the round's seconds; prints its requests.
load() {
    "$bin/load" --addr "$addr" --connections "$connections" --warmup-ms 0 \
        --duration-ms "$((seconds * 1000))" --label "$scenario" | tail -n 1 | jq -r .requests
}

# Stops the perf attached to the server (it writes its output on SIGINT;
# perf stat then exits with the status of what it counted, so its own
# failures are found in its output, below).
detach() {
    sleep 0.5 # the server sees the clients close
    kill -INT "$perf_pid"; wait "$perf_pid" || true; perf_pid=''
}

events=task-clock,context-switches,cpu-migrations,instructions,cycles
events+=,raw_syscalls:sys_enter,syscalls:sys_enter_futex

# count NAME ROUND: one row of figures per request, in $tmp/NAME.rows.
count() {
    local name=$1 round=$2 requests
    start "$name"
    perf stat -x, -e "$events" -p "$server_pid" -o "$tmp/$name.$round.stat" &
    perf_pid=$!
    sleep 0.5 # perf opens its counters on every thread
    requests=$(load)
    detach
    stop
    # A perf that could not count (no permission, an unknown event) leaves
    # no task-clock figure: the run fails rather than print a table of n/a.
    if ! grep -qE '^[0-9.]+,[^,]*,task-clock' "$tmp/$name.$round.stat"; then
        echo "perf stat counted nothing for $name (round $round):" >&2
        cat "$tmp/$name.$round.stat" >&2
        exit 1
    fi
    # perf stat -x,: "value,unit,event,…"; task-clock in ms.
    awk -F, -v req="$requests" '
        $3 != "" { v[$3] = $1 }
        function per(e, scale) { return (v[e] ~ /^[0-9.]+$/ && req > 0) ? sprintf("%.4f", v[e] * scale / req) : "n/a" }
        END {
            print req, per("task-clock", 1000), per("context-switches", 1), per("cpu-migrations", 1),
                per("raw_syscalls:sys_enter", 1), per("syscalls:sys_enter_futex", 1),
                per("instructions", 1), per("cycles", 1)
        }' "$tmp/$name.$round.stat" >>"$tmp/$name.rows"
}

# record NAME: a call-graph profile of one load, kept in the output folder.
record() {
    local name=$1
    start "$name"
    rm -f "$out/$name.perf.data" "$out/$name.perf.data.old"
    perf record -F 999 --call-graph dwarf -o "$out/$name.perf.data" -p "$server_pid" \
        2>"$tmp/$name.record" &
    perf_pid=$!
    sleep 0.5
    load >/dev/null
    detach
    stop
    # perf writes a header even when it took no sample. (awk reads to the
    # end: a reader that stops early kills perf with SIGPIPE.)
    local samples
    samples=$(perf report -i "$out/$name.perf.data" --stdio -g none 2>/dev/null |
        awk '/^# Samples:/ { n = $3 } END { print n + 0 }')
    if ((samples == 0)); then
        echo "perf record took no sample of $name:" >&2
        cat "$tmp/$name.record" >&2
        exit 1
    fi
}

IFS=, read -ra list <<<"$servers"
for round in $(seq "$rounds"); do
    # Alternate the order: ours first in odd rounds, last in even ones.
    order=("${list[@]}")
    if ((round % 2 == 0)); then
        order=(); for ((i = ${#list[@]} - 1; i >= 0; i--)); do order+=("${list[i]}"); done
    fi
    for name in "${order[@]}"; do
        echo "round $round: $name" >&2
        count "$name" "$round"
    done
done
for name in "${list[@]}"; do record "$name"; done

# The median of column $2 of file $1 (n/a if any round has none); of an
# even number of rounds, the lower of the middle two.
median() {
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '
        { v[NR] = $1; if ($1 == "n/a") na = 1 }
        END { if (na || NR == 0) print "n/a"; else print v[int((NR + 1) / 2)] }'
}

echo "Per request, medians of $rounds rounds ($scenario: $connections connections, ${seconds} s a round;" \
    "$(git rev-parse --short HEAD), $(date -u +%F))"
echo
echo "| server | requests | CPU µs | context switches | CPU migrations | syscalls | futex | instructions | cycles |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in "${list[@]}"; do
    row="| $name"
    for c in 1 2 3 4 5 6 7 8; do row+=" | $(median "$tmp/$name.rows" "$c")"; done
    echo "$row |"
done
for name in "${list[@]}"; do
    echo
    echo "### $name: where the CPU went (share of samples): by binary, then the $top functions with the most (self)"
    echo
    echo '```'
    # awk reads to the end: `head` would stop perf with SIGPIPE, and
    # pipefail the script.
    perf report -i "$out/$name.perf.data" --no-children -g none --sort dso --stdio 2>/dev/null |
        awk '/^ +[0-9.]+%/ && n++ < 6'
    echo
    perf report -i "$out/$name.perf.data" --no-children -g none --sort dso,sym --stdio 2>/dev/null |
        awk -v top="$top" '/^ +[0-9.]+%/ && n++ < top'
    echo '```'
done
echo
echo "Call graphs: perf report -i $out/SERVER.perf.data (--children for inclusive time)."
