//! Firecracker's API over its Unix socket: an HTTP/1.1 client ([`ApiClient`], one connection
//! per request, every request bounded by a timeout) and the request and answer bodies banger
//! uses, as `firecracker.yaml` defines them.
//!
//! A refused request becomes [`ApiError::Status`] carrying the method, the path, the status and
//! Firecracker's `fault_message`, which says what was wrong ("The kernel file cannot be
//! opened: ...").
//!
//! The VMM runs beside a guest and its socket could be taken over, so answers are not
//! trusted: the head is read into at most [`MAX_HEAD_LEN`] bytes, the body up to
//! [`MAX_ANSWER_LEN`] bytes, and every request is bounded by the timeout.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_core::quote::{DEFAULT_QUOTE, quote_prefix};
use banger_http::capped::{CappedError, read_capped};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// Bound of one API request unless [`ApiClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer body read from the API, in bytes. Firecracker answers banger's requests with
/// an empty body, `InstanceInfo` (about 100 bytes) or a one-line `fault_message`; 64 KiB
/// leaves room for any of them and for verbose future faults.
pub const MAX_ANSWER_LEN: usize = 64 << 10;

/// Largest status line plus headers read from the API (hyper's read buffer, at least 8 KiB).
pub const MAX_HEAD_LEN: usize = 64 << 10;

/// A failed API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {path}: cannot connect to the Firecracker API socket {}", socket.display())]
    Connect {
        socket: PathBuf,
        method: Method,
        path: String,
        source: io::Error,
    },
    #[error("{method} {path}: the body cannot be encoded")]
    Encode {
        method: Method,
        path: String,
        source: serde_json::Error,
    },
    #[error("{method} {path} on {}: cannot build the request", socket.display())]
    Build {
        socket: PathBuf,
        method: Method,
        path: String,
        source: hyper::http::Error,
    },
    #[error("{method} {path} on {}: HTTP exchange failed", socket.display())]
    Http {
        socket: PathBuf,
        method: Method,
        path: String,
        source: hyper::Error,
    },
    #[error(
        "{method} {path} on {}: the answer is larger than the {limit}-byte limit{}",
        socket.display(),
        declared.map(|n| format!(" (it announced {n} bytes)")).unwrap_or_default()
    )]
    TooLarge {
        socket: PathBuf,
        method: Method,
        path: String,
        limit: usize,
        /// The answer's `Content-Length`, when it announced one.
        declared: Option<u64>,
    },
    #[error("{method} {path} on {}: cannot read the answer body", socket.display())]
    Body {
        socket: PathBuf,
        method: Method,
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{method} {path} on {}: no answer within {after:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        method: Method,
        path: String,
        after: Duration,
    },
    #[error("{method} {path} on {}: Firecracker answered {status}: {fault_message}", socket.display())]
    Status {
        socket: PathBuf,
        method: Method,
        path: String,
        status: StatusCode,
        /// Firecracker's `fault_message`, or the raw body when there is none.
        fault_message: String,
    },
    #[error("{method} {path} on {}: unexpected answer ({status}): {detail}", socket.display())]
    Decode {
        socket: PathBuf,
        method: Method,
        path: String,
        status: StatusCode,
        detail: String,
    },
}

impl ApiError {
    /// Whether nothing accepted the connection (no VMM, or a stale socket).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// Firecracker's `fault_message`, when it refused the request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            Self::Status { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }
}

/// The run state in [`InstanceInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum InstanceState {
    /// `"Not started"`: configurable, not booted.
    NotStarted,
    Running,
    Paused,
    /// A state this client does not know.
    Other(String),
}

impl From<String> for InstanceState {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Not started" => Self::NotStarted,
            "Running" => Self::Running,
            "Paused" => Self::Paused,
            _ => Self::Other(s),
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
            Self::Other(s) => s,
        })
    }
}

/// Answer to `GET /` (`InstanceInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    /// The `--id` the VMM was started with.
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
}

/// `PUT /machine-config` (`MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfig {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
}

