#!/usr/bin/env bash
# Control-plane benchmark of `vm create` against the fake Firecracker (no guest boots): the time
# banger itself takes to resolve the image, prepare disks, set up the TAP, start and configure
# the VMM and hear from the agent. Release build, a private BANGER_HOME and network namespace.
#
#   bench/create.sh [RUNS] [CONCURRENT]     (defaults 20 and 20; needs root)
#
# Prints the median/min/max of RUNS sequential creates and the wall time and error count of
# CONCURRENT creates started at once.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
concurrent=${2:-20}
[[ $(id -u) -eq 0 ]] || { echo "bench/create.sh: needs root (network namespace, bridge, TAPs)" >&2; exit 1; }

cargo build --release --workspace --bins -q
bin=$PWD/target/release
name=bgbench
# shellcheck source=bench/fake-home.sh
source bench/fake-home.sh
# Warm-up: starts the daemon and makes the image's work seed.
b vm create --image bench --name warmup >/dev/null 2>&1
b vm delete warmup >/dev/null

now_ms() { date +%s%3N; }
times=()
for i in $(seq 1 "$runs"); do
  t0=$(now_ms)
  b vm create --image bench --name "seq-$i" >/dev/null 2>&1
  times+=($(( $(now_ms) - t0 )))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
median=${sorted[$(( runs / 2 ))]}
echo "vm create (sequential, $runs runs): median ${median} ms, min ${sorted[0]} ms, max ${sorted[$(( runs - 1 ))]} ms"
b vm ls -aq | xargs -r ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" vm delete >/dev/null

errors=0
t0=$(now_ms)
pids=()
for i in $(seq 1 "$concurrent"); do
  b vm create --image bench --name "par-$i" >/dev/null 2>"$home/err-$i" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || errors=$(( errors + 1 )); done
wall=$(( $(now_ms) - t0 ))
running=$(b vm ls -q | wc -l)
echo "vm create ($concurrent concurrent): wall ${wall} ms, errors ${errors}, running afterwards ${running}"
if (( errors > 0 )); then cat "$home"/err-* >&2; exit 1; fi
