//! Image and kernel catalogs: the documents in config `catalogs` (in that order) and then
//! the one embedded in banger, the first naming an entry winning; pulling from them, and
//! writing a catalog for an image (`image export`).
//!
//! A pull is pure I/O: the file is fetched into the scratch dir with its size and sha256
//! verified while it streams ([`banger_catalog::fetch_verified`], capped at config
//! `max_image_size`), then taken in as a local file would be: a bundle through
//! [`register_bundle`] (the kernel: the caller's `kernel_ref`, else the bundle manifest's,
//! pulled from the kernel catalogs when it is not local), a kernel tarball unpacked by
//! banger-image's flattener (paths escaping the tree, writes through symlinks refused) and
//! stored by `banger_kernel::import` with source `pull:<url>` (its `vmlinux` hashed anew).
//! The fetched file is removed when the pull ends, whatever the outcome; a failed pull
//! leaves no image or kernel directory and no row.

use std::path::Path;
use std::sync::Arc;

use banger_api::types::{
    CatalogImage, CatalogKernel, CatalogListing, CatalogState, ExportImage, ExportedImage, Image,
    Kernel, PullKernel,
};
use banger_catalog::{Catalog, CatalogError, Expect, ImageEntry, KernelEntry, Location};
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{image_err, register_bundle};
use crate::error::OpError;
use crate::progress::Progress;
use crate::state::AppState;

/// Where a loaded document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The document compiled into banger.
    Embedded,
    /// A document of config `catalogs`.
    At(Location),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("embedded"),
            Self::At(l) => write!(f, "{l}"),
        }
    }
}

impl Source {
    /// An entry's `url` resolved against this document (the embedded one has only
    /// absolute URLs).
    fn join(&self, url: &str) -> Result<Location, CatalogError> {
        match self {
            Self::At(l) => l.join(url),
            Self::Embedded => Location::parse(url),
        }
    }
}

/// An entry found in a catalog, with where its file is.
#[derive(Debug, Clone)]
pub struct Found<E> {
    pub entry: E,
    pub from: Location,
    pub catalog: Source,
}

fn catalog_err(what: String) -> impl FnOnce(CatalogError) -> OpError {
    move |source| OpError::Catalog {
        what,
        source: Box::new(source),
    }
}

fn client(state: &AppState) -> Result<reqwest::Client, OpError> {
    banger_catalog::http_client(&format!("banger/{}", state.opts.build.version))
        .map_err(catalog_err("catalogs".to_string()))
}

/// Every catalog, in search order: config `catalogs`, then the embedded one. A document
/// that cannot be read or checked is an error naming it.
pub async fn load(state: &AppState) -> Result<Vec<(Source, Catalog)>, OpError> {
    let client = client(state)?;
    let mut out = Vec::new();
    for value in &state.opts.config.catalogs {
        let what = format!("catalog {value}");
        let at = Location::parse(value).map_err(catalog_err(what.clone()))?;
        let doc = banger_catalog::read_document(&client, &at)
            .await
            .map_err(catalog_err(what))?;
        out.push((Source::At(at), doc));
    }
    out.push((Source::Embedded, banger_catalog::embedded()));
    Ok(out)
}

fn first<E: Clone>(
    docs: &[(Source, Catalog)],
    pick: impl Fn(&Catalog) -> Option<&E>,
    url: impl Fn(&E) -> &str,
) -> Result<Option<Found<E>>, OpError> {
    for (source, doc) in docs {
        if let Some(e) = pick(doc) {
            let from = source
                .join(url(e))
                .map_err(catalog_err(format!("catalog {source}")))?;
            return Ok(Some(Found {
                entry: e.clone(),
                from,
                catalog: source.clone(),
            }));
        }
    }
    Ok(None)
}

/// The image `name` in the first catalog listing it.
pub async fn find_image(
    state: &AppState,
    name: &str,
) -> Result<Option<Found<ImageEntry>>, OpError> {
    let docs = load(state).await?;
    first(
        &docs,
        |d| d.images.iter().find(|e| e.name == name),
        |e| &e.url,
    )
}

/// The kernel `name` in the first catalog listing it.
pub async fn find_kernel(
    state: &AppState,
    name: &str,
) -> Result<Option<Found<KernelEntry>>, OpError> {
    let docs = load(state).await?;
    first(
        &docs,
        |d| d.kernels.iter().find(|e| e.name == name),
        |e| &e.url,
    )
}

