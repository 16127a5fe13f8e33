//! Snapshots through the public API on several NodeHosts: automatic
//! snapshots with log compaction, requested and exported snapshots, catch-up
//! of a lagging follower through a streamed snapshot, restart from a
//! snapshot plus the log tail, and client sessions kept in snapshots.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use longship::{Config, Error, Index, NodeHost, ShardId, SnapshotOption, Start};

const SHARD: u64 = 1;

fn sid() -> ShardId {
    ShardId(SHARD)
}

/// Applied index and newest snapshot index of the shard on host `i`.
fn shard_state(c: &TestCluster, i: u64) -> (u64, u64) {
    let info = c.nh(i).get_node_host_info();
    let s = info
        .shards
        .iter()
        .find(|s| s.shard_id == sid())
        .expect("shard runs on the host");
    (s.applied.0, s.snapshot_index.0)
}

/// (first, last) index of the shard's log on host `i`.
fn log_range(c: &TestCluster, i: u64) -> (u64, u64) {
    let info = c.nh(i).get_node_host_info();
    let log = info
        .log_info
        .iter()
        .find(|l| l.shard_id == sid())
        .expect("log info of the shard");
    (log.first_index.0, log.last_index.0)
}

/// The number of commands the Kv state machine applied, read linearizably.
fn count(c: &TestCluster, i: u64) -> u64 {
    String::from_utf8(c.read(i, SHARD, "count"))
        .unwrap()
        .parse()
        .unwrap()
}

fn request_snapshot(nh: &NodeHost, opt: SnapshotOption) -> Result<Index, Error> {
    retry_outcome(|| nh.request_snapshot(sid(), opt.clone(), TIMEOUT)?.wait()).map(|s| s.index)
}

/// Restarts every host and its replica of the shard (from its own data).
fn restart_all(c: &mut TestCluster, n: u64, cfg: impl Fn(u64) -> Config) {
    for h in 1..=n {
        c.stop_host(h);
    }
    for h in 1..=n {
        c.start_host(h);
        c.start_replica_on(h, Start::Restart, cfg(h));
    }
}

#[test]
fn automatic_snapshots_compact_the_log() {
    let cfg = |i| Config {
        snapshot_entries: 10,
        compaction_overhead: 5,
        ..config(SHARD, i)
    };
    let c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], cfg);
    let leader = c.wait_leader(SHARD);
    for i in 0..50 {
        c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    assert_eq!(c.read(leader, SHARD, "get k49"), b"v49");
    for h in 1..=3 {
        // Every replica snapshots on its own every 10 applied entries and
        // keeps 5 entries behind its newest snapshot.
        wait_until(
            &format!("host {h}: recent snapshot and compacted log"),
            Duration::from_secs(10),
            || {
                let (applied, snap) = shard_state(&c, h);
                let (first, last) = log_range(&c, h);
                applied >= 50 && snap + 10 > applied && first == snap - 5 + 1 && last >= applied
            },
        );
        assert!(c.nh(h).metrics().snapshots_saved.load(Ordering::Relaxed) >= 2);
        assert_eq!(c.read(h, SHARD, "get k0"), b"v0");
        assert_eq!(count(&c, h), 50);
    }
}

