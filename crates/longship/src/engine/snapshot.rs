//! The snapshot worker: saves snapshots and streams them to followers.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use longship_raft::codec::encode_message;
use longship_raft::{Index, Message, SnapshotMeta};
use longship_storage::snapshot::SnapshotStore;
use longship_transport::SnapshotChunk;

use super::report_snapshot_status;
use crate::error::Error;
use crate::host::{HostState, SnapshotJob};
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::rsm::SnapshotContent;
use crate::sm::SnapshotFiles;

/// Snapshot stream chunk size.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------- snapshot

/// Saves and streams snapshots.
pub(crate) struct SnapshotWorker {
    pub(crate) host: Arc<HostState>,
}

impl SnapshotWorker {
    /// Runs one queued job.
    pub(crate) fn run_once(&self) -> bool {
        let job = self.host.snapshot_jobs.lock().pop_front();
        let Some(job) = job else {
            self.host.snapshot_ready.take();
            return false;
        };
        match job {
            SnapshotJob::Save(shard) => {
                if let Some(r) = self.host.replica(shard) {
                    let res = save_snapshot(&self.host, &r, r.config.compaction_overhead);
                    r.snapshotting.store(false, Ordering::Release);
                    self.host.mark_apply(shard);
                    match res {
                        Ok(index) => answer_covered(&r, index, None),
                        // Requests wait for their own jobs, which report
                        // their own outcome.
                        Err(e @ Error::Rejected(_)) => {
                            tracing::debug!(shard = %shard, reason = %e, "snapshot not saved")
                        }
                        Err(e) => {
                            tracing::warn!(shard = %shard, error = %e, "snapshot not saved")
                        }
                    }
                }
            }
            SnapshotJob::Requested { shard, key } => {
                if let Some(r) = self.host.replica(shard) {
                    run_requested(&self.host, &r, key);
                }
            }
            SnapshotJob::Stream { message, address } => {
                let event =
                    message
                        .snapshot
                        .as_ref()
                        .map(|snap| crate::events::SnapshotSendEvent {
                            shard_id: message.shard_id,
                            replica_id: message.from,
                            to: message.to,
                            index: snap.index,
                        });
                let listener = self.host.listener.as_ref().zip(event);
                if let Some((l, e)) = listener {
                    l.snapshot_send_started(e);
                }
                let failed = match stream_snapshot(&self.host, &message, &address) {
                    Ok(()) => false,
                    Err(e) => {
                        // Release the transport's half-sent stream.
                        if let Some(snap) = &message.snapshot {
                            self.host.transport.cancel_snapshot_stream(
                                &address,
                                message.shard_id,
                                message.from,
                                message.to,
                                snap.index,
                            );
                        }
                        tracing::info!(shard = %message.shard_id, to = %message.to, error = %e, "snapshot stream failed");
                        true
                    }
                };
                if let Some((l, e)) = listener {
                    if failed {
                        l.snapshot_send_aborted(e);
                    } else {
                        l.snapshot_sent(e);
                    }
                }
                report_snapshot_status(&self.host, &message, failed);
            }
        }
        true
    }
}

/// Runs the requested snapshot `key` of `r` with its own options and
/// answers it (and, after a local snapshot, the plain requests it covers).
/// Nothing is done for a request already answered (by an earlier local
/// snapshot), expired or ended by a stop.
fn run_requested(host: &HostState, r: &Replica, key: u64) {
    let opt = {
        let pending = r.pending.lock();
        match pending.snapshots.iter().find(|p| p.key == key) {
            Some(p) => p.opt.clone(),
            None => {
                // Answered by an earlier local snapshot, expired or ended:
                // the mark its request set must not outlive it (it would
                // hold back automatic snapshots for good).
                r.snapshotting.store(false, Ordering::Release);
                return;
            }
        }
    };
    let out = match &opt.export_path {
        // An export is a backup: it leaves the replica as it was.
        Some(path) => export_snapshot(host, r, path),
        None => {
            let overhead = opt
                .compaction_overhead
                .unwrap_or(r.config.compaction_overhead);
            let res = save_snapshot(host, r, overhead);
            r.snapshotting.store(false, Ordering::Release);
            host.mark_apply(r.shard_id);
            if let Ok(index) = res {
                answer_covered(r, index, Some(key));
            }
            res.map(|index| crate::types::SnapshotResult {
                index,
                export_dir: None,
            })
        }
    };
    if let Err(e) = &out {
        tracing::info!(shard = %r.shard_id, error = %e, "requested snapshot not taken");
    }
    let mine = {
        let mut pending = r.pending.lock();
        let at = pending.snapshots.iter().position(|p| p.key == key);
        at.map(|i| pending.snapshots.swap_remove(i))
    };
    if let Some(p) = mine {
        p.completer.complete(out.map_err(request_error));
    }
}

