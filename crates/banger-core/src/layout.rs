//! Where banger keeps its files.
//!
//! Three roots, following XDG: config (`config.toml`), state (database, logs, disks, keys) and
//! runtime (the daemon socket and lock). `BANGER_HOME=DIR` moves all three under `DIR`
//! (`DIR/config`, `DIR/state`, `DIR/run`), which is what every test and script uses.
//! `BANGER_RUNTIME_DIR=DIR` then moves the runtime dir alone: the system daemon
//! (`bangerd.service`) runs with [`SYSTEM_DAEMON_RUNTIME_DIR`], and the CLI hands it over
//! when that dir is the caller's.
//!
//! This module never reads the process environment itself: the caller hands it a lookup
//! function, so it stays a pure function of its inputs. Resolving creates nothing; the dirs
//! are created and checked (owned by the user, not writable by others) by [`Layout::ensure_state_dir`],
//! [`Layout::ensure_runtime_dir`] and [`Layout::check_existing`], see [`crate::private`].

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::private::{self, DirRole, PrivateError};

/// Where the runtime dir goes when `XDG_RUNTIME_DIR` is unset: `/tmp/banger-UID`.
pub const FALLBACK_RUNTIME_ROOT: &str = "/tmp";

/// The system install's runtime root (`RuntimeDirectory=banger` of `banger-helper.service`).
pub const SYSTEM_RUNTIME_ROOT: &str = "/run/banger";
/// The root helper's socket in the system install.
pub const SYSTEM_HELPER_SOCKET: &str = "/run/banger/helper.sock";
/// The system daemon's runtime dir (`RuntimeDirectory=banger/bangerd` of `bangerd.service`,
/// owned by the owner, 0700): its socket and lock. The CLI uses it when it exists and is the
/// caller's (see `BANGER_RUNTIME_DIR`).
pub const SYSTEM_DAEMON_RUNTIME_DIR: &str = "/run/banger/bangerd";

/// The longest path a Unix socket address can hold (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The resolved state roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{var} must be an absolute path, got {value:?}")]
    NotAbsolute { var: &'static str, value: PathBuf },
    #[error("cannot find a home for banger's files: set BANGER_HOME or HOME")]
    NoHome,
    #[error(
        "daemon socket path {path:?} is {len} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket allows; choose a shorter BANGER_HOME or XDG_RUNTIME_DIR"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
}

impl Layout {
    /// Resolves the roots from environment lookups (`env("BANGER_HOME")` etc.) and the user id
    /// (used for the runtime-dir fallback when `XDG_RUNTIME_DIR` is unset).
    pub fn resolve(env: impl Fn(&str) -> Option<OsString>, uid: u32) -> Result<Self, LayoutError> {
        Self::resolve_in(env, uid, Path::new(FALLBACK_RUNTIME_ROOT))
    }

