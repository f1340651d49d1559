#!/usr/bin/env bash
# Mutation check: proves that the documented tests and loom models can fail.
# Each benches/mutants/NAME.patch is a small change (made with `git diff`)
# that a test must catch, with a header that `git apply` skips:
#   # why: what the mutation breaks (one line)
#   # test: a command that must fail with it (one line each; all must fail)
#   # timeout: seconds each test command may run (default 600)
#   # hang: caught    (optional: the documented failure is a deadlock, so a
#                      time-out counts as caught)
# Other lines before the diff (`# note: ...`) are for the reader.
# The tracked files of the working tree (uncommitted edits included) are
# copied to target/mutants/src. Then, one patch at a time: `git apply
# --check` (`stale` if it no longer applies), the test built with the same
# flags (`cargo test --no-run`; `broken` if it does not build), run under
# `timeout`, the patch reverted. Builds share target/mutants/target, and
# target/mutants/loom for `--cfg loom`, so rebuilds are incremental; logs go
# to target/mutants/logs/NAME.log. A result per mutation:
#   caught   every test command failed (or hung, with `hang: caught`)
#   missed   a test command passed with the mutation applied
#   skipped  a test skipped itself (a tool it runs is missing)
#   timeout  a test command hung, and a hang is not the documented failure
#   stale    the patch no longer applies, or its test no longer exists
#   broken   the mutated tree does not build
# Prints a Markdown table; exits 1 unless every mutation was caught.
#
# Usage: benches/mutants.sh [--list] [--only NAME[,NAME]] [--baseline]
#   --list      the mutations, what each breaks and its tests
#   --only      just these mutations
#   --baseline  run the tests of the mutations on the unmutated copy
#               instead (each must pass: `ok`)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
patches=$root/benches/mutants
work=$root/target/mutants
src=$work/src
logs=$work/logs
export CARGO_TERM_COLOR=never

only='' list='' baseline='' expected=caught
while (($#)); do
    case $1 in
    --list) list=1 ;;
    --only) only=${2:?--only NAME[,NAME]}; shift ;;
    --only=*) only=${1#--only=} ;;
    --baseline) baseline=1 expected=ok ;;
    -h | --help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "mutants: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# The header field $2 of patch $1, one value a line.
field() { sed -n "s/^# $2: *//p" "$1"; }

