//! What the daemon uses to talk to an agent.
//!
//! A transport is opened first — [`connect_hybrid_vsock`] for Firecracker's host side of the
//! guest's vsock, [`connect_unix`] for the host test mode or a QEMU serial chardev socket, or
//! a substream of a [`mux::Mux`] over the serial socket — and then one request is made over
//! it with [`get_json`] (or [`health`] / [`ports`] / [`host_keys`]), or [`post_json`] (the file
//! endpoints: [`read_file`] / [`write_file`] / [`list_dir`]), or one exec session is run on it with
//! [`exec::exec`]. Each request uses its own stream and asks the agent to close it afterwards.
//!
//! - [`exec`]: running a command in the guest ([`crate::exec`] is the protocol).
//! - [`mux`]: several streams over one virtio-serial stream ([`crate::mux`] is the protocol).
//!
//! The guest is not trusted: an answer is read only up to [`MAX_ANSWER_LEN`] (body) and
//! [`MAX_HEAD_LEN`] (status line and headers), and the whole exchange is bounded by the
//! caller's timeout, so a guest answering gigabytes, never finishing, or trickling bytes costs
//! the daemon a few MiB for a few seconds and gets a clear error.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_core::quote::quote_prefix;
use banger_http::capped::{self, CappedError};
use banger_http::upgrade::{BodyEnd, Limits, UpgradeError, UpgradeRequest};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::files::{
    DirListing, FILE_LIST_PATH, FILE_READ_PATH, FILE_WRITE_PATH, FileContent, ListDir, ReadFile,
    WriteFile, Written,
};
use crate::wire::{ErrorBody, HOST_KEYS_PATH, Health, HostKeys, Ports};

pub mod exec;
pub mod mux;

/// A reasonable bound for one agent request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest acknowledgement line accepted in the hybrid vsock handshake.
const MAX_ACK_LEN: usize = 64;

/// Largest answer body read from an agent, in bytes. `/ports` is the big one: a listener is
/// about 150 bytes plus its command line, so 4 MiB holds thousands of listeners with long
/// command lines, while a hostile guest can make the daemon buffer no more than this.
pub const MAX_ANSWER_LEN: usize = 4 << 20;

/// Largest status line plus headers read from an agent, in bytes (hyper's read buffer; its
/// minimum is 8 KiB). The agent sends a handful of short headers.
pub const MAX_HEAD_LEN: usize = 64 << 10;

/// How much of a refused answer's body an error message quotes, in bytes.
const MAX_QUOTED: usize = banger_core::quote::DEFAULT_QUOTE;

/// A failure reaching the agent or understanding its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("cannot send \"CONNECT {port}\" on {}", socket.display())]
    HandshakeSend {
        socket: PathBuf,
        port: u32,
        source: io::Error,
    },
    #[error("cannot read the reply to \"CONNECT {port}\" on {}", socket.display())]
    HandshakeRecv {
        socket: PathBuf,
        port: u32,
        source: io::Error,
    },
    #[error(
        "{} closed the connection after \"CONNECT {port}\" (read {got:?}): nothing listens on vsock port {port} in the guest yet",
        socket.display()
    )]
    HandshakeClosed {
        socket: PathBuf,
        port: u32,
        got: String,
    },
    #[error("{} answered \"CONNECT {port}\" with {got:?}, expected \"OK <port>\"", socket.display())]
    HandshakeRefused {
        socket: PathBuf,
        port: u32,
        got: String,
    },
    #[error("agent {path}: HTTP handshake failed")]
    Handshake { path: String, source: hyper::Error },
    #[error("agent {path}: cannot build request")]
    BuildRequest {
        path: String,
        source: hyper::http::Error,
    },
    #[error("agent {path}: request failed")]
    Request { path: String, source: hyper::Error },
    #[error("agent {path}: cannot read answer body")]
    Body {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "agent {path}: the answer is larger than the {limit}-byte limit{}; the guest agent is broken or hostile",
        declared.map(|n| format!(" (it announced {n} bytes)")).unwrap_or_default()
    )]
    TooLarge {
        path: String,
        limit: usize,
        /// The answer's `Content-Length`, when it announced one.
        declared: Option<u64>,
    },
    #[error("agent {path}: answered {status}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
    #[error("agent {path}: cannot encode the request")]
    Encode {
        path: String,
        source: serde_json::Error,
    },
    #[error("agent {path}: answer is not the expected JSON")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    #[error("agent {path}: no answer within {after:?}")]
    Timeout { path: String, after: Duration },
    #[error("agent {path}: answered {status} instead of 101 Switching Protocols to {protocol}")]
    NotUpgraded {
        path: String,
        protocol: String,
        status: u16,
    },
    #[error("agent {path}: the connection was not handed over after 101 Switching Protocols")]
    Upgrade {
        path: String,
        #[source]
        source: hyper::Error,
    },
}

