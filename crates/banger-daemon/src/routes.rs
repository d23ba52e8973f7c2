//! HTTP handlers: decode the request, call the operation, encode the answer. Long operations
//! (`POST /v1/vms`) stream NDJSON events; the stream holds a cancellation guard, so a client
//! that goes away cancels the operation, which then rolls back.
//!
//! Bodies are read with [`ApiJson`], never axum's `Json` directly: a body that is not JSON, is
//! not the request's shape, or carries a field the request does not have (every request type
//! refuses unknown fields) gets the typed error body, kind `bad request`, naming the problem.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use banger_agent_proto::wire::{Health, Ports};
use banger_api::error::ErrorBody;
use banger_api::types::{
    ActionOutcome, ActionRequest, BootstrapImage, CreateVm, Event, Image, ImportBundle,
    ImportKernel, JsonObject, Kernel, Ping, RegisterImage, SshInfo, Vm, VmState, VmStats,
};
use banger_api::{ApiError, ErrorKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::OpError;
use crate::ops::OpId;
use crate::progress::{Progress, Stage};
use crate::state::AppState;
use crate::{bootstrap, images, kernels, stats, vms};

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

type S = State<Arc<AppState>>;

/// How often a streamed operation writes a blank line while it has nothing to report.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A JSON request body whose rejection is an API error body (see the module docs).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for ApiJson<T> {
    type Rejection = HandlerError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection as R;
        // The full path, as the client sent it (the nested router strips `/v1`).
        let path = req
            .extensions()
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
        let route = format!("{} {path}", req.method());
        let rejection = match Json::<JsonObject<T>>::from_request(req, state).await {
            Ok(Json(JsonObject(v))) => return Ok(Self(v)),
            Err(r) => r,
        };
        // The innermost message is serde's ("unknown field `cpu`, expected one of ...").
        let innermost = |e: &dyn std::error::Error| {
            let mut e = e;
            while let Some(s) = e.source() {
                e = s;
            }
            e.to_string()
        };
        let why = match &rejection {
            R::JsonDataError(e) => format!("does not fit the request: {}", innermost(e)),
            R::JsonSyntaxError(e) => format!("is not valid JSON: {}", innermost(e)),
            R::MissingJsonContentType(_) => {
                "must be sent with content-type: application/json".to_string()
            }
            other => other.body_text(),
        };
        let kind = if rejection.status().is_server_error() {
            ErrorKind::Internal
        } else {
            ErrorKind::BadRequest
        };
        Err(HandlerError(ApiError::new(
            kind,
            format!("the body of {route} {why}"),
        )))
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub async fn list_vms(
    State(state): S,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Vm>>, HandlerError> {
    let rows = state.vm_rows()?;
    Ok(Json(
        rows.iter()
            .filter(|r| q.all || r.state == VmState::Running.as_str())
            .map(|r| state.vm_view(r))
            .collect(),
    ))
}

pub async fn show_vm(
    State(state): S,
    Path(reference): Path<String>,
) -> Result<Json<Vm>, HandlerError> {
    let row = state.find_vm(&reference)?;
    Ok(Json(state.vm_view(&row)))
}

pub async fn create_vm(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<CreateVm>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        vms::create(state, req, progress, cancel)
    })
}

