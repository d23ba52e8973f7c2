//! Building and growing ext4 images as plain files, without mounting them.
//!
//! - [`mkfs_from_dir`]: a new image populated from a host directory (`mkfs.ext4 -d`).
//! - [`grow`]: enlarge an image and its filesystem (`e2fsck -fy`, then `resize2fs`).
//! - [`size_of_tree`] and [`default_image_size`]: how large an image for a tree should be.
//! - [`check_clean`]: refuse anything but a clean ext4 filesystem (`e2fsck -fn`).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use banger_core::runner::CommandRunner;

use crate::DiskError;

/// The smallest default image: a rootfs needs room to install packages and write logs.
pub const MIN_DEFAULT_IMAGE_SIZE: u64 = 1 << 30;

/// Creates the ext4 image `out` of exactly `size_bytes` bytes, populated with the
/// contents of `dir`, replacing `out` if it exists. On failure `out` is removed.
///
/// Runs `mkfs.ext4 -q -F -L LABEL -d DIR -E root_owner=0:0 OUT` on a file first sized
/// with `set_len` (sparse):
/// - `-q`: no progress output;
/// - `-F`: proceed although `OUT` is a regular file, not a block device;
/// - `-L LABEL`: the filesystem label (at most 16 bytes);
/// - `-d DIR`: copy the tree into the new filesystem (files, directories, symlinks,
///   modes and the host's numeric owners as they are on disk);
/// - `-E root_owner=0:0`: the root directory belongs to root, not to the user running
///   mkfs (its mode is 0755 whatever `DIR`'s is).
pub fn mkfs_from_dir(
    runner: &dyn CommandRunner,
    dir: &Path,
    out: &Path,
    size_bytes: u64,
    label: &str,
) -> Result<(), DiskError> {
    if label.is_empty() || label.len() > 16 || !label.chars().all(|c| c.is_ascii_graphic()) {
        return Err(DiskError::invalid(
            "filesystem label",
            label,
            "must be 1 to 16 printable ASCII characters without spaces",
        ));
    }
    if size_bytes == 0 {
        return Err(DiskError::invalid("image size", "0", "must be positive"));
    }
    if !dir.is_dir() {
        return Err(DiskError::invalid(
            "source directory",
            dir.display().to_string(),
            "not a directory",
        ));
    }
    let result = (|| {
        let file = File::create(out).map_err(DiskError::io(out, "create"))?;
        file.set_len(size_bytes)
            .map_err(DiskError::io(out, "set the length of"))?;
        drop(file);
        let args = [
            "-q",
            "-F",
            "-L",
            label,
            "-d",
            &dir.to_string_lossy(),
            "-E",
            "root_owner=0:0",
            &out.to_string_lossy(),
        ]
        .map(String::from);
        let output = runner.run("mkfs.ext4", &args)?;
        if !output.success() {
            return Err(DiskError::command(&output));
        }
        Ok(())
    })();
    if result.is_err() {
        // Best effort: never leave a half-made image behind.
        let _ = fs::remove_file(out);
    }
    result
}

/// Checks that `image` is a clean ext4 filesystem without changing it (`e2fsck -fn
/// IMAGE`: force a full check, answer "no" to every fix). Anything but exit code 0 -- not
/// ext4 at all, errors found, an unreadable file -- is [`DiskError::NotCleanExt4`] with
/// e2fsck's first lines. For images taken in from outside (`image register`, bundles).
pub fn check_clean(runner: &dyn CommandRunner, image: &Path) -> Result<(), DiskError> {
    let out = runner.run(
        "e2fsck",
        &["-fn".to_string(), image.to_string_lossy().into_owned()],
    )?;
    if out.code == Some(0) {
        return Ok(());
    }
    let text = format!("{}\n{}", out.stderr, out.stdout);
    let detail: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("e2fsck "))
        .take(4)
        .collect();
    Err(DiskError::NotCleanExt4 {
        image: image.to_path_buf(),
        command: out.command.clone(),
        code: out.code,
        detail: detail.join("; "),
    })
}

