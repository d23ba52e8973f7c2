//! The guest's end of an exec session ([`banger_agent_proto::exec`] is the protocol).
//!
//! [`run_session`] takes an upgraded connection, reads the start request, spawns the process
//! (a new session and process group; pipes, or a new pty as controlling terminal), and then
//! runs four things at once until the process ended and its output was read to the end:
//! a pump per output stream (stdout, stderr, or the pty master) writing frames as the
//! connection takes them, a stdin feeder writing what the host sent and granting credit back,
//! the control reader (stdin, signals, resizes from the host) and the wait for the process.
//! If the host goes away first, the process group and the rest of the session are killed
//! with SIGKILL and the process is reaped; a guard does the same if the session is dropped
//! mid-way (agent shutdown). Signals from the host go to the process group, or with a pty to
//! the terminal's foreground group.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use banger_agent_proto::exec::{
    ExecRequest, ExitStatus, Frame, FrameError, MAX_DATA_CHUNK, PtySize, STDIN_WINDOW,
    SpawnErrorKind, SpawnFailure, Started, read_frame, write_frame,
};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc};

use crate::error_chain;
use crate::procfs::ProcFs;
use crate::serial::SerialStream;

/// A failure in one exec session. The process, if it was started, is killed and reaped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("exec session from {peer}: cannot read the host's frames")]
    Read {
        peer: String,
        #[source]
        source: FrameError,
    },
    #[error("exec session from {peer}: cannot send to the host")]
    Write {
        peer: String,
        #[source]
        source: FrameError,
    },
    #[error("exec session from {peer}: {message}")]
    Protocol { peer: String, message: String },
    #[error("exec session from {peer}: cannot wait for process {pid}")]
    Wait {
        peer: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// The write half of the connection, shared by the pumps, the feeder and the end.
type Out<S> = Arc<Mutex<WriteHalf<S>>>;

async fn send<S: AsyncWrite>(out: &Out<S>, frame: &Frame) -> Result<(), FrameError> {
    write_frame(&mut *out.lock().await, frame).await
}

/// Runs one exec session on `io` until the process ended and the host has its exit status,
/// or the host went away (then the process group is killed). `peer` names the host in
/// errors.
///
/// `procfs` finds the processes of the session when it must be killed.
pub async fn run_session<S>(io: S, peer: &str, procfs: ProcFs) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let out: Out<S> = Arc::new(Mutex::new(wr));
    let write_err = |source| SessionError::Write {
        peer: peer.to_string(),
        source,
    };
    let request = match read_frame(&mut rd).await {
        Ok(Some(Frame::Start(r))) => r,
        Ok(Some(other)) => {
            return Err(SessionError::Protocol {
                peer: peer.to_string(),
                message: format!("expected a Start frame first, got {:?}", other.kind()),
            });
        }
        // The host left before asking for anything.
        Ok(None) => return Ok(()),
        Err(source) => {
            return Err(SessionError::Read {
                peer: peer.to_string(),
                source,
            });
        }
    };
    let process = match spawn(&request) {
        Ok(p) => p,
        Err(failure) => {
            tracing::debug!("exec from {peer}: {}", failure.message);
            return send(&out, &Frame::SpawnFailed(failure))
                .await
                .map_err(write_err);
        }
    };
    let Process {
        mut child,
        pid,
        stdin,
        stdout,
        stderr,
        master,
    } = process;
    let mut group = Group {
        pid,
        armed: true,
        procfs,
    };
    tracing::debug!("exec from {peer}: started {:?} as pid {pid}", request.argv);
    send(&out, &Frame::Started(Started { pid }))
        .await
        .map_err(write_err)?;

    let outstanding = Arc::new(AtomicU32::new(0));
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let feeder = AbortOnDrop(tokio::spawn(feed_stdin(
        stdin,
        stdin_rx,
        outstanding.clone(),
        out.clone(),
        master.is_some(),
    )));

    let outcome = {
        let finished = async {
            let (status, (), ()) =
                tokio::join!(child.wait(), pump(stdout, &out, Frame::Stdout), async {
                    if let Some(stderr) = stderr {
                        pump(stderr, &out, Frame::Stderr).await;
                    }
                });
            status
        };
        let control = control(&mut rd, &stdin_tx, &outstanding, pid, master.as_ref(), peer);
        tokio::select! {
            status = finished => Outcome::Exited(status),
            left = control => Outcome::HostGone(left),
        }
    };
    drop(feeder);
    match outcome {
        Outcome::Exited(status) => {
            group.armed = false;
            let status = status.map_err(|source| SessionError::Wait {
                peer: peer.to_string(),
                pid,
                source,
            })?;
            let status = match status.signal() {
                Some(signal) => ExitStatus::Signal {
                    signal,
                    core_dumped: status.core_dumped(),
                },
                None => ExitStatus::Code(status.code().unwrap_or(-1)),
            };
            tracing::debug!("exec from {peer}: pid {pid} ended: {status:?}");
            send(&out, &Frame::Exit(status)).await.map_err(write_err)?;
            let _ = out.lock().await.shutdown().await;
            Ok(())
        }
        Outcome::HostGone(left) => {
            group.kill();
            let _ = child.wait().await;
            tracing::debug!("exec from {peer}: host gone, killed process group {pid}");
            left
        }
    }
}

