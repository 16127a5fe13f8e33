//! The leader: proposals, replication with flow control, commit, ReadIndex,
//! leadership transfer and membership changes.

use super::{Raft, Role};
use crate::codec::decode_config_change;
use crate::entry::{Entry, EntryType};
use crate::ids::{Index, ReplicaId};
use crate::log_reader::{LogError, LogReader};
use crate::membership::{ConfigChange, ConfigChangeRejected};
use crate::message::{Message, MessageType};
use crate::progress::{Progress, ProgressState};
use crate::quorum;
use crate::update::{ProposalError, ReadState};

impl<L: LogReader> Raft<L> {
    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout() {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.check_quorum_active() {
                // Thesis §6.2: a leader that cannot reach a quorum steps down.
                self.become_follower(self.term, ReplicaId::NONE);
                return;
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.transfer_target = ReplicaId::NONE;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_rtt {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Whether a quorum (this leader included) was heard from since the
    /// last CheckQuorum round, that is within the last election timeout.
    fn quorum_recently_active(&self) -> bool {
        let me = self.id;
        quorum::has_quorum(&self.membership, |id| {
            id == me || self.progress.get(&id).is_some_and(|p| p.recent_active)
        })
    }

    /// Whether a quorum of voters and witnesses answered heartbeats sent
    /// recently enough that none of them can have voted for another leader
    /// yet. Two ticks of margin cover the phase difference between our
    /// clock and theirs (clock rates are assumed equal within that bound).
    fn quorum_in_lease(&self) -> bool {
        let me = self.id;
        let window = self.election_timeout().saturating_sub(2);
        let fresh = |acked: u64| acked > 0 && self.ticks < acked.saturating_add(window);
        quorum::has_quorum(&self.membership, |id| {
            id == me
                || self
                    .progress
                    .get(&id)
                    .is_some_and(|p| fresh(p.heartbeat_acked_at))
        })
    }

    /// CheckQuorum: whether a quorum was heard from since the last check;
    /// resets the activity flags.
    fn check_quorum_active(&mut self) -> bool {
        let active = self.quorum_recently_active();
        let me = self.id;
        for (id, pr) in self.progress.iter_mut() {
            if *id != me {
                pr.recent_active = false;
            }
        }
        active
    }

    // ----- proposals -----

    /// Proposes entries (their term and index are assigned by the leader).
    /// On a follower they are forwarded to the leader. Config-change
    /// entries go through [`propose_config_change`](Self::propose_config_change)'s checks.
    pub fn propose(&mut self, entries: Vec<Entry>) -> Result<(), ProposalError> {
        match self.role {
            Role::Leader => self.leader_propose(entries).map_err(|(e, _)| e),
            Role::Follower if !self.leader.is_none() => {
                let m = Message {
                    term: FORWARDED_TERM,
                    entries,
                    ..self.new_message(MessageType::Propose, self.leader)
                };
                self.send(m);
                Ok(())
            }
            _ => Err(ProposalError::NoLeader),
        }
    }

    /// Proposes a membership change (thesis §4.1).
    pub fn propose_config_change(&mut self, cc: &ConfigChange) -> Result<(), ProposalError> {
        let e = Entry {
            entry_type: EntryType::ConfigChange,
            cmd: crate::codec::encode_config_change(cc).into(),
            ..Entry::default()
        };
        self.propose(vec![e])
    }

    /// Appends proposed entries, or refuses them all (before changing
    /// anything) and hands them back.
    fn leader_propose(
        &mut self,
        mut entries: Vec<Entry>,
    ) -> Result<(), (ProposalError, Vec<Entry>)> {
        if !self.transfer_target.is_none() {
            return Err((ProposalError::TransferInProgress, entries));
        }
        if entries.is_empty() {
            return Ok(());
        }
        let bytes: u64 = entries.iter().map(Entry::payload_bytes).sum();
        let limit = self.cfg.max_uncommitted_bytes;
        if limit > 0
            && self.uncommitted_bytes > 0
            && self.uncommitted_bytes.saturating_add(bytes) > limit
        {
            return Err((ProposalError::TooManyUncommittedBytes, entries));
        }
        for i in 0..entries.len() {
            if entries[i].entry_type != EntryType::ConfigChange {
                continue;
            }
            if let Err(err) = self.check_config_change(&entries[i]) {
                if entries.len() == 1 {
                    return Err((err, entries));
                }
                // Inside a batch, a refused change becomes a no-op so its
                // neighbours still go through; its proposer times out.
                entries[i].entry_type = EntryType::NoOp;
                entries[i].cmd = bytes::Bytes::new();
                continue;
            }
            self.pending_config_change = self.log.last_index().plus(i as u64 + 1);
        }
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_add(bytes);
        self.append_entries(entries);
        self.broadcast_append();
        Ok(())
    }

    fn check_config_change(&self, e: &Entry) -> Result<(), ProposalError> {
        // Thesis §4.1 (and the fix in the raft-dev list, 2015): a leader
        // must commit an entry of its own term before changing membership.
        if self.log.term_or_zero(self.log.committed()) != self.term {
            return Err(ProposalError::NotReady);
        }
        if self.pending_config_change > self.log.applied() {
            return Err(ProposalError::PendingConfigChange);
        }
        let cc = decode_config_change(&e.cmd).map_err(|_| ProposalError::Invalid)?;
        self.membership
            .check(&cc)
            .map_err(|_| ProposalError::Invalid)
    }

    /// Appends entries to the leader's log, assigning term and index.
    pub(super) fn append_entries(&mut self, mut entries: Vec<Entry>) {
        let mut index = self.log.last_index();
        for e in entries.iter_mut() {
            index = index.next();
            e.term = self.term;
            e.index = index;
        }
        self.note_config_changes(&entries);
        self.log.append(&entries);
        // The leader's own acknowledgement comes with `advance`, once durable.
    }

    // ----- replication -----

    /// Every member but the leader itself.
    fn peers(&self) -> Vec<ReplicaId> {
        self.progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    pub(super) fn broadcast_append(&mut self) {
        for id in self.peers() {
            self.send_append(id, true);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let ctx = self.read_only.last_context().unwrap_or(0);
        self.broadcast_heartbeat_with(ctx);
    }

    fn broadcast_heartbeat_with(&mut self, context: u64) {
        for id in self.peers() {
            let commit = self.progress[&id].match_index.min(self.log.committed());
            let m = Message {
                commit,
                context,
                // Echoed in the answer: when the follower's lease started.
                log_index: Index(self.ticks),
                ..self.new_message(MessageType::Heartbeat, id)
            };
            self.send(m);
        }
    }

    /// Sends appends to `to` as flow control allows: one probe, or as many
    /// pipelined messages as the in-flight window takes. With `send_empty`,
    /// an empty append carries the commit index when nothing else is sent.
    fn send_append(&mut self, to: ReplicaId, send_empty: bool) {
        let max_msgs = self.cfg.max_inflight_msgs;
        let mut sent_any = false;
        for _ in 0..max_msgs {
            let Some(pr) = self.progress.get(&to) else {
                return;
            };
            if pr.is_paused() {
                return;
            }
            let next = pr.next_index;
            let last = self.log.last_index();
            if next > last && (sent_any || !send_empty) {
                return;
            }
            let prev = next.prev();
            let prev_term = self.log.term(prev);
            let ents = self
                .log
                .entries(next, last.next(), self.cfg.max_append_bytes);
            let (prev_term, ents) = match (prev_term, ents) {
                (Ok(t), Ok(e)) => (t, e),
                (Err(LogError::Compacted), _) | (_, Err(LogError::Compacted)) => {
                    self.send_snapshot(to);
                    return;
                }
                // A storage failure is kept in `storage_error` (the engine
                // fails this replica); nothing is sent.
                (Err(_), _) | (_, Err(_)) => return,
            };
            let witness = self.membership.is_witness(to);
            let ents: Vec<Entry> = if witness {
                ents.iter().map(Entry::to_witness).collect()
            } else {
                ents
            };
            let bytes: u64 = ents.iter().map(Entry::size_bytes).sum();
            let last_sent = ents.last().map(|e| e.index);
            // In pipelined replication an empty append whose previous entry
            // the follower is known to hold only carries the commit index:
            // no answer needed. A probe's is, and so is one sent because
            // the follower's match lags (its answer to the last entries was
            // lost: this answer is how the leader learns them, and an idle
            // shard would otherwise never commit them).
            let commit_only =
                ents.is_empty() && pr.state == ProgressState::Replicate && pr.match_index >= prev;
            let m = Message {
                log_index: prev,
                log_term: prev_term,
                commit: self.log.committed(),
                entries: ents,
                context: if commit_only {
                    crate::message::COMMIT_ONLY
                } else {
                    0
                },
                ..self.new_message(MessageType::Replicate, to)
            };
            self.send(m);
            sent_any = true;
            let pr = self.progress.get_mut(&to).expect("progress checked above");
            match pr.state {
                ProgressState::Replicate => {
                    if let Some(last_sent) = last_sent {
                        pr.optimistic_update(last_sent);
                        pr.inflights.add(last_sent, bytes);
                    } else {
                        return;
                    }
                }
                ProgressState::Probe => {
                    pr.probe_sent = true;
                    return;
                }
                ProgressState::Snapshot => unreachable!("paused"),
            }
        }
    }

    fn send_snapshot(&mut self, to: ReplicaId) {
        let mut snap = self.log.snapshot();
        if snap.is_empty() {
            self.log
                .record_storage_error(crate::log_reader::LogError::Storage(
                    "log compacted without a snapshot".to_string(),
                ));
            return;
        }
        snap.witness = self.membership.is_witness(to);
        let pr = self
            .progress
            .get_mut(&to)
            .expect("send_snapshot to a member");
        pr.become_snapshot(snap.index);
        let m = Message {
            snapshot: Some(snap),
            ..self.new_message(MessageType::InstallSnapshot, to)
        };
        self.send(m);
    }

    /// Raft §5.3, §5.4.2: commits the highest index replicated on a quorum
    /// of voters and witnesses, but only if it belongs to the current term.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let quorum_index = quorum::committed_index(&self.membership, |id| {
            progress.get(&id).map_or(Index(0), |p| p.match_index)
        });
        if quorum_index > self.log.committed() && self.log.term_or_zero(quorum_index) == self.term {
            self.log.commit_to(quorum_index);
            self.on_commit_in_term();
            return true;
        }
        false
    }

    /// The first commit of a term releases the reads that waited for it (thesis §6.4 step 1).
    fn on_commit_in_term(&mut self) {
        for (ctx, from) in std::mem::take(&mut self.reads_before_commit) {
            self.leader_read(ctx, from);
        }
    }

    fn committed_in_term(&self) -> bool {
        self.log.term_or_zero(self.log.committed()) == self.term
    }

    pub(super) fn step_leader(&mut self, m: Message) {
        if let Err(reason) = self.check_answer(&m) {
            self.drop_invalid(&m, reason);
            return;
        }
        match m.msg_type {
            MessageType::Propose => {
                let from = m.from;
                if let Err((e, entries)) = self.leader_propose(m.entries) {
                    self.drop_forwarded_proposal(from, &entries, e);
                }
            }
            MessageType::ReadIndex => self.leader_read_request(m.context, m.from),
            MessageType::TransferLeader => {
                let _ = self.leader_transfer(ReplicaId(m.hint.0));
            }
            MessageType::ReplicateResp => self.handle_append_resp(m),
            MessageType::HeartbeatResp => self.handle_heartbeat_resp(m),
            MessageType::SnapshotStatus => self.handle_snapshot_status(m),
            MessageType::Unreachable => {
                if let Some(pr) = self.progress.get_mut(&m.from)
                    && pr.state == ProgressState::Replicate
                {
                    pr.become_probe();
                }
            }
            MessageType::Replicate | MessageType::Heartbeat | MessageType::InstallSnapshot => {
                // Two leaders in one term: election safety is broken by
                // the sender (e.g. restarted on a wiped disk, so it forgot
                // its vote). Acting on it would overwrite our log; the
                // step worker drives other shards, so drop and report
                // instead of panicking.
                self.drop_invalid(&m, "leader message from another leader of the same term");
            }
            _ => {}
        }
    }

    fn handle_append_resp(&mut self, m: Message) {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&m.from) else {
            return;
        };
        pr.recent_active = true;
        // The follower's storage lost entries it had acknowledged
        // (docs/recovery.md): our match index for it may be too high. What
        // still matches ends at its hint, and below the index whose append
        // it rejected (the damage can bring back an older entry there, one
        // our log replaced). Lower the match index and probe from there.
        // Our commit index stays: it never decreases, and the follower's
        // vote is restricted until it holds what it lost again.
        let floor = m.hint.min(m.log_index.prev());
        if m.reject && m.context == crate::message::LOG_LOST && floor < pr.match_index {
            pr.forget_match_after(floor);
            self.send_append(m.from, false);
            return;
        }
        if m.reject {
            // Raft §5.3 with fast backtracking: find where our log may match.
            let (hint, _) = if m.hint_term.0 > 0 {
                self.log.find_conflict_by_term(m.hint, m.hint_term)
            } else {
                (m.hint, crate::ids::Term(0))
            };
            let pr = self.progress.get_mut(&m.from).expect("checked");
            if pr.maybe_decr_to(m.log_index, hint) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(m.from, false);
            }
            return;
        }
        let old_paused = pr.is_paused();
        if !pr.maybe_update(m.log_index) {
            if old_paused && pr.state == ProgressState::Probe {
                pr.probe_sent = false;
            }
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.match_index >= pr.pending_snapshot => pr.become_probe(),
            ProgressState::Replicate => pr.inflights.free_le(m.log_index),
            ProgressState::Snapshot => {}
        }
        let caught_up = pr.match_index == last;
        if self.maybe_commit() {
            self.broadcast_append();
        } else {
            // A follower that was paused missed the broadcast of the latest
            // commit index: send it (empty if nothing else is to be sent).
            self.send_append(m.from, old_paused);
        }
        if m.from == self.transfer_target && caught_up {
            self.send_timeout_now(m.from);
        }
    }

