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
home=$(mktemp -d /tmp/bgb.XXXXXX)
ns=bgbench$$
ip netns add "$ns"
cleanup() {
  ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" vm ls -aq 2>/dev/null |
    xargs -r ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" vm delete >/dev/null 2>&1 || true
  ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" daemon stop >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$home"
}
trap cleanup EXIT
b() { ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" "$@"; }

mkdir -p "$home/config" "$home/src/root" "$home/src/etc"
echo "firecracker_bin = \"$bin/banger-fake-firecracker\"" > "$home/config/config.toml"
echo "proc /proc proc defaults 0 0" > "$home/src/etc/fstab"
mkfs.ext4 -q -F -d "$home/src" "$home/rootfs.ext4" 256M >/dev/null
printf '\177ELF fake kernel' > "$home/vmlinux"
b image register --name bench --rootfs "$home/rootfs.ext4" --kernel "$home/vmlinux" >/dev/null
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
