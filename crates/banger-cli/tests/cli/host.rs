//! The host's side of banger's isolation: its dirs and files belong to the user (a squatted or
//! group-writable dir, a symlinked lock, socket, log or stderr file is refused and the file it
//! points at is left alone), the CLI never hangs on a silent daemon, and `doctor` writes
//! nothing. Every case checks canaries and that no daemon was left behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;

/// A file outside the home whose content and mode must never change.
struct Canary {
    _dir: tempfile::TempDir,
    path: PathBuf,
    uid: u32,
}

impl Canary {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canary");
        std::fs::write(&path, "precious\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let uid = std::fs::metadata(&path).unwrap().uid();
        Self {
            _dir: dir,
            path,
            uid,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read_to_string(&self.path).unwrap(), "precious\n");
        let m = std::fs::metadata(&self.path).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644, "canary mode changed");
        assert_eq!(m.uid(), self.uid, "canary owner changed");
        assert_eq!(
            std::fs::read_dir(self.path.parent().unwrap())
                .unwrap()
                .count(),
            1,
            "something was created next to the canary"
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn assert_no_daemon(home: &Home) {
    let needle = home.path().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !pids_mentioning(&needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = pids_mentioning(&needle)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "bangerd")
        })
        .collect();
    assert!(left.is_empty(), "daemon(s) left running: {left:?}");
}

/// `bangerd` run directly (as the CLI would), with this home.
fn bangerd(home: &Home) -> Output {
    cleared_env(&mut Command::new(bin_dir().join("bangerd")), home.path())
        .output()
        .unwrap()
}

fn private_dir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn adversarial_runtime_dir_squatted_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to make a directory owned by another user");
        return;
    }
    let home = Home::new();
    let canary = Canary::new();
    let run = home.path().join("run");
    private_dir(&run);
    // The squatter's planted symlinks where banger's lock and socket go.
    symlink(&canary.path, run.join("bangerd.lock")).unwrap();
    symlink(&canary.path, run.join("bangerd.sock")).unwrap();
    std::os::unix::fs::lchown(&run, Some(65534), Some(65534)).unwrap();
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "banger: runtime dir {} is owned by uid 65534 (mode 0700), not by you (uid 0)",
            run.display()
        )),
        "{err}"
    );
    assert!(err.contains(&format!("rm -rf {}", run.display())), "{err}");
    // The daemon refuses it on its own too.
    let d = bangerd(&home);
    assert_eq!(d.status.code(), Some(1));
    assert!(
        stderr(&d).contains("is owned by uid 65534"),
        "{}",
        stderr(&d)
    );
    // doctor says so, and changes nothing.
    let doc = home.run(&["doctor"]);
    let doc = String::from_utf8_lossy(&doc.stdout).to_string();
    assert!(
        doc.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("dirs") && l.contains("uid 65534")),
        "{doc}"
    );
    canary.assert_untouched();
    assert_eq!(std::fs::metadata(&run).unwrap().uid(), 65534);
    assert_eq!(names(&run), ["bangerd.lock", "bangerd.sock"]);
    assert!(!home.path().join("state/banger.db").exists());
    assert_no_daemon(&home);
}

#[test]
fn adversarial_group_or_other_writable_state_dir_is_refused() {
    for mode in [0o770, 0o777, 0o1777] {
        let home = Home::new();
        let state = home.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("canary"), "x").unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = home.run(&["daemon", "status"]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "banger: state dir {} (owner uid 0) has mode {mode:04o}, writable by group or others; fix it with: chmod 700 {}",
                state.display(),
                state.display()
            )) || !is_root(),
            "{err}"
        );
        assert!(err.contains("chmod 700"), "{err}");
        let d = bangerd(&home);
        assert_eq!(d.status.code(), Some(1));
        assert!(
            stderr(&d).contains("writable by group or others"),
            "{}",
            stderr(&d)
        );
        // Nothing was created or repaired behind the user's back.
        assert_eq!(names(home.path()), ["state"]);
        assert_eq!(names(&state), ["canary"]);
        assert_eq!(
            std::fs::metadata(&state).unwrap().mode() & 0o7777,
            mode,
            "mode left as the user set it"
        );
        assert_no_daemon(&home);
    }
}

