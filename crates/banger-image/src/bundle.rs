//! Root filesystem images and bundles.
//!
//! - [`build_rootfs`]: rootfs tars → staging [`Tree`](crate::Tree) → guest payload → ext4
//!   (`mkfs.ext4 -d`), then the special files (debugfs `mknod`, see below) and ONE
//!   [`Debugfs`] batch re-applying every entry's owner, group and mode from the map, so
//!   setuid-root binaries stay setuid root and files of other users keep their owners,
//!   whoever builds the image.
//! - [`make_bundle`]: the same, packed as `<name>.tar.zst` holding exactly
//!   `manifest.json` and `rootfs.ext4` (holes of the image are fed to the compressor as
//!   zeros without being read), its sha256 computed while writing.
//! - [`read_bundle`]: unpacks a bundle into a new directory, refusing anything but those
//!   two regular files, writing the image sparsely, optionally checking the sha256;
//!   [`read_bundle_capped`] also refuses an image larger than a cap (decompression bombs),
//!   [`read_manifest`] reads only the manifest.
//! - [`pack_bundle`]: an existing `rootfs.ext4` packed as a bundle (`image export`).
//!
//! Everything is staged in a private temporary directory and published by one rename:
//! a failure leaves nothing behind.
//!
//! Device nodes and fifos are made by their own `debugfs -w` run before the batch
//! (`cd DIR` then `mknod NAME c|b MAJOR MINOR` or `mknod NAME p`: debugfs's `mknod` only
//! takes a name in the current directory), because [`Debugfs`] has no `mknod`; a tree
//! without special files needs just the batch. Success is checked by counting debugfs's
//! `Allocated inode` lines and refusing any error line.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_core::guest_init::GuestInit;
use banger_core::names::validate_image_name;
use banger_core::runner::CommandRunner;
use banger_disk::debugfs::quote_checked;
use banger_disk::{Debugfs, default_image_size, mkfs_from_dir, run_command_file, size_of_tree};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ImageError;
use crate::flatten::{EntryKind, TarInput, Tree, flatten_limited};
use crate::guest::{self, GuestPayload, GuestReport};

/// The image's name inside a bundle.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// The manifest's name inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The ext4 label of root filesystems.
pub const ROOTFS_LABEL: &str = "banger-rootfs";
/// The largest manifest accepted.
const MANIFEST_MAX: u64 = 1 << 20;
/// The zstd level of bundles: fast, and the bulk (zeros) compresses to nothing anyway.
const ZSTD_LEVEL: i32 = 3;
const BLOCK: usize = 4096;

/// What a bundle says about its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The image name (see [`validate_image_name`]).
    pub name: String,
    /// The distribution (`debian`...).
    pub distro: String,
    /// The architecture (`x86_64`...).
    pub arch: String,
    /// The kernel the image's modules belong to (a kernel catalog name).
    pub kernel_ref: String,
    /// One line for humans.
    pub description: String,
    /// What runs as the image's PID 1 (absent in bundles made before it: systemd).
    #[serde(default)]
    pub init: GuestInit,
}

impl Manifest {
    /// Checks the name (image name rules) and that distro and arch are not empty.
    pub fn validate(&self) -> Result<(), String> {
        validate_image_name(&self.name).map_err(|e| e.to_string())?;
        if self.distro.trim().is_empty() {
            return Err("distro is empty".to_string());
        }
        if self.arch.trim().is_empty() {
            return Err("arch is empty".to_string());
        }
        Ok(())
    }
}

/// How to build a root filesystem image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsOptions {
    /// The image size in bytes; default `max(1.5 × tree, 1 GiB)`
    /// ([`default_image_size`]).
    pub size: Option<u64>,
    /// The static guest agent binary on the host.
    pub agent_bin: PathBuf,
    /// A kernel modules directory on the host, copied to `/lib/modules/<its name>`.
    pub modules_dir: Option<PathBuf>,
    /// The init asked for; `None` picks it from the tree (`guest::resolve_init`).
    pub init: Option<GuestInit>,
    /// The most bytes of file contents the flattened tars may unpack to (none: no cap).
    pub max_tree_bytes: Option<u64>,
}

