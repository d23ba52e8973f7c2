//! The HTML of every page: maud templates, so every value (a VM name, a guest's console
//! output, a path, an error message) is escaped; no page has inline script or style (the
//! CSP forbids both): behaviour comes from `/assets/app.js`, looks from `/assets/app.css`.
//! Every page reads without JS; JS adds the live parts (stages, the following log).

use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use banger_api::ApiError;
use banger_api::types::{Image, Kernel, Ports, Vm, VmState, VmStats};
use banger_core::size::ByteSize;
use maud::{DOCTYPE, Markup, html};

use super::jobs::{Job, Outcome, Snapshot};
use super::resources::{Resources, Usage};
use crate::ops::RecentOp;
use crate::progress::Stage;

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Dashboard,
    Vms,
    Create,
    Images,
    Kernels,
    Host,
    None,
}

/// What every page needs: its title, its section, the CSRF token its forms carry.
#[derive(Debug, Clone, Copy)]
pub struct Chrome<'a> {
    pub title: &'a str,
    pub nav: Nav,
    pub csrf: &'a str,
}

/// `s` in a URL path segment or query value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A byte count the way banger prints sizes (`1.2 GiB`).
pub fn size(bytes: u64) -> String {
    ByteSize(bytes).to_string()
}

/// Seconds as `42s`, `5m`, `3h`, `2d`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time as the daemon stores them
/// (`2030-01-02T03:04:05Z`).
pub fn epoch_of(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// How long ago `t` (RFC 3339) was, at `now` (seconds since the epoch).
pub fn age(t: &str, now: u64) -> String {
    epoch_of(t).map_or_else(|| t.to_string(), |e| duration(now.saturating_sub(e)))
}

fn state_badge(s: VmState) -> Markup {
    let word = s.to_string();
    html! { span class={ "state state-" (word) } { (word) } }
}

/// The page around `body`.
pub fn page(c: Chrome<'_>, body: Markup) -> Markup {
    page_with(c, html! {}, body)
}

/// [`page`] with more `<head>` content (a no-JS refresh).
pub fn page_with(c: Chrome<'_>, head: Markup, body: Markup) -> Markup {
    let link = |nav: Nav, href: &str, label: &str| {
        html! {
            @if c.nav == nav {
                a href=(href) aria-current="page" { (label) }
            } @else {
                a href=(href) { (label) }
            }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (c.title) " · banger" }
                link rel="stylesheet" href="/assets/app.css";
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                script src="/assets/app.js" defer {}
                (head)
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="main" {
                        span.brand { "banger" }
                        (link(Nav::Dashboard, "/", "Dashboard"))
                        (link(Nav::Vms, "/vms", "VMs"))
                        (link(Nav::Create, "/vms/new", "Create"))
                        (link(Nav::Images, "/images", "Images"))
                        (link(Nav::Kernels, "/kernels", "Kernels"))
                        (link(Nav::Host, "/host", "Host"))
                    }
                }
                main #main { h1 { (c.title) } (body) }
            }
        }
    }
}

/// The CSRF field of a form.
pub fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name=(super::guard::CSRF_FIELD) value=(token); }
}

