//! The web UI's routes: read the request, call the daemon's service (the same function the
//! JSON route calls), render a page. A state-changing form answers with a redirect (303) to
//! the page that shows its result, or with the daemon's error (message and op id).

use std::convert::Infallible;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use banger_api::types::{
    ActionRequest, BootstrapImage, CreateVm, DnsListener, ImportBundle, PrepareWorkspace, VmAction,
    VmSettings, VmState, WebListener,
};
use banger_api::{ApiError, ErrorKind};
use banger_core::size::parse_size;
use futures_util::Stream;
use serde::Deserialize;

use super::Web;
use super::jobs::Outcome;
use super::pages::{self, Chrome, CreateForm, Nav, enc};
use crate::ops::OpId;
use crate::{bootstrap, images, kernels, vms, workspaces};

type W = State<Arc<Web>>;

/// The UI's routes, behind [`super::guard::protect`].
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/vms", get(vm_list).post(create))
        .route("/vms/new", get(create_form))
        .route("/vms/{reference}", get(vm_detail))
        .route("/vms/{reference}/log", get(log_page))
        .route("/vms/{reference}/log/events", get(log_events))
        .route("/vms/{reference}/confirm", get(vm_confirm))
        .route("/vms/{reference}/action", post(vm_action))
        .route("/ops/{id}", get(job_page))
        .route("/ops/{id}/events", get(job_events))
        .route("/ops/{id}/cancel", post(job_cancel))
        .route("/images", get(image_list))
        .route("/images/bootstrap", post(image_bootstrap))
        .route("/images/import", post(image_import))
        .route("/images/{reference}", get(image_detail))
        .route("/images/{reference}/confirm", get(image_confirm))
        .route("/images/{reference}/delete", post(image_delete))
        .route("/kernels", get(kernel_list))
        .route("/kernels/{name}", get(kernel_detail))
        .route("/kernels/{name}/confirm", get(kernel_confirm))
        .route("/kernels/{name}/delete", post(kernel_delete))
        .route("/host", get(host))
        .route("/browse", get(browse))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/assets/icon.svg", get(icon))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/assets/icon.svg") }),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            web.clone(),
            super::guard::protect,
        ))
        .with_state(web)
}

fn chrome<'a>(web: &'a Web, title: &'a str, nav: Nav) -> Chrome<'a> {
    Chrome {
        title,
        nav,
        csrf: web.guard.csrf(),
    }
}

fn now(web: &Web) -> u64 {
    crate::clock::epoch_secs(web.state.clock.now())
}

/// A service error as the API reports it, with this request's op id.
fn api_error(e: impl Into<ApiError>, op: Option<&OpId>) -> ApiError {
    let mut e = e.into();
    if let Some(op) = op {
        e.op_id = op.0.clone();
    }
    e
}

fn failed(web: &Web, title: &str, nav: Nav, e: ApiError, back: (&str, &str)) -> Response {
    pages::error_page(chrome(web, title, nav), &e, Some(back))
}

fn see(path: String) -> Response {
    Redirect::to(&path).into_response()
}

async fn not_found(State(web): W) -> Response {
    let e = ApiError::new(ErrorKind::NotFound, "no such page");
    failed(&web, "Not found", Nav::None, e, ("/", "Dashboard"))
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
        .into_response()
}

async fn icon() -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        include_str!("assets/icon.svg"),
    )
        .into_response()
}

async fn dashboard(State(web): W) -> Response {
    let state = &web.state;
    let listed = vms::list(state, true).and_then(|v| Ok((v, images::list(state)?)));
    let (all, imgs) = match listed {
        Ok(x) => x,
        Err(e) => {
            return failed(
                &web,
                "Dashboard",
                Nav::Dashboard,
                api_error(e, None),
                ("/", "Retry"),
            );
        }
    };
    let r =
        super::resources::resources(&all, web.parts.host.as_ref(), &state.opts.layout.state_dir);
    let running: Vec<_> = all
        .iter()
        .filter(|v| v.state == VmState::Running)
        .cloned()
        .collect();
    pages::answer(
        StatusCode::OK,
        pages::dashboard(
            chrome(&web, "Dashboard", Nav::Dashboard),
            &r,
            imgs.len(),
            &running,
            &web.jobs.recent(),
            &state.ops.recent(),
            now(&web),
        ),
    )
}

