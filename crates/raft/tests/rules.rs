//! Focused tests of the protocol rules, one (or a few) per rule, through the
//! public API. Each test's doc comment cites the section of the extended Raft
//! paper ("Raft §x") or of Ongaro's thesis ("thesis §x") that it checks;
//! longship's own contracts (limits, the update cycle) cite DESIGN.md.
//!
//! Two drivers are used: single cores over a [`MemLog`] stepped by hand
//! (`replica`, `cycle`), for rules about one replica's answer to one
//! message; and the testkit [`Cluster`], for rules about several replicas.

use std::cell::Cell;
use std::collections::BTreeSet;

use bytes::Bytes;
use longship_raft::testkit::{Cluster, ClusterOptions, TEST_SHARD};
use longship_raft::{
    CAMPAIGN_TRANSFER, Config, ConfigChange, ConfigChangeRejected, ConfigChangeType, ConfigError,
    ENTRY_OVERHEAD_BYTES, Entry, EntryType, HardState, Index, LogReader, MemLog, Membership,
    Message, MessageType, ProgressState, ProposalError, Raft, RaftLog, ReadState, ReplicaId, Role,
    SnapshotMeta, Term, Update, bootstrap_entries,
};

const ELECTION: u64 = 10;

// ----- single-core helpers -----

fn r(id: u64) -> ReplicaId {
    ReplicaId(id)
}

fn cfg(id: u64) -> Config {
    Config {
        shard_id: TEST_SHARD,
        replica_id: r(id),
        election_rtt: ELECTION,
        heartbeat_rtt: 1,
        pre_vote: false,
        check_quorum: false,
        seed: 7,
        ..Config::default()
    }
}

fn voters(ids: &[u64]) -> Membership {
    Membership::with_voters(ids.iter().map(|&i| (i, format!("node{i}"))))
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index: Index(index),
        term: Term(term),
        cmd: Bytes::from(format!("e{index}")),
        ..Entry::default()
    }
}

/// Entries at indexes `from..` with the given terms.
fn ents_from(from: u64, terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| ent(from + i as u64, t))
        .collect()
}

/// A replica of voters {1, 2, 3} whose durable log holds normal entries
/// with `terms` (from index 1), at `term`, with `commit` committed and applied.
fn replica(c: Config, terms: &[u64], term: u64, commit: u64) -> Raft<MemLog> {
    let mut log = MemLog::new();
    log.append(&ents_from(1, terms));
    let hs = HardState {
        term: Term(term),
        vote: ReplicaId::NONE,
        commit: Index(commit),
    };
    Raft::new(c, log, hs, voters(&[1, 2, 3]), Index(commit)).expect("valid config")
}

/// Runs one update cycle as an engine would: persist, advance, apply.
fn cycle(raft: &mut Raft<MemLog>) -> Update {
    let u = raft.get_update();
    let log = raft.log_reader_mut();
    if let Some(s) = &u.snapshot {
        log.apply_snapshot(s.clone());
    }
    log.append(&u.entries);
    raft.advance(&u);
    if let Some(s) = &u.snapshot {
        raft.applied_to(s.index);
    }
    if let Some(e) = u.committed_entries.last() {
        raft.applied_to(e.index);
    }
    u
}

fn msg(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message {
        term: Term(term),
        ..Message::new(t, TEST_SHARD, r(from), r(to))
    }
}

/// An append from `from` with the previous entry (`prev`, `prev_term`).
fn append(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    ents: Vec<Entry>,
    commit: u64,
) -> Message {
    Message {
        log_index: Index(prev.0),
        log_term: Term(prev.1),
        entries: ents,
        commit: Index(commit),
        ..msg(MessageType::Replicate, from, to, term)
    }
}

fn heartbeat(from: u64, to: u64, term: u64, commit: u64) -> Message {
    Message {
        commit: Index(commit),
        ..msg(MessageType::Heartbeat, from, to, term)
    }
}

fn vote_request(from: u64, to: u64, term: u64, last: (u64, u64)) -> Message {
    Message {
        log_index: Index(last.0),
        log_term: Term(last.1),
        ..msg(MessageType::RequestVote, from, to, term)
    }
}

fn all_messages(u: &Update) -> Vec<Message> {
    u.messages
        .iter()
        .chain(&u.persisted_messages)
        .cloned()
        .collect()
}

/// The only message of `u`; fails if there is not exactly one.
fn only_message(u: &Update) -> Message {
    let all = all_messages(u);
    assert_eq!(all.len(), 1, "expected one message, got {all:?}");
    all.into_iter().next().expect("one")
}

/// Makes replica `raft` (a voter of {1,2,3}) leader by granting it votes.
fn make_leader(raft: &mut Raft<MemLog>, grant_from: &[u64]) {
    raft.campaign();
    assert_eq!(raft.role(), Role::Candidate);
    let term = raft.term().0;
    let id = raft.id().0;
    cycle(raft);
    for &v in grant_from {
        raft.step(msg(MessageType::RequestVoteResp, v, id, term));
    }
    assert!(raft.is_leader());
    cycle(raft);
}

// ----- cluster helpers -----

fn cluster(n: u64, o: ClusterOptions) -> Cluster {
    Cluster::new(&(1..=n).collect::<Vec<_>>(), o)
}

fn opts() -> ClusterOptions {
    ClusterOptions::default()
}

fn is_vote(m: &Message) -> bool {
    matches!(
        m.msg_type,
        MessageType::RequestVote
            | MessageType::RequestVoteResp
            | MessageType::RequestPreVote
            | MessageType::RequestPreVoteResp
    )
}

/// Elects `id` and lets the cluster settle (its no-op committed everywhere).
fn elect(c: &mut Cluster, id: u64) {
    c.raft(id).campaign();
    c.stabilize();
    assert!(c.raft(id).is_leader(), "{id} was not elected");
}

