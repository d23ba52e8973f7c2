//! The state every service shares: options, the store, the host seams, the locks.
//!
//! This module sits below every service and the server; it knows no VM, image or route
//! logic, only how to reach the store ([`AppState::db`]) and the locks' order ([`Locks`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use banger_api::types::SshInfo;
use banger_core::runner::CommandRunner;
use banger_net::{NetOps, Subnet};
use banger_store::{Store, VmRow};
use banger_vmm::{Vmm, VmmKind};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::error::OpError;
use crate::ops::OpTracker;
use crate::options::DaemonOptions;
use crate::ssh::SshKey;

/// Shared daemon state handed to every handler.
#[derive(Debug)]
pub struct AppState {
    pub opts: DaemonOptions,
    pub store: Mutex<Store>,
    pub ops: Arc<OpTracker>,
    /// When the daemon started, in seconds since the epoch (from [`AppState::clock`]).
    pub started_at: u64,
    /// The wall clock timestamps are read from.
    pub clock: Arc<dyn Clock>,
    /// The seams to the host: VMM backend, network operations, command runner.
    pub host: Host,
    pub locks: Locks,
    /// The multiplexed connections to the agents of QEMU VMs (one per VM).
    pub agents: crate::agents::AgentLinks,
    pub subnet: Subnet,
    pub ssh: SshKey,
    pub guest_dns: Vec<Ipv4Addr>,
    /// The user VMMs and TAPs belong to.
    pub uid: u32,
    /// The `.vm` zone, kept equal to the running VMs by [`AppState::set_vm`] and
    /// [`AppState::refresh_dns`].
    pub dns: crate::dns::Dns,
    /// banger's ssh files: the block in the owner's `~/.ssh/config`, the running VMs'
    /// address stanzas (kept equal to the store with the `.vm` zone) and the guests' host
    /// keys.
    pub ssh_hosts: crate::ssh_hosts::SshHosts,
    /// Idle TAPs ready on the bridge (config `tap_pool_size`).
    pub tap_pool: crate::tap_pool::TapPool,
    /// The warm-start templates ([`crate::templates`]).
    pub templates: crate::templates::Templates,
    /// Whether the bridge exists (at start, or since a boot made it): what the guests' DNS
    /// and the TAP pool wait for, so a daemon that never boots a VM changes nothing on the
    /// host network.
    pub bridge: tokio::sync::watch::Sender<bool>,
    /// Held while the bridge is made or checked (`NetOps::ensure_bridge`, on a blocking
    /// thread): a create, a template's make and the TAP pool run at once, and two
    /// `ip link add` of one bridge make the second fail with "File exists". A leaf lock.
    pub bridge_lock: Arc<std::sync::Mutex<()>>,
    pub(crate) shutdown: Notify,
    /// Where the web UI listens, or why not (set once at start by the web service).
    web: Mutex<banger_api::types::WebListener>,
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
    /// The wall clock ([`SystemClock`](crate::clock::SystemClock) outside tests).
    pub clock: Arc<dyn Clock>,
}

impl AppState {
    pub fn new(opts: DaemonOptions, store: Store, parts: Parts) -> Self {
        let tap_pool = crate::tap_pool::TapPool::new(opts.config.tap_pool_size);
        let templates = crate::templates::Templates::new(opts.layout.state_dir.join("templates"));
        Self {
            ssh_hosts: crate::ssh_hosts::SshHosts::new(
                &opts.layout,
                parts.ssh.private_key.clone(),
                opts.home.clone(),
            ),
            opts,
            store: Mutex::new(store),
            ops: Arc::new(OpTracker::default()),
            started_at: crate::clock::epoch_secs(parts.clock.now()),
            clock: parts.clock,
            host: parts.host,
            locks: Locks::default(),
            agents: crate::agents::AgentLinks::default(),
            subnet: parts.subnet,
            ssh: parts.ssh,
            guest_dns: parts.guest_dns,
            uid: parts.uid,
            dns: crate::dns::Dns::default(),
            tap_pool,
            templates,
            bridge: tokio::sync::watch::Sender::new(false),
            bridge_lock: Arc::default(),
            shutdown: Notify::new(),
            web: Mutex::new(banger_api::types::WebListener::Off),
        }
    }

