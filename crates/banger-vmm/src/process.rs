//! Process control shared by every backend: spawning a VMM detached, identifying it, liveness,
//! signals, waiting for an exit, the stop sequence, and removing stale sockets.
//!
//! Liveness is read from `/proc/<pid>/stat`: a zombie (state `Z`) or a dead task (`X`) counts
//! as dead, because a VMM that exited but was not reaped yet runs nothing. Pids are `u32` as
//! std hands them out; `0`, `1` and values beyond `pid_t` are refused wherever a signal would
//! be sent, because `kill(0, ...)`, `kill(-1, ...)` and init are never a VMM.
//!
//! A stored pid is never trusted: [`identify`] checks that a pid is still the VMM a
//! [`VmmIdentity`] names (start time, command line naming the VM's run dir) and hands back a
//! [`VmmProcess`] holding a pidfd, through which every signal to a VMM is sent; [`stop`] does
//! so itself. A pid reused by another process is never signalled.
//!
//! Every wait here is bounded: [`stop`] asks the guest to shut down, waits at most its grace
//! period, sends `SIGKILL`, waits at most [`KILL_WAIT`], and then reports instead of hanging.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{Running, VmSpec, Vmm, VmmError};

/// How long [`stop`] waits for a process to disappear after `SIGKILL`.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// First and longest pause between two liveness checks while waiting for an exit.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

/// Stack of a reaper thread: it only calls `waitpid`.
const REAPER_STACK: usize = 64 * 1024;

/// A signal, as `kill` takes it: parsed from a name (`TERM`, `SIGTERM`, `term`, `RTMIN+2`) or
/// a number (`15`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

/// Classic signal names and their numbers on this platform; the first name of a number is the
/// one displayed (`IOT`, `CLD` and `POLL` are aliases).
const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

impl Signal {
    pub const HUP: Self = Self(libc::SIGHUP);
    pub const INT: Self = Self(libc::SIGINT);
    pub const QUIT: Self = Self(libc::SIGQUIT);
    pub const KILL: Self = Self(libc::SIGKILL);
    pub const USR1: Self = Self(libc::SIGUSR1);
    pub const USR2: Self = Self(libc::SIGUSR2);
    pub const TERM: Self = Self(libc::SIGTERM);
    pub const CONT: Self = Self(libc::SIGCONT);
    pub const STOP: Self = Self(libc::SIGSTOP);

    /// The signal with this number, if it is one (1 to `SIGRTMAX`).
    pub fn from_raw(number: i32) -> Option<Self> {
        (1..=libc::SIGRTMAX())
            .contains(&number)
            .then_some(Self(number))
    }

    /// The signal number.
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Signal {
    /// `SIGTERM`, `SIGRTMIN+3`, or the bare number for an unnamed one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((name, _)) = SIGNAL_NAMES.iter().find(|(_, n)| *n == self.0) {
            return write!(f, "SIG{name}");
        }
        let rtmin = libc::SIGRTMIN();
        if (rtmin..=libc::SIGRTMAX()).contains(&self.0) {
            return match self.0 - rtmin {
                0 => f.write_str("SIGRTMIN"),
                k => write!(f, "SIGRTMIN+{k}"),
            };
        }
        write!(f, "{}", self.0)
    }
}

/// A signal name or number `kill` would not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown signal {input:?}: expected a name such as TERM, SIGKILL or RTMIN+1, or a number from 1 to {max}"
)]
pub struct ParseSignalError {
    pub input: String,
    /// The highest signal number (`SIGRTMAX`).
    pub max: i32,
}

impl FromStr for Signal {
    type Err = ParseSignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSignalError {
            input: s.to_string(),
            max: libc::SIGRTMAX(),
        };
        let text = s.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<i32>()
                .ok()
                .and_then(Self::from_raw)
                .ok_or_else(err);
        }
        let upper = text.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, number)) = SIGNAL_NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(Self(*number));
        }
        let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        let offset = |rest: &str| -> Option<i32> {
            match rest {
                "" => Some(0),
                _ => rest
                    .strip_prefix(['+', '-'])
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<i32>().ok()),
            }
        };
        let number = if let Some(rest) = name.strip_prefix("RTMIN") {
            offset(rest)
                .filter(|_| !rest.starts_with('-'))
                .map(|k| rtmin + k)
        } else if let Some(rest) = name.strip_prefix("RTMAX") {
            offset(rest)
                .filter(|_| !rest.starts_with('+'))
                .map(|k| rtmax - k)
        } else {
            None
        };
        number
            .filter(|n| (rtmin..=rtmax).contains(n))
            .map(Self)
            .ok_or_else(err)
    }
}

