//! The host's end of an exec session ([`crate::exec`] is the protocol).
//!
//! [`exec`] upgrades a stream to an exec session, starts the command and returns an
//! [`ExecSession`] once the guest process runs: its stdin is an [`ExecStdin`] (an
//! `AsyncWrite`; dropping or shutting it down sends end of input), its output and exit status come as [`ExecEvent`]s from
//! [`ExecSession::next_event`], and [`ExecControl`] (cloneable, for a Ctrl-C handler or a
//! window-size watcher) forwards signals and resizes. Dropping the session closes the
//! connection, which makes the agent kill the process group. [`exec_upgraded`] starts a
//! session on a connection that is already upgraded: the CLI's, relayed by the daemon.
//! [`ExecSession::collect`] runs a session to its end with a given stdin and keeps its output
//! as values, capped ([`Collected`]): for callers that want results, not streams.
//!
//! Memory is bounded whatever the guest does: frames are capped at
//! [`crate::exec::MAX_FRAME_PAYLOAD`], at most [`EVENT_QUEUE`] output frames wait for the caller (the
//! reader then stops reading, so the agent stops writing), and stdin waits for the agent's
//! credit rather than queueing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

use super::{ClientError, upgrade};
use crate::exec::{
    EXEC_PATH, ExecRequest, ExitStatus, Frame, FrameError, MAX_DATA_CHUNK, PtySize, STDIN_WINDOW,
    Signal, SpawnErrorKind, UPGRADE_EXEC, read_frame, write_frame,
};

/// How many output frames (of at most [`crate::exec::MAX_FRAME_PAYLOAD`] bytes, [`MAX_DATA_CHUNK`] from
/// the real agent) wait for the caller before the session stops reading from the agent.
pub const EVENT_QUEUE: usize = 16;

/// What an exec session produces, in the order the agent sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The last event: how the process ended.
    Exit(ExitStatus),
}

/// A failure starting or running an exec session.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start an exec session")]
    Connect(#[source] ClientError),
    #[error("nothing to run: the command is empty")]
    EmptyCommand,
    #[error("cannot run {program:?} in the guest: {message}")]
    Spawn {
        program: String,
        kind: SpawnErrorKind,
        /// The agent's explanation.
        message: String,
    },
    #[error("exec of {program:?}: no answer from the agent within {after:?}")]
    Timeout { program: String, after: Duration },
    #[error("exec session with pid {pid}: the connection to the agent failed")]
    Frame {
        pid: u32,
        #[source]
        source: FrameError,
    },
    #[error("exec of {program:?}: cannot send the command")]
    Send {
        program: String,
        #[source]
        source: FrameError,
    },
    #[error("exec of {program:?}: cannot read the agent's answer to the start")]
    StartAnswer {
        program: String,
        #[source]
        source: FrameError,
    },
    #[error("exec of {program:?}: the agent broke the protocol: {message}")]
    Protocol { program: String, message: String },
    #[error("exec session with pid {pid}: the agent closed the session before the exit status")]
    Closed { pid: u32 },
    #[error("exec session with pid {pid} is over")]
    Ended { pid: u32 },
}

/// Starts `request` on `stream` (a fresh agent connection or mux substream). `timeout`
/// bounds the upgrade and the start, not the command.
pub async fn exec<S>(
    stream: S,
    request: ExecRequest,
    timeout: Duration,
) -> Result<ExecSession, ExecError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let program = request
        .argv
        .first()
        .cloned()
        .ok_or(ExecError::EmptyCommand)?;
    let fut = async {
        let io = upgrade(stream, EXEC_PATH, UPGRADE_EXEC, None)
            .await
            .map_err(ExecError::Connect)?;
        start(io, request, &program).await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ExecError::Timeout {
            program,
            after: timeout,
        }),
    }
}

/// Upgrades `stream` to an exec session (`GET /exec`) within `timeout` and hands the
/// connection back before any frame: for a relay, whose client sends the `Start` itself (and
/// then uses [`exec_upgraded`]).
pub async fn upgrade_exec<S>(stream: S, timeout: Duration) -> Result<Io, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    upgrade(stream, EXEC_PATH, UPGRADE_EXEC, Some(timeout)).await
}

