//! Runs the real `banger-agent` binary and talks to it through the host's client
//! (`banger_agent_proto::client`): over its Unix socket test mode, through a fake Firecracker
//! hybrid-vsock socket, and over a pty standing in for the virtio-serial port: health, ports
//! and exec sessions (exit codes, signals, big stdio, PTY, disconnects, the mux). The client's
//! own tests, hostile agents included, are in `banger-agent-proto`.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use banger_agent::serial::{self, SerialStream};
use banger_agent_proto::client::exec::{ExecError, ExecEvent, ExecSession, exec};
use banger_agent_proto::client::{self, ClientError, mux};
use banger_agent_proto::exec::{ExecRequest, ExitStatus, PtySize, Signal, SpawnErrorKind};
use banger_agent_proto::wire::{AGENT_VSOCK_PORT, Family, Proto};
use banger_core::build::BuildInfo;
use hyper::body::Bytes;
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
            // As an init starts it: no login variables (systemd sets PATH only).
            .env_remove("HOME")
            .env_remove("USER")
            .env_remove("LOGNAME")
            .env_remove("SHELL")
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

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
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

// ---------------------------------------------------------------------------------------------
// Exec: the real agent runs commands for the host's client, over its Unix socket, through a
// fake Firecracker, and over one serial stream shared by several sessions (the mux).

/// Output and status of a finished session.
#[derive(Debug)]
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: ExitStatus,
}

/// Reads a session to its end.
async fn collect(mut session: ExecSession) -> Ran {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    loop {
        match tokio::time::timeout(LONG, session.next_event())
            .await
            .expect("session did not end in time")
            .unwrap()
        {
            Some(ExecEvent::Stdout(b)) => stdout.extend_from_slice(&b),
            Some(ExecEvent::Stderr(b)) => stderr.extend_from_slice(&b),
            Some(ExecEvent::Exit(status)) => {
                assert!(session.next_event().await.unwrap().is_none());
                return Ran {
                    stdout,
                    stderr,
                    status,
                };
            }
            None => panic!("no exit status"),
        }
    }
}

const LONG: Duration = Duration::from_secs(30);

/// Runs `argv` to its end with no stdin.
async fn run<S>(stream: S, argv: &[&str]) -> Ran
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let session = exec(stream, ExecRequest::new(argv.iter().copied()), T)
        .await
        .unwrap();
    collect(session).await
}

/// Whether `pid` is gone (or only a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

async fn wait_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + T;
    while !gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exec_reports_exit_codes_and_keeps_stderr_apart() {
    let agent = Agent::start_unix(&[]).await;
    let ok = run(agent.connect().await, &["true"]).await;
    assert_eq!(ok.status, ExitStatus::Code(0));
    assert!(ok.status.success());
    let fail = run(agent.connect().await, &["false"]).await;
    assert_eq!(fail.status, ExitStatus::Code(1));
    let seven = run(
        agent.connect().await,
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
    )
    .await;
    assert_eq!(seven.status, ExitStatus::Code(7));
    assert_eq!(seven.stdout, b"to-out\n");
    assert_eq!(seven.stderr, b"to-err\n");

    // Much of both at once: neither blocks the other, and no byte changes sides.
    let both = run(
        agent.connect().await,
        &[
            "sh",
            "-c",
            "head -c 3000000 /dev/zero | tr '\\0' o & head -c 2000000 /dev/zero | tr '\\0' e >&2; wait",
        ],
    )
    .await;
    assert_eq!(both.status, ExitStatus::Code(0));
    assert_eq!(both.stdout.len(), 3_000_000);
    assert!(both.stdout.iter().all(|&b| b == b'o'));
    assert_eq!(both.stderr.len(), 2_000_000);
    assert!(both.stderr.iter().all(|&b| b == b'e'));
}

