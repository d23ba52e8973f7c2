//! `banger doctor`: read-only checks of this host, each PASS, WARN or FAIL with a fix.
//!
//! Nothing here writes: the store is opened read-only (and not at all when it does not exist),
//! the daemon is asked for its status but never started, and no directory is created.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use banger_api::Client;
use banger_api::types::DaemonStatus;
use banger_core::build::BuildInfo;
use banger_core::config::Config;
use banger_core::layout::Layout;
use banger_core::vmm_kind::{VmmChoice, VmmKind, choose_vmm};
use banger_store::{MIGRATIONS, Store, StoreError};
use serde::Serialize;

use crate::daemonctl::{Conn, find_companion};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// The command or step that fixes a WARN or FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        check: name.to_string(),
        status,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

/// Host facts the checks read; real paths in production, fixtures in tests.
#[derive(Debug, Clone)]
pub struct Host {
    pub dev_kvm: PathBuf,
    pub cpuinfo: PathBuf,
    /// `/proc/self/status`, for the effective capabilities.
    pub proc_status: PathBuf,
    pub path_var: Option<std::ffi::OsString>,
    /// `BANGER_FIRECRACKER_BIN`.
    pub firecracker_env: Option<std::ffi::OsString>,
    /// `BANGER_QEMU_BIN`.
    pub qemu_env: Option<std::ffi::OsString>,
    /// `BANGER_VMM`.
    pub vmm_env: Option<std::ffi::OsString>,
    /// Who runs doctor, and how long it waits for a silent daemon.
    pub conn: Conn,
}

