//! Inspecting a host repository: from any directory inside a git work tree, the enclosing
//! repository, its HEAD, branch, origin and identity, and the transfer plan — which files
//! reach the guest and how. This is what `--dry-run` prints, and what
//! [`crate::stream`] and [`crate::script`] carry out.
//!
//! # The plan
//!
//! - **Overlay** (the default): the guest gets a depth-10 clone of the history and checks out
//!   the base commit (HEAD, or `--from`); files of the working tree that differ from HEAD
//!   (tracked files modified, added to the index, changed in mode or type) travel as an
//!   overlay on top, tracked files deleted in the working tree are removed, untracked
//!   non-ignored files travel only with `include_untracked`, ignored files never. With
//!   `--from REF` the guest tree is exactly that commit: nothing of the working tree travels.
//!   A repository with submodules is refused.
//! - **Full copy**: the whole `.git` (history, submodules' repositories under
//!   `.git/modules`), every tracked file of the repository and of its initialised
//!   submodules as it is in the working tree, and untracked non-ignored files of the top
//!   repository with `include_untracked`. Ignored files never travel.
//!
//! Untracked files are counted from the repository root even when the inspected path is a
//! subdirectory.
//!
//! # Text rendering (`--dry-run`)
//!
//! [`Inspection`]'s `Display` prints, one item a line:
//!
//! ```text
//! repository: /home/me/src/app
//! path: /home/me/src/app/sub                (only when not the root)
//! head: 3f2a... (branch main)               (or `(detached)`)
//! origin: git@example.com:me/app.git        (or `none`)
//! mode: overlay                             (or `full copy`)
//! base: 3f2a...                             (the commit checked out; `(from REF)` after it)
//! guest branch: work                        (or `none`)
//! files: 12 (2 from the working tree)
//! = src/lib.rs                              from the base commit
//! M src/main.rs                             tracked, from the working tree
//! ? notes.txt                               untracked, from the working tree
//! C vendor/dep/x.c                          full copy, from the working tree
//! D old.txt                                 deleted in the working tree: removed in the guest
//! tool pins: .mise.toml, go.mod             (only when some are: `mise install` runs)
//! untracked: 3 skipped (include them with --include-untracked)
//! ```
//!
//! The last line reads `untracked: N shipped` when they travel and `untracked: none` when
//! there are none. Control characters in a path are escaped (`\n`). The struct also
//! serialises to JSON (field names as in Rust, modes and sources in `snake_case`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::git::{Git, GitError};

/// What the caller asked for (the `vm run` / `workspace prepare` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InspectOptions {
    /// Ship untracked, non-ignored files too.
    pub include_untracked: bool,
    /// Ship the whole repository (history, submodules) instead of a shallow clone and overlay.
    pub full_copy: bool,
    /// Check out a guest-only branch of this name.
    pub branch: Option<String>,
    /// Start the guest branch from this ref instead of HEAD (needs `branch`).
    pub from: Option<String>,
}

/// How the repository travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// A depth-10 no-checkout clone plus the working tree's changes.
    Overlay,
    /// The whole repository, history and submodules included.
    FullCopy,
}

/// Where a file in the guest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileSource {
    /// Written by the checkout of the base commit.
    Commit,
    /// A tracked file that differs from HEAD, shipped from the working tree.
    Modified,
    /// An untracked, non-ignored file, shipped from the working tree.
    Untracked,
    /// Shipped from the working tree as part of a full copy.
    Copied,
}

impl FileSource {
    fn tag(self) -> char {
        match self {
            FileSource::Commit => '=',
            FileSource::Modified => 'M',
            FileSource::Untracked => '?',
            FileSource::Copied => 'C',
        }
    }

    /// Whether the file's bytes travel from the working tree (not from history).
    pub fn from_work_tree(self) -> bool {
        self != FileSource::Commit
    }
}

/// One file the guest's work tree will have, by path relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    /// Relative to the repository root, `/`-separated.
    pub path: String,
    /// Where its content comes from.
    pub source: FileSource,
}

