//! The agent's HTTP/1.1 server and the transports it listens on.
//!
//! [`Agent`] answers `GET /healthz`, `GET /ports`, `GET /host-keys` and the file endpoints
//! (`POST /files/read|write|list`, [`crate::files`]), `POST /identity` ([`crate::identity`]) on any byte stream ([`serve_connection`]).
//! The streams come from a vsock listener (the guest's normal path under Firecracker), a Unix
//! socket (host test mode) or a virtio-serial device, which is one stream reopened after every
//! disconnect ([`serve_reopening`]). [`run`] serves a [`ListenPlan`] until a shutdown future
//! resolves, then removes the Unix socket file it created.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use banger_core::build::BuildInfo;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};

use crate::host_keys::{HostKeyError, HostKeyFiles};
use crate::procfs::{ProcError, ProcFs};
use crate::serial::SerialStream;
use crate::{error_chain, exec, files, identity, mux};
use banger_agent_proto::exec::{EXEC_PATH, UPGRADE_EXEC};
use banger_agent_proto::files::{
    FILE_LIST_PATH, FILE_READ_PATH, FILE_WRITE_PATH, MAX_FILE_REQUEST,
};
use banger_agent_proto::identity::IDENTITY_PATH;
use banger_agent_proto::mux::{MUX_PATH, UPGRADE_MUX};
use banger_agent_proto::wire::{
    AGENT_VSOCK_PORT, ErrorBody, HOST_KEYS_PATH, Health, HostKeys, Ports,
};

/// How long the serial loop waits before reopening the device after a connection ends.
pub const SERIAL_REOPEN_DELAY: Duration = Duration::from_millis(200);

/// Pause after a failed `accept` so a persistent failure (out of fds) does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A failure starting or running the agent's listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot remove stale socket {}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("refusing to replace {}: it exists and is not a socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on unix socket {}", path.display())]
    BindUnix { path: PathBuf, source: io::Error },
    #[error("cannot listen on vsock port {port}")]
    BindVsock { port: u32, source: io::Error },
    #[error("serial device {} does not exist", path.display())]
    SerialMissing { path: PathBuf },
    #[error("nothing to listen on: no vsock port, unix socket or serial device")]
    NoListeners,
    #[error("a listener stopped unexpectedly (serving {names}): {reason}")]
    ListenerStopped { names: String, reason: String },
    #[error("cannot install handler for {signal}")]
    Signal {
        signal: &'static str,
        source: io::Error,
    },
}

/// A failure on one HTTP connection.
#[derive(Debug, thiserror::Error)]
#[error("HTTP connection on {peer} failed")]
pub struct ConnectionError {
    pub peer: String,
    #[source]
    pub source: hyper::Error,
}

/// Answers the agent's endpoints from a procfs tree.
#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

#[derive(Debug)]
struct AgentInner {
    procfs: ProcFs,
    build: BuildInfo,
    host_keys: HostKeyFiles,
    /// Where `POST /identity` acts; `None` (refused) unless the agent serves a guest.
    identity: Option<identity::Guest>,
}

impl Agent {
    /// An agent reading `procfs` and the guest's host keys, reporting this binary's build
    /// identity.
    pub fn new(procfs: ProcFs) -> Self {
        Self::with_build(procfs, BuildInfo::current())
    }

    /// An agent reporting the given build identity.
    pub fn with_build(procfs: ProcFs, build: BuildInfo) -> Self {
        Self::with_host_keys(procfs, build, HostKeyFiles::guest())
    }

    /// An agent reading the host keys from `host_keys`.
    pub fn with_host_keys(procfs: ProcFs, build: BuildInfo, host_keys: HostKeyFiles) -> Self {
        Self {
            inner: Arc::new(AgentInner {
                procfs,
                build,
                host_keys,
                identity: None,
            }),
        }
    }

