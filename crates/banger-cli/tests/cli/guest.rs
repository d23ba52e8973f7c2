//! Real guests: the golden image booted by QEMU (TCG here), driven through the real CLI.
//!
//! Needs root, `qemu-system-x86_64`, `mmdebstrap`, an installed kernel package (`/boot`) and a
//! static guest agent in `BANGER_AGENT_BIN` (`scripts/test` provides all of them). Without
//! them the tests skip with the reason -- unless `BANGER_REQUIRE_GUEST_TESTS=1` (set by
//! `scripts/test`), when a missing prerequisite fails the test instead.
//!
//! The golden image is built once per build and agent (a bundle cached under
//! `target/guest-cache`, guarded by a file lock) and imported into each test's home.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn prerequisites() -> Result<PathBuf, String> {
    if !is_root() {
        return Err("needs root (network namespace, bridge, TAP)".into());
    }
    for tool in ["qemu-system-x86_64", "mmdebstrap"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .any(|d| d.join(tool).is_file());
        if !found {
            return Err(format!(
                "{tool} is not installed (scripts/setup installs it)"
            ));
        }
    }
    let has_kernel = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false);
    if !has_kernel {
        return Err("no kernel package installed (apt-get install linux-image-cloud-amd64)".into());
    }
    let agent = std::env::var_os("BANGER_AGENT_BIN")
        .map(PathBuf::from)
        .ok_or("BANGER_AGENT_BIN is not set to a static banger-agent (scripts/test sets it)")?;
    if !banger_core::elf::is_static(&agent).unwrap_or(false) {
        return Err(format!("{} is not a static binary", agent.display()));
    }
    Ok(agent)
}

/// A home in its own network namespace with the host kernel and the golden image.
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn guest_home() -> Option<Home> {
    let agent = match prerequisites() {
        Ok(a) => a,
        Err(why) => {
            if std::env::var("BANGER_REQUIRE_GUEST_TESTS").is_ok_and(|v| v == "1") {
                panic!("real-guest test prerequisites missing: {why}");
            }
            eprintln!("skipped: {why}");
            return None;
        }
    };
    // No background warm-start templates: a second guest booting beside each test's would
    // slow every test down (the warm-start test makes its template with `image warm`).
    let mut home = Home::in_netns(
        "vmm = \"qemu\"\nagent_wait_secs = 180\nssh_wait_secs = 180\nstop_grace_secs = 60\nwarm_start = false\n",
    );
    home.set_env("BANGER_AGENT_BIN", &agent);
    home.ok(&["kernel", "import", "host", "--from", "/"]);
    golden_image(&home, &agent);
    Some(home)
}

