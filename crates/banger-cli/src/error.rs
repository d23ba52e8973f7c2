//! The CLI's errors and how they are shown: `banger: <message>` with every cause in the chain
//! ([`banger_core::error::chain`]: no message repeats its source, so each cause shows once),
//! the daemon's error kind as a short word and its op id dimmed at the end.

use std::path::PathBuf;

use banger_api::{ApiError, ClientError};
use banger_core::config::ConfigError;
use banger_core::error::chain;
use banger_core::layout::LayoutError;
use banger_core::probe::AgentError;

use crate::escape;
use crate::ui::{StdoutClosed, Style, paint};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Boxed: the client's errors carry paths and context, and `CliError` is returned everywhere.
    #[error(transparent)]
    Client(Box<ClientError>),
    #[error("cannot find the bangerd binary next to {exe} or on PATH")]
    DaemonBinaryMissing { exe: PathBuf },
    #[error("cannot start the daemon {bin}")]
    DaemonSpawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon did not come up within {secs} s ({detail}); its output is in {log}")]
    DaemonStartTimeout {
        secs: u64,
        detail: String,
        log: PathBuf,
    },
    #[error("the daemon exited during start-up ({status}): {stderr}\n(full output: {log})")]
    DaemonExited {
        status: String,
        stderr: String,
        log: PathBuf,
    },
    #[error("the old daemon (pid {pid}) did not stop within {secs} s")]
    DaemonStuck { pid: u32, secs: u64 },
    #[error(transparent)]
    Private(#[from] banger_core::private::PrivateError),
    #[error("{var}={value:?} is invalid: {why}")]
    BadEnv {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error("cannot prepare directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write output")]
    Output(#[source] std::io::Error),
    /// Stdout's reader went away (`banger ... | head -1`): not a failure, the program stops
    /// quietly with status 0.
    #[error(transparent)]
    StdoutClosed(#[from] StdoutClosed),
    #[error("doctor found {0} failing check(s)")]
    DoctorFailed(usize),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("make-bundle failed")]
    Bundle(#[source] Box<banger_image::ImageError>),
    #[error("{failed} of {total} failed")]
    Partial { failed: usize, total: usize },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ssh to VM {vm} failed: {detail}")]
    Ssh { vm: String, detail: String },
    #[error(
        "VM {vm}: sshd did not answer on {ip}:22 within {secs}s. The guest's sshd is the likely cause; see: banger vm logs {vm}. The VM is still running (kept for inspection; delete it with: banger vm delete {vm})"
    )]
    SshTimeout { vm: String, ip: String, secs: u64 },
    #[error("exec in VM {vm}")]
    Exec {
        vm: String,
        #[source]
        source: banger_agent_proto::client::exec::ExecError,
    },
    #[error("cannot set the terminal to raw mode")]
    Terminal(#[source] std::io::Error),
    #[error("cannot watch for signals to forward")]
    Signals(#[source] std::io::Error),
    /// A workspace PATH banger does not ship (found before any daemon call).
    #[error(transparent)]
    Inspect(Box<banger_workspace::InspectError>),
    #[error(transparent)]
    System(#[from] crate::system::SystemError),
    #[error(
        "the system daemon (bangerd.service) does not answer at {}; see `banger system status`",
        socket.display()
    )]
    SystemDaemonDown {
        socket: PathBuf,
        #[source]
        source: Box<ClientError>,
    },
    #[error("cannot write {path}")]
    OutputFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `banger mcp` needs the owner's home (host paths must be inside it).
    #[error(
        "banger mcp needs HOME set to an absolute path (host paths an agent gives must be inside it)"
    )]
    McpNoHome,
    #[error("cannot tell the current directory")]
    Cwd(#[source] std::io::Error),
    #[error("cannot tell where the banger binary is, for the MCP config")]
    NoExe,
    #[error(transparent)]
    Mcp(#[from] banger_mcp::ServeError),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(Box::new(e))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if StdoutClosed::is(&e) {
            Self::StdoutClosed(StdoutClosed)
        } else {
            Self::Output(e)
        }
    }
}

