//! A Debian root filesystem tar built from packages with `mmdebstrap`: banger's local
//! golden image, with no container engine and no download host besides a Debian mirror.
//!
//! [`debian_rootfs_tar`] runs
//! `mmdebstrap --variant=minbase --components=main --include=PKGS [OPTIONS] SUITE OUT.tar [MIRROR]`
//! (mode auto: root mode as root, unshare or fakechroot otherwise), with:
//! - the package set a developer or a coding agent expects in a shell
//!   ([`DEFAULT_PACKAGES`]: systemd, sshd, iproute2, git, curl, sudo...);
//! - documentation, man pages and translations left out (dpkg `path-exclude`, kept in the
//!   image so later installs do the same), and apt fetching no translations;
//! - customize hooks making the host-specific files neutral (`/etc/hostname` is
//!   `localhost`, `/etc/hosts` names only localhost, the host's `/etc/resolv.conf` copied
//!   by mmdebstrap is removed: banger writes all three per VM) and locking root's
//!   password (`*`: no password matches; key-based SSH still works).
//!
//! The tar is written in a temporary directory next to `out_tar` and renamed into place,
//! so a failure leaves nothing; mmdebstrap's failure is reported with the tail of its
//! stderr.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use banger_core::runner::CommandRunner;

use crate::ImageError;

/// The packages installed on top of the variant.
pub const DEFAULT_PACKAGES: [&str; 35] = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "kmod",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "git",
    "ca-certificates",
    "curl",
    "sudo",
    "less",
    "procps",
    "nano",
    "xz-utils",
    "zstd",
    "bash-completion",
    "netbase",
    "tzdata",
    "file",
    // A developer's box: languages, build tools and the usual shell utilities.
    "python3",
    "python3-venv",
    "make",
    "build-essential",
    "pkg-config",
    "jq",
    "ripgrep",
    "unzip",
    "rsync",
    "tmux",
    "vim-tiny",
    "openssh-client",
    // Docker, socket-activated (see [`BOOT_DISABLED_UNITS`]). `apparmor` (a Recommends)
    // because guests run the host's kernel, where AppArmor is usually on: dockerd then
    // refuses to run a container unless `apparmor_parser` can load its `docker-default`
    // profile.
    "docker.io",
    "apparmor",
];

/// dpkg paths left out of the image.
const DPKG_EXCLUDES: [&str; 6] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// Units the packages enable that a sandbox's boot does without, each for a reason:
/// - `docker.service`, `containerd.service`: Docker is socket-activated instead. The
///   `docker.socket` the package enables stays, so the first `docker` command starts
///   dockerd, which pulls in containerd (`Wants=containerd.service`); a boot pays for
///   neither daemon.
/// - `apparmor.service`: it compiles and loads every profile in `/etc/apparmor.d` at boot;
///   a sandbox confines nothing with them. Docker loads the one profile it needs
///   (`docker-default`) itself with `apparmor_parser` when it starts.
///
/// The enable links are removed (there is no systemctl to run in a tar being built), which
/// is what `systemctl disable` does; deb-systemd-helper's `was-enabled` then reads the units
/// as disabled, so a package upgrade in the guest does not enable them again.
pub const BOOT_DISABLED_UNITS: [&str; 3] =
    ["docker.service", "containerd.service", "apparmor.service"];

/// Shell commands run by mmdebstrap after installation, `$1` being the root.
const CUSTOMIZE_HOOKS: [&str; 6] = [
    r#"echo localhost > "$1/etc/hostname""#,
    r#"printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$1/etc/hosts""#,
    r#"rm -f "$1/etc/resolv.conf""#,
    r#"if [ -f "$1/etc/shadow" ]; then sed -i -e 's/^root:[^:]*:/root:*:/' "$1/etc/shadow"; fi"#,
    // BOOT_DISABLED_UNITS, wherever a package's [Install] put their links.
    r#"for u in docker.service containerd.service apparmor.service; do rm -f "$1"/etc/systemd/system/*.wants/"$u"; done"#,
    // Socket activation for Docker: docker.socket enabled whenever docker.io is installed.
    r#"if [ -e "$1/usr/lib/systemd/system/docker.socket" ]; then mkdir -p "$1/etc/systemd/system/sockets.target.wants" && ln -sfn /lib/systemd/system/docker.socket "$1/etc/systemd/system/sockets.target.wants/docker.socket"; fi"#,
];

