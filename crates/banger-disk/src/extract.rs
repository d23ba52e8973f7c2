//! Copying one directory of an untrusted ext4 image to the host, without letting the
//! image's names act on the host.
//!
//! # Why a reader of our own, and not `debugfs rdump`
//!
//! `debugfs rdump` (what work seeds used to be made with) builds host paths from the
//! image's directory entries and opens them with plain `open(2)`: an entry whose name
//! contains `/` or is `..` is written outside the dump directory, and a symlink followed
//! by a second entry of the same name makes it write through the symlink -- as root,
//! onto any host file. Building the seed inside ext4 with debugfs write commands would
//! still need the file data staged on the host, so the tree is copied to the host here,
//! but by a reader that never lets the image choose a host path:
//!
//! - the image is read with the pure-Rust, read-only [`ext4_view`] (no tool resolves
//!   anything); every name is checked by this module regardless of what that crate
//!   already refuses: no `/`, no NUL, not empty, not `.` or `..` (besides each
//!   directory's own first `.` and `..`, which are skipped), no duplicate within a
//!   directory, valid UTF-8 without newline or carriage return (debugfs must be able to
//!   name it afterwards), and an entry type agreeing with its inode;
//! - everything is written below a fresh private (0700) directory, each entry relative
//!   to a directory file descriptor this module opened itself (`openat`/`mkdirat`/
//!   `symlinkat`), files with `O_CREAT | O_EXCL | O_NOFOLLOW`, directories reopened with
//!   `O_DIRECTORY | O_NOFOLLOW`; a symlink is created as a symlink and never followed,
//!   so nothing outside the private directory can be reached or overwritten;
//! - the walk is bounded ([`Limits`]): total apparent file size (a huge sparse file is
//!   refused before any byte of it is read), number of entries and depth (a directory
//!   cycle made by crafted entries ends at the depth limit); holes are kept as holes;
//! - device nodes, fifos and sockets are skipped, as `rdump` did.
//!
//! Host files and directories get private modes (0600/0700); the image's owners and
//! modes are returned so the caller re-applies them inside the new filesystem.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use ext4_view::{Ext4, Ext4Error, FileType};
use rustix::fs::{Mode, OFlags};

use crate::DiskError;
use crate::debugfs::FileKind;

/// Bounds on what one extraction may copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Total apparent size of the regular files, in bytes.
    pub(crate) max_bytes: u64,
    /// Number of entries (files, directories, symlinks, skipped special files).
    pub(crate) max_entries: usize,
    /// Directory depth below the extracted directory.
    pub(crate) max_depth: usize,
}

/// The owner, group, permission bits and type of one extracted entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owned {
    pub(crate) kind: FileKind,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

const CHUNK: usize = 1 << 16;

struct Walk<'a> {
    fs: Ext4,
    image: &'a Path,
    limits: Limits,
    bytes: u64,
    entries: usize,
    out: BTreeMap<String, Owned>,
}

/// Copies the directory `guest_dir` (absolute, already normalised) of `image` to the new
/// directory `dest` (created with mode 0700; it must not exist). Returns `None` when
/// `guest_dir` does not exist, else the metadata of every copied entry keyed by its path
/// relative to `guest_dir` (`/.bashrc`). On failure `dest` may hold a partial copy: the
/// caller owns and removes it.
pub(crate) fn extract_dir(
    image: &Path,
    guest_dir: &str,
    dest: &Path,
    limits: Limits,
) -> Result<Option<BTreeMap<String, Owned>>, DiskError> {
    let read_err = |path: &str| {
        let path = path.to_string();
        move |source: Ext4Error| DiskError::Ext4Read {
            image: image.to_path_buf(),
            path,
            source,
        }
    };
    let fs = Ext4::load_from_path(image).map_err(read_err("/"))?;
    let meta = match fs.symlink_metadata(guest_dir) {
        Ok(m) => m,
        Err(Ext4Error::NotFound) => return Ok(None),
        Err(e) => return Err(read_err(guest_dir)(e)),
    };
    if !meta.is_dir() {
        return Err(DiskError::WrongType {
            image: image.to_path_buf(),
            path: guest_dir.to_string(),
            found: kind_of(meta.file_type()),
            expected: FileKind::Directory,
        });
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(DiskError::io(dest, "create"))?;
    let top = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| DiskError::io(dest, "open")(e.into()))?;
    let mut walk = Walk {
        fs,
        image,
        limits,
        bytes: 0,
        entries: 0,
        out: BTreeMap::new(),
    };
    walk.dir(guest_dir, "", &top, 0)?;
    Ok(Some(walk.out))
}

fn kind_of(t: FileType) -> FileKind {
    match t {
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        _ => FileKind::Regular,
    }
}

/// Why a name cannot be used, if it cannot (`.` and `..` are the caller's business).
pub(crate) fn name_problem(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name.contains(&b'/') {
        Some("a name containing '/'")
    } else if name.contains(&0) {
        Some("a name containing a NUL byte")
    } else if name.contains(&b'\n') || name.contains(&b'\r') {
        Some("a name containing a newline or carriage return")
    } else if std::str::from_utf8(name).is_err() {
        Some("a name that is not valid UTF-8")
    } else {
        None
    }
}

