//! Request and response bodies.

use std::path::PathBuf;

use banger_core::build::BuildInfo;
use serde::{Deserialize, Serialize};

/// `GET /v1/status`: who the running daemon is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub build: BuildInfo,
    pub pid: u32,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config_file: PathBuf,
    pub log_file: PathBuf,
    /// Seconds since the Unix epoch when the daemon started.
    pub started_at: u64,
    /// Network listeners the daemon runs besides its socket (DNS, web UI...).
    pub listeners: Vec<Listener>,
    pub ops: OpCounts,
    /// Warnings from loading the config file.
    #[serde(default)]
    pub config_warnings: Vec<String>,
}

/// A network service of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    pub address: String,
}

/// Request accounting since the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OpCounts {
    pub in_flight: u64,
    pub completed: u64,
    /// Requests whose client went away before the answer: their work was dropped.
    pub cancelled: u64,
}

/// `POST /v1/shutdown`: the daemon stops after answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReply {
    pub pid: u32,
}

/// Lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Being created: disks prepared, VMM starting.
    Creating,
    Running,
    Stopped,
    /// Creation or start failed; `banger vm delete` removes it.
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub state: VmState,
    /// The image's name.
    pub image: String,
    pub image_id: String,
    /// `firecracker` or `qemu`.
    pub vmm: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub work_disk_bytes: u64,
    pub nat: bool,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub tap: Option<String>,
    pub vsock_cid: Option<u32>,
    /// The VMM process while running.
    pub pid: Option<u32>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub dir: PathBuf,
    pub console_log: PathBuf,
    pub vmm_log: PathBuf,
    /// Why the VM is in the `error` state.
    pub error: Option<String>,
    /// The prepared workspace, if any (guest path).
    pub workspace: Option<String>,
}

/// `POST /v1/vms`: only the fields the user set; the daemon fills in defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPUs, memory and disk sizes (flattened: the same top-level JSON keys as `vm set`).
    #[serde(flatten)]
    pub resources: VmSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<String>,
}

/// One line of a streamed long operation (NDJSON): stages, then a result or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<T> {
    Stage {
        stage: String,
        #[serde(default)]
        detail: String,
        elapsed_ms: u64,
    },
    Result {
        result: T,
    },
    Error {
        error: crate::error::ApiError,
    },
}

/// What `POST /v1/vms/actions` does to each VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmAction {
    Start,
    Stop,
    Restart,
    Kill,
    Delete,
    Set,
}

impl VmAction {
    pub fn past_tense(self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Stop => "stopped",
            Self::Restart => "restarted",
            Self::Kill => "killed",
            Self::Delete => "deleted",
            Self::Set => "updated",
        }
    }
}

/// A VM's resources as requested by `vm create` and `vm set`: only what the user gave.
/// Signed so that a zero or negative value reaches validation instead of wrapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_disk_bytes: Option<u64>,
}

/// `POST /v1/vms/actions`: one action on many VM references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub action: VmAction,
    pub refs: Vec<String>,
    /// For `kill`: the signal name or number (default KILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// For `set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<VmSettings>,
}

/// The outcome for one reference, in the order the references were first given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// The reference as given.
    pub reference: String,
    /// The VM it resolved to (name), when it resolved.
    pub vm: Option<String>,
    pub error: Option<crate::error::ApiError>,
    /// A note for the user (e.g. "takes effect at next start").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `GET /v1/vms/{ref}/stats`: the VMM process as /proc sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStats {
    pub name: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub cpu_user_secs: f64,
    pub cpu_system_secs: f64,
    pub rss_bytes: u64,
    pub threads: u32,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    /// Bytes allocated on the host for the root and work disks (sparse files).
    pub root_disk_allocated: u64,
    pub work_disk_allocated: u64,
}

/// `GET /v1/vms/{ref}/ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub name: String,
    pub rtt_ms: f64,
    pub agent_version: String,
}

/// `GET /v1/ssh`: how to reach guests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshInfo {
    pub private_key: PathBuf,
    pub public_key: String,
    /// How long clients wait for a guest's sshd (config `ssh_wait_secs`).
    pub wait_secs: u64,
}

/// An image as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub rootfs_bytes: u64,
    pub rootfs: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub kernel_ref: Option<String>,
    pub distro: Option<String>,
    pub arch: Option<String>,
    pub description: Option<String>,
    pub created_at: String,
    /// Names of VMs using it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// `POST /v1/images`: register local files as a managed image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterImage {
    pub name: String,
    pub rootfs: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl RegisterImage {
    /// The two ways to name a kernel are exclusive, and one is required. Checked by the CLI
    /// and again by the daemon.
    pub fn check_kernel_source(&self) -> Result<(), String> {
        let files = self.kernel.is_some() || self.initrd.is_some() || self.modules.is_some();
        match (files, self.kernel_ref.is_some()) {
            (true, true) => {
                Err("--kernel-ref cannot be combined with --kernel/--initrd/--modules".into())
            }
            (false, false) => {
                Err("a kernel is required: give --kernel FILE or --kernel-ref NAME".into())
            }
            (true, false) if self.kernel.is_none() => {
                Err("--initrd and --modules need --kernel".into())
            }
            _ => Ok(()),
        }
    }
}

/// An imported kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
    /// Uncompressed ELF kernel (Firecracker).
    pub vmlinux: Option<PathBuf>,
    /// The kernel as shipped (QEMU).
    pub vmlinuz: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub sha256: String,
    pub source: String,
    pub created_at: String,
    /// Names of images booting it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// `POST /v1/kernels`: import a kernel from a directory tree (`/` works on a host with a
/// kernel package installed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportKernel {
    pub name: String,
    pub from: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/images/bootstrap`: build an image from distribution packages (streamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapImage {
    /// `debian-SUITE`, e.g. `debian-bookworm`.
    pub name: String,
    /// The kernel it boots [default: the most recently imported].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
    /// Root filesystem size in bytes [default: 1.5 x the tree, at least 1 GiB].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `POST /v1/images/import`: register a bundle (`.tar.zst` with `rootfs.ext4` and
/// `manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportBundle {
    pub path: PathBuf,
    /// Register under this name instead of the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Boot this kernel instead of the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
}
