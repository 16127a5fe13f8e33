//! Files attached to snapshots (`SnapshotFiles`, dragonboat's
//! `ISnapshotFileCollection`), for all three state machine kinds: stored
//! with the snapshot, streamed to a follower, handed back on restart,
//! exported and imported; a damaged attached file is caught by its
//! checksum before the state machine sees it.

mod common;

use std::any::Any;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use longship::{
    ConcurrentStateMachine, Index, OnDiskStateMachine, ReplicaId, ShardId, SmEntry, SmError,
    SnapshotFile, SnapshotFiles, SnapshotOption, Start, StateMachine, StopFlag,
};

const SHARD: u64 = 1;

fn sid() -> ShardId {
    ShardId(SHARD)
}

/// A file handed back on recovery: (id, metadata, content).
type Received = (u64, Vec<u8>, Vec<u8>);

/// What the state machines of one host saw.
#[derive(Default)]
struct Probe {
    /// Per recovery: the files handed back.
    recoveries: Mutex<Vec<Vec<Received>>>,
    saves: AtomicU64,
}

/// A map whose snapshot keeps the map in an attached file (id 1) and a
/// second, unrelated file (id 7); the snapshot stream holds only a count.
/// So a replica recovered without the files loses its state.
struct FileMap {
    dir: PathBuf,
    map: Mutex<BTreeMap<String, String>>,
    probe: Arc<Probe>,
}

impl FileMap {
    fn new(dir: PathBuf, probe: Arc<Probe>) -> FileMap {
        std::fs::create_dir_all(&dir).unwrap();
        FileMap {
            dir,
            map: Mutex::new(BTreeMap::new()),
            probe,
        }
    }

    fn apply(&self, entries: &mut [SmEntry]) {
        let mut map = self.map.lock().unwrap();
        for e in entries {
            let s = String::from_utf8_lossy(&e.cmd).into_owned();
            if let Some((k, v)) = s.strip_prefix("set ").and_then(|r| r.split_once(' ')) {
                map.insert(k.to_string(), v.to_string());
            }
            e.result.value = map.len() as u64;
        }
    }

    fn query(&self, q: &[u8]) -> Vec<u8> {
        let map = self.map.lock().unwrap();
        let q = String::from_utf8_lossy(q);
        match q.strip_prefix("get ") {
            Some(k) => map.get(k).cloned().unwrap_or_default().into_bytes(),
            None => map.len().to_string().into_bytes(),
        }
    }

    fn encode(map: &BTreeMap<String, String>) -> Vec<u8> {
        map.iter()
            .map(|(k, v)| format!("{k}\t{v}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn save(
        &self,
        map: &BTreeMap<String, String>,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
    ) -> Result<(), SmError> {
        let n = self.probe.saves.fetch_add(1, Ordering::SeqCst);
        w.write_all(format!("FILEMAP {}\n", map.len()).as_bytes())?;
        let map_file = self.dir.join(format!("save-{n}.map"));
        std::fs::write(&map_file, FileMap::encode(map))?;
        files.add_file(1, &map_file, b"the map")?;
        let extra = self.dir.join(format!("save-{n}.extra"));
        std::fs::write(&extra, format!("extra file of save {n}"))?;
        files.add_file(7, &extra, b"extra")?;
        Ok(())
    }

    fn recover(&self, r: &mut dyn Read, files: &[SnapshotFile]) -> Result<(), SmError> {
        let mut head = String::new();
        r.read_to_string(&mut head)?;
        let n: usize = head
            .strip_prefix("FILEMAP ")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| SmError::new(format!("bad stream {head:?}")))?;
        let mut seen = Vec::new();
        for f in files {
            seen.push((f.file_id, f.metadata.clone(), std::fs::read(&f.path)?));
        }
        let map_file = files
            .iter()
            .find(|f| f.file_id == 1)
            .ok_or_else(|| SmError::new("snapshot without its map file"))?;
        let bytes = std::fs::read(&map_file.path)?;
        let map: BTreeMap<String, String> = String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if map.len() != n {
            return Err(SmError::new("map file and stream disagree"));
        }
        *self.map.lock().unwrap() = map;
        self.probe.recoveries.lock().unwrap().push(seen);
        Ok(())
    }
}

struct Regular(FileMap);

impl StateMachine for Regular {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        self.0.apply(entries);
        Ok(())
    }
    fn lookup(&self, q: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.0.query(q))
    }
    fn save_snapshot(&self, _: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        Err(SmError::new("longship calls save_snapshot_with_files"))
    }
    fn recover_from_snapshot(&mut self, _: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        Err(SmError::new(
            "longship calls recover_from_snapshot_with_files",
        ))
    }
    fn save_snapshot_with_files(
        &self,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        let map = self.0.map.lock().unwrap().clone();
        self.0.save(&map, w, files)
    }
    fn recover_from_snapshot_with_files(
        &mut self,
        r: &mut dyn Read,
        files: &[SnapshotFile],
        _: &StopFlag,
    ) -> Result<(), SmError> {
        self.0.recover(r, files)
    }
}

