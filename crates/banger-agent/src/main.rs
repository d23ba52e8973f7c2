//! `banger-agent`: the guest agent binary. Parses flags and runs [`banger_agent::server`];
//! started by the kernel as PID 1, it is banger's minimal init instead ([`banger_agent::init`]).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use banger_agent::error_chain;
use banger_agent::host_keys::HostKeyFiles;
use banger_agent::identity::Guest;
use banger_agent::procfs::{DEFAULT_PROC_ROOT, ProcFs};
use banger_agent::server::{self, Agent, ListenPlan, SerialLookup};
use banger_agent_proto::wire::{GUEST_SERIAL_PATH, SERIAL_PORT_NAME};
use banger_core::build::BuildInfo;
use clap::{Parser, Subcommand};

/// banger's guest agent: serves /healthz, /ports, /host-keys and exec sessions over vsock, virtio-serial or a Unix socket.
///
/// With no listener flag it serves vsock port 10789 plus /dev/virtio-ports/banger.agent when
/// that device exists. With any listener flag it serves exactly what the flags name.
#[derive(Debug, Parser)]
#[command(name = "banger-agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Listen on this vsock port (any CID).
    #[arg(long, value_name = "N")]
    vsock_port: Option<u32>,
    /// Listen on this Unix socket path (host test mode); a stale socket there is replaced.
    #[arg(long, value_name = "PATH")]
    listen_unix: Option<PathBuf>,
    /// Serve this virtio-serial character device, reopening it after each disconnect.
    #[arg(long, value_name = "PATH")]
    serial: Option<PathBuf>,
    /// Host test mode only: accept POST /identity, acting only on files under this directory
    /// (as if it were the guest's `/`), never on the running kernel; host keys are read
    /// from its etc/ssh. Without it, host test mode refuses POST /identity.
    #[arg(long, value_name = "DIR", requires = "listen_unix")]
    identity_root: Option<PathBuf>,
    /// Read sockets and processes from this procfs root.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PROC_ROOT)]
    proc_root: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the build identity and exit.
    Version,
}

/// How long the agent waits for its virtio-serial port once the console device is there.
const SERIAL_PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Version) = cli.command {
        println!("banger-agent {}", BuildInfo::current());
        return ExitCode::SUCCESS;
    }

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if std::process::id() == 1 {
        // Started by the kernel (`init=`): banger's minimal init, which runs the agent as its
        // child.
        banger_agent::init::run();
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let plan = ListenPlan::from_flags(
        cli.vsock_port,
        cli.listen_unix,
        cli.serial,
        &SerialLookup {
            link: PathBuf::from(GUEST_SERIAL_PATH),
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            name: SERIAL_PORT_NAME.to_string(),
            wait: SERIAL_PORT_WAIT,
        },
    );
    let procfs = ProcFs::new(cli.proc_root);
    let agent = match cli.identity_root {
        // A sandbox standing in for a guest's `/` (the fake Firecracker's).
        Some(root) => {
            Agent::with_host_keys(procfs, BuildInfo::current(), HostKeyFiles::under(&root))
                .with_identity(Guest {
                    root,
                    kernel: false,
                })
        }
        None if plan.vsock_port.is_some() || plan.serial.is_some() => {
            Agent::new(procfs).with_identity(Guest::system())
        }
        None => Agent::new(procfs),
    };
    let result = runtime.block_on(async {
        let shutdown = server::termination_signal()?;
        server::run(agent, &plan, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
