//! The warm-start templates' catalogue: for an image and a machine shape (backend, vCPUs,
//! memory), a snapshot of a booted guest — its disks as they were, its device state and its
//! memory — from which `vm create` restores instead of booting.
//!
//! A template is a directory `state_dir/templates/<image id>-<vmm>-<cpus>c-<memory>m`
//! holding `root.ext4`, `work.ext4` (read-only from then on: restored VMs' disks are
//! copy-on-write clones of them), the backend's snapshot files ([`SnapshotFiles::in_dir`])
//! and `template.json` ([`Manifest`]). The directory is the whole state: no store row, so a
//! template half-made by a daemon that died is a staging directory (`.new-*`), removed at
//! the next make, and never found.
//!
//! A template is only as good as what it was made from: its [`fingerprint`] names the
//! image's root file system (path, size, modification time), the kernel files and banger's
//! build. [`Templates::find`] removes a template whose fingerprint is not today's (the image
//! was rebuilt, the kernel or the agent changed, banger was upgraded), so it is remade.
//!
//! The making itself (booting the guest) is the VM lifecycle's: `vms::warm`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use banger_core::build::BuildInfo;
use banger_store::ImageRow;
use banger_vmm::{KernelFiles, KernelImage, SnapshotFiles, VmmKind};
use serde::{Deserialize, Serialize};

/// The manifest's file name in a template's directory.
pub const MANIFEST: &str = "template.json";
/// The root disk's file name in a template's directory.
pub const ROOT_DISK: &str = "root.ext4";
/// The work disk's file name in a template's directory.
pub const WORK_DISK: &str = "work.ext4";

/// A machine shape: what a template is made for besides its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub vmm: VmmKind,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// What a template's `template.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub image_id: String,
    pub shape: Shape,
    /// The disks' sizes in bytes: a VM asking for less cannot be restored from it.
    pub root_bytes: u64,
    pub work_bytes: u64,
    pub fingerprint: String,
    pub made_at: String,
}

