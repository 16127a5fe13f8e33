//! Snapshots of on-disk state machines: local snapshots (automatic or
//! requested) hold metadata only, since the state machine's own store holds
//! its state; the full data is saved only for a follower that needs a
//! stream, and for an export.

mod common;

use std::any::Any;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use longship::{
    Config, Index, OnDiskStateMachine, ShardId, SmEntry, SmError, SnapshotOption, Start, StopFlag,
};

const SHARD: u64 = 1;

fn sid() -> ShardId {
    ShardId(SHARD)
}

/// Calls one host's state machine received.
#[derive(Default)]
struct Calls {
    syncs: AtomicU64,
    prepares: AtomicU64,
    saves: AtomicU64,
    recoveries: AtomicU64,
}

/// A Kv whose applied index and state live in a file, rewritten on every
/// update (so `sync` has nothing left to do).
struct DiskKv {
    path: PathBuf,
    state: Mutex<(u64, Kv)>,
    calls: Arc<Calls>,
}

impl DiskKv {
    fn encode(index: u64, kv: &Kv) -> Vec<u8> {
        let mut out = format!("{index}\n").into_bytes();
        out.extend_from_slice(&kv.encode());
        out
    }

    fn decode(b: &[u8]) -> (u64, Kv) {
        let split = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        let index = std::str::from_utf8(&b[..split])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (index, Kv::decode(b.get(split + 1..).unwrap_or_default()))
    }

    fn persist(&self, index: u64, kv: &Kv) -> Result<(), SmError> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, DiskKv::encode(index, kv))?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

impl OnDiskStateMachine for DiskKv {
    fn open(&self, _: &StopFlag) -> Result<Index, SmError> {
        let mut st = self.state.lock().unwrap();
        if let Ok(b) = std::fs::read(&self.path) {
            *st = DiskKv::decode(&b);
        }
        Ok(Index(st.0))
    }
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let mut st = self.state.lock().unwrap();
        for e in entries.iter_mut() {
            e.result.value = st.1.apply_cmd(&e.cmd);
            st.0 = e.index.0;
        }
        self.persist(st.0, &st.1)
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.state.lock().unwrap().1.query(query))
    }
    fn sync(&self) -> Result<(), SmError> {
        self.calls.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        self.calls.prepares.fetch_add(1, Ordering::SeqCst);
        let st = self.state.lock().unwrap();
        Ok(Box::new(DiskKv::encode(st.0, &st.1)))
    }
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        self.calls.saves.fetch_add(1, Ordering::SeqCst);
        let bytes = ctx
            .downcast::<Vec<u8>>()
            .map_err(|_| SmError::new("wrong context"))?;
        Ok(w.write_all(&bytes)?)
    }
    fn recover_from_snapshot(&self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        self.calls.recoveries.fetch_add(1, Ordering::SeqCst);
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        let (index, kv) = DiskKv::decode(&b);
        self.persist(index, &kv)?;
        *self.state.lock().unwrap() = (index, kv);
        Ok(())
    }
}

struct Hosts {
    c: TestCluster,
    calls: Vec<Arc<Calls>>,
}

impl Hosts {
    fn new(n: u64) -> Hosts {
        Hosts {
            c: TestCluster::new(n),
            calls: (0..=n).map(|_| Arc::default()).collect(),
        }
    }

    fn cfg(h: u64) -> Config {
        Config {
            snapshot_entries: 10,
            compaction_overhead: 2,
            ..config(SHARD, h)
        }
    }

    fn start(&self, h: u64, start: Start) {
        let sm = DiskKv {
            path: self.c.dir.path().join(format!("sm-{h}")),
            state: Mutex::new((0, Kv::default())),
            calls: self.calls[h as usize].clone(),
        };
        self.c
            .nh(h)
            .start_on_disk_replica(start, |_, _| Box::new(sm), Hosts::cfg(h))
            .unwrap();
    }

    fn calls(&self, h: u64) -> &Calls {
        &self.calls[h as usize]
    }
}

/// A local snapshot compacting the whole log (an automatic one may just
/// have taken the applied index: then nothing is new, which is as good).
fn snapshot_and_compact(c: &TestCluster, h: u64) {
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    match retry_outcome(|| {
        c.nh(h)
            .request_snapshot(sid(), opt.clone(), TIMEOUT)?
            .wait()
    }) {
        Ok(_) => {}
        Err(longship::Error::Rejected(why)) if why.contains("nothing new") => {}
        Err(e) => panic!("snapshot on host {h}: {e}"),
    }
}

fn snapshot_count(c: &TestCluster, h: u64) -> u64 {
    c.nh(h).metrics().snapshots_saved.load(Ordering::Relaxed)
}

