//! `POST /identity`: what a VM restored from a template (a snapshot of another, booted guest)
//! is told before it is reported ready, so that nothing of the template's identity survives
//! in it. The agent answers the VM's new SSH host public keys ([`HostKeys`](crate::wire::HostKeys)).
//!
//! The agent, in order: steps the clock to [`Identity::time_unix_ns`]; feeds
//! [`Identity::entropy`] into the kernel pool (`RNDADDENTROPY`, counted as entropy) and forces
//! a reseed of the kernel's CRNG (`RNDRESEEDCRNG`), so the two restored guests' random streams
//! part at once; writes [`Identity::files`] (hostname, hosts, resolver, network contract);
//! sets the hostname; gives the network interface [`Identity::mac`], drops its old addresses
//! and neighbours and runs the network bootstrap again; writes a fresh `/etc/machine-id`;
//! replaces the SSH host keys (the types there were) and has sshd reload them; grows the file
//! systems of [`Identity::grow`] (online `resize2fs`).

use serde::{Deserialize, Serialize};

/// `POST`: give the guest its own identity.
pub const IDENTITY_PATH: &str = "/identity";

/// Most bytes of entropy one request carries.
pub const MAX_ENTROPY: usize = 512;

/// The body of `POST /identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The VM's hostname.
    pub hostname: String,
    /// Files to write (whole, mode 0644, atomically): `/etc/hostname`, `/etc/hosts`,
    /// `/etc/resolv.conf`, `/etc/banger/network.env`, ...
    pub files: Vec<IdentityFile>,
    /// The MAC address the guest's network interface must have, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// Fresh random bytes from the host, as lowercase hex (32 to [`MAX_ENTROPY`] bytes).
    pub entropy: String,
    /// The host's wall clock when it sent the request, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// Block devices whose (mounted) ext4 file systems are grown to the device's size.
    #[serde(default)]
    pub grow: Vec<String>,
}

/// One file of an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityFile {
    /// Absolute guest path.
    pub path: String,
    pub content: String,
}

/// `bytes` as lowercase hex, for [`Identity::entropy`].
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string, `None` when it is not one.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips_and_refuses_other_text() {
        assert_eq!(super::hex(&[0, 0xab, 7]), "00ab07");
        assert_eq!(super::unhex("00ab07"), Some(vec![0, 0xab, 7]));
        assert_eq!(super::unhex("0"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}
