//! Warm start: making a template (a guest booted once, saved once its agent and sshd
//! answer) and restoring a new VM from one, then giving it its own identity.
//!
//! # Making
//!
//! The template's guest is a VM without a row: its own id, a TAP on the bridge, and a
//! link-local address ([`TEMPLATE_IP`]) that no VM leases, so it never collides with one.
//! Its disks are made as a VM's are (the image's root file system with the guest
//! configuration, the work seed with banger's key and the host files) in a staging directory;
//! it boots with [`StartMode::BootTemplate`], and once its agent answers, its host keys
//! exist and sshd listens, it is saved ([`Vmm::snapshot`](banger_vmm::Vmm::snapshot)),
//! killed, and the staging directory installed in the catalogue ([`crate::templates`]).
//! Whatever fails, its VMM, TAP, run directory and staging directory are removed.
//!
//! # Restoring
//!
//! The VM's row is made as for a boot (its own address, MAC, TAP); its disks are the
//! backend's copy-on-write clones of the template's ([`Vmm::clone_disk`](banger_vmm::Vmm::clone_disk)),
//! grown after the restore when the VM asks for more. The VMM restores the guest on the VM's
//! own devices, and before the VM is `running` the agent gives it its identity
//! (`POST /identity`, see [`banger_agent_proto::identity`]): the files the boot would have
//! written into its root disk (hostname, hosts, resolver, network contract, networkd unit),
//! the MAC, 64 fresh bytes of host entropy, the host's clock, new SSH host keys — which are
//! recorded in banger's known_hosts as a boot's are. A restore that fails is undone and the
//! create boots cold (see `create`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::types::{Image, MacAddr, VmSettings, VmState, WarmImage};
use banger_core::build::BuildInfo;
use banger_store::{ImageRow, VmRow};
use banger_vmm::{Disk, DiskClone, Restore, Running, SnapshotFiles, StartMode};
use tokio_util::sync::CancellationToken;

use super::agent::{agent_host_keys, agent_ports, link_agent, wait_agent};
use super::boot::{net_up, release, store_host_keys};
use super::disks::{
    DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_WORK_DISK, check_settings, ensure_work_seed,
    guest_config, write_disks,
};
use super::disks::{RESTORED, Restored};
use crate::error::{OpError, chain};
use crate::progress::Progress;
use crate::state::AppState;
use crate::templates::{Lookup, Manifest, Shape, Template, Templates};

/// The template guest's address: link-local, never leased to a VM.
pub const TEMPLATE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 77, 2);
/// The current fingerprint of `image`'s templates.
pub fn fingerprint_of(state: &AppState, image: &ImageRow) -> Result<String, OpError> {
    let kernel = state.kernel_of(image)?;
    Ok(crate::templates::fingerprint(
        image,
        &kernel,
        &BuildInfo::current(),
    ))
}

/// The usable template for a VM `row` of `image` (same shape, disks no smaller than the
/// template's), or the unusable one that was removed.
pub fn template_for(state: &AppState, image: &ImageRow, row: &VmRow) -> Lookup {
    let shape = Shape {
        vmm: row.vmm,
        cpus: row.cpus,
        memory_mib: row.memory_mib,
    };
    let Ok(fp) = fingerprint_of(state, image) else {
        return Lookup::Absent;
    };
    match state.templates.lookup(&image.id, &shape, &fp) {
        Lookup::Found(t)
            if row.disk_bytes < t.manifest.root_bytes
                || row.work_disk_bytes < t.manifest.work_bytes =>
        {
            Lookup::Absent
        }
        other => other,
    }
}

/// `banger image warm`: makes (or remakes) the template of the image `reference` for the
/// requested shape (defaults: the VM defaults and the default backend). A make runs to its
/// end even when the client goes away (the next create benefits); the client gets
/// `cancelled` at once.
pub async fn warm_image(
    state: Arc<AppState>,
    reference: String,
    req: WarmImage,
    progress: Progress,
    cancel: CancellationToken,
) -> Result<Image, OpError> {
    let image = state.find_image(&reference)?;
    let kind = req.vmm.unwrap_or_else(|| state.host.vmms.default_kind());
    let vmm = state
        .host
        .vmms
        .get(kind)
        .cloned()
        .map_err(|why| OpError::VmmUnavailable { kind, why })?;
    let shape = Shape {
        vmm: kind,
        cpus: req.cpus.unwrap_or(DEFAULT_CPUS),
        memory_mib: req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
    };
    check_settings(
        &VmSettings {
            cpus: Some(i64::from(shape.cpus)),
            memory_mib: i64::try_from(shape.memory_mib).ok(),
            ..Default::default()
        },
        &vmm.limits(),
    )?;
    if !vmm.snapshots() {
        return Err(OpError::Vmm {
            vm: format!("(template of {})", image.name),
            source: Box::new(vmm.unsupported("template", "snapshots")),
        });
    }
    let task = {
        let (state, image, progress) = (state.clone(), image.clone(), progress.clone());
        tokio::spawn(async move { make(&state, &image, shape, &progress).await })
    };
    let made = tokio::select! {
        r = task => r.map_err(|e| OpError::Join(e.to_string()))?,
        _ = cancel.cancelled() => return Err(OpError::Cancelled),
    };
    match made? {
        Some(t) => progress.stage(
            "ready",
            format!(
                "template {} ({} on disk) in {:.1}s",
                t.dir.display(),
                banger_core::size::ByteSize(t.size_on_disk()),
                progress.elapsed().as_secs_f64()
            ),
        ),
        None => return Err(OpError::TemplateBusy { image: image.name }),
    }
    state.image_view(&image)
}

