//! The HTTP API on the daemon's Unix socket.
//!
//! Every route is wrapped by [`instrument`]: it gives the request an operation id, runs the
//! handler inside a tracing span carrying that id, sets the `x-banger-op` response header,
//! writes the id into error bodies, and tracks the operation (see [`crate::ops`]).
//!
//! No client can pin the daemon's memory or a connection: a request's head must arrive within
//! [`ServeLimits::header_read_timeout`] and fit in [`MAX_REQUEST_HEAD`] bytes, and its body
//! within [`ServeLimits::body_read_timeout`] and [`MAX_REQUEST_BODY`] bytes (refused with a
//! typed `413`/`408` error body otherwise, before any handler runs).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use banger_api::error::{ApiError, ErrorBody, ErrorKind};
use banger_api::routes::templates as t;
use banger_api::types::{DaemonStatus, ShutdownReply};
use banger_api::{API_PREFIX, OP_ID_HEADER};
use banger_core::quote::quote_prefix;
use banger_http::capped::{CappedError, read_capped};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::{ApiDoc, Errors};
use crate::ops::{OpId, OpTracker, new_op_id};
use crate::routes::{self, HandlerError};
use crate::state::AppState;

/// The API's routes and its OpenAPI document, built together: `routes!` mounts each handler
/// at the method and path template of its `#[utoipa::path]` annotation and adds that
/// annotation to the document, so the two come from the same place. Adding a route is two
/// local changes: annotate the handler (see [`crate::openapi`]) and add one
/// `.routes(routes!(handler))` line here. Never mount with a plain `.route()`: the daemon
/// test `every_mounted_route_is_documented` finds such a route.
pub fn api() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(shutdown))
        .routes(routes!(openapi_document))
        .routes(routes!(routes::ssh_info))
        .routes(routes!(routes::ssh_config))
        .routes(routes!(routes::write_ssh_config))
        .routes(routes!(routes::remove_ssh_config))
        .routes(routes!(routes::list_vms))
        .routes(routes!(routes::create_vm))
        .routes(routes!(routes::fork_vm))
        .routes(routes!(routes::vm_actions))
        .routes(routes!(routes::show_vm))
        .routes(routes!(routes::vm_health))
        .routes(routes!(routes::vm_ping))
        .routes(routes!(routes::vm_ports))
        .routes(routes!(routes::vm_stats))
        .routes(routes!(routes::prepare_workspace))
        .routes(routes!(routes::export_workspace))
        .routes(routes!(routes::vm_exec))
        .routes(routes!(routes::list_kernels))
        .routes(routes!(routes::import_kernel))
        .routes(routes!(routes::pull_kernel))
        .routes(routes!(routes::show_kernel))
        .routes(routes!(routes::delete_kernel))
        .routes(routes!(routes::list_images))
        .routes(routes!(routes::register_image))
        .routes(routes!(routes::bootstrap_image))
        .routes(routes!(routes::pull_image))
        .routes(routes!(routes::prune_image_cache))
        .routes(routes!(routes::import_bundle))
        .routes(routes!(routes::export_image))
        .routes(routes!(routes::push_image))
        .routes(routes!(routes::catalog))
        .routes(routes!(routes::show_image))
        .routes(routes!(routes::delete_image))
        .routes(routes!(routes::warm_image))
        .routes(routes!(routes::read_guest_file))
        .routes(routes!(routes::write_guest_file))
        .routes(routes!(routes::list_guest_dir))
        .fallback(not_found);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(API_PREFIX, v1)
        .split_for_parts()
}

/// The daemon's router: [`api`] under [`API_PREFIX`], with the op-id middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let ops = state.ops.clone();
    let (api, _) = api();
    instrument(api.fallback(not_found).with_state(state), ops)
}

/// The API document as the daemon serves it and `docs/api/openapi.json` holds it: pretty
/// JSON, keys in a stable order (utoipa's and serde_json's maps are sorted), ending in a
/// newline. Built once.
pub fn openapi_json() -> Result<&'static str, &'static str> {
    static JSON: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let built = JSON.get_or_init(|| {
        api()
            .1
            .to_pretty_json()
            .map(|text| text + "\n")
            .map_err(|e| format!("the API document does not encode as JSON: {e}"))
    });
    built.as_deref().map_err(String::as_str)
}