/// Elects `id` by delivering only election messages: its first appends are
/// queued, nothing of its term is committed yet.
fn elect_unsettled(c: &mut Cluster, id: u64) {
    c.raft(id).campaign();
    for _ in 0..100 {
        c.process_all();
        if c.raft(id).is_leader() {
            return;
        }
        c.deliver_matching(is_vote);
    }
    panic!("{id} was not elected");
}

fn queued(c: &Cluster, t: MessageType, from: u64, to: u64) -> Vec<Message> {
    c.queue
        .iter()
        .filter(|m| m.msg_type == t && m.from == r(from) && m.to == r(to))
        .cloned()
        .collect()
}

/// Delivers the first queued message matching `pred`.
fn deliver_one(c: &mut Cluster, pred: impl Fn(&Message) -> bool) -> Message {
    let pos = c
        .queue
        .iter()
        .position(&pred)
        .expect("no such message queued");
    let m = c.queue.remove(pos).expect("position is valid");
    if let Some(n) = c.nodes.get_mut(&m.to) {
        n.raft.step(m.clone());
    }
    m
}

/// Runs update cycles and delivers queued messages one at a time until
/// nothing moves, calling `before` with each message before delivering it.
fn pump(c: &mut Cluster, mut before: impl FnMut(&Cluster, &Message)) {
    for _ in 0..100_000 {
        c.process_all();
        let Some(m) = c.queue.pop_front() else {
            return;
        };
        before(c, &m);
        if let Some(n) = c.nodes.get_mut(&m.to) {
            n.raft.step(m);
        }
    }
    panic!("cluster did not settle");
}

/// `n` rounds of: tick every node once, then stabilize.
fn tick_all(c: &mut Cluster, n: u64) {
    let ids: Vec<u64> = c.nodes.keys().map(|r| r.0).collect();
    for _ in 0..n {
        for &id in &ids {
            c.tick(id);
        }
        c.stabilize();
    }
}

fn committed(c: &Cluster, id: u64) -> Index {
    c.node(id).raft.log().committed()
}

fn last_index(c: &Cluster, id: u64) -> Index {
    c.node(id).raft.log().last_index()
}

fn propose(c: &mut Cluster, id: u64, data: &str) {
    c.raft(id)
        .propose(vec![Cluster::entry(data)])
        .expect("proposal accepted");
}

fn cc(t: ConfigChangeType, id: u64) -> ConfigChange {
    ConfigChange {
        change_type: t,
        replica_id: r(id),
        address: format!("node{id}"),
        config_change_id: Index(0),
    }
}

/// Adds replica `id` to the cluster (a new node with an empty log) as `t`,
/// through the leader, and lets the cluster settle.
fn add_member(c: &mut Cluster, leader: u64, t: ConfigChangeType, id: u64) {
    if !c.nodes.contains_key(&r(id)) {
        c.add_node(r(id), Membership::default());
    }
    c.raft(leader)
        .propose_config_change(&cc(t, id))
        .expect("config change accepted");
    c.stabilize();
}

// =====================================================================
// Leader election (Raft §5.2, §5.4.1)
// =====================================================================

/// Raft §5.2: election timeouts are chosen at random from a fixed interval,
/// here `[election_rtt, 2 * election_rtt)`, so that split votes are rare.
#[test]
fn election_timeout_is_random_within_one_to_two_election_timeouts() {
    let mut seen = BTreeSet::new();
    for seed in 0..64 {
        let mut f = replica(Config { seed, ..cfg(1) }, &[1], 1, 1);
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

// =====================================================================
// PreVote (thesis §9.6)
// =====================================================================

/// Thesis §9.6: a pre-vote round changes no term and no vote, neither on
/// the pre-candidate nor on the replicas that answer it.
#[test]
fn pre_vote_changes_no_term_or_vote() {
    let mut c = cluster(
        3,
        ClusterOptions {
            pre_vote: true,
            ..opts()
        },
    );
    c.raft(1).campaign();
    assert_eq!(c.raft(1).role(), Role::PreCandidate);
    c.process(r(1));
    let reqs = queued(&c, MessageType::RequestPreVote, 1, 2);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].term, Term(2), "asks about the next term");
    c.deliver_matching(|m| m.msg_type == MessageType::RequestPreVote);
    c.process_all();
    for id in 1..=3 {
        let n = c.node(id);
        assert_eq!(n.raft.hard_state().term, Term(1), "node {id}");
        assert_eq!(n.raft.hard_state().vote, ReplicaId::NONE, "node {id}");
        assert_eq!(
            n.hard_state.term,
            Term(1),
            "node {id} persisted nothing new"
        );
    }
    for id in [2, 3] {
        let resp = queued(&c, MessageType::RequestPreVoteResp, id, 1);
        assert!(!resp[0].reject, "{id} would vote");
    }
}

/// Thesis §9.6: a replica refuses a pre-vote while it heard from a leader
/// within the election timeout, so a pre-candidate cannot disrupt a
/// healthy leader; once that leader is silent for an election timeout the
/// same pre-vote is granted.
#[test]
fn pre_vote_refused_while_leader_heard_recently() {
    let mut c = cluster(
        3,
        ClusterOptions {
            pre_vote: true,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.raft(3).campaign();
    c.process(r(3));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::RequestPreVote && m.to == r(2)
    });
    c.process(r(2));
    assert!(queued(&c, MessageType::RequestPreVoteResp, 2, 3)[0].reject);
    c.stabilize();
    assert_eq!(c.leader(), Some(r(1)));
    assert!(
        c.nodes.values().all(|n| n.raft.term() == term),
        "no term grew"
    );

    // 2 no longer hears from the leader: after an election timeout it would
    // vote (whether or not it started a pre-vote of its own meanwhile).
    c.isolate(1);
    for _ in 0..ELECTION {
        c.tick(2);
    }
    c.process(r(2));
    c.drop_matching(|_| true);
    c.raft(3).campaign();
    c.process(r(3));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::RequestPreVote && m.to == r(2)
    });
    c.process(r(2));
    assert!(!queued(&c, MessageType::RequestPreVoteResp, 2, 3)[0].reject);
}

