//! The process module's tests: signals, spawning, waiting, identity and pid reuse, the stop
//! sequence, stale sockets and log tails, against real processes (`sleep`, `true`).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procfs::proc_stat;
use super::*;
use crate::Running;

#[test]
fn signals_parse_like_kill() {
    for (text, number) in [
        ("TERM", libc::SIGTERM),
        ("SIGTERM", libc::SIGTERM),
        ("term", libc::SIGTERM),
        ("sigkill", libc::SIGKILL),
        ("KILL", libc::SIGKILL),
        ("9", libc::SIGKILL),
        (" 15 ", libc::SIGTERM),
        ("INT", libc::SIGINT),
        ("HUP", libc::SIGHUP),
        ("QUIT", libc::SIGQUIT),
        ("USR1", libc::SIGUSR1),
        ("SIGUSR2", libc::SIGUSR2),
        ("CLD", libc::SIGCHLD),
        ("IOT", libc::SIGABRT),
        ("RTMIN", libc::SIGRTMIN()),
        ("SIGRTMIN+2", libc::SIGRTMIN() + 2),
        ("RTMAX-1", libc::SIGRTMAX() - 1),
        ("RTMAX", libc::SIGRTMAX()),
    ] {
        assert_eq!(
            text.parse::<Signal>().map(Signal::raw),
            Ok(number),
            "{text:?}"
        );
    }
    let max = libc::SIGRTMAX();
    assert_eq!(max.to_string().parse::<Signal>().map(Signal::raw), Ok(max));
    for bad in [
        "",
        "0",
        "-9",
        "+9",
        &(max + 1).to_string(),
        "99999999999",
        "TERMINATE",
        "SIG",
        "RTMIN-1",
        "RTMAX+1",
        "RTMIN+",
        "RTMIN+x",
        &format!("RTMIN+{}", max),
    ] {
        assert!(bad.parse::<Signal>().is_err(), "{bad:?} parsed");
    }
    let err = "NOPE".parse::<Signal>().unwrap_err();
    assert!(
        err.to_string().starts_with("unknown signal \"NOPE\""),
        "{err}"
    );
}

#[test]
fn signals_display_their_names() {
    assert_eq!(Signal::TERM.to_string(), "SIGTERM");
    assert_eq!(Signal::KILL.to_string(), "SIGKILL");
    assert_eq!(Signal(libc::SIGABRT).to_string(), "SIGABRT");
    assert_eq!(Signal(libc::SIGCHLD).to_string(), "SIGCHLD");
    assert_eq!(Signal(libc::SIGRTMIN()).to_string(), "SIGRTMIN");
    assert_eq!(Signal(libc::SIGRTMIN() + 3).to_string(), "SIGRTMIN+3");
    for sig in [Signal::HUP, Signal::USR2, Signal(libc::SIGRTMIN() + 1)] {
        assert_eq!(sig.to_string().parse::<Signal>().unwrap(), sig);
    }
    assert_eq!(Signal::from_raw(0), None);
    assert_eq!(Signal::from_raw(9), Some(Signal::KILL));
}

#[test]
fn refuses_pids_that_are_not_one_process() {
    for pid in [0, 1, u32::MAX, 1 << 31] {
        assert!(
            matches!(
                signal(pid, Signal::TERM),
                Err(SignalError::InvalidPid { .. })
            ),
            "{pid}"
        );
    }
    assert!(!alive(0));
    assert!(!alive(u32::MAX));
    assert!(alive(std::process::id()));
}

