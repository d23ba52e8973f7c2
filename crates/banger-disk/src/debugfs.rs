//! Reading and editing ext4 images with `debugfs`, without mounting them (no root needed:
//! the caller owns the image file).
//!
//! - [`Debugfs`] collects edits (mkdir, write, symlink, owner, mode) and applies them in
//!   ONE `debugfs -w -f CMDFILE IMAGE` run (preceded by one read-only lookup when it
//!   creates directories: debugfs's `mkdir` over an existing directory corrupts the
//!   filesystem, so existing ones are skipped).
//! - [`stat`], [`exists`], [`read_file`] and [`list_dir`] read an image. There is no
//!   `rdump`: it resolves the image's names on the host (see [`crate::work`]).
//!
//! # Error detection
//!
//! debugfs exits 0 when its commands fail; it only prints error lines on stderr. To tell
//! which command failed, a batch interleaves marker commands: before the first command
//! and after every operation it runs `stat "/.banger-debugfs-marker/N"`, a path that does
//! not exist, which prints `/.banger-debugfs-marker/N: File not found by ext2_lookup` on
//! stderr. The stderr lines between two markers belong to the operation in between; any
//! line there that the operation does not expect fails the batch with that operation's
//! commands and debugfs's message. Lines before the first marker are errors opening the
//! image. (The batch still runs to the end: debugfs cannot stop at the first error.)
//!
//! Paths are quoted for debugfs's command parser (`"..."`, a `"` doubled), so names with
//! spaces work; paths containing a newline, a carriage return or a NUL cannot be expressed
//! and are refused, and so is a path whose quoted form is longer than [`MAX_WORD`] bytes
//! (the error names the path).
//!
//! # Command files cannot become shell commands
//!
//! debugfs reads a `-f` command file with `fgets` into a `BUFSIZ` (8192-byte) buffer: a
//! longer line is cut and its rest is read as the next command line. Every line (from
//! `-f` or `-R`) goes to libss's `ss_execute_line`, which skips leading blanks and hands
//! a line starting with `!` to `system()`; a line starting with `#` is echoed, not run.
//! libss has a switch for that escape (`ss_data.flags.escape_disabled`, returning
//! `SS_ET_ESCAPE_DISABLED`), but it is internal to libss (`ss_internal.h`), set to 0 by
//! `ss_create_invocation` and never changed by debugfs: no option, environment variable
//! or input mode (`-f FILE`, `-f -`, `-R`) turns it off (checked in e2fsprogs 1.47.0 and
//! its master of March 2026: `lib/ss/execute_cmd.c`, `lib/ss/invocation.c`,
//! `debugfs/debugfs.c` `source_file`). `system()` runs `/bin/sh` by absolute path, so a
//! restricted `PATH`/`SHELL` would not stop it either. The defence is therefore that
//! banger never writes such a line: every command line of every script and request goes
//! through one checker ([`check_line`]) right before debugfs runs. A line must start
//! with one of the few command words banger uses, be at most [`MAX_LINE`] bytes (far
//! below the 8191 bytes `fgets` keeps, so no line is ever split), and contain no newline,
//! carriage return or NUL. A failed check runs nothing.
//!
//! # Temporary files
//!
//! Command files and staged file contents live in a private (0700) temporary directory
//! created under a directory the caller hands in (the daemon's state dir), never in the
//! shared `/tmp`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_core::runner::{CommandOutput, CommandRunner};
use tempfile::TempDir;

use crate::DiskError;

/// The type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this type (`0o100000` for a regular file...), to combine
    /// with permission bits for [`Debugfs::set_mode`].
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::Regular => 0o100000,
            FileKind::Directory => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::CharDevice => 0o020000,
            FileKind::BlockDevice => 0o060000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
        }
    }

    /// The type encoded in a full `i_mode`, if it is a valid one.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 => FileKind::Regular,
            0o040000 => FileKind::Directory,
            0o120000 => FileKind::Symlink,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            _ => return None,
        })
    }

    /// Parses the `Type:` word of debugfs's `stat`.
    fn from_stat_word(word: &str) -> Option<FileKind> {
        Some(match word {
            "regular" => FileKind::Regular,
            "directory" => FileKind::Directory,
            "symlink" => FileKind::Symlink,
            "character" => FileKind::CharDevice,
            "block" => FileKind::BlockDevice,
            "FIFO" => FileKind::Fifo,
            "socket" => FileKind::Socket,
            _ => return None,
        })
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Regular => "regular file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
        })
    }
}

/// What debugfs's `stat` says about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Its type.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`0o4755`), without the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

/// One entry of a directory, from debugfs's `ls -p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name (lossily decoded as UTF-8).
    pub name: String,
    /// Its type.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky, without the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Checks and normalises a path inside an image: absolute, no `.`/`..` components, no
/// character debugfs cannot parse; repeated and trailing slashes are removed.
pub(crate) fn guest_path(path: &str) -> Result<String, DiskError> {
    let bad = |reason: &str| DiskError::invalid("guest path", path, reason);
    if !path.starts_with('/') {
        return Err(bad("must be absolute"));
    }
    check_chars(path).map_err(bad)?;
    let mut out = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(bad("must not contain . or .. components"));
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    check_word("guest path", &out)?;
    Ok(out)
}

fn check_chars(s: &str) -> Result<(), &'static str> {
    if s.contains(['\n', '\r', '\0']) {
        return Err("debugfs cannot handle newlines, carriage returns or NUL bytes");
    }
    Ok(())
}

/// Quotes a word for debugfs's command parser (the `ss` library): inside double quotes
/// only `"` is special, written `""`.
pub(crate) fn quote(word: &str) -> String {
    format!("\"{}\"", word.replace('"', "\"\""))
}

/// `word` quoted for a debugfs command line ([`quote`]), refused when debugfs cannot
/// express it (a newline, carriage return or NUL) or its quoted form is longer than
/// [`MAX_WORD`] bytes; `what` names the word in the error. For callers writing their own
/// commands ([`run_command_file`]).
pub fn quote_checked(what: &'static str, word: &str) -> Result<String, DiskError> {
    check_chars(word).map_err(|reason| DiskError::invalid(what, word, reason))?;
    check_word(what, word)?;
    Ok(quote(word))
}

