//! The safety checks run after every step: election safety, log matching,
//! leader completeness, commit consistency (state-machine safety on the
//! log), monotonic term/commit/applied, and read-index safety.

use bytes::Bytes;
use longship_raft::{EntryType, Index, LogError, ReplicaId, Term};

use super::Sim;

/// Per-node marks for the monotonicity checks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Marks {
    pub(super) term: Term,
    pub(super) commit: Index,
    pub(super) applied: Index,
    pub(super) sm_applied: Index,
}

/// What the log-matching check remembers of an entry seen at (index, term).
pub(super) struct Seen {
    pub(super) prev_term: Term,
    pub(super) entry_type: EntryType,
    pub(super) cmd: Bytes,
}

/// An index first seen committed: the entry's term and the term of the
/// replica that first knew it committed (an upper bound of the term in which
/// it was committed).
#[derive(Clone, Copy)]
pub(super) struct CommitRec {
    pub(super) term: Option<Term>,
    pub(super) known_in: Term,
}

impl Sim {
    pub(super) fn update_stopped(&mut self) {
        let removed: Vec<ReplicaId> = self
            .c
            .nodes
            .values()
            .flat_map(|n| n.raft.membership().removed.iter().copied())
            .filter(|id| !self.stopped.contains(id))
            .collect();
        for id in removed {
            self.note(|| format!("  node {} removed: stopped", id.0));
            self.pending.remove(&id);
            self.stopped.insert(id);
        }
    }

    pub(super) fn check(&mut self) {
        self.update_stopped();
        let ids: Vec<ReplicaId> = self.c.nodes.keys().copied().collect();
        for &id in &ids {
            self.check_node(id);
        }
        self.record_commits();
        for &id in &ids {
            self.check_commit_consistency(id);
            self.check_log_matching(id);
            self.check_leader_completeness(id);
            self.check_reads(id);
        }
    }

    fn check_node(&mut self, id: ReplicaId) {
        let n = &self.c.nodes[&id];
        let r = &n.raft;
        let log = r.log();
        let now = Marks {
            term: r.term(),
            commit: log.committed(),
            applied: log.applied(),
            sm_applied: n.applied_index,
        };
        if !(now.applied <= now.commit && now.commit <= log.last_index()) {
            fail!(
                self,
                "node {}: applied {} commit {} last {}",
                id.0,
                now.applied.0,
                now.commit.0,
                log.last_index().0
            );
        }
        if let Some(prev) = self.marks.get(&id)
            && (now.term < prev.term
                || now.commit < prev.commit
                || now.applied < prev.applied
                || now.sm_applied < prev.sm_applied)
        {
            fail!(self, "node {} went backwards: {prev:?} -> {now:?}", id.0);
        }
        self.marks.insert(id, now);
        if let Err(e) = r.check_invariants() {
            fail!(self, "{e}");
        }
        // Correct peers over a faulty network never send what the core
        // drops as invalid (a false positive would lose a real message),
        // except messages from a member this replica does not know yet
        // (counted apart; convergence shows none was needed for good).
        if r.invalid_messages() != r.non_member_messages() {
            fail!(
                self,
                "node {} dropped a valid message as invalid: {:?}",
                id.0,
                r.last_invalid()
            );
        }
        if r.is_leader() {
            let term = r.term();
            match self.leaders.get(&term) {
                Some(&l) if l != id => {
                    fail!(
                        self,
                        "election safety: {} and {} both lead term {}",
                        l.0,
                        id.0,
                        term.0
                    )
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                }
            }
        }
    }

    /// Records indexes newly known committed, with their terms.
    fn record_commits(&mut self) {
        let Some((_, n)) = self
            .c
            .nodes
            .iter()
            .max_by_key(|(_, n)| n.raft.log().committed())
        else {
            return;
        };
        let commit = n.raft.log().committed();
        if commit <= self.max_commit {
            return;
        }
        let known_in = n.raft.term();
        let mut i = self.max_commit.next();
        while i <= commit {
            let term = n.raft.log().term(i).ok();
            self.commits.insert(i, CommitRec { term, known_in });
            i = i.next();
        }
        self.max_commit = commit;
    }

