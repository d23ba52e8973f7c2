//! `banger system install|uninstall --root DIR` as a packager runs it: the units pass
//! `systemd-analyze verify`, install is idempotent, uninstall leaves DIR exactly as it was
//! (every path, mode, owner and byte), `--purge` alone removes the owner's VMs and images,
//! and refusals (not root, an unknown user, a bad bridge) change nothing. Then bangerd as an
//! unprivileged user, its host networking done by `banger-helper` running as root.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use banger_net::NetOps;

use crate::common::*;

/// Every path under `dir` with its type, mode, owner and content (or link target).
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            Vec::new()
        } else {
            std::fs::read(&p).unwrap()
        };
        let rel = p.strip_prefix(dir).unwrap().to_path_buf();
        out.insert(rel, (m.mode(), m.uid(), m.gid(), content));
    }
    out
}

/// A user of this host that is neither root nor `nobody` (systemd calls that unsafe), with
/// a name and home a unit can hold: the owner for these installs.
fn some_user() -> (String, u32, PathBuf) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid: u32 = f.get(2)?.parse().ok()?;
            let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
            (uid != 0 && uid < 65534 && ok(f[0]) && f[5].starts_with('/') && ok(f[5]))
                .then(|| (f[0].to_string(), uid, PathBuf::from(f[5])))
        })
        .next()
        .expect("a non-root user in /etc/passwd")
}

fn banger(args: &[&str]) -> Output {
    let mut c = Command::new(BANGER);
    c.args(args);
    cleared_env(&mut c, Path::new("/nonexistent-banger-home"));
    c.env("BANGER_AGENT_BIN", bin_dir().join("banger-agent"));
    c.output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = banger(args);
    assert!(
        out.status.success(),
        "banger {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `banger ARGS` as uid 65534 (not root).
fn as_nobody(args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        BANGER,
    ]);
    c.args(args);
    cleared_env(&mut c, Path::new("/nonexistent-banger-home"))
        .output()
        .unwrap()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A root tree with files of its own where banger installs (they must survive).
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("other-tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        bin.join("other-tool"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/hostname"), "box\n").unwrap();
    dir
}

#[allow(clippy::print_stderr)] // the visible reason for a skip
fn root_or_skip() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root (banger system install writes root-owned files)");
    }
    is_root()
}

