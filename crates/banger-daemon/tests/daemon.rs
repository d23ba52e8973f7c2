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

/// A daemon state on `store` in `layout`, with the fake VMM and a network that only records.
fn app_state(dir: &std::path::Path, layout: &Layout, store: banger_store::Store) -> Arc<AppState> {
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
    let state = app_state(dir.path(), &layout, store);
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

/// The daemon's VM operations on rows whose stored VMM pid is not (or no longer) the VMM.
mod adversarial_pid_reuse {
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use banger_core::layout::Layout;
    use banger_daemon::server::AppState;
    use banger_daemon::vms;
    use banger_store::{ImageRow, VmRow};
    use banger_vmm::process::{Signal, alive, start_time};

    struct Harness {
        _dir: tempfile::TempDir,
        layout: Layout,
        state: Arc<AppState>,
    }

    fn harness() -> Harness {
        let dir = tempfile::Builder::new().prefix("bgd").tempdir().unwrap();
        let layout = Layout::under(dir.path());
        std::fs::create_dir_all(&layout.runtime_dir).unwrap();
        std::fs::create_dir_all(&layout.state_dir).unwrap();
        let store = banger_store::Store::open(&layout.db_path()).unwrap();
        store
            .insert_image(&ImageRow {
                id: "img0".into(),
                name: "img".into(),
                dir: dir.path().display().to_string(),
                rootfs: dir.path().join("rootfs.ext4").display().to_string(),
                rootfs_bytes: 1 << 20,
                kernel: Some(dir.path().join("vmlinux").display().to_string()),
                created_at: "t".into(),
                ..ImageRow::default()
            })
            .unwrap();
        let state = super::app_state(dir.path(), &layout, store);
        Harness {
            _dir: dir,
            layout,
            state,
        }
    }

    /// A live process unrelated to any VM: `sleep 1000`, optionally with `argv[0]` in `dir`
    /// (so that its command line names that directory). Killed when dropped.
    struct Bystander(Child);

    impl Bystander {
        fn spawn(argv0_in: Option<&Path>) -> Self {
            let mut cmd = Command::new("sleep");
            if let Some(dir) = argv0_in {
                cmd.arg0(dir.join("vmm"));
            }
            cmd.arg("1000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Self(cmd.spawn().unwrap())
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }

        fn start_time(&self) -> Option<u64> {
            start_time(self.pid())
        }
    }

    impl Drop for Bystander {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A process like a VMM of the VM whose run dir is `run_dir`: in its own session, its
    /// command line naming the run dir.
    fn vmm_like(run_dir: &Path) -> banger_vmm::process::Spawned {
        let mut cmd = Command::new("sleep");
        cmd.arg0(run_dir.join("vmm"))
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        banger_vmm::process::spawn_detached(cmd).unwrap()
    }

    fn vm_id(n: u8) -> String {
        format!("{n:02x}{}", "ab".repeat(15))
    }

    impl Harness {
        fn run_dir(&self, id: &str) -> PathBuf {
            self.layout.runtime_dir.join("vms").join(&id[..12])
        }

        /// Inserts a VM row in `state` with `pid` and `start_time` as its VMM, a VM dir with a
        /// disk file, and a run dir.
        fn insert(&self, n: u8, state: &str, pid: Option<u32>, start: Option<u64>) -> VmRow {
            let id = vm_id(n);
            let dir = self.layout.state_dir.join("vms").join(&id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("root.ext4"), b"disk").unwrap();
            std::fs::create_dir_all(self.run_dir(&id)).unwrap();
            let row = VmRow {
                id: id.clone(),
                name: format!("vm{n}"),
                image_id: "img0".into(),
                state: state.into(),
                vmm: "firecracker".into(),
                cpus: 1,
                memory_mib: 128,
                disk_bytes: 1 << 20,
                work_disk_bytes: 1 << 20,
                nat: false,
                ip: Some(format!("172.30.0.{}", 10 + n)),
                mac: Some("06:00:AC:1E:00:0A".into()),
                tap: Some(format!("bgr{}", &id[..12])),
                vsock_cid: Some(3 + u32::from(n)),
                pid,
                vmm_start_time: start,
                dir: dir.display().to_string(),
                error: None,
                workspace_json: None,
                created_at: format!("t{n}"),
                started_at: None,
            };
            self.state.db(|s| s.insert_vm(&row)).unwrap();
            row
        }

        fn row(&self, id: &str) -> Option<VmRow> {
            self.state.db(|s| s.get_vm(id)).unwrap()
        }

        /// The row is stopped with no pid, and its run dir (TAP mark) is gone.
        fn assert_stopped_cleanly(&self, row: &VmRow) {
            let now = self.row(&row.id).expect("row kept");
            assert_eq!(now.state, "stopped", "{now:?}");
            assert_eq!((now.pid, now.vmm_start_time), (None, None));
            assert!(!self.run_dir(&row.id).exists(), "run dir left behind");
            assert!(Path::new(&row.dir).join("root.ext4").exists(), "disks kept");
        }

        /// The row, its disks and its run dir are gone.
        fn assert_gone(&self, row: &VmRow) {
            assert_eq!(self.row(&row.id), None);
            assert!(!Path::new(&row.dir).exists(), "disks left behind");
            assert!(!self.run_dir(&row.id).exists(), "run dir left behind");
        }
    }

    /// The cases of this class, for VMs `plain` and `lookalike`: a stored pid that now
    /// belongs to an unrelated process, with its real start time (only the command line
    /// tells), or with a command line that even names the VM's run dir (only the start time
    /// tells). Returns each process with the start time to store.
    fn bystanders(h: &Harness, plain: u8, lookalike: u8) -> [(u8, Bystander, Option<u64>); 2] {
        let a = Bystander::spawn(None);
        let a_start = a.start_time();
        let run_dir = h.run_dir(&vm_id(lookalike));
        std::fs::create_dir_all(&run_dir).unwrap();
        let b = Bystander::spawn(Some(&run_dir));
        let b_wrong_start = b.start_time().map(|t| t + 7);
        [(plain, a, a_start), (lookalike, b, b_wrong_start)]
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_stop_marks_stopped_and_signals_nothing() {
        let h = harness();
        for (n, bystander, start) in bystanders(&h, 1, 2) {
            let row = h.insert(n, "running", Some(bystander.pid()), start);
            let note = vms::stop(&h.state, &row.id).await.unwrap();
            assert_eq!(note, None, "nothing was forced");
            assert!(
                alive(bystander.pid()),
                "the unrelated process was signalled"
            );
            h.assert_stopped_cleanly(&row);
        }
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_kill_refuses_and_marks_stopped() {
        let h = harness();
        for (n, bystander, start) in bystanders(&h, 1, 2) {
            let row = h.insert(n, "running", Some(bystander.pid()), start);
            let err = vms::kill(&h.state, &row.id, Signal::KILL)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("not running"), "{err}");
            assert!(
                alive(bystander.pid()),
                "the unrelated process was signalled"
            );
            h.assert_stopped_cleanly(&row);
        }
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_delete_removes_the_vm_only() {
        let h = harness();
        for (n, bystander, start) in bystanders(&h, 1, 2) {
            let row = h.insert(n, "running", Some(bystander.pid()), start);
            vms::delete(&h.state, &row.id).await.unwrap();
            assert!(
                alive(bystander.pid()),
                "the unrelated process was signalled"
            );
            h.assert_gone(&row);
        }
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_reconcile_marks_running_stopped_and_rolls_back_creating() {
        let h = harness();
        let [(n, a, a_start), (m, b, b_start)] = bystanders(&h, 4, 5);
        let running = h.insert(n, "running", Some(a.pid()), a_start);
        let creating = h.insert(m, "creating", Some(b.pid()), b_start);
        // An unfinished start of a stopped VM whose pid is another process now.
        let [_, (k, c, c_start)] = bystanders(&h, 7, 6);
        let starting = h.insert(k, "stopped", Some(c.pid()), c_start);
        vms::reconcile(&h.state).await;
        for p in [&a, &b, &c] {
            assert!(alive(p.pid()), "an unrelated process was signalled");
        }
        h.assert_stopped_cleanly(&running);
        h.assert_gone(&creating);
        h.assert_stopped_cleanly(&starting);
    }

    #[tokio::test]
    async fn adversarial_pid_reuse_monitor_marks_stopped() {
        let h = harness();
        let [(n, a, a_start), (m, b, b_start)] = bystanders(&h, 7, 8);
        let plain = h.insert(n, "running", Some(a.pid()), a_start);
        let lookalike = h.insert(m, "running", Some(b.pid()), b_start);
        let monitor = tokio::spawn(vms::monitor(h.state.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while [&plain, &lookalike]
            .iter()
            .any(|r| h.row(&r.id).unwrap().state == "running")
        {
            assert!(Instant::now() < deadline, "the monitor never noticed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        monitor.abort();
        assert!(
            alive(a.pid()) && alive(b.pid()),
            "an unrelated process was signalled"
        );
        h.assert_stopped_cleanly(&plain);
        h.assert_stopped_cleanly(&lookalike);
    }

    /// A VMM spawned by a daemon that died before storing its pid (or during a start of a
    /// stopped VM) is found by its command line and killed; its identity passes.
    #[tokio::test]
    async fn unrecorded_and_unfinished_vmms_are_killed_on_reconcile() {
        let h = harness();
        std::fs::create_dir_all(h.run_dir(&vm_id(9))).unwrap();
        let mut unrecorded = vmm_like(&h.run_dir(&vm_id(9)));
        let creating = h.insert(9, "creating", None, None);
        std::fs::create_dir_all(h.run_dir(&vm_id(10))).unwrap();
        let mut recorded = vmm_like(&h.run_dir(&vm_id(10)));
        let starting = h.insert(10, "stopped", Some(recorded.pid()), recorded.start_time());
        // A cleanly stopped VM is left as it is.
        let clean = h.insert(11, "stopped", None, None);
        std::fs::remove_dir(h.run_dir(&clean.id)).unwrap();
        vms::reconcile(&h.state).await;
        h.assert_gone(&creating);
        h.assert_stopped_cleanly(&starting);
        assert_eq!(h.row(&clean.id), Some(clean.clone()));
        for p in [&mut unrecorded, &mut recorded] {
            tokio::time::timeout(Duration::from_secs(5), p.wait())
                .await
                .expect("VMM left running");
        }
    }
}
