//! The exec protocol: running a command in the guest with its stdio streamed both ways.
//!
//! # Where it runs
//!
//! Exec is an HTTP/1.1 upgrade on any agent connection: the host sends
//! `GET /exec` with `Connection: Upgrade` and `Upgrade: banger-exec/1` ([`UPGRADE_EXEC`]), the
//! agent answers `101 Switching Protocols`, and from then on the connection carries the frames
//! below, in both directions, until the session ends. One connection is one session. On
//! Firecracker's hybrid vsock every host connection is its own guest connection, so each exec
//! simply opens a connection. QEMU's virtio-serial port is one byte stream, so there the host
//! first upgrades the stream to a multiplexer (`GET /mux`, see [`crate::mux`]) and runs each
//! session (and each `/healthz` or `/ports` request) on its own substream; the exec protocol
//! is the same bytes on either.
//!
//! # Frames
//!
//! A frame is a 5-byte header — the [`FrameKind`] byte, then the payload length as a
//! big-endian `u32` — and the payload, at most [`MAX_FRAME_PAYLOAD`] bytes; a longer frame, an
//! unknown kind or a malformed payload ends the session with an error. Control payloads are
//! JSON, data payloads raw bytes, the credit payload a big-endian `u32`.
//!
//! Host to agent: [`FrameKind::Start`] (first, exactly once: an [`ExecRequest`]),
//! [`FrameKind::Stdin`], [`FrameKind::StdinEof`], [`FrameKind::Signal`] (a [`Signal`]),
//! [`FrameKind::Resize`] (a [`PtySize`]).
//!
//! Agent to host: [`FrameKind::Started`] (a [`Started`]) or [`FrameKind::SpawnFailed`] (a
//! [`SpawnFailure`], and the session ends), then any number of [`FrameKind::Stdout`],
//! [`FrameKind::Stderr`] and [`FrameKind::StdinCredit`], then exactly one
//! [`FrameKind::Exit`] (an [`ExitStatus`]) after both output streams reached their end, and
//! the agent closes.
//!
//! # Flow control
//!
//! Output is back-pressured by the transport: the agent writes a stdout frame only when the
//! connection takes it, so a host that stops reading stalls the process on a full pipe instead
//! of making anyone buffer. Stdin is credit-based: the host may have at most
//! [`STDIN_WINDOW`] bytes of stdin sent and not yet written to the process; the agent grants
//! more with `StdinCredit(n)` as it writes them. So the agent buffers at most one window per
//! session, and a `Signal` or `Resize` frame is never stuck behind stdin the process is not
//! reading: Ctrl-C reaches a process that ignores its stdin. Stdin beyond the credit is a
//! protocol error.
//!
//! # Semantics
//!
//! - The process is the leader of a new session and process group (`setsid`). Signals are
//!   sent to that group or, with a PTY, to the terminal's foreground process group (a job
//!   control shell's running job), as a terminal sends Ctrl-C to its foreground group.
//! - With [`ExecRequest::pty`] the process gets a new pseudo-terminal as stdin, stdout, stderr
//!   and controlling terminal, sized as asked; `Resize` sets its window size (`TIOCSWINSZ`,
//!   so the foreground group gets `SIGWINCH`). All output arrives as `Stdout`; `StdinEof` is
//!   ignored (a terminal has no end of input; send the EOF character, Ctrl-D, instead).
//! - Without a PTY, stdin, stdout and stderr are pipes; `StdinEof` closes the process's stdin.
//! - The process's environment is the agent's, with `HOME`, `USER`, `LOGNAME` and `SHELL`
//!   set from the agent user's passwd entry (a default `PATH` when the agent has none), as
//!   a login sets them, then [`ExecRequest::env`] on top: the agent runs from an init that
//!   sets none of these, and tools like git refuse to run without `HOME`.
//! - A command that cannot be started is a typed answer, not an exit code: [`SpawnFailure`]
//!   with a [`SpawnErrorKind`]. A shell's convention (127 when not found, 126 when not
//!   executable) is [`SpawnErrorKind::shell_code`], for callers that must produce a status.
//! - The end is [`ExitStatus::Code`] or, for a process killed by a signal,
//!   [`ExitStatus::Signal`]; [`ExitStatus::shell_code`] maps the latter to `128 + n` (130 for
//!   SIGINT), as shells report it.
//! - `Exit` is sent once the process ended and both output streams reached their end, so a
//!   background process that keeps stdout or stderr open keeps the session open, as with
//!   `ssh host 'server &'` (redirect its output to let the session end).
//! - The session ends with the connection. When the host goes away (the connection ends, or
//!   is half-closed, before the agent sent `Exit`: stdin ends with `StdinEof`, not with a
//!   shutdown), the agent kills the process group and every other process of the session
//!   with SIGKILL and reaps the process: a host that disconnects leaves no orphan. Only a
//!   process that made a session of its own (`setsid`, a daemon on purpose) survives.
//!   Processes still running after `Exit` was sent are left alone.

