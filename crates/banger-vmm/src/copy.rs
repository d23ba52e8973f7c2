//! The default [`Vmm::copy_disk`](crate::Vmm::copy_disk): a disk file copied while its VM is
//! paused, by reflink where the file system shares extents, else sparsely
//! ([`banger_disk::copy::clone_file`]), on a blocking thread.

use std::path::Path;

use banger_disk::copy::CloneKind;

use crate::{DiskClone, VmmError};

/// Copies `src` to `dest` (replacing it); says how.
pub async fn copy_file(src: &Path, dest: &Path) -> Result<DiskClone, VmmError> {
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::CopyDisk {
        vm_id: dest.display().to_string(),
        src: src.to_path_buf(),
        dest: dest.to_path_buf(),
        source,
    };
    let (from, to) = (src.to_path_buf(), dest.to_path_buf());
    let copied = tokio::task::spawn_blocking(move || banger_disk::copy::clone_file(&from, &to))
        .await
        .map_err(|e| fail(Box::new(e)))?;
    match copied {
        Ok(CloneKind::Reflink) => Ok(DiskClone::Reflink),
        Ok(CloneKind::Sparse) => Ok(DiskClone::SparseCopy),
        Err(e) => Err(fail(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_has_the_contents_and_does_not_follow_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("disk"), dir.path().join("copy"));
        std::fs::write(&src, b"before").unwrap();
        let how = copy_file(&src, &dest).await.unwrap();
        assert!(matches!(how, DiskClone::Reflink | DiskClone::SparseCopy));
        std::fs::write(&src, b"after!").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"before");
        let err = copy_file(&dir.path().join("missing"), &dest)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
