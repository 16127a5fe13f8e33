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
    /// Where the next bounded take starts (see [`ReadySet::take_up_to`]).
    cursor: Mutex<ShardId>,
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

    /// Whether no shard is ready.
    pub(crate) fn is_empty(&self) -> bool {
        self.set.lock().is_empty()
    }

    pub(crate) fn take(&self) -> BTreeSet<ShardId> {
        std::mem::take(&mut *self.set.lock())
    }

    /// Takes at most `max` ready shards, starting after the last shard the
    /// previous bounded take returned and wrapping around, so that shards
    /// marked again and again (every tick) cannot starve the others. The
    /// rest stay ready for the next call.
    pub(crate) fn take_up_to(&self, max: usize) -> Vec<ShardId> {
        let mut set = self.set.lock();
        if set.len() <= max {
            return std::mem::take(&mut *set).into_iter().collect();
        }
        let mut cursor = self.cursor.lock();
        let start = *cursor;
        let taken: Vec<ShardId> = set
            .range((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded))
            .chain(set.range(..=start))
            .take(max)
            .copied()
            .collect();
        for s in &taken {
            set.remove(s);
        }
        if let Some(&last) = taken.last() {
            *cursor = last;
        }
        taken
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[ShardId]) -> Vec<u64> {
        v.iter().map(|s| s.0).collect()
    }

    #[test]
    fn bounded_takes_go_round_and_leave_the_rest_ready() {
        let r = ReadySet::default();
        r.mark_all((1..=5).map(ShardId));
        assert_eq!(ids(&r.take_up_to(2)), [1, 2]);
        // Shards 1 and 2 are marked again at once (a tick): 3 and 4 still
        // come first, then 5 and, round the end, 1.
        r.mark_all([ShardId(1), ShardId(2)]);
        assert_eq!(ids(&r.take_up_to(2)), [3, 4]);
        assert_eq!(ids(&r.take_up_to(2)), [5, 1]);
        assert_eq!(ids(&r.take_up_to(2)), [2]);
        assert!(r.take_up_to(2).is_empty());
        // At or under the bound, everything at once.
        r.mark_all((1..=3).map(ShardId));
        assert_eq!(ids(&r.take_up_to(3)), [1, 2, 3]);
    }
}
