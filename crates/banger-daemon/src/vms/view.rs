//! A VM row seen from outside: its API view, its directories, its backend and boot spec.

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::types::{Vm, VmState, Workspace, WorkspaceMode};
use banger_store::{ImageRow, VmRow, WorkspaceRow};

use banger_core::guest_init::GuestInit;
use banger_vmm::{KernelFiles, VmSpec, Vmm};

use crate::error::OpError;
use crate::state::AppState;

/// Kernel command line for guests, the same on every backend (each adds what its machine
/// needs): serial console, reboot on panic, root on the first disk.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw";

/// The API view of a stored workspace.
pub fn workspace_view(ws: &WorkspaceRow) -> Workspace {
    Workspace {
        guest_path: ws.guest_path.clone(),
        host_path: PathBuf::from(&ws.host_path),
        head: ws.head.clone(),
        branch: ws.branch.clone(),
        mode: match ws.mode {
            banger_store::WorkspaceMode::Overlay => WorkspaceMode::Overlay,
            banger_store::WorkspaceMode::FullCopy => WorkspaceMode::FullCopy,
        },
        include_untracked: ws.include_untracked,
        prepared_at: ws.prepared_at.clone(),
    }
}

impl AppState {
    /// The API view of a row.
    pub fn vm_view(&self, row: &VmRow) -> Vm {
        let image = self
            .db(|s| s.get_image(&row.image_id))
            .ok()
            .flatten()
            .map(|i| i.name)
            .unwrap_or_else(|| row.image_id.clone());
        let dir = PathBuf::from(&row.dir);
        let restored = super::disks::restored(&dir);
        let forked = super::disks::forked(&dir);
        Vm {
            id: row.id.clone(),
            name: row.name.clone(),
            state: row.state,
            image,
            image_id: row.image_id.clone(),
            vmm: row.vmm,
            cpus: row.cpus,
            memory_mib: row.memory_mib,
            disk_bytes: row.disk_bytes,
            work_disk_bytes: row.work_disk_bytes,
            nat: row.nat,
            ip: row.ip,
            mac: row.mac,
            tap: row.tap.clone(),
            vsock_cid: row.vsock_cid,
            pid: row.pid,
            created_at: row.created_at.clone(),
            started_at: row.started_at.clone(),
            console_log: dir.join(crate::logcap::CONSOLE_LOG),
            vmm_log: dir.join(crate::logcap::VMM_LOG),
            dir,
            error: row.error.clone(),
            workspace: self
                .db(|s| s.get_workspace(&row.id))
                .ok()
                .flatten()
                .as_ref()
                .map(workspace_view),
            origin: row.origin,
            restored_from: restored.as_ref().map(|r| r.template.clone()),
            disk_clone: restored
                .map(|r| r.disk_clone)
                .or_else(|| forked.as_ref().map(|f| f.disk_copy.clone())),
            paused: row.paused && row.state == VmState::Running,
            forked_from: forked.as_ref().map(|f| f.from.clone()),
            fork_memory: forked.map(|f| f.memory),
        }
    }

    pub(crate) fn run_dir(&self, id: &str) -> PathBuf {
        self.opts
            .layout
            .runtime_dir
            .join("vms")
            .join(&id[..12.min(id.len())])
    }

    pub(crate) fn vm_dir(&self, id: &str) -> PathBuf {
        self.opts.layout.state_dir.join("vms").join(id)
    }

    /// Everything the VMM needs to boot `row`.
    pub(crate) fn spec(&self, row: &VmRow) -> Result<VmSpec, OpError> {
        let image =
            self.db(|s| s.get_image(&row.image_id))?
                .ok_or_else(|| OpError::ImageNotFound {
                    reference: row.image_id.clone(),
                })?;
        Ok(self.spec_with(row, self.kernel_of(&image)?, image.init))
    }

    /// Everything the VMM needs to boot `row`, whose image has the kernel files `kernel` and
    /// the PID 1 `init` (its words follow the backend-neutral [`BOOT_ARGS`]).
    pub(crate) fn spec_with(&self, row: &VmRow, kernel: KernelFiles, init: GuestInit) -> VmSpec {
        let dir = PathBuf::from(&row.dir);
        let boot_args = match init.kernel_args() {
            Some(extra) => format!("{BOOT_ARGS} {extra}"),
            None => BOOT_ARGS.to_string(),
        };
        VmSpec {
            vm_id: row.id.clone(),
            vcpus: row.cpus,
            memory_mib: row.memory_mib,
            kernel,
            boot_args,
            root_disk: dir.join("root.ext4"),
            work_disk: dir.join("work.ext4"),
            tap: row.tap.clone().unwrap_or_default(),
            mac: row.mac.map(|m| m.to_string()).unwrap_or_default(),
            vsock_cid: row.vsock_cid.unwrap_or(3),
            run_dir: self.run_dir(&row.id),
            console_log: dir.join(crate::logcap::CONSOLE_LOG),
            vmm_log: dir.join(crate::logcap::VMM_LOG),
        }
    }

    /// The backend a VM runs on.
    pub fn vmm_of(&self, row: &VmRow) -> Result<Arc<dyn Vmm>, OpError> {
        let kind = row.vmm;
        self.host
            .vmms
            .get(kind)
            .cloned()
            .map_err(|why| OpError::VmmUnavailable { kind, why })
    }

    /// The kernel files (and initrd) an image boots with; the backend picks the one it boots.
    pub(crate) fn kernel_of(&self, image: &ImageRow) -> Result<KernelFiles, OpError> {
        if let Some(k) = &image.kernel {
            return Ok(KernelFiles::either(k).with_initrd(image.initrd.as_ref().map(PathBuf::from)));
        }
        let name = image.kernel_ref.clone().unwrap_or_default();
        let k = self
            .db(|s| s.get_kernel(&name))?
            .ok_or(OpError::KernelNotFound { name })?;
        let path = |p: Option<String>| p.map(PathBuf::from);
        Ok(KernelFiles::formats(path(k.vmlinux), path(k.vmlinuz)).with_initrd(path(k.initrd)))
    }
}
