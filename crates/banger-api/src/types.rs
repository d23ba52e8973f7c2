//! Request and response bodies.
//!
//! Every request body refuses fields it does not know (`#[serde(deny_unknown_fields)]`): a
//! typo such as `{"cpu": 8}` is a bad request naming the field, never a silent default.
//! Responses stay lenient, so a client can read a daemon that added a field. A request body,
//! and every object nested in one, must be a JSON object: serde's derived structs also take an
//! array and fill the fields by position, which [`JsonObject`] refuses.
//!
//! Every body derives `utoipa::ToSchema`, its schema in the API's OpenAPI document (doc
//! comments become descriptions); a field whose type utoipa does not know says its JSON type
//! (`#[schema(value_type = String)]` on a `PathBuf`, a socket address).

use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use banger_core::build::BuildInfo;
pub use banger_core::vm::{MacAddr, VmOrigin, VmState};
pub use banger_core::vmm_kind::VmmKind;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// `T` read from a JSON object and nothing else (not an array, whose elements a derived
/// struct would take by position). The daemon reads every request body through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonObject<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Only(PhantomData)).map(JsonObject)
    }
}

/// `GET /v1/status`: who the running daemon is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DaemonStatus {
    pub build: BuildInfo,
    pub pid: u32,
    #[schema(value_type = String)]
    pub socket: PathBuf,
    #[schema(value_type = String)]
    pub state_dir: PathBuf,
    #[schema(value_type = String)]
    pub config_file: PathBuf,
    #[schema(value_type = String)]
    pub log_file: PathBuf,
    /// Seconds since the Unix epoch when the daemon started.
    pub started_at: u64,
    pub ops: OpCounts,
    /// Warnings from loading the config file.
    #[serde(default)]
    pub config_warnings: Vec<String>,
    /// The `.vm` DNS server.
    #[serde(default)]
    pub dns: DnsListener,
    /// The same zone for guests, on the bridge gateway (port 53 of the gateway is redirected
    /// to it).
    #[serde(default)]
    pub guest_dns: DnsListener,
    /// Whether the host's own lookups of `*.vm` reach the daemon (systemd-resolved).
    #[serde(default)]
    pub dns_routing: DnsRouting,
    /// The warm pool of idle TAPs: capacity, not leaks.
    #[serde(default)]
    pub tap_pool: TapPoolStatus,
    /// The local web UI's listener.
    #[serde(default)]
    pub web: WebListener,
}

/// The daemon's idle TAP devices, ready for the next boots (config `tap_pool_size`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct TapPoolStatus {
    /// How many it keeps.
    pub wanted: u32,
    /// The idle ones now (filled in the background once the bridge exists).
    pub idle: Vec<String>,
}

/// How the host's resolver is told about `.vm` (see `banger doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DnsRouting {
    /// Config `dns = false`, or no server to route to.
    #[default]
    Off,
    /// systemd-resolved sends `*.vm` from this host to `server` through link `bridge`.
    Resolved {
        bridge: String,
        #[schema(value_type = String, example = "127.0.0.1:53")]
        server: std::net::SocketAddr,
    },
    /// systemd-resolved does not run here; `.vm` must be routed by hand (the reason says
    /// what was checked).
    NotAvailable { reason: String },
    /// resolved runs but refused the settings.
    Failed { error: String },
}

/// Where the daemon's `.vm` DNS server listens, or why it does not.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DnsListener {
    /// Config `dns = false`.
    #[default]
    Off,
    /// Serving UDP and TCP on this address.
    Listening {
        #[schema(value_type = String, example = "127.0.0.1:5353")]
        address: std::net::SocketAddr,
    },
    /// The server could not start (the error says why).
    Failed { error: String },
}

/// Request accounting since the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct OpCounts {
    pub in_flight: u64,
    pub completed: u64,
    /// Requests whose client went away before the answer: their work was dropped.
    pub cancelled: u64,
}

/// `POST /v1/shutdown`: the daemon stops after answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShutdownReply {
    pub pid: u32,
}

