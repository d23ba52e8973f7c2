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
use banger_api::routes::templates as t;
use banger_api::types::{
    ActionOutcome, ActionRequest, BootstrapImage, CachePruned, CreateVm, Deleted, ExportWorkspace,
    ForkVm, Health, Image, ImportBundle, ImportKernel, JsonObject, Kernel, Ping, Ports,
    PrepareWorkspace, PullImage, RegisterImage, SshConfig, SshConfigChange, SshInfo, Vm, VmStats,
    WorkspaceExport,
};
use banger_api::types::{
    CatalogListing, ExportImage, ExportedImage, PullKernel, PushImage, PushedImage, WarmImage,
};
use banger_api::types::{Event, PreparedWorkspace};
use banger_api::types::{
    GuestDirListing, GuestFile, GuestFileWritten, ListGuestDir, ReadGuestFile, WriteGuestFile,
};
use banger_api::{ApiError, ErrorKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::OpError;
use crate::openapi::{Errors, ImageRef, KernelName, NDJSON, STREAM_DESCRIPTION, VmRef};
use crate::ops::OpId;
use crate::state::AppState;
use crate::stream::stream_op;
use crate::{bootstrap, catalogs, images, kernels, pull, vms, workspaces};

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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Stopped and failed VMs too, not only running ones.
    #[serde(default)]
    all: bool,
}

/// The VMs, running ones only unless `all`.
#[utoipa::path(get, path = t::VMS, tag = "vms", params(ListQuery),
    responses((status = 200, description = "The VMs.", body = Vec<Vm>), Errors))]
pub async fn list_vms(State(state): S, Query(q): Query<ListQuery>) -> Answer<Vec<Vm>> {
    Ok(Json(vms::list(&state, q.all)?))
}

/// One VM.
#[utoipa::path(get, path = t::VM, tag = "vms", params(VmRef),
    responses((status = 200, description = "The VM.", body = Vm), Errors))]
pub async fn show_vm(State(state): S, Path(reference): Path<String>) -> Answer<Vm> {
    Ok(Json(vms::show(&state, &reference)?))
}

/// Creates a VM and boots it, streamed: its stages, then the VM.
#[utoipa::path(post, path = t::VMS, tag = "vms", request_body = CreateVm,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<Vm>), Errors))]
pub async fn create_vm(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<CreateVm>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        vms::create(state, req, progress, cancel)
    })
}

/// Forks a running VM into a new one, streamed: its stages, then the new VM.
#[utoipa::path(post, path = t::VM_FORK, tag = "vms", params(VmRef), request_body = ForkVm,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<Vm>), Errors))]
pub async fn fork_vm(
    State(state): S,
    Extension(op): Extension<OpId>,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ForkVm>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        vms::fork(state, reference, req, progress, cancel)
    })
}

/// One action on many VMs: an outcome per reference, in the order given, each with its
/// error if that VM failed (the request itself still succeeds).
#[utoipa::path(post, path = t::VM_ACTIONS, tag = "vms", request_body = ActionRequest,
    responses((status = 200, description = "One outcome per reference.", body = Vec<ActionOutcome>), Errors))]
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

/// The guest agent's health answer.
#[utoipa::path(get, path = t::VM_HEALTH, tag = "vms", params(VmRef),
    responses((status = 200, description = "The agent's answer.", body = Health), Errors))]
pub async fn vm_health(State(state): S, Path(reference): Path<String>) -> Answer<Health> {
    Ok(Json(vms::health(&state, &reference).await?))
}

/// A round trip to the guest agent.
#[utoipa::path(get, path = t::VM_PING, tag = "vms", params(VmRef),
    responses((status = 200, description = "The round trip.", body = Ping), Errors))]
pub async fn vm_ping(State(state): S, Path(reference): Path<String>) -> Answer<Ping> {
    Ok(Json(vms::ping(&state, &reference).await?))
}

/// The guest's listening sockets.
#[utoipa::path(get, path = t::VM_PORTS, tag = "vms", params(VmRef),
    responses((status = 200, description = "The listening sockets.", body = Ports), Errors))]
pub async fn vm_ports(State(state): S, Path(reference): Path<String>) -> Answer<Ports> {
    Ok(Json(vms::ports(&state, &reference).await?))
}

