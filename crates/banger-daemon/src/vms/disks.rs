//! What a VM's disks are made from and with: the VM defaults and their checks, the guest
//! configuration of a row, the image's work seed, the disks of a booted VM, and the note a
//! restored VM's directory keeps (used by `create`, `boot` and `warm`, below all three).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::types::VmSettings;
use banger_core::limits::VmLimits;
use banger_core::size::ByteSize;
use banger_store::{ImageRow, VmRow};

use crate::error::OpError;
use crate::state::{AppState, ImagesGuard};

pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
pub const DEFAULT_WORK_DISK: ByteSize = ByteSize::gib(8);
/// Size of an image's work seed (sparse: only the image's /root contents take space).
const WORK_SEED_SIZE: u64 = 256 << 20;

/// Checks requested resources against `limits`, the VM's backend's ([`Vmm::limits`](banger_vmm::Vmm::limits)), before
/// anything is made or stored (the CLI checks banger's own caps first): at least 1 CPU, 1 MiB
/// and 1 byte; at most the backend's vCPUs and memory and banger's disk cap, with the real
/// limit in the message.
pub fn check_settings(s: &VmSettings, limits: &VmLimits) -> Result<(), OpError> {
    Ok(banger_core::limits::check(&s.requested(), limits)?)
}

/// The file in a restored VM's directory saying what it was restored from and how its disks
/// were cloned (`vm show`).
pub const RESTORED: &str = "restored.json";

/// What [`RESTORED`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Restored {
    pub template: String,
    pub disk_clone: String,
}

/// The note in a forked VM's directory: what it was forked from ([`Forked`]).
pub const FORKED: &str = "forked.json";

/// What [`FORKED`] holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forked {
    /// The original VM's name when it was forked.
    pub from: String,
    /// How its disks were copied: `reflink` or `sparse copy` (or the backend's way).
    pub disk_copy: String,
    /// `loaded` (the memory was in the saved state, copied into the fork's RAM) or
    /// `shared` (a memory file mapped copy-on-write).
    pub memory: String,
}

/// What a forked VM's directory says about its fork, if it was forked.
pub fn forked(dir: &Path) -> Option<Forked> {
    serde_json::from_slice(&std::fs::read(dir.join(FORKED)).ok()?).ok()
}

/// What a restored VM's directory says about its restore, if it was restored.
pub fn restored(dir: &Path) -> Option<Restored> {
    serde_json::from_slice(&std::fs::read(dir.join(RESTORED)).ok()?).ok()
}

/// What the guest of `row` is configured with: its hostname, address, resolver, MAC.
pub(super) fn guest_config(
    state: &AppState,
    row: &VmRow,
) -> Result<banger_disk::guest::GuestConfig, OpError> {
    let ip: Ipv4Addr = row.ip.ok_or_else(|| OpError::NoAddress {
        vm: row.name.clone(),
    })?;
    Ok(banger_disk::guest::GuestConfig {
        hostname: row.name.clone(),
        ip,
        prefix: state.subnet.prefix(),
        gateway: state.subnet.gateway(),
        dns: state.guest_dns.clone(),
        // `web` is `web.vm` when the daemon serves the zone to guests.
        search: if state.opts.config.dns {
            vec![banger_net::resolved::VM_DOMAIN.to_string()]
        } else {
            Vec::new()
        },
        mac: row.mac.map(|m| m.to_string()).unwrap_or_default(),
    })
}

/// Clones `image`'s root file system into `row`'s directory (grown to its size) with
/// `guest` written in, and its work disk from the work `seed` with banger's SSH key.
pub(super) async fn write_disks(
    state: &Arc<AppState>,
    row: &VmRow,
    image: &ImageRow,
    seed: &Path,
    guest: banger_disk::guest::GuestConfig,
) -> Result<(), OpError> {
    let dir = PathBuf::from(&row.dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(OpError::io("create", &dir))?;
    let runner = state.host.runner.clone();
    let vm = row.name.clone();
    let rootfs = PathBuf::from(&image.rootfs);
    let root = dir.join("root.ext4");
    let work = dir.join("work.ext4");
    let seed = seed.to_path_buf();
    let (disk_bytes, work_bytes) = (row.disk_bytes, row.work_disk_bytes);
    let pubkey = state.ssh.public_key.clone();
    let tmp = state.scratch_dir();
    tokio::task::spawn_blocking(move || -> Result<(), banger_disk::DiskError> {
        banger_disk::copy::clone_file(&rootfs, &root)?;
        if disk_bytes > std::fs::metadata(&root).map(|m| m.len()).unwrap_or(0) {
            banger_disk::ext4::grow(runner.as_ref(), &root, disk_bytes)?;
        }
        banger_disk::guest::write_guest_config(runner.as_ref(), &root, &guest, &tmp)?;
        banger_disk::work::clone_work_disk(runner.as_ref(), &seed, &work, work_bytes)?;
        banger_disk::guest::authorize_ssh_key(runner.as_ref(), &work, &pubkey, &tmp)?;
        Ok(())
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(|source| OpError::Disk {
        vm,
        source: Box::new(source),
    })
}

/// The image's work seed, made once; the caller holds the image lock (`_images`).
pub(super) async fn ensure_work_seed(
    state: &Arc<AppState>,
    image: &ImageRow,
    _images: &ImagesGuard<'_>,
) -> Result<PathBuf, OpError> {
    let current = state.db(|s| s.get_image(&image.id))?;
    if let Some(seed) = current.and_then(|i| i.work_seed)
        && Path::new(&seed).exists()
    {
        return Ok(PathBuf::from(seed));
    }
    let out = PathBuf::from(&image.dir).join("work-seed.ext4");
    let runner = state.host.runner.clone();
    let rootfs = PathBuf::from(&image.rootfs);
    let out2 = out.clone();
    let tmp = state.scratch_dir();
    tokio::task::spawn_blocking(move || {
        banger_disk::work::make_work_seed(runner.as_ref(), &rootfs, &out2, WORK_SEED_SIZE, &tmp)
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(|source| OpError::Disk {
        vm: format!("(image {})", image.name),
        source: Box::new(source),
    })?;
    let seed = out.display().to_string();
    state.db(|s| s.set_image_work_seed(&image.id, &seed))?;
    Ok(out)
}