/// mmdebstrap's package selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Only `Essential: yes` packages (fast; for tests).
    Essential,
    /// Essential plus apt (`minbase`): the base of banger's image.
    Minbase,
}

impl Variant {
    fn as_str(self) -> &'static str {
        match self {
            Variant::Essential => "essential",
            Variant::Minbase => "minbase",
        }
    }
}

/// What to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianBootstrap {
    /// The Debian suite (`bookworm`).
    pub suite: String,
    /// The package selection.
    pub variant: Variant,
    /// Packages installed on top of the variant.
    pub packages: Vec<String>,
    /// The mirror (`http://deb.debian.org/debian`), or mmdebstrap's default.
    pub mirror: Option<String>,
}

impl DebianBootstrap {
    /// banger's image: `minbase` plus [`DEFAULT_PACKAGES`], the default mirror.
    pub fn new(suite: &str) -> Self {
        Self {
            suite: suite.to_string(),
            variant: Variant::Minbase,
            packages: DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect(),
            mirror: None,
        }
    }

    fn validate(&self) -> Result<(), ImageError> {
        let suite_ok = !self.suite.is_empty()
            && self
                .suite
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !suite_ok {
            return Err(ImageError::invalid(
                "Debian suite",
                &self.suite,
                "must be lowercase letters, digits and '-'",
            ));
        }
        for p in &self.packages {
            let ok = p.len() >= 2
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.')
                });
            if !ok {
                return Err(ImageError::invalid(
                    "Debian package name",
                    p,
                    "must be lowercase letters, digits, '+', '-' and '.'",
                ));
            }
        }
        if let Some(m) = &self.mirror
            && (m.trim().is_empty() || m.contains(['\n', '\r']))
        {
            return Err(ImageError::invalid("mirror", m, "must be a URL"));
        }
        Ok(())
    }

    /// mmdebstrap's arguments writing the tar `out`.
    pub fn args(&self, out: &Path) -> Vec<String> {
        let mut args = vec![
            format!("--variant={}", self.variant.as_str()),
            "--components=main".to_string(),
        ];
        if !self.packages.is_empty() {
            args.push(format!("--include={}", self.packages.join(",")));
        }
        args.push("--aptopt=Acquire::Languages \"none\"".to_string());
        for opt in DPKG_EXCLUDES {
            args.push(format!("--dpkgopt={opt}"));
        }
        for hook in CUSTOMIZE_HOOKS {
            args.push(format!("--customize-hook={hook}"));
        }
        args.push(self.suite.clone());
        args.push(out.to_string_lossy().into_owned());
        if let Some(m) = &self.mirror {
            args.push(m.clone());
        }
        args
    }
}

