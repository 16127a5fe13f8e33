//! Elections: pre-vote, vote, and role transitions (Raft §5.2, thesis §9.6).

use super::{Raft, Role};
use crate::entry::{Entry, EntryType};
use crate::ids::{ReplicaId, Term};
use crate::log_reader::LogReader;
use crate::message::{CAMPAIGN_TRANSFER, Message, MessageType};
use crate::progress::Progress;
use crate::quorum::{VoteResult as Poll, vote_result};
use crate::update::ProposalError;

impl<L: LogReader> Raft<L> {
    /// Starts an election now, as if the election timeout elapsed (used by
    /// tests and by the engine for a replica asked to campaign).
    pub fn campaign(&mut self) {
        if self.role != Role::Leader {
            self.campaign_start(false);
        }
    }

    /// Starts a pre-vote round (if enabled) or an election. `transfer`
    /// marks an election started by `TimeoutNow`, which skips pre-vote and
    /// overrides the followers' lease (thesis §3.10).
    pub(super) fn campaign_start(&mut self, transfer: bool) {
        if !self.promotable() {
            return;
        }
        // A replica with committed but unapplied config changes does not know
        // its membership yet; it must not campaign on a stale one.
        let unapplied = self.log.unapplied_committed(u64::MAX);
        if unapplied.iter().any(Entry::is_config_change) || self.storage_error().is_some() {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
            self.request_votes(MessageType::RequestPreVote, self.term.next(), false);
        } else {
            self.become_candidate();
            self.request_votes(MessageType::RequestVote, self.term, transfer);
        }
    }

    fn request_votes(&mut self, msg_type: MessageType, term: Term, transfer: bool) {
        self.votes.clear();
        self.votes.insert(self.id, true);
        if self.poll() == Poll::Won {
            self.on_election_won(msg_type);
            return;
        }
        let voters: Vec<ReplicaId> = self
            .membership
            .quorum_members()
            .filter(|&id| id != self.id)
            .collect();
        let context = if transfer { CAMPAIGN_TRANSFER } else { 0 };
        self.send_vote_requests(msg_type, term, context, voters);
    }

    /// Sends a vote request of `msg_type` for `term`, with our last entry,
    /// to each of `to`.
    fn send_vote_requests(
        &mut self,
        msg_type: MessageType,
        term: Term,
        context: u64,
        to: Vec<ReplicaId>,
    ) {
        let last_index = self.log.last_index();
        // A failed read is kept in `storage_error`: no campaign on a guess.
        let Ok(last_term) = self.log.last_term() else {
            return;
        };
        for to in to {
            let m = Message {
                term,
                log_index: last_index,
                log_term: last_term,
                context,
                ..self.new_message(msg_type, to)
            };
            self.send(m);
        }
    }

    fn on_election_won(&mut self, msg_type: MessageType) {
        if msg_type == MessageType::RequestPreVote {
            self.become_candidate();
            self.request_votes(MessageType::RequestVote, self.term, false);
        } else {
            self.become_leader();
        }
    }

    fn poll(&self) -> Poll {
        vote_result(&self.membership, |id| self.votes.get(&id).copied())
    }

    /// Raft §5.2, §5.4.1; thesis §9.6 for pre-votes.
    pub(super) fn handle_vote_request(&mut self, m: &Message) {
        let pre = m.msg_type == MessageType::RequestPreVote;
        let resp_type = if pre {
            MessageType::RequestPreVoteResp
        } else {
            MessageType::RequestVoteResp
        };
        let can_vote = self.vote == m.from
            || (self.vote.is_none() && self.leader.is_none())
            // A pre-vote for a future term is granted if we'd vote then,
            // unless we heard from a leader recently (thesis §9.6).
            || (pre && m.term > self.term && !self.in_lease());
        // Any replica may answer: the candidate counts only voters and
        // witnesses, and a replica that has not applied its own promotion yet
        // must still be able to help elect a leader.
        // A replica under a recovery guard may lack entries it helped
        // commit: it votes only for a log at least as up to date as the
        // one it had before the damage (`RecoveryGuard::allows_vote_for`).
        let grant = can_vote
            && self
                .recovery_guard
                .is_none_or(|g| g.allows_vote_for(m.log_index, m.log_term))
            && self.log.is_up_to_date(m.log_index, m.log_term);
        // Every answer tells the candidate how much of its log we know is
        // committed, and the term there (see `learn_commit`).
        let (commit, commit_term) = self.commit_with_term(m.log_index);
        if grant {
            // A granted answer carries the candidate's term so the candidate
            // counts it (for a pre-vote our own term does not change).
            let resp = Message {
                term: m.term,
                commit,
                log_term: commit_term,
                ..self.new_message(resp_type, m.from)
            };
            if !pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
            self.send(resp);
        } else {
            let resp = Message {
                reject: true,
                commit,
                log_term: commit_term,
                ..self.new_message(resp_type, m.from)
            };
            self.send(resp);
        }
    }

    /// Our commit index, capped at the asker's last index, and the term of
    /// our entry there (0, 0 if that term is not known any more). Capped,
    /// it tells an asker whose last entry matches ours that its whole log
    /// is committed.
    fn commit_with_term(&self, asker_last: crate::ids::Index) -> (crate::ids::Index, Term) {
        let c = self.log.committed().min(asker_last);
        match self.log.term(c) {
            Ok(t) => (c, t),
            Err(_) => (crate::ids::Index(0), Term(0)),
        }
    }