/// An exec session in the VM: an HTTP upgrade, relayed to its guest agent.
// `POST /vms/{reference}/exec` (see `vms::exec`). The refusals before the upgrade are error
// bodies like any route's.
#[utoipa::path(post, path = t::VM_EXEC, tag = "vms",
    description = "An HTTP/1.1 upgrade to an exec session in the VM, relayed to its guest \
        agent. Send `Connection: upgrade` and `Upgrade: banger-exec/1` and no body. The daemon \
        resolves the VM, checks it runs and opens the agent's exec session, and only then \
        answers `101 Switching Protocols`; every failure before that is a typed error body. \
        After the 101 the connection carries the exec protocol's frames in both directions, \
        unchanged: a 5-byte header (the kind byte, then the payload length as a big-endian \
        u32) and the payload. The client sends `Start` first (a JSON exec request: argv, \
        cwd, env, pty), then stdin, stdin EOF, signal and resize frames; the agent answers \
        `Started` or `SpawnFailed`, then stdout, stderr and stdin credit frames, then exactly \
        one `Exit` (a JSON exit status), and closes. See the `banger_agent_proto::exec` \
        module for the frame kinds and flow control.",
    params(
        VmRef,
        ("Connection" = String, Header, description = "`upgrade`."),
        ("Upgrade" = String, Header, description = "`banger-exec/1`: the exec protocol's version."),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the connection is now the exec \
            session (frames, not HTTP).",
            headers(
                ("Connection" = String, description = "`upgrade`"),
                ("Upgrade" = String, description = "`banger-exec/1`"),
            )),
        Errors,
    ))]
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
#[utoipa::path(post, path = t::VM_WORKSPACE, tag = "workspaces", params(VmRef),
    description = "Ships the repository enclosing `path` into the running VM, streamed: its \
        stages, then the prepared workspace.",
    request_body = PrepareWorkspace,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<PreparedWorkspace>), Errors))]
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

/// The work done in the VM's workspace since its base, as a binary patch.
#[utoipa::path(post, path = t::VM_WORKSPACE_EXPORT, tag = "workspaces", params(VmRef),
    request_body = ExportWorkspace,
    responses((status = 200, description = "The base, the changed files and the patch.", body = WorkspaceExport), Errors))]
pub async fn export_workspace(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ExportWorkspace>,
) -> Answer<WorkspaceExport> {
    Ok(Json(workspaces::export(&state, &reference, req).await?))
}

/// The VMM process as `/proc` sees it, and the disks' host allocation.
#[utoipa::path(get, path = t::VM_STATS, tag = "vms", params(VmRef),
    responses((status = 200, description = "The VMM process's statistics.", body = VmStats), Errors))]
pub async fn vm_stats(State(state): S, Path(reference): Path<String>) -> Answer<VmStats> {
    Ok(Json(vms::stats(&state, &reference)?))
}

/// The key and known_hosts file that reach guests.
#[utoipa::path(get, path = t::SSH, tag = "ssh", responses((status = 200, description = "How to reach guests.", body = SshInfo), Errors))]
pub async fn ssh_info(State(state): S) -> Json<SshInfo> {
    Json(state.ssh_info())
}

/// The managed ssh config block and where it goes.
#[utoipa::path(get, path = t::SSH_CONFIG, tag = "ssh",
    responses((status = 200, description = "The block and its file.", body = SshConfig), Errors))]
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
#[utoipa::path(post, path = t::SSH_CONFIG, tag = "ssh",
    responses((status = 200, description = "What the write did.", body = SshConfigChange), Errors))]
pub async fn write_ssh_config(State(state): S) -> Answer<SshConfigChange> {
    let w = blocking_ssh(state, |h| h.write_user_config()).await?;
    Ok(Json(SshConfigChange {
        path: w.path,
        changed: w.changed,
    }))
}

/// Takes the managed block out of the owner's `~/.ssh/config`.
#[utoipa::path(delete, path = t::SSH_CONFIG, tag = "ssh",
    responses((status = 200, description = "What the removal did.", body = SshConfigChange), Errors))]
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

/// The managed images.
#[utoipa::path(get, path = t::IMAGES, tag = "images",
    responses((status = 200, description = "The images.", body = Vec<Image>), Errors))]
