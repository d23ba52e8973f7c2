//! Copy-on-write clones of raw disk files, which is all Firecracker takes: a reflink
//! (`FICLONE`) where the file system shares extents (btrfs, XFS), made in O(1) and using no
//! space until either side writes; else a sparse copy that copies only the data extents
//! (`SEEK_DATA`/`SEEK_HOLE`) and writes no block of zeros. Both are
//! [`banger_disk::copy::clone_file`]'s, written to a temporary file and renamed into place,
//! so a failed clone leaves no partial disk. The clone is then grown (sparsely) to the size
//! asked for.
//!
//! Not here: a device-mapper snapshot (`dm-snapshot` over a loop device of the template's
//! disk) for hosts whose file system has no reflinks, which needs root and so belongs behind
//! the privileged-operations seam; such a host gets a sparse copy.

use std::io;
use std::path::Path;

use banger_disk::{CloneKind, DiskError};

use crate::{DiskClone, VmmError};

/// Makes `dest` a clone of `base` of `size` bytes (at least `base`'s: a smaller `size`
/// leaves the clone as long as `base`); says how it was made.
pub async fn clone_raw(base: &Path, dest: &Path, size: u64) -> Result<DiskClone, VmmError> {
    let (b, d) = (base.to_path_buf(), dest.to_path_buf());
    let cloned = tokio::task::spawn_blocking(move || clone_blocking(&b, &d, size))
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
    cloned.map_err(|source| VmmError::CloneDisk {
        vm_id: dest.display().to_string(),
        base: base.to_path_buf(),
        dest: dest.to_path_buf(),
        source,
    })
}

fn clone_blocking(base: &Path, dest: &Path, size: u64) -> io::Result<DiskClone> {
    let kind = banger_disk::clone_file(base, dest).map_err(as_io)?;
    let file = std::fs::OpenOptions::new().write(true).open(dest)?;
    if file.metadata()?.len() < size {
        file.set_len(size)?;
    }
    Ok(match kind {
        CloneKind::Reflink => DiskClone::Reflink,
        CloneKind::Sparse => DiskClone::SparseCopy,
    })
}

/// A disk error as an I/O error of the same kind (a full disk stays a full disk), which
/// carries it as its message and source.
fn as_io(error: DiskError) -> io::Error {
    let kind = match &error {
        DiskError::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::*;

    const MIB: u64 = 1 << 20;

    /// The file system type of `dir`, as `stat -f` names it (`ext2/ext3` for ext4).
    fn fs_type(dir: &Path) -> String {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir)
            .output()
            .expect("stat -f");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[tokio::test]
    async fn without_reflinks_a_clone_is_a_sparse_equal_copy_grown_to_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.ext4");
        let file = std::fs::File::create(&base).unwrap();
        file.set_len(64 * MIB).unwrap();
        file.write_all_at(b"superblock", 1024).unwrap();
        file.write_all_at(&[7u8; 8192], 40 * MIB).unwrap();
        drop(file);
        let dest = dir.path().join("root.ext4");

        let how = clone_raw(&base, &dest, 128 * MIB).await.unwrap();
        let fs = fs_type(dir.path());
        if fs == "ext2/ext3" || fs == "tmpfs" {
            assert_eq!(how, DiskClone::SparseCopy, "{fs} has no reflinks");
        }
        let (a, b) = (std::fs::read(&base).unwrap(), std::fs::read(&dest).unwrap());
        assert_eq!(b.len() as u64, 128 * MIB, "grown to the size asked for");
        assert_eq!(a[..], b[..a.len()], "the template's bytes");
        assert!(b[a.len()..].iter().all(|&x| x == 0));
        let allocated = std::fs::metadata(&dest).unwrap().blocks() * 512;
        assert!(allocated <= MIB, "sparse: {allocated} bytes allocated");
        assert!(!dir.path().join("root.ext4.tmp").exists());

        // The clone is its own: writing it leaves the template as it was.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&dest)
            .unwrap()
            .write_all_at(b"changed", 1024)
            .unwrap();
        assert_eq!(std::fs::read(&base).unwrap(), a);

        // Never shrunk below the template.
        let how_small = clone_raw(&base, &dest, 1).await.unwrap();
        assert_eq!(how_small, how);
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 64 * MIB);
    }

    #[tokio::test]
    async fn a_missing_template_disk_is_an_error_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("gone.ext4");
        let dest = dir.path().join("root.ext4");
        let err = clone_raw(&base, &dest, MIB).await.unwrap_err();
        assert!(
            matches!(&err, VmmError::CloneDisk { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
        let text = crate::error::chain(&err);
        assert!(
            text.contains("gone.ext4") && text.contains("root.ext4"),
            "{text}"
        );
        assert!(!dest.exists());
    }
}
