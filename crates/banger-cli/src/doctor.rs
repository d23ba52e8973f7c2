//! `banger doctor`: read-only checks of this host, each PASS, WARN or FAIL with a fix.
//!
//! Nothing here writes: the store is opened read-only (and not at all when it does not exist),
//! the daemon is asked for its status but never started, and no directory is created.
//!
//! The host facts (binaries on `PATH`, KVM, the agent's static check) come from
//! [`banger_core::probe`], the same probe the daemon uses, so doctor reports what the daemon
//! will find.

use std::path::{Path, PathBuf};

use banger_api::Client;
use banger_api::types::{DaemonStatus, DnsListener, DnsRouting};
use banger_core::build::BuildInfo;
use banger_core::config::Config;
use banger_core::error::chain;
use banger_core::layout::Layout;
use banger_core::probe::{self, KvmDevice, LocateError, Located, SearchPath};
use banger_core::vmm_kind::{VmmChoice, VmmKind, choose_vmm};
use banger_store::{MIGRATIONS, Store, StoreError};
use serde::Serialize;

use crate::HostEnv;
use crate::daemonctl::Conn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// The command or step that fixes a WARN or FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        check: name.to_string(),
        status,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

/// Host facts the checks read; real paths in production, fixtures in tests.
#[derive(Debug, Clone)]
pub struct Host {
    pub dev_kvm: PathBuf,
    /// `/dev/vhost-vsock`, for QEMU's vsock.
    pub dev_vhost_vsock: PathBuf,
    pub cpuinfo: PathBuf,
    /// `/proc/self/status`, for the effective capabilities.
    pub proc_status: PathBuf,
    /// The environment `banger` read (`PATH`, `BANGER_AGENT_BIN`, the VMM overrides).
    pub env: HostEnv,
    /// Who runs doctor, and how long it waits for a silent daemon.
    pub conn: Conn,
}

impl Host {
    /// This host, with the environment the caller read.
    pub fn real(env: HostEnv, conn: Conn) -> Self {
        Self {
            dev_kvm: PathBuf::from(probe::DEV_KVM),
            dev_vhost_vsock: PathBuf::from(DEV_VHOST_VSOCK),
            cpuinfo: PathBuf::from(probe::PROC_CPUINFO),
            proc_status: PathBuf::from("/proc/self/status"),
            env,
            conn,
        }
    }
}

/// Runs every check.
pub async fn run(layout: &Layout, host: &Host) -> Vec<Check> {
    let (daemon, status) = daemon_check(layout, host.conn).await;
    let mut checks = vec![
        dirs_check(layout, host.conn.euid),
        config_check(layout),
        daemon,
        dns_check(status.as_ref().map(|s| &s.dns)).await,
        dns_routing_check(status.as_ref().map(|s| (&s.dns, &s.dns_routing))),
        ssh_config_check(layout, host.conn, status.is_some()).await,
        store_check(layout),
        daemon_binary_check(&host.env),
        agent_binary_check(&host.env),
        kvm_check(&host.dev_kvm, &host.cpuinfo),
        net_admin_check(&host.proc_status, &helper_socket(layout, &host.env)),
        vhost_vsock_check(&host.dev_vhost_vsock),
    ];
    checks.extend(vmm_checks(layout, host));
    checks.extend(artifact_checks(layout).await);
    checks.extend(tool_checks(&SearchPath::programs(host.env.path.as_deref())));
    checks
}

fn config_check(layout: &Layout) -> Check {
    let path = layout.config_file();
    match Config::load(&path) {
        Ok(l) if l.warnings.is_empty() && path.exists() => check(
            "config",
            Status::Pass,
            format!("{} is valid", path.display()),
            None,
        ),
        Ok(l) if l.warnings.is_empty() => check(
            "config",
            Status::Pass,
            format!("no {} (defaults apply)", path.display()),
            None,
        ),
        Ok(l) => check(
            "config",
            Status::Warn,
            l.warnings.join("; "),
            Some("remove or correct the unknown keys (see docs/config.md)"),
        ),
        Err(e) => check(
            "config",
            Status::Fail,
            chain(&e),
            Some("fix the config file (see docs/config.md)"),
        ),
    }
}

