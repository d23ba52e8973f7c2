//! Private directories and files: banger's own dirs belong to the user, or banger refuses them.
//!
//! Every directory banger keeps state in (config, state, runtime, and the ones below them) must
//! be a real directory, owned by the effective uid, and not writable by group or others: a
//! runtime dir under the shared `/tmp` that another user made first ("squatted") would let that
//! user plant symlinks where banger creates its lock and socket, or replace the socket.
//!
//! - [`ensure_dir`] creates a missing dir with mode 0700 (`mkdir` with the mode, no
//!   check-then-create race: an existing entry is never trusted by name) and then checks it
//!   through a descriptor opened with `O_DIRECTORY | O_NOFOLLOW`, so a symlink is never followed.
//! - [`check_existing_dir`] does the same checks without creating anything (doctor, the CLI
//!   before it talks to a socket).
//! - [`open_file`] opens a file banger writes in such a dir with `O_NOFOLLOW` (and `O_EXCL`
//!   when it must be new), mode 0600, and checks the opened file: a regular file, ours, with one
//!   link (a hard link to another file is refused).
//! - [`check_socket`] tells whether a socket path is absent or a socket we own, without
//!   following a symlink.
//!
//! Every function takes the effective uid from its caller; nothing here reads the environment.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Which of banger's directories a path is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRole {
    Config,
    State,
    Runtime,
    /// A directory below one of the roots (`ssh`, `vms/<id>`, ...).
    Sub,
}

impl std::fmt::Display for DirRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Config => "config dir",
            Self::State => "state dir",
            Self::Runtime => "runtime dir",
            Self::Sub => "directory",
        })
    }
}

/// What kind of file system object a path turned out to be.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_fifo() {
        "a FIFO"
    } else {
        "a device or other special file"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error("cannot create {role} {path}")]
    Create {
        role: DirRole,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{role} {path} is {kind}, not a directory; banger never follows links for its own dirs: remove it (rm {path}) and let banger create the directory"
    )]
    NotDir {
        role: DirRole,
        path: PathBuf,
        kind: &'static str,
    },
    #[error(
        "{role} {path} is owned by uid {owner} (mode {mode:04o}), not by you (uid {euid}): another user may have created it to intercept banger; remove it (as root: rm -rf {path}) or choose another location (BANGER_HOME, XDG_RUNTIME_DIR)"
    )]
    NotOwned {
        role: DirRole,
        path: PathBuf,
        owner: u32,
        euid: u32,
        mode: u32,
    },
    #[error(
        "{role} {path} (owner uid {owner}) has mode {mode:04o}, writable by group or others; fix it with: chmod 700 {path}"
    )]
    Writable {
        role: DirRole,
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error(
        "{path} is {kind}, not a regular file; banger never writes through links: remove it (rm {path})"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is owned by uid {owner}, not by you (uid {euid}); remove it (rm {path})")]
    FileNotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "{path} has {links} hard links; banger only writes files that have one: remove it (rm {path})"
    )]
    Linked { path: PathBuf, links: u64 },
    #[error("{path} is {kind}, not the daemon's socket; remove it (rm {path})")]
    NotSocket { path: PathBuf, kind: &'static str },
    #[error(
        "socket {path} is owned by uid {owner}, not by you (uid {euid}): it is not your daemon's; remove it (as root: rm {path})"
    )]
    SocketNotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
}

