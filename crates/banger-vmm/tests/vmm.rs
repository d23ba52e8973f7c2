//! The Firecracker backend against `banger-fake-firecracker` (which runs a host-mode
//! `banger-agent` behind its hybrid vsock): the exact API sequence of a boot, the agent
//! reached through hybrid vsock, re-finding a live VMM, graceful and forced ends, failed
//! starts that leave nothing behind, and snapshots (a template saved, a VM restored from it
//! on its own disks with only `PUT /snapshot/load`), every request validated by the fake
//! against `firecracker.yaml`.
//!
//! The binaries are not built by `cargo test -p banger-vmm`; build them first with
//! `cargo build -p banger-fake-firecracker -p banger-agent` (or `cargo build --workspace`).
//! Without them every test here says so and passes without running.
//!
//! The QEMU backend's tests, against the real QEMU, are in [`qemu`].

mod qemu;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_agent_proto::client::{connect_hybrid_vsock, health};
use banger_vmm::firecracker::api::{ApiClient, InstanceState};
use banger_vmm::firecracker::{self, FirecrackerVmm, Timeouts};
use banger_vmm::process::{self, Signal, StopOutcome};
use banger_vmm::{
    AgentEndpoint, Disk, KernelFiles, Restore, Running, SnapshotFiles, StartMode, VmSpec, Vmm,
    VmmError,
};
use serde_json::{Value, json};

use banger_core::error::chain;

/// The test binaries' directory: `target/debug`, parent of `deps` where this test runs.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("target dir").to_path_buf()
}

struct Bins {
    fake: PathBuf,
    agent: PathBuf,
}

#[allow(clippy::print_stderr, reason = "a skipped test says why")]
fn bins() -> Option<Bins> {
    let dir = target_dir();
    let bins = Bins {
        fake: dir.join("banger-fake-firecracker"),
        agent: dir.join("banger-agent"),
    };
    if bins.fake.is_file() && bins.agent.is_file() {
        Some(bins)
    } else {
        eprintln!("skipped: fake firecracker not built (cargo build --workspace)");
        None
    }
}

/// One VM's files in a private directory, short enough for socket paths.
struct Vm {
    dir: tempfile::TempDir,
    spec: VmSpec,
    requests: PathBuf,
}

fn vm(vm_id: &str, cid: u32) -> Vm {
    let dir = tempfile::Builder::new()
        .prefix("bv")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF a kernel").unwrap();
    let root_disk = dir.path().join("root.ext4");
    let work_disk = dir.path().join("work.ext4");
    std::fs::write(&root_disk, vec![0u8; 4096]).unwrap();
    std::fs::write(&work_disk, vec![0u8; 4096]).unwrap();
    let spec = VmSpec {
        vm_id: vm_id.to_string(),
        vcpus: 2,
        memory_mib: 512,
        kernel: KernelFiles::formats(Some(kernel), None),
        boot_args: "console=ttyS0 reboot=k panic=1".to_string(),
        root_disk,
        work_disk,
        tap: format!("bgtap{cid}"),
        mac: format!("06:00:AC:1E:00:{cid:02X}"),
        vsock_cid: cid,
        run_dir: dir.path().join("run"),
        console_log: dir.path().join("console.log"),
        vmm_log: dir.path().join("vmm.log"),
    };
    let requests = dir.path().join("requests.jsonl");
    Vm {
        dir,
        spec,
        requests,
    }
}

fn backend(bins: &Bins, vm: &Vm) -> FirecrackerVmm {
    FirecrackerVmm::new(&bins.fake)
        .with_env("BANGER_FAKE_FC_LOG", &vm.requests)
        .with_env("BANGER_AGENT_BIN", &bins.agent)
}

fn request_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn api_socket(spec: &VmSpec) -> PathBuf {
    firecracker::api_socket(&spec.run_dir)
}

