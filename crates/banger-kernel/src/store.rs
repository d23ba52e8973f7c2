//! The kernel store: one directory per kernel under `state/kernels`.
//!
//! ```text
//! <store>/<name>/
//!     vmlinux            uncompressed ELF (what Firecracker boots)
//!     vmlinuz            the compressed kernel as shipped (what QEMU boots), when there was one
//!     initrd.img         when there was one
//!     modules/<version>/ the module tree, when there was one
//!     manifest.json      KernelManifest
//! ```
//!
//! [`import`] builds all of it in `<store>/.staging-<name>` and publishes it with one rename,
//! so `<store>/<name>` is either absent or complete; any failure removes the staging
//! directory. (Kernel names never start with `.`, so staging and set-aside directories can
//! never collide with a kernel, and [`list`] skips them.) Replacing an existing kernel
//! (`force`) swaps the two directories atomically with `renameat2(RENAME_EXCHANGE)` where the
//! filesystem supports it, otherwise renames the old one aside first and back on failure.
//!
//! The daemon's database is the source of truth for what is installed; [`read_manifest`] and
//! [`list`] are for diagnostics and repair.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::KernelError;
use crate::extract::extract_vmlinux;
use crate::find::Found;

/// The manifest's file name inside a kernel directory.
pub const MANIFEST_FILE: &str = "manifest.json";
const VMLINUX: &str = "vmlinux";
const VMLINUZ: &str = "vmlinuz";
const INITRD: &str = "initrd.img";
const MODULES: &str = "modules";

/// What a stored kernel holds; written to `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelManifest {
    /// The kernel's name in the store.
    pub name: String,
    /// The kernel version (`6.1.0-28-cloud-amd64`).
    pub version: String,
    /// Lowercase hex sha256 of `vmlinux`.
    pub sha256: String,
    /// Where it came from, as the caller described it (`import from /`, a catalog URL...).
    pub source: String,
    /// The files, relative to the kernel directory.
    pub files: KernelFiles,
    /// The compression of the shipped kernel's payload (`lz4`), or `None` when an ELF was
    /// shipped and copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Symlinks in the module tree that were not copied because they pointed outside it or
    /// nowhere (Debian's `build` and `source` point at kernel headers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_symlinks: Vec<DroppedSymlink>,
}

/// The files of a stored kernel, relative to its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFiles {
    /// Always `vmlinux`.
    pub vmlinux: String,
    /// `vmlinuz`, when a compressed kernel was shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinuz: Option<String>,
    /// `initrd.img`, when an initrd was shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// `modules/<version>`, when modules were shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<String>,
}

/// A symlink left out of the copied module tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedSymlink {
    /// Its path relative to the module tree (`build`).
    pub path: String,
    /// What it pointed to.
    pub target: String,
}

/// Absolute paths of a stored kernel's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPaths {
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    pub vmlinuz: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub modules: Option<PathBuf>,
}

impl KernelManifest {
    /// The manifest's files as absolute paths under `kernel_dir` (see [`kernel_dir`]).
    pub fn paths(&self, kernel_dir: &Path) -> KernelPaths {
        KernelPaths {
            dir: kernel_dir.to_path_buf(),
            vmlinux: kernel_dir.join(&self.files.vmlinux),
            vmlinuz: self.files.vmlinuz.as_ref().map(|f| kernel_dir.join(f)),
            initrd: self.files.initrd.as_ref().map(|f| kernel_dir.join(f)),
            modules: self.files.modules.as_ref().map(|f| kernel_dir.join(f)),
        }
    }
}

/// The directory of kernel `name` in the store (whether or not it exists).
pub fn kernel_dir(store_dir: &Path, name: &str) -> PathBuf {
    store_dir.join(name)
}

