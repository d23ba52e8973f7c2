//! `banger`, the command-line interface: parse, call the daemon, render.
//!
//! - [`args`]: the command line (clap).
//! - [`daemonctl`]: finding, starting, replacing and stopping `bangerd`.
//! - [`doctor`]: read-only host checks.
//! - [`vm`]: the `vm` commands.
//! - [`artifacts`]: the `image`, `kernel` and `internal make-bundle` commands.
//! - [`ui`]: colour, tables and JSON on the terminal.
//! - [`escape`]: escaping text from guests, images and bundles before it is printed.
//! - [`sshconfig`]: `banger ssh-config`, the managed block in `~/.ssh/config`.
//! - [`logview`]: printing and following a VM's logs (`vm logs [-f]`) across rotations.
//! - [`error`]: errors and their one-line rendering (`banger: ...`).
//! - [`system`]: `system install|status|restart|uninstall` (the systemd units).
//! - [`mcp`]: `banger mcp`, the MCP server on stdio (in `banger-mcp`) and `--print-config`.
//!
//! This crate is the program's front: it alone reads the process environment (`BANGER_HOME`,
//! XDG dirs, `PATH`, `NO_COLOR`, the `BANGER_*` overrides), once, in [`main`] ([`HostEnv`]),
//! and hands plain values to the libraries.

pub mod args;
pub mod artifacts;
pub mod daemonctl;
pub mod doctor;
pub mod error;
pub mod escape;
pub mod exec;
pub mod logview;
pub mod mcp;
pub mod sshconfig;
pub mod system;
pub mod ui;
pub mod vm;
pub mod webui;
pub mod words;
pub mod workspace;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use banger_api::types::{DaemonStatus, DnsListener, DnsRouting};
use banger_core::build::{BuildInfo, format_rfc3339};
use banger_core::layout::{Layout, LayoutError};
use banger_core::probe::{self, SearchPath};
use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command, DaemonCommand};
use crate::error::CliError;
use crate::ui::{Style, Ui};

/// The host's environment as the commands see it, read once by [`main`].
#[derive(Debug, Clone, Default)]
pub struct HostEnv {
    /// `PATH`.
    pub path: Option<OsString>,
    /// The running `banger` executable; its companions (`bangerd`, `banger-agent`) are looked
    /// for next to it first.
    pub exe: Option<PathBuf>,
    /// `BANGER_AGENT_BIN`.
    pub agent_bin: Option<OsString>,
    /// `BANGER_FIRECRACKER_BIN`.
    pub firecracker_bin: Option<OsString>,
    /// `BANGER_QEMU_BIN`.
    pub qemu_bin: Option<OsString>,
    /// `BANGER_VMM`.
    pub vmm: Option<OsString>,
    /// `SUDO_USER`: the owner `system install` chooses without `--user`.
    pub sudo_user: Option<OsString>,
    /// `BANGER_HELPER_SOCKET`.
    pub helper_socket: Option<OsString>,
    /// `HOME`: the owner's home, inside which `banger mcp` takes host paths.
    pub home: Option<OsString>,
    /// `BANGER_HOME`, passed on in `banger mcp --print-config` snippets.
    pub banger_home: Option<OsString>,
}

impl HostEnv {
    /// Reads the process environment.
    pub fn read() -> Self {
        Self {
            path: std::env::var_os("PATH"),
            exe: std::env::current_exe().ok(),
            agent_bin: std::env::var_os(probe::AGENT_BIN_ENV),
            firecracker_bin: std::env::var_os(probe::FIRECRACKER.env_var),
            qemu_bin: std::env::var_os(probe::QEMU.env_var),
            vmm: std::env::var_os("BANGER_VMM"),
            sudo_user: std::env::var_os("SUDO_USER"),
            helper_socket: std::env::var_os("BANGER_HELPER_SOCKET"),
            home: std::env::var_os("HOME"),
            banger_home: std::env::var_os("BANGER_HOME"),
        }
    }

    /// `PATH`'s directories, where binaries are looked up.
    pub fn search_path(&self) -> SearchPath {
        SearchPath::from_var(self.path.as_deref())
    }

    /// The directory of the running executable.
    pub fn exe_dir(&self) -> Option<&std::path::Path> {
        self.exe.as_deref().and_then(std::path::Path::parent)
    }

    /// The guest agent binary: `BANGER_AGENT_BIN`, else next to `banger`, else on `PATH`.
    pub fn agent(&self) -> Option<PathBuf> {
        probe::locate_agent(
            self.agent_bin.as_deref(),
            self.exe_dir(),
            &self.search_path(),
        )
    }
}

/// Everything a command may use, resolved once from the environment.
#[derive(Debug)]
pub struct Ctx {
    pub ui: Ui,
    pub env: HostEnv,
    layout: Result<Layout, LayoutError>,
    /// `BANGER_CLIENT_TIMEOUT`, unparsed: only commands that talk to the daemon check it.
    client_timeout: Option<OsString>,
}

