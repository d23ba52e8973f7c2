//! What both backends share, with their own steps as the hooks of [`Backend`]: the start
//! template ([`start`]) and the search for a live VMM ([`find_live`]). A start goes:
//!
//! 1. check the spec (what [`Vmm::validate`] checks) and plan the start
//!    ([`Backend::plan`]);
//! 2. create the run directory (mode 0700); refuse if a VMM already answers on the control
//!    socket ([`Backend::probe`]), otherwise remove the stale sockets there;
//! 3. open the logs (appending) and spawn the VMM detached ([`process::spawn_detached`]) with
//!    the backend's arguments ([`Backend::args`]) in its working directory
//!    ([`Backend::cwd`]), stdout to the console log, stderr to the VMM log;
//! 4. wait until the control socket answers ([`Backend::ready`]), noticing an early exit
//!    (the error quotes what the VMM wrote);
//! 5. configure and boot the guest ([`Backend::configure`]; QEMU has nothing left to do).
//!
//! Any failure after the spawn, and a start future dropped half-way, kills the VMM's process
//! group and removes its sockets ([`StartGuard`]).

use std::ffi::OsString;
use std::fmt;
use std::fs::DirBuilder;
use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::chain;
use crate::process::logs::{TAIL_BYTES, TAIL_LINES};
use crate::process::{
    self, ChildExit, KILL_WAIT, REAPER_STACK, Signal, Spawned, cleanup_sockets, signal_group, tail,
    wait_exit, wait_exit_blocking,
};
use crate::{Running, StartMode, VmSpec, Vmm, VmmError};

/// A backend's own steps in [`start`].
pub(crate) trait Backend: Vmm {
    /// What [`plan`](Backend::plan) worked out for the spawn and the configuration.
    type Plan: Send + Sync;
    /// Why a probe of the control socket failed (a readiness probe's is quoted by
    /// [`VmmError::NotReady`]).
    type ProbeError: std::error::Error + Send + 'static;

    /// The binary it runs, and what it adds to the daemon's environment.
    fn bin(&self) -> &Path;
    fn env(&self) -> &[(OsString, OsString)];
    /// How long to wait for the control socket after the spawn, and the pause between two
    /// probes.
    fn ready_wait(&self) -> (Duration, Duration);

    /// Checks `spec` (what [`Vmm::validate`] checks) and plans the start (QEMU probes the
    /// host's accelerator here).
    /// in `mode`.
    fn plan(&self, spec: &VmSpec, mode: &StartMode) -> Result<Self::Plan, VmmError>;
    /// An argument of the VMM's command line that names its control socket: what a
    /// `/proc/*/cmdline` scan looks for when the socket's peer is unknown.
    fn control_arg(&self, run_dir: &Path) -> OsString;
    /// Asks whether a VMM answers on `socket` (before the spawn); its pid when the socket's
    /// peer credentials give one.
    fn probe(
        &self,
        socket: &Path,
    ) -> impl Future<Output = Result<Option<u32>, Self::ProbeError>> + Send;
    /// Whether a failed probe found nothing listening (a stale socket, or none), rather than
    /// something that accepts connections but does not answer.
    fn is_connect(error: &Self::ProbeError) -> bool;
    /// Asks the VMM on `socket` which VM it runs (`None` when it does not say) and its pid
    /// (the socket's peer credentials), for [`find_live`].
    fn query_vm(
        &self,
        socket: &Path,
    ) -> impl Future<Output = Result<(Option<String>, Option<u32>), Self::ProbeError>> + Send;
    /// The VMM's arguments (without the program).
    fn args(&self, spec: &VmSpec, plan: &Self::Plan, control_socket: &Path) -> Vec<OsString>;
    /// The VMM's working directory: `None` keeps the daemon's.
    fn cwd(&self, plan: &Self::Plan) -> Option<PathBuf> {
        let _ = plan;
        None
    }
    /// One readiness probe of the freshly spawned VMM's control socket.
    fn ready(&self, socket: &Path) -> impl Future<Output = Result<(), Self::ProbeError>> + Send;
    /// Configures and boots the guest once the control socket answers.
    fn configure(
        &self,
        launch: &Launch<'_>,
        plan: &Self::Plan,
    ) -> impl Future<Output = Result<(), VmmError>> + Send;
}

/// Starts `spec`'s VM on `backend` (see the module docs for the steps), booting it.
pub(crate) async fn start<B: Backend>(backend: &B, spec: &VmSpec) -> Result<Running, VmmError> {
    start_in(backend, spec, &StartMode::Boot).await
}