/// The config, state and runtime dirs that exist belong to this user and are private.
fn dirs_check(layout: &Layout, euid: u32) -> Check {
    match layout.check_existing(euid) {
        Ok(()) => check(
            "dirs",
            Status::Pass,
            format!(
                "{}, {} and {} are yours and not writable by others (or not created yet)",
                layout.config_dir.display(),
                layout.state_dir.display(),
                layout.runtime_dir.display()
            ),
            None,
        ),
        // The error names the dir, its owner and mode, and the fix.
        Err(e) => check("dirs", Status::Fail, chain(&e), None),
    }
}

/// The daemon's own check, and its status when it answered.
async fn daemon_check(layout: &Layout, conn: Conn) -> (Check, Option<DaemonStatus>) {
    let client: Client = match crate::daemonctl::client(layout, conn) {
        Ok(c) => c,
        Err(e) => {
            return (check("daemon", Status::Fail, chain(&e), None), None);
        }
    };
    let reply = client.get::<DaemonStatus>(banger_api::Route::Status).await;
    let check = match &reply {
        Ok(st) if st.build == BuildInfo::current() => check(
            "daemon",
            Status::Pass,
            format!("running, pid {}, {}", st.pid, st.build),
            None,
        ),
        Ok(st) => check(
            "daemon",
            Status::Warn,
            format!("running an older build ({}), pid {}", st.build, st.pid),
            Some("any banger command replaces it, e.g. banger daemon status"),
        ),
        Err(e) if e.is_unreachable() => check(
            "daemon",
            Status::Warn,
            format!(
                "not running (nothing answers on {})",
                layout.socket_path().display()
            ),
            Some("it starts on demand; to start it now: banger daemon status"),
        ),
        Err(e) => check(
            "daemon",
            Status::Fail,
            chain(&e),
            Some("banger daemon stop"),
        ),
    };
    (check, reply.ok())
}

/// How long doctor waits for the daemon's DNS server.
const DNS_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The daemon's DNS server answers for `.vm` where the daemon says it listens.
async fn dns_check(listener: Option<&DnsListener>) -> Check {
    const NAME: &str = "dns";
    let Some(listener) = listener else {
        return check(
            NAME,
            Status::Warn,
            "the daemon is not running; it serves .vm names when it runs",
            None,
        );
    };
    match listener {
        DnsListener::Off => check(
            NAME,
            Status::Warn,
            "off (config dns = false): NAME.vm names do not resolve",
            Some("set dns = true in the config (see docs/config.md)"),
        ),
        DnsListener::Failed { error } => check(
            NAME,
            Status::Fail,
            format!("the daemon's DNS server did not start: {error}"),
            Some("free the port or set dns_listen (see docs/config.md)"),
        ),
        DnsListener::Listening { address } => {
            match banger_dns::probe(*address, DNS_PROBE_TIMEOUT).await {
                Ok(()) => check(
                    NAME,
                    Status::Pass,
                    format!("answers for .vm on {address} (UDP)"),
                    None,
                ),
                Err(e) => check(NAME, Status::Fail, chain(&e), Some("banger daemon stop")),
            }
        }
    }
}

fn store_check(layout: &Layout) -> Check {
    let path = layout.db_path();
    match Store::open_read_only(&path) {
        Ok(store) => match store.applied_migrations() {
            Ok(ids) => {
                let pending = MIGRATIONS.iter().filter(|m| !ids.contains(&m.id)).count();
                if pending == 0 {
                    check(
                        "store",
                        Status::Pass,
                        format!(
                            "{} readable, schema current ({} migrations)",
                            path.display(),
                            ids.len()
                        ),
                        None,
                    )
                } else {
                    check(
                        "store",
                        Status::Warn,
                        format!(
                            "{} readable, {pending} migration(s) pending",
                            path.display()
                        ),
                        Some("the daemon applies them when it next starts"),
                    )
                }
            }
            Err(e) => check("store", Status::Fail, chain(&e), None),
        },
        Err(StoreError::Missing { .. }) => check(
            "store",
            Status::Warn,
            format!("no database yet at {}", path.display()),
            Some("created when the daemon first starts"),
        ),
        Err(e) => check("store", Status::Fail, chain(&e), None),
    }
}

