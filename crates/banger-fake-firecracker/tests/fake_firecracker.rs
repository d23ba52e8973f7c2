//! Drives the real `banger-fake-firecracker` binary over its API socket, as
//! banger's daemon will.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_banger-fake-firecracker");

/// Which agent the fake may start.
enum AgentChoice {
    /// `BANGER_AGENT_BIN` points nowhere: no agent.
    Missing,
    /// `BANGER_AGENT_BIN` is this file.
    At(PathBuf),
}

struct Fake {
    child: Child,
    dir: TempDir,
    api: PathBuf,
    log: PathBuf,
    console: Arc<Mutex<String>>,
}

impl Fake {
    fn start(agent: AgentChoice) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = dir.path().join("api.sock");
        let log = dir.path().join("requests.log");
        let agent_bin = match agent {
            AgentChoice::Missing => dir.path().join("no-such-agent"),
            AgentChoice::At(path) => path,
        };
        let mut child = Command::new(BIN)
            .args(["--api-sock"])
            .arg(&api)
            .args([
                "--id",
                "it-vm-1",
                "--level",
                "Info",
                "--show-level",
                "--no-seccomp",
            ])
            .env("BANGER_FAKE_FC_LOG", &log)
            .env("BANGER_AGENT_BIN", &agent_bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fake");
        let console = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&console);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                text.push_str(line.trim_end_matches('\r'));
                text.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&api).is_err() {
            assert!(Instant::now() < deadline, "API socket never came up");
            thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            dir,
            api,
            log,
            console,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write file");
        path.display().to_string()
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        raw_request(&self.api, method, path, &body)
    }

    fn ok(&self, method: &str, path: &str, body: Value) {
        let (status, answer) = self.request(method, path, Some(body));
        assert_eq!(status, 204, "{method} {path}: {answer}");
    }

    fn refused(&self, method: &str, path: &str, body: Option<Value>) -> String {
        let (status, answer) = self.request(method, path, body);
        assert_eq!(status, 400, "{method} {path} must be refused: {answer}");
        answer["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {answer}"))
            .to_owned()
    }

    fn console(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn wait_console(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.console();
            if text.contains(needle) || Instant::now() > deadline {
                return text;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fake did not exit within {within:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Configures a bootable VM: machine-config, kernel, root + work drives, a
    /// network interface and a vsock device.
    fn configure(&self) {
        let kernel = self.file("vmlinux", "\x7fELF not really a kernel");
        let root = self.file("root.ext4", "root fs");
        let work = self.file("work.ext4", "work fs");
        self.ok(
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 256}),
        );
        self.ok(
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k panic=1"}),
        );
        self.ok(
            "PUT",
            "/drives/root",
            json!({"drive_id": "root", "path_on_host": root, "is_root_device": true, "is_read_only": false}),
        );
        self.ok(
            "PUT",
            "/drives/work",
            json!({"drive_id": "work", "path_on_host": work, "is_root_device": false, "is_read_only": false}),
        );
        self.ok(
            "PUT",
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "bgtap0", "guest_mac": "06:00:AC:10:00:02"}),
        );
        self.ok(
            "PUT",
            "/vsock",
            json!({"guest_cid": 3, "uds_path": self.path("v.sock").display().to_string()}),
        );
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 client over a Unix socket.
fn raw_request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = UnixStream::connect(socket).expect("connect API socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, payload) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head}"));
    let value = match payload.is_empty() {
        true => Value::Null,
        false => serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("non-JSON body {payload:?}: {e}")),
    };
    (status, value)
}

fn read_line(stream: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into_owned()),
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
}

