//! The process around the state machine: the real [`Host`], the API socket's
//! accept loop, signals and the exit sequence.
//!
//! Exit paths, and what the process reports:
//! - `SendCtrlAltDel` on a running guest: shutdown console lines, exit 0
//!   (Firecracker exits when the guest resets);
//! - a failed snapshot load: exit 1 after the 400 is sent;
//! - SIGTERM/SIGINT: cleanup, then death by that signal (Firecracker installs
//!   no handler for them, so a caller sees the same status);
//! - SIGKILL: no cleanup, but the agent dies too (`PR_SET_PDEATHSIG`).
//!
//! On every exit but SIGKILL the fake stops the agent and removes the API
//! socket, the vsock socket and the agent's socket. Firecracker itself leaves
//! its socket files behind (its docs tell users to `rm -f` the API socket
//! before starting it); removing them is a convenience of the fake, and
//! callers that `rm -f` first see no difference.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_agent_proto::wire::AGENT_VSOCK_PORT;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::{RequestLog, Server};
use crate::console::{self, Console};
use crate::state::{FileInfo, GuestStart, Host, Vm};
use crate::vsock::{self, Agent, AgentLookupError, Muxer};
use crate::{Config, Exit, RunError};

/// How long the guest takes to shut down after Ctrl-Alt-Del.
const SHUTDOWN_DELAY: Duration = Duration::from_millis(150);
/// Time for a response to reach the client before a fatal exit.
const FATAL_DELAY: Duration = Duration::from_millis(100);
/// Time the agent gets to exit on SIGTERM.
const AGENT_GRACE: Duration = Duration::from_secs(2);

/// Resources the exit sequence must release.
#[derive(Debug, Default)]
struct Resources {
    vsock_path: Option<PathBuf>,
    vsock_listener: Option<StdUnixListener>,
    vsock_task: Option<JoinHandle<()>>,
    agent: Option<Agent>,
}

/// The real host: files, sockets, console, agent.
#[derive(Debug)]
pub struct SystemHost {
    console: Console,
    agent_bin: Result<PathBuf, AgentLookupError>,
    resources: Arc<Mutex<Resources>>,
    running: watch::Sender<bool>,
    reset: watch::Sender<u64>,
    exit: mpsc::UnboundedSender<Exit>,
}

impl SystemHost {
    fn resources(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn start_vsock(&mut self, uds: &Path) {
        let listener = self.resources().vsock_listener.take();
        let Some(listener) = listener else { return };
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                let _ = self.console.write_lines(&[format!(
                    "banger-fake-firecracker: vsock socket {} unusable: {e}",
                    uds.display()
                )]);
                return;
            }
        };
        let mut forwards = BTreeMap::new();
        match &self.agent_bin {
            Ok(bin) => {
                let socket = vsock::agent_socket_path(uds);
                let root = vsock::guest_root_path(uds);
                let identity = vsock::identity_root_path(uds);
                match Agent::spawn(bin, &socket, Some(&root), Some(&identity)) {
                    Ok((agent, unprivate)) => {
                        if let Some(why) = unprivate {
                            let _ = self
                                .console
                                .write_lines(&[format!("{} ({why})", vsock::NO_PRIVATE_ROOT)]);
                        }
                        forwards.insert(AGENT_VSOCK_PORT, agent.socket().to_owned());
                        self.resources().agent = Some(agent);
                    }
                    Err(e) => {
                        let _ = self.console.write_lines(&[console::agent_missing_line(
                            &banger_core::error::chain(&e),
                        )]);
                    }
                }
            }
            Err(e) => {
                let _ = self
                    .console
                    .write_lines(&[console::agent_missing_line(&e.to_string())]);
            }
        }
        let muxer = Muxer::new(
            listener,
            forwards,
            self.running.subscribe(),
            self.reset.subscribe(),
        );
        let task = tokio::spawn(async move {
            let _ = muxer.run().await;
        });
        self.resources().vsock_task = Some(task);
    }
}

impl Host for SystemHost {
    fn open(&mut self, path: &Path, write: bool) -> io::Result<FileInfo> {
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        let meta = file.metadata()?;
        Ok(FileInfo {
            is_file: meta.is_file(),
            len: meta.len(),
        })
    }

