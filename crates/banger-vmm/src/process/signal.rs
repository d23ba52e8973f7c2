//! Signals: [`Signal`] (parsed and displayed like `kill` does), sending one to a single
//! process or to a VMM's process group, and the pids that are never signalled (`0`, `1`, and
//! values beyond `pid_t`: `kill(0, ...)`, `kill(-1, ...)` and init are never a VMM).

use std::fmt;
use std::io;
use std::str::FromStr;

/// A signal, as `kill` takes it: parsed from a name (`TERM`, `SIGTERM`, `term`, `RTMIN+2`) or
/// a number (`15`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub(super) i32);

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
    #[error("cannot send {signal} to pid {pid}")]
    Failed {
        pid: u32,
        signal: Signal,
        source: io::Error,
    },
}

/// `pid` as a `pid_t` that names exactly one process other than init.
pub(super) fn target_pid(pid: u32) -> Option<libc::pid_t> {
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
pub(super) fn signal_outcome(sent: bool, pid: u32, sig: Signal) -> Result<(), SignalError> {
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
/// spawned by [`spawn_detached`](super::spawn_detached) does). A group that no longer exists is not an error.
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
