//! The binary's entry point: arguments, logging to stderr (the journal under systemd), the
//! socket (a stale one replaced, then owned by the owner with mode 0600: only the owner, and
//! root, can even connect), and [`crate::serve`] with the real network operations.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use banger_core::probe::SearchPath;
use banger_net::helper::Policy;
use banger_net::{DirectNetOps, SystemRunner};
use clap::Parser;

/// The socket's default place (systemd's `RuntimeDirectory=banger`).
pub const DEFAULT_SOCKET: &str = "/run/banger/helper.sock";

#[derive(Debug, Parser)]
#[command(
    name = "banger-helper",
    version = banger_core::build::BuildInfo::current().to_string(),
    about = "banger's root helper: bridge, TAP and NAT operations for one user's unprivileged bangerd",
    long_about = "banger's root helper: serves typed bridge, TAP and NAT operations (no shell, no paths) \
                  on a Unix socket that only the owner's uid may use (checked with SO_PEERCRED). \
                  Every request is logged to stderr."
)]
struct Args {
    /// The socket to serve on.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The uid of the user whose bangerd is served (and who owns its TAP devices).
    #[arg(long)]
    owner: u32,
    /// The only bridge that may be made or used.
    #[arg(long, default_value = "banger0")]
    bridge: String,
}

/// Why the helper could not start or stopped.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot prepare the socket {}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bridge name {name:?} is not an interface name")]
    Bridge {
        name: String,
        #[source]
        source: banger_net::plan::IfNameError,
    },
    #[error("serving on {} failed", path.display())]
    Serve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses the arguments, then serves until killed or the listener fails.
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("banger-helper: {}", banger_core::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), EntryError> {
    banger_net::plan::validate_ifname(&args.bridge).map_err(|source| EntryError::Bridge {
        name: args.bridge.clone(),
        source,
    })?;
    let path = args.socket.clone();
    let socket_err = |source| EntryError::Socket {
        path: path.clone(),
        source,
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path).map_err(socket_err)?,
        Ok(_) => return Err(EntryError::NotASocket(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err(e)),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(socket_err)?;
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(&path).map_err(socket_err)?;
        std::os::unix::fs::chown(&path, Some(args.owner), None).map_err(socket_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(socket_err)?;
        let runner = SystemRunner::new().with_path(SearchPath::programs(
            std::env::var_os("PATH").as_deref(),
        ));
        tracing::info!(socket = %path.display(), owner = args.owner, bridge = %args.bridge, "banger-helper serving");
        let policy = Policy {
            owner_uid: args.owner,
            bridge: args.bridge,
        };
        crate::serve(listener, policy, Arc::new(DirectNetOps::new(runner)))
            .await
            .map_err(|source| EntryError::Serve {
                path: path.clone(),
                source,
            })
    })
}
