//! banger's OCI registry client, over the `oci-client` crate.
//!
//! - [`parse_reference`]: an image reference as users write it; Docker Hub short names
//!   resolve as `docker.io/library/NAME` (`debian:bookworm`). [`derived_name`] turns it
//!   into a banger image name (`debian-bookworm`).
//! - [`Registry`]: one client for one pull. Plain HTTP is used only for registries listed
//!   in config `insecure_registries` and for loopback ones (`127.0.0.1:5000`,
//!   `localhost:5000`, `[::1]:5000`); everything else is HTTPS (rustls). Credentials come
//!   from a Docker `config.json` (`auths`: `auth` = base64 `user:password`, or `username` +
//!   `password`) the caller hands in by path; without one the pull is anonymous. The
//!   registry's challenge decides the scheme: a bearer token fetched from its realm with
//!   those credentials (or anonymously), or HTTP basic.
//! - [`Registry::resolve`]: the manifest (its digest checked against the registry's
//!   `Docker-Content-Digest` and a digest reference by `oci-client`), an image index
//!   resolved to `linux/amd64`, the layers in order.
//! - [`LayerCache`]: layer blobs stored content-addressed (`<root>/sha256/<hex>`), shared
//!   by every pull; [`Registry::fetch_layer`] streams a blob into a temporary file in the
//!   cache, hashing it and counting its bytes as they come: more bytes than the manifest
//!   declares, fewer, or a different sha256 is an error and the temporary file is removed.
//!   Only a verified blob is renamed into place. [`LayerCache::prune`] removes the blobs no
//!   image needs.
//!
//! - Bundles as artifacts: [`Registry::push_bundle`] stores a banger image bundle (the
//!   `.tar.zst` of `image export`) as an OCI artifact: artifactType and config media type
//!   [`BUNDLE_CONFIG_MEDIA_TYPE`] (the config blob is the bundle's manifest JSON), one
//!   layer of [`BUNDLE_LAYER_MEDIA_TYPE`]. [`Registry::resolve`] tells such a manifest
//!   apart ([`ManifestKind::Bundle`]); its one layer is fetched like any other.
//!
//! The library never prints: progress goes to a caller-supplied callback.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

pub use oci_client::Reference as OciReference;

/// What went wrong, with the reference, registry, blob or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{input:?} is not an image reference: {why}")]
    BadReference { input: String, why: String },
    #[error("reading registry credentials from {path}")]
    DockerConfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("fetching the manifest of {reference}")]
    Manifest {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference}: the image index has no linux/amd64 image (it has: {platforms})")]
    NoPlatform {
        reference: String,
        platforms: String,
    },
    #[error("{reference}: {why}")]
    Unsupported { reference: String, why: String },
    #[error("fetching blob {digest} of {reference}")]
    Blob {
        reference: String,
        digest: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("reading blob {digest} of {reference}: {why}")]
    BlobStream {
        reference: String,
        digest: String,
        why: String,
    },
    #[error(
        "blob {digest} of {reference} is larger than the {declared} bytes its manifest declares"
    )]
    BlobTooLong {
        reference: String,
        digest: String,
        declared: u64,
    },
    #[error(
        "blob {digest} of {reference} ended after {got} of the {declared} bytes its manifest declares"
    )]
    BlobTooShort {
        reference: String,
        digest: String,
        declared: u64,
        got: u64,
    },
    #[error(
        "blob {digest} of {reference} has sha256 {actual}: its content does not match its digest"
    )]
    DigestMismatch {
        reference: String,
        digest: String,
        actual: String,
    },
    #[error("pushing {reference}")]
    Push {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OciError {
        let path = path.to_path_buf();
        move |source| OciError::Io {
            action,
            path,
            source,
        }
    }
}

/// Parses an image reference; short names resolve on Docker Hub
/// (`debian:bookworm` → `docker.io/library/debian:bookworm`), no tag means `latest`.
pub fn parse_reference(input: &str) -> Result<Reference, OciError> {
    let bad = |why: String| OciError::BadReference {
        input: input.to_string(),
        why,
    };
    if input.is_empty() || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("empty or containing spaces".to_string()));
    }
    input.parse::<Reference>().map_err(|e| bad(e.to_string()))
}