#[test]
fn exported_snapshot_is_a_backup_that_changes_nothing() {
    let c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    for i in 0..10 {
        c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    let (applied, snap) = shard_state(&c, leader);
    assert_eq!(snap, 0, "no automatic snapshot with snapshot_entries = 0");
    let log_before = log_range(&c, leader);
    // The export path is created if missing, parents included.
    let export = c.dir.path().join("backups").join("shard-1");
    let opt = SnapshotOption {
        export_path: Some(export.clone()),
        compaction_overhead: None,
    };
    let done = retry(|| {
        c.nh(leader)
            .request_snapshot(sid(), opt.clone(), TIMEOUT)?
            .wait()
    });
    let index = done.index;
    assert!(
        index.0 >= applied,
        "snapshot {index} below applied {applied}"
    );
    // A backup: no local snapshot, the log as it was.
    assert_eq!(shard_state(&c, leader).1, 0, "no local snapshot");
    assert_eq!(log_range(&c, leader).0, log_before.0, "log not compacted");
    let m = c.nh(leader).metrics();
    assert_eq!(m.snapshots_saved.load(Ordering::Relaxed), 0);
    assert_eq!(m.snapshots_exported.load(Ordering::Relaxed), 1);

    // The request names the exported directory.
    let dir = export.join(format!("snapshot-{:016x}", index.0));
    assert_eq!(done.export_dir.as_deref(), Some(dir.as_path()));
    assert!(dir.is_dir(), "exported snapshot dir {}", dir.display());
    let data = std::fs::read(dir.join("snapshot.data")).unwrap();
    let meta = std::fs::read(dir.join("snapshot.meta")).unwrap();
    assert!(!meta.is_empty());
    let needle = b"k9\tv9\n";
    assert!(
        data.windows(needle.len()).any(|w| w == needle),
        "exported data holds the state machine's state"
    );

    // Nothing applied since (an idle shard): an export into another
    // directory is taken all the same, at the same index.
    let other = c.dir.path().join("backups").join("again");
    let again = retry(|| {
        let opt = SnapshotOption {
            export_path: Some(other.clone()),
            compaction_overhead: None,
        };
        c.nh(leader).request_snapshot(sid(), opt, TIMEOUT)?.wait()
    });
    assert_eq!(again.index, index);
    assert_eq!(
        std::fs::read(again.export_dir.unwrap().join("snapshot.data")).unwrap(),
        data
    );
    // The same index into the same directory: refused, the first export
    // stays as it was.
    let same = request_snapshot(c.nh(leader), opt.clone());
    assert!(matches!(same, Err(Error::Snapshot(_))), "{same:?}");
    assert_eq!(std::fs::read(dir.join("snapshot.data")).unwrap(), data);
    // A compaction override with an export is refused before anything runs.
    let bad = c.nh(leader).request_snapshot(
        sid(),
        SnapshotOption {
            export_path: Some(export.clone()),
            compaction_overhead: Some(0),
        },
        TIMEOUT,
    );
    assert!(matches!(bad, Err(Error::InvalidConfig { .. })));

    // After a new entry, the next export is a second directory beside it.
    c.propose(leader, SHARD, "set k10 v10");
    let next = retry(|| {
        c.nh(leader)
            .request_snapshot(sid(), opt.clone(), TIMEOUT)?
            .wait()
    });
    assert!(next.index > index);
    let next_dir = next.export_dir.expect("exported");
    assert_eq!(next_dir.parent(), Some(export.as_path()));
    assert!(next_dir.is_dir() && dir.is_dir());
    // Still no local snapshot, still the whole log, anywhere.
    assert_eq!(log_range(&c, leader).0, log_before.0);
    for h in 1..=3 {
        assert_eq!(shard_state(&c, h).1, 0);
    }
}

#[test]
fn a_requested_compaction_overhead_applies_to_its_own_snapshot_only() {
    let cfg = |i| Config {
        compaction_overhead: 5,
        ..config(SHARD, i)
    };
    let c = TestCluster::new(1);
    c.start_shard_with(&[1], cfg);
    c.wait_leader(SHARD);
    for i in 0..20 {
        c.propose(1, SHARD, format!("set k{i} v{i}"));
    }
    let zero = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    let first = request_snapshot(c.nh(1), zero.clone()).unwrap();
    assert_eq!(log_range(&c, 1).0, first.0 + 1, "its own overhead: 0");
    // Refused (nothing new): the override it carried is not left behind.
    let refused = request_snapshot(c.nh(1), zero);
    assert!(matches!(refused, Err(Error::Rejected(_))), "{refused:?}");
    for i in 0..20 {
        c.propose(1, SHARD, format!("set j{i} v{i}"));
    }
    let second = request_snapshot(c.nh(1), SnapshotOption::default()).unwrap();
    assert!(second > first);
    assert_eq!(
        log_range(&c, 1).0,
        second.0 - 5 + 1,
        "a plain request keeps the replica's overhead"
    );
}

/// The leader of the shard, moved to host 1 if host 3 led (host 3 is the
/// one the tests stop and bring back lagging).
fn leader_off_host_3(c: &TestCluster) -> u64 {
    let leader = c.wait_leader(SHARD);
    if leader != 3 {
        return leader;
    }
    c.nh(3).request_leader_transfer(sid(), 1.into()).unwrap();
    wait_until("leadership leaves host 3", Duration::from_secs(10), || {
        c.leader_seen_by(1, SHARD) == 1
    });
    1
}

fn snapshot_bytes_sent(c: &TestCluster, i: u64) -> u64 {
    c.nh(i)
        .metrics()
        .snapshot_bytes_sent
        .load(Ordering::Relaxed)
}

/// A value of several KiB so the state outgrows one 1 MiB snapshot chunk.
fn big_value(i: usize) -> String {
    format!("{i}-{}", "x".repeat(6 << 10))
}

#[test]
fn lagging_follower_catches_up_through_a_streamed_snapshot() {
    const N: usize = 300;
    let cfg = |i| Config {
        snapshot_entries: 64,
        compaction_overhead: 8,
        ..config(SHARD, i)
    };
    let mut c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], cfg);
    let leader = leader_off_host_3(&c);
    c.propose(leader, SHARD, "set first 1");
    assert_eq!(c.read(3, SHARD, "get first"), b"1");
    let lagging_last = log_range(&c, 3).1;
    c.stop_host(3);

    // A session host 3 can only learn about from the snapshot; its first
    // proposal is applied but its answer "lost" (the client will retry).
    let s = retry(|| c.nh(leader).sync_get_session(sid(), TIMEOUT));
    let first = retry(|| {
        c.nh(leader)
            .propose(&s, b"set s 1".to_vec(), TIMEOUT)?
            .wait()
    });
    for i in 0..N {
        c.propose(leader, SHARD, format!("set k{i} {}", big_value(i)));
    }
    // Hosts 1 and 2 compacted past everything host 3 holds, and their
    // newest snapshots hold most of the data (well over one 1 MiB chunk).
    for h in [1, 2] {
        wait_until("snapshot and compaction", Duration::from_secs(10), || {
            let (applied, snap) = shard_state(&c, h);
            log_range(&c, h).0 > lagging_last + 1 && snap + 64 > applied
        });
    }
    let sent_before = [1, 2].map(|h| snapshot_bytes_sent(&c, h));

    c.start_host(3);
    c.start_replica_on(3, Start::Restart, cfg(3));
    assert_eq!(c.read(3, SHARD, "get k299"), big_value(299).into_bytes());
    assert_eq!(c.read(3, SHARD, "get k0"), big_value(0).into_bytes());
    assert_eq!(c.read(3, SHARD, "get first"), b"1");
    assert_eq!(count(&c, 3), N as u64 + 2);
    // The retry through host 3 is de-duplicated by the session table that
    // came with the snapshot.
    let retried = retry(|| c.nh(3).propose(&s, b"set s 1".to_vec(), TIMEOUT)?.wait());
    assert_eq!(retried, first);
    assert_eq!(count(&c, 3), N as u64 + 2);

    let received = c.nh(3).metrics().snapshots_received.load(Ordering::Relaxed);
    assert!(received >= 1, "host 3 caught up without a snapshot");
    // Whoever leads now streamed over 1 MiB: more than one chunk.
    let sent = [1, 2].map(|h| snapshot_bytes_sent(&c, h) - sent_before[h as usize - 1]);
    assert!(
        sent.iter().any(|&b| b > 1 << 20),
        "{sent:?} snapshot bytes sent"
    );
    assert!(shard_state(&c, 3).1 > lagging_last);
    // And it keeps replicating from the log afterwards.
    c.propose(leader, SHARD, "set after snap");
    assert_eq!(c.read(3, SHARD, "get after"), b"snap");
}

