//! Running host commands (`ip`, `nft`, `mkfs.ext4`, `debugfs`...): the seam between banger's
//! libraries and the host's programs.
//!
//! [`CommandRunner`] is the trait; [`SystemRunner`] runs real processes, optionally
//! inside a named network namespace (`ip netns exec NS ...`), which is how the
//! integration tests exercise the real commands without touching the host's network.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::probe::SearchPath;

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The command line that actually ran, shell-quoted, for error messages
    /// (includes the `ip netns exec NS` prefix when there is one).
    pub command: String,
    /// The exit code; `None` when the process was killed by a signal.
    pub code: Option<i32>,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
}

impl CommandOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A command could not be started at all (program missing, not executable...).
#[derive(Debug, thiserror::Error)]
#[error("could not run `{command}`")]
pub struct SpawnError {
    /// The command line that was attempted.
    pub command: String,
    /// Why it could not be started.
    #[source]
    pub source: io::Error,
}

/// Runs a program with arguments and collects its output.
///
/// A non-zero exit is not an error at this level: it is reported in
/// [`CommandOutput::code`] so the caller can decide (and build an error with
/// context). Implementations must not use a shell.
pub trait CommandRunner: Send + Sync + std::fmt::Debug {
    /// Runs `program` (a bare name such as `ip`, or a path) with `args`, stdin
    /// closed, and waits for it.
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, SpawnError>;
}

/// Runs real processes, in the caller's network namespace or in a named one.
///
/// A bare program name (`ip`) is looked up in the runner's [`SearchPath`], which its creator
/// hands it: the daemon and the CLI build it from the `PATH` they read
/// ([`SearchPath::programs`]); this crate never reads the environment.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    netns: Option<String>,
    path: SearchPath,
}

impl Default for SystemRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemRunner {
    /// Runs commands in the caller's own network namespace, finding bare program names in
    /// the [`SYSTEM_DIRS`](crate::probe::SYSTEM_DIRS) only; [`with_path`](Self::with_path)
    /// hands it a `PATH` to search first.
    pub fn new() -> Self {
        Self {
            netns: None,
            path: SearchPath::programs(None),
        }
    }

    /// Runs every command as `ip netns exec NETNS <program> <args>`; the namespace
    /// must exist (`ip netns add NETNS`).
    pub fn in_netns(netns: impl Into<String>) -> Self {
        Self {
            netns: Some(netns.into()),
            ..Self::new()
        }
    }

    /// Finds bare program names in `path` (normally [`SearchPath::programs`] of the caller's
    /// `PATH`).
    pub fn with_path(mut self, path: SearchPath) -> Self {
        self.path = path;
        self
    }

    /// The network namespace commands run in, if not the caller's.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Where bare program names are looked up.
    pub fn path(&self) -> &SearchPath {
        &self.path
    }

    /// `program` as it is run: a name with a `/` as is, a bare name found in the search path,
    /// and an unknown name unchanged (spawning it then fails with a "not found" error that
    /// names it).
    fn resolve(&self, program: &str) -> PathBuf {
        if program.contains('/') {
            return PathBuf::from(program);
        }
        self.path
            .find(program)
            .unwrap_or_else(|| PathBuf::from(program))
    }
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, SpawnError> {
        let program = self.resolve(program);
        let (exe, argv): (PathBuf, Vec<String>) = match &self.netns {
            None => (program, args.to_vec()),
            Some(ns) => {
                let mut argv = vec![
                    "netns".to_string(),
                    "exec".to_string(),
                    ns.clone(),
                    program.to_string_lossy().into_owned(),
                ];
                argv.extend(args.iter().cloned());
                (self.resolve("ip"), argv)
            }
        };
        let command = render_command(&exe.to_string_lossy(), &argv);
        tracing::debug!(%command, "running");
        let output = Command::new(&exe)
            .args(&argv)
            // Stable, untranslated messages in errors.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SpawnError {
                command: command.clone(),
                source,
            })?;
        let out = CommandOutput {
            command,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        if !out.success() {
            tracing::debug!(command = %out.command, code = ?out.code, stderr = %out.stderr.trim(), "command failed");
        }
        Ok(out)
    }
}

