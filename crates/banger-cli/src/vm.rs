//! `banger vm ...` and `banger image ...`: turn flags into API requests, render the answers.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use banger_api::Client;
use banger_api::Route;
use banger_api::types::{
    ActionOutcome, ActionRequest, CreateVm, Health, Ping, Ports, SshInfo, Vm, VmAction, VmSettings,
    VmStats, VmmKind,
};
use banger_core::limits::VmLimits;
use banger_core::logs::rotated_path;
use banger_core::names::{looks_like_id, validate_image_name, validate_vm_name};
use banger_core::size::{ByteSize, parse_size};

use crate::args::{CreateFlags, ListArgs, RunArgs, VmCommand};
use crate::error::CliError;
use crate::escape::{Mode, escape};
use crate::exec::Target;
use crate::logview::{Event, Tail};
use crate::ui::{self, Style};
use crate::words::CommandWords;
use crate::{Ctx, connect, connect_with};

/// Parses a size flag into bytes, naming the flag on error.
pub(crate) fn size_flag(flag: &str, v: &Option<String>) -> Result<Option<u64>, CliError> {
    v.as_deref()
        .map(|s| {
            let b = parse_size(s).map_err(|e| CliError::Usage(format!("--{flag}: {e}")))?;
            if b.bytes() == 0 {
                return Err(CliError::Usage(format!("--{flag} must be larger than 0")));
            }
            Ok(b.bytes())
        })
        .transpose()
}

pub(crate) fn memory_flag(v: &Option<String>) -> Result<Option<i64>, CliError> {
    // A leading '-' is a negative value, which the size parser would call garbage.
    if let Some(s) = v.as_deref()
        && s.trim_start().starts_with('-')
    {
        return Err(CliError::Usage(format!(
            "--memory must be larger than 0, got {s}"
        )));
    }
    Ok(size_flag("memory", v)?.map(|b| (b / (1 << 20)) as i64))
}

/// `--cpus`, `--memory`, `--disk` and `--work-disk` (of `vm create`, `vm run` and `vm set`),
/// checked against banger's own caps ([`VmLimits::BANGER`]: the same for every backend and
/// host) before the daemon is called; the daemon checks them again, and against the VM's
/// backend (Firecracker: at most 32 vCPUs).
fn settings_flags(
    cpus: Option<i64>,
    memory: &Option<String>,
    disk: &Option<String>,
    work_disk: &Option<String>,
) -> Result<VmSettings, CliError> {
    let settings = VmSettings {
        cpus,
        memory_mib: memory_flag(memory)?,
        disk_bytes: size_flag("disk", disk)?,
        work_disk_bytes: size_flag("work-disk", work_disk)?,
    };
    banger_core::limits::check(&settings.requested(), &VmLimits::BANGER)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(settings)
}

