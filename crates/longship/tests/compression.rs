//! Compression of entries and snapshots through NodeHosts
//! (`Config::entry_compression`, `Config::snapshot_compression`): each
//! kind through proposals, restarts, snapshots, a stream to a lagging
//! follower, export and import; replicas configured differently reading
//! each other; damaged compressed bytes refused with a clear error.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use longship::events::EventListener;
use longship::{Compression, Config, Index, NodeHost, ReplicaId, ShardId, SnapshotOption, Start};
use longship_raft::{Entry, EntryType};
use longship_storage::logdb::{LogDb, LogUpdate, Wal, WalOptions};
use longship_storage::snapshot::SnapshotStore;
use longship_storage::vfs::OsFs;

const SHARD: u64 = 1;

fn sid() -> ShardId {
    ShardId(SHARD)
}

/// A value of about 5 KiB that compresses well.
fn value(i: usize) -> String {
    format!("{i}-{}", "compressible text ".repeat(300))
}

fn cfg_with(i: u64, entries: Compression, snapshots: Compression) -> Config {
    Config {
        entry_compression: entries,
        snapshot_compression: snapshots,
        ..config(SHARD, i)
    }
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

fn count(c: &TestCluster, i: u64) -> u64 {
    String::from_utf8(c.read(i, SHARD, "count"))
        .unwrap()
        .parse()
        .unwrap()
}

/// A local snapshot on host `h` that compacts the whole log behind it.
fn snapshot_and_compact(c: &TestCluster, h: u64) -> Index {
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    retry(|| {
        c.nh(h)
            .request_snapshot(sid(), opt.clone(), TIMEOUT)?
            .wait()
    })
    .index
}

/// Moves leadership to host `to` and waits until it leads.
fn lead_from(c: &TestCluster, to: u64) {
    wait_until(&format!("host {to} leads"), Duration::from_secs(20), || {
        if c.leader_seen_by(to, SHARD) == to {
            return true;
        }
        let _ = c.nh(to).request_leader_transfer(sid(), ReplicaId(to));
        std::thread::sleep(Duration::from_millis(50));
        c.leader_seen_by(to, SHARD) == to
    });
}

/// Every `snapshot.data` under `dir`.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n == "snapshot.data") {
                out.push(p);
            }
        }
    }
    out
}

/// The compression a snapshot data file's header records.
fn recorded_compression(file: &Path) -> Compression {
    let data = std::fs::read(file).unwrap();
    assert_eq!(&data[..4], b"LSRS");
    match u32::from_le_bytes(data[4..8].try_into().unwrap()) {
        1 => Compression::None,
        2 => Compression::from_code(data[8]).expect("a known code"),
        v => panic!("snapshot data version {v}"),
    }
}

/// The entries of the shard's replica `replica` in the WAL of host `h`
/// (the host must be stopped).
fn wal_entries(c: &TestCluster, h: u64, replica: u64) -> Vec<Entry> {
    let wal = Wal::open(
        Arc::new(OsFs::new()),
        &c.host_config(h).wal_dir(),
        WalOptions::default(),
    )
    .unwrap();
    let (s, r) = (sid(), ReplicaId(replica));
    let first = wal.first_index(s, r);
    let last = wal.last_index(s, r);
    let mut out = Vec::new();
    let mut next = first;
    while next <= last {
        let got = wal.entries(s, r, next, last.next(), 64 << 20).unwrap();
        next = got.last().unwrap().index.next();
        out.extend(got);
    }
    wal.close().unwrap();
    out
}

