//! What may be sent before persisting (Raft Figure 2, thesis §10.2.1).

use crate::support::*;

/// Raft Figure 2 ("respond after persisting"): vote grants and append
/// acknowledgements leave only after the persistence of their update.
#[test]
fn votes_and_append_acks_wait_for_persistence() {
    let mut v = replica(cfg(2), &[1, 1, 1], 1, 3);
    v.step(vote_request(1, 2, 2, (3, 1)));
    let u = cycle(&mut v);
    assert!(u.messages.is_empty());
    assert_eq!(
        u.persisted_messages[0].msg_type,
        MessageType::RequestVoteResp
    );

    let mut f = replica(cfg(2), &[1, 1, 1], 1, 3);
    f.step(append(1, 2, 1, (3, 1), vec![ent(4, 1)], 3));
    let u = cycle(&mut f);
    assert!(u.messages.is_empty());
    assert_eq!(u.persisted_messages[0].msg_type, MessageType::ReplicateResp);
    assert_eq!(u.entries, vec![ent(4, 1)]);
    // Heartbeat answers depend on nothing unpersisted: they may leave at once.
    f.step(msg(MessageType::Heartbeat, 1, 2, 1));
    let u = cycle(&mut f);
    assert_eq!(u.messages[0].msg_type, MessageType::HeartbeatResp);
    assert!(u.persisted_messages.is_empty());
}

/// Thesis §10.2.1: a leader sends its appends before (in parallel with)
/// writing them to its own disk.
#[test]
fn leader_replication_leaves_before_persistence() {
    let mut l = replica(cfg(1), &[1, 1, 1], 1, 3);
    make_leader(&mut l, &[2]);
    for f in [2, 3] {
        // Followers acknowledge the no-op: the leader pipelines to them.
        l.step(Message {
            log_index: Index(4),
            ..msg(MessageType::ReplicateResp, f, 1, 2)
        });
    }
    cycle(&mut l);
    l.propose(vec![Cluster::entry("x")]).unwrap();
    let u = cycle(&mut l);
    assert_eq!(u.entries.len(), 1);
    let to: Vec<u64> = u
        .messages
        .iter()
        .filter(|m| m.msg_type == MessageType::Replicate)
        .map(|m| m.to.0)
        .collect();
    assert_eq!(to, vec![2, 3]);
    assert!(u.persisted_messages.is_empty());
}

/// Raft Figure 2 (`currentTerm` and `votedFor` are persisted before
/// responding): every message of a replica whose term or vote is not yet
/// durable waits for persistence, whatever its type.
#[test]
fn messages_wait_while_the_term_is_not_durable() {
    let mut c = replica(cfg(1), &[1, 1, 1], 1, 3);
    c.campaign();
    let u = cycle(&mut c);
    assert!(u.messages.is_empty());
    assert_eq!(u.persisted_messages.len(), 2, "both vote requests wait");

    let mut f = replica(cfg(2), &[1, 1, 1], 1, 3);
    f.step(msg(MessageType::Heartbeat, 1, 2, 5));
    let u = cycle(&mut f);
    assert_eq!(u.hard_state.map(|h| h.term), Some(Term(5)));
    assert!(u.messages.is_empty());
    assert_eq!(u.persisted_messages[0].msg_type, MessageType::HeartbeatResp);
}