/// The data files of the local snapshots on host `h` (not those saved for
/// streams).
fn local_data_files(c: &TestCluster, h: u64) -> Vec<PathBuf> {
    let store = c
        .host_dir(h)
        .join("snapshots")
        .join(format!("snapshot-{SHARD}-{h}"));
    let mut out = Vec::new();
    for e in std::fs::read_dir(&store).unwrap() {
        let p = e.unwrap().path();
        let data = p.join("snapshot.data");
        if p.file_name().unwrap().to_string_lossy().len() == "snapshot-".len() + 16
            && data.is_file()
        {
            out.push(data);
        }
    }
    out
}

/// Version 2 header with the metadata-only flag, and nothing but the
/// session table after it.
fn is_metadata_only(file: &Path) -> bool {
    let d = std::fs::read(file).unwrap();
    let sessions = u64::from_le_bytes(d[16..24].try_into().unwrap()) as usize;
    &d[..4] == b"LSRS" && d[4..8] == 2u32.to_le_bytes() && d[9] == 1 && d.len() == 24 + sessions
}

#[test]
fn local_snapshots_hold_metadata_only_and_streams_get_the_full_data() {
    let mut h = Hosts::new(3);
    for i in 1..=3 {
        h.start(i, Start::New(TestCluster::members(&[1, 2, 3])));
    }
    let leader = h.c.wait_leader(SHARD);
    let lagging = if leader == 3 { 2 } else { 3 };
    for i in 0..30 {
        h.c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    // Automatic snapshots and a requested one: no data saved anywhere.
    snapshot_and_compact(&h.c, leader);
    for i in 1..=3 {
        wait_until("automatic snapshots", Duration::from_secs(10), || {
            snapshot_count(&h.c, i) >= 2
        });
        assert_eq!(
            h.calls(i).saves.load(Ordering::SeqCst),
            0,
            "host {i} saved data"
        );
        assert_eq!(
            h.calls(i).prepares.load(Ordering::SeqCst),
            0,
            "host {i} prepared"
        );
        assert!(
            h.calls(i).syncs.load(Ordering::SeqCst) >= 2,
            "host {i} synced first"
        );
        let files = local_data_files(&h.c, i);
        assert!(!files.is_empty());
        for f in files {
            assert!(is_metadata_only(&f), "{} holds data", f.display());
        }
    }

    // A follower that falls behind the leader's compacted log gets a
    // stream of the full data, saved for it.
    h.c.stop_host(lagging);
    for i in 30..60 {
        h.c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    snapshot_and_compact(&h.c, leader);
    assert_eq!(h.calls(leader).saves.load(Ordering::SeqCst), 0);
    h.c.start_host(lagging);
    h.start(lagging, Start::Restart);
    assert_eq!(h.c.read(lagging, SHARD, "get k59"), b"v59");
    assert_eq!(h.c.read(lagging, SHARD, "get k0"), b"v0");
    assert_eq!(
        h.calls(lagging).recoveries.load(Ordering::SeqCst),
        1,
        "the follower recovered from the stream"
    );
    assert!(
        h.c.nh(lagging)
            .metrics()
            .snapshots_received
            .load(Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        h.calls(leader).saves.load(Ordering::SeqCst),
        1,
        "one full save, for the stream"
    );
    assert_eq!(
        h.c.nh(leader)
            .metrics()
            .snapshots_saved_for_streams
            .load(Ordering::Relaxed),
        1
    );

    // A restart keeps the store's state: nothing recovered, nothing lost.
    let other = (1..=3).find(|&i| i != leader && i != lagging).unwrap();
    let recovered = h.calls(other).recoveries.load(Ordering::SeqCst);
    h.c.stop_host(other);
    h.c.start_host(other);
    h.start(other, Start::Restart);
    assert_eq!(h.c.read(other, SHARD, "get k59"), b"v59");
    assert_eq!(h.calls(other).recoveries.load(Ordering::SeqCst), recovered);

    // An export holds the full data.
    let export = h.c.dir.path().join("backup");
    let saves = h.calls(leader).saves.load(Ordering::SeqCst);
    let done = retry(|| {
        h.c.nh(leader)
            .request_snapshot(
                sid(),
                SnapshotOption {
                    export_path: Some(export.clone()),
                    compaction_overhead: None,
                },
                TIMEOUT,
            )?
            .wait()
    });
    assert_eq!(h.calls(leader).saves.load(Ordering::SeqCst), saves + 1);
    let data = std::fs::read(done.export_dir.unwrap().join("snapshot.data")).unwrap();
    assert!(
        data.windows(7).any(|w| w == b"k59\tv59"),
        "the export holds the state"
    );
}