/// A file at the repository root that pins tool versions: when one is there and the guest
/// has `mise`, `mise install` runs in the workspace after a prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ToolPin {
    /// `.mise.toml`
    #[serde(rename = ".mise.toml")]
    DotMiseToml,
    /// `mise.toml`
    #[serde(rename = "mise.toml")]
    MiseToml,
    /// `.tool-versions` (asdf)
    #[serde(rename = ".tool-versions")]
    ToolVersions,
    /// `.nvmrc` (node)
    #[serde(rename = ".nvmrc")]
    Nvmrc,
    /// `.python-version`
    #[serde(rename = ".python-version")]
    PythonVersion,
    /// `rust-toolchain`
    #[serde(rename = "rust-toolchain")]
    RustToolchain,
    /// `rust-toolchain.toml`
    #[serde(rename = "rust-toolchain.toml")]
    RustToolchainToml,
    /// `go.mod`
    #[serde(rename = "go.mod")]
    GoMod,
}

impl ToolPin {
    /// Every pin file banger looks for, in this order.
    pub const ALL: [ToolPin; 8] = [
        ToolPin::DotMiseToml,
        ToolPin::MiseToml,
        ToolPin::ToolVersions,
        ToolPin::Nvmrc,
        ToolPin::PythonVersion,
        ToolPin::RustToolchain,
        ToolPin::RustToolchainToml,
        ToolPin::GoMod,
    ];

    /// The file's name at the repository root.
    pub fn file_name(self) -> &'static str {
        match self {
            ToolPin::DotMiseToml => ".mise.toml",
            ToolPin::MiseToml => "mise.toml",
            ToolPin::ToolVersions => ".tool-versions",
            ToolPin::Nvmrc => ".nvmrc",
            ToolPin::PythonVersion => ".python-version",
            ToolPin::RustToolchain => "rust-toolchain",
            ToolPin::RustToolchainToml => "rust-toolchain.toml",
            ToolPin::GoMod => "go.mod",
        }
    }
}

impl fmt::Display for ToolPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// The repository's own `user.name` / `user.email` (its local config, not the global one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `user.name`, when the repository sets it.
    pub name: Option<String>,
    /// `user.email`, when the repository sets it.
    pub email: Option<String>,
}

/// A repository, inspected, and the plan for shipping it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// The directory that was inspected (canonical).
    pub path: PathBuf,
    /// The enclosing repository's work tree root.
    pub root: PathBuf,
    /// The commit HEAD points at.
    pub head: String,
    /// The branch checked out on the host; `None` for a detached HEAD.
    pub branch: Option<String>,
    /// `remote.origin.url`, when there is one.
    pub origin_url: Option<String>,
    /// The repository's own identity.
    pub identity: Identity,
    /// How it travels.
    pub mode: TransferMode,
    /// The commit the guest checks out, and that an export diffs against.
    pub base: String,
    /// The ref given with `--from`, as given.
    pub from: Option<String>,
    /// The guest-only branch to create (`--branch`).
    pub guest_branch: Option<String>,
    /// Every file of the guest's work tree, sorted by path.
    pub files: Vec<PlannedFile>,
    /// Tracked files deleted in the host's work tree, removed in the guest after checkout.
    pub deleted: Vec<String>,
    /// Initialised submodules (full copy), relative to the root; their `.git` travels too.
    pub submodules: Vec<String>,
    /// Untracked, non-ignored files of the repository (counted from the root).
    pub untracked: usize,
    /// Of those, the ones that stay behind (all of them without `include_untracked`, and
    /// with `--from`).
    pub skipped_untracked: usize,
    /// The tool pin files the guest's work tree has at its root.
    pub tool_pins: Vec<ToolPin>,
}

impl Inspection {
    /// The one-line notice for skipped untracked files, when some are.
    pub fn untracked_notice(&self) -> Option<String> {
        match self.skipped_untracked {
            0 => None,
            1 => Some("1 untracked file not copied (use --include-untracked)".to_string()),
            n => Some(format!(
                "{n} untracked files not copied (use --include-untracked)"
            )),
        }
    }

    /// The files whose bytes travel from the working tree.
    pub fn work_tree_files(&self) -> impl Iterator<Item = &PlannedFile> {
        self.files.iter().filter(|f| f.source.from_work_tree())
    }
}