/// Connects to a Unix socket: the agent's `--listen-unix` socket or a QEMU chardev socket
/// wired to the guest's virtio-serial port.
pub async fn connect_unix(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            socket: path.to_path_buf(),
            source,
        })
}

/// Opens a stream to guest vsock `port` through Firecracker's host-side Unix socket.
///
/// Firecracker's host-initiated protocol: connect to the vsock device's `uds_path`, send
/// `CONNECT <port>\n`, and read back `OK <host port>\n`; from then on the stream is the guest
/// connection. When nothing listens on the port in the guest Firecracker closes the connection
/// instead. The acknowledgement is read one byte at a time so no byte of the guest's stream is
/// consumed. This does not time out by itself: callers bound it with `tokio::time::timeout`.
pub async fn connect_hybrid_vsock(uds_path: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let mut stream = connect_unix(uds_path).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|source| ClientError::HandshakeSend {
            socket: uds_path.to_path_buf(),
            port,
            source,
        })?;

    let mut line = Vec::with_capacity(MAX_ACK_LEN);
    loop {
        let mut byte = [0u8; 1];
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|source| ClientError::HandshakeRecv {
                socket: uds_path.to_path_buf(),
                port,
                source,
            })?;
        if n == 0 {
            return Err(ClientError::HandshakeClosed {
                socket: uds_path.to_path_buf(),
                port,
                got: String::from_utf8_lossy(&line).into_owned(),
            });
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
        if line.len() >= MAX_ACK_LEN {
            return Err(ClientError::HandshakeRefused {
                socket: uds_path.to_path_buf(),
                port,
                got: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
    if is_ack(&line) {
        Ok(stream)
    } else {
        Err(ClientError::HandshakeRefused {
            socket: uds_path.to_path_buf(),
            port,
            got: String::from_utf8_lossy(&line).into_owned(),
        })
    }
}

/// Whether `line` is `OK <decimal u32>\n`.
fn is_ack(line: &[u8]) -> bool {
    let Some(rest) = line
        .strip_prefix(b"OK ")
        .and_then(|r| r.strip_suffix(b"\n"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .is_some()
}

/// Makes one `GET path` request over `stream` and decodes the JSON answer, within `timeout`.
///
/// A non-2xx answer becomes [`ClientError::Status`] carrying the agent's `error` message.
pub async fn get_json<T, S>(stream: S, path: &str, timeout: Duration) -> Result<T, ClientError>
where
    T: DeserializeOwned,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(timeout, request(stream, Method::GET, path, Vec::new())).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ClientError::Timeout {
            path: format!("GET {path}"),
            after: timeout,
        }),
    }
}

/// `GET /healthz`.
pub async fn health<S>(stream: S, timeout: Duration) -> Result<Health, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    get_json(stream, "/healthz", timeout).await
}

/// `GET /ports`.
pub async fn ports<S>(stream: S, timeout: Duration) -> Result<Ports, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    get_json(stream, "/ports", timeout).await
}

/// `GET /host-keys`; `timeout` covers the agent's wait for a first boot still making them.
pub async fn host_keys<S>(stream: S, timeout: Duration) -> Result<HostKeys, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    get_json(stream, HOST_KEYS_PATH, timeout).await
}

/// `POST /identity` ([`crate::identity`]): the guest's new host keys.
pub async fn identity<S>(
    stream: S,
    req: &crate::identity::Identity,
    timeout: Duration,
) -> Result<HostKeys, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    post_json(stream, crate::identity::IDENTITY_PATH, req, timeout).await
}

