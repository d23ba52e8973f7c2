//! banger's guest agent.
//!
//! It runs as root in every VM and answers the daemon over HTTP/1.1: `GET /healthz` (build
//! identity, uptime, hostname) and `GET /ports` (listening sockets with their processes).
//!
//! - [`proto`]: the JSON types and constants shared with the daemon.
//! - [`procfs`]: listening sockets and machine facts read from `/proc`.
//! - [`serial`]: an async stream over the virtio-serial character device.
//! - [`server`]: the HTTP server and its vsock, Unix socket and serial transports.
//! - [`client`]: the daemon's side: Firecracker's hybrid vsock handshake and requests.
//! - [`capped`]: reading an untrusted HTTP body up to a limit.

pub mod capped;
pub mod client;
pub mod procfs;
pub mod proto;
pub mod serial;
pub mod server;
