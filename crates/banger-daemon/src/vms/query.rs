//! Read-only questions about VMs: the list, one VM, its VMM's statistics.

use banger_api::types::{Vm, VmState, VmStats};

use crate::error::OpError;
use crate::state::AppState;

/// The running VMs, or every VM with `all`, oldest first.
pub fn list(state: &AppState, all: bool) -> Result<Vec<Vm>, OpError> {
    Ok(state
        .vm_rows()?
        .iter()
        .filter(|r| all || r.state == VmState::Running)
        .map(|r| state.vm_view(r))
        .collect())
}

/// The VM `reference` names.
pub fn show(state: &AppState, reference: &str) -> Result<Vm, OpError> {
    Ok(state.vm_view(&state.find_vm(reference)?))
}

/// The VMM process of a running VM, as `/proc` sees it.
pub fn stats(state: &AppState, reference: &str) -> Result<VmStats, OpError> {
    let row = state.find_vm(reference)?;
    match row.pid {
        Some(pid) if row.state == VmState::Running => crate::stats::read(&row, pid),
        _ => Err(OpError::NotRunning { vm: row.name }),
    }
}