/// Asks the agent for `/healthz` through hybrid vsock, retrying while it comes up.
async fn agent_health(run: &Running) -> banger_agent_proto::wire::Health {
    let AgentEndpoint::HybridVsock { uds, port } = &run.agent else {
        panic!(
            "Firecracker's agent is behind hybrid vsock: {:?}",
            run.agent
        );
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let stream = connect_hybrid_vsock(uds, *port).await?;
            health(stream, Duration::from_secs(2)).await
        };
        match attempt.await {
            Ok(health) => return health,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("agent never answered: {e}"),
        }
    }
}

/// Waits until no process has `socket` on its command line.
async fn no_process_with(socket: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process::pids_with_arg(socket.as_os_str()).is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// A pid that certainly belongs to no live process: a child that exited and was reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait true");
    pid
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn boots_with_the_exact_api_sequence_and_stops_gracefully() {
    let Some(bins) = bins() else { return };
    let vm = vm("0123456789abcdef", 5);
    let vmm = backend(&bins, &vm);
    let spec = &vm.spec;

    let run = vmm.start(spec).await.expect("start");
    assert!(process::alive(run.pid));
    assert_eq!(run.vm_id, spec.vm_id);
    assert_eq!(run.api_socket, spec.run_dir.join("api.sock"));
    assert_eq!(
        process::pids_with_arg(run.api_socket.as_os_str()),
        vec![run.pid]
    );

    // Readiness probes (GET /), then exactly the boot sequence.
    let log = request_log(&vm.requests);
    let probes = log
        .iter()
        .take_while(|r| r["method"] == "GET")
        .inspect(|r| assert_eq!(**r, json!({"method": "GET", "path": "/", "body": null})))
        .count();
    assert!(probes >= 1, "{log:#?}");
    // Drives are named relative to the VMM's working directory, the VM's own directory.
    let (root, work) = ("root.ext4", "work.ext4");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", run.pid)).unwrap(),
        vm.dir.path()
    );
    let expected = [
        json!({"method": "PUT", "path": "/machine-config", "body": {"vcpu_count": 2, "mem_size_mib": 512}}),
        json!({"method": "PUT", "path": "/boot-source", "body": {
            "kernel_image_path": vm.dir.path().join("vmlinux").to_str().unwrap(),
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}}),
        json!({"method": "PUT", "path": "/drives/root", "body": {
            "drive_id": "root", "path_on_host": root, "is_root_device": true, "is_read_only": false}}),
        json!({"method": "PUT", "path": "/drives/work", "body": {
            "drive_id": "work", "path_on_host": work, "is_root_device": false, "is_read_only": false}}),
        json!({"method": "PUT", "path": "/network-interfaces/eth0", "body": {
            "iface_id": "eth0", "host_dev_name": "bgtap5", "guest_mac": "06:00:AC:1E:00:05"}}),
        json!({"method": "PUT", "path": "/vsock", "body": {
            "guest_cid": 5, "uds_path": spec.run_dir.join("vsock.sock").to_str().unwrap()}}),
        json!({"method": "PUT", "path": "/actions", "body": {"action_type": "InstanceStart"}}),
    ];
    assert_eq!(log[probes..], expected[..], "{log:#?}");

    let info = ApiClient::new(&run.api_socket)
        .describe()
        .await
        .expect("GET /");
    assert_eq!(info.state, InstanceState::Running);
    assert_eq!(info.id, spec.vm_id);

    let health = agent_health(&run).await;
    assert!(!health.version.is_empty());
    let console = std::fs::read_to_string(&spec.console_log).unwrap();
    assert!(
        !console.is_empty(),
        "the serial console went to the console log"
    );

    // Re-found by its socket, whatever pid was stored.
    let stale = Running {
        pid: dead_pid(),
        ..run.clone()
    };
    assert!(!process::alive(stale.pid));
    let found = vmm.find_live(spec).await.expect("found by its socket");
    assert_eq!(found, run);

    // A second start of a live VM is refused and leaves it alone.
    let err = vmm.start(spec).await.expect_err("already running");
    assert!(
        matches!(&err, VmmError::AlreadyRunning { pid: Some(p), .. } if *p == run.pid),
        "{err}"
    );
    assert!(process::alive(run.pid));

    let outcome = process::stop(&vmm, &found, Duration::from_secs(5))
        .await
        .expect("stop");
    assert_eq!(outcome, StopOutcome::Graceful);
    assert!(!process::alive(run.pid));
    assert_eq!(
        request_log(&vm.requests).last(),
        Some(
            &json!({"method": "PUT", "path": "/actions", "body": {"action_type": "SendCtrlAltDel"}})
        )
    );
    assert_eq!(vmm.find_live(spec).await, None);
    process::cleanup_sockets(&spec.run_dir).expect("cleanup");
    assert!(!api_socket(spec).exists());
    drop(vm.dir);
}

