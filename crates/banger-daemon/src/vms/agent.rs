//! The VM's guest agent: waiting for it to answer, its health and its listening ports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::types::VmState;
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
    if row.state != VmState::Running.as_str() {
        return Err(OpError::NotRunning {
            vm: row.name.clone(),
        });
    }
    Ok(state.vmm_of(row)?.agent_endpoint(&state.spec(row)?))
}
