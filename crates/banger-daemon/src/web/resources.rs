//! The dashboard's resource cards: CPUs and memory reserved by running VMs against the
//! host's, and disk allocated by VM disks against the filesystem holding the state dir.
//!
//! The host is reached through [`HostInfo`] ([`SystemHost`] outside tests): its CPU count,
//! its memory (`/proc/meminfo`), a filesystem's size (`statvfs`) and a file's allocated
//! blocks (sparse disks take less than their size).

use std::path::Path;

use banger_api::types::{Vm, VmState};

/// A filesystem's size and what is still free for the daemon's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub total: u64,
    pub available: u64,
}

/// What the dashboard asks the host.
pub trait HostInfo: Send + Sync + std::fmt::Debug {
    /// Logical CPUs.
    fn cpus(&self) -> Option<u64>;
    /// Physical memory, in bytes.
    fn memory_bytes(&self) -> Option<u64>;
    /// The filesystem holding `path`.
    fn filesystem(&self, path: &Path) -> Option<FsSpace>;
    /// The bytes allocated to the file at `path` (`None`: there is none).
    fn allocated(&self, path: &Path) -> Option<u64>;
}

/// The real host.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl HostInfo for SystemHost {
    fn cpus(&self) -> Option<u64> {
        std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u64)
    }

    fn memory_bytes(&self) -> Option<u64> {
        mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
    }

    fn filesystem(&self, path: &Path) -> Option<FsSpace> {
        let st = rustix::fs::statvfs(path).ok()?;
        Some(FsSpace {
            total: st.f_blocks.saturating_mul(st.f_frsize),
            available: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }

    fn allocated(&self, path: &Path) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One card: how much is used of how much (`None`: the host did not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub total: Option<u64>,
}

impl Usage {
    /// The share used, in whole percent (over 100 when overcommitted).
    pub fn percent(&self) -> Option<u64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| (self.used.saturating_mul(100)) / t)
    }
}

/// The dashboard's cards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub running: usize,
    pub stopped: usize,
    /// vCPUs of running VMs, of the host's CPUs.
    pub cpus: Usage,
    /// Memory of running VMs, of the host's, in bytes.
    pub memory: Usage,
    /// Bytes allocated by every VM's disks, of the state dir's filesystem.
    pub disk: Usage,
    /// The sizes those disks may grow to.
    pub disk_provisioned: u64,
    /// Free on the state dir's filesystem.
    pub disk_available: Option<u64>,
}

/// The cards for `vms` on `host`, with the state dir `state_dir`.
pub fn resources(vms: &[Vm], host: &dyn HostInfo, state_dir: &Path) -> Resources {
    let running: Vec<&Vm> = vms.iter().filter(|v| v.state == VmState::Running).collect();
    let fs = host.filesystem(state_dir);
    let allocated = vms
        .iter()
        .flat_map(|v| [v.dir.join("root.ext4"), v.dir.join("work.ext4")])
        .filter_map(|p| host.allocated(&p))
        .sum();
    Resources {
        running: running.len(),
        stopped: vms.len() - running.len(),
        cpus: Usage {
            used: running.iter().map(|v| u64::from(v.cpus)).sum(),
            total: host.cpus(),
        },
        memory: Usage {
            used: running.iter().map(|v| v.memory_mib << 20).sum(),
            total: host.memory_bytes(),
        },
        disk: Usage {
            used: allocated,
            total: fs.map(|f| f.total),
        },
        disk_provisioned: vms.iter().map(|v| v.disk_bytes + v.work_disk_bytes).sum(),
        disk_available: fs.map(|f| f.available),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[derive(Debug)]
    struct FakeHost;

    impl HostInfo for FakeHost {
        fn cpus(&self) -> Option<u64> {
            Some(8)
        }
        fn memory_bytes(&self) -> Option<u64> {
            Some(16 << 30)
        }
        fn filesystem(&self, path: &Path) -> Option<FsSpace> {
            (path == Path::new("/state")).then_some(FsSpace {
                total: 100 << 30,
                available: 40 << 30,
            })
        }
        fn allocated(&self, path: &Path) -> Option<u64> {
            path.starts_with("/state/vms/a").then_some(1 << 30)
        }
    }

    fn vm(id: &str, state: VmState, cpus: u32, memory_mib: u64) -> Vm {
        Vm {
            id: id.into(),
            name: id.into(),
            state,
            image: "img".into(),
            image_id: "img".into(),
            vmm: banger_api::types::VmmKind::Firecracker,
            cpus,
            memory_mib,
            disk_bytes: 2 << 30,
            work_disk_bytes: 8 << 30,
            nat: false,
            ip: None,
            mac: None,
            tap: None,
            vsock_cid: None,
            pid: None,
            created_at: String::new(),
            started_at: None,
            dir: PathBuf::from("/state/vms").join(id),
            console_log: PathBuf::new(),
            vmm_log: PathBuf::new(),
            error: None,
            workspace: None,
            origin: banger_core::vm::VmOrigin::Api,
            restored_from: None,
            disk_clone: None,
            paused: false,
            forked_from: None,
            fork_memory: None,
        }
    }

    #[test]
    fn running_vms_reserve_cpus_and_memory_and_every_vm_s_disks_count() {
        let vms = [
            vm("a", VmState::Running, 2, 2048),
            vm("b", VmState::Running, 4, 1024),
            vm("c", VmState::Stopped, 8, 8192),
        ];
        let r = resources(&vms, &FakeHost, Path::new("/state"));
        assert_eq!((r.running, r.stopped), (2, 1));
        assert_eq!(
            r.cpus,
            Usage {
                used: 6,
                total: Some(8)
            }
        );
        assert_eq!(r.cpus.percent(), Some(75));
        assert_eq!(r.memory.used, 3 << 30);
        assert_eq!(r.disk.used, 2 << 30, "a's two disks, 1 GiB allocated each");
        assert_eq!(r.disk.total, Some(100 << 30));
        assert_eq!(r.disk_available, Some(40 << 30));
        assert_eq!(r.disk_provisioned, 30 << 30);
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        assert_eq!(
            mem_total("MemTotal:       16318200 kB\nMemFree: 1 kB\n"),
            Some(16318200 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
        assert_eq!(
            Usage {
                used: 1,
                total: None
            }
            .percent(),
            None
        );
    }
}