#[tokio::test]
async fn a_killed_vmm_is_dead_and_its_stale_sockets_do_not_block_a_restart() {
    let Some(bins) = bins() else { return };
    let vm = vm("fedcba9876543210", 6);
    let vmm = backend(&bins, &vm);
    let spec = &vm.spec;

    let run = vmm.start(spec).await.expect("start");
    process::signal(run.pid, "KILL".parse::<Signal>().unwrap()).expect("SIGKILL");
    assert!(process::wait_exit(run.pid, Duration::from_secs(5)).await);
    assert!(!process::alive(run.pid));
    // SIGKILL leaves the socket files behind, but nothing answers there.
    assert!(api_socket(spec).exists());
    assert_eq!(vmm.find_live(spec).await, None);

    // Stopping a dead VMM neither hangs nor fails.
    let outcome = process::stop(&vmm, &run, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::NotRunning);

    let again = vmm.start(spec).await.expect("restart over stale sockets");
    assert_ne!(again.pid, run.pid);
    agent_health(&again).await;
    let outcome = process::stop(&vmm, &again, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome, StopOutcome::Graceful);
}

#[tokio::test]
async fn a_refused_configuration_fails_with_the_fault_and_leaves_nothing() {
    let Some(bins) = bins() else { return };
    let mut vm = vm("00000000000000aa", 7);
    vm.spec.kernel = KernelFiles::formats(Some(vm.dir.path().join("no-such-vmlinux")), None);
    let vmm = backend(&bins, &vm);
    let spec = &vm.spec;

    let err = vmm.start(spec).await.expect_err("missing kernel");
    let text = chain(&err);
    match &err {
        VmmError::Api { source, .. } => {
            let fault = source.fault_message().expect("a fault message");
            assert!(fault.contains("kernel file cannot be opened"), "{fault}");
            assert!(text.contains(fault), "{text}");
        }
        other => panic!("expected an API error, got {other}"),
    }
    assert!(text.contains("PUT /boot-source"), "{text}");
    assert!(text.contains(&spec.vm_id), "{text}");
    assert!(
        no_process_with(&api_socket(spec)).await,
        "the VMM was killed"
    );
    assert!(!api_socket(spec).exists(), "the API socket was removed");
    assert_eq!(vmm.find_live(spec).await, None);
}

#[tokio::test]
async fn a_binary_that_exits_at_once_is_reported() {
    let vm = vm("00000000000000bb", 8);
    let spec = &vm.spec;

    let vmm = FirecrackerVmm::new("/bin/false");
    let err = vmm.start(spec).await.expect_err("false exits");
    assert!(
        matches!(&err, VmmError::ExitedDuringStart { status, .. } if status == "exit status: 1"),
        "{err}"
    );
    assert!(chain(&err).contains("/bin/false"), "{err}");
    assert!(!api_socket(spec).exists());

    // What the VMM printed before dying is in the error.
    // Only what this start wrote is quoted, not an earlier boot's lines.
    std::fs::write(&spec.vmm_log, "an earlier boot's last words\n").unwrap();
    let loud = script(
        vm.dir.path(),
        "loud-vmm",
        "echo 'Error: cannot open /dev/kvm: Permission denied' >&2\nexit 3",
    );
    let err = FirecrackerVmm::new(&loud)
        .start(spec)
        .await
        .expect_err("exits 3");
    let text = chain(&err);
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(
        text.contains("cannot open /dev/kvm: Permission denied"),
        "{text}"
    );
    assert!(text.contains("vmm.log"), "{text}");
    assert!(!text.contains("earlier boot"), "{text}");

    let err = FirecrackerVmm::new(vm.dir.path().join("missing-vmm"))
        .start(spec)
        .await
        .expect_err("no binary");
    assert!(matches!(err, VmmError::Spawn { .. }), "{err}");
    assert!(chain(&err).contains("missing-vmm"), "{err}");
}

