//! Messages no correct peer could have sent (DESIGN.md: bad input changes
//! nothing). Each is dropped before it touches any state, counted in
//! `invalid_messages()`, and never panics the core.

use crate::support::*;

/// Steps `m` into `raft` and checks it was dropped as invalid: counted,
/// nothing sent, and the replica's log, term, role and commit unchanged.
fn assert_dropped(raft: &mut Raft<MemLog>, m: Message, why: &str) {
    let before = raft.invalid_messages();
    let status = raft.status();
    raft.step(m);
    assert_eq!(raft.invalid_messages(), before + 1, "not counted: {why}");
    assert!(raft.last_invalid().is_some(), "no reason kept: {why}");
    let u = cycle(raft);
    assert!(all_messages(&u).is_empty(), "answered: {why}");
    assert!(u.entries.is_empty(), "appended: {why}");
    assert_eq!(raft.status(), status, "state changed: {why}");
}

/// Raft §5.2 (election safety): at most one leader per term. A leader that
/// hears from another leader of its own term must not act on it (it would
/// overwrite its log) and must not panic (the step worker drives other
/// shards too): the message is dropped and reported.
#[test]
fn leader_drops_leader_messages_of_its_own_term() {
    let mut l = replica(cfg(1), &[1], 1, 1);
    make_leader(&mut l, &[2]);
    let term = l.term().0;
    assert_dropped(
        &mut l,
        append(2, 1, term, (1, 1), ents_from(2, &[term]), 2),
        "append",
    );
    assert_dropped(&mut l, heartbeat(2, 1, term, 1), "heartbeat");
    assert_dropped(&mut l, snapshot_message(2, 1, term, 5, term), "snapshot");
    assert!(l.is_leader());
    let (from, t, _) = l.last_invalid().expect("reason kept");
    assert_eq!((from, t), (r(2), MessageType::InstallSnapshot));
}

/// Raft §5.3: a follower acknowledges only entries it received from the
/// leader, so an acknowledgement past the leader's last index is forged;
/// taken as a match it would make the leader send from beyond its log.
#[test]
fn leader_drops_acknowledgement_past_its_last_index() {
    let mut l = replica(cfg(1), &[1], 1, 1);
    make_leader(&mut l, &[2]);
    let term = l.term().0;
    let last = l.log().last_index().0;
    let forged = Message {
        log_index: Index(last + 100),
        ..msg(MessageType::ReplicateResp, 2, 1, term)
    };
    assert_dropped(&mut l, forged, "ack past last index");
    assert!(l.progress()[&r(2)].match_index.0 <= last);
    // The true acknowledgement still counts.
    l.step(Message {
        log_index: Index(last),
        ..msg(MessageType::ReplicateResp, 2, 1, term)
    });
    assert_eq!(l.progress()[&r(2)].match_index, Index(last));
    assert_eq!(l.invalid_messages(), 1);
}

/// Thesis §6.4.1: a lease counts from when the answered heartbeat was sent
/// (the leader's tick echoed back). An echo of a tick the leader has not
/// reached yet would stretch the lease into the future.
#[test]
fn leader_drops_heartbeat_answer_from_a_future_tick() {
    let mut l = replica(cfg(1), &[1], 1, 1);
    make_leader(&mut l, &[2]);
    let term = l.term().0;
    let acked = l.progress()[&r(2)].heartbeat_acked_at;
    let forged = Message {
        log_index: Index(1_000_000),
        ..msg(MessageType::HeartbeatResp, 2, 1, term)
    };
    assert_dropped(&mut l, forged, "heartbeat answer from the future");
    assert_eq!(l.progress()[&r(2)].heartbeat_acked_at, acked);
}

