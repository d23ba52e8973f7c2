//! Flattening rootfs tar streams (OCI layers in order, or one mmdebstrap tar) into a
//! staging directory on the host, while recording every entry's metadata in a map.
//!
//! The staging [`Tree`] is the host directory plus the map `path -> `[`Meta`]. The map is
//! what counts: files on the host belong to whoever runs banger and carry private
//! permissions (0600 files, 0700 directories, never setuid), and device nodes and fifos
//! are not created on the host at all. When the tree becomes an ext4 image (see
//! [`crate::bundle`]) every entry's owner, group and mode are re-applied from the map and
//! the special files are created inside the image. So flattening works as non-root.
//!
//! # Layers
//!
//! Streams are plain tar, gzip or zstd (detected by their magic bytes). Entries are applied
//! in order, later ones replacing earlier ones at the same path (a directory over a
//! directory only updates its metadata). OCI whiteouts:
//! - `DIR/.wh.NAME` deletes `DIR/NAME` (and everything under it) from earlier layers;
//! - `DIR/.wh..wh..opq` makes `DIR` opaque: whatever earlier layers put under it goes,
//!   what this layer puts there stays (whatever the order of the entries);
//! - other `.wh..wh.*` names (aufs metadata) are ignored; whiteout files are never
//!   materialised.
//!
//! `/.dockerenv` and `/run/.containerenv` are dropped.
//!
//! # Safety
//!
//! Entry paths are normalised (`./`, empty and `.` components dropped, `..` applied
//! lexically); a path that is absolute, or whose `..` climbs above the root, is refused
//! (the whole flatten fails). Nothing is ever written through a symlink: every parent of
//! an entry must be a directory in the map (which mirrors the host tree exactly, since
//! only this module writes there) and the direct parent is checked on disk too; an entry
//! below a symlink or a file is refused. Files are created with `O_CREAT|O_EXCL|
//! O_NOFOLLOW`. Hard links become hard links inside the staging directory (or copies of
//! the target's metadata for special files); their targets obey the same rules.
//!
//! Accepted entry types: regular files (including GNU sparse and contiguous files),
//! directories, symlinks, hard links, character and block devices, fifos. Anything else
//! (and names the image tools cannot express: non-UTF-8, containing a newline, a carriage
//! return) is skipped and counted in [`Tree::skipped`]. Extended attributes (pax
//! `SCHILY.xattr.*`, e.g. file capabilities) are not carried over; entries having them are
//! counted there too.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::ImageError;

/// The type of an entry, with what only that type has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (its contents are in the staging directory).
    File,
    /// A directory.
    Dir,
    /// A symbolic link, and its target (stored verbatim, never followed while writing).
    Symlink {
        /// The link's target.
        target: String,
    },
    /// A character device (not created on the host).
    CharDevice {
        /// Major device number.
        major: u32,
        /// Minor device number.
        minor: u32,
    },
    /// A block device (not created on the host).
    BlockDevice {
        /// Major device number.
        major: u32,
        /// Minor device number.
        minor: u32,
    },
    /// A named pipe (not created on the host).
    Fifo,
}

impl EntryKind {
    /// The `S_IFMT` bits of this type (`0o100000` for a regular file...).
    pub fn type_bits(&self) -> u32 {
        match self {
            EntryKind::File => 0o100000,
            EntryKind::Dir => 0o040000,
            EntryKind::Symlink { .. } => 0o120000,
            EntryKind::CharDevice { .. } => 0o020000,
            EntryKind::BlockDevice { .. } => 0o060000,
            EntryKind::Fifo => 0o010000,
        }
    }

    /// Whether the entry exists in the map only (device nodes and fifos).
    pub fn is_special(&self) -> bool {
        matches!(
            self,
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo
        )
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::File => "regular file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::CharDevice { .. } => "character device",
            EntryKind::BlockDevice { .. } => "block device",
            EntryKind::Fifo => "fifo",
        })
    }
}

/// The metadata of one entry of the image, as the tar (or the guest payload) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Its type.
    pub kind: EntryKind,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits including setuid/setgid/sticky (`0o4755`), without type bits.
    pub mode: u32,
}

impl Meta {
    /// A root-owned entry of `kind` with permission bits `mode`.
    pub fn root(kind: EntryKind, mode: u32) -> Self {
        Meta {
            kind,
            uid: 0,
            gid: 0,
            mode: mode & 0o7777,
        }
    }

    /// The full `i_mode`: type bits and permission bits.
    pub fn full_mode(&self) -> u32 {
        self.kind.type_bits() | self.mode
    }
}

/// Where a rootfs tar comes from.
pub enum TarInput {
    /// A file.
    Path(PathBuf),
    /// An already open stream (standard input for `-`...), and a name for messages.
    Reader {
        /// How the stream is called in messages (`"stdin"`).
        name: String,
        /// The stream.
        reader: Box<dyn Read + Send>,
    },
}

impl fmt::Debug for TarInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarInput::Path(path) => f.debug_tuple("Path").field(path).finish(),
            TarInput::Reader { name, .. } => f.debug_struct("Reader").field("name", name).finish(),
        }
    }
}

impl TarInput {
    /// The name used in messages: the path, or the stream's name.
    pub fn name(&self) -> String {
        match self {
            TarInput::Path(path) => path.display().to_string(),
            TarInput::Reader { name, .. } => name.clone(),
        }
    }

    fn open(self) -> Result<(String, Box<dyn Read + Send>), ImageError> {
        match self {
            TarInput::Path(path) => {
                let file = File::open(&path).map_err(ImageError::io(&path, "open"))?;
                Ok((path.display().to_string(), Box::new(file)))
            }
            TarInput::Reader { name, reader } => Ok((name, reader)),
        }
    }
}

/// Paths never materialised: container runtime markers.
const DROPPED: [&str; 2] = ["/.dockerenv", "/run/.containerenv"];
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const HOST_FILE_MODE: u32 = 0o600;
const HOST_DIR_MODE: u32 = 0o700;
/// The size of the buffer file contents are copied through.
const COPY_BUF: usize = 256 * 1024;

