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
    /// True when nothing answered on the socket (no daemon running).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. })
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

    /// Sends one request and decodes the JSON answer (or the error body).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let full = format!("{API_PREFIX}{path}");
        let decode = |status: StatusCode, detail: String| ClientError::Decode {
            socket: self.socket.clone(),
            method: method.clone(),
            path: full.clone(),
            status,
            detail,
        };
        let http = |source| ClientError::Http {
            socket: self.socket.clone(),
            method: method.clone(),
            path: full.clone(),
            source,
        };
        let bytes = match body {
            Some(b) => serde_json::to_vec(b)
                .map_err(|e| decode(StatusCode::OK, format!("cannot encode request: {e}")))?,
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
            .map_err(http)?;
        // The connection task ends when the exchange does; dropping the future of this call
        // (Ctrl-C) closes the socket, which the daemon sees as a cancellation.
        let conn_task = tokio::spawn(conn);
        let req = Request::builder()
            .method(method.clone())
            .uri(&full)
            .header(hyper::header::HOST, "bangerd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| decode(StatusCode::OK, format!("cannot build request: {e}")))?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let op_id = resp
            .headers()
            .get(OP_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        conn_task.abort();
        if status.is_success() {
            let text: &[u8] = if body.is_empty() { b"null" } else { &body };
            return serde_json::from_slice(text).map_err(|e| decode(status, e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(mut eb) => {
                if eb.error.op_id.is_empty() {
                    eb.error.op_id = op_id;
                }
                Err(ClientError::Api(eb.error))
            }
            Err(_) => Err(decode(
                status,
                String::from_utf8_lossy(&body).chars().take(500).collect(),
            )),
        }
    }
}
