//! Membership changes (thesis §4.1–§4.2).

use crate::support::*;

/// Thesis §4.1 (and the 2015 fix on raft-dev): a leader appends no config
/// change before it committed an entry of its own term.
#[test]
fn config_change_refused_before_commit_in_current_term() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    let add4 = cc(ConfigChangeType::AddNonVoting, 4);
    assert_eq!(
        c.raft(1).propose_config_change(&add4),
        Err(ProposalError::NotReady)
    );
    c.stabilize();
    assert_eq!(c.raft(1).propose_config_change(&add4), Ok(()));
}

/// Thesis §4.1: single-server changes, one at a time: a new change is
/// refused while the previous one is not yet applied.
#[test]
fn one_pending_config_change_at_a_time() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    let add = |id| cc(ConfigChangeType::AddNonVoting, id);
    assert_eq!(c.raft(1).propose_config_change(&add(4)), Ok(()));
    assert_eq!(
        c.raft(1).propose_config_change(&add(5)),
        Err(ProposalError::PendingConfigChange)
    );
    c.stabilize();
    assert!(c.raft(1).membership().is_non_voting(r(4)));
    assert_eq!(c.raft(1).propose_config_change(&add(5)), Ok(()));
}

/// Thesis §4.1 (in the variant of etcd and dragonboat, where a change
/// takes effect when applied rather than when appended): a committed but
/// not yet applied change does not change the membership or the leader's
/// replication targets.
#[test]
fn config_change_takes_effect_when_applied() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.add_node(r(4), Membership::default());
    c.raft(1)
        .propose_config_change(&cc(ConfigChangeType::AddReplica, 4))
        .unwrap();
    c.process(r(1));
    c.deliver_matching(|_| true);
    c.process(r(2));
    c.process(r(3));
    c.deliver_matching(|_| true);
    assert_eq!(committed(&c, 1), Index(5), "committed");
    assert!(!c.raft(1).membership().contains(r(4)), "not applied yet");
    assert!(!c.raft(1).progress().contains_key(&r(4)));
    c.process(r(1));
    assert!(c.raft(1).membership().is_voter(r(4)));
    assert!(c.raft(1).progress().contains_key(&r(4)));
    c.stabilize();
    for id in 1..=4 {
        assert!(c.raft(id).membership().is_voter(r(4)), "node {id}");
    }
    assert_eq!(last_index(&c, 4), Index(5), "the new voter caught up");
}

/// Thesis §4.2.2: a leader removed from the configuration steps down once
/// the removal is applied, never campaigns again, and the others elect a
/// new leader.
#[test]
fn removing_the_leader_makes_it_step_down() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.raft(1)
        .propose_config_change(&cc(ConfigChangeType::RemoveReplica, 1))
        .unwrap();
    c.stabilize();
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert!(!c.raft(1).promotable());
    assert!(c.raft(2).membership().removed.contains(&r(1)));
    for _ in 0..10 * ELECTION {
        tick_all(&mut c, 1);
        assert_ne!(c.raft(1).role(), Role::Candidate);
        if c.leader().is_some_and(|l| l != r(1)) {
            break;
        }
    }
    let leader = c.leader().expect("2 or 3 leads");
    assert_ne!(leader, r(1));
    propose(&mut c, leader.0, "after");
    c.stabilize();
    assert_eq!(committed(&c, 2), committed(&c, 3));
}

/// Thesis §4.2.3: a removed replica cannot disrupt the group: its messages
/// (even of a higher term) are ignored.
#[test]
fn removed_replica_messages_are_ignored() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.raft(1)
        .propose_config_change(&cc(ConfigChangeType::RemoveReplica, 3))
        .unwrap();
    c.stabilize();
    let term = c.raft(2).term();
    c.raft(2)
        .step(vote_request(3, 2, term.0 + 5, (100, term.0 + 5)));
    c.raft(2)
        .step(msg(MessageType::Heartbeat, 3, 2, term.0 + 6));
    assert_eq!(c.raft(2).term(), term);
    assert_eq!(c.raft(2).leader_id(), r(1));
    c.process(r(2));
    assert!(c.queue.iter().all(|m| m.to != r(3)), "no answer to 3");
}

