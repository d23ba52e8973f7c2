//! The file endpoints' guest side ([`banger_agent_proto::files`] is the contract): read a
//! file (at most [`MAX_READ_BYTES`]), write one atomically, list a directory. Blocking: the
//! server runs them on the blocking pool. Every path must be absolute; the agent runs as root,
//! so what it may touch is the guest's business, not a path rule's.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_agent_proto::files::{
    DEFAULT_FILE_MODE, DirEntry, DirListing, EntryKind, FileContent, GuestPathError, ListDir,
    MAX_LIST_ENTRIES, MAX_READ_BYTES, MAX_WRITE_BYTES, ReadFile, WriteFile, Written,
    check_guest_path,
};

/// A file request the agent refuses or fails; [`FileError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Path(#[from] GuestPathError),
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is a directory, not a file", path.display())]
    IsDir { path: PathBuf },
    #[error("{} is not a directory", path.display())]
    NotDir { path: PathBuf },
    #[error("the parent directory {} does not exist (ask for create_parents)", path.display())]
    NoParent { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error("{bytes} bytes is more than the {MAX_WRITE_BYTES}-byte limit of one write")]
    TooLarge { bytes: usize },
    #[error("mode {mode:#o} is not a permission mode (at most 0o7777)")]
    BadMode { mode: u32 },
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// The HTTP status the agent answers with (see [`banger_agent_proto::files`]).
    pub fn status(&self) -> u16 {
        match self {
            Self::Path(_) | Self::IsDir { .. } | Self::NotDir { .. } | Self::NotRegular { .. } => {
                400
            }
            Self::TooLarge { .. } | Self::BadMode { .. } => 400,
            Self::NotFound { .. } => 404,
            Self::NoParent { .. } => 409,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => 404,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => 400,
            Self::Io { .. } => 500,
        }
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            FileError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            FileError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// `POST /files/read`: the file's first `max_bytes` (at most [`MAX_READ_BYTES`]).
pub fn read_file(req: &ReadFile) -> Result<FileContent, FileError> {
    check_guest_path(&req.path)?;
    let path = Path::new(&req.path);
    let mut file = fs::File::open(path).map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("stat", path))?;
    if meta.is_dir() {
        return Err(FileError::IsDir {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let limit = req.max_bytes.unwrap_or(MAX_READ_BYTES).min(MAX_READ_BYTES);
    let mut content = Vec::new();
    // One byte more than the limit tells a cut file from one of exactly that size, even when
    // the file grows while it is read.
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut content)
        .map_err(io_error("read", path))?;
    let truncated = content.len() as u64 > limit;
    content.truncate(limit as usize);
    Ok(FileContent {
        path: req.path.clone(),
        size: meta.len().max(content.len() as u64),
        mode: meta.mode() & 0o7777,
        content,
        truncated,
    })
}

/// `POST /files/write`: a temporary file next to the target, written, given its mode, synced,
/// then renamed over the target, so the file is replaced whole or not at all.
pub fn write_file(req: &WriteFile) -> Result<Written, FileError> {
    check_guest_path(&req.path)?;
    if req.content.len() > MAX_WRITE_BYTES {
        return Err(FileError::TooLarge {
            bytes: req.content.len(),
        });
    }
    if let Some(mode) = req.mode
        && mode > 0o7777
    {
        return Err(FileError::BadMode { mode });
    }
    let path = Path::new(&req.path);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(FileError::IsDir {
            path: path.to_path_buf(),
        });
    };
    let existing = match fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(FileError::IsDir {
                path: path.to_path_buf(),
            });
        }
        Ok(m) => Some(m),
        Err(_) => None,
    };
    match fs::metadata(parent) {
        Ok(m) if !m.is_dir() => {
            return Err(FileError::NotDir {
                path: parent.to_path_buf(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && req.create_parents => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_error("create directory", parent))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FileError::NoParent {
                path: parent.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(FileError::Io {
                what: "stat",
                path: parent.to_path_buf(),
                source,
            });
        }
    }
    let mode = req
        .mode
        .or(existing.map(|m| m.mode() & 0o7777))
        .unwrap_or(DEFAULT_FILE_MODE);
    let tmp = parent.join(format!(
        ".{}.banger-write-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        f.write_all(&req.content).map_err(io_error("write", &tmp))?;
        // Set after the write: the mode is the caller's, not reduced by the umask.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", &tmp))?;
        f.sync_all().map_err(io_error("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_error("rename the new file over", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    Ok(Written {
        path: req.path.clone(),
        bytes: req.content.len() as u64,
        mode,
    })
}

/// `POST /files/list`: the directory's entries by name (symlinks not followed), at most
/// [`MAX_LIST_ENTRIES`].
pub fn list_dir(req: &ListDir) -> Result<DirListing, FileError> {
    check_guest_path(&req.path)?;
    let path = Path::new(&req.path);
    let meta = fs::metadata(path).map_err(io_error("stat", path))?;
    if !meta.is_dir() {
        return Err(FileError::NotDir {
            path: path.to_path_buf(),
        });
    }
    let mut entries = Vec::new();
    for entry in fs::read_dir(path).map_err(io_error("list", path))? {
        let entry = entry.map_err(io_error("list", path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // An entry gone between the listing and its stat is left out.
        let Ok(m) = entry.path().symlink_metadata() else {
            continue;
        };
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        };
        entries.push(DirEntry {
            name,
            kind,
            size: m.len(),
            mode: m.mode() & 0o7777,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let truncated = entries.len() > MAX_LIST_ENTRIES;
    entries.truncate(MAX_LIST_ENTRIES);
    Ok(DirListing {
        path: req.path.clone(),
        entries,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: &Path) -> String {
        p.display().to_string()
    }

    fn write(
        path: &Path,
        content: &[u8],
        mode: Option<u32>,
        parents: bool,
    ) -> Result<Written, FileError> {
        write_file(&WriteFile {
            path: s(path),
            content: content.to_vec(),
            mode,
            create_parents: parents,
        })
    }

    #[test]
    fn a_written_file_reads_back_byte_for_byte_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a/b/c.bin");
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let w = write(&f, &bytes, Some(0o750), true).unwrap();
        assert_eq!((w.bytes, w.mode), (70_000, 0o750));
        let r = read_file(&ReadFile {
            path: s(&f),
            max_bytes: None,
        })
        .unwrap();
        assert_eq!(r.content, bytes);
        assert_eq!((r.size, r.mode, r.truncated), (70_000, 0o750, false));
        // The parents were made 0755, and no temporary file is left.
        let parent = fs::metadata(dir.path().join("a/b")).unwrap();
        assert_eq!(parent.mode() & 0o777, 0o755);
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c.bin"]);
    }

    #[test]
    fn a_rewrite_keeps_the_old_mode_unless_told_and_replaces_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        write(&f, b"one", Some(0o600), false).unwrap();
        let before = fs::metadata(&f).unwrap().ino();
        let w = write(&f, b"two", None, false).unwrap();
        assert_eq!(w.mode, 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"two");
        // Replaced by a rename, not rewritten in place: a reader of the old file never saw
        // half of the new one.
        assert_ne!(fs::metadata(&f).unwrap().ino(), before);
        let fresh = dir.path().join("fresh");
        assert_eq!(
            write(&fresh, b"", None, false).unwrap().mode,
            DEFAULT_FILE_MODE
        );
    }

    #[test]
    fn a_large_file_is_read_cut_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        fs::write(&f, vec![b'x'; 5000]).unwrap();
        let r = read_file(&ReadFile {
            path: s(&f),
            max_bytes: Some(100),
        })
        .unwrap();
        assert_eq!((r.content.len(), r.size, r.truncated), (100, 5000, true));
        // Exactly the limit is not a cut.
        let r = read_file(&ReadFile {
            path: s(&f),
            max_bytes: Some(5000),
        })
        .unwrap();
        assert!(!r.truncated);
        // No caller gets more than the agent's own cap.
        let huge = dir.path().join("huge");
        let file = fs::File::create(&huge).unwrap();
        file.set_len(MAX_READ_BYTES + 10).unwrap();
        let r = read_file(&ReadFile {
            path: s(&huge),
            max_bytes: Some(u64::MAX),
        })
        .unwrap();
        assert_eq!(r.content.len() as u64, MAX_READ_BYTES);
        assert!(r.truncated);
    }

    #[test]
    fn bad_requests_are_refused_with_their_status_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/x");
        let err = write(&missing, b"x", None, false).unwrap_err();
        assert_eq!(err.status(), 409, "{err}");
        assert!(err.to_string().contains("create_parents"), "{err}");
        assert!(!dir.path().join("nope").exists());

        let err = read_file(&ReadFile {
            path: "relative/x".into(),
            max_bytes: None,
        })
        .unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("is relative"), "{err}");

        let err = read_file(&ReadFile {
            path: s(&dir.path().join("gone")),
            max_bytes: None,
        })
        .unwrap_err();
        assert_eq!(err.status(), 404, "{err}");
        assert!(err.to_string().ends_with("gone does not exist"), "{err}");

        let err = read_file(&ReadFile {
            path: s(dir.path()),
            max_bytes: None,
        })
        .unwrap_err();
        assert_eq!(err.status(), 400, "{err}");

        let err = write(dir.path(), b"x", None, false).unwrap_err();
        assert!(matches!(err, FileError::IsDir { .. }), "{err}");

        let f = dir.path().join("f");
        let err = write(&f, &vec![0; MAX_WRITE_BYTES + 1], None, false).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { .. }), "{err}");
        let err = write(&f, b"x", Some(0o17777), false).unwrap_err();
        assert!(matches!(err, FileError::BadMode { .. }), "{err}");
        assert!(!f.exists());

        let err = list_dir(&ListDir { path: "tmp".into() }).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn a_listing_names_each_entry_by_kind_sorted_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.txt"), "hello").unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.path().join("c")).unwrap();
        let l = list_dir(&ListDir {
            path: s(dir.path()),
        })
        .unwrap();
        let got: Vec<(&str, EntryKind)> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("a", EntryKind::Dir),
                ("b.txt", EntryKind::File),
                ("c", EntryKind::Symlink)
            ]
        );
        assert_eq!(l.entries[1].size, 5);
        assert!(!l.truncated);
        let err = list_dir(&ListDir {
            path: s(&dir.path().join("b.txt")),
        })
        .unwrap_err();
        assert!(matches!(err, FileError::NotDir { .. }), "{err}");
    }
}
