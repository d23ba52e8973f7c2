//! banger's guest agent.
//!
//! It runs as root in every VM and answers the host over HTTP/1.1: `GET /healthz` (build
//! identity, uptime, hostname), `GET /ports` (listening sockets with their processes), and
//! two upgrades: `GET /exec` (run a command) and `GET /mux` (many streams over one). The
//! wire types, constants and the host's client live in `banger-agent-proto`; this crate is
//! the guest's side only.
//!
//! - [`exec`]: running a command for the host, stdio streamed, signals and a pty.
//! - [`mux`]: serving several streams over one (the virtio-serial port).
//! - [`procfs`]: listening sockets and machine facts read from `/proc`.
//! - [`serial`]: an async stream over the virtio-serial character device.
//! - [`server`]: the HTTP server and its vsock, Unix socket and serial transports.

pub mod exec;
pub mod mux;
pub mod procfs;
pub mod serial;
pub mod server;