/// Renders a command line for humans, single-quoting arguments that a shell would
/// split or interpret, so that it can be pasted into a terminal.
pub(crate) fn render_command(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(crate::quote::shell_word)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! A hand-written [`CommandRunner`] for tests (of this crate and of the crates that
    //! run commands through it, with the `fake` feature from their `[dev-dependencies]`):
    //! records every command line and answers from a script.

    use std::collections::{HashMap, VecDeque};
    use std::io;
    use std::sync::Mutex;

    use super::{CommandOutput, CommandRunner, SpawnError, render_command};

    /// A scripted answer.
    #[derive(Debug, Clone)]
    pub enum Reply {
        /// Exit 0 with this stdout.
        Ok(String),
        /// Exit with this code and stderr.
        Fail(i32, String),
        /// The program cannot be started.
        NotFound,
    }

    /// Records calls as rendered command lines (`ip link set dev x up`); answers
    /// each with the next scripted reply for that exact line (the last one repeats),
    /// or with success and empty output when nothing is scripted.
    #[derive(Debug, Default)]
    pub struct FakeRunner {
        calls: Mutex<Vec<String>>,
        replies: Mutex<HashMap<String, VecDeque<Reply>>>,
    }

    impl FakeRunner {
        pub fn new() -> Self {
            Self::default()
        }

        /// Scripts `reply` for the command line `command`.
        pub fn on(&self, command: &str, reply: Reply) -> &Self {
            self.replies
                .lock()
                .unwrap()
                .entry(command.to_string())
                .or_default()
                .push_back(reply);
            self
        }

        /// Every command line run so far, in order.
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl CommandRunner for FakeRunner {
        fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, SpawnError> {
            let command = render_command(program, args);
            self.calls.lock().unwrap().push(command.clone());
            let reply = {
                let mut replies = self.replies.lock().unwrap();
                match replies.get_mut(&command) {
                    Some(queue) if queue.len() > 1 => queue.pop_front(),
                    Some(queue) => queue.front().cloned(),
                    None => None,
                }
            };
            let (code, stdout, stderr) = match reply {
                None => (0, String::new(), String::new()),
                Some(Reply::Ok(stdout)) => (0, stdout, String::new()),
                Some(Reply::Fail(code, stderr)) => (code, String::new(), stderr),
                Some(Reply::NotFound) => {
                    return Err(SpawnError {
                        command,
                        source: io::Error::from(io::ErrorKind::NotFound),
                    });
                }
            };
            Ok(CommandOutput {
                command,
                code: Some(code),
                stdout,
                stderr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_plain_and_quoted_words() {
        assert_eq!(
            render_command("ip", &args(&["link", "set", "dev", "bgr1", "up"])),
            "ip link set dev bgr1 up"
        );
        assert_eq!(
            render_command(
                "nft",
                &args(&[
                    "add",
                    "chain",
                    "ip",
                    "banger",
                    "postrouting",
                    "{ type nat; }"
                ])
            ),
            "nft add chain ip banger postrouting '{ type nat; }'"
        );
        assert_eq!(
            render_command("x", &args(&["", "it's", "\"q\""])),
            "x '' 'it'\\''s' '\"q\"'"
        );
        assert_eq!(
            render_command("ip", &args(&["addr", "add", "172.30.0.1/24", "brd", "+"])),
            "ip addr add 172.30.0.1/24 brd +"
        );
    }

    #[test]
    fn resolves_bare_names_and_keeps_paths() {
        let runner = SystemRunner::new();
        assert_eq!(runner.resolve("/opt/x/ip"), PathBuf::from("/opt/x/ip"));
        let sh = runner.resolve("sh");
        assert!(sh.is_absolute(), "{sh:?}");
        assert_eq!(
            runner.resolve("banger-no-such-program"),
            PathBuf::from("banger-no-such-program")
        );
    }

    #[test]
    fn bare_names_are_found_on_the_path_it_is_handed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("banger-test-tool");
        std::fs::write(&tool, "#!/bin/sh\necho \"from $0\"\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Not on the system dirs: unknown to a runner that was handed no PATH.
        let err = SystemRunner::new()
            .run("banger-test-tool", &[])
            .unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        let runner =
            SystemRunner::new().with_path(SearchPath::programs(Some(dir.path().as_os_str())));
        let out = runner.run("banger-test-tool", &[]).unwrap();
        assert_eq!(out.stdout, format!("from {}\n", tool.display()));
        // The system dirs still follow the handed PATH.
        assert!(runner.resolve("sh").is_absolute());
    }

    #[test]
    fn system_runner_reports_exit_code_and_output() {
        let runner = SystemRunner::new();
        let out = runner
            .run("sh", &args(&["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert!(!out.success());
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(
            out.command
                .ends_with("sh -c 'echo out; echo err >&2; exit 3'"),
            "{}",
            out.command
        );
    }

    #[test]
    fn system_runner_reports_spawn_failure_with_command() {
        let err = SystemRunner::new()
            .run("banger-no-such-program", &args(&["--flag"]))
            .unwrap_err();
        assert_eq!(err.command, "banger-no-such-program --flag");
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            crate::error::chain(&err),
            "could not run `banger-no-such-program --flag`: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn in_netns_keeps_the_name() {
        assert_eq!(SystemRunner::in_netns("ns1").netns(), Some("ns1"));
        assert_eq!(SystemRunner::new().netns(), None);
    }
}
