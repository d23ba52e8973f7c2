//! The VM's guest agent: waiting for it to answer, its health, a ping, its listening ports,
//! exec sessions and guest files (read, write, list). The agent's wire answers become the API's own types here.
//!
//! # One way in per VM
//!
//! Under Firecracker every connection to the hybrid vsock socket is its own guest
//! connection, so each request opens one. A QEMU guest (and the fake VMM's host-mode agent)
//! is reached through a Unix socket, which for QEMU is the virtio-serial chardev: one byte
//! stream that takes one client at a time. Once the VM runs, every request and exec session
//! to such a VM is therefore a substream of one multiplexed connection ([`AgentLinks`](crate::agents::AgentLinks), one
//! mux per VM, made on first use and replaced when it closed or the VM's VMM changed),
//! so a long exec session never blocks health checks and sessions run side by side. Only the
//! boot-time wait ([`wait_agent`]) uses plain connections: nothing else talks to the VM yet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_agent_proto::client::exec::Io;
use banger_agent_proto::client::{ClientError, DEFAULT_TIMEOUT};
use banger_agent_proto::files::{self, check_guest_path};
use banger_agent_proto::wire;
use banger_api::types::{
    Family, GuestDirEntry, GuestDirListing, GuestEntryKind, GuestFile, GuestFileWritten, Health,
    ListGuestDir, Ping, PortListener, Proto, ReadGuestFile, VmState, WriteGuestFile,
};
use banger_store::VmRow;
use banger_vmm::AgentEndpoint;

use crate::agents::AgentIo;
use crate::error::{OpError, chain};
use crate::state::AppState;

/// Polls the guest agent until it answers or the deadline passes.
pub(super) async fn wait_agent(
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

/// Makes the multiplexed link to a guest reached over a one-client socket (QEMU's
/// virtio-serial; see [`crate::agents`]) while the VM boots, within the boot's agent budget
/// (config `agent_wait_secs`). The checks before it used connections of their own, after
/// each of which the agent closes and reopens its port, and the guest kernel drops what the
/// host writes into that gap: a link request lost there is never answered. So each attempt
/// gets [`LINK_ATTEMPT`] and a lost one is made again on a new connection, until the budget
/// is spent. Not fatal: the next request makes the link again.
pub(super) async fn link_agent(state: &AppState, row: &VmRow, endpoint: &AgentEndpoint) {
    if let AgentEndpoint::Unix(socket) = endpoint {
        let deadline = Instant::now() + Duration::from_secs(state.opts.config.agent_wait_secs);
        loop {
            let attempt = LINK_ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
            match state.agents.open(row, socket, attempt).await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(vm = %row.name, error = %chain(&e), "agent link lost; again");
                    tokio::time::sleep(AGENT_POLL).await;
                }
                Err(e) => {
                    tracing::warn!(vm = %row.name, error = %chain(&e), "agent link not made at boot");
                    return;
                }
            }
        }
    }
}

/// How long one attempt of [`link_agent`] waits for the agent's answer.
const LINK_ATTEMPT: Duration = Duration::from_secs(5);

/// How often [`wait_agent`] retries while the guest boots.
const AGENT_POLL: Duration = Duration::from_millis(20);

pub(super) async fn agent_stream(
    endpoint: &AgentEndpoint,
    timeout: Duration,
) -> Result<tokio::net::UnixStream, ClientError> {
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
        Err(_) => Err(ClientError::Timeout {
            path: match endpoint {
                AgentEndpoint::HybridVsock { uds, .. } => uds.display().to_string(),
                AgentEndpoint::Unix(p) => p.display().to_string(),
            },
            after: timeout,
        }),
    }
}

/// Asks the agent at `endpoint` for its health, over a connection of its own.
pub async fn agent_health(
    endpoint: &AgentEndpoint,
    timeout: Duration,
) -> Result<banger_agent_proto::wire::Health, ClientError> {
    let stream = agent_stream(endpoint, timeout).await?;
    banger_agent_proto::client::health(stream, timeout).await
}

/// Asks the agent at `endpoint` for the guest's listening sockets, over a connection of its
/// own.
pub async fn agent_ports(
    endpoint: &AgentEndpoint,
    timeout: Duration,
) -> Result<banger_agent_proto::wire::Ports, ClientError> {
    let stream = agent_stream(endpoint, timeout).await?;
    banger_agent_proto::client::ports(stream, timeout).await
}