#[tokio::test]
async fn exec_passes_argv_exactly_with_cwd_and_env() {
    let agent = Agent::start_unix(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut req = ExecRequest::new([
        "sh",
        "-c",
        "pwd; echo \"$GREETING\"; printf '[%s]' \"$@\"",
        "sh",
        "a b",
        "",
        "$HOME",
    ]);
    req.cwd = Some(dir.path().to_str().unwrap().to_string());
    req.env.insert("GREETING".into(), "hello there".into());
    let ran = collect(exec(agent.connect().await, req, T).await.unwrap()).await;
    assert_eq!(
        ran.status,
        ExitStatus::Code(0),
        "{:?}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        String::from_utf8(ran.stdout).unwrap(),
        format!("{}\nhello there\n[a b][][$HOME]", canonical.display())
    );
}

/// The agent runs with no HOME (an init starts it), yet a command gets its user's login
/// variables, as over ssh: git, for one, refuses to run without HOME.
#[tokio::test]
async fn exec_gives_the_command_its_user_s_login_environment() {
    let agent = Agent::start_unix(&[]).await;
    let req = ExecRequest::new(["sh", "-c", "echo \"$HOME|$USER|$LOGNAME|$SHELL\""]);
    let ran = collect(exec(agent.connect().await, req, T).await.unwrap()).await;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let want = banger_agent::exec::login_env(&passwd, uid, true);
    let get = |k: &str| want.iter().find(|(key, _)| *key == k).unwrap().1.clone();
    assert!(!get("HOME").is_empty());
    assert_eq!(
        String::from_utf8(ran.stdout).unwrap(),
        format!(
            "{}|{}|{}|{}\n",
            get("HOME"),
            get("USER"),
            get("LOGNAME"),
            get("SHELL")
        )
    );
    // The request's own variables still win.
    let mut req = ExecRequest::new(["sh", "-c", "echo \"$HOME\""]);
    req.env.insert("HOME".into(), "/elsewhere".into());
    let ran = collect(exec(agent.connect().await, req, T).await.unwrap()).await;
    assert_eq!(ran.stdout, b"/elsewhere\n");
}

#[tokio::test]
async fn exec_of_a_missing_command_or_directory_is_a_typed_error() {
    let agent = Agent::start_unix(&[]).await;
    let err = exec(
        agent.connect().await,
        ExecRequest::new(["no-such-command-anywhere", "x"]),
        T,
    )
    .await
    .unwrap_err();
    match &err {
        ExecError::Spawn { kind, message, .. } => {
            assert_eq!(*kind, SpawnErrorKind::NotFound);
            assert_eq!(kind.shell_code(), 127);
            assert!(message.contains("no-such-command-anywhere"), "{message}");
        }
        other => panic!("expected a spawn error, got {other}"),
    }
    assert!(err.to_string().contains("command not found"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let err = exec(
        agent.connect().await,
        ExecRequest::new([script.to_str().unwrap()]),
        T,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::Spawn {
                kind: SpawnErrorKind::PermissionDenied,
                ..
            }
        ),
        "{err}"
    );

    let mut req = ExecRequest::new(["true"]);
    req.cwd = Some("/no/such/dir".into());
    let err = exec(agent.connect().await, req, T).await.unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::Spawn {
                kind: SpawnErrorKind::BadCwd,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/no/such/dir"), "{err}");

    // The agent is fine afterwards.
    assert_eq!(
        run(agent.connect().await, &["true"]).await.status,
        ExitStatus::Code(0)
    );
}

#[tokio::test]
async fn exec_forwards_sigint_and_sigkill() {
    let agent = Agent::start_unix(&[]).await;
    let session = exec(agent.connect().await, ExecRequest::new(["sleep", "30"]), T)
        .await
        .unwrap();
    session.signal(Signal::Int).await.unwrap();
    let ran = collect(session).await;
    assert_eq!(
        ran.status,
        ExitStatus::Signal {
            signal: libc::SIGINT,
            core_dumped: false
        }
    );
    assert_eq!(ran.status.shell_code(), 130);

    // A shell that traps SIGINT and exits 130 itself reports the code, not a signal.
    let mut session = exec(
        agent.connect().await,
        ExecRequest::new([
            "sh",
            "-c",
            "trap 'exit 130' INT; echo ready; while :; do sleep 0.05; done",
        ]),
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        session.next_event().await.unwrap(),
        Some(ExecEvent::Stdout(Bytes::from_static(b"ready\n")))
    );
    session.control().signal(Signal::Int).await.unwrap();
    assert_eq!(collect(session).await.status, ExitStatus::Code(130));

    let session = exec(
        agent.connect().await,
        ExecRequest::new(["sh", "-c", "trap '' INT TERM; sleep 30"]),
        T,
    )
    .await
    .unwrap();
    session.signal(Signal::Kill).await.unwrap();
    let ran = collect(session).await;
    assert_eq!(
        ran.status,
        ExitStatus::Signal {
            signal: libc::SIGKILL,
            core_dumped: false
        }
    );
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// Pushes `input` through `cat` and checks it comes back intact.
async fn cat_roundtrip<S>(stream: S, input: Vec<u8>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut session = exec(stream, ExecRequest::new(["cat"]), T).await.unwrap();
    let mut stdin = session.take_stdin().unwrap();
    let expected = sha256(&input);
    let len = input.len();
    let feeder = tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
        stdin.close().await.unwrap();
    });
    let ran = collect(session).await;
    feeder.await.unwrap();
    assert_eq!(ran.status, ExitStatus::Code(0));
    assert_eq!(ran.stdout.len(), len);
    assert_eq!(sha256(&ran.stdout), expected);
    assert!(ran.stderr.is_empty());
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn exec_streams_ten_mib_through_stdin_and_stdout() {
    let agent = Agent::start_unix(&[]).await;
    cat_roundtrip(agent.connect().await, pseudo_random(10 << 20)).await;
}

#[tokio::test]
async fn exec_signal_reaches_a_process_that_does_not_read_its_stdin() {
    let agent = Agent::start_unix(&[]).await;
    let mut session = exec(agent.connect().await, ExecRequest::new(["sleep", "30"]), T)
        .await
        .unwrap();
    let mut stdin = session.take_stdin().unwrap();
    // More than the pipe and the credit window hold: the writer stalls, the signal does not.
    let feeder = tokio::spawn(async move {
        let _ = stdin.write_all(&vec![b'x'; 4 << 20]).await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    session.signal(Signal::Term).await.unwrap();
    let ran = collect(session).await;
    assert_eq!(
        ran.status,
        ExitStatus::Signal {
            signal: libc::SIGTERM,
            core_dumped: false
        }
    );
    feeder.abort();
}

/// Reads stdout until it contains `want`; returns everything read.
async fn read_until(session: &mut ExecSession, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        match tokio::time::timeout(T, session.next_event())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in {seen:?}"))
            .unwrap()
        {
            Some(ExecEvent::Stdout(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("expected output with {want:?}, got {other:?} after {seen:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn exec_pty_session_sees_a_terminal_of_the_asked_size_and_resizes() {
    let agent = Agent::start_unix(&[]).await;
    let mut req = ExecRequest::new([
        "sh",
        "-c",
        "tty && stty size && read line && stty size && echo \"got $line\"",
    ]);
    req.pty = Some(PtySize {
        rows: 33,
        cols: 101,
    });
    let mut session = exec(agent.connect().await, req, T).await.unwrap();
    let first = read_until(&mut session, "33 101").await;
    assert!(first.contains("/dev/pts/"), "{first}");
    session
        .resize(PtySize {
            rows: 40,
            cols: 120,
        })
        .await
        .unwrap();
    let mut stdin = session.take_stdin().unwrap();
    stdin.write_all(b"hello\r").await.unwrap();
    let rest = read_until(&mut session, "got hello").await;
    assert!(rest.contains("40 120"), "{rest}");
    assert_eq!(collect(session).await.status, ExitStatus::Code(0));

    // Without a PTY, there is no terminal.
    let ran = run(agent.connect().await, &["tty"]).await;
    assert_eq!(ran.status, ExitStatus::Code(1));
    assert_eq!(ran.stdout, b"not a tty\n");
}

#[tokio::test]
async fn exec_host_disconnect_kills_the_process_group() {
    let agent = Agent::start_unix(&[]).await;
    let mut session = exec(
        agent.connect().await,
        ExecRequest::new(["sh", "-c", "sleep 1000 & echo $!; wait"]),
        T,
    )
    .await
    .unwrap();
    let shell = session.pid();
    let out = read_until(&mut session, "\n").await;
    let sleeper: u32 = out.trim().parse().unwrap();
    assert!(!gone(shell) && !gone(sleeper));
    drop(session);
    wait_gone(shell).await;
    wait_gone(sleeper).await;
}

#[tokio::test]
async fn exec_through_the_hybrid_vsock_handshake() {
    let agent = Agent::start_unix(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let fc = tokio::spawn(fake_firecracker(listener, agent.socket.clone()));
    let stream = client::connect_hybrid_vsock(&uds, AGENT_VSOCK_PORT)
        .await
        .unwrap();
    let ran = run(stream, &["sh", "-c", "echo through vsock; exit 3"]).await;
    assert_eq!(ran.status, ExitStatus::Code(3));
    assert_eq!(ran.stdout, b"through vsock\n");
    tokio::time::timeout(T, fc).await.unwrap().unwrap();
}

#[tokio::test]
async fn exec_rejects_an_upgrade_without_the_header() {
    let agent = Agent::start_unix(&[]).await;
    let mut s = agent.connect().await;
    let answer = raw_exchange(&mut s, "GET /exec HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Upgrade: banger-exec/1"), "{answer}");
}

async fn raw_exchange(s: &mut UnixStream, request: &str) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn serial_stream_carries_concurrent_exec_sessions_and_health_through_the_mux() {
    let (master, slave) = open_pty();
    let mut child = Agent::spawn(&["--serial", slave.to_str().unwrap()]);

    let m = mux::connect(master_stream(&master, &slave), T)
        .await
        .unwrap();
    let script = [
        "sh",
        "-c",
        "read x; echo \"got $x\"; echo \"err $x\" >&2; exit 5",
    ];
    let mut one = exec(m.open().await.unwrap(), ExecRequest::new(script), T)
        .await
        .unwrap();
    let mut two = exec(m.open().await.unwrap(), ExecRequest::new(script), T)
        .await
        .unwrap();
    // Both sessions wait for input; health still answers on the same serial stream.
    let health = client::health(m.open().await.unwrap(), T).await.unwrap();
    assert_eq!(health.version, BuildInfo::current().version);
    let mut stdin_two = two.take_stdin().unwrap();
    stdin_two.write_all(b"second\n").await.unwrap();
    let mut stdin_one = one.take_stdin().unwrap();
    stdin_one.write_all(b"first\n").await.unwrap();
    let (one, two) = tokio::join!(collect(one), collect(two));
    assert_eq!(
        (one.status, two.status),
        (ExitStatus::Code(5), ExitStatus::Code(5))
    );
    assert_eq!(one.stdout, b"got first\n");
    assert_eq!(one.stderr, b"err first\n");
    assert_eq!(two.stdout, b"got second\n");
    assert_eq!(two.stderr, b"err second\n");

    // A big transfer over the multiplexed pty stream stays intact.
    cat_roundtrip(m.open().await.unwrap(), pseudo_random(2 << 20)).await;

    // Closing the mux ends its sessions: a process still running there is killed.
    let mut sleeper = exec(
        m.open().await.unwrap(),
        ExecRequest::new(["sh", "-c", "echo up; sleep 1000"]),
        T,
    )
    .await
    .unwrap();
    assert_eq!(read_until(&mut sleeper, "\n").await, "up\n");
    let pid = sleeper.pid();
    drop(m);
    wait_gone(pid).await;
    let end = tokio::time::timeout(T, sleeper.next_event()).await.unwrap();
    assert!(end.is_err(), "{end:?}");

    // And the plain, non-multiplexed requests of today still work on the reopened stream.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let health = client::health(master_stream(&master, &slave), T)
        .await
        .unwrap();
    assert_eq!(health.version, BuildInfo::current().version);

    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).await.code(), Some(0));
}

#[tokio::test]
#[allow(clippy::print_stderr)]
async fn exec_true_round_trip_over_the_unix_socket_is_fast() {
    let agent = Agent::start_unix(&[]).await;
    let mut times = Vec::new();
    for _ in 0..41 {
        let started = std::time::Instant::now();
        let ran = run(agent.connect().await, &["true"]).await;
        times.push(started.elapsed());
        assert_eq!(ran.status, ExitStatus::Code(0));
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "exec true over the unix socket: median {median:?}, min {:?}, max {:?}",
        times[0],
        times[times.len() - 1]
    );
    // The issue's goal against the fake Firecracker is 20 ms; a debug build on a loaded
    // machine gets a wide margin.
    assert!(median < Duration::from_millis(200), "median {median:?}");
}

#[tokio::test]
async fn exec_host_overrunning_its_stdin_credit_ends_the_session_and_the_process() {
    use banger_agent_proto::exec::{Frame, MAX_DATA_CHUNK, STDIN_WINDOW, read_frame, write_frame};
    let agent = Agent::start_unix(&[]).await;
    let mut s = agent.connect().await;
    s.write_all(
        b"GET /exec HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: banger-exec/1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(s.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    write_frame(&mut s, &Frame::Start(ExecRequest::new(["sleep", "1000"])))
        .await
        .unwrap();
    let pid = match read_frame(&mut s).await.unwrap() {
        Some(Frame::Started(started)) => started.pid,
        other => panic!("expected started, got {other:?}"),
    };
    // `sleep` reads no stdin: only what its pipe buffer takes is credited back. Send twice
    // the window regardless.
    let chunk = Bytes::from(vec![b'x'; MAX_DATA_CHUNK]);
    for _ in 0..2 * (STDIN_WINDOW as usize / MAX_DATA_CHUNK) {
        if write_frame(&mut s, &Frame::Stdin(chunk.clone()))
            .await
            .is_err()
        {
            break;
        }
    }
    // The agent ends the session: no exit status, the connection closes, the process dies.
    let end = tokio::time::timeout(T, async {
        loop {
            match read_frame(&mut s).await {
                Ok(Some(Frame::StdinCredit(_))) => continue,
                other => break other,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    wait_gone(pid).await;
}

#[tokio::test]
async fn exec_pty_signal_reaches_the_foreground_job_of_a_job_control_shell() {
    let agent = Agent::start_unix(&[]).await;
    // With job control the shell runs `sleep` in a process group of its own, the terminal's
    // foreground group: that is where Ctrl-C must go. Sent to the shell's group instead, it
    // would leave `sleep` running for 30 s (the shell traps it), and the test would time out.
    let mut req = ExecRequest::new([
        "sh",
        "-c",
        "set -m; trap 'echo trapped' INT; echo ready; sleep 30; echo \"status $?\"",
    ]);
    req.pty = Some(PtySize { rows: 24, cols: 80 });
    let mut session = exec(agent.connect().await, req, T).await.unwrap();
    read_until(&mut session, "ready").await;
    // Let the shell start the job and hand it the terminal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.signal(Signal::Int).await.unwrap();
    let rest = read_until(&mut session, "status 130").await;
    assert!(rest.contains("status 130"), "{rest}");
    assert_eq!(collect(session).await.status, ExitStatus::Code(0));
}

#[tokio::test]
#[allow(clippy::print_stderr, reason = "says why the test was skipped")]
async fn exec_host_disconnect_kills_processes_that_left_the_process_group() {
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs python3 to move a process to a group of its own");
        return;
    }
    let agent = Agent::start_unix(&[]).await;
    let mut session = exec(
        agent.connect().await,
        ExecRequest::new([
            "python3",
            "-c",
            "import os, time\nif os.fork() == 0:\n    os.setpgid(0, 0)\n    print(os.getpid(), flush=True)\n    time.sleep(1000)\nelse:\n    time.sleep(1000)\n",
        ]),
        T,
    )
    .await
    .unwrap();
    let leader = session.pid();
    let moved: u32 = read_until(&mut session, "\n").await.trim().parse().unwrap();
    assert!(!gone(moved));
    drop(session);
    wait_gone(leader).await;
    wait_gone(moved).await;
}

fn identity_request(hostname: &str) -> banger_agent_proto::identity::Identity {
    use banger_agent_proto::identity::{Identity, IdentityFile, hex};
    Identity {
        hostname: hostname.to_string(),
        files: vec![IdentityFile {
            path: "/etc/hostname".to_string(),
            content: format!("{hostname}\n"),
        }],
        mac: "06:00:ac:1e:00:09".to_string(),
        entropy: hex(&[7u8; 32]),
        time_unix_ns: 1,
        grow: vec!["/dev/vdb".to_string()],
    }
}

#[tokio::test]
async fn host_test_mode_refuses_identity_unless_given_a_sandbox_root() {
    let agent = Agent::start_unix(&[]).await;
    let err = client::identity(agent.connect().await, &identity_request("vm-a"), T)
        .await
        .expect_err("refused in host test mode");
    assert!(
        matches!(&err, ClientError::Status { status, .. } if *status == 409),
        "{err}"
    );

    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path().to_str().unwrap();
    let agent = Agent::start_unix(&["--identity-root", root]).await;
    let hostname_before = std::fs::read_to_string("/etc/hostname").ok();
    let machine_id_before = std::fs::read_to_string("/etc/machine-id").ok();
    let keys = client::identity(agent.connect().await, &identity_request("vm-b"), T)
        .await
        .expect("identity in the sandbox");
    assert!(
        keys.keys.is_empty(),
        "no host keys in the sandbox: {keys:?}"
    );
    let in_root = |p: &str| std::fs::read_to_string(sandbox.path().join(p)).unwrap();
    assert_eq!(in_root("etc/hostname"), "vm-b\n");
    assert_eq!(in_root("etc/machine-id").trim().len(), 32);
    // Nothing on the host changed: its files, and its hostname (a kernel step, skipped).
    assert_eq!(
        std::fs::read_to_string("/etc/hostname").ok(),
        hostname_before
    );
    assert_eq!(
        std::fs::read_to_string("/etc/machine-id").ok(),
        machine_id_before
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(hostname.trim(), "vm-b");
}

#[tokio::test]
async fn an_identity_root_needs_the_unix_listener() {
    let sandbox = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
        .args(["--identity-root", sandbox.path().to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen-unix"), "{stderr}");
}
