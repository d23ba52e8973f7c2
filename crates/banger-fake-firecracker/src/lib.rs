//! banger-fake-firecracker: a test double for Firecracker.
//!
//! No machine banger's tests run on can start Firecracker, so the daemon's
//! tests start this instead, exactly as they would start `firecracker`:
//! `banger-fake-firecracker --api-sock PATH --id ID`. It serves Firecracker's
//! API on the Unix socket, accepting exactly what `firecracker.yaml` (Swagger
//! 2.0, 1.17.0-dev, embedded) accepts and refusing the rest with Firecracker's
//! status codes and fault messages ([`schema`], [`api`]); it keeps the
//! microVM's configuration and run state with Firecracker's rules ([`state`]);
//! it prints a plausible serial console on stdout ([`console`]); and once
//! booted it relays host-initiated vsock connections for the agent's port to a
//! real `banger-agent` it runs in host mode ([`vsock`]), in a mount namespace where `/root`
//! is a private directory of that fake VM, so what banger writes to a guest's `/root`
//! never reaches the host's.
//!
//! Deliberate differences from Firecracker, all in the direction of a test
//! double: no guest runs (boot and shutdown are console lines); the kernel is
//! not parsed (an empty file is refused at `InstanceStart`, anything else
//! boots); snapshots are the fake's own JSON plus a sparse memory file, and
//! only the `File` memory backend loads; `--config-file`, `--no-api` and
//! `--metadata` are not accepted; socket files are removed on exit.
//!
//! With `BANGER_FAKE_FC_LOG=FILE` every API request received is appended to
//! FILE as one JSON line `{"method","path","body"}` ([`api::RequestLog`]).

pub mod api;
pub mod console;
mod runtime;
pub mod schema;
pub mod state;
pub mod vsock;

use std::io::{self, Write};
use std::path::PathBuf;

use crate::state::VmOptions;
use crate::vsock::AgentLookupError;

/// The Firecracker version the fake reports (`info.version` of the embedded spec).
pub const FIRECRACKER_VERSION: &str = "1.17.0-dev";

/// Firecracker's default HTTP API payload limit, in bytes.
pub const HTTP_MAX_PAYLOAD_SIZE: usize = 51_200;

/// Firecracker's exit code for a command line it cannot parse.
pub const EXIT_ARG_PARSING: u8 = 153;
/// Firecracker's exit code for a bad configuration (e.g. an unknown log level).
pub const EXIT_BAD_CONFIGURATION: u8 = 152;
/// Firecracker's generic error exit code.
pub const EXIT_GENERIC_ERROR: u8 = 1;

/// Everything the fake needs, decided by the binary.
pub struct Config {
    /// `--api-sock`: must not exist yet.
    pub api_sock: PathBuf,
    /// `BANGER_FAKE_FC_LOG`.
    pub request_log: Option<PathBuf>,
    /// The agent binary, or why there is none.
    pub agent_bin: Result<PathBuf, AgentLookupError>,
    /// The serial console (the process stdout).
    pub console: Box<dyn Write + Send>,
    /// Instance id, logger and metrics from the command line.
    pub vm: VmOptions,
    /// `--http-api-max-payload-size`.
    pub max_payload: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_sock", &self.api_sock)
            .field("request_log", &self.request_log)
            .field("agent_bin", &self.agent_bin)
            .field("vm", &self.vm)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

/// How the process should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit with this status.
    Code(u8),
    /// Die by this signal (re-raised with its default action).
    Signal(i32),
}

/// Why the fake could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The API socket path is taken (Firecracker's exact wording).
    #[error("Failed to open the API socket at: {}. Check that it is not already used.", path.display())]
    BindApiSocket {
        /// `--api-sock`.
        path: PathBuf,
        /// The bind error.
        source: io::Error,
    },
    /// The embedded spec does not parse (a build defect).
    #[error(transparent)]
    Spec(#[from] schema::SpecError),
    /// `BANGER_FAKE_FC_LOG` cannot be opened.
    #[error(transparent)]
    RequestLog(#[from] api::RequestLogError),
    /// `--log-path` cannot be opened.
    #[error("Could not initialize logger: Failed to open target file {}", path.display())]
    Logger {
        /// The log file.
        path: PathBuf,
        /// The open error.
        source: io::Error,
    },
    /// `--metrics-path` cannot be opened.
    #[error("Could not initialize metrics: Failed to open target file {}", path.display())]
    Metrics {
        /// The metrics file.
        path: PathBuf,
        /// The open error.
        source: io::Error,
    },
    /// Signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    /// The async runtime cannot start.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(io::Error),
}

/// Why `--id` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceIdError {
    /// Too short or too long.
    #[error("invalid len ({0});  the length must be between 1 and 64")]
    InvalidLen(usize),
    /// A character other than alphanumerics and `-`.
    #[error("invalid char ({0}) at position {1}")]
    InvalidChar(char, usize),
}

/// Firecracker's `validate_instance_id`: 1 to 64 alphanumerics or `-`.
pub fn validate_instance_id(id: &str) -> Result<(), InstanceIdError> {
    if id.is_empty() || id.len() > 64 {
        return Err(InstanceIdError::InvalidLen(id.len()));
    }
    match id
        .chars()
        .enumerate()
        .find(|(_, c)| !(*c == '-' || c.is_alphanumeric()))
    {
        Some((i, c)) => Err(InstanceIdError::InvalidChar(c, i)),
        None => Ok(()),
    }
}

/// Runs the fake on a current-thread runtime (the agent's parent-death signal
/// is tied to the thread that spawned it, which must live as long as the
/// process) until it is told to exit.
pub fn run(config: Config) -> Result<Exit, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(runtime::run(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_the_spec() {
        let spec = schema::Spec::embedded().expect("spec");
        assert_eq!(spec.version(), Some(FIRECRACKER_VERSION));
    }

    #[test]
    fn instance_ids_follow_firecracker() {
        assert_eq!(validate_instance_id("banger-vm-1"), Ok(()));
        assert_eq!(
            validate_instance_id(""),
            Err(InstanceIdError::InvalidLen(0))
        );
        assert_eq!(
            validate_instance_id(&"a".repeat(65)),
            Err(InstanceIdError::InvalidLen(65))
        );
        assert_eq!(
            validate_instance_id("a_b"),
            Err(InstanceIdError::InvalidChar('_', 1))
        );
    }

    #[test]
    fn bind_error_reads_like_firecracker() {
        let err = RunError::BindApiSocket {
            path: PathBuf::from("fc.sock"),
            source: io::Error::new(io::ErrorKind::AddrInUse, "Address in use"),
        };
        assert_eq!(
            err.to_string(),
            "Failed to open the API socket at: fc.sock. Check that it is not already used."
        );
    }
}
