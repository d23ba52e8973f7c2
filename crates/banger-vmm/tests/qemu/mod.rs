//! The QEMU backend against the real `qemu-system-x86_64`.
//!
//! The boot tests build a tiny guest: an ext4 root holding a static busybox and an
//! `/sbin/init` script (plus, when built, the static `banger-agent` and the kernel's
//! `virtio_console` module), booted with the host's `/boot/vmlinuz-*` and its initrd. The init
//! prints a marker, the block devices and their sizes to the serial console, optionally starts
//! the agent on the virtio-serial port, sleeps for `banger_test_sleep=` seconds (from the
//! kernel command line) and powers off. The root and work disks have different sizes, which
//! proves which one the guest sees as `/dev/vda`.
//!
//! They need root (QEMU creates the TAP device), QEMU, a kernel with its initrd in `/boot`
//! and a static `/bin/busybox` (`apt-get install busybox-static`); without them they say why
//! and pass without running. The agent part needs the static agent:
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build -p banger-agent --target
//! x86_64-unknown-linux-gnu`.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_agent_proto::client::{connect_unix, health};
use banger_core::runner::SystemRunner;
use banger_vmm::process::{self, StopOutcome};
use banger_vmm::qemu::{self, Accel, QemuVmm, Timeouts};
use banger_vmm::{AgentEndpoint, KernelFiles, Running, VmSpec, Vmm, VmmError};

use super::{script, target_dir};

/// Marker lines the guest's init prints.
const BOOTED: &str = "BANGER-TEST-BOOTED";
const SIZES: &str = "BANGER-SIZES ";
/// Root and work disk sizes, different on purpose.
const ROOT_MIB: u64 = 48;
const WORK_MIB: u64 = 16;
/// How long a TCG boot may take on a loaded host.
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

#[allow(
    clippy::print_stderr,
    reason = "a skipped test says why; a boot reports its time"
)]
fn note(text: &str) {
    eprintln!("{text}");
}

/// The test's QEMU binary, from `PATH`.
fn qemu_on_path() -> Option<QemuVmm> {
    QemuVmm::locate(None, None, std::env::var_os("PATH").as_deref()).ok()
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let Ok(phoff) = <[u8; 8]>::try_from(&bytes[0x20..0x28]).map(u64::from_le_bytes) else {
        return false;
    };
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let at = phoff as usize + i * entsize;
        // PT_INTERP (3) names the dynamic loader.
        bytes
            .get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

/// A kernel in `/boot` with its initrd: the newest version that has both.
fn host_kernel() -> Option<(String, PathBuf, PathBuf)> {
    let mut versions: Vec<String> = fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .filter(|v| Path::new(&format!("/boot/initrd.img-{v}")).is_file())
        .collect();
    versions.sort();
    let version = versions.pop()?;
    Some((
        version.clone(),
        PathBuf::from(format!("/boot/vmlinuz-{version}")),
        PathBuf::from(format!("/boot/initrd.img-{version}")),
    ))
}

/// Why the agent cannot be part of the guest, or what to copy: the static agent and, when
/// the kernel has `virtio_console` as a module, the uncompressed module file.
fn agent_files(version: &str) -> Result<(PathBuf, Option<PathBuf>), String> {
    let agent = target_dir()
        .parent()
        .map(|t| t.join("x86_64-unknown-linux-gnu/debug/banger-agent"))
        .ok_or("no target directory")?;
    if !is_static_elf(&agent) {
        return Err(format!(
            "no static agent at {} (RUSTFLAGS='-C target-feature=+crt-static' cargo build -p banger-agent --target x86_64-unknown-linux-gnu)",
            agent.display()
        ));
    }
    let config = fs::read_to_string(format!("/boot/config-{version}")).unwrap_or_default();
    if config.lines().any(|l| l == "CONFIG_VIRTIO_CONSOLE=y") {
        return Ok((agent, None));
    }
    let module = PathBuf::from(format!(
        "/lib/modules/{version}/kernel/drivers/char/virtio_console.ko"
    ));
    if module.is_file() {
        Ok((agent, Some(module)))
    } else {
        Err(format!(
            "virtio_console is neither built into {version} nor an uncompressed module at {}",
            module.display()
        ))
    }
}

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc 2>/dev/null
$B mount -t sysfs sysfs /sys 2>/dev/null
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
S=5
for a in $($B cat /proc/cmdline); do
  case "$a" in banger_test_sleep=*) S="${a#banger_test_sleep=}" ;; esac