/// A VM as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub state: VmState,
    /// The image's name.
    pub image: String,
    pub image_id: String,
    pub vmm: VmmKind,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub work_disk_bytes: u64,
    pub nat: bool,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub tap: Option<String>,
    pub vsock_cid: Option<u32>,
    /// The VMM process while running.
    pub pid: Option<u32>,
    pub created_at: String,
    pub started_at: Option<String>,
    #[schema(value_type = String)]
    pub dir: PathBuf,
    #[schema(value_type = String)]
    pub console_log: PathBuf,
    #[schema(value_type = String)]
    pub vmm_log: PathBuf,
    /// Why the VM is in the `error` state.
    pub error: Option<String>,
    /// The prepared workspace, if any.
    pub workspace: Option<Workspace>,
    /// Who asked for the VM (`api`, or `mcp` for `banger mcp`).
    pub origin: VmOrigin,
    /// The warm-start template the VM was restored from, if it was (`None`: it booted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// How its disks were cloned from the template's: `qcow2 overlay`, `reflink` or `sparse
    /// copy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_clone: Option<String>,
    /// A running VM whose vCPUs are paused (`vm pause`; `vm resume` continues it). Its VMM
    /// runs: it keeps its address and resources, `vm stop` works, exec and files are refused.
    #[serde(default)]
    pub paused: bool,
    /// The VM this one was forked from (`vm fork`), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<String>,
    /// How a fork got its memory: `loaded` (copied from the saved state into its own RAM)
    /// or `shared` (a memory file mapped copy-on-write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_memory: Option<String>,
}

/// How a workspace's repository travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceMode {
    /// A depth-10 clone plus the work tree's changes.
    Overlay,
    /// The whole repository, history and submodules.
    FullCopy,
}

impl std::fmt::Display for WorkspaceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkspaceMode::Overlay => "overlay",
            WorkspaceMode::FullCopy => "full copy",
        })
    }
}

/// A VM's prepared workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    /// The checkout in the guest.
    pub guest_path: String,
    /// The host repository's root.
    #[schema(value_type = String)]
    pub host_path: PathBuf,
    /// The host's HEAD commit when prepared.
    pub head: String,
    /// The host's branch then; `None` for a detached HEAD.
    pub branch: Option<String>,
    pub mode: WorkspaceMode,
    pub include_untracked: bool,
    /// When (RFC 3339, UTC).
    pub prepared_at: String,
}

/// `POST /v1/vms/{reference}/workspace` (streamed): ship the repository enclosing `path`
/// (a host directory, absolute) into the running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareWorkspace {
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// A guest-only branch to check out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Start the guest branch from this ref (needs `branch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default)]
    pub include_untracked: bool,
    #[serde(default)]
    pub full_copy: bool,
    /// Replace a workspace already in the guest (its work there is lost).
    #[serde(default)]
    pub replace: bool,
}

/// The answer to a prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreparedWorkspace {
    pub vm: String,
    pub workspace: Workspace,
    /// Files in the guest's work tree.
    pub files: usize,
    /// Bytes of the stream shipped.
    pub bytes: u64,
    /// The one-line notice for untracked files left behind, when some were.
    pub untracked_notice: Option<String>,
    /// The tool pin files at the repository root (`.mise.toml`, `go.mod`, ...).
    pub tool_pins: Vec<String>,
}

/// `POST /v1/vms/{reference}/workspace/export`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportWorkspace {
    /// Diff against this commit instead of the prepared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
}

/// How a file changed since the base of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum FileChange {
    Added,
    Modified,
    Deleted,
    Renamed { from: String, similarity: u8 },
    Copied { from: String, similarity: u8 },
    TypeChanged,
    Unmerged,
}

/// One changed file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportedFile {
    pub path: String,
    #[serde(flatten)]
    pub change: FileChange,
}

/// The answer to an export: the base used, the changed files and the binary patch
/// (base64 on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceExport {
    pub base: String,
    pub files: Vec<ExportedFile>,
    /// The binary patch (`git diff --binary`), standard base64.
    #[serde(with = "base64_bytes")]
    #[schema(value_type = String, content_encoding = "base64")]
    pub patch: Vec<u8>,
}

/// Bytes as one standard base64 string.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// `POST /v1/vms`: only the fields the user set; the daemon fills in defaults.
///
/// On the wire the resources sit at the top level, next to `name` (the same keys as `vm set`'s
/// settings). serde's `flatten` cannot refuse unknown fields, so the body is read through
/// [`CreateVmWire`], which lists every key and refuses the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CreateVmWire")]
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
    pub vmm: Option<VmmKind>,
    /// Who asks; `api` when absent. `banger mcp` sends `mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<VmOrigin>,
    /// Boot, even when a warm-start template of the image and shape exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<bool>,
}

