//! Leader election (Raft §5.2, §5.4.1).

use crate::support::*;

/// Raft §5.2: election timeouts are chosen at random from a fixed interval,
/// here `[election_rtt, 2 * election_rtt)`, so that split votes are rare.
#[test]
fn election_timeout_is_random_within_one_to_two_election_timeouts() {
    let mut seen = BTreeSet::new();
    for seed in 0..64 {
        let mut f = replica(RaftConfig { seed, ..cfg(1) }, &[1], 1, 1);
        let mut ticks = 0;
        while f.role() == Role::Follower {
            f.tick();
            ticks += 1;
            assert!(
                ticks < 2 * ELECTION,
                "seed {seed}: no election after {ticks} ticks"
            );
        }
        assert!(
            ticks >= ELECTION,
            "seed {seed}: election after only {ticks} ticks"
        );
        seen.insert(ticks);
    }
    assert!(
        seen.len() >= (ELECTION / 2) as usize,
        "timeouts are not randomized: {seen:?}"
    );
}

/// Raft §5.2: a follower that hears from a leader keeps following; one that
/// hears nothing for an election timeout becomes a candidate: it increments
/// its term, votes for itself and requests votes from every other voter.
#[test]
fn follower_campaigns_only_after_election_timeout() {
    let mut f = replica(cfg(1), &[1, 1, 1], 1, 3);
    for _ in 0..5 * ELECTION {
        f.tick();
        f.step(msg(MessageType::Heartbeat, 2, 1, 1));
        assert_eq!(f.role(), Role::Follower, "campaigned despite heartbeats");
    }
    cycle(&mut f);
    let mut ticks = 0;
    while f.role() == Role::Follower && ticks < 2 * ELECTION {
        f.tick();
        ticks += 1;
    }
    assert_eq!(
        f.role(),
        Role::Candidate,
        "no election after {ticks} silent ticks"
    );
    let u = cycle(&mut f);
    let hs = u.hard_state.expect("term and vote persisted");
    assert_eq!((hs.term, hs.vote), (Term(2), r(1)));
    let mut to: Vec<u64> = all_messages(&u)
        .iter()
        .filter(|m| m.msg_type == MessageType::RequestVote)
        .inspect(|m| {
            assert_eq!(m.term, Term(2));
            assert_eq!((m.log_index, m.log_term), (Index(3), Term(1)));
        })
        .map(|m| m.to.0)
        .collect();
    to.sort_unstable();
    assert_eq!(to, vec![2, 3]);
}

/// Raft §5.2: each server votes for at most one candidate in a given term
/// (first come, first served), and the vote survives a restart (Figure 2:
/// `votedFor` is persistent state).
#[test]
fn vote_is_granted_at_most_once_per_term() {
    let mut v = replica(cfg(3), &[1, 1, 1], 1, 3);
    v.step(vote_request(1, 3, 2, (3, 1)));
    let u = cycle(&mut v);
    assert!(!only_message(&u).reject, "first candidate gets the vote");
    assert_eq!(u.hard_state.map(|h| h.vote), Some(r(1)));

    v.step(vote_request(2, 3, 2, (3, 1)));
    let m = only_message(&cycle(&mut v));
    assert!(m.reject, "second candidate of the same term refused");
    assert_eq!(v.hard_state().vote, r(1));

    v.step(vote_request(1, 3, 2, (3, 1)));
    assert!(
        !only_message(&cycle(&mut v)).reject,
        "a retransmission is re-granted"
    );

    // After a restart from durable state the vote still binds.
    let hs = v.hard_state();
    let log = v.log().reader().clone();
    let mut v = Raft::new(cfg(3), log, hs, voters(&[1, 2, 3]), Index(3)).unwrap();
    v.step(vote_request(2, 3, 2, (3, 1)));
    assert!(only_message(&cycle(&mut v)).reject);
}

