//! Log storage: the [`LogDb`] trait used by the engine, an in-memory
//! implementation ([`MemLogDb`]) and the real one, a segmented write-ahead
//! log shared by every shard of a NodeHost ([`Wal`]).
//!
//! Semantics shared by every implementation:
//! * [`LogDb::save_raft_state`] is all or nothing and durable on return.
//!   Within one [`LogUpdate`], the snapshot is installed first, then the
//!   entries appended, then the hard state set.
//! * Entries appended at an index that already exists replace the log from
//!   that index on (Raft §5.3); entries at or below the first index minus
//!   one (compacted or covered by a snapshot) are skipped; an append that
//!   would leave a gap is refused with [`Error::InvalidArgument`].
//! * A snapshot in a `LogUpdate` (received from a leader) drops entries up to
//!   its index; later entries stay only if the log holds the snapshot's
//!   index with the snapshot's term (Raft §7). A snapshot not newer than
//!   the recorded one is ignored.
//! * A replica nothing was stored for reads as an empty log: first index 1,
//!   last index 0, `term(0) == 0`.
//! * Protocol-aware recovery: when opening finds that the newest bytes of
//!   the log are damaged, the replicas they may have held data of are put
//!   under a [`RecoveryGuard`] ([`ReplicaState::recovery`]) and the damage
//!   is reported by [`LogDb::damage_found`]. A guard is durable until an
//!   update with [`LogUpdate::clear_recovery`] removes it.

use std::sync::Arc;

use longship_raft::{
    Entry, HardState, Index, LogError, LogReader, RecoveryGuard, ReplicaId, ShardId, SnapshotMeta,
    Term,
};

use crate::error::Result;

mod damage;
mod mem;
pub(crate) mod shape;
mod shared;
pub mod wal;

pub use damage::{Damage, ReplicaDamage};
pub use mem::MemLogDb;
pub use shared::SharedLogDb;
pub use wal::{Wal, WalInspection, WalOptions};

use shape::Op;

/// What one replica asks log storage to persist after a step of its core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogUpdate {
    /// The shard.
    pub shard_id: ShardId,
    /// The replica.
    pub replica_id: ReplicaId,
    /// Entries to append (contiguous, ascending), replacing any stored from
    /// their first index on.
    pub entries: Vec<Entry>,
    /// The hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from a leader, to install.
    pub snapshot: Option<SnapshotMeta>,
    /// Forget the replica's recovery guard, durably with the rest of this
    /// update (set when the core lifted it: `Update::recovery_cleared`).
    pub clear_recovery: bool,
}

impl LogUpdate {
    /// The persistent part of a core update.
    pub fn from_raft(u: &longship_raft::Update) -> LogUpdate {
        LogUpdate {
            shard_id: u.shard_id,
            replica_id: u.replica_id,
            entries: u.entries.clone(),
            hard_state: u.hard_state,
            snapshot: u.snapshot.clone(),
            clear_recovery: u.recovery_cleared,
        }
    }

    /// Whether there is nothing to persist.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && !self.clear_recovery
    }

    pub(crate) fn to_op(&self) -> Op {
        Op::Update {
            key: (self.shard_id, self.replica_id),
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            hard_state: self.hard_state,
            clear_recovery: self.clear_recovery,
        }
    }
}

/// Everything stored about one replica except its entries: what a restart
/// needs to bring the replica back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaState {
    /// The last hard state saved.
    pub hard_state: HardState,
    /// The newest snapshot recorded (empty if none).
    pub snapshot: SnapshotMeta,
    /// Index of the first available entry.
    pub first_index: Index,
    /// Index of the last entry (`first_index - 1` when there is none).
    pub last_index: Index,
    /// The recovery guard the replica must run under: set when damage at
    /// open may have cost it acknowledged entries or hard state (hand it to
    /// the core with `Raft::set_recovery_guard`); kept, across restarts,
    /// until an update with [`LogUpdate::clear_recovery`] removes it.
    pub recovery: Option<RecoveryGuard>,
}

/// The log storage of a NodeHost: the entries, hard state and snapshot
/// metadata of every replica it hosts.
///
/// Object safe; shared between workers as `Arc<dyn LogDb>`. Reads of one
/// replica may run concurrently with writes of others.
pub trait LogDb: Send + Sync {
    /// Persists a batch of updates of many replicas with one durable write:
    /// when it returns `Ok`, all of it survives a crash; when it returns an
    /// error, none of it is visible (and, after a crash, the batch is either
    /// entirely there or entirely absent). Updates with nothing to persist
    /// are skipped.
    fn save_raft_state(&self, updates: &[LogUpdate]) -> Result<()>;

