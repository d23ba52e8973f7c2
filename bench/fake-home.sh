# Sourced by the benchmarks that run against the fake Firecracker: a private banger home in a
# network namespace of its own, `b` to run the CLI there, an image `bench` (a small real ext4
# and a fake kernel), and a cleanup trap that deletes the VMs, stops the daemon and removes
# both. Needs `bin` (the directory of banger's binaries) and `name` (for temp names).
home=$(mktemp -d "/tmp/$name.XXXXXX")
ns=$name$$
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
# ssh_config = false, web = false: a benchmark's daemon leaves the user's ~/.ssh/config and the web UI's port 7777 alone.
# warm_start = false: templates only when a benchmark makes them (`image warm`).
printf 'firecracker_bin = "%s"\nssh_config = false\nweb = false\nwarm_start = false\n' "$bin/banger-fake-firecracker" > "$home/config/config.toml"
echo "proc /proc proc defaults 0 0" > "$home/src/etc/fstab"
mkfs.ext4 -q -F -d "$home/src" "$home/rootfs.ext4" 256M >/dev/null
printf '\177ELF fake kernel' > "$home/vmlinux"
b image register --name bench --rootfs "$home/rootfs.ext4" --kernel "$home/vmlinux" >/dev/null
