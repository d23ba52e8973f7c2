//! Managed images: registered from local files, each owning copies of its artifacts under
//! `state/images/<id>/`. Image mutations hold the image lock. Registration stages into
//! `<id>.staging` and publishes by renaming, so a failure leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::types::{Image, RegisterImage};
use banger_core::names::validate_image_name;
use banger_store::ImageRow;

use crate::error::{OpError, chain};
use crate::server::AppState;
use crate::vms::now;

impl AppState {
    pub fn image_view(&self, row: &ImageRow) -> Image {
        let used_by = self
            .vm_rows()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.image_id == row.id)
            .map(|v| v.name)
            .collect();
        Image {
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
            used_by,
        }
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
}

fn require_file(what: &str, p: &Path) -> Result<(), OpError> {
    if !p.is_absolute() {
        return Err(OpError::Invalid {
            what: format!("{what} path {} must be absolute", p.display()),
        });
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(OpError::Invalid {
            what: format!("{what} {} is not a regular file", p.display()),
        }),
        Err(e) => Err(OpError::Invalid {
            what: format!("{what} {}: {e}", p.display()),
        }),
    }
}

/// Registers local files as a managed image.
pub async fn register(state: Arc<AppState>, req: RegisterImage) -> Result<Image, OpError> {
    validate_image_name(&req.name)?;
    req.check_kernel_source()
        .map_err(|what| OpError::Invalid { what })?;
    require_file("rootfs", &req.rootfs)?;
    if let Some(k) = &req.kernel {
        require_file("kernel", k)?;
    }
    if let Some(i) = &req.initrd {
        require_file("initrd", i)?;
    }
    if let Some(m) = &req.modules
        && !m.is_dir()
    {
        return Err(OpError::Invalid {
            what: format!("modules {} is not a directory", m.display()),
        });
    }
    if let Some(k) = &req.kernel_ref
        && state.db(|s| s.get_kernel(k))?.is_none()
    {
        return Err(OpError::KernelNotFound { name: k.clone() });
    }
    let _g = state.locks.images.lock().await;
    if state.find_image(&req.name).is_ok() {
        return Err(OpError::ImageNameTaken { name: req.name });
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let images_dir = state.opts.layout.state_dir.join("images");
    let staging = images_dir.join(format!("{id}.staging"));
    let final_dir = images_dir.join(&id);
    let result = stage(&staging, &req).await;
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
        created_at: now(),
    };
    if let Err(e) = state.db(|s| s.insert_image(&row)) {
        let _ = tokio::fs::remove_dir_all(&final_dir).await;
        return Err(OpError::image_insert(e, &row.name));
    }
    tracing::info!(image = %row.name, id = %row.id, "image registered");
    Ok(state.image_view(&row))
}

struct Staged {
    rootfs_bytes: u64,
}

async fn stage(staging: &Path, req: &RegisterImage) -> Result<Staged, OpError> {
    tokio::fs::create_dir_all(staging)
        .await
        .map_err(OpError::io("create", staging))?;
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
        copy(&req.rootfs, "rootfs.ext4")?;
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

/// Deletes an image and its files; refused while a VM uses it.
pub async fn delete(state: Arc<AppState>, reference: &str) -> Result<(), OpError> {
    let _g = state.locks.images.lock().await;
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
    if let Err(e) = tokio::fs::remove_dir_all(&row.dir).await {
        tracing::warn!(image = %row.name, error = %chain(&e), "cannot remove image dir");
    }
    Ok(())
}
