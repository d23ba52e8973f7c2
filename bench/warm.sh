#!/usr/bin/env bash
# Warm start, in two parts that can run alone.
#
# qemu — on a real guest (TCG where there is no hardware virtualization):
#   1. `banger vm run --rm --cold -- true` (a boot), RUNS times
#   2. `banger image warm` (the template: one boot, saved)
#   3. `banger vm run --rm -- true` restored from the template, RUNS times
#   4. `banger vm create` from the template to ready
#   5. the memory an idle restored VM adds on the host: the PSS of its QEMU process, against
#      the memory its guest uses (MemTotal - MemAvailable)
#
# firecracker — against the fake Firecracker (no guest runs: banger's own path, the VMM's
# snapshot/load and the agent's identity step in its sandbox):
#   1. `banger image warm`
#   2. `banger vm create` from the template to ready, RUNS times (goal: <= 30 ms)
#   3. `banger vm create --cold` to ready, RUNS times; the medians and their ratio
#
#   bench/warm.sh [RUNS] [qemu|firecracker|all]   (defaults 3 and all; needs root,
#                                                 scripts/setup done for qemu)
#   BANGER_BENCH_BIN=DIR     binaries to use instead of a release build (e.g. target/debug)
#   BANGER_BENCH_BUNDLE=FILE a golden image bundle to import instead of bootstrapping one (qemu)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
part=${2:-all}
case $part in qemu | firecracker | all) ;; *)
  echo "bench/warm.sh: the part is qemu, firecracker or all, not $part" >&2
  exit 2
  ;;
esac
[[ $(id -u) -eq 0 ]] || { echo "bench/warm.sh: needs root" >&2; exit 1; }

if [[ -n ${BANGER_BENCH_BIN:-} ]]; then
  bin=$(cd "$BANGER_BENCH_BIN" && pwd)
else
  scripts/build >/dev/null
  bin=$PWD/target/release
fi
now_ms() { date +%s%3N; }
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }

