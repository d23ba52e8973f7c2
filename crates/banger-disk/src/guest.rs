//! Per-VM guest configuration written into a VM's disk images with debugfs (one batch per
//! image, no mount).
//!
//! [`write_guest_config`] writes into the VM's root filesystem:
//!
//! | path | contents |
//! |---|---|
//! | `/etc/hostname` | the hostname |
//! | `/etc/hosts` | `127.0.0.1 localhost`, `127.0.1.1 <hostname>`, `::1 localhost` |
//! | `/etc/resolv.conf` | one `nameserver` line per DNS server, and `search` with the search domains (replaces a symlink) |
//! | `/etc/banger/network.env` | the network contract below |
//! | `/etc/systemd/network/10-banger.network` | the same address for systemd-networkd, matched by MAC |
//! | `/etc/fstab` | the image's lines, plus the work-disk line (see [`merge_fstab`]) |
//!
//! # `/etc/banger/network.env`
//!
//! A contract with the guest side (the network unit injected into images reads it and
//! applies it with `ip`). One `KEY=VALUE` per line, no spaces around `=`, lines starting
//! with `#` are comments; values need no quoting except `BANGER_DNS`, which is a
//! double-quoted, space-separated list (possibly empty). The file can be sourced by
//! `sh` and read by systemd's `EnvironmentFile=`. Keys, all always present:
//!
//! ```text
//! # Written by banger: the static network configuration of this VM.
//! BANGER_IP=172.30.0.5
//! BANGER_PREFIX=24
//! BANGER_GATEWAY=172.30.0.1
//! BANGER_DNS="172.30.0.1 1.1.1.1"
//! BANGER_MAC=02:fc:ac:1e:00:05
//! ```
//!
//! - `BANGER_IP`: the guest's IPv4 address, dotted quad;
//! - `BANGER_PREFIX`: its prefix length, 1 to 32;
//! - `BANGER_GATEWAY`: the default gateway, dotted quad;
//! - `BANGER_DNS`: the nameservers, in order of preference;
//! - `BANGER_MAC`: the MAC address of the interface to configure, lowercase hex pairs
//!   separated by `:`.
//!
//! [`authorize_ssh_key`] writes `/.ssh/authorized_keys` into the VM's work disk (mounted
//! at `/root` in the guest); [`write_private_files`] writes any files there with a mode of
//! the caller's, owned by root (host integration: git identity, agent auth files).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use banger_core::runner::CommandRunner;

use crate::DiskError;
use crate::debugfs::{self, Debugfs, FileKind};

/// The marker ending the fstab line banger manages.
pub const FSTAB_MARKER: &str = "# banger-work";

/// The fstab line mounting the work disk at `/root` (without the trailing newline):
/// `nofail` so a VM without a work disk still boots, and a 10 s device timeout instead of
/// systemd's 90 s.
pub const FSTAB_LINE: &str =
    "/dev/vdb /root ext4 defaults,nofail,x-systemd.device-timeout=120s 0 2 # banger-work";

/// The static network configuration of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// The guest's hostname (the VM name).
    pub hostname: String,
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// The prefix length of the guest's subnet (1 to 32).
    pub prefix: u8,
    /// The default gateway (the host bridge).
    pub gateway: Ipv4Addr,
    /// Nameservers, in order of preference.
    pub dns: Vec<Ipv4Addr>,
    /// Search domains (`vm`, so `web` resolves as `web.vm`), in order.
    pub search: Vec<String>,
    /// The MAC address of the guest's interface (`02:fc:ac:1e:00:05`).
    pub mac: String,
}

/// One file of the guest configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub path: &'static str,
    /// Its full contents.
    pub contents: String,
}

