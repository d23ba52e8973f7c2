//! `bangerd`, the per-user daemon. It owns banger's state (the SQLite store) and serves the
//! HTTP+JSON API on a Unix socket (mode 0600) in the runtime dir.
//!
//! The modules form layers; each uses only the ones below it (no import loop, as the
//! daemon test `module_graph` checks):
//!
//! - [`server`]: the router, the op-id middleware and serving on the socket.
//! - [`routes`]: the HTTP handlers: decode, call a service, encode; [`stream`]: long
//!   operations streamed as NDJSON with a heartbeat and a cancellation guard; [`openapi`]:
//!   the OpenAPI document's root, error responses and parameters, which the handlers'
//!   annotations use.
//! - [`web`]: the local web UI on its own TCP listener (config `web_listen`): HTML pages
//!   over the same services, behind a token, a Host allow-list, CSRF and Origin checks.
//! - The services: [`workspaces`] (a repository shipped into a running VM and its work
//!   exported as a patch, on top of [`vms`]), [`vms`] (the VM lifecycle, reconciliation and the VMM monitor),
//!   [`bootstrap`] (images built from Debian packages, and bundle imports, on top of
//!   [`images`]), [`images`] (managed images), [`pull`] (images from OCI registries, the
//!   layer cache), [`kernels`] (imported kernels).
//! - [`state`]: the state every service shares ([`state::AppState`]: options, store, host
//!   seams) and the locks with their one order ([`state::Locks`]), with [`agents`] (the one
//!   multiplexed connection per VM whose agent is behind a one-client socket, QEMU's).
//! - Below everything: [`options`] (what the daemon is handed), [`progress`] (stage
//!   events of long operations), [`clock`] (timestamps), [`error`] (operation errors and
//!   their API kinds), [`ops`] (per-request operation ids and cancellation accounting),
//!   [`ssh`] (the managed SSH key), [`ssh_hosts`] (the `~/.ssh/config` block, the running
//!   VMs' address stanzas and banger's known_hosts), [`stats`] (VMM process statistics
//!   from `/proc`), [`logcap`] (rotating VM console and VMM logs at `max_log_size`),
//!   [`dns`] (the `.vm` zone, rebuilt from the store on every VM row change, and its
//!   servers for the host and guests, and systemd-resolved's routing), [`tap_pool`] (the
//!   warm pool of idle TAPs), [`templates`] (the warm-start templates' catalogue: snapshots
//!   of booted guests that `vm create` restores from).
//! - Used by the entry point only: [`lock`] (the single-instance lock), [`logging`] (JSON
//!   logs to the state dir).
//!
//! Start-up order: dirs → lock → store (migrations) → socket → reconcile → DNS → the ssh
//! config block → the web UI's listener → serve (and, in the background, host keys for running VMs that have none
//! recorded); once the bridge exists (at start, or after the first boot made it), the
//! guests' DNS, systemd-resolved's routing and the TAP pool follow in the background. The
//! config, state and runtime dirs must belong to the daemon's user and not be writable by
//! others (else it refuses to start, naming the dir, its owner, its mode and the fix); the
//! lock, log, key and socket are never opened or replaced through a symlink. Shutdown
//! (SIGTERM, SIGINT or `POST /v1/shutdown`): stop accepting, finish in-flight requests,
//! remove the socket, release the lock.

pub mod agents;
pub mod bootstrap;
pub mod catalogs;
pub mod clock;
pub mod dns;
pub mod error;
pub mod images;
pub mod kernels;
pub mod lock;
pub mod logcap;
pub mod logging;
pub mod openapi;
pub mod ops;
pub mod options;
pub mod progress;
pub mod pull;
pub mod routes;
pub mod server;
pub mod ssh;
pub mod ssh_hosts;
pub mod state;
pub mod stats;
pub mod stream;
pub mod tap_pool;
pub mod templates;
#[cfg(test)]
mod test_rows;
pub mod vms;
pub mod web;
pub mod workspaces;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use banger_api::types as api_types;
use banger_core::build::BuildInfo;
use banger_core::config::{Config, ConfigError};
use banger_core::layout::{Layout, LayoutError};
use banger_core::private::{self, DirRole, PrivateError, SocketState};
use banger_core::probe::{self, SearchPath};
use banger_core::runner::{CommandRunner, SystemRunner};
use banger_core::vmm_kind::{VmmChoice, VmmKind, choose_vmm};
use banger_store::{Store, StoreError};
use clap::Parser;
use tokio::net::UnixListener;

