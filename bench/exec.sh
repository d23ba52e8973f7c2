#!/usr/bin/env bash
# Round trip of `banger vm exec NAME -- true` against the fake Firecracker (the host-mode agent
# runs the command on this host): CLI start, daemon build check, the exec upgrade relayed to
# the agent, the spawn and the exit status back. Goal: a median of at most 20 ms. For
# comparison, `banger version` through the same `ip netns exec` (process start-up alone) and
# `banger vm health` (the daemon's build check plus one agent request).
# A private BANGER_HOME and network namespace.
#
#   bench/exec.sh [RUNS]     (default 50; needs root)
#   BANGER_BENCH_BIN=target/debug bench/exec.sh   (an existing build instead of a release one)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
[[ $(id -u) -eq 0 ]] || { echo "bench/exec.sh: needs root (network namespace, bridge, TAPs)" >&2; exit 1; }

if [[ -n ${BANGER_BENCH_BIN:-} ]]; then
  bin=$(cd "$BANGER_BENCH_BIN" && pwd)
else
  cargo build --release --workspace --bins -q
  bin=$PWD/target/release
fi
name=bgexec
# shellcheck source=bench/fake-home.sh
source bench/fake-home.sh
b vm create --image bench --name box >/dev/null 2>&1
b vm exec box -T -- true

now_us() { date +%s%6N; }
# The median, min and max of RUNS runs of the command, in ms with one decimal.
measure() {
  local label=$1 times=() t0 i
  shift
  for i in $(seq 1 "$runs"); do
    t0=$(now_us)
    "$@" >/dev/null
    times+=($(( $(now_us) - t0 )))
  done
  local sorted=($(printf '%s\n' "${times[@]}" | sort -n))
  ms() { printf '%d.%d' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }
  echo "$label ($runs runs): median $(ms "${sorted[$(( runs / 2 ))]}") ms, min $(ms "${sorted[0]}") ms, max $(ms "${sorted[$(( runs - 1 ))]}") ms"
}
measure "banger version (start-up only)" b version
measure "banger vm health box (one agent request)" b vm health box
measure "banger vm exec box -- true" b vm exec box -T -- true