impl GuestConfig {
    /// Checks the hostname and the search domains (labels of 1 to 63 letters, digits and
    /// `-`, not starting or ending with `-`, 253 characters at most), the prefix and the MAC
    /// address.
    pub fn validate(&self) -> Result<(), DiskError> {
        validate_hostname(&self.hostname)?;
        for domain in &self.search {
            validate_hostname(domain)?;
        }
        if !(1..=32).contains(&self.prefix) {
            return Err(DiskError::invalid(
                "prefix length",
                self.prefix.to_string(),
                "must be between 1 and 32",
            ));
        }
        let parts: Vec<&str> = self.mac.split(':').collect();
        if parts.len() != 6
            || !parts
                .iter()
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(DiskError::invalid(
                "MAC address",
                &self.mac,
                "must be six hex pairs separated by ':'",
            ));
        }
        Ok(())
    }

    fn mac_lower(&self) -> String {
        self.mac.to_ascii_lowercase()
    }

    /// `/etc/hostname`.
    pub fn hostname_file(&self) -> String {
        format!("{}\n", self.hostname)
    }

    /// `/etc/hosts`.
    pub fn hosts_file(&self) -> String {
        format!(
            "127.0.0.1 localhost\n127.0.1.1 {}\n::1 localhost\n",
            self.hostname
        )
    }

    /// `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> String {
        let mut s = String::from("# Written by banger.\n");
        for ns in &self.dns {
            let _ = writeln!(s, "nameserver {ns}");
        }
        if !self.search.is_empty() {
            let _ = writeln!(s, "search {}", self.search.join(" "));
        }
        s
    }

    /// `/etc/banger/network.env` (format in the module docs).
    pub fn network_env(&self) -> String {
        let dns: Vec<String> = self.dns.iter().map(Ipv4Addr::to_string).collect();
        format!(
            "# Written by banger: the static network configuration of this VM.\n\
             BANGER_IP={}\nBANGER_PREFIX={}\nBANGER_GATEWAY={}\nBANGER_DNS=\"{}\"\nBANGER_MAC={}\n",
            self.ip,
            self.prefix,
            self.gateway,
            dns.join(" "),
            self.mac_lower()
        )
    }

    /// `/etc/systemd/network/10-banger.network`.
    pub fn networkd_unit(&self) -> String {
        let mut s = format!(
            "# Written by banger.\n[Match]\nMACAddress={}\n\n[Network]\nAddress={}/{}\nGateway={}\n",
            self.mac_lower(),
            self.ip,
            self.prefix,
            self.gateway
        );
        for ns in &self.dns {
            let _ = writeln!(s, "DNS={ns}");
        }
        if !self.search.is_empty() {
            let _ = writeln!(s, "Domains={}", self.search.join(" "));
        }
        s
    }

    /// Every file [`write_guest_config`] writes, `existing_fstab` being the image's current
    /// `/etc/fstab` (empty when it has none).
    pub fn files(&self, existing_fstab: &str) -> Vec<GuestFile> {
        vec![
            GuestFile {
                path: "/etc/hostname",
                contents: self.hostname_file(),
            },
            GuestFile {
                path: "/etc/hosts",
                contents: self.hosts_file(),
            },
            GuestFile {
                path: "/etc/resolv.conf",
                contents: self.resolv_conf(),
            },
            GuestFile {
                path: "/etc/banger/network.env",
                contents: self.network_env(),
            },
            GuestFile {
                path: "/etc/systemd/network/10-banger.network",
                contents: self.networkd_unit(),
            },
            GuestFile {
                path: "/etc/fstab",
                contents: merge_fstab(existing_fstab),
            },
        ]
    }
}

fn validate_hostname(name: &str) -> Result<(), DiskError> {
    let ok = banger_core::names::is_dns_name(name);
    if ok {
        Ok(())
    } else {
        Err(DiskError::invalid(
            "hostname",
            name,
            "must be dot-separated labels of 1-63 letters, digits and '-' (not at either end)",
        ))
    }
}