/// An HTML answer with `status`.
pub fn answer(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// The page for a request without the token's cookie.
pub fn unauthorized(status: StatusCode) -> Response {
    let c = Chrome {
        title: "Not signed in",
        nav: Nav::None,
        csrf: "",
    };
    answer(
        status,
        page(
            c,
            html! {
                p { "This is banger's local web UI. It opens with a secret link that only you can get:" }
                pre { "banger ui" }
                p { "prints it (and opens your browser when there is one). The link is valid until the daemon restarts." }
            },
        ),
    )
}

/// The answer to the login link: the cookie is set; on to `path` (without the token).
pub fn signed_in(path: &str) -> Markup {
    let c = Chrome {
        title: "Signed in",
        nav: Nav::None,
        csrf: "",
    };
    page_with(
        c,
        html! { meta http-equiv="refresh" content={ "0;url=" (path) }; },
        html! { p { a href=(path) { "Continue" } } },
    )
}

/// The daemon's error, as a page with its status.
pub fn error_page(c: Chrome<'_>, e: &ApiError, back: Option<(&str, &str)>) -> Response {
    let status =
        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    answer(
        status,
        page(
            c,
            html! {
                (error_box(e))
                @if let Some((href, label)) = back { p { a href=(href) { (label) } } }
            },
        ),
    )
}

/// The daemon's error message, its kind and op id.
pub fn error_box(e: &ApiError) -> Markup {
    html! {
        div.error role="alert" {
            p { strong { (e.kind.word()) ": " } (e.message) }
            @if !e.op_id.is_empty() { p.dim { "op " code { (e.op_id) } } }
        }
    }
}

fn meter(label: &str, u: &Usage, fmt: fn(u64) -> String, note: Markup) -> Markup {
    let pct = u.percent();
    html! {
        section.card aria-label=(label) {
            h2 { (label) }
            p.big {
                (fmt(u.used))
                @if let Some(t) = u.total { " of " (fmt(t)) }
            }
            @if let Some(p) = pct {
                div.bar role="img" aria-label={ (p) "% used" } {
                    div class={ "fill w" (p.min(100) / 5 * 5) } {}
                }
                p.dim { (p) "%" (note) }
            } @else {
                p.dim { "host total unknown" (note) }
            }
        }
    }
}

/// `1 image`, `2 images`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn count(n: u64) -> String {
    n.to_string()
}

