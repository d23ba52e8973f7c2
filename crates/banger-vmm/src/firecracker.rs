//! The Firecracker backend: [`FirecrackerVmm`].
//!
//! Start sequence (the shared start template, `launch::start`, with Firecracker's steps),
//! each step bounded by a timeout ([`Timeouts`]):
//!
//! 1. check the spec ([`Vmm::validate`]): the id Firecracker takes as `--id`, socket paths
//!    that fit in `sun_path`, a kernel file (the ELF `vmlinux`, else the bzImage), paths the
//!    API takes as JSON strings;
//! 2. create `run_dir`; refuse if a VMM already answers on `run_dir/api.sock`, otherwise
//!    remove stale sockets there (Firecracker refuses an existing API socket path);
//! 3. spawn `<bin> --api-sock <run_dir>/api.sock --id <vm_id>` detached, in the directory of
//!    the VM's disks (see "Disks" below), stdout appended to the console log, stderr to the
//!    VMM log;
//! 4. wait for `GET /` to answer, noticing an early exit (then the error carries the log's
//!    tail);
//! 5. `PUT` the configuration ([`boot_requests`]): `/machine-config`, `/boot-source`,
//!    `/drives/root`, `/drives/work`, `/network-interfaces/eth0`, `/vsock` (host side at
//!    `run_dir/vsock.sock`), then `/actions` `InstanceStart`. The kernel command line is the
//!    daemon's backend-neutral one plus `pci=off` ([`kernel_args`]): Firecracker's machine
//!    has no PCI bus.
//!
//! Any failure after the spawn kills the VMM's process group and removes its sockets.
//!
//! # Snapshots
//!
//! - **A template is a normal boot** ([`StartMode::BootTemplate`] sends the same requests as
//!   [`StartMode::Boot`]): Firecracker writes the guest memory into a file only when the
//!   snapshot is taken. [`Vmm::snapshot`] pauses the vCPUs (`PATCH /vm {"state":"Paused"}`)
//!   and sends `PUT /snapshot/create` (a `Full` snapshot: device state into `vmstate`, the
//!   whole memory into `memory`). Any running VM can be saved this way.
//! - **A restore boots nothing** ([`restore_requests`]): a fresh Firecracker gets exactly one
//!   request, `PUT /snapshot/load`, with `mem_backend {"backend_type": "File"}` on the
//!   template's memory file (Firecracker maps it `MAP_PRIVATE`: pages are read from the
//!   file on first touch and copied only when the guest writes them, so the template's file
//!   never changes and unwritten pages are shared by every VM restored from it),
//!   `network_overrides` naming the VM's own TAP for `eth0`, `vsock_override` naming its own
//!   vsock socket, and `resume_vm: true`. No machine-config, boot-source, drive or
//!   `InstanceStart` request: those are refused once a snapshot is loaded, and the other way
//!   round. The guest keeps the template's MAC and vsock CID in its device state; the MAC
//!   is replaced by the agent's identity step, and the CID does not matter behind hybrid
//!   vsock (the host side is the VM's own socket).
//! - **Disks.** A snapshot records each drive's `path_on_host` as it was given, and
//!   Firecracker reopens exactly those paths on load: the spec
//!   (`snapshot-support.md`) asks that disks, TAPs and sockets be "accessible at the same
//!   relative paths to the new Firecracker process as they were to the original one". The
//!   overrides cover the TAP and the vsock socket, nothing covers drives. So every VM's
//!   drives are given relative to the VMM's working directory, and the VMM is spawned in the
//!   directory of the VM's disks: banger names them `root.ext4` and `work.ext4` in the VM's
//!   own directory, the template's too, so a snapshot names `root.ext4`, and a VM restored
//!   from it opens *its own* `root.ext4` (its clone) in its own directory, never the
//!   template's. (Firecracker's jailer gets the same effect with a chroot per VM.) A VM
//!   whose two disks are in different directories keeps full paths and cannot be restored
//!   ([`restore_requests`] refuses it).
//! - **Disk growth after a restore** ([`Restore::grown`]): the file is extended (sparsely)
//!   after the load, then `PATCH /drives/{id}` with the same `path_on_host` makes Firecracker
//!   re-open it, re-read its size and notify the guest of the new capacity (a virtio config
//!   change); the guest agent grows the file system.
//!
//! Firecracker writes its own log to stdout unless told otherwise, so without a `--log-path`
//! its log lines share the console log with the guest's serial console; stderr carries what
//! it prints before its logger exists.

pub mod api;
pub mod clone;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent_proto::wire::AGENT_VSOCK_PORT;

