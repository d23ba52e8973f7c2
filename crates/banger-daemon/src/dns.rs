//! The daemon's `.vm` DNS ([`banger_dns`]): the zone is rebuilt from the store after every
//! change of a VM row (start, stop, delete, reconcile), so the records are always the
//! running VMs with an address, and a daemon restarted after a crash serves the same zone as
//! soon as its reconcile ran.
//!
//! Three ways in, all serving the same [`Records`]:
//! - the host: config `dns_listen` (default `127.0.0.1:42069`), bound at daemon start; a
//!   failure (the port is taken) is a warning in the log and in `daemon status`, not a
//!   failed start: VMs work without names;
//! - guests: a second listener on the bridge gateway at the same port
//!   ([`Dns::serve_guests`]), and a redirect of the gateway's port 53 to it
//!   ([`NetOps::enable_guest_dns`]), so a guest whose `resolv.conf` names the gateway first
//!   (with `search vm`) resolves `OTHER.vm` and `OTHER`; any other name is REFUSED there,
//!   and the guest's resolver moves on to the next nameserver;
//! - the host's resolver: when systemd-resolved runs, the bridge link routes `~vm` to the
//!   gateway listener ([`Dns::route`], [`NetOps::route_dns`]), applied again whenever the
//!   records change ([`Dns::changed`]: the bridge may have been made again meanwhile, and
//!   resolved forgets a link's settings with the link) and reverted at shutdown.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::{Arc, Mutex};

use banger_api::types::{DnsListener, DnsRouting};
use banger_core::runner::CommandRunner;
use banger_core::vm::VmState;
use banger_dns::{DnsServer, Records};
use banger_net::NetOps;
use banger_net::resolved::{Detected, DnsRoute};
use banger_store::VmRow;
use tokio::sync::Notify;