/// Why a path cannot be shipped as a workspace.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The path does not exist or cannot be read.
    #[error("cannot read {path}")]
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is a file, not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The path is not inside a git work tree.
    #[error("{path} is not inside a git repository")]
    NotARepository {
        /// The path given.
        path: PathBuf,
    },
    /// The path is a bare repository (or inside one).
    #[error("{path} is a bare git repository: it has no work tree to ship")]
    Bare {
        /// The path given.
        path: PathBuf,
    },
    /// The path is inside a `.git` directory.
    #[error("{path} is inside a .git directory, not in a work tree")]
    InsideGitDir {
        /// The path given.
        path: PathBuf,
    },
    /// The repository has no commit yet.
    #[error("{root} has no commit yet")]
    NoCommits {
        /// The repository root.
        root: PathBuf,
    },
    /// Submodules without a full copy.
    #[error("{root} has submodules ({}): only a full copy (--full-copy) ships them", .paths.join(", "))]
    Submodules {
        /// The repository root.
        root: PathBuf,
        /// The submodules' paths.
        paths: Vec<String>,
    },
    /// `--from` without `--branch`.
    #[error("--from {from} needs --branch NAME (the guest-only branch it starts)")]
    FromWithoutBranch {
        /// The ref given.
        from: String,
    },
    /// `--from` names nothing that resolves to a commit.
    #[error("{reference:?} is not a commit in {root}")]
    UnknownRef {
        /// The ref given.
        reference: String,
        /// The repository root.
        root: PathBuf,
    },
    /// `--branch` is not a valid branch name.
    #[error("{name:?} is not a valid branch name")]
    BadBranch {
        /// The name given.
        name: String,
    },
    /// A full copy of a linked worktree (its `.git` is elsewhere).
    #[error(
        "{root} is a linked worktree (its git dir is {git_dir}): a full copy needs the main work tree"
    )]
    LinkedWorktree {
        /// The work tree root.
        root: PathBuf,
        /// Where its git dir is.
        git_dir: PathBuf,
    },
    /// A file name git reported is not UTF-8.
    #[error("{root} has a file name that is not UTF-8 (near {near:?})")]
    NonUtf8Path {
        /// The repository root.
        root: PathBuf,
        /// The name, lossily decoded.
        near: String,
    },
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
}

