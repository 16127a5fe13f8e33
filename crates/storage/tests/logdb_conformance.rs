//! One conformance suite, run against every `LogDb` implementation:
//! `MemLogDb`, the `Wal` on `MemFs` (default and tiny segments, so that
//! rollover, checkpoints and segment deletion are exercised), and the `Wal`
//! on `OsFs` in a temp dir. Wal subjects are also restarted and must come
//! back with exactly the same state.

mod logdb_util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use logdb_util::*;
use longship_raft::{HardState, Index, LogReader, ReplicaId, ShardId, Term};
use longship_storage::vfs::{FileSystem, MemFs, OsFs};
use longship_storage::{Error, LogDb, MemLogDb, ReplicaLog, Wal, WalOptions};

/// A `LogDb` under test, and how to restart it.
trait Subject {
    fn name(&self) -> String;
    fn db(&self) -> Arc<dyn LogDb>;
    /// Closes and reopens (a no-op for the in-memory store).
    fn restart(&mut self);
}

struct MemSubject(Arc<MemLogDb>);

impl Subject for MemSubject {
    fn name(&self) -> String {
        "MemLogDb".into()
    }
    fn db(&self) -> Arc<dyn LogDb> {
        self.0.clone()
    }
    fn restart(&mut self) {}
}

struct WalSubject {
    label: &'static str,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: WalOptions,
    wal: Option<Arc<Wal>>,
    _tmp: Option<tempfile::TempDir>,
}

impl WalSubject {
    fn new(
        label: &'static str,
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        options: WalOptions,
        tmp: Option<tempfile::TempDir>,
    ) -> WalSubject {
        let wal = Arc::new(Wal::open(fs.clone(), &dir, options.clone()).unwrap());
        WalSubject {
            label,
            fs,
            dir,
            options,
            wal: Some(wal),
            _tmp: tmp,
        }
    }

    fn wal(&self) -> &Arc<Wal> {
        self.wal.as_ref().unwrap()
    }
}

impl Subject for WalSubject {
    fn name(&self) -> String {
        format!("Wal/{}", self.label)
    }
    fn db(&self) -> Arc<dyn LogDb> {
        self.wal().clone()
    }
    fn restart(&mut self) {
        let wal = self.wal.take().unwrap();
        wal.check_invariants().unwrap();
        wal.close().unwrap();
        drop(wal);
        let wal = Wal::open(self.fs.clone(), &self.dir, self.options.clone())
            .unwrap_or_else(|e| panic!("{}: reopen failed: {e}", self.label));
        wal.check_invariants().unwrap();
        self.wal = Some(Arc::new(wal));
    }
}

fn tiny_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 2048,
        max_cache_bytes: 4096,
        max_group_bytes: 1 << 20,
        preallocate_bytes: 1000,
    }
}

fn subjects() -> Vec<Box<dyn Subject>> {
    let tmp = tempfile::tempdir().unwrap();
    let os_dir = tmp.path().join("wal");
    vec![
        Box::new(MemSubject(Arc::new(MemLogDb::new()))),
        Box::new(WalSubject::new(
            "MemFs",
            Arc::new(MemFs::new()),
            PathBuf::from("/data/wal"),
            WalOptions::default(),
            None,
        )),
        Box::new(WalSubject::new(
            "MemFs/tiny-segments",
            Arc::new(MemFs::new()),
            PathBuf::from("/wal"),
            tiny_segments(),
            None,
        )),
        Box::new(WalSubject::new(
            "OsFs",
            Arc::new(OsFs::new()),
            os_dir,
            WalOptions {
                segment_bytes: 16 << 10,
                ..WalOptions::default()
            },
            Some(tmp),
        )),
    ]
}

/// Runs `body` on every subject; `body` gets a `check` closure that asserts
/// the model, restarts, and asserts it again.
fn conformance(body: impl Fn(&mut dyn Subject, &mut dyn FnMut(&mut dyn Subject, &Model))) {
    for mut s in subjects() {
        let mut check = |s: &mut dyn Subject, m: &Model| {
            let name = s.name();
            assert_matches(&*s.db(), m, &name);
            s.restart();
            assert_matches(&*s.db(), m, &format!("{name} after restart"));
        };
        body(&mut *s, &mut check);
    }
}

