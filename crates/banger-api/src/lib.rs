//! The daemon's API: HTTP+JSON over a Unix socket.
//!
//! - [`types`]: request and response bodies, shared by `bangerd` and `banger`.
//! - [`routes`]: the route templates the daemon mounts and the paths the client asks.
//! - [`error`]: the error body every failed request returns, and its kinds.
//! - [`client`]: a small HTTP/1.1 client over the daemon's Unix socket.
//! - [`probe`]: waiting for a guest's sshd, shared by the daemon and the CLI.
//!
//! Every response carries the request's operation id in the [`OP_ID_HEADER`] header; the same
//! id is in the daemon's log lines for that request and in error bodies.

pub mod client;
pub mod error;
pub mod probe;
pub mod routes;
pub mod types;

pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorKind};
pub use routes::Route;

/// Response header carrying the operation id.
pub const OP_ID_HEADER: &str = "x-banger-op";
/// Version prefix of every route.
pub const API_PREFIX: &str = "/v1";
