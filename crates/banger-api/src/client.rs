//! A small HTTP/1.1 client for the daemon's Unix socket: one connection per request, JSON in
//! and out, and typed errors that keep the socket path and the daemon's op id.
//!
//! A daemon that accepts a connection but never answers (stopped with SIGSTOP, wedged) must
//! not hang the CLI. With [`Client::with_timeout`]:
//! - a plain call ([`Client::get`], [`Client::post`], [`Client::delete`]) must be answered
//!   within the timeout;
//! - a long call ([`Client::post_long`]: stopping VMs, importing images) may take as long as it
//!   needs while the daemon stays responsive: every timeout period without an answer, the
//!   client asks `GET /v1/status` on a second connection, and fails when that goes unanswered;
//! - a stream ([`Client::stream`]) must deliver a line (a stage or the daemon's 500 ms
//!   heartbeat) at least once per timeout period.
//!
//! - an upgrade ([`Client::upgrade`]: `vm exec`) must be answered (`101`, or an error body)
//!   within the timeout; the connection it hands over has no timeout.
//!
//! The error ([`ClientError::NoAnswer`]) names the daemon's pid, read from the connected
//! socket (`SO_PEERCRED`), and its log file when the caller gave one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_http::Connection;
use banger_http::upgrade::{Limits, UpgradeError, UpgradeRequest};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::error::{ApiError, ErrorBody};
use crate::types::Event;

fn op_id_of<B>(resp: &hyper::Response<B>) -> String {
    resp.headers()
        .get(OP_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
use crate::routes::Route;
use crate::{API_PREFIX, OP_ID_HEADER};

/// The request target of `route`: [`API_PREFIX`] and the route's path.
fn full_path(route: Route<'_>) -> String {
    format!("{API_PREFIX}{}", route.path())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon at {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the daemon at {socket} failed ({method} {path})")]
    Http {
        socket: PathBuf,
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error(
        "daemon at {socket} sent an unreadable answer to {method} {path} (status {status}): {detail}"
    )]
    Decode {
        socket: PathBuf,
        method: Method,
        path: String,
        status: StatusCode,
        detail: String,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A daemon that accepted the connection stayed silent past the timeout.
    #[error(transparent)]
    NoAnswer(Box<NoAnswer>),
}

/// What [`ClientError::NoAnswer`] knows about the silent daemon.
#[derive(Debug, thiserror::Error)]
#[error("{}", no_answer_message(.socket, .method, .path, *.waited, *.pid, .log.as_deref(), *.stream))]
pub struct NoAnswer {
    pub socket: PathBuf,
    pub method: Method,
    pub path: String,
    pub waited: Duration,
    /// The daemon's pid, from the connection's peer credentials.
    pub pid: Option<u32>,
    pub log: Option<PathBuf>,
    /// The answer had begun streaming and then went silent.
    pub stream: bool,
}

/// `2 s`, or `250 ms` below a second.
fn human(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn no_answer_message(
    socket: &Path,
    method: &Method,
    path: &str,
    waited: Duration,
    pid: Option<u32>,
    log: Option<&Path>,
    stream: bool,
) -> String {
    let who = match pid {
        Some(p) => format!("the daemon (pid {p})"),
        None => "the daemon".to_string(),
    };
    let what = if stream {
        format!(
            "started answering {method} {path} on {} but then sent nothing for {}",
            socket.display(),
            human(waited)
        )
    } else {
        format!(
            "accepted {method} {path} on {} but did not answer within {}",
            socket.display(),
            human(waited)
        )
    };
    let mut msg = format!("{who} {what}: it is stopped (SIGSTOP) or wedged");
    if let Some(log) = log {
        msg.push_str(&format!("; its log is {}", log.display()));
    }
    match pid {
        Some(p) => msg.push_str(&format!(
            "; resume it with kill -CONT {p}, or end it with kill -9 {p} and run banger again"
        )),
        None => msg.push_str("; end the bangerd process and run banger again"),
    }
    msg.push_str(" (BANGER_CLIENT_TIMEOUT sets how long banger waits)");
    msg
}

impl ClientError {
    /// True when no daemon answered on the socket: nothing listens, or the connection was
    /// reset or closed before any answer (a daemon that is dying).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Http { source, .. } => {
                source.is_closed()
                    || source.is_incomplete_message()
                    || std::error::Error::source(source)
                        .and_then(|e| e.downcast_ref::<std::io::Error>())
                        .is_some_and(|e| {
                            matches!(
                                e.kind(),
                                std::io::ErrorKind::ConnectionReset
                                    | std::io::ErrorKind::BrokenPipe
                                    | std::io::ErrorKind::UnexpectedEof
                            )
                        })
            }
            _ => false,
        }
    }
}

/// A client bound to one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
    log: Option<PathBuf>,
}

/// How long a call may wait for the daemon (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// The answer must come within the timeout.
    Answer,
    /// The daemon must keep answering `/status` within the timeout.
    WhileAlive,
}