/// Grows the ext4 image `image` to `new_size` bytes: extends the file, checks the
/// filesystem (`e2fsck -fy IMAGE`, exit codes 0 and 1 -- "errors corrected" -- accepted),
/// then `resize2fs IMAGE` to fill the file. A size smaller than the current one is
/// refused ([`DiskError::Shrink`]) and the image left untouched; on a failed check or
/// resize the file is truncated back to its old length. Growing to the current size
/// re-runs the check and the resize, completing an interrupted grow.
pub fn grow(runner: &dyn CommandRunner, image: &Path, new_size: u64) -> Result<(), DiskError> {
    let current = fs::metadata(image)
        .map_err(DiskError::io(image, "stat"))?
        .len();
    if new_size < current {
        return Err(DiskError::Shrink {
            image: image.to_path_buf(),
            current,
            requested: new_size,
        });
    }
    let file = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(DiskError::io(image, "open"))?;
    file.set_len(new_size)
        .map_err(DiskError::io(image, "set the length of"))?;
    let result = check_and_resize(runner, image);
    if result.is_err() && new_size > current {
        // Best effort: the filesystem was not resized, so the extra length is unused.
        let _ = file.set_len(current);
    }
    result
}

fn check_and_resize(runner: &dyn CommandRunner, image: &Path) -> Result<(), DiskError> {
    let image = image.to_string_lossy().into_owned();
    let fsck = runner.run("e2fsck", &["-fy".to_string(), image.clone()])?;
    if !matches!(fsck.code, Some(0 | 1)) {
        return Err(DiskError::command(&fsck));
    }
    let resize = runner.run("resize2fs", &[image])?;
    if !resize.success() {
        return Err(DiskError::command(&resize));
    }
    Ok(())
}

/// Inode size of a default ext4 (`inode_size = 256` in mke2fs.conf).
const INODE_BYTES: u64 = 256;
const BLOCK_BYTES: u64 = 4096;
/// Symlink targets shorter than this live in the inode ("fast" symlinks).
const FAST_SYMLINK_MAX: u64 = 60;

/// Estimates the bytes a tree occupies in ext4: every regular file's apparent size rounded
/// up to 4 KiB blocks (hard links counted once), one block per directory and per long
/// symlink, plus a 256-byte inode per entry. Symlinks are not followed. Journal and
/// filesystem metadata are not included: callers add headroom (see
/// [`default_image_size`]).
pub fn size_of_tree(dir: &Path) -> Result<u64, DiskError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(DiskError::io(&path, "stat"))?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += INODE_BYTES;
        let ft = meta.file_type();
        if ft.is_dir() {
            total += BLOCK_BYTES;
            for entry in fs::read_dir(&path).map_err(DiskError::io(&path, "list"))? {
                let entry = entry.map_err(DiskError::io(&path, "list"))?;
                stack.push(entry.path());
            }
        } else if ft.is_file() {
            total += meta.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        } else if ft.is_symlink() && meta.len() >= FAST_SYMLINK_MAX {
            total += BLOCK_BYTES;
        }
    }
    Ok(total)
}

