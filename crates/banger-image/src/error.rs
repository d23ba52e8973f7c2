//! The error type of every image operation, carrying the context needed to act on it:
//! which tar and which entry, which command, which path.

use std::io;
use std::path::PathBuf;

use banger_core::names::NameError;
use banger_core::runner::SpawnError;
use banger_disk::DiskError;

/// An image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file operation on the host failed.
    #[error("could not {op} {}", path.display())]
    Io {
        /// The host path the operation was about.
        path: PathBuf,
        /// What was being done, as a verb phrase (`"read"`, `"create"`...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A rootfs tar stream could not be read (truncated, corrupt, bad compression...).
    #[error("could not read tar {tar}{}", entry_suffix(entry.as_deref()))]
    TarRead {
        /// The tar (its path, or the name given to a stream).
        tar: String,
        /// The entry being read, when the error happened inside one.
        entry: Option<String>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A tar entry was refused: its path escapes the root, is absolute, goes through a
    /// symlink or a non-directory, or it is otherwise unusable.
    #[error("tar {tar}: refusing entry {entry:?}: {reason}")]
    Entry {
        /// The tar (its path, or the name given to a stream).
        tar: String,
        /// The entry's path as written in the tar.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A compression format this crate does not read.
    #[error("tar {tar}: {format}-compressed streams are not supported (use plain, gzip or zstd)")]
    Compression {
        /// The tar (its path, or the name given to a stream).
        tar: String,
        /// The detected format (`"xz"`, `"bzip2"`).
        format: &'static str,
    },
    /// A disk primitive (mkfs, debugfs...) failed; `step` says what was being done.
    #[error("{step}")]
    Disk {
        /// What was being done (`"building the ext4 image"`...).
        step: &'static str,
        /// The underlying error, naming the image and the command.
        #[source]
        source: DiskError,
    },
    /// An external program could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The `mise` binary could not be fetched, checked or cached.
    #[error(transparent)]
    Mise(#[from] crate::mise::MiseError),
    /// An external program exited unsuccessfully.
    #[error("`{command}` failed ({}): {stderr_tail}", exit_status(*code))]
    Command {
        /// The command line, ready to paste into a shell.
        command: String,
        /// Its exit code (`None`: killed by a signal).
        code: Option<i32>,
        /// The last lines of what it printed on stderr (stdout when stderr was empty).
        stderr_tail: String,
    },
    /// debugfs reported an error while creating device nodes and fifos.
    #[error("debugfs on {}: creating special files failed: {message}", image.display())]
    Mknod {
        /// The image.
        image: PathBuf,
        /// debugfs's error lines, `; `-separated.
        message: String,
    },
    /// A bundle is malformed or holds something other than `rootfs.ext4` and
    /// `manifest.json` as regular files.
    #[error("bundle {}: {reason}", bundle.display())]
    Bundle {
        /// The bundle file.
        bundle: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest is not valid JSON of the expected shape, or a field is invalid.
    #[error("manifest of {}: {reason}", source_path.display())]
    Manifest {
        /// The bundle (or directory) the manifest belongs to.
        source_path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An image name was refused.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A file's sha256 is not the expected one.
    #[error("sha256 of {} is {actual}, expected {expected}", path.display())]
    Sha256Mismatch {
        /// The file that was hashed.
        path: PathBuf,
        /// The expected digest (lowercase hex).
        expected: String,
        /// The digest of the file (lowercase hex).
        actual: String,
    },
    /// An argument cannot be used.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What the value is (`"Debian suite"`, `"image size"`...).
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

fn entry_suffix(entry: Option<&str>) -> String {
    entry.map(|e| format!(" (entry {e:?})")).unwrap_or_default()
}

fn exit_status(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_string(),
    }
}

/// How many trailing lines of a failed command's output go into [`ImageError::Command`].
const TAIL_LINES: usize = 20;

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { path, op, source }
    }

    pub(crate) fn disk(step: &'static str) -> impl FnOnce(DiskError) -> Self {
        move |source| ImageError::Disk { step, source }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ImageError::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`ImageError::Command`] from a finished command, keeping the last lines
    /// of its stderr (or of its stdout when stderr is empty).
    pub(crate) fn command(out: &banger_core::runner::CommandOutput) -> Self {
        let text = if out.stderr.trim().is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        ImageError::Command {
            command: out.command.clone(),
            code: out.code,
            stderr_tail: tail(text, TAIL_LINES),
        }
    }
}

/// The last `n` non-empty lines of `text`, newline-separated.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::CommandOutput;

    #[test]
    fn command_error_keeps_the_tail_of_stderr() {
        let stderr: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let err = ImageError::command(&CommandOutput {
            command: "mmdebstrap bookworm out.tar".to_string(),
            code: Some(1),
            stdout: "ignored".to_string(),
            stderr,
        });
        let text = err.to_string();
        assert!(
            text.starts_with("`mmdebstrap bookworm out.tar` failed (exit code 1): line 11\n"),
            "{text}"
        );
        assert!(text.ends_with("line 30"), "{text}");
        assert!(!text.contains("line 10\n"), "{text}");
    }

    #[test]
    fn command_error_falls_back_to_stdout() {
        let err = ImageError::command(&CommandOutput {
            command: "x".to_string(),
            code: None,
            stdout: "only stdout\n\n".to_string(),
            stderr: " \n".to_string(),
        });
        assert_eq!(
            err.to_string(),
            "`x` failed (killed by a signal): only stdout"
        );
    }

    #[test]
    fn a_message_never_repeats_its_source() {
        let cause = io::Error::from_raw_os_error(libc::EACCES);
        let text = cause.to_string();
        let err = ImageError::disk("building the ext4 image")(banger_disk::DiskError::Io {
            path: "/s/rootfs.ext4".into(),
            op: "create",
            source: cause,
        });
        assert_eq!(
            banger_core::error::chain(&err),
            format!("building the ext4 image: could not create /s/rootfs.ext4: {text}")
        );
        let err =
            ImageError::io("/s/out.tar.zst", "write")(io::Error::from_raw_os_error(libc::ENOSPC));
        let rendered = banger_core::error::chain(&err);
        let cause = io::Error::from_raw_os_error(libc::ENOSPC).to_string();
        assert_eq!(rendered.matches(&cause).count(), 1, "{rendered}");
    }

    #[test]
    fn tar_read_error_names_the_entry() {
        let err = ImageError::TarRead {
            tar: "layer.tar".to_string(),
            entry: Some("etc/passwd".to_string()),
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        };
        assert_eq!(
            banger_core::error::chain(&err),
            format!(
                "could not read tar layer.tar (entry \"etc/passwd\"): {}",
                io::Error::from(io::ErrorKind::UnexpectedEof)
            )
        );
    }
}
