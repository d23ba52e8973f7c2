//! The command line, as clap derive structs. Every group's long help carries runnable examples.

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version = banger_version(),
    about = "Disposable, hardware-isolated Linux machines with your repo inside",
    long_about = "banger gives you a disposable Linux machine (a microVM) in one command, with \
your git repository copied inside, and long-lived VMs to ssh into, exec in, and export work \
back from as a patch. A per-user daemon (bangerd) owns all state; it starts on demand.",
    after_long_help = "Examples:\n  banger version\n  banger doctor\n  banger daemon status\n  banger completion bash > /etc/bash_completion.d/banger",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

fn banger_version() -> String {
    let b = banger_core::build::BuildInfo::current();
    format!(
        "{} (commit {}, built {})",
        b.version,
        b.commit,
        b.build_time()
    )
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version, commit and build time of this banger.
    #[command(after_long_help = "Examples:\n  banger version\n  banger version --json")]
    Version(JsonFlag),
    /// Inspect or stop the background daemon (bangerd).
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Check this host for what banger needs (read-only: changes nothing).
    #[command(
        long_about = "Runs read-only checks and prints one PASS, WARN or FAIL line for each, \
with the command that fixes a FAIL. It never starts the daemon and opens the store read-only: \
diagnostics never create, migrate or write anything. Exits 1 when any check fails.",
        after_long_help = "Examples:\n  banger doctor\n  banger doctor --json"
    )]
    Doctor(JsonFlag),
    /// Print a shell completion script.
    #[command(
        after_long_help = "Examples:\n  banger completion bash > ~/.local/share/bash-completion/completions/banger\n  banger completion zsh > \"${fpath[1]}/_banger\"\n  banger completion fish > ~/.config/fish/completions/banger.fish"
    )]
    Completion {
        /// The shell to generate for.
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show the running daemon (starting it if needed): build, pid, socket, paths, listeners.
    #[command(after_long_help = "Examples:\n  banger daemon status\n  banger daemon status --json")]
    Status(JsonFlag),
    /// Stop the running daemon. VMs keep running; the next banger command starts it again.
    #[command(after_long_help = "Examples:\n  banger daemon stop")]
    Stop,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
