//! What the daemon is handed at start: its directories, config and build.

use std::path::PathBuf;

use banger_core::build::BuildInfo;
use banger_core::config::Config;
use banger_core::layout::Layout;

/// Everything the daemon is handed at start.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub layout: Layout,
    /// The static guest agent injected into images banger builds.
    pub agent_bin: Option<PathBuf>,
    pub config: Config,
    pub config_warnings: Vec<String>,
    pub build: BuildInfo,
}
