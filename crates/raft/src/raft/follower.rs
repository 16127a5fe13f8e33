//! A follower: appends, heartbeats, snapshots and forwarded requests.

use super::Raft;
use crate::ids::ReplicaId;
use crate::log_reader::LogReader;
use crate::message::{Message, MessageType};
use crate::update::{ProposalError, ReadState};

impl<L: LogReader> Raft<L> {
    pub(super) fn step_follower(&mut self, mut m: Message) {
        match m.msg_type {
            // Forwarded requests go on to the leader we know (the
            // original asker stays `from` so the leader answers it directly).
            MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader
                if !self.leader.is_none() =>
            {
                m.to = self.leader;
                self.send(m);
            }
            MessageType::Propose => {
                self.drop_forwarded_proposal(m.from, &m.entries, ProposalError::NoLeader)
            }
            MessageType::Replicate => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m);
            }
            MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::InstallSnapshot => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot(m);
            }
            MessageType::TimeoutNow => {
                // Thesis §3.10: the transfer target campaigns at once, skipping pre-vote.
                self.campaign_start(true);
            }
            MessageType::ReadIndexResp => self.handle_read_index_resp(m),
            // Answers to a commit probe (`probe_commit`), or late answers
            // to an election we gave up: only what they say is committed.
            MessageType::RequestPreVoteResp | MessageType::RequestVoteResp => self.learn_commit(&m),
            _ => {}
        }
    }

    /// Raft §5.3: AppendEntries receiver rules.
    pub(super) fn handle_append(&mut self, m: Message) {
        let committed = self.log.committed();
        if m.log_index < committed {
            // Everything up to our commit index matches; say so, and the
            // leader resumes after it (also answers stale, reordered appends).
            let resp = Message {
                log_index: committed,
                ..self.new_message(MessageType::ReplicateResp, m.from)
            };
            self.send(resp);
            return;
        }
        self.note_config_changes(&m.entries);
        match self
            .log
            .maybe_append(m.log_index, m.log_term, m.commit, &m.entries)
        {
            // A commit-only append (pipelined replication, nothing new)
            // that matched: the leader needs no answer.
            Some(_) if m.entries.is_empty() && m.context == crate::message::COMMIT_ONLY => {}
            Some(last_new) => {
                let resp = Message {
                    log_index: last_new,
                    ..self.new_message(MessageType::ReplicateResp, m.from)
                };
                self.send(resp);
            }
            None => {
                // Fast backtracking hint: the last index that may match the
                // leader's log, with its term.
                let (hint, hint_term) = self.log.find_conflict_by_term(m.log_index, m.log_term);
                let resp = Message {
                    log_index: m.log_index,
                    reject: true,
                    hint,
                    hint_term,
                    context: self.log_lost_context(),
                    ..self.new_message(MessageType::ReplicateResp, m.from)
                };
                self.send(resp);
            }
        }
    }

    /// [`LOG_LOST`](crate::LOG_LOST) while a recovery guard holds: our
    /// rejections must make the leader forget its match index for us.
    fn log_lost_context(&self) -> u64 {
        if self.recovery_guard.is_some() {
            crate::message::LOG_LOST
        } else {
            0
        }
    }

    pub(super) fn handle_heartbeat(&mut self, m: Message) {
        // The leader sends min(match, commit), so this never exceeds what
        // matches — unless we lost entries it matched (a recovery guard):
        // the damage may have brought back older entries the leader's log
        // replaced, so our log up to its match index is not known to match.
        // Then the commit index advances only with appends, whose previous
        // entry is checked (Raft §5.3).
        let last = self.log.last_index();
        if self.recovery_guard.is_none() {
            self.log.commit_to(m.commit.min(last));
        }
        if m.commit > last && self.recovery_guard.is_some() {
            // We lost entries the leader believes we hold (it matched us
            // past our log): tell it where our log ends, or it never sends
            // them again.
            let resp = Message {
                log_index: m.commit,
                reject: true,
                hint: last,
                hint_term: self.log.term_or_zero(last),
                context: crate::message::LOG_LOST,
                ..self.new_message(MessageType::ReplicateResp, m.from)
            };
            self.send(resp);
        }
        let resp = Message {
            context: m.context,
            log_index: m.log_index,
            ..self.new_message(MessageType::HeartbeatResp, m.from)
        };
        self.send(resp);
    }

    /// InstallSnapshot receiver rules (Raft §7).
    pub(super) fn handle_snapshot(&mut self, m: Message) {
        let Some(snap) = m.snapshot else { return };
        let committed = self.log.committed();
        let ack_index = if snap.index <= committed {
            // Stale snapshot: we already have all it holds.
            committed
        } else if self.log.match_term(snap.index, snap.term) {
            // Our log holds the snapshot's last entry: keep the log, commit to
            // it. Acknowledge only the snapshot's index: the entries after it
            // may conflict with the leader's, and must not count toward a commit.
            self.log.commit_to(snap.index);
            snap.index
        } else {
            let index = snap.index;
            // The snapshot carries the membership as of its index.
            self.membership = snap.membership.clone();
            self.log.restore(snap);
            index
        };
        let resp = Message {
            log_index: ack_index,
            ..self.new_message(MessageType::ReplicateResp, m.from)
        };
        self.send(resp);
    }

    pub(super) fn handle_read_index_resp(&mut self, m: Message) {
        self.ready_reads.push(ReadState {
            index: m.hint,
            context: m.context,
        });
    }

    /// Drops the known leader (used by the engine when it learns the leader
    /// is gone, e.g. after a quiesced shard wakes).
    pub fn forget_leader(&mut self) {
        if self.role == super::Role::Follower {
            self.leader = ReplicaId::NONE;
        }
    }
}