/// Starts making the template of `image` for `row`'s shape in the background (config
/// `warm_start`), when `row`'s backend has snapshots and no make of it runs; the outcome is
/// logged.
pub fn make_in_background(state: &Arc<AppState>, image: &ImageRow, row: &VmRow) {
    let Ok(vmm) = state.vmm_of(row) else { return };
    if !vmm.snapshots() {
        return;
    }
    let shape = Shape {
        vmm: row.vmm,
        cpus: row.cpus,
        memory_mib: row.memory_mib,
    };
    let (state, image) = (state.clone(), image.clone());
    tokio::spawn(async move {
        let t = Instant::now();
        match make(&state, &image, shape, &Progress::new(None)).await {
            Ok(Some(template)) => tracing::info!(
                template = %template.dir.display(),
                secs = t.elapsed().as_secs_f64(),
                "warm-start template made"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(image = %image.name, error = %chain(&e), "warm-start template not made")
            }
        }
    });
}

/// Makes (or remakes) the template of `image` for `shape`, unless one is being made; the
/// template, or `None` when another make of it runs.
pub async fn make(
    state: &Arc<AppState>,
    image: &ImageRow,
    shape: Shape,
    progress: &Progress,
) -> Result<Option<Template>, OpError> {
    let key = Templates::key(&image.id, &shape);
    let Some(_making) = state.templates.begin(&key) else {
        return Ok(None);
    };
    let template_err = |source| OpError::Template {
        image: image.name.clone(),
        source,
    };
    let staging = state.templates.staging(&key).map_err(template_err)?;
    let fingerprint = fingerprint_of(state, image)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let row = VmRow {
        id: id.clone(),
        name: "banger-template".to_string(),
        image_id: image.id.clone(),
        state: VmState::Creating,
        vmm: shape.vmm,
        cpus: shape.cpus,
        memory_mib: shape.memory_mib,
        disk_bytes: image.rootfs_bytes,
        work_disk_bytes: DEFAULT_WORK_DISK.bytes(),
        nat: false,
        ip: Some(TEMPLATE_IP),
        mac: Some(MacAddr(banger_net::plan::mac_for_ip(TEMPLATE_IP))),
        tap: Some(banger_net::plan::tap_name_for(&id)),
        // Far from the CIDs VMs take (3 upwards).
        vsock_cid: Some(0x7f00_0000 | (uuid::Uuid::new_v4().as_u128() as u32 & 0xffff)),
        pid: None,
        vmm_start_time: None,
        dir: staging.display().to_string(),
        error: None,
        created_at: state.now(),
        started_at: None,
        origin: Default::default(),
        paused: false,
    };
    if let Err(e) = make_steps(state, image, &row, &staging, progress).await {
        release(state, &row).await;
        state.templates.remove_dir(&staging);
        return Err(e);
    }
    let manifest = Manifest {
        image_id: image.id.clone(),
        shape,
        root_bytes: std::fs::metadata(staging.join(crate::templates::ROOT_DISK))
            .map(|m| m.len())
            .unwrap_or(row.disk_bytes),
        work_bytes: row.work_disk_bytes,
        fingerprint,
        made_at: state.now(),
    };
    let _lock = state.templates.lock().await;
    let installed = state.templates.install(&staging, &manifest);
    if installed.is_err() {
        state.templates.remove_dir(&staging);
    }
    installed.map(Some).map_err(template_err)
}