#[tokio::test]
async fn a_silent_vmm_is_killed_on_timeout_and_on_cancellation() {
    let vm = vm("00000000000000cc", 9);
    let spec = &vm.spec;
    // Never answers; its command line keeps the socket path; sleep shares its process group.
    let silent = script(vm.dir.path(), "silent-vmm", "sleep 60; : \"$@\"");
    let vmm = FirecrackerVmm::new(&silent).with_timeouts(Timeouts {
        ready: Duration::from_millis(300),
        ..Timeouts::default()
    });

    let err = vmm.start(spec).await.expect_err("never ready");
    assert!(matches!(err, VmmError::NotReady { .. }), "{err}");
    assert!(err.to_string().contains("api.sock"), "{err}");
    assert!(no_process_with(&api_socket(spec)).await);

    // A start abandoned by its caller (the future is dropped) kills the VMM as well.
    let patient = vmm.clone().with_timeouts(Timeouts::default());
    let socket = api_socket(spec);
    let mut start = patient.start(spec);
    let spawned = async {
        while process::pids_with_arg(socket.as_os_str()).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        result = &mut start => panic!("the silent VMM cannot start: {result:?}"),
        () = spawned => {}
    }
    drop(start);
    assert!(
        no_process_with(&socket).await,
        "the cancelled start was cleaned up"
    );
}

/// The requests that change something (all but `GET`s) in the request log at `path`.
fn changes(path: &Path) -> Vec<Value> {
    request_log(path)
        .into_iter()
        .filter(|r| r["method"] != "GET")
        .collect()
}

/// The state the VMM of `run` reports (`GET /`).
async fn state_of(run: &Running) -> InstanceState {
    ApiClient::new(&run.api_socket)
        .describe()
        .await
        .expect("GET /")
        .state
}