    /// A replica that cannot campaign (non-voting or witness in its view,
    /// or removed) and heard from no leader for an election timeout asks
    /// every other member what is committed, with a pre-vote request: it
    /// changes nothing at the receivers, and their answers carry their
    /// commit index (see `learn_commit`). Its view may be stale because
    /// its commit index lags (a promotion to voter committed but not known
    /// here): learning the commit, it applies the change and can campaign.
    /// Without it a shard could stay without a leader for ever (simulator
    /// seed 22883: the only replicas that could lead did not know they
    /// could). The replica does not become a pre-candidate.
    pub(super) fn probe_commit(&mut self) {
        let me = self.id;
        let others: Vec<ReplicaId> = self
            .membership
            .all_members()
            .filter(|&id| id != me)
            .collect();
        self.send_vote_requests(MessageType::RequestPreVote, self.term.next(), 0, others);
    }

    /// Learns a commit index from a vote answer: `m.commit` is committed
    /// in the shard (the voter learnt it from a leader), and if our entry
    /// at that index has the same term, our log equals the voter's up to
    /// it (Raft §5.3, Log Matching), so it is committed here too.
    ///
    /// Membership changes take effect when applied, so without this a
    /// candidate whose commit index lags can count votes with a membership
    /// that no longer holds (a removed voter still counted) and never win,
    /// while the replicas with the current membership cannot win either
    /// (their logs are shorter, or the most up-to-date log is a witness's):
    /// the shard stays without a leader (found by the simulator, seed 6192).
    pub(super) fn learn_commit(&mut self, m: &Message) {
        if m.commit <= self.log.committed() || m.commit > self.log.last_index() {
            return;
        }
        if self.log.term(m.commit).is_ok_and(|t| t == m.log_term) {
            self.log.commit_to(m.commit);
        }
    }

    pub(super) fn step_candidate(&mut self, m: Message) {
        match m.msg_type {
            MessageType::Replicate => {
                self.become_follower(m.term, m.from);
                self.handle_append(m);
            }
            MessageType::Heartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::InstallSnapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            MessageType::RequestPreVoteResp | MessageType::RequestVoteResp => {
                let mine = match self.role {
                    Role::PreCandidate => MessageType::RequestPreVoteResp,
                    _ => MessageType::RequestVoteResp,
                };
                self.learn_commit(&m);
                if m.msg_type != mine {
                    return;
                }
                self.votes.entry(m.from).or_insert(!m.reject);
                match self.poll() {
                    Poll::Won => self.on_election_won(m.msg_type.request()),
                    Poll::Lost => self.become_follower(self.term, ReplicaId::NONE),
                    Poll::Pending => {}
                }
            }
            MessageType::ReadIndexResp => self.handle_read_index_resp(m),
            MessageType::Propose => {
                self.drop_forwarded_proposal(m.from, &m.entries, ProposalError::NoLeader)
            }
            // No leader: reads and transfers are dropped.
            _ => {}
        }
    }

    // ----- role transitions -----

    fn reset(&mut self, term: Term) {
        if self.term != term {
            assert!(
                term > self.term,
                "term must not go back: {} -> {term}",
                self.term
            );
            self.term = term;
            self.vote = ReplicaId::NONE;
        }
        self.leader = ReplicaId::NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.transfer_target = ReplicaId::NONE;
        self.votes.clear();
        self.progress.clear();
        self.pending_config_change = crate::ids::Index(0);
        self.uncommitted_bytes = 0;
        for r in self.read_only.clear() {
            if r.from == self.id {
                self.dropped_reads.push(r.context);
            }
        }
        for (ctx, from) in std::mem::take(&mut self.reads_before_commit) {
            if from == self.id {
                self.dropped_reads.push(ctx);
            }
        }
    }

    /// Becomes a follower of `leader` (or of nobody) in `term`.
    pub(super) fn become_follower(&mut self, term: Term, leader: ReplicaId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "leader cannot become pre-candidate"
        );
        // Thesis §9.6: a pre-vote changes neither term nor vote.
        self.votes.clear();
        self.role = Role::PreCandidate;
        self.leader = ReplicaId::NONE;
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "leader cannot become candidate");
        self.reset(self.term.next());
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    pub(super) fn become_leader(&mut self) {
        assert!(
            self.role != Role::Follower,
            "follower cannot become leader directly"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        let last = self.log.last_index();
        let members: Vec<ReplicaId> = self.membership.all_members().collect();
        for id in members {
            let mut pr = Progress::new(
                last.next(),
                self.cfg.max_inflight_msgs,
                self.cfg.max_inflight_bytes,
            );
            if id == self.id {
                pr.match_index = self.log.stable_last_index();
                pr.next_index = last.next();
                pr.become_replicate();
                pr.next_index = last.next();
                pr.recent_active = true;
            }
            self.progress.insert(id, pr);
        }
        // Any config change in the uncommitted tail may be pending (thesis §4.1).
        self.pending_config_change = last;
        // Raft §8: a new leader commits a no-op entry of its term.
        let noop = Entry {
            entry_type: EntryType::NoOp,
            ..Entry::default()
        };
        self.append_entries(vec![noop]);
        self.broadcast_append();
    }
}

impl MessageType {
    /// The request a vote response answers.
    fn request(self) -> MessageType {
        match self {
            MessageType::RequestPreVoteResp => MessageType::RequestPreVote,
            _ => MessageType::RequestVote,
        }
    }
}
