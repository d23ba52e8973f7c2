#!/usr/bin/env bash
# `banger image pull` from a local registry against the same work done with standard tools:
#   banger:   image pull REF  (manifest, layers verified and cached, flatten, guest payload,
#             mkfs.ext4 -d, owners and modes re-applied, registered)
#   baseline: skopeo copy docker://REF oci:DIR + umoci unpack + mkfs.ext4 -d (same size)
# each cold (empty layer cache / empty OCI dir) and warm (layers already there), in one run,
# and the ratios banger / baseline.
#
# The image: a two-layer OCI image made from this host's /usr/bin and /usr/share/doc (well
# over 200 MiB unpacked, tens of thousands of files), pushed with skopeo into Debian's
# docker-registry on a free loopback port.
#
#   bench/pull.sh            (release build; BENCH_PROFILE=debug uses target/debug as built)
#   needs root (umoci unpack keeps owners), scripts/setup done
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "bench/pull.sh: needs root" >&2; exit 1; }
profile=${BENCH_PROFILE:-release}
if [[ $profile == release ]]; then
  scripts/build >/dev/null
  bin=$PWD/target/release
  agent=$bin/banger-agent
else
  bin=$PWD/target/debug
  agent=$PWD/target/x86_64-unknown-linux-gnu/debug/banger-agent
fi

work=$(mktemp -d /tmp/bgpull.XXXXXX)
home=$work/home
reg_pid=
cleanup() {
  BANGER_HOME=$home "$bin/banger" daemon stop >/dev/null 2>&1 || true
  [[ -n $reg_pid ]] && kill "$reg_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
secs() { echo "$(( $1 / 1000 )).$(( $1 % 1000 / 100 ))"; }
b() { env BANGER_HOME="$home" BANGER_AGENT_BIN="$agent" "$bin/banger" "$@"; }

# The registry.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $reg
EOF
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
reg_pid=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null; do sleep 0.1; done

# The OCI layout: one gzip layer per tree, its config and manifest.
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
layers=() diff_ids=()
for tree in usr/bin usr/share/doc; do
  tar -C / --numeric-owner -cf "$work/layer.tar" "$tree"
  diff_ids+=("sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)")
  gzip -1 -c "$work/layer.tar" > "$work/layer.tgz"
  d=$(sha256sum "$work/layer.tgz" | cut -d' ' -f1)
  mv "$work/layer.tgz" "$layout/blobs/sha256/$d"
  layers+=("$d:$(stat -c %s "$layout/blobs/sha256/$d")")
  rm "$work/layer.tar"
done
python3 - "$layout" "${diff_ids[*]}" "${layers[*]}" <<'EOF'
import hashlib, json, os, sys
layout, diff_ids, layers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def blob(media, data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(layout, "blobs/sha256", d), "wb").write(data)
    return {"mediaType": media, "digest": "sha256:" + d, "size": len(data)}
config = blob("application/vnd.oci.image.config.v1+json", json.dumps({
    "architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
manifest = blob("application/vnd.oci.image.manifest.v1+json", json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": config,
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + l.split(":")[0], "size": int(l.split(":")[1])}
               for l in layers]}).encode())
manifest["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
json.dump({"schemaVersion": 2, "manifests": [manifest]}, open(os.path.join(layout, "index.json"), "w"))
open(os.path.join(layout, "oci-layout"), "w").write('{"imageLayoutVersion": "1.0.0"}')
EOF
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:v1" "docker://$reg/bench:v1"
rm -rf "$layout"
unpacked=$(du -sb /usr/bin /usr/share/doc | awk '{s+=$1} END {print s}')
compressed=$(for l in "${layers[@]}"; do echo "${l#*:}"; done | awk '{s+=$1} END {print s}')
echo "image: 2 layers, $(( compressed >> 20 )) MiB compressed, $(( unpacked >> 20 )) MiB unpacked"

# banger: a private home, the host's kernel.
mkdir -p "$home/config"
printf 'ssh_config = false\nweb = false\ndns = false\nwarm_start = false\n' > "$home/config/config.toml"
b kernel import host --from / >/dev/null
pull() {
  local t0; t0=$(now_ms)
  b image pull "$reg/bench:v1" --name "$1" >/dev/null 2>"$work/pull.log" || { cat "$work/pull.log" >&2; exit 1; }
  echo $(( $(now_ms) - t0 ))
}
banger_cold=$(pull cold)
banger_warm=$(pull warm)
size=$(b image show warm --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rootfs_bytes"])')

# Baseline: the same steps with standard tools, the same image size.
baseline() {
  local t0; t0=$(now_ms)
  skopeo copy --quiet --src-tls-verify=false "docker://$reg/bench:v1" "oci:$work/oci:v1"
  umoci unpack --image "$work/oci:v1" "$work/bundle" >/dev/null
  mkfs.ext4 -q -F -L rootfs -d "$work/bundle/rootfs" "$work/base.ext4" "$(( size >> 10 ))k" >/dev/null
  echo $(( $(now_ms) - t0 ))
  rm -rf "$work/bundle" "$work/base.ext4"
}
base_cold=$(baseline)
base_warm=$(baseline)

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "cold: banger $(secs "$banger_cold") s, skopeo+umoci+mkfs $(secs "$base_cold") s, ratio $(ratio "$banger_cold" "$base_cold")x"
echo "warm: banger $(secs "$banger_warm") s, skopeo+umoci+mkfs $(secs "$base_warm") s, ratio $(ratio "$banger_warm" "$base_warm")x"
echo "($profile build; image size $(( size >> 20 )) MiB)"
