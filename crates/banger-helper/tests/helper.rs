//! The helper served in-process over a real Unix socket, with the network faked (what is
//! allowed reaches it, what is refused never does), then the real binary as root in a
//! scratch network namespace.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use banger_net::fake::{FakeNetOps, NetCall};
use banger_net::helper::{HelperNetOps, Policy};
use banger_net::{NetError, NetOps};

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

struct Served {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: Arc<FakeNetOps>,
    _rt: tokio::runtime::Runtime,
}

fn served(owner: u32) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("helper.sock");
    let fake = Arc::new(FakeNetOps::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket).unwrap() });
    let policy = Policy {
        owner_uid: owner,
        bridge: "banger0".into(),
    };
    let net: Arc<dyn NetOps> = fake.clone();
    rt.spawn(banger_helper::serve(listener, policy, net));
    Served {
        _dir: dir,
        socket,
        fake,
        _rt: rt,
    }
}

/// Sends raw lines on one connection and reads one answer per line.
fn raw(socket: &Path, lines: &[&str]) -> Vec<String> {
    let mut s = UnixStream::connect(socket).unwrap();
    let mut answers = Vec::new();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for line in lines {
        s.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answers.push(answer);
    }
    answers
}

#[test]
fn the_owner_s_operations_reach_the_network_and_come_back_typed() {
    let s = served(euid());
    let client = HelperNetOps::new(&s.socket);
    let subnet = "172.30.0.0/24".parse().unwrap();
    client.ensure_bridge("banger0", &subnet).unwrap();
    client.create_tap("bgr1", "banger0", Some(euid())).unwrap();
    assert_eq!(client.list_links("bgr").unwrap(), ["bgr1"]);
    assert!(client.link_exists("bgr1").unwrap());
    client
        .enable_nat(&subnet, "172.30.0.2".parse().unwrap(), Some("eth0"))
        .unwrap();
    client.disable_nat("172.30.0.2".parse().unwrap()).unwrap();
    client.delete_tap("bgr1").unwrap();
    assert_eq!(
        client.build().unwrap(),
        banger_core::build::BuildInfo::current().to_string()
    );
    assert_eq!(s.fake.calls().len(), 7, "{:?}", s.fake.calls());
    assert_eq!(
        s.fake.calls()[1],
        NetCall::CreateTap {
            name: "bgr1".into(),
            bridge: "banger0".into(),
            owner_uid: Some(euid()),
        }
    );
}

#[test]
fn adversarial_requests_outside_the_pattern_are_refused_and_change_nothing() {
    let s = served(euid());
    let client = HelperNetOps::new(&s.socket);
    let refused = |r: Result<(), NetError>| match r {
        Err(NetError::HelperRefused { error }) => error,
        other => panic!("{other:?}"),
    };
    assert!(refused(client.delete_tap("eth0")).contains("not one of banger's TAP"));
    assert!(
        refused(client.ensure_bridge("banger0", &"8.8.8.0/24".parse().unwrap()))
            .contains("not a private range")
    );
    assert!(refused(client.create_tap("bgr1", "banger0", Some(euid() + 1))).contains("owned by"));
    assert!(refused(client.create_tap("bgr1\nx", "banger0", Some(euid()))).contains("bgr1"));
    let answers = raw(
        &s.socket,
        &[
            "{\"op\":\"ensure_bridge\",\"name\":\"banger0\",\"subnet\":\"0.0.0.0/0\"}\n",
            "{\"op\":\"run\",\"command\":\"id\"}\n",
            "not json\n",
            // The connection still serves a good request after bad ones.
            "{\"op\":\"link_exists\",\"name\":\"banger0\"}\n",
        ],
    );
    for a in &answers[..3] {
        assert!(a.starts_with("{\"result\":\"refused\""), "{a}");
    }
    assert_eq!(answers[3], "{\"result\":\"exists\",\"exists\":false}\n");
    // Only the last one reached the network.
    assert_eq!(s.fake.calls().len(), 1, "{:?}", s.fake.calls());
    // An over-long line is refused and the connection closed.
    let long = format!("{}\n", "x".repeat(70 * 1024));
    let answers = raw(&s.socket, &[&long]);
    assert!(answers[0].contains("longer than"), "{}", answers[0]);
}