fn sleeper() -> Spawned {
    let mut cmd = Command::new("sleep");
    cmd.arg("3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_detached(cmd).expect("spawn sleep")
}

#[tokio::test]
async fn detached_child_leads_its_own_session_and_is_reaped() {
    let mut child = sleeper();
    let pid = child.pid();
    assert!(alive(pid));
    // SAFETY: getsid/getpgid only read the process's ids.
    let (sid, pgid) = unsafe { (libc::getsid(pid as i32), libc::getpgid(pid as i32)) };
    assert_eq!(sid, pid as i32);
    assert_eq!(pgid, pid as i32);
    assert_eq!(child.exit(), None);
    assert!(pids_with_arg(OsStr::new("3600")).contains(&pid));

    signal(pid, Signal::TERM).expect("SIGTERM");
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("reaped");
    assert_eq!(exit.to_string(), "signal: 15 (SIGTERM)");
    assert!(!alive(pid));
    assert!(wait_exit(pid, Duration::ZERO).await);
    assert!(matches!(
        signal(pid, Signal::TERM),
        Err(SignalError::NoSuchProcess { .. })
    ));
}

#[tokio::test]
async fn wait_exit_times_out_on_a_live_process() {
    let child = sleeper();
    let started = Instant::now();
    assert!(!wait_exit(child.pid(), Duration::from_millis(120)).await);
    assert!(started.elapsed() >= Duration::from_millis(120));
    signal_group(child.pid(), Signal::KILL).expect("kill group");
    assert!(wait_exit(child.pid(), Duration::from_secs(5)).await);
}

#[tokio::test]
#[allow(
    clippy::zombie_processes,
    reason = "the zombie is made on purpose, and wait_exit reaps it"
)]
async fn zombies_are_dead_and_wait_exit_reaps_them() {
    // A plain std child nobody waits for stays a zombie until reaped.
    let child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_stat(pid).map(|s| s.state) != Some(b'Z') {
        assert!(Instant::now() < deadline, "true never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!alive(pid));
    assert!(wait_exit(pid, Duration::from_secs(1)).await);
    assert_eq!(proc_stat(pid), None, "the zombie was reaped");
}

/// A `sleep 3600` whose `argv[0]` is `dir/vmm`: its command line names `dir` like a VMM's.
fn sleeper_in(dir: &Path) -> Spawned {
    let mut cmd = Command::new("sleep");
    cmd.arg0(dir.join("vmm"))
        .arg("3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_detached(cmd).expect("spawn sleep")
}

fn identity(child: &Spawned, run_dir: &Path) -> VmmIdentity {
    VmmIdentity {
        pid: child.pid(),
        start_time: child.start_time(),
        run_dir: run_dir.to_path_buf(),
    }
}

#[tokio::test]
async fn identify_accepts_the_vmm_and_signals_it_through_its_pidfd() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = sleeper_in(dir.path());
    let id = identity(&child, dir.path());
    assert_eq!(id.start_time, start_time(child.pid()));
    assert!(id.start_time.is_some());
    let process = identify(&id).expect("the VMM is identified");
    assert_eq!(process.pid(), child.pid());
    assert!(!process.exited());
    // Without a recorded start time the command line alone decides.
    identify(&VmmIdentity {
        start_time: None,
        ..id.clone()
    })
    .expect("identified by its command line");
    assert_eq!(pids_in_dir(dir.path()), vec![child.pid()]);
    process
        .signal(Signal::TERM)
        .expect("SIGTERM through the pidfd");
    assert!(process.wait_exit(Duration::from_secs(5)).await);
    assert!(process.exited());
    child.wait().await;
    assert!(matches!(identify(&id), Err(IdentityError::Gone { .. })));
    assert!(matches!(
        process.signal(Signal::KILL),
        Err(SignalError::NoSuchProcess { .. })
    ));
    assert!(pids_in_dir(dir.path()).is_empty());
}

#[tokio::test]
async fn adversarial_pid_reuse_wrong_start_time_is_not_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let child = sleeper_in(dir.path());
    let recorded = child.start_time().unwrap();
    for other in [recorded + 1, recorded.saturating_sub(1), 0, u64::MAX] {
        if other == recorded {
            continue;
        }
        let err = identify(&VmmIdentity {
            start_time: Some(other),
            ..identity(&child, dir.path())
        })
        .unwrap_err();
        assert!(
            matches!(err, IdentityError::StartTime { expected, found, .. } if expected == other && found == recorded),
            "{err}"
        );
        assert!(err.vmm_gone());
        assert!(
            err.to_string().contains("belongs to another process"),
            "{err}"
        );
    }
    assert!(alive(child.pid()), "a mismatch signals nothing");
    signal_group(child.pid(), Signal::KILL).unwrap();
}

#[tokio::test]
async fn adversarial_pid_reuse_wrong_command_line_is_not_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    // An unrelated process: right pid and start time, but it names another directory.
    let child = sleeper_in(other_dir.path());
    let err = identify(&identity(&child, dir.path())).unwrap_err();
    assert!(
        matches!(&err, IdentityError::CommandLine { comm, .. } if comm == "sleep"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    // A directory whose name only extends the run dir's is another directory.
    let longer = PathBuf::from(format!("{}x", other_dir.path().display()));
    assert!(matches!(
        identify(&identity(&child, &longer)),
        Err(IdentityError::CommandLine { .. })
    ));
    // "/" and relative paths name nothing (every absolute path is "in" `/`).
    for bad in [Path::new("/"), Path::new(""), Path::new("tmp")] {
        assert!(
            matches!(
                identify(&identity(&child, bad)),
                Err(IdentityError::CommandLine { .. })
            ),
            "{bad:?}"
        );
        assert!(pids_in_dir(bad).is_empty(), "{bad:?}");
    }
    assert!(pids_in_dir(dir.path()).is_empty());
    // A process that names the run dir but does not lead its own session is no VMM.
    let mut plain = Command::new("sleep")
        .arg0(dir.path().join("vmm"))
        .arg("3600")
        .spawn()
        .unwrap();
    assert!(pids_in_dir(dir.path()).is_empty());
    plain.kill().unwrap();
    plain.wait().unwrap();
    assert!(alive(child.pid()), "a mismatch signals nothing");
    signal_group(child.pid(), Signal::KILL).unwrap();
}

#[tokio::test]
#[allow(
    clippy::zombie_processes,
    reason = "the zombie is made on purpose, and wait_exit reaps it"
)]
async fn adversarial_pid_reuse_dead_and_invalid_pids_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let gone = |pid| VmmIdentity {
        pid,
        start_time: None,
        run_dir: dir.path().to_path_buf(),
    };
    // A zombie is dead, even though its pid is still taken.
    let zombie = Command::new("true").spawn().expect("spawn true");
    let pid = zombie.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_stat(pid).map(|s| s.state) != Some(b'Z') {
        assert!(Instant::now() < deadline, "true never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(
        identify(&gone(pid)),
        Err(IdentityError::Gone { .. })
    ));
    assert!(wait_exit(pid, Duration::from_secs(1)).await);
    // Reaped: no process has that pid any more.
    assert!(matches!(
        identify(&gone(pid)),
        Err(IdentityError::Gone { .. })
    ));
    for bad in [0, 1, u32::MAX, 1 << 31] {
        assert!(
            matches!(identify(&gone(bad)), Err(IdentityError::InvalidPid { .. })),
            "{bad}"
        );
    }
    // This process is alive but is not a VMM of that directory.
    assert!(matches!(
        identify(&gone(std::process::id())),
        Err(IdentityError::CommandLine { .. })
    ));
}