/// What one tar contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerReport {
    /// Entries applied (files, directories, links, special files).
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Container runtime markers dropped (`/.dockerenv`...).
    pub dropped: u64,
    /// Entries skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// A refusal (the entry's fault) or a host failure, before context is added.
enum PutError {
    Refused(String),
    Image(ImageError),
}

impl From<ImageError> for PutError {
    fn from(e: ImageError) -> Self {
        PutError::Image(e)
    }
}

/// What to create at a path.
enum Content<'a> {
    Dir,
    /// The file's contents, how to report an error reading them, and their length
    /// when known (a shorter stream is an error).
    File(
        &'a mut dyn Read,
        &'a dyn Fn(io::Error) -> ImageError,
        Option<u64>,
    ),
    Symlink(String),
    /// A hard link to this (normalised) path.
    HardLink(String),
    Special,
}

/// Paths written by the tar being applied, with all their ancestors (an opaque
/// directory keeps them).
#[derive(Default)]
struct Layer {
    paths: HashSet<String>,
}

impl Layer {
    fn mark(&mut self, path: &str) {
        let mut p = path.to_string();
        loop {
            if !self.paths.insert(p.clone()) || p == "/" {
                return;
            }
            p = parent(&p).to_string();
        }
    }
}

/// A staging directory and the metadata of everything in it (see the module docs).
pub struct Tree {
    root: PathBuf,
    entries: BTreeMap<String, Meta>,
    skipped: BTreeMap<String, u64>,
    /// The copy buffer, allocated once.
    buf: Vec<u8>,
    /// The most file bytes the tree may hold ([`Tree::set_size_limit`]).
    limit: Option<u64>,
    /// File bytes written so far.
    written: u64,
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("root", &self.root)
            .field("entries", &self.entries.len())
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl Tree {
    /// Creates the staging directory `root` (which must not exist; its parent must) and
    /// an empty tree whose root directory is `0:0`, mode 0755.
    pub fn create(root: &Path) -> Result<Tree, ImageError> {
        DirBuilder::new()
            .mode(HOST_DIR_MODE)
            .create(root)
            .map_err(ImageError::io(root, "create the staging directory"))?;
        let mut entries = BTreeMap::new();
        entries.insert("/".to_string(), Meta::root(EntryKind::Dir, 0o755));
        Ok(Tree {
            root: root.to_path_buf(),
            entries,
            skipped: BTreeMap::new(),
            buf: Vec::new(),
            limit: None,
            written: 0,
        })
    }

    /// Caps the bytes of file contents the tree may hold (a decompression bomb's guard): an
    /// entry that would take it past `bytes` is refused, naming the limit.
    pub fn set_size_limit(&mut self, bytes: u64) {
        self.limit = Some(bytes);
    }

    /// The staging directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every entry, by absolute path in the image (`/`, `/etc`, `/etc/passwd`...).
    pub fn entries(&self) -> &BTreeMap<String, Meta> {
        &self.entries
    }

    /// The entry at `path` (absolute, normalised), if any.
    pub fn get(&self, path: &str) -> Option<&Meta> {
        self.entries.get(path)
    }

    /// Entries skipped so far (all tars and installs), by reason.
    pub fn skipped(&self) -> &BTreeMap<String, u64> {
        &self.skipped
    }

    /// The host path of the image path `path`.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Applies one tar stream on top of the tree (see the module docs).
    pub fn apply_tar(&mut self, input: TarInput) -> Result<LayerReport, ImageError> {
        let (name, reader) = input.open()?;
        let reader = decompress(&name, reader)?;
        let mut archive = tar::Archive::new(reader);
        let mut report = LayerReport::default();
        let mut layer = Layer::default();
        let mut last: Option<String> = None;
        let read_error = |last: &Option<String>| {
            let tar = name.clone();
            let entry = last.as_ref().map(|l| format!("after {l}"));
            move |source| ImageError::TarRead { tar, entry, source }
        };
        let entries = archive.entries().map_err(read_error(&last))?;
        for entry in entries {
            let mut entry = entry.map_err(read_error(&last))?;
            let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.apply_entry(&name, &shown, &mut entry, &mut layer, &mut report)?;
            last = Some(shown);
        }
        for (reason, count) in &report.skipped {
            *self.skipped.entry(reason.clone()).or_default() += count;
        }
        Ok(report)
    }

    fn apply_entry<R: Read>(
        &mut self,
        tar: &str,
        shown: &str,
        entry: &mut tar::Entry<'_, R>,
        layer: &mut Layer,
        report: &mut LayerReport,
    ) -> Result<(), ImageError> {
        let refuse = |reason: String| ImageError::Entry {
            tar: tar.to_string(),
            entry: shown.to_string(),
            reason,
        };
        let read_error = |source| ImageError::TarRead {
            tar: tar.to_string(),
            entry: Some(shown.to_string()),
            source,
        };
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            return Ok(());
        }
        let path = match normalize(&entry.path_bytes()) {
            Ok(Normalized::Path(path)) => path,
            Ok(Normalized::Unrepresentable(why)) => return skip(report, why),
            Err(reason) => return Err(refuse(reason.to_string())),
        };

        // Whiteouts.
        let base = basename(&path);
        if base == OPAQUE_WHITEOUT {
            report.whiteouts += 1;
            self.make_opaque(parent(&path), layer)?;
            return Ok(());
        }
        if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
            if name.starts_with(WHITEOUT_PREFIX) {
                return skip(report, "aufs metadata (.wh..wh.*)");
            }
            if name.is_empty() || name == "." || name == ".." {
                return Err(refuse("whiteout of an invalid name".to_string()));
            }
            report.whiteouts += 1;
            let target = join(parent(&path), name);
            if !layer.paths.contains(&target) && self.entries.contains_key(&target) {
                self.remove(&target)?;
            }
            return Ok(());
        }
        if DROPPED.contains(&path.as_str()) {
            report.dropped += 1;
            return Ok(());
        }

