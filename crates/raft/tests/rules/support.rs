//! Helpers shared by the rule tests: single cores over a [`MemLog`]
//! stepped by hand, and the testkit [`Cluster`].

pub use std::cell::Cell;
pub use std::collections::BTreeSet;

pub use bytes::Bytes;
pub use longship_raft::testkit::{Cluster, ClusterOptions, TEST_SHARD};
pub use longship_raft::{
    CAMPAIGN_TRANSFER, ConfigChange, ConfigChangeRejected, ConfigChangeType, ConfigError,
    ENTRY_OVERHEAD_BYTES, Entry, EntryType, HardState, INDEX_MAX, Index, LOG_LOST, LogReader,
    MemLog, Membership, Message, MessageType, ProgressState, ProposalError, Raft, RaftConfig,
    RaftLog, ReadState, RecoveryGuard, ReplicaId, Role, SnapshotMeta, TERM_JUMP_MAX, TERM_MAX,
    Term, Update, bootstrap_entries,
};

pub const ELECTION: u64 = 10;

// ----- single-core helpers -----

pub fn r(id: u64) -> ReplicaId {
    ReplicaId(id)
}

pub fn cfg(id: u64) -> RaftConfig {
    RaftConfig {
        shard_id: TEST_SHARD,
        replica_id: r(id),
        election_rtt: ELECTION,
        heartbeat_rtt: 1,
        pre_vote: false,
        check_quorum: false,
        seed: 7,
        ..RaftConfig::default()
    }
}

pub fn voters(ids: &[u64]) -> Membership {
    Membership::with_voters(ids.iter().map(|&i| (i, format!("node{i}"))))
}

pub fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index: Index(index),
        term: Term(term),
        cmd: Bytes::from(format!("e{index}")),
        ..Entry::default()
    }
}

/// Entries at indexes `from..` with the given terms.
pub fn ents_from(from: u64, terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| ent(from + i as u64, t))
        .collect()
}

/// A replica of voters {1, 2, 3} whose durable log holds normal entries
/// with `terms` (from index 1), at `term`, with `commit` committed and applied.
pub fn replica(c: RaftConfig, terms: &[u64], term: u64, commit: u64) -> Raft<MemLog> {
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
pub fn cycle(raft: &mut Raft<MemLog>) -> Update {
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

pub fn msg(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message {
        term: Term(term),
        ..Message::new(t, TEST_SHARD, r(from), r(to))
    }
}

/// An append from `from` with the previous entry (`prev`, `prev_term`).
pub fn append(
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

/// An InstallSnapshot from `from` for a snapshot at (`index`, `snap_term`).
pub fn snapshot_message(from: u64, to: u64, term: u64, index: u64, snap_term: u64) -> Message {
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

pub fn heartbeat(from: u64, to: u64, term: u64, commit: u64) -> Message {
    Message {
        commit: Index(commit),
        ..msg(MessageType::Heartbeat, from, to, term)
    }
}

pub fn vote_request(from: u64, to: u64, term: u64, last: (u64, u64)) -> Message {
    Message {
        log_index: Index(last.0),
        log_term: Term(last.1),
        ..msg(MessageType::RequestVote, from, to, term)
    }
}

pub fn all_messages(u: &Update) -> Vec<Message> {
    u.messages
        .iter()
        .chain(&u.persisted_messages)
        .cloned()
        .collect()
}

/// The only message of `u`; fails if there is not exactly one.
pub fn only_message(u: &Update) -> Message {
    let all = all_messages(u);
    assert_eq!(all.len(), 1, "expected one message, got {all:?}");
    all.into_iter().next().expect("one")
}

/// Makes replica `raft` (a voter of {1,2,3}) leader by granting it votes.
pub fn make_leader(raft: &mut Raft<MemLog>, grant_from: &[u64]) {
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

pub fn cluster(n: u64, o: ClusterOptions) -> Cluster {
    Cluster::new(&(1..=n).collect::<Vec<_>>(), o)
}

pub fn opts() -> ClusterOptions {
    ClusterOptions::default()
}

pub fn is_vote(m: &Message) -> bool {
    matches!(
        m.msg_type,
        MessageType::RequestVote
            | MessageType::RequestVoteResp
            | MessageType::RequestPreVote
            | MessageType::RequestPreVoteResp
    )
}

/// Elects `id` and lets the cluster settle (its no-op committed everywhere).
pub fn elect(c: &mut Cluster, id: u64) {
    c.raft(id).campaign();
    c.stabilize();
    assert!(c.raft(id).is_leader(), "{id} was not elected");
}

/// Elects `id` by delivering only election messages: its first appends are
/// queued, nothing of its term is committed yet.
pub fn elect_unsettled(c: &mut Cluster, id: u64) {
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

pub fn queued(c: &Cluster, t: MessageType, from: u64, to: u64) -> Vec<Message> {
    c.queue
        .iter()
        .filter(|m| m.msg_type == t && m.from == r(from) && m.to == r(to))
        .cloned()
        .collect()
}

/// Delivers the first queued message matching `pred`.
pub fn deliver_one(c: &mut Cluster, pred: impl Fn(&Message) -> bool) -> Message {
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
pub fn pump(c: &mut Cluster, mut before: impl FnMut(&Cluster, &Message)) {
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
pub fn tick_all(c: &mut Cluster, n: u64) {
    let ids: Vec<u64> = c.nodes.keys().map(|r| r.0).collect();
    for _ in 0..n {
        for &id in &ids {
            c.tick(id);
        }
        c.stabilize();
    }
}

pub fn committed(c: &Cluster, id: u64) -> Index {
    c.node(id).raft.log().committed()
}

pub fn last_index(c: &Cluster, id: u64) -> Index {
    c.node(id).raft.log().last_index()
}

pub fn propose(c: &mut Cluster, id: u64, data: &str) {
    c.raft(id)
        .propose(vec![Cluster::entry(data)])
        .expect("proposal accepted");
}

pub fn cc(t: ConfigChangeType, id: u64) -> ConfigChange {
    ConfigChange {
        change_type: t,
        replica_id: r(id),
        address: format!("node{id}"),
        config_change_id: Index(0),
    }
}

/// Adds replica `id` to the cluster (a new node with an empty log) as `t`,
/// through the leader, and lets the cluster settle.
pub fn add_member(c: &mut Cluster, leader: u64, t: ConfigChangeType, id: u64) {
    if !c.nodes.contains_key(&r(id)) {
        c.add_node(r(id), Membership::default());
    }
    c.raft(leader)
        .propose_config_change(&cc(t, id))
        .expect("config change accepted");
    c.stabilize();
}
