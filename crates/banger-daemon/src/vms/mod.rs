//! The VM lifecycle: create, start, stop, restart, kill, delete, set, and reconciliation.
//!
//! Every operation on one VM holds that VM's lock (see [`Locks`](crate::state::Locks)) for its whole duration, so
//! one VM's operations are serialised while different VMs progress in parallel. The store
//! mutex is taken only around single queries, never across an await.
//!
//! Creation is all-or-nothing: every resource it takes (row, IP, TAP, disks, VMM process) is
//! undone by [`rollback_create`] when a later step fails or the client goes away, so nothing
//! half-made remains.
//!
//! # States, and what a daemon crash leaves
//!
//! A VM is `creating` from its row's insert until its agent answered and sshd was waited
//! for; only then is it `running`, and the stream's `ready` follows at once. A start of a
//! stopped VM keeps it `stopped` until the agent answered, with its run directory made before
//! the network comes up and the VMM's pid (and start time) stored as soon as the VMM is
//! spawned. So a daemon killed anywhere leaves rows [`reconcile`] can finish on restart: a
//! `creating` row is rolled back completely, and a `stopped` row with a pid or a run
//! directory (an unfinished start) has its VMM killed and its TAP, NAT rule and run directory
//! released. A VMM spawned but not yet recorded is found by its command line, which names the
//! VM's run directory.
//!
//! A start that fails releases what it took, like a stop, and leaves the VM `error` with
//! the failure in its `error` field; an `error` VM is started (and reconciled) like a
//! stopped one, and a start that works clears both.
//!
//! # Signalling VMMs
//!
//! A stored pid is never trusted: every path that signals a VMM (stop, kill, delete,
//! rollback, reconcile, the monitor) first checks with [`banger_vmm::process::identify`] that
//! the pid is still that VM's VMM (start time, command line) and then signals through the
//! pidfd. A VM whose pid now belongs to another process is treated as "VMM gone": marked
//! stopped, its resources released, the other process left alone.
//!
//! # Layout
//!
//! - `lookup`: what a user's reference means (VMs and, for create, images).
//! - `view`: a row's API view, run and VM directories, the VM's backend and boot spec.
//! - `create`: create, its stages and its rollback.
//! - `disks`: the VM defaults, a row's guest configuration, the work seed, a booted VM's
//!   disks, and a restored VM's note.
//! - `boot`: network up, VMM started, agent waited for; and the release of what a boot took.
//! - `host_files`: host integration written into the work disk before every boot (git
//!   identity, agent auth files, config `file_sync`).
//! - `vmm`: the VM's VMM process, identified before it is signalled.
//! - `agent`: the VM's guest agent (readiness, health, ping, ports, exec sessions, guest
//!   files), one
//!   multiplexed connection per VM reached over a Unix socket (QEMU).
//! - `ports`: the guest's listeners as the host reaches them: endpoints, web links.
//! - `exec`: exec sessions relayed between a client and the agent.
//! - `query`: the VM list, one VM, its VMM's statistics.
//! - `actions`: start, stop, restart, kill, delete, set, and multi-VM actions.
//! - `reconcile`: stored state brought in line with the host, and the VMM monitor.
//! - `pool`: the warm TAP pool filled in the background, and a boot's take from it.
//! - `fork`: `vm fork`: a running VM paused, saved, its disks copied, resumed, and a new VM
//!   restored from the saved state with its own identity.
//! - `warm`: warm start: a template made (a guest booted once and saved), a VM restored from
//!   one and given its own identity.

mod actions;
mod agent;
mod boot;
mod create;
mod disks;
mod exec;
mod fork;
mod host_files;
mod lookup;
mod pool;
mod ports;
mod query;
mod reconcile;
mod view;
mod vmm;
mod warm;

pub use actions::{act, delete, kill, pause, restart, resume, set, start, stop};
pub use agent::{
    agent_health, agent_ports, endpoint_of, exec_channel, health, list_dir, ping, read_file,
    write_file,
};
pub use boot::record_missing_host_keys;
pub use create::{
    DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_WORK_DISK, check_settings, create, rollback_create,
};
pub use disks::{Restored, restored};
pub use exec::{UPGRADE_EXEC, relay};
pub use fork::fork;
pub use lookup::resolve;
pub use pool::{keep_tap_pool, note_bridge};
pub use ports::ports;
pub use query::{list, show, stats};
pub use reconcile::{monitor, reconcile, reconcile_running};
pub use view::{BOOT_ARGS, workspace_view};
pub use warm::{TEMPLATE_IP, make as make_template, warm_image};
