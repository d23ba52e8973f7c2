//! The host probe: the facts about this host that `banger doctor` reports and the daemon acts
//! on, found one way for both.
//!
//! - [`SearchPath`]: programs looked up on a `PATH` value the caller read (this crate never
//!   reads the environment), optionally followed by the [`SYSTEM_DIRS`] where `ip`, `nft` and
//!   `mkfs.ext4` live when a user's `PATH` lacks the sbin directories.
//! - [`locate`]: a VMM binary chosen by the config file, else an environment variable, else
//!   `PATH`; [`find_companion`] and [`locate_agent`]: banger's own binaries (`bangerd`, the
//!   guest agent), next to the running executable or on `PATH`.
//! - [`probe_kvm`]: whether `/dev/kvm` can be opened read-write and the CPU has hardware
//!   virtualization (`vmx`/`svm`); a PVM-only KVM has neither flag and stock kernels hang
//!   under it.
//! - [`check_agent`]: the guest agent must be a static ELF binary, since it runs inside
//!   guests of any distribution.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

/// Directories searched after `PATH` for host programs: `ip`, `nft` and `sysctl` live in sbin
/// directories that unprivileged users' `PATH` often lacks.
pub const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The KVM device.
pub const DEV_KVM: &str = "/dev/kvm";
/// Where the CPU flags are read.
pub const PROC_CPUINFO: &str = "/proc/cpuinfo";

/// An ordered list of directories programs are looked up in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// The directories of a `PATH` value, in order. Empty entries are skipped (they would
    /// mean the current directory); no value means no directories.
    pub fn from_var(path_var: Option<&OsStr>) -> Self {
        let dirs = path_var
            .map(|v| {
                std::env::split_paths(v)
                    .filter(|d| !d.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Self { dirs }
    }

    /// Where banger runs host programs from: `path_var`'s directories, then the
    /// [`SYSTEM_DIRS`] it does not already have.
    pub fn programs(path_var: Option<&OsStr>) -> Self {
        let mut path = Self::from_var(path_var);
        for dir in SYSTEM_DIRS.map(PathBuf::from) {
            if !path.dirs.contains(&dir) {
                path.dirs.push(dir);
            }
        }
        path
    }

    /// The directories, in search order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The first executable regular file called `name` in these directories. `name` must be a
    /// bare name (no `/`); a name with a slash is never found here.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        if name.is_empty() || name.contains('/') {
            return None;
        }
        self.dirs
            .iter()
            .map(|dir| dir.join(name))
            .find(|candidate| unusable(candidate).is_none())
    }
}

impl std::fmt::Display for SearchPath {
    /// The directories joined by `:`, as a `PATH` value reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for dir in &self.dirs {
            if !first {
                f.write_str(":")?;
            }
            first = false;
            write!(f, "{}", dir.display())?;
        }
        Ok(())
    }
}

/// Why `path` cannot be run: it is missing or unreadable, not a regular file, or has no
/// execute bit. `None` when it is an executable regular file.
pub fn unusable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_file() => Some("not a regular file".to_string()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("not executable".to_string()),
        Ok(_) => None,
    }
}

/// Where a VMM binary comes from: its name on `PATH`, the config key and environment variable
/// that choose it explicitly, and how to install it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinarySource {
    pub name: &'static str,
    pub config_key: &'static str,
    pub env_var: &'static str,
    pub install_hint: &'static str,
}

/// Firecracker: `firecracker_bin`, `BANGER_FIRECRACKER_BIN`, `firecracker` on `PATH`.
pub const FIRECRACKER: BinarySource = BinarySource {
    name: "firecracker",
    config_key: "firecracker_bin",
    env_var: "BANGER_FIRECRACKER_BIN",
    install_hint: "install Firecracker",
};

/// QEMU: `qemu_bin`, `BANGER_QEMU_BIN`, `qemu-system-x86_64` on `PATH`.
pub const QEMU: BinarySource = BinarySource {
    name: "qemu-system-x86_64",
    config_key: "qemu_bin",
    env_var: "BANGER_QEMU_BIN",
    install_hint: "install QEMU (Debian: apt install qemu-system-x86)",
};

/// Which of a [`BinarySource`]'s choices a located binary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The config file's key.
    Config,
    /// The environment variable.
    Env,
    /// A directory of `PATH`.
    Path,
}

