//! One log storage shared by several NodeHosts of one process.
//!
//! NodeHosts that run in one process on one disk (a local test cluster, a
//! benchmark) each fsync that same disk; sharing one [`LogDb`] lets one
//! group commit make all their writes durable with one fsync, which is what
//! the separate fsyncs would have achieved, at a third of the cost. Each
//! NodeHost gets a [`SharedLogDb`] view: replicas are keyed by (shard,
//! replica) already, so the hosts' data never mixes; a view lists only the
//! replicas its owner hosts, and the storage closes when the last view
//! closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use longship_raft::{Entry, Index, RecoveryGuard, ReplicaId, ShardId, SnapshotMeta, Term};

use super::{Damage, LogDb, LogUpdate, ReplicaState};
use crate::error::Result;

/// Which replicas a view lists as its own.
type Owns = dyn Fn(ShardId, ReplicaId) -> bool + Send + Sync;

/// A NodeHost's view of a log storage shared with other NodeHosts.
pub struct SharedLogDb {
    inner: Arc<dyn LogDb>,
    owns: Box<Owns>,
    open_views: Arc<AtomicUsize>,
    closed: std::sync::atomic::AtomicBool,
}

impl SharedLogDb {
    /// Views of `inner`, one per owner predicate (a NodeHost's replicas:
    /// e.g. `|_, r| r == ReplicaId(1)` where each host has one replica id
    /// in every shard).
    pub fn views(inner: Arc<dyn LogDb>, owners: Vec<Box<Owns>>) -> Vec<Arc<SharedLogDb>> {
        let open_views = Arc::new(AtomicUsize::new(owners.len()));
        owners
            .into_iter()
            .map(|owns| {
                Arc::new(SharedLogDb {
                    inner: inner.clone(),
                    owns,
                    open_views: open_views.clone(),
                    closed: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .collect()
    }
}

impl LogDb for SharedLogDb {
    fn save_raft_state(&self, updates: &[LogUpdate]) -> Result<()> {
        self.inner.save_raft_state(updates)
    }

    fn entries(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>> {
        self.inner
            .entries(shard_id, replica_id, low, high, max_bytes)
    }

    fn term(&self, shard_id: ShardId, replica_id: ReplicaId, index: Index) -> Result<Term> {
        self.inner.term(shard_id, replica_id, index)
    }

    fn first_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index {
        self.inner.first_index(shard_id, replica_id)
    }

    fn last_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index {
        self.inner.last_index(shard_id, replica_id)
    }

    fn snapshot(&self, shard_id: ShardId, replica_id: ReplicaId) -> SnapshotMeta {
        self.inner.snapshot(shard_id, replica_id)
    }

    fn read_state(&self, shard_id: ShardId, replica_id: ReplicaId) -> Option<ReplicaState> {
        self.inner.read_state(shard_id, replica_id)
    }

    /// Only the owner's replicas.
    fn list_replicas(&self) -> Vec<(ShardId, ReplicaId)> {
        self.inner
            .list_replicas()
            .into_iter()
            .filter(|&(s, r)| (self.owns)(s, r))
            .collect()
    }

    fn remove_entries_to(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        index: Index,
    ) -> Result<()> {
        self.inner.remove_entries_to(shard_id, replica_id, index)
    }

    fn remove_entries_batch(&self, marks: &[(ShardId, ReplicaId, Index)]) -> Result<()> {
        self.inner.remove_entries_batch(marks)
    }

    fn save_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()> {
        self.inner.save_snapshot(shard_id, replica_id, snapshot)
    }

    fn remove_node_data(&self, shard_id: ShardId, replica_id: ReplicaId) -> Result<()> {
        self.inner.remove_node_data(shard_id, replica_id)
    }

    fn import_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()> {
        self.inner.import_snapshot(shard_id, replica_id, snapshot)
    }

    /// The damage of the shared storage, limited to the owner's replicas
    /// (damage naming none of them is left out, unless its replicas are
    /// unknown).
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    fn damage_found(&self) -> Vec<Damage> {
        self.inner
            .damage_found()
            .into_iter()
            .filter_map(|mut d| {
                d.replicas.retain(|r| (self.owns)(r.shard_id, r.replica_id));
                (d.replicas_unknown || !d.replicas.is_empty()).then_some(d)
            })
            .collect()
    }

    fn set_recovery_guard(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        guard: RecoveryGuard,
    ) -> Result<()> {
        self.inner.set_recovery_guard(shard_id, replica_id, guard)
    }

    /// Closes the shared storage when the last view closes.
    fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if self.open_views.fetch_sub(1, Ordering::AcqRel) == 1 {
            return self.inner.close();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logdb::MemLogDb;
    use longship_raft::HardState;

    fn state(shard: u64, replica: u64) -> LogUpdate {
        LogUpdate {
            shard_id: ShardId(shard),
            replica_id: ReplicaId(replica),
            hard_state: Some(HardState {
                term: Term(1),
                ..HardState::default()
            }),
            ..LogUpdate::default()
        }
    }

    #[test]
    fn views_share_writes_list_their_own_replicas_and_close_last() {
        let views = SharedLogDb::views(
            Arc::new(MemLogDb::new()),
            (1..=2u64)
                .map(|i| Box::new(move |_: ShardId, r: ReplicaId| r.0 == i) as Box<Owns>)
                .collect(),
        );
        // One write carries both hosts' replicas of shard 7.
        views[0]
            .save_raft_state(&[state(7, 1), state(7, 2)])
            .unwrap();
        assert_eq!(views[0].list_replicas(), vec![(ShardId(7), ReplicaId(1))]);
        assert_eq!(views[1].list_replicas(), vec![(ShardId(7), ReplicaId(2))]);
        assert!(views[1].read_state(ShardId(7), ReplicaId(2)).is_some());
        // The first close (even twice) leaves the storage open for the other.
        views[0].close().unwrap();
        views[0].close().unwrap();
        views[1].save_raft_state(&[state(8, 2)]).unwrap();
        views[1].close().unwrap();
        assert!(views[1].save_raft_state(&[state(9, 2)]).is_err());
    }
}