/// A template found in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Template {
    pub fn root_disk(&self) -> PathBuf {
        self.dir.join(ROOT_DISK)
    }

    pub fn work_disk(&self) -> PathBuf {
        self.dir.join(WORK_DISK)
    }

    pub fn snapshot(&self) -> SnapshotFiles {
        SnapshotFiles::in_dir(&self.dir)
    }

    /// The bytes its files take on disk (allocated blocks: the disks and memory are sparse).
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Why a template is not used (logged, and said in the create's stage).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot {what} template directory {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template manifest {} is unreadable", path.display())]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The catalogue: its directory, the templates being made (so the background making on
/// first use starts once per template), and the lock every change of the directory holds.
#[derive(Debug)]
pub struct Templates {
    root: PathBuf,
    making: Mutex<HashSet<String>>,
    lock: tokio::sync::Mutex<()>,
}

/// Holds a template's key as "being made" until dropped.
#[derive(Debug)]
pub struct Making<'a> {
    templates: &'a Templates,
    key: String,
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        self.templates
            .making
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// The fingerprint of what a template of `image` booted with `kernel` by banger `build`
/// depends on: the root file system's path, size and modification time (a rebuilt image, an
/// image with a new agent, has a new one), the kernel files' likewise, banger's build.
pub fn fingerprint(image: &ImageRow, kernel: &KernelFiles, build: &BuildInfo) -> String {
    let stamp = |path: &Path| match std::fs::metadata(path) {
        Ok(m) => format!(
            "{}:{}:{}.{}",
            path.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => format!("{}:missing", path.display()),
    };
    let mut parts = vec![
        format!("image={}", image.id),
        stamp(Path::new(&image.rootfs)),
    ];
    let mut kernel_files: Vec<&Path> = match &kernel.image {
        KernelImage::Either(p) => vec![p],
        KernelImage::Formats { vmlinux, bzimage } => vmlinux
            .iter()
            .chain(bzimage.iter())
            .map(|p| p.as_path())
            .collect(),
    };
    kernel_files.extend(kernel.initrd.as_deref());
    parts.extend(kernel_files.into_iter().map(stamp));
    parts.push(format!(
        "banger={}+{}@{}",
        build.version, build.commit, build.build_epoch
    ));
    parts.join(" ")
}

/// What [`Templates::lookup`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(Template),
    /// A template was there but stale or broken (`why`), and was removed.
    Removed {
        dir: PathBuf,
        why: String,
    },
    Absent,
}

impl Templates {
    /// The catalogue in `root` (`state_dir/templates`), made when the first template is.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            making: Mutex::new(HashSet::new()),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The key (and directory name) of the template of `image_id` for `shape`.
    pub fn key(image_id: &str, shape: &Shape) -> String {
        format!(
            "{image_id}-{}-{}c-{}m",
            shape.vmm, shape.cpus, shape.memory_mib
        )
    }

    /// The lock every change of the catalogue's directories holds (a make's install, a
    /// removal), so a create never restores from a template being replaced.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Marks the template `key` as being made; `None` when it already is.
    pub fn begin(&self, key: &str) -> Option<Making<'_>> {
        let mut making = self
            .making
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        making.insert(key.to_string()).then(|| Making {
            templates: self,
            key: key.to_string(),
        })
    }

    /// A fresh staging directory for the template `key` (stale ones of earlier makes are
    /// removed first).
    pub fn staging(&self, key: &str) -> Result<PathBuf, TemplateError> {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!(".new-{key}-")) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = self
            .root
            .join(format!(".new-{key}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|source| TemplateError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Writes `manifest` into `staging` and puts it in place of any template of the same
    /// key; its disks become read-only. The caller holds [`lock`](Self::lock).
    pub fn install(&self, staging: &Path, manifest: &Manifest) -> Result<Template, TemplateError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| TemplateError::Io { what, path, source }
        };
        for disk in [ROOT_DISK, WORK_DISK] {
            let path = staging.join(disk);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
                .map_err(io("make read-only a disk of", staging))?;
        }
        let text =
            serde_json::to_vec_pretty(manifest).map_err(|source| TemplateError::Manifest {
                path: staging.join(MANIFEST),
                source,
            })?;
        std::fs::write(staging.join(MANIFEST), text)
            .map_err(io("write the manifest of", staging))?;
        let dir = self
            .root
            .join(Self::key(&manifest.image_id, &manifest.shape));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        }
        std::fs::rename(staging, &dir).map_err(io("install", &dir))?;
        Ok(Template {
            dir,
            manifest: manifest.clone(),
        })
    }

    fn read(&self, dir: &Path) -> Result<Template, TemplateError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(|source| TemplateError::Io {
            what: "read",
            path: path.clone(),
            source,
        })?;
        let manifest = serde_json::from_slice(&text)
            .map_err(|source| TemplateError::Manifest { path, source })?;
        Ok(Template {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The template of `image_id` for `shape` if there is one made with `fingerprint` and
    /// all its files; a stale or broken one is removed (and logged).
    pub fn find(&self, image_id: &str, shape: &Shape, fingerprint: &str) -> Option<Template> {
        match self.lookup(image_id, shape, fingerprint) {
            Lookup::Found(t) => Some(t),
            Lookup::Removed { .. } | Lookup::Absent => None,
        }
    }

    /// [`find`](Self::find), saying when a template was there but unusable (and removed),
    /// so that the caller can warn.
    pub fn lookup(&self, image_id: &str, shape: &Shape, fingerprint: &str) -> Lookup {
        let dir = self.root.join(Self::key(image_id, shape));
        if !dir.exists() {
            return Lookup::Absent;
        }
        let why = match self.read(&dir) {
            Ok(t) if t.manifest.fingerprint != fingerprint => {
                "it was made from another image, kernel or banger build".to_string()
            }
            Ok(t) => {
                let files = t.snapshot();
                let missing = [t.root_disk(), t.work_disk(), files.state, files.memory]
                    .into_iter()
                    .find(|p| !p.exists());
                match missing {
                    None => return Lookup::Found(t),
                    Some(p) => format!("{} is missing", p.display()),
                }
            }
            Err(e) => banger_core::error::chain(&e),
        };
        tracing::warn!(template = %dir.display(), why, "stale template removed");
        self.remove_dir(&dir);
        Lookup::Removed { dir, why }
    }

    /// Every template of `image_id` (`None`: of every image).
    pub fn list(&self, image_id: Option<&str>) -> Vec<Template> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut found: Vec<Template> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| self.read(&e.path()).ok())
            .filter(|t| image_id.is_none_or(|id| t.manifest.image_id == id))
            .collect();
        found.sort_by(|a, b| a.dir.cmp(&b.dir));
        found
    }

    /// Removes a template's directory (best effort, logged). VMs restored from it keep
    /// their disks: their overlays' backing files are hard links of their own.
    pub fn remove_dir(&self, dir: &Path) {
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(template = %dir.display(), error = %e, "cannot remove template");
        }
    }

    /// Removes every template of `image_id`; how many.
    pub fn remove_image(&self, image_id: &str) -> usize {
        let all = self.list(Some(image_id));
        for t in &all {
            self.remove_dir(&t.dir);
        }
        all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(fingerprint: &str) -> Manifest {
        Manifest {
            image_id: "img1".into(),
            shape: Shape {
                vmm: VmmKind::Qemu,
                cpus: 2,
                memory_mib: 1024,
            },
            root_bytes: 10,
            work_bytes: 20,
            fingerprint: fingerprint.into(),
            made_at: "now".into(),
        }
    }

    fn staged(templates: &Templates, m: &Manifest) -> PathBuf {
        let dir = templates
            .staging(&Templates::key(&m.image_id, &m.shape))
            .unwrap();
        for f in [ROOT_DISK, WORK_DISK, "vmstate", "memory"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        dir
    }

    #[test]
    fn an_installed_template_is_found_until_its_fingerprint_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let templates = Templates::new(tmp.path().join("templates"));
        let m = manifest("fp1");
        let staging = staged(&templates, &m);
        let t = templates.install(&staging, &m).unwrap();
        assert!(!staging.exists());
        assert_eq!(t.dir.file_name().unwrap(), "img1-qemu-2c-1024m");
        assert!(
            std::fs::metadata(t.root_disk())
                .unwrap()
                .permissions()
                .readonly()
        );
        assert_eq!(templates.find("img1", &m.shape, "fp1"), Some(t.clone()));
        assert!(t.size_on_disk() > 0);
        assert_eq!(templates.list(Some("img1")).len(), 1);
        assert!(templates.list(Some("other")).is_empty());
        let other_shape = Shape { cpus: 4, ..m.shape };
        assert_eq!(templates.find("img1", &other_shape, "fp1"), None);
        // Another image build: removed, not used.
        assert_eq!(templates.find("img1", &m.shape, "fp2"), None);
        assert!(!t.dir.exists());
    }

    #[test]
    fn a_template_missing_a_file_is_removed_and_a_key_is_made_once_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let templates = Templates::new(tmp.path().join("templates"));
        let m = manifest("fp");
        let t = templates.install(&staged(&templates, &m), &m).unwrap();
        std::fs::remove_file(t.snapshot().state).unwrap();
        assert_eq!(templates.find("img1", &m.shape, "fp"), None);
        assert!(!t.dir.exists());

        let key = Templates::key("img1", &m.shape);
        let first = templates.begin(&key).expect("first");
        assert!(templates.begin(&key).is_none());
        drop(first);
        assert!(templates.begin(&key).is_some());
        let t = templates.install(&staged(&templates, &m), &m).unwrap();
        assert_eq!(templates.remove_image("img1"), 1);
        assert!(!t.dir.exists());
    }

    #[test]
    fn the_fingerprint_follows_the_rootfs_kernel_and_build() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs.ext4");
        std::fs::write(&rootfs, b"a").unwrap();
        let kernel = tmp.path().join("vmlinuz");
        std::fs::write(&kernel, b"k").unwrap();
        let image = ImageRow {
            id: "i".into(),
            name: "n".into(),
            dir: tmp.path().display().to_string(),
            rootfs: rootfs.display().to_string(),
            rootfs_bytes: 1,
            kernel: None,
            initrd: None,
            modules: None,
            kernel_ref: None,
            work_seed: None,
            distro: None,
            arch: None,
            description: None,
            init: banger_core::guest_init::GuestInit::Systemd,
            created_at: String::new(),
        };
        let build = BuildInfo {
            version: "1".into(),
            commit: "c".into(),
            build_epoch: 5,
        };
        let files = KernelFiles::either(&kernel);
        let first = fingerprint(&image, &files, &build);
        assert_eq!(first, fingerprint(&image, &files, &build));
        std::fs::write(&rootfs, b"ab").unwrap();
        let rebuilt = fingerprint(&image, &files, &build);
        assert_ne!(first, rebuilt);
        std::fs::write(&kernel, b"kk").unwrap();
        assert_ne!(rebuilt, fingerprint(&image, &files, &build));
        let newer = BuildInfo {
            commit: "d".into(),
            ..build.clone()
        };
        assert_ne!(
            fingerprint(&image, &files, &build),
            fingerprint(&image, &files, &newer)
        );
    }
}
