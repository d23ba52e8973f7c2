//! Errors of the daemon's operations, with context, and their mapping to API error kinds.
//!
//! The mapping is honest and exhaustive: every variant, and every variant of the library
//! errors it wraps, is classified by name, with no catch-all arm, so a new variant cannot
//! silently become a 500. The user's mistakes (bad values, bad bundles and images, a missing
//! kernel) are `bad request` or `not found`; a full disk or quota anywhere in the cause chain
//! (`ENOSPC`, `EDQUOT`, `EFBIG`, or a tool saying so) is `insufficient storage`; a host program
//! or VMM that cannot run is `unavailable`; only banger's own failures are `internal`. A
//! store constraint is `already exists` only where the caller matched the `UNIQUE(name)`
//! conflict; any other constraint is a `conflict` or `internal`.

use std::path::PathBuf;

use banger_agent_proto::client::ClientError as AgentClientError;
use banger_api::{ApiError, ErrorKind};
use banger_core::limits::LimitError;
use banger_core::names::NameError;
use banger_core::size::ByteSize;
use banger_store::{Constraint, StoreError};

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
    #[error("{reference:?} matches several images: {}", candidates.join(", "))]
    ImageAmbiguous {
        reference: String,
        candidates: Vec<String>,
    },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A `vm set` beyond the VM's own backend's limits.
    #[error("VM {vm}")]
    VmLimit {
        vm: String,
        #[source]
        source: Box<LimitError>,
    },
    #[error("nothing to set: give --cpus, --memory, --disk, --work-disk, --nat or --no-nat")]
    NothingToSet,
    #[error(transparent)]
    Signal(#[from] banger_vmm::process::ParseSignalError),
    #[error("{disk} cannot shrink from {from} to {to}")]
    DiskShrink {
        vm: String,
        disk: &'static str,
        from: ByteSize,
        to: ByteSize,
    },
    /// A VM row without the address its creation gave it: banger's own bug.
    #[error("VM {vm} has no address")]
    NoAddress { vm: String },
    #[error(
        "the guest agent binary was not found next to bangerd; set BANGER_AGENT_BIN or build with scripts/build"
    )]
    AgentBinMissing,
    #[error(
        "the guest agent {} is dynamically linked and would not run in guests; build it with scripts/build (RUSTFLAGS='-C target-feature=+crt-static') or point BANGER_AGENT_BIN at a static build",
        path.display()
    )]
    AgentBinDynamic { path: PathBuf },
    #[error("the guest agent {}: {why}", path.display())]
    AgentBinUnreadable { path: PathBuf, why: String },
    #[error("cannot bootstrap {name:?}: banger builds debian-SUITE images (e.g. debian-bookworm)")]
    NotBootstrappable { name: String },
    #[error(
        "no kernel is imported; import this host's kernel first with: banger kernel import host --from / (on Debian: apt-get install linux-image-cloud-amd64)"
    )]
    NoKernelImported,
    #[error(
        "the bundle boots kernel {kernel:?}, which is not imported; import it (banger kernel import {kernel} --from DIR) or pass --kernel-ref"
    )]
    BundleKernelMissing { kernel: String },
    #[error(transparent)]
    KernelSource(#[from] banger_api::types::KernelSourceError),
    /// A file handed in by the user (`what`: rootfs, kernel, initrd) that banger refuses.
    #[error("{what} {}: {why}", path.display())]
    InputFile {
        what: String,
        path: PathBuf,
        why: String,
    },
    #[error("{what} path {} must be absolute", path.display())]
    InputNotAbsolute { what: String, path: PathBuf },
    #[error("modules {} is not a directory", path.display())]
    ModulesNotADir { path: PathBuf },
    #[error("--from {} must be an existing directory", path.display())]
    KernelTreeNotADir { path: PathBuf },
    #[error(
        "{what} is not a clean ext4 filesystem (e2fsck -fn exit code {}): {detail}",
        code.map_or("none".to_string(), |c| c.to_string())
    )]
    RootfsNotClean {
        what: String,
        code: Option<i32>,
        detail: String,
    },
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
    /// A catalog that cannot be read, or a pull from one that failed (`what`: which).
    #[error("{what}")]
    Catalog {
        what: String,
        #[source]
        source: Box<banger_catalog::CatalogError>,
    },
    #[error("{what} unpacks to more than {max} bytes (config max_image_size)")]
    UnpacksTooLarge { what: String, max: u64 },
    #[error("no {kind} named {name:?} is in any catalog (see banger {kind} list --available)")]
    NotInCatalog { kind: &'static str, name: String },
    #[error(
        "image {name:?} boots kernel files given by path, not a kernel_ref, and a bundle names its kernel; register it with --kernel-ref to export it"
    )]
    ExportNeedsKernelRef { name: String },
    /// An OCI pull failed: the reference, the registry, a blob (the error names which).
    #[error(transparent)]
    Oci(Box<banger_oci::OciError>),
    #[error(
        "{name} is a catalog image, a finished bundle: {flag} does not apply (only --name and --kernel-ref do)"
    )]
    CatalogPullFlag { name: String, flag: &'static str },
    #[error("image size {size} exceeds max_image_size {max}")]
    ImageTooLarge { size: ByteSize, max: ByteSize },
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
        source: banger_agent_proto::client::ClientError,
    },
    #[error("fork of VM {vm:?} failed at step {step:?}")]
    Fork {
        vm: String,
        step: &'static str,
        #[source]
        source: Box<OpError>,
    },
    #[error("template of image {image:?}")]
    Template {
        image: String,
        #[source]
        source: crate::templates::TemplateError,
    },
    #[error("a warm-start template of image {image:?} for this shape is being made already")]
    TemplateBusy { image: String },
    #[error("VM {vm:?}: the guest agent could not give the restored VM its identity")]
    Identity {
        vm: String,
        #[source]
        source: banger_agent_proto::client::ClientError,
    },
    #[error("VM {vm:?}: cannot open a stream to the guest agent")]
    AgentMux {
        vm: String,
        #[source]
        source: banger_agent_proto::client::mux::MuxError,
    },
    /// A guest file request the agent refused or failed; the kind follows the agent's status.
    #[error("VM {vm:?}: cannot {what} {path} in the guest")]
    GuestFile {
        vm: String,
        what: &'static str,
        path: String,
        #[source]
        source: banger_agent_proto::client::ClientError,
    },
    #[error(transparent)]
    GuestPath(#[from] banger_agent_proto::files::GuestPathError),
    #[error("the {kind} VMM is unavailable: {why}")]
    VmmUnavailable {
        kind: banger_core::vmm_kind::VmmKind,
        why: String,
    },
    #[error("VM {vm:?} is not running")]
    NotRunning { vm: String },
    #[error("VM {vm:?} is paused; resume it with: banger vm resume {vm}")]
    Paused { vm: String },
    #[error("VM {vm:?} is already paused")]
    AlreadyPaused { vm: String },
    #[error("VM {vm:?} is not paused")]
    NotPaused { vm: String },
    #[error("cancelled: the client went away")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("VM {vm:?}: disk preparation failed")]
    Disk {
        vm: String,
        #[source]
        source: Box<banger_disk::DiskError>,
    },
    #[error("VM {vm:?}: cannot copy host files into its work disk")]
    FileSync {
        vm: String,
        #[source]
        source: banger_core::config::FileSyncError,
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
    #[error("VM {vm} has no workspace; prepare one with: banger vm workspace prepare {vm} PATH")]
    NoWorkspace { vm: String },
    #[error("VM {vm:?}: workspace")]
    Workspace {
        vm: String,
        #[source]
        source: Box<WorkspaceError>,
    },
    /// banger's ssh files (the owner's `~/.ssh/config` block) could not be changed.
    #[error(transparent)]
    SshHosts(#[from] crate::ssh_hosts::SshHostsError),
}

/// Why a workspace prepare or export failed (see `crate::workspaces`).
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The host path is not a repository banger ships (not one, bare, submodules, ...).
    #[error(transparent)]
    Inspect(#[from] banger_workspace::InspectError),
    /// Writing the tar stream failed.
    #[error(transparent)]
    Stream(#[from] banger_workspace::StreamError),
    /// A guest path or base banger refuses.
    #[error(transparent)]
    Script(#[from] banger_workspace::ScriptError),
    /// The guest path already holds something.
    #[error(
        "{path} in the guest exists and is not empty (replace it with --replace, or banger vm exec --auto-prepare)"
    )]
    NotEmpty { path: String },
    /// The base commit is not in the guest's repository.
    #[error("the base commit {base} is not in the guest's repository at {path}")]
    NoBase { base: String, path: String },
    /// The guest's checkout is gone.
    #[error("the guest has no repository at {path} any more")]
    GuestRepositoryGone { path: String },
    /// The guest script failed otherwise.
    #[error("the guest's {what} script exited with status {code}: {stderr}")]
    GuestFailed {
        what: &'static str,
        code: i32,
        stderr: String,
    },
    /// The exec session carrying the script failed.
    #[error("the {what} session failed")]
    Exec {
        what: &'static str,
        #[source]
        source: banger_agent_proto::client::exec::ExecError,
    },
    /// The export's bytes were not what the export script writes.
    #[error(transparent)]
    Export(#[from] banger_workspace::ExportError),
    /// The export's output is over the size the daemon holds.
    #[error("the export is over {limit} bytes")]
    TooLarge { limit: u64 },
}

impl OpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Fork { source, .. } => source.kind(),
            Self::VmNotFound { .. }
            | Self::ImageNotFound { .. }
            | Self::KernelNotFound { .. }
            | Self::NotInCatalog { .. } => ErrorKind::NotFound,
            Self::ExportNeedsKernelRef { .. } | Self::UnpacksTooLarge { .. } => {
                ErrorKind::BadRequest
            }
            Self::Catalog { source, .. } => catalog_kind(source),
            Self::Ambiguous { .. }
            | Self::ImageAmbiguous { .. }
            | Self::Name(_)
            | Self::Limit(_)
            | Self::VmLimit { .. }
            | Self::NothingToSet
            | Self::Signal(_)
            | Self::DiskShrink { .. }
            | Self::NotBootstrappable { .. }
            | Self::NoKernelImported
            | Self::BundleKernelMissing { .. }
            | Self::KernelSource(_)
            | Self::InputFile { .. }
            | Self::InputNotAbsolute { .. }
            | Self::ModulesNotADir { .. }
            | Self::KernelTreeNotADir { .. }
            | Self::RootfsNotClean { .. }
            | Self::FileSync { .. }
            | Self::ImageTooLarge { .. }
            | Self::CatalogPullFlag { .. } => ErrorKind::BadRequest,
            Self::Oci(e) => oci_kind(e),
            // The daemon's host lacks a usable guest agent to inject.
            Self::AgentBinMissing
            | Self::AgentBinDynamic { .. }
            | Self::AgentBinUnreadable { .. } => ErrorKind::BadRequest,
            Self::NoAddress { .. } | Self::Template { .. } => ErrorKind::Internal,
            Self::Identity { .. } => ErrorKind::Unavailable,
            Self::NameTaken { .. } | Self::ImageNameTaken { .. } | Self::KernelNameTaken { .. } => {
                ErrorKind::AlreadyExists
            }
            Self::ImageInUse { .. }
            | Self::TemplateBusy { .. }
            | Self::KernelInUse { .. }
            | Self::WrongState { .. }
            | Self::NotRunning { .. }
            | Self::Paused { .. }
            | Self::AlreadyPaused { .. }
            | Self::NotPaused { .. } => ErrorKind::Conflict,
            Self::SubnetFull { .. }
            | Self::AgentTimeout { .. }
            | Self::Agent { .. }
            | Self::AgentMux { .. }
            | Self::VmmUnavailable { .. } => ErrorKind::Unavailable,
            Self::GuestPath(_) => ErrorKind::BadRequest,
            // The agent's refusal says what was wrong (banger_agent_proto::files); an agent
            // that failed, or could not be reached, is unavailable as for any agent call.
            Self::GuestFile { source, .. } => match source {
                AgentClientError::Status { status: 404, .. } => ErrorKind::NotFound,
                AgentClientError::Status { status: 409, .. } => ErrorKind::Conflict,
                AgentClientError::Status {
                    status: 400..=499, ..
                } => ErrorKind::BadRequest,
                _ => ErrorKind::Unavailable,
            },
            Self::Cancelled => ErrorKind::Cancelled,
            Self::Store(e) => store_kind(e),
            Self::Kernel { source, .. } => kernel_kind(source),
            Self::Image { source, .. } => image_kind(source),
            Self::Disk { source, .. } => disk_kind(source),
            Self::Vmm { source, .. } => vmm_kind(source),
            Self::Net { source, .. } => net_kind(source),
            Self::Io { source, .. } => io_kind(source),
            Self::Command { detail, .. } => text_kind(detail),
            Self::Join(_) => ErrorKind::Internal,
            Self::NoWorkspace { .. } => ErrorKind::NotFound,
            Self::Workspace { source, .. } => workspace_kind(source),
            Self::SshHosts(e) => match e {
                crate::ssh_hosts::SshHostsError::Io { source, .. } => io_kind(source),
                _ => ErrorKind::Conflict,
            },
        }
    }

    /// An image row that could not be inserted: its name taken ([`StoreError::NameTaken`]),
    /// else the store's own error, classified by its constraint.
    pub fn image_insert(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken { name, .. } => Self::ImageNameTaken { name },
            other => Self::Store(other),
        }
    }

    /// A VM row that could not be inserted: its name taken ([`StoreError::NameTaken`]),
    /// else the store's own error.
    pub fn vm_insert(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken { name, .. } => Self::NameTaken { name },
            other => Self::Store(other),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// An I/O error: a full disk or quota, or a file larger than the host's filesystem holds, is
/// the host's storage; anything else is banger's own failure.
fn io_kind(e: &std::io::Error) -> ErrorKind {
    let full = matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
    );
    storage_or(full, ErrorKind::Internal)
}