#[test]
fn restart_recovers_from_snapshot_and_log_tail() {
    let mut c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    for i in 0..20 {
        c.propose(leader, SHARD, format!("set a{i} {i}"));
    }
    let mut snaps = Vec::new();
    for h in 1..=3 {
        // Every replica applied the 20 entries before it is asked to snapshot.
        assert_eq!(c.read(h, SHARD, "get a19"), b"19");
        let opt = SnapshotOption {
            compaction_overhead: Some(0),
            ..SnapshotOption::default()
        };
        snaps.push(request_snapshot(c.nh(h), opt).unwrap().0);
    }
    for i in 20..30 {
        c.propose(leader, SHARD, format!("set a{i} {i}"));
    }
    for h in 1..=3 {
        assert_eq!(c.read(h, SHARD, "get a29"), b"29");
    }

    restart_all(&mut c, 3, |i| config(SHARD, i));
    for h in 1..=3 {
        let snap = snaps[h as usize - 1];
        // The early entries are gone from the log: they come from the snapshot.
        assert_eq!(log_range(&c, h).0, snap + 1, "host {h}");
        assert_eq!(
            shard_state(&c, h).1,
            snap,
            "host {h} recovered its snapshot"
        );
        assert_eq!(c.read(h, SHARD, "get a0"), b"0");
        assert_eq!(c.read(h, SHARD, "get a29"), b"29");
        // Each command applied exactly once: snapshot and tail do not overlap.
        assert_eq!(count(&c, h), 30, "host {h}");
    }
}

