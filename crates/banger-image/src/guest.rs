//! The guest payload injected into every image (the guest contract): written into the
//! staging [`Tree`] with metadata entries (`0:0`, 0755 programs, 0644 configuration), so
//! the image gets them with the right owners whoever builds it.
//!
//! | path | what |
//! |---|---|
//! | `/usr/local/bin/banger-agent` | the guest agent (the caller's static binary) |
//! | `/usr/local/lib/banger/network-up` | POSIX sh: applies `/etc/banger/network.env` with `ip` |
//! | `/etc/systemd/system/banger-network.service` | runs it early (oneshot) |
//! | `/etc/systemd/system/banger-agent.service` | runs the agent (vsock + virtio-serial) |
//! | `/etc/systemd/system/banger-firstboot.service` | per-VM SSH host keys on first boot |
//! | `/etc/modules-load.d/banger.conf` | the virtio/vsock modules the image's kernel modules have |
//! | `/etc/systemd/system/*.wants/banger-*.service` | enable links (no systemctl in a chroot) |
//! | `/lib/modules/<version>` | the kernel's modules, when given |
//!
//! What runs as PID 1 is decided here too ([`resolve_init`]): an image whose tree has
//! systemd (`/lib/systemd/systemd` or `/usr/lib/systemd/systemd`, through the image's own
//! symlinks) boots it as always; one without boots banger's minimal init (the agent, see
//! `banger-agent`'s `init` module) unless systemd is asked for, which then writes the
//! marker `/etc/banger/install-systemd` (the agent as init installs systemd on first boot).
//! The systemd units are injected either way: harmless without systemd, and used once it is
//! installed.
//!
//! At build time `/etc/ssh/ssh_host_*` and `/etc/banger/firstboot-done` are removed, so no
//! two VMs share host keys. Parent directories are resolved through the image's own
//! symlinks (`/lib` → `usr/lib` on merged-/usr systems) without leaving the image.

use std::fs;
use std::path::Path;

use banger_core::guest_init::{GuestInit, INSTALL_SYSTEMD_MARKER};

use crate::ImageError;
use crate::flatten::{EntryKind, Install, Meta, Tree, descendants, join};

/// Where the agent binary goes.
pub const AGENT_PATH: &str = "/usr/local/bin/banger-agent";
/// Where the network bootstrap script goes.
pub const NETWORK_UP_PATH: &str = "/usr/local/lib/banger/network-up";
/// The directory of the injected units.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// The network bootstrap unit.
pub const NETWORK_UNIT: &str = "banger-network.service";
/// The agent unit.
pub const AGENT_UNIT: &str = "banger-agent.service";
/// The first-boot unit.
pub const FIRSTBOOT_UNIT: &str = "banger-firstboot.service";
/// The modules-load configuration.
pub const MODULES_LOAD_PATH: &str = "/etc/modules-load.d/banger.conf";
/// The modules the guest needs, in load order; only those the image's kernel modules
/// provide (as a module file or built in) are listed in [`MODULES_LOAD_PATH`], because
/// systemd-modules-load fails its unit on a module it cannot find.
pub const WANTED_MODULES: [&str; 7] = [
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport",
    "virtio_net",
    "virtio_blk",
    // The ACPI power button QEMU's `system_powerdown` presses, seen by logind through evdev.
    "button",
    "evdev",
];
/// The marker the first-boot unit leaves once host keys exist.
pub const FIRSTBOOT_DONE: &str = "/etc/banger/firstboot-done";

/// The network bootstrap script (see the guest contract). `$1` overrides the
/// configuration file, `BANGER_NET_WAIT` the seconds to wait for the interface.
pub const NETWORK_UP_SCRIPT: &str = r#"#!/bin/sh
# banger network bootstrap: run by banger-network.service early in boot.
# Reads KEY=VALUE lines from $1 (default /etc/banger/network.env): BANGER_IP,
# BANGER_PREFIX, BANGER_GATEWAY and BANGER_MAC. Configures the interface whose MAC
# address is BANGER_MAC (any case), waiting up to BANGER_NET_WAIT seconds (default 10)
# for it, else the first interface other than lo. Safe to run again.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