use std::collections::BTreeMap;
use std::io;

use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The `Upgrade` protocol token of an exec session.
pub const UPGRADE_EXEC: &str = "banger-exec/1";

/// The path of the exec upgrade request.
pub const EXEC_PATH: &str = "/exec";

/// Largest payload of one frame, in bytes. Data is sent in chunks of at most
/// [`MAX_DATA_CHUNK`]; the larger limit leaves room for a start request with a long argv and
/// environment.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

/// Largest payload of a `Stdin`, `Stdout` or `Stderr` frame a sender produces.
pub const MAX_DATA_CHUNK: usize = 64 << 10;

/// How many bytes of stdin the host may send before the agent grants more credit.
pub const STDIN_WINDOW: u32 = 256 << 10;

/// What a command to run looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program and its arguments, passed exactly (no shell). The program is looked up in
    /// `PATH` when it has no `/`. Must not be empty.
    pub argv: Vec<String>,
    /// Working directory; the agent's own (`/`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to (or replacing those in) the agent's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Run on a new pseudo-terminal of this size instead of pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
}

impl ExecRequest {
    /// A request to run `argv` with pipes, in the agent's working directory and environment.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: BTreeMap::new(),
            pty: None,
        }
    }
}

/// A terminal window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// The signals the host may forward to the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    /// SIGHUP: the host's terminal went away.
    Hup,
    /// SIGINT: Ctrl-C.
    Int,
    /// SIGQUIT: Ctrl-\.
    Quit,
    /// SIGKILL.
    Kill,
    /// SIGTERM.
    Term,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGWINCH (sent by the agent itself on `Resize`; forwarded as is otherwise).
    Winch,
}

impl Signal {
    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
            Signal::Winch => 28,
        }
    }
}

/// Answer to `Start` when the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The process id in the guest (also its process group and session id).
    pub pid: u32,
}

/// Why a command could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnErrorKind {
    /// The program does not exist (or is not in `PATH`).
    NotFound,
    /// The program exists but cannot be executed.
    PermissionDenied,
    /// The working directory does not exist or is not a directory.
    BadCwd,
    /// The request itself is unusable (empty argv, a NUL byte, a zero-sized PTY...).
    BadRequest,
    /// Anything else (out of processes, no PTY available...).
    Other,
}

impl SpawnErrorKind {
    /// The status a shell reports for this failure: 127 for a command not found, 126 for one
    /// that cannot be executed, 1 otherwise.
    pub fn shell_code(self) -> i32 {
        match self {
            SpawnErrorKind::NotFound => 127,
            SpawnErrorKind::PermissionDenied => 126,
            SpawnErrorKind::BadCwd | SpawnErrorKind::BadRequest | SpawnErrorKind::Other => 1,
        }
    }
}