/// The JSON shape of [`CreateVm`], every key listed so that unknown ones are refused. It is
/// also [`CreateVm`]'s schema in the API document (see [`wire_schema!`]).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename = "CreateVm")]
#[schema(
    description = "`POST /v1/vms`: only the fields the user set; the daemon fills in \
    defaults (the config's VM defaults, its default image and VMM)."
)]
struct CreateVmWire {
    /// The VM's name [default: a generated one].
    #[serde(default)]
    name: Option<String>,
    /// The image's name or id [default: config `default_image`].
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    cpus: Option<i64>,
    #[serde(default)]
    memory_mib: Option<i64>,
    #[serde(default)]
    disk_bytes: Option<u64>,
    #[serde(default)]
    work_disk_bytes: Option<u64>,
    /// NAT to the outside for the guest [default: config `nat`].
    #[serde(default)]
    nat: Option<bool>,
    #[serde(default)]
    vmm: Option<VmmKind>,
    #[serde(default)]
    origin: Option<VmOrigin>,
    /// Boot, even when a warm-start template of the image and shape exists (otherwise the
    /// VM is restored from it) [default: false].
    #[serde(default)]
    cold: Option<bool>,
}

/// Gives `$api` the OpenAPI schema of `$wire`, the type serde really reads it through, under
/// `$api`'s name: the document describes what the daemon accepts.
macro_rules! wire_schema {
    ($api:ty => $wire:ty, $name:literal) => {
        impl utoipa::PartialSchema for $api {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                <$wire as utoipa::PartialSchema>::schema()
            }
        }
        impl ToSchema for $api {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
            fn schemas(
                schemas: &mut Vec<(
                    String,
                    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
                )>,
            ) {
                <$wire as ToSchema>::schemas(schemas);
            }
        }
    };
}
wire_schema!(CreateVm => CreateVmWire, "CreateVm");
wire_schema!(VmAction => VmActionWire, "VmAction");

impl From<CreateVmWire> for CreateVm {
    fn from(w: CreateVmWire) -> Self {
        Self {
            name: w.name,
            image: w.image,
            resources: VmSettings {
                cpus: w.cpus,
                memory_mib: w.memory_mib,
                disk_bytes: w.disk_bytes,
                work_disk_bytes: w.work_disk_bytes,
            },
            nat: w.nat,
            vmm: w.vmm,
            origin: w.origin,
            cold: w.cold,
        }
    }
}

/// One line of a streamed long operation (NDJSON): stages, then a result or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

/// What `POST /v1/vms/actions` does to each VM; each variant carries exactly its data.
///
/// On the wire (externally tagged): `"start"`, `"stop"`, `"restart"`, `"pause"`, `"resume"`, `"delete"`,
/// `{"kill": {"signal": "TERM"}}`, `{"set": {"settings": {"cpus": 2}, "nat": true}}` (`nat` optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "VmActionWire")]
pub enum VmAction {
    Start,
    Stop,
    Restart,
    /// Pauses a running VM's vCPUs.
    Pause,
    /// Resumes a paused VM.
    Resume,
    /// Sends `signal` (a name such as `TERM`, or a number) to the VMM process.
    Kill {
        signal: String,
    },
    Delete,
    /// Deletes the VM only if it is not running (stopped, or failed to boot); a running
    /// or starting VM is refused and kept.
    Prune,
    /// Changes the VM's resources.
    /// Changes the VM's resources, and turns its NAT on or off (`nat`; applied at once to
    /// a running VM).
    Set {
        settings: VmSettings,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nat: Option<bool>,
    },
}

impl VmAction {
    pub fn past_tense(&self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Stop => "stopped",
            Self::Restart => "restarted",
            Self::Pause => "paused",
            Self::Resume => "resumed",
            Self::Kill { .. } => "killed",
            Self::Delete | Self::Prune => "deleted",
            Self::Set { .. } => "updated",
        }
    }
}

/// The JSON shape of [`VmAction`]: a variant's data must be an object with exactly its
/// fields.
/// It is also [`VmAction`]'s schema in the API document.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", rename = "VmAction")]
#[schema(
    description = "What `POST /v1/vms/actions` does to each VM: `\"start\"`, `\"stop\"`, \
    `\"restart\"`, `\"pause\"`, `\"resume\"`, `\"delete\"`, `\"prune\"` (delete unless running), \
    `{\"kill\": {\"signal\": \"TERM\"}}` or `{\"set\": {\"settings\": {...}, \"nat\": true}}`."
)]
enum VmActionWire {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
    #[schema(value_type = KillWire)]
    Kill(JsonObject<KillWire>),
    Delete,
    Prune,
    #[schema(value_type = SetWire)]
    Set(JsonObject<SetWire>),
}

