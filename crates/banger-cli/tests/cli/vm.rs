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
    home.ok(&["vm", "create", "--name", "b2", "--image", "test-img"]);
    let out = home.run(&["vm", "stop", "a1", "nope", "b2", "a1"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout, "stopped a1\nstopped b2\n",
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
    // Ambiguous prefixes are reported too.
    let out = home.run(&["vm", "start", "a1", "b"]);
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
    let out = home.run(&["vm", "delete", "a1", "b2"]);
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
        r#"{"action":"set","refs":["web"],"settings":{"memory_mib":0}}"#,
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
        "--",
        "true",
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
