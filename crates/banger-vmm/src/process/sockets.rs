//! Stale sockets: a VMM's run directory holds only its sockets, which a VMM that died leaves
//! behind and Firecracker refuses to start over; [`cleanup_sockets`] removes them.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Sockets that could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cannot list {}", dir.display())]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error("cannot remove the socket {}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

/// Removes every Unix socket directly in `run_dir` (the VMM's API, vsock and agent sockets;
/// the directory belongs to one VM's VMM) and returns the paths removed. A missing directory
/// has nothing to remove. Other files are left alone.
pub fn cleanup_sockets(run_dir: &Path) -> Result<Vec<PathBuf>, CleanupError> {
    let entries = match fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CleanupError::ReadDir {
                dir: run_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CleanupError::ReadDir {
            dir: run_dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_socket() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CleanupError::Remove { path, source }),
        }
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(CleanupError::Remove { path, source }),
        }
    }
    removed.sort();
    Ok(removed)
}