/// Sends `signal` (a name such as `TERM`, or a number) to the VMM process.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KillAction)]
struct KillWire {
    signal: String,
}

/// Changes the VM's resources, and turns its NAT on or off (`nat`; applied at once to a
/// running VM).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SetAction)]
struct SetWire {
    #[schema(value_type = VmSettings)]
    settings: JsonObject<VmSettings>,
    #[serde(default)]
    nat: Option<bool>,
}

impl From<VmActionWire> for VmAction {
    fn from(w: VmActionWire) -> Self {
        match w {
            VmActionWire::Start => Self::Start,
            VmActionWire::Stop => Self::Stop,
            VmActionWire::Restart => Self::Restart,
            VmActionWire::Pause => Self::Pause,
            VmActionWire::Resume => Self::Resume,
            VmActionWire::Kill(JsonObject(k)) => Self::Kill { signal: k.signal },
            VmActionWire::Delete => Self::Delete,
            VmActionWire::Prune => Self::Prune,
            VmActionWire::Set(JsonObject(s)) => Self::Set {
                settings: s.settings.0,
                nat: s.nat,
            },
        }
    }
}

/// A VM's resources as requested by `vm create` and `vm set`: only what the user gave.
/// Signed so that a zero or negative value reaches validation instead of wrapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
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

impl VmSettings {
    /// The values to check against [`banger_core::limits`].
    pub fn requested(&self) -> banger_core::limits::Requested {
        banger_core::limits::Requested {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk_bytes: self.disk_bytes,
            work_disk_bytes: self.work_disk_bytes,
        }
    }
}

/// `POST /v1/vms/actions`: one action on many VM references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub refs: Vec<String>,
    pub action: VmAction,
}

/// The outcome for one reference, in the order the references were first given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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

/// `GET /v1/vms/{ref}/health`: the guest agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Version of the agent binary.
    pub version: String,
    /// Commit the agent binary was built from.
    pub commit: String,
    /// Seconds since the Unix epoch at which the agent binary was built.
    pub build_epoch: u64,
    /// Seconds since the guest booted.
    pub uptime_secs: u64,
    pub hostname: String,
}

/// `GET /v1/vms/{ref}/ports`: the guest's listening sockets, a socket listening on both
/// `0.0.0.0` and `::` (or the same port in both families for one process) shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ports {
    pub listeners: Vec<PortListener>,
}

/// One listening socket in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortListener {
    pub proto: Proto,
    pub family: Family,
    /// The bound local address, e.g. `0.0.0.0`, `127.0.0.1`, `::` or `::ffff:127.0.0.1`.
    pub address: String,
    pub port: u16,
    /// The process holding the socket (the lowest pid when several share it), when known.
    pub pid: Option<u32>,
    /// The process name.
    pub process: Option<String>,
    /// The process command line, arguments joined by spaces.
    pub command: Option<String>,
    /// Where the host reaches it: `NAME.vm:PORT` when it listens on an address the host can
    /// reach (a wildcard or the guest's own), else the bound `ADDRESS:PORT` (guest only).
    pub endpoint: String,
    /// `https://NAME.vm:PORT/` or `http://NAME.vm:PORT/` when a TCP listener answered HTTP
    /// (HTTPS is tried first), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Transport protocol of a listening socket.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// Address family of a listening socket.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// `DELETE /v1/images/{ref}` and `DELETE /v1/kernels/{name}`: what was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// The name of the image or kernel that was removed.
    pub deleted: String,
}

/// `GET /v1/vms/{ref}/ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ping {
    pub name: String,
    pub rtt_ms: f64,
    pub agent_version: String,
}

/// `GET /v1/ssh`: how to reach guests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshInfo {
    #[schema(value_type = String)]
    pub private_key: PathBuf,
    pub public_key: String,
    /// How long clients wait for a guest's sshd (config `ssh_wait_secs`).
    pub wait_secs: u64,
    /// banger's known_hosts: the guests' host keys, for `StrictHostKeyChecking=yes`.
    #[schema(value_type = String)]
    pub known_hosts: PathBuf,
}

