//! `banger vm exec` and `banger vm run -- CMD` through the guest agent, against the fake
//! Firecracker with the host-mode agent (the command runs on this host, as root).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A home with one running VM `box`.
fn home_with_box() -> Option<Home> {
    let home = Home::for_vms("")?;
    home.ok(&["vm", "create", "--name", "box", "--image", "test-img"]);
    Some(home)
}

/// `banger vm exec box -T -- words...`, stdin closed.
fn exec(home: &Home, words: &[&str]) -> Output {
    let mut args = vec!["vm", "exec", "box", "-T", "--"];
    args.extend_from_slice(words);
    home.cmd(&args).stdin(Stdio::null()).output().unwrap()
}

fn sha256(data: &[u8]) -> String {
    let mut child = host_tool("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    stdout(&out).split_whitespace().next().unwrap().to_string()
}

#[test]
fn exec_streams_stdio_and_exits_with_the_guest_status() {
    let Some(home) = home_with_box() else {
        return;
    };
    // Exit statuses verbatim, and a signal death as 128 + n.
    for (words, code) in [
        (&["true"][..], 0),
        (&["false"], 1),
        (&["sh", "-c", "exit 7"], 7),
        (&["kill -9 $$"], 137),
    ] {
        let out = exec(&home, words);
        assert_eq!(out.status.code(), Some(code), "{words:?}: {}", stderr(&out));
    }

    // stdout and stderr are kept apart.
    let out = exec(&home, &["echo out; echo err >&2"]);
    assert_eq!(
        (stdout(&out).as_str(), stderr(&out).as_str()),
        ("out\n", "err\n")
    );

    // Several words are an argv, passed exactly; one word with shell syntax is a shell line.
    let out = exec(&home, &["printf", "%s|", "a b", "it's", "$HOME"]);
    assert_eq!(stdout(&out), "a b|it's|$HOME|", "{}", stderr(&out));
    let file = home.path().join("kept");
    let line = format!("echo kept > {} && pwd", file.display());
    let out = exec(&home, &[&line]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\n");
    // With no workspace, commands run in /root.
    assert_eq!(stdout(&out), "/root\n");

    // 10 MiB through stdin and back out of stdout, intact.
    let data: Vec<u8> = (0u32..10 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = home
        .cmd(&["vm", "exec", "box", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || input.write_all(&sent).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha256(&out.stdout), sha256(&data));

    // A command that does not exist exits as a shell's would, saying why.
    let out = exec(&home, &["no-such-program-here"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("banger: exec in VM box: "),
        "{}",
        stderr(&out)
    );

    // The round trip, reported by the test output (goal: a median at most 20 ms).
    let mut times: Vec<Duration> = (0..15)
        .map(|_| {
            let t = Instant::now();
            assert!(exec(&home, &["true"]).status.success());
            t.elapsed()
        })
        .collect();
    times.sort();
    #[allow(clippy::print_stderr)]
    {
        eprintln!("vm exec -- true: median {:?}", times[times.len() / 2]);
    }

    // A stopped VM is a clear error.
    home.ok(&["vm", "stop", "box"]);
    let out = exec(&home, &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("VM \"box\" is not running"),
        "{}",
        stderr(&out)
    );
    let out = home.run(&["vm", "exec", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn ctrl_c_and_sigterm_on_the_cli_reach_the_guest_process() {
    let Some(home) = home_with_box() else {
        return;
    };
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        // `exec`: the process that printed `ready` is the one that sleeps. With `sh -c 'echo
        // ready; sleep 30'` a signal landing between the shell's fork and the child's exec
        // is lost by dash about one time in four (the test then waited the whole 30 s).
        let mut child = home
            .cmd(&["vm", "exec", "box", "-T", "--", "echo ready; exec sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let t = Instant::now();
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = child.wait().unwrap();
        // The CLI lived on and reported the guest process's death by that signal.
        assert_eq!(status.code(), Some(code), "signal {signal}: {status:?}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_pty_session_sees_a_terminal_of_the_cli_s_size() {
    let Some(home) = home_with_box() else {
        return;
    };
    // -t without a terminal on the CLI's side: a terminal in the guest, 24x80.
    let out = home
        .cmd(&["vm", "exec", "box", "-t", "--", "tty && stty size"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    assert!(text.ends_with("24 80\r\n"), "{text:?}");
    // -T: no terminal, whatever stdin is.
    let out = exec(&home, &["tty"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    // On a terminal (script's), the guest's terminal has its size, and the terminal is as it
    // was before the session (raw mode undone).
    let out = on_a_terminal(
        &home,
        "stty rows 33 cols 101; stty -a > before;",
        &["vm", "exec", "box", "--", "stty size"],
        "; stty -a > after; cmp before after && echo restored",
    );
    assert!(stdout(&out).contains("33 101"), "{:?}", stdout(&out));
    assert!(stdout(&out).contains("restored"), "{:?}", stdout(&out));

    // A resize of the CLI's terminal during the session (SIGWINCH) reaches the guest's.
    let out = on_a_terminal(
        &home,
        "stty rows 33 cols 101; (sleep 0.5; stty rows 50 cols 120 < /dev/tty) &",
        &["vm", "exec", "box", "--", "sleep 3; stty size"],
        "",
    );
    assert!(stdout(&out).contains("50 120"), "{:?}", stdout(&out));
}

/// Runs `before`, banger with `args`, then `after` in `sh` on a terminal of `script`'s.
fn on_a_terminal(home: &Home, before: &str, args: &[&str], after: &str) -> Output {
    let cmd = home.cmd(args);
    let mut line = format!(
        "{before} {}",
        shell_word(cmd.get_program().to_str().unwrap())
    );
    for a in cmd.get_args() {
        line.push_str(&format!(" {}", shell_word(a.to_str().unwrap())));
    }
    line.push_str(after);
    let mut script = Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .current_dir(home.path());
    cleared_env(&mut script, home.path());
    let out = script.stdin(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    out
}

/// `word` quoted for `sh`.
fn shell_word(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[test]
fn vm_run_with_a_command_runs_it_through_the_agent_and_removes_the_vm() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    // No sshd in the fake guest: the command goes through the agent.
    let out = home
        .cmd(&[
            "vm", "run", "--rm", "--name", "once", "--image", "test-img", "--", "exit 7",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("deleted once"), "{}", stderr(&out));
    assert!(home.vms().is_empty());
}