const BUILD_FIX: &str = "build and install banger as the README says (scripts/build)";

fn daemon_binary_check(env: &HostEnv) -> Check {
    const NAME: &str = "bangerd binary";
    match probe::find_companion("bangerd", env.exe_dir(), &env.search_path()) {
        Some(path) => check(NAME, Status::Pass, path.display().to_string(), None),
        None => check(
            NAME,
            Status::Fail,
            "not found next to banger or on PATH",
            Some(BUILD_FIX),
        ),
    }
}

/// The guest agent, found as the daemon and `make-bundle` find it, and static.
fn agent_binary_check(env: &HostEnv) -> Check {
    const NAME: &str = "banger-agent binary";
    let Some(path) = env.agent() else {
        return check(
            NAME,
            Status::Fail,
            "not found next to banger or on PATH (or set BANGER_AGENT_BIN)",
            Some(BUILD_FIX),
        );
    };
    match probe::check_agent(&path) {
        Ok(()) => check(
            NAME,
            Status::Pass,
            format!("{} (static)", path.display()),
            None,
        ),
        Err(e @ probe::AgentError::Dynamic { .. }) => check(
            NAME,
            Status::Fail,
            chain(&e),
            Some("build it static: scripts/build (RUSTFLAGS='-C target-feature=+crt-static')"),
        ),
        Err(e @ probe::AgentError::Unreadable { .. }) => check(NAME, Status::Fail, chain(&e), None),
    }
}

fn kvm_check(dev_kvm: &Path, cpuinfo: &Path) -> Check {
    const NAME: &str = "/dev/kvm";
    let probe = probe::probe_kvm(dev_kvm, cpuinfo);
    match (&probe.device, probe.cpu_flag) {
        (KvmDevice::Absent, _) => check(
            NAME,
            Status::Warn,
            "absent: Firecracker cannot run; QEMU runs guests under TCG (slow)",
            Some("enable virtualization in firmware and load kvm_intel or kvm_amd"),
        ),
        (KvmDevice::Denied(why), _) => check(
            NAME,
            Status::Warn,
            format!("present but not usable by this user: {why}"),
            Some("add yourself to the kvm group: sudo usermod -aG kvm $USER"),
        ),
        (KvmDevice::Usable, Some(flag)) => check(
            NAME,
            Status::Pass,
            format!("usable, hardware virtualization ({flag})"),
            None,
        ),
        (KvmDevice::Usable, None) => check(
            NAME,
            Status::Warn,
            "present, but the CPU has no vmx/svm (a PVM-only KVM): stock guest kernels hang under it; QEMU will use TCG and Firecracker cannot run",
            None,
        ),
    }
}

/// A VMM binary, located as the daemon's backend locates it ([`probe::locate`] with the
/// same [`probe::FIRECRACKER`] or [`probe::QEMU`] source).
const FIRECRACKER_FIX: &str = "install Firecracker on a host with hardware virtualization";
const QEMU_FIX: &str = "apt-get install qemu-system-x86";

fn vmm_binary_check(name: &str, located: &Result<Located, LocateError>, fix: &str) -> Check {
    match located {
        Ok(l) => check(
            name,
            Status::Pass,
            format!("{} (from {})", l.path.display(), l.origin.as_str()),
            None,
        ),
        Err(e) => check(name, Status::Warn, chain(e), Some(fix)),
    }
}

