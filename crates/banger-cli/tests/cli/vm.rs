//! VM lifecycle against the fake Firecracker, in a private network namespace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn create_stop_start_delete() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    let out = home.run(&[
        "vm", "create", "--name", "web", "--image", "test-img", "--cpus", "1", "--memory", "256M",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web\n");
    let err = stderr(&out);
    for stage in [
        "resolve image",
        "prepare disks",
        "start VMM",
        "wait agent",
        "ready in",
    ] {
        assert!(err.contains(stage), "stage {stage:?} missing from:\n{err}");
    }
    let vm = home.vm("web");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["cpus"], 1);
    assert_eq!(vm["memory_mib"], 256);
    assert_eq!(vm["image"], "test-img");
    assert_eq!(vm["vmm"], "firecracker");
    let pid = vm["pid"].as_u64().unwrap();
    assert!(pid_alive(pid));
    let tap = vm["tap"].as_str().unwrap().to_string();
    assert!(home.link_exists(&tap), "TAP {tap} missing");
    let ip = vm["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with("172.30.0."), "{ip}");
    let dir = vm["dir"].as_str().unwrap().to_string();
    assert!(Path::new(&dir).join("root.ext4").exists());
    assert!(Path::new(&dir).join("work.ext4").exists());

    // The list shows it, in every spelling, with the JSON fields scripts rely on.
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&home.ok(&["vm", "ls", "--json"])).unwrap();
    assert_eq!(list.len(), 1);
    for key in [
        "id",
        "name",
        "state",
        "image",
        "ip",
        "cpus",
        "memory_mib",
        "vmm",
        "pid",
    ] {
        assert!(list[0].get(key).is_some(), "{key} missing");
    }
    let table = home.ok(&["ps"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("web") && table.contains("test-img") && table.contains("running"));
    assert_eq!(
        home.ok(&["vm", "ps", "-q"]).trim(),
        &vm["id"].as_str().unwrap()[..12]
    );

    // The agent answers through the fake's hybrid vsock.
    let health = home.ok(&["vm", "health", "web", "--json"]);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert!(health["version"].is_string());
    assert!(
        home.ok(&["vm", "ping", "web"])
            .starts_with("pong from web in ")
    );
    let stats: serde_json::Value =
        serde_json::from_str(&home.ok(&["vm", "stats", "web", "--json"])).unwrap();
    assert_eq!(stats["pid"].as_u64().unwrap(), pid);
    let logs = home.ok(&["vm", "logs", "web"]);
    assert!(!logs.is_empty(), "console log is empty");
    for args in [
        &["vm", "logs", "web"][..],
        &["vm", "logs", "-f", "web"],
        &["ps"],
    ] {
        let out = with_closed_stdout(&mut home.cmd(args));
        assert_quiet_success(&format!("{args:?} | head -c 0"), &out);
    }

    let out = home.ok(&["vm", "stop", "web"]);
    assert!(out.starts_with("stopped web"), "{out}");
    assert_eq!(home.vm("web")["state"], "stopped");
    assert!(!pid_alive(pid));
    assert!(!home.link_exists(&tap), "TAP left after stop");
    assert_eq!(
        home.ok(&["vm", "ls", "-q"]),
        "",
        "stopped VMs are hidden without --all"
    );
    assert_eq!(home.vms().len(), 1);

    assert_eq!(home.ok(&["vm", "start", "web"]), "started web\n");
    let vm2 = home.vm("web");
    assert_eq!(vm2["state"], "running");
    assert_eq!(vm2["ip"], ip.as_str(), "the IP lease survives stop/start");
    let pid2 = vm2["pid"].as_u64().unwrap();
    assert_ne!(pid2, pid);

    assert_eq!(home.ok(&["vm", "delete", "web"]), "deleted web\n");
    assert!(home.vms().is_empty());
    assert!(!pid_alive(pid2), "VMM left after delete");
    assert!(!home.link_exists(&tap), "TAP left after delete");
    assert!(!Path::new(&dir).exists(), "disks left after delete");
    assert!(pids_mentioning(&dir).is_empty());
    // The IP is free again: the next VM gets it.
    home.ok(&["vm", "create", "--name", "next", "--image", "test-img"]);
    assert_eq!(home.vm("next")["ip"], ip.as_str());
}

