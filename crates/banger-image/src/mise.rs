//! The prebuilt [`mise`](https://mise.jdx.dev) binary banger's golden image ships as
//! `/usr/local/bin/mise`, fetched on the host during `image bootstrap`.
//!
//! mise publishes its release binaries to the npm registry as `@jdxcode/mise-linux-x64`
//! (a tarball holding `package/bin/mise`, dynamically linked against glibc ≥ 2.18).
//! [`fetch`], for the pinned [`MISE_VERSION`] (so an image is reproducible):
//!
//! 1. looks in the cache first: `<cache>/mise/linux-x64-<version>` names the
//!    content-addressed blob `<cache>/mise/sha256-<hex>` (the stripped binary), whose bytes
//!    are checked against its name; a hit makes no request at all;
//! 2. reads the package document `<registry>/@jdxcode%2fmise-linux-x64` and the version's
//!    `dist.tarball` and `dist.integrity` (SRI, `sha512-<base64>`);
//! 3. downloads the tarball, hashing it while it streams to a temporary file, and refuses
//!    it when the digest differs from the integrity (or when it passes [`MAX_TARBALL`]);
//! 4. extracts `package/bin/mise` and strips it with binutils' `strip` (`objcopy` when there
//!    is no `strip`), run through the [`CommandRunner`], so the host's search path finds it;
//!    neither is a [`MiseError::StripToolMissing`] naming both. Some releases are
//!    BOLT-optimised binaries whose loadable segments binutils 2.40 and llvm-strip 14 move to
//!    offsets the kernel cannot map (the stripped binary crashes at once): when a stripped
//!    `PT_LOAD` segment's file offset is no longer congruent to its address modulo its
//!    alignment, the unstripped binary is kept, and the progress line says so;
//! 5. publishes the blob and then its name by rename, so a failure at any step caches
//!    nothing.
//!
//! [`layer_tar`] writes the one-entry tar (`usr/local/bin/mise`, root, 0755) the bootstrap
//! flattens over the Debian tree. The library never reads the environment: the registry URL
//! (config `npm_registry`), the cache directory and the HTTP client are handed in.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_core::runner::CommandRunner;
use base64::Engine as _;
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256, Sha512};
use tokio::io::AsyncWriteExt as _;

use crate::ImageError;

/// The npm package holding the linux x86-64 binary.
pub const MISE_PACKAGE: &str = "@jdxcode/mise-linux-x64";
/// The version installed in images (the newest release when this was written).
pub const MISE_VERSION: &str = "2026.9.15";
/// Where the binary goes in the image, relative to its root.
pub const GUEST_PATH: &str = "usr/local/bin/mise";
/// The binary's path inside the package tarball.
const TARBALL_BINARY: &str = "package/bin/mise";
/// The largest tarball accepted (the 2026.9 ones are 52 MB).
pub const MAX_TARBALL: u64 = 512 << 20;
/// The largest binary accepted from the tarball (the 2026.9 one is 151 MB).
const MAX_BINARY: u64 = 1 << 30;

/// What to fetch and where to keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiseRequest {
    /// The npm registry's base URL (`https://registry.npmjs.org`).
    pub registry: String,
    /// The package version ([`MISE_VERSION`]).
    pub version: String,
    /// banger's cache directory; the binaries live in its `mise/` subdirectory.
    pub cache_dir: PathBuf,
}

impl MiseRequest {
    /// The pinned version from `registry`, cached under `cache_dir`.
    pub fn new(registry: &str, cache_dir: &Path) -> Self {
        Self {
            registry: registry.to_string(),
            version: MISE_VERSION.to_string(),
            cache_dir: cache_dir.to_path_buf(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.cache_dir.join("mise")
    }

    /// The file naming the blob of this version.
    fn name_file(&self) -> PathBuf {
        self.dir().join(format!("linux-x64-{}", self.version))
    }

    /// The package document's URL (the scope's `/` escaped, as npm does).
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/{}",
            self.registry.trim_end_matches('/'),
            MISE_PACKAGE.replace('/', "%2f")
        )
    }
}

/// A binary ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiseBinary {
    /// The cached blob.
    pub path: PathBuf,
    /// Its sha256, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it came from the cache (no request made).
    pub cached: bool,
}

