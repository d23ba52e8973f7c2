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
    // The message names the request; the cause says why, once.
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("recursion limit"), "{cause}");
    assert!(!err.to_string().contains("recursion limit"), "{err}");
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

// ---------------------------------------------------------------------------------------------
// Exec against hostile or old agents: every failure is a clear error, memory stays bounded.

use banger_agent_proto::client::exec::{ExecError, ExecEvent, exec, upgrade_exec};
use banger_agent_proto::exec::{
    ExecRequest, ExitStatus, Frame, FrameError, MAX_FRAME_PAYLOAD, Started, read_frame, write_frame,
};
use hyper::body::Bytes;

const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: banger-exec/1\r\n\r\n";

/// Accepts the upgrade, reads the start frame and answers `Started { pid: 7 }`.
async fn start_session(s: &mut UnixStream) {
    s.write_all(SWITCH).await.unwrap();
    match read_frame(s).await.unwrap() {
        Some(Frame::Start(req)) => assert_eq!(req.argv, ["cmd"]),
        other => panic!("expected a start frame, got {other:?}"),
    }
    write_frame(s, &Frame::Started(Started { pid: 7 }))
        .await
        .unwrap();
}

#[tokio::test]
async fn exec_against_an_agent_without_exec_names_its_answer() {
    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            let body =
                br#"{"error":"no such endpoint: GET /exec (try GET /healthz or GET /ports)"}"#;
            let head = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body).await;
            // Keeps the connection open, as an agent doing keep-alive does.
            tokio::time::sleep(Duration::from_secs(3)).await;
            0
        })
    })
    .await;
    let err = exec(stream, ExecRequest::new(["cmd"]), Duration::from_secs(1))
        .await
        .unwrap_err();
    match &err {
        ExecError::Connect(ClientError::Status {
            status, message, ..
        }) => {
            assert_eq!(*status, 404);
            assert!(message.contains("no such endpoint"), "{message}");
        }
        other => panic!("expected the agent's 404, got {other}"),
    }
    server.abort();
}

#[tokio::test]
async fn exec_against_an_agent_answering_200_is_not_upgraded() {
    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            0
        })
    })
    .await;
    let err = exec(stream, ExecRequest::new(["cmd"]), Duration::from_secs(1))
        .await
        .unwrap_err();
    match &err {
        ExecError::Connect(ClientError::NotUpgraded {
            status, protocol, ..
        }) => {
            assert_eq!(*status, 200);
            assert_eq!(protocol, "banger-exec/1");
        }
        other => panic!("expected a refused upgrade, got {other}"),
    }
    server.abort();
}

#[tokio::test]
async fn upgrade_exec_against_a_silent_agent_times_out_naming_the_path() {
    let (_dir, server, stream) = hostile_agent(|s| {
        Box::pin(async move {
            // Reads the request and holds the connection open without a word.
            let _open = s;
            tokio::time::sleep(Duration::from_secs(3)).await;
            0
        })
    })
    .await;
    let err = upgrade_exec(stream, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Timeout { path, .. } if path == "GET /exec"),
        "{err}"
    );
    server.abort();
}

#[tokio::test]
async fn exec_against_a_silent_agent_times_out() {
    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            s.write_all(SWITCH).await.unwrap();
            let _ = read_frame(&mut s).await;
            // Never answers the start.
            tokio::time::sleep(Duration::from_secs(2)).await;
            0
        })
    })
    .await;
    let err = exec(
        stream,
        ExecRequest::new(["cmd"]),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("\"cmd\""), "{err}");
    server.abort();
}

#[tokio::test]
async fn exec_refuses_an_oversized_frame_and_unasked_credit() {
    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            start_session(&mut s).await;
            write_frame(&mut s, &Frame::Stdout(Bytes::from_static(b"ok")))
                .await
                .unwrap();
            // A header announcing 4 GiB.
            let _ = s.write_all(&[18, 0xff, 0xff, 0xff, 0xff]).await;
            0
        })
    })
    .await;
    let mut session = exec(stream, ExecRequest::new(["cmd"]), T).await.unwrap();
    assert_eq!(session.pid(), 7);
    assert_eq!(
        session.next_event().await.unwrap(),
        Some(ExecEvent::Stdout(Bytes::from_static(b"ok")))
    );
    let err = session.next_event().await.unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::Frame {
                source: FrameError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(session.next_event().await.unwrap().is_none());
    server.await.unwrap();

    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            start_session(&mut s).await;
            // Credit for stdin that was never sent would let the host overrun the window.
            let _ = write_frame(&mut s, &Frame::StdinCredit(u32::MAX)).await;
            0
        })
    })
    .await;
    let mut session = exec(stream, ExecRequest::new(["cmd"]), T).await.unwrap();
    let err = session.next_event().await.unwrap_err();
    assert!(matches!(err, ExecError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("credit"), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn exec_against_an_agent_flooding_output_buffers_a_bounded_amount() {
    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            start_session(&mut s).await;
            let frame = Frame::Stdout(Bytes::from(vec![b'x'; MAX_FRAME_PAYLOAD]))
                .encode()
                .unwrap();
            flood(&mut s, b"", &frame, 8 * GIB).await
        })
    })
    .await;
    let mut session = exec(stream, ExecRequest::new(["cmd"]), T).await.unwrap();
    // The caller reads nothing for a while: the session stops reading from the agent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(session.take_stdin());
    drop(session);
    let sent = tokio::time::timeout(T, server)
        .await
        .expect("the flood did not stop once the session was dropped")
        .unwrap();
    let bound = (client::exec::EVENT_QUEUE as u64 + 2) * MAX_FRAME_PAYLOAD as u64 + SLACK;
    assert!(sent < bound, "the agent pushed {sent} bytes, over {bound}");
}

#[tokio::test]
async fn exec_against_an_agent_closing_before_the_exit_status_is_an_error() {
    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            start_session(&mut s).await;
            0
        })
    })
    .await;
    let session = exec(stream, ExecRequest::new(["cmd"]), T).await.unwrap();
    let err = session.wait().await.unwrap_err();
    assert!(matches!(err, ExecError::Closed { pid: 7 }), "{err}");
    server.await.unwrap();

    let (_dir, server, stream) = hostile_agent(|mut s| {
        Box::pin(async move {
            start_session(&mut s).await;
            let _ = write_frame(&mut s, &Frame::Exit(ExitStatus::Code(4))).await;
            0
        })
    })
    .await;
    let session = exec(stream, ExecRequest::new(["cmd"]), T).await.unwrap();
    assert_eq!(session.wait().await.unwrap(), ExitStatus::Code(4));
    server.await.unwrap();

    let err = exec(
        tokio::io::duplex(64).0,
        ExecRequest::new(Vec::<String>::new()),
        T,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::EmptyCommand), "{err}");
}