use crate::launch::{self, Backend, Launch};
pub use crate::process::LocateError;
use crate::process::{self, BinarySource};
use crate::{
    AgentEndpoint, BoxFuture, Disk, DiskClone, KernelFormat, Restore, Running, SnapshotFiles,
    StartMode, VmSpec, Vmm, VmmError, VmmKind, check_socket_path, validate_vm_id,
};
use api::{
    ActionType, ApiClient, ApiError, BootSource, Drive, InstanceAction, MachineConfig, MemBackend,
    MemBackendType, NetworkInterface, NetworkOverride, PartialDrive, SnapshotCreate, SnapshotLoad,
    SnapshotType, VmRunState, VmStateChange, Vsock, VsockOverride,
};
use hyper::Method;

/// File name of the API socket in the VM's run directory.
pub const API_SOCKET: &str = "api.sock";
/// File name of the vsock device's host-side socket in the VM's run directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// The environment variable naming the binary (read by the caller, see
/// [`FirecrackerVmm::locate`]).
pub const BIN_ENV: &str = SOURCE.env_var;
/// The binary looked up on `PATH`.
pub const BIN_NAME: &str = SOURCE.name;

/// Where the binary comes from (see [`process::locate_binary`]).
pub const SOURCE: BinarySource = banger_core::probe::FIRECRACKER;
/// The guest network interface id.
pub const IFACE_ID: &str = "eth0";

/// Pause between two readiness probes.
const READY_POLL: Duration = Duration::from_millis(10);
/// How long to wait for the exit status after the API stopped answering mid-start.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// The API socket of a VM whose run directory is `run_dir`.
pub fn api_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(API_SOCKET)
}

/// The vsock host-side socket of a VM whose run directory is `run_dir`.
pub fn vsock_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(VSOCK_SOCKET)
}

/// How long the Firecracker backend waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From spawn until the API socket answers `GET /`.
    pub ready: Duration,
    /// One configuration or action request (`InstanceStart` loads the kernel).
    pub api: Duration,
    /// One probe of a socket that may be stale (readiness, [`Vmm::find_live`]).
    pub probe: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            ready: Duration::from_secs(5),
            api: Duration::from_secs(10),
            probe: Duration::from_secs(1),
        }
    }
}

/// Runs VMs with Firecracker.
#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    bin: PathBuf,
    env: Vec<(OsString, OsString)>,
    timeouts: Timeouts,
}

impl FirecrackerVmm {
    /// A backend running `bin`, with default [`Timeouts`].
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            env: Vec::new(),
            timeouts: Timeouts::default(),
        }
    }

    /// Chooses the binary: the config file's `firecracker_bin`, else `BANGER_FIRECRACKER_BIN`
    /// (`env_bin`), else `firecracker` in a directory of `path_var` (`PATH`). The caller reads
    /// the environment; empty values count as unset. An explicit choice that is not an
    /// executable file is an error, not a reason to fall through to the next source.
    pub fn locate(
        config_bin: Option<PathBuf>,
        env_bin: Option<OsString>,
        path_var: Option<&OsStr>,
    ) -> Result<Self, LocateError> {
        process::locate_binary(&SOURCE, config_bin, env_bin, path_var).map(Self::new)
    }

    /// Adds a variable to the environment the VMM is started with (on top of the daemon's).
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn client(&self, socket: &Path, timeout: Duration) -> ApiClient {
        ApiClient::new(socket).with_timeout(timeout)
    }

    fn validate_and_plan(&self, spec: &VmSpec, mode: &StartMode) -> Result<Plan, VmmError> {
        validate_vm_id(&spec.vm_id)?;
        check_socket_path(&spec.vm_id, &api_socket(&spec.run_dir))?;
        check_socket_path(&spec.vm_id, &vsock_socket(&spec.run_dir))?;
        plan(spec, mode)
    }

    fn api_error(vm_id: &str) -> impl Fn(ApiError) -> VmmError + '_ {
        move |source| VmmError::Api {
            vm_id: vm_id.to_string(),
            source: Box::new(source),
        }
    }

    /// `PATCH /vm` to `state`.
    async fn set_state(&self, run: &Running, state: VmRunState) -> Result<(), VmmError> {
        self.client(&run.api_socket, self.timeouts.api)
            .patch("/vm", &VmStateChange { state })
            .await
            .map_err(Self::api_error(&run.vm_id))
    }
}

/// Firecracker's steps of the start template: spawned with only its API socket and VM id,
/// then configured and booted through its API.
impl Backend for FirecrackerVmm {
    type Plan = Plan;
    type ProbeError = ApiError;

    fn bin(&self) -> &Path {
        &self.bin
    }

    fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    fn ready_wait(&self) -> (Duration, Duration) {
        (self.timeouts.ready, READY_POLL)
    }