/// Starts `request` on `io`, a connection already switched to the exec protocol by someone
/// else: the daemon's `POST /v1/vms/{reference}/exec` upgrade, which relays the session to
/// the agent. `timeout` bounds the start, not the command.
pub async fn exec_upgraded(
    io: Io,
    request: ExecRequest,
    timeout: Duration,
) -> Result<ExecSession, ExecError> {
    let program = request
        .argv
        .first()
        .cloned()
        .ok_or(ExecError::EmptyCommand)?;
    match tokio::time::timeout(timeout, start(io, request, &program)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ExecError::Timeout {
            program,
            after: timeout,
        }),
    }
}

/// An upgraded HTTP connection, as hyper hands it over.
pub type Io = banger_http::upgrade::Upgraded;

async fn start(mut io: Io, request: ExecRequest, program: &str) -> Result<ExecSession, ExecError> {
    let protocol = |message: String| ExecError::Protocol {
        program: program.to_string(),
        message,
    };
    write_frame(&mut io, &Frame::Start(request))
        .await
        .map_err(|source| ExecError::Send {
            program: program.to_string(),
            source,
        })?;
    let pid = match read_frame(&mut io).await {
        Ok(Some(Frame::Started(s))) => s.pid,
        Ok(Some(Frame::SpawnFailed(f))) => {
            return Err(ExecError::Spawn {
                program: program.to_string(),
                kind: f.kind,
                message: f.message,
            });
        }
        Ok(Some(other)) => {
            return Err(protocol(format!(
                "answered the start with a {:?} frame",
                other.kind()
            )));
        }
        Ok(None) => return Err(protocol("closed the session before starting".to_string())),
        Err(source) => {
            return Err(ExecError::StartAnswer {
                program: program.to_string(),
                source,
            });
        }
    };

    let (rd, wr) = tokio::io::split(io);
    let credit = Arc::new(Semaphore::new(STDIN_WINDOW as usize));
    let sent = Arc::new(AtomicU64::new(0));
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (stdin_tx, stdin_rx) = mpsc::channel(4);
    let (control_tx, control_rx) = mpsc::channel(16);
    let reader = tokio::spawn(read_loop(rd, events_tx, credit.clone(), sent.clone(), pid));
    let writer = tokio::spawn(write_loop(wr, stdin_rx, control_rx, credit, sent));
    Ok(ExecSession {
        pid,
        stdin: Some(ExecStdin {
            pid,
            tx: PollSender::new(stdin_tx),
            eof_sent: false,
        }),
        control: ExecControl {
            pid,
            tx: control_tx,
        },
        events,
        reader,
        writer,
        done: false,
    })
}

/// A running exec session.
#[derive(Debug)]
pub struct ExecSession {
    pid: u32,
    stdin: Option<ExecStdin>,
    control: ExecControl,
    events: mpsc::Receiver<Result<ExecEvent, ExecError>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    done: bool,
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl ExecSession {
    /// The process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's stdin; `None` once taken. Dropping it unused closes stdin.
    pub fn take_stdin(&mut self) -> Option<ExecStdin> {
        self.stdin.take()
    }

    /// A handle that forwards signals and resizes, usable from another task.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// Forwards `signal` to the process group.
    pub async fn signal(&self, signal: Signal) -> Result<(), ExecError> {
        self.control.signal(signal).await
    }

    /// Sets the PTY's window size.
    pub async fn resize(&self, size: PtySize) -> Result<(), ExecError> {
        self.control.resize(size).await
    }

    /// The next output chunk or, last, the exit status; `None` after the exit status.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ExecError> {
        if self.done {
            return Ok(None);
        }
        match self.events.recv().await {
            Some(Ok(event)) => {
                if matches!(event, ExecEvent::Exit(_)) {
                    self.done = true;
                }
                Ok(Some(event))
            }
            Some(Err(e)) => {
                self.done = true;
                Err(e)
            }
            None => {
                self.done = true;
                Err(ExecError::Closed { pid: self.pid })
            }
        }
    }

