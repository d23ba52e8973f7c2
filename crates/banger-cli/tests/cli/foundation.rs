//! The foundation: version, doctor, daemon start/reuse/replace/stop, errors, completion.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

use crate::common::*;

#[test]
fn version_is_shared_by_all_binaries() {
    let home = Home::new();
    let out = home.ok(&["version"]);
    assert!(out.starts_with("banger 0."), "{out}");
    let v: serde_json::Value = serde_json::from_str(&home.ok(&["version", "--json"])).unwrap();
    let version = v["version"].as_str().unwrap();
    let commit = v["commit"].as_str().unwrap();
    let time = v["build_time"].as_str().unwrap();
    assert!(out.contains(version) && out.contains(commit) && out.contains(time));
    let bin_dir = Path::new(BANGER).parent().unwrap();
    let d = cleared_env(&mut Command::new(bin_dir.join("bangerd")), home.path())
        .arg("--version")
        .output()
        .unwrap();
    let d = String::from_utf8(d.stdout).unwrap();
    assert!(
        d.contains(version) && d.contains(commit) && d.contains(time),
        "bangerd: {d}"
    );
    let agent = bin_dir.join("banger-agent");
    if agent.exists() {
        let a = cleared_env(&mut Command::new(agent), home.path())
            .arg("version")
            .output()
            .unwrap();
        let a = String::from_utf8(a.stdout).unwrap();
        assert!(
            a.contains(version) && a.contains(commit) && a.contains(time),
            "agent: {a}"
        );
    }
}

#[test]
fn doctor_on_fresh_home_writes_nothing() {
    let home = Home::new();
    let out = home.run(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.is_empty());
    for line in stdout.lines() {
        assert!(
            ["PASS ", "WARN ", "FAIL "]
                .iter()
                .any(|p| line.starts_with(p)),
            "doctor line without a status: {line:?}"
        );
    }
    assert!(stdout.contains("store"), "{stdout}");
    assert!(stdout.contains("no database yet"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "colour on a non-TTY");
    // Nothing created: no database, no state dir at all.
    assert_eq!(
        std::fs::read_dir(home.path()).unwrap().count(),
        0,
        "doctor wrote into BANGER_HOME"
    );
    // Exit status follows the checks: 1 iff there is a FAIL line, and then it says why.
    let failed = stdout.lines().any(|l| l.starts_with("FAIL"));
    assert_eq!(out.status.success(), !failed);
    if failed {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("banger: doctor found"), "{stderr}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&home.run(&["doctor", "--json"]).stdout).unwrap();
    assert!(json.as_array().unwrap().len() >= 6);
}

#[test]
fn daemon_starts_on_demand_once_and_stops() {
    let home = Home::new();
    let st = home.status();
    let pid = st["pid"].as_u64().unwrap();
    assert!(pid_alive(pid));
    let mode = std::fs::metadata(home.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    assert_eq!(
        st["socket"].as_str().unwrap(),
        home.socket().to_str().unwrap()
    );
    // A second call reuses the same daemon.
    assert_eq!(home.status()["pid"].as_u64().unwrap(), pid);
    let text = home.ok(&["daemon", "status"]);
    assert!(text.contains(&format!("pid        {pid}")), "{text}");
    assert!(text.contains("log file"), "{text}");
    // The daemon has no listener besides its socket: neither its answer nor the text
    // promises one.
    assert!(st.get("listeners").is_none(), "{st}");
    assert!(!text.contains("listeners"), "{text}");
    // The daemon logs JSON lines with op ids.
    let log = std::fs::read_to_string(home.path().join("state/bangerd.log")).unwrap();
    let listening: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "bangerd listening")
        .unwrap();
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["pid"].as_u64().unwrap(), pid);
    // Doctor now sees it and the store, and still writes nothing new.
    let doc = home.run(&["doctor"]);
    let doc = String::from_utf8_lossy(&doc.stdout);
    assert!(
        doc.lines()
            .any(|l| l.starts_with("PASS") && l.contains("daemon")),
        "{doc}"
    );
    assert!(
        doc.lines()
            .any(|l| l.starts_with("PASS") && l.contains("store")),
        "{doc}"
    );
    assert_eq!(
        home.ok(&["daemon", "stop"]),
        format!("stopped bangerd (pid {pid})\n")
    );
    assert!(!pid_alive(pid));
    assert!(!home.socket().exists());
    assert_eq!(home.ok(&["daemon", "stop"]), "bangerd is not running\n");
}

#[test]
fn concurrent_first_calls_share_one_daemon() {
    let home = Home::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            home.cmd(&["daemon", "status", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<u64> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["pid"].as_u64().unwrap()
        })
        .collect();
    assert!(pids.windows(2).all(|w| w[0] == w[1]), "pids {pids:?}");
}

#[test]
fn killed_daemon_is_replaced_on_next_call() {
    let home = Home::new();
    let pid = home.status()["pid"].as_u64().unwrap();
    kill9_and_wait(pid);
    assert!(
        home.socket().exists(),
        "a killed daemon leaves its socket file"
    );
    let new_pid = home.status()["pid"].as_u64().unwrap();
    assert_ne!(new_pid, pid);
}

/// Serves a minimal "old build" daemon on the socket: answers status with another build and
/// exits on shutdown. Returns the paths it was asked for.
fn fake_old_daemon(socket: &Path, pid: u32) -> std::thread::JoinHandle<Vec<String>> {
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(socket).unwrap();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap().to_string();
            seen.push(path.clone());
            let reply = if path == "/v1/status" {
                serde_json::json!({
                    "build": {"version": "0.0.1", "commit": "oldbuild", "build_epoch": 1},
                    "pid": pid, "socket": socket, "state_dir": "/x", "config_file": "/x",
                    "log_file": "/x", "started_at": 1, "listeners": [],
                    "ops": {"in_flight": 0, "completed": 0, "cancelled": 0}
                })
            } else {
                serde_json::json!({"pid": pid})
            };
            let body = reply.to_string();
            write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            if path == "/v1/shutdown" {
                // Like a real daemon: stop listening, then the process goes away.
                std::fs::remove_file(&socket).unwrap();
                unsafe_kill(pid);
                return seen;
            }
        }
        seen
    })
}

