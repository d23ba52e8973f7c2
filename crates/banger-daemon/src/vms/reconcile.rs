//! Reconciliation: stored state brought in line with the host at daemon start and whenever
//! a VMM exits, and the monitor that notices exits.

use std::sync::Arc;
use std::time::Duration;

use banger_api::types::VmState;

use super::actions::reload;
use super::boot::release;
use super::create::rollback_create;
use super::vmm::{kill_vmms_of, vmm_process, vmm_running};
use crate::error::chain;
use crate::state::AppState;

/// Brings stored state in line with the host: called at daemon start and whenever a VMM
/// exits. Half-created VMs are rolled back; unfinished starts of stopped VMs are undone;
/// running VMs whose VMM died (or whose pid now belongs to another process) are marked
/// stopped and their resources released; a live VMM with a stale stored pid is found again
/// by its socket.
pub async fn reconcile(state: &Arc<AppState>) {
    let rows = match state.vm_rows() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %chain(&e), "reconcile: cannot list VMs");
            return;
        }
    };
    for row in rows {
        match row.state {
            VmState::Creating => {
                let lock = state.locks.vm(&row.id);
                let Ok(_g) = lock.try_lock() else { continue };
                tracing::warn!(vm = %row.name, "reconcile: creation never finished; rolling back");
                rollback_create(state, &row).await;
            }
            VmState::Running => reconcile_running(state, &row.id).await,
            VmState::Stopped | VmState::Error => reconcile_stopped(state, &row.id).await,
        }
    }
}

/// Undoes a start of a stopped VM that never finished (the daemon died during it): its VMM
/// is killed, its TAP, NAT rule and run directory released, its pid cleared.
async fn reconcile_stopped(state: &Arc<AppState>, id: &str) {
    let lock = state.locks.vm(id);
    let Ok(_g) = lock.try_lock() else { return };
    let Ok(mut row) = reload(state, id) else {
        return;
    };
    let run_dir = state.run_dir(&row.id);
    let unfinished = row.pid.is_some()
        || tokio::fs::try_exists(&run_dir).await.unwrap_or(true)
        || !banger_vmm::process::pids_in_dir(&run_dir).is_empty();
    if row.state == VmState::Running || !unfinished {
        return;
    }
    tracing::warn!(vm = %row.name, pid = ?row.pid, "reconcile: a start never finished; undoing it");
    kill_vmms_of(state, &row).await;
    release(state, &row).await;
    row.pid = None;
    row.vmm_start_time = None;
    let _ = state.set_vm(&row);
}

/// Checks one running VM; marks it stopped when its VMM is gone.
pub async fn reconcile_running(state: &Arc<AppState>, id: &str) {
    let lock = state.locks.vm(id);
    // Someone else is working on this VM (stop, delete...): they own its state.
    let Ok(_g) = lock.try_lock() else { return };
    let Ok(mut row) = reload(state, id) else {
        return;
    };
    if row.state != VmState::Running {
        return;
    }
    let spec = match state.spec(&row) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(vm = %row.name, error = %chain(&e), "reconcile: cannot build spec");
            return;
        }
    };
    match vmm_process(state, &row) {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(error) => {
            tracing::error!(vm = %row.name, %error, "reconcile: cannot check the VMM");
            return;
        }
    }
    let live = match state.vmm_of(&row) {
        Ok(vmm) => vmm.find_live(&spec).await,
        Err(_) => None,
    };
    if let Some(live) = live {
        tracing::info!(vm = %row.name, old = ?row.pid, new = live.pid, "reconcile: found the live VMM again");
        row.pid = Some(live.pid);
        row.vmm_start_time = live.start_time;
        let _ = state.set_vm(&row);
        return;
    }
    if let Some(p) = row.pid {
        // Reaps it when it is our zombie child (the pid is still held then, so it is ours).
        banger_vmm::process::wait_exit(p, Duration::ZERO).await;
    }
    tracing::warn!(vm = %row.name, pid = ?row.pid, "reconcile: VMM is gone; marking stopped");
    release(state, &row).await;
    row.state = VmState::Stopped;
    row.pid = None;
    row.vmm_start_time = None;
    let _ = state.set_vm(&row);
}

/// Watches running VMs and reconciles the ones whose VMM exited. Runs until the daemon stops.
pub async fn monitor(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut logs = crate::logcap::LogCapper::new(state.opts.config.max_log_size.bytes());
    loop {
        tick.tick().await;
        let Ok(rows) = state.vm_rows() else { continue };
        logs.check(&rows).await;
        for row in rows.iter().filter(|r| r.state == VmState::Running) {
            if !vmm_running(&state, row) {
                reconcile_running(&state, &row.id).await;
            }
        }
    }
}