done
echo "BANGER-TEST-BOOTED uptime=$($B cut -d' ' -f1 /proc/uptime)"
echo "BANGER-DISKS $($B ls /dev/vd* | $B tr '\n' ' ')"
echo "BANGER-SIZES vda=$($B cat /sys/block/vda/size) vdb=$($B cat /sys/block/vdb/size)"
echo "BANGER-CMDLINE $($B cat /proc/cmdline)"
if [ -x /usr/local/bin/banger-agent ]; then
  [ -f /lib/modules/virtio_console.ko ] && $B insmod /lib/modules/virtio_console.ko
  i=0
  while [ $i -lt 20 ] && ! $B ls /sys/class/virtio-ports/*/name >/dev/null 2>&1; do
    $B sleep 1; i=$((i+1))
  done
  $B mkdir -p /dev/virtio-ports
  for p in /sys/class/virtio-ports/*; do
    [ -f "$p/name" ] && $B ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$($B cat "$p/name")"
  done
  /usr/local/bin/banger-agent --serial /dev/virtio-ports/banger.agent &
  echo "BANGER-AGENT-STARTED"
fi
$B sleep "$S"
echo "BANGER-POWEROFF"
$B poweroff -f
"#;

/// A guest: its directory, spec and whether the agent is in it.
struct Guest {
    dir: tempfile::TempDir,
    spec: VmSpec,
    agent: bool,
}

/// Everything a real boot needs, or why it cannot run here (already reported).
fn guest(vm_id: &str, sleep_secs: u32) -> Option<(QemuVmm, Guest)> {
    // SAFETY: geteuid(2) has no preconditions and only returns the caller's effective uid.
    if unsafe { libc::geteuid() } != 0 {
        note("skipped: needs root (QEMU creates the TAP device)");
        return None;
    }
    let Some(vmm) = qemu_on_path() else {
        note("skipped: no qemu-system-x86_64 on PATH (apt-get install qemu-system-x86)");
        return None;
    };
    let Some((version, kernel, initrd)) = host_kernel() else {
        note("skipped: no /boot/vmlinuz-* with a matching /boot/initrd.img-*");
        return None;
    };
    if !is_static_elf(Path::new("/bin/busybox")) {
        note("skipped: no static /bin/busybox (apt-get install busybox-static)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("bq")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let tree = dir.path().join("tree");
    for sub in [
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "lib/modules",
    ] {
        fs::create_dir_all(tree.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    let init = tree.join("sbin/init");
    fs::write(&init, INIT).unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
    let agent = match agent_files(&version) {
        Ok((agent, module)) => {
            fs::create_dir_all(tree.join("usr/local/bin")).unwrap();
            fs::copy(agent, tree.join("usr/local/bin/banger-agent")).unwrap();
            if let Some(module) = module {
                fs::copy(module, tree.join("lib/modules/virtio_console.ko")).unwrap();
            }
            true
        }
        Err(why) => {
            note(&format!("the guest runs without the agent: {why}"));
            false
        }
    };
    let runner = SystemRunner::new();
    let root_disk = dir.path().join("root.ext4");
    banger_disk::ext4::mkfs_from_dir(&runner, &tree, &root_disk, ROOT_MIB << 20, "bgroot")
        .expect("root image");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let work_disk = dir.path().join("work.ext4");
    banger_disk::ext4::mkfs_from_dir(&runner, &empty, &work_disk, WORK_MIB << 20, "bgwork")
        .expect("work image");

    let spec = VmSpec {
        vm_id: vm_id.to_string(),
        vcpus: 2,
        memory_mib: 512,
        // What a kernel import records: the host's vmlinuz, no vmlinux.
        kernel: KernelFiles::formats(None, Some(kernel)).with_initrd(Some(initrd)),
        // The daemon's backend-neutral command line: QEMU adds nothing (no pci=off).
        boot_args: format!(
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw banger_test_sleep={sleep_secs}"
        ),
        root_disk,
        work_disk,
        // One TAP per test (they run in parallel), gone when its QEMU exits.
        tap: format!(
            "bgq{}{}",
            std::process::id() % 100_000,
            &vm_id[vm_id.len() - 2..]
        ),
        mac: "06:00:AC:1E:00:07".to_string(),
        vsock_cid: 7,
        run_dir: dir.path().join("run"),
        console_log: dir.path().join("console.log"),
        vmm_log: dir.path().join("vmm.log"),
    };
    Some((vmm, Guest { dir, spec, agent }))
}

/// Waits until the console log has a whole line (ended by a newline: the serial console
/// writes a line in several pieces) containing `marker`, failing early when QEMU exits.
async fn wait_console(guest: &Guest, run: &Running, marker: &str) -> String {
    let deadline = Instant::now() + BOOT_DEADLINE;
    loop {
        let console = fs::read_to_string(&guest.spec.console_log).unwrap_or_default();
        if console
            .find(marker)
            .is_some_and(|at| console[at..].contains('\n'))
        {
            return console;
        }
        let vmm_log = fs::read_to_string(&guest.spec.vmm_log).unwrap_or_default();
        assert!(
            process::alive(run.pid),
            "QEMU exited before {marker}\nvmm log:\n{vmm_log}\nconsole:\n{console}"
        );
        assert!(
            Instant::now() < deadline,
            "no {marker} within {BOOT_DEADLINE:?}\nvmm log:\n{vmm_log}\nconsole:\n{console}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value after `key` on the console line starting with `prefix`.
fn console_value(console: &str, prefix: &str, key: &str) -> Option<String> {
    let line = console.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// Asks the agent for `/healthz` over the virtio-serial socket, retrying while it comes up.
async fn agent_health(run: &Running) -> banger_agent_proto::wire::Health {
    let AgentEndpoint::Unix(socket) = &run.agent else {
        panic!("QEMU's agent is behind a Unix socket: {:?}", run.agent);
    };
    let deadline = Instant::now() + BOOT_DEADLINE;
    loop {
        let attempt = async {
            let stream = connect_unix(socket).await?;
            health(stream, Duration::from_secs(3)).await
        };
        match attempt.await {
            Ok(health) => return health,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the agent never answered: {e}"),
        }
    }
}

#[tokio::test]
async fn qemu_boots_a_real_guest_with_root_on_vda_and_it_powers_off_by_itself() {
    let Some((vmm, guest)) = guest("00000000000000e1", 8) else {
        return;
    };
    let spec = &guest.spec;
    let accel = qemu::accel_for(Path::new(qemu::DEV_KVM), Path::new(qemu::PROC_CPUINFO));
    let started = Instant::now();
    let run = vmm.start(spec).await.expect("start");
    let spawned_after = started.elapsed();
    assert!(process::alive(run.pid));
    assert_eq!(run.vm_id, spec.vm_id);
    assert_eq!(run.api_socket, spec.run_dir.join("qmp.sock"));
    assert_eq!(
        run.agent,
        AgentEndpoint::Unix(spec.run_dir.join("agent.sock"))
    );

    // Found by its QMP socket while it runs; a second start is refused.
    let found = vmm.find_live(spec).await.expect("found while running");
    assert_eq!(found, run);
    let err = vmm.start(spec).await.expect_err("already running");
    assert!(
        matches!(&err, VmmError::AlreadyRunning { pid: Some(p), .. } if *p == run.pid),
        "{err}"
    );

    let console = wait_console(&guest, &run, BOOTED).await;
    let booted_after = started.elapsed();
    let uptime = console_value(&console, BOOTED, "uptime=").unwrap_or_default();
    note(&format!(
        "qemu ({accel}): QMP answered after {spawned_after:.2?}, {BOOTED} after {booted_after:.1?} (guest uptime {uptime} s)"
    ));
    let console = wait_console(&guest, &run, "BANGER-CMDLINE ").await;
    assert_eq!(
        console_value(&console, SIZES, "vda="),
        Some((ROOT_MIB << 11).to_string()),
        "vda is the root disk\n{console}"
    );
    assert_eq!(
        console_value(&console, SIZES, "vdb="),
        Some((WORK_MIB << 11).to_string()),
        "vdb is the work disk\n{console}"
    );
    let cmdline = console
        .lines()
        .find(|l| l.starts_with("BANGER-CMDLINE "))
        .unwrap_or_default();
    assert!(!cmdline.contains("pci=off"), "{cmdline}");
    assert!(cmdline.contains("root=/dev/vda"), "{cmdline}");

    // init sleeps, then `poweroff -f`: with -no-reboot QEMU ends by itself.
    assert!(
        process::wait_exit(run.pid, BOOT_DEADLINE).await,
        "QEMU did not exit after the guest powered off"
    );
    let console = fs::read_to_string(&spec.console_log).unwrap();
    assert!(console.contains("BANGER-POWEROFF"), "{console}");
    assert_eq!(vmm.find_live(spec).await, None);
    process::cleanup_sockets(&spec.run_dir).expect("cleanup");
    assert!(!qemu::qmp_socket(&spec.run_dir).exists());
    drop(guest.dir);
}

#[tokio::test]
async fn qemu_guest_agent_answers_over_virtio_serial_and_a_stuck_guest_is_forced() {
    let Some((vmm, guest)) = guest("00000000000000e2", 600) else {
        return;
    };
    let spec = &guest.spec;
    let run = vmm.start(spec).await.expect("start");
    wait_console(&guest, &run, BOOTED).await;

    if guest.agent {
        let started = Instant::now();
        let health = agent_health(&run).await;
        assert!(!health.version.is_empty());
        note(&format!(
            "qemu: the agent answered /healthz over virtio-serial {:.1?} after the boot marker",
            started.elapsed()
        ));
    }

    // The power button is pressed, but busybox init does not act on it.
    vmm.request_shutdown(&run)
        .await
        .expect("system_powerdown accepted");
    let outcome = process::stop(&vmm, &run, Duration::from_secs(3))
        .await
        .expect("stop");
    assert_eq!(outcome, StopOutcome::Forced);
    assert!(!process::alive(run.pid));
    let mut removed = process::cleanup_sockets(&spec.run_dir).expect("cleanup");
    removed.sort();
    assert_eq!(
        removed,
        vec![
            qemu::agent_socket(&spec.run_dir),
            qemu::qmp_socket(&spec.run_dir)
        ]
    );
    assert_eq!(vmm.find_live(spec).await, None);
    let err = vmm
        .request_shutdown(&run)
        .await
        .expect_err("nothing listens any more");
    assert!(matches!(&err, VmmError::Qmp { .. }), "{err}");
    assert!(
        crate::chain(&err).contains("qmp.sock"),
        "{}",
        crate::chain(&err)
    );
    drop(guest.dir);
}

/// A spec for the failure tests: files that need not boot.
fn broken_spec(dir: &Path, vm_id: &str) -> VmSpec {
    VmSpec {
        vm_id: vm_id.to_string(),
        vcpus: 1,
        memory_mib: 128,
        kernel: KernelFiles::formats(None, Some(dir.join("no-such-vmlinuz"))),
        boot_args: "console=ttyS0".to_string(),
        root_disk: dir.join("root.ext4"),
        work_disk: dir.join("work.ext4"),
        tap: format!(
            "bgq{}{}",
            std::process::id() % 100_000,
            &vm_id[vm_id.len() - 2..]
        ),
        mac: "06:00:AC:1E:00:08".to_string(),
        vsock_cid: 8,
        run_dir: dir.join("run"),
        console_log: dir.join("console.log"),
        vmm_log: dir.join("vmm.log"),
    }
}

#[tokio::test]
async fn qemu_that_exits_at_once_is_reported_with_its_error() {
    let Some(vmm) = qemu_on_path() else {
        note("skipped: no qemu-system-x86_64 on PATH (apt-get install qemu-system-x86)");
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("bq")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let spec = broken_spec(dir.path(), "00000000000000e3");
    fs::write(&spec.root_disk, vec![0u8; 4096]).unwrap();
    fs::write(&spec.work_disk, vec![0u8; 4096]).unwrap();
    let vmm = vmm.with_accel(Accel::Tcg).with_vhost_vsock(false);

    let err = vmm.start(&spec).await.expect_err("no kernel");
    let text = err.to_string();
    assert!(
        matches!(&err, VmmError::ExitedDuringStart { status, .. } if status == "exit status: 1"),
        "{text}"
    );
    // QEMU's own words from its stderr: about the kernel (as root), or about the TAP it may
    // not create (unprivileged), whichever it meets first.
    assert!(
        text.contains("could not open kernel file") && text.contains("no-such-vmlinuz")
            || text.contains("/dev/net/tun"),
        "{text}"
    );
    assert!(text.contains("vmm.log"), "{text}");
    assert!(
        process::cleanup_sockets(&spec.run_dir).unwrap().is_empty(),
        "no socket is left behind"
    );
    assert_eq!(vmm.find_live(&spec).await, None);
}

/// The QMP `-chardev` argument of `run_dir`, which stays on a silent fake's command line.
fn qmp_arg(run_dir: &Path) -> OsString {
    format!(
        "socket,id=qmp,path={},server=on,wait=off",
        qemu::qmp_socket(run_dir).display()
    )
    .into()
}

async fn no_process_with(arg: &OsString) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process::pids_with_arg(arg).is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn a_silent_qemu_is_killed_on_timeout_and_on_cancellation() {
    let dir = tempfile::Builder::new()
        .prefix("bq")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let spec = broken_spec(dir.path(), "00000000000000e4");
    // Never answers QMP; its command line keeps the arguments; sleep shares its group.
    let silent = script(dir.path(), "silent-qemu", "sleep 60; : \"$@\"");
    let vmm = QemuVmm::new(&silent)
        .with_accel(Accel::Tcg)
        .with_vhost_vsock(false)
        .with_timeouts(Timeouts {
            ready: Duration::from_millis(300),
            ..Timeouts::default()
        });
    let arg = qmp_arg(&spec.run_dir);

    let err = vmm.start(&spec).await.expect_err("never ready");
    assert!(matches!(err, VmmError::NotReady { .. }), "{err}");
    assert!(
        crate::chain(&err).contains("qmp.sock"),
        "{}",
        crate::chain(&err)
    );
    assert!(no_process_with(&arg).await);

    let patient = vmm.clone().with_timeouts(Timeouts::default());
    let mut start = patient.start(&spec);
    let spawned = async {
        while process::pids_with_arg(&arg).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        result = &mut start => panic!("the silent QEMU cannot start: {result:?}"),
        () = spawned => {}
    }
    drop(start);
    assert!(
        no_process_with(&arg).await,
        "the cancelled start was cleaned up"
    );
}

/// A checksum of a file's contents (FNV-1a over 64-bit words: enough to see a change).
fn digest(path: &Path) -> u64 {
    let bytes = fs::read(path).expect("read");
    bytes.chunks(8).fold(0xcbf2_9ce4_8422_2325, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[tokio::test]
async fn qemu_template_saves_its_devices_and_two_restores_map_its_memory_copy_on_write() {
    use banger_vmm::{Disk, DiskClone, Restore, SnapshotFiles, StartMode};
    let Some((vmm, guest)) = guest("00000000000000e5", 600) else {
        return;
    };
    let Some(img) = ["/usr/bin/qemu-img", "/usr/local/bin/qemu-img"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        note("skipped: no qemu-img (apt-get install qemu-utils)");
        return;
    };
    let vmm = vmm.with_img_bin(img);
    let spec = &guest.spec;
    let template = guest.dir.path().join("template");
    fs::create_dir(&template).unwrap();
    let files = SnapshotFiles::in_dir(&template);
    let mode = StartMode::BootTemplate {
        memory: files.memory.clone(),
    };
    let run = vmm.launch(spec, &mode).await.expect("template boot");
    wait_console(&guest, &run, BOOTED).await;
    if guest.agent {
        agent_health(&run).await;
    }
    vmm.snapshot(&run, &files).await.expect("snapshot");
    let state_bytes = fs::metadata(&files.state).unwrap().len();
    assert_eq!(fs::metadata(&files.memory).unwrap().len(), 512 << 20);
    // The memory is not in the state: it stays in the memory file.
    assert!(state_bytes < 16 << 20, "state is {state_bytes} bytes");
    process::stop(&vmm, &run, Duration::from_secs(1))
        .await
        .expect("stop the template");
    let memory_digest = digest(&files.memory);

    let mut restored = Vec::new();
    for n in 1..=2u32 {
        let dir = guest.dir.path().join(format!("vm{n}"));
        fs::create_dir(&dir).unwrap();
        let mut spec = spec.clone();
        spec.vm_id = format!("00000000000000f{n}");
        spec.run_dir = dir.join("run");
        spec.console_log = dir.join("console.log");
        spec.vmm_log = dir.join("vmm.log");
        spec.tap = format!("{}r{n}", &spec.tap[..spec.tap.len().min(12)]);
        spec.mac = format!("06:00:AC:1E:01:0{n}");
        spec.root_disk = dir.join("root.ext4");
        spec.work_disk = dir.join("work.ext4");
        for (base, dest) in [
            (&guest.spec.root_disk, &spec.root_disk),
            (&guest.spec.work_disk, &spec.work_disk),
        ] {
            let size = fs::metadata(base).unwrap().len();
            let how = vmm.clone_disk(base, dest, size).await.expect("clone");
            assert_eq!(how, DiskClone::Qcow2Overlay);
        }
        let restore = StartMode::Restore(Restore {
            snapshot: files.clone(),
            grown: vec![(Disk::Work, 2 * (WORK_MIB << 20))],
        });
        let started = Instant::now();
        let run = vmm.launch(&spec, &restore).await.expect("restore");
        note(&format!("qemu: restored in {:.2?}", started.elapsed()));
        if guest.agent {
            let health = agent_health(&run).await;
            assert!(health.uptime_secs > 0, "{health:?}");
        }
        restored.push((spec, run));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (spec, run) in &restored {
        assert!(
            process::alive(run.pid),
            "{}",
            fs::read_to_string(&spec.vmm_log).unwrap()
        );
        let console = fs::read_to_string(&spec.console_log).unwrap_or_default();
        assert!(console.contains("capacity change"), "vdb grew:\n{console}");
        vmm.pause(run).await.expect("pause");
        vmm.resume(run).await.expect("resume");
    }
    // Both guests ran on the template's memory, and it did not change.
    assert_eq!(digest(&files.memory), memory_digest);
    for (_, run) in &restored {
        process::stop(&vmm, run, Duration::from_secs(1))
            .await
            .expect("stop");
    }
    drop(guest.dir);
}
