//! The root helper's contract: what an unprivileged daemon may ask of `banger-helper`, the
//! checks every request passes before anything runs ([`Policy::check`]), and the client the
//! daemon holds instead of [`DirectNetOps`](crate::DirectNetOps) ([`HelperNetOps`], a
//! [`NetOps`]).
//!
//! # Wire
//! A Unix stream socket; the client writes one [`Request`] as a JSON line and reads one
//! [`Response`] line; a connection may carry several in turn. A line is at most
//! [`MAX_LINE`] bytes. Every request but [`Request::Version`] is one [`NetOps`] operation with its arguments typed
//! ([`Subnet`], [`Ipv4Addr`]); there is no way to name a command, a path or a shell.
//!
//! # Policy ([`Policy::check`])
//! - only the owner (the uid the helper was installed for, checked with `SO_PEERCRED` by
//!   the server) is served; everyone else is refused before reading a request;
//! - TAP devices must be named like banger's ([`TAP_PREFIX`] and a valid interface name),
//!   so `eth0` can be neither created nor deleted, and are always owned by the caller;
//! - the bridge is the one the helper was installed for, and its subnet a private range
//!   (RFC 1918): a route for someone else's addresses cannot be added;
//! - NAT only for a guest address of a private subnet, out of a valid interface name;
//! - resolved routing and the guest DNS redirect only for banger's bridge, to a private or
//!   loopback server on a non-zero port, for a domain of DNS labels ([`DnsRoute::validate`]);
//! - cleanup only of banger's bridge.
//!
//! A refused request changes nothing ([`Response::Refused`]); an operation that ran and
//! failed is [`Response::Failed`] with its error's text.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::{Subnet, TAP_PREFIX, validate_ifname};
use crate::{DnsRoute, NetError, NetOps};

/// Longest request or response line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// How long the client waits for the helper to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One operation asked of the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// [`NetOps::ensure_bridge`].
    EnsureBridge { name: String, subnet: Subnet },
    /// [`NetOps::create_tap`], owned by the caller.
    CreateTap {
        name: String,
        bridge: String,
        owner_uid: Option<u32>,
    },
    /// [`NetOps::delete_tap`].
    DeleteTap { name: String },
    /// [`NetOps::list_links`].
    ListLinks { prefix: String },
    /// [`NetOps::link_exists`].
    LinkExists { name: String },
    /// [`NetOps::enable_nat`].
    EnableNat {
        subnet: Subnet,
        vm_ip: Ipv4Addr,
        out_iface: Option<String>,
    },
    /// [`NetOps::disable_nat`].
    DisableNat { vm_ip: Ipv4Addr },
    /// The helper's build ([`BuildInfo`](banger_core::build::BuildInfo)), for `doctor` and
    /// `system status`: a helper of another build than the daemon's needs a restart.
    Version,
    /// [`NetOps::route_dns`].
    RouteDns { bridge: String, route: DnsRoute },
    /// [`NetOps::unroute_dns`].
    UnrouteDns { bridge: String },
    /// [`NetOps::enable_guest_dns`].
    EnableGuestDns {
        bridge: String,
        gateway: Ipv4Addr,
        port: u16,
    },
    /// [`NetOps::cleanup`].
    Cleanup { bridge: String },
}

/// The helper's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The operation ran.
    Done,
    /// [`Request::ListLinks`]'s answer.
    Links { names: Vec<String> },
    /// [`Request::LinkExists`]'s answer.
    Exists { exists: bool },
    /// [`Request::Version`]'s answer.
    Build { build: String },
    /// Not allowed or not understood; nothing ran.
    Refused { error: String },
    /// It ran and failed.
    Failed { error: String },
}

/// What the helper allows (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The only uid served.
    pub owner_uid: u32,
    /// The only bridge that may be made or attached to.
    pub bridge: String,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn private(subnet: &Subnet) -> bool {
    let n = subnet.network();
    let [a, b, ..] = n.octets();
    (a == 10) || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168)
}