/// Asks the agent at `endpoint` for the guest's SSH host keys, over a connection of its own
/// (at boot, before anything else talks to the VM).
pub async fn agent_host_keys(
    endpoint: &AgentEndpoint,
    timeout: Duration,
) -> Result<banger_agent_proto::wire::HostKeys, ClientError> {
    // Asked on a connection the agent has just answered on (see `host_keys_on_live`): the
    // boot's agent wait used a connection of its own, and a request written into the
    // agent's reopen gap after it would wait all of `timeout` for nothing. A lost probe is
    // tried again on a new connection.
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let stream = agent_stream(endpoint, HOST_KEYS_PROBE).await?;
            banger_agent_proto::client::host_keys_on_live(stream, HOST_KEYS_PROBE, timeout).await
        };
        match attempt.await {
            Err(e)
                if banger_agent_proto::client::request_not_sent(&e)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(AGENT_POLL).await;
            }
            other => return other,
        }
    }
}

/// How long the health probe before the host keys request may take before it counts as lost.
const HOST_KEYS_PROBE: Duration = Duration::from_secs(3);

/// The agent endpoint of a running VM.
pub fn endpoint_of(state: &AppState, row: &VmRow) -> Result<AgentEndpoint, OpError> {
    if row.state != VmState::Running {
        return Err(OpError::NotRunning {
            vm: row.name.clone(),
        });
    }
    if row.paused {
        return Err(OpError::Paused {
            vm: row.name.clone(),
        });
    }
    Ok(state.vmm_of(row)?.agent_endpoint(&state.spec(row)?))
}

/// A new stream to the agent of the running VM `row` (see the module docs for which kind).
pub(super) async fn open_stream(
    state: &AppState,
    row: &VmRow,
    timeout: Duration,
) -> Result<Box<dyn AgentIo>, OpError> {
    match endpoint_of(state, row)? {
        ep @ AgentEndpoint::HybridVsock { .. } => match agent_stream(&ep, timeout).await {
            Ok(s) => Ok(Box::new(s)),
            Err(source) => Err(OpError::Agent {
                vm: row.name.clone(),
                source,
            }),
        },
        AgentEndpoint::Unix(socket) => state.agents.open(row, &socket, timeout).await,
    }
}

/// How long the health, ping and ports routes wait for the agent.
const AGENT_TIMEOUT: Duration = DEFAULT_TIMEOUT;

/// The agent's health answer for the running VM `reference` names.
pub async fn health(state: &AppState, reference: &str) -> Result<Health, OpError> {
    let (_, h) = health_of(state, reference).await?;
    Ok(Health {
        version: h.version,
        commit: h.commit,
        build_epoch: h.build_epoch,
        uptime_secs: h.uptime_secs,
        hostname: h.hostname,
    })
}

/// A health round trip to the agent of the running VM `reference` names, timed.
pub async fn ping(state: &AppState, reference: &str) -> Result<Ping, OpError> {
    let t = Instant::now();
    let (row, h) = health_of(state, reference).await?;
    Ok(Ping {
        name: row.name,
        rtt_ms: t.elapsed().as_secs_f64() * 1000.0,
        agent_version: h.version,
    })
}

/// The VM `reference` names and the listening sockets its guest agent reports, as the
/// API's type (endpoints and URLs not yet filled: see [`ports`](super::ports)).
pub(super) async fn listeners(
    state: &AppState,
    reference: &str,
) -> Result<(VmRow, Vec<PortListener>), OpError> {
    let row = state.find_vm(reference)?;
    let stream = open_stream(state, &row, AGENT_TIMEOUT).await?;
    let p = banger_agent_proto::client::ports(stream, AGENT_TIMEOUT)
        .await
        .map_err(|source| OpError::Agent {
            vm: row.name.clone(),
            source,
        })?;
    let listeners = p.listeners.into_iter().map(port_listener).collect();
    Ok((row, listeners))
}

async fn health_of(state: &AppState, reference: &str) -> Result<(VmRow, wire::Health), OpError> {
    let row = state.find_vm(reference)?;
    let stream = open_stream(state, &row, AGENT_TIMEOUT).await?;
    match banger_agent_proto::client::health(stream, AGENT_TIMEOUT).await {
        Ok(h) => Ok((row, h)),
        Err(source) => Err(OpError::Agent {
            vm: row.name,
            source,
        }),
    }
}

/// An exec session's connection to the agent of the running VM `reference` names, already
/// upgraded to the exec protocol (`GET /exec`) and waiting for the session's `Start` frame.
pub async fn exec_channel(state: &AppState, reference: &str) -> Result<Io, OpError> {
    let row = state.find_vm(reference)?;
    let stream = open_stream(state, &row, AGENT_TIMEOUT).await?;
    banger_agent_proto::client::exec::upgrade_exec(stream, AGENT_TIMEOUT)
        .await
        .map_err(|source| OpError::Agent {
            vm: row.name,
            source,
        })
}