#[test]
fn sessions_survive_snapshot_and_restart() {
    let mut c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    let mut s = retry(|| c.nh(leader).sync_get_session(sid(), TIMEOUT));
    // Applied, but the client never saw the answer: it will retry.
    let first = retry(|| {
        c.nh(leader)
            .propose(&s, b"set s 1".to_vec(), TIMEOUT)?
            .wait()
    });
    assert_eq!(first.value, 1);
    for i in 0..5 {
        c.propose(leader, SHARD, format!("set n{i} {i}"));
    }
    for h in 1..=3 {
        assert_eq!(count(&c, h), 6);
        let opt = SnapshotOption {
            compaction_overhead: Some(0),
            ..SnapshotOption::default()
        };
        let index = request_snapshot(c.nh(h), opt).unwrap();
        assert_eq!(log_range(&c, h).0, index.0 + 1);
    }

    restart_all(&mut c, 3, |i| config(SHARD, i));
    for h in 1..=3 {
        assert_eq!(count(&c, h), 6, "host {h} after restart");
    }
    // The retry (same series id) is answered with the first result and not
    // applied again: the session table came back with the snapshot.
    let retried = retry(|| c.nh(1).propose(&s, b"set s 1".to_vec(), TIMEOUT)?.wait());
    assert_eq!(retried, first);
    for h in 1..=3 {
        assert_eq!(count(&c, h), 6, "host {h} after the retry");
    }
    // The session goes on with the next series id.
    s.proposal_completed();
    let next = retry(|| c.nh(2).sync_propose(&mut s, b"set s 2".to_vec(), TIMEOUT));
    assert_eq!(next.value, 7);
    assert_eq!(c.read(3, SHARD, "get s"), b"2");
}

/// Every file named `name` under `dir`.
fn find_files(dir: &std::path::Path, name: &str, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            find_files(&p, name, out);
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
}

