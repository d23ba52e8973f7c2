//! The protocol between banger's guest agent and the host, and the host's side of it.
//!
//! The agent (`banger-agent`, in every guest) serves HTTP/1.1 with JSON bodies; the daemon,
//! the CLI and the VMM backends only need the contract and a client, not the guest server, so
//! they depend on this crate alone.
//!
//! - [`wire`]: the JSON types and constants shared by the agent and the host.
//! - [`client`]: the host's side: Firecracker's hybrid vsock handshake, Unix sockets, requests
//!   (over `banger-http`, with the answer capped).

pub mod client;
pub mod wire;