impl Host {
    /// This host, with environment values the caller read.
    pub fn real(
        path_var: Option<std::ffi::OsString>,
        conn: Conn,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Self {
        Self {
            dev_kvm: PathBuf::from("/dev/kvm"),
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
            proc_status: PathBuf::from("/proc/self/status"),
            path_var,
            firecracker_env: env("BANGER_FIRECRACKER_BIN"),
            qemu_env: env("BANGER_QEMU_BIN"),
            vmm_env: env("BANGER_VMM"),
            conn,
        }
    }
}

/// Runs every check.
pub async fn run(layout: &Layout, host: &Host) -> Vec<Check> {
    let mut checks = vec![
        dirs_check(layout, host.conn.euid),
        config_check(layout),
        daemon_check(layout, host.conn).await,
        store_check(layout),
        binary_check("bangerd", host.path_var.as_deref(), false),
        binary_check("banger-agent", host.path_var.as_deref(), true),
        kvm_check(&host.dev_kvm, &host.cpuinfo),
        net_admin_check(&host.proc_status),
    ];
    checks.extend(vmm_checks(layout, host));
    checks.extend(artifact_checks(layout));
    checks.extend(tool_checks(host.path_var.as_deref()));
    checks
}

fn config_check(layout: &Layout) -> Check {
    let path = layout.config_file();
    match Config::load(&path) {
        Ok(l) if l.warnings.is_empty() && path.exists() => check(
            "config",
            Status::Pass,
            format!("{} is valid", path.display()),
            None,
        ),
        Ok(l) if l.warnings.is_empty() => check(
            "config",
            Status::Pass,
            format!("no {} (defaults apply)", path.display()),
            None,
        ),
        Ok(l) => check(
            "config",
            Status::Warn,
            l.warnings.join("; "),
            Some("remove or correct the unknown keys (see docs/config.md)"),
        ),
        Err(e) => check(
            "config",
            Status::Fail,
            crate::error::render(&e.into(), false)
                .trim_start_matches("banger: ")
                .to_string(),
            Some("fix the config file (see docs/config.md)"),
        ),
    }
}

/// The config, state and runtime dirs that exist belong to this user and are private.
fn dirs_check(layout: &Layout, euid: u32) -> Check {
    match layout.check_existing(euid) {
        Ok(()) => check(
            "dirs",
            Status::Pass,
            format!(
                "{}, {} and {} are yours and not writable by others (or not created yet)",
                layout.config_dir.display(),
                layout.state_dir.display(),
                layout.runtime_dir.display()
            ),
            None,
        ),
        // The error names the dir, its owner and mode, and the fix.
        Err(e) => check("dirs", Status::Fail, chain(&e), None),
    }
}

async fn daemon_check(layout: &Layout, conn: Conn) -> Check {
    let client: Client = match crate::daemonctl::client(layout, conn) {
        Ok(c) => c,
        Err(e) => {
            return check(
                "daemon",
                Status::Fail,
                crate::error::render(&e, false)
                    .trim_start_matches("banger: ")
                    .to_string(),
                None,
            );
        }
    };
    match client.get::<DaemonStatus>(banger_api::Route::Status).await {
        Ok(st) if st.build == BuildInfo::current() => check(
            "daemon",
            Status::Pass,
            format!("running, pid {}, {}", st.pid, st.build),
            None,
        ),
        Ok(st) => check(
            "daemon",
            Status::Warn,
            format!("running an older build ({}), pid {}", st.build, st.pid),
            Some("any banger command replaces it, e.g. banger daemon status"),
        ),
        Err(e) if e.is_unreachable() => check(
            "daemon",
            Status::Warn,
            format!(
                "not running (nothing answers on {})",
                layout.socket_path().display()
            ),
            Some("it starts on demand; to start it now: banger daemon status"),
        ),
        Err(e) => check(
            "daemon",
            Status::Fail,
            e.to_string(),
            Some("banger daemon stop"),
        ),
    }
}

fn store_check(layout: &Layout) -> Check {
    let path = layout.db_path();
    match Store::open_read_only(&path) {
        Ok(store) => match store.applied_migrations() {
            Ok(ids) => {
                let pending = MIGRATIONS.iter().filter(|m| !ids.contains(&m.id)).count();
                if pending == 0 {
                    check(
                        "store",
                        Status::Pass,
                        format!(
                            "{} readable, schema current ({} migrations)",
                            path.display(),
                            ids.len()
                        ),
                        None,
                    )
                } else {
                    check(
                        "store",
                        Status::Warn,
                        format!(
                            "{} readable, {pending} migration(s) pending",
                            path.display()
                        ),
                        Some("the daemon applies them when it next starts"),
                    )
                }
            }
            Err(e) => check("store", Status::Fail, chain(&e), None),
        },
        Err(StoreError::Missing { .. }) => check(
            "store",
            Status::Warn,
            format!("no database yet at {}", path.display()),
            Some("created when the daemon first starts"),
        ),
        Err(e) => check("store", Status::Fail, chain(&e), None),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn binary_check(name: &str, path_var: Option<&OsStr>, must_be_static: bool) -> Check {
    let label = format!("{name} binary");
    let env_path = (name == "banger-agent")
        .then(|| std::env::var_os("BANGER_AGENT_BIN"))
        .flatten()
        .map(PathBuf::from);
    let Some(path) = env_path.or_else(|| find_companion(name, path_var)) else {
        return check(
            &label,
            Status::Fail,
            "not found next to banger or on PATH",
            Some("build and install banger as the README says (scripts/build)"),
        );
    };
    if !must_be_static {
        return check(&label, Status::Pass, path.display().to_string(), None);
    }
    match banger_core::elf::is_static(&path) {
        Ok(true) => check(
            &label,
            Status::Pass,
            format!("{} (static)", path.display()),
            None,
        ),
        Ok(false) => check(
            &label,
            Status::Fail,
            format!(
                "{} is dynamically linked; guests cannot run it",
                path.display()
            ),
            Some("build it static: scripts/build (RUSTFLAGS='-C target-feature=+crt-static')"),
        ),
        Err(why) => check(
            &label,
            Status::Fail,
            format!("{}: {why}", path.display()),
            None,
        ),
    }
}

fn kvm_check(dev_kvm: &Path, cpuinfo: &Path) -> Check {
    const NAME: &str = "/dev/kvm";
    if !dev_kvm.exists() {
        return check(
            NAME,
            Status::Warn,
            "absent: Firecracker cannot run; QEMU runs guests under TCG (slow)",
            Some("enable virtualization in firmware and load kvm_intel or kvm_amd"),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        return check(
            NAME,
            Status::Warn,
            format!("present but not usable by this user: {e}"),
            Some("add yourself to the kvm group: sudo usermod -aG kvm $USER"),
        );
    }
    let flags = std::fs::read_to_string(cpuinfo).unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .find(|f| *f == "vmx" || *f == "svm");
    match hw {
        Some(f) => check(
            NAME,
            Status::Pass,
            format!("usable, hardware virtualization ({f})"),
            None,
        ),
        None => check(
            NAME,
            Status::Warn,
            "present, but the CPU has no vmx/svm (a PVM-only KVM): stock guest kernels hang under it; QEMU will use TCG and Firecracker cannot run",
            None,
        ),
    }
}

/// Where a VMM binary comes from: config, env, else PATH. `None` when not found.
fn locate_bin(
    configured: Option<PathBuf>,
    env: Option<&std::ffi::OsStr>,
    name: &str,
    path_var: Option<&OsStr>,
) -> Option<(PathBuf, &'static str)> {
    if let Some(p) = configured {
        return Some((p, "config"));
    }
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), "environment"));
    }
    let p = path_var.and_then(|pv| {
        std::env::split_paths(pv)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })?;
    Some((p, "PATH"))
}

