//! The daemon's wall clock, for the timestamps it stores (creation, start, the daemon's own
//! start). Injected ([`Clock`], in [`Parts`](crate::state::Parts)) so that tests choose the
//! time; timeouts and grace periods are measured on tokio's clock instead.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the daemon reads the wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The host's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Whole seconds since the epoch (0 for a time before it).
pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` as RFC 3339, to the second, in UTC.
pub fn rfc3339(t: SystemTime) -> String {
    banger_core::build::format_rfc3339(epoch_secs(t))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_seconds_since_the_epoch() {
        let t = UNIX_EPOCH + Duration::from_secs(1_893_553_445);
        assert_eq!(rfc3339(t), "2030-01-02T03:04:05Z");
        assert_eq!(epoch_secs(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert!(epoch_secs(SystemClock.now()) > 1_700_000_000);
    }
}
