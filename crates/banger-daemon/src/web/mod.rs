//! The local web UI: server-rendered pages over the daemon's own services, served by
//! `bangerd` on a TCP listener (config `web`, `web_listen`; default `127.0.0.1:7777`).
//!
//! Every page calls the same service functions the JSON routes call ([`crate::vms`],
//! [`crate::images`], [`crate::kernels`], [`crate::bootstrap`], [`crate::workspaces`]); the
//! UI has no second implementation of any operation, and an error shows the daemon's own
//! message and the request's op id.
//!
//! - [`guard`]: who may ask: the Host allow-list, the secret token traded for a cookie, the
//!   Origin check and the CSRF token on every state-changing request, and the headers every
//!   answer carries (a strict Content-Security-Policy, no CORS).
//! - [`jobs`]: long operations started from a page (create, image bootstrap): they belong to
//!   the daemon, not to the request, report their stages live (server-sent events) and are
//!   cancelled by the page's cancel button (closing the page does not cancel them).
//! - [`handlers`]: the routes; [`pages`]: the HTML (maud, every value escaped);
//!   [`resources`]: the dashboard's resource cards, through the [`resources::HostInfo`] seam.
//!
//! The listener is optional: a refused address (not loopback without `web_allow_remote`) or a
//! port already taken is logged and reported in `daemon status` (`web`), and the daemon
//! serves everything else. It stops with the daemon.

pub mod guard;
pub mod handlers;
pub mod jobs;
pub mod pages;
pub mod resources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use banger_api::types::WebListener;
use banger_core::config::Config;

use crate::state::AppState;

/// Why the web UI is not served.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "web_listen {address} is not a loopback address: the web UI is served there only with \
         web_allow_remote = true in the config (it stays gated by its token)"
    )]
    NotLoopback { address: SocketAddr },
    #[error("cannot listen on web_listen {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The address the UI may listen on under `config`.
pub fn listen_address(config: &Config) -> Result<SocketAddr, WebError> {
    let address = config.web_listen;
    if !address.ip().is_loopback() && !config.web_allow_remote {
        return Err(WebError::NotLoopback { address });
    }
    Ok(address)
}

/// What the web service is handed besides the daemon state.
#[derive(Debug, Clone)]
pub struct WebParts {
    /// The host's CPUs, memory and filesystems, for the resource cards.
    pub host: Arc<dyn resources::HostInfo>,
    /// The `banger` program whose `doctor --json` the host page shows (next to `bangerd`);
    /// `None`: the page says doctor is not available.
    pub doctor: Option<PathBuf>,
}

/// The web service: its secrets, the names it answers to, its jobs.
#[derive(Debug)]
pub struct Web {
    pub state: Arc<AppState>,
    pub parts: WebParts,
    pub guard: guard::Guard,
    pub jobs: jobs::Jobs,
}

/// Binds the UI's listener as config says and serves it in the background until the
/// returned task is aborted; records the listener (or why there is none) in the daemon
/// status. `None` when the UI is off or not served.
pub async fn start(state: Arc<AppState>, parts: WebParts) -> Option<tokio::task::JoinHandle<()>> {
    if !state.opts.config.web {
        state.set_web_listener(WebListener::Off);
        return None;
    }
    let bound = match listen_address(&state.opts.config) {
        Ok(address) => tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| WebError::Bind { address, source }),
        Err(e) => Err(e),
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            let error = banger_core::error::chain(&e);
            tracing::warn!(%error, "web UI not served");
            state.set_web_listener(WebListener::Failed { error });
            return None;
        }
    };
    let address = match listener.local_addr() {
        Ok(a) => a,
        Err(source) => {
            let error = banger_core::error::chain(&WebError::Bind {
                address: state.opts.config.web_listen,
                source,
            });
            state.set_web_listener(WebListener::Failed { error });
            return None;
        }
    };
    let web = Arc::new(Web::new(state.clone(), parts, address));
    let url = web.guard.base_url();
    state.set_web_listener(WebListener::Listening {
        address,
        login_url: format!("{url}/?token={}", web.guard.token()),
        url,
    });
    tracing::info!(%address, "web UI listening");
    let app = handlers::router(web);
    Some(tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(e) = crate::server::serve_router_with(
            listener,
            app,
            forever,
            crate::server::ServeLimits::default(),
        )
        .await
        {
            tracing::warn!(error = %e, "web UI stopped");
        }
    }))
}

impl Web {
    /// The service for a listener bound at `address`, with fresh secrets.
    pub fn new(state: Arc<AppState>, parts: WebParts, address: SocketAddr) -> Self {
        let guard = guard::Guard::new(address, &state.opts.config.web_hostnames);
        Self {
            state,
            parts,
            guard,
            jobs: jobs::Jobs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_remote_is_allowed() {
        let with = |listen: &str, remote: bool| Config {
            web_listen: listen.parse().unwrap(),
            web_allow_remote: remote,
            ..Config::default()
        };
        assert!(listen_address(&with("127.0.0.1:7777", false)).is_ok());
        assert!(listen_address(&with("[::1]:7777", false)).is_ok());
        let e = listen_address(&with("0.0.0.0:7777", false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0.0.0.0:7777") && e.contains("web_allow_remote = true"),
            "{e}"
        );
        assert!(listen_address(&with("0.0.0.0:7777", true)).is_ok());
    }
}