#[tokio::test]
async fn a_template_is_saved_and_a_vm_restored_from_it_loads_it_on_its_own_devices() {
    let Some(bins) = bins() else { return };
    let template = vm("00000000000000d1", 10);
    let vmm = backend(&bins, &template);
    assert!(vmm.snapshots());
    let files = SnapshotFiles::in_dir(template.dir.path());
    let mode = StartMode::BootTemplate {
        memory: files.memory.clone(),
    };
    let run = vmm
        .launch(&template.spec, &mode)
        .await
        .expect("template boot");
    agent_health(&run).await;
    vmm.pause(&run).await.expect("pause");
    assert_eq!(state_of(&run).await, InstanceState::Paused);
    vmm.resume(&run).await.expect("resume");
    vmm.snapshot(&run, &files).await.expect("snapshot");
    assert_eq!(
        state_of(&run).await,
        InstanceState::Paused,
        "a saved VM stays paused"
    );
    let log = changes(&template.requests);
    let tail: Vec<Value> = log[log.len() - 4..].to_vec();
    assert_eq!(
        tail,
        [
            json!({"method": "PATCH", "path": "/vm", "body": {"state": "Paused"}}),
            json!({"method": "PATCH", "path": "/vm", "body": {"state": "Resumed"}}),
            json!({"method": "PATCH", "path": "/vm", "body": {"state": "Paused"}}),
            json!({"method": "PUT", "path": "/snapshot/create", "body": {
                "snapshot_type": "Full",
                "snapshot_path": files.state.to_str().unwrap(),
                "mem_file_path": files.memory.to_str().unwrap()}}),
        ],
        "{log:#?}"
    );
    assert!(files.state.is_file() && files.memory.is_file());
    process::stop(&vmm, &run, Duration::ZERO)
        .await
        .expect("stop");
    // The template's disks go away: a restore must open the VM's own.
    std::fs::remove_file(&template.spec.root_disk).unwrap();
    std::fs::remove_file(&template.spec.work_disk).unwrap();

    let clone = vm("00000000000000d2", 11);
    let vmm = backend(&bins, &clone);
    let spec = &clone.spec;
    let grown = 1 << 20;
    let restore = StartMode::Restore(Restore {
        snapshot: files.clone(),
        grown: vec![(Disk::Work, grown)],
    });
    let run = vmm.launch(spec, &restore).await.expect("restore");
    assert_eq!(state_of(&run).await, InstanceState::Running);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", run.pid)).unwrap(),
        clone.dir.path()
    );
    let log = changes(&clone.requests);
    assert_eq!(
        log,
        [
            json!({"method": "PUT", "path": "/snapshot/load", "body": {
                "snapshot_path": files.state.to_str().unwrap(),
                "mem_backend": {"backend_type": "File", "backend_path": files.memory.to_str().unwrap()},
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "bgtap11"}],
                "vsock_override": {"uds_path": spec.run_dir.join("vsock.sock").to_str().unwrap()},
                "resume_vm": true}}),
            json!({"method": "PATCH", "path": "/drives/work", "body": {
                "drive_id": "work", "path_on_host": "work.ext4"}}),
        ],
        "exactly a load, no InstanceStart: {log:#?}"
    );
    assert_eq!(std::fs::metadata(&spec.work_disk).unwrap().len(), grown);
    // The agent answers on the VM's own vsock socket.
    assert_eq!(
        run.agent,
        AgentEndpoint::HybridVsock {
            uds: spec.run_dir.join("vsock.sock"),
            port: banger_agent_proto::wire::AGENT_VSOCK_PORT,
        }
    );
    agent_health(&run).await;

    // The fake's agent takes the identity in its sandbox next to the vsock socket.
    let uds = spec.run_dir.join("vsock.sock");
    let stream = connect_hybrid_vsock(&uds, banger_agent_proto::wire::AGENT_VSOCK_PORT)
        .await
        .expect("connect");
    let identity = banger_agent_proto::identity::Identity {
        hostname: "restored".to_string(),
        files: vec![banger_agent_proto::identity::IdentityFile {
            path: "/etc/hostname".to_string(),
            content: "restored\n".to_string(),
        }],
        mac: spec.mac.to_lowercase(),
        entropy: banger_agent_proto::identity::hex(&[1u8; 32]),
        time_unix_ns: 0,
        grow: vec!["/dev/vdb".to_string()],
    };
    banger_agent_proto::client::identity(stream, &identity, Duration::from_secs(10))
        .await
        .expect("POST /identity");
    let sandbox = spec.run_dir.join("vsock.sock.identity");
    assert_eq!(
        std::fs::read_to_string(sandbox.join("etc/hostname")).unwrap(),
        "restored\n"
    );
    let outcome = process::stop(&vmm, &run, Duration::from_secs(5))
        .await
        .expect("stop");
    assert_eq!(outcome, StopOutcome::Graceful);
    assert!(!sandbox.exists(), "the sandbox goes with the VM");
}

#[tokio::test]
async fn a_restore_the_vmm_refuses_leaves_nothing_running() {
    let Some(bins) = bins() else { return };
    let vm = vm("00000000000000d3", 12);
    let vmm = backend(&bins, &vm);
    let spec = &vm.spec;
    let restore = StartMode::Restore(Restore {
        snapshot: SnapshotFiles::in_dir(&vm.dir.path().join("no-template")),
        grown: vec![],
    });
    let err = vmm.launch(spec, &restore).await.expect_err("no snapshot");
    let text = chain(&err);
    assert!(text.contains("snapshot/load"), "{text}");
    assert!(no_process_with(&api_socket(spec)).await);
    assert!(!api_socket(spec).exists());
}
