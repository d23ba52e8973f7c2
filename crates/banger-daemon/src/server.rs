//! The HTTP API on the daemon's Unix socket.
//!
//! Every route is wrapped by [`instrument`]: it gives the request an operation id, runs the
//! handler inside a tracing span carrying that id, sets the `x-banger-op` response header,
//! writes the id into error bodies, and tracks the operation (see [`crate::ops`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_api::error::{ApiError, ErrorBody, ErrorKind};
use banger_api::types::{DaemonStatus, ShutdownReply};
use banger_api::{API_PREFIX, OP_ID_HEADER};
use banger_store::Store;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tracing::Instrument;

use std::net::Ipv4Addr;

use banger_core::runner::CommandRunner;
use banger_net::{NetOps, Subnet};
use banger_vmm::{Vmm, VmmKind};

use crate::DaemonOptions;
use crate::ops::{OpTracker, new_op_id};
use crate::routes;
use crate::ssh::SshKey;
use crate::vms::Locks;

/// Shared daemon state handed to every handler.
#[derive(Debug)]
pub struct AppState {
    pub opts: DaemonOptions,
    pub store: Mutex<Store>,
    pub ops: Arc<OpTracker>,
    pub started_at: u64,
    /// The seams to the host: VMM backend, network operations, command runner.
    pub host: Host,
    pub locks: Locks,
    pub subnet: Subnet,
    pub ssh: SshKey,
    pub guest_dns: Vec<Ipv4Addr>,
    /// The user VMMs and TAPs belong to.
    pub uid: u32,
    shutdown: Notify,
}

/// Everything the daemon touches on the host, injected at construction.
#[derive(Debug, Clone)]
pub struct Host {
    /// The VMM backends this host can run, and the one new VMs get by default.
    pub vmms: Vmms,
    pub net: Arc<dyn NetOps>,
    pub runner: Arc<dyn CommandRunner>,
}

/// The available VMM backends. A VM keeps the backend it was created with.
#[derive(Debug, Clone)]
pub struct Vmms {
    available: Vec<Arc<dyn Vmm>>,
    /// Why a backend is missing, for error messages.
    missing: Vec<(VmmKind, String)>,
    default: VmmKind,
}

impl Vmms {
    pub fn new(
        available: Vec<Arc<dyn Vmm>>,
        missing: Vec<(VmmKind, String)>,
        default: VmmKind,
    ) -> Self {
        Self {
            available,
            missing,
            default,
        }
    }

    /// One backend, the default.
    pub fn single(vmm: Arc<dyn Vmm>) -> Self {
        let default = vmm.kind();
        Self::new(vec![vmm], Vec::new(), default)
    }

    pub fn default_kind(&self) -> VmmKind {
        self.default
    }

    pub fn kinds(&self) -> Vec<VmmKind> {
        self.available.iter().map(|v| v.kind()).collect()
    }

    /// The backend of `kind`, or why it is unavailable.
    pub fn get(&self, kind: VmmKind) -> Result<&Arc<dyn Vmm>, String> {
        if let Some(v) = self.available.iter().find(|v| v.kind() == kind) {
            return Ok(v);
        }
        Err(self
            .missing
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| format!("the {kind} backend is not available on this host")))
    }
}

/// What [`AppState::new`] needs besides the options and the store.
#[derive(Debug)]
pub struct Parts {
    pub host: Host,
    pub subnet: Subnet,
    pub ssh: SshKey,
    pub guest_dns: Vec<Ipv4Addr>,
    pub uid: u32,
}

impl AppState {
    pub fn new(opts: DaemonOptions, store: Store, parts: Parts) -> Self {
        Self {
            opts,
            store: Mutex::new(store),
            ops: Arc::new(OpTracker::default()),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            host: parts.host,
            locks: Locks::default(),
            subnet: parts.subnet,
            ssh: parts.ssh,
            guest_dns: parts.guest_dns,
            uid: parts.uid,
            shutdown: Notify::new(),
        }
    }

    /// Asks the server to stop accepting requests and exit.
    pub fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }
}

/// An error leaving a handler: becomes `{"error": {...}}` with the kind's HTTP status.
#[derive(Debug)]
pub struct HandlerError(pub ApiError);

impl<E: Into<ApiError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.0.kind == ErrorKind::Internal {
            tracing::error!(error = %self.0.message, "request failed");
        } else {
            tracing::info!(kind = ?self.0.kind, error = %self.0.message, "request refused");
        }
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

