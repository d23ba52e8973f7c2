//! banger's VMM backends: the [`Vmm`] seam the daemon holds as `Arc<dyn Vmm>` (chosen by
//! config), its Firecracker implementation ([`firecracker::FirecrackerVmm`]), its QEMU
//! implementation for hosts without hardware virtualization ([`qemu::QemuVmm`]), a
//! hand-written fake for the daemon's tests (`fake::FakeVmm`, compiled only for tests and with
//! the `fake` feature) and the process control every backend shares ([`process`]).
//!
//! A backend turns a [`VmSpec`] (everything one VM needs to boot) into a [`Running`] VMM (its
//! pid, its control socket and where its guest agent answers), asks a guest to shut down, and
//! re-finds a live VMM after the daemon restarted; a backend with snapshots also boots a guest
//! as a template, saves it, restores VMs from it ([`StartMode`]), pauses and resumes them, and
//! clones disks copy-on-write ([`Vmm::clone_disk`]). Stopping is generic ([`process::stop()`]):
//! ask politely, wait a grace period, then `SIGKILL`, and never hang.
//!
//! # Why things are as they are
//!
//! - **Backends own their details; the daemon never asks which one it has.** It hands over
//!   the kernel files an image has ([`KernelFiles`]) and a backend-neutral command line;
//!   the backend picks the file it boots and adds its own arguments (Firecracker:
//!   `pci=off`), names its sockets, and knows when its VMM is ready. Both backends run the
//!   same start template (`launch::start`), each supplying only its own steps.
//! - **The VMM gets its own session** (`setsid` in the child before `exec`, see
//!   [`process::spawn_detached`]). A VM outlives the request that started it and the daemon
//!   itself (a daemon of a newer build replaces the old one while VMs keep running). In its own
//!   session and process group, no signal aimed at the daemon's group reaches it (a Ctrl-C in
//!   the terminal that started `bangerd` by hand, a `kill -- -PGID` of the daemon), and it has
//!   no controlling terminal whose hang-up could kill it. Its pid is its process group id,
//!   which lets a failed start kill the VMM together with anything it spawned.
//! - **Children are reaped by a thread**, one per spawned VMM, blocked in `waitpid` on it.
//!   A VMM that exits on its own (the guest rebooted) never lingers as a zombie of the daemon,
//!   and a start can notice at once that its VMM died and report how. [`process::alive`]
//!   counts a zombie as dead anyway, and [`process::wait_exit`] reaps a zombie child itself, so
//!   nothing depends on that thread's timing.
//! - **Socket paths must be short.** A Unix socket address holds at most 108 bytes
//!   (`sun_path`) including the terminating NUL, so a socket path has at most 107 bytes
//!   ([`MAX_SOCKET_PATH`]). Firecracker's API and vsock sockets (QEMU's QMP and agent
//!   sockets) live in the VM's `run_dir`, which must therefore be a short path (under the
//!   runtime directory, not under a deep state directory). A too-long path is refused before anything is spawned
//!   ([`VmmError::SocketPathTooLong`]) instead of failing inside the VMM with an obscure bind
//!   error.
//! - **Stale sockets are removed before a start.** Firecracker refuses to start when its API
//!   socket path exists, and leaves its socket files behind when it dies. A start first asks
//!   the API socket: a VMM that answers is never disturbed ([`VmmError::AlreadyRunning`]);
//!   otherwise every socket in `run_dir` is stale and is removed ([`process::cleanup_sockets`]).
//! - **A failed start leaves nothing running**, including a start whose future is dropped
//!   (the daemon's cancellation is drop): a guard kills the VMM's process group and removes its
//!   sockets, on a thread of its own when it has to run from `Drop`.
//! - **The library never reads the environment.** [`firecracker::FirecrackerVmm::locate`] and
//!   [`qemu::QemuVmm::locate`] are handed the configured path, `BANGER_FIRECRACKER_BIN` or
//!   `BANGER_QEMU_BIN`, and `PATH` by their caller.

