//! How plain `ssh NAME.vm` reaches a guest and trusts it: the managed `Host *.vm` block in
//! the owner's `~/.ssh/config` ([`banger_core::ssh_config`]), the running VMs' address
//! stanzas it includes (`Layout::ssh_hosts`), and banger's own known_hosts
//! (`Layout::known_hosts`, [`banger_core::known_hosts`]) holding the host keys each guest's
//! agent reported at boot.
//!
//! [`SshHosts`] owns the three files and serialises every rewrite with one lock; each file is
//! replaced whole (a temporary file next to it, synced, renamed over it), so ssh never reads
//! half of one. The address stanzas follow the store like the DNS zone (rebuilt after every
//! VM row change); a VM's host keys are set on each boot and dropped on delete, and setting
//! them replaces any line for the VM's name or address, so a new VM on a reused address
//! never meets the old one's keys.
//!
//! The user's config is written at daemon start (config `ssh_config`) and by
//! `banger ssh-config`: only banger's block changes, the rest of the file is kept byte for
//! byte, its mode and owner are kept (0600 for a new file, in a `~/.ssh` made 0700), and a
//! config that is a symlink (a dotfiles checkout) is written through to its target.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use banger_core::known_hosts::{self, HostKey};
use banger_core::layout::Layout;
use banger_core::ssh_config::{self, Block, SshConfigError};
use banger_core::vm::VmState;
use banger_store::VmRow;

/// A failure reading or writing one of the files.
#[derive(Debug, thiserror::Error)]
pub enum SshHostsError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot update banger's block in {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: SshConfigError,
    },
    #[error("cannot render banger's ssh config block")]
    Render(#[source] SshConfigError),
    #[error("the daemon was given no home directory, so there is no ~/.ssh/config to write")]
    NoHome,
    #[error("the home directory {path} does not exist")]
    HomeMissing { path: PathBuf },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshHostsError {
    let path = path.to_path_buf();
    move |source| SshHostsError::Io { op, path, source }
}

/// What a write of the user's config did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWrite {
    /// The file written (the symlink's target when the config is one).
    pub path: PathBuf,
    /// Whether its bytes changed.
    pub changed: bool,
}

/// The owner of banger's ssh files (see the module docs).
#[derive(Debug)]
pub struct SshHosts {
    block: Block,
    home: Option<PathBuf>,
    lock: Mutex<()>,
}

impl SshHosts {
    /// The files of `layout`, the managed key `identity_file`, the owner's `home`.
    pub fn new(layout: &Layout, identity_file: PathBuf, home: Option<PathBuf>) -> Self {
        Self {
            block: Block {
                identity_file,
                known_hosts: layout.known_hosts(),
                hosts: layout.ssh_hosts(),
            },
            home,
            lock: Mutex::new(()),
        }
    }

    /// The managed block's contents.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// banger's known_hosts file.
    pub fn known_hosts(&self) -> &Path {
        &self.block.known_hosts
    }