#[test]
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn adversarial_another_uid_is_refused_before_any_request() {
    if euid() != 0 {
        eprintln!("skipped: needs root (to connect as another uid with setpriv)");
        return;
    }
    let s = served(0);
    // The file mode would stop uid 65534 already; open it so SO_PEERCRED is what refuses.
    std::fs::set_permissions(s._dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             s.connect(sys.argv[1])\n\
             try: s.sendall(b'{\"op\":\"delete_tap\",\"name\":\"bgr1\"}\\n')\n\
             except OSError: pass\n\
             print(s.makefile().readline(),end='')\n",
        )
        .arg(&s.socket)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("uid 65534 may not use"),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());
}

/// The real binary, as root, in a scratch network namespace: a bridge and a TAP made and
/// removed for real, and the socket only its owner's.
#[test]
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn the_binary_does_real_bridge_and_tap_work_in_a_namespace() {
    if euid() != 0 {
        eprintln!("skipped: needs root (network namespace, bridge, TAP)");
        return;
    }
    let ns = format!("bgrhelper{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _ns = Ns(ns.clone());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("helper.sock");
    let mut helper = Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_banger-helper")])
        .arg("--socket")
        .arg(&socket)
        .args(["--owner", "0", "--bridge", "banger0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let client = HelperNetOps::new(&socket);
    let subnet = "172.30.0.0/24".parse().unwrap();
    client.ensure_bridge("banger0", &subnet).unwrap();
    client.create_tap("bgrtest0", "banger0", Some(0)).unwrap();
    assert!(client.link_exists("bgrtest0").unwrap());
    let links = Command::new("ip")
        .args([
            "netns", "exec", &ns, "ip", "-o", "link", "show", "master", "banger0",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&links.stdout).contains("bgrtest0"));
    client.delete_tap("bgrtest0").unwrap();
    assert!(!client.link_exists("bgrtest0").unwrap());
    assert!(matches!(
        client.delete_tap("lo"),
        Err(NetError::HelperRefused { .. })
    ));
    // Out-of-pattern requests against a real host: refused, and the links are as they were.
    let in_ns = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // (A bridge: the kernel here may have no dummy or veth driver.)
    in_ns(&["ip", "link", "add", "eth0", "type", "bridge"]);
    let links_before = in_ns(&["ip", "-o", "link", "show"]);
    let refused = |r: Result<(), NetError>| matches!(r, Err(NetError::HelperRefused { .. }));
    assert!(refused(client.delete_tap("eth0")));
    assert!(refused(client.create_tap("eth0", "banger0", Some(0))));
    assert!(refused(client.create_tap("bgr1\nx", "banger0", Some(0))));
    assert!(refused(client.ensure_bridge("banger0\n", &subnet)));
    assert!(refused(client.enable_nat(
        &subnet,
        "172.30.0.9".parse().unwrap(),
        Some("eth0\nx")
    )));
    let answers = raw(
        &socket,
        &["{\"op\":\"ensure_bridge\",\"name\":\"banger0\",\"subnet\":\"0.0.0.0/0\"}\n"],
    );
    assert!(
        answers[0].starts_with("{\"result\":\"refused\""),
        "{}",
        answers[0]
    );
    assert_eq!(in_ns(&["ip", "-o", "link", "show"]), links_before);
    helper.kill().unwrap();
    let out = helper.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("performed") && log.contains("refused"),
        "{log}"
    );
}

/// `banger system status` and doctor compare builds: the helper names its build as bangerd
/// does.
#[test]
fn the_version_is_banger_s_build() {
    let out = Command::new(env!("CARGO_BIN_EXE_banger-helper"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("banger-helper {}", banger_core::build::BuildInfo::current())
    );
}

/// The refusal of a peer is written before its request is read, then the connection is
/// closed: the client reads it even when its own write found the socket closed (EPIPE).
#[test]
fn adversarial_a_refused_peer_always_reads_the_refusal() {
    let s = served(euid().wrapping_add(1));
    let client = HelperNetOps::new(&s.socket);
    for _ in 0..50 {
        match client.delete_tap("bgr1") {
            Err(NetError::HelperRefused { error }) => {
                assert!(error.contains("may not use"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());
}