/// banger's `Host *.vm` block for the owner's `~/.ssh/config` (`GET /ssh/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshConfig {
    /// The file the block goes into; `None` when the daemon has no home.
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    /// The block's text, marker lines included.
    pub block: String,
    /// Whether the daemon writes it at start (config `ssh_config`).
    pub at_start: bool,
}

/// What `POST /ssh/config` (write the block) or `DELETE /ssh/config` (remove it) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SshConfigChange {
    /// The file written (a symlinked config's target).
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Whether its bytes changed.
    pub changed: bool,
}

/// An image as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub rootfs_bytes: u64,
    #[schema(value_type = String)]
    pub rootfs: PathBuf,
    #[schema(value_type = Option<String>)]
    pub kernel: Option<PathBuf>,
    #[schema(value_type = Option<String>)]
    pub initrd: Option<PathBuf>,
    #[schema(value_type = Option<String>)]
    pub modules: Option<PathBuf>,
    pub kernel_ref: Option<String>,
    pub distro: Option<String>,
    pub arch: Option<String>,
    pub description: Option<String>,
    pub created_at: String,
    /// What runs as its guests' PID 1: the image's systemd, or banger's minimal init.
    #[serde(default)]
    pub init: banger_core::guest_init::GuestInit,
    /// Names of VMs using it.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// Its warm-start templates (snapshots of a booted guest that `vm create` restores from).
    #[serde(default)]
    pub templates: Vec<ImageTemplate>,
}

/// A warm-start template of an image, for one machine shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageTemplate {
    pub vmm: VmmKind,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Bytes its files take on disk (disks, device state and memory; all sparse).
    pub size_bytes: u64,
    pub made_at: String,
}

/// `POST /v1/vms/{reference}/fork`: a new VM restored from the running VM's state, on
/// copies of its disks, with its own identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkVm {
    /// The new VM's name.
    pub name: String,
}

/// `POST /v1/images/{reference}/warm`: make (or remake) a warm-start template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WarmImage {
    /// [default: the VM default, 2]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// [default: the VM default, 2048]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// [default: config `vmm`]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmKind>,
}

/// `POST /v1/images`: register local files as a managed image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    pub name: String,
    #[schema(value_type = String)]
    pub rootfs: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub modules: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl RegisterImage {
    /// The two ways to name a kernel are exclusive, and one is required. Checked by the CLI
    /// and again by the daemon.
    pub fn check_kernel_source(&self) -> Result<(), KernelSourceError> {
        match kernel_source(
            self.kernel.is_some(),
            self.initrd.is_some() || self.modules.is_some(),
            self.kernel_ref.is_some(),
        ) {
            Ok(false) => Err(KernelSourceError::Neither),
            other => other.map(|_| ()),
        }
    }
}

/// The one rule for naming a kernel: `--kernel-ref` or the files (`--initrd` and
/// `--modules` need `--kernel`), not both; whether one was named.
fn kernel_source(kernel: bool, extras: bool, kernel_ref: bool) -> Result<bool, KernelSourceError> {
    match (kernel || extras, kernel_ref) {
        (true, true) => Err(KernelSourceError::Both),
        (true, false) if !kernel => Err(KernelSourceError::NoKernelFile),
        (files, by_ref) => Ok(files || by_ref),
    }
}

/// Why a [`RegisterImage`] or a [`PullImage`] names its kernel wrongly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KernelSourceError {
    #[error("--kernel-ref cannot be combined with --kernel/--initrd/--modules")]
    Both,
    #[error("a kernel is required: give --kernel FILE or --kernel-ref NAME")]
    Neither,
    #[error("--initrd and --modules need --kernel")]
    NoKernelFile,
}

/// An imported kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Kernel {
    pub name: String,
    pub version: String,
    #[schema(value_type = String)]
    pub dir: PathBuf,
    /// Uncompressed ELF kernel (Firecracker).
    #[schema(value_type = Option<String>)]
    pub vmlinux: Option<PathBuf>,
    /// The kernel as shipped (QEMU).
    #[schema(value_type = Option<String>)]
    pub vmlinuz: Option<PathBuf>,
    #[schema(value_type = Option<String>)]
    pub initrd: Option<PathBuf>,
    #[schema(value_type = Option<String>)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKernel {
    pub name: String,
    #[schema(value_type = String)]
    pub from: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// Whether a catalog entry is on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatalogState {
    /// An image or kernel of that name is local.
    Pulled,
    /// Only in the catalog.
    Available,
}