/// Thesis §9.6 (with CheckQuorum, §6.2): a partitioned replica keeps
/// failing its pre-votes, so its term does not grow; when the partition
/// heals it rejoins without deposing the leader.
#[test]
fn partitioned_pre_candidate_term_does_not_grow_nor_disrupt() {
    let o = ClusterOptions {
        pre_vote: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.isolate(3);
    for _ in 0..10 * ELECTION {
        tick_all(&mut c, 1);
        assert_ne!(c.raft(3).role(), Role::Candidate);
    }
    assert_eq!(c.raft(3).term(), term);
    c.heal();
    tick_all(&mut c, 3 * ELECTION);
    assert_eq!(c.leader(), Some(r(1)));
    assert!(c.nodes.values().all(|n| n.raft.term() == term));
    assert_eq!(c.raft(3).leader_id(), r(1));
}

// =====================================================================
// CheckQuorum (thesis §6.2)
// =====================================================================

/// Thesis §6.2: a leader steps down if an election timeout passes without
/// a successful round of heartbeats to a majority; one that does hear from
/// a majority stays leader.
#[test]
fn leader_without_quorum_steps_down_after_election_timeout() {
    let mut c = cluster(
        3,
        ClusterOptions {
            check_quorum: true,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let term = c.raft(1).term();
    for _ in 0..5 * ELECTION {
        c.tick(1);
        c.stabilize();
    }
    assert!(
        c.raft(1).is_leader(),
        "a leader hearing from a quorum stays"
    );

    c.isolate(1);
    for _ in 0..ELECTION - 1 {
        c.tick(1);
        c.stabilize();
    }
    assert!(c.raft(1).is_leader(), "not before an election timeout");
    for _ in 0..ELECTION + 1 {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert_eq!(
        c.raft(1).term(),
        term,
        "stepping down does not change the term"
    );
}

/// Thesis §6.2 (§4.2.3): with CheckQuorum, a replica that heard from a
/// leader within the election timeout ignores RequestVote of a higher
/// term (it neither answers nor adopts the term), unless the request
/// comes from a leadership-transfer campaign (thesis §3.10).
#[test]
fn replicas_in_lease_ignore_higher_term_votes_unless_transfer() {
    let mut c = cluster(
        3,
        ClusterOptions {
            check_quorum: true,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.raft(3).campaign();
    c.process(r(3));
    c.deliver_matching(|m| m.msg_type == MessageType::RequestVote);
    c.process_all();
    assert!(
        c.queue
            .iter()
            .all(|m| m.msg_type != MessageType::RequestVoteResp)
    );
    assert_eq!((c.raft(1).term(), c.raft(2).term()), (term, term));
    assert!(c.raft(1).is_leader());

    let last = c.raft(3).log().last_index();
    let forced = Message {
        context: CAMPAIGN_TRANSFER,
        ..vote_request(3, 2, term.0 + 1, (last.0, term.0))
    };
    c.raft(2).step(forced);
    assert_eq!(c.raft(2).term(), term.next());
    c.process(r(2));
    assert!(!queued(&c, MessageType::RequestVoteResp, 2, 3)[0].reject);
}

// =====================================================================
// Log replication (Raft §5.3)
// =====================================================================

/// Raft §5.3: a follower refuses an append whose previous entry it does
/// not hold with the same term (the consistency check), and answers with a
/// hint of where the logs may match; it accepts one that matches.
#[test]
fn append_consistency_check() {
    let mut f = replica(cfg(2), &[1, 1, 1, 2], 2, 3);
    // Previous entry present with another term.
    f.step(append(1, 2, 3, (4, 3), vec![ent(5, 3)], 3));
    let m = only_message(&cycle(&mut f));
    assert!(m.reject);
    assert_eq!(
        (m.log_index, m.hint, m.hint_term),
        (Index(4), Index(4), Term(2))
    );
    // Previous entry beyond the end of the log.
    f.step(append(1, 2, 3, (7, 3), vec![ent(8, 3)], 3));
    let m = only_message(&cycle(&mut f));
    assert!(m.reject);
    assert_eq!(m.hint, Index(4), "hint points at the follower's last entry");
    assert_eq!(f.log().last_index(), Index(4), "nothing appended");
    // Matching previous entry.
    f.step(append(1, 2, 3, (4, 2), vec![ent(5, 3)], 3));
    let u = cycle(&mut f);
    let m = only_message(&u);
    assert!(!m.reject);
    assert_eq!(m.log_index, Index(5));
    assert_eq!(u.entries, vec![ent(5, 3)]);
}

/// Raft §5.3: if an existing entry conflicts with a new one (same index,
/// different term), the follower deletes it and all that follow it.
#[test]
fn conflicting_uncommitted_tail_is_truncated() {
    let mut f = replica(cfg(2), &[1, 1, 1, 2, 2], 2, 3);
    f.step(append(1, 2, 3, (3, 1), vec![ent(4, 3)], 3));
    let u = cycle(&mut f);
    assert_eq!(u.entries, vec![ent(4, 3)]);
    assert!(!only_message(&u).reject);
    assert_eq!(f.log().last_index(), Index(4));
    assert_eq!(f.log().term(Index(4)), Ok(Term(3)));
    assert_eq!(
        f.log().reader().last_index(),
        Index(4),
        "durable log truncated"
    );
}

/// Raft §5.3: an append whose entries are all already present truncates
/// nothing, so a duplicated, reordered or stale append never removes
/// entries; one older than the commit index is answered with the commit
/// index and never touches committed entries.
#[test]
fn stale_duplicated_or_reordered_append_truncates_nothing() {
    let mut f = replica(cfg(2), &[1, 1, 1], 2, 3);
    let a = append(1, 2, 2, (3, 1), vec![ent(4, 2), ent(5, 2)], 3);
    let b = append(1, 2, 2, (5, 2), vec![ent(6, 2)], 3);
    // b overtakes a: refused, as its previous entry is missing.
    f.step(b.clone());
    assert!(only_message(&cycle(&mut f)).reject);
    f.step(a.clone());
    assert_eq!(only_message(&cycle(&mut f)).log_index, Index(5));
    f.step(b);
    assert_eq!(only_message(&cycle(&mut f)).log_index, Index(6));
    // a again, and an even older, shorter append.
    f.step(a);
    let u = cycle(&mut f);
    assert!(u.entries.is_empty(), "nothing rewritten");
    assert_eq!(only_message(&u).log_index, Index(5));
    f.step(append(1, 2, 2, (3, 1), vec![ent(4, 2)], 3));
    cycle(&mut f);
    assert_eq!(f.log().last_index(), Index(6), "tail kept");

    f.step(heartbeat(1, 2, 2, 6));
    cycle(&mut f);
    assert_eq!(f.log().committed(), Index(6));
    // A stale append below the commit index, even one that disagrees.
    f.step(append(1, 2, 2, (2, 1), vec![ent(3, 2)], 2));
    let m = only_message(&cycle(&mut f));
    assert_eq!((m.reject, m.log_index), (false, Index(6)));
    assert_eq!(
        f.log().term(Index(3)),
        Ok(Term(1)),
        "committed entry intact"
    );
    assert_eq!(f.log().last_index(), Index(6));
}

/// Raft §5.3 (the optimization at the end of the section): a rejection
/// carries the conflicting term, so the leader skips a whole term per
/// round trip: probes are bounded by the number of diverging terms, not
/// the number of diverging entries.
#[test]
fn fast_backtracking_probes_once_per_term() {
    let mut c = cluster(3, opts());
    // Logs left behind by earlier leaders (all share the bootstrap entries 1..=3):
    // 1: 4..=30 term 2, 31..=53 term 4; 2: nothing more; 3: 4..=30 term 2, 31..=103 term 3.
    let leader_tail: Vec<u64> = (4..=53).map(|i| if i <= 30 { 2 } else { 4 }).collect();
    let stale_tail: Vec<u64> = (4..=103).map(|i| if i <= 30 { 2 } else { 3 }).collect();
    c.raft(1)
        .log_reader_mut()
        .append(&ents_from(4, &leader_tail));
    c.raft(3)
        .log_reader_mut()
        .append(&ents_from(4, &stale_tail));
    c.node_mut(1).hard_state.term = Term(4);
    c.node_mut(3).hard_state.term = Term(3);
    for id in 1..=3 {
        c.restart(r(id));
    }
    c.stabilize();
    c.raft(1).campaign();
    let rejections = [Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0)];
    pump(&mut c, |_, m| {
        if m.msg_type == MessageType::ReplicateResp && m.reject {
            let n = &rejections[m.from.0 as usize];
            n.set(n.get() + 1);
        }
    });
    assert!(c.raft(1).is_leader());
    for id in [2, 3] {
        assert_eq!(last_index(&c, id), Index(54));
        assert_eq!(c.node(id).raft.log().term(Index(31)), Ok(Term(4)));
        assert_eq!(committed(&c, id), Index(54));
    }
    assert_eq!(rejections[2].get(), 1, "a short log is found in one probe");
    assert_eq!(
        rejections[3].get(),
        1,
        "73 diverging entries of one term: one probe"
    );
}

/// Raft §5.3 flow control: while the leader does not know where a
/// follower's log matches (probe state) it sends one append at a time and
/// waits for the answer; once it matches, it pipelines.
#[test]
fn probe_state_sends_one_append_at_a_time() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Probe);
    for i in 0..3 {
        propose(&mut c, 1, &format!("p{i}"));
        c.process(r(1));
    }
    let to3 = queued(&c, MessageType::Replicate, 1, 3);
    assert_eq!(to3.len(), 1, "one probe in flight: {to3:?}");
    assert_eq!(to3[0].entries.len(), 1);

    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::Replicate && m.to == r(3)
    });
    c.process(r(3));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::ReplicateResp && m.from == r(3)
    });
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Replicate);
    c.process(r(1));
    let to3 = queued(&c, MessageType::Replicate, 1, 3);
    let sent: Vec<Index> = to3
        .iter()
        .flat_map(|m| m.entries.iter().map(|e| e.index))
        .collect();
    assert_eq!(sent, vec![Index(5), Index(6), Index(7)]);
}