/// What a requested snapshot's caller gets for a failure: the state
/// machine's abort as [`Error::Aborted`], refusals and storage errors as
/// they are, anything else as a refusal that says why.
fn request_error(e: Error) -> Error {
    match e {
        Error::Rejected(_)
        | Error::Aborted
        | Error::Stopped
        | Error::Witness(_)
        | Error::Snapshot(_)
        | Error::Storage(_)
        | Error::InvalidConfig { .. } => e,
        e => Error::Rejected(e.to_string()),
    }
}

/// Answers the plain requests (no export, no override of their own) made
/// at or below `index` with the local snapshot at `index`, and request
/// `also` whatever it asked for.
fn answer_covered(r: &Replica, index: Index, also: Option<u64>) {
    let answered = {
        let mut pending = r.pending.lock();
        let (answered, waiting) = std::mem::take(&mut pending.snapshots)
            .into_iter()
            .partition::<Vec<_>, _>(|p| p.is_plain() && p.min <= index && Some(p.key) != also);
        pending.snapshots = waiting;
        answered
    };
    for p in answered {
        p.completer.complete(Ok(crate::types::SnapshotResult {
            index,
            export_dir: None,
        }));
    }
}

/// Maps a state machine's error while saving: its abort
/// ([`SmError::snapshot_aborted`](crate::SmError::snapshot_aborted)) is
/// [`Error::Aborted`].
fn save_error(e: crate::sm::SmError) -> Error {
    if e.is_snapshot_aborted() {
        Error::Aborted
    } else {
        Error::StateMachine(e.0)
    }
}

