//! `banger mcp`: a Model Context Protocol server on a byte stream (the CLI hands it stdin and
//! stdout) that lets a coding agent run code in banger VMs, through the official Rust SDK
//! (`rmcp`). It is a client of the daemon like the CLI: handed an API [`Client`], the owner's
//! home, the `[mcp]` config and the working directory ([`Setup`]); it reads no environment.
//!
//! - [`args`]: the tools' arguments and their JSON schemas.
//! - [`guard`]: the guard rails (`mcp.max_vms`, `mcp.allowed_images`, deletes of MCP VMs
//!   only, host paths inside the home).
//! - [`snippet`]: `--print-config`, the lines for an agent's MCP config.
//!
//! Tools: `vm_run`, `vm_create`, `vm_list`, `vm_show`, `vm_exec`, `vm_delete`, `vm_ports`,
//! `workspace_prepare`, `workspace_export`, `file_read`, `file_write`, `file_list`.
//!
//! - Every failure (the daemon's error, a guard rail, bad arguments) is a tool result with
//!   `isError: true` carrying the message; the server keeps serving.
//! - Long operations (create, workspace prepare, `vm_run`) send `notifications/progress` for
//!   each of the daemon's stages when the request has a progress token.
//! - A cancelled request (`notifications/cancelled`) drops its daemon call: for a create the
//!   daemon sees its client go away and rolls the VM back; a command is killed with its
//!   session; `vm_run` still deletes the VM it made when asked to remove it.
//! - Command output is capped at [`OUTPUT_CAP`] bytes per stream, ending with a
//!   [truncation marker](truncation_marker) when there was more.
//! - As with the CLI, a command in a workspace runs through `mise exec` when the guest has
//!   mise, and a prepare of a repository that pins tools runs `mise install` (its outcome is
//!   the answer's `mise_install`).

pub mod args;
pub mod guard;
pub mod snippet;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::client::exec::{Captured, ExecError, exec_upgraded};
use banger_agent_proto::exec::{ExecRequest, UPGRADE_EXEC};
use banger_api::types::{
    ActionOutcome, ActionRequest, CreateVm, ExportWorkspace, GuestDirListing, GuestFile,
    GuestFileWritten, Image, ListGuestDir, Ports, PrepareWorkspace, PreparedWorkspace,
    ReadGuestFile, Vm, VmAction, VmOrigin, VmSettings, WorkspaceExport, WriteGuestFile,
};
use banger_api::{Client, ClientError, Route};
use banger_core::config::McpConfig;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rmcp::handler::server::common::{schema_for_input, schema_for_type};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, JsonObject, ProgressNotificationParam,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::args::{
    Encoding, FileListArgs, FileReadArgs, FileWriteArgs, VmArgs, VmCreateArgs, VmExecArgs,
    VmListArgs, VmRunArgs, WorkspaceExportArgs, WorkspacePrepareArgs,
};
use crate::guard::Refusal;

/// Most bytes of each of a command's output streams a tool answer carries.
pub const OUTPUT_CAP: usize = 64 << 10;

/// How long a command runs when the call names no timeout, and the most it may name.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long the agent may take to start a command.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a command runs in a VM without a workspace.
const DEFAULT_CWD: &str = "/root";

/// What the server is handed.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The daemon's API.
    pub client: Client,
    /// The owner's home: host paths must resolve inside it.
    pub home: PathBuf,
    /// Relative host paths are taken from here.
    pub cwd: PathBuf,
    /// `[mcp]`.
    pub config: McpConfig,
    /// The image a VM gets when the call names none (config `default_image`).
    pub default_image: String,
}

/// A failure serving MCP on the stream.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the MCP session did not start")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the MCP session ended with an error")]
    Run(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Serves MCP on `reader`/`writer` (newline-delimited JSON-RPC, the stdio transport) until
/// the client closes it.
pub async fn serve<R, W>(setup: Setup, reader: R, writer: W) -> Result<(), ServeError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let running = BangerMcp::new(setup)
        .serve((reader, writer))
        .await
        .map_err(|e| ServeError::Start(Box::new(e)))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| ServeError::Run(Box::new(e)))
}

