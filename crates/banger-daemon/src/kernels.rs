//! Imported kernels: files under `state/kernels/<name>` (see `banger-kernel`), one row each in
//! the store. Kernel mutations hold the image lock (images reference kernels by name).

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::types::{Deleted, ImportKernel, Kernel};
use banger_store::KernelRow;

use crate::error::{OpError, chain};
use crate::state::AppState;

impl AppState {
    pub(crate) fn kernels_dir(&self) -> PathBuf {
        self.opts.layout.state_dir.join("kernels")
    }

    /// The API view of a kernel row, with the images booting it.
    pub fn kernel_view(&self, row: &KernelRow) -> Result<Kernel, OpError> {
        let used_by = self
            .db(|s| s.list_images())?
            .into_iter()
            .filter(|i| i.kernel_ref.as_deref() == Some(row.name.as_str()))
            .map(|i| i.name)
            .collect();
        Ok(Kernel {
            name: row.name.clone(),
            version: row.version.clone(),
            dir: PathBuf::from(&row.dir),
            vmlinux: row.vmlinux.as_ref().map(PathBuf::from),
            vmlinuz: row.vmlinuz.as_ref().map(PathBuf::from),
            initrd: row.initrd.as_ref().map(PathBuf::from),
            modules: row.modules.as_ref().map(PathBuf::from),
            sha256: row.sha256.clone(),
            source: row.source.clone(),
            created_at: row.created_at.clone(),
            used_by,
        })
    }

    pub fn find_kernel(&self, name: &str) -> Result<KernelRow, OpError> {
        self.db(|s| s.get_kernel(name))?
            .ok_or_else(|| OpError::KernelNotFound {
                name: name.to_string(),
            })
    }
}

/// Imports a kernel found under `req.from`.
pub async fn import(state: Arc<AppState>, req: ImportKernel) -> Result<Kernel, OpError> {
    banger_core::names::validate_kernel_name(&req.name)?;
    if !req.from.is_absolute() || !req.from.is_dir() {
        return Err(OpError::KernelTreeNotADir {
            path: req.from.clone(),
        });
    }
    let _g = state.locks.images().await;
    if !req.force && state.db(|s| s.get_kernel(&req.name))?.is_some() {
        return Err(OpError::KernelNameTaken { name: req.name });
    }
    let store = state.kernels_dir();
    let (name, from, version, force) = (req.name.clone(), req.from.clone(), req.version, req.force);
    let manifest = tokio::task::spawn_blocking(move || {
        let found = banger_kernel::find_kernel(&from, version.as_deref())?;
        std::fs::create_dir_all(&store).map_err(|source| banger_kernel::KernelError::Write {
            path: store.clone(),
            source,
        })?;
        let source = format!("import from {}", from.display());
        banger_kernel::import(&found, &name, &store, &source, force)
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(|source| OpError::Kernel {
        name: req.name.clone(),
        source: Box::new(source),
    })?;
    record(&state, &manifest)
}

/// Writes (or replaces) the row of a kernel just stored, from its manifest.
pub(crate) fn record(
    state: &AppState,
    manifest: &banger_kernel::KernelManifest,
) -> Result<Kernel, OpError> {
    let dir = banger_kernel::kernel_dir(&state.kernels_dir(), &manifest.name);
    let at = |rel: &Option<String>| rel.as_ref().map(|r| dir.join(r).display().to_string());
    let row = KernelRow {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        dir: dir.display().to_string(),
        vmlinux: Some(dir.join(&manifest.files.vmlinux).display().to_string()),
        vmlinuz: at(&manifest.files.vmlinuz),
        initrd: at(&manifest.files.initrd),
        modules: at(&manifest.files.modules),
        sha256: manifest.sha256.clone(),
        source: manifest.source.clone(),
        created_at: state.now(),
    };
    state.db(|s| s.upsert_kernel(&row))?;
    tracing::info!(kernel = %row.name, version = %row.version, "kernel imported");
    state.kernel_view(&row)
}

/// Every imported kernel, by name.
pub fn list(state: &AppState) -> Result<Vec<Kernel>, OpError> {
    let rows = state.db(|s| s.list_kernels())?;
    rows.iter().map(|r| state.kernel_view(r)).collect()
}

/// The kernel named `name`.
pub fn show(state: &AppState, name: &str) -> Result<Kernel, OpError> {
    state.kernel_view(&state.find_kernel(name)?)
}

/// Removes a kernel; refused while an image boots it.
pub async fn remove(state: Arc<AppState>, name: &str) -> Result<Deleted, OpError> {
    let _g = state.locks.images().await;
    let row = state.find_kernel(name)?;
    let view = state.kernel_view(&row)?;
    if !view.used_by.is_empty() {
        return Err(OpError::KernelInUse {
            name: row.name,
            images: view.used_by,
        });
    }
    state.db(|s| s.delete_kernel(&row.name))?;
    let store = state.kernels_dir();
    let n = row.name.clone();
    let removed = tokio::task::spawn_blocking(move || banger_kernel::remove(&store, &n)).await;
    if let Ok(Err(e)) = removed {
        tracing::warn!(kernel = %row.name, error = %chain(&e), "cannot remove kernel files");
    }
    Ok(Deleted { deleted: row.name })
}