    /// Entries in `[low, high)`, stopping before `max_bytes` (by
    /// [`Entry::size_bytes`]) would be exceeded but returning at least one
    /// entry when the range is not empty. [`Error::Compacted`](crate::Error)
    /// if `low` is below the first index, `Unavailable` if `high` is beyond
    /// the last index plus one.
    fn entries(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>>;

    /// Term of the entry at `index`, valid from the first index minus one
    /// to the last index.
    fn term(&self, shard_id: ShardId, replica_id: ReplicaId, index: Index) -> Result<Term>;

    /// Index of the first available entry (1 for an unknown replica).
    fn first_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index;

    /// Index of the last entry (first index minus one when there is none).
    fn last_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index;

    /// The newest snapshot metadata recorded (empty if none).
    fn snapshot(&self, shard_id: ShardId, replica_id: ReplicaId) -> SnapshotMeta;

    /// Everything stored about a replica but its entries; `None` if nothing
    /// is stored for it.
    fn read_state(&self, shard_id: ShardId, replica_id: ReplicaId) -> Option<ReplicaState>;

    /// Every replica something is stored for, sorted.
    fn list_replicas(&self) -> Vec<(ShardId, ReplicaId)>;

    /// Makes entries up to and including `index` (at most the last index)
    /// unavailable, keeping the term of `index`. Durable on return; the
    /// space is reclaimed when nothing else needs it.
    fn remove_entries_to(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        index: Index,
    ) -> Result<()>;

    /// [`LogDb::remove_entries_to`] for many replicas with one durable write.
    fn remove_entries_batch(&self, marks: &[(ShardId, ReplicaId, Index)]) -> Result<()> {
        for &(s, r, i) in marks {
            self.remove_entries_to(s, r, i)?;
        }
        Ok(())
    }

    /// Records the metadata of a snapshot taken locally; entries are not
    /// touched (compact them with [`LogDb::remove_entries_to`]). Ignored if
    /// not newer than the recorded snapshot. Durable on return.
    fn save_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()>;

    /// Removes everything stored for a replica. Durable on return.
    fn remove_node_data(&self, shard_id: ShardId, replica_id: ReplicaId) -> Result<()>;

    /// Replaces a replica's whole history by `snapshot` (offline repair,
    /// `import_snapshot`): entries and state are dropped, the snapshot is
    /// recorded and the hard state becomes `{term: snapshot.term, vote:
    /// none, commit: snapshot.index}`. Durable on return.
    fn import_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()>;

    /// Stops accepting writes. Everything acknowledged is already durable.
    fn close(&self) -> Result<()>;

    /// What replay at open discarded or could not trust, with the replicas
    /// affected (each of which got a recovery guard). Empty when the log
    /// was whole, and for storage that is not replayed.
    fn damage_found(&self) -> Vec<Damage> {
        Vec::new()
    }

    /// Why the log storage refuses all work until it is reopened, if it
    /// does: an earlier write or fsync failed ([`Error::Failed`](crate::Error::Failed)), so what
    /// reached the disk is unknown. `None` while it works (and for storage
    /// that never fails so).
    fn failure(&self) -> Option<String> {
        None
    }

    /// Puts a replica under `guard`, merged with the guard it already has
    /// ([`RecoveryGuard::merge`]); creates the replica's state if nothing
    /// is stored for it. Durable on return; kept until an update with
    /// [`LogUpdate::clear_recovery`] removes it. Log storage sets guards
    /// itself when it finds damage; this is for tools and tests.
    fn set_recovery_guard(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        guard: RecoveryGuard,
    ) -> Result<()>;
}

/// Appends entries from `iter` to `out` while the running total `bytes` (by
/// [`Entry::size_bytes`]) stays within `max_bytes`, but always at least one
/// entry in `out`. Returns false once the limit stopped it.
pub(crate) fn push_limited<'a>(
    iter: impl Iterator<Item = &'a Entry>,
    max_bytes: u64,
    out: &mut Vec<Entry>,
    bytes: &mut u64,
) -> bool {
    for e in iter {
        let size = e.size_bytes();
        if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
            return false;
        }
        *bytes = bytes.saturating_add(size);
        out.push(e.clone());
    }
    true
}

/// The ops of [`LogDb::import_snapshot`].
pub(crate) fn import_ops(
    shard_id: ShardId,
    replica_id: ReplicaId,
    snapshot: &SnapshotMeta,
) -> Vec<Op> {
    let key = (shard_id, replica_id);
    vec![
        Op::Remove { key },
        Op::Update {
            key,
            snapshot: Some(snapshot.clone()),
            entries: Vec::new(),
            hard_state: Some(HardState {
                term: snapshot.term,
                vote: ReplicaId::NONE,
                commit: snapshot.index,
            }),
            clear_recovery: false,
        },
    ]
}

/// The durable log of one replica as the core reads it: a
/// [`LogReader`] over any [`LogDb`].
#[derive(Clone)]
pub struct ReplicaLog {
    db: Arc<dyn LogDb>,
    shard_id: ShardId,
    replica_id: ReplicaId,
}

impl ReplicaLog {
    /// The log of `(shard_id, replica_id)` in `db`.
    pub fn new(db: Arc<dyn LogDb>, shard_id: ShardId, replica_id: ReplicaId) -> ReplicaLog {
        ReplicaLog {
            db,
            shard_id,
            replica_id,
        }
    }
}

impl std::fmt::Debug for ReplicaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaLog")
            .field("shard_id", &self.shard_id)
            .field("replica_id", &self.replica_id)
            .finish()
    }
}

impl LogReader for ReplicaLog {
    fn first_index(&self) -> Index {
        self.db.first_index(self.shard_id, self.replica_id)
    }

    fn last_index(&self) -> Index {
        self.db.last_index(self.shard_id, self.replica_id)
    }

    fn term(&self, index: Index) -> Result<Term, LogError> {
        Ok(self.db.term(self.shard_id, self.replica_id, index)?)
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        Ok(self
            .db
            .entries(self.shard_id, self.replica_id, low, high, max_bytes)?)
    }

    fn snapshot(&self) -> SnapshotMeta {
        self.db.snapshot(self.shard_id, self.replica_id)
    }
}