/// A signal that could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("refusing to send {signal} to pid {pid}: not a process a VMM can be")]
    InvalidPid { pid: u32, signal: Signal },
    #[error("cannot send {signal} to pid {pid}: no such process")]
    NoSuchProcess { pid: u32, signal: Signal },
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Failed {
        pid: u32,
        signal: Signal,
        source: io::Error,
    },
}

/// `pid` as a `pid_t` that names exactly one process other than init.
fn target_pid(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|p| *p > 1)
}

/// Sends `sig` to the process `pid` (never to a group: see the module docs for refused pids).
pub fn signal(pid: u32, sig: Signal) -> Result<(), SignalError> {
    let Some(target) = target_pid(pid) else {
        return Err(SignalError::InvalidPid { pid, signal: sig });
    };
    // SAFETY: kill(2) with a positive pid only sends a signal; no memory is shared.
    let sent = unsafe { libc::kill(target, sig.raw()) } == 0;
    signal_outcome(sent, pid, sig)
}

/// The result of a signal syscall that succeeded (`sent`) or set `errno`.
fn signal_outcome(sent: bool, pid: u32, sig: Signal) -> Result<(), SignalError> {
    if sent {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ESRCH) {
        Err(SignalError::NoSuchProcess { pid, signal: sig })
    } else {
        Err(SignalError::Failed {
            pid,
            signal: sig,
            source,
        })
    }
}

/// Sends `sig` to the process group `pgid` (a process that leads its own group, as every VMM
/// spawned by [`spawn_detached`] does). A group that no longer exists is not an error.
pub(crate) fn signal_group(pgid: u32, sig: Signal) -> Result<(), SignalError> {
    let Some(target) = target_pid(pgid) else {
        return Err(SignalError::InvalidPid {
            pid: pgid,
            signal: sig,
        });
    };
    // SAFETY: kill(2) with a negative pid (< -1) only signals that process group.
    if unsafe { libc::kill(-target, sig.raw()) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    match source.raw_os_error() {
        Some(libc::ESRCH) => Ok(()),
        _ => Err(SignalError::Failed {
            pid: pgid,
            signal: sig,
            source,
        }),
    }
}

/// What banger reads from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// The state letter (`R`, `S`, `Z`...).
    state: u8,
    ppid: u32,
    /// Field 6, the session id.
    session: u32,
    /// Field 22, `starttime`: clock ticks after boot when the process started.
    start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may contain spaces and parentheses, so parse after the
    // last ')'. What follows starts with field 3, so field 22 is the 20th.
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let session = fields.nth(1)?.parse().ok()?;
    let start_time = fields.nth(15)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        session,
        start_time,
    })
}

/// When process `pid` started (clock ticks after boot, field 22 of `/proc/<pid>/stat`): with
/// the pid, what tells this process from a later one that got the same pid.
pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

/// Whether `pid` is a running (or sleeping, stopped...) process. Zombies and dead tasks count
/// as dead; so do `0` and pids beyond `pid_t`.
pub fn alive(pid: u32) -> bool {
    if pid == 0 || libc::pid_t::try_from(pid).is_err() {
        return false;
    }
    proc_stat(pid).is_some_and(|s| s.state != b'Z' && s.state != b'X')
}

/// Reaps `pid` if it is a zombie child of this process (never blocks, never touches other
/// processes' children).
fn reap_if_zombie_child(pid: u32) {
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
async fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
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

/// What identifies the VMM of one VM: its pid, when that process started, and the run
/// directory its command line names. Recorded when the VMM is spawned and stored with the VM,
/// so that a pid reused by an unrelated process is recognised as such.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmIdentity {
    pub pid: u32,
    /// [`start_time`] of the VMM; `None` when it was not recorded (only the command line is
    /// checked then).
    pub start_time: Option<u64>,
    /// The VM's run directory ([`VmSpec::run_dir`]): an argument of every VMM banger starts
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
    #[error("cannot open a pidfd for pid {pid} (Linux 5.3 or later is needed): {source}")]
    Pidfd { pid: u32, source: io::Error },
}

