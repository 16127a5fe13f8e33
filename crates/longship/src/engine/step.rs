//! The step worker: drives the cores of its shards, persists their updates
//! with one log write per cycle, sends their messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use longship_raft::codec::decode_config_change;
use longship_raft::{
    ConfigChangeRejected, Entry, EntryType, MESSAGE_BATCH_VERSION, Message, MessageBatch,
    MessageType, ProposalError, ReplicaId,
};
use longship_storage::logdb::LogUpdate;

use super::apply::ApplyWorker;
use super::{
    complete_reads, config_change_error, fail_replica_with, proposal_error, report_snapshot_status,
};
use crate::error::Error;
use crate::host::{HostState, SnapshotJob};
use crate::metrics::Metrics;
use crate::replica::{ApplyTask, Command, CoreState, Replica, ReplicaRef};

/// Ticks without traffic, in election timeouts, before a shard quiesces.
const QUIESCE_ELECTION_TIMEOUTS: u64 = 10;

/// Replicas one step cycle drives at most; the others stay ready for the
/// next cycle (taken round the shard ids, so none waits more than a few
/// cycles). A cycle holds every update and outgoing message of its
/// replicas until its write is done: unbounded, 30,000 replicas electing
/// at once gathered 22 MB of messages in one cycle (kept by the allocator
/// afterwards), and a cycle that long outlasts an election timeout.
const MAX_REPLICAS_PER_CYCLE: usize = 512;

/// How many of the `queued` ticks a replica's core takes in one cycle.
///
/// A leader (as the cycle starts) takes them all: its lease reads and
/// CheckQuorum count real time. Any other replica takes at most a fifth of
/// an election timeout per cycle (at least one). When a worker's cycle
/// takes longer than an election timeout (thousands of shards electing at
/// once on a loaded host), each candidate would otherwise take a whole
/// timeout's worth of ticks before the vote answers queued behind them,
/// campaign again, and ignore the answers as stale: starting 5,000 shards
/// × 3 replicas at once elected 18 leaders in 110 s. Capped, a follower's
/// or candidate's clock runs slower while its worker is overloaded, which
/// only delays its election: the leader's lease assumes that followers
/// wait at least an election timeout after hearing from it, and a slower
/// follower clock waits longer. A replica that wins during the cycle takes
/// the rest of the cycle's ticks capped; they all came before its first
/// heartbeat leaves, at the end of the cycle, so no lease counts them.
fn ticks_to_take(leader: bool, election_rtt: u64, queued: u64) -> u64 {
    if leader {
        queued
    } else {
        queued.min((election_rtt / 5).max(1))
    }
}

// ---------------------------------------------------------------- step

/// Drives the cores of the shards of one step worker.
pub(crate) struct StepWorker {
    pub(crate) host: Arc<HostState>,
    pub(crate) id: usize,
}

impl StepWorker {
    /// One cycle: step every ready replica, then one persist for all of them.
    pub(crate) fn run_once(&self) -> bool {
        let did = {
            let _cycle = self.host.step_busy[self.id].lock();
            self.cycle()
        };
        if did {
            self.write_after_cycle();
        }
        did
    }

    /// Runs one cycle unless another thread is running one of this worker
    /// (then returns false at once: that thread will see what is marked
    /// ready when its cycle ends). Whether a cycle ran.
    pub(crate) fn try_run_once(&self) -> bool {
        {
            let Some(_cycle) = self.host.step_busy[self.id].try_lock() else {
                return false;
            };
            self.cycle();
        }
        self.write_after_cycle();
        true
    }

    /// Asynchronous log writes, threaded mode: who writes what a cycle
    /// queued. With more of its shards ready, the worker goes on stepping
    /// and the log writer thread writes meanwhile (woken here). With
    /// nothing else to do, the thread writes it itself, as a synchronous
    /// cycle would: waking the writer would only add a hand-off while this
    /// thread waited anyway. (A writer round already running takes it next.)
    fn write_after_cycle(&self) {
        let host = &self.host;
        if !host.cfg.async_log_writes
            || !host.step_on_receive.load(Ordering::Acquire)
            || super::LogWriter::in_round()
            || host.writes.is_empty()
        {
            return;
        }
        if host.step_ready[self.id].is_empty() {
            let writer = super::LogWriter { host: host.clone() };
            // A round can queue more than it wrote (the cycles it ran for
            // replicas its writes made ready): the writer thread takes those.
            if writer.try_run_once() && host.writes.is_empty() {
                return;
            }
        }
        host.writes.notify();
    }