/// Raft §5.3 flow control: in replicate state the leader pipelines appends
/// without waiting, up to the in-flight window, then stops until
/// acknowledgements free the window.
#[test]
fn replicate_state_pipelines_up_to_inflight_window() {
    let mut c = cluster(
        3,
        ClusterOptions {
            max_inflight_msgs: 3,
            ..opts()
        },
    );
    elect(&mut c, 1);
    for i in 0..5 {
        propose(&mut c, 1, &format!("p{i}"));
        c.process(r(1));
    }
    let to2 = queued(&c, MessageType::Replicate, 1, 2);
    assert_eq!(to2.len(), 3, "window of three messages: {to2:?}");
    assert!(c.raft(1).progress()[&r(2)].inflights.full());

    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::Replicate && m.to == r(2)
    });
    c.process(r(2));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::ReplicateResp && m.from == r(2)
    });
    c.process(r(1));
    let to2 = queued(&c, MessageType::Replicate, 1, 2);
    assert_eq!(to2.len(), 3, "one acknowledgement frees one slot");
    let last: Vec<Index> = to2[2].entries.iter().map(|e| e.index).collect();
    assert_eq!(
        last,
        vec![Index(8), Index(9)],
        "the rest goes in the freed slot"
    );
    c.stabilize();
    assert_eq!(committed(&c, 2), Index(9));
}