enum Outcome {
    Exited(io::Result<std::process::ExitStatus>),
    HostGone(Result<(), SessionError>),
}

/// The processes of a session, killed with SIGKILL when dropped armed.
#[derive(Debug)]
struct Group {
    pid: u32,
    armed: bool,
    procfs: ProcFs,
}

impl Group {
    /// Kills the process group, then every other process still in the session (a shell's
    /// jobs have process groups of their own). A process that left the session with its own
    /// `setsid` is a daemon on purpose and is left alone.
    fn kill(&mut self) {
        self.armed = false;
        signal_group(self.pid, libc::SIGKILL);
        for member in self.procfs.session_members(self.pid) {
            if let Some(pid) = i32::try_from(member)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// Sends `signal` to process group `pid`; a group that is already gone is no error.
fn signal_group(pid: u32, signal: i32) {
    let Some(sig) = rustix::process::Signal::from_named_raw(signal) else {
        return;
    };
    let Some(pgid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pgid, sig)
        && e != rustix::io::Errno::SRCH
    {
        tracing::warn!("cannot send signal {signal} to process group {pid}: {e}");
    }
}

/// Where a signal goes: the terminal's foreground process group with a pty (a shell's
/// running job, as Ctrl-C on a terminal), the session's own group otherwise.
fn foreground(pid: u32, master: Option<&OwnedFd>) -> u32 {
    master
        .and_then(|m| rustix::termios::tcgetpgrp(m).ok())
        .and_then(|pgrp| u32::try_from(pgrp.as_raw_nonzero().get()).ok())
        .unwrap_or(pid)
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A started process and its ends.
struct Process {
    child: Child,
    pid: u32,
    stdin: Writer,
    stdout: Reader,
    stderr: Option<Reader>,
    /// The pty master, for resizes.
    master: Option<OwnedFd>,
}

fn failure(kind: SpawnErrorKind, message: String) -> SpawnFailure {
    SpawnFailure { kind, message }
}

/// Starts the process `request` describes, or says why it cannot be.
fn spawn(request: &ExecRequest) -> Result<Process, SpawnFailure> {
    let Some(program) = request.argv.first() else {
        return Err(failure(
            SpawnErrorKind::BadRequest,
            "the command is empty".to_string(),
        ));
    };
    if let Some(cwd) = &request.cwd {
        match std::fs::metadata(cwd) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(failure(
                    SpawnErrorKind::BadCwd,
                    format!("working directory {cwd} is not a directory"),
                ));
            }
            Err(e) => {
                return Err(failure(
                    SpawnErrorKind::BadCwd,
                    format!("working directory {cwd}: {e}"),
                ));
            }
        }
    }
    let mut cmd = Command::new(program);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let inherited_path = std::env::var_os("PATH").is_some();
    cmd.args(&request.argv[1..])
        .envs(login_env(
            &passwd,
            rustix::process::geteuid().as_raw(),
            inherited_path,
        ))
        .envs(&request.env);
    if let Some(cwd) = &request.cwd {
        cmd.current_dir(cwd);
    }
    let pty = match request.pty {
        Some(size) => Some(open_pty(size)?),
        None => None,
    };
    match &pty {
        Some(pty) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone().map(Stdio::from).map_err(|e| {
                    failure(
                        SpawnErrorKind::Other,
                        format!("cannot duplicate the pty: {e}"),
                    )
                })
            };
            cmd.stdin(dup(&pty.slave)?)
                .stdout(dup(&pty.slave)?)
                .stderr(dup(&pty.slave)?);
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    let controlling_tty = pty.is_some();
    let hook = move || -> io::Result<()> {
        rustix::process::setsid()?;
        if controlling_tty {
            // SAFETY: descriptor 0 is the pty slave, installed by the spawn before this hook
            // runs, and stays open for the call.
            let stdin = unsafe { BorrowedFd::borrow_raw(0) };
            rustix::process::ioctl_tiocsctty(stdin)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child between fork and exec. It only makes two
    // system calls, setsid and ioctl(TIOCSCTTY), which are async-signal-safe, and touches no
    // lock and no allocation (errors are plain errno values).
    unsafe {
        cmd.pre_exec(hook);
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, &e))?;
    // The command holds the slave's duplicates: close them, so the master reads end of file
    // once the process and its children are done with the terminal.
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    match pty {
        Some(Pty { master, slave }) => {
            drop(slave);
            let stream = |what: &str| -> Result<SerialStream, SpawnFailure> {
                let fd = master.try_clone().map_err(|e| {
                    failure(
                        SpawnErrorKind::Other,
                        format!("cannot duplicate the pty: {e}"),
                    )
                })?;
                SerialStream::from_pollable(File::from(fd), Path::new(what))
                    .map_err(|e| failure(SpawnErrorKind::Other, error_chain(&e)))
            };
            let reader = stream("pty master (output)")?;
            let writer = stream("pty master (input)")?;
            Ok(Process {
                child,
                pid,
                stdin: Box::new(writer),
                stdout: Box::new(reader),
                stderr: None,
                master: Some(master),
            })
        }
        None => {
            let (Some(stdin), Some(stdout), Some(stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(failure(
                    SpawnErrorKind::Other,
                    "the process's pipes are missing".to_string(),
                ));
            };
            Ok(Process {
                child,
                pid,
                stdin: Box::new(stdin),
                stdout: Box::new(stdout),
                stderr: Some(Box::new(stderr)),
                master: None,
            })
        }
    }
}

/// The PATH a process gets when the agent itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a login gives a process, for user `uid` of `passwd` (an `/etc/passwd` text): `HOME`,
/// `USER`, `LOGNAME` and `SHELL` from its entry (`/` and `/bin/sh` when it has none, as
/// `login` falls back), and [`DEFAULT_PATH`] when the agent has no `PATH` to pass on. The
/// agent runs from an init (systemd, or banger's own) that sets none of these, and tools
/// such as git refuse to run without `HOME`.
pub fn login_env(passwd: &str, uid: u32, has_path: bool) -> Vec<(&'static str, String)> {
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid)).then(|| (f[0], f[5], f[6]))
    });
    let (user, home, shell) = match entry {
        Some((user, home, shell)) => (
            user.to_string(),
            if home.is_empty() { "/" } else { home }.to_string(),
            if shell.is_empty() { "/bin/sh" } else { shell }.to_string(),
        ),
        None => (uid.to_string(), "/".to_string(), "/bin/sh".to_string()),
    };
    let mut env = vec![
        ("HOME", home),
        ("USER", user.clone()),
        ("LOGNAME", user),
        ("SHELL", shell),
    ];
    if !has_path {
        env.push(("PATH", DEFAULT_PATH.to_string()));
    }
    env
}