/// Sends `CONNECT port` and returns the `OK` line, or `None` if the fake hung up.
fn vsock_connect(uds: &Path, port: u32) -> (UnixStream, Option<String>) {
    let mut stream = UnixStream::connect(uds).expect("connect vsock socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("send CONNECT");
    let line = read_line(&mut stream);
    (stream, line)
}

#[test]
fn happy_path_boots_logs_and_shuts_down_on_ctrl_alt_del() {
    let mut fake = Fake::start(AgentChoice::Missing);
    let (status, info) = fake.request("GET", "/", None);
    assert_eq!(status, 200);
    assert_eq!(
        info,
        json!({"app_name": "Firecracker", "id": "it-vm-1", "state": "Not started", "vmm_version": "1.17.0-dev"})
    );
    fake.configure();
    fake.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));

    let (_, info) = fake.request("GET", "/", None);
    assert_eq!(info["state"], "Running");
    let (status, machine) = fake.request("GET", "/machine-config", None);
    assert_eq!(status, 200);
    assert_eq!(machine["vcpu_count"], 2);
    assert_eq!(machine["mem_size_mib"], 256);
    let (_, config) = fake.request("GET", "/vm/config", None);
    let drives: Vec<&str> = config["drives"]
        .as_array()
        .expect("drives")
        .iter()
        .filter_map(|d| d["drive_id"].as_str())
        .collect();
    assert_eq!(drives, ["root", "work"]);
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "bgtap0");
    assert_eq!(config["vsock"]["guest_cid"], 3);
    let (_, version) = fake.request("GET", "/version", None);
    assert_eq!(version, json!({"firecracker_version": "1.17.0-dev"}));
    fake.ok("PATCH", "/vm", json!({"state": "Paused"}));
    assert_eq!(fake.request("GET", "/", None).1["state"], "Paused");
    fake.ok("PATCH", "/vm", json!({"state": "Resumed"}));

    let console = fake.wait_console("guest running");
    assert!(console.contains("Linux version"), "{console}");
    assert!(
        console.contains("Command line: console=ttyS0 reboot=k panic=1 root=/dev/vda rw"),
        "{console}"
    );
    assert!(
        console.contains("banger-fake-firecracker: guest running"),
        "{console}"
    );
    assert!(
        console.contains("could not start banger-agent"),
        "{console}"
    );

    let log = std::fs::read_to_string(&fake.log).expect("request log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect();
    for line in &lines {
        let keys: Vec<&String> = line.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["body", "method", "path"], "{line}");
    }
    assert_eq!(
        lines[0],
        json!({"method": "GET", "path": "/", "body": null})
    );
    assert!(lines.iter().any(|l| l["method"] == "PUT"
        && l["path"] == "/drives/root"
        && l["body"]["drive_id"] == "root"
        && l["body"]["is_root_device"] == true));
    assert!(lines.contains(
        &json!({"method": "PUT", "path": "/actions", "body": {"action_type": "InstanceStart"}})
    ));

    let uds = fake.path("v.sock");
    assert!(uds.exists());
    fake.ok("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"}));
    let status = fake.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{status:?}");
    let console = fake.wait_console("reboot: Restarting system");
    assert!(console.contains("reboot: Restarting system"), "{console}");
    assert!(!fake.api.exists(), "API socket removed on exit");
    assert!(!uds.exists(), "vsock socket removed on exit");
}

