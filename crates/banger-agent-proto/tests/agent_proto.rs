//! The host's agent client against agents it cannot trust: Firecracker's hybrid vsock
//! handshake answered wrongly, and the adversarial corpus of hostile HTTP servers standing in
//! for a guest behind its vsock or virtio-serial socket. The client against the real agent
//! binary is tested in `banger-agent`.

use std::time::Duration;

use banger_agent_proto::client::{self, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const T: Duration = Duration::from_secs(5);

/// A fake Firecracker vsock socket that accepts one connection, reads the `CONNECT` line and
/// answers `reply` without forwarding anything; yields the line it read.
async fn vsock_muxer(listener: UnixListener, reply: &'static [u8]) -> Vec<u8> {
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte).await.unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    conn.write_all(reply).await.unwrap();
    line
}

#[tokio::test]
async fn hybrid_vsock_rejects_garbage_and_eof() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");

    let listener = UnixListener::bind(&uds).unwrap();
    let fc = tokio::spawn(vsock_muxer(listener, b"NOPE what\n"));
    let err = client::connect_hybrid_vsock(&uds, 52).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ClientError::HandshakeRefused { .. }), "{msg}");
    assert!(msg.contains("v.sock"), "{msg}");
    assert!(msg.contains("NOPE what"), "{msg}");
    assert_eq!(fc.await.unwrap(), b"CONNECT 52\n");

    std::fs::remove_file(&uds).unwrap();
    let listener = UnixListener::bind(&uds).unwrap();
    let fc = tokio::spawn(vsock_muxer(listener, b""));
    let err = client::connect_hybrid_vsock(&uds, 52).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ClientError::HandshakeClosed { .. }), "{msg}");
    assert!(msg.contains("v.sock") && msg.contains("52"), "{msg}");
    assert_eq!(fc.await.unwrap(), b"CONNECT 52\n");

    let err = client::connect_hybrid_vsock(&dir.path().join("absent.sock"), 52)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Adversarial corpus: a malicious agent. Each case is a hostile HTTP server on a Unix socket
// (what a guest controls behind the vsock or serial socket). Every case asserts that the client
// fails with a clear error naming the request, within a bounded time, after the hostile server
// managed to push only a bounded number of bytes (the client stopped reading and closed).

/// What a hostile server may push past a cap before the client's refusal reaches it: the two
/// Unix socket buffers plus hyper's read buffer.
const SLACK: u64 = 4 << 20;

/// How a hostile agent answers once it has read the request head.
type Script = fn(UnixStream) -> std::pin::Pin<Box<dyn Future<Output = u64> + Send>>;

/// Serves one connection with `script`; the join handle yields the bytes the script sent.
async fn hostile_agent(
    script: Script,
) -> (tempfile::TempDir, tokio::task::JoinHandle<u64>, UnixStream) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        script(stream).await
    });
    let stream = client::connect_unix(&sock).await.unwrap();
    (dir, server, stream)
}

/// Writes `head`, then `chunk` over and over until the peer goes away or `total` bytes were
/// sent; returns the bytes sent.
async fn flood(stream: &mut UnixStream, head: &[u8], chunk: &[u8], total: u64) -> u64 {
    let mut sent = 0u64;
    if stream.write_all(head).await.is_err() {
        return 0;
    }
    sent += head.len() as u64;
    while sent < total {
        if stream.write_all(chunk).await.is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    sent
}

/// Runs `/ports` against `script` with timeout `t`; returns the error, the bytes the server
/// sent and how long the client took.
async fn against(script: Script, t: Duration) -> (ClientError, u64, Duration) {
    let (_dir, server, stream) = hostile_agent(script).await;
    let started = std::time::Instant::now();
    let err = client::ports(stream, t).await.unwrap_err();
    let took = started.elapsed();
    let sent = tokio::time::timeout(T, server)
        .await
        .expect("the hostile server kept going after the client gave up")
        .unwrap();
    (err, sent, took)
}

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn adversarial_agent_announced_huge_body_is_refused_before_reading_it() {
    let (err, sent, _) = against(
        |mut s| {
            Box::pin(async move {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 8 * GIB);
                flood(&mut s, head.as_bytes(), &[b' '; 65536], 8 * GIB).await
            })
        },
        T,
    )
    .await;
    assert!(
        matches!(err, ClientError::TooLarge { declared: Some(n), .. } if n == 8 * GIB),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("GET /ports") && msg.contains("4194304-byte limit"),
        "{msg}"
    );
    assert!(msg.contains("announced 8589934592 bytes"), "{msg}");
    assert!(sent < SLACK, "the client let the guest push {sent} bytes");
}

#[tokio::test]
async fn adversarial_agent_endless_chunked_body_stops_at_the_cap() {
    let (err, sent, _) = against(
        |mut s| {
            Box::pin(async move {
                let chunk: Vec<u8> = [b"10000\r\n".as_slice(), &[b'['; 0x10000], b"\r\n"].concat();
                flood(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                    &chunk,
                    8 * GIB,
                )
                .await
            })
        },
        T,
    )
    .await;
    assert!(
        matches!(err, ClientError::TooLarge { declared: None, .. }),
        "{err}"
    );
    assert!(
        sent < client::MAX_ANSWER_LEN as u64 + SLACK,
        "the client let the guest push {sent} bytes"
    );
}

