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

/// The one way these tests build a daemon: its layout under `dir` (state and runtime dirs
/// made, the store opened), `config`, and the host seams `host` ([`fake_host`] for the
/// usual fakes).
fn state_in(
    dir: &std::path::Path,
    host: banger_daemon::state::Host,
    config: Config,
) -> Arc<AppState> {
    state_timed(
        dir,
        host,
        config,
        Arc::new(banger_daemon::clock::SystemClock),
    )
}

/// [`state_in`] with the wall clock `clock`.
fn state_timed(
    dir: &std::path::Path,
    host: banger_daemon::state::Host,
    config: Config,
    clock: Arc<dyn banger_daemon::clock::Clock>,
) -> Arc<AppState> {
    let layout = Layout::under(dir);
    std::fs::create_dir_all(&layout.runtime_dir).unwrap();
    std::fs::create_dir_all(&layout.state_dir).unwrap();
    let store = banger_store::Store::open(&layout.db_path()).unwrap();
    let opts = DaemonOptions {
        layout,
        agent_bin: None,
        config,
        config_warnings: Vec::new(),
        // A home of its own (empty unless a test fills it): host integration reads it.
        home: Some(dir.join("home")),
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
        clock,
    };
    Arc::new(AppState::new(opts, store, parts))
}

/// Makes an empty 8 MiB ext4 at `path` (through the runner, which also finds `mkfs.ext4` in
/// the sbin directories a user's `PATH` may lack).
fn make_ext4(path: &std::path::Path) {
    use banger_core::runner::CommandRunner;
    let args = ["-q", "-F", &path.display().to_string(), "8M"].map(String::from);
    let out = banger_core::runner::SystemRunner::new()
        .run("mkfs.ext4", &args)
        .unwrap();
    assert!(out.success(), "{out:?}");
}

