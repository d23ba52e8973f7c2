//! Address and name planning: pure functions, no I/O.
//!
//! - [`Subnet`]: the bridge subnet, parsed from CIDR text (`172.30.0.0/24`).
//!   The bridge (gateway) takes the first host address, guests get the rest.
//! - [`allocate`]: the lowest free guest address in a subnet.
//! - [`mac_for_ip`] / [`format_mac`]: the guest MAC derived from its IP.
//! - [`tap_name_for`] / [`validate_ifname`]: host interface names.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest interface name the kernel accepts (`IFNAMSIZ` is 16 including the NUL).
pub const IFNAME_MAX: usize = 15;

/// Prefix of every TAP device name banger creates (see [`tap_name_for`]), so that
/// `list_links(TAP_PREFIX)` finds banger's TAPs (warm pool, leak checks).
pub const TAP_PREFIX: &str = "bgr";

/// Prefix of the daemon's idle pool TAPs (`bgrp0`, `bgrp1`...): [`TAP_PREFIX`] and a `p`,
/// which a VM's own TAP name ([`tap_name_for`] of a hex id) never has there.
pub const POOL_TAP_PREFIX: &str = "bgrp";

/// The pool TAP numbered `n`.
pub fn pool_tap_name(n: u32) -> String {
    format!("{POOL_TAP_PREFIX}{n}")
}

/// Whether `name` is a pool TAP's name ([`pool_tap_name`]).
pub fn is_pool_tap(name: &str) -> bool {
    name.strip_prefix(POOL_TAP_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// How many characters of the VM id [`tap_name_for`] keeps.
const TAP_ID_CHARS: usize = IFNAME_MAX - TAP_PREFIX.len();

/// An IPv4 subnet for the host bridge: network address plus prefix length.
///
/// Invariants (checked by [`Subnet::new`] and parsing): the prefix is within
/// [`Subnet::MIN_PREFIX`]`..=`[`Subnet::MAX_PREFIX`] and the network address has no
/// host bits set. It serializes as its CIDR text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a subnet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// No `/prefix` part.
    #[error("subnet `{input}` is not in CIDR form (expected e.g. 172.30.0.0/24)")]
    MissingPrefix {
        /// The text given.
        input: String,
    },
    /// The address part is an IPv6 address.
    #[error("subnet `{input}` is IPv6; only IPv4 subnets are supported")]
    NotIpv4 {
        /// The text given.
        input: String,
    },
    /// The address part is not an IPv4 address.
    #[error("subnet `{input}`: `{address}` is not an IPv4 address")]
    InvalidAddress {
        /// The text given.
        input: String,
        /// The address part.
        address: String,
    },
    /// The prefix part is not a decimal number.
    #[error("subnet `{input}`: prefix `{prefix}` is not a number")]
    InvalidPrefix {
        /// The text given.
        input: String,
        /// The prefix part.
        prefix: String,
    },
    /// The prefix is outside the supported range.
    #[error(
        "subnet {network}/{prefix}: prefix must be between /{min} and /{max}",
        min = Subnet::MIN_PREFIX,
        max = Subnet::MAX_PREFIX
    )]
    PrefixOutOfRange {
        /// The network address given.
        network: Ipv4Addr,
        /// The prefix given.
        prefix: u8,
    },
    /// The address has bits set below the prefix.
    #[error("subnet {address}/{prefix} has host bits set; did you mean {network}/{prefix}?")]
    HostBitsSet {
        /// The address given.
        address: Ipv4Addr,
        /// The prefix given.
        prefix: u8,
        /// The network address with the host bits cleared.
        network: Ipv4Addr,
    },
}

impl Subnet {
    /// Smallest accepted prefix (/16: 65534 addresses).
    pub const MIN_PREFIX: u8 = 16;
    /// Largest accepted prefix (/29: network, gateway, 5 guests, broadcast).
    pub const MAX_PREFIX: u8 = 29;