    /// Where the web UI listens, or why not.
    pub fn web_listener(&self) -> banger_api::types::WebListener {
        self.web.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records where the web UI listens (the web service, at start).
    pub fn set_web_listener(&self, listener: banger_api::types::WebListener) {
        *self.web.lock().unwrap_or_else(|e| e.into_inner()) = listener;
    }

    /// Says the bridge exists (see [`AppState::bridge`]).
    pub fn bridge_up(&self) {
        self.bridge.send_replace(true);
    }

    /// Waits until the bridge exists (see [`AppState::bridge`]).
    pub async fn bridge_ready(&self) {
        let mut rx = self.bridge.subscribe();
        let _ = rx.wait_for(|up| *up).await;
    }

    /// The time now, as stored in rows (RFC 3339).
    pub fn now(&self) -> String {
        crate::clock::rfc3339(self.clock.now())
    }

    /// Asks the server to stop accepting requests and exit.
    pub fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Runs `f` with the store locked. Never call across an await.
    pub fn db<T>(&self, f: impl FnOnce(&banger_store::Store) -> T) -> T {
        let guard = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// How clients reach guests: the managed key and how long to wait for sshd.
    pub fn ssh_info(&self) -> SshInfo {
        SshInfo {
            private_key: self.ssh.private_key.clone(),
            public_key: self.ssh.public_key.clone(),
            wait_secs: self.opts.config.ssh_wait_secs,
            known_hosts: self.ssh_hosts.known_hosts().to_path_buf(),
        }
    }

    pub fn vm_rows(&self) -> Result<Vec<VmRow>, OpError> {
        Ok(self.db(|s| s.list_vms())?)
    }

    /// Stores `row` and brings the `.vm` zone up to date with it.
    pub fn set_vm(&self, row: &VmRow) -> Result<(), OpError> {
        self.db(|s| s.update_vm(row))?;
        self.refresh_dns();
        Ok(())
    }

    /// Rebuilds the `.vm` zone from the store (after an insert, a delete, a reconcile), and
    /// the ssh address stanzas with it. A store that cannot be read leaves both as they were.
    pub fn refresh_dns(&self) {
        match self.db(|s| s.list_vms()) {
            Ok(rows) => self.dns.refresh(&rows),
            Err(e) => {
                tracing::warn!(error = %banger_core::error::chain(&e), "DNS zone not updated")
            }
        }
        self.ssh_hosts.refresh(|| self.db(|s| s.list_vms()));
    }
}

/// The daemon's locks, and the one order they are taken in (also in ARCHITECTURE.md):
///
/// 1. the daemon lock (the single-instance file lock, held for the process lifetime);
/// 2. the image lock ([`Locks::images`]): image and kernel mutations, and work seeds;
/// 3. a VM lock ([`Locks::vm`]): every operation on that VM, for its whole duration;
/// 4. the ssh files' lock ([`SshHosts`](crate::ssh_hosts::SshHosts)), for one file rewrite,
///    never across an await (it reads the store inside);
/// 5. the store mutex ([`AppState::db`]), for single queries only, never across an await.
///
/// A task holding a later lock never waits for an earlier one: a VM operation that needs
/// the image lock (create, for its image's work seed) takes it *before* its VM lock. Work
/// that needs the image lock takes its guard ([`ImagesGuard`]) as proof it is held.
#[derive(Debug, Default)]
pub struct Locks {
    vms: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    images: tokio::sync::Mutex<()>,
    /// The OCI layer cache: pulls hold it shared, `image cache prune` exclusive.
    layer_cache: tokio::sync::RwLock<()>,
}

/// Proof that the image lock is held (see [`Locks`]).
pub type ImagesGuard<'a> = tokio::sync::MutexGuard<'a, ()>;

impl Locks {
    /// Waits for the image lock. Never call while holding a VM lock (see [`Locks`]).
    pub async fn images(&self) -> ImagesGuard<'_> {
        self.images.lock().await
    }

    /// The layer cache for a pull: no prune runs meanwhile.
    pub async fn layer_cache_shared(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.layer_cache.read().await
    }

    /// The layer cache for a prune: no pull runs meanwhile.
    pub async fn layer_cache_exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.layer_cache.write().await
    }

    /// The lock of VM `id`; take it after the image lock when both are needed.
    pub fn vm(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    /// Drops the lock of a VM that no longer exists.
    pub(crate) fn forget(&self, id: &str) {
        let mut map = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }
}
