//! The write path of the [`Wal`]: encoding a batch in the caller's
//! thread, group commit (one caller leads and writes every queued batch
//! with one fsync), segment rollover with preallocation, and deletion of
//! segments nothing needs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use super::format::{
    self, BatchBuilder, ENTRY_PAYLOAD_MAX, FLAG_LAST, KIND_CHECKPOINT, KIND_RELOCATE,
    RECORD_SPLIT_BYTES, Summary, begin_record, encode_checkpoint_replica, encode_segment_header,
    finish_record, seal_batch, seal_record, segment_seed,
};
use super::index::{Loc, Segment};
use super::{BATCH_BYTES_MAX, Batch, SEGMENT_OFFSET_MAX, Slot, Wal, Writer};
use crate::error::{Error, Result};
use crate::logdb::shape::{Op, check_stateless, validate_group};
use crate::vfs::File;

/// Zeros written to preallocate segment space, a chunk at a time.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Wal {
    /// Encodes ops into a batch: its header copies, then one record per
    /// op, update entries split into records of about
    /// [`RECORD_SPLIT_BYTES`].
    fn encode(ops: Vec<Op>) -> Result<Batch> {
        check_stateless(&ops)?;
        // Approximate encoded size of an entry: payload plus a header.
        let approx = |e: &longship_raft::Entry| e.cmd.len() + 16;
        let capacity: usize = ops
            .iter()
            .map(|op| match op {
                Op::Update { entries, .. } => 64 + entries.iter().map(approx).sum::<usize>(),
                _ => 128,
            })
            .sum();
        let mut split = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Update {
                    key,
                    snapshot,
                    entries,
                    hard_state,
                    clear_recovery,
                } => {
                    if let Some(e) = entries
                        .iter()
                        .find(|e| e.cmd.len() as u64 > ENTRY_PAYLOAD_MAX)
                    {
                        return Err(Error::InvalidArgument(format!(
                            "entry payload of {} bytes over the limit",
                            e.cmd.len()
                        )));
                    }
                    let total: usize = entries.iter().map(approx).sum();
                    if total <= RECORD_SPLIT_BYTES {
                        split.push(Op::Update {
                            key,
                            snapshot,
                            entries,
                            hard_state,
                            clear_recovery,
                        });
                        continue;
                    }
                    // Large: records of about RECORD_SPLIT_BYTES each.
                    let mut first = true;
                    let mut rest = entries.into_iter().peekable();
                    // Bounded: every round takes at least one entry.
                    while rest.peek().is_some() {
                        let mut chunk = Vec::new();
                        let mut bytes = 0;
                        while let Some(e) = rest.next_if(|e| {
                            chunk.is_empty() || bytes + approx(e) <= RECORD_SPLIT_BYTES
                        }) {
                            bytes += approx(&e);
                            chunk.push(e);
                        }
                        split.push(Op::Update {
                            key,
                            snapshot: if first { snapshot.clone() } else { None },
                            entries: chunk,
                            hard_state: if first { hard_state } else { None },
                            clear_recovery: first && clear_recovery,
                        });
                        first = false;
                    }
                }
                other => split.push(other),
            }
        }
        let mut builder = BatchBuilder::with_capacity(capacity.min(BATCH_BYTES_MAX));
        for op in &split {
            builder.push_op(op);
            if builder.records_len() > BATCH_BYTES_MAX {
                return Err(Error::InvalidArgument(format!(
                    "batch larger than {BATCH_BYTES_MAX} bytes"
                )));
            }
        }
        let (buf, spans) = builder.finish();
        if buf.len() > BATCH_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "batch larger than {BATCH_BYTES_MAX} bytes"
            )));
        }
        Ok(Batch {
            ops: split,
            buf,
            spans,
        })
    }

    /// Writes ops durably through the group commit.
    pub(super) fn write(&self, ops: Vec<Op>) -> Result<()> {
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
                if !group.is_empty() && bytes + b > self.options.max_group_bytes {
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
            let verdicts = validate_group(batches.iter().map(|b| &b.ops[..]), |k| {
                idx.replicas.get(k).map(|r| &r.shape)
            });
            for (i, v) in verdicts.into_iter().enumerate() {
                match v {
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
        self.preallocate(&mut w, total)?;
        // Seal, write and sync.
        let mut offset = w.len;
        let mut bases = Vec::with_capacity(accepted.len());
        for &i in &accepted {
            let b = &mut batches[i];
            seal_batch(&mut b.buf, offset, w.seed);
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
        w.allocated = w.allocated.max(offset);
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
        // The group is durable and applied: a failed relocation must not
        // turn its outcome into an error (the log is marked failed instead).
        if let Err(e) = self.relocate_oldest(&mut w) {
            tracing::error!(error = %e, "relocation failed");
        }
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
    pub(super) fn roll(&self, w: &mut Writer) -> Result<()> {
        // An older segment ends exactly at its last record: cut the
        // preallocated space before a newer segment exists.
        if w.allocated > w.len {
            if let Err(e) = w.file.set_len(w.len).and_then(|()| w.file.sync()) {
                return Err(self.fail(w, e, "truncate segment"));
            }
            w.allocated = w.len;
        }
        let id = w.active + 1;
        let path = self.dir.join(format::segment_file_name(id));
        let seed = segment_seed(id);
        let mut buf = Vec::new();
        encode_segment_header(id, &mut buf);
        {
            let idx = self.index.read();
            encode_checkpoint(&idx.checkpoint(), seed, &mut buf);
        }
        let allocated = self.preallocation_end(buf.len() as u64, 0);
        let created = (|| -> std::io::Result<Arc<dyn File>> {
            let file: Arc<dyn File> = Arc::from(self.fs.create(&path)?);
            file.write_at(0, &buf)?;
            write_zeros(&*file, buf.len() as u64, allocated)?;
            file.sync()?;
            self.fs.sync_dir(&self.dir)?;
            Ok(file)
        })();
        let file = match created {
            Ok(f) => f,
            Err(e) => return Err(self.fail(w, e, "create segment")),
        };
        {
            let mut idx = self.index.write();
            if let Some(old) = idx.segments.get_mut(&w.active) {
                old.len = w.len;
            }
            idx.segments.insert(
                id,
                Segment {
                    path,
                    file: file.clone(),
                    live_runs: 0,
                    live_bytes: 0,
                    len: buf.len() as u64,
                },
            );
        }
        w.active = id;
        w.file = file;
        w.len = buf.len() as u64;
        w.allocated = allocated;
        w.seed = seed;
        self.counters
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.counters
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Where zero-filled space should end for writes up to `end` (`group`
    /// bytes of them in one go): one step ahead, within the segment size.
    /// Large groups pay for growing the file themselves.
    fn preallocation_end(&self, end: u64, group: u64) -> u64 {
        let step = self.options.preallocate_bytes;
        if step == 0 || group >= step / 4 {
            return end;
        }
        (end + step).min(self.options.segment_bytes.max(end))
    }

    /// Zero-fills space ahead of the next `group` bytes if they would
    /// otherwise grow the file; synced together with the group.
    fn preallocate(&self, w: &mut Writer, group: u64) -> Result<()> {
        let end = w.len + group;
        if end <= w.allocated {
            return Ok(());
        }
        let target = self.preallocation_end(end, group);
        if target > end {
            if let Err(e) = write_zeros(&*w.file, end.max(w.allocated), target) {
                return Err(self.fail(w, e, "preallocate"));
            }
            w.allocated = target;
        }
        Ok(())
    }

    /// When the older segments hold more garbage than live records, copies
    /// the live entries of the oldest one into the active segment (one
    /// batch, one fsync) so it and the dead ones after it can be deleted.
    /// Keeps disk use within about twice the live data plus a segment, even
    /// when an idle replica's old entries would otherwise pin every later
    /// segment. Bounded: at most one segment's live records per call.
    fn relocate_oldest(&self, w: &mut Writer) -> Result<()> {
        let (oldest, plan) = {
            let idx = self.index.read();
            let older: Vec<&Segment> = idx.segments.range(..w.active).map(|(_, s)| s).collect();
            let size: u64 = older.iter().map(|s| s.len).sum();
            let live: u64 = older.iter().map(|s| s.live_bytes).sum();
            if older.len() < 2 || live * 2 >= size {
                return Ok(());
            }
            let (&oldest, seg) = idx.segments.iter().next().expect("two or more");
            let plan: Vec<_> = idx
                .runs_in(oldest)
                .into_iter()
                .map(|(key, run)| (key, run, seg.file.clone(), seg.path.clone()))
                .collect();
            (oldest, plan)
        };
        if plan.is_empty() {
            return Ok(());
        }
        let mut builder = BatchBuilder::default();
        for (key, run, file, path) in &plan {
            let entries = match super::read::read_record_entries(&**file, path, run, *key) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, segment = oldest, "cannot relocate entries");
                    return Ok(());
                }
            };
            let live: Vec<_> = entries
                .into_iter()
                .filter(|e| e.index >= run.first && e.index < run.end())
                .collect();
            let summary = Summary::Update {
                kind: KIND_RELOCATE,
                key: *key,
                snapshot: None,
                hard_state: None,
                entries: live
                    .first()
                    .zip(live.last())
                    .map(|(f, l)| (f.index, l.index)),
                clear_recovery: false,
            };
            builder.push(&summary, |out| {
                format::encode_update_payload(*key, None, None, false, &live, out)
            });
        }
        let (mut buf, spans) = builder.finish();
        if w.len >= self.options.segment_bytes || w.len + buf.len() as u64 > SEGMENT_OFFSET_MAX {
            self.roll(w)?;
        }
        self.preallocate(w, buf.len() as u64)?;
        seal_batch(&mut buf, w.len, w.seed);
        if let Err(e) = w.file.write_at(w.len, &buf) {
            return Err(self.fail(w, e, "write"));
        }
        if let Err(e) = w.file.sync() {
            return Err(self.fail(w, e, "fsync"));
        }
        let base = w.len;
        w.len += buf.len() as u64;
        w.allocated = w.allocated.max(w.len);
        {
            let mut idx = self.index.write();
            for ((key, run, _, _), &(start, len)) in plan.iter().zip(&spans) {
                let loc = Loc {
                    segment: w.active,
                    offset: (base + start as u64) as u32,
                    len: len as u32,
                };
                let term = |i: u64| {
                    idx.replicas[key]
                        .shape
                        .term(run.first.plus(i))
                        .expect("relocated entries are in the log")
                };
                let terms: Vec<_> = (0..run.count).map(term).collect();
                idx.relocate(*key, run.first, run.count, |i| terms[i as usize], loc)
                    .expect("relocating what the index holds");
            }
            debug_assert!(idx.check().is_ok(), "{:?}", idx.check());
        }
        let c = &self.counters;
        c.syncs.fetch_add(1, Ordering::Relaxed);
        c.relocations.fetch_add(1, Ordering::Relaxed);
        c.bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.delete_dead_segments(w.active);
        Ok(())
    }

    /// Deletes the oldest segments nothing needs. Not fsynced: a segment
    /// that comes back after a crash is replayed again, which is harmless.
    pub(super) fn delete_dead_segments(&self, active: u64) {
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
}

/// Writes zeros to `[from, to)` of `file`.
fn write_zeros(file: &dyn File, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    // Bounded: every round writes at least one byte.
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        file.write_at(at, &ZEROS[..n as usize])?;
        at += n;
    }
    Ok(())
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

/// The unsealed bytes of a repair batch: a discard record for the bytes
/// from `from` up to where the batch will be written, then `ops` (restored
/// hard states and recovery guards).
pub(super) fn repair_batch(from: u64, ops: &[Op]) -> Vec<u8> {
    let mut builder = BatchBuilder::default();
    builder.push(&Summary::Discard { from }, |out| {
        out.extend_from_slice(&from.to_le_bytes())
    });
    for op in ops {
        builder.push_op(op);
    }
    builder.finish().0
}

/// A file that refuses everything: the writer's handle before the first
/// segment exists.
pub(super) struct NullFile;

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
