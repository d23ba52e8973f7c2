//! Hybrid vsock: the host side of Firecracker's virtio-vsock device, forwarding
//! to a host-mode `banger-agent` instead of a guest.
//!
//! Firecracker listens on the device's `uds_path`; a host process connects,
//! writes `CONNECT <port>\n`, and if something in the guest listens on that
//! vsock port Firecracker answers `OK <host port>\n` and relays bytes both
//! ways; otherwise it closes the connection. The fake does the same, with the
//! "guest" being a real `banger-agent` it starts in host test mode
//! (`banger-agent --listen-unix <uds_path>.agent.sock`): only the agent's port
//! ([`AGENT_VSOCK_PORT`](banger_agent_proto::wire::AGENT_VSOCK_PORT)) is forwarded, to that
//! socket.
//!
//! # A private `/root` per fake VM
//!
//! The host-mode agent runs exec sessions on the host, but banger writes to the guest's
//! `/root` (workspaces at `/root/repo`, `git config --global`). So the fake starts the agent
//! in a mount namespace of its own ([`Agent::spawn`] with a guest root) in which `/root` is a
//! bind mount of a per-VM directory next to the vsock socket, `<uds_path>.root/` (made 0700,
//! removed when the agent stops). Not being root, the fake makes a user namespace too,
//! mapping the caller to uid and gid 0, so the agent is "root" as in a guest. In that
//! namespace the agent has `/root/.local/bin` first on its `PATH` (where a
//! test may put commands the guest would have, like `mise`). Like a guest's init, the fake
//! gives the agent no environment but `PATH` (and `BANGER_AGENT_LOG`): the agent sets its
//! commands' `HOME` and the like itself, and nothing of the host's session (its
//! `GIT_CONFIG_GLOBAL`, say) reaches them. Where namespaces cannot be
//! made (a kernel or sandbox refusing `unshare`), the agent runs as before, in the host's
//! `/root`, and the console says so ([`NO_PRIVATE_ROOT`]): tests that need the private root
//! check for it and skip.
//!
//! # Identity in a sandbox
//!
//! A VM restored from a snapshot gets its identity from the agent (`POST /identity`). The
//! fake's agent must not rename or re-address the host, so the fake starts it with
//! `--identity-root <uds_path>.identity/` (a per-VM directory, made 0700, removed when the
//! agent stops): the identity's files (`/etc/hostname`, `/etc/machine-id`, ...) land under
//! that directory as under a guest's `/`, and the steps that act on the running kernel
//! (clock, entropy, hostname, network, sshd, file system growth) are skipped. This is the
//! fake's behaviour, not a guest's; a real agent applies all of it.
//!
//! While the microVM is paused the muxer neither accepts nor relays (the
//! connection waits, as with a paused Firecracker); a snapshot resets the
//! device, closing open connections. Guest-initiated connections
//! (`<uds_path>_<port>`) are not emulated: the agent only serves.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use banger_core::probe::{self, SearchPath};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// First host-side port Firecracker assigns to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

/// Longest `CONNECT` line Firecracker reads before giving up on it.
const MAX_CONNECT_LINE: usize = 32;

/// Name of the agent binary looked up next to the fake and on `PATH`.
pub const AGENT_BIN_NAME: &str = "banger-agent";

/// Parses a host-initiated handshake line like Firecracker's muxer: two
/// whitespace-separated words, `CONNECT` and a decimal `u32` port.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(port), None) => port.parse().ok(),
        _ => None,
    }
}

/// The Unix socket the host-mode agent serves on, next to `uds_path`.
pub fn agent_socket_path(uds_path: &Path) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(".agent.sock");
    PathBuf::from(name)
}

/// The per-VM directory mounted at the agent's `/root`, next to `uds_path`.
pub fn guest_root_path(uds_path: &Path) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(".root");
    PathBuf::from(name)
}

/// The per-VM directory the agent's `POST /identity` writes into, next to `uds_path`.
pub fn identity_root_path(uds_path: &Path) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(".identity");
    PathBuf::from(name)
}

/// The start of the console line saying the agent runs without a private `/root`.
pub const NO_PRIVATE_ROOT: &str = "banger-fake-firecracker: no private /root for the agent";

