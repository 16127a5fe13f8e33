//! [`Wal`]: the segmented write-ahead log shared by every shard of a
//! NodeHost.
//!
//! * One directory of segment files `<id>.wal` (20 digits). Each starts
//!   with a header and a checkpoint of every replica's state (log shape,
//!   hard state, snapshot metadata), then holds batches of records; every
//!   record has a CRC32C seeded with the segment id. The byte format is in
//!   docs/formats.md.
//! * [`LogDb::save_raft_state`] encodes its batch in the caller's thread,
//!   then joins a group commit: the first waiting caller becomes the leader,
//!   writes every queued batch and fsyncs once for all of them.
//! * An in-memory index keeps, per replica, its log shape, state, the
//!   location of each record holding its entries (one small struct per
//!   record, never per entry) and a byte-bounded cache of its newest entries.
//! * A segment is deleted once it and every older segment hold no live
//!   entries; the checkpoint at the start of each segment keeps the state
//!   those segments recorded.
//! * At open, segments are replayed. Preallocated space at the end of the
//!   last segment is cut off; a damaged last batch is never treated as
//!   never written: the replicas it may have held data of get a recovery
//!   guard (and their vote back), recorded durably in a repair batch after
//!   the damaged bytes, and the damage is reported
//!   ([`LogDb::damage_found`]). Damage anywhere else is
//!   [`Error::Corruption`]. [`Wal::inspect`] does the same without writing.
//! * After a failed write or fsync the log refuses further writes
//!   ([`Error::Failed`]): what reached the disk is unknown until a reopen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use longship_raft::{Entry, Index, RecoveryGuard, ReplicaId, ShardId, SnapshotMeta, Term};
use parking_lot::{Condvar, Mutex, RwLock};

use super::shape::{Key, Op, Shape};
use super::{Damage, LogDb, LogUpdate, ReplicaState, import_ops};
use crate::error::{Error, Result};
use crate::vfs::{File, FileSystem};

mod commit;
mod format;
mod index;
mod read;
mod replay;

pub use format::{
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, WAL_FORMAT_VERSION,
    parse_segment_file_name, segment_file_name,
};

use commit::NullFile;
use index::IndexState;

/// Largest batch one `save_raft_state` call may write.
pub const BATCH_BYTES_MAX: usize = 1 << 30;

/// Record offsets are `u32`: a segment never grows past this.
pub(super) const SEGMENT_OFFSET_MAX: u64 = u32::MAX as u64;

/// Tuning of a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started once the active one holds this many bytes.
    pub segment_bytes: u64,
    /// Bound on the bytes of cached recent entries (by `Entry::size_bytes`).
    pub max_cache_bytes: u64,
    /// Bound on the bytes one group commit writes (at least one batch).
    pub max_group_bytes: usize,
    /// Segment space is zero-filled this far ahead of the writes (0: never),
    /// so that a small batch overwrites allocated blocks and its fdatasync
    /// need not also commit a new file size.
    pub preallocate_bytes: u64,
}

impl Default for WalOptions {
    /// 64 MiB segments, 64 MiB cache, 32 MiB groups, 4 MiB preallocation.
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes: 64 << 20,
            max_cache_bytes: 64 << 20,
            max_group_bytes: 32 << 20,
            preallocate_bytes: 4 << 20,
        }
    }
}

/// Counters of a [`Wal`], for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// File fsyncs of batch writes (segment creation not included).
    pub syncs: u64,
    /// Group commits written.
    pub groups: u64,
    /// Batches (calls) written.
    pub batches: u64,
    /// Bytes written to segments, headers and checkpoints included.
    pub bytes_written: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Relocations: live entries of the oldest segment copied forward.
    pub relocations: u64,
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    groups: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
    relocations: AtomicU64,
}

/// The active segment, owned by the group commit leader.
pub(super) struct Writer {
    /// Id of the active segment.
    active: u64,
    /// Its handle.
    file: Arc<dyn File>,
    /// Bytes written to it (the offset of the next record).
    len: u64,
    /// Length of the file: `len` plus zero-filled space ahead. Invariant:
    /// `allocated >= len`.
    allocated: u64,
    /// CRC seed of its records.
    seed: u32,
    /// Set by a failed write or fsync; every later write is refused.
    failed: Option<String>,
}

