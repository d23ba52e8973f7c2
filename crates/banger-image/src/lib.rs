//! banger's root filesystem images, built as plain files without mounting, root or a
//! container engine.
//!
//! - [`flatten`]: rootfs tar streams (OCI layers, an mmdebstrap tar) into a staging
//!   [`Tree`]: a host directory plus every entry's owner, group, mode and type.
//! - [`guest`]: the guest payload every image carries (agent, network bootstrap,
//!   first-boot host keys, modules-load config, enable links).
//! - [`bundle`]: [`build_rootfs`] (tree → ext4 with owners and modes re-applied),
//!   [`make_bundle`] (→ `<name>.tar.zst` with `rootfs.ext4` and `manifest.json`) and
//!   [`read_bundle`].
//! - [`bootstrap`]: a Debian root filesystem tar from packages ([`debian_rootfs_tar`],
//!   mmdebstrap).
//! - [`mise`]: the prebuilt `mise` binary the golden image ships, fetched from the npm
//!   registry, verified, stripped and cached ([`mise::fetch`]).
//!
//! External programs (`mkfs.ext4`, `debugfs`, `mmdebstrap`) run through the
//! [`CommandRunner`](banger_core::runner::CommandRunner) seam. The library never prints:
//! progress goes to a caller-supplied callback. Every output is staged and published by
//! rename: a failure leaves nothing behind.

pub mod bootstrap;
pub mod bundle;
mod error;
pub mod flatten;
pub mod guest;
pub mod mise;

pub use bootstrap::{DebianBootstrap, Variant, debian_rootfs_tar};
pub use bundle::{
    BundleInfo, MakeBundle, Manifest, RootfsOptions, RootfsReport, build_rootfs, make_bundle,
    read_bundle,
};
pub use error::ImageError;
pub use flatten::{EntryKind, LayerReport, Meta, TarInput, Tree, flatten, flatten_limited};
