//! Limits.

use crate::support::*;

/// Flow control (DESIGN.md §6 "every queue has a bound"; etcd's
/// MaxUncommittedEntriesSize): a leader refuses
/// proposals beyond `max_uncommitted_bytes` of uncommitted payload, and
/// accepts them again as entries commit.
#[test]
fn uncommitted_bytes_limit_refuses_then_frees() {
    let o = ClusterOptions {
        max_uncommitted_bytes: 100,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    let e = || Cluster::entry(&"z".repeat(60));
    assert_eq!(c.raft(1).propose(vec![e()]), Ok(()));
    assert_eq!(
        c.raft(1).propose(vec![e()]),
        Err(ProposalError::TooManyUncommittedBytes)
    );
    c.process(r(1)); // durable on the leader, the appends not yet delivered
    assert_eq!(
        c.raft(1).propose(vec![e()]),
        Err(ProposalError::TooManyUncommittedBytes),
        "nothing committed yet"
    );
    c.stabilize();
    assert_eq!(committed(&c, 1), Index(5));
    assert_eq!(c.raft(1).propose(vec![e()]), Ok(()), "freed by the commit");
}

/// A follower of voters {1, 2, 3} whose log holds 10 committed entries
/// (term 1) of which none is applied, with `max_apply_bytes`.
fn ten_committed(max_apply_bytes: u64) -> Raft<MemLog> {
    let c = RaftConfig {
        max_apply_bytes,
        ..cfg(2)
    };
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1; 10]));
    let hs = HardState {
        term: Term(1),
        vote: ReplicaId::NONE,
        commit: Index(10),
    };
    Raft::new(c, log, hs, voters(&[1, 2, 3]), Index(0)).unwrap()
}

/// Apply batching (DESIGN.md §6 "every batch has a bound"): one update
/// hands out at most `max_apply_bytes` of committed entries (at least
/// one), in order.
#[test]
fn apply_batches_are_bounded_by_max_apply_bytes() {
    let per_entry = ent(1, 1).size_bytes();
    let mut f = ten_committed(2 * per_entry);
    let mut applied = Vec::new();
    while f.has_update() {
        let u = cycle(&mut f);
        assert!(!u.committed_entries.is_empty());
        assert!(longship_raft::entries_size(&u.committed_entries) <= 2 * per_entry);
        applied.extend(u.committed_entries.iter().map(|e| e.index.0));
    }
    assert_eq!(applied, (1..=10).collect::<Vec<_>>());
}

/// Apply back-pressure (DESIGN.md §6 "bounded queues"): committed entries
/// handed out in batches not yet wholly reported applied never exceed
/// `max_apply_bytes` (at least one entry when none is outstanding). A slow state machine
/// holds further entries back in the log instead of in an apply queue
/// that grows without bound; reporting progress releases them.
#[test]
fn committed_entries_wait_while_the_state_machine_lags() {
    let per_entry = ent(1, 1).size_bytes();
    let mut f = ten_committed(3 * per_entry);
    // Cycles that never report anything applied.
    let mut handed = Vec::new();
    while f.has_update() {
        let u = f.get_update();
        f.advance(&u);
        handed.extend(u.committed_entries.iter().map(|e| e.index.0));
    }
    assert_eq!(handed, vec![1, 2, 3], "held back while nothing is applied");
    assert!(f.apply_throttled());
    // A batch counts until all of it is applied.
    f.applied_to(Index(2));
    assert!(f.apply_throttled());
    assert!(!f.has_update());
    f.applied_to(Index(3));
    assert!(!f.apply_throttled());
    let u = f.get_update();
    f.advance(&u);
    let next: Vec<u64> = u.committed_entries.iter().map(|e| e.index.0).collect();
    assert_eq!(next, vec![4, 5, 6]);
    assert!(f.apply_throttled());
    // Applied as handed out: the rest flows with the usual batch bound.
    f.applied_to(Index(6));
    let mut rest = Vec::new();
    while f.has_update() {
        let u = cycle(&mut f);
        rest.extend(u.committed_entries.iter().map(|e| e.index.0));
    }
    assert_eq!(rest, (7..=10).collect::<Vec<_>>());
    assert!(!f.apply_throttled());
}