/// The banger image name a reference gives when `--name` is not: the repository's last
/// component and the tag (`debian:bookworm` → `debian-bookworm`), or the first 12 hex
/// digits of the digest (`debian@sha256:ab…` → `debian-ab…`).
pub fn derived_name(reference: &Reference) -> String {
    let repo = reference.repository();
    let base = repo.rsplit('/').next().unwrap_or(repo);
    let suffix = match (reference.digest(), reference.tag()) {
        (Some(d), _) => d
            .split_once(':')
            .map_or(d, |(_, hex)| hex)
            .chars()
            .take(12)
            .collect(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    };
    let name: String = format!("{base}-{suffix}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_start_matches(['.', '-']).to_string()
}

/// Whether `registry` (`host[:port]`) is on loopback.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The credentials for `registry` in a Docker `config.json` (`auths`), if any.
pub fn docker_credentials(
    config: &Path,
    registry: &str,
) -> Result<Option<(String, String)>, OciError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| OciError::DockerConfig {
        path: config.to_path_buf(),
        source,
    };
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(Box::new(e))),
    };
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let file: File = serde_json::from_str(&text).map_err(|e| err(Box::new(e)))?;
    let wanted = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = key.split('/').next().unwrap_or(key);
        host == registry
            || (registry == "docker.io"
                && matches!(
                    host,
                    "index.docker.io" | "registry-1.docker.io" | "docker.io"
                ))
    };
    let Some(entry) = file
        .auths
        .iter()
        .find(|(k, _)| wanted(k))
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some((u.clone(), p.clone())));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| err(format!("auths[{registry}].auth: {e}").into()))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| err(format!("auths[{registry}].auth is not UTF-8").into()))?;
    let (u, p) = decoded
        .split_once(':')
        .ok_or_else(|| err(format!("auths[{registry}].auth is not user:password").into()))?;
    Ok(Some((u.to_string(), p.to_string())))
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// A Docker `config.json` to read credentials from (a missing file means none).
    pub docker_config: Option<PathBuf>,
    /// The `User-Agent` sent.
    pub user_agent: &'static str,
}

/// A layer of an image, in application order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The size the manifest declares.
    pub size: u64,
    pub media_type: String,
}

/// The artifact type and config media type of a banger image bundle in a registry.
pub const BUNDLE_CONFIG_MEDIA_TYPE: &str = "application/vnd.banger.image.config.v1+json";
/// The media type of the one layer of a bundle artifact: the bundle itself.
pub const BUNDLE_LAYER_MEDIA_TYPE: &str = "application/vnd.banger.image.bundle.v1.tar+zstd";

/// What kind of manifest a reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A container image: layers to flatten.
    Image,
    /// A banger image bundle artifact: one layer, the bundle.
    Bundle,
}

/// What a reference points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The digest of the image manifest (after index resolution).
    pub manifest_digest: String,
    pub kind: ManifestKind,
    /// The layers, bottom first (for a bundle: the bundle).
    pub layers: Vec<Layer>,
}

/// Progress of one layer download.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerProgress<'a> {
    /// 1-based.
    pub index: usize,
    pub count: usize,
    pub digest: &'a str,
    pub done: u64,
    pub total: u64,
    /// Bytes per second so far.
    pub rate: f64,
    /// The blob was already in the cache (nothing downloaded).
    pub cached: bool,
    pub finished: bool,
}

/// Layer media types banger can flatten (tar, gzip and zstd tars are told apart by their
/// magic bytes when flattening).
fn is_layer_type(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.v1.tar")
        || media_type.starts_with("application/vnd.docker.image.rootfs.diff.tar")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.diff.tar")
}