/// The image's fstab with banger's work-disk line: every existing line is kept except
/// lines ending with [`FSTAB_MARKER`] (a previous banger line), and [`FSTAB_LINE`] is
/// appended. Applying it twice gives the same result.
pub fn merge_fstab(existing: &str) -> String {
    let mut out = String::new();
    for line in existing.lines() {
        if line.trim_end().ends_with(FSTAB_MARKER) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(FSTAB_LINE);
    out.push('\n');
    out
}

/// Reads the regular file `path` from `image`, `None` when absent (a directory or symlink
/// there is [`DiskError::WrongType`]). Temporary files live under `scratch`.
pub fn read_optional_file(
    runner: &dyn CommandRunner,
    image: &Path,
    path: &str,
    scratch: &Path,
) -> Result<Option<Vec<u8>>, DiskError> {
    match debugfs::stat(runner, image, path)? {
        None => Ok(None),
        Some(inode) if inode.kind == FileKind::Regular => {
            debugfs::read_file(runner, image, path, scratch).map(Some)
        }
        Some(inode) => Err(DiskError::WrongType {
            image: image.to_path_buf(),
            path: path.to_string(),
            found: inode.kind,
            expected: FileKind::Regular,
        }),
    }
}

/// One file for [`write_private_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFile {
    /// Absolute path inside the image (`/.gitconfig` for the guest's `/root/.gitconfig`).
    pub path: String,
    /// Its full contents.
    pub contents: Vec<u8>,
    /// Permission bits (`0o600`); no setuid, setgid or sticky bit.
    pub mode: u32,
}

/// Writes `files` into `image` in one debugfs batch, each replacing what was there, owned
/// by 0:0 with its mode; missing parent directories are made (0755, 0:0). A mode with bits
/// beyond `0o777` is refused before anything runs. No files, no run.
pub fn write_private_files(
    runner: &dyn CommandRunner,
    image: &Path,
    files: &[OwnedFile],
    scratch: &Path,
) -> Result<(), DiskError> {
    let mut batch = Debugfs::new(scratch);
    for file in files {
        if file.mode & !0o777 != 0 {
            return Err(DiskError::invalid(
                "file mode",
                format!("{:#o}", file.mode),
                "only permission bits (0o777) are allowed",
            ));
        }
        let path = debugfs::guest_path(&file.path)?;
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
        {
            batch.mkdir(parent)?;
        }
        batch
            .write_bytes(&file.contents, &path)?
            .set_owner(&path, 0, 0)?
            .set_mode(&path, FileKind::Regular.type_bits() | file.mode)?;
    }
    batch.run(runner, image)
}

/// Reads a regular file from the image, `None` when absent.
fn read_optional(
    runner: &dyn CommandRunner,
    image: &Path,
    path: &str,
    scratch: &Path,
) -> Result<Option<String>, DiskError> {
    match debugfs::stat(runner, image, path)? {
        None => Ok(None),
        Some(inode) if inode.kind == FileKind::Regular => {
            let bytes = debugfs::read_file(runner, image, path, scratch)?;
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        }
        Some(inode) => Err(DiskError::WrongType {
            image: image.to_path_buf(),
            path: path.to_string(),
            found: inode.kind,
            expected: FileKind::Regular,
        }),
    }
}

/// Writes the guest configuration (see the module docs) into the root filesystem image
/// `rootfs_image` in one debugfs batch (files mode 0644, owner 0:0; missing directories
/// created). The image's `/etc/fstab` is read first so its lines are kept. Temporary
/// files live in a private directory under `scratch`.
pub fn write_guest_config(
    runner: &dyn CommandRunner,
    rootfs_image: &Path,
    config: &GuestConfig,
    scratch: &Path,
) -> Result<(), DiskError> {
    config.validate()?;
    let fstab = read_optional(runner, rootfs_image, "/etc/fstab", scratch)?.unwrap_or_default();
    let mut batch = Debugfs::new(scratch);
    batch.mkdir("/etc/banger")?.mkdir("/etc/systemd/network")?;
    for file in config.files(&fstab) {
        batch.write_bytes(file.contents.as_bytes(), file.path)?;
    }
    batch.run(runner, rootfs_image)
}