    /// Waits for the exit status, discarding any output not read yet. Stdin, if not taken,
    /// is closed first.
    pub async fn wait(mut self) -> Result<ExitStatus, ExecError> {
        drop(self.stdin.take());
        loop {
            match self.next_event().await? {
                Some(ExecEvent::Exit(status)) => return Ok(status),
                Some(_) => {}
                None => return Err(ExecError::Ended { pid: self.pid }),
            }
        }
    }
}

/// One output stream of a [`Collected`] session: its first bytes, up to the cap, and how
/// many it produced in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl Captured {
    /// Whether the stream produced more than [`Captured::bytes`] holds.
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }

    fn push(&mut self, chunk: &[u8], cap: usize) {
        self.total += chunk.len() as u64;
        let room = cap.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// What [`ExecSession::collect`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// How the process ended; `None` when the deadline passed first (the session is then
    /// closed, which makes the agent kill the process group).
    pub status: Option<ExitStatus>,
    pub stdout: Captured,
    pub stderr: Captured,
}

impl ExecSession {
    /// Feeds `stdin` to the process (then end of input), and reads its output until it ends
    /// or `deadline` passes, keeping at most `cap` bytes of each stream (the rest is counted,
    /// not kept). For callers that want the output as values rather than streamed: the CLI's
    /// own steps (`mise install`), the MCP server's `vm_exec`.
    pub async fn collect(
        mut self,
        stdin: Vec<u8>,
        cap: usize,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Collected, ExecError> {
        let feeder = self.take_stdin().map(|mut input| {
            tokio::spawn(async move {
                // A process that exits without reading its input ends the session: not an
                // error of the collection.
                if input.write_all(&stdin).await.is_ok() {
                    let _ = input.shutdown().await;
                }
            })
        });
        let mut out = Collected {
            status: None,
            stdout: Captured::default(),
            stderr: Captured::default(),
        };
        let read = async {
            loop {
                match self.next_event().await? {
                    Some(ExecEvent::Stdout(b)) => out.stdout.push(&b, cap),
                    Some(ExecEvent::Stderr(b)) => out.stderr.push(&b, cap),
                    Some(ExecEvent::Exit(status)) => return Ok(Some(status)),
                    None => return Err(ExecError::Ended { pid: self.pid }),
                }
            }
        };
        let status = match deadline {
            None => read.await,
            Some(at) => tokio::time::timeout_at(at, read).await.unwrap_or(Ok(None)),
        };
        if let Some(feeder) = feeder {
            feeder.abort();
        }
        out.status = status?;
        Ok(out)
    }
}

#[derive(Debug)]
enum StdinMsg {
    Data(Bytes),
    Eof,
}

/// The process's stdin, an [`AsyncWrite`]: each write hands at most [`MAX_DATA_CHUNK`]
/// bytes to the session and waits while the session's small queue is full (the agent's
/// credit is used up: the process is not reading). `shutdown` sends end of input, and so does
/// dropping it, like closing a pipe. Flushing does not wait for the agent.
#[derive(Debug)]
pub struct ExecStdin {
    pid: u32,
    tx: PollSender<StdinMsg>,
    eof_sent: bool,
}

impl ExecStdin {
    /// Sends end of input (ignored by a PTY session; send Ctrl-D there).
    pub async fn close(mut self) -> Result<(), ExecError> {
        self.shutdown()
            .await
            .map_err(|_| ExecError::Ended { pid: self.pid })
    }

    fn ended(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("exec session with pid {} is over", self.pid),
        )
    }
}

impl AsyncWrite for ExecStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.eof_sent || ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(self.ended()));
        }
        let n = buf.len().min(MAX_DATA_CHUNK);
        match self
            .tx
            .send_item(StdinMsg::Data(Bytes::copy_from_slice(&buf[..n])))
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(self.ended())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.eof_sent {
            return Poll::Ready(Ok(()));
        }
        if ready!(self.tx.poll_reserve(cx)).is_err() || self.tx.send_item(StdinMsg::Eof).is_err() {
            return Poll::Ready(Err(self.ended()));
        }
        self.eof_sent = true;
        Poll::Ready(Ok(()))
    }
}