/// Writes the state machine's state at the applied index into `sink`'s
/// snapshot and commits it. Holds the apply lock while the state is
/// captured (for regular state machines, the whole save). `content`:
/// whether an on-disk state machine saves its data (see
/// [`SnapshotContent`]).
fn write_state(
    r: &Replica,
    guard: super::ApplyLock<'_>,
    mut sink: longship_storage::snapshot::SnapshotSink,
    content: SnapshotContent,
) -> Result<longship_storage::snapshot::SnapshotInfo, Error> {
    let regular = matches!(r.rsm.sm, crate::rsm::UserSm::Regular(_));
    let mut files = SnapshotFiles::new();
    let written = if regular {
        // Exclusive with updates for the whole save: this shard's apply waits,
        // others do not (the apply worker skips a locked shard).
        let res = r
            .rsm
            .save_regular(&mut sink, &mut files, &r.stop)
            .map_err(save_error);
        drop(guard);
        res
    } else {
        match r.rsm.prepare(content) {
            Ok(prepared) => {
                // An apply round that found the lock taken skipped the
                // replica: it may go on now, not only once the save is over
                // (the guard marks it again).
                drop(guard);
                r.rsm
                    .save_prepared(prepared, &mut sink, &mut files, &r.stop)
                    .map_err(save_error)
            }
            Err(e) => Err(save_error(e)),
        }
    };
    // The files the state machine attached are copied in once its save is
    // complete (it promised to keep them unchanged until then).
    let written = written.and_then(|()| crate::snapshot_files::attach(&mut sink, files));
    // A save cut short by the stop flag may have returned Ok with part of
    // the state only: never keep it (the log would be compacted behind it).
    let written = written.and_then(|()| {
        if r.stop.is_set() {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    });
    match written {
        Ok(()) => Ok(sink.commit()?),
        Err(e) => {
            if let Err(c) = sink.cancel() {
                tracing::warn!(error = %c, "unfinished snapshot not removed");
            }
            Err(e)
        }
    }
}

/// The snapshot metadata of `r` at its applied state.
fn meta_of(r: &Replica, applied: &crate::rsm::AppliedState) -> SnapshotMeta {
    SnapshotMeta {
        index: applied.index,
        term: applied.term,
        membership: applied.membership.clone(),
        on_disk_index: if r.rsm.sm.is_on_disk() {
            applied.index
        } else {
            Index(0)
        },
        witness: r.config.is_witness,
        file_size: 0,
    }
}

/// Exports a snapshot of `r` at its applied index into `dir` as
/// `dir/snapshot-<index>`, written like a local snapshot (temporary name,
/// fsync, rename). A backup: the replica takes no local snapshot, its log
/// is not compacted, and an idle replica exports as well as a busy one.
pub(crate) fn export_snapshot(
    host: &HostState,
    r: &Replica,
    dir: &std::path::Path,
) -> Result<crate::types::SnapshotResult, Error> {
    if r.config.is_witness {
        return Err(Error::Witness(r.shard_id));
    }
    let _one_at_a_time = r.snapshot_save.lock();
    let guard = super::ApplyLock::lock(host, r);
    if let Some(why) = r.failed.lock().clone() {
        return Err(Error::Rejected(format!("replica failed: {why}")));
    }
    let applied = r.rsm.applied();
    if applied.index == Index(0) {
        return Err(Error::Rejected(
            "nothing applied yet: there is no state to export".into(),
        ));
    }
    // The export directory has the layout of a snapshot store: its
    // children are `snapshot-<index>` directories, committed atomically.
    let store = longship_storage::snapshot::SnapshotStore::open_dir(
        host.fs.clone(),
        dir.to_path_buf(),
        r.shard_id,
        r.replica_id,
    )?;
    let sink = store.create(meta_of(r, &applied), 1)?;
    let started = std::time::Instant::now();
    // An export is a backup: the whole state, for on-disk state machines too.
    let info = write_state(r, guard, sink, SnapshotContent::Full)?;
    host.metrics.latencies.snapshot.record(started.elapsed());
    Metrics::add(&host.metrics.snapshots_exported, 1);
    Ok(crate::types::SnapshotResult {
        index: info.meta.index,
        export_dir: Some(store.snapshot_dir(info.meta.index)),
    })
}

/// Saves a snapshot of the replica's state machine at its applied index,
/// records it in log storage, then compacts the log keeping `overhead`
/// entries behind it. Returns its index.
pub(crate) fn save_snapshot(host: &HostState, r: &Replica, overhead: u64) -> Result<Index, Error> {
    let _one_at_a_time = r.snapshot_save.lock();
    let guard = super::ApplyLock::lock(host, r);
    // A failed `update` leaves an applied state that counts entries the
    // state machine never applied: a snapshot of it would lose them.
    if let Some(why) = r.failed.lock().clone() {
        return Err(Error::Rejected(format!("replica failed: {why}")));
    }
    let applied = r.rsm.applied();
    let last = Index(r.snapshot_index.load(Ordering::Acquire));
    if applied.index == Index(0) || applied.index <= last {
        return Err(Error::Rejected(format!(
            "nothing new to snapshot (applied {}, last snapshot {})",
            applied.index, last
        )));
    }
    let meta = meta_of(r, &applied);
    let sink = r.snapshots.create(meta, 1)?;
    let started = std::time::Instant::now();
    // An on-disk state machine's own store holds its state: its local
    // snapshots hold the session table only (docs/engine.md).
    let info = write_state(r, guard, sink, SnapshotContent::Local)?;
    host.metrics.latencies.snapshot.record(started.elapsed());
    host.logdb
        .save_snapshot(r.shard_id, r.replica_id, &info.meta)?;
    // A recovery from a newer snapshot may have run meanwhile (the save
    // of a concurrent or on-disk state machine does not hold the apply
    // lock): the newest snapshot index never goes back.
    r.snapshot_index
        .fetch_max(info.meta.index.0, Ordering::AcqRel);
    Metrics::add(&host.metrics.snapshots_saved, 1);
    if let Some(l) = &host.listener {
        l.snapshot_created(crate::events::SnapshotEvent {
            shard_id: r.shard_id,
            replica_id: r.replica_id,
            index: info.meta.index,
        });
    }
    // Compact only once the snapshot is durable (DESIGN §2).
    let compact_to = info.meta.index.minus(overhead);
    let first = host.logdb.first_index(r.shard_id, r.replica_id);
    if compact_to >= first {
        host.logdb
            .remove_entries_to(r.shard_id, r.replica_id, compact_to)?;
        if let Some(l) = &host.listener {
            l.log_compacted(crate::events::SnapshotEvent {
                shard_id: r.shard_id,
                replica_id: r.replica_id,
                index: compact_to,
            });
        }
    }
    // Counted at or below the recorded snapshot only: a snapshot above it
    // (committed to the store by a run that crashed before recording it)
    // must not push the recorded one out (seed 11052946: a restart
    // replayed from an older snapshot past two such orphans, saved one
    // below them, and kept the orphans instead; the next start found no
    // snapshot behind the compacted log).
    let recorded = host
        .logdb
        .snapshot(r.shard_id, r.replica_id)
        .index
        .max(info.meta.index);
    match r.snapshots.keep_newest_upto(2, recorded) {
        Ok(removed) => {
            if let (Some(l), Some(index)) = (&host.listener, removed.iter().max()) {
                l.snapshot_compacted(crate::events::SnapshotEvent {
                    shard_id: r.shard_id,
                    replica_id: r.replica_id,
                    index: *index,
                });
            }
        }
        Err(e) => tracing::warn!(error = %e, "old snapshots not removed"),
    }
    Ok(info.meta.index)
}

/// Name of the directory, inside a replica's snapshot store, holding the
/// full snapshots an on-disk state machine's leader streams (its local
/// snapshots hold metadata only). Not a snapshot name, so the store never
/// lists it; removed with the store.
pub(crate) const STREAM_SNAPSHOTS_DIR: &str = "for-streams";

/// Whether the local snapshot at `index` holds no state machine data.
fn local_is_metadata_only(r: &Replica, index: Index) -> Result<bool, Error> {
    if !r.rsm.sm.is_on_disk() {
        return Ok(false);
    }
    let (_, mut data) = r.snapshots.open_snapshot(index)?;
    crate::rsm::is_metadata_only(&mut data).map_err(|e| Error::StateMachine(e.0))
}

/// A full snapshot of an on-disk state machine to stream in place of its
/// metadata-only local snapshot at `index`: the newest one kept for
/// streams if it is at least that recent, else a new one of the state
/// machine as applied now (at `index` or later, a committed index: the
/// follower then catches up from the log after it). Kept in
/// [`STREAM_SNAPSHOTS_DIR`] for the next follower that needs one; the two
/// newest stay.
fn full_snapshot_for_stream(
    host: &HostState,
    r: &Replica,
    index: Index,
) -> Result<(SnapshotStore, longship_storage::snapshot::SnapshotInfo), Error> {
    // Before opening the directory: opening removes unfinished snapshots,
    // and another stream's save may be writing one.
    let _one_at_a_time = r.snapshot_save.lock();
    let store = SnapshotStore::open_dir(
        host.fs.clone(),
        r.snapshots.dir().join(STREAM_SNAPSHOTS_DIR),
        r.shard_id,
        r.replica_id,
    )?;
    if let Some(&newest) = store.list()?.first()
        && newest >= index
        && let Ok(info) = store.info(newest)
    {
        return Ok((store, info));
    }
    let guard = super::ApplyLock::lock(host, r);
    if let Some(why) = r.failed.lock().clone() {
        return Err(Error::Rejected(format!("replica failed: {why}")));
    }
    let applied = r.rsm.applied();
    if applied.index < index {
        return Err(Error::Rejected(format!(
            "applied index {} is behind the snapshot to stream ({index})",
            applied.index
        )));
    }
    let sink = store.create(meta_of(r, &applied), 1)?;
    let info = write_state(r, guard, sink, SnapshotContent::Full)?;
    Metrics::add(&host.metrics.snapshots_saved_for_streams, 1);
    if let Err(e) = store.keep_newest(2) {
        tracing::warn!(error = %e, "old snapshots for streams not removed");
    }
    Ok((store, info))
}

/// Streams the snapshot named by an `InstallSnapshot` message in chunks.
/// An on-disk state machine's local snapshot holds metadata only: a full
/// one is streamed instead, perhaps at a later index, and the message is
/// changed to name it.
fn stream_snapshot(host: &HostState, m: &Message, address: &str) -> Result<(), Error> {
    let r = host
        .replica(m.shard_id)
        .ok_or(Error::ShardNotFound(m.shard_id))?;
    let snap = m
        .snapshot
        .as_ref()
        .ok_or_else(|| Error::Rejected("InstallSnapshot without snapshot".into()))?;
    let mut full_store = None;
    let mut m = m.clone();
    if local_is_metadata_only(&r, snap.index)? {
        let (store, info) = full_snapshot_for_stream(host, &r, snap.index)?;
        m.snapshot = Some(SnapshotMeta {
            witness: false,
            ..info.meta.clone()
        });
        full_store = Some(store);
    }
    let store = full_store.as_ref().unwrap_or(&r.snapshots);
    let snap = m.snapshot.clone().expect("checked above");
    let (info, data) = store.open_snapshot(snap.index)?;
    let mut chunk_id = 0u64;
    let base = SnapshotChunk {
        deployment_id: host.cfg.deployment_id,
        shard_id: m.shard_id,
        to: m.to,
        from: m.from,
        index: snap.index,
        term: snap.term,
        ..SnapshotChunk::default()
    };
    let encoded_info = info.encode()?;
    let mut files: Vec<(String, Box<dyn Read>)> = vec![(
        longship_storage::snapshot::DATA_FILE_NAME.to_string(),
        Box::new(data),
    )];
    for f in &info.external_files {
        files.push((
            f.name.clone(),
            Box::new(store.open_external(snap.index, &f.name)?),
        ));
    }
    // A chunk's frame also carries its header fields and, on the first
    // chunk, the snapshot's description: keep the data well under the limit.
    let chunk_bytes = SNAPSHOT_CHUNK_BYTES.min(host.cfg.max_frame_bytes as usize / 2);
    let mut buf = vec![0u8; chunk_bytes];
    for (name, mut reader) in files {
        let mut offset = 0u64;
        loop {
            if r.stop.is_set() || host.is_stopped() {
                return Err(Error::Stopped);
            }
            let n = read_full(&mut *reader, &mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = SnapshotChunk {
                chunk_id,
                info: if chunk_id == 0 {
                    encoded_info.clone()
                } else {
                    Vec::new()
                },
                file_name: name.clone(),
                offset,
                data: buf[..n].to_vec(),
                ..base.clone()
            };
            host.transport.send_snapshot_chunk(address, chunk)?;
            Metrics::add(&host.metrics.snapshot_bytes_sent, n as u64);
            chunk_id += 1;
            offset += n as u64;
        }
    }
    let mut message = Vec::new();
    encode_message(&m, &mut message);
    let last = SnapshotChunk {
        chunk_id,
        info: if chunk_id == 0 {
            encoded_info
        } else {
            Vec::new()
        },
        last: true,
        message,
        ..base
    };
    host.transport.send_snapshot_chunk(address, last)?;
    Ok(())
}

/// Reads until `buf` is full or the reader ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
