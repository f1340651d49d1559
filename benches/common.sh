# Shell helpers shared by benches/profile.sh, benches/syscalls.sh and
# benches/callgrind.sh
# (sourced, not run).
# shellcheck shell=bash

# A loopback port nothing answers on, below the kernel's ephemeral range
# (a connection to a port in it can end up connected to itself, and seem
# answered).
free_port() {
    local low port
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) || low=32768
    ((low > 12000)) || low=32768
    while :; do
        port=$((10000 + RANDOM % (low - 10000)))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

# Waits up to 10 s for a line matching $2 in file $1.
wait_for() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; return 1
}

# echo_server NAME ADDR: sets the array `cmd` to the echo server NAME
# (ours: examples/echo.rs with the flags benches/compare.sh gives it;
# tokio: bench/examples/peer_tokio.rs) listening on ADDR, from the release
# examples in $bin.
# shellcheck disable=SC2034 # cmd: set for the caller (bash scopes it to the caller's local)
echo_server() {
    case $1 in
        ours) cmd=("$bin/echo" --max-workers 16 --read-deadline-ms 0 --write-deadline-ms 3000
            --backlog 1024 --buffer-size 4096 --addr "$2") ;;
        tokio) cmd=("$bin/peer_tokio" --buffer-size 4096 --addr "$2") ;;
        *) echo "unknown server: $1 (ours, tokio)" >&2; exit 2 ;;
    esac
}
