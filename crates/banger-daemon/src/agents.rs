//! The daemon's multiplexed connections to guest agents reached over a Unix socket (QEMU's
//! virtio-serial chardev, which takes one client at a time): one per running VM, made on
//! first use and replaced when it closed or belongs to an earlier run of the VM. Every
//! health, ports or exec request to such a VM is a substream of it (see `vms::agent`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_agent_proto::client::ClientError;
use banger_agent_proto::client::mux::Mux;
use banger_store::VmRow;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::OpError;

/// A byte stream to an agent: a connection of its own, or a substream of the VM's mux.
pub trait AgentIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentIo for T {}

/// The daemon's multiplexed connections to the agents of running VMs reached over a Unix
/// socket (see the module docs), by VM id.
#[derive(Debug, Default)]
pub struct AgentLinks {
    links: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Link>>>>>,
}

/// One VM's multiplexed connection, and which run of the VM it belongs to.
#[derive(Debug)]
struct Link {
    socket: PathBuf,
    pid: Option<u32>,
    mux: Mux,
}

impl AgentLinks {
    /// The slot of VM `id`; its async lock serialises making the VM's connection.
    fn slot(&self, id: &str) -> Arc<tokio::sync::Mutex<Option<Link>>> {
        let mut map = self.links.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    /// A new substream to the agent of VM `row` at `socket`, on the VM's multiplexed
    /// connection, which is made first when there is none, it closed, or it belongs to an
    /// earlier run of the VM (another VMM pid or socket).
    pub(crate) async fn open(
        &self,
        row: &VmRow,
        socket: &Path,
        timeout: Duration,
    ) -> Result<Box<dyn AgentIo>, OpError> {
        let slot = self.slot(&row.id);
        let mut link = slot.lock().await;
        let current = link
            .as_ref()
            .is_some_and(|l| l.socket == socket && l.pid == row.pid && !l.mux.is_closed());
        if !current {
            *link = None;
            let agent = |source| OpError::Agent {
                vm: row.name.clone(),
                source,
            };
            let stream =
                tokio::time::timeout(timeout, banger_agent_proto::client::connect_unix(socket))
                    .await
                    .map_err(|_| {
                        agent(ClientError::Timeout {
                            path: socket.display().to_string(),
                            after: timeout,
                        })
                    })?
                    .map_err(agent)?;
            let mux = banger_agent_proto::client::mux::connect(stream, timeout)
                .await
                .map_err(agent)?;
            *link = Some(Link {
                socket: socket.to_path_buf(),
                pid: row.pid,
                mux,
            });
        }
        let Some(l) = link.as_ref() else {
            unreachable!("the link was just made")
        };
        match l.mux.open().await {
            Ok(s) => Ok(Box::new(s)),
            Err(source) => {
                // A closed connection is made again on the next call.
                *link = None;
                Err(OpError::AgentMux {
                    vm: row.name.clone(),
                    source,
                })
            }
        }
    }

    /// Forgets VM `id`'s connection (closing it), for a VM that is gone.
    pub fn forget(&self, id: &str) {
        let mut map = self.links.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }
}
