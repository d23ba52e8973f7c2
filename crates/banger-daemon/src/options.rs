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
    /// The owner's home (the entry point's `HOME`): where host integration reads the git
    /// identity, agent auth files and `file_sync` files from; `None` skips it.
    pub home: Option<PathBuf>,
    pub build: BuildInfo,
}