/// The backend new VMs get and its acceleration, plus each backend's binary.
fn vmm_checks(layout: &Layout, host: &Host) -> Vec<Check> {
    let config = Config::load(&layout.config_file())
        .map(|l| l.config)
        .unwrap_or_default();
    let path = host.env.search_path();
    let fc = probe::locate(
        &probe::FIRECRACKER,
        config.firecracker_bin.as_deref(),
        host.env.firecracker_bin.as_deref(),
        &path,
    );
    let qemu = probe::locate(
        &probe::QEMU,
        config.qemu_bin.as_deref(),
        host.env.qemu_bin.as_deref(),
        &path,
    );
    let choice = match host
        .env
        .vmm
        .as_ref()
        .and_then(|v| v.to_str())
        .filter(|v| !v.is_empty())
    {
        Some(v) => v.parse::<VmmChoice>().map_err(|e| e.to_string()),
        None => Ok(config.vmm),
    };
    let mut checks = vec![
        vmm_binary_check(VmmKind::Firecracker.as_str(), &fc, FIRECRACKER_FIX),
        vmm_binary_check(VmmKind::Qemu.as_str(), &qemu, QEMU_FIX),
    ];
    let hw = probe::probe_kvm(&host.dev_kvm, &host.cpuinfo).hardware_virt();
    let found = |k| match k {
        VmmKind::Firecracker => fc.is_ok(),
        VmmKind::Qemu => qemu.is_ok(),
    };
    let chosen = choice.and_then(|c| {
        choose_vmm(c, found)
            .map(|kind| (c, kind))
            .map_err(|e| e.to_string())
    });
    checks.push(match chosen {
        Ok((choice, VmmKind::Qemu)) => check(
            "VMM backend",
            Status::Pass,
            format!(
                "qemu (vmm = {choice}), acceleration {}",
                if hw { "KVM" } else { "TCG (software emulation: slower boots)" }
            ),
            None,
        ),
        Ok((choice, kind @ VmmKind::Firecracker)) => {
            if hw {
                check("VMM backend", Status::Pass, format!("{kind} (vmm = {choice}), acceleration KVM"), None)
            } else {
                check(
                    "VMM backend",
                    Status::Fail,
                    format!("{kind} (vmm = {choice}) needs KVM with hardware virtualization, which this host lacks"),
                    Some("set vmm = \"qemu\" in config.toml (or BANGER_VMM=qemu)"),
                )
            }
        }
        Err(why) => check(
            "VMM backend",
            Status::Fail,
            why,
            Some("apt-get install qemu-system-x86"),
        ),
    });
    checks
}

/// Which catalog lists the image `name` (config `catalogs`, then the embedded one), or why
/// none could be read; each document read within 5 s.
async fn in_catalog(config: &Config, name: &str) -> Result<Option<String>, String> {
    use banger_catalog::{Location, read_document};
    let client = banger_catalog::http_client("banger doctor").map_err(|e| chain(&e))?;
    for value in &config.catalogs {
        let at = Location::parse(value).map_err(|e| chain(&e))?;
        let doc = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_document(&client, &at),
        )
        .await
        .map_err(|_| format!("catalog {value}: no answer within 5 s"))?
        .map_err(|e| chain(&e))?;
        if doc.images.iter().any(|i| i.name == name) {
            return Ok(Some(value.clone()));
        }
    }
    let embedded = banger_catalog::embedded();
    Ok(embedded
        .images
        .iter()
        .any(|i| i.name == name)
        .then(|| "the embedded catalog".to_string()))
}

/// The default image not in the store: a pass when a catalog lists it (the first create
/// pulls it), else a failure.
async fn default_image_elsewhere(config: &Config, why: &str) -> Check {
    let name = &config.default_image;
    match in_catalog(config, name).await {
        Ok(Some(catalog)) => check(
            "default image",
            Status::Pass,
            format!("{name} is not local; {catalog} lists it (pulled by the first vm create)"),
            None,
        ),
        Ok(None) => check(
            "default image",
            Status::Fail,
            format!("{name} is not present{why} and no catalog lists it"),
            Some(&format!("banger image bootstrap {name}")),
        ),
        Err(e) => check(
            "default image",
            Status::Fail,
            format!("{name} is not present{why}, and a catalog cannot be read: {e}"),
            Some("fix config catalogs (see docs/config.md)"),
        ),
    }
}