/// A tool call that failed; rendered into the tool result's text.
#[derive(Debug, thiserror::Error)]
enum ToolError {
    #[error("bad arguments for {tool}: {why}")]
    Arguments { tool: &'static str, why: String },
    #[error(transparent)]
    Daemon(#[from] ClientError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("VM {vm:?}: the command failed")]
    Exec {
        vm: String,
        #[source]
        source: ExecError,
    },
    #[error("VM {vm:?}: cannot delete it: {why}")]
    Delete { vm: String, why: String },
    #[error("cancelled")]
    Cancelled,
}

/// The server: its setup and its tools.
#[derive(Debug, Clone)]
pub struct BangerMcp {
    inner: Arc<Inner>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug)]
struct Inner {
    setup: Setup,
    /// Held from counting the MCP VMs to inserting a new one, so two concurrent creates
    /// cannot both pass `max_vms`.
    creating: tokio::sync::Mutex<()>,
}

/// The input schema of a tool taking `T`.
fn input<T: schemars::JsonSchema + std::any::Any>() -> Arc<JsonObject> {
    schema_for_input::<T>().unwrap_or_else(|_| schema_for_type::<T>())
}

/// `raw` as the tool's arguments, or the tool error naming what does not fit.
fn parse<T: DeserializeOwned>(tool: &'static str, raw: JsonObject) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(raw)).map_err(|e| ToolError::Arguments {
        tool,
        why: e.to_string(),
    })
}

/// A tool's outcome as its MCP result: a value as structured content (and its JSON as text),
/// an error as `isError: true` with the message.
fn answer(result: Result<Value, ToolError>) -> Result<CallToolResult, ErrorData> {
    Ok(match result {
        Ok(v) => CallToolResult::structured(v),
        Err(e) => CallToolResult::error(vec![ContentBlock::text(render(&e))]),
    })
}

/// The message of a tool error: the whole chain, and the daemon's op id when it has one.
fn render(e: &ToolError) -> String {
    let mut text = banger_core::error::chain(e);
    if let ToolError::Daemon(ClientError::Api(api)) = e
        && !api.op_id.is_empty()
    {
        text.push_str(&format!(" (op {})", api.op_id));
    }
    text
}

/// The line that ends a stream's text when it was cut.
pub fn truncation_marker(stream: &str, shown: usize, total: u64) -> String {
    format!("\n[banger: {stream} truncated: the first {shown} of {total} bytes are shown]")
}

/// A captured stream as text for a model: lossy UTF-8, with the marker when cut.
fn stream_text(name: &str, c: &Captured) -> String {
    let mut text = String::from_utf8_lossy(&c.bytes).into_owned();
    if c.truncated() {
        text.push_str(&truncation_marker(name, c.bytes.len(), c.total));
    }
    text
}

/// Bytes as `{content, encoding}`: text when they are UTF-8, else base64.
fn content_json(bytes: Vec<u8>) -> (Value, &'static str) {
    match String::from_utf8(bytes) {
        Ok(text) => (json!(text), "utf8"),
        Err(e) => (json!(STANDARD.encode(e.into_bytes())), "base64"),
    }
}

/// `0755`-style text as permission bits.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "mode {text:?} is not octal permission bits such as \"0644\" or \"0755\""
        )),
    }
}

