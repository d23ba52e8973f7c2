//! Work disks: the per-VM ext4 disk mounted at `/root` in the guest.
//!
//! Each image gets one "work seed" ([`make_work_seed`]): an ext4 holding what the image
//! has under `/root`, at the root of the filesystem. Each VM's work disk is a clone of the
//! seed grown to the requested size ([`clone_work_disk`]): a reflink or sparse copy plus
//! a resize, much faster than building a filesystem per VM.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use banger_core::runner::CommandRunner;

use crate::copy::{self, CloneKind};
use crate::debugfs::{self, Debugfs, DirEntry, FileKind};
use crate::{DiskError, ext4};

/// The filesystem label of work seeds (and so of every work disk).
pub const WORK_LABEL: &str = "banger-work";

/// Builds the work seed `out` (an ext4 of `size` bytes) from the `/root` directory of
/// `rootfs_image`; an image without `/root` gives an empty seed. The seed's top directory
/// is owned by 0:0 with mode 0700; every file, directory and symlink below keeps the
/// owner, group and mode it has in the image, also when not running as root (they are
/// re-applied from the image's listing with one debugfs batch). Device nodes, fifos and
/// sockets are not copied. On failure `out` is removed.
pub fn make_work_seed(
    runner: &dyn CommandRunner,
    rootfs_image: &Path,
    out: &Path,
    size: u64,
) -> Result<(), DiskError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".banger-seed-")
        .tempdir_in(&parent)
        .map_err(DiskError::io(&parent, "create a temporary directory in"))?;
    let tree = tmp.path().join("root");

    let owners = match debugfs::stat(runner, rootfs_image, "/root")? {
        None => {
            fs::create_dir(&tree).map_err(DiskError::io(&tree, "create"))?;
            BTreeMap::new()
        }
        Some(inode) if inode.kind == FileKind::Directory => {
            debugfs::dump_dir(runner, rootfs_image, "/root", &tree)?;
            source_metadata(runner, rootfs_image, &tree)?
        }
        Some(inode) => {
            return Err(DiskError::WrongType {
                image: rootfs_image.to_path_buf(),
                path: "/root".to_string(),
                found: inode.kind,
                expected: FileKind::Directory,
            });
        }
    };

    ext4::mkfs_from_dir(runner, &tree, out, size, WORK_LABEL)?;
    let result = (|| {
        let mut batch = Debugfs::new();
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

/// The owner, group and mode of every regular file, directory and symlink under the
/// image's `/root`, keyed by path in the seed (`/.bashrc`). The directories to list are
/// those `rdump` produced in `tree`: one `ls -p` per directory, in one debugfs run.
fn source_metadata(
    runner: &dyn CommandRunner,
    image: &Path,
    tree: &Path,
) -> Result<BTreeMap<String, DirEntry>, DiskError> {
    // Seed-relative directory paths: "" is the top.
    let mut dirs = vec![String::new()];
    let mut i = 0;
    while i < dirs.len() {
        let host = tree.join(dirs[i].trim_start_matches('/'));
        for entry in fs::read_dir(&host).map_err(DiskError::io(&host, "list"))? {
            let entry = entry.map_err(DiskError::io(&host, "list"))?;
            let ft = entry
                .file_type()
                .map_err(DiskError::io(entry.path(), "stat"))?;
            if ft.is_dir() {
                let name = entry.file_name();
                let name = name.to_str().ok_or_else(|| {
                    DiskError::invalid(
                        "file name",
                        entry.path().display().to_string(),
                        "not valid UTF-8",
                    )
                })?;
                dirs.push(format!("{}/{name}", dirs[i]));
            }
        }
        i += 1;
    }
    let guest_dirs: Vec<String> = dirs.iter().map(|d| format!("/root{d}")).collect();
    let listings = debugfs::list_dirs(runner, image, &guest_dirs)?;
    let mut out = BTreeMap::new();
    for (dir, entries) in dirs.iter().zip(listings) {
        for entry in entries {
            if matches!(
                entry.kind,
                FileKind::Regular | FileKind::Directory | FileKind::Symlink
            ) {
                out.insert(format!("{dir}/{}", entry.name), entry);
            }
        }
    }
    Ok(out)
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