#[tokio::test]
async fn adversarial_pid_reuse_stop_never_signals_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let child = sleeper_in(other_dir.path());
    let vmm = crate::fake::FakeVmm::new();
    let running = Running {
        vm_id: "aaaa000000000009".into(),
        pid: child.pid(),
        start_time: child.start_time(),
        api_socket: dir.path().join("api.sock"),
        agent: crate::AgentEndpoint::Unix(dir.path().join("agent.sock")),
    };
    assert_eq!(
        stop(&vmm, &running, Duration::from_millis(100))
            .await
            .unwrap(),
        StopOutcome::NotRunning
    );
    assert!(
        vmm.calls().is_empty(),
        "not even a shutdown request was sent"
    );
    assert!(alive(child.pid()));
    signal_group(child.pid(), Signal::KILL).unwrap();
}

#[test]
fn spawn_error_names_the_program() {
    let err = spawn_detached(Command::new("/nonexistent/vmm")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/vmm"), "{err}");
}

#[test]
fn cleanup_removes_only_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("api.sock");
    let b = dir.path().join("vsock.sock_10789");
    let _l1 = std::os::unix::net::UnixListener::bind(&a).unwrap();
    let _l2 = std::os::unix::net::UnixListener::bind(&b).unwrap();
    fs::write(dir.path().join("notes.txt"), "keep").unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    assert_eq!(
        cleanup_sockets(dir.path()).unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert!(!a.exists() && !b.exists());
    assert!(dir.path().join("notes.txt").exists());
    assert!(dir.path().join("sub").exists());
    assert!(cleanup_sockets(dir.path()).unwrap().is_empty());
    assert!(
        cleanup_sockets(&dir.path().join("missing"))
            .unwrap()
            .is_empty()
    );
    let err = cleanup_sockets(&dir.path().join("notes.txt")).unwrap_err();
    assert!(err.to_string().contains("notes.txt"), "{err}");
}

#[test]
fn tail_keeps_the_last_whole_lines_after_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
    fs::write(&path, &text).unwrap();
    assert_eq!(tail(&path, 0, 2, 4096), "line 49\nline 50");
    // 20 bytes from the end cut "line 48" in the middle: it is dropped.
    assert_eq!(tail(&path, 0, 10, 20), "line 49\nline 50");
    // Only what was written after `from` counts, and it starts on a whole line.
    let from = text.len() as u64 - 8;
    assert_eq!(tail(&path, from, 10, 4096), "line 50");
    assert_eq!(tail(&path, text.len() as u64, 10, 4096), "");
    // Rotated since `from` was taken: the log restarted, so all of it counts.
    assert_eq!(
        tail(&path, text.len() as u64 + 100, 2, 4096),
        "line 49\nline 50"
    );
    assert_eq!(tail(&dir.path().join("missing"), 0, 5, 100), "");
}