/// Fetching, checking or caching the binary failed.
#[derive(Debug, thiserror::Error)]
pub enum MiseError {
    #[error("mise: bad version {version:?}: expected digits, letters, '.' and '-'")]
    BadVersion { version: String },
    #[error("mise: cannot make an HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("mise: cannot reach the npm registry at {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("mise: {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("mise: the package document at {url} is not what npm serves: {why}")]
    Metadata { url: String, why: String },
    #[error("mise: the npm registry at {url} has no version {version} of {MISE_PACKAGE}")]
    NoSuchVersion { url: String, version: String },
    #[error(
        "mise: {url} does not match its registry integrity (expected sha512 {expected}, got {actual}): nothing was cached"
    )]
    Integrity {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("mise: {url} is larger than {MAX_TARBALL} bytes")]
    TooLarge { url: String },
    #[error("mise: tarball {url} has no regular file {TARBALL_BINARY}")]
    NoBinary { url: String },
    #[error("mise: cannot read tarball {url}")]
    Tarball {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "mise: neither `strip` nor `objcopy` could be run to strip the binary: install binutils"
    )]
    StripToolMissing,
    #[error("mise: stripping the binary failed")]
    Strip(#[source] Box<ImageError>),
    #[error("mise: could not {op} {}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("mise: a worker thread failed: {0}")]
    Join(String),
}

impl MiseError {
    fn io(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { path, op, source }
    }
}

/// The version's `dist` in the package document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dist {
    tarball: String,
    /// The sha512 digest the integrity names.
    sha512: Vec<u8>,
}

/// An HTTP client for [`fetch`]: rustls trusting the host's certificate store and the webpki
/// roots (a TLS-inspecting proxy's CA is in the former), `user_agent`, a 30 s connect
/// and a 60 s read timeout (a stalled download fails instead of hanging the bootstrap).
pub fn http_client(user_agent: &str) -> Result<reqwest::Client, MiseError> {
    reqwest::Client::builder()
        .user_agent(user_agent)
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(MiseError::Client)
}

/// Fetches (or finds in the cache) the stripped binary; see the module docs.
pub async fn fetch(
    client: &reqwest::Client,
    req: &MiseRequest,
    runner: Arc<dyn CommandRunner>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<MiseBinary, MiseError> {
    let version_ok = !req.version.is_empty()
        && req
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if !version_ok {
        return Err(MiseError::BadVersion {
            version: req.version.clone(),
        });
    }
    let r2 = req.clone();
    if let Some(hit) = blocking(move || cached(&r2)).await? {
        progress(&format!(
            "{} cached ({} MiB, sha256 {})",
            req.version,
            hit.size >> 20,
            &hit.sha256[..12]
        ));
        return Ok(hit);
    }
    let url = req.metadata_url();
    let body = get(client, &url)
        .await?
        .bytes()
        .await
        .map_err(|source| MiseError::Http {
            url: url.clone(),
            source: source.without_url(),
        })?;
    let dist = parse_metadata(&url, &body, &req.version)?;
    let dir = req.dir();
    fs::create_dir_all(&dir).map_err(MiseError::io(&dir, "create"))?;
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .map_err(MiseError::io(&dir, "create a temporary directory in"))?;
    progress(&format!("downloading {}", dist.tarball));
    let tgz = work.path().join("package.tgz");
    let bytes = download(client, &dist, &tgz).await?;
    progress(&format!(
        "{} MiB downloaded, sha512 integrity verified; extracting and stripping",
        bytes >> 20
    ));
    let (r2, url) = (req.clone(), dist.tarball.clone());
    let (binary, note) = blocking(move || {
        let out = extract_and_strip(runner.as_ref(), &url, &tgz)?;
        let binary = publish(&r2, &out.path)?;
        drop(work);
        Ok((binary, out.note))
    })
    .await?;
    progress(&format!(
        "{} {note}; cached ({} MiB, sha256 {})",
        req.version,
        binary.size >> 20,
        &binary.sha256[..12]
    ));
    Ok(binary)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MiseError> + Send + 'static,
) -> Result<T, MiseError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MiseError::Join(e.to_string()))?
}