/// [`start`] in `mode` (a restore's configuration step loads the snapshot).
pub(crate) async fn start_in<B: Backend>(
    backend: &B,
    spec: &VmSpec,
    mode: &StartMode,
) -> Result<Running, VmmError> {
    let plan = backend.plan(spec, mode)?;
    let vm_id = spec.vm_id.as_str();
    let control_sock = backend.control_socket(&spec.run_dir);

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spec.run_dir)
        .map_err(|source| VmmError::RunDir {
            vm_id: vm_id.to_string(),
            path: spec.run_dir.clone(),
            source,
        })?;
    let already = |peer| VmmError::AlreadyRunning {
        vm_id: vm_id.to_string(),
        pid: process::pid_serving(peer, &backend.control_arg(&spec.run_dir)),
        socket: control_sock.clone(),
    };
    match backend.probe(&control_sock).await {
        Ok(peer) => return Err(already(peer)),
        // Something accepts connections there but does not answer: not ours to remove.
        Err(error) if !B::is_connect(&error) => return Err(already(None)),
        // Nothing listens: the socket, if any, is stale.
        Err(_) => {}
    }
    let removed = cleanup_sockets(&spec.run_dir).map_err(|source| VmmError::StaleSockets {
        vm_id: vm_id.to_string(),
        source,
    })?;
    if !removed.is_empty() {
        tracing::debug!(vm_id, ?removed, "removed stale sockets");
    }

    let (console, console_from) = process::open_log(vm_id, &spec.console_log)?;
    let (vmm_log, vmm_log_from) = process::open_log(vm_id, &spec.vmm_log)?;
    let bin = backend.bin();
    let mut cmd = Command::new(bin);
    cmd.args(backend.args(spec, &plan, &control_sock))
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(vmm_log)
        .envs(backend.env().iter().map(|(k, v)| (k, v)));
    if let Some(dir) = backend.cwd(&plan) {
        cmd.current_dir(dir);
    }
    let spawned = process::spawn_detached(cmd).map_err(|source| VmmError::Spawn {
        vm_id: vm_id.to_string(),
        source,
    })?;
    let pid = spawned.pid();
    let start_time = spawned.start_time();
    tracing::debug!(vm_id, pid, bin = %bin.display(), vmm = %backend.kind(), "spawned the VMM");
    let guard = StartGuard::new(pid, &spec.run_dir);
    let launch = Launch {
        spec,
        spawned,
        control_sock: &control_sock,
        console_from,
        vmm_log_from,
    };
    let (ready, poll) = backend.ready_wait();
    let started = async {
        launch
            .wait_ready(bin, ready, poll, || backend.ready(&control_sock))
            .await?;
        backend.configure(&launch, &plan).await
    };
    match started.await {
        Ok(()) => {
            guard.disarm();
            Ok(Running {
                vm_id: vm_id.to_string(),
                pid,
                start_time,
                api_socket: control_sock,
                agent: backend.agent_endpoint(spec),
            })
        }
        Err(error) => {
            guard.abort().await;
            Err(error)
        }
    }
}

/// [`Vmm::find_live`] for both backends: the VMM on `spec`'s control socket must answer and
/// name `spec`'s VM; its pid comes from the socket's peer credentials, else from a
/// `/proc/*/cmdline` scan for [`Backend::control_arg`].
pub(crate) async fn find_live<B: Backend>(backend: &B, spec: &VmSpec) -> Option<Running> {
    let socket = backend.control_socket(&spec.run_dir);
    let (name, peer) = match backend.query_vm(&socket).await {
        Ok(found) => found,
        Err(error) => {
            tracing::debug!(vm_id = spec.vm_id, error = %chain(&error), "no live VMM");
            return None;
        }
    };
    if name.as_deref() != Some(spec.vm_id.as_str()) {
        tracing::warn!(
            vm_id = spec.vm_id,
            found = ?name,
            socket = %socket.display(),
            "the VMM on this VM's socket runs another VM"
        );
        return None;
    }
    let pid = process::pid_serving(peer, &backend.control_arg(&spec.run_dir))?;
    Some(Running {
        vm_id: spec.vm_id.clone(),
        pid,
        start_time: process::start_time(pid),
        api_socket: socket,
        agent: backend.agent_endpoint(spec),
    })
}