/// `PUT /boot-source` (`BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    pub boot_args: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /drives/{drive_id}` (`Drive`, virtio-block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}` (`NetworkInterface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: String,
}

/// `PUT /vsock` (`Vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `PATCH /drives/{drive_id}` (`PartialDrive`): a new backing file, or the same one re-read
/// (its size included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialDrive {
    pub drive_id: String,
    pub path_on_host: String,
}

/// The `state` of `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VmRunState {
    Paused,
    Resumed,
}

/// `PATCH /vm` (`Vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmStateChange {
    pub state: VmRunState,
}

/// The `snapshot_type` of `PUT /snapshot/create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SnapshotType {
    Full,
    Diff,
}

/// `PUT /snapshot/create` (`SnapshotCreateParams`): the device state into `snapshot_path`,
/// the whole guest memory into `mem_file_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCreate {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

/// The `backend_type` of a `MemoryBackend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MemBackendType {
    /// The memory file is mapped privately: copy-on-write, pages faulted in by the kernel.
    File,
    Uffd,
}

/// `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemBackend {
    pub backend_type: MemBackendType,
    pub backend_path: String,
}

/// `NetworkOverride`: the TAP a restored interface uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `VsockOverride`: the host-side socket a restored vsock device binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// `PUT /snapshot/load` (`SnapshotLoadParams`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotLoad {
    pub snapshot_path: String,
    pub mem_backend: MemBackend,
    pub network_overrides: Vec<NetworkOverride>,
    pub vsock_override: VsockOverride,
    pub resume_vm: bool,
}

/// The `action_type` of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PUT /actions` (`InstanceActionInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InstanceAction {
    pub action_type: ActionType,
}

/// What came back, before interpretation.
struct Answer {
    status: StatusCode,
    body: Bytes,
    peer_pid: Option<u32>,
}

/// A client bound to one Firecracker API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for `socket`, with [`DEFAULT_TIMEOUT`] per request.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds every request (connect, send, answer) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /`: the instance's id and state.
    pub async fn describe(&self) -> Result<InstanceInfo, ApiError> {
        self.describe_with_peer().await.map(|(info, _)| info)
    }

    /// `GET /`, plus the pid of the process listening on the socket (from the socket's peer
    /// credentials), when the kernel reports one visible in this pid namespace.
    pub async fn describe_with_peer(&self) -> Result<(InstanceInfo, Option<u32>), ApiError> {
        let method = Method::GET;
        let answer = self.exchange(&method, "/", None).await?;
        let answer = self.expect_success(&method, "/", answer)?;
        let info = serde_json::from_slice(&answer.body).map_err(|e| ApiError::Decode {
            socket: self.socket.clone(),
            method: method.clone(),
            path: "/".to_string(),
            status: answer.status,
            detail: format!("{e}: {}", quote_prefix(&answer.body, DEFAULT_QUOTE)),
        })?;
        Ok((info, answer.peer_pid))
    }

    /// `PUT path` with a JSON body; any 2xx answer is success.
    pub async fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), ApiError> {
        self.send(Method::PUT, path, body).await
    }

    /// `PATCH path` with a JSON body; any 2xx answer is success.
    pub async fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<(), ApiError> {
        self.send(Method::PATCH, path, body).await
    }

    /// `method path` with a JSON body; any 2xx answer is success.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ApiError::Encode {
            method: method.clone(),
            path: path.to_string(),
            source,
        })?;
        let answer = self.exchange(&method, path, Some(bytes)).await?;
        self.expect_success(&method, path, answer).map(drop)
    }

    /// `PUT /actions`.
    pub async fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        self.put("/actions", &InstanceAction { action_type }).await
    }

    fn expect_success(
        &self,
        method: &Method,
        path: &str,
        answer: Answer,
    ) -> Result<Answer, ApiError> {
        if answer.status.is_success() {
            return Ok(answer);
        }
        Err(ApiError::Status {
            socket: self.socket.clone(),
            method: method.clone(),
            path: path.to_string(),
            status: answer.status,
            fault_message: fault_message(answer.status, &answer.body),
        })
    }

    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ApiError> {
        match tokio::time::timeout(self.timeout, self.exchange_unbounded(method, path, body)).await
        {
            Ok(result) => result,
            Err(_elapsed) => Err(ApiError::Timeout {
                socket: self.socket.clone(),
                method: method.clone(),
                path: path.to_string(),
                after: self.timeout,
            }),
        }
    }

    async fn exchange_unbounded(
        &self,
        method: &Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ApiError> {
        let http = |source| ApiError::Http {
            socket: self.socket.clone(),
            method: method.clone(),
            path: path.to_string(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    method: method.clone(),
                    path: path.to_string(),
                    source,
                })?;
        let peer_pid = banger_http::peer_pid(&stream);
        let (mut sender, _conn) = banger_http::handshake(stream, Some(MAX_HEAD_LEN))
            .await
            .map_err(http)?;

        let builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        let request = match body {
            Some(bytes) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(bytes))),
            None => builder.body(Full::new(Bytes::new())),
        }
        .map_err(|source| ApiError::Build {
            socket: self.socket.clone(),
            method: method.clone(),
            path: path.to_string(),
            source,
        })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = self.read_capped(method, path, response).await?;
        Ok(Answer {
            status,
            body,
            peer_pid,
        })
    }

    /// Reads an answer's body, refusing one larger than [`MAX_ANSWER_LEN`].
    async fn read_capped(
        &self,
        method: &Method,
        path: &str,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Bytes, ApiError> {
        let (parts, body) = response.into_parts();
        read_capped(&parts.headers, body, MAX_ANSWER_LEN)
            .await
            .map_err(|e| match e {
                CappedError::TooLarge { declared } => ApiError::TooLarge {
                    socket: self.socket.clone(),
                    method: method.clone(),
                    path: path.to_string(),
                    limit: MAX_ANSWER_LEN,
                    declared,
                },
                CappedError::Read(source) => ApiError::Body {
                    socket: self.socket.clone(),
                    method: method.clone(),
                    path: path.to_string(),
                    source,
                },
            })
    }
}

