//! [`KernelError`]: everything that can go wrong while finding, unpacking or storing a kernel,
//! each variant naming the path, version or name involved.

use std::io;
use std::path::PathBuf;

use banger_core::names::NameError;

/// Why a kernel could not be found, unpacked, imported or read back.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The root given to [`find_kernel`](crate::find_kernel) is not a readable directory.
    #[error("cannot search {root} for a kernel: {source}")]
    BadRoot {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No kernel image under the root. `looked_for` lists the patterns searched and
    /// `found` says what was there instead (initrds or module trees without a kernel...).
    #[error("no kernel found under {root}: looked for {looked_for}{}", found_suffix(.found))]
    NotFound {
        root: PathBuf,
        looked_for: String,
        found: Vec<String>,
    },
    /// The caller asked for a version the root does not hold.
    #[error("kernel version {wanted} not found under {root}; available: {}", list_or_none(.available))]
    VersionNotFound {
        root: PathBuf,
        wanted: String,
        available: Vec<String>,
    },
    /// A version string that cannot become a directory name.
    #[error("kernel version {version:?} (from {path}) is unusable: {reason}")]
    BadVersion {
        path: PathBuf,
        version: String,
        reason: &'static str,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file could not be copied.
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A rename (staging → published, old version aside) failed.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be removed.
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A module tree holds something other than files, directories and symlinks.
    #[error("cannot copy {path}: it is a {kind}, only files, directories and symlinks are copied")]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    /// No uncompressed ELF kernel could be obtained from the file; `attempts` says what was
    /// tried (the setup header's payload, each compression magic found by scanning).
    #[error("cannot unpack an ELF vmlinux from {path}: {}", attempts.join("; "))]
    Extract {
        path: PathBuf,
        attempts: Vec<String>,
    },
    /// The kernel name breaks the naming rules.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// What was found has neither a `vmlinuz` nor a `vmlinux`.
    #[error("kernel {version} has no kernel image (neither vmlinuz nor vmlinux)")]
    NoKernelImage { version: String },
    /// A kernel of that name is already in the store (and `force` was not given).
    #[error("kernel {name:?} already exists at {path}; import with force to replace it")]
    AlreadyExists { name: String, path: PathBuf },
    /// No kernel of that name in the store.
    #[error("kernel {name:?} is not in the store ({path} does not exist)")]
    NotInStore { name: String, path: PathBuf },
    /// A `manifest.json` that is not valid.
    #[error("invalid kernel manifest {path}: {source}")]
    BadManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn found_suffix(found: &[String]) -> String {
    if found.is_empty() {
        String::new()
    } else {
        format!("; found only: {}", found.join(", "))
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}