impl IdentityError {
    /// Whether the VMM is gone: it exited, or its pid now belongs to another process. The
    /// other errors mean the check itself could not be made.
    pub fn vmm_gone(&self) -> bool {
        !matches!(self, Self::Pidfd { .. })
    }
}

/// Whether some argument of process `pid` names a path inside `dir` (contains `dir/`). A
/// relative or root `dir` names nothing: every absolute path would match it.
fn cmdline_names_dir(pid: u32, dir: &Path) -> bool {
    if !dir.is_absolute() || dir.parent().is_none() {
        return false;
    }
    let mut needle = dir.as_os_str().as_bytes().to_vec();
    needle.push(b'/');
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .any(|arg| arg.windows(needle.len()).any(|w| w == needle.as_slice()))
    })
}

/// Live session leaders (other than this process) whose command line names a path inside
/// `run_dir`, in ascending pid order: the VMM of a VM whose pid was never recorded (a daemon
/// killed between spawning it and storing its pid). Every VMM leads its own session
/// ([`spawn_detached`]); a process that merely mentions the directory does not.
pub fn pids_in_dir(run_dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own && cmdline_names_dir(pid, run_dir))
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|s| s.session == pid && s.state != b'Z' && s.state != b'X')
        })
        .collect();
    pids.sort_unstable();
    pids
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
    #[error("VM {vm_id}: cannot kill VMM pid {pid}: {source}")]
    Kill {
        vm_id: String,
        pid: u32,
        source: SignalError,
    },
    #[error("VM {vm_id}: cannot check the VMM before stopping it: {source}")]
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
/// left to the caller ([`cleanup_sockets`]; a later start removes stale ones anyway).
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
            tracing::warn!(vm_id, pid, %error, "not signalling a process that is not the VMM");
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
            tracing::warn!(vm_id, pid, %error, "shutdown request failed; killing the VMM");
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

/// Sockets that could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cannot list {}: {source}", dir.display())]
    ReadDir { dir: PathBuf, source: io::Error },
    #[error("cannot remove the socket {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

/// Removes every Unix socket directly in `run_dir` (the VMM's API, vsock and agent sockets;
/// the directory belongs to one VM's VMM) and returns the paths removed. A missing directory
/// has nothing to remove. Other files are left alone.
pub fn cleanup_sockets(run_dir: &Path) -> Result<Vec<PathBuf>, CleanupError> {
    let entries = match fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CleanupError::ReadDir {
                dir: run_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CleanupError::ReadDir {
            dir: run_dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_socket() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CleanupError::Remove { path, source }),
        }
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(CleanupError::Remove { path, source }),
        }
    }
    removed.sort();
    Ok(removed)
}

/// Live processes (other than this one) with `arg` as one of their command-line arguments,
/// found by scanning `/proc/*/cmdline`; in ascending pid order. Processes that cannot be read
/// are skipped.
pub fn pids_with_arg(arg: &OsStr) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let wanted = arg.as_bytes();
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|a| a == wanted))
        })
        .filter(|&pid| alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// A program that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {}: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },
    #[error("cannot start a thread to wait for {} (pid {pid}, killed): {source}", program.display())]
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
    /// It was reaped by someone else (e.g. [`wait_exit`]), so the status is unknown.
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

/// Kills a VMM that is being started unless disarmed: its whole process group gets
/// `SIGKILL`, and once it is gone every socket in its run directory is removed. Dropping an
/// armed guard (a cancelled start) does the same on a thread of its own.
#[derive(Debug)]
pub(crate) struct StartGuard {
    pid: u32,
    run_dir: PathBuf,
    armed: bool,
}

impl StartGuard {
    pub(crate) fn new(pid: u32, run_dir: &Path) -> Self {
        Self {
            pid,
            run_dir: run_dir.to_path_buf(),
            armed: true,
        }
    }

    /// The start succeeded: leave the VMM running.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    /// The start failed: kill, wait for the exit, remove the sockets. The guard stays armed
    /// until the end, so an abort that is itself dropped half-way still cleans up.
    pub(crate) async fn abort(mut self) {
        kill_group(self.pid);
        if !wait_exit(self.pid, KILL_WAIT).await {
            tracing::warn!(
                pid = self.pid,
                "VMM still alive after SIGKILL during a failed start"
            );
        }
        remove_sockets(&self.run_dir);
        self.armed = false;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pid, run_dir) = (self.pid, std::mem::take(&mut self.run_dir));
        kill_group(pid);
        let cleanup = move || {
            wait_exit_blocking(pid, KILL_WAIT);
            remove_sockets(&run_dir);
        };
        // Waiting must not block the runtime thread dropping the start future.
        if let Err(error) = std::thread::Builder::new()
            .name(format!("abort-{pid}"))
            .stack_size(REAPER_STACK)
            .spawn(cleanup)
        {
            tracing::warn!(pid, %error, "cannot start a cleanup thread for a cancelled VMM start");
        }
    }
}