/// How long a file request waits for the agent: a write carries up to 512 KiB and syncs.
const FILE_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest file at `req.path` in the running VM `reference` names, through its agent.
pub async fn read_file(
    state: &AppState,
    reference: &str,
    req: ReadGuestFile,
) -> Result<GuestFile, OpError> {
    check_guest_path(&req.path)?;
    let row = state.find_vm(reference)?;
    let stream = open_stream(state, &row, AGENT_TIMEOUT).await?;
    let ask = files::ReadFile {
        path: req.path.clone(),
        max_bytes: req.max_bytes,
    };
    let f = banger_agent_proto::client::read_file(stream, &ask, FILE_TIMEOUT)
        .await
        .map_err(guest_file(&row, "read", &req.path))?;
    Ok(GuestFile {
        path: f.path,
        size: f.size,
        mode: f.mode,
        content: f.content,
        truncated: f.truncated,
    })
}

/// Writes the guest file at `req.path` in the running VM `reference` names, through its
/// agent (replaced whole).
pub async fn write_file(
    state: &AppState,
    reference: &str,
    req: WriteGuestFile,
) -> Result<GuestFileWritten, OpError> {
    check_guest_path(&req.path)?;
    let row = state.find_vm(reference)?;
    let stream = open_stream(state, &row, AGENT_TIMEOUT).await?;
    let path = req.path.clone();
    let ask = files::WriteFile {
        path: req.path,
        content: req.content,
        mode: req.mode,
        create_parents: req.create_parents,
    };
    let w = banger_agent_proto::client::write_file(stream, &ask, FILE_TIMEOUT)
        .await
        .map_err(guest_file(&row, "write", &path))?;
    Ok(GuestFileWritten {
        path: w.path,
        bytes: w.bytes,
        mode: w.mode,
    })
}

/// The guest directory at `req.path` in the running VM `reference` names, through its agent.
pub async fn list_dir(
    state: &AppState,
    reference: &str,
    req: ListGuestDir,
) -> Result<GuestDirListing, OpError> {
    check_guest_path(&req.path)?;
    let row = state.find_vm(reference)?;
    let stream = open_stream(state, &row, AGENT_TIMEOUT).await?;
    let ask = files::ListDir {
        path: req.path.clone(),
    };
    let l = banger_agent_proto::client::list_dir(stream, &ask, FILE_TIMEOUT)
        .await
        .map_err(guest_file(&row, "list", &req.path))?;
    Ok(GuestDirListing {
        path: l.path,
        entries: l
            .entries
            .into_iter()
            .map(|e| GuestDirEntry {
                name: e.name,
                kind: match e.kind {
                    files::EntryKind::File => GuestEntryKind::File,
                    files::EntryKind::Dir => GuestEntryKind::Dir,
                    files::EntryKind::Symlink => GuestEntryKind::Symlink,
                    files::EntryKind::Other => GuestEntryKind::Other,
                },
                size: e.size,
                mode: e.mode,
            })
            .collect(),
        truncated: l.truncated,
    })
}

fn guest_file<'a>(
    row: &'a VmRow,
    what: &'static str,
    path: &'a str,
) -> impl FnOnce(ClientError) -> OpError + 'a {
    move |source| OpError::GuestFile {
        vm: row.name.clone(),
        what,
        path: path.to_string(),
        source,
    }
}

fn port_listener(l: wire::Listener) -> PortListener {
    PortListener {
        proto: match l.proto {
            wire::Proto::Tcp => Proto::Tcp,
            wire::Proto::Udp => Proto::Udp,
        },
        family: match l.family {
            wire::Family::Ipv4 => Family::Ipv4,
            wire::Family::Ipv6 => Family::Ipv6,
        },
        address: l.address,
        port: l.port,
        pid: l.pid,
        process: l.process,
        command: l.command,
        endpoint: String::new(),
        url: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_listeners_keep_every_field() {
        let wire = wire::Listener {
            proto: wire::Proto::Udp,
            family: wire::Family::Ipv6,
            address: "::".into(),
            port: 53,
            pid: Some(7),
            process: Some("dnsd".into()),
            command: Some("dnsd -f".into()),
        };
        let api = port_listener(wire.clone());
        // Field for field, the same JSON as the agent's, plus the endpoint `ports` fills.
        let mut json = serde_json::to_value(&api).unwrap();
        assert_eq!(json["endpoint"], "");
        json.as_object_mut().unwrap().remove("endpoint");
        assert_eq!(json, serde_json::to_value(&wire).unwrap());
        assert_eq!((api.proto, api.family), (Proto::Udp, Family::Ipv6));
    }
}
