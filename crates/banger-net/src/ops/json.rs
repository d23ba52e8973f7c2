//! Parsing the JSON that `ip -j` and `nft -j` print: only the fields banger reads.
//!
//! Parsers return a plain reason string on failure; the caller wraps it in a
//! [`NetError::UnexpectedOutput`](super::NetError::UnexpectedOutput) naming the command.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::Value;

/// One entry of `ip -d -j link show`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Link {
    pub(super) ifname: String,
    #[serde(default)]
    pub(super) flags: Vec<String>,
    #[serde(default)]
    pub(super) master: Option<String>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Clone, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
    /// Kind-specific; kept untyped because its shape differs per kind.
    #[serde(default)]
    info_data: Option<Value>,
}

impl Link {
    /// The link kind (`bridge`, `tun`, `veth`...); `None` for physical devices and
    /// loopback.
    pub(super) fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    /// The kind for messages: `device` when the link has none.
    pub(super) fn kind_text(&self) -> String {
        match (self.kind(), self.tun_field("type").and_then(Value::as_str)) {
            (Some("tun"), Some(mode)) => format!("tun ({mode} mode)"),
            (Some(kind), _) => kind.to_string(),
            (None, _) => "device".to_string(),
        }
    }

    /// Administratively up (`ip link set ... up`), whether or not it has carrier.
    pub(super) fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    pub(super) fn is_bridge(&self) -> bool {
        self.kind() == Some("bridge")
    }

    /// A tun/tap device in TAP mode.
    pub(super) fn is_tap(&self) -> bool {
        self.kind() == Some("tun") && self.tun_field("type").and_then(Value::as_str) == Some("tap")
    }

    /// A boolean from a tun device's `info_data` (`persist`, `multi_queue`...).
    pub(super) fn tun_flag(&self, field: &str) -> Option<bool> {
        self.tun_field(field).and_then(Value::as_bool)
    }

    fn tun_field(&self, field: &str) -> Option<&Value> {
        if self.kind() != Some("tun") {
            return None;
        }
        self.linkinfo.as_ref()?.info_data.as_ref()?.get(field)
    }
}

/// Parses `ip -d -j link show`; empty output means no links.
pub(super) fn parse_links(stdout: &str) -> Result<Vec<Link>, String> {
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(stdout).map_err(|e| format!("not an `ip -j link` list: {e}"))
}

#[derive(Debug, Deserialize)]
struct AddrEntry {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    family: String,
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: Option<u8>,
}

/// Whether `ip -j addr show dev X` lists the IPv4 address `address/prefix`.
pub(super) fn has_ipv4_address(
    stdout: &str,
    address: Ipv4Addr,
    prefix: u8,
) -> Result<bool, String> {
    if stdout.trim().is_empty() {
        return Ok(false);
    }
    let entries: Vec<AddrEntry> =
        serde_json::from_str(stdout).map_err(|e| format!("not an `ip -j addr` list: {e}"))?;
    Ok(entries.iter().flat_map(|e| &e.addr_info).any(|info| {
        info.family == "inet"
            && info.prefixlen == Some(prefix)
            && info
                .local
                .as_deref()
                .and_then(|l| l.parse::<Ipv4Addr>().ok())
                == Some(address)
    }))
}

/// A rule from `nft -j -a list table ...`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(super) struct NftRule {
    pub(super) chain: String,
    pub(super) handle: u64,
    #[serde(default)]
    pub(super) comment: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NftTable {
    family: String,
    name: String,
}

fn nft_items(stdout: &str) -> Result<Vec<Value>, String> {
    #[derive(Deserialize)]
    struct Doc {
        nftables: Vec<Value>,
    }
    let doc: Doc =
        serde_json::from_str(stdout).map_err(|e| format!("not an `nft -j` document: {e}"))?;
    Ok(doc.nftables)
}

/// The `(family, name)` of every table in `nft -j list tables`.
pub(super) fn parse_tables(stdout: &str) -> Result<Vec<(String, String)>, String> {
    nft_items(stdout)?
        .into_iter()
        .filter_map(|mut item| item.get_mut("table").map(Value::take))
        .map(|table| {
            serde_json::from_value::<NftTable>(table)
                .map(|t| (t.family, t.name))
                .map_err(|e| format!("bad table entry: {e}"))
        })
        .collect()
}