    fn handle_heartbeat_resp(&mut self, m: Message) {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&m.from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        pr.heartbeat_acked_at = pr.heartbeat_acked_at.max(m.log_index.0);
        if pr.match_index < last {
            // Appends may have been lost: free one slot of a full window and
            // send at least an empty append, which the follower rejects if it
            // misses entries, so replication resumes (as etcd raft does).
            if pr.state == ProgressState::Replicate && pr.inflights.full() {
                pr.inflights.free_first_one();
            }
            self.send_append(m.from, true);
        }
        if m.context == 0 {
            return;
        }
        let membership = &self.membership;
        let done = self.read_only.recv_ack(m.from, m.context, |acks| {
            quorum::has_quorum(membership, |id| acks.contains(&id))
        });
        for r in done {
            self.release_read(r.context, r.index, r.from);
        }
    }

    fn handle_snapshot_status(&mut self, m: Message) {
        let Some(pr) = self.progress.get_mut(&m.from) else {
            return;
        };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if m.reject {
            // Retry from scratch on the next probe.
            pr.pending_snapshot = Index(0);
        }
        pr.become_probe();
        // Wait for the follower's answer (or a heartbeat) before probing again.
        pr.probe_sent = true;
    }

    // ----- reads (thesis §6.4) -----

    /// Requests a linearizable read index. `context` identifies the request;
    /// it comes back in a [`ReadState`] (or in `dropped_reads`).
    pub fn read_index(&mut self, context: u64) -> Result<(), ProposalError> {
        match self.role {
            Role::Leader => {
                let queued = self.read_only.len() + self.reads_before_commit.len();
                if queued >= self.cfg.max_pending_reads {
                    return Err(ProposalError::TooManyPendingReads);
                }
                self.leader_read_request(context, self.id);
                Ok(())
            }
            Role::Follower if !self.leader.is_none() => {
                let m = Message {
                    context,
                    term: FORWARDED_TERM,
                    ..self.new_message(MessageType::ReadIndex, self.leader)
                };
                self.send(m);
                Ok(())
            }
            _ => Err(ProposalError::NoLeader),
        }
    }

