//! `StateMachine::hash` and `NodeHost::verify`: replicas' hashes compared
//! at one applied index.

mod common;

use std::time::Duration;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use longship::{Error, NodeHost, ShardId, SmEntry, SmError, Start, StateMachine, StopFlag};

/// A Kv with a hash of its encoded state; `skew` (set on one host) makes
/// that host's hash differ, as a non-deterministic state machine would.
struct HashedKv {
    kv: Kv,
    skew: Arc<AtomicBool>,
}

impl StateMachine for HashedKv {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        self.kv.update(entries)
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        self.kv.lookup(query)
    }
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.save_snapshot(w, stop)
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.recover_from_snapshot(r, stop)
    }
    fn hash(&self) -> Option<u64> {
        let h = self
            .kv
            .encode()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
        Some(h ^ u64::from(self.skew.load(Ordering::SeqCst)))
    }
}

#[test]
fn verify_compares_replica_hashes_at_one_applied_index() {
    let c = TestCluster::new(3);
    let skews: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
    for i in 1..=3u64 {
        let skew = skews[i as usize - 1].clone();
        c.nh(i)
            .start_replica(
                Start::New(TestCluster::members(&[1, 2, 3])),
                move |_, _| {
                    Box::new(HashedKv {
                        kv: Kv::default(),
                        skew,
                    })
                },
                config(1, i),
            )
            .unwrap();
    }
    let leader = c.wait_leader(1);
    for i in 0..10 {
        c.propose(leader, 1, format!("set k{i} v{i}"));
    }
    let hosts: Vec<&NodeHost> = (1..=3).map(|i| c.nh(i)).collect();
    // Generous: every host must apply the same index first (slow under load).
    let index = match NodeHost::verify(&hosts, ShardId(1), Duration::from_secs(30)) {
        Ok(i) => i,
        Err(e) => {
            for h in &hosts {
                eprintln!(
                    "DIAG {:?} {:?}",
                    h.state_hash(ShardId(1)),
                    h.get_node_host_info()
                );
            }
            panic!("verify: {e}");
        }
    };
    assert!(index.0 >= 10, "{index}");
    let (at, hash) = c.nh(1).state_hash(ShardId(1)).unwrap().unwrap();
    assert!(at >= index);
    assert_eq!(
        c.nh(2).state_hash(ShardId(1)).unwrap(),
        Some((at, hash)),
        "quiet shard: same index, same hash"
    );

    // One replica's state differs: reported with every host's hash.
    skews[2].store(true, Ordering::SeqCst);
    let err = NodeHost::verify(&hosts, ShardId(1), TIMEOUT).unwrap_err();
    match err {
        Error::StateDiverged {
            shard_id, hashes, ..
        } => {
            assert_eq!(shard_id, ShardId(1));
            assert_eq!(hashes.len(), 3);
            assert_eq!(hashes[0].1, hashes[1].1);
            assert_ne!(hashes[0].1, hashes[2].1);
            assert_eq!(hashes[2].0, addr(3));
        }
        e => panic!("expected StateDiverged: {e}"),
    }
    assert!(
        !Error::StateDiverged {
            shard_id: ShardId(1),
            index,
            hashes: Vec::new()
        }
        .is_temporary()
    );
}

#[test]
fn a_state_machine_without_a_hash_is_refused() {
    let c = TestCluster::new(1);
    c.start_shard(1, &[1]);
    c.wait_leader(1);
    c.propose(1, 1, "set a 1");
    assert_eq!(c.nh(1).state_hash(ShardId(1)).unwrap(), None);
    let err = NodeHost::verify(&[c.nh(1)], ShardId(1), TIMEOUT).unwrap_err();
    assert!(
        matches!(err, Error::Rejected(ref why) if why.contains("no hash")),
        "{err}"
    );
    let err = c.nh(1).state_hash(ShardId(9)).unwrap_err();
    assert!(matches!(err, Error::ShardNotFound(_)), "{err}");
}

/// Hash reads hold the replica's apply lock; an apply round that finds it
/// taken skips the replica, and must be brought back when the lock is let
/// go, or an idle shard's last entries are never applied (this test then
/// times out with one replica stuck behind).
#[test]
fn hash_reads_during_writes_do_not_stall_applies() {
    let c = TestCluster::new(3);
    for i in 1..=3u64 {
        c.nh(i)
            .start_replica(
                Start::New(TestCluster::members(&[1, 2, 3])),
                |_, _| {
                    Box::new(HashedKv {
                        kv: Kv::default(),
                        skew: Arc::default(),
                    })
                },
                config(1, i),
            )
            .unwrap();
    }
    let leader = c.wait_leader(1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 1..=3u64 {
            let (nh, stop) = (c.nh(i), &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = nh.state_hash(ShardId(1));
                }
            });
        }
        for i in 0..100 {
            c.propose(leader, 1, format!("set k{i} v{i}"));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let hosts: Vec<&NodeHost> = (1..=3).map(|i| c.nh(i)).collect();
    let index = NodeHost::verify(&hosts, ShardId(1), TIMEOUT).unwrap();
    assert!(index.0 >= 100, "{index}");
}