impl Origin {
    /// `config`, `environment` or `PATH`, for a report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Env => "environment",
            Self::Path => "PATH",
        }
    }
}

/// A binary [`locate`] chose, and where the choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub origin: Origin,
}

/// Why no binary could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error("{config_key} {} (from the config file) cannot be used: {reason}", path.display())]
    Config {
        config_key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{env_var}={} cannot be used: {reason}", path.display())]
    Env {
        env_var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "no `{name}` executable on PATH ({searched}): {install_hint}, or set {config_key} in the config file or {env_var}"
    )]
    NotOnPath {
        name: &'static str,
        config_key: &'static str,
        env_var: &'static str,
        install_hint: &'static str,
        searched: String,
    },
}

/// Chooses a binary: the config file's choice, else the environment variable's value (both
/// read by the caller), else `source.name` on `path`. Empty values count as unset. An explicit
/// choice that is not an executable file is an error, not a reason to fall through to the
/// next source.
pub fn locate(
    source: &BinarySource,
    config_bin: Option<&Path>,
    env_bin: Option<&OsStr>,
    path: &SearchPath,
) -> Result<Located, LocateError> {
    // An explicit choice is used as is, or refused with why it cannot run.
    let explicit = |p: &Path, origin, refuse: fn(&BinarySource, PathBuf, String) -> LocateError| {
        match unusable(p) {
            None => Ok(Located {
                path: p.to_path_buf(),
                origin,
            }),
            Some(reason) => Err(refuse(source, p.to_path_buf(), reason)),
        }
    };
    if let Some(p) = config_bin.filter(|p| !p.as_os_str().is_empty()) {
        return explicit(p, Origin::Config, |s, path, reason| LocateError::Config {
            config_key: s.config_key,
            path,
            reason,
        });
    }
    if let Some(p) = env_bin.filter(|p| !p.is_empty()).map(Path::new) {
        return explicit(p, Origin::Env, |s, path, reason| LocateError::Env {
            env_var: s.env_var,
            path,
            reason,
        });
    }
    path.find(source.name)
        .map(|p| Located {
            path: p,
            origin: Origin::Path,
        })
        .ok_or_else(|| LocateError::NotOnPath {
            name: source.name,
            config_key: source.config_key,
            env_var: source.env_var,
            install_hint: source.install_hint,
            searched: path.to_string(),
        })
}

/// Finds one of banger's own binaries (`bangerd`, `banger-agent`): in `exe_dir` (the directory
/// of the running executable, which the caller knows) first, then on `path`.
pub fn find_companion(name: &str, exe_dir: Option<&Path>, path: &SearchPath) -> Option<PathBuf> {
    exe_dir
        .map(|dir| dir.join(name))
        .filter(|candidate| unusable(candidate).is_none())
        .or_else(|| path.find(name))
}

/// The guest agent's binary name.
pub const AGENT_BIN: &str = "banger-agent";
/// The variable that names the guest agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "BANGER_AGENT_BIN";

/// The guest agent binary: `explicit` (the value of [`AGENT_BIN_ENV`], read by the caller)
/// when set and not empty, whether or not it exists ([`check_agent`] says what is wrong with
/// it), else [`AGENT_BIN`] found by [`find_companion`].
pub fn locate_agent(
    explicit: Option<&OsStr>,
    exe_dir: Option<&Path>,
    path: &SearchPath,
) -> Option<PathBuf> {
    match explicit.filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => find_companion(AGENT_BIN, exe_dir, path),
    }
}

/// Why a guest agent binary cannot be put into guests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent {} cannot be inspected: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "the guest agent {} is dynamically linked and would not run in guests; build it with scripts/build (RUSTFLAGS='-C target-feature=+crt-static') or point {AGENT_BIN_ENV} at a static build",
        path.display()
    )]
    Dynamic { path: PathBuf },
}

