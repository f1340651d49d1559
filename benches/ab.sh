#!/usr/bin/env bash
# Before/after in one run: builds the `echo` example of an earlier commit
# (default: the one before HEAD) as `echo-base`, then runs the comparison
# with both, interleaved, so that the "ours / base" rows are same-run
# ratios of the change.
#
#   benches/ab.sh                                   # HEAD~1, all scenarios
#   benches/ab.sh 95b25e8 --scenarios small,many --rounds 5
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-HEAD~1}
shift || true
root=$(pwd)
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
git worktree add --detach "$tree" "$base" >/dev/null
start=$(date +%s)
# Its own target directory, kept between runs (the dependencies build once).
(cd "$tree" && CARGO_TARGET_DIR="$root/target/ab-base" \
    cargo build --release --quiet --features tls --example echo)
cargo build --release --quiet --features tls -p pool-manager -p pool-manager-bench \
    --example echo --example peer_threads --example peer_tokio --example peer_actix \
    --example load --example compare
cp target/ab-base/release/examples/echo target/release/examples/echo-base
echo "built $(git rev-parse --short "$base") as echo-base in $(($(date +%s) - start)) s" >&2
# Not `exec`: the EXIT trap removes the worktree once the comparison ends.
target/release/examples/compare --servers base,ours,tokio "$@"
