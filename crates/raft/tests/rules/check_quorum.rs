//! CheckQuorum (thesis §6.2).

use crate::support::*;

/// Thesis §6.2: a leader steps down if an election timeout passes without
/// a successful round of heartbeats to a majority; one that does hear from
/// a majority stays leader.
#[test]
fn leader_without_quorum_steps_down_after_election_timeout() {
    let mut c = cluster(
        3,
        ClusterOptions {
            check_quorum: true,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let term = c.raft(1).term();
    for _ in 0..5 * ELECTION {
        c.tick(1);
        c.stabilize();
    }
    assert!(
        c.raft(1).is_leader(),
        "a leader hearing from a quorum stays"
    );

    c.isolate(1);
    for _ in 0..ELECTION - 1 {
        c.tick(1);
        c.stabilize();
    }
    assert!(c.raft(1).is_leader(), "not before an election timeout");
    for _ in 0..ELECTION + 1 {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert_eq!(
        c.raft(1).term(),
        term,
        "stepping down does not change the term"
    );
}

/// Thesis §6.2 (§4.2.3): with CheckQuorum, a replica that heard from a
/// leader within the election timeout ignores RequestVote of a higher
/// term (it neither answers nor adopts the term), unless the request
/// comes from a leadership-transfer campaign (thesis §3.10).
#[test]
fn replicas_in_lease_ignore_higher_term_votes_unless_transfer() {
    let mut c = cluster(
        3,
        ClusterOptions {
            check_quorum: true,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.raft(3).campaign();
    c.process(r(3));
    c.deliver_matching(|m| m.msg_type == MessageType::RequestVote);
    c.process_all();
    assert!(
        c.queue
            .iter()
            .all(|m| m.msg_type != MessageType::RequestVoteResp)
    );
    assert_eq!((c.raft(1).term(), c.raft(2).term()), (term, term));
    assert!(c.raft(1).is_leader());

    let last = c.raft(3).log().last_index();
    let forced = Message {
        context: CAMPAIGN_TRANSFER,
        ..vote_request(3, 2, term.0 + 1, (last.0, term.0))
    };
    c.raft(2).step(forced);
    assert_eq!(c.raft(2).term(), term.next());
    c.process(r(2));
    assert!(!queued(&c, MessageType::RequestVoteResp, 2, 3)[0].reject);
}