/// The dashboard.
pub fn dashboard(
    c: Chrome<'_>,
    r: &Resources,
    images: usize,
    running: &[Vm],
    jobs: &[std::sync::Arc<Job>],
    recent: &[RecentOp],
    now: u64,
) -> Markup {
    let at = Instant::now();
    page(
        c,
        html! {
            div.cards {
                section.card aria-label="VMs" {
                    h2 { "VMs" }
                    p.big #count-running { (r.running) " running" }
                    p.dim #count-stopped { (r.stopped) " stopped, " (plural(images, "image")) }
                }
                (meter("CPUs reserved", &r.cpus, count, html! { " of the host's CPUs, by running VMs" }))
                (meter("Memory reserved", &r.memory, size, html! { " of the host's memory, by running VMs" }))
                (meter("Disk allocated", &r.disk, size, html! {
                    " of the state dir's filesystem, by VM disks (up to "
                    (size(r.disk_provisioned)) " provisioned"
                    @if let Some(a) = r.disk_available { "; " (size(a)) " free" }
                    ")"
                }))
            }
            h2 { "Running VMs" }
            (vm_table(running, now))
            p { a.button href="/vms/new" { "Create a VM" } " " a href="/vms" { "All VMs" } }
            h2 { "Recent operations" }
            @if jobs.is_empty() && recent.is_empty() {
                p.dim { "None since the daemon started." }
            } @else {
                div.scroll {
                    table {
                        thead { tr { th { "operation" } th { "outcome" } th { "op" } th { "when" } } }
                        tbody {
                            @for j in jobs {
                                @let snap = j.snapshot();
                                tr {
                                    td { a href={ "/ops/" (j.id) } { (j.title) } }
                                    td { (outcome_word(&snap)) }
                                    td { code { (j.id) } }
                                    td { (duration(at.duration_since(j.started).as_secs())) " ago" }
                                }
                            }
                            @for op in recent {
                                tr {
                                    td { (op.method) " " (op.path) }
                                    td { @match op.status { Some(s) => (s), None => "cancelled" } }
                                    td { code { (op.op_id) } }
                                    td { (duration(at.duration_since(op.ended).as_secs())) " ago" }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn outcome_word(s: &Snapshot) -> String {
    match &s.outcome {
        None => match s.stages.last() {
            Some(st) => format!("running: {}", st.stage),
            None => "running".into(),
        },
        Some(Outcome::Done { .. }) => "done".into(),
        Some(Outcome::Failed { error }) => format!("{}: {}", error.kind.word(), error.message),
    }
}

/// The VM table of the dashboard and the VM list.
pub fn vm_table(vms: &[Vm], now: u64) -> Markup {
    html! {
        @if vms.is_empty() {
            p.dim { "No VMs." }
        } @else {
            div.scroll {
                table #vms {
                    thead { tr {
                        th { "name" } th { "state" } th { "image" } th { "IP" } th { "workspace" } th { "age" }
                    } }
                    tbody {
                        @for v in vms {
                            tr {
                                td { a href={ "/vms/" (enc(&v.name)) } { (v.name) } }
                                td { (state_badge(v.state)) }
                                td { (v.image) }
                                td { @if let Some(ip) = v.ip { (ip) } @else { "-" } }
                                td { @if let Some(w) = &v.workspace { (w.host_path.display()) } @else { "-" } }
                                td { (age(&v.created_at, now)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The VM list.
pub fn vm_list(c: Chrome<'_>, vms: &[Vm], now: u64) -> Markup {
    page(
        c,
        html! {
            p { a.button href="/vms/new" { "Create a VM" } }
            (vm_table(vms, now))
        },
    )
}

fn kv(rows: &[(&str, String)]) -> Markup {
    html! {
        dl.kv {
            @for (k, v) in rows { dt { (k) } dd { (v) } }
        }
    }
}

/// The actions a VM in `state` offers, as (action, label, needs a confirmation).
pub fn actions_for(state: VmState) -> Vec<(&'static str, &'static str, bool)> {
    let mut a = Vec::new();
    if state == VmState::Running {
        a.extend([
            ("stop", "Stop", true),
            ("restart", "Restart", true),
            ("kill", "Kill", true),
        ]);
    } else if state != VmState::Creating {
        a.push(("start", "Start", false));
    }
    a.push(("delete", "Delete", true));
    a
}

/// What the detail page shows of a running VM's guest, each part or why it is missing.
#[derive(Debug)]
pub struct Live {
    pub ports: Option<Result<Ports, ApiError>>,
    pub stats: Option<Result<VmStats, ApiError>>,
}

/// One VM.
pub fn vm_detail(c: Chrome<'_>, v: &Vm, live: &Live, now: u64) -> Markup {
    let name = enc(&v.name);
    let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    html! {
        (page(c, html! {
            p { (state_badge(v.state)) " " span.dim { "id " code { (v.id) } } }
            @if let Some(e) = &v.error { div.error role="alert" { p { strong { "last error: " } (e) } } }
            div.actions {
                @for (action, label, confirm) in actions_for(v.state) {
                    @if confirm {
                        a.button class={ "act-" (action) } href={ "/vms/" (name) "/confirm?action=" (action) } { (label) "…" }
                    } @else {
                        form method="post" action={ "/vms/" (name) "/action" } {
                            (csrf(c.csrf))
                            input type="hidden" name="action" value=(action);
                            button type="submit" { (label) }
                        }
                    }
                }
                a.button href={ "/vms/" (name) "/log" } { "Console log" }
            }
            h2 { "Settings" }
            (kv(&[
                ("image", v.image.clone()),
                ("backend", v.vmm.to_string()),
                ("CPUs", v.cpus.to_string()),
                ("memory", size(v.memory_mib << 20)),
                ("root disk", size(v.disk_bytes)),
                ("work disk", size(v.work_disk_bytes)),
                ("NAT", if v.nat { "on".into() } else { "off".into() }),
                ("IP", opt(v.ip.map(|i| i.to_string()))),
                ("name", format!("{}.vm", v.name)),
                ("MAC", opt(v.mac.map(|m| m.to_string()))),
                ("TAP", opt(v.tap.clone())),
                ("VMM pid", opt(v.pid.map(|p| p.to_string()))),
                ("created", format!("{} ({} ago)", v.created_at, age(&v.created_at, now))),
                ("started", opt(v.started_at.clone())),
                ("directory", v.dir.display().to_string()),
            ]))
            h2 { "Workspace" }
            @if let Some(w) = &v.workspace {
                (kv(&[
                    ("host path", w.host_path.display().to_string()),
                    ("guest path", w.guest_path.clone()),
                    ("head", w.head.clone()),
                    ("branch", opt(w.branch.clone())),
                    ("prepared", w.prepared_at.clone()),
                ]))
            } @else {
                p.dim { "None (create with a workspace path, or " code { "banger vm workspace prepare" } ")." }
            }
            h2 { "Ports" }
            @match &live.ports {
                None => p.dim { "Shown while the VM runs." },
                Some(Err(e)) => (error_box(e)),
                Some(Ok(p)) if p.listeners.is_empty() => p.dim { "No listening sockets." },
                Some(Ok(p)) => div.scroll { table #ports {
                    thead { tr { th { "proto" } th { "endpoint" } th { "process" } th { "command" } } }
                    tbody { @for l in &p.listeners { tr {
                        td { (format!("{:?}", l.proto).to_lowercase()) }
                        td { @if let Some(u) = &l.url { a href=(u) rel="noreferrer" { (u) } } @else { (l.endpoint) } }
                        td { (l.process.clone().unwrap_or_default()) }
                        td { code { (l.command.clone().unwrap_or_default()) } }
                    } } }
                } },
            }
            h2 { "Stats" }
            @match &live.stats {
                None => p.dim { "Shown while the VM runs." },
                Some(Err(e)) => (error_box(e)),
                Some(Ok(s)) => (kv(&[
                    ("uptime", duration(s.uptime_secs)),
                    ("CPU time", format!("{:.1}s user, {:.1}s system", s.cpu_user_secs, s.cpu_system_secs)),
                    ("VMM memory (RSS)", size(s.rss_bytes)),
                    ("threads", s.threads.to_string()),
                    ("disk allocated", format!("{} root, {} work", size(s.root_disk_allocated), size(s.work_disk_allocated))),
                ])),
            }
        }))
    }
}

/// The page asking to confirm a destructive action.
pub fn confirm(
    c: Chrome<'_>,
    what: &str,
    action_url: &str,
    fields: &[(&str, &str)],
    button: &str,
    back: &str,
) -> Markup {
    page(
        c,
        html! {
            div.confirm role="alertdialog" aria-labelledby="confirm-q" {
                p #confirm-q { (what) }
                form method="post" action=(action_url) {
                    (csrf(c.csrf))
                    @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
                    input type="hidden" name="confirmed" value="yes";
                    button.danger type="submit" autofocus { (button) }
                    " "
                    a.button href=(back) { "Cancel" }
                }
            }
        },
    )
}

/// The create form's values, as typed (re-shown with an error).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct CreateForm {
    pub name: String,
    pub image: String,
    pub cpus: String,
    pub memory: String,
    pub disk: String,
    pub work_disk: String,
    pub nat: Option<String>,
    pub workspace: String,
}

/// The create form.
pub fn create_form(
    c: Chrome<'_>,
    f: &CreateForm,
    images: &[Image],
    default_image: &str,
    error: Option<&str>,
) -> Markup {
    let chosen = if f.image.is_empty() {
        default_image
    } else {
        &f.image
    };
    page(
        c,
        html! {
            @if let Some(e) = error { div.error role="alert" { p { (e) } } }
            form.stack method="post" action="/vms" {
                (csrf(c.csrf))
                label for="name" { "Name " span.dim { "(optional: a name like brave-otter is made)" } }
                input #name name="name" value=(f.name) pattern="[a-z0-9\\-]{1,63}" autocomplete="off";
                label for="image" { "Image" }
                @if images.is_empty() {
                    input #image name="image" value=(chosen);
                    p.dim { "No image yet: " a href="/images" { "build or import one" } "." }
                } @else {
                    select #image name="image" {
                        @for i in images {
                            option value=(i.name) selected[i.name == chosen] { (i.name) }
                        }
                    }
                }
                div.row {
                    div { label for="cpus" { "CPUs" } input #cpus name="cpus" inputmode="numeric" value=(f.cpus) placeholder="2"; }
                    div { label for="memory" { "Memory" } input #memory name="memory" value=(f.memory) placeholder="2G"; }
                }
                div.row {
                    div { label for="disk" { "Root disk" } input #disk name="disk" value=(f.disk) placeholder="image size"; }
                    div { label for="work_disk" { "Work disk" } input #work_disk name="work_disk" value=(f.work_disk) placeholder="8G"; }
                }
                label.check { input type="checkbox" name="nat" value="on" checked[f.nat.is_some()]; " NAT (reach the internet)" }
                label for="workspace" { "Workspace " span.dim { "(optional: a git repository in your home, copied to /root/repo)" } }
                div.row {
                    input #workspace name="workspace" value=(f.workspace) placeholder="~/src/project";
                    a.button href={ "/browse?path=" (enc(&f.workspace)) } { "Browse…" }
                }
                p.dim { "Sizes: 512M, 4G, 4GiB; a bare number is MiB. Empty fields take the defaults." }
                button.primary type="submit" { "Create" }
            }
        },
    )
}

/// The directory picker: `dir`'s subdirectories, inside the owner's home.
pub fn browse(
    c: Chrome<'_>,
    dir: &std::path::Path,
    parent: Option<&std::path::Path>,
    subdirs: &[String],
    error: Option<&str>,
) -> Markup {
    let d = dir.display().to_string();
    page(
        c,
        html! {
            @if let Some(e) = error { div.error role="alert" { p { (e) } } }
            p { "In " code { (d) } }
            p {
                a.button.primary href={ "/vms/new?workspace=" (enc(&d)) } { "Use this directory" }
                @if let Some(p) = parent { " " a.button href={ "/browse?path=" (enc(&p.display().to_string())) } { "Up" } }
            }
            @if subdirs.is_empty() { p.dim { "No subdirectories." } }
            ul.dirs {
                @for s in subdirs {
                    @let full = dir.join(s).display().to_string();
                    li { a href={ "/browse?path=" (enc(&full)) } { (s) "/" } }
                }
            }
        },
    )
}

fn stage_item(s: &Stage) -> Markup {
    html! {
        li {
            span.stage { (s.stage) }
            @if !s.detail.is_empty() { " " span.detail { (s.detail) } }
            " " span.dim { (format!("{:.1}s", s.elapsed_ms as f64 / 1000.0)) }
        }
    }
}

/// A job's page: its stages (live with JS), its outcome, the cancel button.
pub fn job(c: Chrome<'_>, j: &Job) -> Markup {
    let snap = j.snapshot();
    let running = snap.outcome.is_none();
    let head = html! {
        @if running { noscript { meta http-equiv="refresh" content="2"; } }
    };
    page_with(
        c,
        head,
        html! {
            p.dim { "op " code { (j.id) } }
            ol #stages data-events={ "/ops/" (j.id) "/events" } aria-live="polite" {
                @for s in &snap.stages { (stage_item(s)) }
            }
            div #outcome aria-live="polite" {
                @match &snap.outcome {
                    None => p.dim #running { "Running…" },
                    Some(Outcome::Done { summary, href }) => div.done {
                        p { strong { (summary) } }
                        @if let Some(h) = href { p { a.button.primary href=(h) { "Open" } } }
                    },
                    Some(Outcome::Failed { error }) => (error_box(error)),
                }
            }
            @if running {
                form #cancel method="post" action={ "/ops/" (j.id) "/cancel" } {
                    (csrf(c.csrf))
                    button.danger type="submit" { "Cancel" }
                    span.dim { " stops the operation and undoes what it made" }
                }
            }
        },
    )
}

/// A VM's console log (its tail), followed live with JS.
pub fn log(c: Chrome<'_>, v: &Vm, text: &str, offset: u64) -> Markup {
    let name = enc(&v.name);
    page_with(
        c,
        html! { noscript { meta http-equiv="refresh" content="5"; } },
        html! {
            p { a href={ "/vms/" (name) } { "Back to " (v.name) } span.dim { " · " span #log-path { (v.console_log.display()) } } }
            pre #log tabindex="0" data-events={ "/vms/" (name) "/log/events?from=" (offset) } aria-label="console log" { (text) }
        },
    )
}

/// The image list, with the forms that make images.
pub fn images(c: Chrome<'_>, images: &[Image], default_image: &str) -> Markup {
    page(
        c,
        html! {
            @if images.is_empty() {
                p.dim { "No images." }
            } @else {
                div.scroll { table #images {
                    thead { tr { th { "name" } th { "rootfs size" } th { "kernel" } th { "used by" } th { "created" } } }
                    tbody { @for i in images { tr {
                        td { a href={ "/images/" (enc(&i.name)) } { (i.name) } }
                        td { (size(i.rootfs_bytes)) }
                        td { (kernel_of(i)) }
                        td { (plural(i.used_by.len(), "VM")) }
                        td { (i.created_at) }
                    } } }
                } }
            }
            h2 { "Build an image" }
            p.dim { "Builds a Debian bookworm image from Debian packages (mmdebstrap), with live stages. Pulling from a catalog or registry is not available yet." }
            form.stack method="post" action="/images/bootstrap" {
                (csrf(c.csrf))
                label for="b-name" { "Name" }
                input #b-name name="name" value=(default_image) required;
                label for="b-kernel" { "Kernel " span.dim { "(an imported kernel's name; optional)" } }
                input #b-kernel name="kernel_ref";
                button type="submit" { "Build" }
            }
            h2 { "Import a bundle" }
            form.stack method="post" action="/images/import" {
                (csrf(c.csrf))
                label for="i-path" { "Bundle file on this host" }
                input #i-path name="path" required placeholder="/path/to/image.bundle";
                label for="i-name" { "Name " span.dim { "(optional: the bundle's)" } }
                input #i-name name="name";
                button type="submit" { "Import" }
            }
        },
    )
}

fn kernel_of(i: &Image) -> String {
    match (&i.kernel_ref, &i.kernel) {
        (Some(r), _) => r.clone(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "-".into(),
    }
}

/// The list of what uses an image or kernel, linked under `dir`.
fn used_by(names: &[String], dir: &str, none: &str) -> Markup {
    html! {
        @if names.is_empty() { p.dim { (none) } }
        @else { ul { @for n in names { li { a href={ (dir) "/" (enc(n)) } { (n) } } } } }
    }
}

/// A path, or `-` when there is none.
fn path(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map_or_else(|| "-".into(), |p| p.display().to_string())
}

/// One image.
pub fn image(c: Chrome<'_>, i: &Image) -> Markup {
    page(
        c,
        html! {
            (kv(&[
                ("id", i.id.clone()),
                ("rootfs", i.rootfs.display().to_string()),
                ("rootfs size", size(i.rootfs_bytes)),
                ("kernel", kernel_of(i)),
                ("initrd", path(&i.initrd)),
                ("modules", path(&i.modules)),
                ("distro", i.distro.clone().unwrap_or_else(|| "-".into())),
                ("arch", i.arch.clone().unwrap_or_else(|| "-".into())),
                ("description", i.description.clone().unwrap_or_else(|| "-".into())),
                ("created", i.created_at.clone()),
            ]))
            h2 { "Used by" }
            (used_by(&i.used_by, "/vms", "No VM uses it."))
            p { a.button.act-delete href={ "/images/" (enc(&i.name)) "/confirm" } { "Delete…" } }
        },
    )
}

/// The kernel list.
pub fn kernels(c: Chrome<'_>, kernels: &[Kernel]) -> Markup {
    page(
        c,
        html! {
            @if kernels.is_empty() {
                p.dim { "No kernels imported (" code { "banger kernel import NAME --from DIR" } ")." }
            } @else {
                div.scroll { table #kernels {
                    thead { tr { th { "name" } th { "version" } th { "source" } th { "used by" } th { "created" } } }
                    tbody { @for k in kernels { tr {
                        td { a href={ "/kernels/" (enc(&k.name)) } { (k.name) } }
                        td { (k.version) }
                        td { (k.source) }
                        td { (plural(k.used_by.len(), "image")) }
                        td { (k.created_at) }
                    } } }
                } }
            }
        },
    )
}

/// One kernel.
pub fn kernel(c: Chrome<'_>, k: &Kernel) -> Markup {
    page(
        c,
        html! {
            (kv(&[
                ("version", k.version.clone()),
                ("directory", k.dir.display().to_string()),
                ("vmlinux", path(&k.vmlinux)),
                ("vmlinuz", path(&k.vmlinuz)),
                ("initrd", path(&k.initrd)),
                ("modules", path(&k.modules)),
                ("sha256", k.sha256.clone()),
                ("source", k.source.clone()),
                ("created", k.created_at.clone()),
            ]))
            h2 { "Used by images" }
            (used_by(&k.used_by, "/images", "No image uses it."))
            p { a.button.act-delete href={ "/kernels/" (enc(&k.name)) "/confirm" } { "Delete…" } }
        },
    )
}

/// One `banger doctor` check, as its `--json` prints it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DoctorCheck {
    pub check: String,
    pub status: String,
    pub detail: String,
    #[serde(default)]
    pub fix: Option<String>,
}

/// The host page: the daemon, its privilege, its services, and `banger doctor`.
pub fn host(
    c: Chrome<'_>,
    daemon: &[(&str, String)],
    warnings: &[String],
    doctor: &Result<Vec<DoctorCheck>, String>,
) -> Markup {
    page(
        c,
        html! {
            h2 { "Daemon and privilege" }
            (kv(daemon))
            @for w in warnings { div.warn { p { "warning: " (w) } } }
            h2 { "banger doctor" }
            @match doctor {
                Err(why) => p.dim { (why) },
                Ok(checks) => div.scroll { table #doctor {
                    thead { tr { th { "status" } th { "check" } th { "detail" } } }
                    tbody { @for ch in checks { tr {
                        td { span class={ "st st-" (ch.status.to_lowercase()) } { (ch.status) } }
                        td { (ch.check) }
                        td { (ch.detail) @if let Some(f) = &ch.fix { br; span.dim { "fix: " (f) } } }
                    } } }
                } },
            }
        },
    )
}

/// A `<pre>`-safe console text: ANSI escape sequences and control characters other than
/// newline and tab removed (the markup escapes the rest).
pub fn console_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC and one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(ch),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped_everywhere() {
        let e = ApiError::new(
            banger_api::ErrorKind::NotFound,
            "<script>alert(1)</script> & \"x\"",
        );
        let html = error_box(&e).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"),
            "{html}"
        );
        let c = Chrome {
            title: "<b>t</b>",
            nav: Nav::None,
            csrf: "\"><x",
        };
        let html = page(c, csrf(c.csrf)).into_string();
        assert!(
            !html.contains("<b>t</b>") && !html.contains("\"><x"),
            "{html}"
        );
    }

    #[test]
    fn console_text_drops_escapes_and_controls() {
        assert_eq!(
            console_text(b"\x1b[1;32mok\x1b[0m\r\nnext\x07\tend"),
            "ok\nnext\tend"
        );
        assert_eq!(console_text(b"\xffbad"), "\u{fffd}bad");
    }

    #[test]
    fn stored_times_read_back_as_epoch_seconds_and_ages() {
        assert_eq!(epoch_of("2030-01-02T03:04:05Z"), Some(1_893_553_445));
        assert_eq!(epoch_of("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_of("nonsense"), None);
        assert_eq!(age("2030-01-02T03:04:05Z", 1_893_553_445 + 90), "90s");
        assert_eq!(
            age("2030-01-02T03:04:05Z", 1_893_553_445 + 3 * 86_400),
            "3d"
        );
        assert_eq!(age("later", 5), "later");
    }

    #[test]
    fn destructive_actions_need_a_confirmation_and_start_does_not() {
        let running = actions_for(VmState::Running);
        assert!(running.iter().all(|(_, _, confirm)| *confirm));
        let stopped = actions_for(VmState::Stopped);
        assert_eq!(stopped[0], ("start", "Start", false));
        assert_eq!(stopped[1], ("delete", "Delete", true));
    }
}