    /// Every index a node knows committed holds the entry first known
    /// committed there (Raft §5.4.3, checked on the log rather than on apply).
    fn check_commit_consistency(&mut self, id: ReplicaId) {
        let r = &self.c.nodes[&id].raft;
        let commit = r.log().committed();
        let from = self.commit_checked.get(&id).copied().unwrap_or(Index(0));
        let mut i = from.next();
        while i <= commit {
            if let (Ok(t), Some(rec)) = (r.log().term(i), self.commits.get(&i))
                && rec.term.is_some_and(|rt| rt != t)
            {
                fail!(
                    self,
                    "node {} commits term {} at {} but term {:?} was committed there",
                    id.0,
                    t.0,
                    i.0,
                    rec.term
                );
            }
            i = i.next();
        }
        if commit > from {
            self.commit_checked.insert(id, commit);
        }
    }

    /// Log matching (Raft §5.3): an (index, term) pair determines the entry
    /// and the term before it, hence (by induction) the whole log up to it,
    /// over the entries both logs still hold.
    fn check_log_matching(&mut self, id: ReplicaId) {
        let r = &self.c.nodes[&id].raft;
        let log = r.log();
        let first = log.first_index();
        let last = log.last_index();
        let fp = (
            first,
            last,
            log.last_term().expect("MemLog reads never fail"),
            log.stable_last_index(),
        );
        if self.seen_fingerprint.get(&id) == Some(&fp) {
            return;
        }
        let mut prev_term = log
            .term(first.prev())
            .unwrap_or_else(|e| fail!(self, "node {}: term before first index: {e}", id.0));
        let ents = if first <= last {
            log.entries(first, last.next(), u64::MAX)
                .unwrap_or_else(|e| fail!(self, "node {}: read log: {e}", id.0))
        } else {
            Vec::new()
        };
        for e in ents {
            let key = (e.index, e.term);
            match self.seen.get_mut(&key) {
                None => {
                    self.seen.insert(
                        key,
                        Seen {
                            prev_term,
                            entry_type: e.entry_type,
                            cmd: e.cmd.clone(),
                        },
                    );
                }
                Some(s) => {
                    if s.prev_term != prev_term {
                        fail!(
                            self,
                            "log matching: node {} has {}/{} after term {} but another log has it after term {}",
                            id.0,
                            e.term.0,
                            e.index.0,
                            prev_term.0,
                            s.prev_term.0
                        );
                    }
                    let meta = EntryType::Metadata;
                    if s.entry_type == meta && e.entry_type != meta {
                        s.entry_type = e.entry_type;
                        s.cmd = e.cmd.clone();
                    } else if e.entry_type != meta
                        && (s.entry_type != e.entry_type || s.cmd != e.cmd)
                    {
                        fail!(
                            self,
                            "log matching: node {} holds a different entry at {}/{}",
                            id.0,
                            e.term.0,
                            e.index.0
                        );
                    }
                }
            }
            prev_term = e.term;
        }
        self.seen_fingerprint.insert(id, fp);
    }

    /// Leader completeness (Raft §5.4.1): a leader holds every entry
    /// committed in an earlier term, as far as not compacted.
    fn check_leader_completeness(&mut self, id: ReplicaId) {
        let r = &self.c.nodes[&id].raft;
        if !r.is_leader() {
            return;
        }
        let term = r.term();
        let key = (id, term);
        let from = self.leader_checked.get(&key).copied().unwrap_or(Index(0));
        for (&i, rec) in self.commits.range(from.next()..) {
            let Some(t) = rec.term else { continue };
            if rec.known_in >= term {
                continue;
            }
            match r.log().term(i) {
                Ok(lt) if lt == t => {}
                Err(LogError::Compacted) => {}
                other => fail!(
                    self,
                    "leader completeness: leader {} of term {} has {other:?} at {} committed with term {} (known in term {})",
                    id.0,
                    term.0,
                    i.0,
                    t.0,
                    rec.known_in.0
                ),
            }
        }
        self.leader_checked.insert(key, self.max_commit);
    }

    /// Read index safety (thesis §6.4): a read's index covers every commit
    /// known anywhere when the read was requested.
    fn check_reads(&mut self, id: ReplicaId) {
        let n = &self.c.nodes[&id];
        let from = self.reads_checked.get(&id).copied().unwrap_or(0);
        for rs in &n.ready_reads[from.min(n.ready_reads.len())..] {
            self.stats.reads_ready += 1;
            let Some(&floor) = self.reads.get(&rs.context) else {
                fail!(
                    self,
                    "node {} got a read for unknown context {}",
                    id.0,
                    rs.context
                );
            };
            if rs.index < floor {
                fail!(
                    self,
                    "read index safety: node {} read ctx={} at {} but {} was committed when it was requested",
                    id.0,
                    rs.context,
                    rs.index.0,
                    floor.0
                );
            }
        }
        self.reads_checked.insert(id, n.ready_reads.len());
    }
}