# Each part runs in a subshell: its own home, namespace and cleanup trap.
qemu_part() (
builder=$(mktemp -d /tmp/bgwb.XXXXXX)
home=$(mktemp -d /tmp/bgwh.XXXXXX)
ns=bgwarm$$
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
cleanup() {
  b vm ls -aq 2>/dev/null | xargs -r ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" vm delete >/dev/null 2>&1 || true
  b daemon stop >/dev/null 2>&1 || true
  BANGER_HOME=$builder "$bin/banger" daemon stop >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$builder" "$home"
}
trap cleanup EXIT
b() { ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" "$@"; }

bundle=${BANGER_BENCH_BUNDLE:-}
if [[ -z $bundle ]]; then
  mkdir -p "$builder/config"
  printf 'ssh_config = false\nweb = false\nwarm_start = false\n' > "$builder/config/config.toml"
  BANGER_HOME=$builder "$bin/banger" kernel import host --from / >/dev/null
  BANGER_HOME=$builder "$bin/banger" image bootstrap debian-bookworm --kernel-ref host >/dev/null 2>&1
  bundle=$builder/state/bundles/debian-bookworm.tar.zst
fi
mkdir -p "$home/config"
# warm_start = false: templates only from `image warm`, so the cold runs stay cold.
printf 'vmm = "qemu"\nssh_config = false\nweb = false\nwarm_start = false\nagent_wait_secs = 180\nssh_wait_secs = 180\n' \
  > "$home/config/config.toml"
b kernel import host --from / >/dev/null
b image import "$bundle" >/dev/null

# 1. Cold.
cold=()
for _ in $(seq 1 "$runs"); do
  t0=$(now_ms); b vm run --rm --cold -- true >/dev/null 2>&1; cold+=($(( $(now_ms) - t0 )))
done
cold_ms=$(median "${cold[@]}")
echo "vm run --rm --cold -- true: median ${cold_ms} ms over $runs runs (${cold[*]} ms)"

# 2. The template.
t0=$(now_ms); b image warm debian-bookworm >/dev/null 2>&1; warm_make=$(( $(now_ms) - t0 ))
echo "image warm debian-bookworm (boot + save): ${warm_make} ms"
b image show debian-bookworm | grep templates

# 3. Warm.
warm=()
for _ in $(seq 1 "$runs"); do
  t0=$(now_ms); b vm run --rm -- true >/dev/null 2>&1; warm+=($(( $(now_ms) - t0 )))
done
warm_ms=$(median "${warm[@]}")
echo "vm run --rm -- true (restored): median ${warm_ms} ms over $runs runs (${warm[*]} ms)"
echo "warm / cold: $(awk -v a="$warm_ms" -v b="$cold_ms" 'BEGIN{printf "%.1f%%", 100*a/b}')"

# 4. Create to ready.
t0=$(now_ms); b vm create --name idle >/dev/null 2>&1; create_ms=$(( $(now_ms) - t0 ))
echo "vm create from the template to ready: ${create_ms} ms"
b vm show idle | grep 'warm start'

# 5. Memory of an idle restored VM.
sleep 10
pid=$(b vm show idle --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
pss=$(awk '/^Pss:/{print $2}' "/proc/$pid/smaps_rollup")
used=$(b vm ssh idle -- awk '/^MemTotal:/{t=$2} /^MemAvailable:/{a=$2} END{print t-a}' /proc/meminfo)
echo "idle restored VM: VMM PSS ${pss} KiB, guest uses ${used} KiB: PSS is $(awk -v a="$pss" -v b="$used" 'BEGIN{printf "%.0f%%", 100*a/b}') of it"
# What of it is the VM's alone (written or anonymous: QEMU's own heap and TCG's code cache,
# the guest pages written since the restore) and what is the template's memory file in the
# page cache, shared by every VM restored from it and counted whole while this one is alone.
priv=$(awk '/^Private_Dirty:/{print $2}' "/proc/$pid/smaps_rollup")
shared_file=$(awk '/^Rss:/{r=$2} /^Anonymous:/{a=$2} END{print r-a}' "/proc/$pid/smaps_rollup")
echo "  of which private dirty ${priv} KiB ($(awk -v a="$priv" -v b="$used" 'BEGIN{printf "%.0f%%", 100*a/b}') of the guest's), file-backed ${shared_file} KiB"
)

firecracker_part() (
  name=bgwarmfc
  # shellcheck source=bench/fake-home.sh
  source bench/fake-home.sh
  out=$(b image warm bench 2>&1) || { echo "$out" >&2; exit 1; }
  echo "firecracker (fake): $(b image show bench | grep templates)"
  # Warm-up: the work seed, and the page cache of the template's files.
  b vm create --name warmup --image bench >/dev/null 2>&1
  b vm show warmup | grep 'warm start'
  b vm delete warmup >/dev/null
  warm=() cold=()
  for i in $(seq 1 "$runs"); do
    t0=$(now_ms); b vm create --name "w$i" --image bench >/dev/null 2>&1; warm+=($(( $(now_ms) - t0 )))
    t0=$(now_ms); b vm create --cold --name "c$i" --image bench >/dev/null 2>&1; cold+=($(( $(now_ms) - t0 )))
    b vm delete "w$i" "c$i" >/dev/null
  done
  warm_ms=$(median "${warm[@]}")
  cold_ms=$(median "${cold[@]}")
  echo "firecracker (fake): vm create from the template to ready: median ${warm_ms} ms over $runs runs (${warm[*]} ms; goal <= 30 ms)"
  echo "firecracker (fake): vm create --cold to ready: median ${cold_ms} ms over $runs runs (${cold[*]} ms)"
  echo "firecracker (fake): template / cold: $(awk -v a="$warm_ms" -v b="$cold_ms" 'BEGIN{printf "%.0f%%", 100*a/b}')"
)

if [[ $part == qemu || $part == all ]]; then qemu_part; fi
if [[ $part == firecracker || $part == all ]]; then firecracker_part; fi
