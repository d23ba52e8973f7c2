//! Shared helpers: a private banger home, running the real binaries.
//!
//! The binaries run with a cleared environment (jj's rule, [`cleared_env`]): only `PATH`,
//! `HOME` (a private one, so the developer's git identity and agent logins never reach a
//! test VM) and `BANGER_HOME` reach them, plus what a test sets on purpose ([`Home::set_env`],
//! `Command::env`), so a developer's `BANGER_VMM`, `BANGER_QEMU_BIN`, `BANGER_FIRECRACKER_BIN`
//! or `BANGER_AGENT_BIN` cannot change a test's outcome. The daemon is started by the CLI and
//! inherits the CLI's environment, and so do the VMMs it starts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BANGER: &str = env!("CARGO_BIN_EXE_banger");

/// Clears `c`'s environment down to the test's own `PATH`, `BANGER_HOME` (`home`) and `HOME`:
/// `home/user`, a private user home that does not exist unless a test makes it, so nothing
/// of the developer's home (git identity, agent auth files the daemon copies into guests)
/// reaches a test, and a fresh banger home stays empty.
pub fn cleared_env<'c>(c: &'c mut Command, home: &Path) -> &'c mut Command {
    c.env_clear()
        .env("BANGER_HOME", home)
        .env("HOME", home.join("user"));
    if let Some(value) = std::env::var_os("PATH") {
        c.env("PATH", value);
    }
    c
}

/// A private banger home; stops its daemon when dropped.
pub struct Home {
    pub dir: tempfile::TempDir,
    /// Network namespace the CLI (and so its daemon) runs in.
    pub netns: Option<String>,
    /// Variables this home's commands get on purpose, on top of [`cleared_env`].
    env: Vec<(&'static str, OsString)>,
}

impl Home {
    pub fn new() -> Self {
        // Short paths: the socket path must fit in 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("bgr")
            .tempdir_in("/tmp")
            .unwrap();
        Self {
            dir,
            netns: None,
            // A free loopback port for the web UI: a test daemon never takes 7777 from the
            // developer's own daemon or another test. Web tests that set `web_listen` in
            // the config drop it ([`Self::unset_env`]).
            env: vec![("BANGER_WEB_LISTEN", "127.0.0.1:0".into())],
        }
    }

    /// Drops `key` from what [`Self::set_env`] gave this home's commands.
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| *k != key);
    }

    /// Gives every command of this home (and so its daemon) `key=value`.
    pub fn set_env(&mut self, key: &'static str, value: impl Into<OsString>) {
        self.env.push((key, value.into()));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BANGER]);
                c
            }
            None => Command::new(BANGER),
        };
        c.args(args);
        cleared_env(&mut c, self.path());
        for (key, value) in &self.env {
            c.env(key, value);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "banger {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("run/bangerd.sock")
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["daemon", "status", "--json"])).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if self.netns.is_some() {
            // Delete every VM so no VMM outlives the test, then stop the daemon.
            if let Ok(out) = self.cmd(&["vm", "ls", "-aq"]).output() {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["vm", "delete"];
                    args.extend(ids.iter().map(String::as_str));
                    let _ = self.cmd(&args).output();
                }
            }
        }
        let _ = self.cmd(&["daemon", "stop"]).output();
        for pid in pids_mentioning(&self.path().display().to_string()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Processes whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| pid_alive(u64::from(*pid)))
        .collect()
}

/// A host program the way banger finds one: on `PATH`, then in the system directories
/// (`mkfs.ext4` is in `/usr/sbin`, which a non-root user's `PATH` may lack).
pub fn host_tool(name: &str) -> Command {
    let path = std::env::var_os("PATH");
    let found = banger_core::probe::SearchPath::programs(path.as_deref())
        .find(name)
        .unwrap_or_else(|| panic!("{name} is not installed"));
    Command::new(found)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The directory holding the workspace's binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    Path::new(BANGER).parent().unwrap().to_path_buf()
}

/// `config` with `warm_start = false` unless it sets `warm_start` itself: a test makes
/// warm-start templates only when it opts in, never in the background of another test.
/// Put first, so that it stays a top-level key when `config` ends in a `[table]`.
pub fn test_config(config: &str) -> String {
    if config.contains("warm_start") {
        config.to_string()
    } else {
        format!("warm_start = false\n{config}")
    }
}

