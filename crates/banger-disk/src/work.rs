//! Work disks: the per-VM ext4 disk mounted at `/root` in the guest.
//!
//! Each image gets one "work seed" ([`make_work_seed`]): an ext4 holding what the image
//! has under `/root`, at the root of the filesystem. Each VM's work disk is a clone of the
//! seed grown to the requested size ([`clone_work_disk`]): a reflink or sparse copy plus
//! a resize, much faster than building a filesystem per VM.

use std::fs;
use std::path::Path;

use banger_core::runner::CommandRunner;

use crate::copy::{self, CloneKind};
use crate::debugfs::{self, Debugfs};
use crate::extract::{self, Limits};
use crate::{DiskError, ext4};

/// The filesystem label of work seeds (and so of every work disk).
pub const WORK_LABEL: &str = "banger-work";

/// The most entries a seed copies from an image's `/root`.
pub const MAX_SEED_ENTRIES: usize = 100_000;

/// The deepest directory nesting a seed copies from an image's `/root`.
pub const MAX_SEED_DEPTH: usize = 64;

/// Builds the work seed `out` (an ext4 of `size` bytes) from the `/root` directory of
/// `rootfs_image`; an image without `/root` gives an empty seed. The seed's top directory
/// is owned by 0:0 with mode 0700; every file, directory and symlink below keeps the
/// owner, group and mode it has in the image, also when not running as root (they are
/// re-applied with one debugfs batch). Device nodes, fifos and sockets are not copied.
///
/// The image is untrusted: `/root` is read by banger's own reader (see
/// [`crate::extract`]), which refuses names with `/`, NUL, `.`/`..` entries and duplicate
/// names ([`DiskError::UnsafeEntry`]), never follows a symlink, and stops at
/// [`MAX_SEED_ENTRIES`] entries, [`MAX_SEED_DEPTH`] levels and files adding up to more
/// than `size` bytes. The copy is staged in a private (0700) temporary directory under
/// `scratch`, removed at the end. On failure `out` is removed.
pub fn make_work_seed(
    runner: &dyn CommandRunner,
    rootfs_image: &Path,
    out: &Path,
    size: u64,
    scratch: &Path,
) -> Result<(), DiskError> {
    let tmp = debugfs::private_tempdir(scratch, "banger-seed-")?;
    let tree = tmp.path().join("root");
    let limits = Limits {
        max_bytes: size,
        max_entries: MAX_SEED_ENTRIES,
        max_depth: MAX_SEED_DEPTH,
    };
    let owners = match extract::extract_dir(rootfs_image, "/root", &tree, limits)? {
        Some(owners) => owners,
        None => {
            fs::create_dir(&tree).map_err(DiskError::io(&tree, "create"))?;
            Default::default()
        }
    };

    ext4::mkfs_from_dir(runner, &tree, out, size, WORK_LABEL)?;
    let result = (|| {
        let mut batch = Debugfs::new(scratch);
        batch.set_owner("/", 0, 0)?.set_mode("/", 0o040700)?;
        for (path, entry) in &owners {
            batch
                .set_owner(path, entry.uid, entry.gid)?
                .set_mode(path, entry.kind.type_bits() | entry.mode)?;
        }
        batch.run(runner, out)
    })();
    if result.is_err() {
        // Best effort: a seed with the wrong owners must not be used.
        let _ = fs::remove_file(out);
    }
    result
}

/// Creates the work disk `out` as a copy of `seed` (reflink when possible, sparse
/// otherwise), grown to `size` bytes when that is larger than the seed (a smaller `size`
/// leaves the seed's size: filesystems are never shrunk). The disk is prepared as
/// `<out>.tmp` and renamed into place, so a failure leaves no `out`.
pub fn clone_work_disk(
    runner: &dyn CommandRunner,
    seed: &Path,
    out: &Path,
    size: u64,
) -> Result<CloneKind, DiskError> {
    let tmp = copy::tmp_path(out);
    let result = (|| {
        let kind = copy::clone_into(seed, &tmp)?;
        let len = fs::metadata(&tmp)
            .map_err(DiskError::io(&tmp, "stat"))?
            .len();
        if size > len {
            ext4::grow(runner, &tmp, size)?;
        }
        fs::rename(&tmp, out).map_err(DiskError::io(out, "rename the finished work disk to"))?;
        Ok(kind)
    })();
    if result.is_err() {
        // Best effort: remove the half-made disk.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::fake::{FakeRunner, Reply};

    #[test]
    fn clone_grows_only_when_larger() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.ext4");
        fs::File::create(&seed).unwrap().set_len(1 << 20).unwrap();
        let out = dir.path().join("work.ext4");
        let runner = FakeRunner::new();

        clone_work_disk(&runner, &seed, &out, 1 << 20).unwrap();
        assert!(runner.calls().is_empty());
        assert_eq!(fs::metadata(&out).unwrap().len(), 1 << 20);

        clone_work_disk(&runner, &seed, &out, 4 << 20).unwrap();
        let tmp = copy::tmp_path(&out);
        assert_eq!(
            runner.calls(),
            [
                format!("e2fsck -fy {}", tmp.display()),
                format!("resize2fs {}", tmp.display())
            ]
        );
        assert_eq!(fs::metadata(&out).unwrap().len(), 4 << 20);
        assert!(!tmp.exists());
    }

    #[test]
    fn failed_grow_leaves_no_disk() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.ext4");
        fs::File::create(&seed).unwrap().set_len(1 << 20).unwrap();
        let out = dir.path().join("work.ext4");
        let tmp = copy::tmp_path(&out);
        let runner = FakeRunner::new();
        runner.on(
            &format!("resize2fs {}", tmp.display()),
            Reply::Fail(1, "resize2fs: Bad magic number in super-block\n".into()),
        );
        let err = clone_work_disk(&runner, &seed, &out, 4 << 20).unwrap_err();
        assert!(err.to_string().contains("Bad magic number"), "{err}");
        assert!(!out.exists());
        assert!(!tmp.exists());
    }
}