// A snapshot whose data file rotted on disk was handed to the state
// machine, and its checksum checked only once the state machine had read
// it all: the state machine's state was already replaced (for an on-disk
// state machine, durably) by the damaged bytes. It is refused before the
// state machine sees a byte now.
#[test]
fn a_damaged_snapshot_is_refused_before_the_state_machine_reads_it() {
    let mut c = TestCluster::new(1);
    c.start_shard(SHARD, &[1]);
    for i in 0..20 {
        c.propose(1, SHARD, format!("set a{i} {i}"));
    }
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    request_snapshot(c.nh(1), opt).unwrap();
    c.stop_host(1);
    let mut files = Vec::new();
    find_files(
        &c.host_dir(1),
        longship_storage::snapshot::DATA_FILE_NAME,
        &mut files,
    );
    assert_eq!(files.len(), 1, "{files:?}");
    let mut data = std::fs::read(&files[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    std::fs::write(&files[0], data).unwrap();

    c.start_host(1);
    let recovered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = recovered.clone();
    let res = c.nh(1).start_replica(
        Start::Restart,
        move |_, _| {
            let flag = flag.clone();
            Box::new(HookedKv {
                kv: Kv::default(),
                hook: Arc::new(move |h| {
                    if h == Hook::Recover {
                        flag.store(true, Ordering::SeqCst);
                    }
                }),
            })
        },
        config(SHARD, 1),
    );
    assert!(
        res.is_err(),
        "a damaged snapshot was recovered (state machine read it: {})",
        recovered.load(Ordering::SeqCst)
    );
    assert!(
        !recovered.load(Ordering::SeqCst),
        "the state machine read the damaged snapshot"
    );
    // The log was compacted behind it: nothing older can replace it.
    let msg = res.unwrap_err().to_string();
    assert!(msg.contains("must be rebuilt"), "{msg}");
}

/// Records the damaged snapshots a restart reports.
#[derive(Default)]
struct DamageRecorder(parking_lot::Mutex<Vec<(Index, String)>>);

impl longship::EventListener for DamageRecorder {
    fn snapshot_damaged(&self, info: longship::events::SnapshotEvent, why: &str) {
        self.0.lock().push((info.index, why.to_string()));
    }
}

// A damaged newest snapshot whose entries the log still holds: the replica
// starts from the older snapshot and re-applies the log, reaching the same
// state, and says which snapshot it skipped.
#[test]
fn a_damaged_newest_snapshot_falls_back_to_an_older_one_and_the_log() {
    let mut c = TestCluster::new(1);
    c.start_shard(SHARD, &[1]);
    // Compaction keeps the whole log behind both snapshots.
    let keep_log = SnapshotOption {
        compaction_overhead: Some(1_000),
        ..SnapshotOption::default()
    };
    for i in 0..20 {
        c.propose(1, SHARD, format!("set a{i} {i}"));
    }
    let older = request_snapshot(c.nh(1), keep_log.clone()).unwrap();
    for i in 20..30 {
        c.propose(1, SHARD, format!("set a{i} {i}"));
    }
    let newer = request_snapshot(c.nh(1), keep_log).unwrap();
    assert!(newer > older);
    c.stop_host(1);
    let mut files = Vec::new();
    find_files(
        &c.host_dir(1),
        longship_storage::snapshot::DATA_FILE_NAME,
        &mut files,
    );
    let damaged = files
        .iter()
        .find(|f| {
            f.to_string_lossy().ends_with(&format!(
                "snapshot-{:016x}/{}",
                newer.0,
                longship_storage::snapshot::DATA_FILE_NAME
            ))
        })
        .unwrap_or_else(|| panic!("no data file of snapshot {newer} in {files:?}"));
    let mut data = std::fs::read(damaged).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x40;
    std::fs::write(damaged, data).unwrap();

    let rec = Arc::new(DamageRecorder::default());
    let nh = NodeHost::builder(c.host_config(1))
        .transport(Arc::new(c.net.transport(&addr(1))))
        .event_listener(rec.clone())
        .build()
        .unwrap();
    c.hosts.insert(1, nh);
    c.start_replica_on(1, Start::Restart, config(SHARD, 1));
    // Started from the older snapshot, then the log: every command applied
    // exactly once.
    assert_eq!(shard_state(&c, 1).1, older.0);
    assert_eq!(count(&c, 1), 30);
    assert_eq!(c.read(1, SHARD, "get a0"), b"0");
    assert_eq!(c.read(1, SHARD, "get a29"), b"29");
    let seen = rec.0.lock().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, newer);
    // The next snapshot replaces the damaged one.
    c.propose(1, SHARD, "set b 1");
    let next = request_snapshot(c.nh(1), SnapshotOption::default()).unwrap();
    assert!(next > newer);
}

// A stream announcing more than the receiver's max_snapshot_bytes is
// refused before a byte of it is written; the follower stays behind.
#[test]
fn a_snapshot_over_max_snapshot_bytes_is_refused_by_the_receiver() {
    let cfg = |i| Config {
        snapshot_entries: 16,
        compaction_overhead: 2,
        ..config(SHARD, i)
    };
    let mut c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], cfg);
    let leader = leader_off_host_3(&c);
    c.propose(leader, SHARD, "set first 1");
    // Host 3 holds everything so far (else an append still on its way
    // when it is measured would arrive later and count as catching up).
    let leader_last = log_range(&c, leader).1;
    wait_until("host 3 holds the log", TIMEOUT, || {
        log_range(&c, 3).1 >= leader_last
    });
    let lagging_last = log_range(&c, 3).1;
    c.stop_host(3);
    for i in 0..100 {
        c.propose(leader, SHARD, format!("set k{i} {}", big_value(i)));
    }
    for h in [1, 2] {
        wait_until("compaction", Duration::from_secs(10), || {
            log_range(&c, h).0 > lagging_last + 1
        });
    }
    // Host 3 comes back accepting snapshots of 1 KiB at most.
    let nh3 = longship::NodeHost::builder(longship::NodeHostConfig {
        max_snapshot_bytes: 1024,
        ..c.host_config(3)
    })
    .transport(std::sync::Arc::new(c.net.transport(&addr(3))))
    .build()
    .unwrap();
    c.hosts.insert(3, nh3);
    c.start_replica_on(3, Start::Restart, cfg(3));
    wait_until("the stream refused", Duration::from_secs(10), || {
        c.nh(3)
            .metrics()
            .snapshot_chunks_refused
            .load(Ordering::Relaxed)
            >= 1
    });
    assert_eq!(
        c.nh(3).metrics().snapshots_received.load(Ordering::Relaxed),
        0
    );
    assert!(
        shard_state(&c, 3).0 <= lagging_last,
        "host 3 caught up anyway"
    );
}