/// The template guest booted, saved and stopped (its network released by the caller).
async fn make_steps(
    state: &Arc<AppState>,
    image: &ImageRow,
    row: &VmRow,
    staging: &Path,
    progress: &Progress,
) -> Result<(), OpError> {
    let seed = {
        let images = state.locks.images().await;
        ensure_work_seed(state, image, &images).await?
    };
    let mut guest = guest_config(state, row)?;
    guest.prefix = 30;
    guest.gateway = std::net::Ipv4Addr::new(169, 254, 77, 1);
    guest.dns = Vec::new();
    guest.search = Vec::new();
    progress.stage("template disks", staging.display().to_string());
    write_disks(state, row, image, &seed, guest).await?;
    super::host_files::apply(state, row, progress).await?;
    let spec = state.spec(row)?;
    tokio::fs::create_dir_all(&spec.run_dir)
        .await
        .map_err(OpError::io("create", &spec.run_dir))?;
    net_up(state, row, false).await?;
    let vmm = state.vmm_of(row)?;
    let files = SnapshotFiles::in_dir(staging);
    progress.stage("template boot", format!("{} {}", vmm.kind(), image.name));
    let mode = StartMode::BootTemplate {
        memory: files.memory.clone(),
    };
    let vm_err = |source| OpError::Vmm {
        vm: format!("(template of {})", image.name),
        source: Box::new(source),
    };
    let running = vmm.launch(&spec, &mode).await.map_err(vm_err)?;
    let saved = async {
        wait_agent(state, &row.name, &running.agent).await?;
        settle(state, &running).await;
        progress.stage("template save", files.state.display().to_string());
        vmm.snapshot(&running, &files).await.map_err(vm_err)
    }
    .await;
    // Saved or not, the template's own VMM has done its work.
    if let Err(e) = banger_vmm::process::stop(vmm.as_ref(), &running, Duration::ZERO).await {
        tracing::warn!(error = %chain(&e), "cannot stop the template's VMM");
    }
    release(state, row).await;
    saved
}

