//! `NAME.vm` from the daemon's DNS server, asked with `dig` inside the home's network
//! namespace (where the daemon listens on 127.0.0.1:42069, the default).

use std::process::Command;

use crate::common::*;

/// `dig`'s status and A addresses for `name` against the daemon's server.
fn dig(home: &Home, name: &str) -> (String, Vec<String>) {
    let out = home.in_ns(&[
        "dig",
        "@127.0.0.1",
        "-p",
        "42069",
        "+tries=1",
        "+time=2",
        "+noall",
        "+answer",
        "+comments",
        name,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    parse_dig(&text).unwrap_or_else(|| panic!("no answer from the daemon's DNS: {text} {out:?}"))
}

/// The status and the A addresses in `dig +noall +answer +comments` output; `None` when it
/// has no status (no server answered).
fn parse_dig(text: &str) -> Option<(String, Vec<String>)> {
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())?;
    let addresses = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect();
    Some((status, addresses))
}

#[allow(clippy::print_stderr)] // the visible reason for a skip
fn has_dig() -> bool {
    let ok = Command::new("dig").arg("-v").output().is_ok();
    if !ok {
        eprintln!("skipped: dig is not installed (Debian: bind9-dnsutils)");
    }
    ok
}

#[test]
fn running_vms_have_names_stopped_and_deleted_ones_do_not_and_a_restart_keeps_them() {
    if !has_dig() {
        return;
    }
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
    let ip = home.vm("web")["ip"].as_str().unwrap().to_string();
    let st = home.status();
    assert_eq!(st["dns"]["state"], "listening", "{st}");
    assert_eq!(st["dns"]["address"], "127.0.0.1:42069");
    assert!(
        home.ok(&["daemon", "status"])
            .contains("127.0.0.1:42069 (udp, tcp)")
    );
    assert_eq!(dig(&home, "web.vm"), ("NOERROR".into(), vec![ip.clone()]));
    assert_eq!(dig(&home, "nope.vm").0, "NXDOMAIN");

    home.ok(&["vm", "stop", "web"]);
    assert_eq!(
        dig(&home, "web.vm").0,
        "NXDOMAIN",
        "a stopped VM has no name"
    );
    home.ok(&["vm", "start", "web"]);
    assert_eq!(dig(&home, "web.vm").1, vec![ip.clone()]);

    // A daemon killed and restarted serves the same zone once it found its VMs again.
    let dpid = home.status()["pid"].as_u64().unwrap();
    kill9_and_wait(dpid);
    assert!(!pid_alive(dpid));
    assert_eq!(home.vm("web")["state"], "running");
    assert_eq!(dig(&home, "web.vm").1, vec![ip]);

    home.ok(&["vm", "delete", "web"]);
    assert_eq!(
        dig(&home, "web.vm").0,
        "NXDOMAIN",
        "a deleted VM has no name"
    );
}

#[test]
fn a_taken_dns_port_is_a_warning_not_a_failed_start() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    // A second home in the same namespace would be a second daemon; a plain UDP socket on
    // the port is enough.
    home.ok(&["daemon", "stop"]);
    let mut holder = python_in_ns(
        home.netns.as_deref().unwrap(),
        "import socket,sys,time\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.1',42069))\n\
         print('bound',flush=True)\n\
         time.sleep(60)\n",
    );
    let st = home.status();
    assert_eq!(st["dns"]["state"], "failed", "{st}");
    assert!(
        st["dns"]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:42069"),
        "{st}"
    );
    assert!(home.ok(&["daemon", "status"]).contains("dns"));
    home.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// A network namespace standing in for a guest: a veth whose other end is on the home's
/// bridge, the address `ip`/24, and `/etc/netns/NS/resolv.conf` (which `ip netns exec` puts in
/// place of `/etc/resolv.conf`).
struct FakeGuest {
    ns: String,
}

impl FakeGuest {
    fn attach(home: &Home, ip: &str, resolv: &str) -> Self {
        let ns = format!("{}g", home.netns.as_deref().unwrap());
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        run(&["netns", "add", &ns]);
        let guest = Self { ns: ns.clone() };
        let home_ns = home.netns.as_deref().unwrap();
        let bridge = "banger0";
        for args in [
            &[
                "link", "add", "vguest", "type", "veth", "peer", "name", "eth0",
            ][..],
            &["link", "set", "eth0", "netns", &ns],
            &["link", "set", "vguest", "master", bridge, "up"],
        ] {
            let mut all = vec!["netns", "exec", home_ns, "ip"];
            all.extend(args);
            run(&all);
        }
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            &["link", "set", "eth0", "up"],
        ] {
            let mut all = vec!["-n", ns.as_str()];
            all.extend(args);
            run(&all);
        }
        let dir = format!("/etc/netns/{ns}");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/resolv.conf"), resolv).unwrap();
        guest
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }

    fn out(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `dig`'s status and first address for `name`, asked of `server` port 53.
    fn dig(&self, server: &str, name: &str, tcp: bool) -> (String, Option<String>) {
        let at = format!("@{server}");
        // Patient: in a loaded test run a datagram can go unanswered for a while.
        let mut args = vec![
            "dig",
            &at,
            "+tries=3",
            "+time=3",
            "+noall",
            "+answer",
            "+comments",
        ];
        if tcp {
            args.push("+tcp");
        }
        args.push(name);
        let text = self.out(&args);
        let (status, addresses) = parse_dig(&text)
            .unwrap_or_else(|| panic!("no answer from {server} for {name}: {text}"));
        (status, addresses.into_iter().next())
    }
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.ns));
    }
}

