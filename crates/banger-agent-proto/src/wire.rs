//! The wire contract between the guest agent and the daemon.
//!
//! The agent speaks HTTP/1.1 with JSON bodies: `GET /healthz` answers [`Health`], `GET /ports`
//! answers [`Ports`], `GET /host-keys` answers [`HostKeys`], and every failure answers
//! [`ErrorBody`] with a non-2xx status.

use serde::{Deserialize, Serialize};

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 10789;

/// Name of the virtio-serial port the agent serves on; in the guest it appears as
/// `/dev/virtio-ports/banger.agent`.
pub const SERIAL_PORT_NAME: &str = "banger.agent";

/// Where the guest exposes the agent's virtio-serial port.
pub const GUEST_SERIAL_PATH: &str = "/dev/virtio-ports/banger.agent";

/// Answer to `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Version of the agent binary.
    pub version: String,
    /// Commit the agent binary was built from.
    pub commit: String,
    /// Seconds since the Unix epoch at which the agent binary was built.
    pub build_epoch: u64,
    /// Seconds since the machine the agent runs on booted (`/proc/uptime`).
    pub uptime_secs: u64,
    /// The machine's hostname (`/proc/sys/kernel/hostname`).
    pub hostname: String,
}

/// Transport protocol of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// Address family of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One socket that accepts traffic: a TCP socket in LISTEN state or an unconnected UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub proto: Proto,
    pub family: Family,
    /// The bound local address, e.g. `0.0.0.0`, `127.0.0.1`, `::` or `::ffff:127.0.0.1`.
    pub address: String,
    pub port: u16,
    /// The process holding the socket (the lowest pid when several share it), when known.
    pub pid: Option<u32>,
    /// The process name from `/proc/<pid>/comm`.
    pub process: Option<String>,
    /// The process command line from `/proc/<pid>/cmdline`, arguments joined by spaces.
    pub command: Option<String>,
}

/// Answer to `GET /ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub listeners: Vec<Listener>,
}

/// The path of the guest's SSH host public keys.
pub const HOST_KEYS_PATH: &str = "/host-keys";

/// Answer to `GET /host-keys`: the guest's SSH host public keys, one `ssh_host_*_key.pub`
/// line each (`TYPE BASE64 [COMMENT]`), by file name. Empty when the guest has none (no
/// sshd). The guest is not trusted: the host checks every line before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeys {
    pub keys: Vec<String>,
}

/// Body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_json_shape() {
        let l = Listener {
            proto: Proto::Udp,
            family: Family::Ipv6,
            address: "::".to_string(),
            port: 53,
            pid: None,
            process: None,
            command: None,
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["proto"], "udp");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["port"], 53);
        assert!(v["pid"].is_null());
        let back: Listener = serde_json::from_value(v).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn guest_serial_path_uses_port_name() {
        assert!(GUEST_SERIAL_PATH.ends_with(SERIAL_PORT_NAME));
    }
}
