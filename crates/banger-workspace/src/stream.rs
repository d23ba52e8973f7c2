//! The transfer stream: one uncompressed tar a guest unpacks (with [`crate::script`]'s
//! prepare script) to build the workspace. Written file by file from disk, so memory stays
//! bounded whatever the repository's size.
//!
//! # Format
//!
//! A GNU tar stream (long names as GNU extensions), entries relative to the guest checkout
//! (`/root/repo`), every entry owned by uid/gid 0 (`root`), modes as on the host, symlinks
//! as symlinks; directories, regular files and symlinks only (sockets, fifos, `*.lock` files
//! and git's sample hooks are left out).
//!
//! - **Overlay**: `.git/...` is the git dir of `git clone --depth 10 --no-checkout
//!   --no-local ROOT`, with the base commit fetched (`git fetch --depth 10 origin BASE`)
//!   when it is outside that window (an old `--from`, a detached HEAD no branch reaches),
//!   and `origin` set to the host repository's origin URL (removed when it has none).
//!   `.git/banger-checkout-skip` lists, each path followed by a NUL byte, the paths the
//!   checkout must leave alone: the overlay's files and the tracked files deleted in the
//!   host's work tree (the prepare script consumes and removes it). Then the overlay: the
//!   plan's files whose bytes come from the work tree, at their paths.
//! - **Full copy**: the host's `.git` as it is, each initialised submodule's `.git` (a
//!   gitfile or a directory), then every planned file from the work tree.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::git::{Git, GitError};
use crate::inspect::{Inspection, TransferMode};

/// How deep the shallow clone reaches.
pub const CLONE_DEPTH: u32 = 10;

/// The file in the stream's `.git` listing the paths the checkout must not write: the
/// overlay's files and the files deleted in the host's work tree.
pub const SKIP_LIST: &str = ".git/banger-checkout-skip";

/// What a written stream held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Bytes written to the output.
    pub bytes: u64,
    /// Tar entries (directories, files, symlinks).
    pub entries: u64,
    /// Whether the base commit was outside the depth-10 window and fetched explicitly.
    pub fetched_base: bool,
}