/// Why no agent binary was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentLookupError {
    /// `BANGER_AGENT_BIN` names a file that is not there.
    #[error("BANGER_AGENT_BIN={0} is not an executable file")]
    ExplicitMissing(PathBuf),
    /// Nowhere else had it.
    #[error("no {AGENT_BIN_NAME} next to {exe_dir} nor on PATH")]
    NotFound {
        /// The fake's own directory, as searched.
        exe_dir: String,
    },
}

/// Finds the agent: `explicit` (from `BANGER_AGENT_BIN`) if given, else next
/// to the fake's executable, else on `path_var` (`PATH`), with banger's host probe.
pub fn locate_agent(
    explicit: Option<&Path>,
    exe_dir: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, AgentLookupError> {
    if let Some(bin) = explicit {
        return match probe::unusable(bin) {
            None => Ok(bin.to_owned()),
            Some(_) => Err(AgentLookupError::ExplicitMissing(bin.to_owned())),
        };
    }
    probe::find_companion(AGENT_BIN_NAME, exe_dir, &SearchPath::from_var(path_var)).ok_or_else(
        || AgentLookupError::NotFound {
            exe_dir: exe_dir.map_or_else(|| "(unknown)".to_owned(), |d| d.display().to_string()),
        },
    )
}

/// Why the agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AgentSpawnError {
    /// The stale socket path could not be cleared.
    #[error("cannot remove stale agent socket {path}")]
    StaleSocket {
        /// The socket path.
        path: PathBuf,
        /// The removal error.
        source: io::Error,
    },
    /// The identity sandbox could not be made.
    #[error("cannot make the identity root {path}")]
    IdentityRoot {
        /// The directory.
        path: PathBuf,
        /// The creation error.
        source: io::Error,
    },
    /// The process did not start.
    #[error("cannot run {bin}")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The spawn error.
        source: io::Error,
    },
}

/// A running host-mode agent.
#[derive(Debug)]
pub struct Agent {
    child: tokio::process::Child,
    socket: PathBuf,
    /// The private `/root` directory, removed on stop.
    root: Option<PathBuf>,
    /// The identity sandbox, removed on stop.
    identity: Option<PathBuf>,
}