/// One client for one registry, with the credentials for it.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client for the registry of `reference` (see the module docs for scheme and
    /// credentials).
    pub fn for_reference(reference: &Reference, opts: &RegistryOptions) -> Result<Self, OciError> {
        let registry = reference.resolve_registry().to_string();
        let mut plain: Vec<String> = opts.insecure_registries.clone();
        if is_loopback(reference.registry()) {
            plain.push(reference.registry().to_string());
            plain.push(registry.clone());
        }
        let credentials = match &opts.docker_config {
            Some(path) => docker_credentials(path, reference.registry())?,
            None => None,
        };
        let auth = match credentials {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        };
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            user_agent: opts.user_agent,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        Ok(Registry {
            client: Client::new(config),
            auth,
        })
    }

    /// The image manifest `reference` points at, an index resolved to linux/amd64.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved, OciError> {
        let manifest_err = |source| OciError::Manifest {
            reference: reference.whole(),
            source,
        };
        let (manifest, digest) = self
            .client
            .pull_manifest(reference, &self.auth)
            .await
            .map_err(manifest_err)?;
        let (image, digest) = match manifest {
            OciManifest::Image(m) => (m, digest),
            OciManifest::ImageIndex(index) => {
                let Some(chosen) = oci_client::client::linux_amd64_resolver(&index.manifests)
                else {
                    return Err(OciError::NoPlatform {
                        reference: reference.whole(),
                        platforms: platforms(&index.manifests),
                    });
                };
                let by_digest = reference.clone_with_digest(chosen.clone());
                match self
                    .client
                    .pull_manifest(&by_digest, &self.auth)
                    .await
                    .map_err(manifest_err)?
                {
                    (OciManifest::Image(m), _) => (m, chosen),
                    (OciManifest::ImageIndex(_), _) => {
                        return Err(OciError::Unsupported {
                            reference: reference.whole(),
                            why: format!("the index entry {chosen} is an index itself"),
                        });
                    }
                }
            }
        };
        let kind = if image.config.media_type == BUNDLE_CONFIG_MEDIA_TYPE {
            ManifestKind::Bundle
        } else {
            ManifestKind::Image
        };
        if kind == ManifestKind::Bundle
            && (image.layers.len() != 1 || image.layers[0].media_type != BUNDLE_LAYER_MEDIA_TYPE)
        {
            return Err(OciError::Unsupported {
                reference: reference.whole(),
                why: format!(
                    "a banger bundle artifact needs exactly one layer of type {BUNDLE_LAYER_MEDIA_TYPE}"
                ),
            });
        }
        let mut layers = Vec::with_capacity(image.layers.len());
        for l in &image.layers {
            if kind == ManifestKind::Image && !is_layer_type(&l.media_type) {
                return Err(OciError::Unsupported {
                    reference: reference.whole(),
                    why: format!("layer {} has media type {}", l.digest, l.media_type),
                });
            }
            if !l.digest.starts_with("sha256:") || l.size < 0 {
                return Err(OciError::Unsupported {
                    reference: reference.whole(),
                    why: format!("layer {} (size {}): only sha256 digests", l.digest, l.size),
                });
            }
            layers.push(Layer {
                digest: l.digest.clone(),
                size: l.size as u64,
                media_type: l.media_type.clone(),
            });
        }
        if layers.is_empty() {
            return Err(OciError::Unsupported {
                reference: reference.whole(),
                why: "the image has no layers".to_string(),
            });
        }
        Ok(Resolved {
            manifest_digest: digest,
            kind,
            layers,
        })
    }

    /// Pushes a banger image bundle to `reference` as an artifact (see the module docs):
    /// `manifest_json` is the bundle's manifest, `bundle` its bytes. Returns the
    /// manifest's URL.
    pub async fn push_bundle(
        &self,
        reference: &Reference,
        manifest_json: Vec<u8>,
        bundle: Vec<u8>,
    ) -> Result<String, OciError> {
        let layers = [ImageLayer::new(
            bundle,
            BUNDLE_LAYER_MEDIA_TYPE.to_string(),
            None,
        )];
        let config = Config::new(manifest_json, BUNDLE_CONFIG_MEDIA_TYPE.to_string(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.artifact_type = Some(BUNDLE_CONFIG_MEDIA_TYPE.to_string());
        let pushed = self
            .client
            .push(reference, &layers, config, &self.auth, Some(manifest))
            .await
            .map_err(|source| OciError::Push {
                reference: reference.whole(),
                source,
            })?;
        Ok(pushed.manifest_url)
    }

    /// The layer blob in `cache`, downloaded and verified first when missing (see the
    /// module docs). Reports progress through `progress` (at most ~4 times a second).
    pub async fn fetch_layer(
        &self,
        reference: &Reference,
        layer: &Layer,
        (index, count): (usize, usize),
        cache: &LayerCache,
        progress: &mut (dyn FnMut(LayerProgress<'_>) + Send),
    ) -> Result<PathBuf, OciError> {
        let dest = cache.path(&layer.digest)?;
        let report = |done, rate, cached, finished| LayerProgress {
            index,
            count,
            digest: &layer.digest,
            done,
            total: layer.size,
            rate,
            cached,
            finished,
        };
        if dest.is_file() {
            progress(report(layer.size, 0.0, true, true));
            return Ok(dest);
        }
        let dir = dest.parent().unwrap_or(cache.root());
        std::fs::create_dir_all(dir).map_err(OciError::io("create", dir))?;
        let mut tmp = tempfile_in(dir)?;
        let desc = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            ..OciDescriptor::default()
        };
        let blob_err = |source| OciError::Blob {
            reference: reference.whole(),
            digest: layer.digest.clone(),
            source,
        };
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        let mut stream = self
            .client
            .pull_blob_stream(reference, &desc)
            .await
            .map_err(blob_err)?;
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let start = Instant::now();
        let mut last = Instant::now();
        progress(report(0, 0.0, false, false));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| OciError::BlobStream {
                reference: reference.whole(),
                digest: layer.digest.clone(),
                why: chain(&e),
            })?;
            done += chunk.len() as u64;
            if done > layer.size {
                return Err(OciError::BlobTooLong {
                    reference: reference.whole(),
                    digest: layer.digest.clone(),
                    declared: layer.size,
                });
            }
            hasher.update(&chunk);
            tmp.file
                .write_all(&chunk)
                .map_err(OciError::io("write", &tmp.path))?;
            if last.elapsed().as_millis() >= 250 {
                last = Instant::now();
                progress(report(done, rate(done, start), false, false));
            }
        }
        if done < layer.size {
            return Err(OciError::BlobTooShort {
                reference: reference.whole(),
                digest: layer.digest.clone(),
                declared: layer.size,
                got: done,
            });
        }
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != layer.digest {
            return Err(OciError::DigestMismatch {
                reference: reference.whole(),
                digest: layer.digest.clone(),
                actual,
            });
        }
        tmp.file
            .sync_all()
            .map_err(OciError::io("sync", &tmp.path))?;
        tmp.persist(&dest)?;
        progress(report(done, rate(done, start), false, true));
        Ok(dest)
    }
}

