//! The quorum module against a naive implementation (DESIGN §4: property
//! tests for quorum math): random memberships of voters, witnesses and
//! non-voting replicas, random match indexes and votes.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::support::*;
use longship_raft::quorum::{VoteResult, committed_index, has_quorum, vote_result};

/// A membership from a role per id 1..: 0 absent, 1 voter, 2 non-voting, 3 witness.
fn membership(roles: &[u8]) -> Membership {
    let mut m = Membership::default();
    for (i, role) in roles.iter().enumerate() {
        let id = r(i as u64 + 1);
        match role {
            1 => {
                m.voters.insert(id, String::new());
            }
            2 => {
                m.non_votings.insert(id, String::new());
            }
            3 => {
                m.witnesses.insert(id, String::new());
            }
            _ => {}
        }
    }
    m
}

/// Ids whose vote and acknowledgement count: voters and witnesses.
fn counted(roles: &[u8]) -> Vec<u64> {
    (1..=roles.len() as u64)
        .filter(|&id| matches!(roles[id as usize - 1], 1 | 3))
        .collect()
}

/// More than half of `n`.
fn majority_of(yes: usize, n: usize) -> bool {
    2 * yes > n
}

fn naive_committed(roles: &[u8], matched: &[u64]) -> u64 {
    let ids = counted(roles);
    // The largest candidate index held by a majority.
    (0..=*matched.iter().max().unwrap_or(&0))
        .rev()
        .find(|&i| {
            let holding = ids
                .iter()
                .filter(|&&id| matched[id as usize - 1] >= i)
                .count();
            majority_of(holding, ids.len())
        })
        .unwrap_or(0)
}

fn naive_vote(roles: &[u8], votes: &[Option<bool>]) -> VoteResult {
    let ids = counted(roles);
    let n = ids.len();
    let granted = ids
        .iter()
        .filter(|&&id| votes[id as usize - 1] == Some(true))
        .count();
    let open = ids
        .iter()
        .filter(|&&id| votes[id as usize - 1].is_none())
        .count();
    if n > 0 && majority_of(granted, n) {
        VoteResult::Won
    } else if !majority_of(granted + open, n) {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

fn case() -> impl Strategy<Value = (Vec<u8>, Vec<u64>, Vec<Option<bool>>)> {
    (1..=9usize).prop_flat_map(|n| {
        (
            proptest::collection::vec(0..4u8, n),
            proptest::collection::vec(0..20u64, n),
            proptest::collection::vec(proptest::option::of(any::<bool>()), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Raft §5.3: the committed index is the highest index a majority of
    /// voters and witnesses hold; non-voting replicas never count.
    #[test]
    fn committed_index_matches_naive((roles, matched, _) in case()) {
        let m = membership(&roles);
        let got = committed_index(&m, |id| Index(matched[id.0 as usize - 1]));
        prop_assert_eq!(got, Index(naive_committed(&roles, &matched)));
    }

    /// Raft §5.2: a vote is won by a majority of voters and witnesses and
    /// lost once no majority can be reached; other answers do not count.
    #[test]
    fn vote_result_matches_naive((roles, _, votes) in case()) {
        let m = membership(&roles);
        let map: BTreeMap<ReplicaId, bool> = votes
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (r(i as u64 + 1), v)))
            .collect();
        let got = vote_result(&m, |id| map.get(&id).copied());
        prop_assert_eq!(got, naive_vote(&roles, &votes));
    }

    /// Thesis §6.2, §6.4: a set of replicas is a quorum when it holds a
    /// majority of voters and witnesses.
    #[test]
    fn has_quorum_matches_naive((roles, _, votes) in case()) {
        let m = membership(&roles);
        let got = has_quorum(&m, |id| votes[id.0 as usize - 1] == Some(true));
        let ids = counted(&roles);
        let yes = ids.iter().filter(|&&id| votes[id as usize - 1] == Some(true)).count();
        prop_assert_eq!(got, majority_of(yes, ids.len()));
    }
}
