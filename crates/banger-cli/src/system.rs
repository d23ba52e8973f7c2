//! `banger system install|status|restart|uninstall`: banger as two systemd system units.
//!
//! # Layout
//! | path | what |
//! |---|---|
//! | `/usr/local/bin/banger`, `/usr/local/bin/bangerd` | the CLI and the daemon (on `PATH`) |
//! | `/usr/local/libexec/banger/banger-helper`, `.../banger-agent` | the root helper and the guest agent: run by units and copied into guests, never typed, so off `PATH` |
//! | `/usr/local/libexec/banger/install.json` | the install's manifest: owner, bridge and the directories the install made (so uninstall removes exactly those) |
//! | `/etc/systemd/system/banger-helper.service` | the root helper (`RuntimeDirectory=banger`: `/run/banger`, its socket `helper.sock` owned by the owner, 0600) |
//! | `/etc/systemd/system/bangerd.service` | the daemon as the owner (`User=`), runtime dir `/run/banger/bangerd` (0700, the owner's): its socket and lock |
//!
//! The owner's state and config stay where the user daemon keeps them
//! (`~/.local/state/banger`, `~/.config/banger`): the system daemon serves the same VMs and
//! images. The CLI reaches it through [`layout_env`]: with `BANGER_HOME` unset and
//! `/run/banger/bangerd` present and the caller's, that is the runtime dir.
//!
//! `--root DIR` writes the same files into a tree (packaging, tests) and calls no
//! `systemctl`; uninstall then touches nothing outside DIR either. Every command that
//! changes anything needs root and checks everything it can before the first change.

use std::ffi::{CStr, CString, OsString};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_core::layout::{SYSTEM_DAEMON_RUNTIME_DIR, SYSTEM_HELPER_SOCKET};
use banger_core::probe::{self, SearchPath};
use banger_net::NetOps;
use serde::{Deserialize, Serialize};

use crate::HostEnv;
use crate::args::{InstallArgs, SystemCommand, UninstallArgs};
use crate::error::CliError;
use crate::ui::{Ui, table};

/// Where the CLI and daemon go.
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where the helper, the agent and the manifest go.
pub const LIBEXEC_DIR: &str = "/usr/local/libexec/banger";
/// Where the units go.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// The root helper's unit.
pub const HELPER_UNIT: &str = "banger-helper.service";
/// The daemon's unit.
pub const DAEMON_UNIT: &str = "bangerd.service";
/// The manifest's name in [`LIBEXEC_DIR`].
const MANIFEST: &str = "install.json";

/// Why a `system` command refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "banger system {command} needs root: run `sudo banger system {command}` (nothing was changed)"
    )]
    NeedsRoot { command: &'static str },
    #[error("no user {0:?} on this host (nothing was changed)")]
    UnknownUser(String),
    #[error(
        "the owner would be root: bangerd runs as an unprivileged user; name it with --user NAME (nothing was changed)"
    )]
    RootOwner,
    #[error(
        "{what} {value:?} cannot go into a unit file (no whitespace, quotes, backslashes, '%' or control characters; nothing was changed)"
    )]
    Unquotable { what: &'static str, value: String },
    #[error("--bridge {name:?} is not an interface name (nothing was changed)")]
    Bridge {
        name: String,
        #[source]
        source: banger_net::plan::IfNameError,
    },
    #[error("--root {0} is not an existing directory (nothing was changed)")]
    NoRoot(PathBuf),
    #[error(
        "cannot find {name} to install (looked next to {exe} and on PATH; nothing was changed)"
    )]
    MissingBinary { name: &'static str, exe: PathBuf },
    #[error(
        "systemd is not running here (PID 1 is {pid1:?}): `banger system {command}` needs it; `--root DIR` installs into a tree without it (nothing was changed)"
    )]
    NoSystemd { command: &'static str, pid1: String },
    #[error("banger is not installed under {0}: its manifest is missing (nothing was changed)")]
    NotInstalled(PathBuf),
    #[error("the manifest {path} is unreadable (nothing was changed)")]
    Manifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--purge would delete the disks of VMs whose VMM still runs ({}): stop them first with `banger vm stop {}` (nothing was changed)",
        vms.join(", "),
        vms.join(" ")
    )]
    VmsRunning { vms: Vec<String> },
    #[error("cannot read the owner's VMs from {path} (nothing was changed)")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<banger_store::StoreError>,
    },
    #[error("`{command}` failed: {detail}")]
    Systemctl { command: String, detail: String },
    #[error("cannot remove banger's network state")]
    Network(#[source] banger_net::NetError),
}

fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> SystemError + 'p {
    move |source| SystemError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The user bangerd runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Owner {
    /// The owner's banger state dir (VMs, images, logs), as the user daemon keeps it.
    pub fn state_dir(&self) -> PathBuf {
        self.home.join(".local/state/banger")
    }
    /// The owner's banger config dir.
    pub fn config_dir(&self) -> PathBuf {
        self.home.join(".config/banger")
    }
}

/// The passwd entry of `name`, or of `uid` when `name` is `None`.
pub fn lookup_user(name: Option<&str>, uid: u32) -> Option<Owner> {
    let cname = match name {
        Some(n) => Some(CString::new(n).ok()?),
        None => None,
    };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: an all-zero passwd is a valid value for the out parameter (null pointers and
    // zero ids), overwritten by the call.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `pwd` and
    // `found` are live locals, and `buf` is writable for `buf.len()` bytes; the strings the
    // entry points to live in `buf`, which outlives their use below.
    let rc = unsafe {
        match &cname {
            Some(c) => libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            ),
            None => libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found),
        }
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir point at NUL-terminated strings inside `buf`.
    let (name, home) = unsafe {
        (
            CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
            CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned(),
        )
    };
    Some(Owner {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(home),
    })
}

/// What `install.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub owner: Owner,
    pub bridge: String,
    /// Directories the install created (paths inside the root, absolute), removed by
    /// uninstall when empty.
    pub created_dirs: Vec<PathBuf>,
}

/// The tree the install goes into: `/` or `--root DIR`.
#[derive(Debug, Clone)]
struct Tree {
    root: PathBuf,
    live: bool,
}

impl Tree {
    fn new(root: Option<&Path>) -> Result<Self, SystemError> {
        match root {
            None => Ok(Self {
                root: PathBuf::from("/"),
                live: true,
            }),
            Some(dir) => {
                let meta = std::fs::metadata(dir).map_err(|_| SystemError::NoRoot(dir.into()))?;
                if !meta.is_dir() {
                    return Err(SystemError::NoRoot(dir.into()));
                }
                Ok(Self {
                    root: dir.to_path_buf(),
                    live: false,
                })
            }
        }
    }

    /// `abs` (an install path) inside the tree.
    fn at(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn manifest(&self) -> PathBuf {
        self.at(LIBEXEC_DIR).join(MANIFEST)
    }

    fn read_manifest(&self) -> Result<Option<Manifest>, SystemError> {
        let path = self.manifest();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| SystemError::Manifest {
                        path,
                        source: e.into(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SystemError::Manifest { path, source }),
        }
    }
}

/// One file the install writes.
struct Item {
    /// Its install path.
    dest: String,
    mode: u32,
    content: Source,
}

enum Source {
    File(PathBuf),
    Text(String),
}

/// The binaries the install copies: (install path, where it is now).
fn binaries(env: &HostEnv) -> Result<Vec<(String, PathBuf)>, SystemError> {
    let exe = env.exe.clone().unwrap_or_default();
    let missing = |name| SystemError::MissingBinary {
        name,
        exe: exe.clone(),
    };
    let path = env.search_path();
    let companion = |name: &'static str| {
        probe::find_companion(name, env.exe_dir(), &path).ok_or_else(|| missing(name))
    };
    let banger = env.exe.clone().ok_or_else(|| missing("banger"))?;
    Ok(vec![
        (format!("{BIN_DIR}/banger"), banger),
        (format!("{BIN_DIR}/bangerd"), companion("bangerd")?),
        (
            format!("{LIBEXEC_DIR}/banger-helper"),
            companion("banger-helper")?,
        ),
        (
            format!("{LIBEXEC_DIR}/banger-agent"),
            env.agent().ok_or_else(|| missing("banger-agent"))?,
        ),
    ])
}