fn rate(done: u64, start: Instant) -> f64 {
    let secs = start.elapsed().as_secs_f64();
    if secs > 0.0 { done as f64 / secs } else { 0.0 }
}

fn platforms(entries: &[ImageIndexEntry]) -> String {
    let all: Vec<String> = entries
        .iter()
        .map(|e| match &e.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "unknown".to_string(),
        })
        .collect();
    if all.is_empty() {
        "none".to_string()
    } else {
        all.join(", ")
    }
}

/// An error and its sources, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temporary file in the cache, removed unless persisted.
struct TempBlob {
    file: std::fs::File,
    path: PathBuf,
    kept: bool,
}

fn tempfile_in(dir: &Path) -> Result<TempBlob, OciError> {
    for attempt in 0u32..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(
            ".partial-{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                return Ok(TempBlob {
                    file,
                    path,
                    kept: false,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(OciError::io("create", &path)(e)),
        }
    }
    Err(OciError::io("create a temporary file in", dir)(
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

impl TempBlob {
    fn persist(mut self, dest: &Path) -> Result<(), OciError> {
        std::fs::rename(&self.path, dest).map_err(OciError::io("rename into", dest))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Layer blobs by digest under one directory (see the module docs).
#[derive(Debug, Clone)]
pub struct LayerCache {
    root: PathBuf,
}

/// What [`LayerCache::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The digests removed (`sha256:<hex>`), sorted.
    pub removed: Vec<String>,
    pub freed_bytes: u64,
}

impl LayerCache {
    pub fn new(root: PathBuf) -> Self {
        LayerCache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` (`sha256:<64 hex>`) lives; any other digest is refused.
    pub fn path(&self, digest: &str) -> Result<PathBuf, OciError> {
        match digest.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64
                    && hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) =>
            {
                Ok(self.root.join("sha256").join(hex))
            }
            _ => Err(OciError::BadReference {
                input: digest.to_string(),
                why: "not a sha256 digest".to_string(),
            }),
        }
    }

    /// Every digest in the cache, with its size.
    pub fn list(&self) -> Result<Vec<(String, u64)>, OciError> {
        let dir = self.root.join("sha256");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(OciError::io("read", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(OciError::io("read", &dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(OciError::io("stat", &entry.path()))?;
            if meta.is_file() {
                out.push((format!("sha256:{name}"), meta.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes every blob whose digest is not in `keep`, and leftovers of interrupted
    /// downloads.
    pub fn prune(&self, keep: &HashSet<String>) -> Result<Pruned, OciError> {
        let mut pruned = Pruned::default();
        let dir = self.root.join("sha256");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".partial-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for (digest, size) in self.list()? {
            if keep.contains(&digest) {
                continue;
            }
            let path = self.path(&digest)?;
            std::fs::remove_file(&path).map_err(OciError::io("remove", &path))?;
            pruned.freed_bytes += size;
            pruned.removed.push(digest);
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_on_docker_hub() {
        let r = parse_reference("debian:bookworm").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/debian");
        assert_eq!(r.tag(), Some("bookworm"));
        let r = parse_reference("127.0.0.1:5000/team/img@sha256:".to_string().as_str());
        assert!(r.is_err());
        let r = parse_reference("127.0.0.1:5000/team/img:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/img");
        assert!(parse_reference("").is_err());
        assert!(parse_reference("a b").is_err());
        assert!(parse_reference("UPPER:tag").is_err());
    }

    #[test]
    fn names_derive_from_the_reference() {
        let n = |s: &str| derived_name(&parse_reference(s).unwrap());
        assert_eq!(n("debian:bookworm"), "debian-bookworm");
        assert_eq!(n("python:3.12-slim"), "python-3.12-slim");
        assert_eq!(n("alpine"), "alpine-latest");
        assert_eq!(n("localhost:5000/team/base:v1"), "base-v1");
        let d = format!("debian@sha256:{}", "ab".repeat(32));
        assert_eq!(n(&d), "debian-abababababab");
    }

    #[test]
    fn loopback_registries() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "example.com:443",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}}}}}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            docker_credentials(&path, "127.0.0.1:5000").unwrap(),
            Some(("alice".into(), "s3cr:et".into()))
        );
        assert_eq!(
            docker_credentials(&path, "docker.io").unwrap(),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(docker_credentials(&path, "quay.io").unwrap(), None);
        assert_eq!(
            docker_credentials(&dir.path().join("missing"), "quay.io").unwrap(),
            None
        );
        std::fs::write(&path, r#"{"auths": {"q.io": {"auth": "!!"}}}"#).unwrap();
        let e = docker_credentials(&path, "q.io").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn cache_paths_take_only_sha256_digests() {
        let c = LayerCache::new(PathBuf::from("/c"));
        let hex = "0".repeat(64);
        assert_eq!(
            c.path(&format!("sha256:{hex}")).unwrap(),
            PathBuf::from(format!("/c/sha256/{hex}"))
        );
        for bad in [
            "sha256:../../etc",
            "md5:00",
            "sha256:ABC",
            &format!("sha512:{hex}"),
        ] {
            assert!(c.path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prune_keeps_what_is_needed_and_reports_what_it_freed() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::new(dir.path().to_path_buf());
        std::fs::create_dir_all(dir.path().join("sha256")).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        std::fs::write(dir.path().join("sha256").join(&a), b"12345").unwrap();
        std::fs::write(dir.path().join("sha256").join(&b), b"123").unwrap();
        std::fs::write(dir.path().join("sha256/.partial-1-2-3"), b"x").unwrap();
        let keep: HashSet<String> = [format!("sha256:{a}")].into();
        let p = c.prune(&keep).unwrap();
        assert_eq!(p.removed, vec![format!("sha256:{b}")]);
        assert_eq!(p.freed_bytes, 3);
        assert_eq!(c.list().unwrap(), vec![(format!("sha256:{a}"), 5)]);
        assert!(!dir.path().join("sha256/.partial-1-2-3").exists());
    }
}