/// The longest quoted word (a path or symlink target) a command line may hold. Two of
/// them plus a command word stay below [`MAX_LINE`].
pub const MAX_WORD: usize = 3072;

/// The longest command line banger writes for debugfs: far below the 8191 bytes debugfs's
/// `fgets` keeps of a line (see the module docs).
pub const MAX_LINE: usize = 7168;

/// The debugfs commands banger writes; a line must start with one of them.
const COMMANDS: &[&str] = &[
    "stat", "mkdir", "rm", "write", "symlink", "sif", "ls", "cd", "mknod", "dump",
];

/// Refuses a word whose quoted form would make a command line too long.
fn check_word(what: &'static str, word: &str) -> Result<(), DiskError> {
    let quoted = word.len() + word.matches('"').count() + 2;
    if quoted > MAX_WORD {
        return Err(DiskError::invalid(
            what,
            word,
            format!(
                "its quoted form is {quoted} bytes, more than the {MAX_WORD} a debugfs command line can safely hold"
            ),
        ));
    }
    Ok(())
}

/// The one check every debugfs command line goes through right before debugfs runs (see
/// the module docs): a known command word first, at most [`MAX_LINE`] bytes, no newline,
/// carriage return or NUL.
pub fn check_line(line: &str) -> Result<(), DiskError> {
    let bad = |reason: String| DiskError::UnsafeDebugfsLine {
        line: line.chars().take(200).collect(),
        reason,
    };
    if line.len() > MAX_LINE {
        return Err(bad(format!(
            "{} bytes, more than {MAX_LINE} (debugfs would split it)",
            line.len()
        )));
    }
    if line.contains(['\n', '\r', '\0']) {
        return Err(bad("contains a newline, carriage return or NUL".to_string()));
    }
    let word = line.split(' ').next().unwrap_or_default();
    if !COMMANDS.contains(&word)
        || !line[word.len()..].is_empty() && !line[word.len()..].starts_with(' ')
    {
        return Err(bad(
            "does not start with a known debugfs command word (a `!` line would be run by the shell)"
                .to_string(),
        ));
    }
    Ok(())
}

/// Checks every line of `lines` ([`check_line`]) and writes them, one per line, to the
/// file `path` (created, never overwritten, mode 0600).
fn write_command_file(path: &Path, lines: &[String]) -> Result<(), DiskError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for line in lines {
        check_line(line)?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(DiskError::io(path, "create"))?;
    file.write_all(text.as_bytes())
        .map_err(DiskError::io(path, "write"))
}

/// A private (0700) temporary directory under `scratch`, removed when dropped.
pub(crate) fn private_tempdir(scratch: &Path, prefix: &str) -> Result<TempDir, DiskError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(scratch)
        .map_err(DiskError::io(scratch, "create a temporary directory in"))
}

/// Runs the debugfs command file made of `lines` on `image` (`debugfs [-w] -f FILE
/// IMAGE`), after checking every line ([`check_line`]); the file lives in a private
/// temporary directory under `scratch`, removed afterwards. For callers with their own
/// commands (banger-image's `mknod`s): the output is theirs to judge.
pub fn run_command_file(
    runner: &dyn CommandRunner,
    image: &Path,
    lines: &[String],
    writable: bool,
    scratch: &Path,
) -> Result<CommandOutput, DiskError> {
    let dir = private_tempdir(scratch, "banger-debugfs-")?;
    run_command_file_in(runner, image, lines, writable, dir.path())
}

fn run_command_file_in(
    runner: &dyn CommandRunner,
    image: &Path,
    lines: &[String],
    writable: bool,
    dir: &Path,
) -> Result<CommandOutput, DiskError> {
    let cmdfile = dir.join("commands");
    write_command_file(&cmdfile, lines)?;
    let mut args = Vec::new();
    if writable {
        args.push("-w".to_string());
    }
    args.extend([
        "-f".to_string(),
        cmdfile.to_string_lossy().into_owned(),
        image.to_string_lossy().into_owned(),
    ]);
    let out = runner.run("debugfs", &args);
    // The command file is not needed any more; the directory goes with its owner.
    let _ = fs::remove_file(&cmdfile);
    Ok(out?)
}

/// The parent directories of a normalised absolute path, shallowest first, without `/`.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut prefix = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        prefix.push('/');
        prefix.push_str(part);
        out.push(prefix.clone());
    }
    out
}

/// The error debugfs's `rm` prints for a missing file.
const RM_MISSING: &str = "rm: File not found by ext2_lookup while trying to resolve filename";
const MARKER_DIR: &str = "/.banger-debugfs-marker";

/// One step of a batch: debugfs command lines and the error lines (prefixes) it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) lines: Vec<String>,
    pub(crate) tolerated: Vec<&'static str>,
    /// For a `mkdir`: the directory it creates, skipped when it already exists.
    pub(crate) creates_dir: Option<String>,
}

/// A batch of edits applied to an ext4 image in one `debugfs -w` run.
///
/// Methods validate their arguments immediately and return `&mut Self` for chaining
/// with `?`. Nothing touches the image until [`Debugfs::run`].
///
/// ```no_run
/// # fn demo(runner: &dyn banger_core::runner::CommandRunner) -> Result<(), banger_disk::DiskError> {
/// use banger_disk::Debugfs;
/// let mut batch = Debugfs::new(std::path::Path::new("/var/lib/banger/tmp"));
/// batch
///     .mkdir("/etc/banger")?
///     .write_bytes(b"BANGER_IP=172.30.0.5\n", "/etc/banger/network.env")?
///     .set_mode("/etc/banger/network.env", 0o100600)?;
/// batch.run(runner, std::path::Path::new("rootfs.ext4"))?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Debugfs {
    /// Where the private staging directory is created.
    scratch: PathBuf,
    ops: Vec<Op>,
    /// Directories already created by this batch (to make `mkdir` of ancestors once).
    made_dirs: BTreeSet<String>,
    /// Holds files staged by `write_bytes` and the command file.
    staging: Option<TempDir>,
    staged: usize,
}