/// Builds the rootfs tar `out_tar` with mmdebstrap (see the module docs).
pub fn debian_rootfs_tar(
    runner: &dyn CommandRunner,
    spec: &DebianBootstrap,
    out_tar: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    spec.validate()?;
    let parent = match out_tar.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".banger-bootstrap-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(ImageError::io(parent, "create a staging directory in"))?;
    // mmdebstrap picks the output format from the extension.
    let staged = tmp.path().join("rootfs.tar");
    progress(&format!(
        "running mmdebstrap: Debian {} ({}, {} extra packages); this downloads packages and takes a few minutes",
        spec.suite,
        spec.variant.as_str(),
        spec.packages.len()
    ));
    let out = runner.run("mmdebstrap", &spec.args(&staged))?;
    if !out.success() {
        return Err(ImageError::command(&out));
    }
    let meta =
        fs::metadata(&staged).map_err(ImageError::io(&staged, "inspect mmdebstrap's output"))?;
    if meta.len() == 0 {
        return Err(ImageError::invalid(
            "mmdebstrap output",
            staged.display().to_string(),
            "is empty",
        ));
    }
    fs::rename(&staged, out_tar).map_err(ImageError::io(out_tar, "rename the finished tar to"))?;
    progress(&format!(
        "wrote {} ({} MiB)",
        out_tar.display(),
        meta.len() >> 20
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::fake::FakeRunner;

    #[test]
    fn command_line() {
        let mut spec = DebianBootstrap::new("bookworm");
        spec.mirror = Some("http://mirror.example/debian".to_string());
        let args = spec.args(Path::new("/w/rootfs.tar"));
        assert_eq!(args[0], "--variant=minbase");
        assert_eq!(args[1], "--components=main");
        assert!(
            args[2].starts_with("--include=systemd,systemd-sysv,dbus,"),
            "{}",
            args[2]
        );
        assert!(args[2].contains(",openssh-server,"));
        assert!(args.contains(&"--dpkgopt=path-exclude=/usr/share/man/*".to_string()));
        assert!(
            args.iter()
                .any(|a| a == r#"--customize-hook=echo localhost > "$1/etc/hostname""#)
        );
        assert!(args.iter().any(|a| a.contains("root:*:")));
        let n = args.len();
        assert_eq!(
            &args[n - 3..],
            ["bookworm", "/w/rootfs.tar", "http://mirror.example/debian"]
        );
        let plain = DebianBootstrap {
            variant: Variant::Essential,
            packages: Vec::new(),
            mirror: None,
            ..spec
        };
        let args = plain.args(Path::new("o.tar"));
        assert_eq!(args[0], "--variant=essential");
        assert!(!args.iter().any(|a| a.starts_with("--include")));
        assert_eq!(args.last().unwrap(), "o.tar");
    }

    /// Runs every customize hook on `root` as mmdebstrap does (`sh -c HOOK hook ROOT`).
    fn run_hooks(root: &Path) {
        for hook in CUSTOMIZE_HOOKS {
            let status = std::process::Command::new("sh")
                .args(["-c", hook, "hook"])
                .arg(root)
                .status()
                .unwrap();
            assert!(status.success(), "{hook}");
        }
    }

    #[test]
    fn the_hooks_neutralise_hostname_hosts_resolv_and_lock_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "buildhost\n").unwrap();
        fs::write(root.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        fs::write(
            root.join("etc/shadow"),
            "root:$6$salt$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
        )
        .unwrap();
        let wants = root.join("etc/systemd/system/multi-user.target.wants");
        fs::create_dir_all(&wants).unwrap();
        for unit in ["docker.service", "containerd.service", "ssh.service"] {
            std::os::unix::fs::symlink(format!("/lib/systemd/system/{unit}"), wants.join(unit))
                .unwrap();
        }
        fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        fs::write(
            root.join("usr/lib/systemd/system/docker.socket"),
            "[Socket]\n",
        )
        .unwrap();
        run_hooks(root);
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "localhost\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        assert!(!root.join("etc/resolv.conf").exists());
        assert_eq!(
            fs::read_to_string(root.join("etc/shadow")).unwrap(),
            "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        );
        let left: Vec<_> = fs::read_dir(&wants)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["ssh.service"]);
        assert_eq!(
            fs::read_link(root.join("etc/systemd/system/sockets.target.wants/docker.socket"))
                .unwrap(),
            Path::new("/lib/systemd/system/docker.socket")
        );
    }

    #[test]
    fn the_unit_hook_disables_exactly_the_documented_units() {
        let hook = CUSTOMIZE_HOOKS
            .iter()
            .find(|h| h.starts_with("for u in "))
            .unwrap();
        let listed = hook
            .strip_prefix("for u in ")
            .and_then(|h| h.split_once(';'))
            .unwrap()
            .0;
        assert_eq!(listed.split(' ').collect::<Vec<_>>(), BOOT_DISABLED_UNITS);
    }

    #[test]
    fn without_docker_no_socket_link_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        run_hooks(root);
        assert!(
            !root
                .join("etc/systemd/system/sockets.target.wants")
                .exists()
        );
    }

    #[test]
    fn the_default_set_is_a_developers_box() {
        for p in [
            "python3",
            "python3-venv",
            "make",
            "build-essential",
            "pkg-config",
            "jq",
            "ripgrep",
            "unzip",
            "rsync",
            "tmux",
            "vim-tiny",
            "openssh-client",
            "docker.io",
            "apparmor",
        ] {
            assert!(DEFAULT_PACKAGES.contains(&p), "{p}");
        }
    }

    #[test]
    fn bad_arguments_run_nothing() {
        let runner = FakeRunner::new();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.tar");
        for spec in [
            DebianBootstrap::new("Bookworm"),
            DebianBootstrap {
                packages: vec!["ok".into(), "bad name".into()],
                ..DebianBootstrap::new("bookworm")
            },
            DebianBootstrap {
                mirror: Some(" ".into()),
                ..DebianBootstrap::new("bookworm")
            },
        ] {
            let err = debian_rootfs_tar(&runner, &spec, &out, &mut |_| {}).unwrap_err();
            assert!(matches!(err, ImageError::Invalid { .. }), "{err}");
        }
        assert!(runner.calls().is_empty());
    }

    #[test]
    fn failure_reports_the_stderr_tail_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("debian.tar");
        let runner = FailingMmdebstrap;
        let spec = DebianBootstrap::new("bookworm");
        let err = debian_rootfs_tar(&runner, &spec, &out, &mut |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit code 25"), "{text}");
        assert!(
            text.contains("E: Unable to locate package nosuchpkg"),
            "{text}"
        );
        assert!(!text.contains("I: line 0\n"), "{text}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Writes a partial tar where mmdebstrap would, then fails like it.
    #[derive(Debug)]
    struct FailingMmdebstrap;

    impl CommandRunner for FailingMmdebstrap {
        fn run(
            &self,
            program: &str,
            args: &[String],
        ) -> Result<banger_core::runner::CommandOutput, banger_core::runner::SpawnError> {
            assert_eq!(program, "mmdebstrap");
            let out = &args[args.len() - 1];
            fs::write(out, b"partial").unwrap();
            let mut stderr: String = (0..30).map(|i| format!("I: line {i}\n")).collect();
            stderr.push_str("E: Unable to locate package nosuchpkg\n");
            Ok(banger_core::runner::CommandOutput {
                command: format!("mmdebstrap {}", args.join(" ")),
                code: Some(25),
                stdout: String::new(),
                stderr,
            })
        }
    }

    #[test]
    fn success_renames_the_tar_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("debian.tar");
        let runner = WritingMmdebstrap;
        let mut lines = Vec::new();
        debian_rootfs_tar(&runner, &DebianBootstrap::new("bookworm"), &out, &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"tar bytes");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(lines[0].starts_with("running mmdebstrap"), "{lines:?}");
    }

    #[derive(Debug)]
    struct WritingMmdebstrap;

    impl CommandRunner for WritingMmdebstrap {
        fn run(
            &self,
            _program: &str,
            args: &[String],
        ) -> Result<banger_core::runner::CommandOutput, banger_core::runner::SpawnError> {
            fs::write(&args[args.len() - 1], b"tar bytes").unwrap();
            Ok(banger_core::runner::CommandOutput {
                command: "mmdebstrap".into(),
                code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            })
        }
    }
}