/// Answer to `Start` when the process could not be started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnFailure {
    pub kind: SpawnErrorKind,
    /// What went wrong, naming the program or directory.
    pub message: String,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or `128 + signal`.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal { signal, .. } => 128 + signal,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Start = 1,
    Stdin = 2,
    StdinEof = 3,
    Signal = 4,
    Resize = 5,
    Started = 16,
    SpawnFailed = 17,
    Stdout = 18,
    Stderr = 19,
    StdinCredit = 20,
    Exit = 21,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => FrameKind::Start,
            2 => FrameKind::Stdin,
            3 => FrameKind::StdinEof,
            4 => FrameKind::Signal,
            5 => FrameKind::Resize,
            16 => FrameKind::Started,
            17 => FrameKind::SpawnFailed,
            18 => FrameKind::Stdout,
            19 => FrameKind::Stderr,
            20 => FrameKind::StdinCredit,
            21 => FrameKind::Exit,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Start(ExecRequest),
    Stdin(Bytes),
    StdinEof,
    Signal(Signal),
    Resize(PtySize),
    Started(Started),
    SpawnFailed(SpawnFailure),
    Stdout(Bytes),
    Stderr(Bytes),
    StdinCredit(u32),
    Exit(ExitStatus),
}

/// A frame that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("exec stream failed")]
    Io(#[from] io::Error),
    #[error("exec stream ended inside a frame")]
    Truncated,
    #[error("unknown exec frame kind {0}")]
    UnknownKind(u8),
    #[error("exec frame of {len} bytes is over the {MAX_FRAME_PAYLOAD}-byte limit")]
    TooLarge { len: usize },
    #[error("malformed {kind:?} frame")]
    Json {
        kind: FrameKind,
        #[source]
        source: serde_json::Error,
    },
    #[error("malformed {kind:?} frame: {len} bytes, expected {expected}")]
    BadLength {
        kind: FrameKind,
        len: usize,
        expected: usize,
    },
}

impl Frame {
    /// The frame's kind byte.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Start(_) => FrameKind::Start,
            Frame::Stdin(_) => FrameKind::Stdin,
            Frame::StdinEof => FrameKind::StdinEof,
            Frame::Signal(_) => FrameKind::Signal,
            Frame::Resize(_) => FrameKind::Resize,
            Frame::Started(_) => FrameKind::Started,
            Frame::SpawnFailed(_) => FrameKind::SpawnFailed,
            Frame::Stdout(_) => FrameKind::Stdout,
            Frame::Stderr(_) => FrameKind::Stderr,
            Frame::StdinCredit(_) => FrameKind::StdinCredit,
            Frame::Exit(_) => FrameKind::Exit,
        }
    }

    /// The frame as bytes: header and payload.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        fn json<T: Serialize>(kind: FrameKind, v: &T) -> Result<Vec<u8>, FrameError> {
            serde_json::to_vec(v).map_err(|source| FrameError::Json { kind, source })
        }
        let kind = self.kind();
        let payload: Vec<u8> = match self {
            Frame::Start(r) => json(kind, r)?,
            Frame::Signal(s) => json(kind, s)?,
            Frame::Resize(s) => json(kind, s)?,
            Frame::Started(s) => json(kind, s)?,
            Frame::SpawnFailed(s) => json(kind, s)?,
            Frame::Exit(s) => json(kind, s)?,
            Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => b.to_vec(),
            Frame::StdinEof => Vec::new(),
            Frame::StdinCredit(n) => n.to_be_bytes().to_vec(),
        };
        if payload.len() > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge { len: payload.len() });
        }
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind as u8);
        // Fits: checked against MAX_FRAME_PAYLOAD above.
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    fn decode(kind: FrameKind, payload: Vec<u8>) -> Result<Self, FrameError> {
        fn json<T: serde::de::DeserializeOwned>(
            kind: FrameKind,
            p: &[u8],
        ) -> Result<T, FrameError> {
            serde_json::from_slice(p).map_err(|source| FrameError::Json { kind, source })
        }
        Ok(match kind {
            FrameKind::Start => Frame::Start(json(kind, &payload)?),
            FrameKind::Signal => Frame::Signal(json(kind, &payload)?),
            FrameKind::Resize => Frame::Resize(json(kind, &payload)?),
            FrameKind::Started => Frame::Started(json(kind, &payload)?),
            FrameKind::SpawnFailed => Frame::SpawnFailed(json(kind, &payload)?),
            FrameKind::Exit => Frame::Exit(json(kind, &payload)?),
            FrameKind::Stdin => Frame::Stdin(Bytes::from(payload)),
            FrameKind::Stdout => Frame::Stdout(Bytes::from(payload)),
            FrameKind::Stderr => Frame::Stderr(Bytes::from(payload)),
            FrameKind::StdinEof if payload.is_empty() => Frame::StdinEof,
            FrameKind::StdinEof => {
                return Err(FrameError::BadLength {
                    kind,
                    len: payload.len(),
                    expected: 0,
                });
            }
            FrameKind::StdinCredit => match <[u8; 4]>::try_from(payload.as_slice()) {
                Ok(b) => Frame::StdinCredit(u32::from_be_bytes(b)),
                Err(_) => {
                    return Err(FrameError::BadLength {
                        kind,
                        len: payload.len(),
                        expected: 4,
                    });
                }
            },
        })
    }
}