mod copy;
pub mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod firecracker;
mod launch;
pub mod process;
pub mod qemu;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use banger_core::limits::VmLimits;

pub use error::VmmError;
pub use firecracker::FirecrackerVmm;
pub use process::{IdentityError, Signal, StopOutcome, VmmIdentity, VmmProcess};
pub use qemu::QemuVmm;

/// A boxed, sendable future: what the [`Vmm`] methods return (no `async-trait` crate).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Longest Unix socket path, in bytes: `sun_path` is 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Whether `path` fits in a Unix socket address (at most [`MAX_SOCKET_PATH`] bytes).
pub fn socket_path_fits(path: &Path) -> bool {
    path.as_os_str().len() <= MAX_SOCKET_PATH
}

/// Which VMM runs the VMs: the one kind shared with the config, store and API.
pub use banger_core::vmm_kind::{ParseVmmKindError, VmmKind};

/// Everything needed to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM's id: 1 to 64 ASCII letters, digits or `-` (banger uses 16+ hex chars). Passed
    /// to Firecracker as `--id`, to QEMU as `-name`.
    pub vm_id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The kernel files the VM can boot from; the backend picks the one it boots
    /// ([`KernelFiles::pick`]).
    pub kernel: KernelFiles,
    /// The backend-neutral kernel command line (console, root device, panic and reboot
    /// behaviour); each backend adds what its machine needs (Firecracker: `pci=off`).
    pub boot_args: String,
    /// The root file system (read-write).
    pub root_disk: PathBuf,
    /// The work disk (read-write, not the root device).
    pub work_disk: PathBuf,
    /// The host TAP device.
    pub tap: String,
    /// The guest MAC address, e.g. `06:00:AC:1E:00:05`.
    pub mac: String,
    /// The guest's vsock context id (3 or more).
    pub vsock_cid: u32,
    /// The per-VM directory for the VMM's sockets. Must be short: socket paths in it must fit
    /// in [`MAX_SOCKET_PATH`] bytes. Created (mode 0700) when missing. Every Unix socket in it
    /// belongs to the VMM and is removed as stale when no VMM answers there.
    pub run_dir: PathBuf,
    /// Receives the VMM's stdout: the guest serial console (appended).
    pub console_log: PathBuf,
    /// Receives the VMM's stderr (appended).
    pub vmm_log: PathBuf,
}

/// How [`Vmm::launch`] brings a VM's guest up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// A cold boot of the kernel ([`Vmm::start`]).
    Boot,
    /// A cold boot whose guest memory lives in the file `memory`, so that a
    /// [`Vmm::snapshot`] of it (a template) refers to that file instead of copying the
    /// memory into its state (QEMU: `memory-backend-file` with `share=on` and
    /// `x-ignore-shared`; Firecracker writes the memory file at snapshot time instead).
    BootTemplate { memory: PathBuf },
    /// No boot: the VM is restored from a snapshot, with the spec's own devices (TAP, MAC,
    /// disks, sockets), and resumed.
    Restore(Restore),
}

/// What a restore loads, and what changed since the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub snapshot: SnapshotFiles,
    /// Disks to grow to a size in bytes (larger than the template's) once the guest runs:
    /// the backend grows the file and tells the guest, which grows its file system itself.
    pub grown: Vec<(Disk, u64)>,
}

/// One of a VM's two disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disk {
    Root,
    Work,
}

/// Where a snapshot's files are: the VMM's device state and the guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub memory: PathBuf,
}

impl SnapshotFiles {
    /// The files of the snapshot kept in `dir`: `vmstate` and `memory`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            state: dir.join("vmstate"),
            memory: dir.join("memory"),
        }
    }
}