#[test]
fn multi_ref_actions_proceed_past_missing_refs() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "a1", "--image", "test-img"]);
    home.ok(&["vm", "create", "--name", "w2", "--image", "test-img"]);
    let out = home.run(&["vm", "stop", "a1", "nope", "w2", "a1"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout, "stopped a1\nstopped w2\n",
        "first-seen order, deduplicated"
    );
    let err = stderr(&out);
    assert!(
        err.contains("banger: nope: not found: no VM matches \"nope\""),
        "{err}"
    );
    assert!(err.contains("1 of 3 failed"), "{err}");
    assert!(home.vms().iter().all(|v| v["state"] == "stopped"));
    // `set` grows a stopped VM's disks and records new resources.
    assert_eq!(
        home.ok(&["vm", "set", "a1", "--work-disk", "9G", "--cpus", "3"]),
        "updated a1\n"
    );
    let a1 = home.vm("a1");
    assert_eq!(
        (a1["work_disk_bytes"].as_u64(), a1["cpus"].as_u64()),
        (Some(9 << 30), Some(3))
    );
    let work = Path::new(a1["dir"].as_str().unwrap()).join("work.ext4");
    assert_eq!(std::fs::metadata(&work).unwrap().len(), 9 << 30);
    let out = home.run(&["vm", "set", "a1", "--work-disk", "1G"]);
    assert_eq!(out.status.code(), Some(1), "shrinking must be refused");
    assert!(stderr(&out).contains("cannot shrink"), "{}", stderr(&out));
    // A unique prefix resolves (`w` cannot also prefix an id: ids are hex).
    let out = home.run(&["vm", "start", "a1", "w"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // While running, disks cannot be resized; CPUs apply at the next start.
    let out = home.run(&["vm", "set", "a1", "--disk", "2G"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("stop it before resizing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        home.ok(&["vm", "set", "a1", "--cpus", "2"]),
        "updated a1 (takes effect at the next start)\n"
    );
    let out = home.run(&["vm", "delete", "a1", "w2"]);
    assert!(out.status.success());
}

#[test]
fn names_are_unique_and_validated_in_cli_and_daemon() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
    let out = home.run(&["vm", "create", "--name", "web", "--image", "test-img"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.lines()
            .last()
            .unwrap_or_default()
            .starts_with("banger: already exists: a VM named \"web\" already exists"),
        "{err}"
    );
    // A name that prefixes (or extends) another is fine.
    home.ok(&["vm", "create", "--name", "we", "--image", "test-img"]);
    home.ok(&["vm", "create", "--name", "web-2", "--image", "test-img"]);
    assert_eq!(home.vms().len(), 3);
    // "we" is an exact name, so it resolves even though it prefixes the others.
    assert_eq!(home.vm("we")["name"], "we");

    for bad in [
        vec!["--name", "Web"],
        vec!["--name=-web"],
        vec!["--name", "web_1"],
        vec!["--name", &"a".repeat(64)],
        vec!["--cpus", "0"],
        vec!["--cpus", "-1"],
        vec!["--memory", "0"],
        vec!["--memory", "-512"],
        vec!["--work-disk", "0"],
    ] {
        let mut args = vec!["vm", "create", "--image", "test-img"];
        args.extend(bad.iter().copied());
        let out = home.run(&args);
        assert_eq!(out.status.code(), Some(1), "{bad:?} was accepted");
        assert!(
            stderr(&out).starts_with("banger: "),
            "{bad:?} must fail in the CLI: {}",
            stderr(&out)
        );
    }
    // The daemon checks again, for clients other than this CLI.
    for body in [
        r#"{"name":"Bad Name","image":"test-img"}"#,
        r#"{"image":"test-img","cpus":0}"#,
        r#"{"image":"test-img","memory_mib":-5}"#,
    ] {
        let reply = raw_post(&home.socket(), "/v1/vms", body);
        assert!(
            reply.contains("\"event\":\"error\"") && reply.contains("bad_request"),
            "{body}: {reply}"
        );
    }
    assert_eq!(
        home.vms().len(),
        3,
        "no row was created by a refused request"
    );
    let out = home.run(&["vm", "set", "web", "--cpus", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let reply = raw_post(
        &home.socket(),
        "/v1/vms/actions",
        r#"{"action":{"set":{"settings":{"memory_mib":0}}},"refs":["web"]}"#,
    );
    assert!(reply.contains("bad_request"), "{reply}");
    assert_eq!(home.vm("web")["memory_mib"], 2048);
}

/// One raw HTTP POST on the daemon socket; returns the whole answer.
fn raw_post(socket: &Path, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn killed_vmm_marks_the_vm_stopped() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "victim", "--image", "test-img"]);
    let vm = home.vm("victim");
    let pid = vm["pid"].as_u64().unwrap();
    let tap = vm["tap"].as_str().unwrap().to_string();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    wait_until("VM marked stopped", 5, || {
        home.vm("victim")["state"] == "stopped"
    });
    assert!(!home.link_exists(&tap), "TAP not released");
    // vm kill with a signal works too, and resources are released.
    home.ok(&["vm", "start", "victim"]);
    let pid = home.vm("victim")["pid"].as_u64().unwrap();
    assert_eq!(
        home.ok(&["vm", "kill", "--signal", "TERM", "victim"]),
        "killed victim\n"
    );
    assert!(!pid_alive(pid));
    assert_eq!(home.vm("victim")["state"], "stopped");
    let out = home.run(&["vm", "kill", "victim"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "killing a stopped VM is an error"
    );
}

#[test]
fn daemon_restart_finds_running_vms_again() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "keeper", "--image", "test-img"]);
    let pid = home.vm("keeper")["pid"].as_u64().unwrap();
    let dpid = home.status()["pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-9", &dpid.to_string()])
        .status()
        .unwrap();
    wait_until("daemon gone", 5, || !pid_alive(dpid));
    assert!(pid_alive(pid), "the VMM must outlive the daemon");
    let vm = home.vm("keeper");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["pid"].as_u64().unwrap(), pid);
    assert!(home.ok(&["vm", "ping", "keeper"]).starts_with("pong"));
    // And a graceful daemon stop leaves VMs running too.
    home.ok(&["daemon", "stop"]);
    assert!(pid_alive(pid));
    assert_eq!(home.vm("keeper")["state"], "running");
}