/// Runs a long operation in its own task and streams its stages, then its result or error,
/// as NDJSON [`Event`]s. The response body holds the operation's cancellation guard: when the
/// client goes away, hyper drops the body and the operation is cancelled (and rolls back).
/// An error event carries the request's op id, as error bodies do.
pub fn stream_op<T, F, Fut>(op_id: OpId, op: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce(Progress, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<T, OpError>> + Send + 'static,
{
    let (stage_tx, mut stage_rx) = tokio::sync::mpsc::unbounded_channel::<Stage>();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<Event<T>>();
    let cancel = tokio_util::sync::CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    let fut = op(Progress::new(Some(stage_tx)), cancel);
    tokio::spawn(
        async move {
            let ev = match fut.await {
                Ok(result) => Event::Result { result },
                Err(e) => {
                    let mut error: ApiError = e.into();
                    error.op_id = op_id.0;
                    Event::Error { error }
                }
            };
            let _ = done_tx.send(ev);
        }
        .instrument(tracing::Span::current()),
    );
    // A blank line every HEARTBEAT: hyper only notices a client that went away when it
    // writes, and a quiet phase (waiting for the agent) must still be cancellable.
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut finished = false;
    let line = |v: &dyn erased::Json| {
        let mut l = v.to_json();
        l.push(b'\n');
        Ok::<_, Infallible>(l)
    };
    let stream = futures_util::stream::poll_fn(move |cx| {
        // The guard lives as long as the response body: dropping the body cancels.
        let _keep = &guard;
        if finished {
            return Poll::Ready(None);
        }
        // Stages first, so every stage precedes the result.
        if let Poll::Ready(Some(st)) = stage_rx.poll_recv(cx) {
            let ev: Event<()> = Event::Stage {
                stage: st.stage,
                detail: st.detail,
                elapsed_ms: st.elapsed_ms,
            };
            return Poll::Ready(Some(line(&ev)));
        }
        match std::pin::Pin::new(&mut done_rx).poll(cx) {
            Poll::Ready(Ok(ev)) => {
                // Drain stages sent just before the end.
                if let Ok(st) = stage_rx.try_recv() {
                    let stage: Event<()> = Event::Stage {
                        stage: st.stage,
                        detail: st.detail,
                        elapsed_ms: st.elapsed_ms,
                    };
                    // Put the result back for the next poll.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = tx.send(ev);
                    done_rx = rx;
                    return Poll::Ready(Some(line(&stage)));
                }
                finished = true;
                Poll::Ready(Some(line(&ev)))
            }
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Pending => match heartbeat.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Ok(b"\n".to_vec()))),
                Poll::Pending => Poll::Pending,
            },
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Object-safe JSON encoding for the stream's two event types.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

pub async fn vm_actions(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Result<Json<Vec<ActionOutcome>>, HandlerError> {
    let mut outcomes = vms::act(state, req).await?;
    for e in outcomes.iter_mut().filter_map(|o| o.error.as_mut()) {
        e.op_id = op.0.clone();
    }
    Ok(Json(outcomes))
}

const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn vm_health(
    State(state): S,
    Path(reference): Path<String>,
) -> Result<Json<Health>, HandlerError> {
    let row = state.find_vm(&reference)?;
    let ep = vms::endpoint_of(&state, &row)?;
    let h = vms::agent_health(&ep, AGENT_TIMEOUT)
        .await
        .map_err(|source| OpError::Agent {
            vm: row.name.clone(),
            source,
        })?;
    Ok(Json(h))
}

pub async fn vm_ping(
    State(state): S,
    Path(reference): Path<String>,
) -> Result<Json<Ping>, HandlerError> {
    let row = state.find_vm(&reference)?;
    let ep = vms::endpoint_of(&state, &row)?;
    let t = Instant::now();
    let h = vms::agent_health(&ep, AGENT_TIMEOUT)
        .await
        .map_err(|source| OpError::Agent {
            vm: row.name.clone(),
            source,
        })?;
    Ok(Json(Ping {
        name: row.name,
        rtt_ms: t.elapsed().as_secs_f64() * 1000.0,
        agent_version: h.version,
    }))
}

pub async fn vm_ports(
    State(state): S,
    Path(reference): Path<String>,
) -> Result<Json<Ports>, HandlerError> {
    let row = state.find_vm(&reference)?;
    let ep = vms::endpoint_of(&state, &row)?;
    let p = vms::agent_ports(&ep, AGENT_TIMEOUT)
        .await
        .map_err(|source| OpError::Agent {
            vm: row.name.clone(),
            source,
        })?;
    Ok(Json(p))
}

pub async fn vm_stats(
    State(state): S,
    Path(reference): Path<String>,
) -> Result<Json<VmStats>, HandlerError> {
    let row = state.find_vm(&reference)?;
    let Some(pid) = row.pid.filter(|_| row.state == VmState::Running.as_str()) else {
        return Err(OpError::NotRunning { vm: row.name }.into());
    };
    Ok(Json(stats::read(&row, pid)?))
}

pub async fn ssh_info(State(state): S) -> Json<SshInfo> {
    Json(SshInfo {
        private_key: state.ssh.private_key.clone(),
        public_key: state.ssh.public_key.clone(),
        wait_secs: state.opts.config.ssh_wait_secs,
    })
}

pub async fn list_images(State(state): S) -> Result<Json<Vec<Image>>, HandlerError> {
    let rows = state.db(|s| s.list_images()).map_err(OpError::from)?;
    Ok(Json(rows.iter().map(|r| state.image_view(r)).collect()))
}

pub async fn show_image(
    State(state): S,
    Path(reference): Path<String>,
) -> Result<Json<Image>, HandlerError> {
    let row = state.find_image(&reference)?;
    Ok(Json(state.image_view(&row)))
}

pub async fn register_image(
    State(state): S,
    ApiJson(req): ApiJson<RegisterImage>,
) -> Result<Json<Image>, HandlerError> {
    Ok(Json(images::register(state, req).await?))
}

pub async fn delete_image(
    State(state): S,
    Path(reference): Path<String>,
) -> Result<Json<serde_json::Value>, HandlerError> {
    images::delete(state, &reference).await?;
    Ok(Json(serde_json::json!({ "deleted": reference })))
}

pub async fn list_kernels(State(state): S) -> Result<Json<Vec<Kernel>>, HandlerError> {
    let rows = state.db(|s| s.list_kernels()).map_err(OpError::from)?;
    Ok(Json(rows.iter().map(|r| state.kernel_view(r)).collect()))
}

pub async fn show_kernel(
    State(state): S,
    Path(name): Path<String>,
) -> Result<Json<Kernel>, HandlerError> {
    let row = state.find_kernel(&name)?;
    Ok(Json(state.kernel_view(&row)))
}

pub async fn import_kernel(
    State(state): S,
    ApiJson(req): ApiJson<ImportKernel>,
) -> Result<Json<Kernel>, HandlerError> {
    Ok(Json(kernels::import(state, req).await?))
}

pub async fn delete_kernel(
    State(state): S,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, HandlerError> {
    kernels::remove(state, &name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

pub async fn bootstrap_image(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<BootstrapImage>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        bootstrap::bootstrap(state, req, progress, cancel)
    })
}

pub async fn import_bundle(
    State(state): S,
    ApiJson(req): ApiJson<ImportBundle>,
) -> Result<Json<Image>, HandlerError> {
    Ok(Json(bootstrap::import(state, req).await?))
}
