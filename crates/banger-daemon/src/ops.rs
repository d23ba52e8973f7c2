//! Operations: every API request is one, with an id that is logged with each of its log lines
//! and returned to the client (header and error body).
//!
//! An operation's work runs inside its request future. When the client disconnects (Ctrl-C),
//! the server drops that future, which cancels the work at its next await point; the
//! [`OpGuard`] sees the drop and counts and logs the operation as cancelled. Work that must not
//! be torn half-way (cleanup) is written to finish on its own or to be undone on drop.
//!
//! The tracker also keeps the last [`RECENT_OPS`] state-changing operations (every method
//! but `GET` and `HEAD`) with how they ended, which the web UI's dashboard lists.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use banger_api::types::OpCounts;

/// A fresh operation id: 12 hex characters.
pub fn new_op_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

/// How many ended state-changing operations [`OpTracker::recent`] keeps.
pub const RECENT_OPS: usize = 20;

/// A state-changing operation that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentOp {
    pub op_id: String,
    pub method: String,
    pub path: String,
    /// The answer's HTTP status; `None` when the client went away first (cancelled).
    pub status: Option<u16>,
    /// When it ended.
    pub ended: Instant,
    pub took: Duration,
}

/// Counters of requests since start, and the last state-changing ones.
#[derive(Debug, Default)]
pub struct OpTracker {
    in_flight: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    recent: Mutex<VecDeque<RecentOp>>,
}

impl OpTracker {
    pub fn begin(&self, op_id: String, method: String, path: String) -> OpGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        OpGuard {
            tracker: self,
            op_id,
            method,
            path,
            started: Instant::now(),
            done: false,
        }
    }

    /// The last [`RECENT_OPS`] state-changing operations that ended, newest first.
    pub fn recent(&self) -> Vec<RecentOp> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }

    fn remember(&self, guard: &OpGuard<'_>, status: Option<u16>) {
        if matches!(guard.method.as_str(), "GET" | "HEAD") {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_OPS {
            recent.pop_front();
        }
        recent.push_back(RecentOp {
            op_id: guard.op_id.clone(),
            method: guard.method.clone(),
            path: guard.path.clone(),
            status,
            ended: Instant::now(),
            took: guard.started.elapsed(),
        });
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
    started: Instant,
    done: bool,
}

impl OpGuard<'_> {
    /// The operation answered with HTTP `status`.
    pub fn finish(mut self, status: u16) {
        self.done = true;
        self.tracker.completed.fetch_add(1, Ordering::SeqCst);
        self.tracker.remember(&self, Some(status));
    }
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.tracker.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.tracker.cancelled.fetch_add(1, Ordering::SeqCst);
            self.tracker.remember(self, None);
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
        a.finish(200);
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
    fn the_last_state_changing_operations_are_kept_newest_first() {
        let t = OpTracker::default();
        t.begin("read".into(), "GET".into(), "/v1/vms".into())
            .finish(200);
        t.begin("made".into(), "POST".into(), "/v1/vms".into())
            .finish(200);
        drop(t.begin("gone".into(), "POST".into(), "/v1/vms/actions".into()));
        let recent = t.recent();
        let seen: Vec<(&str, Option<u16>)> = recent
            .iter()
            .map(|r| (r.op_id.as_str(), r.status))
            .collect();
        assert_eq!(
            seen,
            [("gone", None), ("made", Some(200))],
            "GETs are not kept"
        );
        for n in 0..RECENT_OPS + 5 {
            t.begin(format!("op{n}"), "DELETE".into(), "/v1/images/x".into())
                .finish(404);
        }
        let recent = t.recent();
        assert_eq!(recent.len(), RECENT_OPS);
        assert_eq!(recent[0].op_id, format!("op{}", RECENT_OPS + 4));
    }

    #[test]
    fn ids_are_short_hex_and_distinct() {
        let a = new_op_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_op_id());
    }
}