fn apply(s: &dyn Subject, m: &mut Model, a: Action) {
    let want = m.apply(&a);
    let got = run(&*s.db(), &a);
    assert_eq!(
        got.is_ok(),
        want.is_ok(),
        "{}: {a:?} gave {got:?}, model says {want:?}",
        s.name()
    );
}

#[test]
fn append_read_and_overwrite_tail() {
    conformance(|s, check| {
        let k = key(1, 1);
        let db = s.db();
        // An unknown replica reads as an empty log.
        assert_eq!(db.first_index(k.0, k.1), Index(1));
        assert_eq!(db.last_index(k.0, k.1), Index(0));
        assert_eq!(db.term(k.0, k.1, Index(0)).unwrap(), Term(0));
        assert!(matches!(
            db.entries(k.0, k.1, Index(1), Index(2), u64::MAX),
            Err(Error::Unavailable)
        ));
        assert!(db.read_state(k.0, k.1).is_none());
        let mut m = Model::default();
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(1, 10, 1, 16))]),
        );
        check(s, &m);
        let db = s.db();
        let got = db.entries(k.0, k.1, Index(3), Index(6), u64::MAX).unwrap();
        assert_eq!(got, entries(1, 10, 1, 16)[2..5].to_vec());
        assert!(
            db.entries(k.0, k.1, Index(4), Index(4), 0)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            db.entries(k.0, k.1, Index(5), Index(12), u64::MAX),
            Err(Error::Unavailable)
        ));
        // Raft §5.3: a conflicting append replaces the tail.
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(6, 2, 2, 3))]),
        );
        assert_eq!(s.db().last_index(k.0, k.1), Index(7));
        assert_eq!(s.db().term(k.0, k.1, Index(6)).unwrap(), Term(2));
        check(s, &m);
        // Appending after the end continues the log; a gap is refused.
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(8, 3, 2, 100))]),
        );
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(20, 1, 2, 1))]),
        );
        assert_eq!(s.db().last_index(k.0, k.1), Index(10));
        check(s, &m);
    });
}

#[test]
fn byte_limited_ranges() {
    conformance(|s, check| {
        let k = key(7, 2);
        let mut m = Model::default();
        let es = entries(1, 20, 1, 100);
        apply(s, &mut m, Action::Save(vec![update(k, es.clone())]));
        check(s, &m);
        let db = s.db();
        let size = es[0].size_bytes();
        for max in [
            0,
            1,
            size - 1,
            size,
            size + 1,
            3 * size,
            3 * size + 5,
            u64::MAX,
        ] {
            for low in [1u64, 5, 19, 20] {
                let got = db.entries(k.0, k.1, Index(low), Index(21), max).unwrap();
                let want = longship_raft::limit_size(&es[low as usize - 1..], max);
                assert_eq!(got, want, "{}: low {low} max {max}", s.name());
            }
        }
    });
}

#[test]
fn hard_state_snapshot_and_listing() {
    conformance(|s, check| {
        let mut m = Model::default();
        let hs = HardState {
            term: Term(3),
            vote: ReplicaId(2),
            commit: Index(0),
        };
        let mut u = update(key(2, 1), vec![]);
        u.hard_state = Some(hs);
        apply(
            s,
            &mut m,
            Action::Save(vec![u, update(key(1, 3), entries(1, 2, 1, 0))]),
        );
        // An update with nothing to persist is skipped.
        apply(s, &mut m, Action::Save(vec![update(key(9, 9), vec![])]));
        check(s, &m);
        assert_eq!(s.db().list_replicas(), vec![key(1, 3), key(2, 1)]);
        assert_eq!(
            s.db()
                .read_state(ShardId(2), ReplicaId(1))
                .unwrap()
                .hard_state,
            hs
        );
        // A locally taken snapshot leaves the entries alone.
        apply(s, &mut m, Action::SaveSnapshot(key(1, 3), snapshot(2, 1)));
        assert_eq!(s.db().first_index(ShardId(1), ReplicaId(3)), Index(1));
        assert_eq!(s.db().snapshot(ShardId(1), ReplicaId(3)), snapshot(2, 1));
        // An older one is ignored.
        apply(s, &mut m, Action::SaveSnapshot(key(1, 3), snapshot(1, 1)));
        check(s, &m);
        // The core reads through the adapter.
        let log = ReplicaLog::new(s.db(), ShardId(1), ReplicaId(3));
        assert_eq!(log.last_index(), Index(2));
        assert_eq!(log.term(Index(2)), Ok(Term(1)));
        assert_eq!(log.snapshot(), snapshot(2, 1));
        assert_eq!(log.entries(Index(1), Index(3), 0).unwrap().len(), 1);
    });
}

