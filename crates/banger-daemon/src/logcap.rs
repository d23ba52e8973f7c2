//! Caps the logs a guest writes: each VM's console log and VMM log.
//!
//! The VMM writes its logs itself, through the descriptors it inherited at spawn (opened with
//! `O_APPEND` by `banger_vmm::process::open_log`), and it outlives the daemon, so nothing can
//! sit between the guest and the file. The daemon therefore rotates by copy-then-truncate:
//! when a log passes half of `max_log_size`, its newest half is copied into `<log>.1`
//! (replacing the previous one) and the live file is truncated to zero. Because every writer
//! appends, the VMM's next write lands at the new end (offset 0) — no hole, no lost position.
//!
//! Bounds, stated honestly:
//! - A log and its `.1` hold at most `max_log_size` plus what the guest writes between two
//!   checks: the monitor checks running VMs every 500 ms, so the overshoot is 0.5 s times the
//!   guest's write rate (a serial console manages a few MiB/s at most).
//! - Bytes written between the end of the copy and the truncate (microseconds) are lost.
//! - While the daemon is down nothing is enforced; the daemon caps every VM's logs when it
//!   starts again (then the oldest part of a log that grew meanwhile is dropped).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use banger_core::logs::{CONSOLE_LOG, VMM_LOG, rotated_path};

/// The logs a guest can fill, in a VM's state directory.
pub fn vm_logs(vm_dir: &Path) -> [PathBuf; 2] {
    [vm_dir.join(CONSOLE_LOG), vm_dir.join(VMM_LOG)]
}

/// A failure capping one log.
#[derive(Debug, thiserror::Error)]
pub enum LogCapError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    /// The live log's length when it was rotated.
    pub was: u64,
    /// Bytes kept in `<log>.1`.
    pub kept: u64,
}

/// Rotates `log` when it is longer than half of `max` bytes: its newest `max / 2` bytes go to
/// `<log>.1`, then the live file is truncated. A missing log is nothing to do.
pub fn cap_log(log: &Path, max: u64) -> Result<Option<Rotated>, LogCapError> {
    let half = max / 2;
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LogCapError::Io {
            action,
            path,
            source,
        }
    };
    // O_NOFOLLOW: a log is a regular file banger created; never write through a symlink.
    let mut live = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", log)(e)),
    };
    let was = live.metadata().map_err(io_err("stat", log))?.len();
    if was <= half {
        return Ok(None);
    }
    let rotated = rotated_path(log);
    let kept =
        copy_tail(&mut live, was, half, &rotated).map_err(io_err("rotate into", &rotated))?;
    live.set_len(0).map_err(io_err("truncate", log))?;
    Ok(Some(Rotated { was, kept }))
}

/// Copies the bytes of `live` from `len - keep` up to its current end (at most `keep` plus
/// what was appended meanwhile, bounded by `2 * keep`) into `dest`, atomically replacing it.
fn copy_tail(live: &mut File, len: u64, keep: u64, dest: &Path) -> io::Result<u64> {
    let tmp = {
        let mut name = dest.as_os_str().to_owned();
        name.push(".tmp");
        PathBuf::from(name)
    };
    // A temp file left by a crash is ours; start over.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    live.seek(SeekFrom::Start(len.saturating_sub(keep)))?;
    let copied = io::copy(&mut live.take(keep.saturating_mul(2)), &mut out)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, dest)?;
    Ok(copied)
}

/// The monitor's log check: the first check caps every VM's logs (they may have grown while
/// the daemon was down), later ones those of running VMs (only a running VMM writes).
#[derive(Debug)]
pub struct LogCapper {
    max: u64,
    first: bool,
}

impl LogCapper {
    /// A capper for `max_log_size` bytes.
    pub fn new(max: u64) -> Self {
        Self { max, first: true }
    }

    /// Caps the logs of `rows` as described on [`LogCapper`], off the async threads.
    pub async fn check(&mut self, rows: &[banger_store::VmRow]) {
        let dirs: Vec<PathBuf> = rows
            .iter()
            .filter(|r| self.first || r.state == banger_api::types::VmState::Running)
            .map(|r| PathBuf::from(&r.dir))
            .collect();
        self.first = false;
        if dirs.is_empty() {
            return;
        }
        let max = self.max;
        if let Err(e) = tokio::task::spawn_blocking(move || cap_vm_dirs(&dirs, max)).await {
            tracing::warn!(error = %e, "the log cap check did not finish");
        }
    }
}