pub use options::DaemonOptions;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Private(#[from] PrivateError),
    #[error("cannot reset the scratch directory {path}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the stale socket {path}")]
    RemoveSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set permissions of {path}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start logging to {path}")]
    Logging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("config bridge_subnet {value:?} is invalid")]
    Subnet {
        value: String,
        #[source]
        source: banger_net::plan::SubnetError,
    },
    #[error("BANGER_VMM: {0}")]
    Vmm(String),
    #[error("cannot prepare the managed SSH key")]
    Ssh(#[source] ssh::SshKeyError),
    #[error("{HELPER_SOCKET_ENV} must be an absolute path, got {0:?}")]
    HelperSocket(PathBuf),
    #[error("{WEB_LISTEN_ENV} must be an address and port such as 127.0.0.1:7777, got {0:?}")]
    WebListen(std::ffi::OsString),
    #[error("serving the API on {path} failed")]
    Serve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Parser)]
#[command(
    name = "bangerd",
    version = BuildInfo::current().to_string(),
    about = "banger's per-user daemon (started on demand by `banger`)"
)]
struct Args {}

/// The `bangerd` program: resolve paths from the environment, load config, log, serve.
pub fn main() -> ExitCode {
    let _args = Args::parse();
    match run_from_env() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Before logging is up, stderr is the only channel; the CLI captures it.
            let msg = format!("bangerd: {}", banger_core::error::chain(&e));
            tracing::error!(error = %msg, "daemon failed");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{msg}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_from_env() -> Result<(), DaemonError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let layout = Layout::resolve(|k| std::env::var_os(k), uid)?;
    // A config dir others can write could point firecracker_bin at their program.
    private::check_existing_dir(DirRole::Config, &layout.config_dir, uid)?;
    let mut loaded = Config::load(&layout.config_file())?;
    if let Some(value) = std::env::var_os(WEB_LISTEN_ENV) {
        loaded.config.web_listen = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .ok_or(DaemonError::WebListen(value))?;
    }
    // The owner's home, for host integration (git identity, agent auth, `file_sync`).
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| h.is_absolute());
    if let Some(home) = &home {
        loaded.config.check_home(&layout.config_file(), home)?;
    }
    let level = std::env::var("BANGER_LOG").unwrap_or_else(|_| loaded.config.log_level.clone());
    layout.ensure_state_dir(uid)?;
    logging::init(&layout.log_file(), &level, uid).map_err(|source| DaemonError::Logging {
        path: layout.log_file(),
        source,
    })?;
    for w in &loaded.warnings {
        tracing::warn!(warning = %w, "config");
    }
    // Host programs are found on the PATH the daemon was started with, then in the system
    // dirs; the libraries are handed it and read no environment.
    let path_var = std::env::var_os("PATH");
    let system = SystemRunner::new().with_path(SearchPath::programs(path_var.as_deref()));
    let runner: Arc<dyn CommandRunner> = Arc::new(system.clone());
    let host = state::Host {
        vmms: choose_vmms(&loaded.config, path_var.as_deref())?,
        net: host_net(
            uid,
            system.clone(),
            std::env::var_os(HELPER_SOCKET_ENV).map(PathBuf::from),
            &loaded.config,
        )?,
        runner,
    };
    // The guest agent, found as `banger doctor` finds it: BANGER_AGENT_BIN, else next to
    // bangerd, else on PATH.
    let exe = std::env::current_exe().ok();
    let agent_bin = probe::locate_agent(
        std::env::var_os(probe::AGENT_BIN_ENV).as_deref(),
        exe.as_deref().and_then(Path::parent),
        &SearchPath::from_var(path_var.as_deref()),
    );
    // `banger` next to `bangerd`: the web UI's host page shows its `doctor --json`.
    let doctor = exe
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.join("banger"))
        .filter(|p| p.is_file());
    let opts = DaemonOptions {
        layout,
        agent_bin,
        config: loaded.config,
        config_warnings: loaded.warnings,
        home,
        build: BuildInfo::current(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let web = web::WebParts {
        host: Arc::new(web::resources::SystemHost),
        doctor,
    };
    rt.block_on(run(opts, host, uid, web))
}

/// Overrides config `web_listen` (tests give every daemon a free port this way).
pub const WEB_LISTEN_ENV: &str = "BANGER_WEB_LISTEN";

/// Overrides config `helper_socket` (tests, and a helper somewhere else).
pub const HELPER_SOCKET_ENV: &str = "BANGER_HELPER_SOCKET";

/// The host network operations the daemon holds: as root (CI, a root daemon) it runs `ip`
/// and `nft` itself ([`banger_net::DirectNetOps`]); as anyone else it asks the root helper
/// on its socket (`BANGER_HELPER_SOCKET`, else config `helper_socket`), through the same
/// typed operations. A helper that is not there fails each network operation with an error
/// naming `banger system install`; the daemon still serves everything else.
pub fn host_net(
    euid: u32,
    runner: SystemRunner,
    helper_env: Option<PathBuf>,
    config: &Config,
) -> Result<Arc<dyn banger_net::NetOps>, DaemonError> {
    if euid == 0 {
        return Ok(Arc::new(banger_net::DirectNetOps::new(runner)));
    }
    let socket = match helper_env.filter(|p| !p.as_os_str().is_empty()) {
        Some(p) if p.is_absolute() => p,
        Some(p) => return Err(DaemonError::HelperSocket(p)),
        None => config.helper_socket.clone(),
    };
    tracing::info!(helper = %socket.display(), "not root: host networking goes through banger-helper");
    Ok(Arc::new(banger_net::helper::HelperNetOps::new(socket)))
}

/// The VMM backends found on this host and the default for new VMs (config `vmm`, overridden
/// by `BANGER_VMM`). A missing backend is logged, not fatal: the daemon serves everything
/// else, and creating a VM on it reports why it is unavailable.
fn choose_vmms(config: &Config, path: Option<&OsStr>) -> Result<state::Vmms, DaemonError> {
    let mut available: Vec<Arc<dyn banger_vmm::Vmm>> = Vec::new();
    let mut missing = Vec::new();
    match banger_vmm::FirecrackerVmm::locate(
        config.firecracker_bin.clone(),
        std::env::var_os(banger_vmm::firecracker::BIN_ENV),
        path,
    ) {
        Ok(fc) => available.push(Arc::new(fc)),
        Err(e) => missing.push((banger_vmm::VmmKind::Firecracker, e.to_string())),
    }
    match banger_vmm::qemu::QemuVmm::locate(
        config.qemu_bin.clone(),
        std::env::var_os(banger_vmm::qemu::BIN_ENV),
        path,
    ) {
        Ok(q) => available.push(Arc::new(q)),
        Err(e) => missing.push((banger_vmm::VmmKind::Qemu, e.to_string())),
    }
    let choice = match std::env::var("BANGER_VMM").ok().filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<VmmChoice>()
            .map_err(|e| DaemonError::Vmm(e.to_string()))?,
        None => config.vmm,
    };
    let has = |k| available.iter().any(|v| v.kind() == k);
    let default = match choose_vmm(choice, has) {
        Ok(kind) => kind,
        Err(why) => {
            tracing::warn!(%why, "no usable VMM backend; VM creation will fail until one is installed");
            match choice {
                VmmChoice::Kind(kind) => kind,
                VmmChoice::Auto => VmmKind::Firecracker,
            }
        }
    };
    for (kind, why) in &missing {
        tracing::info!(vmm = %kind, %why, "VMM backend not available");
    }
    Ok(state::Vmms::new(available, missing, default))
}

