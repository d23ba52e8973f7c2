//! HTTP/1.1 over Unix sockets, the part banger's three clients share: the daemon API client
//! (`banger-api`), the Firecracker API client (`banger-vmm`) and the guest agent client
//! (`banger-agent-proto`). Each opens one connection per request and maps failures into its
//! own error type, naming its own socket and request; this crate only drives the connection.
//!
//! - [`handshake`]: the client handshake over any byte stream, with the connection driven by
//!   a task that ends with the request ([`Connection`]).
//! - [`upgrade`]: the client side of an HTTP/1.1 upgrade (the daemon's `vm exec`, the
//!   agent's exec and mux), the one implementation both clients use.
//! - [`peer_pid`]: who is at the other end of a Unix socket.
//! - [`capped`]: reading an untrusted HTTP body up to a limit.

pub mod capped;
pub mod upgrade;

use std::error::Error;

use hyper::body::Body;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// The task driving one client connection. Dropping it aborts the task and closes the
/// socket, so a request that is done, failed or abandoned (a timeout, a dropped future) never
/// leaves a connection behind.
#[derive(Debug)]
pub struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Performs the HTTP/1.1 client handshake over `stream` and starts driving the connection.
///
/// `max_head` bounds what is buffered of an answer's status line and headers (hyper's read
/// buffer, at least 8 KiB); `None` keeps hyper's default. The connection's own failure, if
/// any, surfaces through [`SendRequest::send_request`] or the answer's body.
pub async fn handshake<S, B>(
    stream: S,
    max_head: Option<usize>,
) -> Result<(SendRequest<B>, Connection), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    if let Some(limit) = max_head {
        builder.max_buf_size(limit);
    }
    let (sender, conn) = builder.handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, Connection(task)))
}

/// The pid of the process at the other end of `stream` (`SO_PEERCRED`), when the kernel
/// reports one visible in this pid namespace.
pub fn peer_pid(stream: &UnixStream) -> Option<u32> {
    stream
        .peer_cred()
        .ok()
        .and_then(|cred| cred.pid())
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty};
    use hyper::Request;
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn one_request_over_a_socket_pair_and_the_peer_is_this_process() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        assert_eq!(peer_pid(&ours), Some(std::process::id()));
        let server = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 256];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = theirs.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "client closed before its request head");
                head.extend_from_slice(&buf[..n]);
            }
            theirs
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let (mut sender, _conn) = handshake(ours, None).await.unwrap();
        let req = Request::get("/x")
            .header(hyper::header::HOST, "test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"ok");
        assert!(server.await.unwrap().starts_with("GET /x HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn dropping_the_connection_closes_the_socket() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (sender, conn) = handshake::<_, Empty<Bytes>>(ours, Some(8 << 10))
            .await
            .unwrap();
        // The sender alone would keep the connection open: the abort is what closes it.
        drop(conn);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), theirs.read(&mut buf))
            .await
            .expect("the socket stayed open after the connection was dropped");
        assert_eq!(read.unwrap(), 0);
        drop(sender);
    }
}