/// The default image (local, or in a catalog) and at least one kernel, read from the store
/// (read-only).
async fn artifact_checks(layout: &Layout) -> Vec<Check> {
    let config = Config::load(&layout.config_file())
        .map(|l| l.config)
        .unwrap_or_default();
    let default_image = config.default_image.clone();
    let store = match Store::open_read_only(&layout.db_path()) {
        Ok(s) => s,
        Err(_) => {
            return vec![
                default_image_elsewhere(&config, " (no database yet)").await,
                check(
                    "kernel",
                    Status::Fail,
                    "no kernel imported (no database yet)",
                    Some("banger kernel import host --from /"),
                ),
            ];
        }
    };
    let images = store.list_images().unwrap_or_default();
    let kernels = store.list_kernels().unwrap_or_default();
    let image_check = match images.iter().find(|i| i.name == default_image) {
        Some(i) => check(
            "default image",
            Status::Pass,
            format!(
                "{} ({})",
                i.name,
                banger_core::size::ByteSize(i.rootfs_bytes)
            ),
            None,
        ),
        None => default_image_elsewhere(&config, "").await,
    };
    vec![
        image_check,
        if kernels.is_empty() {
            check(
                "kernel",
                Status::Fail,
                "no kernel imported",
                Some(
                    "banger kernel import host --from / (after apt-get install linux-image-cloud-amd64)",
                ),
            )
        } else {
            check(
                "kernel",
                Status::Pass,
                kernels
                    .iter()
                    .map(|k| format!("{} ({})", k.name, k.version))
                    .collect::<Vec<_>>()
                    .join(", "),
                None,
            )
        },
    ]
}

/// CAP_NET_ADMIN is bit 12 of the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// The helper socket the daemon asks: `BANGER_HELPER_SOCKET`, else config `helper_socket`.
fn helper_socket(layout: &Layout, env: &HostEnv) -> PathBuf {
    match &env.helper_socket {
        Some(s) if !s.is_empty() => PathBuf::from(s),
        _ => Config::load(&layout.config_file())
            .map(|l| l.config.helper_socket)
            .unwrap_or_else(|_| PathBuf::from(banger_core::layout::SYSTEM_HELPER_SOCKET)),
    }
}

/// Who makes the bridge and TAPs: a daemon with CAP_NET_ADMIN itself, else the root helper,
/// which must answer on its socket and be of this build (its typed requests are this build's).
fn net_admin_check(proc_status: &Path, helper: &Path) -> Check {
    const NAME: &str = "bridge/TAP";
    let status = std::fs::read_to_string(proc_status).unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match eff {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) != 0 => check(
            NAME,
            Status::Pass,
            "bangerd creates bridges and TAP devices itself (CAP_NET_ADMIN)",
            None,
        ),
        Some(_) => {
            let fix = Some("sudo banger system install");
            let ours = BuildInfo::current().to_string();
            match banger_net::helper::HelperNetOps::new(helper).build() {
                Ok(build) if build == ours => check(
                    NAME,
                    Status::Pass,
                    format!(
                        "no CAP_NET_ADMIN; banger-helper answers on {} (this build)",
                        helper.display()
                    ),
                    None,
                ),
                Ok(build) => check(
                    NAME,
                    Status::Warn,
                    format!(
                        "banger-helper on {} is another build ({build}; this is {ours})",
                        helper.display()
                    ),
                    fix,
                ),
                Err(e) => check(
                    NAME,
                    Status::Fail,
                    format!("no CAP_NET_ADMIN, and no root helper: {}", chain(&e)),
                    fix,
                ),
            }
        }
        None => check(
            NAME,
            Status::Warn,
            format!("cannot read capabilities from {}", proc_status.display()),
            None,
        ),
    }
}

