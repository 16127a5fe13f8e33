//! Faults stay where they happen: a state machine that panics fails its
//! own replica, and the other shards driven by the same workers go on.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use common::*;
use longship::{Config, ShardId, SmEntry, SmError, Start, StateMachine, StopFlag};

/// A Kv that panics on the command `boom` and on the query `boom`.
#[derive(Default)]
struct Panicky {
    kv: Kv,
}

impl StateMachine for Panicky {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries.iter() {
            assert!(&e.cmd[..] != b"boom", "the state machine met a boom");
        }
        self.kv.update(entries)
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        assert!(query != b"boom", "the lookup met a boom");
        self.kv.lookup(query)
    }
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.save_snapshot(w, stop)
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.recover_from_snapshot(r, stop)
    }
}

/// Shards 1 and 3 of one host: the same step worker and the same apply
/// worker (shard % 2), so a dead worker would stop both.
fn two_shards_on_one_worker(inline_apply_bytes: u64) -> TestCluster {
    let c = TestCluster::new(1);
    for shard in [1, 3] {
        c.nh(1)
            .start_replica(
                Start::New(TestCluster::members(&[1])),
                |_, _| Box::new(Panicky::default()),
                Config {
                    max_inline_apply_bytes: inline_apply_bytes,
                    ..config(shard, 1)
                },
            )
            .unwrap();
        c.wait_leader(shard);
    }
    c
}

fn panicking_update_fails_only_its_replica(inline_apply_bytes: u64) {
    let c = two_shards_on_one_worker(inline_apply_bytes);
    c.propose(1, 1, "set a 1");
    c.propose(1, 3, "set a 1");
    let mut s = c.nh(1).get_noop_session(ShardId(1));
    let boom = c.nh(1).sync_propose(&mut s, b"boom".to_vec(), TIMEOUT);
    assert!(
        matches!(boom, Err(ref e) if !matches!(e, longship::Error::Timeout)),
        "a proposal whose apply panicked must fail at once, not {boom:?}"
    );
    // The failed replica answers with errors from now on, promptly.
    let after = c.nh(1).sync_propose(&mut s, b"set b 2".to_vec(), TIMEOUT);
    assert!(after.is_err(), "a failed replica accepted a proposal");
    // Shard 3, on the same workers, goes on: writes and reads.
    for i in 0..20 {
        c.propose(1, 3, format!("set k{i} {i}"));
    }
    assert_eq!(c.read(1, 3, "get k19"), b"19");
}

#[test]
fn a_panicking_update_in_the_apply_worker_fails_only_its_replica() {
    panicking_update_fails_only_its_replica(0);
}

#[test]
fn a_panicking_update_applied_inline_fails_only_its_replica() {
    panicking_update_fails_only_its_replica(64 << 10);
}

#[test]
fn a_panicking_lookup_is_an_error_and_other_reads_go_on() {
    let c = two_shards_on_one_worker(0);
    c.propose(1, 1, "set a 1");
    let boom = c.nh(1).sync_read(ShardId(1), b"boom", TIMEOUT);
    assert!(
        matches!(boom, Err(longship::Error::StateMachine(ref why)) if why.contains("panicked")),
        "{boom:?}"
    );
    assert_eq!(c.read(1, 1, "get a"), b"1");
    assert_eq!(c.nh(1).metrics().worker_panics.load(Ordering::Relaxed), 0);
}
