//! The guest's network from `/etc/banger/network.env`, applied over rtnetlink: what
//! `banger-network.service` does with `ip` on an image with systemd, for an image that has
//! neither (the agent as init, [`crate::init`]).
//!
//! [`NetworkEnv::parse`] reads the file (the contract is in `banger-disk`'s `guest` module:
//! `KEY=VALUE` lines, `#` comments, `BANGER_DNS` double-quoted). [`configure`] brings `lo`
//! up, finds the interface whose MAC address is `BANGER_MAC` (waiting for it, else the first
//! interface other than `lo`), brings it up, replaces its address and the default route.
//!
//! Netlink is spoken raw over a `libc` socket: three requests (`RTM_NEWLINK` with `IFF_UP`,
//! `RTM_NEWADDR`, `RTM_NEWROUTE`), each acknowledged, built by the pure functions
//! [`link_up_request`], [`address_request`] and [`route_request`]. Interfaces are listed with
//! `if_nameindex(3)` and their MAC addresses read with `SIOCGIFHWADDR`, both of the calling
//! thread's network namespace (which `/sys/class/net` is not, once a test enters another).

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Where the daemon writes a VM's network configuration.
pub const NETWORK_ENV_PATH: &str = "/etc/banger/network.env";

/// A VM's static network configuration, as `network.env` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkEnv {
    /// `BANGER_IP`.
    pub ip: Ipv4Addr,
    /// `BANGER_PREFIX`, 1 to 32.
    pub prefix: u8,
    /// `BANGER_GATEWAY`, when set.
    pub gateway: Option<Ipv4Addr>,
    /// `BANGER_MAC`, lowercase, when set.
    pub mac: Option<String>,
}

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network.env: {key} {value:?} is not valid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("network.env has no {0}")]
    Missing(&'static str),
    #[error("no network interface other than lo")]
    NoInterface,
    #[error("cannot {what}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetworkEnv {
    /// Parses `network.env`; unknown keys are ignored, `BANGER_IP` and `BANGER_PREFIX` are
    /// required.
    pub fn parse(text: &str) -> Result<Self, NetError> {
        let (mut ip, mut prefix, mut gateway, mut mac) = (None, None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            let invalid = |key, reason| NetError::Invalid {
                key,
                value: value.to_string(),
                reason,
            };
            match key {
                "BANGER_IP" => {
                    ip = Some(
                        value
                            .parse::<Ipv4Addr>()
                            .map_err(|_| invalid("BANGER_IP", "not an IPv4 address"))?,
                    );
                }
                "BANGER_PREFIX" => {
                    prefix = Some(
                        value
                            .parse::<u8>()
                            .ok()
                            .filter(|p| (1..=32).contains(p))
                            .ok_or_else(|| invalid("BANGER_PREFIX", "must be 1 to 32"))?,
                    );
                }
                "BANGER_GATEWAY" if !value.is_empty() => {
                    gateway = Some(
                        value
                            .parse::<Ipv4Addr>()
                            .map_err(|_| invalid("BANGER_GATEWAY", "not an IPv4 address"))?,
                    );
                }
                "BANGER_MAC" if !value.is_empty() => {
                    if parse_mac(value).is_none() {
                        return Err(invalid("BANGER_MAC", "must be six hex pairs"));
                    }
                    mac = Some(value.to_ascii_lowercase());
                }
                _ => {}
            }
        }
        Ok(Self {
            ip: ip.ok_or(NetError::Missing("BANGER_IP"))?,
            prefix: prefix.ok_or(NetError::Missing("BANGER_PREFIX"))?,
            gateway,
            mac,
        })
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// What [`configure`] did: the interface and what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The interface's name.
    pub iface: String,
    /// Whether it was found by its MAC address (else it is the first one).
    pub by_mac: bool,
}

/// Applies `env` (see the module docs), waiting up to `wait` for the interface with its MAC.
pub fn configure(env: &NetworkEnv, wait: Duration) -> Result<Configured, NetError> {
    let nl = Netlink::open().map_err(|source| NetError::Netlink {
        what: "open a netlink socket".into(),
        source,
    })?;
    if let Some(lo) = interfaces().into_iter().find(|(_, name)| name == "lo") {
        nl.request(&link_up_request(1, lo.0))
            .map_err(|source| NetError::Netlink {
                what: "bring lo up".into(),
                source,
            })?;
    }
    let want = env.mac.as_deref().and_then(parse_mac);
    let deadline = Instant::now() + wait;
    let (index, name, by_mac) = loop {
        let all: Vec<(u32, String)> = interfaces()
            .into_iter()
            .filter(|(_, n)| n != "lo")
            .collect();
        if let Some(want) = want
            && let Some((i, n)) = all.iter().find(|(_, n)| hw_address(n) == Some(want))
        {
            break (*i, n.clone(), true);
        }
        if want.is_none() || Instant::now() >= deadline {
            let (i, n) = all.into_iter().next().ok_or(NetError::NoInterface)?;
            break (i, n, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let fail = |what: String| move |source| NetError::Netlink { what, source };
    nl.request(&link_up_request(2, index))
        .map_err(fail(format!("bring {name} up")))?;
    nl.request(&address_request(3, index, env.ip, env.prefix))
        .map_err(fail(format!("set {}/{} on {name}", env.ip, env.prefix)))?;
    if let Some(gw) = env.gateway {
        nl.request(&route_request(4, index, gw))
            .map_err(fail(format!("set the default route via {gw} on {name}")))?;
    }
    Ok(Configured {
        iface: name,
        by_mac,
    })
}

/// The interfaces of this thread's network namespace: (index, name).
pub fn interfaces() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, or null; it is
    // read up to the terminator and freed once with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push((
                (*p).if_index,
                CStr::from_ptr((*p).if_name).to_string_lossy().into_owned(),
            ));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out.sort();
    out
}

/// The MAC address of interface `name` (`SIOCGIFHWADDR`), if it has one.
pub fn hw_address(name: &str) -> Option<[u8; 6]> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr within the ifreq passed.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return None;
    }
    // SAFETY: after a successful SIOCGIFHWADDR the union holds ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Some(mac)
}

