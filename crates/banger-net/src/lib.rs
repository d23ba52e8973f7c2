//! Host networking for banger VMs: the bridge, one TAP device per VM, and optional
//! per-VM NAT.
//!
//! - [`plan`]: pure planning: the bridge [`Subnet`], guest address
//!   allocation, guest MACs derived from IPs, TAP names and interface-name checks.
//! - [`ops`]: the [`NetOps`] trait the daemon holds (as
//!   `Arc<dyn NetOps>`), and [`DirectNetOps`], which performs the
//!   operations with `ip` and `nft` when the process has `CAP_NET_ADMIN`.
//! - [`helper`]: the root helper's contract (typed requests, the policy every request
//!   passes) and [`helper::HelperNetOps`], the same trait over the helper's socket, for a
//!   daemon without that privilege.
//! - [`resolved`]: `.vm` routing for the host through systemd-resolved ([`DnsRoute`], the
//!   `resolvectl` command lines, detecting resolved).
//! - [`runner`] (re-exported from `banger-core`): the [`CommandRunner`] seam and the real
//!   [`SystemRunner`], which can target a network namespace.
//! - `fake` (tests, and the `fake` feature): `FakeNetOps`, a model of the host's network
//!   that records calls and fails the operations a test chooses.
//!
//! The library never prints; commands it runs are logged with `tracing` at debug
//! level.

#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod helper;
pub mod ops;
pub mod plan;
pub mod resolved;
pub use banger_core::runner;

pub use ops::{DirectNetOps, NetError, NetOps};
pub use plan::Subnet;
pub use resolved::DnsRoute;
pub use runner::{CommandRunner, SystemRunner};
