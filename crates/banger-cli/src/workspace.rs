//! Workspaces from the CLI: `banger vm workspace prepare|export`, and the workspace steps
//! of `vm run PATH` and `vm exec`.
//!
//! - The repository is inspected here first, with the host's `git`
//!   ([`banger_workspace::inspect`]): `--dry-run` prints that plan and calls no daemon, and a
//!   PATH banger cannot ship (not in a repository, bare, submodules without `--full-copy`,
//!   `--from` an unknown ref) is refused before `vm run` makes a VM. The daemon inspects it
//!   again when it prepares (it ships what it sees then).
//! - Prepare: `POST /v1/vms/{reference}/workspace`, its stages printed as they come, like
//!   `vm create`'s (`[workspace] stage: detail`, on stderr); then the one-line notice for
//!   untracked files left behind; then, when the repository pins tools (`.mise.toml`,
//!   `go.mod`, ...; see [`banger_workspace::ToolPin`]), `mise install` in the workspace through
//!   the agent, with one progress line: a guest without mise, or a failing install, is one
//!   warning line, never a failure.
//! - Export: `POST /v1/vms/{reference}/workspace/export`; the patch goes to stdout byte for
//!   byte (a reader that goes away, `| head`, ends it quietly), or to `--output FILE` written
//!   atomically (a temporary file in the same directory, renamed). `--json` prints
//!   `{base, files: [{path, change, from?, similarity?}], patch_bytes}` plus either `output`
//!   (with `--output`) or `patch`, the patch in base64 (without it), so the JSON alone is
//!   always the whole export.
//! - `vm exec` in a VM with a workspace: the HEAD check ([`head_moved`]) and `--auto-prepare`
//!   ([`reprepare`]), which ships the host repository again with the flags it was prepared
//!   with, replacing the guest's checkout.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use banger_api::Client;
use banger_api::Route;
use banger_api::types::{
    ExportWorkspace, PrepareWorkspace, PreparedWorkspace, Workspace, WorkspaceExport, WorkspaceMode,
};
use banger_core::probe::SearchPath;
use banger_core::runner::SystemRunner;
use banger_workspace::{Git, InspectOptions, Inspection};

use crate::Ctx;
use crate::args::{ExportArgs, WorkspaceCommand, WorkspaceFlags};
use crate::connect;
use crate::error::CliError;
use crate::escape::{Mode, escape};
use crate::exec::Target;
use crate::ui::Style;

/// The host's git, found on the CLI's `PATH`.
pub fn git(ctx: &Ctx) -> Git {
    Git::new(Arc::new(
        SystemRunner::new().with_path(SearchPath::programs(ctx.env.path.as_deref())),
    ))
}

fn options(flags: &WorkspaceFlags) -> InspectOptions {
    InspectOptions {
        include_untracked: flags.include_untracked,
        full_copy: flags.full_copy,
        branch: flags.branch.clone(),
        from: flags.from.clone(),
    }
}

/// The plan for shipping the repository enclosing `path`, or why it cannot be shipped.
pub fn inspect(ctx: &Ctx, path: &Path, flags: &WorkspaceFlags) -> Result<Inspection, CliError> {
    banger_workspace::inspect(&git(ctx), path, &options(flags))
        .map_err(|e| CliError::Inspect(Box::new(e)))
}

/// Prints the plan `--dry-run` shows: text, or JSON with `--json`.
pub fn print_plan(ctx: &mut Ctx, plan: &Inspection, json: bool) -> Result<(), CliError> {
    if json {
        ctx.ui.json(plan)?;
    } else {
        ctx.ui.out().write_all(plan.to_string().as_bytes())?;
    }
    Ok(())
}

/// Prepares VM `vm`'s workspace from `plan`'s repository, printing the stages, the untracked
/// notice and the `mise install` step.
pub async fn prepare(
    ctx: &mut Ctx,
    client: &Client,
    vm: &str,
    plan: &Inspection,
    flags: &WorkspaceFlags,
    replace: bool,
) -> Result<PreparedWorkspace, CliError> {
    let req = PrepareWorkspace {
        path: plan.path.clone(),
        branch: flags.branch.clone(),
        from: flags.from.clone(),
        include_untracked: flags.include_untracked,
        full_copy: flags.full_copy,
        replace,
    };
    let prefix = ctx.ui.paint_err(Style::Dim, "[workspace]");
    let mut err = std::io::stderr();
    let prepared: PreparedWorkspace = client
        .stream(Route::VmWorkspace(vm), &req, |stage, detail, _ms| {
            let (stage, detail) = (escape(stage, Mode::Text), escape(detail, Mode::Text));
            let _ = writeln!(err, "{prefix} {stage}: {detail}");
        })
        .await?;
    if let Some(notice) = &prepared.untracked_notice {
        ctx.ui.note(&format!("{prefix} {notice}"))?;
    }
    if !prepared.tool_pins.is_empty() {
        mise_install(ctx, client, vm, &prepared).await?;
    }
    Ok(prepared)
}

