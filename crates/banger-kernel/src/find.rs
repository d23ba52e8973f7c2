//! Finding a kernel, its initrd and its modules in a directory tree.
//!
//! The tree is either a root filesystem (`/` itself, or an unpacked one) or a directory of
//! loose files. [`find_kernel`] looks for kernel images named
//!
//! - `boot/vmlinuz-<ver>`, `boot/vmlinux-<ver>`, and the same names at the root itself;
//! - `vmlinuz`/`vmlinux` (at the root or in `boot/`): a symlink such as Debian's
//!   `/vmlinuz -> boot/vmlinuz-6.1.0-28-cloud-amd64` takes the version from its target's name;
//!   a plain file takes it from the kernel itself (the bzImage header's version string, or the
//!   `Linux version` banner of an ELF);
//! - `lib/modules/<ver>/vmlinuz` (and `usr/lib/modules`), where Fedora and Arch keep theirs.
//!
//! Each version found is a candidate; the highest by [`compare_versions`] is picked unless the
//! caller asks for one. For the chosen version, the initrd is `initrd.img-<ver>`,
//! `initramfs-<ver>.img`, `initrd-<ver>.img` or `initrd-<ver>` (in `boot/` or at the root) and
//! the modules are `lib/modules/<ver>` or `usr/lib/modules/<ver>`.
//!
//! Paths are resolved as if the root were `/`: an absolute symlink inside an unpacked root
//! filesystem (`lib -> /usr/lib`) points into that tree, never into the host's.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::KernelError;
use crate::extract::{self, find_bytes};
use crate::version::compare_versions;

/// Where module trees live, relative to the root.
const MODULE_DIRS: [&str; 2] = ["lib/modules", "usr/lib/modules"];
/// Where kernel images and initrds live, relative to the root (`""` is the root itself).
const BOOT_DIRS: [&str; 2] = ["boot", ""];

/// How [`Found::version`] was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// It was the only version present.
    Only,
    /// Several versions were present and this is the highest.
    Highest,
    /// The caller asked for it.
    Wanted,
}

/// A kernel found in a tree: the chosen version and the files that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The root that was searched.
    pub root: PathBuf,
    /// The chosen kernel version (`6.1.0-28-cloud-amd64`).
    pub version: String,
    /// The compressed kernel (bzImage), as shipped; what QEMU boots.
    pub vmlinuz: Option<PathBuf>,
    /// An uncompressed ELF kernel shipped alongside (rare: most trees have only `vmlinuz`).
    pub vmlinux: Option<PathBuf>,
    /// The initial ramdisk for this version.
    pub initrd: Option<PathBuf>,
    /// The module tree (`lib/modules/<version>`).
    pub modules: Option<PathBuf>,
    /// Every version that had a kernel image, lowest first.
    pub candidates: Vec<String>,
    /// Why [`version`](Self::version) was chosen.
    pub choice: Choice,
}

impl Found {
    /// A sentence for the user when the choice was not obvious: several versions were found
    /// and the highest was taken. `None` when there was one version or the caller chose.
    pub fn choice_note(&self) -> Option<String> {
        (self.choice == Choice::Highest).then(|| {
            format!(
                "found {} kernel versions under {} ({}); using the highest, {}",
                self.candidates.len(),
                self.root.display(),
                self.candidates.join(", "),
                self.version
            )
        })
    }
}

/// The kernel images found for one version.
#[derive(Debug, Default)]
struct Images {
    vmlinuz: Option<PathBuf>,
    vmlinux: Option<PathBuf>,
}

