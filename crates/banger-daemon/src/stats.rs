//! `vm stats`: the VMM process as `/proc` sees it, and what the VM's disks take on the host.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use banger_api::types::VmStats;
use banger_store::VmRow;

use crate::error::OpError;

/// Clock ticks per second for `/proc/PID/stat` times (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn read(row: &VmRow, pid: u32) -> Result<VmStats, OpError> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let stat_path = proc_dir.join("stat");
    let stat = std::fs::read_to_string(&stat_path).map_err(OpError::io("read", &stat_path))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command name start at field 3 (state): index = field - 3.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = ticks_per_sec();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let started = field(22) as f64 / ticks;
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let io = std::fs::read_to_string(proc_dir.join("io")).ok();
    let io_field = |name: &str| {
        io.as_deref().and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        })
    };
    let allocated = |file: &str| {
        std::fs::metadata(Path::new(&row.dir).join(file))
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    };
    Ok(VmStats {
        name: row.name.clone(),
        pid,
        uptime_secs: (uptime - started).max(0.0) as u64,
        cpu_user_secs: field(14) as f64 / ticks,
        cpu_system_secs: field(15) as f64 / ticks,
        rss_bytes: rss_kib * 1024,
        threads: field(20) as u32,
        read_bytes: io_field("read_bytes:"),
        write_bytes: io_field("write_bytes:"),
        root_disk_allocated: allocated("root.ext4"),
        work_disk_allocated: allocated("work.ext4"),
    })
}
