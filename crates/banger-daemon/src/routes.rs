//! HTTP handlers, thin: decode the request, call a service, render its answer. Long
//! operations (`POST /v1/vms`, `POST /v1/images/bootstrap`) stream NDJSON through
//! [`crate::stream`].
//!
//! Bodies are read with [`ApiJson`], never axum's `Json` directly: a body that is not JSON, is
//! not the request's shape, or carries a field the request does not have (every request type
//! refuses unknown fields) gets the typed error body, kind `bad request`, naming the problem.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use banger_api::error::ErrorBody;
use banger_api::types::{
    ActionOutcome, ActionRequest, BootstrapImage, CreateVm, Deleted, ExportWorkspace, Health,
    Image, ImportBundle, ImportKernel, JsonObject, Kernel, Ping, Ports, PrepareWorkspace,
    RegisterImage, SshConfig, SshConfigChange, SshInfo, Vm, VmStats, WorkspaceExport,
};
use banger_api::types::{
    GuestDirListing, GuestFile, GuestFileWritten, ListGuestDir, ReadGuestFile, WriteGuestFile,
};
use banger_api::{ApiError, ErrorKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::OpError;
use crate::ops::OpId;
use crate::state::AppState;
use crate::stream::stream_op;
use crate::{bootstrap, images, kernels, vms, workspaces};

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
type Answer<T> = Result<Json<T>, HandlerError>;

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

pub async fn list_vms(State(state): S, Query(q): Query<ListQuery>) -> Answer<Vec<Vm>> {
    Ok(Json(vms::list(&state, q.all)?))
}

pub async fn show_vm(State(state): S, Path(reference): Path<String>) -> Answer<Vm> {
    Ok(Json(vms::show(&state, &reference)?))
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

pub async fn vm_actions(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<ActionRequest>,
) -> Answer<Vec<ActionOutcome>> {
    let mut outcomes = vms::act(state, req).await?;
    for e in outcomes.iter_mut().filter_map(|o| o.error.as_mut()) {
        e.op_id = op.0.clone();
    }
    Ok(Json(outcomes))
}

pub async fn vm_health(State(state): S, Path(reference): Path<String>) -> Answer<Health> {
    Ok(Json(vms::health(&state, &reference).await?))
}

pub async fn vm_ping(State(state): S, Path(reference): Path<String>) -> Answer<Ping> {
    Ok(Json(vms::ping(&state, &reference).await?))
}

pub async fn vm_ports(State(state): S, Path(reference): Path<String>) -> Answer<Ports> {
    Ok(Json(vms::ports(&state, &reference).await?))
}

/// `POST /vms/{reference}/exec`: an upgrade to an exec session relayed to the VM's agent
/// (see `vms::exec`). The refusals before the upgrade are error bodies like any route's.
pub async fn vm_exec(
    State(state): S,
    Path(reference): Path<String>,
    mut req: Request,
) -> Result<Response, HandlerError> {
    use axum::http::header::{CONNECTION, UPGRADE};
    let asked = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(vms::UPGRADE_EXEC));
    if !asked {
        return Err(HandlerError(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "POST {} is an upgrade: send Connection: upgrade and Upgrade: {}",
                banger_api::routes::Route::VmExec(&reference).path(),
                vms::UPGRADE_EXEC
            ),
        )));
    }
    let client = hyper::upgrade::on(&mut req);
    let agent = vms::exec_channel(&state, &reference).await?;
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let moved = match client.await {
                Ok(client) => vms::relay(hyper_util::rt::TokioIo::new(client), agent).await,
                Err(e) => Err(std::io::Error::other(e)),
            };
            match moved {
                Ok((sent, received)) => {
                    tracing::debug!(sent, received, "exec session relayed");
                }
                Err(e) => tracing::debug!(error = %e, "exec relay ended with an error"),
            }
        },
        span,
    ));
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, vms::UPGRADE_EXEC)
        .body(axum::body::Body::empty())
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("cannot build the 101 answer: {e}"),
            )
        })?)
}

/// `POST /vms/{reference}/workspace`: prepare, streamed like a create.
pub async fn prepare_workspace(
    State(state): S,
    Path(reference): Path<String>,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<PrepareWorkspace>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        workspaces::prepare(state, reference, req, progress, cancel)
    })
}

pub async fn export_workspace(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ExportWorkspace>,
) -> Answer<WorkspaceExport> {
    Ok(Json(workspaces::export(&state, &reference, req).await?))
}

