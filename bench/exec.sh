#!/usr/bin/env bash
# Round trips of `banger vm exec NAME -- true` (issue 9's exec figures), each with baselines
# measured in the same run:
#
#  (c) against the fake Firecracker, whose host-mode agent runs the command on this host: CLI
#      start, the daemon's build check, the exec upgrade relayed to the agent (hybrid vsock
#      CONNECT through the fake), the spawn and the exit status back. Goal: a median of at most
#      20 ms. Baselines: `banger version` (process start-up alone) and `banger vm health` (the
#      build check plus one agent request through the daemon).
#  (b) with --qemu, on a real QEMU guest booted from the golden image bundle, against
#      `banger vm ssh NAME -- true` on the same guest. Goal: exec at most 1/3 of ssh.
#
#   bench/exec.sh [--release | --debug] [--qemu] [RUNS]     (RUNS default 50; needs root)
#
#   --release   (the default) cargo build --release --bins, and for --qemu the static agent
#               in release too; measures target/release
#   --debug     the same, debug build; measures target/debug
#   BANGER_BENCH_BIN=DIR          binaries already built in DIR: nothing is built
#   BANGER_BENCH_BUNDLE=FILE      the golden image bundle for --qemu (default: the newest
#                                 target/guest-cache/debian-bookworm-*.tar.zst)
#
# Each command runs RUNS times in one loop inside the VM's network namespace (one `ip netns
# exec` for the whole loop, bash's EPOCHREALTIME around each run, no process forked for the
# clock), so the figures are banger's own start-up and work, not the namespace setup `ip netns
# exec` does per call (several ms). The machine's load average is printed with the figures:
# on a shared machine the medians move with it. Timings are reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
profile=release qemu=0 runs=50
for arg in "$@"; do
  case $arg in
    --release) profile=release ;;
    --debug) profile=debug ;;
    --qemu) qemu=1 ;;
    *[!0-9]* | '') echo "bench/exec.sh: unknown argument $arg" >&2; exit 2 ;;
    *) runs=$arg ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "bench/exec.sh: needs root (network namespace, bridge, TAPs)" >&2; exit 1; }

target=x86_64-unknown-linux-gnu
if [[ -n ${BANGER_BENCH_BIN:-} ]]; then
  bin=$(cd "$BANGER_BENCH_BIN" && pwd)
  static_agent=$bin/../$target/$(basename "$bin")/banger-agent
else
  flag=(); [[ $profile == release ]] && flag=(--release)
  cargo build "${flag[@]}" --bins -q
  bin=$PWD/target/$profile
  static_agent=$PWD/target/$target/$profile/banger-agent
  if (( qemu )); then
    RUSTFLAGS='-C target-feature=+crt-static' cargo build "${flag[@]}" -q -p banger-agent --target "$target"
  fi
fi

# Runs `banger ARGS` RUNS times inside namespace NS with home HOME; prints one duration (µs)
# per line. A failing run stops the loop with its status.
times_in() {
  local ns=$1 home=$2 n=$3
  shift 3
  ip netns exec "$ns" env BANGER_HOME="$home" bash -c '
    n=$1; shift
    for ((i = 0; i < n; i++)); do
      s=$EPOCHREALTIME
      "$@" >/dev/null || { echo "bench/exec.sh: run $((i + 1)) of ${*:2} failed" >&2; exit 1; }
      e=$EPOCHREALTIME
      echo $(( ${e/./} - ${s/./} ))
    done' timing "$n" "$bin/banger" "$@"
}
# "median min max count" in µs of the durations on stdin.
stats() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)], a[1], a[NR], NR }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# Measures `banger ARGS` in NS/HOME; sets median_us and prints one line labelled LABEL.
measure() {
  local label=$1 ns=$2 home=$3
  shift 3
  local med min max count
  read -r med min max count < <(times_in "$ns" "$home" "$runs" "$@" | stats)
  [[ $count == "$runs" ]] || { echo "bench/exec.sh: $label: only ${count:-0} of $runs runs succeeded" >&2; exit 1; }
  median_us=$med
  printf '  %-44s median %6s ms   min %6s   max %6s\n' "$label" "$(ms "$med")" "$(ms "$min")" "$(ms "$max")"
}
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "bench/exec.sh: $profile binaries in $bin, $runs runs each, $(nproc) cores"

# (c) The fake Firecracker.
name=bgexec
# shellcheck source=bench/fake-home.sh
source bench/fake-home.sh
b vm create --image bench --name box >/dev/null 2>&1
b vm exec box -T -- true
echo "(c) against the fake Firecracker (load average $(load)):"
measure "banger version (start-up only)" "$ns" "$home" version
version_us=$median_us
measure "banger vm health box (one agent request)" "$ns" "$home" vm health box
measure "banger vm exec box -T -- true" "$ns" "$home" vm exec box -T -- true
exec_us=$median_us
echo "  exec - start-up: $(ms $(( exec_us - version_us ))) ms; exec / start-up: $(ratio "$exec_us" "$version_us"); goal: exec median <= 20 ms"
(( qemu )) || exit 0

# (b) A real QEMU guest: the golden image bundle and the host's kernel, in a home of its own.
bundle=${BANGER_BENCH_BUNDLE:-$(ls -t target/guest-cache/debian-bookworm-*.tar.zst 2>/dev/null | head -1)}
[[ -f $bundle ]] || { echo "bench/exec.sh: no golden image bundle (set BANGER_BENCH_BUNDLE)" >&2; exit 1; }
qhome=$(mktemp -d /tmp/bgexecq.XXXXXX)
qns=bgexecq$$
ip netns add "$qns"
# The guest's agent is the bundle's; the static one only matters to a daemon that bootstraps.
agent_env=(); [[ -x $static_agent ]] && agent_env=(BANGER_AGENT_BIN="$static_agent")
q() { ip netns exec "$qns" env BANGER_HOME="$qhome" "${agent_env[@]}" "$bin/banger" "$@"; }
qcleanup() {
  q vm ls -aq 2>/dev/null | xargs -r ip netns exec "$qns" env BANGER_HOME="$qhome" "$bin/banger" vm delete >/dev/null 2>&1 || true
  q daemon stop >/dev/null 2>&1 || true
  ip netns del "$qns" 2>/dev/null || true
  rm -rf "$qhome"
  cleanup
}
trap qcleanup EXIT
mkdir -p "$qhome/config"
printf 'vmm = "qemu"\nagent_wait_secs = 180\nssh_wait_secs = 180\nssh_config = false\nweb = false\nwarm_start = false\n' > "$qhome/config/config.toml"
q kernel import host --from / >/dev/null
q image import "$bundle" >/dev/null
t0=$EPOCHREALTIME
q vm create --name guest >/dev/null
t1=$EPOCHREALTIME
# Both ways in once before timing: ssh's known-hosts entry, the agent's mux.
q vm ssh guest -- true
q vm exec guest -T -- true
echo "(b) on a real QEMU guest ($(basename "$bundle"), created in $(ms $(( ${t1/./} - ${t0/./} ))) ms; load average $(load)):"
measure "banger vm ssh guest -- true" "$qns" "$qhome" vm ssh guest -- true
ssh_us=$median_us
measure "banger vm exec guest -T -- true" "$qns" "$qhome" vm exec guest -T -- true
exec_us=$median_us
echo "  exec / ssh: $(ratio "$exec_us" "$ssh_us"); goal: <= 0.33"