/// How the host's resolver finds `.vm`: systemd-resolved's routing on the bridge, or how to
/// route it by hand.
fn dns_routing_check(status: Option<(&DnsListener, &DnsRouting)>) -> Check {
    const NAME: &str = "dns route";
    let Some((dns, routing)) = status else {
        return check(
            NAME,
            Status::Warn,
            "the daemon is not running; it routes .vm through systemd-resolved when it runs",
            None,
        );
    };
    let server = match dns {
        DnsListener::Listening { address } => address.to_string(),
        _ => "the daemon's DNS server (config dns_listen)".to_string(),
    };
    match routing {
        DnsRouting::Resolved { bridge, server } => check(
            NAME,
            Status::Pass,
            format!("systemd-resolved sends *.vm to {server} through {bridge}"),
            None,
        ),
        DnsRouting::NotAvailable { reason } => check(
            NAME,
            Status::Warn,
            format!(
                "no systemd-resolved ({reason}): NAME.vm resolves only for ssh (banger's ssh \
                 config has the addresses) and inside guests"
            ),
            Some(&format!(
                "route the vm domain to {server} in your resolver, e.g. dnsmasq \
                 server=/vm/{}",
                server.replace(':', "#")
            )),
        ),
        DnsRouting::Off => check(
            NAME,
            Status::Warn,
            "not routed yet: the daemon routes .vm once DNS is on and the bridge exists (after \
             the first VM boots)",
            None,
        ),
        DnsRouting::Failed { error } => check(
            NAME,
            Status::Fail,
            format!("systemd-resolved refused the .vm routing: {error}"),
            Some("resolvectl status; banger daemon stop (the next command starts it again)"),
        ),
    }
}

/// The managed `Host *.vm` block is in the owner's ssh config as the daemon would write it.
async fn ssh_config_check(layout: &Layout, conn: Conn, daemon_runs: bool) -> Check {
    const NAME: &str = "ssh config";
    let fix = Some("banger ssh-config");
    if !daemon_runs {
        return check(
            NAME,
            Status::Warn,
            "the daemon is not running; it writes the Host *.vm block when it starts",
            None,
        );
    }
    let wanted: Result<banger_api::types::SshConfig, _> =
        match crate::daemonctl::client(layout, conn) {
            Ok(client) => client.get(banger_api::Route::SshConfig).await,
            Err(e) => return check(NAME, Status::Fail, chain(&e), None),
        };
    let wanted = match wanted {
        Ok(w) => w,
        Err(e) => return check(NAME, Status::Fail, chain(&e), None),
    };
    let Some(path) = wanted.path else {
        return check(
            NAME,
            Status::Warn,
            "the daemon has no home directory, so no ~/.ssh/config to write",
            None,
        );
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return check(
                NAME,
                Status::Fail,
                format!("cannot read {}: {e}", path.display()),
                None,
            );
        }
    };
    let off = if wanted.at_start {
        ""
    } else {
        " (config ssh_config = false: the daemon does not write it)"
    };
    if text.contains(&wanted.block) {
        check(
            NAME,
            Status::Pass,
            format!("the Host *.vm block is in {}", path.display()),
            None,
        )
    } else if text.contains(banger_core::ssh_config::BEGIN) {
        check(
            NAME,
            Status::Warn,
            format!(
                "the Host *.vm block in {} is out of date{off}",
                path.display()
            ),
            fix,
        )
    } else {
        check(
            NAME,
            Status::Warn,
            format!(
                "no Host *.vm block in {}{off}: ssh NAME.vm does not work",
                path.display()
            ),
            fix,
        )
    }
}

/// The vhost-vsock device QEMU's `vhost-vsock-pci` needs.
pub const DEV_VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// `/dev/vhost-vsock` is optional: QEMU guests talk to their agent over virtio-serial without
/// it, and Firecracker has its own vsock.
fn vhost_vsock_check(dev: &Path) -> Check {
    const NAME: &str = "vhost-vsock";
    match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => check(
            NAME,
            Status::Pass,
            format!("{} is usable", dev.display()),
            None,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => check(
            NAME,
            Status::Warn,
            format!(
                "no {}: QEMU guests use virtio-serial for their agent (Firecracker needs neither)",
                dev.display()
            ),
            Some("modprobe vhost_vsock"),
        ),
        Err(e) => check(
            NAME,
            Status::Warn,
            format!(
                "cannot open {}: {e}; QEMU guests use virtio-serial for their agent",
                dev.display()
            ),
            None,
        ),
    }
}