        let header = entry.header();
        let mode = header.mode().map_err(read_error)? & 0o7777;
        let uid = header.uid().map_err(read_error)?;
        let gid = header.gid().map_err(read_error)?;
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(refuse(format!("owner {uid}:{gid} does not fit in 32 bits")));
        };
        let device = |entry: &tar::Entry<'_, R>| -> Result<(u32, u32), ImageError> {
            let major = entry.header().device_major().map_err(read_error)?;
            let minor = entry.header().device_minor().map_err(read_error)?;
            Ok((major.unwrap_or(0), minor.unwrap_or(0)))
        };
        let has_xattrs = entry
            .pax_extensions()
            .map_err(read_error)?
            .is_some_and(|exts| {
                exts.flatten()
                    .any(|e| e.key_bytes().starts_with(b"SCHILY.xattr."))
            });
        if has_xattrs {
            bump(&mut report.skipped, "extended attributes not carried over");
        }

        let link_target = || -> Result<Option<String>, ImageError> {
            let Some(raw) = entry.link_name_bytes() else {
                return Err(refuse("link without a target".to_string()));
            };
            match std::str::from_utf8(&raw) {
                Ok("") => Ok(None),
                Ok(t) if t.contains(['\n', '\r', '\0']) => Ok(None),
                Ok(t) => Ok(Some(t.to_string())),
                Err(_) => Ok(None),
            }
        };
        // Pre-POSIX tars mark directories as regular files with a trailing slash.
        let old_style_dir = entry_type == EntryType::Regular && entry.path_bytes().ends_with(b"/");
        let (kind, content) = match entry_type {
            _ if old_style_dir => (EntryKind::Dir, Some(Content::Dir)),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                (EntryKind::File, None)
            }
            EntryType::Directory => (EntryKind::Dir, Some(Content::Dir)),
            EntryType::Symlink => match link_target()? {
                Some(target) => (
                    EntryKind::Symlink {
                        target: target.clone(),
                    },
                    Some(Content::Symlink(target)),
                ),
                None => {
                    return skip(report, "symlink with an empty or unrepresentable target");
                }
            },
            EntryType::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("hard link without a target".to_string()))?;
                let target = match normalize(&raw) {
                    Ok(Normalized::Path(target)) => target,
                    Ok(Normalized::Unrepresentable(why)) => {
                        return skip(report, &format!("hard link to a skipped entry ({why})"));
                    }
                    Err(reason) => return Err(refuse(format!("hard link target {reason}"))),
                };
                // The kind is the target's; filled in by `put`.
                (EntryKind::File, Some(Content::HardLink(target)))
            }
            EntryType::Char | EntryType::Block => {
                let (major, minor) = device(entry)?;
                if major > 0xffff || minor > 0xffff {
                    return skip(report, "device number above 65535");
                }
                let kind = if entry_type == EntryType::Char {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                };
                (kind, Some(Content::Special))
            }
            EntryType::Fifo => (EntryKind::Fifo, Some(Content::Special)),
            other => {
                let code = char::from(other.as_byte());
                return skip(report, &format!("unsupported entry type {code:?}"));
            }
        };
        let meta = Meta {
            kind,
            uid,
            gid,
            mode,
        };
        let result = match content {
            Some(content) => self.put(&path, content, meta, Some(layer)),
            None => {
                let size = entry.size();
                let content = Content::File(entry, &read_error, Some(size));
                self.put(&path, content, meta, Some(layer))
            }
        };
        match result {
            Ok(true) => report.entries += 1,
            Ok(false) => bump(&mut report.skipped, "hard link to a directory"),
            Err(PutError::Refused(reason)) => return Err(refuse(reason)),
            Err(PutError::Image(e)) => return Err(e),
        }
        Ok(())
    }

    /// Removes everything under `dir` that the current layer did not write.
    fn make_opaque(&mut self, dir: &str, layer: &Layer) -> Result<(), ImageError> {
        if !matches!(self.entries.get(dir), Some(m) if m.kind == EntryKind::Dir) {
            return Ok(());
        }
        let doomed: Vec<String> = self
            .entries
            .range(descendants(dir))
            .map(|(k, _)| k.clone())
            .filter(|k| !layer.paths.contains(k))
            .collect();
        for path in doomed {
            if self.entries.contains_key(&path) {
                self.remove(&path)?;
            }
        }
        Ok(())
    }

    /// Removes `path` and everything under it, from the map and the host. Never called on
    /// `/`.
    pub(crate) fn remove(&mut self, path: &str) -> Result<(), ImageError> {
        debug_assert_ne!(path, "/");
        let under: Vec<String> = self
            .entries
            .range(descendants(path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in under {
            self.entries.remove(&k);
        }
        self.entries.remove(path);
        let host = self.host_path(path);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&host).map_err(ImageError::io(&host, "remove"))
            }
            Ok(_) => fs::remove_file(&host).map_err(ImageError::io(&host, "remove")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io(&host, "inspect")(e)),
        }
    }

    /// Creates `content` at the normalised `path` with `meta` (see the module docs).
    /// Returns `false` when the entry was skipped (a hard link to a directory).
    fn put(
        &mut self,
        path: &str,
        content: Content<'_>,
        mut meta: Meta,
        mut layer: Option<&mut Layer>,
    ) -> Result<bool, PutError> {
        if path == "/" {
            if !matches!(content, Content::Dir) {
                return Err(PutError::Refused(
                    "the root must be a directory".to_string(),
                ));
            }
            self.entries.insert("/".to_string(), meta);
            return Ok(true);
        }
        if let Content::HardLink(target) = &content {
            match self.entries.get(target) {
                None => {
                    return Err(PutError::Refused(format!(
                        "hard link target {target} does not exist"
                    )));
                }
                Some(t) if t.kind == EntryKind::Dir => return Ok(false),
                Some(_) if target == path => return Ok(true),
                Some(t) => {
                    let t = t.clone();
                    meta = t;
                }
            }
        }
        self.ensure_parents(path, layer.as_deref_mut())?;
        if let Some(existing) = self.entries.get(path) {
            if existing.kind == EntryKind::Dir && matches!(content, Content::Dir) {
                self.entries.insert(path.to_string(), meta);
                if let Some(layer) = layer {
                    layer.mark(path);
                }
                return Ok(true);
            }
            self.remove(path)?;
        }
        let host = self.host_path(path);
        match content {
            Content::Dir => {
                DirBuilder::new()
                    .mode(HOST_DIR_MODE)
                    .create(&host)
                    .map_err(ImageError::io(&host, "create the directory"))?;
            }
            Content::File(reader, read_error, expected) => {
                let over = |limit: u64| {
                    PutError::Refused(format!(
                        "the unpacked files would exceed the limit of {limit} bytes"
                    ))
                };
                if let Some(limit) = self.limit
                    && self.written.saturating_add(expected.unwrap_or(0)) > limit
                {
                    return Err(over(limit));
                }
                let mut file = create_file(&host)?;
                if self.buf.is_empty() {
                    self.buf = vec![0u8; COPY_BUF];
                }
                let copied = copy_data(reader, read_error, &mut file, &host, &mut self.buf)?;
                self.written = self.written.saturating_add(copied);
                if let Some(limit) = self.limit
                    && self.written > limit
                {
                    drop(file);
                    let _ = fs::remove_file(&host);
                    return Err(over(limit));
                }
                if let Some(expected) = expected
                    && copied != expected
                {
                    return Err(PutError::Image(read_error(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("truncated: {copied} of {expected} bytes"),
                    ))));
                }
            }
            Content::Symlink(target) => {
                symlink(&target, &host).map_err(ImageError::io(&host, "create the symlink"))?;
            }
            Content::HardLink(target) => match &meta.kind {
                EntryKind::File => {
                    let from = self.host_path(&target);
                    fs::hard_link(&from, &host)
                        .map_err(ImageError::io(&host, "create the hard link"))?;
                }
                EntryKind::Symlink { target } => {
                    symlink(target, &host).map_err(ImageError::io(&host, "create the symlink"))?;
                }
                _ => {}
            },
            Content::Special => {}
        }
        self.entries.insert(path.to_string(), meta);
        if let Some(layer) = layer {
            layer.mark(path);
        }
        Ok(true)
    }

    /// Makes sure every ancestor of `path` is a directory, creating missing ones
    /// (`0:0`, 0755); refuses when one is something else.
    fn ensure_parents(
        &mut self,
        path: &str,
        mut layer: Option<&mut Layer>,
    ) -> Result<(), PutError> {
        for (i, _) in path.match_indices('/').skip(1) {
            let ancestor = &path[..i];
            match self.entries.get(ancestor) {
                Some(m) if m.kind == EntryKind::Dir => {}
                Some(m) => {
                    return Err(PutError::Refused(format!(
                        "its parent {ancestor} is a {}, not a directory",
                        m.kind
                    )));
                }
                None => {
                    let host = self.host_path(ancestor);
                    DirBuilder::new()
                        .mode(HOST_DIR_MODE)
                        .create(&host)
                        .map_err(ImageError::io(&host, "create the directory"))?;
                    self.entries
                        .insert(ancestor.to_string(), Meta::root(EntryKind::Dir, 0o755));
                    if let Some(layer) = layer.as_deref_mut() {
                        layer.mark(ancestor);
                    }
                }
            }
        }
        // Defence in depth: the map mirrors the host, but check the direct parent there too.
        let host_parent = self.host_path(parent(path));
        let meta =
            fs::symlink_metadata(&host_parent).map_err(ImageError::io(&host_parent, "inspect"))?;
        if !meta.is_dir() {
            return Err(PutError::Refused(format!(
                "its parent {} is not a directory on the host",
                parent(path)
            )));
        }
        Ok(())
    }

    /// Resolves the symlinks in the parents of the absolute `path` inside the tree (an
    /// absolute target restarts at the image root, `..` stops at it), leaving the last
    /// component alone: where the guest would find `path`'s directory.
    pub(crate) fn resolve_parents(&self, path: &str) -> Result<String, ImageError> {
        let mut parts: Vec<String> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_string)
            .collect();
        let Some(last) = parts.pop() else {
            return Ok("/".to_string());
        };
        let mut queue: std::collections::VecDeque<String> = parts.into();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = queue.pop_front() {
            if part == "." {
                continue;
            }
            if part == ".." {
                resolved.pop();
                continue;
            }
            let candidate = format!("/{}", {
                let mut v = resolved.clone();
                v.push(part.clone());
                v.join("/")
            });
            match self.entries.get(&candidate) {
                Some(Meta {
                    kind: EntryKind::Symlink { target },
                    ..
                }) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(ImageError::invalid(
                            "image path",
                            path,
                            "too many levels of symbolic links",
                        ));
                    }
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    for (i, p) in target
                        .split('/')
                        .filter(|p| !p.is_empty())
                        .map(str::to_string)
                        .enumerate()
                    {
                        queue.insert(i, p);
                    }
                }
                _ => resolved.push(part),
            }
        }
        resolved.push(last);
        Ok(format!("/{}", resolved.join("/")))
    }

    /// Installs an entry at `path` (parents resolved through symlinks, missing ones
    /// created as `0:0` 0755), replacing what is there: the guest payload and kernel
    /// modules go in this way. Returns the path used.
    pub(crate) fn install(
        &mut self,
        path: &str,
        content: Install<'_>,
        meta: Meta,
    ) -> Result<String, ImageError> {
        let resolved = self.resolve_parents(path)?;
        let content = match content {
            Install::Dir => Content::Dir,
            Install::Bytes(bytes) => {
                let mut reader: &[u8] = bytes;
                let read_error = |e| ImageError::io("<memory>", "read")(e);
                let content = Content::File(&mut reader, &read_error, None);
                return self.finish_install(path, &resolved, content, meta);
            }
            Install::HostFile(host) => {
                let mut file = File::open(host).map_err(ImageError::io(host, "open"))?;
                let read_error = |e| ImageError::io(host, "read")(e);
                let content = Content::File(&mut file, &read_error, None);
                return self.finish_install(path, &resolved, content, meta);
            }
            Install::Symlink(target) => Content::Symlink(target.to_string()),
        };
        self.finish_install(path, &resolved, content, meta)
    }

    fn finish_install(
        &mut self,
        path: &str,
        resolved: &str,
        content: Content<'_>,
        meta: Meta,
    ) -> Result<String, ImageError> {
        match self.put(resolved, content, meta, None) {
            Ok(_) => Ok(resolved.to_string()),
            Err(PutError::Refused(reason)) => Err(ImageError::invalid(
                "install path",
                path,
                format!("cannot install at {resolved}: {reason}"),
            )),
            Err(PutError::Image(e)) => Err(e),
        }
    }

    /// Copies the host directory `host_dir` to `path` (replacing what is there):
    /// directories, regular files and symlinks, owned by `0:0` with the host's permission
    /// bits; anything else is skipped and counted. Returns the path used.
    pub(crate) fn install_tree(
        &mut self,
        host_dir: &Path,
        path: &str,
    ) -> Result<String, ImageError> {
        // The directory itself may be reached through a symlink; what is inside is copied
        // as it is.
        let host_dir = &fs::canonicalize(host_dir).map_err(ImageError::io(host_dir, "resolve"))?;
        let meta = fs::metadata(host_dir).map_err(ImageError::io(host_dir, "inspect"))?;
        if !meta.is_dir() {
            return Err(ImageError::invalid(
                "directory",
                host_dir.display().to_string(),
                "not a directory",
            ));
        }
        let top = self.resolve_parents(path)?;
        if self.entries.contains_key(&top) && top != "/" {
            self.remove(&top)?;
        }
        let mut stack = vec![(host_dir.to_path_buf(), top.clone())];
        while let Some((host, guest)) = stack.pop() {
            let meta = fs::symlink_metadata(&host).map_err(ImageError::io(&host, "inspect"))?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.install(&guest, Install::Dir, Meta::root(EntryKind::Dir, mode))?;
                let mut children: Vec<(PathBuf, String)> = Vec::new();
                for child in fs::read_dir(&host).map_err(ImageError::io(&host, "list"))? {
                    let child = child.map_err(ImageError::io(&host, "list"))?;
                    match child.file_name().to_str() {
                        Some(name) if !name.contains(['\n', '\r']) => {
                            children.push((child.path(), join(&guest, name)));
                        }
                        _ => self.count_skip("unrepresentable name in a copied directory"),
                    }
                }
                children.sort();
                children.reverse();
                stack.extend(children);
            } else if ft.is_file() {
                self.install(
                    &guest,
                    Install::HostFile(&host),
                    Meta::root(EntryKind::File, mode),
                )?;
            } else if ft.is_symlink() {
                let target =
                    fs::read_link(&host).map_err(ImageError::io(&host, "read the symlink"))?;
                match target.to_str() {
                    Some(t) if !t.is_empty() && !t.contains(['\n', '\r']) => {
                        let t = t.to_string();
                        self.install(
                            &guest,
                            Install::Symlink(&t),
                            Meta::root(EntryKind::Symlink { target: t.clone() }, 0o777),
                        )?;
                    }
                    _ => self.count_skip("unrepresentable symlink in a copied directory"),
                }
            } else {
                self.count_skip("special file in a copied directory");
            }
        }
        Ok(top)
    }

    fn count_skip(&mut self, reason: &str) {
        bump(&mut self.skipped, reason);
    }
}