/// Refuses text systemd would read as more than one word, a quote or a specifier.
fn unit_safe(what: &'static str, value: &str) -> Result<(), SystemError> {
    let bad = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(c));
    if bad {
        return Err(SystemError::Unquotable {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// The hardening both units share (each adds its own capabilities, paths and families).
const SHARED_HARDENING: &str = "NoNewPrivileges=yes
ProtectSystem=strict
PrivateTmp=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelLogs=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
";

/// `banger-helper.service`: root, only `CAP_NET_ADMIN` (links, TAP ownership, nftables) and
/// `CAP_CHOWN` (its socket becomes the owner's), only `/dev/net/tun` among devices.
pub fn helper_unit(owner: &Owner, bridge: &str) -> String {
    format!(
        "# Written by `banger system install`; `banger system uninstall` removes it.
[Unit]
Description=banger root helper (bridge, TAP and NAT operations for {name}'s bangerd)
Before={DAEMON_UNIT}

[Service]
Type=simple
ExecStart={LIBEXEC_DIR}/banger-helper --socket {SYSTEM_HELPER_SOCKET} --owner {uid} --bridge {bridge}
Restart=on-failure
RuntimeDirectory=banger
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=restart
UMask=0077
CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN
ProtectHome=yes
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
RestrictNamespaces=yes
MemoryDenyWriteExecute=yes
{SHARED_HARDENING}
[Install]
WantedBy=multi-user.target
",
        name = owner.name,
        uid = owner.uid,
    )
}

/// `bangerd.service`: the owner, no capabilities, the home read-only but for banger's state
/// and config dirs and `~/.ssh` (the managed `Host *.vm` block). VMMs run in their own
/// session and must outlive a daemon restart, so only the daemon's own process is stopped
/// (`KillMode=process`); devices stay visible (`/dev/kvm`, `/dev/net/tun`,
/// `/dev/vhost-vsock`), through the owner's groups.
pub fn daemon_unit(owner: &Owner) -> String {
    let home = owner.home.display();
    format!(
        "# Written by `banger system install`; `banger system uninstall` removes it.
[Unit]
Description=banger daemon (bangerd) for {name}
Requires={HELPER_UNIT}
After={HELPER_UNIT} network.target
PartOf={HELPER_UNIT}

[Service]
Type=simple
User={name}
ExecStart={BIN_DIR}/bangerd
Environment=HOME={home}
Environment=BANGER_RUNTIME_DIR={SYSTEM_DAEMON_RUNTIME_DIR}
Environment=BANGER_HELPER_SOCKET={SYSTEM_HELPER_SOCKET}
Environment=BANGER_AGENT_BIN={LIBEXEC_DIR}/banger-agent
Restart=on-failure
KillMode=process
RuntimeDirectory=banger/bangerd
RuntimeDirectoryMode=0700
UMask=0077
CapabilityBoundingSet=
AmbientCapabilities=
ProtectHome=read-only
ReadWritePaths=-{state} -{config} -{home}/.ssh
ProtectKernelModules=yes
ProtectKernelTunables=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_VSOCK
{SHARED_HARDENING}
[Install]
WantedBy=multi-user.target
",
        name = owner.name,
        state = owner.state_dir().display(),
        config = owner.config_dir().display(),
    )
}

/// Whether systemd runs this host (`sd_booted`: `/run/systemd/system` exists).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn pid1() -> String {
    std::fs::read_to_string("/proc/1/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn need_systemd(command: &'static str) -> Result<(), SystemError> {
    if systemd_running() {
        Ok(())
    } else {
        Err(SystemError::NoSystemd {
            command,
            pid1: pid1(),
        })
    }
}

fn need_root(command: &'static str) -> Result<(), SystemError> {
    if crate::uid() == 0 {
        Ok(())
    } else {
        Err(SystemError::NeedsRoot { command })
    }
}

fn systemctl(args: &[&str]) -> Result<String, SystemError> {
    let command = format!("systemctl {}", args.join(" "));
    let out =
        Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|e| SystemError::Systemctl {
                command: command.clone(),
                detail: e.to_string(),
            })?;
    if !out.status.success() {
        return Err(SystemError::Systemctl {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                banger_core::quote::quote_prefix(
                    out.stderr.trim_ascii(),
                    banger_core::quote::DEFAULT_QUOTE
                )
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The owner: `--user`, else `SUDO_USER`, else the invoking user; never root.
fn owner(user: Option<&str>, env: &HostEnv) -> Result<Owner, SystemError> {
    let sudo = env
        .sudo_user
        .as_deref()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && *s != "root");
    let owner = match user.or(sudo) {
        Some(name) => {
            lookup_user(Some(name), 0).ok_or_else(|| SystemError::UnknownUser(name.into()))?
        }
        None => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            lookup_user(None, uid).ok_or_else(|| SystemError::UnknownUser(format!("uid {uid}")))?
        }
    };
    if owner.uid == 0 {
        return Err(SystemError::RootOwner);
    }
    unit_safe("user name", &owner.name)?;
    unit_safe("home", &owner.home.to_string_lossy())?;
    if !owner.home.is_absolute() {
        return Err(SystemError::Unquotable {
            what: "home (not absolute)",
            value: owner.home.display().to_string(),
        });
    }
    Ok(owner)
}

/// Writes `bytes` to `path` through a temporary file beside it, then renames it in place.
fn write_atomic(path: &Path, mode: u32, src: &Source) -> Result<(), SystemError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".banger-install")
        .tempfile_in(dir)
        .map_err(io("create a file in", dir))?;
    match src {
        Source::Text(text) => tmp.write_all(text.as_bytes()).map_err(io("write", path))?,
        Source::File(from) => {
            let mut input = std::fs::File::open(from).map_err(io("read", from))?;
            std::io::copy(&mut input, &mut tmp).map_err(io("write", path))?;
        }
    }
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of", path))?;
    tmp.as_file().sync_all().map_err(io("write", path))?;
    tmp.persist(path).map_err(|e| SystemError::Io {
        action: "replace",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Creates `dir` (an install path) and its missing parents in the tree, 0755, returning
/// the ones made.
fn make_dirs(tree: &Tree, dir: &str) -> Result<Vec<PathBuf>, SystemError> {
    let mut made = Vec::new();
    let mut abs = PathBuf::from("/");
    for part in Path::new(dir).components().skip(1) {
        abs.push(part);
        let at = tree.at(&abs.to_string_lossy());
        match std::fs::symlink_metadata(&at) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SystemError::Io {
                    action: "inspect",
                    path: at,
                    source,
                });
            }
        }
        std::fs::create_dir(&at).map_err(io("create", &at))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))
            .map_err(io("set the mode of", &at))?;
        made.push(abs.clone());
    }
    Ok(made)
}

/// Creates the owner's `dir` and its missing parents below the home, owned by the owner
/// (so the daemon's `ReadWritePaths=` exist: it cannot create them under `ProtectHome`).
fn owner_dir(owner: &Owner, dir: &Path) -> Result<(), SystemError> {
    let Ok(rest) = dir.strip_prefix(&owner.home) else {
        return Ok(());
    };
    let mut at = owner.home.clone();
    for part in rest.components() {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok() {
            continue;
        }
        std::fs::create_dir(&at).map_err(io("create", &at))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set the mode of", &at))?;
        std::os::unix::fs::lchown(&at, Some(owner.uid), Some(owner.gid))
            .map_err(io("chown", &at))?;
    }
    Ok(())
}

/// The groups `owner` is in (its primary group and the supplementary ones), as the unit's
/// `User=` gives them to bangerd.
fn groups(owner: &Owner) -> Vec<u32> {
    let Ok(name) = CString::new(owner.name.as_str()) else {
        return vec![owner.gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut list = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: the name is NUL-terminated and `list` holds `count` writable entries; on
        // return `count` is the number of groups (or the size needed, when -1 is returned).
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), owner.gid, list.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            list.truncate(count.max(0) as usize);
            return list;
        }
        if count <= n {
            return vec![owner.gid];
        }
        n = count;
    }
}

