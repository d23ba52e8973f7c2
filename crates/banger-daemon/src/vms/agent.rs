//! The VM's guest agent: waiting for it to answer, its health, a ping and its listening
//! ports. The agent's wire answers become the API's own types here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_agent_proto::wire;
use banger_api::types::{Family, Health, Ping, PortListener, Ports, Proto, VmState};
use banger_store::VmRow;

use banger_vmm::AgentEndpoint;

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
    if row.state != VmState::Running {
        return Err(OpError::NotRunning {
            vm: row.name.clone(),
        });
    }
    Ok(state.vmm_of(row)?.agent_endpoint(&state.spec(row)?))
}

/// How long the health, ping and ports routes wait for the agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The listening sockets of the guest of the running VM `reference` names.
pub async fn ports(state: &AppState, reference: &str) -> Result<Ports, OpError> {
    let row = state.find_vm(reference)?;
    let ep = endpoint_of(state, &row)?;
    let p = agent_ports(&ep, AGENT_TIMEOUT)
        .await
        .map_err(|source| OpError::Agent {
            vm: row.name.clone(),
            source,
        })?;
    Ok(Ports {
        listeners: p.listeners.into_iter().map(port_listener).collect(),
    })
}

async fn health_of(state: &AppState, reference: &str) -> Result<(VmRow, wire::Health), OpError> {
    let row = state.find_vm(reference)?;
    let ep = endpoint_of(state, &row)?;
    match agent_health(&ep, AGENT_TIMEOUT).await {
        Ok(h) => Ok((row, h)),
        Err(source) => Err(OpError::Agent {
            vm: row.name,
            source,
        }),
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
        // Field for field, the same JSON as the agent's.
        assert_eq!(
            serde_json::to_value(&api).unwrap(),
            serde_json::to_value(&wire).unwrap()
        );
        assert_eq!((api.proto, api.family), (Proto::Udp, Family::Ipv6));
    }
}