/// Raft §5.3 flow control: the in-flight window is also bounded in bytes.
#[test]
fn inflight_window_is_bounded_in_bytes() {
    let entry_bytes = Cluster::entry("x").size_bytes();
    let c = Config {
        max_inflight_bytes: 2 * entry_bytes,
        ..cfg(1)
    };
    let mut l = replica(c, &[1, 1, 1], 1, 3);
    make_leader(&mut l, &[2]);
    l.step(Message {
        log_index: Index(4),
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    cycle(&mut l);
    let mut sent = 0;
    for _ in 0..5 {
        l.propose(vec![Cluster::entry("x")]).unwrap();
        sent += all_messages(&cycle(&mut l))
            .iter()
            .filter(|m| m.msg_type == MessageType::Replicate && m.to == r(2))
            .count();
    }
    assert_eq!(sent, 2, "two entries' bytes fill the window");
    assert!(l.progress()[&r(2)].inflights.full());
}

/// Raft §5.3: responses that arrive late or out of order are ignored: a
/// rejection of an index the follower is known to match does not move the
/// leader back, and an old acknowledgement does not lower `match_index`.
#[test]
fn stale_append_responses_are_ignored() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    for i in 0..3 {
        propose(&mut c, 1, &format!("p{i}"));
    }
    c.stabilize();
    let before = c.raft(1).progress()[&r(2)].clone();
    assert_eq!(
        (before.state, before.match_index),
        (ProgressState::Replicate, Index(7))
    );
    c.raft(1).step(Message {
        log_index: Index(5),
        reject: true,
        hint: Index(4),
        hint_term: Term(2),
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    c.raft(1).step(Message {
        log_index: Index(4),
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    let after = &c.raft(1).progress()[&r(2)];
    assert_eq!(after.state, ProgressState::Replicate);
    assert_eq!(
        (after.match_index, after.next_index),
        (before.match_index, before.next_index)
    );
    c.process(r(1));
    assert!(
        queued(&c, MessageType::Replicate, 1, 2).is_empty(),
        "nothing resent"
    );
}

/// Raft §5.3 (batching): an append carries at most `max_append_bytes` of
/// entries, except that a single larger entry is still sent alone.
#[test]
fn append_messages_respect_byte_limit() {
    let limit = 2 * (ENTRY_OVERHEAD_BYTES + 100) + 10;
    let mut c = cluster(
        3,
        ClusterOptions {
            max_append_bytes: limit,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let batch: Vec<Entry> = (0..10).map(|_| Cluster::entry(&"x".repeat(100))).collect();
    c.raft(1).propose(batch).unwrap();
    c.process(r(1));
    let to2 = queued(&c, MessageType::Replicate, 1, 2);
    let sizes: Vec<usize> = to2.iter().map(|m| m.entries.len()).collect();
    assert_eq!(sizes, vec![2; 5]);
    for m in &to2 {
        assert!(longship_raft::entries_size(&m.entries) <= limit);
    }
    c.stabilize();

    let big = Cluster::entry(&"y".repeat(1000));
    c.raft(1)
        .propose(vec![big, Cluster::entry("small")])
        .unwrap();
    c.process(r(1));
    let sizes: Vec<usize> = queued(&c, MessageType::Replicate, 1, 2)
        .iter()
        .map(|m| m.entries.len())
        .collect();
    assert_eq!(sizes, vec![1, 1]);
}

/// Raft §5.3: the leader retries AppendEntries until every follower stores
/// every entry. A follower whose appends were lost (no transport error
/// reported) catches up on the next heartbeat round, without new proposals.
#[test]
fn lost_appends_are_resent_after_heartbeat() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    propose(&mut c, 1, "lost");
    c.stabilize();
    assert_eq!(committed(&c, 1), Index(5));
    assert_eq!(last_index(&c, 3), Index(4));
    c.heal();
    c.stabilize();
    assert_eq!(last_index(&c, 3), Index(4), "nothing new to send");
    tick_all(&mut c, 1);
    assert_eq!(last_index(&c, 3), Index(5));
    assert_eq!(committed(&c, 3), Index(5));
}

/// Raft §5.3, Figure 2 (AppendEntries rule 5): a follower never commits
/// beyond what it is known to match; heartbeats carry the commit index
/// capped at the follower's match index.
#[test]
fn heartbeat_commit_is_capped_at_follower_match() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.drop_matching(|m| m.to == r(3));
    c.stabilize();
    assert_eq!(committed(&c, 1), Index(4));
    c.tick(1);
    c.process(r(1));
    let hb3 = &queued(&c, MessageType::Heartbeat, 1, 3)[0];
    let hb2 = &queued(&c, MessageType::Heartbeat, 1, 2)[0];
    assert_eq!(hb2.commit, Index(4));
    assert_eq!(hb3.commit, Index(0), "3 matches nothing yet");
}

// =====================================================================
// Commit (Raft §5.4.2)
// =====================================================================

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

// =====================================================================
// What may be sent before persisting (Raft Figure 2, thesis §10.2.1)
// =====================================================================

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

// =====================================================================
// ReadIndex (thesis §6.4)
// =====================================================================

/// Thesis §6.4 step 1: a new leader serves no read before it committed an
/// entry of its term (until then its commit index may be stale); the read
/// index is then at least that entry.
#[test]
fn read_index_waits_for_a_commit_in_the_current_term() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.raft(1).read_index(7).unwrap();
    c.process(r(1));
    assert!(c.node(1).ready_reads.is_empty());
    assert!(
        c.queue.iter().all(|m| m.context != 7),
        "no heartbeat round yet"
    );
    c.stabilize();
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 7
        }]
    );
}

/// Thesis §6.4 step 3: the leader serves a read only after a heartbeat
/// round acknowledged by a majority confirms it still leads.
#[test]
fn read_index_needs_a_heartbeat_quorum() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.raft(1).read_index(8).unwrap();
    c.process(r(1));
    c.deliver_matching(|m| m.msg_type == MessageType::Heartbeat);
    c.process_all();
    assert_eq!(
        c.drop_matching(|m| m.msg_type == MessageType::HeartbeatResp),
        2
    );
    c.process_all();
    assert!(
        c.node(1).ready_reads.is_empty(),
        "no acknowledgement, no read"
    );

    // The next heartbeat carries the pending read; one follower is a quorum with the leader.
    c.tick(1);
    c.process(r(1));
    c.drop_matching(|m| m.to == r(3));
    c.stabilize();
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 8
        }]
    );
}