/// An image a catalog lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CatalogImage {
    pub name: String,
    pub arch: String,
    /// The bundle's size in bytes.
    pub size: u64,
    pub description: String,
    pub kernel_ref: String,
    pub state: CatalogState,
    /// The catalog listing it (a path, a URL, or `embedded`).
    pub catalog: String,
}

/// A kernel a catalog lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CatalogKernel {
    pub name: String,
    pub arch: String,
    /// The tarball's size in bytes.
    pub size: u64,
    pub description: String,
    pub state: CatalogState,
    /// The catalog listing it (a path, a URL, or `embedded`).
    pub catalog: String,
}

/// `GET /v1/catalog`: every catalog's entries, the first catalog naming one winning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CatalogListing {
    pub images: Vec<CatalogImage>,
    pub kernels: Vec<CatalogKernel>,
}

/// `POST /v1/kernels/pull`: a kernel from the kernel catalogs (streamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullKernel {
    pub name: String,
    /// Replace a local kernel of that name.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/images/{reference}/export`: where to write the bundle and its catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportImage {
    /// An absolute directory (created if missing).
    #[schema(value_type = String)]
    pub out: PathBuf,
}

/// What `image export` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportedImage {
    /// `<out>/<name>.tar.zst`.
    #[schema(value_type = String)]
    pub bundle: PathBuf,
    /// `<out>/<name>.catalog.json`, a one-entry catalog naming the bundle relatively.
    #[schema(value_type = String)]
    pub catalog: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// `POST /v1/images/{reference}/push`: the OCI reference to push the image's bundle to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushImage {
    /// An OCI reference (`registry/repo:tag`).
    pub reference: String,
}

/// What `image push` stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushedImage {
    /// The full reference pushed to.
    pub reference: String,
    /// The manifest's URL in the registry.
    pub manifest_url: String,
    /// The bundle layer's digest (`sha256:<hex>`).
    pub bundle_digest: String,
    /// The bundle's size in bytes.
    pub size: u64,
}

/// `POST /v1/images/bootstrap`: build an image from distribution packages (streamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
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

/// `POST /v1/images/pull`: pull an image from an OCI registry and register it (streamed).
/// The kernel: `kernel_ref`, or `kernel` (with `initrd`, `modules`), or neither for the most
/// recently imported kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// A catalog image name (`banger image list --available`), else an OCI reference
    /// (`debian:bookworm`, `registry:5000/team/img@sha256:...`).
    pub reference: String,
    /// The image name [default: derived from the reference, `debian:bookworm` →
    /// `debian-bookworm`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub modules: Option<PathBuf>,
    /// Root filesystem size in bytes [default: 1.5 x the tree, at least 1 GiB].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// What its guests run as PID 1 [default: systemd if the image has it, else banger's
    /// init]; `systemd` for an image without it installs systemd on a first boot with NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<banger_core::guest_init::GuestInit>,
}

impl PullImage {
    /// `kernel_ref` and the kernel files are exclusive; `initrd` and `modules` need `kernel`.
    pub fn check_kernel_source(&self) -> Result<(), KernelSourceError> {
        kernel_source(
            self.kernel.is_some(),
            self.initrd.is_some() || self.modules.is_some(),
            self.kernel_ref.is_some(),
        )
        .map(|_| ())
    }
}

/// The answer to `POST /v1/images/cache/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CachePruned {
    /// The layer digests removed (`sha256:...`).
    pub removed: Vec<String>,
    pub freed_bytes: u64,
    /// Layers kept because an image was pulled from them.
    pub kept: usize,
}

/// `POST /v1/images/import`: register a bundle (`.tar.zst` with `rootfs.ext4` and
/// `manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBundle {
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// Register under this name instead of the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Boot this kernel instead of the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
}

// Guest files (`/vms/{reference}/files/...`), relayed to the VM's agent. The shapes are the
// agent's (`banger_agent_proto::files`), in the API's own types as health and ports are.

/// `POST /v1/vms/{reference}/files/read`: a file of the guest by absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadGuestFile {
    pub path: String,
    /// Most bytes to return (at most, and by default, 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// The answer to `POST /v1/vms/{reference}/files/read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestFile {
    pub path: String,
    /// The file's whole size.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// The bytes read (base64 on the wire): the whole file, or its beginning when `truncated`.
    #[serde(with = "base64_bytes")]
    #[schema(value_type = String, content_encoding = "base64")]
    pub content: Vec<u8>,
    pub truncated: bool,
}

