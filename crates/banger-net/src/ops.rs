//! Host network operations: the [`NetOps`] trait the daemon calls, and
//! [`DirectNetOps`], which performs them with `ip` (iproute2) and `nft`.
//!
//! # Why a trait
//! Changing host links needs root or `CAP_NET_ADMIN`. Today the daemon holds a
//! `DirectNetOps` when it has that privilege; otherwise the root helper
//! (`banger-helper`) performs the same operations for it over a socket, and the daemon
//! holds [`HelperNetOps`](crate::helper::HelperNetOps), which implements [`NetOps`]. So every method takes narrow, typed,
//! serde-serializable arguments (`&str` names, [`Subnet`], [`Ipv4Addr`], `u32`).
//!
//! # Blocking
//! The trait is synchronous: each call runs a few short external commands. Async
//! callers run it on a blocking thread (`tokio::task::spawn_blocking`).
//!
//! # Why the `ip` and `nft` commands
//! Rather than netlink from Rust (the `rtnetlink` crate), [`DirectNetOps`] runs the
//! commands an administrator would type: fewer dependencies, identical behaviour,
//! and every failure names a command line that can be pasted into a shell. Every
//! command goes through an injected [`CommandRunner`], so unit tests check exact
//! command lines and the integration test runs them in a scratch network namespace.
//!
//! # Idempotency
//! Every operation first reads the current state (`ip -d -j link show`,
//! `ip -j addr show`, `nft -j list ...`) and only changes what differs, so calling
//! it again, or after a crash half-way, converges on the same result.
//!
//! # NAT
//! Masquerading lives in a dedicated nftables table `ip banger` ([`NAT_TABLE`]),
//! chain `postrouting` (a `nat` hook at priority `srcnat`), created on demand and
//! shared by all VMs. Each VM gets one rule, `ip saddr VM ip daddr != SUBNET
//! [oifname OUT] counter masquerade`, tagged with the comment
//! `banger-nat vm=VM subnet=SUBNET out=OUT|any` so it can be found and removed.
//! Enabling NAT also sets `net.ipv4.ip_forward=1`; nothing turns it back off, since
//! other guests or host software may rely on it. The table only adds NAT: a host
//! whose forward filter drops traffic (Docker's `FORWARD` policy, for instance)
//! still needs its own accept rules for the bridge.
//!
//! # Guest DNS, resolved routing, cleanup
//! The same table has a chain `prerouting` (a `nat` hook at priority `dstnat`) holding two
//! rules, UDP and TCP, tagged `banger-dns bridge=BR to=GW:PORT proto=P`: port 53 of the
//! gateway arriving on the bridge goes to the daemon's listener there
//! ([`NetOps::enable_guest_dns`]). [`NetOps::route_dns`] gives the bridge link its
//! systemd-resolved settings with `resolvectl` (see [`crate::resolved`]). [`NetOps::cleanup`]
//! removes all of it: every `bgr*` TAP, the bridge (and with it resolved's settings for it)
//! and the table.

mod json;

use std::fmt;
use std::net::Ipv4Addr;

use crate::plan::{IfNameError, Subnet, TAP_PREFIX, validate_ifname};
use crate::resolved::{DnsRoute, DnsRouteError};
use crate::runner::{CommandOutput, CommandRunner, SpawnError};
use json::{Link, NftRule};

/// nftables family of banger's NAT table.
pub const NAT_FAMILY: &str = "ip";
/// Name of banger's NAT table (`nft list table ip banger`).
pub const NAT_TABLE: &str = "banger";
/// Name of the NAT chain in [`NAT_TABLE`].
pub const NAT_CHAIN: &str = "postrouting";
/// The chain definition: a source-NAT hook that accepts by default.
const NAT_CHAIN_SPEC: &str = "{ type nat hook postrouting priority srcnat ; policy accept ; }";
/// Start of the comment on every per-VM NAT rule; the VM's IP follows.
pub const NAT_COMMENT_PREFIX: &str = "banger-nat vm=";
/// The chain of guest DNS redirects in [`NAT_TABLE`].
pub const DNS_CHAIN: &str = "prerouting";
/// The chain definition: a destination-NAT hook that accepts by default.
const DNS_CHAIN_SPEC: &str = "{ type nat hook prerouting priority dstnat ; policy accept ; }";
/// Start of the comment on the guest DNS redirects.
pub const DNS_COMMENT_PREFIX: &str = "banger-dns ";

/// Host networking for banger VMs: a bridge, one TAP per VM, optional NAT per VM.
///
/// Every method is idempotent and blocking (see the [module docs](self)).
pub trait NetOps: Send + Sync + fmt::Debug {
    /// Makes sure bridge `name` exists, carries `subnet`'s gateway address
    /// ([`Subnet::gateway_cidr`], e.g. `172.30.0.1/24`) and is up; creates it if
    /// missing. Fails with [`NetError::NotABridge`] if `name` is another kind of
    /// link. Other addresses already on the bridge are left alone.
    fn ensure_bridge(&self, name: &str, subnet: &Subnet) -> Result<(), NetError>;

    /// Makes sure a persistent TAP device `name` exists, is attached to bridge
    /// `bridge` and is up.
    ///
    /// With `owner_uid`, the TAP is owned by that user so an unprivileged VMM can
    /// open it by name (Firecracker's `host_dev_name`, QEMU's
    /// `-netdev tap,ifname=NAME,script=no,downscript=no`); the VMM sets the queue
    /// flags (`IFF_NO_PI`, `IFF_VNET_HDR`) itself when it opens the device. An
    /// existing TAP is reused if it is persistent, single-queue and (when
    /// `owner_uid` is given) owned by that user; otherwise
    /// [`NetError::IncompatibleTap`]. The bridge must exist.
    fn create_tap(&self, name: &str, bridge: &str, owner_uid: Option<u32>) -> Result<(), NetError>;

    /// Deletes TAP device `name`; succeeds if it does not exist. Refuses
    /// ([`NetError::NotATap`]) to delete a link that is not a TAP.
    fn delete_tap(&self, name: &str) -> Result<(), NetError>;

    /// Names of all links whose name starts with `prefix`, sorted (for the warm
    /// pool and leak checks, e.g. with [`TAP_PREFIX`](crate::plan::TAP_PREFIX)).
    fn list_links(&self, prefix: &str) -> Result<Vec<String>, NetError>;

    /// Whether a link called `name` exists.
    fn link_exists(&self, name: &str) -> Result<bool, NetError>;

    /// Masquerades traffic from guest `vm_ip` leaving `subnet` (through
    /// `out_iface` only, when given) and enables IPv4 forwarding. Replaces an
    /// existing rule for `vm_ip` if its subnet or interface differ.
    fn enable_nat(
        &self,
        subnet: &Subnet,
        vm_ip: Ipv4Addr,
        out_iface: Option<&str>,
    ) -> Result<(), NetError>;