/// Checks an opened directory's metadata against the rules.
fn check_dir_meta(
    role: DirRole,
    path: &Path,
    meta: &std::fs::Metadata,
    euid: u32,
) -> Result<(), PrivateError> {
    if !meta.is_dir() {
        return Err(PrivateError::NotDir {
            role,
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != euid {
        return Err(PrivateError::NotOwned {
            role,
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
            mode,
        });
    }
    if mode & 0o022 != 0 {
        return Err(PrivateError::Writable {
            role,
            path: path.to_path_buf(),
            owner: meta.uid(),
            mode,
        });
    }
    Ok(())
}

/// Opens `path` as a directory without following a symlink in its last component.
fn open_dir_nofollow(role: DirRole, path: &Path) -> Result<File, PrivateError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match std::fs::symlink_metadata(path) {
            // ELOOP (a symlink) or ENOTDIR: say what is there instead of the errno.
            Ok(m) if !m.is_dir() => PrivateError::NotDir {
                role,
                path: path.to_path_buf(),
                kind: kind_of(m.file_type()),
            },
            _ => PrivateError::Open {
                path: path.to_path_buf(),
                source,
            },
        })
}

/// Opens `path` without following a symlink and checks the opened directory.
fn open_checked_dir(
    role: DirRole,
    path: &Path,
    euid: u32,
) -> Result<(File, std::fs::Metadata), PrivateError> {
    let dir = open_dir_nofollow(role, path)?;
    let meta = dir.metadata().map_err(|source| PrivateError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    check_dir_meta(role, path, &meta, euid)?;
    Ok((dir, meta))
}

/// Creates `path` (mode 0700) if it is missing, and checks that it is a real directory owned
/// by `euid` and not writable by group or others. Missing parents are created with mode 0700
/// too. Returns the directory, opened (`O_DIRECTORY | O_NOFOLLOW`).
pub fn ensure_dir(role: DirRole, path: &Path, euid: u32) -> Result<File, PrivateError> {
    let create =
        |p: &Path, recursive: bool| DirBuilder::new().mode(0o700).recursive(recursive).create(p);
    let created = match create(path, false) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                create(parent, true).map_err(|source| PrivateError::Create {
                    role,
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            match create(path, false) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
                Err(source) => {
                    return Err(PrivateError::Create {
                        role,
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Err(source) => {
            return Err(PrivateError::Create {
                role,
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let (dir, meta) = open_checked_dir(role, path, euid)?;
    if created && meta.mode() & 0o777 != 0o700 {
        // The umask may have taken bits away; make it exactly 0700 (fchmod on our descriptor).
        dir.set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(|source| PrivateError::Create {
                role,
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(dir)
}

/// Checks an existing directory like [`ensure_dir`] without creating anything. `Ok(false)`
/// when nothing is at `path`.
pub fn check_existing_dir(role: DirRole, path: &Path, euid: u32) -> Result<bool, PrivateError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(PrivateError::Open {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(_) => {}
    }
    open_checked_dir(role, path, euid)?;
    Ok(true)
}

/// How [`open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Write-only, appending; created when missing (logs).
    Append,
    /// Read and write, created when missing, never truncated (the lock file).
    ReadWrite,
    /// Write-only, and the file must not exist yet (`O_EXCL`).
    CreateNew,
    /// Read-only; the file must exist.
    Read,
}

/// Opens a file banger owns in one of its private dirs: never through a symlink
/// (`O_NOFOLLOW`), created with mode 0600, and checked after opening (a regular file owned by
/// `euid` with a single link), so what was opened is what was checked.
pub fn open_file(path: &Path, how: FileMode, euid: u32) -> Result<File, PrivateError> {
    let mut o = OpenOptions::new();
    match how {
        FileMode::Append => o.append(true).create(true),
        FileMode::ReadWrite => o.read(true).write(true).create(true).truncate(false),
        FileMode::CreateNew => o.write(true).create_new(true),
        FileMode::Read => o.read(true),
    };
    // O_NONBLOCK: never block opening a FIFO someone left at the path (it is refused below).
    o.mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK);
    let file = o
        .open(path)
        .map_err(|source| match std::fs::symlink_metadata(path) {
            Ok(m) if !m.is_file() => PrivateError::NotRegular {
                path: path.to_path_buf(),
                kind: kind_of(m.file_type()),
            },
            _ => PrivateError::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| PrivateError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PrivateError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    if meta.uid() != euid {
        return Err(PrivateError::FileNotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    if meta.nlink() != 1 {
        return Err(PrivateError::Linked {
            path: path.to_path_buf(),
            links: meta.nlink(),
        });
    }
    Ok(file)
}

/// What is at a daemon socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    Absent,
    /// A socket owned by the caller (maybe live, maybe left by a dead daemon).
    Ours,
}

/// Looks at `path` without following a symlink: absent, or a socket owned by `euid`; anything
/// else (a symlink, a regular file, someone else's socket) is refused.
pub fn check_socket(path: &Path, euid: u32) -> Result<SocketState, PrivateError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(SocketState::Absent),
        Err(source) => {
            return Err(PrivateError::Open {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(PrivateError::NotSocket {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    if meta.uid() != euid {
        return Err(PrivateError::SocketNotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    Ok(SocketState::Ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    fn chown(path: &Path, uid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
    }

    fn root() -> bool {
        euid() == 0
    }

    #[test]
    fn creates_missing_dirs_0700_with_parents() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a/b/run");
        ensure_dir(DirRole::Runtime, &p, euid()).unwrap();
        for d in [t.path().join("a"), t.path().join("a/b"), p.clone()] {
            let m = std::fs::symlink_metadata(&d).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o777, 0o700, "{}", d.display());
        }
        // An existing private dir is accepted as is (0755 is not writable by others).
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(DirRole::Runtime, &p, euid()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o755);
    }

    #[test]
    fn adversarial_group_or_other_writable_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        for mode in [0o770, 0o707, 0o1777, 0o720] {
            let p = t.path().join(format!("state{mode:o}"));
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("canary"), "x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = ensure_dir(DirRole::State, &p, euid()).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, PrivateError::Writable { .. }), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains("chmod 700") && msg.contains(&p.display().to_string()));
            // Refused, not repaired behind the user's back.
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, mode);
            assert_eq!(std::fs::read_to_string(p.join("canary")).unwrap(), "x");
            assert!(check_existing_dir(DirRole::State, &p, euid()).is_err());
        }
    }

    #[test]
    fn adversarial_symlinked_dir_is_refused_and_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = t.path().join("run");
        symlink(&target, &link).unwrap();
        let err = ensure_dir(DirRole::Runtime, &link, euid()).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a symbolic link, not a directory"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        // A file where the dir should be.
        let file = t.path().join("state");
        std::fs::write(&file, "canary").unwrap();
        let err = ensure_dir(DirRole::State, &file, euid()).unwrap_err();
        assert!(err.to_string().contains("is a regular file"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "canary");
    }

    #[test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    fn adversarial_dir_squatted_by_another_uid_is_refused() {
        if !root() {
            eprintln!("skipped: needs root to chown a directory to another user");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("banger-0");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(p.join("canary"), "x").unwrap();
        chown(&p, 65534);
        let err = ensure_dir(DirRole::Runtime, &p, euid()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("owned by uid 65534") && msg.contains("not by you (uid 0)"),
            "{msg}"
        );
        assert!(msg.contains("mode 0700") && msg.contains(&format!("rm -rf {}", p.display())));
        assert!(check_existing_dir(DirRole::Runtime, &p, 0).is_err());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.uid(), 65534, "left as it was");
        assert_eq!(std::fs::read_to_string(p.join("canary")).unwrap(), "x");
    }

    #[test]
    fn check_existing_dir_creates_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("absent");
        assert!(!check_existing_dir(DirRole::Config, &p, euid()).unwrap());
        assert!(!p.exists());
        std::fs::create_dir(&p).unwrap();
        assert!(check_existing_dir(DirRole::Config, &p, euid()).unwrap());
    }

    #[test]
    fn adversarial_symlinked_files_are_never_written_through() {
        let t = tempfile::tempdir().unwrap();
        let canary = t.path().join("canary");
        std::fs::write(&canary, "precious").unwrap();
        std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = t.path().join("bangerd.lock");
        symlink(&canary, &link).unwrap();
        for how in [
            FileMode::Append,
            FileMode::ReadWrite,
            FileMode::CreateNew,
            FileMode::Read,
        ] {
            let err = open_file(&link, how, euid()).unwrap_err();
            assert!(
                err.to_string()
                    .contains("is a symbolic link, not a regular file"),
                "{how:?}: {err}"
            );
        }
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious");
        assert_eq!(std::fs::metadata(&canary).unwrap().mode() & 0o777, 0o644);
        // A dangling symlink is not created through either.
        let dangling = t.path().join("bangerd.log");
        symlink(t.path().join("made-by-link"), &dangling).unwrap();
        assert!(open_file(&dangling, FileMode::Append, euid()).is_err());
        assert!(!t.path().join("made-by-link").exists());
    }

    #[test]
    fn adversarial_hard_link_fifo_and_foreign_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let canary = t.path().join("canary");
        std::fs::write(&canary, "precious").unwrap();
        let hard = t.path().join("bangerd.stderr");
        std::fs::hard_link(&canary, &hard).unwrap();
        let err = open_file(&hard, FileMode::Append, euid()).unwrap_err();
        assert!(err.to_string().contains("2 hard links"), "{err}");
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path; mkfifo only creates a file system node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = open_file(&fifo, FileMode::Append, euid()).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        if root() {
            let foreign = t.path().join("foreign.log");
            std::fs::write(&foreign, "theirs").unwrap();
            chown(&foreign, 65534);
            let err = open_file(&foreign, FileMode::Append, 0).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
            assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "theirs");
        }
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious");
    }

    #[test]
    fn new_files_are_0600_and_exclusive() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        open_file(&p, FileMode::CreateNew, euid()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let err = open_file(&p, FileMode::CreateNew, euid()).unwrap_err();
        assert!(matches!(err, PrivateError::Open { .. }), "{err}");
        open_file(&p, FileMode::Append, euid()).unwrap();
    }

    #[test]
    fn adversarial_socket_path_must_be_our_socket() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("bangerd.sock");
        assert_eq!(check_socket(&p, euid()).unwrap(), SocketState::Absent);
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert_eq!(check_socket(&p, euid()).unwrap(), SocketState::Ours);
        let link = t.path().join("link.sock");
        symlink(&p, &link).unwrap();
        let err = check_socket(&link, euid()).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a symbolic link, not the daemon's socket")
        );
        let file = t.path().join("file.sock");
        std::fs::write(&file, "x").unwrap();
        assert!(check_socket(&file, euid()).is_err());
        if root() {
            chown(&p, 65534);
            let err = check_socket(&p, 0).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
    }
}