/// Makes one `POST path` request with `body` as JSON over `stream` and decodes the JSON
/// answer, within `timeout` (the file endpoints).
///
/// A non-2xx answer becomes [`ClientError::Status`] carrying the agent's `error` message.
pub async fn post_json<T, B, S>(
    stream: S,
    path: &str,
    body: &B,
    timeout: Duration,
) -> Result<T, ClientError>
where
    T: DeserializeOwned,
    B: serde::Serialize,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let what = format!("POST {path}");
    let bytes = serde_json::to_vec(body).map_err(|source| ClientError::Encode {
        path: what.clone(),
        source,
    })?;
    match tokio::time::timeout(timeout, request(stream, Method::POST, path, bytes)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ClientError::Timeout {
            path: what,
            after: timeout,
        }),
    }
}

/// `POST /files/read` ([`crate::files`]).
pub async fn read_file<S>(
    stream: S,
    req: &ReadFile,
    timeout: Duration,
) -> Result<FileContent, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    post_json(stream, FILE_READ_PATH, req, timeout).await
}

/// `POST /files/write` ([`crate::files`]).
pub async fn write_file<S>(
    stream: S,
    req: &WriteFile,
    timeout: Duration,
) -> Result<Written, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    post_json(stream, FILE_WRITE_PATH, req, timeout).await
}

/// `POST /files/list` ([`crate::files`]).
pub async fn list_dir<S>(
    stream: S,
    req: &ListDir,
    timeout: Duration,
) -> Result<DirListing, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    post_json(stream, FILE_LIST_PATH, req, timeout).await
}

/// One request over `stream`, its answer decoded; errors name `METHOD path`.
async fn request<T, S>(
    stream: S,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<T, ClientError>
where
    T: DeserializeOwned,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let what = format!("{method} {path}");
    let (mut sender, _conn) = banger_http::handshake(stream, Some(MAX_HEAD_LEN))
        .await
        .map_err(|source| ClientError::Handshake {
            path: what.clone(),
            source,
        })?;
    send(&mut sender, method, path, body, true).await
}

/// Whether `err`, from [`identity_on_live`] or [`host_keys_on_live`] or the connection made
/// for it, came before the request after the probe was sent (the connection or its health probe failed): then nothing
/// reached the agent's identity step and a new connection may try again.
pub fn request_not_sent(err: &ClientError) -> bool {
    use ClientError as E;
    match err {
        E::Connect { .. }
        | E::HandshakeSend { .. }
        | E::HandshakeRecv { .. }
        | E::HandshakeClosed { .. }
        | E::HandshakeRefused { .. } => true,
        E::Handshake { path, .. }
        | E::Request { path, .. }
        | E::Body { path, .. }
        | E::Status { path, .. }
        | E::Decode { path, .. }
        | E::Timeout { path, .. } => path == "GET /healthz",
        _ => false,
    }
}

/// `POST /identity` after a `GET /healthz` answered on the same connection, so the identity
/// request goes to an agent that is serving this very connection. A virtio-serial port is
/// one stream that the agent closes and reopens after each host disconnect, and the guest
/// kernel discards what the host sent between the agent's end-of-file and its close: a
/// request written right after the previous connection closed can vanish, and its answer
/// never comes. A health check that is lost that way only costs `probe`
/// ([`ClientError::Timeout`] on `GET /healthz`; connect and try again); the identity,
/// which must not be sent twice, is only sent once the agent answered here.
pub async fn identity_on_live<S>(
    stream: S,
    req: &crate::identity::Identity,
    probe: Duration,
    timeout: Duration,
) -> Result<HostKeys, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, _conn) = probed(stream, probe).await?;
    let path = crate::identity::IDENTITY_PATH;
    let what = format!("POST {path}");
    let bytes = serde_json::to_vec(req).map_err(|source| ClientError::Encode {
        path: what.clone(),
        source,
    })?;
    match tokio::time::timeout(timeout, send(&mut sender, Method::POST, path, bytes, true)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ClientError::Timeout {
            path: what,
            after: timeout,
        }),
    }
}

