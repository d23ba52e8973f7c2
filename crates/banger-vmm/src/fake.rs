//! [`FakeVmm`]: a hand-written [`Vmm`] for the daemon's tests.
//!
//! It records every call, can be told to fail the next start or shutdown request, and runs a
//! real process per VM — `sleep 3600`, spawned detached like a VMM — so that liveness, signals,
//! [`process::stop`] and pid bookkeeping exercise the real code. Its `argv[0]` is
//! `run_dir/fake-vmm`, so its command line names the VM's run directory as a real VMM's does
//! and [`process::identify`] accepts it. Nothing answers on its
//! sockets: its agent endpoint is [`AgentEndpoint::Unix`] at `run_dir/agent.sock`, where a test
//! can run `banger-agent --listen-unix`.
//!
//! Its [`Vmm::validate`] and [`Vmm::start`] check the VM id, the socket path lengths in the run
//! directory and that there is a kernel file, as a real backend does; a test can make the next
//! validation fail ([`FakeVmm::fail_next_validate`]).
//!
//! With [`FakeVmm::with_snapshots`] it has snapshots: [`Vmm::launch`] in every mode (a restore
//! needs its state file), [`Vmm::snapshot`] writes a state and a memory file naming the VM,
//! [`Vmm::pause`]/[`Vmm::resume`] flip a flag ([`FakeVmm::is_paused`]). Pause, resume and
//! [`Vmm::copy_disk`] (a real copy) work without it too. Every one of them is recorded and can
//! be told to fail its next call ([`FakeVmm::fail_next`]).
//!
//! Dropping the fake kills every process it started that is still running.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::process::{self, Signal, Spawned};
use crate::{
    AgentEndpoint, BoxFuture, DiskClone, KernelFormat, Running, SnapshotFiles, StartMode, VmSpec,
    Vmm, VmmError, VmmKind,
};

/// The fake's control socket name in `run_dir` (nothing listens there).
pub const API_SOCKET: &str = "api.sock";
/// The fake's agent socket name in `run_dir`.
pub const AGENT_SOCKET: &str = "agent.sock";
/// The fake's `argv[0]`, in `run_dir`.
pub const ARGV0: &str = "fake-vmm";

/// One call made to the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Validate(VmSpec),
    Start(VmSpec),
    RequestShutdown(Running),
    FindLive(VmSpec),
    /// A [`Vmm::launch`] in a mode other than [`StartMode::Boot`] (which records `Start`).
    Launch(VmSpec, StartMode),
    Pause(String),
    Resume(String),
    Snapshot(String, SnapshotFiles),
    CopyDisk {
        src: PathBuf,
        dest: PathBuf,
    },
}

/// An operation whose next call [`FakeVmm::fail_next`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// A [`Vmm::launch`] with [`StartMode::Restore`].
    Restore,
    Pause,
    Resume,
    Snapshot,
    CopyDisk,
}

/// What the fake's VMM does when asked to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownBehaviour {
    /// The guest powers off: the process exits (by `SIGTERM`).
    Exit,
    /// The guest ignores the request: the process keeps running, so a stop must force it.
    Ignore,
}

#[derive(Debug)]
struct State {
    calls: Vec<FakeCall>,
    validate_errors: VecDeque<VmmError>,
    start_errors: VecDeque<VmmError>,
    shutdown_errors: VecDeque<VmmError>,
    shutdown: ShutdownBehaviour,
    /// VMs started, by id, with their process.
    vms: HashMap<String, (Running, Spawned)>,
    /// Errors for the next call of each [`FakeOp`].
    op_errors: HashMap<FakeOp, VecDeque<VmmError>>,
    /// VMs paused, by id.
    paused: HashSet<String>,
}

/// A [`Vmm`] that spawns `sleep` instead of a VMM and records what it is asked.
#[derive(Debug)]
pub struct FakeVmm {
    kind: VmmKind,
    snapshots: bool,
    sleep_bin: PathBuf,
    state: Mutex<State>,
}

impl Default for FakeVmm {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeVmm {
    /// A fake that reports itself as Firecracker, runs `sleep` from `PATH`, and exits on
    /// shutdown requests.
    pub fn new() -> Self {
        Self {
            kind: VmmKind::Firecracker,
            snapshots: false,
            sleep_bin: PathBuf::from("sleep"),
            state: Mutex::new(State {
                calls: Vec::new(),
                validate_errors: VecDeque::new(),
                start_errors: VecDeque::new(),
                shutdown_errors: VecDeque::new(),
                shutdown: ShutdownBehaviour::Exit,
                vms: HashMap::new(),
                op_errors: HashMap::new(),
                paused: HashSet::new(),
            }),
        }
    }

