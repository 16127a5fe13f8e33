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
    // only members may send is bad input.
    if absurd.is_none() && (member || leader_type || t == MessageType::Quiesce) {
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
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// DESIGN §4 (bad input changes nothing), Raft §5.1 (terms only grow,
    /// so an absurd term would be for good), Raft §5.3 (indexes).
    #[test]
    fn absurd_messages_never_wedge_the_shard(steps in proptest::collection::vec(step_strategy(), 1..60)) {
        run(steps);
    }
}