impl Client {
    /// A client without a timeout: it waits as long as the daemon takes.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: None,
            log: None,
        }
    }

    /// Gives up on a daemon that stays silent for `timeout` (see the module doc).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The daemon's log file, named in [`ClientError::NoAnswer`].
    pub fn with_log(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn no_answer(
        &self,
        method: &Method,
        path: &str,
        waited: Duration,
        pid: Option<u32>,
        stream: bool,
    ) -> ClientError {
        ClientError::NoAnswer(Box::new(NoAnswer {
            socket: self.socket.clone(),
            method: method.clone(),
            path: path.to_string(),
            waited,
            pid,
            log: self.log.clone(),
            stream,
        }))
    }

    /// `GET /v1{route}`.
    pub async fn get<T: DeserializeOwned>(&self, route: Route<'_>) -> Result<T, ClientError> {
        self.call(Method::GET, route, None::<&()>).await
    }

    /// `POST /v1{route}` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        route: Route<'_>,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, route, Some(body)).await
    }

    /// `POST /v1{route}` for an operation that may take long (stopping VMs, importing
    /// images): no deadline for the answer as long as the daemon keeps answering `/status`.
    pub async fn post_long<B: Serialize, T: DeserializeOwned>(
        &self,
        route: Route<'_>,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call_with(Method::POST, route, Some(body), Patience::WhileAlive)
            .await
    }

    /// `DELETE /v1{route}`.
    pub async fn delete<T: DeserializeOwned>(&self, route: Route<'_>) -> Result<T, ClientError> {
        self.call(Method::DELETE, route, None::<&()>).await
    }

    /// `POST /v1{route}` answered by an NDJSON stream of [`Event`]s: calls `on_stage` for each
    /// stage as it arrives and returns the final result (or the error).
    pub async fn stream<B: Serialize, T: DeserializeOwned>(
        &self,
        route: Route<'_>,
        body: &B,
        mut on_stage: impl FnMut(&str, &str, u64),
    ) -> Result<T, ClientError> {
        let full = full_path(route);
        let (stream, pid) = self.connect(&Method::POST, &full).await?;
        let head = self.send(stream, Method::POST, &full, Some(body));
        let (resp, conn_task) = match self.timeout {
            None => head.await?,
            Some(t) => tokio::time::timeout(t, head)
                .await
                .map_err(|_| self.no_answer(&Method::POST, &full, t, pid, false))??,
        };
        let status = resp.status();
        let op_id = op_id_of(&resp);
        let mut body = resp.into_body();
        // Aborts the connection task on every way out of this function.
        let _conn = conn_task;
        if !status.is_success() {
            let read = read_error_body(body);
            let bytes = match self.timeout {
                None => read.await,
                Some(t) => tokio::time::timeout(t, read)
                    .await
                    .map_err(|_| self.no_answer(&Method::POST, &full, t, pid, true))?,
            };
            return Err(self.error_from(status, &bytes, op_id, &Method::POST, &full));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let next = match self.timeout {
                None => body.frame().await,
                Some(t) => tokio::time::timeout(t, body.frame())
                    .await
                    .map_err(|_| self.no_answer(&Method::POST, &full, t, pid, true))?,
            };
            let Some(frame) = next else {
                break;
            };
            let frame = frame.map_err(self.http(&Method::POST, &full))?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                // Blank lines are the daemon's heartbeat.
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let ev: Event<T> =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                        socket: self.socket.clone(),
                        method: Method::POST,
                        path: full.clone(),
                        status,
                        detail: format!("bad event line: {e}"),
                    })?;
                match ev {
                    Event::Stage {
                        stage,
                        detail,
                        elapsed_ms,
                    } => on_stage(&stage, &detail, elapsed_ms),
                    Event::Result { result } => {
                        return Ok(result);
                    }
                    Event::Error { mut error } => {
                        if error.op_id.is_empty() {
                            error.op_id = op_id;
                        }
                        return Err(ClientError::Api(error));
                    }
                }
            }
        }
        Err(ClientError::Decode {
            socket: self.socket.clone(),
            method: Method::POST,
            path: full,
            status,
            detail: "the stream ended without a result".into(),
        })
    }

    fn http(&self, method: &Method, path: &str) -> impl FnOnce(hyper::Error) -> ClientError {
        let (socket, method, path) = (self.socket.clone(), method.clone(), path.to_string());
        move |source| ClientError::Http {
            socket,
            method,
            path,
            source,
        }
    }

    /// Connects to the socket; returns the stream and the daemon's pid (`SO_PEERCRED`).
    async fn connect(
        &self,
        method: &Method,
        full: &str,
    ) -> Result<(UnixStream, Option<u32>), ClientError> {
        let connect = UnixStream::connect(&self.socket);
        let stream = match self.timeout {
            None => connect.await,
            Some(t) => tokio::time::timeout(t, connect)
                .await
                .map_err(|_| self.no_answer(method, full, t, None, false))?,
        }
        .map_err(|source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        let pid = banger_http::peer_pid(&stream);
        Ok((stream, pid))
    }

    /// Sends one request on `stream` and returns the response head with a streaming body.
    async fn send<B: Serialize>(
        &self,
        stream: UnixStream,
        method: Method,
        full: &str,
        body: Option<&B>,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Connection), ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Decode {
                socket: self.socket.clone(),
                method: method.clone(),
                path: full.to_string(),
                status: StatusCode::OK,
                detail: format!("cannot encode request: {e}"),
            })?,
            None => Vec::new(),
        };
        // Dropping the future of this call (Ctrl-C) drops the connection and closes the
        // socket, which the daemon sees as a cancellation.
        let (mut sender, conn_task) = banger_http::handshake(stream, None)
            .await
            .map_err(self.http(&method, full))?;
        let req = Request::builder()
            .method(method.clone())
            .uri(full)
            .header(hyper::header::HOST, "bangerd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Decode {
                socket: self.socket.clone(),
                method: method.clone(),
                path: full.to_string(),
                status: StatusCode::OK,
                detail: format!("cannot build request: {e}"),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(self.http(&method, full))?;
        Ok((resp, conn_task))
    }

    fn error_from(
        &self,
        status: StatusCode,
        body: &[u8],
        op_id: String,
        method: &Method,
        path: &str,
    ) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(mut eb) => {
                if eb.error.op_id.is_empty() {
                    eb.error.op_id = op_id;
                }
                ClientError::Api(eb.error)
            }
            Err(_) => ClientError::Decode {
                socket: self.socket.clone(),
                method: method.clone(),
                path: path.to_string(),
                status,
                detail: if body.is_empty() {
                    "empty body".to_string()
                } else {
                    banger_core::quote::quote_prefix(body, banger_core::quote::DEFAULT_QUOTE)
                },
            },
        }
    }

    /// `POST /v1{route}` asking to switch the connection to `protocol` (`Connection: upgrade`,
    /// through [`banger_http::upgrade`]); the connection once the daemon answered `101
    /// Switching Protocols`, or the daemon's error. With a timeout, the answer must come
    /// within it.
    pub async fn upgrade(
        &self,
        route: Route<'_>,
        protocol: &str,
    ) -> Result<banger_http::upgrade::Upgraded, ClientError> {
        let method = Method::POST;
        let full = full_path(route);
        let (stream, pid) = self.connect(&method, &full).await?;
        let request = UpgradeRequest {
            method: &method,
            target: &full,
            host: "bangerd",
            protocol,
        };
        let limits = Limits {
            max_head: None,
            max_body: MAX_ERROR_BODY,
        };
        banger_http::upgrade::upgrade(stream, request, limits, self.timeout)
            .await
            .map_err(|e| match e {
                UpgradeError::Handshake(source)
                | UpgradeError::Request(source)
                | UpgradeError::Upgrade(source) => self.http(&method, &full)(source),
                UpgradeError::Build(e) => ClientError::Decode {
                    socket: self.socket.clone(),
                    method: method.clone(),
                    path: full.clone(),
                    status: StatusCode::OK,
                    detail: format!("cannot build request: {e}"),
                },
                UpgradeError::Timeout { after } => {
                    self.no_answer(&method, &full, after, pid, false)
                }
                // Whatever the daemon managed to say is reported, even cut short.
                UpgradeError::Refused(refusal) => {
                    let op_id = refusal
                        .headers
                        .get(OP_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    self.error_from(refusal.status, &refusal.body, op_id, &method, &full)
                }
            })
    }

    /// Sends one request and decodes the JSON answer (or the error body); with a timeout, the
    /// answer must come within it.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: Route<'_>,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.call_with(method, route, body, Patience::Answer).await
    }

    async fn call_with<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: Route<'_>,
        body: Option<&B>,
        patience: Patience,
    ) -> Result<T, ClientError> {
        let full = full_path(route);
        let Some(t) = self.timeout else {
            let (stream, _) = self.connect(&method, &full).await?;
            return self.exchange(stream, method, &full, body).await;
        };
        let started = tokio::time::Instant::now();
        let (stream, pid) = self.connect(&method, &full).await?;
        let exchange = self.exchange(stream, method.clone(), &full, body);
        if patience == Patience::Answer {
            return tokio::time::timeout_at(started + t, exchange)
                .await
                .map_err(|_| self.no_answer(&method, &full, t, pid, false))?;
        }
        tokio::pin!(exchange);
        loop {
            tokio::select! {
                r = &mut exchange => return r,
                _ = tokio::time::sleep(t) => {
                    // Still working, or stuck? A live daemon answers its status at once.
                    if !self.answers_status(t).await {
                        return Err(self.no_answer(&method, &full, started.elapsed(), pid, false));
                    }
                }
            }
        }
    }

    /// False when `GET /v1/status` on a new connection is not answered within `t` (an absent
    /// daemon counts as answering: the pending call then fails on its own).
    async fn answers_status(&self, t: Duration) -> bool {
        let full = full_path(Route::Status);
        let probe = async {
            let (stream, _) = self.connect(&Method::GET, &full).await?;
            self.exchange::<(), serde_json::Value>(stream, Method::GET, &full, None)
                .await
        };
        tokio::time::timeout(t, probe).await.is_ok()
    }

    /// One request on a connected stream, its whole answer decoded.
    async fn exchange<B: Serialize, T: DeserializeOwned>(
        &self,
        stream: UnixStream,
        method: Method,
        full: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let full = full.to_string();
        let (resp, conn_task) = self.send(stream, method.clone(), &full, body).await?;
        let _conn = conn_task;
        let status = resp.status();
        let op_id = op_id_of(&resp);
        if !status.is_success() {
            let body = read_error_body(resp.into_body()).await;
            return Err(self.error_from(status, &body, op_id, &method, &full));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(self.http(&method, &full))?
            .to_bytes();
        let text: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(text).map_err(|e| ClientError::Decode {
            socket: self.socket.clone(),
            method: method.clone(),
            path: full.clone(),
            status,
            detail: e.to_string(),
        })
    }
}

