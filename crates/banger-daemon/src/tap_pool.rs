//! The warm pool of idle TAP devices ([`TapPool`]): up to config `tap_pool_size` TAPs named
//! [`pool_tap_name`](banger_net::plan::pool_tap_name) (`bgrp0`...), owned by the daemon's
//! user and attached to the bridge, so that a boot takes one ready-made instead of making
//! the bridge and a TAP (the VM's row then records that TAP). The pool is refilled in the
//! background after every take; its TAPs are capacity, not leaks: a check for stray `bgr*`
//! links counts [`TapPool::idle`] as the daemon's. They outlive the daemon (they are
//! persistent), and a restarted daemon adopts the ones no VM row names.
//!
//! This module is the bookkeeping only; `vms` fills, adopts and takes.

use std::sync::Mutex;

use tokio::sync::Notify;

/// The idle pool TAPs and how many are wanted.
#[derive(Debug)]
pub struct TapPool {
    wanted: u32,
    idle: Mutex<Vec<String>>,
    taken: Notify,
}

impl TapPool {
    /// An empty pool that wants `wanted` TAPs.
    pub fn new(wanted: u32) -> Self {
        Self {
            wanted,
            idle: Mutex::new(Vec::new()),
            taken: Notify::new(),
        }
    }

    fn idle_mut(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many idle TAPs the pool keeps.
    pub fn wanted(&self) -> u32 {
        self.wanted
    }

    /// The idle TAPs, oldest first.
    pub fn idle(&self) -> Vec<String> {
        self.idle_mut().clone()
    }

    /// How many TAPs the pool lacks.
    pub fn missing(&self) -> u32 {
        let have = u32::try_from(self.idle_mut().len()).unwrap_or(u32::MAX);
        self.wanted.saturating_sub(have)
    }

    /// Takes the oldest idle TAP, if any, and wakes the refill.
    pub fn take(&self) -> Option<String> {
        let name = {
            let mut idle = self.idle_mut();
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        self.taken.notify_one();
        name
    }

    /// Adds a ready TAP `name`; false (nothing added) when the pool is full or has it.
    pub fn add(&self, name: String) -> bool {
        let mut idle = self.idle_mut();
        if idle.len() >= self.wanted as usize || idle.contains(&name) {
            return false;
        }
        idle.push(name);
        true
    }

    /// Waits until a TAP was taken since the last wait.
    pub async fn wait_taken(&self) {
        self.taken.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_oldest_and_never_holds_more_than_wanted() {
        let pool = TapPool::new(2);
        assert_eq!(pool.missing(), 2);
        assert_eq!(pool.take(), None);
        assert!(pool.add("bgrp0".into()));
        assert!(!pool.add("bgrp0".into()), "no duplicates");
        assert!(pool.add("bgrp1".into()));
        assert!(!pool.add("bgrp2".into()), "full");
        assert_eq!(pool.idle(), ["bgrp0", "bgrp1"]);
        assert_eq!(pool.missing(), 0);
        assert_eq!(pool.take().as_deref(), Some("bgrp0"));
        assert_eq!(pool.missing(), 1);
        assert_eq!(pool.wanted(), 2);
        let none = TapPool::new(0);
        assert!(!none.add("bgrp0".into()));
    }
}
