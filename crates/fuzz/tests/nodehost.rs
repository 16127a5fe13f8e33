//! Whole NodeHosts fed hostile but well-framed messages: from a non-member
//! (any fields) and from a member with absurd fields (terms and indexes no
//! correct peer sends). Afterwards the shard must still elect a leader,
//! commit, and agree everywhere; no replica may have failed and no worker
//! may have panicked.
//!
//! `FUZZ_INPUTS=1000000 cargo test --release -p longship-fuzz --test nodehost`
//! for the long run (an input is one batch of one to three messages).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use longship::storage::MemFs;
use longship::{
    Config, NodeHost, NodeHostConfig, ReplicaId, ShardId, SmEntry, SmError, Start, StateMachine,
    StopFlag,
};
use longship_fuzz::{DEFAULT_INPUTS, inputs};
use longship_raft::{
    Entry, EntryType, Index, MESSAGE_BATCH_VERSION, Message, MessageBatch, MessageType, Rng,
    SnapshotMeta, Term,
};
use longship_transport::{MemNetwork, Transport as _};

/// Counts entries; a lookup returns the count.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            self.0 += 1;
            e.result.value = self.0;
        }
        Ok(())
    }
    fn lookup(&self, _: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn save_snapshot(&self, w: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        Ok(w.write_all(&self.0.to_le_bytes())?)
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        self.0 = u64::from_le_bytes(b);
        Ok(())
    }
}

fn addr(i: u64) -> String {
    format!("fuzz-host-{i}:1")
}

const ABSURD: [u64; 6] = [
    u64::MAX,
    u64::MAX - 1,
    1 << 63,
    (1 << 63) - 1,
    1 << 40,
    1 << 33,
];

fn pick(rng: &mut Rng, near: u64) -> u64 {
    match rng.below(4) {
        0 => ABSURD[rng.below(ABSURD.len() as u64) as usize],
        1 => rng.next_u64(),
        _ => near.saturating_add(rng.below(8)).saturating_sub(4),
    }
}

/// A hostile message to replica `to` of shard 1 (sometimes another shard).
fn hostile(rng: &mut Rng, to: u64, term_now: u64) -> Message {
    let msg_type = MessageType::from_u8(rng.below(17) as u8).expect("a message type");
    let member = rng.chance(0.5);
    let from = if member {
        1 + rng.below(3)
    } else {
        [0, 9, 1000, u64::MAX][rng.below(4) as usize]
    };
    // A member's message is absurd somewhere (a member that sends plausible
    // lies is a Byzantine fault, which Raft does not claim to survive).
    let term = if member {
        ABSURD[rng.below(ABSURD.len() as u64) as usize]
    } else {
        pick(rng, term_now)
    };
    let mut m = Message {
        term: Term(term),
        log_term: Term(pick(rng, term_now)),
        log_index: Index(pick(rng, 20)),
        commit: Index(pick(rng, 20)),
        reject: rng.chance(0.5),
        hint: Index(pick(rng, 20)),
        hint_term: Term(pick(rng, term_now)),
        context: rng.next_u64(),
        ..Message::new(
            msg_type,
            ShardId(if rng.chance(0.9) { 1 } else { 2 }),
            ReplicaId(to),
            ReplicaId(from),
        )
    };
    if rng.chance(0.3) {
        let n = rng.below(4);
        let start = pick(rng, 20);
        m.entries = (0..n)
            .map(|k| Entry {
                term: Term(pick(rng, term_now)),
                index: Index(start.saturating_add(k)),
                entry_type: [EntryType::Normal, EntryType::ConfigChange, EntryType::NoOp]
                    [rng.below(3) as usize],
                key: rng.next_u64(),
                cmd: vec![rng.next_u64() as u8; rng.below(32) as usize].into(),
                ..Entry::default()
            })
            .collect();
    }
    if rng.chance(0.1) {
        m.snapshot = Some(SnapshotMeta {
            index: Index(pick(rng, 20)),
            term: Term(pick(rng, term_now)),
            witness: rng.chance(0.5),
            ..SnapshotMeta::default()
        });
    }
    m
}

fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn nodehosts_survive_hostile_messages() {
    let net = MemNetwork::new();
    let members: BTreeMap<ReplicaId, String> = (1..=3).map(|i| (ReplicaId(i), addr(i))).collect();
    let hosts: Vec<NodeHost> = (1..=3)
        .map(|i| {
            let nh = NodeHost::builder(NodeHostConfig {
                node_host_dir: format!("/nh{i}").into(),
                rtt_ms: 2,
                raft_address: addr(i),
                seed: Some(i),
                ..NodeHostConfig::default()
            })
            .transport(Arc::new(net.transport(&addr(i))))
            .file_system(Arc::new(MemFs::new()))
            .mem_log_db()
            .build()
            .unwrap();
            nh.start_replica(
                Start::New(members.clone()),
                |_, _| Box::new(Counter::default()),
                Config {
                    election_rtt: 10,
                    heartbeat_rtt: 1,
                    ..Config::new(ShardId(1), ReplicaId(i))
                },
            )
            .unwrap();
            nh
        })
        .collect();
    let propose = |deadline: Duration| {
        let end = Instant::now() + deadline;
        loop {
            let h = &hosts[0];
            let mut s = h.get_noop_session(ShardId(1));
            match h.sync_propose(&mut s, b"x".to_vec(), Duration::from_secs(2)) {
                Ok(r) => return r.value,
                Err(e) => assert!(Instant::now() < end, "the shard no longer commits: {e}"),
            }
        }
    };
    propose(Duration::from_secs(20));
    let side = net.transport("fuzz-side:1");
    let count = inputs(DEFAULT_INPUTS);
    let mut rng = Rng::new(99);
    let started = Instant::now();
    for n in 0..count {
        let to = 1 + rng.below(3);
        let term_now = hosts[0]
            .raft_status(ShardId(1))
            .map_or(1, |s| s.hard_state.term.0);
        let messages = (0..1 + rng.below(3))
            .map(|_| hostile(&mut rng, to, term_now))
            .collect();
        let _ = side.send(
            &addr(to),
            MessageBatch {
                deployment_id: NodeHostConfig::default().deployment_id,
                source_address: "fuzz-side:1".into(),
                bin_ver: MESSAGE_BATCH_VERSION,
                messages,
            },
        );
        // Now and then, real traffic in between.
        if n % 500 == 0 {
            propose(Duration::from_secs(20));
        }
    }
    eprintln!(
        "fuzz target nodehost: {count} hostile batches in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The shard still works and every replica converges.
    let last = propose(Duration::from_secs(20));
    for h in &hosts {
        wait(
            "every replica applied the last write",
            Duration::from_secs(20),
            || {
                h.stale_read(ShardId(1), b"")
                    .is_ok_and(|v| u64::from_le_bytes(v.try_into().unwrap()) >= last)
            },
        );
        let m = h.metrics();
        assert_eq!(m.replica_failures.load(Ordering::Relaxed), 0);
        assert_eq!(m.worker_panics.load(Ordering::Relaxed), 0);
    }
    for h in hosts {
        h.close();
    }
}
