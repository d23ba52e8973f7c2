//! `vm fork`: a second VM restored from a running VM's state, on copies of its disks, with
//! its own identity; the original goes on as it was.
//!
//! # Steps, under the original's lock and the fork's
//!
//! 1. **pause** the original (recorded, so a daemon that dies here leaves it visibly paused);
//! 2. **save state**: [`Vmm::snapshot`](banger_vmm::Vmm::snapshot) into the fork's own
//!    `snapshot/` directory, kept while the fork lives (a backend whose restore maps the
//!    memory file needs it there);
//! 3. **copy disks**: [`Vmm::copy_disk`](banger_vmm::Vmm::copy_disk) of both disks while
//!    the original is paused — copies, not overlays over the original's files, because the
//!    original keeps writing to its files the moment it resumes: a reflink where the file
//!    system has them (O(1), blocks shared until written), else a sparse copy (the disks'
//!    data, written once). Neither VM ever sees the other's later writes;
//! 4. **resume original**, before the fork is restored: the original is paused only for the
//!    save and the copies;
//! 5. **restore**: the fork's row (its own name, address, MAC, TAP, vsock CID) is brought up
//!    with [`StartMode::Restore`](banger_vmm::StartMode::Restore) on its own devices and
//!    given its identity exactly as a warm restore is
//!    ([`launch_restored`](super::warm::launch_restored)).
//!
//! A step that fails (or a client that goes away) resumes the original if the fork paused
//! it, removes the fork's row, disks, snapshot and TAP, and the error names the step.
//!
//! # Memory
//!
//! A snapshot whose memory file the backend did not write carries the memory in its state:
//! the fork's RAM is then loaded from it (`vm show`: memory `loaded`) — QEMU, whose VMs not
//! booted as a template have anonymous RAM. A backend that writes a memory file and maps it
//! copy-on-write on restore (Firecracker's `File` memory backend) shares it (`shared`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::types::{ForkVm, MacAddr, Vm, VmState};
use banger_core::names::validate_vm_name;
use banger_net::plan::{mac_for_ip, tap_name_for};
use banger_store::VmRow;
use banger_vmm::{Restore, SnapshotFiles};
use tokio_util::sync::CancellationToken;

use super::actions::{reload, set_paused};
use super::create::{Lease, insert_leased, rollback_create};
use super::disks::{FORKED, Forked};
use crate::error::{OpError, chain};
use crate::progress::Progress;
use crate::state::AppState;

