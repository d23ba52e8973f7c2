//! Host integration, applied on every VM start (create and `vm start`) before the VMM runs:
//! files of the owner's home written into the VM's work disk (the guest's `/root`) with one
//! debugfs batch, so no exec, sshd or running guest is needed.
//!
//! - **Git identity**: the host's global `user.name` and `user.email` (`git config --global
//!   --includes --get`, run with `HOME` set to the owner's home and `XDG_CONFIG_HOME` and
//!   `GIT_CONFIG_GLOBAL` unset, so `~/.gitconfig` and `~/.config/git/config` are read) go
//!   into the guest's `/root/.gitconfig`, mode 0644. banger owns the `name` and `email` keys
//!   of its `[user]` section only: every other line of an existing guest file is kept.
//! - **Agent auth files** ([`AUTH_FILES`]), each copied to the same path under `/root`,
//!   mode 0600: a file that is not a regular file, larger than [`MAX_AUTH_FILE`] or
//!   resolving (through a symlink) outside the home is skipped with a warning stage, the
//!   absent ones are named together in one warning stage (most hosts have one agent, not
//!   five), and an existing guest copy is then kept.
//! - **Config `file_sync`** ([`FileSync`]): more host files, each to its guest path under
//!   `/root`, with the host file's permission bits. An entry outside the home (an absolute
//!   path, `..`, a symlink resolving outside), not a regular file or larger than
//!   [`MAX_SYNC_FILE`] fails the start with an error naming the entry, before anything is
//!   written; an absent host file is a warning, like an auth file.
//!
//! Every file is owned by root (0:0); missing parent directories are made (0755, 0:0).
//! Host files are read once, through a descriptor opened without following a final
//! symlink, after the path was resolved and checked to be inside the home.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_core::config::{FileSync, FileSyncError, GUEST_WORK_ROOT};
use banger_core::runner::CommandRunner;
use banger_disk::OwnedFile;
use banger_store::VmRow;

use crate::error::OpError;
use crate::progress::Progress;
use crate::state::AppState;

/// The largest agent auth file copied.
pub const MAX_AUTH_FILE: u64 = 1 << 20;
/// The largest `file_sync` file copied.
pub const MAX_SYNC_FILE: u64 = 16 << 20;

/// The agent auth files copied on every start: the agent, and the path relative to the
/// home (the same path relative to the guest's `/root`).
pub const AUTH_FILES: &[(&str, &str)] = &[
    ("opencode", ".local/share/opencode/auth.json"),
    ("claude", ".claude/.credentials.json"),
    ("claude", ".claude.json"),
    ("codex", ".codex/auth.json"),
    ("pi", ".pi/agent/auth.json"),
];

/// The guest's git config, in the work disk.
const GITCONFIG: &str = "/.gitconfig";

/// The host's global git identity; either part may be unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: Option<String>,
    pub email: Option<String>,
}

impl Identity {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none()
    }
}

/// What a start writes, read from the host before the work disk is touched.
#[derive(Debug, Default)]
struct Plan {
    identity: Identity,
    files: Vec<OwnedFile>,
    /// What was found, for the stage line (`opencode auth`, `~/.npmrc`).
    found: Vec<String>,
    warnings: Vec<String>,
}