#[test]
fn install_then_uninstall_leaves_the_tree_as_it_was_and_install_is_idempotent() {
    if !root_or_skip() {
        return;
    }
    let (user, uid, _) = some_user();
    let dir = tree();
    let root = dir.path().to_str().unwrap();
    let before = listing(dir.path());
    let out = ok(&["system", "install", "--root", root, "--user", &user]);
    assert!(out.contains("no systemctl calls"), "{out}");
    let installed = listing(dir.path());
    for (path, mode) in [
        ("usr/local/bin/banger", 0o755),
        ("usr/local/bin/bangerd", 0o755),
        ("usr/local/libexec/banger/banger-helper", 0o755),
        ("usr/local/libexec/banger/banger-agent", 0o755),
        ("etc/systemd/system/bangerd.service", 0o644),
        ("etc/systemd/system/banger-helper.service", 0o644),
    ] {
        let (m, owner, ..) = &installed[Path::new(path)];
        assert_eq!((m & 0o7777, *owner), (mode, 0), "{path}");
    }
    assert_eq!(
        installed[Path::new("usr/local/bin/bangerd")].3,
        std::fs::read(bin_dir().join("bangerd")).unwrap()
    );
    let unit =
        String::from_utf8_lossy(&installed[Path::new("etc/systemd/system/bangerd.service")].3)
            .into_owned();
    assert!(unit.contains(&format!("\nUser={user}\n")), "{unit}");
    let helper = String::from_utf8_lossy(
        &installed[Path::new("etc/systemd/system/banger-helper.service")].3,
    )
    .into_owned();
    assert!(helper.contains(&format!("--owner {uid} ")), "{helper}");
    // Again: the same tree, byte for byte.
    ok(&["system", "install", "--root", root, "--user", &user]);
    assert_eq!(
        listing(dir.path()),
        installed,
        "a second install changed the tree"
    );
    let out = ok(&["system", "uninstall", "--root", root]);
    assert!(out.contains("--purge"), "{out}");
    assert_eq!(
        listing(dir.path()),
        before,
        "uninstall did not restore the tree"
    );
    // Nothing installed: refused, and still nothing changed.
    let e = err(&banger(&["system", "uninstall", "--root", root]));
    assert!(e.contains("not installed"), "{e}");
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn purge_alone_removes_the_owner_s_vms_and_images() {
    if !root_or_skip() {
        return;
    }
    let (user, _, home) = some_user();
    let dir = tree();
    let root = dir.path().to_str().unwrap();
    let inside = |p: &str| dir.path().join(home.strip_prefix("/").unwrap()).join(p);
    let state = inside(".local/state/banger");
    let config = inside(".config/banger");
    let other = inside(".local/state/other-app");
    for d in [&state, &config, &other] {
        std::fs::create_dir_all(d.join("vms")).unwrap();
        std::fs::write(d.join("vms/disk.img"), "vm").unwrap();
    }
    ok(&["system", "install", "--root", root, "--user", &user]);
    // Without --purge the owner's dirs stay.
    ok(&["system", "uninstall", "--root", root]);
    assert!(state.join("vms/disk.img").exists() && config.exists());
    ok(&["system", "install", "--root", root, "--user", &user]);

    // A VM whose VMM still runs (this test's own pid stands in for it) keeps everything.
    let store = banger_store::Store::open(&state.join("banger.db")).unwrap();
    store
        .insert_image(&banger_store::ImageRow {
            id: "img1".into(),
            name: "base".into(),
            dir: "/d".into(),
            rootfs: "/d/rootfs.ext4".into(),
            kernel: Some("/d/kernel".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        })
        .unwrap();
    let mut vm = banger_store::VmRow {
        id: "vm1".into(),
        name: "busy".into(),
        image_id: "img1".into(),
        state: banger_core::vm::VmState::Running,
        vmm: banger_core::vmm_kind::VmmKind::Qemu,
        cpus: 1,
        memory_mib: 128,
        disk_bytes: 1 << 20,
        work_disk_bytes: 1 << 20,
        nat: false,
        ip: None,
        mac: None,
        tap: None,
        vsock_cid: None,
        pid: Some(std::process::id()),
        vmm_start_time: None,
        dir: "/v".into(),
        error: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        started_at: None,
        origin: banger_core::vm::VmOrigin::Api,
        paused: false,
    };
    store.insert_vm(&vm).unwrap();
    drop(store);
    let before = listing(dir.path());
    let e = err(&banger(&["system", "uninstall", "--root", root, "--purge"]));
    assert!(
        e.contains("VMM still runs (busy)") && e.contains("banger vm stop busy"),
        "{e}"
    );
    assert_eq!(
        listing(dir.path()),
        before,
        "a refused purge changes nothing"
    );
    vm.state = banger_core::vm::VmState::Stopped;
    vm.pid = None;
    let store = banger_store::Store::open(&state.join("banger.db")).unwrap();
    store.update_vm(&vm).unwrap();
    drop(store);

    let out = ok(&["system", "uninstall", "--root", root, "--purge"]);
    assert!(out.contains("purged"), "{out}");
    assert!(!state.exists() && !config.exists(), "{out}");
    assert!(
        other.join("vms/disk.img").exists(),
        "purge went beyond banger's dirs"
    );
}

#[test]
fn adversarial_refusals_change_nothing() {
    if !root_or_skip() {
        return;
    }
    let (user, ..) = some_user();
    let dir = tree();
    let root = dir.path().to_str().unwrap();
    let before = listing(dir.path());
    // Not root.
    let e = err(&as_nobody(&[
        "system", "install", "--root", root, "--user", &user,
    ]));
    assert!(
        e.contains("needs root") && e.contains("sudo banger system install"),
        "{e}"
    );
    for (args, why) in [
        (
            vec![
                "system",
                "install",
                "--root",
                root,
                "--user",
                "no-such-user-bgr",
            ],
            "no user \"no-such-user-bgr\"",
        ),
        (
            vec!["system", "install", "--root", root, "--user", "root"],
            "unprivileged user",
        ),
        (
            vec![
                "system", "install", "--root", root, "--user", &user, "--bridge", "a b",
            ],
            "not an interface name",
        ),
        (
            vec![
                "system",
                "install",
                "--root",
                "/nonexistent-bgr",
                "--user",
                &user,
            ],
            "not an existing directory",
        ),
    ] {
        let e = err(&banger(&args));
        assert!(
            e.contains(why) && e.contains("nothing was changed"),
            "{args:?}: {e}"
        );
    }
    assert_eq!(listing(dir.path()), before);
    assert!(!Path::new("/nonexistent-bgr").exists());
    // Installed, then an uninstall by someone who is not root: refused, nothing removed.
    ok(&["system", "install", "--root", root, "--user", &user]);
    let installed = listing(dir.path());
    let e = err(&as_nobody(&[
        "system",
        "uninstall",
        "--root",
        root,
        "--purge",
    ]));
    assert!(e.contains("needs root"), "{e}");
    assert_eq!(listing(dir.path()), installed);
    ok(&["system", "uninstall", "--root", root]);
    assert_eq!(listing(dir.path()), before);
}

#[test]
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn the_units_pass_systemd_analyze_verify() {
    if !root_or_skip() {
        return;
    }
    let Some(analyze) =
        banger_core::probe::SearchPath::programs(std::env::var_os("PATH").as_deref())
            .find("systemd-analyze")
    else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let units = Path::new("/usr/lib/systemd/system");
    if !units.join("sysinit.target").exists() {
        eprintln!("skipped: no systemd unit files in {}", units.display());
        return;
    }
    let (user, ..) = some_user();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    ok(&["system", "install", "--root", root, "--user", &user]);
    // The targets the units order against, as the host has them.
    std::fs::create_dir_all(dir.path().join("usr/lib/systemd")).unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg(units)
        .arg(dir.path().join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={root}"))
        .args([
            "/etc/systemd/system/bangerd.service",
            "/etc/systemd/system/banger-helper.service",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn status_without_systemd_says_so_and_restart_refuses_clearly() {
    if Path::new("/run/systemd/system").is_dir() {
        // A systemd host: the table shows the live units instead (not this test's subject).
        let out = ok(&["system", "status"]);
        assert!(out.starts_with("UNIT"), "{out}");
        return;
    }
    let out = banger(&["system", "status"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    for col in ["UNIT", "ACTIVE", "PID", "VERSION", "SOCKET"] {
        assert!(lines[0].contains(col), "{table}");
    }
    assert!(
        lines[1].starts_with("banger-helper.service") && lines[2].starts_with("bangerd.service")
    );
    assert!(table.contains("/run/banger/helper.sock"), "{table}");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("systemd is not running here"), "{note}");
    if is_root() {
        let e = err(&banger(&["system", "restart"]));
        assert!(e.contains("systemd is not running here"), "{e}");
        let e = err(&banger(&["system", "install"]));
        assert!(
            e.contains("systemd is not running here") || e.contains("--user"),
            "{e}"
        );
    }
}

/// Waits until `path` exists.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(path.exists(), "{} never appeared", path.display());
}

/// Stops the unprivileged daemon and the helper however the test ends.
struct Unprivileged {
    /// The uid bangerd runs as: a user of this host (`ssh-keygen` needs a passwd entry).
    uid: u32,
    home: Home,
    helper: Option<std::process::Child>,
    helper_socket: PathBuf,
    _helper_dir: tempfile::TempDir,
}

impl Unprivileged {
    /// `banger ARGS` as `uid` in the home's namespace; its daemon asks the helper.
    fn run(&self, args: &[&str]) -> Output {
        let uid = self.uid.to_string();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.home.netns.as_deref().unwrap()]);
        c.args([
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
            BANGER,
        ]);
        c.args(args);
        cleared_env(&mut c, self.home.path());
        c.env("BANGER_HELPER_SOCKET", &self.helper_socket);
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "banger {args:?} as uid {}: {}{}",
            self.uid,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn in_ns(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.home.in_ns(args).stdout).into_owned()
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run(&["vm", "ls", "-aq"])
        })) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.run(&["vm", "delete", id]);
            }
        }
        let _ = self.run(&["daemon", "stop"]);
        if let Some(helper) = &mut self.helper {
            let _ = helper.kill();
            let _ = helper.wait();
        }
    }
}