    fn leader_read_request(&mut self, context: u64, from: ReplicaId) {
        if !self.committed_in_term() {
            if self.reads_before_commit.len() < self.cfg.max_pending_reads {
                self.reads_before_commit.push((context, from));
            }
            return;
        }
        self.leader_read(context, from);
    }

    fn leader_read(&mut self, context: u64, from: ReplicaId) {
        let index = self.log.committed();
        let single = self.membership.quorum_members().all(|id| id == self.id);
        // Thesis §6.4.1: the lease holds only while a quorum answered
        // heartbeats *sent* within the last election timeout (a follower
        // refuses other candidates for an election timeout after it heard
        // from us, §4.2.3; counting an answer from when it was sent, not
        // when it arrived, keeps a late answer from stretching the lease),
        // and not during a transfer, whose TimeoutNow lets the target be
        // elected at once; otherwise the read takes the heartbeat round.
        let lease = self.cfg.lease_read && self.transfer_target.is_none() && self.quorum_in_lease();
        if single || lease {
            self.release_read(context, index, from);
            return;
        }
        if self.read_only.len() >= self.cfg.max_pending_reads {
            return;
        }
        self.read_only.add(context, index, from, self.id);
        self.broadcast_heartbeat_with(context);
    }

    fn release_read(&mut self, context: u64, index: Index, from: ReplicaId) {
        if from == self.id {
            self.ready_reads.push(ReadState { index, context });
        } else {
            let m = Message {
                hint: index,
                context,
                ..self.new_message(MessageType::ReadIndexResp, from)
            };
            self.send(m);
        }
    }