async fn vm_list(State(web): W) -> Response {
    match vms::list(&web.state, true) {
        Ok(v) => pages::answer(
            StatusCode::OK,
            pages::vm_list(chrome(&web, "VMs", Nav::Vms), &v, now(&web)),
        ),
        Err(e) => failed(
            &web,
            "VMs",
            Nav::Vms,
            api_error(e, None),
            ("/", "Dashboard"),
        ),
    }
}

/// How long a VM's page waits for its agent's port list.
const PORTS_WAIT: Duration = Duration::from_secs(5);

async fn vm_detail(State(web): W, Path(reference): Path<String>) -> Response {
    let vm = match vms::show(&web.state, &reference) {
        Ok(v) => v,
        Err(e) => {
            return failed(
                &web,
                "VM",
                Nav::Vms,
                api_error(e, None),
                ("/vms", "All VMs"),
            );
        }
    };
    let live = if vm.state == VmState::Running {
        let ports = match tokio::time::timeout(PORTS_WAIT, vms::ports(&web.state, &vm.id)).await {
            Ok(listed) => listed.map_err(|e| api_error(e, None)),
            Err(_) => Err(ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "the agent of VM {} did not list its ports within {} s",
                    vm.name,
                    PORTS_WAIT.as_secs()
                ),
            )),
        };
        let stats = vms::stats(&web.state, &vm.id).map_err(|e| api_error(e, None));
        pages::Live {
            ports: Some(ports),
            stats: Some(stats),
        }
    } else {
        pages::Live {
            ports: None,
            stats: None,
        }
    };
    let title = format!("VM {}", vm.name);
    pages::answer(
        StatusCode::OK,
        pages::vm_detail(chrome(&web, &title, Nav::Vms), &vm, &live, now(&web)),
    )
}

#[derive(Debug, Deserialize)]
struct ActionQuery {
    action: String,
}

/// The action a form names, and whether it needs a confirmation.
fn parse_action(word: &str) -> Option<(VmAction, bool)> {
    Some(match word {
        "start" => (VmAction::Start, false),
        "stop" => (VmAction::Stop, true),
        "restart" => (VmAction::Restart, true),
        "kill" => (
            VmAction::Kill {
                signal: "KILL".into(),
            },
            true,
        ),
        "delete" => (VmAction::Delete, true),
        _ => return None,
    })
}

fn confirm_question(action: &str, name: &str) -> String {
    match action {
        "stop" => format!(
            "Stop VM {name}? Its guest is asked to shut down, then forced off after the grace period."
        ),
        "restart" => format!("Restart VM {name}? Its guest is stopped and booted again."),
        "kill" => {
            format!("Kill VM {name}? Its VMM gets SIGKILL: the guest has no chance to shut down.")
        }
        _ => format!(
            "Delete VM {name}? It is stopped and its disks are removed. This cannot be undone."
        ),
    }
}

async fn vm_confirm(
    State(web): W,
    Path(reference): Path<String>,
    Query(q): Query<ActionQuery>,
) -> Response {
    let vm = match vms::show(&web.state, &reference) {
        Ok(v) => v,
        Err(e) => {
            return failed(
                &web,
                "Confirm",
                Nav::Vms,
                api_error(e, None),
                ("/vms", "All VMs"),
            );
        }
    };
    if !matches!(parse_action(&q.action), Some((_, true))) {
        let e = ApiError::new(
            ErrorKind::BadRequest,
            format!("no action {:?} to confirm", q.action),
        );
        return failed(&web, "Confirm", Nav::Vms, e, ("/vms", "All VMs"));
    }
    let name = enc(&vm.name);
    let title = format!("{} {}?", capitalised(&q.action), vm.name);
    let action_url = format!("/vms/{name}/action");
    let back = format!("/vms/{name}");
    pages::answer(
        StatusCode::OK,
        pages::confirm(
            chrome(&web, &title, Nav::Vms),
            &confirm_question(&q.action, &vm.name),
            &action_url,
            &[("action", &q.action)],
            &capitalised(&q.action),
            &back,
        ),
    )
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    action: String,
    #[serde(default)]
    confirmed: String,
}

