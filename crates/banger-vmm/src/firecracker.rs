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
//! 3. spawn `<bin> --api-sock <run_dir>/api.sock --id <vm_id>` detached, stdout appended to
//!    the console log, stderr to the VMM log;
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
//! Firecracker writes its own log to stdout unless told otherwise, so without a `--log-path`
//! its log lines share the console log with the guest's serial console; stderr carries what
//! it prints before its logger exists.

pub mod api;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent_proto::wire::AGENT_VSOCK_PORT;

use crate::launch::{self, Backend, Launch};
pub use crate::process::LocateError;
use crate::process::{self, BinarySource};
use crate::{
    AgentEndpoint, BoxFuture, KernelFormat, Running, StartMode, VmSpec, Vmm, VmmError, VmmKind,
    check_socket_path, validate_vm_id,
};
use api::{
    ActionType, ApiClient, ApiError, BootSource, Drive, InstanceAction, MachineConfig,
    NetworkInterface, Vsock,
};

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

    fn validate_and_plan(&self, spec: &VmSpec) -> Result<Vec<ApiRequest>, VmmError> {
        validate_vm_id(&spec.vm_id)?;
        check_socket_path(&spec.vm_id, &api_socket(&spec.run_dir))?;
        check_socket_path(&spec.vm_id, &vsock_socket(&spec.run_dir))?;
        boot_requests(spec)
    }
}

/// Firecracker's steps of the start template: spawned with only its API socket and VM id,
/// then configured and booted through its API.
impl Backend for FirecrackerVmm {
    type Plan = Vec<ApiRequest>;
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

    /// Only a boot: Firecracker's snapshots are not wired in (its [`Vmm::launch`] refuses
    /// the other modes before planning).
    fn plan(&self, spec: &VmSpec, _: &StartMode) -> Result<Vec<ApiRequest>, VmmError> {
        self.validate_and_plan(spec)
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

    fn args(&self, spec: &VmSpec, _: &Vec<ApiRequest>, control_socket: &Path) -> Vec<OsString> {
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

    /// Sends the boot sequence.
    async fn configure(
        &self,
        launch: &Launch<'_>,
        requests: &Vec<ApiRequest>,
    ) -> Result<(), VmmError> {
        let client = self.client(launch.control_sock, self.timeouts.api);
        for request in requests {
            if let Err(source) = client.put(&request.path, &request.body).await {
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
        self.validate_and_plan(spec).map(drop)
    }

    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Running, VmmError>> {
        Box::pin(launch::start(self, spec))
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

/// One `PUT` of the boot sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub path: String,
    pub body: serde_json::Value,
}

fn utf8<'a>(vm_id: &str, what: &'static str, path: &'a Path) -> Result<&'a str, VmmError> {
    path.to_str().ok_or_else(|| VmmError::NonUtf8Path {
        vm_id: vm_id.to_string(),
        what,
        path: path.to_path_buf(),
    })
}

fn request(path: &str, body: impl serde::Serialize) -> ApiRequest {
    ApiRequest {
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

/// The requests that configure and boot `spec`'s VM, in order: `/machine-config`,
/// `/boot-source`, `/drives/root`, `/drives/work`, `/network-interfaces/eth0`, `/vsock`,
/// `/actions` (`InstanceStart`). Fails when a path is not UTF-8 (the API takes JSON strings).
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
    let root = utf8(id, "root disk", &spec.root_disk)?;
    let work = utf8(id, "work disk", &spec.work_disk)?;
    let vsock_path = vsock_socket(&spec.run_dir);
    let vsock = utf8(id, "vsock socket", &vsock_path)?;
    Ok(vec![
        request(
            "/machine-config",
            MachineConfig {
                vcpu_count: spec.vcpus,
                mem_size_mib: spec.memory_mib,
            },
        ),
        request(
            "/boot-source",
            BootSource {
                kernel_image_path: kernel.to_string(),
                boot_args: kernel_args(&spec.boot_args),
                initrd_path: initrd.map(str::to_string),
            },
        ),
        request(
            "/drives/root",
            Drive {
                drive_id: "root".to_string(),
                path_on_host: root.to_string(),
                is_root_device: true,
                is_read_only: false,
            },
        ),
        request(
            "/drives/work",
            Drive {
                drive_id: "work".to_string(),
                path_on_host: work.to_string(),
                is_root_device: false,
                is_read_only: false,
            },
        ),
        request(
            &format!("/network-interfaces/{IFACE_ID}"),
            NetworkInterface {
                iface_id: IFACE_ID.to_string(),
                host_dev_name: spec.tap.clone(),
                guest_mac: spec.mac.clone(),
            },
        ),
        request(
            "/vsock",
            Vsock {
                guest_cid: spec.vsock_cid,
                uds_path: vsock.to_string(),
            },
        ),
        request(
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
                json!({"drive_id": "root", "path_on_host": "/d/root.ext4", "is_root_device": true, "is_read_only": false}),
            ),
            (
                "/drives/work",
                json!({"drive_id": "work", "path_on_host": "/d/work.ext4", "is_root_device": false, "is_read_only": false}),
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