/// What [`build_rootfs`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsReport {
    /// The image size in bytes.
    pub size_bytes: u64,
    /// The estimated size of the tree ([`size_of_tree`]).
    pub tree_bytes: u64,
    /// Entries in the image (the metadata map, root included).
    pub entries: usize,
    /// Device nodes and fifos created with debugfs.
    pub special_files: usize,
    /// Tar entries skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// What the guest payload did.
    pub guest: GuestReport,
}

/// Builds the ext4 image `image` (replaced if it exists, removed on failure) from `tars`
/// plus the guest payload (see the module docs). The staging tree lives in a temporary
/// directory under `work_dir`, removed at the end.
pub fn build_rootfs(
    runner: &dyn CommandRunner,
    tars: Vec<TarInput>,
    opts: &RootfsOptions,
    work_dir: &Path,
    image: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<RootfsReport, ImageError> {
    if tars.is_empty() {
        return Err(ImageError::invalid(
            "rootfs tars",
            "",
            "at least one is needed",
        ));
    }
    if opts.size == Some(0) {
        return Err(ImageError::invalid("image size", "0", "must be positive"));
    }
    let scratch = tempfile::Builder::new()
        .prefix(".banger-rootfs-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(work_dir)
        .map_err(ImageError::io(work_dir, "create a staging directory in"))?;
    let mut tree = flatten_limited(
        tars,
        &scratch.path().join("tree"),
        opts.max_tree_bytes,
        progress,
    )?;
    progress("adding the guest payload");
    let guest = guest::inject(
        &mut tree,
        &GuestPayload {
            agent_bin: &opts.agent_bin,
            modules_dir: opts.modules_dir.as_deref(),
            init: opts.init,
        },
    )?;
    let tree_bytes = size_of_tree(tree.root()).map_err(ImageError::disk("measuring the tree"))?;
    let size_bytes = opts.size.unwrap_or_else(|| default_image_size(tree_bytes));
    progress(&format!(
        "building the ext4 image ({} MiB, {} entries)",
        size_bytes >> 20,
        tree.entries().len()
    ));
    mkfs_from_dir(runner, tree.root(), image, size_bytes, ROOTFS_LABEL)
        .map_err(ImageError::disk("building the ext4 image"))?;
    let result = (|| {
        let special_files = make_special_files(runner, image, &tree, scratch.path())?;
        progress(&format!(
            "applying owners and modes to {} entries",
            tree.entries().len()
        ));
        apply_metadata(runner, image, &tree, scratch.path())?;
        Ok(special_files)
    })();
    let special_files = match result {
        Ok(n) => n,
        Err(e) => {
            // Best effort: never leave a half-made image behind.
            let _ = fs::remove_file(image);
            return Err(e);
        }
    };
    Ok(RootfsReport {
        size_bytes,
        tree_bytes,
        entries: tree.entries().len(),
        special_files,
        skipped: tree.skipped().clone(),
        guest,
    })
}

/// Re-applies every entry's owner, group and mode (symlinks: owner and group) in one
/// debugfs batch.
fn apply_metadata(
    runner: &dyn CommandRunner,
    image: &Path,
    tree: &Tree,
    scratch: &Path,
) -> Result<(), ImageError> {
    let mut batch = Debugfs::new(scratch);
    let step = "re-applying owners and modes";
    for (path, meta) in tree.entries() {
        batch
            .set_owner(path, meta.uid, meta.gid)
            .map_err(ImageError::disk(step))?;
        if !matches!(meta.kind, EntryKind::Symlink { .. }) {
            batch
                .set_mode(path, meta.full_mode())
                .map_err(ImageError::disk(step))?;
        }
    }
    batch.run(runner, image).map_err(ImageError::disk(step))
}

/// The debugfs command lines creating the special files of `tree`, and how many it
/// creates; a path debugfs cannot take safely is refused, with its path.
fn mknod_script(tree: &Tree) -> Result<(Vec<String>, usize), ImageError> {
    let step = "making special files";
    let mut script = Vec::new();
    let mut cwd = "/".to_string();
    let mut count = 0;
    for (path, meta) in tree.entries() {
        let spec = match &meta.kind {
            EntryKind::CharDevice { major, minor } => format!("c {major} {minor}"),
            EntryKind::BlockDevice { major, minor } => format!("b {major} {minor}"),
            EntryKind::Fifo => "p".to_string(),
            _ => continue,
        };
        let (dir, name) = match path.rfind('/') {
            Some(0) => ("/", &path[1..]),
            Some(i) => (&path[..i], &path[i + 1..]),
            None => continue,
        };
        if dir != cwd {
            let dir_word = quote_checked("directory", dir).map_err(ImageError::disk(step))?;
            script.push(format!("cd {dir_word}"));
            cwd = dir.to_string();
        }
        quote_checked("special file", path).map_err(ImageError::disk(step))?;
        let name = quote_checked("special file", name).map_err(ImageError::disk(step))?;
        script.push(format!("mknod {name} {spec}"));
        count += 1;
    }
    Ok((script, count))
}

/// Creates the device nodes and fifos of `tree` in `image` (see the module docs).
fn make_special_files(
    runner: &dyn CommandRunner,
    image: &Path,
    tree: &Tree,
    scratch: &Path,
) -> Result<usize, ImageError> {
    let (script, count) = mknod_script(tree)?;
    if count == 0 {
        return Ok(0);
    }
    let out = run_command_file(runner, image, &script, true, scratch)
        .map_err(ImageError::disk("making special files"))?;
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !is_debugfs_banner(l))
        .collect();
    let made = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Allocated inode:"))
        .count();
    if !errors.is_empty() || made != count {
        let mut message = errors.join("; ");
        if made != count {
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&format!("{made} of {count} special files created"));
        }
        return Err(ImageError::Mknod {
            image: image.to_path_buf(),
            message,
        });
    }
    if !out.success() {
        return Err(ImageError::command(&out));
    }
    Ok(count)
}