struct Concurrent(FileMap);

impl ConcurrentStateMachine for Concurrent {
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        self.0.apply(entries);
        Ok(())
    }
    fn lookup(&self, q: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.0.query(q))
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        Ok(Box::new(self.0.map.lock().unwrap().clone()))
    }
    fn save_snapshot(
        &self,
        _: Box<dyn Any + Send>,
        _: &mut dyn Write,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        Err(SmError::new("longship calls save_snapshot_with_files"))
    }
    fn recover_from_snapshot(&self, _: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        Err(SmError::new(
            "longship calls recover_from_snapshot_with_files",
        ))
    }
    fn save_snapshot_with_files(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        let map = ctx
            .downcast::<BTreeMap<String, String>>()
            .map_err(|_| SmError::new("wrong context"))?;
        self.0.save(&map, w, files)
    }
    fn recover_from_snapshot_with_files(
        &self,
        r: &mut dyn Read,
        files: &[SnapshotFile],
        _: &StopFlag,
    ) -> Result<(), SmError> {
        self.0.recover(r, files)
    }
}

/// On disk only in name: `open` reports nothing applied, so a restart
/// recovers from the snapshot (and its files) and applies the log tail.
struct OnDisk(FileMap);

impl OnDiskStateMachine for OnDisk {
    fn open(&self, _: &StopFlag) -> Result<Index, SmError> {
        Ok(Index(0))
    }
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        self.0.apply(entries);
        Ok(())
    }
    fn lookup(&self, q: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.0.query(q))
    }
    fn sync(&self) -> Result<(), SmError> {
        Ok(())
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        Ok(Box::new(self.0.map.lock().unwrap().clone()))
    }
    fn save_snapshot(
        &self,
        _: Box<dyn Any + Send>,
        _: &mut dyn Write,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        Err(SmError::new("longship calls save_snapshot_with_files"))
    }
    fn recover_from_snapshot(&self, _: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        Err(SmError::new(
            "longship calls recover_from_snapshot_with_files",
        ))
    }
    fn save_snapshot_with_files(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        let map = ctx
            .downcast::<BTreeMap<String, String>>()
            .map_err(|_| SmError::new("wrong context"))?;
        self.0.save(&map, w, files)
    }
    fn recover_from_snapshot_with_files(
        &self,
        r: &mut dyn Read,
        files: &[SnapshotFile],
        _: &StopFlag,
    ) -> Result<(), SmError> {
        self.0.recover(r, files)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Regular,
    Concurrent,
    OnDisk,
}

/// A cluster whose replicas run a [`FileMap`] of one kind.
struct Files {
    c: TestCluster,
    kind: Kind,
    probes: BTreeMap<u64, Arc<Probe>>,
}

impl Files {
    fn new(kind: Kind, hosts: u64) -> Files {
        Files {
            c: TestCluster::new(hosts),
            kind,
            probes: (1..=hosts).map(|h| (h, Arc::default())).collect(),
        }
    }

    fn sm_dir(&self, h: u64) -> PathBuf {
        self.c.dir.path().join(format!("sm-files-{h}"))
    }

