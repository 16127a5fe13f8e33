//! Messages a correct peer cannot have sent are dropped, never acted on.
//!
//! The codec guarantees a message is well formed byte by byte; these checks
//! cover what only the protocol knows: an append whose entries do not follow
//! its previous index, terms from the future, a response acknowledging
//! entries the leader never had. Acting on such a message would corrupt the
//! log or trip an invariant assertion (and a panicking step worker would take
//! every shard it drives down with it), so the core drops it, counts it, and
//! keeps the reason for the engine to log. Peers are not trusted to be bug
//! free: a replica restarted on a wiped disk with its old id, a corrupted
//! frame that passed its checksum, or a buggy build all look like this.

use super::{Raft, Role};
use crate::codec::decode_config_change;
use crate::entry::Entry;
use crate::ids::{Index, ReplicaId, Term};
use crate::log_reader::LogReader;
use crate::membership::ConfigChangeType;
use crate::message::{Message, MessageType};

/// Why a message was dropped as invalid.
pub type InvalidReason = &'static str;

/// The reason of a message dropped because its sender is not a member of
/// the shard in the receiver's view (see [`Raft::non_member_messages`]).
pub const NOT_A_MEMBER: InvalidReason = "sender is not a member of the shard";

/// The largest term a message may carry. Half the `u64` range: a shard
/// cannot get there by elections (one per election timeout, 2^63 of them),
/// so a larger term is forged or corrupt; refusing it keeps `Term::next`
/// far from overflow, and leaves any replica pushed to the bound room to
/// count its terms (no wrap, no wedged campaign).
pub const TERM_MAX: Term = Term(u64::MAX >> 1);

/// How far above its own term a replica takes a message's term: 2^32
/// elections (at one per 10 ms, more than a year of back-to-back
/// elections this replica missed). A larger jump is dropped and counted,
/// so a forged message cannot use up the term space in a few steps (it
/// takes 2^31 of them to get from 0 to [`TERM_MAX`]). A replica that has
/// never seen a term (term 0: a replica joining the shard) takes a leader's
/// messages of any term up to [`TERM_MAX`], since a shard's term can be
/// anything by the time it joins.
pub const TERM_JUMP_MAX: u64 = 1 << 32;

/// The largest log index (or commit index, hint, snapshot index) a message
/// may carry: half the `u64` range, which no log reaches (2^63 entries), so
/// index arithmetic on peer input (`next`, `plus`, sums of lengths) cannot
/// overflow.
pub const INDEX_MAX: Index = Index(u64::MAX >> 1);

/// Bytes of log read at a time when looking for config changes not yet applied.
const PENDING_SCAN_BYTES: u64 = 1 << 20;

impl<L: LogReader> Raft<L> {
    /// Messages only from members (thesis §4.1: the members of a shard
    /// are the servers of its configuration; nobody else takes part).
    ///
    /// A message is accepted if its sender is, in this replica's view, a
    /// voter, non-voting replica or witness: of the membership as applied,
    /// or added by a config change in the log above the applied index
    /// (not applied yet here; e.g. a new member's vote requests and
    /// acknowledgements reach a replica that has the change but not its
    /// commit). Otherwise only:
    ///
    /// - leader messages (`Replicate`, `Heartbeat`, `InstallSnapshot`):
    ///   membership changes reach a replica only
    ///   through the leader's log, so a correct leader can be unknown here
    ///   (a replica joining with an empty membership, one restored from a
    ///   snapshot older than its own addition, or a member that missed the
    ///   change adding the leader while partitioned); refusing it would
    ///   leave this replica behind for good. Such a sender can do no more
    ///   than a member could: it must show a term (bounded, see
    ///   [`TERM_JUMP_MAX`]) and it cannot change committed entries (Raft
    ///   §5.3). One of a term below ours only gets our term back, which a
    ///   stale leader that does not know us either needs to step down
    ///   (randomized harness seed 53890: a member partitioned to a high
    ///   term, dropping the messages of a leader it did not know, was
    ///   never heard of again);
    /// - vote requests when this replica is not a member of its own view
    ///   (joining, or its addition not applied yet), or when the
    ///   candidate's log is ahead of ours: the change that added the
    ///   candidate may be in the part we lack, and the candidate may need
    ///   our vote (it counts it only if its own view makes us a voter).
    ///   Randomized harness seed 98766: a voter behind a change adding a
    ///   new voter dropped the new voter's pre-votes, the only replica that
    ///   could win, and the shard never elected a leader again. A
    ///   candidate whose log is not ahead has every change we know of in
    ///   its log too, so it is known here if it is a member.
    ///
    /// Forwarded requests (`Propose`, `ReadIndex`, `TransferLeader`) act on
    /// the shard on the sender's behalf: they are taken only from members
    /// as applied. Everything else from a non-member (responses,
    /// `TimeoutNow`, vote requests to a member with a log not ahead of
    /// ours) is dropped, counted in
    /// [`invalid_messages`](Self::invalid_messages) and
    /// [`non_member_messages`](Self::non_member_messages).
    ///
    /// The sender id is not authenticated by the core: these checks stop a
    /// confused peer (a replica whose addition was never committed, one of
    /// another shard incarnation, a misconfigured process) and anyone
    /// without a member's id; authenticating hosts is the transport's job.
    pub(super) fn check_sender(&mut self, m: &Message) -> Result<(), InvalidReason> {
        use MessageType::*;
        if self.membership.contains(m.from) {
            return Ok(());
        }
        match m.msg_type {
            Propose | ReadIndex | TransferLeader | ProposeDropped => return Err(NOT_A_MEMBER),
            Replicate | Heartbeat | InstallSnapshot => return Ok(()),
            RequestVote | RequestPreVote
                if !self.membership.contains(self.id)
                    || self.log_behind(m.log_index, m.log_term) =>
            {
                return Ok(());
            }
            _ => {}
        }
        if self.is_pending_member(m.from) {
            Ok(())
        } else {
            Err(NOT_A_MEMBER)
        }
    }