/// Thesis §6.4: a follower gets its read index from the leader (the
/// leader's commit index, once it confirmed its leadership), not from its
/// own possibly lagging commit index, and serves the read once applied.
#[test]
fn follower_read_index_goes_through_the_leader() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    // 2 stores entry 5 but does not learn that it committed.
    propose(&mut c, 1, "a");
    c.process(r(1));
    c.deliver_matching(|_| true);
    c.process_all();
    c.deliver_matching(|_| true);
    c.process(r(1));
    c.drop_matching(|m| m.to == r(2));
    c.stabilize();
    assert_eq!((committed(&c, 1), committed(&c, 2)), (Index(5), Index(4)));
    c.raft(2).read_index(9).unwrap();
    c.stabilize();
    assert_eq!(
        c.node(2).ready_reads,
        vec![ReadState {
            index: Index(5),
            context: 9
        }]
    );
    assert!(c.node(1).ready_reads.is_empty());

    let mut lone = replica(cfg(2), &[1], 1, 1);
    assert_eq!(lone.read_index(1), Err(ProposalError::NoLeader));
}

/// Thesis §6.4: reads a leader holds when it loses leadership can never be
/// confirmed; they are reported dropped so their callers can retry.
#[test]
fn pending_reads_are_dropped_when_leadership_is_lost() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.raft(1).read_index(11).unwrap(); // waits for the first commit
    c.drop_matching(|_| true);
    c.raft(1).step(msg(MessageType::Heartbeat, 2, 1, 3));
    c.process(r(1));
    assert_eq!(c.node(1).dropped_reads, vec![11]);

    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.raft(1).read_index(10).unwrap(); // waits for a heartbeat quorum
    c.process(r(1));
    c.drop_matching(|_| true);
    c.raft(1).step(msg(MessageType::Heartbeat, 2, 1, 3));
    c.process(r(1));
    assert_eq!(c.node(1).dropped_reads, vec![10]);
    assert!(c.node(1).ready_reads.is_empty());
}

/// Thesis §6.4.1: lease-based reads skip the heartbeat round and rely on
/// CheckQuorum (a leader that lost its majority steps down within an
/// election timeout), so a config without CheckQuorum is invalid.
#[test]
fn lease_read_requires_check_quorum_and_skips_the_heartbeat_round() {
    let bad = Config {
        lease_read: true,
        check_quorum: false,
        ..cfg(1)
    };
    assert!(matches!(
        bad.validate(),
        Err(ConfigError::Invalid {
            field: "lease_read",
            ..
        })
    ));
    assert!(
        Raft::new(
            bad,
            MemLog::new(),
            HardState::default(),
            voters(&[1]),
            Index(0)
        )
        .is_err()
    );

    let o = ClusterOptions {
        lease_read: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    // The lease starts with a quorum's answers to a heartbeat (counted from
    // when it was sent, thesis §6.4.1).
    c.tick(1);
    c.stabilize();
    c.raft(1).read_index(12).unwrap();
    c.process(r(1));
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 12
        }]
    );
    assert!(c.queue.is_empty(), "no heartbeat round");
}

/// Thesis §6.4.1 with §3.10: a leadership transfer ends the lease early
/// (TimeoutNow lets the target win at once, overriding the followers'
/// lease), so while one is under way a lease read takes the heartbeat round.
#[test]
fn lease_read_takes_the_heartbeat_round_during_a_transfer() {
    let o = ClusterOptions {
        lease_read: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    c.isolate(3);
    c.raft(1).transfer_leader(r(3)).unwrap();
    c.raft(1).read_index(13).unwrap();
    c.process(r(1));
    assert!(
        c.node(1).ready_reads.is_empty(),
        "no lease during the transfer"
    );
    assert_eq!(queued(&c, MessageType::Heartbeat, 1, 2)[0].context, 13);
    c.stabilize();
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 13
        }]
    );
}

// =====================================================================
// Leadership transfer (thesis §3.10)
// =====================================================================

/// Thesis §3.10: the leader first brings the target's log up to date, then
/// sends it TimeoutNow; the target campaigns and wins. Proposals are
/// refused while the transfer is in progress.
#[test]
fn transfer_sends_timeout_now_once_target_caught_up() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.drop_matching(|m| m.to == r(3)); // 3 misses the no-op
    c.stabilize();
    assert_eq!(last_index(&c, 3), Index(3));
    c.raft(1).transfer_leader(r(3)).unwrap();
    assert_eq!(c.raft(1).transfer_target(), r(3));
    assert_eq!(
        c.raft(1).propose(vec![Cluster::entry("no")]),
        Err(ProposalError::TransferInProgress)
    );
    c.process(r(1));
    assert!(
        queued(&c, MessageType::TimeoutNow, 1, 3).is_empty(),
        "3 is behind"
    );

    c.tick(1);
    let sent = Cell::new(false);
    pump(&mut c, |c, m| {
        if m.msg_type == MessageType::TimeoutNow {
            assert_eq!(
                last_index(c, 3),
                last_index(c, 1),
                "TimeoutNow to a lagging target"
            );
            sent.set(true);
        }
    });
    assert!(sent.get());
    assert!(c.raft(3).is_leader());
    assert_eq!(c.raft(3).term(), Term(3));
}