    /// Reports `kind` from [`Vmm::kind`].
    pub fn with_kind(mut self, kind: VmmKind) -> Self {
        self.kind = kind;
        self
    }

    /// Says it has snapshots ([`Vmm::snapshots`]) and takes every [`StartMode`].
    pub fn with_snapshots(mut self) -> Self {
        self.snapshots = true;
        self
    }

    /// The next call of `op` fails with `error` (errors queue up, one per call).
    pub fn fail_next(&self, op: FakeOp, error: VmmError) {
        self.state()
            .op_errors
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// Whether `vm_id` is paused.
    pub fn is_paused(&self, vm_id: &str) -> bool {
        self.state().paused.contains(vm_id)
    }

    /// Records `call`, then the injected error of `op`, if any.
    fn record(&self, call: FakeCall, op: FakeOp) -> Result<(), VmmError> {
        let mut state = self.state();
        state.calls.push(call);
        match state.op_errors.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Runs this `sleep` binary (it gets the single argument `3600`) instead of `sleep` on
    /// `PATH`.
    pub fn with_sleep_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.sleep_bin = bin.into();
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.state().calls.clone()
    }

    /// The next [`Vmm::validate`] fails with `error` (errors queue up, one per call).
    pub fn fail_next_validate(&self, error: VmmError) {
        self.state().validate_errors.push_back(error);
    }

    /// The next [`Vmm::start`] fails with `error` (errors queue up, one per call).
    pub fn fail_next_start(&self, error: VmmError) {
        self.state().start_errors.push_back(error);
    }

    /// The next [`Vmm::request_shutdown`] fails with `error` (errors queue up, one per call).
    pub fn fail_next_shutdown(&self, error: VmmError) {
        self.state().shutdown_errors.push_back(error);
    }

    /// What later shutdown requests do.
    pub fn set_shutdown_behaviour(&self, behaviour: ShutdownBehaviour) {
        self.state().shutdown = behaviour;
    }

    /// The pid of the process running `vm_id`, if the fake started one that is still alive.
    pub fn pid_of(&self, vm_id: &str) -> Option<u32> {
        self.state()
            .vms
            .get(vm_id)
            .map(|(run, _)| run.pid)
            .filter(|pid| process::alive(*pid))
    }

    fn running(&self, spec: &VmSpec) -> Running {
        Running {
            vm_id: spec.vm_id.clone(),
            pid: 0,
            start_time: None,
            api_socket: self.control_socket(&spec.run_dir),
            agent: self.agent_endpoint(spec),
        }
    }

    /// What a real backend checks too: the VM id, its control socket's path length, a kernel
    /// file.
    fn check(spec: &VmSpec) -> Result<(), VmmError> {
        crate::validate_vm_id(&spec.vm_id)?;
        crate::check_socket_path(&spec.vm_id, &spec.run_dir.join(API_SOCKET))?;
        crate::check_socket_path(&spec.vm_id, &spec.run_dir.join(AGENT_SOCKET))?;
        spec.kernel
            .pick_for(&spec.vm_id, KernelFormat::Vmlinux)
            .map(drop)
    }

    fn validate_vm(&self, spec: &VmSpec) -> Result<(), VmmError> {
        let mut state = self.state();
        state.calls.push(FakeCall::Validate(spec.clone()));
        match state.validate_errors.pop_front() {
            Some(error) => Err(error),
            None => Self::check(spec),
        }
    }

    fn start_vm(&self, spec: &VmSpec) -> Result<Running, VmmError> {
        self.state().calls.push(FakeCall::Start(spec.clone()));
        self.spawn_vm(spec)
    }

    fn launch_vm(&self, spec: &VmSpec, mode: &StartMode) -> Result<Running, VmmError> {
        if *mode == StartMode::Boot {
            return self.start_vm(spec);
        }
        if !self.snapshots {
            return Err(self.unsupported(&spec.vm_id, "snapshots"));
        }
        let call = FakeCall::Launch(spec.clone(), mode.clone());
        match mode {
            StartMode::Restore(r) => {
                self.record(call, FakeOp::Restore)?;
                if !r.snapshot.state.is_file() {
                    return Err(VmmError::Snapshot {
                        vm_id: spec.vm_id.clone(),
                        what: format!("no state file {}", r.snapshot.state.display()),
                    });
                }
            }
            _ => self.state().calls.push(call),
        }
        self.spawn_vm(spec)
    }

    /// A VM the fake runs: the injected error of `op`, else `Ok` (the fake's VMM is gone: an
    /// error, as a real backend's socket would not answer).
    fn live_op(&self, run: &Running, call: FakeCall, op: FakeOp) -> Result<(), VmmError> {
        self.record(call, op)?;
        let live = self
            .state()
            .vms
            .get(&run.vm_id)
            .is_some_and(|(live, spawned)| live.pid == run.pid && spawned.exit().is_none());
        if live {
            Ok(())
        } else {
            Err(VmmError::NotReady {
                vm_id: run.vm_id.clone(),
                bin: self.sleep_bin.clone(),
                socket: run.api_socket.clone(),
                after: std::time::Duration::ZERO,
                last_error: "the fake VMM is not running".into(),
            })
        }
    }

    fn pause_vm(&self, run: &Running) -> Result<(), VmmError> {
        self.live_op(run, FakeCall::Pause(run.vm_id.clone()), FakeOp::Pause)?;
        self.state().paused.insert(run.vm_id.clone());
        Ok(())
    }

    fn resume_vm(&self, run: &Running) -> Result<(), VmmError> {
        self.live_op(run, FakeCall::Resume(run.vm_id.clone()), FakeOp::Resume)?;
        self.state().paused.remove(&run.vm_id);
        Ok(())
    }

    fn snapshot_vm(&self, run: &Running, files: &SnapshotFiles) -> Result<(), VmmError> {
        if !self.snapshots {
            return Err(self.unsupported(&run.vm_id, "snapshots"));
        }
        let call = FakeCall::Snapshot(run.vm_id.clone(), files.clone());
        self.live_op(run, call, FakeOp::Snapshot)?;
        self.state().paused.insert(run.vm_id.clone());
        for path in [&files.state, &files.memory] {
            std::fs::write(path, format!("fake snapshot of {}\n", run.vm_id)).map_err(|e| {
                VmmError::Snapshot {
                    vm_id: run.vm_id.clone(),
                    what: format!("cannot write {}: {e}", path.display()),
                }
            })?;
        }
        Ok(())
    }

    fn spawn_vm(&self, spec: &VmSpec) -> Result<Running, VmmError> {
        let mut state = self.state();
        if let Some(error) = state.start_errors.pop_front() {
            return Err(error);
        }
        Self::check(spec)?;
        let mut running = self.running(spec);
        if let Some((live, spawned)) = state.vms.get(&spec.vm_id)
            && spawned.exit().is_none()
            && process::alive(live.pid)
        {
            return Err(VmmError::AlreadyRunning {
                vm_id: spec.vm_id.clone(),
                socket: running.api_socket,
                pid: Some(live.pid),
            });
        }
        let mut cmd = Command::new(&self.sleep_bin);
        cmd.arg0(spec.run_dir.join(ARGV0))
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let spawned = process::spawn_detached(cmd).map_err(|source| VmmError::Spawn {
            vm_id: spec.vm_id.clone(),
            source,
        })?;
        running.pid = spawned.pid();
        running.start_time = spawned.start_time();
        state
            .vms
            .insert(spec.vm_id.clone(), (running.clone(), spawned));
        Ok(running)
    }

    fn shutdown_vm(&self, run: &Running) -> Result<(), VmmError> {
        let mut state = self.state();
        state.calls.push(FakeCall::RequestShutdown(run.clone()));
        if let Some(error) = state.shutdown_errors.pop_front() {
            return Err(error);
        }
        // Only processes this fake started are ever signalled.
        let ours = state
            .vms
            .get(&run.vm_id)
            .is_some_and(|(live, spawned)| live.pid == run.pid && spawned.exit().is_none());
        if ours && state.shutdown == ShutdownBehaviour::Exit {
            // The process may have been killed meanwhile: then there is nothing to shut down.
            let _ = process::signal(run.pid, Signal::TERM);
        }
        Ok(())
    }

    fn find_vm(&self, spec: &VmSpec) -> Option<Running> {
        let mut state = self.state();
        state.calls.push(FakeCall::FindLive(spec.clone()));
        state
            .vms
            .get(&spec.vm_id)
            .filter(|(run, spawned)| spawned.exit().is_none() && process::alive(run.pid))
            .map(|(run, _)| run.clone())
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (run, spawned) in state.vms.values() {
            if spawned.exit().is_none() {
                let _ = process::signal(run.pid, Signal::KILL);
            }
        }
    }
}

impl Vmm for FakeVmm {
    fn kind(&self) -> VmmKind {
        self.kind
    }