    /// The body of a cycle; the caller holds `step_busy[self.id]`.
    fn cycle(&self) -> bool {
        let host = &self.host;
        let ready = host.step_ready[self.id].take_up_to(MAX_REPLICAS_PER_CYCLE);
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
            // A panic while stepping one replica (a broken invariant, a bug)
            // fails that replica, not the worker and its other shards.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut core = r.core.lock();
                // Term and vote as of the last advance: what is durable.
                let durable = core.raft.hard_state();
                self.feed_inputs(&r, &mut core, &mut extra);
                let mut u = core.raft.has_update().then(|| core.raft.get_update());
                // A membership change takes effect when applied, so this
                // replica's commit index must be durable past it first:
                // restarted with an older commit index, it would see the
                // change as uncommitted, campaign in the membership before
                // it (several changes back, possibly), and win with votes
                // that no longer count (two leaders in one term: the
                // master's simulator found it). With the commit index
                // durable, a restarted replica re-applies the change
                // before it may campaign (`campaign_start`).
                // (With asynchronous writes the core keeps this rule itself:
                // it hands out a config change only once a synced write of
                // its commit index is durable.)
                if let Some(u) = u.as_mut()
                    && !host.cfg.async_log_writes
                    && u.committed_entries.iter().any(Entry::is_config_change)
                {
                    u.hard_state = Some(core.raft.hard_state());
                }
                // Committed entries held back until the state machine
                // catches up: the apply worker wakes us when it has applied some.
                r.apply_throttled
                    .store(core.raft.apply_throttled(), Ordering::Release);
                let storage_error = core.raft.storage_error().map(|e| e.to_string());
                (durable, u, storage_error)
            }));
            match stepped {
                // The log storage could not give this replica its entries
                // (a read error, corruption): the core is inert from now on;
                // the replica fails alone, the worker's other shards go on.
                // What the update asks to persist is still consistent, but
                // nothing of it is needed any more.
                Ok((_, _, Some(e))) => {
                    fail_replica_with(host, &r, format!("log storage read failed: {e}"))
                }
                Ok((durable, Some(u), None)) => {
                    must_sync |= !u.entries.is_empty()
                        || u.committed_entries.iter().any(Entry::is_config_change)
                        || u.snapshot.is_some()
                        || u.recovery_cleared
                        || u.hard_state
                            .is_some_and(|hs| hs.term != durable.term || hs.vote != durable.vote);
                    work.push((r.clone(), u));
                }
                Ok((_, None, None)) => {}
                Err(p) => fail_replica(host, &r, "stepping", &*p),
            }
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
            self.release_before_write(r, u);
        }
        if host.cfg.async_log_writes {
            // The log writer persists the cycle's updates, sends what waits
            // for them and reports them to the cores (engine/write.rs);
            // this worker goes on stepping meanwhile.
            let threaded = host.step_on_receive.load(Ordering::Acquire);
            host.writes.push(work, threaded);
            return true;
        }
        if must_sync && !self.persist(&mut work) {
            return true;
        }
        for shard in self.complete_writes(work) {
            host.mark_step(shard);
        }
        true
    }

    /// Writes what `work`'s updates ask to persist with one log write (one
    /// fsync), moving their entries out (`persisted` needs only the
    /// updates' write tokens). Returns false if the write failed: what is
    /// on disk is then unknown, so nothing that depends on it may leave and
    /// no later write of these replicas may count as durable; every replica
    /// of `work` is failed. Shared by the synchronous cycle and the log
    /// writer (engine/write.rs).
    pub(super) fn persist(&self, work: &mut [(ReplicaRef, longship_raft::Update)]) -> bool {
        let host = &self.host;
        let mut updates: Vec<LogUpdate> = Vec::new();
        for (_, u) in work.iter_mut() {
            if u.needs_persist() {
                let entries = std::mem::take(&mut u.entries);
                let mut lu = LogUpdate::from_raft(u);
                lu.entries = entries;
                updates.push(lu);
            }
        }
        if updates.is_empty() {
            return true;
        }
        let n: usize = updates.iter().map(|u| u.entries.len()).sum();
        let started = std::time::Instant::now();
        let saved = host.logdb.save_raft_state(&updates);
        host.metrics.latencies.fsync.record(started.elapsed());
        if let Err(e) = saved {
            tracing::error!(error = %e, "log storage write failed; stopping the replicas of this batch");
            for (r, _) in work.iter() {
                fail_replica_with(host, r, format!("log storage write failed: {e}"));
            }
            return false;
        }
        Metrics::add(&host.metrics.persist_batches, 1);
        Metrics::add(&host.metrics.entries_persisted, n as u64);
        true
    }

    /// After `work`'s write is durable: sends what waited for it, then
    /// completes each update ([`after_persist`](Self::after_persist)); a
    /// panic fails only its replica. Returns the shards that have more to
    /// do (to be marked ready).
    pub(super) fn complete_writes(
        &self,
        mut work: Vec<(ReplicaRef, longship_raft::Update)>,
    ) -> Vec<longship_raft::ShardId> {
        let mut late: Vec<(&Replica, Message)> = Vec::new();
        for (r, u) in &mut work {
            late.extend(
                std::mem::take(&mut u.persisted_messages)
                    .into_iter()
                    .map(|m| (&**r, m)),
            );
        }
        self.send(late);
        let mut ready = Vec::new();
        for (r, u) in work {
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.after_persist(&r, u)
            }));
            match done {
                Ok(true) => ready.push(r.shard_id),
                Ok(false) => {}
                Err(p) => fail_replica(&self.host, &r, "advancing", &*p),
            }
        }
        ready
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
    fn feed_inputs(
        &self,
        r: &Replica,
        core: &mut CoreState,
        extra: &mut Vec<(ReplicaRef, Message)>,
    ) {
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
        let ticks = ticks_to_take(core.raft.is_leader(), r.config.election_rtt, inbox.ticks);
        let mut ticked = 0;
        for (at, m) in inbox.messages {
            for _ in ticked..at.min(ticks) {
                self.tick_core(r, core, extra);
            }
            ticked = ticked.max(at.min(ticks));
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
            let from = m.from;
            core.raft.step(m);
            // The leader is alive after all. (Read first: most messages come
            // from an unsuspected leader, and a store would dirty the line
            // API threads read.)
            if from == core.raft.leader_id() && r.leader_suspect.load(Ordering::Relaxed) {
                r.leader_suspect.store(false, Ordering::Release);
            }
        }
        for _ in ticked..ticks {
            self.tick_core(r, core, extra);
        }
        let invalid = core.raft.invalid_messages() - invalid_before;
        if invalid > 0 {
            Metrics::add(&host.metrics.messages_invalid, invalid);
            if let Some((from, msg_type, reason)) = core.raft.last_invalid() {
                // Correct peers send some messages from outside a replica's
                // view of the membership (a member behind a change, a
                // stale candidate): such drops are routine, the others are
                // a faulty or hostile peer.
                if reason == longship_raft::NOT_A_MEMBER {
                    tracing::debug!(
                        shard = r.shard_id.0,
                        replica = r.replica_id.0,
                        from = from.0,
                        ?msg_type,
                        dropped = invalid,
                        "dropped a message: {reason}"
                    );
                } else {
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
        }
        r.quiesced.store(core.quiesce.quiesced, Ordering::Relaxed);
        if inbox.ticks > 0 {
            r.pending.lock().expire(host.now());
        }
        if !inbox.proposals.is_empty() {
            let keys: Vec<u64> = inbox.proposals.iter().map(|e| e.key).collect();
            let n = keys.len() as u64;
            if let Err(e) = core.raft.propose(inbox.proposals) {
                let leader = known_leader(core.raft.leader_id());
                // Counted before the callers are answered (see
                // `fail_dropped_proposals`).
                let counter = if e == ProposalError::TooManyUncommittedBytes
                    || e == ProposalError::TooManyPendingReads
                {
                    &host.metrics.proposals_busy
                } else {
                    &host.metrics.proposals_dropped
                };
                Metrics::add(counter, n);
                let mut pending = r.pending.lock();
                for k in keys {
                    if let Some(p) = pending.proposals.remove(&k) {
                        p.completer.complete(Err(proposal_error(e, leader)));
                    }
                }
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
                    _ => proposal_error(e, known_leader(core.raft.leader_id())),
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
                pending.add_reads(
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
                let leader = known_leader(core.raft.leader_id());
                for (c, _) in pr.waiters {
                    c.complete(Err(proposal_error(e, leader)));
                }
            }
        }
        for c in inbox.commands {
            match c {
                // `drive` woke the core already: commands are activity.
                Command::Wake => {}
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
    pub(super) fn send(&self, msgs: Vec<(&Replica, Message)>) {
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
    fn release_before_write(&self, r: &ReplicaRef, u: &mut longship_raft::Update) {
        // A membership change waits for the write that makes the commit
        // index past it durable (see `cycle`); with asynchronous writes,
        // the core hands it out only once that write is durable, and it
        // must not wait behind later updates' entries.
        let cc_waits = !self.host.cfg.async_log_writes
            && u.committed_entries.iter().any(Entry::is_config_change);
        if u.snapshot.is_some() || cc_waits {
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
        let Some(guard) = super::ApplyLock::try_lock(&self.host, r) else {
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
                fail_replica_with(&self.host, r, e.to_string());
            }
        }
        None
    }

    /// Records the indexes of ready reads, fails dropped ones, and
    /// completes those already applied (taking them out of `u`).
    fn serve_reads(&self, r: &ReplicaRef, u: &mut longship_raft::Update) {
        if !u.dropped_proposals.is_empty() {
            let leader = u.dropped_leader.or_else(|| known_leader(r.leader().0));
            self.fail_dropped_proposals(r, std::mem::take(&mut u.dropped_proposals), leader);
        }
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
        let leader = known_leader(r.leader().0);
        for ctx in std::mem::take(&mut u.dropped_reads) {
            if let Some(pr) = pending.reads.remove(&ctx) {
                for (c, _) in pr.waiters {
                    c.complete(Err(Error::Dropped { leader }));
                }
            }
        }
        complete_reads(&self.host, &mut pending, applied);
    }

    /// Answers the proposals this replica forwarded that died where they
    /// arrived (`ProposeDropped`): they are in no log, so their callers
    /// learn it now rather than at their timeout.
    fn fail_dropped_proposals(
        &self,
        r: &ReplicaRef,
        dropped: Vec<(Entry, ProposalError)>,
        leader: Option<ReplicaId>,
    ) {
        // The errors first, without the pending lock (the core lock is
        // taken before it elsewhere).
        let answers: Vec<(u64, Error)> = dropped
            .into_iter()
            .filter_map(|(ent, e)| {
                if e == ProposalError::Invalid && ent.entry_type == EntryType::ConfigChange {
                    // Say why, as for a change refused here; if this
                    // replica's view (lagging) has nothing against it, the
                    // caller waits as before (a retry then sees the
                    // membership that refused it).
                    let refused = decode_config_change(&ent.cmd)
                        .ok()
                        .and_then(|c| r.core.lock().raft.membership().check(&c).err())?;
                    return Some((ent.key, config_change_error(refused)));
                }
                Some((ent.key, proposal_error(e, leader)))
            })
            .collect();
        let mut pending = r.pending.lock();
        for (key, err) in answers {
            let counter = if matches!(err, Error::SystemBusy) {
                &self.host.metrics.proposals_busy
            } else {
                &self.host.metrics.proposals_dropped
            };
            // Counted before the caller is answered: a caller that reads
            // the metrics next sees its own request counted.
            if let Some(p) = pending.proposals.remove(&key) {
                Metrics::add(counter, 1);
                p.completer.complete(Err(err));
            } else if let Some(p) = pending.config_changes.remove(&key) {
                Metrics::add(counter, 1);
                p.completer.complete(Err(err));
            }
        }
    }

    /// After the write: hand a received snapshot (and what `release_before_write` left)
    /// to the apply worker, report leadership, and advance the core.
    /// Returns whether the replica has more to do (to be marked ready).
    pub(super) fn after_persist(&self, r: &ReplicaRef, mut u: longship_raft::Update) -> bool {
        let host = &self.host;
        let new_leader_elsewhere = u.leader_change.is_some_and(|l| l.leader_id != r.replica_id);
        if let Some(l) = u.leader_change {
            r.leader_suspect.store(false, Ordering::Release);
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
            tasks.push(ApplyTask::Snapshot(Box::new(s.clone())));
        }
        if !u.committed_entries.is_empty() {
            tasks.push(ApplyTask::Entries(std::mem::take(&mut u.committed_entries)));
        }
        if !tasks.is_empty() {
            r.apply_queue.lock().extend(tasks);
            host.mark_apply(r.shard_id);
        }
        self.serve_reads(r, &mut u);
        if new_leader_elsewhere {
            // Reads still waiting for their read index went to the old
            // leader, whose answer may never come.
            r.pending
                .lock()
                .drop_reads_without_index(u.leader_change.map(|l| l.leader_id));
        }
        let mut core = r.core.lock();
        core.raft.advance(&u);
        // What `release_before_write` applied in place: the core may hand out more.
        let applied = r.applied();
        if applied <= core.raft.log().committed() {
            core.raft.applied_to(applied);
        }
        core.raft.has_update()
    }
}

/// Fails a replica whose protocol work panicked; the worker goes on with its
/// other shards.
fn fail_replica(host: &HostState, r: &Replica, during: &str, payload: &(dyn std::any::Any + Send)) {
    let why = format!(
        "panicked while {during}: {}",
        crate::rsm::panic_message(payload)
    );
    fail_replica_with(host, r, why);
}

/// A leader id as a hint: `None` for no leader.
fn known_leader(id: ReplicaId) -> Option<ReplicaId> {
    (id != ReplicaId::NONE).then_some(id)
}