/// Checks that `path` is a static ELF binary a guest of any distribution can run.
pub fn check_agent(path: &Path) -> Result<(), AgentError> {
    match crate::elf::is_static(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(AgentError::Dynamic {
            path: path.to_path_buf(),
        }),
        Err(reason) => Err(AgentError::Unreadable {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

/// What opening the KVM device found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmDevice {
    /// It opened read-write.
    Usable,
    /// There is no such device.
    Absent,
    /// It is there but this user cannot open it read-write (the error, as text).
    Denied(String),
}

/// What [`probe_kvm`] found: the KVM device, and the CPU's hardware virtualization flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    pub device: KvmDevice,
    /// `vmx` or `svm` when the CPU flags have it.
    pub cpu_flag: Option<&'static str>,
}

impl KvmProbe {
    /// Whether KVM can run stock guest kernels: the device is usable and the CPU has `vmx` or
    /// `svm`.
    pub fn hardware_virt(&self) -> bool {
        self.device == KvmDevice::Usable && self.cpu_flag.is_some()
    }
}

/// Probes the host: opens `dev_kvm` read-write and looks for `vmx` or `svm` in the `flags`
/// lines of `cpuinfo` (normally [`DEV_KVM`] and [`PROC_CPUINFO`]). Never fails: an unreadable
/// `cpuinfo` counts as no flag.
pub fn probe_kvm(dev_kvm: &Path, cpuinfo: &Path) -> KvmProbe {
    let device = match OpenOptions::new().read(true).write(true).open(dev_kvm) {
        Ok(_) => KvmDevice::Usable,
        Err(e) if e.kind() == io::ErrorKind::NotFound => KvmDevice::Absent,
        Err(e) => KvmDevice::Denied(e.to_string()),
    };
    let flags = std::fs::read_to_string(cpuinfo).unwrap_or_default();
    let cpu_flag = flags
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .flat_map(|(_, value)| value.split_whitespace())
        .find_map(|flag| match flag {
            "vmx" => Some("vmx"),
            "svm" => Some("svm"),
            _ => None,
        });
    KvmProbe { device, cpu_flag }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    const SOURCE: BinarySource = BinarySource {
        name: "vmm-x",
        config_key: "vmm_x_bin",
        env_var: "BANGER_VMM_X_BIN",
        install_hint: "install vmm-x",
    };

    #[test]
    fn search_path_skips_empty_entries_and_keeps_order() {
        let p = SearchPath::from_var(Some(OsStr::new("/a::/b:")));
        assert_eq!(p.dirs(), [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(p.to_string(), "/a:/b");
        assert!(SearchPath::from_var(None).dirs().is_empty());
    }

    #[test]
    fn program_path_appends_the_system_dirs_once() {
        let p = SearchPath::programs(Some(OsStr::new("/opt/bin:/usr/sbin")));
        assert_eq!(
            p.to_string(),
            "/opt/bin:/usr/sbin:/sbin:/usr/bin:/bin",
            "{p:?}"
        );
    }

    #[test]
    fn find_takes_the_first_executable_regular_file() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        file(a.path(), "tool", 0o644); // not executable: skipped
        std::fs::create_dir(a.path().join("dir")).unwrap(); // not a file: skipped
        let want = file(b.path(), "tool", 0o755);
        file(b.path(), "dir", 0o755);
        let var = std::env::join_paths([a.path(), b.path()]).unwrap();
        let path = SearchPath::from_var(Some(&var));
        assert_eq!(path.find("tool"), Some(want));
        assert_eq!(path.find("dir"), Some(b.path().join("dir")));
        assert_eq!(path.find("missing"), None);
        // Names are bare: a relative path is not looked up below the directories.
        assert_eq!(path.find("../tool"), None);
        assert_eq!(path.find(""), None);
    }

    #[test]
    fn locate_prefers_config_then_env_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let on_path = file(dir.path(), "vmm-x", 0o755);
        let configured = file(dir.path(), "configured", 0o755);
        let from_env = file(dir.path(), "from-env", 0o755);
        let path = SearchPath::from_var(Some(dir.path().as_os_str()));
        let got = locate(
            &SOURCE,
            Some(&configured),
            Some(from_env.as_os_str()),
            &path,
        )
        .unwrap();
        assert_eq!((got.path, got.origin), (configured, Origin::Config));
        let got = locate(
            &SOURCE,
            Some(Path::new("")),
            Some(from_env.as_os_str()),
            &path,
        )
        .unwrap();
        assert_eq!((got.path, got.origin), (from_env, Origin::Env));
        let got = locate(&SOURCE, None, Some(OsStr::new("")), &path).unwrap();
        assert_eq!((got.path, got.origin), (on_path, Origin::Path));
    }

    #[test]
    fn an_explicit_choice_that_cannot_run_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        file(dir.path(), "vmm-x", 0o755);
        let plain = file(dir.path(), "plain", 0o644);
        let path = SearchPath::from_var(Some(dir.path().as_os_str()));
        let err = locate(&SOURCE, Some(&plain), None, &path).unwrap_err();
        assert!(matches!(err, LocateError::Config { .. }), "{err}");
        assert!(err.to_string().contains("not executable"), "{err}");
        let err = locate(&SOURCE, None, Some(dir.path().as_os_str()), &path).unwrap_err();
        assert!(matches!(err, LocateError::Env { .. }), "{err}");
        assert!(err.to_string().starts_with("BANGER_VMM_X_BIN="), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn not_on_path_names_what_was_searched_and_the_fixes() {
        let err = locate(
            &SOURCE,
            None,
            None,
            &SearchPath::from_var(Some(OsStr::new("/nonexistent/a:/nonexistent/b"))),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no `vmm-x` executable on PATH (/nonexistent/a:/nonexistent/b): install vmm-x, or set vmm_x_bin in the config file or BANGER_VMM_X_BIN"
        );
    }

    #[test]
    fn companions_are_found_beside_the_executable_first() {
        let (exe, on_path) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let path = SearchPath::from_var(Some(on_path.path().as_os_str()));
        assert_eq!(find_companion("bangerd", Some(exe.path()), &path), None);
        let p = file(on_path.path(), "bangerd", 0o755);
        assert_eq!(find_companion("bangerd", Some(exe.path()), &path), Some(p));
        let beside = file(exe.path(), "bangerd", 0o755);
        assert_eq!(
            find_companion("bangerd", Some(exe.path()), &path),
            Some(beside)
        );
    }

    #[test]
    fn the_agent_variable_wins_even_when_it_names_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let beside = file(dir.path(), AGENT_BIN, 0o755);
        let path = SearchPath::default();
        assert_eq!(
            locate_agent(None, Some(dir.path()), &path),
            Some(beside.clone())
        );
        assert_eq!(
            locate_agent(Some(OsStr::new("")), Some(dir.path()), &path),
            Some(beside)
        );
        assert_eq!(
            locate_agent(
                Some(OsStr::new("/nonexistent/agent")),
                Some(dir.path()),
                &path
            ),
            Some(PathBuf::from("/nonexistent/agent"))
        );
    }

    #[test]
    fn the_agent_must_be_static() {
        // This test binary has a program interpreter: it is dynamically linked.
        let me = std::env::current_exe().unwrap();
        let err = check_agent(&me).unwrap_err();
        assert!(matches!(err, AgentError::Dynamic { .. }), "{err}");
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let script = file(dir.path(), "agent", 0o755);
        let err = check_agent(&script).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the guest agent {} cannot be inspected: not an ELF file",
                script.display()
            )
        );
    }

    #[test]
    fn kvm_needs_the_device_and_a_hardware_flag() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        let cpu = dir.path().join("cpuinfo");
        let probe = probe_kvm(&kvm, &cpu);
        assert_eq!(probe.device, KvmDevice::Absent);
        assert!(!probe.hardware_virt());
        std::fs::write(&kvm, "").unwrap();
        std::fs::write(&cpu, "processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n").unwrap();
        let probe = probe_kvm(&kvm, &cpu);
        assert_eq!(
            probe,
            KvmProbe {
                device: KvmDevice::Usable,
                cpu_flag: None,
            }
        );
        assert!(!probe.hardware_virt(), "a PVM-only KVM");
        // "vmx" only in another line's key or inside a word does not count.
        std::fs::write(&cpu, "vmx flags\t: x\nflags\t\t: fpu vmxx nosvm\n").unwrap();
        assert_eq!(probe_kvm(&kvm, &cpu).cpu_flag, None);
        std::fs::write(&cpu, "flags\t\t: fpu vmx sse2\n").unwrap();
        assert!(probe_kvm(&kvm, &cpu).hardware_virt());
        std::fs::write(&cpu, "flags\t\t: fpu svm\n").unwrap();
        assert_eq!(probe_kvm(&kvm, &cpu).cpu_flag, Some("svm"));
    }

    #[test]
    fn kvm_denied_says_why() {
        // A directory cannot be opened for writing: the same answer as a device without
        // permission, and it works as root too.
        let dir = tempfile::tempdir().unwrap();
        let probe = probe_kvm(dir.path(), &dir.path().join("cpuinfo"));
        assert!(
            matches!(&probe.device, KvmDevice::Denied(why) if why.contains("directory")),
            "{probe:?}"
        );
    }
}
