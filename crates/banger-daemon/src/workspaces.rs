//! Workspaces: a host repository shipped into a running VM, and the guest's work brought
//! back as a patch. [`banger_workspace`] plans and carries it out; this module runs it
//! against a VM and records the result.
//!
//! # Prepare ([`prepare`], `POST /v1/vms/{reference}/workspace`, streamed)
//!
//! Under the VM's lock: the VM must run; the host path (absolute) is inspected with the
//! host's `git`, run through the daemon's `CommandRunner` (stage `inspect`); an exec session
//! to the VM's agent runs [`banger_workspace::prepare_script`] under `/bin/sh -c` and the
//! transfer stream ([`banger_workspace::write_stream`], synchronous, on a blocking thread)
//! is fed into its stdin through a channel of a few chunks, so memory stays bounded
//! (stages `copy`, with the bytes once written, and `checkout`). The script's exit status
//! becomes a typed error: 3 the guest path is not empty (a conflict unless `replace`), 4 the
//! base commit did not arrive. Then the workspace row is stored with the VM (it survives
//! daemon restarts and goes with the VM).
//!
//! # Export ([`export`], `POST /v1/vms/{reference}/workspace/export`)
//!
//! The VM's stored workspace (none: [`OpError::NoWorkspace`]) names the guest path; an exec
//! session runs [`banger_workspace::export_script`] (which never touches the guest's index
//! or work tree) and its stdout is read with [`banger_workspace::parse_export`]. The answer
//! carries the patch whole (base64 on the wire), so the daemon holds at most
//! [`MAX_EXPORT`] bytes of it.

use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::client::exec::{ExecEvent, ExecSession, exec_upgraded};
use banger_agent_proto::exec::ExecRequest;
use banger_api::types::{
    ExportWorkspace, ExportedFile, FileChange, PrepareWorkspace, PreparedWorkspace, WorkspaceExport,
};
use banger_store::{VmRow, WorkspaceMode, WorkspaceRow};
use banger_workspace::{Change, DEFAULT_GUEST_PATH, Existing, Git, InspectOptions, TransferMode};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::error::{OpError, WorkspaceError};
use crate::progress::Progress;
use crate::state::AppState;
use crate::vms;

/// How long the agent may take to start a script.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest export output the daemon holds (the patch travels in one answer).
pub const MAX_EXPORT: u64 = 512 << 20;

/// How much of a script's stderr is kept for its error.
const STDERR_KEPT: usize = 4096;

/// Chunks of the stream in flight between the blocking writer and the guest's stdin.
const STREAM_CHUNKS: usize = 4;

fn failed(vm: &VmRow, source: impl Into<WorkspaceError>) -> OpError {
    OpError::Workspace {
        vm: vm.name.clone(),
        source: Box::new(source.into()),
    }
}

