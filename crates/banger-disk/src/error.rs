//! The error type of every disk operation, carrying the context needed to act on it: the
//! image or file path, the command line that failed, and what the tool said.

use std::io;
use std::path::PathBuf;

use banger_core::runner::SpawnError;

use crate::debugfs::FileKind;

/// A disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file operation on the host failed.
    #[error("could not {op} {}", path.display())]
    Io {
        /// The host path the operation was about.
        path: PathBuf,
        /// What was being done, as a verb phrase (`"read"`, `"set the length of"`...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external program could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// An external program exited unsuccessfully.
    #[error("`{command}` failed ({}): {detail}", exit_status(*code))]
    Command {
        /// The command line, ready to paste into a shell.
        command: String,
        /// Its exit code (`None`: killed by a signal).
        code: Option<i32>,
        /// What it printed (stderr, or stdout when stderr was empty), trimmed.
        detail: String,
    },
    /// A debugfs command reported an error (debugfs itself exits 0 in that case).
    #[error("debugfs on {}: `{command}` failed: {message}", image.display())]
    Debugfs {
        /// The image debugfs worked on.
        image: PathBuf,
        /// The debugfs command (or commands, `; `-separated) that failed.
        command: String,
        /// debugfs's error lines, `; `-separated.
        message: String,
    },
    /// debugfs printed something this crate does not understand.
    #[error("unexpected output from `{command}`: {detail}")]
    UnexpectedOutput {
        /// The command line that ran.
        command: String,
        /// What was wrong with the output.
        detail: String,
    },
    /// A path looked up inside an image does not exist.
    #[error("{path} not found in {}", image.display())]
    NotFound {
        /// The image.
        image: PathBuf,
        /// The path inside the image.
        path: String,
    },
    /// A path inside an image has the wrong type (a directory where a file was expected...).
    #[error("{path} in {} is a {found}, not a {expected}", image.display())]
    WrongType {
        /// The image.
        image: PathBuf,
        /// The path inside the image.
        path: String,
        /// What it is.
        found: FileKind,
        /// What it had to be.
        expected: FileKind,
    },
    /// Growing an image to a size smaller than it already is.
    #[error("refusing to shrink {} from {current} to {requested} bytes", image.display())]
    Shrink {
        /// The image.
        image: PathBuf,
        /// Its current size in bytes.
        current: u64,
        /// The requested size in bytes.
        requested: u64,
    },
    /// A debugfs command line failed the safety check (see [`crate::debugfs::check_line`]);
    /// nothing was run.
    #[error("refusing to run the debugfs command line {line:?}: {reason}")]
    UnsafeDebugfsLine {
        /// The line (its first 200 characters).
        line: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `e2fsck -fn` found the image is not a clean ext4 filesystem.
    #[error("{} is not a clean ext4 filesystem (`{command}`, {}): {detail}", image.display(), exit_status(*code))]
    NotCleanExt4 {
        /// The image.
        image: PathBuf,
        /// The command line that checked it.
        command: String,
        /// e2fsck's exit code.
        code: Option<i32>,
        /// The first lines e2fsck printed.
        detail: String,
    },
    /// A name inside an image cannot be copied safely to the host.
    #[error("refusing {path:?} in {}: {reason}", image.display())]
    UnsafeEntry {
        /// The image.
        image: PathBuf,
        /// The path inside the image (escaped where it is not printable).
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// Reading an ext4 image with the built-in reader failed.
    #[error("cannot read {path} in {}", image.display())]
    Ext4Read {
        /// The image.
        image: PathBuf,
        /// The path inside the image.
        path: String,
        /// What the reader said.
        #[source]
        source: ext4_view::Ext4Error,
    },
    /// An argument cannot be used (a guest path with a newline, a bad MAC address...).
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What the value is (`"guest path"`, `"MAC address"`...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

fn exit_status(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_string(),
    }
}

impl DiskError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| DiskError::Io { path, op, source }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DiskError::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Builds a [`DiskError::Command`] from a finished command.
    pub(crate) fn command(out: &banger_core::runner::CommandOutput) -> Self {
        let detail = if out.stderr.trim().is_empty() {
            out.stdout.trim()
        } else {
            out.stderr.trim()
        };
        DiskError::Command {
            command: out.command.clone(),
            code: out.code,
            detail: detail.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::error::chain;

    #[test]
    fn a_message_never_repeats_its_source() {
        let cause = io::Error::from_raw_os_error(libc::ENOSPC);
        let text = cause.to_string();
        let err = DiskError::io("/s/rootfs.ext4", "set the length of")(cause);
        assert_eq!(
            err.to_string(),
            "could not set the length of /s/rootfs.ext4"
        );
        let rendered = chain(&err);
        assert_eq!(rendered.matches(&text).count(), 1, "{rendered}");
        let spawn = DiskError::from(banger_core::runner::SpawnError {
            command: "mkfs.ext4 /s/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert_eq!(
            chain(&spawn),
            "could not run `mkfs.ext4 /s/x`: No such file or directory (os error 2)"
        );
    }
}