impl Debugfs {
    /// An empty batch whose staged files and command file will live in a private
    /// temporary directory created under `scratch` (never the shared `/tmp`).
    pub fn new(scratch: &Path) -> Self {
        Debugfs {
            scratch: scratch.to_path_buf(),
            ops: Vec::new(),
            made_dirs: BTreeSet::new(),
            staging: None,
            staged: 0,
        }
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Creates the directory `path` and any missing parents, like `mkdir -p` (mode 0755,
    /// owner 0:0). Existing directories are left alone: [`Debugfs::run`] looks them up
    /// first, because debugfs's `mkdir` over an existing name corrupts the directory tree
    /// (e2fsprogs 1.47.0: "Unconnected directory inode"). An existing non-directory
    /// fails the run before anything is written.
    pub fn mkdir(&mut self, path: &str) -> Result<&mut Self, DiskError> {
        let path = guest_path(path)?;
        let mut dirs = ancestors(&path);
        dirs.push(path);
        for dir in dirs {
            if dir == "/" || !self.made_dirs.insert(dir.clone()) {
                continue;
            }
            self.ops.push(Op {
                lines: vec![format!("mkdir {}", quote(&dir))],
                tolerated: Vec::new(),
                creates_dir: Some(dir),
            });
        }
        Ok(self)
    }

    /// Copies the host file `host_file` to `guest_path`, replacing an existing file or
    /// symlink there. The new inode gets the host file's permission bits and owner 0:0
    /// (debugfs does not copy the host owner). The parent directory must exist (or be
    /// created earlier in the batch with [`Debugfs::mkdir`]).
    pub fn write(&mut self, host_file: &Path, guest_path: &str) -> Result<&mut Self, DiskError> {
        let guest = self::guest_path(guest_path)?;
        let host = std::path::absolute(host_file).map_err(DiskError::io(host_file, "resolve"))?;
        let meta = fs::metadata(&host).map_err(DiskError::io(&host, "stat"))?;
        if !meta.is_file() {
            return Err(DiskError::invalid(
                "host file",
                host.display().to_string(),
                "not a regular file",
            ));
        }
        let host_str = host.to_str().ok_or_else(|| {
            DiskError::invalid("host file", host.display().to_string(), "not valid UTF-8")
        })?;
        check_chars(host_str)
            .map_err(|reason| DiskError::invalid("host file", host_str, reason))?;
        check_word("host file", host_str)?;
        self.push_write(host_str, &guest);
        Ok(self)
    }

    fn push_write(&mut self, host: &str, guest: &str) {
        let q = quote(guest);
        self.ops.push(Op {
            // debugfs's `write` refuses to replace an existing file: remove it first and
            // accept exactly the "not found" error when there was none.
            lines: vec![format!("rm {q}"), format!("write {} {q}", quote(host))],
            tolerated: vec![RM_MISSING],
            creates_dir: None,
        });
    }

    /// Writes `contents` to `guest_path` (mode 0644, owner 0:0), replacing an existing
    /// file or symlink; the bytes are staged in a private temporary directory until
    /// [`Debugfs::run`].
    pub fn write_bytes(
        &mut self,
        contents: &[u8],
        guest_path: &str,
    ) -> Result<&mut Self, DiskError> {
        let guest = self::guest_path(guest_path)?;
        let dir = self.staging_dir()?;
        let staged = dir.join(format!("staged-{}", self.staged));
        self.staged += 1;
        fs::write(&staged, contents).map_err(DiskError::io(&staged, "write"))?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o644))
            .map_err(DiskError::io(&staged, "set the permissions of"))?;
        let host = staged.to_str().ok_or_else(|| {
            DiskError::invalid(
                "staging path",
                staged.display().to_string(),
                "not valid UTF-8",
            )
        })?;
        check_chars(host).map_err(|reason| DiskError::invalid("staging path", host, reason))?;
        check_word("staging path", host)?;
        let host = host.to_string();
        self.push_write(&host, &guest);
        Ok(self)
    }

    /// Creates a symlink at `path` pointing to `target` (stored verbatim, may be
    /// relative), replacing an existing file or symlink there.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, DiskError> {
        let guest = guest_path(path)?;
        if target.is_empty() {
            return Err(DiskError::invalid("symlink target", target, "empty"));
        }
        check_chars(target)
            .map_err(|reason| DiskError::invalid("symlink target", target, reason))?;
        check_word("symlink target", target)?;
        let q = quote(&guest);
        self.ops.push(Op {
            lines: vec![format!("rm {q}"), format!("symlink {q} {}", quote(target))],
            tolerated: vec![RM_MISSING],
            creates_dir: None,
        });
        Ok(self)
    }

    /// Sets the owner and group of `path` (`sif PATH uid N`, `sif PATH gid N`).
    pub fn set_owner(&mut self, path: &str, uid: u32, gid: u32) -> Result<&mut Self, DiskError> {
        let q = quote(&guest_path(path)?);
        self.ops.push(Op {
            lines: vec![format!("sif {q} uid {uid}"), format!("sif {q} gid {gid}")],
            tolerated: Vec::new(),
            creates_dir: None,
        });
        Ok(self)
    }

    /// Sets the full `i_mode` of `path`: type bits AND permission bits, e.g. `0o104755`
    /// for a setuid regular file, `0o040700` for a private directory (see
    /// [`FileKind::type_bits`]). A mode without valid type bits is refused: debugfs would
    /// write it verbatim and break the inode.
    pub fn set_mode(&mut self, path: &str, mode: u32) -> Result<&mut Self, DiskError> {
        let guest = guest_path(path)?;
        if mode > 0o177777 || FileKind::from_mode(mode).is_none() {
            return Err(DiskError::invalid(
                "mode",
                format!("{mode:#o}"),
                "must combine type bits (0o100000, 0o040000...) with permission bits",
            ));
        }
        self.ops.push(Op {
            lines: vec![format!("sif {} mode 0{mode:o}", quote(&guest))],
            tolerated: Vec::new(),
            creates_dir: None,
        });
        Ok(self)
    }

    fn staging_dir(&mut self) -> Result<PathBuf, DiskError> {
        if let Some(dir) = &self.staging {
            return Ok(dir.path().to_path_buf());
        }
        let dir = private_tempdir(&self.scratch, "banger-debugfs-")?;
        let path = dir.path().to_path_buf();
        self.staging = Some(dir);
        Ok(path)
    }

    /// The operations to run once `present` directories are known to exist.
    fn ops_without(&self, present: &BTreeSet<String>) -> Vec<Op> {
        self.ops
            .iter()
            .filter(|op| !op.creates_dir.as_ref().is_some_and(|d| present.contains(d)))
            .cloned()
            .collect()
    }

    /// Applies the batch to `image`: when it creates directories, one read-only
    /// `debugfs -f` run first looks them up (see [`Debugfs::mkdir`]); then every edit
    /// happens in ONE `debugfs -w -f CMDFILE IMAGE` run, whose error output is checked
    /// operation by operation (see the module docs). An empty batch does nothing. The
    /// image must not be changed by anyone else meanwhile.
    pub fn run(&mut self, runner: &dyn CommandRunner, image: &Path) -> Result<(), DiskError> {
        let dirs: Vec<String> = self
            .ops
            .iter()
            .filter_map(|op| op.creates_dir.clone())
            .collect();
        let mut present = BTreeSet::new();
        for (dir, inode) in dirs
            .iter()
            .zip(stat_many(runner, image, &dirs, &self.scratch)?)
        {
            match inode {
                None => {}
                Some(inode) if inode.kind == FileKind::Directory => {
                    present.insert(dir.clone());
                }
                Some(inode) => {
                    return Err(DiskError::WrongType {
                        image: image.to_path_buf(),
                        path: dir.clone(),
                        found: inode.kind,
                        expected: FileKind::Directory,
                    });
                }
            }
        }
        let ops = self.ops_without(&present);
        if ops.is_empty() {
            return Ok(());
        }
        let dir = self.staging_dir()?;
        let out = run_command_file_in(runner, image, &script(&ops), true, &dir)?;
        check_batch(image, &ops, &out)
    }
}