fn bump(counts: &mut BTreeMap<String, u64>, reason: &str) {
    *counts.entry(reason.to_string()).or_default() += 1;
}

/// Counts a skipped entry: `Ok(())`, the flatten goes on.
fn skip(report: &mut LayerReport, reason: &str) -> Result<(), ImageError> {
    bump(&mut report.skipped, reason);
    Ok(())
}

/// What [`Tree::install`] puts at a path.
pub(crate) enum Install<'a> {
    Dir,
    Bytes(&'a [u8]),
    HostFile(&'a Path),
    Symlink(&'a str),
}

fn create_file(host: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(HOST_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)
        .map_err(ImageError::io(host, "create"))
}

/// Copies `reader` into `file`, telling read errors (the source's, reported with
/// `read_error`) from write errors (the host's); returns the byte count.
fn copy_data(
    reader: &mut dyn Read,
    read_error: &dyn Fn(io::Error) -> ImageError,
    file: &mut File,
    host: &Path,
    buf: &mut [u8],
) -> Result<u64, ImageError> {
    let mut copied = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(read_error(source)),
        };
        file.write_all(&buf[..n])
            .map_err(ImageError::io(host, "write"))?;
        copied += n as u64;
    }
}

/// Wraps `reader` in the decompressor its first bytes call for (plain, gzip, zstd; `tar`
/// names it in errors).
pub fn decompress(
    tar: &str,
    mut reader: Box<dyn Read + Send>,
) -> Result<Box<dyn Read + Send>, ImageError> {
    let mut magic = [0u8; 6];
    let mut n = 0;
    while n < magic.len() {
        match reader.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ImageError::TarRead {
                    tar: tar.to_string(),
                    entry: None,
                    source,
                });
            }
        }
    }
    let head = magic[..n].to_vec();
    let stream = io::Cursor::new(head).chain(reader);
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::MultiGzDecoder::new(stream))),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            let mut decoder = zstd::Decoder::new(stream).map_err(|source| ImageError::TarRead {
                tar: tar.to_string(),
                entry: None,
                source,
            })?;
            // Layers compressed with --long use windows above the default limit.
            decoder
                .window_log_max(31)
                .map_err(|source| ImageError::TarRead {
                    tar: tar.to_string(),
                    entry: None,
                    source,
                })?;
            Ok(Box::new(decoder))
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0] => Err(ImageError::Compression {
            tar: tar.to_string(),
            format: "xz",
        }),
        [b'B', b'Z', b'h', ..] => Err(ImageError::Compression {
            tar: tar.to_string(),
            format: "bzip2",
        }),
        _ => Ok(Box::new(stream)),
    }
}

