# Shell helpers shared by benches/profile.sh and benches/syscalls.sh
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
