//! The daemon's `.vm` DNS ([`banger_dns`]): the zone is rebuilt from the store after every
//! change of a VM row (start, stop, delete, reconcile), so the records are always the
//! running VMs with an address, and a daemon restarted after a crash serves the same zone as
//! soon as its reconcile ran.
//!
//! The server binds config `dns_listen` at daemon start; a failure (the port is taken) is
//! a warning in the log and in `daemon status`, not a failed start: VMs work without names.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use banger_api::types::DnsListener;
use banger_core::vm::VmState;
use banger_dns::{DnsServer, Records};
use banger_store::VmRow;

/// The zone and where it is served.
#[derive(Debug, Default)]
pub struct Dns {
    records: Arc<Records>,
    listener: Mutex<DnsListener>,
}

impl Dns {
    /// Makes the zone the running VMs of `rows` (those with an address).
    pub fn refresh(&self, rows: &[VmRow]) {
        let running = rows
            .iter()
            .filter(|r| r.state == VmState::Running)
            .filter_map(|r| r.ip.map(|ip| (r.name.as_str(), ip)));
        if let Err(e) = self.records.replace(running) {
            // Store names are validated VM names, which are DNS labels.
            tracing::warn!(error = %e, "a VM name is not a DNS label; DNS zone not updated");
        }
    }

    /// Where the server listens, or why it does not.
    pub fn listener(&self) -> DnsListener {
        self.listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts serving on `addr`; a failure is recorded and logged, and `None` returned.
    pub async fn serve(&self, addr: SocketAddr) -> Option<DnsServer> {
        let (server, state) = match DnsServer::bind(addr, self.records.clone()).await {
            Ok(server) => {
                let at = server.local_addr();
                tracing::info!(address = %at, "DNS for .vm listening");
                (Some(server), DnsListener::Listening { address: at })
            }
            Err(e) => {
                let why = banger_core::error::chain(&e);
                tracing::warn!(error = %why, "no DNS for .vm");
                (None, DnsListener::Failed { error: why })
            }
        };
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = state;
        server
    }
}
