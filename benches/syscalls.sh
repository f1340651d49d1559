#!/usr/bin/env bash
# Counts the system calls an echo server makes per request under the load
# tool: ours (`examples/echo.rs`, the flags `benches/compare.sh` gives it)
# and tokio (`bench/examples/peer_tokio.rs`). For each server: build in release,
# start it on a free loopback port, attach `strace -c -f` to all its
# threads, run `load` for a few seconds (no warm-up, so that every request
# the server saw is counted), detach, stop the server, and divide each
# syscall count by the requests `load` reports. Prints a Markdown table of
# calls per request: the reads, writes, epoll_wait (with epoll_pwait),
# epoll_ctl, futex and the rest summed (its main calls listed below the
# table). The counts include accepting and closing the connections (an
# `epoll_ctl` or two per connection, spread over all requests).
#
# strace slows the server many times over: the figures are counts, not a
# speed; read no throughput into `requests`. Reads and writes per request
# do not depend on speed; the waits (epoll_wait, futex, ...) do: a server
# slowed by strace finds more events per wait, so they can come out several
# times lower than at full speed. `--tool perf` counts with the kernel's
# tracepoints instead (`perf stat -e raw_syscalls:sys_enter,
# syscalls:sys_enter_*`), which barely slows the server: the figures to
# compare servers by, and to quote.
#
#   benches/syscalls.sh                                   # small, ours and tokio, 3 s, strace
#   benches/syscalls.sh --tool perf --scenario many       # at full speed
#   benches/syscalls.sh --scenario many --seconds 5 --servers ours
#
# Scenarios: small = 50 connections, many = 1,000; 64-byte requests.
# Loopback only; every process it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=small seconds=3 servers=ours,tokio tool=strace
while (($#)); do
    case $1 in
        --tool) tool=$2; shift 2 ;;
        --scenario) scenario=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --servers) servers=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $scenario in
    small) connections=50 ;;
    many) connections=1000 ;;
    *) echo "--scenario: small or many" >&2; exit 2 ;;
esac
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "--seconds: a whole number > 0" >&2; exit 2; }
case $tool in
    strace | perf) ;;
    *) echo "--tool: strace or perf" >&2; exit 2 ;;
esac
for need in "$tool:$([[ $tool == perf ]] && echo linux-perf || echo strace)" jq:jq; do
    command -v "${need%%:*}" >/dev/null || { echo "${need%%:*} not found: apt-get install ${need#*:}" >&2; exit 1; }
done

cargo build --release --quiet --features tls -p pool-manager -p pool-manager-bench \
    --example echo --example peer_tokio --example load
bin=target/release/examples
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
tmp=$(mktemp -d)
server_pid='' strace_pid=''
cleanup() {
    for pid in $strace_pid $server_pid; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_for, echo_server.
# shellcheck source=benches/common.sh
source benches/common.sh

# measure SERVER: prints one table row.
measure() {
    local name=$1 addr port json requests errors cmd
    port=$(free_port) addr=127.0.0.1:$port
    echo_server "$name" "$addr"
    "${cmd[@]}" >"$tmp/$name.out" 2>&1 &
    server_pid=$!
    wait_for "$tmp/$name.out" listening
    if [[ $tool == perf ]]; then
        local events=raw_syscalls:sys_enter call
        for call in recvfrom read sendto write epoll_wait epoll_pwait epoll_ctl futex; do
            events+=,syscalls:sys_enter_$call
        done
        perf stat -x, -e "$events" -p "$server_pid" -o "$tmp/$name.perf" &
        strace_pid=$!
        sleep 0.5 # perf opens its counters on every thread
    else
        strace -f -c -p "$server_pid" -o "$tmp/$name.strace" 2>"$tmp/$name.attach" &
        strace_pid=$!
        wait_for "$tmp/$name.attach" attached
        sleep 0.5 # let strace attach to every thread
    fi
    json=$("$bin/load" --addr "$addr" --connections "$connections" --warmup-ms 0 \
        --duration-ms "$((seconds * 1000))" --label "$scenario/$name" | tail -n 1)
    sleep 0.5 # the server sees the clients close
    kill -INT "$strace_pid"; wait "$strace_pid" || true; strace_pid=''
    kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=''
    requests=$(jq -r .requests <<<"$json")
    errors=$(jq -r '.errors.total' <<<"$json")
    if [[ $tool == perf ]]; then
        # perf stat -x,: "count,,event,…"; the total is raw_syscalls.
        awk -F, -v req="$requests" -v name="$name" -v sc="$scenario" -v lerr="$errors" '
            $3 ~ /sys_enter/ {
                n = $3; sub(/.*sys_enter_?/, "", n); c = $1 + 0
                if (n == "") all = c; else if (n ~ /^epoll_p?wait$/) col["epoll_wait"] += c; else col[n] = c
            }
            function r(x) { return sprintf("%.3f", x / req) }
            END {
                known = 0; for (n in col) known += col[n]
                printf "| %s | %s | %d | %s | **%s** | n/a | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                    sc, name, req, lerr, r(all), r(col["recvfrom"]), r(col["read"]),
                    r(col["sendto"]), r(col["write"]), r(col["epoll_wait"]),
                    r(col["epoll_ctl"]), r(col["futex"]), r(all - known)
            }' "$tmp/$name.perf"
        return
    fi
    # strace -c: "% time seconds usecs/call calls [errors] syscall"; the
    # errors column may be blank, so take calls as $4 and the name as $NF.
    awk -v req="$requests" -v name="$name" -v sc="$scenario" -v lerr="$errors" '
        $1 ~ /^[0-9.]+$/ && $NF != "total" {
            n = $NF; c = $4; all += c; if (NF == 6) err += $5
            if (n ~ /^epoll_(p?wait|pwait2)$/) n = "epoll_wait"
            if (n ~ /^(recvfrom|read|sendto|write|epoll_wait|epoll_ctl|futex)$/) col[n] += c
            else { other += c; rest[n] += c }
        }
        function r(x) { return sprintf("%.3f", x / req) }
        END {
            if (req < 1) { printf "| %s | %s | 0 | no requests |\n", sc, name; exit }
            printf "| %s | %s | %d | %s | **%s** | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                sc, name, req, lerr, r(all), r(err), r(col["recvfrom"]), r(col["read"]),
                r(col["sendto"]), r(col["write"]), r(col["epoll_wait"]),
                r(col["epoll_ctl"]), r(col["futex"]), r(other)
            line = ""
            for (n in rest) if (rest[n] / req >= 0.005) line = line sprintf(" %s %s,", n, r(rest[n]))
            if (line != "") print "- other, " sc "/" name ":" substr(line, 1, length(line) - 1) >>notes
        }' notes="$tmp/notes" "$tmp/$name.strace"
}

echo "Calls per request under $tool ($scenario: $connections connections, ${seconds} s; $(git rev-parse --short HEAD), $(date -u +%F))"
echo
echo "| scenario | server | requests | load errors | syscalls/req | failed/req | recvfrom | read | sendto | write | epoll_wait | epoll_ctl | futex | other |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
IFS=, read -ra list <<<"$servers"
for name in "${list[@]}"; do measure "$name"; done
if [[ -s $tmp/notes ]]; then echo; cat "$tmp/notes"; fi
