//! [`MemLogDb`]: log storage in memory, for tests and benches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use longship_raft::{
    Entry, HardState, Index, RecoveryGuard, ReplicaId, ShardId, SnapshotMeta, Term,
};
use parking_lot::RwLock;

use super::shape::{Key, Op, Shape, check_stateless, stage_batch};
use super::{LogDb, LogUpdate, ReplicaState, import_ops, push_limited};
use crate::error::{Error, Result};

/// One replica in memory.
#[derive(Clone, Debug, Default)]
struct MemReplica {
    shape: Shape,
    hard_state: HardState,
    snapshot: SnapshotMeta,
    recovery: Option<RecoveryGuard>,
    /// Invariant: exactly the entries `(shape.marker, shape.last]`, in order.
    entries: VecDeque<Entry>,
}

impl MemReplica {
    /// Drops entries the shape no longer covers.
    fn trim(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.index <= self.shape.marker)
        {
            self.entries.pop_front();
        }
        while self
            .entries
            .back()
            .is_some_and(|e| e.index > self.shape.last)
        {
            self.entries.pop_back();
        }
        debug_assert_eq!(
            self.entries.len() as u64,
            self.shape.last.0 - self.shape.marker.0
        );
    }
}

/// Log storage in memory: same semantics as the write-ahead log, nothing
/// durable. A crash is simulated by dropping it; use the
/// [`Wal`](super::Wal) over a [`FaultyFs`](crate::vfs::FaultyFs) to test
/// crashes.
#[derive(Debug, Default)]
pub struct MemLogDb {
    replicas: RwLock<BTreeMap<Key, MemReplica>>,
    closed: AtomicBool,
}

impl MemLogDb {
    /// An empty store.
    pub fn new() -> MemLogDb {
        MemLogDb::default()
    }

    fn write(&self, ops: &[Op]) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        check_stateless(ops)?;
        let mut replicas = self.replicas.write();
        stage_batch(ops, &mut HashMap::new(), |k| {
            replicas.get(k).map(|r| r.shape.clone())
        })?;
        for op in ops {
            let key = op.key();
            match op {
                Op::Update {
                    snapshot,
                    entries,
                    hard_state,
                    clear_recovery,
                    ..
                } => {
                    let r = replicas.entry(key).or_default();
                    if let Some(s) = snapshot
                        && r.shape.install(s.index, s.term) != super::shape::Installed::Stale
                    {
                        r.snapshot = s.clone();
                        r.trim();
                    }
                    if let Some(first) = entries.first() {
                        let res = r
                            .shape
                            .append(first.index, entries.len(), |i| entries[i].term)
                            .expect("validated");
                        if let Some((skip, from)) = res {
                            while r.entries.back().is_some_and(|e| e.index >= from) {
                                r.entries.pop_back();
                            }
                            r.entries.extend(entries[skip..].iter().cloned());
                        }
                    }
                    if let Some(hs) = hard_state {
                        r.hard_state = *hs;
                    }
                    if *clear_recovery {
                        r.recovery = None;
                    }
                    debug_assert!(r.shape.check());
                }
                Op::SetGuard { guard, .. } => {
                    let r = replicas.entry(key).or_default();
                    r.recovery = Some(r.recovery.map_or(*guard, |g| g.merge(*guard)));
                }
                Op::SaveSnapshot { meta, .. } => {
                    let r = replicas.entry(key).or_default();
                    if r.shape.record_snapshot(meta.index) {
                        r.snapshot = meta.clone();
                    }
                }
                Op::Compact { index, .. } => {
                    if let Some(r) = replicas.get_mut(&key)
                        && r.shape.compact(*index)
                    {
                        r.trim();
                    }
                }
                Op::Remove { .. } => {
                    replicas.remove(&key);
                }
            }
        }
        Ok(())
    }
}

impl LogDb for MemLogDb {
    fn save_raft_state(&self, updates: &[LogUpdate]) -> Result<()> {
        let ops: Vec<Op> = updates
            .iter()
            .filter(|u| !u.is_empty())
            .map(LogUpdate::to_op)
            .collect();
        self.write(&ops)
    }

    fn entries(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>> {
        let replicas = self.replicas.read();
        let empty = MemReplica::default();
        let r = replicas.get(&(shard_id, replica_id)).unwrap_or(&empty);
        if low <= r.shape.marker {
            return Err(Error::Compacted);
        }
        if high > r.shape.last.next() {
            return Err(Error::Unavailable);
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let start = (low.0 - r.shape.marker.0 - 1) as usize;
        let end = (high.0 - r.shape.marker.0 - 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        push_limited(r.entries.range(start..end), max_bytes, &mut out, &mut bytes);
        Ok(out)
    }

    fn term(&self, shard_id: ShardId, replica_id: ReplicaId, index: Index) -> Result<Term> {
        match self.replicas.read().get(&(shard_id, replica_id)) {
            Some(r) => r.shape.term(index),
            None => Shape::default().term(index),
        }
    }

    fn first_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index {
        self.replicas
            .read()
            .get(&(shard_id, replica_id))
            .map_or(Index(1), |r| r.shape.first_index())
    }

    fn last_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index {
        self.replicas
            .read()
            .get(&(shard_id, replica_id))
            .map_or(Index(0), |r| r.shape.last)
    }

    fn snapshot(&self, shard_id: ShardId, replica_id: ReplicaId) -> SnapshotMeta {
        self.replicas
            .read()
            .get(&(shard_id, replica_id))
            .map(|r| r.snapshot.clone())
            .unwrap_or_default()
    }

    fn read_state(&self, shard_id: ShardId, replica_id: ReplicaId) -> Option<ReplicaState> {
        self.replicas
            .read()
            .get(&(shard_id, replica_id))
            .map(|r| ReplicaState {
                hard_state: r.hard_state,
                snapshot: r.snapshot.clone(),
                first_index: r.shape.first_index(),
                last_index: r.shape.last,
                recovery: r.recovery,
            })
    }

    fn list_replicas(&self) -> Vec<(ShardId, ReplicaId)> {
        self.replicas.read().keys().copied().collect()
    }

    fn remove_entries_to(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        index: Index,
    ) -> Result<()> {
        self.write(&[Op::Compact {
            key: (shard_id, replica_id),
            index,
        }])
    }

    fn remove_entries_batch(&self, marks: &[(ShardId, ReplicaId, Index)]) -> Result<()> {
        let ops: Vec<Op> = marks
            .iter()
            .map(|&(s, r, index)| Op::Compact { key: (s, r), index })
            .collect();
        self.write(&ops)
    }

    fn save_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()> {
        self.write(&[Op::SaveSnapshot {
            key: (shard_id, replica_id),
            meta: snapshot.clone(),
        }])
    }

    fn remove_node_data(&self, shard_id: ShardId, replica_id: ReplicaId) -> Result<()> {
        self.write(&[Op::Remove {
            key: (shard_id, replica_id),
        }])
    }

    fn import_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()> {
        self.write(&import_ops(shard_id, replica_id, snapshot))
    }

    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn set_recovery_guard(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        guard: RecoveryGuard,
    ) -> Result<()> {
        self.write(&[Op::SetGuard {
            key: (shard_id, replica_id),
            guard,
        }])
    }
}
