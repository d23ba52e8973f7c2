//! The VM lifecycle: create, start, stop, restart, kill, delete, set, and reconciliation.
//!
//! Every operation on one VM holds that VM's lock (see [`Locks`](crate::state::Locks)) for its whole duration, so
//! one VM's operations are serialised while different VMs progress in parallel. The store
//! mutex is taken only around single queries, never across an await.
//!
//! Creation is all-or-nothing: every resource it takes (row, IP, TAP, disks, VMM process) is
//! undone by [`rollback_create`] when a later step fails or the client goes away, so nothing
//! half-made remains.
//!
//! # States, and what a daemon crash leaves
//!
//! A VM is `creating` from its row's insert until its agent answered and sshd was waited
//! for; only then is it `running`, and the stream's `ready` follows at once. A start of a
//! stopped VM keeps it `stopped` until the agent answered, with its run directory made before
//! the network comes up and the VMM's pid (and start time) stored as soon as the VMM is
//! spawned. So a daemon killed anywhere leaves rows [`reconcile`] can finish on restart: a
//! `creating` row is rolled back completely, and a `stopped` row with a pid or a run
//! directory (an unfinished start) has its VMM killed and its TAP, NAT rule and run directory
//! released. A VMM spawned but not yet recorded is found by its command line, which names the
//! VM's run directory.
//!
//! # Signalling VMMs
//!
//! A stored pid is never trusted: every path that signals a VMM (stop, kill, delete,
//! rollback, reconcile, the monitor) first checks with [`banger_vmm::process::identify`] that
//! the pid is still that VM's VMM (start time, command line) and then signals through the
//! pidfd. A VM whose pid now belongs to another process is treated as "VMM gone": marked
//! stopped, its resources released, the other process left alone.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::types::{
    ActionOutcome, ActionRequest, CreateVm, Vm, VmAction, VmSettings, VmState,
};
use banger_core::limits::VmLimits;
use banger_core::names::{looks_like_id, validate_vm_name};
use banger_core::size::ByteSize;
use banger_net::plan::{allocate, format_mac, mac_for_ip, tap_name_for};
use banger_store::{ImageRow, VmRow};
use std::str::FromStr;

use banger_vmm::process::identify;
use banger_vmm::{
    AgentEndpoint, IdentityError, KernelFiles, Running, VmSpec, Vmm, VmmIdentity, VmmKind,
    VmmProcess,
};
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::error::{OpError, chain};
use crate::progress::Progress;
use crate::state::{AppState, ImagesGuard};

/// Defaults for `vm create`, also shown in the CLI's help.
pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
pub const DEFAULT_WORK_DISK: ByteSize = ByteSize::gib(8);
/// Size of an image's work seed (sparse: only the image's /root contents take space).
const WORK_SEED_SIZE: u64 = 256 << 20;
/// Kernel command line for guests, the same on every backend (each adds what its machine
/// needs): serial console, reboot on panic, root on the first disk.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw";

// ---------------------------------------------------------------------------------------------
// Lookups

/// Finds the VM a user reference means, in the order documented in [`banger_core::names`]:
/// a reference that looks like an id (12 or more hex digits) matches ids only, exactly or as
/// a unique prefix, so an id copied from `vm list` never reaches another VM; otherwise the
/// exact name, then a unique prefix of a name or an id. Several matches are an error.
pub fn resolve<'a>(rows: &'a [VmRow], reference: &str) -> Result<&'a VmRow, OpError> {
    let not_found = || OpError::VmNotFound {
        reference: reference.to_string(),
    };
    if reference.is_empty() {
        return Err(not_found());
    }
    if let Some(r) = rows.iter().find(|r| r.id == reference) {
        return Ok(r);
    }
    let matches: Vec<&VmRow> = if looks_like_id(reference) {
        rows.iter()
            .filter(|r| r.id.starts_with(reference))
            .collect()
    } else {
        if let Some(r) = rows.iter().find(|r| r.name == reference) {
            return Ok(r);
        }
        rows.iter()
            .filter(|r| r.id.starts_with(reference) || r.name.starts_with(reference))
            .collect()
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        many => Err(OpError::Ambiguous {
            reference: reference.to_string(),
            candidates: many.iter().map(|r| r.name.clone()).collect(),
        }),
    }
}