    fn start(&self, h: u64, start: Start) -> longship::Result<()> {
        let sm = FileMap::new(self.sm_dir(h), self.probes[&h].clone());
        let nh = self.c.nh(h);
        let cfg = config(SHARD, h);
        match self.kind {
            Kind::Regular => nh.start_replica(start, |_, _| Box::new(Regular(sm)), cfg),
            Kind::Concurrent => {
                nh.start_concurrent_replica(start, |_, _| Box::new(Concurrent(sm)), cfg)
            }
            Kind::OnDisk => nh.start_on_disk_replica(start, |_, _| Box::new(OnDisk(sm)), cfg),
        }
    }

    fn restart(&mut self, h: u64) {
        self.c.stop_host(h);
        self.c.start_host(h);
        self.start(h, Start::Restart).unwrap();
    }

    fn snapshot(&self, h: u64) -> Index {
        let opt = SnapshotOption {
            compaction_overhead: Some(0),
            ..SnapshotOption::default()
        };
        retry(|| {
            self.c
                .nh(h)
                .request_snapshot(sid(), opt.clone(), TIMEOUT)?
                .wait()
        })
        .index
    }

    /// The files the last recovery on host `h` was handed.
    fn last_recovery(&self, h: u64) -> Vec<Received> {
        self.probes[&h]
            .recoveries
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("host {h} never recovered from a snapshot"))
    }
}

/// The files of a recovery hold the map with `n` keys and the extra file.
fn check_files(files: &[Received], n: usize) {
    let ids: Vec<u64> = files.iter().map(|f| f.0).collect();
    assert_eq!(ids, vec![1, 7], "file ids in the order added");
    assert_eq!(files[0].1, b"the map");
    assert_eq!(
        String::from_utf8_lossy(&files[0].2).lines().count(),
        n,
        "the map file"
    );
    assert_eq!(files[1].1, b"extra");
    assert!(files[1].2.starts_with(b"extra file of save "));
}