    /// Builds a subnet from its network address and prefix length.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, SubnetError> {
        if !(Self::MIN_PREFIX..=Self::MAX_PREFIX).contains(&prefix) {
            return Err(SubnetError::PrefixOutOfRange { network, prefix });
        }
        let mask = mask_bits(prefix);
        let bits = u32::from(network);
        if bits & !mask != 0 {
            return Err(SubnetError::HostBitsSet {
                address: network,
                prefix,
                network: Ipv4Addr::from(bits & mask),
            });
        }
        Ok(Self { network, prefix })
    }

    /// The network address (`172.30.0.0` for `172.30.0.0/24`).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length (`24` for `172.30.0.0/24`).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask (`255.255.255.0` for a /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// The broadcast address (`172.30.0.255` for `172.30.0.0/24`).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix))
    }

    /// The bridge's address and the guests' default gateway: the first host
    /// address (`172.30.0.1` for `172.30.0.0/24`).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The gateway with the prefix, as given to `ip addr add` (`172.30.0.1/24`).
    pub fn gateway_cidr(&self) -> String {
        format!("{}/{}", self.gateway(), self.prefix)
    }

    /// Whether `ip` lies in the subnet (network and broadcast addresses included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// Whether `ip` may be given to a guest: inside the subnet and neither the
    /// network, gateway nor broadcast address.
    pub fn is_guest_address(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.gateway() && ip != self.broadcast()
    }
}

fn mask_bits(prefix: u8) -> u32 {
    // A shift by 32 (prefix 0) overflows: that mask is all zeros.
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((address, prefix)) = input.split_once('/') else {
            return Err(SubnetError::MissingPrefix {
                input: input.to_string(),
            });
        };
        let network = match address.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) if address.parse::<Ipv6Addr>().is_ok() => {
                return Err(SubnetError::NotIpv4 {
                    input: input.to_string(),
                });
            }
            Err(_) => {
                return Err(SubnetError::InvalidAddress {
                    input: input.to_string(),
                    address: address.to_string(),
                });
            }
        };
        let invalid_prefix = || SubnetError::InvalidPrefix {
            input: input.to_string(),
            prefix: prefix.to_string(),
        };
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_prefix());
        }
        let prefix: u8 = prefix.parse().map_err(|_| invalid_prefix())?;
        Self::new(network, prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = SubnetError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Subnet> for String {
    fn from(subnet: Subnet) -> Self {
        subnet.to_string()
    }
}

/// The lowest guest address of `subnet` not in `used`, skipping the network,
/// gateway and broadcast addresses; `None` when the subnet is full.
///
/// Addresses in `used` outside the subnet are ignored.
pub fn allocate(subnet: &Subnet, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.gateway()) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

/// The guest MAC address for a guest IP.
///
/// Scheme (the one Firecracker's getting-started images use): `06:00` followed by
/// the four IPv4 octets, so `172.30.0.5` gets `06:00:AC:1E:00:05`. The first octet
/// `0x06` has the locally-administered bit set and the multicast bit clear, so the
/// address is a valid unicast MAC that cannot clash with vendor-assigned ones, and
/// distinct guest IPs always get distinct MACs.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x06, 0x00, a, b, c, d]
}

/// Formats a MAC address as six upper-case hex pairs joined by `:`
/// (`06:00:AC:1E:00:05`), the form Firecracker's `guest_mac` and QEMU's `mac=` take.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The TAP device name for a VM: [`TAP_PREFIX`] followed by the first 12 characters
/// of the VM id that are ASCII letters, digits, `-` or `_` (other characters are
/// dropped), so the name fits in [`IFNAME_MAX`] bytes.
///
/// `0123456789abcdef` gives `bgr0123456789ab`. Two ids that share their first 12
/// kept characters map to the same name; banger's random ids make that unlikely, and
/// callers that need certainty check with `link_exists` first.
pub fn tap_name_for(vm_id: &str) -> String {
    let mut name = String::with_capacity(IFNAME_MAX);
    name.push_str(TAP_PREFIX);
    name.extend(
        vm_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(TAP_ID_CHARS),
    );
    name
}