/// Every rule in an `nft -j -a list table ...` document.
pub(super) fn parse_rules(stdout: &str) -> Result<Vec<NftRule>, String> {
    nft_items(stdout)?
        .into_iter()
        .filter_map(|mut item| item.get_mut("rule").map(Value::take))
        .map(|rule| serde_json::from_value(rule).map_err(|e| format!("bad rule entry: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536},
      {"ifindex":2,"ifname":"br9","flags":["BROADCAST","MULTICAST","UP"],
       "linkinfo":{"info_kind":"bridge","info_data":{"forward_delay":1500,"stp_state":0}}},
      {"ifindex":3,"ifname":"bgrA","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"master":"br9",
       "linkinfo":{"info_kind":"tun","info_data":{"type":"tap","pi":false,"vnet_hdr":false,
       "multi_queue":false,"persist":true,"user":"cloudsdk"},"info_slave_kind":"bridge"}},
      {"ifindex":4,"ifname":"tun0","flags":["POINTOPOINT"],
       "linkinfo":{"info_kind":"tun","info_data":{"type":"tun","persist":true}}}
    ]"#;

    #[test]
    fn links_are_classified() {
        let links = parse_links(LINKS).unwrap();
        let names: Vec<_> = links.iter().map(|l| l.ifname.as_str()).collect();
        assert_eq!(names, ["lo", "br9", "bgrA", "tun0"]);
        let (lo, br, tap, tun) = (&links[0], &links[1], &links[2], &links[3]);
        assert!(lo.is_up() && !lo.is_bridge() && !lo.is_tap());
        assert_eq!(lo.kind_text(), "device");
        assert!(br.is_bridge() && br.is_up() && !br.is_tap());
        assert_eq!(br.kind_text(), "bridge");
        assert_eq!(br.tun_flag("persist"), None);
        assert!(tap.is_tap() && tap.is_up());
        assert_eq!(tap.master.as_deref(), Some("br9"));
        assert_eq!(tap.tun_flag("persist"), Some(true));
        assert_eq!(tap.tun_flag("multi_queue"), Some(false));
        assert!(!tun.is_tap() && !tun.is_up());
        assert_eq!(tun.kind_text(), "tun (tun mode)");
    }

    #[test]
    fn empty_and_broken_link_output() {
        assert!(parse_links("").unwrap().is_empty());
        assert!(parse_links("\n").unwrap().is_empty());
        assert!(parse_links("Device \"x\" does not exist.").is_err());
        assert!(parse_links(r#"[{"flags":[]}]"#).is_err());
    }

    #[test]
    fn finds_ipv4_addresses() {
        let out = r#"[{"ifindex":2,"ifname":"br9","addr_info":[
          {"family":"inet","local":"172.30.0.1","prefixlen":24,"broadcast":"172.30.0.255"},
          {"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let gw = Ipv4Addr::new(172, 30, 0, 1);
        assert!(has_ipv4_address(out, gw, 24).unwrap());
        assert!(!has_ipv4_address(out, gw, 16).unwrap());
        assert!(!has_ipv4_address(out, Ipv4Addr::new(172, 30, 0, 2), 24).unwrap());
        assert!(!has_ipv4_address(r#"[{"ifname":"br9","addr_info":[]}]"#, gw, 24).unwrap());
        assert!(!has_ipv4_address("", gw, 24).unwrap());
        assert!(has_ipv4_address("{", gw, 24).is_err());
    }

    #[test]
    fn nft_tables_and_rules() {
        let tables = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
          {"table":{"family":"ip","name":"banger","handle":1}},
          {"table":{"family":"inet","name":"filter","handle":2}}]}"#;
        assert_eq!(
            parse_tables(tables).unwrap(),
            [
                ("ip".into(), "banger".into()),
                ("inet".into(), "filter".into())
            ]
        );
        let listing = r#"{"nftables":[{"metainfo":{}},
          {"table":{"family":"ip","name":"banger","handle":1}},
          {"chain":{"family":"ip","table":"banger","name":"postrouting","handle":1}},
          {"rule":{"family":"ip","table":"banger","chain":"postrouting","handle":2,
                   "comment":"banger-nat vm=172.30.0.5","expr":[{"masquerade":null}]}},
          {"rule":{"family":"ip","table":"banger","chain":"postrouting","handle":7,"expr":[]}}]}"#;
        assert_eq!(
            parse_rules(listing).unwrap(),
            [
                NftRule {
                    chain: "postrouting".into(),
                    handle: 2,
                    comment: Some("banger-nat vm=172.30.0.5".into())
                },
                NftRule {
                    chain: "postrouting".into(),
                    handle: 7,
                    comment: None
                }
            ]
        );
        assert!(
            parse_rules(r#"{"nftables":[{"metainfo":{}}]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_rules("").is_err());
        assert!(parse_tables(r#"{"nftables":[{"table":{"name":"x"}}]}"#).is_err());
    }
}