/// The daemon's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let ops = state.ops.clone();
    let api = Router::new()
        .route("/status", get(status))
        .route("/shutdown", post(shutdown))
        .route("/ssh", get(routes::ssh_info))
        .route("/vms", get(routes::list_vms).post(routes::create_vm))
        .route("/vms/actions", post(routes::vm_actions))
        .route("/vms/{reference}", get(routes::show_vm))
        .route("/vms/{reference}/health", get(routes::vm_health))
        .route("/vms/{reference}/ping", get(routes::vm_ping))
        .route("/vms/{reference}/ports", get(routes::vm_ports))
        .route("/vms/{reference}/stats", get(routes::vm_stats))
        .route(
            "/kernels",
            get(routes::list_kernels).post(routes::import_kernel),
        )
        .route(
            "/kernels/{name}",
            get(routes::show_kernel).delete(routes::delete_kernel),
        )
        .route(
            "/images",
            get(routes::list_images).post(routes::register_image),
        )
        .route("/images/bootstrap", post(routes::bootstrap_image))
        .route("/images/import", post(routes::import_bundle))
        .route(
            "/images/{reference}",
            get(routes::show_image).delete(routes::delete_image),
        )
        .fallback(not_found)
        .with_state(state);
    instrument(Router::new().nest(API_PREFIX, api).fallback(not_found), ops)
}

/// Wraps `router` with operation ids, spans, the op header and op accounting.
pub fn instrument(router: Router, ops: Arc<OpTracker>) -> Router {
    router.layer(middleware::from_fn_with_state(ops, op_middleware))
}

async fn op_middleware(
    State(ops): State<Arc<OpTracker>>,
    mut req: Request,
    next: Next,
) -> Response {
    let op_id = new_op_id();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(OpId(op_id.clone()));
    let span = tracing::info_span!("op", op_id = %op_id, method = %method, path = %path);
    let guard = ops.begin(op_id.clone(), method, path);
    let resp = async {
        tracing::debug!("request");
        let resp = next.run(req).await;
        tracing::debug!(status = resp.status().as_u16(), "response");
        resp
    }
    .instrument(span)
    .await;
    let mut resp = if resp.status().is_client_error() || resp.status().is_server_error() {
        stamp_error_body(resp, &op_id).await
    } else {
        resp
    };
    guard.finish();
    if let Ok(v) = HeaderValue::from_str(&op_id) {
        resp.headers_mut().insert(OP_ID_HEADER, v);
    }
    resp
}

/// Writes the op id into an error body produced by a handler.
async fn stamp_error_body(resp: Response, op_id: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (parts.status, "error body unreadable").into_response();
    };
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(mut eb) => {
            eb.error.op_id = op_id.to_string();
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            (parts, Json(eb)).into_response()
        }
        Err(_) => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// The operation id of the current request (a request extension).
#[derive(Debug, Clone)]
pub struct OpId(pub String);

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> HandlerError {
    HandlerError(ApiError::new(
        ErrorKind::NotFound,
        format!("no such API route: {method} {}", uri.path()),
    ))
}

async fn status(State(state): State<Arc<AppState>>) -> Json<DaemonStatus> {
    let l = &state.opts.layout;
    Json(DaemonStatus {
        build: state.opts.build.clone(),
        pid: std::process::id(),
        socket: l.socket_path(),
        state_dir: l.state_dir.clone(),
        config_file: l.config_file(),
        log_file: l.log_file(),
        started_at: state.started_at,
        listeners: Vec::new(),
        ops: state.ops.counts(),
        config_warnings: state.opts.config_warnings.clone(),
    })
}

async fn shutdown(State(state): State<Arc<AppState>>) -> Json<ShutdownReply> {
    tracing::info!("shutdown requested over the API");
    state.request_shutdown();
    Json(ShutdownReply {
        pid: std::process::id(),
    })
}

/// Serves the daemon's router until shutdown is requested (API, SIGTERM or SIGINT).
pub async fn serve(listener: UnixListener, state: Arc<AppState>) -> std::io::Result<()> {
    let app = router(state.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = state.shutdown.notified() => {}
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    serve_router(listener, app, stop).await
}

/// Serves any router on a Unix listener until `stop` completes.
pub async fn serve_router(
    listener: UnixListener,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