/// Why the owner's bangerd could not open `kvm` (a KVM device of mode 0660 whose group the
/// owner is not in), if so: the VMMs then fall back to (or fail without) hardware
/// virtualization.
fn kvm_access(owner: &Owner, kvm: &Path) -> Option<String> {
    let m = std::fs::metadata(kvm).ok()?;
    let mode = m.mode();
    let open = mode & 0o006 == 0o006
        || (m.uid() == owner.uid && mode & 0o600 == 0o600)
        || (mode & 0o060 == 0o060 && groups(owner).contains(&m.gid()));
    (!open).then(|| {
        format!(
            "{} (mode {:04o}, gid {}) is not open to {}: add them to its group (`usermod -aG kvm {}`), \
             else VMs run without KVM",
            kvm.display(),
            mode & 0o7777,
            m.gid(),
            owner.name,
            owner.name
        )
    })
}

/// `banger system install`.
pub fn install(args: &InstallArgs, env: &HostEnv, ui: &mut Ui) -> Result<(), CliError> {
    // Every check first: a refusal changes nothing.
    need_root("install")?;
    let tree = Tree::new(args.root.as_deref())?;
    let owner = owner(args.user.as_deref(), env)?;
    banger_net::plan::validate_ifname(&args.bridge).map_err(|source| SystemError::Bridge {
        name: args.bridge.clone(),
        source,
    })?;
    unit_safe("bridge", &args.bridge)?;
    let bins = binaries(env)?;
    if tree.live {
        need_systemd("install")?;
    }
    let previous = tree.read_manifest()?;

    let mut items: Vec<Item> = bins
        .into_iter()
        .map(|(dest, from)| Item {
            dest,
            mode: 0o755,
            content: Source::File(from),
        })
        .collect();
    items.push(Item {
        dest: format!("{UNIT_DIR}/{HELPER_UNIT}"),
        mode: 0o644,
        content: Source::Text(helper_unit(&owner, &args.bridge)),
    });
    items.push(Item {
        dest: format!("{UNIT_DIR}/{DAEMON_UNIT}"),
        mode: 0o644,
        content: Source::Text(daemon_unit(&owner)),
    });
    let mut created: Vec<PathBuf> = previous.map(|m| m.created_dirs).unwrap_or_default();
    for dir in [BIN_DIR, LIBEXEC_DIR, UNIT_DIR] {
        for made in make_dirs(&tree, dir)? {
            if !created.contains(&made) {
                created.push(made);
            }
        }
    }
    created.sort();
    for item in &items {
        let path = tree.at(&item.dest);
        write_atomic(&path, item.mode, &item.content)?;
        ui.line(&format!("installed {}", path.display()))?;
    }
    let manifest = Manifest {
        owner: owner.clone(),
        bridge: args.bridge.clone(),
        created_dirs: created,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(std::io::Error::other)? + "\n";
    write_atomic(&tree.manifest(), 0o644, &Source::Text(text))?;
    if !tree.live {
        ui.line(&format!(
            "installed into {} for {} (uid {}); no systemctl calls with --root",
            tree.root.display(),
            owner.name,
            owner.uid
        ))?;
        return Ok(());
    }
    for dir in [
        owner.state_dir(),
        owner.config_dir(),
        owner.home.join(".ssh"),
    ] {
        owner_dir(&owner, &dir)?;
    }
    if let Some(note) = kvm_access(&owner, Path::new("/dev/kvm")) {
        ui.note(&format!("banger: {note}"))?;
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", HELPER_UNIT, DAEMON_UNIT])?;
    ui.line(&format!(
        "{HELPER_UNIT} and {DAEMON_UNIT} enabled and started for {} (uid {}); see `banger system status`",
        owner.name, owner.uid
    ))?;
    Ok(())
}

/// `banger system uninstall`.
pub fn uninstall(args: &UninstallArgs, env: &HostEnv, ui: &mut Ui) -> Result<(), CliError> {
    need_root("uninstall")?;
    let tree = Tree::new(args.root.as_deref())?;
    let manifest = tree
        .read_manifest()?
        .ok_or_else(|| SystemError::NotInstalled(tree.root.clone()))?;
    if args.purge {
        let state_dir = tree.at(&manifest.owner.state_dir().to_string_lossy());
        let running = running_vms(&state_dir)?;
        if !running.is_empty() {
            return Err(SystemError::VmsRunning { vms: running }.into());
        }
    }
    if tree.live {
        need_systemd("uninstall")?;
        // Stopping a unit that is not loaded is not an error worth stopping for.
        if let Err(e) = systemctl(&["disable", "--now", DAEMON_UNIT, HELPER_UNIT]) {
            ui.note(&format!("banger: {}", banger_core::error::chain(&e)))?;
        }
    }
    let files = [
        format!("{UNIT_DIR}/{DAEMON_UNIT}"),
        format!("{UNIT_DIR}/{HELPER_UNIT}"),
        format!("{BIN_DIR}/banger"),
        format!("{BIN_DIR}/bangerd"),
        format!("{LIBEXEC_DIR}/banger-helper"),
        format!("{LIBEXEC_DIR}/banger-agent"),
        format!("{LIBEXEC_DIR}/{MANIFEST}"),
    ];
    for f in &files {
        let path = tree.at(f);
        match std::fs::remove_file(&path) {
            Ok(()) => ui.line(&format!("removed {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io("remove", &path)(source).into()),
        }
    }
    let mut dirs = manifest.created_dirs.clone();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let path = tree.at(&d.to_string_lossy());
        match std::fs::remove_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                ui.note(&format!(
                    "banger: kept {} (it holds files banger did not install)",
                    path.display()
                ))?;
            }
            Err(source) => return Err(io("remove", &path)(source).into()),
        }
    }
    if tree.live {
        systemctl(&["daemon-reload"])?;
        let runner =
            banger_net::SystemRunner::new().with_path(SearchPath::programs(env.path.as_deref()));
        banger_net::DirectNetOps::new(runner)
            .cleanup(&manifest.bridge)
            .map_err(SystemError::Network)?;
        ui.line(&format!(
            "removed banger's TAP devices, bridge {} and nftables table",
            manifest.bridge
        ))?;
    }
    let owner = &manifest.owner;
    let kept = [owner.state_dir(), owner.config_dir()];
    if args.purge {
        for dir in &kept {
            let path = tree.at(&dir.to_string_lossy());
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
                    ui.line(&format!("purged {}", path.display()))?;
                }
                Ok(_) => ui.note(&format!(
                    "banger: left {} alone (not a directory)",
                    path.display()
                ))?,
                Err(_) => {}
            }
        }
    } else {
        ui.line(&format!(
            "kept {}'s VMs, images and config ({}, {}); `--purge` removes them",
            owner.name,
            kept[0].display(),
            kept[1].display()
        ))?;
    }
    Ok(())
}