fn timeout_of(secs: Option<u64>) -> Result<Duration, String> {
    match secs {
        None => Ok(DEFAULT_TIMEOUT),
        Some(0) => Err("timeout_secs must be at least 1".into()),
        Some(s) if Duration::from_secs(s) > MAX_TIMEOUT => Err(format!(
            "timeout_secs must be at most {}",
            MAX_TIMEOUT.as_secs()
        )),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

/// Forwards a long operation's stages to the client as progress notifications, in order,
/// when the request carried a progress token.
struct Progress {
    tx: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn new(ctx: &RequestContext<RoleServer>) -> Self {
        let Some(token) = ctx.meta.get_progress_token() else {
            return Self {
                tx: None,
                task: None,
            };
        };
        let peer = ctx.peer.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let mut step = 0u32;
            while let Some(message) = rx.recv().await {
                step += 1;
                let note = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_message(message);
                // A client that went away gets no more; the operation goes on regardless.
                if peer.notify_progress(note).await.is_err() {
                    return;
                }
            }
        });
        Self {
            tx: Some(tx),
            task: Some(task),
        }
    }

    fn stage(&self, what: &str, stage: &str, detail: &str) {
        if let Some(tx) = &self.tx {
            let line = if detail.is_empty() {
                format!("{what}: {stage}")
            } else {
                format!("{what}: {stage}: {detail}")
            };
            let _ = tx.send(line);
        }
    }

    /// Waits until every stage was sent, so none arrives after the answer.
    async fn finish(mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl BangerMcp {
    pub fn new(setup: Setup) -> Self {
        Self {
            inner: Arc::new(Inner {
                setup,
                creating: tokio::sync::Mutex::new(()),
            }),
            tool_router: Self::tool_router(),
        }
    }

    fn client(&self) -> &Client {
        &self.inner.setup.client
    }

    fn config(&self) -> &McpConfig {
        &self.inner.setup.config
    }

    /// The image `reference` (or the default) names, when MCP may use it: checked by its
    /// name, whatever the reference (an id prefix cannot slip past the list).
    async fn allowed_image(&self, reference: Option<&str>) -> Result<String, ToolError> {
        let reference = reference.unwrap_or(&self.inner.setup.default_image);
        if self.config().allowed_images.is_empty() {
            return Ok(reference.to_string());
        }
        let image: Image = self.client().get(Route::Image(reference)).await?;
        guard::image_allowed(self.config(), &image.name)?;
        Ok(image.id)
    }

    /// Creates a VM for MCP (origin `mcp`), within `max_vms`, streaming its stages.
    async fn create(&self, req: CreateVm, progress: &Progress) -> Result<Vm, ToolError> {
        let _one_at_a_time = self.inner.creating.lock().await;
        let vms: Vec<Vm> = self.client().get(Route::VmList { all: true }).await?;
        guard::room_for_one(self.config(), &vms)?;
        let vm: Vm = self
            .client()
            .stream(Route::VmCreate, &req, |stage, detail, _| {
                progress.stage("create", stage, detail)
            })
            .await?;
        Ok(vm)
    }

    /// Prepares `vm`'s workspace from the host repository at `path` (inside the home).
    async fn prepare(
        &self,
        vm: &str,
        mut req: PrepareWorkspace,
        progress: &Progress,
    ) -> Result<PreparedWorkspace, ToolError> {
        req.path = guard::inside_home(&req.path, &self.inner.setup.cwd, &self.inner.setup.home)?;
        Ok(self
            .client()
            .stream(Route::VmWorkspace(vm), &req, |stage, detail, _| {
                progress.stage("workspace", stage, detail)
            })
            .await?)
    }

    /// `mise install` in the workspace when its repository pins tools, as the CLI does after
    /// a prepare: what happened, in one line (a guest without mise, or a failed install, is
    /// reported, not an error).
    async fn mise_install(
        &self,
        vm: &str,
        prepared: &PreparedWorkspace,
        progress: &Progress,
    ) -> Option<String> {
        if prepared.tool_pins.is_empty() {
            return None;
        }
        let pins = prepared.tool_pins.join(", ");
        progress.stage("workspace", "mise install", &pins);
        let ran = self
            .exec(
                vm,
                banger_workspace::mise_install(),
                prepared.workspace.guest_path.clone(),
                Default::default(),
                None,
                DEFAULT_TIMEOUT,
            )
            .await;
        Some(match ran {
            Ok(out) => match out["exit_code"].as_i64() {
                Some(0) => format!("installed the tools {pins} pins"),
                Some(c) if c == i64::from(banger_workspace::NO_MISE) => {
                    format!("the guest has no mise: the tools {pins} pins were not installed")
                }
                Some(c) => format!(
                    "mise install failed (exit {c}): {}",
                    out["stderr"].as_str().unwrap_or_default().trim()
                ),
                None => "mise install did not finish in time".to_string(),
            },
            Err(e) => format!("mise install could not run: {}", render(&e)),
        })
    }

    /// Runs `argv` in `vm`, collecting its output (capped) until it ends or `timeout` passes.
    async fn exec(
        &self,
        vm: &str,
        argv: Vec<String>,
        cwd: String,
        env: std::collections::BTreeMap<String, String>,
        stdin: Option<String>,
        timeout: Duration,
    ) -> Result<Value, ToolError> {
        let fail = |source| ToolError::Exec {
            vm: vm.to_string(),
            source,
        };
        let mut req = ExecRequest::new(argv);
        req.cwd = Some(cwd.clone());
        req.env = env;
        let io = self
            .client()
            .upgrade(Route::VmExec(vm), UPGRADE_EXEC)
            .await?;
        let session = exec_upgraded(io, req, START_TIMEOUT).await.map_err(fail)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let out = session
            .collect(
                stdin.unwrap_or_default().into_bytes(),
                OUTPUT_CAP,
                Some(deadline),
            )
            .await
            .map_err(fail)?;
        Ok(json!({
            "exit_code": out.status.map(|s| s.shell_code()),
            "timed_out": out.status.is_none(),
            "cwd": cwd,
            "stdout": stream_text("stdout", &out.stdout),
            "stderr": stream_text("stderr", &out.stderr),
            "stdout_bytes": out.stdout.total,
            "stderr_bytes": out.stderr.total,
            "stdout_truncated": out.stdout.truncated(),
            "stderr_truncated": out.stderr.truncated(),
        }))
    }

    /// Deletes VM `vm` (by id or name), reporting why it could not.
    async fn delete(&self, vm: &str) -> Result<(), ToolError> {
        let outcomes: Vec<ActionOutcome> = self
            .client()
            .post_long(
                Route::VmActions,
                &ActionRequest {
                    refs: vec![vm.to_string()],
                    action: VmAction::Delete,
                },
            )
            .await?;
        match outcomes.into_iter().find_map(|o| o.error) {
            None => Ok(()),
            Some(e) => Err(ToolError::Delete {
                vm: vm.to_string(),
                why: e.to_string(),
            }),
        }
    }

    async fn run(
        &self,
        a: VmRunArgs,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Value, ToolError> {
        let timeout = timeout_of(a.timeout_secs).map_err(|why| ToolError::Arguments {
            tool: "vm_run",
            why,
        })?;
        // Refused before anything is made.
        if let Some(path) = &a.path {
            guard::inside_home(path, &self.inner.setup.cwd, &self.inner.setup.home)?;
        }
        let image = self.allowed_image(a.image.as_deref()).await?;
        let req = CreateVm {
            image: Some(image),
            origin: Some(VmOrigin::Mcp),
            cold: None,
            ..CreateVm::default()
        };
        // Cancelled here, the create's stream is dropped: the daemon rolls the VM back.
        let vm = tokio::select! {
            vm = self.create(req, progress) => vm?,
            _ = cancel.cancelled() => return Err(ToolError::Cancelled),
        };
        let work = async {
            let shell = shell_argv(&a.command);
            let (argv, cwd, mise) = match &a.path {
                Some(path) => {
                    let prepared = self
                        .prepare(
                            &vm.id,
                            PrepareWorkspace {
                                path: path.clone(),
                                ..PrepareWorkspace::default()
                            },
                            progress,
                        )
                        .await?;
                    let mise = self.mise_install(&vm.id, &prepared, progress).await;
                    (
                        banger_workspace::mise_wrapped(shell),
                        prepared.workspace.guest_path,
                        mise,
                    )
                }
                None => (shell, DEFAULT_CWD.to_string(), None),
            };
            progress.stage("run", "command", &a.command);
            let mut out = self
                .exec(
                    &vm.id,
                    argv,
                    cwd,
                    Default::default(),
                    a.stdin.clone(),
                    timeout,
                )
                .await?;
            if let Some(m) = mise {
                out["mise_install"] = json!(m);
            }
            Ok(out)
        };
        let result = tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => Err(ToolError::Cancelled),
        };
        let deleted = if a.remove {
            progress.stage("run", "delete", &vm.name);
            match self.delete(&vm.id).await {
                Ok(()) => true,
                Err(e) if result.is_ok() => return Err(e),
                // The first failure is the one to report.
                Err(_) => false,
            }
        } else {
            false
        };
        let mut out = result?;
        out["vm"] = json!(vm.name);
        out["deleted"] = json!(deleted);
        Ok(out)
    }
}

/// A command line for the guest's `/bin/sh -c`.
fn shell_argv(command: &str) -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string(), command.to_string()]
}

