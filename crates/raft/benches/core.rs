//! Core throughput: entries committed per second through an in-memory
//! three-replica loop — one leader, two followers, messages handed over
//! directly, persistence into a [`MemLog`] — for batches of 1, 16 and 256
//! proposals of 16 bytes. Measures the protocol core alone (no I/O, no
//! codec, no threads): the ceiling the engine adds its costs to.
//!
//! Run: `cargo bench -p longship-raft --bench core`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use longship_raft::codec::decode_config_change;
use longship_raft::{
    Entry, EntryType, HardState, Index, LogReader, MemLog, Membership, Message, Raft, RaftConfig,
    ReplicaId, ShardId, bootstrap_entries,
};

/// Replicas in the loop.
const REPLICAS: u64 = 3;
/// Payload of every proposal.
const PAYLOAD: [u8; 16] = *b"0123456789abcdef";
/// Applied entries kept in each replica's log before it is compacted.
const COMPACT_EVERY: u64 = 4096;
/// Most update/deliver rounds one batch may take to commit.
const ROUNDS_MAX: usize = 1000;

struct Node {
    raft: Raft<MemLog>,
    hard_state: HardState,
}

/// Three replicas of one shard and the messages between them.
struct Loop {
    nodes: Vec<Node>,
    queue: VecDeque<Message>,
}

impl Loop {
    fn new() -> Loop {
        let membership = Membership::with_voters((1..=REPLICAS).map(|id| (id, format!("n{id}"))));
        let (entries, hard_state) = bootstrap_entries(&membership);
        let nodes = (1..=REPLICAS)
            .map(|id| {
                let mut log = MemLog::new();
                log.append(&entries);
                let cfg = RaftConfig {
                    shard_id: ShardId(1),
                    replica_id: ReplicaId(id),
                    check_quorum: false,
                    pre_vote: false,
                    seed: 7,
                    ..RaftConfig::default()
                };
                let raft = Raft::new(cfg, log, hard_state, Membership::default(), Index(0))
                    .expect("valid config");
                Node { raft, hard_state }
            })
            .collect();
        let mut l = Loop {
            nodes,
            queue: VecDeque::new(),
        };
        l.settle();
        l.nodes[0].raft.campaign();
        l.settle();
        assert!(l.nodes[0].raft.is_leader(), "replica 1 leads");
        l
    }

    /// One update cycle of node `i`, as an engine runs it. Returns whether
    /// there was anything to do.
    fn process(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        if !node.raft.has_update() {
            return false;
        }
        let u = node.raft.get_update();
        self.queue.extend(u.messages.iter().cloned());
        let log = node.raft.log_reader_mut();
        if let Some(s) = &u.snapshot {
            log.apply_snapshot(s.clone());
        }
        log.append(&u.entries);
        if let Some(hs) = u.hard_state {
            node.hard_state = hs;
        }
        self.queue.extend(u.persisted_messages.iter().cloned());
        for e in &u.committed_entries {
            if e.entry_type == EntryType::ConfigChange {
                let cc = decode_config_change(&e.cmd).expect("valid config change");
                let _ = node.raft.apply_config_change(&cc, e.index);
            }
        }
        if let Some(last) = u.committed_entries.last() {
            node.raft.applied_to(last.index);
            let first = node.raft.log().reader().snapshot().index;
            if last.index.0 >= first.0 + 2 * COMPACT_EVERY {
                node.raft
                    .log_reader_mut()
                    .compact(Index(last.index.0 - COMPACT_EVERY));
            }
        }
        node.raft.advance(&u);
        true
    }

    /// One round: every node's update cycle, then every queued message.
    fn round(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.nodes.len() {
            moved |= self.process(i);
        }
        while let Some(m) = self.queue.pop_front() {
            moved = true;
            let to = (m.to.0 - 1) as usize;
            self.nodes[to].raft.step(m);
        }
        moved
    }

    fn settle(&mut self) {
        for _ in 0..ROUNDS_MAX {
            if !self.round() {
                return;
            }
        }
        panic!("loop did not settle");
    }

    /// Proposes `batch` entries on the leader and runs rounds until the
    /// leader has committed them.
    fn commit_batch(&mut self, batch: usize) {
        let entries: Vec<Entry> = (0..batch)
            .map(|_| Entry {
                cmd: Bytes::from_static(&PAYLOAD),
                ..Entry::default()
            })
            .collect();
        let leader = &mut self.nodes[0].raft;
        leader.propose(entries).expect("leader accepts proposals");
        let target = leader.log().last_index();
        for _ in 0..ROUNDS_MAX {
            self.round();
            if self.nodes[0].raft.log().committed() >= target {
                return;
            }
        }
        panic!("batch not committed within {ROUNDS_MAX} rounds");
    }
}

fn bench_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_3_replicas_16B");
    for batch in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut l = Loop::new();
            b.iter(|| l.commit_batch(batch));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10);
    targets = bench_commit
}
criterion_main!(benches);
