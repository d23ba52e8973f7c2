//! Managed images: registered from local files, each owning copies of its artifacts under
//! `state/images/<id>/`. Image mutations hold the image lock. Registration stages into
//! `<id>.staging` and publishes by renaming, so a failure leaves nothing behind.
//!
//! Files taken in from outside are untrusted. Each `--rootfs`, `--kernel` and `--initrd`
//! is checked before anything is created ([`check_input_file`]): an absolute path to a
//! non-empty regular file, not a symlink, a directory, a device, a fifo, or a file of
//! `/proc` or `/sys` (whose sizes lie: `/proc/self/environ` says 0, `/proc/kcore` says
//! 128 TiB); a kernel must start like an ELF or a bzImage. The staged copy of a rootfs
//! must then pass `e2fsck -fn` ([`banger_disk::check_clean`]) -- checking the copy, not
//! the original, so a file swapped meanwhile gains nothing. Every refusal is a bad
//! request naming the file.
//!
//! The daemon's temporary files (debugfs command files, staged contents, work seed
//! trees) go to its scratch directory `state/tmp` ([`AppState::scratch_dir`]), mode
//! 0700, emptied at every start ([`reset_scratch_dir`]) -- never to the shared `/tmp`.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::types::{Deleted, Image, RegisterImage};
use banger_core::names::validate_image_name;
use banger_store::ImageRow;

use crate::error::{OpError, chain};
use crate::state::AppState;

/// The daemon's scratch directory under `state_dir`.
fn scratch_path(state_dir: &Path) -> PathBuf {
    state_dir.join("tmp")
}

/// Empties the scratch directory `state_dir/tmp` (what a killed daemon left there) and
/// creates it again with mode 0700. Called at start, holding the daemon lock. A symlink
/// in its place is removed, never followed.
pub fn reset_scratch_dir(state_dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = scratch_path(state_dir);
    let err = |e| (dir.clone(), e);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dir).map_err(err)?,
        Ok(_) => std::fs::remove_file(&dir).map_err(err)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(err)
}

impl AppState {
    /// Where operations put their temporary files: `state/tmp`, mode 0700, emptied at
    /// start (see the module docs).
    pub fn scratch_dir(&self) -> PathBuf {
        scratch_path(&self.opts.layout.state_dir)
    }

    /// The API view of an image row, with the VMs using it.
    pub fn image_view(&self, row: &ImageRow) -> Result<Image, OpError> {
        let used_by = self
            .vm_rows()?
            .into_iter()
            .filter(|v| v.image_id == row.id)
            .map(|v| v.name)
            .collect();
        Ok(Image {
            id: row.id.clone(),
            name: row.name.clone(),
            rootfs_bytes: row.rootfs_bytes,
            rootfs: PathBuf::from(&row.rootfs),
            kernel: row.kernel.as_ref().map(PathBuf::from),
            initrd: row.initrd.as_ref().map(PathBuf::from),
            modules: row.modules.as_ref().map(PathBuf::from),
            kernel_ref: row.kernel_ref.clone(),
            distro: row.distro.clone(),
            arch: row.arch.clone(),
            description: row.description.clone(),
            created_at: row.created_at.clone(),
            init: row.init,
            used_by,
            templates: self
                .templates
                .list(Some(&row.id))
                .into_iter()
                .map(|t| banger_api::types::ImageTemplate {
                    vmm: t.manifest.shape.vmm,
                    cpus: t.manifest.shape.cpus,
                    memory_mib: t.manifest.shape.memory_mib,
                    size_bytes: t.size_on_disk(),
                    made_at: t.manifest.made_at.clone(),
                })
                .collect(),
        })
    }

    pub fn find_image(&self, reference: &str) -> Result<ImageRow, OpError> {
        let rows = self.db(|s| s.list_images())?;
        rows.iter()
            .find(|r| r.name == reference || r.id == reference)
            .cloned()
            .ok_or_else(|| OpError::ImageNotFound {
                reference: reference.to_string(),
            })
    }

    /// `name` when it is a valid image name no image has yet: what a pull checks before it
    /// fetches anything (registering checks again under the image lock).
    pub fn free_image_name(&self, name: String) -> Result<String, OpError> {
        validate_image_name(&name)?;
        if self.find_image(&name).is_ok() {
            return Err(OpError::ImageNameTaken { name });
        }
        Ok(name)
    }
}

/// `statfs` magic numbers of the pseudo filesystems whose files are never images.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// What an input file must be beyond a non-empty regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Anything (an initrd).
    Any,
    /// An ELF `vmlinux` or an x86 bzImage.
    Kernel,
}