/// Nameservers for guests: the bridge gateway first when the daemon serves `.vm` (config
/// `dns`; its port 53 reaches the daemon, which REFUSES other names so the guest's resolver
/// moves on), then the config's `guest_dns`, else the host's non-loopback nameservers from
/// the first of `resolv_confs` that has any (`/etc/resolv.conf`, then resolved's upstream
/// list when the host's file only names its local stub).
fn guest_dns(
    config: &Config,
    gateway: std::net::Ipv4Addr,
    resolv_confs: &[String],
) -> Vec<std::net::Ipv4Addr> {
    let mut servers: Vec<std::net::Ipv4Addr> = Vec::new();
    if config.dns {
        servers.push(gateway);
    }
    let upstream = if !config.guest_dns.is_empty() {
        config.guest_dns.clone()
    } else {
        resolv_confs
            .iter()
            .map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("nameserver"))
                    .filter_map(|v| v.trim().parse::<std::net::Ipv4Addr>().ok())
                    .filter(|ip| !ip.is_loopback())
                    .collect::<Vec<_>>()
            })
            .find(|found| !found.is_empty())
            .unwrap_or_default()
    };
    for ip in upstream {
        if !servers.contains(&ip) {
            servers.push(ip);
        }
    }
    servers
}

/// `.vm` for guests and for the host's resolver (see [`dns`]), once the bridge exists (see
/// [`state::AppState::bridge`]): the guests' listener on
/// the gateway and its port 53 redirect, then resolved's routing, applied again whenever
/// the zone changes. Runs until the daemon stops.
async fn host_dns(state: Arc<state::AppState>) {
    let net = state.host.net.clone();
    let bridge = state.opts.config.bridge_name.clone();
    state.bridge_ready().await;
    let host_port = match state.dns.listener() {
        api_types::DnsListener::Listening { address } => Some(address.port()),
        _ => None,
    };
    let (server, at) = state
        .dns
        .serve_guests(
            net.clone(),
            &bridge,
            state.subnet.gateway(),
            state.opts.config.dns_listen,
            host_port,
        )
        .await;
    if let Some(server) = server {
        state.dns.keep_guest_server(server);
    }
    let Some(at) = at else { return };
    let resolved = Path::new(banger_net::resolved::RESOLVED_DIR);
    loop {
        let runner = state.host.runner.clone();
        state
            .dns
            .route(net.clone(), runner, resolved, &bridge, at)
            .await;
        state.dns.changed().await;
    }
}

