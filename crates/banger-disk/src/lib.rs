//! banger's disk primitives: copying images cheaply and building, growing, reading and
//! editing ext4 images as plain files -- no mount, no loop device, no root.
//!
//! - [`copy`]: [`clone_file`], a reflink when the filesystem can, else a sparse copy.
//! - [`ext4`]: [`mkfs_from_dir`], [`grow`], [`size_of_tree`], [`default_image_size`].
//! - [`debugfs`]: the [`Debugfs`] edit batch (one `debugfs -w` run, errors detected per
//!   command, every command line checked so none can become a shell command) and reads:
//!   [`stat`], [`exists`], [`read_file`], [`list_dir`].
//! - [`guest`]: the per-VM guest configuration ([`GuestConfig`], [`write_guest_config`])
//!   and [`authorize_ssh_key`]; [`write_private_files`] (root-owned files with a mode) and
//!   [`read_optional_file`].
//! - [`work`]: work seeds and per-VM work disks ([`make_work_seed`], [`clone_work_disk`]);
//!   the seed copies the image's `/root` with a reader of banger's own (`extract`) that
//!   never lets the image's names choose a host path.
//!
//! Temporary files (debugfs command files, staged contents, seed trees) live in private
//! directories under a `scratch` directory every caller hands in, never in `/tmp`.
//!
//! External programs (`mkfs.ext4`, `debugfs`, `e2fsck`, `resize2fs`) run through the
//! [`CommandRunner`](banger_core::runner::CommandRunner) seam; every failure names the
//! image and the command line. The library never prints; commands are logged by the
//! runner with `tracing` at debug level.

pub mod copy;
pub mod debugfs;
mod error;
pub mod ext4;
mod extract;
pub mod guest;
pub mod work;

pub use copy::{CloneKind, clone_file};
pub use debugfs::{
    Debugfs, DirEntry, FileKind, Inode, check_line, exists, list_dir, read_file, run_command_file,
    stat,
};
pub use error::DiskError;
pub use ext4::{check_clean, default_image_size, grow, mkfs_from_dir, size_of_tree};
pub use guest::{
    GuestConfig, GuestFile, OwnedFile, authorize_ssh_key, merge_fstab, read_optional_file,
    write_guest_config, write_private_files,
};
pub use work::{clone_work_disk, make_work_seed};