/// The owner's VMs whose VMM process still runs, from their store opened read-only (none
/// when there is no store): a purge must not delete disks a VMM holds open, since the
/// daemon's unit stops without killing its VMMs.
fn running_vms(state_dir: &Path) -> Result<Vec<String>, SystemError> {
    let db = state_dir.join("banger.db");
    if !db.exists() {
        return Ok(Vec::new());
    }
    let store_error = |source| SystemError::Store {
        path: db.clone(),
        source: Box::new(source),
    };
    let rows = banger_store::Store::open_read_only(&db)
        .and_then(|s| s.list_vms())
        .map_err(store_error)?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            matches!(
                r.state,
                banger_core::vm::VmState::Running | banger_core::vm::VmState::Creating
            ) && r
                .pid
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|r| r.name)
        .collect())
}

/// One unit's row in `system status`.
fn unit_row(unit: &str, binary: &str, socket: &str, systemd: bool) -> Vec<String> {
    let installed = Path::new(UNIT_DIR).join(unit).exists();
    let (active, pid) = if !installed {
        ("not installed".to_string(), "-".to_string())
    } else if !systemd {
        ("unknown (no systemd)".to_string(), "-".to_string())
    } else {
        match systemctl(&["show", "-p", "ActiveState", "-p", "MainPID", unit]) {
            Ok(text) => {
                let get = |key: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                        .unwrap_or("-")
                        .to_string()
                };
                let pid = get("MainPID");
                (
                    get("ActiveState"),
                    if pid == "0" { "-".into() } else { pid },
                )
            }
            Err(e) => (
                format!("unknown ({})", banger_core::error::chain(&e)),
                "-".into(),
            ),
        }
    };
    let version = Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            text.split_once(' ').map(|(_, v)| v.to_string())
        })
        .unwrap_or_else(|| "-".into());
    let socket = if Path::new(socket).exists() {
        socket.to_string()
    } else {
        format!("{socket} (absent)")
    };
    vec![unit.to_string(), active, pid, version, socket]
}