fn round_trip(kind: Compression) {
    let cfg = move |i| Config {
        snapshot_entries: 40,
        compaction_overhead: 5,
        ..cfg_with(i, kind, kind)
    };
    let mut c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], cfg);
    lead_from(&c, 1);
    c.propose(1, SHARD, "set first 1");
    assert_eq!(c.read(3, SHARD, "get first"), b"1");
    let lagging_last = log_range(&c, 3).1;
    c.stop_host(3);

    for i in 0..100 {
        c.propose(1, SHARD, format!("set k{i} {}", value(i)));
    }
    // Hosts 1 and 2 snapshot (compressed) and compact past host 3's log.
    for h in [1, 2] {
        wait_until("snapshot and compaction", Duration::from_secs(20), || {
            log_range(&c, h).0 > lagging_last + 1
        });
    }
    c.start_host(3);
    c.start_replica_on(3, Start::Restart, cfg(3));
    assert_eq!(c.read(3, SHARD, "get k99"), value(99).into_bytes());
    assert_eq!(c.read(3, SHARD, "get k0"), value(0).into_bytes());
    assert_eq!(count(&c, 3), 101);
    assert!(
        c.nh(3).metrics().snapshots_received.load(Ordering::Relaxed) >= 1,
        "host 3 caught up without a snapshot stream"
    );

    // Restart everything: each replica from its own snapshot and log tail.
    for h in 1..=3 {
        c.stop_host(h);
    }
    // What is on disk is compressed: the entries (proposed through host 1)
    // and every snapshot's state machine part.
    let mut encoded = 0;
    for h in 1..=3 {
        for e in wal_entries(&c, h, h) {
            match e.entry_type {
                EntryType::Encoded => {
                    encoded += 1;
                    assert!(e.cmd.len() < 1000, "a ~5 KiB value compressed");
                }
                EntryType::Normal => {
                    assert!(
                        e.cmd.len() < 100,
                        "host {h}: entry {} uncompressed",
                        e.index
                    )
                }
                _ => {}
            }
        }
        let files = data_files(&c.host_dir(h));
        assert!(!files.is_empty(), "host {h} has snapshots");
        for f in files {
            assert_eq!(recorded_compression(&f), kind, "{}", f.display());
        }
    }
    assert!(encoded > 0, "the logs hold compressed entries");
    for h in 1..=3 {
        c.start_host(h);
        c.start_replica_on(h, Start::Restart, cfg(h));
    }
    for h in 1..=3 {
        assert_eq!(c.read(h, SHARD, "get k42"), value(42).into_bytes());
        assert_eq!(count(&c, h), 101, "host {h}");
    }

    // Export, then import on every host and restart with compression off:
    // the snapshot's own record decides how it is read.
    let leader = c.wait_leader(SHARD);
    c.propose(leader, SHARD, "set last 1");
    assert_eq!(c.read(1, SHARD, "get last"), b"1");
    let export = c.dir.path().join("backup");
    let opt = SnapshotOption {
        export_path: Some(export),
        compaction_overhead: None,
    };
    let done = retry(|| {
        c.nh(1)
            .request_snapshot(sid(), opt.clone(), TIMEOUT)?
            .wait()
    });
    let dir = done.export_dir.unwrap();
    assert_eq!(recorded_compression(&dir.join("snapshot.data")), kind);
    for h in 1..=3 {
        c.stop_host(h);
    }
    for h in 1..=3 {
        longship::tools::import_snapshot(
            &c.host_config(h),
            &dir,
            &TestCluster::members(&[1, 2, 3]),
            ReplicaId(h),
        )
        .unwrap();
    }
    for h in 1..=3 {
        c.start_host(h);
        c.start_replica_on(h, Start::Restart, config(SHARD, h));
    }
    for h in 1..=3 {
        assert_eq!(c.read(h, SHARD, "get k7"), value(7).into_bytes());
        assert_eq!(c.read(h, SHARD, "get last"), b"1");
        assert_eq!(count(&c, h), 102, "host {h}");
    }
}

#[test]
fn lz4_round_trips_through_nodehosts() {
    round_trip(Compression::Lz4);
}

#[test]
fn snappy_round_trips_through_nodehosts() {
    round_trip(Compression::Snappy);
}

/// Host 1 compresses with LZ4, host 2 with Snappy, host 3 not at all.
fn mixed(i: u64) -> Compression {
    [Compression::Lz4, Compression::Snappy, Compression::None][i as usize - 1]
}