#[test]
fn adversarial_symlinked_lock_file_never_touches_its_target() {
    let home = Home::new();
    let canary = Canary::new();
    private_dir(&home.path().join("run"));
    let lock = home.path().join("run/bangerd.lock");
    symlink(&canary.path, &lock).unwrap();
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("banger: the daemon exited during start-up"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "cannot open lock file: {} is a symbolic link, not a regular file",
            lock.display()
        )),
        "{err}"
    );
    canary.assert_untouched();
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_symlink());
    assert!(!home.socket().exists());
    assert_no_daemon(&home);
}

#[test]
fn adversarial_symlinked_socket_is_neither_used_nor_replaced() {
    let home = Home::new();
    let canary = Canary::new();
    private_dir(&home.path().join("run"));
    // Another process's socket, reachable through a symlink at banger's socket path.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("impostor.sock");
    let impostor = UnixListener::bind(&other).unwrap();
    impostor.set_nonblocking(true).unwrap();
    symlink(&other, home.socket()).unwrap();
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "banger: {} is a symbolic link, not the daemon's socket; remove it",
            home.socket().display()
        )),
        "{err}"
    );
    assert!(
        matches!(impostor.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI connected to the impostor"
    );
    // The daemon, started directly, refuses the path instead of unlinking or following it.
    let d = bangerd(&home);
    assert_eq!(d.status.code(), Some(1));
    assert!(stderr(&d).contains("is a symbolic link"), "{}", stderr(&d));
    assert!(
        std::fs::symlink_metadata(home.socket())
            .unwrap()
            .is_symlink()
    );
    // A symlink to a plain file is no better.
    std::fs::remove_file(home.socket()).unwrap();
    symlink(&canary.path, home.socket()).unwrap();
    assert_eq!(home.run(&["daemon", "status"]).status.code(), Some(1));
    canary.assert_untouched();
    assert_no_daemon(&home);
}

#[test]
fn adversarial_symlinked_stderr_and_log_files_are_refused() {
    let home = Home::new();
    let canary = Canary::new();
    let state = home.path().join("state");
    private_dir(&state);
    // The CLI's file for the daemon's stderr.
    symlink(&canary.path, state.join("bangerd.stderr")).unwrap();
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "banger: {} is a symbolic link, not a regular file",
            state.join("bangerd.stderr").display()
        )),
        "{err}"
    );
    assert_no_daemon(&home);
    // The daemon's JSON log.
    std::fs::remove_file(state.join("bangerd.stderr")).unwrap();
    symlink(&canary.path, state.join("bangerd.log")).unwrap();
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("banger: the daemon exited during start-up")
            && err.contains(&format!(
                "cannot start logging to {}",
                state.join("bangerd.log").display()
            ))
            && err.contains("is a symbolic link"),
        "{err}"
    );
    // A hard link to the canary is refused as well.
    std::fs::remove_file(state.join("bangerd.log")).unwrap();
    let same_fs = state.join("victim");
    std::fs::write(&same_fs, "victim\n").unwrap();
    std::fs::hard_link(&same_fs, state.join("bangerd.log")).unwrap();
    let out = home.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("2 hard links"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&same_fs).unwrap(), "victim\n");
    canary.assert_untouched();
    assert!(!home.socket().exists());
    assert_no_daemon(&home);
}

/// Resumes a stopped process even when the test fails.
struct Resume(u64);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn adversarial_sigstopped_daemon_gives_a_clear_error_in_bounded_time() {
    let home = Home::new();
    let pid = home.status()["pid"].as_u64().unwrap();
    let st = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let resume = Resume(pid);
    let log = home.path().join("state/bangerd.log");
    for args in [
        &["daemon", "status"][..],
        &["vm", "list"],
        &["daemon", "stop"],
        &["image", "list"],
    ] {
        let t0 = Instant::now();
        let out = home
            .cmd(args)
            .env("BANGER_CLIENT_TIMEOUT", "1")
            .output()
            .unwrap();
        let took = t0.elapsed();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(took < Duration::from_secs(8), "{args:?} took {took:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "banger: the daemon (pid {pid}) accepted GET /v1/status on {} but did not answer within 1 s",
                home.socket().display()
            )),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(&format!("its log is {}", log.display())),
            "{err}"
        );
        assert!(err.contains(&format!("kill -CONT {pid}")), "{err}");
    }
    // doctor reports it in bounded time as well.
    let t0 = Instant::now();
    let doc = home
        .cmd(&["doctor"])
        .env("BANGER_CLIENT_TIMEOUT", "1")
        .output()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(8));
    let doc = String::from_utf8_lossy(&doc.stdout).to_string();
    assert!(
        doc.lines().any(|l| l.starts_with("FAIL")
            && l.contains("daemon")
            && l.contains(&format!("pid {pid}"))),
        "{doc}"
    );
    // A bad timeout value is a clear error, not a silent default.
    let out = home
        .cmd(&["daemon", "status"])
        .env("BANGER_CLIENT_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(
        stderr(&out).starts_with("banger: BANGER_CLIENT_TIMEOUT=\"soon\" is invalid"),
        "{}",
        stderr(&out)
    );
    // Nothing replaced it meanwhile, and once resumed it is the same daemon.
    drop(resume);
    assert_eq!(home.status()["pid"].as_u64().unwrap(), pid);
}

