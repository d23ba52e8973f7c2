//! Copying disk images cheaply: a reflink when the filesystem can share extents
//! (btrfs, XFS...), otherwise a sparse copy that never writes a block of zeros.
//!
//! The sparse copy walks the source's data extents with `lseek(SEEK_DATA/SEEK_HOLE)`
//! (holes are never read), reads each extent in 64 KiB chunks and writes only the 4 KiB
//! blocks that are not all zeros, so zeros written as data in the source become holes in
//! the copy. The destination is then exactly as long as the source.
//!
//! Copies are written to `<dst>.tmp` and renamed over `dst` when complete, so a failed
//! copy never leaves a partial `dst` behind.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::DiskError;

/// How a file was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    /// The copy shares the source's extents (`FICLONE`): instant, no space used until written.
    Reflink,
    /// Data extents were copied, skipping holes and zero blocks.
    Sparse,
}

/// Size of a read from the source.
const CHUNK: usize = 64 * 1024;
/// Granularity of the zero check: a block that is all zeros is never written.
const BLOCK: usize = 4096;

/// Copies `src` to `dst` (replacing it), by reflink when the filesystem supports it and by
/// sparse copy otherwise. The copy gets the source's permission bits.
pub fn clone_file(src: &Path, dst: &Path) -> Result<CloneKind, DiskError> {
    let tmp = tmp_path(dst);
    let result = clone_into(src, &tmp).and_then(|kind| {
        fs::rename(&tmp, dst).map_err(DiskError::io(dst, "rename the finished copy to"))?;
        Ok(kind)
    });
    if result.is_err() {
        // Best effort: the copy failed, and a leftover temporary file is only clutter.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `<path>.tmp`: where a copy or a grow is prepared before it is renamed into place.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// Copies `src` into `dst` (created or truncated), flushed to disk. On error `dst` may be
/// left partial: callers write to a temporary path.
pub(crate) fn clone_into(src: &Path, dst: &Path) -> Result<CloneKind, DiskError> {
    let src_file = File::open(src).map_err(DiskError::io(src, "open"))?;
    let meta = src_file.metadata().map_err(DiskError::io(src, "stat"))?;
    if !meta.is_file() {
        return Err(DiskError::invalid(
            "copy source",
            src.display().to_string(),
            "not a regular file",
        ));
    }
    let perm = meta.permissions().mode() & 0o7777;
    let dst_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(perm)
        .open(dst)
        .map_err(DiskError::io(dst, "create"))?;
    dst_file
        .set_permissions(fs::Permissions::from_mode(perm))
        .map_err(DiskError::io(dst, "set the permissions of"))?;

    let kind = if try_reflink(&src_file, &dst_file).map_err(DiskError::io(dst, "reflink into"))? {
        CloneKind::Reflink
    } else {
        sparse_copy(&src_file, src, &dst_file, dst, meta.len())?;
        CloneKind::Sparse
    };
    dst_file.sync_all().map_err(DiskError::io(dst, "flush"))?;
    tracing::debug!(src = %src.display(), dst = %dst.display(), ?kind, "copied");
    Ok(kind)
}

/// Tries `FICLONE`; `Ok(false)` when the filesystem (or the pair of filesystems) cannot.
fn try_reflink(src: &File, dst: &File) -> io::Result<bool> {
    // SAFETY: FICLONE takes the source file descriptor as its integer argument and reads
    // no memory through it; both descriptors are open for the duration of the call
    // because the `File`s are borrowed.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY) => Ok(false),
        _ => Err(err),
    }
}

/// Copies the data of `src` (`len` bytes) into `dst`, leaving holes for holes and for
/// all-zero blocks; `dst` ends up `len` bytes long.
pub(crate) fn sparse_copy(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    len: u64,
) -> Result<(), DiskError> {
    dst.set_len(0)
        .and_then(|()| dst.set_len(len))
        .map_err(DiskError::io(dst_path, "set the length of"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = next_data_extent(src, pos, len)
            .map_err(DiskError::io(src_path, "find the data extents of"))?
        else {
            break;
        };
        copy_range(src, src_path, dst, dst_path, start, end, &mut buf)?;
        pos = end;
    }
    Ok(())
}

/// The next data extent at or after `pos`, clipped to `len`; `None` when only a hole
/// remains. A filesystem without `SEEK_DATA` makes the rest of the file one extent.
fn next_data_extent(file: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let start = match seek(file, pos, libc::SEEK_DATA) {
        Ok(start) => start,
        Err(err) if err.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, len))),
        Err(err) => return Err(err),
    };
    if start >= len {
        return Ok(None);
    }
    let end = seek(file, start, libc::SEEK_HOLE)?.min(len);
    Ok(Some((start, end)))
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: lseek only reads its integer arguments; the descriptor stays open because
    // `file` is borrowed. Moving the file offset is harmless: all I/O here is positional.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u64)
}