/// Forwards signals and window sizes to a session; cheap to clone.
#[derive(Debug, Clone)]
pub struct ExecControl {
    pid: u32,
    tx: mpsc::Sender<Frame>,
}

impl ExecControl {
    /// Forwards `signal` to the process group.
    pub async fn signal(&self, signal: Signal) -> Result<(), ExecError> {
        self.send(Frame::Signal(signal)).await
    }

    /// Sets the PTY's window size (ignored by a session without a PTY).
    pub async fn resize(&self, size: PtySize) -> Result<(), ExecError> {
        self.send(Frame::Resize(size)).await
    }

    async fn send(&self, frame: Frame) -> Result<(), ExecError> {
        self.tx
            .send(frame)
            .await
            .map_err(|_| ExecError::Ended { pid: self.pid })
    }
}

/// Reads the agent's frames: output to the caller (waiting while the caller is behind), credit
/// to the stdin writer, until the exit status or a failure.
async fn read_loop(
    mut rd: ReadHalf<Io>,
    events: mpsc::Sender<Result<ExecEvent, ExecError>>,
    credit: Arc<Semaphore>,
    sent: Arc<AtomicU64>,
    pid: u32,
) {
    let mut credited: u64 = 0;
    let broken = |message: String| ExecError::Protocol {
        program: format!("pid {pid}"),
        message,
    };
    loop {
        let event = match read_frame(&mut rd).await {
            Ok(Some(Frame::Stdout(b))) => Ok(ExecEvent::Stdout(b)),
            Ok(Some(Frame::Stderr(b))) => Ok(ExecEvent::Stderr(b)),
            Ok(Some(Frame::Exit(status))) => {
                let _ = events.send(Ok(ExecEvent::Exit(status))).await;
                return;
            }
            Ok(Some(Frame::StdinCredit(n))) => {
                credited += u64::from(n);
                // Credit is only ever given back for stdin sent; more would let the writer
                // send beyond the window.
                if credited > sent.load(Ordering::SeqCst) {
                    Err(broken(format!(
                        "granted {credited} bytes of stdin credit for {} bytes sent",
                        sent.load(Ordering::SeqCst)
                    )))
                } else {
                    credit.add_permits(n as usize);
                    continue;
                }
            }
            Ok(Some(other)) => Err(broken(format!(
                "sent a {:?} frame during the session",
                other.kind()
            ))),
            Ok(None) => Err(ExecError::Closed { pid }),
            Err(source) => Err(ExecError::Frame { pid, source }),
        };
        let failed = event.is_err();
        if events.send(event).await.is_err() || failed {
            return;
        }
    }
}

/// Writes the host's frames: control frames first, stdin only within the agent's credit.
async fn write_loop(
    mut wr: WriteHalf<Io>,
    mut stdin: mpsc::Receiver<StdinMsg>,
    mut control: mpsc::Receiver<Frame>,
    credit: Arc<Semaphore>,
    sent: Arc<AtomicU64>,
) {
    let mut stdin_open = true;
    // Stdin read from the caller and waiting for credit. While it waits, control frames
    // still go out: a signal is never stuck behind stdin the process does not read.
    let mut pending: Option<Bytes> = None;
    loop {
        let want = pending.as_ref().map_or(0, |b| b.len() as u32);
        let frame = tokio::select! {
            biased;
            Some(frame) = control.recv() => frame,
            permits = credit.acquire_many(want), if pending.is_some() => {
                let (Ok(permits), Some(data)) = (permits, pending.take()) else {
                    return;
                };
                permits.forget();
                sent.fetch_add(data.len() as u64, Ordering::SeqCst);
                Frame::Stdin(data)
            }
            msg = stdin.recv(), if stdin_open && pending.is_none() => match msg {
                Some(StdinMsg::Data(data)) => {
                    pending = Some(data);
                    continue;
                }
                Some(StdinMsg::Eof) | None => {
                    stdin_open = false;
                    Frame::StdinEof
                }
            },
            else => return,
        };
        if write_frame(&mut wr, &frame).await.is_err() {
            return;
        }
    }
}
