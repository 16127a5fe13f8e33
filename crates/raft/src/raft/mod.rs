//! The Raft state machine of one replica.
//!
//! Split by concern: this file holds the state, ticking, message dispatch by
//! term, and the `Update`/`advance` cycle; [`election`] holds campaigns and
//! votes; [`leader`] replication, commit, reads, transfers and config changes
//! on the leader; [`follower`] the handling of appends, heartbeats and snapshots.

mod election;
mod follower;
mod invariants;
mod leader;
mod validate;

pub use invariants::InvariantViolation;
pub use validate::{INDEX_MAX, InvalidReason, NOT_A_MEMBER, TERM_JUMP_MAX, TERM_MAX};

use std::collections::BTreeMap;

use crate::config::{ConfigError, RaftConfig};
use crate::entry::{Entry, EntryType, HardState, SnapshotMeta};
use crate::ids::{Index, ReplicaId, ShardId, Term};
use crate::log::RaftLog;
use crate::log_reader::LogReader;
use crate::membership::Membership;
use crate::message::{Message, MessageType};
use crate::progress::Progress;
use crate::read_only::ReadOnly;
use crate::recovery::RecoveryGuard;
use crate::rng::Rng;
use crate::update::{LeaderInfo, ProposalError, ReadState, Update, WriteToken};

/// The role a replica plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs a pre-vote round (thesis §9.6); its term has not changed.
    PreCandidate,
    /// Runs an election (Raft §5.2).
    Candidate,
    /// Leads the shard.
    Leader,
}

/// A snapshot of a replica's protocol state, for tests, checkers and ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub replica_id: ReplicaId,
    /// Current role.
    pub role: Role,
    /// Hard state in memory.
    pub hard_state: HardState,
    /// Known leader.
    pub leader_id: ReplicaId,
    /// Applied index.
    pub applied: Index,
    /// First available log index.
    pub first_index: Index,
    /// Last log index.
    pub last_index: Index,
    /// Current membership.
    pub membership: Membership,
}

/// The protocol core of one replica. See the crate documentation.
pub struct Raft<L: LogReader> {
    cfg: RaftConfig,
    id: ReplicaId,
    shard_id: ShardId,
    /// Current term; never decreases.
    term: Term,
    /// Vote in `term`.
    vote: ReplicaId,
    role: Role,
    leader: ReplicaId,
    log: RaftLog<L>,
    /// Membership as of the applied index (config changes take effect when applied).
    membership: Membership,
    /// Leader only: progress of every member, self included.
    progress: BTreeMap<ReplicaId, Progress>,
    /// Candidate/pre-candidate: votes received (true = granted).
    votes: BTreeMap<ReplicaId, bool>,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    /// Ticks since the replica started (from 1): the clock lease reads use.
    ticks: u64,
    randomized_election_timeout: u64,
    /// Leader: index of the newest config change appended; another may be
    /// proposed only once this one is applied.
    pending_config_change: Index,
    /// Leader: target of a leadership transfer in progress.
    transfer_target: ReplicaId,
    read_only: ReadOnly,
    /// Leader: reads that arrived before the leader committed an entry of its term.
    reads_before_commit: Vec<(u64, ReplicaId)>,
    /// Leader: payload bytes appended but not yet handed out as committed.
    uncommitted_bytes: u64,
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    ready_reads: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    rng: Rng,
    /// The hard state last handed out for persisting.
    prev_hard_state: HardState,
    /// The hard state known durable: term and vote of the newest write
    /// reported persisted; its commit index only from a write that had to
    /// be synced ([`WriteToken::must_sync`]). Messages of a term leave
    /// only once it is durable.
    durable_hs: HardState,
    /// The leader/term last reported in an update.
    prev_leader: LeaderInfo,
    /// Updates taken whose writes are not yet reported durable (at most one
    /// unless `async_storage_writes`).
    writes_in_flight: u64,
    /// An update that installs a snapshot was taken and is not yet durable:
    /// no further update is handed out until it is (a barrier).
    snapshot_in_flight: bool,
    /// Asynchronous writes: the committed config change that committed
    /// entries stopped before, because the durable commit index does not
    /// cover it yet.
    held_config_change: Option<Index>,
    /// The highest commit index handed out in a write that must be synced
    /// (durable once that write is reported persisted).
    synced_commit_handed_out: Index,
    /// Messages dropped because no correct peer could have sent them.
    invalid_messages: u64,
    /// Of `invalid_messages`, those dropped because the sender is not a member.
    non_member_messages: u64,
    /// The sender, type and reason of the last such message.
    last_invalid: Option<(ReplicaId, MessageType, InvalidReason)>,
    /// Replicas added by config changes in the log above the applied index,
    /// with the index of the (latest) change adding each.
    pending_members: BTreeMap<ReplicaId, Index>,
    /// Whether the durable log was scanned for `pending_members`.
    pending_members_scanned: bool,
    /// Forwarded proposals dropped where they arrived, with why.
    dropped_proposals: Vec<(Entry, ProposalError)>,
    /// The leader hint of the `ProposeDropped` answers in `dropped_proposals`.
    dropped_leader: Option<ReplicaId>,
    /// Set while this replica's storage could not vouch for its newest
    /// acknowledged data (protocol-aware recovery, [`RecoveryGuard`]).
    recovery_guard: Option<RecoveryGuard>,
}