/// Imports `found` into the store as `name`; see the module docs. `source` is recorded in
/// the manifest. An existing kernel of that name is refused unless `force`, which replaces
/// it atomically.
pub fn import(
    found: &Found,
    name: &str,
    store_dir: &Path,
    source: &str,
    force: bool,
) -> Result<KernelManifest, KernelError> {
    banger_core::names::validate_kernel_name(name)?;
    let image = found
        .vmlinux
        .as_deref()
        .or(found.vmlinuz.as_deref())
        .ok_or_else(|| KernelError::NoKernelImage {
            version: found.version.clone(),
        })?;

    fs::create_dir_all(store_dir).map_err(|source| KernelError::Write {
        path: store_dir.to_path_buf(),
        source,
    })?;
    let dest = kernel_dir(store_dir, name);
    if !force && exists(&dest) {
        return Err(KernelError::AlreadyExists {
            name: name.to_string(),
            path: dest,
        });
    }

    let staging = StagingDir::create(store_dir.join(format!(".staging-{name}")))?;
    let dir = staging.path();

    let vmlinuz = match &found.vmlinuz {
        Some(src) => {
            copy_file(src, &dir.join(VMLINUZ))?;
            Some(VMLINUZ.to_string())
        }
        None => None,
    };
    let extraction = extract_vmlinux(image, &dir.join(VMLINUX))?;
    let sha256 = sha256_file(&dir.join(VMLINUX))?;
    let initrd = match &found.initrd {
        Some(src) => {
            copy_file(src, &dir.join(INITRD))?;
            Some(INITRD.to_string())
        }
        None => None,
    };
    let (modules, dropped_symlinks) = match &found.modules {
        Some(src) => {
            let rel = format!("{MODULES}/{}", found.version);
            let dst = dir.join(&rel);
            create_dir(&dir.join(MODULES))?;
            let dropped = copy_tree(src, &dst)?;
            (Some(rel), dropped)
        }
        None => (None, Vec::new()),
    };

    let manifest = KernelManifest {
        name: name.to_string(),
        version: found.version.clone(),
        sha256,
        source: source.to_string(),
        files: KernelFiles {
            vmlinux: VMLINUX.to_string(),
            vmlinuz,
            initrd,
            modules,
        },
        compression: extraction.compression.map(|c| c.name().to_string()),
        dropped_symlinks,
    };
    write_manifest(&dir.join(MANIFEST_FILE), &manifest)?;

    staging.publish(&dest, store_dir, name)?;
    tracing::info!(
        name,
        version = %manifest.version,
        dir = %dest.display(),
        dropped_symlinks = manifest.dropped_symlinks.len(),
        "kernel imported"
    );
    Ok(manifest)
}

/// Removes kernel `name` from the store.
pub fn remove(store_dir: &Path, name: &str) -> Result<(), KernelError> {
    banger_core::names::validate_kernel_name(name)?;
    let dir = kernel_dir(store_dir, name);
    if !exists(&dir) {
        return Err(KernelError::NotInStore {
            name: name.to_string(),
            path: dir,
        });
    }
    // Rename aside first, so a half-removed kernel never sits under its real name.
    let aside = store_dir.join(format!(".removing-{name}"));
    remove_if_present(&aside)?;
    fs::rename(&dir, &aside).map_err(|source| KernelError::Rename {
        from: dir.clone(),
        to: aside.clone(),
        source,
    })?;
    fs::remove_dir_all(&aside).map_err(|source| KernelError::Remove {
        path: aside.clone(),
        source,
    })
}

/// Reads kernel `name`'s manifest.
pub fn read_manifest(store_dir: &Path, name: &str) -> Result<KernelManifest, KernelError> {
    banger_core::names::validate_kernel_name(name)?;
    let dir = kernel_dir(store_dir, name);
    if !dir.is_dir() {
        return Err(KernelError::NotInStore {
            name: name.to_string(),
            path: dir,
        });
    }
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path).map_err(|source| KernelError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| KernelError::BadManifest { path, source })
}

