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
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no answer from the daemon's DNS: {text} {out:?}"));
    let addresses = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect();
    (status, addresses)
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
    let mut holder = Command::new("ip")
        .args([
            "netns",
            "exec",
            home.netns.as_deref().unwrap(),
            "python3",
            "-c",
        ])
        .arg(
            "import socket,sys,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1',42069))\n\
             print('bound',flush=True)\n\
             time.sleep(60)\n",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "bound");
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
