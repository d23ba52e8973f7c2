//! Operations: every API request is one, with an id that is logged with each of its log lines
//! and returned to the client (header and error body).
//!
//! An operation's work runs inside its request future. When the client disconnects (Ctrl-C),
//! the server drops that future, which cancels the work at its next await point; the
//! [`OpGuard`] sees the drop and counts and logs the operation as cancelled. Work that must not
//! be torn half-way (cleanup) is written to finish on its own or to be undone on drop.

use std::sync::atomic::{AtomicU64, Ordering};

use banger_api::types::OpCounts;

/// A fresh operation id: 12 hex characters.
pub fn new_op_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

/// Counters of requests since start.
#[derive(Debug, Default)]
pub struct OpTracker {
    in_flight: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
}

impl OpTracker {
    pub fn begin(&self, op_id: String, method: String, path: String) -> OpGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        OpGuard {
            tracker: self,
            op_id,
            method,
            path,
            done: false,
        }
    }

    pub fn counts(&self) -> OpCounts {
        OpCounts {
            in_flight: self.in_flight.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
        }
    }
}

/// Marks one operation in flight; dropping it before [`OpGuard::finish`] means cancelled.
#[derive(Debug)]
pub struct OpGuard<'a> {
    tracker: &'a OpTracker,
    op_id: String,
    method: String,
    path: String,
    done: bool,
}

impl OpGuard<'_> {
    pub fn finish(mut self) {
        self.done = true;
        self.tracker.completed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.tracker.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.tracker.cancelled.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                op_id = %self.op_id,
                method = %self.method,
                path = %self.path,
                "client went away; operation cancelled"
            );
        }
    }
}

/// The operation id of the current request (a request extension).
#[derive(Debug, Clone)]
pub struct OpId(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_finish_and_cancel() {
        let t = OpTracker::default();
        let a = t.begin(new_op_id(), "GET".into(), "/a".into());
        let b = t.begin(new_op_id(), "GET".into(), "/b".into());
        assert_eq!(t.counts().in_flight, 2);
        a.finish();
        drop(b);
        assert_eq!(
            t.counts(),
            OpCounts {
                in_flight: 0,
                completed: 1,
                cancelled: 1
            }
        );
    }

    #[test]
    fn ids_are_short_hex_and_distinct() {
        let a = new_op_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_op_id());
    }
}
