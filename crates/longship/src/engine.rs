//! The workers: step (drive cores, persist, send), apply (state machines,
//! request completion) and snapshot (save, stream). Each has a `run_once`
//! that does one bounded round of work and returns whether it did any, so
//! threads loop over it in production and the simulator calls it directly.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use longship_raft::codec::{decode_config_change, encode_message};
use longship_raft::{
    ConfigChangeRejected, Entry, Index, MESSAGE_BATCH_VERSION, Message, MessageBatch, MessageType,
    ProposalError, ReplicaId, SnapshotMeta,
};
use longship_storage::logdb::Update as LogUpdate;
use longship_transport::SnapshotChunk;

use crate::error::Error;
use crate::host::{Host, SnapshotJob};
use crate::metrics::Metrics;
use crate::replica::{ApplyTask, Command, CoreState, Replica, ReplicaRef};
use crate::rsm::{Applied, AppliedState};
use crate::sm::SmResult;

/// Most apply tasks one replica gets per apply round (fairness between shards).
const APPLY_TASKS_PER_ROUND: usize = 64;
/// Snapshot stream chunk size.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Ticks without traffic, in election timeouts, before a shard quiesces.
const QUIESCE_ELECTION_TIMEOUTS: u64 = 10;

pub(crate) fn proposal_error(e: ProposalError) -> Error {
    match e {
        ProposalError::NoLeader | ProposalError::TransferInProgress | ProposalError::NotReady => {
            Error::Dropped
        }
        ProposalError::TooManyUncommittedBytes | ProposalError::TooManyPendingReads => {
            Error::SystemBusy
        }
        ProposalError::PendingConfigChange => Error::PendingConfigChange,
        ProposalError::Invalid => Error::Rejected(
            "the leader found it invalid (a membership change the current membership refuses, \
             or a transfer to a replica that cannot lead)"
                .into(),
        ),
    }
}

/// The API error of a config change the membership refuses.
fn config_change_error(e: ConfigChangeRejected) -> Error {
    match e {
        ConfigChangeRejected::Removed(id) => Error::ReplicaRemoved(id),
        ConfigChangeRejected::Stale { based_on, current } => {
            Error::StaleConfigChange { based_on, current }
        }
        other => Error::Rejected(other.to_string()),
    }
}

// ---------------------------------------------------------------- step

/// Drives the cores of the shards of one step worker.
pub(crate) struct StepWorker {
    pub(crate) host: Arc<Host>,
    pub(crate) id: usize,
}

impl StepWorker {
    /// One cycle: step every ready replica, then one persist for all of them.
    pub(crate) fn run_once(&self) -> bool {
        let _cycle = self.host.step_busy[self.id].lock();
        self.cycle()
    }

    /// Runs one cycle unless another thread is running one of this worker
    /// (then returns false at once: that thread will see what is marked
    /// ready when its cycle ends). Whether a cycle ran.
    pub(crate) fn try_run_once(&self) -> bool {
        let Some(_cycle) = self.host.step_busy[self.id].try_lock() else {
            return false;
        };
        self.cycle();
        true
    }