/// The startup banner debugfs prints on stderr (`debugfs 1.47.0 (5-Feb-2023)`).
fn is_debugfs_banner(line: &str) -> bool {
    line.strip_prefix("debugfs ")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// What to bundle.
#[derive(Debug)]
pub struct MakeBundle {
    /// The rootfs tars, applied in order (OCI layers, or one mmdebstrap tar).
    pub rootfs_tars: Vec<TarInput>,
    /// The image name (also the bundle's file name: `<name>.tar.zst`).
    pub name: String,
    /// The distribution, for the manifest.
    pub distro: String,
    /// The architecture, for the manifest.
    pub arch: String,
    /// The kernel the modules belong to, for the manifest.
    pub kernel_ref: String,
    /// A description, for the manifest.
    pub description: String,
    /// The image size in bytes (default: see [`RootfsOptions::size`]).
    pub size: Option<u64>,
    /// The static guest agent binary.
    pub agent_bin: PathBuf,
    /// A kernel modules directory, copied to `/lib/modules/<its name>`.
    pub modules_dir: Option<PathBuf>,
    /// The init asked for; `None` picks it from the tree.
    pub init: Option<GuestInit>,
    /// Where `<name>.tar.zst` goes (created if missing; an existing bundle of that name
    /// is replaced).
    pub out_dir: PathBuf,
    /// Where the staging happens (a temporary directory inside, removed at the end).
    pub work_dir: PathBuf,
}

/// A finished bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// `<out_dir>/<name>.tar.zst`.
    pub path: PathBuf,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Builds the bundle `<out_dir>/<name>.tar.zst` (see the module docs).
pub fn make_bundle(
    runner: &dyn CommandRunner,
    req: MakeBundle,
    progress: &mut dyn FnMut(&str),
) -> Result<BundleInfo, ImageError> {
    validate_image_name(&req.name)?;
    let mut manifest = Manifest {
        name: req.name,
        distro: req.distro,
        arch: req.arch,
        kernel_ref: req.kernel_ref,
        description: req.description,
        init: GuestInit::default(),
    };
    manifest
        .validate()
        .map_err(|reason| ImageError::invalid("manifest", manifest.name.clone(), reason))?;
    let tmp = tempfile::Builder::new()
        .prefix(".banger-bundle-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&req.work_dir)
        .map_err(ImageError::io(
            &req.work_dir,
            "create a staging directory in",
        ))?;
    let rootfs = tmp.path().join(ROOTFS_FILE);
    let opts = RootfsOptions {
        size: req.size,
        agent_bin: req.agent_bin,
        modules_dir: req.modules_dir,
        init: req.init,
        max_tree_bytes: None,
    };
    let report = build_rootfs(
        runner,
        req.rootfs_tars,
        &opts,
        tmp.path(),
        &rootfs,
        progress,
    )?;
    manifest.init = report.guest.init;
    progress(&format!("guest init: {}", manifest.init));

    let info = pack_in(&manifest, &rootfs, tmp.path(), &req.out_dir, progress)?;
    fs::remove_file(&rootfs).map_err(ImageError::io(&rootfs, "remove"))?;
    Ok(info)
}

/// Packs an existing root filesystem image `rootfs` (never re-flattened) with `manifest`
/// into `<out_dir>/<name>.tar.zst`, as [`make_bundle`] does: staged in a private temporary
/// directory under `work_dir`, published by one rename.
pub fn pack_bundle(
    manifest: Manifest,
    rootfs: &Path,
    out_dir: &Path,
    work_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BundleInfo, ImageError> {
    manifest
        .validate()
        .map_err(|reason| ImageError::invalid("manifest", manifest.name.clone(), reason))?;
    let tmp = tempfile::Builder::new()
        .prefix(".banger-bundle-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(work_dir)
        .map_err(ImageError::io(work_dir, "create a staging directory in"))?;
    pack_in(&manifest, rootfs, tmp.path(), out_dir, progress)
}

/// Writes the bundle into `staging`, then publishes it to `out_dir`.
fn pack_in(
    manifest: &Manifest,
    rootfs: &Path,
    staging: &Path,
    out_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BundleInfo, ImageError> {
    let file_name = format!("{}.tar.zst", manifest.name);
    let staged = staging.join(&file_name);
    let mut manifest_json =
        serde_json::to_vec_pretty(manifest).map_err(|e| ImageError::Manifest {
            source_path: staged.clone(),
            reason: e.to_string(),
        })?;
    manifest_json.push(b'\n');
    progress(&format!("compressing {file_name}"));
    let (sha256, size_bytes) = write_bundle(&staged, &manifest_json, rootfs)?;
    fs::create_dir_all(out_dir).map_err(ImageError::io(out_dir, "create the output directory"))?;
    let path = out_dir.join(&file_name);
    publish_file(&staged, &path)?;
    progress(&format!(
        "wrote {} ({} MiB)",
        path.display(),
        size_bytes >> 20
    ));
    Ok(BundleInfo {
        path,
        sha256,
        size_bytes,
        manifest: manifest.clone(),
    })
}

/// Writes the bundle `path`: the manifest, then the image; returns its sha256 and size.
fn write_bundle(path: &Path, manifest: &[u8], rootfs: &Path) -> Result<(String, u64), ImageError> {
    let write_err = ImageError::io(path, "write the bundle");
    let file = File::create(path).map_err(ImageError::io(path, "create"))?;
    let hashing = HashWriter::new(file);
    let result = (|| -> io::Result<HashWriter<File>> {
        let mut encoder = zstd::Encoder::new(hashing, ZSTD_LEVEL)?;
        encoder.include_checksum(true)?;
        let mut builder = tar::Builder::new(encoder);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = |size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            h
        };
        let mut h = header(manifest.len() as u64);
        builder.append_data(&mut h, MANIFEST_FILE, manifest)?;
        let image = SparseReader::open(rootfs)?;
        let mut h = header(image.len);
        builder.append_data(&mut h, ROOTFS_FILE, image)?;
        let encoder = builder.into_inner()?;
        let mut hashing = encoder.finish()?;
        hashing.flush()?;
        hashing.inner.sync_all()?;
        Ok(hashing)
    })();
    let hashing = result.map_err(write_err)?;
    Ok((hex(&hashing.hasher.finalize()), hashing.written))
}

/// Moves the finished `staged` file to `dest` atomically: a rename, or (across
/// filesystems) a copy to a temporary file next to `dest` renamed over it.
fn publish_file(staged: &Path, dest: &Path) -> Result<(), ImageError> {
    match fs::rename(staged, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let dir = dest.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::Builder::new()
                .prefix(".banger-publish-")
                .tempfile_in(dir)
                .map_err(ImageError::io(dir, "create a temporary file in"))?;
            let mut src = File::open(staged).map_err(ImageError::io(staged, "open"))?;
            io::copy(&mut src, tmp.as_file_mut()).map_err(ImageError::io(tmp.path(), "write"))?;
            tmp.as_file()
                .sync_all()
                .map_err(ImageError::io(tmp.path(), "sync"))?;
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(ImageError::io(tmp.path(), "set the permissions of"))?;
            tmp.persist(dest)
                .map_err(|e| ImageError::io(dest, "rename the finished file to")(e.error))?;
            Ok(())
        }
        Err(e) => Err(ImageError::io(dest, "rename the finished file to")(e)),
    }
}

/// Unpacks the bundle `bundle` into the new directory `dest_dir` (`rootfs.ext4`, written
/// sparsely, and `manifest.json`), returning the validated manifest. With
/// `expected_sha256` (hex), the bundle's digest must match. `dest_dir` must not exist;
/// the files are staged in a sibling temporary directory renamed into place at the end,
/// so on any failure (including a digest mismatch) nothing is left.
pub fn read_bundle(
    bundle: &Path,
    dest_dir: &Path,
    expected_sha256: Option<&str>,
) -> Result<Manifest, ImageError> {
    read_bundle_capped(bundle, dest_dir, expected_sha256, u64::MAX)
}

/// [`read_bundle`], refusing a `rootfs.ext4` larger than `max_rootfs` bytes before
/// writing any of it (a small bundle can unpack to a huge image: a decompression bomb).
pub fn read_bundle_capped(
    bundle: &Path,
    dest_dir: &Path,
    expected_sha256: Option<&str>,
    max_rootfs: u64,
) -> Result<Manifest, ImageError> {
    let expected = expected_sha256
        .map(|s| {
            let s = s.trim().to_ascii_lowercase();
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(s)
            } else {
                Err(ImageError::invalid(
                    "sha256",
                    s,
                    "must be 64 hexadecimal digits",
                ))
            }
        })
        .transpose()?;
    if fs::symlink_metadata(dest_dir).is_ok() {
        return Err(ImageError::invalid(
            "destination",
            dest_dir.display().to_string(),
            "already exists",
        ));
    }
    let parent = match dest_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".banger-unpack-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(ImageError::io(parent, "create a staging directory in"))?;
    let (manifest, actual) = match extract(bundle, staging.path(), max_rootfs) {
        Ok(done) => done,
        Err(e) => {
            // A corrupt download shows as a broken stream: the digest says why.
            if let Some(expected) = &expected
                && let Ok(actual) = sha256_file(bundle)
                && &actual != expected
            {
                return Err(ImageError::Sha256Mismatch {
                    path: bundle.to_path_buf(),
                    expected: expected.clone(),
                    actual,
                });
            }
            return Err(e);
        }
    };
    if let Some(expected) = expected
        && actual != expected
    {
        return Err(ImageError::Sha256Mismatch {
            path: bundle.to_path_buf(),
            expected,
            actual,
        });
    }
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io(staging.path(), "set the permissions of"))?;
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, dest_dir) {
        // Best effort: the unpacked files are useless outside `dest_dir`.
        let _ = fs::remove_dir_all(&staged);
        return Err(ImageError::io(dest_dir, "rename the unpacked bundle to")(e));
    }
    Ok(manifest)
}

