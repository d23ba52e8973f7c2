//! Choosing a VMM binary: the config file's choice, else an environment variable's (both
//! read by the caller), else its name on `PATH`.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

/// Where a VMM binary comes from: its name on `PATH`, the config key and environment variable
/// that choose it explicitly, and how to install it.
#[derive(Debug, Clone, Copy)]
pub struct BinarySource {
    pub name: &'static str,
    pub config_key: &'static str,
    pub env_var: &'static str,
    pub install_hint: &'static str,
}

/// Why no VMM binary could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{config_key} {} (from the config file) cannot be used: {reason}", path.display())]
    Config {
        config_key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{env_var}={} cannot be used: {reason}", path.display())]
    Env {
        env_var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "no `{name}` executable on PATH ({searched}): {install_hint}, or set {config_key} in the config file or {env_var}"
    )]
    NotOnPath {
        name: &'static str,
        config_key: &'static str,
        env_var: &'static str,
        install_hint: &'static str,
        searched: String,
    },
}

/// Why `path` is not an executable regular file, if it is not.
fn unusable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match fs::metadata(path) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_file() => Some("not a regular file".to_string()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("not executable".to_string()),
        Ok(_) => None,
    }
}

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
    if let Some(path) = config_bin.filter(|p| !p.as_os_str().is_empty()) {
        return match unusable(&path) {
            None => Ok(path),
            Some(reason) => Err(LocateError::Config {
                config_key: source.config_key,
                path,
                reason,
            }),
        };
    }
    if let Some(path) = env_bin.filter(|p| !p.is_empty()).map(PathBuf::from) {
        return match unusable(&path) {
            None => Ok(path),
            Some(reason) => Err(LocateError::Env {
                env_var: source.env_var,
                path,
                reason,
            }),
        };
    }
    let path_var = path_var.unwrap_or_default();
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(source.name))
        .find(|candidate| unusable(candidate).is_none())
        .ok_or_else(|| LocateError::NotOnPath {
            name: source.name,
            config_key: source.config_key,
            env_var: source.env_var,
            install_hint: source.install_hint,
            searched: path_var.to_string_lossy().into_owned(),
        })
}