async fn vm_action(
    State(web): W,
    Path(reference): Path<String>,
    Extension(op): Extension<OpId>,
    Form(f): Form<ActionForm>,
) -> Response {
    let back = format!("/vms/{}", enc(&reference));
    let Some((action, destructive)) = parse_action(&f.action) else {
        let e = api_error(
            ApiError::new(
                ErrorKind::BadRequest,
                format!("unknown action {:?}", f.action),
            ),
            Some(&op),
        );
        return failed(&web, "Action", Nav::Vms, e, (&back, "Back"));
    };
    if destructive && f.confirmed != "yes" {
        return see(format!("{back}/confirm?action={}", enc(&f.action)));
    }
    let deleting = action == VmAction::Delete;
    let req = ActionRequest {
        refs: vec![reference.clone()],
        action,
    };
    let outcome = match vms::act(web.state.clone(), req).await {
        Ok(mut o) if !o.is_empty() => o.remove(0),
        Ok(_) => ApiError::new(ErrorKind::Internal, "the action answered for no VM")
            .into_outcome(&reference),
        Err(e) => api_error(e, Some(&op)).into_outcome(&reference),
    };
    if let Some(e) = outcome.error {
        let title = format!("Could not {} {}", f.action, reference);
        return failed(
            &web,
            &title,
            Nav::Vms,
            api_error(e, Some(&op)),
            (&back, "Back"),
        );
    }
    if deleting {
        see("/vms".into())
    } else {
        see(format!(
            "/vms/{}",
            enc(outcome.vm.as_deref().unwrap_or(&reference))
        ))
    }
}

/// An error as the outcome of an action on one reference.
trait IntoOutcome {
    fn into_outcome(self, reference: &str) -> banger_api::types::ActionOutcome;
}

impl IntoOutcome for ApiError {
    fn into_outcome(self, reference: &str) -> banger_api::types::ActionOutcome {
        banger_api::types::ActionOutcome {
            reference: reference.to_string(),
            vm: None,
            error: Some(self),
            note: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
struct CreateQuery {
    #[serde(default)]
    workspace: String,
}

async fn create_form(State(web): W, Query(q): Query<CreateQuery>) -> Response {
    let f = CreateForm {
        workspace: q.workspace,
        ..CreateForm::default()
    };
    render_create(&web, &f, None, StatusCode::OK)
}

fn render_create(web: &Web, f: &CreateForm, error: Option<&str>, status: StatusCode) -> Response {
    let imgs = images::list(&web.state).unwrap_or_default();
    pages::answer(
        status,
        pages::create_form(
            chrome(web, "Create a VM", Nav::Create),
            f,
            &imgs,
            &web.state.opts.config.default_image,
            error,
        ),
    )
}

/// A form field left empty is the daemon's default.
fn filled(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

/// A size field (`512M`, `4G`; a bare number is MiB), in bytes.
fn size_field(what: &str, v: &str) -> Result<Option<u64>, String> {
    filled(v)
        .map(|s| {
            parse_size(s)
                .map(|b| b.0)
                .map_err(|e| format!("{what}: {e}"))
        })
        .transpose()
}

/// The owner's home, resolved; the picker and the workspace field stay inside it.
fn home(web: &Web) -> Result<PathBuf, String> {
    let home = web.state.opts.home.clone().ok_or_else(|| {
        "the daemon has no home directory (HOME), so it cannot pick host paths".to_string()
    })?;
    home.canonicalize()
        .map_err(|e| format!("cannot read the home directory {}: {e}", home.display()))
}

/// `typed` (absolute, or `~/...`, or relative to the home) resolved, if it is a directory
/// inside the owner's home.
fn in_home(web: &Web, typed: &str) -> Result<PathBuf, String> {
    let home = home(web)?;
    let p = match typed.strip_prefix("~") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            home.join(rest.trim_start_matches('/'))
        }
        _ => home.join(typed),
    };
    let resolved = p
        .canonicalize()
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if !resolved.starts_with(&home) {
        return Err(format!(
            "{} is outside your home {}: the web UI only picks paths inside it",
            resolved.display(),
            home.display()
        ));
    }
    if !resolved.is_dir() {
        return Err(format!("{} is not a directory", resolved.display()));
    }
    Ok(resolved)
}

/// The create request a form asks for, and its workspace; or what is wrong with it.
fn create_request(web: &Web, f: &CreateForm) -> Result<(CreateVm, Option<PathBuf>), String> {
    let cpus = filled(&f.cpus)
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| format!("CPUs: {s:?} is not a whole number"))
        })
        .transpose()?;
    let memory_mib = size_field("memory", &f.memory)?.map(|b| (b >> 20) as i64);
    let workspace = filled(&f.workspace).map(|w| in_home(web, w)).transpose()?;
    Ok((
        CreateVm {
            name: filled(&f.name).map(str::to_string),
            image: filled(&f.image).map(str::to_string),
            resources: VmSettings {
                cpus,
                memory_mib,
                disk_bytes: size_field("root disk", &f.disk)?,
                work_disk_bytes: size_field("work disk", &f.work_disk)?,
            },
            nat: f.nat.as_ref().map(|_| true),
            vmm: None,
            origin: Some(banger_core::vm::VmOrigin::Web),
            cold: None,
        },
        workspace,
    ))
}

