//! Ready sets: which replicas a worker should look at next.
//!
//! Producers mark a shard ready (deduplicated); the worker takes the whole
//! set at once and handles every replica in it, so one wake-up serves many
//! requests. In threaded mode a condvar wakes the worker; the simulator
//! calls the worker's `run_once` directly and never waits.

use std::collections::BTreeSet;
use std::time::Duration;

use longship_raft::ShardId;
use parking_lot::{Condvar, Mutex};

/// A deduplicated set of ready shards with a wake-up.
#[derive(Default)]
pub(crate) struct ReadySet {
    set: Mutex<BTreeSet<ShardId>>,
    cv: Condvar,
}

impl ReadySet {
    pub(crate) fn mark(&self, shard: ShardId) {
        let newly = self.set.lock().insert(shard);
        if newly {
            self.cv.notify_one();
        }
    }

    /// Marks many shards with at most one wake-up (the ticker: a wake-up
    /// per shard would hand the worker a set of one shard at a time).
    pub(crate) fn mark_all(&self, shards: impl IntoIterator<Item = ShardId>) {
        let mut set = self.set.lock();
        let before = set.len();
        set.extend(shards);
        let newly = set.len() > before;
        drop(set);
        if newly {
            self.cv.notify_one();
        }
    }

    /// Marks many shards without waking the worker; returns whether any
    /// was new. The caller then runs the worker's cycle itself or calls
    /// [`wake_one`](Self::wake_one).
    pub(crate) fn mark_all_quiet(&self, shards: impl IntoIterator<Item = ShardId>) -> bool {
        let mut set = self.set.lock();
        let before = set.len();
        set.extend(shards);
        set.len() > before
    }

    /// Wakes the worker if it waits.
    pub(crate) fn wake_one(&self) {
        self.cv.notify_one();
    }

    pub(crate) fn take(&self) -> BTreeSet<ShardId> {
        std::mem::take(&mut *self.set.lock())
    }

    /// Waits until something is ready or `timeout` passes.
    pub(crate) fn wait(&self, timeout: Duration) {
        let mut s = self.set.lock();
        if s.is_empty() {
            self.cv.wait_for(&mut s, timeout);
        }
    }

    /// Wakes a waiting worker (shutdown).
    pub(crate) fn wake(&self) {
        self.cv.notify_all();
    }
}
