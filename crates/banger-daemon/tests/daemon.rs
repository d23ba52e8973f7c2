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
use banger_daemon::server::{AppState, instrument, router, serve_router};
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

#[tokio::test]
async fn errors_carry_the_op_id_in_header_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::under(dir.path());
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
            private_key: dir.path().join("key"),
            public_key: "ssh-ed25519 AAAA test".into(),
        },
        guest_dns: Vec::new(),
        uid: 0,
    };
    let state = Arc::new(AppState::new(opts, store, parts));
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
