//! Runs the real `ip` and `nft` commands in scratch network namespaces (needs root;
//! skipped with a visible message otherwise). Nothing touches the host's own
//! network: every namespace is deleted by a guard, also when a test panics.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use banger_net::ops::{NAT_FAMILY, NAT_TABLE, NetError};
use banger_net::plan::{TAP_PREFIX, tap_name_for};
use banger_net::{DirectNetOps, NetOps, Subnet, SystemRunner};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns true (after saying so) when the test cannot run here.
#[allow(clippy::print_stderr)]
fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: needs root");
    true
}

/// A network namespace deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Self {
        let name = format!("banger-test-{}-{tag}", std::process::id());
        let status = Command::new(ip())
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(status.success(), "ip netns add {name} failed");
        Self { name }
    }

    fn ops(&self) -> DirectNetOps<SystemRunner> {
        DirectNetOps::new(SystemRunner::in_netns(self.name.clone()))
    }

    /// Runs a command in the namespace and returns its stdout; panics on failure.
    fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(ip())
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, program: &str, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.exec(program, args)).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the bridge and TAPs inside it.
        let _ = Command::new(ip())
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip() -> &'static str {
    if std::path::Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else {
        "ip"
    }
}

fn subnet() -> Subnet {
    "172.30.0.0/24".parse().unwrap()
}

