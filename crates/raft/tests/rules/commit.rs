//! Commit (Raft §5.4.2).

use crate::support::*;

/// Raft §5.4.2 (Figure 8): a leader commits by counting replicas only
/// entries of its own term; an entry of an earlier term is not committed
/// when a majority stores it, only indirectly, with a later entry of the
/// current term.
#[test]
fn only_current_term_entries_commit_by_counting() {
    let o = ClusterOptions {
        max_append_bytes: 1, // one entry per append
        ..opts()
    };
    let mut c = cluster(3, o);
    // 1 holds entry 4 of term 2 that no one else has (its leader crashed).
    c.raft(1).log_reader_mut().append(&[ent(4, 2)]);
    c.node_mut(1).hard_state.term = Term(2);
    c.restart(r(1));
    c.stabilize();
    c.raft(1).campaign();
    let majority_held_old_entry = Cell::new(false);
    pump(&mut c, |c, _| {
        let l = &c.node(1).raft;
        let commit = l.log().committed();
        assert!(
            commit == Index(3) || l.log().term(commit) == Ok(l.term()),
            "committed {commit} of an earlier term by counting"
        );
        if l.is_leader() && commit == Index(3) {
            let holders = l
                .progress()
                .values()
                .filter(|p| p.match_index >= Index(4))
                .count();
            if holders >= 2 {
                majority_held_old_entry.set(true);
            }
        }
    });
    assert!(
        majority_held_old_entry.get(),
        "scenario reached: 4 on a majority, uncommitted"
    );
    assert_eq!(c.raft(1).term(), Term(3));
    for id in 1..=3 {
        assert_eq!(committed(&c, id), Index(5));
        assert_eq!(
            c.node(id).applied[&Index(4)].term,
            Term(2),
            "committed indirectly"
        );
    }
}

/// Raft §5.4.2 with thesis §10.2.1: the leader may send entries before
/// they are durable locally, but counts its own log toward a commit only
/// once it is: the commit waits for `advance`.
#[test]
fn leader_counts_itself_only_after_persisting() {
    // Alone, the leader's own durability is the whole quorum.
    let mut c = Cluster::new(&[1], opts());
    c.raft(1).campaign();
    let l = c.raft(1);
    assert!(l.is_leader());
    let u = l.get_update();
    assert_eq!(u.entries.len(), 1, "the no-op");
    assert_eq!(l.log().committed(), Index(1), "not durable yet");
    l.log_reader_mut().append(&u.entries);
    l.advance(&u);
    assert_eq!(l.log().committed(), Index(2));

    // With three, one follower's ack is not enough before the leader's own write.
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    propose(&mut c, 1, "x");
    let u = c.raft(1).get_update();
    c.queue
        .extend(u.messages.iter().filter(|m| m.to == r(2)).cloned());
    deliver_one(&mut c, |m| m.msg_type == MessageType::Replicate);
    c.process(r(2));
    deliver_one(&mut c, |m| m.msg_type == MessageType::ReplicateResp);
    assert_eq!(c.raft(1).progress()[&r(2)].match_index, Index(5));
    assert_eq!(committed(&c, 1), Index(4), "leader's own copy not durable");
    let l = c.raft(1);
    l.log_reader_mut().append(&u.entries);
    l.advance(&u);
    assert_eq!(committed(&c, 1), Index(5));
}