#[test]
fn snapshot_installation_follows_raft_rule() {
    conformance(|s, check| {
        let k = key(3, 1);
        let mut m = Model::default();
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(1, 10, 2, 8))]),
        );
        // The log holds index 6 with term 2: later entries stay (Raft §7).
        let mut u = update(k, vec![]);
        u.snapshot = Some(snapshot(6, 2));
        apply(s, &mut m, Action::Save(vec![u]));
        assert_eq!(s.db().first_index(k.0, k.1), Index(7));
        assert_eq!(s.db().last_index(k.0, k.1), Index(10));
        assert!(matches!(
            s.db().entries(k.0, k.1, Index(6), Index(8), u64::MAX),
            Err(Error::Compacted)
        ));
        check(s, &m);
        // Different term at 8: the log restarts after the snapshot, and
        // entries in the same update follow it.
        let mut u = update(k, entries(9, 2, 4, 8));
        u.snapshot = Some(snapshot(8, 3));
        apply(s, &mut m, Action::Save(vec![u]));
        assert_eq!(s.db().first_index(k.0, k.1), Index(9));
        assert_eq!(s.db().term(k.0, k.1, Index(8)).unwrap(), Term(3));
        assert_eq!(s.db().last_index(k.0, k.1), Index(10));
        // Beyond the end: empty log after it.
        let mut u = update(k, vec![]);
        u.snapshot = Some(snapshot(50, 5));
        apply(s, &mut m, Action::Save(vec![u]));
        assert_eq!(s.db().last_index(k.0, k.1), Index(50));
        // Stale: ignored.
        let mut u = update(k, vec![]);
        u.snapshot = Some(snapshot(40, 5));
        apply(s, &mut m, Action::Save(vec![u]));
        assert_eq!(s.db().snapshot(k.0, k.1).index, Index(50));
        check(s, &m);
    });
}

#[test]
fn compaction_hides_entries_and_keeps_the_term() {
    conformance(|s, check| {
        let k = key(4, 2);
        let mut m = Model::default();
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(1, 5, 1, 8))]),
        );
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(6, 5, 2, 8))]),
        );
        apply(s, &mut m, Action::Compact(k, Index(7)));
        assert_eq!(s.db().first_index(k.0, k.1), Index(8));
        assert_eq!(s.db().term(k.0, k.1, Index(7)).unwrap(), Term(2));
        assert!(matches!(
            s.db().term(k.0, k.1, Index(6)),
            Err(Error::Compacted)
        ));
        check(s, &m);
        // Beyond the end: clamped to the last index.
        apply(s, &mut m, Action::Compact(k, Index(100)));
        assert_eq!(s.db().first_index(k.0, k.1), Index(11));
        assert_eq!(s.db().term(k.0, k.1, Index(10)).unwrap(), Term(2));
        // Appending continues after it; entries at or below are skipped.
        apply(
            s,
            &mut m,
            Action::Save(vec![update(k, entries(9, 4, 3, 8))]),
        );
        assert_eq!(s.db().last_index(k.0, k.1), Index(12));
        check(s, &m);
    });
}

