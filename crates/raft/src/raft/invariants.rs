//! The core's own invariants, checked on demand by
//! [`Raft::check_invariants`]: the randomized harness and the simulator
//! call it after every step, so a broken invariant is reported where it
//! first breaks instead of as a wrong answer much later.

use super::{Raft, Role};
use crate::ids::ReplicaId;
use crate::log_reader::{LogError, LogReader};

/// An invariant of the core that does not hold: a bug in the core, or
/// state given to [`Raft::new`] that no correct history produces.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replica {replica}: invariant broken: {what}")]
pub struct InvariantViolation {
    /// The replica.
    pub replica: ReplicaId,
    /// Which invariant, with the values that break it.
    pub what: String,
}

impl<L: LogReader> Raft<L> {
    /// Checks the core's invariants:
    ///
    /// - the log: `applied <= applying <= committed <= last index`, the
    ///   durable part ends at or before the last index, entries not yet
    ///   durable follow one another with terms that never decrease (Raft
    ///   §5.3), and the commit index never falls below the one handed out
    ///   for persisting (Raft Figure 2: it only grows), and no entry is
    ///   handed out to apply before it is durable here;
    /// - writes: the durable term never runs ahead of the term handed out,
    ///   and without asynchronous writes at most one write is in flight;
    /// - terms: the current term is at least the term of every entry
    ///   (checked on the last entry and the entries not yet durable) and
    ///   at least the durable term (Raft §5.1);
    /// - roles: a leader leads itself, is a voter, voted for itself, has
    ///   progress for exactly the members (itself included) with
    ///   `match < next` and `match <= last index`, its own match durable;
    ///   a candidate voted for itself; only (pre-)candidates hold votes,
    ///   only leaders progress, reads and uncommitted bytes; a replica
    ///   that is not leader does not name itself leader (Raft §5.2);
    /// - the membership: its sets are disjoint.
    ///
    /// A storage error reading the last entry's term is not a broken
    /// invariant (see [`storage_error`](Self::storage_error)); that check
    /// is skipped.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |what: String| {
            Err(InvariantViolation {
                replica: self.id,
                what,
            })
        };
        let log = &self.log;
        let (applied, applying, committed, last) = (
            log.applied(),
            log.applying(),
            log.committed(),
            log.last_index(),
        );
        if !(applied <= applying && applying <= committed && committed <= last) {
            return fail(format!(
                "applied {applied} <= applying {applying} <= committed {committed} <= last {last}"
            ));
        }
        if log.first_index().prev() > last {
            return fail(format!(
                "first index {} past last {last} + 1",
                log.first_index()
            ));
        }
        if log.stable_last_index() > last {
            return fail(format!(
                "durable last {} past last {last}",
                log.stable_last_index()
            ));
        }
        if committed < self.prev_hard_state.commit {
            return fail(format!(
                "commit {committed} below the persisted commit {}",
                self.prev_hard_state.commit
            ));
        }
        if self.durable_hs.term > self.prev_hard_state.term {
            return fail(format!(
                "durable term {} past the term handed out {}",
                self.durable_hs.term, self.prev_hard_state.term
            ));
        }
        if !self.cfg.async_storage_writes && self.writes_in_flight > 1 {
            return fail(format!(
                "{} writes in flight with synchronous writes",
                self.writes_in_flight
            ));
        }
        // Committed entries are handed out only once durable here (or
        // covered by the snapshot being installed).
        let durable_or_snapshot = log.stable_last_index().max(log.snapshot().index);
        if applying > durable_or_snapshot {
            return fail(format!(
                "entries up to {applying} handed out to apply, durable only to {durable_or_snapshot}"
            ));
        }
        if self.term < self.prev_hard_state.term {
            return fail(format!(
                "term {} below the persisted term {}",
                self.term, self.prev_hard_state.term
            ));
        }
        match log.term(last) {
            Ok(t) if t > self.term => {
                return fail(format!(
                    "last entry's term {t} ahead of the term {}",
                    self.term
                ));
            }
            Ok(_) | Err(LogError::Storage(_)) => {}
            Err(e) => return fail(format!("term of the last index {last}: {e}")),
        }
        let unstable = log.unstable_entries();
        if let Some(first) = unstable.first() {
            if first.index > log.reader().last_index().next() && log.unstable_snapshot().is_none() {
                return fail(format!(
                    "entries not durable start at {} after a gap (durable last {})",
                    first.index,
                    log.reader().last_index()
                ));
            }
            for (i, pair) in unstable.windows(2).enumerate() {
                if pair[1].index != pair[0].index.next() || pair[1].term < pair[0].term {
                    return fail(format!(
                        "entries not durable out of order at {i}: {}/{} then {}/{}",
                        pair[0].index, pair[0].term, pair[1].index, pair[1].term
                    ));
                }
            }
            if let Some(e) = unstable.iter().find(|e| e.term > self.term) {
                return fail(format!(
                    "entry {} of term {} ahead of the term {}",
                    e.index, e.term, self.term
                ));
            }
        }
        if !self.membership.is_consistent() {
            return fail(format!("membership sets overlap: {:?}", self.membership));
        }
        // Protocol-aware recovery: a replica that may lack entries it
        // acknowledged never leads or campaigns (docs/recovery.md).
        if self.recovery_guard.is_some() && self.role != Role::Follower {
            return fail(format!("a {:?} under a recovery guard", self.role));
        }
        if self.role != Role::Leader && self.leader == self.id {
            return fail(format!("a {:?} names itself leader", self.role));
        }
        if !matches!(self.role, Role::Candidate | Role::PreCandidate) && !self.votes.is_empty() {
            return fail(format!("a {:?} holds votes", self.role));
        }
        match self.role {
            Role::Leader => self.check_leader(last)?,
            Role::Candidate if self.vote != self.id => {
                return fail(format!("a candidate voted for {}", self.vote));
            }
            _ => {
                if !self.progress.is_empty()
                    || self.uncommitted_bytes != 0
                    || !self.read_only.is_empty()
                    || !self.reads_before_commit.is_empty()
                {
                    return fail(format!(
                        "a {:?} keeps leader state (progress of {} replicas, {} uncommitted bytes, {} reads)",
                        self.role,
                        self.progress.len(),
                        self.uncommitted_bytes,
                        self.read_only.len() + self.reads_before_commit.len()
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_leader(&self, last: crate::ids::Index) -> Result<(), InvariantViolation> {
        let fail = |what: String| {
            Err(InvariantViolation {
                replica: self.id,
                what,
            })
        };
        if self.leader != self.id || self.vote != self.id {
            return fail(format!(
                "leader names leader {} and voted for {}",
                self.leader, self.vote
            ));
        }
        if !self.membership.is_voter(self.id) {
            return fail("leader is not a voter".to_string());
        }
        let members: Vec<ReplicaId> = self.membership.all_members().collect();
        let mut with_progress: Vec<ReplicaId> = self.progress.keys().copied().collect();
        let mut sorted = members.clone();
        sorted.sort();
        with_progress.sort();
        if sorted != with_progress {
            return fail(format!(
                "progress of {with_progress:?} but members {sorted:?}"
            ));
        }
        for (id, pr) in &self.progress {
            if pr.match_index >= pr.next_index || pr.match_index > last {
                return fail(format!(
                    "progress of {id}: match {} next {} last {last}",
                    pr.match_index, pr.next_index
                ));
            }
        }
        let own = self.progress[&self.id].match_index;
        if own > self.log.stable_last_index() {
            return fail(format!(
                "leader's own match {own} past its durable last {}",
                self.log.stable_last_index()
            ));
        }
        if self.pending_config_change > last {
            return fail(format!(
                "pending config change {} past last {last}",
                self.pending_config_change
            ));
        }
        if !self.transfer_target.is_none() && !self.membership.is_voter(self.transfer_target) {
            return fail(format!("transfer to {}, not a voter", self.transfer_target));
        }
        Ok(())
    }
}
