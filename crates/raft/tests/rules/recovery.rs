//! Protocol-aware recovery (docs/recovery.md; Alagappan et al., FAST 2018):
//! a replica whose storage lost acknowledged entries must not vote until
//! its log holds them again.

use crate::support::*;

fn guard(acked_through: u64, restart_term: u64) -> RecoveryGuard {
    RecoveryGuard {
        acked_through: Some(Index(acked_through)),
        restart_term: Term(restart_term),
    }
}

/// A guarded replica grants neither votes nor pre-votes to a candidate
/// whose log is up to date with its damaged log but behind the log it had
/// before the damage, and still answers (with a reject).
#[test]
fn guarded_replica_grants_no_vote_or_pre_vote() {
    for pre in [false, true] {
        let mut v = replica(cfg(3), &[1, 1, 1], 1, 3);
        v.set_recovery_guard(guard(5, 1));
        let mut m = vote_request(1, 3, 2, (4, 1));
        if pre {
            m.msg_type = MessageType::RequestPreVote;
        }
        v.step(m);
        let u = cycle(&mut v);
        let resp = only_message(&u);
        assert!(resp.reject, "guarded replica granted a vote (pre: {pre})");
        assert_eq!(v.hard_state().vote, ReplicaId::NONE);
    }
}

/// A guarded replica votes for a candidate whose log is at least as up to
/// date as the one it had before the damage (it holds every entry the
/// replica could have helped commit): a later last term, or the same term
/// and at least the acknowledged index. With the extent unknown, never.
#[test]
fn guarded_replica_votes_for_a_log_past_what_it_lost() {
    for (last, granted) in [
        ((5, 1), true),
        ((9, 1), true),
        ((2, 2), true),
        ((4, 1), false),
    ] {
        let mut v = replica(cfg(3), &[1, 1, 1], 1, 3);
        v.set_recovery_guard(guard(5, 1));
        v.step(vote_request(1, 3, 2, last));
        let u = cycle(&mut v);
        assert_eq!(!only_message(&u).reject, granted, "candidate at {last:?}");
    }
    let mut v = replica(cfg(3), &[1, 1, 1], 1, 3);
    v.set_recovery_guard(RecoveryGuard {
        acked_through: None,
        restart_term: Term(1),
    });
    v.step(vote_request(1, 3, 2, (100, 1)));
    assert!(only_message(&cycle(&mut v)).reject);
}

/// A guarded replica never campaigns: not on election timeout, not on
/// `campaign()`, not on TimeoutNow from a leader transferring to it.
#[test]
fn guarded_replica_never_campaigns() {
    let mut f = replica(cfg(1), &[1, 1, 1], 1, 3);
    f.set_recovery_guard(guard(5, 1));
    for _ in 0..10 * ELECTION {
        f.tick();
    }
    assert_eq!(f.role(), Role::Follower);
    f.campaign();
    f.step(msg(MessageType::TimeoutNow, 2, 1, 1));
    assert_eq!(f.role(), Role::Follower);
    assert_eq!(f.term(), Term(1), "a guarded replica started an election");
}

/// The guard is lifted once the commit index learnt from a leader reaches
/// the index the replica may have acknowledged; the update that lifts it
/// says so (for the storage) together with the entries that satisfied it.
#[test]
fn guard_lifts_when_commit_reaches_acknowledged_index() {
    let mut f = replica(cfg(2), &[1, 1, 1], 1, 3);
    f.set_recovery_guard(guard(5, 1));
    f.step(append(1, 2, 1, (3, 1), vec![ent(4, 1)], 4));
    let u = cycle(&mut f);
    assert!(!u.recovery_cleared);
    assert!(f.recovery_guard().is_some(), "commit 4 < acknowledged 5");
    f.step(append(1, 2, 1, (4, 1), vec![ent(5, 1)], 5));
    let u = cycle(&mut f);
    assert!(u.recovery_cleared, "commit reached 5");
    assert_eq!(u.entries, vec![ent(5, 1)], "cleared with the entries");
    assert!(f.recovery_guard().is_none());
    // It votes again.
    f.step(vote_request(3, 2, 2, (5, 1)));
    let u = cycle(&mut f);
    assert!(!only_message(&u).reject);
}