/// Kills a VMM that is being started unless disarmed: its whole process group gets
/// `SIGKILL`, and once it is gone every socket in its run directory is removed. Dropping an
/// armed guard (a cancelled start) does the same on a thread of its own.
#[derive(Debug)]
struct StartGuard {
    pid: u32,
    run_dir: PathBuf,
    armed: bool,
}

impl StartGuard {
    fn new(pid: u32, run_dir: &Path) -> Self {
        Self {
            pid,
            run_dir: run_dir.to_path_buf(),
            armed: true,
        }
    }

    /// The start succeeded: leave the VMM running.
    fn disarm(mut self) {
        self.armed = false;
    }

    /// The start failed: kill, wait for the exit, remove the sockets. The guard stays armed
    /// until the end, so an abort that is itself dropped half-way still cleans up.
    async fn abort(mut self) {
        kill_group(self.pid);
        if !wait_exit(self.pid, KILL_WAIT).await {
            tracing::warn!(
                pid = self.pid,
                "VMM still alive after SIGKILL during a failed start"
            );
        }
        remove_sockets(&self.run_dir);
        self.armed = false;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pid, run_dir) = (self.pid, std::mem::take(&mut self.run_dir));
        kill_group(pid);
        let cleanup = move || {
            wait_exit_blocking(pid, KILL_WAIT);
            remove_sockets(&run_dir);
        };
        // Waiting must not block the runtime thread dropping the start future.
        if let Err(error) = std::thread::Builder::new()
            .name(format!("abort-{pid}"))
            .stack_size(REAPER_STACK)
            .spawn(cleanup)
        {
            tracing::warn!(
                pid,
                error = %chain(&error),
                "cannot start a cleanup thread for a cancelled VMM start"
            );
        }
    }
}

fn kill_group(pid: u32) {
    if let Err(error) = signal_group(pid, Signal::KILL) {
        tracing::warn!(
            pid,
            error = %chain(&error),
            "cannot kill the VMM of a failed start"
        );
    }
}

fn remove_sockets(run_dir: &Path) {
    if let Err(error) = cleanup_sockets(run_dir) {
        tracing::warn!(
            error = %chain(&error),
            "cannot remove the sockets of a failed VMM start"
        );
    }
}

/// A VMM process being started: what both backends need to wait for its control socket and
/// to explain an early exit with what it wrote during this start.
pub(crate) struct Launch<'a> {
    pub(crate) spec: &'a VmSpec,
    pub(crate) spawned: Spawned,
    /// Its control socket (Firecracker's API socket, QEMU's QMP socket).
    pub(crate) control_sock: &'a Path,
    /// Lengths of the logs before the spawn: what the VMM wrote starts there.
    pub(crate) console_from: u64,
    pub(crate) vmm_log_from: u64,
}

impl Launch<'_> {
    /// The error for a VMM that exited during start, quoting what it wrote during this start
    /// (its stderr; else the console).
    pub(crate) fn exited(&self, bin: &Path, exit: ChildExit) -> VmmError {
        let spec = self.spec;
        let mut log = spec.vmm_log.clone();
        let mut tail = tail(&spec.vmm_log, self.vmm_log_from, TAIL_LINES, TAIL_BYTES);
        if tail.is_empty() {
            let console = self::tail(&spec.console_log, self.console_from, TAIL_LINES, TAIL_BYTES);
            if console.is_empty() {
                tail = "(it wrote nothing to the VMM or console log)".to_string();
            } else {
                log = spec.console_log.clone();
                tail = console;
            }
        }
        VmmError::ExitedDuringStart {
            vm_id: spec.vm_id.clone(),
            bin: bin.to_path_buf(),
            status: exit.to_string(),
            log,
            tail,
        }
    }

    /// Polls `probe` every `poll` until it succeeds, the process exits (an error quoting its
    /// log), or `ready` passes ([`VmmError::NotReady`] with the last probe error).
    async fn wait_ready<F, Fut, E>(
        &self,
        bin: &Path,
        ready: Duration,
        poll: Duration,
        mut probe: F,
    ) -> Result<(), VmmError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let deadline = Instant::now() + ready;
        loop {
            if let Some(exit) = self.spawned.exit() {
                return Err(self.exited(bin, exit));
            }
            let last_error = match probe().await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if let Some(exit) = self.spawned.exit() {
                return Err(self.exited(bin, exit));
            }
            if Instant::now() >= deadline {
                return Err(VmmError::NotReady {
                    vm_id: self.spec.vm_id.clone(),
                    bin: bin.to_path_buf(),
                    socket: self.control_sock.to_path_buf(),
                    after: ready,
                    last_error: last_error.to_string(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}
