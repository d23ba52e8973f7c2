//! [`FakeNetOps`]: a hand-written [`NetOps`] for the daemon's tests (compiled for this
//! crate's tests and with the `fake` feature).
//!
//! It keeps the host's network as a model (bridges, TAPs and their bridge, NAT rules by guest
//! address), records every call, and fails the next call of an operation with an error the
//! test chose ([`FakeNetOps::fail_next`]). It checks its arguments like [`DirectNetOps`]
//! does (interface names, a TAP needs its bridge, NAT only for guest addresses of the
//! subnet), so a caller that gets them wrong fails here as it would on a host.
//!
//! [`DirectNetOps`]: crate::DirectNetOps

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::plan::{Subnet, validate_ifname};
use crate::{DnsRoute, NetError, NetOps};

/// One operation of [`NetOps`], to choose which one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetOp {
    EnsureBridge,
    CreateTap,
    DeleteTap,
    ListLinks,
    LinkExists,
    EnableNat,
    DisableNat,
    RouteDns,
    UnrouteDns,
    EnableGuestDns,
    Cleanup,
}

/// One call made to the fake, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetCall {
    EnsureBridge {
        name: String,
        subnet: Subnet,
    },
    CreateTap {
        name: String,
        bridge: String,
        owner_uid: Option<u32>,
    },
    DeleteTap {
        name: String,
    },
    ListLinks {
        prefix: String,
    },
    LinkExists {
        name: String,
    },
    EnableNat {
        subnet: Subnet,
        vm_ip: Ipv4Addr,
        out_iface: Option<String>,
    },
    DisableNat {
        vm_ip: Ipv4Addr,
    },
    RouteDns {
        bridge: String,
        route: DnsRoute,
    },
    UnrouteDns {
        bridge: String,
    },
    EnableGuestDns {
        bridge: String,
        gateway: Ipv4Addr,
        port: u16,
    },
    Cleanup {
        bridge: String,
    },
}

