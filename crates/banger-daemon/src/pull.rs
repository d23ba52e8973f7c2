//! `image pull`: an image from an OCI registry, registered as a managed image, and
//! `image cache prune`.
//!
//! What a pull reference means is decided in one place, [`resolve_source`], into a
//! [`PullSource`]; each source has its own path from there. A catalog name comes first: a
//! reference that is a valid image name and that some catalog lists is that catalog's
//! bundle ([`catalogs::pull_image`]: a verified download, no flatten or mkfs; a catalog
//! that cannot be read is an error, not a fall-through to a registry). Anything else is an
//! OCI reference.
//!
//! An OCI pull ([`pull_oci`]): the manifest (an index resolved to linux/amd64, see
//! [`banger_oci`]), then each layer from the layer cache (`state/cache/layers/sha256/<hex>`)
//! or downloaded into it, verified while streaming, then the layers go through the same
//! code as `image bootstrap` and `internal make-bundle` ([`banger_image::build_rootfs`]:
//! flatten with whiteouts, owners and modes re-applied, container markers dropped, the
//! guest payload injected, `mkfs.ext4 -d`), in a temporary directory of the daemon's
//! scratch dir, capped at config `max_image_size`. The image is registered like any
//! managed one ([`images::register_from`]: staging directory renamed into place, the row
//! last), so a failure at any step leaves no image directory or row; a blob that failed
//! verification leaves no file in the cache. The image's directory keeps
//! `oci-source.json` (the reference, the manifest digest, the layer digests): the layers
//! it lists are the ones `image cache prune` keeps.
//!
//! An OCI reference whose manifest is a banger bundle artifact (pushed by `image push`,
//! [`push`]; see [`banger_oci::ManifestKind::Bundle`]) is a [`PullSource::Artifact`]: its
//! one blob is downloaded, digest verified, into a temporary directory of the scratch dir
//! and imported like a catalog bundle ([`catalogs::import_bundle`]; only `--name` and
//! `--kernel-ref` apply); the temporary directory goes whatever happens.
//!
//! Progress: `resolve`, then per layer `download` ticks (bytes, total, rate; a terminal
//! redraws them in place) and one `layer` line when it is in the cache, then `flatten`,
//! `payload`, `ext4`, `register`, `ready`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::types::{CachePruned, Image, PullImage, PushImage, PushedImage, RegisterImage};
use banger_core::size::ByteSize;
use banger_oci::{LayerCache, LayerProgress, OciReference, Registry, RegistryOptions};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{agent_bin, image_err};
use crate::catalogs;
use crate::error::OpError;
use crate::images::{self, RootfsFrom};
use crate::progress::Progress;
use crate::state::AppState;

/// The file in an image's directory recording what it was pulled from.
pub const SOURCE_FILE: &str = "oci-source.json";

/// What a pull reference names.
#[derive(Debug)]
pub enum PullSource {
    /// An image bundle a catalog lists.
    Catalog(Box<catalogs::Found<banger_catalog::ImageEntry>>),
    /// An image in an OCI registry.
    Oci(Box<Remote>),
    /// A banger image bundle stored in an OCI registry by `image push`: its one layer.
    Artifact(Box<Remote>, banger_oci::Layer),
}

/// A reference in a registry, its manifest resolved once: the pull goes on with the same
/// client (and the token it got) and the same manifest.
#[derive(Debug)]
pub struct Remote {
    pub reference: OciReference,
    pub registry: Registry,
    pub resolved: banger_oci::Resolved,
}

/// Decides what `reference` names (the one place this is decided): a catalog's image when
/// it is an image name some catalog lists, else an OCI reference.
pub async fn resolve_source(state: &AppState, reference: &str) -> Result<PullSource, OpError> {
    if banger_core::names::validate_image_name(reference).is_ok()
        && let Some(found) = catalogs::find_image(state, reference).await?
    {
        return Ok(PullSource::Catalog(Box::new(found)));
    }
    let r = banger_oci::parse_reference(reference).map_err(oci)?;
    let registry = Registry::for_reference(&r, &registry_options(state)).map_err(oci)?;
    let resolved = registry.resolve(&r).await.map_err(oci)?;
    let bundle = match (resolved.kind, resolved.layers.first()) {
        (banger_oci::ManifestKind::Bundle, Some(layer)) => Some(layer.clone()),
        _ => None,
    };
    let remote = Box::new(Remote {
        reference: r,
        registry,
        resolved,
    });
    Ok(match bundle {
        Some(layer) => PullSource::Artifact(remote, layer),
        None => PullSource::Oci(remote),
    })
}

