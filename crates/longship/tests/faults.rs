//! Faults stay where they happen: a state machine that panics fails its
//! own replica, and the other shards driven by the same workers go on.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
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

/// Log storage whose reads of one shard's entries fail once `broken` is
/// set (a disk read error or corruption under that shard's records).
struct FailingReads {
    inner: longship_storage::logdb::MemLogDb,
    broken: std::sync::atomic::AtomicU64,
}

impl FailingReads {
    fn check(&self, shard: ShardId) -> longship_storage::Result<()> {
        if self.broken.load(Ordering::SeqCst) == shard.0 {
            return Err(longship_storage::Error::Corruption {
                file: "wal/0000000000000001.log".into(),
                offset: 4096,
                reason: "injected by the test".into(),
            });
        }
        Ok(())
    }
}

use longship::{Index, ReplicaId, Term};
use longship_raft::{Entry, SnapshotMeta};
use longship_storage::logdb::{LogDb, LogUpdate, ReplicaState};

impl LogDb for FailingReads {
    fn save_raft_state(&self, updates: &[LogUpdate]) -> longship_storage::Result<()> {
        self.inner.save_raft_state(updates)
    }
    fn entries(
        &self,
        shard: ShardId,
        replica: ReplicaId,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> longship_storage::Result<Vec<Entry>> {
        self.check(shard)?;
        self.inner.entries(shard, replica, low, high, max_bytes)
    }
    fn term(
        &self,
        shard: ShardId,
        replica: ReplicaId,
        index: Index,
    ) -> longship_storage::Result<Term> {
        self.check(shard)?;
        self.inner.term(shard, replica, index)
    }
    fn first_index(&self, shard: ShardId, replica: ReplicaId) -> Index {
        self.inner.first_index(shard, replica)
    }
    fn last_index(&self, shard: ShardId, replica: ReplicaId) -> Index {
        self.inner.last_index(shard, replica)
    }
    fn snapshot(&self, shard: ShardId, replica: ReplicaId) -> SnapshotMeta {
        self.inner.snapshot(shard, replica)
    }
    fn read_state(&self, shard: ShardId, replica: ReplicaId) -> Option<ReplicaState> {
        self.inner.read_state(shard, replica)
    }
    fn list_replicas(&self) -> Vec<(ShardId, ReplicaId)> {
        self.inner.list_replicas()
    }
    fn remove_entries_to(
        &self,
        shard: ShardId,
        replica: ReplicaId,
        index: Index,
    ) -> longship_storage::Result<()> {
        self.inner.remove_entries_to(shard, replica, index)
    }
    fn save_snapshot(
        &self,
        shard: ShardId,
        replica: ReplicaId,
        s: &SnapshotMeta,
    ) -> longship_storage::Result<()> {
        self.inner.save_snapshot(shard, replica, s)
    }
    fn remove_node_data(&self, shard: ShardId, replica: ReplicaId) -> longship_storage::Result<()> {
        self.inner.remove_node_data(shard, replica)
    }
    fn import_snapshot(
        &self,
        shard: ShardId,
        replica: ReplicaId,
        s: &SnapshotMeta,
    ) -> longship_storage::Result<()> {
        self.inner.import_snapshot(shard, replica, s)
    }
    fn close(&self) -> longship_storage::Result<()> {
        self.inner.close()
    }
    fn set_recovery_guard(
        &self,
        shard: ShardId,
        replica: ReplicaId,
        guard: longship_raft::RecoveryGuard,
    ) -> longship_storage::Result<()> {
        self.inner.set_recovery_guard(shard, replica, guard)
    }
}

#[test]
fn a_log_read_error_fails_only_the_replica_whose_entries_cannot_be_read() {
    let c = TestCluster::new(2);
    // Host 3: shards 1 and 3 (one step worker, one apply worker) over the
    // failing log storage, each with a follower on host 1 and host 2.
    let failures = Arc::new(Failures::default());
    let log = Arc::new(FailingReads {
        inner: longship_storage::logdb::MemLogDb::new(),
        broken: std::sync::atomic::AtomicU64::new(0),
    });
    let nh3 = longship::NodeHost::builder(longship::NodeHostConfig {
        step_workers: 1,
        apply_workers: 1,
        ..c.host_config(3)
    })
    .transport(Arc::new(c.net.transport(&addr(3))))
    .log_db(log.clone())
    .event_listener(failures.clone())
    .build()
    .unwrap();
    for shard in [1u64, 3] {
        for h in 1..=2 {
            c.start_replica_on(
                h,
                Start::New(TestCluster::members(&[1, 2, 3])),
                config(shard, h),
            );
        }
        nh3.start_replica(
            Start::New(TestCluster::members(&[1, 2, 3])),
            |_, _| Box::new(Kv::default()),
            config(shard, 3),
        )
        .unwrap();
    }
    // Proposals on host 1 are forwarded to wherever the leader is.
    for shard in [1u64, 3] {
        c.propose(1, shard, "set a 1");
    }
    // Reads of shard 1's entries fail from now on; new entries of shard 1
    // must be read back to be applied on host 3.
    log.broken.store(1, Ordering::SeqCst);
    for shard in [1u64, 3] {
        let mut s = c.nh(1).get_noop_session(ShardId(shard));
        // Shard 1 may have lost its leader with host 3's replica: either way.
        let _ = c.nh(1).sync_propose(&mut s, b"set b 2".to_vec(), TIMEOUT);
    }
    wait_until("replica 1/3 failed", TIMEOUT, || {
        nh3.metrics().replica_failures.load(Ordering::Relaxed) >= 1
    });
    // Host 3's replica of shard 3, on the same workers, still applies.
    c.propose(1, 3, "set c 3");
    wait_until("shard 3 applied on host 3", TIMEOUT, || {
        nh3.stale_read(ShardId(3), b"get c")
            .is_ok_and(|v| v == b"3")
    });
    assert_eq!(nh3.metrics().worker_panics.load(Ordering::Relaxed), 0);
    // The listener heard of it, with the reason.
    let seen = failures.0.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(s, r, why)| *s == ShardId(1)
            && *r == ReplicaId(3)
            && why.contains("log storage read failed")),
        "{seen:?}"
    );
    nh3.close();
}

/// Records `replica_failed` events.
#[derive(Default)]
struct Failures(std::sync::Mutex<Vec<(ShardId, ReplicaId, String)>>);

impl longship::EventListener for Failures {
    fn replica_failed(&self, shard: ShardId, replica: ReplicaId, why: &str) {
        self.0
            .lock()
            .unwrap()
            .push((shard, replica, why.to_string()));
    }
}
