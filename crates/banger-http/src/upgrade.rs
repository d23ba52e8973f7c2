//! The client side of an HTTP/1.1 upgrade (`Connection: upgrade`, `Upgrade: <protocol>`): the
//! one implementation behind the daemon API's `vm exec` upgrade (`banger-api`) and the agent's
//! exec and mux upgrades (`banger-agent-proto`).
//!
//! [`upgrade`] sends the request and, once the server answered `101 Switching Protocols`,
//! hands the connection over ([`Upgraded`]) with any bytes the server sent after its answer's
//! head still to be read. Any other answer is a [`Refusal`]: its status, headers and (the first
//! `max_body` bytes of) its body, so the caller can surface the server's own error message.
//!
//! The connection is driven inside the returned future, not by a task: dropping the future (a
//! timeout, Ctrl-C) drops the connection and closes the socket.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, UPGRADE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection handed over after `101 Switching Protocols`.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// What to ask the server for.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeRequest<'a> {
    pub method: &'a Method,
    /// The request target (`/exec`, `/v1/vms/box/exec`).
    pub target: &'a str,
    /// The `Host` header.
    pub host: &'a str,
    /// The `Upgrade` header: the protocol the connection switches to.
    pub protocol: &'a str,
}

/// What is read of the server's answer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bounds the answer's status line and headers (hyper's read buffer, at least 8 KiB);
    /// `None` keeps hyper's default.
    pub max_head: Option<usize>,
    /// Bounds what is kept of a refusal's body.
    pub max_body: usize,
}

/// An answer other than `101 Switching Protocols`.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, or as much of it as arrived, at most [`Limits::max_body`] bytes.
    pub body: Bytes,
    /// How reading the body ended.
    pub end: BodyEnd,
}

/// How reading a refusal's body ended.
#[derive(Debug)]
pub enum BodyEnd {
    /// Read to its end.
    Complete,
    /// Longer than [`Limits::max_body`]; `declared` is its `Content-Length`, when it announced
    /// one. The body holds its first bytes.
    TooLarge { declared: Option<u64> },
    /// The connection failed before the body's end; the body holds what arrived.
    Failed(hyper::Error),
}

/// Why the connection was not upgraded. The caller adds which server and request.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("HTTP handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("cannot build the request")]
    Build(#[source] hyper::http::Error),
    #[error("request failed")]
    Request(#[source] hyper::Error),
    #[error("answered {} instead of 101 Switching Protocols", .0.status)]
    Refused(Box<Refusal>),
    #[error("the connection was not handed over after 101 Switching Protocols")]
    Upgrade(#[source] hyper::Error),
    #[error("no answer within {after:?}")]
    Timeout { after: Duration },
}

/// Asks the server at the other end of `stream` to switch to `request.protocol` and returns
/// the connection once it answered `101 Switching Protocols`. With a `timeout`, the answer
/// (and for a refusal, its body) must come within it; the connection handed over has none.
pub async fn upgrade<S>(
    stream: S,
    request: UpgradeRequest<'_>,
    limits: Limits,
    timeout: Option<Duration>,
) -> Result<Upgraded, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = exchange(stream, request, limits);
    match timeout {
        None => exchange.await,
        Some(after) => tokio::time::timeout(after, exchange)
            .await
            .unwrap_or(Err(UpgradeError::Timeout { after })),
    }
}

async fn exchange<S>(
    stream: S,
    request: UpgradeRequest<'_>,
    limits: Limits,
) -> Result<Upgraded, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http1::Builder::new();
    if let Some(limit) = limits.max_head {
        builder.max_buf_size(limit);
    }
    let (mut sender, conn) = builder
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(UpgradeError::Handshake)?;
    let req = Request::builder()
        .method(request.method.clone())
        .uri(request.target)
        .header(HOST, request.host)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, request.protocol)
        .body(Empty::<Bytes>::new())
        .map_err(UpgradeError::Build)?;
    // The connection is driven in this future. It ends once it has handed the stream over,
    // which may be before the answer is seen here.
    let mut conn = conn.with_upgrades();
    let mut conn_done = false;
    let send = sender.send_request(req);
    tokio::pin!(send);
    let resp = loop {
        tokio::select! {
            resp = &mut send => break resp.map_err(UpgradeError::Request)?,
            ended = &mut conn, if !conn_done => match ended {
                Ok(()) => conn_done = true,
                Err(e) => return Err(UpgradeError::Request(e)),
            },
        }
    };
    // No other request follows: without the sender, a connection kept alive after an answer
    // that is not 101 ends once that answer's body is read.
    drop(sender);
    let drive = async {
        if !conn_done {
            let _ = conn.await;
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (refusal, ()) = tokio::join!(refusal(resp, limits.max_body), drive);
        return Err(UpgradeError::Refused(Box::new(refusal)));
    }
    let (upgraded, ()) = tokio::join!(hyper::upgrade::on(resp), drive);
    upgraded.map(TokioIo::new).map_err(UpgradeError::Upgrade)
}

