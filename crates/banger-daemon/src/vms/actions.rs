//! Actions on existing VMs: start, stop, restart, pause, resume, kill, delete, prune, set,
//! each under the VM's lock; and [`act`], which applies one action to several VMs
//! concurrently, answering in the order the references were given.
//!
//! A paused VM (`vm pause`) is a running VM whose vCPUs are stopped: its VMM, address and
//! resources stay, and the store keeps it paused across daemon restarts. Everything that
//! talks to its agent (exec, ssh, files, workspaces, health) is refused with a clear error
//! until `vm resume`, as `docker exec` refuses a paused container; `vm stop` resumes it first
//! so that the guest shuts down cleanly, `vm kill` and `vm delete` need no guest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_api::types::{ActionOutcome, ActionRequest, VmAction, VmSettings, VmState};
use banger_core::limits::VmLimits;
use banger_core::size::ByteSize;
use banger_store::VmRow;

use super::boot::{boot, release, set_nat};
use super::create::check_settings;
use super::lookup::resolve;
use super::vmm::{kill_and_wait, kill_vmms_of, running_of, vmm_process};
use crate::error::{OpError, chain};
use crate::progress::Progress;
use crate::state::AppState;

/// Runs one action on many references: resolved from one snapshot, deduplicated, run
/// concurrently, reported in first-seen order. Bad references do not stop the good ones.
pub async fn act(state: Arc<AppState>, req: ActionRequest) -> Result<Vec<ActionOutcome>, OpError> {
    let job = Job::of(req.action)?;
    let rows = state.vm_rows()?;
    let mut seen: Vec<String> = Vec::new();
    let mut outcomes: Vec<ActionOutcome> = Vec::new();
    let mut jobs = Vec::new();
    for reference in &req.refs {
        match resolve(&rows, reference) {
            Ok(row) => {
                if seen.contains(&row.id) {
                    continue;
                }
                seen.push(row.id.clone());
                let idx = outcomes.len();
                outcomes.push(ActionOutcome {
                    reference: reference.clone(),
                    vm: Some(row.name.clone()),
                    error: None,
                    note: None,
                });
                let (state, row, job) = (state.clone(), row.clone(), job.clone());
                jobs.push(async move {
                    let r = match &job {
                        Job::Start => start(&state, &row.id).await,
                        Job::Stop => stop(&state, &row.id).await,
                        Job::Restart => restart(&state, &row.id).await,
                        Job::Pause => pause(&state, &row.id).await,
                        Job::Resume => resume(&state, &row.id).await,
                        Job::Kill(signal) => kill(&state, &row.id, *signal).await,
                        Job::Delete => delete(&state, &row.id).await,
                        Job::Prune => prune(&state, &row.id).await,
                        Job::Set(settings, nat) => set(&state, &row.id, settings, *nat).await,
                    };
                    (idx, r)
                });
            }
            Err(e) => outcomes.push(ActionOutcome {
                reference: reference.clone(),
                vm: None,
                error: Some(e.into()),
                note: None,
            }),
        }
    }
    for (idx, r) in futures_join_all(jobs).await {
        match r {
            Ok(note) => outcomes[idx].note = note,
            Err(e) => outcomes[idx].error = Some(e.into()),
        }
    }
    Ok(outcomes)
}

/// An action checked once for all its VMs, before any is touched: its data parsed.
#[derive(Debug, Clone)]
enum Job {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
    Kill(banger_vmm::process::Signal),
    Delete,
    Prune,
    /// New resources, and NAT on or off when given.
    Set(VmSettings, Option<bool>),
}

impl Job {
    fn of(action: VmAction) -> Result<Self, OpError> {
        Ok(match action {
            VmAction::Start => Self::Start,
            VmAction::Stop => Self::Stop,
            VmAction::Restart => Self::Restart,
            VmAction::Pause => Self::Pause,
            VmAction::Resume => Self::Resume,
            VmAction::Kill { signal } => Self::Kill(signal.parse()?),
            VmAction::Delete => Self::Delete,
            VmAction::Prune => Self::Prune,
            VmAction::Set { settings, nat } => {
                // banger's own caps for every VM at once; each VM's backend is checked in
                // `set`.
                check_settings(&settings, &VmLimits::BANGER)?;
                if settings == VmSettings::default() && nat.is_none() {
                    return Err(OpError::NothingToSet);
                }
                Self::Set(settings, nat)
            }
        })
    }
}

/// Runs futures concurrently on this task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::with_capacity(futs.len());
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

pub(super) fn reload(state: &AppState, id: &str) -> Result<VmRow, OpError> {
    state
        .db(|s| s.get_vm(id))?
        .ok_or_else(|| OpError::VmNotFound {
            reference: id.to_string(),
        })
}

