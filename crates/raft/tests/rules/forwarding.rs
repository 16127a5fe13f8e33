//! Forwarded proposals (DESIGN.md: requests reach the leader through any
//! replica): where one dies, its proposer hears of it at once.

use crate::support::*;

fn forwarded(from: u64, to: u64, keys: &[u64]) -> Message {
    Message {
        entries: keys
            .iter()
            .map(|&k| Entry {
                key: k,
                client_id: 7,
                cmd: Bytes::from_static(b"payload"),
                ..Entry::default()
            })
            .collect(),
        ..msg(MessageType::Propose, from, to, 0)
    }
}

fn dropped_answer(u: &Update, to: u64) -> Message {
    let m = all_messages(u)
        .into_iter()
        .find(|m| m.msg_type == MessageType::ProposeDropped)
        .expect("a ProposeDropped answer");
    assert_eq!(m.to, r(to));
    assert_eq!(
        m.term,
        Term(0),
        "answers to forwarded requests carry no term"
    );
    assert!(
        m.entries
            .iter()
            .all(|e| e.cmd.is_empty() && e.client_id == 7),
        "payloads are not sent back"
    );
    m
}

/// A leader that refuses a forwarded proposal (here: a transfer is in
/// progress) answers its proposer with the keys and the reason, and the
/// proposer's update names them.
#[test]
fn refused_forwarded_proposal_is_answered_with_its_keys() {
    let mut l = replica(cfg(1), &[1, 1, 1], 1, 3);
    make_leader(&mut l, &[2]);
    l.transfer_leader(r(3)).unwrap();
    cycle(&mut l);
    l.step(forwarded(2, 1, &[11, 12]));
    let u = cycle(&mut l);
    let m = dropped_answer(&u, 2);
    let keys: Vec<u64> = m.entries.iter().map(|e| e.key).collect();
    assert_eq!(keys, vec![11, 12]);
    assert!(u.entries.is_empty(), "a refused proposal was appended");

    let mut f = replica(cfg(2), &[1, 1, 1], 2, 3);
    f.step(m);
    let u = cycle(&mut f);
    let dropped: Vec<(u64, ProposalError)> = u
        .dropped_proposals
        .iter()
        .map(|(e, why)| (e.key, *why))
        .collect();
    assert_eq!(
        dropped,
        vec![
            (11, ProposalError::TransferInProgress),
            (12, ProposalError::TransferInProgress)
        ]
    );
    // The answer names the leader it knew (itself, still leading while it
    // transfers): a hint for the caller, which the proposer does not adopt.
    assert_eq!(u.dropped_leader, Some(r(1)));
    assert_eq!(f.leader_id(), ReplicaId::NONE);
}

/// A follower that knows no leader, and a candidate, answer a forwarded
/// proposal with NoLeader instead of dropping it silently.
#[test]
fn forwarded_proposal_without_a_leader_is_answered() {
    let mut f = replica(cfg(3), &[1, 1, 1], 1, 3);
    f.step(forwarded(2, 3, &[5]));
    let u = cycle(&mut f);
    assert_eq!(
        ProposalError::from_code(dropped_answer(&u, 2).hint.0),
        Some(ProposalError::NoLeader)
    );
    assert_eq!(dropped_answer(&u, 2).log_index.0, 0, "no leader to name");
    let mut c = replica(cfg(3), &[1, 1, 1], 1, 3);
    c.campaign();
    cycle(&mut c);
    c.step(forwarded(1, 3, &[6]));
    let u = cycle(&mut c);
    dropped_answer(&u, 1);
}

/// A proposal that is forwarded on, or taken, gets no such answer.
#[test]
fn taken_or_forwarded_proposals_get_no_drop_answer() {
    let mut l = replica(cfg(1), &[1, 1, 1], 1, 3);
    make_leader(&mut l, &[2]);
    l.step(forwarded(2, 1, &[1]));
    let u = cycle(&mut l);
    assert!(
        all_messages(&u)
            .iter()
            .all(|m| m.msg_type != MessageType::ProposeDropped)
    );
    assert_eq!(u.entries.len(), 1);
    let mut f = replica(cfg(3), &[1, 1, 1], 2, 3);
    f.step(heartbeat(1, 3, 2, 3));
    cycle(&mut f);
    f.step(forwarded(2, 3, &[2]));
    let u = cycle(&mut f);
    let on: Vec<MessageType> = all_messages(&u).iter().map(|m| m.msg_type).collect();
    assert_eq!(on, vec![MessageType::Propose], "forwarded on to the leader");
}

/// Only members may say a proposal died, and only without a term.
#[test]
fn drop_answers_from_non_members_or_with_a_term_are_invalid() {
    for (from, term) in [(9, 0), (1, 2)] {
        let mut f = replica(cfg(2), &[1, 1, 1], 2, 3);
        let before = f.invalid_messages();
        let mut m = forwarded(from, 2, &[1]);
        m.msg_type = MessageType::ProposeDropped;
        m.term = Term(term);
        f.step(m);
        assert_eq!(f.invalid_messages(), before + 1, "from {from} term {term}");
        assert!(!f.has_update() || cycle(&mut f).dropped_proposals.is_empty());
    }
}
