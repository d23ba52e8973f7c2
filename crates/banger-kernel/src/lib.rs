//! Importing Linux kernels into banger's kernel store.
//!
//! - [`find`]: locate a kernel, its initrd and modules in a tree (`/`, an unpacked root
//!   filesystem, or a directory of loose files), choosing among versions.
//! - [`extract`]: turn a compressed x86 bzImage into the uncompressed ELF `vmlinux` that
//!   Firecracker needs (QEMU boots the bzImage itself).
//! - [`store`]: stage, verify and publish a kernel directory under `state/kernels`.
//! - [`version`]: version-aware ordering (`6.10 > 6.9`).
//!
//! Everything here is synchronous file work; the daemon runs it on a blocking thread and
//! keeps the records in its database.

pub mod error;
pub mod extract;
pub mod find;
pub mod store;
pub mod version;

pub use error::KernelError;
pub use extract::{Compression, Extraction, Route, SetupHeader, extract_vmlinux};
pub use find::{Choice, Found, find_kernel};
pub use store::{
    DroppedSymlink, KernelFiles, KernelManifest, KernelPaths, MANIFEST_FILE, StoreEntry, import,
    kernel_dir, list, read_manifest, remove,
};
pub use version::compare_versions;
