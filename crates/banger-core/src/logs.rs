//! Names of the logs a VM's guest and VMM write, shared by the daemon (which caps them) and
//! the CLI (which prints them).

use std::path::{Path, PathBuf};

/// File name of a VM's console log (the guest's serial output) in its state directory.
pub const CONSOLE_LOG: &str = "console.log";
/// File name of a VM's VMM log (the VMM's stderr) in its state directory.
pub const VMM_LOG: &str = "vmm.log";

/// Where the older part of `log` is kept after a rotation: `<log>.1`.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_path_appends_dot_one() {
        assert_eq!(
            rotated_path(Path::new("/s/vms/x/console.log")),
            Path::new("/s/vms/x/console.log.1")
        );
    }
}
