//! The microVM state machine: what Firecracker's pre-boot and runtime API
//! controllers do with a well-formed request.
//!
//! [`Vm::handle`] takes an [`Action`] (the fake's `VmmAction`, built by
//! [`crate::api`] from a request that already passed schema validation) and
//! answers with a [`Reply`] or a [`VmError`] whose text is Firecracker's
//! `fault_message`. It enforces, like Firecracker:
//!
//! - the phase rules: configuration calls are refused once the microVM started
//!   ("The requested operation is not supported after starting the microVM."),
//!   runtime calls are refused before ("... before starting the microVM.");
//! - the resource rules checked when a resource is configured: kernel, initrd,
//!   drive and pmem files are opened at `PUT` time, one root device, unique tap
//!   names and guest MACs, tap names of at most 15 bytes, SMT and memory sizes,
//!   balloon size within guest memory, MMDS interfaces that exist, the vsock
//!   socket bound at `PUT /vsock` (refused if its path exists);
//! - `InstanceStart` once, with a boot source (machine-config has defaults:
//!   1 vCPU, 128 MiB) and a non-empty kernel file;
//! - snapshots: create only when paused (writes the state file, the fake's
//!   JSON, and a sparse memory file of the guest's size), load only on a fresh
//!   process with no boot resource configured, leaving the VM paused unless
//!   `resume_vm`; a failed load ends the process, as it does Firecracker's.
//!
//! Everything outside the process (files, the vsock socket, the console, the
//! agent, exiting) goes through the [`Host`] trait, so the rules can be unit
//! tested with a recording fake host.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::console::{self, BootSummary};
use crate::schema::Spec;

/// Firecracker's default guest kernel command line (used when `boot_args` is absent).
pub const DEFAULT_KERNEL_CMDLINE: &str = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// x86_64 limit of the kernel command line, in bytes, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Firecracker's default guest memory, in MiB.
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;
/// Firecracker's limit of vCPUs.
pub const MAX_SUPPORTED_VCPUS: u64 = 32;
/// Longest tap device name Linux accepts (IFNAMSIZ less the NUL).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Marker key of the fake's snapshot state files.
pub const SNAPSHOT_MARKER: &str = "banger_fake_firecracker_snapshot";

const MIB: u64 = 1024 * 1024;

/// The microVM's run state, as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Configuring; not booted.
    NotStarted,
    /// Booted and running.
    Running,
    /// Booted (or restored) with its vCPUs paused.
    Paused,
}

impl RunState {
    /// The `InstanceInfo.state` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
        }
    }
}

/// One API request, parsed and validated (Firecracker's `VmmAction`).
///
/// Bodies are the request JSON, already valid against the spec definition the
/// operation names.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `GET /`
    DescribeInstance,
    /// `GET /version`
    GetVersion,
    /// `GET /machine-config`
    GetMachineConfig,
    /// `GET /vm/config`
    GetFullConfig,
    /// `PUT /machine-config`
    PutMachineConfig(Value),
    /// `PATCH /machine-config`
    PatchMachineConfig(Value),
    /// `PUT /boot-source`
    PutBootSource(Value),
    /// `PUT /drives/{drive_id}`
    PutDrive(Value),
    /// `PATCH /drives/{drive_id}`
    PatchDrive(Value),
    /// `PUT /pmem/{id}`
    PutPmem(Value),
    /// `PATCH /pmem/{id}`
    PatchPmem(Value),
    /// `PUT /network-interfaces/{iface_id}`
    PutNetwork(Value),
    /// `PATCH /network-interfaces/{iface_id}`
    PatchNetwork(Value),
    /// `PUT /vsock`
    PutVsock(Value),
    /// `PUT /balloon`
    PutBalloon(Value),
    /// `PATCH /balloon`
    PatchBalloon(Value),
    /// `GET /balloon`
    GetBalloon,
    /// `GET /balloon/statistics`
    GetBalloonStats,
    /// `PATCH /balloon/statistics`
    PatchBalloonStats(Value),
    /// `PATCH /balloon/hinting/start`
    StartBalloonHinting(Option<Value>),
    /// `GET /balloon/hinting/status`
    GetBalloonHinting,
    /// `PATCH /balloon/hinting/stop`
    StopBalloonHinting,
    /// `PUT /logger`
    PutLogger(Value),
    /// `PUT /metrics`
    PutMetrics(Value),
    /// `PUT /mmds`
    PutMmds(Value),
    /// `PATCH /mmds`
    PatchMmds(Value),
    /// `GET /mmds`
    GetMmds,
    /// `PUT /mmds/config`
    PutMmdsConfig(Value),
    /// `PUT /entropy`
    PutEntropy(Value),
    /// `PUT /serial`
    PutSerial(Value),
    /// `PUT /cpu-config`
    PutCpuConfig(Value),
    /// `PUT /hotplug/memory`
    PutMemoryHotplug(Value),
    /// `PATCH /hotplug/memory`
    PatchMemoryHotplug(Value),
    /// `GET /hotplug/memory`
    GetMemoryHotplug,
    /// `PUT /snapshot/create`
    CreateSnapshot(Value),
    /// `PUT /snapshot/load`, with the memory backend already resolved.
    LoadSnapshot(LoadSnapshot),
    /// `PATCH /vm {"state":"Paused"}`
    Pause,
    /// `PATCH /vm {"state":"Resumed"}`
    Resume,
    /// `PUT /actions {"action_type":"InstanceStart"}`
    InstanceStart,
    /// `PUT /actions {"action_type":"SendCtrlAltDel"}`
    SendCtrlAltDel,
    /// `PUT /actions {"action_type":"FlushMetrics"}`
    FlushMetrics,
}

/// When an action is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    PreBoot,
    PostBoot,
    Any,
}

impl Action {
    fn phase(&self) -> Phase {
        use Action::*;
        match self {
            PutMachineConfig(_)
            | PatchMachineConfig(_)
            | PutBootSource(_)
            | PutDrive(_)
            | PutPmem(_)
            | PutNetwork(_)
            | PutVsock(_)
            | PutBalloon(_)
            | PutLogger(_)
            | PutMetrics(_)
            | PutMmdsConfig(_)
            | PutEntropy(_)
            | PutSerial(_)
            | PutCpuConfig(_)
            | PutMemoryHotplug(_)
            | LoadSnapshot(_)
            | InstanceStart => Phase::PreBoot,
            PatchDrive(_)
            | PatchPmem(_)
            | PatchNetwork(_)
            | PatchBalloon(_)
            | GetBalloonStats
            | PatchBalloonStats(_)
            | StartBalloonHinting(_)
            | GetBalloonHinting
            | StopBalloonHinting
            | PatchMemoryHotplug(_)
            | GetMemoryHotplug
            | CreateSnapshot(_)
            | Pause
            | Resume
            | SendCtrlAltDel
            | FlushMetrics => Phase::PostBoot,
            DescribeInstance | GetVersion | GetMachineConfig | GetFullConfig | GetBalloon
            | PutMmds(_) | PatchMmds(_) | GetMmds => Phase::Any,
        }
    }
}

/// Where a snapshot's guest memory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemBackend {
    /// A memory file written by `PUT /snapshot/create`.
    File(PathBuf),
    /// A userfaultfd handler listening on this Unix socket.
    Uffd(PathBuf),
}

/// `PUT /snapshot/load`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSnapshot {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory backend.
    pub mem_backend: MemBackend,
    /// `track_dirty_pages` or the deprecated `enable_diff_snapshots`.
    pub track_dirty_pages: bool,
    /// Resume the guest right after loading.
    pub resume_vm: bool,
    /// `iface_id` -> new `host_dev_name`.
    pub network_overrides: Vec<(String, String)>,
    /// New vsock `uds_path`.
    pub vsock_override: Option<String>,
    /// `huge_pages`, `Snapshot` when absent.
    pub huge_pages: String,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `204 No Content`.
    Empty,
    /// `200 OK` with this JSON body.
    Json(Value),
}

/// Firecracker's `VmmActionError`: the `fault_message` of a refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmError {
    /// A configuration call after boot.
    #[error("The requested operation is not supported after starting the microVM.")]
    NotSupportedPostBoot,
    /// A runtime call before boot.
    #[error("The requested operation is not supported before starting the microVM.")]
    NotSupportedPreBoot,
    /// A body Firecracker's custom deserializers refuse (MAC addresses).
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Body(String),
    /// `PUT /boot-source`.
    #[error("Boot source error: {0}")]
    BootSource(String),
    /// Drives.
    #[error("Drive config error: {0}")]
    Drive(String),
    /// pmem devices.
    #[error("Pmem device error: {0}")]
    Pmem(String),
    /// Machine configuration.
    #[error("Machine config error: {0}")]
    MachineConfig(String),
    /// Network interfaces.
    #[error("Network config error: {0}")]
    Network(String),
    /// The vsock device.
    #[error("Vsock config error: {0}")]
    Vsock(String),
    /// Balloon configuration.
    #[error("Balloon config error: {0}")]
    BalloonConfig(String),
    /// Runtime balloon calls.
    #[error("Balloon update error: {0}")]
    BalloonUpdate(String),
    /// The logger.
    #[error("Logger error: {0}")]
    Logger(String),
    /// The metrics system.
    #[error("Metrics error: {0}")]
    Metrics(String),
    /// The MMDS data store.
    #[error("MMDS error: {0}")]
    Mmds(String),
    /// The MMDS data store would outgrow its limit (HTTP 413).
    #[error("MMDS limit exceeded error: {0}")]
    MmdsLimit(String),
    /// MMDS configuration. The triple M is Firecracker's own spelling.
    #[error("MMMDS config error: {0}")]
    MmdsConfig(String),
    /// The memory hotplug device's configuration.
    #[error("Memory hotplug config error: {0}")]
    MemoryHotplugConfig(String),
    /// Runtime memory hotplug calls.
    #[error("Memory hotplug update error: {0}")]
    MemoryHotplugUpdate(String),
    /// `InstanceStart`.
    #[error("Start microvm error: {0}")]
    StartMicrovm(String),
    /// `PUT /snapshot/create`.
    #[error("Create snapshot error: {0}")]
    CreateSnapshot(String),
    /// `PUT /snapshot/load`.
    #[error("Load snapshot error: {0}")]
    LoadSnapshot(String),
    /// Internal errors (metrics flush, pause of a dead VM).
    #[error("Internal VMM error: {0}")]
    Internal(String),
}