    // ----- leadership transfer (thesis §3.10) -----

    /// Asks the shard to move leadership to `target`. On a follower the
    /// request is forwarded to the leader.
    pub fn transfer_leader(&mut self, target: ReplicaId) -> Result<(), ProposalError> {
        match self.role {
            Role::Leader => self.leader_transfer(target),
            Role::Follower if !self.leader.is_none() => {
                let m = Message {
                    hint: Index(target.0),
                    term: FORWARDED_TERM,
                    ..self.new_message(MessageType::TransferLeader, self.leader)
                };
                self.send(m);
                Ok(())
            }
            _ => Err(ProposalError::NoLeader),
        }
    }

    fn leader_transfer(&mut self, target: ReplicaId) -> Result<(), ProposalError> {
        if target == self.id {
            return Ok(());
        }
        // Only a voter can lead: never a witness, a non-voting or an unknown replica.
        if !self.membership.is_voter(target) || !self.progress.contains_key(&target) {
            return Err(ProposalError::Invalid);
        }
        if self.transfer_target == target {
            return Ok(());
        }
        self.transfer_target = target;
        // The transfer must finish within an election timeout.
        self.election_elapsed = 0;
        if self.progress[&target].match_index == self.log.last_index() {
            self.send_timeout_now(target);
        } else {
            self.send_append(target, false);
        }
        Ok(())
    }

