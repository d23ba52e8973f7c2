//! Finding, starting, replacing and stopping the daemon.
//!
//! The CLI starts `bangerd` on demand, detached (its own session, so it outlives the CLI and
//! the terminal), and waits until it answers. When the running daemon's build identity
//! differs from this CLI's, the CLI asks it to shut down and starts its own build instead.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_api::Client;
use banger_api::types::{DaemonStatus, ShutdownReply};
use banger_core::build::BuildInfo;
use banger_core::layout::Layout;

use crate::error::CliError;

/// How long the CLI waits for a new daemon to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the CLI waits for an old daemon to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds a companion binary: next to the running executable first, then on `PATH`.
pub fn find_companion(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What happened while making sure a daemon of this build runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    AlreadyRunning,
    Started,
    Replaced { old: BuildInfo },
}

/// Returns a client to a daemon of this build, starting or replacing one as needed.
pub async fn ensure(
    layout: &Layout,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<(Client, DaemonStatus, Ensured), CliError> {
    let client = Client::new(layout.socket_path());
    let me = BuildInfo::current();
    let mut how = Ensured::Started;
    match client.get::<DaemonStatus>("/status").await {
        Ok(status) if status.build == me => return Ok((client, status, Ensured::AlreadyRunning)),
        Ok(status) => {
            stop(&client, status.pid).await?;
            how = Ensured::Replaced { old: status.build };
        }
        Err(e) if e.is_unreachable() => {}
        Err(e) => return Err(e.into()),
    }
    let status = start(layout, &client, path_var).await?;
    Ok((client, status, how))
}

/// Asks the daemon with `pid` to shut down and waits for it to exit (killing it if it hangs).
pub async fn stop(client: &Client, pid: u32) -> Result<(), CliError> {
    match client.post::<_, ShutdownReply>("/shutdown", &()).await {
        Ok(_) => {}
        Err(e) if e.is_unreachable() => return Ok(()),
        // An old daemon may not know the route; it gets a signal below instead.
        Err(_) => signal(pid, libc::SIGTERM),
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !alive(pid) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, libc::SIGKILL);
    tokio::time::sleep(Duration::from_millis(200)).await;
    if alive(pid) {
        return Err(CliError::DaemonStuck {
            pid,
            secs: STOP_TIMEOUT.as_secs(),
        });
    }
    Ok(())
}

fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a positive pid only sends a signal; it touches no memory.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// True while a process with `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state field follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn start(
    layout: &Layout,
    client: &Client,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<DaemonStatus, CliError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let bin = find_companion("bangerd", path_var)
        .ok_or_else(|| CliError::DaemonBinaryMissing { exe: exe.clone() })?;
    std::fs::create_dir_all(&layout.state_dir).map_err(|source| CliError::Dir {
        path: layout.state_dir.clone(),
        source,
    })?;
    let out_path = layout.state_dir.join("bangerd.stderr");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(|source| CliError::Dir {
            path: out_path.clone(),
            source,
        })?;
    let start_len = out.metadata().map(|m| m.len()).unwrap_or(0);
    let err_handle = out.try_clone().map_err(|source| CliError::Dir {
        path: out_path.clone(),
        source,
    })?;
    let mut cmd = Command::new(&bin);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err_handle);
    // SAFETY: setsid is async-signal-safe and the closure touches no other state; it detaches
    // the daemon from the CLI's session and terminal so it outlives both.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| CliError::DaemonSpawn {
        bin: bin.clone(),
        source,
    })?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut exited_at: Option<(Instant, String)> = None;
    let mut last_err = String::from("no answer yet");
    while Instant::now() < deadline {
        match client.get::<DaemonStatus>("/status").await {
            Ok(status) => return Ok(status),
            Err(e) => last_err = e.to_string(),
        }
        if exited_at.is_none()
            && let Ok(Some(st)) = child.try_wait()
        {
            exited_at = Some((Instant::now(), st.to_string()));
        }
        // A daemon that lost a start race exits at once while the winner comes up; give the
        // winner a moment before reporting the exit.
        if let Some((when, status)) = &exited_at
            && when.elapsed() > Duration::from_secs(2)
        {
            return Err(CliError::DaemonExited {
                status: status.clone(),
                stderr: tail_since(&out_path, start_len),
                log: out_path,
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(CliError::DaemonStartTimeout {
        secs: START_TIMEOUT.as_secs(),
        detail: last_err,
        log: out_path,
    })
}

/// The last lines written to `path` after byte offset `from`.
fn tail_since(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let new = text.get(from as usize..).unwrap_or_default();
    let s = String::from_utf8_lossy(new);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_sees_self_and_not_nonsense() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
    }

    #[test]
    fn companion_found_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("banger-test-companion");
        std::fs::write(&f, "").unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(
            find_companion("banger-test-companion", Some(&path)),
            Some(f)
        );
        assert_eq!(find_companion("banger-test-absent", Some(&path)), None);
    }
}