/// Thesis §3.10: if the transfer does not complete within an election
/// timeout, the leader aborts it and resumes accepting proposals.
#[test]
fn transfer_is_aborted_after_an_election_timeout() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    c.raft(1).transfer_leader(r(3)).unwrap();
    for _ in 0..ELECTION - 1 {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(c.raft(1).transfer_target(), r(3), "still trying");
    c.tick(1);
    c.stabilize();
    assert_eq!(c.raft(1).transfer_target(), ReplicaId::NONE);
    assert!(c.raft(1).is_leader());
    propose(&mut c, 1, "again");
}

/// Thesis §3.10 with §9.6 and §6.2: the transfer target campaigns at once,
/// without a pre-vote round, and its vote requests override the voters'
/// leader lease, so transfer works with PreVote and CheckQuorum.
#[test]
fn transfer_target_skips_pre_vote_and_overrides_lease() {
    let o = ClusterOptions {
        pre_vote: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    let term = c.raft(1).term();
    c.raft(1).transfer_leader(r(2)).unwrap();
    c.process(r(1));
    deliver_one(&mut c, |m| m.msg_type == MessageType::TimeoutNow);
    assert_eq!(c.raft(2).role(), Role::Candidate, "no pre-vote round");
    assert_eq!(c.raft(2).term(), term.next());
    c.process(r(2));
    let reqs = queued(&c, MessageType::RequestVote, 2, 3);
    assert_eq!(reqs[0].context, CAMPAIGN_TRANSFER);
    c.stabilize();
    assert_eq!(c.leader(), Some(r(2)));
    assert!(c.nodes.values().all(|n| n.raft.term() == term.next()));
}

/// Thesis §3.10: only a voter can lead, so a transfer to a witness, a
/// non-voting replica or an unknown replica is refused.
#[test]
fn transfer_to_witness_non_voting_or_unknown_is_refused() {
    let mut m = voters(&[1, 2, 3]);
    m.non_votings.insert(r(4), "node4".into());
    m.witnesses.insert(r(5), "node5".into());
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1]));
    let hs = HardState {
        term: Term(1),
        vote: ReplicaId::NONE,
        commit: Index(1),
    };
    let mut l = Raft::new(cfg(1), log, hs, m, Index(1)).unwrap();
    make_leader(&mut l, &[2, 3]);
    for target in [4, 5, 9] {
        assert_eq!(
            l.transfer_leader(r(target)),
            Err(ProposalError::Invalid),
            "{target}"
        );
        assert_eq!(l.transfer_target(), ReplicaId::NONE);
    }
    assert_eq!(l.transfer_leader(r(2)), Ok(()));
}

// =====================================================================
// Membership changes (thesis §4.1–§4.2)
// =====================================================================

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

// =====================================================================
// Snapshots (Raft §7)
// =====================================================================

/// Raft §7: a leader whose follower needs compacted entries sends a
/// snapshot; the follower installs it (with the membership it holds),
/// acknowledges it, and replication resumes after it.
#[test]
fn leader_sends_snapshot_when_follower_needs_compacted_entries() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    add_member(&mut c, 1, ConfigChangeType::AddNonVoting, 4);
    for i in 0..5 {
        propose(&mut c, 1, &format!("p{i}"));
    }
    c.stabilize();
    let snap_index = c.node(1).applied_index;
    c.compact(r(1), snap_index);
    assert!(!c.raft(3).membership().contains(r(4)));

    c.heal();
    propose(&mut c, 1, "after");
    let snapshot_sent = Cell::new(false);
    let acked = Cell::new(false);
    pump(&mut c, |c, m| {
        if m.msg_type == MessageType::InstallSnapshot {
            assert_eq!(m.to, r(3));
            assert_eq!(m.snapshot.as_ref().map(|s| s.index), Some(snap_index));
            assert_eq!(
                c.node(1).raft.progress()[&r(3)].state,
                ProgressState::Snapshot
            );
            snapshot_sent.set(true);
        }
        if m.msg_type == MessageType::ReplicateResp && m.from == r(3) && m.log_index == snap_index {
            acked.set(true);
        }
    });
    assert!(snapshot_sent.get() && acked.get());
    assert_eq!(c.node(3).raft.log().reader().snapshot().index, snap_index);
    assert!(
        c.raft(3).membership().is_non_voting(r(4)),
        "membership of the snapshot"
    );
    assert_eq!(last_index(&c, 3), last_index(&c, 1));
    assert_eq!(c.node(3).applied_index, c.node(1).applied_index);
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Replicate);
}

fn snapshot_message(from: u64, to: u64, term: u64, index: u64, snap_term: u64) -> Message {
    Message {
        snapshot: Some(SnapshotMeta {
            index: Index(index),
            term: Term(snap_term),
            membership: voters(&[1, 2]),
            ..SnapshotMeta::default()
        }),
        ..msg(MessageType::InstallSnapshot, from, to, term)
    }
}

/// Raft §7: a snapshot the follower already covers (its index is at or
/// below the commit index) is acknowledged without being installed.
#[test]
fn stale_snapshot_is_acknowledged_without_restore() {
    let mut f = replica(cfg(2), &[1; 10], 1, 8);
    f.step(snapshot_message(1, 2, 1, 5, 1));
    let u = cycle(&mut f);
    assert!(u.snapshot.is_none());
    let m = only_message(&u);
    assert_eq!(
        (m.msg_type, m.reject, m.log_index),
        (MessageType::ReplicateResp, false, Index(8))
    );
    assert_eq!(f.membership().voters.len(), 3, "membership untouched");
    assert_eq!(
        (f.log().first_index(), f.log().last_index()),
        (Index(1), Index(10))
    );
}