#[test]
fn refusals_answer_400_with_a_fault_message() {
    let fake = Fake::start(AgentChoice::Missing);
    let kernel = fake.file("vmlinux", "kernel");

    let m = fake.refused(
        "PUT",
        "/boot-source",
        Some(json!({"boot_args": "console=ttyS0"})),
    );
    assert!(m.contains("missing field `kernel_image_path`"), "{m}");
    let m = fake.refused(
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": "two", "mem_size_mib": 128})),
    );
    assert!(m.contains("invalid type: string \"two\""), "{m}");
    let m = fake.refused(
        "PUT",
        "/boot-source",
        Some(json!({"kernel_image_path": kernel, "initrd": "x"})),
    );
    assert!(m.contains("unknown field `initrd`"), "{m}");
    let m = fake.refused(
        "PUT",
        "/drives/root",
        Some(json!({"drive_id": "work", "path_on_host": kernel, "is_root_device": true})),
    );
    assert_eq!(
        m,
        "The id from the path does not match the id from the body!"
    );
    let m = fake.refused(
        "PUT",
        "/boot-source",
        Some(json!({"kernel_image_path": fake.path("missing-vmlinux").display().to_string()})),
    );
    assert!(
        m.starts_with("Boot source error: The kernel file cannot be opened"),
        "{m}"
    );
    let m = fake.refused(
        "PUT",
        "/drives/root",
        Some(json!({"drive_id": "root", "path_on_host": fake.path("nope.ext4").display().to_string(), "is_root_device": true})),
    );
    assert!(m.starts_with("Drive config error"), "{m}");
    let m = fake.refused(
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    );
    assert_eq!(
        m,
        "Start microvm error: Cannot start microvm without kernel configuration."
    );
    let m = fake.refused("PATCH", "/vm", Some(json!({"state": "Paused"})));
    assert_eq!(
        m,
        "The requested operation is not supported before starting the microVM."
    );
    let m = fake.refused("GET", "/no/such/path", None);
    assert_eq!(m, "Invalid request method and/or path: GET no.");
    let m = fake.refused("PUT", "/actions", None);
    assert_eq!(m, "Empty PUT request.");
    let big = json!({"blob": "x".repeat(60_000)}).to_string();
    let (status, answer) = raw_request(&fake.api, "PUT", "/mmds", &big);
    assert_eq!(
        status, 413,
        "over the 51200-byte API payload limit: {answer}"
    );

    fake.ok("PUT", "/boot-source", json!({"kernel_image_path": kernel}));
    fake.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    let m = fake.refused(
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    );
    assert_eq!(
        m,
        "The requested operation is not supported after starting the microVM."
    );
    let m = fake.refused(
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 128})),
    );
    assert_eq!(
        m,
        "The requested operation is not supported after starting the microVM."
    );

    let log = std::fs::read_to_string(&fake.log).expect("request log");
    assert!(
        log.lines().any(|l| l.contains(r#""initrd":"x""#)),
        "refused requests are logged too:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l == r#"{"body":null,"method":"PUT","path":"/actions"}"#),
        "empty bodies log as null:\n{log}"
    );
}

#[test]
fn invalid_json_bodies_are_refused_and_logged_as_text() {
    let fake = Fake::start(AgentChoice::Missing);
    let (status, answer) = raw_request(&fake.api, "PUT", "/machine-config", "{not json");
    assert_eq!(status, 400);
    assert!(
        answer["fault_message"]
            .as_str()
            .is_some_and(|m| m
                .starts_with("An error occurred when deserializing the json body of a request")),
        "{answer}"
    );
    let log = std::fs::read_to_string(&fake.log).expect("request log");
    assert!(log.contains(r#""body":"{not json""#), "{log}");
}

#[test]
fn vsock_without_agent_closes_connections() {
    let fake = Fake::start(AgentChoice::Missing);
    fake.configure();
    fake.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    let uds = fake.path("v.sock");
    let (_, line) = vsock_connect(&uds, 10789);
    assert_eq!(line, None, "no agent: the agent port is closed without OK");
    let (_, line) = vsock_connect(&uds, 52);
    assert_eq!(line, None, "other ports are closed without OK");
    let mut bad = UnixStream::connect(&uds).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    bad.write_all(b"HELLO\n").expect("write");
    assert_eq!(read_line(&mut bad), None, "malformed handshake closes");
}

/// The agent built next to this binary by `cargo build`, if any.
fn built_agent() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("BANGER_AGENT_BIN") {
        return Some(PathBuf::from(bin));
    }
    let beside = Path::new(BIN).parent()?.join("banger-agent");
    beside.is_file().then_some(beside)
}

#[test]
fn vsock_forwards_the_agent_port_to_a_real_agent() {
    let Some(agent) = built_agent() else {
        #[allow(clippy::print_stderr, reason = "a skipped test says why")]
        {
            eprintln!("skipped: banger-agent not built");
        }
        return;
    };
    let mut fake = Fake::start(AgentChoice::At(agent));
    fake.configure();
    fake.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    let uds = fake.path("v.sock");

    // The agent needs a moment to listen, as a guest's does to boot.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut stream, ok) = loop {
        let (stream, line) = vsock_connect(&uds, 10789);
        if let Some(line) = line {
            break (stream, line);
        }
        assert!(
            Instant::now() < deadline,
            "agent never answered through vsock:\n{}",
            fake.console()
        );
        thread::sleep(Duration::from_millis(100));
    };
    let port: u32 = ok
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad ack {ok:?}"));
    assert!(port >= 1 << 30, "{ok}");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .expect("send healthz");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let (_, line) = vsock_connect(&uds, 52);
    assert_eq!(line, None, "only the agent port is forwarded");

    // Ctrl-Alt-Del ends the fake and its agent.
    let agent_socket = fake.path("v.sock.agent.sock");
    fake.ok("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(fake.wait_exit(Duration::from_secs(5)).code(), Some(0));
    assert!(!agent_socket.exists(), "agent socket removed");
}

/// A stand-in agent that records its pid and waits.
fn sleeper_agent(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("banger-agent");
    let pid_file = dir.join("agent.pid");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
            pid_file.display()
        ),
    )
    .expect("write agent script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (script, pid_file)
}

fn wait_pid(pid_file: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "agent never started");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Gone, or a zombie nobody reaped yet.
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn wait_dead(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_dead(pid) {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

fn booted_with_sleeper() -> (Fake, TempDir, i32) {
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let (script, pid_file) = sleeper_agent(agent_dir.path());
    let fake = Fake::start(AgentChoice::At(script));
    fake.configure();
    fake.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    let pid = wait_pid(&pid_file);
    (fake, agent_dir, pid)
}

#[test]
fn sigterm_cleans_up_and_dies_by_the_signal() {
    let (mut fake, _agent_dir, agent_pid) = booted_with_sleeper();
    let pid = i32::try_from(fake.child.id()).expect("pid");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = fake.wait_exit(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert!(wait_dead(agent_pid), "agent stopped with the fake");
    assert!(!fake.api.exists(), "API socket removed");
    assert!(!fake.path("v.sock").exists(), "vsock socket removed");
}

#[test]
fn sigkill_of_the_fake_takes_the_agent_down() {
    let (mut fake, _agent_dir, agent_pid) = booted_with_sleeper();
    fake.child.kill().expect("SIGKILL");
    let _ = fake.child.wait();
    assert!(
        wait_dead(agent_pid),
        "agent must not outlive a SIGKILLed fake"
    );
}

#[test]
fn snapshot_create_then_load_in_a_fresh_process() {
    let fake = Fake::start(AgentChoice::Missing);
    fake.configure();
    fake.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    let snap = fake.path("vm.snap").display().to_string();
    let mem = fake.path("vm.mem").display().to_string();
    let m = fake.refused(
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": snap, "mem_file_path": mem})),
    );
    assert!(m.contains("paused"), "{m}");
    fake.ok("PATCH", "/vm", json!({"state": "Paused"}));
    fake.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_path": snap, "mem_file_path": mem}),
    );
    assert_eq!(
        std::fs::metadata(&mem).expect("mem file").len(),
        256 * 1024 * 1024
    );

    let fresh = Fake::start(AgentChoice::Missing);
    let restored_uds = fresh.path("restored.sock").display().to_string();
    fresh.ok(
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": snap,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "vsock_override": {"uds_path": restored_uds},
            "resume_vm": true
        }),
    );
    assert_eq!(fresh.request("GET", "/", None).1["state"], "Running");
    let (_, config) = fresh.request("GET", "/vm/config", None);
    assert_eq!(config["machine-config"]["mem_size_mib"], 256);
    assert_eq!(config["vsock"]["uds_path"], restored_uds.as_str());
    assert!(
        Path::new(&restored_uds).exists(),
        "vsock bound at the override path"
    );
}

#[test]
fn command_line_is_validated_like_firecracker() {
    let out = Command::new(BIN).arg("--bogus-flag").output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(153),
        "Firecracker's argument-parsing exit code"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus-flag"));

    let dir = tempfile::tempdir().expect("tempdir");
    let taken = dir.path().join("api.sock");
    std::fs::write(&taken, "").expect("occupy path");
    let out = Command::new(BIN)
        .arg("--api-sock")
        .arg(&taken)
        .args(["--id", "x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Failed to open the API socket at:"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .arg("--api-sock")
        .arg(dir.path().join("other.sock"))
        .args(["--id", "bad_id"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid instance ID"));

    let out = Command::new(BIN)
        .arg("--api-sock")
        .arg(dir.path().join("other.sock"))
        .args(["--level", "Loud"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(152));

    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Firecracker v1.17.0-dev"));
}
