//! The single-instance lock: one daemon per state layout.
//!
//! The daemon holds an exclusive `flock` on `bangerd.lock` in the runtime dir for its whole
//! life and writes its pid there. A second daemon started for the same layout (two CLIs racing
//! to start one) fails to take the lock and exits; the CLI then talks to the first.
//!
//! The file is opened with `O_NOFOLLOW`, created 0600, checked to be a regular file of ours
//! with one link, and truncated only once the lock is held: a symlink or hard link planted at
//! the path never makes the daemon write to another file.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use banger_core::private::{self, FileMode, PrivateError};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file")]
    Open(#[source] PrivateError),
    #[error("another bangerd (pid {pid}) already holds {path}")]
    Held { path: PathBuf, pid: String },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write pid to lock file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for the daemon's lifetime; released when dropped or when the process dies.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    /// Takes the lock at `path`, a file in the runtime dir that must belong to `euid`.
    pub fn acquire(path: &Path, euid: u32) -> Result<Self, LockError> {
        let mut file =
            private::open_file(path, FileMode::ReadWrite, euid).map_err(LockError::Open)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    pid: pid.trim().to_string(),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(LockError::Lock {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        };
        write(&mut file).map_err(|source| LockError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    #[test]
    fn second_holder_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bangerd.lock");
        let first = DaemonLock::acquire(&path, euid()).unwrap();
        let err = DaemonLock::acquire(&path, euid()).unwrap_err();
        match err {
            LockError::Held { pid, .. } => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("unexpected {other:?}"),
        }
        drop(first);
        DaemonLock::acquire(&path, euid()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn adversarial_symlinked_or_hard_linked_lock_never_touches_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        std::fs::write(&canary, "precious\n").unwrap();
        let path = dir.path().join("bangerd.lock");
        std::os::unix::fs::symlink(&canary, &path).unwrap();
        let err = DaemonLock::acquire(&path, euid()).unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains("is a symbolic link"), "{msg}");
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious\n");
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&canary, &path).unwrap();
        assert!(DaemonLock::acquire(&path, euid()).is_err());
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious\n");
    }
}
