//! banger's guest agent.
//!
//! It runs as root in every VM and answers the host over HTTP/1.1: `GET /healthz` (build
//! identity, uptime, hostname), `GET /ports` (listening sockets with their processes),
//! `GET /host-keys` (the guest's SSH host public keys), `POST /files/read|write|list` (guest
//! files by absolute path), and
//! two upgrades: `GET /exec` (run a command) and `GET /mux` (many streams over one). The
//! wire types, constants and the host's client live in `banger-agent-proto`; this crate is
//! the guest's side only.
//!
//! - [`exec`]: running a command for the host, stdio streamed, signals and a pty.
//! - [`files`]: reading, writing (atomically) and listing guest files for the host.
//! - [`host_keys`]: the guest's SSH host public keys, once its first boot made them.
//! - [`init`]: banger's minimal init, when the kernel starts the agent as PID 1.
//! - [`kmod`]: loading kernel modules without `modprobe` (for [`init`]).
//! - [`net`]: the network from `network.env` over rtnetlink (for [`init`]).
//! - [`mux`]: serving several streams over one (the virtio-serial port).
//! - [`procfs`]: listening sockets and machine facts read from `/proc`.
//! - [`serial`]: an async stream over the virtio-serial character device.
//! - [`server`]: the HTTP server and its vsock, Unix socket and serial transports.

pub mod exec;
pub mod files;
pub mod host_keys;
pub mod identity;
pub mod init;
pub mod kmod;
pub mod mux;
pub mod net;
pub mod procfs;
pub mod serial;
pub mod server;

/// An error and its causes in one line: the workspace's one renderer, what the agent logs
/// and answers.
pub use banger_core::error::chain as error_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn messages_name_the_context_and_the_chain_adds_the_cause_once() {
        let e = server::ServerError::BindUnix {
            path: PathBuf::from("/run/a.sock"),
            source: std::io::Error::other("address in use"),
        };
        assert_eq!(e.to_string(), "cannot listen on unix socket /run/a.sock");
        assert_eq!(
            error_chain(&e),
            "cannot listen on unix socket /run/a.sock: address in use"
        );
    }
}