/// Raft §7: if the follower's log holds the snapshot's last entry, it keeps
/// the entries that follow, but the snapshot proves a match only up to its
/// index: the follower must not acknowledge more (its later entries may
/// conflict with the leader's and be counted toward a commit).
#[test]
fn snapshot_matching_the_log_acknowledges_only_its_index() {
    // The follower's entries 9 and 10 (term 2) may differ from the leader's.
    let mut f = replica(cfg(2), &[1, 1, 1, 1, 1, 1, 1, 1, 2, 2], 2, 3);
    f.step(snapshot_message(1, 2, 3, 8, 1));
    let u = cycle(&mut f);
    assert!(u.snapshot.is_none(), "log kept");
    assert_eq!(f.log().committed(), Index(8));
    assert_eq!(f.log().last_index(), Index(10));
    let m = only_message(&u);
    assert!(!m.reject);
    assert_eq!(
        m.log_index,
        Index(8),
        "acknowledges the snapshot, not the unproven tail"
    );
}

/// Raft §7 with flow control: when the transport reports that sending the
/// snapshot failed, the leader leaves snapshot state and sends it again
/// after the follower next answers.
#[test]
fn failed_snapshot_is_retried() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    for i in 0..3 {
        propose(&mut c, 1, &format!("p{i}"));
    }
    c.stabilize();
    let snap_index = c.node(1).applied_index;
    c.compact(r(1), snap_index);
    c.heal();
    propose(&mut c, 1, "after");
    c.process(r(1));
    c.deliver_matching(|m| m.to == r(3));
    c.process(r(3));
    c.deliver_matching(|m| m.from == r(3));
    c.process(r(1));
    assert_eq!(
        c.drop_matching(|m| m.msg_type == MessageType::InstallSnapshot),
        1
    );
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Snapshot);
    let failed = Message {
        reject: true,
        ..msg(MessageType::SnapshotStatus, 3, 1, 0)
    };
    c.raft(1).step(failed);
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Probe);
    c.tick(1);
    let resent = Cell::new(false);
    pump(&mut c, |_, m| {
        if m.msg_type == MessageType::InstallSnapshot {
            resent.set(true);
        }
    });
    assert!(resent.get(), "snapshot sent again");
    assert_eq!(last_index(&c, 3), last_index(&c, 1));
}

/// Raft §5.3 flow control: when the transport reports a follower
/// unreachable, the leader stops pipelining to it and probes again.
#[test]
fn unreachable_follower_goes_back_to_probe() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    assert_eq!(c.raft(1).progress()[&r(2)].state, ProgressState::Replicate);
    c.raft(1).step(msg(MessageType::Unreachable, 2, 1, 0));
    let p = &c.raft(1).progress()[&r(2)];
    assert_eq!(p.state, ProgressState::Probe);
    assert_eq!(p.next_index, p.match_index.next());
}

// =====================================================================
// Limits
// =====================================================================

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

/// Apply batching (DESIGN.md §6 "every batch has a bound"): one update
/// hands out at most `max_apply_bytes` of committed entries (at least
/// one), in order.
#[test]
fn apply_batches_are_bounded_by_max_apply_bytes() {
    let per_entry = ent(1, 1).size_bytes();
    let c = Config {
        max_apply_bytes: 2 * per_entry,
        ..cfg(2)
    };
    let mut log = MemLog::new();
    log.append(&ents_from(1, &[1; 10]));
    let hs = HardState {
        term: Term(1),
        vote: ReplicaId::NONE,
        commit: Index(10),
    };
    let mut f = Raft::new(c, log, hs, voters(&[1, 2, 3]), Index(0)).unwrap();
    let mut applied = Vec::new();
    while f.has_update() {
        let u = cycle(&mut f);
        assert!(!u.committed_entries.is_empty());
        assert!(longship_raft::entries_size(&u.committed_entries) <= 2 * per_entry);
        applied.extend(u.committed_entries.iter().map(|e| e.index.0));
    }
    assert_eq!(applied, (1..=10).collect::<Vec<_>>());
}

// =====================================================================
// The update cycle
// =====================================================================

/// The update contract (DESIGN.md §2, execution model): an update must be
/// advanced before the next one is taken (otherwise the same entries
/// would be persisted twice or lost).
#[test]
#[should_panic(expected = "get_update called twice without advance")]
fn get_update_twice_without_advance_panics() {
    let mut f = replica(cfg(1), &[1], 1, 1);
    f.campaign();
    let _ = f.get_update();
    let _ = f.get_update();
}

/// The update contract (DESIGN.md §2): `advance` records that the update is durable, so
/// its entries and hard state are not handed out again; an idle replica
/// has no update.
#[test]
fn advance_marks_update_durable_and_idle_replica_has_no_update() {
    let mut f = replica(cfg(2), &[1, 1, 1], 1, 3);
    assert!(!f.has_update(), "nothing to do after start");
    f.tick();
    assert!(!f.has_update(), "a tick below the timeout changes nothing");
    f.step(append(1, 2, 2, (3, 1), vec![ent(4, 2)], 4));
    assert!(f.has_update());
    let u = f.get_update();
    assert_eq!(u.entries, vec![ent(4, 2)]);
    assert!(u.hard_state.is_some());
    assert!(
        u.committed_entries.is_empty(),
        "not durable yet, not applied yet"
    );
    f.log_reader_mut().append(&u.entries);
    f.advance(&u);
    assert_eq!(f.log().stable_last_index(), Index(4));
    let u = f.get_update();
    assert!(u.entries.is_empty() && u.hard_state.is_none());
    assert_eq!(u.committed_entries, vec![ent(4, 2)]);
    f.advance(&u);
    f.applied_to(Index(4));
    assert!(!f.has_update());
}

// =====================================================================
// Invariants
// =====================================================================

/// Raft §5.1: terms only grow: a message of a lower term never lowers the
/// term (a stale leader is told the newer term instead, thesis §9.6).
#[test]
fn term_never_goes_back() {
    let mut f = replica(
        Config {
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