/// Raft §5.3: the entries of an append follow its previous entry one by
/// one, their terms never decrease and are not newer than the leader's
/// term. An append breaking any of these would leave a gap or a log whose
/// terms go backwards.
#[test]
fn follower_drops_malformed_appends() {
    let mut f = replica(cfg(2), &[1, 1], 2, 1);
    let cases = [
        (
            append(1, 2, 2, (2, 1), ents_from(4, &[2]), 2),
            "gap after prev",
        ),
        (
            append(1, 2, 2, (2, 1), vec![ent(3, 2), ent(5, 2)], 2),
            "gap inside",
        ),
        (
            append(1, 2, 2, (2, 1), vec![ent(3, 2), ent(3, 2)], 2),
            "repeated index",
        ),
        (
            append(1, 2, 2, (2, 1), ents_from(3, &[3]), 2),
            "entry term > sender's",
        ),
        (
            append(1, 2, 2, (2, 1), ents_from(3, &[2, 1]), 2),
            "terms decrease",
        ),
        (
            append(1, 2, 2, (2, 2), ents_from(3, &[1]), 2),
            "below prev term",
        ),
        (append(1, 2, 2, (2, 3), vec![], 2), "prev term > sender's"),
        (
            append(1, 2, 2, (2, 1), ents_from(3, &[0]), 2),
            "entry without term",
        ),
        (
            append(1, 2, 2, (u64::MAX, 1), ents_from(0, &[1]), 2),
            "index overflow",
        ),
        (append(1, 2, 0, (2, 1), ents_from(3, &[1]), 2), "no term"),
    ];
    for (m, why) in cases {
        assert_dropped(&mut f, m, why);
    }
    // A well-formed append is still taken.
    f.step(append(1, 2, 2, (2, 1), ents_from(3, &[2]), 2));
    cycle(&mut f);
    assert_eq!(f.log().last_index(), Index(3));
    assert_eq!(f.invalid_messages(), 10);
}

/// Raft §7: a snapshot covers at least one entry and its last entry's term
/// is not newer than the sender's term.
#[test]
fn follower_drops_malformed_snapshots() {
    let mut f = replica(cfg(2), &[1, 1], 2, 1);
    assert_dropped(&mut f, snapshot_message(1, 2, 2, 9, 3), "term ahead");
    assert_dropped(&mut f, snapshot_message(1, 2, 2, 0, 0), "index 0");
    let mut no_snapshot = snapshot_message(1, 2, 2, 9, 2);
    no_snapshot.snapshot = None;
    assert_dropped(&mut f, no_snapshot, "no snapshot");
}

/// The checks have no false positives: a cluster that elects, replicates,
/// reads, changes membership, compacts and sends snapshots, over a network
/// that drops messages, counts no invalid message.
#[test]
fn correct_peers_send_no_invalid_message() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    add_member(&mut c, 1, ConfigChangeType::AddNonVoting, 4);
    for i in 0..5 {
        propose(&mut c, 1, &format!("p{i}"));
    }
    c.stabilize();
    let applied = c.node(1).applied_index;
    c.compact(r(1), applied);
    c.heal();
    c.raft(2).read_index(7).expect("read accepted");
    tick_all(&mut c, 3 * ELECTION);
    c.raft(2).campaign();
    c.stabilize();
    propose(&mut c, 2, "after");
    tick_all(&mut c, 3);
    for id in 1..=4 {
        assert_eq!(
            c.raft(id).invalid_messages(),
            0,
            "{id}: {:?}",
            c.raft(id).last_invalid()
        );
    }
    assert_eq!(last_index(&c, 3), last_index(&c, 2));
}

/// Raft §5.1 (terms only grow): a replica that took an absurd term could
/// never follow a correct leader again, and `u64::MAX` made the next
/// campaign wrap to term 0. Terms beyond `TERM_MAX`, or more than
/// `TERM_JUMP_MAX` above ours, are dropped.
#[test]
fn absurd_terms_are_dropped() {
    let mut f = replica(cfg(2), &[1, 1], 2, 2);
    let jump = 2 + TERM_JUMP_MAX + 1;
    for term in [u64::MAX, TERM_MAX.0 + 1, jump] {
        assert_dropped(&mut f, vote_request(1, 2, term, (9, 1)), "vote request");
        assert_dropped(&mut f, heartbeat(1, 2, term, 2), "heartbeat");
        assert_dropped(
            &mut f,
            append(1, 2, term, (2, 1), ents_from(3, &[term]), 3),
            "append",
        );
        assert_dropped(
            &mut f,
            msg(MessageType::RequestVoteResp, 1, 2, term),
            "answer",
        );
    }
    // Terms inside the bounds are taken.
    f.step(heartbeat(1, 2, jump - 1, 2));
    assert_eq!(f.term(), Term(jump - 1));

    // A replica that never saw a term (joining) takes a leader's term
    // whatever it is, up to TERM_MAX; not a candidate's.
    let mut j = Raft::new(
        cfg(4),
        MemLog::new(),
        HardState::default(),
        Membership::default(),
        Index(0),
    )
    .expect("valid config");
    assert_dropped(&mut j, vote_request(1, 4, jump, (9, 1)), "vote to joiner");
    assert_dropped(
        &mut j,
        heartbeat(1, 4, TERM_MAX.0 + 1, 0),
        "beyond TERM_MAX",
    );
    j.step(heartbeat(1, 4, TERM_MAX.0, 0));
    assert_eq!(j.term(), TERM_MAX);
    // Even there, the next campaign does not wrap.
    assert_eq!(Term(u64::MAX).next(), Term(u64::MAX));
}