const NLMSG_HDR: usize = 16;

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A netlink message: header (`seq`, `NLM_F_REQUEST | NLM_F_ACK | flags`) then `body`.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(NLMSG_HDR + body.len());
    buf.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16 | flags;
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(body);
    buf
}

const CREATE_REPLACE: u16 = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;

/// `RTM_NEWLINK` setting `IFF_UP` on interface `index` (`ip link set dev X up`).
pub fn link_up_request(seq: u32, index: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.push(libc::AF_UNSPEC as u8);
    body.push(0);
    body.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    body.extend_from_slice(&(index as i32).to_ne_bytes());
    body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_flags
    body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_change
    message(libc::RTM_NEWLINK, 0, seq, &body)
}

/// `RTM_NEWADDR` replacing `ip/prefix` on interface `index` (`ip addr replace`).
pub fn address_request(seq: u32, index: u32, ip: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut body = vec![libc::AF_INET as u8, prefix, 0, libc::RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&index.to_ne_bytes());
    push_attr(&mut body, libc::IFA_LOCAL, &ip.octets());
    push_attr(&mut body, libc::IFA_ADDRESS, &ip.octets());
    message(libc::RTM_NEWADDR, CREATE_REPLACE, seq, &body)
}

/// `RTM_NEWROUTE` replacing the default route with one via `gateway` on interface `index`
/// (`ip route replace default via GW dev X`).
pub fn route_request(seq: u32, index: u32, gateway: Ipv4Addr) -> Vec<u8> {
    let mut body = vec![
        libc::AF_INET as u8,
        0, // dst_len: default
        0, // src_len
        0, // tos
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    push_attr(&mut body, libc::RTA_GATEWAY, &gateway.octets());
    push_attr(&mut body, libc::RTA_OIF, &index.to_ne_bytes());
    message(libc::RTM_NEWROUTE, CREATE_REPLACE, seq, &body)
}

/// A `NETLINK_ROUTE` socket.
struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: a plain socket call; the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; zeroed with the family set is "any pid,
        // no groups".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: msg is a valid buffer of the length passed.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is a valid writable buffer of the length passed.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(answer) = ack(&buf[..n as usize], seq) {
                return answer;
            }
        }
    }
}