fn kill_group(pid: u32) {
    if let Err(error) = signal_group(pid, Signal::KILL) {
        tracing::warn!(pid, %error, "cannot kill the VMM of a failed start");
    }
}

fn remove_sockets(run_dir: &Path) {
    if let Err(error) = cleanup_sockets(run_dir) {
        tracing::warn!(%error, "cannot remove the sockets of a failed VMM start");
    }
}

/// The last `max_lines` lines of what the file holds beyond byte `from` (read from at most
/// its last `max_bytes`), trimmed; empty when it cannot be read.
pub(crate) fn tail(path: &Path, from: u64, max_lines: usize, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A log shorter than `from` was rotated (truncated) since: all of it is new.
    let from = if from > len { 0 } else { from };
    let start = len.saturating_sub(max_bytes).max(from);
    if start >= len || file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > from && !lines.is_empty() {
        // The first line was cut by the byte limit.
        lines.remove(0);
    }
    let keep = lines.len().saturating_sub(max_lines);
    lines[keep..].join("\n").trim().to_string()
}

/// How many lines and bytes of a log an error quotes.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: u64 = 4096;

/// A VMM process being started: what both backends need to wait for its control socket and
/// to explain an early exit with what it wrote during this start.
pub(crate) struct Launch<'a> {
    pub(crate) spec: &'a VmSpec,
    pub(crate) spawned: Spawned,
    /// Its control socket (Firecracker's API socket, QEMU's QMP socket).
    pub(crate) control_sock: &'a Path,
    /// Lengths of the logs before the spawn: what the VMM wrote starts there.
    pub(crate) console_from: u64,
    pub(crate) vmm_log_from: u64,
}