/// Raft §5.3: indexes stay far from overflow (`INDEX_MAX`), a heartbeat
/// commits only what our log holds (the leader sends min(match, commit)),
/// and a rejection names an append the leader sent, with a hint at or
/// below it.
#[test]
fn absurd_indexes_are_dropped() {
    let mut f = replica(cfg(2), &[1, 1], 2, 1);
    let huge = INDEX_MAX.0 + 1;
    assert_dropped(&mut f, append(1, 2, 2, (huge, 1), vec![], 2), "prev index");
    assert_dropped(&mut f, append(1, 2, 2, (2, 1), vec![], huge), "commit");
    assert_dropped(&mut f, heartbeat(1, 2, 2, huge), "heartbeat commit");
    assert_dropped(&mut f, heartbeat(1, 2, 2, 3), "heartbeat past our log");
    assert_dropped(&mut f, snapshot_message(1, 2, 2, huge, 2), "snapshot index");
    assert_dropped(
        &mut f,
        vote_request(3, 2, 3, (u64::MAX, 2)),
        "vote request index",
    );
    let mut inconsistent = snapshot_message(1, 2, 2, 9, 2);
    let snap = inconsistent.snapshot.as_mut().expect("snapshot");
    snap.membership.removed.insert(r(1));
    assert_dropped(&mut f, inconsistent, "snapshot membership");
    // The same append with a sane commit is taken.
    f.step(append(1, 2, 2, (2, 1), vec![], 2));
    assert_eq!(f.log().committed(), Index(2));

    let mut l = replica(cfg(1), &[1], 1, 1);
    make_leader(&mut l, &[2]);
    let term = l.term().0;
    let last = l.log().last_index().0;
    let reject = |index: u64, hint: u64| Message {
        reject: true,
        log_index: Index(index),
        hint: Index(hint),
        ..msg(MessageType::ReplicateResp, 2, 1, term)
    };
    assert_dropped(&mut l, reject(last + 1, 0), "rejection past last index");
    assert_dropped(
        &mut l,
        reject(last, last + 1),
        "hint past the rejected index",
    );
    assert_dropped(&mut l, reject(u64::MAX, u64::MAX), "rejection at u64::MAX");
}

/// Forwarded requests carry no term (any leader may serve them): a term
/// on one could only depose a leader for nothing.
#[test]
fn forwarded_request_with_a_term_is_dropped() {
    let mut l = replica(cfg(1), &[1], 1, 1);
    make_leader(&mut l, &[2]);
    let term = l.term().0;
    let m = Message {
        entries: vec![ent(0, 0)],
        ..msg(MessageType::Propose, 2, 1, term + 1)
    };
    assert_dropped(&mut l, m, "proposal with a term");
    assert!(l.is_leader());
}

/// Raft §5.2 (a replica answers the replica that asked): no replica sends
/// to itself over the network, and replica 0 is nobody; answering either
/// would go to the wrong replica (found by the forged-message property
/// test: a debug assertion fired on a message "from" its receiver).
#[test]
fn messages_from_self_or_nobody_are_dropped() {
    let mut f = replica(cfg(2), &[1, 1], 2, 1);
    assert_dropped(&mut f, vote_request(2, 2, 3, (9, 2)), "from itself");
    assert_dropped(&mut f, append(0, 2, 3, (2, 1), vec![], 2), "from nobody");
    assert_eq!(f.term(), Term(2));
}