/// Prepares the workspace of the running VM `reference` from the repository enclosing
/// `req.path`; see the module docs.
pub async fn prepare(
    state: Arc<AppState>,
    reference: String,
    req: PrepareWorkspace,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<PreparedWorkspace, OpError> {
    let row = state.find_vm(&reference)?;
    let lock = state.locks.vm(&row.id);
    let _guard = lock.lock().await;
    tokio::select! {
        r = prepare_locked(&state, &row, req, &progress) => r,
        _ = cancel.cancelled() => Err(OpError::Cancelled),
    }
}

async fn prepare_locked(
    state: &Arc<AppState>,
    row: &VmRow,
    req: PrepareWorkspace,
    progress: &Progress,
) -> Result<PreparedWorkspace, OpError> {
    // Under the lock, the VM's state as it is now.
    let row = state.find_vm(&row.id)?;
    vms::endpoint_of(state, &row)?;
    if !req.path.is_absolute() {
        return Err(OpError::InputNotAbsolute {
            what: "workspace".into(),
            path: req.path,
        });
    }
    let git = Git::new(Arc::clone(&state.host.runner));
    let options = InspectOptions {
        include_untracked: req.include_untracked,
        full_copy: req.full_copy,
        branch: req.branch.clone(),
        from: req.from.clone(),
    };
    let plan = {
        let (git, path) = (git.clone(), req.path.clone());
        tokio::task::spawn_blocking(move || banger_workspace::inspect(&git, &path, &options))
            .await
            .map_err(|e| OpError::Join(e.to_string()))?
            .map_err(|e| failed(&row, e))?
    };
    let plan = Arc::new(plan);
    progress.stage(
        "inspect",
        format!(
            "{} ({}, {} files, {} from the working tree)",
            plan.root.display(),
            mode_words(plan.mode),
            plan.files.len(),
            plan.work_tree_files().count()
        ),
    );
    let existing = if req.replace {
        Existing::Replace
    } else {
        Existing::Refuse
    };
    let script = banger_workspace::prepare_script(&plan, DEFAULT_GUEST_PATH, existing)
        .map_err(|e| failed(&row, e))?;
    let mut session = start(state, &row, script, "prepare").await?;
    let stdin = session.take_stdin();

    let scratch = state.run_dir(&row.id);
    let (chunks, mut incoming) = tokio::sync::mpsc::channel::<Vec<u8>>(STREAM_CHUNKS);
    let writer = {
        let (git, plan) = (git.clone(), Arc::clone(&plan));
        tokio::task::spawn_blocking(move || {
            banger_workspace::write_stream(&git, &plan, &scratch, ChannelWriter(chunks))
        })
    };
    let feeder = tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        while let Some(chunk) = incoming.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                // The guest stopped reading (the script failed): its status says why.
                return;
            }
        }
        let _ = stdin.shutdown().await;
    });
    // The guest's output is read all along, so the session never stalls on it. A cancelled
    // prepare drops the reader and so the session: the agent kills the script, the stdin
    // writes fail and the stream's writer stops.
    let reader = {
        let row = row.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            read_session(&row, &mut session, "prepare", &mut Vec::new(), 0).await
        }))
    };
    let written = writer.await.map_err(|e| OpError::Join(e.to_string()))?;
    if let Ok(stats) = &written {
        progress.stage(
            "copy",
            format!("{} files, {} bytes", plan.files.len(), stats.bytes),
        );
        progress.stage("checkout", mode_words(plan.mode));
    }
    let _ = feeder.await;
    let (status, stderr) = reader.await.map_err(|e| OpError::Join(e.to_string()))??;
    let stats = match (status, written) {
        (0, Ok(stats)) => stats,
        (banger_workspace::script::EXIT_NOT_EMPTY, _) => {
            return Err(failed(
                &row,
                WorkspaceError::NotEmpty {
                    path: DEFAULT_GUEST_PATH.into(),
                },
            ));
        }
        // Past a refusal of the guest path, a stream that failed on the host cut the
        // guest's tar short: the host's error is the cause, whatever the guest then said.
        (_, Err(e)) => return Err(failed(&row, e)),
        (banger_workspace::script::EXIT_NO_BASE, _) => {
            return Err(failed(
                &row,
                WorkspaceError::NoBase {
                    base: plan.base.clone(),
                    path: DEFAULT_GUEST_PATH.into(),
                },
            ));
        }
        (code, _) => {
            return Err(failed(
                &row,
                WorkspaceError::GuestFailed {
                    what: "prepare",
                    code,
                    stderr: text(&stderr),
                },
            ));
        }
    };

    let ws = WorkspaceRow {
        vm_id: row.id.clone(),
        guest_path: DEFAULT_GUEST_PATH.into(),
        host_path: plan.root.display().to_string(),
        head: plan.head.clone(),
        branch: plan.branch.clone(),
        mode: match plan.mode {
            TransferMode::Overlay => WorkspaceMode::Overlay,
            TransferMode::FullCopy => WorkspaceMode::FullCopy,
        },
        include_untracked: req.include_untracked,
        prepared_at: state.now(),
    };
    state.db(|s| s.set_workspace(&ws))?;
    Ok(PreparedWorkspace {
        vm: row.name.clone(),
        workspace: vms::workspace_view(&ws),
        files: plan.files.len(),
        bytes: stats.bytes,
        untracked_notice: plan.untracked_notice(),
        tool_pins: plan
            .tool_pins
            .iter()
            .map(|p| p.file_name().to_string())
            .collect(),
    })
}

fn mode_words(mode: TransferMode) -> &'static str {
    match mode {
        TransferMode::Overlay => "overlay",
        TransferMode::FullCopy => "full copy",
    }
}

