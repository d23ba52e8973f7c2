//! A small HTTP/1.1 client for the daemon's Unix socket: one connection per request, JSON in
//! and out, and typed errors that keep the socket path and the daemon's op id.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
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
use crate::{API_PREFIX, OP_ID_HEADER};

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
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1{path}`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `POST /v1{path}` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `DELETE /v1{path}`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// `POST /v1{path}` answered by an NDJSON stream of [`Event`]s: calls `on_stage` for each
    /// stage as it arrives and returns the final result (or the error).
    pub async fn stream<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        mut on_stage: impl FnMut(&str, &str, u64),
    ) -> Result<T, ClientError> {
        let full = format!("{API_PREFIX}{path}");
        let (resp, conn_task) = self.send(Method::POST, &full, Some(body)).await?;
        let status = resp.status();
        let op_id = op_id_of(&resp);
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = read_error_body(body).await;
            conn_task.abort();
            return Err(self.error_from(status, &bytes, op_id, &Method::POST, &full));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let Some(frame) = body.frame().await else {
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
                        conn_task.abort();
                        return Ok(result);
                    }
                    Event::Error { mut error } => {
                        conn_task.abort();
                        if error.op_id.is_empty() {
                            error.op_id = op_id;
                        }
                        return Err(ClientError::Api(error));
                    }
                }
            }
        }
        conn_task.abort();
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

    /// Connects, sends one request, and returns the response head with a streaming body.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        full: &str,
        body: Option<&B>,
    ) -> Result<
        (
            hyper::Response<hyper::body::Incoming>,
            tokio::task::JoinHandle<()>,
        ),
        ClientError,
    > {
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
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(self.http(&method, full))?;
        // Dropping the future of this call (Ctrl-C) closes the socket, which the daemon sees
        // as a cancellation.
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
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

    /// Sends one request and decodes the JSON answer (or the error body).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let full = format!("{API_PREFIX}{path}");
        let (resp, conn_task) = self.send(method.clone(), &full, body).await?;
        let status = resp.status();
        let op_id = op_id_of(&resp);
        if !status.is_success() {
            let body = read_error_body(resp.into_body()).await;
            conn_task.abort();
            return Err(self.error_from(status, &body, op_id, &method, &full));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(self.http(&method, &full))?
            .to_bytes();
        conn_task.abort();
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
            .get::<serde_json::Value>("/status")
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