impl NetCall {
    /// The operation this call is of.
    pub fn op(&self) -> NetOp {
        match self {
            NetCall::EnsureBridge { .. } => NetOp::EnsureBridge,
            NetCall::CreateTap { .. } => NetOp::CreateTap,
            NetCall::DeleteTap { .. } => NetOp::DeleteTap,
            NetCall::ListLinks { .. } => NetOp::ListLinks,
            NetCall::LinkExists { .. } => NetOp::LinkExists,
            NetCall::EnableNat { .. } => NetOp::EnableNat,
            NetCall::DisableNat { .. } => NetOp::DisableNat,
            NetCall::RouteDns { .. } => NetOp::RouteDns,
            NetCall::UnrouteDns { .. } => NetOp::UnrouteDns,
            NetCall::EnableGuestDns { .. } => NetOp::EnableGuestDns,
            NetCall::Cleanup { .. } => NetOp::Cleanup,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<NetCall>,
    errors: HashMap<NetOp, VecDeque<NetError>>,
    bridges: BTreeSet<String>,
    /// TAP name -> its bridge.
    taps: BTreeMap<String, String>,
    nat: BTreeSet<Ipv4Addr>,
    /// Bridge -> its resolved route.
    dns_routes: BTreeMap<String, DnsRoute>,
    /// The guest DNS redirect: (bridge, gateway, port).
    guest_dns: Option<(String, Ipv4Addr, u16)>,
}

/// A [`NetOps`] that changes a model of the host's network instead of the host.
#[derive(Debug, Default)]
pub struct FakeNetOps {
    state: Mutex<State>,
}

impl FakeNetOps {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next call of `op` fails with `error`, changing nothing (errors queue up, one per
    /// call).
    pub fn fail_next(&self, op: NetOp, error: NetError) {
        self.state().errors.entry(op).or_default().push_back(error);
    }

    /// Every call so far, in order (failed ones included).
    pub fn calls(&self) -> Vec<NetCall> {
        self.state().calls.clone()
    }

    /// The TAPs that exist, sorted.
    pub fn taps(&self) -> Vec<String> {
        self.state().taps.keys().cloned().collect()
    }

    /// The bridges that exist, sorted.
    pub fn bridges(&self) -> Vec<String> {
        self.state().bridges.iter().cloned().collect()
    }

    /// The guest addresses that have a NAT rule, sorted.
    pub fn nat_rules(&self) -> Vec<Ipv4Addr> {
        self.state().nat.iter().copied().collect()
    }

    /// The resolved routes by bridge.
    pub fn dns_routes(&self) -> BTreeMap<String, DnsRoute> {
        self.state().dns_routes.clone()
    }

    /// The guest DNS redirect, when there is one: (bridge, gateway, port).
    pub fn guest_dns(&self) -> Option<(String, Ipv4Addr, u16)> {
        self.state().guest_dns.clone()
    }

    /// Records `call` and takes the error queued for its operation, if any.
    fn begin(&self, call: NetCall) -> Result<MutexGuard<'_, State>, NetError> {
        let mut state = self.state();
        let op = call.op();
        state.calls.push(call);
        match state.errors.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(error) => Err(error),
            None => Ok(state),
        }
    }
}

impl NetOps for FakeNetOps {
    fn ensure_bridge(&self, name: &str, subnet: &Subnet) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::EnsureBridge {
            name: name.to_string(),
            subnet: *subnet,
        })?;
        validate_ifname(name)?;
        if state.taps.contains_key(name) {
            return Err(NetError::NotABridge {
                name: name.to_string(),
                kind: "tun".to_string(),
            });
        }
        state.bridges.insert(name.to_string());
        Ok(())
    }

    fn create_tap(&self, name: &str, bridge: &str, owner_uid: Option<u32>) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::CreateTap {
            name: name.to_string(),
            bridge: bridge.to_string(),
            owner_uid,
        })?;
        validate_ifname(name)?;
        validate_ifname(bridge)?;
        if !state.bridges.contains(bridge) {
            return Err(NetError::NoSuchLink {
                name: bridge.to_string(),
            });
        }
        if state.bridges.contains(name) {
            return Err(NetError::NotATap {
                name: name.to_string(),
                kind: "bridge".to_string(),
            });
        }
        state.taps.insert(name.to_string(), bridge.to_string());
        Ok(())
    }

    fn delete_tap(&self, name: &str) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::DeleteTap {
            name: name.to_string(),
        })?;
        validate_ifname(name)?;
        if state.bridges.contains(name) {
            return Err(NetError::NotATap {
                name: name.to_string(),
                kind: "bridge".to_string(),
            });
        }
        state.taps.remove(name);
        Ok(())
    }

    fn list_links(&self, prefix: &str) -> Result<Vec<String>, NetError> {
        let state = self.begin(NetCall::ListLinks {
            prefix: prefix.to_string(),
        })?;
        let names: BTreeSet<&String> = state.bridges.iter().chain(state.taps.keys()).collect();
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn link_exists(&self, name: &str) -> Result<bool, NetError> {
        let state = self.begin(NetCall::LinkExists {
            name: name.to_string(),
        })?;
        validate_ifname(name)?;
        Ok(state.bridges.contains(name) || state.taps.contains_key(name))
    }

    fn enable_nat(
        &self,
        subnet: &Subnet,
        vm_ip: Ipv4Addr,
        out_iface: Option<&str>,
    ) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::EnableNat {
            subnet: *subnet,
            vm_ip,
            out_iface: out_iface.map(str::to_string),
        })?;
        if let Some(iface) = out_iface {
            validate_ifname(iface)?;
        }
        if !subnet.is_guest_address(vm_ip) {
            return Err(NetError::NotAGuestAddress {
                subnet: *subnet,
                vm_ip,
            });
        }
        state.nat.insert(vm_ip);
        Ok(())
    }

    fn disable_nat(&self, vm_ip: Ipv4Addr) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::DisableNat { vm_ip })?;
        state.nat.remove(&vm_ip);
        Ok(())
    }

    fn route_dns(&self, bridge: &str, route: &DnsRoute) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::RouteDns {
            bridge: bridge.to_string(),
            route: route.clone(),
        })?;
        validate_ifname(bridge)?;
        route.validate()?;
        if !state.bridges.contains(bridge) {
            return Err(NetError::NoSuchLink {
                name: bridge.to_string(),
            });
        }
        state.dns_routes.insert(bridge.to_string(), route.clone());
        Ok(())
    }

    fn unroute_dns(&self, bridge: &str) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::UnrouteDns {
            bridge: bridge.to_string(),
        })?;
        validate_ifname(bridge)?;
        state.dns_routes.remove(bridge);
        Ok(())
    }

    fn enable_guest_dns(&self, bridge: &str, gateway: Ipv4Addr, port: u16) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::EnableGuestDns {
            bridge: bridge.to_string(),
            gateway,
            port,
        })?;
        validate_ifname(bridge)?;
        if port == 0 || gateway.is_unspecified() {
            return Err(NetError::InvalidGuestDns { gateway, port });
        }
        state.guest_dns = Some((bridge.to_string(), gateway, port));
        Ok(())
    }

    fn cleanup(&self, bridge: &str) -> Result<(), NetError> {
        let mut state = self.begin(NetCall::Cleanup {
            bridge: bridge.to_string(),
        })?;
        validate_ifname(bridge)?;
        state
            .taps
            .retain(|name, _| !name.starts_with(crate::plan::TAP_PREFIX));
        state.bridges.remove(bridge);
        state.dns_routes.remove(bridge);
        state.nat.clear();
        state.guest_dns = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Subnet {
        "172.30.0.0/24".parse().unwrap()
    }

    fn failure() -> NetError {
        NetError::CommandFailed {
            command: "ip tuntap add dev bgr1 mode tap".into(),
            code: Some(2),
            stderr: "injected".into(),
        }
    }

    #[test]
    fn models_bridges_taps_and_nat() {
        let net = FakeNetOps::new();
        let ip: Ipv4Addr = "172.30.0.5".parse().unwrap();
        assert!(matches!(
            net.create_tap("bgr1", "br0", Some(1000)),
            Err(NetError::NoSuchLink { name }) if name == "br0"
        ));
        net.ensure_bridge("br0", &subnet()).unwrap();
        net.create_tap("bgr1", "br0", Some(1000)).unwrap();
        net.enable_nat(&subnet(), ip, None).unwrap();
        assert_eq!(net.taps(), ["bgr1"]);
        assert_eq!(net.bridges(), ["br0"]);
        assert_eq!(net.nat_rules(), [ip]);
        assert_eq!(net.list_links("bgr").unwrap(), ["bgr1"]);
        assert!(net.link_exists("br0").unwrap());
        assert!(matches!(
            net.delete_tap("br0"),
            Err(NetError::NotATap { .. })
        ));
        net.delete_tap("bgr1").unwrap();
        net.delete_tap("bgr1").unwrap();
        net.disable_nat(ip).unwrap();
        assert!(net.taps().is_empty() && net.nat_rules().is_empty());
        assert!(matches!(
            net.enable_nat(&subnet(), "10.0.0.2".parse().unwrap(), None),
            Err(NetError::NotAGuestAddress { .. })
        ));
        assert!(matches!(
            net.create_tap("a/b", "br0", None),
            Err(NetError::InvalidName(_))
        ));
        assert_eq!(net.calls().len(), 12);
        assert_eq!(
            net.calls()[2],
            NetCall::CreateTap {
                name: "bgr1".into(),
                bridge: "br0".into(),
                owner_uid: Some(1000),
            }
        );
    }

    #[test]
    fn injected_errors_fail_one_call_and_change_nothing() {
        let net = FakeNetOps::new();
        net.ensure_bridge("br0", &subnet()).unwrap();
        net.fail_next(NetOp::CreateTap, failure());
        let err = net.create_tap("bgr1", "br0", None).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(net.taps().is_empty());
        // Other operations are not affected; the next create succeeds.
        net.delete_tap("bgr1").unwrap();
        net.create_tap("bgr1", "br0", None).unwrap();
        assert_eq!(net.taps(), ["bgr1"]);
        assert_eq!(
            net.calls().iter().map(NetCall::op).collect::<Vec<_>>(),
            [
                NetOp::EnsureBridge,
                NetOp::CreateTap,
                NetOp::DeleteTap,
                NetOp::CreateTap
            ]
        );
    }
}