impl Ctx {
    /// The state layout; resolving it can fail (no HOME), so only commands that need it ask.
    pub fn layout(&self) -> Result<&Layout, CliError> {
        self.layout
            .as_ref()
            .map_err(|e| CliError::Layout(e.clone()))
    }

    /// Who the CLI is and how long it waits for a silent daemon.
    pub fn conn(&self) -> Result<daemonctl::Conn, CliError> {
        Ok(daemonctl::Conn {
            euid: uid(),
            timeout: daemonctl::client_timeout(self.client_timeout.as_deref())?,
        })
    }
}

fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The `banger` program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let mut ctx = Ctx {
        ui: Ui::stdio(no_color),
        env: HostEnv::read(),
        layout: Layout::resolve(
            system::layout_env(
                |k| std::env::var_os(k),
                uid(),
                std::path::Path::new(banger_core::layout::SYSTEM_DAEMON_RUNTIME_DIR),
            ),
            uid(),
        ),
        client_timeout: std::env::var_os(daemonctl::CLIENT_TIMEOUT_ENV),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&mut ctx, &CliError::Runtime(e)),
    };
    match rt.block_on(run(cli.command, &mut ctx)) {
        Ok(code) => ExitCode::from(code),
        // Whoever read stdout has what they wanted (`| head -1`).
        Err(CliError::StdoutClosed(_)) => ExitCode::SUCCESS,
        Err(e) => fail(&mut ctx, &e),
    }
}

fn fail(ctx: &mut Ctx, e: &CliError) -> ExitCode {
    let color = ctx.ui.paint_err(Style::Dim, "x") != "x";
    let msg = error::render(e, color);
    // If even stderr is gone there is nobody left to tell.
    let _ = ctx.ui.note(&msg);
    ExitCode::from(e.exit_code())
}

/// Runs one command; returns the exit status on success.
pub async fn run(command: Command, ctx: &mut Ctx) -> Result<u8, CliError> {
    match command {
        Command::Version(f) => version(ctx, f.json),
        Command::Daemon(DaemonCommand::Status(f)) => daemon_status(ctx, f.json).await,
        Command::Daemon(DaemonCommand::Stop) => daemon_stop(ctx).await,
        Command::Doctor(f) => run_doctor(ctx, f.json).await,
        Command::Vm(v) => vm::run(v, ctx).await,
        Command::Ps(l) => vm::list_ps(ctx, &l).await,
        Command::Image(i) => artifacts::image(i, ctx).await,
        Command::Kernel(k) => artifacts::kernel(k, ctx).await,
        Command::Internal(args::InternalCommand::MakeBundle(a)) => artifacts::make_bundle(a, ctx),
        Command::SshConfig(a) => sshconfig::run(a, ctx).await,
        Command::System(s) => system::run(&s, &ctx.env, &mut ctx.ui).map(|()| 0),
        Command::Ui(a) => webui::run(ctx, &a).await,
        Command::Mcp(a) => mcp::run(a, ctx).await,
        Command::Completion { shell } => {
            // clap_complete panics on a write error, so the script is written to memory first
            // and then to stdout, where a closed pipe is an error like any other write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "banger", &mut script);
            ctx.ui.out().write_all(&script)?;
            Ok(0)
        }
    }
}

fn version(ctx: &mut Ctx, json: bool) -> Result<u8, CliError> {
    let b = BuildInfo::current();
    if json {
        #[derive(serde::Serialize)]
        struct V<'a> {
            #[serde(flatten)]
            build: &'a BuildInfo,
            build_time: String,
        }
        ctx.ui.json(&V {
            build: &b,
            build_time: b.build_time(),
        })?;
    } else {
        ctx.ui.line(&format!("banger {b}"))?;
    }
    Ok(0)
}

/// Connects to a daemon of this build, telling the user when one was started or replaced.
pub async fn connect(ctx: &mut Ctx) -> Result<(banger_api::Client, DaemonStatus), CliError> {
    let (client, status, _) = connect_with(ctx, |_| async {}).await?;
    Ok((client, status))
}

/// [`connect`], with `early` sent at the same time as the build check; its result when a
/// daemon of this build already ran (see [`daemonctl::ensure`]).
pub async fn connect_with<T, F: std::future::Future<Output = T>>(
    ctx: &mut Ctx,
    early: impl FnOnce(banger_api::Client) -> F,
) -> Result<(banger_api::Client, DaemonStatus, Option<T>), CliError> {
    let layout = ctx.layout()?.clone();
    let (client, status, how, early) =
        daemonctl::ensure(&layout, ctx.conn()?, &ctx.env, early).await?;
    if let daemonctl::Ensured::Replaced { old } = how {
        let msg = format!(
            "replaced daemon {} with {} (pid {})",
            old, status.build, status.pid
        );
        ctx.ui.note(&ctx.ui.paint_err(Style::Dim, &msg))?;
    }
    Ok((client, status, early))
}