pub async fn start(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    match row.state {
        VmState::Running if row.paused => {
            return Ok(Some(
                "already running (paused: banger vm resume continues it)".into(),
            ));
        }
        VmState::Running => return Ok(Some("already running".into())),
        VmState::Creating => {
            return Err(OpError::WrongState {
                vm: row.name,
                state: "being created".into(),
                wanted: "wait for it to finish",
            });
        }
        VmState::Stopped | VmState::Error => {}
    }
    let progress = Progress::new(None);
    if let Err(e) = boot(state, &mut row, &progress).await {
        // Released like a stopped VM, and recorded as `error` with why, until a start works.
        stop_locked(state, &mut row, Duration::from_secs(1)).await;
        row.state = VmState::Error;
        row.error = Some(chain(&e));
        let _ = state.set_vm(&row);
        return Err(e);
    }
    Ok(None)
}

pub async fn stop(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    if row.state != VmState::Running {
        return Ok(Some(format!("already {}", row.state)));
    }
    if row.paused {
        // A paused guest cannot react to the shutdown request: it is resumed first. One that
        // cannot be resumed is forced off by the stop after its grace period.
        if let Err(e) = set_paused(state, &mut row, false).await {
            tracing::warn!(vm = %row.name, error = %chain(&e), "cannot resume the paused VM before its stop");
        }
    }
    let grace = Duration::from_secs(state.opts.config.stop_grace_secs);
    let outcome = stop_locked(state, &mut row, grace).await;
    Ok(outcome)
}

/// `vm pause`: the running VM's vCPUs stop; recorded, so a daemon restart keeps it paused.
pub async fn pause(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    if row.paused {
        return Err(OpError::AlreadyPaused { vm: row.name });
    }
    set_paused(state, &mut row, true).await.map(|()| None)
}

/// `vm resume`: a paused VM's vCPUs run again.
pub async fn resume(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    if row.state == VmState::Running && !row.paused {
        return Err(OpError::NotPaused { vm: row.name });
    }
    set_paused(state, &mut row, false).await.map(|()| None)
}

/// Pauses (`paused`) or resumes the running VM `row`, whose lock the caller holds, and
/// records it. Refused for a VM that is not running or whose VMM is gone.
pub(super) async fn set_paused(
    state: &Arc<AppState>,
    row: &mut VmRow,
    paused: bool,
) -> Result<(), OpError> {
    if row.state != VmState::Running {
        return Err(OpError::NotRunning {
            vm: row.name.clone(),
        });
    }
    let vmm = state.vmm_of(row)?;
    let running = vmm
        .find_live(&state.spec(row)?)
        .await
        .ok_or_else(|| OpError::NotRunning {
            vm: row.name.clone(),
        })?;
    let done = if paused {
        vmm.pause(&running).await
    } else {
        vmm.resume(&running).await
    };
    done.map_err(|source| OpError::Vmm {
        vm: row.name.clone(),
        source: Box::new(source),
    })?;
    row.paused = paused;
    state.set_vm(row)
}

/// Stops the VMM (graceful, then forced after `grace`), releases resources, marks stopped.
async fn stop_locked(state: &Arc<AppState>, row: &mut VmRow, grace: Duration) -> Option<String> {
    let mut note = None;
    if let Some(pid) = row.pid {
        // process::stop checks that the pid is still this VM's VMM before signalling it.
        let running = running_of(state, row, pid).await;
        let stopped = match state.vmm_of(row) {
            Ok(vmm) => banger_vmm::process::stop(vmm.as_ref(), &running, grace).await,
            // No backend to ask politely: force it off.
            Err(_) => {
                kill_and_wait(&row.name, &running.identity()).await;
                Ok(banger_vmm::StopOutcome::Forced)
            }
        };
        match stopped {
            Ok(banger_vmm::StopOutcome::Forced) => {
                note = Some(format!(
                    "guest did not shut down within {}s; forced off",
                    grace.as_secs()
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(vm = %row.name, error = %chain(&e), "cannot stop VMM");
                note = Some(chain(&e));
            }
        }
    }
    release(state, row).await;
    row.state = VmState::Stopped;
    row.pid = None;
    row.vmm_start_time = None;
    if let Err(e) = state.set_vm(row) {
        tracing::error!(vm = %row.name, error = %chain(&e), "cannot record stop");
    }
    note
}

pub async fn restart(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let note = stop(state, id).await?;
    start(state, id).await?;
    Ok(note.filter(|n| !n.starts_with("already")))
}

pub async fn kill(
    state: &Arc<AppState>,
    id: &str,
    signal: banger_vmm::process::Signal,
) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    let command_error = |e: &dyn std::error::Error| OpError::Command {
        what: "kill",
        detail: chain(e),
    };
    let Some(process) = vmm_process(state, &row).map_err(|e| command_error(&e))? else {
        if row.state == VmState::Running {
            // Its VMM is gone (or its pid is another process now): record that.
            release(state, &row).await;
            row.state = VmState::Stopped;
            row.pid = None;
            row.vmm_start_time = None;
            state.set_vm(&row)?;
        }
        return Err(OpError::NotRunning { vm: row.name });
    };
    process.signal(signal).map_err(|e| command_error(&e))?;
    if process.wait_exit(Duration::from_secs(3)).await {
        release(state, &row).await;
        row.state = VmState::Stopped;
        row.pid = None;
        row.vmm_start_time = None;
        state.set_vm(&row)?;
        Ok(None)
    } else {
        Ok(Some(format!("sent {signal}; the VMM is still running")))
    }
}

pub async fn delete(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let row = reload(state, id)?;
    delete_locked(state, row).await
}

/// Deletes the VM if, under its lock, it is still not running: what `vm prune` listed as
/// stopped may have been started since, and is then kept.
pub async fn prune(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let row = reload(state, id)?;
    match row.state {
        VmState::Stopped | VmState::Error => delete_locked(state, row).await,
        VmState::Running | VmState::Creating => Err(OpError::WrongState {
            vm: row.name,
            state: row.state.to_string(),
            wanted: "stop it to prune it, or delete it",
        }),
    }
}

/// Deletes a VM whose lock the caller holds.
async fn delete_locked(state: &Arc<AppState>, row: VmRow) -> Result<Option<String>, OpError> {
    kill_vmms_of(state, &row).await;
    release(state, &row).await;
    let dir = PathBuf::from(&row.dir);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(OpError::Io {
            op: "remove",
            path: dir,
            source: e,
        });
    }
    state.db(|s| s.delete_vm(&row.id))?;
    state.refresh_dns();
    super::boot::forget_host_keys(state, &row);
    state.locks.forget(&row.id);
    state.agents.forget(&row.id);
    Ok(None)
}