/// `GET /host-keys` after a `GET /healthz` answered on the same connection, for the reason
/// [`identity_on_live`] gives: the answer may take long (a first boot still making its
/// keys), so a request lost in the agent's reopen gap must cost `probe`, not `timeout`.
/// A failure for which [`request_not_sent`] holds may be tried again.
pub async fn host_keys_on_live<S>(
    stream: S,
    probe: Duration,
    timeout: Duration,
) -> Result<HostKeys, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, _conn) = probed(stream, probe).await?;
    let what = format!("GET {HOST_KEYS_PATH}");
    let keys = send(&mut sender, Method::GET, HOST_KEYS_PATH, Vec::new(), true);
    match tokio::time::timeout(timeout, keys).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ClientError::Timeout {
            path: what,
            after: timeout,
        }),
    }
}

/// An HTTP connection on `stream` on which the agent has just answered `GET /healthz`
/// within `probe` (see [`identity_on_live`]).
async fn probed<S>(
    stream: S,
    probe: Duration,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        banger_http::Connection,
    ),
    ClientError,
>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let what = "GET /healthz".to_string();
    let (mut sender, conn) = banger_http::handshake(stream, Some(MAX_HEAD_LEN))
        .await
        .map_err(|source| ClientError::Handshake {
            path: what.clone(),
            source,
        })?;
    let health = send::<Health>(&mut sender, Method::GET, "/healthz", Vec::new(), false);
    match tokio::time::timeout(probe, health).await {
        Ok(result) => result.map(|_| ())?,
        Err(_elapsed) => {
            return Err(ClientError::Timeout {
                path: what,
                after: probe,
            });
        }
    }
    Ok((sender, conn))
}

/// One request on an open HTTP connection, its answer decoded; `close` asks the agent to
/// end the connection after answering.
async fn send<T>(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Vec<u8>,
    close: bool,
) -> Result<T, ClientError>
where
    T: DeserializeOwned,
{
    let what = format!("{method} {path}");
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "banger-agent")
        .header(header::ACCEPT, "application/json");
    if close {
        req = req.header(header::CONNECTION, "close");
    }
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req =
        req.body(Full::new(Bytes::from(body)))
            .map_err(|source| ClientError::BuildRequest {
                path: what.clone(),
                source,
            })?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|source| ClientError::Request {
            path: what.clone(),
            source,
        })?;
    let status = resp.status();
    let body = read_capped(resp, &what).await?;

    if !status.is_success() {
        return Err(status_error(&what, status, &body));
    }
    serde_json::from_slice(&body).map_err(|source| ClientError::Decode { path: what, source })
}

/// Asks the agent to switch `stream` to `protocol` with `GET path` and `Upgrade: protocol`
/// ([`banger_http::upgrade`]), and returns the stream once the agent agreed (`101 Switching
/// Protocols`), within `timeout` when there is one. An agent that answers anything else is
/// [`ClientError::Status`] with its error message (when it sent an error answer) or
/// [`ClientError::NotUpgraded`].
pub(crate) async fn upgrade<S>(
    stream: S,
    path: &str,
    protocol: &str,
    timeout: Option<Duration>,
) -> Result<banger_http::upgrade::Upgraded, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = UpgradeRequest {
        method: &Method::GET,
        target: path,
        host: "banger-agent",
        protocol,
    };
    let limits = Limits {
        max_head: Some(MAX_HEAD_LEN),
        max_body: MAX_ANSWER_LEN,
    };
    let path = || format!("GET {path}");
    banger_http::upgrade::upgrade(stream, request, limits, timeout)
        .await
        .map_err(|e| match e {
            UpgradeError::Handshake(source) => ClientError::Handshake {
                path: path(),
                source,
            },
            UpgradeError::Build(source) => ClientError::BuildRequest {
                path: path(),
                source,
            },
            UpgradeError::Request(source) => ClientError::Request {
                path: path(),
                source,
            },
            UpgradeError::Upgrade(source) => ClientError::Upgrade {
                path: path(),
                source,
            },
            UpgradeError::Timeout { after } => ClientError::Timeout {
                path: path(),
                after,
            },
            UpgradeError::Refused(refusal) => match refusal.end {
                BodyEnd::TooLarge { declared } => ClientError::TooLarge {
                    path: path(),
                    limit: MAX_ANSWER_LEN,
                    declared,
                },
                BodyEnd::Failed(source) => ClientError::Body {
                    path: path(),
                    source: Box::new(source),
                },
                BodyEnd::Complete if !refusal.status.is_success() => {
                    status_error(&path(), refusal.status, &refusal.body)
                }
                BodyEnd::Complete => ClientError::NotUpgraded {
                    path: path(),
                    protocol: protocol.to_string(),
                    status: refusal.status.as_u16(),
                },
            },
        })
}