    /// The owner's `~/.ssh/config`.
    pub fn user_config(&self) -> Result<PathBuf, SshHostsError> {
        let home = self.home.as_ref().ok_or(SshHostsError::NoHome)?;
        Ok(home.join(".ssh/config"))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes (or refreshes) banger's block in the owner's `~/.ssh/config`.
    pub fn write_user_config(&self) -> Result<ConfigWrite, SshHostsError> {
        let _held = self.guard();
        let path = self.user_config()?;
        let Some(dir) = path.parent() else {
            unreachable!("the config path has a parent, ~/.ssh")
        };
        let home = dir.parent().unwrap_or(dir);
        if !home.is_dir() {
            return Err(SshHostsError::HomeMissing {
                path: home.to_path_buf(),
            });
        }
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io("create", dir))?;
        }
        self.rewrite_user_config(&path, |text| ssh_config::apply(text, &self.block))
    }

    /// Takes banger's block out of the owner's `~/.ssh/config`, leaving the rest as it was;
    /// a missing file stays missing.
    pub fn remove_user_config(&self) -> Result<ConfigWrite, SshHostsError> {
        let _held = self.guard();
        let path = self.user_config()?;
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(ConfigWrite {
                path,
                changed: false,
            });
        }
        self.rewrite_user_config(&path, ssh_config::remove)
    }

    fn rewrite_user_config(
        &self,
        path: &Path,
        edit: impl FnOnce(&str) -> Result<String, SshConfigError>,
    ) -> Result<ConfigWrite, SshHostsError> {
        // A symlinked config is written through, so the link (and what manages it) stays.
        let target = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::canonicalize(path).map_err(io("resolve the symlink", path))?
            }
            _ => path.to_path_buf(),
        };
        let (old, meta) = match std::fs::read_to_string(&target) {
            Ok(text) => (
                text,
                Some(std::fs::metadata(&target).map_err(io("stat", &target))?),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
            Err(e) => return Err(io("read", &target)(e)),
        };
        let new = edit(&old).map_err(|source| SshHostsError::Config {
            path: target.clone(),
            source,
        })?;
        if meta.is_some() && new == old {
            return Ok(ConfigWrite {
                path: target,
                changed: false,
            });
        }
        let (mode, owner) = match &meta {
            Some(m) => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
            None => (0o600, None),
        };
        write_whole(&target, new.as_bytes(), mode, owner)?;
        Ok(ConfigWrite {
            path: target,
            changed: true,
        })
    }

    /// Rewrites the address stanzas from the store rows `rows` reads (under the lock, so a
    /// later snapshot is never overwritten by an earlier one): the running VMs with an
    /// address. A failure is logged; ssh then reaches VMs by the names DNS gives them.
    pub fn refresh<E: std::error::Error>(&self, rows: impl FnOnce() -> Result<Vec<VmRow>, E>) {
        let _held = self.guard();
        let rows = match rows() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %banger_core::error::chain(&e), "ssh address stanzas not updated");
                return;
            }
        };
        let text = ssh_config::hosts_file(
            rows.iter()
                .filter(|r| r.state == VmState::Running)
                .filter_map(|r| r.ip.map(|ip| (r.name.as_str(), ip))),
        );
        let path = &self.block.hosts;
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return;
        }
        if let Err(e) = write_whole(path, text.as_bytes(), 0o600, None) {
            tracing::warn!(error = %banger_core::error::chain(&e), "ssh address stanzas not updated");
        }
    }

    /// Records `keys` as VM `name`'s (at `ip`), replacing every line for that name or address.
    pub fn record(
        &self,
        name: &str,
        ip: Option<Ipv4Addr>,
        keys: &[HostKey],
    ) -> Result<(), SshHostsError> {
        self.edit_known_hosts(|text| known_hosts::set(text, name, ip, keys))
    }

    /// Drops VM `name`'s lines (and any for `ip`): the VM is gone.
    pub fn forget(&self, name: &str, ip: Option<Ipv4Addr>) -> Result<(), SshHostsError> {
        self.edit_known_hosts(|text| known_hosts::remove(text, name, ip))
    }

    fn edit_known_hosts(&self, edit: impl FnOnce(&str) -> String) -> Result<(), SshHostsError> {
        let _held = self.guard();
        let path = &self.block.known_hosts;
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("read", path)(e)),
        };
        let new = edit(&old);
        if new != old {
            write_whole(path, new.as_bytes(), 0o600, None)?;
        }
        Ok(())
    }
}