    /// Whether a log ending at (`index`, `term`) is ahead of ours (Raft
    /// §5.4.1's order, strictly): it holds entries we lack, among which may
    /// be the change that made its owner a member. A log we cannot read is
    /// not behind.
    fn log_behind(&self, index: Index, term: Term) -> bool {
        match self.log.last_term() {
            Ok(last_term) => {
                term > last_term || (term == last_term && index > self.log.last_index())
            }
            Err(_) => false,
        }
    }

    /// Whether a config change in the log above the applied index adds `id`.
    fn is_pending_member(&mut self, id: ReplicaId) -> bool {
        if !self.pending_members_scanned {
            // Once per life of the core (later appends are noted as they
            // come): the durable log above the applied index, in chunks.
            self.pending_members_scanned = true;
            let hi = self.log.last_index().next();
            let mut lo = self.log.applied().next();
            while lo < hi {
                match self.log.entries(lo, hi, PENDING_SCAN_BYTES) {
                    Ok(ents) if !ents.is_empty() => {
                        lo = ents[ents.len() - 1].index.next();
                        self.note_config_changes(&ents);
                    }
                    _ => break,
                }
            }
        }
        self.pending_members.contains_key(&id)
    }

    /// Notes the replicas that config changes among `ents` (entering the
    /// log) add, until applied.
    pub(super) fn note_config_changes(&mut self, ents: &[Entry]) {
        let applied = self.log.applied();
        for e in ents
            .iter()
            .filter(|e| e.is_config_change() && e.index > applied)
        {
            if let Ok(cc) = decode_config_change(&e.cmd)
                && cc.change_type != ConfigChangeType::RemoveReplica
                && !cc.replica_id.is_none()
            {
                self.pending_members.insert(cc.replica_id, e.index);
            }
        }
    }

    /// Forgets pending additions at or below the applied index (applied
    /// now, so in the membership, or rejected).
    pub(super) fn prune_pending_members(&mut self) {
        let applied = self.log.applied();
        self.pending_members.retain(|_, i| *i > applied);
    }