pub async fn vm_stats(State(state): S, Path(reference): Path<String>) -> Answer<VmStats> {
    Ok(Json(vms::stats(&state, &reference)?))
}

pub async fn ssh_info(State(state): S) -> Json<SshInfo> {
    Json(state.ssh_info())
}

/// The managed ssh config block and where it goes.
pub async fn ssh_config(State(state): S) -> Answer<SshConfig> {
    let block = state
        .ssh_hosts
        .block()
        .render()
        .map_err(crate::ssh_hosts::SshHostsError::Render)
        .map_err(OpError::from)?;
    Ok(Json(SshConfig {
        path: state.ssh_hosts.user_config().ok(),
        block,
        at_start: state.opts.config.ssh_config,
    }))
}

/// Writes the managed block into the owner's `~/.ssh/config` now.
pub async fn write_ssh_config(State(state): S) -> Answer<SshConfigChange> {
    let w = blocking_ssh(state, |h| h.write_user_config()).await?;
    Ok(Json(SshConfigChange {
        path: w.path,
        changed: w.changed,
    }))
}

/// Takes the managed block out of the owner's `~/.ssh/config`.
pub async fn remove_ssh_config(State(state): S) -> Answer<SshConfigChange> {
    let w = blocking_ssh(state, |h| h.remove_user_config()).await?;
    Ok(Json(SshConfigChange {
        path: w.path,
        changed: w.changed,
    }))
}

/// Runs a rewrite of the user's ssh config off the async threads.
async fn blocking_ssh(
    state: Arc<AppState>,
    f: impl FnOnce(
        &crate::ssh_hosts::SshHosts,
    ) -> Result<crate::ssh_hosts::ConfigWrite, crate::ssh_hosts::SshHostsError>
    + Send
    + 'static,
) -> Result<crate::ssh_hosts::ConfigWrite, OpError> {
    tokio::task::spawn_blocking(move || f(&state.ssh_hosts))
        .await
        .map_err(|e| OpError::Join(e.to_string()))?
        .map_err(OpError::from)
}

pub async fn list_images(State(state): S) -> Answer<Vec<Image>> {
    Ok(Json(images::list(&state)?))
}

pub async fn show_image(State(state): S, Path(reference): Path<String>) -> Answer<Image> {
    Ok(Json(images::show(&state, &reference)?))
}

pub async fn register_image(
    State(state): S,
    ApiJson(req): ApiJson<RegisterImage>,
) -> Answer<Image> {
    Ok(Json(images::register(state, req).await?))
}

pub async fn delete_image(State(state): S, Path(reference): Path<String>) -> Answer<Deleted> {
    Ok(Json(images::delete(state, &reference).await?))
}

pub async fn list_kernels(State(state): S) -> Answer<Vec<Kernel>> {
    Ok(Json(kernels::list(&state)?))
}

pub async fn show_kernel(State(state): S, Path(name): Path<String>) -> Answer<Kernel> {
    Ok(Json(kernels::show(&state, &name)?))
}

pub async fn import_kernel(State(state): S, ApiJson(req): ApiJson<ImportKernel>) -> Answer<Kernel> {
    Ok(Json(kernels::import(state, req).await?))
}

pub async fn delete_kernel(State(state): S, Path(name): Path<String>) -> Answer<Deleted> {
    Ok(Json(kernels::remove(state, &name).await?))
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

pub async fn import_bundle(State(state): S, ApiJson(req): ApiJson<ImportBundle>) -> Answer<Image> {
    Ok(Json(bootstrap::import(state, req).await?))
}

// Guest files, relayed to the VM's agent (`vms::read_file`, `write_file`, `list_dir`).

/// `POST /vms/{reference}/files/read`.
pub async fn read_guest_file(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ReadGuestFile>,
) -> Answer<GuestFile> {
    Ok(Json(vms::read_file(&state, &reference, req).await?))
}

/// `POST /vms/{reference}/files/write`.
pub async fn write_guest_file(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<WriteGuestFile>,
) -> Answer<GuestFileWritten> {
    Ok(Json(vms::write_file(&state, &reference, req).await?))
}

/// `POST /vms/{reference}/files/list`.
pub async fn list_guest_dir(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ListGuestDir>,
) -> Answer<GuestDirListing> {
    Ok(Json(vms::list_dir(&state, &reference, req).await?))
}
