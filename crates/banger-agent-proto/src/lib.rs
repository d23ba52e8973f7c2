//! The protocol between banger's guest agent and the host, and the host's side of it.
//!
//! The agent (`banger-agent`, in every guest) serves HTTP/1.1 with JSON bodies; the daemon,
//! the CLI and the VMM backends only need the contract and a client, not the guest server, so
//! they depend on this crate alone.
//!
//! - [`wire`]: the JSON types and constants shared by the agent and the host.
//! - [`files`]: the file endpoints' types (read, write, list by absolute guest path).
//! - [`identity`]: what a guest restored from a template is told to become (`POST /identity`).
//! - [`exec`]: the exec protocol (an HTTP upgrade, then frames) and its frame codec.
//! - [`mux`]: the multiplexer that carries several sessions over one virtio-serial stream.
//! - [`client`]: the host's side: Firecracker's hybrid vsock handshake, Unix sockets, requests
//!   (over `banger-http`, with the answer capped).

pub mod client;
pub mod exec;
pub mod files;
pub mod identity;
pub mod mux;
pub mod wire;