/// Largest request body the daemon reads, in bytes. Every API body is a small JSON document
/// (names, paths, sizes, a list of VM references); 1 MiB is thousands of times the largest
/// real one, and all a client can make the daemon buffer.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// Largest request line plus headers, in bytes (hyper's read buffer; its minimum is 8 KiB).
pub const MAX_REQUEST_HEAD: usize = 64 << 10;

/// How long a client may take to send what a request needs, per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// From the connection (or the previous answer) to the end of the request head. hyper
    /// closes a connection that exceeds it.
    pub header_read_timeout: Duration,
    /// From the end of the head to the end of the body.
    pub body_read_timeout: Duration,
}

impl Default for ServeLimits {
    /// 10 s each: the CLI sends a request in one write, so anything slower is a stuck or
    /// hostile client, and 10 s is still generous for a loaded machine.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Wraps `router` with operation ids, spans, the op header and op accounting, and the request
/// body limits (inside the op layer, so their refusals carry an op id too).
pub fn instrument(router: Router, ops: Arc<OpTracker>) -> Router {
    router
        .layer(middleware::from_fn(limit_body))
        .layer(middleware::from_fn_with_state(ops, op_middleware))
}

/// Reads the whole request body, at most [`MAX_REQUEST_BODY`] bytes within the body read
/// timeout, before the handler runs; refuses at once a body whose `Content-Length` is over.
async fn limit_body(req: Request, next: Next) -> Response {
    let limits = req
        .extensions()
        .get::<ServeLimits>()
        .copied()
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    let too_large = |declared: Option<u64>| {
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the {MAX_REQUEST_BODY}-byte limit{}",
                declared
                    .map(|n| format!(" (Content-Length {n})"))
                    .unwrap_or_default()
            ),
        )
    };
    let read = read_capped(&parts.headers, body, MAX_REQUEST_BODY);
    let bytes = match tokio::time::timeout(limits.body_read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(CappedError::TooLarge { declared })) => return too_large(declared),
        Ok(Err(CappedError::Read(e))) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            );
        }
        Err(_elapsed) => {
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    limits.body_read_timeout.as_secs_f64()
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A `bad_request` error body with its own HTTP status (413, 408...).
fn refusal(status: StatusCode, message: String) -> Response {
    tracing::info!(status = status.as_u16(), error = %message, "request refused");
    let error = ApiError::new(ErrorKind::BadRequest, message);
    (status, Json(ErrorBody { error })).into_response()
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
    guard.finish(resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&op_id) {
        resp.headers_mut().insert(OP_ID_HEADER, v);
    }
    resp
}

/// Largest error body [`stamp_error_body`] reads; what follows is cut (handlers' error bodies
/// are a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Writes the op id into an error body. A body that is not an [`ErrorBody`] (axum's own
/// rejections are plain text) becomes one, with a kind from the status and the text as its
/// message, so every error the API returns is typed and nothing in it is lost or replaced.
async fn stamp_error_body(resp: Response, op_id: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let (bytes, trouble) = read_prefix(body, MAX_ERROR_BODY).await;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut error = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(eb) => eb.error,
        Err(_) => {
            let text = quote_prefix(bytes.trim_ascii(), MAX_ERROR_BODY);
            let mut message = if text.is_empty() {
                parts
                    .status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_string()
            } else {
                text
            };
            if let Some(trouble) = trouble {
                message.push_str(&format!(" ({trouble})"));
            }
            parts.headers.remove(axum::http::header::CONTENT_TYPE);
            ApiError::new(kind_of_status(parts.status), message)
        }
    };
    error.op_id = op_id.to_string();
    (parts, Json(ErrorBody { error })).into_response()
}

/// The error kind an HTTP status stands for, for error bodies that did not say.
fn kind_of_status(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        404 | 405 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        499 => ErrorKind::Cancelled,
        503 => ErrorKind::Unavailable,
        400..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    }
}

/// Reads at most `limit` bytes of `body`; also says, when the body was longer or failed,
/// what happened to the rest.
async fn read_prefix(body: Body, limit: usize) -> (Vec<u8>, Option<String>) {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if bytes.len() + data.len() > limit {
                    bytes.extend_from_slice(&data[..limit - bytes.len()]);
                    return (bytes, Some(format!("cut at {limit} bytes")));
                }
                bytes.extend_from_slice(&data);
            }
            Err(e) => return (bytes, Some(format!("the rest could not be read: {e}"))),
        }
    }
    (bytes, None)
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> HandlerError {
    HandlerError(ApiError::new(
        ErrorKind::NotFound,
        format!("no such API route: {method} {}", uri.path()),
    ))
}