/// Caps every log of the VMs whose state directories are `vm_dirs`; failures are logged (a
/// log that cannot be capped now is tried again at the next check).
pub fn cap_vm_dirs(vm_dirs: &[PathBuf], max: u64) {
    for log in vm_dirs.iter().flat_map(|d| vm_logs(d)) {
        match cap_log(&log, max) {
            Ok(Some(r)) => tracing::info!(
                log = %log.display(),
                was = r.was,
                kept = r.kept,
                "log rotated: over half of max_log_size"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot cap a VM log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    fn numbered(lines: std::ops::Range<u32>) -> Vec<u8> {
        lines
            .map(|i| format!("line {i:07}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn a_small_log_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(CONSOLE_LOG);
        std::fs::write(&log, b"booting\n").unwrap();
        assert_eq!(cap_log(&log, MAX).unwrap(), None);
        assert_eq!(std::fs::read(&log).unwrap(), b"booting\n");
        assert!(!rotated_path(&log).exists());
        assert_eq!(cap_log(&dir.path().join("absent.log"), MAX).unwrap(), None);
    }

    #[test]
    fn adversarial_log_over_the_cap_keeps_the_newest_half_and_restarts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(CONSOLE_LOG);
        // A guest flooded its console: 8 MiB against a 1 MiB cap.
        let flood = numbered(0..(8 << 20) / 13);
        std::fs::write(&log, &flood).unwrap();
        let r = cap_log(&log, MAX).unwrap().unwrap();
        assert_eq!(r.was, flood.len() as u64);
        assert_eq!(r.kept, MAX / 2);
        let kept = std::fs::read(rotated_path(&log)).unwrap();
        assert_eq!(kept, flood[flood.len() - (MAX / 2) as usize..]);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        // Disk held by the log and its .1 is within the cap.
        assert!(kept.len() as u64 <= MAX);
        // Nothing else was left in the directory (no temp file).
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["console.log", "console.log.1"]);
    }

    #[test]
    fn adversarial_log_appending_writer_continues_at_the_new_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(VMM_LOG);
        // The VMM's inherited descriptor: O_APPEND, as open_log makes it.
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writer.write_all(&vec![b'x'; MAX as usize]).unwrap();
        cap_log(&log, MAX).unwrap().unwrap();
        writer.write_all(b"after rotation\n").unwrap();
        // No hole of zeros where the old end was: the write landed at offset 0.
        assert_eq!(std::fs::read(&log).unwrap(), b"after rotation\n");
    }

    #[test]
    fn adversarial_log_second_rotation_replaces_the_first_and_a_stale_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(CONSOLE_LOG);
        std::fs::write(&log, vec![b'a'; MAX as usize]).unwrap();
        cap_log(&log, MAX).unwrap().unwrap();
        let mut tmp = rotated_path(&log).into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, b"left by a crash").unwrap();
        std::fs::write(&log, vec![b'b'; MAX as usize]).unwrap();
        cap_log(&log, MAX).unwrap().unwrap();
        let kept = std::fs::read(rotated_path(&log)).unwrap();
        assert!(kept.iter().all(|&c| c == b'b') && kept.len() as u64 == MAX / 2);
        assert!(!Path::new(&tmp).exists());
    }

    #[test]
    fn adversarial_log_symlinked_log_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, vec![b'p'; MAX as usize]).unwrap();
        let log = dir.path().join(CONSOLE_LOG);
        std::os::unix::fs::symlink(&target, &log).unwrap();
        let err = cap_log(&log, MAX).unwrap_err();
        assert!(err.to_string().contains("console.log"), "{err}");
        assert_eq!(std::fs::metadata(&target).unwrap().len(), MAX);
        assert!(!rotated_path(&log).exists());
    }

    #[test]
    fn cap_vm_dirs_caps_both_logs() {
        let dir = tempfile::tempdir().unwrap();
        for log in vm_logs(dir.path()) {
            std::fs::write(&log, vec![b'z'; MAX as usize]).unwrap();
        }
        cap_vm_dirs(&[dir.path().to_path_buf()], MAX);
        for log in vm_logs(dir.path()) {
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
            assert_eq!(
                std::fs::metadata(rotated_path(&log)).unwrap().len(),
                MAX / 2
            );
        }
    }
}