    fn plan(&self, spec: &VmSpec, mode: &StartMode) -> Result<Plan, VmmError> {
        self.validate_and_plan(spec, mode)
    }

    fn cwd(&self, plan: &Plan) -> Option<PathBuf> {
        plan.cwd.clone()
    }

    fn control_arg(&self, run_dir: &Path) -> OsString {
        api_socket(run_dir).into_os_string()
    }

    async fn probe(&self, socket: &Path) -> Result<Option<u32>, ApiError> {
        let (_, peer) = self
            .client(socket, self.timeouts.probe)
            .describe_with_peer()
            .await?;
        Ok(peer)
    }

    fn is_connect(error: &ApiError) -> bool {
        error.is_connect()
    }

    fn args(&self, spec: &VmSpec, _: &Plan, control_socket: &Path) -> Vec<OsString> {
        vec![
            "--api-sock".into(),
            control_socket.into(),
            "--id".into(),
            spec.vm_id.clone().into(),
        ]
    }

    async fn query_vm(&self, socket: &Path) -> Result<(Option<String>, Option<u32>), ApiError> {
        let (info, peer) = self
            .client(socket, self.timeouts.probe)
            .describe_with_peer()
            .await?;
        Ok((Some(info.id), peer))
    }

    async fn ready(&self, socket: &Path) -> Result<(), ApiError> {
        self.client(socket, self.timeouts.probe)
            .describe()
            .await
            .map(drop)
    }

    /// Sends the plan's requests (a boot's configuration and `InstanceStart`, or a restore's
    /// `snapshot/load`), then grows the disks a restore grows: the file first, then
    /// `PATCH /drives/{id}`, which makes Firecracker re-read its size and tell the guest.
    async fn configure(&self, launch: &Launch<'_>, plan: &Plan) -> Result<(), VmmError> {
        let client = self.client(launch.control_sock, self.timeouts.api);
        let vm_id = &launch.spec.vm_id;
        let mut requests = plan.requests.clone();
        for grow in &plan.grow {
            grow_file(vm_id, &grow.file, grow.size)?;
            requests.push(request(
                Method::PATCH,
                &format!("/drives/{}", grow.drive_id),
                PartialDrive {
                    drive_id: grow.drive_id.to_string(),
                    path_on_host: grow.path_on_host.clone(),
                },
            ));
        }
        for request in &requests {
            let sent = client
                .send(request.method.clone(), &request.path, &request.body)
                .await;
            if let Err(source) = sent {
                if !matches!(source, ApiError::Status { .. }) {
                    // The API stopped answering: if the VMM died, say so with its log.
                    let mut spawned = launch.spawned.clone();
                    if let Ok(exit) = tokio::time::timeout(EXIT_GRACE, spawned.wait()).await {
                        return Err(launch.exited(&self.bin, exit));
                    }
                }
                return Err(VmmError::Api {
                    vm_id: launch.spec.vm_id.clone(),
                    source: Box::new(source),
                });
            }
        }
        Ok(())
    }
}

impl Vmm for FirecrackerVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn validate(&self, spec: &VmSpec) -> Result<(), VmmError> {
        self.validate_and_plan(spec, &StartMode::Boot).map(drop)
    }

    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Running, VmmError>> {
        Box::pin(launch::start(self, spec))
    }

    /// A boot ([`StartMode::Boot`] and [`StartMode::BootTemplate`] alike: Firecracker writes
    /// the memory file when the snapshot is taken), or a restore (`PUT /snapshot/load`, no
    /// `InstanceStart`): see the module docs.
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

    /// `PATCH /vm {"state": "Paused"}`.
    fn pause<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(self.set_state(run, VmRunState::Paused))
    }

    /// `PATCH /vm {"state": "Resumed"}`.
    fn resume<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(self.set_state(run, VmRunState::Resumed))
    }

    /// `PATCH /vm` paused, then `PUT /snapshot/create` (a full snapshot): the device state
    /// into `files.state`, the guest memory into `files.memory`. Any running VM can be saved
    /// (Firecracker always writes the memory); it stays paused.
    fn snapshot<'a>(
        &'a self,
        run: &'a Running,
        files: &'a SnapshotFiles,
    ) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move {
            let body = SnapshotCreate {
                snapshot_type: SnapshotType::Full,
                snapshot_path: utf8(&run.vm_id, "snapshot state", &files.state)?.to_string(),
                mem_file_path: utf8(&run.vm_id, "snapshot memory", &files.memory)?.to_string(),
            };
            self.set_state(run, VmRunState::Paused).await?;
            self.client(&run.api_socket, self.timeouts.api)
                .put("/snapshot/create", &body)
                .await
                .map_err(Self::api_error(&run.vm_id))
        })
    }

    /// [`clone::clone_raw`]: a reflink, else a sparse copy, grown to `size`.
    fn clone_disk<'a>(
        &'a self,
        base: &'a Path,
        dest: &'a Path,
        size: u64,
    ) -> BoxFuture<'a, Result<DiskClone, VmmError>> {
        Box::pin(clone::clone_raw(base, dest, size))
    }

    fn request_shutdown<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move {
            self.client(&run.api_socket, self.timeouts.api)
                .action(ActionType::SendCtrlAltDel)
                .await
                .map_err(|source| VmmError::Api {
                    vm_id: run.vm_id.clone(),
                    source: Box::new(source),
                })
        })
    }

    fn find_live<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Option<Running>> {
        Box::pin(launch::find_live(self, spec))
    }

    fn agent_endpoint(&self, spec: &VmSpec) -> AgentEndpoint {
        AgentEndpoint::HybridVsock {
            uds: vsock_socket(&spec.run_dir),
            port: AGENT_VSOCK_PORT,
        }
    }

    fn control_socket(&self, run_dir: &Path) -> PathBuf {
        api_socket(run_dir)
    }
}