/// How [`Vmm::clone_disk`] made a copy-on-write clone of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskClone {
    /// A qcow2 file whose backing file is (a hard link to) the template's raw disk.
    Qcow2Overlay,
    /// A reflink (the file system shares the blocks until either side writes them).
    Reflink,
    /// A sparse copy (only the blocks holding data are written).
    SparseCopy,
}

impl DiskClone {
    /// How `vm show` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2Overlay => "qcow2 overlay",
            Self::Reflink => "reflink",
            Self::SparseCopy => "sparse copy",
        }
    }
}

impl fmt::Display for DiskClone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kernel image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelFormat {
    /// An uncompressed ELF kernel, `vmlinux`: what Firecracker boots.
    Vmlinux,
    /// A compressed x86 boot image, `vmlinuz`: what QEMU boots.
    BzImage,
}

impl KernelFormat {
    /// How messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Vmlinux => "an ELF vmlinux",
            Self::BzImage => "a bzImage (vmlinuz)",
        }
    }
}

/// A VM's kernel image files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelImage {
    /// One file, an ELF `vmlinux` or a bzImage, of a format nobody recorded (an image
    /// registered with its own kernel: checked to be one of the two then). Every backend
    /// boots it as it is.
    Either(PathBuf),
    /// An imported kernel's files by format (its `vmlinux`, and its `vmlinuz` when it has
    /// one).
    Formats {
        vmlinux: Option<PathBuf>,
        bzimage: Option<PathBuf>,
    },
}

/// The kernel files the daemon has for a VM, handed to the backend in [`VmSpec::kernel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    pub image: KernelImage,
    pub initrd: Option<PathBuf>,
}

impl KernelFiles {
    /// One kernel file of either format ([`KernelImage::Either`]), no initrd.
    pub fn either(path: impl Into<PathBuf>) -> Self {
        Self {
            image: KernelImage::Either(path.into()),
            initrd: None,
        }
    }

    /// An imported kernel's files by format ([`KernelImage::Formats`]), no initrd.
    pub fn formats(vmlinux: Option<PathBuf>, bzimage: Option<PathBuf>) -> Self {
        Self {
            image: KernelImage::Formats { vmlinux, bzimage },
            initrd: None,
        }
    }

    /// The same kernel with `initrd`.
    pub fn with_initrd(mut self, initrd: Option<PathBuf>) -> Self {
        self.initrd = initrd;
        self
    }

    /// The file a backend that boots `format` best boots: the file of that format, else the
    /// other one (QEMU boots a `vmlinux` that has a PVH entry point; a Firecracker with
    /// bzImage support boots a bzImage, an older one refuses it and says so); `None` when
    /// there is no kernel file at all. Behaviour as before the backends chose: each prefers
    /// its format and falls back to the other.
    pub fn pick(&self, format: KernelFormat) -> Option<&Path> {
        match &self.image {
            KernelImage::Either(path) => Some(path),
            KernelImage::Formats { vmlinux, bzimage } => {
                let (first, second) = match format {
                    KernelFormat::Vmlinux => (vmlinux, bzimage),
                    KernelFormat::BzImage => (bzimage, vmlinux),
                };
                first.as_deref().or(second.as_deref())
            }
        }
    }

    /// [`pick`](Self::pick), or [`VmmError::NoKernel`] naming the VM `vm_id`.
    pub fn pick_for(&self, vm_id: &str, format: KernelFormat) -> Result<&Path, VmmError> {
        self.pick(format).ok_or_else(|| VmmError::NoKernel {
            vm_id: vm_id.to_string(),
            wanted: format,
        })
    }
}

/// Where the guest agent answers, from the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentEndpoint {
    /// Firecracker's hybrid vsock: connect to `uds`, send `CONNECT <port>\n`, read `OK ...\n`
    /// (`banger_agent_proto::client::connect_hybrid_vsock`).
    HybridVsock { uds: PathBuf, port: u32 },
    /// A Unix socket that is the agent's stream, e.g. QEMU's chardev socket wired to the
    /// guest's virtio-serial port (`banger_agent_proto::client::connect_unix`).
    Unix(PathBuf),
}

