//! What `/proc` says about processes: state, session and start time (`/proc/<pid>/stat`),
//! liveness (a zombie or dead task counts as dead), and the command-line scans that find the
//! VMM serving a socket or naming a run directory (`/proc/<pid>/cmdline`).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What banger reads from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// The state letter (`R`, `S`, `Z`...).
    pub(super) state: u8,
    pub(super) ppid: u32,
    /// Field 6, the session id.
    pub(super) session: u32,
    /// Field 22, `starttime`: clock ticks after boot when the process started.
    pub(super) start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub(super) fn proc_stat(pid: u32) -> Option<ProcStat> {
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

/// Whether some argument of process `pid` names a path inside `dir` (contains `dir/`). A
/// relative or root `dir` names nothing: every absolute path would match it.
pub(super) fn cmdline_names_dir(pid: u32, dir: &Path) -> bool {
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
/// ([`spawn_detached`](super::spawn_detached)); a process that merely mentions the directory does not.
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

/// The pid serving a control socket: the socket's peer credentials when they name a live
/// process, else the first live process with `arg` (the socket path, or the VMM argument
/// naming it) among its arguments.
pub(crate) fn pid_serving(peer: Option<u32>, arg: &OsStr) -> Option<u32> {
    peer.filter(|pid| alive(*pid))
        .or_else(|| pids_with_arg(arg).first().copied())
}