/// Copies bytes `[start, end)` of `src` into `dst`, skipping 4 KiB blocks of zeros.
fn copy_range(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<(), DiskError> {
    let mut pos = start;
    while pos < end {
        // Align chunks to CHUNK boundaries so that zero checks line up with blocks.
        let chunk_end = ((pos / CHUNK as u64) + 1) * CHUNK as u64;
        let n = (chunk_end.min(end) - pos) as usize;
        let chunk = &mut buf[..n];
        src.read_exact_at(chunk, pos)
            .map_err(DiskError::io(src_path, "read"))?;
        for (offset, run) in non_zero_runs(chunk, pos) {
            dst.write_all_at(run, offset)
                .map_err(DiskError::io(dst_path, "write"))?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// The runs of consecutive blocks of `chunk` (which starts at file offset `base`) that are
/// not all zeros, with their file offsets. Blocks are aligned to file offsets.
fn non_zero_runs(chunk: &[u8], base: u64) -> Vec<(u64, &[u8])> {
    let mut runs = Vec::new();
    let mut run_start: Option<usize> = None;
    let mut i = 0;
    while i < chunk.len() {
        let block_end =
            (((base as usize + i) / BLOCK + 1) * BLOCK - base as usize).min(chunk.len());
        let zero = chunk[i..block_end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(s)) => {
                runs.push((base + s as u64, &chunk[s..i]));
                run_start = None;
            }
            _ => {}
        }
        i = block_end;
    }
    if let Some(s) = run_start {
        runs.push((base + s as u64, &chunk[s..]));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn non_zero_runs_skip_zero_blocks_and_coalesce() {
        let mut chunk = vec![0u8; 4 * BLOCK];
        chunk[10] = 1; // block 0
        chunk[BLOCK + 5] = 2; // block 1
        chunk[3 * BLOCK + 7] = 3; // block 3
        let runs = non_zero_runs(&chunk, 8 * BLOCK as u64);
        let spans: Vec<(u64, usize)> = runs.iter().map(|(o, r)| (*o, r.len())).collect();
        assert_eq!(
            spans,
            vec![(8 * BLOCK as u64, 2 * BLOCK), (11 * BLOCK as u64, BLOCK)]
        );
        assert!(non_zero_runs(&[0u8; 100], 0).is_empty());
    }

    #[test]
    fn non_zero_runs_align_blocks_to_file_offsets() {
        // A chunk starting mid-block: the first block is short.
        let mut chunk = vec![0u8; BLOCK + 100];
        chunk[BLOCK + 50] = 9; // in the block starting at file offset 2*BLOCK
        // Bytes [0, 100) end block 1, bytes [100, 100 + BLOCK) are block 2.
        let runs = non_zero_runs(&chunk, 2 * BLOCK as u64 - 100);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0, 2 * BLOCK as u64);
        assert_eq!(runs[0].1.len(), BLOCK);
    }

    #[test]
    fn sparse_copy_writes_no_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let dst_path = dir.path().join("dst");
        let len = 64 * 1024 * 1024 + 123;
        let src = File::create(&src_path).unwrap();
        src.set_len(len).unwrap();
        src.write_all_at(&[7u8; 10_000], 1024 * 1024).unwrap();
        // Zeros written as data: allocated in the source, a hole in the copy.
        src.write_all_at(&vec![0u8; 1024 * 1024], 8 * 1024 * 1024)
            .unwrap();
        src.write_all_at(b"tail", len - 4).unwrap();
        src.sync_all().unwrap();
        drop(src);

        let src = File::open(&src_path).unwrap();
        let dst = File::create(&dst_path).unwrap();
        sparse_copy(&src, &src_path, &dst, &dst_path, len).unwrap();
        drop(dst);

        assert_eq!(fs::read(&src_path).unwrap(), fs::read(&dst_path).unwrap());
        let meta = fs::metadata(&dst_path).unwrap();
        assert_eq!(meta.len(), len);
        // 10_000 bytes spanning offsets 1 MiB.. -> 3 blocks; the tail -> 1 block. Allow
        // for filesystem metadata blocks (extent tree) on top of 4 data blocks.
        let allocated = meta.blocks() * 512;
        assert!(allocated <= 8 * BLOCK as u64, "allocated {allocated} bytes");
    }

    #[test]
    fn tmp_path_appends_suffix() {
        assert_eq!(
            tmp_path(Path::new("/a/b/work.ext4")),
            PathBuf::from("/a/b/work.ext4.tmp")
        );
    }
}
