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
    MAX_REQUEST_BODY, ServeLimits, instrument, router, serve_router, serve_router_with,
};
use banger_daemon::state::AppState;
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
    state_on(
        dir,
        layout,
        store,
        banger_daemon::state::Host {
            vmms: banger_daemon::state::Vmms::single(Arc::new(banger_vmm::fake::FakeVmm::new())),
            net: Arc::new(banger_net::DirectNetOps::new(
                banger_core::runner::fake::FakeRunner::new(),
            )),
            runner: Arc::new(banger_core::runner::SystemRunner::new()),
        },
    )
}

/// A daemon state on `store` in `layout` with the default config, over the host seams `host`.
fn state_on(
    dir: &std::path::Path,
    layout: &Layout,
    store: banger_store::Store,
    host: banger_daemon::state::Host,
) -> Arc<AppState> {
    let opts = DaemonOptions {
        layout: layout.clone(),
        agent_bin: None,
        config: Config::default(),
        config_warnings: Vec::new(),
        build: BuildInfo::current(),
    };
    let parts = banger_daemon::state::Parts {
        host,
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

/// Daemon state over a fresh layout in `dir`, with a fake VMM and fake networking.
fn test_state(dir: &std::path::Path) -> Arc<AppState> {
    let layout = Layout::under(dir);
    std::fs::create_dir_all(&layout.runtime_dir).unwrap();
    let store = banger_store::Store::open(&layout.db_path()).unwrap();
    app_state(dir, &layout, store)
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
    let status: banger_api::types::DaemonStatus =
        client.get(banger_api::Route::Status).await.unwrap();
    assert_eq!(status.build, BuildInfo::current());
    assert_eq!(status.pid, std::process::id());
    let err = client
        .get::<serde_json::Value>(banger_api::Route::Vm("missing"))
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
    use banger_core::vm::VmState;
    use banger_core::vmm_kind::VmmKind;
    use banger_daemon::state::AppState;
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
        fn insert(&self, n: u8, state: VmState, pid: Option<u32>, start: Option<u64>) -> VmRow {
            let id = vm_id(n);
            let dir = self.layout.state_dir.join("vms").join(&id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("root.ext4"), b"disk").unwrap();
            std::fs::create_dir_all(self.run_dir(&id)).unwrap();
            let row = VmRow {
                id: id.clone(),
                name: format!("vm{n}"),
                image_id: "img0".into(),
                state,
                vmm: VmmKind::Firecracker,
                cpus: 1,
                memory_mib: 128,
                disk_bytes: 1 << 20,
                work_disk_bytes: 1 << 20,
                nat: false,
                ip: Some(std::net::Ipv4Addr::new(172, 30, 0, 10 + n)),
                mac: Some("06:00:AC:1E:00:0A".parse().unwrap()),
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
            assert_eq!(now.state, VmState::Stopped, "{now:?}");
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
            let row = h.insert(n, VmState::Running, Some(bystander.pid()), start);
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
            let row = h.insert(n, VmState::Running, Some(bystander.pid()), start);
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
            let row = h.insert(n, VmState::Running, Some(bystander.pid()), start);
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
        let running = h.insert(n, VmState::Running, Some(a.pid()), a_start);
        let creating = h.insert(m, VmState::Creating, Some(b.pid()), b_start);
        // An unfinished start of a stopped VM whose pid is another process now.
        let [_, (k, c, c_start)] = bystanders(&h, 7, 6);
        let starting = h.insert(k, VmState::Stopped, Some(c.pid()), c_start);
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
        let plain = h.insert(n, VmState::Running, Some(a.pid()), a_start);
        let lookalike = h.insert(m, VmState::Running, Some(b.pid()), b_start);
        let monitor = tokio::spawn(vms::monitor(h.state.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while [&plain, &lookalike]
            .iter()
            .any(|r| h.row(&r.id).unwrap().state == VmState::Running)
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
        let creating = h.insert(9, VmState::Creating, None, None);
        std::fs::create_dir_all(h.run_dir(&vm_id(10))).unwrap();
        let mut recorded = vmm_like(&h.run_dir(&vm_id(10)));
        let starting = h.insert(
            10,
            VmState::Stopped,
            Some(recorded.pid()),
            recorded.start_time(),
        );
        // A cleanly stopped VM is left as it is.
        let clean = h.insert(11, VmState::Stopped, None, None);
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

// ---------------------------------------------------------------------------------------------
// Adversarial API bodies, sent raw to the daemon's socket (no CLI checks in front). Each case
// asserts the error kind and message, and that nothing was made: no VM row or change, no VM
// directory, no host command (TAP, disk tool), no VMM start, and no file changed in the
// daemon's private directory.

mod adversarial {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use banger_core::runner::fake::FakeRunner;
    use banger_core::vm::VmState;
    use banger_core::vmm_kind::VmmKind;
    use banger_daemon::state::{Host, Vmms};
    use banger_net::DirectNetOps;
    use banger_store::{ImageRow, VmRow};
    use banger_vmm::fake::FakeVmm;

    use super::*;

    pub struct Daemon {
        pub dir: tempfile::TempDir,
        pub sock: PathBuf,
        pub state: Arc<AppState>,
        pub runner: Arc<FakeRunner>,
        pub net: Arc<DirectNetOps<FakeRunner>>,
        pub fc: Arc<FakeVmm>,
        pub qemu: Arc<FakeVmm>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    /// A daemon with a Firecracker and a QEMU (both fakes), every host command recorded, an
    /// image `test-img`, and a stopped VM `old` on Firecracker (for `vm set`).
    pub async fn daemon() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("bgd")
            .tempdir_in("/tmp")
            .unwrap();
        let layout = Layout::under(dir.path());
        std::fs::create_dir_all(&layout.runtime_dir).unwrap();
        let store = banger_store::Store::open(&layout.db_path()).unwrap();
        store
            .insert_image(&ImageRow {
                id: "1mg0000000000000000000000000abcd".into(),
                name: "test-img".into(),
                dir: dir.path().join("img").display().to_string(),
                rootfs: dir.path().join("img/rootfs.ext4").display().to_string(),
                rootfs_bytes: 1 << 20,
                kernel: Some(dir.path().join("img/kernel").display().to_string()),
                created_at: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            })
            .unwrap();
        store.insert_vm(&old_vm(dir.path())).unwrap();
        let runner = Arc::new(FakeRunner::new());
        let net = Arc::new(DirectNetOps::new(FakeRunner::new()));
        let fc = Arc::new(FakeVmm::new());
        let qemu = Arc::new(FakeVmm::new().with_kind(VmmKind::Qemu));
        let host = Host {
            vmms: Vmms::new(
                vec![fc.clone(), qemu.clone()],
                Vec::new(),
                VmmKind::Firecracker,
            ),
            net: net.clone(),
            runner: runner.clone(),
        };
        let state = state_on(dir.path(), &layout, store, host);
        let sock = layout.socket_path();
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(serve_router(
            listener,
            router(state.clone()),
            std::future::pending(),
        ));
        Daemon {
            dir,
            sock,
            state,
            runner,
            net,
            fc,
            qemu,
            server,
        }
    }

    pub fn old_vm(home: &Path) -> VmRow {
        VmRow {
            id: "0123456789ab00000000000000000000".into(),
            name: "old".into(),
            image_id: "1mg0000000000000000000000000abcd".into(),
            state: VmState::Stopped,
            vmm: VmmKind::Firecracker,
            cpus: 2,
            memory_mib: 2048,
            disk_bytes: 1 << 30,
            work_disk_bytes: 8 << 30,
            nat: false,
            ip: Some(std::net::Ipv4Addr::new(172, 30, 0, 2)),
            mac: None,
            tap: Some("tap-old".into()),
            vsock_cid: Some(3),
            pid: None,
            vmm_start_time: None,
            dir: home.join("state/vms/old").display().to_string(),
            error: None,
            workspace_json: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
        }
    }

    /// Every file under `dir` but the database, with its size and modification time.
    fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if name.starts_with("banger.db") || name.ends_with(".sock") {
                    continue;
                }
                if m.is_dir() {
                    stack.push(p.clone());
                }
                out.insert(p, (m.len(), m.modified().unwrap()));
            }
        }
        out
    }

    /// The error a request got: the body of a refused request, or the error event of a
    /// streamed one. `None` when it succeeded.
    pub fn error_of(answer: &str) -> Option<serde_json::Value> {
        if let Some(i) = answer.find(r#"{"event":"error""#) {
            let line = answer[i..].lines().next().unwrap();
            let ev: serde_json::Value = serde_json::from_str(line).unwrap();
            return Some(ev["error"].clone());
        }
        let (head, body) = answer.split_once("\r\n\r\n")?;
        if head.starts_with("HTTP/1.1 2") {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("not a typed error body ({e}): {answer}"));
        Some(v["error"].clone())
    }

    pub async fn post(sock: &Path, path: &str, content_type: Option<&str>, body: &str) -> String {
        let ct = content_type
            .map(|c| format!("content-type: {c}\r\n"))
            .unwrap_or_default();
        raw_request(
            sock,
            &format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\n{ct}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await
    }

    /// One refused request: `kind` and every `needles` in the message, nothing made.
    pub async fn refused(d: &Daemon, path: &str, body: &str, kind: &str, needles: &[&str]) {
        refused_as(d, path, Some("application/json"), body, kind, needles).await
    }

    pub async fn refused_as(
        d: &Daemon,
        path: &str,
        content_type: Option<&str>,
        body: &str,
        kind: &str,
        needles: &[&str],
    ) {
        let before = tree(d.dir.path());
        let vms_before = d.state.db(|s| s.list_vms()).unwrap();
        let images_before = d.state.db(|s| s.list_images()).unwrap();
        let kernels_before = d.state.db(|s| s.list_kernels()).unwrap();
        let answer = post(&d.sock, path, content_type, body).await;
        let err = error_of(&answer).unwrap_or_else(|| panic!("{path} {body}: accepted: {answer}"));
        assert_eq!(err["kind"], kind, "{path} {body}: {err}");
        let msg = err["message"].as_str().unwrap();
        for n in needles {
            assert!(msg.contains(n), "{path} {body}: {n:?} not in {msg:?}");
        }
        assert_eq!(err["op_id"].as_str().unwrap().len(), 12, "{err}");
        assert_eq!(
            d.state.db(|s| s.list_vms()).unwrap(),
            vms_before,
            "{body}: VM rows changed"
        );
        assert_eq!(
            d.state.db(|s| s.list_images()).unwrap(),
            images_before,
            "{body}"
        );
        assert_eq!(
            d.state.db(|s| s.list_kernels()).unwrap(),
            kernels_before,
            "{body}"
        );
        assert_eq!(tree(d.dir.path()), before, "{body}: files changed");
        assert!(
            d.runner.calls().is_empty(),
            "{body}: ran {:?}",
            d.runner.calls()
        );
        assert!(
            d.net.runner().calls().is_empty(),
            "{body}: network commands (TAP) {:?}",
            d.net.runner().calls()
        );
        assert!(
            d.fc.calls().is_empty() && d.qemu.calls().is_empty(),
            "{body}: VMM used"
        );
    }

    /// A control: the same body with valid values passes every check and stops only at the
    /// missing image, so the refusals above are the checks', not the harness's.
    async fn passes_checks(d: &Daemon, body: &str) {
        let answer = post(&d.sock, "/v1/vms", Some("application/json"), body).await;
        let err = error_of(&answer).unwrap();
        assert_eq!(err["kind"], "not_found", "{body}: {err}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("no image matches"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn adversarial_api_unknown_fields_and_bad_types() {
        let d = daemon().await;
        let vms = "/v1/vms";
        let unknown = "bad_request";
        for (body, needles) in [
            // The issue's own example: a typo must not become a 2-CPU VM.
            (
                r#"{"image":"test-img","cpu":8}"#,
                vec!["unknown field `cpu`", "POST /v1/vms"],
            ),
            (
                r#"{"image":"test-img","memory":"4G"}"#,
                vec!["unknown field `memory`"],
            ),
            (
                r#"{"image":"test-img","resources":{"cpus":2}}"#,
                vec!["unknown field `resources`"],
            ),
            (
                r#"{"image":"test-img","Name":"x"}"#,
                vec!["unknown field `Name`"],
            ),
            (r#"{"image":5}"#, vec!["invalid type: integer `5`"]),
            (r#"{"cpus":"8"}"#, vec!["invalid type: string \"8\""]),
            (r#"{"cpus":1.5}"#, vec!["invalid type: floating point"]),
            (
                r#"{"cpus":18446744073709551615}"#,
                vec!["18446744073709551615"],
            ),
            (r#"{"disk_bytes":-1}"#, vec!["invalid value: integer `-1`"]),
            (
                r#"{"disk_bytes":18446744073709551616}"#,
                vec!["does not fit the request"],
            ),
            (r#"{"nat":"yes"}"#, vec!["invalid type: string \"yes\""]),
            (r#"{"cpus":1,"cpus":2}"#, vec!["duplicate field `cpus`"]),
            ("[]", vec!["invalid type: sequence, expected a JSON object"]),
            (r#"["web","test-img",4]"#, vec!["expected a JSON object"]),
            (
                r#""x""#,
                vec!["invalid type: string \"x\", expected a JSON object"],
            ),
            ("42", vec!["expected a JSON object"]),
            ("null", vec!["expected a JSON object"]),
            (r#"{"cpus": 8"#, vec!["is not valid JSON"]),
            ("", vec!["is not valid JSON"]),
            ("{\"name\":\"a\0\"}", vec!["is not valid JSON"]),
        ] {
            refused(&d, vms, body, unknown, &needles).await;
        }
        refused_as(
            &d,
            vms,
            None,
            r#"{"image":"test-img"}"#,
            unknown,
            &["content-type"],
        )
        .await;
        refused_as(
            &d,
            vms,
            Some("text/plain"),
            "{}",
            unknown,
            &["content-type"],
        )
        .await;
        // Nested and other routes.
        for (path, body, needle) in [
            (
                "/v1/vms/actions",
                r#"{"action":"stop","refs":["old"],"force":true}"#,
                "unknown field `force`",
            ),
            (
                "/v1/vms/actions",
                r#"{"action":{"set":{"settings":{"cpu":8}}},"refs":["old"]}"#,
                "action.set.settings.cpu: unknown field `cpu`",
            ),
            (
                "/v1/vms/actions",
                r#"{"action":{"set":{"settings":[8]}},"refs":["old"]}"#,
                "action.set.settings: invalid type: sequence, expected a JSON object",
            ),
            (
                "/v1/vms/actions",
                r#"["set",["old"]]"#,
                "expected a JSON object",
            ),
            (
                "/v1/vms/actions",
                r#"{"action":"explode","refs":["old"]}"#,
                "unknown variant `explode`",
            ),
            (
                "/v1/vms/actions",
                r#"{"action":{"kill":{"signal":"TERM","force":true}},"refs":["old"]}"#,
                "action.kill.force: unknown field `force`",
            ),
            (
                "/v1/vms/actions",
                r#"{"action":"kill","refs":["old"]}"#,
                "action.kill: invalid type: unit variant",
            ),
            (
                "/v1/vms/actions",
                r#"{"action":"stop","refs":"old"}"#,
                "invalid type: string",
            ),
            (
                "/v1/images",
                r#"{"name":"x","rootfs":"/r","kernal":"/k"}"#,
                "unknown field `kernal`",
            ),
            (
                "/v1/kernels",
                r#"{"name":"k","from":"/","forced":true}"#,
                "unknown field `forced`",
            ),
            (
                "/v1/images/import",
                r#"{"path":"/b","kernel":"k"}"#,
                "unknown field `kernel`",
            ),
            (
                "/v1/images/bootstrap",
                r#"{"name":"debian-x","suite":"x"}"#,
                "unknown field `suite`",
            ),
        ] {
            refused(&d, path, body, unknown, &[needle]).await;
        }
        assert_eq!(
            d.state
                .db(|s| s.get_vm(&old_vm(d.dir.path()).id))
                .unwrap()
                .unwrap()
                .cpus,
            2
        );
        passes_checks(
            &d,
            r#"{"image":"nope","cpus":8,"memory_mib":512,"nat":true}"#,
        )
        .await;
    }

    #[tokio::test]
    async fn adversarial_api_out_of_range_values() {
        let d = daemon().await;
        let bad = "bad_request";
        let fc_cpus = "cpus must be between 1 and 32 (the most Firecracker accepts)";
        for (body, needles) in [
            (r#"{"image":"test-img","cpus":0}"#, vec![fc_cpus, "got 0"]),
            (r#"{"image":"test-img","cpus":-1}"#, vec![fc_cpus, "got -1"]),
            (r#"{"image":"test-img","cpus":33}"#, vec![fc_cpus, "got 33"]),
            (
                r#"{"image":"test-img","cpus":9223372036854775807}"#,
                vec![fc_cpus],
            ),
            (
                r#"{"image":"test-img","cpus":-9223372036854775808}"#,
                vec![fc_cpus],
            ),
            (
                r#"{"image":"test-img","vmm":"qemu","cpus":256}"#,
                vec!["between 1 and 255 (the most QEMU's q35"],
            ),
            (
                r#"{"image":"test-img","memory_mib":0}"#,
                vec!["memory must be between 1 MiB and 1 TiB"],
            ),
            (
                r#"{"image":"test-img","memory_mib":-5}"#,
                vec!["got -5 MiB"],
            ),
            (
                r#"{"image":"test-img","memory_mib":1048577}"#,
                vec!["1 TiB (the most banger gives a VM)"],
            ),
            (
                r#"{"image":"test-img","memory_mib":9223372036854775807}"#,
                vec!["memory must be between"],
            ),
            (
                r#"{"image":"test-img","vmm":"qemu","memory_mib":1014784}"#,
                vec!["990 GiB", "40-bit"],
            ),
            (
                r#"{"image":"test-img","disk_bytes":0}"#,
                vec!["disk size must be between 1 byte and 16 TiB"],
            ),
            (
                r#"{"image":"test-img","disk_bytes":18446744073709551615}"#,
                vec!["16 TiB (the most ext4 holds"],
            ),
            (
                r#"{"image":"test-img","disk_bytes":17592186044417}"#,
                vec!["disk size must be"],
            ),
            (
                r#"{"image":"test-img","work_disk_bytes":0}"#,
                vec!["work disk size must be between"],
            ),
            (
                r#"{"image":"test-img","work_disk_bytes":9223372036854775808}"#,
                vec!["work disk size"],
            ),
        ] {
            refused(&d, "/v1/vms", body, bad, &needles).await;
        }
        // `vm set` on a Firecracker VM: banger's caps for all, then the VM's backend.
        let set = |settings: &str| {
            format!(r#"{{"action":{{"set":{{"settings":{settings}}}}},"refs":["old"]}}"#)
        };
        for (settings, needle) in [
            (r#"{"cpus":0}"#, "cpus must be between 1 and 255"),
            (r#"{"cpus":256}"#, "cpus must be between 1 and 255"),
            (r#"{"memory_mib":0}"#, "memory must be between"),
            (r#"{"work_disk_bytes":18446744073709551615}"#, "16 TiB"),
        ] {
            refused(&d, "/v1/vms/actions", &set(settings), bad, &[needle]).await;
        }
        // 33 passes banger's caps but not Firecracker's: refused for that VM, row unchanged.
        let answer = post(
            &d.sock,
            "/v1/vms/actions",
            Some("application/json"),
            &set(r#"{"cpus":33}"#),
        )
        .await;
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        let outcomes: serde_json::Value = serde_json::from_str(body).unwrap();
        let e = &outcomes[0]["error"];
        assert_eq!(e["kind"], bad, "{outcomes}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("VM old: cpus must be between 1 and 32"),
            "{e}"
        );
        assert_eq!(
            d.state
                .db(|s| s.get_vm(&old_vm(d.dir.path()).id))
                .unwrap()
                .unwrap(),
            old_vm(d.dir.path())
        );
        assert!(d.runner.calls().is_empty());
        // Controls: the limits themselves are accepted.
        passes_checks(
            &d,
            r#"{"image":"nope","cpus":32,"memory_mib":1048576,"disk_bytes":17592186044416}"#,
        )
        .await;
        passes_checks(
            &d,
            r#"{"image":"nope","vmm":"qemu","cpus":255,"memory_mib":1013760}"#,
        )
        .await;
    }

    #[tokio::test]
    async fn adversarial_api_names_and_ids() {
        let d = daemon().await;
        let old = old_vm(d.dir.path());
        let bad = "bad_request";
        let long = "a".repeat(64);
        let huge = "b".repeat(100_000);
        for (body, needle) in [
            // Names that read as ids: the old VM's listed 12, its full id, longer hex.
            (
                format!(r#"{{"image":"test-img","name":"{}"}}"#, &old.id[..12]),
                "looks like an id",
            ),
            (
                format!(r#"{{"image":"test-img","name":"{}"}}"#, old.id),
                "looks like an id",
            ),
            (
                r#"{"image":"test-img","name":"deadbeefcafe0"}"#.to_string(),
                "looks like an id",
            ),
            (
                r#"{"image":"test-img","name":"000000000000"}"#.to_string(),
                "looks like an id",
            ),
            (
                r#"{"image":"test-img","name":"-web"}"#.to_string(),
                "must not start or end with '-'",
            ),
            (
                format!(r#"{{"image":"test-img","name":"{long}"}}"#),
                "64 characters long; the limit is 63",
            ),
            (
                format!(r#"{{"image":"test-img","name":"{huge}"}}"#),
                "100000 characters long",
            ),
            (
                r#"{"image":"test-img","name":""}"#.to_string(),
                "must not be empty",
            ),
            (
                r#"{"image":"test-img","name":"web\n127.0.0.1 evil"}"#.to_string(),
                "contains '\\n'",
            ),
        ] {
            refused(&d, "/v1/vms", &body, bad, &[needle]).await;
        }
        // Image and kernel names cannot start with '-' (they would read as flags) or, for
        // images, look like ids.
        let rootfs = d.dir.path().join("rootfs.ext4");
        std::fs::write(&rootfs, b"x").unwrap();
        for (path, body, needle) in [
            (
                "/v1/images",
                format!(
                    r#"{{"name":"-rf","rootfs":"{}","kernel":"{0}"}}"#,
                    rootfs.display()
                ),
                "must not start with '-'",
            ),
            (
                "/v1/images",
                format!(
                    r#"{{"name":"0123456789abcdef","rootfs":"{}","kernel":"{0}"}}"#,
                    rootfs.display()
                ),
                "looks like an id",
            ),
            (
                "/v1/kernels",
                r#"{"name":"--help","from":"/"}"#.to_string(),
                "must not start with '-'",
            ),
            (
                "/v1/images/import",
                format!(r#"{{"path":"{}","name":"-x"}}"#, rootfs.display()),
                "must not start with '-'",
            ),
            (
                "/v1/images/bootstrap",
                r#"{"name":"-debian-bookworm"}"#.to_string(),
                "must not start with '-'",
            ),
        ] {
            refused(&d, path, &body, bad, &[needle]).await;
        }
        // The old VM still resolves by its listed id.
        let client = banger_api::Client::new(&d.sock);
        let vm: banger_api::types::Vm = client
            .get(banger_api::Route::Vm(&old.id[..12]))
            .await
            .unwrap();
        assert_eq!(vm.name, "old");
    }

    #[test]
    fn adversarial_error_kinds_map_to_status_and_word() {
        use banger_api::ErrorKind;
        let k = ErrorKind::InsufficientStorage;
        assert_eq!((k.http_status(), k.word()), (507, "insufficient storage"));
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            "\"insufficient_storage\""
        );
    }

    /// A full disk while registering an image: `insufficient storage`, not `internal`, and
    /// nothing of the image is left.
    #[tokio::test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    async fn adversarial_full_disk_is_insufficient_storage() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (mounts a small tmpfs)");
            return;
        }
        let d = daemon().await;
        let src = tempfile::tempdir().unwrap();
        // A real ext4 holding 4 MiB of incompressible data: it needs real blocks.
        std::fs::create_dir_all(src.path().join("tree")).unwrap();
        let data: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(src.path().join("tree/blob"), data).unwrap();
        let rootfs = src.path().join("rootfs.ext4");
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(src.path().join("tree"))
            .arg(&rootfs)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        let kernel = src.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF").unwrap();
        // The images directory on a 1 MiB tmpfs.
        let images = d.dir.path().join("state/images");
        std::fs::create_dir_all(&images).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&images)
            .status()
            .unwrap();
        assert!(st.success());
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(images.clone());
        let body = format!(
            r#"{{"name":"big","rootfs":"{}","kernel":"{}"}}"#,
            rootfs.display(),
            kernel.display()
        );
        let answer = post(&d.sock, "/v1/images", Some("application/json"), &body).await;
        let err = error_of(&answer).unwrap();
        assert_eq!(err["kind"], "insufficient_storage", "{err}");
        assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("No space left on device"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&images).unwrap().count(),
            0,
            "staging left behind"
        );
        assert_eq!(d.state.db(|s| s.list_images()).unwrap().len(), 1);
    }

    /// Bytes that are not a bundle: the user's problem, `bad request`, nothing registered.
    #[tokio::test]
    async fn adversarial_bad_bundle_is_a_bad_request() {
        let d = daemon().await;
        let src = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("junk.tar.zst", b"not a bundle at all".to_vec()),
            ("empty.tar.zst", Vec::new()),
            // A valid zstd frame holding something that is not a tar.
            ("notar.tar.zst", zstd_of(b"hello")),
        ] {
            let path = src.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let body = format!(r#"{{"path":"{}"}}"#, path.display());
            let answer = post(
                &d.sock,
                "/v1/images/import",
                Some("application/json"),
                &body,
            )
            .await;
            let err = error_of(&answer).unwrap();
            assert_eq!(err["kind"], "bad_request", "{name}: {err}");
            assert!(
                err["message"].as_str().unwrap().contains(name),
                "{name}: {err}"
            );
            assert_eq!(d.state.db(|s| s.list_images()).unwrap().len(), 1, "{name}");
            let images = d.dir.path().join("state/images");
            assert!(
                !images.exists() || std::fs::read_dir(&images).unwrap().count() == 0,
                "{name}: left {:?}",
                std::fs::read_dir(&images).unwrap().collect::<Vec<_>>()
            );
        }
    }

    fn zstd_of(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 1).unwrap()
    }
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
        banger_api::Client::new(sock).get(banger_api::Route::Status),
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
        .post::<_, serde_json::Value>(
            banger_api::Route::VmActions,
            &serde_json::json!({"nonsense": true}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, banger_api::ClientError::Api(e) if e.kind == banger_api::ErrorKind::BadRequest),
        "{err:?}"
    );
    server.abort();
}

/// The lock order (image lock, then a VM lock; see `banger_daemon::state::Locks`): an image
/// mutation and a create of a VM on that image, run concurrently, never deadlock, and always
/// end in one of the consistent outcomes. Unprivileged: real e2fsprogs on small files, a
/// fake VMM and a network that only records.
mod lock_order {
    use std::net::Ipv4Addr;
    use std::path::{Path, PathBuf};

    use banger_api::types::{CreateVm, VmSettings};
    use banger_daemon::error::OpError;
    use banger_daemon::progress::Progress;
    use banger_daemon::state::{Host, Vmms};
    use banger_net::{NetError, NetOps, Subnet};
    use banger_store::ImageRow;
    use banger_vmm::VmmError;
    use banger_vmm::fake::FakeVmm;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Host networking that only keeps the set of TAPs that exist.
    #[derive(Debug, Default)]
    struct Taps(std::sync::Mutex<std::collections::BTreeSet<String>>);

    impl Taps {
        fn list(&self) -> Vec<String> {
            self.0.lock().unwrap().iter().cloned().collect()
        }
    }

    impl NetOps for Taps {
        fn ensure_bridge(&self, _: &str, _: &Subnet) -> Result<(), NetError> {
            Ok(())
        }
        fn create_tap(&self, name: &str, _: &str, _: Option<u32>) -> Result<(), NetError> {
            self.0.lock().unwrap().insert(name.to_string());
            Ok(())
        }
        fn delete_tap(&self, name: &str) -> Result<(), NetError> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
        fn list_links(&self, prefix: &str) -> Result<Vec<String>, NetError> {
            Ok(self
                .list()
                .into_iter()
                .filter(|t| t.starts_with(prefix))
                .collect())
        }
        fn link_exists(&self, name: &str) -> Result<bool, NetError> {
            Ok(self.0.lock().unwrap().contains(name))
        }
        fn enable_nat(&self, _: &Subnet, _: Ipv4Addr, _: Option<&str>) -> Result<(), NetError> {
            Ok(())
        }
        fn disable_nat(&self, _: Ipv4Addr) -> Result<(), NetError> {
            Ok(())
        }
    }

    struct Race {
        dir: tempfile::TempDir,
        state: Arc<AppState>,
        fc: Arc<FakeVmm>,
        taps: Arc<Taps>,
        /// A clean ext4 every image's rootfs and work seed is copied from.
        ext4: PathBuf,
    }

    fn race() -> Race {
        let dir = tempfile::Builder::new()
            .prefix("bgl")
            .tempdir_in("/tmp")
            .unwrap();
        let layout = Layout::under(dir.path());
        std::fs::create_dir_all(&layout.runtime_dir).unwrap();
        std::fs::create_dir_all(&layout.state_dir).unwrap();
        banger_daemon::images::reset_scratch_dir(&layout.state_dir).unwrap();
        let ext4 = dir.path().join("template.ext4");
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&ext4)
            .arg("8M")
            .status()
            .unwrap();
        assert!(st.success());
        let fc = Arc::new(FakeVmm::new());
        let taps = Arc::new(Taps::default());
        let host = Host {
            vmms: Vmms::single(fc.clone()),
            net: taps.clone(),
            runner: Arc::new(banger_core::runner::SystemRunner::new()),
        };
        let store = banger_store::Store::open(&layout.db_path()).unwrap();
        let state = state_on(dir.path(), &layout, store, host);
        Race {
            dir,
            state,
            fc,
            taps,
            ext4,
        }
    }

    /// A registered image `race-N` whose files exist (rootfs, kernel, work seed), so a
    /// create on it gets as far as starting the VMM.
    fn add_image(r: &Race, n: usize) -> String {
        let name = format!("race-{n}");
        let dir = r.dir.path().join("images").join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&r.ext4, dir.join("rootfs.ext4")).unwrap();
        std::fs::copy(&r.ext4, dir.join("work-seed.ext4")).unwrap();
        std::fs::write(dir.join("kernel"), b"\x7fELF").unwrap();
        let at = |f: &str| dir.join(f).display().to_string();
        r.state
            .db(|s| {
                s.insert_image(&ImageRow {
                    id: format!("{n:04x}{}", "e".repeat(28)),
                    name: name.clone(),
                    dir: dir.display().to_string(),
                    rootfs: at("rootfs.ext4"),
                    rootfs_bytes: 8 << 20,
                    kernel: Some(at("kernel")),
                    work_seed: Some(at("work-seed.ext4")),
                    created_at: "2026-01-01T00:00:00Z".into(),
                    ..Default::default()
                })
            })
            .unwrap();
        name
    }

    fn vm_dirs(r: &Race) -> Vec<PathBuf> {
        let vms = r.state.opts.layout.state_dir.join("vms");
        match std::fs::read_dir(&vms) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[allow(clippy::print_stderr)] // how the races fell, for whoever reads the output
    async fn image_delete_and_create_on_that_image_never_deadlock() {
        let r = race();
        let (mut deleted_first, mut in_use, mut created_first) = (0, 0, 0);
        for n in 0..50 {
            let image = add_image(&r, n);
            // The create gets past its disks and fails at the VMM start, then rolls back.
            r.fc.fail_next_start(VmmError::InvalidSpec {
                vm_id: "any".into(),
                what: "kernel",
                reason: "the test refuses every start".into(),
            });
            let create = tokio::spawn(banger_daemon::vms::create(
                r.state.clone(),
                CreateVm {
                    image: Some(image.clone()),
                    resources: VmSettings {
                        work_disk_bytes: Some(8 << 20),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                Progress::new(None),
                CancellationToken::new(),
            ));
            let delete = {
                let (state, image) = (r.state.clone(), image.clone());
                tokio::spawn(async move { banger_daemon::images::delete(state, &image).await })
            };
            let (created, deleted) = tokio::time::timeout(Duration::from_secs(20), async {
                (create.await.unwrap(), delete.await.unwrap())
            })
            .await
            .unwrap_or_else(|_| panic!("iteration {n}: create and image delete deadlocked"));
            match (&created, &deleted) {
                // The delete came first: the create found no image, and made nothing.
                (Err(OpError::ImageNotFound { .. }), Ok(_)) => deleted_first += 1,
                // The create's row named the image first: the delete was refused, and the
                // create failed where the test made it fail, then rolled back.
                (Err(OpError::Vmm { .. }), Err(OpError::ImageInUse { .. })) => {
                    in_use += 1;
                    banger_daemon::images::delete(r.state.clone(), &image)
                        .await
                        .unwrap_or_else(|e| panic!("iteration {n}: image still used: {e}"));
                }
                // The create finished (and rolled back) before the delete looked.
                (Err(OpError::Vmm { .. }), Ok(_)) => created_first += 1,
                other => panic!("iteration {n}: inconsistent outcome {other:?}"),
            }
            assert_eq!(
                r.state.vm_rows().unwrap(),
                Vec::new(),
                "iteration {n}: a VM row was left behind"
            );
            assert_eq!(vm_dirs(&r), Vec::<PathBuf>::new(), "iteration {n}");
            assert_eq!(r.taps.list(), Vec::<String>::new(), "iteration {n}");
            assert!(r.state.db(|s| s.list_images()).unwrap().is_empty());
            assert!(!Path::new(&r.dir.path().join("images").join(&image)).exists());
        }
        eprintln!(
            "delete first: {deleted_first}, refused as in use: {in_use}, create first: {created_first}"
        );
    }
}

/// The daemon's modules form layers: the `crate::` references between the files of `src/`
/// (comments and string literals left out) make a graph without a cycle.
mod module_graph {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    type Graph = BTreeMap<String, BTreeSet<String>>;

    /// `text` with its comments and the contents of its string and char literals removed.
    fn code_of(text: &str) -> String {
        let b = text.as_bytes();
        let (mut out, mut i) = (String::new(), 0);
        while i < b.len() {
            match b[i] {
                b'/' if b.get(i + 1) == Some(&b'/') => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                        i += 1;
                    }
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    out.push_str("\"\"");
                }
                // A char literal ('x', '\n', '"'); a lifetime ('a) is kept.
                b'\'' if b.get(i + 2) == Some(&b'\'') => i += 3,
                b'\'' if b.get(i + 1) == Some(&b'\\') => {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
                _ => {
                    let c = text[i..].chars().next().unwrap();
                    out.push(c);
                    i += c.len_utf8();
                }
            }
        }
        out
    }

    fn ident_at(s: &str) -> &str {
        let s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    }

    /// The first path segments named right after `crate::`: one, or a `{...}` group's.
    fn names_after_crate(code: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let (mut depth, mut item_start) = (0, 0);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            names.insert(ident_at(&group[item_start..i]).to_string());
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            names.insert(ident_at(&group[item_start..i]).to_string());
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                names.insert(ident_at(rest).to_string());
            }
        }
        names.remove("");
        names
    }

    /// Module -> the modules it refers to. An item of the crate root counts as `lib`; the
    /// crate root also names its modules without `crate::`.
    /// A module directory (`vms/mod.rs` and its files) counts as one module, `vms`.
    fn graph(src: &Path) -> Graph {
        let files: BTreeMap<String, String> = std::fs::read_dir(src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs") || p.join("mod.rs").is_file())
            .filter(|p| p.file_stem().unwrap() != "main")
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                let text = if p.is_dir() {
                    rs_files(&p)
                        .iter()
                        .map(|f| std::fs::read_to_string(f).unwrap())
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    std::fs::read_to_string(&p).unwrap()
                };
                (name, code_of(&text))
            })
            .collect();
        let mut graph = Graph::new();
        for (module, code) in &files {
            let mut names = names_after_crate(code);
            if module == "lib" {
                for other in files.keys() {
                    let path = format!("{other}::");
                    let named = code.match_indices(&path).any(|(at, _)| {
                        !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                    });
                    if named {
                        names.insert(other.clone());
                    }
                }
            }
            let targets = names
                .into_iter()
                .map(|n| {
                    if files.contains_key(&n) {
                        n
                    } else {
                        "lib".into()
                    }
                })
                .filter(|n| n != module)
                .collect();
            graph.insert(module.clone(), targets);
        }
        graph
    }

    /// A cycle of `graph` (its modules in order, the first repeated at the end), if any.
    fn cycle(graph: &Graph) -> Option<Vec<String>> {
        fn visit(
            g: &Graph,
            m: &str,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == m) {
                let mut found = path[at..].to_vec();
                found.push(m.to_string());
                return Some(found);
            }
            if done.contains(m) {
                return None;
            }
            path.push(m.to_string());
            for next in g.get(m).into_iter().flatten() {
                if let Some(found) = visit(g, next, path, done) {
                    return Some(found);
                }
            }
            path.pop();
            done.insert(m.to_string());
            None
        }
        let mut done = BTreeSet::new();
        graph
            .keys()
            .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
    }

    #[test]
    fn daemon_modules_import_no_loop() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let graph = graph(&src);
        assert!(
            graph["routes"].contains("vms"),
            "the graph was read: {graph:?}"
        );
        assert_eq!(cycle(&graph), None, "import loop in {graph:#?}");
    }

    fn rs_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        files.sort();
        files
    }

    /// Inside a module directory: submodule -> the siblings it names as `super::x`. The
    /// directory's `mod.rs` only declares and re-exports them, and is left out.
    fn sub_graph(dir: &Path) -> Graph {
        let names: BTreeSet<String> = rs_files(dir)
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .filter(|n| n != "mod")
            .collect();
        let mut graph = Graph::new();
        for module in &names {
            let code = code_of(&std::fs::read_to_string(dir.join(format!("{module}.rs"))).unwrap());
            let targets = names
                .iter()
                .filter(|other| *other != module && code.contains(&format!("super::{other}::")))
                .cloned()
                .collect();
            graph.insert(module.clone(), targets);
        }
        graph
    }

    #[test]
    fn the_vm_service_modules_import_no_loop() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vms");
        let graph = sub_graph(&dir);
        assert!(
            graph["create"].contains("boot"),
            "the graph was read: {graph:?}"
        );
        assert_eq!(cycle(&graph), None, "import loop in {graph:#?}");
    }

    #[test]
    fn the_loop_check_finds_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, text: &str| std::fs::write(dir.path().join(f), text).unwrap();
        write(
            "lib.rs",
            "pub mod a;\npub mod b;\npub fn run() { a::go(); }\n",
        );
        write(
            "a.rs",
            "use crate::{b::{self, X}, lib_item};\n// crate::c\n",
        );
        write(
            "b.rs",
            "const S: &str = \"crate::a\";\nfn f() -> char { '\"' }\nuse crate::a;\n",
        );
        write("c.rs", "fn f<'a>(_: &'a str) {}\n");
        let graph = graph(dir.path());
        assert_eq!(graph["lib"], BTreeSet::from(["a".to_string()]));
        assert_eq!(
            graph["a"],
            BTreeSet::from(["b".to_string(), "lib".to_string()])
        );
        assert_eq!(graph["b"], BTreeSet::from(["a".to_string()]));
        assert_eq!(
            cycle(&graph).unwrap(),
            ["a", "b", "a"].map(String::from),
            "{graph:?}"
        );
    }
}