/// The path of the authorized keys file in the work disk (the guest's
/// `/root/.ssh/authorized_keys`).
pub const AUTHORIZED_KEYS: &str = "/.ssh/authorized_keys";

/// Authorizes `pubkey_line` (one OpenSSH public key line) for root in the work disk
/// image: `/.ssh` (mode 0700) and `/.ssh/authorized_keys` (mode 0600), both owned by 0:0.
/// Keys already in the file are kept; the key is added once. Temporary files live in a
/// private directory under `scratch`.
pub fn authorize_ssh_key(
    runner: &dyn CommandRunner,
    work_disk_image: &Path,
    pubkey_line: &str,
    scratch: &Path,
) -> Result<(), DiskError> {
    let key = pubkey_line.trim();
    if key.is_empty() || key.contains(['\n', '\r']) {
        return Err(DiskError::invalid(
            "public key",
            pubkey_line,
            "must be one non-empty line",
        ));
    }
    let existing =
        read_optional(runner, work_disk_image, AUTHORIZED_KEYS, scratch)?.unwrap_or_default();
    let mut contents = String::new();
    for line in existing.lines().filter(|l| !l.trim().is_empty()) {
        contents.push_str(line);
        contents.push('\n');
    }
    if !existing.lines().any(|l| l.trim() == key) {
        contents.push_str(key);
        contents.push('\n');
    }
    let mut batch = Debugfs::new(scratch);
    batch
        .mkdir("/.ssh")?
        .set_owner("/.ssh", 0, 0)?
        .set_mode("/.ssh", 0o040700)?
        .write_bytes(contents.as_bytes(), AUTHORIZED_KEYS)?
        .set_owner(AUTHORIZED_KEYS, 0, 0)?
        .set_mode(AUTHORIZED_KEYS, 0o100600)?;
    batch.run(runner, work_disk_image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::fake::FakeRunner;

    fn config() -> GuestConfig {
        GuestConfig {
            hostname: "dev-box".to_string(),
            ip: Ipv4Addr::new(172, 30, 0, 5),
            prefix: 24,
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            dns: vec![Ipv4Addr::new(172, 30, 0, 1), Ipv4Addr::new(1, 1, 1, 1)],
            search: vec!["vm".to_string()],
            mac: "02:FC:AC:1E:00:05".to_string(),
        }
    }

    #[test]
    fn renders_network_env() {
        assert_eq!(
            config().network_env(),
            "# Written by banger: the static network configuration of this VM.
BANGER_IP=172.30.0.5
BANGER_PREFIX=24
BANGER_GATEWAY=172.30.0.1
BANGER_DNS=\"172.30.0.1 1.1.1.1\"
BANGER_MAC=02:fc:ac:1e:00:05
"
        );
        let mut no_dns = config();
        no_dns.dns.clear();
        assert!(no_dns.network_env().contains("\nBANGER_DNS=\"\"\n"));
    }

    #[test]
    fn renders_networkd_hosts_and_resolv() {
        let c = config();
        assert_eq!(
            c.networkd_unit(),
            "# Written by banger.
[Match]
MACAddress=02:fc:ac:1e:00:05

[Network]
Address=172.30.0.5/24
Gateway=172.30.0.1
DNS=172.30.0.1
DNS=1.1.1.1
Domains=vm
"
        );
        assert_eq!(
            c.hosts_file(),
            "127.0.0.1 localhost\n127.0.1.1 dev-box\n::1 localhost\n"
        );
        assert_eq!(
            c.resolv_conf(),
            "# Written by banger.\nnameserver 172.30.0.1\nnameserver 1.1.1.1\nsearch vm\n"
        );
        let mut plain = c.clone();
        plain.search.clear();
        assert!(!plain.resolv_conf().contains("search"));
        assert!(!plain.networkd_unit().contains("Domains"));
        assert_eq!(c.hostname_file(), "dev-box\n");
    }

    #[test]
    fn fstab_keeps_user_lines_and_replaces_ours() {
        let user = "# comment\nUUID=abc / ext4 defaults 0 1\n";
        let once = merge_fstab(user);
        assert_eq!(once, format!("{user}{FSTAB_LINE}\n"));
        assert_eq!(merge_fstab(&once), once);
        // A user file without a final newline.
        assert_eq!(
            merge_fstab("proc /proc proc defaults 0 0"),
            format!("proc /proc proc defaults 0 0\n{FSTAB_LINE}\n")
        );
        assert_eq!(merge_fstab(""), format!("{FSTAB_LINE}\n"));
        // An older banger line with other options is replaced too.
        assert_eq!(
            merge_fstab("/dev/vdb /root ext4 defaults 0 0 # banger-work\n"),
            format!("{FSTAB_LINE}\n")
        );
    }

    #[test]
    fn validation_rejects_bad_values() {
        config().validate().unwrap();
        for hostname in ["", "-x", "x-", "a b", "a\nb", "a..b", &"x".repeat(64)] {
            let c = GuestConfig {
                hostname: hostname.to_string(),
                ..config()
            };
            assert!(c.validate().is_err(), "{hostname:?}");
        }
        for mac in [
            "",
            "02:fc:ac:1e:00",
            "02:fc:ac:1e:00:0g",
            "02-fc-ac-1e-00-05",
        ] {
            let c = GuestConfig {
                mac: mac.to_string(),
                ..config()
            };
            assert!(c.validate().is_err(), "{mac:?}");
        }
        for prefix in [0, 33] {
            let c = GuestConfig { prefix, ..config() };
            assert!(c.validate().is_err(), "{prefix}");
        }
        for domain in ["", "vm\nnameserver 6.6.6.6", "a b", "-vm"] {
            let c = GuestConfig {
                search: vec![domain.to_string()],
                ..config()
            };
            assert!(c.validate().is_err(), "{domain:?}");
        }
    }

    #[test]
    fn invalid_config_runs_nothing() {
        let runner = FakeRunner::new();
        let c = GuestConfig {
            hostname: "bad name".into(),
            ..config()
        };
        assert!(
            write_guest_config(&runner, Path::new("/img"), &c, Path::new("/nonexistent")).is_err()
        );
        assert!(runner.calls().is_empty());
        assert!(
            authorize_ssh_key(
                &runner,
                Path::new("/img"),
                "a\nb",
                Path::new("/nonexistent")
            )
            .is_err()
        );
        assert!(runner.calls().is_empty());
    }

    #[test]
    fn private_files_refuse_bad_modes_and_paths_before_running() {
        let runner = FakeRunner::new();
        let file = |path: &str, mode| OwnedFile {
            path: path.into(),
            contents: b"x".to_vec(),
            mode,
        };
        let scratch = tempfile::tempdir().unwrap();
        for files in [
            vec![file("/.gitconfig", 0o600), file("/x", 0o4755)],
            vec![file("relative", 0o600)],
            vec![file("/a/../b", 0o600)],
        ] {
            assert!(
                write_private_files(&runner, Path::new("/img"), &files, scratch.path()).is_err(),
                "{files:?}"
            );
        }
        write_private_files(&runner, Path::new("/img"), &[], scratch.path()).unwrap();
        assert!(runner.calls().is_empty());
    }

    #[test]
    fn files_cover_every_path() {
        let paths: Vec<&str> = config().files("").iter().map(|f| f.path).collect();
        assert_eq!(
            paths,
            [
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/banger/network.env",
                "/etc/systemd/network/10-banger.network",
                "/etc/fstab"
            ]
        );
    }
}
