//! The apply worker: applies committed entries to state machines and
//! completes the requests waiting on them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use longship_raft::{Entry, Index, SnapshotMeta};

use super::{complete_reads, config_change_error, fail_replica_with};
use crate::error::Error;
use crate::host::{HostState, SnapshotJob};
use crate::metrics::Metrics;
use crate::replica::{ApplyTask, Replica, ReplicaRef};
use crate::rsm::{Applied, AppliedState};
use crate::sm::SmResult;

/// Most apply tasks one replica gets per apply round (fairness between shards).
const APPLY_TASKS_PER_ROUND: usize = 64;

// ---------------------------------------------------------------- apply

/// Applies committed entries of the shards of one apply worker.
pub(crate) struct ApplyWorker {
    pub(crate) host: Arc<HostState>,
    pub(crate) id: usize,
}

impl ApplyWorker {
    /// One round: a bounded number of tasks of every ready replica.
    pub(crate) fn run_once(&self) -> bool {
        let host = &self.host;
        let ready = host.apply_ready[self.id].take();
        if ready.is_empty() {
            return false;
        }
        for shard in ready {
            let Some(r) = host.replica(shard) else {
                continue;
            };
            if r.is_closed() || r.failed.lock().is_some() {
                continue;
            }
            // A regular state machine being snapshotted: come back later
            // (the snapshot worker marks the shard when it is done), and do
            // not block the other shards of this worker meanwhile.
            let Some(guard) = r.apply_lock.try_lock() else {
                continue;
            };
            let mut done = 0;
            let mut more = false;
            // The step worker learns the applied index at its next cycle
            // (a tick at the latest); wake it now only where it matters at
            // once: a membership change (addresses, the pending-change and
            // campaign checks), a recovered snapshot, a failure.
            let mut wake_step = false;
            loop {
                if done == APPLY_TASKS_PER_ROUND {
                    more = true;
                    break;
                }
                let Some(task) = r.apply_queue.lock().pop_front() else {
                    break;
                };
                done += 1;
                let res = match task {
                    ApplyTask::Entries(entries) => self.apply_entries(&r, &entries),
                    ApplyTask::Snapshot(meta) => self.recover_snapshot(&r, &meta).map(|()| true),
                };
                wake_step |= !matches!(res, Ok(false));
                if let Err(e) = res {
                    fail_replica_with(host, &r, e.to_string());
                    break;
                }
            }
            drop(guard);
            if more {
                host.mark_apply(shard);
            }
            // The core holds committed entries back until it learns what
            // was applied (a bounded apply queue): tell it now, not at the
            // next tick.
            if done > 0 && r.apply_throttled.swap(false, Ordering::AcqRel) {
                wake_step = true;
            }
            self.maybe_schedule_snapshot(&r);
            if wake_step {
                host.mark_step(shard);
            }
        }
        true
    }

    /// Applies entries and completes their requests; returns whether the
    /// membership changed. Entries that were in the log when the replica
    /// started complete nothing: their keys belong to an earlier run, and
    /// this run may be waiting on the same keys for other entries.
    pub(super) fn apply_entries(&self, r: &Replica, entries: &[Entry]) -> Result<bool, Error> {
        let earlier = entries.partition_point(|e| e.index <= r.boot_last_index);
        let (old, new) = entries.split_at(earlier);
        let mut changed = false;
        if !old.is_empty() {
            changed |= self.apply_batch(r, old, false)?;
        }
        if !new.is_empty() {
            changed |= self.apply_batch(r, new, true)?;
        }
        Ok(changed)
    }