fn marker(i: usize) -> String {
    format!("{MARKER_DIR}/{i}")
}

/// The command lines of a batch, markers interleaved (see the module docs).
fn script(ops: &[Op]) -> Vec<String> {
    let mut s = vec![format!("stat {}", quote(&marker(0)))];
    for (i, op) in ops.iter().enumerate() {
        s.extend(op.lines.iter().cloned());
        s.push(format!("stat {}", quote(&marker(i + 1))));
    }
    s
}

/// The startup banner debugfs prints on stderr (`debugfs 1.47.0 (5-Feb-2023)`).
fn is_banner(line: &str) -> bool {
    line.strip_prefix("debugfs ")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The stderr lines that are not empty and not the banner.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !is_banner(l))
        .collect()
}

/// Splits debugfs's stderr at the markers and checks each operation's lines.
pub(crate) fn check_batch(image: &Path, ops: &[Op], out: &CommandOutput) -> Result<(), DiskError> {
    let fail = |command: String, message: String| DiskError::Debugfs {
        image: image.to_path_buf(),
        command,
        message,
    };
    let mut lines = error_lines(&out.stderr).into_iter();
    let mut segment = |i: usize| -> Option<Vec<&str>> {
        let prefix = format!("{}: ", marker(i));
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            if line.starts_with(&prefix) {
                return Some(seen);
            }
            seen.push(line);
        }
        // The marker never came: debugfs stopped early (or could not open the image).
        None
    };
    match segment(0) {
        Some(seen) if seen.is_empty() => {}
        Some(seen) => return Err(fail("open the image".to_string(), seen.join("; "))),
        None => {
            return Err(fail(
                "open the image".to_string(),
                summary(&error_lines(&out.stderr), out.code),
            ));
        }
    }
    for (i, op) in ops.iter().enumerate() {
        let command = op.lines.join("; ");
        let Some(seen) = segment(i + 1) else {
            return Err(fail(
                command,
                format!(
                    "debugfs stopped before finishing the batch ({})",
                    summary(&error_lines(&out.stderr), out.code)
                ),
            ));
        };
        let unexpected: Vec<&str> = seen
            .into_iter()
            .filter(|line| !op.tolerated.iter().any(|t| line.starts_with(t)))
            .collect();
        if !unexpected.is_empty() {
            return Err(fail(command, unexpected.join("; ")));
        }
    }
    let rest: Vec<&str> = lines.collect();
    if !rest.is_empty() {
        return Err(fail("finish the batch".to_string(), rest.join("; ")));
    }
    if !out.success() {
        return Err(DiskError::command(out));
    }
    Ok(())
}

fn summary(lines: &[&str], code: Option<i32>) -> String {
    let status = match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_string(),
    };
    if lines.is_empty() {
        status
    } else {
        format!("{status}: {}", lines.join("; "))
    }
}

/// Runs one read-only debugfs request (`debugfs -R REQUEST IMAGE`).
fn request(
    runner: &dyn CommandRunner,
    image: &Path,
    request: String,
) -> Result<CommandOutput, DiskError> {
    check_line(&request)?;
    Ok(runner.run(
        "debugfs",
        &[
            "-R".to_string(),
            request,
            image.to_string_lossy().into_owned(),
        ],
    )?)
}

/// Fails when debugfs exited non-zero or printed anything but its banner on stderr.
fn expect_clean(image: &Path, command: &str, out: &CommandOutput) -> Result<(), DiskError> {
    let errors = error_lines(&out.stderr);
    if !errors.is_empty() {
        return Err(DiskError::Debugfs {
            image: image.to_path_buf(),
            command: command.to_string(),
            message: errors.join("; "),
        });
    }
    if !out.success() {
        return Err(DiskError::command(out));
    }
    Ok(())
}

/// Looks up `path` in `image` (`debugfs -R 'stat PATH'`): `None` when it does not exist
/// (or a parent is not a directory).
pub fn stat(
    runner: &dyn CommandRunner,
    image: &Path,
    path: &str,
) -> Result<Option<Inode>, DiskError> {
    let path = guest_path(path)?;
    let command = format!("stat {}", quote(&path));
    let out = request(runner, image, command.clone())?;
    if let [only] = error_lines(&out.stderr).as_slice()
        && is_missing_line(only, &path)
    {
        return Ok(None);
    }
    expect_clean(image, &command, &out)?;
    parse_stat(&out.stdout)
        .map(Some)
        .ok_or_else(|| DiskError::UnexpectedOutput {
            command: out.command.clone(),
            detail: format!(
                "no Type/Mode/User/Group/Size in {:?}",
                first_lines(&out.stdout)
            ),
        })
}

