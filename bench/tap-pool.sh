#!/usr/bin/env bash
# The TAP pool's effect on `vm create` against the fake Firecracker: RUNS sequential creates
# with `tap_pool_size = 0` (each boot makes the bridge check and its TAP) and with
# `tap_pool_size = 4` (each boot takes a ready TAP; the pool refills in the background), in
# the same run, and the ratio of the medians. A private BANGER_HOME and network namespace.
#
#   bench/tap-pool.sh [RUNS] [BIN_DIR]     (defaults 20 and target/release, built when
#                                           missing; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
bin=${2:-$PWD/target/release}
[[ $(id -u) -eq 0 ]] || { echo "bench/tap-pool.sh: needs root (network namespace, bridge, TAPs)" >&2; exit 1; }
[[ -x $bin/banger ]] || cargo build --release --workspace --bins -q
name=bgpool
# shellcheck source=bench/fake-home.sh
source bench/fake-home.sh
now_ms() { date +%s%3N; }

# Median create time in ms with the pool at $1 TAPs.
median_with() {
  b daemon stop >/dev/null 2>&1 || true
  { echo "firecracker_bin = \"$bin/banger-fake-firecracker\""; echo "tap_pool_size = $1"; echo "ssh_config = false"; echo "web = false"; echo "warm_start = false"; } \
    > "$home/config/config.toml"
  # Warm-up: starts the daemon, makes the bridge and the image's work seed, fills the pool.
  b vm create --image bench --name "warm-$1" >/dev/null 2>&1
  sleep 1
  local times=() t0
  for i in $(seq 1 "$runs"); do
    t0=$(now_ms)
    b vm create --image bench --name "p$1-$i" >/dev/null 2>&1
    times+=($(( $(now_ms) - t0 )))
    # Let the refill finish, as it would between two creates a person types.
    sleep 0.2
  done
  b vm ls -aq | xargs -r ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" vm delete >/dev/null
  local sorted
  sorted=($(printf '%s\n' "${times[@]}" | sort -n))
  echo "${sorted[$(( runs / 2 ))]}"
}

without=$(median_with 0)
with=$(median_with 4)
echo "vm create, $runs sequential runs: median ${without} ms without the pool, ${with} ms with it"
echo "ratio with/without: $(awk -v a="$with" -v b="$without" 'BEGIN { printf "%.2f", a / b }')"