/// The manifest of `bundle`, read from its first member (where [`make_bundle`] puts it)
/// without unpacking the image: what a pull needs to know before registering (the kernel).
/// Full checks are [`read_bundle`]'s.
pub fn read_manifest(bundle: &Path) -> Result<Manifest, ImageError> {
    let refuse = |reason: String| ImageError::Bundle {
        bundle: bundle.to_path_buf(),
        reason,
    };
    let corrupt = |e: io::Error| refuse(format!("cannot read it: {e}"));
    let file = File::open(bundle).map_err(ImageError::io(bundle, "open"))?;
    let decoder = zstd::Decoder::new(file).map_err(corrupt)?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(corrupt)?;
    let Some(entry) = entries.next() else {
        return Err(refuse(format!("no {MANIFEST_FILE}")));
    };
    let mut entry = entry.map_err(corrupt)?;
    let raw = entry.path_bytes().into_owned();
    let name = raw.strip_prefix(b"./").unwrap_or(&raw);
    if name != MANIFEST_FILE.as_bytes() || entry.header().entry_type() != tar::EntryType::Regular {
        return Err(refuse(format!(
            "its first member is {:?}, not the regular file {MANIFEST_FILE}",
            String::from_utf8_lossy(&raw)
        )));
    }
    Ok(manifest_member(bundle, &mut entry)?.0)
}