/// Finds the image a reference means: the exact id; a reference that looks like an id
/// matches ids only (exact or unique prefix); otherwise the exact name, then a unique id
/// prefix. Several matches are an error, never a guess.
fn resolve_image<'a>(rows: &'a [ImageRow], reference: &str) -> Result<&'a ImageRow, OpError> {
    let not_found = || OpError::ImageNotFound {
        reference: reference.to_string(),
    };
    if reference.is_empty() {
        return Err(not_found());
    }
    if let Some(r) = rows.iter().find(|r| r.id == reference) {
        return Ok(r);
    }
    if !looks_like_id(reference)
        && let Some(r) = rows.iter().find(|r| r.name == reference)
    {
        return Ok(r);
    }
    let matches: Vec<&ImageRow> = rows
        .iter()
        .filter(|r| r.id.starts_with(reference))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        many => Err(OpError::Invalid {
            what: format!(
                "{reference:?} matches several images: {}",
                many.iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

impl AppState {
    pub fn find_vm(&self, reference: &str) -> Result<VmRow, OpError> {
        let rows = self.vm_rows()?;
        resolve(&rows, reference).cloned()
    }

    /// The API view of a row.
    pub fn vm_view(&self, row: &VmRow) -> Vm {
        let image = self
            .db(|s| s.get_image(&row.image_id))
            .ok()
            .flatten()
            .map(|i| i.name)
            .unwrap_or_else(|| row.image_id.clone());
        let dir = PathBuf::from(&row.dir);
        Vm {
            id: row.id.clone(),
            name: row.name.clone(),
            state: VmState::parse(&row.state).unwrap_or(VmState::Error),
            image,
            image_id: row.image_id.clone(),
            vmm: row.vmm.clone(),
            cpus: row.cpus,
            memory_mib: row.memory_mib,
            disk_bytes: row.disk_bytes,
            work_disk_bytes: row.work_disk_bytes,
            nat: row.nat,
            ip: row.ip.clone(),
            mac: row.mac.clone(),
            tap: row.tap.clone(),
            vsock_cid: row.vsock_cid,
            pid: row.pid,
            created_at: row.created_at.clone(),
            started_at: row.started_at.clone(),
            console_log: dir.join(crate::logcap::CONSOLE_LOG),
            vmm_log: dir.join(crate::logcap::VMM_LOG),
            dir,
            error: row.error.clone(),
            workspace: row
                .workspace_json
                .as_deref()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .and_then(|v| {
                    v.get("guest_path")
                        .and_then(|p| p.as_str())
                        .map(String::from)
                }),
        }
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.opts
            .layout
            .runtime_dir
            .join("vms")
            .join(&id[..12.min(id.len())])
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.opts.layout.state_dir.join("vms").join(id)
    }

    /// Everything the VMM needs to boot `row`.
    fn spec(&self, row: &VmRow) -> Result<VmSpec, OpError> {
        let image =
            self.db(|s| s.get_image(&row.image_id))?
                .ok_or_else(|| OpError::ImageNotFound {
                    reference: row.image_id.clone(),
                })?;
        Ok(self.spec_with(row, self.kernel_of(&image)?))
    }

    /// Everything the VMM needs to boot `row`, whose image has the kernel files `kernel`.
    fn spec_with(&self, row: &VmRow, kernel: KernelFiles) -> VmSpec {
        let dir = PathBuf::from(&row.dir);
        VmSpec {
            vm_id: row.id.clone(),
            vcpus: row.cpus,
            memory_mib: row.memory_mib,
            kernel,
            boot_args: BOOT_ARGS.to_string(),
            root_disk: dir.join("root.ext4"),
            work_disk: dir.join("work.ext4"),
            tap: row.tap.clone().unwrap_or_default(),
            mac: row.mac.clone().unwrap_or_default(),
            vsock_cid: row.vsock_cid.unwrap_or(3),
            run_dir: self.run_dir(&row.id),
            console_log: dir.join(crate::logcap::CONSOLE_LOG),
            vmm_log: dir.join(crate::logcap::VMM_LOG),
        }
    }

    /// The backend a VM runs on.
    pub fn vmm_of(&self, row: &VmRow) -> Result<Arc<dyn Vmm>, OpError> {
        let kind = VmmKind::from_str(&row.vmm).map_err(|e| OpError::Invalid {
            what: format!("VM {}: {e}", row.name),
        })?;
        self.host
            .vmms
            .get(kind)
            .cloned()
            .map_err(|why| OpError::VmmUnavailable {
                kind: kind.to_string(),
                why,
            })
    }

    /// The kernel files (and initrd) an image boots with; the backend picks the one it boots.
    fn kernel_of(&self, image: &ImageRow) -> Result<KernelFiles, OpError> {
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

// ---------------------------------------------------------------------------------------------
// Create

/// Checks requested resources against `limits`, the VM's backend's ([`Vmm::limits`]), before
/// anything is made or stored (the CLI checks banger's own caps first): at least 1 CPU, 1 MiB
/// and 1 byte; at most the backend's vCPUs and memory and banger's disk cap, with the real
/// limit in the message.
pub fn check_settings(s: &VmSettings, limits: &VmLimits) -> Result<(), OpError> {
    Ok(banger_core::limits::check(&s.requested(), limits)?)
}

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
    let vmm_kind = match &req.vmm {
        Some(v) => VmmKind::from_str(v).map_err(|e| OpError::Invalid {
            what: e.to_string(),
        })?,
        None => state.host.vmms.default_kind(),
    };
    let vmm = state
        .host
        .vmms
        .get(vmm_kind)
        .cloned()
        .map_err(|why| OpError::VmmUnavailable {
            kind: vmm_kind.to_string(),
            why,
        })?;
    check_settings(&req.resources, &vmm.limits())?;
    let image_ref = req
        .image
        .clone()
        .unwrap_or_else(|| state.opts.config.default_image.clone());
    progress.stage("resolve image", image_ref.clone());
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
    let row = state.db(|s| -> Result<VmRow, OpError> {
        let rows = s.list_vms()?;
        let names: BTreeSet<String> = rows.iter().map(|r| r.name.clone()).collect();
        let name = match &req.name {
            Some(n) if names.contains(n) => return Err(OpError::NameTaken { name: n.clone() }),
            Some(n) => n.clone(),
            None => generate_name(&names),
        };
        let used: BTreeSet<Ipv4Addr> = rows
            .iter()
            .filter_map(|r| r.ip.as_deref()?.parse().ok())
            .collect();
        let ip = allocate(&state.subnet, &used).ok_or_else(|| OpError::SubnetFull {
            subnet: state.subnet.to_string(),
        })?;
        let cids: BTreeSet<u32> = rows.iter().filter_map(|r| r.vsock_cid).collect();
        let cid = (3u32..).find(|c| !cids.contains(c)).unwrap_or(3);
        let row = VmRow {
            id: id.clone(),
            name,
            image_id: image.id.clone(),
            state: VmState::Creating.as_str().to_string(),
            vmm: vmm.kind().to_string(),
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
            ip: Some(ip.to_string()),
            mac: Some(format_mac(&mac_for_ip(ip))),
            tap: Some(tap_name_for(&id)),
            vsock_cid: Some(cid),
            pid: None,
            vmm_start_time: None,
            dir: dir.display().to_string(),
            error: None,
            workspace_json: None,
            created_at: now(),
            started_at: None,
        };
        // Nothing exists for the VM yet: a spec its backend refuses creates nothing.
        vmm.validate(&state.spec_with(&row, kernel.clone()))
            .map_err(|source| OpError::Vmm {
                vm: row.name.clone(),
                source: Box::new(source),
            })?;
        s.insert_vm(&row).map_err(|e| {
            if e.is_unique_conflict("vms", "name") {
                OpError::NameTaken {
                    name: row.name.clone(),
                }
            } else {
                OpError::Store(e)
            }
        })?;
        Ok(row)
    })?;
    let lock = state.locks.vm(&row.id);
    let _guard = lock.lock().await;
    let result = tokio::select! {
        r = create_steps(&state, row.clone(), &image, images_guard, &progress) => r,
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

async fn create_steps(
    state: &Arc<AppState>,
    mut row: VmRow,
    image: &ImageRow,
    images_guard: ImagesGuard<'_>,
    progress: &Progress,
) -> Result<Vm, OpError> {
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
    let dir = PathBuf::from(&row.dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(OpError::io("create", &dir))?;
    let seed = ensure_work_seed(state, image, &images_guard).await?;
    drop(images_guard);
    let runner = state.host.runner.clone();
    let vm = row.name.clone();
    let rootfs = PathBuf::from(&image.rootfs);
    let root = dir.join("root.ext4");
    let work = dir.join("work.ext4");
    let (disk_bytes, work_bytes) = (row.disk_bytes, row.work_disk_bytes);
    let ip: Ipv4Addr = row
        .ip
        .as_deref()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| OpError::Invalid {
            what: format!("VM {vm} has no address"),
        })?;
    let guest = banger_disk::guest::GuestConfig {
        hostname: row.name.clone(),
        ip,
        prefix: state.subnet.prefix(),
        gateway: state.subnet.gateway(),
        dns: state.guest_dns.clone(),
        mac: row.mac.clone().unwrap_or_default(),
    };
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
async fn ensure_work_seed(
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

/// Network up, VMM started, agent answering, sshd waited for; only then is the row
/// `running`. Until then it keeps its state (`creating`, or `stopped` for a start): the run
/// directory exists before the TAP does, and the VMM's pid and start time are stored as soon
/// as it runs, so that [`reconcile`] can undo a boot the daemon did not live to finish.
async fn boot(state: &Arc<AppState>, row: &mut VmRow, progress: &Progress) -> Result<(), OpError> {
    let spec = state.spec(row)?;
    // The mark of a boot under way (see the module docs); release removes it.
    tokio::fs::create_dir_all(&spec.run_dir)
        .await
        .map_err(OpError::io("create", &spec.run_dir))?;
    progress.stage(
        "network",
        format!("{} on {}", spec.tap, state.opts.config.bridge_name),
    );
    net_up(state, row).await?;
    let vmm = state.vmm_of(row)?;
    // Read before boot, while nothing else has the disk open.
    let has_sshd = {
        let runner = state.host.runner.clone();
        let root = spec.root_disk.clone();
        tokio::task::spawn_blocking(move || {
            banger_disk::debugfs::exists(runner.as_ref(), &root, "/usr/sbin/sshd").unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    };
    progress.stage("start VMM", vmm.kind().to_string());
    let running = vmm.start(&spec).await.map_err(|source| OpError::Vmm {
        vm: row.name.clone(),
        source: Box::new(source),
    })?;
    row.pid = Some(running.pid);
    row.vmm_start_time = running.start_time;
    row.error = None;
    state.set_vm(row)?;
    progress.stage("wait agent", format!("pid {}", running.pid));
    wait_agent(state, &row.name, &running.agent).await?;
    if has_sshd && let Some(ip) = row.ip.clone() {
        progress.stage("wait ssh", format!("{ip}:22"));
        let secs = state.opts.config.ssh_wait_secs;
        if !banger_api::probe::wait_ssh(&ip, Duration::from_secs(secs)).await {
            // Not fatal: the VM runs and its agent answers; `vm run`/`vm ssh` report it.
            progress.stage(
                "wait ssh",
                format!(
                    "sshd did not answer within {secs}s (see banger vm logs {})",
                    row.name
                ),
            );
        }
    }
    row.state = VmState::Running.as_str().to_string();
    row.started_at = Some(now());
    state.set_vm(row)?;
    Ok(())
}

async fn net_up(state: &Arc<AppState>, row: &VmRow) -> Result<(), OpError> {
    let net = state.host.net.clone();
    let bridge = state.opts.config.bridge_name.clone();
    let subnet = state.subnet;
    let tap = row.tap.clone().unwrap_or_default();
    let nat = row.nat;
    let ip: Option<Ipv4Addr> = row.ip.as_deref().and_then(|i| i.parse().ok());
    let uid = Some(state.uid);
    tokio::task::spawn_blocking(move || -> Result<(), banger_net::NetError> {
        net.ensure_bridge(&bridge, &subnet)?;
        net.create_tap(&tap, &bridge, uid)?;
        if nat && let Some(ip) = ip {
            net.enable_nat(&subnet, ip, None)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(|source| OpError::Net {
        vm: row.name.clone(),
        source,
    })
}

/// Undoes what a start took: TAP, NAT rule, sockets. Best effort; failures are logged.
async fn release(state: &Arc<AppState>, row: &VmRow) {
    let net = state.host.net.clone();
    let tap = row.tap.clone();
    let ip: Option<Ipv4Addr> = row.ip.as_deref().and_then(|i| i.parse().ok());
    let nat = row.nat;
    let name = row.name.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(tap) = tap
            && let Err(e) = net.delete_tap(&tap)
        {
            tracing::warn!(vm = %name, error = %chain(&e), "cannot delete TAP");
        }
        if nat
            && let Some(ip) = ip
            && let Err(e) = net.disable_nat(ip)
        {
            tracing::warn!(vm = %name, error = %chain(&e), "cannot remove NAT rule");
        }
    })
    .await;
    let run_dir = state.run_dir(&row.id);
    if let Err(e) = tokio::fs::remove_dir_all(&run_dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(vm = %row.name, dir = %run_dir.display(), error = %e, "cannot remove run dir");
    }
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
    state.locks.forget(&row.id);
}

/// The identity `row`'s VMM was recorded with, if a pid was stored.
fn identity_of(state: &AppState, row: &VmRow) -> Option<VmmIdentity> {
    row.pid.map(|pid| VmmIdentity {
        pid,
        start_time: row.vmm_start_time,
        run_dir: state.run_dir(&row.id),
    })
}

/// The VMM `row` names, if its stored pid is still that VMM ([`identify`]). `Ok(None)`: the
/// VMM is gone (no pid, it exited, or the pid belongs to another process now).
fn vmm_process(state: &AppState, row: &VmRow) -> Result<Option<VmmProcess>, IdentityError> {
    let Some(identity) = identity_of(state, row) else {
        return Ok(None);
    };
    match identify(&identity) {
        Ok(process) => Ok(Some(process)),
        Err(IdentityError::Gone { .. }) => Ok(None),
        Err(error) if error.vmm_gone() => {
            tracing::warn!(vm = %row.name, %error, "the stored VMM pid is another process now; leaving it alone");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Kills every VMM of `row`: the recorded one (after the identity check) and any process
/// whose command line names the VM's run directory (a VMM spawned by a daemon that died
/// before storing its pid, or re-found after the stored pid went stale).
async fn kill_vmms_of(state: &Arc<AppState>, row: &VmRow) {
    if let Some(identity) = identity_of(state, row) {
        kill_and_wait(&row.name, &identity).await;
    }
    let run_dir = state.run_dir(&row.id);
    for pid in banger_vmm::process::pids_in_dir(&run_dir) {
        let identity = VmmIdentity {
            pid,
            start_time: None,
            run_dir: run_dir.clone(),
        };
        kill_and_wait(&row.name, &identity).await;
    }
}

/// Sends `SIGKILL` to the VMM `identity` names, through its pidfd, once [`identify`] agreed,
/// and waits for it to exit. A pid that is not that VMM (any more) is left alone.
async fn kill_and_wait(vm: &str, identity: &VmmIdentity) {
    let process = match identify(identity) {
        Ok(process) => process,
        Err(IdentityError::Gone { .. }) => return,
        Err(error) => {
            tracing::warn!(vm, pid = identity.pid, %error, "not killing the VMM");
            return;
        }
    };
    if let Err(e) = process.signal(banger_vmm::process::Signal::KILL) {
        tracing::warn!(vm, pid = identity.pid, error = %chain(&e), "cannot kill VMM");
    }
    if !process.wait_exit(Duration::from_secs(5)).await {
        tracing::warn!(vm, pid = identity.pid, "VMM still alive 5s after SIGKILL");
    }
}

/// The running VMM of `row` with pid `pid`: found by its control socket when it answers,
/// else assembled from what is stored (a shutdown request then fails and stop kills it,
/// once [`identify`] agreed that the pid is still that VMM).
async fn running_of(state: &Arc<AppState>, row: &VmRow, pid: u32) -> Running {
    if let Ok(spec) = state.spec(row)
        && let Ok(vmm) = state.vmm_of(row)
    {
        if let Some(live) = vmm.find_live(&spec).await {
            return live;
        }
        return Running {
            vm_id: row.id.clone(),
            pid,
            start_time: row.vmm_start_time,
            api_socket: vmm.control_socket(&spec.run_dir),
            agent: vmm.agent_endpoint(&spec),
        };
    }
    Running {
        vm_id: row.id.clone(),
        pid,
        start_time: row.vmm_start_time,
        api_socket: state.run_dir(&row.id).join("api.sock"),
        agent: AgentEndpoint::Unix(PathBuf::new()),
    }
}

/// Polls the guest agent until it answers or the deadline passes.
async fn wait_agent(
    state: &Arc<AppState>,
    vm: &str,
    endpoint: &AgentEndpoint,
) -> Result<(), OpError> {
    let secs = state.opts.config.agent_wait_secs;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last;
    loop {
        match agent_health(endpoint, Duration::from_secs(2)).await {
            Ok(_) => return Ok(()),
            Err(e) => last = chain(&e),
        }
        if Instant::now() >= deadline {
            return Err(OpError::AgentTimeout {
                vm: vm.to_string(),
                secs,
                last,
            });
        }
        tokio::time::sleep(AGENT_POLL).await;
    }
}

/// How often [`wait_agent`] retries while the guest boots.
const AGENT_POLL: Duration = Duration::from_millis(20);

async fn agent_stream(
    endpoint: &AgentEndpoint,
    timeout: Duration,
) -> Result<tokio::net::UnixStream, banger_agent_proto::client::ClientError> {
    let fut = async {
        match endpoint {
            AgentEndpoint::HybridVsock { uds, port } => {
                banger_agent_proto::client::connect_hybrid_vsock(uds, *port).await
            }
            AgentEndpoint::Unix(path) => banger_agent_proto::client::connect_unix(path).await,
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(banger_agent_proto::client::ClientError::Timeout {
            path: match endpoint {
                AgentEndpoint::HybridVsock { uds, .. } => uds.display().to_string(),
                AgentEndpoint::Unix(p) => p.display().to_string(),
            },
            after: timeout,
        }),
    }
}

/// Asks the agent at `endpoint` for its health.
pub async fn agent_health(
    endpoint: &AgentEndpoint,
    timeout: Duration,
) -> Result<banger_agent_proto::wire::Health, banger_agent_proto::client::ClientError> {
    let stream = agent_stream(endpoint, timeout).await?;
    banger_agent_proto::client::health(stream, timeout).await
}

/// Asks the agent at `endpoint` for the guest's listening sockets.
pub async fn agent_ports(
    endpoint: &AgentEndpoint,
    timeout: Duration,
) -> Result<banger_agent_proto::wire::Ports, banger_agent_proto::client::ClientError> {
    let stream = agent_stream(endpoint, timeout).await?;
    banger_agent_proto::client::ports(stream, timeout).await
}

/// The agent endpoint of a running VM.
pub fn endpoint_of(state: &AppState, row: &VmRow) -> Result<AgentEndpoint, OpError> {
    if row.state != VmState::Running.as_str() {
        return Err(OpError::NotRunning {
            vm: row.name.clone(),
        });
    }
    Ok(state.vmm_of(row)?.agent_endpoint(&state.spec(row)?))
}

// ---------------------------------------------------------------------------------------------
// Actions on existing VMs

/// Runs one action on many references: resolved from one snapshot, deduplicated, run
/// concurrently, reported in first-seen order. Bad references do not stop the good ones.
pub async fn act(state: Arc<AppState>, req: ActionRequest) -> Result<Vec<ActionOutcome>, OpError> {
    if req.action == VmAction::Set {
        let s = req.settings.clone().unwrap_or_default();
        // banger's own caps for every VM at once; each VM's backend is checked in `set`.
        check_settings(&s, &VmLimits::BANGER)?;
        if s == VmSettings::default() {
            return Err(OpError::Invalid {
                what: "nothing to set: give --cpus, --memory, --disk or --work-disk".into(),
            });
        }
    }
    let signal = match (&req.action, &req.signal) {
        (VmAction::Kill, Some(s)) => {
            s.parse::<banger_vmm::process::Signal>()
                .map_err(|e| OpError::Invalid {
                    what: e.to_string(),
                })?
        }
        _ => banger_vmm::process::Signal::KILL,
    };
    let rows = state.vm_rows()?;
    let mut seen: Vec<String> = Vec::new();
    let mut outcomes: Vec<ActionOutcome> = Vec::new();
    let mut jobs = Vec::new();
    for reference in &req.refs {
        match resolve(&rows, reference) {
            Ok(row) => {
                if seen.contains(&row.id) {
                    continue;
                }
                seen.push(row.id.clone());
                let idx = outcomes.len();
                outcomes.push(ActionOutcome {
                    reference: reference.clone(),
                    vm: Some(row.name.clone()),
                    error: None,
                    note: None,
                });
                let (state, row, req) = (state.clone(), row.clone(), req.clone());
                jobs.push(async move {
                    let r = match req.action {
                        VmAction::Start => start(&state, &row.id).await,
                        VmAction::Stop => stop(&state, &row.id).await,
                        VmAction::Restart => restart(&state, &row.id).await,
                        VmAction::Kill => kill(&state, &row.id, signal).await,
                        VmAction::Delete => delete(&state, &row.id).await,
                        VmAction::Set => {
                            set(&state, &row.id, &req.settings.clone().unwrap_or_default()).await
                        }
                    };
                    (idx, r)
                });
            }
            Err(e) => outcomes.push(ActionOutcome {
                reference: reference.clone(),
                vm: None,
                error: Some(e.into()),
                note: None,
            }),
        }
    }
    for (idx, r) in futures_join_all(jobs).await {
        match r {
            Ok(note) => outcomes[idx].note = note,
            Err(e) => outcomes[idx].error = Some(e.into()),
        }
    }
    Ok(outcomes)
}

/// Runs futures concurrently on this task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::with_capacity(futs.len());
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn reload(state: &AppState, id: &str) -> Result<VmRow, OpError> {
    state
        .db(|s| s.get_vm(id))?
        .ok_or_else(|| OpError::VmNotFound {
            reference: id.to_string(),
        })
}

pub async fn start(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    match VmState::parse(&row.state) {
        Some(VmState::Running) => return Ok(Some("already running".into())),
        Some(VmState::Creating) => {
            return Err(OpError::WrongState {
                vm: row.name,
                state: "being created".into(),
                wanted: "wait for it to finish",
            });
        }
        _ => {}
    }
    let progress = Progress::new(None);
    if let Err(e) = boot(state, &mut row, &progress).await {
        stop_locked(state, &mut row, Duration::from_secs(1)).await;
        row.error = Some(chain(&e));
        let _ = state.set_vm(&row);
        return Err(e);
    }
    Ok(None)
}

pub async fn stop(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    if row.state != VmState::Running.as_str() {
        return Ok(Some(format!("already {}", row.state)));
    }
    let grace = Duration::from_secs(state.opts.config.stop_grace_secs);
    let outcome = stop_locked(state, &mut row, grace).await;
    Ok(outcome)
}

/// Stops the VMM (graceful, then forced after `grace`), releases resources, marks stopped.
async fn stop_locked(state: &Arc<AppState>, row: &mut VmRow, grace: Duration) -> Option<String> {
    let mut note = None;
    if let Some(pid) = row.pid {
        // process::stop checks that the pid is still this VM's VMM before signalling it.
        let running = running_of(state, row, pid).await;
        let stopped = match state.vmm_of(row) {
            Ok(vmm) => banger_vmm::process::stop(vmm.as_ref(), &running, grace).await,
            // No backend to ask politely: force it off.
            Err(_) => {
                kill_and_wait(&row.name, &running.identity()).await;
                Ok(banger_vmm::StopOutcome::Forced)
            }
        };
        match stopped {
            Ok(banger_vmm::StopOutcome::Forced) => {
                note = Some(format!(
                    "guest did not shut down within {}s; forced off",
                    grace.as_secs()
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(vm = %row.name, error = %chain(&e), "cannot stop VMM");
                note = Some(chain(&e));
            }
        }
    }
    release(state, row).await;
    row.state = VmState::Stopped.as_str().to_string();
    row.pid = None;
    row.vmm_start_time = None;
    if let Err(e) = state.set_vm(row) {
        tracing::error!(vm = %row.name, error = %chain(&e), "cannot record stop");
    }
    note
}

pub async fn restart(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let note = stop(state, id).await?;
    start(state, id).await?;
    Ok(note.filter(|n| !n.starts_with("already")))
}

pub async fn kill(
    state: &Arc<AppState>,
    id: &str,
    signal: banger_vmm::process::Signal,
) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    let command_error = |e: &dyn std::error::Error| OpError::Command {
        what: "kill",
        detail: chain(e),
    };
    let Some(process) = vmm_process(state, &row).map_err(|e| command_error(&e))? else {
        if row.state == VmState::Running.as_str() {
            // Its VMM is gone (or its pid is another process now): record that.
            release(state, &row).await;
            row.state = VmState::Stopped.as_str().to_string();
            row.pid = None;
            row.vmm_start_time = None;
            state.set_vm(&row)?;
        }
        return Err(OpError::NotRunning { vm: row.name });
    };
    process.signal(signal).map_err(|e| command_error(&e))?;
    if process.wait_exit(Duration::from_secs(3)).await {
        release(state, &row).await;
        row.state = VmState::Stopped.as_str().to_string();
        row.pid = None;
        row.vmm_start_time = None;
        state.set_vm(&row)?;
        Ok(None)
    } else {
        Ok(Some(format!("sent {signal}; the VMM is still running")))
    }
}

pub async fn delete(state: &Arc<AppState>, id: &str) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let row = reload(state, id)?;
    kill_vmms_of(state, &row).await;
    release(state, &row).await;
    let dir = PathBuf::from(&row.dir);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(OpError::Io {
            op: "remove",
            path: dir,
            source: e,
        });
    }
    state.db(|s| s.delete_vm(&row.id))?;
    state.locks.forget(&row.id);
    Ok(None)
}

pub async fn set(
    state: &Arc<AppState>,
    id: &str,
    settings: &VmSettings,
) -> Result<Option<String>, OpError> {
    let lock = state.locks.vm(id);
    let _g = lock.lock().await;
    let mut row = reload(state, id)?;
    // The VM's own backend's limits (its kind's, when that backend is missing here).
    let limits = match state.vmm_of(&row) {
        Ok(vmm) => vmm.limits(),
        Err(_) => VmmKind::from_str(&row.vmm).map_or(VmLimits::BANGER, VmmKind::limits),
    };
    check_settings(settings, &limits).map_err(|e| OpError::Invalid {
        what: format!("VM {}: {e}", row.name),
    })?;
    let running = row.state == VmState::Running.as_str();
    let grows_disk = settings.disk_bytes.is_some() || settings.work_disk_bytes.is_some();
    if running && grows_disk {
        return Err(OpError::WrongState {
            vm: row.name,
            state: "running".into(),
            wanted: "stop it before resizing disks",
        });
    }
    let dir = PathBuf::from(&row.dir);
    for (what, new, cur) in [
        ("disk", settings.disk_bytes, row.disk_bytes),
        ("work disk", settings.work_disk_bytes, row.work_disk_bytes),
    ] {
        if let Some(new) = new
            && new < cur
        {
            return Err(OpError::Invalid {
                what: format!(
                    "{what} cannot shrink from {} to {}",
                    ByteSize(cur),
                    ByteSize(new)
                ),
            });
        }
    }
    for (new, file) in [
        (settings.disk_bytes, "root.ext4"),
        (settings.work_disk_bytes, "work.ext4"),
    ] {
        if let Some(new) = new {
            let runner = state.host.runner.clone();
            let path = dir.join(file);
            tokio::task::spawn_blocking(move || {
                banger_disk::ext4::grow(runner.as_ref(), &path, new)
            })
            .await
            .map_err(|e| OpError::Join(e.to_string()))?
            .map_err(|source| OpError::Disk {
                vm: row.name.clone(),
                source: Box::new(source),
            })?;
        }
    }
    if let Some(c) = settings.cpus {
        row.cpus = c as u32;
    }
    if let Some(m) = settings.memory_mib {
        row.memory_mib = m as u64;
    }
    if let Some(d) = settings.disk_bytes {
        row.disk_bytes = d;
    }
    if let Some(w) = settings.work_disk_bytes {
        row.work_disk_bytes = w;
    }
    state.set_vm(&row)?;
    Ok(running.then(|| "takes effect at the next start".to_string()))
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

/// Brings stored state in line with the host: called at daemon start and whenever a VMM
/// exits. Half-created VMs are rolled back; unfinished starts of stopped VMs are undone;
/// running VMs whose VMM died (or whose pid now belongs to another process) are marked
/// stopped and their resources released; a live VMM with a stale stored pid is found again
/// by its socket.
pub async fn reconcile(state: &Arc<AppState>) {
    let rows = match state.vm_rows() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %chain(&e), "reconcile: cannot list VMs");
            return;
        }
    };
    for row in rows {
        match VmState::parse(&row.state) {
            Some(VmState::Creating) => {
                let lock = state.locks.vm(&row.id);
                let Ok(_g) = lock.try_lock() else { continue };
                tracing::warn!(vm = %row.name, "reconcile: creation never finished; rolling back");
                rollback_create(state, &row).await;
            }
            Some(VmState::Running) => reconcile_running(state, &row.id).await,
            Some(VmState::Stopped | VmState::Error) => reconcile_stopped(state, &row.id).await,
            None => {}
        }
    }
}

/// Undoes a start of a stopped VM that never finished (the daemon died during it): its VMM
/// is killed, its TAP, NAT rule and run directory released, its pid cleared.
async fn reconcile_stopped(state: &Arc<AppState>, id: &str) {
    let lock = state.locks.vm(id);
    let Ok(_g) = lock.try_lock() else { return };
    let Ok(mut row) = reload(state, id) else {
        return;
    };
    let run_dir = state.run_dir(&row.id);
    let unfinished = row.pid.is_some()
        || tokio::fs::try_exists(&run_dir).await.unwrap_or(true)
        || !banger_vmm::process::pids_in_dir(&run_dir).is_empty();
    if row.state == VmState::Running.as_str() || !unfinished {
        return;
    }
    tracing::warn!(vm = %row.name, pid = ?row.pid, "reconcile: a start never finished; undoing it");
    kill_vmms_of(state, &row).await;
    release(state, &row).await;
    row.pid = None;
    row.vmm_start_time = None;
    let _ = state.set_vm(&row);
}

/// Checks one running VM; marks it stopped when its VMM is gone.
pub async fn reconcile_running(state: &Arc<AppState>, id: &str) {
    let lock = state.locks.vm(id);
    // Someone else is working on this VM (stop, delete...): they own its state.
    let Ok(_g) = lock.try_lock() else { return };
    let Ok(mut row) = reload(state, id) else {
        return;
    };
    if row.state != VmState::Running.as_str() {
        return;
    }
    let spec = match state.spec(&row) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(vm = %row.name, error = %chain(&e), "reconcile: cannot build spec");
            return;
        }
    };
    match vmm_process(state, &row) {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(error) => {
            tracing::error!(vm = %row.name, %error, "reconcile: cannot check the VMM");
            return;
        }
    }
    let live = match state.vmm_of(&row) {
        Ok(vmm) => vmm.find_live(&spec).await,
        Err(_) => None,
    };
    if let Some(live) = live {
        tracing::info!(vm = %row.name, old = ?row.pid, new = live.pid, "reconcile: found the live VMM again");
        row.pid = Some(live.pid);
        row.vmm_start_time = live.start_time;
        let _ = state.set_vm(&row);
        return;
    }
    if let Some(p) = row.pid {
        // Reaps it when it is our zombie child (the pid is still held then, so it is ours).
        banger_vmm::process::wait_exit(p, Duration::ZERO).await;
    }
    tracing::warn!(vm = %row.name, pid = ?row.pid, "reconcile: VMM is gone; marking stopped");
    release(state, &row).await;
    row.state = VmState::Stopped.as_str().to_string();
    row.pid = None;
    row.vmm_start_time = None;
    let _ = state.set_vm(&row);
}

/// Whether `row`'s VMM still runs: its stored pid passes [`identify`]. A pid that exited or
/// now belongs to another process does not.
fn vmm_running(state: &AppState, row: &VmRow) -> bool {
    identity_of(state, row).is_some_and(|identity| identify(&identity).is_ok())
}

/// Watches running VMs and reconciles the ones whose VMM exited. Runs until the daemon stops.
pub async fn monitor(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut logs = crate::logcap::LogCapper::new(state.opts.config.max_log_size.bytes());
    loop {
        tick.tick().await;
        let Ok(rows) = state.vm_rows() else { continue };
        logs.check(&rows).await;
        for row in rows.iter().filter(|r| r.state == VmState::Running.as_str()) {
            if !vmm_running(&state, row) {
                reconcile_running(&state, &row.id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str) -> VmRow {
        VmRow {
            id: id.into(),
            name: name.into(),
            image_id: "img".into(),
            state: "stopped".into(),
            vmm: "firecracker".into(),
            cpus: 1,
            memory_mib: 128,
            disk_bytes: 1,
            work_disk_bytes: 1,
            nat: false,
            ip: None,
            mac: None,
            tap: None,
            vsock_cid: None,
            pid: None,
            vmm_start_time: None,
            dir: "/x".into(),
            error: None,
            workspace_json: None,
            created_at: "t".into(),
            started_at: None,
        }
    }

    #[test]
    fn resolution_order() {
        let rows = vec![
            row("abc123", "web"),
            row("abd456", "web-2"),
            row("ff0000", "db"),
        ];
        assert_eq!(
            resolve(&rows, "web").unwrap().id,
            "abc123",
            "exact name wins over prefix"
        );
        assert_eq!(resolve(&rows, "abd").unwrap().name, "web-2");
        assert_eq!(resolve(&rows, "d").unwrap().name, "db");
        assert!(matches!(
            resolve(&rows, "ab"),
            Err(OpError::Ambiguous { .. })
        ));
        assert!(matches!(resolve(&rows, "web-"), Ok(r) if r.name == "web-2"));
        assert!(matches!(
            resolve(&rows, "zzz"),
            Err(OpError::VmNotFound { .. })
        ));
        assert!(matches!(
            resolve(&rows, ""),
            Err(OpError::VmNotFound { .. })
        ));
    }

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
    fn an_id_from_the_list_never_resolves_to_another_vm() {
        let a = "0123456789ab0000000000000000aaaa";
        // A name that starts with A's listed id (allowed: it has non-hex characters).
        let rows = vec![row(a, "first"), row("ffff0000", "0123456789ab-x")];
        assert_eq!(resolve(&rows, &a[..12]).unwrap().id, a);
        assert_eq!(resolve(&rows, a).unwrap().id, a);
        assert_eq!(
            resolve(&rows, "0123456789ab-x").unwrap().name,
            "0123456789ab-x"
        );
        // A short prefix still matches both: ambiguous, never a guess.
        assert!(matches!(
            resolve(&rows, "0123"),
            Err(OpError::Ambiguous { .. })
        ));
        // An id-like reference is never matched against names.
        let rows = vec![row("aaaa", "0123456789abcdef")];
        assert!(matches!(
            resolve(&rows, "0123456789abcdef"),
            Err(OpError::VmNotFound { .. })
        ));
    }

    #[test]
    fn image_resolution_order() {
        let img = |id: &str, name: &str| ImageRow {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        };
        let rows = vec![
            img("0123456789ab0000", "base"),
            img("abcd", "0123"),
            img("0123ffff00000000", "other"),
        ];
        assert_eq!(resolve_image(&rows, "base").unwrap().id, "0123456789ab0000");
        // An exact name wins over an id prefix...
        assert_eq!(resolve_image(&rows, "0123").unwrap().id, "abcd");
        // ...but an id-like reference is an id only.
        assert_eq!(resolve_image(&rows, "0123456789ab").unwrap().name, "base");
        assert!(resolve_image(&rows, "0123f").is_ok());
        assert!(resolve_image(&rows, "").is_err());
        assert!(matches!(
            resolve_image(&[img("aa1", "x"), img("aa2", "y")], "aa"),
            Err(OpError::Invalid { .. })
        ));
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

    #[tokio::test]
    async fn join_all_keeps_order() {
        let futs: Vec<_> = (0..5u64)
            .map(|i| async move {
                tokio::time::sleep(Duration::from_millis(50 - i * 10)).await;
                i
            })
            .collect();
        assert_eq!(futures_join_all(futs).await, vec![0, 1, 2, 3, 4]);
    }
}