impl Launch<'_> {
    /// The error for a VMM that exited during start, quoting what it wrote during this start
    /// (its stderr; else the console).
    pub(crate) fn exited(&self, bin: &Path, exit: ChildExit) -> VmmError {
        let spec = self.spec;
        let mut log = spec.vmm_log.clone();
        let mut tail = tail(&spec.vmm_log, self.vmm_log_from, TAIL_LINES, TAIL_BYTES);
        if tail.is_empty() {
            let console = self::tail(&spec.console_log, self.console_from, TAIL_LINES, TAIL_BYTES);
            if console.is_empty() {
                tail = "(it wrote nothing to the VMM or console log)".to_string();
            } else {
                log = spec.console_log.clone();
                tail = console;
            }
        }
        VmmError::ExitedDuringStart {
            vm_id: spec.vm_id.clone(),
            bin: bin.to_path_buf(),
            status: exit.to_string(),
            log,
            tail,
        }
    }

    /// Polls `probe` every `poll` until it succeeds, the process exits (an error quoting its
    /// log), or `ready` passes ([`VmmError::NotReady`] with the last probe error).
    pub(crate) async fn wait_ready<F, Fut, E>(
        &self,
        bin: &Path,
        ready: Duration,
        poll: Duration,
        mut probe: F,
    ) -> Result<(), VmmError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let deadline = Instant::now() + ready;
        loop {
            if let Some(exit) = self.spawned.exit() {
                return Err(self.exited(bin, exit));
            }
            let last_error = match probe().await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if let Some(exit) = self.spawned.exit() {
                return Err(self.exited(bin, exit));
            }
            if Instant::now() >= deadline {
                return Err(VmmError::NotReady {
                    vm_id: self.spec.vm_id.clone(),
                    bin: bin.to_path_buf(),
                    socket: self.control_sock.to_path_buf(),
                    after: ready,
                    last_error: last_error.to_string(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// Where a VMM binary comes from: its name on `PATH`, the config key and environment variable
/// that choose it explicitly, and how to install it.
#[derive(Debug, Clone, Copy)]
pub struct BinarySource {
    pub name: &'static str,
    pub config_key: &'static str,
    pub env_var: &'static str,
    pub install_hint: &'static str,
}

/// Why no VMM binary could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{config_key} {} (from the config file) cannot be used: {reason}", path.display())]
    Config {
        config_key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{env_var}={} cannot be used: {reason}", path.display())]
    Env {
        env_var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "no `{name}` executable on PATH ({searched}): {install_hint}, or set {config_key} in the config file or {env_var}"
    )]
    NotOnPath {
        name: &'static str,
        config_key: &'static str,
        env_var: &'static str,
        install_hint: &'static str,
        searched: String,
    },
}

/// Why `path` is not an executable regular file, if it is not.
fn unusable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match fs::metadata(path) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_file() => Some("not a regular file".to_string()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("not executable".to_string()),
        Ok(_) => None,
    }
}

/// Chooses a VMM binary: the config file's choice, else the environment variable's, else
/// `source.name` in a directory of `path_var` (`PATH`). The caller reads the environment;
/// empty values count as unset. An explicit choice that is not an executable file is an
/// error, not a reason to fall through to the next source.
pub fn locate_binary(
    source: &BinarySource,
    config_bin: Option<PathBuf>,
    env_bin: Option<std::ffi::OsString>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, LocateError> {
    if let Some(path) = config_bin.filter(|p| !p.as_os_str().is_empty()) {
        return match unusable(&path) {
            None => Ok(path),
            Some(reason) => Err(LocateError::Config {
                config_key: source.config_key,
                path,
                reason,
            }),
        };
    }
    if let Some(path) = env_bin.filter(|p| !p.is_empty()).map(PathBuf::from) {
        return match unusable(&path) {
            None => Ok(path),
            Some(reason) => Err(LocateError::Env {
                env_var: source.env_var,
                path,
                reason,
            }),
        };
    }
    let path_var = path_var.unwrap_or_default();
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(source.name))
        .find(|candidate| unusable(candidate).is_none())
        .ok_or_else(|| LocateError::NotOnPath {
            name: source.name,
            config_key: source.config_key,
            env_var: source.env_var,
            install_hint: source.install_hint,
            searched: path_var.to_string_lossy().into_owned(),
        })
}

/// The pid serving a control socket: the socket's peer credentials when they name a live
/// process, else the first live process with `arg` (the socket path, or the VMM argument
/// naming it) among its arguments.
pub(crate) fn pid_serving(peer: Option<u32>, arg: &OsStr) -> Option<u32> {
    peer.filter(|pid| alive(*pid))
        .or_else(|| pids_with_arg(arg).first().copied())
}

/// Opens a log for appending; also returns its length, where this start's output begins.
///
/// `O_APPEND` matters beyond this start: the daemon caps logs by truncating them in place
/// (`banger_daemon::logcap`), and only an appending writer continues at the new end instead
/// of leaving a hole the size of everything written before.
pub(crate) fn open_log(vm_id: &str, path: &Path) -> Result<(File, u64), VmmError> {
    let error = |source| VmmError::OpenLog {
        vm_id: vm_id.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(error)?;
    let len = file.metadata().map_err(error)?.len();
    Ok((file, len))
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn signals_parse_like_kill() {
        for (text, number) in [
            ("TERM", libc::SIGTERM),
            ("SIGTERM", libc::SIGTERM),
            ("term", libc::SIGTERM),
            ("sigkill", libc::SIGKILL),
            ("KILL", libc::SIGKILL),
            ("9", libc::SIGKILL),
            (" 15 ", libc::SIGTERM),
            ("INT", libc::SIGINT),
            ("HUP", libc::SIGHUP),
            ("QUIT", libc::SIGQUIT),
            ("USR1", libc::SIGUSR1),
            ("SIGUSR2", libc::SIGUSR2),
            ("CLD", libc::SIGCHLD),
            ("IOT", libc::SIGABRT),
            ("RTMIN", libc::SIGRTMIN()),
            ("SIGRTMIN+2", libc::SIGRTMIN() + 2),
            ("RTMAX-1", libc::SIGRTMAX() - 1),
            ("RTMAX", libc::SIGRTMAX()),
        ] {
            assert_eq!(
                text.parse::<Signal>().map(Signal::raw),
                Ok(number),
                "{text:?}"
            );
        }
        let max = libc::SIGRTMAX();
        assert_eq!(max.to_string().parse::<Signal>().map(Signal::raw), Ok(max));
        for bad in [
            "",
            "0",
            "-9",
            "+9",
            &(max + 1).to_string(),
            "99999999999",
            "TERMINATE",
            "SIG",
            "RTMIN-1",
            "RTMAX+1",
            "RTMIN+",
            "RTMIN+x",
            &format!("RTMIN+{}", max),
        ] {
            assert!(bad.parse::<Signal>().is_err(), "{bad:?} parsed");
        }
        let err = "NOPE".parse::<Signal>().unwrap_err();
        assert!(
            err.to_string().starts_with("unknown signal \"NOPE\""),
            "{err}"
        );
    }

    #[test]
    fn signals_display_their_names() {
        assert_eq!(Signal::TERM.to_string(), "SIGTERM");
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
        assert_eq!(Signal(libc::SIGABRT).to_string(), "SIGABRT");
        assert_eq!(Signal(libc::SIGCHLD).to_string(), "SIGCHLD");
        assert_eq!(Signal(libc::SIGRTMIN()).to_string(), "SIGRTMIN");
        assert_eq!(Signal(libc::SIGRTMIN() + 3).to_string(), "SIGRTMIN+3");
        for sig in [Signal::HUP, Signal::USR2, Signal(libc::SIGRTMIN() + 1)] {
            assert_eq!(sig.to_string().parse::<Signal>().unwrap(), sig);
        }
        assert_eq!(Signal::from_raw(0), None);
        assert_eq!(Signal::from_raw(9), Some(Signal::KILL));
    }

    #[test]
    fn refuses_pids_that_are_not_one_process() {
        for pid in [0, 1, u32::MAX, 1 << 31] {
            assert!(
                matches!(
                    signal(pid, Signal::TERM),
                    Err(SignalError::InvalidPid { .. })
                ),
                "{pid}"
            );
        }
        assert!(!alive(0));
        assert!(!alive(u32::MAX));
        assert!(alive(std::process::id()));
    }

    fn sleeper() -> Spawned {
        let mut cmd = Command::new("sleep");
        cmd.arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        spawn_detached(cmd).expect("spawn sleep")
    }

    #[tokio::test]
    async fn detached_child_leads_its_own_session_and_is_reaped() {
        let mut child = sleeper();
        let pid = child.pid();
        assert!(alive(pid));
        // SAFETY: getsid/getpgid only read the process's ids.
        let (sid, pgid) = unsafe { (libc::getsid(pid as i32), libc::getpgid(pid as i32)) };
        assert_eq!(sid, pid as i32);
        assert_eq!(pgid, pid as i32);
        assert_eq!(child.exit(), None);
        assert!(pids_with_arg(OsStr::new("3600")).contains(&pid));

        signal(pid, Signal::TERM).expect("SIGTERM");
        let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("reaped");
        assert_eq!(exit.to_string(), "signal: 15 (SIGTERM)");
        assert!(!alive(pid));
        assert!(wait_exit(pid, Duration::ZERO).await);
        assert!(matches!(
            signal(pid, Signal::TERM),
            Err(SignalError::NoSuchProcess { .. })
        ));
    }

    #[tokio::test]
    async fn wait_exit_times_out_on_a_live_process() {
        let child = sleeper();
        let started = Instant::now();
        assert!(!wait_exit(child.pid(), Duration::from_millis(120)).await);
        assert!(started.elapsed() >= Duration::from_millis(120));
        signal_group(child.pid(), Signal::KILL).expect("kill group");
        assert!(wait_exit(child.pid(), Duration::from_secs(5)).await);
    }

    #[tokio::test]
    #[allow(
        clippy::zombie_processes,
        reason = "the zombie is made on purpose, and wait_exit reaps it"
    )]
    async fn zombies_are_dead_and_wait_exit_reaps_them() {
        // A plain std child nobody waits for stays a zombie until reaped.
        let child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_stat(pid).map(|s| s.state) != Some(b'Z') {
            assert!(Instant::now() < deadline, "true never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!alive(pid));
        assert!(wait_exit(pid, Duration::from_secs(1)).await);
        assert_eq!(proc_stat(pid), None, "the zombie was reaped");
    }

    /// A `sleep 3600` whose `argv[0]` is `dir/vmm`: its command line names `dir` like a VMM's.
    fn sleeper_in(dir: &Path) -> Spawned {
        let mut cmd = Command::new("sleep");
        cmd.arg0(dir.join("vmm"))
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        spawn_detached(cmd).expect("spawn sleep")
    }

    fn identity(child: &Spawned, run_dir: &Path) -> VmmIdentity {
        VmmIdentity {
            pid: child.pid(),
            start_time: child.start_time(),
            run_dir: run_dir.to_path_buf(),
        }
    }

    #[tokio::test]
    async fn identify_accepts_the_vmm_and_signals_it_through_its_pidfd() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = sleeper_in(dir.path());
        let id = identity(&child, dir.path());
        assert_eq!(id.start_time, start_time(child.pid()));
        assert!(id.start_time.is_some());
        let process = identify(&id).expect("the VMM is identified");
        assert_eq!(process.pid(), child.pid());
        assert!(!process.exited());
        // Without a recorded start time the command line alone decides.
        identify(&VmmIdentity {
            start_time: None,
            ..id.clone()
        })
        .expect("identified by its command line");
        assert_eq!(pids_in_dir(dir.path()), vec![child.pid()]);
        process
            .signal(Signal::TERM)
            .expect("SIGTERM through the pidfd");
        assert!(process.wait_exit(Duration::from_secs(5)).await);
        assert!(process.exited());
        child.wait().await;
        assert!(matches!(identify(&id), Err(IdentityError::Gone { .. })));
        assert!(matches!(
            process.signal(Signal::KILL),
            Err(SignalError::NoSuchProcess { .. })
        ));
        assert!(pids_in_dir(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_wrong_start_time_is_not_the_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let child = sleeper_in(dir.path());
        let recorded = child.start_time().unwrap();
        for other in [recorded + 1, recorded.saturating_sub(1), 0, u64::MAX] {
            if other == recorded {
                continue;
            }
            let err = identify(&VmmIdentity {
                start_time: Some(other),
                ..identity(&child, dir.path())
            })
            .unwrap_err();
            assert!(
                matches!(err, IdentityError::StartTime { expected, found, .. } if expected == other && found == recorded),
                "{err}"
            );
            assert!(err.vmm_gone());
            assert!(
                err.to_string().contains("belongs to another process"),
                "{err}"
            );
        }
        assert!(alive(child.pid()), "a mismatch signals nothing");
        signal_group(child.pid(), Signal::KILL).unwrap();
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_wrong_command_line_is_not_the_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        // An unrelated process: right pid and start time, but it names another directory.
        let child = sleeper_in(other_dir.path());
        let err = identify(&identity(&child, dir.path())).unwrap_err();
        assert!(
            matches!(&err, IdentityError::CommandLine { comm, .. } if comm == "sleep"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        // A directory whose name only extends the run dir's is another directory.
        let longer = PathBuf::from(format!("{}x", other_dir.path().display()));
        assert!(matches!(
            identify(&identity(&child, &longer)),
            Err(IdentityError::CommandLine { .. })
        ));
        // "/" and relative paths name nothing (every absolute path is "in" `/`).
        for bad in [Path::new("/"), Path::new(""), Path::new("tmp")] {
            assert!(
                matches!(
                    identify(&identity(&child, bad)),
                    Err(IdentityError::CommandLine { .. })
                ),
                "{bad:?}"
            );
            assert!(pids_in_dir(bad).is_empty(), "{bad:?}");
        }
        assert!(pids_in_dir(dir.path()).is_empty());
        // A process that names the run dir but does not lead its own session is no VMM.
        let mut plain = Command::new("sleep")
            .arg0(dir.path().join("vmm"))
            .arg("3600")
            .spawn()
            .unwrap();
        assert!(pids_in_dir(dir.path()).is_empty());
        plain.kill().unwrap();
        plain.wait().unwrap();
        assert!(alive(child.pid()), "a mismatch signals nothing");
        signal_group(child.pid(), Signal::KILL).unwrap();
    }

    #[tokio::test]
    #[allow(
        clippy::zombie_processes,
        reason = "the zombie is made on purpose, and wait_exit reaps it"
    )]
    async fn adversarial_pid_reuse_dead_and_invalid_pids_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let gone = |pid| VmmIdentity {
            pid,
            start_time: None,
            run_dir: dir.path().to_path_buf(),
        };
        // A zombie is dead, even though its pid is still taken.
        let zombie = Command::new("true").spawn().expect("spawn true");
        let pid = zombie.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_stat(pid).map(|s| s.state) != Some(b'Z') {
            assert!(Instant::now() < deadline, "true never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(
            identify(&gone(pid)),
            Err(IdentityError::Gone { .. })
        ));
        assert!(wait_exit(pid, Duration::from_secs(1)).await);
        // Reaped: no process has that pid any more.
        assert!(matches!(
            identify(&gone(pid)),
            Err(IdentityError::Gone { .. })
        ));
        for bad in [0, 1, u32::MAX, 1 << 31] {
            assert!(
                matches!(identify(&gone(bad)), Err(IdentityError::InvalidPid { .. })),
                "{bad}"
            );
        }
        // This process is alive but is not a VMM of that directory.
        assert!(matches!(
            identify(&gone(std::process::id())),
            Err(IdentityError::CommandLine { .. })
        ));
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_stop_never_signals_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let child = sleeper_in(other_dir.path());
        let vmm = crate::fake::FakeVmm::new();
        let running = Running {
            vm_id: "aaaa000000000009".into(),
            pid: child.pid(),
            start_time: child.start_time(),
            api_socket: dir.path().join("api.sock"),
            agent: crate::AgentEndpoint::Unix(dir.path().join("agent.sock")),
        };
        assert_eq!(
            stop(&vmm, &running, Duration::from_millis(100))
                .await
                .unwrap(),
            StopOutcome::NotRunning
        );
        assert!(
            vmm.calls().is_empty(),
            "not even a shutdown request was sent"
        );
        assert!(alive(child.pid()));
        signal_group(child.pid(), Signal::KILL).unwrap();
    }

    #[test]
    fn spawn_error_names_the_program() {
        let err = spawn_detached(Command::new("/nonexistent/vmm")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmm"), "{err}");
    }

    #[test]
    fn cleanup_removes_only_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("api.sock");
        let b = dir.path().join("vsock.sock_10789");
        let _l1 = std::os::unix::net::UnixListener::bind(&a).unwrap();
        let _l2 = std::os::unix::net::UnixListener::bind(&b).unwrap();
        fs::write(dir.path().join("notes.txt"), "keep").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(
            cleanup_sockets(dir.path()).unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert!(!a.exists() && !b.exists());
        assert!(dir.path().join("notes.txt").exists());
        assert!(dir.path().join("sub").exists());
        assert!(cleanup_sockets(dir.path()).unwrap().is_empty());
        assert!(
            cleanup_sockets(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
        let err = cleanup_sockets(&dir.path().join("notes.txt")).unwrap_err();
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    #[test]
    fn tail_keeps_the_last_whole_lines_after_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, &text).unwrap();
        assert_eq!(tail(&path, 0, 2, 4096), "line 49\nline 50");
        // 20 bytes from the end cut "line 48" in the middle: it is dropped.
        assert_eq!(tail(&path, 0, 10, 20), "line 49\nline 50");
        // Only what was written after `from` counts, and it starts on a whole line.
        let from = text.len() as u64 - 8;
        assert_eq!(tail(&path, from, 10, 4096), "line 50");
        assert_eq!(tail(&path, text.len() as u64, 10, 4096), "");
        // Rotated since `from` was taken: the log restarted, so all of it counts.
        assert_eq!(
            tail(&path, text.len() as u64 + 100, 2, 4096),
            "line 49\nline 50"
        );
        assert_eq!(tail(&dir.path().join("missing"), 0, 5, 100), "");
    }
}