/// Reads and checks the manifest member `entry` of `bundle`: the manifest and its bytes.
fn manifest_member(
    bundle: &Path,
    entry: &mut dyn ReadSized,
) -> Result<(Manifest, Vec<u8>), ImageError> {
    let refuse = |reason: String| ImageError::Bundle {
        bundle: bundle.to_path_buf(),
        reason,
    };
    if entry.size() > MANIFEST_MAX {
        return Err(refuse(format!(
            "{MANIFEST_FILE} is {} bytes; the limit is {MANIFEST_MAX}",
            entry.size()
        )));
    }
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let bad = |reason: String| ImageError::Manifest {
        source_path: bundle.to_path_buf(),
        reason,
    };
    let parsed: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    parsed.validate().map_err(bad)?;
    Ok((parsed, bytes))
}

/// A tar member: a reader that knows its size.
trait ReadSized: Read {
    fn size(&self) -> u64;
}

impl<R: Read> ReadSized for tar::Entry<'_, R> {
    fn size(&self) -> u64 {
        tar::Entry::size(self)
    }
}

/// Unpacks `bundle` into `dir`; returns the manifest and the bundle's sha256.
fn extract(bundle: &Path, dir: &Path, max_rootfs: u64) -> Result<(Manifest, String), ImageError> {
    let refuse = |reason: String| ImageError::Bundle {
        bundle: bundle.to_path_buf(),
        reason,
    };
    let corrupt = |e: io::Error| refuse(format!("cannot read it: {e}"));
    let file = File::open(bundle).map_err(ImageError::io(bundle, "open"))?;
    let decoder = zstd::Decoder::new(HashReader::new(file)).map_err(corrupt)?;
    let mut archive = tar::Archive::new(decoder);
    let mut manifest: Option<Manifest> = None;
    let mut rootfs = false;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let name = raw.strip_prefix(b"./").unwrap_or(&raw);
        let entry_type = entry.header().entry_type();
        if entry_type != tar::EntryType::Regular {
            return Err(refuse(format!(
                "member {shown:?} is a {entry_type:?} entry; only the regular files {ROOTFS_FILE} and {MANIFEST_FILE} are allowed"
            )));
        }
        if name == MANIFEST_FILE.as_bytes() {
            if manifest.is_some() {
                return Err(refuse(format!("{MANIFEST_FILE} appears twice")));
            }
            let (parsed, bytes) = manifest_member(bundle, &mut entry)?;
            let path = dir.join(MANIFEST_FILE);
            fs::write(&path, &bytes).map_err(ImageError::io(&path, "write"))?;
            manifest = Some(parsed);
        } else if name == ROOTFS_FILE.as_bytes() {
            if rootfs {
                return Err(refuse(format!("{ROOTFS_FILE} appears twice")));
            }
            let size = entry.size();
            if size > max_rootfs {
                return Err(refuse(format!(
                    "{ROOTFS_FILE} unpacks to {size} bytes, more than the limit of {max_rootfs}"
                )));
            }
            let path = dir.join(ROOTFS_FILE);
            write_sparse(&mut entry, &path, size, &corrupt)?;
            rootfs = true;
        } else {
            return Err(refuse(format!(
                "unexpected member {shown:?}; only {ROOTFS_FILE} and {MANIFEST_FILE} are allowed"
            )));
        }
    }
    let Some(manifest) = manifest else {
        return Err(refuse(format!("no {MANIFEST_FILE}")));
    };
    if !rootfs {
        return Err(refuse(format!("no {ROOTFS_FILE}")));
    }
    // Read to the very end: the zstd checksum is verified, and every byte is hashed.
    let mut decoder = archive.into_inner();
    io::copy(&mut decoder, &mut io::sink()).map_err(corrupt)?;
    let mut raw = decoder.finish();
    io::copy(&mut raw, &mut io::sink()).map_err(corrupt)?;
    let hashing = raw.into_inner();
    Ok((manifest, hex(&hashing.hasher.finalize())))
}

