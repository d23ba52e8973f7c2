//! Images built by banger itself: `image bootstrap` (the pinned `mise` from the npm registry
//! `npm_registry`, cached → Debian packages → mmdebstrap tar → both tars flattened into a
//! bundle → managed image) and `image import` (a bundle file → managed image).
//!
//! A bundle is unpacked into `images/<id>` through a staging directory, so a failed import
//! leaves nothing; the row is written last. The bundle file is checked like any input
//! file ([`check_input_file`]) and its unpacked rootfs must pass `e2fsck -fn`
//! ([`check_rootfs`]) before any row is written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::types::{BootstrapImage, Image, ImportBundle};
use banger_store::ImageRow;
use tokio_util::sync::CancellationToken;

use crate::error::OpError;
use crate::images::{InputKind, check_input_file, check_rootfs};
use crate::progress::Progress;
use crate::state::AppState;

/// The static guest agent to inject, checked.
pub(crate) fn agent_bin(state: &AppState) -> Result<PathBuf, OpError> {
    let Some(path) = state.opts.agent_bin.clone() else {
        return Err(OpError::AgentBinMissing);
    };
    match banger_core::elf::is_static(&path) {
        Ok(true) => Ok(path),
        Ok(false) => Err(OpError::AgentBinDynamic { path }),
        Err(why) => Err(OpError::AgentBinUnreadable { path, why }),
    }
}

pub(crate) fn image_err(what: &'static str) -> impl FnOnce(banger_image::ImageError) -> OpError {
    move |source| OpError::Image {
        what,
        source: Box::new(source),
    }
}

/// The kernel `name`, or without one the most recently imported kernel.
pub(crate) fn kernel_or_latest(
    state: &AppState,
    name: Option<&str>,
) -> Result<banger_store::KernelRow, OpError> {
    match name {
        Some(k) => state.find_kernel(k),
        None => {
            let mut all = state.db(|s| s.list_kernels())?;
            all.sort_by(|a, b| a.created_at.cmp(&b.created_at));
            all.pop().ok_or(OpError::NoKernelImported)
        }
    }
}

