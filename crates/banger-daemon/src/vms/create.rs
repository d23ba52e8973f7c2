//! Create: validate, allocate and insert the row, prepare disks, boot; or roll all of it back.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use banger_api::types::{CreateVm, MacAddr, Vm, VmState};
use banger_core::names::validate_vm_name;
use banger_net::plan::{allocate, mac_for_ip, tap_name_for};
use banger_store::{ImageRow, VmRow};
use tokio_util::sync::CancellationToken;

use super::boot::{boot, release};
pub use super::disks::{DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_WORK_DISK, check_settings};
use super::disks::{ensure_work_seed, guest_config, write_disks};
use super::lookup::resolve_image;
use super::vmm::kill_vmms_of;
use crate::error::{OpError, chain};
use crate::progress::Progress;
use crate::state::{AppState, ImagesGuard};
use crate::templates::Lookup;

/// A friendly default name: adjective-noun, made unique with a number when needed.
fn generate_name(taken: &BTreeSet<String>) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lucky", "merry",
        "nimble", "proud", "quick", "silly", "witty", "zesty",
    ];
    const NOUN: &[&str] = &[
        "otter", "falcon", "badger", "heron", "lynx", "marten", "newt", "osprey", "panda", "quail",
        "raven", "stoat", "tapir", "walrus", "yak", "zebra",
    ];
    let seed = uuid::Uuid::new_v4().as_u128();
    let base = format!(
        "{}-{}",
        ADJ[(seed % ADJ.len() as u128) as usize],
        NOUN[((seed >> 16) % NOUN.len() as u128) as usize]
    );
    if !taken.contains(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !taken.contains(n))
        .unwrap_or(base)
}

