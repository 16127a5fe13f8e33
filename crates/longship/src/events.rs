//! Event listeners: what a NodeHost tells the application as it happens.

use longship_raft::{Index, ReplicaId, ShardId, Term};

/// Leadership as seen by one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The shard.
    pub shard_id: ShardId,
    /// The replica reporting it.
    pub replica_id: ReplicaId,
    /// The leader (`ReplicaId::NONE` when unknown).
    pub leader_id: ReplicaId,
    /// The term.
    pub term: Term,
}

/// A snapshot or compaction event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The shard.
    pub shard_id: ShardId,
    /// The replica.
    pub replica_id: ReplicaId,
    /// The index concerned.
    pub index: Index,
}

/// Receives NodeHost events. Methods run on worker threads: keep them short
/// and never call back into the NodeHost from them.
pub trait EventListener: Send + Sync {
    /// The known leader of a shard changed.
    fn leader_updated(&self, _info: LeaderInfo) {}
    /// A membership change was applied.
    fn membership_changed(
        &self,
        _shard_id: ShardId,
        _replica_id: ReplicaId,
        _config_change_id: Index,
    ) {
    }
    /// A snapshot was saved locally.
    fn snapshot_created(&self, _info: SnapshotInfo) {}
    /// The state machine was recovered from a snapshot.
    fn snapshot_recovered(&self, _info: SnapshotInfo) {}
    /// A snapshot stream from a leader was received completely.
    fn snapshot_received(&self, _info: SnapshotInfo) {}
    /// Log entries up to `index` were compacted.
    fn log_compacted(&self, _info: SnapshotInfo) {}
    /// A replica started and is ready.
    fn replica_ready(&self, _shard_id: ShardId, _replica_id: ReplicaId) {}
    /// A replica stopped.
    fn replica_unloaded(&self, _shard_id: ShardId, _replica_id: ReplicaId) {}
}