#[test]
fn replicas_with_different_settings_read_each_other() {
    let cfg = |i| cfg_with(i, mixed(i), mixed(i));
    let mut c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], cfg);
    c.wait_leader(SHARD);
    // Proposed through each host: compressed each host's way, applied
    // everywhere.
    for i in 0..30 {
        let through = i as u64 % 3 + 1;
        c.propose(through, SHARD, format!("set k{i} {}", value(i)));
    }
    for h in 1..=3 {
        assert_eq!(c.read(h, SHARD, "get k28"), value(28).into_bytes());
        assert_eq!(count(&c, h), 30);
    }
    // A snapshot of each host's kind streams to a host of another kind:
    // the leader (lz4, then snappy) compacts past a stopped follower.
    for (leader, lagging) in [(1, 2), (1, 3), (2, 1)] {
        lead_from(&c, leader);
        c.stop_host(lagging);
        for i in 0..5 {
            c.propose(leader, SHARD, format!("set {leader}-{lagging}-{i} x"));
        }
        snapshot_and_compact(&c, leader);
        c.start_host(lagging);
        c.start_replica_on(lagging, Start::Restart, cfg(lagging));
        let key = format!("get {leader}-{lagging}-4");
        assert_eq!(c.read(lagging, SHARD, &key), b"x");
        assert!(
            c.nh(lagging)
                .metrics()
                .snapshots_received
                .load(Ordering::Relaxed)
                >= 1,
            "host {lagging} got the snapshot of host {leader}"
        );
        assert_eq!(c.read(lagging, SHARD, "get k1"), value(1).into_bytes());
    }
    // The streamed snapshots kept the sender's compression.
    let kinds: Vec<Compression> = data_files(&c.host_dir(3))
        .iter()
        .map(|f| recorded_compression(f))
        .collect();
    assert!(kinds.contains(&Compression::Lz4), "{kinds:?}");
    // Every host snapshots its own way and restarts from it.
    for h in 1..=3 {
        assert_eq!(count(&c, h), 45);
        let opt = SnapshotOption {
            compaction_overhead: Some(0),
            ..SnapshotOption::default()
        };
        // A host whose newest snapshot is the one it received has nothing
        // new to save.
        match retry_outcome(|| {
            c.nh(h)
                .request_snapshot(sid(), opt.clone(), TIMEOUT)?
                .wait()
        }) {
            Ok(_) => {}
            Err(longship::Error::Rejected(why)) if why.contains("nothing new") => {}
            Err(e) => panic!("host {h}: {e}"),
        }
    }
    for h in 1..=3 {
        c.stop_host(h);
    }
    for h in 1..=3 {
        c.start_host(h);
        c.start_replica_on(h, Start::Restart, cfg(h));
    }
    for h in 1..=3 {
        assert_eq!(count(&c, h), 45, "host {h}");
        assert_eq!(c.read(h, SHARD, "get k29"), value(29).into_bytes());
    }
}

/// Records why replicas failed.
#[derive(Default)]
struct Failures(Mutex<Vec<String>>);

impl EventListener for Failures {
    fn replica_failed(&self, _: ShardId, _: ReplicaId, why: &str) {
        self.0.lock().unwrap().push(why.to_string());
    }
}

