//! Leadership transfer (thesis §3.10).

use crate::support::*;

/// Thesis §3.10: the leader first brings the target's log up to date, then
/// sends it TimeoutNow; the target campaigns and wins. Proposals are
/// refused while the transfer is in progress.
#[test]
fn transfer_sends_timeout_now_once_target_caught_up() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.drop_matching(|m| m.to == r(3)); // 3 misses the no-op
    c.stabilize();
    assert_eq!(last_index(&c, 3), Index(3));
    c.raft(1).transfer_leader(r(3)).unwrap();
    assert_eq!(c.raft(1).transfer_target(), r(3));
    assert_eq!(
        c.raft(1).propose(vec![Cluster::entry("no")]),
        Err(ProposalError::TransferInProgress)
    );
    c.process(r(1));
    assert!(
        queued(&c, MessageType::TimeoutNow, 1, 3).is_empty(),
        "3 is behind"
    );

    c.tick(1);
    let sent = Cell::new(false);
    pump(&mut c, |c, m| {
        if m.msg_type == MessageType::TimeoutNow {
            assert_eq!(
                last_index(c, 3),
                last_index(c, 1),
                "TimeoutNow to a lagging target"
            );
            sent.set(true);
        }
    });
    assert!(sent.get());
    assert!(c.raft(3).is_leader());
    assert_eq!(c.raft(3).term(), Term(3));
}

/// Thesis §3.10: if the transfer does not complete within an election
/// timeout, the leader aborts it and resumes accepting proposals.
#[test]
fn transfer_is_aborted_after_an_election_timeout() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    c.raft(1).transfer_leader(r(3)).unwrap();
    for _ in 0..ELECTION - 1 {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(c.raft(1).transfer_target(), r(3), "still trying");
    c.tick(1);
    c.stabilize();
    assert_eq!(c.raft(1).transfer_target(), ReplicaId::NONE);
    assert!(c.raft(1).is_leader());
    propose(&mut c, 1, "again");
}

/// Thesis §3.10 with §9.6 and §6.2: the transfer target campaigns at once,
/// without a pre-vote round, and its vote requests override the voters'
/// leader lease, so transfer works with PreVote and CheckQuorum.
#[test]
fn transfer_target_skips_pre_vote_and_overrides_lease() {
    let o = ClusterOptions {
        pre_vote: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.raft(1).transfer_leader(r(2)).unwrap();
    c.process(r(1));
    deliver_one(&mut c, |m| m.msg_type == MessageType::TimeoutNow);
    assert_eq!(c.raft(2).role(), Role::Candidate, "no pre-vote round");
    assert_eq!(c.raft(2).term(), term.next());
    c.process(r(2));
    let reqs = queued(&c, MessageType::RequestVote, 2, 3);
    assert_eq!(reqs[0].context, CAMPAIGN_TRANSFER);
    c.stabilize();
    assert_eq!(c.leader(), Some(r(2)));
    assert!(c.nodes.values().all(|n| n.raft.term() == term.next()));
}

/// Thesis §3.10: only a voter can lead, so a transfer to a witness, a
/// non-voting replica or an unknown replica is refused.
#[test]
fn transfer_to_witness_non_voting_or_unknown_is_refused() {
    let mut m = voters(&[1, 2, 3]);
    m.non_votings.insert(r(4), "node4".into());
    m.witnesses.insert(r(5), "node5".into());
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1]));
    let hs = HardState {
        term: Term(1),
        vote: ReplicaId::NONE,
        commit: Index(1),
    };
    let mut l = Raft::new(cfg(1), log, hs, m, Index(1)).unwrap();
    make_leader(&mut l, &[2, 3]);
    for target in [4, 5, 9] {
        assert_eq!(
            l.transfer_leader(r(target)),
            Err(ProposalError::Invalid),
            "{target}"
        );
        assert_eq!(l.transfer_target(), ReplicaId::NONE);
    }
    assert_eq!(l.transfer_leader(r(2)), Ok(()));
}
