//! Choosing a VMM binary: the config file's choice, else an environment variable's (both
//! read by the caller), else its name on `PATH` — the host probe's rule
//! ([`banger_core::probe::locate`], which `banger doctor` uses too).

use std::ffi::OsStr;
use std::path::PathBuf;

pub use banger_core::probe::{BinarySource, LocateError};

/// Chooses a VMM binary: the config file's choice, else the environment variable's, else
/// `source.name` in a directory of `path_var` (`PATH`). The caller reads the environment;
/// empty values count as unset. An explicit choice that is not an executable file is an
/// error, not a reason to fall through to the next source.
pub fn locate_binary(
    source: &BinarySource,
    config_bin: Option<PathBuf>,
    env_bin: Option<std::ffi::OsString>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, LocateError> {
    let path = banger_core::probe::SearchPath::from_var(path_var);
    banger_core::probe::locate(source, config_bin.as_deref(), env_bin.as_deref(), &path)
        .map(|located| located.path)
}
