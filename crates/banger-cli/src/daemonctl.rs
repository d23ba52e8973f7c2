//! Finding, starting, replacing and stopping the daemon.
//!
//! The CLI starts `bangerd` on demand, detached (its own session, so it outlives the CLI and
//! the terminal), and waits until it answers. When the running daemon's build identity
//! differs from this CLI's, the CLI asks it to shut down and starts its own build instead.
//!
//! Before it talks to a socket the CLI checks the layout's dirs (ours, not writable by others)
//! and that the socket is a socket of ours, not a symlink; every call has a timeout
//! (`BANGER_CLIENT_TIMEOUT`, default 30 s), so a stopped or wedged daemon gives an error naming
//! its pid and log instead of a silent hang.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_api::Client;
use banger_api::Route;
use banger_api::types::{DaemonStatus, ShutdownReply};
use banger_core::build::BuildInfo;
use banger_core::error::chain;
use banger_core::layout::Layout;
use banger_core::private::{self, FileMode};
use banger_core::probe;

use crate::HostEnv;
use crate::error::CliError;

/// How long the CLI waits for a new daemon to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the CLI waits for an old daemon to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for a silent daemon unless `BANGER_CLIENT_TIMEOUT` says otherwise.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The variable that sets the client timeout.
pub const CLIENT_TIMEOUT_ENV: &str = "BANGER_CLIENT_TIMEOUT";

/// How the CLI talks to its daemon: as whom, and how long it waits for a silent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub euid: u32,
    pub timeout: Duration,
}