#[test]
fn remove_and_import() {
    conformance(|s, check| {
        let mut m = Model::default();
        apply(
            s,
            &mut m,
            Action::Save(vec![
                update(key(1, 1), entries(1, 5, 1, 8)),
                update(key(2, 1), entries(1, 5, 1, 8)),
            ]),
        );
        apply(s, &mut m, Action::Remove(key(1, 1)));
        assert_eq!(s.db().list_replicas(), vec![key(2, 1)]);
        apply(s, &mut m, Action::Import(key(2, 1), snapshot(100, 7)));
        let st = s.db().read_state(ShardId(2), ReplicaId(1)).unwrap();
        assert_eq!((st.first_index, st.last_index), (Index(101), Index(100)));
        assert_eq!(st.hard_state.commit, Index(100));
        check(s, &m);
        // A removed replica can start again from scratch.
        apply(
            s,
            &mut m,
            Action::Save(vec![update(key(1, 1), entries(1, 1, 9, 8))]),
        );
        check(s, &m);
    });
}

#[test]
fn a_refused_batch_changes_nothing() {
    conformance(|s, check| {
        let mut m = Model::default();
        apply(
            s,
            &mut m,
            Action::Save(vec![update(key(1, 1), entries(1, 3, 1, 8))]),
        );
        // The second update leaves a gap: the whole batch is refused.
        apply(
            s,
            &mut m,
            Action::Save(vec![
                update(key(2, 1), entries(1, 3, 1, 8)),
                update(key(1, 1), entries(9, 1, 1, 8)),
            ]),
        );
        assert!(s.db().read_state(ShardId(2), ReplicaId(1)).is_none());
        // Stateless mistakes are refused too.
        let db = s.db();
        assert!(matches!(
            db.save_raft_state(&[update(key(0, 1), entries(1, 1, 1, 1))]),
            Err(Error::InvalidArgument(_))
        ));
        let mut bad = entries(1, 3, 1, 1);
        bad[2].index = Index(7);
        assert!(matches!(
            db.save_raft_state(&[update(key(5, 1), bad)]),
            Err(Error::InvalidArgument(_))
        ));
        check(s, &m);
    });
}

#[test]
fn many_shards_interleaved_random_workload() {
    for mut s in subjects() {
        let mut m = Model::default();
        let mut w = Workload::new(42, 60);
        // Every action fsyncs: keep the real-disk subject short.
        let steps = if s.name().contains("OsFs") { 150 } else { 600 };
        for step in 0..steps {
            let a = w.next(&m);
            apply(&*s, &mut m, a);
            if step % 97 == 0 {
                s.restart();
            }
            if step % 50 == 0 {
                assert_matches(&*s.db(), &m, &format!("{} step {step}", s.name()));
            }
        }
        assert_matches(&*s.db(), &m, &s.name());
        s.restart();
        assert_matches(&*s.db(), &m, &format!("{} after restart", s.name()));
    }
}

fn dir_bytes(fs: &dyn FileSystem, dir: &Path) -> u64 {
    fs.list(dir)
        .unwrap()
        .iter()
        .map(|p| fs.open_read(p).unwrap().len().unwrap())
        .sum()
}

#[test]
fn wal_reclaims_space_after_compaction() {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let dir = Path::new("/wal");
    let wal = Wal::open(fs.clone(), dir, tiny_segments()).unwrap();
    let keys: Vec<_> = (1..=5).map(|s| key(s, 1)).collect();
    let mut next = 1;
    for round in 0..200 {
        let batch: Vec<_> = keys
            .iter()
            .map(|&k| update(k, entries(next, 2, 1, 50)))
            .collect();
        wal.save_raft_state(&batch).unwrap();
        next += 2;
        if round % 10 == 9 {
            // Keep the last 4 entries of every replica.
            for &k in &keys {
                wal.remove_entries_to(k.0, k.1, Index(next - 5)).unwrap();
            }
        }
    }
    wal.check_invariants().unwrap();
    let stats = wal.stats();
    assert!(stats.segments_created > 50, "{stats:?}");
    assert!(
        stats.segments_deleted + 10 > stats.segments_created,
        "{stats:?}"
    );
    // Live data is about 5 replicas × ~20 entries × ~70 bytes: a few segments.
    let bytes = dir_bytes(&*fs, dir);
    assert!(bytes < 30_000, "{bytes} bytes on disk");
    drop(wal);
    let wal = Wal::open(fs.clone(), dir, tiny_segments()).unwrap();
    for &k in &keys {
        assert_eq!(wal.last_index(k.0, k.1), Index(next - 1));
        let got = wal
            .entries(k.0, k.1, wal.first_index(k.0, k.1), Index(next), u64::MAX)
            .unwrap();
        assert!(!got.is_empty());
    }
}

