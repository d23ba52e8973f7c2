//! Boot: host files into the work disk, network up, VMM started, agent answering, sshd waited
//! for, the guest's host keys recorded; and [`release`], which undoes what a boot took (TAP,
//! NAT rule, run directory).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use banger_api::types::VmState;
use banger_store::VmRow;

use banger_agent_proto::wire::HostKeys;

use super::agent::{agent_host_keys, open_stream, wait_agent};
use super::host_files;
use crate::error::{OpError, chain};
use crate::progress::Progress;
use crate::state::AppState;

/// Network up, VMM started, agent answering, sshd waited for; only then is the row
/// `running`. Until then it keeps its state (`creating`, or `stopped` for a start): the run
/// directory exists before the TAP does, and the VMM's pid and start time are stored as soon
/// as it runs, so that [`reconcile`] can undo a boot the daemon did not live to finish.
pub(super) async fn boot(
    state: &Arc<AppState>,
    row: &mut VmRow,
    progress: &Progress,
) -> Result<(), OpError> {
    // A VM restored from a template has the backend's clones of the template's disks, which
    // the host's disk tools do not open: its host files are the template's (written when it
    // was made), and its image had sshd (the template waited for it).
    let restored = super::disks::restored(std::path::Path::new(&row.dir)).is_some();
    // Before anything is taken: a refused `file_sync` entry leaves the VM as it was.
    if restored {
        progress.stage(
            "host files",
            "kept: the disks are clones of a warm-start template's",
        );
    } else {
        host_files::apply(state, row, progress).await?;
    }
    // A ready TAP from the pool, recorded in the row before the spec names it.
    let pooled = super::pool::take_pooled(state, row)?;
    let spec = state.spec(row)?;
    // The mark of a boot under way (see the module docs); release removes it.
    tokio::fs::create_dir_all(&spec.run_dir)
        .await
        .map_err(OpError::io("create", &spec.run_dir))?;
    progress.stage(
        "network",
        format!("{} on {}", spec.tap, state.opts.config.bridge_name),
    );
    net_up(state, row, pooled).await?;
    let vmm = state.vmm_of(row)?;
    // Read before boot, while nothing else has the disk open.
    let has_sshd = restored || {
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
    if has_sshd && let Some(ip) = row.ip.map(|ip| ip.to_string()) {
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
    record_host_keys(state, row, &running.agent).await;
    super::agent::link_agent(state, row, &running.agent).await;
    row.state = VmState::Running;
    row.started_at = Some(state.now());
    state.set_vm(row)?;
    Ok(())
}

/// How long the guest has to report its host keys (its agent waits up to 20 s for a first
/// boot still making them).
const HOST_KEYS_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the agent for the guest's SSH host keys and records them in banger's known_hosts
/// under the VM's name and address, replacing whatever was there for either. Not fatal: a
/// guest that cannot say (an older agent) keeps the lines it had, and ssh with strict host
/// key checking refuses it until a boot records them.
async fn record_host_keys(state: &AppState, row: &VmRow, endpoint: &banger_vmm::AgentEndpoint) {
    let answer = agent_host_keys(endpoint, HOST_KEYS_TIMEOUT).await;
    store_host_keys(state, row, answer);
}

/// Records what the agent of `row` answered for its host keys (see [`record_host_keys`]).
pub(super) fn store_host_keys(
    state: &AppState,
    row: &VmRow,
    answer: Result<HostKeys, banger_agent_proto::client::ClientError>,
) {
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(vm = %row.name, error = %chain(&e), "host keys not recorded");
            return;
        }
    };
    let mut keys = Vec::new();
    for line in &answer.keys {
        match banger_core::known_hosts::HostKey::parse(line) {
            Ok(k) => keys.push(k),
            Err(e) => {
                tracing::warn!(vm = %row.name, error = %e, "a host key from the guest is refused")
            }
        }
    }
    match state.ssh_hosts.record(&row.name, row.ip, &keys) {
        Ok(()) => tracing::info!(vm = %row.name, keys = keys.len(), "host keys recorded"),
        Err(e) => tracing::warn!(vm = %row.name, error = %chain(&e), "host keys not recorded"),
    }
}