/// Membership (DESIGN.md §1, dragonboat semantics; thesis §4.2.3 for why a
/// removed server must stay out): a removed replica id is never reused:
/// adding it again in any role is refused, at proposal and when applied.
#[test]
fn removed_id_is_never_added_again() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.raft(1)
        .propose_config_change(&cc(ConfigChangeType::RemoveReplica, 3))
        .unwrap();
    c.stabilize();
    for t in [
        ConfigChangeType::AddReplica,
        ConfigChangeType::AddNonVoting,
        ConfigChangeType::AddWitness,
    ] {
        assert_eq!(
            c.raft(1).propose_config_change(&cc(t, 3)),
            Err(ProposalError::Invalid),
            "{t:?}"
        );
        assert_eq!(
            c.raft(2).apply_config_change(&cc(t, 3), Index(99)),
            Err(ConfigChangeRejected::Removed(r(3)))
        );
    }
    assert!(!c.raft(2).membership().contains(r(3)));
}

/// Thesis §4.2.1: a non-voting member receives the log but is counted
/// neither for commitment nor in elections, and never campaigns.
#[test]
fn non_voting_replica_gets_the_log_but_never_counts() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    add_member(&mut c, 1, ConfigChangeType::AddNonVoting, 4);
    assert!(c.raft(4).membership().is_non_voting(r(4)));
    assert_eq!(c.node(4).applied_index, c.node(1).applied_index);

    // Leader + non-voting replica: not a quorum of {1, 2, 3}.
    c.partition(&[1, 4], &[2, 3]);
    let before = committed(&c, 1);
    propose(&mut c, 1, "x");
    c.stabilize();
    assert_eq!(last_index(&c, 4), last_index(&c, 1), "4 stores the entry");
    assert_eq!(committed(&c, 1), before, "but it does not count");

    for _ in 0..5 * ELECTION {
        c.tick(4);
        c.stabilize();
    }
    assert_eq!(c.raft(4).role(), Role::Follower, "never campaigns");

    // A candidate does not ask it for a vote, and does not count one.
    c.heal();
    c.isolate(3);
    c.raft(2).campaign();
    let term = c.raft(2).term();
    c.process(r(2));
    assert!(queued(&c, MessageType::RequestVote, 2, 4).is_empty());
    c.drop_matching(|_| true);
    c.raft(2)
        .step(msg(MessageType::RequestVoteResp, 4, 2, term.0));
    assert_eq!(
        c.raft(2).role(),
        Role::Candidate,
        "2 and 4 are not two of three voters"
    );
    c.raft(2)
        .step(msg(MessageType::RequestVoteResp, 1, 2, term.0));
    assert!(c.raft(2).is_leader(), "2 and 1 are");
}

/// Thesis §4.2.1: a non-voting replica promoted to voter counts for
/// commitment and may campaign.
#[test]
fn promoted_non_voting_replica_counts() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    add_member(&mut c, 1, ConfigChangeType::AddNonVoting, 4);
    assert!(!c.raft(4).promotable());
    add_member(&mut c, 1, ConfigChangeType::AddReplica, 4);
    for id in 1..=4 {
        let m = c.raft(id).membership().clone();
        assert!(m.is_voter(r(4)) && !m.is_non_voting(r(4)), "node {id}");
        assert_eq!(m.quorum(), 3);
    }
    assert!(c.raft(4).promotable());
    // 1, 2 and 4 are three of four voters.
    c.isolate(3);
    propose(&mut c, 1, "y");
    c.stabilize();
    assert_eq!(committed(&c, 1), last_index(&c, 1));
}