/// One caller's encoded batch: its ops and their records, one record per op.
pub(super) struct Batch {
    ops: Vec<Op>,
    buf: Vec<u8>,
    /// `(offset in buf, length)` of the record of each op.
    spans: Vec<(usize, usize)>,
}

/// A batch waiting in the group commit queue, and its outcome.
pub(super) struct Slot {
    batch: Option<Batch>,
    bytes: usize,
    result: Option<Result<()>>,
}

struct Queue {
    /// Waiting batches, oldest first. Bounded by the number of callers.
    pending: std::collections::VecDeque<Arc<Mutex<Slot>>>,
    /// Whether a caller is writing a group now.
    leader_active: bool,
}

/// The segmented write-ahead log. See the module documentation.
pub struct Wal {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: WalOptions,
    index: RwLock<IndexState>,
    writer: Mutex<Writer>,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    closed: AtomicBool,
    counters: Counters,
    /// What replay at open discarded or did not trust.
    damage: Vec<Damage>,
}

/// What [`Wal::inspect`] found, without changing anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalInspection {
    /// Every replica stored, sorted, with its state as opening the log
    /// would leave it (guards given for damage found now included).
    pub replicas: Vec<(ShardId, ReplicaId, ReplicaState)>,
    /// What opening the log would discard or not trust (as
    /// [`LogDb::damage_found`] would then report it).
    pub damage: Vec<Damage>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.dir).finish()
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`: replays its segments, repairs a
    /// torn tail, reports corruption, and starts a new active segment.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path, options: WalOptions) -> Result<Wal> {
        if options.segment_bytes == 0 || options.max_group_bytes == 0 {
            return Err(Error::InvalidArgument(
                "WalOptions bounds must be > 0".into(),
            ));
        }
        let replayed = replay::replay(&*fs, dir, options.max_cache_bytes, replay::Mode::Repair)?;
        let (index, next_id) = (replayed.index, replayed.next_id);
        let wal = Wal {
            fs: fs.clone(),
            dir: dir.to_path_buf(),
            options,
            index: RwLock::new(index),
            // Placeholder until the first segment is created below.
            writer: Mutex::new(Writer {
                active: 0,
                file: Arc::new(NullFile),
                len: 0,
                allocated: 0,
                seed: 0,
                failed: None,
            }),
            queue: Mutex::new(Queue {
                pending: Default::default(),
                leader_active: false,
            }),
            queue_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            damage: replayed.damage,
        };
        {
            let mut w = wal.writer.lock();
            w.active = next_id - 1;
            wal.roll(&mut w)?;
        }
        wal.delete_dead_segments(wal.writer.lock().active);
        Ok(wal)
    }

    /// Reads the log in `dir` the way [`Wal::open`] would, but never
    /// writes: files are opened read-only, nothing is cut, removed, synced
    /// or created. Returns every replica's state and the damage found (the
    /// same [`Error::Corruption`] as `open` when damage is not at the end
    /// of the log). A missing directory is an I/O error of kind `NotFound`.
    pub fn inspect(fs: &dyn FileSystem, dir: &Path) -> Result<WalInspection> {
        let replayed = replay::replay(fs, dir, 0, replay::Mode::ReadOnly)?;
        let replicas = replayed
            .index
            .replicas
            .iter()
            .map(|(k, r)| (k.0, k.1, replica_state(r)))
            .collect();
        Ok(WalInspection {
            replicas,
            damage: replayed.damage,
        })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let c = &self.counters;
        WalStats {
            syncs: c.syncs.load(Ordering::Relaxed),
            groups: c.groups.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            segments_created: c.segments_created.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            relocations: c.relocations.load(Ordering::Relaxed),
        }
    }

    /// The active segment's id and the offset the next batch goes to.
    pub fn write_position(&self) -> (u64, u64) {
        let w = self.writer.lock();
        (w.active, w.len)
    }

    /// Ids of the segment files in use, oldest first.
    pub fn segment_ids(&self) -> Vec<u64> {
        self.index.read().segments.keys().copied().collect()
    }

    /// Checks the index's internal invariants (for tests).
    pub fn check_invariants(&self) -> Result<()> {
        self.index.read().check()
    }

    fn key_view<T>(&self, key: Key, f: impl FnOnce(Option<&index::ReplicaIndex>) -> T) -> T {
        f(self.index.read().replicas.get(&key))
    }
}

impl LogDb for Wal {
    fn save_raft_state(&self, updates: &[LogUpdate]) -> Result<()> {
        let ops: Vec<Op> = updates
            .iter()
            .filter(|u| !u.is_empty())
            .map(LogUpdate::to_op)
            .collect();
        self.write(ops)
    }

    fn entries(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>> {
        self.read_entries((shard_id, replica_id), low, high, max_bytes)
    }

    fn term(&self, shard_id: ShardId, replica_id: ReplicaId, index: Index) -> Result<Term> {
        self.key_view((shard_id, replica_id), |r| match r {
            Some(r) => r.shape.term(index),
            None => Shape::default().term(index),
        })
    }

    fn first_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index {
        self.key_view((shard_id, replica_id), |r| {
            r.map_or(Index(1), |r| r.shape.first_index())
        })
    }

    fn last_index(&self, shard_id: ShardId, replica_id: ReplicaId) -> Index {
        self.key_view((shard_id, replica_id), |r| {
            r.map_or(Index(0), |r| r.shape.last)
        })
    }

    fn snapshot(&self, shard_id: ShardId, replica_id: ReplicaId) -> SnapshotMeta {
        self.key_view((shard_id, replica_id), |r| {
            r.map(|r| r.snapshot.clone()).unwrap_or_default()
        })
    }

    fn read_state(&self, shard_id: ShardId, replica_id: ReplicaId) -> Option<ReplicaState> {
        self.key_view((shard_id, replica_id), |r| r.map(replica_state))
    }

    fn list_replicas(&self) -> Vec<(ShardId, ReplicaId)> {
        self.index.read().replicas.keys().copied().collect()
    }

    fn remove_entries_to(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        index: Index,
    ) -> Result<()> {
        self.write(vec![Op::Compact {
            key: (shard_id, replica_id),
            index,
        }])
    }

    fn remove_entries_batch(&self, marks: &[(ShardId, ReplicaId, Index)]) -> Result<()> {
        let ops: Vec<Op> = marks
            .iter()
            .map(|&(s, r, index)| Op::Compact { key: (s, r), index })
            .collect();
        self.write(ops)
    }

    fn save_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()> {
        self.write(vec![Op::SaveSnapshot {
            key: (shard_id, replica_id),
            meta: snapshot.clone(),
        }])
    }

    fn remove_node_data(&self, shard_id: ShardId, replica_id: ReplicaId) -> Result<()> {
        self.write(vec![Op::Remove {
            key: (shard_id, replica_id),
        }])
    }

    fn import_snapshot(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        snapshot: &SnapshotMeta,
    ) -> Result<()> {
        self.write(import_ops(shard_id, replica_id, snapshot))
    }

    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Wait for a group in flight to finish.
        drop(self.writer.lock());
        Ok(())
    }

    fn damage_found(&self) -> Vec<Damage> {
        self.damage.clone()
    }

    fn failure(&self) -> Option<String> {
        self.writer.lock().failed.clone()
    }

    fn set_recovery_guard(
        &self,
        shard_id: ShardId,
        replica_id: ReplicaId,
        guard: RecoveryGuard,
    ) -> Result<()> {
        self.write(vec![Op::SetGuard {
            key: (shard_id, replica_id),
            guard,
        }])
    }
}

/// The [`ReplicaState`] of an index entry.
fn replica_state(r: &index::ReplicaIndex) -> ReplicaState {
    ReplicaState {
        hard_state: r.hard_state,
        snapshot: r.snapshot.clone(),
        first_index: r.shape.first_index(),
        last_index: r.shape.last,
        recovery: r.recovery,
    }
}