/// At daemon start: records the host keys of running VMs that banger's known_hosts has no
/// line for (booted by a banger that did not record them), so strict host key checking
/// works for them without a restart. The agent is asked without the VM's lock; the answer
/// is kept only if the VM still runs the same VMM afterwards.
pub async fn record_missing_host_keys(state: Arc<AppState>) {
    let Ok(rows) = state.vm_rows() else { return };
    let known = std::fs::read_to_string(state.ssh_hosts.known_hosts()).unwrap_or_default();
    for row in rows {
        if row.state != VmState::Running || banger_core::known_hosts::knows(&known, &row.name) {
            continue;
        }
        let answer = match open_stream(&state, &row, HOST_KEYS_TIMEOUT).await {
            Ok(stream) => banger_agent_proto::client::host_keys(stream, HOST_KEYS_TIMEOUT).await,
            Err(e) => {
                tracing::warn!(vm = %row.name, error = %chain(&e), "host keys not recorded");
                continue;
            }
        };
        let lock = state.locks.vm(&row.id);
        let _g = lock.lock().await;
        let still = state.db(|s| s.get_vm(&row.id)).ok().flatten();
        if still.is_some_and(|now| now.state == VmState::Running && now.pid == row.pid) {
            store_host_keys(&state, &row, answer);
        }
    }
}

/// Drops a deleted VM's host keys from banger's known_hosts; a failure is logged.
pub(super) fn forget_host_keys(state: &AppState, row: &VmRow) {
    if let Err(e) = state.ssh_hosts.forget(&row.name, row.ip) {
        tracing::warn!(vm = %row.name, error = %chain(&e), "host keys not removed");
    }
}

/// The bridge and the VM's TAP (unless `pooled`: a pool TAP is made on the bridge, owned by
/// the daemon's user, before it is handed out), and its NAT rule.
pub(super) async fn net_up(
    state: &Arc<AppState>,
    row: &VmRow,
    pooled: bool,
) -> Result<(), OpError> {
    let net = state.host.net.clone();
    let bridge = state.opts.config.bridge_name.clone();
    let subnet = state.subnet;
    let tap = row.tap.clone().unwrap_or_default();
    let nat = row.nat;
    let ip: Option<Ipv4Addr> = row.ip;
    let uid = Some(state.uid);
    let bridge_lock = state.bridge_lock.clone();
    tokio::task::spawn_blocking(move || -> Result<(), banger_net::NetError> {
        if !pooled {
            {
                let _made = bridge_lock.lock().unwrap_or_else(|e| e.into_inner());
                net.ensure_bridge(&bridge, &subnet)?;
            }
            net.create_tap(&tap, &bridge, uid)?;
        }
        if nat && let Some(ip) = ip {
            net.enable_nat(&subnet, ip, NAT_OUT_IFACE)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(|source| OpError::Net {
        vm: row.name.clone(),
        source,
    })?;
    // The guests' DNS on the gateway and the TAP pool can start now.
    state.bridge_up();
    Ok(())
}

/// The interface NAT masquerades out of: any but the bridge (the rule matches traffic leaving
/// the subnet), so a VM keeps its way out when the host's default route moves (Wi-Fi to
/// wired, a VPN coming up) and reaches networks the host routes elsewhere.
const NAT_OUT_IFACE: Option<&str> = None;

/// Adds (`on`) or removes the NAT rule of running VM `row` now.
pub(super) async fn set_nat(state: &Arc<AppState>, row: &VmRow, on: bool) -> Result<(), OpError> {
    let net = state.host.net.clone();
    let subnet = state.subnet;
    let ip = row.ip.ok_or_else(|| OpError::NoAddress {
        vm: row.name.clone(),
    })?;
    tokio::task::spawn_blocking(move || {
        if on {
            net.enable_nat(&subnet, ip, NAT_OUT_IFACE)
        } else {
            net.disable_nat(ip)
        }
    })
    .await
    .map_err(|e| OpError::Join(e.to_string()))?
    .map_err(|source| OpError::Net {
        vm: row.name.clone(),
        source,
    })
}

/// Undoes what a start took: TAP, NAT rule, sockets. Best effort; failures are logged, and
/// what is already gone (a TAP or rule removed by hand, a host rebooted) is skipped with a
/// debug line by the network operations.
pub(super) async fn release(state: &Arc<AppState>, row: &VmRow) {
    let net = state.host.net.clone();
    let tap = row.tap.clone();
    let ip: Option<Ipv4Addr> = row.ip;
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