impl<L: LogReader> Raft<L> {
    /// A replica restarting from its durable state: `hard_state` and the log
    /// from storage, `membership` as of `applied` (the snapshot's membership,
    /// or the initial members of a new shard; empty for a replica joining an
    /// existing shard, which waits to hear from the leader).
    pub fn new(
        cfg: RaftConfig,
        reader: L,
        hard_state: HardState,
        membership: Membership,
        applied: Index,
    ) -> Result<Raft<L>, ConfigError> {
        cfg.validate()?;
        let mut log = RaftLog::new(reader, hard_state.commit, applied);
        log.set_max_applying_bytes(cfg.max_apply_bytes);
        let mut r = Raft {
            id: cfg.replica_id,
            shard_id: cfg.shard_id,
            // Hash the replica id into the seed: SplitMix64 advances its
            // state by the golden-ratio constant, so seeding with
            // `seed ^ id * golden` made replicas' streams shifted copies of
            // each other, and replicas ticked together drew equal election
            // timeouts forever (split votes without end).
            rng: Rng::new(Rng::new(cfg.seed ^ Rng::new(cfg.replica_id.0).next_u64()).next_u64()),
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: ReplicaId::NONE,
            log,
            membership,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            ticks: 1,
            randomized_election_timeout: 0,
            pending_config_change: Index(0),
            transfer_target: ReplicaId::NONE,
            read_only: ReadOnly::default(),
            reads_before_commit: Vec::new(),
            uncommitted_bytes: 0,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            ready_reads: Vec::new(),
            dropped_reads: Vec::new(),
            prev_hard_state: hard_state,
            durable_hs: hard_state,
            prev_leader: LeaderInfo {
                leader_id: ReplicaId::NONE,
                term: hard_state.term,
            },
            writes_in_flight: 0,
            snapshot_in_flight: false,
            held_config_change: None,
            synced_commit_handed_out: hard_state.commit,
            invalid_messages: 0,
            non_member_messages: 0,
            last_invalid: None,
            pending_members: BTreeMap::new(),
            pending_members_scanned: false,
            recovery_guard: None,
            dropped_proposals: Vec::new(),
            dropped_leader: None,
            cfg,
        };
        let snap = r.log.snapshot();
        if !snap.is_empty() && snap.membership.config_change_id > r.membership.config_change_id {
            r.membership = snap.membership;
        }
        r.reset_randomized_election_timeout();
        Ok(r)
    }

    // ----- accessors -----

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The shard.
    pub fn shard_id(&self) -> ShardId {
        self.shard_id
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Known leader (`NONE` if unknown).
    pub fn leader_id(&self) -> ReplicaId {
        self.leader
    }

    /// Whether this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Membership as of the applied index.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The log.
    pub fn log(&self) -> &RaftLog<L> {
        &self.log
    }

    /// The log, mutably: for engines and tests that own the durable log
    /// (e.g. to compact a [`MemLog`](crate::MemLog)).
    pub fn log_reader_mut(&mut self) -> &mut L {
        self.log.reader_mut()
    }

    /// The configuration.
    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }

    /// Leader only: progress of each member.
    pub fn progress(&self) -> &BTreeMap<ReplicaId, Progress> {
        &self.progress
    }

    /// Target of a leadership transfer in progress.
    pub fn transfer_target(&self) -> ReplicaId {
        self.transfer_target
    }