#[test]
fn wal_group_commit_shares_fsyncs_between_threads() {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let wal = Arc::new(Wal::open(fs, Path::new("/wal"), WalOptions::default()).unwrap());
    let threads: Vec<_> = (1..=4u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let k = key(t, 1);
                    wal.save_raft_state(&[update(k, entries(i + 1, 1, 1, 16))])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.batches, 800);
    assert!(stats.syncs <= stats.batches);
    for t in 1..=4 {
        assert_eq!(wal.last_index(ShardId(t), ReplicaId(1)), Index(200));
    }
    wal.check_invariants().unwrap();
}

#[test]
fn wal_reads_old_entries_from_disk_and_splits_big_updates() {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let options = WalOptions {
        max_cache_bytes: 0,
        ..WalOptions::default()
    };
    let wal = Wal::open(fs.clone(), Path::new("/wal"), options.clone()).unwrap();
    let k = key(1, 1);
    // 3 MiB in one update: split into several records.
    let big = entries(1, 3, 1, 1 << 20);
    let small = entries(4, 1000, 1, 10);
    wal.save_raft_state(&[update(k, big.clone())]).unwrap();
    wal.save_raft_state(&[update(k, small.clone())]).unwrap();
    let all: Vec<_> = big.iter().chain(&small).cloned().collect();
    for reopen in [false, true] {
        let wal = if reopen {
            Wal::open(fs.clone(), Path::new("/wal"), options.clone()).unwrap()
        } else {
            Wal::open(fs.clone(), Path::new("/wal2"), options.clone()).unwrap();
            wal.entries(k.0, k.1, Index(1), Index(1004), u64::MAX)
                .unwrap();
            Wal::open(fs.clone(), Path::new("/wal"), options.clone()).unwrap()
        };
        let got = wal
            .entries(k.0, k.1, Index(1), Index(1004), u64::MAX)
            .unwrap();
        assert!(got == all);
        let got = wal
            .entries(k.0, k.1, Index(500), Index(510), u64::MAX)
            .unwrap();
        assert!(got[..] == all[499..509]);
        let got = wal.entries(k.0, k.1, Index(2), Index(1004), 1).unwrap();
        assert_eq!(got.len(), 1);
    }
    drop(wal);
}

#[test]
fn wal_relocates_an_idle_replicas_entries_instead_of_keeping_every_segment() {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let dir = Path::new("/wal");
    let wal = Wal::open(fs.clone(), dir, tiny_segments()).unwrap();
    // An idle replica writes once, early, and never compacts.
    let idle = key(99, 1);
    wal.save_raft_state(&[update(idle, entries(1, 3, 1, 30))])
        .unwrap();
    let busy = key(1, 1);
    for i in 0..400 {
        wal.save_raft_state(&[update(busy, entries(i + 1, 1, 1, 60))])
            .unwrap();
        wal.remove_entries_to(busy.0, busy.1, Index(i)).unwrap();
    }
    let stats = wal.stats();
    assert!(stats.relocations > 0, "{stats:?}");
    assert!(wal.segment_ids().len() <= 6, "{:?}", wal.segment_ids());
    assert!(dir_bytes(&*fs, dir) < 20_000);
    wal.check_invariants().unwrap();
    drop(wal);
    let wal = Wal::open(fs, dir, tiny_segments()).unwrap();
    wal.check_invariants().unwrap();
    assert_eq!(
        wal.entries(idle.0, idle.1, Index(1), Index(4), u64::MAX)
            .unwrap(),
        entries(1, 3, 1, 30)
    );
    assert_eq!(wal.last_index(busy.0, busy.1), Index(400));
}