/// Raft §5.4.1: a voter denies its vote if its own log is more up to date
/// than the candidate's (compare last terms, then last indexes).
#[test]
fn vote_requires_candidate_log_at_least_as_up_to_date() {
    // The voter's log ends at index 5, term 2.
    let cases = [
        ((10, 1), false), // longer but older last term
        ((4, 2), false),  // same last term, shorter
        ((5, 2), true),   // identical
        ((6, 2), true),   // same last term, longer
        ((1, 3), true),   // newer last term, shorter
    ];
    for ((index, term), granted) in cases {
        let mut v = replica(cfg(2), &[1, 1, 2, 2, 2], 2, 2);
        v.step(vote_request(1, 2, 3, (index, term)));
        let m = only_message(&cycle(&mut v));
        assert_eq!(!m.reject, granted, "candidate log ending at {term}/{index}");
        assert_eq!(v.term(), Term(3), "the higher term is adopted either way");
    }
}

/// Raft §5.1, §5.2: a candidate that learns of a higher term (from any
/// message) returns to follower state in that term.
#[test]
fn candidate_steps_down_on_higher_term() {
    let candidate = || {
        let mut c = replica(cfg(1), &[1, 1, 1], 1, 3);
        c.campaign();
        assert_eq!((c.role(), c.term()), (Role::Candidate, Term(2)));
        cycle(&mut c);
        c
    };
    let mut c = candidate();
    c.step(msg(MessageType::Heartbeat, 2, 1, 3));
    assert_eq!(
        (c.role(), c.term(), c.leader_id()),
        (Role::Follower, Term(3), r(2))
    );

    let mut c = candidate();
    c.step(Message {
        reject: true,
        ..msg(MessageType::RequestVoteResp, 3, 1, 5)
    });
    assert_eq!((c.role(), c.term()), (Role::Follower, Term(5)));

    let mut c = candidate();
    c.step(vote_request(2, 1, 4, (3, 1)));
    assert_eq!((c.role(), c.term()), (Role::Follower, Term(4)));
    assert!(
        !only_message(&cycle(&mut c)).reject,
        "and may vote in the new term"
    );
}

/// Raft §5.2: a candidate that receives AppendEntries from a leader of its
/// own term recognizes that leader and returns to follower state.
#[test]
fn candidate_steps_down_on_append_from_same_term_leader() {
    let mut c = replica(cfg(1), &[1, 1, 1], 1, 3);
    c.campaign();
    cycle(&mut c);
    c.step(append(2, 1, 2, (3, 1), vec![ent(4, 2)], 3));
    assert_eq!(
        (c.role(), c.term(), c.leader_id()),
        (Role::Follower, Term(2), r(2))
    );
    let m = only_message(&cycle(&mut c));
    assert_eq!(
        (m.msg_type, m.reject, m.log_index),
        (MessageType::ReplicateResp, false, Index(4))
    );
}

/// Raft §5.2: when a vote splits, no candidate wins; each times out and a
/// new election in a higher term elects exactly one leader.
#[test]
fn split_vote_is_resolved_by_a_new_election() {
    let mut c = cluster(4, opts());
    c.raft(1).campaign();
    c.raft(2).campaign();
    c.process_all();
    // 3 votes for 1 and 4 votes for 2: two votes each, quorum is three.
    c.deliver_matching(|m| (m.from, m.to) == (r(1), r(3)) || (m.from, m.to) == (r(2), r(4)));
    c.stabilize();
    assert_eq!(c.leader(), None, "nobody won the split vote");
    assert!(c.nodes.values().all(|n| n.raft.term() == Term(2)));

    for _ in 0..10 * ELECTION {
        tick_all(&mut c, 1);
        if c.leader().is_some() {
            break;
        }
    }
    let leader = c.leader().expect("a later election succeeds");
    let term = c.nodes[&leader].raft.term();
    assert!(term > Term(2));
    let leaders = c
        .nodes
        .values()
        .filter(|n| n.raft.is_leader() && n.raft.term() == term)
        .count();
    assert_eq!(leaders, 1);
}

/// Raft §8: a new leader appends a no-op entry of its term, and commits it.
#[test]
fn new_leader_appends_and_commits_a_no_op() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    let e = c.node(1).applied[&Index(4)].clone();
    assert_eq!((e.entry_type, e.term), (EntryType::NoOp, Term(2)));
    assert!((1..=3).all(|id| committed(&c, id) == Index(4)));
}