/// A stand-in for the host's upstream resolver, in the guest's namespace on 127.0.0.1:53:
/// every A question is answered `10.9.9.9`.
const UPSTREAM: &str = r"import socket,struct
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind(('127.0.0.1',53))
print('bound',flush=True)
while True:
    q,a=s.recvfrom(512)
    i=12
    while q[i]!=0: i+=q[i]+1
    qtype=struct.unpack('>H',q[i+1:i+3])[0]
    ans=b'\xc0\x0c'+struct.pack('>HHIH',1,1,5,4)+bytes([10,9,9,9]) if qtype==1 else b''
    s.sendto(q[:2]+struct.pack('>HHHHH',0x8180,1,1 if ans else 0,0,0)+q[12:i+5]+ans,a)
";

#[test]
fn guests_resolve_each_other_through_the_gateway_and_other_names_fall_through() {
    if !has_dig() {
        return;
    }
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
    home.ok(&["vm", "create", "--name", "db", "--image", "test-img"]);
    let (web, db) = (
        home.vm("web")["ip"].as_str().unwrap().to_string(),
        home.vm("db")["ip"].as_str().unwrap().to_string(),
    );
    // The guests' listener starts once the first boot made the bridge.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let st = loop {
        let st = home.status();
        if st["guest_dns"]["state"] == "listening" {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "no guest DNS: {st}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let listening = st["guest_dns"]["address"].as_str().unwrap().to_string();
    let gateway = listening.split(':').next().unwrap().to_string();
    assert!(
        web.starts_with(&gateway[..gateway.len() - 1]),
        "{web} {gateway}"
    );
    assert_eq!(listening, format!("{gateway}:42069"));
    assert_eq!(
        st["dns_routing"]["state"], "not_available",
        "no systemd-resolved here: {st}"
    );
    let text = home.ok(&["daemon", "status"]);
    assert!(
        text.contains(&format!(
            "{listening}, port 53 of the gateway redirected there"
        )),
        "{text}"
    );
    assert!(
        text.contains("none: systemd-resolved is not running"),
        "{text}"
    );

    let resolv = format!(
        "nameserver {gateway}\nnameserver 127.0.0.1\nsearch vm\noptions timeout:3 attempts:2\n"
    );
    let guest = FakeGuest::attach(&home, "172.30.0.250", &resolv);
    // Port 53 of the gateway is the daemon's zone, over UDP and TCP.
    assert_eq!(
        guest.dig(&gateway, "web.vm", false),
        ("NOERROR".into(), Some(web.clone()))
    );
    assert_eq!(
        guest.dig(&gateway, "db.vm", true),
        ("NOERROR".into(), Some(db.clone()))
    );
    assert_eq!(guest.dig(&gateway, "nope.vm", false).0, "NXDOMAIN");
    // Outside `.vm` the answer is REFUSED (not NXDOMAIN), so a resolver asks the next server.
    assert_eq!(guest.dig(&gateway, "example.com", false).0, "REFUSED");

    let mut upstream = python_in_ns(&guest.ns, UPSTREAM);
    // glibc, as a guest's programs resolve: a plain name through `search vm`, a `.vm` name,
    // and an outside name answered by the next nameserver after the gateway's REFUSED.
    let getent = |name: &str| {
        guest
            .out(&["getent", "ahostsv4", name])
            .split_whitespace()
            .next()
            .map(str::to_string)
    };
    assert_eq!(getent("web"), Some(web.clone()));
    assert_eq!(getent("db.vm"), Some(db));
    assert_eq!(getent("outside.example"), Some("10.9.9.9".to_string()));
    upstream.kill().unwrap();
    upstream.wait().unwrap();

    // A stopped VM has no name for guests either.
    home.ok(&["vm", "stop", "web"]);
    assert_eq!(guest.dig(&gateway, "web.vm", false).0, "NXDOMAIN");
}