/// Reads a refusal's body, keeping at most `max_body` bytes and whatever arrived before a
/// failure.
async fn refusal(resp: Response<Incoming>, max_body: usize) -> Refusal {
    let (parts, mut body) = resp.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut bytes = Vec::new();
    // Announced longer than the limit: not read at all.
    let end = if declared.is_some_and(|n| n > max_body as u64) {
        BodyEnd::TooLarge { declared }
    } else {
        loop {
            match body.frame().await {
                None => break BodyEnd::Complete,
                Some(Err(e)) => break BodyEnd::Failed(e),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let room = max_body - bytes.len();
                    bytes.extend_from_slice(&data[..data.len().min(room)]);
                    if data.len() > room {
                        break BodyEnd::TooLarge { declared };
                    }
                }
            }
        }
    };
    Refusal {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(bytes),
        end,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;

    const REQUEST: UpgradeRequest<'static> = UpgradeRequest {
        method: &Method::POST,
        target: "/v1/thing/exec",
        host: "test",
        protocol: "test-proto/1",
    };

    const LIMITS: Limits = Limits {
        max_head: Some(8 << 10),
        max_body: 64,
    };

    /// A server that reads one request head, answers `answer` in one write and returns the
    /// head it read, with the socket.
    fn serve(
        mut theirs: UnixStream,
        answer: &'static [u8],
    ) -> tokio::task::JoinHandle<(String, UnixStream)> {
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 256];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = theirs.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "client closed before its request head");
                head.extend_from_slice(&buf[..n]);
            }
            theirs.write_all(answer).await.unwrap();
            (String::from_utf8(head).unwrap(), theirs)
        })
    }

    #[tokio::test]
    async fn a_101_hands_the_connection_over_with_the_bytes_sent_after_it() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // The server's first protocol bytes arrive in the same write as the 101.
        let server = serve(
            theirs,
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test-proto/1\r\n\r\nhello",
        );
        let mut io = upgrade(ours, REQUEST, LIMITS, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        let (head, mut theirs) = server.await.unwrap();
        let head = head.to_ascii_lowercase();
        assert!(
            head.starts_with("post /v1/thing/exec http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: upgrade\r\n"), "{head}");
        assert!(head.contains("upgrade: test-proto/1\r\n"), "{head}");
        assert!(head.contains("host: test\r\n"), "{head}");

        let mut hello = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut hello))
            .await
            .expect("the bytes sent with the 101 were lost")
            .unwrap();
        assert_eq!(&hello, b"hello", "the bytes after the 101 are not lost");
        // Both ways, raw bytes from now on.
        io.write_all(b"ping").await.unwrap();
        let mut ping = [0u8; 4];
        theirs.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
    }

    #[tokio::test]
    async fn another_answer_is_a_refusal_with_its_status_headers_and_body() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let _server = serve(
            theirs,
            b"HTTP/1.1 404 Not Found\r\nx-op-id: op-7\r\ncontent-length: 27\r\n\r\n{\"error\":\"no VM named box\"}",
        );
        let err = upgrade(ours, REQUEST, LIMITS, Some(Duration::from_secs(5)))
            .await
            .unwrap_err();
        let UpgradeError::Refused(refusal) = err else {
            panic!("expected a refusal, got {err:?}");
        };
        assert_eq!(refusal.status, StatusCode::NOT_FOUND);
        assert_eq!(refusal.headers["x-op-id"], "op-7");
        assert_eq!(refusal.body.as_ref(), br#"{"error":"no VM named box"}"#);
        assert!(
            matches!(refusal.end, BodyEnd::Complete),
            "{:?}",
            refusal.end
        );
    }

    #[tokio::test]
    async fn a_refusal_keeps_only_the_first_bytes_of_a_long_body() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let _server = serve(
            theirs,
            b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n\
              50\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n0\r\n\r\n",
        );
        let err = upgrade(ours, REQUEST, LIMITS, None).await.unwrap_err();
        let UpgradeError::Refused(refusal) = err else {
            panic!("expected a refusal, got {err:?}");
        };
        assert_eq!(refusal.body.len(), LIMITS.max_body);
        assert!(
            matches!(refusal.end, BodyEnd::TooLarge { declared: None }),
            "{:?}",
            refusal.end
        );
    }

    #[tokio::test]
    async fn a_refusal_cut_short_keeps_what_arrived() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = serve(
            theirs,
            b"HTTP/1.1 409 Conflict\r\ncontent-length: 40\r\n\r\n{\"error\":\"bu",
        );
        let upgrading = tokio::spawn(upgrade(ours, REQUEST, LIMITS, None));
        // The server goes away mid-body.
        drop(server.await.unwrap());
        let err = upgrading.await.unwrap().unwrap_err();
        let UpgradeError::Refused(refusal) = err else {
            panic!("expected a refusal, got {err:?}");
        };
        assert_eq!(refusal.status, StatusCode::CONFLICT);
        assert_eq!(refusal.body.as_ref(), br#"{"error":"bu"#);
        assert!(
            matches!(refusal.end, BodyEnd::Failed(_)),
            "{:?}",
            refusal.end
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_and_the_socket_is_closed() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let err = upgrade(ours, REQUEST, LIMITS, Some(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpgradeError::Timeout { after } if after == Duration::from_millis(50)),
            "{err:?}"
        );
        // The request was sent, and the abandoned connection is closed.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), theirs.read_to_end(&mut rest))
            .await
            .expect("the socket stayed open after the timeout");
        read.unwrap();
        assert!(rest.starts_with(b"POST /v1/thing/exec HTTP/1.1\r\n"));
    }
}
