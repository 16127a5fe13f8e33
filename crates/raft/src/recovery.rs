//! Protocol-aware recovery: what a replica whose storage lost acknowledged
//! data may and may not do until it is whole again (docs/recovery.md).
//!
//! When the log storage finds, at restart, that the newest bytes of a
//! replica's log (or hard state) are damaged, it cannot tell whether they
//! were acknowledged to a leader. If they were, the replica now lacks
//! entries that a quorum counted on it holding; were it to vote for a
//! candidate that also lacks them, a committed entry could be lost. So the
//! storage hands the replica a [`RecoveryGuard`], and until the guard is
//! lifted the replica never campaigns (nor accepts a leadership transfer)
//! and grants votes and pre-votes only to candidates whose logs are at
//! least as up to date as the log it had before the damage
//! ([`RecoveryGuard::allows_vote_for`]). It still follows a leader,
//! appends, acknowledges and applies: its shard keeps working with the
//! other replicas.
//!
//! The guard is lifted once the replica's log provably holds every entry
//! that could have been committed before the damage:
//!
//! * `acked_through` known: the replica's commit index, learnt from a
//!   leader whose log its own log matches, reaches `acked_through` (every
//!   index it could have acknowledged is then a committed index of the
//!   current leader's log, and committed entries never change); or
//! * in any case: the entry at the replica's commit index has a term
//!   greater than `restart_term` (that entry was written by a leader
//!   elected after the damage; by Leader Completeness such a leader holds
//!   every entry committed in earlier terms, all of them before its own
//!   entries in its log, and the replica's log matches it up to there).

use crate::ids::{Index, Term};

/// The restriction a replica with damaged storage runs under until its log
/// is whole again (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecoveryGuard {
    /// The highest log index this replica may have acknowledged before the
    /// damage, when the storage could tell (`None`: unknown).
    pub acked_through: Option<Index>,
    /// The replica's term when the damage was found.
    pub restart_term: Term,
}

impl RecoveryGuard {
    /// A guard at least as strict as both `self` and `other` (a replica
    /// damaged again before its first guard was lifted).
    pub fn merge(self, other: RecoveryGuard) -> RecoveryGuard {
        RecoveryGuard {
            acked_through: match (self.acked_through, other.acked_through) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
            restart_term: self.restart_term.max(other.restart_term),
        }
    }

    /// Whether a candidate whose log ends at (`last_index`, `last_term`)
    /// may get this replica's vote while the guard holds: only if that log
    /// is at least as up to date (Raft §5.4.1) as the log the replica had
    /// before the damage, which ended at `acked_through` with a term of at
    /// most `restart_term` (the term the storage restored, at least that
    /// of any entry it held). Then the election restriction's argument
    /// (Raft §5.4.3) holds with that log in place of the damaged one: the
    /// candidate holds every entry the replica helped commit. With the
    /// extent unknown, the lost entries' terms are unknown too (their hard
    /// state may be lost with them): no vote.
    pub fn allows_vote_for(&self, last_index: Index, last_term: Term) -> bool {
        match self.acked_through {
            Some(a) => {
                last_term > self.restart_term || (last_term == self.restart_term && last_index >= a)
            }
            None => false,
        }
    }

    /// Whether a log whose commit index is `commit`, holding an entry of
    /// term `commit_term` there, satisfies the guard (module docs).
    pub fn is_satisfied(&self, commit: Index, commit_term: Term) -> bool {
        self.acked_through.is_some_and(|a| commit >= a) || commit_term > self.restart_term
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_at_least_as_strict_as_both() {
        let a = RecoveryGuard {
            acked_through: Some(Index(10)),
            restart_term: Term(3),
        };
        let b = RecoveryGuard {
            acked_through: Some(Index(7)),
            restart_term: Term(5),
        };
        let m = a.merge(b);
        assert_eq!(m.acked_through, Some(Index(10)));
        assert_eq!(m.restart_term, Term(5));
        let unknown = RecoveryGuard {
            acked_through: None,
            restart_term: Term(1),
        };
        assert_eq!(a.merge(unknown).acked_through, None);
    }

    #[test]
    fn satisfied_by_reaching_the_acked_index_or_a_later_term() {
        let g = RecoveryGuard {
            acked_through: Some(Index(10)),
            restart_term: Term(3),
        };
        assert!(!g.is_satisfied(Index(9), Term(3)));
        assert!(g.is_satisfied(Index(10), Term(3)));
        assert!(g.is_satisfied(Index(4), Term(4)));
        let unknown = RecoveryGuard {
            acked_through: None,
            restart_term: Term(3),
        };
        assert!(!unknown.is_satisfied(Index(100), Term(3)));
        assert!(unknown.is_satisfied(Index(100), Term(4)));
    }
}