/// The acknowledgement of request `seq` in `buf` (one datagram), if it is there:
/// `Ok` for error 0, else the errno.
fn ack(buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let len = word(at) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < NLMSG_HDR || at + len > buf.len() {
            return Some(Err(io::Error::other("truncated netlink answer")));
        }
        if word(at + 8) == seq && kind == libc::NLMSG_ERROR as u16 && len >= NLMSG_HDR + 4 {
            let errno =
                i32::from_ne_bytes([buf[at + 16], buf[at + 17], buf[at + 18], buf[at + 19]]);
            return Some(if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            });
        }
        at += len.next_multiple_of(4);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "# Written by banger: the static network configuration of this VM.\n\
        BANGER_IP=172.30.0.5\nBANGER_PREFIX=24\nBANGER_GATEWAY=172.30.0.1\n\
        BANGER_DNS=\"172.30.0.1 1.1.1.1\"\nBANGER_MAC=02:FC:AC:1E:00:05\n";

    #[test]
    fn network_env_as_the_daemon_writes_it_parses() {
        assert_eq!(
            NetworkEnv::parse(ENV).unwrap(),
            NetworkEnv {
                ip: Ipv4Addr::new(172, 30, 0, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(172, 30, 0, 1)),
                mac: Some("02:fc:ac:1e:00:05".into()),
            }
        );
    }

    #[test]
    fn a_bad_or_missing_value_names_its_key() {
        let e = NetworkEnv::parse("BANGER_IP=1.2.3\nBANGER_PREFIX=24\n").unwrap_err();
        assert!(e.to_string().contains("BANGER_IP \"1.2.3\""), "{e}");
        let e = NetworkEnv::parse("BANGER_IP=1.2.3.4\nBANGER_PREFIX=33\n").unwrap_err();
        assert!(e.to_string().contains("BANGER_PREFIX"), "{e}");
        let e = NetworkEnv::parse("BANGER_IP=1.2.3.4\n").unwrap_err();
        assert_eq!(e.to_string(), "network.env has no BANGER_PREFIX");
        let e =
            NetworkEnv::parse("BANGER_IP=1.2.3.4\nBANGER_PREFIX=8\nBANGER_MAC=zz\n").unwrap_err();
        assert!(e.to_string().contains("BANGER_MAC"), "{e}");
    }

    #[test]
    fn an_empty_gateway_or_mac_means_none() {
        let env = NetworkEnv::parse(
            "BANGER_IP=10.0.0.2\nBANGER_PREFIX=8\nBANGER_GATEWAY=\nBANGER_MAC=\n",
        )
        .unwrap();
        assert_eq!((env.gateway, env.mac), (None, None));
    }

    #[test]
    fn requests_carry_their_header_and_attributes() {
        let m = address_request(7, 3, Ipv4Addr::new(10, 1, 2, 3), 24);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            libc::RTM_NEWADDR
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        assert_eq!(&m[28..32], &[10, 1, 2, 3]);
        let r = route_request(8, 3, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(r.len(), 16 + 12 + 8 + 8);
        assert_eq!(&r[32..36], &[10, 1, 2, 1]);
        let l = link_up_request(9, 3);
        assert_eq!(l.len(), 32);
    }

    #[test]
    fn an_ack_is_matched_by_sequence_and_carries_the_errno() {
        let mut a = message(libc::NLMSG_ERROR as u16, 0, 5, &(-17i32).to_ne_bytes());
        a.extend_from_slice(&[0; 16]); // the echoed request header
        let len = a.len() as u32;
        a[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(ack(&a, 4).map(|r| r.is_ok()), None);
        let e = ack(&a, 5).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(17));
        let ok = message(libc::NLMSG_ERROR as u16, 0, 6, &0i32.to_ne_bytes());
        assert!(ack(&ok, 6).unwrap().is_ok());
    }

    #[test]
    fn mac_addresses_parse_only_as_six_pairs() {
        assert_eq!(
            parse_mac("02:fc:ac:1e:00:05"),
            Some([2, 0xfc, 0xac, 0x1e, 0, 5])
        );
        assert_eq!(parse_mac("02:fc:ac:1e:00"), None);
        assert_eq!(parse_mac("02:fc:ac:1e:00:05:06"), None);
        assert_eq!(parse_mac("2:fc:ac:1e:00:05"), None);
    }

    /// As root: a veth pair in a fresh network namespace, configured by [`configure`] from a
    /// thread that entered it, checked with `ip -n`.
    #[test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    fn configure_sets_up_the_interface_with_the_mac_in_a_network_namespace() {
        use std::process::Command;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let ns = format!("banger-net-{}", std::process::id());
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        ip(&["netns", "add", &ns]);
        let _gone = Gone(ns.clone());
        // Two interfaces, so the MAC (not "the first one") picks the second.
        ip(&[
            "-n", &ns, "link", "add", "aaa0", "type", "veth", "peer", "name", "aaa1",
        ]);
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "guest0",
            "address",
            "02:fc:ac:1e:00:05",
            "type",
            "veth",
            "peer",
            "name",
            "peer0",
        ]);
        ip(&["-n", &ns, "link", "set", "peer0", "up"]);
        // configure() from a thread inside the namespace.
        let configure_in_ns = || {
            let env = NetworkEnv::parse(ENV).unwrap();
            let path = format!("/run/netns/{ns}");
            std::thread::spawn(move || {
                let f = std::fs::File::open(&path).unwrap();
                // SAFETY: f is an open netns file; setns moves only this thread.
                assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
                configure(&env, Duration::from_secs(2))
            })
            .join()
            .unwrap()
            .unwrap()
        };
        let done = configure_in_ns();
        assert_eq!(
            done,
            Configured {
                iface: "guest0".into(),
                by_mac: true
            }
        );
        assert!(ip(&["-n", &ns, "-4", "addr", "show", "guest0"]).contains("inet 172.30.0.5/24"));
        assert!(ip(&["-n", &ns, "link", "show", "lo"]).contains("UP"));
        assert!(
            ip(&["-n", &ns, "-4", "route", "show", "default"])
                .contains("default via 172.30.0.1 dev guest0"),
        );
        // Again: replace, not "file exists".
        assert_eq!(configure_in_ns(), done);
    }
}