/// A Kv whose snapshot saves abort while `abort` is set.
struct AbortingKv {
    kv: Kv,
    abort: Arc<std::sync::atomic::AtomicBool>,
}

impl longship::StateMachine for AbortingKv {
    fn update(&mut self, entries: &mut [longship::SmEntry]) -> Result<(), longship::SmError> {
        self.kv.update(entries)
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, longship::SmError> {
        self.kv.lookup(query)
    }
    fn save_snapshot(
        &self,
        w: &mut dyn std::io::Write,
        stop: &longship::StopFlag,
    ) -> Result<(), longship::SmError> {
        if self.abort.load(Ordering::SeqCst) {
            return Err(longship::SmError::snapshot_aborted());
        }
        self.kv.save_snapshot(w, stop)
    }
    fn recover_from_snapshot(
        &mut self,
        r: &mut dyn std::io::Read,
        stop: &longship::StopFlag,
    ) -> Result<(), longship::SmError> {
        self.kv.recover_from_snapshot(r, stop)
    }
}

#[test]
fn a_snapshot_the_state_machine_aborts_is_reported_as_aborted() {
    let c = TestCluster::new(1);
    let abort = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let a = abort.clone();
    c.nh(1)
        .start_replica(
            Start::New(TestCluster::members(&[1])),
            move |_, _| {
                Box::new(AbortingKv {
                    kv: Kv::default(),
                    abort: a.clone(),
                })
            },
            config(SHARD, 1),
        )
        .unwrap();
    c.wait_leader(SHARD);
    for i in 0..5 {
        c.propose(1, SHARD, format!("set k{i} v{i}"));
    }
    let log_before = log_range(&c, 1);
    let local = request_snapshot(c.nh(1), SnapshotOption::default());
    assert!(matches!(local, Err(Error::Aborted)), "{local:?}");
    assert!(!Error::Aborted.is_temporary());
    let export = c.dir.path().join("export");
    let exported = request_snapshot(
        c.nh(1),
        SnapshotOption {
            export_path: Some(export.clone()),
            compaction_overhead: None,
        },
    );
    assert!(matches!(exported, Err(Error::Aborted)), "{exported:?}");
    // Nothing saved, nothing compacted, no export left behind.
    assert_eq!(shard_state(&c, 1).1, 0);
    assert_eq!(log_range(&c, 1), log_before);
    assert_eq!(std::fs::read_dir(&export).unwrap().count(), 0);
    // The replica goes on; once the state machine allows it, it snapshots.
    abort.store(false, Ordering::SeqCst);
    c.propose(1, SHARD, "set after abort");
    let index = request_snapshot(c.nh(1), SnapshotOption::default()).unwrap();
    assert_eq!(shard_state(&c, 1).1, index.0);
}