/// `banger system status`: a table of the two units.
pub fn status(ui: &mut Ui) -> Result<(), CliError> {
    let systemd = systemd_running();
    let rows = vec![
        unit_row(
            HELPER_UNIT,
            &format!("{LIBEXEC_DIR}/banger-helper"),
            SYSTEM_HELPER_SOCKET,
            systemd,
        ),
        unit_row(
            DAEMON_UNIT,
            &format!("{BIN_DIR}/bangerd"),
            &format!("{SYSTEM_DAEMON_RUNTIME_DIR}/bangerd.sock"),
            systemd,
        ),
    ];
    let text = table(&["UNIT", "ACTIVE", "PID", "VERSION", "SOCKET"], &rows);
    write!(ui.out(), "{text}")?;
    if !systemd {
        ui.note(&format!(
            "banger: systemd is not running here (PID 1 is {:?}), so the units' state cannot be read; \
             banger's daemon starts on demand as your user instead",
            pid1()
        ))?;
    }
    Ok(())
}

/// `banger system restart`: both units, the helper first.
pub fn restart(ui: &mut Ui) -> Result<(), CliError> {
    need_root("restart")?;
    need_systemd("restart")?;
    systemctl(&["restart", HELPER_UNIT, DAEMON_UNIT])?;
    ui.line(&format!("restarted {HELPER_UNIT} and {DAEMON_UNIT}"))?;
    Ok(())
}

