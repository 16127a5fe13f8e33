//! Event listeners: what a NodeHost tells the application as it happens.

use longship_raft::{Index, RecoveryGuard, ReplicaId, ShardId, Term};
use longship_storage::logdb::Damage;

/// A change of leadership as seen by one replica ([`EventListener::leader_updated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderEvent {
    /// The shard.
    pub shard_id: ShardId,
    /// The replica reporting it.
    pub replica_id: ReplicaId,
    /// The leader (`ReplicaId::NONE` when unknown).
    pub leader_id: ReplicaId,
    /// The term.
    pub term: Term,
}

/// A snapshot or log compaction of one replica (the `snapshot_*` and
/// `log_compacted` methods of [`EventListener`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotEvent {
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
    fn leader_updated(&self, _info: LeaderEvent) {}
    /// A membership change was applied.
    fn membership_changed(
        &self,
        _shard_id: ShardId,
        _replica_id: ReplicaId,
        _config_change_id: Index,
    ) {
    }
    /// A snapshot was saved locally.
    fn snapshot_created(&self, _info: SnapshotEvent) {}
    /// The state machine was recovered from a snapshot.
    fn snapshot_recovered(&self, _info: SnapshotEvent) {}
    /// A snapshot stream from a leader was received completely.
    fn snapshot_received(&self, _info: SnapshotEvent) {}
    /// Log entries up to `index` were compacted.
    fn log_compacted(&self, _info: SnapshotEvent) {}
    /// A replica started and is ready.
    fn replica_ready(&self, _shard_id: ShardId, _replica_id: ReplicaId) {}
    /// A replica stopped.
    fn replica_unloaded(&self, _shard_id: ShardId, _replica_id: ReplicaId) {}
    /// A replica failed and stopped working (`why`: its state machine
    /// returned an error or panicked, its log could not be read or
    /// written, its protocol work panicked); the NodeHost's other replicas
    /// go on. Its requests end with an error; restart it (or the host) once
    /// the cause is fixed.
    fn replica_failed(&self, _shard_id: ShardId, _replica_id: ReplicaId, _why: &str) {}
    /// An outbound connection to the NodeHost at `address` was made
    /// (`snapshot`: one that carries a snapshot stream; the TCP transport
    /// only, the in-memory one has no connections).
    fn connection_established(&self, _address: &str, _snapshot: bool) {}
    /// An outbound connection to the NodeHost at `address` could not be
    /// made (`snapshot` as above); messages will be retried with backoff.
    fn connection_failed(&self, _address: &str, _snapshot: bool) {}
    /// A leader started streaming a snapshot to a follower.
    fn snapshot_send_started(&self, _info: SnapshotSendEvent) {}
    /// A snapshot stream reached the follower whole (it verified it).
    fn snapshot_sent(&self, _info: SnapshotSendEvent) {}
    /// A snapshot stream was cut short (follower unreachable, stream
    /// refused, replica stopping); the leader sends one again later.
    fn snapshot_send_aborted(&self, _info: SnapshotSendEvent) {}
    /// Local snapshots older than the newest ones kept were removed, up to
    /// and including `index`.
    fn snapshot_compacted(&self, _info: SnapshotEvent) {}
    /// The NodeHost is closing ([`NodeHost::close`](crate::NodeHost::close)
    /// started): its replicas are about to be unloaded.
    fn node_host_shutting_down(&self) {}
    /// Opening the log storage found damaged bytes it had to discard or
    /// could not trust (a damaged newest batch: possibly acknowledged
    /// data); the replicas named get a recovery guard (docs/recovery.md).
    /// Raised once per damaged region when the NodeHost starts.
    fn storage_damage_found(&self, _damage: &Damage) {}
    /// A replica starting found one of its local snapshots damaged (a
    /// checksum failed, a file is missing; `info.index` is that snapshot's,
    /// `why` says what was wrong). It started from an older valid snapshot
    /// and the log instead (docs/recovery.md); the damaged directory is
    /// left for inspection and replaced by a later snapshot at its index.
    fn snapshot_damaged(&self, _info: SnapshotEvent, _why: &str) {}
    /// A replica starts under a recovery guard: its storage lost data it
    /// may have acknowledged, so it neither votes nor campaigns until a
    /// leader has brought its log past that point (docs/recovery.md).
    fn replica_recovering(
        &self,
        _shard_id: ShardId,
        _replica_id: ReplicaId,
        _guard: RecoveryGuard,
    ) {
    }
}

/// A snapshot streamed from a leader to a follower (the `snapshot_send*`
/// methods of [`EventListener`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSendEvent {
    /// The shard.
    pub shard_id: ShardId,
    /// The sending replica (the leader).
    pub replica_id: ReplicaId,
    /// The receiving replica.
    pub to: ReplicaId,
    /// Index of the snapshot.
    pub index: Index,
}