/// `GET /v1/catalog`: every entry once (the first catalog naming it), with its state here.
pub async fn listing(state: &AppState) -> Result<CatalogListing, OpError> {
    let docs = load(state).await?;
    let images: Vec<String> = state
        .db(|s| s.list_images())?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let kernels: Vec<String> = state
        .db(|s| s.list_kernels())?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let here = |local: &[String], name: &str| {
        if local.iter().any(|n| n == name) {
            CatalogState::Pulled
        } else {
            CatalogState::Available
        }
    };
    let mut out = CatalogListing {
        images: Vec::new(),
        kernels: Vec::new(),
    };
    for (source, doc) in &docs {
        for e in &doc.images {
            if out.images.iter().all(|i| i.name != e.name) {
                out.images.push(CatalogImage {
                    name: e.name.clone(),
                    arch: e.arch.clone(),
                    size: e.size,
                    description: e.description.clone(),
                    kernel_ref: e.kernel_ref.clone(),
                    state: here(&images, &e.name),
                    catalog: source.to_string(),
                });
            }
        }
        for e in &doc.kernels {
            if out.kernels.iter().all(|k| k.name != e.name) {
                out.kernels.push(CatalogKernel {
                    name: e.name.clone(),
                    arch: e.arch.clone(),
                    size: e.size,
                    description: e.description.clone(),
                    state: here(&kernels, &e.name),
                    catalog: source.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Fetches an entry's file (`sha256`, `size`) from `from` into the scratch dir, verified,
/// announced and reported under `stage` (`pull image`, `pull kernel`) for `name`.
#[allow(clippy::too_many_arguments)]
async fn fetch(
    state: &AppState,
    stage: &'static str,
    name: &str,
    from: &Location,
    (sha256, size): (&str, u64),
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<tempfile::TempPath, OpError> {
    progress.stage(stage, format!("{name} from {from} ({size} bytes)"));
    let expect = Expect {
        sha256: sha256.to_string(),
        size,
    };
    let client = client(state)?;
    let dir = state.scratch_dir();
    let max = state.opts.config.max_image_size.bytes();
    let p = progress.clone();
    let total_mib = size as f64 / f64::from(1 << 20);
    let mut report = move |done: u64, _total: u64| {
        p.stage(
            stage,
            format!(
                "{:.1} of {total_mib:.1} MiB",
                done as f64 / f64::from(1 << 20)
            ),
        );
    };
    tokio::select! {
        r = banger_catalog::fetch_verified(&client, from, &dir, &expect, max, &mut report) => {
            r.map_err(catalog_err(format!("{stage} {name}")))
        }
        () = cancel.cancelled() => Err(OpError::Cancelled),
    }
}

/// What a catalog image pull may override.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullImage {
    /// The local name [default: the entry's].
    pub name: Option<String>,
    /// The kernel [default: the bundle manifest's `kernel_ref`].
    pub kernel_ref: Option<String>,
}

/// `image pull NAME` for a catalog name: the image `name` from the first catalog listing
/// it, registered as `opts.name` (default `name`); not in any catalog → `NotInCatalog`.
pub async fn pull_image_named(
    state: Arc<AppState>,
    name: &str,
    opts: PullImage,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Image, OpError> {
    banger_core::names::validate_image_name(name)?;
    let found = find_image(&state, name)
        .await?
        .ok_or_else(|| OpError::NotInCatalog {
            kind: "image",
            name: name.to_string(),
        })?;
    pull_image(&state, &found, opts, &progress, &cancel).await
}

/// Pulls the image bundle of a catalog entry and registers it (see the module docs).
pub async fn pull_image(
    state: &Arc<AppState>,
    found: &Found<ImageEntry>,
    opts: PullImage,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Image, OpError> {
    let name = state.free_image_name(opts.name.unwrap_or_else(|| found.entry.name.clone()))?;
    let e = &found.entry;
    let bundle = fetch(
        state,
        "pull image",
        &name,
        &found.from,
        (&e.sha256, e.size),
        progress,
        cancel,
    )
    .await?;
    let registered = import_bundle(state, &bundle, &name, opts.kernel_ref, progress, cancel).await;
    drop(bundle);
    let image = registered?;
    tracing::info!(image = %image.name, from = %found.from, "image pulled from a catalog");
    Ok(image)
}

/// Registers the downloaded bundle `bundle` as `name`, booting `kernel_ref` (default: the
/// bundle manifest's), pulled from the kernel catalogs when it is not local; a kernel pulled
/// for an image that then fails to register is removed again. Shared by catalog and OCI
/// artifact pulls.
pub async fn import_bundle(
    state: &Arc<AppState>,
    bundle: &std::path::Path,
    name: &str,
    kernel_ref: Option<String>,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Image, OpError> {
    let b = bundle.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || banger_image::bundle::read_manifest(&b))
        .await
        .map_err(|e| OpError::Join(e.to_string()))?
        .map_err(image_err("read bundle"))?;
    let kernel = kernel_ref.unwrap_or(manifest.kernel_ref);
    let pulled_kernel = ensure_kernel(state, &kernel, progress, cancel).await?;
    let registered = if cancel.is_cancelled() {
        Err(OpError::Cancelled)
    } else {
        progress.stage("register", format!("{name} (kernel {kernel})"));
        register_bundle(state, bundle, Some(name), Some(&kernel)).await
    };
    match registered {
        Ok(image) => Ok(image),
        Err(e) => {
            // The kernel came with this image: it goes with it.
            if pulled_kernel && let Err(why) = crate::kernels::remove(state.clone(), &kernel).await
            {
                tracing::warn!(kernel, error = %crate::error::chain(&why), "cannot remove the kernel pulled for a failed image pull");
            }
            Err(e)
        }
    }
}

/// Makes sure the kernel `name` is local, pulling it from the kernel catalogs if not;
/// whether it was pulled.
async fn ensure_kernel(
    state: &Arc<AppState>,
    name: &str,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<bool, OpError> {
    if state.db(|s| s.get_kernel(name))?.is_some() {
        return Ok(false);
    }
    let Some(found) = find_kernel(state, name).await? else {
        return Err(OpError::BundleKernelMissing {
            kernel: name.to_string(),
        });
    };
    pull_kernel(state, &found, false, progress, cancel).await?;
    Ok(true)
}

/// `POST /v1/kernels/pull`: the kernel `req.name` from the kernel catalogs.
pub async fn pull_kernel_named(
    state: Arc<AppState>,
    req: PullKernel,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Kernel, OpError> {
    banger_core::names::validate_kernel_name(&req.name)?;
    if !req.force && state.db(|s| s.get_kernel(&req.name))?.is_some() {
        return Err(OpError::KernelNameTaken { name: req.name });
    }
    let found = find_kernel(&state, &req.name)
        .await?
        .ok_or(OpError::NotInCatalog {
            kind: "kernel",
            name: req.name.clone(),
        })?;
    pull_kernel(&state, &found, req.force, &progress, &cancel).await
}

/// Pulls a kernel tarball of a catalog entry into the kernel store (see the module docs).
pub async fn pull_kernel(
    state: &Arc<AppState>,
    found: &Found<KernelEntry>,
    force: bool,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Kernel, OpError> {
    let name = found.entry.name.clone();
    let e = &found.entry;
    let tarball = fetch(
        state,
        "pull kernel",
        &name,
        &found.from,
        (&e.sha256, e.size),
        progress,
        cancel,
    )
    .await?;
    let _g = state.locks.images().await;
    if !force && state.db(|s| s.get_kernel(&name))?.is_some() {
        return Err(OpError::KernelNameTaken { name });
    }
    let (scratch, store) = (state.scratch_dir(), state.kernels_dir());
    let (tar, n2, source) = (
        tarball.to_path_buf(),
        name.clone(),
        format!("pull:{}", found.from),
    );
    let max = state.opts.config.max_image_size.bytes();
    let manifest = tokio::task::spawn_blocking(move || {
        check_unpacked_size(&tar, &source, max)?;
        unpack_and_import(&tar, &scratch, &store, &n2, &source, force)
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))??;
    drop(tarball);
    progress.stage(
        "kernel",
        format!("{} ({})", manifest.name, manifest.version),
    );
    crate::kernels::record(state, &manifest)
}

/// Refuses a kernel tarball whose members add up to more than `max` bytes (a decompression
/// bomb), reading it once before anything is written; `source` names it.
fn check_unpacked_size(tar: &Path, source: &str, max: u64) -> Result<(), OpError> {
    let name = tar.display().to_string();
    let file = std::fs::File::open(tar).map_err(OpError::io("open", tar))?;
    let stream = banger_image::flatten::decompress(&name, Box::new(file))
        .map_err(image_err("unpack kernel tarball"))?;
    let mut archive = tar::Archive::new(stream);
    let unreadable = |e: std::io::Error| {
        image_err("unpack kernel tarball")(banger_image::ImageError::TarRead {
            tar: name.clone(),
            entry: None,
            source: e,
        })
    };
    let mut total = 0u64;
    for entry in archive.entries().map_err(unreadable)? {
        total = total.saturating_add(entry.map_err(unreadable)?.size());
        if total > max {
            return Err(OpError::UnpacksTooLarge {
                what: format!("kernel tarball {source}"),
                max,
            });
        }
    }
    Ok(())
}

/// Unpacks the kernel tarball `tar` into a private tree under `scratch` (removed at the
/// end) and stores the kernel found there as `name`.
fn unpack_and_import(
    tar: &Path,
    scratch: &Path,
    store: &Path,
    name: &str,
    source: &str,
    force: bool,
) -> Result<banger_kernel::KernelManifest, OpError> {
    let work = tempfile::Builder::new()
        .prefix("kernel-pull-")
        .tempdir_in(scratch)
        .map_err(OpError::io("create a work dir in", scratch))?;
    let root = work.path().join("tree");
    let mut tree = banger_image::Tree::create(&root).map_err(image_err("unpack kernel tarball"))?;
    tree.apply_tar(banger_image::flatten::TarInput::Path(tar.to_path_buf()))
        .map_err(image_err("unpack kernel tarball"))?;
    let kernel_err = |source| OpError::Kernel {
        name: name.to_string(),
        source: Box::new(source),
    };
    let found = banger_kernel::find_kernel(&root, None).map_err(kernel_err)?;
    std::fs::create_dir_all(store).map_err(OpError::io("create", store))?;
    banger_kernel::import(&found, name, store, source, force).map_err(kernel_err)
}

/// Packs the image `reference` as a bundle into `out` (what `image export` and
/// `image push` ship): its rootfs as is, with a manifest from its row; progress as `stage`.
pub async fn pack_image(
    state: &AppState,
    reference: &str,
    out: &std::path::Path,
    stage: &'static str,
    progress: &Progress,
) -> Result<banger_image::bundle::BundleInfo, OpError> {
    let row = state.find_image(reference)?;
    let kernel_ref = row
        .kernel_ref
        .clone()
        .ok_or_else(|| OpError::ExportNeedsKernelRef {
            name: row.name.clone(),
        })?;
    let manifest = banger_image::bundle::Manifest {
        name: row.name.clone(),
        distro: row.distro.clone().unwrap_or_else(|| "unknown".to_string()),
        arch: row
            .arch
            .clone()
            .unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        kernel_ref,
        description: row.description.clone().unwrap_or_default(),
        init: row.init,
    };
    let (rootfs, out, scratch) = (
        std::path::PathBuf::from(&row.rootfs),
        out.to_path_buf(),
        state.scratch_dir(),
    );
    let p = progress.clone();
    tokio::task::spawn_blocking(move || {
        banger_image::bundle::pack_bundle(manifest, &rootfs, &out, &scratch, &mut |m| {
            p.stage(stage, m)
        })
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(image_err(stage))
}

/// `image export`: the image's bundle and a one-entry catalog naming it, in `req.out`.
pub async fn export_image(
    state: Arc<AppState>,
    reference: &str,
    req: ExportImage,
    progress: Progress,
) -> Result<ExportedImage, OpError> {
    if !req.out.is_absolute() {
        return Err(OpError::InputNotAbsolute {
            what: "--out".to_string(),
            path: req.out,
        });
    }
    progress.stage("export", format!("{reference} to {}", req.out.display()));
    let info = pack_image(&state, reference, &req.out, "export", &progress).await?;
    let file_name = format!("{}.tar.zst", info.manifest.name);
    let doc = Catalog {
        images: vec![ImageEntry {
            name: info.manifest.name.clone(),
            arch: info.manifest.arch.clone(),
            url: file_name,
            sha256: info.sha256.clone(),
            size: info.size_bytes,
            description: info.manifest.description.clone(),
            kernel_ref: info.manifest.kernel_ref.clone(),
        }],
        ..Catalog::empty()
    };
    let catalog = req.out.join(format!("{}.catalog.json", info.manifest.name));
    let tmp = req
        .out
        .join(format!(".{}.catalog.json.tmp", info.manifest.name));
    std::fs::write(&tmp, doc.to_json()).map_err(OpError::io("write", &tmp))?;
    std::fs::rename(&tmp, &catalog).map_err(OpError::io("rename to", &catalog))?;
    progress.stage(
        "ready",
        format!("{} and {}", info.path.display(), catalog.display()),
    );
    Ok(ExportedImage {
        bundle: info.path,
        catalog,
        sha256: info.sha256,
        size: info.size_bytes,
    })
}
