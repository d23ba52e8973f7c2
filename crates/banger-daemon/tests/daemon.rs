//! Daemon integration tests: the real router and middleware served on a real Unix socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use banger_core::build::BuildInfo;
use banger_core::config::Config;
use banger_core::layout::Layout;
use banger_daemon::DaemonOptions;
use banger_daemon::ops::OpTracker;
use banger_daemon::server::{
    AppState, MAX_REQUEST_BODY, ServeLimits, instrument, router, serve_router, serve_router_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

async fn raw_request(sock: &std::path::Path, req: &str) -> String {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn client_disconnect_cancels_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let ops = Arc::new(OpTracker::default());
    let finished = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));

    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (f, d) = (finished.clone(), dropped.clone());
    let app = instrument(
        Router::new().route(
            "/slow",
            get(move || {
                let (f, d) = (f.clone(), d.clone());
                async move {
                    let _guard = DropFlag(d);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    f.store(true, Ordering::SeqCst);
                    "done"
                }
            }),
        ),
        ops.clone(),
    );
    let listener = UnixListener::bind(&sock).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_router(listener, app, async {
        let _ = stop_rx.await;
    }));

    let mut client = UnixStream::connect(&sock).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Wait until the operation is running, then walk away like a Ctrl-C'd CLI.
    for _ in 0..200 {
        if ops.counts().in_flight == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ops.counts().in_flight, 1);
    drop(client);
    for _ in 0..300 {
        if ops.counts().cancelled == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = ops.counts();
    assert_eq!((c.in_flight, c.completed, c.cancelled), (0, 0, 1), "{c:?}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler's work was not dropped"
    );
    assert!(!finished.load(Ordering::SeqCst));

    // A client that stays gets its answer and counts as completed.
    let out = raw_request(
        &sock,
        "GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.contains("x-banger-op:"), "{out}");
    assert_eq!(ops.counts().completed, 1);
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// Daemon state over a fresh layout in `dir`, with a fake VMM and fake networking.
fn test_state(dir: &std::path::Path) -> Arc<AppState> {
    let layout = Layout::under(dir);
    std::fs::create_dir_all(&layout.runtime_dir).unwrap();
    let store = banger_store::Store::open(&layout.db_path()).unwrap();
    let opts = DaemonOptions {
        layout: layout.clone(),
        agent_bin: None,
        config: Config::default(),
        config_warnings: Vec::new(),
        build: BuildInfo::current(),
    };
    let parts = banger_daemon::server::Parts {
        host: banger_daemon::server::Host {
            vmms: banger_daemon::server::Vmms::single(Arc::new(banger_vmm::fake::FakeVmm::new())),
            net: Arc::new(banger_net::DirectNetOps::new(
                banger_core::runner::fake::FakeRunner::new(),
            )),
            runner: Arc::new(banger_core::runner::SystemRunner::new()),
        },
        subnet: "172.30.0.0/24".parse().unwrap(),
        ssh: banger_daemon::ssh::SshKey {
            private_key: dir.join("key"),
            public_key: "ssh-ed25519 AAAA test".into(),
        },
        guest_dns: Vec::new(),
        uid: 0,
    };
    Arc::new(AppState::new(opts, store, parts))
}

#[tokio::test]
async fn errors_carry_the_op_id_in_header_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let state = test_state(dir.path());
    let layout = state.opts.layout.clone();
    let sock = layout.socket_path();
    let listener = UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(serve_router(listener, router(state.clone()), async {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }));

    let out = raw_request(
        &sock,
        "GET /v1/no-such-thing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let header_id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-banger-op: "))
        .unwrap()
        .trim()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["kind"], "not_found");
    assert_eq!(v["error"]["op_id"], header_id.as_str());
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/no-such-thing")
    );

    // The typed client surfaces the same id.
    let client = banger_api::Client::new(&sock);
    let status: banger_api::types::DaemonStatus = client.get("/status").await.unwrap();
    assert_eq!(status.build, BuildInfo::current());
    assert_eq!(status.pid, std::process::id());
    let err = client
        .get::<serde_json::Value>("/missing")
        .await
        .unwrap_err();
    match err {
        banger_api::ClientError::Api(e) => {
            assert_eq!(e.kind, banger_api::ErrorKind::NotFound);
            assert_eq!(e.op_id.len(), 12);
        }
        other => panic!("unexpected {other:?}"),
    }
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// Adversarial corpus: daemon request limits. A local client that sends too much, too slowly
// or only half a request is refused with a typed error or cut off, and the daemon keeps
// answering everyone else.

/// Serves the real router on a fresh socket with `limits`; the socket path, the server task
/// and the tempdir holding the socket.
async fn limited_daemon(
    limits: ServeLimits,
) -> (
    std::path::PathBuf,
    tokio::task::JoinHandle<std::io::Result<()>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let state = test_state(dir.path());
    let sock = state.opts.layout.socket_path();
    let listener = UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(serve_router_with(
        listener,
        router(state),
        std::future::pending(),
        limits,
    ));
    (sock, server, dir)
}

