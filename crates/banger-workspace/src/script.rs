//! The guest's side, as `/bin/sh` scripts banger generates (every value quoted with
//! [`banger_core::quote::shell_word`]) and runs in the guest as root, through the agent's
//! exec or any shell. They need `sh`, `git`, `tar` (GNU or busybox), `ls`, `grep`, `cp`,
//! `mktemp`, `wc` and `cat`.
//!
//! # Prepare ([`prepare_script`])
//!
//! Reads the [`crate::stream`] tar on **stdin** and builds the checkout at the guest path:
//!
//! 1. refuses a guest path that exists and is not empty (exit 3), unless told to replace
//!    it (then it is removed first);
//! 2. unpacks the stream there with `tar -x -o -m` (files owned by the extracting user:
//!    root; modification times the guest's now, so a guest clock a little behind the host's
//!    neither warns about files "in the future" nor confuses `make`);
//! 3. checks the base commit arrived (exit 4 otherwise);
//! 4. points HEAD at the base: on the guest-only branch (`--branch`), else on the host's
//!    branch name, else detached; and records the base as `refs/banger/base` (the default
//!    base of an export);
//! 5. overlay: `git read-tree BASE`, drops from that index the paths the stream's skip list
//!    names (the overlay's files and the deleted ones), `git checkout-index -a` writes the
//!    rest, then `git reset -q` makes the index the base commit's, refreshed: the host's
//!    changes show as unstaged changes. Full copy: with `--from`, `git checkout -f --recurse-submodules -B NAME BASE`;
//!    then the index (the host's) is refreshed;
//! 6. adds the guest path to the global `safe.directory` list (once);
//! 7. sets the repository's own `user.name` / `user.email` when the host repository has them.
//!
//! # Export ([`export_script`])
//!
//! Writes to **stdout**, in the framing [`crate::export`] reads, the binary patch of the
//! work tree against the base (`refs/banger/base`, or a commit given): committed and
//! uncommitted work, added, deleted, renamed, mode-changed and binary files. It never
//! touches the guest's index or work tree: it copies the index to a temporary file and runs
//! `git add -A` and `git diff --cached` with `GIT_INDEX_FILE` pointing at the copy (new
//! blobs land in the object store, nothing else changes). Exit 5 when the guest path holds
//! no repository, 4 when the base does not resolve; nothing on stdout on any failure.

use banger_core::quote::shell_word as q;

use crate::inspect::{Inspection, TransferMode};
use crate::stream::SKIP_LIST;

/// Where workspaces go in the guest unless told otherwise.
pub const DEFAULT_GUEST_PATH: &str = "/root/repo";

/// The ref the prepare script records the base commit under.
pub const BASE_REF: &str = "refs/banger/base";

/// Exit status of a script refusing a non-empty guest path.
pub const EXIT_NOT_EMPTY: i32 = 3;
/// Exit status of a script whose base commit is missing or does not resolve.
pub const EXIT_NO_BASE: i32 = 4;
/// Exit status of an export where the guest path holds no repository.
pub const EXIT_NO_WORKSPACE: i32 = 5;

/// A script's inputs are not usable.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The guest path is not an absolute path at least two levels down.
    #[error("guest path {0:?} is not an absolute path at least two levels down (like /root/repo)")]
    GuestPath(String),
    /// A base commit that git would read as an option, or empty.
    #[error("{0:?} is not a commit name")]
    Base(String),
}

fn check_guest_path(path: &str) -> Result<(), ScriptError> {
    // Two levels at least: a replace removes the path, and `/root` is the work disk.
    let levels = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .count();
    if !path.starts_with('/')
        || levels < 2
        || path.chars().any(char::is_control)
        || path.split('/').any(|part| part == "..")
    {
        return Err(ScriptError::GuestPath(path.to_string()));
    }
    Ok(())
}

/// How the prepare script treats an existing guest path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse a guest path that exists and is not empty (exit 3).
    #[default]
    Refuse,
    /// Remove it first (a re-prepare: the guest's work there is lost).
    Replace,
}