async fn create(
    State(web): W,
    Extension(op): Extension<OpId>,
    Form(f): Form<CreateForm>,
) -> Response {
    let (req, workspace) = match create_request(&web, &f) {
        Ok(r) => r,
        Err(why) => return render_create(&web, &f, Some(&why), StatusCode::BAD_REQUEST),
    };
    let state = web.state.clone();
    let title = match &req.name {
        Some(n) => format!("create VM {n}"),
        None => "create VM".to_string(),
    };
    let job = web
        .jobs
        .start(op.0.clone(), title, move |progress, cancel| async move {
            let vm = vms::create(state.clone(), req, progress.clone(), cancel.clone())
                .await
                .map_err(ApiError::from)?;
            let summary = match workspace {
                Some(path) => {
                    let ws = PrepareWorkspace {
                        path,
                        ..PrepareWorkspace::default()
                    };
                    let done =
                        workspaces::prepare(state, vm.name.clone(), ws, progress.clone(), cancel)
                            .await
                            .map_err(ApiError::from)?;
                    format!(
                        "VM {} is ready, its workspace at {} ({:.1}s)",
                        vm.name,
                        done.workspace.guest_path,
                        progress.elapsed().as_secs_f64()
                    )
                }
                None => format!(
                    "VM {} is ready ({:.1}s)",
                    vm.name,
                    progress.elapsed().as_secs_f64()
                ),
            };
            Ok(Outcome::Done {
                summary,
                href: Some(format!("/vms/{}", enc(&vm.name))),
            })
        });
    see(format!("/ops/{}", job.id))
}

async fn job_page(State(web): W, Path(id): Path<String>) -> Response {
    match web.jobs.get(&id) {
        Some(j) => {
            let title = capitalised(&j.title);
            pages::answer(
                StatusCode::OK,
                pages::job(chrome(&web, &title, Nav::None), &j),
            )
        }
        None => {
            let e = ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "no operation {id} (the daemon keeps the last {})",
                    super::jobs::KEPT_JOBS
                ),
            );
            failed(&web, "Operation", Nav::None, e, ("/", "Dashboard"))
        }
    }
}

async fn job_cancel(State(web): W, Path(id): Path<String>) -> Response {
    match web.jobs.get(&id) {
        Some(j) => {
            j.cancel();
            see(format!("/ops/{id}"))
        }
        None => {
            let e = ApiError::new(ErrorKind::NotFound, format!("no operation {id}"));
            failed(&web, "Operation", Nav::None, e, ("/", "Dashboard"))
        }
    }
}