    /// The body of a cycle; the caller holds `step_busy[self.id]`.
    fn cycle(&self) -> bool {
        let host = &self.host;
        let ready = host.step_ready[self.id].take();
        if ready.is_empty() {
            return false;
        }
        Metrics::add(&host.metrics.step_cycles, 1);
        let mut work: Vec<(ReplicaRef, longship_raft::Update)> = Vec::new();
        let mut extra: Vec<(ReplicaRef, Message)> = Vec::new();
        // Whether this cycle has something that must be durable before what
        // depends on it: entries, a snapshot, a new term or vote. A hard
        // state whose only change is the commit index need not be (commit
        // is volatile state, Raft §5 Figure 2, relearnt from the leader
        // after a restart): a cycle with nothing else skips the write and
        // its fsync, and such hard states ride along with the next write.
        let mut must_sync = false;
        for shard in ready {
            let Some(r) = host.replica(shard) else {
                continue;
            };
            if r.is_closed() || r.failed.lock().is_some() {
                continue;
            }
            let mut core = r.core.lock();
            // Term and vote as of the last advance: what is durable.
            let durable = core.raft.hard_state();
            self.drive(&r, &mut core, &mut extra);
            if core.raft.has_update() {
                let u = core.raft.get_update();
                must_sync |= !u.entries.is_empty()
                    || u.snapshot.is_some()
                    || u.hard_state
                        .is_some_and(|hs| hs.term != durable.term || hs.vote != durable.vote);
                work.push((r.clone(), u));
            }
            // Committed entries held back until the state machine catches
            // up: the apply worker wakes us when it has applied some.
            r.apply_throttled
                .store(core.raft.apply_throttled(), Ordering::Release);
        }
        // Leader replication leaves before the local write (thesis §10.2.1).
        // Messages and entries are moved, not cloned, on their way out.
        let mut early: Vec<(&Replica, Message)> = extra
            .iter_mut()
            .map(|(r, m)| (&**r, std::mem::take(m)))
            .collect();
        for (r, u) in &mut work {
            early.extend(
                std::mem::take(&mut u.messages)
                    .into_iter()
                    .map(|m| (&**r, m)),
            );
        }
        self.send(early);
        for (r, u) in &mut work {
            self.hand_on(r, u);
        }
        let mut updates: Vec<LogUpdate> = Vec::new();
        // Which `work` item each of `updates` came from.
        let mut persisted: Vec<usize> = Vec::new();
        if must_sync {
            for (i, (_, u)) in work.iter_mut().enumerate() {
                if u.needs_persist() {
                    let entries = std::mem::take(&mut u.entries);
                    let mut lu = LogUpdate::from_raft(u);
                    lu.entries = entries;
                    updates.push(lu);
                    persisted.push(i);
                }
            }
        }
        if !updates.is_empty() {
            let n: usize = updates.iter().map(|u| u.entries.len()).sum();
            if let Err(e) = host.logdb.save_raft_state(&updates) {
                // What is on disk is unknown: nothing that depends on this
                // write may leave. Stop the affected replicas.
                tracing::error!(error = %e, "log storage write failed; stopping the replicas of this batch");
                for (r, _) in &work {
                    *r.failed.lock() = Some(format!("log storage write failed: {e}"));
                    r.terminate_requests();
                }
                return true;
            }
            Metrics::add(&host.metrics.persist_batches, 1);
            Metrics::add(&host.metrics.entries_persisted, n as u64);
        }
        // `advance` marks the written entries stable: give them back.
        for (lu, i) in updates.into_iter().zip(persisted) {
            work[i].1.entries = lu.entries;
        }
        let mut late: Vec<(&Replica, Message)> = Vec::new();
        for (r, u) in &mut work {
            late.extend(
                std::mem::take(&mut u.persisted_messages)
                    .into_iter()
                    .map(|m| (&**r, m)),
            );
        }
        self.send(late);
        for (r, u) in work {
            self.after_persist(&r, u);
        }
        true
    }

    /// One tick of a replica's core, unless it is quiesced; a leader that
    /// goes quiet tells its followers.
    fn tick_core(&self, r: &Replica, core: &mut CoreState, extra: &mut Vec<(ReplicaRef, Message)>) {
        if r.config.quiesce {
            let threshold = r.config.election_rtt * QUIESCE_ELECTION_TIMEOUTS;
            core.quiesce.idle_ticks += 1;
            if !core.quiesce.quiesced && core.quiesce.idle_ticks >= threshold {
                core.quiesce.quiesced = true;
                if core.raft.is_leader() {
                    // Followers go quiet at once instead of timing out.
                    let me = core.raft.id();
                    for to in core.raft.membership().all_members().filter(|&id| id != me) {
                        let m = Message {
                            term: core.raft.term(),
                            ..Message::new(MessageType::Quiesce, r.shard_id, me, to)
                        };
                        if let Some(rr) = self.host.replica(r.shard_id) {
                            extra.push((rr, m));
                        }
                    }
                }
            }
            if core.quiesce.quiesced {
                return;
            }
        }
        core.raft.tick();
    }