/// The export of the workspace of the running VM `reference`; see the module docs.
pub async fn export(
    state: &AppState,
    reference: &str,
    req: ExportWorkspace,
) -> Result<WorkspaceExport, OpError> {
    let row = state.find_vm(reference)?;
    let ws = state
        .db(|s| s.get_workspace(&row.id))?
        .ok_or_else(|| OpError::NoWorkspace {
            vm: row.name.clone(),
        })?;
    let script = banger_workspace::export_script(&ws.guest_path, req.base_commit.as_deref())
        .map_err(|e| failed(&row, e))?;
    let mut session = start(state, &row, script, "export").await?;
    drop(session.take_stdin());
    let mut out = Vec::new();
    let (status, stderr) = read_session(&row, &mut session, "export", &mut out, MAX_EXPORT).await?;
    match status {
        0 => {}
        banger_workspace::script::EXIT_NO_WORKSPACE => {
            return Err(failed(
                &row,
                WorkspaceError::GuestRepositoryGone {
                    path: ws.guest_path,
                },
            ));
        }
        banger_workspace::script::EXIT_NO_BASE => {
            return Err(failed(
                &row,
                WorkspaceError::NoBase {
                    base: req.base_commit.unwrap_or_else(|| ws.head.clone()),
                    path: ws.guest_path,
                },
            ));
        }
        code => {
            return Err(failed(
                &row,
                WorkspaceError::GuestFailed {
                    what: "export",
                    code,
                    stderr: text(&stderr),
                },
            ));
        }
    }
    let export = banger_workspace::parse_export(&out).map_err(|e| failed(&row, e))?;
    Ok(WorkspaceExport {
        base: export.base,
        files: export
            .files
            .into_iter()
            .map(|f| ExportedFile {
                path: f.path,
                change: match f.change {
                    Change::Added => FileChange::Added,
                    Change::Modified => FileChange::Modified,
                    Change::Deleted => FileChange::Deleted,
                    Change::Renamed { from, similarity } => {
                        FileChange::Renamed { from, similarity }
                    }
                    Change::Copied { from, similarity } => FileChange::Copied { from, similarity },
                    Change::TypeChanged => FileChange::TypeChanged,
                    Change::Unmerged => FileChange::Unmerged,
                },
            })
            .collect(),
        patch: export.patch,
    })
}

/// Starts `/bin/sh -c SCRIPT` as root in the VM's guest, in `/`.
async fn start(
    state: &AppState,
    row: &VmRow,
    script: String,
    what: &'static str,
) -> Result<ExecSession, OpError> {
    let io = vms::exec_channel(state, &row.id).await?;
    let mut req = ExecRequest::new(["/bin/sh".to_string(), "-c".to_string(), script]);
    req.cwd = Some("/".into());
    exec_upgraded(io, req, START_TIMEOUT)
        .await
        .map_err(|source| failed(row, WorkspaceError::Exec { what, source }))
}

/// Reads the session's events until its exit: stdout into `out` up to `limit` bytes (0:
/// dropped), the first [`STDERR_KEPT`] bytes of stderr kept.
async fn read_session(
    row: &VmRow,
    session: &mut ExecSession,
    what: &'static str,
    out: &mut Vec<u8>,
    limit: u64,
) -> Result<(i32, Vec<u8>), OpError> {
    let mut stderr = Vec::new();
    loop {
        let event = session
            .next_event()
            .await
            .map_err(|source| failed(row, WorkspaceError::Exec { what, source }))?;
        match event {
            Some(ExecEvent::Stdout(b)) => {
                if limit == 0 {
                    continue;
                }
                if out.len() as u64 + b.len() as u64 > limit {
                    return Err(failed(row, WorkspaceError::TooLarge { limit }));
                }
                out.extend_from_slice(&b);
            }
            Some(ExecEvent::Stderr(b)) => {
                let room = STDERR_KEPT.saturating_sub(stderr.len());
                stderr.extend_from_slice(&b[..room.min(b.len())]);
            }
            Some(ExecEvent::Exit(status)) => return Ok((status.shell_code(), stderr)),
            None => {
                return Err(failed(
                    row,
                    WorkspaceError::Exec {
                        what,
                        source: banger_agent_proto::client::exec::ExecError::Ended {
                            pid: session.pid(),
                        },
                    },
                ));
            }
        }
    }
}

/// A script's stderr, trimmed, for an error message.
fn text(stderr: &[u8]) -> String {
    let t = String::from_utf8_lossy(stderr).trim().to_string();
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

/// A synchronous writer handing its bytes to the async side, a chunk at a time (blocking
/// while [`STREAM_CHUNKS`] wait): what lets `write_stream` run on a blocking thread.
struct ChannelWriter(tokio::sync::mpsc::Sender<Vec<u8>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(banger_agent_proto::exec::MAX_DATA_CHUNK);
        self.0
            .blocking_send(buf[..n].to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
