//! banger-fake-firecracker: takes Firecracker's command line and runs the fake.
//!
//! Flags it accepts, with Firecracker's validation and otherwise no effect
//! beyond what is noted: `--api-sock`, `--id`, `--log-path`, `--level`,
//! `--module`, `--show-level`, `--show-log-origin` (these four configure the
//! fake's Firecracker-style log), `--metrics-path`, `--seccomp-level` (the
//! pre-1.0 flag: 0, 1 or 2), `--seccomp-filter` (must be a readable file),
//! `--no-seccomp`, `--boot-timer`, `--enable-pci`, `--http-api-max-payload-size`,
//! `--mmds-size-limit`, the jailer's `--start-time-us`, `--start-time-cpu-us`,
//! `--parent-cpu-time-us`, and `--version`. Unknown flags are refused with
//! Firecracker's argument-parsing exit status, 153.
//!
//! Environment: `BANGER_FAKE_FC_LOG` (request log file), `BANGER_AGENT_BIN`
//! (the `banger-agent` to run in host mode; else the one next to this
//! executable, else the one on `PATH`).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the binary reports to its own terminal"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use banger_fake_firecracker::state::{LogLevel, LoggerConfig, VmOptions};
use banger_fake_firecracker::vsock::locate_agent;
use banger_fake_firecracker::{
    Config, EXIT_ARG_PARSING, EXIT_BAD_CONFIGURATION, EXIT_GENERIC_ERROR, Exit,
    FIRECRACKER_VERSION, HTTP_MAX_PAYLOAD_SIZE, validate_instance_id,
};
use clap::Parser;
use clap::error::ErrorKind;

/// Firecracker's command line, as far as the fake takes it.
#[derive(Debug, Parser)]
#[command(
    name = "banger-fake-firecracker",
    about = "A Firecracker test double: Firecracker's API on a Unix socket, a fake console, hybrid vsock to a host-mode banger-agent",
    disable_version_flag = true
)]
struct Cli {
    /// Path to unix domain socket used by the API.
    #[arg(long, default_value = "/run/firecracker.socket")]
    api_sock: PathBuf,
    /// MicroVM unique identifier.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Path to a fifo or a file used for configuring the logger on startup.
    #[arg(long)]
    log_path: Option<PathBuf>,
    /// Set the logger level.
    #[arg(long)]
    level: Option<String>,
    /// Set the logger module filter.
    #[arg(long)]
    module: Option<String>,
    /// Whether or not to output the level in the logs.
    #[arg(long)]
    show_level: bool,
    /// Whether or not to include the file path and line number of the log's origin.
    #[arg(long)]
    show_log_origin: bool,
    /// Path to a fifo or a file used for configuring the metrics on startup.
    #[arg(long)]
    metrics_path: Option<PathBuf>,
    /// Legacy seccomp level (0, 1 or 2).
    #[arg(long)]
    seccomp_level: Option<String>,
    /// Path to a custom seccomp filter.
    #[arg(long, conflicts_with = "no_seccomp")]
    seccomp_filter: Option<PathBuf>,
    /// Start without seccomp filtering.
    #[arg(long)]
    no_seccomp: bool,
    /// Load the boot timer device.
    #[arg(long)]
    boot_timer: bool,
    /// Enable PCIe support.
    #[arg(long)]
    enable_pci: bool,
    /// Http API request payload max size, in bytes.
    #[arg(long, default_value_t = HTTP_MAX_PAYLOAD_SIZE)]
    http_api_max_payload_size: usize,
    /// Mmds data store limit, in bytes.
    #[arg(long)]
    mmds_size_limit: Option<usize>,
    /// Process start time (wall clock, microseconds).
    #[arg(long)]
    start_time_us: Option<u64>,
    /// Process start CPU time (microseconds).
    #[arg(long)]
    start_time_cpu_us: Option<u64>,
    /// Parent process CPU time (microseconds).
    #[arg(long)]
    parent_cpu_time_us: Option<u64>,
    /// Print the binary version number.
    #[arg(long)]
    version: bool,
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("Error: {message}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("Arguments parsing error: {e}");
            return ExitCode::from(EXIT_ARG_PARSING);
        }
    };
    if cli.version {
        println!("Firecracker v{FIRECRACKER_VERSION}\n");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = validate_instance_id(&cli.id) {
        return fail(EXIT_GENERIC_ERROR, &format!("Invalid instance ID: {e}"));
    }
    if let Some(level) = &cli.seccomp_level
        && !["0", "1", "2"].contains(&level.as_str())
    {
        return fail(
            EXIT_ARG_PARSING,
            &format!("'{level}' isn't a valid value for 'seccomp-level'. Must  be 0, 1 or 2."),
        );
    }
    if let Some(filter) = &cli.seccomp_filter
        && let Err(e) = std::fs::File::open(filter)
    {
        return fail(
            EXIT_GENERIC_ERROR,
            &format!(
                "Seccomp error: Filter file open error: {}: {e}",
                filter.display()
            ),
        );
    }
    let level = match cli.level.as_deref().map(|l| (l, LogLevel::parse(l))) {
        None => LogLevel::Info,
        Some((_, Some(level))) => level,
        Some((text, None)) => {
            return fail(
                EXIT_BAD_CONFIGURATION,
                &format!(
                    "Invalid value for logger level: {text}.Possible values: [Error, Warning, Info, Debug]"
                ),
            );
        }
    };
    let logger = cli.log_path.clone().map(|path| LoggerConfig {
        path: Some(path),
        level,
        show_level: cli.show_level,
        show_log_origin: cli.show_log_origin,
    });
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from));
    let explicit = std::env::var_os("BANGER_AGENT_BIN").map(PathBuf::from);
    let path_var = std::env::var_os("PATH");
    let config = Config {
        api_sock: cli.api_sock,
        request_log: std::env::var_os("BANGER_FAKE_FC_LOG").map(PathBuf::from),
        agent_bin: locate_agent(explicit.as_deref(), exe_dir.as_deref(), path_var.as_deref()),
        console: Box::new(std::io::stdout()),
        vm: VmOptions {
            id: cli.id,
            logger,
            metrics_path: cli.metrics_path,
            mmds_size_limit: cli.mmds_size_limit.unwrap_or(cli.http_api_max_payload_size),
        },
        max_payload: cli.http_api_max_payload_size,
    };
    match banger_fake_firecracker::run(config) {
        Ok(Exit::Code(code)) => ExitCode::from(code),
        Ok(Exit::Signal(signal)) => {
            // SAFETY: restores the default action of a signal for this process
            // and raises it; no handler code or shared memory is involved.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                libc::raise(signal);
            }
            ExitCode::from(128 + u8::try_from(signal).unwrap_or(0))
        }
        Err(e) => fail(
            EXIT_GENERIC_ERROR,
            &format!("RunWithApiError error: {}", banger_core::error::chain(&e)),
        ),
    }
}