static NETNS_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Home {
    /// A home whose CLI and daemon run in a private network namespace, with Firecracker
    /// replaced by the fake and a small registered image `test-img`. `None` (after printing
    /// why) when the test cannot run here.
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    pub fn for_vms(config: &str) -> Option<Self> {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, bridges and TAP devices)");
            return None;
        }
        let fake = bin_dir().join("banger-fake-firecracker");
        if !fake.exists() || !bin_dir().join("banger-agent").exists() {
            panic!(
                "build the workspace first: cargo build --workspace (missing {})",
                fake.display()
            );
        }
        let home = Self::in_netns("");
        std::fs::write(home.path().join("config/config.toml"), {
            // Top-level keys first: `config` may end in a `[table]`.
            let mut text = format!("firecracker_bin = \"{}\"\n", fake.display());
            for (key, default) in [("stop_grace_secs", "3"), ("agent_wait_secs", "15")] {
                if !config.contains(key) {
                    text.push_str(&format!("{key} = {default}\n"));
                }
            }
            text + &test_config(config)
        })
        .unwrap();
        home.make_image("test-img");
        Some(home)
    }

    /// A home whose CLI and daemon run in a fresh network namespace, with `config`.
    pub fn in_netns(config: &str) -> Self {
        let mut home = Self::new();
        let ns = format!(
            "bgt{}-{}",
            std::process::id(),
            NETNS_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {ns}");
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
            .status();
        home.netns = Some(ns);
        std::fs::create_dir_all(home.path().join("config")).unwrap();
        std::fs::write(home.path().join("config/config.toml"), test_config(config)).unwrap();
        home
    }

    /// Builds a small ext4 rootfs and a stand-in kernel, and registers them as `name`.
    pub fn make_image(&self, name: &str) {
        let src = self.path().join("img-src");
        std::fs::create_dir_all(src.join("root")).unwrap();
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("root/.bashrc"), "# test\n").unwrap();
        std::fs::write(src.join("etc/fstab"), "proc /proc proc defaults 0 0\n").unwrap();
        let rootfs = self.path().join("rootfs.ext4");
        let st = host_tool("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&rootfs)
            .arg("64M")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let kernel = self.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF fake kernel").unwrap();
        self.ok(&[
            "image",
            "register",
            "--name",
            name,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
        ]);
    }

    /// `banger vm list --all --json` as values.
    pub fn vms(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<Vec<serde_json::Value>>(&self.ok(&["vm", "list", "--all", "--json"]))
            .unwrap()
    }

    pub fn vm(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["vm", "show", name, "--json"])).unwrap()
    }

    /// Runs a command inside this home's network namespace.
    pub fn in_ns(&self, args: &[&str]) -> Output {
        let ns = self.netns.as_deref().unwrap();
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap()
    }

    /// banger's TAP devices in this home's namespace (`bgr*`) other than the daemon's idle
    /// pool (`bgrp<N>` that no VM names): the pool is capacity, not a leak.
    pub fn vm_taps(&self) -> Vec<String> {
        let held: Vec<String> = self
            .vms()
            .iter()
            .filter_map(|v| v["tap"].as_str().map(str::to_string))
            .collect();
        let out = self.in_ns(&["ip", "-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .filter(|n| n.starts_with("bgr"))
            .filter(|n| {
                let pool = n
                    .strip_prefix("bgrp")
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
                !pool || held.contains(n)
            })
            .collect()
    }

    pub fn link_exists(&self, name: &str) -> bool {
        self.in_ns(&["ip", "link", "show", name]).status.success()
    }
}

/// Runs `script` with `python3 -c` in network namespace `ns` and waits until it printed its
/// first line, `bound` (a socket it serves is open then). Kill the child when done.
pub fn python_in_ns(ns: &str, script: &str) -> std::process::Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "bound", "the script did not start");
    child
}

/// `kill -9 pid`, then waits (up to 5 s) until it is gone.
pub fn kill9_and_wait(pid: u64) {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pid_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

/// Runs `cmd` with stdout a pipe whose reader is already gone, the way `| head -c 0` leaves it:
/// every write to stdout fails with `EPIPE`.
pub fn with_closed_stdout(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

/// Runs `cmd`, reads one byte of its stdout and closes the pipe (`| head -c 1`).
pub fn reading_one_byte(cmd: &mut Command) -> Output {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut byte = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut byte).unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts `out` is a quiet success: status 0 and nothing on stderr.
#[track_caller]
pub fn assert_quiet_success(what: &str, out: &Output) {
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{what}: {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
