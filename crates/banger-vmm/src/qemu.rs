//! The QEMU backend: [`QemuVmm`], for hosts where Firecracker cannot run (no hardware
//! virtualization: QEMU's TCG emulates the CPU in software).
//!
//! Start sequence (the shared start template, `launch::start`, with QEMU's steps), each step
//! bounded by a timeout ([`Timeouts`]):
//!
//! 1. check the spec ([`Vmm::validate`]): the VM id (QEMU's `-name`), socket paths that fit in
//!    `sun_path`, a kernel file (the bzImage, else the ELF `vmlinux`), a TAP name and a MAC;
//! 2. create `run_dir`; refuse if a VMM already answers QMP on `run_dir/qmp.sock`, otherwise
//!    remove stale sockets there;
//! 3. spawn `qemu-system-x86_64` with the whole machine on its command line ([`qemu_args`])
//!    detached, stdout (the guest's serial console) appended to the console log, stderr to
//!    the VMM log;
//! 4. wait until QMP answers `query-status`, noticing an early exit (then the error quotes
//!    the log's tail). QEMU runs the guest as soon as it answers: nothing else to configure.
//!
//! Any failure after the spawn — or a start future dropped half-way — kills QEMU's process
//! group and removes its sockets.
//!
//! # The machine, and why
//!
//! - **`q35` with PCI virtio devices, not `microvm`.** Under TCG a `microvm` guest has no
//!   clock to calibrate the TSC against: no HPET, no ACPI PM timer, and no port 0x61 for the
//!   PIT's slow path. The kernel's fast PIT calibration is timing-sensitive and fails on a
//!   loaded host; the Debian cloud kernel then waits forever for a timer tick that, with
//!   `microvm`'s ACPI interrupt routing, never comes (QEMU 7.2, Debian's 6.1 cloud kernel,
//!   a busy 2-core host: about half the boots hung).
//!   `q35` has an HPET (a stable clocksource too), boots the same kernel every time, and its
//!   devices sit in fixed PCI slots, so the guest sees them in a fixed order: the root disk
//!   (slot 2) is `/dev/vda`, the work disk (slot 3) `/dev/vdb`. The Debian cloud kernel has
//!   `virtio_pci` and `virtio_blk` as modules; its initramfs loads them.
//!   `sata`, `smbus`, `usb` and `vmport` are off: nothing uses them and probing them costs
//!   boot time under TCG. The i8042 stays, so `reboot=k` resets the machine at once.
//! - **The kernel command line is the daemon's, unchanged** ([`kernel_args`]): it is
//!   backend-neutral, and what Firecracker adds to it (`pci=off`, it has no PCI bus) would
//!   hide every device of this machine.
//! - **KVM only with hardware virtualization** ([`accel_for`]): `/dev/kvm` can exist without
//!   `vmx`/`svm` (a PVM-only KVM inside a VM), and stock guest kernels hang under it. TCG
//!   runs one host thread per vCPU (`thread=multi`); `-cpu max` offers the guest every
//!   feature TCG emulates, `-cpu host` passes the host CPU through under KVM.
//! - **`-no-reboot`**: a guest reboot or power-off ends the QEMU process, like Firecracker.
//!   `system_powerdown` ([`Vmm::request_shutdown`]) presses the ACPI power button; the guest
//!   needs the ACPI `button` driver (a module on Debian) and something that acts on the key
//!   (systemd-logind).
//! - **The agent's channel is a virtio-serial port** named `banger.agent`, whose host end is
//!   the Unix socket `run_dir/agent.sock` ([`AgentEndpoint::Unix`]). vsock needs
//!   `/dev/vhost-vsock` on the host: a `vhost-vsock-pci` device with the VM's CID is added
//!   only when it exists, and the agent is reached over the serial port either way.
//! - **Option values are escaped**: in `key=value,...` options a `,` in a value is written
//!   `,,`, so any path works. Disks are `-blockdev` nodes with an explicit `file` driver, so a
//!   `:` in a path is never read as a protocol prefix.
//! - **Finding a live QEMU**: QMP must answer and `query-name` must return the VM id
//!   (`-name`). The pid comes from the QMP socket's peer credentials, else from a
//!   `/proc/*/cmdline` scan for the exact QMP `-chardev` argument.
//! - **Snapshots** ([`snapshot`]): a template boots with its RAM in a shared file, is saved by
//!   migration to `exec:` with `x-ignore-shared`, and each restore maps that file privately
//!   (copy-on-write) on its own devices, its disks qcow2 overlays; a `virtio-rng-pci` device
//!   feeds every guest (cold or restored) from the host's `/dev/urandom`.
//! - **QMP serves one client at a time**: a second client gets no greeting until the first
//!   leaves, so every QMP session here is short and bounded by a timeout.