    /// Lets `POST /identity` act on `guest`. Only an agent serving a guest (vsock or
    /// virtio-serial) is given the real one: in host test mode (`--listen-unix` alone) the
    /// request is refused, so a test never renames or re-addresses the machine it runs on;
    /// with `--identity-root DIR` it acts on a sandbox, the files under `DIR` and nothing
    /// of the running kernel (the fake Firecracker's "guest").
    pub fn with_identity(self, guest: identity::Guest) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| AgentInner {
            procfs: shared.procfs.clone(),
            build: shared.build.clone(),
            host_keys: shared.host_keys.clone(),
            identity: None,
        });
        Self {
            inner: Arc::new(AgentInner {
                identity: Some(guest),
                ..inner
            }),
        }
    }

    /// The `/healthz` answer.
    pub fn health(&self) -> Result<Health, ProcError> {
        let b = &self.inner.build;
        Ok(Health {
            version: b.version.clone(),
            commit: b.commit.clone(),
            build_epoch: b.build_epoch,
            uptime_secs: self.inner.procfs.uptime_secs()?,
            hostname: self.inner.procfs.hostname()?,
        })
    }

    /// The `/ports` answer.
    pub fn ports(&self) -> Result<Ports, ProcError> {
        Ok(Ports {
            listeners: self.inner.procfs.listeners()?,
        })
    }

    /// The `/host-keys` answer (blocking: it may wait for a first boot making them).
    pub fn host_keys(&self) -> Result<HostKeys, HostKeyError> {
        self.inner.host_keys.read()
    }

    async fn respond(
        self,
        req: Request<Incoming>,
        sessions: TaskTracker,
        peer: Arc<str>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_string();
        let resp = match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => self.blocking(|a| a.health()).await,
            (&Method::GET, "/ports") => self.blocking(|a| a.ports()).await,
            (&Method::GET, HOST_KEYS_PATH) => self.blocking(|a| a.host_keys()).await,
            (&Method::GET, EXEC_PATH) => upgrade(req, UPGRADE_EXEC, &sessions, move |io| {
                let procfs = self.inner.procfs.clone();
                Box::pin(async move {
                    if let Err(e) = exec::run_session(io, &peer, procfs).await {
                        tracing::warn!("{}", error_chain(&e));
                    }
                })
            }),
            (&Method::GET, MUX_PATH) => upgrade(req, UPGRADE_MUX, &sessions, move |io| {
                mux::serve(self, io, format!("{peer} mux"))
            }),
            (&Method::POST, FILE_READ_PATH) => file_op(req, files::read_file).await,
            (&Method::POST, FILE_WRITE_PATH) => file_op(req, files::write_file).await,
            (&Method::POST, FILE_LIST_PATH) => file_op(req, files::list_dir).await,
            (&Method::POST, IDENTITY_PATH) => self.identity(req).await,
            (_, FILE_READ_PATH | FILE_WRITE_PATH | FILE_LIST_PATH) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {path}: only POST is allowed", req.method()),
            ),
            (_, "/healthz" | "/ports" | HOST_KEYS_PATH | EXEC_PATH | MUX_PATH) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {path}: only GET is allowed", req.method()),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint: {} {path} (try GET /healthz, GET /ports, GET {HOST_KEYS_PATH} or POST {FILE_READ_PATH})",
                    req.method()
                ),
            ),
        };
        Ok(resp)
    }

    /// `POST /identity` ([`identity::apply`]), answered with the new host keys.
    async fn identity(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let host_keys = self.inner.host_keys.clone();
        let Some(guest) = self.inner.identity.clone() else {
            return error(
                StatusCode::CONFLICT,
                "POST /identity: this agent does not serve a guest (host test mode): refused"
                    .to_string(),
            );
        };
        file_op(req, move |body| {
            identity::apply(&guest, body)?;
            Ok::<HostKeys, identity::IdentityError>(host_keys.read()?)
        })
        .await
    }

    /// Runs a read of the guest (procfs, host keys) off the async threads and renders it.
    async fn blocking<T, E, F>(&self, read: F) -> Response<Full<Bytes>>
    where
        T: Serialize + Send + 'static,
        E: std::error::Error + Send + 'static,
        F: FnOnce(&Agent) -> Result<T, E> + Send + 'static,
    {
        let agent = self.clone();
        match tokio::task::spawn_blocking(move || read(&agent)).await {
            Ok(Ok(value)) => json(StatusCode::OK, &value),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e)),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading /proc failed: {e}"),
            ),
        }
    }
}

