//! The managed SSH key: an ed25519 key pair under the state dir (`ssh/id_ed25519`, mode 0600),
//! made by `ssh-keygen` the first time the daemon starts. Its public half is authorised in
//! every VM's work disk (mounted at `/root`) at create.
//!
//! `ssh/` is a private dir (ours, 0700, not a symlink). A new pair is made in a fresh temporary
//! directory inside it and renamed into place, so `ssh-keygen` never writes through a name
//! someone planted; an existing pair is opened with `O_NOFOLLOW` and checked (regular files of
//! ours, one link each) before it is chmodded or read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_core::private::{self, DirRole, FileMode, PrivateError};
use banger_core::runner::CommandRunner;

/// The key pair's paths and public line.
#[derive(Debug, Clone)]
pub struct SshKey {
    pub private_key: PathBuf,
    pub public_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    #[error("the managed SSH key is unusable")]
    Unsafe(#[source] PrivateError),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ssh-keygen failed: {detail}")]
    Keygen { detail: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshKeyError {
    let path = path.to_path_buf();
    move |source| SshKeyError::Io { op, path, source }
}

/// Opens one half of the pair (never through a symlink), makes it 0600 and returns its text.
fn read_key_file(path: &Path, euid: u32) -> Result<String, SshKeyError> {
    use std::io::Read;
    let mut f = private::open_file(path, FileMode::Read, euid).map_err(SshKeyError::Unsafe)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod", path))?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io("read", path))?;
    Ok(text)
}

/// Loads the managed key, creating it when absent. `euid` owns the state dir.
pub fn ensure_key(
    runner: &dyn CommandRunner,
    state_dir: &Path,
    euid: u32,
) -> Result<SshKey, SshKeyError> {
    let dir = state_dir.join("ssh");
    private::ensure_dir(DirRole::Sub, &dir, euid).map_err(SshKeyError::Unsafe)?;
    let private_key = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if !present(&private_key) || !present(&public) {
        let stage = tempfile::Builder::new()
            .prefix(".keygen-")
            .tempdir_in(&dir)
            .map_err(io("create a staging directory in", &dir))?;
        let new_private = stage.path().join("id_ed25519");
        let args: Vec<String> = [
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "banger",
            "-f",
            &new_private.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = runner
            .run("ssh-keygen", &args)
            .map_err(|e| SshKeyError::Keygen {
                detail: crate::error::chain(&e),
            })?;
        if !out.success() {
            return Err(SshKeyError::Keygen {
                detail: format!("{}: {}", out.command, out.stderr.trim()),
            });
        }
        let new_public = stage.path().join("id_ed25519.pub");
        read_key_file(&new_private, euid)?;
        read_key_file(&new_public, euid)?;
        // rename(2) replaces whatever name is there (even a symlink) without following it.
        std::fs::rename(&new_private, &private_key).map_err(io("install", &private_key))?;
        std::fs::rename(&new_public, &public).map_err(io("install", &public))?;
    }
    read_key_file(&private_key, euid)?;
    let public_key = read_key_file(&public, euid)?.trim().to_string();
    Ok(SshKey {
        private_key,
        public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::SystemRunner;
    use std::os::unix::fs::MetadataExt;

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn creates_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = ensure_key(&SystemRunner::new(), dir.path(), euid()).unwrap();
        assert!(
            k1.public_key.starts_with("ssh-ed25519 "),
            "{}",
            k1.public_key
        );
        let mode = std::fs::metadata(&k1.private_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = ensure_key(&SystemRunner::new(), dir.path(), euid()).unwrap();
        assert_eq!(k1.public_key, k2.public_key, "the key is reused");
        // Only the pair is left: no staging directory.
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["id_ed25519", "id_ed25519.pub"]);
    }

    #[test]
    fn adversarial_symlinked_key_never_chmods_or_reads_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("ssh");
        std::fs::create_dir(&ssh).unwrap();
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).unwrap();
        let canary = dir.path().join("shadow");
        std::fs::write(&canary, "root:secret\n").unwrap();
        std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o640)).unwrap();
        // Both halves present, the private one a symlink: refused, target untouched.
        std::os::unix::fs::symlink(&canary, ssh.join("id_ed25519")).unwrap();
        std::fs::write(ssh.join("id_ed25519.pub"), "ssh-ed25519 AAAA x\n").unwrap();
        let err = ensure_key(&SystemRunner::new(), dir.path(), euid()).unwrap_err();
        let msg = crate::error::chain(&err);
        assert!(
            msg.contains("is a symbolic link") && msg.contains("id_ed25519"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "root:secret\n");
        assert_eq!(std::fs::metadata(&canary).unwrap().mode() & 0o777, 0o640);
        // Half a pair, the missing half's name a symlink: a new pair replaces the names.
        std::fs::remove_file(ssh.join("id_ed25519.pub")).unwrap();
        std::os::unix::fs::symlink(&canary, ssh.join("id_ed25519.pub")).unwrap();
        std::fs::remove_file(ssh.join("id_ed25519")).unwrap();
        let k = ensure_key(&SystemRunner::new(), dir.path(), euid()).unwrap();
        assert!(k.public_key.starts_with("ssh-ed25519 "));
        assert!(
            std::fs::symlink_metadata(ssh.join("id_ed25519.pub"))
                .unwrap()
                .is_file()
        );
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "root:secret\n");
        assert_eq!(std::fs::metadata(&canary).unwrap().mode() & 0o777, 0o640);
    }
}