/// A VMM process that runs (or ran) a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The VM it runs ([`VmSpec::vm_id`]); errors name it.
    pub vm_id: String,
    /// The VMM process. A VMM started by [`Vmm::start`] leads its own session and process
    /// group, so this is also its process group id.
    pub pid: u32,
    /// When the VMM process started ([`process::start_time`]): with the pid, what identifies
    /// it. Stored with the VM, so a pid reused by another process is never taken for it.
    pub start_time: Option<u64>,
    /// The VMM's control socket: Firecracker's API socket (QEMU: its QMP socket), in the VM's
    /// run directory.
    pub api_socket: PathBuf,
    /// Where the guest agent answers.
    pub agent: AgentEndpoint,
}

impl Running {
    /// What [`process::identify`] checks before anything signals this VMM: its pid, start
    /// time and run directory (where its control socket lives).
    pub fn identity(&self) -> process::VmmIdentity {
        process::VmmIdentity {
            pid: self.pid,
            start_time: self.start_time,
            run_dir: self
                .api_socket
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }
}

/// A VMM backend. The daemon holds one as `Arc<dyn Vmm>`.
///
/// Implementations: [`firecracker::FirecrackerVmm`], [`qemu::QemuVmm`] (QMP socket as
/// `api_socket`, `system_powerdown` for [`request_shutdown`](Vmm::request_shutdown), the agent
/// over a virtio-serial chardev socket, [`AgentEndpoint::Unix`]), `fake::FakeVmm` (tests; the `fake` feature).
pub trait Vmm: Send + Sync + fmt::Debug {
    /// Which VMM this is.
    fn kind(&self) -> VmmKind;

    /// The largest VM this backend accepts (vCPUs, memory, disk sizes), within banger's own
    /// caps. The daemon refuses a `vm create` or `vm set` beyond them before it makes or stores
    /// anything. Defaults to [`VmmKind::limits`] of [`kind`](Vmm::kind).
    fn limits(&self) -> VmLimits {
        self.kind().limits()
    }

    /// Checks what can be checked without touching the host: the VM id, socket path lengths
    /// in its run directory, a kernel file this backend boots, and what the VMM takes as
    /// text (Firecracker: UTF-8 paths; QEMU: TAP name, MAC). [`start`](Vmm::start) checks
    /// the same first; the daemon calls this before it creates anything for a new VM.
    fn validate(&self, spec: &VmSpec) -> Result<(), VmmError>;

    /// Spawns the VMM detached ([`process::spawn_detached`]: own session and process group, so
    /// it outlives the request and the daemon), stdout appended to `console_log`, stderr to
    /// `vmm_log`, configures it fully and boots the guest.
    ///
    /// Refuses with [`VmmError::AlreadyRunning`] when a VMM already answers on the VM's
    /// control socket; removes stale sockets otherwise. On any failure — and when the future
    /// is dropped before it completes — the VMM is killed and its sockets removed: nothing is
    /// left running.
    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Running, VmmError>>;

