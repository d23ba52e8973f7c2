//! `.vm` names for the host through systemd-resolved: the bridge link is given banger's DNS
//! server and the routing-only domain `~vm`, and is never a default route, so resolved sends
//! `*.vm` queries (and only those) to the daemon.
//!
//! - [`DnsRoute`]: what a link is given (server address and port, domain), checked by
//!   [`DnsRoute::validate`] before anything runs (the helper checks it again).
//! - [`route_commands`] / [`unroute_command`]: the `resolvectl` command lines
//!   [`NetOps::route_dns`](crate::NetOps::route_dns) and
//!   [`NetOps::unroute_dns`](crate::NetOps::unroute_dns) run.
//! - [`detect`]: whether resolved runs here: its runtime directory has its varlink socket
//!   or its stub `resolv.conf`, and `resolvectl status` answers.
//!
//! Per-link settings live only as long as the link: deleting the bridge also drops them, and
//! a bridge made again needs them again (the daemon re-applies them when records change).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::runner::CommandRunner;

/// systemd-resolved's runtime directory.
pub const RESOLVED_DIR: &str = "/run/systemd/resolve";

/// The domain banger's DNS answers for.
pub const VM_DOMAIN: &str = "vm";

/// A DNS server and the domain a link routes to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRoute {
    /// The server's address (the daemon's listener on the bridge gateway).
    pub server: Ipv4Addr,
    /// Its UDP/TCP port.
    pub port: u16,
    /// The domain routed to it, without the `~` (routing-only is always meant): `vm`.
    pub domain: String,
}

impl fmt::Display for DnsRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "~{} -> {}:{}", self.domain, self.server, self.port)
    }
}

/// Why a [`DnsRoute`] is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS route {route}: {reason}")]
pub struct DnsRouteError {
    /// The route, rendered.
    pub route: String,
    /// What is wrong with it.
    pub reason: String,
}

impl DnsRoute {
    /// The route for banger's `.vm` zone served at `server:port`.
    pub fn vm(server: Ipv4Addr, port: u16) -> Self {
        Self {
            server,
            port,
            domain: VM_DOMAIN.to_string(),
        }
    }

    /// A unicast (or loopback) server, a non-zero port, and a domain of DNS labels (letters,
    /// digits, `-`, at most 63 each, 253 in all).
    pub fn validate(&self) -> Result<(), DnsRouteError> {
        let bad = |reason: &str| DnsRouteError {
            route: format!(
                "~{:?} -> {}:{}",
                self.domain.escape_debug().to_string(),
                self.server,
                self.port
            ),
            reason: reason.to_string(),
        };
        let ip = self.server;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(bad("the server is not a unicast address"));
        }
        if self.port == 0 {
            return Err(bad("port 0 is not a port"));
        }
        if !banger_core::names::is_dns_name(&self.domain) {
            return Err(bad(
                "the domain is not DNS labels (letters, digits, '-', separated by '.')",
            ));
        }
        Ok(())
    }
}

/// The `resolvectl` argument lists that give link `bridge` `route`: its DNS server, the
/// routing-only domain, no default route, and no DNSSEC or DNS-over-TLS for it (banger's
/// zone is unsigned and served in the clear on the host).
pub fn route_commands(bridge: &str, route: &DnsRoute) -> Vec<Vec<String>> {
    let server = format!("{}:{}", route.server, route.port);
    let domain = format!("~{}", route.domain);
    [
        vec!["dns", bridge, &server],
        vec!["domain", bridge, &domain],
        vec!["default-route", bridge, "false"],
        vec!["dnssec", bridge, "no"],
        vec!["dnsovertls", bridge, "no"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(str::to_string).collect())
    .collect()
}

/// The `resolvectl` arguments that drop every setting of link `bridge`.
pub fn unroute_command(bridge: &str) -> Vec<String> {
    vec!["revert".to_string(), bridge.to_string()]
}

/// Whether systemd-resolved serves this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// It runs and `resolvectl` talks to it.
    Running,
    /// It does not (the reason says which check failed).
    NotRunning(String),
}