/// The fork's directory for the original's saved state.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// `banger vm fork REF --name NEW` (see the module docs).
pub async fn fork(
    state: Arc<AppState>,
    reference: String,
    req: ForkVm,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Vm, OpError> {
    validate_vm_name(&req.name)?;
    let found = state.find_vm(&reference)?;
    let lock = state.locks.vm(&found.id);
    let _original_guard = lock.lock().await;
    let original = reload(&state, &found.id)?;
    if original.state != VmState::Running {
        return Err(OpError::NotRunning { vm: original.name });
    }
    let vmm = state.vmm_of(&original)?;
    if !vmm.snapshots() {
        return Err(OpError::Vmm {
            vm: original.name.clone(),
            source: Box::new(vmm.unsupported(&original.id, "snapshots")),
        });
    }
    let image = state
        .db(|s| s.get_image(&original.image_id))?
        .ok_or_else(|| OpError::ImageNotFound {
            reference: original.image_id.clone(),
        })?;
    let kernel = state.kernel_of(&image)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let check = (vmm.as_ref(), kernel, image.init);
    let row = insert_leased(&state, Some(&req.name), check, |Lease { name, ip, cid }| {
        VmRow {
            id: id.clone(),
            name,
            state: VmState::Creating,
            ip: Some(ip),
            mac: Some(MacAddr(mac_for_ip(ip))),
            tap: Some(tap_name_for(&id)),
            vsock_cid: Some(cid),
            pid: None,
            vmm_start_time: None,
            dir: state.vm_dir(&id).display().to_string(),
            error: None,
            created_at: state.now(),
            started_at: None,
            origin: Default::default(),
            paused: false,
            ..original.clone()
        }
    })?;
    let fork_lock = state.locks.vm(&row.id);
    let _fork_guard = fork_lock.lock().await;
    let was_paused = original.paused;
    let result = tokio::select! {
        r = steps(&state, original.clone(), row.clone(), &progress) => r,
        _ = cancel.cancelled() => Err(OpError::Cancelled),
    };
    match result {
        Ok(vm) => Ok(vm),
        Err(e) => {
            tracing::warn!(vm = %row.name, from = %original.name, error = %chain(&e), "fork failed; rolling back");
            // The original first: it is paused only as long as it must be.
            if !was_paused
                && let Ok(mut now) = reload(&state, &original.id)
                && now.paused
                && let Err(resume) = set_paused(&state, &mut now, false).await
            {
                tracing::error!(vm = %now.name, error = %chain(&resume), "cannot resume the original after a failed fork");
            }
            rollback_create(&state, &row).await;
            Err(e)
        }
    }
}

/// The fork's steps (see the module docs); each failure names its step.
async fn steps(
    state: &Arc<AppState>,
    mut original: VmRow,
    mut row: VmRow,
    progress: &Progress,
) -> Result<Vm, OpError> {
    let from = original.name.clone();
    let at = |step: &'static str| {
        let from = from.clone();
        move |source: OpError| OpError::Fork {
            vm: from,
            step,
            source: Box::new(source),
        }
    };
    let vm_err = |source| OpError::Vmm {
        vm: from.clone(),
        source: Box::new(source),
    };
    let vmm = state.vmm_of(&original)?;
    let dir = PathBuf::from(&row.dir);
    let snapshot_dir = dir.join(SNAPSHOT_DIR);
    tokio::fs::create_dir_all(&snapshot_dir)
        .await
        .map_err(OpError::io("create", &snapshot_dir))?;
    let was_paused = original.paused;
    if !was_paused {
        progress.stage("pause", original.name.clone());
        set_paused(state, &mut original, true)
            .await
            .map_err(at("pause"))?;
    }
    let spec = state.spec(&original)?;
    let files = SnapshotFiles::in_dir(&snapshot_dir);
    progress.stage("save state", files.state.display().to_string());
    let running = vmm
        .find_live(&spec)
        .await
        .ok_or_else(|| OpError::NotRunning {
            vm: original.name.clone(),
        })
        .map_err(at("save state"))?;
    vmm.snapshot(&running, &files)
        .await
        .map_err(vm_err)
        .map_err(at("save state"))?;
    progress.stage("copy disks", dir.display().to_string());
    let mut how = None;
    for (src, name) in [
        (&spec.root_disk, "root.ext4"),
        (&spec.work_disk, "work.ext4"),
    ] {
        let copied = vmm
            .copy_disk(src, &dir.join(name))
            .await
            .map_err(vm_err)
            .map_err(at("copy disks"))?;
        how = Some(copied);
    }
    if !was_paused {
        progress.stage("resume original", original.name.clone());
        set_paused(state, &mut original, false)
            .await
            .map_err(at("resume original"))?;
    }
    let memory = if files.memory.exists() {
        "shared"
    } else {
        "loaded"
    };
    let note = Forked {
        from: original.name.clone(),
        disk_copy: how.map(|h| h.to_string()).unwrap_or_default(),
        memory: memory.to_string(),
    };
    write_note(&dir, &note).await?;
    let what = format!(
        "fork of {} ({} disks, memory {memory})",
        original.name, note.disk_copy
    );
    let restore = Restore {
        snapshot: files,
        grown: Vec::new(),
    };
    super::warm::launch_restored(state, &mut row, restore, Vec::new(), progress, what)
        .await
        .map_err(at("restore"))?;
    progress.stage(
        "ready",
        format!("ready in {:.1}s", progress.elapsed().as_secs_f64()),
    );
    Ok(state.vm_view(&row))
}

async fn write_note(dir: &Path, note: &Forked) -> Result<(), OpError> {
    let path = dir.join(FORKED);
    let text = serde_json::to_vec(note).unwrap_or_default();
    tokio::fs::write(&path, text)
        .await
        .map_err(OpError::io("write", &path))
}