/// Witness replicas (DESIGN.md §1, dragonboat's witness; majorities as in
/// Raft §5.2 and §5.3): a witness votes and counts toward commitment,
/// receives entries without their payloads (config changes stay whole),
/// and never campaigns.
#[test]
fn witness_votes_and_counts_but_never_leads_and_gets_no_payloads() {
    let mut c = Cluster::new(&[1, 2], opts());
    elect(&mut c, 1);
    c.add_node(r(3), Membership::default());
    c.raft(1)
        .propose_config_change(&cc(ConfigChangeType::AddWitness, 3))
        .unwrap();
    c.stabilize();
    assert!(c.raft(3).membership().is_witness(r(3)));
    assert!(!c.raft(3).promotable());

    // Leader + witness commit without 2.
    c.isolate(2);
    propose(&mut c, 1, "payload");
    c.stabilize();
    let idx = last_index(&c, 1);
    assert_eq!(committed(&c, 1), idx);
    let stored = c
        .node(3)
        .raft
        .log()
        .entries(idx, idx.next(), u64::MAX)
        .unwrap();
    assert_eq!(stored[0].entry_type, EntryType::Metadata);
    assert!(stored[0].cmd.is_empty());
    assert_eq!(stored[0].term, c.raft(1).term());
    let conf = c
        .node(3)
        .raft
        .log()
        .entries(Index(4), Index(5), u64::MAX)
        .unwrap();
    assert!(
        conf[0].is_config_change() && !conf[0].cmd.is_empty(),
        "config changes stay whole"
    );

    // The witness never campaigns, however long it waits.
    c.heal();
    c.isolate(3);
    for _ in 0..5 * ELECTION {
        c.tick(3);
        c.stabilize();
    }
    assert_eq!(c.raft(3).role(), Role::Follower);
    // (2 catches up meanwhile.)
    propose(&mut c, 1, "more");
    c.stabilize();
    assert_eq!(last_index(&c, 2), last_index(&c, 1));

    // Its vote elects 2 while 1 is away.
    c.heal();
    c.isolate(1);
    c.raft(2).campaign();
    c.stabilize();
    assert!(c.raft(2).is_leader());
}

/// Ordered config change (DESIGN.md §1, dragonboat's config change id, on
/// top of thesis §4.1's one change at a time): a change names the
/// configuration it was based on and is refused if another change came
/// first; a stale change that reaches `apply` has no effect.
#[test]
fn ordered_config_change_is_rejected_when_stale() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    let base = c.raft(1).membership().config_change_id;
    assert_eq!(base, Index(3), "the bootstrap entries");
    let based_on = |id, on| ConfigChange {
        config_change_id: on,
        ..cc(ConfigChangeType::AddNonVoting, id)
    };
    c.raft(1).propose_config_change(&based_on(4, base)).unwrap();
    c.stabilize();
    let now = c.raft(1).membership().config_change_id;
    assert_eq!(now, Index(5));
    assert_eq!(
        c.raft(1).propose_config_change(&based_on(5, base)),
        Err(ProposalError::Invalid)
    );
    let mut m = c.raft(2).membership().clone();
    assert!(matches!(
        m.apply(&based_on(5, base), Index(6)),
        Err(ConfigChangeRejected::Stale { .. })
    ));
    assert_eq!(
        m,
        *c.raft(2).membership(),
        "a rejected change has no effect"
    );
    assert_eq!(c.raft(1).propose_config_change(&based_on(5, now)), Ok(()));
}

/// Thesis §4.1: a replica with committed config changes it has not applied
/// does not know its configuration yet, so it does not campaign.
#[test]
fn unapplied_committed_config_change_prevents_campaign() {
    let m = voters(&[1, 2, 3]);
    let (entries, hs) = bootstrap_entries(&m);
    let mut log = MemLog::new();
    log.append(&entries);
    let mut f = Raft::new(cfg(1), log, hs, m, Index(0)).unwrap();
    f.campaign();
    for _ in 0..3 * ELECTION {
        f.tick();
    }
    assert_eq!(f.role(), Role::Follower);
    assert_eq!(f.term(), Term(1));
    let u = cycle(&mut f); // applies the bootstrap entries
    assert_eq!(u.committed_entries.len(), 3);
    assert!(all_messages(&u).is_empty());
    f.campaign();
    assert_eq!(f.role(), Role::Candidate);
}
