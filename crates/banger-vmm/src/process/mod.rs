//! Process control shared by every backend, one module per concern: spawning a VMM
//! detached ([`spawn`]), what `/proc` says about a process ([`procfs`]), signals
//! ([`signal`](mod@signal)), waiting for an exit ([`wait`]), identifying a VMM before
//! signalling it ([`identity`]), the stop sequence ([`stop`](mod@stop)), removing stale
//! sockets ([`sockets`]), its logs ([`logs`]) and choosing its binary
//! ([`locate`]). Everything is re-exported here: callers write `process::alive`,
//! `process::stop`...
//!
//! Liveness is read from `/proc/<pid>/stat`: a zombie (state `Z`) or a dead task (`X`) counts
//! as dead, because a VMM that exited but was not reaped yet runs nothing. Pids are `u32` as
//! std hands them out; `0`, `1` and values beyond `pid_t` are refused wherever a signal would
//! be sent, because `kill(0, ...)`, `kill(-1, ...)` and init are never a VMM.
//!
//! A stored pid is never trusted: [`identify`] checks that a pid is still the VMM a
//! [`VmmIdentity`] names (start time, command line naming the VM's run dir) and hands back a
//! [`VmmProcess`] holding a pidfd, through which every signal to a VMM is sent; [`stop()`]
//! does so itself. A pid reused by another process is never signalled.
//!
//! Every wait here is bounded: [`stop()`] asks the guest to shut down, waits at most its grace
//! period, sends `SIGKILL`, waits at most [`KILL_WAIT`], and then reports instead of hanging.

pub mod identity;
pub mod locate;
pub mod logs;
pub mod procfs;
pub mod signal;
pub mod sockets;
pub mod spawn;
pub mod stop;
pub mod wait;

#[cfg(test)]
mod tests;

pub use identity::{IdentityError, VmmIdentity, VmmProcess, identify};
pub use locate::{BinarySource, LocateError, locate_binary};
pub(crate) use logs::{open_log, tail};
pub(crate) use procfs::pid_serving;
pub use procfs::{alive, pids_in_dir, pids_with_arg, start_time};
pub(crate) use signal::signal_group;
pub use signal::{ParseSignalError, Signal, SignalError, signal};
pub use sockets::{CleanupError, cleanup_sockets};
pub(crate) use spawn::REAPER_STACK;
pub use spawn::{ChildExit, SpawnError, Spawned, spawn_detached};
pub use stop::{KILL_WAIT, StopError, StopOutcome, stop};
pub use wait::wait_exit;
pub(crate) use wait::wait_exit_blocking;
