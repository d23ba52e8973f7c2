//! `banger vm exec` and `banger vm run -- CMD`: a command run in a VM through its guest
//! agent, with no sshd and no ssh handshake.
//!
//! The CLI asks the daemon for an exec session (`POST /v1/vms/{reference}/exec`, an HTTP
//! upgrade; the daemon relays the connection to the VM's agent unchanged) and speaks the
//! agent's exec protocol ([`banger_agent_proto::exec`]) over it:
//!
//! - stdin is read on a thread of its own (a blocked read never holds the runtime) and sent
//!   as the agent grants credit; at its end the guest process gets end of input;
//! - stdout and stderr are written to the CLI's own stdout and stderr as they arrive;
//! - SIGINT, SIGTERM, SIGHUP and SIGQUIT received by the CLI are forwarded to the guest
//!   process (so Ctrl-C reaches it), and the CLI keeps running until the guest reports its end;
//! - the exit status is the guest's, verbatim, and `128 + n` for a process killed by signal
//!   `n` (130 for SIGINT), as a shell reports it; a command that cannot be started exits
//!   127 (not found) or 126 (not executable) after saying why;
//! - with a PTY (the default when stdin is a terminal; `-t` forces one, `-T` refuses one)
//!   the guest process runs on a terminal the size of the CLI's, resized on SIGWINCH, and the
//!   CLI's terminal is in raw mode for the session (restored on every way out);
//! - where it runs is a [`Target`]: in a VM with a workspace, in the workspace and through
//!   [`MISE_WRAP`] (`mise exec --` when the guest has mise, decided in the guest, so no
//!   extra round trip), else in `/root` as it is.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use banger_agent_proto::client::exec::{ExecError, ExecEvent, Io, exec_upgraded};
use banger_agent_proto::exec::{ExecRequest, PtySize, Signal, UPGRADE_EXEC};
use banger_api::{Client, Route};

use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::CliError;
use crate::words::CommandWords;

/// Where a command runs when the VM has no workspace.
pub const DEFAULT_CWD: &str = "/root";

/// How long the agent may take to start the command.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The PTY size when the CLI's own terminal has none to copy.
const DEFAULT_PTY: PtySize = PtySize { rows: 24, cols: 80 };

/// Whether the session gets a PTY: `Some` when forced by `-t`/`-T`, else when stdin is a
/// terminal.
pub fn wants_pty(forced: Option<bool>) -> bool {
    forced.unwrap_or_else(|| std::io::stdin().is_terminal())
}

pub use banger_workspace::{MISE_WRAP, mise_wrapped};

/// Where and how a command runs in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The working directory.
    pub cwd: String,
}

impl Target {
    /// `words` in `/root`, as in a VM without a workspace.
    pub fn plain(words: &CommandWords) -> Self {
        Self {
            argv: words.argv(),
            cwd: DEFAULT_CWD.to_string(),
        }
    }

    /// `words` in the workspace at `guest_path`, through mise when the guest has it.
    pub fn in_workspace(words: &CommandWords, guest_path: &str) -> Self {
        Self {
            argv: mise_wrapped(words.argv()),
            cwd: guest_path.to_string(),
        }
    }
}

/// Runs `argv` in `cwd` in VM `vm` with no stdin, collecting its output; returns its shell
/// status and its stderr (at most 64 KiB; stdout is dropped). For banger's own steps
/// (`mise install`).
pub async fn run_quiet(
    client: &Client,
    vm: &str,
    target: &Target,
) -> Result<(i32, Vec<u8>), CliError> {
    let mut req = ExecRequest::new(target.argv.clone());
    req.cwd = Some(target.cwd.clone());
    let io = upgrade(client.clone(), vm).await?;
    let fail = |source| CliError::Exec {
        vm: vm.to_string(),
        source,
    };
    let session = exec_upgraded(io, req, START_TIMEOUT).await.map_err(fail)?;
    let pid = session.pid();
    let out = session
        .collect(Vec::new(), 64 << 10, None)
        .await
        .map_err(fail)?;
    match out.status {
        Some(status) => Ok((status.shell_code(), out.stderr.bytes)),
        None => Err(fail(ExecError::Ended { pid })),
    }
}

/// Runs `target` in VM `vm` through its agent; returns the guest's exit status.
pub async fn exec(client: &Client, vm: &str, target: &Target, pty: bool) -> Result<u8, CliError> {
    let io = upgrade(client.clone(), vm).await?;
    session(io, vm, target, pty).await
}

/// Asks the daemon for an exec session in VM `vm`: the connection, relayed to the VM's agent,
/// once the daemon switched it to the exec protocol.
pub async fn upgrade(client: Client, vm: &str) -> Result<Io, CliError> {
    Ok(client.upgrade(Route::VmExec(vm), UPGRADE_EXEC).await?)
}