async fn get(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, MiseError> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|source| MiseError::Http {
            url: url.to_string(),
            source: source.without_url(),
        })?;
    if !resp.status().is_success() {
        return Err(MiseError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    Ok(resp)
}

/// The cached binary of `req.version`, when its name file and a blob with the named
/// content are there.
fn cached(req: &MiseRequest) -> Result<Option<MiseBinary>, MiseError> {
    let name_file = req.name_file();
    let name = match fs::read_to_string(&name_file) {
        Ok(n) => n.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MiseError::io(&name_file, "read")(e)),
    };
    let Some(hex) = name.strip_prefix("sha256-") else {
        return Ok(None);
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let blob = req.dir().join(&name);
    let Ok((sha256, size)) = sha256_file(&blob) else {
        return Ok(None);
    };
    Ok((sha256 == hex).then_some(MiseBinary {
        path: blob,
        sha256,
        size,
        cached: true,
    }))
}

fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let size = io::copy(&mut f, &mut h)?;
    Ok((hex(&h.finalize()), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The version's tarball URL and sha512 from the package document.
fn parse_metadata(url: &str, body: &[u8], version: &str) -> Result<Dist, MiseError> {
    let bad = |why: String| MiseError::Metadata {
        url: url.to_string(),
        why,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON ({e})")))?;
    let versions = doc
        .get("versions")
        .and_then(|v| v.as_object())
        .ok_or_else(|| bad("no \"versions\" object".into()))?;
    let Some(entry) = versions.get(version) else {
        return Err(MiseError::NoSuchVersion {
            url: url.to_string(),
            version: version.to_string(),
        });
    };
    let field = |name: &str| {
        entry
            .get("dist")
            .and_then(|d| d.get(name))
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("version {version} has no dist.{name} string")))
    };
    let tarball = field("tarball")?.to_string();
    if !(tarball.starts_with("https://") || tarball.starts_with("http://")) {
        return Err(bad(format!("dist.tarball {tarball:?} is not an HTTP URL")));
    }
    let integrity = field("integrity")?;
    // SRI: space-separated `algo-base64` hashes; sha512 is what npm publishes.
    let sha512 = integrity
        .split_whitespace()
        .find_map(|h| h.strip_prefix("sha512-"))
        .ok_or_else(|| bad(format!("dist.integrity {integrity:?} has no sha512 hash")))?;
    let sha512 = base64::engine::general_purpose::STANDARD
        .decode(sha512.split('?').next().unwrap_or(sha512))
        .ok()
        .filter(|d| d.len() == 64)
        .ok_or_else(|| {
            bad(format!(
                "dist.integrity {integrity:?} is not a sha512 digest"
            ))
        })?;
    Ok(Dist { tarball, sha512 })
}

/// Streams the tarball to `dest`, hashing it on the way; the byte count when the digest
/// matches.
async fn download(client: &reqwest::Client, dist: &Dist, dest: &Path) -> Result<u64, MiseError> {
    let url = &dist.tarball;
    let resp = get(client, url).await?;
    if resp.content_length().is_some_and(|n| n > MAX_TARBALL) {
        return Err(MiseError::TooLarge { url: url.clone() });
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(MiseError::io(dest, "create"))?;
    let mut hasher = Sha512::new();
    let mut total = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| MiseError::Http {
            url: url.clone(),
            source: source.without_url(),
        })?;
        total += chunk.len() as u64;
        if total > MAX_TARBALL {
            return Err(MiseError::TooLarge { url: url.clone() });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(MiseError::io(dest, "write"))?;
    }
    file.flush().await.map_err(MiseError::io(dest, "write"))?;
    let digest = hasher.finalize();
    if digest.as_slice() != dist.sha512.as_slice() {
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        return Err(MiseError::Integrity {
            url: url.clone(),
            expected: b64(&dist.sha512),
            actual: b64(&digest),
        });
    }
    Ok(total)
}

/// The binary to cache and what was done to it.
struct Stripped {
    path: PathBuf,
    note: String,
}

/// Extracts the binary next to `tgz` and strips it (see the module docs).
fn extract_and_strip(
    runner: &dyn CommandRunner,
    url: &str,
    tgz: &Path,
) -> Result<Stripped, MiseError> {
    let dir = tgz.parent().unwrap_or(Path::new("."));
    let full = dir.join("mise.full");
    let tar_err = |source| MiseError::Tarball {
        url: url.to_string(),
        source,
    };
    let file = fs::File::open(tgz).map_err(MiseError::io(tgz, "open"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = false;
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let path = entry.path().map_err(tar_err)?;
        let path = path.to_string_lossy();
        if path.trim_start_matches("./") != TARBALL_BINARY {
            continue;
        }
        if !entry.header().entry_type().is_file() || entry.size() > MAX_BINARY {
            break;
        }
        let mut out = fs::File::create(&full).map_err(MiseError::io(&full, "create"))?;
        io::copy(&mut entry, &mut out).map_err(tar_err)?;
        out.flush().map_err(MiseError::io(&full, "write"))?;
        found = true;
        break;
    }
    if !found {
        return Err(MiseError::NoBinary {
            url: url.to_string(),
        });
    }
    let stripped = dir.join("mise.stripped");
    strip(runner, &full, &stripped)?;
    let before = fs::metadata(&full)
        .map_err(MiseError::io(&full, "inspect"))?
        .len();
    let after = fs::metadata(&stripped)
        .map_err(MiseError::io(&stripped, "inspect the stripped binary"))?
        .len();
    let (keep, note) = match broken_by_strip(&full, &stripped) {
        Some(why) => (
            full,
            format!(
                "stripping would break it ({why}), kept unstripped ({} MiB)",
                before >> 20
            ),
        ),
        None => (
            stripped,
            format!("stripped {} MiB to {} MiB", before >> 20, after >> 20),
        ),
    };
    let perms = fs::Permissions::from_mode(0o755);
    fs::set_permissions(&keep, perms).map_err(MiseError::io(&keep, "chmod"))?;
    Ok(Stripped { path: keep, note })
}

/// Runs `strip --strip-all -o OUT IN`, or `objcopy --strip-all IN OUT` when there is no
/// `strip`.
fn strip(runner: &dyn CommandRunner, input: &Path, output: &Path) -> Result<(), MiseError> {
    let (i, o) = (
        input.to_string_lossy().into_owned(),
        output.to_string_lossy().into_owned(),
    );
    let attempts = [
        (
            "strip",
            vec!["--strip-all".to_string(), "-o".into(), o.clone(), i.clone()],
        ),
        ("objcopy", vec!["--strip-all".to_string(), i, o]),
    ];
    for (tool, args) in attempts {
        match runner.run(tool, &args) {
            Ok(out) if out.success() => return Ok(()),
            Ok(out) => return Err(MiseError::Strip(Box::new(ImageError::command(&out)))),
            Err(e) if e.source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(MiseError::Strip(Box::new(ImageError::Spawn(e)))),
        }
    }
    Err(MiseError::StripToolMissing)
}

/// One `PT_LOAD` program header: file offset, address, file size, memory size, flags,
/// alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Load {
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    flags: u32,
    align: u64,
}

/// The `PT_LOAD` segments of a 64-bit little-endian ELF file; `None` for anything else (a
/// script, say).
fn load_segments(path: &Path) -> Option<Vec<Load>> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(path).ok()?;
    let mut head = [0u8; 64];
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |d: &[u8], o: usize| u16::from_le_bytes([d[o], d[o + 1]]) as usize;
    let u32_at = |d: &[u8], o: usize| u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);
    let u64_at = |d: &[u8], o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let (phentsize, phnum) = (u16_at(&head, 54), u16_at(&head, 56));
    if phentsize < 56 {
        return None;
    }
    f.seek(SeekFrom::Start(u64_at(&head, 32))).ok()?;
    let mut table = vec![0u8; phentsize * phnum];
    f.read_exact(&mut table).ok()?;
    const PT_LOAD: u32 = 1;
    Some(
        table
            .chunks_exact(phentsize)
            .filter(|ph| u32_at(ph, 0) == PT_LOAD)
            .map(|ph| Load {
                flags: u32_at(ph, 4),
                offset: u64_at(ph, 8),
                vaddr: u64_at(ph, 16),
                filesz: u64_at(ph, 32),
                memsz: u64_at(ph, 40),
                align: u64_at(ph, 48),
            })
            .collect(),
    )
}