/// Builds the create request from flags, checked as the daemon will check it again.
pub fn create_request(f: &CreateFlags) -> Result<CreateVm, CliError> {
    if let Some(n) = &f.name {
        validate_vm_name(n).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    // An image reference is a name or an id (prefix); only a name has rules to check.
    if let Some(i) = &f.image
        && !looks_like_id(i)
    {
        validate_image_name(i).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    Ok(CreateVm {
        name: f.name.clone(),
        image: f.image.clone(),
        resources: settings_flags(f.cpus, &f.memory, &f.disk, &f.work_disk)?,
        nat: f.nat.then_some(true),
        vmm: f
            .vmm
            .as_deref()
            .map(|v| {
                v.parse::<VmmKind>()
                    .map_err(|e| CliError::Usage(format!("--vmm: {e}")))
            })
            .transpose()?,
        origin: None,
        cold: f.cold.then_some(true),
    })
}

pub async fn run(cmd: VmCommand, ctx: &mut Ctx) -> Result<u8, CliError> {
    match cmd {
        VmCommand::Create(f) => {
            let req = create_request(&f)?;
            let (client, _) = connect(ctx).await?;
            let vm = create(ctx, &client, &req, "vm create").await?;
            ctx.ui.line(&vm.name)?;
            Ok(0)
        }
        VmCommand::Run(a) => run_vm(ctx, a).await,
        VmCommand::Start(r) => act(ctx, VmAction::Start, r.refs).await,
        VmCommand::Stop(r) => act(ctx, VmAction::Stop, r.refs).await,
        VmCommand::Restart(r) => act(ctx, VmAction::Restart, r.refs).await,
        VmCommand::Pause(r) => act(ctx, VmAction::Pause, r.refs).await,
        VmCommand::Resume(r) => act(ctx, VmAction::Resume, r.refs).await,
        VmCommand::Fork(f) => {
            validate_vm_name(&f.name).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
            let (client, _) = connect(ctx).await?;
            let mut printer = crate::artifacts::stage_printer(ctx, "[vm fork]");
            let vm: Vm = client
                .stream(
                    Route::VmFork(&f.reference),
                    &banger_api::types::ForkVm { name: f.name },
                    |stage, detail, _| printer(stage, detail),
                )
                .await?;
            ctx.ui.line(&vm.name)?;
            Ok(0)
        }
        VmCommand::Kill(k) => act(ctx, VmAction::Kill { signal: k.signal }, k.refs.refs).await,
        VmCommand::Delete(r) => act(ctx, VmAction::Delete, r.refs).await,
        VmCommand::Prune(p) => prune(ctx, p.yes).await,
        VmCommand::Set(s) => {
            let settings = settings_flags(s.cpus, &s.memory, &s.disk, &s.work_disk)?;
            let nat = match (s.nat, s.no_nat) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            if settings == VmSettings::default() && nat.is_none() {
                return Err(CliError::Usage(
                    "nothing to set: give --cpus, --memory, --disk, --work-disk, --nat or --no-nat"
                        .into(),
                ));
            }
            act(ctx, VmAction::Set { settings, nat }, s.refs.refs).await
        }
        VmCommand::List(l) => list(ctx, &l).await,
        VmCommand::Show(r) => {
            let (client, _) = connect(ctx).await?;
            let vm: Vm = client.get(Route::Vm(&r.reference)).await?;
            if r.json {
                ctx.ui.json(&vm)?;
            } else {
                show(ctx, &vm)?;
            }
            Ok(0)
        }
        VmCommand::Logs(l) => logs(ctx, &l.reference, l.follow).await,
        VmCommand::Stats(r) => {
            let (client, _) = connect(ctx).await?;
            let s: VmStats = client.get(Route::VmStats(&r.reference)).await?;
            if r.json {
                ctx.ui.json(&s)?;
            } else {
                let text = ui::key_values(&[
                    ("vm", s.name.clone()),
                    ("pid", s.pid.to_string()),
                    ("uptime", format!("{}s", s.uptime_secs)),
                    (
                        "cpu",
                        format!(
                            "{:.2}s user, {:.2}s system",
                            s.cpu_user_secs, s.cpu_system_secs
                        ),
                    ),
                    ("memory (rss)", ByteSize(s.rss_bytes).to_string()),
                    ("threads", s.threads.to_string()),
                    (
                        "disk i/o",
                        match (s.read_bytes, s.write_bytes) {
                            (Some(r), Some(w)) => {
                                format!("{} read, {} written", ByteSize(r), ByteSize(w))
                            }
                            _ => "unavailable".into(),
                        },
                    ),
                    (
                        "root disk",
                        format!("{} allocated", ByteSize(s.root_disk_allocated)),
                    ),
                    (
                        "work disk",
                        format!("{} allocated", ByteSize(s.work_disk_allocated)),
                    ),
                ]);
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        VmCommand::Health(r) => {
            let (client, _) = connect(ctx).await?;
            let h: Health = client.get(Route::VmHealth(&r.reference)).await?;
            if r.json {
                ctx.ui.json(&h)?;
            } else {
                let text = ui::key_values(&[
                    ("status", ctx.ui.cell(Style::Green, "healthy")),
                    ("hostname", h.hostname.clone().into()),
                    (
                        "agent",
                        format!("{} (commit {})", h.version, h.commit).into(),
                    ),
                    ("uptime", format!("{}s", h.uptime_secs).into()),
                ]);
                ctx.ui.out().write_all(text.as_bytes())?;
            }
            Ok(0)
        }
        VmCommand::Ping(r) => {
            let (client, _) = connect(ctx).await?;
            let p: Ping = client.get(Route::VmPing(&r.reference)).await?;
            if r.json {
                ctx.ui.json(&p)?;
            } else {
                ctx.ui.line(&format!(
                    "pong from {} in {:.1} ms (agent {})",
                    p.name,
                    p.rtt_ms,
                    escape(&p.agent_version, Mode::Cell)
                ))?;
            }
            Ok(0)
        }
        VmCommand::Ports(r) => ports(ctx, &r.reference, r.json).await,
        VmCommand::Exec(e) => {
            let words = CommandWords::parse(&e.command)
                .ok_or_else(|| CliError::Usage("give the command to run after --".into()))?;
            // The VM's lookup and the exec upgrade go out with the daemon's build check.
            let reference = e.reference.clone();
            let (client, _, early) = connect_with(ctx, |c| async move {
                tokio::join!(
                    c.get::<Vm>(Route::Vm(&reference)),
                    crate::exec::upgrade(c.clone(), &reference)
                )
            })
            .await?;
            let (vm, mut io) = match early {
                Some((vm, io)) => (vm?, Some(io)),
                None => (client.get::<Vm>(Route::Vm(&e.reference)).await?, None),
            };
            let target = match &vm.workspace {
                None if e.auto_prepare => {
                    return Err(CliError::Usage(format!(
                        "VM {} has no workspace to prepare again; prepare one with: banger vm workspace prepare {} PATH",
                        vm.name, vm.name
                    )));
                }
                None => Target::plain(&words),
                Some(ws) => {
                    if e.auto_prepare {
                        // The session opened early would idle through the prepare.
                        io = None;
                        crate::workspace::reprepare(ctx, &client, &vm.name, ws).await?;
                    } else if let Some(warning) = crate::workspace::head_moved(ctx, ws) {
                        ctx.ui.note(&escape(&warning, Mode::Text))?;
                    }
                    Target::in_workspace(&words, &ws.guest_path)
                }
            };
            // By name: the user's words in messages, and a name always resolves exactly.
            let io = match io {
                Some(io) => io?,
                None => crate::exec::upgrade(client, &vm.name).await?,
            };
            crate::exec::session(
                io,
                &vm.name,
                &target,
                crate::exec::wants_pty(e.tty.forced()),
            )
            .await
        }
        VmCommand::Workspace(w) => crate::workspace::run(w, ctx).await,
        VmCommand::Ssh(s) => {
            let (client, _) = connect(ctx).await?;
            let vm: Vm = client.get(Route::Vm(&s.reference)).await?;
            let info: SshInfo = client.get(Route::Ssh).await?;
            if vm.state != banger_api::types::VmState::Running {
                return Err(CliError::Usage(format!(
                    "VM {} is {}; start it with: banger vm start {}",
                    vm.name, vm.state, vm.name
                )));
            }
            if vm.paused {
                return Err(CliError::Usage(format!(
                    "VM {} is paused; resume it with: banger vm resume {}",
                    vm.name, vm.name
                )));
            }
            // A VM that just started may not have its sshd up yet.
            let ip = vm.ip.map(|ip| ip.to_string()).unwrap_or_default();
            if !banger_api::probe::wait_ssh(&ip, Duration::from_secs(info.wait_secs)).await {
                return Err(CliError::SshTimeout {
                    vm: vm.name.clone(),
                    ip,
                    secs: info.wait_secs,
                });
            }
            let code = ssh(&vm, &info, &s.command, None)?;
            if s.command.is_empty() {
                still_running_reminder(ctx, &client, &vm.name).await?;
            }
            Ok(code)
        }
    }
}

/// Creates a VM, printing each stage to stderr as `[label] stage: detail`.
async fn create(
    ctx: &mut Ctx,
    client: &Client,
    req: &CreateVm,
    label: &str,
) -> Result<Vm, CliError> {
    let prefix = ctx.ui.paint_err(Style::Dim, &format!("[{label}]"));
    let mut err = std::io::stderr();
    let vm: Vm = client
        .stream(Route::VmCreate, req, |stage, detail, _ms| {
            // Stage details may quote an image or a guest.
            let (stage, detail) = (escape(stage, Mode::Text), escape(detail, Mode::Text));
            let (stage, detail) = (stage.as_ref(), detail.as_ref());
            let line = if detail.is_empty() || stage == "ready" && detail.starts_with("ready") {
                format!("{prefix} {}", if stage == "ready" { detail } else { stage })
            } else {
                format!("{prefix} {stage}: {detail}")
            };
            let _ = writeln!(err, "{line}");
        })
        .await?;
    Ok(vm)
}

async fn act(ctx: &mut Ctx, action: VmAction, refs: Vec<String>) -> Result<u8, CliError> {
    let (client, _) = connect(ctx).await?;
    // Stopping or starting many VMs takes as long as it takes, while the daemon is alive.
    let outcomes: Vec<ActionOutcome> = client
        .post_long(
            Route::VmActions,
            &ActionRequest {
                refs,
                action: action.clone(),
            },
        )
        .await?;
    let mut failed = 0;
    for o in &outcomes {
        match (&o.error, &o.vm) {
            (None, Some(vm)) => {
                let mut line = format!("{} {vm}", action.past_tense());
                if let Some(n) = &o.note {
                    line.push_str(&format!(" ({n})"));
                }
                ctx.ui.line(&escape(&line, Mode::Text))?;
            }
            (Some(e), _) => {
                failed += 1;
                let op = ctx.ui.paint_err(Style::Dim, &format!("(op {})", e.op_id));
                let who = escape(o.vm.as_deref().unwrap_or(&o.reference), Mode::Cell);
                ctx.ui.note(&format!(
                    "banger: {who}: {}: {} {op}",
                    e.kind.word(),
                    escape(&e.message, Mode::Text)
                ))?;
            }
            (None, None) => {}
        }
    }
    if failed > 0 {
        return Err(CliError::Partial {
            failed,
            total: outcomes.len(),
        });
    }
    Ok(0)
}

/// `vm prune`: the VMs that are not running, in a table; deleted after a yes (read from
/// stdin, as `docker container prune` does, so `yes | banger vm prune` works too) or with
/// `--yes`. The daemon deletes each only if it is still not running.
async fn prune(ctx: &mut Ctx, yes: bool) -> Result<u8, CliError> {
    use banger_api::types::VmState;
    let (client, _) = connect(ctx).await?;
    let vms: Vec<Vm> = client.get(Route::VmList { all: true }).await?;
    let stopped: Vec<&Vm> = vms
        .iter()
        .filter(|v| matches!(v.state, VmState::Stopped | VmState::Error))
        .collect();
    if stopped.is_empty() {
        ctx.ui.note("no stopped VMs")?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = stopped
        .iter()
        .map(|v| {
            vec![
                v.id[..12.min(v.id.len())].to_string(),
                v.name.clone(),
                v.state.to_string(),
                v.image.clone(),
                ByteSize(v.disk_bytes + v.work_disk_bytes).to_string(),
                v.created_at.clone(),
            ]
        })
        .collect();
    let table = ui::table(&["ID", "NAME", "STATE", "IMAGE", "DISKS", "CREATED"], &rows);
    ctx.ui.out().write_all(table.as_bytes())?;
    ctx.ui.out().flush()?;
    if !yes {
        let n = stopped.len();
        let prompt = format!(
            "Delete {n} VM{} and {} disks? [y/N] ",
            if n == 1 { "" } else { "s" },
            if n == 1 { "its" } else { "their" }
        );
        ctx.ui.err().write_all(prompt.as_bytes())?;
        ctx.ui.err().flush()?;
        let mut answer = String::new();
        // EOF (no answer) is a no.
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            ctx.ui.note("nothing deleted")?;
            return Ok(1);
        }
    }
    let ids = stopped.iter().map(|v| v.id.clone()).collect();
    act(ctx, VmAction::Prune, ids).await
}

async fn list(ctx: &mut Ctx, l: &ListArgs) -> Result<u8, CliError> {
    let (client, _) = connect(ctx).await?;
    let all = l.all || l.latest;
    let mut vms: Vec<Vm> = client.get(Route::VmList { all }).await?;
    if l.latest {
        vms.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        vms = vms.pop().into_iter().collect();
    }
    if l.json {
        ctx.ui.json(&vms)?;
    } else if l.quiet {
        for v in &vms {
            ctx.ui.line(&v.id[..12.min(v.id.len())])?;
        }
    } else {
        let rows: Vec<Vec<ui::Cell>> = vms
            .iter()
            .map(|v| {
                let state = match v.state {
                    banger_api::types::VmState::Running if v.paused => {
                        ctx.ui.cell(Style::Yellow, "paused")
                    }
                    banger_api::types::VmState::Running => ctx.ui.cell(Style::Green, "running"),
                    banger_api::types::VmState::Error => ctx.ui.cell(Style::Red, "error"),
                    s => s.to_string().into(),
                };
                vec![
                    v.id[..12.min(v.id.len())].into(),
                    v.name.clone().into(),
                    state,
                    v.image.clone().into(),
                    v.ip.map(|ip| ip.to_string()).unwrap_or_default().into(),
                    v.cpus.to_string().into(),
                    ByteSize::mib(v.memory_mib).to_string().into(),
                    v.vmm.as_str().into(),
                    v.workspace
                        .as_ref()
                        .map(workspace_cell)
                        .unwrap_or_else(|| "-".into())
                        .into(),
                ]
            })
            .collect();
        let text = ui::table(
            &[
                "ID",
                "NAME",
                "STATE",
                "IMAGE",
                "IP",
                "CPUS",
                "MEMORY",
                "VMM",
                "WORKSPACE",
            ],
            &rows,
        );
        ctx.ui.out().write_all(text.as_bytes())?;
    }
    Ok(0)
}

/// The WORKSPACE cell of `vm list`: the host repository's directory name (the guest path
/// when it has none).
fn workspace_cell(ws: &banger_api::types::Workspace) -> String {
    ws.host_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ws.guest_path.clone())
}

pub async fn list_ps(ctx: &mut Ctx, l: &ListArgs) -> Result<u8, CliError> {
    list(ctx, l).await
}

fn show(ctx: &mut Ctx, vm: &Vm) -> Result<(), CliError> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut pairs = vec![
        ("id", vm.id.clone()),
        ("name", vm.name.clone()),
        (
            "state",
            if vm.paused {
                "paused".to_string()
            } else {
                vm.state.to_string()
            },
        ),
        ("image", vm.image.clone()),
        ("vmm", vm.vmm.to_string()),
        ("cpus", vm.cpus.to_string()),
        ("memory", ByteSize::mib(vm.memory_mib).to_string()),
        ("disk", ByteSize(vm.disk_bytes).to_string()),
        ("work disk", ByteSize(vm.work_disk_bytes).to_string()),
        ("ip", opt(&vm.ip.map(|ip| ip.to_string()))),
        ("mac", opt(&vm.mac.map(|m| m.to_string()))),
        ("tap", opt(&vm.tap)),
        ("nat", if vm.nat { "on" } else { "off" }.to_string()),
        ("pid", vm.pid.map_or("-".into(), |p| p.to_string())),
        ("created", vm.created_at.clone()),
        ("origin", vm.origin.to_string()),
        (
            "warm start",
            match (&vm.restored_from, &vm.disk_clone) {
                (Some(t), Some(how)) => format!("restored from template {t} ({how} disks)"),
                (Some(t), None) => format!("restored from template {t}"),
                _ => "-".into(),
            },
        ),
        (
            "forked from",
            match (&vm.forked_from, &vm.disk_clone, &vm.fork_memory) {
                (Some(from), Some(how), Some(memory)) => {
                    format!("{from} ({how} disks, memory {memory})")
                }
                (Some(from), _, _) => from.clone(),
                _ => "-".into(),
            },
        ),
        ("started", opt(&vm.started_at)),
        ("console log", vm.console_log.display().to_string()),
        ("vmm log", vm.vmm_log.display().to_string()),
    ];
    match &vm.workspace {
        None => pairs.push(("workspace", "-".into())),
        Some(ws) => {
            pairs.push(("workspace", ws.guest_path.clone()));
            pairs.push(("  host path", ws.host_path.display().to_string()));
            pairs.push((
                "  head",
                match &ws.branch {
                    Some(b) => format!("{} (branch {b})", ws.head),
                    None => format!("{} (detached)", ws.head),
                },
            ));
            pairs.push(("  mode", ws.mode.to_string()));
            if ws.include_untracked {
                pairs.push(("  untracked", "included".into()));
            }
            pairs.push(("  prepared", ws.prepared_at.clone()));
        }
    }
    if let Some(e) = &vm.error {
        pairs.push(("last error", e.clone()));
    }
    ctx.ui.out().write_all(ui::key_values(&pairs).as_bytes())?;
    Ok(())
}

/// `vm logs [-f]`: the console log, then the VMM log under a header; byte for byte to a pipe or
/// a file, escaped on a terminal (see [`crate::logview`]).
async fn logs(ctx: &mut Ctx, reference: &str, follow: bool) -> Result<u8, CliError> {
    let (client, _) = connect(ctx).await?;
    let vm: Vm = client.get(Route::Vm(reference)).await?;
    let escape = ctx.ui.stdout_is_terminal();
    let mut tails = [
        ("console", Tail::new(vm.console_log.clone(), escape)),
        ("vmm", Tail::new(vm.vmm_log.clone(), escape)),
    ];
    for (i, (label, tail)) in tails.iter_mut().enumerate() {
        if i == 1 && !tail.is_empty() {
            let header = ctx.ui.paint(
                Style::Dim,
                &format!("--- {label} log ({}) ---", tail.path().display()),
            );
            ctx.ui.line(&header)?;
        }
        tail.dump(ctx.ui.out())?;
    }
    if !follow {
        for (_, tail) in &mut tails {
            tail.finish(ctx.ui.out())?;
        }
        return Ok(0);
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                for (_, tail) in &mut tails {
                    tail.finish(ctx.ui.out())?;
                }
                ctx.ui.out().flush()?;
                return Ok(0);
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for (label, tail) in &mut tails {
            if tail.poll(ctx.ui.out())? == Event::Rotated {
                let note = ctx.ui.paint_err(
                    Style::Dim,
                    &format!(
                        "--- {label} log rotated by the daemon (max_log_size); its older part is in {} ---",
                        rotated_path(tail.path()).display()
                    ),
                );
                ctx.ui.note(&note)?;
            }
        }
        ctx.ui.out().flush()?;
    }
}

async fn ports(ctx: &mut Ctx, reference: &str, json: bool) -> Result<u8, CliError> {
    let (client, _) = connect(ctx).await?;
    let p: Ports = client.get(Route::VmPorts(reference)).await?;
    if json {
        ctx.ui.json(&p)?;
        return Ok(0);
    }
    ctx.ui.out().write_all(ports_table(&p).as_bytes())?;
    Ok(0)
}

/// The `vm ports` table: one row per listener (the daemon collapsed dual-stack twins), a
/// web server's URL in place of its endpoint, so a terminal shows it as a link. Process names
/// and command lines come from the guest; the table escapes them, so they cannot add rows or
/// reach the terminal as control sequences.
fn ports_table(p: &Ports) -> String {
    let rows: Vec<Vec<String>> = p
        .listeners
        .iter()
        .map(|l| {
            vec![
                format!("{:?}", l.proto).to_lowercase(),
                l.url.clone().unwrap_or_else(|| l.endpoint.clone()),
                l.process.clone().unwrap_or_else(|| "-".into()),
                l.command.clone().unwrap_or_default(),
            ]
        })
        .collect();
    ui::table(&["PROTO", "ENDPOINT", "PROCESS", "COMMAND"], &rows)
}

/// The ssh command line for a VM with the managed key, checking the guest's host key
/// strictly against banger's known_hosts (`info.known_hosts`, filled at boot). Without a
/// command, an interactive login shell, in `workdir` when given.
pub fn ssh_args(
    ip: &str,
    info: &SshInfo,
    command: &[String],
    workdir: Option<&str>,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-i",
        &info.private_key.display().to_string(),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        // Quoted: ssh splits this option's value into several files at spaces.
        &format!("UserKnownHostsFile=\"{}\"", info.known_hosts.display()),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "ConnectTimeout=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if command.is_empty() {
        args.push("-t".into());
    }
    args.push(format!("root@{ip}"));
    if let Some(words) = CommandWords::parse(command) {
        args.push("--".into());
        args.push(words.remote_line());
    } else if let Some(dir) = workdir {
        args.push("--".into());
        args.push(format!(
            "cd {} && exec \"${{SHELL:-/bin/sh}}\" -l",
            crate::words::quote(dir)
        ));
    }
    args
}

/// Runs ssh in the foreground; returns the remote exit status.
fn ssh(vm: &Vm, info: &SshInfo, command: &[String], workdir: Option<&str>) -> Result<u8, CliError> {
    let ip = vm
        .ip
        .map(|ip| ip.to_string())
        .ok_or_else(|| CliError::Usage(format!("VM {} has no IP", vm.name)))?;
    let status = std::process::Command::new("ssh")
        .args(ssh_args(&ip, info, command, workdir))
        .stdin(Stdio::inherit())
        .status()
        .map_err(|source| CliError::Spawn {
            program: "ssh".into(),
            source,
        })?;
    match status.code() {
        Some(255) => Err(CliError::Ssh {
            vm: vm.name.clone(),
            detail: format!(
                "ssh exited with status 255 (connection or authentication failure){}",
                unknown_host_hint(&vm.name, &info.known_hosts)
            ),
        }),
        Some(c) => Ok(c as u8),
        None => Err(CliError::Ssh {
            vm: vm.name.clone(),
            detail: format!("ssh ended by {status}"),
        }),
    }
}

/// When banger's known_hosts holds no key for VM `name` (strict checking then refuses the
/// guest), what to do about it.
fn unknown_host_hint(name: &str, known_hosts: &Path) -> String {
    let text = std::fs::read_to_string(known_hosts).unwrap_or_default();
    if banger_core::known_hosts::knows(&text, name) {
        String::new()
    } else {
        format!(
            "; {} holds no host key for it: banger records a guest's keys when it boots, so restart it (banger vm restart {name})",
            known_hosts.display()
        )
    }
}

async fn still_running_reminder(
    ctx: &mut Ctx,
    client: &Client,
    name: &str,
) -> Result<(), CliError> {
    if let Ok(vm) = client.get::<Vm>(Route::Vm(name)).await
        && vm.state == banger_api::types::VmState::Running
    {
        ctx.ui.note(&ctx.ui.paint_err(
            Style::Dim,
            &format!("vm {name} is still running (stop with: banger vm stop {name})"),
        ))?;
    }
    Ok(())
}

async fn run_vm(ctx: &mut Ctx, a: RunArgs) -> Result<u8, CliError> {
    // A PATH banger cannot ship is refused before anything is made; --dry-run stops here.
    let plan = match &a.path {
        Some(path) => Some(crate::workspace::inspect(ctx, path, &a.workspace)?),
        None => None,
    };
    if let Some(plan) = &plan
        && a.workspace.dry_run
    {
        crate::workspace::print_plan(ctx, plan, a.workspace.json)?;
        return Ok(0);
    }
    let req = create_request(&a.create)?;
    let (client, _) = connect(ctx).await?;
    let info: SshInfo = client.get(Route::Ssh).await?;
    let vm = create(ctx, &client, &req, "vm create").await?;
    let tag = ctx.ui.paint_err(Style::Dim, "[vm run]");
    let result = run_in(ctx, &client, &info, &vm, &a, plan.as_ref(), &tag).await;
    if let Err(CliError::SshTimeout { .. }) = &result {
        // Keep the VM for a post-mortem, even with --rm.
        return result;
    }
    if a.rm {
        // A fresh, short deadline of its own: an interrupted session must not skip cleanup.
        let cleanup = tokio::time::timeout(
            Duration::from_secs(60),
            client.post_long::<_, Vec<ActionOutcome>>(
                Route::VmActions,
                &ActionRequest {
                    refs: vec![vm.id.clone()],
                    action: VmAction::Delete,
                },
            ),
        )
        .await;
        // Why the VM is still there, if it is.
        let failure = match cleanup {
            Ok(Ok(outcomes)) => outcomes
                .into_iter()
                .find_map(|o| o.error.map(|e| e.to_string())),
            Ok(Err(e)) => Some(banger_core::error::chain(&e)),
            Err(_) => Some("the daemon did not answer within 60 s".to_string()),
        };
        match failure {
            None => ctx.ui.note(&format!("{tag} deleted {}", vm.name))?,
            Some(why) => ctx.ui.note(&format!(
                "banger: could not delete VM {}: {}; delete it with: banger vm delete {}",
                vm.name,
                crate::escape::escape(&why, crate::escape::Mode::Text),
                vm.name
            ))?,
        }
    } else if a.command.is_empty() {
        still_running_reminder(ctx, &client, &vm.name).await?;
    }
    result
}

/// What `vm run` does in the VM it made: the workspace, then the command or the shell.
async fn run_in(
    ctx: &mut Ctx,
    client: &Client,
    info: &SshInfo,
    vm: &Vm,
    a: &RunArgs,
    plan: Option<&banger_workspace::Inspection>,
    tag: &str,
) -> Result<u8, CliError> {
    let guest_path = match plan {
        Some(plan) => {
            let prepared =
                crate::workspace::prepare(ctx, client, &vm.id, plan, &a.workspace, false).await?;
            Some(prepared.workspace.guest_path)
        }
        None => None,
    };
    match CommandWords::parse(&a.command) {
        // A command runs through the agent, which answered before the VM was ready.
        Some(words) => {
            let target = match &guest_path {
                Some(path) => Target::in_workspace(&words, path),
                None => Target::plain(&words),
            };
            crate::exec::exec(
                client,
                &vm.id,
                &target,
                crate::exec::wants_pty(a.tty.forced()),
            )
            .await
        }
        None => {
            let secs = a.ssh_timeout.unwrap_or(info.wait_secs);
            ctx.ui.note(&format!(
                "{tag} wait ssh: {} (up to {secs}s)",
                vm.ip.map(|ip| ip.to_string()).unwrap_or_default()
            ))?;
            let ip = vm.ip.map(|ip| ip.to_string()).unwrap_or_default();
            if !banger_api::probe::wait_ssh(&ip, Duration::from_secs(secs)).await {
                return Err(CliError::SshTimeout {
                    vm: vm.name.clone(),
                    ip,
                    secs,
                });
            }
            ctx.ui.note(&format!("{tag} ssh ready"))?;
            ssh(vm, info, &a.command, guest_path.as_deref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SshInfo {
        SshInfo {
            private_key: "/k".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            wait_secs: 1,
            known_hosts: "/state/ssh/known hosts".into(),
        }
    }

    #[test]
    fn ssh_checks_host_keys_strictly_against_banger_s_file() {
        let a = ssh_args("172.30.0.2", &info(), &[], None).join(" ");
        assert!(a.contains("-o StrictHostKeyChecking=yes"), "{a}");
        assert!(
            a.contains("-o UserKnownHostsFile=\"/state/ssh/known hosts\" "),
            "{a}"
        );
        assert!(!a.contains("StrictHostKeyChecking=no"), "{a}");
        assert!(!a.contains("UserKnownHostsFile=/dev/null"), "{a}");
    }

    #[test]
    fn an_unknown_host_gets_the_fix_and_a_known_one_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let known = dir.path().join("known_hosts");
        let hint = unknown_host_hint("web", &known);
        assert!(hint.contains("banger vm restart web"), "{hint}");
        std::fs::write(
            &known,
            "web.vm,172.30.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n",
        )
        .unwrap();
        assert_eq!(unknown_host_hint("web", &known), "");
    }

    #[test]
    fn ssh_gets_an_argv_quoted_and_a_shell_line_as_it_is() {
        let a = ssh_args(
            "172.30.0.2",
            &info(),
            &["sh".into(), "-c".into(), "exit 7".into()],
            Some("/root/repo"),
        );
        assert_eq!(a.last().unwrap(), "sh -c 'exit 7'");
        assert!(!a.contains(&"-t".to_string()));
        assert!(ssh_args("1.2.3.4", &info(), &[], None).contains(&"-t".to_string()));
        let a = ssh_args("1.2.3.4", &info(), &["echo kept > /root/f".into()], None);
        assert_eq!(a.last().unwrap(), "echo kept > /root/f");
        // The interactive shell of a workspace starts in it, on a terminal.
        let a = ssh_args("1.2.3.4", &info(), &[], Some("/root/my repo"));
        assert!(a.contains(&"-t".to_string()));
        assert_eq!(
            a.last().unwrap(),
            "cd '/root/my repo' && exec \"${SHELL:-/bin/sh}\" -l"
        );
    }

    #[test]
    fn create_flags_are_checked() {
        let bad = |f: CreateFlags| create_request(&f).is_err();
        assert!(bad(CreateFlags {
            name: Some("Bad".into()),
            ..Default::default()
        }));
        assert!(bad(CreateFlags {
            cpus: Some(0),
            ..Default::default()
        }));
        assert!(bad(CreateFlags {
            cpus: Some(-2),
            ..Default::default()
        }));
        assert!(bad(CreateFlags {
            memory: Some("0".into()),
            ..Default::default()
        }));
        assert!(bad(CreateFlags {
            memory: Some("-5".into()),
            ..Default::default()
        }));
        assert!(bad(CreateFlags {
            memory: Some("lots".into()),
            ..Default::default()
        }));
        assert!(bad(CreateFlags {
            disk: Some("0G".into()),
            ..Default::default()
        }));
        // banger's own caps, whatever the backend.
        for (cpus, memory, disk) in [
            (Some(256), None, None),
            (Some(i64::MAX), None, None),
            (None, Some("2T"), None),
            (None, Some("512K"), None),
            (None, None, Some("17T")),
        ] {
            let f = CreateFlags {
                cpus,
                memory: memory.map(String::from),
                disk: disk.map(String::from),
                ..Default::default()
            };
            assert!(bad(f.clone()), "{f:?}");
        }
        let e = create_request(&CreateFlags {
            cpus: Some(256),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("between 1 and 255"), "{e}");
        // Names that look like ids are refused; an image may be given by id.
        assert!(bad(CreateFlags {
            name: Some("0123456789ab".into()),
            ..Default::default()
        }));
        assert!(bad(CreateFlags {
            image: Some("-rf".into()),
            ..Default::default()
        }));
        assert!(
            create_request(&CreateFlags {
                image: Some("0123456789abcdef".into()),
                ..Default::default()
            })
            .is_ok()
        );
        let ok = create_request(&CreateFlags {
            memory: Some("1G".into()),
            cpus: Some(4),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (ok.resources.cpus, ok.resources.memory_mib, ok.name, ok.nat),
            (Some(4), Some(1024), None, None)
        );
    }

    // Adversarial corpus: terminal escaping of guest text in `vm ports` and `vm logs`.

    fn listener(port: u16, process: &str, command: &str) -> banger_api::types::PortListener {
        banger_api::types::PortListener {
            proto: banger_api::types::Proto::Tcp,
            family: banger_api::types::Family::Ipv4,
            address: "0.0.0.0".into(),
            port,
            pid: Some(u32::from(port)),
            process: Some(process.into()),
            command: Some(command.into()),
            endpoint: format!("web.vm:{port}"),
            url: None,
        }
    }

    #[test]
    fn a_web_listener_shows_its_url_in_place_of_the_endpoint() {
        let mut web = listener(8000, "python3", "python3 -m http.server");
        web.url = Some("http://web.vm:8000/".into());
        let t = ports_table(&Ports {
            listeners: vec![listener(22, "sshd", "sshd -D"), web],
        });
        assert_eq!(
            t,
            "PROTO  ENDPOINT             PROCESS  COMMAND\n\
             tcp    web.vm:22            sshd     sshd -D\n\
             tcp    http://web.vm:8000/  python3  python3 -m http.server\n"
        );
    }

    #[test]
    fn adversarial_ports_table_escapes_guest_process_names_and_commands() {
        let ports = Ports {
            listeners: vec![
                listener(
                    8000,
                    "py\x1b]0;pwned\x07",
                    "python3 -m http.server\x1b[2J\x1b[H",
                ),
                listener(
                    8001,
                    "evil",
                    "sleep 9\ntcp    web.vm:22    sshd    /usr/sbin/sshd -D",
                ),
                listener(8002, "rtl\u{202e}dhss", "x\ry\tz\u{9b}31m"),
            ],
        };
        let t = ports_table(&ports);
        // A header and exactly three rows: the embedded newline faked none.
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(!t.lines().any(|l| l.starts_with("tcp    web.vm:22")), "{t}");
        for bad in ['\x1b', '\x07', '\r', '\t', '\u{202e}', '\u{9b}'] {
            assert!(!t.contains(bad), "{bad:?} reached the table: {t:?}");
        }
        assert!(t.contains("py\\x1b]0;pwned\\x07"), "{t}");
        assert!(t.contains("sleep 9\\ntcp    web.vm:22"), "{t}");
        assert!(t.contains("rtl\\u{202e}dhss"), "{t}");
        assert!(t.contains("x\\ry\\tz\\u{9b}31m"), "{t}");
    }
}