pub mod qmp;
pub mod snapshot;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent_proto::wire::SERIAL_PORT_NAME;

use crate::launch::{self, Backend, Launch};
pub use crate::process::LocateError;
use crate::process::{self, BinarySource};
use crate::{
    AgentEndpoint, BoxFuture, DiskClone, KernelFormat, Restore, Running, SnapshotFiles, StartMode,
    VmSpec, Vmm, VmmError, VmmKind, check_socket_path, validate_vm_id,
};
use qmp::{QmpClient, QmpError};

/// File name of the QMP socket in the VM's run directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// File name of the agent's virtio-serial socket in the VM's run directory.
pub const AGENT_SOCKET: &str = "agent.sock";
/// The environment variable naming the binary (read by the caller, see
/// [`QemuVmm::locate`]).
pub const BIN_ENV: &str = SOURCE.env_var;
/// The binary looked up on `PATH`.
pub const BIN_NAME: &str = SOURCE.name;
/// The disk image tool, looked for next to the QEMU binary.
pub const IMG_BIN_NAME: &str = "qemu-img";

/// Where the binary comes from (see [`process::locate_binary`]).
pub const SOURCE: BinarySource = banger_core::probe::QEMU;
/// The KVM device probed by [`accel_for`].
pub const DEV_KVM: &str = "/dev/kvm";
/// Where the CPU flags are read by [`accel_for`].
pub const PROC_CPUINFO: &str = "/proc/cpuinfo";
/// The host device a `vhost-vsock-pci` device needs.
pub const DEV_VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// The machine type and the options that turn off what banger does not use.
const MACHINE: &str = "q35,sata=off,smbus=off,usb=off,vmport=off";
/// Pause between two readiness probes.
const READY_POLL: Duration = Duration::from_millis(20);

/// The QMP socket of a VM whose run directory is `run_dir`.
pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(QMP_SOCKET)
}

/// The agent's socket of a VM whose run directory is `run_dir`.
pub fn agent_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(AGENT_SOCKET)
}