fn attached_files_travel_with_snapshots(kind: Kind) {
    let mut f = Files::new(kind, 3);
    for h in 1..=3 {
        f.start(h, Start::New(TestCluster::members(&[1, 2, 3])))
            .unwrap();
    }
    let leader = f.c.wait_leader(SHARD);
    let lagging = if leader == 3 { 2 } else { 3 };
    f.c.propose(leader, SHARD, "set first 1");
    assert_eq!(f.c.read(lagging, SHARD, "get first"), b"1");
    f.c.stop_host(lagging);
    for i in 0..20 {
        f.c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    f.snapshot(leader);
    // The follower can only catch up by a stream of the leader's snapshot:
    // its state comes from the attached files.
    f.c.start_host(lagging);
    f.start(lagging, Start::Restart).unwrap();
    assert_eq!(f.c.read(lagging, SHARD, "get k19"), b"v19");
    assert_eq!(f.c.read(lagging, SHARD, "get first"), b"1");
    check_files(&f.last_recovery(lagging), 21);
    let received =
        f.c.nh(lagging)
            .metrics()
            .snapshots_received
            .load(Ordering::Relaxed);
    assert!(received >= 1, "caught up without a stream");

    for i in 20..25 {
        f.c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    let other = (1..=3).find(|&h| h != leader && h != lagging).unwrap();
    assert_eq!(f.c.read(other, SHARD, "get k24"), b"v24");
    let index = f.snapshot(other);
    let local =
        f.c.host_dir(other)
            .join("snapshots")
            .join(format!("snapshot-{SHARD}-{other}"))
            .join(format!("snapshot-{:016x}", index.0));
    if kind == Kind::OnDisk {
        // An on-disk state machine's local snapshot holds metadata only:
        // no save, so no files (its own store holds its state).
        assert!(local.join("snapshot.meta").is_file());
        assert!(!local.join("longship-files").exists());
    } else {
        // A restarted replica gets its own snapshot's files back.
        assert!(local.join("longship-files").is_file());
        let before = f.probes[&other].recoveries.lock().unwrap().len();
        f.restart(other);
        assert_eq!(f.c.read(other, SHARD, "get k24"), b"v24");
        assert_eq!(
            f.probes[&other].recoveries.lock().unwrap().len(),
            before + 1
        );
        check_files(&f.last_recovery(other), 26);
    }

    // Exported with the snapshot, imported with it.
    let export = f.c.dir.path().join("backup");
    let opt = SnapshotOption {
        export_path: Some(export),
        compaction_overhead: None,
    };
    let leader = f.c.wait_leader(SHARD);
    assert_eq!(f.c.read(leader, SHARD, "get k24"), b"v24");
    let done = retry(|| {
        f.c.nh(leader)
            .request_snapshot(sid(), opt.clone(), TIMEOUT)?
            .wait()
    });
    let dir = done.export_dir.unwrap();
    assert!(dir.join("longship-files").is_file());
    assert!(dir.join("sm-file-0000000000000001").is_file());
    for h in 1..=3 {
        f.c.stop_host(h);
    }
    for h in 1..=3 {
        longship::tools::import_snapshot(
            &f.c.host_config(h),
            &dir,
            &TestCluster::members(&[1, 2, 3]),
            ReplicaId(h),
        )
        .unwrap();
    }
    for h in 1..=3 {
        f.c.start_host(h);
        f.start(h, Start::Restart).unwrap();
    }
    for h in 1..=3 {
        assert_eq!(f.c.read(h, SHARD, "get k24"), b"v24");
        check_files(&f.last_recovery(h), 26);
    }
}

#[test]
fn attached_files_travel_with_snapshots_regular() {
    attached_files_travel_with_snapshots(Kind::Regular);
}

#[test]
fn attached_files_travel_with_snapshots_concurrent() {
    attached_files_travel_with_snapshots(Kind::Concurrent);
}

#[test]
fn attached_files_travel_with_snapshots_on_disk() {
    attached_files_travel_with_snapshots(Kind::OnDisk);
}

/// Every file named `name` under `dir`.
fn find(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            find(&p, name, out);
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
}

// A flipped bit in an attached file is found by its checksum: a restart
// refuses the snapshot before the state machine sees a byte, and so does
// an import of an exported copy.
#[test]
fn a_damaged_attached_file_is_caught_by_its_checksum() {
    let mut f = Files::new(Kind::Regular, 1);
    f.start(1, Start::New(TestCluster::members(&[1]))).unwrap();
    for i in 0..10 {
        f.c.propose(1, SHARD, format!("set k{i} v{i}"));
    }
    f.snapshot(1);
    let export = f.c.dir.path().join("backup");
    let opt = SnapshotOption {
        export_path: Some(export.clone()),
        compaction_overhead: None,
    };
    let exported = retry(|| {
        f.c.nh(1)
            .request_snapshot(sid(), opt.clone(), TIMEOUT)?
            .wait()
    })
    .export_dir
    .unwrap();
    f.c.stop_host(1);

    let mut found = Vec::new();
    find(&f.c.host_dir(1), "sm-file-0000000000000001", &mut found);
    find(&export, "sm-file-0000000000000001", &mut found);
    assert_eq!(found.len(), 2, "{found:?}");
    for path in &found {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[3] ^= 0x08;
        std::fs::write(path, bytes).unwrap();
    }

    f.c.start_host(1);
    let err = f.start(1, Start::Restart).unwrap_err();
    assert!(
        err.to_string().contains("checksum"),
        "a damaged attached file: {err}"
    );
    assert!(
        f.probes[&1].recoveries.lock().unwrap().is_empty(),
        "the state machine recovered from a damaged file"
    );
    f.c.stop_host(1);
    let err = longship::tools::import_snapshot(
        &f.c.host_config(1),
        &exported,
        &TestCluster::members(&[1]),
        ReplicaId(1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

// Ids are unique within a snapshot and metadata is bounded: the save fails.
#[test]
fn add_file_refuses_duplicates_and_oversized_metadata() {
    let mut files = SnapshotFiles::new();
    files.add_file(1, "/a", b"x").unwrap();
    assert!(files.add_file(1, "/b", b"").is_err());
    let big = vec![0u8; longship::SNAPSHOT_FILE_METADATA_MAX_BYTES + 1];
    assert!(files.add_file(2, "/c", &big).is_err());
    assert_eq!(files.files().len(), 1);
    assert_eq!(files.files()[0].path, PathBuf::from("/a"));
}
