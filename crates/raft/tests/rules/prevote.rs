//! PreVote (thesis §9.6).

use crate::support::*;

/// Thesis §9.6: a pre-vote round changes no term and no vote, neither on
/// the pre-candidate nor on the replicas that answer it.
#[test]
fn pre_vote_changes_no_term_or_vote() {
    let mut c = cluster(
        3,
        ClusterOptions {
            pre_vote: true,
            ..opts()
        },
    );
    c.raft(1).campaign();
    assert_eq!(c.raft(1).role(), Role::PreCandidate);
    c.process(r(1));
    let reqs = queued(&c, MessageType::RequestPreVote, 1, 2);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].term, Term(2), "asks about the next term");
    c.deliver_matching(|m| m.msg_type == MessageType::RequestPreVote);
    c.process_all();
    for id in 1..=3 {
        let n = c.node(id);
        assert_eq!(n.raft.hard_state().term, Term(1), "node {id}");
        assert_eq!(n.raft.hard_state().vote, ReplicaId::NONE, "node {id}");
        assert_eq!(
            n.hard_state.term,
            Term(1),
            "node {id} persisted nothing new"
        );
    }
    for id in [2, 3] {
        let resp = queued(&c, MessageType::RequestPreVoteResp, id, 1);
        assert!(!resp[0].reject, "{id} would vote");
    }
}

/// Thesis §9.6: a replica refuses a pre-vote while it heard from a leader
/// within the election timeout, so a pre-candidate cannot disrupt a
/// healthy leader; once that leader is silent for an election timeout the
/// same pre-vote is granted.
#[test]
fn pre_vote_refused_while_leader_heard_recently() {
    let mut c = cluster(
        3,
        ClusterOptions {
            pre_vote: true,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.raft(3).campaign();
    c.process(r(3));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::RequestPreVote && m.to == r(2)
    });
    c.process(r(2));
    assert!(queued(&c, MessageType::RequestPreVoteResp, 2, 3)[0].reject);
    c.stabilize();
    assert_eq!(c.leader(), Some(r(1)));
    assert!(
        c.nodes.values().all(|n| n.raft.term() == term),
        "no term grew"
    );

    // 2 no longer hears from the leader: after an election timeout it would
    // vote (whether or not it started a pre-vote of its own meanwhile).
    c.isolate(1);
    for _ in 0..ELECTION {
        c.tick(2);
    }
    c.process(r(2));
    c.drop_matching(|_| true);
    c.raft(3).campaign();
    c.process(r(3));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::RequestPreVote && m.to == r(2)
    });
    c.process(r(2));
    assert!(!queued(&c, MessageType::RequestPreVoteResp, 2, 3)[0].reject);
}

/// Thesis §9.6 (with CheckQuorum, §6.2): a partitioned replica keeps
/// failing its pre-votes, so its term does not grow; when the partition
/// heals it rejoins without deposing the leader.
#[test]
fn partitioned_pre_candidate_term_does_not_grow_nor_disrupt() {
    let o = ClusterOptions {
        pre_vote: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.isolate(3);
    for _ in 0..10 * ELECTION {
        tick_all(&mut c, 1);
        assert_ne!(c.raft(3).role(), Role::Candidate);
    }
    assert_eq!(c.raft(3).term(), term);
    c.heal();
    tick_all(&mut c, 3 * ELECTION);
    assert_eq!(c.leader(), Some(r(1)));
    assert!(c.nodes.values().all(|n| n.raft.term() == term));
    assert_eq!(c.raft(3).leader_id(), r(1));
}
