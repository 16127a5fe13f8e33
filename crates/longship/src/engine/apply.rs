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

// ---------------------------------------------------------------- apply lock

/// A replica's apply lock held by anyone but its apply worker (a snapshot
/// save, an inline apply, a hash read). An apply round that finds the lock
/// taken skips the replica rather than wait (its other shards go on);
/// letting go of this guard marks the replica again if a round did so.
pub(crate) struct ApplyLock<'a> {
    guard: Option<parking_lot::MutexGuard<'a, ()>>,
    host: &'a HostState,
    r: &'a Replica,
}

impl<'a> ApplyLock<'a> {
    /// Waits for the apply lock of `r`.
    pub(crate) fn lock(host: &'a HostState, r: &'a Replica) -> ApplyLock<'a> {
        ApplyLock {
            guard: Some(r.apply_lock.lock()),
            host,
            r,
        }
    }

    /// The apply lock of `r` if it is free.
    pub(crate) fn try_lock(host: &'a HostState, r: &'a Replica) -> Option<ApplyLock<'a>> {
        let guard = r.apply_lock.try_lock()?;
        Some(ApplyLock {
            guard: Some(guard),
            host,
            r,
        })
    }
}

impl Drop for ApplyLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // After the release: a round that sets the flag later finds the
        // lock free on its second try (see `ApplyWorker::run_once`).
        if self.r.apply_missed.swap(false, Ordering::AcqRel) {
            self.host.mark_apply(self.r.shard_id);
        }
    }
}

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
            // A regular state machine being snapshotted (or a hash read, an
            // inline apply): come back later, and do not block the other
            // shards of this worker meanwhile. The holder marks the shard
            // again when it lets go (`ApplyLock`); the second try covers a
            // release between the first try and the flag.
            let guard = match r.apply_lock.try_lock() {
                Some(g) => g,
                None => {
                    r.apply_missed.store(true, Ordering::Release);
                    match r.apply_lock.try_lock() {
                        Some(g) => g,
                        None => continue,
                    }
                }
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
                let Some(task) = pop_task(&r.apply_queue) else {
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
                Applied::Undecodable { key, why } => {
                    if let Some(p) = pending.proposals.remove(&key) {
                        p.completer.complete(Err(Error::Rejected(format!(
                            "the entry's payload does not decompress: {why}"
                        ))));
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
    // Check every checksum before the state machine sees a byte: a damaged
    // file found only at its end would have replaced the state machine's
    // state already (durably, for an on-disk state machine). Recoveries
    // are rare; reading the file twice is the price.
    // Attached files included: the state machine gets only checked files.
    if !(meta.witness || r.config.is_witness) {
        r.snapshots.verify(meta.index)?;
    }
    recover_verified(r, meta)
}

/// [`recover_from_store`] of a snapshot whose checksums the caller has
/// just verified in full ([`restart_point`] at a restart does).
pub(crate) fn recover_verified(r: &Replica, meta: &SnapshotMeta) -> Result<(), Error> {
    let applied = AppliedState {
        index: meta.index,
        term: meta.term,
        membership: meta.membership.clone(),
    };
    if meta.witness || r.config.is_witness {
        r.rsm.set_applied(applied);
        return Ok(());
    }
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

/// The snapshot a restarting replica recovers its state machine from: the
/// one the log storage recorded (`recorded`), or, when that one is damaged
/// (a checksum fails, a file is missing), the newest older valid one,
/// provided the log still holds every entry after it (`log_first_index`);
/// the state machine then re-applies those entries and ends where the
/// damaged snapshot would have put it. An empty result means the log holds
/// everything from index 1 and no snapshot is needed. When neither works
/// the replica cannot be restarted from this host's data: the error names
/// the damaged snapshots and says it must be rebuilt (docs/recovery.md).
/// A snapshot returned has been verified in full: recover it with
/// [`recover_verified`].
pub(crate) fn restart_point(
    host: &HostState,
    snapshots: &longship_storage::snapshot::SnapshotStore,
    recorded: &SnapshotMeta,
    log_first_index: Index,
) -> Result<SnapshotMeta, Error> {
    if recorded.is_empty() || recorded.witness {
        return Ok(recorded.clone());
    }
    let loaded = snapshots.load_for_restart_upto(
        recorded.index,
        log_first_index,
        longship_storage::snapshot::Verify::Full,
    )?;
    let (shard_id, replica_id) = (snapshots.shard(), snapshots.replica());
    let start = loaded.as_ref().map_or(Index(0), |l| l.info.meta.index);
    for s in loaded.iter().flat_map(|l| &l.skipped) {
        tracing::warn!(shard = shard_id.0, replica = replica_id.0, damaged = s.index.0, used = start.0,
            error = %s.error, "damaged snapshot at restart; starting from an older one and the log");
        if let Some(l) = &host.listener {
            l.snapshot_damaged(
                crate::events::SnapshotEvent {
                    shard_id,
                    replica_id,
                    index: s.index,
                },
                &s.error.to_string(),
            );
        }
    }
    Ok(match loaded {
        Some(l) if l.info.meta.index == recorded.index => recorded.clone(),
        Some(l) => l.info.meta,
        None => {
            tracing::warn!(
                shard = shard_id.0,
                replica = replica_id.0,
                recorded = recorded.index.0,
                "no usable snapshot at restart; the log holds every entry, the state machine replays it from the start"
            );
            SnapshotMeta::default()
        }
    })
}

/// Takes the next task of a replica's apply queue. A queue found empty
/// gives back capacity beyond a few slots: a burst (an election's
/// entries, a catch-up) would otherwise keep its peak allocation for the
/// replica's life, which for 10,000 mostly idle replicas per host was a
/// tenth of their memory.
fn pop_task(
    queue: &parking_lot::Mutex<std::collections::VecDeque<ApplyTask>>,
) -> Option<ApplyTask> {
    let mut q = queue.lock();
    let task = q.pop_front();
    if task.is_none() && q.capacity() > 4 {
        *q = std::collections::VecDeque::new();
    }
    task
}