/// Builds `debian-<suite>` from Debian packages and registers it.
pub async fn bootstrap(
    state: Arc<AppState>,
    req: BootstrapImage,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Image, OpError> {
    banger_core::names::validate_image_name(&req.name)?;
    let suite = req
        .name
        .strip_prefix("debian-")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OpError::NotBootstrappable {
            name: req.name.clone(),
        })?
        .to_string();
    if state.find_image(&req.name).is_ok() {
        return Err(OpError::ImageNameTaken { name: req.name });
    }
    let kernel = kernel_or_latest(&state, req.kernel_ref.as_deref())?;
    let agent = agent_bin(&state)?;
    progress.stage("kernel", format!("{} ({})", kernel.name, kernel.version));
    let cache = state.opts.layout.state_dir.join("cache");
    let work = tempfile::Builder::new()
        .prefix("bootstrap-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in({
            std::fs::create_dir_all(&cache).map_err(OpError::io("create", &cache))?;
            &cache
        })
        .map_err(OpError::io("create a work dir in", &cache))?;
    let tar = work.path().join("rootfs.tar");
    let runner = state.host.runner.clone();
    let mise_tar = fetch_mise(&state, &cache, work.path(), &progress, &cancel).await?;
    let spec = banger_image::bootstrap::DebianBootstrap::new(&suite);
    progress.stage("mmdebstrap", format!("Debian {suite} from Debian packages"));
    let p = progress.clone();
    let tar2 = tar.clone();
    let r2 = runner.clone();
    tokio::task::spawn_blocking(move || {
        banger_image::bootstrap::debian_rootfs_tar(r2.as_ref(), &spec, &tar2, &mut |m| {
            p.stage("mmdebstrap", m)
        })
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(image_err("mmdebstrap"))?;
    if cancel.is_cancelled() {
        return Err(OpError::Cancelled);
    }
    progress.stage(
        "make bundle",
        "rootfs tar to ext4 with the guest agent and units",
    );
    let bundles = state.opts.layout.state_dir.join("bundles");
    let req2 = banger_image::bundle::MakeBundle {
        rootfs_tars: vec![
            banger_image::flatten::TarInput::Path(tar),
            banger_image::flatten::TarInput::Path(mise_tar),
        ],
        name: req.name.clone(),
        distro: format!("debian-{suite}"),
        arch: std::env::consts::ARCH.to_string(),
        kernel_ref: kernel.name.clone(),
        description: format!("Debian {suite} built by banger from Debian packages"),
        size: req.size,
        agent_bin: agent,
        modules_dir: kernel.modules.as_ref().map(PathBuf::from),
        // Debian with systemd: detected.
        init: None,
        out_dir: bundles,
        work_dir: work.path().to_path_buf(),
    };
    let p = progress.clone();
    let bundle = tokio::task::spawn_blocking(move || {
        banger_image::bundle::make_bundle(runner.as_ref(), req2, &mut |m| p.stage("make bundle", m))
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(image_err("make bundle"))?;
    drop(work);
    if cancel.is_cancelled() {
        return Err(OpError::Cancelled);
    }
    progress.stage(
        "register",
        format!(
            "{} ({} bytes, sha256 {})",
            bundle.path.display(),
            bundle.size_bytes,
            bundle.sha256
        ),
    );
    let image = register_bundle(&state, &bundle.path, None, None).await?;
    progress.stage(
        "ready",
        format!("ready in {:.1}s", progress.elapsed().as_secs_f64()),
    );
    Ok(image)
}

/// The pinned `mise` from the configured npm registry (the cache first), as a one-entry tar
/// in `work` to flatten over the Debian tree.
async fn fetch_mise(
    state: &Arc<AppState>,
    cache: &Path,
    work: &Path,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<PathBuf, OpError> {
    use banger_image::mise;
    let req = mise::MiseRequest::new(&state.opts.config.npm_registry, cache);
    progress.stage(
        "mise",
        format!(
            "{} {} from {}",
            mise::MISE_PACKAGE,
            req.version,
            req.registry
        ),
    );
    let client = mise::http_client(&format!("banger/{}", state.opts.build.version))
        .map_err(|e| image_err("mise")(e.into()))?;
    let p = progress.clone();
    let mut report = move |m: &str| p.stage("mise", m);
    let fetched = tokio::select! {
        r = mise::fetch(&client, &req, state.host.runner.clone(), &mut report) => r,
        () = cancel.cancelled() => return Err(OpError::Cancelled),
    };
    let binary = fetched.map_err(|e| image_err("mise")(e.into()))?;
    let out = work.join("mise.tar");
    let o2 = out.clone();
    tokio::task::spawn_blocking(move || mise::layer_tar(&binary.path, &o2))
        .await
        .map_err(|e| OpError::Join(e.to_string()))?
        .map_err(image_err("mise"))?;
    Ok(out)
}

/// `image import`: registers a bundle file.
pub async fn import(state: Arc<AppState>, req: ImportBundle) -> Result<Image, OpError> {
    check_input_file("bundle", &req.path, InputKind::Any)?;
    register_bundle(
        &state,
        &req.path,
        req.name.as_deref(),
        req.kernel_ref.as_deref(),
    )
    .await
}

/// Unpacks `bundle` into a new image directory (its rootfs capped at config
/// `max_image_size`), checks it and writes the row; kernel: `kernel_ref`, else the
/// manifest's. Nothing is left on failure.
pub(crate) async fn register_bundle(
    state: &Arc<AppState>,
    bundle: &Path,
    name: Option<&str>,
    kernel_ref: Option<&str>,
) -> Result<Image, OpError> {
    if let Some(n) = name {
        banger_core::names::validate_image_name(n)?;
    }
    let _g = state.locks.images().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = state.opts.layout.state_dir.join("images").join(&id);
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new("/")))
        .map_err(OpError::io("create", &dir))?;
    let (b, d) = (bundle.to_path_buf(), dir.clone());
    let max = state.opts.config.max_image_size.bytes();
    let manifest = tokio::task::spawn_blocking(move || {
        banger_image::bundle::read_bundle_capped(&b, &d, None, max)
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(image_err("read bundle"))?;
    let cleanup = |dir: &Path| {
        let _ = std::fs::remove_dir_all(dir);
    };
    let rootfs = dir.join("rootfs.ext4");
    let (runner, r2, what) = (
        state.host.runner.clone(),
        rootfs.clone(),
        format!("the rootfs of bundle {}", bundle.display()),
    );
    let checked = tokio::task::spawn_blocking(move || check_rootfs(runner.as_ref(), &what, &r2))
        .await
        .map_err(|e| OpError::Join(e.to_string()))
        .and_then(|r| r);
    if let Err(e) = checked {
        cleanup(&dir);
        return Err(e);
    }
    let name = name.unwrap_or(&manifest.name).to_string();
    let kernel_ref = kernel_ref.unwrap_or(&manifest.kernel_ref).to_string();
    if state.find_image(&name).is_ok() {
        cleanup(&dir);
        return Err(OpError::ImageNameTaken { name });
    }
    if state.db(|s| s.get_kernel(&kernel_ref))?.is_none() {
        cleanup(&dir);
        return Err(OpError::BundleKernelMissing { kernel: kernel_ref });
    }
    let rootfs_bytes = std::fs::metadata(&rootfs)
        .map_err(OpError::io("stat", &rootfs))?
        .len();
    let row = ImageRow {
        id,
        name,
        dir: dir.display().to_string(),
        rootfs: rootfs.display().to_string(),
        rootfs_bytes,
        kernel: None,
        initrd: None,
        modules: None,
        kernel_ref: Some(kernel_ref),
        work_seed: None,
        distro: Some(manifest.distro.clone()).filter(|d| !d.is_empty()),
        arch: Some(manifest.arch.clone()).filter(|a| !a.is_empty()),
        description: Some(manifest.description.clone()).filter(|d| !d.is_empty()),
        created_at: state.now(),
        init: manifest.init,
    };
    if let Err(e) = state.db(|s| s.insert_image(&row)) {
        cleanup(&dir);
        return Err(OpError::image_insert(e));
    }
    tracing::info!(image = %row.name, bundle = %bundle.display(), "bundle registered");
    state.image_view(&row)
}
