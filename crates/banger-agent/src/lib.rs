//! banger's guest agent.
//!
//! It runs as root in every VM and answers the host over HTTP/1.1: `GET /healthz` (build
//! identity, uptime, hostname) and `GET /ports` (listening sockets with their processes). The
//! wire types, constants and the host's client live in `banger-agent-proto`; this crate is
//! the guest's side only.
//!
//! - [`procfs`]: listening sockets and machine facts read from `/proc`.
//! - [`serial`]: an async stream over the virtio-serial character device.
//! - [`server`]: the HTTP server and its vsock, Unix socket and serial transports.

pub mod procfs;
pub mod serial;
pub mod server;