/// Waits until the template guest is as a user finds a booted VM: its host keys made (the
/// agent waits for the first-boot unit) and, when the image has sshd, port 22 listening.
/// Bounded by `ssh_wait_secs`; a guest that is not there by then is saved anyway.
async fn settle(state: &AppState, running: &Running) {
    let budget = Duration::from_secs(state.opts.config.ssh_wait_secs);
    let deadline = Instant::now() + budget;
    let keys = agent_host_keys(&running.agent, budget).await;
    if !keys.as_ref().is_ok_and(|k| !k.keys.is_empty()) {
        return;
    }
    while Instant::now() < deadline {
        if let Ok(ports) = agent_ports(&running.agent, Duration::from_secs(5)).await
            && ports.listeners.iter().any(|l| l.port == 22)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restores `row` from `template` (see the module docs). On failure the caller undoes
/// what was made (the VMM, network, disks) and boots cold.
pub(super) async fn restore(
    state: &Arc<AppState>,
    row: &mut VmRow,
    template: &Template,
    progress: &Progress,
) -> Result<(), OpError> {
    let dir = PathBuf::from(&row.dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(OpError::io("create", &dir))?;
    let vmm = state.vmm_of(row)?;
    let name = row.name.clone();
    let vm_err = |source| OpError::Vmm {
        vm: name.clone(),
        source: Box::new(source),
    };
    let m = &template.manifest;
    let mut how = DiskClone::SparseCopy;
    for (base, name, size) in [
        (template.root_disk(), "root.ext4", m.root_bytes),
        (template.work_disk(), "work.ext4", m.work_bytes),
    ] {
        how = vmm
            .clone_disk(&base, &dir.join(name), size)
            .await
            .map_err(vm_err)?;
    }
    let key = Templates::key(&m.image_id, &m.shape);
    let note = Restored {
        template: key.clone(),
        disk_clone: how.to_string(),
    };
    let text = serde_json::to_vec(&note).unwrap_or_default();
    tokio::fs::write(dir.join(RESTORED), text)
        .await
        .map_err(OpError::io("write", &dir.join(RESTORED)))?;
    let mut grown = Vec::new();
    let mut grow = Vec::new();
    if row.disk_bytes > m.root_bytes {
        grown.push((Disk::Root, row.disk_bytes));
        grow.push("/dev/vda".to_string());
    }
    if row.work_disk_bytes > m.work_bytes {
        grown.push((Disk::Work, row.work_disk_bytes));
        grow.push("/dev/vdb".to_string());
    }
    let restore = Restore {
        snapshot: template.snapshot(),
        grown,
    };
    let what = format!("from template {key} ({how} disks)");
    launch_restored(state, row, restore, grow, progress, what).await
}

/// Brings `row`, whose disks are in place, up from the snapshot `restore` names: its
/// network, the VMM restoring the guest on the VM's own devices, the agent waited for, its
/// identity given (`grow`: the guest block devices whose file systems it grows), sshd waited
/// for; then `running`. What a template restore and a fork share. On failure the caller
/// undoes what was made.
pub(super) async fn launch_restored(
    state: &Arc<AppState>,
    row: &mut VmRow,
    restore: Restore,
    grow: Vec<String>,
    progress: &Progress,
    what: String,
) -> Result<(), OpError> {
    let vmm = state.vmm_of(row)?;
    let name = row.name.clone();
    let vm_err = |source| OpError::Vmm {
        vm: name.clone(),
        source: Box::new(source),
    };
    let pooled = super::pool::take_pooled(state, row)?;
    let spec = state.spec(row)?;
    tokio::fs::create_dir_all(&spec.run_dir)
        .await
        .map_err(OpError::io("create", &spec.run_dir))?;
    progress.stage(
        "network",
        format!("{} on {}", spec.tap, state.opts.config.bridge_name),
    );
    net_up(state, row, pooled).await?;
    progress.stage("restore", what);
    let mode = StartMode::Restore(restore);
    let running = vmm.launch(&spec, &mode).await.map_err(vm_err)?;
    row.pid = Some(running.pid);
    row.vmm_start_time = running.start_time;
    row.error = None;
    state.set_vm(row)?;
    // No separate wait for the agent: its probe would be one more connection after which the
    // agent reopens its port, and the identity's own probe (see `give_identity`) waits for it.
    progress.stage("identity", format!("{} {}", row.name, spec.mac));
    let keys = give_identity(state, row, &running, grow).await?;
    // A guest with sshd has host keys (the identity step made new ones of its types): only
    // then is port 22 worth waiting for, as a boot waits only when the image has sshd.
    let has_sshd = !keys.keys.is_empty();
    store_host_keys(state, row, Ok(keys));
    if has_sshd && let Some(ip) = row.ip.map(|ip| ip.to_string()) {
        let secs = state.opts.config.ssh_wait_secs;
        if !banger_api::probe::wait_ssh(&ip, Duration::from_secs(secs)).await {
            progress.stage("wait ssh", format!("sshd did not answer within {secs}s"));
        }
    }
    link_agent(state, row, &running.agent).await;
    row.state = VmState::Running;
    row.started_at = Some(state.now());
    state.set_vm(row)?;
    Ok(())
}

/// How long the identity step may take (new host keys under an emulated CPU).
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(60);

/// `POST /identity` to the restored guest of `row`; its new host keys.
async fn give_identity(
    state: &AppState,
    row: &VmRow,
    running: &Running,
    grow: Vec<String>,
) -> Result<banger_agent_proto::wire::HostKeys, OpError> {
    use banger_agent_proto::identity::{Identity, IdentityFile, hex};
    let guest = guest_config(state, row)?;
    guest.validate().map_err(|source| OpError::Disk {
        vm: row.name.clone(),
        source: Box::new(source),
    })?;
    let files = guest
        .files("")
        .into_iter()
        .filter(|f| f.path != "/etc/fstab")
        .map(|f| IdentityFile {
            path: f.path.to_string(),
            content: f.contents,
        })
        .collect();
    let mut entropy = [0u8; 64];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom")
            .map_err(OpError::io("open", Path::new("/dev/urandom")))?,
        &mut entropy,
    )
    .map_err(OpError::io("read", Path::new("/dev/urandom")))?;
    let now_ns = || {
        state
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
    };
    let mut req = Identity {
        hostname: row.name.clone(),
        files,
        mac: guest.mac.to_lowercase(),
        entropy: hex(&entropy),
        time_unix_ns: now_ns(),
        grow,
    };
    let agent_err = |source| OpError::Identity {
        vm: row.name.clone(),
        source,
    };
    // Sent only on a connection the agent has just answered on: a request written while the
    // agent is still closing the port after the previous connection is dropped by the guest
    // kernel (see `identity_on_live`). This is also the wait for the restored agent: a
    // connection refused (its socket not there yet) or a lost probe is tried again on a new
    // connection until the agent budget is spent; the identity itself is sent once.
    let deadline = Instant::now() + Duration::from_secs(state.opts.config.agent_wait_secs);
    loop {
        // The clock the guest is stepped to is read for each attempt: the attempts before
        // are the wait for the agent, and a time read before them would be seconds old.
        req.time_unix_ns = now_ns();
        let attempt = async {
            let stream = super::agent::agent_stream(&running.agent, IDENTITY_PROBE).await?;
            banger_agent_proto::client::identity_on_live(
                stream,
                &req,
                IDENTITY_PROBE,
                IDENTITY_TIMEOUT,
            )
            .await
        };
        match attempt.await {
            Err(e)
                if banger_agent_proto::client::request_not_sent(&e)
                    && Instant::now() < deadline =>
            {
                tracing::debug!(vm = %row.name, error = %chain(&e), "agent not answering yet; again");
                tokio::time::sleep(IDENTITY_RETRY).await;
            }
            other => return other.map_err(agent_err),
        }
    }
}

/// The pause between two connections while the restored agent does not answer yet.
const IDENTITY_RETRY: Duration = Duration::from_millis(10);

/// How long the health check before the identity may take before it counts as lost.
const IDENTITY_PROBE: Duration = Duration::from_secs(3);