names=()
for p in "$patches"/*.patch; do
    names+=("$(basename "$p" .patch)")
done
if [[ -n $only ]]; then
    IFS=, read -ra names <<<"$only"
    for n in "${names[@]}"; do
        [[ -f $patches/$n.patch ]] || { echo "mutants: no $patches/$n.patch" >&2; exit 2; }
    done
fi

if [[ -n $list ]]; then
    for n in "${names[@]}"; do
        p=$patches/$n.patch
        echo "$n: $(field "$p" why)"
        field "$p" test | sed 's/^/    test: /'
    done
    exit 0
fi

# The scratch copy: tracked files that exist, with fresh modification times
# (so that cargo never takes an older build of a mutated file for current),
# in a repository of its own for `git apply`.
rm -rf "$src"
mkdir -p "$src" "$logs"
git ls-files -z | while IFS= read -r -d '' f; do
    [[ -e $f ]] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xmf - -C "$src" || exit 1
git -C "$src" init -q || exit 1

# One test command: builds it, runs it; sets `outcome` (as above, or `ok`
# for a command that passed) and `line` (the evidence).
run_test() {
    local cmd=$1 limit=$2 hang=$3 log=$4 out=$work/out
    local target=$work/target
    [[ $cmd == *"--cfg loom"* ]] && target=$work/loom
    local build=${cmd%% -- *}
    build=${build/cargo test/cargo test --no-run}
    echo "\$ $build" >>"$log"
    if ! (cd "$src" && CARGO_TARGET_DIR=$target bash -c "$build") </dev/null >>"$log" 2>&1; then
        outcome=broken line=$(grep -m1 '^error' "$log" || echo 'the build failed')
        return
    fi
    echo "\$ $cmd" >>"$log"
    # In the background, so that the trap below can stop it: `timeout`
    # runs it in a process group of its own, out of reach of a Ctrl-C.
    (cd "$src" && CARGO_TARGET_DIR=$target exec timeout -k 10 "$limit" bash -c "$cmd") \
        </dev/null >"$out" 2>&1 &
    running=$!
    wait "$running"
    local rc=$?
    running=''
    cat "$out" >>"$log"
    if ((rc == 124 || rc == 137)); then
        outcome=timeout line="hung: killed after $limit s"
        [[ -z $hang ]] || outcome=caught
    elif ! grep -qE '^running [1-9]' "$out"; then
        outcome=stale line="no test ran: ${cmd##* }"
    elif ((rc != 0)); then
        # The panic's message: the line after "panicked at".
        outcome=caught line=$(grep -m1 -A1 'panicked at' "$out" | tail -n1 | cut -c1-120)
    elif grep -q '^SKIPPED:' "$out"; then
        outcome=skipped line=$(grep -m1 '^SKIPPED:' "$out" | cut -c1-120)
    else
        outcome=ok line="passed: ${cmd##* }"
    fi
}
running=''
# Interrupted: the running test goes too (the scratch copy, perhaps left
# mutated, is made anew by the next run).
trap '[[ -z $running ]] || kill -TERM "$running"; exit 130' INT TERM

# One mutation (or its baseline): sets `result` and `evidence`.
run_mutation() {
    local name=$1 p=$patches/$1.patch log=$logs/$1.log
    local limit hang='' cmd
    limit=$(field "$p" timeout | head -n1)
    limit=${limit:-600}
    # A hang is never a baseline's expected outcome.
    [[ -n $baseline ]] || hang=$(field "$p" hang | grep -x caught)
    : >"$log"
    if [[ -z $baseline ]] && ! git -C "$src" apply --check "$p" >>"$log" 2>&1; then
        result=stale evidence="the patch no longer applies"
        return
    fi
    [[ -n $baseline ]] || git -C "$src" apply "$p"
    result='' evidence=''
    while IFS= read -r cmd; do
        run_test "$cmd" "$limit" "$hang" "$log"
        # With a mutation, `ok` means the test missed it; in a baseline, a
        # failure or a hang is the test's own.
        if [[ -z $baseline && $outcome == ok ]]; then outcome=missed; fi
        if [[ -n $baseline && $outcome == caught ]]; then outcome=fails; fi
        # The first outcome that is not the expected one stands.
        if [[ -z $result || ($result == "$expected" && $outcome != "$expected") ]]; then
            result=$outcome
            evidence=$line
        elif [[ $outcome == "$expected" && $result == "$expected" ]]; then
            evidence="$evidence; $line"
        fi
    done < <(field "$p" test)
    [[ -n $result ]] || result=stale evidence="no '# test:' line"
    [[ -n $baseline ]] || git -C "$src" apply -R "$p" || {
        echo "mutants: cannot revert $name" >&2
        exit 1
    }
}

started=$SECONDS
rows=() failed=0
for n in "${names[@]}"; do
    began=$SECONDS
    echo "mutants: $n ..." >&2
    run_mutation "$n"
    took=$((SECONDS - began))
    echo "mutants: $n: $result ($took s) $evidence" >&2
    [[ $result == "$expected" ]] || failed=$((failed + 1))
    rows+=("| \`$n\` | **$result** | $took s | ${evidence//|/\\|} |")
done

echo
if [[ -n $baseline ]]; then echo "Baseline (no mutation): each test must pass."; echo; fi
echo "| mutation | result | time | evidence |"
echo "|---|---|---:|---|"
printf '%s\n' "${rows[@]}"
echo
echo "total $((SECONDS - started)) s; ${#names[@]} run, $failed not $expected; logs in ${logs#"$root"/}/"
((failed == 0))