/// Why an interface name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    /// The name is empty.
    #[error("interface name is empty")]
    Empty,
    /// The name is longer than [`IFNAME_MAX`] bytes.
    #[error("interface name `{name}` is {len} bytes long; the limit is {max}", max = IFNAME_MAX)]
    TooLong {
        /// The name given.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name is `.` or `..`.
    #[error("interface name `{name}` is reserved")]
    Reserved {
        /// The name given.
        name: String,
    },
    /// The name starts with `-` (it would read as an option to `ip`).
    #[error("interface name `{name}` must not start with '-'")]
    LeadingDash {
        /// The name given.
        name: String,
    },
    /// The name contains a character that is not allowed.
    #[error(
        "interface name {name:?} contains {ch:?}; allowed are printable ASCII characters \
         except space, '/', ':', quotes and '\\'"
    )]
    BadChar {
        /// The name given.
        name: String,
        /// The first offending character.
        ch: char,
    },
}

/// Checks an interface name: 1 to [`IFNAME_MAX`] bytes of printable ASCII, no
/// whitespace, `/`, `:`, NUL, quotes or backslash, not `.` or `..`, not starting
/// with `-`.
///
/// This is stricter than the kernel (which allows any bytes but `/`, `:`, whitespace
/// and NUL) so that a name can be passed to `ip` and quoted in `nft` rules safely.
pub fn validate_ifname(name: &str) -> Result<(), IfNameError> {
    if name.is_empty() {
        return Err(IfNameError::Empty);
    }
    if name.len() > IFNAME_MAX {
        return Err(IfNameError::TooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':' | '"' | '\'' | '\\'))
    {
        return Err(IfNameError::BadChar {
            name: name.to_string(),
            ch,
        });
    }
    if name == "." || name == ".." {
        return Err(IfNameError::Reserved {
            name: name.to_string(),
        });
    }
    if name.starts_with('-') {
        return Err(IfNameError::LeadingDash {
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn subnet(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_describes_a_24() {
        let s = subnet("172.30.0.0/24");
        assert_eq!(s.network(), ip("172.30.0.0"));
        assert_eq!(s.prefix(), 24);
        assert_eq!(s.netmask(), ip("255.255.255.0"));
        assert_eq!(s.gateway(), ip("172.30.0.1"));
        assert_eq!(s.broadcast(), ip("172.30.0.255"));
        assert_eq!(s.gateway_cidr(), "172.30.0.1/24");
        assert_eq!(s.to_string(), "172.30.0.0/24");
    }

    #[test]
    fn range_edges_are_accepted() {
        let s16 = subnet("10.20.0.0/16");
        assert_eq!(s16.broadcast(), ip("10.20.255.255"));
        assert_eq!(s16.netmask(), ip("255.255.0.0"));
        let s29 = subnet("192.168.7.8/29");
        assert_eq!(s29.gateway(), ip("192.168.7.9"));
        assert_eq!(s29.broadcast(), ip("192.168.7.15"));
        assert_eq!(s29.netmask(), ip("255.255.255.248"));
    }

    #[test]
    fn rejects_missing_prefix() {
        assert_eq!(
            "172.30.0.0".parse::<Subnet>(),
            Err(SubnetError::MissingPrefix {
                input: "172.30.0.0".into()
            })
        );
    }

    #[test]
    fn rejects_ipv6() {
        let err = "fd00::/64".parse::<Subnet>().unwrap_err();
        assert_eq!(
            err,
            SubnetError::NotIpv4 {
                input: "fd00::/64".into()
            }
        );
        assert!(err.to_string().contains("only IPv4"), "{err}");
    }

    #[test]
    fn rejects_bad_addresses() {
        for input in [
            "172.30.0/24",
            "bridge/24",
            "/24",
            "172.30.0.256/24",
            " 172.30.0.0/24",
        ] {
            assert!(
                matches!(
                    input.parse::<Subnet>(),
                    Err(SubnetError::InvalidAddress { .. })
                ),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_bad_prefixes() {
        for input in [
            "172.30.0.0/",
            "172.30.0.0/x",
            "172.30.0.0/+24",
            "172.30.0.0/024",
            "172.30.0.0/24 ",
            "172.30.0.0/24/1",
        ] {
            assert!(
                matches!(
                    input.parse::<Subnet>(),
                    Err(SubnetError::InvalidPrefix { .. })
                ),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_prefix_out_of_range() {
        for (input, prefix) in [("10.0.0.0/8", 8), ("10.0.0.0/15", 15), ("10.0.0.0/30", 30)] {
            let err = input.parse::<Subnet>().unwrap_err();
            assert_eq!(
                err,
                SubnetError::PrefixOutOfRange {
                    network: ip("10.0.0.0"),
                    prefix
                }
            );
            assert!(err.to_string().contains("between /16 and /29"), "{err}");
        }
        assert!(matches!(
            "10.0.0.0/99".parse::<Subnet>(),
            Err(SubnetError::PrefixOutOfRange { prefix: 99, .. })
        ));
    }

    #[test]
    fn rejects_host_bits_and_suggests_the_network() {
        let err = "172.30.0.1/24".parse::<Subnet>().unwrap_err();
        assert_eq!(
            err,
            SubnetError::HostBitsSet {
                address: ip("172.30.0.1"),
                prefix: 24,
                network: ip("172.30.0.0"),
            }
        );
        assert!(
            err.to_string().contains("did you mean 172.30.0.0/24"),
            "{err}"
        );
        assert!(matches!(
            "10.1.2.0/16".parse::<Subnet>(),
            Err(SubnetError::HostBitsSet { .. })
        ));
    }

    #[test]
    fn new_checks_like_parse() {
        assert_eq!(
            Subnet::new(ip("172.30.0.0"), 24),
            Ok(subnet("172.30.0.0/24"))
        );
        assert!(Subnet::new(ip("172.30.0.4"), 24).is_err());
        assert!(Subnet::new(ip("172.30.0.0"), 31).is_err());
    }

    #[test]
    fn serde_uses_cidr_text() {
        let s = subnet("172.30.0.0/24");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"172.30.0.0/24\"");
        assert_eq!(
            serde_json::from_str::<Subnet>("\"172.30.0.0/24\"").unwrap(),
            s
        );
        let err = serde_json::from_str::<Subnet>("\"172.30.0.9/24\"").unwrap_err();
        assert!(err.to_string().contains("host bits"), "{err}");
    }

    #[test]
    fn membership() {
        let s = subnet("172.30.0.0/24");
        assert!(s.contains(ip("172.30.0.0")));
        assert!(s.contains(ip("172.30.0.255")));
        assert!(!s.contains(ip("172.30.1.0")));
        assert!(!s.contains(ip("172.29.255.255")));
        assert!(s.is_guest_address(ip("172.30.0.2")));
        assert!(s.is_guest_address(ip("172.30.0.254")));
        assert!(!s.is_guest_address(ip("172.30.0.0")));
        assert!(!s.is_guest_address(ip("172.30.0.1")));
        assert!(!s.is_guest_address(ip("172.30.0.255")));
        assert!(!s.is_guest_address(ip("10.0.0.2")));
    }

    #[test]
    fn allocate_starts_after_the_gateway() {
        let s = subnet("172.30.0.0/24");
        assert_eq!(allocate(&s, &BTreeSet::new()), Some(ip("172.30.0.2")));
    }

    #[test]
    fn allocate_fills_the_lowest_hole() {
        let s = subnet("172.30.0.0/24");
        let used: BTreeSet<_> = ["172.30.0.2", "172.30.0.3", "172.30.0.5"]
            .into_iter()
            .map(ip)
            .collect();
        assert_eq!(allocate(&s, &used), Some(ip("172.30.0.4")));
    }

    #[test]
    fn allocate_ignores_foreign_and_reserved_entries() {
        let s = subnet("172.30.0.0/24");
        let used: BTreeSet<_> = ["10.0.0.2", "172.30.0.0", "172.30.0.1", "172.30.0.255"]
            .into_iter()
            .map(ip)
            .collect();
        assert_eq!(allocate(&s, &used), Some(ip("172.30.0.2")));
    }

    #[test]
    fn allocate_returns_none_when_full() {
        let s = subnet("192.168.7.8/29");
        let mut used: BTreeSet<_> = (10..=14).map(|n| Ipv4Addr::new(192, 168, 7, n)).collect();
        assert_eq!(allocate(&s, &used), None);
        used.remove(&ip("192.168.7.14"));
        assert_eq!(allocate(&s, &used), Some(ip("192.168.7.14")));
    }

    #[test]
    fn allocate_crosses_octet_boundaries_in_a_16() {
        let s = subnet("10.20.0.0/16");
        let used: BTreeSet<_> = (2..=255).map(|n| Ipv4Addr::new(10, 20, 0, n)).collect();
        assert_eq!(allocate(&s, &used), Some(ip("10.20.1.0")));
    }

    #[test]
    fn mac_embeds_the_ip() {
        let mac = mac_for_ip(ip("172.30.0.5"));
        assert_eq!(mac, [0x06, 0x00, 0xAC, 0x1E, 0x00, 0x05]);
        assert_eq!(format_mac(&mac), "06:00:AC:1E:00:05");
        // Locally administered, unicast.
        assert_eq!(mac[0] & 0b10, 0b10);
        assert_eq!(mac[0] & 0b01, 0);
        assert_ne!(mac_for_ip(ip("172.30.0.6")), mac);
    }

    #[test]
    fn format_mac_pads_and_uppercases() {
        assert_eq!(
            format_mac(&[0, 1, 0xab, 0x0c, 0xff, 0x10]),
            "00:01:AB:0C:FF:10"
        );
    }

    #[test]
    fn pool_tap_names_are_banger_s_and_never_a_vm_s() {
        assert_eq!(pool_tap_name(0), "bgrp0");
        assert!(is_pool_tap("bgrp12") && is_pool_tap(&pool_tap_name(u32::MAX)));
        assert!(validate_ifname(&pool_tap_name(u32::MAX)).is_ok());
        assert!(pool_tap_name(3).starts_with(TAP_PREFIX));
        for other in ["bgrp", "bgrpx", "bgr0123456789ab", "bgrp1a", "eth0"] {
            assert!(!is_pool_tap(other), "{other}");
        }
        // VM ids are hex: their TAP names never look like the pool's.
        assert!(!is_pool_tap(&tap_name_for("0123456789abcdef")));
    }

    #[test]
    fn tap_names_fit_and_validate() {
        assert_eq!(tap_name_for("0123456789abcdef"), "bgr0123456789ab");
        assert_eq!(tap_name_for("abc"), "bgrabc");
        assert_eq!(
            tap_name_for("550e8400-e29b-41d4-a716-446655440000"),
            "bgr550e8400-e29"
        );
        assert_eq!(tap_name_for("a/b:c d\u{e9}e.f"), "bgrabcdef");
        for id in ["0123456789abcdef", "x", "", "é/:", "550e8400-e29b-41d4"] {
            let name = tap_name_for(id);
            assert!(name.len() <= IFNAME_MAX, "{name}");
            assert!(name.starts_with(TAP_PREFIX));
            validate_ifname(&name).unwrap();
        }
    }

    #[test]
    fn valid_ifnames() {
        for name in [
            "eth0",
            "banger0",
            "br-lan",
            "enp0s31f6",
            "wlan0.100",
            "a",
            "123456789012345",
        ] {
            validate_ifname(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn invalid_ifnames() {
        assert_eq!(validate_ifname(""), Err(IfNameError::Empty));
        assert_eq!(
            validate_ifname("1234567890123456"),
            Err(IfNameError::TooLong {
                name: "1234567890123456".into(),
                len: 16
            })
        );
        // 15 characters but 16 bytes.
        assert!(matches!(
            validate_ifname("12345678901234é"),
            Err(IfNameError::TooLong { len: 16, .. })
        ));
        for (name, ch) in [
            ("a/b", '/'),
            ("a:1", ':'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("a\nb", '\n'),
            ("a\0b", '\0'),
            ("a\"b", '"'),
            ("a'b", '\''),
            ("a\\b", '\\'),
            ("aé", 'é'),
        ] {
            assert_eq!(
                validate_ifname(name),
                Err(IfNameError::BadChar {
                    name: name.into(),
                    ch
                }),
                "{name:?}"
            );
        }
        assert!(matches!(
            validate_ifname("."),
            Err(IfNameError::Reserved { .. })
        ));
        assert!(matches!(
            validate_ifname(".."),
            Err(IfNameError::Reserved { .. })
        ));
        assert!(matches!(
            validate_ifname("-x"),
            Err(IfNameError::LeadingDash { .. })
        ));
    }
}