/// Checks a file handed in by the user before anything is created (see the module docs);
/// `what` names it in the error (`"rootfs"`, `"kernel"`...).
pub fn check_input_file(what: &str, p: &Path, kind: InputKind) -> Result<(), OpError> {
    let bad = |why: String| OpError::InputFile {
        what: what.to_string(),
        path: p.to_path_buf(),
        why,
    };
    if !p.is_absolute() {
        return Err(OpError::InputNotAbsolute {
            what: what.to_string(),
            path: p.to_path_buf(),
        });
    }
    let lmeta = std::fs::symlink_metadata(p).map_err(|e| bad(e.to_string()))?;
    let ft = lmeta.file_type();
    let found = if ft.is_symlink() {
        Some("a symlink (pass the file it points to)")
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("a device")
    } else if ft.is_fifo() {
        Some("a fifo")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        None
    };
    if let Some(found) = found {
        return Err(bad(format!("is {found}, not a regular file")));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| bad(format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() || meta.ino() != lmeta.ino() || meta.dev() != lmeta.dev() {
        return Err(bad("changed while being checked".to_string()));
    }
    let fs_type = rustix::fs::fstatfs(&file)
        .map_err(|e| bad(format!("cannot statfs: {e}")))?
        .f_type as i64;
    if fs_type == PROC_SUPER_MAGIC || fs_type == SYSFS_MAGIC {
        return Err(bad("is a file of /proc or /sys, not an image".to_string()));
    }
    if meta.len() == 0 {
        return Err(bad("is empty".to_string()));
    }
    if kind == InputKind::Kernel {
        check_kernel_magic(file).map_err(bad)?;
    }
    Ok(())
}

/// Whether `file` starts like an ELF (`vmlinux`) or has the bzImage `HdrS` magic at 0x202.
fn check_kernel_magic(file: File) -> Result<(), String> {
    let mut head = Vec::with_capacity(0x206);
    file.take(0x206)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read: {e}"))?;
    if head.starts_with(b"\x7fELF") || head.get(0x202..0x206) == Some(&b"HdrS"[..]) {
        Ok(())
    } else {
        Err("is neither an ELF vmlinux nor a bzImage kernel".to_string())
    }
}

/// Checks that the image `rootfs` (a staged copy) is a clean ext4 filesystem; a refusal
/// is the user's problem ([`OpError::RootfsNotClean`]) and says what e2fsck found.
pub fn check_rootfs(
    runner: &dyn banger_core::runner::CommandRunner,
    what: &str,
    rootfs: &Path,
) -> Result<(), OpError> {
    banger_disk::check_clean(runner, rootfs).map_err(|e| match e {
        banger_disk::DiskError::NotCleanExt4 { detail, code, .. } => OpError::RootfsNotClean {
            what: what.to_string(),
            code,
            detail,
        },
        other => OpError::Disk {
            vm: format!("({what})"),
            source: Box::new(other),
        },
    })
}

/// Checks the kernel files handed in (each [`check_input_file`]; modules a directory).
pub fn check_kernel_files(
    kernel: Option<&Path>,
    initrd: Option<&Path>,
    modules: Option<&Path>,
) -> Result<(), OpError> {
    if let Some(k) = kernel {
        check_input_file("kernel", k, InputKind::Kernel)?;
    }
    if let Some(i) = initrd {
        check_input_file("initrd", i, InputKind::Any)?;
    }
    if let Some(m) = modules
        && !m.is_dir()
    {
        return Err(OpError::ModulesNotADir {
            path: m.to_path_buf(),
        });
    }
    Ok(())
}

/// Where a registered image's `rootfs.ext4` comes from.
#[derive(Debug)]
pub(crate) enum RootfsFrom {
    /// The user's file `req.rootfs`: copied, and the copy checked with `e2fsck -fn`.
    UserFile,
    /// An image banger built in its scratch dir (`req.rootfs`): moved in, with more files
    /// (name, contents) written next to it.
    Built {
        extra_files: Vec<(&'static str, Vec<u8>)>,
        /// What its guests run as PID 1 (what the build found or was told).
        init: banger_core::guest_init::GuestInit,
    },
}

/// Registers local files as a managed image.
pub async fn register(state: Arc<AppState>, req: RegisterImage) -> Result<Image, OpError> {
    register_from(state, req, RootfsFrom::UserFile).await
}

/// [`register`], the rootfs taken as `from` says.
pub(crate) async fn register_from(
    state: Arc<AppState>,
    req: RegisterImage,
    from: RootfsFrom,
) -> Result<Image, OpError> {
    validate_image_name(&req.name)?;
    req.check_kernel_source()?;
    check_input_file("rootfs", &req.rootfs, InputKind::Any)?;
    check_kernel_files(
        req.kernel.as_deref(),
        req.initrd.as_deref(),
        req.modules.as_deref(),
    )?;
    if let Some(k) = &req.kernel_ref
        && state.db(|s| s.get_kernel(k))?.is_none()
    {
        return Err(OpError::KernelNotFound { name: k.clone() });
    }
    let _g = state.locks.images().await;
    if state.find_image(&req.name).is_ok() {
        return Err(OpError::ImageNameTaken { name: req.name });
    }
    let init = match &from {
        // Local files come as they are, with the guest contract's systemd units.
        RootfsFrom::UserFile => banger_core::guest_init::GuestInit::Systemd,
        RootfsFrom::Built { init, .. } => *init,
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let images_dir = state.opts.layout.state_dir.join("images");
    let staging = images_dir.join(format!("{id}.staging"));
    let final_dir = images_dir.join(&id);
    let result = stage(&state, &staging, &req, from).await;
    let staged = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&staging, &final_dir)
        .await
        .map_err(OpError::io("publish", &final_dir))?;
    let at = |name: &Option<&str>| name.map(|n| final_dir.join(n).display().to_string());
    let row = ImageRow {
        id: id.clone(),
        name: req.name.clone(),
        dir: final_dir.display().to_string(),
        rootfs: final_dir.join("rootfs.ext4").display().to_string(),
        rootfs_bytes: staged.rootfs_bytes,
        kernel: at(&req.kernel.as_ref().map(|_| "kernel")),
        initrd: at(&req.initrd.as_ref().map(|_| "initrd")),
        modules: at(&req.modules.as_ref().map(|_| "modules")),
        kernel_ref: req.kernel_ref.clone(),
        work_seed: None,
        distro: None,
        arch: Some(std::env::consts::ARCH.to_string()),
        description: req.description.clone(),
        created_at: state.now(),
        init,
    };
    if let Err(e) = state.db(|s| s.insert_image(&row)) {
        let _ = tokio::fs::remove_dir_all(&final_dir).await;
        return Err(OpError::image_insert(e));
    }
    tracing::info!(image = %row.name, id = %row.id, "image registered");
    state.image_view(&row)
}

struct Staged {
    rootfs_bytes: u64,
}

async fn stage(
    state: &AppState,
    staging: &Path,
    req: &RegisterImage,
    from: RootfsFrom,
) -> Result<Staged, OpError> {
    tokio::fs::create_dir_all(staging)
        .await
        .map_err(OpError::io("create", staging))?;
    let runner = state.host.runner.clone();
    let req = req.clone();
    let staging = staging.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Staged, OpError> {
        let copy = |src: &Path, name: &str| -> Result<(), OpError> {
            banger_disk::copy::clone_file(src, &staging.join(name))
                .map(|_| ())
                .map_err(|source| OpError::Disk {
                    vm: format!("(image {})", req.name),
                    source: Box::new(source),
                })
        };
        match from {
            RootfsFrom::UserFile => {
                copy(&req.rootfs, "rootfs.ext4")?;
                check_rootfs(
                    runner.as_ref(),
                    &format!("rootfs {}", req.rootfs.display()),
                    &staging.join("rootfs.ext4"),
                )?;
            }
            RootfsFrom::Built { extra_files, .. } => {
                let to = staging.join("rootfs.ext4");
                std::fs::rename(&req.rootfs, &to).map_err(OpError::io("move", &req.rootfs))?;
                for (name, bytes) in extra_files {
                    let path = staging.join(name);
                    std::fs::write(&path, bytes).map_err(OpError::io("write", &path))?;
                }
            }
        }
        if let Some(k) = &req.kernel {
            copy(k, "kernel")?;
        }
        if let Some(i) = &req.initrd {
            copy(i, "initrd")?;
        }
        if let Some(m) = &req.modules {
            copy_tree(m, &staging.join("modules"))?;
        }
        let rootfs_bytes = std::fs::metadata(staging.join("rootfs.ext4"))
            .map_err(OpError::io("stat", staging.join("rootfs.ext4")))?
            .len();
        Ok(Staged { rootfs_bytes })
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
}

/// Copies a directory tree (regular files, dirs, symlinks) preserving modes.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), OpError> {
    std::fs::create_dir_all(dst).map_err(OpError::io("create", dst))?;
    for entry in std::fs::read_dir(src).map_err(OpError::io("read", src))? {
        let entry = entry.map_err(OpError::io("read", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().map_err(OpError::io("stat", &from))?;
        if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(OpError::io("read link", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(OpError::io("symlink", &to))?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(OpError::io("copy", &from))?;
        }
    }
    Ok(())
}

/// Every image, by name.
pub fn list(state: &AppState) -> Result<Vec<Image>, OpError> {
    let rows = state.db(|s| s.list_images())?;
    rows.iter().map(|r| state.image_view(r)).collect()
}

/// The image `reference` names.
pub fn show(state: &AppState, reference: &str) -> Result<Image, OpError> {
    state.image_view(&state.find_image(reference)?)
}

/// Deletes an image and its files; refused while a VM uses it.
pub async fn delete(state: Arc<AppState>, reference: &str) -> Result<Deleted, OpError> {
    let _g = state.locks.images().await;
    let row = state.find_image(reference)?;
    let users: Vec<String> = state
        .vm_rows()?
        .into_iter()
        .filter(|v| v.image_id == row.id)
        .map(|v| v.name)
        .collect();
    if !users.is_empty() {
        return Err(OpError::ImageInUse {
            image: row.name,
            vms: users,
        });
    }
    state.db(|s| s.delete_image(&row.id))?;
    {
        let _templates = state.templates.lock().await;
        state.templates.remove_image(&row.id);
    }
    if let Err(e) = tokio::fs::remove_dir_all(&row.dir).await {
        tracing::warn!(image = %row.name, error = %chain(&e), "cannot remove image dir");
    }
    Ok(Deleted { deleted: row.name })
}