/// The backend new VMs get and its acceleration, plus each backend's binary.
fn vmm_checks(layout: &Layout, host: &Host) -> Vec<Check> {
    let config = Config::load(&layout.config_file())
        .map(|l| l.config)
        .unwrap_or_default();
    let fc = locate_bin(
        config.firecracker_bin.clone(),
        host.firecracker_env.as_deref(),
        VmmKind::Firecracker.binary(),
        host.path_var.as_deref(),
    )
    .filter(|(p, _)| p.is_file());
    let qemu = locate_bin(
        config.qemu_bin.clone(),
        host.qemu_env.as_deref(),
        VmmKind::Qemu.binary(),
        host.path_var.as_deref(),
    )
    .filter(|(p, _)| p.is_file());
    let choice = match host
        .vmm_env
        .as_ref()
        .and_then(|v| v.to_str())
        .filter(|v| !v.is_empty())
    {
        Some(v) => v.parse::<VmmChoice>().map_err(|e| e.to_string()),
        None => Ok(config.vmm),
    };
    let show = |b: &Option<(PathBuf, &'static str)>| {
        b.as_ref()
            .map(|(p, from)| format!("{} (from {from})", p.display()))
    };
    let mut checks = vec![
        match &fc {
            Some(_) => check(
                VmmKind::Firecracker.as_str(),
                Status::Pass,
                show(&fc).unwrap_or_default(),
                None,
            ),
            None => check(
                VmmKind::Firecracker.as_str(),
                Status::Warn,
                "not found (config firecracker_bin, BANGER_FIRECRACKER_BIN, PATH)",
                Some("install Firecracker on a host with hardware virtualization"),
            ),
        },
        match &qemu {
            Some(_) => check(
                VmmKind::Qemu.as_str(),
                Status::Pass,
                show(&qemu).unwrap_or_default(),
                None,
            ),
            None => check(
                VmmKind::Qemu.as_str(),
                Status::Warn,
                "qemu-system-x86_64 not found (config qemu_bin, BANGER_QEMU_BIN, PATH)",
                Some("apt-get install qemu-system-x86"),
            ),
        },
    ];
    let hw = hardware_virt(&host.dev_kvm, &host.cpuinfo);
    let found = |k| match k {
        VmmKind::Firecracker => fc.is_some(),
        VmmKind::Qemu => qemu.is_some(),
    };
    let chosen = choice.and_then(|c| {
        choose_vmm(c, found)
            .map(|kind| (c, kind))
            .map_err(|e| e.to_string())
    });
    checks.push(match chosen {
        Ok((choice, VmmKind::Qemu)) => check(
            "VMM backend",
            Status::Pass,
            format!(
                "qemu (vmm = {choice}), acceleration {}",
                if hw { "KVM" } else { "TCG (software emulation: slower boots)" }
            ),
            None,
        ),
        Ok((choice, kind @ VmmKind::Firecracker)) => {
            if hw {
                check("VMM backend", Status::Pass, format!("{kind} (vmm = {choice}), acceleration KVM"), None)
            } else {
                check(
                    "VMM backend",
                    Status::Fail,
                    format!("{kind} (vmm = {choice}) needs KVM with hardware virtualization, which this host lacks"),
                    Some("set vmm = \"qemu\" in config.toml (or BANGER_VMM=qemu)"),
                )
            }
        }
        Err(why) => check(
            "VMM backend",
            Status::Fail,
            why,
            Some("apt-get install qemu-system-x86"),
        ),
    });
    checks
}

/// Whether KVM can run stock guest kernels here: /dev/kvm usable and the CPU has vmx/svm.
fn hardware_virt(dev_kvm: &Path, cpuinfo: &Path) -> bool {
    kvm_check(dev_kvm, cpuinfo).status == Status::Pass
}