impl Policy {
    /// Whether `peer_uid` may send `req` (see the module docs).
    pub fn check(&self, req: &Request, peer_uid: u32) -> Result<(), Refusal> {
        let name = |n: &str| validate_ifname(n).map_err(|e| Refusal(e.to_string()));
        let tap = |n: &str| {
            name(n)?;
            if !n.starts_with(TAP_PREFIX) {
                return Err(Refusal(format!(
                    "{n:?} is not one of banger's TAP devices (they are named {TAP_PREFIX}...)"
                )));
            }
            Ok(())
        };
        let bridge = |n: &str| {
            name(n)?;
            if n != self.bridge {
                return Err(Refusal(format!(
                    "bridge {n:?} is not banger's bridge {:?} (the helper was installed for that one)",
                    self.bridge
                )));
            }
            Ok(())
        };
        let subnet = |s: &Subnet| {
            if !private(s) {
                return Err(Refusal(format!(
                    "subnet {s} is not a private range (10/8, 172.16/12, 192.168/16)"
                )));
            }
            Ok(())
        };
        match req {
            Request::EnsureBridge { name: n, subnet: s } => {
                bridge(n)?;
                subnet(s)
            }
            Request::CreateTap {
                name: n,
                bridge: b,
                owner_uid,
            } => {
                tap(n)?;
                bridge(b)?;
                if *owner_uid != Some(peer_uid) {
                    return Err(Refusal(format!(
                        "a TAP device is owned by its requester (uid {peer_uid}), not {owner_uid:?}"
                    )));
                }
                Ok(())
            }
            Request::DeleteTap { name: n } => tap(n),
            Request::ListLinks { prefix } => {
                if prefix.is_empty()
                    || prefix.len() > 15
                    || prefix.contains(|c: char| c.is_control() || c == '/' || c.is_whitespace())
                {
                    return Err(Refusal(format!(
                        "{prefix:?} is not an interface name prefix"
                    )));
                }
                Ok(())
            }
            Request::LinkExists { name: n } => name(n),
            Request::EnableNat {
                subnet: s,
                vm_ip,
                out_iface,
            } => {
                subnet(s)?;
                if !s.is_guest_address(*vm_ip) {
                    return Err(Refusal(format!("{vm_ip} is not a guest address in {s}")));
                }
                if let Some(out) = out_iface {
                    name(out)?;
                }
                Ok(())
            }
            Request::DisableNat { vm_ip } => {
                if !vm_ip.is_private() {
                    return Err(Refusal(format!("{vm_ip} is not a private address")));
                }
                Ok(())
            }
            Request::Version => Ok(()),
            Request::RouteDns { bridge: b, route } => {
                bridge(b)?;
                route.validate().map_err(|e| Refusal(e.to_string()))?;
                if !(route.server.is_private() || route.server.is_loopback()) {
                    return Err(Refusal(format!(
                        "DNS server {} is not a private or loopback address",
                        route.server
                    )));
                }
                Ok(())
            }
            Request::UnrouteDns { bridge: b } | Request::Cleanup { bridge: b } => bridge(b),
            Request::EnableGuestDns {
                bridge: b,
                gateway,
                port,
            } => {
                bridge(b)?;
                if !gateway.is_private() || *port == 0 {
                    return Err(Refusal(format!(
                        "guest DNS must go to a private address and a non-zero port, not {gateway}:{port}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Runs a checked request on `net`.
pub fn perform(net: &dyn NetOps, req: &Request) -> Response {
    let done = |r: Result<(), NetError>| match r {
        Ok(()) => Response::Done,
        Err(e) => Response::Failed {
            error: banger_core::error::chain(&e),
        },
    };
    match req {
        Request::EnsureBridge { name, subnet } => done(net.ensure_bridge(name, subnet)),
        Request::CreateTap {
            name,
            bridge,
            owner_uid,
        } => done(net.create_tap(name, bridge, *owner_uid)),
        Request::DeleteTap { name } => done(net.delete_tap(name)),
        Request::ListLinks { prefix } => match net.list_links(prefix) {
            Ok(names) => Response::Links { names },
            Err(e) => Response::Failed {
                error: banger_core::error::chain(&e),
            },
        },
        Request::LinkExists { name } => match net.link_exists(name) {
            Ok(exists) => Response::Exists { exists },
            Err(e) => Response::Failed {
                error: banger_core::error::chain(&e),
            },
        },
        Request::EnableNat {
            subnet,
            vm_ip,
            out_iface,
        } => done(net.enable_nat(subnet, *vm_ip, out_iface.as_deref())),
        Request::DisableNat { vm_ip } => done(net.disable_nat(*vm_ip)),
        Request::Version => Response::Build {
            build: banger_core::build::BuildInfo::current().to_string(),
        },
        Request::RouteDns { bridge, route } => done(net.route_dns(bridge, route)),
        Request::UnrouteDns { bridge } => done(net.unroute_dns(bridge)),
        Request::EnableGuestDns {
            bridge,
            gateway,
            port,
        } => done(net.enable_guest_dns(bridge, *gateway, *port)),
        Request::Cleanup { bridge } => done(net.cleanup(bridge)),
    }
}

/// The daemon's [`NetOps`] when it runs unprivileged: each operation is a request to the
/// root helper at `socket` (one connection per operation).
#[derive(Debug, Clone)]
pub struct HelperNetOps {
    socket: PathBuf,
}

impl HelperNetOps {
    /// A client of the helper listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Where the helper is asked.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `req` and reads the answer.
    pub fn ask(&self, req: &Request) -> Result<Response, NetError> {
        let unreachable = |source: std::io::Error| NetError::HelperUnreachable {
            socket: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(unreachable)?;
        let mut line = serde_json::to_vec(req).map_err(|e| NetError::HelperProtocol {
            socket: self.socket.clone(),
            reason: format!("cannot encode the request: {e}"),
        })?;
        line.push(b'\n');
        // A helper that refuses the peer answers before reading and closes, so the write may
        // fail (EPIPE) with the refusal already waiting: the answer is read either way.
        let wrote = stream.write_all(&line);
        let mut answer = Vec::new();
        let read = BufReader::new(&stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut answer);
        let read = match (wrote, read) {
            (_, Ok(n)) if n > 0 && answer.ends_with(b"\n") => n,
            (Err(e), _) | (Ok(()), Err(e)) => return Err(unreachable(e)),
            (Ok(()), Ok(n)) => n,
        };
        if read == 0 || !answer.ends_with(b"\n") {
            return Err(NetError::HelperProtocol {
                socket: self.socket.clone(),
                reason: "the helper closed the connection without a whole answer".into(),
            });
        }
        serde_json::from_slice(&answer).map_err(|e| NetError::HelperProtocol {
            socket: self.socket.clone(),
            reason: format!("unreadable answer: {e}"),
        })
    }

    /// The helper's build, as [`BuildInfo`](banger_core::build::BuildInfo) prints it.
    pub fn build(&self) -> Result<String, NetError> {
        match self.ask(&Request::Version)? {
            Response::Build { build } => Ok(build),
            other => Err(self.unexpected(other)),
        }
    }

    fn unit(&self, req: Request) -> Result<(), NetError> {
        match self.ask(&req)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    fn unexpected(&self, answer: Response) -> NetError {
        match answer {
            Response::Refused { error } => NetError::HelperRefused { error },
            Response::Failed { error } => NetError::HelperFailed { error },
            other => NetError::HelperProtocol {
                socket: self.socket.clone(),
                reason: format!("an answer of the wrong kind: {other:?}"),
            },
        }
    }
}

impl NetOps for HelperNetOps {
    fn ensure_bridge(&self, name: &str, subnet: &Subnet) -> Result<(), NetError> {
        self.unit(Request::EnsureBridge {
            name: name.into(),
            subnet: *subnet,
        })
    }

    fn create_tap(&self, name: &str, bridge: &str, owner_uid: Option<u32>) -> Result<(), NetError> {
        self.unit(Request::CreateTap {
            name: name.into(),
            bridge: bridge.into(),
            owner_uid,
        })
    }

    fn delete_tap(&self, name: &str) -> Result<(), NetError> {
        self.unit(Request::DeleteTap { name: name.into() })
    }

    fn list_links(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        match self.ask(&Request::ListLinks {
            prefix: prefix.into(),
        })? {
            Response::Links { names } => Ok(names),
            other => Err(self.unexpected(other)),
        }
    }

    fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        match self.ask(&Request::LinkExists { name: name.into() })? {
            Response::Exists { exists } => Ok(exists),
            other => Err(self.unexpected(other)),
        }
    }

    fn enable_nat(
        &self,
        subnet: &Subnet,
        vm_ip: Ipv4Addr,
        out_iface: Option<&str>,
    ) -> Result<(), NetError> {
        self.unit(Request::EnableNat {
            subnet: *subnet,
            vm_ip,
            out_iface: out_iface.map(str::to_string),
        })
    }

    fn disable_nat(&self, vm_ip: Ipv4Addr) -> Result<(), NetError> {
        self.unit(Request::DisableNat { vm_ip })
    }

    fn route_dns(&self, bridge: &str, route: &DnsRoute) -> Result<(), NetError> {
        self.unit(Request::RouteDns {
            bridge: bridge.into(),
            route: route.clone(),
        })
    }

    fn unroute_dns(&self, bridge: &str) -> Result<(), NetError> {
        self.unit(Request::UnrouteDns {
            bridge: bridge.into(),
        })
    }

    fn enable_guest_dns(&self, bridge: &str, gateway: Ipv4Addr, port: u16) -> Result<(), NetError> {
        self.unit(Request::EnableGuestDns {
            bridge: bridge.into(),
            gateway,
            port,
        })
    }

    fn cleanup(&self, bridge: &str) -> Result<(), NetError> {
        self.unit(Request::Cleanup {
            bridge: bridge.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            owner_uid: 1000,
            bridge: "banger0".into(),
        }
    }

    fn subnet(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn banger_s_own_operations_pass() {
        let p = policy();
        for req in [
            Request::EnsureBridge {
                name: "banger0".into(),
                subnet: subnet("172.30.0.0/24"),
            },
            Request::CreateTap {
                name: "bgr0123abcd".into(),
                bridge: "banger0".into(),
                owner_uid: Some(1000),
            },
            Request::DeleteTap {
                name: "bgr0123abcd".into(),
            },
            Request::ListLinks {
                prefix: TAP_PREFIX.into(),
            },
            Request::LinkExists {
                name: "banger0".into(),
            },
            Request::EnableNat {
                subnet: subnet("10.9.0.0/16"),
                vm_ip: "10.9.0.7".parse().unwrap(),
                out_iface: Some("eth0".into()),
            },
            Request::DisableNat {
                vm_ip: "10.9.0.7".parse().unwrap(),
            },
            Request::Version,
            Request::RouteDns {
                bridge: "banger0".into(),
                route: DnsRoute::vm("172.30.0.1".parse().unwrap(), 42069),
            },
            Request::UnrouteDns {
                bridge: "banger0".into(),
            },
            Request::EnableGuestDns {
                bridge: "banger0".into(),
                gateway: "172.30.0.1".parse().unwrap(),
                port: 42069,
            },
            Request::Cleanup {
                bridge: "banger0".into(),
            },
        ] {
            assert_eq!(p.check(&req, 1000), Ok(()), "{req:?}");
        }
    }

    #[test]
    fn adversarial_requests_outside_banger_s_pattern_are_refused() {
        let p = policy();
        let cases = [
            (
                Request::DeleteTap {
                    name: "eth0".into(),
                },
                "not one of banger's TAP",
            ),
            (
                Request::CreateTap {
                    name: "eth0".into(),
                    bridge: "banger0".into(),
                    owner_uid: Some(1000),
                },
                "not one of banger's TAP",
            ),
            (
                Request::CreateTap {
                    name: "bgr1".into(),
                    bridge: "docker0".into(),
                    owner_uid: Some(1000),
                },
                "not banger's bridge",
            ),
            (
                Request::CreateTap {
                    name: "bgr1".into(),
                    bridge: "banger0".into(),
                    owner_uid: Some(0),
                },
                "owned by its requester",
            ),
            (
                Request::DeleteTap {
                    name: "bgr1\nx".into(),
                },
                "",
            ),
            (
                Request::EnsureBridge {
                    name: "banger0".into(),
                    subnet: subnet("8.8.8.0/24"),
                },
                "not a private range",
            ),
            (
                Request::EnableNat {
                    subnet: subnet("172.30.0.0/24"),
                    vm_ip: "172.30.1.5".parse().unwrap(),
                    out_iface: None,
                },
                "not a guest address",
            ),
            (
                Request::EnableNat {
                    subnet: subnet("172.30.0.0/24"),
                    vm_ip: "172.30.0.5".parse().unwrap(),
                    out_iface: Some("a b".into()),
                },
                "",
            ),
            (
                Request::ListLinks { prefix: "".into() },
                "not an interface name prefix",
            ),
            (
                Request::RouteDns {
                    bridge: "eth0".into(),
                    route: DnsRoute::vm("172.30.0.1".parse().unwrap(), 42069),
                },
                "not banger's bridge",
            ),
            (
                Request::RouteDns {
                    bridge: "banger0".into(),
                    route: DnsRoute::vm("8.8.8.8".parse().unwrap(), 53),
                },
                "not a private or loopback address",
            ),
            (
                Request::RouteDns {
                    bridge: "banger0".into(),
                    route: DnsRoute {
                        server: "172.30.0.1".parse().unwrap(),
                        port: 42069,
                        domain: "vm\nDNS=1.2.3.4".into(),
                    },
                },
                "not DNS labels",
            ),
            (
                Request::RouteDns {
                    bridge: "banger0".into(),
                    route: DnsRoute::vm("172.30.0.1".parse().unwrap(), 0),
                },
                "port 0",
            ),
            (
                Request::UnrouteDns {
                    bridge: "br\n0".into(),
                },
                "",
            ),
            (
                Request::EnableGuestDns {
                    bridge: "banger0".into(),
                    gateway: "1.1.1.1".parse().unwrap(),
                    port: 42069,
                },
                "private address and a non-zero port",
            ),
            (
                Request::Cleanup {
                    bridge: "docker0".into(),
                },
                "not banger's bridge",
            ),
        ];
        for (req, why) in cases {
            let refusal = p.check(&req, 1000).unwrap_err();
            assert!(refusal.0.contains(why), "{req:?}: {refusal}");
        }
    }

    #[test]
    fn the_wire_is_tagged_json_and_refuses_unknown_fields_and_bad_subnets() {
        let req = Request::DeleteTap {
            name: "bgr1".into(),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(text, r#"{"op":"delete_tap","name":"bgr1"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        for bad in [
            r#"{"op":"delete_tap","name":"bgr1","shell":"rm -rf /"}"#,
            r#"{"op":"run","command":"id"}"#,
            r#"{"op":"ensure_bridge","name":"banger0","subnet":"0.0.0.0/0"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&Response::Exists { exists: true }).unwrap(),
            r#"{"result":"exists","exists":true}"#
        );
    }
}
