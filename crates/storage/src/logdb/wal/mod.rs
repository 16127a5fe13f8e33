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
//! * At open, segments are replayed; a torn tail of the last segment is cut
//!   off, damage anywhere else is reported as [`Error::Corruption`].
//! * After a failed write or fsync the log refuses further writes
//!   ([`Error::Failed`]): what reached the disk is unknown until a reopen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use longship_raft::codec::encoded_entry_size;
use longship_raft::{Entry, Index, ReplicaId, ShardId, SnapshotMeta, Term};
use parking_lot::{Condvar, Mutex, RwLock};

use super::shape::{Key, Op, Shape, check_stateless, stage_batch};
use super::{LogDb, ReplicaState, Update, import_ops};
use crate::error::{Error, Result};
use crate::vfs::{File, FileSystem};

mod format;
mod index;
mod read;
mod replay;

pub use format::{
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC, WAL_FORMAT_VERSION,
    parse_segment_file_name, segment_file_name,
};

use format::{
    ENTRY_PAYLOAD_MAX, FLAG_LAST, KIND_CHECKPOINT, RECORD_SPLIT_BYTES, begin_record,
    encode_checkpoint_replica, encode_op_payload, encode_segment_header, finish_record,
    seal_record, segment_seed,
};
use index::{IndexState, Loc, Segment};

/// Largest batch one `save_raft_state` call may write.
pub const BATCH_BYTES_MAX: usize = 1 << 30;

/// Record offsets are `u32`: a segment never grows past this.
const SEGMENT_OFFSET_MAX: u64 = u32::MAX as u64;

/// Tuning of a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started once the active one holds this many bytes.
    pub segment_bytes: u64,
    /// Bound on the bytes of cached recent entries (by `Entry::size_bytes`).
    pub cache_bytes: u64,
    /// Bound on the bytes one group commit writes (at least one batch).
    pub group_bytes_max: usize,
}

impl Default for WalOptions {
    /// 64 MiB segments, 64 MiB cache, 32 MiB groups.
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes: 64 << 20,
            cache_bytes: 64 << 20,
            group_bytes_max: 32 << 20,
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
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    groups: AtomicU64,
    batches: AtomicU64,
    bytes_written: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
}

/// The active segment, owned by the group commit leader.
struct Writer {
    /// Id of the active segment.
    active: u64,
    /// Its handle.
    file: Arc<dyn File>,
    /// Bytes written to it (the offset of the next record).
    len: u64,
    /// CRC seed of its records.
    seed: u32,
    /// Set by a failed write or fsync; every later write is refused.
    failed: Option<String>,
}

/// One caller's encoded batch: its ops and their records, one record per op.
struct Batch {
    ops: Vec<Op>,
    buf: Vec<u8>,
    /// `(offset in buf, length)` of the record of each op.
    spans: Vec<(usize, usize)>,
}

