//! `vm ports`: the guest's listening sockets as the host sees them. A socket listening on
//! both `0.0.0.0` and `::` is shown once; each gets the endpoint a user types (`NAME.vm:PORT`,
//! or the bound address when only the guest itself can reach it); and every TCP listener the
//! host can reach is probed for a web server, HTTPS first, then HTTP, so it can be shown as a
//! link. The probes run concurrently, each bounded by [`PROBE_TIMEOUT`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use banger_api::types::{PortListener, Ports, Proto};

use super::agent;
use crate::error::OpError;
use crate::state::AppState;

/// How long one probe (one scheme on one port) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The listening sockets of the guest of the running VM `reference` names, described.
pub async fn ports(state: &AppState, reference: &str) -> Result<Ports, OpError> {
    let (row, listeners) = agent::listeners(state, reference).await?;
    Ok(describe(&row.name, row.ip, listeners, PROBE_TIMEOUT).await)
}

/// `listeners` of VM `name` at guest address `ip`, collapsed, with endpoints and web URLs.
pub(crate) async fn describe(
    name: &str,
    ip: Option<Ipv4Addr>,
    listeners: Vec<PortListener>,
    timeout: Duration,
) -> Ports {
    let mut listeners = collapse(listeners, ip);
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .build();
    let probes = listeners.iter().map(|l| {
        let target = match (&client, ip) {
            (Ok(client), Some(ip)) if l.proto == Proto::Tcp && reachable(&l.address, ip) => {
                Some((client, SocketAddr::from((ip, l.port))))
            }
            _ => None,
        };
        async move {
            match target {
                Some((client, addr)) => web_scheme(client, addr).await,
                None => None,
            }
        }
    });
    let schemes = futures_util::future::join_all(probes).await;
    for (l, scheme) in listeners.iter_mut().zip(schemes) {
        let host = ip.filter(|ip| reachable(&l.address, *ip));
        l.endpoint = match host {
            Some(_) => format!("{name}.vm:{}", l.port),
            None if l.address.contains(':') => format!("[{}]:{}", l.address, l.port),
            None => format!("{}:{}", l.address, l.port),
        };
        l.url = scheme.map(|s| format!("{s}://{name}.vm:{}/", l.port));
    }
    Ports { listeners }
}

/// One entry per (protocol, port, process): of several, the one the host can reach, IPv4
/// first. The order is the guest's.
fn collapse(listeners: Vec<PortListener>, ip: Option<Ipv4Addr>) -> Vec<PortListener> {
    let rank = |l: &PortListener| {
        let reach = ip.is_some_and(|ip| reachable(&l.address, ip));
        (!reach, l.family)
    };
    let mut order: Vec<(Proto, u16, Option<u32>)> = Vec::new();
    let mut best: BTreeMap<(Proto, u16, Option<u32>), PortListener> = BTreeMap::new();
    for l in listeners {
        let key = (l.proto, l.port, l.pid);
        match best.get(&key) {
            Some(kept) if rank(kept) <= rank(&l) => {}
            Some(_) => {
                best.insert(key, l);
            }
            None => {
                order.push(key);
                best.insert(key, l);
            }
        }
    }
    order.into_iter().filter_map(|k| best.remove(&k)).collect()
}

/// Whether a socket bound to `address` takes connections to guest address `ip`: a wildcard,
/// or that address itself (also as an IPv4-mapped IPv6 address).
fn reachable(address: &str, ip: Ipv4Addr) -> bool {
    match address.parse::<IpAddr>() {
        Ok(a) if a.is_unspecified() => true,
        Ok(IpAddr::V4(a)) => a == ip,
        Ok(IpAddr::V6(a)) => a.to_ipv4_mapped() == Some(ip),
        Err(_) => false,
    }
}