/// Replaces `path` with `bytes` whole or not at all: a temporary file next to it with `mode`
/// (and `owner`, when it is not ours), synced, then renamed over it.
fn write_whole(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), SshHostsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".banger-")
        .tempfile_in(dir)
        .map_err(io("create a temporary file in", dir))?;
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", path))?;
    if let Some((uid, gid)) = owner {
        let meta = file.metadata().map_err(io("stat", path))?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid))
                .map_err(io("keep the owner of", path))?;
        }
    }
    tmp.write_all(bytes).map_err(io("write", path))?;
    tmp.as_file().sync_all().map_err(io("sync", path))?;
    tmp.persist(path)
        .map_err(|e| io("replace", path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(dir: &Path) -> SshHosts {
        let layout = Layout::under(&dir.join("banger"));
        std::fs::create_dir_all(layout.ssh_dir()).unwrap();
        SshHosts::new(
            &layout,
            layout.ssh_dir().join("id_ed25519"),
            Some(dir.join("home")),
        )
    }

    const USER: &str = "Host github.com\n  User git\n\nHost *\n  ServerAliveInterval 30";

    #[test]
    fn a_user_config_keeps_its_bytes_mode_and_comes_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts(dir.path());
        let ssh = dir.path().join("home/.ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let config = ssh.join("config");
        std::fs::write(&config, format!("{USER}\n")).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        let w = h.write_user_config().unwrap();
        assert!(w.changed);
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.starts_with(&format!("{USER}\n\n{}", ssh_config::BEGIN)));
        assert_eq!(
            std::fs::metadata(&config).unwrap().mode() & 0o777,
            0o640,
            "mode kept"
        );
        assert!(!h.write_user_config().unwrap().changed, "idempotent");
        assert!(h.remove_user_config().unwrap().changed);
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            format!("{USER}\n")
        );
        // No temporary file is left next to it.
        assert_eq!(std::fs::read_dir(&ssh).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_config_and_ssh_dir_are_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts(dir.path());
        std::fs::create_dir(dir.path().join("home")).unwrap();
        h.write_user_config().unwrap();
        let ssh = dir.path().join("home/.ssh");
        assert_eq!(std::fs::metadata(&ssh).unwrap().mode() & 0o777, 0o700);
        let config = ssh.join("config");
        assert_eq!(std::fs::metadata(&config).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            h.block().render().unwrap()
        );
    }

    #[test]
    fn adversarial_no_home_or_a_missing_one_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts(dir.path());
        let e = h.write_user_config().unwrap_err();
        assert!(matches!(e, SshHostsError::HomeMissing { .. }), "{e}");
        assert!(!dir.path().join("home").exists());
        let layout = Layout::under(&dir.path().join("banger"));
        let none = SshHosts::new(&layout, "/k".into(), None);
        assert!(matches!(
            none.write_user_config().unwrap_err(),
            SshHostsError::NoHome
        ));
    }

    #[test]
    fn a_symlinked_config_is_written_through_to_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts(dir.path());
        let ssh = dir.path().join("home/.ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let target = dir.path().join("dotfiles-ssh-config");
        std::fs::write(&target, "Host x\n").unwrap();
        std::os::unix::fs::symlink(&target, ssh.join("config")).unwrap();
        h.write_user_config().unwrap();
        assert!(
            std::fs::symlink_metadata(ssh.join("config"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            std::fs::read_to_string(&target)
                .unwrap()
                .contains("Host *.vm")
        );
    }

    #[test]
    fn adversarial_a_config_with_a_lone_marker_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts(dir.path());
        let ssh = dir.path().join("home/.ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let text = format!("Host x\n{}\nHost mine\n", ssh_config::BEGIN);
        std::fs::write(ssh.join("config"), &text).unwrap();
        let e = banger_core::error::chain(&h.write_user_config().unwrap_err());
        assert!(e.contains("by hand") && e.contains(".ssh/config"), "{e}");
        assert_eq!(std::fs::read_to_string(ssh.join("config")).unwrap(), text);
    }

    fn row(name: &str, ip: [u8; 4], state: VmState) -> VmRow {
        crate::test_rows::vm_row(
            &format!("{name:0>32}"),
            name,
            state,
            Some(Ipv4Addr::from(ip)),
        )
    }

    #[test]
    fn the_address_stanzas_are_the_running_vms() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts(dir.path());
        h.refresh(|| {
            Ok::<_, std::io::Error>(vec![
                row("web", [172, 30, 0, 2], VmState::Running),
                row("old", [172, 30, 0, 3], VmState::Stopped),
            ])
        });
        let text = std::fs::read_to_string(&h.block().hosts).unwrap();
        assert!(
            text.contains("Host web.vm\n    HostName 172.30.0.2\n"),
            "{text}"
        );
        assert!(!text.contains("old"), "{text}");
        let mode = std::fs::metadata(&h.block().hosts).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "ssh refuses an included file others may write");
        h.refresh(|| Ok::<_, std::io::Error>(Vec::new()));
        assert!(
            !std::fs::read_to_string(&h.block().hosts)
                .unwrap()
                .contains("web")
        );
    }

    #[test]
    fn known_hosts_follow_boots_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let h = hosts(dir.path());
        let ip = Some(Ipv4Addr::new(172, 30, 0, 2));
        let key = HostKey::parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne").unwrap();
        h.record("web", ip, std::slice::from_ref(&key)).unwrap();
        let text = std::fs::read_to_string(h.known_hosts()).unwrap();
        assert_eq!(
            text,
            "web.vm,172.30.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne\n"
        );
        assert_eq!(
            std::fs::metadata(h.known_hosts()).unwrap().mode() & 0o777,
            0o600
        );
        h.forget("web", ip).unwrap();
        assert_eq!(std::fs::read_to_string(h.known_hosts()).unwrap(), "");
    }
}