/// Changes a VM's resources (stored; a running VM gets them at its next start) and its NAT
/// (stored, and applied at once to a running VM: its rule added or removed now).
pub async fn set(
    state: &Arc<AppState>,
    id: &str,
    settings: &VmSettings,
    nat: Option<bool>,
) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    // The VM's own backend's limits (its kind's, when that backend is missing here).
    let limits = match state.vmm_of(&row) {
        Ok(vmm) => vmm.limits(),
        Err(_) => row.vmm.limits(),
    };
    banger_core::limits::check(&settings.requested(), &limits).map_err(|source| {
        OpError::VmLimit {
            vm: row.name.clone(),
            source: Box::new(source),
        }
    })?;
    let running = row.state == VmState::Running;
    let grows_disk = settings.disk_bytes.is_some() || settings.work_disk_bytes.is_some();
    if running && grows_disk {
        return Err(OpError::WrongState {
            vm: row.name,
            state: "running".into(),
            wanted: "stop it before resizing disks",
        });
    }
    let dir = PathBuf::from(&row.dir);
    // A restored VM's disks may be the backend's own format (QEMU: qcow2 overlays), which the
    // host's ext4 tools cannot grow; its raw clones (reflinks, sparse copies) grow as any.
    if grows_disk
        && super::disks::restored(&dir)
            .is_some_and(|r| r.disk_clone == banger_vmm::DiskClone::Qcow2Overlay.as_str())
    {
        return Err(OpError::WrongState {
            vm: row.name,
            state: "restored from a warm-start template (its disks are qcow2 overlays)".into(),
            wanted: "its disks cannot be resized; make a new VM with --disk/--work-disk (a create grows a template's disks)",
        });
    }
    for (what, new, cur) in [
        ("disk", settings.disk_bytes, row.disk_bytes),
        ("work disk", settings.work_disk_bytes, row.work_disk_bytes),
    ] {
        if let Some(new) = new
            && new < cur
        {
            return Err(OpError::DiskShrink {
                vm: row.name,
                disk: what,
                from: ByteSize(cur),
                to: ByteSize(new),
            });
        }
    }
    for (new, file) in [
        (settings.disk_bytes, "root.ext4"),
        (settings.work_disk_bytes, "work.ext4"),
    ] {
        if let Some(new) = new {
            let runner = state.host.runner.clone();
            let path = dir.join(file);
            tokio::task::spawn_blocking(move || {
                banger_disk::ext4::grow(runner.as_ref(), &path, new)
            })
            .await
            .map_err(|e| OpError::Join(e.to_string()))?
            .map_err(|source| OpError::Disk {
                vm: row.name.clone(),
                source: Box::new(source),
            })?;
        }
    }
    if let Some(nat) = nat {
        // Applied even when already stored so: a rule removed by hand comes back.
        if running {
            set_nat(state, &row, nat).await?;
        }
        row.nat = nat;
    }
    if let Some(c) = settings.cpus {
        row.cpus = c as u32;
    }
    if let Some(m) = settings.memory_mib {
        row.memory_mib = m as u64;
    }
    if let Some(d) = settings.disk_bytes {
        row.disk_bytes = d;
    }
    if let Some(w) = settings.work_disk_bytes {
        row.work_disk_bytes = w;
    }
    state.set_vm(&row)?;
    let resources = *settings != VmSettings::default();
    Ok((running && resources).then(|| "takes effect at the next start".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_all_keeps_order() {
        let futs: Vec<_> = (0..5u64)
            .map(|i| async move {
                tokio::time::sleep(Duration::from_millis(50 - i * 10)).await;
                i
            })
            .collect();
        assert_eq!(futures_join_all(futs).await, vec![0, 1, 2, 3, 4]);
    }
}