    fn connect_unix(&mut self, path: &Path) -> io::Result<()> {
        std::os::unix::net::UnixStream::connect(path).map(drop)
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write(&mut self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(contents)?;
        file.sync_all()
    }

    fn create_sparse(&mut self, path: &Path, len: u64) -> io::Result<()> {
        let file = File::create(path)?;
        file.set_len(len)
    }

    fn append_line(&mut self, path: &Path, line: &str) -> io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if !line.is_empty() {
            file.write_all(format!("{line}\n").as_bytes())?;
        }
        Ok(())
    }

    fn bind_vsock(&mut self, uds_path: &Path) -> io::Result<()> {
        let listener = StdUnixListener::bind(uds_path)?;
        let mut res = self.resources();
        res.vsock_listener = Some(listener);
        res.vsock_path = Some(uds_path.to_owned());
        Ok(())
    }

    fn release_vsock(&mut self, uds_path: &Path) -> io::Result<()> {
        {
            let mut res = self.resources();
            res.vsock_listener = None;
            res.vsock_path = None;
        }
        match std::fs::remove_file(uds_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn guest_started(&mut self, start: &GuestStart) -> io::Result<()> {
        if let Some(serial) = &start.serial_out {
            self.console.redirect(serial)?;
        }
        self.console.mark_boot();
        self.running.send_replace(start.running);
        let _ = self.console.write_lines(&start.console);
        if let Some(uds) = &start.vsock_uds {
            self.start_vsock(uds);
        }
        Ok(())
    }

    fn guest_paused(&mut self) {
        self.running.send_replace(false);
    }

    fn guest_resumed(&mut self) {
        self.running.send_replace(true);
    }

    fn guest_shutdown(&mut self) {
        let console = self.console.clone();
        let exit = self.exit.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SHUTDOWN_DELAY).await;
            let _ = console.write_lines(&console::shutdown_lines(console.uptime()));
            let _ = exit.send(Exit::Code(0));
        });
    }

    fn vsock_reset(&mut self) {
        self.reset.send_modify(|generation| *generation += 1);
    }

    fn fatal_error(&mut self) {
        let exit = self.exit.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FATAL_DELAY).await;
            let _ = exit.send(Exit::Code(1));
        });
    }

    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

async fn teardown(resources: &Mutex<Resources>) {
    let (task, path, agent) = {
        let mut res = resources.lock().unwrap_or_else(PoisonError::into_inner);
        res.vsock_listener = None;
        (
            res.vsock_task.take(),
            res.vsock_path.take(),
            res.agent.take(),
        )
    };
    if let Some(task) = task {
        task.abort();
    }
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
    if let Some(agent) = agent {
        agent.stop(AGENT_GRACE).await;
    }
}

/// Runs the fake until it exits; see [`crate::run`].
pub(crate) async fn run(config: Config) -> Result<Exit, RunError> {
    let spec = Arc::new(crate::schema::Spec::embedded()?);
    let request_log = config
        .request_log
        .as_deref()
        .map(RequestLog::open)
        .transpose()?;
    if let Some(path) = config.vm.logger.as_ref().and_then(|l| l.path.as_ref()) {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RunError::Logger {
                path: path.clone(),
                source,
            })?;
    }
    if let Some(path) = &config.vm.metrics_path {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RunError::Metrics {
                path: path.clone(),
                source,
            })?;
    }
    let listener =
        UnixListener::bind(&config.api_sock).map_err(|source| RunError::BindApiSocket {
            path: config.api_sock.clone(),
            source,
        })?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;

    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let resources = Arc::new(Mutex::new(Resources::default()));
    let host = SystemHost {
        console: Console::new(config.console),
        agent_bin: config.agent_bin,
        resources: Arc::clone(&resources),
        running: watch::channel(false).0,
        reset: watch::channel(0).0,
        exit: exit_tx,
    };
    let mut vm = Vm::new(host, Arc::clone(&spec), config.vm);
    vm.log(
        crate::state::LogLevel::Info,
        (file!(), line!()),
        &format!("Running Firecracker v{}", crate::FIRECRACKER_VERSION),
    );
    let server = Arc::new(Server {
        spec,
        vm: Mutex::new(vm),
        request_log,
        max_payload: config.max_payload,
    });
    let exit = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    let service = service_fn(move |req| Arc::clone(&server).serve(req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(exit) = exit_rx.recv() => break exit,
            _ = sigterm.recv() => break Exit::Signal(libc::SIGTERM),
            _ = sigint.recv() => break Exit::Signal(libc::SIGINT),
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&config.api_sock);
    teardown(&resources).await;
    Ok(exit)
}