    /// [`start`](Vmm::start) in the given mode: a cold boot, a boot for a template, or a
    /// restore from a snapshot. The same guarantees: nothing is left running on failure or
    /// when the future is dropped. A backend without snapshots refuses the last two with
    /// [`VmmError::Unsupported`] (the default).
    fn launch<'a>(
        &'a self,
        spec: &'a VmSpec,
        mode: &'a StartMode,
    ) -> BoxFuture<'a, Result<Running, VmmError>> {
        match mode {
            StartMode::Boot => self.start(spec),
            _ => Box::pin(async move { Err(self.unsupported(&spec.vm_id, "snapshots")) }),
        }
    }

    /// Whether this backend saves and restores snapshots ([`StartMode::BootTemplate`],
    /// [`StartMode::Restore`], [`snapshot`](Vmm::snapshot)): warm-start templates are made
    /// only for one that does.
    fn snapshots(&self) -> bool {
        false
    }

    /// Pauses the guest's vCPUs (its memory and devices stay as they are).
    fn pause<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move { Err(self.unsupported(&run.vm_id, "pausing a VM")) })
    }

    /// Resumes a paused guest.
    fn resume<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move { Err(self.unsupported(&run.vm_id, "resuming a VM")) })
    }

    /// Pauses the guest and saves its device state (and its memory, unless the VM was
    /// launched with [`StartMode::BootTemplate`], whose memory file is the snapshot's) into
    /// `files`. The VM stays paused (until [`resume`](Vmm::resume)); its disks must be kept
    /// as they are now by the caller. A backend may carry the memory in `files.state` and
    /// write no `files.memory` (QEMU, for a VM not booted as a template): a restore from
    /// these files then loads the memory from the state instead of mapping a memory file.
    fn snapshot<'a>(
        &'a self,
        run: &'a Running,
        files: &'a SnapshotFiles,
    ) -> BoxFuture<'a, Result<(), VmmError>> {
        let _ = files;
        Box::pin(async move { Err(self.unsupported(&run.vm_id, "snapshots")) })
    }

    /// Makes `dest` a copy-on-write clone of the disk `base` (which must not change
    /// afterwards) of `size` bytes (at least `base`'s), in O(1) where the backend and the
    /// file system allow; says how.
    fn clone_disk<'a>(
        &'a self,
        base: &'a Path,
        dest: &'a Path,
        size: u64,
    ) -> BoxFuture<'a, Result<DiskClone, VmmError>> {
        let _ = (base, size);
        Box::pin(async move { Err(self.unsupported(&dest.display().to_string(), "disk clones")) })
    }

    /// Makes `dest` a copy of the disk `src` of a VM that keeps running on `src` afterwards
    /// (a fork: the caller pauses the VM first and resumes it after): neither sees the
    /// other's later writes. A reflink where the file system has them, else a sparse copy
    /// ([`banger_disk::copy::clone_file`]); a backend whose disk files refer to others (QEMU's
    /// qcow2 overlays) overrides it to carry those along.
    fn copy_disk<'a>(
        &'a self,
        src: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskClone, VmmError>> {
        Box::pin(async move { copy::copy_file(src, dest).await })
    }

    /// Asks the guest to shut down (Firecracker: `SendCtrlAltDel`; QEMU: `system_powerdown`)
    /// and returns once the VMM accepted the request, not when the VMM has exited: see
    /// [`process::stop()`] for the whole sequence.
    fn request_shutdown<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>>;

    /// Finds a live VMM running `spec`'s VM by its control socket (it must answer, and report
    /// this VM's id) and its pid (the socket's peer credentials, else a `/proc/*/cmdline` scan
    /// for the socket path), whatever pid was stored before. `None` when nothing live answers.
    fn find_live<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Option<Running>>;

    /// Where the guest agent of `spec`'s VM answers once it runs.
    fn agent_endpoint(&self, spec: &VmSpec) -> AgentEndpoint;

    /// The control socket of the VMM of a VM whose run directory is `run_dir` (Firecracker:
    /// `api.sock`, QEMU: `qmp.sock`): the [`Running::api_socket`] of a VMM this backend
    /// starts.
    fn control_socket(&self, run_dir: &Path) -> PathBuf;

    /// The error of an operation this backend does not have.
    fn unsupported(&self, vm_id: &str, what: &'static str) -> VmmError {
        VmmError::Unsupported {
            vm_id: vm_id.to_string(),
            vmm: self.kind(),
            what,
        }
    }
}

/// Longest VM id Firecracker accepts as `--id`.
pub const MAX_VM_ID_LEN: usize = 64;