/// Reads one frame; `None` when the stream ends cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; 5];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let kind = FrameKind::from_byte(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge { len });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Frame::decode(kind, payload).map(Some)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let bytes = frame.encode()?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(frame: Frame) -> Frame {
        let bytes = frame.encode().unwrap();
        let mut r = bytes.as_slice();
        let back = read_frame(&mut r).await.unwrap().unwrap();
        assert!(r.is_empty());
        back
    }

    #[tokio::test]
    async fn every_frame_roundtrips() {
        let mut req = ExecRequest::new(["sh", "-c", "echo hi"]);
        req.cwd = Some("/root".into());
        req.env.insert("A".into(), "b".into());
        req.pty = Some(PtySize { rows: 24, cols: 80 });
        for f in [
            Frame::Start(req),
            Frame::Stdin(Bytes::from_static(b"\x00\xffdata")),
            Frame::StdinEof,
            Frame::Signal(Signal::Int),
            Frame::Resize(PtySize { rows: 1, cols: 2 }),
            Frame::Started(Started { pid: 42 }),
            Frame::SpawnFailed(SpawnFailure {
                kind: SpawnErrorKind::NotFound,
                message: "nope".into(),
            }),
            Frame::Stdout(Bytes::new()),
            Frame::Stderr(Bytes::from_static(b"err")),
            Frame::StdinCredit(STDIN_WINDOW),
            Frame::Exit(ExitStatus::Signal {
                signal: 9,
                core_dumped: false,
            }),
            Frame::Exit(ExitStatus::Code(7)),
        ] {
            assert_eq!(roundtrip(f.clone()).await, f);
        }
    }

    #[test]
    fn json_shapes_are_stable() {
        assert_eq!(serde_json::to_string(&Signal::Int).unwrap(), "\"INT\"");
        assert_eq!(
            serde_json::to_string(&ExitStatus::Code(1)).unwrap(),
            r#"{"code":1}"#
        );
        assert_eq!(
            serde_json::to_string(&SpawnErrorKind::NotFound).unwrap(),
            "\"not_found\""
        );
        let req: ExecRequest = serde_json::from_str(r#"{"argv":["true"]}"#).unwrap();
        assert_eq!(req, ExecRequest::new(["true"]));
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(7).shell_code(), 7);
        let int = ExitStatus::Signal {
            signal: Signal::Int.number(),
            core_dumped: false,
        };
        assert_eq!(int.shell_code(), 130);
        assert!(!int.success());
        assert_eq!(SpawnErrorKind::NotFound.shell_code(), 127);
        assert_eq!(SpawnErrorKind::PermissionDenied.shell_code(), 126);
    }

    #[tokio::test]
    async fn bad_frames_are_errors() {
        let mut r: &[u8] = &[99, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::UnknownKind(99))
        ));
        let mut r: &[u8] = &[2, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut r: &[u8] = &[2, 0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[2, 0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[20, 0, 0, 0, 1, 1];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::BadLength { expected: 4, .. })
        ));
        let mut r: &[u8] = &[4, 0, 0, 0, 5, b'"', b'N', b'O', b'P', b'"'];
        let err = read_frame(&mut r).await.unwrap_err();
        assert!(matches!(err, FrameError::Json { .. }), "{err}");
        let mut r: &[u8] = &[];
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }
}
