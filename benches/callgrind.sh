#!/usr/bin/env bash
# Instructions per echo request, ours (`examples/echo.rs`) against tokio
# (`bench/examples/peer_tokio.rs`), counted by valgrind's callgrind: a
# count, not a time, so it does not move with what else the machine does
# (the figure `benches/profile.sh` cannot give on a VM whose perf counts
# no instructions). Each server runs twice under callgrind, with a short
# and a long load of the `load` tool; the difference of the two totals
# over the difference of the requests is the cost of one more request,
# without start-up and shutdown. Prints a Markdown table, then, for each
# server, the functions with the most instructions (inclusive of
# callees: `callgrind_annotate --inclusive=yes`) of the long run, whose
# output stays in the output folder. The table's last column is the part
# of the figure that ours's manager thread (the sysmon, the reaper) ran:
# it looks on a clock, not per request, and under valgrind each look is
# shared by some ten times fewer requests than in a real run, so that
# part is inflated as much (tokio has no such thread).
#
#   benches/callgrind.sh                       # 20 connections, loads of 2 and 6 s
#   benches/callgrind.sh --connections 50 --short 3 --long 9 --out /tmp/cg
#
# valgrind runs one thread at a time and slows a server some 50 times:
# scheduling (hand-offs, wake-ups) is not this machine's, so this counts
# the work of the request path, not its waits. Loopback only; every
# process it starts is killed on exit. Needs valgrind and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

connections=20 short=2 long=6 servers=ours,tokio out=target/callgrind top=30
while (($#)); do
    case $1 in
        --connections) connections=$2; shift 2 ;;
        --short) short=$2; shift 2 ;;
        --long) long=$2; shift 2 ;;
        --servers) servers=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --top) top=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$connections" "$short" "$long" "$top"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "--connections, --short, --long, --top: whole numbers > 0" >&2; exit 2; }
done
((long > short)) || { echo "--long must be more than --short" >&2; exit 2; }
for need in valgrind:valgrind jq:jq; do
    command -v "${need%%:*}" >/dev/null || { echo "${need%%:*} not found: apt-get install ${need#*:}" >&2; exit 1; }
done

cargo build --release --quiet --features tls -p pool-manager -p pool-manager-bench \
    --example echo --example peer_tokio --example load
bin=target/release/examples
mkdir -p "$out"
tmp=$(mktemp -d)
server_pid=''
cleanup() {
    [[ -z $server_pid ]] || kill -KILL "$server_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_for, echo_server.
# shellcheck source=benches/common.sh
source benches/common.sh

# run NAME SECONDS: the server under callgrind, one load of SECONDS; sets
# ir (its instructions), mt (those of the manager thread's loop) and req
# (the requests answered).
run() {
    local name=$1 seconds=$2 addr cmd file=$out/$1.$2.callgrind
    addr=127.0.0.1:$(free_port)
    echo_server "$name" "$addr"
    rm -f "$file"
    valgrind --tool=callgrind --callgrind-out-file="$file" "${cmd[@]}" >"$tmp/$name.out" 2>&1 &
    server_pid=$!
    # valgrind starts a program slowly.
    for _ in 1 2 3; do wait_for "$tmp/$name.out" listening && break; done
    req=$("$bin/load" --addr "$addr" --connections "$connections" --warmup-ms 0 \
        --duration-ms "$((seconds * 1000))" --label "$name" | tail -n 1 | jq -r .requests)
    # The servers drain and exit on SIGTERM; callgrind then writes its file.
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=''
    [[ -s $file ]] || { echo "callgrind wrote nothing for $name:" >&2; cat "$tmp/$name.out" >&2; exit 1; }
    ir=$(awk '/^summary:/ { print $2 }' "$file")
    mt=$(callgrind_annotate --inclusive=yes --threshold=100 "$file" 2>/dev/null |
        awk '!found && /manager_thread::run / { gsub(",", "", $1); mt = $1; found = 1 } END { print mt + 0 }')
}

IFS=, read -ra list <<<"$servers"
echo "| server | requests (short, long) | instructions per request | of which the manager thread |"
echo "|---|---:|---:|---:|"
for name in "${list[@]}"; do
    run "$name" "$short"
    ir_a=$ir mt_a=$mt req_a=$req
    run "$name" "$long"
    ir_b=$ir mt_b=$mt req_b=$req
    ((req_b > req_a)) || { echo "$name: the long load made no more requests than the short one" >&2; exit 1; }
    echo "| $name | $req_a, $req_b | $(((ir_b - ir_a) / (req_b - req_a))) | $(((mt_b - mt_a) / (req_b - req_a))) |"
done
for name in "${list[@]}"; do
    echo
    echo "### $name: the $top functions with the most instructions, callees included (the long load)"
    echo
    echo '```'
    callgrind_annotate --inclusive=yes --threshold=100 "$out/$name.$long.callgrind" 2>/dev/null |
        awk -v top="$top" '/^-+$/ { rule++ } rule >= 3 && NF && n++ < top'
    echo '```'
done