/// Reads one HTTP request; returns its path.
fn read_request(conn: &mut std::os::unix::net::UnixStream) -> String {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    line.split_whitespace().nth(1).unwrap_or("").to_string()
}

/// A stand-in daemon on the home's socket: answers `/v1/status` as this build (so the CLI
/// keeps it), and `serve_other` handles every other request.
fn fake_daemon(home: &Home, serve_other: fn(&mut std::os::unix::net::UnixStream)) {
    private_dir(&home.path().join("run"));
    let listener = UnixListener::bind(home.socket()).unwrap();
    let build: serde_json::Value = serde_json::from_str(&home.ok(&["version", "--json"])).unwrap();
    let status = serde_json::json!({
        "build": {"version": build["version"], "commit": build["commit"], "build_epoch": build["build_epoch"]},
        "pid": std::process::id(), "socket": home.socket(), "state_dir": "/x", "config_file": "/x",
        "log_file": "/x", "started_at": 1,
        "ops": {"in_flight": 0, "completed": 0, "cancelled": 0}
    })
    .to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let status = status.clone();
            std::thread::spawn(move || {
                if read_request(&mut conn) == "/v1/status" {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{status}",
                        status.len()
                    );
                } else {
                    serve_other(&mut conn);
                }
            });
        }
    });
}

#[test]
fn adversarial_daemon_that_accepts_and_never_answers_on_the_start_path() {
    let home = Home::new();
    private_dir(&home.path().join("run"));
    // Accepts every connection and holds it open without a word.
    let listener = UnixListener::bind(home.socket()).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c.unwrap());
        }
    });
    let t0 = Instant::now();
    let out = home
        .cmd(&["vm", "list"])
        .env("BANGER_CLIENT_TIMEOUT", "500ms")
        .output()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "banger: the daemon (pid {}) accepted GET /v1/status",
            std::process::id()
        )) && err.contains("within 500 ms"),
        "{err}"
    );
    // It did not start a second daemon beside the silent one, nor create the state dir.
    assert_no_daemon(&home);
    assert_eq!(names(home.path()), ["run"]);
    // So that the home's clean-up does not wait on the silent listener.
    std::fs::remove_file(home.socket()).unwrap();
}

#[test]
fn adversarial_stream_that_goes_silent_fails_clearly() {
    let home = Home::new();
    fake_daemon(&home, |conn| {
        let line =
            b"{\"event\":\"stage\",\"stage\":\"allocate\",\"detail\":\"\",\"elapsed_ms\":1}\n";
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
            line.len()
        );
        let _ = conn.write_all(line);
        let _ = conn.write_all(b"\r\n");
        let _ = conn.flush();
        std::thread::sleep(Duration::from_secs(600));
    });
    let t0 = Instant::now();
    let out = home
        .cmd(&["vm", "create", "--name", "quiet"])
        .env("BANGER_CLIENT_TIMEOUT", "1")
        .output()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("allocate"), "the stage was shown: {err}");
    assert!(
        err.contains(&format!(
            "banger: the daemon (pid {}) started answering POST /v1/vms",
            std::process::id()
        )) && err.contains("sent nothing for 1 s"),
        "{err}"
    );
    // The stand-in reports this test's pid: keep the home's clean-up from signalling it.
    std::fs::remove_file(home.socket()).unwrap();
}

