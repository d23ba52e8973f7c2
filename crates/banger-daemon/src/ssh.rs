//! The managed SSH key: an ed25519 key pair under the state dir (`ssh/id_ed25519`, mode 0600),
//! made by `ssh-keygen` the first time the daemon starts. Its public half is authorised in
//! every VM's work disk (mounted at `/root`) at create.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_core::runner::CommandRunner;

use crate::error::OpError;

/// The key pair's paths and public line.
#[derive(Debug, Clone)]
pub struct SshKey {
    pub private_key: PathBuf,
    pub public_key: String,
}

/// Loads the managed key, creating it when absent.
pub fn ensure_key(runner: &dyn CommandRunner, state_dir: &Path) -> Result<SshKey, OpError> {
    let dir = state_dir.join("ssh");
    std::fs::create_dir_all(&dir).map_err(OpError::io("create", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(OpError::io("chmod", &dir))?;
    let private_key = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    if !private_key.exists() || !public.exists() {
        let _ = std::fs::remove_file(&private_key);
        let _ = std::fs::remove_file(&public);
        let args: Vec<String> = [
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "banger",
            "-f",
            &private_key.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = runner
            .run("ssh-keygen", &args)
            .map_err(|e| OpError::Command {
                what: "ssh-keygen",
                detail: e.to_string(),
            })?;
        if !out.success() {
            return Err(OpError::Command {
                what: "ssh-keygen",
                detail: format!("{}: {}", out.command, out.stderr.trim()),
            });
        }
    }
    std::fs::set_permissions(&private_key, std::fs::Permissions::from_mode(0o600))
        .map_err(OpError::io("chmod", &private_key))?;
    let public_key = std::fs::read_to_string(&public)
        .map_err(OpError::io("read", &public))?
        .trim()
        .to_string();
    Ok(SshKey {
        private_key,
        public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::SystemRunner;

    #[test]
    fn creates_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = ensure_key(&SystemRunner::new(), dir.path()).unwrap();
        assert!(
            k1.public_key.starts_with("ssh-ed25519 "),
            "{}",
            k1.public_key
        );
        let mode = std::fs::metadata(&k1.private_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = ensure_key(&SystemRunner::new(), dir.path()).unwrap();
        assert_eq!(k1.public_key, k2.public_key, "the key is reused");
    }
}
