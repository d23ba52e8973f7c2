#!/usr/bin/env bash
# Real-guest timings (release build, QEMU; TCG where there is no hardware virtualization):
#   1. `banger image bootstrap debian-bookworm` (Debian packages -> golden image)
#   2. `banger vm run --rm -- true`, end to end, RUNS times
#   3. a bare `qemu-system-x86_64` boot of the same kernel and disks (the argv banger used,
#      first-boot state reset) to sshd plus one `ssh ... true`, measured the same way
# and the ratio of 2 to 3: banger's overhead.
#
#   bench/boot.sh [RUNS]     (default 3; needs root, scripts/setup done)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
[[ $(id -u) -eq 0 ]] || { echo "bench/boot.sh: needs root" >&2; exit 1; }

scripts/build >/dev/null
bin=$PWD/target/release
builder=$(mktemp -d /tmp/bgbb.XXXXXX)
home=$(mktemp -d /tmp/bgbh.XXXXXX)
ns=bgboot$$
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
bare_pid=
cleanup() {
  [[ -n $bare_pid ]] && kill -9 "$bare_pid" 2>/dev/null || true
  b vm ls -aq 2>/dev/null | xargs -r ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" vm delete >/dev/null 2>&1 || true
  b daemon stop >/dev/null 2>&1 || true
  BANGER_HOME=$builder "$bin/banger" daemon stop >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$builder" "$home"
}
trap cleanup EXIT
b() { ip netns exec "$ns" env BANGER_HOME="$home" "$bin/banger" "$@"; }
now_ms() { date +%s%3N; }

# A benchmark's daemons leave the user's ~/.ssh/config alone.
mkdir -p "$builder/config"
printf 'ssh_config = false\nweb = false\n' > "$builder/config/config.toml"

# 1. The golden image, built in the host's network namespace (it downloads packages).
BANGER_HOME=$builder "$bin/banger" kernel import host --from / >/dev/null
t0=$(now_ms)
BANGER_HOME=$builder "$bin/banger" image bootstrap debian-bookworm --kernel-ref host >/dev/null 2>&1
boot_ms=$(( $(now_ms) - t0 ))
echo "image bootstrap debian-bookworm: $(( boot_ms / 1000 )).$(( boot_ms % 1000 / 100 )) s"

mkdir -p "$home/config"
printf 'vmm = "qemu"\nssh_config = false\nweb = false\nwarm_start = false\n' > "$home/config/config.toml"
b kernel import host --from / >/dev/null
b image import "$builder/state/bundles/debian-bookworm.tar.zst" >/dev/null

# 2. banger, end to end.
times=()
for i in $(seq 1 "$runs"); do
  t0=$(now_ms)
  b vm run --rm -- true >/dev/null 2>&1
  times+=($(( $(now_ms) - t0 )))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
run_ms=${sorted[$(( runs / 2 ))]}
echo "vm run --rm -- true: median ${run_ms} ms over $runs runs (${times[*]} ms)"

# 3. Bare QEMU with the argv banger used for a VM, on that VM's disks.
b vm create --name bare >/dev/null 2>&1
pid=$(b vm show bare --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
ip=$(b vm show bare --json | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p')
tap=$(b vm show bare --json | sed -n 's/.*"tap": "\([^"]*\)".*/\1/p')
dir=$(b vm show bare --json | sed -n 's/.*"dir": "\([^"]*\)".*/\1/p')
mapfile -d '' argv < "/proc/$pid/cmdline"
b vm stop bare >/dev/null
# The same first boot banger's VMs get: host keys regenerated.
debugfs -w -R "rm /etc/banger/firstboot-done" "$dir/root.ext4" >/dev/null 2>&1
key=$(b daemon status --json | sed -n 's/.*"state_dir": "\([^"]*\)".*/\1/p')/ssh/id_ed25519
run_dir=$(dirname "$(printf '%s\n' "${argv[@]}" | grep -m1 'qmp.sock' | sed 's/.*path=\([^,]*\).*/\1/')")
ip netns exec "$ns" ip tuntap add dev "$tap" mode tap
ip netns exec "$ns" ip link set "$tap" master banger0 up
mkdir -p "$run_dir"
t0=$(now_ms)
ip netns exec "$ns" "${argv[@]}" >/dev/null 2>&1 &
bare_pid=$!
until ip netns exec "$ns" ssh -q -i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=2 -o BatchMode=yes "root@$ip" true 2>/dev/null; do
  sleep 0.2
done
bare_ms=$(( $(now_ms) - t0 ))
kill -9 "$bare_pid"; wait "$bare_pid" 2>/dev/null || true; bare_pid=
echo "bare qemu boot to sshd + one ssh command: ${bare_ms} ms"
echo "banger overhead: vm run / bare = $(awk -v a="$run_ms" -v b="$bare_ms" 'BEGIN{printf "%.2f", a/b}')x (+$(( run_ms - bare_ms )) ms)"
