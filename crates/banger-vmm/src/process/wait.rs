//! Waiting for a process to exit: bounded polling of its liveness, reaping it when it is a
//! zombie child of this process, with and without an async runtime.

use std::time::{Duration, Instant};

use super::procfs::{ProcStat, alive, proc_stat};
use super::signal::target_pid;

/// First and longest pause between two liveness checks while waiting for an exit.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

/// Reaps `pid` if it is a zombie child of this process (never blocks, never touches other
/// processes' children).
pub(super) fn reap_if_zombie_child(pid: u32) {
    let Some(target) = target_pid(pid) else {
        return;
    };
    let Some(ProcStat {
        state: b'Z', ppid, ..
    }) = proc_stat(pid)
    else {
        return;
    };
    if ppid != std::process::id() {
        return;
    }
    let mut status = 0;
    // SAFETY: waitpid(2) on one pid with WNOHANG writes only to `status`, a valid local.
    unsafe { libc::waitpid(target, &mut status, libc::WNOHANG) };
}

/// Waits until `pid` is gone (or a zombie), polling, for at most `timeout`. Reaps it when it
/// is a zombie child of this process. Returns whether it is gone.
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    poll_until(timeout, || {
        reap_if_zombie_child(pid);
        !alive(pid)
    })
    .await
}

/// Checks `done` with growing pauses until it holds (`true`) or `timeout` passes (`false`).
pub(super) async fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = POLL_FIRST;
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// [`wait_exit`] for threads without a runtime.
pub(crate) fn wait_exit_blocking(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = POLL_FIRST;
    loop {
        reap_if_zombie_child(pid);
        if !alive(pid) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(POLL_MAX);
    }
}