fn first_lines(s: &str) -> String {
    s.lines().take(3).collect::<Vec<_>>().join("\n")
}

/// Parses debugfs's `stat` output:
/// `Inode: 12   Type: regular    Mode:  04755   Flags: 0x80000` and
/// `User:  1000   Group:     0   Project:     0   Size: 6`.
pub(crate) fn parse_stat(stdout: &str) -> Option<Inode> {
    let words: Vec<&str> = stdout
        .lines()
        .take_while(|l| !l.starts_with("File ACL"))
        .flat_map(str::split_whitespace)
        .collect();
    let after = |key: &str| -> Option<&str> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1).copied()
    };
    Some(Inode {
        kind: FileKind::from_stat_word(after("Type:")?)?,
        mode: u32::from_str_radix(after("Mode:")?, 8).ok()?,
        uid: after("User:")?.parse().ok()?,
        gid: after("Group:")?.parse().ok()?,
        size: after("Size:")?.parse().ok()?,
    })
}

/// Whether `path` exists in `image` (any type).
pub fn exists(runner: &dyn CommandRunner, image: &Path, path: &str) -> Result<bool, DiskError> {
    Ok(stat(runner, image, path)?.is_some())
}

/// Reads the regular file `path` from `image`. Binary-safe: the file is dumped to a
/// file in a private temporary directory under `scratch` (`debugfs -R 'dump PATH TMP'`)
/// and read from there. A missing path is [`DiskError::NotFound`]; a directory or
/// symlink is [`DiskError::WrongType`].
pub fn read_file(
    runner: &dyn CommandRunner,
    image: &Path,
    path: &str,
    scratch: &Path,
) -> Result<Vec<u8>, DiskError> {
    let path = guest_path(path)?;
    let inode = stat(runner, image, &path)?.ok_or_else(|| DiskError::NotFound {
        image: image.to_path_buf(),
        path: path.clone(),
    })?;
    expect_kind(image, &path, &inode, FileKind::Regular)?;
    let dir = private_tempdir(scratch, "banger-read-")?;
    let dest = dir.path().join("file");
    let command = format!("dump {} {}", quote(&path), quote(&dest.to_string_lossy()));
    let out = request(runner, image, command.clone())?;
    expect_clean(image, &command, &out)?;
    fs::read(&dest).map_err(DiskError::io(&dest, "read the dumped file"))
}

fn expect_kind(
    image: &Path,
    path: &str,
    inode: &Inode,
    expected: FileKind,
) -> Result<(), DiskError> {
    if inode.kind != expected {
        return Err(DiskError::WrongType {
            image: image.to_path_buf(),
            path: path.to_string(),
            found: inode.kind,
            expected,
        });
    }
    Ok(())
}

/// Lists the directory `dir` of `image` (`debugfs -R 'ls -p DIR'`), without `.` and `..`.
pub fn list_dir(
    runner: &dyn CommandRunner,
    image: &Path,
    dir: &str,
) -> Result<Vec<DirEntry>, DiskError> {
    let dir = guest_path(dir)?;
    let command = format!("ls -p {}", quote(&dir));
    let out = request(runner, image, command.clone())?;
    expect_clean(image, &command, &out)?;
    parse_ls(&out.command, &out.stdout)
}

/// Runs read-only `commands` in one `debugfs -f` run and splits its stdout into one
/// section per command (at the echoed `debugfs: COMMAND` lines). Returns the output too,
/// for the caller to judge stderr.
fn read_batch(
    runner: &dyn CommandRunner,
    image: &Path,
    commands: &[String],
    scratch: &Path,
) -> Result<(CommandOutput, Vec<String>), DiskError> {
    let out = run_command_file(runner, image, commands, false, scratch)?;
    let sections = split_sections(&out.command, commands, &out.stdout)?;
    Ok((out, sections))
}

/// Splits `debugfs -f` stdout at the echoed commands (`debugfs: CMD`, in order).
pub(crate) fn split_sections(
    command: &str,
    commands: &[String],
    stdout: &str,
) -> Result<Vec<String>, DiskError> {
    let mut sections: Vec<String> = Vec::new();
    for line in stdout.lines() {
        if let Some(echoed) = line.strip_prefix("debugfs: ") {
            if commands.get(sections.len()).map(String::as_str) != Some(echoed) {
                return Err(DiskError::UnexpectedOutput {
                    command: command.to_string(),
                    detail: format!("unexpected command echo {line:?}"),
                });
            }
            sections.push(String::new());
            continue;
        }
        let section = sections
            .last_mut()
            .ok_or_else(|| DiskError::UnexpectedOutput {
                command: command.to_string(),
                detail: format!("output {line:?} before the first command"),
            })?;
        section.push_str(line);
        section.push('\n');
    }
    if sections.len() != commands.len() {
        return Err(DiskError::UnexpectedOutput {
            command: command.to_string(),
            detail: format!("{} outputs for {} commands", sections.len(), commands.len()),
        });
    }
    Ok(sections)
}

/// Looks up several paths in one `debugfs -f` run (`None`: missing, or a parent is not a
/// directory).
pub(crate) fn stat_many(
    runner: &dyn CommandRunner,
    image: &Path,
    paths: &[String],
    scratch: &Path,
) -> Result<Vec<Option<Inode>>, DiskError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let paths: Vec<String> = paths
        .iter()
        .map(|p| guest_path(p))
        .collect::<Result<_, _>>()?;
    let commands: Vec<String> = paths.iter().map(|p| format!("stat {}", quote(p))).collect();
    let (out, sections) = read_batch(runner, image, &commands, scratch)?;
    let unexpected: Vec<&str> = error_lines(&out.stderr)
        .into_iter()
        .filter(|line| !paths.iter().any(|p| is_missing_line(line, p)))
        .collect();
    if !unexpected.is_empty() {
        return Err(DiskError::Debugfs {
            image: image.to_path_buf(),
            command: format!("stat of {} paths", paths.len()),
            message: unexpected.join("; "),
        });
    }
    if !out.success() {
        return Err(DiskError::command(&out));
    }
    sections
        .iter()
        .map(|section| {
            if section.trim().is_empty() {
                return Ok(None);
            }
            parse_stat(section)
                .map(Some)
                .ok_or_else(|| DiskError::UnexpectedOutput {
                    command: out.command.clone(),
                    detail: format!("no Type/Mode/User/Group/Size in {:?}", first_lines(section)),
                })
        })
        .collect()
}

