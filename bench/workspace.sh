#!/usr/bin/env bash
# Workspace transfer, part 1 (host side, no VM): for a generated repository with COMMITS
# commits (default 2000) and about 100 MiB of history, the bytes and time of banger's
# transfer stream (`banger-workspace`'s `stream` example: a depth-10 no-checkout clone plus
# the work tree's changes, as one tar) against `git clone --depth 10 --no-checkout` of the
# same repository. Goal: at most 1.1x the clone's bytes.
#
#   bench/workspace.sh [COMMITS] [-- EXEC_ARGS...]
#
# Part 1b (as root): `banger vm workspace prepare` itself, end to end against the fake
# Firecracker (its host-mode agent unpacks and checks out in the fake VM's private /root): the
# bytes its copy stage reports and its median time, against `git clone --depth 10` with and
# without a checkout of the same repository (the guest side of a prepare checks out).
#
# Part 2 (as root): the exec round trips, by bench/exec.sh EXEC_ARGS (see there: `--qemu`
# adds `vm exec -- true` against `vm ssh -- true` on a real QEMU guest, `--debug` measures a
# debug build): `vm exec -- true` against the fake Firecracker (goal: a median of at most
# 20 ms), and with --qemu on the same real guest as `vm ssh -- true` (goal: at most 1/3).
#
# The clone's bytes are the files of its `.git` (what it wrote; sample hooks included), and
# its pack alone is printed too. Both sides read the repository through git's file://
# transport, cold page cache not forced. The repository's work tree has one modified file and
# one untracked file, so the stream carries a (small) overlay.
set -euo pipefail
cd "$(dirname "$0")/.."
commits=2000
if [[ ${1:-} != -- && -n ${1:-} ]]; then commits=$1; shift; fi
[[ ${1:-} == -- ]] && shift
exec_args=("$@")
work=$(mktemp -d /tmp/bgws.XXXXXX)
trap 'rm -rf "$work"' EXIT
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 LC_ALL=C
now_ms() { date +%s%3N; }

cargo build -q -p banger-workspace --example stream
stream_bin=$PWD/target/debug/examples/stream

# The repository: 200 small text files, 20 binary files of which each commit rewrites one
# with 52 KiB of fresh random bytes (incompressible: ~100 MiB of history over 2000
# commits, about 1 MiB in HEAD's tree), and a text file every commit appends to.
repo=$work/repo
git init -q -b main "$repo"
t0=$(now_ms)
{
  size=53248
  for i in $(seq 1 "$commits"); do
    printf 'commit refs/heads/main\ncommitter Bench <bench@example.com> %d +0000\ndata <<EOF\ncommit %d\nEOF\n' $((1700000000 + i)) "$i"
    if (( i == 1 )); then
      for f in $(seq 1 200); do printf 'M 100644 inline src/file%03d.rs\ndata <<EOF\n// source file %d\nfn f%d() {}\nEOF\n' "$f" "$f" "$f"; done
    fi
    printf 'M 100644 inline data/blob%02d.bin\ndata %d\n' $((i % 20)) "$size"
    head -c "$size" /dev/urandom
    printf '\nM 100644 inline CHANGELOG\ndata <<EOF\nentry %d\nEOF\n\n' "$i"
  done
} | git -C "$repo" fast-import --quiet
git -C "$repo" reset -q --hard main
git -C "$repo" gc -q
gen_ms=$(( $(now_ms) - t0 ))
history=$(du -sb "$repo/.git/objects" | cut -f1)
echo "repository: $(git -C "$repo" rev-list --count HEAD) commits, $(( history / 1048576 )) MiB of objects (packed), generated in $(( gen_ms / 1000 )) s"
echo 'changed on the host' >> "$repo/src/file001.rs"
echo 'scratch' > "$repo/notes.txt"

median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }

# git clone --depth 10 --no-checkout, RUNS times (median)
runs=5
clone_times=()
for i in $(seq 1 "$runs"); do
  rm -rf "$work/clone"
  t0=$(now_ms)
  git clone -q --depth 10 --no-checkout "file://$repo" "$work/clone"
  clone_times+=($(( $(now_ms) - t0 )))
done
clone_ms=$(median "${clone_times[@]}")
clone_bytes=$(find "$work/clone/.git" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
pack_bytes=$(find "$work/clone/.git/objects/pack" -name '*.pack' -printf '%s\n' | awk '{s += $1} END {print s}')

# banger's stream (inspection included: the stream cannot be written without it)
stream_times=()
for i in $(seq 1 "$runs"); do
  t0=$(now_ms)
  "$stream_bin" "$repo" "$work/stream.tar" 2>"$work/stream.err"
  stream_times+=($(( $(now_ms) - t0 )))
done
stream_ms=$(median "${stream_times[@]}")
stream_bytes=$(stat -c %s "$work/stream.tar")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
echo "git clone --depth 10 --no-checkout: $clone_bytes bytes in .git (pack $pack_bytes), median ${clone_ms} ms (${clone_times[*]})"
echo "banger transfer stream:             $stream_bytes bytes ($(cat "$work/stream.err")), median ${stream_ms} ms (${stream_times[*]})"
echo "ratio (stream / clone .git): $(ratio "$stream_bytes" "$clone_bytes")   (stream / pack: $(ratio "$stream_bytes" "$pack_bytes"); goal <= 1.1)"
echo "time ratio (stream / clone): $(ratio "$stream_ms" "$clone_ms")"

# Part 1b: a real prepare into a fake-Firecracker VM (debug binaries, as the tests use).
if [[ $(id -u) -eq 0 ]]; then
  cargo build -q --bins
  bin=$PWD/target/debug name=bgwsprep
  # shellcheck source=bench/fake-home.sh
  source bench/fake-home.sh
  trap 'cleanup; rm -rf "$work"' EXIT
  b vm create --name ws --image bench >/dev/null 2>"$work/create.err" || { cat "$work/create.err" >&2; exit 1; }
  checkout_times=()
  for i in $(seq 1 "$runs"); do
    rm -rf "$work/clone"
    t0=$(now_ms)
    git clone -q --depth 10 "file://$repo" "$work/clone"
    checkout_times+=($(( $(now_ms) - t0 )))
  done
  prepare_times=()
  for i in $(seq 1 "$runs"); do
    t0=$(now_ms)
    b vm workspace prepare --replace ws "$repo" 2>"$work/prepare.err" >/dev/null
    prepare_times+=($(( $(now_ms) - t0 )))
  done
  prepare_ms=$(median "${prepare_times[@]}")
  checkout_ms=$(median "${checkout_times[@]}")
  shipped=$(sed -n 's/.*copy[^0-9]*[0-9]* files, \([0-9]*\) bytes.*/\1/p' "$work/prepare.err" | tail -1)
  echo
  echo "vm workspace prepare (fake Firecracker): ${shipped:-?} bytes shipped, median ${prepare_ms} ms (${prepare_times[*]})"
  echo "git clone --depth 10 (with checkout):    median ${checkout_ms} ms (${checkout_times[*]})"
  echo "bytes ratio (shipped / clone .git): $(ratio "${shipped:-0}" "$clone_bytes")   time ratio (prepare / clone with checkout): $(ratio "$prepare_ms" "$checkout_ms"), (prepare / clone --no-checkout): $(ratio "$prepare_ms" "$clone_ms")"
fi

# Part 2: the exec round trips (one implementation: bench/exec.sh).
if [[ $(id -u) -eq 0 ]]; then
  echo
  bench/exec.sh "${exec_args[@]}"
else
  echo "exec round trips skipped: bench/exec.sh needs root"
fi