/// One request of a start.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub body: serde_json::Value,
}

/// What a start does once the VMM answers, and where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The VMM's working directory: the directory of the VM's disks, which its drives name
    /// relative to it (see the module docs). `None` when the disks are in two directories
    /// (drives then have full paths; such a VM cannot be restored).
    pub cwd: Option<PathBuf>,
    /// The requests, in order.
    pub requests: Vec<ApiRequest>,
    /// Disks a restore grows.
    grow: Vec<Grow>,
}

/// A disk a restore grows: its file, its new size, and its drive.
#[derive(Debug, Clone, PartialEq)]
struct Grow {
    file: PathBuf,
    size: u64,
    drive_id: &'static str,
    path_on_host: String,
}

/// The drive id of a disk.
pub fn drive_id(disk: Disk) -> &'static str {
    match disk {
        Disk::Root => "root",
        Disk::Work => "work",
    }
}

/// The paths the drives are given, and the VMM's working directory: the disks' file names
/// in their directory when both are in one, else their full paths and no directory.
struct DrivePaths {
    cwd: Option<PathBuf>,
    root: String,
    work: String,
}

fn drive_paths(spec: &VmSpec) -> Result<DrivePaths, VmmError> {
    let id = spec.vm_id.as_str();
    let root = utf8(id, "root disk", &spec.root_disk)?;
    let work = utf8(id, "work disk", &spec.work_disk)?;
    let names = (spec.root_disk.file_name(), spec.work_disk.file_name());
    let dir = spec.root_disk.parent().filter(|dir| {
        !dir.as_os_str().is_empty() && spec.work_disk.parent() == Some(*dir) && root != work
    });
    Ok(match (dir, names) {
        (Some(dir), (Some(r), Some(w))) => DrivePaths {
            cwd: Some(dir.to_path_buf()),
            root: r.to_string_lossy().into_owned(),
            work: w.to_string_lossy().into_owned(),
        },
        _ => DrivePaths {
            cwd: None,
            root: root.to_string(),
            work: work.to_string(),
        },
    })
}

/// Grows `file` to `size` bytes (a sparse extension); a file already that large is left
/// as it is.
fn grow_file(vm_id: &str, file: &Path, size: u64) -> Result<(), VmmError> {
    let grown = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| match f.metadata()?.len() < size {
            true => f.set_len(size),
            false => Ok(()),
        });
    grown.map_err(|source| VmmError::GrowDisk {
        vm_id: vm_id.to_string(),
        path: file.to_path_buf(),
        size,
        source,
    })
}

/// The plan of a start of `spec` in `mode`: [`boot_requests`] for a boot (of a template
/// too), [`restore_requests`] for a restore.
pub fn plan(spec: &VmSpec, mode: &StartMode) -> Result<Plan, VmmError> {
    let cwd = drive_paths(spec)?.cwd;
    match mode {
        StartMode::Boot | StartMode::BootTemplate { .. } => Ok(Plan {
            cwd,
            requests: boot_requests(spec)?,
            grow: Vec::new(),
        }),
        StartMode::Restore(restore) => restore_requests(spec, restore),
    }
}