/// The JSON of a job's end, for its page's script.
fn outcome_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Done { summary, href } => {
            serde_json::json!({ "ok": true, "summary": summary, "href": href })
        }
        Outcome::Failed { error } => serde_json::json!({
            "ok": false, "kind": error.kind.word(), "message": error.message, "op_id": error.op_id,
        }),
    }
}

/// Server-sent events of a job: `stage` for each stage (those already passed first), then
/// `done` once.
async fn job_events(
    State(web): W,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(job) = web.jobs.get(&id) else {
        return (StatusCode::NOT_FOUND, "no such operation").into_response();
    };
    // A reconnecting EventSource says the last stage it got.
    let first = last_event_id(&headers).map_or(0, |n| n as usize + 1);
    let rx = job.changed();
    let stream = futures_util::stream::unfold(
        (job, rx, first, false),
        |(job, mut rx, next, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let snap = job.snapshot();
                if let Some(st) = snap.stages.get(next) {
                    let ev = SseEvent::default()
                        .event("stage")
                        .id(next.to_string())
                        .json_data(serde_json::json!({
                            "stage": st.stage, "detail": st.detail, "elapsed_ms": st.elapsed_ms,
                        }));
                    return Some((sse(ev), (job, rx, next + 1, false)));
                }
                if let Some(o) = &snap.outcome {
                    let ev = SseEvent::default().event("done").json_data(outcome_json(o));
                    return Some((sse(ev), (job, rx, next, true)));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    sse_answer(stream)
}

/// The `Last-Event-ID` a reconnecting EventSource sends.
fn last_event_id(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get("last-event-id")?.to_str().ok()?.parse().ok()
}

fn sse(ev: Result<SseEvent, axum::Error>) -> Result<SseEvent, Infallible> {
    Ok(ev.unwrap_or_else(|_| SseEvent::default().comment("unencodable event")))
}

fn sse_answer(
    stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// How much of a console log the page shows, and one follow event carries at most.
const LOG_TAIL: u64 = 64 << 10;

/// Up to [`LOG_TAIL`] bytes of `path` from `from` (`None`: from the last `LOG_TAIL`), and
/// the offset after them. A log that shrank (rotated) is read from its start.
fn read_log(path: &FsPath, from: Option<u64>) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = match from {
        Some(o) if o <= len => o,
        Some(_) => 0,
        None => len.saturating_sub(LOG_TAIL),
    };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(LOG_TAIL).read_to_end(&mut buf)?;
    let end = start + buf.len() as u64;
    Ok((buf, end))
}

async fn log_page(State(web): W, Path(reference): Path<String>) -> Response {
    let vm = match vms::show(&web.state, &reference) {
        Ok(v) => v,
        Err(e) => {
            return failed(
                &web,
                "Console log",
                Nav::Vms,
                api_error(e, None),
                ("/vms", "All VMs"),
            );
        }
    };
    let title = format!("Console log of {}", vm.name);
    match read_log(&vm.console_log, None) {
        Ok((bytes, end)) => pages::answer(
            StatusCode::OK,
            pages::log(
                chrome(&web, &title, Nav::Vms),
                &vm,
                &pages::console_text(&bytes),
                end,
            ),
        ),
        Err(e) => {
            let e = ApiError::new(
                ErrorKind::Internal,
                format!("cannot read {}: {e}", vm.console_log.display()),
            );
            failed(&web, &title, Nav::Vms, e, ("/vms", "All VMs"))
        }
    }
}

#[derive(Debug, Deserialize)]
struct FromQuery {
    #[serde(default)]
    from: u64,
}

/// Server-sent `chunk` events: what the console log gains, every half second.
async fn log_events(
    State(web): W,
    Path(reference): Path<String>,
    Query(q): Query<FromQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let vm = match vms::show(&web.state, &reference) {
        Ok(v) => v,
        Err(e) => return (StatusCode::NOT_FOUND, api_error(e, None).message).into_response(),
    };
    let path = vm.console_log;
    // Each chunk's id is the offset after it: a reconnecting EventSource goes on from there.
    let from = last_event_id(&headers).unwrap_or(q.from);
    let stream = futures_util::stream::unfold((path, from), |(path, mut at)| async move {
        loop {
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_log(&path, Some(at))).await
            };
            match read {
                Ok(Ok((bytes, end))) if !bytes.is_empty() || end < at => {
                    at = end;
                    let ev = SseEvent::default()
                        .event("chunk")
                        .id(end.to_string())
                        .json_data(pages::console_text(&bytes));
                    return Some((sse(ev), (path, at)));
                }
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
                _ => return None,
            }
        }
    });
    sse_answer(stream)
}

async fn image_list(State(web): W) -> Response {
    match images::list(&web.state) {
        Ok(i) => pages::answer(
            StatusCode::OK,
            pages::images(
                chrome(&web, "Images", Nav::Images),
                &i,
                &web.state.opts.config.default_image,
            ),
        ),
        Err(e) => failed(
            &web,
            "Images",
            Nav::Images,
            api_error(e, None),
            ("/", "Dashboard"),
        ),
    }
}

async fn image_detail(State(web): W, Path(reference): Path<String>) -> Response {
    match images::show(&web.state, &reference) {
        Ok(i) => {
            let title = format!("Image {}", i.name);
            pages::answer(
                StatusCode::OK,
                pages::image(chrome(&web, &title, Nav::Images), &i),
            )
        }
        Err(e) => failed(
            &web,
            "Image",
            Nav::Images,
            api_error(e, None),
            ("/images", "All images"),
        ),
    }
}

/// Images and kernels: their confirm and delete pages differ only in the service called.
#[derive(Debug, Clone, Copy)]
enum Artifact {
    Image,
    Kernel,
}

impl Artifact {
    fn word(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Kernel => "kernel",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Image => "/images",
            Self::Kernel => "/kernels",
        }
    }

    fn nav(self) -> Nav {
        match self {
            Self::Image => Nav::Images,
            Self::Kernel => Nav::Kernels,
        }
    }

    /// The name of what `reference` names.
    fn name_of(self, web: &Web, reference: &str) -> Result<String, crate::error::OpError> {
        match self {
            Self::Image => images::show(&web.state, reference).map(|i| i.name),
            Self::Kernel => kernels::show(&web.state, reference).map(|k| k.name),
        }
    }

    async fn delete(self, web: &Web, reference: &str) -> Result<(), crate::error::OpError> {
        match self {
            Self::Image => images::delete(web.state.clone(), reference).await.map(drop),
            Self::Kernel => kernels::remove(web.state.clone(), reference)
                .await
                .map(drop),
        }
    }
}