/// The daemon still answers `GET /v1/status` promptly.
async fn still_answers(sock: &std::path::Path) {
    let status: banger_api::types::DaemonStatus = tokio::time::timeout(
        Duration::from_secs(5),
        banger_api::Client::new(sock).get("/status"),
    )
    .await
    .expect("the daemon stopped answering")
    .unwrap();
    assert_eq!(status.pid, std::process::id());
}

/// Reads until the peer closes (or resets) the connection, within `within`; the text read.
async fn read_until_closed(s: &mut UnixStream, within: Duration) -> String {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the daemon kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

/// The typed error body of an HTTP answer, checked to carry an op id.
fn typed_error(answer: &str) -> serde_json::Value {
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {answer}"));
    assert_eq!(v["error"]["op_id"].as_str().unwrap().len(), 12, "{answer}");
    v
}

#[tokio::test]
async fn adversarial_daemon_announced_body_over_the_cap_is_refused_unread() {
    let (sock, server, _dir) = limited_daemon(ServeLimits::default()).await;
    let mut s = UnixStream::connect(&sock).await.unwrap();
    // Only the head is sent: the refusal must come without the daemon reading any body.
    s.write_all(
        format!(
            "POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            10u64 << 30
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no refusal before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let v = typed_error(&answer);
    assert_eq!(v["error"]["kind"], "bad_request");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{MAX_REQUEST_BODY}-byte limit")),
        "{msg}"
    );
    assert!(msg.contains("Content-Length 10737418240"), "{msg}");
    drop(s);
    still_answers(&sock).await;
    server.abort();
}

#[tokio::test]
async fn adversarial_daemon_chunked_body_over_the_cap_is_refused() {
    let (sock, server, _dir) = limited_daemon(ServeLimits::default()).await;
    let mut s = UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = [b"10000\r\n".as_slice(), &[b' '; 0x10000], b"\r\n"].concat();
    // Push twice the cap, then stop; the answer must already be a refusal.
    let mut sent = 0;
    while sent < 2 * MAX_REQUEST_BODY {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let v = typed_error(&answer);
    assert_eq!(v["error"]["kind"], "bad_request");
    still_answers(&sock).await;
    server.abort();
}

#[tokio::test]
async fn adversarial_daemon_half_a_header_is_cut_off_after_the_timeout() {
    let limits = ServeLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    };
    let (sock, server, _dir) = limited_daemon(limits).await;
    let started = std::time::Instant::now();
    let mut slow = UnixStream::connect(&sock).await.unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nhos")
        .await
        .unwrap();
    // Others are served meanwhile.
    still_answers(&sock).await;
    let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    // hyper answers 408 or just closes; never with the status the request asked for.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    still_answers(&sock).await;
    server.abort();
}

#[tokio::test]
async fn adversarial_daemon_idle_connection_is_cut_off_after_the_timeout() {
    let limits = ServeLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    };
    let (sock, server, _dir) = limited_daemon(limits).await;
    let mut idle = UnixStream::connect(&sock).await.unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    server.abort();
}

#[tokio::test]
async fn adversarial_daemon_body_that_never_finishes_times_out_typed() {
    let limits = ServeLimits {
        body_read_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    };
    let (sock, server, _dir) = limited_daemon(limits).await;
    let mut s = UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"name\"")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let v = typed_error(&answer);
    assert_eq!(v["error"]["kind"], "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 0.3 s"),
        "{v}"
    );
    still_answers(&sock).await;
    server.abort();
}

#[tokio::test]
async fn adversarial_daemon_huge_header_is_refused() {
    let (sock, server, _dir) = limited_daemon(ServeLimits::default()).await;
    let mut s = UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\nx-big: ")
        .await
        .unwrap();
    let mut sent = 0usize;
    let filler = [b'a'; 65536];
    // Push up to 16 MiB of one header; the daemon must stop reading long before.
    while sent < 16 << 20 {
        if s.write_all(&filler).await.is_err() {
            break;
        }
        sent += filler.len();
    }
    assert!(
        sent < 16 << 20,
        "the daemon swallowed {sent} bytes of one header"
    );
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    still_answers(&sock).await;
    server.abort();
}

#[tokio::test]
async fn adversarial_daemon_rejections_are_typed_with_their_text_kept() {
    let (sock, server, _dir) = limited_daemon(ServeLimits::default()).await;
    let answer = raw_request(
        &sock,
        "POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1\r\nconnection: close\r\n\r\n{",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let v = typed_error(&answer);
    assert_eq!(v["error"]["kind"], "bad_request");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(!msg.is_empty() && msg != "error body unreadable", "{msg}");
    // The typed client reports it as an API error, not an unreadable answer.
    let err = banger_api::Client::new(&sock)
        .post::<_, serde_json::Value>("/vms/actions", &serde_json::json!({"nonsense": true}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, banger_api::ClientError::Api(e) if e.kind == banger_api::ErrorKind::BadRequest),
        "{err:?}"
    );
    server.abort();
}
