//! Structured logs: one JSON object per line, appended to `bangerd.log` in the state dir.
//! The level comes from `BANGER_LOG` (any `tracing` filter, e.g. `debug` or
//! `banger_daemon=trace`) or the config's `log_level`. The file is opened with `O_NOFOLLOW`
//! and must be a regular file of the daemon's user (see [`banger_core::private::open_file`]).

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Installs the global JSON subscriber writing to `file` (owned by `euid`). Called once, by
/// `bangerd`'s main.
pub fn init(file: &Path, level: &str, euid: u32) -> std::io::Result<()> {
    let out = banger_core::private::open_file(file, banger_core::private::FileMode::Append, euid)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let filter = EnvFilter::try_new(level).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("log level {level:?} is invalid: {e}"),
        )
    })?;
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(Mutex::new(out))
        .try_init()
        .map_err(|e| std::io::Error::other(e.to_string()))
}