/// A VM's short form for lists.
fn vm_summary(v: &Vm) -> Value {
    json!({
        "name": v.name,
        "id": v.id,
        "state": v.state,
        "image": v.image,
        "ip": v.ip,
        "origin": v.origin,
        "workspace": v.workspace.as_ref().map(|w| w.guest_path.clone()),
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[tool_router]
impl BangerMcp {
    #[tool(
        description = "Run a shell command in a fresh, disposable Linux microVM and return its exit code, stdout and stderr. With `path`, the git repository containing that host directory (inside the user's home) is copied to /root/repo first and the command runs there: use this to build or test a project in isolation. The VM is deleted afterwards unless remove is false (then the answer's `vm` names it for the other tools). Output is capped at 64 KiB per stream.",
        input_schema = input::<VmRunArgs>()
    )]
    async fn vm_run(
        &self,
        raw: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let progress = Progress::new(&ctx);
        let result = match parse::<VmRunArgs>("vm_run", raw) {
            Ok(a) => self.run(a, &progress, &ctx.ct).await,
            Err(e) => Err(e),
        };
        progress.finish().await;
        answer(result)
    }

    #[tool(
        description = "Create and boot a new Linux microVM that stays until vm_delete; returns its name, id, state and address. Use it with vm_exec, file_read/file_write/file_list and workspace_prepare/workspace_export for longer work.",
        input_schema = input::<VmCreateArgs>()
    )]
    async fn vm_create(
        &self,
        raw: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let progress = Progress::new(&ctx);
        let work = async {
            let a: VmCreateArgs = parse("vm_create", raw)?;
            let image = self.allowed_image(a.image.as_deref()).await?;
            let req = CreateVm {
                name: a.name,
                image: Some(image),
                resources: VmSettings {
                    cpus: a.cpus.map(i64::from),
                    memory_mib: a.memory_mib.map(i64::from),
                    ..VmSettings::default()
                },
                nat: a.nat,
                vmm: None,
                origin: Some(VmOrigin::Mcp),
                cold: None,
            };
            let vm = self.create(req, &progress).await?;
            Ok(to_value(&vm))
        };
        let result = tokio::select! {
            r = work => r,
            _ = ctx.ct.cancelled() => Err(ToolError::Cancelled),
        };
        progress.finish().await;
        answer(result)
    }

    #[tool(
        description = "List the VMs: name, id, state (running, stopped...), image, address, origin (mcp for VMs made through this server) and workspace path.",
        input_schema = input::<VmListArgs>()
    )]
    async fn vm_list(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: VmListArgs = parse("vm_list", raw)?;
                let vms: Vec<Vm> = self.client().get(Route::VmList { all: a.all }).await?;
                Ok(json!({ "vms": vms.iter().map(vm_summary).collect::<Vec<_>>() }))
            }
            .await,
        )
    }

    #[tool(
        description = "Show one VM in full: state, resources, address, origin, logs and its workspace (host repository, commit, guest path) if it has one.",
        input_schema = input::<VmArgs>()
    )]
    async fn vm_show(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: VmArgs = parse("vm_show", raw)?;
                let vm: Vm = self.client().get(Route::Vm(&a.vm)).await?;
                Ok(to_value(&vm))
            }
            .await,
        )
    }

    #[tool(
        description = "Run a shell command (/bin/sh -c) in a running VM and return its exit code, stdout and stderr (capped at 64 KiB each, with a marker when cut). Runs in the VM's workspace (/root/repo) when it has one, else /root, unless cwd says otherwise; stdin and env are optional. A command still running at timeout_secs is killed.",
        input_schema = input::<VmExecArgs>()
    )]
    async fn vm_exec(
        &self,
        raw: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let work = async {
            let a: VmExecArgs = parse("vm_exec", raw)?;
            let timeout = timeout_of(a.timeout_secs).map_err(|why| ToolError::Arguments {
                tool: "vm_exec",
                why,
            })?;
            let shell = shell_argv(&a.command);
            // As `banger vm exec`: in the workspace, through mise when the guest has it.
            let (argv, cwd) = match a.cwd {
                Some(cwd) => (shell, cwd),
                None => {
                    let vm: Vm = self.client().get(Route::Vm(&a.vm)).await?;
                    match vm.workspace {
                        Some(w) => (banger_workspace::mise_wrapped(shell), w.guest_path),
                        None => (shell, DEFAULT_CWD.to_string()),
                    }
                }
            };
            self.exec(&a.vm, argv, cwd, a.env, a.stdin, timeout).await
        };
        answer(tokio::select! {
            r = work => r,
            _ = ctx.ct.cancelled() => Err(ToolError::Cancelled),
        })
    }

    #[tool(
        description = "Delete a VM and its disks. Only VMs made through this MCP server (origin mcp) can be deleted, unless the user's config allows any.",
        input_schema = input::<VmArgs>()
    )]
    async fn vm_delete(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: VmArgs = parse("vm_delete", raw)?;
                let vm: Vm = self.client().get(Route::Vm(&a.vm)).await?;
                guard::may_delete(self.config(), &vm)?;
                self.delete(&vm.id).await?;
                Ok(json!({ "deleted": vm.name, "id": vm.id }))
            }
            .await,
        )
    }

    #[tool(
        description = "List the listening TCP and UDP ports in a running VM, with the process holding each and the address the host reaches it at (NAME.vm:PORT; http(s) links for web servers).",
        input_schema = input::<VmArgs>()
    )]
    async fn vm_ports(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: VmArgs = parse("vm_ports", raw)?;
                let ports: Ports = self.client().get(Route::VmPorts(&a.vm)).await?;
                Ok(to_value(&ports))
            }
            .await,
        )
    }

    #[tool(
        description = "Copy the git repository containing a host directory (inside the user's home) into a running VM at /root/repo: the checked-out commit plus uncommitted changes (untracked files only with include_untracked). Afterwards vm_exec runs there, and workspace_export brings the VM's changes back as a patch.",
        input_schema = input::<WorkspacePrepareArgs>()
    )]
    async fn workspace_prepare(
        &self,
        raw: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let progress = Progress::new(&ctx);
        let work = async {
            let a: WorkspacePrepareArgs = parse("workspace_prepare", raw)?;
            let req = PrepareWorkspace {
                path: a.path,
                branch: a.branch,
                from: a.from,
                include_untracked: a.include_untracked,
                full_copy: a.full_copy,
                replace: a.replace,
            };
            let prepared = self.prepare(&a.vm, req, &progress).await?;
            let mise = self.mise_install(&a.vm, &prepared, &progress).await;
            let mut out = to_value(&prepared);
            if let Some(m) = mise {
                out["mise_install"] = json!(m);
            }
            Ok(out)
        };
        let result = tokio::select! {
            r = work => r,
            _ = ctx.ct.cancelled() => Err(ToolError::Cancelled),
        };
        progress.finish().await;
        answer(result)
    }

    #[tool(
        description = "Export the work done in a VM's workspace since it was prepared, as a git patch (binary-safe, `git apply` applies it in the host repository) plus the list of changed files. Nothing on the host is changed.",
        input_schema = input::<WorkspaceExportArgs>()
    )]
    async fn workspace_export(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: WorkspaceExportArgs = parse("workspace_export", raw)?;
                let export: WorkspaceExport = self
                    .client()
                    .post_long(
                        Route::VmWorkspaceExport(&a.vm),
                        &ExportWorkspace {
                            base_commit: a.base_commit,
                        },
                    )
                    .await?;
                let bytes = export.patch.len();
                let (patch, encoding) = content_json(export.patch);
                Ok(json!({
                    "base": export.base,
                    "files": export.files,
                    "patch": patch,
                    "encoding": encoding,
                    "patch_bytes": bytes,
                }))
            }
            .await,
        )
    }

    #[tool(
        description = "Read a file in a running VM by absolute path. Text comes back as it is (encoding utf8), binary content as base64 (encoding base64); files over 1 MiB (or max_bytes) come back cut with truncated true.",
        input_schema = input::<FileReadArgs>()
    )]
    async fn file_read(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: FileReadArgs = parse("file_read", raw)?;
                let f: GuestFile = self
                    .client()
                    .post(
                        Route::VmFilesRead(&a.vm),
                        &ReadGuestFile {
                            path: a.path,
                            max_bytes: a.max_bytes,
                        },
                    )
                    .await?;
                let (content, encoding) = content_json(f.content);
                Ok(json!({
                    "path": f.path,
                    "size": f.size,
                    "mode": format!("{:04o}", f.mode),
                    "truncated": f.truncated,
                    "encoding": encoding,
                    "content": content,
                }))
            }
            .await,
        )
    }

    #[tool(
        description = "Write a file in a running VM by absolute path, replacing it whole (atomically); missing parent directories are made. Content is text, or base64 with encoding base64; at most 512 KiB.",
        input_schema = input::<FileWriteArgs>()
    )]
    async fn file_write(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: FileWriteArgs = parse("file_write", raw)?;
                let bad = |why: String| ToolError::Arguments {
                    tool: "file_write",
                    why,
                };
                let content = match a.encoding {
                    Encoding::Utf8 => a.content.into_bytes(),
                    Encoding::Base64 => STANDARD
                        .decode(a.content.as_bytes())
                        .map_err(|e| bad(format!("content is not base64: {e}")))?,
                };
                let mode = a.mode.as_deref().map(parse_mode).transpose().map_err(bad)?;
                let w: GuestFileWritten = self
                    .client()
                    .post(
                        Route::VmFilesWrite(&a.vm),
                        &WriteGuestFile {
                            path: a.path,
                            content,
                            mode,
                            create_parents: a.create_parents,
                        },
                    )
                    .await?;
                Ok(json!({
                    "path": w.path,
                    "bytes": w.bytes,
                    "mode": format!("{:04o}", w.mode),
                }))
            }
            .await,
        )
    }

    #[tool(
        description = "List a directory in a running VM by absolute path: each entry's name, kind (file, dir, symlink, other), size and mode, sorted by name.",
        input_schema = input::<FileListArgs>()
    )]
    async fn file_list(&self, raw: JsonObject) -> Result<CallToolResult, ErrorData> {
        answer(
            async {
                let a: FileListArgs = parse("file_list", raw)?;
                let l: GuestDirListing = self
                    .client()
                    .post(Route::VmFilesList(&a.vm), &ListGuestDir { path: a.path })
                    .await?;
                Ok(json!({
                    "path": l.path,
                    "truncated": l.truncated,
                    "entries": l.entries.iter().map(|e| json!({
                        "name": e.name,
                        "kind": e.kind,
                        "size": e.size,
                        "mode": format!("{:04o}", e.mode),
                    })).collect::<Vec<_>>(),
                }))
            }
            .await,
        )
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BangerMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("banger", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "banger runs disposable, hardware-isolated Linux microVMs. vm_run runs a \
                 command in a fresh VM (optionally with a host git repository copied to \
                 /root/repo) and deletes it; for longer work vm_create a VM, then vm_exec, \
                 file_read/file_write/file_list, workspace_prepare and workspace_export (the \
                 work as a patch), and vm_delete it when done. Guest paths are absolute.",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_output_ends_with_a_marker_saying_how_much_there_was() {
        let c = Captured {
            bytes: b"abc".to_vec(),
            total: 10,
        };
        assert_eq!(
            stream_text("stdout", &c),
            "abc\n[banger: stdout truncated: the first 3 of 10 bytes are shown]"
        );
        let whole = Captured {
            bytes: b"abc".to_vec(),
            total: 3,
        };
        assert_eq!(stream_text("stderr", &whole), "abc");
    }

    #[test]
    fn modes_are_octal_text() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        for bad in ["", "9", "rwx", "77777", "0o"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_default_and_are_bounded() {
        assert_eq!(timeout_of(None), Ok(DEFAULT_TIMEOUT));
        assert_eq!(timeout_of(Some(5)), Ok(Duration::from_secs(5)));
        assert!(timeout_of(Some(0)).is_err());
        assert!(timeout_of(Some(3601)).is_err());
    }

    #[test]
    fn binary_content_travels_as_base64() {
        assert_eq!(content_json(b"hi\n".to_vec()), (json!("hi\n"), "utf8"));
        assert_eq!(content_json(vec![0xff, 0]), (json!("/wA="), "base64"));
    }

    #[test]
    fn every_tool_has_an_object_schema_and_a_description() {
        let router = BangerMcp::tool_router();
        let tools = router.list_all();
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "file_list",
                "file_read",
                "file_write",
                "vm_create",
                "vm_delete",
                "vm_exec",
                "vm_list",
                "vm_ports",
                "vm_run",
                "vm_show",
                "workspace_export",
                "workspace_prepare"
            ]
        );
        for t in &tools {
            assert_eq!(
                t.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            assert!(
                t.description.as_deref().is_some_and(|d| d.len() > 40),
                "{}",
                t.name
            );
        }
        let exec = tools.iter().find(|t| t.name == "vm_exec").unwrap();
        let props = exec.input_schema["properties"].as_object().unwrap();
        for key in ["vm", "command", "cwd", "env", "stdin", "timeout_secs"] {
            assert!(props.contains_key(key), "vm_exec lacks {key}");
        }
        assert_eq!(exec.input_schema["required"], json!(["vm", "command"]));
    }
}