pub async fn list_images(State(state): S) -> Answer<Vec<Image>> {
    Ok(Json(images::list(&state)?))
}

/// One image.
#[utoipa::path(get, path = t::IMAGE, tag = "images", params(ImageRef),
    responses((status = 200, description = "The image.", body = Image), Errors))]
pub async fn show_image(State(state): S, Path(reference): Path<String>) -> Answer<Image> {
    Ok(Json(images::show(&state, &reference)?))
}

/// Registers local files (a root filesystem and a kernel) as a managed image.
#[utoipa::path(post, path = t::IMAGES, tag = "images", request_body = RegisterImage,
    responses((status = 200, description = "The registered image.", body = Image), Errors))]
pub async fn register_image(
    State(state): S,
    ApiJson(req): ApiJson<RegisterImage>,
) -> Answer<Image> {
    Ok(Json(images::register(state, req).await?))
}

/// Deletes an image no VM uses.
#[utoipa::path(delete, path = t::IMAGE, tag = "images", params(ImageRef),
    responses((status = 200, description = "What was deleted.", body = Deleted), Errors))]
pub async fn delete_image(State(state): S, Path(reference): Path<String>) -> Answer<Deleted> {
    Ok(Json(images::delete(state, &reference).await?))
}

/// The imported kernels.
#[utoipa::path(get, path = t::KERNELS, tag = "kernels",
    responses((status = 200, description = "The kernels.", body = Vec<Kernel>), Errors))]
pub async fn list_kernels(State(state): S) -> Answer<Vec<Kernel>> {
    Ok(Json(kernels::list(&state)?))
}

/// One kernel.
#[utoipa::path(get, path = t::KERNEL, tag = "kernels", params(KernelName),
    responses((status = 200, description = "The kernel.", body = Kernel), Errors))]
pub async fn show_kernel(State(state): S, Path(name): Path<String>) -> Answer<Kernel> {
    Ok(Json(kernels::show(&state, &name)?))
}

/// Imports a kernel from a directory tree.
#[utoipa::path(post, path = t::KERNELS, tag = "kernels", request_body = ImportKernel,
    responses((status = 200, description = "The imported kernel.", body = Kernel), Errors))]
pub async fn import_kernel(State(state): S, ApiJson(req): ApiJson<ImportKernel>) -> Answer<Kernel> {
    Ok(Json(kernels::import(state, req).await?))
}

/// Deletes a kernel no image boots.
#[utoipa::path(delete, path = t::KERNEL, tag = "kernels", params(KernelName),
    responses((status = 200, description = "What was deleted.", body = Deleted), Errors))]
pub async fn delete_kernel(State(state): S, Path(name): Path<String>) -> Answer<Deleted> {
    Ok(Json(kernels::remove(state, &name).await?))
}

/// Builds an image from distribution packages, streamed: its stages, then the image.
#[utoipa::path(post, path = t::IMAGES_BOOTSTRAP, tag = "images", request_body = BootstrapImage,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<Image>), Errors))]
pub async fn bootstrap_image(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<BootstrapImage>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        bootstrap::bootstrap(state, req, progress, cancel)
    })
}

/// Pulls an image from an OCI registry and registers it, streamed: its stages, then the
/// image.
#[utoipa::path(post, path = t::IMAGES_PULL, tag = "images", request_body = PullImage,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<Image>), Errors))]
pub async fn pull_image(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<PullImage>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        pull::pull(state, req, progress, cancel)
    })
}

/// Removes the cached OCI layers no pulled image needs.
#[utoipa::path(post, path = t::IMAGES_CACHE_PRUNE, tag = "images",
    responses((status = 200, description = "What was removed.", body = CachePruned), Errors))]
pub async fn prune_image_cache(State(state): S) -> Answer<CachePruned> {
    Ok(Json(pull::prune(state).await?))
}

/// Makes (or remakes) a warm-start template of an image for a machine shape, streamed: its
/// stages, then the image (with its templates).
#[utoipa::path(post, path = t::IMAGE_WARM, tag = "images", params(ImageRef),
    request_body = WarmImage,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<Image>), Errors))]
pub async fn warm_image(
    State(state): S,
    Extension(op): Extension<OpId>,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<WarmImage>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        vms::warm_image(state, reference, req, progress, cancel)
    })
}