/// `POST /v1/vms/{reference}/files/write`: the file replaced whole (temporary file, rename).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteGuestFile {
    pub path: String,
    /// The bytes (base64 on the wire), at most 512 KiB.
    #[serde(with = "base64_bytes")]
    #[schema(value_type = String, content_encoding = "base64")]
    pub content: Vec<u8>,
    /// Permission bits; by default the replaced file's, or `0o644`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Make missing parent directories.
    #[serde(default)]
    pub create_parents: bool,
}

/// The answer to `POST /v1/vms/{reference}/files/write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestFileWritten {
    pub path: String,
    pub bytes: u64,
    pub mode: u32,
}

/// `POST /v1/vms/{reference}/files/list`: a directory of the guest by absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListGuestDir {
    pub path: String,
}

/// What a guest directory entry is (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuestEntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a guest directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestDirEntry {
    pub name: String,
    pub kind: GuestEntryKind,
    pub size: u64,
    pub mode: u32,
}

/// The answer to `POST /v1/vms/{reference}/files/list`: entries by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestDirListing {
    pub path: String,
    pub entries: Vec<GuestDirEntry>,
    /// More entries than one listing returns (10000): the first by name are listed.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patch travels as base64, byte for byte, whatever it holds; the changes as tagged
    /// objects.
    #[test]
    fn an_export_round_trips_binary_patches() {
        let export = WorkspaceExport {
            base: "a".repeat(40),
            files: vec![ExportedFile {
                path: "new".into(),
                change: FileChange::Renamed {
                    from: "old".into(),
                    similarity: 90,
                },
            }],
            patch: (0..=255u8).collect(),
        };
        let json = serde_json::to_value(&export).unwrap();
        assert_eq!(
            json["files"][0],
            serde_json::json!({"path": "new", "change": "renamed", "from": "old", "similarity": 90})
        );
        assert!(json["patch"].is_string());
        let back: WorkspaceExport = serde_json::from_value(json).unwrap();
        assert_eq!(back, export);
        let bad = serde_json::json!({"base": "a", "files": [], "patch": "not base64!"});
        assert!(serde_json::from_value::<WorkspaceExport>(bad).is_err());
    }

    #[test]
    fn create_vm_keeps_its_flat_json_shape() {
        let req = CreateVm {
            name: Some("web".into()),
            image: Some("img".into()),
            resources: VmSettings {
                cpus: Some(4),
                memory_mib: Some(512),
                disk_bytes: Some(1 << 30),
                work_disk_bytes: Some(2 << 30),
            },
            nat: Some(true),
            vmm: Some(VmmKind::Qemu),
            origin: Some(VmOrigin::Mcp),
            cold: None,
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "web", "image": "img", "cpus": 4, "memory_mib": 512,
                "disk_bytes": 1u64 << 30, "work_disk_bytes": 2u64 << 30, "nat": true,
                "vmm": "qemu", "origin": "mcp"})
        );
        assert_eq!(serde_json::from_value::<CreateVm>(json).unwrap(), req);
        assert_eq!(
            serde_json::from_str::<CreateVm>("{}").unwrap(),
            CreateVm::default()
        );
    }

    #[test]
    fn request_bodies_refuse_unknown_fields() {
        fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(body: &str, field: &str) {
            let e = serde_json::from_str::<T>(body).unwrap_err().to_string();
            assert!(
                e.contains(&format!("unknown field `{field}`")),
                "{body}: {e}"
            );
        }
        refused::<CreateVm>(r#"{"cpu": 8}"#, "cpu");
        refused::<CreateVm>(r#"{"name": "a", "resources": {}}"#, "resources");
        refused::<VmSettings>(r#"{"cpus": 1, "memory": 5}"#, "memory");
        refused::<ActionRequest>(r#"{"action": "stop", "refs": [], "force": true}"#, "force");
        refused::<ActionRequest>(
            r#"{"action": {"set": {"settings": {"cpu": 2}}}, "refs": ["a"]}"#,
            "cpu",
        );
        refused::<ActionRequest>(
            r#"{"action": {"kill": {"signal": "TERM", "force": true}}, "refs": ["a"]}"#,
            "force",
        );
        // The old flat shape: `signal` is not a field of the request.
        refused::<ActionRequest>(
            r#"{"action": "stop", "refs": ["a"], "signal": "TERM"}"#,
            "signal",
        );
        refused::<RegisterImage>(r#"{"name": "a", "rootfs": "/r", "kernal": "/k"}"#, "kernal");
        refused::<ImportKernel>(r#"{"name": "a", "from": "/", "forced": true}"#, "forced");
        refused::<BootstrapImage>(r#"{"name": "debian-x", "suite": "x"}"#, "suite");
        refused::<ImportBundle>(r#"{"path": "/b", "kernel": "k"}"#, "kernel");
    }

    #[test]
    fn bodies_must_be_objects() {
        // A derived struct alone takes an array, by position: JsonObject refuses it.
        assert!(serde_json::from_str::<CreateVm>(r#"["web"]"#).is_ok());
        for body in ["[]", r#"["web", "img", 4]"#, "42", "\"x\"", "null", "true"] {
            let e = serde_json::from_str::<JsonObject<CreateVm>>(body).unwrap_err();
            assert!(
                e.to_string().contains("expected a JSON object"),
                "{body}: {e}"
            );
        }
        let ok: JsonObject<CreateVm> = serde_json::from_str(r#"{"cpus": 2}"#).unwrap();
        assert_eq!(ok.0.resources.cpus, Some(2));
        for body in [
            r#"{"action": {"set": {"settings": [4]}}, "refs": ["a"]}"#,
            r#"{"action": {"set": [{"cpus": 4}]}, "refs": ["a"]}"#,
            r#"{"action": {"kill": ["TERM"]}, "refs": ["a"]}"#,
        ] {
            let e = serde_json::from_str::<ActionRequest>(body).unwrap_err();
            assert!(
                e.to_string().contains("expected a JSON object"),
                "{body}: {e}"
            );
        }
    }

    #[test]
    fn actions_carry_exactly_their_data() {
        let json = |a: &VmAction| {
            serde_json::to_value(ActionRequest {
                refs: vec!["web".into()],
                action: a.clone(),
            })
            .unwrap()
        };
        let cases = [
            (VmAction::Start, serde_json::json!("start")),
            (VmAction::Stop, serde_json::json!("stop")),
            (VmAction::Restart, serde_json::json!("restart")),
            (VmAction::Pause, serde_json::json!("pause")),
            (VmAction::Resume, serde_json::json!("resume")),
            (VmAction::Delete, serde_json::json!("delete")),
            (
                VmAction::Kill {
                    signal: "TERM".into(),
                },
                serde_json::json!({"kill": {"signal": "TERM"}}),
            ),
            (
                VmAction::Set {
                    settings: VmSettings {
                        cpus: Some(3),
                        ..Default::default()
                    },
                    nat: None,
                },
                serde_json::json!({"set": {"settings": {"cpus": 3}}}),
            ),
            (
                VmAction::Set {
                    settings: VmSettings::default(),
                    nat: Some(false),
                },
                serde_json::json!({"set": {"settings": {}, "nat": false}}),
            ),
        ];
        for (action, wire) in cases {
            let v = json(&action);
            assert_eq!(v, serde_json::json!({"refs": ["web"], "action": wire}));
            let back: ActionRequest = serde_json::from_value(v).unwrap();
            assert_eq!(back.action, action);
        }
        // A variant without its data, or an unknown one, is refused.
        for body in [
            r#"{"action": "kill", "refs": []}"#,
            r#"{"action": {"kill": {}}, "refs": []}"#,
            r#"{"action": "set", "refs": []}"#,
            r#"{"action": "hibernate", "refs": []}"#,
        ] {
            assert!(
                serde_json::from_str::<ActionRequest>(body).is_err(),
                "{body}"
            );
        }
    }
}

// --- The local web UI (issue 13) ---

/// Where the daemon's web UI listens, or why it does not (config `web`, `web_listen`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WebListener {
    /// Config `web = false`.
    #[default]
    Off,
    /// Serving HTTP on `address`: `url` is the UI, `login_url` the same with the daemon's
    /// secret token, which a browser trades for a cookie (only the owner, who can reach the
    /// daemon socket, sees it).
    Listening {
        #[schema(value_type = String)]
        address: std::net::SocketAddr,
        url: String,
        login_url: String,
    },
    /// The UI is not served (a refused address, a port already taken); the error says why.
    Failed { error: String },
}
