//! The one VM row the daemon's unit tests build: every column a plain default, the ones a
//! test is about given.

use std::net::Ipv4Addr;

use banger_core::vm::VmState;
use banger_core::vmm_kind::VmmKind;
use banger_store::VmRow;

/// A Firecracker VM row with `id`, `name`, `state` and `ip`; the rest small defaults.
pub(crate) fn vm_row(id: &str, name: &str, state: VmState, ip: Option<Ipv4Addr>) -> VmRow {
    VmRow {
        id: id.into(),
        name: name.into(),
        image_id: "img".into(),
        state,
        vmm: VmmKind::Firecracker,
        cpus: 1,
        memory_mib: 128,
        disk_bytes: 1,
        work_disk_bytes: 1,
        nat: false,
        ip,
        mac: None,
        tap: None,
        vsock_cid: None,
        pid: None,
        vmm_start_time: None,
        dir: "/x".into(),
        error: None,
        created_at: "t".into(),
        started_at: None,
        origin: banger_core::vm::VmOrigin::Api,
        paused: false,
    }
}