/// Writes `size` bytes of `reader` to the new file `path`, leaving holes for the 4 KiB
/// blocks that are all zeros.
fn write_sparse(
    reader: &mut dyn Read,
    path: &Path,
    size: u64,
    read_error: &dyn Fn(io::Error) -> ImageError,
) -> Result<(), ImageError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ImageError::io(path, "create"))?;
    let write_err = |e| ImageError::io(path, "write")(e);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < size {
        let want = buf.len().min((size - offset) as usize);
        let mut filled = 0;
        while filled < want {
            match reader.read(&mut buf[filled..want]) {
                Ok(0) => {
                    return Err(read_error(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} ends after {} of {size} bytes",
                            path.display(),
                            offset + filled as u64
                        ),
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        // Write runs of non-zero blocks; skip zero blocks.
        let mut i = 0;
        while i < filled {
            let end = (i + BLOCK).min(filled);
            if is_zero(&buf[i..end]) {
                i = end;
                continue;
            }
            let start = i;
            let mut stop = end;
            while stop < filled {
                let next = (stop + BLOCK).min(filled);
                if is_zero(&buf[stop..next]) {
                    break;
                }
                stop = next;
            }
            file.write_all_at(&buf[start..stop], offset + start as u64)
                .map_err(write_err)?;
            i = stop;
        }
        offset += filled as u64;
    }
    file.set_len(size).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(())
}

/// Whether `block` (at most [`BLOCK`] bytes) is all zeros; a slice comparison (memcmp)
/// is fast even in unoptimised builds.
fn is_zero(block: &[u8]) -> bool {
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    block == &ZEROS[..block.len()]
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).map_err(ImageError::io(path, "open"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(path, "read")(e)),
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes and counts what goes through to `inner`.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W> HashWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read from `inner`.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> HashReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a file whose holes (found with `lseek(SEEK_DATA/SEEK_HOLE)`) are returned as
/// zeros without being read: a mostly empty image streams at memory speed.
struct SparseReader {
    file: File,
    path: PathBuf,
    len: u64,
    pos: u64,
    /// The current region: `[pos, region_end)`, data or hole.
    region_end: u64,
    region_is_data: bool,
}

impl SparseReader {
    fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len,
            pos: 0,
            region_end: 0,
            region_is_data: false,
        })
    }

    fn lseek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: lseek on a file descriptor we own; it only moves the file offset.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }

    /// Finds the region starting at `pos`.
    fn next_region(&mut self) -> io::Result<()> {
        match self.lseek(self.pos, libc::SEEK_DATA) {
            // No data after pos: a hole to the end.
            Ok(None) => {
                self.region_is_data = false;
                self.region_end = self.len;
            }
            Ok(Some(data)) if data > self.pos => {
                self.region_is_data = false;
                self.region_end = data.min(self.len);
            }
            Ok(Some(_)) => {
                let hole = self.lseek(self.pos, libc::SEEK_HOLE)?.unwrap_or(self.len);
                self.region_is_data = true;
                self.region_end = hole.min(self.len).max(self.pos + 1);
            }
            // SEEK_DATA unsupported: everything is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.region_is_data = true;
                self.region_end = self.len;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.region_end {
            self.next_region()
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        }
        let n = buf.len().min((self.region_end - self.pos) as usize);
        let n = if self.region_is_data {
            let got = self
                .file
                .read_at(&mut buf[..n], self.pos)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being read", self.path.display()),
                ));
            }
            got
        } else {
            buf[..n].fill(0);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_reader_returns_data_and_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_len(10 << 20).unwrap();
        file.write_all_at(b"hello", 3 << 20).unwrap();
        file.write_all_at(b"end", (10 << 20) - 3).unwrap();
        drop(file);
        let mut reader = SparseReader::open(&path).unwrap();
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 10 << 20);
        assert_eq!(&all[3 << 20..(3 << 20) + 5], b"hello");
        assert_eq!(&all[(10 << 20) - 3..], b"end");
        let nonzero = all.iter().filter(|b| **b != 0).count();
        assert_eq!(nonzero, 8);
    }

    #[test]
    fn write_sparse_skips_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut data = vec![0u8; 8 << 20];
        data[5000] = 1;
        data[(8 << 20) - 1] = 2;
        let never = |e: io::Error| panic!("{e}");
        write_sparse(&mut &data[..], &path, data.len() as u64, &never).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        let meta = fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks", meta.blocks());
    }

    #[test]
    fn write_sparse_reports_a_short_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let err = write_sparse(&mut &[1u8; 10][..], &path, 20, &|e| ImageError::TarRead {
            tar: "t".into(),
            entry: None,
            source: e,
        })
        .unwrap_err();
        let text = banger_core::error::chain(&err);
        assert!(text.contains("ends after 10 of 20 bytes"), "{text}");
    }

    #[test]
    fn manifest_validation() {
        let good = Manifest {
            name: "debian-bookworm".into(),
            distro: "debian".into(),
            arch: "x86_64".into(),
            kernel_ref: "debian-6.1".into(),
            description: "".into(),
            init: GuestInit::Banger,
        };
        assert_eq!(good.validate(), Ok(()));
        let mut bad = good.clone();
        bad.name = "../x".into();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.arch = " ".into();
        assert_eq!(bad.validate(), Err("arch is empty".to_string()));
    }

    #[test]
    fn mknod_script_changes_directory_once_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::create(&dir.path().join("t")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, major, minor) in [
            ("dev/null", tar::EntryType::Char, 1, 3),
            ("dev/zero", tar::EntryType::Char, 1, 5),
            ("dev/sda", tar::EntryType::Block, 8, 0),
            ("run/initctl", tar::EntryType::Fifo, 0, 0),
            ("top \"q\"", tar::EntryType::Fifo, 0, 0),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_size(0);
            h.set_mode(0o666);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_data(&mut h, name, &[][..]).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        tree.apply_tar(TarInput::Reader {
            name: "t".into(),
            reader: Box::new(io::Cursor::new(bytes)),
        })
        .unwrap();
        let (script, count) = mknod_script(&tree).unwrap();
        assert_eq!(count, 5);
        assert_eq!(
            script.join("\n") + "\n",
            "cd \"/dev\"\nmknod \"null\" c 1 3\nmknod \"sda\" b 8 0\nmknod \"zero\" c 1 5\n\
             cd \"/run\"\nmknod \"initctl\" p\ncd \"/\"\nmknod \"top \"\"q\"\"\" p\n"
        );
    }
}