/// Applies host integration to `row`'s work disk (see the module docs), reporting a `host
/// files` stage per warning and one summary. The VMM must not run.
pub(super) async fn apply(
    state: &Arc<AppState>,
    row: &VmRow,
    progress: &Progress,
) -> Result<(), OpError> {
    let Some(home) = state.opts.home.clone() else {
        if let Some(entry) = state.opts.config.file_sync.first() {
            return Err(OpError::FileSync {
                vm: row.name.clone(),
                source: FileSyncError {
                    host: entry.host.clone(),
                    guest: entry.guest.clone(),
                    why: "the daemon knows no home directory to read it from".into(),
                },
            });
        }
        progress.stage(
            "host files",
            "warning: the daemon knows no home directory; git identity and agent auth files skipped",
        );
        return Ok(());
    };
    let spec = state.spec(row)?;
    let runner = state.host.runner.clone();
    let sync = state.opts.config.file_sync.clone();
    let scratch = state.scratch_dir();
    let vm = row.name.clone();
    let plan = tokio::task::spawn_blocking(move || plan(runner.as_ref(), &home, &sync))
        .await
        .map_err(|e| OpError::Join(e.to_string()))?
        .map_err(|source| OpError::FileSync {
            vm: vm.clone(),
            source,
        })?;
    for w in &plan.warnings {
        progress.stage("host files", format!("warning: {w}"));
    }
    let runner = state.host.runner.clone();
    let Plan {
        identity,
        mut files,
        found,
        ..
    } = plan;
    tokio::task::spawn_blocking(move || -> Result<(), banger_disk::DiskError> {
        if !identity.is_empty() {
            let existing = banger_disk::read_optional_file(
                runner.as_ref(),
                &spec.work_disk,
                GITCONFIG,
                &scratch,
            )?
            .unwrap_or_default();
            let merged = merge_gitconfig(&String::from_utf8_lossy(&existing), &identity);
            files.insert(
                0,
                OwnedFile {
                    path: GITCONFIG.into(),
                    contents: merged.into_bytes(),
                    mode: 0o644,
                },
            );
        }
        banger_disk::write_private_files(runner.as_ref(), &spec.work_disk, &files, &scratch)
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(|source| OpError::Disk {
        vm: row.name.clone(),
        source: Box::new(source),
    })?;
    progress.stage(
        "host files",
        if found.is_empty() {
            "nothing to copy".to_string()
        } else {
            found.join(", ")
        },
    );
    Ok(())
}

/// Reads everything a start writes from the host. Only a `file_sync` entry fails it.
fn plan(runner: &dyn CommandRunner, home: &Path, sync: &[FileSync]) -> Result<Plan, FileSyncError> {
    let mut plan = Plan::default();
    for (key, slot) in [
        ("user.name", &mut plan.identity.name),
        ("user.email", &mut plan.identity.email),
    ] {
        match git_global(runner, home, key) {
            Ok(value) => *slot = value,
            Err(why) => plan
                .warnings
                .push(format!("cannot read the host's git {key}: {why}")),
        }
    }
    if plan.identity.is_empty() {
        plan.warnings.push(
            "the host has no global git user.name or user.email; the guest's /root/.gitconfig is kept"
                .into(),
        );
    } else {
        plan.found.push("git identity".into());
    }
    let mut absent = Vec::new();
    for (agent, rel) in AUTH_FILES {
        let entry = FileSync {
            host: format!("~/{rel}"),
            guest: format!("{GUEST_WORK_ROOT}/{rel}"),
        };
        let read = entry
            .resolve(home)
            .map_err(|e| e.why)
            .and_then(|real| real.map(|p| read_regular(&p, MAX_AUTH_FILE)).transpose());
        match read {
            Ok(Some((contents, _))) => {
                plan.files.push(OwnedFile {
                    path: format!("/{rel}"),
                    contents,
                    mode: 0o600,
                });
                plan.found.push(format!("{agent} ~/{rel}"));
            }
            Ok(None) => absent.push(format!("{agent} ~/{rel}")),
            Err(why) => plan.warnings.push(format!(
                "{agent}: ~/{rel} skipped ({why}); the guest's copy, if any, is kept"
            )),
        }
    }
    // One line for every absent auth file: most hosts have one agent, not five.
    if !absent.is_empty() {
        plan.warnings.push(format!(
            "not found, the guest's copies (if any) kept: {}",
            absent.join(", ")
        ));
    }
    for entry in sync {
        let path = entry.work_disk_path()?;
        let fail = |why: String| FileSyncError {
            host: entry.host.clone(),
            guest: entry.guest.clone(),
            why,
        };
        match entry.resolve(home)? {
            None => plan.warnings.push(format!(
                "file_sync: {} not found; the guest's {}, if any, is kept",
                entry.host, entry.guest
            )),
            Some(real) => {
                let (contents, mode) = read_regular(&real, MAX_SYNC_FILE).map_err(fail)?;
                plan.files.push(OwnedFile {
                    path,
                    contents,
                    mode: mode & 0o777,
                });
                plan.found.push(entry.host.clone());
            }
        }
    }
    Ok(plan)
}

/// `git config --global --includes --get KEY` with `HOME` set to `home`: `None` when unset.
fn git_global(
    runner: &dyn CommandRunner,
    home: &Path,
    key: &str,
) -> Result<Option<String>, String> {
    let args: Vec<String> = [
        "-u",
        "XDG_CONFIG_HOME",
        "-u",
        "GIT_CONFIG_GLOBAL",
        &format!("HOME={}", home.display()),
        "git",
        "config",
        "--global",
        "--includes",
        "--get",
        key,
    ]
    .map(String::from)
    .to_vec();
    let out = runner
        .run("env", &args)
        .map_err(|e| banger_core::error::chain(&e))?;
    match out.code {
        Some(0) => {
            let value = out.stdout.trim_end_matches(['\n', '\r']).to_string();
            Ok((!value.is_empty()).then_some(value))
        }
        // git's "the key is not set".
        Some(1) => Ok(None),
        _ => Err(format!("`{}` failed: {}", out.command, out.stderr.trim())),
    }
}

/// Reads the regular file `path` (already resolved) through a descriptor opened without
/// following a symlink and without blocking on a FIFO: its bytes and permission bits.
fn read_regular(path: &PathBuf, cap: u64) -> Result<(Vec<u8>, u32), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > cap {
        return Err(format!(
            "{} is {} bytes, more than the {cap} copied",
            path.display(),
            meta.len()
        ));
    }
    let mut contents = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut contents)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if contents.len() as u64 > cap {
        return Err(format!(
            "{} grew past the {cap} bytes copied",
            path.display()
        ));
    }
    Ok((contents, meta.mode() & 0o777))
}