/// How QEMU runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (slow, works everywhere).
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`, as QEMU names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`probe_accel`] found, for a diagnosis: whether `/dev/kvm` opens read-write and
/// which hardware virtualization flag the CPU has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelProbe {
    /// `Ok` when the KVM device opened read-write, else why not.
    pub kvm: Result<(), String>,
    /// `vmx` or `svm` when `/proc/cpuinfo`'s flags have it.
    pub cpu_flag: Option<&'static str>,
}

impl AccelProbe {
    /// KVM when the device is usable and the CPU has hardware virtualization, else TCG.
    pub fn accel(&self) -> Accel {
        if self.kvm.is_ok() && self.cpu_flag.is_some() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// Why [`accel`](Self::accel) chose what it chose, in one sentence.
    pub fn reason(&self) -> String {
        match (&self.kvm, self.cpu_flag) {
            (Ok(()), Some(flag)) => {
                format!("KVM: the KVM device is usable and the CPU has {flag}")
            }
            (Ok(()), None) => "TCG (software emulation, slow): the KVM device is usable but the CPU flags have neither vmx nor svm (a PVM-only KVM, under which stock kernels hang)".to_string(),
            (Err(why), _) => format!("TCG (software emulation, slow): the KVM device cannot be opened read-write: {why}"),
        }
    }
}

/// Probes the host with the shared host probe ([`banger_core::probe::probe_kvm`], which
/// `banger doctor` uses too): `dev_kvm` opened read-write, `vmx` or `svm` in `cpuinfo`
/// (normally [`DEV_KVM`] and [`PROC_CPUINFO`]). Never fails.
pub fn probe_accel(dev_kvm: &Path, cpuinfo: &Path) -> AccelProbe {
    use banger_core::probe::{KvmDevice, probe_kvm};
    let probe = probe_kvm(dev_kvm, cpuinfo);
    let kvm = match probe.device {
        KvmDevice::Usable => Ok(()),
        KvmDevice::Absent => Err(format!("{}: no such device", dev_kvm.display())),
        KvmDevice::Denied(why) => Err(format!("{}: {why}", dev_kvm.display())),
    };
    AccelProbe {
        kvm,
        cpu_flag: probe.cpu_flag,
    }
}

/// KVM only when `dev_kvm` opens read-write and `cpuinfo` shows `vmx` or `svm`; else TCG.
pub fn accel_for(dev_kvm: &Path, cpuinfo: &Path) -> Accel {
    probe_accel(dev_kvm, cpuinfo).accel()
}

/// What the command line depends on besides the VM: how the CPUs run and whether a vsock
/// device is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuOptions {
    pub accel: Accel,
    /// Add `vhost-vsock-pci` with the VM's CID (needs `/dev/vhost-vsock` on the host).
    pub vhost_vsock: bool,
}

/// How long the QEMU backend waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From spawn until QMP answers.
    pub ready: Duration,
    /// One QMP session (connect, greeting, each command).
    pub qmp: Duration,
    /// One probe of a socket that may be stale (readiness, [`Vmm::find_live`]).
    pub probe: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            ready: Duration::from_secs(10),
            qmp: Duration::from_secs(5),
            probe: Duration::from_secs(1),
        }
    }
}

/// Runs VMs with QEMU.
#[derive(Debug, Clone)]
pub struct QemuVmm {
    bin: PathBuf,
    /// `qemu-img`, which makes a restored VM's disk overlays: next to `bin` unless given.
    img_bin: PathBuf,
    env: Vec<(OsString, OsString)>,
    timeouts: Timeouts,
    /// Fixed by [`with_accel`](Self::with_accel); probed at each start otherwise.
    accel: Option<Accel>,
    /// Fixed by [`with_vhost_vsock`](Self::with_vhost_vsock); probed at each start otherwise.
    vhost_vsock: Option<bool>,
}

impl QemuVmm {
    /// A backend running `bin`, with default [`Timeouts`]; the accelerator and vsock are
    /// probed at each start ([`options`](Self::options)).
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        let bin = bin.into();
        Self {
            img_bin: bin.with_file_name(IMG_BIN_NAME),
            bin,
            env: Vec::new(),
            timeouts: Timeouts::default(),
            accel: None,
            vhost_vsock: None,
        }
    }

    /// Chooses the binary: the config file's `qemu_bin`, else `BANGER_QEMU_BIN` (`env_bin`),
    /// else `qemu-system-x86_64` in a directory of `path_var` (`PATH`). The caller reads the
    /// environment; empty values count as unset. An explicit choice that is not an
    /// executable file is an error, not a reason to fall through to the next source.
    pub fn locate(
        config_bin: Option<PathBuf>,
        env_bin: Option<OsString>,
        path_var: Option<&OsStr>,
    ) -> Result<Self, LocateError> {
        process::locate_binary(&SOURCE, config_bin, env_bin, path_var).map(Self::new)
    }

    /// Uses `img_bin` as `qemu-img` instead of the one next to the QEMU binary.
    pub fn with_img_bin(mut self, img_bin: impl Into<PathBuf>) -> Self {
        self.img_bin = img_bin.into();
        self
    }

    /// Adds a variable to the environment QEMU is started with (on top of the daemon's).
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Uses `accel` instead of probing the host at each start.
    pub fn with_accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }

    /// Adds (or never adds) the vsock device instead of checking for `/dev/vhost-vsock` at
    /// each start.
    pub fn with_vhost_vsock(mut self, enabled: bool) -> Self {
        self.vhost_vsock = Some(enabled);
        self
    }

    /// The binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The options the next start uses: the fixed ones, or what the host offers now
    /// ([`accel_for`] on [`DEV_KVM`] and [`PROC_CPUINFO`]; [`DEV_VHOST_VSOCK`] exists).
    pub fn options(&self) -> QemuOptions {
        QemuOptions {
            accel: self
                .accel
                .unwrap_or_else(|| accel_for(Path::new(DEV_KVM), Path::new(PROC_CPUINFO))),
            vhost_vsock: self
                .vhost_vsock
                .unwrap_or_else(|| Path::new(DEV_VHOST_VSOCK).exists()),
        }
    }

    fn client(&self, socket: &Path, timeout: Duration) -> QmpClient {
        QmpClient::new(socket).with_timeout(timeout)
    }

    /// Runs one QMP command without arguments on `run`'s QEMU.
    async fn command(&self, run: &Running, command: &str) -> Result<(), VmmError> {
        let client = self.client(&run.api_socket, self.timeouts.qmp);
        async { client.connect().await?.execute(command, None).await }
            .await
            .map(drop)
            .map_err(|source| VmmError::Qmp {
                vm_id: run.vm_id.clone(),
                source: Box::new(source),
            })
    }
}

/// QEMU's steps of the start template: the whole machine on its command line, so nothing is
/// left to configure once QMP answers (QEMU runs the guest at once).
impl Backend for QemuVmm {
    /// The options probed when the start was planned, the arguments for them, and the
    /// snapshot a restore loads.
    type Plan = (QemuOptions, Vec<OsString>, Option<Restore>);
    type ProbeError = QmpError;

    fn bin(&self) -> &Path {
        &self.bin
    }

    fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    fn ready_wait(&self) -> (Duration, Duration) {
        (self.timeouts.ready, READY_POLL)
    }

    fn plan(&self, spec: &VmSpec, mode: &StartMode) -> Result<Self::Plan, VmmError> {
        let options = self.options();
        let mut args = qemu_args(spec, options)?;
        args.extend(snapshot::mode_args(spec, mode)?);
        let restore = match mode {
            StartMode::Restore(restore) => Some(restore.clone()),
            _ => None,
        };
        Ok((options, args, restore))
    }

    fn control_arg(&self, run_dir: &Path) -> OsString {
        qmp_chardev_arg(run_dir)
    }

    async fn probe(&self, socket: &Path) -> Result<Option<u32>, QmpError> {
        let (_, peer) = self
            .client(socket, self.timeouts.probe)
            .query_status()
            .await?;
        Ok(peer)
    }

    fn is_connect(error: &QmpError) -> bool {
        error.is_connect()
    }

    fn args(&self, spec: &VmSpec, plan: &Self::Plan, _: &Path) -> Vec<OsString> {
        let (options, args, _) = plan;
        tracing::debug!(
            vm_id = spec.vm_id,
            accel = %options.accel,
            vhost_vsock = options.vhost_vsock,
            "starting qemu"
        );
        args.clone()
    }

    /// `query-name` (QEMU's `-name`, the VM id), then `query-status`, in one session.
    async fn query_vm(&self, socket: &Path) -> Result<(Option<String>, Option<u32>), QmpError> {
        let mut session = self.client(socket, self.timeouts.probe).connect().await?;
        let name = session.query_name().await?;
        session.query_status().await?;
        Ok((name, session.peer_pid()))
    }

    async fn ready(&self, socket: &Path) -> Result<(), QmpError> {
        self.client(socket, self.timeouts.probe)
            .query_status()
            .await
            .map(drop)
    }

    /// Nothing for a boot: QEMU runs the guest as soon as QMP answers. A restore loads its
    /// snapshot and resumes the guest ([`snapshot::load`]); when QEMU dies doing so, the
    /// error says how, with its log.
    async fn configure(&self, launch: &Launch<'_>, plan: &Self::Plan) -> Result<(), VmmError> {
        let Some(restore) = &plan.2 else {
            return Ok(());
        };
        let client = self.client(launch.control_sock, self.timeouts.qmp);
        match snapshot::load(&client, &launch.spec.vm_id, restore).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let mut spawned = launch.spawned.clone();
                match tokio::time::timeout(Duration::from_secs(1), spawned.wait()).await {
                    Ok(exit) => Err(launch.exited(&self.bin, exit)),
                    Err(_) => Err(error),
                }
            }
        }
    }
}

impl Vmm for QemuVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    /// [`qemu_args`]'s checks, which do not depend on the options: the host is not probed.
    fn validate(&self, spec: &VmSpec) -> Result<(), VmmError> {
        let options = QemuOptions {
            accel: Accel::Tcg,
            vhost_vsock: false,
        };
        qemu_args(spec, options).map(drop)
    }

    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Running, VmmError>> {
        Box::pin(launch::start(self, spec))
    }

    fn launch<'a>(
        &'a self,
        spec: &'a VmSpec,
        mode: &'a StartMode,
    ) -> BoxFuture<'a, Result<Running, VmmError>> {
        Box::pin(launch::start_in(self, spec, mode))
    }

    fn snapshots(&self) -> bool {
        true
    }

    /// QMP `stop`.
    fn pause<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(self.command(run, "stop"))
    }

    /// QMP `cont`.
    fn resume<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(self.command(run, "cont"))
    }

    /// [`snapshot::save`]: a VM launched with [`StartMode::BootTemplate`] has its memory in
    /// `files.memory`; any other's memory goes into `files.state` (no memory file is
    /// written, and a restore from these files loads it from the state).
    fn snapshot<'a>(
        &'a self,
        run: &'a Running,
        files: &'a SnapshotFiles,
    ) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move {
            let client = self.client(&run.api_socket, self.timeouts.qmp);
            snapshot::save(&client, &run.vm_id, files).await
        })
    }

    /// [`snapshot::clone_disk`]: a qcow2 overlay.
    fn clone_disk<'a>(
        &'a self,
        base: &'a Path,
        dest: &'a Path,
        size: u64,
    ) -> BoxFuture<'a, Result<DiskClone, VmmError>> {
        Box::pin(snapshot::clone_disk(&self.img_bin, base, dest, size))
    }

    /// [`snapshot::copy_disk`]: a copy, carrying a qcow2 overlay's backing file along.
    fn copy_disk<'a>(
        &'a self,
        src: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskClone, VmmError>> {
        Box::pin(snapshot::copy_disk(src, dest))
    }

    fn request_shutdown<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move {
            self.client(&run.api_socket, self.timeouts.qmp)
                .system_powerdown()
                .await
                .map_err(|source| VmmError::Qmp {
                    vm_id: run.vm_id.clone(),
                    source: Box::new(source),
                })
        })
    }

    fn find_live<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Option<Running>> {
        Box::pin(launch::find_live(self, spec))
    }

    fn agent_endpoint(&self, spec: &VmSpec) -> AgentEndpoint {
        AgentEndpoint::Unix(agent_socket(&spec.run_dir))
    }

    fn control_socket(&self, run_dir: &Path) -> PathBuf {
        qmp_socket(run_dir)
    }
}

/// `value` for a QEMU `key=value,...` option: every `,` doubled.
fn escape(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// `prefix` + escaped `value` + `suffix`.
fn option(prefix: &str, value: &OsStr, suffix: &str) -> OsString {
    let mut out = OsString::from(prefix);
    out.push(escape(value));
    out.push(suffix);
    out
}

/// The QMP `-chardev` argument for `run_dir`; also what a `/proc` scan looks for.
fn qmp_chardev_arg(run_dir: &Path) -> OsString {
    option(
        "socket,id=qmp,path=",
        qmp_socket(run_dir).as_os_str(),
        ",server=on,wait=off",
    )
}

/// The kernel command line QEMU passes: the backend-neutral `boot_args` as they are (this
/// machine needs nothing more), whitespace normalized to single spaces.
pub fn kernel_args(boot_args: &str) -> String {
    boot_args.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A MAC address as QEMU takes it: six pairs of hex digits separated by `:`.
fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks `spec` and returns QEMU's arguments (without the program) for it, see the module
/// docs for the choices. In order: identity and machine (`-name`, `-machine`, `-accel`,
/// `-cpu`, `-smp`, `-m`, no default devices, no config file, no display, `-no-reboot`), the
/// kernel (`-kernel`, `-initrd` when set, `-append`), the root disk (PCI slot 2), the work
/// disk (slot 3), the network card on the TAP (slot 4), the virtio-serial controller (slot 5)
/// with the agent's port, the vsock device (slot 6) when enabled, QMP, and the serial console
/// on stdio.
pub fn qemu_args(spec: &VmSpec, options: QemuOptions) -> Result<Vec<OsString>, VmmError> {
    let vm_id = spec.vm_id.as_str();
    validate_vm_id(vm_id)?;
    check_socket_path(vm_id, &qmp_socket(&spec.run_dir))?;
    check_socket_path(vm_id, &agent_socket(&spec.run_dir))?;
    let kernel = spec.kernel.pick_for(vm_id, KernelFormat::BzImage)?;
    let invalid = |what, reason: String| VmmError::InvalidSpec {
        vm_id: vm_id.to_string(),
        what,
        reason,
    };
    if spec.tap.is_empty() {
        // With an empty ifname a privileged QEMU would create a TAP of its own.
        return Err(invalid("TAP device name", "it is empty".to_string()));
    }
    if !valid_mac(&spec.mac) {
        return Err(invalid(
            "MAC address",
            format!("{:?} is not six hex pairs separated by ':'", spec.mac),
        ));
    }
    if spec.vcpus == 0 {
        return Err(invalid("vCPU count", "it is 0".to_string()));
    }
    if spec.memory_mib == 0 {
        return Err(invalid("memory size", "it is 0 MiB".to_string()));
    }

    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&OsStr]| args.extend(items.iter().map(|s| s.to_os_string()));
    let s = OsStr::new;
    let (accel, cpu) = match options.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg,thread=multi", "max"),
    };
    let smp = spec.vcpus.to_string();
    let memory = format!("{}M", spec.memory_mib);
    push(&[s("-name"), s(vm_id)]);
    push(&[s("-machine"), s(MACHINE)]);
    push(&[s("-accel"), s(accel), s("-cpu"), s(cpu)]);
    push(&[s("-smp"), s(&smp), s("-m"), s(&memory)]);
    push(&[
        s("-nodefaults"),
        s("-no-user-config"),
        s("-display"),
        s("none"),
        s("-no-reboot"),
    ]);
    push(&[s("-kernel"), kernel.as_os_str()]);
    if let Some(initrd) = &spec.kernel.initrd {
        push(&[s("-initrd"), initrd.as_os_str()]);
    }
    let append = kernel_args(&spec.boot_args);
    push(&[s("-append"), s(&append)]);
    for (node, disk, slot) in [("root", &spec.root_disk, 2), ("work", &spec.work_disk, 3)] {
        let driver = snapshot::disk_driver(disk);
        let blockdev = option(
            &format!("node-name={node},driver={driver},file.driver=file,file.filename="),
            disk.as_os_str(),
            "",
        );
        let device = format!("virtio-blk-pci,drive={node},bus=pcie.0,addr={slot:#x}");
        push(&[s("-blockdev"), &blockdev, s("-device"), s(&device)]);
    }
    let netdev = option(
        "tap,id=net0,ifname=",
        OsStr::new(&spec.tap),
        ",script=no,downscript=no",
    );
    // No MAC or RX filtering in the device (`ctrl_mac_addr`, `ctrl_rx` off): a VM restored
    // from a template starts with the template's MAC in its migrated device state, and its
    // guest sets its own with `ip link`, which then needs no control-queue round trip and
    // is not filtered out by the device's stale MAC.
    let nic = format!(
        "virtio-net-pci,netdev=net0,mac={},ctrl_mac_addr=off,ctrl_rx=off,ctrl_rx_extra=off,bus=pcie.0,addr=0x4",
        spec.mac
    );
    push(&[s("-netdev"), &netdev, s("-device"), s(&nic)]);
    let agent = option(
        "socket,id=agent,path=",
        agent_socket(&spec.run_dir).as_os_str(),
        ",server=on,wait=off",
    );
    let port = format!("virtserialport,bus=serial0.0,chardev=agent,name={SERIAL_PORT_NAME}");
    push(&[
        s("-device"),
        s("virtio-serial-pci,id=serial0,bus=pcie.0,addr=0x5"),
        s("-chardev"),
        &agent,
        s("-device"),
        s(&port),
    ]);
    // The guest's entropy from the host's, on every VM (a restored guest reseeds from it too).
    push(&[
        s("-object"),
        s("rng-random,id=rng0,filename=/dev/urandom"),
        s("-device"),
        s("virtio-rng-pci,rng=rng0,bus=pcie.0,addr=0x7"),
    ]);
    if options.vhost_vsock {
        let vsock = format!(
            "vhost-vsock-pci,guest-cid={},bus=pcie.0,addr=0x6",
            spec.vsock_cid
        );
        push(&[s("-device"), s(&vsock)]);
    }
    let qmp = qmp_chardev_arg(&spec.run_dir);
    push(&[
        s("-chardev"),
        &qmp,
        s("-mon"),
        s("chardev=qmp,mode=control"),
    ]);
    push(&[s("-serial"), s("stdio")]);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KernelFiles;

    fn spec() -> VmSpec {
        VmSpec {
            vm_id: "0123456789abcdef".into(),
            vcpus: 2,
            memory_mib: 1024,
            kernel: KernelFiles::formats(Some("/k/vmlinux".into()), Some("/k/vmlinuz".into())),
            boot_args: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw".into(),
            root_disk: "/vm/root.ext4".into(),
            work_disk: "/vm/work.ext4".into(),
            tap: "bgtap5".into(),
            mac: "06:00:AC:1E:00:05".into(),
            vsock_cid: 5,
            run_dir: "/run/b/0123".into(),
            console_log: "/vm/console.log".into(),
            vmm_log: "/vm/vmm.log".into(),
        }
    }

    fn argv(spec: &VmSpec, accel: Accel, vhost_vsock: bool) -> Vec<String> {
        qemu_args(spec, QemuOptions { accel, vhost_vsock })
            .expect("valid spec")
            .into_iter()
            .map(|a| a.into_string().expect("UTF-8"))
            .collect()
    }

    /// The arguments every start has, with the accelerator and CPU, the kernel part and the
    /// vsock part as given.
    fn expected(accel: &[&str], kernel: &[&str], vsock: &[&str]) -> Vec<String> {
        let mut v: Vec<&str> = vec![
            "-name",
            "0123456789abcdef",
            "-machine",
            "q35,sata=off,smbus=off,usb=off,vmport=off",
        ];
        v.extend_from_slice(accel);
        v.extend_from_slice(&[
            "-smp",
            "2",
            "-m",
            "1024M",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        v.extend_from_slice(kernel);
        v.extend_from_slice(&[
            "-append",
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
            "-blockdev",
            "node-name=root,driver=raw,file.driver=file,file.filename=/vm/root.ext4",
            "-device",
            "virtio-blk-pci,drive=root,bus=pcie.0,addr=0x2",
            "-blockdev",
            "node-name=work,driver=raw,file.driver=file,file.filename=/vm/work.ext4",
            "-device",
            "virtio-blk-pci,drive=work,bus=pcie.0,addr=0x3",
            "-netdev",
            "tap,id=net0,ifname=bgtap5,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=net0,mac=06:00:AC:1E:00:05,ctrl_mac_addr=off,ctrl_rx=off,ctrl_rx_extra=off,bus=pcie.0,addr=0x4",
            "-device",
            "virtio-serial-pci,id=serial0,bus=pcie.0,addr=0x5",
            "-chardev",
            "socket,id=agent,path=/run/b/0123/agent.sock,server=on,wait=off",
            "-device",
            "virtserialport,bus=serial0.0,chardev=agent,name=banger.agent",
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-pci,rng=rng0,bus=pcie.0,addr=0x7",
        ]);
        v.extend_from_slice(vsock);
        v.extend_from_slice(&[
            "-chardev",
            "socket,id=qmp,path=/run/b/0123/qmp.sock,server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
            "-serial",
            "stdio",
        ]);
        v.into_iter().map(String::from).collect()
    }

    const TCG: &[&str] = &["-accel", "tcg,thread=multi", "-cpu", "max"];
    const KVM: &[&str] = &["-accel", "kvm", "-cpu", "host"];
    const VSOCK: &[&str] = &["-device", "vhost-vsock-pci,guest-cid=5,bus=pcie.0,addr=0x6"];

    #[test]
    fn tcg_without_initrd_or_vsock() {
        assert_eq!(
            argv(&spec(), Accel::Tcg, false),
            expected(TCG, &["-kernel", "/k/vmlinuz"], &[])
        );
    }

    #[test]
    fn kvm_with_initrd_and_vsock() {
        let mut spec = spec();
        spec.kernel.initrd = Some("/k/initrd.img".into());
        assert_eq!(
            argv(&spec, Accel::Kvm, true),
            expected(
                KVM,
                &["-kernel", "/k/vmlinuz", "-initrd", "/k/initrd.img"],
                VSOCK
            )
        );
    }

    #[test]
    fn tcg_with_initrd_and_vsock_and_kvm_without() {
        let mut with_initrd = spec();
        with_initrd.kernel.initrd = Some("/k/initrd.img".into());
        assert_eq!(
            argv(&with_initrd, Accel::Tcg, true),
            expected(
                TCG,
                &["-kernel", "/k/vmlinuz", "-initrd", "/k/initrd.img"],
                VSOCK
            )
        );
        assert_eq!(
            argv(&spec(), Accel::Kvm, false),
            expected(KVM, &["-kernel", "/k/vmlinuz"], &[])
        );
    }

    #[test]
    fn commas_in_option_values_are_doubled() {
        let mut spec = spec();
        spec.root_disk = "/vm,a/root:x.ext4".into();
        spec.run_dir = "/run/a,b".into();
        spec.kernel = KernelFiles::either("/k,1/vmlinuz");
        let args = argv(&spec, Accel::Tcg, false);
        assert!(args.contains(
            &"node-name=root,driver=raw,file.driver=file,file.filename=/vm,,a/root:x.ext4".into()
        ));
        assert!(args.contains(&"socket,id=qmp,path=/run/a,,b/qmp.sock,server=on,wait=off".into()));
        assert!(
            args.contains(&"socket,id=agent,path=/run/a,,b/agent.sock,server=on,wait=off".into())
        );
        // Plain arguments are not option lists: left as they are.
        assert!(args.contains(&"/k,1/vmlinuz".into()));
        assert_eq!(escape(OsStr::new(",a,,")), OsString::from(",,a,,,,"));
    }

    #[test]
    fn non_utf8_paths_pass_through() {
        let mut spec = spec();
        spec.work_disk = PathBuf::from(OsString::from_vec(b"/vm/w\xff.ext4".to_vec()));
        let args = qemu_args(
            &spec,
            QemuOptions {
                accel: Accel::Tcg,
                vhost_vsock: false,
            },
        )
        .unwrap();
        let expected = OsString::from_vec(
            b"node-name=work,driver=raw,file.driver=file,file.filename=/vm/w\xff.ext4".to_vec(),
        );
        assert!(args.contains(&expected));
    }

    #[test]
    fn kernel_args_are_the_neutral_ones() {
        assert_eq!(
            kernel_args("console=ttyS0  root=/dev/vda rw\tquiet"),
            "console=ttyS0 root=/dev/vda rw quiet"
        );
        assert_eq!(kernel_args(""), "");
    }

    #[test]
    fn the_bzimage_is_booted_else_the_vmlinux() {
        let mut spec = spec();
        spec.kernel = KernelFiles::formats(Some("/k/vmlinux".into()), None);
        assert!(argv(&spec, Accel::Tcg, false).contains(&"/k/vmlinux".to_string()));
        spec.kernel = KernelFiles::formats(None, None);
        let err = qemu_args(
            &spec,
            QemuOptions {
                accel: Accel::Tcg,
                vhost_vsock: false,
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                VmmError::NoKernel {
                    wanted: KernelFormat::BzImage,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "VM 0123456789abcdef: no kernel file to boot (a bzImage (vmlinuz) is what this VMM boots)"
        );
    }

    #[test]
    fn bad_specs_are_refused_before_spawning() {
        let options = QemuOptions {
            accel: Accel::Tcg,
            vhost_vsock: false,
        };
        let check = |edit: fn(&mut VmSpec), needle: &str| {
            let mut spec = spec();
            edit(&mut spec);
            let err = qemu_args(&spec, options).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert_eq!(err.vm_id(), spec.vm_id);
        };
        check(|s| s.vm_id = "a,b".into(), "','");
        check(|s| s.tap = String::new(), "TAP device name is invalid");
        check(
            |s| s.mac = "06:00:AC:1E:00".into(),
            "MAC address is invalid",
        );
        check(
            |s| s.mac = "06:00:AC:1E:00:0,".into(),
            "MAC address is invalid",
        );
        check(|s| s.vcpus = 0, "vCPU count");
        check(|s| s.memory_mib = 0, "memory size");
        check(
            |s| s.run_dir = PathBuf::from(format!("/{}", "r".repeat(100))),
            "at most 107",
        );
    }

    #[test]
    fn accel_needs_a_usable_device_and_cpu_flags() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, "").unwrap();
        let intel = dir.path().join("intel");
        std::fs::write(
            &intel,
            "processor\t: 0\nflags\t\t: fpu vme vmx sse2\nbugs\t\t: vmx_thing\n",
        )
        .unwrap();
        let amd = dir.path().join("amd");
        std::fs::write(&amd, "flags\t\t: fpu svm\n").unwrap();
        let none = dir.path().join("none");
        // "vmx" only in another line's key or as part of a word does not count.
        std::fs::write(&none, "vmx flags\t: x\nflags\t\t: fpu vmxx nosvm\n").unwrap();
        let missing = dir.path().join("missing");

        assert_eq!(accel_for(&dev, &intel), Accel::Kvm);
        assert_eq!(accel_for(&dev, &amd), Accel::Kvm);
        assert_eq!(accel_for(&dev, &none), Accel::Tcg);
        assert_eq!(accel_for(&dev, &missing), Accel::Tcg);
        assert_eq!(accel_for(&missing, &intel), Accel::Tcg);

        let probe = probe_accel(&dev, &intel);
        assert_eq!(probe.cpu_flag, Some("vmx"));
        assert!(probe.reason().starts_with("KVM:"), "{}", probe.reason());
        let probe = probe_accel(&dev, &none);
        assert!(
            probe.reason().contains("neither vmx nor svm"),
            "{}",
            probe.reason()
        );
        let probe = probe_accel(&missing, &amd);
        assert_eq!(probe.cpu_flag, Some("svm"));
        assert!(probe.reason().contains("missing"), "{}", probe.reason());
        assert_eq!(probe.accel().to_string(), "tcg");
    }

    #[test]
    fn locate_prefers_config_then_env_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        let on_path = bin_dir.join(BIN_NAME);
        std::fs::write(&on_path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            &on_path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let path_var = std::env::join_paths([dir.path().join("nothing"), bin_dir.clone()]).unwrap();

        let found = QemuVmm::locate(None, None, Some(&path_var)).unwrap();
        assert_eq!(found.bin(), on_path);
        let found =
            QemuVmm::locate(None, Some(on_path.clone().into()), Some(OsStr::new(""))).unwrap();
        assert_eq!(found.bin(), on_path);
        let found = QemuVmm::locate(Some(on_path.clone()), Some("".into()), None).unwrap();
        assert_eq!(found.bin(), on_path);

        let err = QemuVmm::locate(Some(plain.clone()), None, Some(&path_var)).unwrap_err();
        assert!(matches!(err, LocateError::Config { .. }), "{err}");
        assert!(err.to_string().contains("not executable"), "{err}");
        let err = QemuVmm::locate(None, Some(plain.into()), Some(&path_var)).unwrap_err();
        assert!(err.to_string().starts_with("BANGER_QEMU_BIN="), "{err}");
        let err = QemuVmm::locate(None, None, Some(OsStr::new("/nonexistent"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
        assert!(err.to_string().contains(BIN_NAME), "{err}");
    }

    #[test]
    fn agent_is_behind_the_serial_socket() {
        let vmm = QemuVmm::new("/usr/bin/qemu-system-x86_64")
            .with_accel(Accel::Tcg)
            .with_vhost_vsock(false);
        assert_eq!(vmm.kind(), VmmKind::Qemu);
        assert_eq!(
            vmm.options(),
            QemuOptions {
                accel: Accel::Tcg,
                vhost_vsock: false
            }
        );
        assert_eq!(
            vmm.agent_endpoint(&spec()),
            AgentEndpoint::Unix("/run/b/0123/agent.sock".into())
        );
        assert_eq!(
            vmm.control_socket(Path::new("/run/b/0123")),
            Path::new("/run/b/0123/qmp.sock")
        );
        assert!(vmm.validate(&spec()).is_ok());
    }
}