env_file=${1:-/etc/banger/network.env}
wait_secs=${BANGER_NET_WAIT:-10}

log() { echo "banger-network: $*" >&2; }

if [ ! -r "$env_file" ]; then
    log "$env_file not found: nothing to configure"
    exit 0
fi

ip_addr=
prefix=
gateway=
mac=
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        '#'* | '') continue ;;
    esac
    key=${line%%=*}
    value=${line#*=}
    case $value in
        \"*\") value=${value#\"}; value=${value%\"} ;;
    esac
    case $key in
        BANGER_IP) ip_addr=$value ;;
        BANGER_PREFIX) prefix=$value ;;
        BANGER_GATEWAY) gateway=$value ;;
        BANGER_MAC) mac=$value ;;
    esac
done < "$env_file"

if [ -z "$ip_addr" ] || [ -z "$prefix" ]; then
    log "BANGER_IP or BANGER_PREFIX missing from $env_file"
    exit 1
fi

lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }
want=$(lower "$mac")

by_mac() {
    [ -n "$want" ] || return 1
    for dev in /sys/class/net/*; do
        [ -e "$dev/address" ] || continue
        name=${dev##*/}
        [ "$name" = lo ] && continue
        if [ "$(lower "$(cat "$dev/address")")" = "$want" ]; then
            echo "$name"
            return 0
        fi
    done
    return 1
}

first_iface() {
    for dev in /sys/class/net/*; do
        [ -e "$dev/address" ] || continue
        name=${dev##*/}
        [ "$name" = lo ] && continue
        echo "$name"
        return 0
    done
    return 1
}

[ -n "$want" ] || wait_secs=0
tries=0
while :; do
    if iface=$(by_mac); then
        break
    fi
    if [ "$tries" -ge "$wait_secs" ]; then
        if ! iface=$(first_iface); then
            log "no network interface found"
            exit 1
        fi
        log "no interface has MAC address '$mac'; using $iface"
        break
    fi
    tries=$((tries + 1))
    sleep 1
done

ip link set dev lo up 2>/dev/null || true
ip link set dev "$iface" up || exit 1
ip addr replace "$ip_addr/$prefix" dev "$iface" || exit 1
if [ -n "$gateway" ]; then
    ip route replace default via "$gateway" dev "$iface" || exit 1
fi
log "$iface: $ip_addr/$prefix${gateway:+ via $gateway}"
"#;

/// `banger-network.service`: early, before the network targets and sshd, like
/// systemd-networkd (which it does not need).
pub const NETWORK_UNIT_TEXT: &str = "\
# Installed by banger.
[Unit]
Description=banger: bring up the network from /etc/banger/network.env
DefaultDependencies=no
After=systemd-udevd.service systemd-modules-load.service local-fs.target
Wants=network.target
Before=network.target network-online.target ssh.service shutdown.target
Conflicts=shutdown.target
ConditionPathExists=/etc/banger/network.env

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/lib/banger/network-up

[Install]
WantedBy=multi-user.target network-online.target
";

/// `banger-agent.service`: the agent in its default mode, after the modules, never waiting
/// for the network, restarted forever. No `udevadm settle`: it waited for every device event
/// of the boot (seconds under TCG, more with every package's rules), while the agent finds
/// its virtio-serial port itself, through sysfs, as soon as the kernel adds it.
pub const AGENT_UNIT_TEXT: &str = "\
# Installed by banger.
[Unit]
Description=banger guest agent
After=systemd-modules-load.service systemd-udevd.service
StartLimitIntervalSec=0

[Service]
ExecStartPre=-/sbin/modprobe -a virtio_console vmw_vsock_virtio_transport
ExecStart=/usr/local/bin/banger-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";

/// `banger-firstboot.service`: this VM's own SSH host keys, once.
pub const FIRSTBOOT_UNIT_TEXT: &str = "\
# Installed by banger.
[Unit]
Description=banger: generate this VM's SSH host keys
ConditionPathExists=!/etc/banger/firstboot-done
After=local-fs.target
Before=ssh.service ssh.socket

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'rm -f /etc/ssh/ssh_host_*'
ExecStart=/bin/sh -c 'if command -v ssh-keygen >/dev/null; then ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key && ssh-keygen -q -t ecdsa -N \"\" -f /etc/ssh/ssh_host_ecdsa_key; fi'
ExecStart=/bin/mkdir -p /etc/banger
ExecStart=/bin/touch /etc/banger/firstboot-done