/// A git config value, double-quoted: `\`, `"`, newlines and tabs escaped.
fn quote_value(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `line` is a section header, and whether that section is `[user]` (not a
/// `[user "sub"]` subsection).
fn section_header(line: &str) -> Option<bool> {
    let t = line.trim();
    let inner = t.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim().eq_ignore_ascii_case("user"))
}

/// The key of a `key = value` (or bare `key`) line, lowercased.
fn key_of(line: &str) -> String {
    line.trim()
        .split(|c: char| c == '=' || c.is_whitespace())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// `existing` (a guest's `.gitconfig`) with `identity` as its `[user]` name and email:
/// banger's keys replace the old ones in every `[user]` section, are written at the top of
/// the first one (or a new one at the end), and every other line is kept. Idempotent.
pub fn merge_gitconfig(existing: &str, identity: &Identity) -> String {
    let ours: Vec<String> = [("name", &identity.name), ("email", &identity.email)]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("\t{k} = {}", quote_value(v))))
        .collect();
    let replaced = |key: &str| match key {
        "name" => identity.name.is_some(),
        "email" => identity.email.is_some(),
        _ => false,
    };
    let mut out = String::new();
    let (mut in_user, mut placed) = (false, false);
    for line in existing.lines() {
        if let Some(is_user) = section_header(line) {
            in_user = is_user;
            out.push_str(line);
            out.push('\n');
            if is_user && !placed {
                for l in &ours {
                    out.push_str(l);
                    out.push('\n');
                }
                placed = true;
            }
            continue;
        }
        if in_user && replaced(&key_of(line)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str("[user]\n");
        for l in &ours {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: Option<&str>, email: Option<&str>) -> Identity {
        Identity {
            name: name.map(String::from),
            email: email.map(String::from),
        }
    }

    #[test]
    fn gitconfig_gets_a_user_section_when_it_has_none() {
        let both = id(Some("Ada Lovelace"), Some("ada@example.org"));
        assert_eq!(
            merge_gitconfig("", &both),
            "[user]\n\tname = \"Ada Lovelace\"\n\temail = \"ada@example.org\"\n"
        );
        assert_eq!(
            merge_gitconfig("[core]\n\teditor = vim", &id(None, Some("a@b"))),
            "[core]\n\teditor = vim\n[user]\n\temail = \"a@b\"\n"
        );
    }

    #[test]
    fn gitconfig_keeps_other_lines_and_replaces_only_name_and_email() {
        let existing = "# mine\n[core]\n\teditor = vim\n[User]\n\tname = Old\n\tsigningkey = K\n\
                        \tEMAIL=old@x\n[user \"sub\"]\n\tname = kept\n[alias]\n\tco = checkout\n";
        let merged = merge_gitconfig(existing, &id(Some("New \"N\" \\ x"), Some("new@x")));
        assert_eq!(
            merged,
            "# mine\n[core]\n\teditor = vim\n[User]\n\tname = \"New \\\"N\\\" \\\\ x\"\n\
             \temail = \"new@x\"\n\tsigningkey = K\n[user \"sub\"]\n\tname = kept\n\
             [alias]\n\tco = checkout\n"
        );
        assert_eq!(
            merge_gitconfig(&merged, &id(Some("New \"N\" \\ x"), Some("new@x"))),
            merged
        );
        // Only the email known: the guest's name stays.
        assert_eq!(
            merge_gitconfig(
                "[user]\n\tname = Guest\n\temail = g@x\n",
                &id(None, Some("h@x"))
            ),
            "[user]\n\temail = \"h@x\"\n\tname = Guest\n"
        );
    }

    #[test]
    fn git_values_are_quoted() {
        assert_eq!(quote_value("a\tb\nc"), "\"a\\tb\\nc\"");
        assert_eq!(quote_value("x # y ; z"), "\"x # y ; z\"");
    }

    #[test]
    fn read_regular_refuses_what_is_not_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap().0, b"12345");
        assert!(read_regular(&f, 4).unwrap_err().contains("more than the 4"));
        assert!(
            read_regular(&dir.path().to_path_buf(), 5)
                .unwrap_err()
                .contains("not a regular file")
        );
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_regular(&link, 5).is_err(), "a symlink is not followed");
        let fifo = dir.path().join("p");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            read_regular(&fifo, 5)
                .unwrap_err()
                .contains("not a regular file")
        );
    }

    #[test]
    fn auth_files_are_all_under_the_home() {
        for (_, rel) in AUTH_FILES {
            let e = FileSync {
                host: format!("~/{rel}"),
                guest: format!("/root/{rel}"),
            };
            assert_eq!(
                e.host_in(Path::new("/h")).unwrap(),
                Path::new("/h").join(rel)
            );
            assert_eq!(e.work_disk_path().unwrap(), format!("/{rel}"));
        }
    }
}