/// Largest error body read, in bytes: the daemon's are a few hundred.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Reads at most [`MAX_ERROR_BODY`] bytes of an error answer, and keeps what arrived when the
/// connection fails midway: whatever the daemon managed to say is reported, never dropped.
async fn read_error_body(mut body: hyper::body::Incoming) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_ERROR_BODY - bytes.len();
                    bytes.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// What the test daemon does with a request for a path.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Reads the request and never answers.
        Silent,
        /// Answers `{}` after a delay.
        After(Duration),
        /// Streams `n` heartbeats `every` apart, then a result.
        Heartbeats { n: u32, every: Duration },
        /// Sends one stage, then nothing.
        StageThenSilence,
    }

    async fn read_head(conn: &mut tokio::net::UnixStream) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut b).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(b[0]);
        }
        String::from_utf8_lossy(&head).to_string()
    }

    /// Serves `behave(path)` on a socket in `dir`; `/v1/status` answers at once unless the
    /// behaviour for it says otherwise.
    fn serve(dir: &Path, behave: fn(&str) -> Behaviour) -> PathBuf {
        let sock = dir.join("d.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let head = read_head(&mut conn).await;
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    match behave(&path) {
                        Behaviour::Silent => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Behaviour::After(d) => {
                            tokio::time::sleep(d).await;
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                                .await;
                        }
                        Behaviour::Heartbeats { n, every } => {
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                                .await;
                            for _ in 0..n {
                                tokio::time::sleep(every).await;
                                let _ = conn.write_all(b"1\r\n\n\r\n").await;
                            }
                            let line = b"{\"event\":\"result\",\"result\":7}\n";
                            let _ = conn
                                .write_all(format!("{:x}\r\n", line.len()).as_bytes())
                                .await;
                            let _ = conn.write_all(line).await;
                            let _ = conn.write_all(b"\r\n0\r\n\r\n").await;
                        }
                        Behaviour::StageThenSilence => {
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                                .await;
                            let line =
                                b"{\"event\":\"stage\",\"stage\":\"prepare\",\"detail\":\"\",\"elapsed_ms\":1}\n";
                            let _ = conn
                                .write_all(format!("{:x}\r\n", line.len()).as_bytes())
                                .await;
                            let _ = conn.write_all(line).await;
                            let _ = conn.write_all(b"\r\n").await;
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                });
            }
        });
        sock
    }

    fn client(sock: &Path, ms: u64) -> Client {
        Client::new(sock)
            .with_timeout(Duration::from_millis(ms))
            .with_log("/state/bangerd.log")
    }

    #[tokio::test]
    async fn adversarial_silent_daemon_times_out_naming_pid_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let sock = serve(dir.path(), |_| Behaviour::Silent);
        let t0 = Instant::now();
        let err = client(&sock, 300)
            .get::<serde_json::Value>(Route::Status)
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(
            !err.is_unreachable(),
            "a silent daemon is there, not absent"
        );
        let msg = err.to_string();
        let pid = std::process::id();
        assert!(
            msg.starts_with(&format!(
                "the daemon (pid {pid}) accepted GET /v1/status on {} but did not answer within 300 ms",
                sock.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("its log is /state/bangerd.log"), "{msg}");
        assert!(msg.contains(&format!("kill -CONT {pid}")), "{msg}");
        // Without a timeout the same call would wait: the default is the caller's choice.
        assert!(
            tokio::time::timeout(
                Duration::from_millis(500),
                Client::new(&sock).get::<serde_json::Value>(Route::Status)
            )
            .await
            .is_err()
        );
    }

    #[tokio::test]
    async fn long_call_waits_while_the_daemon_answers_status() {
        let dir = tempfile::tempdir().unwrap();
        let sock = serve(dir.path(), |p| {
            if p == "/v1/status" {
                Behaviour::After(Duration::ZERO)
            } else {
                Behaviour::After(Duration::from_millis(1200))
            }
        });
        let c = client(&sock, 300);
        let v: serde_json::Value = c.post_long(Route::VmActions, &()).await.unwrap();
        assert_eq!(v, serde_json::json!({}));
        // The same call with a plain deadline gives up.
        let err = c
            .post::<_, serde_json::Value>(Route::VmActions, &())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::NoAnswer(n) if !n.stream),
            "{err}"
        );
    }

    #[tokio::test]
    async fn adversarial_long_call_to_a_wedged_daemon_fails() {
        let dir = tempfile::tempdir().unwrap();
        let sock = serve(dir.path(), |_| Behaviour::Silent);
        let t0 = Instant::now();
        let err = client(&sock, 300)
            .post_long::<_, serde_json::Value>(Route::Images, &())
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let msg = err.to_string();
        assert!(msg.contains("accepted POST /v1/images"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn adversarial_stream_lives_on_heartbeats_and_fails_when_silent() {
        let dir = tempfile::tempdir().unwrap();
        let sock = serve(dir.path(), |p| {
            if p == "/v1/images/bootstrap" {
                Behaviour::Heartbeats {
                    n: 8,
                    every: Duration::from_millis(100),
                }
            } else {
                Behaviour::StageThenSilence
            }
        });
        let c = client(&sock, 300);
        // 800 ms in all, longer than the timeout, but never 300 ms without a line.
        let r: u32 = c
            .stream(Route::ImagesBootstrap, &(), |_, _, _| {})
            .await
            .unwrap();
        assert_eq!(r, 7);
        let mut stages = Vec::new();
        let t0 = Instant::now();
        let err = c
            .stream::<_, u32>(Route::VmCreate, &(), |s, _, _| stages.push(s.to_string()))
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(stages, ["prepare"]);
        let msg = err.to_string();
        assert!(
            msg.contains("started answering POST /v1/vms")
                && msg.contains("sent nothing for 300 ms"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }
}

#[cfg(test)]
mod error_body_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    /// Answers one request with `head` then `body_chunk` repeated `times` times, then closes.
    async fn answer(listener: UnixListener, head: &'static str, body_chunk: Vec<u8>, times: usize) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let _ = s.write_all(head.as_bytes()).await;
        for _ in 0..times {
            if s.write_all(&body_chunk).await.is_err() {
                return;
            }
        }
    }

    async fn status_error(head: &'static str, chunk: &[u8], times: usize) -> ClientError {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let server = tokio::spawn(answer(
            UnixListener::bind(&sock).unwrap(),
            head,
            chunk.to_vec(),
            times,
        ));
        let err = Client::new(&sock)
            .get::<serde_json::Value>(Route::Status)
            .await
            .unwrap_err();
        server.await.unwrap();
        err
    }

    #[tokio::test]
    async fn a_plain_text_error_body_is_reported_as_it_was() {
        let err = status_error(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 13\r\n\r\n",
            b"proxy says no",
            1,
        )
        .await;
        let msg = err.to_string();
        assert!(
            msg.contains("status 502") && msg.ends_with(": proxy says no"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn an_error_body_cut_off_midway_still_reports_what_arrived() {
        // Announces more than it sends, then closes: the part that came is quoted.
        let err = status_error(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 1000\r\n\r\n",
            b"the disk is on fire",
            1,
        )
        .await;
        assert!(err.to_string().ends_with(": the disk is on fire"), "{err}");
    }

    #[tokio::test]
    async fn a_huge_error_body_is_read_only_up_to_the_cap() {
        let err = status_error(
            "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n",
            &[b"400\r\n".as_slice(), &[b'x'; 0x400], b"\r\n"].concat(),
            1 << 20,
        )
        .await;
        let msg = err.to_string();
        assert!(msg.len() < 1024, "{} bytes of error", msg.len());
        assert!(msg.contains("(65536 bytes in all)"), "{msg}");
    }
}