fn spawn_error(program: &str, e: &io::Error) -> SpawnFailure {
    match e.kind() {
        io::ErrorKind::NotFound => failure(
            SpawnErrorKind::NotFound,
            format!("{program}: command not found"),
        ),
        io::ErrorKind::PermissionDenied => failure(
            SpawnErrorKind::PermissionDenied,
            format!("{program}: permission denied"),
        ),
        io::ErrorKind::InvalidInput => {
            failure(SpawnErrorKind::BadRequest, format!("{program}: {e}"))
        }
        _ => failure(SpawnErrorKind::Other, format!("{program}: {e}")),
    }
}

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

/// Opens a new pty pair sized `size`.
fn open_pty(size: PtySize) -> Result<Pty, SpawnFailure> {
    if size.rows == 0 || size.cols == 0 {
        return Err(failure(
            SpawnErrorKind::BadRequest,
            format!("a {}x{} terminal has no room", size.rows, size.cols),
        ));
    }
    let open = || -> rustix::io::Result<Pty> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        set_size(master.as_fd(), size)?;
        Ok(Pty { master, slave })
    };
    open().map_err(|e| failure(SpawnErrorKind::Other, format!("cannot open a pty: {e}")))
}

fn set_size(master: BorrowedFd<'_>, size: PtySize) -> rustix::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
}

