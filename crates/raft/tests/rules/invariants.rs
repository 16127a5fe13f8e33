//! Invariants.

use crate::support::*;

/// Raft §5.1: terms only grow: a message of a lower term never lowers the
/// term (a stale leader is told the newer term instead, thesis §9.6).
#[test]
fn term_never_goes_back() {
    let mut f = replica(
        RaftConfig {
            pre_vote: true,
            ..cfg(2)
        },
        &[1, 1, 1],
        5,
        3,
    );
    f.step(append(1, 2, 3, (3, 1), vec![ent(4, 3)], 3));
    f.step(vote_request(3, 2, 4, (10, 4)));
    assert_eq!(f.term(), Term(5));
    assert_eq!(f.log().last_index(), Index(3), "stale append ignored");
    let u = cycle(&mut f);
    let resp: Vec<Message> = all_messages(&u)
        .into_iter()
        .filter(|m| m.to == r(1))
        .collect();
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].term, Term(5), "the stale leader learns the term");
}

/// Raft §5.3, Figure 2: the commit index never decreases, whatever commit
/// index a (possibly stale) message carries.
#[test]
fn commit_never_goes_back() {
    let mut f = replica(cfg(2), &[1; 10], 1, 8);
    f.step(heartbeat(1, 2, 1, 3));
    f.step(append(1, 2, 1, (8, 1), vec![], 5));
    assert_eq!(f.log().committed(), Index(8));
    let u = cycle(&mut f);
    assert!(u.hard_state.is_none(), "nothing changed");
}

/// Raft §5.4 (Leader Completeness, State Machine Safety), asserted in the
/// log: committed entries are never overwritten.
#[test]
#[should_panic(expected = "would overwrite committed")]
fn raft_log_refuses_to_overwrite_committed_entries() {
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1, 1, 1]));
    let mut l = RaftLog::new(log, Index(3), Index(3));
    l.append(&[ent(3, 2)]);
}

/// Raft §5.4, asserted in the log: a conflict at or below the commit index
/// is a safety violation, never a truncation.
#[test]
#[should_panic(expected = "conflicts with committed entry")]
fn raft_log_refuses_conflict_with_committed_entry() {
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1, 1, 1]));
    let mut l = RaftLog::new(log, Index(3), Index(3));
    l.maybe_append(Index(1), Term(1), Index(3), &[ent(2, 2)]);
}

/// Raft Figure 2 (`commitIndex` increases monotonically), asserted in the
/// log: the commit index never moves back and cannot pass the last entry.
#[test]
fn raft_log_commit_is_monotonic_and_bounded() {
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1, 1, 1]));
    let mut l = RaftLog::new(log, Index(2), Index(2));
    l.commit_to(Index(1));
    assert_eq!(l.committed(), Index(2));
    l.commit_to(Index(3));
    assert_eq!(l.committed(), Index(3));
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.commit_to(Index(4))));
    assert!(err.is_err(), "commit beyond the last entry");
}

/// Raft §5.1 (terms only grow, every entry's term is at most the current
/// term) and Figure 2 (`commitIndex` <= last log index), checked by the
/// core itself: `check_invariants` holds through an election, replication
/// and a membership change, and reports a state that breaks them (here a
/// durable state no correct history produces: entries of a term newer
/// than the replica's term).
#[test]
fn check_invariants_holds_in_a_cluster_and_reports_a_broken_state() {
    let mut c = cluster(3, opts());
    let check = |c: &Cluster| {
        for n in c.nodes.values() {
            n.raft.check_invariants().expect("invariants hold");
        }
    };
    check(&c);
    elect(&mut c, 1);
    check(&c);
    propose(&mut c, 1, "x");
    c.stabilize();
    check(&c);
    add_member(&mut c, 1, ConfigChangeType::AddWitness, 4);
    check(&c);

    let broken = replica(cfg(2), &[1, 3, 3], 2, 1);
    let err = broken
        .check_invariants()
        .expect_err("entry terms ahead of term 2");
    assert_eq!(err.replica, r(2));
    assert!(err.what.contains("ahead of the term"), "{err}");
}