/// `https` or `http` when `addr` answers an HTTP request in that scheme (any status: a 404
/// is a web server too), HTTPS tried first; certificates are not checked, a guest's server
/// has no certificate the host could trust.
async fn web_scheme(client: &reqwest::Client, addr: SocketAddr) -> Option<&'static str> {
    for scheme in ["https", "http"] {
        let url = format!("{scheme}://{addr}/");
        if client.get(&url).send().await.is_ok() {
            return Some(scheme);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::types::Family;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn listener(proto: Proto, family: Family, address: &str, port: u16) -> PortListener {
        PortListener {
            proto,
            family,
            address: address.into(),
            port,
            pid: Some(7),
            process: Some("server".into()),
            command: Some("server --flag".into()),
            endpoint: String::new(),
            url: None,
        }
    }

    fn v4(address: &str, port: u16) -> PortListener {
        listener(Proto::Tcp, Family::Ipv4, address, port)
    }

    /// A TCP server on loopback that answers each connection with `reply` (after reading a
    /// request when `read_first`), or holds it silently when `reply` is empty.
    async fn server(reply: &'static [u8], read_first: bool) -> u16 {
        let l = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if read_first {
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                    }
                    if reply.is_empty() {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    } else {
                        let _ = s.write_all(reply).await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn dual_stack_twins_show_once_and_guest_only_sockets_keep_their_address() {
        // The guest's address is one of the host's loopback addresses that nothing listens
        // on, so the web probes are refused at once. An outside address would depend on the
        // network around the test: a sandbox may answer any connection to one with HTTP.
        let ip: Ipv4Addr = "127.0.0.5".parse().unwrap();
        let ports = describe(
            "web",
            Some(ip),
            vec![
                listener(Proto::Tcp, Family::Ipv6, "::", 9),
                v4("0.0.0.0", 9),
                v4("127.0.0.1", 5432),
                listener(Proto::Tcp, Family::Ipv6, "::1", 5432),
                listener(Proto::Udp, Family::Ipv4, "127.0.0.5", 9),
                listener(Proto::Tcp, Family::Ipv6, "::ffff:127.0.0.5", 11),
                listener(Proto::Tcp, Family::Ipv6, "fe80::1", 12),
            ],
            Duration::from_millis(200),
        )
        .await;
        let got: Vec<(Proto, &str, &str)> = ports
            .listeners
            .iter()
            .map(|l| (l.proto, l.address.as_str(), l.endpoint.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Proto::Tcp, "0.0.0.0", "web.vm:9"),
                (Proto::Tcp, "127.0.0.1", "127.0.0.1:5432"),
                (Proto::Udp, "127.0.0.5", "web.vm:9"),
                (Proto::Tcp, "::ffff:127.0.0.5", "web.vm:11"),
                (Proto::Tcp, "fe80::1", "[fe80::1]:12"),
            ]
        );
        // Nothing answered HTTP there.
        assert!(ports.listeners.iter().all(|l| l.url.is_none()));
    }

    #[tokio::test]
    async fn an_http_server_becomes_an_http_link_and_other_servers_do_not() {
        let http = server(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            true,
        )
        .await;
        let ssh = server(b"SSH-2.0-OpenSSH_9.2\r\n", false).await;
        let silent = server(b"", false).await;
        let started = std::time::Instant::now();
        let ports = describe(
            "web",
            Some(LOCAL),
            vec![
                v4("0.0.0.0", http),
                v4("0.0.0.0", ssh),
                v4("0.0.0.0", silent),
            ],
            Duration::from_millis(500),
        )
        .await;
        let urls: Vec<Option<&str>> = ports.listeners.iter().map(|l| l.url.as_deref()).collect();
        assert_eq!(
            urls,
            [Some(format!("http://web.vm:{http}/").as_str()), None, None]
        );
        // Concurrent and bounded: the silent server costs two timeouts, not more.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    async fn a_tls_server_is_probed_first_and_becomes_an_https_link() {
        let Some(dir) = tempfile::tempdir().ok() else {
            return;
        };
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-subj", "/CN=web.vm", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: the openssl command cannot make a test certificate");
            return;
        }
        let port = std::net::TcpListener::bind((LOCAL, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut tls = tokio::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect((LOCAL, port)).await.is_err() {
            assert!(
                std::time::Instant::now() < end,
                "openssl s_server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ports = describe(
            "web",
            Some(LOCAL),
            vec![v4("0.0.0.0", port)],
            Duration::from_secs(2),
        )
        .await;
        let _ = tls.kill().await;
        assert_eq!(
            ports.listeners[0].url.as_deref(),
            Some(format!("https://web.vm:{port}/").as_str())
        );
    }
}