impl Walk<'_> {
    fn unsafe_entry(&self, path: &str, reason: impl Into<String>) -> DiskError {
        DiskError::UnsafeEntry {
            image: self.image.to_path_buf(),
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn read_err(&self, path: &str, source: Ext4Error) -> DiskError {
        DiskError::Ext4Read {
            image: self.image.to_path_buf(),
            path: path.to_string(),
            source,
        }
    }

    /// Copies the image directory `guest` (relative path `rel` in the output) into the
    /// host directory `fd`.
    fn dir(&mut self, guest: &str, rel: &str, fd: &OwnedFd, depth: usize) -> Result<(), DiskError> {
        if depth > self.limits.max_depth {
            return Err(self.unsafe_entry(
                guest,
                format!(
                    "directories nested deeper than {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        let listing = self
            .fs
            .read_dir(guest)
            .map_err(|e| self.read_err(guest, e))?;
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut children = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| self.read_err(guest, e))?;
            let name = entry.file_name().as_ref().to_vec();
            let shown = format!("{guest}/{}", String::from_utf8_lossy(&name));
            if !seen.insert(name.clone()) {
                return Err(self.unsafe_entry(&shown, "a duplicate name in its directory"));
            }
            if name == b"." || name == b".." {
                continue;
            }
            if let Some(problem) = name_problem(&name) {
                return Err(self.unsafe_entry(&shown, problem));
            }
            let meta = entry.metadata().map_err(|e| self.read_err(&shown, e))?;
            let listed = entry.file_type().map_err(|e| self.read_err(&shown, e))?;
            if listed != meta.file_type() {
                return Err(self.unsafe_entry(
                    &shown,
                    format!(
                        "its directory entry says {} but its inode is a {}",
                        kind_of(listed),
                        kind_of(meta.file_type())
                    ),
                ));
            }
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(self.unsafe_entry(
                    &shown,
                    format!("more than {} entries", self.limits.max_entries),
                ));
            }
            children.push((name, meta));
        }
        for (name, meta) in children {
            // Checked above: UTF-8 without '/'.
            let name = String::from_utf8(name).unwrap_or_default();
            let child_guest = format!("{guest}/{name}");
            let child_rel = format!("{rel}/{name}");
            let kind = kind_of(meta.file_type());
            let io = |op: &'static str| {
                let path = child_guest.clone();
                move |e: rustix::io::Errno| DiskError::Io {
                    path: format!("(copy of {path})").into(),
                    op,
                    source: e.into(),
                }
            };
            match kind {
                FileKind::Directory => {
                    rustix::fs::mkdirat(fd, name.as_str(), Mode::from_raw_mode(0o700))
                        .map_err(io("create the directory"))?;
                    let sub = rustix::fs::openat(
                        fd,
                        name.as_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(io("open the directory"))?;
                    self.dir(&child_guest, &child_rel, &sub, depth + 1)?;
                }
                FileKind::Symlink => {
                    let target = self
                        .fs
                        .read_link(child_guest.as_str())
                        .map_err(|e| self.read_err(&child_guest, e))?;
                    rustix::fs::symlinkat(target.as_ref(), fd, name.as_str())
                        .map_err(io("create the symlink"))?;
                }
                FileKind::Regular => {
                    self.bytes = self.bytes.saturating_add(meta.len());
                    if self.bytes > self.limits.max_bytes {
                        return Err(self.unsafe_entry(
                            &child_guest,
                            format!(
                                "the files add up to more than {} bytes ({} bytes apparent size)",
                                self.limits.max_bytes,
                                meta.len()
                            ),
                        ));
                    }
                    let out = rustix::fs::openat(
                        fd,
                        name.as_str(),
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(io("create the file"))?;
                    self.copy_file(&child_guest, out, meta.len())?;
                }
                // Device nodes, fifos and sockets are not copied.
                _ => continue,
            }
            self.out.insert(
                child_rel,
                Owned {
                    kind,
                    mode: u32::from(meta.mode()),
                    uid: meta.uid(),
                    gid: meta.gid(),
                },
            );
        }
        Ok(())
    }

    /// Copies the image file `guest` (of `len` bytes) to the new host file `out`, keeping
    /// all-zero chunks as holes.
    fn copy_file(&self, guest: &str, out: OwnedFd, len: u64) -> Result<(), DiskError> {
        let mut src = self.fs.open(guest).map_err(|e| self.read_err(guest, e))?;
        let mut dst = File::from(out);
        let host = || format!("(copy of {guest})");
        let mut buf = vec![0u8; CHUNK];
        let mut copied = 0u64;
        loop {
            let n = src
                .read(&mut buf)
                .map_err(DiskError::io(host(), "read the image file for"))?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > len {
                return Err(self.unsafe_entry(guest, "more data than its size says"));
            }
            if buf[..n].iter().all(|b| *b == 0) {
                dst.seek(SeekFrom::Current(n as i64))
                    .map_err(DiskError::io(host(), "seek in"))?;
            } else {
                dst.write_all(&buf[..n])
                    .map_err(DiskError::io(host(), "write"))?;
            }
        }
        dst.set_len(copied)
            .map_err(DiskError::io(host(), "set the length of"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_used_are_named() {
        assert_eq!(name_problem(b"a/b"), Some("a name containing '/'"));
        assert_eq!(name_problem(b"a\0b"), Some("a name containing a NUL byte"));
        assert_eq!(name_problem(b""), Some("an empty name"));
        assert!(name_problem(b"a\nb").is_some());
        assert!(name_problem(b"\xff").is_some());
        assert_eq!(name_problem(b".bashrc"), None);
        assert_eq!(name_problem(b"with \"quote\" and space"), None);
    }
}