/// `insufficient storage` when the host ran out of room, else `otherwise`.
fn storage_or(full: bool, otherwise: ErrorKind) -> ErrorKind {
    if full {
        ErrorKind::InsufficientStorage
    } else {
        otherwise
    }
}

/// Whether `kind` (of an I/O error or a tool's words) is a full disk or quota.
fn is_full(kind: ErrorKind) -> bool {
    kind == ErrorKind::InsufficientStorage
}

/// What a host tool printed: tools report a full disk with the C library's words.
fn text_kind(text: &str) -> ErrorKind {
    const STORAGE: [&str; 3] = [
        "No space left on device",
        "Disk quota exceeded",
        "File too large",
    ];
    storage_or(
        STORAGE.iter().any(|s| text.contains(s)),
        ErrorKind::Internal,
    )
}

/// A host program that cannot be started (not installed) makes the operation unavailable.
fn spawn_kind(e: &banger_core::runner::SpawnError) -> ErrorKind {
    storage_or(is_full(io_kind(&e.source)), ErrorKind::Unavailable)
}

/// A catalog's fault (a bad document, a download that is not what it declares) is a bad
/// request; a server that fails or cannot be reached is unavailable.
fn catalog_kind(e: &banger_catalog::CatalogError) -> ErrorKind {
    use banger_catalog::CatalogError as C;
    match e {
        C::Document { .. }
        | C::Location { .. }
        | C::TooLarge { .. }
        | C::LengthMismatch { .. }
        | C::Longer { .. }
        | C::Shorter { .. }
        | C::Sha256Mismatch { .. } => ErrorKind::BadRequest,
        C::Http { .. } | C::Status { .. } => ErrorKind::Unavailable,
        C::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            ErrorKind::NotFound
        }
        C::Read { source, .. } | C::Write { source, .. } => io_kind(source),
        C::Client(_) => ErrorKind::Internal,
    }
}

