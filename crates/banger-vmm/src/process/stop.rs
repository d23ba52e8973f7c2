//! The stop sequence every backend shares ([`stop`]): check the VMM's identity, ask the
//! guest to shut down, wait at most the grace period, `SIGKILL`, wait at most [`KILL_WAIT`],
//! then report instead of hanging.

use std::time::Duration;

use super::identity::{IdentityError, identify};
use super::signal::{Signal, SignalError};
use super::wait::reap_if_zombie_child;
use crate::error::chain;
use crate::{Running, Vmm};

/// How long [`stop`] waits for a process to disappear after `SIGKILL`.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// How [`stop`] ended a VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It exited after the shutdown request, within the grace period (or on its own before it
    /// had to be killed).
    Graceful,
    /// It had to be killed with `SIGKILL`.
    Forced,
    /// It was not running when the stop began (or vanished before it could be asked or
    /// killed).
    NotRunning,
}

/// A VMM [`stop`] could not end.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("VM {vm_id}: cannot kill VMM pid {pid}")]
    Kill {
        vm_id: String,
        pid: u32,
        source: SignalError,
    },
    #[error("VM {vm_id}: cannot check the VMM before stopping it")]
    Identify {
        vm_id: String,
        source: IdentityError,
    },
    #[error("VM {vm_id}: VMM pid {pid} is still alive {after:?} after SIGKILL")]
    StillAlive {
        vm_id: String,
        pid: u32,
        after: Duration,
    },
}

/// Stops a VMM: checks that `running.pid` is still that VMM ([`identify`]), asks the guest
/// to shut down ([`Vmm::request_shutdown`]), waits up to `grace` for the process to exit,
/// then sends `SIGKILL` through the pidfd and waits up to [`KILL_WAIT`].
///
/// The grace period is measured on tokio's clock, so a test that pauses it
/// (`tokio::time::pause`) sees a stop forced without waiting; the wait after `SIGKILL` is
/// the kernel's, measured in real time.
///
/// A pid that now belongs to another process is never signalled: the VMM is gone
/// ([`StopOutcome::NotRunning`]). Never hangs: the request itself is bounded by `grace`, and a
/// failing request (the VMM API is dead or refuses) goes straight to the kill. Sockets are
/// left to the caller ([`cleanup_sockets`](super::cleanup_sockets); a later start removes stale ones anyway).
pub async fn stop<V: Vmm + ?Sized>(
    vmm: &V,
    running: &Running,
    grace: Duration,
) -> Result<StopOutcome, StopError> {
    let pid = running.pid;
    let vm_id = running.vm_id.as_str();
    let process = match identify(&running.identity()) {
        Ok(process) => process,
        Err(IdentityError::Gone { .. }) => {
            reap_if_zombie_child(pid);
            return Ok(StopOutcome::NotRunning);
        }
        Err(error) if error.vmm_gone() => {
            tracing::warn!(vm_id, pid, error = %chain(&error), "not signalling a process that is not the VMM");
            return Ok(StopOutcome::NotRunning);
        }
        Err(source) => {
            return Err(StopError::Identify {
                vm_id: vm_id.to_string(),
                source,
            });
        }
    };
    let deadline = tokio::time::Instant::now() + grace;
    let accepted = match tokio::time::timeout(grace, vmm.request_shutdown(running)).await {
        Ok(Ok(())) => {
            let exited = tokio::time::timeout_at(deadline, process.wait_exit(grace)).await;
            if matches!(exited, Ok(true)) {
                return Ok(StopOutcome::Graceful);
            }
            tracing::warn!(
                vm_id,
                pid,
                ?grace,
                "VMM still running after the grace period; killing it"
            );
            true
        }
        Ok(Err(error)) => {
            tracing::warn!(vm_id, pid, error = %chain(&error), "shutdown request failed; killing the VMM");
            false
        }
        Err(_elapsed) => {
            tracing::warn!(
                vm_id,
                pid,
                ?grace,
                "shutdown request did not complete within the grace period; killing the VMM"
            );
            false
        }
    };
    match process.signal(Signal::KILL) {
        Ok(()) => {}
        Err(SignalError::NoSuchProcess { .. }) => {
            reap_if_zombie_child(pid);
            return Ok(if accepted {
                StopOutcome::Graceful
            } else {
                StopOutcome::NotRunning
            });
        }
        Err(source) => {
            return Err(StopError::Kill {
                vm_id: vm_id.to_string(),
                pid,
                source,
            });
        }
    }
    if process.wait_exit(KILL_WAIT).await {
        Ok(StopOutcome::Forced)
    } else {
        Err(StopError::StillAlive {
            vm_id: vm_id.to_string(),
            pid,
            after: KILL_WAIT,
        })
    }
}