/// The host programs the daemon runs, looked up where its runner looks
/// ([`SearchPath::programs`]: `PATH`, then the system dirs).
fn tool_checks(path: &SearchPath) -> Vec<Check> {
    // (check name, any of these binaries, apt package)
    let tools: &[(&str, &[&str], &str)] = &[
        ("mkfs.ext4", &["mkfs.ext4"], "e2fsprogs"),
        ("debugfs", &["debugfs"], "e2fsprogs"),
        ("ip", &["ip"], "iproute2"),
        ("nft or iptables", &["nft", "iptables"], "nftables"),
        ("ssh", &["ssh"], "openssh-client"),
        ("git", &["git"], "git"),
    ];
    tools
        .iter()
        .map(
            |(name, bins, pkg)| match bins.iter().find_map(|b| path.find(b)) {
                Some(p) => check(name, Status::Pass, p.display().to_string(), None),
                None => check(
                    name,
                    Status::Fail,
                    format!("not found on PATH or in the system dirs ({path})"),
                    Some(&format!("apt-get install {pkg}")),
                ),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dns_passes_only_when_a_server_answers_for_the_zone() {
        assert_eq!(dns_check(None).await.status, Status::Warn);
        assert_eq!(
            dns_check(Some(&DnsListener::Off)).await.status,
            Status::Warn
        );
        let failed = DnsListener::Failed {
            error: "port taken".into(),
        };
        let c = dns_check(Some(&failed)).await;
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("port taken"), "{}", c.detail);

        let server =
            banger_dns::DnsServer::bind("127.0.0.1:0".parse().unwrap(), banger_dns::Records::new())
                .await
                .unwrap();
        let address = server.local_addr();
        let c = dns_check(Some(&DnsListener::Listening { address })).await;
        assert_eq!(c.status, Status::Pass, "{}", c.detail);
        server.shutdown().await;
        // The daemon says it listens, but nothing answers there.
        let c = dns_check(Some(&DnsListener::Listening { address })).await;
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
    }

    #[test]
    fn without_resolved_doctor_says_how_to_route_vm() {
        let dns = DnsListener::Listening {
            address: "127.0.0.1:42069".parse().unwrap(),
        };
        let c = dns_routing_check(Some((
            &dns,
            &DnsRouting::NotAvailable {
                reason: "no /run/systemd/resolve".into(),
            },
        )));
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("no /run/systemd/resolve"), "{}", c.detail);
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "route the vm domain to 127.0.0.1:42069 in your resolver, e.g. dnsmasq \
                 server=/vm/127.0.0.1#42069"
            )
        );
        let routed = DnsRouting::Resolved {
            bridge: "banger0".into(),
            server: "172.30.0.1:42069".parse().unwrap(),
        };
        assert_eq!(
            dns_routing_check(Some((&dns, &routed))).status,
            Status::Pass
        );
        let failed = DnsRouting::Failed {
            error: "Link banger0 not known".into(),
        };
        assert_eq!(
            dns_routing_check(Some((&dns, &failed))).status,
            Status::Fail
        );
        assert_eq!(dns_routing_check(None).status, Status::Warn);
    }

    #[test]
    fn vhost_vsock_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        let missing = vhost_vsock_check(&dir.path().join("vhost-vsock"));
        assert_eq!(missing.status, Status::Warn);
        assert!(
            missing.detail.contains("virtio-serial"),
            "{}",
            missing.detail
        );
        let dev = dir.path().join("dev");
        std::fs::write(&dev, b"").unwrap();
        assert_eq!(vhost_vsock_check(&dev).status, Status::Pass);
    }

    #[test]
    fn kvm_check_distinguishes_pvm_only() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        let cpu = dir.path().join("cpuinfo");
        assert_eq!(kvm_check(&kvm, &cpu).status, Status::Warn);
        std::fs::write(&kvm, "").unwrap();
        std::fs::write(&cpu, "processor : 0\nflags : fpu sse2 hypervisor\n").unwrap();
        let c = kvm_check(&kvm, &cpu);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("PVM"), "{}", c.detail);
        std::fs::write(&cpu, "flags : fpu vmx sse2\n").unwrap();
        assert_eq!(kvm_check(&kvm, &cpu).status, Status::Pass);
    }

    #[test]
    fn net_admin_from_capabilities_or_the_helper() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("status");
        let sock = dir.path().join("helper.sock");
        std::fs::write(&st, "Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert_eq!(net_admin_check(&st, &sock).status, Status::Pass);
        std::fs::write(&st, "nothing\n").unwrap();
        assert_eq!(net_admin_check(&st, &sock).status, Status::Warn);

        // Without the capability: no helper is a failure naming the install.
        std::fs::write(&st, "CapEff:\t0000000000000000\n").unwrap();
        let c = net_admin_check(&st, &sock);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.fix.as_deref(), Some("sudo banger system install"));
        assert!(
            c.detail.contains(&sock.display().to_string()),
            "{}",
            c.detail
        );

        // A helper that answers with this build, then one of another build.
        for (build, want) in [
            (BuildInfo::current().to_string(), Status::Pass),
            ("0.0.1 (commit 000000000000)".to_string(), Status::Warn),
        ] {
            let _ = std::fs::remove_file(&sock);
            let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            let reply = serde_json::json!({"result": "build", "build": build}).to_string();
            let server = std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let (conn, _) = listener.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
                assert_eq!(line.trim(), r#"{"op":"version"}"#);
                writeln!(&conn, "{reply}").unwrap();
            });
            let c = net_admin_check(&st, &sock);
            server.join().unwrap();
            assert_eq!(c.status, want, "{}", c.detail);
        }
    }

    #[test]
    fn missing_tool_fails_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let checks = tool_checks(&SearchPath::from_var(Some(dir.path().as_os_str())));
        let git = checks.iter().find(|c| c.check == "git").unwrap();
        // Only an empty dir is searched, so git must be reported missing.
        assert_eq!(git.status, Status::Fail);
        assert_eq!(git.fix.as_deref(), Some("apt-get install git"));
        let tool = dir.path().join("git");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let checks = tool_checks(&SearchPath::from_var(Some(dir.path().as_os_str())));
        let git = checks.iter().find(|c| c.check == "git").unwrap();
        assert_eq!(
            (git.status, git.detail.as_str()),
            (Status::Pass, tool.to_str().unwrap())
        );
    }

    fn env_with_path(dir: &Path) -> HostEnv {
        HostEnv {
            path: Some(dir.as_os_str().to_owned()),
            ..HostEnv::default()
        }
    }

    #[test]
    fn the_agent_variable_is_handed_in_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_with_path(dir.path());
        let c = agent_binary_check(&env);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("not found"), "{}", c.detail);
        // A dynamically linked binary named by BANGER_AGENT_BIN (this test binary).
        env.agent_bin = std::env::current_exe().ok().map(Into::into);
        let c = agent_binary_check(&env);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("dynamically linked"), "{}", c.detail);
        assert!(c.fix.as_deref().unwrap().contains("crt-static"));
    }

    #[test]
    fn vmm_binaries_say_where_they_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let fc = dir.path().join("firecracker");
        std::fs::write(&fc, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = SearchPath::from_var(Some(dir.path().as_os_str()));
        let found = probe::locate(&probe::FIRECRACKER, None, None, &path);
        let c = vmm_binary_check("firecracker", &found, FIRECRACKER_FIX);
        assert_eq!(c.status, Status::Pass);
        assert_eq!(c.detail, format!("{} (from PATH)", fc.display()));
        // An explicit choice that cannot run is reported as such, not as "not found".
        let bad = dir.path().join("nothing");
        let found = probe::locate(&probe::QEMU, None, Some(bad.as_os_str()), &path);
        let c = vmm_binary_check("qemu", &found, QEMU_FIX);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.starts_with("BANGER_QEMU_BIN="), "{}", c.detail);
        assert_eq!(c.fix.as_deref(), Some("apt-get install qemu-system-x86"));
    }
}