/// Whether `line` is debugfs's complaint that `path` does not exist (or that one of its
/// parents is not a directory).
fn is_missing_line(line: &str, path: &str) -> bool {
    line.strip_prefix(path)
        .and_then(|rest| rest.strip_prefix(": "))
        .is_some_and(|reason| {
            reason.starts_with("File not found by ext2_lookup")
                || reason.starts_with("Ext2 inode is not a directory")
        })
}

/// Parses the lines of one `ls -p` output.
fn parse_ls(command: &str, text: &str) -> Result<Vec<DirEntry>, DiskError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| parse_ls_line(l).ok_or_else(|| bad_ls_line(command, l)))
        .filter_map(Result::transpose)
        .collect()
}

fn bad_ls_line(command: &str, line: &str) -> DiskError {
    DiskError::UnexpectedOutput {
        command: command.to_string(),
        detail: format!("cannot parse listing line {line:?} (a name with a newline?)"),
    }
}

/// Parses one `ls -p` line, `/INODE/MODE/UID/GID/NAME/SIZE/` (SIZE empty for
/// directories); `Some(None)` for `.` and `..`, `None` when malformed.
pub(crate) fn parse_ls_line(line: &str) -> Option<Option<DirEntry>> {
    let rest = line.strip_prefix('/')?;
    let mut fields = rest.splitn(5, '/');
    let _inode: u64 = fields.next()?.parse().ok()?;
    let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
    let uid: u32 = fields.next()?.parse().ok()?;
    let gid: u32 = fields.next()?.parse().ok()?;
    // NAME/SIZE/ -- a name cannot contain '/'.
    let tail = fields.next()?;
    let (name, size) = tail.split_once('/')?;
    let size = size.strip_suffix('/')?;
    if !(size.is_empty() || size.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if name == "." || name == ".." {
        return Some(None);
    }
    if name.is_empty() {
        return None;
    }
    Some(Some(DirEntry {
        name: name.to_string(),
        kind: FileKind::from_mode(mode)?,
        mode: mode & 0o7777,
        uid,
        gid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::fake::{FakeRunner, Reply};

    /// stderr of a real `debugfs -w -f` run (e2fsprogs 1.47.0) of a batch built by this
    /// module, where the write's parent directory did not exist.
    const REAL_MISSING_PARENT: &str = "debugfs 1.47.0 (5-Feb-2023)
/.banger-debugfs-marker/0: File not found by ext2_lookup 
rm: File not found by ext2_lookup while trying to resolve filename
/.banger-debugfs-marker/1: File not found by ext2_lookup 
/.banger-debugfs-marker/2: File not found by ext2_lookup 
rm: File not found by ext2_lookup while trying to resolve filename
/nodir: File not found by ext2_lookup while looking up \"/nodir\"
write: File not found by ext2_lookup 
/.banger-debugfs-marker/3: File not found by ext2_lookup 
";

    fn output(code: i32, stderr: &str) -> CommandOutput {
        CommandOutput {
            command: "debugfs -w -f /tmp/x/commands img".to_string(),
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.to_string(),
        }
    }

    fn sample_batch() -> Debugfs {
        let mut b = Debugfs::new(&std::env::temp_dir());
        b.write(Path::new("/etc/hostname"), "/hostname").unwrap();
        b.mkdir("/newdir").unwrap();
        b.write(Path::new("/etc/hostname"), "/nodir/file").unwrap();
        b
    }

    #[test]
    fn script_interleaves_markers_and_quotes_paths() {
        let mut b = Debugfs::new(&std::env::temp_dir());
        b.mkdir("/etc/my dir").unwrap();
        b.set_owner("/etc/my dir", 0, 0).unwrap();
        b.set_mode("/a\"b", 0o104755).unwrap();
        b.symlink("/l", "../t").unwrap();
        assert_eq!(
            script(&b.ops).join("\n") + "\n",
            "stat \"/.banger-debugfs-marker/0\"
mkdir \"/etc\"
stat \"/.banger-debugfs-marker/1\"
mkdir \"/etc/my dir\"
stat \"/.banger-debugfs-marker/2\"
sif \"/etc/my dir\" uid 0
sif \"/etc/my dir\" gid 0
stat \"/.banger-debugfs-marker/3\"
sif \"/a\"\"b\" mode 0104755
stat \"/.banger-debugfs-marker/4\"
rm \"/l\"
symlink \"/l\" \"../t\"
stat \"/.banger-debugfs-marker/5\"
"
        );
    }

    #[test]
    fn mkdir_creates_each_ancestor_once() {
        let mut b = Debugfs::new(&std::env::temp_dir());
        b.mkdir("/etc/systemd/network").unwrap();
        b.mkdir("/etc/banger/").unwrap();
        let mkdirs: Vec<&str> = b.ops.iter().map(|op| op.lines[0].as_str()).collect();
        assert_eq!(
            mkdirs,
            [
                "mkdir \"/etc\"",
                "mkdir \"/etc/systemd\"",
                "mkdir \"/etc/systemd/network\"",
                "mkdir \"/etc/banger\""
            ]
        );
    }

    #[test]
    fn tolerated_lines_pass_and_the_failing_operation_is_named() {
        let b = sample_batch();
        let err =
            check_batch(Path::new("img"), &b.ops, &output(0, REAL_MISSING_PARENT)).unwrap_err();
        match &err {
            DiskError::Debugfs {
                image,
                command,
                message,
            } => {
                assert_eq!(image, Path::new("img"));
                assert_eq!(
                    command,
                    "rm \"/nodir/file\"; write \"/etc/hostname\" \"/nodir/file\""
                );
                assert_eq!(
                    message,
                    "/nodir: File not found by ext2_lookup while looking up \"/nodir\"; \
                     write: File not found by ext2_lookup"
                );
                assert!(!message.contains("trying to resolve filename"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("debugfs on img: `rm"), "{err}");
    }

    #[test]
    fn a_clean_run_passes() {
        let b = sample_batch();
        let clean = "debugfs 1.47.0 (5-Feb-2023)
/.banger-debugfs-marker/0: File not found by ext2_lookup 
/.banger-debugfs-marker/1: File not found by ext2_lookup 
/.banger-debugfs-marker/2: File not found by ext2_lookup 
/.banger-debugfs-marker/3: File not found by ext2_lookup 
";
        check_batch(Path::new("img"), &b.ops, &output(0, clean)).unwrap();
        // A non-zero exit still fails.
        assert!(matches!(
            check_batch(Path::new("img"), &b.ops, &output(1, clean)),
            Err(DiskError::Command { .. })
        ));
    }

    #[test]
    fn open_failure_is_reported() {
        // Real stderr of `debugfs -w -f CMDS` on a file that is not ext4.
        let stderr = "debugfs 1.47.0 (5-Feb-2023)
debugfs: Attempt to read block from filesystem resulted in short read while trying to open notfs
stat: Filesystem not open
mkdir: Filesystem not open
";
        let b = sample_batch();
        let err = check_batch(Path::new("notfs"), &b.ops, &output(0, stderr)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("open the image"), "{text}");
        assert!(
            text.contains("short read while trying to open notfs"),
            "{text}"
        );
    }

    #[test]
    fn missing_markers_mean_debugfs_stopped() {
        let b = sample_batch();
        let stderr = "debugfs 1.47.0 (5-Feb-2023)
/.banger-debugfs-marker/0: File not found by ext2_lookup 
";
        let err = check_batch(Path::new("img"), &b.ops, &output(0, stderr)).unwrap_err();
        assert!(
            err.to_string().contains("stopped before finishing"),
            "{err}"
        );
    }

    #[test]
    fn existing_directories_are_not_made_again() {
        let mut b = sample_batch();
        b.mkdir("/etc/banger").unwrap();
        let present: BTreeSet<String> = ["/newdir".to_string(), "/etc".to_string()].into();
        let ops = b.ops_without(&present);
        let firsts: Vec<&str> = ops.iter().map(|op| op.lines[0].as_str()).collect();
        assert_eq!(
            firsts,
            [
                "rm \"/hostname\"",
                "rm \"/nodir/file\"",
                "mkdir \"/etc/banger\""
            ]
        );
    }

    #[test]
    fn invalid_arguments_are_refused_early() {
        let mut b = Debugfs::new(&std::env::temp_dir());
        assert!(matches!(
            b.mkdir("relative"),
            Err(DiskError::Invalid { .. })
        ));
        assert!(matches!(b.mkdir("/a/../b"), Err(DiskError::Invalid { .. })));
        assert!(matches!(
            b.write_bytes(b"x", "/a\nb"),
            Err(DiskError::Invalid { .. })
        ));
        assert!(matches!(
            b.set_mode("/a", 0o755),
            Err(DiskError::Invalid { .. })
        ));
        assert!(matches!(
            b.symlink("/a", ""),
            Err(DiskError::Invalid { .. })
        ));
        assert!(matches!(
            b.write(Path::new("/definitely/not/here"), "/x"),
            Err(DiskError::Io { .. })
        ));
        assert!(b.is_empty());
        assert_eq!(guest_path("//etc///x/").unwrap(), "/etc/x");
        assert_eq!(guest_path("/").unwrap(), "/");
    }

    #[test]
    fn write_bytes_stages_a_0644_file() {
        let mut b = Debugfs::new(&std::env::temp_dir());
        b.write_bytes(b"hello\n", "/etc/hostname").unwrap();
        let line = &b.ops[0].lines[1];
        let staged = line
            .strip_prefix("write \"")
            .and_then(|r| r.split_once('"'))
            .map(|(p, _)| PathBuf::from(p))
            .unwrap();
        assert_eq!(fs::read(&staged).unwrap(), b"hello\n");
        assert_eq!(
            fs::metadata(&staged).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(line.ends_with(" \"/etc/hostname\""), "{line}");
    }

    #[test]
    fn empty_batch_runs_nothing() {
        let runner = FakeRunner::new();
        Debugfs::new(&std::env::temp_dir())
            .run(&runner, Path::new("img"))
            .unwrap();
        assert!(runner.calls().is_empty());
    }

    const REAL_STAT: &str = "Inode: 12   Type: regular    Mode:  04755   Flags: 0x80000
Generation: 0    Version: 0x00000000:00000000
User:  1000   Group:     0   Project:     0   Size: 6
File ACL: 0
Links: 1   Blockcount: 2
Fragment:  Address: 0    Number: 0    Size: 0
";

    #[test]
    fn parses_stat() {
        assert_eq!(
            parse_stat(REAL_STAT),
            Some(Inode {
                kind: FileKind::Regular,
                mode: 0o4755,
                uid: 1000,
                gid: 0,
                size: 6
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn stat_through_the_runner() {
        let runner = FakeRunner::new();
        runner.on(
            "debugfs -R 'stat \"/a.txt\"' /img",
            Reply::Ok(REAL_STAT.to_string()),
        );
        runner.on(
            "debugfs -R 'stat \"/nope\"' /img",
            Reply::Fail(
                0,
                "debugfs 1.47.0 (5-Feb-2023)\n/nope: File not found by ext2_lookup \n".to_string(),
            ),
        );
        runner.on(
            "debugfs -R 'stat \"/x\"' /bad",
            Reply::Fail(
                0,
                "debugfs 1.47.0 (5-Feb-2023)\ndebugfs: No such file or directory while trying to open /bad\nstat: Filesystem not open\n"
                    .to_string(),
            ),
        );
        let img = Path::new("/img");
        assert_eq!(stat(&runner, img, "/a.txt").unwrap().unwrap().mode, 0o4755);
        assert!(stat(&runner, img, "/nope").unwrap().is_none());
        assert!(!exists(&runner, img, "/nope").unwrap());
        let err = stat(&runner, Path::new("/bad"), "/x").unwrap_err();
        assert!(
            err.to_string().contains("while trying to open /bad"),
            "{err}"
        );
        let err = read_file(&runner, img, "/nope", &std::env::temp_dir()).unwrap_err();
        assert!(matches!(err, DiskError::NotFound { .. }), "{err}");
    }

    #[test]
    fn parses_ls_lines() {
        assert_eq!(parse_ls_line("/2/040755/0/0/.//"), Some(None));
        assert_eq!(
            parse_ls_line("/12/104755/1000/0/a.txt/6/"),
            Some(Some(DirEntry {
                name: "a.txt".into(),
                kind: FileKind::Regular,
                mode: 0o4755,
                uid: 1000,
                gid: 0
            }))
        );
        assert_eq!(
            parse_ls_line("/18/100644/0/0/with space/5/")
                .unwrap()
                .unwrap()
                .name,
            "with space"
        );
        assert_eq!(
            parse_ls_line("/14/040755/0/0/sub//").unwrap().unwrap().kind,
            FileKind::Directory
        );
        assert_eq!(parse_ls_line("continued name/5/"), None);
    }

    #[test]
    fn splits_a_read_batch_into_sections() {
        let commands = vec![
            "ls -p \"/\"".to_string(),
            "ls -p \"/sub\"".to_string(),
            "stat \"/nope\"".to_string(),
        ];
        // Real stdout of `debugfs -f` with these commands.
        let stdout = "debugfs: ls -p \"/\"
/2/040755/0/0/.//
/2/040755/0/0/..//
/11/040700/0/0/lost+found//
/13/120777/0/0/link/5/
/14/040755/0/0/sub//

debugfs: ls -p \"/sub\"
/14/040755/0/0/.//
/2/040755/0/0/..//
/20/100644/0/0/fromuid1000/6/
debugfs: stat \"/nope\"
";
        let sections = split_sections("cmd", &commands, stdout).unwrap();
        assert_eq!(sections.len(), 3);
        let root = parse_ls("cmd", &sections[0]).unwrap();
        let names: Vec<&str> = root.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["lost+found", "link", "sub"]);
        assert_eq!(
            parse_ls("cmd", &sections[1]).unwrap()[0].name,
            "fromuid1000"
        );
        assert!(sections[2].is_empty());
        assert!(split_sections("cmd", &commands[..1], stdout).is_err());
        assert!(parse_ls("cmd", "broken\n").is_err());
    }

    #[test]
    fn missing_lines_are_recognised() {
        assert!(is_missing_line(
            "/nope: File not found by ext2_lookup ",
            "/nope"
        ));
        assert!(is_missing_line(
            "/a.txt/x: Ext2 inode is not a directory ",
            "/a.txt/x"
        ));
        assert!(!is_missing_line(
            "/nope: File not found by ext2_lookup ",
            "/no"
        ));
        assert!(!is_missing_line("stat: Filesystem not open", "/nope"));
    }

    #[test]
    fn adversarial_lines_that_could_reach_the_shell_are_refused() {
        for line in [
            "!touch /tmp/pwned",
            " !touch /tmp/pwned",
            "\t!id",
            "#comment",
            "",
            "statx \"/a\"",
            "stat \"/a\"\n!id",
            "stat \"/a\"\r!id",
            "stat \"/a\0\"",
            "\u{1b}[2Jstat \"/a\"",
        ] {
            let err = check_line(line).unwrap_err();
            assert!(
                matches!(err, DiskError::UnsafeDebugfsLine { .. }),
                "{line:?}: {err}"
            );
        }
        // Long enough that debugfs's 8191-byte fgets would split it at a `!`.
        let long = format!("stat \"{}!touch /tmp/pwned\"", "x".repeat(8191 - 6));
        let err = check_line(&long).unwrap_err().to_string();
        assert!(err.contains("debugfs would split it"), "{err}");
        check_line(&format!("stat {}", quote(&"x".repeat(MAX_LINE - 7)))).unwrap();
        check_line("sif \"/a b\" mode 0100644").unwrap();
    }

    #[test]
    fn adversarial_a_path_of_quotes_is_refused_with_its_path() {
        // 3000 quotes double to 6000 bytes: over MAX_WORD, refused before any line exists.
        let path = format!("/{}!id", "\"".repeat(3000));
        let mut b = Debugfs::new(&std::env::temp_dir());
        let err = b.set_owner(&path, 0, 0).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("quoted form is 6006 bytes"), "{text}");
        assert!(text.contains("!id"), "the path is named: {text}");
        assert!(b.set_mode(&path, 0o100644).is_err());
        assert!(b.symlink("/l", &path).is_err());
        assert!(b.is_empty());
        // Just below the bound is fine.
        let ok = format!("/{}", "\"".repeat((MAX_WORD - 3) / 2));
        b.set_owner(&ok, 0, 0).unwrap();
        for line in script(&b.ops) {
            check_line(&line).unwrap();
        }
    }

    #[test]
    fn adversarial_a_bad_line_runs_nothing_and_leaves_nothing() {
        let scratch = tempfile::tempdir().unwrap();
        let runner = FakeRunner::new();
        let lines = vec!["stat \"/a\"".to_string(), "!touch /tmp/pwned".to_string()];
        let err =
            run_command_file(&runner, Path::new("img"), &lines, true, scratch.path()).unwrap_err();
        assert!(err.to_string().contains("!touch"), "{err}");
        assert!(runner.calls().is_empty());
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);
    }

    #[test]
    fn temporary_files_go_under_the_scratch_dir() {
        let scratch = tempfile::tempdir().unwrap();
        let runner = FakeRunner::new();
        let out = run_command_file(
            &runner,
            Path::new("img"),
            &["stat \"/a\"".to_string()],
            false,
            scratch.path(),
        )
        .unwrap();
        let call = &runner.calls()[0];
        assert!(
            call.contains(&scratch.path().display().to_string()),
            "{call}"
        );
        assert!(out.command.starts_with("debugfs -f "), "{}", out.command);
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);
        let mut b = Debugfs::new(scratch.path());
        b.write_bytes(b"x", "/f").unwrap();
        let staged: Vec<_> = fs::read_dir(scratch.path()).unwrap().collect();
        assert_eq!(staged.len(), 1);
        let meta = staged[0].as_ref().unwrap().metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        drop(b);
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);
    }
}