/// With the acknowledged index unknown, the guard is lifted only once the
/// commit index carries an entry of a term after the restart term.
#[test]
fn unknown_extent_guard_lifts_on_a_later_term_commit() {
    let mut f = replica(cfg(2), &[1, 1, 1], 1, 3);
    f.set_recovery_guard(RecoveryGuard {
        acked_through: None,
        restart_term: Term(1),
    });
    f.step(append(1, 2, 1, (3, 1), ents_from(4, &[1; 10]), 13));
    cycle(&mut f);
    assert!(
        f.recovery_guard().is_some(),
        "commit of term 1 proves nothing"
    );
    f.step(append(3, 2, 2, (13, 1), vec![ent(14, 2)], 14));
    let u = cycle(&mut f);
    assert!(u.recovery_cleared);
    assert!(f.recovery_guard().is_none());
}

/// Commits "x" on {1, 2} only (3 misses it) and returns its index.
fn commit_on_1_and_2(c: &mut Cluster) -> Index {
    elect(c, 1);
    c.partition(&[1], &[3]);
    propose(c, 1, "x");
    c.stabilize();
    let x = last_index(c, 1);
    assert_eq!(committed(c, 1), x);
    assert_eq!(last_index(c, 2), x);
    assert!(last_index(c, 3) < x);
    x
}

/// The lost-commit scenario of protocol-aware recovery, with the damage
/// unnoticed: 2 loses the entry it acknowledged, 1 goes away, 2 votes for
/// 3, and 3 overwrites a committed entry. The cluster's state-machine
/// safety check catches it. (This is what the guard exists to prevent;
/// see the next test.)
#[test]
#[should_panic(expected = "applied a different entry")]
fn unnoticed_lost_tail_loses_a_committed_entry() {
    let mut c = cluster(3, opts());
    let x = commit_on_1_and_2(&mut c);
    c.isolate(1);
    c.crash_losing_tail(r(2), x.prev(), false);
    c.heal();
    c.isolate(1);
    for _ in 0..3 * ELECTION {
        c.tick(3);
        c.tick(2);
        c.stabilize();
    }
}

/// The same scenario with the damage reported: the guarded replica 2 does
/// not vote, so 3 cannot win; once 1 is back it is elected (its log holds
/// "x"), 2 catches up, the guard is lifted (durably) and 2 votes again.
#[test]
fn guarded_lost_tail_keeps_the_committed_entry() {
    let mut c = cluster(3, opts());
    let x = commit_on_1_and_2(&mut c);
    let entry_x = c.node(1).applied[&x].clone();
    c.isolate(1);
    c.crash_losing_tail(r(2), x.prev(), true);
    c.heal();
    c.isolate(1);
    for _ in 0..5 * ELECTION {
        c.tick(3);
        c.tick(2);
        c.stabilize();
        assert!(
            !c.raft(2).is_leader() && !c.raft(3).is_leader(),
            "a leader was elected without 1"
        );
    }
    assert!(c.node(2).recovery_guard.is_some());
    // A restart keeps the guard.
    c.restart(r(2));
    assert!(c.raft(2).recovery_guard().is_some());
    c.heal();
    for _ in 0..10 * ELECTION {
        if c.raft(1).is_leader() && c.raft(1).term() >= c.raft(3).term() {
            break;
        }
        tick_all(&mut c, 1);
    }
    assert!(c.raft(1).is_leader(), "1 holds x and must win");
    c.stabilize();
    for id in [2, 3] {
        assert_eq!(c.node(id).applied.get(&x), Some(&entry_x), "{id} lacks x");
    }
    assert!(c.raft(2).recovery_guard().is_none());
    assert!(c.node(2).recovery_guard.is_none(), "lifting not persisted");
    // 2 votes again: without 1, 2 and 3 elect a leader.
    c.isolate(1);
    for _ in 0..5 * ELECTION {
        c.tick(2);
        c.tick(3);
        c.stabilize();
        if c.raft(2).is_leader() || c.raft(3).is_leader() {
            return;
        }
    }
    panic!("2 and 3 elected no leader after the guard was lifted");
}

