//! The guest's SSH host public keys, for `GET /host-keys`: the host records them in its own
//! known_hosts so that ssh to the guest checks them strictly.
//!
//! Every VM makes its own host keys at first boot (`banger-firstboot.service`, which leaves
//! a marker file when it is done, keys or not). The agent may answer before that unit
//! finished, so while the unit is installed and its marker absent the read waits (up to
//! [`HostKeyFiles::wait`]) instead of answering a half-made set. A guest without the unit
//! (or whose first boot is long done) is read at once.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_agent_proto::wire::HostKeys;

/// The first-boot unit that makes the host keys (see `banger-image`'s guest contract).
pub const FIRSTBOOT_UNIT: &str = "/etc/systemd/system/banger-firstboot.service";
/// The marker that unit leaves once it ran.
pub const FIRSTBOOT_DONE: &str = "/etc/banger/firstboot-done";
/// Where sshd keeps its host keys.
pub const SSH_DIR: &str = "/etc/ssh";

/// Longest `.pub` file read; a real one is well under 1 KiB (RSA 16384 is about 3 KiB).
const MAX_KEY_FILE: u64 = 16 << 10;

/// Where the host keys are and how long to wait for a first boot making them.
#[derive(Debug, Clone)]
pub struct HostKeyFiles {
    /// The directory of `ssh_host_*_key.pub` ([`SSH_DIR`]).
    pub dir: PathBuf,
    /// The unit that makes them ([`FIRSTBOOT_UNIT`]).
    pub maker: PathBuf,
    /// Its marker ([`FIRSTBOOT_DONE`]).
    pub done: PathBuf,
    /// The longest wait for the marker.
    pub wait: Duration,
}

/// A host key file that exists but cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", path.display())]
pub struct HostKeyError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl HostKeyFiles {
    /// A guest's paths, waiting up to 20 s (ed25519 and ecdsa take well under a second even
    /// on an emulated CPU).
    pub fn guest() -> Self {
        Self {
            dir: PathBuf::from(SSH_DIR),
            maker: PathBuf::from(FIRSTBOOT_UNIT),
            done: PathBuf::from(FIRSTBOOT_DONE),
            wait: Duration::from_secs(20),
        }
    }

    /// [`guest`](Self::guest)'s paths under the directory `root` instead of `/`.
    pub fn under(root: &Path) -> Self {
        let at = |path: &str| root.join(path.trim_start_matches('/'));
        Self {
            dir: at(SSH_DIR),
            maker: at(FIRSTBOOT_UNIT),
            done: at(FIRSTBOOT_DONE),
            ..Self::guest()
        }
    }

    /// The keys, sorted by file name, once a first boot under way is done (or the wait is
    /// over). Blocking.
    pub fn read(&self) -> Result<HostKeys, HostKeyError> {
        let deadline = Instant::now() + self.wait;
        while self.maker.exists() && !self.done.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut names: Vec<String> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(HostKeyError {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        names.sort();
        let mut keys = Vec::new();
        for name in names {
            let path = self.dir.join(&name);
            if let Some(line) = first_line(&path)? {
                keys.push(line);
            }
        }
        Ok(HostKeys { keys })
    }
}

/// The first non-empty line of a regular file, at most [`MAX_KEY_FILE`] of it read; `None`
/// for a file that went away or is not a regular file.
fn first_line(path: &Path) -> Result<Option<String>, HostKeyError> {
    let fail = |source| HostKeyError {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e)),
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e)),
    };
    let mut text = String::new();
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .map_err(fail)?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> HostKeyFiles {
        HostKeyFiles {
            dir: dir.join("ssh"),
            maker: dir.join("firstboot.service"),
            done: dir.join("firstboot-done"),
            wait: Duration::from_secs(5),
        }
    }

    #[test]
    fn public_keys_are_read_and_private_ones_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::create_dir_all(&f.dir).unwrap();
        std::fs::write(
            f.dir.join("ssh_host_ed25519_key.pub"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA root@vm\n",
        )
        .unwrap();
        std::fs::write(
            f.dir.join("ssh_host_ecdsa_key.pub"),
            "\necdsa-sha2-nistp256 AAAAE2VjZHNh root@vm\n",
        )
        .unwrap();
        std::fs::write(f.dir.join("ssh_host_ed25519_key"), "PRIVATE").unwrap();
        std::fs::write(f.dir.join("sshd_config"), "Port 22\n").unwrap();
        std::fs::create_dir(f.dir.join("ssh_host_dir_key.pub")).unwrap();
        assert_eq!(
            f.read().unwrap().keys,
            [
                "ecdsa-sha2-nistp256 AAAAE2VjZHNh root@vm",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA root@vm"
            ]
        );
    }

    #[test]
    fn no_ssh_dir_is_no_keys() {
        let dir = tempfile::tempdir().unwrap();
        assert!(files(dir.path()).read().unwrap().keys.is_empty());
    }

    #[test]
    fn a_first_boot_under_way_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::write(&f.maker, "[Unit]\n").unwrap();
        let (ssh, done) = (f.dir.clone(), f.done.clone());
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::create_dir_all(&ssh).unwrap();
            std::fs::write(ssh.join("ssh_host_ed25519_key.pub"), "ssh-ed25519 AAAA\n").unwrap();
            std::fs::write(done, "").unwrap();
        });
        let t = Instant::now();
        assert_eq!(f.read().unwrap().keys, ["ssh-ed25519 AAAA"]);
        assert!(t.elapsed() >= Duration::from_millis(300));
        maker.join().unwrap();
    }

    #[test]
    fn a_first_boot_that_never_finishes_is_waited_for_no_longer_than_told() {
        let dir = tempfile::tempdir().unwrap();
        let f = HostKeyFiles {
            wait: Duration::from_millis(200),
            ..files(dir.path())
        };
        std::fs::write(&f.maker, "[Unit]\n").unwrap();
        let t = Instant::now();
        assert!(f.read().unwrap().keys.is_empty());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
