//! [`VmmError`]: why a VMM operation failed, naming the VM, and the socket, binary, file or
//! API call involved.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::firecracker::api::ApiError;
use crate::process::{CleanupError, SpawnError};
use crate::qemu::qmp::QmpError;

/// A failed [`Vmm`](crate::Vmm) operation. Every variant names the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("VM id {vm_id:?} is invalid: {reason}")]
    InvalidVmId { vm_id: String, reason: String },

    #[error(
        "VM {vm_id}: socket path {} is {len} bytes, but a Unix socket path holds at most 107 (sun_path is 108 bytes): use a shorter run directory",
        path.display()
    )]
    SocketPathTooLong {
        vm_id: String,
        path: PathBuf,
        len: usize,
    },

    #[error("VM {vm_id}: the {what} is invalid: {reason}")]
    InvalidSpec {
        vm_id: String,
        what: &'static str,
        reason: String,
    },

    #[error("VM {vm_id}: the {what} path {} is not valid UTF-8, which the VMM API requires", path.display())]
    NonUtf8Path {
        vm_id: String,
        what: &'static str,
        path: PathBuf,
    },

    #[error("VM {vm_id}: cannot create the run directory {}: {source}", path.display())]
    RunDir {
        vm_id: String,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "VM {vm_id}: a VMM already answers on {}{}",
        socket.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning {
        vm_id: String,
        socket: PathBuf,
        pid: Option<u32>,
    },

    #[error("VM {vm_id}: cannot remove stale sockets: {source}")]
    StaleSockets { vm_id: String, source: CleanupError },

    #[error("VM {vm_id}: cannot open the log file {}: {source}", path.display())]
    OpenLog {
        vm_id: String,
        path: PathBuf,
        source: io::Error,
    },

    #[error("VM {vm_id}: {source}")]
    Spawn { vm_id: String, source: SpawnError },

    #[error(
        "VM {vm_id}: {} exited during start ({status}); last lines of {}:\n{tail}",
        bin.display(),
        log.display()
    )]
    ExitedDuringStart {
        vm_id: String,
        bin: PathBuf,
        /// How it ended, e.g. `exit status: 1`.
        status: String,
        /// The log the tail comes from: the VMM log, or the console log when the VMM log is
        /// empty (Firecracker logs to stdout by default).
        log: PathBuf,
        tail: String,
    },

    #[error(
        "VM {vm_id}: {} did not answer on {} within {after:?} (last error: {last_error}); it was killed",
        bin.display(),
        socket.display()
    )]
    NotReady {
        vm_id: String,
        bin: PathBuf,
        socket: PathBuf,
        after: Duration,
        last_error: String,
    },

    /// A Firecracker API request failed (boxed: it is the largest variant by far).
    #[error("VM {vm_id}: {source}")]
    Api {
        vm_id: String,
        source: Box<ApiError>,
    },

    /// A QEMU QMP command failed (boxed like [`VmmError::Api`]).
    #[error("VM {vm_id}: {source}")]
    Qmp {
        vm_id: String,
        source: Box<QmpError>,
    },
}

impl VmmError {
    /// The VM the error is about.
    pub fn vm_id(&self) -> &str {
        match self {
            Self::InvalidVmId { vm_id, .. }
            | Self::SocketPathTooLong { vm_id, .. }
            | Self::InvalidSpec { vm_id, .. }
            | Self::NonUtf8Path { vm_id, .. }
            | Self::RunDir { vm_id, .. }
            | Self::AlreadyRunning { vm_id, .. }
            | Self::StaleSockets { vm_id, .. }
            | Self::OpenLog { vm_id, .. }
            | Self::Spawn { vm_id, .. }
            | Self::ExitedDuringStart { vm_id, .. }
            | Self::NotReady { vm_id, .. }
            | Self::Api { vm_id, .. }
            | Self::Qmp { vm_id, .. } => vm_id,
        }
    }
}