/// Registers an image bundle (`.tar.zst` with `rootfs.ext4` and `manifest.json`).
#[utoipa::path(post, path = t::IMAGES_IMPORT, tag = "images", request_body = ImportBundle,
    responses((status = 200, description = "The registered image.", body = Image), Errors))]
pub async fn import_bundle(State(state): S, ApiJson(req): ApiJson<ImportBundle>) -> Answer<Image> {
    Ok(Json(bootstrap::import(state, req).await?))
}

/// What the image and kernel catalogs list (config `catalogs`, then the embedded one), each
/// entry with whether it is pulled here.
#[utoipa::path(get, path = t::CATALOG, tag = "images",
    responses((status = 200, description = "The catalogs' entries.", body = CatalogListing), Errors))]
pub async fn catalog(State(state): S) -> Answer<CatalogListing> {
    Ok(Json(catalogs::listing(&state).await?))
}

/// Pulls a kernel from the kernel catalogs, streamed: its stages, then the kernel.
#[utoipa::path(post, path = t::KERNELS_PULL, tag = "kernels", request_body = PullKernel,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<Kernel>), Errors))]
pub async fn pull_kernel(
    State(state): S,
    Extension(op): Extension<OpId>,
    ApiJson(req): ApiJson<PullKernel>,
) -> Response {
    stream_op(op, move |progress, cancel| {
        catalogs::pull_kernel_named(state, req, progress, cancel)
    })
}

/// Writes an image's bundle and its one-entry catalog into a directory, streamed.
#[utoipa::path(post, path = t::IMAGE_EXPORT, tag = "images", params(ImageRef), request_body = ExportImage,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<ExportedImage>), Errors))]
pub async fn export_image(
    State(state): S,
    Extension(op): Extension<OpId>,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ExportImage>,
) -> Response {
    stream_op(op, move |progress, _cancel| async move {
        catalogs::export_image(state, &reference, req, progress).await
    })
}

/// Pushes an image's bundle to an OCI registry as a banger bundle artifact, streamed.
#[utoipa::path(post, path = t::IMAGE_PUSH, tag = "images", params(ImageRef), request_body = PushImage,
    responses((status = 200, description = STREAM_DESCRIPTION, content_type = NDJSON,
        body = Event<PushedImage>), Errors))]
pub async fn push_image(
    State(state): S,
    Extension(op): Extension<OpId>,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<PushImage>,
) -> Response {
    stream_op(op, move |progress, cancel| async move {
        crate::pull::push(state, &reference, req, progress, cancel).await
    })
}

// Guest files, relayed to the VM's agent (`vms::read_file`, `write_file`, `list_dir`).

/// Reads a guest file by absolute path through the VM's agent (at most 1 MiB, or
/// `max_bytes`; a longer file comes back cut, with `truncated` set and its whole size).
#[utoipa::path(post, path = t::VM_FILES_READ, tag = "files", params(VmRef), request_body = ReadGuestFile,
    responses((status = 200, description = "The file's bytes and metadata.", body = GuestFile), Errors))]
pub async fn read_guest_file(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ReadGuestFile>,
) -> Answer<GuestFile> {
    Ok(Json(vms::read_file(&state, &reference, req).await?))
}

/// Writes a guest file whole by absolute path through the VM's agent: a temporary file
/// next to it, synced, then renamed over it (at most 512 KiB).
#[utoipa::path(post, path = t::VM_FILES_WRITE, tag = "files", params(VmRef), request_body = WriteGuestFile,
    responses((status = 200, description = "What was written.", body = GuestFileWritten), Errors))]
pub async fn write_guest_file(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<WriteGuestFile>,
) -> Answer<GuestFileWritten> {
    Ok(Json(vms::write_file(&state, &reference, req).await?))
}

/// Lists a guest directory by absolute path through the VM's agent, entries by name
/// (symlinks not followed).
#[utoipa::path(post, path = t::VM_FILES_LIST, tag = "files", params(VmRef), request_body = ListGuestDir,
    responses((status = 200, description = "The directory's entries.", body = GuestDirListing), Errors))]
pub async fn list_guest_dir(
    State(state): S,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<ListGuestDir>,
) -> Answer<GuestDirListing> {
    Ok(Json(vms::list_dir(&state, &reference, req).await?))
}
