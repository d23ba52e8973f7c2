//! Request and response bodies.

use std::path::PathBuf;

use banger_core::build::BuildInfo;
use serde::{Deserialize, Serialize};

/// `GET /v1/status`: who the running daemon is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub build: BuildInfo,
    pub pid: u32,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config_file: PathBuf,
    pub log_file: PathBuf,
    /// Seconds since the Unix epoch when the daemon started.
    pub started_at: u64,
    /// Network listeners the daemon runs besides its socket (DNS, web UI...).
    pub listeners: Vec<Listener>,
    pub ops: OpCounts,
    /// Warnings from loading the config file.
    #[serde(default)]
    pub config_warnings: Vec<String>,
}

/// A network service of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    pub address: String,
}

/// Request accounting since the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OpCounts {
    pub in_flight: u64,
    pub completed: u64,
    /// Requests whose client went away before the answer: their work was dropped.
    pub cancelled: u64,
}

/// `POST /v1/shutdown`: the daemon stops after answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReply {
    pub pid: u32,
}