/// Copies one output stream into frames until its end. A pty master reports the end (every
/// slave descriptor closed) as EIO.
async fn pump<S: AsyncWrite>(mut from: Reader, out: &Out<S>, frame: fn(Bytes) -> Frame) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) => {
                tracing::debug!("exec output read failed: {e}");
                return;
            }
        };
        if send(out, &frame(Bytes::copy_from_slice(&buf[..n])))
            .await
            .is_err()
        {
            // The host is gone; the control reader sees it too and ends the session.
            return;
        }
    }
}

enum StdinMsg {
    Data(Bytes),
    Eof,
}

/// Writes the host's stdin to the process and gives the credit back. Once the process closed
/// its stdin, what arrives is dropped (and still credited, so the host is not stalled).
async fn feed_stdin<S: AsyncWrite>(
    to: Writer,
    mut rx: mpsc::UnboundedReceiver<StdinMsg>,
    outstanding: Arc<AtomicU32>,
    out: Out<S>,
    pty: bool,
) {
    let mut to = Some(to);
    while let Some(msg) = rx.recv().await {
        match msg {
            StdinMsg::Data(data) => {
                if let Some(w) = &mut to
                    && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                {
                    to = None;
                }
                // Fits: a chunk was admitted only within the window.
                let n = data.len() as u32;
                outstanding.fetch_sub(n, Ordering::SeqCst);
                if send(&out, &Frame::StdinCredit(n)).await.is_err() {
                    return;
                }
            }
            // A terminal has no end of input: the host sends Ctrl-D instead.
            StdinMsg::Eof if pty => {}
            StdinMsg::Eof => to = None,
        }
    }
}

/// Reads the host's frames until it leaves (`Ok`) or breaks the protocol.
async fn control<R: AsyncRead + Unpin>(
    rd: &mut R,
    stdin: &mpsc::UnboundedSender<StdinMsg>,
    outstanding: &AtomicU32,
    pid: u32,
    master: Option<&OwnedFd>,
    peer: &str,
) -> Result<(), SessionError> {
    let protocol = |message: String| SessionError::Protocol {
        peer: peer.to_string(),
        message,
    };
    loop {
        let frame = match read_frame(rd).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(source) => {
                return Err(SessionError::Read {
                    peer: peer.to_string(),
                    source,
                });
            }
        };
        match frame {
            Frame::Stdin(data) if data.is_empty() => {}
            Frame::Stdin(data) => {
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let now = outstanding
                    .fetch_add(len, Ordering::SeqCst)
                    .saturating_add(len);
                if now > STDIN_WINDOW {
                    return Err(protocol(format!(
                        "the host sent {now} bytes of stdin, beyond its {STDIN_WINDOW}-byte credit"
                    )));
                }
                let _ = stdin.send(StdinMsg::Data(data));
            }
            Frame::StdinEof => {
                let _ = stdin.send(StdinMsg::Eof);
            }
            Frame::Signal(signal) => signal_group(foreground(pid, master), signal.number()),
            Frame::Resize(size) => {
                if let Some(master) = master
                    && size.rows > 0
                    && size.cols > 0
                    && let Err(e) = set_size(master.as_fd(), size)
                {
                    tracing::warn!("exec from {peer}: cannot resize the pty of {pid}: {e}");
                }
            }
            other => {
                return Err(protocol(format!(
                    "unexpected {:?} frame from the host",
                    other.kind()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          odd:x:7:7::::\n";

    fn get<'a>(env: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_process_gets_its_user_s_login_environment() {
        let env = login_env(PASSWD, 0, true);
        assert_eq!(get(&env, "HOME"), Some("/root"));
        assert_eq!(get(&env, "USER"), Some("root"));
        assert_eq!(get(&env, "LOGNAME"), Some("root"));
        assert_eq!(get(&env, "SHELL"), Some("/bin/bash"));
        assert_eq!(get(&env, "PATH"), None, "the agent's own PATH is passed on");
        let env = login_env(PASSWD, 0, false);
        assert_eq!(get(&env, "PATH"), Some(DEFAULT_PATH));
    }

    #[test]
    fn an_empty_or_missing_entry_falls_back_as_login_does() {
        let odd = login_env(PASSWD, 7, true);
        assert_eq!(
            (get(&odd, "HOME"), get(&odd, "SHELL")),
            (Some("/"), Some("/bin/sh"))
        );
        let none = login_env("garbage\n::::\n", 1000, true);
        assert_eq!(get(&none, "USER"), Some("1000"));
        assert_eq!(get(&none, "HOME"), Some("/"));
    }
}