/// Runs one `system` command.
pub fn run(cmd: &SystemCommand, env: &HostEnv, ui: &mut Ui) -> Result<(), CliError> {
    match cmd {
        SystemCommand::Install(a) => install(a, env, ui),
        SystemCommand::Status => status(ui),
        SystemCommand::Restart => restart(ui),
        SystemCommand::Uninstall(a) => uninstall(a, env, ui),
    }
}

/// The environment lookup the CLI resolves its layout with: the process's, except that with
/// `BANGER_HOME` and `BANGER_RUNTIME_DIR` unset and the system daemon's runtime dir
/// (`/run/banger/bangerd`) present and owned by `euid`, `BANGER_RUNTIME_DIR` is that dir:
/// the CLI talks to the installed daemon.
pub fn layout_env(
    get: impl Fn(&str) -> Option<OsString>,
    euid: u32,
    system_dir: &Path,
) -> impl Fn(&str) -> Option<OsString> {
    let unset = |k: &str| get(k).is_none_or(|v| v.is_empty());
    let system = unset("BANGER_HOME")
        && unset("BANGER_RUNTIME_DIR")
        && std::fs::symlink_metadata(system_dir).is_ok_and(|m| m.is_dir() && m.uid() == euid);
    let system_dir = system_dir.as_os_str().to_os_string();
    move |k| {
        if system && k == "BANGER_RUNTIME_DIR" {
            Some(system_dir.clone())
        } else {
            get(k)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/alice".into(),
        }
    }

    #[test]
    fn units_name_the_owner_and_are_hardened() {
        let d = daemon_unit(&owner());
        for line in [
            "User=alice",
            "ExecStart=/usr/local/bin/bangerd",
            "Environment=BANGER_RUNTIME_DIR=/run/banger/bangerd",
            "Environment=BANGER_HELPER_SOCKET=/run/banger/helper.sock",
            "ReadWritePaths=-/home/alice/.local/state/banger -/home/alice/.config/banger -/home/alice/.ssh",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "PrivateTmp=yes",
            "KillMode=process",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_VSOCK",
        ] {
            assert!(d.lines().any(|l| l == line), "{line}\n{d}");
        }
        let h = helper_unit(&owner(), "banger0");
        for line in [
            "ExecStart=/usr/local/libexec/banger/banger-helper --socket /run/banger/helper.sock --owner 1000 --bridge banger0",
            "RuntimeDirectory=banger",
            "CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "DeviceAllow=/dev/net/tun rw",
        ] {
            assert!(h.lines().any(|l| l == line), "{line}\n{h}");
        }
    }

    #[test]
    fn adversarial_text_that_systemd_would_split_or_expand_is_refused() {
        for bad in ["a b", "x%h", "q\"", "new\nline", "", "a;b", "$HOME"] {
            assert!(unit_safe("home", bad).is_err(), "{bad:?}");
        }
        unit_safe("home", "/home/alice-1_x.y").unwrap();
    }

    #[test]
    fn the_cli_uses_the_system_runtime_dir_only_when_it_is_the_caller_s() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("bangerd");
        std::fs::create_dir(&mine).unwrap();
        let euid = crate::uid();
        let none = |_: &str| None::<OsString>;
        let with = layout_env(none, euid, &mine);
        assert_eq!(with("BANGER_RUNTIME_DIR"), Some(mine.clone().into()));
        assert_eq!(with("HOME"), None);
        // Someone else's dir, a missing dir, or BANGER_HOME set: the usual layout.
        assert_eq!(
            layout_env(none, euid + 1, &mine)("BANGER_RUNTIME_DIR"),
            None
        );
        assert_eq!(
            layout_env(none, euid, &dir.path().join("absent"))("BANGER_RUNTIME_DIR"),
            None
        );
        let home = |k: &str| (k == "BANGER_HOME").then(|| OsString::from("/tmp/bh"));
        assert_eq!(layout_env(home, euid, &mine)("BANGER_RUNTIME_DIR"), None);
    }

    #[test]
    fn kvm_access_follows_mode_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, "").unwrap();
        let meta = std::fs::metadata(&dev).unwrap();
        let me = Owner {
            name: "no-such-user-banger".into(),
            uid: meta.uid() + 1,
            gid: meta.gid(),
            home: "/h".into(),
        };
        let set = |mode| std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(mode));
        set(0o660).unwrap();
        // Its primary group is the device's.
        assert_eq!(kvm_access(&me, &dev), None);
        let stranger = Owner {
            gid: meta.gid() + 1,
            ..me.clone()
        };
        let why = kvm_access(&stranger, &dev).unwrap();
        assert!(
            why.contains("usermod -aG kvm") && why.contains("0660"),
            "{why}"
        );
        set(0o666).unwrap();
        assert_eq!(kvm_access(&stranger, &dev), None);
        assert_eq!(kvm_access(&stranger, &dir.path().join("absent")), None);
    }

    #[test]
    fn users_are_found_by_name_and_uid() {
        let root = lookup_user(None, 0).unwrap();
        assert_eq!((root.name.as_str(), root.uid), ("root", 0));
        assert_eq!(lookup_user(Some("root"), 12345).unwrap().uid, 0);
        assert!(lookup_user(Some("no-such-user-banger"), 0).is_none());
        assert!(lookup_user(Some("nul\0byte"), 0).is_none());
    }
}
