//! Quorum arithmetic, in one place: who counts (voters and witnesses,
//! never non-voting replicas), how many make a majority, the index a
//! majority holds, and the result of a vote.
//!
//! Used by the leader's commit rule (Raft §5.3, §5.4.2), elections and
//! pre-votes (Raft §5.2, thesis §9.6), CheckQuorum (thesis §6.2), lease
//! reads (thesis §6.4.1) and ReadIndex confirmation (thesis §6.4).

use crate::ids::{Index, ReplicaId};
use crate::membership::Membership;

/// The outcome of counting the votes of an election (or pre-vote).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority of voters and witnesses granted the vote.
    Won,
    /// So many refused that no majority can grant it any more (also the
    /// result when nobody's vote counts).
    Lost,
    /// Neither yet.
    Pending,
}

/// Whether the replicas for which `counts` holds make a majority of the
/// voters and witnesses of `m`. False when `m` has no voter or witness.
pub fn has_quorum(m: &Membership, counts: impl Fn(ReplicaId) -> bool) -> bool {
    let yes = m.quorum_members().filter(|&id| counts(id)).count();
    yes > 0 && yes >= m.quorum()
}

/// Raft §5.3: the highest index that a majority of the voters and
/// witnesses of `m` hold, given each one's match index (`match_of`; 0 for
/// a replica whose progress is unknown). `Index(0)` when `m` has no voter
/// or witness. The caller still applies Raft §5.4.2 (only an entry of the
/// current term is committed by counting).
pub fn committed_index(m: &Membership, match_of: impl Fn(ReplicaId) -> Index) -> Index {
    let mut matched: Vec<Index> = m.quorum_members().map(match_of).collect();
    if matched.is_empty() {
        return Index(0);
    }
    // The quorum()-th largest: held by quorum() members or more.
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[m.quorum() - 1]
}

/// Raft §5.2: counts the votes of the voters and witnesses of `m`
/// (`vote_of`: `Some(true)` granted, `Some(false)` refused, `None` not
/// answered yet); answers from anyone else are ignored.
pub fn vote_result(m: &Membership, vote_of: impl Fn(ReplicaId) -> Option<bool>) -> VoteResult {
    let (mut granted, mut refused, mut total) = (0usize, 0usize, 0usize);
    for id in m.quorum_members() {
        total += 1;
        match vote_of(id) {
            Some(true) => granted += 1,
            Some(false) => refused += 1,
            None => {}
        }
    }
    if total == 0 {
        return VoteResult::Lost;
    }
    let quorum = m.quorum();
    if granted >= quorum {
        VoteResult::Won
    } else if total - refused < quorum {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}