async fn image_confirm(State(web): W, Path(reference): Path<String>) -> Response {
    confirm_delete(&web, Artifact::Image, &reference)
}

async fn kernel_confirm(State(web): W, Path(name): Path<String>) -> Response {
    confirm_delete(&web, Artifact::Kernel, &name)
}

async fn image_delete(
    State(web): W,
    Path(reference): Path<String>,
    Extension(op): Extension<OpId>,
    Form(c): Form<Confirmed>,
) -> Response {
    delete(&web, Artifact::Image, &reference, &op, &c).await
}

async fn kernel_delete(
    State(web): W,
    Path(name): Path<String>,
    Extension(op): Extension<OpId>,
    Form(c): Form<Confirmed>,
) -> Response {
    delete(&web, Artifact::Kernel, &name, &op, &c).await
}

/// The page asking to confirm the delete of an image or kernel.
fn confirm_delete(web: &Web, a: Artifact, reference: &str) -> Response {
    let name = match a.name_of(web, reference) {
        Ok(n) => n,
        Err(e) => {
            let all = format!("All {}s", a.word());
            return failed(web, "Delete", a.nav(), api_error(e, None), (a.dir(), &all));
        }
    };
    let title = format!("Delete {} {name}?", a.word());
    let q = format!(
        "Delete {} {name}? Its files are removed. This cannot be undone.",
        a.word()
    );
    let url = format!("{}/{}/delete", a.dir(), enc(&name));
    let back = format!("{}/{}", a.dir(), enc(&name));
    pages::answer(
        StatusCode::OK,
        pages::confirm(chrome(web, &title, a.nav()), &q, &url, &[], "Delete", &back),
    )
}