fn store_kind(e: &StoreError) -> ErrorKind {
    use banger_store::rusqlite::ErrorCode;
    match e {
        StoreError::Constraint { constraint, .. } => match **constraint {
            // Callers turn the name conflicts they expect into `NameTaken`; any other
            // uniqueness or reference conflict is a conflict with another row.
            Constraint::Unique { .. } | Constraint::ForeignKey => ErrorKind::Conflict,
            // The daemon checks values before storing them: a broken CHECK is its own bug.
            Constraint::Check { .. } | Constraint::NotNull { .. } | Constraint::Other { .. } => {
                ErrorKind::Internal
            }
        },
        // Callers turn it into the name conflict of their table; uncaught, it is a conflict.
        StoreError::NameTaken { .. } => ErrorKind::Conflict,
        // A stored value banger cannot read: its own state is broken.
        StoreError::Corrupt(_) => ErrorKind::Internal,
        StoreError::CreateDir { source, .. } => io_kind(source),
        StoreError::Open { .. }
        | StoreError::Missing { .. }
        | StoreError::Configure { .. }
        | StoreError::Migration { .. }
        | StoreError::TooNew { .. }
        | StoreError::Query { .. } => match e.sqlite_code() {
            Some(ErrorCode::DiskFull) => ErrorKind::InsufficientStorage,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
    }
}

fn disk_kind(e: &banger_disk::DiskError) -> ErrorKind {
    use banger_disk::DiskError as D;
    match e {
        D::Io { source, .. } => io_kind(source),
        D::Spawn(s) => spawn_kind(s),
        D::Command { detail, .. } => text_kind(detail),
        D::Debugfs { message, .. } => text_kind(message),
        D::UnexpectedOutput { .. } => ErrorKind::Internal,
        // The image lacks what a VM needs, or a request asks for the impossible.
        D::NotFound { .. } | D::WrongType { .. } | D::Shrink { .. } | D::Invalid { .. } => {
            ErrorKind::BadRequest
        }
        // An untrusted image (or a name taken from one) that banger refuses to act on.
        D::UnsafeDebugfsLine { .. }
        | D::NotCleanExt4 { .. }
        | D::UnsafeEntry { .. }
        | D::Ext4Read { .. } => ErrorKind::BadRequest,
    }
}

fn image_kind(e: &banger_image::ImageError) -> ErrorKind {
    use banger_image::ImageError as I;
    match e {
        I::Io { source, .. } => io_kind(source),
        // A tar that cannot be read is a bad input, unless the host ran out of room.
        I::TarRead { source, .. } => storage_or(is_full(io_kind(source)), ErrorKind::BadRequest),
        I::Entry { .. }
        | I::Compression { .. }
        | I::Bundle { .. }
        | I::Manifest { .. }
        | I::Name(_)
        | I::Sha256Mismatch { .. }
        | I::Invalid { .. } => ErrorKind::BadRequest,
        I::Disk { source, .. } => disk_kind(source),
        I::Spawn(s) => spawn_kind(s),
        I::Command { stderr_tail, .. } => text_kind(stderr_tail),
        I::Mknod { message, .. } => text_kind(message),
        I::Mise(m) => mise_kind(m),
    }
}

fn oci_kind(e: &banger_oci::OciError) -> ErrorKind {
    use banger_oci::OciError as O;
    use oci_client::errors::OciDistributionError as D;
    let registry = |e: &D| match e {
        D::ServerError { code: 404, .. } | D::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        D::AuthenticationFailure(_) | D::UnauthorizedError { .. } => ErrorKind::BadRequest,
        D::IoError(source) => storage_or(is_full(io_kind(source)), ErrorKind::Unavailable),
        _ => ErrorKind::Unavailable,
    };
    match e {
        O::BadReference { .. } | O::NoPlatform { .. } | O::Unsupported { .. } => {
            ErrorKind::BadRequest
        }
        O::DockerConfig { .. } => ErrorKind::BadRequest,
        O::Manifest { source, .. } | O::Blob { source, .. } | O::Push { source, .. } => {
            registry(source)
        }
        // The registry sent something other than what it promised.
        O::BlobStream { .. }
        | O::BlobTooLong { .. }
        | O::BlobTooShort { .. }
        | O::DigestMismatch { .. } => ErrorKind::Unavailable,
        O::Io { source, .. } => io_kind(source),
    }
}

fn mise_kind(e: &banger_image::mise::MiseError) -> ErrorKind {
    use banger_image::mise::MiseError as M;
    match e {
        // The registry (or the way to it) failed banger: not the caller's input.
        M::Http { .. }
        | M::Status { .. }
        | M::Metadata { .. }
        | M::NoSuchVersion { .. }
        | M::Integrity { .. }
        | M::TooLarge { .. }
        | M::NoBinary { .. }
        | M::Tarball { .. }
        | M::StripToolMissing => ErrorKind::Unavailable,
        M::Strip(inner) => image_kind(inner),
        M::Io { source, .. } => io_kind(source),
        M::BadVersion { .. } | M::Client(_) | M::Join(_) => ErrorKind::Internal,
    }
}

fn kernel_kind(e: &banger_kernel::KernelError) -> ErrorKind {
    use banger_kernel::KernelError as K;
    match e {
        K::NotFound { .. } | K::VersionNotFound { .. } | K::NotInStore { .. } => {
            ErrorKind::NotFound
        }
        K::BadRoot { .. }
        | K::BadVersion { .. }
        | K::UnsupportedFileType { .. }
        | K::Extract { .. }
        | K::BadName(_)
        | K::NoKernelImage { .. } => ErrorKind::BadRequest,
        K::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        // Reading the user's tree: unreadable input is theirs.
        K::Read { source, .. } => storage_or(is_full(io_kind(source)), ErrorKind::BadRequest),
        K::Write { source, .. }
        | K::Copy { source, .. }
        | K::Rename { source, .. }
        | K::Remove { source, .. } => io_kind(source),
        K::BadManifest { .. } => ErrorKind::Internal,
    }
}

fn vmm_kind(e: &banger_vmm::VmmError) -> ErrorKind {
    use banger_vmm::VmmError as V;
    match e {
        V::InvalidSpec { .. } | V::NonUtf8Path { .. } => ErrorKind::BadRequest,
        V::NoKernel { .. } => ErrorKind::NotFound,
        V::InvalidVmId { .. } | V::SocketPathTooLong { .. } | V::StaleSockets { .. } => {
            ErrorKind::Internal
        }
        V::AlreadyRunning { .. } => ErrorKind::Conflict,
        V::RunDir { source, .. } | V::OpenLog { source, .. } => io_kind(source),
        // The VMM cannot run, or refused this guest (its log tail is in the message).
        V::Spawn { .. } => ErrorKind::Unavailable,
        V::ExitedDuringStart { tail, .. } => {
            storage_or(is_full(text_kind(tail)), ErrorKind::Unavailable)
        }
        V::NotReady { .. } => ErrorKind::Unavailable,
        V::Api { .. } | V::Qmp { .. } | V::Snapshot { .. } => ErrorKind::Internal,
        V::Unsupported { .. } => ErrorKind::BadRequest,
        V::CloneDisk { source, .. } | V::GrowDisk { source, .. } => io_kind(source),
        V::CopyDisk { .. } => ErrorKind::Internal,
    }
}

fn net_kind(e: &banger_net::NetError) -> ErrorKind {
    use banger_net::NetError as N;
    match e {
        N::InvalidName(_)
        | N::NotAGuestAddress { .. }
        | N::InvalidDnsRoute(_)
        | N::InvalidGuestDns { .. } => ErrorKind::Internal,
        N::Spawn(s) => spawn_kind(s),
        N::CommandFailed { stderr, .. } => text_kind(stderr),
        N::UnexpectedOutput { .. } => ErrorKind::Internal,
        // Someone else's link is in the way: the host's state conflicts with this VM.
        N::NoSuchLink { .. }
        | N::NotABridge { .. }
        | N::NotATap { .. }
        | N::IncompatibleTap { .. } => ErrorKind::Conflict,
        // No helper to do the privileged step: this host cannot run VMs until it runs.
        N::HelperUnreachable { .. } => ErrorKind::Unavailable,
        N::HelperProtocol { .. } | N::HelperRefused { .. } => ErrorKind::Internal,
        N::HelperFailed { error } => text_kind(error),
    }
}

/// A workspace failure: the user's repository or input is `bad request`, a guest path in
/// the way a `conflict`, the guest's side or the session `unavailable`.
fn workspace_kind(e: &WorkspaceError) -> ErrorKind {
    use banger_workspace::{GitError, InspectError as I, StreamError as S};
    let git = |g: &GitError| match g {
        GitError::Spawn(s) => spawn_kind(s),
        GitError::Failed { stderr, .. } => {
            storage_or(is_full(text_kind(stderr)), ErrorKind::BadRequest)
        }
    };
    match e {
        WorkspaceError::Inspect(i) => match i {
            I::Git(g) => git(g),
            I::Unreadable { .. }
            | I::NotADirectory { .. }
            | I::NotARepository { .. }
            | I::Bare { .. }
            | I::InsideGitDir { .. }
            | I::NoCommits { .. }
            | I::Submodules { .. }
            | I::FromWithoutBranch { .. }
            | I::UnknownRef { .. }
            | I::BadBranch { .. }
            | I::LinkedWorktree { .. }
            | I::NonUtf8Path { .. } => ErrorKind::BadRequest,
        },
        WorkspaceError::Stream(st) => match st {
            S::Git(g) => git(g),
            S::Scratch { source, .. } => io_kind(source),
            S::Read { source, .. } => storage_or(is_full(io_kind(source)), ErrorKind::BadRequest),
            S::Write(_) => ErrorKind::Unavailable,
            S::MissingBase { .. } => ErrorKind::BadRequest,
        },
        WorkspaceError::Script(_) | WorkspaceError::NoBase { .. } => ErrorKind::BadRequest,
        WorkspaceError::NotEmpty { .. } => ErrorKind::Conflict,
        WorkspaceError::GuestRepositoryGone { .. } => ErrorKind::NotFound,
        WorkspaceError::GuestFailed { stderr, .. } => {
            storage_or(is_full(text_kind(stderr)), ErrorKind::Unavailable)
        }
        WorkspaceError::Exec { .. } | WorkspaceError::Export(_) => ErrorKind::Unavailable,
        WorkspaceError::TooLarge { .. } => ErrorKind::InsufficientStorage,
    }
}

/// The whole cause chain in one line: banger's one renderer, shared with the CLI and doctor.
pub use banger_core::error::chain;

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn a_guest_file_error_takes_its_kind_from_the_agent_s_status() {
        let file = |status: u16| OpError::GuestFile {
            vm: "web".into(),
            what: "read",
            path: "/root/x".into(),
            source: AgentClientError::Status {
                path: "POST /files/read".into(),
                status,
                message: "why".into(),
            },
        };
        assert_eq!(file(404).kind(), ErrorKind::NotFound);
        assert_eq!(file(409).kind(), ErrorKind::Conflict);
        assert_eq!(file(400).kind(), ErrorKind::BadRequest);
        assert_eq!(file(500).kind(), ErrorKind::Unavailable);
        assert_eq!(
            banger_core::error::chain(&file(404)),
            "VM \"web\": cannot read /root/x in the guest: agent POST /files/read: answered 404: why"
        );
        let relative = OpError::from(banger_agent_proto::files::GuestPathError::Relative(
            "x".into(),
        ));
        assert_eq!(relative.kind(), ErrorKind::BadRequest);
    }

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    fn disk(source: banger_disk::DiskError) -> OpError {
        OpError::Disk {
            vm: "web".into(),
            source: Box::new(source),
        }
    }

    fn disk_io(code: i32) -> OpError {
        disk(banger_disk::DiskError::Io {
            path: "/s/vms/x/work.ext4".into(),
            op: "set the length of",
            source: os(code),
        })
    }

    fn store_err(sql_setup: &'static str, sql: &str) -> StoreError {
        store_err_as(sql_setup, sql, |s, e| s.write_error("write")(e))
    }

    /// The error `sql` makes, as an insert of `name` into `images` reports it.
    fn image_insert_err(sql_setup: &'static str, sql: &str, name: &str) -> StoreError {
        store_err_as(sql_setup, sql, |s, e| {
            s.insert_error("insert", "images", name)(e)
        })
    }

    fn store_err_as(
        sql_setup: &'static str,
        sql: &str,
        wrap: impl FnOnce(&banger_store::Store, banger_store::rusqlite::Error) -> StoreError,
    ) -> StoreError {
        let dir = tempfile::tempdir().unwrap();
        let s = banger_store::Store::open_with(
            &dir.path().join("t.db"),
            &[banger_store::Migration {
                id: 1,
                name: "t",
                sql: sql_setup,
            }],
        )
        .unwrap();
        let e = s.conn().execute_batch(sql).unwrap_err();
        wrap(&s, e)
    }

    #[test]
    fn adversarial_full_disks_are_insufficient_storage() {
        for code in [libc::ENOSPC, libc::EDQUOT, libc::EFBIG] {
            assert_eq!(
                disk_io(code).kind(),
                ErrorKind::InsufficientStorage,
                "{code}"
            );
            let e = OpError::Io {
                op: "create",
                path: "/s".into(),
                source: os(code),
            };
            assert_eq!(e.kind(), ErrorKind::InsufficientStorage);
        }
        // A tool that says so (mkfs.ext4, resize2fs, debugfs, cp).
        let tool = disk(banger_disk::DiskError::Command {
            command: "resize2fs /s/work.ext4".into(),
            code: Some(1),
            detail: "resize2fs: No space left on device while trying to resize".into(),
        });
        assert_eq!(tool.kind(), ErrorKind::InsufficientStorage);
        let image = OpError::Image {
            what: "read bundle",
            source: Box::new(banger_image::ImageError::Disk {
                step: "copy rootfs",
                source: banger_disk::DiskError::Io {
                    path: "/s".into(),
                    op: "write",
                    source: os(libc::ENOSPC),
                },
            }),
        };
        assert_eq!(image.kind(), ErrorKind::InsufficientStorage);
        // Other I/O failures stay banger's own.
        assert_eq!(disk_io(libc::EIO).kind(), ErrorKind::Internal);
    }

    #[test]
    fn adversarial_user_input_is_not_internal() {
        let bundle = OpError::Image {
            what: "read bundle",
            source: Box::new(banger_image::ImageError::Bundle {
                bundle: "/x.tar.zst".into(),
                reason: "no manifest.json".into(),
            }),
        };
        assert_eq!(bundle.kind(), ErrorKind::BadRequest);
        let unreadable_tar = OpError::Image {
            what: "read bundle",
            source: Box::new(banger_image::ImageError::TarRead {
                tar: "/x.tar.zst".into(),
                entry: None,
                source: io::Error::new(io::ErrorKind::InvalidData, "bad zstd frame"),
            }),
        };
        assert_eq!(unreadable_tar.kind(), ErrorKind::BadRequest);
        let no_kernel = OpError::Kernel {
            name: "host".into(),
            source: Box::new(banger_kernel::KernelError::NotFound {
                root: "/empty".into(),
                looked_for: "boot/vmlinuz-*".into(),
                found: Vec::new(),
            }),
        };
        assert_eq!(no_kernel.kind(), ErrorKind::NotFound);
        let shrink = disk(banger_disk::DiskError::Shrink {
            image: "/w".into(),
            current: 2,
            requested: 1,
        });
        assert_eq!(shrink.kind(), ErrorKind::BadRequest);
        let no_tool = disk(banger_disk::DiskError::Spawn(
            banger_core::runner::SpawnError {
                command: "mkfs.ext4 x".into(),
                source: os(libc::ENOENT),
            },
        ));
        assert_eq!(no_tool.kind(), ErrorKind::Unavailable);
        let exited = OpError::Vmm {
            vm: "web".into(),
            source: Box::new(banger_vmm::VmmError::ExitedDuringStart {
                vm_id: "x".into(),
                bin: "/usr/bin/firecracker".into(),
                status: "exit status 1".into(),
                log: "/s/vmm.log".into(),
                tail: "Invalid ELF magic number".into(),
            }),
        };
        assert_eq!(exited.kind(), ErrorKind::Unavailable);
        let limit = OpError::from(LimitError {
            what: "cpus",
            min: "1".into(),
            max: "32".into(),
            set_by: "Firecracker accepts",
            got: "33".into(),
        });
        assert_eq!(limit.kind(), ErrorKind::BadRequest);
    }

    #[test]
    fn adversarial_constraints_are_not_already_exists() {
        let setup = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, ip TEXT UNIQUE, \
                     n INTEGER CHECK (n > 0));";
        let unique_ip = store_err(
            setup,
            "INSERT INTO t VALUES (1, 'a', 'x', 1); INSERT INTO t VALUES (2, 'b', 'x', 1);",
        );
        assert!(unique_ip.is_unique_conflict("t", "ip"));
        let e = OpError::Store(unique_ip);
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("same ip"), "{e}");
        let check = OpError::Store(store_err(setup, "INSERT INTO t VALUES (1, 'a', 'x', 0);"));
        assert_eq!(check.kind(), ErrorKind::Internal);
        // Only the caller's match on UNIQUE(name) says "already exists".
        let name = image_insert_err(
            "CREATE TABLE images (id TEXT PRIMARY KEY, name TEXT UNIQUE);",
            "INSERT INTO images VALUES ('1', 'a'); INSERT INTO images VALUES ('2', 'a');",
            "a",
        );
        let e = OpError::image_insert(name);
        assert!(matches!(e, OpError::ImageNameTaken { .. }), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let other = image_insert_err(
            "CREATE TABLE images (id TEXT PRIMARY KEY, name TEXT UNIQUE);",
            "INSERT INTO images VALUES ('1', 'a'); INSERT INTO images VALUES ('1', 'b');",
            "b",
        );
        let e = OpError::image_insert(other);
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e:?}");
    }
}
