//! Runs the real `banger-agent` binary and talks to it through the host's client
//! (`banger_agent_proto::client`): over its Unix socket test mode, through a fake Firecracker
//! hybrid-vsock socket, and over a pty standing in for the virtio-serial port. The client's
//! own tests, hostile agents included, are in `banger-agent-proto`.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use banger_agent::serial::{self, SerialStream};
use banger_agent_proto::client::{self, ClientError};
use banger_agent_proto::wire::{AGENT_VSOCK_PORT, Family, Proto};
use banger_core::build::BuildInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(5);

/// A running agent process, killed if the test fails before stopping it.
struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Agent {
    fn spawn(args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_banger-agent"))
            .args(args)
            .env("BANGER_AGENT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn banger-agent")
    }

    /// Starts the agent on a Unix socket in a fresh tempdir, plus `extra` flags, and waits
    /// until it answers connections.
    async fn start_unix(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut args = vec!["--listen-unix", socket.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut child = Self::spawn(&args);
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if UnixStream::connect(&socket).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("agent exited early with {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent never listened on {}",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            _dir: dir,
            socket,
        }
    }

    async fn connect(&self) -> UnixStream {
        client::connect_unix(&self.socket).await.unwrap()
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = child.id().expect("agent still running") as libc::pid_t;
    // SAFETY: kill only sends a signal to the pid of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

async fn wait_exit(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(T, child.wait())
        .await
        .expect("agent did not exit within 5s of the signal")
        .unwrap()
}

#[tokio::test]
async fn unix_mode_reports_health_and_this_process_listeners() {
    let mut agent = Agent::start_unix(&[]).await;

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let me = std::process::id();

    let health = client::health(agent.connect().await, T).await.unwrap();
    let build = BuildInfo::current();
    assert_eq!(health.version, build.version);
    assert_eq!(health.commit, build.commit);
    assert_eq!(health.build_epoch, build.build_epoch);
    assert!(health.uptime_secs > 0);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(health.hostname, hostname.trim_end());

    let ports = client::ports(agent.connect().await, T).await.unwrap();
    let tcp_entry = ports
        .listeners
        .iter()
        .find(|l| l.proto == Proto::Tcp && l.port == tcp_port)
        .unwrap_or_else(|| panic!("TCP port {tcp_port} missing from {:?}", ports.listeners));
    assert_eq!(tcp_entry.family, Family::Ipv4);
    assert_eq!(tcp_entry.address, "127.0.0.1");
    assert_eq!(tcp_entry.pid, Some(me));
    assert!(tcp_entry.process.as_deref().is_some_and(|p| !p.is_empty()));
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_str().unwrap();
    assert!(
        tcp_entry
            .command
            .as_deref()
            .is_some_and(|c| c.contains(exe_name)),
        "command {:?} should name {exe_name}",
        tcp_entry.command
    );
    let udp_entry = ports
        .listeners
        .iter()
        .find(|l| l.proto == Proto::Udp && l.port == udp_port)
        .unwrap_or_else(|| panic!("UDP port {udp_port} missing from {:?}", ports.listeners));
    assert_eq!(udp_entry.pid, Some(me));
    assert_eq!(udp_entry.address, "127.0.0.1");

    // Unknown endpoints are JSON errors.
    let err = client::get_json::<serde_json::Value, _>(agent.connect().await, "/nope", T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 404, .. }),
        "{err}"
    );

    // SIGTERM: clean exit, and the agent removes its socket file.
    signal(&agent.child, libc::SIGTERM);
    let status = wait_exit(&mut agent.child).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!agent.socket.exists(), "socket file left behind");
    drop((tcp, udp));
}

#[tokio::test]
async fn sigint_exits_cleanly() {
    let mut agent = Agent::start_unix(&[]).await;
    signal(&agent.child, libc::SIGINT);
    let status = wait_exit(&mut agent.child).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn vsock_flag_alongside_unix_still_serves_unix() {
    // Binds vsock when the host has a vsock device and logs the failure otherwise; either way
    // the Unix socket is served.
    let port = (40_000 + std::process::id() % 20_000).to_string();
    let mut agent = Agent::start_unix(&["--vsock-port", &port]).await;
    client::health(agent.connect().await, T).await.unwrap();
    signal(&agent.child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut agent.child).await.code(), Some(0));
}

#[tokio::test]
async fn missing_serial_device_fails_startup() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("banger.agent");
    let out = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
        .args(["--serial", missing.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("banger.agent"), "{stderr}");
}

#[tokio::test]
async fn version_prints_build_identity() {
    let out = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
        .arg("version")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("banger-agent {}\n", BuildInfo::current()));
    assert!(stdout.contains("(commit "), "{stdout}");
}

/// A fake Firecracker vsock socket: accepts one connection, reads the CONNECT line, answers
/// `OK <host port>` and forwards the stream to the agent at `forward_to`.
async fn fake_firecracker(listener: UnixListener, forward_to: PathBuf) -> Vec<u8> {
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte).await.unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    conn.write_all(b"OK 1073741824\n").await.unwrap();
    let mut upstream = UnixStream::connect(forward_to).await.unwrap();
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    line
}

#[tokio::test]
async fn hybrid_vsock_handshake_then_http() {
    let mut agent = Agent::start_unix(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let fc = tokio::spawn(fake_firecracker(listener, agent.socket.clone()));

    let stream = client::connect_hybrid_vsock(&uds, AGENT_VSOCK_PORT)
        .await
        .unwrap();
    let health = client::health(stream, T).await.unwrap();
    assert_eq!(health.version, BuildInfo::current().version);
    let line = tokio::time::timeout(T, fc).await.unwrap().unwrap();
    assert_eq!(line, b"CONNECT 10789\n");

    signal(&agent.child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut agent.child).await.code(), Some(0));
}

/// Opens a pty pair in raw mode and returns the master and the slave's path.
fn open_pty() -> (File, PathBuf) {
    let master = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .unwrap();
    // SAFETY: the master descriptor is open for the duration of the call.
    assert_eq!(unsafe { libc::unlockpt(master.as_raw_fd()) }, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the master descriptor is open and `name` is writable for `name.len()` bytes.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    assert_eq!(rc, 0);
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let slave = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string();
    // Raw before the agent opens the slave, so no byte of the first request is translated.
    serial::make_raw(&master).unwrap();
    (master, PathBuf::from(slave))
}

/// A stream over a fresh duplicate of the pty master.
fn master_stream(master: &File, slave: &Path) -> SerialStream {
    SerialStream::from_file(master.try_clone().unwrap(), slave).unwrap()
}

#[tokio::test]
async fn serial_mode_serves_a_pty_and_reopens_after_each_connection() {
    let (master, slave) = open_pty();
    let mut child = Agent::spawn(&["--serial", slave.to_str().unwrap()]);

    // The client asks the agent to close after each answer, so every request below after the
    // first is served only if the agent reopened the device.
    for round in 0..3 {
        let health = client::health(master_stream(&master, &slave), T)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(health.version, BuildInfo::current().version);
        // Let the agent close the slave and reopen it (200ms later).
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let ports = client::ports(master_stream(&master, &slave), T)
        .await
        .unwrap();
    let entry = ports
        .listeners
        .iter()
        .find(|l| l.proto == Proto::Tcp && l.port == tcp_port)
        .unwrap_or_else(|| panic!("TCP port {tcp_port} missing from {:?}", ports.listeners));
    assert_eq!(entry.pid, Some(std::process::id()));

    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).await.code(), Some(0));
    drop(tcp);
}