/// The zone and where it is served.
#[derive(Debug, Default)]
pub struct Dns {
    records: Arc<Records>,
    /// The zone as last set, to tell a change from a rewrite of the same records.
    current: Mutex<Vec<(String, Ipv4Addr)>>,
    listener: Mutex<DnsListener>,
    guests: Mutex<DnsListener>,
    routing: Mutex<DnsRouting>,
    changed: Notify,
    /// The guests' server, once [`Dns::serve_guests`] started it; shut down with the daemon.
    guest_server: Mutex<Option<DnsServer>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dns {
    /// Makes the zone the running VMs of `rows` (those with an address); wakes
    /// [`Dns::changed`] when that differs from the zone before.
    pub fn refresh(&self, rows: &[VmRow]) {
        let running: Vec<(String, Ipv4Addr)> = rows
            .iter()
            .filter(|r| r.state == VmState::Running)
            .filter_map(|r| r.ip.map(|ip| (r.name.clone(), ip)))
            .collect();
        if let Err(e) = self
            .records
            .replace(running.iter().map(|(n, ip)| (n.as_str(), *ip)))
        {
            // Store names are validated VM names, which are DNS labels.
            tracing::warn!(error = %e, "a VM name is not a DNS label; DNS zone not updated");
            return;
        }
        let mut current = lock(&self.current);
        if *current != running {
            *current = running;
            self.changed.notify_one();
        }
    }

    /// Waits until the zone changed since the last wait (a change while nobody waited
    /// counts once).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Keeps the guests' server until [`Dns::shutdown_guests`].
    pub fn keep_guest_server(&self, server: DnsServer) {
        *lock(&self.guest_server) = Some(server);
    }

    /// Stops the guests' server, if one runs.
    pub async fn shutdown_guests(&self) {
        let server = lock(&self.guest_server).take();
        if let Some(server) = server {
            server.shutdown().await;
        }
    }

    /// Where the host's server listens, or why it does not.
    pub fn listener(&self) -> DnsListener {
        lock(&self.listener).clone()
    }

    /// Where the guests' server listens, or why it does not.
    pub fn guest_listener(&self) -> DnsListener {
        lock(&self.guests).clone()
    }

    /// Whether the host's resolver routes `.vm` here.
    pub fn routing(&self) -> DnsRouting {
        lock(&self.routing).clone()
    }

    /// Starts serving on `addr`; a failure is recorded and logged, and `None` returned.
    pub async fn serve(&self, addr: SocketAddr) -> Option<DnsServer> {
        let (server, state) = self.bind(addr, "DNS for .vm").await;
        *lock(&self.listener) = state;
        server
    }

    async fn bind(&self, addr: SocketAddr, what: &str) -> (Option<DnsServer>, DnsListener) {
        match DnsServer::bind(addr, self.records.clone()).await {
            Ok(server) => {
                let at = server.local_addr();
                tracing::info!(address = %at, "{what} listening");
                (Some(server), DnsListener::Listening { address: at })
            }
            Err(e) => {
                let why = banger_core::error::chain(&e);
                tracing::warn!(error = %why, "no {what}");
                (None, DnsListener::Failed { error: why })
            }
        }
    }

    /// Serves guests on `gateway` (the bridge's address, which must exist) at `port` (0: a
    /// free one), and redirects port 53 of the gateway arriving on `bridge` there. A
    /// listener on every address (`dns_listen` `0.0.0.0:PORT`) already serves the gateway:
    /// then only the redirect is made, to `host_port`. Returns the new server, and the
    /// address serving the zone on the gateway (`None` when the listener failed); a failed
    /// redirect is recorded and logged, and leaves the listener (the host's resolver can
    /// still use it).
    pub async fn serve_guests(
        &self,
        net: Arc<dyn NetOps>,
        bridge: &str,
        gateway: Ipv4Addr,
        listen: SocketAddr,
        host_port: Option<u16>,
    ) -> (Option<DnsServer>, Option<SocketAddrV4>) {
        let (server, state) = match (listen.ip().is_unspecified(), host_port) {
            (true, Some(port)) => (
                None,
                DnsListener::Listening {
                    address: SocketAddr::from((gateway, port)),
                },
            ),
            _ => {
                self.bind(SocketAddr::from((gateway, listen.port())), "DNS for guests")
                    .await
            }
        };
        let at = match &state {
            DnsListener::Listening { address } => SocketAddrV4::new(gateway, address.port()),
            _ => {
                *lock(&self.guests) = state;
                return (server, None);
            }
        };
        let bridge = bridge.to_string();
        let redirect =
            tokio::task::spawn_blocking(move || net.enable_guest_dns(&bridge, gateway, at.port()))
                .await;
        let state = match redirect {
            Ok(Ok(())) => state,
            Ok(Err(e)) => {
                let why = format!(
                    "cannot redirect the gateway's port 53: {}",
                    banger_core::error::chain(&e)
                );
                tracing::warn!(error = %why, "no DNS for guests");
                DnsListener::Failed { error: why }
            }
            Err(e) => DnsListener::Failed {
                error: e.to_string(),
            },
        };
        *lock(&self.guests) = state;
        (server, Some(at))
    }

    /// Routes `.vm` of the host's resolver to `server` through link `bridge` when
    /// systemd-resolved runs (checked in `resolved_dir` and with `runner`), and records the
    /// outcome ([`Dns::routing`]).
    pub async fn route(
        &self,
        net: Arc<dyn NetOps>,
        runner: Arc<dyn CommandRunner>,
        resolved_dir: &Path,
        bridge: &str,
        server: SocketAddrV4,
    ) {
        let dir = resolved_dir.to_path_buf();
        let bridge = bridge.to_string();
        let state = tokio::task::spawn_blocking(move || {
            match banger_net::resolved::detect(&dir, runner.as_ref()) {
                Detected::NotRunning(reason) => DnsRouting::NotAvailable { reason },
                Detected::Running => {
                    let route = DnsRoute::vm(*server.ip(), server.port());
                    match net.route_dns(&bridge, &route) {
                        Ok(()) => DnsRouting::Resolved {
                            bridge,
                            server: SocketAddr::V4(server),
                        },
                        Err(e) => DnsRouting::Failed {
                            error: banger_core::error::chain(&e),
                        },
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|e| DnsRouting::Failed {
            error: e.to_string(),
        });
        let mut current = lock(&self.routing);
        if *current != state {
            match &state {
                DnsRouting::Resolved { bridge, server } => {
                    tracing::info!(%bridge, %server, "systemd-resolved routes .vm here")
                }
                DnsRouting::NotAvailable { reason } => {
                    tracing::info!(%reason, "no .vm routing for the host's resolver")
                }
                DnsRouting::Failed { error } => {
                    tracing::warn!(%error, "systemd-resolved refused the .vm routing")
                }
                DnsRouting::Off => {}
            }
        }
        *current = state;
    }

    /// Reverts the routing [`Dns::route`] made, if it made one (daemon shutdown).
    pub async fn unroute(&self, net: Arc<dyn NetOps>) {
        let DnsRouting::Resolved { bridge, .. } = self.routing() else {
            return;
        };
        let b = bridge.clone();
        match tokio::task::spawn_blocking(move || net.unroute_dns(&b)).await {
            Ok(Ok(())) => {
                tracing::info!(%bridge, "systemd-resolved no longer routes .vm here");
                *lock(&self.routing) = DnsRouting::Off;
            }
            Ok(Err(e)) => {
                tracing::warn!(%bridge, error = %banger_core::error::chain(&e), "cannot revert the .vm routing")
            }
            Err(e) => tracing::warn!(error = %e, "cannot revert the .vm routing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::fake::{FakeRunner, Reply};
    use banger_net::fake::{FakeNetOps, NetCall};

    fn row(name: &str, ip: u8, state: VmState) -> VmRow {
        crate::test_rows::vm_row(
            &format!("id-{name}"),
            name,
            state,
            Some(Ipv4Addr::new(172, 30, 0, ip)),
        )
    }

    #[tokio::test]
    async fn a_changed_zone_wakes_the_resync_and_a_rewrite_of_the_same_does_not() {
        let dns = Dns::default();
        let rows = [
            row("web", 2, VmState::Running),
            row("db", 3, VmState::Stopped),
        ];
        dns.refresh(&rows);
        let woke = |dns: &Dns| {
            let fut = dns.changed();
            futures_now(fut)
        };
        assert!(woke(&dns), "the first zone is a change");
        dns.refresh(&rows);
        assert!(!woke(&dns), "the same zone again is not");
        dns.refresh(&[
            row("web", 2, VmState::Running),
            row("db", 3, VmState::Running),
        ]);
        assert!(woke(&dns));
        assert_eq!(dns.records.len(), 2);
    }

    /// Whether `fut` is ready at once.
    fn futures_now(fut: impl std::future::Future<Output = ()>) -> bool {
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        fut.as_mut().poll(&mut cx).is_ready()
    }

    fn fake_bridge() -> Arc<FakeNetOps> {
        let net = Arc::new(FakeNetOps::new());
        net.ensure_bridge("banger0", &"172.30.0.0/24".parse().unwrap())
            .unwrap();
        net
    }

    #[tokio::test]
    async fn routing_needs_resolved_and_is_reverted_at_shutdown() {
        let resolved = tempfile::tempdir().unwrap();
        let server = SocketAddrV4::new(Ipv4Addr::new(172, 30, 0, 1), 42069);
        let net = fake_bridge();
        let runner = Arc::new(FakeRunner::new());
        let dns = Dns::default();
        dns.route(
            net.clone(),
            runner.clone(),
            resolved.path(),
            "banger0",
            server,
        )
        .await;
        assert!(
            matches!(dns.routing(), DnsRouting::NotAvailable { reason } if reason.contains("not running")),
            "{:?}",
            dns.routing()
        );
        assert!(net.dns_routes().is_empty());

        std::fs::write(resolved.path().join("io.systemd.Resolve"), "").unwrap();
        dns.route(
            net.clone(),
            runner.clone(),
            resolved.path(),
            "banger0",
            server,
        )
        .await;
        assert_eq!(
            dns.routing(),
            DnsRouting::Resolved {
                bridge: "banger0".into(),
                server: SocketAddr::V4(server),
            }
        );
        assert_eq!(
            net.dns_routes()["banger0"],
            DnsRoute::vm(*server.ip(), 42069)
        );
        dns.unroute(net.clone()).await;
        assert!(net.dns_routes().is_empty());
        assert_eq!(dns.routing(), DnsRouting::Off);
        assert_eq!(
            net.calls().last(),
            Some(&NetCall::UnrouteDns {
                bridge: "banger0".into()
            })
        );

        // resolved runs but the bridge is not there: the failure is reported.
        let failing = FakeRunner::new();
        failing.on("resolvectl --no-pager status", Reply::Ok(String::new()));
        dns.route(
            Arc::new(FakeNetOps::new()),
            Arc::new(failing),
            resolved.path(),
            "banger0",
            server,
        )
        .await;
        assert!(
            matches!(dns.routing(), DnsRouting::Failed { error } if error.contains("banger0")),
            "{:?}",
            dns.routing()
        );
    }

    #[tokio::test]
    async fn guests_get_a_listener_on_the_gateway_and_the_port_53_redirect() {
        let net = fake_bridge();
        let dns = Dns::default();
        // 127.0.0.2 stands in for a gateway: any local address that is not the host listener.
        let gw = Ipv4Addr::new(127, 0, 0, 2);
        let (server, at) = dns
            .serve_guests(
                net.clone(),
                "banger0",
                gw,
                "127.0.0.1:0".parse().unwrap(),
                None,
            )
            .await;
        let server = server.expect("a guest listener");
        let at = at.unwrap();
        assert_eq!(*at.ip(), gw);
        assert_eq!(server.local_addr(), SocketAddr::V4(at));
        assert_eq!(net.guest_dns(), Some(("banger0".into(), gw, at.port())));
        assert_eq!(
            dns.guest_listener(),
            DnsListener::Listening {
                address: SocketAddr::V4(at)
            }
        );
        server.shutdown().await;

        // A host listener on every address already serves the gateway.
        let (server, at) = dns
            .serve_guests(
                net.clone(),
                "banger0",
                gw,
                "0.0.0.0:42069".parse().unwrap(),
                Some(42069),
            )
            .await;
        assert!(server.is_none());
        assert_eq!(at, Some(SocketAddrV4::new(gw, 42069)));

        // A redirect that fails is reported; the listener stays for the host's resolver.
        net.fail_next(
            banger_net::fake::NetOp::EnableGuestDns,
            banger_net::NetError::CommandFailed {
                command: "nft add rule".into(),
                code: Some(1),
                stderr: "injected".into(),
            },
        );
        let (server, at) = dns
            .serve_guests(net, "banger0", gw, "127.0.0.1:0".parse().unwrap(), None)
            .await;
        assert!(at.is_some());
        assert!(
            matches!(dns.guest_listener(), DnsListener::Failed { error } if error.contains("injected")),
            "{:?}",
            dns.guest_listener()
        );
        if let Some(s) = server {
            s.shutdown().await;
        }
    }
}
