//! Several agent sessions over one byte stream, for QEMU's virtio-serial port.
//!
//! # Why
//!
//! Under Firecracker every host connection to the vsock socket is its own guest connection,
//! so each request or exec session simply opens one. QEMU's virtio-serial port is a single
//! byte stream (the host end is one chardev socket that takes one client at a time; the guest
//! reopens its end after each disconnect), so a long exec session would block every health
//! check, and two sessions could not run at once. The stream is therefore multiplexed.
//!
//! # How
//!
//! The host sends `GET /mux` with `Connection: Upgrade` and `Upgrade: yamux/1` ([`UPGRADE_MUX`])
//! as the first request on the stream; after the agent's `101 Switching Protocols` the stream
//! carries [yamux](https://github.com/hashicorp/yamux/blob/master/spec.md) (the `yamux` crate,
//! host in client mode, agent in server mode, settings from [`config`]). Every substream the
//! host opens is served exactly like a vsock connection: HTTP/1.1 with `GET /healthz`,
//! `GET /ports` and the `GET /exec` upgrade ([`crate::exec`]). So the protocol above the
//! transport is one, and a client that does not ask for `/mux` (today's health checks over
//! the serial socket) keeps working unchanged: the upgrade is opt-in per stream.
//!
//! yamux was chosen over a home-made stream-id framing because it is a specified, widely used
//! protocol with a maintained implementation (libp2p's), and it brings what a hand-rolled
//! framing would have to reinvent: per-stream flow control (a 256 KiB window per substream, so
//! one session whose reader stalls never blocks the others or makes either side buffer
//! without bound), half-close, and resets.
//!
//! When the underlying stream ends (the host closed the chardev socket, the daemon
//! restarted), every substream ends with it; the agent's exec sessions then see their host
//! gone and kill their processes, and the agent reopens the port for the next host.

/// The path of the multiplexer upgrade request.
pub const MUX_PATH: &str = "/mux";

/// The `Upgrade` protocol token of the multiplexer.
pub const UPGRADE_MUX: &str = "yamux/1";

/// Most substreams open at once on one multiplexed stream.
pub const MAX_STREAMS: usize = 64;

/// The yamux settings both sides use: at most [`MAX_STREAMS`] substreams and a receive window
/// of 256 KiB per substream, so a peer can make the other buffer at most 16 MiB per stream.
pub fn config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    // Fewer streams first: the connection window must cover the default 256 KiB window of
    // every stream (yamux asserts it), and this one lets no stream grow beyond that.
    cfg.set_max_num_streams(MAX_STREAMS);
    cfg.set_max_connection_receive_window(Some(MAX_STREAMS * 256 * 1024));
    cfg
}