/// Who the running daemon is.
#[utoipa::path(get, path = t::STATUS, tag = "daemon",
    responses((status = 200, description = "The daemon's identity, paths and state.", body = DaemonStatus), Errors))]
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
        ops: state.ops.counts(),
        config_warnings: state.opts.config_warnings.clone(),
        dns: state.dns.listener(),
        guest_dns: state.dns.guest_listener(),
        dns_routing: state.dns.routing(),
        tap_pool: banger_api::types::TapPoolStatus {
            wanted: state.tap_pool.wanted(),
            idle: state.tap_pool.idle(),
        },
        web: state.web_listener(),
    })
}

/// Stops the daemon after answering: it stops accepting, lets the requests in flight finish,
/// then exits (VMs keep running).
#[utoipa::path(post, path = t::SHUTDOWN, tag = "daemon",
    responses((status = 200, description = "The daemon's pid; it stops after this answer.", body = ShutdownReply), Errors))]
async fn shutdown(State(state): State<Arc<AppState>>) -> Json<ShutdownReply> {
    tracing::info!("shutdown requested over the API");
    state.request_shutdown();
    Json(ShutdownReply {
        pid: std::process::id(),
    })
}

/// This document: the API in OpenAPI 3.1 (the same bytes as `docs/api/openapi.json`).
#[utoipa::path(get, path = t::OPENAPI, tag = "daemon",
    responses((status = 200, description = "The OpenAPI 3.1 document.",
        content_type = "application/json", body = serde_json::Value), Errors))]
async fn openapi_document() -> Result<Response, HandlerError> {
    let text = openapi_json().map_err(|e| HandlerError(ApiError::new(ErrorKind::Internal, e)))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response())
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

/// Serves any router on a Unix listener until `stop` completes, with the default
/// [`ServeLimits`].
pub async fn serve_router(
    listener: UnixListener,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router_with(listener, app, stop, ServeLimits::default()).await
}

/// A listener the server takes connections from: the API's Unix socket, the web UI's TCP
/// port.
pub trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(io, _)| io)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(io, _)| io)
    }
}

/// Serves `app` on `listener` until `stop` completes, then lets the requests in flight finish.
///
/// HTTP/1.1 only (all banger speaks), through hyper directly rather than `axum::serve`, which
/// has no timer and so no header read timeout.
pub async fn serve_router_with<L: Accept>(
    listener: L,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    // hyper-util's `GracefulShutdown` cannot watch a connection that may be upgraded, so
    // the same is done here: every connection is told to finish its request on `stopping`,
    // and the tracker waits for them all.
    let stopping = tokio_util::sync::CancellationToken::new();
    let connections = tokio_util::task::TaskTracker::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept_io() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted:
                    // wait a little instead of spinning, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let router = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(limits);
            hyper::service::Service::call(&router, req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_REQUEST_HEAD)
            .serve_connection(TokioIo::new(stream), service)
            // `POST /vms/{reference}/exec` hands its connection over to an exec relay.
            .with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_bodies_are_read_up_to_the_limit_and_say_so() {
        let (bytes, trouble) = read_prefix(Body::from("short"), 10).await;
        assert_eq!((bytes.as_slice(), trouble), (b"short".as_slice(), None));
        let (bytes, trouble) = read_prefix(Body::from("0123456789abcdef"), 10).await;
        assert_eq!(bytes, b"0123456789");
        assert_eq!(trouble.as_deref(), Some("cut at 10 bytes"));
    }

    #[tokio::test]
    async fn a_plain_text_error_becomes_a_typed_body_with_its_text() {
        let resp = (StatusCode::UNPROCESSABLE_ENTITY, "missing field `name`").into_response();
        let resp = stamp_error_body(resp, "op123").await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let (bytes, _) = read_prefix(resp.into_body(), 1 << 20).await;
        let eb: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(eb.error.kind, ErrorKind::BadRequest);
        assert_eq!(eb.error.message, "missing field `name`");
        assert_eq!(eb.error.op_id, "op123");

        let resp = StatusCode::SERVICE_UNAVAILABLE.into_response();
        let (bytes, _) = read_prefix(stamp_error_body(resp, "op").await.into_body(), 1 << 20).await;
        let eb: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(eb.error.kind, ErrorKind::Unavailable);
        assert_eq!(eb.error.message, "Service Unavailable");
    }
}