/// A follower that lost acknowledged entries is behind the leader's match
/// index for it, so the leader would never send them again (and a
/// heartbeat committing past its log would be dropped as invalid): the
/// guarded follower answers the heartbeat with a `LOG_LOST` rejection,
/// the leader lowers its match index and replicates again, and the guard
/// is lifted once the follower holds what it lost.
#[test]
fn leader_resends_what_a_guarded_follower_lost() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    for i in 0..5 {
        propose(&mut c, 1, &format!("e{i}"));
    }
    c.stabilize();
    let last = last_index(&c, 1);
    assert_eq!(last_index(&c, 2), last);
    c.crash_losing_tail(r(2), Index(last.0 - 3), true);
    assert_eq!(last_index(&c, 2), Index(last.0 - 3));
    // Heartbeats only: no new entry would carry the lost ones along.
    tick_all(&mut c, 3);
    assert_eq!(last_index(&c, 2), last, "the leader did not resend");
    assert_eq!(committed(&c, 2), last);
    assert!(c.raft(2).recovery_guard().is_none());
    assert!(c.raft(1).is_leader(), "the leader was disturbed");
}

/// The damage can bring back an older entry that the leader's log replaced
/// (the batch that overwrote it was lost): the guarded follower then
/// rejects an append at an index the leader counted as matched. Its
/// `LOG_LOST` rejection lowers the leader's match index below that index,
/// and the leader probes again from there.
#[test]
fn log_lost_rejection_at_the_match_index_lowers_it_below() {
    let mut l = replica(cfg(1), &[1, 1, 1], 1, 3);
    make_leader(&mut l, &[2]);
    // 2 acknowledged everything (the no-op at 4).
    l.step(Message {
        log_index: Index(4),
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    cycle(&mut l);
    assert_eq!(l.progress()[&r(2)].match_index, Index(4));
    // Now it rejects the append after 4: its entry at 4 is another one.
    l.step(Message {
        log_index: Index(4),
        reject: true,
        hint: Index(4),
        hint_term: Term(1),
        context: LOG_LOST,
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    assert_eq!(l.progress()[&r(2)].match_index, Index(3));
    let u = cycle(&mut l);
    let probe = all_messages(&u)
        .into_iter()
        .find(|m| m.msg_type == MessageType::Replicate && m.to == r(2))
        .expect("an append to 2");
    assert_eq!(probe.log_index, Index(3), "probes after what still matches");
}

/// A heartbeat's commit index is the leader's match index for us, which
/// the damage may have made wrong: the entries we hold up to it may be
/// older ones the leader's log replaced. A guarded follower advances its
/// commit index only with appends, whose previous entry is checked
/// (found by the simulator: a guarded follower committed, and applied, an
/// entry the shard had replaced).
#[test]
fn guarded_follower_does_not_commit_from_heartbeats() {
    let mut f = replica(cfg(2), &[1, 1, 1, 1], 2, 3);
    f.set_recovery_guard(guard(5, 2));
    f.step(heartbeat(1, 2, 2, 4));
    cycle(&mut f);
    assert_eq!(
        f.log().committed(),
        Index(3),
        "committed an unchecked entry"
    );
    // An append whose previous entry matches does commit.
    f.step(append(1, 2, 2, (4, 1), vec![ent(5, 2)], 5));
    cycle(&mut f);
    assert_eq!(f.log().committed(), Index(5));
}