#[test]
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn bangerd_as_an_unprivileged_user_gets_its_taps_from_the_root_helper() {
    if !is_root() {
        eprintln!("skipped: needs root (the helper runs as root; bangerd as another uid)");
        return;
    }
    let helper_bin = bin_dir().join("banger-helper");
    let fake = bin_dir().join("banger-fake-firecracker");
    assert!(
        helper_bin.exists() && fake.exists() && bin_dir().join("banger-agent").exists(),
        "build the workspace first: cargo build --workspace"
    );
    let (_, uid, _) = some_user();
    let home = Home::in_netns(&format!(
        "firecracker_bin = \"{}\"\nstop_grace_secs = 3\nagent_wait_secs = 15\n",
        fake.display()
    ));
    let ns = home.netns.clone().unwrap();
    // The image's files, made as root, then the whole home given to the daemon's user.
    let src = home.path().join("img-src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/fstab"), "proc /proc proc defaults 0 0\n").unwrap();
    let rootfs = home.path().join("rootfs.ext4");
    assert!(
        host_tool("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&rootfs)
            .arg("64M")
            .status()
            .unwrap()
            .success()
    );
    let kernel = home.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF fake kernel").unwrap();
    let owner = format!("{uid}:{uid}");
    assert!(
        Command::new("chown")
            .args(["-R", &owner])
            .arg(home.path())
            .status()
            .unwrap()
            .success()
    );
    let helper_dir = tempfile::Builder::new()
        .prefix("bgrh")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(helper_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let helper_socket = helper_dir.path().join("helper.sock");
    let mut t = Unprivileged {
        uid,
        home,
        helper: None,
        helper_socket: helper_socket.clone(),
        _helper_dir: helper_dir,
    };
    t.ok(&[
        "image",
        "register",
        "--name",
        "test-img",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    // No helper yet: the daemon serves, but a VM cannot get its TAP, and nothing is left.
    let out = t.run(&["vm", "create", "--name", "early", "--image", "test-img"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("banger system install"),
        "{e}"
    );
    assert_eq!(t.ok(&["vm", "ls", "-aq"]), "");
    // The helper, root, in the same namespace, serving only that uid.
    t.helper = Some(
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&helper_bin)
            .arg("--socket")
            .arg(&helper_socket)
            .args(["--owner", &uid.to_string(), "--bridge", "banger0"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&helper_socket);
    let m = std::fs::metadata(&helper_socket).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o600));

    let status: serde_json::Value =
        serde_json::from_str(&t.ok(&["daemon", "status", "--json"])).unwrap();
    let pid = status["pid"].as_u64().unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == uid.to_string()),
        "bangerd is not running as uid {uid}: {uid_line}"
    );

    t.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
    let vm: serde_json::Value =
        serde_json::from_str(&t.ok(&["vm", "show", "web", "--json"])).unwrap();
    assert_eq!(vm["state"], "running");
    let tap = vm["tap"].as_str().unwrap().to_string();
    let tap_owner = t.in_ns(&["cat", &format!("/sys/class/net/{tap}/owner")]);
    assert_eq!(tap_owner.trim(), uid.to_string(), "TAP {tap}'s owner");
    let master = t.in_ns(&["ip", "-o", "link", "show", "master", "banger0"]);
    assert!(master.contains(&tap), "{master}");

    // A client of another uid is refused: root passes the socket's mode and is refused by
    // SO_PEERCRED; uid 65534 cannot even connect (the socket is the owner's, 0600).
    let refused = banger_net::helper::HelperNetOps::new(&helper_socket)
        .delete_tap(&tap)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("uid 0 may not use"), "{refused}");
    let stranger = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n")
        .arg(&helper_socket)
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("PermissionError"),
        "{stranger:?}"
    );
    assert!(
        t.in_ns(&["ip", "-o", "link", "show"]).contains(&tap),
        "the refusal changed something"
    );

    t.ok(&["vm", "delete", "web"]);
    assert!(
        !t.in_ns(&["ip", "-o", "link", "show"]).contains(&tap),
        "TAP {tap} outlived its VM"
    );
}