/// The default image size for a tree of `tree_bytes` (from [`size_of_tree`]):
/// max(1.5 × tree, 1 GiB), rounded up to a whole MiB.
pub fn default_image_size(tree_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let wanted = tree_bytes.saturating_add(tree_bytes / 2);
    wanted.max(MIN_DEFAULT_IMAGE_SIZE).div_ceil(MIB) * MIB
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::fake::{FakeRunner, Reply};

    #[test]
    fn mkfs_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        let out = dir.path().join("out.ext4");
        let runner = FakeRunner::new();
        mkfs_from_dir(&runner, &tree, &out, 64 << 20, "rootfs").unwrap();
        assert_eq!(
            runner.calls(),
            [format!(
                "mkfs.ext4 -q -F -L rootfs -d {} -E root_owner=0:0 {}",
                tree.display(),
                out.display()
            )]
        );
        assert_eq!(fs::metadata(&out).unwrap().len(), 64 << 20);
    }

    #[test]
    fn mkfs_failure_removes_the_image_and_names_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.ext4");
        let runner = FakeRunner::new();
        let line = format!(
            "mkfs.ext4 -q -F -L x -d {} -E root_owner=0:0 {}",
            dir.path().display(),
            out.display()
        );
        runner.on(
            &line,
            Reply::Fail(
                1,
                "mkfs.ext4: Could not allocate block in ext2 filesystem while populating file system\n"
                    .to_string(),
            ),
        );
        let err = mkfs_from_dir(&runner, dir.path(), &out, 1 << 20, "x").unwrap_err();
        assert!(!out.exists());
        let text = err.to_string();
        assert!(text.contains(&line), "{text}");
        assert!(text.contains("exit code 1"), "{text}");
        assert!(text.contains("Could not allocate block"), "{text}");
    }

    #[test]
    fn mkfs_rejects_bad_labels() {
        let runner = FakeRunner::new();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        for label in ["", "seventeen-chars-x", "a b"] {
            assert!(matches!(
                mkfs_from_dir(&runner, dir.path(), &out, 1 << 20, label),
                Err(DiskError::Invalid { .. })
            ));
        }
        assert!(runner.calls().is_empty());
    }

    fn image_of(len: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        File::create(&image).unwrap().set_len(len).unwrap();
        (dir, image)
    }

    #[test]
    fn grow_checks_then_resizes_and_accepts_corrected_errors() {
        let (_dir, image) = image_of(1 << 20);
        let runner = FakeRunner::new();
        let fsck = format!("e2fsck -fy {}", image.display());
        runner.on(&fsck, Reply::Fail(1, String::new()));
        grow(&runner, &image, 2 << 20).unwrap();
        assert_eq!(
            runner.calls(),
            [fsck, format!("resize2fs {}", image.display())]
        );
        assert_eq!(fs::metadata(&image).unwrap().len(), 2 << 20);
    }

    #[test]
    fn grow_failure_restores_the_length() {
        let (_dir, image) = image_of(1 << 20);
        let runner = FakeRunner::new();
        runner.on(
            &format!("e2fsck -fy {}", image.display()),
            Reply::Fail(
                4,
                "img: ********** WARNING: Filesystem still has errors **********\n".to_string(),
            ),
        );
        let err = grow(&runner, &image, 2 << 20).unwrap_err();
        assert!(
            matches!(err, DiskError::Command { code: Some(4), .. }),
            "{err}"
        );
        assert_eq!(fs::metadata(&image).unwrap().len(), 1 << 20);
        assert_eq!(runner.calls().len(), 1);
    }

    #[test]
    fn grow_refuses_to_shrink() {
        let (_dir, image) = image_of(2 << 20);
        let runner = FakeRunner::new();
        let err = grow(&runner, &image, 1 << 20).unwrap_err();
        assert!(
            matches!(err, DiskError::Shrink { current, requested, .. } if current == 2 << 20 && requested == 1 << 20)
        );
        assert!(err.to_string().contains("refusing to shrink"), "{err}");
        assert!(runner.calls().is_empty());
        assert_eq!(fs::metadata(&image).unwrap().len(), 2 << 20);
    }

    #[test]
    fn tree_size_counts_blocks_inodes_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("one"), b"x").unwrap();
        fs::write(root.join("big"), vec![1u8; 5000]).unwrap();
        fs::hard_link(root.join("big"), root.join("big-link")).unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("one", root.join("short")).unwrap();
        std::os::unix::fs::symlink("x".repeat(80), root.join("long")).unwrap();
        // Inodes: root, one, big, sub, short, long = 6.
        // Blocks: root dir 1, sub dir 1, one 1, big 2, long symlink 1 = 6.
        assert_eq!(size_of_tree(root).unwrap(), 6 * 256 + 6 * 4096);
        assert!(matches!(
            size_of_tree(&root.join("missing")),
            Err(DiskError::Io { .. })
        ));
    }

    #[test]
    fn default_size_is_at_least_one_gib() {
        assert_eq!(default_image_size(0), 1 << 30);
        assert_eq!(default_image_size(100 << 20), 1 << 30);
        assert_eq!(default_image_size(2 << 30), 3 << 30);
        assert_eq!(default_image_size((2 << 30) + 1), (3 << 30) + (1 << 20));
    }
}
