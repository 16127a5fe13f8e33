//! Messages only from members (thesis §4.1: a shard's servers are those of
//! its configuration). A message from a replica that is not a member in
//! the receiver's view is dropped and counted, except what a correct peer
//! the receiver does not know yet must get through: a leader's messages of
//! a term at least the receiver's, vote requests to a replica that is not
//! a member of its own view, and anything from a replica added by a
//! config change in the receiver's log but not applied there yet.

use crate::support::*;
use longship_raft::NOT_A_MEMBER;
use longship_raft::codec::encode_config_change;

/// Steps `m` into `raft` and checks it was dropped because its sender is
/// not a member: counted as invalid and as a non-member message, nothing
/// sent, and the replica's log, term, role and commit unchanged.
fn assert_non_member_dropped(raft: &mut Raft<MemLog>, m: Message, why: &str) {
    let (invalid, non_member) = (raft.invalid_messages(), raft.non_member_messages());
    let status = raft.status();
    raft.step(m);
    assert_eq!(raft.invalid_messages(), invalid + 1, "not counted: {why}");
    assert_eq!(
        raft.non_member_messages(),
        non_member + 1,
        "not counted as non-member: {why}"
    );
    assert_eq!(
        raft.last_invalid().map(|l| l.2),
        Some(NOT_A_MEMBER),
        "{why}"
    );
    let u = cycle(raft);
    assert!(all_messages(&u).is_empty(), "answered: {why}");
    assert!(u.entries.is_empty(), "appended: {why}");
    assert_eq!(raft.status(), status, "state changed: {why}");
}

/// A config change entry at (`index`, `term`) adding `id` as a voter.
fn add_entry(index: u64, term: u64, id: u64) -> Entry {
    Entry {
        entry_type: EntryType::ConfigChange,
        cmd: encode_config_change(&cc(ConfigChangeType::AddReplica, id)).into(),
        ..ent(index, term)
    }
}

/// Thesis §4.1 (only the configuration's servers change the shard): a
/// forwarded proposal carries no term, so without a membership check
/// anyone could append entries, a membership change included, through
/// the leader. Forwarded proposals, reads and transfers are taken from
/// members only.
#[test]
fn leader_takes_forwarded_requests_only_from_members() {
    let mut l = replica(cfg(1), &[1], 1, 1);
    make_leader(&mut l, &[2]);
    let last = l.log().last_index();
    let forged = Message {
        entries: vec![add_entry(0, 0, 9), ent(0, 0)],
        ..msg(MessageType::Propose, 9, 1, 0)
    };
    assert_non_member_dropped(&mut l, forged, "proposal");
    assert_non_member_dropped(
        &mut l,
        Message {
            context: 5,
            ..msg(MessageType::ReadIndex, 9, 1, 0)
        },
        "read index",
    );
    assert_non_member_dropped(
        &mut l,
        Message {
            hint: Index(2),
            ..msg(MessageType::TransferLeader, 9, 1, 0)
        },
        "transfer",
    );
    assert_eq!(l.log().last_index(), last);
    assert!(l.transfer_target().is_none());
    // A member's forwarded proposal is appended.
    l.step(Message {
        entries: vec![ent(0, 0)],
        ..msg(MessageType::Propose, 2, 1, 0)
    });
    assert_eq!(l.log().last_index(), last.next());
    assert_eq!(l.non_member_messages(), 3);
}

/// Raft §5.2: votes and acknowledgements count only from the members
/// whose votes count; a non-member cannot move a member's term with a
/// vote request, nor answer in a member's name.
#[test]
fn members_ignore_votes_and_answers_from_non_members() {
    // (A log not ahead of ours: see the next test for one that is.)
    let mut f = replica(cfg(2), &[1, 1], 1, 1);
    assert_non_member_dropped(&mut f, vote_request(9, 2, 5, (2, 1)), "vote request");
    let pre = Message {
        msg_type: MessageType::RequestPreVote,
        ..vote_request(9, 2, 5, (1, 1))
    };
    assert_non_member_dropped(&mut f, pre, "pre-vote request");
    assert_eq!(f.term(), Term(1));

    let mut c = replica(cfg(1), &[1], 1, 1);
    c.campaign();
    cycle(&mut c);
    let term = c.term().0;
    for v in [8, 9] {
        let grant = msg(MessageType::RequestVoteResp, v, 1, term);
        assert_non_member_dropped(&mut c, grant, "vote");
    }
    assert_eq!(c.role(), Role::Candidate, "non-members' votes elected it");

    let mut l = replica(cfg(1), &[1], 1, 1);
    make_leader(&mut l, &[2]);
    let term = l.term().0;
    let ack = Message {
        log_index: l.log().last_index(),
        ..msg(MessageType::ReplicateResp, 9, 1, term)
    };
    assert_non_member_dropped(&mut l, ack, "append acknowledgement");
    assert_non_member_dropped(
        &mut l,
        msg(MessageType::HeartbeatResp, 9, 1, term),
        "heartbeat answer",
    );
    assert_non_member_dropped(&mut l, msg(MessageType::TimeoutNow, 9, 1, term), "timeout");
    assert!(l.is_leader());
}