/// Deletes an image or kernel once confirmed; the daemon's refusal (in use) is shown with
/// its reason and op id.
async fn delete(web: &Web, a: Artifact, reference: &str, op: &OpId, c: &Confirmed) -> Response {
    if c.confirmed != "yes" {
        return see(format!("{}/{}/confirm", a.dir(), enc(reference)));
    }
    match a.delete(web, reference).await {
        Ok(()) => see(a.dir().to_string()),
        Err(e) => {
            let title = format!("Could not delete {} {reference}", a.word());
            let back = format!("{}/{}", a.dir(), enc(reference));
            failed(
                web,
                &title,
                a.nav(),
                api_error(e, Some(op)),
                (&back, "Back"),
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct Confirmed {
    #[serde(default)]
    confirmed: String,
}

#[derive(Debug, Deserialize)]
struct BootstrapForm {
    name: String,
    #[serde(default)]
    kernel_ref: String,
}

async fn image_bootstrap(
    State(web): W,
    Extension(op): Extension<OpId>,
    Form(f): Form<BootstrapForm>,
) -> Response {
    let req = BootstrapImage {
        name: f.name.trim().to_string(),
        kernel_ref: filled(&f.kernel_ref).map(str::to_string),
        size: None,
    };
    let state = web.state.clone();
    let title = format!("bootstrap image {}", req.name);
    let job = web
        .jobs
        .start(op.0.clone(), title, move |progress, cancel| async move {
            let image = bootstrap::bootstrap(state, req, progress, cancel)
                .await
                .map_err(ApiError::from)?;
            Ok(Outcome::Done {
                summary: format!("image {} is ready", image.name),
                href: Some(format!("/images/{}", enc(&image.name))),
            })
        });
    see(format!("/ops/{}", job.id))
}

#[derive(Debug, Deserialize)]
struct ImportForm {
    path: String,
    #[serde(default)]
    name: String,
}

async fn image_import(
    State(web): W,
    Extension(op): Extension<OpId>,
    Form(f): Form<ImportForm>,
) -> Response {
    let req = ImportBundle {
        path: PathBuf::from(f.path.trim()),
        name: filled(&f.name).map(str::to_string),
        kernel_ref: None,
    };
    match bootstrap::import(web.state.clone(), req).await {
        Ok(i) => see(format!("/images/{}", enc(&i.name))),
        Err(e) => failed(
            &web,
            "Could not import the bundle",
            Nav::Images,
            api_error(e, Some(&op)),
            ("/images", "Images"),
        ),
    }
}

async fn kernel_list(State(web): W) -> Response {
    match kernels::list(&web.state) {
        Ok(k) => pages::answer(
            StatusCode::OK,
            pages::kernels(chrome(&web, "Kernels", Nav::Kernels), &k),
        ),
        Err(e) => failed(
            &web,
            "Kernels",
            Nav::Kernels,
            api_error(e, None),
            ("/", "Dashboard"),
        ),
    }
}

async fn kernel_detail(State(web): W, Path(name): Path<String>) -> Response {
    match kernels::show(&web.state, &name) {
        Ok(k) => {
            let title = format!("Kernel {}", k.name);
            pages::answer(
                StatusCode::OK,
                pages::kernel(chrome(&web, &title, Nav::Kernels), &k),
            )
        }
        Err(e) => failed(
            &web,
            "Kernel",
            Nav::Kernels,
            api_error(e, None),
            ("/kernels", "All kernels"),
        ),
    }
}

fn listener_text(l: &DnsListener) -> String {
    match l {
        DnsListener::Off => "off".into(),
        DnsListener::Listening { address } => format!("listening on {address}"),
        DnsListener::Failed { error } => format!("not serving: {error}"),
    }
}

/// How long the host page waits for `banger doctor`.
const DOCTOR_TIMEOUT: Duration = Duration::from_secs(30);

/// `banger doctor --json`, run as the CLI runs it (it only reads).
async fn doctor(web: &Web) -> Result<Vec<pages::DoctorCheck>, String> {
    let Some(bin) = web.parts.doctor.clone() else {
        return Err(
            "banger doctor is not available here: no banger program next to bangerd".into(),
        );
    };
    let runner = web.state.host.runner.clone();
    let program = bin.display().to_string();
    let run = tokio::task::spawn_blocking(move || {
        runner.run(&program, &["doctor".into(), "--json".into()])
    });
    let out = match tokio::time::timeout(DOCTOR_TIMEOUT, run).await {
        Err(_) => {
            return Err(format!(
                "banger doctor did not answer within {} s",
                DOCTOR_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => return Err(format!("banger doctor: {e}")),
        Ok(Ok(Err(e))) => return Err(banger_core::error::chain(&e)),
        Ok(Ok(Ok(out))) => out,
    };
    serde_json::from_str(&out.stdout).map_err(|e| {
        format!(
            "{} printed no check list ({e}): {}",
            out.command,
            out.stderr.trim()
        )
    })
}

async fn host(State(web): W) -> Response {
    let state = &web.state;
    let o = &state.opts;
    let privilege = if state.uid == 0 {
        "bangerd runs as root: it makes the bridge, TAPs and NAT rules itself".to_string()
    } else {
        format!(
            "bangerd runs as uid {}: bridge, TAP and NAT operations go through the root helper (banger-helper; set up by sudo banger system install)",
            state.uid
        )
    };
    let kinds: Vec<String> = state
        .host
        .vmms
        .kinds()
        .iter()
        .map(|k| k.to_string())
        .collect();
    let web_text = match state.web_listener() {
        WebListener::Listening { address, url, .. } => format!("{url} (listening on {address})"),
        WebListener::Off => "off".into(),
        WebListener::Failed { error } => error,
    };
    let daemon = [
        ("version", o.build.to_string()),
        ("pid", std::process::id().to_string()),
        ("privilege", privilege),
        (
            "VMM backends",
            format!(
                "{} (new VMs: {})",
                if kinds.is_empty() {
                    "none".into()
                } else {
                    kinds.join(", ")
                },
                state.host.vmms.default_kind()
            ),
        ),
        (
            "agent binary",
            o.agent_bin
                .as_ref()
                .map_or_else(|| "not found".into(), |p| p.display().to_string()),
        ),
        ("socket", o.layout.socket_path().display().to_string()),
        ("state dir", o.layout.state_dir.display().to_string()),
        ("config", o.layout.config_file().display().to_string()),
        ("log file", o.layout.log_file().display().to_string()),
        ("dns", listener_text(&state.dns.listener())),
        ("guest dns", listener_text(&state.dns.guest_listener())),
        (
            "tap pool",
            format!(
                "{} of {} idle",
                state.tap_pool.idle().len(),
                state.tap_pool.wanted()
            ),
        ),
        ("web UI", web_text),
    ];
    let doctor = doctor(&web).await;
    pages::answer(
        StatusCode::OK,
        pages::host(
            chrome(&web, "Host", Nav::Host),
            &daemon,
            &o.config_warnings,
            &doctor,
        ),
    )
}

#[derive(Debug, Deserialize, Default)]
struct BrowseQuery {
    #[serde(default)]
    path: String,
}

/// The directory picker, inside the owner's home.
async fn browse(State(web): W, Query(q): Query<BrowseQuery>) -> Response {
    let home = match home(&web) {
        Ok(h) => h,
        Err(why) => {
            let e = ApiError::new(ErrorKind::Unavailable, why);
            return failed(
                &web,
                "Pick a directory",
                Nav::Create,
                e,
                ("/vms/new", "Back"),
            );
        }
    };
    let typed = filled(&q.path).unwrap_or("~");
    let (dir, error) = match in_home(&web, typed) {
        Ok(d) => (d, None),
        Err(why) => (home.clone(), Some(why)),
    };
    let mut subdirs: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    subdirs.sort();
    let parent = dir
        .parent()
        .filter(|p| p.starts_with(&home))
        .map(FsPath::to_path_buf);
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    pages::answer(
        status,
        pages::browse(
            chrome(&web, "Pick a directory", Nav::Create),
            &dir,
            parent.as_deref(),
            &subdirs,
            error.as_deref(),
        ),
    )
}
