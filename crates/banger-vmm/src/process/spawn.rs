//! Spawning a VMM detached ([`spawn_detached`]): in a session and process group of its own
//! (so it outlives the request and the daemon), with a thread that reaps it when it exits and
//! tells anyone waiting how it ended ([`Spawned`]).

use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use tokio::sync::watch;

use super::procfs::start_time;
use super::signal::{Signal, signal_group, target_pid};

/// Stack of a reaper thread: it only calls `waitpid`.
pub(crate) const REAPER_STACK: usize = 64 * 1024;

/// A program that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {}", program.display())]
    Spawn { program: PathBuf, source: io::Error },
    #[error("cannot start a thread to wait for {} (pid {pid}, killed)", program.display())]
    Reaper {
        program: PathBuf,
        pid: u32,
        source: io::Error,
    },
}

/// How a spawned child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// Its status, as collected by the reaper thread.
    Status(ExitStatus),
    /// It was reaped by someone else (e.g. [`wait_exit`](super::wait_exit)), so the status is unknown.
    Unknown,
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "{status}"),
            Self::Unknown => f.write_str("exited, status unknown"),
        }
    }
}

/// A child started by [`spawn_detached`]. Dropping it leaves the child running (and still
/// reaped when it exits).
#[derive(Debug, Clone)]
pub struct Spawned {
    pid: u32,
    start_time: Option<u64>,
    exit: watch::Receiver<Option<ChildExit>>,
}

impl Spawned {
    /// The child's pid, which is also its session and process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its [`start_time`], read before anything could reap it (so it is this child's).
    pub fn start_time(&self) -> Option<u64> {
        self.start_time
    }

    /// How it ended, once it has.
    pub fn exit(&self) -> Option<ChildExit> {
        *self.exit.borrow()
    }

    /// Waits until it has ended.
    pub async fn wait(&mut self) -> ChildExit {
        let seen = self
            .exit
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|exit| *exit);
        // The reaper thread always sends before it ends; a closed channel without a value
        // means it died without collecting anything.
        seen.unwrap_or(ChildExit::Unknown)
    }
}

/// The `pre_exec` hook of [`spawn_detached`]: makes the child a session and group leader.
fn new_session() -> io::Result<()> {
    // SAFETY: setsid(2) takes no arguments and only changes the calling process's session.
    if unsafe { libc::setsid() } == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Spawns `cmd` in a new session (`setsid` before `exec`: its own session and process group,
/// no controlling terminal), with a thread that reaps it when it exits. The caller sets the
/// program, arguments and stdio.
pub fn spawn_detached(mut cmd: Command) -> Result<Spawned, SpawnError> {
    let program = PathBuf::from(cmd.get_program());
    // SAFETY: the hook runs in the forked child before exec and only calls setsid(2), which
    // is async-signal-safe, allocates nothing and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(new_session);
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    // Nothing reaps the child before the reaper thread exists, so this pid is still ours.
    let start_time = start_time(pid);
    let (tx, rx) = watch::channel(None);
    let reaper = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .stack_size(REAPER_STACK)
        .spawn(move || {
            let exit = match child.wait() {
                Ok(status) => ChildExit::Status(status),
                Err(_) => ChildExit::Unknown,
            };
            tx.send_replace(Some(exit));
        });
    if let Err(source) = reaper {
        // The closure, and with it the Child, is gone: kill and reap by pid.
        let _ = signal_group(pid, Signal::KILL);
        if let Some(target) = target_pid(pid) {
            let mut status = 0;
            // SAFETY: blocking waitpid(2) on our own just-killed child; writes only `status`.
            unsafe { libc::waitpid(target, &mut status, 0) };
        }
        return Err(SpawnError::Reaper {
            program,
            pid,
            source,
        });
    }
    Ok(Spawned {
        pid,
        start_time,
        exit: rx,
    })
}