/// Why `stripped` cannot stand in for the ELF file `full`: stripping must leave every
/// loadable segment where it was (address, sizes, flags) and at a file offset congruent to
/// its address modulo its alignment, or the kernel maps the code somewhere else. `None` when
/// it can, and when `full` is not an ELF file (nothing to compare).
fn broken_by_strip(full: &Path, stripped: &Path) -> Option<String> {
    let before = load_segments(full)?;
    let Some(after) = load_segments(stripped) else {
        return Some("the result is not an ELF file".into());
    };
    if before.len() != after.len() {
        return Some(format!(
            "{} loadable segments became {}",
            before.len(),
            after.len()
        ));
    }
    for (b, a) in before.iter().zip(&after) {
        let moved = (b.vaddr, b.filesz, b.memsz, b.flags, b.align)
            != (a.vaddr, a.filesz, a.memsz, a.flags, a.align);
        if moved {
            return Some(format!(
                "the loadable segment at address {:#x} moved to {:#x} (size {:#x} to {:#x})",
                b.vaddr, a.vaddr, b.filesz, a.filesz
            ));
        }
        if a.align > 1 && a.offset % a.align != a.vaddr % a.align {
            return Some(format!(
                "the loadable segment at address {:#x} would sit at file offset {:#x}, not {:#x}-aligned",
                a.vaddr, a.offset, a.align
            ));
        }
    }
    None
}