fn unsafe_kill(pid: u32) {
    Command::new("kill").arg(pid.to_string()).status().unwrap();
}

#[test]
fn daemon_of_another_build_is_replaced() {
    let home = Home::new();
    // The "old daemon" process whose pid the fake reports.
    let mut old = Command::new("sleep").arg("60").spawn().unwrap();
    let fake = fake_old_daemon(&home.socket(), old.id());
    let out = home.run(&["daemon", "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = fake.join().unwrap();
    assert_eq!(seen, vec!["/v1/status", "/v1/shutdown"]);
    assert!(old.try_wait().unwrap().is_some() || old.wait().is_ok());
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(st["build"]["commit"], "oldbuild");
    assert_ne!(st["pid"].as_u64().unwrap(), u64::from(old.id()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replaced daemon 0.0.1 (commit oldbuild"),
        "{stderr}"
    );
}

#[test]
fn vm_exec_lookup_and_upgrade_go_early_and_again_on_the_replacement() {
    let home = Home::new();
    let mut old = Command::new("sleep").arg("60").spawn().unwrap();
    let fake = fake_old_daemon(&home.socket(), old.id());
    let out = home
        .cmd(&["vm", "exec", "box", "-T", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let seen = fake.join().unwrap();
    // The old daemon got the VM lookup and the exec upgrade alongside the status, and was
    // still stopped: the early connections were closed before the shutdown, and nothing else
    // was asked of it.
    assert_eq!(seen.len(), 4, "{seen:?}");
    for early in ["/v1/status", "/v1/vms/box", "/v1/vms/box/exec"] {
        assert!(seen[..3].contains(&early.to_string()), "{seen:?}");
    }
    assert_eq!(seen[3], "/v1/shutdown");
    assert!(old.try_wait().unwrap().is_some() || old.wait().is_ok());
    // The exec was made again, on the new daemon, which has no VM of that name.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("replaced daemon 0.0.1 (commit oldbuild"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no VM matches \"box\""), "{stderr}");
}

#[test]
fn errors_print_banger_prefix_and_exit_1() {
    // A relative BANGER_HOME is refused before anything is created.
    let scratch = Home::new();
    let out = cleared_env(&mut Command::new(BANGER), scratch.path())
        .args(["daemon", "status"])
        .env("BANGER_HOME", "relative/home")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("banger: BANGER_HOME must be an absolute path"),
        "{stderr}"
    );
    assert!(!Path::new("relative").exists());

    // A daemon that cannot start (bad config) is reported with its own words.
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        "log_level = \"loud\"\n",
    )
    .unwrap();
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("banger: the daemon exited during start-up"),
        "{stderr}"
    );
    assert!(
        stderr.contains("log_level") && stderr.contains("loud"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "colour on a non-TTY: {stderr:?}");

    // Usage errors come from clap with exit status 2.
    let out = home.run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_file_sync_entry_outside_the_home_stops_the_daemon_naming_it() {
    for (entry, needle) in [
        (
            "host = \"/etc/passwd\"\nguest = \"/root/passwd\"",
            "is outside the owner's home",
        ),
        (
            "host = \"~/.npmrc\"\nguest = \"/etc/npmrc\"",
            "must be under /root/",
        ),
    ] {
        let mut home = Home::new();
        let user_home = home.path().join("user");
        std::fs::create_dir_all(&user_home).unwrap();
        home.set_env("HOME", &user_home);
        std::fs::create_dir_all(home.path().join("config")).unwrap();
        std::fs::write(
            home.path().join("config/config.toml"),
            format!("[[file_sync]]\n{entry}\n"),
        )
        .unwrap();
        let out = home.run(&["daemon", "status"]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("banger: "), "{stderr}");
        assert!(
            stderr.contains("file_sync entry") && stderr.contains(needle),
            "{stderr}"
        );
    }
}

#[test]
fn unknown_config_keys_warn() {
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        "log_levle = \"debug\"\n",
    )
    .unwrap();
    let out = home.run(&["daemon", "status"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key 'log_levle'"), "{stderr}");
    let doc = String::from_utf8_lossy(&home.run(&["doctor"]).stdout).to_string();
    assert!(
        doc.lines()
            .any(|l| l.starts_with("WARN") && l.contains("log_levle")),
        "{doc}"
    );
}

#[test]
fn completion_scripts() {
    let home = Home::new();
    for (shell, marker) in [
        ("bash", "_banger()"),
        ("zsh", "#compdef banger"),
        ("fish", "complete -c banger"),
    ] {
        let out = home.ok(&["completion", shell]);
        assert!(
            out.contains(marker),
            "{shell}: {}",
            &out[..out.len().min(200)]
        );
        assert!(out.contains("daemon"), "{shell}");
    }
    let out = home.run(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A reader that leaves early (`banger ... | head -1`) is not an error: every command stops
/// with status 0 and says nothing on stderr, whether the pipe was closed before the first byte
/// or after one.
#[test]
fn closed_stdout_exits_quietly_with_status_0() {
    let home = Home::new();
    home.status(); // the daemon is up, so no command below has anything to say on stderr
    // The bash script (about 80 KB) outgrows the pipe, so the one-byte reader closes it while
    // banger is still writing; help is small and may be written whole before the reader goes.
    let big: &[&[&str]] = &[
        &["completion", "bash"],
        &["--help"],
        &["vm", "create", "--help"],
    ];
    for args in big {
        let out = with_closed_stdout(&mut home.cmd(args));
        assert_quiet_success(&format!("{args:?} | head -c 0"), &out);
        let out = reading_one_byte(&mut home.cmd(args));
        assert_quiet_success(&format!("{args:?} | head -c 1"), &out);
    }
    let small: &[&[&str]] = &[
        &["completion", "zsh"],
        &["version"],
        &["version", "--json"],
        &["daemon", "status"],
        &["daemon", "status", "--json"],
        &["vm", "list"],
        &["vm", "list", "--json"],
        &["image", "list"],
        &["kernel", "list", "--json"],
        &["doctor", "--json"],
    ];
    for args in small {
        assert_quiet_success(
            &format!("{args:?} | head -c 0"),
            &with_closed_stdout(&mut home.cmd(args)),
        );
    }
    assert_quiet_success(
        "vm list --json | head -c 1",
        &reading_one_byte(&mut home.cmd(&["vm", "list", "--json"])),
    );
    // An error is still an error when stdout is closed: it goes to stderr with status 1.
    let out = with_closed_stdout(&mut home.cmd(&["vm", "show", "nope"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("banger: "));
}

#[test]
fn bootstrap_without_a_kernel_names_the_command_that_imports_one() {
    let home = Home::new();
    let out = home.run(&["image", "bootstrap", "debian-bookworm"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("banger kernel import host --from /"),
        "{stderr}"
    );
    let images: Vec<serde_json::Value> =
        serde_json::from_slice(&home.run(&["image", "list", "--json"]).stdout).unwrap();
    assert!(images.is_empty());
}

#[test]
fn make_bundle_prints_path_sha_and_size_and_leaves_nothing_on_failure() {
    let Some(agent) = std::env::var_os("BANGER_AGENT_BIN").map(std::path::PathBuf::from) else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipped: BANGER_AGENT_BIN (a static banger-agent) is not set");
        }
        return;
    };
    let home = Home::new();
    let dir = home.path().join("mb");
    std::fs::create_dir_all(dir.join("tree/etc")).unwrap();
    std::fs::write(dir.join("tree/etc/os-release"), "ID=test\n").unwrap();
    std::fs::write(dir.join("tree/.dockerenv"), "").unwrap();
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.join("tree"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let out_dir = dir.join("out");
    let args = |tar: &str| {
        vec![
            "internal".to_string(),
            "make-bundle".into(),
            "--rootfs-tar".into(),
            tar.to_string(),
            "--name".into(),
            "tiny".into(),
            "--distro".into(),
            "test".into(),
            "--arch".into(),
            "x86_64".into(),
            "--kernel-ref".into(),
            "host".into(),
            "--size".into(),
            "64M".into(),
            "--out".into(),
            out_dir.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        home.cmd(&refs)
            .env("BANGER_AGENT_BIN", &agent)
            .output()
            .unwrap()
    };
    // A missing tar fails and leaves no bundle behind.
    let bad = run(args("/nonexistent/rootfs.tar"));
    assert_eq!(bad.status.code(), Some(1));
    let bad_err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        bad_err
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("banger: make-bundle failed"),
        "{bad_err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "partial output: {leftovers:?}");

    let ok = run(args(tar.to_str().unwrap()));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8(ok.stdout).unwrap();
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{k} missing: {stdout}"))
    };
    let path = field("path");
    assert!(path.ends_with("tiny.tar.zst"), "{path}");
    assert!(Path::new(&path).is_file());
    assert_eq!(field("sha256").len(), 64);
    let listing = Command::new("tar").arg("-tf").arg(&path).output().unwrap();
    let members = String::from_utf8_lossy(&listing.stdout).to_string();
    let mut members: Vec<&str> = members.lines().collect();
    members.sort();
    assert_eq!(members, ["manifest.json", "rootfs.ext4"]);
}

#[test]
fn kernels_import_list_show_and_rm_guarded_by_images() {
    let home = Home::new();
    // A directory of loose files, as an unpacked kernel package would be.
    let tree = home.path().join("kpkg");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::create_dir_all(tree.join("lib/modules/6.9.1-test/kernel")).unwrap();
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    std::fs::write(tree.join("boot/vmlinux-6.9.1-test"), &elf).unwrap();
    std::fs::write(tree.join("boot/initrd.img-6.9.1-test"), b"initrd").unwrap();
    std::fs::write(tree.join("lib/modules/6.9.1-test/modules.dep"), b"").unwrap();

    let out = home.ok(&["kernel", "import", "k1", "--from", tree.to_str().unwrap()]);
    assert_eq!(out, "imported kernel k1 (6.9.1-test)\n");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&home.ok(&["kernel", "list", "--json"])).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["version"], "6.9.1-test");
    let show: serde_json::Value =
        serde_json::from_str(&home.ok(&["kernel", "show", "k1", "--json"])).unwrap();
    assert!(Path::new(show["vmlinux"].as_str().unwrap()).is_file());
    assert!(Path::new(show["initrd"].as_str().unwrap()).is_file());
    // A second import under the same name needs --force.
    let again = home.run(&["kernel", "import", "k1", "--from", tree.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    home.ok(&[
        "kernel",
        "import",
        "k1",
        "--from",
        tree.to_str().unwrap(),
        "--force",
    ]);

    // An image booting it keeps it from being removed.
    // A real (empty) ext4: image register checks it with e2fsck.
    let rootfs = home.path().join("rootfs.ext4");
    let empty = home.path().join("empty-tree");
    std::fs::create_dir_all(&empty).unwrap();
    let st = crate::common::host_tool("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&empty)
        .arg(&rootfs)
        .arg("8M")
        .status()
        .unwrap();
    assert!(st.success());
    home.ok(&[
        "image",
        "register",
        "--name",
        "img",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--kernel-ref",
        "k1",
    ]);
    let rm = home.run(&["kernel", "rm", "k1"]);
    assert_eq!(rm.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rm.stderr).contains("used by image(s) img"));
    home.ok(&["image", "delete", "img"]);
    assert_eq!(home.ok(&["kernel", "rm", "k1"]), "removed kernel k1\n");
    assert_eq!(home.ok(&["kernel", "list", "--json"]).trim(), "[]");
    assert!(!Path::new(show["dir"].as_str().unwrap()).exists());
    // Bad names are refused before anything happens.
    let bad = home.run(&["kernel", "import", "../x", "--from", tree.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
}