/// Runs `target` on `io`, an exec session in VM `vm` from [`upgrade`]; returns the guest's
/// exit status.
pub async fn session(io: Io, vm: &str, target: &Target, pty: bool) -> Result<u8, CliError> {
    let mut req = ExecRequest::new(target.argv.clone());
    req.cwd = Some(target.cwd.clone());
    if pty {
        req.pty = Some(window_size().unwrap_or(DEFAULT_PTY));
        if let Ok(term) = std::env::var("TERM") {
            req.env.insert("TERM".into(), term);
        }
    }
    let fail = |source| CliError::Exec {
        vm: vm.to_string(),
        source,
    };
    let mut session = exec_upgraded(io, req, START_TIMEOUT).await.map_err(fail)?;
    // Raw only when there is a terminal to make raw; restored when this is dropped.
    let _raw = if pty && std::io::stdin().is_terminal() {
        Some(RawMode::enter().map_err(CliError::Terminal)?)
    } else {
        None
    };

    let (chunks, mut incoming) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::spawn(move || read_stdin(chunks));
    if let Some(mut stdin) = session.take_stdin() {
        tokio::spawn(async move {
            while let Some(chunk) = incoming.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            // End of input (ignored by the agent on a PTY, where Ctrl-D is the end).
            let _ = stdin.shutdown().await;
        });
    }

    let control = session.control();
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(CliError::Signals)?;
    let mut quit = signal(SignalKind::quit()).map_err(CliError::Signals)?;
    let mut winch = signal(SignalKind::window_change()).map_err(CliError::Signals)?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let forward = tokio::select! {
            event = session.next_event() => match event.map_err(fail)? {
                Some(ExecEvent::Stdout(b)) => {
                    stdout.write_all(&b)?;
                    stdout.flush()?;
                    continue;
                }
                Some(ExecEvent::Stderr(b)) => {
                    stderr.write_all(&b)?;
                    stderr.flush()?;
                    continue;
                }
                Some(ExecEvent::Exit(status)) => return Ok(exit_code(status.shell_code())),
                None => return Err(fail(ExecError::Ended { pid: session.pid() })),
            },
            _ = int.recv() => Signal::Int,
            _ = term.recv() => Signal::Term,
            _ = hup.recv() => Signal::Hup,
            _ = quit.recv() => Signal::Quit,
            _ = winch.recv() => {
                if pty && let Some(size) = window_size() {
                    // A session that just ended reports its end through the events.
                    let _ = control.resize(size).await;
                }
                continue;
            }
        };
        // As above: a failure to forward shows as the session's end.
        let _ = control.signal(forward).await;
    }
}

/// An exit status as a process's exit code (`ExitCode` takes 0..=255).
fn exit_code(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(1)
}

/// Reads stdin until its end, sending each chunk; stops when the session is gone.
fn read_stdin(chunks: tokio::sync::mpsc::Sender<Vec<u8>>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; banger_agent_proto::exec::MAX_DATA_CHUNK];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if chunks.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The window size of the CLI's terminal (stdin's, else stdout's), when it has one.
fn window_size() -> Option<PtySize> {
    [libc::STDIN_FILENO, libc::STDOUT_FILENO]
        .into_iter()
        .find_map(|fd| {
            let mut ws = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a
            // live, writable `winsize`; a descriptor that is not a terminal makes it fail.
            let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
            (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some(PtySize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            })
        })
}

/// The CLI's terminal (stdin) in raw mode, as it was before restored on drop.
#[derive(Debug)]
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> std::io::Result<Self> {
        let fd = libc::STDIN_FILENO;
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the `termios` the pointer points to, or fails and writes
        // nothing, in which case it is not read.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so it initialised the whole struct.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        // SAFETY: `raw` is a valid, initialised `termios` that cfmakeraw only modifies.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: reads the valid `termios` `raw` points to.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: reads the valid `termios` saved by `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_become_exit_codes() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(7), 7);
        assert_eq!(exit_code(130), 130);
        assert_eq!(exit_code(255), 255);
        // Out of range (never from the agent's shell codes): banger's own failure status.
        assert_eq!(exit_code(-1), 1);
        assert_eq!(exit_code(256), 1);
    }

    #[test]
    fn a_workspace_command_is_wrapped_for_mise_with_its_argv_exact() {
        let words = CommandWords::parse(&["printf".into(), "%s\n".into(), "a b".into()]).unwrap();
        let t = Target::in_workspace(&words, "/root/repo");
        assert_eq!(t.cwd, "/root/repo");
        assert_eq!(
            t.argv,
            ["/bin/sh", "-c", MISE_WRAP, "sh", "printf", "%s\n", "a b"]
        );
        // The single-word shell form stays a /bin/sh -c inside.
        let line = CommandWords::parse(&["make && ls".into()]).unwrap();
        assert_eq!(
            Target::in_workspace(&line, "/root/repo").argv[4..],
            ["/bin/sh", "-c", "make && ls"]
        );
        assert_eq!(Target::plain(&line).cwd, DEFAULT_CWD);
    }

    #[test]
    fn a_forced_choice_wins_over_the_terminal_check() {
        assert!(wants_pty(Some(true)));
        assert!(!wants_pty(Some(false)));
    }
}