/// Whether resolved runs: `dir` (normally [`RESOLVED_DIR`]) holds its varlink socket
/// `io.systemd.Resolve` or its stub `stub-resolv.conf`, and `resolvectl status` succeeds
/// through `runner` (the directory can outlive a stopped service).
pub fn detect(dir: &Path, runner: &dyn CommandRunner) -> Detected {
    let marks = ["io.systemd.Resolve", "stub-resolv.conf"];
    if !marks.iter().any(|m| dir.join(m).exists()) {
        return Detected::NotRunning(format!(
            "systemd-resolved is not running ({} has neither {})",
            dir.display(),
            marks.join(" nor ")
        ));
    }
    let args = ["--no-pager".to_string(), "status".to_string()];
    match runner.run("resolvectl", &args) {
        Ok(out) if out.success() => Detected::Running,
        Ok(out) => Detected::NotRunning(format!("`{}` failed: {}", out.command, out.stderr.trim())),
        Err(e) => Detected::NotRunning(banger_core::error::chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::fake::{FakeRunner, Reply};

    fn route() -> DnsRoute {
        DnsRoute::vm(Ipv4Addr::new(172, 30, 0, 1), 42069)
    }

    #[test]
    fn a_route_is_five_resolvectl_settings_and_revert_undoes_them() {
        let cmds: Vec<String> = route_commands("banger0", &route())
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "dns banger0 172.30.0.1:42069",
                "domain banger0 ~vm",
                "default-route banger0 false",
                "dnssec banger0 no",
                "dnsovertls banger0 no",
            ]
        );
        assert_eq!(unroute_command("banger0"), ["revert", "banger0"]);
        assert_eq!(route().to_string(), "~vm -> 172.30.0.1:42069");
    }

    #[test]
    fn adversarial_routes_are_refused() {
        assert_eq!(route().validate(), Ok(()));
        let with = |f: fn(&mut DnsRoute)| {
            let mut r = route();
            f(&mut r);
            r.validate().unwrap_err().reason
        };
        assert!(with(|r| r.server = Ipv4Addr::UNSPECIFIED).contains("unicast"));
        assert!(with(|r| r.server = Ipv4Addr::new(224, 0, 0, 1)).contains("unicast"));
        assert!(with(|r| r.server = Ipv4Addr::BROADCAST).contains("unicast"));
        assert!(with(|r| r.port = 0).contains("port 0"));
        for domain in ["", "vm\nx", "~vm", "a..b", "-vm", "vm-", "a b", "v/m"] {
            let mut r = route();
            r.domain = domain.into();
            let err = r.validate().unwrap_err();
            assert!(err.reason.contains("DNS labels"), "{domain:?}: {err}");
        }
        let mut r = route();
        r.domain = format!("{}.vm", "l".repeat(64));
        assert!(r.validate().is_err());
        r.domain = "dev.vm".into();
        assert_eq!(r.validate(), Ok(()));
        let mut loopback = route();
        loopback.server = Ipv4Addr::LOCALHOST;
        assert_eq!(loopback.validate(), Ok(()));
    }

    #[test]
    fn detection_needs_resolved_s_runtime_files_and_an_answering_resolvectl() {
        let dir = tempfile::tempdir().unwrap();
        let runner = FakeRunner::new();
        let Detected::NotRunning(why) = detect(dir.path(), &runner) else {
            panic!("an empty dir is not resolved")
        };
        assert!(
            why.contains("io.systemd.Resolve nor stub-resolv.conf"),
            "{why}"
        );
        assert!(runner.calls().is_empty(), "resolvectl is not asked then");

        std::fs::write(
            dir.path().join("stub-resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();
        assert_eq!(detect(dir.path(), &runner), Detected::Running);
        assert_eq!(runner.calls(), ["resolvectl --no-pager status"]);

        let stopped = FakeRunner::new();
        stopped.on(
            "resolvectl --no-pager status",
            Reply::Fail(1, "Failed to get global data: Unit dbus-org.freedesktop.resolve1.service not found.\n".into()),
        );
        let Detected::NotRunning(why) = detect(dir.path(), &stopped) else {
            panic!("a failing resolvectl is not resolved")
        };
        assert!(why.contains("not found"), "{why}");

        let missing = FakeRunner::new();
        missing.on("resolvectl --no-pager status", Reply::NotFound);
        assert!(matches!(
            detect(dir.path(), &missing),
            Detected::NotRunning(why) if why.contains("could not run `resolvectl --no-pager status`")
        ));
    }
}
