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
use banger_store::{MIGRATIONS, Store, StoreError};
use serde::Serialize;

use crate::daemonctl::find_companion;

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
}

impl Host {
    pub fn real(
        path_var: Option<std::ffi::OsString>,
        firecracker_env: Option<std::ffi::OsString>,
    ) -> Self {
        Self {
            dev_kvm: PathBuf::from("/dev/kvm"),
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
            proc_status: PathBuf::from("/proc/self/status"),
            path_var,
            firecracker_env,
        }
    }
}

/// Runs every check.
pub async fn run(layout: &Layout, host: &Host) -> Vec<Check> {
    let mut checks = vec![
        config_check(layout),
        daemon_check(layout).await,
        store_check(layout),
        binary_check("bangerd", host.path_var.as_deref(), false),
        binary_check("banger-agent", host.path_var.as_deref(), true),
        kvm_check(&host.dev_kvm, &host.cpuinfo),
        firecracker_check(layout, host),
        net_admin_check(&host.proc_status),
    ];
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

async fn daemon_check(layout: &Layout) -> Check {
    let client = Client::new(layout.socket_path());
    match client.get::<DaemonStatus>("/status").await {
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
    let Some(path) = find_companion(name, path_var) else {
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
    match elf_is_static(&path) {
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

/// True when the ELF file has no program interpreter (static or static-pie).
pub fn elf_is_static(path: &Path) -> Result<bool, String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().map_err(|_| "short header")?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Some(p_type) = data.get(off..off + 4) else {
            return Err("truncated program headers".into());
        };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(p_type.try_into().map_err(|_| "short p_type")?) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
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

fn firecracker_check(layout: &Layout, host: &Host) -> Check {
    const NAME: &str = "firecracker";
    let configured = Config::load(&layout.config_file())
        .ok()
        .and_then(|l| l.config.firecracker_bin);
    let (path, from) = if let Some(p) = configured {
        (Some(p), "config firecracker_bin")
    } else if let Some(p) = host.firecracker_env.clone() {
        (Some(PathBuf::from(p)), "BANGER_FIRECRACKER_BIN")
    } else {
        (
            host.path_var.as_deref().and_then(|pv| {
                std::env::split_paths(pv)
                    .map(|d| d.join("firecracker"))
                    .find(|p| p.is_file())
            }),
            "PATH",
        )
    };
    match path {
        Some(p) if p.is_file() => check(
            NAME,
            Status::Pass,
            format!("{} (from {from})", p.display()),
            None,
        ),
        Some(p) => check(
            NAME,
            Status::Fail,
            format!("{} (from {from}) does not exist", p.display()),
            Some("fix firecracker_bin in config.toml or BANGER_FIRECRACKER_BIN"),
        ),
        None => check(
            NAME,
            Status::Fail,
            "not found (config firecracker_bin, BANGER_FIRECRACKER_BIN, PATH)",
            Some("install Firecracker from its release page and put it on PATH"),
        ),
    }
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
    fn elf_static_detection() {
        // This test binary is dynamically linked (it has an interpreter).
        let me = std::env::current_exe().unwrap();
        assert_eq!(elf_is_static(&me), Ok(false));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        assert!(elf_is_static(&f).is_err());
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