/// Builds the golden bundle once (per banger commit and agent build) and imports it.
fn golden_image(home: &Home, agent: &Path) {
    let version: serde_json::Value =
        serde_json::from_str(&home.ok(&["version", "--json"])).unwrap();
    let agent_len = std::fs::metadata(agent).unwrap().len();
    let key = format!(
        "{}-{}-{agent_len}",
        version["commit"].as_str().unwrap(),
        version["build_epoch"]
    );
    let cache = bin_dir().join("../guest-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let lock = std::fs::File::create(cache.join(".lock")).unwrap();
    lock.lock().unwrap();
    let bundle = cache.join(format!("debian-bookworm-{key}.tar.zst"));
    if !bundle.exists() {
        // Built by a home in the host's network namespace: mmdebstrap downloads packages,
        // and the test namespaces have no route out.
        let mut builder = Home::new();
        builder.set_env("BANGER_AGENT_BIN", agent);
        builder.ok(&["kernel", "import", "host", "--from", "/"]);
        let t = Instant::now();
        builder.ok(&["image", "bootstrap", "debian-bookworm"]);
        eprintln_timing("image bootstrap", t.elapsed());
        let built = builder.path().join("state/bundles/debian-bookworm.tar.zst");
        std::fs::copy(&built, cache.join(".partial")).unwrap();
        std::fs::rename(cache.join(".partial"), &bundle).unwrap();
    }
    drop(lock);
    home.ok(&["image", "import", bundle.to_str().unwrap()]);
}

#[allow(clippy::print_stderr)] // timings are part of the test report
fn eprintln_timing(what: &str, d: Duration) {
    eprintln!("timing: {what} took {:.1}s", d.as_secs_f64());
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn vm_run_reports_the_guest_kernel_and_exit_codes() {
    let Some(home) = guest_home() else { return };
    let kernel: serde_json::Value =
        serde_json::from_str(&home.ok(&["kernel", "show", "host", "--json"])).unwrap();
    let t = Instant::now();
    let o = home.run(&["vm", "run", "--rm", "--", "uname", "-r"]);
    eprintln_timing("vm run --rm -- uname -r", t.elapsed());
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        out(&o).trim(),
        kernel["version"].as_str().unwrap(),
        "{}",
        err(&o)
    );
    assert!(home.vms().is_empty(), "--rm left a VM");

    let o = home.run(&["vm", "run", "--rm", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
    assert!(
        home.vms().is_empty(),
        "--rm left a VM after a failing command"
    );
    assert!(
        !err(&o).contains("still running"),
        "--rm must not print the reminder"
    );
}

#[test]
fn guest_lifecycle_persists_work_and_cleans_up() {
    let Some(home) = guest_home() else { return };
    let o = home.run(&["vm", "create", "--name", "box"]);
    assert!(o.status.success(), "{}", err(&o));
    for stage in ["start VMM", "wait agent", "wait ssh", "ready in"] {
        assert!(
            err(&o).contains(stage),
            "stage {stage:?} missing:\n{}",
            err(&o)
        );
    }
    let vm = home.vm("box");
    assert_eq!(vm["vmm"], "qemu");
    let (dir, tap) = (
        vm["dir"].as_str().unwrap().to_string(),
        vm["tap"].as_str().unwrap().to_string(),
    );

    let o = home.run(&[
        "vm",
        "ssh",
        "box",
        "--",
        "sh",
        "-c",
        "echo kept > /root/marker && hostname",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "box");

    // A web server in the guest is a link; sshd is an endpoint, listed once for both stacks.
    home.ok(&[
        "vm",
        "exec",
        "box",
        "--",
        "setsid -f python3 -m http.server 8000 >/dev/null 2>&1 < /dev/null",
    ]);
    let mut ports = String::new();
    for _ in 0..50 {
        ports = home.ok(&["vm", "ports", "box"]);
        if ports.contains(":8000") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let row = |needle: &str| ports.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(row("box.vm:22 "), 1, "{ports}");
    assert!(
        ports
            .lines()
            .any(|l| l.starts_with("tcp") && l.contains("box.vm:22") && l.contains("sshd")),
        "{ports}"
    );
    assert_eq!(row("http://box.vm:8000/"), 1, "{ports}");
    let json: serde_json::Value =
        serde_json::from_str(&home.ok(&["vm", "ports", "box", "--json"])).unwrap();
    let web = json["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == 8000)
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(web["url"], "http://box.vm:8000/");
    assert_eq!(web["endpoint"], "box.vm:8000");
    let health: serde_json::Value =
        serde_json::from_str(&home.ok(&["vm", "health", "box", "--json"])).unwrap();
    assert_eq!(health["hostname"], "box");

    let t = Instant::now();
    let stop = home.ok(&["vm", "stop", "box"]);
    let took = t.elapsed();
    eprintln_timing("vm stop", took);
    assert_eq!(
        stop.trim(),
        "stopped box",
        "the guest must shut down within the grace period"
    );
    assert!(took < Duration::from_secs(60));

    let o = home.run(&["vm", "start", "box"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = home.run(&["vm", "ssh", "box", "--", "cat", "/root/marker"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "kept\n", "work under /root survives stop/start");

    home.ok(&["vm", "delete", "box"]);
    assert!(home.vms().is_empty());
    assert!(pids_mentioning(&dir).is_empty(), "a QEMU process is left");
    assert!(!home.link_exists(&tap), "TAP left");
    assert!(!Path::new(&dir).exists(), "disks left");
    let _ = Command::new("true").status();
}

/// The headline on a real guest: a repository shipped in, `make` run there, and the work
/// brought back as a patch that `git apply` takes on a clean host clone.
#[test]
fn vm_run_with_a_repository_runs_make_there_and_the_work_comes_back_as_a_patch() {
    let Some(home) = guest_home() else { return };
    let repo = home.path().join("src/app");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", err(&o));
        out(&o)
    };
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("Makefile"),
        "all:\n\techo built > out.txt\n\tprintf '\\000\\001\\002' > out.bin\n\trm notes.txt\n",
    )
    .unwrap();
    std::fs::write(repo.join("notes.txt"), "to be removed by make\n").unwrap();
    std::fs::write(repo.join("README"), "committed\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "start"]);
    // An uncommitted change on the host travels with the workspace.
    std::fs::write(repo.join("README"), "committed\nand changed on the host\n").unwrap();

    let t = Instant::now();
    let o = home.run(&[
        "vm",
        "run",
        "--name",
        "ws",
        repo.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "make >/dev/null && pwd && stat -c %u:%g Makefile && git log --format=%s",
    ]);
    eprintln_timing("vm run PATH -- make", t.elapsed());
    assert!(o.status.success(), "{}", err(&o));
    // CMD runs in the workspace, whose files are root's, and git works there (safe.directory).
    assert_eq!(out(&o), "/root/repo\n0:0\nstart\n", "{}", err(&o));

    let patch = home.path().join("work.patch");
    home.ok(&[
        "vm",
        "workspace",
        "export",
        "ws",
        "--output",
        patch.to_str().unwrap(),
    ]);
    let clone = home.path().join("clone");
    let o = Command::new("git")
        .args(["clone", "-q"])
        .arg(&repo)
        .arg(&clone)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    git(&clone, &["apply", "--check", patch.to_str().unwrap()]);
    git(&clone, &["apply", patch.to_str().unwrap()]);
    assert_eq!(std::fs::read(clone.join("out.txt")).unwrap(), b"built\n");
    assert_eq!(std::fs::read(clone.join("out.bin")).unwrap(), [0u8, 1, 2]);
    assert!(!clone.join("notes.txt").exists(), "the deletion came back");
    assert_eq!(
        std::fs::read_to_string(clone.join("README")).unwrap(),
        "committed\nand changed on the host\n"
    );
    home.ok(&["vm", "delete", "ws"]);
    assert!(home.vms().is_empty());
}

/// Plain `ssh -F CONFIG root@NAME.vm` with the test home's config (user entries that end
/// inside a `Host` stanza, then banger's block): it reaches the guest by the address the
/// block includes (no `.vm` DNS routing here) and checks the host key strictly against the
/// keys the agent reported at boot. A second VM on the first one's address meets no
/// "host key changed": its own keys replaced the first's.
#[test]
fn plain_ssh_to_name_vm_checks_host_keys_strictly_and_a_reused_address_warns_nothing() {
    let Some(home) = guest_home() else { return };
    let ssh_dir = home.path().join("user/.ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let config = ssh_dir.join("config");
    let user = "Host github.com\n    User git\n\nHost *\n    ServerAliveInterval 30\n";
    std::fs::write(&config, user).unwrap();
    home.ok(&["ssh-config"]);
    let known = home.path().join("state/ssh/known_hosts");
    // LogLevel INFO: any host key warning would show on stderr.
    let ssh = |name: &str| {
        let target = format!("root@{name}.vm");
        home.in_ns(&[
            "ssh",
            "-F",
            config.to_str().unwrap(),
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=INFO",
            "-o",
            "ConnectTimeout=30",
            &target,
            "hostname",
        ])
    };
    let quiet = |o: &std::process::Output| {
        let e = err(o);
        assert!(o.status.success(), "{e}");
        for bad in ["arning", "IDENTIFICATION", "host key", "Permanently added"] {
            assert!(!e.contains(bad), "ssh said {bad:?}: {e}");
        }
    };

    home.ok(&["vm", "create", "--name", "first"]);
    let ip = home.vm("first")["ip"].as_str().unwrap().to_string();
    let keys = std::fs::read_to_string(&known).unwrap();
    assert!(
        keys.lines()
            .any(|l| l.starts_with(&format!("first.vm,{ip} ssh-ed25519 "))),
        "{keys}"
    );
    let o = ssh("first");
    quiet(&o);
    assert_eq!(out(&o).trim(), "first");

    home.ok(&["vm", "delete", "first"]);
    assert!(
        !std::fs::read_to_string(&known)
            .unwrap()
            .contains("first.vm")
    );
    home.ok(&["vm", "create", "--name", "second"]);
    assert_eq!(
        home.vm("second")["ip"].as_str().unwrap(),
        ip,
        "the address is reused"
    );
    let o = ssh("second");
    quiet(&o);
    assert_eq!(out(&o).trim(), "second");
    // `vm ssh` checks against the same file, strictly.
    let o = home.run(&["vm", "ssh", "second", "--", "true"]);
    quiet(&o);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap().find(user),
        Some(0)
    );
    home.ok(&["vm", "delete", "second"]);
}

/// A TCP server in another network namespace, routed from the daemon's namespace (not on the
/// bridge, and with no route back to the guests' subnet): a guest reaches it only through
/// NAT. `vm set --nat` on the running VM opens the way at once, `--no-nat` closes it; a VM
/// created with `--nat` has it from its first boot, and resolves the other guest by name.
#[test]
fn a_guest_reaches_another_network_only_through_nat() {
    let Some(home) = guest_home() else { return };
    let home_ns = home.netns.clone().unwrap();
    let outside = format!("{home_ns}o");
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &outside]);
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _outside_ns = DelNs(outside.clone());
    ip(&[
        "-n", &home_ns, "link", "add", "vout", "type", "veth", "peer", "name", "eth0",
    ]);
    ip(&["-n", &home_ns, "link", "set", "eth0", "netns", &outside]);
    ip(&["-n", &home_ns, "addr", "add", "10.77.0.1/24", "dev", "vout"]);
    ip(&["-n", &home_ns, "link", "set", "vout", "up"]);
    ip(&["-n", &outside, "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    ip(&["-n", &outside, "link", "set", "eth0", "up"]);
    let mut server = python_in_ns(
        &outside,
        "import socket\n\
         s=socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('10.77.0.2',8080))\n\
         s.listen()\n\
         print('bound',flush=True)\n\
         while True:\n c,_=s.accept()\n c.sendall(b'hello-from-outside\\n')\n c.close()\n",
    );

    let reach = |vm: &str| -> bool {
        let o = home.run(&[
            "vm",
            "ssh",
            vm,
            "--",
            "timeout",
            "5",
            "bash",
            "-c",
            "cat </dev/tcp/10.77.0.2/8080",
        ]);
        let got = out(&o);
        assert!(
            got.is_empty() || got.trim() == "hello-from-outside",
            "{got} {}",
            err(&o)
        );
        o.status.success() && got.trim() == "hello-from-outside"
    };
    let o = home.run(&["vm", "create", "--name", "box"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!reach("box"), "reached the other network without NAT");
    assert_eq!(home.ok(&["vm", "set", "box", "--nat"]), "updated box\n");
    assert!(reach("box"), "no way out with NAT on");
    home.ok(&["vm", "set", "box", "--no-nat"]);
    assert!(!reach("box"), "still reached after --no-nat");

    let o = home.run(&["vm", "create", "--name", "peer", "--nat"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(reach("peer"), "a VM created with --nat has no way out");
    // Guests resolve each other through the gateway: a plain name via `search vm`.
    let box_ip = home.vm("box")["ip"].as_str().unwrap().to_string();
    let o = home.run(&["vm", "ssh", "peer", "--", "getent", "ahostsv4", "box"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).split_whitespace().next(), Some(box_ip.as_str()));
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `banger mcp`'s `vm_run` end to end in a real guest, driven by the reference Python MCP
/// client: a fresh VM from the golden image runs the commands through its agent (the guest's
/// kernel answers `uname -r`) and is deleted.
#[test]
fn mcp_vm_run_in_a_real_guest_through_the_python_client() {
    let Some(python) = crate::mcp::mcp_python() else {
        return;
    };
    let Some(home) = guest_home() else { return };
    let kernel: serde_json::Value =
        serde_json::from_str(&home.ok(&["kernel", "show", "host", "--json"])).unwrap();
    let t = Instant::now();
    let report = crate::mcp::run_client(
        &home,
        &python,
        serde_json::json!({
            "mode": "guest",
            "kernel_version": kernel["version"],
        }),
    );
    eprintln_timing("mcp vm_run (two runs)", t.elapsed());
    assert!(report.contains("ok vm_run with progress\n"), "{report}");
    assert!(report.contains("ok vm_run in the guest\n"), "{report}");
    assert!(home.vms().is_empty(), "vm_run left a VM");
}

/// Warm start on a real guest: two VMs restored from one template are each their own
/// (hostname, address, MAC, machine id, SSH host keys recorded for strict checking, random
/// stream, clock), a grown work disk is grown in the guest, a workspace in a restored VM
/// exports, stop/start of a restored VM boots cold and keeps `/root`, and deleting the image
/// removes its templates.
#[test]
fn vms_restored_from_one_template_are_each_their_own_and_behave_as_booted() {
    let Some(home) = guest_home() else { return };
    let t = Instant::now();
    let o = home.run(&["image", "warm", "debian-bookworm", "--memory", "1G"]);
    eprintln_timing("image warm", t.elapsed());
    assert!(o.status.success(), "{}", err(&o));
    let show = home.ok(&["image", "show", "debian-bookworm"]);
    assert!(show.contains("qemu 2 vCPU 1024 MiB"), "{show}");

    let probe = "hostname; cat /etc/machine-id; cat /proc/sys/kernel/random/boot_id; \
        ip -o -4 addr show scope global | awk '{print $4}'; \
        cat /sys/class/net/e*/address; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub; \
        head -c 4096 /dev/urandom | sha256sum | cut -c1-64; \
        df -B1 --output=size /root | tail -1; date +%s.%N";
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let mut seen: Vec<Vec<String>> = Vec::new();
    for name in ["wa", "wb"] {
        let t = Instant::now();
        let o = home.run(&[
            "vm",
            "create",
            "--name",
            name,
            "--memory",
            "1G",
            "--work-disk",
            "9G",
        ]);
        eprintln_timing("vm create from a template", t.elapsed());
        assert!(o.status.success(), "{}", err(&o));
        assert!(err(&o).contains("restore: from template"), "{}", err(&o));
        assert!(!err(&o).contains("start VMM"), "it booted:\n{}", err(&o));
        let before = epoch();
        let o = home.run(&["vm", "ssh", name, "--", "sh", "-c", probe]);
        let after = epoch();
        assert!(o.status.success(), "{}", err(&o));
        let lines: Vec<String> = out(&o).lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 9, "{}", out(&o));
        assert_eq!(lines[0], name);
        let guest_now: f64 = lines[8].parse().unwrap();
        assert!(
            guest_now > before - 2.0 && guest_now < after + 2.0,
            "guest clock {guest_now} vs host {before}..{after}"
        );
        let work: u64 = lines[7].trim().parse().unwrap();
        assert!(work > 8_500_000_000, "/root was not grown to 9G: {work}");
        seen.push(lines);
    }
    let (a, b) = (&seen[0], &seen[1]);
    for (i, what) in [
        (1, "machine-id"),
        (3, "address"),
        (4, "MAC"),
        (5, "SSH host key"),
        (6, "4 KiB of /dev/urandom"),
    ] {
        assert_ne!(a[i], b[i], "{what} is the same in both restored VMs");
    }
    // boot_id is made by the kernel at its first read, which systemd does at boot, and it
    // cannot be written: every VM restored from one template has the template's.
    assert_eq!(a[2], b[2], "boot_id now differs: update the docs");

    // A workspace in a restored VM exports its work.
    let repo = home.path().join("src/app");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", err(&o));
    };
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "committed\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "start"]);
    let o = home.run(&[
        "vm",
        "run",
        "--name",
        "ws",
        "--memory",
        "1G",
        repo.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo built > out.txt",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("restore: from template"), "{}", err(&o));
    let patch = home.path().join("work.patch");
    home.ok(&[
        "vm",
        "workspace",
        "export",
        "ws",
        "--output",
        patch.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&patch).unwrap();
    assert!(text.contains("+built"), "{text}");

    // Stop/start boots the restored VM's own disks cold and keeps /root.
    home.ok(&[
        "vm",
        "ssh",
        "wa",
        "--",
        "sh",
        "-c",
        "echo kept > /root/marker",
    ]);
    home.ok(&["vm", "stop", "wa"]);
    let o = home.run(&["vm", "start", "wa"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = home.run(&[
        "vm",
        "ssh",
        "wa",
        "--",
        "sh",
        "-c",
        "cat /root/marker; hostname; cat /proc/sys/kernel/random/boot_id",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    // A cold boot has a boot id of its own; the restore ran on the template's.
    let expected = format!("kept\nwa\n{}\n", seen[0][2]);
    assert_ne!(out(&o), expected, "vm start did not boot cold");
    assert!(out(&o).starts_with("kept\nwa\n"), "{}", out(&o));

    for name in ["wa", "wb", "ws"] {
        home.ok(&["vm", "delete", name]);
    }
    home.ok(&["image", "delete", "debian-bookworm"]);
    let left: Vec<_> = std::fs::read_dir(home.path().join("state/templates"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "templates left: {left:?}");
}
