//! The VM's VMM process: never signalled before [`identify`] says the stored pid is still it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_store::VmRow;

use banger_vmm::process::identify;
use banger_vmm::{AgentEndpoint, IdentityError, Running, VmmIdentity, VmmProcess};

use crate::error::chain;
use crate::state::AppState;

/// The identity `row`'s VMM was recorded with, if a pid was stored.
pub(super) fn identity_of(state: &AppState, row: &VmRow) -> Option<VmmIdentity> {
    row.pid.map(|pid| VmmIdentity {
        pid,
        start_time: row.vmm_start_time,
        run_dir: state.run_dir(&row.id),
    })
}

/// The VMM `row` names, if its stored pid is still that VMM ([`identify`]). `Ok(None)`: the
/// VMM is gone (no pid, it exited, or the pid belongs to another process now).
pub(super) fn vmm_process(
    state: &AppState,
    row: &VmRow,
) -> Result<Option<VmmProcess>, IdentityError> {
    let Some(identity) = identity_of(state, row) else {
        return Ok(None);
    };
    match identify(&identity) {
        Ok(process) => Ok(Some(process)),
        Err(IdentityError::Gone { .. }) => Ok(None),
        Err(error) if error.vmm_gone() => {
            tracing::warn!(vm = %row.name, %error, "the stored VMM pid is another process now; leaving it alone");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Kills every VMM of `row`: the recorded one (after the identity check) and any process
/// whose command line names the VM's run directory (a VMM spawned by a daemon that died
/// before storing its pid, or re-found after the stored pid went stale).
pub(super) async fn kill_vmms_of(state: &Arc<AppState>, row: &VmRow) {
    if let Some(identity) = identity_of(state, row) {
        kill_and_wait(&row.name, &identity).await;
    }
    let run_dir = state.run_dir(&row.id);
    for pid in banger_vmm::process::pids_in_dir(&run_dir) {
        let identity = VmmIdentity {
            pid,
            start_time: None,
            run_dir: run_dir.clone(),
        };
        kill_and_wait(&row.name, &identity).await;
    }
}

/// Sends `SIGKILL` to the VMM `identity` names, through its pidfd, once [`identify`] agreed,
/// and waits for it to exit. A pid that is not that VMM (any more) is left alone.
pub(super) async fn kill_and_wait(vm: &str, identity: &VmmIdentity) {
    let process = match identify(identity) {
        Ok(process) => process,
        Err(IdentityError::Gone { .. }) => return,
        Err(error) => {
            tracing::warn!(vm, pid = identity.pid, %error, "not killing the VMM");
            return;
        }
    };
    if let Err(e) = process.signal(banger_vmm::process::Signal::KILL) {
        tracing::warn!(vm, pid = identity.pid, error = %chain(&e), "cannot kill VMM");
    }
    if !process.wait_exit(Duration::from_secs(5)).await {
        tracing::warn!(vm, pid = identity.pid, "VMM still alive 5s after SIGKILL");
    }
}

/// The running VMM of `row` with pid `pid`: found by its control socket when it answers,
/// else assembled from what is stored (a shutdown request then fails and stop kills it,
/// once [`identify`] agreed that the pid is still that VMM).
pub(super) async fn running_of(state: &Arc<AppState>, row: &VmRow, pid: u32) -> Running {
    if let Ok(spec) = state.spec(row)
        && let Ok(vmm) = state.vmm_of(row)
    {
        if let Some(live) = vmm.find_live(&spec).await {
            return live;
        }
        return Running {
            vm_id: row.id.clone(),
            pid,
            start_time: row.vmm_start_time,
            api_socket: vmm.control_socket(&spec.run_dir),
            agent: vmm.agent_endpoint(&spec),
        };
    }
    Running {
        vm_id: row.id.clone(),
        pid,
        start_time: row.vmm_start_time,
        api_socket: state.run_dir(&row.id).join("api.sock"),
        agent: AgentEndpoint::Unix(PathBuf::new()),
    }
}

/// Whether `row`'s VMM still runs: its stored pid passes [`identify`]. A pid that exited or
/// now belongs to another process does not.
pub(super) fn vmm_running(state: &AppState, row: &VmRow) -> bool {
    identity_of(state, row).is_some_and(|identity| identify(&identity).is_ok())
}