/// A batch waiting in the group commit queue, and its outcome.
struct Slot {
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
        if options.segment_bytes == 0 || options.group_bytes_max == 0 {
            return Err(Error::InvalidArgument(
                "WalOptions bounds must be > 0".into(),
            ));
        }
        let (index, next_id) = replay::replay(&*fs, dir, options.cache_bytes)?;
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
        };
        {
            let mut w = wal.writer.lock();
            w.active = next_id - 1;
            wal.roll(&mut w)?;
        }
        wal.delete_dead_segments(wal.writer.lock().active);
        Ok(wal)
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
        }
    }

    /// Ids of the segment files in use, oldest first.
    pub fn segment_ids(&self) -> Vec<u64> {
        self.index.read().segments.keys().copied().collect()
    }

    /// Checks the index's internal invariants (for tests).
    pub fn check_invariants(&self) -> Result<()> {
        self.index.read().check()
    }

    /// Encodes ops into a batch (one record per op, update entries split
    /// into records of about [`RECORD_SPLIT_BYTES`]).
    fn encode(ops: Vec<Op>) -> Result<Batch> {
        check_stateless(&ops)?;
        let mut split = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Update {
                    key,
                    snapshot,
                    entries,
                    hard_state,
                } => {
                    let mut chunks = vec![];
                    let mut cur = vec![];
                    let mut cur_bytes = 0;
                    for e in entries {
                        if e.cmd.len() as u64 > ENTRY_PAYLOAD_MAX {
                            return Err(Error::InvalidArgument(format!(
                                "entry payload of {} bytes over the limit",
                                e.cmd.len()
                            )));
                        }
                        let size = encoded_entry_size(&e);
                        if !cur.is_empty() && cur_bytes + size > RECORD_SPLIT_BYTES {
                            chunks.push(std::mem::take(&mut cur));
                            cur_bytes = 0;
                        }
                        cur_bytes += size;
                        cur.push(e);
                    }
                    chunks.push(cur);
                    let mut first = true;
                    for chunk in chunks {
                        split.push(Op::Update {
                            key,
                            snapshot: if first { snapshot.clone() } else { None },
                            entries: chunk,
                            hard_state: if first { hard_state } else { None },
                        });
                        first = false;
                    }
                }
                other => split.push(other),
            }
        }
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(split.len());
        for op in &split {
            let start = begin_record(&mut buf, 0);
            let kind = encode_op_payload(op, &mut buf);
            buf[start + 8] = kind;
            finish_record(&mut buf, start);
            spans.push((start, buf.len() - start));
            if buf.len() > BATCH_BYTES_MAX {
                return Err(Error::InvalidArgument(format!(
                    "batch larger than {BATCH_BYTES_MAX} bytes"
                )));
            }
        }
        Ok(Batch {
            ops: split,
            buf,
            spans,
        })
    }

    /// Writes ops durably through the group commit.
    fn write(&self, ops: Vec<Op>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if ops.is_empty() {
            return Ok(());
        }
        let batch = Self::encode(ops)?;
        let slot = Arc::new(Mutex::new(Slot {
            bytes: batch.buf.len(),
            batch: Some(batch),
            result: None,
        }));
        let mut q = self.queue.lock();
        q.pending.push_back(slot.clone());
        // Bounded: every round either returns, or waits for a leader that
        // finishes a group, or leads one group itself.
        loop {
            if let Some(r) = slot.lock().result.take() {
                return r;
            }
            if q.leader_active {
                self.queue_cv.wait(&mut q);
                continue;
            }
            q.leader_active = true;
            let mut group = Vec::new();
            let mut bytes = 0;
            while let Some(s) = q.pending.front() {
                let b = s.lock().bytes;
                if !group.is_empty() && bytes + b > self.options.group_bytes_max {
                    break;
                }
                bytes += b;
                group.push(q.pending.pop_front().expect("front exists"));
            }
            drop(q);
            self.commit_group(&group);
            q = self.queue.lock();
            q.leader_active = false;
            self.queue_cv.notify_all();
        }
    }

    /// Writes a group of batches with one fsync and applies them to the
    /// index; stores each batch's outcome in its slot.
    fn commit_group(&self, group: &[Arc<Mutex<Slot>>]) {
        let mut batches: Vec<Batch> = group
            .iter()
            .map(|s| s.lock().batch.take().expect("a queued slot has its batch"))
            .collect();
        let mut results: Vec<Option<Result<()>>> = (0..batches.len()).map(|_| None).collect();
        let outcome = self.commit_batches(&mut batches, &mut results);
        for (slot, r) in group.iter().zip(results) {
            let r = match (r, &outcome) {
                (Some(r), _) => r,
                (None, Ok(())) => Ok(()),
                (None, Err(e)) => Err(e.duplicate()),
            };
            slot.lock().result = Some(r);
        }
    }

    /// The body of [`Wal::commit_group`]: batches refused by validation get
    /// their own error in `results`; the others share the returned outcome.
    fn commit_batches(
        &self,
        batches: &mut [Batch],
        results: &mut [Option<Result<()>>],
    ) -> Result<()> {
        let mut w = self.writer.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(msg) = &w.failed {
            return Err(Error::Failed(msg.clone()));
        }
        // Validate in order, each batch against the state the earlier ones leave.
        let mut accepted = Vec::with_capacity(batches.len());
        {
            let idx = self.index.read();
            let mut staged: HashMap<Key, Option<Shape>> = HashMap::new();
            for (i, b) in batches.iter().enumerate() {
                match stage_batch(&b.ops, &mut staged, |k| idx.shape(k)) {
                    Ok(()) => accepted.push(i),
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
        }
        if accepted.is_empty() {
            return Ok(());
        }
        let total: u64 = accepted.iter().map(|&i| batches[i].buf.len() as u64).sum();
        if w.len >= self.options.segment_bytes || w.len + total > SEGMENT_OFFSET_MAX {
            self.roll(&mut w)?;
        }
        // Seal, write and sync.
        let mut offset = w.len;
        let mut bases = Vec::with_capacity(accepted.len());
        for &i in &accepted {
            let b = &mut batches[i];
            let last = b.spans.len() - 1;
            for (j, &(start, len)) in b.spans.iter().enumerate() {
                let flags = if j == last { FLAG_LAST } else { 0 };
                seal_record(&mut b.buf[start..start + len], flags, w.seed);
            }
            if let Err(e) = w.file.write_at(offset, &b.buf) {
                return Err(self.fail(&mut w, e, "write"));
            }
            bases.push(offset);
            offset += b.buf.len() as u64;
        }
        if let Err(e) = w.file.sync() {
            return Err(self.fail(&mut w, e, "fsync"));
        }
        w.len = offset;
        let c = &self.counters;
        c.syncs.fetch_add(1, Ordering::Relaxed);
        c.groups.fetch_add(1, Ordering::Relaxed);
        c.batches
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        c.bytes_written.fetch_add(total, Ordering::Relaxed);
        // Apply.
        {
            let mut idx = self.index.write();
            for (&i, &base) in accepted.iter().zip(&bases) {
                let b = &batches[i];
                for (op, &(start, len)) in b.ops.iter().zip(&b.spans) {
                    let loc = Loc {
                        segment: w.active,
                        offset: (base + start as u64) as u32,
                        len: len as u32,
                    };
                    idx.apply(op, Some(loc), true)
                        .expect("validated against the same state");
                }
            }
            idx.evict();
            debug_assert!(idx.check().is_ok(), "{:?}", idx.check());
        }
        self.delete_dead_segments(w.active);
        Ok(())
    }

    /// Records a write failure: the log refuses writes from now on.
    fn fail(&self, w: &mut Writer, e: std::io::Error, what: &str) -> Error {
        let path = self.dir.join(format::segment_file_name(w.active));
        let err = Error::io_at(e, what, &path);
        tracing::error!(error = %err, "write-ahead log failed; reopen to recover");
        w.failed = Some(err.to_string());
        err
    }

    /// Starts a new active segment: header and checkpoint, fsynced, and the
    /// directory fsynced.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let id = w.active + 1;
        let path = self.dir.join(format::segment_file_name(id));
        let seed = segment_seed(id);
        let mut buf = Vec::new();
        encode_segment_header(id, &mut buf);
        {
            let idx = self.index.read();
            encode_checkpoint(&idx.checkpoint(), seed, &mut buf);
        }
        let created = (|| -> std::io::Result<Arc<dyn File>> {
            let file: Arc<dyn File> = Arc::from(self.fs.create(&path)?);
            file.write_at(0, &buf)?;
            file.sync()?;
            self.fs.sync_dir(&self.dir)?;
            Ok(file)
        })();
        let file = match created {
            Ok(f) => f,
            Err(e) => return Err(self.fail(w, e, "create segment")),
        };
        self.index.write().segments.insert(
            id,
            Segment {
                path,
                file: file.clone(),
                live_runs: 0,
            },
        );
        w.active = id;
        w.file = file;
        w.len = buf.len() as u64;
        w.seed = seed;
        w.failed = None;
        self.counters
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.counters
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the oldest segments nothing needs. Not fsynced: a segment
    /// that comes back after a crash is replayed again, which is harmless.
    fn delete_dead_segments(&self, active: u64) {
        let dead: Vec<Segment> = {
            let mut idx = self.index.write();
            idx.deletable_prefix(active)
                .into_iter()
                .filter_map(|id| idx.segments.remove(&id))
                .collect()
        };
        for s in dead {
            match self.fs.remove_file(&s.path) {
                Ok(()) => {
                    self.counters
                        .segments_deleted
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(path = %s.path.display(), error = %e, "cannot delete segment")
                }
            }
        }
    }

    fn key_view<T>(&self, key: Key, f: impl FnOnce(Option<&index::ReplicaIndex>) -> T) -> T {
        f(self.index.read().replicas.get(&key))
    }
}

/// Appends the checkpoint batch (records of at most about
/// [`RECORD_SPLIT_BYTES`], the last one flagged) for a new segment.
fn encode_checkpoint(replicas: &[format::CheckpointReplica], seed: u32, out: &mut Vec<u8>) {
    let mut chunks: Vec<(usize, Vec<u8>)> = vec![(0, Vec::new())];
    for c in replicas {
        let (n, body) = chunks.last_mut().expect("never empty");
        encode_checkpoint_replica(c, body);
        *n += 1;
        if body.len() >= RECORD_SPLIT_BYTES {
            chunks.push((0, Vec::new()));
        }
    }
    if chunks.len() > 1 && chunks.last().is_some_and(|(n, _)| *n == 0) {
        chunks.pop();
    }
    let last = chunks.len() - 1;
    for (i, (n, body)) in chunks.into_iter().enumerate() {
        let start = begin_record(out, KIND_CHECKPOINT);
        longship_raft::codec::put_uvarint(out, n as u64);
        out.extend_from_slice(&body);
        finish_record(out, start);
        let flags = if i == last { FLAG_LAST } else { 0 };
        seal_record(&mut out[start..], flags, seed);
    }
}

/// A file that refuses everything: the writer's handle before the first
/// segment exists.
struct NullFile;

impl File for NullFile {
    fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("no active segment"))
    }
    fn write_at(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("no active segment"))
    }
    fn append(&self, _: &[u8]) -> std::io::Result<u64> {
        Err(std::io::Error::other("no active segment"))
    }
    fn sync(&self) -> std::io::Result<()> {
        Err(std::io::Error::other("no active segment"))
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(0)
    }
    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("no active segment"))
    }
    fn preallocate(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogDb for Wal {
    fn save_raft_state(&self, updates: &[Update]) -> Result<()> {
        let ops: Vec<Op> = updates
            .iter()
            .filter(|u| !u.is_empty())
            .map(Update::to_op)
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
        self.key_view((shard_id, replica_id), |r| {
            r.map(|r| ReplicaState {
                hard_state: r.hard_state,
                snapshot: r.snapshot.clone(),
                first_index: r.shape.first_index(),
                last_index: r.shape.last,
            })
        })
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
}