    fn send_timeout_now(&mut self, to: ReplicaId) {
        let m = self.new_message(MessageType::TimeoutNow, to);
        self.send(m);
    }

    // ----- membership -----

    /// Applies a committed config change carried by the entry at `index`.
    /// Called by the state machine layer when it applies that entry, on
    /// every replica. A rejected change has no effect anywhere.
    pub fn apply_config_change(
        &mut self,
        cc: &ConfigChange,
        index: Index,
    ) -> Result<(), ConfigChangeRejected> {
        self.membership.apply(cc, index)?;
        let me = self.id;
        if self.role == Role::Leader {
            // Keep progress in step with the membership.
            let last = self.log.last_index();
            let (max_msgs, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
            for id in self.membership.all_members().collect::<Vec<_>>() {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(last.next(), max_msgs, max_bytes));
            }
            let members = &self.membership;
            self.progress.retain(|id, _| members.contains(*id));
            if !self.membership.is_voter(self.transfer_target) {
                self.transfer_target = ReplicaId::NONE;
            }
            if !self.membership.is_voter(me) {
                // A leader removed from the voters steps down once its removal is applied.
                self.become_follower(self.term, ReplicaId::NONE);
                return Ok(());
            }
            if self.maybe_commit() {
                self.broadcast_append();
            } else {
                self.broadcast_append_to_new();
            }
        }
        Ok(())
    }

    fn broadcast_append_to_new(&mut self) {
        let ids: Vec<ReplicaId> = self
            .progress
            .iter()
            .filter(|(id, p)| **id != self.id && p.match_index == Index(0) && !p.probe_sent)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send_append(id, true);
        }
    }
}

/// Term of messages that any leader may serve (forwarded proposals, reads, transfers).
pub(super) const FORWARDED_TERM: crate::ids::Term = crate::ids::Term(0);