impl VmError {
    /// The HTTP status Firecracker answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Self::MmdsLimit(_) => 413,
            _ => 400,
        }
    }
}

/// What opening a file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// A regular file (not a directory or device).
    pub is_file: bool,
    /// Size in bytes.
    pub len: u64,
}

/// What the guest shows and needs when it starts running (boot or restore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestStart {
    /// Console lines to print.
    pub console: Vec<String>,
    /// `PUT /serial` output file, if any.
    pub serial_out: Option<PathBuf>,
    /// The vsock device's host socket, if any (bound earlier by [`Host::bind_vsock`]).
    pub vsock_uds: Option<PathBuf>,
    /// Whether the vCPUs run right away (false after a load without `resume_vm`).
    pub running: bool,
}

/// The world outside the process, as the state machine touches it.
pub trait Host {
    /// Opens `path` for reading (and writing if `write`), as Firecracker opens
    /// kernel, initrd and drive files.
    fn open(&mut self, path: &Path, write: bool) -> io::Result<FileInfo>;
    /// Connects to a Unix socket and hangs up (vhost-user and UFFD backends).
    fn connect_unix(&mut self, path: &Path) -> io::Result<()>;
    /// Reads a whole file.
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path` and writes `contents`.
    fn write(&mut self, path: &Path, contents: &[u8]) -> io::Result<()>;
    /// Creates or truncates `path` as a sparse file of `len` bytes.
    fn create_sparse(&mut self, path: &Path, len: u64) -> io::Result<()>;
    /// Appends `line` and a newline to `path`, creating it if missing.
    fn append_line(&mut self, path: &Path, line: &str) -> io::Result<()>;
    /// Binds the vsock device's Unix socket (fails if the path exists).
    fn bind_vsock(&mut self, uds_path: &Path) -> io::Result<()>;
    /// Closes the vsock socket bound at `uds_path` and removes its file.
    fn release_vsock(&mut self, uds_path: &Path) -> io::Result<()>;
    /// The guest starts: print its console, serve vsock, start the agent.
    fn guest_started(&mut self, start: &GuestStart) -> io::Result<()>;
    /// The vCPUs pause (device emulation, vsock included, freezes).
    fn guest_paused(&mut self);
    /// The vCPUs resume.
    fn guest_resumed(&mut self);
    /// The running guest got Ctrl-Alt-Del: it shuts down and the process exits 0.
    fn guest_shutdown(&mut self);
    /// The vsock device is reset (snapshot creation): open connections close.
    fn vsock_reset(&mut self);
    /// An unrecoverable error: the process exits 1 once the response is sent.
    fn fatal_error(&mut self);
    /// Wall-clock time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// Logger verbosity, most to least quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// The default.
    Info,
    /// More.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Parses a level case-insensitively, as Firecracker does (`warn` too).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warning" | "warn" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Error => "ERROR",
            Self::Warning => "WARN",
            Self::Info => "INFO",
            Self::Debug => "DEBUG",
            Self::Trace => "TRACE",
        }
    }
}

/// Where and how Firecracker-style log lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerConfig {
    /// The log file (created if missing).
    pub path: Option<PathBuf>,
    /// Verbosity.
    pub level: LogLevel,
    /// Prefix lines with their level.
    pub show_level: bool,
    /// Prefix lines with their source location.
    pub show_log_origin: bool,
}

/// How the process was started (command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    /// `--id`.
    pub id: String,
    /// `--log-path` and friends.
    pub logger: Option<LoggerConfig>,
    /// `--metrics-path`.
    pub metrics_path: Option<PathBuf>,
    /// `--mmds-size-limit` (defaults to the API payload limit).
    pub mmds_size_limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Machine {
    vcpu_count: u64,
    mem_size_mib: u64,
    smt: bool,
    track_dirty_pages: bool,
    huge_pages: String,
    cpu_template: Option<String>,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            track_dirty_pages: false,
            huge_pages: "None".to_owned(),
            cpu_template: None,
        }
    }
}

impl Machine {
    fn to_json(&self) -> Value {
        let mut out = json!({
            "vcpu_count": self.vcpu_count,
            "mem_size_mib": self.mem_size_mib,
            "smt": self.smt,
            "track_dirty_pages": self.track_dirty_pages,
            "huge_pages": self.huge_pages,
        });
        if let (Some(t), Some(map)) = (&self.cpu_template, out.as_object_mut()) {
            map.insert("cpu_template".to_owned(), Value::String(t.clone()));
        }
        out
    }

    fn hugetlbfs(&self) -> bool {
        self.huge_pages == "2M"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Metrics {
    path: PathBuf,
    emit_id: bool,
    properties: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hinting {
    host_cmd: u64,
    guest_cmd: Option<u64>,
    acknowledge_on_stop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hotplug {
    config: Value,
    requested_mib: u64,
}

/// The microVM: its configuration and run state.
#[derive(Debug)]
pub struct Vm<H> {
    host: H,
    spec: Arc<Spec>,
    id: String,
    version: String,
    state: RunState,
    boot_path: bool,
    restored: bool,
    pending_ctrl_alt_del: bool,
    boot_source: Option<Value>,
    kernel: Option<FileInfo>,
    machine: Machine,
    drives: Vec<Value>,
    pmem: Vec<Value>,
    nets: Vec<Value>,
    vsock: Option<Value>,
    balloon: Option<Value>,
    hinting: Option<Hinting>,
    entropy: Option<Value>,
    mmds_config: Option<Value>,
    mmds: Option<Value>,
    mmds_size_limit: usize,
    logger: Option<LoggerConfig>,
    metrics: Option<Metrics>,
    serial: Option<Value>,
    cpu_config: Option<Value>,
    hotplug: Option<Hotplug>,
    requests: u64,
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn flag(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

fn number(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn given<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// Checks a MAC address the way Firecracker's `MacAddr` deserializer does.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `addr` is a link-local IPv4 address MMDS may use
/// (169.254.1.0 - 169.254.254.255, as Firecracker's `is_link_local_valid`).
pub fn valid_link_local(addr: &str) -> bool {
    let octets: Vec<Option<u8>> = addr.split('.').map(|o| o.parse().ok()).collect();
    matches!(octets.as_slice(), [Some(169), Some(254), Some(third), Some(_)] if (1..=254).contains(third))
}

/// Formats `since_epoch` as Firecracker's log timestamp (`2025-03-30T17:56:21.871223256`).
pub fn log_timestamp(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_nanos()
    )
}

/// RFC 7396 JSON merge patch, as MMDS `PATCH` applies it.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl<H: Host> Vm<H> {
    /// A fresh, unconfigured microVM.
    pub fn new(host: H, spec: Arc<Spec>, options: VmOptions) -> Self {
        let version = spec
            .version()
            .unwrap_or(crate::FIRECRACKER_VERSION)
            .to_owned();
        Self {
            host,
            spec,
            id: options.id,
            version,
            state: RunState::NotStarted,
            boot_path: false,
            restored: false,
            pending_ctrl_alt_del: false,
            boot_source: None,
            kernel: None,
            machine: Machine::default(),
            drives: Vec::new(),
            pmem: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            balloon: None,
            hinting: None,
            entropy: None,
            mmds_config: None,
            mmds: None,
            mmds_size_limit: options.mmds_size_limit,
            logger: options.logger,
            metrics: options.metrics_path.map(|path| Metrics {
                path,
                emit_id: false,
                properties: None,
            }),
            serial: None,
            cpu_config: None,
            hotplug: None,
            requests: 0,
        }
    }

    /// The host this VM acts through.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, mutably.
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// The current run state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// The vsock device's host socket, if configured.
    pub fn vsock_uds(&self) -> Option<PathBuf> {
        self.vsock
            .as_ref()
            .and_then(|v| text(v, "uds_path"))
            .map(PathBuf::from)
    }

    fn started(&self) -> bool {
        self.state != RunState::NotStarted
    }

    /// Writes a Firecracker-style log line if a logger is configured and its
    /// level lets `level` through. Logging failures are ignored, as
    /// Firecracker counts them in a metric and goes on.
    pub fn log(&mut self, level: LogLevel, origin: (&str, u32), message: &str) {
        let Some(logger) = &self.logger else { return };
        let Some(path) = &logger.path else { return };
        if level == LogLevel::Off || level > logger.level {
            return;
        }
        let mut prefix = format!("{}:fc_api", self.id);
        if logger.show_level {
            let _ = write!(prefix, ":{}", level.label());
        }
        if logger.show_log_origin {
            let _ = write!(prefix, ":{}:{}", origin.0, origin.1);
        }
        let line = format!("{} [{prefix}] {message}", log_timestamp(self.host.now()));
        let path = path.clone();
        let _ = self.host.append_line(&path, &line);
    }

    /// Counts an API request (reported by `FlushMetrics`).
    pub fn count_request(&mut self) {
        self.requests += 1;
    }

    /// Applies one action.
    pub fn handle(&mut self, action: Action) -> Result<Reply, VmError> {
        match (action.phase(), self.started()) {
            (Phase::PreBoot, true) => return Err(VmError::NotSupportedPostBoot),
            (Phase::PostBoot, false) => return Err(VmError::NotSupportedPreBoot),
            _ => {}
        }
        use Action::*;
        match action {
            DescribeInstance => Ok(Reply::Json(json!({
                "app_name": "Firecracker",
                "id": self.id,
                "state": self.state.as_str(),
                "vmm_version": self.version,
            }))),
            GetVersion => Ok(Reply::Json(json!({ "firecracker_version": self.version }))),
            GetMachineConfig => Ok(Reply::Json(self.machine.to_json())),
            GetFullConfig => Ok(Reply::Json(self.full_config())),
            PutMachineConfig(body) => self.update_machine(&body, true),
            PatchMachineConfig(body) => self.update_machine(&body, false),
            PutBootSource(body) => self.put_boot_source(body),
            PutDrive(body) => self.put_drive(body),
            PatchDrive(body) => self.patch_drive(&body),
            PutPmem(body) => self.put_pmem(body),
            PatchPmem(body) => self.patch_pmem(&body),
            PutNetwork(body) => self.put_network(body),
            PatchNetwork(body) => self.patch_network(&body),
            PutVsock(body) => self.put_vsock(body),
            PutBalloon(body) => self.put_balloon(body),
            PatchBalloon(body) => self.patch_balloon(&body),
            GetBalloon => self
                .balloon
                .clone()
                .map(Reply::Json)
                .ok_or_else(|| VmError::BalloonConfig("No balloon device found.".to_owned())),
            GetBalloonStats => self.balloon_stats(),
            PatchBalloonStats(body) => self.patch_balloon_stats(&body),
            StartBalloonHinting(body) => self.start_hinting(body.as_ref()),
            GetBalloonHinting => self.hinting_status(),
            StopBalloonHinting => self.stop_hinting(),
            PutLogger(body) => self.put_logger(&body),
            PutMetrics(body) => self.put_metrics(&body),
            PutMmds(body) => self.put_mmds(body),
            PatchMmds(body) => self.patch_mmds(&body),
            GetMmds => Ok(Reply::Json(self.mmds.clone().unwrap_or_else(|| json!({})))),
            PutMmdsConfig(body) => self.put_mmds_config(body),
            PutEntropy(body) => {
                self.boot_path = true;
                self.entropy = Some(self.spec.normalize("EntropyDevice", &body));
                Ok(Reply::Empty)
            }
            PutSerial(body) => {
                self.serial = Some(body);
                Ok(Reply::Empty)
            }
            PutCpuConfig(body) => {
                self.cpu_config = Some(body);
                Ok(Reply::Empty)
            }
            PutMemoryHotplug(body) => self.put_hotplug(body),
            PatchMemoryHotplug(body) => self.patch_hotplug(&body),
            GetMemoryHotplug => self.hotplug_status(),
            CreateSnapshot(body) => self.create_snapshot(&body),
            LoadSnapshot(params) => self.load_snapshot(params),
            Pause => {
                if self.state == RunState::Running {
                    self.state = RunState::Paused;
                    self.host.guest_paused();
                }
                Ok(Reply::Empty)
            }
            Resume => {
                if self.state == RunState::Paused {
                    self.state = RunState::Running;
                    self.host.guest_resumed();
                    if std::mem::take(&mut self.pending_ctrl_alt_del) {
                        self.host.guest_shutdown();
                    }
                }
                Ok(Reply::Empty)
            }
            InstanceStart => self.start(),
            SendCtrlAltDel => {
                match self.state {
                    RunState::Running => self.host.guest_shutdown(),
                    // Paused vCPUs see the key press only once resumed.
                    _ => self.pending_ctrl_alt_del = true,
                }
                Ok(Reply::Empty)
            }
            FlushMetrics => self.flush_metrics(),
        }
    }

    /// The full configuration, as `GET /vm/config` reports it.
    pub fn full_config(&self) -> Value {
        let opt = |v: &Option<Value>| v.clone().unwrap_or(Value::Null);
        let boot_source = self
            .boot_source
            .clone()
            .unwrap_or_else(|| json!({"kernel_image_path": "", "initrd_path": null}));
        json!({
            "balloon": opt(&self.balloon),
            "drives": self.drives,
            "boot-source": boot_source,
            "cpu-config": null,
            "logger": null,
            "machine-config": self.machine.to_json(),
            "metrics": null,
            "memory-hotplug": self.hotplug.as_ref().map(|h| h.config.clone()).unwrap_or(Value::Null),
            "mmds-config": opt(&self.mmds_config),
            "network-interfaces": self.nets,
            "pmem": self.pmem,
            "vsock": opt(&self.vsock),
            "entropy": opt(&self.entropy),
        })
    }

    fn update_machine(&mut self, body: &Value, put: bool) -> Result<Reply, VmError> {
        self.boot_path = true;
        let mut next = self.machine.clone();
        if put {
            next.smt = false;
            next.track_dirty_pages = false;
            next.huge_pages = "None".to_owned();
        }
        if let Some(n) = number(body, "vcpu_count") {
            next.vcpu_count = n;
        }
        if let Some(n) = number(body, "mem_size_mib") {
            next.mem_size_mib = n;
        }
        if let Some(b) = flag(body, "smt") {
            next.smt = b;
        }
        if let Some(b) = flag(body, "track_dirty_pages") {
            next.track_dirty_pages = b;
        }
        if let Some(h) = text(body, "huge_pages") {
            next.huge_pages = h.to_owned();
        }
        match text(body, "cpu_template") {
            Some("None") => next.cpu_template = None,
            Some(t) => next.cpu_template = Some(t.to_owned()),
            None => {}
        }
        let bad = |m: &str| Err(VmError::MachineConfig(m.to_owned()));
        if next.vcpu_count == 0
            || next.vcpu_count > MAX_SUPPORTED_VCPUS
            || (next.smt && next.vcpu_count > 1 && next.vcpu_count % 2 == 1)
        {
            return bad(
                "The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.",
            );
        }
        if next.mem_size_mib == 0 || (next.hugetlbfs() && next.mem_size_mib % 2 == 1) {
            return bad(
                "The memory size (MiB) is either 0, or not a multiple of the configured page size.",
            );
        }
        if let Some(balloon) = &self.balloon {
            if number(balloon, "amount_mib").unwrap_or(0) > next.mem_size_mib {
                return bad(
                    "The memory size (MiB) is smaller than the previously set balloon device target size.",
                );
            }
            if next.hugetlbfs() {
                return bad(
                    "Firecracker's huge pages support is incompatible with memory ballooning.",
                );
            }
        }
        if next.hugetlbfs()
            && self
                .boot_source
                .as_ref()
                .is_some_and(|b| given(b, "initrd_path").is_some())
        {
            return bad("Firecracker's huge pages support is incompatible with initrds.");
        }
        self.machine = next;
        Ok(Reply::Empty)
    }

    fn put_boot_source(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        let kernel = text(&body, "kernel_image_path").unwrap_or_default();
        let info = self
            .host
            .open(Path::new(kernel), false)
            .map_err(|e| VmError::BootSource(format!("The kernel file cannot be opened: {e}")))?;
        if let Some(initrd) = given(&body, "initrd_path").and_then(Value::as_str) {
            self.host.open(Path::new(initrd), false).map_err(|e| {
                VmError::BootSource(format!(
                    "The initrd file cannot be opened due to invalid path or invalid permissions. {e}"
                ))
            })?;
        }
        let cmdline = given(&body, "boot_args")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_KERNEL_CMDLINE);
        if cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(VmError::BootSource(format!(
                "The kernel command line is invalid: the command line is {} bytes, at most {} fit",
                cmdline.len(),
                CMDLINE_MAX_SIZE - 1
            )));
        }
        if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(VmError::BootSource(
                "The kernel command line is invalid: String contains an invalid character"
                    .to_owned(),
            ));
        }
        self.kernel = Some(info);
        self.boot_source = Some(self.spec.normalize("BootSource", &body));
        Ok(Reply::Empty)
    }

    fn root_device_exists(&self, except_drive: Option<&str>, except_pmem: Option<&str>) -> bool {
        self.drives
            .iter()
            .any(|d| flag(d, "is_root_device") == Some(true) && text(d, "drive_id") != except_drive)
            || self
                .pmem
                .iter()
                .any(|p| flag(p, "root_device") == Some(true) && text(p, "id") != except_pmem)
    }

    fn put_drive(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        let id = text(&body, "drive_id").unwrap_or_default().to_owned();
        let root = flag(&body, "is_root_device").unwrap_or(false);
        if root && self.root_device_exists(Some(&id), None) {
            return Err(VmError::Drive(
                "A root block device already exists!".to_owned(),
            ));
        }
        let read_only = flag(&body, "is_read_only").unwrap_or(false);
        match (
            given(&body, "path_on_host").and_then(Value::as_str),
            given(&body, "socket").and_then(Value::as_str),
        ) {
            (Some(path), None) => {
                self.host.open(Path::new(path), !read_only).map_err(|e| {
                    VmError::Drive(format!(
                        "Unable to create the virtio block device: VirtioBackend(BackingFile({e:?}, {path:?}))"
                    ))
                })?;
            }
            (None, Some(socket)) => {
                self.host.connect_unix(Path::new(socket)).map_err(|e| {
                    VmError::Drive(format!(
                        "Unable to create the vhost-user-block device: Vhost({e:?})"
                    ))
                })?;
            }
            _ => {
                return Err(VmError::Drive(
                    "Unable to create the block device: give exactly one of `path_on_host` (virtio-block) or `socket` (vhost-user-block)".to_owned(),
                ));
            }
        }
        let drive = self.spec.normalize("Drive", &body);
        match self
            .drives
            .iter()
            .position(|d| text(d, "drive_id") == Some(id.as_str()))
        {
            None if root => self.drives.insert(0, drive),
            None => self.drives.push(drive),
            Some(index) => {
                self.drives[index] = drive;
                if root && index != 0 {
                    self.drives.swap(0, index);
                }
            }
        }
        Ok(Reply::Empty)
    }

    fn patch_drive(&mut self, body: &Value) -> Result<Reply, VmError> {
        let id = text(body, "drive_id").unwrap_or_default();
        let Some(index) = self
            .drives
            .iter()
            .position(|d| text(d, "drive_id") == Some(id))
        else {
            return Err(VmError::Drive(format!(
                "Error during drive update (patch): Device manager error: no block device with id {id}"
            )));
        };
        let path = given(body, "path_on_host").and_then(Value::as_str);
        let limiter = given(body, "rate_limiter");
        if path.is_none() && limiter.is_none() && given(&self.drives[index], "socket").is_none() {
            return Err(VmError::Drive(format!(
                "Error during drive update (patch): drive {id} is not a vhost-user-block device; give `path_on_host` or `rate_limiter`"
            )));
        }
        if let Some(path) = path {
            let read_only = flag(&self.drives[index], "is_read_only").unwrap_or(false);
            self.host
                .open(Path::new(path), !read_only)
                .map_err(|e| VmError::Drive(format!("Error during drive update (patch): {e}")))?;
        }
        if let Some(drive) = self.drives[index].as_object_mut() {
            if let Some(path) = path {
                drive.insert("path_on_host".to_owned(), Value::String(path.to_owned()));
            }
            if let Some(limiter) = limiter {
                drive.insert("rate_limiter".to_owned(), limiter.clone());
            }
        }
        Ok(Reply::Empty)
    }

    fn put_pmem(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        let id = text(&body, "id").unwrap_or_default().to_owned();
        if flag(&body, "root_device") == Some(true) && self.root_device_exists(None, Some(&id)) {
            return Err(VmError::Pmem("A root device already exists!".to_owned()));
        }
        let path = text(&body, "path_on_host").unwrap_or_default();
        let read_only = flag(&body, "read_only").unwrap_or(false);
        self.host.open(Path::new(path), !read_only).map_err(|e| {
            VmError::Pmem(format!(
                "Error creating the pmem device: cannot open {path}: {e}"
            ))
        })?;
        let pmem = self.spec.normalize("Pmem", &body);
        match self
            .pmem
            .iter()
            .position(|p| text(p, "id") == Some(id.as_str()))
        {
            Some(index) => self.pmem[index] = pmem,
            None => self.pmem.push(pmem),
        }
        Ok(Reply::Empty)
    }

    fn patch_pmem(&mut self, body: &Value) -> Result<Reply, VmError> {
        let id = text(body, "id").unwrap_or_default();
        let Some(device) = self.pmem.iter_mut().find(|p| text(p, "id") == Some(id)) else {
            return Err(VmError::Pmem(format!(
                "Error updating the pmem device: no pmem device with id {id}"
            )));
        };
        if let (Some(limiter), Some(map)) = (given(body, "rate_limiter"), device.as_object_mut()) {
            map.insert("rate_limiter".to_owned(), limiter.clone());
        }
        Ok(Reply::Empty)
    }

    fn put_network(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        let id = text(&body, "iface_id").unwrap_or_default().to_owned();
        let tap = text(&body, "host_dev_name").unwrap_or_default().to_owned();
        if let Some(mac) = given(&body, "guest_mac").and_then(Value::as_str)
            && !valid_mac(mac)
        {
            return Err(VmError::Body(format!("invalid MAC address `{mac}`")));
        }
        let others = || {
            self.nets
                .iter()
                .filter(|n| text(n, "iface_id") != Some(id.as_str()))
        };
        if others().any(|n| text(n, "host_dev_name") == Some(tap.as_str())) {
            return Err(VmError::Network(format!(
                "The host device name {tap} is already in use."
            )));
        }
        if let Some(mac) = given(&body, "guest_mac").and_then(Value::as_str)
            && others().any(|n| text(n, "guest_mac").is_some_and(|m| m.eq_ignore_ascii_case(mac)))
        {
            return Err(VmError::Network(format!(
                "The guest MAC address {mac} is already in use."
            )));
        }
        if tap.is_empty() || tap.len() > MAX_TAP_NAME_LEN {
            return Err(VmError::Network(format!(
                "Could not create the network device: Open tap device failed: Invalid interface name {tap:?} (at most {MAX_TAP_NAME_LEN} bytes)."
            )));
        }
        let net = self.spec.normalize("NetworkInterface", &body);
        match self
            .nets
            .iter()
            .position(|n| text(n, "iface_id") == Some(id.as_str()))
        {
            Some(index) => self.nets[index] = net,
            None => self.nets.push(net),
        }
        Ok(Reply::Empty)
    }

    fn patch_network(&mut self, body: &Value) -> Result<Reply, VmError> {
        let id = text(body, "iface_id").unwrap_or_default();
        let Some(net) = self
            .nets
            .iter_mut()
            .find(|n| text(n, "iface_id") == Some(id))
        else {
            return Err(VmError::Network(format!(
                "Unable to update the net device: Device manager error: no network interface with id {id}"
            )));
        };
        if let Some(map) = net.as_object_mut() {
            for key in ["rx_rate_limiter", "tx_rate_limiter"] {
                if let Some(limiter) = given(body, key) {
                    map.insert(key.to_owned(), limiter.clone());
                }
            }
        }
        Ok(Reply::Empty)
    }

    fn put_vsock(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        if let Some(old) = self.vsock_uds() {
            // Firecracker drops the old device and removes its socket first.
            self.vsock = None;
            self.host.release_vsock(&old).map_err(|e| {
                VmError::Vsock(format!(
                    "Cannot remove the old vsock socket {}: {e}",
                    old.display()
                ))
            })?;
        }
        let uds = text(&body, "uds_path").unwrap_or_default();
        self.host.bind_vsock(Path::new(uds)).map_err(|e| {
            VmError::Vsock(format!(
                "Cannot create backend for vsock device: Error binding to the host-side Unix socket: {e}"
            ))
        })?;
        self.vsock = Some(body);
        Ok(Reply::Empty)
    }

    fn put_balloon(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        if number(&body, "amount_mib").unwrap_or(0) > self.machine.mem_size_mib {
            return Err(VmError::BalloonConfig(
                "Amount of pages requested is too large.".to_owned(),
            ));
        }
        if self.machine.hugetlbfs() {
            return Err(VmError::BalloonConfig(
                "Firecracker's huge pages support is incompatible with memory ballooning."
                    .to_owned(),
            ));
        }
        self.balloon = Some(self.spec.normalize("Balloon", &body));
        Ok(Reply::Empty)
    }

    fn balloon_mut(&mut self) -> Result<&mut Map<String, Value>, VmError> {
        self.balloon
            .as_mut()
            .and_then(Value::as_object_mut)
            .ok_or_else(|| VmError::BalloonUpdate("No balloon device found.".to_owned()))
    }

    fn patch_balloon(&mut self, body: &Value) -> Result<Reply, VmError> {
        let amount = number(body, "amount_mib").unwrap_or(0);
        let mem = self.machine.mem_size_mib;
        let balloon = self.balloon_mut()?;
        if amount > mem {
            return Err(VmError::BalloonUpdate(
                "Amount of pages requested is too large.".to_owned(),
            ));
        }
        balloon.insert("amount_mib".to_owned(), amount.into());
        Ok(Reply::Empty)
    }

    fn stats_enabled(&self) -> bool {
        self.balloon
            .as_ref()
            .and_then(|b| number(b, "stats_polling_interval_s"))
            .is_some_and(|n| n > 0)
    }

    fn balloon_stats(&mut self) -> Result<Reply, VmError> {
        let amount = self
            .balloon
            .as_ref()
            .and_then(|b| number(b, "amount_mib"))
            .ok_or_else(|| VmError::BalloonUpdate("No balloon device found.".to_owned()))?;
        if !self.stats_enabled() {
            return Err(VmError::BalloonUpdate(
                "Statistics for the balloon device are not enabled".to_owned(),
            ));
        }
        let total = self.machine.mem_size_mib * MIB;
        Ok(Reply::Json(json!({
            "target_pages": amount * 256,
            "actual_pages": amount * 256,
            "target_mib": amount,
            "actual_mib": amount,
            "total_memory": total,
            "free_memory": total.saturating_sub(amount * MIB),
            "available_memory": total.saturating_sub(amount * MIB),
        })))
    }

    fn patch_balloon_stats(&mut self, body: &Value) -> Result<Reply, VmError> {
        let interval = number(body, "stats_polling_interval_s").unwrap_or(0);
        let enabled = self.stats_enabled();
        let balloon = self.balloon_mut()?;
        if enabled != (interval > 0) {
            return Err(VmError::BalloonUpdate(
                "Cannot enable/disable the statistics after boot.".to_owned(),
            ));
        }
        balloon.insert("stats_polling_interval_s".to_owned(), interval.into());
        Ok(Reply::Empty)
    }

    fn hinting_enabled(&self) -> Result<(), VmError> {
        match &self.balloon {
            None => Err(VmError::BalloonUpdate(
                "No balloon device found.".to_owned(),
            )),
            Some(b) if flag(b, "free_page_hinting") == Some(true) => Ok(()),
            Some(_) => Err(VmError::BalloonUpdate(
                "Free page hinting was not enabled when the balloon device was configured."
                    .to_owned(),
            )),
        }
    }

    fn start_hinting(&mut self, body: Option<&Value>) -> Result<Reply, VmError> {
        self.hinting_enabled()?;
        // Command ids start at 2 (0 and 1 are STOP and DONE). The fake guest
        // reports each run at once; on stop it reports DONE only if the run
        // asked for `acknowledge_on_stop` (Firecracker's default: true).
        let next = self.hinting.as_ref().map_or(2, |h| h.host_cmd.max(1) + 1);
        self.hinting = Some(Hinting {
            host_cmd: next,
            guest_cmd: Some(next),
            acknowledge_on_stop: body
                .and_then(|b| flag(b, "acknowledge_on_stop"))
                .unwrap_or(true),
        });
        Ok(Reply::Empty)
    }

    fn hinting_status(&mut self) -> Result<Reply, VmError> {
        self.hinting_enabled()?;
        let (host_cmd, guest_cmd) = self
            .hinting
            .as_ref()
            .map_or((0, None), |h| (h.host_cmd, h.guest_cmd));
        Ok(Reply::Json(
            json!({"host_cmd": host_cmd, "guest_cmd": guest_cmd}),
        ))
    }

    fn stop_hinting(&mut self) -> Result<Reply, VmError> {
        self.hinting_enabled()?;
        let (acknowledge, guest_cmd) = self
            .hinting
            .as_ref()
            .map_or((true, None), |h| (h.acknowledge_on_stop, h.guest_cmd));
        self.hinting = Some(Hinting {
            host_cmd: 0,
            guest_cmd: if acknowledge { Some(1) } else { guest_cmd },
            acknowledge_on_stop: acknowledge,
        });
        Ok(Reply::Empty)
    }

    fn put_logger(&mut self, body: &Value) -> Result<Reply, VmError> {
        let path = given(body, "log_path")
            .and_then(Value::as_str)
            .map(PathBuf::from);
        if let Some(path) = &path {
            self.host
                .append_line(path, "")
                .map_err(|e| VmError::Logger(format!("Failed to open target file: {e}")))?;
        }
        let level = text(body, "level")
            .and_then(LogLevel::parse)
            .unwrap_or(LogLevel::Info);
        self.logger = Some(LoggerConfig {
            path,
            level,
            show_level: flag(body, "show_level").unwrap_or(false),
            show_log_origin: flag(body, "show_log_origin").unwrap_or(false),
        });
        Ok(Reply::Empty)
    }

    fn put_metrics(&mut self, body: &Value) -> Result<Reply, VmError> {
        if self.metrics.is_some() {
            return Err(VmError::Metrics(
                "Reinitialization of metrics not allowed.".to_owned(),
            ));
        }
        let path = PathBuf::from(text(body, "metrics_path").unwrap_or_default());
        self.host
            .append_line(&path, "")
            .map_err(|e| VmError::Metrics(format!("Cannot initialize the metrics system: {e}")))?;
        self.metrics = Some(Metrics {
            path,
            emit_id: flag(body, "emit_id").unwrap_or(false),
            properties: given(body, "properties").cloned(),
        });
        Ok(Reply::Empty)
    }

    fn flush_metrics(&mut self) -> Result<Reply, VmError> {
        let Some(metrics) = self.metrics.clone() else {
            return Ok(Reply::Empty);
        };
        let mut line = json!({
            "utc_timestamp_ms": u64::try_from(self.host.now().as_millis()).unwrap_or(u64::MAX),
            "api_server": {"requests": self.requests},
            "vmm": {"state": self.state.as_str()},
        });
        if let Some(map) = line.as_object_mut() {
            if metrics.emit_id {
                map.insert("id".to_owned(), Value::String(self.id.clone()));
            }
            if let Some(props) = &metrics.properties {
                map.insert("properties".to_owned(), props.clone());
            }
        }
        self.host
            .append_line(&metrics.path, &line.to_string())
            .map_err(|e| VmError::Internal(format!("Metrics error: {e}")))?;
        Ok(Reply::Empty)
    }

    fn check_mmds_size(&self, data: &Value) -> Result<(), VmError> {
        if data.to_string().len() > self.mmds_size_limit {
            return Err(VmError::MmdsLimit(
                "The MMDS patch request doesn't fit.".to_owned(),
            ));
        }
        Ok(())
    }

    fn put_mmds(&mut self, body: Value) -> Result<Reply, VmError> {
        self.check_mmds_size(&body)?;
        self.mmds = Some(body);
        Ok(Reply::Empty)
    }

    fn patch_mmds(&mut self, body: &Value) -> Result<Reply, VmError> {
        let Some(current) = &self.mmds else {
            return Err(VmError::Mmds(
                "The MMDS data store is not initialized.".to_owned(),
            ));
        };
        let mut next = current.clone();
        merge_patch(&mut next, body);
        self.check_mmds_size(&next)?;
        self.mmds = Some(next);
        Ok(Reply::Empty)
    }

    fn put_mmds_config(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        let ifaces: Vec<&str> = body
            .get("network_interfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if ifaces.is_empty() {
            return Err(VmError::MmdsConfig(
                "The list of network interface IDs that allow forwarding MMDS requests is empty."
                    .to_owned(),
            ));
        }
        if !ifaces
            .iter()
            .all(|id| self.nets.iter().any(|n| text(n, "iface_id") == Some(id)))
        {
            return Err(VmError::MmdsConfig(
                "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.".to_owned(),
            ));
        }
        if let Some(addr) = given(&body, "ipv4_address").and_then(Value::as_str)
            && !valid_link_local(addr)
        {
            return Err(VmError::MmdsConfig(
                "The MMDS IPv4 address is not link local.".to_owned(),
            ));
        }
        self.mmds_config = Some(self.spec.normalize("MmdsConfig", &body));
        if self.mmds.is_none() {
            self.mmds = Some(json!({}));
        }
        Ok(Reply::Empty)
    }

    fn put_hotplug(&mut self, body: Value) -> Result<Reply, VmError> {
        self.boot_path = true;
        let config = self.spec.normalize("MemoryHotplugConfig", &body);
        let total = number(&config, "total_size_mib").unwrap_or(0);
        let slot = number(&config, "slot_size_mib").unwrap_or(128);
        let block = number(&config, "block_size_mib").unwrap_or(2);
        let bad = |m: String| Err(VmError::MemoryHotplugConfig(m));
        if !block.is_power_of_two() {
            return bad(format!("Block size must be a power of 2, got {block} MiB"));
        }
        if !slot.is_multiple_of(block) {
            return bad(format!(
                "Slot size ({slot} MiB) must be a multiple of the block size ({block} MiB)"
            ));
        }
        if total == 0 || !total.is_multiple_of(slot) {
            return bad(format!(
                "Total size ({total} MiB) must be a non-zero multiple of the slot size ({slot} MiB)"
            ));
        }
        self.hotplug = Some(Hotplug {
            config,
            requested_mib: 0,
        });
        Ok(Reply::Empty)
    }

    fn patch_hotplug(&mut self, body: &Value) -> Result<Reply, VmError> {
        let Some(hotplug) = &mut self.hotplug else {
            return Err(VmError::MemoryHotplugUpdate(
                "The memory hotplug device is not configured".to_owned(),
            ));
        };
        let requested = number(body, "requested_size_mib").unwrap_or(0);
        let total = number(&hotplug.config, "total_size_mib").unwrap_or(0);
        let block = number(&hotplug.config, "block_size_mib")
            .unwrap_or(2)
            .max(1);
        if requested > total || !requested.is_multiple_of(block) {
            return Err(VmError::MemoryHotplugUpdate(format!(
                "Requested size ({requested} MiB) must be a multiple of the block size ({block} MiB) and at most the total size ({total} MiB)"
            )));
        }
        hotplug.requested_mib = requested;
        Ok(Reply::Empty)
    }

    fn hotplug_status(&mut self) -> Result<Reply, VmError> {
        let Some(hotplug) = &self.hotplug else {
            return Err(VmError::MemoryHotplugUpdate(
                "The memory hotplug device is not configured".to_owned(),
            ));
        };
        let field = |k| number(&hotplug.config, k).unwrap_or(0);
        Ok(Reply::Json(json!({
            "total_size_mib": field("total_size_mib"),
            "slot_size_mib": field("slot_size_mib"),
            "block_size_mib": field("block_size_mib"),
            // The fake guest plugs whatever is requested at once.
            "plugged_size_mib": hotplug.requested_mib,
            "requested_size_mib": hotplug.requested_mib,
        })))
    }

    fn kernel_cmdline(&self) -> String {
        let mut cmdline = self
            .boot_source
            .as_ref()
            .and_then(|b| given(b, "boot_args"))
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_KERNEL_CMDLINE)
            .to_owned();
        if let Some(root) = self
            .drives
            .first()
            .filter(|d| flag(d, "is_root_device") == Some(true))
        {
            match given(root, "partuuid").and_then(Value::as_str) {
                Some(uuid) => cmdline.push_str(&format!(" root=PARTUUID={uuid}")),
                None => cmdline.push_str(" root=/dev/vda"),
            }
            let read_only = flag(root, "is_read_only").unwrap_or(false);
            cmdline.push_str(if read_only { " ro" } else { " rw" });
        }
        cmdline
    }

    fn serial_out(&self) -> Option<PathBuf> {
        self.serial
            .as_ref()
            .and_then(|s| given(s, "serial_out_path"))
            .and_then(Value::as_str)
            .map(PathBuf::from)
    }

    fn start(&mut self) -> Result<Reply, VmError> {
        let Some(boot) = &self.boot_source else {
            return Err(VmError::StartMicrovm(
                "Cannot start microvm without kernel configuration.".to_owned(),
            ));
        };
        let kernel = text(boot, "kernel_image_path")
            .unwrap_or_default()
            .to_owned();
        match self.kernel {
            Some(info) if info.is_file && info.len > 0 => {}
            _ => {
                return Err(VmError::StartMicrovm(format!(
                    "Cannot load kernel due to invalid memory configuration or invalid kernel image: Failed to read magic number of {kernel}"
                )));
            }
        }
        let summary = BootSummary {
            kernel,
            cmdline: self.kernel_cmdline(),
            vcpus: self.machine.vcpu_count,
            mem_mib: self.machine.mem_size_mib,
            drives: self
                .drives
                .iter()
                .filter_map(|d| text(d, "drive_id"))
                .map(str::to_owned)
                .collect(),
            nets: self
                .nets
                .iter()
                .filter_map(|n| text(n, "iface_id"))
                .map(str::to_owned)
                .collect(),
            vsock: self.vsock.as_ref().map(|v| {
                (
                    number(v, "guest_cid").unwrap_or(0),
                    text(v, "uds_path").unwrap_or_default().to_owned(),
                )
            }),
        };
        let start = GuestStart {
            console: console::boot_lines(&summary),
            serial_out: self.serial_out(),
            vsock_uds: self.vsock_uds(),
            running: true,
        };
        self.host
            .guest_started(&start)
            .map_err(|e| VmError::StartMicrovm(format!("Cannot start the guest devices: {e}")))?;
        self.state = RunState::Running;
        Ok(Reply::Empty)
    }

    fn create_snapshot(&mut self, body: &Value) -> Result<Reply, VmError> {
        if self.state != RunState::Paused {
            return Err(VmError::CreateSnapshot(
                "Cannot save the microVM state: Operation not allowed: the microVM must be paused"
                    .to_owned(),
            ));
        }
        let snapshot_path = PathBuf::from(text(body, "snapshot_path").unwrap_or_default());
        let mem_path = PathBuf::from(text(body, "mem_file_path").unwrap_or_default());
        let mut config = self.full_config();
        if let Some(map) = config.as_object_mut() {
            // Boot source, logger and metrics are not part of a snapshot.
            for key in ["boot-source", "logger", "metrics", "cpu-config"] {
                map.remove(key);
            }
        }
        let document = json!({
            SNAPSHOT_MARKER: 1,
            "vmm_version": self.version,
            "snapshot_type": text(body, "snapshot_type").unwrap_or("Full"),
            "config": config,
        });
        self.host
            .write(&snapshot_path, document.to_string().as_bytes())
            .map_err(|e| {
                VmError::CreateSnapshot(format!(
                    "Cannot perform write on the snapshot backing file: {e}"
                ))
            })?;
        self.host
            .create_sparse(&mem_path, self.machine.mem_size_mib * MIB)
            .map_err(|e| {
                VmError::CreateSnapshot(format!(
                    "Cannot perform write on the memory backing file: {e}"
                ))
            })?;
        self.host.vsock_reset();
        Ok(Reply::Empty)
    }

    fn load_snapshot(&mut self, params: LoadSnapshot) -> Result<Reply, VmError> {
        if self.boot_path {
            return Err(VmError::LoadSnapshot(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .to_owned(),
            ));
        }
        match self.restore(&params) {
            Ok(()) => Ok(Reply::Empty),
            Err(message) => {
                // Firecracker considers the process too dirty to go on.
                self.host.fatal_error();
                Err(VmError::LoadSnapshot(format!(
                    "Failed to restore from snapshot: {message}"
                )))
            }
        }
    }

    fn restore(&mut self, params: &LoadSnapshot) -> Result<(), String> {
        let raw = self.host.read(&params.snapshot_path).map_err(|e| {
            format!(
                "Cannot open the snapshot file {}: {e}",
                params.snapshot_path.display()
            )
        })?;
        let document: Value = serde_json::from_slice(&raw)
            .map_err(|e| format!("Cannot deserialize the microVM state: {e}"))?;
        if document.get(SNAPSHOT_MARKER).is_none() {
            return Err(
                "Cannot deserialize the microVM state: not a banger-fake-firecracker snapshot"
                    .to_owned(),
            );
        }
        let config = document.get("config").cloned().unwrap_or(Value::Null);
        let machine = config.get("machine-config").cloned().unwrap_or(Value::Null);
        let mut restored = Machine {
            vcpu_count: number(&machine, "vcpu_count").unwrap_or(1),
            mem_size_mib: number(&machine, "mem_size_mib").unwrap_or(DEFAULT_MEM_SIZE_MIB),
            smt: flag(&machine, "smt").unwrap_or(false),
            track_dirty_pages: params.track_dirty_pages,
            huge_pages: text(&machine, "huge_pages").unwrap_or("None").to_owned(),
            cpu_template: text(&machine, "cpu_template").map(str::to_owned),
        };
        if params.huge_pages != "Snapshot" {
            restored.huge_pages = params.huge_pages.clone();
        }
        match &params.mem_backend {
            MemBackend::File(path) => {
                if restored.hugetlbfs() {
                    return Err("Explicit 2M huge pages need a Uffd memory backend".to_owned());
                }
                let info = self.host.open(path, false).map_err(|e| {
                    format!("Failed to load guest memory from {}: {e}", path.display())
                })?;
                let needed = restored.mem_size_mib * MIB;
                if info.len < needed {
                    return Err(format!(
                        "Failed to load guest memory: {} holds {} bytes, the snapshot needs {needed}",
                        path.display(),
                        info.len
                    ));
                }
            }
            MemBackend::Uffd(path) => {
                return Err(format!(
                    "banger-fake-firecracker serves guest memory only from a File backend, not through the UFFD handler at {}",
                    path.display()
                ));
            }
        }
        let list = |key: &str| -> Vec<Value> {
            config
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let drives = list("drives");
        for drive in &drives {
            if let Some(path) = given(drive, "path_on_host").and_then(Value::as_str) {
                let read_only = flag(drive, "is_read_only").unwrap_or(false);
                self.host.open(Path::new(path), !read_only).map_err(|e| {
                    format!("Cannot restore devices: block device backing file {path}: {e}")
                })?;
            }
        }
        let mut nets = list("network-interfaces");
        for (iface, tap) in &params.network_overrides {
            let net = nets
                .iter_mut()
                .find(|n| text(n, "iface_id") == Some(iface.as_str()))
                .and_then(Value::as_object_mut)
                .ok_or_else(|| {
                    format!("Invalid network override: the snapshot has no interface {iface}")
                })?;
            net.insert("host_dev_name".to_owned(), Value::String(tap.clone()));
        }
        let mut vsock = config.get("vsock").filter(|v| !v.is_null()).cloned();
        if let (Some(uds), Some(map)) = (
            &params.vsock_override,
            vsock.as_mut().and_then(Value::as_object_mut),
        ) {
            map.insert("uds_path".to_owned(), Value::String(uds.clone()));
        }
        if let Some(uds) = vsock.as_ref().and_then(|v| text(v, "uds_path")) {
            self.host.bind_vsock(Path::new(uds)).map_err(|e| {
                format!(
                    "Cannot restore devices: vsock: Error binding to the host-side Unix socket: {e}"
                )
            })?;
        }
        let opt = |key: &str| config.get(key).filter(|v| !v.is_null()).cloned();
        self.machine = restored;
        self.drives = drives;
        self.nets = nets;
        self.pmem = list("pmem");
        self.vsock = vsock;
        self.balloon = opt("balloon");
        self.entropy = opt("entropy");
        self.mmds_config = opt("mmds-config");
        self.hotplug = opt("memory-hotplug").map(|config| Hotplug {
            config,
            requested_mib: 0,
        });
        self.restored = true;
        let start = GuestStart {
            console: console::restore_lines(
                &params.snapshot_path.display().to_string(),
                params.resume_vm,
            ),
            serial_out: self.serial_out(),
            vsock_uds: self.vsock_uds(),
            running: params.resume_vm,
        };
        self.host
            .guest_started(&start)
            .map_err(|e| format!("Cannot start the guest devices: {e}"))?;
        self.state = match params.resume_vm {
            true => RunState::Running,
            false => RunState::Paused,
        };
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A host that keeps files in memory and records what it was asked to do.
    #[derive(Debug, Default)]
    pub(crate) struct FakeHost {
        pub files: BTreeMap<PathBuf, Vec<u8>>,
        pub sockets: Vec<PathBuf>,
        pub bound: Vec<PathBuf>,
        pub calls: Vec<String>,
        pub fail_guest_start: bool,
    }

    impl FakeHost {
        pub fn with_file(mut self, path: &str, contents: &[u8]) -> Self {
            self.files.insert(PathBuf::from(path), contents.to_vec());
            self
        }
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", path.display()),
        )
    }

    impl Host for FakeHost {
        fn open(&mut self, path: &Path, _write: bool) -> io::Result<FileInfo> {
            let data = self.files.get(path).ok_or_else(|| not_found(path))?;
            Ok(FileInfo {
                is_file: true,
                len: data.len() as u64,
            })
        }
        fn connect_unix(&mut self, path: &Path) -> io::Result<()> {
            match self.sockets.iter().any(|s| s == path) {
                true => Ok(()),
                false => Err(not_found(path)),
            }
        }
        fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
            self.files.get(path).cloned().ok_or_else(|| not_found(path))
        }
        fn write(&mut self, path: &Path, contents: &[u8]) -> io::Result<()> {
            self.files.insert(path.to_owned(), contents.to_vec());
            Ok(())
        }
        fn create_sparse(&mut self, path: &Path, len: u64) -> io::Result<()> {
            // Record the size without allocating it.
            self.calls.push(format!("sparse {} {len}", path.display()));
            self.files.insert(path.to_owned(), Vec::new());
            Ok(())
        }
        fn append_line(&mut self, path: &Path, line: &str) -> io::Result<()> {
            if path.starts_with("/readonly") {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"));
            }
            let file = self.files.entry(path.to_owned()).or_default();
            if !line.is_empty() {
                file.extend_from_slice(line.as_bytes());
                file.push(b'\n');
            }
            Ok(())
        }
        fn bind_vsock(&mut self, uds_path: &Path) -> io::Result<()> {
            if self.files.contains_key(uds_path) || self.bound.iter().any(|b| b == uds_path) {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "Address in use"));
            }
            self.bound.push(uds_path.to_owned());
            Ok(())
        }
        fn release_vsock(&mut self, uds_path: &Path) -> io::Result<()> {
            self.bound.retain(|b| b != uds_path);
            self.calls.push(format!("release {}", uds_path.display()));
            Ok(())
        }
        fn guest_started(&mut self, start: &GuestStart) -> io::Result<()> {
            if self.fail_guest_start {
                return Err(io::Error::other("serial file cannot be opened"));
            }
            self.calls.push(format!(
                "started running={} vsock={:?}",
                start.running, start.vsock_uds
            ));
            self.calls
                .extend(start.console.iter().map(|l| format!("console {l}")));
            Ok(())
        }
        fn guest_paused(&mut self) {
            self.calls.push("paused".into());
        }
        fn guest_resumed(&mut self) {
            self.calls.push("resumed".into());
        }
        fn guest_shutdown(&mut self) {
            self.calls.push("shutdown".into());
        }
        fn vsock_reset(&mut self) {
            self.calls.push("vsock reset".into());
        }
        fn fatal_error(&mut self) {
            self.calls.push("fatal".into());
        }
        fn now(&self) -> Duration {
            Duration::from_secs(1_743_357_381)
        }
    }

    pub(crate) fn vm(host: FakeHost) -> Vm<FakeHost> {
        let spec = Arc::new(Spec::embedded().expect("spec"));
        Vm::new(
            host,
            spec,
            VmOptions {
                id: "vm-1".into(),
                logger: None,
                metrics_path: None,
                mmds_size_limit: 51_200,
            },
        )
    }

    fn host() -> FakeHost {
        FakeHost::default()
            .with_file("/k", b"\x7fELF kernel")
            .with_file("/root.ext4", b"root")
            .with_file("/work.ext4", b"work")
    }

    fn booted() -> Vm<FakeHost> {
        let mut vm = vm(host());
        vm.handle(Action::PutBootSource(
            json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"}),
        ))
        .expect("boot source");
        vm.handle(Action::PutDrive(
            json!({"drive_id": "root", "path_on_host": "/root.ext4", "is_root_device": true}),
        ))
        .expect("root drive");
        vm.handle(Action::PutVsock(
            json!({"guest_cid": 3, "uds_path": "/v.sock"}),
        ))
        .expect("vsock");
        vm.handle(Action::InstanceStart).expect("start");
        vm
    }

    fn json_of(reply: Result<Reply, VmError>) -> Value {
        match reply {
            Ok(Reply::Json(v)) => v,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    #[test]
    fn describe_instance_tracks_state() {
        let mut vm = vm(host());
        let info = json_of(vm.handle(Action::DescribeInstance));
        assert_eq!(info["state"], "Not started");
        assert_eq!(info["app_name"], "Firecracker");
        assert_eq!(info["id"], "vm-1");
        assert_eq!(info["vmm_version"], "1.17.0-dev");
        let mut vm = booted();
        assert_eq!(
            json_of(vm.handle(Action::DescribeInstance))["state"],
            "Running"
        );
        vm.handle(Action::Pause).expect("pause");
        assert_eq!(
            json_of(vm.handle(Action::DescribeInstance))["state"],
            "Paused"
        );
    }

    #[test]
    fn machine_config_has_firecracker_defaults() {
        let mut vm = vm(host());
        assert_eq!(
            json_of(vm.handle(Action::GetMachineConfig)),
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false, "huge_pages": "None"})
        );
        vm.handle(Action::PutMachineConfig(
            json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": true}),
        ))
        .expect("put");
        vm.handle(Action::PatchMachineConfig(json!({"vcpu_count": 4})))
            .expect("patch");
        let mc = json_of(vm.handle(Action::GetMachineConfig));
        assert_eq!(
            (
                mc["vcpu_count"].clone(),
                mc["mem_size_mib"].clone(),
                mc["smt"].clone()
            ),
            (json!(4), json!(1024), json!(true))
        );
        let err = vm
            .handle(Action::PatchMachineConfig(json!({"vcpu_count": 3})))
            .expect_err("odd vcpus with smt");
        assert!(
            err.to_string()
                .starts_with("Machine config error: The number of vCPUs"),
            "{err}"
        );
        let err = vm
            .handle(Action::PutMachineConfig(
                json!({"vcpu_count": 1, "mem_size_mib": 0}),
            ))
            .expect_err("zero memory");
        assert!(
            err.to_string().contains("memory size (MiB) is either 0"),
            "{err}"
        );
    }

    #[test]
    fn start_needs_a_boot_source() {
        let mut vm = vm(host());
        assert_eq!(
            vm.handle(Action::InstanceStart)
                .expect_err("no kernel")
                .to_string(),
            "Start microvm error: Cannot start microvm without kernel configuration."
        );
    }

    #[test]
    fn boot_source_opens_the_kernel() {
        let mut vm = vm(host());
        let err = vm
            .handle(Action::PutBootSource(
                json!({"kernel_image_path": "/missing"}),
            ))
            .expect_err("missing kernel");
        assert!(
            err.to_string()
                .starts_with("Boot source error: The kernel file cannot be opened:"),
            "{err}"
        );
        let err = vm
            .handle(Action::PutBootSource(
                json!({"kernel_image_path": "/k", "initrd_path": "/nope"}),
            ))
            .expect_err("missing initrd");
        assert!(
            err.to_string().contains("initrd file cannot be opened"),
            "{err}"
        );
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        let err = vm
            .handle(Action::PutBootSource(
                json!({"kernel_image_path": "/k", "boot_args": long}),
            ))
            .expect_err("cmdline too long");
        assert!(err.to_string().contains("command line is invalid"), "{err}");
    }

    #[test]
    fn empty_kernel_cannot_boot() {
        let mut vm = vm(host().with_file("/empty", b""));
        vm.handle(Action::PutBootSource(
            json!({"kernel_image_path": "/empty"}),
        ))
        .expect("opens");
        let err = vm.handle(Action::InstanceStart).expect_err("empty kernel");
        assert!(
            err.to_string().contains("Failed to read magic number"),
            "{err}"
        );
        assert_eq!(vm.state(), RunState::NotStarted);
    }

    #[test]
    fn start_boots_once_and_prints_the_console() {
        let mut vm = booted();
        let calls = &vm.host().calls;
        assert!(
            calls
                .iter()
                .any(|c| c == "started running=true vsock=Some(\"/v.sock\")"),
            "{calls:?}"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.contains("Command line: console=ttyS0 root=/dev/vda rw")),
            "{calls:?}"
        );
        assert_eq!(
            vm.handle(Action::InstanceStart),
            Err(VmError::NotSupportedPostBoot)
        );
    }

    #[test]
    fn preboot_resources_are_refused_after_start() {
        let mut vm = booted();
        for action in [
            Action::PutMachineConfig(json!({"vcpu_count": 1, "mem_size_mib": 128})),
            Action::PutBootSource(json!({"kernel_image_path": "/k"})),
            Action::PutDrive(
                json!({"drive_id": "x", "path_on_host": "/work.ext4", "is_root_device": false}),
            ),
            Action::PutNetwork(json!({"iface_id": "eth0", "host_dev_name": "tap0"})),
            Action::PutVsock(json!({"guest_cid": 4, "uds_path": "/w.sock"})),
            Action::PutLogger(json!({})),
            Action::PutEntropy(json!({})),
            Action::PutSerial(json!({})),
        ] {
            assert_eq!(
                vm.handle(action).expect_err("post-boot").to_string(),
                "The requested operation is not supported after starting the microVM."
            );
        }
    }

    #[test]
    fn runtime_calls_are_refused_before_start() {
        let mut vm = vm(host());
        for action in [
            Action::Pause,
            Action::Resume,
            Action::SendCtrlAltDel,
            Action::FlushMetrics,
            Action::PatchDrive(json!({"drive_id": "root"})),
            Action::CreateSnapshot(json!({"snapshot_path": "/s", "mem_file_path": "/m"})),
        ] {
            assert_eq!(vm.handle(action), Err(VmError::NotSupportedPreBoot));
        }
    }

    #[test]
    fn drives_follow_firecracker_rules() {
        let mut vm = vm(host());
        let err = vm
            .handle(Action::PutDrive(
                json!({"drive_id": "root", "path_on_host": "/missing", "is_root_device": true}),
            ))
            .expect_err("missing backing file");
        assert!(
            err.to_string()
                .starts_with("Drive config error: Unable to create the virtio block device"),
            "{err}"
        );
        vm.handle(Action::PutDrive(
            json!({"drive_id": "work", "path_on_host": "/work.ext4", "is_root_device": false}),
        ))
        .expect("work");
        vm.handle(Action::PutDrive(
            json!({"drive_id": "root", "path_on_host": "/root.ext4", "is_root_device": true}),
        ))
        .expect("root");
        let err = vm
            .handle(Action::PutDrive(
                json!({"drive_id": "other", "path_on_host": "/work.ext4", "is_root_device": true}),
            ))
            .expect_err("second root");
        assert_eq!(
            err.to_string(),
            "Drive config error: A root block device already exists!"
        );
        let config = vm.full_config();
        let ids: Vec<_> = config["drives"]
            .as_array()
            .expect("drives")
            .iter()
            .map(|d| d["drive_id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("root"), json!("work")], "root comes first");
        assert_eq!(config["drives"][0]["cache_type"], "Unsafe");
    }

    #[test]
    fn network_interfaces_are_unique_and_named_like_taps() {
        let mut vm = vm(host());
        vm.handle(Action::PutNetwork(
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}),
        ))
        .expect("eth0");
        let err = vm
            .handle(Action::PutNetwork(
                json!({"iface_id": "eth1", "host_dev_name": "tap0"}),
            ))
            .expect_err("tap reused");
        assert_eq!(
            err.to_string(),
            "Network config error: The host device name tap0 is already in use."
        );
        let err = vm
            .handle(Action::PutNetwork(json!({"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "06:00:ac:10:00:02"})))
            .expect_err("mac reused");
        assert!(err.to_string().contains("guest MAC address"), "{err}");
        let err = vm
            .handle(Action::PutNetwork(
                json!({"iface_id": "eth1", "host_dev_name": "a-very-long-tap-name"}),
            ))
            .expect_err("name too long");
        assert!(err.to_string().contains("Invalid interface name"), "{err}");
        let err = vm
            .handle(Action::PutNetwork(
                json!({"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "zz"}),
            ))
            .expect_err("bad mac");
        assert!(
            err.to_string()
                .starts_with("An error occurred when deserializing"),
            "{err}"
        );
        vm.handle(Action::PutNetwork(
            json!({"iface_id": "eth0", "host_dev_name": "tap0"}),
        ))
        .expect("replace same iface");
    }

    #[test]
    fn vsock_binds_at_put_and_rebinding_releases_the_old_socket() {
        let mut vm = vm(host().with_file("/taken.sock", b""));
        let err = vm
            .handle(Action::PutVsock(
                json!({"guest_cid": 3, "uds_path": "/taken.sock"}),
            ))
            .expect_err("path exists");
        assert!(
            err.to_string()
                .starts_with("Vsock config error: Cannot create backend for vsock device"),
            "{err}"
        );
        vm.handle(Action::PutVsock(
            json!({"guest_cid": 3, "uds_path": "/a.sock"}),
        ))
        .expect("a");
        vm.handle(Action::PutVsock(
            json!({"guest_cid": 3, "uds_path": "/b.sock"}),
        ))
        .expect("b");
        assert_eq!(vm.host().bound, vec![PathBuf::from("/b.sock")]);
        assert!(vm.host().calls.contains(&"release /a.sock".to_owned()));
    }

    #[test]
    fn ctrl_alt_del_shuts_down_running_guest_and_waits_for_resume_when_paused() {
        let mut vm = booted();
        vm.handle(Action::Pause).expect("pause");
        vm.handle(Action::SendCtrlAltDel).expect("cad while paused");
        assert!(!vm.host().calls.contains(&"shutdown".to_owned()));
        vm.handle(Action::Resume).expect("resume");
        assert!(vm.host().calls.contains(&"shutdown".to_owned()));
    }

    #[test]
    fn snapshot_round_trip_restores_the_configuration() {
        let mut vm = booted();
        let err = vm
            .handle(Action::CreateSnapshot(
                json!({"snapshot_path": "/snap", "mem_file_path": "/mem"}),
            ))
            .expect_err("not paused");
        assert!(err.to_string().contains("must be paused"), "{err}");
        vm.handle(Action::Pause).expect("pause");
        vm.handle(Action::CreateSnapshot(
            json!({"snapshot_path": "/snap", "mem_file_path": "/mem"}),
        ))
        .expect("create");
        assert!(
            vm.host()
                .calls
                .contains(&format!("sparse /mem {}", 128 * MIB))
        );
        assert!(vm.host().calls.contains(&"vsock reset".to_owned()));
        let snapshot = vm
            .host()
            .files
            .get(Path::new("/snap"))
            .cloned()
            .expect("state file");

        // A fresh process loads it; the memory file must hold the guest memory.
        let mut host = host().with_file("/snap", &snapshot);
        host.files.insert(
            PathBuf::from("/mem"),
            vec![0; usize::try_from(128 * MIB).expect("fits")],
        );
        let mut fresh = self::vm(host);
        fresh
            .handle(Action::LoadSnapshot(LoadSnapshot {
                snapshot_path: "/snap".into(),
                mem_backend: MemBackend::File("/mem".into()),
                track_dirty_pages: false,
                resume_vm: false,
                network_overrides: vec![],
                vsock_override: Some("/restored.sock".into()),
                huge_pages: "Snapshot".into(),
            }))
            .expect("load");
        assert_eq!(fresh.state(), RunState::Paused);
        let config = fresh.full_config();
        assert_eq!(config["drives"][0]["drive_id"], "root");
        assert_eq!(config["vsock"]["uds_path"], "/restored.sock");
        assert_eq!(
            config["boot-source"]["kernel_image_path"], "",
            "a restored VM reports no boot source"
        );
        assert_eq!(fresh.host().bound, vec![PathBuf::from("/restored.sock")]);
        fresh.handle(Action::Resume).expect("resume");
        assert_eq!(fresh.state(), RunState::Running);
    }

    #[test]
    fn load_is_refused_after_boot_resources_and_fatal_on_failure() {
        let mut vm = vm(host());
        vm.handle(Action::PutMachineConfig(
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
        ))
        .expect("mc");
        let load = LoadSnapshot {
            snapshot_path: "/nope".into(),
            mem_backend: MemBackend::File("/mem".into()),
            track_dirty_pages: false,
            resume_vm: true,
            network_overrides: vec![],
            vsock_override: None,
            huge_pages: "Snapshot".into(),
        };
        let err = vm
            .handle(Action::LoadSnapshot(load.clone()))
            .expect_err("boot path");
        assert!(
            err.to_string()
                .contains("not allowed after configuring boot-specific resources"),
            "{err}"
        );
        assert!(!vm.host().calls.contains(&"fatal".to_owned()));

        let mut fresh = self::vm(host());
        let err = fresh
            .handle(Action::LoadSnapshot(load))
            .expect_err("no snapshot file");
        assert!(
            err.to_string()
                .starts_with("Load snapshot error: Failed to restore from snapshot"),
            "{err}"
        );
        assert!(fresh.host().calls.contains(&"fatal".to_owned()));
    }

    #[test]
    fn full_config_is_valid_for_the_spec() {
        let mut vm = booted();
        vm.handle(Action::Pause).expect("pause");
        let spec = Spec::embedded().expect("spec");
        spec.validate_definition(
            "FullVmConfiguration",
            &vm.full_config(),
            crate::schema::Mode::Full,
        )
        .expect("GET /vm/config matches FullVmConfiguration");
    }

    #[test]
    fn mmds_put_patch_get() {
        let mut vm = vm(host());
        assert_eq!(json_of(vm.handle(Action::GetMmds)), json!({}));
        let err = vm
            .handle(Action::PatchMmds(json!({"a": 1})))
            .expect_err("not initialized");
        assert!(err.to_string().starts_with("MMDS error"), "{err}");
        vm.handle(Action::PutMmds(json!({"a": {"b": 1, "c": 2}})))
            .expect("put");
        vm.handle(Action::PatchMmds(json!({"a": {"b": null, "d": 3}})))
            .expect("patch");
        assert_eq!(
            json_of(vm.handle(Action::GetMmds)),
            json!({"a": {"c": 2, "d": 3}})
        );
        let big = json!({"k": "x".repeat(60_000)});
        let err = vm.handle(Action::PutMmds(big)).expect_err("too big");
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn mmds_config_needs_existing_interfaces_and_link_local_address() {
        let mut vm = vm(host());
        let err = vm
            .handle(Action::PutMmdsConfig(
                json!({"network_interfaces": ["eth0"]}),
            ))
            .expect_err("no such iface");
        assert!(err.to_string().starts_with("MMMDS config error"), "{err}");
        vm.handle(Action::PutNetwork(
            json!({"iface_id": "eth0", "host_dev_name": "tap0"}),
        ))
        .expect("net");
        let err = vm
            .handle(Action::PutMmdsConfig(
                json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}),
            ))
            .expect_err("not link local");
        assert!(err.to_string().contains("not link local"), "{err}");
        vm.handle(Action::PutMmdsConfig(
            json!({"network_interfaces": ["eth0"]}),
        ))
        .expect("ok");
        assert_eq!(
            vm.full_config()["mmds-config"]["ipv4_address"],
            "169.254.169.254"
        );
    }

    #[test]
    fn balloon_rules() {
        let mut vm = vm(host());
        let err = vm
            .handle(Action::PutBalloon(
                json!({"amount_mib": 256, "deflate_on_oom": true}),
            ))
            .expect_err("bigger than memory");
        assert!(err.to_string().contains("too large"), "{err}");
        vm.handle(Action::PutBalloon(
            json!({"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}),
        ))
        .expect("balloon");
        assert_eq!(json_of(vm.handle(Action::GetBalloon))["amount_mib"], 64);
        vm.handle(Action::PutBootSource(json!({"kernel_image_path": "/k"})))
            .expect("boot");
        vm.handle(Action::InstanceStart).expect("start");
        vm.handle(Action::PatchBalloon(json!({"amount_mib": 32})))
            .expect("patch");
        assert_eq!(
            json_of(vm.handle(Action::GetBalloonStats))["target_mib"],
            32
        );
        assert!(
            vm.handle(Action::StartBalloonHinting(None)).is_err(),
            "hinting not enabled"
        );
    }

    #[test]
    fn balloon_hinting_runs() {
        let mut vm = vm(host());
        vm.handle(Action::PutBalloon(
            json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true}),
        ))
        .expect("balloon");
        vm.handle(Action::PutBootSource(json!({"kernel_image_path": "/k"})))
            .expect("boot");
        vm.handle(Action::InstanceStart).expect("start");
        assert_eq!(
            json_of(vm.handle(Action::GetBalloonHinting)),
            json!({"host_cmd": 0, "guest_cmd": null})
        );
        vm.handle(Action::StartBalloonHinting(Some(
            json!({"acknowledge_on_stop": false}),
        )))
        .expect("start hinting");
        assert_eq!(
            json_of(vm.handle(Action::GetBalloonHinting)),
            json!({"host_cmd": 2, "guest_cmd": 2})
        );
        vm.handle(Action::StopBalloonHinting).expect("stop");
        assert_eq!(
            json_of(vm.handle(Action::GetBalloonHinting)),
            json!({"host_cmd": 0, "guest_cmd": 2})
        );
        vm.handle(Action::StartBalloonHinting(None)).expect("again");
        vm.handle(Action::StopBalloonHinting).expect("stop");
        assert_eq!(
            json_of(vm.handle(Action::GetBalloonHinting)),
            json!({"host_cmd": 0, "guest_cmd": 1})
        );
    }

    #[test]
    fn logger_writes_firecracker_style_lines() {
        let mut vm = vm(host());
        vm.handle(Action::PutLogger(
            json!({"log_path": "/fc.log", "level": "debug", "show_level": true}),
        ))
        .expect("logger");
        vm.log(
            LogLevel::Info,
            ("api.rs", 1),
            "The API server received a Get request on \"/\".",
        );
        vm.log(LogLevel::Trace, ("api.rs", 1), "too verbose");
        let log = String::from_utf8(vm.host().files[Path::new("/fc.log")].clone()).expect("utf8");
        assert_eq!(
            log,
            "2025-03-30T17:56:21.000000000 [vm-1:fc_api:INFO] The API server received a Get request on \"/\".\n"
        );
        let err = vm
            .handle(Action::PutLogger(json!({"log_path": "/readonly/x"})))
            .expect_err("cannot open");
        assert!(
            err.to_string()
                .starts_with("Logger error: Failed to open target file"),
            "{err}"
        );
    }

    #[test]
    fn metrics_flush_appends_json_lines() {
        let mut vm = booted();
        // Post-boot metrics configuration is refused; configure a fresh one.
        assert_eq!(
            vm.handle(Action::PutMetrics(json!({"metrics_path": "/m"}))),
            Err(VmError::NotSupportedPostBoot)
        );
        let mut vm = self::vm(host());
        vm.handle(Action::PutMetrics(
            json!({"metrics_path": "/m", "emit_id": true}),
        ))
        .expect("metrics");
        assert!(
            vm.handle(Action::PutMetrics(json!({"metrics_path": "/m"})))
                .is_err(),
            "only once"
        );
        vm.handle(Action::PutBootSource(json!({"kernel_image_path": "/k"})))
            .expect("boot");
        vm.handle(Action::InstanceStart).expect("start");
        vm.count_request();
        vm.handle(Action::FlushMetrics).expect("flush");
        let line: Value = serde_json::from_slice(vm.host().files[Path::new("/m")].trim_ascii_end())
            .expect("json line");
        assert_eq!(line["id"], "vm-1");
        assert_eq!(line["api_server"]["requests"], 1);
    }

    #[test]
    fn failed_guest_start_leaves_vm_not_started() {
        let mut host = host();
        host.fail_guest_start = true;
        let mut vm = vm(host);
        vm.handle(Action::PutBootSource(json!({"kernel_image_path": "/k"})))
            .expect("boot");
        assert!(vm.handle(Action::InstanceStart).is_err());
        assert_eq!(vm.state(), RunState::NotStarted);
    }

    #[test]
    fn helpers() {
        assert!(valid_mac("06:00:ac:10:00:02"));
        assert!(!valid_mac("06:00:ac:10:00"));
        assert!(valid_link_local("169.254.169.254"));
        assert!(!valid_link_local("169.254.0.1"));
        assert_eq!(
            log_timestamp(Duration::new(0, 5)),
            "1970-01-01T00:00:00.000000005"
        );
        assert_eq!(LogLevel::parse("WARN"), Some(LogLevel::Warning));
        assert_eq!(LogLevel::parse("loud"), None);
    }
}
