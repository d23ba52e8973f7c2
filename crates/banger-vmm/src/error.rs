//! [`VmmError`]: why a VMM operation failed, naming the VM, and the socket, binary, file or
//! API call involved.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::KernelFormat;
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

    #[error("VM {vm_id}: no kernel file to boot ({} is what this VMM boots)", wanted.describe())]
    NoKernel {
        vm_id: String,
        /// The format the backend boots best (it takes the other one too when that is all
        /// there is: [`KernelFiles::pick`](crate::KernelFiles::pick)).
        wanted: KernelFormat,
    },

    #[error("VM {vm_id}: cannot create the run directory {}", path.display())]
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

    #[error("VM {vm_id}: cannot remove stale sockets")]
    StaleSockets { vm_id: String, source: CleanupError },

    #[error("VM {vm_id}: cannot open the log file {}", path.display())]
    OpenLog {
        vm_id: String,
        path: PathBuf,
        source: io::Error,
    },

    #[error("VM {vm_id}: cannot start the VMM")]
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
    #[error("VM {vm_id}: a Firecracker API request failed")]
    Api {
        vm_id: String,
        source: Box<ApiError>,
    },

    #[error("VM {vm_id}: {vmm} has no {what} in banger")]
    Unsupported {
        vm_id: String,
        vmm: crate::VmmKind,
        what: &'static str,
    },

    #[error("VM {vm_id}: {what}")]
    Snapshot { vm_id: String, what: String },

    #[error("VM {vm_id}: cannot clone the disk {} to {}", base.display(), dest.display())]
    CloneDisk {
        vm_id: String,
        base: PathBuf,
        dest: PathBuf,
        source: io::Error,
    },

    #[error("VM {vm_id}: cannot grow the disk {} to {size} bytes", path.display())]
    GrowDisk {
        vm_id: String,
        path: PathBuf,
        size: u64,
        source: io::Error,
    },
    #[error("cannot copy the disk {} to {}", src.display(), dest.display())]
    CopyDisk {
        /// The copy's path, which stands for the VM ([`VmmError::vm_id`]).
        vm_id: String,
        src: PathBuf,
        dest: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A QEMU QMP command failed (boxed like [`VmmError::Api`]).
    #[error("VM {vm_id}: a QMP command failed")]
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
            | Self::NoKernel { vm_id, .. }
            | Self::RunDir { vm_id, .. }
            | Self::AlreadyRunning { vm_id, .. }
            | Self::StaleSockets { vm_id, .. }
            | Self::OpenLog { vm_id, .. }
            | Self::Spawn { vm_id, .. }
            | Self::ExitedDuringStart { vm_id, .. }
            | Self::NotReady { vm_id, .. }
            | Self::Api { vm_id, .. }
            | Self::Unsupported { vm_id, .. }
            | Self::Snapshot { vm_id, .. }
            | Self::CloneDisk { vm_id, .. }
            | Self::GrowDisk { vm_id, .. }
            | Self::CopyDisk { vm_id, .. }
            | Self::Qmp { vm_id, .. } => vm_id,
        }
    }
}

pub(crate) use banger_core::error::chain;

#[cfg(test)]
mod tests {
    use std::error::Error;

    use hyper::Method;

    use super::*;
    use crate::process::{IdentityError, Signal, SignalError, StopError};

    fn io() -> io::Error {
        io::Error::other("the disk is on fire")
    }

    /// No level of `error`'s chain repeats the level below it.
    fn assert_no_repeat(error: &dyn Error) {
        let mut level = error;
        while let Some(source) = level.source() {
            let (outer, inner) = (level.to_string(), source.to_string());
            assert!(
                !outer.contains(&inner),
                "{outer:?} repeats its source {inner:?}"
            );
            level = source;
        }
    }

    #[test]
    fn no_message_repeats_its_source() {
        let vm_id = || "0123456789abcdef".to_string();
        let socket = || PathBuf::from("/run/b/0123/api.sock");
        let api = Box::new;
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(VmmError::RunDir {
                vm_id: vm_id(),
                path: "/run/b/0123".into(),
                source: io(),
            }),
            Box::new(VmmError::StaleSockets {
                vm_id: vm_id(),
                source: CleanupError::Remove {
                    path: socket(),
                    source: io(),
                },
            }),
            Box::new(VmmError::StaleSockets {
                vm_id: vm_id(),
                source: CleanupError::ReadDir {
                    dir: "/run/b/0123".into(),
                    source: io(),
                },
            }),
            Box::new(VmmError::OpenLog {
                vm_id: vm_id(),
                path: "/l/vmm.log".into(),
                source: io(),
            }),
            Box::new(VmmError::Spawn {
                vm_id: vm_id(),
                source: SpawnError::Spawn {
                    program: "/usr/bin/firecracker".into(),
                    source: io(),
                },
            }),
            Box::new(VmmError::Spawn {
                vm_id: vm_id(),
                source: SpawnError::Reaper {
                    program: "/usr/bin/firecracker".into(),
                    pid: 42,
                    source: io(),
                },
            }),
            Box::new(VmmError::Api {
                vm_id: vm_id(),
                source: api(ApiError::Connect {
                    socket: socket(),
                    method: Method::PUT,
                    path: "/actions".into(),
                    source: io(),
                }),
            }),
            Box::new(VmmError::Api {
                vm_id: vm_id(),
                source: api(ApiError::Encode {
                    method: Method::PUT,
                    path: "/actions".into(),
                    source: serde_json::from_str::<u8>("x").unwrap_err(),
                }),
            }),
            Box::new(VmmError::Api {
                vm_id: vm_id(),
                source: api(ApiError::Body {
                    socket: socket(),
                    method: Method::GET,
                    path: "/".into(),
                    source: Box::new(io()),
                }),
            }),
            Box::new(VmmError::Qmp {
                vm_id: vm_id(),
                source: Box::new(QmpError::Connect {
                    socket: socket(),
                    command: "query-status".into(),
                    source: io(),
                }),
            }),
            Box::new(VmmError::Qmp {
                vm_id: vm_id(),
                source: Box::new(QmpError::Io {
                    socket: socket(),
                    command: "query-status".into(),
                    source: io(),
                }),
            }),
            Box::new(StopError::Kill {
                vm_id: vm_id(),
                pid: 42,
                source: SignalError::Failed {
                    pid: 42,
                    signal: Signal::KILL,
                    source: io(),
                },
            }),
            Box::new(StopError::Identify {
                vm_id: vm_id(),
                source: IdentityError::Pidfd {
                    pid: 42,
                    source: io(),
                },
            }),
        ];
        for error in &errors {
            assert!(error.source().is_some(), "{error}");
            assert_no_repeat(error.as_ref());
            // The cause still reaches whoever renders the chain.
            assert!(
                chain(error.as_ref()).ends_with(": the disk is on fire")
                    || chain(error.as_ref()).contains("expected value"),
                "{}",
                chain(error.as_ref())
            );
        }
        assert_eq!(
            chain(errors[4].as_ref()),
            "VM 0123456789abcdef: cannot start the VMM: cannot start /usr/bin/firecracker: the disk is on fire"
        );
    }
}