/// Writes the managed block into the owner's `~/.ssh/config`; a failure is a warning, the
/// daemon serves without it.
fn write_ssh_config(state: &state::AppState) {
    match state.ssh_hosts.write_user_config() {
        Ok(w) if w.changed => {
            tracing::info!(path = %w.path.display(), "ssh config block written")
        }
        Ok(w) => tracing::debug!(path = %w.path.display(), "ssh config block up to date"),
        Err(e) => tracing::warn!(
            error = %banger_core::error::chain(&e),
            "ssh config block not written (banger ssh-config retries)"
        ),
    }
}

/// Binds the daemon socket at `socket` (mode 0600). Called with the lock held, so a socket
/// left at the path belongs to a dead daemon and is removed, but only once `lstat` shows it is
/// a socket of ours: a symlink or any other file there is refused, never followed or replaced.
fn bind_socket(socket: &Path, euid: u32) -> Result<UnixListener, DaemonError> {
    if private::check_socket(socket, euid)? == SocketState::Ours {
        std::fs::remove_file(socket).map_err(|source| DaemonError::RemoveSocket {
            path: socket.to_path_buf(),
            source,
        })?;
    }
    // bind(2) creates the path itself and fails if anything appeared there meanwhile.
    let listener = UnixListener::bind(socket).map_err(|source| DaemonError::Bind {
        path: socket.to_path_buf(),
        source,
    })?;
    private::check_socket(socket, euid)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DaemonError::Chmod {
            path: socket.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Runs the daemon until it is told to stop.
pub async fn run(
    opts: DaemonOptions,
    host: state::Host,
    uid: u32,
    web_parts: web::WebParts,
) -> Result<(), DaemonError> {
    let layout = &opts.layout;
    let subnet: banger_net::Subnet =
        opts.config
            .bridge_subnet
            .parse()
            .map_err(|source| DaemonError::Subnet {
                value: opts.config.bridge_subnet.clone(),
                source,
            })?;
    layout.ensure_state_dir(uid)?;
    layout.ensure_runtime_dir(uid)?;
    let _lock = lock::DaemonLock::acquire(&layout.lock_path(), uid)?;
    // Holding the lock: temporary files left by a killed daemon are ours to remove.
    images::reset_scratch_dir(&layout.state_dir)
        .map_err(|(path, source)| DaemonError::Scratch { path, source })?;
    let store = Store::open(&layout.db_path())?;
    let ssh =
        ssh::ensure_key(host.runner.as_ref(), &layout.state_dir, uid).map_err(DaemonError::Ssh)?;
    let resolv: Vec<String> = [
        "/etc/resolv.conf".to_string(),
        format!("{}/resolv.conf", banger_net::resolved::RESOLVED_DIR),
    ]
    .iter()
    .map(|p| std::fs::read_to_string(p).unwrap_or_default())
    .collect();
    let parts = state::Parts {
        guest_dns: guest_dns(&opts.config, subnet.gateway(), &resolv),
        host,
        subnet,
        ssh,
        uid,
        clock: Arc::new(clock::SystemClock),
    };
    let socket = layout.socket_path();
    let listener = bind_socket(&socket, uid)?;
    tracing::info!(
        socket = %socket.display(),
        pid = std::process::id(),
        version = %opts.build,
        "bangerd listening"
    );
    let state = Arc::new(state::AppState::new(opts.clone(), store, parts));
    vms::reconcile(&state).await;
    state.refresh_dns();
    if opts.config.ssh_config {
        write_ssh_config(&state);
    }
    let dns = if opts.config.dns {
        state.dns.serve(opts.config.dns_listen).await
    } else {
        None
    };
    vms::note_bridge(&state).await;
    let monitor = tokio::spawn(vms::monitor(state.clone()));
    let backfill = tokio::spawn(vms::record_missing_host_keys(state.clone()));
    let pool = tokio::spawn(vms::keep_tap_pool(state.clone()));
    let host_dns = opts
        .config
        .dns
        .then(|| tokio::spawn(host_dns(state.clone())));
    let web_ui = web::start(state.clone(), web_parts).await;
    let result = server::serve(listener, state.clone()).await;
    if let Some(task) = web_ui {
        task.abort();
    }
    monitor.abort();
    backfill.abort();
    pool.abort();
    if let Some(task) = host_dns {
        task.abort();
        let _ = task.await;
    }
    state.dns.unroute(state.host.net.clone()).await;
    state.dns.shutdown_guests().await;
    if let Some(dns) = dns {
        dns.shutdown().await;
    }
    if private::check_socket(&socket, uid).is_ok_and(|s| s == SocketState::Ours) {
        let _ = std::fs::remove_file(&socket);
    }
    tracing::info!("bangerd stopped");
    result.map_err(|source| DaemonError::Serve {
        path: socket,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_acts_directly_and_anyone_else_asks_the_helper() {
        let config = Config::default();
        let net = |euid, env: Option<&str>| {
            host_net(euid, SystemRunner::new(), env.map(PathBuf::from), &config)
                .map(|n| format!("{n:?}"))
        };
        assert!(net(0, None).unwrap().starts_with("DirectNetOps"));
        let helper = net(1000, None).unwrap();
        assert!(
            helper.starts_with("HelperNetOps") && helper.contains("/run/banger/helper.sock"),
            "{helper}"
        );
        assert!(net(1000, Some("/t/h.sock")).unwrap().contains("/t/h.sock"));
        let err = net(1000, Some("h.sock")).unwrap_err().to_string();
        assert!(err.contains("BANGER_HELPER_SOCKET"), "{err}");
    }

    #[test]
    fn without_a_helper_a_network_operation_names_system_install() {
        let dir = tempfile::tempdir().unwrap();
        let net = host_net(
            1000,
            SystemRunner::new(),
            Some(dir.path().join("helper.sock")),
            &Config::default(),
        )
        .unwrap();
        let err = net.delete_tap("bgr1").unwrap_err();
        let msg = banger_core::error::chain(&err);
        assert!(msg.contains("banger system install"), "{msg}");
    }

    #[test]
    fn guests_ask_the_gateway_first_then_the_host_s_upstream_servers() {
        let gw = std::net::Ipv4Addr::new(172, 30, 0, 1);
        let stub = "nameserver 127.0.0.53\nsearch lan\n".to_string();
        let upstream = "nameserver 192.168.1.1\nnameserver 172.30.0.1\n".to_string();
        let config = Config::default();
        assert!(config.dns);
        let got = guest_dns(&config, gw, &[stub.clone(), upstream.clone()]);
        assert_eq!(got, [gw, "192.168.1.1".parse().unwrap()], "deduplicated");
        let direct = "nameserver 9.9.9.9\n".to_string();
        assert_eq!(
            guest_dns(&config, gw, &[direct, upstream.clone()]),
            [gw, "9.9.9.9".parse().unwrap()]
        );
        let off = Config {
            dns: false,
            guest_dns: vec!["1.1.1.1".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(
            guest_dns(&off, gw, &[stub, upstream]),
            ["1.1.1.1".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }
}