/// Reads an answer's body, refusing one larger than [`MAX_ANSWER_LEN`].
async fn read_capped(
    resp: hyper::Response<hyper::body::Incoming>,
    path: &str,
) -> Result<Bytes, ClientError> {
    let (parts, body) = resp.into_parts();
    capped::read_capped(&parts.headers, body, MAX_ANSWER_LEN)
        .await
        .map_err(|e| match e {
            CappedError::TooLarge { declared } => ClientError::TooLarge {
                path: path.to_string(),
                limit: MAX_ANSWER_LEN,
                declared,
            },
            CappedError::Read(source) => ClientError::Body {
                path: path.to_string(),
                source,
            },
        })
}

/// A non-2xx answer to `path` as an error carrying the agent's message.
fn status_error(path: &str, status: StatusCode, body: &[u8]) -> ClientError {
    ClientError::Status {
        path: path.to_string(),
        status: status.as_u16(),
        message: error_message(status, body),
    }
}

/// The agent's `error` message, or the raw body when it is not an [`ErrorBody`]; at most
/// [`MAX_QUOTED`] bytes of either, since the guest chose them.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => quote_prefix(e.error.as_bytes(), MAX_QUOTED),
        Err(_) if body.is_empty() => status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string(),
        Err(_) => quote_prefix(body, MAX_QUOTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_before_the_identity_request_may_be_tried_again() {
        let timeout = |path: &str| ClientError::Timeout {
            path: path.into(),
            after: Duration::from_secs(1),
        };
        let refused = ClientError::Connect {
            socket: "/run/x/agent.sock".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(request_not_sent(&refused));
        assert!(request_not_sent(&timeout("GET /healthz")));
        assert!(!request_not_sent(&timeout("POST /identity")));
        let status = ClientError::Status {
            path: "POST /identity".into(),
            status: 500,
            message: "steps failed".into(),
        };
        assert!(!request_not_sent(&status));
    }

    #[test]
    fn ack_line_must_be_ok_and_a_port() {
        assert!(is_ack(b"OK 1073741824\n"));
        assert!(is_ack(b"OK 0\n"));
        assert!(!is_ack(b"OK 1073741824"));
        assert!(!is_ack(b"OK \n"));
        assert!(!is_ack(b"OK -1\n"));
        assert!(!is_ack(b"OK 99999999999\n"));
        assert!(!is_ack(b"ok 5\n"));
        assert!(!is_ack(b"HTTP/1.1 400 Bad Request\n"));
    }

    #[test]
    fn error_message_prefers_agent_error() {
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, br#"{"error":"no such endpoint"}"#),
            "no such endpoint"
        );
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, b"oops"), "oops");
    }

    #[test]
    fn error_message_quotes_at_most_the_limit() {
        let long = vec![b'x'; 10_000];
        let text = error_message(StatusCode::BAD_GATEWAY, &long);
        assert!(text.len() < MAX_QUOTED + 40, "{}", text.len());
        assert!(text.ends_with("... (10000 bytes in all)"), "{text}");
        let body = serde_json::to_vec(&ErrorBody {
            error: "e".repeat(2000),
        })
        .unwrap();
        let text = error_message(StatusCode::NOT_FOUND, &body);
        assert!(
            text.starts_with("eee") && text.ends_with("(2000 bytes in all)"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn times_out_when_nothing_answers() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let err = get_json::<Health, _>(ours, "/healthz", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("/healthz"), "{err}");
    }

    #[tokio::test]
    async fn connect_unix_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let err = connect_unix(&path).await.unwrap_err();
        assert!(err.to_string().contains("missing.sock"), "{err}");
    }
}