/// Answers a file endpoint: reads the JSON body (at most [`MAX_FILE_REQUEST`] bytes), runs
/// `op` on the blocking pool, and renders its answer or its error with the error's status.
async fn file_op<Q, T, E, F>(req: Request<Incoming>, op: F) -> Response<Full<Bytes>>
where
    Q: serde::de::DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    E: std::error::Error + HttpStatus + Send + 'static,
    F: FnOnce(&Q) -> Result<T, E> + Send + 'static,
{
    use http_body_util::BodyExt;
    let path = req.uri().path().to_string();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_FILE_REQUEST)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "POST {path}: cannot read the body (at most {MAX_FILE_REQUEST} bytes): {e}"
                ),
            );
        }
    };
    let parsed: Q = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("POST {path}: the body does not fit the request: {e}"),
            );
        }
    };
    match tokio::task::spawn_blocking(move || op(&parsed)).await {
        Ok(Ok(value)) => json(StatusCode::OK, &value),
        Ok(Err(e)) => error(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error_chain(&e),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("POST {path} failed: {e}"),
        ),
    }
}

/// An error that says which HTTP status answers it.
trait HttpStatus {
    fn status(&self) -> u16;
}

impl HttpStatus for files::FileError {
    fn status(&self) -> u16 {
        files::FileError::status(self)
    }
}

impl HttpStatus for identity::IdentityError {
    fn status(&self) -> u16 {
        identity::IdentityError::status(self)
    }
}

/// The boxed future of an upgraded session.
type Session = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Answers an upgrade request for `protocol`: `101 Switching Protocols`, and once hyper hands
/// the connection over, `session` runs on it as a task of the connection's `sessions`. A
/// request without `Upgrade: protocol` is a 400.
fn upgrade<F>(
    mut req: Request<Incoming>,
    protocol: &'static str,
    sessions: &TaskTracker,
    session: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce(TokioIo<Upgraded>) -> Session + Send + 'static,
{
    let asked = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(protocol));
    if !asked {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "GET {} needs the headers Connection: Upgrade and Upgrade: {protocol}",
                req.uri().path()
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!("upgrade to {protocol} failed: {}", error_chain(&e)),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    resp.headers_mut()
        .insert(header::UPGRADE, header::HeaderValue::from_static(protocol));
    resp
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!(
                "{{\"error\":\"cannot encode answer: {}\"}}",
                e.to_string().replace(['"', '\\'], "'")
            ))));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, &ErrorBody { error: message })
}

/// Serves HTTP/1.1 (keep-alive) on one stream until the peer closes it or it fails; when the
/// stream was upgraded (exec, mux), until the upgraded session ends too, so the serial loop
/// does not reopen the device under a running session.
pub async fn serve_connection<S>(agent: Agent, stream: S, peer: &str) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sessions = TaskTracker::new();
    let svc = {
        let sessions = sessions.clone();
        let peer: Arc<str> = Arc::from(peer);
        service_fn(move |req| agent.clone().respond(req, sessions.clone(), peer.clone()))
    };
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await
        .map_err(|source| ConnectionError {
            peer: peer.to_string(),
            source,
        });
    sessions.close();
    sessions.wait().await;
    served
}

/// Listens on the Unix socket `path`, first removing a stale socket file left there.
/// Anything at `path` that is not a socket is left alone and is an error.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(ServerError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    UnixListener::bind(path).map_err(|source| ServerError::BindUnix {
        path: path.to_path_buf(),
        source,
    })
}

/// Listens on vsock `port` for any CID.
pub fn bind_vsock(port: u32) -> Result<VsockListener, ServerError> {
    VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .map_err(|source| ServerError::BindVsock { port, source })
}