/// `mise install` in the workspace, when the guest has mise; warns and carries on otherwise.
async fn mise_install(
    ctx: &mut Ctx,
    client: &Client,
    vm: &str,
    prepared: &PreparedWorkspace,
) -> Result<(), CliError> {
    let pins = prepared.tool_pins.join(", ");
    let prefix = ctx.ui.paint_err(Style::Dim, "[workspace]");
    ctx.ui.note(&format!("{prefix} mise install ({pins})"))?;
    let target = Target {
        argv: banger_workspace::mise_install(),
        cwd: prepared.workspace.guest_path.clone(),
    };
    let warning = match crate::exec::run_quiet(client, vm, &target).await {
        Ok((0, _)) => None,
        Ok((banger_workspace::NO_MISE, _)) => Some(format!(
            "the guest has no mise: the tools {pins} pins were not installed"
        )),
        Ok((code, stderr)) => {
            let text = String::from_utf8_lossy(&stderr);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Some(format!("mise install failed (exit {code}): {last}"))
        }
        Err(e) => Some(format!(
            "mise install could not run: {}",
            banger_core::error::chain(&e)
        )),
    };
    if let Some(w) = warning {
        ctx.ui
            .note(&escape(&format!("banger: warning: {w}"), Mode::Text))?;
    }
    Ok(())
}

/// The HEAD-moved warning for `vm exec`: the host repository's HEAD now, when it differs
/// from the one the workspace was prepared from (best effort: an unreadable repository
/// gives no warning).
pub fn head_moved(ctx: &Ctx, ws: &Workspace) -> Option<String> {
    let now = banger_workspace::current_head(&git(ctx), &ws.host_path).ok()?;
    (now != ws.head).then(|| {
        format!(
            "banger: warning: HEAD of {} moved since the workspace was prepared ({} -> {}); \
             the guest has the old tree (re-sync with: banger vm exec --auto-prepare)",
            ws.host_path.display(),
            short(&ws.head),
            short(&now)
        )
    })
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

/// Ships the workspace's host repository again, as it was prepared (untracked files, mode),
/// replacing the guest's checkout.
pub async fn reprepare(
    ctx: &mut Ctx,
    client: &Client,
    vm: &str,
    ws: &Workspace,
) -> Result<PreparedWorkspace, CliError> {
    let flags = WorkspaceFlags {
        include_untracked: ws.include_untracked,
        full_copy: ws.mode == WorkspaceMode::FullCopy,
        ..WorkspaceFlags::default()
    };
    let plan = inspect(ctx, &ws.host_path, &flags)?;
    prepare(ctx, client, vm, &plan, &flags, true).await
}

/// `banger vm workspace ...`.
pub async fn run(cmd: WorkspaceCommand, ctx: &mut Ctx) -> Result<u8, CliError> {
    match cmd {
        WorkspaceCommand::Prepare(a) => {
            let plan = inspect(ctx, &a.path, &a.flags)?;
            if a.flags.dry_run {
                print_plan(ctx, &plan, a.flags.json)?;
                return Ok(0);
            }
            let (client, _) = connect(ctx).await?;
            let prepared = prepare(ctx, &client, &a.reference, &plan, &a.flags, a.replace).await?;
            ctx.ui.line(&escape(
                &format!(
                    "prepared {} in {}: {} files, {} bytes shipped",
                    prepared.workspace.host_path.display(),
                    prepared.vm,
                    prepared.files,
                    prepared.bytes
                ),
                Mode::Text,
            ))?;
            Ok(0)
        }
        WorkspaceCommand::Export(a) => export(ctx, &a).await,
    }
}

async fn export(ctx: &mut Ctx, a: &ExportArgs) -> Result<u8, CliError> {
    let (client, _) = connect(ctx).await?;
    let export: WorkspaceExport = client
        .post_long(
            Route::VmWorkspaceExport(&a.reference),
            &ExportWorkspace {
                base_commit: a.base_commit.clone(),
            },
        )
        .await?;
    if let Some(path) = &a.output {
        write_atomically(path, &export.patch)?;
    }
    if a.json {
        let mut value = serde_json::to_value(&export).map_err(|e| CliError::Output(e.into()))?;
        value["patch_bytes"] = export.patch.len().into();
        if let Some(path) = &a.output
            && let Some(fields) = value.as_object_mut()
        {
            fields.remove("patch");
            fields.insert("output".into(), path.display().to_string().into());
        }
        ctx.ui.json(&value)?;
    } else if a.output.is_none() {
        let out = ctx.ui.out();
        out.write_all(&export.patch)?;
        out.flush()?;
    }
    Ok(0)
}

/// Writes `bytes` to `path` whole or not at all: a temporary file next to it, synced, then
/// renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let fail = |source| CliError::OutputFile {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".banger-export-")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}
