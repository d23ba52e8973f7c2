//! A VMM's logs: opened for appending before a spawn (remembering where this start's output
//! begins), and the tail of what it wrote, quoted when it exits during a start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::VmmError;

/// The last `max_lines` lines of what the file holds beyond byte `from` (read from at most
/// its last `max_bytes`), trimmed; empty when it cannot be read.
pub(crate) fn tail(path: &Path, from: u64, max_lines: usize, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A log shorter than `from` was rotated (truncated) since: all of it is new.
    let from = if from > len { 0 } else { from };
    let start = len.saturating_sub(max_bytes).max(from);
    if start >= len || file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > from && !lines.is_empty() {
        // The first line was cut by the byte limit.
        lines.remove(0);
    }
    let keep = lines.len().saturating_sub(max_lines);
    lines[keep..].join("\n").trim().to_string()
}

/// How many lines and bytes of a log an error quotes.
pub(crate) const TAIL_LINES: usize = 20;
pub(crate) const TAIL_BYTES: u64 = 4096;

/// Opens a log for appending; also returns its length, where this start's output begins.
///
/// `O_APPEND` matters beyond this start: the daemon caps logs by truncating them in place
/// (`banger_daemon::logcap`), and only an appending writer continues at the new end instead
/// of leaving a hole the size of everything written before.
pub(crate) fn open_log(vm_id: &str, path: &Path) -> Result<(File, u64), VmmError> {
    let error = |source| VmmError::OpenLog {
        vm_id: vm_id.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(error)?;
    let len = file.metadata().map_err(error)?.len();
    Ok((file, len))
}
