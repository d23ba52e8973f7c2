//! [`KernelError`]: everything that can go wrong while finding, unpacking or storing a kernel,
//! each variant naming the path, version or name involved.

use std::io;
use std::path::PathBuf;

use banger_core::names::NameError;

/// Why a kernel could not be found, unpacked, imported or read back.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The root given to [`find_kernel`](crate::find_kernel) is not a readable directory.
    #[error("cannot search {root} for a kernel")]
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
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file could not be copied.
    #[error("cannot copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A rename (staging → published, old version aside) failed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be removed.
    #[error("cannot remove {path}")]
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
    #[error("invalid kernel manifest {path}")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::error::chain;

    #[test]
    fn a_message_never_repeats_its_source() {
        let errors = [
            KernelError::Read {
                path: "/boot/vmlinuz".into(),
                source: io::Error::from_raw_os_error(libc::EACCES),
            },
            KernelError::Rename {
                from: "/k/.staging".into(),
                to: "/k/6.1".into(),
                source: io::Error::from_raw_os_error(libc::EACCES),
            },
        ];
        let cause = io::Error::from_raw_os_error(libc::EACCES).to_string();
        for err in errors {
            assert!(!err.to_string().contains(&cause), "{err}");
            let rendered = chain(&err);
            assert!(rendered.ends_with(&format!(": {cause}")), "{rendered}");
            assert_eq!(rendered.matches(&cause).count(), 1, "{rendered}");
        }
        let bad = serde_json::from_str::<u32>("x").unwrap_err();
        let why = bad.to_string();
        let err = KernelError::BadManifest {
            path: "/k/6.1/manifest.json".into(),
            source: bad,
        };
        assert_eq!(
            chain(&err),
            format!("invalid kernel manifest /k/6.1/manifest.json: {why}")
        );
    }
}