impl Agent {
    /// Starts `bin --listen-unix <socket>`. The child gets `PR_SET_PDEATHSIG`
    /// so it dies with the fake even if the fake is SIGKILLed; it must be
    /// called from a thread that lives as long as the process (the fake runs a
    /// current-thread runtime on its main thread), since the death signal is
    /// tied to the spawning thread.
    ///
    /// With `guest_root`, the agent runs in a mount namespace (and a user namespace when the
    /// fake is not root) where that directory, made 0700 if missing, is `/root` (see the
    /// module docs). When the namespace cannot be made, the agent is started without it and
    /// the second value says why. With `identity_root`, made 0700 if missing, the agent
    /// accepts `POST /identity` in that sandbox (`--identity-root`, see the module docs).
    pub fn spawn(
        bin: &Path,
        socket: &Path,
        guest_root: Option<&Path>,
        identity_root: Option<&Path>,
    ) -> Result<(Self, Option<String>), AgentSpawnError> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AgentSpawnError::StaleSocket {
                    path: socket.to_owned(),
                    source,
                });
            }
        }
        if let Some(dir) = identity_root {
            make_private_dir(dir).map_err(|source| AgentSpawnError::IdentityRoot {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut unprivate = None;
        if let Some(root) = guest_root {
            match private_root(root) {
                Ok(ns) => match Self::start(bin, socket, Some((ns, root)), identity_root) {
                    Ok(agent) => return Ok((agent, None)),
                    Err(AgentSpawnError::Spawn { source, .. }) => {
                        unprivate = Some(format!("cannot make its namespace: {source}"));
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => unprivate = Some(format!("cannot make {}: {e}", root.display())),
            }
        }
        Ok((Self::start(bin, socket, None, identity_root)?, unprivate))
    }

    fn start(
        bin: &Path,
        socket: &Path,
        namespace: Option<(Namespace, &Path)>,
        identity_root: Option<&Path>,
    ) -> Result<Self, AgentSpawnError> {
        let mut command = tokio::process::Command::new(bin);
        command.arg("--listen-unix").arg(socket);
        if let Some(dir) = identity_root {
            command.arg("--identity-root").arg(dir);
        }
        command.stdin(Stdio::null()).kill_on_drop(true);
        // The environment an init gives a guest's agent: PATH and nothing of this host's
        // session (a host GIT_CONFIG_GLOBAL, say, would send a guest's `git config --global`
        // to the host's file), plus the agent's own log level when set.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut guest_path = std::ffi::OsString::new();
        if namespace.is_some() {
            guest_path.push("/root/.local/bin:");
        }
        guest_path.push(path);
        command.env_clear().env("PATH", guest_path);
        if let Some(level) = std::env::var_os("BANGER_AGENT_LOG") {
            command.env("BANGER_AGENT_LOG", level);
        }
        // SAFETY: `getpid` runs in the parent; the closure runs in the child
        // between fork and exec and calls only `prctl` and `getppid`, which are
        // async-signal-safe and touch no memory shared with the parent.
        let parent = unsafe { libc::getpid() };
        let (ns, root) = match namespace {
            Some((ns, root)) => (Some(ns), Some(root.to_owned())),
            None => (None, None),
        };
        // SAFETY: see above; the closure allocates nothing and takes no locks:
        // `Namespace::enter` only makes system calls (unshare, open, write, close,
        // mount) on C strings and buffers prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited before the agent started"));
                }
                if let Some(ns) = &ns {
                    ns.enter()?;
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| AgentSpawnError::Spawn {
            bin: bin.to_owned(),
            source,
        })?;
        Ok(Self {
            child,
            socket: socket.to_owned(),
            root,
            identity: identity_root.map(Path::to_owned),
        })
    }

    /// The agent's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs; removes the socket.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: `kill` with a pid we spawned and have not reaped yet (the
            // `Child` still owns it), so it cannot name another process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        for dir in [&self.root, &self.identity].into_iter().flatten() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What the agent's child does between fork and exec to get its private `/root`, prepared
/// before the fork so the child only makes system calls.
#[derive(Debug)]
struct Namespace {
    /// The per-VM directory, as a C string.
    source: std::ffi::CString,
    /// `Some((uid_map, gid_map))` when a user namespace is needed (not root).
    user: Option<(Vec<u8>, Vec<u8>)>,
}

/// Makes the directory `dir` (0700) unless it exists.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `root` (0700) and prepares the namespace that mounts it at `/root`.
fn private_root(root: &Path) -> io::Result<Namespace> {
    use std::os::unix::ffi::OsStrExt;
    make_private_dir(root)?;
    let source = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("the guest root path holds a NUL byte"))?;
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let user = (uid != 0).then(|| {
        (
            format!("0 {uid} 1\n").into_bytes(),
            format!("0 {gid} 1\n").into_bytes(),
        )
    });
    Ok(Namespace { source, user })
}

impl Namespace {
    /// In the child: a new mount namespace (and user namespace), private propagation, and
    /// the per-VM directory bound at `/root`.
    ///
    /// # Safety
    ///
    /// Called between fork and exec: it only makes async-signal-safe system calls on
    /// memory prepared before the fork.
    unsafe fn enter(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let flags = match self.user {
            Some(_) => libc::CLONE_NEWNS | libc::CLONE_NEWUSER,
            None => libc::CLONE_NEWNS,
        };
        // SAFETY: unshare takes flags only.
        check(unsafe { libc::unshare(flags) })?;
        if let Some((uid_map, gid_map)) = &self.user {
            // SAFETY: the paths are NUL-terminated literals and the buffers live in `self`.
            unsafe {
                write_proc(c"/proc/self/setgroups", b"deny")?;
                write_proc(c"/proc/self/uid_map", uid_map)?;
                write_proc(c"/proc/self/gid_map", gid_map)?;
            }
        }
        // SAFETY: mount with NUL-terminated strings that outlive the calls and null
        // pointers where the kernel takes none.
        unsafe {
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.source.as_ptr(),
                c"/root".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
        }
        Ok(())
    }
}

/// Writes `bytes` to a `/proc` file in one `write`, between fork and exec.
///
/// # Safety
///
/// Makes only open, write and close calls on the given memory.
unsafe fn write_proc(path: &std::ffi::CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writes `bytes.len()` bytes from a live buffer to the fd opened above.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the fd opened above, once.
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(err);
    }
    Ok(())
}

/// Relays host-initiated vsock connections to Unix sockets standing in for
/// guest ports.
#[derive(Debug)]
pub struct Muxer {
    listener: UnixListener,
    forwards: Arc<BTreeMap<u32, PathBuf>>,
    running: watch::Receiver<bool>,
    reset: watch::Receiver<u64>,
    next_port: Arc<AtomicU32>,
}

impl Muxer {
    /// A muxer on `listener`, forwarding each port in `forwards` to its socket.
    /// `running` gates all traffic (false while paused); any change of `reset`
    /// closes the connections open at that moment.
    pub fn new(
        listener: UnixListener,
        forwards: BTreeMap<u32, PathBuf>,
        running: watch::Receiver<bool>,
        reset: watch::Receiver<u64>,
    ) -> Self {
        Self {
            listener,
            forwards: Arc::new(forwards),
            running,
            reset,
            next_port: Arc::new(AtomicU32::new(FIRST_HOST_PORT)),
        }
    }

    /// Accepts and serves connections until the listener fails.
    pub async fn run(mut self) -> io::Result<()> {
        loop {
            wait_running(&mut self.running).await;
            let (stream, _) = self.listener.accept().await?;
            let forwards = Arc::clone(&self.forwards);
            let running = self.running.clone();
            let reset = self.reset.clone();
            let next_port = Arc::clone(&self.next_port);
            tokio::spawn(async move {
                let _ = serve(stream, forwards, running, reset, next_port).await;
            });
        }
    }
}

async fn wait_running(running: &mut watch::Receiver<bool>) {
    // A closed channel means the VM is gone; treat it as running so tasks end
    // through their streams instead of hanging here.
    let _ = running.wait_for(|r| *r).await;
}

/// Reads the handshake line one byte at a time, so bytes after it stay in the
/// stream for the guest side.
async fn read_connect_line(stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(MAX_CONNECT_LINE);
    loop {
        let byte = match stream.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        if byte == b'\n' {
            return Ok(Some(line));
        }
        line.push(byte);
        if line.len() >= MAX_CONNECT_LINE {
            return Ok(None);
        }
    }
}

async fn serve(
    mut stream: UnixStream,
    forwards: Arc<BTreeMap<u32, PathBuf>>,
    mut running: watch::Receiver<bool>,
    mut reset: watch::Receiver<u64>,
    next_port: Arc<AtomicU32>,
) -> io::Result<()> {
    reset.mark_unchanged();
    let Some(line) = read_connect_line(&mut stream).await? else {
        return Ok(());
    };
    let Some(port) = parse_connect(&line) else {
        // Malformed handshake: Firecracker drops the connection.
        return Ok(());
    };
    let Some(target) = forwards.get(&port) else {
        // Nothing listens on that port in the guest.
        return Ok(());
    };
    wait_running(&mut running).await;
    let Ok(guest) = UnixStream::connect(target).await else {
        // The "guest" is not listening (yet): a reset, as from a real guest.
        return Ok(());
    };
    let host_port = next_port.fetch_add(1, Ordering::Relaxed);
    stream
        .write_all(format!("OK {host_port}\n").as_bytes())
        .await?;
    let (host_read, host_write) = stream.into_split();
    let (guest_read, guest_write) = guest.into_split();
    let relay = async {
        let _ = tokio::join!(
            pump(host_read, guest_write, running.clone()),
            pump(guest_read, host_write, running.clone()),
        );
    };
    tokio::select! {
        () = relay => {}
        _ = reset.changed() => {}
    }
    Ok(())
}

async fn pump<R, W>(mut from: R, mut to: W, mut running: watch::Receiver<bool>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        wait_running(&mut running).await;
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use banger_agent_proto::wire::AGENT_VSOCK_PORT;

    use super::*;

    #[test]
    fn connect_lines_parse_like_firecracker() {
        assert_eq!(parse_connect(b"CONNECT 10789"), Some(10789));
        assert_eq!(parse_connect(b"CONNECT   52 "), Some(52));
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT 52 extra"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"\xff"), None);
    }

    #[test]
    fn agent_socket_sits_next_to_the_vsock_socket() {
        assert_eq!(
            agent_socket_path(Path::new("/run/vm/v.sock")),
            PathBuf::from("/run/vm/v.sock.agent.sock")
        );
    }

    fn make_exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn locate_agent_prefers_explicit_then_beside_then_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let beside = dir.path().join("bin");
        let on_path = dir.path().join("path");
        std::fs::create_dir_all(&beside).expect("mkdir");
        std::fs::create_dir_all(&on_path).expect("mkdir");
        let path_var = std::env::join_paths([&on_path]).expect("join");

        let missing = dir.path().join("nope");
        assert_eq!(
            locate_agent(Some(&missing), Some(&beside), Some(&path_var)),
            Err(AgentLookupError::ExplicitMissing(missing.clone()))
        );
        assert!(matches!(
            locate_agent(None, Some(&beside), Some(&path_var)),
            Err(AgentLookupError::NotFound { .. })
        ));
        make_exe(&on_path.join(AGENT_BIN_NAME));
        assert_eq!(
            locate_agent(None, Some(&beside), Some(&path_var)),
            Ok(on_path.join(AGENT_BIN_NAME))
        );
        make_exe(&beside.join(AGENT_BIN_NAME));
        assert_eq!(
            locate_agent(None, Some(&beside), Some(&path_var)),
            Ok(beside.join(AGENT_BIN_NAME))
        );
        let explicit = dir.path().join("custom-agent");
        make_exe(&explicit);
        assert_eq!(
            locate_agent(Some(&explicit), Some(&beside), Some(&path_var)),
            Ok(explicit)
        );
    }

    struct Setup {
        _dir: tempfile::TempDir,
        uds: PathBuf,
        running: watch::Sender<bool>,
        reset: watch::Sender<u64>,
    }

    /// A muxer forwarding the agent port to an echo server standing in for the agent.
    async fn setup(running: bool) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let agent = dir.path().join("agent.sock");
        let echo = UnixListener::bind(&agent).expect("bind echo");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let (running_tx, running_rx) = watch::channel(running);
        let (reset_tx, reset_rx) = watch::channel(0);
        let listener = UnixListener::bind(&uds).expect("bind uds");
        let muxer = Muxer::new(
            listener,
            BTreeMap::from([(AGENT_VSOCK_PORT, agent)]),
            running_rx,
            reset_rx,
        );
        tokio::spawn(muxer.run());
        Setup {
            _dir: dir,
            uds,
            running: running_tx,
            reset: reset_tx,
        }
    }

    async fn read_line(stream: &mut UnixStream) -> String {
        let mut out = Vec::new();
        loop {
            match stream.read_u8().await {
                Ok(b'\n') | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(b) => out.push(b),
            }
        }
    }

    async fn closed(stream: &mut UnixStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn agent_port_is_forwarded_with_ok_and_relayed_both_ways() {
        let s = setup(true).await;
        let mut c = UnixStream::connect(&s.uds).await.expect("connect");
        c.write_all(b"CONNECT 10789\nhello").await.expect("write");
        assert_eq!(read_line(&mut c).await, format!("OK {FIRST_HOST_PORT}"));
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.expect("echo");
        assert_eq!(
            &buf, b"hello",
            "bytes after the handshake reach the guest side"
        );

        let mut c2 = UnixStream::connect(&s.uds).await.expect("connect");
        c2.write_all(b"CONNECT 10789\n").await.expect("write");
        assert_eq!(
            read_line(&mut c2).await,
            format!("OK {}", FIRST_HOST_PORT + 1)
        );
    }

    #[tokio::test]
    async fn other_ports_and_bad_handshakes_are_closed() {
        let s = setup(true).await;
        for hello in [
            &b"CONNECT 52\n"[..],
            b"HELLO\n",
            b"CONNECT x\n",
            b"CONNECT 10789 10789\n",
        ] {
            let mut c = UnixStream::connect(&s.uds).await.expect("connect");
            c.write_all(hello).await.expect("write");
            assert!(
                closed(&mut c).await,
                "{:?} must be closed without OK",
                String::from_utf8_lossy(hello)
            );
        }
        let mut c = UnixStream::connect(&s.uds).await.expect("connect");
        c.write_all(&[b'A'; 64]).await.expect("write");
        assert!(closed(&mut c).await, "overlong line");
    }

    #[tokio::test]
    async fn paused_vm_holds_connections_until_resumed() {
        let s = setup(false).await;
        let mut c = UnixStream::connect(&s.uds).await.expect("connect");
        c.write_all(b"CONNECT 10789\n").await.expect("write");
        let mut buf = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf))
                .await
                .is_err(),
            "no answer while paused"
        );
        s.running.send(true).expect("resume");
        assert_eq!(read_line(&mut c).await, format!("OK {FIRST_HOST_PORT}"));
    }

    #[tokio::test]
    async fn reset_closes_open_connections() {
        let s = setup(true).await;
        let mut c = UnixStream::connect(&s.uds).await.expect("connect");
        c.write_all(b"CONNECT 10789\n").await.expect("write");
        assert!(read_line(&mut c).await.starts_with("OK "));
        s.reset.send_modify(|g| *g += 1);
        assert!(closed(&mut c).await, "reset drops the relay");
    }

    #[tokio::test]
    async fn missing_agent_socket_closes_without_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let (_run_tx, run_rx) = watch::channel(true);
        let (_reset_tx, reset_rx) = watch::channel(0);
        let muxer = Muxer::new(
            UnixListener::bind(&uds).expect("bind"),
            BTreeMap::from([(AGENT_VSOCK_PORT, dir.path().join("absent.sock"))]),
            run_rx,
            reset_rx,
        );
        tokio::spawn(muxer.run());
        let mut c = UnixStream::connect(&uds).await.expect("connect");
        c.write_all(b"CONNECT 10789\n").await.expect("write");
        assert!(closed(&mut c).await);
    }

    #[tokio::test]
    async fn agent_spawn_and_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("banger-agent");
        // A stand-in agent that records its arguments and waits to be stopped.
        std::fs::write(
            &script,
            // Written aside and renamed, so the test never reads a half-written file.
            "#!/bin/sh\necho \"$@\" > \"$0.args.tmp\" && mv \"$0.args.tmp\" \"$0.args\"\nexec sleep 30\n",
        )
        .expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let socket = dir.path().join("v.sock.agent.sock");
        std::fs::write(&socket, "stale").expect("stale socket file");
        let identity = identity_root_path(&dir.path().join("v.sock"));
        let (agent, _) = Agent::spawn(&script, &socket, None, Some(&identity)).expect("spawn");
        let meta = std::fs::metadata(&identity).expect("identity root made");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert!(!socket.exists(), "stale socket removed before start");
        let args_file = dir.path().join("banger-agent.args");
        for _ in 0..100 {
            if args_file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let args = std::fs::read_to_string(&args_file).expect("agent ran");
        assert_eq!(
            args.trim(),
            format!(
                "--listen-unix {} --identity-root {}",
                socket.display(),
                identity.display()
            )
        );
        let started = std::time::Instant::now();
        agent.stop(Duration::from_secs(2)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!identity.exists(), "the identity root goes with the agent");
    }

    /// Two agents with a private root each write `/root/NAME`: each sees only its own, the
    /// files land in the per-VM directories, and the host's `/root` never gets one.
    #[tokio::test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    async fn each_agent_gets_a_private_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("banger-agent");
        let name = format!("banger-fake-root-probe-{}", std::process::id());
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$2\" > /root/{name}\nls /root > /root/listing\n\
                 echo \"$HOME\" > /root/home\ntouch /root/done\nexec sleep 30\n"
            ),
        )
        .expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut agents = Vec::new();
        for vm in ["a", "b"] {
            let uds = dir.path().join(format!("{vm}.vsock"));
            let root = guest_root_path(&uds);
            let (agent, unprivate) =
                Agent::spawn(&script, &agent_socket_path(&uds), Some(&root), None).expect("spawn");
            if let Some(why) = unprivate {
                agent.stop(Duration::from_secs(2)).await;
                eprintln!("skipped: namespaces unavailable here ({why})");
                return;
            }
            agents.push((agent, root, uds));
        }
        for (_, root, uds) in &agents {
            for _ in 0..200 {
                if root.join("done").exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let meta = std::fs::metadata(root).expect("root made");
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
            let mine = std::fs::read_to_string(root.join(&name)).expect("written");
            assert_eq!(mine.trim(), agent_socket_path(uds).display().to_string());
            let listing = std::fs::read_to_string(root.join("listing")).unwrap();
            assert_eq!(listing, format!("{name}\nlisting\n"), "only its own files");
            // As an init starts a guest's agent: no HOME of the host's (the agent sets its
            // commands' own).
            assert_eq!(std::fs::read_to_string(root.join("home")).unwrap(), "\n");
        }
        assert!(
            !Path::new("/root").join(&name).exists(),
            "the host's /root was written"
        );
        for (agent, root, _) in agents {
            agent.stop(Duration::from_secs(2)).await;
            assert!(!root.exists(), "the private root goes with the agent");
        }
    }
}