/// One directory of the store, as [`list`] sees it.
#[derive(Debug)]
pub struct StoreEntry {
    /// The directory's name (the kernel's name).
    pub name: String,
    /// Its manifest, or why it could not be read.
    pub manifest: Result<KernelManifest, KernelError>,
}

/// Every kernel directory in the store, by name; a missing store is empty. Staging and
/// set-aside directories (dot names) are skipped.
pub fn list(store_dir: &Path) -> Result<Vec<StoreEntry>, KernelError> {
    let entries = match fs::read_dir(store_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KernelError::Read {
                path: store_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| KernelError::Read {
            path: store_dir.to_path_buf(),
            source,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let manifest = read_manifest(store_dir, &name);
        out.push(StoreEntry { name, manifest });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn create_dir(path: &Path) -> Result<(), KernelError> {
    fs::create_dir(path).map_err(|source| KernelError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_if_present(path: &Path) -> Result<(), KernelError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KernelError::Read {
            path: path.to_path_buf(),
            source,
        }),
        Ok(meta) => {
            let result = if meta.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            result.map_err(|source| KernelError::Remove {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

fn copy_file(from: &Path, to: &Path) -> Result<(), KernelError> {
    fs::copy(from, to)
        .map(drop)
        .map_err(|source| KernelError::Copy {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source,
        })
}

fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn write_manifest(path: &Path, manifest: &KernelManifest) -> Result<(), KernelError> {
    let mut json =
        serde_json::to_vec_pretty(manifest).map_err(|source| KernelError::BadManifest {
            path: path.to_path_buf(),
            source,
        })?;
    json.push(b'\n');
    fs::write(path, json).map_err(|source| KernelError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Copies the tree at `src` to `dst` (which must not exist): directories, regular files
/// (with their permission bits) and the symlinks that stay inside the tree and resolve;
/// the other symlinks are returned instead of copied. Other file types are an error.
fn copy_tree(src: &Path, dst: &Path) -> Result<Vec<DroppedSymlink>, KernelError> {
    let canonical_root = fs::canonicalize(src).map_err(|source| KernelError::Read {
        path: src.to_path_buf(),
        source,
    })?;
    let mut dropped = Vec::new();
    // Paths relative to the tree, still to copy.
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    // Directory modes are applied last, so a read-only directory can still be filled.
    let mut dir_modes: Vec<(PathBuf, fs::Permissions)> = Vec::new();
    while let Some(rel) = stack.pop() {
        let from = canonical_root.join(&rel);
        let to = dst.join(&rel);
        let meta = fs::symlink_metadata(&from).map_err(|source| KernelError::Read {
            path: from.clone(),
            source,
        })?;
        let ft = meta.file_type();
        if ft.is_dir() {
            create_dir(&to)?;
            dir_modes.push((to.clone(), meta.permissions()));
            let entries = fs::read_dir(&from).map_err(|source| KernelError::Read {
                path: from.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| KernelError::Read {
                    path: from.clone(),
                    source,
                })?;
                stack.push(rel.join(entry.file_name()));
            }
        } else if ft.is_file() {
            copy_file(&from, &to)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|source| KernelError::Read {
                path: from.clone(),
                source,
            })?;
            let inside = !target.is_absolute()
                && fs::canonicalize(&from).is_ok_and(|real| real.starts_with(&canonical_root));
            if inside {
                symlink(&target, &to).map_err(|source| KernelError::Write {
                    path: to.clone(),
                    source,
                })?;
            } else {
                dropped.push(DroppedSymlink {
                    path: rel.display().to_string(),
                    target: target.display().to_string(),
                });
            }
        } else {
            return Err(KernelError::UnsupportedFileType {
                path: from,
                kind: file_kind(&ft),
            });
        }
    }
    for (dir, perms) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, perms).map_err(|source| KernelError::Write {
            path: dir.clone(),
            source,
        })?;
    }
    dropped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(dropped)
}

fn file_kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// A staging directory, removed on drop unless published.
#[derive(Debug)]
struct StagingDir {
    path: PathBuf,
    published: bool,
}

impl StagingDir {
    /// Creates it fresh; a leftover from an interrupted import is removed first.
    fn create(path: PathBuf) -> Result<Self, KernelError> {
        remove_if_present(&path)?;
        create_dir(&path)?;
        Ok(Self {
            path,
            published: false,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the staging directory to `dest`, replacing what is there.
    fn publish(mut self, dest: &Path, store_dir: &Path, name: &str) -> Result<(), KernelError> {
        if !exists(dest) {
            fs::rename(&self.path, dest).map_err(|source| KernelError::Rename {
                from: self.path.clone(),
                to: dest.to_path_buf(),
                source,
            })?;
            self.published = true;
            return Ok(());
        }
        match exchange(&self.path, dest) {
            Ok(()) => {
                // The staging path now holds the old kernel; Drop removes it.
                self.published = false;
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "renameat2(RENAME_EXCHANGE) unavailable, replacing in two steps");
            }
        }
        let aside = store_dir.join(format!(".replaced-{name}"));
        replace_in_two_steps(&self.path, dest, &aside)?;
        self.published = true;
        Ok(())
    }
}

/// Replaces `dest` with `new` where an atomic exchange is unavailable: `dest` is renamed to
/// `aside`, `new` to `dest` (on failure the old one is put back), then `aside` is removed
/// (best effort).
fn replace_in_two_steps(new: &Path, dest: &Path, aside: &Path) -> Result<(), KernelError> {
    remove_if_present(aside)?;
    fs::rename(dest, aside).map_err(|source| KernelError::Rename {
        from: dest.to_path_buf(),
        to: aside.to_path_buf(),
        source,
    })?;
    if let Err(source) = fs::rename(new, dest) {
        // Put the old kernel back under its name.
        let _ = fs::rename(aside, dest);
        return Err(KernelError::Rename {
            from: new.to_path_buf(),
            to: dest.to_path_buf(),
            source,
        });
    }
    // The new kernel is in place: a leftover old copy is hidden (dot name) and removed by
    // the next replace, so it is not worth failing the import for.
    if let Err(e) = fs::remove_dir_all(aside) {
        tracing::warn!(path = %aside.display(), error = %e, "cannot remove the replaced kernel");
    }
    Ok(())
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.published
            && let Err(e) = remove_if_present(&self.path)
        {
            tracing::warn!(error = %e, "cannot remove the kernel staging directory");
        }
    }
}

/// Atomically swaps two paths (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let b = CString::new(b.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call;
    // AT_FDCWD makes relative paths resolve against the working directory, as std does.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::find::{Choice, find_kernel};
    use std::os::unix::fs::PermissionsExt;

    fn touch(path: &Path, contents: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    /// A root with a synthetic gzip bzImage, an initrd and a module tree with links of
    /// every kind.
    fn fixture(root: &Path, version: &str) {
        use crate::extract::{Compression, tests};
        let elf = tests::fake_elf(50_000);
        let image = tests::fake_bzimage(&tests::compress(Compression::Gzip, &elf), version);
        touch(&root.join(format!("boot/vmlinuz-{version}")), &image);
        touch(&root.join(format!("boot/initrd.img-{version}")), b"initrd");
        let m = root.join(format!("lib/modules/{version}"));
        touch(&m.join("modules.dep"), b"kernel/a.ko:\n");
        touch(&m.join("kernel/drivers/a.ko"), b"module a");
        symlink("drivers/a.ko", m.join("kernel/alias.ko")).unwrap();
        symlink("/usr/src/linux-headers", m.join("build")).unwrap();
        symlink("../../../../etc/passwd", m.join("escape")).unwrap();
        symlink("missing.ko", m.join("kernel/dangling.ko")).unwrap();
    }

    #[test]
    fn imports_a_tree_and_reads_it_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fixture(&root, "6.1.0-7-test");
        let store = tmp.path().join("kernels");
        let found = find_kernel(&root, None).unwrap();
        assert_eq!(found.choice, Choice::Only);
        let m = import(&found, "test-kernel", &store, "import from fixture", false).unwrap();
        assert_eq!(m.name, "test-kernel");
        assert_eq!(m.version, "6.1.0-7-test");
        assert_eq!(m.source, "import from fixture");
        assert_eq!(m.compression.as_deref(), Some("gzip"));
        assert_eq!(m.sha256.len(), 64);
        assert_eq!(
            m.files,
            KernelFiles {
                vmlinux: "vmlinux".into(),
                vmlinuz: Some("vmlinuz".into()),
                initrd: Some("initrd.img".into()),
                modules: Some("modules/6.1.0-7-test".into()),
            }
        );
        let dropped: Vec<&str> = m.dropped_symlinks.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(dropped, ["build", "escape", "kernel/dangling.ko"]);

        let dir = kernel_dir(&store, "test-kernel");
        let paths = m.paths(&dir);
        assert!(fs::read(&paths.vmlinux).unwrap().starts_with(b"\x7fELF"));
        assert_eq!(fs::read(paths.initrd.unwrap()).unwrap(), b"initrd");
        let modules = paths.modules.unwrap();
        assert_eq!(
            fs::read(modules.join("kernel/alias.ko")).unwrap(),
            b"module a"
        );
        assert_eq!(
            fs::read_link(modules.join("kernel/alias.ko")).unwrap(),
            Path::new("drivers/a.ko")
        );
        assert!(!exists(&modules.join("build")));
        assert!(!exists(&modules.join("escape")));
        assert_eq!(read_manifest(&store, "test-kernel").unwrap(), m);

        let listed = list(&store).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "test-kernel");
        assert_eq!(listed[0].manifest.as_ref().unwrap(), &m);

        // Refused without force, replaced with it.
        let err = import(&found, "test-kernel", &store, "again", false).unwrap_err();
        assert!(matches!(err, KernelError::AlreadyExists { .. }), "{err:?}");
        let m2 = import(&found, "test-kernel", &store, "again", true).unwrap();
        assert_eq!(m2.source, "again");
        assert_eq!(
            read_manifest(&store, "test-kernel").unwrap().source,
            "again"
        );
        let names: Vec<String> = fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["test-kernel"], "no staging or old copy left");

        remove(&store, "test-kernel").unwrap();
        assert!(list(&store).unwrap().is_empty());
        assert!(fs::read_dir(&store).unwrap().next().is_none());
        let err = remove(&store, "test-kernel").unwrap_err();
        assert!(matches!(err, KernelError::NotInStore { .. }), "{err:?}");
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fixture(&root, "6.1");
        let found = find_kernel(&root, None).unwrap();
        let store = tmp.path().join("kernels");
        for bad in ["", "../x", ".hidden", "a/b"] {
            let err = import(&found, bad, &store, "s", false).unwrap_err();
            assert!(matches!(err, KernelError::BadName(_)), "{bad:?}: {err:?}");
        }
        assert!(!store.exists());
    }

    #[test]
    fn a_failure_removes_the_staging_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fixture(&root, "6.1");
        let store = tmp.path().join("kernels");
        let found = find_kernel(&root, None).unwrap();
        // A fifo in the module tree is refused, after vmlinux and initrd are staged.
        let fifo = root.join("lib/modules/6.1/kernel/pipe");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = import(&found, "k", &store, "s", false).unwrap_err();
        assert!(
            matches!(err, KernelError::UnsupportedFileType { kind: "fifo", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("kernel/pipe"), "{err}");
        assert!(
            fs::read_dir(&store).unwrap().next().is_none(),
            "store is empty"
        );
    }

    #[test]
    fn a_failed_replace_keeps_the_old_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fixture(&root, "6.1");
        let store = tmp.path().join("kernels");
        let mut found = find_kernel(&root, None).unwrap();
        let first = import(&found, "k", &store, "first", false).unwrap();
        found.initrd = Some(root.join("boot/initrd.img-gone"));
        let err = import(&found, "k", &store, "second", true).unwrap_err();
        assert!(matches!(err, KernelError::Copy { .. }), "{err:?}");
        assert!(err.to_string().contains("initrd.img-gone"), "{err}");
        assert_eq!(read_manifest(&store, "k").unwrap(), first);
        assert_eq!(list(&store).unwrap().len(), 1);
        assert_eq!(fs::read_dir(&store).unwrap().count(), 1);
    }

    #[test]
    fn vmlinux_only_is_copied_and_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        touch(&root.join("vmlinux-6.1.102"), b"\x7fELF tiny kernel");
        let store = tmp.path().join("kernels");
        let found = find_kernel(&root, None).unwrap();
        let m = import(&found, "fc-6.1", &store, "s", false).unwrap();
        assert_eq!(m.compression, None);
        assert_eq!(m.files.vmlinuz, None);
        assert_eq!(m.files.initrd, None);
        assert_eq!(m.files.modules, None);
        // sha256 of the file's contents.
        let expect: String = Sha256::digest(b"\x7fELF tiny kernel")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(m.sha256, expect);
    }

    #[test]
    fn no_kernel_image_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let found = Found {
            root: tmp.path().to_path_buf(),
            version: "6.1".into(),
            vmlinuz: None,
            vmlinux: None,
            initrd: None,
            modules: None,
            candidates: vec!["6.1".into()],
            choice: Choice::Only,
        };
        let err = import(&found, "k", &tmp.path().join("s"), "s", false).unwrap_err();
        assert!(matches!(err, KernelError::NoKernelImage { .. }), "{err:?}");
    }

    #[test]
    fn copy_tree_keeps_modes_and_read_only_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        touch(&src.join("ro/file"), b"x");
        fs::set_permissions(src.join("ro/file"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let dst = tmp.path().join("dst");
        assert!(copy_tree(&src, &dst).unwrap().is_empty());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dst.join("ro")), 0o555);
        assert_eq!(mode(&dst.join("ro/file")), 0o600);
        // Let the tempdir clean up.
        for d in [&src, &dst] {
            fs::set_permissions(d.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn two_step_replace_swaps_or_restores() {
        let tmp = tempfile::tempdir().unwrap();
        let (new, dest, aside) = (
            tmp.path().join("new"),
            tmp.path().join("dest"),
            tmp.path().join(".aside"),
        );
        touch(&new.join("v"), b"new");
        touch(&dest.join("v"), b"old");
        replace_in_two_steps(&new, &dest, &aside).unwrap();
        assert_eq!(fs::read(dest.join("v")).unwrap(), b"new");
        assert!(!exists(&new) && !exists(&aside));

        // The new directory vanished: the old one must be back under its name.
        let err = replace_in_two_steps(&new, &dest, &aside).unwrap_err();
        assert!(matches!(err, KernelError::Rename { .. }), "{err:?}");
        assert_eq!(fs::read(dest.join("v")).unwrap(), b"new");
        assert!(!exists(&aside));
    }

    #[test]
    fn list_reports_broken_entries_and_skips_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path();
        fs::create_dir_all(store.join("broken")).unwrap();
        fs::write(store.join("broken/manifest.json"), b"{not json").unwrap();
        fs::create_dir_all(store.join(".staging-x")).unwrap();
        let listed = list(store).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(matches!(
            listed[0].manifest,
            Err(KernelError::BadManifest { .. })
        ));
        assert!(list(&store.join("missing")).unwrap().is_empty());
    }
}