[Install]
WantedBy=multi-user.target
";

/// A drop-in ordering sshd after the work disk is mounted at `/root`: the managed key lives in
/// `/root/.ssh/authorized_keys` on that disk, so sshd must not answer before it is there.
pub const SSH_DROPIN_PATH: &str = "/etc/systemd/system/ssh.service.d/banger.conf";
pub const SSH_DROPIN_TEXT: &str = "\
# Installed by banger: the managed key is on the work disk mounted at /root.
[Unit]
After=root.mount
";

/// sshd uses the host keys `banger-firstboot.service` makes. RSA is left out: generating an
/// RSA key takes tens of seconds on an emulated CPU, on the path to sshd.
pub const SSHD_DROPIN_PATH: &str = "/etc/ssh/sshd_config.d/banger.conf";
pub const SSHD_DROPIN_TEXT: &str = "\
# Installed by banger: host keys are made at first boot (no RSA: too slow on emulated CPUs).
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
";

/// Units masked (linked to /dev/null): periodic ext4 scrubbing has no place in a disposable
/// VM and costs seconds of CPU at boot.
pub const MASKED_UNITS: [&str; 2] = ["e2scrub_reap.service", "e2scrub_all.timer"];

/// The enable links: (link, unit), the link pointing at `/etc/systemd/system/<unit>`.
pub const ENABLE_LINKS: [(&str, &str); 4] = [
    (
        "/etc/systemd/system/multi-user.target.wants/banger-network.service",
        NETWORK_UNIT,
    ),
    (
        "/etc/systemd/system/network-online.target.wants/banger-network.service",
        NETWORK_UNIT,
    ),
    (
        "/etc/systemd/system/multi-user.target.wants/banger-agent.service",
        AGENT_UNIT,
    ),
    (
        "/etc/systemd/system/multi-user.target.wants/banger-firstboot.service",
        FIRSTBOOT_UNIT,
    ),
];

/// What goes into the image besides the fixed files.
#[derive(Debug, Clone, Copy)]
pub struct GuestPayload<'a> {
    /// The static agent binary on the host.
    pub agent_bin: &'a Path,
    /// A kernel's modules directory on the host (`.../lib/modules/6.1.0-18-amd64`),
    /// copied to `/lib/modules/<its name>`.
    pub modules_dir: Option<&'a Path>,
    /// The init asked for; `None` picks it from the tree ([`resolve_init`]).
    pub init: Option<GuestInit>,
}

/// What [`inject`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// The modules directory name copied in, if any.
    pub modules_version: Option<String>,
    /// The modules listed in [`MODULES_LOAD_PATH`] (empty: the file was not written).
    pub modules_load: Vec<String>,
    /// How many `/etc/ssh/ssh_host_*` files were removed.
    pub removed_host_keys: usize,
    /// What runs as the image's PID 1.
    pub init: GuestInit,
}

/// Where systemd may be in an image.
pub const SYSTEMD_PATHS: [&str; 2] = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