/// Parses `BANGER_CLIENT_TIMEOUT`: seconds (`30`, `2.5`) or milliseconds (`500ms`), more than
/// 0 and at most an hour. Unset or empty means [`DEFAULT_CLIENT_TIMEOUT`].
pub fn client_timeout(value: Option<&OsStr>) -> Result<Duration, CliError> {
    let Some(raw) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_CLIENT_TIMEOUT);
    };
    let text = raw.to_string_lossy().trim().to_string();
    let bad = |why: &str| CliError::BadEnv {
        var: CLIENT_TIMEOUT_ENV,
        value: text.clone(),
        why: why.to_string(),
    };
    let (number, scale) = match text.strip_suffix("ms") {
        Some(n) => (n.trim(), 0.001),
        None => (text.strip_suffix('s').unwrap_or(&text).trim(), 1.0),
    };
    let secs = number
        .parse::<f64>()
        .map_err(|_| bad("expected seconds (30, 2.5) or milliseconds (500ms)"))?
        * scale;
    if !(secs.is_finite() && (0.001..=3600.0).contains(&secs)) {
        return Err(bad("must be between 1ms and 3600 s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A client for the layout's daemon, once the dirs and the socket are checked: every existing
/// root dir must be ours and not writable by others, and the socket path absent or a socket of
/// ours (never a symlink), so banger never talks to a daemon another user planted.
pub fn client(layout: &Layout, conn: Conn) -> Result<Client, CliError> {
    layout.check_existing(conn.euid)?;
    private::check_socket(&layout.socket_path(), conn.euid)?;
    Ok(Client::new(layout.socket_path())
        .with_timeout(conn.timeout)
        .with_log(layout.log_file()))
}

/// What happened while making sure a daemon of this build runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    AlreadyRunning,
    Started,
    Replaced { old: BuildInfo },
}

/// Returns a client to a daemon of this build, starting or replacing one as needed.
///
/// `early` is the request the caller makes next, on a client of its own (`|_| async {}` for
/// none): it goes out at the same time as the build check rather than after it, one round
/// trip to the daemon fewer whenever a daemon of this build already runs, which is every call
/// but the first. `early`'s result comes back only then. When no daemon answered, or one of
/// another build did, it is dropped (closing whatever it opened there) before that daemon is
/// replaced or started, and `None` tells the caller to make the request again on the client
/// returned.
pub async fn ensure<T, F>(
    layout: &Layout,
    conn: Conn,
    env: &HostEnv,
    early: impl FnOnce(Client) -> F,
) -> Result<(Client, DaemonStatus, Ensured, Option<T>), CliError>
where
    F: Future<Output = T>,
{
    let client = client(layout, conn)?;
    let me = BuildInfo::current();
    let mut how = Ensured::Started;
    let (answer, early) = tokio::join!(
        client.get::<DaemonStatus>(Route::Status),
        early(client.clone())
    );
    // The system daemon (`bangerd.service`) is systemd's to start and `system install`'s to
    // update: it is used whatever its build, and never started or replaced from here.
    let system = layout.runtime_dir == Path::new(banger_core::layout::SYSTEM_DAEMON_RUNTIME_DIR);
    match answer {
        Ok(status) if status.build == me || system => {
            return Ok((client, status, Ensured::AlreadyRunning, Some(early)));
        }
        Err(e) if system && e.is_unreachable() => {
            return Err(CliError::SystemDaemonDown {
                socket: layout.socket_path(),
                source: Box::new(e),
            });
        }
        Ok(status) => {
            drop(early);
            stop(&client, status.pid).await?;
            how = Ensured::Replaced { old: status.build };
        }
        Err(e) if e.is_unreachable() => {}
        Err(e) => return Err(e.into()),
    }
    let status = start(layout, conn, &client, env).await?;
    Ok((client, status, how, None))
}

/// Asks the daemon with `pid` to shut down and waits for it to exit (killing it if it hangs).
pub async fn stop(client: &Client, pid: u32) -> Result<(), CliError> {
    match client.post::<_, ShutdownReply>(Route::Shutdown, &()).await {
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
    conn: Conn,
    client: &Client,
    env: &HostEnv,
) -> Result<DaemonStatus, CliError> {
    let bin =
        probe::find_companion("bangerd", env.exe_dir(), &env.search_path()).ok_or_else(|| {
            CliError::DaemonBinaryMissing {
                exe: env.exe.clone().unwrap_or_default(),
            }
        })?;
    // The daemon checks these again; the CLI creates the stderr file, so it checks first.
    layout.ensure_state_dir(conn.euid)?;
    let out_path = layout.state_dir.join("bangerd.stderr");
    let out = private::open_file(&out_path, FileMode::Append, conn.euid)?;
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
        // Each poll is bounded too: a daemon that binds and then hangs cannot stall this loop.
        let poll = client.clone().with_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), conn.timeout),
        );
        match poll.get::<DaemonStatus>(Route::Status).await {
            Ok(status) => return Ok(status),
            Err(e) => last_err = chain(&e),
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

    #[tokio::test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    async fn the_system_daemon_is_never_started_from_the_cli() {
        let run = Path::new(banger_core::layout::SYSTEM_DAEMON_RUNTIME_DIR);
        if run.exists() {
            eprintln!(
                "skipped: a system daemon is installed here ({})",
                run.display()
            );
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let layout = Layout {
            config_dir: state.path().join("config"),
            state_dir: state.path().join("state"),
            runtime_dir: run.to_path_buf(),
        };
        let conn = Conn {
            euid: crate::uid(),
            timeout: Duration::from_secs(2),
        };
        // A bangerd next to the CLI would be started for any other layout.
        let env = HostEnv {
            exe: Some(state.path().join("banger")),
            ..HostEnv::default()
        };
        std::fs::write(state.path().join("bangerd"), "#!/bin/sh\nexit 1\n").unwrap();
        let Err(e) = ensure(&layout, conn, &env, |_| async {}).await else {
            panic!("a daemon answered at {}", layout.socket_path().display());
        };
        let msg = banger_core::error::chain(&e);
        assert!(
            msg.contains("bangerd.service") && msg.contains("banger system status"),
            "{msg}"
        );
        assert!(
            !state.path().join("state").exists(),
            "the CLI prepared a start"
        );
        assert!(!run.exists());
    }

    #[test]
    fn alive_sees_self_and_not_nonsense() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
    }

    #[test]
    fn client_timeout_from_env() {
        let t = |v: &str| client_timeout(Some(OsStr::new(v)));
        assert_eq!(client_timeout(None).unwrap(), DEFAULT_CLIENT_TIMEOUT);
        assert_eq!(t("").unwrap(), DEFAULT_CLIENT_TIMEOUT);
        assert_eq!(t("5").unwrap(), Duration::from_secs(5));
        assert_eq!(t("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(t("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["0", "-1", "soon", "1h", "3601", "nan", "inf"] {
            let e = t(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("BANGER_CLIENT_TIMEOUT=\"{bad}\" is invalid")),
                "{e}"
            );
        }
    }
}