    /// Checks what can be checked of `m` alone, before it changes any state.
    pub(super) fn check_message(&self, m: &Message) -> Result<(), InvalidReason> {
        use MessageType::*;
        let needs_term = matches!(
            m.msg_type,
            RequestVote
                | RequestVoteResp
                | RequestPreVote
                | RequestPreVoteResp
                | Replicate
                | ReplicateResp
                | Heartbeat
                | HeartbeatResp
                | InstallSnapshot
                | ReadIndexResp
                | TimeoutNow
        );
        if needs_term && m.term.0 == 0 {
            return Err("protocol message without a term");
        }
        if matches!(
            m.msg_type,
            Propose | ReadIndex | TransferLeader | ProposeDropped
        ) && m.term.0 != 0
        {
            // Forwarded requests are served by whichever leader gets them:
            // a term there could only depose a leader for nothing.
            return Err("forwarded request with a term");
        }
        self.check_bounds(m)?;
        match m.msg_type {
            Replicate => check_append(m),
            // The leader sends min(match, commit) and a follower acknowledges
            // only durable entries, so a correct heartbeat never commits past
            // our log; one that does would commit a tail the leader may not
            // have (Raft §5.3).
            // Unless we lost entries we had acknowledged (a recovery
            // guard): then the leader's match index for us is too high, and
            // the heartbeat tells us to say so (`handle_heartbeat`).
            Heartbeat if m.commit > self.log.last_index() && self.recovery_guard.is_none() => {
                Err("heartbeat commits past our last index")
            }
            InstallSnapshot => match &m.snapshot {
                None => Err("snapshot message without a snapshot"),
                Some(s) if s.is_empty() => Err("snapshot at index 0"),
                Some(s) if s.term > m.term => Err("snapshot term ahead of the sender's term"),
                Some(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// No input can wedge a shard: terms and indexes a message carries
    /// stay far from overflow ([`TERM_MAX`], [`INDEX_MAX`]), and a term
    /// jumps at most [`TERM_JUMP_MAX`] above ours (Raft §5.1: terms only
    /// grow, so a replica pushed to an absurd term could never follow a
    /// correct leader again, nor could the shard ever elect one past it).
    fn check_bounds(&self, m: &Message) -> Result<(), InvalidReason> {
        use MessageType::*;
        if m.term > TERM_MAX
            || m.log_term > TERM_MAX
            || m.hint_term > TERM_MAX
            || m.snapshot.as_ref().is_some_and(|s| s.term > TERM_MAX)
        {
            return Err("term beyond the largest usable term");
        }
        // Every log term a message names (a candidate's last entry, a
        // commit's or a hint's term) is of an entry the sender holds, so
        // not newer than the sender's term.
        if m.log_term > m.term || m.hint_term > m.term {
            return Err("log term ahead of the sender's term");
        }
        let joining_leader =
            self.term.0 == 0 && matches!(m.msg_type, Replicate | Heartbeat | InstallSnapshot);
        if m.term.0 > self.term.0.saturating_add(TERM_JUMP_MAX) && !joining_leader {
            return Err("term too far ahead of ours");
        }
        if m.log_index > INDEX_MAX
            || m.commit > INDEX_MAX
            || m.hint > INDEX_MAX
            || m.entries.iter().any(|e| e.index > INDEX_MAX)
            || m.snapshot.as_ref().is_some_and(|s| s.index > INDEX_MAX)
        {
            return Err("index beyond the largest usable index");
        }
        if let Some(s) = &m.snapshot
            && !s.membership.is_consistent()
        {
            return Err("snapshot membership is not consistent");
        }
        Ok(())
    }

    /// A leader's checks of an answer in its own term (answers from older
    /// terms were dropped before; a leader of a term is one life of one
    /// replica, so the answer's claims are bounded by the leader's state).
    pub(super) fn check_answer(&self, m: &Message) -> Result<(), InvalidReason> {
        debug_assert!(self.role == Role::Leader);
        match m.msg_type {
            MessageType::ReplicateResp if !m.reject && m.log_index > self.log.last_index() => {
                Err("acknowledges entries past the leader's last index")
            }
            // A rejection names the previous index of an append we sent,
            // and a hint at or below it (Raft §5.3, fast backtracking).
            MessageType::ReplicateResp if m.reject && m.log_index > self.log.last_index() => {
                Err("rejects an append past the leader's last index")
            }
            MessageType::ReplicateResp if m.reject && m.hint > m.log_index => {
                Err("rejection hint past the rejected index")
            }
            // Echoes the tick at which we sent the heartbeat.
            MessageType::HeartbeatResp if m.log_index.0 > self.ticks => {
                Err("heartbeat answer from a future tick")
            }
            _ => Ok(()),
        }
    }

    /// Counts and records a dropped message.
    pub(super) fn drop_invalid(&mut self, m: &Message, reason: InvalidReason) {
        self.invalid_messages += 1;
        if reason == NOT_A_MEMBER {
            self.non_member_messages += 1;
        }
        self.last_invalid = Some((m.from, m.msg_type, reason));
    }
}

/// Raft §5.3: the entries of an append follow its previous index one by
/// one, with terms that never decrease, start at or after the previous
/// entry's term, and are not newer than the leader's term.
fn check_append(m: &Message) -> Result<(), InvalidReason> {
    if m.log_term > m.term {
        return Err("append's previous term ahead of the sender's term");
    }
    let mut expected = m.log_index.0;
    let mut prev_term = m.log_term;
    for e in &m.entries {
        expected = expected.checked_add(1).ok_or("append's indexes overflow")?;
        if e.index.0 != expected {
            return Err("append's entries do not follow its previous index");
        }
        if e.term.0 == 0 {
            return Err("append's entry has no term");
        }
        if e.term < prev_term {
            return Err("append's entry terms decrease");
        }
        if e.term > m.term {
            return Err("append's entry term ahead of the sender's term");
        }
        prev_term = e.term;
    }
    Ok(())
}
