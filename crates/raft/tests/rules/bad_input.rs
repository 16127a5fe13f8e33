//! No input can wedge a shard (DESIGN §4, bad input): a property test that
//! feeds a working 3-replica cluster random, well-formed messages with
//! absurd fields (terms and indexes at or near `u64::MAX`, beyond
//! `TERM_MAX`/`INDEX_MAX`, term jumps beyond `TERM_JUMP_MAX`), in a
//! member's name and from a non-member, mixed with normal traffic. Every
//! such message is dropped and counted, nothing panics, no replica takes an
//! absurd term, and once the bad input stops the shard elects a leader and
//! commits.

use proptest::prelude::*;

use crate::support::*;

/// Cases per property: `default`, or `RAFT_BAD_INPUT_CASES` for soak runs
/// (`RAFT_BAD_INPUT_CASES=100000 cargo test --release -p longship-raft
/// --test rules bad_input`).
fn soak_cases(default: u32) -> u32 {
    std::env::var("RAFT_BAD_INPUT_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A non-member's id.
const STRANGER: u64 = 9;

/// Terms no replica may take.
fn absurd_terms() -> [u64; 4] {
    [
        u64::MAX,
        u64::MAX - 1,
        TERM_MAX.0 + 1,
        TERM_JUMP_MAX + 10_000,
    ]
}

/// Indexes no message may carry.
fn absurd_indexes() -> [u64; 3] {
    [u64::MAX, u64::MAX - 1, INDEX_MAX.0 + 1]
}

/// Message types that travel between replicas.
const TYPES: [MessageType; 15] = [
    MessageType::Propose,
    MessageType::RequestVote,
    MessageType::RequestVoteResp,
    MessageType::RequestPreVote,
    MessageType::RequestPreVoteResp,
    MessageType::Replicate,
    MessageType::ReplicateResp,
    MessageType::Heartbeat,
    MessageType::HeartbeatResp,
    MessageType::InstallSnapshot,
    MessageType::ReadIndex,
    MessageType::ReadIndexResp,
    MessageType::TimeoutNow,
    MessageType::TransferLeader,
    MessageType::Quiesce,
];

/// One step of the run: a bad message, or normal work.
#[derive(Clone, Debug)]
enum Step {
    /// A bad message to `to`; `absurd` picks the field made absurd (none
    /// for a non-member's message of a type only members may send).
    Bad {
        to: u64,
        member: bool,
        kind: usize,
        absurd: Option<(usize, usize)>,
        small: [u64; 6],
        reject: bool,
        entries: usize,
    },
    Tick,
    Deliver,
    Propose(u64),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let bad = (
        1..=3u64,
        any::<bool>(),
        0..TYPES.len(),
        proptest::option::weighted(0.9, (0..8usize, 0..4usize)),
        proptest::array::uniform6(0..40u64),
        any::<bool>(),
        0..3usize,
    )
        .prop_map(
            |(to, member, kind, absurd, small, reject, entries)| Step::Bad {
                to,
                member,
                kind,
                absurd,
                small,
                reject,
                entries,
            },
        );
    prop_oneof![
        4 => bad,
        2 => Just(Step::Tick),
        2 => Just(Step::Deliver),
        1 => (1..=3u64).prop_map(Step::Propose),
    ]
}

/// Builds the bad message of a `Step::Bad`, or `None` if it would be a
/// plausible message that a correct peer could send (those are not bad
/// input: a member's id is trusted).
#[allow(clippy::too_many_arguments)]
fn bad_message(
    to: u64,
    member: bool,
    kind: usize,
    absurd: Option<(usize, usize)>,
    small: [u64; 6],
    reject: bool,
    entries: usize,
) -> Option<Message> {
    let t = TYPES[kind];
    let from = if member { to % 3 + 1 } else { STRANGER };
    let leader_type = matches!(
        t,
        MessageType::Replicate | MessageType::Heartbeat | MessageType::InstallSnapshot
    );
    // Without an absurd field, only a non-member's message of a type that
    // only members may send is bad input (a leader's message, or a vote
    // request with a log ahead of the receiver's, may come from a member
    // the receiver does not know yet).
    let vote = matches!(t, MessageType::RequestVote | MessageType::RequestPreVote);
    if absurd.is_none() && (member || leader_type || vote || t == MessageType::Quiesce) {
        return None;
    }
    let forwarded = matches!(
        t,
        MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader
    );
    let term = if forwarded { 0 } else { 1 + small[0] % 8 };
    let mut m = Message {
        term: Term(term),
        log_term: Term(small[1] % (term + 1)),
        log_index: Index(small[2]),
        commit: Index(small[3]),
        hint: Index(small[4]),
        hint_term: Term(small[5] % 8),
        reject,
        context: small[4],
        ..Message::new(t, TEST_SHARD, r(from), r(to))
    };
    if t == MessageType::InstallSnapshot {
        m.snapshot = Some(SnapshotMeta {
            index: Index(1 + small[2]),
            term: Term(small[1] % (term + 1)),
            membership: voters(&[1, 2, 3]),
            ..SnapshotMeta::default()
        });
    }
    if let Some((field, pick)) = absurd {
        let at = absurd_terms()[pick % 4];
        let ai = absurd_indexes()[pick % 3];
        match field {
            0 => m.term = Term(at),
            1 => m.log_term = Term(at),
            2 => m.hint_term = Term(at),
            3 => m.log_index = Index(ai),
            4 => m.commit = Index(ai),
            5 => m.hint = Index(ai),
            6 => match &mut m.snapshot {
                Some(s) => s.index = Index(ai),
                None => m.log_index = Index(ai),
            },
            _ => match &mut m.snapshot {
                Some(s) => s.term = Term(at),
                None => m.term = Term(at),
            },
        }
    }
    if matches!(t, MessageType::Replicate | MessageType::Propose) {
        let first = m.log_index.0.saturating_add(1);
        m.entries = (0..entries as u64)
            .map(|i| Entry {
                index: Index(if forwarded {
                    0
                } else {
                    first.saturating_add(i)
                }),
                term: if forwarded { Term(0) } else { m.term },
                cmd: Bytes::from_static(b"bad"),
                ..Entry::default()
            })
            .collect();
    }
    Some(m)
}

fn run(steps: Vec<Step>) {
    let mut c = cluster(
        3,
        ClusterOptions {
            pre_vote: true,
            check_quorum: true,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let mut proposals = 0;
    for s in steps {
        match s {
            Step::Bad {
                to,
                member,
                kind,
                absurd,
                small,
                reject,
                entries,
            } => {
                let Some(m) = bad_message(to, member, kind, absurd, small, reject, entries) else {
                    continue;
                };
                let raft = c.raft(to);
                let before = raft.invalid_messages();
                raft.step(m.clone());
                assert_eq!(
                    raft.invalid_messages(),
                    before + 1,
                    "not dropped by {to}: {m:?}"
                );
            }
            Step::Tick => tick_all(&mut c, 1),
            Step::Deliver => {
                c.stabilize();
            }
            Step::Propose(id) => {
                proposals += 1;
                let _ = c
                    .raft(id)
                    .propose(vec![Cluster::entry(&format!("p{proposals}"))]);
            }
        }
        for id in 1..=3 {
            if let Err(e) = c.raft(id).check_invariants() {
                panic!("{e}");
            }
            assert!(
                c.raft(id).term().0 < 1_000,
                "{id} took an absurd term {}",
                c.raft(id).term()
            );
        }
    }
    // The bad input stops: the shard elects a leader and commits.
    c.stabilize();
    for _ in 0..20 * ELECTION {
        tick_all(&mut c, 1);
        c.stabilize();
        let Some(leader) = c.leader() else { continue };
        if c.raft(leader.0)
            .propose(vec![Cluster::entry("after")])
            .is_err()
        {
            continue;
        }
        let index = c.raft(leader.0).log().last_index();
        c.stabilize();
        tick_all(&mut c, 1);
        c.stabilize();
        if (1..=3).all(|id| c.node(id).applied_index >= index) {
            return;
        }
    }
    panic!("no leader committed after the bad input stopped");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: soak_cases(256), ..ProptestConfig::default() })]

    /// DESIGN §4 (bad input changes nothing), Raft §5.1 (terms only grow,
    /// so an absurd term would be for good), Raft §5.3 (indexes).
    #[test]
    fn absurd_messages_never_wedge_the_shard(steps in proptest::collection::vec(step_strategy(), 1..60)) {
        run(steps);
    }
}

/// A forged message with plausible fields: what a confused or malicious
/// peer with a member's id (or a stranger's) could send. Fields are kept
/// within what the checks accept (terms near the cluster's, entries that
/// follow their previous index), so most of these are acted on.
fn plausible_message(to: u64, from: u64, kind: usize, v: [u64; 8], max_term: u64) -> Message {
    let t = TYPES[kind];
    let forwarded = matches!(
        t,
        MessageType::Propose | MessageType::ReadIndex | MessageType::TransferLeader
    );
    let term = if forwarded {
        0
    } else {
        1 + v[0] % (max_term + 2)
    };
    let log_term = v[1] % (term + 1);
    let log_index = v[2] % 20;
    let mut m = Message {
        term: Term(term),
        log_term: Term(log_term),
        log_index: Index(log_index),
        commit: Index(v[3] % 20),
        hint: Index(v[4] % (log_index + 1)),
        hint_term: Term(v[5] % (term + 1)),
        reject: v[6].is_multiple_of(2),
        context: v[7] % 4,
        ..Message::new(t, TEST_SHARD, r(from), r(to))
    };
    match t {
        MessageType::Replicate => {
            let n = v[6] % 4;
            let mut et = log_term.max(1);
            m.entries = (0..n)
                .map(|i| {
                    et = (et + (v[7] >> i) % 2).min(term);
                    ent(log_index + 1 + i, et)
                })
                .collect();
        }
        MessageType::Propose => {
            m.entries = (0..v[6] % 3)
                .map(|i| Entry {
                    entry_type: if (v[7] >> i).is_multiple_of(2) {
                        EntryType::ConfigChange
                    } else {
                        EntryType::Normal
                    },
                    cmd: Bytes::from_static(b"junk"),
                    ..Entry::default()
                })
                .collect();
        }
        MessageType::InstallSnapshot => {
            let members: Vec<u64> = (1..=3).filter(|i| (v[7] >> i).is_multiple_of(2)).collect();
            m.snapshot = Some(SnapshotMeta {
                index: Index(1 + v[2] % 20),
                term: Term(log_term.max(1).min(term)),
                membership: voters(&members),
                ..SnapshotMeta::default()
            });
        }
        MessageType::TransferLeader => m.hint = Index(v[4] % 4),
        _ => {}
    }
    m
}

/// One step of a run of three cores wired by hand (no testkit state
/// machine, whose cross-replica safety checks a forgery may break).
#[derive(Clone, Debug)]
enum CoreStep {
    Tick(u64),
    Deliver(usize),
    Propose(u64),
    Forged {
        to: u64,
        from: u64,
        kind: usize,
        v: [u64; 8],
    },
}

fn core_step() -> impl Strategy<Value = CoreStep> {
    prop_oneof![
        3 => (1..=3u64).prop_map(CoreStep::Tick),
        4 => any::<usize>().prop_map(CoreStep::Deliver),
        1 => (1..=3u64).prop_map(CoreStep::Propose),
        3 => (1..=3u64, prop_oneof![1..=3u64, Just(STRANGER)], 0..TYPES.len(), proptest::array::uniform8(any::<u64>()))
            .prop_map(|(to, from, kind, v)| CoreStep::Forged { to, from, kind, v }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: soak_cases(512), ..ProptestConfig::default() })]

    /// Issue 13 (no packet can kill a shard's step worker): whatever a
    /// member's id or a stranger sends, within the accepted bounds, the
    /// core never panics and keeps its invariants (a forgery in a
    /// member's name may still mislead it: the sender is not
    /// authenticated by the core).
    #[test]
    fn forged_messages_never_panic_the_core(steps in proptest::collection::vec(core_step(), 1..120)) {
        let mut nodes: Vec<Raft<MemLog>> = (1..=3)
            .map(|id| replica(cfg(id), &[1], 1, 1))
            .collect();
        let mut queue: Vec<Message> = Vec::new();
        for s in steps {
            match s {
                CoreStep::Tick(id) => nodes[id as usize - 1].tick(),
                CoreStep::Deliver(i) if !queue.is_empty() => {
                    let m = queue.remove(i % queue.len());
                    nodes[m.to.0 as usize - 1].step(m);
                }
                CoreStep::Deliver(_) => {}
                CoreStep::Propose(id) => {
                    let _ = nodes[id as usize - 1].propose(vec![ent(0, 0)]);
                }
                CoreStep::Forged { to, from, kind, v } => {
                    let max_term = nodes.iter().map(|n| n.term().0).max().unwrap_or(1);
                    let m = plausible_message(to, from, kind, v, max_term);
                    nodes[to as usize - 1].step(m);
                }
            }
            for n in nodes.iter_mut() {
                if n.has_update() {
                    let u = cycle(n);
                    queue.extend(all_messages(&u).into_iter().filter(|m| (1..=3).contains(&m.to.0)));
                }
                if let Err(e) = n.check_invariants() {
                    panic!("{e}");
                }
            }
            if queue.len() > 200 {
                queue.drain(..queue.len() - 200);
            }
        }
    }
}