#[tokio::test]
async fn adversarial_agent_body_until_close_that_never_closes_stops_at_the_cap() {
    let (err, sent, _) = against(
        |mut s| {
            Box::pin(async move {
                flood(&mut s, b"HTTP/1.1 200 OK\r\n\r\n", &[b'x'; 65536], 8 * GIB).await
            })
        },
        T,
    )
    .await;
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    assert!(
        sent < client::MAX_ANSWER_LEN as u64 + SLACK,
        "the client let the guest push {sent} bytes"
    );
}

#[tokio::test]
async fn adversarial_agent_huge_error_body_is_capped_too() {
    let (err, sent, _) = against(
        |mut s| {
            Box::pin(async move {
                flood(
                    &mut s,
                    b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n",
                    &[b"10000\r\n".as_slice(), &[b'E'; 0x10000], b"\r\n"].concat(),
                    8 * GIB,
                )
                .await
            })
        },
        T,
    )
    .await;
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    assert!(sent < client::MAX_ANSWER_LEN as u64 + SLACK, "{sent}");
}

#[tokio::test]
async fn adversarial_agent_slow_trickle_hits_the_deadline() {
    let (err, sent, took) = against(
        |mut s| {
            Box::pin(async move {
                let mut sent = 0;
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
                    .await
                    .is_err()
                {
                    return 0;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if s.write_all(b"[").await.is_err() {
                        return sent;
                    }
                    sent += 1;
                }
            })
        },
        Duration::from_millis(500),
    )
    .await;
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("GET /ports"), "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(sent < 100, "{sent}");
}

#[tokio::test]
async fn adversarial_agent_headers_that_never_end_hit_the_deadline() {
    let (err, _, took) = against(
        |mut s| {
            Box::pin(async move {
                let mut sent = 0;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                        return sent;
                    }
                    sent += 11;
                }
            })
        },
        Duration::from_millis(500),
    )
    .await;
    // Either the deadline or hyper's header count limit ends it; both well before forever.
    assert!(
        matches!(
            err,
            ClientError::Timeout { .. } | ClientError::Request { .. }
        ),
        "{err}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn adversarial_agent_huge_header_is_refused_at_the_head_limit() {
    let (err, sent, _) = against(
        |mut s| {
            Box::pin(async move {
                flood(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\nx-big: ",
                    &[b'a'; 65536],
                    8 * GIB,
                )
                .await
            })
        },
        T,
    )
    .await;
    assert!(matches!(err, ClientError::Request { .. }), "{err}");
    assert!(err.to_string().contains("GET /ports"), "{err}");
    assert!(
        sent < client::MAX_HEAD_LEN as u64 + SLACK,
        "the client let the guest push {sent} header bytes"
    );
}

#[tokio::test]
async fn adversarial_agent_malformed_http_is_a_request_error() {
    let (err, _, _) = against(
        |mut s| {
            Box::pin(async move {
                let _ = s.write_all(b"HELLO\x1b[2J this is not HTTP\r\n\r\n").await;
                0
            })
        },
        T,
    )
    .await;
    assert!(matches!(err, ClientError::Request { .. }), "{err}");
    assert!(err.to_string().contains("GET /ports"), "{err}");
}

#[tokio::test]
async fn adversarial_agent_content_length_longer_than_the_body_is_a_body_error() {
    let (err, _, _) = against(
        |mut s| {
            Box::pin(async move {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"listeners\":[]}")
                    .await;
                let _ = s.shutdown().await;
                0
            })
        },
        T,
    )
    .await;
    assert!(matches!(err, ClientError::Body { .. }), "{err}");
    assert!(err.to_string().contains("GET /ports"), "{err}");
}

#[tokio::test]
async fn adversarial_agent_content_length_shorter_than_the_body_is_a_decode_error() {
    let (err, _, _) = against(
        |mut s| {
            Box::pin(async move {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{\"listeners\":[]}")
                    .await;
                0
            })
        },
        T,
    )
    .await;
    assert!(matches!(err, ClientError::Decode { .. }), "{err}");
}

#[tokio::test]
async fn adversarial_agent_conflicting_lengths_are_refused() {
    let (err, _, _) = against(
        |mut s| {
            Box::pin(async move {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\ncontent-length: 99999999999\r\n\r\n{\"listeners\":[]}",
                    )
                    .await;
                0
            })
        },
        T,
    )
    .await;
    assert!(
        matches!(
            err,
            ClientError::Request { .. } | ClientError::TooLarge { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn adversarial_agent_deeply_nested_json_is_a_decode_error() {
    // Decoded as a free-form value, so only serde_json's recursion limit stops it (no stack
    // overflow in the daemon).
    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            let body = "[".repeat(1_000_000);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            0
        })
    })
    .await;
    let err = client::get_json::<serde_json::Value, _>(stream, "/ports", T)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("recursion limit"), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn adversarial_agent_endless_vsock_acknowledgement_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        flood(&mut conn, b"OK ", &[b'1'; 4096], 8 * GIB).await
    });
    let err = client::connect_hybrid_vsock(&uds, 52).await.unwrap_err();
    assert!(matches!(err, ClientError::HandshakeRefused { .. }), "{err}");
    let sent = tokio::time::timeout(T, server).await.unwrap().unwrap();
    assert!(sent < SLACK, "{sent}");
}