/// Checks a VM id: 1 to [`MAX_VM_ID_LEN`] ASCII letters, digits or `-` (what Firecracker
/// accepts as `--id`, and safe in file names).
pub fn validate_vm_id(vm_id: &str) -> Result<(), VmmError> {
    let reason = if vm_id.is_empty() {
        Some("it is empty".to_string())
    } else if vm_id.len() > MAX_VM_ID_LEN {
        Some(format!(
            "it is {} bytes long, at most {MAX_VM_ID_LEN} are allowed",
            vm_id.len()
        ))
    } else {
        vm_id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            .map(|c| format!("{c:?} is not an ASCII letter, digit or '-'"))
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(VmmError::InvalidVmId {
            vm_id: vm_id.to_string(),
            reason,
        }),
    }
}

/// Checks that a socket path fits in `sun_path` ([`MAX_SOCKET_PATH`]).
pub fn check_socket_path(vm_id: &str, path: &Path) -> Result<(), VmmError> {
    if socket_path_fits(path) {
        Ok(())
    } else {
        Err(VmmError::SocketPathTooLong {
            vm_id: vm_id.to_string(),
            path: path.to_path_buf(),
            len: path.as_os_str().len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_has_its_kinds_limits() {
        // The fake stands in for its kind.
        let fake = fake::FakeVmm::new();
        assert_eq!(Vmm::limits(&fake), fake.kind().limits());
    }

    #[test]
    fn each_format_prefers_its_file_and_takes_the_other() {
        use KernelFormat::{BzImage, Vmlinux};
        let (elf, bz) = (PathBuf::from("/k/vmlinux"), PathBuf::from("/k/vmlinuz"));
        let both = KernelFiles::formats(Some(elf.clone()), Some(bz.clone()));
        assert_eq!(both.pick(Vmlinux), Some(elf.as_path()));
        assert_eq!(both.pick(BzImage), Some(bz.as_path()));
        let only_elf = KernelFiles::formats(Some(elf.clone()), None);
        assert_eq!(only_elf.pick(BzImage), Some(elf.as_path()));
        let only_bz = KernelFiles::formats(None, Some(bz.clone()));
        assert_eq!(only_bz.pick(Vmlinux), Some(bz.as_path()));
        let either = KernelFiles::either("/k/kernel").with_initrd(Some("/k/initrd".into()));
        assert_eq!(either.pick(Vmlinux), Some(Path::new("/k/kernel")));
        assert_eq!(either.pick(BzImage), Some(Path::new("/k/kernel")));
        assert_eq!(either.initrd.as_deref(), Some(Path::new("/k/initrd")));
        let none = KernelFiles::formats(None, None);
        assert_eq!(none.pick(Vmlinux), None);
        let err = none.pick_for("vm-1", BzImage).unwrap_err();
        assert!(
            matches!(&err, VmmError::NoKernel { vm_id, wanted: BzImage } if vm_id == "vm-1"),
            "{err}"
        );
    }

    #[test]
    fn vm_ids_follow_firecracker() {
        assert!(validate_vm_id("0123456789abcdef").is_ok());
        assert!(validate_vm_id("vm-1").is_ok());
        assert!(validate_vm_id(&"a".repeat(64)).is_ok());
        for bad in ["", "a_b", "a b", "ä", "../x"] {
            assert!(
                matches!(validate_vm_id(bad), Err(VmmError::InvalidVmId { .. })),
                "{bad:?}"
            );
        }
        let err = validate_vm_id(&"a".repeat(65)).unwrap_err();
        assert!(err.to_string().contains("65 bytes"), "{err}");
    }

    #[test]
    fn socket_paths_must_fit_sun_path() {
        let ok = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH - 1)));
        assert!(socket_path_fits(&ok));
        assert!(check_socket_path("vm", &ok).is_ok());
        let long = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH)));
        assert!(!socket_path_fits(&long));
        let err = check_socket_path("vm", &long).unwrap_err();
        assert!(
            matches!(err, VmmError::SocketPathTooLong { len: 108, .. }),
            "{err}"
        );
    }
}