// A committed entry whose compressed payload is damaged (only a faulty or
// hostile member can forward one) is skipped by every replica alike: the
// state machine never sees garbage, and one bad proposal does not fail
// every replica of the shard.
#[test]
fn a_damaged_compressed_entry_is_skipped_and_the_replica_goes_on() {
    let mut c = TestCluster::new(1);
    c.start_shard_with(&[1], |i| cfg_with(i, Compression::Lz4, Compression::None));
    for i in 0..3 {
        c.propose(1, SHARD, format!("set k{i} {}", value(i)));
    }
    c.stop_host(1);
    // LZ4 named, 1000 bytes claimed, bytes that are no LZ4 block.
    let wal = Wal::open(
        Arc::new(OsFs::new()),
        &c.host_config(1).wal_dir(),
        WalOptions::default(),
    )
    .unwrap();
    let state = wal.read_state(sid(), ReplicaId(1)).unwrap();
    let bad_index = state.last_index.next();
    let mut payload = vec![Compression::Lz4.code(), 0xe8, 0x07];
    payload.extend_from_slice(&[0xff; 20]);
    wal.save_raft_state(&[LogUpdate {
        shard_id: sid(),
        replica_id: ReplicaId(1),
        entries: vec![Entry {
            term: state.hard_state.term,
            index: bad_index,
            entry_type: EntryType::Encoded,
            cmd: Bytes::from(payload),
            ..Entry::default()
        }],
        ..LogUpdate::default()
    }])
    .unwrap();
    wal.close().unwrap();

    let failures = Arc::new(Failures::default());
    let nh = NodeHost::builder(c.host_config(1))
        .transport(Arc::new(c.net.transport(&addr(1))))
        .event_listener(failures.clone())
        .build()
        .unwrap();
    c.hosts.insert(1, nh);
    c.start_replica_on(1, Start::Restart, config(SHARD, 1));
    // Past the bad entry: the next proposal is applied after it.
    c.propose(1, SHARD, "set after 1");
    let applied = c
        .nh(1)
        .get_node_host_info()
        .shards
        .iter()
        .find(|s| s.shard_id == sid())
        .map(|s| s.applied)
        .unwrap();
    assert!(
        applied > bad_index,
        "applied {applied}, bad entry at {bad_index}"
    );
    assert!(
        failures.0.lock().unwrap().is_empty(),
        "{:?}",
        failures.0.lock().unwrap()
    );
    // The state machine saw the three commands and the one after, not the bad one.
    assert_eq!(count(&c, 1), 4);
    assert_eq!(c.read(1, SHARD, "get after"), b"1");
}

// A snapshot whose compressed part was damaged before its checksums were
// computed (so the file checksums pass) is refused with a clear error.
#[test]
fn a_damaged_compressed_snapshot_is_refused_with_a_clear_error() {
    for kind in [Compression::Lz4, Compression::Snappy] {
        let mut c = TestCluster::new(1);
        c.start_shard_with(&[1], |i| cfg_with(i, Compression::None, kind));
        for i in 0..20 {
            c.propose(1, SHARD, format!("set k{i} {}", value(i)));
        }
        snapshot_and_compact(&c, 1);
        c.stop_host(1);

        // Re-seal the snapshot with one byte of its compressed part changed.
        let store = SnapshotStore::open(
            Arc::new(OsFs::new()),
            &c.host_dir(1).join("snapshots"),
            sid(),
            ReplicaId(1),
        )
        .unwrap();
        let index = store.list().unwrap()[0];
        let (info, mut reader) = store.open_snapshot(index).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
        drop(reader);
        assert_eq!(
            recorded_compression(&store.snapshot_dir(index).join("snapshot.data")),
            kind
        );
        let at = data.len() - 200;
        data[at] ^= 0x55;
        store.remove(index).unwrap();
        let mut sink = store.create(info.meta.clone(), info.data_version).unwrap();
        std::io::Write::write_all(&mut sink, &data).unwrap();
        sink.commit().unwrap();
        drop(store);

        c.start_host(1);
        let err = c
            .nh(1)
            .start_replica(
                Start::Restart,
                |_, _| Box::new(Kv::default()),
                config(SHARD, 1),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{} data does not decompress", kind.name())),
            "{kind:?}: {msg}"
        );
    }
}

#[test]
fn the_default_is_no_compression() {
    let cfg = Config::new(sid(), ReplicaId(1));
    assert_eq!(cfg.entry_compression, Compression::None);
    assert_eq!(cfg.snapshot_compression, Compression::None);
}