    /// Applies entries, completing their requests if `complete`.
    fn apply_batch(&self, r: &Replica, entries: &[Entry], complete: bool) -> Result<bool, Error> {
        let host = &self.host;
        let mut out = Vec::new();
        let mut membership_changed = Vec::new();
        let started = std::time::Instant::now();
        let res = r.rsm.apply(
            entries,
            &mut |cc, index| {
                let mut core = r.core.lock();
                core.raft.apply_config_change(cc, index)?;
                membership_changed.push(index);
                Ok(core.raft.membership().clone())
            },
            &mut out,
        );
        res.map_err(|e| Error::StateMachine(e.0))?;
        host.metrics.latencies.apply.record(started.elapsed());
        let last = entries.last().map(|e| e.index).unwrap_or(Index(0));
        if last > r.applied() {
            r.applied_index.store(last.0, Ordering::Release);
        }
        Metrics::add(&host.metrics.entries_applied, entries.len() as u64);
        let mut pending = r.pending.lock();
        if !complete {
            out.clear();
        }
        for a in out {
            match a {
                Applied::Result { key, result } => {
                    if let Some(p) = pending.proposals.remove(&key) {
                        p.completer.complete(Ok(result));
                    }
                }
                Applied::ResultLost { key } => {
                    if let Some(p) = pending.proposals.remove(&key) {
                        p.completer.complete(Err(Error::Rejected(
                            "already applied before a restart; its result is not available".into(),
                        )));
                    }
                }
                Applied::SessionInvalid { key } => {
                    if let Some(p) = pending.proposals.remove(&key) {
                        p.completer.complete(Err(Error::InvalidSession));
                    }
                }
                Applied::Session { key, ok } => {
                    if let Some(p) = pending.proposals.remove(&key) {
                        p.completer.complete(if ok {
                            Ok(SmResult {
                                value: 1,
                                data: vec![],
                            })
                        } else {
                            Err(Error::InvalidSession)
                        });
                    }
                }
                Applied::ConfigChange { key, outcome } => {
                    if let Some(p) = pending.config_changes.remove(&key) {
                        p.completer.complete(outcome.map_err(config_change_error));
                    }
                }
            }
        }
        complete_reads(host, &mut pending, r.applied());
        drop(pending);
        let changed = !membership_changed.is_empty();
        if let Some(l) = &host.listener {
            for index in membership_changed {
                l.membership_changed(r.shard_id, r.replica_id, index);
            }
        }
        Ok(changed)
    }

    fn recover_snapshot(&self, r: &Replica, meta: &SnapshotMeta) -> Result<(), Error> {
        recover_from_store(r, meta)?;
        r.applied_index.store(meta.index.0, Ordering::Release);
        r.snapshot_index.fetch_max(meta.index.0, Ordering::AcqRel);
        complete_reads(&self.host, &mut r.pending.lock(), meta.index);
        if let Some(l) = &self.host.listener {
            l.snapshot_recovered(crate::events::SnapshotEvent {
                shard_id: r.shard_id,
                replica_id: r.replica_id,
                index: meta.index,
            });
        }
        Ok(())
    }

    pub(super) fn maybe_schedule_snapshot(&self, r: &ReplicaRef) {
        let every = r.config.snapshot_entries;
        if every == 0 {
            return;
        }
        let applied = r.applied().0;
        let last = r.snapshot_index.load(Ordering::Acquire);
        // Once per applied index: a save that failed (a full disk) is tried
        // again when something new was applied, not in a busy loop.
        if applied >= last + every
            && applied > r.snapshot_tried.load(Ordering::Acquire)
            && !r.snapshotting.swap(true, Ordering::AcqRel)
        {
            if self.host.push_snapshot_job(SnapshotJob::Save(r.shard_id)) {
                r.snapshot_tried.store(applied, Ordering::Release);
            } else {
                r.snapshotting.store(false, Ordering::Release);
            }
        }
    }
}

/// Replaces the state machine's state by the snapshot at `meta.index` in
/// the replica's store (a witness only takes the metadata).
pub(crate) fn recover_from_store(r: &Replica, meta: &SnapshotMeta) -> Result<(), Error> {
    let applied = AppliedState {
        index: meta.index,
        term: meta.term,
        membership: meta.membership.clone(),
    };
    if meta.witness || r.config.is_witness {
        r.rsm.set_applied(applied);
        return Ok(());
    }
    // Check every checksum before the state machine sees a byte: a damaged
    // file found only at its end would have replaced the state machine's
    // state already (durably, for an on-disk state machine). Recoveries
    // are rare; reading the file twice is the price.
    // Attached files included: the state machine gets only checked files.
    r.snapshots.verify(meta.index)?;
    let (info, mut reader) = r.snapshots.open_snapshot(meta.index)?;
    let files = crate::snapshot_files::attached(&r.snapshots, &info)?;
    r.rsm
        .recover(&mut reader, applied, &files, &r.stop)
        .map_err(|e| Error::StateMachine(e.0))?;
    // Cut short by the stop flag, the state machine may have returned Ok
    // without the snapshot's state: nothing may be applied on top of it.
    if r.stop.is_set() {
        return Err(Error::Stopped);
    }
    // Read to the end so the data file's checksum is checked again (the
    // file could change between the two reads).
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok(())
}