/// The fake VMM, a network that only models the host's, and real commands.
fn fake_host() -> banger_daemon::state::Host {
    banger_daemon::state::Host {
        vmms: banger_daemon::state::Vmms::single(Arc::new(banger_vmm::fake::FakeVmm::new())),
        net: Arc::new(banger_net::fake::FakeNetOps::new()),
        runner: Arc::new(banger_core::runner::SystemRunner::new()),
    }
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
    let state = state_in(dir.path(), fake_host(), Config::default());
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

    use banger_core::config::Config;
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
        let state = super::state_in(dir.path(), super::fake_host(), Config::default());
        let layout = state.opts.layout.clone();
        state
            .db(|s| {
                s.insert_image(&ImageRow {
                    id: "img0".into(),
                    name: "img".into(),
                    dir: dir.path().display().to_string(),
                    rootfs: dir.path().join("rootfs.ext4").display().to_string(),
                    rootfs_bytes: 1 << 20,
                    kernel: Some(dir.path().join("vmlinux").display().to_string()),
                    created_at: "t".into(),
                    ..ImageRow::default()
                })
            })
            .unwrap();
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
                created_at: format!("t{n}"),
                started_at: None,
                origin: banger_core::vm::VmOrigin::Api,
                paused: false,
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
        let state = state_in(dir.path(), host, Config::default());
        let store = state.store.lock().unwrap();
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
        drop(store);
        let sock = state.opts.layout.socket_path();
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
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            origin: banger_core::vm::VmOrigin::Api,
            paused: false,
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
        let st = std::process::Command::new(
            banger_core::probe::SearchPath::programs(std::env::var_os("PATH").as_deref())
                .find("mkfs.ext4")
                .expect("mkfs.ext4 is installed"),
        )
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
    let state = state_in(dir.path(), fake_host(), Config::default());
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
    use std::path::{Path, PathBuf};

    use banger_api::types::{CreateVm, VmSettings};
    use banger_daemon::error::OpError;
    use banger_daemon::progress::Progress;
    use banger_daemon::state::{Host, Vmms};
    use banger_net::fake::FakeNetOps;
    use banger_store::ImageRow;
    use banger_vmm::VmmError;
    use banger_vmm::fake::FakeVmm;
    use tokio_util::sync::CancellationToken;

    use super::*;

    struct Race {
        dir: tempfile::TempDir,
        state: Arc<AppState>,
        fc: Arc<FakeVmm>,
        net: Arc<FakeNetOps>,
        /// A clean ext4 every image's rootfs and work seed is copied from.
        ext4: PathBuf,
    }

    fn race() -> Race {
        let dir = tempfile::Builder::new()
            .prefix("bgl")
            .tempdir_in("/tmp")
            .unwrap();
        let ext4 = dir.path().join("template.ext4");
        make_ext4(&ext4);
        let fc = Arc::new(FakeVmm::new());
        let net = Arc::new(FakeNetOps::new());
        let host = Host {
            vmms: Vmms::single(fc.clone()),
            net: net.clone(),
            runner: Arc::new(banger_core::runner::SystemRunner::new()),
        };
        let state = state_in(dir.path(), host, Config::default());
        banger_daemon::images::reset_scratch_dir(&state.opts.layout.state_dir).unwrap();
        Race {
            dir,
            state,
            fc,
            net,
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
            assert_eq!(r.net.taps(), Vec::<String>::new(), "iteration {n}");
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
    fn kernel_modules_import_no_loop() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../banger-kernel/src");
        let graph = graph(&src);
        assert!(
            graph.contains_key("extract"),
            "the graph was read: {graph:?}"
        );
        assert_eq!(cycle(&graph), None, "import loop in {graph:#?}");
    }

    /// The crate map of ARCHITECTURE.md: crate -> the workspace crates it names after `→`.
    /// A line that starts with blanks continues the one above; `a, b → x` gives both `a`
    /// and `b` the same dependencies; `(none)` is no dependency; `(...)` after a name is a
    /// note (the binary's name).
    fn documented_crate_map(doc: &str) -> Graph {
        let section = doc
            .split("## Crate map")
            .nth(1)
            .expect("a Crate map section");
        let block = section.split("```").nth(1).expect("a fenced crate map");
        let mut entries: Vec<String> = Vec::new();
        for line in block.lines().skip(1) {
            match entries.last_mut() {
                Some(last) if line.starts_with(' ') => {
                    last.push(' ');
                    last.push_str(line.trim());
                }
                _ if line.trim().is_empty() => {}
                _ => entries.push(line.trim().to_string()),
            }
        }
        let names = |list: &str| -> BTreeSet<String> {
            list.split(',')
                .map(|n| n.split('(').next().unwrap().trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        };
        let mut map = Graph::new();
        for entry in entries {
            let (crates, deps) = entry.split_once('→').expect("`crate → deps`");
            for krate in names(crates) {
                map.insert(krate, names(deps));
            }
        }
        map
    }

    /// The workspace's crates and their normal dependencies on each other, from cargo.
    fn real_crate_map() -> Graph {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let packages = meta["packages"].as_array().unwrap();
        let members: BTreeSet<String> = packages
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        packages
            .iter()
            .map(|p| {
                let deps = p["dependencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| d["kind"].is_null())
                    .map(|d| d["name"].as_str().unwrap().to_string())
                    .filter(|d| members.contains(d))
                    .collect();
                (p["name"].as_str().unwrap().to_string(), deps)
            })
            .collect()
    }

    #[test]
    fn the_architecture_crate_map_is_the_real_one() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
        let (documented, real) = (documented_crate_map(&doc), real_crate_map());
        assert!(
            real.contains_key("banger-daemon"),
            "cargo answered: {real:?}"
        );
        for (krate, deps) in &real {
            assert_eq!(
                documented.get(krate),
                Some(deps),
                "ARCHITECTURE.md's crate map is wrong for {krate}"
            );
        }
        assert_eq!(
            documented.keys().collect::<Vec<_>>(),
            real.keys().collect::<Vec<_>>(),
            "ARCHITECTURE.md names crates that do not exist"
        );
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

/// A create the VM's backend refuses in [`Vmm::validate`](banger_vmm::Vmm::validate) is
/// refused before anything exists for the VM: no row, no directory, no TAP, no disk, no VMM.
mod create_validation {
    use std::path::{Path, PathBuf};

    use banger_api::types::CreateVm;
    use banger_core::runner::fake::FakeRunner;
    use banger_daemon::error::OpError;
    use banger_daemon::progress::Progress;
    use banger_daemon::state::{Host, Vmms};
    use banger_net::DirectNetOps;
    use banger_store::ImageRow;
    use banger_vmm::VmmError;
    use banger_vmm::fake::{FakeCall, FakeVmm};
    use tokio_util::sync::CancellationToken;

    use super::*;

    struct Setup {
        _dir: tempfile::TempDir,
        layout: Layout,
        state: Arc<AppState>,
        vmm: Arc<FakeVmm>,
        net: Arc<DirectNetOps<FakeRunner>>,
        runner: Arc<FakeRunner>,
    }

    /// A daemon whose roots are under `home` (in a fresh temporary directory) with one image,
    /// `img`, whose files need not exist: nothing gets as far as reading them.
    fn setup(home: impl FnOnce(&Path) -> PathBuf) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("bgv")
            .tempdir_in("/tmp")
            .unwrap();
        let home = home(dir.path());
        let layout = Layout::under(&home);
        std::fs::create_dir_all(&layout.runtime_dir).unwrap();
        std::fs::create_dir_all(&layout.state_dir).unwrap();
        let vmm = Arc::new(FakeVmm::new());
        let net = Arc::new(DirectNetOps::new(FakeRunner::new()));
        let runner = Arc::new(FakeRunner::new());
        let host = Host {
            vmms: Vmms::single(vmm.clone()),
            net: net.clone(),
            runner: runner.clone(),
        };
        let state = state_in(&home, host, Config::default());
        let images = dir.path().join("img");
        let at = |f: &str| images.join(f).display().to_string();
        state
            .db(|s| {
                s.insert_image(&ImageRow {
                    id: "f".repeat(32),
                    name: "img".into(),
                    dir: images.display().to_string(),
                    rootfs: at("rootfs.ext4"),
                    rootfs_bytes: 8 << 20,
                    kernel: Some(at("vmlinux")),
                    created_at: "2026-01-01T00:00:00Z".into(),
                    ..Default::default()
                })
            })
            .unwrap();
        Setup {
            _dir: dir,
            layout,
            state,
            vmm,
            net,
            runner,
        }
    }

    async fn create(s: &Setup) -> Result<banger_api::types::Vm, OpError> {
        banger_daemon::vms::create(
            s.state.clone(),
            CreateVm {
                name: Some("web".into()),
                image: Some("img".into()),
                ..Default::default()
            },
            Progress::new(None),
            CancellationToken::new(),
        )
        .await
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Nothing of a VM exists: no row, no VM or run directory, no host command (TAP, disks),
    /// and the backend was asked to validate once and never to start.
    fn assert_nothing_made(s: &Setup) {
        assert_eq!(
            s.state.vm_rows().unwrap(),
            Vec::new(),
            "a VM row was stored"
        );
        assert_eq!(
            entries(&s.layout.state_dir.join("vms")),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            entries(&s.layout.runtime_dir.join("vms")),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            s.net.runner().calls(),
            Vec::<String>::new(),
            "host networking ran"
        );
        assert_eq!(s.runner.calls(), Vec::<String>::new(), "a disk command ran");
        let calls = s.vmm.calls();
        assert!(
            matches!(calls.as_slice(), [FakeCall::Validate(spec)] if spec.vm_id.len() == 32),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_spec_creates_nothing() {
        let s = setup(|d| d.join("home"));
        s.vmm.fail_next_validate(VmmError::InvalidSpec {
            vm_id: "any".into(),
            what: "memory size",
            reason: "the test refuses it".into(),
        });
        let err = create(&s).await.unwrap_err();
        assert!(
            matches!(&err, OpError::Vmm { source, .. } if matches!(**source, VmmError::InvalidSpec { .. })),
            "{err:?}"
        );
        assert_eq!(err.kind(), banger_api::ErrorKind::BadRequest);
        assert_nothing_made(&s);
        // The same create passes validation once nothing refuses it, and gets as far as
        // the disks (whose image files do not exist), then rolls back.
        let err = create(&s).await.unwrap_err();
        assert!(matches!(err, OpError::Disk { .. }), "{err:?}");
        assert_eq!(s.state.vm_rows().unwrap(), Vec::new());
        assert!(matches!(
            s.vmm.calls().as_slice(),
            [FakeCall::Validate(_), FakeCall::Validate(_)]
        ));
    }

    /// The kernel command line is the backend-neutral one, plus `init=` the agent for an
    /// image booting banger's init; the daemon never asks the backend what it is.
    #[tokio::test]
    async fn an_image_without_systemd_boots_the_agent_as_init() {
        let s = setup(|d| d.join("home"));
        let systemd = s.state.find_image("img").unwrap();
        s.state
            .db(|db| {
                db.insert_image(&ImageRow {
                    id: "e".repeat(32),
                    name: "busybox".into(),
                    init: banger_core::guest_init::GuestInit::Banger,
                    ..systemd.clone()
                })
            })
            .unwrap();
        let boot_args = |image: &str| {
            let s = &s;
            let image = image.to_string();
            async move {
                // The disks do not exist: the create stops after the backend validated.
                let _ = banger_daemon::vms::create(
                    s.state.clone(),
                    CreateVm {
                        image: Some(image),
                        ..Default::default()
                    },
                    Progress::new(None),
                    CancellationToken::new(),
                )
                .await;
                match s.vmm.calls().last() {
                    Some(FakeCall::Validate(spec)) => spec.boot_args.clone(),
                    other => panic!("{other:?}"),
                }
            }
        };
        assert_eq!(boot_args("img").await, banger_daemon::vms::BOOT_ARGS);
        assert_eq!(
            boot_args("busybox").await,
            format!(
                "{} init=/usr/local/bin/banger-agent",
                banger_daemon::vms::BOOT_ARGS
            )
        );
    }

    #[tokio::test]
    async fn a_run_directory_too_deep_for_socket_paths_creates_nothing() {
        // The VM's run directory is `<runtime_dir>/vms/<12 chars>`: its sockets cannot fit
        // in `sun_path` under a runtime directory this deep.
        let s = setup(|d| d.join("h".repeat(100)));
        let err = create(&s).await.unwrap_err();
        assert!(
            matches!(&err, OpError::Vmm { source, .. } if matches!(**source, VmmError::SocketPathTooLong { .. })),
            "{err:?}"
        );
        assert!(
            banger_daemon::error::chain(&err).contains("a Unix socket path holds at most 107"),
            "{err}"
        );
        assert_nothing_made(&s);
    }
}

// ---------------------------------------------------------------------------------------------
// The VM lifecycle at daemon level, unprivileged: the fake VMM (real `sleep` processes), the
// fake network model, real e2fsprogs on small files behind a runner that fails the command a
// test chooses, and a fake guest agent that answers for every VM whose VMM runs.

/// What the lifecycle tests share: a daemon over fakes, an image, and the checks that
/// nothing of a VM is left.
mod vm_fixture {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use axum::Json;
    use banger_api::types::{CreateVm, Vm, VmSettings};
    use banger_core::runner::{CommandOutput, CommandRunner, SpawnError, SystemRunner};
    use banger_daemon::error::OpError;
    use banger_daemon::progress::{Progress, Stage};
    use banger_daemon::state::{Host, Vmms};
    use banger_net::fake::{FakeNetOps, NetOp};
    use banger_store::{ImageRow, VmRow};
    use banger_vmm::fake::{AGENT_SOCKET, FakeCall, FakeVmm};
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Real commands, except that the next run of a program a test named fails (exit 8,
    /// an operational error for e2fsprogs).
    #[derive(Debug, Default)]
    pub struct Runner {
        real: SystemRunner,
        fail: Mutex<Vec<String>>,
        calls: Mutex<Vec<String>>,
    }

    impl Runner {
        /// The next run of `program` fails with exit status 8, running nothing.
        pub fn fail_next(&self, program: &str) {
            self.fail.lock().unwrap().push(program.to_string());
        }

        /// The programs run so far, in order.
        pub fn programs(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl CommandRunner for Runner {
        fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, SpawnError> {
            self.calls.lock().unwrap().push(program.to_string());
            let mut fail = self.fail.lock().unwrap();
            if let Some(at) = fail.iter().position(|p| p == program) {
                fail.remove(at);
                return Ok(CommandOutput {
                    command: format!("{program} {}", args.join(" ")),
                    code: Some(8),
                    stdout: String::new(),
                    stderr: format!("injected failure of {program}"),
                });
            }
            drop(fail);
            self.real.run(program, args)
        }
    }

    pub struct Fixture {
        pub dir: tempfile::TempDir,
        pub state: Arc<AppState>,
        pub vmm: Arc<FakeVmm>,
        pub net: Arc<FakeNetOps>,
        pub runner: Arc<Runner>,
        /// A clean 8 MiB ext4 that images are copied from.
        template: PathBuf,
        agents: Option<tokio::task::JoinHandle<()>>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.stop_agents();
        }
    }

    /// The image every create uses unless told otherwise.
    pub const IMAGE: &str = "base";

    /// A daemon with `config` over the fakes, an image [`IMAGE`] with its work seed, and
    /// (with `agents`) a guest agent answering for every VM whose VMM runs.
    pub fn fixture(config: Config, agents: bool) -> Fixture {
        fixture_with(config, agents, FakeVmm::new())
    }

    /// [`fixture`] over `vmm`.
    pub fn fixture_with(config: Config, agents: bool, vmm: FakeVmm) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("bgv")
            .tempdir_in("/tmp")
            .unwrap();
        let template = dir.path().join("template.ext4");
        make_ext4(&template);
        let (vmm, net, runner) = (
            Arc::new(vmm),
            Arc::new(FakeNetOps::new()),
            Arc::new(Runner::default()),
        );
        let state = state_in(dir.path(), host(&vmm, &net, &runner), config);
        banger_daemon::images::reset_scratch_dir(&state.opts.layout.state_dir).unwrap();
        let mut f = Fixture {
            dir,
            state,
            vmm,
            net,
            runner,
            template,
            agents: None,
        };
        f.add_image(IMAGE, true);
        if agents {
            f.start_agents();
        }
        f
    }

    pub fn host(vmm: &Arc<FakeVmm>, net: &Arc<FakeNetOps>, runner: &Arc<Runner>) -> Host {
        Host {
            vmms: Vmms::single(vmm.clone()),
            net: net.clone(),
            runner: runner.clone(),
        }
    }

    /// A create request for a VM `name` on [`IMAGE`], disks the size of the image's.
    pub fn request(name: &str) -> CreateVm {
        CreateVm {
            name: Some(name.to_string()),
            image: Some(IMAGE.to_string()),
            resources: VmSettings {
                work_disk_bytes: Some(8 << 20),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The health a fake agent answers.
    fn health() -> banger_agent_proto::wire::Health {
        banger_agent_proto::wire::Health {
            version: "0.0.0".into(),
            commit: "test".into(),
            build_epoch: 0,
            uptime_secs: 1,
            hostname: "guest".into(),
        }
    }

    /// Serves a guest agent in every run directory whose VMM runs (its command line names
    /// the directory) and that has no agent socket yet, as a booted guest would.
    async fn answer_agents(run_dirs: PathBuf) {
        let booted = std::sync::atomic::AtomicU32::new(0);
        serve_agents(run_dirs, |listener| {
            let n = booted.fetch_add(1, Ordering::SeqCst);
            let (keys, new_keys) = (host_keys(n), host_keys(1000 + n));
            // A restored guest records the identity it is given next to its socket.
            let run_dir = listener
                .local_addr()
                .ok()
                .and_then(|a| {
                    a.as_pathname()
                        .and_then(|p| p.parent())
                        .map(Path::to_path_buf)
                })
                .unwrap_or_default();
            let app = Router::new()
                .route("/healthz", get(|| async { Json(health()) }))
                .route("/host-keys", get(move || async move { Json(keys.clone()) }))
                .route(
                    banger_agent_proto::identity::IDENTITY_PATH,
                    axum::routing::post(move |body: axum::body::Bytes| async move {
                        std::fs::write(run_dir.join(IDENTITY_GIVEN), &body).unwrap();
                        Json(new_keys.clone())
                    }),
                );
            tokio::spawn(serve_router(listener, app, std::future::pending()));
        })
        .await
    }

    /// Where a fake agent writes the identity it was given (`POST /identity`), in its VM's
    /// run directory.
    pub const IDENTITY_GIVEN: &str = "identity-given.json";

    /// The host keys the `n`th booted guest reports: its own ed25519 key, and a line no
    /// known_hosts may get.
    pub fn host_keys(n: u32) -> banger_agent_proto::wire::HostKeys {
        banger_agent_proto::wire::HostKeys {
            keys: vec![
                format!("ssh-ed25519 {} root@guest", host_key(n)),
                "ssh-ed25519 AAAA\nevil.vm ssh-ed25519 AAAAAAAAAAAAAAAAAAAA".into(),
            ],
        }
    }

    /// The base64 of the `n`th booted guest's key.
    pub fn host_key(n: u32) -> String {
        format!("AAAAC3NzaC1lZDI1NTE5AAAAIGuest{n:04}")
    }

    /// Calls `serve` with the bound agent socket of every run directory whose VMM runs and
    /// that has no agent socket yet.
    pub async fn serve_agents(run_dirs: PathBuf, serve: impl Fn(UnixListener)) {
        loop {
            for dir in std::fs::read_dir(&run_dirs)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
            {
                let sock = dir.join(AGENT_SOCKET);
                if sock.exists() || banger_vmm::process::pids_in_dir(&dir).is_empty() {
                    continue;
                }
                if let Ok(listener) = UnixListener::bind(&sock) {
                    serve(listener);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    impl Fixture {
        pub fn start_agents(&mut self) {
            let run_dirs = self.state.opts.layout.runtime_dir.join("vms");
            self.agents = Some(tokio::spawn(answer_agents(run_dirs)));
        }

        /// Guests stop answering (the ones already answering keep their socket).
        pub fn stop_agents(&mut self) {
            if let Some(agents) = self.agents.take() {
                agents.abort();
            }
        }

        /// Registers image `name` (rootfs, kernel; a work seed when `seed`).
        pub fn add_image(&self, name: &str, seed: bool) -> ImageRow {
            let dir = self.dir.path().join("images").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&self.template, dir.join("rootfs.ext4")).unwrap();
            std::fs::write(dir.join("vmlinux"), b"\x7fELF").unwrap();
            if seed {
                std::fs::copy(&self.template, dir.join("work-seed.ext4")).unwrap();
            }
            let at = |f: &str| dir.join(f).display().to_string();
            let image = ImageRow {
                id: format!(
                    "{:0>32}",
                    format!("{:x}", name.len() * 7919 + name.as_bytes()[0] as usize)
                ),
                name: name.to_string(),
                dir: dir.display().to_string(),
                rootfs: at("rootfs.ext4"),
                rootfs_bytes: 8 << 20,
                kernel: Some(at("vmlinux")),
                work_seed: seed.then(|| at("work-seed.ext4")),
                created_at: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            };
            self.state.db(|s| s.insert_image(&image)).unwrap();
            image
        }

        /// Serves the daemon's API on its socket; the socket and the server task.
        pub fn serve(&self) -> (PathBuf, tokio::task::JoinHandle<std::io::Result<()>>) {
            let sock = self.state.opts.layout.socket_path();
            let server = tokio::spawn(serve_router(
                UnixListener::bind(&sock).unwrap(),
                router(self.state.clone()),
                std::future::pending(),
            ));
            (sock, server)
        }

        /// Creates a VM from `req`, without a client watching.
        pub async fn create(&self, req: CreateVm) -> Result<Vm, OpError> {
            banger_daemon::vms::create(
                self.state.clone(),
                req,
                Progress::new(None),
                CancellationToken::new(),
            )
            .await
        }

        /// Starts a create of `req` in a task; its stages arrive on the receiver.
        pub fn spawn_create(
            &self,
            req: CreateVm,
            cancel: CancellationToken,
        ) -> (
            tokio::task::JoinHandle<Result<Vm, OpError>>,
            tokio::sync::mpsc::UnboundedReceiver<Stage>,
        ) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let task = tokio::spawn(banger_daemon::vms::create(
                self.state.clone(),
                req,
                Progress::new(Some(tx)),
                cancel,
            ));
            (task, rx)
        }

        pub fn rows(&self) -> Vec<VmRow> {
            self.state.vm_rows().unwrap()
        }

        pub fn row(&self, name: &str) -> VmRow {
            self.rows()
                .into_iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no VM {name}"))
        }

        pub fn run_dir(&self, id: &str) -> PathBuf {
            self.state
                .opts
                .layout
                .runtime_dir
                .join("vms")
                .join(&id[..12])
        }

        pub fn vm_dirs(&self) -> BTreeSet<PathBuf> {
            entries(&self.state.opts.layout.state_dir.join("vms"))
        }

        pub fn run_dirs(&self) -> BTreeSet<PathBuf> {
            entries(&self.state.opts.layout.runtime_dir.join("vms"))
        }

        /// Whether the VMM was asked to do anything besides checking a spec
        /// ([`Vmm::validate`](banger_vmm::Vmm::validate) runs before anything is made).
        pub fn vmm_ran(&self) -> bool {
            self.vmm
                .calls()
                .iter()
                .any(|c| !matches!(c, FakeCall::Validate(_)))
        }

        /// Whether anything was asked to make a bridge, TAP or NAT rule (releasing what
        /// does not exist is not making anything).
        pub fn net_made_anything(&self) -> bool {
            self.net.calls().iter().any(|c| {
                matches!(
                    c.op(),
                    NetOp::EnsureBridge | NetOp::CreateTap | NetOp::EnableNat
                )
            })
        }

        /// The VM ids the fake VMM was asked to start.
        pub fn started(&self) -> Vec<String> {
            self.vmm
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    FakeCall::Start(spec) => Some(spec.vm_id),
                    _ => None,
                })
                .collect()
        }

        /// No VM is left, nor anything one took: no row, VM directory or run directory, no
        /// TAP or NAT rule, and no VMM process of any VM the fake VMM was asked to start.
        pub fn assert_no_vm_left(&self) {
            assert_eq!(self.rows(), Vec::new(), "a VM row is left");
            assert_eq!(self.vm_dirs(), BTreeSet::new(), "a VM directory is left");
            assert_eq!(self.run_dirs(), BTreeSet::new(), "a run directory is left");
            assert_eq!(self.net.taps(), Vec::<String>::new(), "a TAP is left");
            assert_eq!(
                self.net.nat_rules(),
                Vec::<std::net::Ipv4Addr>::new(),
                "a NAT rule is left"
            );
            for id in self.started() {
                assert_eq!(self.vmm.pid_of(&id), None, "the VMM of {id} still runs");
                assert_eq!(
                    banger_vmm::process::pids_in_dir(&self.run_dir(&id)),
                    Vec::<u32>::new(),
                    "a VMM of {id} still runs"
                );
            }
        }

        /// `row` holds nothing of a running VM: stopped or `error` with no pid, no run
        /// directory, TAP or NAT rule, and no VMM process; its disks are kept.
        pub fn assert_released(&self, row: &VmRow) {
            assert_eq!((row.pid, row.vmm_start_time), (None, None), "{row:?}");
            assert!(!self.run_dir(&row.id).exists(), "run directory left");
            let tap = row.tap.clone().unwrap();
            assert!(!self.net.taps().contains(&tap), "TAP {tap} left");
            let ip = row.ip.unwrap();
            assert!(!self.net.nat_rules().contains(&ip), "NAT rule left");
            assert_eq!(self.vmm.pid_of(&row.id), None, "VMM still runs");
            assert!(Path::new(&row.dir).join("root.ext4").exists(), "disks lost");
        }
    }

    pub fn entries(dir: &Path) -> BTreeSet<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(list) => list.map(|e| e.unwrap().path()).collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// Waits for the stage called `name` of a create, failing after 30 s.
    pub async fn wait_stage(stages: &mut tokio::sync::mpsc::UnboundedReceiver<Stage>, name: &str) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(s) = stages.recv().await {
                if s.stage == name {
                    return;
                }
            }
            panic!("the create ended before stage {name:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no stage {name:?} within 30s"));
    }

    /// A config for fast tests: a guest that does not answer is given up on after 1 s.
    pub fn quick() -> Config {
        Config {
            agent_wait_secs: 1,
            ..Config::default()
        }
    }
}

/// Create is all-or-nothing: whichever stage fails, nothing of the VM is left, and the
/// error is that stage's.
mod create_rollback {
    use banger_daemon::error::OpError;
    use banger_net::NetError;
    use banger_net::fake::NetOp;
    use banger_vmm::VmmError;

    use super::vm_fixture::*;
    use super::*;

    fn net_failure(op: &str) -> NetError {
        NetError::CommandFailed {
            command: format!("ip {op}"),
            code: Some(2),
            stderr: format!("injected {op} failure"),
        }
    }

    #[tokio::test]
    async fn create_rolls_back_when_the_image_does_not_resolve() {
        let f = fixture(quick(), true);
        let mut req = request("web");
        req.image = Some("nope".into());
        let err = f.create(req).await.unwrap_err();
        assert!(
            matches!(&err, OpError::ImageNotFound { reference } if reference == "nope"),
            "{err:?}"
        );
        f.assert_no_vm_left();
        assert!(f.net.calls().is_empty(), "{:?}", f.net.calls());
        assert!(f.vmm.calls().is_empty());
        assert!(f.runner.programs().is_empty());
    }

    #[tokio::test]
    async fn create_rolls_back_when_the_name_is_taken() {
        let f = fixture(quick(), true);
        let first = f.create(request("web")).await.unwrap();
        let row = f.row("web");
        let (dirs, runs, taps) = (f.vm_dirs(), f.run_dirs(), f.net.taps());
        let (net_calls, vmm_calls) = (f.net.calls().len(), f.vmm.calls().len());
        let err = f.create(request("web")).await.unwrap_err();
        assert!(
            matches!(&err, OpError::NameTaken { name } if name == "web"),
            "{err:?}"
        );
        assert_eq!(f.rows(), vec![row], "the first VM's row changed");
        assert_eq!(
            (f.vm_dirs(), f.run_dirs(), f.net.taps()),
            (dirs, runs, taps)
        );
        assert_eq!(f.net.calls().len(), net_calls, "network touched");
        assert_eq!(f.vmm.calls().len(), vmm_calls, "VMM touched");
        assert!(f.vmm.pid_of(&first.id).is_some(), "the first VM was hurt");
    }

    #[tokio::test]
    async fn create_rolls_back_when_disk_preparation_fails() {
        let f = fixture(quick(), true);
        // The clone of the rootfs (a file operation), growing it (e2fsck before resize2fs),
        // and writing the guest's identity into it (debugfs).
        let clone = f.add_image("norootfs", true);
        std::fs::remove_file(&clone.rootfs).unwrap();
        let mut cases = Vec::new();
        let mut req = request("clone");
        req.image = Some("norootfs".into());
        cases.push((req, None, "rootfs.ext4"));
        let mut req = request("grow");
        req.resources.disk_bytes = Some(16 << 20);
        cases.push((req, Some("e2fsck"), "injected failure of e2fsck"));
        cases.push((
            request("debugfs"),
            Some("debugfs"),
            "injected failure of debugfs",
        ));
        for (req, fail, needle) in cases {
            let name = req.name.clone().unwrap();
            if let Some(program) = fail {
                f.runner.fail_next(program);
            }
            let err = f.create(req).await.unwrap_err();
            assert!(
                matches!(&err, OpError::Disk { vm, .. } if *vm == name),
                "{name}: {err:?}"
            );
            let text = banger_daemon::error::chain(&err);
            assert!(text.contains(needle), "{name}: {text}");
            f.assert_no_vm_left();
            assert!(!f.net_made_anything(), "{name}: network touched");
            assert!(!f.vmm_ran(), "{name}: VMM touched");
        }
    }

    #[tokio::test]
    async fn create_rolls_back_when_the_work_seed_cannot_be_made() {
        let f = fixture(quick(), true);
        let image = f.add_image("fresh", false);
        f.runner.fail_next("mkfs.ext4");
        let mut req = request("web");
        req.image = Some("fresh".into());
        let err = f.create(req).await.unwrap_err();
        assert!(
            matches!(&err, OpError::Disk { vm, .. } if vm == "(image fresh)"),
            "{err:?}"
        );
        assert!(
            banger_daemon::error::chain(&err).contains("injected failure of mkfs.ext4"),
            "{err}"
        );
        f.assert_no_vm_left();
        let after = f.state.db(|s| s.get_image(&image.id)).unwrap().unwrap();
        assert_eq!(after.work_seed, None, "a failed seed was recorded");
        assert!(
            !std::path::Path::new(&image.dir)
                .join("work-seed.ext4")
                .exists()
        );
        assert!(!f.net_made_anything() && !f.vmm_ran());
        // The control: the same create makes the seed when mkfs works.
        let mut req = request("web");
        req.image = Some("fresh".into());
        f.create(req).await.unwrap();
    }

    #[tokio::test]
    async fn create_rolls_back_when_the_network_fails() {
        let f = fixture(quick(), true);
        for op in [NetOp::EnsureBridge, NetOp::CreateTap, NetOp::EnableNat] {
            let name = format!("{op:?}").to_lowercase();
            f.net.fail_next(op, net_failure(&name));
            let mut req = request(&name);
            req.nat = Some(true);
            let err = f.create(req).await.unwrap_err();
            assert!(
                matches!(&err, OpError::Net { vm, .. } if *vm == name),
                "{op:?}: {err:?}"
            );
            assert!(
                banger_daemon::error::chain(&err).contains(&format!("injected {name} failure")),
                "{op:?}: {err}"
            );
            f.assert_no_vm_left();
            assert!(!f.vmm_ran(), "{op:?}: the VMM was started");
        }
        // The TAP made before the NAT rule failed was deleted again.
        let created: Vec<_> = f
            .net
            .calls()
            .into_iter()
            .filter(|c| c.op() == NetOp::CreateTap)
            .collect();
        assert_eq!(created.len(), 2, "{created:?}");
    }

    #[tokio::test]
    async fn create_rolls_back_when_the_vmm_does_not_start() {
        let f = fixture(quick(), true);
        f.vmm.fail_next_start(VmmError::InvalidSpec {
            vm_id: "any".into(),
            what: "kernel",
            reason: "injected start failure".into(),
        });
        let mut req = request("web");
        req.nat = Some(true);
        let err = f.create(req).await.unwrap_err();
        assert!(
            matches!(&err, OpError::Vmm { vm, .. } if vm == "web"),
            "{err:?}"
        );
        assert!(banger_daemon::error::chain(&err).contains("injected start failure"));
        // The network was up (TAP and NAT rule) before the VMM failed.
        let ops: Vec<_> = f.net.calls().iter().map(|c| c.op()).collect();
        assert!(
            ops.contains(&NetOp::EnableNat) && ops.contains(&NetOp::DisableNat),
            "{ops:?}"
        );
        assert_eq!(f.started().len(), 1);
        f.assert_no_vm_left();
    }

    #[tokio::test]
    async fn create_rolls_back_when_the_agent_never_answers() {
        let f = fixture(quick(), false);
        let mut req = request("web");
        req.nat = Some(true);
        let started = std::time::Instant::now();
        let err = f.create(req).await.unwrap_err();
        assert!(
            matches!(&err, OpError::AgentTimeout { vm, secs: 1, .. } if vm == "web"),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        // The VMM ran (it was killed by the rollback).
        assert_eq!(f.started().len(), 1);
        f.assert_no_vm_left();
    }

    /// A client that goes away mid-create (here during the agent wait) cancels it, and the
    /// create rolls back.
    #[tokio::test]
    async fn create_rolls_back_when_the_client_goes_away() {
        // A guest that never answers: the create waits for it until the client leaves.
        let f = fixture(Config::default(), false);
        let (sock, server) = f.serve();
        let body = r#"{"name":"web","image":"base","work_disk_bytes":8388608,"nat":true}"#;
        let mut client = UnixStream::connect(&sock).await.unwrap();
        client
            .write_all(
                format!(
                    "POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.contains("wait agent") {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no agent wait: {seen}"));
        assert_eq!(f.rows().len(), 1, "the VM exists while it is created");
        assert_eq!(f.net.taps().len(), 1);
        drop(client);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !f.rows().is_empty() || f.state.ops.counts().in_flight > 0 {
            assert!(std::time::Instant::now() < deadline, "never rolled back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f.assert_no_vm_left();
        server.abort();
    }
}

/// Reconciliation after the daemon or a VMM died: stored state brought in line with the
/// host, and everything a dead VM held given back.
mod reconcile {
    use banger_vmm::fake::FakeVmm;
    use banger_vmm::process::{Signal, signal, wait_exit};
    use tokio_util::sync::CancellationToken;

    use super::vm_fixture::*;
    use super::*;

    #[tokio::test]
    async fn reconcile_marks_dead_vmms_stopped_and_frees_their_resources() {
        let mut f = fixture(quick(), true);
        let mut req = request("web");
        req.nat = Some(true);
        let vm = f.create(req).await.unwrap();
        let other = f.create(request("db")).await.unwrap();
        f.stop_agents();
        let row = f.row("web");
        assert_eq!(row.state, banger_api::types::VmState::Running);
        let pid = row.pid.unwrap();
        assert_eq!(f.net.nat_rules().len(), 1);
        // The VMM dies behind the daemon's back.
        signal(pid, Signal::KILL).unwrap();
        assert!(wait_exit(pid, Duration::from_secs(5)).await);
        banger_daemon::vms::reconcile(&f.state).await;
        let row = f.row("web");
        assert_eq!(row.state, banger_api::types::VmState::Stopped, "{row:?}");
        f.assert_released(&row);
        assert_eq!(row.id, vm.id);
        // The other VM, whose VMM runs, is left alone.
        let db = f.row("db");
        assert_eq!((db.state.as_str(), db.pid), ("running", other.pid));
        assert!(f.run_dir(&db.id).exists());
        assert_eq!(f.net.taps(), vec![db.tap.clone().unwrap()]);
    }

    /// A daemon killed in the middle of a create leaves a `creating` row, its disks, run
    /// directory, TAP, NAT rule and a running VMM; the next daemon's reconcile removes them.
    #[tokio::test]
    async fn reconcile_rolls_back_a_create_a_crashed_daemon_left() {
        let f = fixture(Config::default(), false);
        let mut req = request("web");
        req.nat = Some(true);
        let (create, mut stages) = f.spawn_create(req, CancellationToken::new());
        wait_stage(&mut stages, "wait agent").await;
        // The daemon dies: the create stops where it is, without rolling back.
        create.abort();
        assert!(create.await.unwrap_err().is_cancelled());
        let row = f.row("web");
        assert_eq!(row.state, banger_api::types::VmState::Creating);
        let pid = row.pid.expect("the VMM's pid was stored");
        assert!(banger_vmm::process::alive(pid));
        assert_eq!(f.net.taps().len(), 1);
        assert_eq!(f.net.nat_rules().len(), 1);

        // The next daemon: same host (network, processes, files), a new state and VMM backend.
        let vmm = Arc::new(FakeVmm::new());
        let restarted = state_in(
            f.dir.path(),
            host(&vmm, &f.net, &f.runner),
            Config::default(),
        );
        banger_daemon::vms::reconcile(&restarted).await;
        assert!(wait_exit(pid, Duration::from_secs(5)).await, "VMM left");
        assert_eq!(restarted.vm_rows().unwrap(), Vec::new());
        f.assert_no_vm_left();
    }
}

/// Stop asks the guest first and forces the VMM off after the grace period, measured on
/// tokio's clock: paused here, so the test does not wait the grace period.
mod stop {
    use banger_vmm::fake::{FakeCall, ShutdownBehaviour};

    use super::vm_fixture::*;
    use super::*;

    #[tokio::test]
    async fn stop_kills_the_vmm_after_the_grace_period_without_waiting_for_it() {
        let grace = 600;
        let mut f = fixture(
            Config {
                stop_grace_secs: grace,
                ..quick()
            },
            true,
        );
        let mut req = request("web");
        req.nat = Some(true);
        let vm = f.create(req).await.unwrap();
        f.stop_agents();
        // The guest ignores the shutdown request.
        f.vmm.set_shutdown_behaviour(ShutdownBehaviour::Ignore);
        tokio::time::pause();
        let started = std::time::Instant::now();
        let note = banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            note.as_deref(),
            Some(format!("guest did not shut down within {grace}s; forced off").as_str())
        );
        assert!(took < Duration::from_secs(30), "the stop took {took:?}");
        assert!(
            f.vmm
                .calls()
                .iter()
                .any(|c| matches!(c, FakeCall::RequestShutdown(r) if r.vm_id == vm.id)),
            "the guest was not asked to shut down first"
        );
        let row = f.row("web");
        assert_eq!(row.state, banger_api::types::VmState::Stopped);
        f.assert_released(&row);
        assert!(!banger_vmm::process::alive(vm.pid.unwrap()));
    }

    /// The control: a guest that shuts down is not forced.
    #[tokio::test]
    async fn stop_of_a_guest_that_shuts_down_is_not_forced() {
        let mut f = fixture(quick(), true);
        let vm = f.create(request("web")).await.unwrap();
        f.stop_agents();
        let note = banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        assert_eq!(note, None);
        f.assert_released(&f.row("web"));
    }
}

/// `vm pause`/`vm resume`: several references, each answered; a wrong state is that
/// reference's error and changes nothing; the store keeps the paused state.
mod pause {
    use banger_api::types::{ActionRequest, VmAction, VmState};
    use banger_daemon::error::OpError;
    use banger_vmm::VmmError;
    use banger_vmm::fake::{FakeCall, FakeOp};

    use super::vm_fixture::*;
    use super::*;

    async fn act(f: &Fixture, action: VmAction, refs: &[&str]) -> Vec<Option<String>> {
        let req = ActionRequest {
            refs: refs.iter().map(|r| r.to_string()).collect(),
            action,
        };
        banger_daemon::vms::act(f.state.clone(), req)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.error.map(|e| e.message))
            .collect()
    }

    fn pauses(f: &Fixture) -> usize {
        f.vmm
            .calls()
            .iter()
            .filter(|c| matches!(c, FakeCall::Pause(_) | FakeCall::Resume(_)))
            .count()
    }

    #[tokio::test]
    async fn pause_and_resume_answer_per_reference_and_a_wrong_state_changes_nothing() {
        let f = fixture(quick(), true);
        let web = f.create(request("web")).await.unwrap();
        f.create(request("db")).await.unwrap();
        let errors = act(&f, VmAction::Pause, &["web", "nope", "db"]).await;
        assert_eq!(errors[0], None);
        assert!(errors[1].as_deref().unwrap().contains("nope"), "{errors:?}");
        assert_eq!(errors[2], None);
        assert!(f.vmm.is_paused(&web.id));
        assert!(f.row("web").paused && f.row("db").paused);
        assert!(f.state.vm_view(&f.row("web")).paused);
        assert_eq!(pauses(&f), 2);

        // Pausing a paused VM is refused without asking the VMM.
        let errors = act(&f, VmAction::Pause, &["web"]).await;
        assert_eq!(errors[0].as_deref(), Some("VM \"web\" is already paused"));
        assert_eq!(pauses(&f), 2);

        let errors = act(&f, VmAction::Resume, &["web"]).await;
        assert_eq!(errors, vec![None]);
        assert!(!f.vmm.is_paused(&web.id) && !f.row("web").paused);
        // Resuming a running VM is refused, nothing asked.
        let errors = act(&f, VmAction::Resume, &["web"]).await;
        assert_eq!(errors[0].as_deref(), Some("VM \"web\" is not paused"));
        assert_eq!(pauses(&f), 3);
        assert!(f.row("db").paused, "db is still paused");
    }

    #[tokio::test]
    async fn a_paused_vm_refuses_its_agent_and_stays_paused_across_a_daemon_restart() {
        let f = fixture(quick(), true);
        f.create(request("web")).await.unwrap();
        banger_daemon::vms::pause(&f.state, &f.row("web").id)
            .await
            .unwrap();
        let err = banger_daemon::vms::health(&f.state, "web")
            .await
            .unwrap_err();
        assert!(matches!(err, OpError::Paused { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "VM \"web\" is paused; resume it with: banger vm resume web"
        );
        // The next daemon (same host and VMMs) finds it paused, and reconcile keeps it so.
        let restarted = state_in(f.dir.path(), host(&f.vmm, &f.net, &f.runner), quick());
        banger_daemon::vms::reconcile(&restarted).await;
        let row = restarted
            .vm_rows()
            .unwrap()
            .into_iter()
            .find(|r| r.name == "web")
            .unwrap();
        assert_eq!((row.state, row.paused), (VmState::Running, true));
        banger_daemon::vms::resume(&restarted, &row.id)
            .await
            .unwrap();
        let row = restarted.vm_rows().unwrap().remove(0);
        assert!(banger_daemon::vms::endpoint_of(&restarted, &row).is_ok());
    }

    #[tokio::test]
    async fn stop_of_a_paused_vm_resumes_it_first_and_leaves_it_unpaused() {
        let mut f = fixture(quick(), true);
        let vm = f.create(request("web")).await.unwrap();
        f.stop_agents();
        banger_daemon::vms::pause(&f.state, &vm.id).await.unwrap();
        let note = banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        assert_eq!(note, None, "the resumed guest shut down by itself");
        let calls = f.vmm.calls();
        let resume = calls
            .iter()
            .position(|c| matches!(c, FakeCall::Resume(_)))
            .expect("resumed");
        let shutdown = calls
            .iter()
            .position(|c| matches!(c, FakeCall::RequestShutdown(_)))
            .expect("asked to shut down");
        assert!(resume < shutdown, "{calls:?}");
        let row = f.row("web");
        assert_eq!((row.state, row.paused), (VmState::Stopped, false));
        f.assert_released(&row);
        // A stopped VM can be neither paused nor resumed.
        for action in [VmAction::Pause, VmAction::Resume] {
            let errors = act(&f, action, &["web"]).await;
            assert_eq!(errors[0].as_deref(), Some("VM \"web\" is not running"));
        }
    }

    #[tokio::test]
    async fn a_pause_the_vmm_refuses_leaves_the_vm_running() {
        let f = fixture(quick(), true);
        let vm = f.create(request("web")).await.unwrap();
        f.vmm.fail_next(
            FakeOp::Pause,
            VmmError::Snapshot {
                vm_id: vm.id.clone(),
                what: "the test refuses".into(),
            },
        );
        let errors = act(&f, VmAction::Pause, &["web"]).await;
        assert!(
            errors[0].as_deref().unwrap().contains("the test refuses"),
            "{errors:?}"
        );
        assert!(!f.row("web").paused);
        // Its agent is reachable again.
        assert!(banger_daemon::vms::endpoint_of(&f.state, &f.row("web")).is_ok());
    }
}

/// `vm fork`: the original paused, saved, its disks copied and resumed, then the fork
/// restored on its own devices and given its own identity; any failing step undone.
mod fork {
    use std::path::PathBuf;

    use banger_api::types::{ForkVm, Vm, VmState};
    use banger_daemon::error::OpError;
    use banger_daemon::progress::Progress;
    use banger_vmm::fake::{FakeCall, FakeOp, FakeVmm};
    use banger_vmm::{SnapshotFiles, StartMode, VmmError};
    use tokio_util::sync::CancellationToken;

    use super::vm_fixture::*;
    use super::*;

    fn config() -> Config {
        Config {
            warm_start: false,
            ssh_wait_secs: 1,
            ..quick()
        }
    }

    async fn fork(f: &Fixture, from: &str, name: &str) -> Result<Vm, OpError> {
        banger_daemon::vms::fork(
            f.state.clone(),
            from.to_string(),
            ForkVm { name: name.into() },
            Progress::new(None),
            CancellationToken::new(),
        )
        .await
    }

    /// The calls the fork made, from the first pause on, without lookups.
    fn fork_calls(f: &Fixture) -> Vec<FakeCall> {
        let calls = f.vmm.calls();
        let first = calls
            .iter()
            .position(|c| matches!(c, FakeCall::Pause(_)))
            .expect("the original was paused");
        calls[first..]
            .iter()
            .filter(|c| !matches!(c, FakeCall::FindLive(_) | FakeCall::Validate(_)))
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn a_fork_pauses_saves_copies_resumes_then_restores_with_its_own_identity() {
        let f = fixture_with(config(), true, FakeVmm::new().with_snapshots());
        std::fs::create_dir_all(f.state.opts.layout.ssh_dir()).unwrap();
        let web = f.create(request("web")).await.unwrap();
        let forked = fork(&f, "web", "web-try").await.unwrap();

        let original = f.row("web");
        let row = f.row("web-try");
        let dir = PathBuf::from(&row.dir);
        let files = SnapshotFiles::in_dir(&dir.join("snapshot"));
        let calls = fork_calls(&f);
        assert_eq!(calls[0], FakeCall::Pause(web.id.clone()));
        assert_eq!(calls[1], FakeCall::Snapshot(web.id.clone(), files.clone()));
        assert_eq!(
            calls[2],
            FakeCall::CopyDisk {
                src: PathBuf::from(&original.dir).join("root.ext4"),
                dest: dir.join("root.ext4"),
            }
        );
        assert_eq!(
            calls[3],
            FakeCall::CopyDisk {
                src: PathBuf::from(&original.dir).join("work.ext4"),
                dest: dir.join("work.ext4"),
            }
        );
        assert_eq!(calls[4], FakeCall::Resume(web.id.clone()));
        match &calls[5] {
            FakeCall::Launch(spec, StartMode::Restore(r)) => {
                assert_eq!(spec.vm_id, row.id);
                assert_eq!(spec.tap, row.tap.clone().unwrap());
                assert_eq!(spec.root_disk, dir.join("root.ext4"));
                assert_eq!(r.snapshot, files);
            }
            other => panic!("not a restore: {other:?}"),
        }
        assert_eq!(calls.len(), 6, "{calls:?}");

        // The original goes on as it was.
        assert_eq!((original.state, original.paused), (VmState::Running, false));
        assert!(!f.vmm.is_paused(&web.id));
        assert_eq!(original.pid, web.pid);
        // The fork runs on its own lease, says where it came from, and got its own identity.
        assert_eq!(row.state, VmState::Running);
        assert_ne!(row.ip, original.ip);
        assert_ne!(row.mac, original.mac);
        assert_ne!(row.tap, original.tap);
        assert_ne!(row.vsock_cid, original.vsock_cid);
        assert_eq!(forked.forked_from.as_deref(), Some("web"));
        assert_eq!(forked.fork_memory.as_deref(), Some("shared"));
        assert!(
            matches!(
                forked.disk_clone.as_deref(),
                Some("reflink" | "sparse copy")
            ),
            "{forked:?}"
        );
        let given: serde_json::Value = serde_json::from_slice(
            &std::fs::read(f.run_dir(&row.id).join(IDENTITY_GIVEN)).unwrap(),
        )
        .unwrap();
        assert_eq!(given["hostname"], "web-try");
        assert_eq!(given["mac"], row.mac.unwrap().to_string().to_lowercase());
        // The fork's guest answered the identity with new host keys: those are recorded.
        let known = std::fs::read_to_string(f.state.opts.layout.known_hosts()).unwrap();
        let ip = row.ip.unwrap();
        assert!(
            known.contains(&format!("web-try.vm,{ip} ssh-ed25519 {}", host_key(1001))),
            "{known}"
        );
        // Its disks are copies: what the original writes next, the fork never sees.
        let root = |d: &str| std::fs::read(PathBuf::from(d).join("root.ext4")).unwrap();
        assert_eq!(root(&row.dir), root(&original.dir));
        std::fs::write(PathBuf::from(&original.dir).join("root.ext4"), b"changed").unwrap();
        assert_ne!(root(&row.dir), b"changed");
    }

    #[tokio::test]
    async fn a_fork_failing_at_any_step_resumes_the_original_and_leaves_nothing_of_itself() {
        let f = fixture_with(config(), true, FakeVmm::new().with_snapshots());
        let web = f.create(request("web")).await.unwrap();
        let before = f.row("web");
        let taps = f.net.taps();
        for (op, step) in [
            (FakeOp::Pause, "pause"),
            (FakeOp::Snapshot, "save state"),
            (FakeOp::CopyDisk, "copy disks"),
            (FakeOp::Restore, "restore"),
        ] {
            f.vmm.fail_next(
                op,
                VmmError::Snapshot {
                    vm_id: web.id.clone(),
                    what: format!("the test fails {step}"),
                },
            );
            let err = fork(&f, "web", "web-try").await.unwrap_err();
            assert!(
                matches!(&err, OpError::Fork { step: s, .. } if *s == step),
                "{step}: {err:?}"
            );
            assert!(
                banger_daemon::error::chain(&err).contains(&format!("the test fails {step}")),
                "{err}"
            );
            let original = f.row("web");
            assert_eq!(original, before, "{step}: the original changed");
            assert!(!f.vmm.is_paused(&web.id), "{step}: the original is paused");
            assert_eq!(f.rows().len(), 1, "{step}: the fork's row is left");
            assert_eq!(f.vm_dirs().len(), 1, "{step}: the fork's directory is left");
            assert_eq!(f.net.taps(), taps, "{step}: the fork's TAP is left");
        }
        // Then a fork works.
        fork(&f, "web", "web-try").await.unwrap();
    }

    #[tokio::test]
    async fn a_fork_is_refused_before_anything_is_made_when_it_cannot_be() {
        let f = fixture_with(config(), true, FakeVmm::new().with_snapshots());
        f.create(request("web")).await.unwrap();
        f.create(request("db")).await.unwrap();
        let calls = f.vmm.calls().len();
        let err = fork(&f, "web", "db").await.unwrap_err();
        assert!(matches!(err, OpError::NameTaken { .. }), "{err:?}");
        let err = fork(&f, "web", "bad name").await.unwrap_err();
        assert!(err.to_string().contains("bad name"), "{err}");
        let err = fork(&f, "nope", "x").await.unwrap_err();
        assert!(matches!(err, OpError::VmNotFound { .. }), "{err:?}");
        banger_daemon::vms::stop(&f.state, &f.row("db").id)
            .await
            .unwrap();
        let calls = calls + f.vmm.calls()[calls..].len();
        let err = fork(&f, "db", "x").await.unwrap_err();
        assert!(matches!(err, OpError::NotRunning { .. }), "{err:?}");
        assert_eq!(f.vmm.calls().len(), calls, "the VMM was asked something");
        assert_eq!(f.rows().len(), 2);

        // A backend without snapshots says so.
        let f = fixture_with(config(), true, FakeVmm::new());
        f.create(request("web")).await.unwrap();
        let err = fork(&f, "web", "x").await.unwrap_err();
        assert!(
            banger_daemon::error::chain(&err).contains("snapshots"),
            "{err}"
        );
        assert_eq!(f.rows().len(), 1);
    }
}

/// Creates running at the same time never share a lease.
mod concurrency {
    use std::collections::BTreeSet;

    use super::vm_fixture::*;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_get_distinct_names_addresses_cids_taps_and_macs() {
        const N: usize = 16;
        let f = fixture(Config::default(), true);
        let creates: Vec<_> = (0..N)
            .map(|n| {
                let state = f.state.clone();
                let mut req = request("x");
                // Half named by the daemon.
                req.name = (n % 2 == 0).then(|| format!("vm-{n}"));
                tokio::spawn(banger_daemon::vms::create(
                    state,
                    req,
                    banger_daemon::progress::Progress::new(None),
                    tokio_util::sync::CancellationToken::new(),
                ))
            })
            .collect();
        let mut vms = Vec::new();
        for c in creates {
            vms.push(c.await.unwrap().unwrap());
        }
        fn distinct<T: Ord + std::fmt::Debug>(what: &str, items: Vec<T>) {
            let n = items.len();
            let set: BTreeSet<T> = items.into_iter().collect();
            assert_eq!(set.len(), n, "{what} shared: {set:?}");
        }
        distinct("names", vms.iter().map(|v| v.name.clone()).collect());
        distinct("ids", vms.iter().map(|v| v.id.clone()).collect());
        distinct("IPs", vms.iter().map(|v| v.ip.unwrap()).collect());
        distinct("MACs", vms.iter().map(|v| v.mac.unwrap()).collect());
        distinct("TAPs", vms.iter().map(|v| v.tap.clone().unwrap()).collect());
        distinct("CIDs", vms.iter().map(|v| v.vsock_cid.unwrap()).collect());
        assert!(
            vms.iter()
                .all(|v| v.state == banger_api::types::VmState::Running)
        );
        assert_eq!(f.net.taps().len(), N);
        assert_eq!(f.rows().len(), N);
        // What the VMMs were started with agrees with what is stored.
        let specs: BTreeSet<(String, u32)> = f
            .vmm
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                banger_vmm::fake::FakeCall::Start(s) => Some((s.tap, s.vsock_cid)),
                _ => None,
            })
            .collect();
        assert_eq!(specs.len(), N, "{specs:?}");
    }
}

/// One action on several references: first-seen order, each reference its own answer.
mod multi_ref {
    use banger_store::VmRow;

    use super::vm_fixture::*;

    fn stored(f: &Fixture, n: u8, name: &str, state: &str, vmm: &str) -> VmRow {
        let id = format!("{n:02x}{}", "cd".repeat(15));
        let row = VmRow {
            id: id.clone(),
            name: name.into(),
            image_id: f.state.db(|s| s.list_images()).unwrap()[0].id.clone(),
            state: state.parse().unwrap(),
            vmm: vmm.parse().unwrap(),
            cpus: 2,
            memory_mib: 512,
            disk_bytes: 8 << 20,
            work_disk_bytes: 8 << 20,
            nat: false,
            ip: Some(std::net::Ipv4Addr::new(172, 30, 0, 10 + n)),
            mac: None,
            tap: Some(format!("bgr{}", &id[..12])),
            vsock_cid: Some(3 + u32::from(n)),
            pid: None,
            vmm_start_time: None,
            dir: f.dir.path().join(name).display().to_string(),
            error: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            origin: banger_core::vm::VmOrigin::Api,
            paused: false,
        };
        f.state.db(|s| s.insert_vm(&row)).unwrap();
        row
    }

    #[tokio::test]
    async fn multi_ref_actions_answer_in_first_seen_order_with_per_reference_errors() {
        let f = fixture(quick(), false);
        let db = stored(&f, 1, "db", "stopped", "qemu");
        let web1 = stored(&f, 2, "web-1", "stopped", "firecracker");
        let web2 = stored(&f, 3, "web-2", "running", "firecracker");
        let (sock, server) = f.serve();
        // 40 CPUs: within banger's caps and QEMU's, beyond Firecracker's 32.
        let refs = [
            "web-2",
            "nope",
            "db",
            &web2.id[..12],
            "web",
            "db",
            "web-1",
            "nope",
        ];
        let body = serde_json::json!({"action": {"set": {"settings": {"cpus": 40}}}, "refs": refs});
        let outcomes: Vec<serde_json::Value> = banger_api::Client::new(&sock)
            .post(banger_api::routes::Route::VmActions, &body)
            .await
            .unwrap();
        let summary: Vec<(String, Option<String>, Option<String>)> = outcomes
            .iter()
            .map(|o| {
                (
                    o["reference"].as_str().unwrap().to_string(),
                    o["vm"].as_str().map(String::from),
                    o["error"]["kind"].as_str().map(String::from),
                )
            })
            .collect();
        let row = |r: &str, vm: Option<&str>, kind: Option<&str>| {
            (r.to_string(), vm.map(String::from), kind.map(String::from))
        };
        assert_eq!(
            summary,
            vec![
                row("web-2", Some("web-2"), Some("bad_request")),
                row("nope", None, Some("not_found")),
                row("db", Some("db"), None),
                row("web", None, Some("bad_request")),
                row("web-1", Some("web-1"), Some("bad_request")),
                row("nope", None, Some("not_found")),
            ],
            "{outcomes:#?}"
        );
        let message = |i: usize| {
            outcomes[i]["error"]["message"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(
            message(0).contains("VM web-2: cpus must be between 1 and 32"),
            "{}",
            message(0)
        );
        assert!(
            message(3).contains("matches several VMs: web-1, web-2"),
            "{}",
            message(3)
        );
        // Only the QEMU VM changed, once.
        let cpus = |r: &VmRow| f.state.db(|s| s.get_vm(&r.id)).unwrap().unwrap().cpus;
        assert_eq!((cpus(&db), cpus(&web1), cpus(&web2)), (40, 2, 2));
        server.abort();
    }
}

/// A start that fails leaves the VM `error`, with why, holding nothing; it can be started
/// again, and is shown and reconciled as such.
mod error_state {
    use banger_api::types::{Vm, VmState};
    use banger_vmm::VmmError;

    use super::vm_fixture::*;

    #[tokio::test]
    async fn a_failed_start_leaves_the_vm_in_error_and_a_later_start_recovers_it() {
        let mut f = fixture(quick(), true);
        let mut req = request("web");
        req.nat = Some(true);
        let vm = f.create(req).await.unwrap();
        banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        f.vmm.fail_next_start(VmmError::InvalidSpec {
            vm_id: vm.id.clone(),
            what: "kernel",
            reason: "injected start failure".into(),
        });
        let err = banger_daemon::vms::start(&f.state, &vm.id)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("web"), "{err}");
        let row = f.row("web");
        assert_eq!(row.state, VmState::Error, "{row:?}");
        let why = row.error.clone().unwrap();
        assert!(why.contains("injected start failure"), "{why}");
        f.assert_released(&row);
        // The network was up before the VMM failed, and was given back.
        assert!(
            f.net
                .calls()
                .iter()
                .filter(|c| c.op() == banger_net::fake::NetOp::DisableNat)
                .count()
                >= 2
        );

        // Shown as `error`, with the reason, in list (`--all`: it is not running) and show.
        let (sock, server) = f.serve();
        let client = banger_api::Client::new(&sock);
        let list: Vec<Vm> = client
            .get(banger_api::routes::Route::VmList { all: true })
            .await
            .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].state, list[0].error.as_deref()),
            (VmState::Error, Some(why.as_str()))
        );
        let shown: Vm = client
            .get(banger_api::routes::Route::Vm("web"))
            .await
            .unwrap();
        assert_eq!(shown.state, VmState::Error);
        // Stop has nothing to do.
        let note = banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        assert_eq!(note.as_deref(), Some("already error"));

        // Reconciled like a stopped VM: an unfinished start (a run directory) is undone.
        std::fs::create_dir_all(f.run_dir(&vm.id)).unwrap();
        banger_daemon::vms::reconcile(&f.state).await;
        let row = f.row("web");
        assert_eq!(row.state, VmState::Error);
        f.assert_released(&row);

        // A start that works clears it.
        f.start_agents();
        banger_daemon::vms::start(&f.state, &vm.id).await.unwrap();
        let row = f.row("web");
        assert_eq!(
            (row.state.as_str(), row.error.as_deref()),
            ("running", None)
        );
        assert!(f.vmm.pid_of(&vm.id).is_some());
        let shown: Vm = client
            .get(banger_api::routes::Route::Vm("web"))
            .await
            .unwrap();
        assert_eq!((shown.state, shown.error), (VmState::Running, None));
        server.abort();
    }
}

/// Timestamps come from the injected clock.
mod clock {
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use banger_daemon::clock::Clock;

    use super::vm_fixture::*;
    use super::*;

    /// A clock that says what the test sets.
    #[derive(Debug)]
    struct Manual(Mutex<SystemTime>);

    impl Clock for Manual {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    #[tokio::test]
    async fn created_and_started_at_come_from_the_daemons_clock() {
        let mut f = fixture(quick(), true);
        let clock: Arc<Manual> = Arc::new(Manual(Mutex::new(
            UNIX_EPOCH + Duration::from_secs(1_893_553_445),
        )));
        // The same daemon, restarted with the manual clock.
        f.state = state_timed(
            f.dir.path(),
            host(&f.vmm, &f.net, &f.runner),
            quick(),
            clock.clone(),
        );
        assert_eq!(f.state.started_at, 1_893_553_445);
        let vm = f.create(request("web")).await.unwrap();
        assert_eq!(vm.created_at, "2030-01-02T03:04:05Z");
        assert_eq!(vm.started_at.as_deref(), Some("2030-01-02T03:04:05Z"));
        *clock.0.lock().unwrap() += Duration::from_secs(90);
        banger_daemon::vms::restart(&f.state, &vm.id).await.unwrap();
        let row = f.row("web");
        assert_eq!(row.created_at, "2030-01-02T03:04:05Z");
        assert_eq!(row.started_at.as_deref(), Some("2030-01-02T03:05:35Z"));
    }
}

/// Host integration on every start: the owner's git identity, agent auth files and config
/// `file_sync` written into the work disk before the VMM runs (read back with debugfs).
mod host_integration {
    use std::path::{Path, PathBuf};

    use banger_core::config::FileSync;
    use banger_core::runner::SystemRunner;
    use banger_daemon::error::OpError;
    use banger_disk::FileKind;
    use tokio_util::sync::CancellationToken;

    use super::vm_fixture::*;
    use super::*;

    /// The fake home every fixture's daemon reads (see `state_timed`).
    fn home(f: &Fixture) -> PathBuf {
        f.dir.path().join("home")
    }

    fn put(home: &Path, rel: &str, contents: &str) {
        let path = home.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn sync(host: &str, guest: &str) -> FileSync {
        FileSync {
            host: host.into(),
            guest: guest.into(),
        }
    }

    fn work_disk(f: &Fixture, name: &str) -> PathBuf {
        PathBuf::from(&f.row(name).dir).join("work.ext4")
    }

    /// The file `path` of the work disk: contents, type, mode and owner.
    fn guest_file(disk: &Path, path: &str) -> (String, FileKind, u32, u32, u32) {
        let r = SystemRunner::new();
        let scratch = tempfile::tempdir().unwrap();
        let inode = banger_disk::debugfs::stat(&r, disk, path)
            .unwrap()
            .unwrap_or_else(|| panic!("{path} missing from the work disk"));
        let bytes = banger_disk::debugfs::read_file(&r, disk, path, scratch.path()).unwrap();
        (
            String::from_utf8(bytes).unwrap(),
            inode.kind,
            inode.mode,
            inode.uid,
            inode.gid,
        )
    }

    #[tokio::test]
    async fn create_writes_the_git_identity_auth_files_and_file_sync_root_owned() {
        let config = Config {
            file_sync: vec![
                sync("~/notes/todo.txt", "/root/notes/todo.txt"),
                sync("bin/tool", "/root/.local/bin/tool"),
                sync("~/not-there", "/root/not-there"),
            ],
            ..quick()
        };
        let f = fixture(config, true);
        let home = home(&f);
        put(
            &home,
            ".gitconfig",
            "[user]\n\tname = Ada Lovelace\n\temail = ada@example.org\n[core]\n\teditor = ed\n",
        );
        put(&home, ".local/share/opencode/auth.json", "{\"opencode\":1}");
        put(&home, ".claude/.credentials.json", "{\"claude\":2}");
        put(&home, ".pi/agent/auth.json", "{\"pi\":3}");
        put(&home, "notes/todo.txt", "buy milk\n");
        put(&home, "bin/tool", "#!/bin/sh\necho hi\n");
        std::fs::set_permissions(
            home.join("bin/tool"),
            std::os::unix::fs::PermissionsExt::from_mode(0o750),
        )
        .unwrap();
        let (task, mut stages) = f.spawn_create(request("web"), CancellationToken::new());
        task.await.unwrap().unwrap();
        let mut lines = Vec::new();
        while let Ok(s) = stages.try_recv() {
            lines.push((s.stage, s.detail));
        }
        let host: Vec<&str> = lines
            .iter()
            .filter(|(s, _)| s == "host files")
            .map(|(_, d)| d.as_str())
            .collect();
        // The absent auth files named in one warning, the absent file_sync entry in another,
        // and a summary; all before the VMM starts.
        for absent in ["~/.codex/auth.json", "~/.claude.json", "~/not-there"] {
            assert!(
                host.iter()
                    .any(|d| d.starts_with("warning:") && d.contains(absent)),
                "{absent}: {host:?}"
            );
        }
        assert_eq!(host.iter().filter(|d| d.starts_with("warning:")).count(), 2);
        let summary = host.last().unwrap();
        assert!(
            summary.contains("git identity") && summary.contains("opencode"),
            "{summary}"
        );
        let at = |name: &str| lines.iter().position(|(s, _)| s == name).unwrap();
        assert!(at("host files") < at("start VMM"), "{lines:?}");

        let disk = work_disk(&f, "web");
        let (gitconfig, kind, mode, uid, gid) = guest_file(&disk, "/.gitconfig");
        assert_eq!(
            gitconfig,
            "[user]\n\tname = \"Ada Lovelace\"\n\temail = \"ada@example.org\"\n"
        );
        assert_eq!((kind, mode, uid, gid), (FileKind::Regular, 0o644, 0, 0));
        for (path, contents, want_mode) in [
            (
                "/.local/share/opencode/auth.json",
                "{\"opencode\":1}",
                0o600,
            ),
            ("/.claude/.credentials.json", "{\"claude\":2}", 0o600),
            ("/.pi/agent/auth.json", "{\"pi\":3}", 0o600),
            ("/notes/todo.txt", "buy milk\n", 0o644),
            ("/.local/bin/tool", "#!/bin/sh\necho hi\n", 0o750),
        ] {
            assert_eq!(
                guest_file(&disk, path),
                (contents.to_string(), FileKind::Regular, want_mode, 0, 0),
                "{path}"
            );
        }
        let r = SystemRunner::new();
        for absent in ["/.codex/auth.json", "/.claude.json", "/not-there"] {
            assert!(!banger_disk::exists(&r, &disk, absent).unwrap(), "{absent}");
        }
        // The managed SSH key is still authorised.
        assert!(
            guest_file(&disk, "/.ssh/authorized_keys")
                .0
                .contains("ssh-ed25519")
        );
    }

    #[tokio::test]
    async fn start_refreshes_the_files_and_keeps_a_guest_copy_whose_host_file_is_gone() {
        let f = fixture(quick(), true);
        let home = home(&f);
        put(&home, ".codex/auth.json", "codex-v1");
        put(&home, ".claude.json", "claude-v1");
        let vm = f.create(request("web")).await.unwrap();
        let disk = work_disk(&f, "web");
        assert_eq!(guest_file(&disk, "/.codex/auth.json").0, "codex-v1");
        banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        // The guest edited its git config meanwhile: its other sections are kept.
        let scratch = tempfile::tempdir().unwrap();
        let mut batch = banger_disk::Debugfs::new(scratch.path());
        batch
            .write_bytes(b"[alias]\n\tst = status\n", "/.gitconfig")
            .unwrap();
        batch.run(&SystemRunner::new(), &disk).unwrap();
        std::fs::remove_file(home.join(".codex/auth.json")).unwrap();
        put(&home, ".claude.json", "claude-v2");
        put(&home, ".gitconfig", "[user]\n\temail = ada@example.org\n");
        banger_daemon::vms::start(&f.state, &vm.id).await.unwrap();
        assert_eq!(f.row("web").state.as_str(), "running");
        assert_eq!(
            guest_file(&disk, "/.codex/auth.json"),
            ("codex-v1".into(), FileKind::Regular, 0o600, 0, 0),
            "the guest's copy is kept"
        );
        assert_eq!(guest_file(&disk, "/.claude.json").0, "claude-v2");
        assert_eq!(
            guest_file(&disk, "/.gitconfig").0,
            "[alias]\n\tst = status\n[user]\n\temail = \"ada@example.org\"\n"
        );
    }

    #[tokio::test]
    async fn an_auth_file_that_is_not_a_small_regular_file_in_the_home_is_skipped_with_a_warning() {
        let f = fixture(quick(), true);
        let home = home(&f);
        std::fs::create_dir_all(home.join(".codex")).unwrap();
        // A symlink out of the home, a directory, and a file over the cap.
        std::os::unix::fs::symlink("/etc/passwd", home.join(".codex/auth.json")).unwrap();
        std::fs::create_dir_all(home.join(".claude.json")).unwrap();
        put(&home, ".pi/agent/auth.json", &"x".repeat((1 << 20) + 1));
        let (task, mut stages) = f.spawn_create(request("web"), CancellationToken::new());
        task.await.unwrap().unwrap();
        let mut warnings = Vec::new();
        while let Ok(s) = stages.try_recv() {
            if s.stage == "host files" && s.detail.starts_with("warning:") {
                warnings.push(s.detail);
            }
        }
        for needle in [
            "outside the owner's home",
            "not a regular file",
            "more than the",
        ] {
            assert!(
                warnings.iter().any(|w| w.contains(needle)),
                "{needle}: {warnings:?}"
            );
        }
        let r = SystemRunner::new();
        let disk = work_disk(&f, "web");
        for absent in ["/.codex/auth.json", "/.claude.json", "/.pi/agent/auth.json"] {
            assert!(!banger_disk::exists(&r, &disk, absent).unwrap(), "{absent}");
        }
    }

    #[tokio::test]
    async fn a_start_whose_file_sync_entry_now_leaves_the_home_fails_naming_it_and_writes_nothing()
    {
        let config = Config {
            file_sync: vec![sync("~/link/passwd", "/root/passwd")],
            ..quick()
        };
        let f = fixture(config, true);
        let home = home(&f);
        put(&home, "real/passwd", "mine");
        std::os::unix::fs::symlink(home.join("real"), home.join("link")).unwrap();
        put(&home, ".codex/auth.json", "codex-v1");
        let vm = f.create(request("web")).await.unwrap();
        let disk = work_disk(&f, "web");
        assert_eq!(guest_file(&disk, "/passwd").0, "mine");
        banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        // The link now leaves the home; the auth file changed too, and must not be written.
        std::fs::remove_file(home.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", home.join("link")).unwrap();
        put(&home, ".codex/auth.json", "codex-v2");
        let err = banger_daemon::vms::start(&f.state, &vm.id)
            .await
            .unwrap_err();
        let text = banger_daemon::error::chain(&err);
        assert!(
            text.contains("\"~/link/passwd\" -> \"/root/passwd\"")
                && text.contains("resolves to /etc/passwd"),
            "{text}"
        );
        let row = f.row("web");
        assert_eq!(row.state.as_str(), "error");
        f.assert_released(&row);
        assert_eq!(guest_file(&disk, "/passwd").0, "mine");
        assert_eq!(guest_file(&disk, "/.codex/auth.json").0, "codex-v1");
        assert_eq!(
            f.started(),
            vec![vm.id.clone()],
            "the VMM was not started again"
        );
    }

    #[tokio::test]
    async fn a_file_sync_entry_outside_the_home_fails_the_create_naming_it_and_leaves_nothing() {
        for (host, guest) in [
            ("/etc/passwd", "/root/passwd"),
            ("../x", "/root/x"),
            ("~/etc/passwd", "/root/passwd"),
            ("~/dir", "/root/dir"),
        ] {
            let config = Config {
                file_sync: vec![sync("~/ok.txt", "/root/ok.txt"), sync(host, guest)],
                ..quick()
            };
            let f = fixture(config, true);
            let home = home(&f);
            put(&home, "ok.txt", "fine");
            put(&home, "dir/inside", "a directory is not a file");
            std::os::unix::fs::symlink("/etc", home.join("etc")).unwrap();
            let err = f.create(request("web")).await.unwrap_err();
            assert!(
                matches!(&err, OpError::FileSync { vm, .. } if vm == "web"),
                "{err:?}"
            );
            assert_eq!(err.kind(), banger_api::ErrorKind::BadRequest);
            let text = banger_daemon::error::chain(&err);
            assert!(text.contains(&format!("{host:?} -> {guest:?}")), "{text}");
            f.assert_no_vm_left();
            assert!(!f.net_made_anything(), "{host}: network touched");
            assert!(!f.vmm_ran(), "{host}: VMM touched");
        }
    }
}

/// A VM whose agent is reached over a Unix socket that takes one client at a time, as QEMU's
/// virtio-serial chardev does: its health, ports and exec sessions are substreams of one
/// multiplexed connection, so they run side by side, and exec is relayed over the API.
mod agent_mux {
    use super::vm_fixture::*;
    use super::*;
    use banger_agent_proto::client::exec::{ExecEvent, ExecSession, exec_upgraded};
    use banger_agent_proto::exec::{ExecRequest, ExitStatus, UPGRADE_EXEC};
    use banger_api::{Client, ClientError, ErrorKind, Route};

    /// A real agent on `listener`, serving one client at a time: the next connection waits
    /// in the backlog until the current one ends.
    async fn one_client_agent(listener: UnixListener) {
        let agent = banger_agent::server::Agent::new(banger_agent::procfs::ProcFs::new("/proc"));
        while let Ok((stream, _)) = listener.accept().await {
            let _ = banger_agent::server::serve_connection(agent.clone(), stream, "chardev").await;
        }
    }

    /// Everything a session prints on stdout, and how it ended.
    async fn output_of(mut s: ExecSession) -> (String, ExitStatus) {
        let mut out = Vec::new();
        loop {
            match s.next_event().await.unwrap() {
                Some(ExecEvent::Stdout(b)) => out.extend_from_slice(&b),
                Some(ExecEvent::Stderr(_)) => {}
                Some(ExecEvent::Exit(st)) => return (String::from_utf8(out).unwrap(), st),
                None => panic!("the session ended without an exit status"),
            }
        }
    }

    #[tokio::test]
    async fn health_and_a_second_session_answer_while_an_exec_session_runs() {
        let f = fixture(
            Config {
                agent_wait_secs: 10,
                ..Config::default()
            },
            false,
        );
        let agents = tokio::spawn(serve_agents(
            f.state.opts.layout.runtime_dir.join("vms"),
            |listener| {
                tokio::spawn(one_client_agent(listener));
            },
        ));
        f.create(request("mux")).await.unwrap();
        let (sock, _server) = f.serve();
        let client = Client::new(&sock).with_timeout(Duration::from_secs(10));
        let t = Duration::from_secs(5);

        // A session that stays open until its stdin ends, relayed by the API.
        let io = client
            .upgrade(Route::VmExec("mux"), UPGRADE_EXEC)
            .await
            .unwrap();
        let mut cat = exec_upgraded(io, ExecRequest::new(["cat"]), t)
            .await
            .unwrap();

        // Both answer although the socket serves one client, which the session's is.
        let health: banger_api::types::Health =
            tokio::time::timeout(Duration::from_secs(3), client.get(Route::VmHealth("mux")))
                .await
                .expect("health waited behind the exec session")
                .unwrap();
        assert!(!health.hostname.is_empty());
        let io = banger_daemon::vms::exec_channel(&f.state, "mux")
            .await
            .unwrap();
        let echo = exec_upgraded(io, ExecRequest::new(["echo", "two"]), t)
            .await
            .unwrap();
        assert_eq!(output_of(echo).await, ("two\n".into(), ExitStatus::Code(0)));

        let mut stdin = cat.take_stdin().unwrap();
        stdin.write_all(b"one").await.unwrap();
        stdin.shutdown().await.unwrap();
        assert_eq!(output_of(cat).await, ("one".into(), ExitStatus::Code(0)));

        // Refusals come before the upgrade, as error bodies.
        let err = client
            .upgrade(Route::VmExec("nope"), UPGRADE_EXEC)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Api(e) if e.kind == ErrorKind::NotFound),
            "{err:?}"
        );
        agents.abort();
    }
}

/// The workspace service's refusals: each before any byte reaches the guest, each typed,
/// and nothing stored.
mod workspaces {
    use std::path::Path;

    use banger_api::types::{ExportWorkspace, PrepareWorkspace};
    use banger_core::error::chain;
    use banger_daemon::error::OpError;
    use banger_daemon::progress::Progress;
    use tokio_util::sync::CancellationToken;

    use super::vm_fixture::*;

    async fn prepare(f: &Fixture, vm: &str, path: &Path) -> Result<(), OpError> {
        banger_daemon::workspaces::prepare(
            f.state.clone(),
            vm.to_string(),
            PrepareWorkspace {
                path: path.to_path_buf(),
                ..PrepareWorkspace::default()
            },
            Progress::new(None),
            CancellationToken::new(),
        )
        .await
        .map(drop)
    }

    #[tokio::test]
    async fn refusals_are_typed_and_store_nothing() {
        let mut f = fixture(quick(), true);
        let vm = f.create(request("ws")).await.unwrap();

        // No workspace to export: not found, saying how to prepare one.
        let e = banger_daemon::workspaces::export(&f.state, "ws", ExportWorkspace::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), banger_api::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "VM ws has no workspace; prepare one with: banger vm workspace prepare ws PATH"
        );

        // A relative path, and a directory outside any repository: bad requests.
        let e = prepare(&f, "ws", Path::new("repo")).await.unwrap_err();
        assert_eq!(e.kind(), banger_api::ErrorKind::BadRequest, "{e}");
        let plain = f.dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let e = prepare(&f, "ws", &plain).await.unwrap_err();
        assert_eq!(e.kind(), banger_api::ErrorKind::BadRequest, "{e}");
        assert!(
            chain(&e).contains("is not inside a git repository"),
            "{}",
            chain(&e)
        );

        // A stopped VM: a conflict.
        f.stop_agents();
        banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        let e = prepare(&f, "ws", &plain).await.unwrap_err();
        assert_eq!(e.kind(), banger_api::ErrorKind::Conflict, "{e}");
        assert_eq!(f.state.db(|s| s.list_workspaces()).unwrap(), vec![]);
        assert_eq!(f.state.vm_view(&f.row("ws")).workspace, None);
    }
}

// ---------------------------------------------------------------------------------------------
// ssh to guests: banger's known_hosts and the address stanzas follow boots, stops and deletes.

mod ssh_hosts {
    use super::vm_fixture::*;
    use super::*;

    fn read(path: &std::path::Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[tokio::test]
    async fn boot_records_the_guest_s_host_keys_and_delete_drops_them() {
        let f = fixture(Config::default(), true);
        let layout = f.state.opts.layout.clone();
        std::fs::create_dir_all(layout.ssh_dir()).unwrap();
        let vm = f.create(request("web")).await.unwrap();
        let ip = vm.ip.unwrap();
        // Only the well-formed line, under the name and the address.
        assert_eq!(
            read(&layout.known_hosts()),
            format!("web.vm,{ip} ssh-ed25519 {}\n", host_key(0))
        );
        assert!(
            read(&layout.ssh_hosts()).contains(&format!("Host web.vm\n    HostName {ip}\n")),
            "{}",
            read(&layout.ssh_hosts())
        );
        assert_eq!(
            f.state.ssh_info().known_hosts,
            layout.known_hosts(),
            "clients check against the same file"
        );

        // Stopped: no address for ssh, the keys stay for the next boot.
        banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        assert!(!read(&layout.ssh_hosts()).contains("web.vm"));
        assert!(read(&layout.known_hosts()).contains("web.vm,"));

        banger_daemon::vms::delete(&f.state, &vm.id).await.unwrap();
        assert_eq!(read(&layout.known_hosts()), "");
        assert!(!read(&layout.ssh_hosts()).contains("web.vm"));
    }

    #[tokio::test]
    async fn a_new_vm_on_a_reused_address_replaces_whatever_was_known_for_it() {
        let f = fixture(Config::default(), true);
        let layout = f.state.opts.layout.clone();
        std::fs::create_dir_all(layout.ssh_dir()).unwrap();
        let first = f.create(request("one")).await.unwrap();
        let ip = first.ip.unwrap();
        banger_daemon::vms::delete(&f.state, &first.id)
            .await
            .unwrap();
        // A line for the address that outlived its VM (a file from an older banger).
        let mine = "# kept\nother.vm,172.30.0.200 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther\n";
        std::fs::write(
            layout.known_hosts(),
            format!("{mine}gone.vm,{ip} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIStale\n"),
        )
        .unwrap();
        let second = f.create(request("two")).await.unwrap();
        assert_eq!(second.ip, Some(ip), "the address is reused");
        assert_eq!(
            read(&layout.known_hosts()),
            format!("{mine}two.vm,{ip} ssh-ed25519 {}\n", host_key(1))
        );
    }

    /// A VM booted by a banger that recorded no host keys gets them when the daemon starts,
    /// from its (real) agent over the VM's multiplexed connection.
    #[tokio::test]
    async fn running_vms_without_recorded_keys_get_them_at_daemon_start() {
        let f = fixture(
            Config {
                agent_wait_secs: 10,
                ..Config::default()
            },
            false,
        );
        let layout = f.state.opts.layout.clone();
        std::fs::create_dir_all(layout.ssh_dir()).unwrap();
        let guest_ssh = f.dir.path().join("guest-etc-ssh");
        std::fs::create_dir(&guest_ssh).unwrap();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIReal";
        std::fs::write(
            guest_ssh.join("ssh_host_ed25519_key.pub"),
            format!("{key} root@old\n"),
        )
        .unwrap();
        let files = banger_agent::host_keys::HostKeyFiles {
            dir: guest_ssh,
            maker: f.dir.path().join("no-unit"),
            done: f.dir.path().join("no-marker"),
            wait: Duration::from_secs(1),
        };
        let _agents = tokio::spawn(serve_agents(
            layout.runtime_dir.join("vms"),
            move |listener| {
                let agent = banger_agent::server::Agent::with_host_keys(
                    banger_agent::procfs::ProcFs::new("/proc"),
                    BuildInfo::current(),
                    files.clone(),
                );
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ =
                            banger_agent::server::serve_connection(agent.clone(), stream, "agent")
                                .await;
                    }
                });
            },
        ));
        let vm = f.create(request("old")).await.unwrap();
        let ip = vm.ip.unwrap();
        let recorded = format!("old.vm,{ip} {key}\n");
        assert_eq!(read(&layout.known_hosts()), recorded, "recorded at boot");
        // What an older banger left: nothing for the VM.
        std::fs::write(layout.known_hosts(), "").unwrap();
        banger_daemon::vms::record_missing_host_keys(f.state.clone()).await;
        assert_eq!(read(&layout.known_hosts()), recorded);
    }
}

/// NAT per VM: `vm set --nat/--no-nat` applied at once to a running VM and stored for its
/// next boots, and torn down with the VM even when its rule or TAP is already gone.
mod nat {
    use banger_api::types::{VmSettings, VmState};
    use banger_net::NetOps;
    use banger_net::fake::NetCall;

    use super::vm_fixture::*;

    async fn set_nat(f: &Fixture, id: &str, nat: bool) -> Option<String> {
        banger_daemon::vms::set(&f.state, id, &VmSettings::default(), Some(nat))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn set_turns_nat_on_and_off_on_a_running_vm_now_and_keeps_it_for_the_next_boot() {
        let f = fixture(quick(), true);
        let vm = f.create(request("web")).await.unwrap();
        let ip = f.row("web").ip.unwrap();
        assert!(f.net.nat_rules().is_empty());

        assert_eq!(
            set_nat(&f, &vm.id, true).await,
            None,
            "nothing waits for a boot"
        );
        assert_eq!(f.net.nat_rules(), [ip]);
        assert!(f.row("web").nat);
        assert!(f.net.calls().contains(&NetCall::EnableNat {
            subnet: f.state.subnet,
            vm_ip: ip,
            out_iface: None,
        }));

        set_nat(&f, &vm.id, false).await;
        assert!(f.net.nat_rules().is_empty());
        assert!(!f.row("web").nat);

        // Stored while stopped; applied by the next start.
        banger_daemon::vms::stop(&f.state, &vm.id).await.unwrap();
        set_nat(&f, &vm.id, true).await;
        assert!(f.net.nat_rules().is_empty(), "a stopped VM has no rule");
        banger_daemon::vms::start(&f.state, &vm.id).await.unwrap();
        assert_eq!(f.row("web").state, VmState::Running);
        assert_eq!(f.net.nat_rules(), [ip]);

        // Resources and NAT together: the resources wait for the next start.
        let note = banger_daemon::vms::set(
            &f.state,
            &vm.id,
            &VmSettings {
                cpus: Some(3),
                ..Default::default()
            },
            Some(false),
        )
        .await
        .unwrap();
        assert_eq!(note.as_deref(), Some("takes effect at the next start"));
        assert!(f.net.nat_rules().is_empty());
    }

    #[tokio::test]
    async fn a_failed_rule_change_stores_nothing() {
        let f = fixture(quick(), true);
        let vm = f.create(request("web")).await.unwrap();
        f.net.fail_next(
            banger_net::fake::NetOp::EnableNat,
            banger_net::NetError::CommandFailed {
                command: "nft add rule".into(),
                code: Some(1),
                stderr: "injected".into(),
            },
        );
        let err = banger_daemon::vms::set(&f.state, &vm.id, &VmSettings::default(), Some(true))
            .await
            .unwrap_err();
        assert!(
            banger_daemon::error::chain(&err).contains("injected"),
            "{err}"
        );
        assert!(!f.row("web").nat);
        assert!(f.net.nat_rules().is_empty());
    }

    #[tokio::test]
    async fn stop_and_delete_tear_nat_down_and_skip_what_is_already_gone() {
        let f = fixture(quick(), true);
        let mut req = request("web");
        req.nat = Some(true);
        let web = f.create(req.clone()).await.unwrap();
        req.name = Some("db".into());
        let db = f.create(req).await.unwrap();
        assert_eq!(f.net.nat_rules().len(), 2);

        // Someone removed web's rule and TAP by hand: the stop still succeeds.
        let row = f.row("web");
        f.net.disable_nat(row.ip.unwrap()).unwrap();
        f.net.delete_tap(row.tap.as_deref().unwrap()).unwrap();
        banger_daemon::vms::stop(&f.state, &web.id).await.unwrap();
        let row = f.row("web");
        assert_eq!(row.state, VmState::Stopped);
        f.assert_released(&row);

        banger_daemon::vms::delete(&f.state, &db.id).await.unwrap();
        banger_daemon::vms::delete(&f.state, &web.id).await.unwrap();
        f.assert_no_vm_left();
    }
}

/// The warm TAP pool: filled once the bridge exists, a boot takes a ready TAP (recorded in its
/// row) without making one, the pool refills, and a restarted daemon adopts the idle ones.
mod tap_pool {
    use banger_net::fake::{NetCall, NetOp};
    use banger_net::plan::is_pool_tap;
    use banger_vmm::fake::FakeVmm;

    use super::vm_fixture::*;
    use super::*;

    async fn wait_idle(state: &AppState, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state.tap_pool.idle().len() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "pool: {:?}",
                state.tap_pool.idle()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn boots_take_ready_taps_the_pool_refills_and_a_restart_adopts_it() {
        let f = fixture(quick(), true);
        let keeper = tokio::spawn(banger_daemon::vms::keep_tap_pool(f.state.clone()));
        // No bridge yet: the pool waits, and nothing is made on the host.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(f.net.taps().is_empty() && f.net.bridges().is_empty());

        // The first boot makes the bridge and its own TAP; then the pool fills.
        let web = f.create(request("web")).await.unwrap();
        wait_idle(&f.state, 4).await;
        assert_eq!(
            f.state.tap_pool.idle(),
            ["bgrp0", "bgrp1", "bgrp2", "bgrp3"]
        );
        for name in f.state.tap_pool.idle() {
            assert!(f.net.taps().contains(&name));
            assert!(f.net.calls().contains(&NetCall::CreateTap {
                name: name.clone(),
                bridge: "banger0".into(),
                owner_uid: Some(0),
            }));
        }

        // The next boot takes bgrp0 and makes no TAP or bridge itself.
        let before = f.net.calls().len();
        let db = f.create(request("db")).await.unwrap();
        assert_eq!(f.row("db").tap.as_deref(), Some("bgrp0"));
        assert_eq!(db.tap.as_deref(), Some("bgrp0"));
        let boot_calls: Vec<_> = f.net.calls()[before..].to_vec();
        // Only the refill (a bridge check, a listing, the new TAP) touched the network.
        let count = |op: NetOp| boot_calls.iter().filter(|c| c.op() == op).count();
        let boot_made: Vec<_> = boot_calls
            .iter()
            .filter(|c| matches!(c, NetCall::CreateTap { name, .. } if name != "bgrp4"))
            .collect();
        assert_eq!(
            count(NetOp::EnsureBridge),
            count(NetOp::ListLinks),
            "{boot_calls:?}"
        );
        assert!(
            boot_made.is_empty(),
            "the boot made network: {boot_calls:?}"
        );
        // Refilled with a fresh name.
        wait_idle(&f.state, 4).await;
        assert_eq!(
            f.state.tap_pool.idle(),
            ["bgrp1", "bgrp2", "bgrp3", "bgrp4"]
        );

        // A stop gives the TAP back to the host (deleted); the pool stays whole.
        banger_daemon::vms::stop(&f.state, &db.id).await.unwrap();
        assert!(!f.net.taps().contains(&"bgrp0".to_string()));
        let idle = f.state.tap_pool.idle();
        let mut host_taps: Vec<String> = f.net.taps();
        host_taps.retain(|t| is_pool_tap(t));
        assert_eq!(host_taps, idle, "idle pool TAPs are the only pool TAPs");
        keeper.abort();

        // A restarted daemon adopts the idle TAPs no row names, and makes none.
        let vmm = Arc::new(FakeVmm::new());
        let restarted = state_in(f.dir.path(), host(&vmm, &f.net, &f.runner), quick());
        banger_daemon::vms::note_bridge(&restarted).await;
        let calls = f.net.calls().len();
        let keeper = tokio::spawn(banger_daemon::vms::keep_tap_pool(restarted.clone()));
        wait_idle(&restarted, 4).await;
        assert_eq!(restarted.tap_pool.idle(), idle);
        assert!(
            !f.net.calls()[calls..]
                .iter()
                .any(|c| c.op() == NetOp::CreateTap),
            "{:?}",
            &f.net.calls()[calls..]
        );
        keeper.abort();
        banger_daemon::vms::delete(&f.state, &web.id).await.unwrap();
    }

    #[tokio::test]
    async fn a_pool_of_zero_makes_nothing() {
        let f = fixture(
            Config {
                tap_pool_size: 0,
                ..quick()
            },
            true,
        );
        let keeper = tokio::spawn(banger_daemon::vms::keep_tap_pool(f.state.clone()));
        f.create(request("web")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(keeper.is_finished());
        assert_eq!(f.net.taps().len(), 1);
        assert!(!f.net.taps().iter().any(|t| is_pool_tap(t)));
    }
}

/// The API's OpenAPI document: the one served is the one checked in, and its routes are the
/// router's.
mod openapi {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use banger_daemon::server::{api, openapi_json};

    use super::*;

    fn checked_in() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.json")
    }

    /// `GET /v1/openapi.json` answers `docs/api/openapi.json` byte for byte. With
    /// `BANGER_WRITE_OPENAPI=1` it writes the file instead (after changing a route or an API
    /// type).
    #[tokio::test]
    async fn the_served_document_is_the_checked_in_one() {
        let (sock, server, _dir) = limited_daemon(ServeLimits::default()).await;
        let out = raw_request(
            &sock,
            "GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        server.abort();
        let (head, served) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        assert_eq!(served, openapi_json().unwrap());
        let doc: serde_json::Value = serde_json::from_str(served).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");

        let path = checked_in();
        if std::env::var_os("BANGER_WRITE_OPENAPI").is_some_and(|v| v == "1") {
            std::fs::write(&path, served).unwrap();
        }
        let file = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            file == served,
            "docs/api/openapi.json is not the document the daemon serves; regenerate it with \
             `BANGER_WRITE_OPENAPI=1 cargo nextest run -p banger-daemon -E 'test(openapi::)'`"
        );
    }

    /// The path templates `banger_api::routes::templates` defines, read from its source so
    /// that a template added there is probed without listing it again.
    fn templates() -> Vec<String> {
        let src = include_str!("../../banger-api/src/routes.rs");
        let module = src
            .split_once("pub mod templates {")
            .and_then(|(_, rest)| rest.split_once("\n}"))
            .map(|(body, _)| body)
            .expect("routes.rs has a `templates` module");
        let found: Vec<String> = module
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter_map(|l| l.split_once("= \"")?.1.strip_suffix("\";"))
            .map(str::to_string)
            .collect();
        assert!(found.len() > 20, "{found:?}");
        found
    }

    const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

    /// `(method, path)` of every operation in `doc`.
    fn documented(doc: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(doc).unwrap();
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method.to_ascii_lowercase()).is_some() {
                    ops.insert((method.to_string(), path.clone()));
                }
            }
        }
        ops
    }

    /// `(method, path)` of every route the daemon's router mounts at the candidate `paths`,
    /// asked of a daemon on a temp state with the fake host (every request bodiless, so
    /// handlers with a body refuse it and the others only read or touch the temp home): a
    /// path nothing mounts gets the fallback's "no such API route", a method the path does
    /// not have 405, a mounted route anything else.
    async fn mounted(paths: &BTreeSet<String>) -> BTreeSet<(String, String)> {
        let (sock, server, _dir) = limited_daemon(ServeLimits::default()).await;
        let mut found = BTreeSet::new();
        for path in paths {
            // Every `{param}` filled with a value.
            let asked: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            for method in METHODS {
                let out = raw_request(
                    &sock,
                    &format!(
                        "{method} {asked} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\
                         connection: close\r\n\r\n"
                    ),
                )
                .await;
                let unmounted =
                    out.starts_with("HTTP/1.1 405") || out.contains("no such API route");
                if !unmounted {
                    found.insert((method.to_string(), path.clone()));
                }
            }
        }
        server.abort();
        found
    }

    /// Every route the router mounts is in the document and every operation in the document
    /// is mounted: the routes are probed at every path the document or the templates name.
    #[tokio::test]
    async fn every_mounted_route_is_documented() {
        let documented = documented(&api().1);
        let mut paths: BTreeSet<String> = documented.iter().map(|(_, p)| p.clone()).collect();
        paths.extend(
            templates()
                .iter()
                .map(|t| format!("{}{t}", banger_api::API_PREFIX)),
        );
        let mounted = mounted(&paths).await;
        let undocumented: Vec<_> = mounted.difference(&documented).collect();
        let unmounted: Vec<_> = documented.difference(&mounted).collect();
        assert!(
            undocumented.is_empty() && unmounted.is_empty(),
            "mounted without a document entry: {undocumented:?}; documented but not \
             mounted: {unmounted:?} (mount with `.routes(routes!(handler))` in server::api, \
             the handler annotated with #[utoipa::path])"
        );
        assert!(mounted.len() >= 28, "{mounted:?}");
    }

    /// `server::api` mounts only through `routes!`: a plain `.route()`, `.merge()` or
    /// `.nest_service()` there would mount a path the probe above does not know.
    #[test]
    fn the_router_is_built_only_from_annotated_handlers() {
        let src = include_str!("../src/server.rs");
        let body = src
            .split_once("pub fn api()")
            .and_then(|(_, rest)| rest.split_once("\n}\n"))
            .map(|(body, _)| body)
            .expect("server.rs has `pub fn api()`");
        for call in [".route(", ".route_service(", ".merge(", ".nest_service("] {
            assert!(
                !body.contains(call),
                "server::api calls {call}...): mount routes with .routes(routes!(handler))"
            );
        }
        assert!(body.contains(".routes(routes!("));
    }
}

/// The web UI over the fakes: a create started from its form is a job the page's Cancel
/// button cancels, and the create rolls back as for a client that went away.
mod web_ui {
    use banger_daemon::web::resources::SystemHost;
    use banger_daemon::web::{Web, WebParts, handlers};
    use tokio::net::{TcpListener, TcpStream};

    use super::vm_fixture::*;
    use super::*;

    /// Sends one request with the session cookie, `Origin` and `Host` of the UI at `addr`.
    async fn send(
        addr: std::net::SocketAddr,
        web: &Web,
        method: &str,
        path: &str,
        form: &str,
    ) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\norigin: http://{addr}\r\ncookie: banger_session={}\r\n\
             connection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
            web.guard.token(),
            form.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s
    }

    async fn answer(mut s: TcpStream) -> String {
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads `s` until it has shown `needle` (30 s at most).
    async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str) {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.contains(needle) {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended before {needle:?}: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?}: {seen}"));
    }

    #[tokio::test]
    async fn the_cancel_button_cancels_a_create_and_it_rolls_back() {
        // A guest that never answers: the create waits for its agent until cancelled.
        let f = fixture(Config::default(), false);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parts = WebParts {
            host: Arc::new(SystemHost),
            doctor: None,
        };
        let web = Arc::new(Web::new(f.state.clone(), parts, addr));
        let server = tokio::spawn(serve_router_with(
            listener,
            handlers::router(web.clone()),
            std::future::pending::<()>(),
            ServeLimits::default(),
        ));
        let csrf = web.guard.csrf().to_string();
        let form = format!("csrf={csrf}&name=web&image={IMAGE}&work_disk=8M");
        let created = answer(send(addr, &web, "POST", "/vms", &form).await).await;
        assert!(created.starts_with("HTTP/1.1 303"), "{created}");
        let job = created
            .lines()
            .find_map(|l| l.strip_prefix("location: /ops/"))
            .expect("a redirect to the job's page")
            .trim()
            .to_string();
        let mut events = send(addr, &web, "GET", &format!("/ops/{job}/events"), "").await;
        let mut seen = String::new();
        read_until(&mut events, &mut seen, "\"stage\":\"wait agent\"").await;
        assert!(
            seen.contains("event: stage") && seen.contains("resolve image"),
            "{seen}"
        );
        assert_eq!(f.rows().len(), 1, "the VM exists while it is created");

        let cancelled = answer(
            send(
                addr,
                &web,
                "POST",
                &format!("/ops/{job}/cancel"),
                &format!("csrf={csrf}"),
            )
            .await,
        )
        .await;
        assert!(cancelled.starts_with("HTTP/1.1 303"), "{cancelled}");
        read_until(&mut events, &mut seen, "event: done").await;
        read_until(&mut events, &mut seen, "cancelled").await;
        assert!(seen.contains(&format!("\"op_id\":\"{job}\"")), "{seen}");
        f.assert_no_vm_left();
        let page = answer(send(addr, &web, "GET", &format!("/ops/{job}"), "").await).await;
        assert!(
            page.contains("cancelled") && !page.contains("id=\"cancel\""),
            "{page}"
        );
        server.abort();
    }
}

/// Catalog pulls: auto-pull in create, and what a broken catalog, download, bundle or kernel
/// tarball leaves (nothing). Catalogs and files are served by a loopback HTTP server.
mod catalog_pull {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Mutex;

    use banger_api::types::CreateVm;
    use banger_core::size::ByteSize;
    use banger_daemon::error::OpError;
    use banger_daemon::progress::Progress;
    use sha2::{Digest, Sha256};
    use tokio_util::sync::CancellationToken;

    use super::vm_fixture::*;
    use super::*;

    /// A loopback HTTP server answering each path with canned bytes (404 otherwise), one
    /// request per connection.
    pub struct Web {
        base: String,
        answers: Arc<Mutex<HashMap<String, Vec<u8>>>>,
        /// Paths whose connection stays open after the answer (a stalled server).
        stalled: Arc<Mutex<Vec<String>>>,
    }

    impl Web {
        pub async fn start() -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let answers: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
            let stalled: Arc<Mutex<Vec<String>>> = Arc::default();
            let (a, st) = (answers.clone(), stalled.clone());
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    let (a, st) = (a.clone(), st.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 8192];
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        let head = String::from_utf8_lossy(&buf[..n]).to_string();
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let answer = a.lock().unwrap().get(&path).cloned().unwrap_or_else(|| {
                            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                .to_vec()
                        });
                        let _ = sock.write_all(&answer).await;
                        if st.lock().unwrap().contains(&path) {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        let _ = sock.shutdown().await;
                    });
                }
            });
            Self {
                base,
                answers,
                stalled,
            }
        }

        /// After its answer, `path`'s connection stays open for 30 s.
        pub fn stall(&self, path: &str) {
            self.stalled.lock().unwrap().push(path.to_string());
        }

        pub fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        pub fn put(&self, path: &str, answer: Vec<u8>) {
            self.answers
                .lock()
                .unwrap()
                .insert(path.to_string(), answer);
        }
    }

    pub fn ok(body: &[u8]) -> Vec<u8> {
        let mut a = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        a.extend_from_slice(body);
        a
    }

    pub fn sha(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    }

    /// A bundle of an empty 8 MiB ext4 named `name`, booting `kernel_ref`.
    pub fn bundle(work: &Path, name: &str, kernel_ref: &str) -> Vec<u8> {
        let rootfs = work.join(format!("{name}.ext4"));
        make_ext4(&rootfs);
        let manifest = banger_image::bundle::Manifest {
            name: name.into(),
            distro: "test".into(),
            arch: "x86_64".into(),
            kernel_ref: kernel_ref.into(),
            description: "a test image".into(),
            init: banger_core::guest_init::GuestInit::Systemd,
        };
        let out = work.join("bundles");
        let info =
            banger_image::bundle::pack_bundle(manifest, &rootfs, &out, work, &mut |_| {}).unwrap();
        std::fs::read(info.path).unwrap()
    }

    /// A tar (zstd when `zst`) of `(path, entry type, data or link target)` members, names
    /// written raw so that `..` and absolute paths get in.
    pub fn tarball(members: &[(&str, tar::EntryType, &[u8])], zst: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in members {
            let mut h = tar::Header::new_gnu();
            let name = &mut h.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(*kind);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            if *kind == tar::EntryType::Symlink {
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
        let tar = b.into_inner().unwrap();
        if zst {
            zstd::encode_all(&tar[..], 3).unwrap()
        } else {
            tar
        }
    }

    pub const KERNEL: &[u8] = b"\x7fELF tiny pulled kernel";

    pub fn kernel_tar() -> Vec<u8> {
        use tar::EntryType as T;
        tarball(
            &[
                ("boot/", T::Directory, b""),
                ("boot/vmlinux-6.1.7", T::Regular, KERNEL),
            ],
            false,
        )
    }

    /// A catalog listing `image` (booting `k1`) and kernel `k1`, their files relative.
    pub fn catalog(image: &str, bundle: &[u8], kernel: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "version": 1,
            "images": [{"name": image, "arch": "x86_64", "url": format!("{image}.tar.zst"),
                        "sha256": sha(bundle), "size": bundle.len(), "description": "team image",
                        "kernel_ref": "k1"}],
            "kernels": [{"name": "k1", "arch": "x86_64", "url": "k1.tar",
                         "sha256": sha(kernel), "size": kernel.len(), "description": "a kernel"}],
        }))
        .unwrap()
    }

    fn config(web: &Web) -> Config {
        Config {
            catalogs: vec![web.url("/team/catalog.json")],
            ..quick()
        }
    }

    fn on(image: &str) -> CreateVm {
        CreateVm {
            image: Some(image.to_string()),
            ..request("pulled")
        }
    }

    /// Nothing of a pull is left: no image but the fixture's, no kernel, no file in the
    /// state's images, kernels and scratch dirs.
    fn assert_nothing_pulled(f: &Fixture, case: &str) {
        let names: Vec<String> = f
            .state
            .db(|s| s.list_images())
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, vec![IMAGE.to_string()], "{case}: image rows");
        assert!(
            f.state.db(|s| s.list_kernels()).unwrap().is_empty(),
            "{case}: kernel rows"
        );
        let state_dir = &f.state.opts.layout.state_dir;
        for sub in ["images", "kernels", "tmp"] {
            let left: Vec<_> = std::fs::read_dir(state_dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "{case}: left in {sub}: {left:?}");
        }
        f.assert_no_vm_left();
    }

    #[tokio::test]
    async fn create_pulls_a_missing_image_and_its_kernel_from_the_catalogs() {
        let web = Web::start().await;
        let mut f = fixture(config(&web), false);
        f.start_agents();
        let bundle = bundle(f.dir.path(), "team-img", "k1");
        let kernel = kernel_tar();
        web.put(
            "/team/catalog.json",
            ok(&catalog("team-img", &bundle, &kernel)),
        );
        web.put("/team/team-img.tar.zst", ok(&bundle));
        web.put("/team/k1.tar", ok(&kernel));

        let (task, mut stages) = f.spawn_create(on("team-img"), CancellationToken::new());
        let vm = task.await.unwrap().unwrap();
        let mut seen = Vec::new();
        while let Ok(s) = stages.try_recv() {
            seen.push(s.stage);
        }
        for want in [
            "resolve image",
            "pulling from catalog",
            "pull image",
            "pull kernel",
            "register",
        ] {
            assert!(
                seen.iter().any(|s| s == want),
                "no {want:?} stage in {seen:?}"
            );
        }
        let image = f.state.find_image("team-img").unwrap();
        assert_eq!(vm.image, image.name);
        assert_eq!(image.kernel_ref.as_deref(), Some("k1"));
        let k = f.state.find_kernel("k1").unwrap();
        assert_eq!(k.source, format!("pull:{}", web.url("/team/k1.tar")));
        assert_eq!(k.sha256, sha(KERNEL), "vmlinux hashed after extraction");
        assert_eq!(std::fs::read(k.vmlinux.unwrap()).unwrap(), KERNEL);
        let left: Vec<_> = std::fs::read_dir(f.state.scratch_dir()).unwrap().collect();
        assert!(left.is_empty(), "the downloads were not removed: {left:?}");

        // The catalog lists both, now pulled.
        let listing = banger_daemon::catalogs::listing(&f.state).await.unwrap();
        assert_eq!(
            listing.images[0].state,
            banger_api::types::CatalogState::Pulled
        );
        assert_eq!(
            listing.kernels[0].state,
            banger_api::types::CatalogState::Pulled
        );
        assert_eq!(listing.images[0].size, bundle.len() as u64);
    }

    #[tokio::test]
    async fn an_image_in_no_catalog_is_still_not_found() {
        let web = Web::start().await;
        let f = fixture(config(&web), true);
        web.put("/team/catalog.json", ok(br#"{"version":1}"#));
        let err = f.create(on("nope")).await.unwrap_err();
        assert!(matches!(&err, OpError::ImageNotFound { .. }), "{err:?}");
        assert_nothing_pulled(&f, "not listed");
    }

    #[tokio::test]
    async fn kernel_pull_takes_a_free_name_and_replaces_only_with_force() {
        use banger_api::types::PullKernel;
        use banger_daemon::catalogs::pull_kernel_named;
        let web = Web::start().await;
        let f = fixture(config(&web), false);
        let kernel = kernel_tar();
        web.put("/team/catalog.json", ok(&catalog("x", b"unused", &kernel)));
        web.put("/team/k1.tar", ok(&kernel));
        let pull = |name: &str, force| {
            pull_kernel_named(
                f.state.clone(),
                PullKernel {
                    name: name.into(),
                    force,
                },
                Progress::new(None),
                CancellationToken::new(),
            )
        };
        let k = pull("k1", false).await.unwrap();
        assert_eq!(
            (k.version.as_str(), k.sha256.clone()),
            ("6.1.7", sha(KERNEL))
        );
        assert_eq!(k.source, format!("pull:{}", web.url("/team/k1.tar")));
        let err = pull("k1", false).await.unwrap_err();
        assert!(matches!(&err, OpError::KernelNameTaken { .. }), "{err:?}");
        pull("k1", true).await.unwrap();
        let err = pull("k2", false).await.unwrap_err();
        assert!(
            matches!(&err, OpError::NotInCatalog { kind: "kernel", .. }),
            "{err:?}"
        );
        assert_eq!(f.state.db(|s| s.list_kernels()).unwrap().len(), 1);
        let left: Vec<_> = std::fs::read_dir(f.state.scratch_dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn an_exported_image_is_pulled_back_from_its_catalog_file() {
        use banger_api::types::ExportImage;
        use banger_daemon::catalogs::export_image;
        let web = Web::start().await;
        let mut f = fixture(config(&web), false);
        f.start_agents();
        let bundle = bundle(f.dir.path(), "team-img", "k1");
        let kernel = kernel_tar();
        web.put(
            "/team/catalog.json",
            ok(&catalog("team-img", &bundle, &kernel)),
        );
        web.put("/team/team-img.tar.zst", ok(&bundle));
        web.put("/team/k1.tar", ok(&kernel));
        f.create(on("team-img")).await.unwrap();

        let export = |reference: &'static str, out: &Path| {
            export_image(
                f.state.clone(),
                reference,
                ExportImage {
                    out: out.to_path_buf(),
                },
                Progress::new(None),
            )
        };
        let err = export(IMAGE, &f.dir.path().join("x")).await.unwrap_err();
        assert!(
            matches!(&err, OpError::ExportNeedsKernelRef { .. }),
            "{err:?}"
        );
        let err = export("team-img", Path::new("relative")).await.unwrap_err();
        assert!(matches!(&err, OpError::InputNotAbsolute { .. }), "{err:?}");
        let out = f.dir.path().join("served");
        let done = export("team-img", &out).await.unwrap();
        let bytes = std::fs::read(&done.bundle).unwrap();
        assert_eq!(
            (done.sha256.clone(), done.size),
            (sha(&bytes), bytes.len() as u64)
        );
        let doc = banger_catalog::Catalog::parse("export", &std::fs::read(&done.catalog).unwrap())
            .unwrap();
        assert_eq!(doc.images[0].url, "team-img.tar.zst");
        assert_eq!(doc.images[0].kernel_ref, "k1");

        // Another daemon takes it from the file catalog; its kernel from the web one.
        let other = fixture(
            Config {
                catalogs: vec![
                    done.catalog.display().to_string(),
                    web.url("/team/catalog.json"),
                ],
                ..quick()
            },
            true,
        );
        other.create(on("team-img")).await.unwrap();
        let image = other.state.find_image("team-img").unwrap();
        assert_eq!(image.kernel_ref.as_deref(), Some("k1"));
    }

    #[tokio::test]
    async fn a_create_cancelled_during_the_download_leaves_nothing() {
        let web = Web::start().await;
        let f = fixture(config(&web), true);
        let bundle = bundle(f.dir.path(), "team-img", "k1");
        let kernel = kernel_tar();
        web.put(
            "/team/catalog.json",
            ok(&catalog("team-img", &bundle, &kernel)),
        );
        let mut half = ok(&bundle);
        half.truncate(half.len() - bundle.len() / 2);
        web.put("/team/team-img.tar.zst", half);
        web.stall("/team/team-img.tar.zst");
        let cancel = CancellationToken::new();
        let (task, _stages) = f.spawn_create(on("team-img"), cancel.clone());
        let scratch = f.state.scratch_dir();
        let downloading = || {
            std::fs::read_dir(&scratch)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".fetch-"))
        };
        for _ in 0..500 {
            if downloading() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(downloading(), "the download never started");
        cancel.cancel();
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(&err, OpError::Cancelled), "{err:?}");
        assert_nothing_pulled(&f, "cancelled");
    }

    #[tokio::test]
    async fn a_named_pull_takes_the_overrides_and_refuses_what_no_catalog_lists() {
        use banger_daemon::catalogs::{PullImage, pull_image_named};
        let web = Web::start().await;
        let f = fixture(config(&web), false);
        let bundle = bundle(f.dir.path(), "team-img", "k1");
        let kernel = kernel_tar();
        web.put(
            "/team/catalog.json",
            ok(&catalog("team-img", &bundle, &kernel)),
        );
        web.put("/team/team-img.tar.zst", ok(&bundle));
        web.put("/team/k1.tar", ok(&kernel));
        let pull = |name: &'static str, opts: PullImage| {
            pull_image_named(
                f.state.clone(),
                name,
                opts,
                Progress::new(None),
                CancellationToken::new(),
            )
        };
        let err = pull("nope", PullImage::default()).await.unwrap_err();
        assert!(
            matches!(&err, OpError::NotInCatalog { kind: "image", .. }),
            "{err:?}"
        );
        // --kernel-ref wins over the manifest's: a kernel no catalog has is refused.
        let err = pull(
            "team-img",
            PullImage {
                name: None,
                kernel_ref: Some("k9".into()),
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, OpError::BundleKernelMissing { kernel } if kernel == "k9"),
            "{err:?}"
        );
        assert_nothing_pulled(&f, "kernel k9");
        let image = pull(
            "team-img",
            PullImage {
                name: Some("mine".into()),
                kernel_ref: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (image.name.as_str(), image.kernel_ref.as_deref()),
            ("mine", Some("k1"))
        );
        let err = pull(
            "team-img",
            PullImage {
                name: Some("mine".into()),
                kernel_ref: None,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(&err, OpError::ImageNameTaken { .. }), "{err:?}");
    }

    /// A broken pull: its name, the catalog, the bundle's and the kernel's answers, config
    /// `max_image_size`, and words the error must have.
    type Case<'a> = (
        &'a str,
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
        Option<ByteSize>,
        &'a str,
    );

    /// Every way a pull breaks: the error names what was wrong, and nothing is left.
    #[tokio::test]
    async fn a_broken_pull_fails_the_create_naming_why_and_leaves_nothing() {
        use tar::EntryType as T;
        let web = Web::start().await;
        let work = tempfile::tempdir().unwrap();
        let good = bundle(work.path(), "team-img", "k1");
        let kernel = kernel_tar();
        let mut tampered = good.clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 0xff;
        let manifest = br#"{"name":"team-img","distro":"t","arch":"x86_64","kernel_ref":"k1","description":""}"#;
        let extra = tarball(
            &[
                ("manifest.json", T::Regular, manifest),
                ("rootfs.ext4", T::Regular, &[0u8; 4096]),
                ("../evil", T::Regular, b"x"),
            ],
            true,
        );
        let dotdot = tarball(&[("../vmlinux-6.1.7", T::Regular, KERNEL)], false);
        let absolute = tarball(&[("/boot/vmlinux-6.1.7", T::Regular, KERNEL)], false);
        let through_symlink = tarball(
            &[
                ("boot", T::Symlink, b"/tmp"),
                ("boot/vmlinux-6.1.7", T::Regular, KERNEL),
            ],
            false,
        );
        let zeros = vec![0u8; 5 << 20];
        let kernel_bomb = tarball(
            &[
                ("boot/vmlinux-6.1.7", T::Regular, KERNEL),
                ("boot/padding", T::Regular, &zeros),
            ],
            true,
        );
        let half = |b: &[u8]| {
            let mut a = ok(b);
            a.truncate(a.len() - b.len() / 2);
            a
        };
        let server_error =
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_vec();
        // (case, catalog, bundle answer, kernel answer, max_image_size, expected words)
        let doc = |b: &[u8]| catalog("team-img", b, &kernel);
        let kdoc = |k: &[u8]| catalog("team-img", &good, k);
        let mut lying = serde_json::from_slice::<serde_json::Value>(&doc(&good)).unwrap();
        lying["images"][0]["size"] = serde_json::json!(good.len() + 100);
        let lying = serde_json::to_vec(&lying).unwrap();
        let cases: Vec<Case<'_>> = vec![
            (
                "bundle sha256 mismatch",
                doc(&good),
                ok(&tampered),
                ok(&kernel),
                None,
                "sha256 mismatch",
            ),
            (
                "declared size lies",
                lying,
                ok(&good),
                ok(&kernel),
                None,
                "the catalog declares",
            ),
            (
                "HTTP 500",
                doc(&good),
                server_error.clone(),
                ok(&kernel),
                None,
                "HTTP status 500",
            ),
            (
                "closed mid-body",
                doc(&good),
                half(&good),
                ok(&kernel),
                None,
                "connection failed after",
            ),
            (
                "decompression bomb",
                doc(&good),
                ok(&good),
                ok(&kernel),
                Some(ByteSize::mib(4)),
                "more than the limit of 4194304",
            ),
            (
                "bundle with an unsafe member",
                doc(&extra),
                ok(&extra),
                ok(&kernel),
                None,
                "\"../evil\"",
            ),
            (
                "kernel tarball 500",
                kdoc(&kernel),
                ok(&good),
                server_error,
                None,
                "HTTP status 500",
            ),
            (
                "kernel tarball with ..",
                kdoc(&dotdot),
                ok(&good),
                ok(&dotdot),
                None,
                "../vmlinux-6.1.7",
            ),
            (
                "kernel tarball with an absolute member",
                kdoc(&absolute),
                ok(&good),
                ok(&absolute),
                None,
                "absolute path",
            ),
            (
                "kernel tarball writing through a symlink",
                kdoc(&through_symlink),
                ok(&good),
                ok(&through_symlink),
                None,
                "boot/vmlinux-6.1.7",
            ),
            (
                "kernel tarball decompression bomb",
                kdoc(&kernel_bomb),
                ok(&good),
                ok(&kernel_bomb),
                Some(ByteSize::mib(4)),
                "unpacks to more than 4194304 bytes",
            ),
            (
                "malformed catalog",
                b"{\"version\": 1, \"images\": [".to_vec(),
                ok(&good),
                ok(&kernel),
                None,
                "EOF while parsing",
            ),
            (
                "catalog of an unknown version",
                br#"{"version":7,"images":[]}"#.to_vec(),
                ok(&good),
                ok(&kernel),
                None,
                "version 7 is not supported",
            ),
        ];
        for (case, catalog, bundle_answer, kernel_answer, max, want) in cases {
            let mut config = config(&web);
            if let Some(max) = max {
                config.max_image_size = max;
            }
            let f = fixture(config, true);
            web.put("/team/catalog.json", ok(&catalog));
            web.put("/team/team-img.tar.zst", bundle_answer);
            web.put("/team/k1.tar", kernel_answer);
            let err = f.create(on("team-img")).await.unwrap_err();
            let msg = banger_core::error::chain(&err);
            assert!(msg.contains(want), "{case}: {msg}");
            assert_nothing_pulled(&f, case);
        }
    }
}