    /// An injected error ([`FakeVmm::fail_next_validate`]), else the checks a real backend
    /// makes on the VM id, the socket paths and the kernel.
    fn validate(&self, spec: &VmSpec) -> Result<(), VmmError> {
        self.validate_vm(spec)
    }

    fn start<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<Running, VmmError>> {
        Box::pin(async move { self.start_vm(spec) })
    }

    fn launch<'a>(
        &'a self,
        spec: &'a VmSpec,
        mode: &'a StartMode,
    ) -> BoxFuture<'a, Result<Running, VmmError>> {
        Box::pin(async move { self.launch_vm(spec, mode) })
    }

    fn snapshots(&self) -> bool {
        self.snapshots
    }

    fn pause<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move { self.pause_vm(run) })
    }

    fn resume<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move { self.resume_vm(run) })
    }

    fn snapshot<'a>(
        &'a self,
        run: &'a Running,
        files: &'a SnapshotFiles,
    ) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move { self.snapshot_vm(run, files) })
    }

    /// A real copy ([`crate::copy::copy_file`]), recorded.
    fn copy_disk<'a>(
        &'a self,
        src: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskClone, VmmError>> {
        Box::pin(async move {
            let call = FakeCall::CopyDisk {
                src: src.to_path_buf(),
                dest: dest.to_path_buf(),
            };
            self.record(call, FakeOp::CopyDisk)?;
            crate::copy::copy_file(src, dest).await
        })
    }

    fn request_shutdown<'a>(&'a self, run: &'a Running) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move { self.shutdown_vm(run) })
    }

    fn find_live<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Option<Running>> {
        Box::pin(async move { self.find_vm(spec) })
    }

    fn agent_endpoint(&self, spec: &VmSpec) -> AgentEndpoint {
        AgentEndpoint::Unix(spec.run_dir.join(AGENT_SOCKET))
    }

    fn control_socket(&self, run_dir: &Path) -> PathBuf {
        run_dir.join(API_SOCKET)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use super::*;
    use crate::KernelFiles;
    use crate::process::{SpawnError, StopOutcome, alive, stop, wait_exit};

    fn spec(id: &str) -> VmSpec {
        VmSpec {
            vm_id: id.to_string(),
            vcpus: 1,
            memory_mib: 128,
            kernel: KernelFiles::either("/k"),
            boot_args: String::new(),
            root_disk: "/r".into(),
            work_disk: "/w".into(),
            tap: "tap0".to_string(),
            mac: "06:00:AC:1E:00:02".to_string(),
            vsock_cid: 3,
            run_dir: format!("/run/x/{id}").into(),
            console_log: "/c".into(),
            vmm_log: "/v".into(),
        }
    }

    #[tokio::test]
    async fn start_runs_a_real_process_and_stop_ends_it_gracefully() {
        let fake = FakeVmm::new();
        let spec = spec("aaaa000000000001");
        let run = fake.start(&spec).await.unwrap();
        assert!(alive(run.pid));
        assert_eq!(
            run.api_socket,
            PathBuf::from("/run/x/aaaa000000000001/api.sock")
        );
        assert_eq!(
            run.agent,
            AgentEndpoint::Unix("/run/x/aaaa000000000001/agent.sock".into())
        );
        assert_eq!(fake.pid_of(&spec.vm_id), Some(run.pid));
        assert_eq!(fake.find_live(&spec).await, Some(run.clone()));

        // A second start of a live VM is refused like the real backend refuses it.
        let err = fake.start(&spec).await.unwrap_err();
        assert!(matches!(err, VmmError::AlreadyRunning { pid: Some(p), .. } if p == run.pid));

        let outcome = stop(&fake, &run, Duration::from_secs(5)).await.unwrap();
        assert_eq!(outcome, StopOutcome::Graceful);
        assert!(!alive(run.pid));
        assert_eq!(fake.find_live(&spec).await, None);
        assert_eq!(fake.pid_of(&spec.vm_id), None);
        assert_eq!(
            fake.calls(),
            vec![
                FakeCall::Start(spec.clone()),
                FakeCall::FindLive(spec.clone()),
                FakeCall::Start(spec.clone()),
                FakeCall::RequestShutdown(run.clone()),
                FakeCall::FindLive(spec.clone()),
            ]
        );
        // Stopping again finds nothing to stop.
        assert_eq!(
            stop(&fake, &run, Duration::from_secs(1)).await.unwrap(),
            StopOutcome::NotRunning
        );
    }

    #[tokio::test]
    async fn ignored_or_failed_shutdown_is_forced() {
        let fake = FakeVmm::new().with_kind(VmmKind::Qemu);
        assert_eq!(fake.kind(), VmmKind::Qemu);
        fake.set_shutdown_behaviour(ShutdownBehaviour::Ignore);
        let run = fake.start(&spec("aaaa000000000002")).await.unwrap();
        let outcome = stop(&fake, &run, Duration::from_millis(100)).await.unwrap();
        assert_eq!(outcome, StopOutcome::Forced);
        assert!(!alive(run.pid));

        fake.set_shutdown_behaviour(ShutdownBehaviour::Exit);
        let run = fake.start(&spec("aaaa000000000003")).await.unwrap();
        fake.fail_next_shutdown(VmmError::AlreadyRunning {
            vm_id: run.vm_id.clone(),
            socket: run.api_socket.clone(),
            pid: None,
        });
        // A failing request goes straight to the kill: well before the long grace period.
        let started = std::time::Instant::now();
        let outcome = stop(&fake, &run, Duration::from_secs(30)).await.unwrap();
        assert_eq!(outcome, StopOutcome::Forced);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!alive(run.pid));
    }

    #[tokio::test]
    async fn injected_start_errors_come_back_once() {
        let fake = FakeVmm::new();
        let spec = spec("aaaa000000000004");
        fake.fail_next_start(VmmError::Spawn {
            vm_id: spec.vm_id.clone(),
            source: SpawnError::Spawn {
                program: "firecracker".into(),
                source: io::Error::other("boom"),
            },
        });
        let err = fake.start(&spec).await.unwrap_err();
        assert!(crate::error::chain(&err).contains("boom"), "{err}");
        assert_eq!(fake.pid_of(&spec.vm_id), None);
        let run = fake.start(&spec).await.unwrap();
        assert!(alive(run.pid));
    }

    #[tokio::test]
    async fn dropping_the_fake_kills_its_processes() {
        let fake = FakeVmm::new();
        let run = fake.start(&spec("aaaa000000000005")).await.unwrap();
        assert!(alive(run.pid));
        drop(fake);
        assert!(wait_exit(run.pid, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_missing_sleep_binary_is_a_spawn_error() {
        let fake = FakeVmm::new().with_sleep_bin("/nonexistent/sleep");
        let err = fake.start(&spec("aaaa000000000006")).await.unwrap_err();
        assert!(matches!(err, VmmError::Spawn { .. }), "{err}");
        assert!(
            crate::error::chain(&err).contains("/nonexistent/sleep"),
            "{err}"
        );
    }

    #[test]
    fn validate_checks_like_a_backend_and_takes_injected_errors() {
        let fake = FakeVmm::new();
        let good = spec("aaaa000000000007");
        assert!(fake.validate(&good).is_ok());
        let mut no_kernel = good.clone();
        no_kernel.kernel = KernelFiles::formats(None, None);
        assert!(matches!(
            fake.validate(&no_kernel),
            Err(VmmError::NoKernel { .. })
        ));
        let mut long = good.clone();
        long.run_dir = PathBuf::from(format!("/{}", "r".repeat(100)));
        assert!(matches!(
            fake.validate(&long),
            Err(VmmError::SocketPathTooLong { .. })
        ));
        fake.fail_next_validate(VmmError::InvalidSpec {
            vm_id: good.vm_id.clone(),
            what: "memory size",
            reason: "the test refuses it".into(),
        });
        assert!(matches!(
            fake.validate(&good),
            Err(VmmError::InvalidSpec { .. })
        ));
        assert!(
            fake.validate(&good).is_ok(),
            "an injected error comes back once"
        );
        assert_eq!(fake.calls().len(), 5);
        assert!(
            fake.calls()
                .iter()
                .all(|c| matches!(c, FakeCall::Validate(_)))
        );
    }
}