    /// Removes the NAT rule(s) for `vm_ip`; succeeds if there are none.
    fn disable_nat(&self, vm_ip: Ipv4Addr) -> Result<(), NetError>;

    /// Gives link `bridge` banger's DNS in systemd-resolved ([`DnsRoute`]: server, routing-only
    /// domain, never a default route); setting it again is harmless. Needs resolved running
    /// (see [`resolved::detect`](crate::resolved::detect)).
    fn route_dns(&self, bridge: &str, route: &DnsRoute) -> Result<(), NetError>;

    /// Drops every resolved setting of link `bridge` (`resolvectl revert`); succeeds if the
    /// link is gone (resolved forgot it then).
    fn unroute_dns(&self, bridge: &str) -> Result<(), NetError>;

    /// Makes guests' DNS on the bridge reach the daemon: UDP and TCP port 53 of `gateway`
    /// arriving on `bridge` is redirected to `gateway:port` (a `dnat` rule per protocol in
    /// [`NAT_TABLE`], chain [`DNS_CHAIN`], tagged [`DNS_COMMENT_PREFIX`]). Replaces banger's
    /// rules when they differ.
    fn enable_guest_dns(&self, bridge: &str, gateway: Ipv4Addr, port: u16) -> Result<(), NetError>;

    /// Removes everything banger made on the host network (for `system uninstall`): every
    /// TAP named [`TAP_PREFIX`](crate::plan::TAP_PREFIX)..., bridge `bridge` (which also
    /// drops its resolved settings) and the nftables table [`NAT_TABLE`] (NAT and guest
    /// DNS rules). What is already gone is skipped; links of other kinds are left alone.
    fn cleanup(&self, bridge: &str) -> Result<(), NetError>;
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An interface name argument is invalid (nothing was run).
    #[error(transparent)]
    InvalidName(#[from] IfNameError),
    /// The VM address is not a guest address of the subnet (nothing was run).
    #[error("{vm_ip} is not a guest address in subnet {subnet}")]
    NotAGuestAddress {
        /// The subnet given.
        subnet: Subnet,
        /// The address given.
        vm_ip: Ipv4Addr,
    },
    /// A command could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A DNS route that is not acceptable (nothing was run).
    #[error(transparent)]
    InvalidDnsRoute(#[from] DnsRouteError),
    /// A guest DNS redirect to port 0 or to a non-unicast address (nothing was run).
    #[error("cannot redirect guest DNS to {gateway}:{port}: not a unicast address and port")]
    InvalidGuestDns {
        /// The address given.
        gateway: Ipv4Addr,
        /// The port given.
        port: u16,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({}): {stderr}", status_text(*.code))]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit code; `None` if killed by a signal.
        code: Option<i32>,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A command succeeded but printed something unexpected.
    #[error("unexpected output from `{command}`: {reason}")]
    UnexpectedOutput {
        /// The command line.
        command: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A link that must already exist does not.
    #[error("link {name} does not exist")]
    NoSuchLink {
        /// The link name.
        name: String,
    },
    /// The link exists but is not a bridge.
    #[error("link {name} exists but is a {kind}, not a bridge")]
    NotABridge {
        /// The link name.
        name: String,
        /// What it is (`veth`, `device`...).
        kind: String,
    },
    /// The link exists but is not a TAP device.
    #[error("link {name} is a {kind}, not a TAP device; refusing to touch it")]
    NotATap {
        /// The link name.
        name: String,
        /// What it is.
        kind: String,
    },
    /// The root helper could not be reached, or the connection broke.
    #[error(
        "cannot reach banger's root helper at {} (bangerd runs unprivileged and needs banger-helper for host networking: `sudo banger system install` sets it up)",
        socket.display()
    )]
    HelperUnreachable {
        /// Its socket.
        socket: std::path::PathBuf,
        /// What the connection said.
        #[source]
        source: std::io::Error,
    },
    /// The root helper answered something that is not an answer.
    #[error("banger's root helper at {} {reason}", socket.display())]
    HelperProtocol {
        /// Its socket.
        socket: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The root helper refused the request; nothing ran.
    #[error("banger's root helper refused: {error}")]
    HelperRefused {
        /// Its reason.
        error: String,
    },
    /// The root helper ran the operation and it failed.
    #[error("banger's root helper: {error}")]
    HelperFailed {
        /// The operation's error, as the helper rendered it.
        error: String,
    },
    /// A TAP device with that name exists but cannot be reused as asked.
    #[error("TAP device {name} already exists but {reason}")]
    IncompatibleTap {
        /// The TAP name.
        name: String,
        /// Why it cannot be reused.
        reason: String,
    },
}

fn status_text(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    }
}

/// [`NetOps`] performed directly on this host (or in the namespace the runner
/// targets) with `ip` and `nft`; needs root or `CAP_NET_ADMIN`.
#[derive(Debug)]
pub struct DirectNetOps<R> {
    runner: R,
}

impl<R: CommandRunner> DirectNetOps<R> {
    /// Performs operations through `runner` (normally a
    /// [`SystemRunner`](crate::runner::SystemRunner)).
    pub fn new(runner: R) -> Self {
        Self { runner }
    }

    /// The runner commands go through.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Runs a command and requires exit status 0.
    fn run(&self, program: &str, args: &[&str]) -> Result<CommandOutput, NetError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = self.runner.run(program, &args)?;
        if out.success() {
            Ok(out)
        } else {
            Err(NetError::CommandFailed {
                command: out.command,
                code: out.code,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    /// Runs a command and parses its standard output.
    fn query<T>(
        &self,
        program: &str,
        args: &[&str],
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, NetError> {
        let out = self.run(program, args)?;
        parse(&out.stdout).map_err(|reason| NetError::UnexpectedOutput {
            command: out.command,
            reason,
        })
    }

    fn links(&self) -> Result<Vec<Link>, NetError> {
        self.query("ip", &["-d", "-j", "link", "show"], json::parse_links)
    }

    fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        Ok(self.links()?.into_iter().find(|l| l.ifname == name))
    }

    /// Why an existing TAP cannot serve as asked, if it cannot.
    fn tap_unusable(
        &self,
        link: &Link,
        owner_uid: Option<u32>,
    ) -> Result<Option<String>, NetError> {
        if link.tun_flag("persist") != Some(true) {
            return Ok(Some(
                "is not persistent (a running process created it)".to_string(),
            ));
        }
        if link.tun_flag("multi_queue") == Some(true) {
            return Ok(Some("is multi-queue".to_string()));
        }
        let Some(uid) = owner_uid else {
            return Ok(None);
        };
        let path = format!("/sys/class/net/{}/owner", link.ifname);
        let owner = self.query("cat", &[&path], |out| {
            out.trim()
                .parse::<i64>()
                .map_err(|_| format!("expected a uid, got {:?}", out.trim()))
        })?;
        Ok(match owner {
            owner if owner == i64::from(uid) => None,
            -1 => Some(format!("has no owner, expected uid {uid}")),
            owner => Some(format!("is owned by uid {owner}, expected uid {uid}")),
        })
    }

    fn nat_rules(&self) -> Result<Vec<NftRule>, NetError> {
        self.query(
            "nft",
            &["-j", "-a", "list", "table", NAT_FAMILY, NAT_TABLE],
            json::parse_rules,
        )
    }

    /// Makes banger's table and its chain `chain` (defined by `spec`) exist; `add` (unlike
    /// `create`) succeeds when they already do.
    fn ensure_chain(&self, chain: &str, spec: &str) -> Result<(), NetError> {
        self.run("nft", &["add", "table", NAT_FAMILY, NAT_TABLE])?;
        self.run("nft", &["add", "chain", NAT_FAMILY, NAT_TABLE, chain, spec])?;
        Ok(())
    }

    fn has_table(&self) -> Result<bool, NetError> {
        let tables = self.query("nft", &["-j", "list", "tables"], json::parse_tables)?;
        Ok(tables
            .iter()
            .any(|(family, name)| family == NAT_FAMILY && name == NAT_TABLE))
    }

    fn delete_rule(&self, rule: &NftRule) -> Result<(), NetError> {
        let handle = rule.handle.to_string();
        self.run(
            "nft",
            &[
                "delete",
                "rule",
                NAT_FAMILY,
                NAT_TABLE,
                &rule.chain,
                "handle",
                &handle,
            ],
        )?;
        Ok(())
    }
}

/// The comment identifying the NAT rule for one VM with these settings.
fn nat_comment(subnet: &Subnet, vm_ip: Ipv4Addr, out_iface: Option<&str>) -> String {
    format!(
        "{NAT_COMMENT_PREFIX}{vm_ip} subnet={subnet} out={}",
        out_iface.unwrap_or("any")
    )
}

/// The VM address a banger NAT rule comment names, if it is one.
fn nat_comment_vm(comment: &str) -> Option<Ipv4Addr> {
    let rest = comment.strip_prefix(NAT_COMMENT_PREFIX)?;
    rest.split(' ').next()?.parse().ok()
}

impl<R: CommandRunner> NetOps for DirectNetOps<R> {
    fn ensure_bridge(&self, name: &str, subnet: &Subnet) -> Result<(), NetError> {
        validate_ifname(name)?;
        let up = match self.link(name)? {
            None => {
                self.run("ip", &["link", "add", "dev", name, "type", "bridge"])?;
                false
            }
            Some(link) if link.is_bridge() => link.is_up(),
            Some(link) => {
                return Err(NetError::NotABridge {
                    name: name.to_string(),
                    kind: link.kind_text(),
                });
            }
        };
        let gateway = subnet.gateway();
        let has_gateway = self.query("ip", &["-j", "addr", "show", "dev", name], |out| {
            json::has_ipv4_address(out, gateway, subnet.prefix())
        })?;
        if !has_gateway {
            let cidr = subnet.gateway_cidr();
            self.run("ip", &["addr", "add", &cidr, "brd", "+", "dev", name])?;
        }
        if !up {
            self.run("ip", &["link", "set", "dev", name, "up"])?;
        }
        Ok(())
    }

    fn create_tap(&self, name: &str, bridge: &str, owner_uid: Option<u32>) -> Result<(), NetError> {
        validate_ifname(name)?;
        validate_ifname(bridge)?;
        let links = self.links()?;
        match links.iter().find(|l| l.ifname == bridge) {
            None => {
                return Err(NetError::NoSuchLink {
                    name: bridge.to_string(),
                });
            }
            Some(link) if !link.is_bridge() => {
                return Err(NetError::NotABridge {
                    name: bridge.to_string(),
                    kind: link.kind_text(),
                });
            }
            Some(_) => {}
        }
        let attach = match links.iter().find(|l| l.ifname == name) {
            None => {
                let uid = owner_uid.map(|uid| uid.to_string());
                let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap"];
                if let Some(uid) = &uid {
                    args.extend(["user", uid.as_str()]);
                }
                self.run("ip", &args)?;
                true
            }
            Some(link) if !link.is_tap() => {
                return Err(NetError::NotATap {
                    name: name.to_string(),
                    kind: link.kind_text(),
                });
            }
            Some(link) => {
                if let Some(reason) = self.tap_unusable(link, owner_uid)? {
                    return Err(NetError::IncompatibleTap {
                        name: name.to_string(),
                        reason,
                    });
                }
                link.master.as_deref() != Some(bridge) || !link.is_up()
            }
        };
        if attach {
            self.run("ip", &["link", "set", "dev", name, "master", bridge, "up"])?;
        }
        Ok(())
    }

    fn delete_tap(&self, name: &str) -> Result<(), NetError> {
        validate_ifname(name)?;
        match self.link(name)? {
            None => {
                tracing::debug!(tap = name, "TAP is already gone; nothing to delete");
                Ok(())
            }
            Some(link) if link.is_tap() => {
                self.run("ip", &["link", "del", "dev", name])?;
                Ok(())
            }
            Some(link) => Err(NetError::NotATap {
                name: name.to_string(),
                kind: link.kind_text(),
            }),
        }
    }

    fn list_links(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        let mut names: Vec<String> = self
            .links()?
            .into_iter()
            .map(|l| l.ifname)
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        validate_ifname(name)?;
        Ok(self.link(name)?.is_some())
    }

    fn enable_nat(
        &self,
        subnet: &Subnet,
        vm_ip: Ipv4Addr,
        out_iface: Option<&str>,
    ) -> Result<(), NetError> {
        if !subnet.is_guest_address(vm_ip) {
            return Err(NetError::NotAGuestAddress {
                subnet: *subnet,
                vm_ip,
            });
        }
        if let Some(iface) = out_iface {
            validate_ifname(iface)?;
        }
        self.ensure_chain(NAT_CHAIN, NAT_CHAIN_SPEC)?;
        let wanted = nat_comment(subnet, vm_ip, out_iface);
        let existing: Vec<NftRule> = self
            .nat_rules()?
            .into_iter()
            .filter(|r| r.comment.as_deref().and_then(nat_comment_vm) == Some(vm_ip))
            .collect();
        let up_to_date = matches!(
            existing.as_slice(),
            [rule] if rule.chain == NAT_CHAIN && rule.comment.as_deref() == Some(wanted.as_str())
        );
        if !up_to_date {
            for rule in &existing {
                self.delete_rule(rule)?;
            }
            let (vm, net) = (vm_ip.to_string(), subnet.to_string());
            let out_quoted = out_iface.map(|iface| format!("\"{iface}\""));
            let comment_quoted = format!("\"{wanted}\"");
            let mut args = vec![
                "add", "rule", NAT_FAMILY, NAT_TABLE, NAT_CHAIN, "ip", "saddr", &vm, "ip", "daddr",
                "!=", &net,
            ];
            if let Some(out) = &out_quoted {
                args.extend(["oifname", out.as_str()]);
            }
            args.extend(["counter", "masquerade", "comment", &comment_quoted]);
            self.run("nft", &args)?;
        }
        self.run("sysctl", &["-w", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }

    fn disable_nat(&self, vm_ip: Ipv4Addr) -> Result<(), NetError> {
        if !self.has_table()? {
            tracing::debug!(%vm_ip, "no NAT table; no NAT rule to remove");
            return Ok(());
        }
        let mut removed = false;
        for rule in self.nat_rules()? {
            if rule.comment.as_deref().and_then(nat_comment_vm) == Some(vm_ip) {
                self.delete_rule(&rule)?;
                removed = true;
            }
        }
        if !removed {
            tracing::debug!(%vm_ip, "no NAT rule for this address; nothing to remove");
        }
        Ok(())
    }

    fn route_dns(&self, bridge: &str, route: &DnsRoute) -> Result<(), NetError> {
        validate_ifname(bridge)?;
        route.validate()?;
        for args in crate::resolved::route_commands(bridge, route) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run("resolvectl", &args)?;
        }
        Ok(())
    }

    fn unroute_dns(&self, bridge: &str) -> Result<(), NetError> {
        validate_ifname(bridge)?;
        if self.link(bridge)?.is_none() {
            tracing::debug!(bridge, "bridge is gone; resolved has no settings for it");
            return Ok(());
        }
        let args = crate::resolved::unroute_command(bridge);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run("resolvectl", &args)?;
        Ok(())
    }

    fn enable_guest_dns(&self, bridge: &str, gateway: Ipv4Addr, port: u16) -> Result<(), NetError> {
        validate_ifname(bridge)?;
        if port == 0 || gateway.is_unspecified() || gateway.is_multicast() || gateway.is_broadcast()
        {
            return Err(NetError::InvalidGuestDns { gateway, port });
        }
        self.ensure_chain(DNS_CHAIN, DNS_CHAIN_SPEC)?;
        let wanted: Vec<String> = ["udp", "tcp"]
            .iter()
            .map(|proto| dns_comment(bridge, gateway, port, proto))
            .collect();
        let existing: Vec<NftRule> = self
            .nat_rules()?
            .into_iter()
            .filter(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with(DNS_COMMENT_PREFIX))
            })
            .collect();
        let mut have: Vec<&str> = existing
            .iter()
            .filter(|r| r.chain == DNS_CHAIN)
            .filter_map(|r| r.comment.as_deref())
            .collect();
        have.sort_unstable();
        let mut want: Vec<&str> = wanted.iter().map(String::as_str).collect();
        want.sort_unstable();
        if have == want && existing.len() == wanted.len() {
            return Ok(());
        }
        for rule in &existing {
            self.delete_rule(rule)?;
        }
        let (iif, gw, to) = (
            format!("\"{bridge}\""),
            gateway.to_string(),
            format!("{gateway}:{port}"),
        );
        for (proto, comment) in ["udp", "tcp"].iter().zip(&wanted) {
            let comment = format!("\"{comment}\"");
            self.run(
                "nft",
                &[
                    "add", "rule", NAT_FAMILY, NAT_TABLE, DNS_CHAIN, "iifname", &iif, "ip",
                    "daddr", &gw, proto, "dport", "53", "counter", "dnat", "to", &to, "comment",
                    &comment,
                ],
            )?;
        }
        Ok(())
    }

    fn cleanup(&self, bridge: &str) -> Result<(), NetError> {
        validate_ifname(bridge)?;
        for link in self.links()? {
            if link.ifname.starts_with(TAP_PREFIX) && link.is_tap() {
                self.run("ip", &["link", "del", "dev", &link.ifname])?;
            } else if link.ifname == bridge && link.is_bridge() {
                self.run("ip", &["link", "del", "dev", bridge])?;
            }
        }
        match self.has_table() {
            Ok(true) => {
                self.run("nft", &["delete", "table", NAT_FAMILY, NAT_TABLE])?;
            }
            Ok(false) => {}
            // Without nft, banger cannot have made a table.
            Err(NetError::Spawn(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(error = %e, "nft is not installed; no table to remove");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// The comment identifying one guest DNS redirect.
fn dns_comment(bridge: &str, gateway: Ipv4Addr, port: u16, proto: &str) -> String {
    format!("{DNS_COMMENT_PREFIX}bridge={bridge} to={gateway}:{port} proto={proto}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::fake::{FakeRunner, Reply};

    const LINKS_CMD: &str = "ip -d -j link show";

    fn subnet() -> Subnet {
        "172.30.0.0/24".parse().unwrap()
    }

    fn vm() -> Ipv4Addr {
        Ipv4Addr::new(172, 30, 0, 5)
    }

    /// `ip -d -j link show` output with a loopback plus the given links.
    fn links_json(links: &[&str]) -> String {
        let mut all = vec![r#"{"ifname":"lo","flags":["LOOPBACK","UP"]}"#.to_string()];
        all.extend(links.iter().map(|l| l.to_string()));
        format!("[{}]", all.join(","))
    }

    fn bridge(name: &str, up: bool) -> String {
        let flags = if up {
            r#"["BROADCAST","UP"]"#
        } else {
            r#"["BROADCAST"]"#
        };
        format!(
            r#"{{"ifname":"{name}","flags":{flags},"linkinfo":{{"info_kind":"bridge","info_data":{{"stp_state":0}}}}}}"#
        )
    }

    fn tap(name: &str, master: Option<&str>, up: bool, persist: bool) -> String {
        let flags = if up {
            r#"["BROADCAST","UP"]"#
        } else {
            r#"["BROADCAST"]"#
        };
        let master = master
            .map(|m| format!(r#""master":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"ifname":"{name}","flags":{flags},{master}"linkinfo":{{"info_kind":"tun","info_data":{{"type":"tap","pi":false,"vnet_hdr":false,"multi_queue":false,"persist":{persist}}}}}}}"#
        )
    }

    fn addr_json(addrs: &[(&str, u8)]) -> String {
        let infos: Vec<String> = addrs
            .iter()
            .map(|(ip, len)| format!(r#"{{"family":"inet","local":"{ip}","prefixlen":{len}}}"#))
            .collect();
        format!(r#"[{{"ifname":"br0","addr_info":[{}]}}]"#, infos.join(","))
    }

    fn ops_with(fake: FakeRunner) -> DirectNetOps<FakeRunner> {
        DirectNetOps::new(fake)
    }

    #[test]
    fn ensure_bridge_creates_addresses_and_raises_a_missing_bridge() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[])));
        fake.on("ip -j addr show dev br0", Reply::Ok(addr_json(&[])));
        let ops = ops_with(fake);
        ops.ensure_bridge("br0", &subnet()).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                LINKS_CMD,
                "ip link add dev br0 type bridge",
                "ip -j addr show dev br0",
                "ip addr add 172.30.0.1/24 brd + dev br0",
                "ip link set dev br0 up",
            ]
        );
    }

    #[test]
    fn ensure_bridge_does_nothing_when_all_is_in_place() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[&bridge("br0", true)])));
        fake.on(
            "ip -j addr show dev br0",
            Reply::Ok(addr_json(&[("10.9.9.9", 8), ("172.30.0.1", 24)])),
        );
        let ops = ops_with(fake);
        ops.ensure_bridge("br0", &subnet()).unwrap();
        assert_eq!(ops.runner().calls(), [LINKS_CMD, "ip -j addr show dev br0"]);
    }

    #[test]
    fn ensure_bridge_fixes_address_and_state_of_an_existing_bridge() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[&bridge("br0", false)])));
        // Right address, wrong prefix: not ours.
        fake.on(
            "ip -j addr show dev br0",
            Reply::Ok(addr_json(&[("172.30.0.1", 16)])),
        );
        let ops = ops_with(fake);
        ops.ensure_bridge("br0", &subnet()).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                LINKS_CMD,
                "ip -j addr show dev br0",
                "ip addr add 172.30.0.1/24 brd + dev br0",
                "ip link set dev br0 up",
            ]
        );
    }

    #[test]
    fn ensure_bridge_refuses_other_link_kinds() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[&tap("br0", None, true, true)])),
        );
        let ops = ops_with(fake);
        let err = ops.ensure_bridge("br0", &subnet()).unwrap_err();
        assert!(
            matches!(&err, NetError::NotABridge { name, kind } if name == "br0" && kind == "tun (tap mode)"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "link br0 exists but is a tun (tap mode), not a bridge"
        );
        assert_eq!(ops.runner().calls(), [LINKS_CMD]);
        let err = ops.ensure_bridge("lo", &subnet()).unwrap_err();
        assert!(matches!(&err, NetError::NotABridge { kind, .. } if kind == "device"));
    }

    #[test]
    fn ensure_bridge_propagates_command_failures_with_context() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[])));
        fake.on(
            "ip link add dev br0 type bridge",
            Reply::Fail(2, "RTNETLINK answers: Operation not permitted\n".into()),
        );
        let ops = ops_with(fake);
        let err = ops.ensure_bridge("br0", &subnet()).unwrap_err();
        match &err {
            NetError::CommandFailed {
                command,
                code,
                stderr,
            } => {
                assert_eq!(command, "ip link add dev br0 type bridge");
                assert_eq!(*code, Some(2));
                assert_eq!(stderr, "RTNETLINK answers: Operation not permitted");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "`ip link add dev br0 type bridge` failed (exit status 2): \
             RTNETLINK answers: Operation not permitted"
        );
        // Nothing after the failed step.
        assert_eq!(ops.runner().calls().len(), 2);
    }

    #[test]
    fn garbage_output_is_reported_with_the_command() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok("not json".into()));
        let ops = ops_with(fake);
        let err = ops.link_exists("br0").unwrap_err();
        assert!(
            matches!(&err, NetError::UnexpectedOutput { command, .. } if command == LINKS_CMD),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("unexpected output from `ip -d -j link show`: ")
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::NotFound);
        let ops = ops_with(fake);
        let err = ops.list_links("bgr").unwrap_err();
        assert!(
            matches!(err, NetError::Spawn(ref e) if e.command == LINKS_CMD),
            "{err:?}"
        );
        // The cause is shown once, by the chain, not by the message.
        let cause = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        assert_eq!(
            banger_core::error::chain(&err),
            format!("could not run `{LINKS_CMD}`: {cause}")
        );
    }

    #[test]
    fn invalid_names_run_nothing() {
        let ops = ops_with(FakeRunner::new());
        assert!(matches!(
            ops.ensure_bridge("bad/name", &subnet()),
            Err(NetError::InvalidName(_))
        ));
        assert!(matches!(
            ops.create_tap("tap0", "a very long bridge name", None),
            Err(NetError::InvalidName(IfNameError::TooLong { .. }))
        ));
        assert!(matches!(
            ops.create_tap("-tap", "br0", None),
            Err(NetError::InvalidName(IfNameError::LeadingDash { .. }))
        ));
        assert!(matches!(
            ops.delete_tap(""),
            Err(NetError::InvalidName(IfNameError::Empty))
        ));
        assert!(matches!(
            ops.link_exists("x:1"),
            Err(NetError::InvalidName(_))
        ));
        assert!(matches!(
            ops.enable_nat(&subnet(), vm(), Some("eth0\"; flush ruleset")),
            Err(NetError::InvalidName(_))
        ));
        assert!(ops.runner().calls().is_empty());
    }

    #[test]
    fn create_tap_creates_owned_tap_and_attaches_it() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[&bridge("br0", true)])));
        let ops = ops_with(fake);
        ops.create_tap("bgrabc", "br0", Some(1000)).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                LINKS_CMD,
                "ip tuntap add dev bgrabc mode tap user 1000",
                "ip link set dev bgrabc master br0 up",
            ]
        );
    }

    #[test]
    fn create_tap_without_owner() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[&bridge("br0", true)])));
        let ops = ops_with(fake);
        ops.create_tap("bgrabc", "br0", None).unwrap();
        assert_eq!(ops.runner().calls()[1], "ip tuntap add dev bgrabc mode tap");
    }

    #[test]
    fn create_tap_is_idempotent() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[
                &bridge("br0", true),
                &tap("bgrabc", Some("br0"), true, true),
            ])),
        );
        fake.on(
            "cat /sys/class/net/bgrabc/owner",
            Reply::Ok("1000\n".into()),
        );
        let ops = ops_with(fake);
        ops.create_tap("bgrabc", "br0", Some(1000)).unwrap();
        ops.create_tap("bgrabc", "br0", None).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [LINKS_CMD, "cat /sys/class/net/bgrabc/owner", LINKS_CMD]
        );
    }

    #[test]
    fn create_tap_reattaches_an_existing_tap() {
        for existing in [
            tap("bgrabc", None, false, true),
            tap("bgrabc", Some("other"), true, true),
            tap("bgrabc", Some("br0"), false, true),
        ] {
            let fake = FakeRunner::new();
            fake.on(
                LINKS_CMD,
                Reply::Ok(links_json(&[&bridge("br0", true), &existing])),
            );
            let ops = ops_with(fake);
            ops.create_tap("bgrabc", "br0", None).unwrap();
            assert_eq!(
                ops.runner().calls(),
                [LINKS_CMD, "ip link set dev bgrabc master br0 up"],
                "{existing}"
            );
        }
    }

    #[test]
    fn create_tap_rejects_unusable_existing_taps() {
        let cases = [
            (
                tap("bgrabc", Some("br0"), true, false),
                None,
                "is not persistent",
            ),
            (
                tap("bgrabc", Some("br0"), true, true),
                Some("-1"),
                "has no owner, expected uid 1000",
            ),
            (
                tap("bgrabc", Some("br0"), true, true),
                Some("1001"),
                "is owned by uid 1001, expected uid 1000",
            ),
        ];
        for (existing, owner, reason) in cases {
            let fake = FakeRunner::new();
            fake.on(
                LINKS_CMD,
                Reply::Ok(links_json(&[&bridge("br0", true), &existing])),
            );
            if let Some(owner) = owner {
                fake.on(
                    "cat /sys/class/net/bgrabc/owner",
                    Reply::Ok(format!("{owner}\n")),
                );
            }
            let ops = ops_with(fake);
            let err = ops.create_tap("bgrabc", "br0", Some(1000)).unwrap_err();
            assert!(
                matches!(&err, NetError::IncompatibleTap { name, reason: r } if name == "bgrabc" && r.starts_with(reason)),
                "{err:?}"
            );
            assert!(
                !ops.runner()
                    .calls()
                    .iter()
                    .any(|c| c.starts_with("ip link set"))
            );
        }
        let fake = FakeRunner::new();
        let multi = tap("bgrabc", None, true, true)
            .replace("\"multi_queue\":false", "\"multi_queue\":true");
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[&bridge("br0", true), &multi])),
        );
        let err = ops_with(fake)
            .create_tap("bgrabc", "br0", None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "TAP device bgrabc already exists but is multi-queue"
        );
    }

    #[test]
    fn create_tap_needs_a_bridge() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[&tap("notbr", None, true, true)])),
        );
        let ops = ops_with(fake);
        assert!(matches!(
            ops.create_tap("bgrabc", "br0", None),
            Err(NetError::NoSuchLink { ref name }) if name == "br0"
        ));
        assert!(matches!(
            ops.create_tap("bgrabc", "notbr", None),
            Err(NetError::NotABridge { ref name, .. }) if name == "notbr"
        ));
        assert_eq!(ops.runner().calls(), [LINKS_CMD, LINKS_CMD]);
    }

    #[test]
    fn create_tap_refuses_to_reuse_a_non_tap() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[&bridge("br0", true), &bridge("br1", true)])),
        );
        let ops = ops_with(fake);
        assert!(matches!(
            ops.create_tap("br1", "br0", None),
            Err(NetError::NotATap { ref name, ref kind }) if name == "br1" && kind == "bridge"
        ));
    }

    #[test]
    fn create_tap_reports_a_failed_attach() {
        let fake = FakeRunner::new();
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[&bridge("br0", true)])));
        fake.on(
            "ip link set dev bgrabc master br0 up",
            Reply::Fail(1, "Error: Device does not exist.".into()),
        );
        let err = ops_with(fake)
            .create_tap("bgrabc", "br0", None)
            .unwrap_err();
        assert!(
            matches!(&err, NetError::CommandFailed { command, .. } if command == "ip link set dev bgrabc master br0 up")
        );
    }

    #[test]
    fn delete_tap_deletes_or_skips() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[
                &bridge("br0", true),
                &tap("bgrabc", Some("br0"), true, true),
            ])),
        );
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[&bridge("br0", true)])));
        let ops = ops_with(fake);
        ops.delete_tap("bgrabc").unwrap();
        ops.delete_tap("bgrabc").unwrap();
        assert_eq!(
            ops.runner().calls(),
            [LINKS_CMD, "ip link del dev bgrabc", LINKS_CMD]
        );
        assert!(matches!(
            ops.delete_tap("br0"),
            Err(NetError::NotATap { ref kind, .. }) if kind == "bridge"
        ));
        assert!(
            !ops.runner()
                .calls()
                .contains(&"ip link del dev br0".to_string())
        );
    }

    #[test]
    fn list_and_exists() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[
                &bridge("banger0", true),
                &tap("bgrz", Some("banger0"), true, true),
                &tap("bgra", Some("banger0"), true, true),
                &tap("tap0", None, true, true),
            ])),
        );
        let ops = ops_with(fake);
        assert_eq!(ops.list_links("bgr").unwrap(), ["bgra", "bgrz"]);
        assert_eq!(ops.list_links("banger").unwrap(), ["banger0"]);
        assert!(ops.list_links("nope").unwrap().is_empty());
        assert_eq!(ops.list_links("").unwrap().len(), 5);
        assert!(ops.link_exists("tap0").unwrap());
        assert!(!ops.link_exists("tap1").unwrap());
        assert!(!ops.link_exists("bgr").unwrap());
    }

    const RULES_CMD: &str = "nft -j -a list table ip banger";
    const ADD_TABLE: &str = "nft add table ip banger";
    const ADD_CHAIN: &str = "nft add chain ip banger postrouting \
                             '{ type nat hook postrouting priority srcnat ; policy accept ; }'";
    const SYSCTL: &str = "sysctl -w net.ipv4.ip_forward=1";

    fn rules_json(rules: &[(u64, &str)]) -> String {
        let mut items = vec![
            r#"{"metainfo":{"version":"1.0.6"}}"#.to_string(),
            r#"{"table":{"family":"ip","name":"banger","handle":1}}"#.to_string(),
            r#"{"chain":{"family":"ip","table":"banger","name":"postrouting","handle":1}}"#
                .to_string(),
        ];
        for (handle, comment) in rules {
            items.push(format!(
                r#"{{"rule":{{"family":"ip","table":"banger","chain":"postrouting","handle":{handle},"comment":"{comment}","expr":[]}}}}"#
            ));
        }
        format!(r#"{{"nftables":[{}]}}"#, items.join(","))
    }

    #[test]
    fn enable_nat_adds_table_chain_rule_and_forwarding() {
        let fake = FakeRunner::new();
        fake.on(RULES_CMD, Reply::Ok(rules_json(&[])));
        let ops = ops_with(fake);
        ops.enable_nat(&subnet(), vm(), Some("eth0")).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                ADD_TABLE,
                ADD_CHAIN,
                RULES_CMD,
                "nft add rule ip banger postrouting ip saddr 172.30.0.5 ip daddr '!=' \
                 172.30.0.0/24 oifname '\"eth0\"' counter masquerade comment \
                 '\"banger-nat vm=172.30.0.5 subnet=172.30.0.0/24 out=eth0\"'",
                SYSCTL,
            ]
        );
    }

    #[test]
    fn enable_nat_without_interface() {
        let fake = FakeRunner::new();
        fake.on(RULES_CMD, Reply::Ok(rules_json(&[(3, "something else")])));
        let ops = ops_with(fake);
        ops.enable_nat(&subnet(), vm(), None).unwrap();
        assert_eq!(
            ops.runner().calls()[3],
            "nft add rule ip banger postrouting ip saddr 172.30.0.5 ip daddr '!=' \
             172.30.0.0/24 counter masquerade comment \
             '\"banger-nat vm=172.30.0.5 subnet=172.30.0.0/24 out=any\"'"
        );
    }

    #[test]
    fn enable_nat_keeps_an_identical_rule() {
        let fake = FakeRunner::new();
        fake.on(
            RULES_CMD,
            Reply::Ok(rules_json(&[
                (2, "banger-nat vm=172.30.0.50 subnet=172.30.0.0/24 out=any"),
                (4, "banger-nat vm=172.30.0.5 subnet=172.30.0.0/24 out=eth0"),
            ])),
        );
        let ops = ops_with(fake);
        ops.enable_nat(&subnet(), vm(), Some("eth0")).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [ADD_TABLE, ADD_CHAIN, RULES_CMD, SYSCTL]
        );
    }

    #[test]
    fn enable_nat_replaces_stale_or_duplicate_rules() {
        let fake = FakeRunner::new();
        fake.on(
            RULES_CMD,
            Reply::Ok(rules_json(&[
                (2, "banger-nat vm=172.30.0.5 subnet=172.30.0.0/24 out=eth0"),
                (5, "banger-nat vm=172.30.0.50 subnet=172.30.0.0/24 out=any"),
                (7, "banger-nat vm=172.30.0.5 subnet=172.30.0.0/24 out=any"),
            ])),
        );
        let ops = ops_with(fake);
        ops.enable_nat(&subnet(), vm(), None).unwrap();
        let calls = ops.runner().calls();
        assert_eq!(
            calls[3..5],
            [
                "nft delete rule ip banger postrouting handle 2",
                "nft delete rule ip banger postrouting handle 7",
            ]
        );
        assert!(calls[5].starts_with("nft add rule ip banger postrouting ip saddr 172.30.0.5 "));
        assert_eq!(calls[6], SYSCTL);
        assert_eq!(calls.len(), 7);
    }

    #[test]
    fn enable_nat_rejects_non_guest_addresses() {
        let ops = ops_with(FakeRunner::new());
        for ip in [
            Ipv4Addr::new(172, 30, 0, 0),
            Ipv4Addr::new(172, 30, 0, 1),
            Ipv4Addr::new(172, 30, 0, 255),
            Ipv4Addr::new(10, 0, 0, 5),
        ] {
            let err = ops.enable_nat(&subnet(), ip, None).unwrap_err();
            assert!(matches!(err, NetError::NotAGuestAddress { vm_ip, .. } if vm_ip == ip));
        }
        assert!(ops.runner().calls().is_empty());
    }

    #[test]
    fn enable_nat_propagates_nft_failure() {
        let fake = FakeRunner::new();
        fake.on(
            ADD_TABLE,
            Reply::Fail(
                1,
                "Error: Could not process rule: Operation not permitted\n".into(),
            ),
        );
        let ops = ops_with(fake);
        let err = ops.enable_nat(&subnet(), vm(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`nft add table ip banger` failed (exit status 1): \
             Error: Could not process rule: Operation not permitted"
        );
        assert_eq!(ops.runner().calls(), [ADD_TABLE]);
    }

    #[test]
    fn disable_nat_without_table_does_nothing() {
        let fake = FakeRunner::new();
        fake.on(
            "nft -j list tables",
            Reply::Ok(r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"banger","handle":3}}]}"#.into()),
        );
        let ops = ops_with(fake);
        ops.disable_nat(vm()).unwrap();
        assert_eq!(ops.runner().calls(), ["nft -j list tables"]);
    }

    #[test]
    fn disable_nat_removes_only_that_vms_rules() {
        let fake = FakeRunner::new();
        fake.on(
            "nft -j list tables",
            Reply::Ok(
                r#"{"nftables":[{"table":{"family":"ip","name":"banger","handle":1}}]}"#.into(),
            ),
        );
        fake.on(
            RULES_CMD,
            Reply::Ok(rules_json(&[
                (2, "banger-nat vm=172.30.0.5 subnet=172.30.0.0/24 out=eth0"),
                (3, "banger-nat vm=172.30.0.50 subnet=172.30.0.0/24 out=any"),
                (4, "not banger-nat vm=172.30.0.5"),
            ])),
        );
        let ops = ops_with(fake);
        ops.disable_nat(vm()).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                "nft -j list tables",
                RULES_CMD,
                "nft delete rule ip banger postrouting handle 2",
            ]
        );
    }

    #[test]
    fn nat_comments_round_trip() {
        let c = nat_comment(&subnet(), vm(), Some("eth0"));
        assert_eq!(c, "banger-nat vm=172.30.0.5 subnet=172.30.0.0/24 out=eth0");
        assert_eq!(nat_comment_vm(&c), Some(vm()));
        assert_eq!(nat_comment_vm("banger-nat vm=172.30.0.5"), Some(vm()));
        assert_eq!(nat_comment_vm("banger-nat vm=junk out=any"), None);
        assert_eq!(nat_comment_vm("other"), None);
        // Comments must fit nftables' 128-byte limit even with the longest values.
        let longest = nat_comment(
            &"255.255.255.0/24".parse().unwrap(),
            Ipv4Addr::new(255, 255, 255, 254),
            Some("123456789012345"),
        );
        assert!(longest.len() <= 128, "{}", longest.len());
    }

    #[test]
    fn route_dns_runs_resolvectl_for_the_bridge_and_unroute_reverts() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[&bridge("banger0", true)])),
        );
        fake.on(LINKS_CMD, Reply::Ok(links_json(&[])));
        let ops = ops_with(fake);
        let route = DnsRoute::vm(Ipv4Addr::new(172, 30, 0, 1), 42069);
        ops.route_dns("banger0", &route).unwrap();
        ops.unroute_dns("banger0").unwrap();
        // The second revert finds no bridge: resolved forgot it with the link.
        ops.unroute_dns("banger0").unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                "resolvectl dns banger0 172.30.0.1:42069",
                "resolvectl domain banger0 '~vm'",
                "resolvectl default-route banger0 false",
                "resolvectl dnssec banger0 no",
                "resolvectl dnsovertls banger0 no",
                LINKS_CMD,
                "resolvectl revert banger0",
                LINKS_CMD,
            ]
        );
    }

    #[test]
    fn route_dns_refuses_bad_input_before_running_anything() {
        let ops = ops_with(FakeRunner::new());
        let route = DnsRoute::vm(Ipv4Addr::new(172, 30, 0, 1), 42069);
        assert!(matches!(
            ops.route_dns("bad\nname", &route),
            Err(NetError::InvalidName(_))
        ));
        let mut bad = route.clone();
        bad.domain = "vm\nDNS=8.8.8.8".into();
        assert!(matches!(
            ops.route_dns("banger0", &bad),
            Err(NetError::InvalidDnsRoute(_))
        ));
        assert!(ops.runner().calls().is_empty());
    }

    #[test]
    fn route_dns_reports_the_failing_resolvectl_line() {
        let fake = FakeRunner::new();
        fake.on(
            "resolvectl domain banger0 '~vm'",
            Reply::Fail(
                1,
                "Failed to set domain configuration: Access denied\n".into(),
            ),
        );
        let err = ops_with(fake)
            .route_dns(
                "banger0",
                &DnsRoute::vm(Ipv4Addr::new(172, 30, 0, 1), 42069),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`resolvectl domain banger0 '~vm'` failed (exit status 1): \
             Failed to set domain configuration: Access denied"
        );
    }

    const ADD_DNS_CHAIN: &str = "nft add chain ip banger prerouting \
                                 '{ type nat hook prerouting priority dstnat ; policy accept ; }'";

    fn dns_rule(proto: &str) -> String {
        format!(
            "nft add rule ip banger prerouting iifname '\"banger0\"' ip daddr 172.30.0.1 {proto} \
             dport 53 counter dnat to 172.30.0.1:42069 comment \
             '\"banger-dns bridge=banger0 to=172.30.0.1:42069 proto={proto}\"'"
        )
    }

    #[test]
    fn guest_dns_redirects_udp_and_tcp_53_of_the_gateway_and_keeps_identical_rules() {
        let gw = Ipv4Addr::new(172, 30, 0, 1);
        let fake = FakeRunner::new();
        fake.on(RULES_CMD, Reply::Ok(rules_json(&[])));
        let ops = ops_with(fake);
        ops.enable_guest_dns("banger0", gw, 42069).unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                ADD_TABLE.to_string(),
                ADD_DNS_CHAIN.to_string(),
                RULES_CMD.to_string(),
                dns_rule("udp"),
                dns_rule("tcp"),
            ]
        );

        let same = |handle_udp: u64| {
            format!(
                r#"{{"nftables":[{{"rule":{{"family":"ip","table":"banger","chain":"prerouting","handle":{handle_udp},"comment":"banger-dns bridge=banger0 to=172.30.0.1:42069 proto=udp"}}}},{{"rule":{{"family":"ip","table":"banger","chain":"prerouting","handle":9,"comment":"banger-dns bridge=banger0 to=172.30.0.1:42069 proto=tcp"}}}}]}}"#
            )
        };
        let fake = FakeRunner::new();
        fake.on(RULES_CMD, Reply::Ok(same(8)));
        let ops = ops_with(fake);
        ops.enable_guest_dns("banger0", gw, 42069).unwrap();
        assert_eq!(ops.runner().calls().len(), 3, "nothing to change");

        // Another port: both old rules go, two new ones come.
        let fake = FakeRunner::new();
        fake.on(RULES_CMD, Reply::Ok(same(8)));
        let ops = ops_with(fake);
        ops.enable_guest_dns("banger0", gw, 5353).unwrap();
        let calls = ops.runner().calls();
        assert_eq!(
            calls[3..5],
            [
                "nft delete rule ip banger prerouting handle 8",
                "nft delete rule ip banger prerouting handle 9",
            ]
        );
        assert!(calls[5].contains("dnat to 172.30.0.1:5353"), "{}", calls[5]);
        assert_eq!(calls.len(), 7);

        let ops = ops_with(FakeRunner::new());
        for (gw, port) in [(gw, 0), (Ipv4Addr::UNSPECIFIED, 53)] {
            assert!(matches!(
                ops.enable_guest_dns("banger0", gw, port),
                Err(NetError::InvalidGuestDns { .. })
            ));
        }
        assert!(ops.runner().calls().is_empty());
    }

    #[test]
    fn cleanup_removes_banger_s_taps_bridge_and_table_only() {
        let fake = FakeRunner::new();
        fake.on(
            LINKS_CMD,
            Reply::Ok(links_json(&[
                &bridge("banger0", true),
                &bridge("docker0", true),
                &tap("bgr0123", Some("banger0"), true, true),
                &tap("bgrp1", Some("banger0"), true, true),
                &tap("tap0", None, true, true),
                &bridge("bgrnotatap", true),
            ])),
        );
        fake.on(
            "nft -j list tables",
            Reply::Ok(
                r#"{"nftables":[{"table":{"family":"ip","name":"banger","handle":1}}]}"#.into(),
            ),
        );
        let ops = ops_with(fake);
        ops.cleanup("banger0").unwrap();
        assert_eq!(
            ops.runner().calls(),
            [
                LINKS_CMD,
                "ip link del dev banger0",
                "ip link del dev bgr0123",
                "ip link del dev bgrp1",
                "nft -j list tables",
                "nft delete table ip banger",
            ]
        );
    }

    #[test]
    fn cleanup_of_a_clean_host_changes_nothing() {
        let fake = FakeRunner::new();
        fake.on("nft -j list tables", Reply::NotFound);
        let ops = ops_with(fake);
        ops.cleanup("banger0").unwrap();
        assert_eq!(ops.runner().calls(), [LINKS_CMD, "nft -j list tables"]);
        let fake = FakeRunner::new();
        fake.on("nft -j list tables", Reply::Ok(r#"{"nftables":[]}"#.into()));
        let ops = ops_with(fake);
        ops.cleanup("banger0").unwrap();
        assert_eq!(ops.runner().calls().len(), 2);
    }

    #[test]
    fn net_ops_is_object_safe() {
        let ops: Box<dyn NetOps> = Box::new(ops_with(FakeRunner::new()));
        assert!(
            ops.enable_nat(&subnet(), Ipv4Addr::new(172, 30, 0, 1), None)
                .is_err()
        );
    }
}