    /// The in-memory hard state.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    /// A summary of the replica's state.
    pub fn status(&self) -> Status {
        Status {
            replica_id: self.id,
            role: self.role,
            hard_state: self.hard_state(),
            leader_id: self.leader,
            applied: self.log.applied(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            membership: self.membership.clone(),
        }
    }

    /// Whether a membership change this replica proposed as leader is in
    /// its log and not applied yet (the leader refuses another meanwhile).
    /// Always false on followers, which do not track it.
    pub fn has_pending_config_change(&self) -> bool {
        self.pending_config_change > self.log.applied()
    }

    /// Whether this replica may campaign: only voters (never witnesses,
    /// non-voting or removed replicas), and only while no
    /// [`RecoveryGuard`] holds.
    pub fn promotable(&self) -> bool {
        self.membership.is_voter(self.id) && self.recovery_guard.is_none()
    }

    /// Puts this replica under `guard` (merged with any guard it already
    /// runs under): until its log provably holds every entry it may have
    /// acknowledged before its storage was damaged, it grants no votes or
    /// pre-votes and never campaigns (docs/recovery.md). Called by the
    /// engine at start with the guard its storage reported.
    pub fn set_recovery_guard(&mut self, guard: RecoveryGuard) {
        let merged = match self.recovery_guard {
            Some(g) => g.merge(guard),
            None => guard,
        };
        self.recovery_guard = Some(merged);
        if self.role != Role::Follower {
            let term = self.term;
            let leader = self.leader;
            self.become_follower(term, leader);
        }
    }

    /// The guard this replica runs under, if any.
    pub fn recovery_guard(&self) -> Option<RecoveryGuard> {
        self.recovery_guard
    }

    /// Whether the guard can be lifted now: the commit index (learnt from a
    /// leader whose log ours matches) satisfies it.
    fn recovery_guard_satisfied(&self) -> bool {
        let Some(g) = self.recovery_guard else {
            return false;
        };
        let commit = self.log.committed();
        // A term that cannot be read (compacted away) proves nothing.
        let commit_term = self.log.term(commit).unwrap_or(Term(0));
        g.is_satisfied(commit, commit_term)
    }

    fn election_timeout(&self) -> u64 {
        self.cfg.election_rtt
    }

    fn reset_randomized_election_timeout(&mut self) {
        let base = self.cfg.election_rtt;
        self.randomized_election_timeout = base + self.rng.below(base);
    }

    /// Whether this replica heard from a leader within the election timeout
    /// (the "lease" followers honour, thesis §4.2.3).
    fn in_lease(&self) -> bool {
        !self.leader.is_none() && self.election_elapsed < self.election_timeout()
    }

    // ----- time -----

    /// The first storage error the core met reading the durable log
    /// ([`LogError::Storage`](crate::LogError::Storage)), if any.
    ///
    /// The core never panics on a storage error. Once one is set the
    /// replica is failed: [`tick`](Self::tick) and [`step`](Self::step) do
    /// nothing (a leader that cannot read its log stops heartbeats, so the
    /// shard elects another), no campaign starts, no vote is granted and no
    /// committed entry is handed out any more. The engine checks this after
    /// stepping a replica (after `step`, `tick`, `propose*`, `read_index`,
    /// `get_update` and `advance`) and fails that replica alone: it stops
    /// driving it and answers its pending requests with an error. What
    /// the current [`Update`] asks to persist is still consistent and may
    /// be persisted or dropped.
    pub fn storage_error(&self) -> Option<&crate::log_reader::LogError> {
        self.log.storage_error()
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        if self.storage_error().is_some() {
            return;
        }
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        let timeout = self.randomized_election_timeout;
        if self.promotable() {
            if self.election_elapsed >= timeout {
                self.election_elapsed = 0;
                self.campaign_start(false);
            }
        } else if self.election_elapsed.is_multiple_of(timeout) {
            // Once per election timeout without a leader. The elapsed time
            // keeps growing: the lease of the last leader heard must expire
            // (this replica grants pre-votes only then).
            self.probe_commit();
        }
    }

    // ----- message dispatch -----

    /// Steps one message received from another replica (or produced locally
    /// by the transport: `Unreachable`, `SnapshotStatus`).
    pub fn step(&mut self, m: Message) {
        if self.storage_error().is_some() {
            return;
        }
        if m.shard_id != self.shard_id || (m.to != self.id && !m.msg_type.is_local()) {
            return;
        }
        // A removed replica cannot disrupt the group (thesis §4.2.3).
        if self.membership.removed.contains(&m.from) {
            return;
        }
        let forwarded = matches!(
            m.msg_type,
            MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader
        );
        if m.from.is_none() || (m.from == self.id && !forwarded) {
            // Replica 0 is "nobody", and only a forwarded request (whose
            // `from` is the original asker, possibly this replica, when
            // followers forward it on to the leader they know) comes back
            // from this replica: an answer would go to the wrong replica.
            self.drop_invalid(&m, "sender is this replica or no replica");
            return;
        }
        if !m.msg_type.is_local()
            && let Err(reason) = self.check_sender(&m)
        {
            self.drop_invalid(&m, reason);
            return;
        }
        if let Err(reason) = self.check_message(&m) {
            self.drop_invalid(&m, reason);
            return;
        }
        if m.msg_type == MessageType::ProposeDropped {
            // Proposals of ours that died where we forwarded them (any
            // role: we may have forwarded them before an election).
            let e = ProposalError::from_code(m.hint.0).unwrap_or(ProposalError::NoLeader);
            if m.log_index.0 != 0 {
                self.dropped_leader = Some(ReplicaId(m.log_index.0));
            }
            self.dropped_proposals
                .extend(m.entries.into_iter().map(|ent| (ent, e)));
            return;
        }
        if m.term.0 != 0 && m.term > self.term {
            if matches!(
                m.msg_type,
                MessageType::RequestVote | MessageType::RequestPreVote
            ) {
                let forced = m.context == crate::message::CAMPAIGN_TRANSFER;
                // Thesis §4.2.3: disregard vote requests while a leader is believed alive.
                if !forced && self.cfg.check_quorum && self.in_lease() {
                    return;
                }
            }
            match m.msg_type {
                // A pre-vote never changes our term (thesis §9.6).
                MessageType::RequestPreVote => {}
                // A granted pre-vote carries the future term; only a rejection
                // from a higher term tells us we are behind.
                MessageType::RequestPreVoteResp if !m.reject => {}
                MessageType::Replicate | MessageType::Heartbeat | MessageType::InstallSnapshot => {
                    self.become_follower(m.term, m.from)
                }
                _ => self.become_follower(m.term, ReplicaId::NONE),
            }
        } else if m.term.0 != 0 && m.term < self.term {
            self.step_lower_term(&m);
            return;
        }
        match m.msg_type {
            MessageType::RequestVote | MessageType::RequestPreVote => self.handle_vote_request(&m),
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    fn step_lower_term(&mut self, m: &Message) {
        match m.msg_type {
            // A stale leader, or a leader whose term we passed while
            // partitioned with check-quorum/pre-vote: tell it our term so it
            // steps down and the shard can converge. Without either, a voter
            // gets there by campaigning; a replica that cannot campaign (a
            // witness or non-voting replica that got a higher term, e.g. from
            // a since-removed candidate) must always answer.
            MessageType::Replicate | MessageType::Heartbeat
                if self.cfg.check_quorum || self.cfg.pre_vote || !self.promotable() =>
            {
                let resp = Message {
                    term: self.term,
                    ..self.new_message(MessageType::ReplicateResp, m.from)
                };
                self.send(resp);
            }
            MessageType::RequestPreVote => {
                let resp = Message {
                    term: self.term,
                    reject: true,
                    ..self.new_message(MessageType::RequestPreVoteResp, m.from)
                };
                self.send(resp);
            }
            _ => {}
        }
    }

    // ----- sending -----

    fn new_message(&self, msg_type: MessageType, to: ReplicaId) -> Message {
        Message {
            term: self.term,
            ..Message::new(msg_type, self.shard_id, self.id, to)
        }
    }

    /// Queues a message. Acknowledgements of entries and votes wait for
    /// persistence; everything else leaves at once if our term and vote
    /// are durable (with asynchronous writes: reported persisted, not
    /// merely handed out).
    fn send(&mut self, m: Message) {
        debug_assert_ne!(m.to, self.id, "message to self: {m:?}");
        let waits = matches!(
            m.msg_type,
            MessageType::ReplicateResp | MessageType::RequestVoteResp
        ) || self.term != self.durable_hs.term
            || self.vote != self.durable_hs.vote;
        if waits {
            self.msgs_after_persist.push(m);
        } else {
            self.msgs.push(m);
        }
    }

    /// Answers a forwarded proposal that dies here (it is in no log) with
    /// `ProposeDropped`, so that its proposer fails it at once. The entries
    /// go back without payloads, but for config changes (small), which
    /// the proposer checks against its own membership to say why.
    fn drop_forwarded_proposal(&mut self, from: ReplicaId, entries: &[Entry], e: ProposalError) {
        if from == self.id || from.is_none() || entries.is_empty() {
            return;
        }
        let stubs = entries
            .iter()
            .map(|ent| Entry {
                key: ent.key,
                client_id: ent.client_id,
                series_id: ent.series_id,
                entry_type: ent.entry_type,
                cmd: if ent.entry_type == EntryType::ConfigChange {
                    ent.cmd.clone()
                } else {
                    bytes::Bytes::new()
                },
                ..Entry::default()
            })
            .collect();
        let m = Message {
            term: leader::FORWARDED_TERM,
            entries: stubs,
            hint: Index(e.code()),
            // Replica ids past the largest index would make the answer
            // invalid: then no hint.
            log_index: Some(Index(self.leader.0))
                .filter(|&i| i <= validate::INDEX_MAX)
                .unwrap_or_default(),
            ..self.new_message(MessageType::ProposeDropped, from)
        };
        self.send(m);
    }

    // ----- the update cycle -----

    /// How many messages were dropped because no correct peer could have
    /// sent them (see [`InvalidReason`]).
    pub fn invalid_messages(&self) -> u64 {
        self.invalid_messages
    }

    /// Of [`invalid_messages`](Self::invalid_messages), how many were
    /// dropped because their sender is not a member of the shard in this
    /// replica's view (reason [`NOT_A_MEMBER`]). Unlike the other invalid
    /// messages, a correct peer can send these: a member this replica does
    /// not know yet (its addition not in this replica's log), or a replica
    /// whose addition was proposed but never committed.
    pub fn non_member_messages(&self) -> u64 {
        self.non_member_messages
    }

    /// The sender, type and reason of the last message dropped as invalid.
    pub fn last_invalid(&self) -> Option<(ReplicaId, MessageType, InvalidReason)> {
        self.last_invalid
    }

    /// Whether [`get_update`](Self::get_update) has anything to return.
    pub fn has_update(&self) -> bool {
        if self.snapshot_in_flight {
            return false;
        }
        !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || !self.log.unstable_not_in_progress().is_empty()
            || self.log.unstable_snapshot().is_some()
            || self.hard_state() != self.prev_hard_state
            || (self.log.has_next_committed() && !self.config_change_held())
            || !self.ready_reads.is_empty()
            || !self.dropped_reads.is_empty()
            || !self.dropped_proposals.is_empty()
            || self.current_leader_info() != self.prev_leader
            || self.recovery_guard_satisfied()
    }

    fn current_leader_info(&self) -> LeaderInfo {
        LeaderInfo {
            leader_id: self.leader,
            term: self.term,
        }
    }

    /// Whether committed entries wait for a config change's commit index to
    /// be durable (asynchronous writes).
    fn config_change_held(&self) -> bool {
        self.held_config_change
            .is_some_and(|c| c > self.log.applying() && c > self.durable_hs.commit)
    }

    /// Takes what must be done now. Without `async_storage_writes`, must
    /// be followed by [`advance`](Self::advance) before the next call;
    /// with it, may be called again before earlier updates are durable,
    /// each update's write being reported with [`persisted`](Self::persisted)
    /// in order (see [`RaftConfig::async_storage_writes`]).
    pub fn get_update(&mut self) -> Update {
        if self.cfg.async_storage_writes {
            assert!(
                !self.snapshot_in_flight,
                "get_update while a snapshot write is in flight"
            );
        } else {
            assert!(
                self.writes_in_flight == 0,
                "get_update called twice without advance"
            );
        }
        self.writes_in_flight += 1;
        // Lifted in the same update as the entries that satisfied it: the
        // storage forgets the guard no earlier than it holds them.
        let recovery_cleared = self.recovery_guard_satisfied();
        if recovery_cleared {
            self.recovery_guard = None;
        }
        let hs = self.hard_state();
        // With writes in flight, a config change is handed out only once
        // the durable commit index covers it: applied, it changes the
        // membership, and a replica restarted with an older commit index
        // would see it uncommitted and campaign in the membership before
        // it (the engine's synchronous cycle makes the same rule by
        // persisting the commit index with the update that hands it out).
        let (committed_entries, held) = if self.cfg.async_storage_writes {
            self.log
                .take_next_committed_holding(self.cfg.max_apply_bytes, self.durable_hs.commit)
        } else {
            (self.log.take_next_committed(self.cfg.max_apply_bytes), None)
        };
        if self.role == Role::Leader {
            let freed: u64 = committed_entries.iter().map(Entry::payload_bytes).sum();
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
        }
        let leader = self.current_leader_info();
        let leader_change = (leader != self.prev_leader).then_some(leader);
        self.prev_leader = leader;
        // A held config change needs a synced write of a commit index
        // covering it; one handed out before (and not yet durable) will do.
        // A commit index handed out in a write that needed no sync does
        // not: the caller may not have synced it.
        let sync_commit = held.is_some_and(|c| self.synced_commit_handed_out < c);
        self.held_config_change = held;
        let hard_state = (hs != self.prev_hard_state || sync_commit).then_some(hs);
        self.prev_hard_state = hs;
        let entries = self.log.unstable_not_in_progress().to_vec();
        self.log.mark_in_progress();
        let snapshot = self.log.unstable_snapshot().cloned();
        self.snapshot_in_flight = snapshot.is_some();
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || recovery_cleared
            || sync_commit
            || hard_state
                .is_some_and(|h| h.term != self.durable_hs.term || h.vote != self.durable_hs.vote);
        if must_sync && let Some(h) = hard_state {
            self.synced_commit_handed_out = self.synced_commit_handed_out.max(h.commit);
        }
        let write = WriteToken {
            term: self.term,
            last: self.log.unstable_last(),
            hard_state,
            snapshot: snapshot.as_ref().map(|s| s.index),
            must_sync,
        };
        Update {
            shard_id: self.shard_id,
            replica_id: self.id,
            entries,
            hard_state,
            snapshot,
            committed_entries,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.msgs_after_persist),
            ready_reads: std::mem::take(&mut self.ready_reads),
            dropped_reads: std::mem::take(&mut self.dropped_reads),
            dropped_proposals: std::mem::take(&mut self.dropped_proposals),
            dropped_leader: self.dropped_leader.take(),
            leader_change,
            recovery_cleared,
            write,
        }
    }

    /// Tells the core that everything `update` asked to persist is durable.
    /// (Applying committed entries is reported separately with
    /// [`applied_to`](Self::applied_to).) The same as
    /// [`persisted`](Self::persisted) with the update's write token.
    pub fn advance(&mut self, update: &Update) {
        self.persisted(&update.write);
    }

    /// Tells the core that the write of the update that handed out `write`
    /// is durable, and with it every earlier one (writes complete in the
    /// order their updates were taken).
    ///
    /// Entries are marked durable only if the term has not changed since
    /// the write was handed out: otherwise the entries it held may have
    /// been replaced since, and the same index and term appended again by
    /// a later leader, by a write that is not durable yet (etcd's ABA
    /// case). Every write handed out while entries are unstable names the
    /// newest one, so a later write of the current term marks them.
    pub fn persisted(&mut self, write: &WriteToken) {
        assert!(self.writes_in_flight > 0, "persisted without get_update");
        self.writes_in_flight -= 1;
        if let Some(hs) = write.hard_state {
            self.durable_hs.term = hs.term;
            self.durable_hs.vote = hs.vote;
            if write.must_sync || !self.cfg.async_storage_writes {
                self.durable_hs.commit = self.durable_hs.commit.max(hs.commit);
            }
        }
        if let Some(i) = write.snapshot {
            self.log.stable_snap_to(i);
            self.snapshot_in_flight = false;
        }
        if let Some((i, t)) = write.last
            && write.term == self.term
        {
            self.log.stable_to(i, t);
        }
        if self.role == Role::Leader {
            // The leader counts its own log only once durable (DESIGN §2).
            let stable = self.log.stable_last_index();
            if let Some(pr) = self.progress.get_mut(&self.id) {
                pr.maybe_update(stable);
            }
            if self.maybe_commit() {
                self.broadcast_append();
            }
        }
    }

    /// Updates taken whose writes are not yet reported durable.
    pub fn writes_in_flight(&self) -> u64 {
        self.writes_in_flight
    }

    /// Records that the state machine applied every entry up to `index`
    /// (or installed a snapshot at `index`).
    pub fn applied_to(&mut self, index: Index) {
        self.log.applied_to(index);
        self.prune_pending_members();
    }

    /// Whether committed entries wait only because `max_apply_bytes` of
    /// them were handed out and not yet reported applied: the engine
    /// should call [`applied_to`](Self::applied_to) as soon as the state
    /// machine catches up.
    pub fn apply_throttled(&self) -> bool {
        self.log.apply_throttled()
    }

    /// Snapshot metadata of the durable log.
    pub fn snapshot(&self) -> SnapshotMeta {
        self.log.snapshot()
    }
}
