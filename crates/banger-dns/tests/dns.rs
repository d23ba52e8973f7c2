//! The DNS server answering a real client (`dig`, from bind9-dnsutils) over UDP and TCP.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use banger_dns::{DnsServer, Records};

/// `dig`'s answer to `name`: (status, answer lines); None when dig cannot run.
fn dig(addr: SocketAddr, name: &str, extra: &[&str]) -> Option<(String, Vec<String>)> {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .args(["+tries=1", "+time=2", "+noall", "+answer", "+comments"])
        .args(extra)
        .arg(name)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no status in dig output: {text}"));
    let flags = text
        .lines()
        .find_map(|l| l.split("flags: ").nth(1))
        .unwrap_or("")
        .to_string();
    // Every answer for the zone is authoritative; a refusal is not an answer.
    assert!(
        status == "REFUSED" || flags.contains("aa"),
        "not authoritative: {text}"
    );
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    Some((status, answers))
}

#[allow(clippy::print_stderr)] // the visible reason for a skip
fn has_dig() -> bool {
    let ok = Command::new("dig").arg("-v").output().is_ok();
    if !ok {
        eprintln!("skipped: dig is not installed (Debian: bind9-dnsutils)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_running_vms_over_udp_and_tcp_and_nxdomain_for_the_rest() {
    if !has_dig() {
        return;
    }
    let records = Records::new();
    records.insert("web", Ipv4Addr::new(172, 16, 0, 2)).unwrap();
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), records.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    let ask = move |name: &'static str, extra: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || dig(addr, name, extra).unwrap())
    };
    for transport in [&[][..], &["+tcp"][..]] {
        let (status, answers) = ask("web.vm", transport).await.unwrap();
        assert_eq!(status, "NOERROR", "{transport:?}");
        assert_eq!(answers, ["web.vm. 5 IN A 172.16.0.2"], "{transport:?}");
        let (status, answers) = ask("db.vm", transport).await.unwrap();
        assert_eq!((status.as_str(), answers.len()), ("NXDOMAIN", 0));
    }
    let (status, answers) = ask("web.vm", &["AAAA"]).await.unwrap();
    assert_eq!((status.as_str(), answers.len()), ("NOERROR", 0), "NODATA");
    let (status, _) = ask("example.com", &[]).await.unwrap();
    assert_eq!(status, "REFUSED");

    // A stop or delete takes the record away; the next start brings it back, moved.
    records.remove("web");
    let (status, _) = ask("web.vm", &[]).await.unwrap();
    assert_eq!(status, "NXDOMAIN");
    records.insert("web", Ipv4Addr::new(172, 16, 0, 9)).unwrap();
    let (_, answers) = ask("web.vm", &[]).await.unwrap();
    assert_eq!(answers, ["web.vm. 5 IN A 172.16.0.9"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_is_a_bind_error_naming_it() {
    let first = DnsServer::bind("127.0.0.1:0".parse().unwrap(), Records::new())
        .await
        .unwrap();
    let err = DnsServer::bind(first.local_addr(), Records::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&first.local_addr().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn the_probe_knows_banger_s_server_from_silence_and_from_other_servers() {
    use banger_dns::{ProbeError, probe};
    use std::time::Duration;
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), Records::new())
        .await
        .unwrap();
    probe(server.local_addr(), Duration::from_secs(2))
        .await
        .unwrap();

    // A UDP socket that never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let err = probe(silent.local_addr().unwrap(), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");

    // A server that answers every query REFUSED, as a resolver for other zones would.
    let other = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = other.recv_from(&mut buf).await {
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR: a response
            reply[3] = (reply[3] & 0xf0) | 5; // RCODE: REFUSED
            let _ = other.send_to(&reply, from).await;
        }
    });
    let err = probe(other_addr, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, ProbeError::NotBanger { .. }), "{err}");
    assert!(err.to_string().contains("Refused"), "{err}");
    server.shutdown().await;
}
