#!/usr/bin/env bash
# The soak (tests/soak.rs) in release, several times: how much the
# server's RSS grew from its baseline (taken after the warm-up) to the end
# of each run, against the test's bound (256 KiB), with the descriptors,
# threads and the ledger checked by the test itself. Prints a Markdown
# table for docs/reliability.md. The leak check that shows the bound
# catches a small leak is a mutation: `benches/mutants.sh --only soak-leak`.
#
#   benches/soak.sh                          # 3 runs of 100,000 connections
#   RUNS=10 POOL_SOAK_CONNECTIONS=300000 benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
export POOL_SOAK_CONNECTIONS=${POOL_SOAK_CONNECTIONS:-100000}
bound=$(sed -n 's/^const RSS_BOUND_KIB: u64 = \([0-9_]*\);/\1/p' tests/soak.rs)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "soak: $RUNS runs of $POOL_SOAK_CONNECTIONS connections, $(date -u +%F) at $(git rev-parse --short HEAD)"
echo
echo "| run | RSS grown (KiB) | bound (KiB) | passed | seconds |"
echo "|---:|---:|---:|---|---:|"
for run in $(seq 1 "$RUNS"); do
    began=$SECONDS
    if cargo test --release --quiet --locked --test soak -- --nocapture >"$out" 2>&1; then
        passed=yes
    else
        passed=no
    fi
    grown=$(sed -n 's/.*RSS grew \([0-9]*\) KiB.*/\1/p' "$out" | head -1)
    echo "| $run | ${grown:-?} | $bound | $passed | $((SECONDS - began)) |"
    if [[ $passed == no && -z $grown ]]; then
        tail -20 "$out" >&2
    fi
done