/// Whether the tree has a systemd binary (see [`SYSTEMD_PATHS`]).
pub fn has_systemd(tree: &Tree) -> Result<bool, ImageError> {
    for p in SYSTEMD_PATHS {
        let resolved = tree.resolve_parents(p)?;
        if matches!(
            tree.get(&resolved).map(|m| &m.kind),
            Some(EntryKind::File | EntryKind::Symlink { .. })
        ) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The init an image gets: asked for systemd (or its install) it has systemd, or it gets it
/// installed on first boot; asked for banger's, banger's; asked for nothing, systemd when
/// the image has it, else banger's.
pub fn resolve_init(requested: Option<GuestInit>, has_systemd: bool) -> GuestInit {
    match (requested, has_systemd) {
        (Some(GuestInit::Banger), _) => GuestInit::Banger,
        (_, true) => GuestInit::Systemd,
        (None, false) => GuestInit::Banger,
        (Some(GuestInit::Systemd | GuestInit::InstallSystemd), false) => GuestInit::InstallSystemd,
    }
}

/// Writes the guest payload into `tree` (see the module docs).
pub fn inject(tree: &mut Tree, payload: &GuestPayload<'_>) -> Result<GuestReport, ImageError> {
    let mut report = GuestReport::default();
    if let Some(dir) = payload.modules_dir {
        let version = dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && *n != "." && *n != ".." && !n.contains(['\n', '\r']))
            .ok_or_else(|| {
                ImageError::invalid(
                    "modules directory",
                    dir.display().to_string(),
                    "its name must be a kernel version",
                )
            })?
            .to_string();
        tree.install_tree(dir, &format!("/lib/modules/{version}"))?;
        report.modules_version = Some(version);
    }

    let agent = fs::metadata(payload.agent_bin).map_err(ImageError::io(
        payload.agent_bin,
        "inspect the agent binary",
    ))?;
    if !agent.is_file() {
        return Err(ImageError::invalid(
            "agent binary",
            payload.agent_bin.display().to_string(),
            "not a regular file",
        ));
    }
    let file = |mode| Meta::root(EntryKind::File, mode);
    tree.install(
        AGENT_PATH,
        Install::HostFile(payload.agent_bin),
        file(0o755),
    )?;
    tree.install(
        NETWORK_UP_PATH,
        Install::Bytes(NETWORK_UP_SCRIPT.as_bytes()),
        file(0o755),
    )?;
    for (name, text) in [
        (NETWORK_UNIT, NETWORK_UNIT_TEXT),
        (AGENT_UNIT, AGENT_UNIT_TEXT),
        (FIRSTBOOT_UNIT, FIRSTBOOT_UNIT_TEXT),
    ] {
        tree.install(
            &format!("{UNIT_DIR}/{name}"),
            Install::Bytes(text.as_bytes()),
            file(0o644),
        )?;
    }
    tree.install(
        SSH_DROPIN_PATH,
        Install::Bytes(SSH_DROPIN_TEXT.as_bytes()),
        file(0o644),
    )?;
    tree.install(
        SSHD_DROPIN_PATH,
        Install::Bytes(SSHD_DROPIN_TEXT.as_bytes()),
        file(0o644),
    )?;
    for unit in MASKED_UNITS {
        tree.install(
            &format!("{UNIT_DIR}/{unit}"),
            Install::Symlink("/dev/null"),
            Meta::root(
                EntryKind::Symlink {
                    target: "/dev/null".to_string(),
                },
                0o777,
            ),
        )?;
    }
    for (link, unit) in ENABLE_LINKS {
        let target = format!("{UNIT_DIR}/{unit}");
        tree.install(
            link,
            Install::Symlink(&target),
            Meta::root(
                EntryKind::Symlink {
                    target: target.clone(),
                },
                0o777,
            ),
        )?;
    }

    let available = available_modules(tree);
    report.modules_load = WANTED_MODULES
        .iter()
        .filter(|m| available.contains(**m))
        .map(|m| m.to_string())
        .collect();
    let conf_path = tree.resolve_parents(MODULES_LOAD_PATH)?;
    if tree.get(&conf_path).is_some() {
        tree.remove(&conf_path)?;
    }
    if !report.modules_load.is_empty() {
        let mut conf =
            String::from("# Installed by banger: virtio and vsock for the guest agent.\n");
        for m in &report.modules_load {
            conf.push_str(m);
            conf.push('\n');
        }
        tree.install(
            MODULES_LOAD_PATH,
            Install::Bytes(conf.as_bytes()),
            file(0o644),
        )?;
    }

    report.init = resolve_init(payload.init, has_systemd(tree)?);
    let marker = tree.resolve_parents(INSTALL_SYSTEMD_MARKER)?;
    if tree.get(&marker).is_some() {
        tree.remove(&marker)?;
    }
    if report.init == GuestInit::InstallSystemd {
        tree.install(
            INSTALL_SYSTEMD_MARKER,
            Install::Bytes(b"# Installed by banger: install systemd on first boot.\n"),
            file(0o644),
        )?;
    }

    report.removed_host_keys = remove_host_keys(tree)?;
    let done = tree.resolve_parents(FIRSTBOOT_DONE)?;
    if tree.get(&done).is_some() {
        tree.remove(&done)?;
    }
    Ok(report)
}

/// Removes `/etc/ssh/ssh_host_*`; returns how many.
fn remove_host_keys(tree: &mut Tree) -> Result<usize, ImageError> {
    let probe = tree.resolve_parents("/etc/ssh/x")?;
    let dir = probe.strip_suffix("/x").unwrap_or("/");
    let doomed: Vec<String> = tree
        .entries()
        .range(descendants(dir))
        .map(|(k, _)| k.clone())
        .filter(|k| {
            k[dir.len()..]
                .strip_prefix('/')
                .is_some_and(|name| !name.contains('/') && name.starts_with("ssh_host_"))
        })
        .collect();
    for path in &doomed {
        tree.remove(path)?;
    }
    Ok(doomed.len())
}

/// Module names (`-` written `_`) found under the image's `/lib/modules/*`: module files
/// (`NAME.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`) and `modules.builtin` lines.
fn available_modules(tree: &Tree) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let Ok(probe) = tree.resolve_parents("/lib/modules/x") else {
        return found;
    };
    let base = probe.strip_suffix("/x").unwrap_or("/").to_string();
    let norm = |name: &str| name.replace('-', "_");
    for (path, meta) in tree.entries().range(descendants(&base)) {
        let name = path.rsplit('/').next().unwrap_or("");
        if meta.kind == EntryKind::File {
            for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                if let Some(module) = name.strip_suffix(ext) {
                    found.insert(norm(module));
                }
            }
            let top_level = path.matches('/').count() == base.matches('/').count() + 2;
            if name == "modules.builtin"
                && top_level
                && let Ok(text) = fs::read_to_string(tree.host_path(path))
            {
                for line in text.lines() {
                    let file = line.rsplit('/').next().unwrap_or("");
                    if let Some(module) = file.strip_suffix(".ko") {
                        found.insert(norm(module));
                    }
                }
            }
        }
    }
    found
}

