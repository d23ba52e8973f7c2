//! Errors of the daemon's operations, with context, and their mapping to API error kinds.

use std::path::PathBuf;

use banger_api::{ApiError, ErrorKind};
use banger_core::names::NameError;
use banger_store::StoreError;

/// Why an operation on a VM or image failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no VM matches {reference:?}")]
    VmNotFound { reference: String },
    #[error("{reference:?} matches several VMs: {}", candidates.join(", "))]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("no image matches {reference:?}")]
    ImageNotFound { reference: String },
    #[error("kernel {name:?} is not imported (see banger kernel list)")]
    KernelNotFound { name: String },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{what}")]
    Invalid { what: String },
    #[error("a VM named {name:?} already exists")]
    NameTaken { name: String },
    #[error("a kernel named {name:?} already exists (use --force to replace it)")]
    KernelNameTaken { name: String },
    #[error("kernel {name:?} is used by image(s) {}; delete them first", images.join(", "))]
    KernelInUse { name: String, images: Vec<String> },
    #[error("kernel {name:?}: import failed")]
    Kernel {
        name: String,
        #[source]
        source: Box<banger_kernel::KernelError>,
    },
    #[error("image build failed ({what})")]
    Image {
        what: &'static str,
        #[source]
        source: Box<banger_image::ImageError>,
    },
    #[error("an image named {name:?} already exists")]
    ImageNameTaken { name: String },
    #[error("image {image:?} is used by VM(s) {}; delete them first", vms.join(", "))]
    ImageInUse { image: String, vms: Vec<String> },
    #[error("VM {vm:?} is {state}; {wanted}")]
    WrongState {
        vm: String,
        state: String,
        wanted: &'static str,
    },
    #[error("no free address left in subnet {subnet}")]
    SubnetFull { subnet: String },
    #[error(
        "VM {vm:?}: the guest agent did not answer within {secs} s (see banger vm logs {vm}); last error: {last}"
    )]
    AgentTimeout { vm: String, secs: u64, last: String },
    #[error("VM {vm:?}: cannot reach the guest agent")]
    Agent {
        vm: String,
        #[source]
        source: banger_agent::client::ClientError,
    },
    #[error("the {kind} VMM is unavailable: {why}")]
    VmmUnavailable { kind: String, why: String },
    #[error("VM {vm:?} is not running")]
    NotRunning { vm: String },
    #[error("cancelled: the client went away")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database write failed: {what}")]
    StoreWrite {
        what: String,
        #[source]
        source: banger_store::rusqlite::Error,
    },
    #[error("VM {vm:?}: disk preparation failed")]
    Disk {
        vm: String,
        #[source]
        source: Box<banger_disk::DiskError>,
    },
    #[error("VM {vm:?}: the VMM failed")]
    Vmm {
        vm: String,
        #[source]
        source: Box<banger_vmm::VmmError>,
    },
    #[error("VM {vm:?}: host networking failed")]
    Net {
        vm: String,
        #[source]
        source: banger_net::NetError,
    },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: &'static str, detail: String },
    #[error("internal task failed: {0}")]
    Join(String),
}

impl OpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::VmNotFound { .. } | Self::ImageNotFound { .. } | Self::KernelNotFound { .. } => {
                ErrorKind::NotFound
            }
            Self::Ambiguous { .. } | Self::Name(_) | Self::Invalid { .. } => ErrorKind::BadRequest,
            Self::NameTaken { .. } | Self::ImageNameTaken { .. } | Self::KernelNameTaken { .. } => {
                ErrorKind::AlreadyExists
            }
            Self::ImageInUse { .. }
            | Self::KernelInUse { .. }
            | Self::WrongState { .. }
            | Self::NotRunning { .. } => ErrorKind::Conflict,
            Self::SubnetFull { .. }
            | Self::AgentTimeout { .. }
            | Self::Agent { .. }
            | Self::VmmUnavailable { .. } => ErrorKind::Unavailable,
            Self::Cancelled => ErrorKind::Cancelled,
            _ => ErrorKind::Internal,
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// The whole cause chain in one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}