/// A restore of `spec`'s VM: the one request `PUT /snapshot/load`, memory mapped from the
/// snapshot's memory file (`File` backend), the VM's own TAP and vsock socket, resumed at
/// once; the VMM runs in the directory of the VM's disks, which the snapshot names relative
/// to it. Then the grown disks.
pub fn restore_requests(spec: &VmSpec, restore: &Restore) -> Result<Plan, VmmError> {
    let id = spec.vm_id.as_str();
    let paths = drive_paths(spec)?;
    let Some(cwd) = paths.cwd else {
        return Err(VmmError::InvalidSpec {
            vm_id: id.to_string(),
            what: "disk layout",
            reason: "a restored VM's disks must be in one directory: its snapshot names them \
                     relative to the VMM's working directory"
                .to_string(),
        });
    };
    let vsock_path = vsock_socket(&spec.run_dir);
    let load = SnapshotLoad {
        snapshot_path: utf8(id, "snapshot state", &restore.snapshot.state)?.to_string(),
        mem_backend: MemBackend {
            backend_type: MemBackendType::File,
            backend_path: utf8(id, "snapshot memory", &restore.snapshot.memory)?.to_string(),
        },
        network_overrides: vec![NetworkOverride {
            iface_id: IFACE_ID.to_string(),
            host_dev_name: spec.tap.clone(),
        }],
        vsock_override: VsockOverride {
            uds_path: utf8(id, "vsock socket", &vsock_path)?.to_string(),
        },
        resume_vm: true,
    };
    let grow = restore
        .grown
        .iter()
        .map(|&(disk, size)| {
            let (file, path_on_host) = match disk {
                Disk::Root => (&spec.root_disk, &paths.root),
                Disk::Work => (&spec.work_disk, &paths.work),
            };
            Grow {
                file: file.clone(),
                size,
                drive_id: drive_id(disk),
                path_on_host: path_on_host.clone(),
            }
        })
        .collect();
    Ok(Plan {
        cwd: Some(cwd),
        requests: vec![request(Method::PUT, "/snapshot/load", load)],
        grow,
    })
}

fn utf8<'a>(vm_id: &str, what: &'static str, path: &'a Path) -> Result<&'a str, VmmError> {
    path.to_str().ok_or_else(|| VmmError::NonUtf8Path {
        vm_id: vm_id.to_string(),
        what,
        path: path.to_path_buf(),
    })
}

fn request(method: Method, path: &str, body: impl serde::Serialize) -> ApiRequest {
    ApiRequest {
        method,
        path: path.to_string(),
        // These bodies are structs of strings, numbers and booleans: always representable.
        body: serde_json::to_value(body).unwrap_or_default(),
    }
}

/// What Firecracker's machine adds to the backend-neutral kernel command line: it has no PCI
/// bus, so the guest kernel must not probe for one.
pub const KERNEL_ARGS: &[&str] = &["pci=off"];

/// The kernel command line Firecracker passes: `boot_args` followed by [`KERNEL_ARGS`] (each
/// once), whitespace normalized to single spaces.
pub fn kernel_args(boot_args: &str) -> String {
    let mut words: Vec<&str> = boot_args.split_whitespace().collect();
    for arg in KERNEL_ARGS {
        if !words.contains(arg) {
            words.push(arg);
        }
    }
    words.join(" ")
}