/// A kernel tree the daemon imports (it writes a row).
fn import_kernel(home: &Home) {
    let tree = home.path().join("kpkg");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::create_dir_all(tree.join("lib/modules/6.9.1-test/kernel")).unwrap();
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    std::fs::write(tree.join("boot/vmlinux-6.9.1-test"), &elf).unwrap();
    std::fs::write(tree.join("lib/modules/6.9.1-test/modules.dep"), b"").unwrap();
    home.ok(&["kernel", "import", "k1", "--from", tree.to_str().unwrap()]);
}

/// A file's bytes, to compare before and after.
fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The state dir's entries with their sizes and modification times.
fn snapshot(dir: &Path) -> Vec<(String, u64, i64, i64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
            )
        })
        .collect();
    v.sort();
    v
}

fn doctor_kernel_line(home: &Home) -> String {
    let out = home.run(&["doctor"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("kernel"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn adversarial_doctor_with_the_daemon_stopped_leaves_no_wal_or_shm() {
    let home = Home::new();
    import_kernel(&home);
    home.ok(&["daemon", "stop"]);
    let state = home.path().join("state");
    let db = state.join("banger.db");
    assert!(db.exists());
    assert!(!state.join("banger.db-wal").exists() && !state.join("banger.db-shm").exists());
    let hash = bytes(&db);
    let before = snapshot(&state);
    let run_before = names(&home.path().join("run"));
    for args in [&["doctor"][..], &["doctor", "--json"]] {
        let out = home.run(args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.contains("k1 (6.9.1-test)"),
            "doctor read the store: {text}"
        );
        assert!(
            !state.join("banger.db-wal").exists(),
            "{args:?} made a -wal"
        );
        assert!(
            !state.join("banger.db-shm").exists(),
            "{args:?} made a -shm"
        );
    }
    assert_eq!(bytes(&db), hash, "database not byte-identical");
    assert_eq!(snapshot(&state), before, "state dir changed");
    assert_eq!(names(&home.path().join("run")), run_before);
    assert_no_daemon(&home);
}

#[test]
fn adversarial_doctor_with_a_running_or_killed_daemon_reads_the_wal_and_creates_nothing() {
    let home = Home::new();
    import_kernel(&home);
    let state = home.path().join("state");
    // Running: the row may be only in the WAL; doctor must see it and create nothing.
    assert!(state.join("banger.db-wal").exists());
    let names_before = names(&state);
    assert!(doctor_kernel_line(&home).contains("k1 (6.9.1-test)"));
    assert_eq!(names(&state), names_before);
    // Killed: nobody checkpointed the WAL.
    let pid = home.status()["pid"].as_u64().unwrap();
    kill9_and_wait(pid);
    assert!(state.join("banger.db-wal").exists());
    let db_hash = bytes(&state.join("banger.db"));
    let wal_hash = bytes(&state.join("banger.db-wal"));
    assert!(doctor_kernel_line(&home).contains("k1 (6.9.1-test)"));
    assert_eq!(names(&state), names_before);
    assert_eq!(bytes(&state.join("banger.db")), db_hash);
    assert_eq!(bytes(&state.join("banger.db-wal")), wal_hash);
}

/// `doctor --json`'s row for the check called `name`.
fn doctor_check(home: &Home, name: &str) -> serde_json::Value {
    let out = home.run(&["doctor", "--json"]);
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    checks
        .into_iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name:?} check: {}", stderr(&out)))
}

#[test]
fn doctor_checks_the_binaries_banger_was_handed() {
    let mut home = Home::new();
    // The agent banger was pointed at is the one checked: here a dynamically linked one
    // (banger itself), which guests could not run.
    home.set_env("BANGER_AGENT_BIN", BANGER);
    let agent = doctor_check(&home, "banger-agent binary");
    let detail = agent["detail"].as_str().unwrap();
    assert_eq!(agent["status"], "FAIL", "{agent}");
    assert!(
        detail.contains(BANGER) && detail.contains("dynamically linked"),
        "{agent}"
    );
    // A VMM override that cannot run is reported as such, naming the variable, with its cause
    // once.
    home.set_env("BANGER_QEMU_BIN", "/nonexistent/qemu");
    let qemu = doctor_check(&home, "qemu");
    let detail = qemu["detail"].as_str().unwrap();
    assert_eq!(qemu["status"], "WARN", "{qemu}");
    assert!(
        detail.starts_with("BANGER_QEMU_BIN=/nonexistent/qemu cannot be used: "),
        "{qemu}"
    );
    assert_eq!(
        detail.matches("No such file or directory").count(),
        1,
        "{qemu}"
    );
}
