//! Running the host's `git` through banger-core's [`CommandRunner`] seam: every call is
//! `git -C DIR ARGS...`, and a failure names the command line, its exit code and what git
//! said.

use std::path::Path;
use std::sync::Arc;

use banger_core::quote::{DEFAULT_QUOTE, quote_prefix};
use banger_core::runner::{CommandOutput, CommandRunner, SpawnError};

/// A git command failed to start or exited non-zero.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// `git` ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line that ran.
        command: String,
        /// `exit N` or `killed by a signal`.
        status: String,
        /// The start of git's stderr.
        stderr: String,
    },
}

impl GitError {
    fn failed(out: &CommandOutput) -> Self {
        GitError::Failed {
            command: out.command.clone(),
            status: match out.code {
                Some(code) => format!("exit {code}"),
                None => "killed by a signal".to_string(),
            },
            stderr: quote_prefix(out.stderr.trim().as_bytes(), DEFAULT_QUOTE),
        }
    }
}

/// The host's git: a runner and the program to run (`git`, found in `$PATH` by the runner,
/// or a path).
#[derive(Debug, Clone)]
pub struct Git {
    runner: Arc<dyn CommandRunner>,
    program: String,
}

impl Git {
    /// `git` from the runner's search path.
    pub fn new(runner: Arc<dyn CommandRunner>) -> Self {
        Self::with_program(runner, "git")
    }

    /// A given git program (a bare name or a path).
    pub fn with_program(runner: Arc<dyn CommandRunner>, program: impl Into<String>) -> Self {
        Self {
            runner,
            program: program.into(),
        }
    }

    /// Runs `git -C dir args...` and returns its output whatever the exit code.
    pub(crate) fn output(&self, dir: &Path, args: &[&str]) -> Result<CommandOutput, GitError> {
        let mut argv = vec!["-C".to_string(), dir.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Ok(self.runner.run(&self.program, &argv)?)
    }

    /// Runs `git -C dir args...`; a non-zero exit is an error. Returns stdout.
    pub(crate) fn run(&self, dir: &Path, args: &[&str]) -> Result<String, GitError> {
        let out = self.output(dir, args)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(GitError::failed(&out))
        }
    }

    /// Like [`Git::run`], but exit 1 (git's "not found" for `config --get`, `rev-parse
    /// --verify -q`, `symbolic-ref -q`) is `None`; the answer is trimmed.
    pub(crate) fn query(&self, dir: &Path, args: &[&str]) -> Result<Option<String>, GitError> {
        let out = self.output(dir, args)?;
        match out.code {
            Some(0) => Ok(Some(out.stdout.trim_end_matches('\n').to_string())),
            Some(1) => Ok(None),
            _ => Err(GitError::failed(&out)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::runner::fake::{FakeRunner, Reply};

    #[test]
    fn every_call_is_git_dash_c_dir() {
        let fake = Arc::new(FakeRunner::new());
        fake.on("git -C /r rev-parse HEAD", Reply::Ok("abc\n".into()));
        let git = Git::new(fake.clone());
        assert_eq!(
            git.run(Path::new("/r"), &["rev-parse", "HEAD"]).unwrap(),
            "abc\n"
        );
        assert_eq!(fake.calls(), ["git -C /r rev-parse HEAD"]);
    }

    #[test]
    fn exit_one_is_none_for_queries_and_other_failures_name_the_command() {
        let fake = Arc::new(FakeRunner::new());
        fake.on("git -C /r config --get x", Reply::Fail(1, String::new()));
        fake.on("git -C /r status", Reply::Fail(128, "fatal: boom\n".into()));
        let git = Git::new(fake);
        assert_eq!(
            git.query(Path::new("/r"), &["config", "--get", "x"])
                .unwrap(),
            None
        );
        let err = git.query(Path::new("/r"), &["status"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`git -C /r status` failed (exit 128): fatal: boom"
        );
    }
}
