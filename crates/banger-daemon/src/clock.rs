//! The daemon's wall clock, for the timestamps it stores.

/// Seconds since the epoch as RFC 3339.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    banger_core::build::format_rfc3339(secs)
}