/// Raft §5.3 (Log Matching) applied to elections: a vote answer carries the
/// voter's commit index and the term of its entry there. A candidate whose
/// entry at that index has the same term holds the same log up to it, so
/// the index is committed for it too; with another term, or beyond its
/// log, nothing is learnt. (Without it, a candidate whose commit lagged
/// behind a membership change counted votes with the old membership and
/// never won, while the others could not win either: simulator seed 6192.)
#[test]
fn candidate_learns_the_commit_index_from_vote_answers() {
    let answer = |from: u64, term: u64, commit: u64, commit_term: u64, reject: bool| Message {
        commit: Index(commit),
        log_term: Term(commit_term),
        reject,
        ..msg(MessageType::RequestVoteResp, from, 1, term)
    };
    // Log terms 1 1 1 2 2, commit 2; campaigning makes term 3.
    let candidate = || {
        let mut c = replica(cfg(1), &[1, 1, 1, 2, 2], 2, 2);
        c.campaign();
        cycle(&mut c);
        assert_eq!(c.role(), Role::Candidate);
        c
    };
    // Another term at index 4: not the same log, nothing learnt.
    let mut c = candidate();
    c.step(answer(2, 3, 4, 3, true));
    assert_eq!(c.log().committed(), Index(2));
    // Beyond our log: nothing learnt.
    let mut c = candidate();
    c.step(answer(2, 3, 9, 2, true));
    assert_eq!(c.log().committed(), Index(2));
    // Same term at index 4: committed here too, even from a refusal.
    let mut c = candidate();
    c.step(answer(2, 3, 4, 2, true));
    assert_eq!(c.log().committed(), Index(4));
    let u = cycle(&mut c);
    let applied: Vec<u64> = u.committed_entries.iter().map(|e| e.index.0).collect();
    assert_eq!(applied, vec![3, 4], "handed out for applying");
    // A voter answers with its commit index and the term there.
    let mut v = replica(cfg(2), &[1, 1, 1, 2, 2], 2, 4);
    v.step(vote_request(1, 2, 3, (5, 2)));
    let a = only_message(&cycle(&mut v));
    assert_eq!((a.commit, a.log_term, a.reject), (Index(4), Term(2), false));
}

/// A replica that cannot campaign (here non-voting) and hears from no
/// leader for an election timeout asks the other members what is committed
/// with a pre-vote request, without becoming a pre-candidate; an answer
/// whose term matches its log there advances its commit, so it can apply a
/// promotion it did not know was committed. A voter's answer caps its
/// commit index at the asker's last index: an asker whose last entry
/// matches learns that its whole log is committed. (Simulator seed 22883:
/// the replicas that could lead did not know they could.)
#[test]
fn replica_that_cannot_campaign_probes_for_the_commit_index() {
    let mut m = voters(&[1, 2, 3]);
    m.non_votings.insert(r(4), "node4".into());
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1, 1, 2, 2]));
    let hs = HardState {
        term: Term(2),
        vote: ReplicaId::NONE,
        commit: Index(1),
    };
    let mut n = Raft::new(cfg(4), log, hs, m.clone(), Index(1)).unwrap();
    for _ in 0..2 * ELECTION {
        n.tick();
    }
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), Term(2), "a probe changes no term");
    let probes = all_messages(&cycle(&mut n));
    let mut to: Vec<u64> = probes.iter().map(|p| p.to.0).collect();
    to.sort();
    to.dedup();
    assert_eq!(to, vec![1, 2, 3]);
    assert!(
        probes
            .iter()
            .all(|p| p.msg_type == MessageType::RequestPreVote
                && p.log_index == Index(4)
                && p.log_term == Term(2))
    );

    // A voter that knows index 6 committed answers "committed up to your
    // last index 4" with its term there.
    // (It knows 4 as a member: only members are answered.)
    let mut vlog = MemLog::new();
    vlog.append(&ents_from(1, &[1, 1, 2, 2, 2, 2]));
    let vhs = HardState {
        commit: Index(6),
        ..hs
    };
    let mut v = Raft::new(cfg(1), vlog, vhs, m, Index(6)).unwrap();
    v.step(probes[0].clone());
    let a = only_message(&cycle(&mut v));
    assert_eq!((a.commit, a.log_term), (Index(4), Term(2)));
    n.step(a);
    assert_eq!(n.log().committed(), Index(4));
    assert_eq!(n.role(), Role::Follower);
}