#[test]
fn interrupted_create_leaves_nothing() {
    // No agent: creation waits at "wait agent" until we interrupt it.
    let Some(home) = Home::for_vms("agent_wait_secs = 60\n") else {
        return;
    };
    // The daemon this create starts inherits BANGER_AGENT_BIN, and so does the fake.
    home.ok(&["daemon", "stop"]);
    let mut child = home
        .cmd(&["vm", "create", "--name", "halfway", "--image", "test-img"])
        .env("BANGER_AGENT_BIN", "/nonexistent/banger-agent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the create's own report that it is waiting for the agent.
    let mut err_lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = Vec::new();
    loop {
        let line = err_lines.next().expect("create ended early").unwrap();
        seen.push(line.clone());
        if line.contains("wait agent") {
            break;
        }
    }
    let vm = home.vms()[0].clone();
    let (pid, tap, dir) = (
        vm["pid"].as_u64().unwrap(),
        vm["tap"].as_str().unwrap().to_string(),
        vm["dir"].as_str().unwrap().to_string(),
    );
    assert!(pid_alive(pid));
    // Ctrl-C.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    wait_until("rollback", 10, || home.vms().is_empty());
    assert!(!pid_alive(pid), "VMM left behind");
    assert!(!home.link_exists(&tap), "TAP left behind");
    assert!(!Path::new(&dir).exists(), "disks left behind");
    let log = std::fs::read_to_string(home.path().join("state/bangerd.log")).unwrap();
    assert!(log.contains("rolling back"), "{log}");
}

#[test]
fn vm_run_without_sshd_keeps_the_vm_and_says_why() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    let out = home.run(&[
        "vm",
        "run",
        "--rm",
        "--name",
        "nossh",
        "--image",
        "test-img",
        "--ssh-timeout",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("banger: VM nossh: sshd did not answer"),
        "{err}"
    );
    for needle in ["likely cause", "banger vm logs nossh", "still running"] {
        assert!(last.contains(needle), "{needle:?} missing: {last}");
    }
    // --rm does not delete a VM whose ssh wait timed out.
    assert_eq!(home.vm("nossh")["state"], "running");
}

#[test]
fn images_register_show_and_refuse_delete_in_use() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    let list = home.ok(&["image", "list"]);
    assert!(
        list.starts_with("NAME") && list.contains("ROOTFS SIZE") && list.contains("64 MiB"),
        "{list}"
    );
    let img: serde_json::Value =
        serde_json::from_str(&home.ok(&["image", "show", "test-img", "--json"])).unwrap();
    let rootfs = img["rootfs"].as_str().unwrap();
    assert!(
        rootfs.starts_with(home.path().join("state/images").to_str().unwrap()),
        "own copy: {rootfs}"
    );
    // --kernel and --kernel-ref are exclusive (in the CLI, and again in the daemon).
    let out = home.run(&[
        "image",
        "register",
        "--name",
        "x",
        "--rootfs",
        "/etc/hostname",
        "--kernel",
        "/etc/hostname",
        "--kernel-ref",
        "k",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let reply = raw_post(
        &home.socket(),
        "/v1/images",
        r#"{"name":"x","rootfs":"/etc/hostname","kernel":"/etc/hostname","kernel_ref":"k"}"#,
    );
    assert!(
        reply.contains("bad_request") && reply.contains("cannot be combined"),
        "{reply}"
    );
    let out = home.run(&[
        "image",
        "register",
        "--name",
        "x",
        "--rootfs",
        "/etc/hostname",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a kernel is required"),
        "{}",
        stderr(&out)
    );

    home.ok(&["vm", "create", "--name", "user", "--image", "test-img"]);
    let out = home.run(&["image", "delete", "test-img"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("used by VM(s) user"),
        "{}",
        stderr(&out)
    );
    home.ok(&["vm", "delete", "user"]);
    home.ok(&["image", "delete", "test-img"]);
    assert!(!Path::new(rootfs).exists());
}

/// `kill -9` of the daemon at every stage of `vm create`: after a restart there is either a
/// running VM the CLI was told about, or nothing at all.
mod adversarial_daemon_killed_during_create {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::wait_until;
    use crate::common::*;

    /// Wrappers that make stages slow enough to be hit: `debugfs` (prepare disks) and
    /// `ip tuntap` (network) wait before running the real tool (as a child, so that the
    /// wrapper's command line names the wrapper until the tool is done), and the VMM waits
    /// before it becomes the fake Firecracker (`exec`, so its pid stays the VMM's).
    fn slow_tools(home: &Home) -> PathBuf {
        let dir = home.path().join("slow");
        std::fs::create_dir_all(&dir).unwrap();
        let script = |name: &str, body: String| {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("debugfs", "sleep 0.3\n/usr/sbin/debugfs \"$@\"\n".into());
        script(
            "ip",
            "case \"$1\" in tuntap) sleep 1 ;; esac\n/usr/sbin/ip \"$@\"\n".into(),
        );
        let fake = bin_dir().join("banger-fake-firecracker");
        script(
            "firecracker",
            format!("sleep 1\nexec {} \"$@\"\n", fake.display()),
        );
        dir
    }

    /// A home whose daemon runs the slow tools, waits long for the agent and for sshd, and
    /// has an image `ssh-img` whose rootfs has an sshd (so "wait ssh" happens).
    fn slow_home() -> Option<(Home, PathBuf)> {
        let home = Home::for_vms("")?;
        let slow = slow_tools(&home);
        home.ok(&["daemon", "stop"]);
        std::fs::write(
            home.path().join("config/config.toml"),
            crate::common::test_config(&format!(
                "firecracker_bin = \"{}\"\nstop_grace_secs = 3\nagent_wait_secs = 30\nssh_wait_secs = 30\n",
                slow.join("firecracker").display()
            )),
        )
        .unwrap();
        let src = home.path().join("ssh-src");
        std::fs::create_dir_all(src.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(src.join("root")).unwrap();
        std::fs::write(src.join("usr/sbin/sshd"), "#!/bin/sh\n").unwrap();
        let rootfs = home.path().join("ssh-rootfs.ext4");
        let st = crate::common::host_tool("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&rootfs)
            .arg("64M")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        home.ok(&[
            "image",
            "register",
            "--name",
            "ssh-img",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--kernel",
            home.path().join("vmlinux").to_str().unwrap(),
        ]);
        home.ok(&["daemon", "stop"]);
        Some((home, slow))
    }

    /// TAP devices banger made in this home's namespace, its idle pool aside.
    fn taps(home: &Home) -> Vec<String> {
        home.vm_taps()
    }

    /// Starts `vm create` (with the slow tools on PATH, and `agent` as the agent binary),
    /// kills the daemon with SIGKILL when the stage `stage` is reported, waits for the
    /// CLI and for the tools the dead daemon left running, and returns the CLI's stderr.
    fn kill_daemon_at(home: &Home, slow: &Path, image: &str, agent: &str, stage: &str) -> String {
        let path = format!(
            "{}:{}",
            slow.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = home
            .cmd(&["vm", "create", "--name", "crash", "--image", image])
            .env("PATH", &path)
            .env("BANGER_AGENT_BIN", agent)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let wanted = format!("] {stage}");
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("create ended before {stage:?}: {seen:#?}"))
                .unwrap();
            seen.push(line.clone());
            if line.contains(&wanted) {
                break;
            }
        }
        let dpid = home.status()["pid"].as_u64().unwrap();
        Command::new("kill")
            .args(["-9", &dpid.to_string()])
            .status()
            .unwrap();
        seen.extend(lines.map_while(Result::ok));
        let _ = child.wait();
        wait_until("daemon gone", 5, || !pid_alive(dpid));
        // A tool the daemon had started finishes on its own; let it, before the restart.
        let slow_text = slow.display().to_string();
        wait_until("tools of the dead daemon", 10, || {
            pids_mentioning(&slow_text)
                .iter()
                .all(|p| is_vmm_wrapper(*p, &slow_text))
        });
        seen.join("\n")
    }

    /// Whether `pid` is the VMM wrapper (about to become the fake Firecracker): a VMM, which
    /// the restarted daemon must find, not a tool to wait for.
    fn is_vmm_wrapper(pid: u32, slow: &str) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&format!("{slow}/firecracker")))
            .unwrap_or(false)
    }

    /// After the restart: nothing of the VM is left anywhere.
    fn assert_nothing_left(home: &Home, err: &str) {
        assert!(
            !err.contains("ready in"),
            "the CLI was told it is ready:\n{err}"
        );
        let vms = home.vms();
        assert!(vms.is_empty(), "rows left: {vms:?}\n{err}");
        let vm_dirs: Vec<_> = std::fs::read_dir(home.path().join("state/vms"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(vm_dirs.is_empty(), "disks left: {vm_dirs:?}");
        assert!(taps(home).is_empty(), "TAPs left: {:?}", taps(home));
        let run_vms = home.path().join("run/vms").display().to_string();
        wait_until("no VMM left", 5, || pids_mentioning(&run_vms).is_empty());
        let run_dirs: Vec<_> = std::fs::read_dir(&run_vms)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(run_dirs.is_empty(), "run dirs left: {run_dirs:?}");
    }

    /// The workspace's agent, which the fake Firecracker runs on the host.
    fn agent() -> String {
        bin_dir().join("banger-agent").display().to_string()
    }

    /// One case: kill at `stage`, restart, and check that nothing is left.
    fn case(stage: &str, image: &str, agent: &str) {
        let Some((home, slow)) = slow_home() else {
            return;
        };
        let err = kill_daemon_at(&home, &slow, image, agent, stage);
        assert_nothing_left(&home, &err);
        let log = std::fs::read_to_string(home.path().join("state/bangerd.log")).unwrap();
        // Once a row existed, the restarted daemon says it rolled it back.
        if stage != "resolve image" {
            assert!(
                log.contains("creation never finished; rolling back"),
                "{log}"
            );
        }
        // The home still works: a create now succeeds.
        home.ok(&["vm", "create", "--name", "after", "--image", "test-img"]);
        assert_eq!(home.vm("after")["state"], "running");
    }

    #[test]
    fn adversarial_daemon_killed_at_resolve_image() {
        case("resolve image", "test-img", &agent());
    }

    #[test]
    fn adversarial_daemon_killed_at_prepare_disks() {
        case("prepare disks", "test-img", &agent());
    }

    #[test]
    fn adversarial_daemon_killed_at_network() {
        case("network", "test-img", &agent());
    }

    /// The VMM is spawned but its pid not yet stored: found by its command line.
    #[test]
    fn adversarial_daemon_killed_at_start_vmm() {
        case("start VMM", "test-img", &agent());
    }

    /// The case of the issue: the VMM runs, the agent never answers.
    #[test]
    fn adversarial_daemon_killed_at_wait_agent() {
        case("wait agent", "test-img", "/nonexistent/banger-agent");
    }

    /// The agent answered; sshd never does.
    #[test]
    fn adversarial_daemon_killed_at_wait_ssh() {
        case("wait ssh", "ssh-img", &agent());
    }

    /// Killed once the CLI saw "ready": the VM stays, running, after the restart.
    #[test]
    fn adversarial_daemon_killed_after_ready() {
        let Some((home, slow)) = slow_home() else {
            return;
        };
        let err = kill_daemon_at(&home, &slow, "test-img", &agent(), "ready");
        assert!(err.contains("ready in"), "{err}");
        let vm = home.vm("crash");
        assert_eq!(vm["state"], "running");
        assert!(pid_alive(vm["pid"].as_u64().unwrap()));
        assert_eq!(taps(&home), vec![vm["tap"].as_str().unwrap().to_string()]);
        assert!(home.ok(&["vm", "ping", "crash"]).starts_with("pong"));
    }

    /// A `vm start` of a stopped VM interrupted by a daemon crash leaves it stopped, with no
    /// VMM, TAP or run dir.
    #[test]
    fn adversarial_daemon_killed_during_start() {
        let Some((home, slow)) = slow_home() else {
            return;
        };
        home.ok(&["vm", "create", "--name", "sleepy", "--image", "test-img"]);
        home.ok(&["vm", "stop", "sleepy"]);
        home.ok(&["daemon", "stop"]);
        // The next daemon's VMMs start no agent: the start waits at "wait agent". It is
        // started first, so that the polling below cannot start one with the real agent.
        let path = format!(
            "{}:{}",
            slow.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let with_env = |args: &[&str]| {
            let mut cmd = home.cmd(args);
            cmd.env("PATH", &path)
                .env("BANGER_AGENT_BIN", "/nonexistent/banger-agent")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        assert!(with_env(&["vm", "list"]).status().unwrap().success());
        let mut start = with_env(&["vm", "start", "sleepy"]).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let vmm = loop {
            let vm = home.vm("sleepy");
            if let Some(pid) = vm["pid"].as_u64().filter(|p| pid_alive(*p)) {
                assert_eq!(vm["state"], "stopped", "running before the agent answered");
                break pid;
            }
            assert!(Instant::now() < deadline, "the VMM never started");
            std::thread::sleep(Duration::from_millis(50));
        };
        let dpid = home.status()["pid"].as_u64().unwrap();
        Command::new("kill")
            .args(["-9", &dpid.to_string()])
            .status()
            .unwrap();
        let _ = start.wait();
        wait_until("daemon gone", 5, || !pid_alive(dpid));
        let vm = home.vm("sleepy");
        assert_eq!(vm["state"], "stopped");
        assert!(vm["pid"].is_null(), "{vm}");
        wait_until("VMM killed", 5, || !pid_alive(vmm));
        assert!(taps(&home).is_empty(), "TAPs left: {:?}", taps(&home));
        let run_vms = home.path().join("run/vms").display().to_string();
        assert!(pids_mentioning(&run_vms).is_empty());
        assert!(
            !Path::new(&run_vms)
                .join(&vm["id"].as_str().unwrap()[..12])
                .exists()
        );
        assert!(
            Path::new(vm["dir"].as_str().unwrap())
                .join("root.ext4")
                .exists()
        );
        // And it starts fine afterwards.
        home.ok(&["vm", "start", "sleepy"]);
        assert_eq!(home.vm("sleepy")["state"], "running");
    }
}

/// A VM whose stored VMM pid belongs to an unrelated process (the VMM died and its pid was
/// reused): the daemon never signals that process and treats the VMM as gone.
mod adversarial_pid_reuse {
    use std::process::{Command, Stdio};

    use super::wait_until;
    use crate::common::*;

    /// Creates a VM, kills its VMM with the daemon stopped, and stores the pid (and start
    /// time) of an unrelated `sleep` in its row, as if the pid had been reused.
    fn reused(home: &Home, name: &str) -> (std::process::Child, String) {
        home.ok(&["vm", "create", "--name", name, "--image", "test-img"]);
        let vm = home.vm(name);
        let id = vm["id"].as_str().unwrap().to_string();
        let tap = vm["tap"].as_str().unwrap().to_string();
        home.ok(&["daemon", "stop"]);
        let vmm = vm["pid"].as_u64().unwrap();
        Command::new("kill")
            .args(["-9", &vmm.to_string()])
            .status()
            .unwrap();
        wait_until("VMM gone", 5, || !pid_alive(vmm));
        let sleeper = Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let store = banger_store::Store::open(&home.path().join("state/banger.db")).unwrap();
        let mut row = store.get_vm(&id).unwrap().unwrap();
        row.pid = Some(sleeper.id());
        row.vmm_start_time = start_time(sleeper.id());
        store.update_vm(&row).unwrap();
        (sleeper, tap)
    }

    /// Field 22 of `/proc/PID/stat`: when the process started.
    fn start_time(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        rest.split_whitespace().nth(19)?.parse().ok()
    }

    fn check(home: &Home, name: &str, sleeper: &mut std::process::Child, tap: &str) {
        assert!(
            sleeper.try_wait().unwrap().is_none(),
            "the unrelated process was signalled"
        );
        let vm = home.vm(name);
        assert_eq!(vm["state"], "stopped");
        assert!(vm["pid"].is_null());
        assert!(!home.link_exists(tap), "TAP not released");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }

    /// Found by reconcile when the daemon starts again.
    #[test]
    fn adversarial_pid_reuse_found_at_daemon_start() {
        let Some(home) = Home::for_vms("") else {
            return;
        };
        let (mut sleeper, tap) = reused(&home, "reused");
        check(&home, "reused", &mut sleeper, &tap);
    }

    /// `vm stop`, `vm kill` and `vm delete` of such a VM leave the process alone.
    #[test]
    fn adversarial_pid_reuse_stop_kill_delete() {
        let Some(home) = Home::for_vms("") else {
            return;
        };
        for (name, action) in [("s1", "stop"), ("k1", "kill"), ("d1", "delete")] {
            let (mut sleeper, tap) = reused(&home, name);
            // Whichever comes first (reconcile at start, or the action), the result is the
            // same: the VM is stopped (or deleted) and the sleeper lives.
            let acted = home.run(&["vm", action, name]);
            if action == "delete" {
                let out = home.run(&["vm", "show", name]);
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "deleted VM still shown; the delete said: {acted:?}"
                );
                assert!(sleeper.try_wait().unwrap().is_none(), "sleeper signalled");
                assert!(!home.link_exists(&tap));
                sleeper.kill().unwrap();
                sleeper.wait().unwrap();
            } else {
                check(&home, name, &mut sleeper, &tap);
            }
        }
    }
}

/// Everything a refused create could have left: rows, VM directories, TAPs, VMM processes.
struct Leftovers {
    vms: usize,
    vm_dirs: usize,
    taps: usize,
    vmms: usize,
}

fn leftovers(home: &Home) -> Leftovers {
    let vm_dirs = std::fs::read_dir(home.path().join("state/vms"))
        .map(|d| d.count())
        .unwrap_or(0);
    // The daemon's idle TAP pool (filled in the background) is capacity, not a leftover.
    let links = home.vm_taps().len();
    Leftovers {
        vms: home.vms().len(),
        vm_dirs,
        taps: links,
        vmms: pids_mentioning(&format!("{}/run/vms", home.path().display())).len(),
    }
}

fn assert_unchanged(home: &Home, before: &Leftovers, case: &str) {
    let now = leftovers(home);
    assert_eq!(now.vms, before.vms, "{case}: a VM row was created");
    assert_eq!(
        now.vm_dirs, before.vm_dirs,
        "{case}: a VM directory was created"
    );
    assert_eq!(now.taps, before.taps, "{case}: a TAP was created");
    assert_eq!(now.vmms, before.vmms, "{case}: a VMM was started");
}

/// The error a raw API call got (refused body or streamed error event).
fn api_error(reply: &str) -> serde_json::Value {
    if let Some(i) = reply.find(r#"{"event":"error""#) {
        let ev: serde_json::Value =
            serde_json::from_str(reply[i..].lines().next().unwrap()).unwrap();
        return ev["error"].clone();
    }
    let (_, body) = reply.split_once("\r\n\r\n").unwrap();
    serde_json::from_str::<serde_json::Value>(body)
        .unwrap_or_else(|e| panic!("not a typed error body ({e}): {reply}"))["error"]
        .clone()
}

/// The issue's cases through the real binaries: what the CLI refuses before calling, and what
/// the daemon refuses when the CLI is bypassed. Nothing is made either way.
#[test]
fn adversarial_cli_out_of_range_and_unknown_fields() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "a", "--image", "test-img"]);
    let before = leftovers(&home);
    // The counters see the one VM that exists, so they would see a new one.
    assert_eq!((before.vms, before.vm_dirs, before.taps), (1, 1, 1));
    assert!(before.vmms >= 1, "the VMM of a is not seen");
    let long_name = "a".repeat(64);
    // The CLI's own checks (banger's caps), before any daemon call.
    for (args, needle) in [
        (vec!["--cpus", "256"], "cpus must be between 1 and 255"),
        (
            vec!["--cpus", "9223372036854775807"],
            "cpus must be between 1 and 255",
        ),
        (
            vec!["--memory", "2T"],
            "memory must be between 1 MiB and 1 TiB",
        ),
        (vec!["--memory", "512K"], "memory must be between 1 MiB"),
        (vec!["--memory", "99999999999T"], "is too large"),
        (
            vec!["--disk", "17T"],
            "disk size must be between 1 byte and 16 TiB",
        ),
        (
            vec!["--work-disk", "16385G"],
            "work disk size must be between",
        ),
        (vec!["--work-disk", "0"], "must be larger than 0"),
        (vec!["--cpus", "0"], "cpus must be between 1 and 255"),
        (
            vec!["--cpus", "-1"],
            "between 1 and 255 (the most an x86 guest can address without interrupt remapping), got -1",
        ),
        (vec!["--memory", "0"], "--memory must be larger than 0"),
        (vec!["--disk", "0"], "--disk must be larger than 0"),
        (
            vec!["--name", &long_name],
            "64 characters long; the limit is 63",
        ),
    ] {
        let mut a = vec!["vm", "create", "--image", "test-img"];
        a.extend(args.iter().copied());
        let out = home.run(&a);
        assert_eq!(out.status.code(), Some(1), "{args:?} accepted");
        let err = stderr(&out);
        assert!(
            err.starts_with("banger: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("(op "), "{args:?} reached the daemon: {err}");
        assert_unchanged(&home, &before, &format!("{args:?}"));
    }
    // `vm set` checks banger's caps too, before any daemon call.
    for (args, needle) in [
        (["--cpus", "256"], "cpus must be between 1 and 255"),
        (["--memory", "2T"], "memory must be between 1 MiB and 1 TiB"),
        (
            ["--work-disk", "17T"],
            "work disk size must be between 1 byte and 16 TiB",
        ),
    ] {
        let out = home.run(&["vm", "set", "a", args[0], args[1]]);
        assert_eq!(out.status.code(), Some(1), "set {args:?} accepted");
        let err = stderr(&out);
        assert!(err.contains(needle), "set {args:?}: {err}");
        assert!(
            !err.contains("(op "),
            "set {args:?} reached the daemon: {err}"
        );
    }
    assert_eq!(home.vm("a")["cpus"], 2);
    // The backend's limit, checked by the daemon: Firecracker takes at most 32 vCPUs.
    let out = home.run(&["vm", "create", "--image", "test-img", "--cpus", "33"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("banger: bad request: cpus must be between 1 and 32 (the most Firecracker accepts), got 33"),
        "{err}"
    );
    assert_unchanged(&home, &before, "--cpus 33");
    let out = home.run(&["vm", "set", "a", "--cpus", "33"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("VM a: cpus must be between 1 and 32"),
        "{}",
        stderr(&out)
    );
    assert_eq!(home.vm("a")["cpus"], 2);
    // Raw bodies straight to the socket.
    for (body, needle) in [
        (r#"{"image":"test-img","cpu":8}"#, "unknown field `cpu`"),
        (r#"{"image":"test-img","cpus":"8"}"#, "invalid type"),
        (r#"{"image":"test-img","cpus":33}"#, "between 1 and 32"),
        (
            r#"{"image":"test-img","memory_mib":18446744073709551615}"#,
            "memory_mib",
        ),
        (
            r#"{"image":"test-img","disk_bytes":18446744073709551615}"#,
            "16 TiB",
        ),
        (r#"["x","test-img",8]"#, "expected a JSON object"),
    ] {
        let reply = raw_post(&home.socket(), "/v1/vms", body);
        let e = api_error(&reply);
        assert_eq!(e["kind"], "bad_request", "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{body}: {e}"
        );
        assert_unchanged(&home, &before, body);
    }
    let reply = raw_post(
        &home.socket(),
        "/v1/vms/actions",
        r#"{"action":{"set":{"settings":{"cpu":8}}},"refs":["a"]}"#,
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        api_error(&reply)["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `cpu`")
    );
    assert_eq!(home.vm("a")["cpus"], 2);
}

/// An id shown by `vm list` can never resolve to another VM.
#[test]
fn adversarial_cli_ids_never_resolve_to_another_vm() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "first", "--image", "test-img"]);
    let listed = home.ok(&["vm", "ls", "-q"]).trim().to_string();
    assert_eq!(listed.len(), 12);
    let full = home.vm("first")["id"].as_str().unwrap().to_string();
    let before = leftovers(&home);
    for name in [
        listed.clone(),
        full.clone(),
        format!("{listed}0"),
        "000000000000".into(),
    ] {
        let out = home.run(&["vm", "create", "--name", &name, "--image", "test-img"]);
        assert_eq!(out.status.code(), Some(1), "{name} accepted");
        let err = stderr(&out);
        assert!(err.contains("looks like an id"), "{name}: {err}");
        assert_unchanged(&home, &before, &name);
        // Bypassing the CLI does not help.
        let reply = raw_post(
            &home.socket(),
            "/v1/vms",
            &format!(r#"{{"name":"{name}","image":"test-img"}}"#),
        );
        let e = api_error(&reply);
        assert_eq!(e["kind"], "bad_request", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("looks like an id"),
            "{e}"
        );
        assert_unchanged(&home, &before, &name);
    }
    // A name that starts with the listed id is allowed (it is not all hex), and the listed id
    // still means the first VM, never this one.
    let tricky = format!("{listed}-x");
    home.ok(&["vm", "create", "--name", &tricky, "--image", "test-img"]);
    assert_eq!(home.vm(&listed)["name"], "first");
    assert_eq!(home.vm(&full)["name"], "first");
    assert_eq!(home.vm(&tricky)["name"], tricky.as_str());
    // Deleting by the listed id deletes the first VM.
    assert_eq!(home.ok(&["vm", "delete", &listed]), "deleted first\n");
    assert_eq!(home.vms().len(), 1);
    assert_eq!(home.vms()[0]["name"], tricky.as_str());
    // Image and kernel names cannot start with '-'.
    for args in [
        vec![
            "image",
            "register",
            "--name=-rf",
            "--rootfs",
            "/etc/hostname",
            "--kernel",
            "/etc/hostname",
        ],
        vec!["kernel", "import", "--from", "/", "--", "-x"],
        vec!["image", "bootstrap", "--", "-debian-bookworm"],
    ] {
        let out = home.run(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} accepted: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("must not start with '-'"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let images: Vec<serde_json::Value> =
        serde_json::from_str(&home.ok(&["image", "list", "--json"])).unwrap();
    assert_eq!(images.len(), 1);
}

/// Adversarial corpus, log caps: a guest floods its console far past `max_log_size` while the
/// VM runs; the daemon's monitor rotates the log, the disk the log takes stays bounded, and
/// `vm logs` (to a pipe: byte for byte) still shows the newest output.
#[test]
fn adversarial_log_console_flood_is_capped_by_the_running_daemon() {
    let Some(home) = Home::for_vms("max_log_size = \"1M\"\n") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "flood", "--image", "test-img"]);
    let vm = home.vm("flood");
    let dir = Path::new(vm["dir"].as_str().unwrap()).to_path_buf();
    let console = dir.join("console.log");
    let older = dir.join("console.log.1");
    // Written the way the VMM writes: appending, 8 MiB of lines with escape sequences.
    let line = b"guest says \x1b[31mhello\x1b[0m over and over\r\n";
    let flood: Vec<u8> = line.iter().copied().cycle().take(8 << 20).collect();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&console)
            .unwrap();
        f.write_all(&flood).unwrap();
        f.write_all(b"THE LAST LINE\r\n").unwrap();
    }
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    wait_until("the daemon rotated the console log", 10, || {
        len(&console) < (1 << 20) && len(&older) > 0
    });
    assert!(
        len(&console) + len(&older) <= 1 << 20,
        "log and .1 hold {} bytes",
        len(&console) + len(&older)
    );
    let out = home.cmd(&["vm", "logs", "flood"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.len() <= 1 << 21, "{} bytes", out.stdout.len());
    // To a pipe, the guest's bytes arrive exactly, escape sequences included.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("THE LAST LINE\r\n"), "newest output missing");
    assert!(
        text.contains("guest says \x1b[31mhello\x1b[0m over and over\r\n"),
        "piped output was altered"
    );
    let log = std::fs::read_to_string(home.path().join("state/bangerd.log")).unwrap();
    assert!(log.contains("log rotated"), "{log}");
    home.ok(&["vm", "delete", "flood"]);
}

/// Runs `args` with `input` on stdin.
fn run_with_stdin(home: &Home, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = home
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn prune_lists_stopped_vms_and_deletes_them_only_after_yes() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    for name in ["keep", "old1", "old2"] {
        home.ok(&["vm", "create", "--name", name, "--image", "test-img"]);
    }
    home.ok(&["vm", "stop", "old1", "old2"]);
    let dir = home.vm("old1")["dir"].as_str().unwrap().to_string();

    // No answer, or anything but yes: the table, and nothing deleted.
    for answer in ["", "n\n", "maybe\n"] {
        let out = run_with_stdin(&home, &["vm", "prune"], answer);
        assert_eq!(out.status.code(), Some(1), "{answer:?}: {}", stderr(&out));
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.starts_with("ID"), "{table}");
        assert!(table.contains("old1") && table.contains("old2"), "{table}");
        assert!(
            !table.contains("keep"),
            "a running VM is not listed: {table}"
        );
        let err = stderr(&out);
        assert!(err.contains("Delete 2 VMs and their disks? [y/N]"), "{err}");
        assert!(err.contains("nothing deleted"), "{err}");
        assert_eq!(home.vms().len(), 3, "{answer:?} deleted something");
    }

    let out = run_with_stdin(&home, &["vm", "prune"], "y\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deleted old1") && text.contains("deleted old2"),
        "{text}"
    );
    let names: Vec<String> = home
        .vms()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["keep"]);
    assert!(!Path::new(&dir).exists(), "disks left after prune");

    // Nothing left to prune: said so, success.
    let out = home.run(&["vm", "prune", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no stopped VMs"), "{}", stderr(&out));

    // --yes asks nothing.
    home.ok(&["vm", "stop", "keep"]);
    let out = home.run(&["vm", "prune", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("[y/N]"));
    assert!(home.vms().is_empty());

    // The daemon refuses to prune a running VM, whatever the client sends.
    home.ok(&["vm", "create", "--name", "live", "--image", "test-img"]);
    let id = home.vm("live")["id"].as_str().unwrap().to_string();
    let reply = raw_post(
        &home.socket(),
        "/v1/vms/actions",
        &format!(r#"{{"refs":["{id}"],"action":"prune"}}"#),
    );
    assert!(reply.contains("is running; stop it to prune it"), "{reply}");
    assert_eq!(home.vm("live")["state"], "running");
}

/// `vm set --nat/--no-nat` changes a running VM's rule in banger's nft table at once (and is
/// stored); a stop removes the rule.
#[test]
fn nat_is_set_live_and_torn_down_on_stop() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
    let ip = home.vm("web")["ip"].as_str().unwrap().to_string();
    let rule = format!("banger-nat vm={ip} ");
    let table = || {
        let out = home.in_ns(&["nft", "list", "ruleset"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(!table().contains(&rule));
    assert_eq!(home.ok(&["vm", "set", "web", "--nat"]), "updated web\n");
    assert!(table().contains(&rule), "{}", table());
    assert_eq!(home.vm("web")["nat"], true);
    home.ok(&["vm", "set", "web", "--no-nat"]);
    assert!(!table().contains(&rule), "{}", table());
    assert_eq!(home.vm("web")["nat"], false);
    let out = home.run(&["vm", "set", "web", "--nat", "--no-nat"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    home.ok(&["vm", "set", "web", "--nat"]);
    home.ok(&["vm", "stop", "web"]);
    assert!(
        !table().contains(&rule),
        "a stop leaves no rule: {}",
        table()
    );
    assert_eq!(home.vm("web")["nat"], true, "kept for the next start");
    home.ok(&["vm", "start", "web"]);
    assert!(table().contains(&rule), "{}", table());
}

/// The warm TAP pool on a real bridge: filled after the first boot with TAPs on the bridge,
/// owned by the daemon's user; the next VM boots on one; a daemon killed and restarted adopts
/// the idle ones; a stop deletes the TAP the VM took.
#[test]
fn the_tap_pool_is_filled_taken_and_adopted_after_a_restart() {
    let Some(home) = Home::for_vms("tap_pool_size = 2\n") else {
        return;
    };
    home.ok(&["vm", "create", "--name", "first", "--image", "test-img"]);
    let idle = || -> Vec<String> {
        serde_json::from_value(home.status()["tap_pool"]["idle"].clone()).unwrap()
    };
    wait_until("pool filled", 10, || idle().len() == 2);
    assert_eq!(idle(), ["bgrp0", "bgrp1"]);
    for tap in idle() {
        let out = home.in_ns(&["ip", "-d", "-j", "link", "show", &tap]);
        let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(link[0]["master"], "banger0", "{link}");
        let owner = home.in_ns(&["cat", &format!("/sys/class/net/{tap}/owner")]);
        assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "0");
    }
    home.ok(&["vm", "create", "--name", "second", "--image", "test-img"]);
    assert_eq!(home.vm("second")["tap"], "bgrp0");
    wait_until("pool refilled", 10, || idle() == ["bgrp1", "bgrp2"]);
    assert_eq!(home.vm_taps().len(), 2, "{:?}", home.vm_taps());

    let dpid = home.status()["pid"].as_u64().unwrap();
    kill9_and_wait(dpid);
    // The restarted daemon adopts them (in the background) and makes no new ones.
    wait_until("pool adopted", 10, || idle() == ["bgrp1", "bgrp2"]);
    assert!(!home.link_exists("bgrp3"));
    home.ok(&["vm", "stop", "second"]);
    assert!(
        !home.link_exists("bgrp0"),
        "the stop deleted the TAP it took"
    );
    assert_eq!(idle(), ["bgrp1", "bgrp2"]);
}