    /// Feeds a replica's queued inputs to its core.
    fn drive(&self, r: &Replica, core: &mut CoreState, extra: &mut Vec<(ReplicaRef, Message)>) {
        let host = &self.host;
        let inbox = std::mem::take(&mut *r.inbox.lock());
        let active = !inbox.proposals.is_empty()
            || !inbox.reads.is_empty()
            || !inbox.config_changes.is_empty()
            || !inbox.commands.is_empty();
        if active {
            core.quiesce.wake();
        }
        let invalid_before = core.raft.invalid_messages();
        // Ticks and messages in the order they arrived: after a stalled
        // cycle (a slow fsync), a follower must not take all the ticks of
        // the stall after the leader's heartbeats that came meanwhile, or
        // it would time out and campaign against a live leader.
        let mut ticked = 0;
        for (at, m) in inbox.messages {
            for _ in ticked..at.min(inbox.ticks) {
                self.tick_core(r, core, extra);
            }
            ticked = ticked.max(at.min(inbox.ticks));
            match m.msg_type {
                MessageType::Heartbeat | MessageType::HeartbeatResp => {}
                MessageType::Quiesce => {
                    // Only the leader we follow in its term may silence us:
                    // a quiesced follower stops counting election ticks.
                    if r.config.quiesce
                        && !core.raft.is_leader()
                        && m.from == core.raft.leader_id()
                        && m.term == core.raft.term()
                    {
                        core.quiesce.quiesced = true;
                    }
                    continue;
                }
                _ => core.quiesce.wake(),
            }
            core.raft.step(m);
        }
        for _ in ticked..inbox.ticks {
            self.tick_core(r, core, extra);
        }
        let invalid = core.raft.invalid_messages() - invalid_before;
        if invalid > 0 {
            Metrics::add(&host.metrics.messages_invalid, invalid);
            if let Some((from, msg_type, reason)) = core.raft.last_invalid() {
                tracing::error!(
                    shard = r.shard_id.0,
                    replica = r.replica_id.0,
                    from = from.0,
                    ?msg_type,
                    dropped = invalid,
                    "dropped invalid message: {reason}"
                );
            }
        }
        r.quiesced.store(core.quiesce.quiesced, Ordering::Relaxed);
        if inbox.ticks > 0 {
            r.pending.lock().expire(host.now());
        }
        if !inbox.proposals.is_empty() {
            let keys: Vec<u64> = inbox.proposals.iter().map(|e| e.key).collect();
            let n = keys.len() as u64;
            if let Err(e) = core.raft.propose(inbox.proposals) {
                let mut pending = r.pending.lock();
                for k in keys {
                    if let Some(p) = pending.proposals.remove(&k) {
                        p.completer.complete(Err(proposal_error(e)));
                    }
                }
                let counter = if matches!(proposal_error(e), Error::SystemBusy) {
                    &host.metrics.proposals_busy
                } else {
                    &host.metrics.proposals_dropped
                };
                Metrics::add(counter, n);
            }
        }
        for cc in inbox.config_changes {
            let (key, cmd) = (cc.key, cc.cmd.clone());
            // Removals are permanent, so even a follower's view suffices to
            // refuse a removed id; forwarded, the leader would drop the change
            // without an answer and the caller would only see a timeout.
            let removed = decode_config_change(&cmd).ok().and_then(|c| {
                match core.raft.membership().check(&c) {
                    Err(ConfigChangeRejected::Removed(id)) => Some(id),
                    _ => None,
                }
            });
            if let Some(id) = removed {
                if let Some(p) = r.pending.lock().config_changes.remove(&key) {
                    p.completer.complete(Err(Error::ReplicaRemoved(id)));
                }
                continue;
            }
            if let Err(e) = core.raft.propose(vec![cc]) {
                // Say why an invalid change is refused (e.g. a removed id).
                let refused = decode_config_change(&cmd)
                    .ok()
                    .and_then(|c| core.raft.membership().check(&c).err());
                let err = match refused {
                    Some(rejected) if e == ProposalError::Invalid => config_change_error(rejected),
                    _ => proposal_error(e),
                };
                if let Some(p) = r.pending.lock().config_changes.remove(&key) {
                    p.completer.complete(Err(err));
                }
            }
        }
        if !inbox.reads.is_empty() {
            let ctx = host.random_id();
            let mut pending = r.pending.lock();
            if pending.closed {
                for (c, _) in inbox.reads {
                    c.complete(Err(Error::ShardClosed));
                }
            } else {
                pending.reads.insert(
                    ctx,
                    crate::replica::PendingRead {
                        waiters: inbox.reads,
                        index: None,
                    },
                );
            }
            drop(pending);
            if let Err(e) = core.raft.read_index(ctx)
                && let Some(pr) = r.pending.lock().reads.remove(&ctx)
            {
                for (c, _) in pr.waiters {
                    c.complete(Err(proposal_error(e)));
                }
            }
        }
        for c in inbox.commands {
            match c {
                Command::Transfer(target) => {
                    if let Err(e) = core.raft.transfer_leader(target) {
                        tracing::info!(shard = %r.shard_id, %target, error = %e, "leader transfer not started");
                    }
                }
            }
        }
        let applied = r.applied();
        if applied <= core.raft.log().committed() {
            core.raft.applied_to(applied);
        }
        let m = core.raft.membership();
        if m.config_change_id.0 != r.addresses_version.load(Ordering::Acquire)
            || r.addresses.read().is_empty()
        {
            let mut addrs = r.addresses.write();
            addrs.clear();
            for id in m.all_members() {
                if let Some(a) = m.address(id) {
                    addrs.insert(id, a.to_string());
                }
            }
            r.addresses_version
                .store(m.config_change_id.0, Ordering::Release);
        }
    }