/// Firecracker's `{"fault_message": ...}`, else the raw body, else the status's reason; at
/// most [`DEFAULT_QUOTE`] bytes of either.
fn fault_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Fault {
        fault_message: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(fault) => quote_prefix(fault.fault_message.as_bytes(), DEFAULT_QUOTE),
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string(),
        Err(_) => quote_prefix(body.trim_ascii(), DEFAULT_QUOTE),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    #[test]
    fn fault_message_prefers_firecracker_field() {
        assert_eq!(
            fault_message(
                StatusCode::BAD_REQUEST,
                br#"{"fault_message":"The kernel file cannot be opened"}"#
            ),
            "The kernel file cannot be opened"
        );
        assert_eq!(fault_message(StatusCode::BAD_REQUEST, b""), "Bad Request");
        assert_eq!(fault_message(StatusCode::BAD_REQUEST, b"oops\n"), "oops");
    }

    #[test]
    fn instance_info_decodes_every_state() {
        for (text, state) in [
            ("Not started", InstanceState::NotStarted),
            ("Running", InstanceState::Running),
            ("Paused", InstanceState::Paused),
            ("Exploded", InstanceState::Other("Exploded".to_string())),
        ] {
            let info: InstanceInfo = serde_json::from_value(json!({
                "app_name": "Firecracker", "id": "abc", "state": text, "vmm_version": "1.12.0"
            }))
            .unwrap();
            assert_eq!(info.state, state);
            assert_eq!(info.state.to_string(), text);
        }
    }

    #[test]
    fn action_bodies() {
        assert_eq!(
            serde_json::to_value(InstanceAction {
                action_type: ActionType::SendCtrlAltDel
            })
            .unwrap(),
            json!({"action_type": "SendCtrlAltDel"})
        );
    }

    /// Serves one connection with a canned HTTP answer and returns the request it read.
    async fn serve_once(listener: UnixListener, answer: &'static str) -> String {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= head_end + 4 + length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        stream.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8(request).unwrap()
    }

    #[tokio::test]
    async fn refused_put_carries_method_path_status_and_fault() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_once(
            listener,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 37\r\n\r\n{\"fault_message\":\"no such kernel x\"}\n",
        ));
        let client = ApiClient::new(&socket);
        let err = client
            .put(
                "/boot-source",
                &BootSource {
                    kernel_image_path: "/x".into(),
                    boot_args: "console=ttyS0".into(),
                    initrd_path: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.fault_message(), Some("no such kernel x"));
        let text = err.to_string();
        assert!(text.starts_with("PUT /boot-source on "), "{text}");
        assert!(text.contains("api.sock"), "{text}");
        assert!(text.contains("400 Bad Request"), "{text}");
        assert!(text.ends_with("no such kernel x"), "{text}");

        let request = server.await.unwrap();
        assert!(
            request.starts_with("PUT /boot-source HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"kernel_image_path":"/x","boot_args":"console=ttyS0"}"#),
            "{request}"
        );
    }

    #[tokio::test]
    async fn describe_reports_the_peer_pid() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let body =
            r#"{"app_name":"Firecracker","id":"vm1","state":"Running","vmm_version":"1.12.0"}"#;
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = tokio::spawn(serve_once(listener, answer));
        let (info, pid) = ApiClient::new(&socket).describe_with_peer().await.unwrap();
        assert_eq!(info.id, "vm1");
        assert_eq!(info.state, InstanceState::Running);
        assert_eq!(pid, Some(std::process::id()));
        assert!(server.await.unwrap().starts_with("GET / HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn silent_server_times_out_and_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = ApiClient::new(&socket)
            .with_timeout(Duration::from_millis(100))
            .describe()
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Timeout { .. }), "{err}");
        assert!(err.to_string().starts_with("GET / on "), "{err}");

        let err = ApiClient::new(dir.path().join("missing.sock"))
            .describe()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert!(err.to_string().contains("missing.sock"), "{err}");
    }

    // Adversarial corpus: a hostile Firecracker API socket. Each case asserts a clear error
    // naming the request and the socket, and that the hostile server could push only a bounded
    // number of bytes before the client stopped reading.

    /// What a hostile server may push past a cap before the client's refusal reaches it.
    const SLACK: u64 = 4 << 20;
    const GIB: u64 = 1 << 30;

    /// Accepts one connection, reads the request head, writes `head`, then (unless it is empty)
    /// `chunk` until the client goes away (at most 8 GiB), one write per `pause`; returns the
    /// bytes sent.
    async fn hostile(
        listener: UnixListener,
        head: Vec<u8>,
        chunk: Vec<u8>,
        pause: Duration,
    ) -> u64 {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let mut sent = 0u64;
        if stream.write_all(&head).await.is_err() {
            return 0;
        }
        sent += head.len() as u64;
        while !chunk.is_empty() && sent < 8 * GIB {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    }

    /// `GET /` against a hostile server; the error and the bytes the server sent.
    async fn describe_against(
        head: &str,
        chunk: &[u8],
        pause: Duration,
        timeout: Duration,
    ) -> (ApiError, u64) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(hostile(
            listener,
            head.as_bytes().to_vec(),
            chunk.to_vec(),
            pause,
        ));
        let err = ApiClient::new(&socket)
            .with_timeout(timeout)
            .describe()
            .await
            .unwrap_err();
        let sent = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the hostile server kept going after the client gave up")
            .unwrap();
        assert!(err.to_string().starts_with("GET / on "), "{err}");
        assert!(err.to_string().contains("api.sock"), "{err}");
        (err, sent)
    }

    #[tokio::test]
    async fn adversarial_vmm_api_announced_huge_body_is_refused_unread() {
        let (err, sent) = describe_against(
            &format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 8 * GIB),
            &[b' '; 65536],
            Duration::ZERO,
            DEFAULT_TIMEOUT,
        )
        .await;
        assert!(
            matches!(
                err,
                ApiError::TooLarge {
                    declared: Some(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("65536-byte limit"), "{err}");
        assert!(sent < SLACK, "{sent}");
    }

    #[tokio::test]
    async fn adversarial_vmm_api_endless_body_stops_at_the_cap() {
        let (err, sent) = describe_against(
            "HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            &[b"1000\r\n".as_slice(), &[b'x'; 0x1000], b"\r\n"].concat(),
            Duration::ZERO,
            DEFAULT_TIMEOUT,
        )
        .await;
        assert!(
            matches!(err, ApiError::TooLarge { declared: None, .. }),
            "{err}"
        );
        assert!(sent < MAX_ANSWER_LEN as u64 + SLACK, "{sent}");
    }

    #[tokio::test]
    async fn adversarial_vmm_api_huge_header_is_refused() {
        let (err, sent) = describe_against(
            "HTTP/1.1 200 OK\r\nx-big: ",
            &[b'a'; 65536],
            Duration::ZERO,
            DEFAULT_TIMEOUT,
        )
        .await;
        assert!(matches!(err, ApiError::Http { .. }), "{err}");
        assert!(sent < MAX_HEAD_LEN as u64 + SLACK, "{sent}");
    }

    #[tokio::test]
    async fn adversarial_vmm_api_trickle_hits_the_deadline() {
        let started = std::time::Instant::now();
        let (err, _) = describe_against(
            "HTTP/1.1 200 OK\r\ncontent-length: 60000\r\n\r\n",
            b"{",
            Duration::from_millis(20),
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(err, ApiError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn adversarial_vmm_api_headers_that_never_end_hit_the_deadline() {
        let started = std::time::Instant::now();
        let (err, sent) = describe_against(
            "HTTP/1.1 200 OK\r\n",
            b"x-again: and again\r\n",
            Duration::from_millis(20),
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(err, ApiError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(sent < MAX_HEAD_LEN as u64, "{sent}");
    }

    #[tokio::test]
    async fn adversarial_vmm_api_malformed_answer_is_an_http_error() {
        let (err, _) = describe_against(
            "SSH-2.0-OpenSSH_9.6\r\n\x1b[2J\r\n\r\n",
            b"",
            Duration::ZERO,
            DEFAULT_TIMEOUT,
        )
        .await;
        assert!(matches!(err, ApiError::Http { .. }), "{err}");
    }

    #[tokio::test]
    async fn adversarial_vmm_api_content_length_longer_than_the_body_is_a_body_error() {
        // Announces 100 bytes, sends one, hangs up: no half body is decoded as an answer.
        let (err, _) = describe_against(
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{",
            b"",
            Duration::ZERO,
            DEFAULT_TIMEOUT,
        )
        .await;
        assert!(matches!(err, ApiError::Body { .. }), "{err}");
    }

    #[tokio::test]
    async fn adversarial_vmm_api_content_length_shorter_than_the_body_is_a_decode_error() {
        // A whole, valid answer follows a length of 2: only the two announced bytes count, so
        // the client never takes more than the peer declared.
        let (err, _) = describe_against(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{\"id\":\"vm1\",\"state\":\"Running\"}",
            b"",
            Duration::ZERO,
            DEFAULT_TIMEOUT,
        )
        .await;
        assert!(matches!(err, ApiError::Decode { .. }), "{err}");
    }

    #[tokio::test]
    async fn adversarial_vmm_api_long_fault_message_is_quoted_short() {
        let fault = format!("{{\"fault_message\":\"{}\"}}", "f".repeat(50_000));
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n{fault}",
            fault.len()
        );
        let (err, _) = describe_against(&head, b"", Duration::ZERO, DEFAULT_TIMEOUT).await;
        let msg = err.to_string();
        assert!(matches!(err, ApiError::Status { .. }), "{msg}");
        assert!(msg.len() < 1024, "{} bytes of error", msg.len());
        assert!(msg.ends_with("(50000 bytes in all)"), "{msg}");
    }
}