/// Names of the links enslaved to `bridge`.
fn ports(ns: &Netns, bridge: &str) -> BTreeSet<String> {
    ns.json("ip", &["-j", "link", "show", "master", bridge])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn bridge_and_taps_in_a_namespace() {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::create("links");
    let ops = ns.ops();
    let bridge = "bangerbr0";

    ops.ensure_bridge(bridge, &subnet()).unwrap();
    ops.ensure_bridge(bridge, &subnet()).unwrap();
    let addrs = ns.json("ip", &["-j", "addr", "show", "dev", bridge]);
    let link = &addrs[0];
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    let inet: Vec<_> = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(inet, ["172.30.0.1/24"]);

    let tap1 = tap_name_for("0123456789abcdef");
    let tap2 = tap_name_for("fedcba9876543210");
    assert_eq!(tap1, "bgr0123456789ab");
    ops.create_tap(&tap1, bridge, Some(4242)).unwrap();
    ops.create_tap(&tap2, bridge, None).unwrap();
    // Idempotent, including the owner check.
    ops.create_tap(&tap1, bridge, Some(4242)).unwrap();
    ops.create_tap(&tap1, bridge, None).unwrap();
    let err = ops.create_tap(&tap1, bridge, Some(1)).unwrap_err();
    assert!(
        matches!(&err, NetError::IncompatibleTap { reason, .. } if reason == "is owned by uid 4242, expected uid 1"),
        "{err:?}"
    );
    assert_eq!(
        ns.exec("cat", &[&format!("/sys/class/net/{tap1}/owner")])
            .trim(),
        "4242"
    );
    assert_eq!(
        ns.exec("cat", &[&format!("/sys/class/net/{tap2}/owner")])
            .trim(),
        "-1"
    );

    assert_eq!(
        ports(&ns, bridge),
        BTreeSet::from([tap1.clone(), tap2.clone()])
    );
    assert_eq!(
        ops.list_links(TAP_PREFIX).unwrap(),
        [tap1.clone(), tap2.clone()]
    );
    assert_eq!(ops.list_links("bgr0").unwrap(), [tap1.as_str()]);
    assert_eq!(ops.list_links("banger").unwrap(), [bridge]);
    assert!(ops.link_exists(&tap1).unwrap());
    assert!(ops.link_exists(bridge).unwrap());

    // The wrong kinds of link are refused, not clobbered.
    assert!(matches!(
        ops.ensure_bridge(&tap1, &subnet()),
        Err(NetError::NotABridge { .. })
    ));
    assert!(matches!(
        ops.delete_tap(bridge),
        Err(NetError::NotATap { .. })
    ));
    assert!(matches!(
        ops.create_tap("bgrx", "nosuchbr", None),
        Err(NetError::NoSuchLink { .. })
    ));

    // A detached, down TAP is re-attached and raised.
    ns.exec("ip", &["link", "set", "dev", &tap2, "nomaster", "down"]);
    assert_eq!(ports(&ns, bridge), BTreeSet::from([tap1.clone()]));
    ops.create_tap(&tap2, bridge, None).unwrap();
    assert_eq!(
        ports(&ns, bridge),
        BTreeSet::from([tap1.clone(), tap2.clone()])
    );

    ops.delete_tap(&tap1).unwrap();
    assert!(!ops.link_exists(&tap1).unwrap());
    ops.delete_tap(&tap1).unwrap();
    assert_eq!(ops.list_links(TAP_PREFIX).unwrap(), [tap2.as_str()]);
    assert_eq!(ports(&ns, bridge), BTreeSet::from([tap2]));

    // Attaching to a link that is not a bridge is refused before anything is created.
    let err = ops.create_tap("bgrdup", "lo", None).unwrap_err();
    assert!(matches!(err, NetError::NotABridge { ref kind, .. } if kind == "device"));
    assert!(!ops.link_exists("bgrdup").unwrap());
}

#[test]
fn nat_rules_in_a_namespace() {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::create("nat");
    let ops = ns.ops();
    let vm5 = Ipv4Addr::new(172, 30, 0, 5);
    let vm6 = Ipv4Addr::new(172, 30, 0, 6);
    let list = || ns.exec("nft", &["list", "table", NAT_FAMILY, NAT_TABLE]);
    let rules_for = |listing: &str, vm: Ipv4Addr| {
        listing
            .lines()
            .filter(|l| l.contains(&format!("comment \"banger-nat vm={vm} ")))
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
    };

    // Nothing to remove before the table exists.
    ops.disable_nat(vm5).unwrap();
    assert_eq!(
        ns.exec("sysctl", &["-n", "net.ipv4.ip_forward"]).trim(),
        "0"
    );

    ops.enable_nat(&subnet(), vm5, Some("eth0")).unwrap();
    ops.enable_nat(&subnet(), vm5, Some("eth0")).unwrap();
    ops.enable_nat(&subnet(), vm6, None).unwrap();
    let listing = list();
    let rules5 = rules_for(&listing, vm5);
    assert_eq!(rules5.len(), 1, "{listing}");
    assert!(
        rules5[0].starts_with(
            "ip saddr 172.30.0.5 ip daddr != 172.30.0.0/24 oifname \"eth0\" counter packets 0 bytes 0 masquerade"
        ),
        "{listing}"
    );
    let rules6 = rules_for(&listing, vm6);
    assert_eq!(rules6.len(), 1, "{listing}");
    assert!(!rules6[0].contains("oifname"), "{listing}");
    assert!(listing.contains("type nat hook postrouting priority srcnat; policy accept;"));
    assert_eq!(
        ns.exec("sysctl", &["-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );

    // Changing the settings replaces the rule.
    ops.enable_nat(&subnet(), vm5, None).unwrap();
    let listing = list();
    let rules5 = rules_for(&listing, vm5);
    assert_eq!(rules5.len(), 1, "{listing}");
    assert!(!rules5[0].contains("oifname"), "{listing}");

    ops.disable_nat(vm5).unwrap();
    let listing = list();
    assert!(rules_for(&listing, vm5).is_empty(), "{listing}");
    assert_eq!(rules_for(&listing, vm6).len(), 1, "{listing}");
    ops.disable_nat(vm5).unwrap();
    ops.disable_nat(vm6).unwrap();
    assert!(!list().contains("banger-nat"));
}

#[test]
fn failures_name_the_command() {
    if skip_unless_root() {
        return;
    }
    // A namespace that does not exist: every command fails inside `ip netns exec`.
    let ops = DirectNetOps::new(SystemRunner::in_netns(format!(
        "banger-test-{}-missing",
        std::process::id()
    )));
    let err = ops.link_exists("lo").unwrap_err();
    match &err {
        NetError::CommandFailed {
            command, stderr, ..
        } => {
            assert!(command.contains("netns exec banger-test-"), "{command}");
            assert!(command.ends_with("ip -d -j link show"), "{command}");
            assert!(!stderr.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// The guest DNS redirect is real nftables (idempotent, replaced when the port changes), and
/// `cleanup` removes every TAP, the bridge and the table, leaving other links alone.
#[test]
fn guest_dns_redirect_and_cleanup_in_a_namespace() {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::create("clean");
    let ops = ns.ops();
    let gw = subnet().gateway();
    ops.ensure_bridge("br-clean", &subnet()).unwrap();
    ops.create_tap("bgrp0", "br-clean", None).unwrap();
    ops.create_tap(&tap_name_for("0123456789abcdef"), "br-clean", None)
        .unwrap();
    ns.exec(ip(), &["link", "add", "bgrnottap", "type", "bridge"]);
    ns.exec(ip(), &["link", "add", "other0", "type", "bridge"]);
    ops.enable_nat(&subnet(), Ipv4Addr::new(172, 30, 0, 5), None)
        .unwrap();
    ops.enable_guest_dns("br-clean", gw, 42069).unwrap();
    ops.enable_guest_dns("br-clean", gw, 42069).unwrap();
    let listing = ns.exec("nft", &["list", "table", NAT_FAMILY, NAT_TABLE]);
    let redirects: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("banger-dns"))
        .map(str::trim)
        .collect();
    assert_eq!(redirects.len(), 2, "{listing}");
    assert!(
        redirects[0].starts_with(&format!(
            "iifname \"br-clean\" ip daddr {gw} udp dport 53 counter packets 0 bytes 0 dnat to {gw}:42069"
        )),
        "{listing}"
    );
    assert!(redirects[1].contains("tcp dport 53"), "{listing}");
    assert!(listing.contains("type nat hook prerouting priority dstnat; policy accept;"));
    ops.enable_guest_dns("br-clean", gw, 5353).unwrap();
    let listing = ns.exec("nft", &["list", "table", NAT_FAMILY, NAT_TABLE]);
    assert_eq!(listing.matches("banger-dns").count(), 2, "{listing}");
    assert_eq!(listing.matches(&format!("dnat to {gw}:5353")).count(), 2);

    ops.cleanup("br-clean").unwrap();
    let left: BTreeSet<String> = ops.list_links("").unwrap().into_iter().collect();
    assert_eq!(
        left,
        ["bgrnottap", "lo", "other0"].map(String::from).into(),
        "only banger's TAPs and bridge go"
    );
    let tables = ns.exec("nft", &["list", "tables"]);
    assert!(!tables.contains("ip banger"), "{tables}");
    // Again on a clean namespace: nothing to do, no error.
    ops.cleanup("br-clean").unwrap();
}