/// The default image and at least one kernel, read from the store (read-only).
fn artifact_checks(layout: &Layout) -> Vec<Check> {
    let default_image = Config::load(&layout.config_file())
        .map(|l| l.config.default_image)
        .unwrap_or_else(|_| Config::default().default_image);
    let store = match Store::open_read_only(&layout.db_path()) {
        Ok(s) => s,
        Err(_) => {
            return vec![
                check(
                    "default image",
                    Status::Fail,
                    format!("{default_image} is not present (no database yet)"),
                    Some(&format!("banger image bootstrap {default_image}")),
                ),
                check(
                    "kernel",
                    Status::Fail,
                    "no kernel imported (no database yet)",
                    Some("banger kernel import host --from /"),
                ),
            ];
        }
    };
    let images = store.list_images().unwrap_or_default();
    let kernels = store.list_kernels().unwrap_or_default();
    vec![
        match images.iter().find(|i| i.name == default_image) {
            Some(i) => check(
                "default image",
                Status::Pass,
                format!(
                    "{} ({})",
                    i.name,
                    banger_core::size::ByteSize(i.rootfs_bytes)
                ),
                None,
            ),
            None => check(
                "default image",
                Status::Fail,
                format!("{default_image} is not present"),
                Some(&format!("banger image bootstrap {default_image}")),
            ),
        },
        if kernels.is_empty() {
            check(
                "kernel",
                Status::Fail,
                "no kernel imported",
                Some(
                    "banger kernel import host --from / (after apt-get install linux-image-cloud-amd64)",
                ),
            )
        } else {
            check(
                "kernel",
                Status::Pass,
                kernels
                    .iter()
                    .map(|k| format!("{} ({})", k.name, k.version))
                    .collect::<Vec<_>>()
                    .join(", "),
                None,
            )
        },
    ]
}

/// CAP_NET_ADMIN is bit 12 of the capability sets.
const CAP_NET_ADMIN: u32 = 12;

fn net_admin_check(proc_status: &Path) -> Check {
    const NAME: &str = "bridge/TAP";
    let status = std::fs::read_to_string(proc_status).unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match eff {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) != 0 => check(
            NAME,
            Status::Pass,
            "can create bridges and TAP devices (CAP_NET_ADMIN)",
            None,
        ),
        Some(_) => check(
            NAME,
            Status::Fail,
            "no CAP_NET_ADMIN: the daemon cannot create the bridge or TAP devices",
            Some("run banger as root (a root helper is planned)"),
        ),
        None => check(
            NAME,
            Status::Warn,
            format!("cannot read capabilities from {}", proc_status.display()),
            None,
        ),
    }
}

fn tool_checks(path_var: Option<&OsStr>) -> Vec<Check> {
    // (check name, any of these binaries, apt package)
    let tools: &[(&str, &[&str], &str)] = &[
        ("mkfs.ext4", &["mkfs.ext4"], "e2fsprogs"),
        ("debugfs", &["debugfs"], "e2fsprogs"),
        ("ip", &["ip"], "iproute2"),
        ("nft or iptables", &["nft", "iptables"], "nftables"),
        ("ssh", &["ssh"], "openssh-client"),
        ("git", &["git"], "git"),
    ];
    let dirs: Vec<PathBuf> = path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    // Admin tools live in sbin, which a user's PATH may lack.
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    tools
        .iter()
        .map(|(name, bins, pkg)| {
            let found = bins.iter().find_map(|b| {
                dirs.iter()
                    .chain(extra.iter())
                    .map(|d| d.join(b))
                    .find(|p| p.is_file())
            });
            match found {
                Some(p) => check(name, Status::Pass, p.display().to_string(), None),
                None => check(
                    name,
                    Status::Fail,
                    "not found on PATH",
                    Some(&format!("apt-get install {pkg}")),
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_check_distinguishes_pvm_only() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        let cpu = dir.path().join("cpuinfo");
        assert_eq!(kvm_check(&kvm, &cpu).status, Status::Warn);
        std::fs::write(&kvm, "").unwrap();
        std::fs::write(&cpu, "processor : 0\nflags : fpu sse2 hypervisor\n").unwrap();
        let c = kvm_check(&kvm, &cpu);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("PVM"), "{}", c.detail);
        std::fs::write(&cpu, "flags : fpu vmx sse2\n").unwrap();
        assert_eq!(kvm_check(&kvm, &cpu).status, Status::Pass);
    }

    #[test]
    fn net_admin_from_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("status");
        std::fs::write(&st, "Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert_eq!(net_admin_check(&st).status, Status::Pass);
        std::fs::write(&st, "CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(net_admin_check(&st).status, Status::Fail);
        std::fs::write(&st, "nothing\n").unwrap();
        assert_eq!(net_admin_check(&st).status, Status::Warn);
    }

    #[test]
    fn missing_tool_fails_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let checks = tool_checks(Some(dir.path().as_os_str()));
        let git = checks.iter().find(|c| c.check == "git").unwrap();
        // git is not in sbin and the PATH is empty, so it must be reported missing.
        assert_eq!(git.status, Status::Fail);
        assert_eq!(git.fix.as_deref(), Some("apt-get install git"));
    }
}