    /// Sends messages, batched per destination host. Snapshots go to the
    /// snapshot workers to be streamed.
    fn send(&self, msgs: Vec<(&Replica, Message)>) {
        if msgs.is_empty() {
            return;
        }
        let host = &self.host;
        let mut by_addr: BTreeMap<String, Vec<Message>> = BTreeMap::new();
        for (r, m) in msgs {
            let Some(addr) = host.resolve(r, m.to) else {
                tracing::debug!(shard = %m.shard_id, to = %m.to, "no address for message target; dropped");
                continue;
            };
            if m.msg_type == MessageType::InstallSnapshot
                && !m.snapshot.as_ref().is_some_and(|s| s.witness)
            {
                let job = SnapshotJob::Stream {
                    message: Box::new(m.clone()),
                    address: addr,
                };
                if !host.push_snapshot_job(job) {
                    report_snapshot_status(host, &m, true);
                }
                continue;
            }
            by_addr.entry(addr).or_default().push(m);
        }
        for (addr, messages) in by_addr {
            let n = messages.len() as u64;
            let targets: Vec<(longship_raft::ShardId, ReplicaId, ReplicaId)> = messages
                .iter()
                .map(|m| (m.shard_id, m.to, m.from))
                .collect();
            // A witness's snapshot (metadata only) travels in the batch,
            // with no stream to report its outcome: the leader waits in
            // the snapshot state for a status, so give it one (as a
            // stream's end does). Sent, it then probes, and sends the
            // snapshot again if the message was lost on the way.
            let witness_snapshots: Vec<Message> = messages
                .iter()
                .filter(|m| m.msg_type == MessageType::InstallSnapshot)
                .cloned()
                .collect();
            let batch = MessageBatch {
                deployment_id: host.cfg.deployment_id,
                source_address: host.cfg.raft_address.clone(),
                bin_ver: MESSAGE_BATCH_VERSION,
                messages,
            };
            let res = host.transport.send(&addr, batch);
            for m in &witness_snapshots {
                report_snapshot_status(host, m, res.is_err());
            }
            match res {
                Ok(()) => Metrics::add(&host.metrics.messages_sent, n),
                Err(longship_transport::SendError::Unreachable(_)) => {
                    // Leaders stop pipelining to a peer that cannot be reached.
                    for (shard, to, from) in targets {
                        let m = Message::new(MessageType::Unreachable, shard, to, from);
                        host.deliver_local(m);
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Before the cycle's write: hands committed entries to the apply
    /// worker and serves reads whose index is known. Neither depends on
    /// this write: the core hands out only committed entries its durable
    /// log already holds (`RaftLog::take_next_committed`), and a read index
    /// is confirmed by a quorum's heartbeat answers, not by local storage;
    /// so they need not wait for this cycle's fsync. An update that
    /// installs a snapshot keeps everything for after the write.
    fn hand_on(&self, r: &ReplicaRef, u: &mut longship_raft::Update) {
        if u.snapshot.is_some() {
            return;
        }
        if !u.committed_entries.is_empty() {
            let entries = std::mem::take(&mut u.committed_entries);
            if let Some(entries) = self.apply_inline(r, entries) {
                r.apply_queue.lock().push_back(ApplyTask::Entries(entries));
                self.host.mark_apply(r.shard_id);
            }
        }
        self.serve_reads(r, u);
    }

    /// Applies a small committed batch here, in the step worker, when
    /// nothing older waits for the apply worker and no snapshot save holds
    /// the state machine: the hand-off to an apply thread (a wake-up each
    /// way) costs more than applying a few small entries. Returns the
    /// entries if they must go to the apply worker instead. The order of
    /// applies is kept: only this step worker queues apply tasks for the
    /// replica, and under the apply lock an empty queue means nothing
    /// earlier is outstanding.
    fn apply_inline(&self, r: &ReplicaRef, entries: Vec<Entry>) -> Option<Vec<Entry>> {
        let max = r.config.max_inline_apply_bytes;
        if max == 0 || r.config.is_witness {
            return Some(entries);
        }
        let bytes: u64 = entries.iter().map(|e| e.cmd.len() as u64 + 64).sum();
        if bytes > max {
            return Some(entries);
        }
        let Some(guard) = r.apply_lock.try_lock() else {
            return Some(entries);
        };
        if !r.apply_queue.lock().is_empty() {
            return Some(entries);
        }
        let applier = ApplyWorker {
            host: self.host.clone(),
            id: 0,
        };
        let res = applier.apply_entries(r, &entries);
        drop(guard);
        Metrics::add(&self.host.metrics.inline_applies, 1);
        match res {
            Ok(changed) => {
                if changed {
                    self.host.mark_step(r.shard_id);
                }
                applier.maybe_schedule_snapshot(r);
            }
            Err(e) => {
                tracing::error!(shard = %r.shard_id, replica = %r.replica_id, error = %e, "replica failed");
                *r.failed.lock() = Some(e.to_string());
                r.terminate_requests();
            }
        }
        None
    }

    /// Records the indexes of ready reads, fails dropped ones, and
    /// completes those already applied (taking them out of `u`).
    fn serve_reads(&self, r: &ReplicaRef, u: &mut longship_raft::Update) {
        if u.ready_reads.is_empty() && u.dropped_reads.is_empty() {
            return;
        }
        // Applied index read under the lock: the apply worker stores it
        // before it takes the lock to complete reads, so either it sees
        // the index set here or this sees its applied index. Read before
        // the lock, a read could miss both and wait for the next apply.
        let mut pending = r.pending.lock();
        let applied = r.applied();
        for rs in std::mem::take(&mut u.ready_reads) {
            if let Some(pr) = pending.reads.get_mut(&rs.context) {
                pr.index = Some(rs.index);
            }
        }
        for ctx in std::mem::take(&mut u.dropped_reads) {
            if let Some(pr) = pending.reads.remove(&ctx) {
                for (c, _) in pr.waiters {
                    c.complete(Err(Error::Dropped));
                }
            }
        }
        complete_reads(&self.host, &mut pending, applied);
    }

    /// After the write: hand a received snapshot (and what `hand_on` left)
    /// to the apply worker, report leadership, and advance the core.
    fn after_persist(&self, r: &ReplicaRef, mut u: longship_raft::Update) {
        let host = &self.host;
        if let Some(l) = u.leader_change {
            r.leader_id.store(l.leader_id.0, Ordering::Release);
            r.leader_term.store(l.term.0, Ordering::Release);
            if l.leader_id == r.replica_id {
                Metrics::add(&host.metrics.elections_won, 1);
            }
            if let Some(listener) = &host.listener {
                listener.leader_updated(crate::events::LeaderEvent {
                    shard_id: r.shard_id,
                    replica_id: r.replica_id,
                    leader_id: l.leader_id,
                    term: l.term,
                });
            }
        }
        let mut tasks = Vec::new();
        if let Some(s) = &u.snapshot {
            tasks.push(ApplyTask::Snapshot(s.clone()));
        }
        if !u.committed_entries.is_empty() {
            tasks.push(ApplyTask::Entries(std::mem::take(&mut u.committed_entries)));
        }
        if !tasks.is_empty() {
            r.apply_queue.lock().extend(tasks);
            host.mark_apply(r.shard_id);
        }
        self.serve_reads(r, &mut u);
        let mut core = r.core.lock();
        core.raft.advance(&u);
        // What `hand_on` applied in place: the core may hand out more.
        let applied = r.applied();
        if applied <= core.raft.log().committed() {
            core.raft.applied_to(applied);
        }
        if core.raft.has_update() {
            host.mark_step(r.shard_id);
        }
    }
}

/// Completes reads whose index is applied.
pub(crate) fn complete_reads(host: &Host, pending: &mut crate::replica::Pending, applied: Index) {
    pending.reads.retain(|_, pr| match pr.index {
        Some(index) if index <= applied => {
            for (c, _) in pr.waiters.drain(..) {
                c.complete(Ok(index));
                Metrics::add(&host.metrics.reads, 1);
            }
            false
        }
        _ => true,
    });
}

fn report_snapshot_status(host: &Host, m: &Message, failed: bool) {
    let status = Message {
        reject: failed,
        ..Message::new(MessageType::SnapshotStatus, m.shard_id, m.to, m.from)
    };
    host.deliver_local(status);
}

// ---------------------------------------------------------------- apply

/// Applies committed entries of the shards of one apply worker.
pub(crate) struct ApplyWorker {
    pub(crate) host: Arc<Host>,
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
                    tracing::error!(shard = %r.shard_id, replica = %r.replica_id, error = %e, "replica failed");
                    *r.failed.lock() = Some(e.to_string());
                    r.terminate_requests();
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
    fn apply_entries(&self, r: &Replica, entries: &[Entry]) -> Result<bool, Error> {
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

    fn maybe_schedule_snapshot(&self, r: &ReplicaRef) {
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
    r.snapshots.verify(meta.index)?;
    let (_info, mut reader) = r.snapshots.open_snapshot(meta.index)?;
    r.rsm
        .recover(&mut reader, applied, &r.stop)
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

// ---------------------------------------------------------------- snapshot

/// Saves and streams snapshots.
pub(crate) struct SnapshotWorker {
    pub(crate) host: Arc<Host>,
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
pub(crate) fn save_snapshot(host: &Host, r: &Replica) -> Result<Index, Error> {
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
fn stream_snapshot(host: &Host, m: &Message, address: &str) -> Result<(), Error> {
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