impl CliError {
    /// The process exit status for this error: 0 when stdout's reader went away, else 1. Every
    /// variant is named, so a new one must choose.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::StdoutClosed(_) => 0,
            Self::Layout(_)
            | Self::Config(_)
            | Self::Client(_)
            | Self::DaemonBinaryMissing { .. }
            | Self::DaemonSpawn { .. }
            | Self::DaemonStartTimeout { .. }
            | Self::DaemonExited { .. }
            | Self::DaemonStuck { .. }
            | Self::Private(_)
            | Self::BadEnv { .. }
            | Self::Dir { .. }
            | Self::Runtime(_)
            | Self::Output(_)
            | Self::DoctorFailed(_)
            | Self::Usage(_)
            | Self::Agent(_)
            | Self::Bundle(_)
            | Self::Partial { .. }
            | Self::Spawn { .. }
            | Self::Ssh { .. }
            | Self::SshTimeout { .. }
            | Self::Terminal(_)
            | Self::Signals(_)
            | Self::Inspect(_)
            | Self::System(_)
            | Self::SystemDaemonDown { .. }
            | Self::OutputFile { .. }
            | Self::McpNoHome
            | Self::Cwd(_)
            | Self::NoExe
            | Self::Mcp(_) => 1,
            // A command the guest cannot start exits as a shell's would (127, 126).
            Self::Exec { source, .. } => match source {
                banger_agent_proto::client::exec::ExecError::Spawn { kind, .. } => {
                    u8::try_from(kind.shell_code()).unwrap_or(1)
                }
                _ => 1,
            },
        }
    }

    /// The daemon's operation id, when the daemon answered with an error that has one (only a
    /// client error can carry one).
    pub fn op_id(&self) -> Option<&str> {
        let Self::Client(client) = self else {
            return None;
        };
        match client.as_ref() {
            ClientError::Api(ApiError { op_id, .. }) => {
                Some(op_id.as_str()).filter(|id| !id.is_empty())
            }
            ClientError::Connect { .. }
            | ClientError::Http { .. }
            | ClientError::Decode { .. }
            | ClientError::NoAnswer(_) => None,
        }
    }
}

/// Renders the whole error chain once: `banger: msg: cause: cause (op id)`. Messages may
/// quote a guest (an agent's error, the tail of a console log), so the text is escaped
/// ([`escape::Mode::Text`]: lines are kept, control sequences are not).
pub fn render(err: &CliError, color: bool) -> String {
    let msg = format!("banger: {}", chain(err));
    let mut msg = escape::escape(&msg, escape::Mode::Text).into_owned();
    if let Some(op) = err.op_id() {
        msg.push(' ');
        msg.push_str(&paint(color, Style::Dim, &format!("(op {op})")));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::ErrorKind;

    #[test]
    fn api_errors_show_kind_word_and_dim_op() {
        let mut api = ApiError::new(ErrorKind::NotFound, "vm \"web\" does not exist");
        api.op_id = "0123456789ab".into();
        let err = CliError::from(ClientError::Api(api));
        assert_eq!(
            render(&err, false),
            "banger: not found: vm \"web\" does not exist (op 0123456789ab)"
        );
        assert!(render(&err, true).ends_with("\x1b[2m(op 0123456789ab)\x1b[0m"));
    }

    #[test]
    fn adversarial_guest_text_in_an_error_is_escaped() {
        let api = ApiError::new(
            ErrorKind::Unavailable,
            "VM \"web\": agent GET /ports: answered 500: \x1b[2J\x1b]0;pwned\x07gone\nline 2",
        );
        let text = render(&CliError::from(ClientError::Api(api)), false);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        assert!(
            text.ends_with("\\x1b[2J\\x1b]0;pwned\\x07gone\nline 2"),
            "{text}"
        );
    }

    #[test]
    fn exit_code_is_zero_only_for_a_closed_stdout() {
        assert_eq!(CliError::StdoutClosed(StdoutClosed).exit_code(), 0);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 1);
        let api = CliError::from(ClientError::Api(ApiError::new(ErrorKind::Internal, "boom")));
        assert_eq!(api.exit_code(), 1);
        assert_eq!(api.op_id(), None, "an empty op id is no op id");
    }

    #[test]
    fn transparent_wrappers_show_their_cause_once() {
        // CliError::Client and ClientError::Api are both transparent.
        let err = CliError::Private(banger_core::private::PrivateError::Open {
            path: "/s/bangerd.stderr".into(),
            source: std::io::Error::from_raw_os_error(libc::ELOOP),
        });
        let cause = std::io::Error::from_raw_os_error(libc::ELOOP).to_string();
        let text = render(&err, false);
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        assert!(
            text.starts_with("banger: cannot open /s/bangerd.stderr: "),
            "{text}"
        );
    }

    #[test]
    fn causes_are_chained_once() {
        let err = CliError::DaemonSpawn {
            bin: "/x/bangerd".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"),
        };
        assert_eq!(
            render(&err, false),
            "banger: cannot start the daemon /x/bangerd: No such file"
        );
    }
}
