//! Which process is a VM's VMM: [`VmmIdentity`] (pid, start time, run directory) as stored
//! with the VM, checked by [`identify`], which hands back a [`VmmProcess`] holding a pidfd
//! through which every signal to the VMM is sent, so a pid reused by another process is never
//! signalled.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use super::procfs::{cmdline_names_dir, proc_stat};
use super::signal::{Signal, SignalError, signal_outcome, target_pid};
use super::wait::{poll_until, reap_if_zombie_child};

/// What identifies the VMM of one VM: its pid, when that process started, and the run
/// directory its command line names. Recorded when the VMM is spawned and stored with the VM,
/// so that a pid reused by an unrelated process is recognised as such.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmIdentity {
    pub pid: u32,
    /// [`start_time`](super::start_time) of the VMM; `None` when it was not recorded (only the command line is
    /// checked then).
    pub start_time: Option<u64>,
    /// The VM's run directory ([`VmSpec::run_dir`](crate::VmSpec::run_dir)): an argument of every VMM banger starts
    /// names a path in it (its API, QMP or agent socket).
    pub run_dir: PathBuf,
}

/// Why a pid is not (or no longer) the VMM a [`VmmIdentity`] names.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("pid {pid} is not a process a VMM can be")]
    InvalidPid { pid: u32 },
    #[error("pid {pid} has exited")]
    Gone { pid: u32 },
    #[error(
        "pid {pid} started at tick {found}, the VMM at tick {expected}: the pid now belongs to another process"
    )]
    StartTime { pid: u32, expected: u64, found: u64 },
    #[error(
        "pid {pid} ({comm}) names nothing in {} on its command line: it is not this VM's VMM",
        run_dir.display()
    )]
    CommandLine {
        pid: u32,
        comm: String,
        run_dir: PathBuf,
    },
    #[error("cannot open a pidfd for pid {pid} (Linux 5.3 or later is needed)")]
    Pidfd { pid: u32, source: io::Error },
}

impl IdentityError {
    /// Whether the VMM is gone: it exited, or its pid now belongs to another process. The
    /// other errors mean the check itself could not be made.
    pub fn vmm_gone(&self) -> bool {
        !matches!(self, Self::Pidfd { .. })
    }
}

/// The one identity check every path that signals a VMM goes through: opens a pidfd for
/// `id.pid`, then checks that the process it names is alive, started at `id.start_time` and
/// names `id.run_dir` on its command line. What was read from `/proc` belongs to the pidfd's
/// process because that process is still alive after the reads (a pid is never reused while
/// its process exists), and every signal then goes through the pidfd: the pid cannot be
/// recycled between the check and the signal.
pub fn identify(id: &VmmIdentity) -> Result<VmmProcess, IdentityError> {
    let pid = id.pid;
    let Some(target) = target_pid(pid) else {
        return Err(IdentityError::InvalidPid { pid });
    };
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file descriptor or -1;
    // it touches no memory of this process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, target, 0) };
    if fd < 0 {
        let source = io::Error::last_os_error();
        return Err(match source.raw_os_error() {
            Some(libc::ESRCH) => IdentityError::Gone { pid },
            _ => IdentityError::Pidfd { pid, source },
        });
    }
    let Ok(fd) = RawFd::try_from(fd) else {
        return Err(IdentityError::Pidfd {
            pid,
            source: io::Error::other("pidfd_open returned an out-of-range descriptor"),
        });
    };
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let process = VmmProcess { pid, fd };
    let stat = proc_stat(pid)
        .filter(|s| s.state != b'Z' && s.state != b'X')
        .ok_or(IdentityError::Gone { pid })?;
    if let Some(expected) = id.start_time
        && stat.start_time != expected
    {
        return Err(IdentityError::StartTime {
            pid,
            expected,
            found: stat.start_time,
        });
    }
    if !cmdline_names_dir(pid, &id.run_dir) {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        return Err(IdentityError::CommandLine {
            pid,
            comm: comm.trim().to_string(),
            run_dir: id.run_dir.clone(),
        });
    }
    if process.exited() {
        // It died during the reads: they may describe a newer process with the same pid.
        return Err(IdentityError::Gone { pid });
    }
    Ok(process)
}

/// A VMM [`identify`] checked, held by a pidfd: signals reach this process or none.
#[derive(Debug)]
pub struct VmmProcess {
    pid: u32,
    fd: OwnedFd,
}

impl VmmProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` through the pidfd.
    pub fn signal(&self, sig: Signal) -> Result<(), SignalError> {
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, with a null siginfo (the kernel
        // fills it in as kill(2) would) and no flags; it touches no memory of this process.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig.raw(),
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        signal_outcome(rc == 0, self.pid, sig)
    }

    /// Whether the process has exited (a pidfd becomes readable then, zombie or reaped).
    pub fn exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd, with a zero timeout; it writes only `revents`.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Waits at most `timeout` for the process to exit (reaping it when it is a zombie child
    /// of this process); returns whether it did.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let exited = poll_until(timeout, || self.exited()).await;
        if exited {
            // The zombie still holds the pid, so this can only reap our own VMM.
            reap_if_zombie_child(self.pid);
        }
        exited
    }
}