/// Moves the binary into the cache as its content-addressed blob, then names it for the
/// version.
fn publish(req: &MiseRequest, binary: &Path) -> Result<MiseBinary, MiseError> {
    let (sha256, size) = sha256_file(binary).map_err(MiseError::io(binary, "read"))?;
    let dir = req.dir();
    let blob = dir.join(format!("sha256-{sha256}"));
    fs::rename(binary, &blob).map_err(MiseError::io(&blob, "move the binary to"))?;
    let name_file = req.name_file();
    let tmp = dir.join(format!(".{}.tmp", req.version));
    fs::write(&tmp, format!("sha256-{sha256}\n")).map_err(MiseError::io(&tmp, "write"))?;
    fs::rename(&tmp, &name_file).map_err(MiseError::io(&name_file, "write"))?;
    Ok(MiseBinary {
        path: blob,
        sha256,
        size,
        cached: false,
    })
}

/// Writes the tar holding `binary` as [`GUEST_PATH`] (owned by root, mode 0755), for the
/// bootstrap to flatten over the Debian tree.
pub fn layer_tar(binary: &Path, out_tar: &Path) -> Result<(), ImageError> {
    let src = fs::File::open(binary).map_err(ImageError::io(binary, "open"))?;
    let size = src
        .metadata()
        .map_err(ImageError::io(binary, "inspect"))?
        .len();
    let out = fs::File::create(out_tar).map_err(ImageError::io(out_tar, "create"))?;
    let mut builder = tar::Builder::new(io::BufWriter::new(out));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder
        .append_data(&mut header, GUEST_PATH, src)
        .map_err(ImageError::io(out_tar, "write"))?;
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(ImageError::io(out_tar, "write"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use banger_core::runner::{CommandOutput, SpawnError};

    const FULL: &[u8] = b"#!/bin/sh\necho mise 2026.9.15\n# symbols: 0123456789abcdef\n";
    const STRIPPED: &[u8] = b"#!/bin/sh\necho mise 2026.9.15\n";

    fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn sri(data: &[u8]) -> String {
        format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(data))
        )
    }

    /// A registry on loopback serving one package document and one tarball, counting
    /// requests.
    struct Registry {
        url: String,
        hits: Arc<AtomicUsize>,
    }

    /// The document for `version` pointing at `/tarball.tgz` of the registry at `base`.
    fn document(base: &str, integrity: &str) -> String {
        serde_json::json!({
            "name": MISE_PACKAGE,
            "dist-tags": {"latest": MISE_VERSION},
            "versions": {
                MISE_VERSION: {
                    "dist": {"tarball": format!("{base}/tarball.tgz"), "integrity": integrity}
                }
            }
        })
        .to_string()
    }

    /// Serves `doc(base)` at the package path (or `meta_status` with no body) and `tarball`.
    async fn registry(
        doc: impl Fn(&str) -> String,
        meta_status: u16,
        tarball: Vec<u8>,
    ) -> Registry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, body, tarball) = (hits.clone(), doc(&url), Arc::new(tarball));
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (body, tarball) = (body.clone(), tarball.clone());
            h.fetch_add(1, Ordering::SeqCst);
            async move {
                use axum::http::StatusCode;
                match uri.path() {
                    "/@jdxcode%2fmise-linux-x64" if meta_status == 200 => {
                        (StatusCode::OK, body.into_bytes())
                    }
                    "/@jdxcode%2fmise-linux-x64" => {
                        (StatusCode::from_u16(meta_status).unwrap(), Vec::new())
                    }
                    "/tarball.tgz" => (StatusCode::OK, tarball.to_vec()),
                    _ => (StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Registry { url, hits }
    }

    /// A registry serving a good package holding `binary`.
    async fn good_registry(binary: &[u8]) -> Registry {
        let tarball = tgz(&[("package/package.json", b"{}"), (TARBALL_BINARY, binary)]);
        let integrity = sri(&tarball);
        registry(move |base| document(base, &integrity), 200, tarball).await
    }

    /// `strip`/`objcopy` that write their output as the input without its `# symbols`
    /// line (or as `replace` when set), recording each call; `missing` tools cannot start.
    #[derive(Debug, Default)]
    struct Binutils {
        calls: Mutex<Vec<(String, Vec<String>)>>,
        missing: Vec<&'static str>,
        replace: Option<Vec<u8>>,
    }

    impl CommandRunner for Binutils {
        fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, SpawnError> {
            self.calls
                .lock()
                .unwrap()
                .push((program.to_string(), args.to_vec()));
            if self.missing.contains(&program) {
                return Err(SpawnError {
                    command: program.to_string(),
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            let (input, output) = match program {
                "strip" => (&args[3], &args[2]),
                _ => (&args[1], &args[2]),
            };
            let data = fs::read(input).unwrap();
            let out = match &self.replace {
                Some(r) => r.clone(),
                None => {
                    let cut = data
                        .windows(10)
                        .position(|w| w == b"# symbols:")
                        .unwrap_or(data.len());
                    data[..cut].to_vec()
                }
            };
            fs::write(output, out).unwrap();
            Ok(CommandOutput {
                command: program.to_string(),
                code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            })
        }
    }

    async fn run_fetch(
        reg: &Registry,
        cache: &Path,
        runner: Arc<dyn CommandRunner>,
    ) -> (Result<MiseBinary, MiseError>, Vec<String>) {
        let mut lines = Vec::new();
        let req = MiseRequest::new(&reg.url, cache);
        let client = http_client("banger-test").unwrap();
        let r = fetch(&client, &req, runner, &mut |l| lines.push(l.to_string())).await;
        (r, lines)
    }

    /// The entries of the cache's `mise/` directory.
    fn cache_entries(cache: &Path) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(cache.join("mise")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    #[tokio::test]
    async fn fetch_verifies_strips_caches_and_the_second_call_makes_no_request() {
        let reg = good_registry(FULL).await;
        let cache = tempfile::tempdir().unwrap();
        let runner = Arc::new(Binutils::default());
        let (got, lines) = run_fetch(&reg, cache.path(), runner.clone()).await;
        let got = got.unwrap();
        assert_eq!(reg.hits.load(Ordering::SeqCst), 2);
        assert!(!got.cached);
        assert_eq!(fs::read(&got.path).unwrap(), STRIPPED);
        assert_eq!(got.sha256, hex(&Sha256::digest(STRIPPED)));
        assert_eq!(got.size, STRIPPED.len() as u64);
        assert_eq!(
            fs::metadata(&got.path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            got.path,
            cache.path().join(format!("mise/sha256-{}", got.sha256))
        );
        assert_eq!(
            cache_entries(cache.path()),
            [
                format!("linux-x64-{MISE_VERSION}"),
                format!("sha256-{}", got.sha256)
            ]
        );
        let calls = runner.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].0, "strip");
        assert_eq!(calls[0].1[..2], ["--strip-all", "-o"]);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("sha512 integrity verified")),
            "{lines:?}"
        );

        let (again, lines) = run_fetch(&reg, cache.path(), runner.clone()).await;
        let again = again.unwrap();
        assert_eq!(reg.hits.load(Ordering::SeqCst), 2, "the cache was not used");
        assert!(again.cached);
        assert_eq!((again.path, again.sha256), (got.path.clone(), got.sha256));
        assert_eq!(runner.calls.lock().unwrap().len(), 1);
        assert!(lines[0].contains("cached"), "{lines:?}");

        // A blob that no longer matches its name is fetched again.
        fs::write(&got.path, b"corrupt").unwrap();
        let (third, _) = run_fetch(&reg, cache.path(), runner.clone()).await;
        assert!(!third.unwrap().cached);
        assert_eq!(reg.hits.load(Ordering::SeqCst), 4);
        assert_eq!(fs::read(&got.path).unwrap(), STRIPPED);
    }

    #[tokio::test]
    async fn an_integrity_mismatch_is_refused_and_caches_nothing() {
        let tarball = tgz(&[(TARBALL_BINARY, FULL)]);
        let wrong = sri(b"some other tarball");
        let reg = registry(move |base| document(base, &wrong), 200, tarball).await;
        let cache = tempfile::tempdir().unwrap();
        let runner = Arc::new(Binutils::default());
        let (got, _) = run_fetch(&reg, cache.path(), runner.clone()).await;
        let err = got.unwrap_err();
        assert!(matches!(err, MiseError::Integrity { .. }), "{err}");
        assert!(err.to_string().contains("/tarball.tgz"), "{err}");
        assert!(err.to_string().contains("nothing was cached"), "{err}");
        assert_eq!(cache_entries(cache.path()), Vec::<String>::new());
        assert!(runner.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_package_bad_json_or_unknown_version_is_a_clear_error() {
        let cache = tempfile::tempdir().unwrap();
        let runner: Arc<dyn CommandRunner> = Arc::new(Binutils::default());

        let reg = registry(|_| String::new(), 404, Vec::new()).await;
        let err = run_fetch(&reg, cache.path(), runner.clone())
            .await
            .0
            .unwrap_err();
        assert!(
            matches!(err, MiseError::Status { status: 404, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "mise: {}/@jdxcode%2fmise-linux-x64 answered HTTP 404",
                reg.url
            )
        );

        let reg = registry(|_| "{not json".to_string(), 200, Vec::new()).await;
        let err = run_fetch(&reg, cache.path(), runner.clone())
            .await
            .0
            .unwrap_err();
        assert!(matches!(err, MiseError::Metadata { .. }), "{err}");
        assert!(err.to_string().contains("not JSON"), "{err}");

        let reg = registry(
            |_| r#"{"versions": {"1.0.0": {}}}"#.to_string(),
            200,
            Vec::new(),
        )
        .await;
        let err = run_fetch(&reg, cache.path(), runner.clone())
            .await
            .0
            .unwrap_err();
        assert!(matches!(err, MiseError::NoSuchVersion { .. }), "{err}");
        assert!(err.to_string().contains(MISE_VERSION), "{err}");

        let reg = registry(|base| document(base, "sha1-abc="), 200, Vec::new()).await;
        let err = run_fetch(&reg, cache.path(), runner.clone())
            .await
            .0
            .unwrap_err();
        assert!(err.to_string().contains("has no sha512 hash"), "{err}");

        let closed = format!(
            "http://{}",
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        );
        let reg = Registry {
            url: closed,
            hits: Arc::default(),
        };
        let err = run_fetch(&reg, cache.path(), runner).await.0.unwrap_err();
        assert!(matches!(err, MiseError::Http { .. }), "{err}");
        assert!(
            err.to_string().contains("cannot reach the npm registry"),
            "{err}"
        );
        assert_eq!(cache_entries(cache.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_tarball_without_the_binary_is_refused() {
        let tarball = tgz(&[
            ("package/README.md", b"# mise"),
            ("package/bin/mise.d", b"x"),
        ]);
        let integrity = sri(&tarball);
        let reg = registry(move |base| document(base, &integrity), 200, tarball).await;
        let cache = tempfile::tempdir().unwrap();
        let err = run_fetch(&reg, cache.path(), Arc::new(Binutils::default()))
            .await
            .0
            .unwrap_err();
        assert!(matches!(err, MiseError::NoBinary { .. }), "{err}");
        assert!(err.to_string().contains("package/bin/mise"), "{err}");
        assert_eq!(cache_entries(cache.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn objcopy_strips_when_there_is_no_strip_and_neither_is_a_clear_error() {
        let reg = good_registry(FULL).await;
        let cache = tempfile::tempdir().unwrap();
        let runner = Arc::new(Binutils {
            missing: vec!["strip"],
            ..Binutils::default()
        });
        let got = run_fetch(&reg, cache.path(), runner.clone())
            .await
            .0
            .unwrap();
        assert_eq!(fs::read(&got.path).unwrap(), STRIPPED);
        let tools: Vec<String> = runner
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect();
        assert_eq!(tools, ["strip", "objcopy"]);

        let cache = tempfile::tempdir().unwrap();
        let runner = Arc::new(Binutils {
            missing: vec!["strip", "objcopy"],
            ..Binutils::default()
        });
        let err = run_fetch(&reg, cache.path(), runner).await.0.unwrap_err();
        assert!(matches!(err, MiseError::StripToolMissing), "{err}");
        assert!(err.to_string().contains("install binutils"), "{err}");
        assert_eq!(cache_entries(cache.path()), Vec::<String>::new());
    }

    /// A 64-bit ELF header with one `PT_LOAD` program header, padded to 4 KiB.
    fn elf(offset: u64, vaddr: u64, align: u64) -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut d[64..120];
        ph[..4].copy_from_slice(&1u32.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[48..56].copy_from_slice(&align.to_le_bytes());
        d
    }

    #[test]
    fn a_strip_that_moves_or_misaligns_a_segment_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            fs::write(&p, data).unwrap();
            p
        };
        // Offsets and addresses as in mise 2026.9.15, and as binutils 2.40 and llvm-strip
        // 14 rewrite them.
        let full = file("full", &elf(0x6e0_0000, 0x720_0000, 0x20_0000));
        let same = file("same", &elf(0x6e0_0000, 0x720_0000, 0x20_0000));
        assert_eq!(broken_by_strip(&full, &same), None);
        let repacked = file("repacked", &elf(0x600_0000, 0x720_0000, 0x20_0000));
        assert_eq!(broken_by_strip(&full, &repacked), None);
        let llvm = file("llvm", &elf(0x6b6_9730, 0x720_0000, 0x20_0000));
        let why = broken_by_strip(&full, &llvm).unwrap();
        assert!(
            why.contains("0x6b69730") && why.contains("not 0x200000-aligned"),
            "{why}"
        );
        let gnu = file("gnu", &elf(0x6b6_9730, 0x716_9730, 0x20_0000));
        let why = broken_by_strip(&full, &gnu).unwrap();
        assert!(why.contains("moved to 0x7169730"), "{why}");
        let script = file("script", STRIPPED);
        assert!(
            broken_by_strip(&full, &script)
                .unwrap()
                .contains("not an ELF")
        );
        assert_eq!(broken_by_strip(&script, &script), None);
    }

    #[tokio::test]
    async fn a_strip_that_would_break_the_binary_keeps_it_unstripped() {
        let full = elf(0x20_0000, 0x60_0000, 0x20_0000);
        let reg = good_registry(&full).await;
        let cache = tempfile::tempdir().unwrap();
        let runner = Arc::new(Binutils {
            replace: Some(elf(0x1_1730, 0x60_0000, 0x20_0000)),
            ..Binutils::default()
        });
        let (got, lines) = run_fetch(&reg, cache.path(), runner).await;
        assert_eq!(fs::read(got.unwrap().path).unwrap(), full);
        assert!(
            lines.iter().any(|l| l.contains("kept unstripped")),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn a_real_strip_on_a_real_binary() {
        let path = banger_core::probe::SearchPath::programs(None);
        if path.find("strip").is_none() && path.find("objcopy").is_none() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("skipped: no strip or objcopy (binutils) on this host");
            }
            return;
        }
        let truth = path.find("true").unwrap();
        let reg = good_registry(&fs::read(&truth).unwrap()).await;
        let cache = tempfile::tempdir().unwrap();
        let runner = Arc::new(banger_core::runner::SystemRunner::new());
        let got = run_fetch(&reg, cache.path(), runner).await.0.unwrap();
        let status = std::process::Command::new(&got.path).status().unwrap();
        assert!(status.success(), "the stripped binary does not run");
        assert!(got.size <= fs::metadata(&truth).unwrap().len());
    }

    #[test]
    fn the_layer_tar_holds_the_binary_as_root_0755() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("mise");
        fs::write(&bin, STRIPPED).unwrap();
        let out = dir.path().join("mise.tar");
        layer_tar(&bin, &out).unwrap();
        let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
        let mut entries = archive.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap(), Path::new(GUEST_PATH));
        assert_eq!(e.header().mode().unwrap(), 0o755);
        assert_eq!(
            (e.header().uid().unwrap(), e.header().gid().unwrap()),
            (0, 0)
        );
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert_eq!(data, STRIPPED);
        assert!(entries.next().is_none());
    }

    #[tokio::test]
    async fn urls_and_bad_versions() {
        let req = MiseRequest::new("http://127.0.0.1:9/", Path::new("/c"));
        assert_eq!(
            req.metadata_url(),
            "http://127.0.0.1:9/@jdxcode%2fmise-linux-x64"
        );
        assert_eq!(req.name_file(), Path::new("/c/mise/linux-x64-2026.9.15"));
        let cache = tempfile::tempdir().unwrap();
        let bad = MiseRequest {
            version: "../x".into(),
            ..MiseRequest::new("http://127.0.0.1:9", cache.path())
        };
        let err = fetch(
            &reqwest::Client::new(),
            &bad,
            Arc::new(Binutils::default()),
            &mut |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, MiseError::BadVersion { .. }), "{err}");
        assert_eq!(cache_entries(cache.path()), Vec::<String>::new());
    }
}