/// Accepts and serves Unix connections forever; connections end when this future is dropped.
pub async fn serve_unix(agent: Agent, listener: UnixListener, name: String) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _addr)) => {
                let agent = agent.clone();
                let peer = name.clone();
                conns.spawn(async move {
                    if let Err(e) = serve_connection(agent, stream, &peer).await {
                        tracing::debug!("{}", error_chain(&e));
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on {name} failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

/// Accepts and serves vsock connections forever; connections end when this future is dropped.
pub async fn serve_vsock(agent: Agent, listener: VsockListener, port: u32) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, addr)) => {
                let agent = agent.clone();
                let peer = format!("vsock {}:{}", addr.cid(), addr.port());
                conns.spawn(async move {
                    if let Err(e) = serve_connection(agent, stream, &peer).await {
                        tracing::debug!("{}", error_chain(&e));
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on vsock port {port} failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

/// Serves the serial device at `path` forever, reopening it `retry` after each disconnect.
pub async fn serve_serial(agent: Agent, path: PathBuf, retry: Duration) {
    let name = format!("serial {}", path.display());
    serve_reopening(agent, || SerialStream::open(&path), &name, retry).await
}

/// Serves one stream at a time, forever: open it with `open`, serve HTTP keep-alive on it until
/// it ends or fails (the host side disconnected), wait `retry`, open again. A failed open is
/// also retried after `retry`; it is logged once until an open succeeds again.
pub async fn serve_reopening<F, S, E>(agent: Agent, mut open: F, name: &str, retry: Duration)
where
    F: FnMut() -> Result<S, E>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: std::error::Error,
{
    let mut open_failing = false;
    loop {
        match open() {
            Ok(stream) => {
                if open_failing {
                    tracing::info!("{name} is open again");
                    open_failing = false;
                }
                match serve_connection(agent.clone(), stream, name).await {
                    Ok(()) => tracing::debug!("{name}: connection ended, reopening"),
                    Err(e) => tracing::debug!("{}; reopening", error_chain(&e)),
                }
            }
            Err(e) => {
                if !open_failing {
                    tracing::warn!("{}; retrying every {retry:?}", error_chain(&e));
                    open_failing = true;
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// Which transports the agent serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenPlan {
    /// Vsock port to listen on. If binding fails while another transport is served, the failure
    /// is logged and the agent goes on without vsock.
    pub vsock_port: Option<u32>,
    /// Unix socket path to listen on (host test mode).
    pub unix: Option<PathBuf>,
    /// Serial device to serve; it must exist at startup.
    pub serial: Option<PathBuf>,
}

/// Where the guest's default mode finds the agent's virtio-serial port, without waiting for
/// udev: the port's udev link ([`GUEST_SERIAL_PATH`](banger_agent_proto::wire::GUEST_SERIAL_PATH)),
/// else the kernel's own node, `/dev/vportNpM`, whose `/sys/class/virtio-ports/vportNpM/name`
/// is the port's name. The kernel adds a port a moment after its driver loads (the host
/// announces it), so when a virtio console device is there
/// (`/sys/bus/virtio/drivers/virtio_console/virtio*`) the lookup waits for the port up to
/// `wait`; without one (Firecracker) it answers at once.
#[derive(Debug, Clone)]
pub struct SerialLookup {
    /// udev's link for the port.
    pub link: PathBuf,
    /// The sysfs root (`/sys`).
    pub sys: PathBuf,
    /// The device root (`/dev`).
    pub dev: PathBuf,
    /// The port's name.
    pub name: String,
    /// How long to wait for the port of a console device that is there.
    pub wait: std::time::Duration,
}

impl SerialLookup {
    /// The port, if this guest has one; see the type's docs.
    pub fn find(&self) -> Option<PathBuf> {
        let deadline = std::time::Instant::now() + self.wait;
        loop {
            if self.link.exists() {
                return Some(self.link.clone());
            }
            if let Some(node) = self.kernel_node() {
                return Some(node);
            }
            if !self.console_device() || std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn kernel_node(&self) -> Option<PathBuf> {
        let ports = std::fs::read_dir(self.sys.join("class/virtio-ports")).ok()?;
        ports.flatten().find_map(|port| {
            let name = std::fs::read_to_string(port.path().join("name")).ok()?;
            let node = self.dev.join(port.file_name());
            (name.trim_end() == self.name && node.exists()).then_some(node)
        })
    }

    fn console_device(&self) -> bool {
        std::fs::read_dir(self.sys.join("bus/virtio/drivers/virtio_console"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("virtio"))
            })
            .unwrap_or(false)
    }
}

impl ListenPlan {
    /// The plan for the command-line flags. With no flag at all (the guest's systemd unit):
    /// vsock on [`AGENT_VSOCK_PORT`] plus the virtio-serial port `serial_lookup` finds. With
    /// any flag: exactly what the flags name.
    pub fn from_flags(
        vsock_port: Option<u32>,
        unix: Option<PathBuf>,
        serial: Option<PathBuf>,
        serial_lookup: &SerialLookup,
    ) -> Self {
        if vsock_port.is_none() && unix.is_none() && serial.is_none() {
            return Self {
                vsock_port: Some(AGENT_VSOCK_PORT),
                unix: None,
                serial: serial_lookup.find(),
            };
        }
        Self {
            vsock_port,
            unix,
            serial,
        }
    }
}

/// Serves `plan` until `shutdown` resolves, then stops every listener and connection and
/// removes the Unix socket file. Errors if a required transport cannot be set up.
pub async fn run(
    agent: Agent,
    plan: &ListenPlan,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut names: Vec<String> = Vec::new();

    if let Some(path) = &plan.serial
        && !path.exists()
    {
        return Err(ServerError::SerialMissing { path: path.clone() });
    }
    let unix = match &plan.unix {
        Some(path) => Some((path.clone(), bind_unix(path)?)),
        None => None,
    };
    let vsock = match plan.vsock_port {
        Some(port) => match bind_vsock(port) {
            Ok(listener) => Some((port, listener)),
            Err(e) if unix.is_some() || plan.serial.is_some() => {
                tracing::warn!("{}; serving on the other transports only", error_chain(&e));
                None
            }
            Err(e) => {
                if let Some((path, _)) = &unix {
                    remove_socket(path);
                }
                return Err(e);
            }
        },
        None => None,
    };

    if let Some((path, listener)) = unix {
        let name = format!("unix {}", path.display());
        tracing::info!("listening on {name}");
        tasks.spawn(serve_unix(agent.clone(), listener, name.clone()));
        names.push(name);
    }
    if let Some((port, listener)) = vsock {
        tracing::info!("listening on vsock port {port}");
        tasks.spawn(serve_vsock(agent.clone(), listener, port));
        names.push(format!("vsock port {port}"));
    }
    if let Some(path) = &plan.serial {
        tracing::info!("serving serial device {}", path.display());
        tasks.spawn(serve_serial(
            agent.clone(),
            path.clone(),
            SERIAL_REOPEN_DELAY,
        ));
        names.push(format!("serial {}", path.display()));
    }
    if tasks.is_empty() {
        return Err(ServerError::NoListeners);
    }

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        // The serve loops never return; only a panic ends one.
        Some(joined) = tasks.join_next() => Err(ServerError::ListenerStopped {
            names: names.join(", "),
            reason: match joined {
                Ok(()) => "it returned".to_string(),
                Err(e) => e.to_string(),
            },
        }),
    };
    tasks.shutdown().await;
    if let Some(path) = &plan.unix {
        remove_socket(path);
    }
    outcome
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove socket {}: {e}", path.display());
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub fn termination_signal() -> Result<impl Future<Output = ()>, ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|source| ServerError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| ServerError::Signal {
        signal: "SIGINT",
        source,
    })?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, exiting"),
            _ = int.recv() => tracing::info!("SIGINT received, exiting"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::client::{self, ClientError};
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const T: Duration = Duration::from_secs(5);

    fn build() -> BuildInfo {
        BuildInfo {
            version: "9.9.9".to_string(),
            commit: "abc1234".to_string(),
            build_epoch: 1_700_000_000,
        }
    }

    /// A procfs tree with one listening TCP socket on 127.0.0.1:8080 owned by pid 777.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::create_dir_all(root.join("sys/kernel")).unwrap();
        std::fs::create_dir_all(root.join("777/fd")).unwrap();
        std::fs::write(root.join("uptime"), "42.50 80.00\n").unwrap();
        std::fs::write(root.join("sys/kernel/hostname"), "testvm\n").unwrap();
        std::fs::write(
            root.join("net/tcp"),
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0000000000000000 100 0 0 10 0\n",
        )
        .unwrap();
        std::fs::write(
            root.join("net/udp"),
            "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n",
        )
        .unwrap();
        std::fs::write(root.join("777/comm"), "node\n").unwrap();
        std::fs::write(root.join("777/cmdline"), b"node\0server.js\0").unwrap();
        std::os::unix::fs::symlink("socket:[5555]", root.join("777/fd/3")).unwrap();
        dir
    }

    fn agent(root: &Path) -> Agent {
        Agent::with_build(ProcFs::new(root), build())
    }

    /// Serves one in-memory connection and returns the client's end.
    fn connected(agent: Agent) -> DuplexStream {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move { serve_connection(agent, theirs, "test").await });
        ours
    }

    async fn raw_exchange(stream: &mut DuplexStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the (small, single-chunk) JSON body is complete.
        loop {
            let n = tokio::time::timeout(T, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if n == 0 || text.ends_with('}') {
                return text.into_owned();
            }
        }
    }

    #[tokio::test]
    async fn host_keys_answers_the_guest_s_public_keys() {
        let dir = fixture();
        let ssh = dir.path().join("etc-ssh");
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(ssh.join("ssh_host_ed25519_key.pub"), "ssh-ed25519 AAAA x\n").unwrap();
        let files = crate::host_keys::HostKeyFiles {
            dir: ssh,
            maker: dir.path().join("no-unit"),
            done: dir.path().join("no-marker"),
            wait: Duration::from_secs(1),
        };
        let agent = Agent::with_host_keys(ProcFs::new(dir.path()), build(), files);
        let keys = client::host_keys(connected(agent), T).await.unwrap();
        assert_eq!(keys.keys, ["ssh-ed25519 AAAA x"]);
    }

    #[tokio::test]
    async fn a_collected_session_feeds_stdin_caps_output_and_stops_at_its_deadline() {
        use banger_agent_proto::client::exec::exec;
        use banger_agent_proto::exec::{ExecRequest, ExitStatus};
        let dir = fixture();
        let sh = |line: &str| ExecRequest::new(["/bin/sh", "-c", line]);
        let session = exec(
            connected(agent(dir.path())),
            sh("cat; printf 0123456789; echo oops >&2; exit 4"),
            T,
        )
        .await
        .unwrap();
        let out = session.collect(b"abc".to_vec(), 8, None).await.unwrap();
        assert_eq!(out.status, Some(ExitStatus::Code(4)));
        assert_eq!(out.stdout.bytes, b"abc01234");
        assert_eq!(out.stdout.total, 13);
        assert!(out.stdout.truncated());
        assert_eq!(out.stderr.bytes, b"oops\n");
        assert!(!out.stderr.truncated());

        let session = exec(
            connected(agent(dir.path())),
            sh("echo started; sleep 30"),
            T,
        )
        .await
        .unwrap();
        let t = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let out = session
            .collect(Vec::new(), 64, Some(deadline))
            .await
            .unwrap();
        assert_eq!(out.status, None, "the deadline passed first");
        assert_eq!(out.stdout.bytes, b"started\n");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn file_endpoints_write_read_and_list_over_the_wire() {
        use banger_agent_proto::files::{EntryKind, ListDir, ReadFile, WriteFile};
        let dir = fixture();
        let work = tempfile::tempdir().unwrap();
        let file = work.path().join("sub/notes.txt");
        let a = || connected(agent(dir.path()));
        let w = client::write_file(
            a(),
            &WriteFile {
                path: file.display().to_string(),
                content: b"hello\n\x00bytes".to_vec(),
                mode: Some(0o640),
                create_parents: true,
            },
            T,
        )
        .await
        .unwrap();
        assert_eq!((w.bytes, w.mode), (12, 0o640));
        let r = client::read_file(
            a(),
            &ReadFile {
                path: file.display().to_string(),
                max_bytes: None,
            },
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.content, b"hello\n\x00bytes");
        let l = client::list_dir(
            a(),
            &ListDir {
                path: work.path().join("sub").display().to_string(),
            },
            T,
        )
        .await
        .unwrap();
        assert_eq!(l.entries.len(), 1);
        assert_eq!(
            (l.entries[0].name.as_str(), l.entries[0].kind),
            ("notes.txt", EntryKind::File)
        );

        // Refusals carry the agent's message and status.
        let err = client::read_file(
            a(),
            &ReadFile {
                path: "notes.txt".into(),
                max_bytes: None,
            },
            T,
        )
        .await
        .unwrap_err();
        match &err {
            ClientError::Status {
                status,
                message,
                path,
            } => {
                assert_eq!(*status, 400);
                assert!(message.contains("is relative"), "{message}");
                assert_eq!(path, "POST /files/read");
            }
            other => panic!("{other}"),
        }
        let err = client::read_file(
            a(),
            &ReadFile {
                path: work.path().join("missing").display().to_string(),
                max_bytes: None,
            },
            T,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ClientError::Status { status: 404, .. }),
            "{err}"
        );
        // A body of the wrong shape is a 400 naming the problem.
        let mut s = a();
        let body = r#"{"path":"/x","colour":1}"#;
        let answer = raw_exchange(
            &mut s,
            &format!(
                "POST /files/list HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("unknown field `colour`"), "{answer}");
        // Only POST.
        let mut s = a();
        let answer = raw_exchange(&mut s, "GET /files/read HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    }

    #[tokio::test]
    async fn healthz_reports_build_and_machine() {
        let dir = fixture();
        let h = client::health(connected(agent(dir.path())), T)
            .await
            .unwrap();
        assert_eq!(
            h,
            Health {
                version: "9.9.9".to_string(),
                commit: "abc1234".to_string(),
                build_epoch: 1_700_000_000,
                uptime_secs: 42,
                hostname: "testvm".to_string(),
            }
        );
    }

    #[tokio::test]
    async fn ports_lists_fixture_listener() {
        let dir = fixture();
        let p = client::ports(connected(agent(dir.path())), T)
            .await
            .unwrap();
        assert_eq!(p.listeners.len(), 1);
        let l = &p.listeners[0];
        assert_eq!(
            (l.address.as_str(), l.port, l.pid),
            ("127.0.0.1", 8080, Some(777))
        );
        assert_eq!(l.process.as_deref(), Some("node"));
        assert_eq!(l.command.as_deref(), Some("node server.js"));
    }

    #[tokio::test]
    async fn identity_is_refused_by_an_agent_that_serves_no_guest() {
        let dir = fixture();
        let req = banger_agent_proto::identity::Identity {
            hostname: "x".into(),
            files: vec![],
            mac: "06:00:00:00:00:01".into(),
            entropy: "00".repeat(32),
            time_unix_ns: 0,
            grow: vec![],
        };
        let err = client::identity(connected(agent(dir.path())), &req, T)
            .await
            .unwrap_err();
        match err {
            client::ClientError::Status {
                status, message, ..
            } => {
                assert_eq!(status, 409);
                assert!(message.contains("host test mode"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_path_is_json_404() {
        let dir = fixture();
        let err = client::get_json::<Health, _>(connected(agent(dir.path())), "/nope", T)
            .await
            .unwrap_err();
        match err {
            ClientError::Status {
                status, message, ..
            } => {
                assert_eq!(status, 404);
                assert!(message.contains("/nope"), "{message}");
            }
            other => panic!("expected 404, got {other}"),
        }
    }

    #[tokio::test]
    async fn procfs_failure_is_json_500() {
        let dir = tempfile::tempdir().unwrap();
        let err = client::ports(connected(agent(dir.path())), T)
            .await
            .unwrap_err();
        match err {
            ClientError::Status {
                status, message, ..
            } => {
                assert_eq!(status, 500);
                assert!(message.contains("net/tcp"), "{message}");
            }
            other => panic!("expected 500, got {other}"),
        }
    }

    #[tokio::test]
    async fn wrong_method_and_keep_alive_on_one_stream() {
        let dir = fixture();
        let mut s = connected(agent(dir.path()));
        let first = raw_exchange(
            &mut s,
            "POST /ports HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(first.starts_with("HTTP/1.1 405"), "{first}");
        assert!(
            first.contains(r#"{"error":"POST /ports: only GET is allowed"}"#),
            "{first}"
        );
        let second = raw_exchange(&mut s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        assert!(second.contains(r#""hostname":"testvm""#), "{second}");
    }

    #[tokio::test]
    async fn reopen_loop_serves_each_stream_and_retries_failed_opens() {
        let dir = fixture();
        let (client1, server1) = tokio::io::duplex(64 * 1024);
        let (client2, server2) = tokio::io::duplex(64 * 1024);
        let queue = Arc::new(Mutex::new(VecDeque::from([server1, server2])));
        let opens = Arc::new(AtomicUsize::new(0));
        let factory = {
            let queue = queue.clone();
            let opens = opens.clone();
            move || {
                opens.fetch_add(1, Ordering::SeqCst);
                queue
                    .lock()
                    .unwrap()
                    .pop_front()
                    .ok_or_else(|| io::Error::other("serial device not there"))
            }
        };
        let a = agent(dir.path());
        let task = tokio::spawn(async move {
            serve_reopening(a, factory, "fake serial", Duration::from_millis(10)).await
        });

        // The first stream is served, and ends when the client asks to close it.
        let h = client::health(client1, T).await.unwrap();
        assert_eq!(h.hostname, "testvm");
        // The loop reopened and serves the second stream.
        let p = client::ports(client2, T).await.unwrap();
        assert_eq!(p.listeners[0].port, 8080);
        // Once the factory fails, the loop keeps retrying.
        let deadline = tokio::time::Instant::now() + T;
        while opens.load(Ordering::SeqCst) < 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "loop stopped reopening"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!task.is_finished());
        task.abort();
    }

    fn lookup(root: &Path, wait_ms: u64) -> SerialLookup {
        SerialLookup {
            link: root.join("dev/virtio-ports/banger.agent"),
            sys: root.join("sys"),
            dev: root.join("dev"),
            name: "banger.agent".into(),
            wait: std::time::Duration::from_millis(wait_ms),
        }
    }

    #[test]
    fn plan_defaults_to_vsock_and_the_serial_port_there_is() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let l = lookup(root, 0);
        assert_eq!(
            ListenPlan::from_flags(None, None, None, &l),
            ListenPlan {
                vsock_port: Some(AGENT_VSOCK_PORT),
                unix: None,
                serial: None
            }
        );
        // The kernel's node, found by its sysfs name before udev made the link.
        std::fs::create_dir_all(root.join("sys/class/virtio-ports/vport1p1")).unwrap();
        std::fs::write(root.join("sys/class/virtio-ports/vport1p1/name"), "other\n").unwrap();
        std::fs::create_dir_all(root.join("sys/class/virtio-ports/vport1p2")).unwrap();
        std::fs::write(
            root.join("sys/class/virtio-ports/vport1p2/name"),
            "banger.agent\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/vport1p2"), "").unwrap();
        assert_eq!(
            ListenPlan::from_flags(None, None, None, &l).serial,
            Some(root.join("dev/vport1p2"))
        );
        // udev's link, once there, is preferred.
        std::fs::create_dir_all(root.join("dev/virtio-ports")).unwrap();
        std::fs::write(&l.link, "").unwrap();
        assert_eq!(
            ListenPlan::from_flags(None, None, None, &l).serial,
            Some(l.link.clone())
        );
        // Any flag means exactly what the flags say.
        let sock = root.join("a.sock");
        assert_eq!(
            ListenPlan::from_flags(None, Some(sock.clone()), None, &l),
            ListenPlan {
                vsock_port: None,
                unix: Some(sock),
                serial: None
            }
        );
    }

    #[test]
    fn a_console_device_whose_port_comes_late_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("sys/bus/virtio/drivers/virtio_console/virtio2"))
            .unwrap();
        // Without the port, the wait ends at its limit.
        let t = std::time::Instant::now();
        assert_eq!(lookup(&root, 200).find(), None);
        assert!(t.elapsed() >= std::time::Duration::from_millis(200));
        // The host announces the port a moment later: found, well before the limit.
        let late = root.clone();
        let announcer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            std::fs::create_dir_all(late.join("sys/class/virtio-ports/vport2p1")).unwrap();
            std::fs::create_dir_all(late.join("dev")).unwrap();
            std::fs::write(late.join("dev/vport2p1"), "").unwrap();
            std::fs::write(
                late.join("sys/class/virtio-ports/vport2p1/name"),
                "banger.agent\n",
            )
            .unwrap();
        });
        let t = std::time::Instant::now();
        assert_eq!(
            lookup(&root, 10_000).find(),
            Some(root.join("dev/vport2p1"))
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        announcer.join().unwrap();
    }

    #[tokio::test]
    async fn bind_unix_replaces_stale_socket_but_not_files() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let _listener = bind_unix(&sock).unwrap();

        let file = dir.path().join("precious");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind_unix(&file).unwrap_err();
        assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn run_serves_unix_until_shutdown_then_removes_socket() {
        let dir = fixture();
        let sockdir = tempfile::tempdir().unwrap();
        let sock = sockdir.path().join("agent.sock");
        let plan = ListenPlan {
            vsock_port: None,
            unix: Some(sock.clone()),
            serial: None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let a = agent(dir.path());
        let server = tokio::spawn(async move {
            run(a, &plan, async {
                let _ = stop_rx.await;
            })
            .await
        });
        let deadline = tokio::time::Instant::now() + T;
        let stream = loop {
            match client::connect_unix(&sock).await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        assert_eq!(client::health(stream, T).await.unwrap().uptime_secs, 42);
        stop_tx.send(()).unwrap();
        tokio::time::timeout(T, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn run_rejects_missing_serial_and_empty_plan() {
        let dir = fixture();
        let plan = ListenPlan {
            vsock_port: None,
            unix: None,
            serial: Some(dir.path().join("no-such-port")),
        };
        let err = run(agent(dir.path()), &plan, std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no-such-port"), "{err}");
        let empty = ListenPlan {
            vsock_port: None,
            unix: None,
            serial: None,
        };
        let err = run(agent(dir.path()), &empty, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(err, ServerError::NoListeners), "{err}");
    }
}