/// The path of an injected unit (`/etc/systemd/system/<unit>`).
pub fn unit_path(unit: &str) -> String {
    join(UNIT_DIR, unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flatten::TarInput;
    use std::io::Cursor;
    use std::process::Command;

    #[allow(clippy::print_stderr, reason = "a skipped test says why")]
    fn skipped(reason: &str) {
        eprintln!("skipped: {reason}");
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// A merged-/usr image with SSH host keys, like a Debian rootfs.
    fn debian_like(dir: &Path) -> Tree {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o600
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            match link {
                Some(target) => b.append_link(&mut h, name, target).unwrap(),
                None => b.append_data(&mut h, name, data).unwrap(),
            }
        };
        add("usr/lib/", tar::EntryType::Directory, b"", None);
        add("lib", tar::EntryType::Symlink, b"", Some("usr/lib"));
        add("etc/ssh/", tar::EntryType::Directory, b"", None);
        add(
            "etc/ssh/sshd_config",
            tar::EntryType::Regular,
            b"# cfg\n",
            None,
        );
        add(
            "etc/ssh/ssh_host_ed25519_key",
            tar::EntryType::Regular,
            b"k",
            None,
        );
        add(
            "etc/ssh/ssh_host_ed25519_key.pub",
            tar::EntryType::Regular,
            b"p",
            None,
        );
        add(
            "etc/banger/firstboot-done",
            tar::EntryType::Regular,
            b"",
            None,
        );
        add(
            "etc/modules-load.d/banger.conf",
            tar::EntryType::Regular,
            b"stale\n",
            None,
        );
        let bytes = b.into_inner().unwrap();
        let mut tree = Tree::create(&dir.join("tree")).unwrap();
        tree.apply_tar(TarInput::Reader {
            name: "debian".into(),
            reader: Box::new(Cursor::new(bytes)),
        })
        .unwrap();
        tree
    }

    fn modules_dir(dir: &Path) -> std::path::PathBuf {
        let m = dir.join("6.1.0-test");
        fs::create_dir_all(m.join("kernel/drivers/char")).unwrap();
        fs::create_dir_all(m.join("kernel/net/vmw_vsock")).unwrap();
        fs::write(m.join("kernel/drivers/char/virtio_console.ko"), b"ko").unwrap();
        fs::write(m.join("kernel/net/vmw_vsock/vsock.ko.xz"), b"ko").unwrap();
        fs::write(
            m.join("kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.zst"),
            b"ko",
        )
        .unwrap();
        fs::write(
            m.join("modules.builtin"),
            "kernel/drivers/net/virtio_net.ko\nkernel/drivers/block/virtio_blk.ko\n\
             kernel/drivers/acpi/button.ko\nkernel/drivers/input/evdev.ko\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/src/linux-headers-6.1.0-test", m.join("build")).unwrap();
        m
    }

    #[test]
    fn the_init_is_systemd_when_the_image_has_it_else_banger_s_or_an_install() {
        use GuestInit::*;
        assert_eq!(resolve_init(None, true), Systemd);
        assert_eq!(resolve_init(None, false), Banger);
        assert_eq!(resolve_init(Some(Systemd), true), Systemd);
        assert_eq!(resolve_init(Some(Systemd), false), InstallSystemd);
        assert_eq!(resolve_init(Some(Banger), true), Banger);
        assert_eq!(resolve_init(Some(InstallSystemd), true), Systemd);
    }

    #[test]
    fn systemd_is_found_through_the_image_s_lib_symlink_and_asking_for_it_leaves_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF agent").unwrap();
        let payload = |init| GuestPayload {
            agent_bin: &agent,
            modules_dir: None,
            init,
        };
        let mut tree = debian_like(dir.path());
        assert!(!has_systemd(&tree).unwrap());
        let report = inject(&mut tree, &payload(Some(GuestInit::Systemd))).unwrap();
        assert_eq!(report.init, GuestInit::InstallSystemd);
        assert!(tree.get(INSTALL_SYSTEMD_MARKER).is_some());
        // Built again without asking: banger's init, and the marker goes.
        let report = inject(&mut tree, &payload(None)).unwrap();
        assert_eq!(report.init, GuestInit::Banger);
        assert!(tree.get(INSTALL_SYSTEMD_MARKER).is_none());
        // /lib/systemd/systemd is /usr/lib/systemd/systemd in this merged-/usr tree.
        tree.install(
            "/lib/systemd/systemd",
            Install::Bytes(b"\x7fELF systemd"),
            Meta::root(EntryKind::File, 0o755),
        )
        .unwrap();
        assert!(tree.get("/usr/lib/systemd/systemd").is_some());
        assert!(has_systemd(&tree).unwrap());
        let report = inject(&mut tree, &payload(Some(GuestInit::Systemd))).unwrap();
        assert_eq!(report.init, GuestInit::Systemd);
        assert!(tree.get(INSTALL_SYSTEMD_MARKER).is_none());
    }

    #[test]
    fn inject_writes_the_payload_with_root_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = debian_like(dir.path());
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF agent").unwrap();
        let modules = modules_dir(dir.path());
        let report = inject(
            &mut tree,
            &GuestPayload {
                agent_bin: &agent,
                modules_dir: Some(&modules),
                init: None,
            },
        )
        .unwrap();
        assert_eq!(report.modules_version.as_deref(), Some("6.1.0-test"));
        assert_eq!(report.modules_load, WANTED_MODULES.map(String::from));
        assert_eq!(report.removed_host_keys, 2);

        let meta = |p: &str| {
            tree.get(p)
                .cloned()
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        assert_eq!(meta(AGENT_PATH), Meta::root(EntryKind::File, 0o755));
        assert_eq!(meta(NETWORK_UP_PATH), Meta::root(EntryKind::File, 0o755));
        assert_eq!(meta(SSH_DROPIN_PATH), Meta::root(EntryKind::File, 0o644));
        assert_eq!(meta(SSHD_DROPIN_PATH), Meta::root(EntryKind::File, 0o644));
        assert!(matches!(
            meta(&format!("{UNIT_DIR}/e2scrub_reap.service")).kind,
            EntryKind::Symlink { ref target } if target == "/dev/null"
        ));
        assert_eq!(
            meta("/usr/local/lib/banger"),
            Meta::root(EntryKind::Dir, 0o755)
        );
        for unit in [NETWORK_UNIT, AGENT_UNIT, FIRSTBOOT_UNIT] {
            assert_eq!(meta(&unit_path(unit)), Meta::root(EntryKind::File, 0o644));
        }
        for (link, unit) in ENABLE_LINKS {
            assert_eq!(
                meta(link).kind,
                EntryKind::Symlink {
                    target: unit_path(unit)
                }
            );
            assert_eq!(
                fs::read_link(tree.host_path(link)).unwrap(),
                Path::new(&unit_path(unit))
            );
        }
        assert_eq!(
            fs::read(tree.host_path(AGENT_PATH)).unwrap(),
            b"\x7fELF agent"
        );
        assert_eq!(
            fs::read_to_string(tree.host_path(&unit_path(AGENT_UNIT))).unwrap(),
            AGENT_UNIT_TEXT
        );
        // Modules went through the /lib symlink, keeping their own symlinks.
        let base = "/usr/lib/modules/6.1.0-test";
        assert_eq!(
            meta(&format!("{base}/kernel/drivers/char/virtio_console.ko")).uid,
            0
        );
        assert_eq!(
            meta(&format!("{base}/build")).kind,
            EntryKind::Symlink {
                target: "/usr/src/linux-headers-6.1.0-test".into()
            }
        );
        assert_eq!(
            tree.get("/lib").unwrap().kind,
            EntryKind::Symlink {
                target: "usr/lib".into()
            }
        );
        let conf = fs::read_to_string(tree.host_path(MODULES_LOAD_PATH)).unwrap();
        assert_eq!(
            conf.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            WANTED_MODULES
        );
        // Host keys and the first-boot marker are gone, the rest of /etc/ssh stays.
        assert!(tree.get("/etc/ssh/ssh_host_ed25519_key").is_none());
        assert!(tree.get("/etc/ssh/ssh_host_ed25519_key.pub").is_none());
        assert!(!tree.host_path("/etc/ssh/ssh_host_ed25519_key").exists());
        assert!(tree.get("/etc/ssh/sshd_config").is_some());
        assert!(tree.get(FIRSTBOOT_DONE).is_none());
    }

    #[test]
    fn modules_load_lists_only_available_modules() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"a").unwrap();
        // No modules at all: no configuration (and the stale one is removed).
        let mut tree = debian_like(dir.path());
        let report = inject(
            &mut tree,
            &GuestPayload {
                agent_bin: &agent,
                modules_dir: None,
                init: None,
            },
        )
        .unwrap();
        assert!(report.modules_load.is_empty());
        assert!(tree.get(MODULES_LOAD_PATH).is_none());
        assert!(!tree.host_path(MODULES_LOAD_PATH).exists());

        // Only virtio-net as a module (with a dash in its file name).
        let other = tempfile::tempdir().unwrap();
        let m = other.path().join("6.2");
        fs::create_dir_all(m.join("kernel")).unwrap();
        fs::write(m.join("kernel/virtio-net.ko"), b"").unwrap();
        let mut tree = debian_like(other.path());
        let report = inject(
            &mut tree,
            &GuestPayload {
                agent_bin: &agent,
                modules_dir: Some(&m),
                init: None,
            },
        )
        .unwrap();
        assert_eq!(report.modules_load, ["virtio_net"]);
    }

    #[test]
    fn a_missing_agent_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = debian_like(dir.path());
        let err = inject(
            &mut tree,
            &GuestPayload {
                agent_bin: &dir.path().join("nope"),
                modules_dir: None,
                init: None,
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("inspect the agent binary"),
            "{err}"
        );
    }

    #[test]
    fn network_up_parses_as_posix_sh() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("network-up");
        fs::write(&script, NETWORK_UP_SCRIPT).unwrap();
        for shell in ["sh", "dash", "bash"] {
            let Ok(out) = Command::new(shell).arg("-n").arg(&script).output() else {
                continue;
            };
            assert!(
                out.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Without its configuration file it does nothing, successfully.
        let out = Command::new("sh")
            .arg(&script)
            .arg(dir.path().join("missing.env"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nothing to configure"),
            "{out:?}"
        );
    }

    /// A network namespace removed on drop.
    struct Netns(String);

    impl Netns {
        fn new(tag: &str) -> Netns {
            let name = format!("banger-img-{}-{tag}", std::process::id());
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(std::process::Stdio::null())
                .status();
            run("ip", &["netns", "add", &name]);
            Netns(name)
        }

        /// A veth interface `name` (with `mac` if given) whose peer `<name>p` is up, so
        /// `name` gets a carrier. (This kernel may lack the dummy driver.)
        fn veth(&self, name: &str, mac: Option<&str>) {
            let peer = format!("{name}p");
            let mut args = vec!["link", "add", name];
            if let Some(mac) = mac {
                args.extend(["address", mac]);
            }
            args.extend(["type", "veth", "peer", "name", &peer]);
            self.ip(&args);
            self.ip(&["link", "set", "dev", &peer, "up"]);
        }

        fn ip(&self, args: &[&str]) -> String {
            let mut full = vec!["-n", &self.0];
            full.extend_from_slice(args);
            run("ip", &full)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run_script(ns: &Netns, script: &Path, env: &Path, wait: &str) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "env"])
            .arg(format!("BANGER_NET_WAIT={wait}"))
            .arg("sh")
            .arg(script)
            .arg(env)
            .output()
            .unwrap()
    }

    #[test]
    fn network_up_configures_the_interface_with_the_mac() {
        if !is_root() {
            skipped("needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("network-up");
        fs::write(&script, NETWORK_UP_SCRIPT).unwrap();
        let env = dir.path().join("network.env");
        // The MAC in upper case (matching is case-insensitive), DNS quoted as written
        // by banger-disk.
        fs::write(
            &env,
            "# Written by banger.\nBANGER_IP=172.30.0.5\nBANGER_PREFIX=24\n\
             BANGER_GATEWAY=172.30.0.1\nBANGER_DNS=\"172.30.0.1 1.1.1.1\"\n\
             BANGER_MAC=06:00:AC:1E:00:05\n",
        )
        .unwrap();
        let ns = Netns::new("mac");
        // A decoy that sorts first: the MAC must decide, not the order.
        ns.veth("a0", Some("06:00:00:00:00:99"));
        ns.veth("d0", Some("06:00:ac:1e:00:05"));
        for attempt in 0..2 {
            let out = run_script(&ns, &script, &env, "0");
            assert!(
                out.status.success(),
                "run {attempt}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let addr = ns.ip(&["-4", "-o", "addr", "show", "dev", "d0"]);
        assert!(addr.contains("inet 172.30.0.5/24"), "{addr}");
        assert_eq!(addr.lines().count(), 1, "idempotent: {addr}");
        let decoy = ns.ip(&["-4", "-o", "addr", "show", "dev", "a0"]);
        assert!(decoy.trim().is_empty(), "{decoy}");
        let routes = ns.ip(&["-4", "route", "show", "default"]);
        assert!(routes.contains("default via 172.30.0.1 dev d0"), "{routes}");
        assert_eq!(routes.lines().count(), 1, "{routes}");
        let link = ns.ip(&["-o", "link", "show", "dev", "d0"]);
        assert!(link.contains(",UP") || link.contains("<UP"), "{link}");
        let lo = ns.ip(&["-o", "link", "show", "dev", "lo"]);
        assert!(lo.contains("UP"), "{lo}");
    }

    #[test]
    fn network_up_falls_back_to_the_first_interface() {
        if !is_root() {
            skipped("needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("network-up");
        fs::write(&script, NETWORK_UP_SCRIPT).unwrap();
        let env = dir.path().join("network.env");
        fs::write(
            &env,
            "BANGER_IP=10.9.0.2\nBANGER_PREFIX=16\nBANGER_GATEWAY=10.9.0.1\nBANGER_MAC=02:00:00:00:00:01",
        )
        .unwrap();
        let ns = Netns::new("fallback");
        ns.veth("eth0", None);
        let out = run_script(&ns, &script, &env, "1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("using eth0"), "{stderr}");
        let addr = ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains("inet 10.9.0.2/16"), "{addr}");

        // Nothing but lo: a clear failure.
        let empty = Netns::new("empty");
        let out = run_script(&empty, &script, &env, "0");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no network interface found"),
            "{out:?}"
        );
    }
}