/// Finds the kernel under `root` (see the module docs). With `wanted`, that exact version is
/// chosen (an error lists the available ones when it is absent); otherwise the highest.
pub fn find_kernel(root: &Path, wanted: Option<&str>) -> Result<Found, KernelError> {
    let meta = fs::metadata(root).map_err(|source| KernelError::BadRoot {
        root: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(KernelError::BadRoot {
            root: root.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }

    let mut images: BTreeMap<String, Images> = BTreeMap::new();
    let mut unversioned: Vec<String> = Vec::new();

    // Versioned names first, so that a `vmlinuz` symlink to one of them adds nothing new.
    for dir in BOOT_DIRS {
        for (name, path) in list_files(root, Path::new(dir))? {
            let (kind, version) = match split_image_name(&name) {
                Some(parts) => parts,
                None => continue,
            };
            check_version(&path, version)?;
            let entry = images.entry(version.to_string()).or_default();
            entry.set(kind, path);
        }
    }
    // Unversioned `vmlinuz`/`vmlinux`.
    for dir in BOOT_DIRS {
        for kind in [ImageKind::Vmlinuz, ImageKind::Vmlinux] {
            let rel = Path::new(dir).join(kind.name());
            let Some(path) = resolve_in_root(root, &rel).map_err(|source| KernelError::Read {
                path: root.join(&rel),
                source,
            })?
            else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            let version = match version_of_link(root, &rel)? {
                Some(v) => Some(v),
                None => version_from_contents(&path)?,
            };
            match version {
                Some(version) => {
                    check_version(&path, &version)?;
                    images.entry(version).or_default().set_if_absent(kind, path);
                }
                None => unversioned.push(format!(
                    "{} (no version in its name or contents)",
                    root.join(&rel).display()
                )),
            }
        }
    }
    // `lib/modules/<ver>/vmlinuz` (Fedora, Arch).
    for dir in MODULE_DIRS {
        for (version, _) in list_dirs(root, Path::new(dir))? {
            let rel = Path::new(dir).join(&version).join("vmlinuz");
            if let Some(path) = resolve_in_root(root, &rel)
                .map_err(|source| KernelError::Read {
                    path: root.join(&rel),
                    source,
                })?
                .filter(|p| p.is_file())
            {
                check_version(&path, &version)?;
                images
                    .entry(version)
                    .or_default()
                    .set_if_absent(ImageKind::Vmlinuz, path);
            }
        }
    }

    let mut candidates: Vec<String> = images.keys().cloned().collect();
    candidates.sort_by(|a, b| compare_versions(a, b));

    if candidates.is_empty() {
        let mut found = unversioned;
        found.extend(describe_leftovers(root)?);
        return Err(KernelError::NotFound {
            root: root.to_path_buf(),
            looked_for: "boot/vmlinuz-<ver>, boot/vmlinux-<ver>, vmlinuz-<ver>, vmlinux-<ver>, \
                         vmlinuz, vmlinux, lib/modules/<ver>/vmlinuz"
                .to_string(),
            found,
        });
    }

    let (version, choice) = match wanted {
        Some(w) => {
            if !images.contains_key(w) {
                return Err(KernelError::VersionNotFound {
                    root: root.to_path_buf(),
                    wanted: w.to_string(),
                    available: candidates,
                });
            }
            (w.to_string(), Choice::Wanted)
        }
        None => {
            let highest = candidates
                .last()
                .cloned()
                .unwrap_or_else(|| unreachable!("candidates is not empty"));
            let choice = if candidates.len() == 1 {
                Choice::Only
            } else {
                Choice::Highest
            };
            (highest, choice)
        }
    };
    let chosen = images.remove(&version).unwrap_or_default();

    let initrd = find_initrd(root, &version)?;
    let modules = find_modules(root, &version)?;
    Ok(Found {
        root: root.to_path_buf(),
        version,
        vmlinuz: chosen.vmlinuz,
        vmlinux: chosen.vmlinux,
        initrd,
        modules,
        candidates,
        choice,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageKind {
    Vmlinuz,
    Vmlinux,
}

impl ImageKind {
    fn name(self) -> &'static str {
        match self {
            ImageKind::Vmlinuz => "vmlinuz",
            ImageKind::Vmlinux => "vmlinux",
        }
    }
}

impl Images {
    fn set(&mut self, kind: ImageKind, path: PathBuf) {
        match kind {
            ImageKind::Vmlinuz => self.vmlinuz = Some(path),
            ImageKind::Vmlinux => self.vmlinux = Some(path),
        }
    }

    fn set_if_absent(&mut self, kind: ImageKind, path: PathBuf) {
        let slot = match kind {
            ImageKind::Vmlinuz => &mut self.vmlinuz,
            ImageKind::Vmlinux => &mut self.vmlinux,
        };
        slot.get_or_insert(path);
    }
}

/// `vmlinuz-6.1.0` → (Vmlinuz, "6.1.0").
fn split_image_name(name: &str) -> Option<(ImageKind, &str)> {
    [ImageKind::Vmlinuz, ImageKind::Vmlinux]
        .into_iter()
        .find_map(|kind| {
            name.strip_prefix(kind.name())
                .and_then(|rest| rest.strip_prefix('-'))
                .filter(|v| !v.is_empty())
                .map(|v| (kind, v))
        })
}

/// The version becomes a directory name in the store (`modules/<version>`).
fn check_version(path: &Path, version: &str) -> Result<(), KernelError> {
    let reason = if version.is_empty() {
        Some("it is empty")
    } else if version.starts_with('.') {
        Some("it starts with '.'")
    } else if version.contains('/') {
        Some("it contains '/'")
    } else if version.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("it contains whitespace or control characters")
    } else if version.len() > 255 {
        Some("it is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KernelError::BadVersion {
            path: path.to_path_buf(),
            version: version.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// When `rel` is a symlink whose final target is named `vmlinuz-<ver>` or `vmlinux-<ver>`,
/// that version.
fn version_of_link(root: &Path, rel: &Path) -> Result<Option<String>, KernelError> {
    let mut current = rel.to_path_buf();
    for _ in 0..MAX_LINKS {
        let host = match resolve_parent_in_root(root, &current) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(KernelError::Read {
                    path: root.join(&current),
                    source,
                });
            }
        };
        let meta = match fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        if !meta.file_type().is_symlink() {
            return Ok(None);
        }
        let target = fs::read_link(&host).map_err(|source| KernelError::Read {
            path: host.clone(),
            source,
        })?;
        if let Some((_, v)) = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(split_image_name)
        {
            return Ok(Some(v.to_string()));
        }
        // A link to another unversioned name: follow it.
        current = if target.is_absolute() {
            target.strip_prefix("/").unwrap_or(&target).to_path_buf()
        } else {
            current
                .parent()
                .unwrap_or_else(|| Path::new(""))
                .join(target)
        };
    }
    Ok(None)
}

/// Reads the version a kernel carries: the bzImage setup header's version string, or the
/// `Linux version X` banner inside an uncompressed ELF kernel.
fn version_from_contents(path: &Path) -> Result<Option<String>, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let mut head = vec![0u8; 0x8000];
    let n = read_up_to(&mut file, &mut head).map_err(read_err)?;
    head.truncate(n);
    if let Ok(header) = extract::SetupHeader::parse(&head) {
        return Ok(header.version);
    }
    if head.starts_with(extract::ELF_MAGIC) {
        let data = fs::read(path).map_err(read_err)?;
        return Ok(linux_banner_version(&data));
    }
    Ok(None)
}

/// The first `Linux version <ver> ` banner in an uncompressed kernel.
fn linux_banner_version(data: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = find_bytes(&data[from..], BANNER) {
        let start = from + pos + BANNER.len();
        let rest = &data[start..data.len().min(start + 256)];
        let end = rest
            .iter()
            .position(|b| !b.is_ascii_graphic())
            .unwrap_or(rest.len());
        // The format string `Linux version %s` appears too; skip it.
        if end > 0 && rest[0].is_ascii_digit() {
            return String::from_utf8(rest[..end].to_vec()).ok();
        }
        from = start;
    }
    None
}

fn read_up_to(file: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn find_initrd(root: &Path, version: &str) -> Result<Option<PathBuf>, KernelError> {
    let names = [
        format!("initrd.img-{version}"),
        format!("initramfs-{version}.img"),
        format!("initrd-{version}.img"),
        format!("initrd-{version}"),
    ];
    for dir in BOOT_DIRS {
        for name in &names {
            if let Some(path) = resolve_file(root, &Path::new(dir).join(name))? {
                return Ok(Some(path));
            }
        }
    }
    // Fedora and Arch keep an initramfs beside the kernel in the module directory.
    for dir in MODULE_DIRS {
        if let Some(path) = resolve_file(root, &Path::new(dir).join(version).join("initramfs.img"))?
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn find_modules(root: &Path, version: &str) -> Result<Option<PathBuf>, KernelError> {
    for dir in MODULE_DIRS {
        let rel = Path::new(dir).join(version);
        let resolved = resolve_in_root(root, &rel).map_err(|source| KernelError::Read {
            path: root.join(&rel),
            source,
        })?;
        if let Some(path) = resolved.filter(|p| p.is_dir()) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// `rel` resolved in the root when it is a regular file (after symlinks).
fn resolve_file(root: &Path, rel: &Path) -> Result<Option<PathBuf>, KernelError> {
    let resolved = resolve_in_root(root, rel).map_err(|source| KernelError::Read {
        path: root.join(rel),
        source,
    })?;
    Ok(resolved.filter(|p| p.is_file()))
}

/// For the "found only" part of a not-found error: initrds and module trees without kernels.
fn describe_leftovers(root: &Path) -> Result<Vec<String>, KernelError> {
    let mut found = Vec::new();
    for dir in BOOT_DIRS {
        for (name, _) in list_files(root, Path::new(dir))? {
            if name.starts_with("initrd") || name.starts_with("initramfs") {
                found.push(Path::new(dir).join(name).display().to_string());
            }
        }
    }
    for dir in MODULE_DIRS {
        for (version, _) in list_dirs(root, Path::new(dir))? {
            found.push(format!("{dir}/{version}"));
        }
    }
    found.dedup();
    Ok(found)
}

/// The regular files (after symlinks) directly in `dir` (relative to the root), by name.
fn list_files(root: &Path, dir: &Path) -> Result<Vec<(String, PathBuf)>, KernelError> {
    list_entries(root, dir, |p| p.is_file())
}

/// The directories (after symlinks) directly in `dir` (relative to the root), by name.
fn list_dirs(root: &Path, dir: &Path) -> Result<Vec<(String, PathBuf)>, KernelError> {
    list_entries(root, dir, |p| p.is_dir())
}

fn list_entries(
    root: &Path,
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<(String, PathBuf)>, KernelError> {
    let resolved = resolve_in_root(root, dir).map_err(|source| KernelError::Read {
        path: root.join(dir),
        source,
    })?;
    let Some(host_dir) = resolved.filter(|p| p.is_dir()) else {
        return Ok(Vec::new());
    };
    let entries = fs::read_dir(&host_dir).map_err(|source| KernelError::Read {
        path: host_dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| KernelError::Read {
            path: host_dir.clone(),
            source,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let rel = dir.join(&name);
        let resolved = resolve_in_root(root, &rel).map_err(|source| KernelError::Read {
            path: root.join(&rel),
            source,
        })?;
        if let Some(path) = resolved.filter(|p| keep(p)) {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// How many symlinks one lookup may follow (Linux's limit).
const MAX_LINKS: usize = 40;

/// Resolves `rel` inside `root` as if `root` were `/`: every symlink on the way is followed,
/// absolute targets restart at `root`, and `..` never climbs above it. `Ok(None)` when some
/// component does not exist (a dangling link, a missing file) or links loop.
pub(crate) fn resolve_in_root(root: &Path, rel: &Path) -> io::Result<Option<PathBuf>> {
    let mut todo: Vec<OsString> = components_rev(rel);
    let mut current: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        current.push(part);
        let host: PathBuf = root.join(current.iter().collect::<PathBuf>());
        let meta = match fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Ok(None);
            }
            let target = fs::read_link(&host)?;
            current.pop();
            if target.is_absolute() {
                current.clear();
            }
            todo.extend(components_rev(&target));
        }
    }
    Ok(Some(root.join(current.iter().collect::<PathBuf>())))
}

/// Like [`resolve_in_root`] for every component but the last, which is left as is (so the
/// result can be inspected with `symlink_metadata`).
fn resolve_parent_in_root(root: &Path, rel: &Path) -> io::Result<Option<PathBuf>> {
    let Some(name) = rel.file_name() else {
        return Ok(None);
    };
    let parent = rel.parent().unwrap_or_else(|| Path::new(""));
    Ok(resolve_in_root(root, parent)?.map(|p| p.join(name)))
}

/// The normal and `..` components of a path, last first (a stack to pop from).
fn components_rev(path: &Path) -> Vec<OsString> {
    let mut parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(path: &Path, contents: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    #[test]
    fn picks_the_highest_of_several_versions_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for v in [
            "6.1.0-28-cloud-amd64",
            "6.1.0-40-cloud-amd64",
            "6.1.0-9-cloud-amd64",
        ] {
            touch(&root.join(format!("boot/vmlinuz-{v}")), b"k");
            touch(&root.join(format!("boot/initrd.img-{v}")), b"i");
            touch(&root.join(format!("lib/modules/{v}/modules.dep")), b"");
        }
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "6.1.0-40-cloud-amd64");
        assert_eq!(found.choice, Choice::Highest);
        assert_eq!(
            found.candidates,
            [
                "6.1.0-9-cloud-amd64",
                "6.1.0-28-cloud-amd64",
                "6.1.0-40-cloud-amd64"
            ]
        );
        assert_eq!(
            found.vmlinuz.as_deref(),
            Some(root.join("boot/vmlinuz-6.1.0-40-cloud-amd64").as_path())
        );
        assert_eq!(
            found.initrd.as_deref(),
            Some(root.join("boot/initrd.img-6.1.0-40-cloud-amd64").as_path())
        );
        assert_eq!(
            found.modules.as_deref(),
            Some(root.join("lib/modules/6.1.0-40-cloud-amd64").as_path())
        );
        assert_eq!(found.vmlinux, None);
        let note = found.choice_note().unwrap();
        assert!(
            note.contains("using the highest, 6.1.0-40-cloud-amd64"),
            "{note}"
        );
        assert!(note.contains("3 kernel versions"), "{note}");
    }

    #[test]
    fn wanted_version_is_honoured_or_refused_with_the_list() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("boot/vmlinuz-6.9.1"), b"k");
        touch(&root.join("boot/vmlinuz-6.10.2"), b"k");
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "6.10.2");
        let found = find_kernel(root, Some("6.9.1")).unwrap();
        assert_eq!(found.version, "6.9.1");
        assert_eq!(found.choice, Choice::Wanted);
        assert_eq!(found.choice_note(), None);
        let err = find_kernel(root, Some("5.0")).unwrap_err();
        assert!(
            matches!(err, KernelError::VersionNotFound { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("5.0") && msg.contains("6.9.1, 6.10.2"),
            "{msg}"
        );
    }

    #[test]
    fn loose_vmlinux_without_initrd_or_modules() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("vmlinux-6.1.102"), b"\x7fELF");
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "6.1.102");
        assert_eq!(found.choice, Choice::Only);
        assert_eq!(
            found.vmlinux.as_deref(),
            Some(root.join("vmlinux-6.1.102").as_path())
        );
        assert_eq!(found.vmlinuz, None);
        assert_eq!(found.initrd, None);
        assert_eq!(found.modules, None);
    }

    #[test]
    fn loose_files_with_initramfs_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("vmlinuz-5.15.0"), b"k");
        touch(&root.join("initramfs-5.15.0.img"), b"i");
        touch(&root.join("usr/lib/modules/5.15.0/modules.dep"), b"");
        let found = find_kernel(root, None).unwrap();
        assert_eq!(
            found.initrd.as_deref(),
            Some(root.join("initramfs-5.15.0.img").as_path())
        );
        assert_eq!(
            found.modules.as_deref(),
            Some(root.join("usr/lib/modules/5.15.0").as_path())
        );
    }

    #[test]
    fn vmlinuz_symlink_resolves_to_its_version() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // The kernel lives where the scan does not look; only the link names it.
        touch(&root.join("kernels/vmlinuz-5.10.0-30-amd64"), b"k");
        symlink("kernels/vmlinuz-5.10.0-30-amd64", root.join("vmlinuz")).unwrap();
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "5.10.0-30-amd64");
        assert_eq!(
            found.vmlinuz.as_deref(),
            Some(root.join("kernels/vmlinuz-5.10.0-30-amd64").as_path())
        );
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("boot/vmlinuz-6.1.0-1"), b"k");
        touch(&root.join("boot/initrd.img-6.1.0-1"), b"i");
        touch(&root.join("usr/lib/modules/6.1.0-1/modules.dep"), b"");
        // Debian's layout, but with absolute links as an unpacked root filesystem has them.
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("/boot/vmlinuz-6.1.0-1", root.join("vmlinuz")).unwrap();
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "6.1.0-1");
        assert_eq!(found.candidates, ["6.1.0-1"]);
        assert_eq!(
            found.vmlinuz.as_deref(),
            Some(root.join("boot/vmlinuz-6.1.0-1").as_path())
        );
        assert_eq!(
            found.modules.as_deref(),
            Some(root.join("usr/lib/modules/6.1.0-1").as_path())
        );
    }

    #[test]
    fn dangling_kernel_links_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        symlink("nowhere", root.join("boot/vmlinuz-9.9.9")).unwrap();
        touch(&root.join("boot/vmlinuz-6.1.0"), b"k");
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "6.1.0");
        assert_eq!(found.candidates, ["6.1.0"]);
    }

    #[test]
    fn modules_without_a_kernel_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("lib/modules/6.1.0/modules.dep"), b"");
        touch(&root.join("boot/initrd.img-6.1.0"), b"i");
        let err = find_kernel(root, None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KernelError::NotFound { .. }), "{err:?}");
        assert!(msg.contains("boot/vmlinuz-<ver>"), "{msg}");
        assert!(msg.contains("lib/modules/6.1.0"), "{msg}");
        assert!(msg.contains("boot/initrd.img-6.1.0"), "{msg}");
    }

    #[test]
    fn missing_root_is_an_error_naming_it() {
        let err = find_kernel(Path::new("/nonexistent/banger-root"), None).unwrap_err();
        assert!(matches!(err, KernelError::BadRoot { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/banger-root"));
    }

    #[test]
    fn unversioned_elf_takes_the_banner_version() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.extend_from_slice(b"\0\0Linux version %s (%s)\0");
        elf.extend_from_slice(b"Linux version 6.1.55-custom (me@host) #1 SMP\0");
        touch(&root.join("vmlinux"), &elf);
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "6.1.55-custom");
        assert_eq!(
            found.vmlinux.as_deref(),
            Some(root.join("vmlinux").as_path())
        );
    }

    #[test]
    fn unversioned_kernel_without_version_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("vmlinux"), b"\x7fELF no banner");
        let err = find_kernel(root, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("no version in its name or contents"),
            "{err}"
        );
    }

    #[test]
    fn modules_dir_kernel_fedora_style() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(
            &root.join("usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz"),
            b"k",
        );
        touch(
            &root.join("usr/lib/modules/6.5.6-300.fc39.x86_64/modules.dep"),
            b"",
        );
        let found = find_kernel(root, None).unwrap();
        assert_eq!(found.version, "6.5.6-300.fc39.x86_64");
        assert!(found.vmlinuz.is_some());
        assert!(found.modules.is_some());
    }

    #[test]
    fn resolve_in_root_clamps_and_detects_loops() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        touch(&root.join("a/file"), b"x");
        symlink("../../../../a", root.join("up")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("up/file")).unwrap(),
            Some(root.join("a/file"))
        );
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("loop1")).unwrap(), None);
        assert_eq!(resolve_in_root(root, Path::new("missing/x")).unwrap(), None);
        assert_eq!(resolve_in_root(root, Path::new("a/file/x")).unwrap(), None);
    }
}