/// The prepare script for `plan`, unpacking stdin into `guest_path`.
pub fn prepare_script(
    plan: &Inspection,
    guest_path: &str,
    existing: Existing,
) -> Result<String, ScriptError> {
    check_guest_path(guest_path)?;
    let mut s = String::new();
    let mut line = |text: &str| {
        s.push_str(text);
        s.push('\n');
    };
    line("set -eu");
    line(&format!("dest={}", q(guest_path)));
    line(&format!("base={}", q(&plan.base)));
    if existing == Existing::Replace {
        line(r#"rm -rf -- "$dest""#);
    }
    line(&format!(
        r#"if [ -e "$dest" ] && [ -n "$(ls -A -- "$dest")" ]; then echo "banger: $dest exists and is not empty" >&2; exit {EXIT_NOT_EMPTY}; fi"#
    ));
    line(r#"mkdir -p -- "$dest""#);
    line(r#"cd -- "$dest""#);
    line("tar -x -o -m -f -");
    line(&format!(
        r#"git rev-parse -q --verify "$base^{{commit}}" >/dev/null || {{ echo "banger: commit $base is not in the workspace stream" >&2; exit {EXIT_NO_BASE}; }}"#
    ));
    let full_copy_from = plan.mode == TransferMode::FullCopy && plan.from.is_some();
    let branch = plan.guest_branch.as_ref().or(plan.branch.as_ref());
    match (branch, full_copy_from) {
        (Some(name), true) => line(&format!(
            r#"git checkout -q -f --recurse-submodules -B {} "$base""#,
            q(name)
        )),
        (Some(name), false) => {
            let full = format!("refs/heads/{name}");
            line(&format!(r#"git update-ref {} "$base""#, q(&full)));
            line(&format!("git symbolic-ref HEAD {}", q(&full)));
        }
        (None, _) => line(r#"git update-ref --no-deref HEAD "$base""#),
    }
    line(&format!(r#"git update-ref {BASE_REF} "$base""#));
    match plan.mode {
        TransferMode::Overlay => {
            line(r#"git read-tree "$base""#);
            line(&format!(
                "git update-index -z --force-remove --stdin < {SKIP_LIST}"
            ));
            line(&format!("rm -f {SKIP_LIST}"));
            line("git checkout-index -a");
            line("git reset -q");
        }
        TransferMode::FullCopy => line("git update-index -q --refresh >/dev/null || true"),
    }
    line(
        r#"git config --global --get-all safe.directory 2>/dev/null | grep -qxF -- "$dest" || git config --global --add safe.directory "$dest""#,
    );
    if let Some(name) = &plan.identity.name {
        line(&format!("git config user.name {}", q(name)));
    }
    if let Some(email) = &plan.identity.email {
        line(&format!("git config user.email {}", q(email)));
    }
    Ok(s)
}

/// The export script for the workspace at `guest_path`, diffing against `base` (a commit
/// name), or the base the prepare script recorded when `None`.
pub fn export_script(guest_path: &str, base: Option<&str>) -> Result<String, ScriptError> {
    check_guest_path(guest_path)?;
    if let Some(base) = base
        && (base.is_empty() || base.starts_with('-') || base.chars().any(char::is_control))
    {
        return Err(ScriptError::Base(base.to_string()));
    }
    let base = base.unwrap_or(BASE_REF);
    let diff = "git diff --cached --find-renames --no-relative --no-ext-diff --no-textconv \
                --no-color --ignore-submodules=none";
    Ok(format!(
        r#"set -eu
dest={dest}
want={want}
[ -d "$dest/.git" ] || {{ echo "banger: no workspace at $dest" >&2; exit {EXIT_NO_WORKSPACE}; }}
cd -- "$dest"
base=$(git rev-parse -q --verify "$want^{{commit}}") || {{ echo "banger: $want is not a commit in $dest" >&2; exit {EXIT_NO_BASE}; }}
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
index=$(git rev-parse --git-path index)
if [ -f "$index" ]; then cp -- "$index" "$tmp/index"; fi
export GIT_INDEX_FILE="$tmp/index"
git add -A
{diff} --binary --src-prefix=a/ --dst-prefix=b/ "$base" > "$tmp/patch"
{diff} --name-status -z "$base" > "$tmp/files"
printf 'banger-export 1\nbase %s\nfiles %s\n' "$base" "$(wc -c < "$tmp/files" | tr -d ' ')"
cat -- "$tmp/files"
printf 'patch %s\n' "$(wc -c < "$tmp/patch" | tr -d ' ')"
cat -- "$tmp/patch"
printf 'end\n'
"#,
        dest = q(guest_path),
        want = q(base),
    ))
}

/// The guest's `/bin/sh` script that runs its arguments through `mise exec --` when mise is
/// there, else as they are: decided in the guest, so no round trip. Commands in a workspace
/// run through it (`vm exec`, `vm run PATH -- CMD`, the MCP server's `vm_exec`).
pub const MISE_WRAP: &str =
    "if command -v mise >/dev/null 2>&1; then exec mise exec -- \"$@\"; else exec \"$@\"; fi";

/// `argv` wrapped in [`MISE_WRAP`], passed to it exactly.
pub fn mise_wrapped(argv: Vec<String>) -> Vec<String> {
    let mut out = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        MISE_WRAP.to_string(),
        "sh".to_string(),
    ];
    out.extend(argv);
    out
}

/// The exit status of [`mise_install`] when the guest has no mise.
pub const NO_MISE: i32 = 200;

/// The argv of `mise install` in a workspace whose repository pins tools: exits [`NO_MISE`]
/// when the guest has no mise.
pub fn mise_install() -> Vec<String> {
    vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("command -v mise >/dev/null 2>&1 || exit {NO_MISE}; exec mise install"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_must_be_absolute_and_plain() {
        for bad in [
            "",
            "/",
            "/root",
            "/root/",
            "relative",
            "/root/../etc",
            "/root/re\npo",
        ] {
            assert!(check_guest_path(bad).is_err(), "{bad:?}");
        }
        check_guest_path("/root/my repo").unwrap();
    }

    #[test]
    fn an_option_like_base_is_refused() {
        assert!(matches!(
            export_script("/root/repo", Some("--output=/etc/passwd")),
            Err(ScriptError::Base(_))
        ));
        let script = export_script("/root/my repo", Some("HEAD~1")).unwrap();
        assert!(script.contains("dest='/root/my repo'\n"), "{script}");
        assert!(script.contains("want='HEAD~1'\n"), "{script}");
    }
}