async fn daemon_status(ctx: &mut Ctx, json: bool) -> Result<u8, CliError> {
    let (_client, st) = connect(ctx).await?;
    if json {
        ctx.ui.json(&st)?;
        return Ok(0);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let pairs = vec![
        ("version", st.build.version.clone()),
        ("commit", st.build.commit.clone()),
        ("built", st.build.build_time()),
        ("pid", st.pid.to_string()),
        ("socket", st.socket.display().to_string()),
        ("state dir", st.state_dir.display().to_string()),
        ("config", st.config_file.display().to_string()),
        ("log file", st.log_file.display().to_string()),
        (
            "started",
            format!(
                "{} (up {}s)",
                format_rfc3339(st.started_at),
                now.saturating_sub(st.started_at)
            ),
        ),
        (
            "requests",
            format!(
                "{} in flight, {} completed, {} cancelled",
                st.ops.in_flight, st.ops.completed, st.ops.cancelled
            ),
        ),
        (
            "dns",
            match &st.dns {
                DnsListener::Off => "off (config dns = false)".to_string(),
                DnsListener::Listening { address } => {
                    format!("{address} (udp, tcp): NAME.vm for running VMs")
                }
                DnsListener::Failed { error } => format!("not serving: {error}"),
            },
        ),
        (
            "guest dns",
            match &st.guest_dns {
                DnsListener::Off => "off (until the first boot makes the bridge)".to_string(),
                DnsListener::Listening { address } => {
                    format!("{address}, port 53 of the gateway redirected there")
                }
                DnsListener::Failed { error } => format!("not serving: {error}"),
            },
        ),
        (
            "dns route",
            match &st.dns_routing {
                DnsRouting::Off => "off".to_string(),
                DnsRouting::Resolved { bridge, server } => {
                    format!("systemd-resolved: ~vm on {bridge} -> {server}")
                }
                DnsRouting::NotAvailable { reason } => format!("none: {reason}"),
                DnsRouting::Failed { error } => format!("failed: {error}"),
            },
        ),
        (
            "tap pool",
            format!(
                "{} of {} idle{}",
                st.tap_pool.idle.len(),
                st.tap_pool.wanted,
                if st.tap_pool.idle.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", st.tap_pool.idle.join(", "))
                }
            ),
        ),
        ("web ui", webui::listener_line(&st.web)),
    ];
    write_str(ctx, &ui::key_values(&pairs))?;
    for w in &st.config_warnings {
        ctx.ui
            .note(&ctx.ui.paint_err(Style::Yellow, &format!("warning: {w}")))?;
    }
    Ok(0)
}

fn write_str(ctx: &mut Ctx, s: &str) -> Result<(), CliError> {
    ctx.ui.out().write_all(s.as_bytes())?;
    Ok(())
}

async fn daemon_stop(ctx: &mut Ctx) -> Result<u8, CliError> {
    let layout = ctx.layout()?.clone();
    let client = daemonctl::client(&layout, ctx.conn()?)?;
    match client.get::<DaemonStatus>(banger_api::Route::Status).await {
        Ok(st) => {
            daemonctl::stop(&client, st.pid).await?;
            ctx.ui.line(&format!("stopped bangerd (pid {})", st.pid))?;
        }
        Err(e) if e.is_unreachable() => ctx.ui.line("bangerd is not running")?,
        Err(e) => return Err(e.into()),
    }
    Ok(0)
}

async fn run_doctor(ctx: &mut Ctx, json: bool) -> Result<u8, CliError> {
    let layout = ctx.layout()?.clone();
    let host = doctor::Host::real(ctx.env.clone(), ctx.conn()?);
    let checks = doctor::run(&layout, &host).await;
    let failed = checks
        .iter()
        .filter(|c| c.status == doctor::Status::Fail)
        .count();
    if json {
        ctx.ui.json(&checks)?;
    } else {
        let rows: Vec<Vec<ui::Cell>> = checks
            .iter()
            .map(|c| {
                let style = match c.status {
                    doctor::Status::Pass => Style::Green,
                    doctor::Status::Warn => Style::Yellow,
                    doctor::Status::Fail => Style::Red,
                };
                let mut detail = ui::Cell::plain(c.detail.clone());
                if let Some(fix) = &c.fix {
                    let dim = ctx.ui.cell(Style::Dim, format!(" (fix: {fix})"));
                    detail = detail.append(dim);
                }
                vec![
                    ctx.ui.cell(style, c.status.label()),
                    c.check.clone().into(),
                    detail,
                ]
            })
            .collect();
        let text = ui::table(&["STATUS", "CHECK", "DETAIL"], &rows);
        // Doctor output is lines of PASS/WARN/FAIL: skip the header row.
        let body: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        write_str(ctx, &body)?;
    }
    if failed > 0 {
        return Err(CliError::DoctorFailed(failed));
    }
    Ok(0)
}