/// Inspects the repository enclosing `path` and plans its transfer.
///
/// Reads only: the host's index is not refreshed (`--no-optional-locks`) and nothing is
/// written.
pub fn inspect(
    git: &Git,
    path: &Path,
    options: &InspectOptions,
) -> Result<Inspection, InspectError> {
    if let (Some(from), None) = (&options.from, &options.branch) {
        return Err(InspectError::FromWithoutBranch { from: from.clone() });
    }
    let canonical = path
        .canonicalize()
        .map_err(|source| InspectError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
    if !canonical.is_dir() {
        return Err(InspectError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let root = find_root(git, path, &canonical)?;

    let head = current_head(git, &root)?;
    let branch = git.query(&root, &["symbolic-ref", "-q", "--short", "HEAD"])?;
    let origin_url = git.query(&root, &["config", "--get", "remote.origin.url"])?;
    let identity = Identity {
        name: git.query(&root, &["config", "--local", "--get", "user.name"])?,
        email: git.query(&root, &["config", "--local", "--get", "user.email"])?,
    };
    if let Some(name) = &options.branch {
        check_branch(git, &root, name)?;
    }
    let base = match &options.from {
        None => head.clone(),
        Some(reference) => resolve(git, &root, reference)?,
    };
    let mode = if options.full_copy {
        TransferMode::FullCopy
    } else {
        TransferMode::Overlay
    };

    let status = Status::read(git, &root)?;
    let mut files = Vec::new();
    let mut deleted = Vec::new();
    let mut submodules = Vec::new();
    match (mode, &options.from) {
        (TransferMode::Overlay, Some(_)) => {
            let tree = ls_tree(git, &root, &base)?;
            if !tree.gitlinks.is_empty() {
                return Err(InspectError::Submodules {
                    root,
                    paths: tree.gitlinks,
                });
            }
            files.extend(tree.files.into_iter().map(|path| PlannedFile {
                path,
                source: FileSource::Commit,
            }));
        }
        (TransferMode::Overlay, None) => {
            let index = ls_files(git, &root)?;
            if !index.gitlinks.is_empty() {
                return Err(InspectError::Submodules {
                    root,
                    paths: index.gitlinks,
                });
            }
            let present = |path: &str| root.join(path).symlink_metadata().is_ok();
            for path in index.files {
                let source = match (status.changed.contains(&path), present(&path)) {
                    (false, _) => FileSource::Commit,
                    (true, true) => FileSource::Modified,
                    (true, false) => continue,
                };
                files.push(PlannedFile { path, source });
            }
            // Deleted in the index or the work tree, and in HEAD: the checkout would bring
            // it back.
            deleted.extend(
                status
                    .changed
                    .iter()
                    .filter(|p| !present(p) && !status.added.contains(*p))
                    .cloned(),
            );
        }
        (TransferMode::FullCopy, _) => {
            let git_dir =
                PathBuf::from(git.run(&root, &["rev-parse", "--absolute-git-dir"])?.trim());
            if git_dir != root.join(".git") {
                return Err(InspectError::LinkedWorktree { root, git_dir });
            }
            collect_full_copy(git, &root, "", &mut files, &mut submodules)?;
        }
    }
    if options.include_untracked && options.from.is_none() {
        files.extend(status.untracked.iter().map(|path| PlannedFile {
            path: path.clone(),
            source: FileSource::Untracked,
        }));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|a, b| a.path == b.path);
    let tool_pins = ToolPin::ALL
        .into_iter()
        .filter(|pin| {
            files
                .binary_search_by(|f| f.path.as_str().cmp(pin.file_name()))
                .is_ok()
        })
        .collect();

    Ok(Inspection {
        path: canonical,
        root,
        head,
        branch,
        origin_url,
        identity,
        mode,
        base,
        from: options.from.clone(),
        guest_branch: options.branch.clone(),
        files,
        deleted,
        submodules,
        untracked: status.untracked.len(),
        skipped_untracked: if options.include_untracked && options.from.is_none() {
            0
        } else {
            status.untracked.len()
        },
        tool_pins,
    })
}

/// The commit HEAD points at in the repository at `root` now (for `vm exec`'s "HEAD moved
/// since prepare" warning).
pub fn current_head(git: &Git, root: &Path) -> Result<String, InspectError> {
    git.query(root, &["rev-parse", "-q", "--verify", "HEAD^{commit}"])?
        .ok_or_else(|| InspectError::NoCommits {
            root: root.to_path_buf(),
        })
}

/// The work tree root enclosing `canonical`, with a typed error for every way it is not one.
fn find_root(git: &Git, given: &Path, canonical: &Path) -> Result<PathBuf, InspectError> {
    let out = git.output(
        canonical,
        &["rev-parse", "--is-bare-repository", "--is-inside-git-dir"],
    )?;
    if !out.success() {
        if out.stderr.contains("not a git repository") {
            return Err(InspectError::NotARepository {
                path: given.to_path_buf(),
            });
        }
        // Any other failure, with git's own words.
        git.run(canonical, &["rev-parse", "--is-bare-repository"])?;
    }
    let mut answers = out.stdout.lines();
    if answers.next() == Some("true") {
        return Err(InspectError::Bare {
            path: given.to_path_buf(),
        });
    }
    if answers.next() == Some("true") {
        return Err(InspectError::InsideGitDir {
            path: given.to_path_buf(),
        });
    }
    let top = git.run(canonical, &["rev-parse", "--show-toplevel"])?;
    Ok(PathBuf::from(top.trim_end_matches('\n')))
}

fn check_branch(git: &Git, root: &Path, name: &str) -> Result<(), InspectError> {
    let bad = || InspectError::BadBranch {
        name: name.to_string(),
    };
    if name.starts_with('-') || name.contains("@{") || name == "HEAD" {
        return Err(bad());
    }
    let out = git.output(root, &["check-ref-format", &format!("refs/heads/{name}")])?;
    if out.success() { Ok(()) } else { Err(bad()) }
}

fn resolve(git: &Git, root: &Path, reference: &str) -> Result<String, InspectError> {
    let unknown = || InspectError::UnknownRef {
        reference: reference.to_string(),
        root: root.to_path_buf(),
    };
    if reference.is_empty() || reference.starts_with('-') {
        return Err(unknown());
    }
    git.query(
        root,
        &[
            "rev-parse",
            "-q",
            "--verify",
            &format!("{reference}^{{commit}}"),
        ],
    )?
    .ok_or_else(unknown)
}

/// The working tree's state against HEAD, from `git status` at the root.
#[derive(Debug, Default)]
struct Status {
    /// Tracked paths that differ from HEAD in the index or the work tree.
    changed: BTreeSet<String>,
    /// Of those, the ones added to the index (not in HEAD).
    added: BTreeSet<String>,
    /// Untracked, non-ignored files (every file, not collapsed directories).
    untracked: Vec<String>,
}

impl Status {
    fn read(git: &Git, root: &Path) -> Result<Self, InspectError> {
        let out = git.run(
            root,
            &[
                "--no-optional-locks",
                "status",
                "--porcelain",
                "-z",
                "--untracked-files=all",
                "--no-renames",
                "--ignore-submodules=all",
            ],
        )?;
        let mut status = Status::default();
        for entry in split_nul(root, &out)? {
            let (Some(xy), Some(path)) = (entry.get(..2), entry.get(3..)) else {
                continue;
            };
            let path = path.to_string();
            match xy {
                "??" => status.untracked.push(path),
                "!!" => {}
                _ => {
                    if xy.starts_with('A') {
                        status.added.insert(path.clone());
                    }
                    status.changed.insert(path);
                }
            }
        }
        Ok(status)
    }
}

/// Files and gitlinks (submodules) of an index or a tree.
#[derive(Debug, Default)]
struct Listing {
    files: Vec<String>,
    gitlinks: Vec<String>,
}

/// `git ls-files -s`: the index's entries (each path once, whatever its stage).
fn ls_files(git: &Git, dir: &Path) -> Result<Listing, InspectError> {
    let out = git.run(dir, &["ls-files", "-s", "-z"])?;
    let mut listing = Listing::default();
    for entry in split_nul(dir, &out)? {
        let Some((meta, path)) = entry.split_once('\t') else {
            continue;
        };
        let list = if meta.starts_with("160000 ") {
            &mut listing.gitlinks
        } else {
            &mut listing.files
        };
        if list.last().map(String::as_str) != Some(path) {
            list.push(path.to_string());
        }
    }
    Ok(listing)
}

/// `git ls-tree -r`: a commit's files.
fn ls_tree(git: &Git, dir: &Path, commit: &str) -> Result<Listing, InspectError> {
    let out = git.run(dir, &["ls-tree", "-r", "-z", "--full-tree", commit])?;
    let mut listing = Listing::default();
    for entry in split_nul(dir, &out)? {
        let Some((meta, path)) = entry.split_once('\t') else {
            continue;
        };
        if meta.split(' ').nth(1) == Some("commit") {
            listing.gitlinks.push(path.to_string());
        } else {
            listing.files.push(path.to_string());
        }
    }
    Ok(listing)
}

/// A full copy's files below `dir` (shown with `prefix`): tracked files present in the work
/// tree, then the same for every initialised submodule.
fn collect_full_copy(
    git: &Git,
    dir: &Path,
    prefix: &str,
    files: &mut Vec<PlannedFile>,
    submodules: &mut Vec<String>,
) -> Result<(), InspectError> {
    let listing = ls_files(git, dir)?;
    for path in listing.files {
        if dir.join(&path).symlink_metadata().is_ok() {
            files.push(PlannedFile {
                path: format!("{prefix}{path}"),
                source: FileSource::Copied,
            });
        }
    }
    for link in listing.gitlinks {
        let sub = dir.join(&link);
        if sub.join(".git").symlink_metadata().is_ok() {
            let shown = format!("{prefix}{link}");
            submodules.push(shown.clone());
            collect_full_copy(git, &sub, &format!("{shown}/"), files, submodules)?;
        }
    }
    Ok(())
}

/// Splits `-z` output into entries; a name git could not give as UTF-8 is an error.
fn split_nul<'a>(root: &Path, out: &'a str) -> Result<Vec<&'a str>, InspectError> {
    let entries: Vec<&str> = out.split('\0').filter(|e| !e.is_empty()).collect();
    if let Some(bad) = entries.iter().find(|e| e.contains('\u{fffd}')) {
        return Err(InspectError::NonUtf8Path {
            root: root.to_path_buf(),
            near: bad.to_string(),
        });
    }
    Ok(entries)
}

/// A path for a terminal line: control characters escaped.
fn shown(path: &str) -> String {
    if path.chars().any(char::is_control) {
        path.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        path.to_string()
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "repository: {}", self.root.display())?;
        if self.path != self.root {
            writeln!(f, "path: {}", self.path.display())?;
        }
        match &self.branch {
            Some(branch) => writeln!(f, "head: {} (branch {})", self.head, shown(branch))?,
            None => writeln!(f, "head: {} (detached)", self.head)?,
        }
        writeln!(
            f,
            "origin: {}",
            self.origin_url
                .as_deref()
                .map(shown)
                .as_deref()
                .unwrap_or("none")
        )?;
        let mode = match self.mode {
            TransferMode::Overlay => "overlay",
            TransferMode::FullCopy => "full copy",
        };
        writeln!(f, "mode: {mode}")?;
        match &self.from {
            Some(from) => writeln!(f, "base: {} (from {})", self.base, shown(from))?,
            None => writeln!(f, "base: {}", self.base)?,
        }
        writeln!(
            f,
            "guest branch: {}",
            self.guest_branch.as_deref().unwrap_or("none")
        )?;
        writeln!(
            f,
            "files: {} ({} from the working tree)",
            self.files.len(),
            self.work_tree_files().count()
        )?;
        for file in &self.files {
            writeln!(f, "{} {}", file.source.tag(), shown(&file.path))?;
        }
        for path in &self.deleted {
            writeln!(f, "D {}", shown(path))?;
        }
        if !self.tool_pins.is_empty() {
            let pins: Vec<&str> = self.tool_pins.iter().map(|p| p.file_name()).collect();
            writeln!(f, "tool pins: {}", pins.join(", "))?;
        }
        match (self.untracked, self.skipped_untracked) {
            (0, _) => writeln!(f, "untracked: none"),
            (n, 0) => writeln!(f, "untracked: {n} shipped"),
            (_, n) => writeln!(
                f,
                "untracked: {n} skipped (include them with --include-untracked)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inspection {
        Inspection {
            path: PathBuf::from("/src/app/sub"),
            root: PathBuf::from("/src/app"),
            head: "a".repeat(40),
            branch: Some("main".into()),
            origin_url: None,
            identity: Identity::default(),
            mode: TransferMode::Overlay,
            base: "a".repeat(40),
            from: None,
            guest_branch: None,
            files: vec![
                PlannedFile {
                    path: "lib.rs".into(),
                    source: FileSource::Commit,
                },
                PlannedFile {
                    path: "new\nline".into(),
                    source: FileSource::Modified,
                },
            ],
            deleted: vec!["old".into()],
            submodules: vec![],
            untracked: 2,
            skipped_untracked: 2,
            tool_pins: vec![],
        }
    }

    #[test]
    fn renders_the_documented_lines() {
        let a = "a".repeat(40);
        assert_eq!(
            sample().to_string(),
            format!(
                "repository: /src/app\npath: /src/app/sub\nhead: {a} (branch main)\n\
                 origin: none\nmode: overlay\nbase: {a}\nguest branch: none\n\
                 files: 2 (1 from the working tree)\n= lib.rs\nM new\\nline\nD old\n\
                 untracked: 2 skipped (include them with --include-untracked)\n"
            )
        );
    }

    #[test]
    fn the_notice_counts_skipped_untracked_files() {
        let mut plan = sample();
        assert_eq!(
            plan.untracked_notice().as_deref(),
            Some("2 untracked files not copied (use --include-untracked)")
        );
        plan.skipped_untracked = 1;
        assert_eq!(
            plan.untracked_notice().as_deref(),
            Some("1 untracked file not copied (use --include-untracked)")
        );
        plan.skipped_untracked = 0;
        assert_eq!(plan.untracked_notice(), None);
    }
}