/// A tar path, normalised.
#[derive(Debug, PartialEq, Eq)]
enum Normalized {
    /// An absolute path in the image (`/` for the root).
    Path(String),
    /// A name the image tools cannot express: skipped, with the reason.
    Unrepresentable(&'static str),
}

/// Normalises a tar entry path (see the module docs); `Err` is why it is refused.
fn normalize(raw: &[u8]) -> Result<Normalized, &'static str> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Ok(Normalized::Unrepresentable("name is not valid UTF-8"));
    };
    if text.starts_with('/') {
        return Err("is an absolute path");
    }
    if text.contains(['\n', '\r', '\0']) {
        return Ok(Normalized::Unrepresentable(
            "name contains a newline or a carriage return",
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("escapes the root with ..");
                }
            }
            p => parts.push(p),
        }
    }
    Ok(Normalized::Path(format!("/{}", parts.join("/"))))
}

/// The parent of a normalised absolute path (`/` for `/x` and for `/`).
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The key range of the map holding the paths strictly below `dir`.
pub(crate) fn descendants(dir: &str) -> std::ops::Range<String> {
    if dir == "/" {
        // Every key but "/" itself starts with "/" followed by something.
        return "/\u{1}".to_string().."0".to_string();
    }
    // '0' is the character after '/'.
    format!("{dir}/")..format!("{dir}0")
}