/// The requests that configure and boot `spec`'s VM, in order (all `PUT`): `/machine-config`,
/// `/boot-source`, `/drives/root`, `/drives/work`, `/network-interfaces/eth0`, `/vsock`,
/// `/actions` (`InstanceStart`). Drives are named relative to the disks' directory when they
/// share one (the VMM's working directory, see [`plan`]). Fails when a path is not UTF-8
/// (the API takes JSON strings).
pub fn boot_requests(spec: &VmSpec) -> Result<Vec<ApiRequest>, VmmError> {
    let id = spec.vm_id.as_str();
    let kernel = utf8(
        id,
        "kernel",
        spec.kernel.pick_for(id, KernelFormat::Vmlinux)?,
    )?;
    let initrd = spec
        .kernel
        .initrd
        .as_deref()
        .map(|p| utf8(id, "initrd", p))
        .transpose()?;
    let DrivePaths { root, work, .. } = drive_paths(spec)?;
    let vsock_path = vsock_socket(&spec.run_dir);
    let vsock = utf8(id, "vsock socket", &vsock_path)?;
    Ok(vec![
        request(
            Method::PUT,
            "/machine-config",
            MachineConfig {
                vcpu_count: spec.vcpus,
                mem_size_mib: spec.memory_mib,
            },
        ),
        request(
            Method::PUT,
            "/boot-source",
            BootSource {
                kernel_image_path: kernel.to_string(),
                boot_args: kernel_args(&spec.boot_args),
                initrd_path: initrd.map(str::to_string),
            },
        ),
        request(
            Method::PUT,
            "/drives/root",
            Drive {
                drive_id: "root".to_string(),
                path_on_host: root,
                is_root_device: true,
                is_read_only: false,
            },
        ),
        request(
            Method::PUT,
            "/drives/work",
            Drive {
                drive_id: "work".to_string(),
                path_on_host: work,
                is_root_device: false,
                is_read_only: false,
            },
        ),
        request(
            Method::PUT,
            &format!("/network-interfaces/{IFACE_ID}"),
            NetworkInterface {
                iface_id: IFACE_ID.to_string(),
                host_dev_name: spec.tap.clone(),
                guest_mac: spec.mac.clone(),
            },
        ),
        request(
            Method::PUT,
            "/vsock",
            Vsock {
                guest_cid: spec.vsock_cid,
                uds_path: vsock.to_string(),
            },
        ),
        request(
            Method::PUT,
            "/actions",
            InstanceAction {
                action_type: ActionType::InstanceStart,
            },
        ),
    ])
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;
    use std::process::{Command, Stdio};

    use serde_json::json;

    use super::*;
    use crate::KernelFiles;

    fn spec() -> VmSpec {
        VmSpec {
            vm_id: "0123456789abcdef".to_string(),
            vcpus: 2,
            memory_mib: 2048,
            kernel: KernelFiles::formats(Some("/k/vmlinux".into()), Some("/k/vmlinuz".into())),
            boot_args: "console=ttyS0 reboot=k panic=1".to_string(),
            root_disk: "/d/root.ext4".into(),
            work_disk: "/d/work.ext4".into(),
            tap: "bgtap5".to_string(),
            mac: "06:00:AC:1E:00:05".to_string(),
            vsock_cid: 5,
            run_dir: "/run/b/0123456789abcdef".into(),
            console_log: "/l/console.log".into(),
            vmm_log: "/l/vmm.log".into(),
        }
    }

    #[test]
    fn boot_requests_are_exact() {
        let requests = boot_requests(&spec()).unwrap();
        let got: Vec<(&str, &serde_json::Value)> = requests
            .iter()
            .map(|r| (r.path.as_str(), &r.body))
            .collect();
        let expected = [
            (
                "/machine-config",
                json!({"vcpu_count": 2, "mem_size_mib": 2048}),
            ),
            (
                "/boot-source",
                json!({"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}),
            ),
            (
                "/drives/root",
                json!({"drive_id": "root", "path_on_host": "root.ext4", "is_root_device": true, "is_read_only": false}),
            ),
            (
                "/drives/work",
                json!({"drive_id": "work", "path_on_host": "work.ext4", "is_root_device": false, "is_read_only": false}),
            ),
            (
                "/network-interfaces/eth0",
                json!({"iface_id": "eth0", "host_dev_name": "bgtap5", "guest_mac": "06:00:AC:1E:00:05"}),
            ),
            (
                "/vsock",
                json!({"guest_cid": 5, "uds_path": "/run/b/0123456789abcdef/vsock.sock"}),
            ),
            ("/actions", json!({"action_type": "InstanceStart"})),
        ];
        assert_eq!(got.len(), expected.len());
        for ((path, body), (want_path, want_body)) in got.iter().zip(expected.iter()) {
            assert_eq!(path, want_path);
            assert_eq!(*body, want_body, "{path}");
        }
    }

    fn restore(grown: Vec<(Disk, u64)>) -> Restore {
        Restore {
            snapshot: SnapshotFiles::in_dir(Path::new("/t/tpl")),
            grown,
        }
    }

    #[test]
    fn a_restore_loads_the_snapshot_on_the_vm_s_own_devices_and_boots_nothing() {
        let plan = plan(&spec(), &StartMode::Restore(restore(vec![]))).unwrap();
        assert_eq!(plan.cwd.as_deref(), Some(Path::new("/d")));
        let got: Vec<(&Method, &str, &serde_json::Value)> = plan
            .requests
            .iter()
            .map(|r| (&r.method, r.path.as_str(), &r.body))
            .collect();
        assert_eq!(
            got,
            [(
                &Method::PUT,
                "/snapshot/load",
                &json!({
                    "snapshot_path": "/t/tpl/vmstate",
                    "mem_backend": {"backend_type": "File", "backend_path": "/t/tpl/memory"},
                    "network_overrides": [{"iface_id": "eth0", "host_dev_name": "bgtap5"}],
                    "vsock_override": {"uds_path": "/run/b/0123456789abcdef/vsock.sock"},
                    "resume_vm": true,
                })
            )]
        );
        assert!(plan.grow.is_empty());
    }

    #[test]
    fn a_template_boots_as_a_vm_does_in_its_disks_directory() {
        let boot = plan(&spec(), &StartMode::Boot).unwrap();
        let template = plan(
            &spec(),
            &StartMode::BootTemplate {
                memory: "/t/tpl/memory".into(),
            },
        )
        .unwrap();
        assert_eq!(boot, template);
        assert_eq!(boot.cwd.as_deref(), Some(Path::new("/d")));
        assert_eq!(boot.requests, boot_requests(&spec()).unwrap());
    }

    #[test]
    fn grown_disks_are_re_read_by_their_relative_path() {
        let plan = plan(
            &spec(),
            &StartMode::Restore(restore(vec![(Disk::Work, 1 << 30)])),
        )
        .unwrap();
        assert_eq!(
            plan.grow,
            [Grow {
                file: "/d/work.ext4".into(),
                size: 1 << 30,
                drive_id: "work",
                path_on_host: "work.ext4".into(),
            }]
        );
    }

    #[test]
    fn disks_in_two_directories_have_full_paths_and_cannot_be_restored() {
        let mut spec = spec();
        spec.work_disk = "/e/work.ext4".into();
        let boot = plan(&spec, &StartMode::Boot).unwrap();
        assert_eq!(boot.cwd, None);
        assert_eq!(boot.requests[2].body["path_on_host"], "/d/root.ext4");
        assert_eq!(boot.requests[3].body["path_on_host"], "/e/work.ext4");
        let err = plan(&spec, &StartMode::Restore(restore(vec![]))).unwrap_err();
        assert!(
            matches!(
                &err,
                VmmError::InvalidSpec {
                    what: "disk layout",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn growing_extends_a_file_sparsely_and_never_shrinks_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("work.ext4");
        std::fs::write(&file, b"data").unwrap();
        grow_file("vm", &file, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
        grow_file("vm", &file, 10).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
        assert_eq!(&std::fs::read(&file).unwrap()[..4], b"data");
        let err = grow_file("vm", &dir.path().join("missing"), 10).unwrap_err();
        assert!(matches!(err, VmmError::GrowDisk { .. }), "{err}");
    }

    #[test]
    fn initrd_is_sent_when_present() {
        let mut spec = spec();
        spec.kernel.initrd = Some("/k/initrd.img".into());
        let requests = boot_requests(&spec).unwrap();
        assert_eq!(
            requests[1].body,
            json!({"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off", "initrd_path": "/k/initrd.img"})
        );
    }

    #[test]
    fn kernel_args_add_pci_off_once() {
        assert_eq!(
            kernel_args("console=ttyS0  root=/dev/vda rw"),
            "console=ttyS0 root=/dev/vda rw pci=off"
        );
        assert_eq!(
            kernel_args("pci=off console=ttyS0"),
            "pci=off console=ttyS0"
        );
        assert_eq!(kernel_args(""), "pci=off");
    }

    #[test]
    fn the_vmlinux_is_booted_else_the_bzimage() {
        let kernel_of = |kernel: KernelFiles| {
            let mut spec = spec();
            spec.kernel = kernel;
            boot_requests(&spec).map(|r| r[1].body["kernel_image_path"].clone())
        };
        assert_eq!(
            kernel_of(KernelFiles::formats(None, Some("/k/vmlinuz".into()))).unwrap(),
            "/k/vmlinuz"
        );
        assert_eq!(
            kernel_of(KernelFiles::either("/k/kernel")).unwrap(),
            "/k/kernel"
        );
        let err = kernel_of(KernelFiles::formats(None, None)).unwrap_err();
        assert!(
            matches!(
                &err,
                VmmError::NoKernel {
                    wanted: KernelFormat::Vmlinux,
                    ..
                }
            ),
            "{err}"
        );
        let mut spec = spec();
        spec.kernel = KernelFiles::formats(None, None);
        let err = FirecrackerVmm::new("/bin/firecracker")
            .validate(&spec)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "VM 0123456789abcdef: no kernel file to boot (an ELF vmlinux is what this VMM boots)"
        );
    }

    #[test]
    fn non_utf8_paths_are_refused_with_their_role() {
        let mut spec = spec();
        spec.work_disk = PathBuf::from(OsString::from_vec(b"/d/w\xff.ext4".to_vec()));
        let err = boot_requests(&spec).unwrap_err();
        assert!(
            matches!(
                &err,
                VmmError::NonUtf8Path {
                    what: "work disk",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn validate_checks_id_and_socket_lengths() {
        let vmm = FirecrackerVmm::new("/bin/firecracker");
        assert!(vmm.validate(&spec()).is_ok());

        let mut bad_id = spec();
        bad_id.vm_id = "a/b".to_string();
        assert!(matches!(
            vmm.validate(&bad_id),
            Err(VmmError::InvalidVmId { .. })
        ));

        // api.sock fits, vsock.sock (two bytes longer) does not.
        let mut long = spec();
        let dir_len = crate::MAX_SOCKET_PATH - 1 - API_SOCKET.len();
        long.run_dir = PathBuf::from(format!("/{}", "r".repeat(dir_len - 1)));
        assert!(crate::socket_path_fits(&api_socket(&long.run_dir)));
        let err = vmm.validate(&long).unwrap_err();
        match &err {
            VmmError::SocketPathTooLong { path, len, .. } => {
                assert!(path.ends_with(VSOCK_SOCKET), "{err}");
                assert_eq!(*len, crate::MAX_SOCKET_PATH + 2);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("sun_path"), "{err}");
    }

    #[test]
    fn agent_is_reached_through_hybrid_vsock() {
        let vmm = FirecrackerVmm::new("/bin/firecracker");
        assert_eq!(
            vmm.agent_endpoint(&spec()),
            AgentEndpoint::HybridVsock {
                uds: "/run/b/0123456789abcdef/vsock.sock".into(),
                port: AGENT_VSOCK_PORT,
            }
        );
        assert_eq!(vmm.kind(), VmmKind::Firecracker);
        assert_eq!(
            vmm.control_socket(Path::new("/run/b/x")),
            Path::new("/run/b/x/api.sock")
        );
    }

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
        path
    }

    #[test]
    fn locate_prefers_config_then_env_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let config = executable(dir.path(), "fc-config");
        let env = executable(dir.path(), "fc-env");
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        let on_path = executable(&bin_dir, BIN_NAME);
        let empty_dir = dir.path().join("empty");
        std::fs::create_dir(&empty_dir).unwrap();
        let path_var = std::env::join_paths([&empty_dir, &bin_dir]).unwrap();

        let found = FirecrackerVmm::locate(
            Some(config.clone()),
            Some(env.clone().into()),
            Some(&path_var),
        )
        .unwrap();
        assert_eq!(found.bin(), config);

        let found =
            FirecrackerVmm::locate(None, Some(env.clone().into()), Some(&path_var)).unwrap();
        assert_eq!(found.bin(), env);

        // Empty values count as unset.
        let found =
            FirecrackerVmm::locate(Some(PathBuf::new()), Some(OsString::new()), Some(&path_var))
                .unwrap();
        assert_eq!(found.bin(), on_path);

        let err = FirecrackerVmm::locate(None, None, Some(empty_dir.as_os_str())).unwrap_err();
        assert!(matches!(err, LocateError::NotOnPath { .. }), "{err}");
        assert!(err.to_string().contains(BIN_ENV), "{err}");
        assert!(FirecrackerVmm::locate(None, None, None).is_err());
    }

    #[test]
    fn locate_does_not_fall_through_a_bad_explicit_choice() {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        executable(&bin_dir, BIN_NAME);
        let not_exec = dir.path().join("plain");
        std::fs::write(&not_exec, "").unwrap();

        let err = FirecrackerVmm::locate(
            Some(dir.path().join("missing")),
            None,
            Some(bin_dir.as_os_str()),
        )
        .unwrap_err();
        assert!(matches!(err, LocateError::Config { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");

        let err = FirecrackerVmm::locate(None, Some(not_exec.into()), Some(bin_dir.as_os_str()))
            .unwrap_err();
        assert!(matches!(err, LocateError::Env { .. }), "{err}");
        assert!(err.to_string().contains("not executable"), "{err}");

        let err = FirecrackerVmm::locate(None, Some(dir.path().into()), None).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[tokio::test]
    async fn pid_for_socket_falls_back_to_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(API_SOCKET);
        let mut cmd = Command::new("sh");
        // `; exit` keeps sh from exec'ing sleep, so the socket stays in sh's command line.
        cmd.arg("-c")
            .arg("sleep 3600; exit 0")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = process::spawn_detached(cmd).unwrap();
        let pid = child.pid();

        assert_eq!(process::pid_serving(None, socket.as_os_str()), Some(pid));
        // A stale peer pid (a dead process) is ignored too.
        assert_eq!(
            process::pid_serving(Some(u32::MAX), socket.as_os_str()),
            Some(pid)
        );
        assert_eq!(
            process::pid_serving(Some(std::process::id()), socket.as_os_str()),
            Some(std::process::id())
        );
        assert_eq!(
            process::pid_serving(None, dir.path().join("other.sock").as_os_str()),
            None
        );

        process::signal_group(pid, crate::Signal::KILL).unwrap();
        assert!(process::wait_exit(pid, Duration::from_secs(5)).await);
    }
}
