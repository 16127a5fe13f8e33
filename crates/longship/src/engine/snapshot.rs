//! The snapshot worker: saves snapshots and streams them to followers.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use longship_raft::codec::encode_message;
use longship_raft::{Index, Message, SnapshotMeta};
use longship_transport::SnapshotChunk;

use super::report_snapshot_status;
use crate::error::Error;
use crate::host::{HostState, SnapshotJob};
use crate::metrics::Metrics;
use crate::replica::Replica;

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
                    // Requests made before this point are answered by this
                    // save (it captures at least this index); later ones by
                    // their own job, unless this snapshot already covers them.
                    let seen = r.applied();
                    let res = save_snapshot(&self.host, &r);
                    r.snapshotting.store(false, Ordering::Release);
                    self.host.mark_apply(shard);
                    let covered = *res.as_ref().unwrap_or(&seen);
                    let mut pending = r.pending.lock();
                    let (answered, waiting) = std::mem::take(&mut pending.snapshots)
                        .into_iter()
                        .partition::<Vec<_>, _>(|(_, _, _, min)| *min <= covered);
                    pending.snapshots = waiting;
                    // An export copies the whole snapshot: not under the
                    // lock the step worker takes on every tick.
                    drop(pending);
                    for (c, _, opt, _) in answered {
                        let out = match &res {
                            Ok(index) => match &opt.export_path {
                                Some(path) => r
                                    .snapshots
                                    .export(*index, path)
                                    .map(|dir| crate::nodehost::SnapshotResult {
                                        index: *index,
                                        export_dir: Some(dir),
                                    })
                                    .map_err(Error::from),
                                None => Ok(crate::nodehost::SnapshotResult {
                                    index: *index,
                                    export_dir: None,
                                }),
                            },
                            Err(Error::Rejected(why)) => Err(Error::Rejected(why.clone())),
                            Err(e) => Err(Error::Rejected(e.to_string())),
                        };
                        c.complete(out);
                    }
                    if let Err(e) = res {
                        tracing::warn!(shard = %shard, error = %e, "snapshot not saved");
                    }
                }
            }
            SnapshotJob::Stream { message, address } => {
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
                report_snapshot_status(&self.host, &message, failed);
            }
        }
        true
    }
}

/// Saves a snapshot of the replica's state machine at its applied index,
/// records it in log storage, then compacts the log. Returns its index.
pub(crate) fn save_snapshot(host: &HostState, r: &Replica) -> Result<Index, Error> {
    let _one_at_a_time = r.snapshot_save.lock();
    let guard = r.apply_lock.lock();
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
    let overhead = r.compaction_override.swap(u64::MAX, Ordering::AcqRel);
    let overhead = if overhead == u64::MAX {
        r.config.compaction_overhead
    } else {
        overhead
    };
    let meta = SnapshotMeta {
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
    };
    let mut sink = r.snapshots.create(meta, 1)?;
    let regular = matches!(r.rsm.sm, crate::rsm::UserSm::Regular(_));
    if regular {
        // Exclusive with updates for the whole save: this shard's apply waits,
        // others do not (the apply worker skips a locked shard).
        r.rsm
            .save_regular(&mut sink, &r.stop)
            .map_err(|e| Error::StateMachine(e.0))?;
        drop(guard);
    } else {
        let prepared = r.rsm.prepare().map_err(|e| Error::StateMachine(e.0))?;
        drop(guard);
        // An apply round that found the lock taken skipped the replica:
        // it may go on now, not only once the save is over.
        host.mark_apply(r.shard_id);
        r.rsm
            .save_prepared(prepared, &mut sink, &r.stop)
            .map_err(|e| Error::StateMachine(e.0))?;
    }
    // A save cut short by the stop flag may have returned Ok with part of
    // the state only: never keep it (the log would be compacted behind it).
    if r.stop.is_set() {
        return Err(Error::Stopped);
    }
    let info = sink.commit()?;
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
    if let Err(e) = r.snapshots.keep_newest(2) {
        tracing::warn!(error = %e, "old snapshots not removed");
    }
    Ok(info.meta.index)
}

/// Streams the snapshot named by an `InstallSnapshot` message in chunks.
fn stream_snapshot(host: &HostState, m: &Message, address: &str) -> Result<(), Error> {
    let r = host
        .replica(m.shard_id)
        .ok_or(Error::ShardNotFound(m.shard_id))?;
    let snap = m
        .snapshot
        .as_ref()
        .ok_or_else(|| Error::Rejected("InstallSnapshot without snapshot".into()))?;
    let (info, data) = r.snapshots.open_snapshot(snap.index)?;
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
            Box::new(r.snapshots.open_external(snap.index, &f.name)?),
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
    encode_message(m, &mut message);
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