/// Flattens `tars` (applied in order) into a new staging directory `staging`, reporting
/// each tar's summary through `progress`.
pub fn flatten(
    tars: Vec<TarInput>,
    staging: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Tree, ImageError> {
    flatten_limited(tars, staging, None, progress)
}

/// [`flatten`] with the tars' file contents capped at `limit` bytes
/// ([`Tree::set_size_limit`]); the tree returned has no cap (what is added to it later,
/// the guest payload, is banger's own).
pub fn flatten_limited(
    tars: Vec<TarInput>,
    staging: &Path,
    limit: Option<u64>,
    progress: &mut dyn FnMut(&str),
) -> Result<Tree, ImageError> {
    let mut tree = Tree::create(staging)?;
    if let Some(limit) = limit {
        tree.set_size_limit(limit);
    }
    let total = tars.len();
    for (i, tar) in tars.into_iter().enumerate() {
        let name = tar.name();
        progress(&format!("flattening tar {}/{total}: {name}", i + 1));
        let report = tree.apply_tar(tar)?;
        let mut line = format!(
            "tar {}/{total}: {} entries, {} whiteouts",
            i + 1,
            report.entries,
            report.whiteouts
        );
        for (reason, count) in &report.skipped {
            line.push_str(&format!("; warning: {count} skipped ({reason})"));
        }
        progress(&line);
    }
    tree.limit = None;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// One tar entry, written with raw (unchecked) names.
    struct E<'a> {
        name: &'a [u8],
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &'a [u8],
        link: &'a [u8],
        dev: (u32, u32),
    }

    fn e(name: &str, kind: EntryType) -> E<'_> {
        E {
            name: name.as_bytes(),
            kind,
            mode: if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            data: b"",
            link: b"",
            dev: (0, 0),
        }
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
        E {
            data,
            ..e(name, EntryType::Regular)
        }
    }

    fn d(name: &str) -> E<'_> {
        e(name, EntryType::Directory)
    }

    fn link<'a>(name: &'a str, kind: EntryType, target: &'a str) -> E<'a> {
        E {
            link: target.as_bytes(),
            ..e(name, kind)
        }
    }

    fn tar_bytes(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for en in entries {
            let mut h = tar::Header::new_gnu();
            {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..en.name.len()].copy_from_slice(en.name);
                gnu.linkname[..en.link.len()].copy_from_slice(en.link);
            }
            h.set_entry_type(en.kind);
            h.set_mode(en.mode);
            h.set_uid(en.uid);
            h.set_gid(en.gid);
            h.set_size(en.data.len() as u64);
            h.set_device_major(en.dev.0).unwrap();
            h.set_device_minor(en.dev.1).unwrap();
            h.set_cksum();
            b.append(&h, en.data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn input(name: &str, bytes: Vec<u8>) -> TarInput {
        TarInput::Reader {
            name: name.to_string(),
            reader: Box::new(io::Cursor::new(bytes)),
        }
    }

    fn layer1() -> Vec<u8> {
        tar_bytes(&[
            d("./"),
            d("etc/"),
            file("etc/gone", b"bye"),
            file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            d("usr/bin/"),
            E {
                mode: 0o4755,
                ..file("usr/bin/su", b"\x7fELF su")
            },
            link("usr/bin/su-again", EntryType::Link, "usr/bin/su"),
            link("bin", EntryType::Symlink, "usr/bin"),
            E {
                uid: 1000,
                gid: 1000,
                mode: 0o640,
                ..file("home/user/notes", b"mine")
            },
            E {
                mode: 0o666,
                dev: (1, 3),
                ..e("dev/null", EntryType::Char)
            },
            E {
                mode: 0o600,
                ..e("run/initctl", EntryType::Fifo)
            },
            d("opq/"),
            file("opq/old", b"old"),
            d("opq/sub/"),
            file("opq/sub/deep", b"deep"),
            d("keep/"),
            file("keep/a", b"a"),
            file(".dockerenv", b""),
        ])
    }

    fn layer2() -> Vec<u8> {
        tar_bytes(&[
            file("etc/.wh.gone", b""),
            d("opq/"),
            // Written before the opaque marker of the same layer: must survive it.
            file("opq/sub/new", b"new"),
            file("opq/.wh..wh..opq", b""),
            file("keep/b", b"b"),
            file("run/.containerenv", b""),
            file("keep/.wh..wh.plnk", b""),
        ])
    }

    fn host_files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            for child in fs::read_dir(&p).unwrap() {
                let child = child.unwrap();
                let path = child.path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if child.file_type().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn two_layers_with_whiteouts_owners_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("tree");
        let mut lines = Vec::new();
        let tree = flatten(
            vec![input("layer1", layer1()), input("layer2", layer2())],
            &staging,
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap();
        let get = |p: &str| tree.get(p).cloned();

        assert_eq!(get("/etc/gone"), None);
        assert!(!staging.join("etc/gone").exists());
        assert_eq!(
            get("/usr/bin/su"),
            Some(Meta {
                kind: EntryKind::File,
                uid: 0,
                gid: 0,
                mode: 0o4755
            })
        );
        let su = fs::symlink_metadata(staging.join("usr/bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o600, "never setuid on the host");
        assert_eq!(fs::read(staging.join("usr/bin/su")).unwrap(), b"\x7fELF su");
        // The hard link shares the file on the host and the metadata in the map.
        let again = fs::symlink_metadata(staging.join("usr/bin/su-again")).unwrap();
        assert_eq!(again.ino(), su.ino());
        assert_eq!(get("/usr/bin/su-again"), get("/usr/bin/su"));
        assert_eq!(
            get("/home/user/notes"),
            Some(Meta {
                kind: EntryKind::File,
                uid: 1000,
                gid: 1000,
                mode: 0o640
            })
        );
        // The implicit parent of home/user/notes is root's.
        assert_eq!(get("/home/user"), Some(Meta::root(EntryKind::Dir, 0o755)));
        assert_eq!(
            get("/bin").unwrap().kind,
            EntryKind::Symlink {
                target: "usr/bin".into()
            }
        );
        assert_eq!(
            fs::read_link(staging.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            get("/dev/null"),
            Some(Meta {
                kind: EntryKind::CharDevice { major: 1, minor: 3 },
                uid: 0,
                gid: 0,
                mode: 0o666
            })
        );
        assert_eq!(get("/run/initctl").unwrap().kind, EntryKind::Fifo);
        assert!(!staging.join("dev/null").exists());
        assert!(!staging.join("run/initctl").exists());
        // Opaque: the lower layer's files are gone, this layer's stay.
        assert_eq!(get("/opq/old"), None);
        assert_eq!(get("/opq/sub/deep"), None);
        assert!(get("/opq/sub/new").is_some());
        assert_eq!(fs::read(staging.join("opq/sub/new")).unwrap(), b"new");
        assert!(get("/keep/a").is_some() && get("/keep/b").is_some());
        assert_eq!(get("/.dockerenv"), None);
        assert_eq!(get("/run/.containerenv"), None);
        assert_eq!(get("/"), Some(Meta::root(EntryKind::Dir, 0o755)));

        let on_host = host_files(&staging);
        assert!(
            !on_host.iter().any(|p| p.contains(".wh.")
                || p.ends_with(".dockerenv")
                || p.ends_with(".containerenv")),
            "{on_host:?}"
        );
        // The map and the host agree (special files only in the map).
        let mapped: Vec<String> = tree
            .entries()
            .iter()
            .filter(|(p, m)| *p != "/" && !m.kind.is_special())
            .map(|(p, _)| p[1..].to_string())
            .collect();
        assert_eq!(on_host, mapped);
        assert_eq!(
            fs::symlink_metadata(staging.join("opq")).unwrap().mode() & 0o777,
            0o700
        );
        assert!(lines[1].contains("entries, 0 whiteouts"), "{lines:?}");
        assert!(
            lines[3].contains("2 whiteouts")
                && lines[3].contains("1 skipped (aufs metadata (.wh..wh.*))"),
            "{lines:?}"
        );
    }

    #[test]
    fn gzip_and_zstd_streams_are_detected() {
        let plain = layer1();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut maps = Vec::new();
        for (i, bytes) in [plain, gz, zst].into_iter().enumerate() {
            let tree = flatten(
                vec![input("l", bytes)],
                &dir.path().join(i.to_string()),
                &mut |_| {},
            )
            .unwrap();
            maps.push(tree.entries().clone());
        }
        assert!(maps[0].contains_key("/usr/bin/su"));
        assert_eq!(maps[0], maps[1]);
        assert_eq!(maps[0], maps[2]);

        let xz = vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2];
        let err = flatten(vec![input("l.xz", xz)], &dir.path().join("x"), &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, ImageError::Compression { format: "xz", .. }),
            "{err}"
        );
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        for (entries, needle) in [
            (vec![file("../x", b"x")], "escapes the root"),
            (vec![file("a/../../x", b"x")], "escapes the root"),
            (vec![file("/etc/passwd", b"x")], "absolute path"),
            (
                vec![link("l", EntryType::Link, "../../etc/passwd")],
                "escapes the root",
            ),
            (vec![link("l", EntryType::Link, "nope")], "does not exist"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let staging = dir.path().join("tree");
            let err = flatten(
                vec![input("evil", tar_bytes(&entries))],
                &staging,
                &mut |_| {},
            )
            .unwrap_err();
            assert!(matches!(err, ImageError::Entry { .. }), "{err}");
            let text = err.to_string();
            assert!(text.starts_with("tar evil: refusing entry"), "{text}");
            assert!(text.contains(needle), "{text}");
            // Nothing outside the staging directory, nothing inside either.
            assert_eq!(host_files(dir.path()), ["tree"]);
        }
        // `..` that stays inside is fine.
        let dir = tempfile::tempdir().unwrap();
        let tree = flatten(
            vec![input("ok", tar_bytes(&[file("a/../b", b"b")]))],
            &dir.path().join("t"),
            &mut |_| {},
        )
        .unwrap();
        assert!(tree.get("/b").is_some());
    }

    #[test]
    fn a_tree_past_its_size_limit_is_refused_naming_the_limit() {
        let big = vec![0u8; 4096];
        let layer = |n: &str| tar_bytes(&[file(n, &big)]);
        let dir = tempfile::tempdir().unwrap();
        // Two layers of 4 KiB each fit in 8 KiB...
        flatten_limited(
            vec![input("l1", layer("a")), input("l2", layer("b"))],
            &dir.path().join("ok"),
            Some(8192),
            &mut |_| {},
        )
        .unwrap();
        // ... a third does not, whichever layer it comes in.
        let err = flatten_limited(
            vec![
                input("l1", layer("a")),
                input("l2", layer("b")),
                input("l3", layer("c")),
            ],
            &dir.path().join("bomb"),
            Some(8192),
            &mut |_| {},
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("tar l3: refusing entry \"c\""), "{text}");
        assert!(text.contains("limit of 8192 bytes"), "{text}");
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let outside_str = outside.to_str().unwrap().to_string();
        for entries in [
            vec![
                link("a", EntryType::Symlink, &outside_str),
                file("a/pwned", b"x"),
            ],
            vec![link("a", EntryType::Symlink, "../../.."), d("a/sub/")],
            vec![file("f", b"plain"), file("f/under", b"x")],
        ] {
            let staging = dir.path().join("tree");
            let err = flatten(
                vec![input("evil", tar_bytes(&entries))],
                &staging,
                &mut |_| {},
            )
            .unwrap_err();
            let text = err.to_string();
            assert!(text.contains("not a directory"), "{text}");
            assert_eq!(host_files(&outside), Vec::<String>::new());
            fs::remove_dir_all(&staging).unwrap();
        }
        // A symlink replaced by a directory in a later layer is a real directory.
        let staging = dir.path().join("tree");
        let tree = flatten(
            vec![
                input(
                    "1",
                    tar_bytes(&[link("a", EntryType::Symlink, &outside_str)]),
                ),
                input("2", tar_bytes(&[d("a/"), file("a/in", b"in")])),
            ],
            &staging,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(tree.get("/a").unwrap().kind, EntryKind::Dir);
        assert!(staging.join("a/in").is_file());
        assert_eq!(host_files(&outside), Vec::<String>::new());
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("tree");
        let tree = flatten(
            vec![
                input(
                    "1",
                    tar_bytes(&[
                        d("d/"),
                        file("d/x", b"x"),
                        file("f", b"file"),
                        E {
                            mode: 0o700,
                            uid: 5,
                            ..d("kept/")
                        },
                        file("kept/child", b"c"),
                    ]),
                ),
                input(
                    "2",
                    tar_bytes(&[
                        file("d", b"now a file"),
                        d("f/"),
                        E {
                            mode: 0o750,
                            ..d("kept/")
                        },
                    ]),
                ),
            ],
            &staging,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(tree.get("/d").unwrap().kind, EntryKind::File);
        assert_eq!(tree.get("/d/x"), None);
        assert_eq!(fs::read(staging.join("d")).unwrap(), b"now a file");
        assert_eq!(tree.get("/f").unwrap().kind, EntryKind::Dir);
        assert_eq!(
            tree.get("/kept"),
            Some(&Meta {
                kind: EntryKind::Dir,
                uid: 0,
                gid: 0,
                mode: 0o750
            })
        );
        assert!(tree.get("/kept/child").is_some());
    }

    #[test]
    fn unsupported_and_unrepresentable_entries_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_bytes(&[
            e("label", EntryType::new(b'V')),
            E {
                name: b"bad\xffname",
                ..file("", b"x")
            },
            file("new\nline", b"x"),
            file("fine", b"x"),
        ]);
        let mut tree = Tree::create(&dir.path().join("t")).unwrap();
        let report = tree.apply_tar(input("odd", bytes)).unwrap();
        assert_eq!(report.entries, 1);
        let skipped: Vec<(&str, u64)> = report
            .skipped
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            skipped,
            [
                ("name contains a newline or a carriage return", 1),
                ("name is not valid UTF-8", 1),
                ("unsupported entry type 'V'", 1),
            ]
        );
        assert_eq!(tree.skipped(), &report.skipped);
    }

    #[test]
    fn a_truncated_tar_names_the_entry() {
        let mut bytes = tar_bytes(&[file("big", &[7u8; 4096])]);
        bytes.truncate(512 + 1000);
        let dir = tempfile::tempdir().unwrap();
        let err = flatten(
            vec![input("cut", bytes)],
            &dir.path().join("t"),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&err, ImageError::TarRead { tar, entry: Some(e), .. } if tar == "cut" && e == "big"),
            "{err}"
        );
        let text = banger_core::error::chain(&err);
        assert!(text.contains("truncated: 1000 of 4096 bytes"), "{text}");
    }

    #[test]
    fn parents_resolve_through_the_image_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::create(&dir.path().join("t")).unwrap();
        tree.apply_tar(input(
            "l",
            tar_bytes(&[
                d("usr/lib/"),
                link("lib", EntryType::Symlink, "usr/lib"),
                link("abs", EntryType::Symlink, "/usr/lib"),
                link("up", EntryType::Symlink, "../../../usr"),
                link("loop", EntryType::Symlink, "loop"),
            ]),
        ))
        .unwrap();
        assert_eq!(
            tree.resolve_parents("/lib/modules/6.1/x").unwrap(),
            "/usr/lib/modules/6.1/x"
        );
        assert_eq!(tree.resolve_parents("/abs/y").unwrap(), "/usr/lib/y");
        assert_eq!(tree.resolve_parents("/up/lib/z").unwrap(), "/usr/lib/z");
        // The last component is not followed.
        assert_eq!(tree.resolve_parents("/lib").unwrap(), "/lib");
        assert!(tree.resolve_parents("/loop/x").is_err());
        let at = tree
            .install(
                "/lib/modules/f",
                Install::Bytes(b"data"),
                Meta::root(EntryKind::File, 0o644),
            )
            .unwrap();
        assert_eq!(at, "/usr/lib/modules/f");
        assert_eq!(
            fs::read(dir.path().join("t/usr/lib/modules/f")).unwrap(),
            b"data"
        );
        assert_eq!(
            tree.get("/usr/lib/modules"),
            Some(&Meta::root(EntryKind::Dir, 0o755))
        );
    }

    #[test]
    fn old_style_directories_are_directories() {
        let dir = tempfile::tempdir().unwrap();
        let tree = flatten(
            vec![input(
                "v7",
                tar_bytes(&[
                    E {
                        mode: 0o750,
                        ..e("olddir/", EntryType::Regular)
                    },
                    file("olddir/f", b"f"),
                ]),
            )],
            &dir.path().join("t"),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            tree.get("/olddir"),
            Some(&Meta::root(EntryKind::Dir, 0o750))
        );
        assert!(dir.path().join("t/olddir/f").is_file());
    }

    #[test]
    fn normalisation() {
        let p = |s: &str| normalize(s.as_bytes());
        assert_eq!(
            p("./etc//passwd"),
            Ok(Normalized::Path("/etc/passwd".into()))
        );
        assert_eq!(p("./"), Ok(Normalized::Path("/".into())));
        assert_eq!(p("a/./b/../c/"), Ok(Normalized::Path("/a/c".into())));
        assert!(p("/x").is_err());
        assert!(p("..").is_err());
        assert!(p("a/../..").is_err());
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
    }
}