    /// [`Layout::resolve`] with the directory that holds the `banger-UID` runtime-dir fallback
    /// (`/tmp` in production; tests point it at a private directory).
    pub fn resolve_in(
        env: impl Fn(&str) -> Option<OsString>,
        uid: u32,
        fallback_runtime_root: &Path,
    ) -> Result<Self, LayoutError> {
        let abs = |var: &'static str| -> Result<Option<PathBuf>, LayoutError> {
            match env(var).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let p = PathBuf::from(v);
                    if p.is_absolute() {
                        Ok(Some(p))
                    } else {
                        Err(LayoutError::NotAbsolute { var, value: p })
                    }
                }
            }
        };
        let runtime_override = abs("BANGER_RUNTIME_DIR")?;
        let mut layout = if let Some(home) = abs("BANGER_HOME")? {
            Self::under(&home)
        } else {
            let home = abs("HOME")?;
            let config_base = match abs("XDG_CONFIG_HOME")? {
                Some(p) => p,
                None => home.as_ref().ok_or(LayoutError::NoHome)?.join(".config"),
            };
            let state_base = match abs("XDG_STATE_HOME")? {
                Some(p) => p,
                None => home
                    .as_ref()
                    .ok_or(LayoutError::NoHome)?
                    .join(".local/state"),
            };
            let runtime_dir = match abs("XDG_RUNTIME_DIR")? {
                Some(p) => p.join("banger"),
                None => fallback_runtime_root.join(format!("banger-{uid}")),
            };
            Self {
                config_dir: config_base.join("banger"),
                state_dir: state_base.join("banger"),
                runtime_dir,
            }
        };
        if let Some(dir) = runtime_override {
            layout.runtime_dir = dir;
        }
        let sock = layout.socket_path();
        let len = sock.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(LayoutError::SocketPathTooLong { path: sock, len });
        }
        Ok(layout)
    }

    /// All three roots under one directory, as `BANGER_HOME` does.
    pub fn under(home: &Path) -> Self {
        Self {
            config_dir: home.join("config"),
            state_dir: home.join("state"),
            runtime_dir: home.join("run"),
        }
    }

    /// Creates the state dir (0700) if missing and checks it belongs to `euid` and is not
    /// writable by group or others.
    pub fn ensure_state_dir(&self, euid: u32) -> Result<File, PrivateError> {
        private::ensure_dir(DirRole::State, &self.state_dir, euid)
    }

    /// Creates the runtime dir (0700) if missing and checks it like the state dir: a
    /// `/tmp/banger-UID` made by another user is refused.
    pub fn ensure_runtime_dir(&self, euid: u32) -> Result<File, PrivateError> {
        private::ensure_dir(DirRole::Runtime, &self.runtime_dir, euid)
    }

    /// Checks the dirs that exist (config, state, runtime) without creating any.
    pub fn check_existing(&self, euid: u32) -> Result<(), PrivateError> {
        for (role, dir) in self.dirs() {
            private::check_existing_dir(role, dir, euid)?;
        }
        Ok(())
    }

    /// The three roots with their roles.
    pub fn dirs(&self) -> [(DirRole, &Path); 3] {
        [
            (DirRole::Config, &self.config_dir),
            (DirRole::State, &self.state_dir),
            (DirRole::Runtime, &self.runtime_dir),
        ]
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("banger.db")
    }
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("bangerd.log")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }
    /// Held (flock) by the one running daemon of this layout.
    pub fn lock_path(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.lock")
    }
    /// The managed SSH key pair's private dir.
    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }
    /// banger's own known_hosts: the guests' host keys by name and address.
    pub fn known_hosts(&self) -> PathBuf {
        self.ssh_dir().join("known_hosts")
    }
    /// The `Host NAME.vm` / `HostName IP` stanzas of the running VMs, included by the
    /// managed block of the owner's `~/.ssh/config`.
    pub fn ssh_hosts(&self) -> PathBuf {
        self.ssh_dir().join("hosts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn banger_home_moves_everything() {
        let l = Layout::resolve(
            env(&[
                ("BANGER_HOME", "/tmp/bh"),
                ("HOME", "/home/u"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ]),
            1000,
        )
        .unwrap();
        assert_eq!(l.config_dir, PathBuf::from("/tmp/bh/config"));
        assert_eq!(l.state_dir, PathBuf::from("/tmp/bh/state"));
        assert_eq!(l.runtime_dir, PathBuf::from("/tmp/bh/run"));
        assert_eq!(l.socket_path(), PathBuf::from("/tmp/bh/run/bangerd.sock"));
    }

    #[test]
    fn xdg_defaults() {
        let l = Layout::resolve(
            env(&[("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "/run/user/1000")]),
            1000,
        )
        .unwrap();
        assert_eq!(l.config_dir, PathBuf::from("/home/u/.config/banger"));
        assert_eq!(l.state_dir, PathBuf::from("/home/u/.local/state/banger"));
        assert_eq!(l.runtime_dir, PathBuf::from("/run/user/1000/banger"));
        let l = Layout::resolve(
            env(&[
                ("HOME", "/home/u"),
                ("XDG_CONFIG_HOME", "/c"),
                ("XDG_STATE_HOME", "/s"),
            ]),
            7,
        )
        .unwrap();
        assert_eq!(l.config_dir, PathBuf::from("/c/banger"));
        assert_eq!(l.state_dir, PathBuf::from("/s/banger"));
        assert_eq!(l.runtime_dir, PathBuf::from("/tmp/banger-7"));
    }

    #[test]
    fn banger_runtime_dir_moves_the_runtime_dir_alone() {
        for base in [vec![("BANGER_HOME", "/tmp/bh")], vec![("HOME", "/home/u")]] {
            let mut pairs = base.clone();
            pairs.push(("BANGER_RUNTIME_DIR", SYSTEM_DAEMON_RUNTIME_DIR));
            let moved = Layout::resolve(env(&pairs), 1000).unwrap();
            let plain = Layout::resolve(env(&base), 1000).unwrap();
            assert_eq!(
                moved.socket_path(),
                Path::new("/run/banger/bangerd/bangerd.sock")
            );
            assert_eq!(
                (moved.config_dir, moved.state_dir),
                (plain.config_dir, plain.state_dir)
            );
        }
        assert!(matches!(
            Layout::resolve(env(&[("HOME", "/h"), ("BANGER_RUNTIME_DIR", "run")]), 0),
            Err(LayoutError::NotAbsolute {
                var: "BANGER_RUNTIME_DIR",
                ..
            })
        ));
    }

    #[test]
    fn fallback_runtime_root_is_injectable() {
        let l =
            Layout::resolve_in(env(&[("HOME", "/home/u")]), 42, Path::new("/private/t")).unwrap();
        assert_eq!(l.runtime_dir, PathBuf::from("/private/t/banger-42"));
    }

    #[test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    fn adversarial_squatted_tmp_fallback_is_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            eprintln!("skipped: needs root to make a directory owned by another user");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let e = env(&[("HOME", home.to_str().unwrap())]);
        let l = Layout::resolve_in(&e, euid, tmp.path()).unwrap();
        // Another user got there first: /tmp/banger-0 exists, theirs, 0777, with a planted
        // symlink where the lock goes.
        let squat = tmp.path().join(format!("banger-{euid}"));
        std::fs::create_dir(&squat).unwrap();
        std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).unwrap();
        let canary = tmp.path().join("canary");
        std::fs::write(&canary, "precious").unwrap();
        std::os::unix::fs::symlink(&canary, squat.join("bangerd.lock")).unwrap();
        std::os::unix::fs::lchown(&squat, Some(65534), Some(65534)).unwrap();
        let err = l.ensure_runtime_dir(euid).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "runtime dir {} is owned by uid 65534",
                squat.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("mode 0777") && msg.contains("XDG_RUNTIME_DIR"),
            "{msg}"
        );
        assert!(l.check_existing(euid).is_err());
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious");
        assert_eq!(std::fs::metadata(&squat).unwrap().uid(), 65534);
        // The state dir is ours and gets created 0700; the squatted one is left alone.
        l.ensure_state_dir(euid).unwrap();
        assert_eq!(
            std::fs::metadata(&l.state_dir).unwrap().mode() & 0o777,
            0o700
        );
        // Once the squatter's dir is gone, banger makes its own.
        std::fs::remove_dir_all(&squat).unwrap();
        l.ensure_runtime_dir(euid).unwrap();
        let m = std::fs::symlink_metadata(&squat).unwrap();
        assert!(m.is_dir() && m.uid() == euid && m.mode() & 0o777 == 0o700);
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(
            Layout::resolve(env(&[]), 0),
            Err(LayoutError::NoHome),
            "no HOME and no BANGER_HOME"
        );
        assert!(matches!(
            Layout::resolve(env(&[("BANGER_HOME", "rel/dir")]), 0),
            Err(LayoutError::NotAbsolute {
                var: "BANGER_HOME",
                ..
            })
        ));
        let long = format!("/{}", "x".repeat(120));
        assert!(matches!(
            Layout::resolve(env(&[("BANGER_HOME", &long)]), 0),
            Err(LayoutError::SocketPathTooLong { .. })
        ));
    }
}