fn oci(e: banger_oci::OciError) -> OpError {
    OpError::Oci(Box::new(e))
}

/// What `oci-source.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SourceRecord {
    reference: String,
    manifest_digest: String,
    layers: Vec<String>,
}

/// The layer cache under the state dir.
fn layer_cache(state: &AppState) -> LayerCache {
    LayerCache::new(state.opts.layout.state_dir.join("cache").join("layers"))
}

/// `image pull`: see the module docs.
pub async fn pull(
    state: Arc<AppState>,
    req: PullImage,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Image, OpError> {
    match resolve_source(&state, &req.reference).await? {
        PullSource::Catalog(found) => {
            refuse_bundle_flags(&req, &found.entry.name)?;
            let opts = catalogs::PullImage {
                name: req.name,
                kernel_ref: req.kernel_ref,
            };
            catalogs::pull_image(&state, &found, opts, &progress, &cancel).await
        }
        PullSource::Oci(r) => pull_oci(state, req, *r, progress, cancel).await,
        PullSource::Artifact(r, layer) => {
            refuse_bundle_flags(&req, &r.reference.whole())?;
            pull_artifact(state, req, *r, layer, progress, cancel).await
        }
    }
}

/// A bundle is finished: its rootfs, init and kernel_ref come with it, so only `--name`
/// and `--kernel-ref` apply.
fn refuse_bundle_flags(req: &PullImage, name: &str) -> Result<(), OpError> {
    let refused = [
        (req.kernel.is_some(), "--kernel"),
        (req.initrd.is_some(), "--initrd"),
        (req.modules.is_some(), "--modules"),
        (req.size.is_some(), "--size"),
        (req.init.is_some(), "--init"),
    ];
    match refused.into_iter().find(|(given, _)| *given) {
        Some((_, flag)) => Err(OpError::CatalogPullFlag {
            name: name.to_string(),
            flag,
        }),
        None => Ok(()),
    }
}

/// `image pull REF` of a bundle artifact: see the module docs.
async fn pull_artifact(
    state: Arc<AppState>,
    req: PullImage,
    Remote {
        reference,
        registry,
        ..
    }: Remote,
    layer: banger_oci::Layer,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Image, OpError> {
    let name = state.free_image_name(
        req.name
            .clone()
            .unwrap_or_else(|| banger_oci::derived_name(&reference)),
    )?;
    let max = state.opts.config.max_image_size;
    if layer.size > max.bytes() {
        return Err(OpError::ImageTooLarge {
            size: ByteSize(layer.size),
            max,
        });
    }
    let scratch = state.scratch_dir();
    let work = tempfile::Builder::new()
        .prefix("pull-bundle-")
        .tempdir_in(&scratch)
        .map_err(OpError::io("create a work dir in", &scratch))?;
    // A private one-blob cache: the blob lands in it only once verified.
    let cache = LayerCache::new(work.path().to_path_buf());
    progress.stage(
        "resolve",
        format!("{} (bundle {})", reference.whole(), ByteSize(layer.size)),
    );
    let p = progress.clone();
    let mut report = move |lp: LayerProgress<'_>| layer_progress(&p, &lp);
    let bundle = tokio::select! {
        r = registry.fetch_layer(&reference, &layer, (1, 1), &cache, &mut report) => r.map_err(oci)?,
        () = cancel.cancelled() => return Err(OpError::Cancelled),
    };
    let image =
        catalogs::import_bundle(&state, &bundle, &name, req.kernel_ref, &progress, &cancel).await?;
    drop(work);
    tracing::info!(image = %image.name, from = %reference.whole(), "image pulled from a bundle artifact");
    progress.stage(
        "ready",
        format!("ready in {:.1}s", progress.elapsed().as_secs_f64()),
    );
    Ok(image)
}

/// `image push NAME REF`: the image's bundle (as `image export` packs it) stored at `REF`
/// as a banger bundle artifact.
pub async fn push(
    state: Arc<AppState>,
    name: &str,
    req: PushImage,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<PushedImage, OpError> {
    let reference = banger_oci::parse_reference(&req.reference).map_err(oci)?;
    state.find_image(name)?;
    let registry = Registry::for_reference(&reference, &registry_options(&state)).map_err(oci)?;
    let scratch = state.scratch_dir();
    let work = tempfile::Builder::new()
        .prefix("push-")
        .tempdir_in(&scratch)
        .map_err(OpError::io("create a work dir in", &scratch))?;
    progress.stage("pack", format!("{name} for {}", reference.whole()));
    let info = catalogs::pack_image(&state, name, work.path(), "pack", &progress).await?;
    let manifest_json = serde_json::to_vec(&info.manifest)
        .map_err(|e| OpError::Join(format!("encoding the bundle manifest: {e}")))?;
    let bytes = tokio::fs::read(&info.path)
        .await
        .map_err(OpError::io("read", &info.path))?;
    progress.stage(
        "push",
        format!("{} to {}", ByteSize(info.size_bytes), reference.whole()),
    );
    let manifest_url = tokio::select! {
        r = registry.push_bundle(&reference, manifest_json, bytes) => r.map_err(oci)?,
        () = cancel.cancelled() => return Err(OpError::Cancelled),
    };
    drop(work);
    progress.stage("ready", manifest_url.clone());
    Ok(PushedImage {
        reference: reference.whole(),
        manifest_url,
        bundle_digest: format!("sha256:{}", info.sha256),
        size: info.size_bytes,
    })
}

/// The kernel a pulled image boots, and the modules its rootfs gets.
struct KernelChoice {
    kernel_ref: Option<String>,
    modules_dir: Option<PathBuf>,
}

fn choose_kernel(state: &AppState, req: &PullImage) -> Result<KernelChoice, OpError> {
    req.check_kernel_source()?;
    if req.kernel.is_some() {
        images::check_kernel_files(
            req.kernel.as_deref(),
            req.initrd.as_deref(),
            req.modules.as_deref(),
        )?;
        return Ok(KernelChoice {
            kernel_ref: None,
            modules_dir: req.modules.clone(),
        });
    }
    let kernel = crate::bootstrap::kernel_or_latest(state, req.kernel_ref.as_deref())?;
    Ok(KernelChoice {
        kernel_ref: Some(kernel.name.clone()),
        modules_dir: kernel.modules.as_ref().map(PathBuf::from),
    })
}

/// The registry options of this daemon: config `insecure_registries`, the owner's
/// `~/.docker/config.json`.
fn registry_options(state: &AppState) -> RegistryOptions {
    RegistryOptions {
        insecure_registries: state.opts.config.insecure_registries.clone(),
        docker_config: state
            .opts
            .home
            .as_ref()
            .map(|h| h.join(".docker").join("config.json")),
        user_agent: concat!("banger/", env!("CARGO_PKG_VERSION")),
    }
}

async fn pull_oci(
    state: Arc<AppState>,
    req: PullImage,
    Remote {
        reference,
        registry,
        resolved,
    }: Remote,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Image, OpError> {
    let name = state.free_image_name(
        req.name
            .clone()
            .unwrap_or_else(|| banger_oci::derived_name(&reference)),
    )?;
    let max = state.opts.config.max_image_size;
    if let Some(size) = req.size
        && size > max.bytes()
    {
        return Err(OpError::ImageTooLarge {
            size: ByteSize(size),
            max,
        });
    }
    let kernel = choose_kernel(&state, &req)?;
    let agent = agent_bin(&state)?;
    let cache = layer_cache(&state);
    let _cache_guard = state.locks.layer_cache_shared().await;

    progress.stage("resolve", reference.whole());
    let layer_paths = tokio::select! {
        r = fetch_layers(&registry, &reference, &resolved, &cache, &progress) => r?,
        () = cancel.cancelled() => return Err(OpError::Cancelled),
    };

    let scratch = state.scratch_dir();
    let work = tempfile::Builder::new()
        .prefix("pull-")
        .tempdir_in(&scratch)
        .map_err(OpError::io("create a work dir in", &scratch))?;
    let rootfs = work.path().join("rootfs.ext4");
    let opts = banger_image::RootfsOptions {
        size: req.size,
        agent_bin: agent,
        modules_dir: kernel.modules_dir.clone(),
        max_tree_bytes: Some(max.bytes()),
        init: req.init,
    };
    let tars = layer_paths
        .iter()
        .cloned()
        .map(banger_image::TarInput::Path)
        .collect();
    let (runner, p, w, r) = (
        state.host.runner.clone(),
        progress.clone(),
        work.path().to_path_buf(),
        rootfs.clone(),
    );
    let build = tokio::task::spawn_blocking(move || {
        banger_image::build_rootfs(runner.as_ref(), tars, &opts, &w, &r, &mut |m| {
            p.stage(build_stage(m), m)
        })
    });
    let report = tokio::select! {
        r = build => r.map_err(|e| OpError::Join(e.to_string()))?.map_err(image_err("flatten"))?,
        () = cancel.cancelled() => return Err(OpError::Cancelled),
    };
    for (reason, count) in &report.skipped {
        progress.stage(
            "flatten",
            format!("warning: {count} entries skipped ({reason})"),
        );
    }

    let record = SourceRecord {
        reference: reference.whole(),
        manifest_digest: resolved.manifest_digest.clone(),
        layers: resolved.layers.iter().map(|l| l.digest.clone()).collect(),
    };
    let mut record_json = serde_json::to_vec_pretty(&record)
        .map_err(|e| OpError::Join(format!("encoding {SOURCE_FILE}: {e}")))?;
    record_json.push(b'\n');
    progress.stage(
        "register",
        format!("{name} ({})", ByteSize(report.size_bytes)),
    );
    let image = images::register_from(
        state.clone(),
        RegisterImage {
            name,
            rootfs,
            kernel: req.kernel.clone(),
            initrd: req.initrd.clone(),
            modules: req.modules.clone(),
            kernel_ref: kernel.kernel_ref,
            description: Some(format!(
                "pulled from {} ({})",
                reference.whole(),
                resolved.manifest_digest
            )),
        },
        RootfsFrom::Built {
            extra_files: vec![(SOURCE_FILE, record_json)],
            init: report.guest.init,
        },
    )
    .await?;
    drop(work);
    progress.stage(
        "ready",
        format!("ready in {:.1}s", progress.elapsed().as_secs_f64()),
    );
    Ok(image)
}

/// The stage a [`banger_image::build_rootfs`] message belongs to.
fn build_stage(message: &str) -> &'static str {
    if message.starts_with("flattening") || message.starts_with("tar ") {
        "flatten"
    } else if message.starts_with("adding the guest payload") {
        "payload"
    } else {
        "ext4"
    }
}

/// Every layer of the resolved manifest in the cache (downloaded when missing).
async fn fetch_layers(
    registry: &Registry,
    reference: &OciReference,
    resolved: &banger_oci::Resolved,
    cache: &LayerCache,
    progress: &Progress,
) -> Result<Vec<PathBuf>, OpError> {
    let total: u64 = resolved.layers.iter().map(|l| l.size).sum();
    progress.stage(
        "resolve",
        format!(
            "{} ({} layers, {})",
            resolved.manifest_digest,
            resolved.layers.len(),
            ByteSize(total)
        ),
    );
    let count = resolved.layers.len();
    let mut paths = Vec::with_capacity(count);
    for (i, layer) in resolved.layers.iter().enumerate() {
        let p = progress.clone();
        let mut report = move |lp: LayerProgress<'_>| layer_progress(&p, &lp);
        let path = registry
            .fetch_layer(reference, layer, (i + 1, count), cache, &mut report)
            .await
            .map_err(oci)?;
        paths.push(path);
    }
    Ok(paths)
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn layer_progress(progress: &Progress, lp: &LayerProgress<'_>) {
    let head = format!("{}/{} {}", lp.index, lp.count, short(lp.digest));
    if lp.cached {
        progress.stage("layer", format!("{head} {} (cached)", ByteSize(lp.total)));
    } else if lp.finished {
        progress.stage(
            "layer",
            format!(
                "{head} {} downloaded ({}/s)",
                ByteSize(lp.total),
                ByteSize(lp.rate as u64)
            ),
        );
    } else {
        progress.stage(
            "download",
            format!(
                "{head} {} / {} ({}/s)",
                ByteSize(lp.done),
                ByteSize(lp.total),
                ByteSize(lp.rate as u64)
            ),
        );
    }
}

/// The layers some image was pulled from (its `oci-source.json`).
fn layers_in_use(state: &AppState) -> Result<HashSet<String>, OpError> {
    let mut keep = HashSet::new();
    for row in state.db(|s| s.list_images())? {
        let path = Path::new(&row.dir).join(SOURCE_FILE);
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        match serde_json::from_slice::<SourceRecord>(&text) {
            Ok(record) => keep.extend(record.layers),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "unreadable pull record"),
        }
    }
    Ok(keep)
}

/// `image cache prune`: removes the cached layers no image was pulled from.
pub async fn prune(state: Arc<AppState>) -> Result<CachePruned, OpError> {
    let _cache = state.locks.layer_cache_exclusive().await;
    let _images = state.locks.images().await;
    let keep = layers_in_use(&state)?;
    let cache = layer_cache(&state);
    let (pruned, kept) = tokio::task::spawn_blocking(move || {
        let pruned = cache.prune(&keep)?;
        Ok::<_, banger_oci::OciError>((pruned, cache.list()?.len()))
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(oci)?;
    tracing::info!(
        removed = pruned.removed.len(),
        freed = pruned.freed_bytes,
        "layer cache pruned"
    );
    Ok(CachePruned {
        removed: pruned.removed,
        freed_bytes: pruned.freed_bytes,
        kept,
    })
}