/// Why the stream could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The temporary clone could not be made in the scratch directory.
    #[error("cannot make a temporary directory in {dir}")]
    Scratch {
        /// The scratch directory handed in.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file of the repository or of the clone could not be read (changed since inspect?).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The output refused bytes (the guest went away?).
    #[error("cannot write the workspace stream")]
    Write(#[source] io::Error),
    /// The base commit is not in the clone even after fetching it.
    #[error("commit {commit} could not be fetched from {root}")]
    MissingBase {
        /// The base commit.
        commit: String,
        /// The repository root.
        root: PathBuf,
    },
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
}

/// Writes the transfer stream for `plan` to `out`. `scratch` is a directory the caller owns
/// for temporary files (the shallow clone lives there while the stream is written, and is
/// removed after).
pub fn write_stream<W: Write>(
    git: &Git,
    plan: &Inspection,
    scratch: &Path,
    out: W,
) -> Result<StreamStats, StreamError> {
    let mut tar = Tar::new(out);
    let mut fetched_base = false;
    match plan.mode {
        TransferMode::Overlay => {
            let temp = tempfile::Builder::new()
                .prefix("workspace-")
                .tempdir_in(scratch)
                .map_err(|source| StreamError::Scratch {
                    dir: scratch.to_path_buf(),
                    source,
                })?;
            let clone = temp.path().join("repo");
            fetched_base = shallow_clone(git, plan, &clone)?;
            tar.tree(&clone.join(".git"), ".git")?;
            let mut skip = Vec::new();
            let overlay = plan.work_tree_files().map(|f| &f.path);
            for path in plan.deleted.iter().chain(overlay) {
                skip.extend_from_slice(path.as_bytes());
                skip.push(0);
            }
            tar.bytes(SKIP_LIST, &skip)?;
            drop(temp);
        }
        TransferMode::FullCopy => {
            tar.tree(&plan.root.join(".git"), ".git")?;
            for sub in &plan.submodules {
                let name = format!("{sub}/.git");
                tar.path(&plan.root.join(&name), &name)?;
            }
        }
    }
    for file in plan.work_tree_files() {
        tar.path(&plan.root.join(&file.path), &file.path)?;
    }
    let (bytes, entries) = tar.finish()?;
    Ok(StreamStats {
        bytes,
        entries,
        fetched_base,
    })
}

/// Makes the depth-10 no-checkout clone of the plan's repository at `clone`; returns
/// whether the base commit had to be fetched on its own.
fn shallow_clone(git: &Git, plan: &Inspection, clone: &Path) -> Result<bool, StreamError> {
    let parent = clone.parent().unwrap_or(clone);
    let depth = CLONE_DEPTH.to_string();
    git.run(
        parent,
        &[
            "clone",
            "-q",
            "--no-local",
            "--no-checkout",
            "--depth",
            &depth,
            "--",
            &plan.root.to_string_lossy(),
            &clone.to_string_lossy(),
        ],
    )?;
    let base = format!("{}^{{commit}}", plan.base);
    let has_base = |git: &Git| -> Result<bool, GitError> {
        Ok(git.output(clone, &["cat-file", "-e", &base])?.success())
    };
    let mut fetched = false;
    if !has_base(git)? {
        git.run(
            clone,
            &["fetch", "-q", "--depth", &depth, "origin", &plan.base],
        )?;
        fetched = true;
        if !has_base(git)? {
            return Err(StreamError::MissingBase {
                commit: plan.base.clone(),
                root: plan.root.clone(),
            });
        }
    }
    match &plan.origin_url {
        Some(url) => git.run(clone, &["remote", "set-url", "origin", url])?,
        None => git.run(clone, &["remote", "remove", "origin"])?,
    };
    Ok(fetched)
}

/// A tar builder that counts what it writes and tells read errors from write errors.
struct Tar<W: Write> {
    builder: tar::Builder<Counter<W>>,
    entries: u64,
}

impl<W: Write> Tar<W> {
    fn new(out: W) -> Self {
        let mut builder = tar::Builder::new(Counter {
            inner: out,
            bytes: 0,
            failed: false,
        });
        builder.follow_symlinks(false);
        Self {
            builder,
            entries: 0,
        }
    }

    fn header(kind: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode & 0o7777);
        header.set_uid(0);
        header.set_gid(0);
        // Not valid UTF-8 is impossible here: fixed ASCII names.
        let _ = header.set_username("root");
        let _ = header.set_groupname("root");
        header.set_mtime(mtime);
        header.set_size(size);
        header
    }

    /// Maps an error from the builder: the output's own failure, or a read of `path`.
    fn error(&mut self, path: &Path, source: io::Error) -> StreamError {
        let counter = self.builder.get_mut();
        if counter.failed {
            StreamError::Write(source)
        } else {
            StreamError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// One file, symlink or directory (not its contents) at `name`.
    fn path(&mut self, path: &Path, name: &str) -> Result<(), StreamError> {
        let read = |source| StreamError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::symlink_metadata(path).map_err(read)?;
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        let kind = meta.file_type();
        let result = if kind.is_symlink() {
            let target = fs::read_link(path).map_err(read)?;
            let mut header = Self::header(EntryType::Symlink, 0o777, mtime, 0);
            self.builder.append_link(&mut header, name, target)
        } else if kind.is_dir() {
            let mut header = Self::header(EntryType::Directory, meta.mode(), mtime, 0);
            self.builder.append_data(&mut header, name, io::empty())
        } else if kind.is_file() {
            let file = File::open(path).map_err(read)?;
            let meta = file.metadata().map_err(read)?;
            let mut header = Self::header(EntryType::Regular, meta.mode(), mtime, meta.len());
            self.builder.append_data(&mut header, name, file)
        } else {
            return Ok(());
        };
        result.map_err(|source| self.error(path, source))?;
        self.entries += 1;
        Ok(())
    }

    /// A directory and everything below it, in name order, as `name/...`.
    fn tree(&mut self, dir: &Path, name: &str) -> Result<(), StreamError> {
        self.path(dir, name)?;
        let read = |source| StreamError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut children: Vec<_> = fs::read_dir(dir)
            .map_err(read)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let child_name = child.file_name().to_string_lossy().into_owned();
            let is_sample_hook = name.ends_with("/hooks") && child_name.ends_with(".sample");
            if child_name.ends_with(".lock") || is_sample_hook {
                continue;
            }
            let path = child.path();
            let shown = format!("{name}/{child_name}");
            if child.file_type().map_err(read)?.is_dir() {
                self.tree(&path, &shown)?;
            } else {
                self.path(&path, &shown)?;
            }
        }
        Ok(())
    }

    /// A regular file made in memory (small: lists the plan made).
    fn bytes(&mut self, name: &str, data: &[u8]) -> Result<(), StreamError> {
        let mut header = Self::header(EntryType::Regular, 0o644, 0, data.len() as u64);
        self.builder
            .append_data(&mut header, name, data)
            .map_err(StreamError::Write)?;
        self.entries += 1;
        Ok(())
    }

    fn finish(self) -> Result<(u64, u64), StreamError> {
        let entries = self.entries;
        let mut counter = self.builder.into_inner().map_err(StreamError::Write)?;
        counter.inner.flush().map_err(StreamError::Write)?;
        Ok((counter.bytes, entries))
    }
}

/// Counts bytes written and remembers whether the inner writer failed.
struct Counter<W> {
    inner: W,
    bytes: u64,
    failed: bool,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}