/// An image that no local image matches is pulled from the catalogs (and its kernel from
/// the kernel catalogs) before the create goes on; one no catalog lists stays a "not found".
/// Runs before the image lock: the pull takes it to register.
async fn auto_pull(
    state: &Arc<AppState>,
    image_ref: &str,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(), OpError> {
    let images = state.db(|s| s.list_images())?;
    match resolve_image(&images, image_ref) {
        Err(OpError::ImageNotFound { .. }) => {}
        _ => return Ok(()),
    }
    let Some(found) = crate::catalogs::find_image(state, image_ref).await? else {
        return Ok(());
    };
    progress.stage(
        "pulling from catalog",
        format!("{image_ref} from {}", found.catalog),
    );
    match crate::catalogs::pull_image(state, &found, Default::default(), progress, cancel).await {
        // A concurrent create pulled it first.
        Err(OpError::ImageNameTaken { .. }) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates and boots a VM, streaming stages. On failure or cancellation nothing remains.
pub async fn create(
    state: Arc<AppState>,
    req: CreateVm,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Vm, OpError> {
    if let Some(name) = &req.name {
        validate_vm_name(name)?;
    }
    let vmm_kind = req.vmm.unwrap_or_else(|| state.host.vmms.default_kind());
    let vmm = state
        .host
        .vmms
        .get(vmm_kind)
        .cloned()
        .map_err(|why| OpError::VmmUnavailable {
            kind: vmm_kind,
            why,
        })?;
    check_settings(&req.resources, &vmm.limits())?;
    let image_ref = req
        .image
        .clone()
        .unwrap_or_else(|| state.opts.config.default_image.clone());
    progress.stage("resolve image", image_ref.clone());
    auto_pull(&state, &image_ref, &progress, &cancel).await?;
    // Lock order (see [`Locks`](crate::state::Locks)): the image lock first, held from resolving the image until
    // its work seed is ready (the VM's row names the image by then, so it cannot be deleted
    // under the VM), then the new VM's lock.
    let images_guard = tokio::select! {
        g = state.locks.images() => g,
        _ = cancel.cancelled() => return Err(OpError::Cancelled),
    };
    let images = state.db(|s| s.list_images())?;
    let image = resolve_image(&images, &image_ref)?.clone();
    let kernel = state.kernel_of(&image)?;

    // Allocate name, id, address, MAC, TAP and vsock CID, and insert the row: one step under
    // the store mutex, so concurrent creates never get the same lease.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = state.vm_dir(&id);
    let check = (vmm.as_ref(), kernel.clone(), image.init);
    let row = insert_leased(
        &state,
        req.name.as_deref(),
        check,
        |Lease { name, ip, cid }| VmRow {
            id: id.clone(),
            name,
            image_id: image.id.clone(),
            state: VmState::Creating,
            vmm: vmm.kind(),
            cpus: req.resources.cpus.map_or(DEFAULT_CPUS, |c| c as u32),
            memory_mib: req
                .resources
                .memory_mib
                .map_or(DEFAULT_MEMORY_MIB, |m| m as u64),
            disk_bytes: req
                .resources
                .disk_bytes
                .unwrap_or(image.rootfs_bytes)
                .max(image.rootfs_bytes),
            work_disk_bytes: req
                .resources
                .work_disk_bytes
                .unwrap_or(DEFAULT_WORK_DISK.bytes()),
            nat: req.nat.unwrap_or(false),
            ip: Some(ip),
            mac: Some(MacAddr(mac_for_ip(ip))),
            tap: Some(tap_name_for(&id)),
            vsock_cid: Some(cid),
            pid: None,
            vmm_start_time: None,
            dir: dir.display().to_string(),
            error: None,
            created_at: state.now(),
            started_at: None,
            origin: req.origin.unwrap_or_default(),
            paused: false,
        },
    )?;
    let lock = state.locks.vm(&row.id);
    let _guard = lock.lock().await;
    let cold = req.cold.unwrap_or(false);
    let result = tokio::select! {
        r = create_steps(&state, row.clone(), &image, images_guard, &progress, cold) => r,
        _ = cancel.cancelled() => Err(OpError::Cancelled),
    };
    match result {
        Ok(vm) => Ok(vm),
        Err(e) => {
            tracing::warn!(vm = %row.name, error = %chain(&e), "create failed; rolling back");
            rollback_create(&state, &row).await;
            Err(e)
        }
    }
}

/// What a new VM leases: its name, address and vsock CID.
pub(super) struct Lease {
    pub name: String,
    pub ip: Ipv4Addr,
    pub cid: u32,
}

/// Inserts the row `make` builds from a lease (the name `name`, refused when taken, or a
/// generated one; a free address and vsock CID): one step under the store mutex, so
/// concurrent creates never get the same lease. Nothing exists for the VM yet: a spec its
/// backend refuses (`check`: the backend, the kernel files and the init it boots with)
/// inserts nothing.
pub(super) fn insert_leased(
    state: &AppState,
    name: Option<&str>,
    check: (
        &dyn banger_vmm::Vmm,
        banger_vmm::KernelFiles,
        banger_core::guest_init::GuestInit,
    ),
    make: impl FnOnce(Lease) -> VmRow,
) -> Result<VmRow, OpError> {
    let (vmm, kernel, init) = check;
    state.db(|s| -> Result<VmRow, OpError> {
        let rows = s.list_vms()?;
        let names: BTreeSet<String> = rows.iter().map(|r| r.name.clone()).collect();
        let name = match name {
            Some(n) if names.contains(n) => return Err(OpError::NameTaken { name: n.into() }),
            Some(n) => n.to_string(),
            None => generate_name(&names),
        };
        let used: BTreeSet<Ipv4Addr> = rows.iter().filter_map(|r| r.ip).collect();
        let ip = allocate(&state.subnet, &used).ok_or_else(|| OpError::SubnetFull {
            subnet: state.subnet.to_string(),
        })?;
        let cids: BTreeSet<u32> = rows.iter().filter_map(|r| r.vsock_cid).collect();
        let cid = (3u32..).find(|c| !cids.contains(c)).unwrap_or(3);
        let row = make(Lease { name, ip, cid });
        vmm.validate(&state.spec_with(&row, kernel, init))
            .map_err(|source| OpError::Vmm {
                vm: row.name.clone(),
                source: Box::new(source),
            })?;
        s.insert_vm(&row).map_err(OpError::vm_insert)?;
        Ok(row)
    })
}

async fn create_steps(
    state: &Arc<AppState>,
    mut row: VmRow,
    image: &ImageRow,
    images_guard: ImagesGuard<'_>,
    progress: &Progress,
    cold: bool,
) -> Result<Vm, OpError> {
    if !cold {
        match super::warm::template_for(state, image, &row) {
            // The image lock is held across the restore: the template is not removed under it.
            Lookup::Found(template) => {
                match super::warm::restore(state, &mut row, &template, progress).await {
                    Ok(()) => {
                        progress.stage(
                            "ready",
                            format!("ready in {:.1}s", progress.elapsed().as_secs_f64()),
                        );
                        return Ok(state.vm_view(&row));
                    }
                    Err(e) => {
                        progress.stage(
                        "warm start",
                        format!(
                            "warning: restoring from template {} failed, it is removed and the VM boots cold: {}",
                            template.dir.display(),
                            chain(&e)
                        ),
                    );
                        tracing::warn!(vm = %row.name, error = %chain(&e), "restore failed; booting cold");
                        {
                            let _lock = state.templates.lock().await;
                            state.templates.remove_dir(&template.dir);
                        }
                        undo_restore(state, &mut row).await?;
                    }
                }
            }
            Lookup::Removed { dir, why } => {
                progress.stage(
                    "warm start",
                    format!(
                        "warning: template {} is unusable ({why}), it is removed and the VM boots cold",
                        dir.display()
                    ),
                );
                if state.opts.config.warm_start {
                    super::warm::make_in_background(state, image, &row)
                }
            }
            Lookup::Absent if state.opts.config.warm_start => {
                super::warm::make_in_background(state, image, &row)
            }
            Lookup::Absent => {}
        }
    }
    progress.stage(
        "prepare disks",
        format!("{}", PathBuf::from(&row.dir).display()),
    );
    prepare_disks(state, &row, image, images_guard).await?;
    boot(state, &mut row, progress).await?;
    progress.stage(
        "ready",
        format!("ready in {:.1}s", progress.elapsed().as_secs_f64()),
    );
    Ok(state.vm_view(&row))
}

/// Clones the image's disks for the VM and writes its identity into them. The image lock
/// (`images_guard`) is released as soon as the image's work seed is ready.
async fn prepare_disks(
    state: &Arc<AppState>,
    row: &VmRow,
    image: &ImageRow,
    images_guard: ImagesGuard<'_>,
) -> Result<(), OpError> {
    let seed = ensure_work_seed(state, image, &images_guard).await?;
    drop(images_guard);
    write_disks(state, row, image, &seed, guest_config(state, row)?).await
}

/// Undoes a failed restore of `row` so that it can boot cold: its VMM killed, its network
/// released, its directory emptied; the row back to `creating` without a pid.
async fn undo_restore(state: &Arc<AppState>, row: &mut VmRow) -> Result<(), OpError> {
    if let Ok(Some(current)) = state.db(|s| s.get_vm(&row.id)) {
        *row = current;
    }
    kill_vmms_of(state, row).await;
    release(state, row).await;
    let dir = PathBuf::from(&row.dir);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(OpError::io("remove", &dir)(e));
    }
    row.pid = None;
    row.vmm_start_time = None;
    row.state = VmState::Creating;
    state.set_vm(row)?;
    Ok(())
}

/// Removes every trace of a VM whose creation did not finish.
pub async fn rollback_create(state: &Arc<AppState>, row: &VmRow) {
    let current = state.db(|s| s.get_vm(&row.id)).ok().flatten();
    let row = current.as_ref().unwrap_or(row);
    kill_vmms_of(state, row).await;
    release(state, row).await;
    let dir = PathBuf::from(&row.dir);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(vm = %row.name, error = %e, "cannot remove VM dir");
    }
    if let Err(e) = state.db(|s| s.delete_vm(&row.id)) {
        tracing::error!(vm = %row.name, error = %chain(&e), "cannot delete VM row");
    }
    super::boot::forget_host_keys(state, row);
    state.locks.forget(&row.id);
}

#[cfg(test)]
mod tests {
    use banger_api::types::VmSettings;
    use banger_vmm::VmmKind;

    use super::*;

    #[test]
    fn resources_are_checked_against_the_backend() {
        let check = |kind: VmmKind, cpus, memory_mib, disk_bytes| {
            check_settings(
                &VmSettings {
                    cpus,
                    memory_mib,
                    disk_bytes,
                    work_disk_bytes: None,
                },
                &kind.limits(),
            )
        };
        use VmmKind::{Firecracker as Fc, Qemu};
        assert!(check(Fc, Some(0), None, None).is_err());
        assert!(check(Fc, Some(-1), None, None).is_err());
        assert!(check(Fc, None, Some(0), None).is_err());
        assert!(check(Fc, None, Some(-512), None).is_err());
        assert!(check(Fc, Some(2), Some(512), None).is_ok());
        assert!(check(Fc, None, None, Some(0)).is_err());
        assert!(check(Fc, Some(32), None, None).is_ok());
        let e = check(Fc, Some(33), None, None).unwrap_err();
        assert!(matches!(e, OpError::Limit(_)), "{e:?}");
        assert_eq!(e.kind(), banger_api::ErrorKind::BadRequest);
        assert!(e.to_string().contains("between 1 and 32"), "{e}");
        assert!(check(Qemu, Some(33), None, None).is_ok());
        assert!(check(Qemu, Some(256), None, None).is_err());
        assert!(check(Qemu, None, Some(991 << 10), None).is_err());
        assert!(check(Fc, None, Some(991 << 10), None).is_ok());
        assert!(check(Fc, None, None, Some(u64::MAX)).is_err());
    }

    #[test]
    fn generated_names_are_valid_and_unique() {
        let mut taken = BTreeSet::new();
        for _ in 0..300 {
            let n = generate_name(&taken);
            validate_vm_name(&n).unwrap();
            assert!(taken.insert(n));
        }
    }
}