/// Thesis §4.1 (a new server learns the configuration from the leader's
/// log): a replica joining with an empty membership knows nobody, so it
/// takes a leader's appends, heartbeats and snapshots of a term at least
/// its own, and answers vote requests (the candidate counts its vote only
/// if its own view makes it a voter). A member takes the same leader
/// messages from a leader it does not know: the change adding that leader
/// may be in the part of the log it has not received yet (the randomized
/// harness loses convergence without this, e.g. seed 396), and a stale
/// leader it does not know must hear its newer term (seed 53890).
#[test]
fn replicas_follow_a_leader_they_do_not_know_yet() {
    let mut j = Raft::new(
        cfg(4),
        MemLog::new(),
        HardState::default(),
        Membership::default(),
        Index(0),
    )
    .expect("valid config");
    j.step(append(1, 4, 2, (0, 0), ents_from(1, &[1, 2]), 2));
    let u = cycle(&mut j);
    assert_eq!(j.log().last_index(), Index(2));
    assert_eq!(j.leader_id(), r(1));
    assert!(!only_message(&u).reject);
    j.step(heartbeat(1, 4, 2, 2));
    j.step(snapshot_message(1, 4, 2, 9, 2));
    cycle(&mut j);
    assert_eq!(j.log().committed(), Index(9));
    j.step(vote_request(3, 4, 3, (9, 2)));
    let vote = only_message(&cycle(&mut j));
    assert_eq!(vote.msg_type, MessageType::RequestVoteResp);
    assert!(!vote.reject, "joining replica must be able to vote");
    assert_eq!(j.invalid_messages(), 0);

    // A member and a leader (4) it does not know, of a newer term.
    let pre_vote = RaftConfig {
        pre_vote: true,
        ..cfg(2)
    };
    let mut f = replica(pre_vote, &[1, 1], 1, 1);
    f.step(append(4, 2, 3, (2, 1), ents_from(3, &[3]), 3));
    cycle(&mut f);
    cycle(&mut f);
    assert_eq!(f.log().committed(), Index(3));
    assert_eq!(f.leader_id(), r(4));
    // A leader message of an older term it does not know gets our term
    // back, nothing else: a stale leader must learn it is stale (with
    // pre-vote or check-quorum, as from a member, thesis §9.6).
    f.step(heartbeat(5, 2, 2, 3));
    let answer = only_message(&cycle(&mut f));
    assert_eq!((answer.to, answer.term), (r(5), Term(3)));
    assert_eq!(f.leader_id(), r(4));
    assert_eq!(f.invalid_messages(), 0);
}

/// Thesis §4.1 (a change takes effect here once applied, but the added
/// replica takes part in the shard as soon as the leader applied it): a
/// replica whose log holds a change adding a member, not applied yet,
/// hears that member, e.g. its vote requests.
#[test]
fn member_added_by_an_unapplied_change_is_heard() {
    let mut f = replica(cfg(2), &[1, 1], 1, 2);
    let probe = |term| Message {
        msg_type: MessageType::RequestPreVote,
        ..vote_request(4, 2, term, (2, 1))
    };
    assert_non_member_dropped(&mut f, probe(2), "before the change is in the log");
    f.step(append(1, 2, 1, (2, 1), vec![add_entry(3, 1, 4)], 2));
    cycle(&mut f);
    assert_eq!(f.log().last_index(), Index(3));
    assert!(!f.membership().contains(r(4)), "not applied");
    f.step(probe(2));
    let resp = only_message(&cycle(&mut f));
    assert_eq!(resp.msg_type, MessageType::RequestPreVoteResp);
    assert_eq!(resp.to, r(4));
    assert_eq!(f.non_member_messages(), 1);
}

/// Raft §5.4.1, thesis §4.1: a candidate whose log is ahead of ours holds
/// entries we lack, and the change that made it a member may be among
/// them; it may need our vote, so its vote requests are answered (the
/// randomized harness lost its shard for good without this, seed 98766).
#[test]
fn candidate_with_a_longer_log_is_heard_by_a_replica_behind() {
    let mut f = replica(cfg(2), &[1, 1], 1, 1);
    f.step(vote_request(4, 2, 3, (5, 2)));
    let vote = only_message(&cycle(&mut f));
    assert_eq!(
        (vote.msg_type, vote.to),
        (MessageType::RequestVoteResp, r(4))
    );
    assert!(!vote.reject);
    assert_eq!(f.term(), Term(3));
    assert_eq!(f.invalid_messages(), 0);
}
