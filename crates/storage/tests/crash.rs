//! Crash tests: the write-ahead log over `FaultyFs`. For seeded workloads,
//! the power is cut after every single write, fsync, create, rename, remove
//! and directory sync in turn; the file system then loses everything not
//! durable (or keeps a random prefix of unsynced appends), the log is
//! reopened, and it must hold exactly what every acknowledged
//! `save_raft_state` wrote, plus the batch in flight either entirely or not
//! at all.

mod logdb_util;

use std::path::Path;
use std::sync::Arc;

use logdb_util::*;
use longship_raft::{Index, Rng};
use longship_storage::vfs::{CrashMode, FaultProbabilities, FaultyFs, FileSystem};
use longship_storage::{LogDb, Wal, WalOptions};

const DIR: &str = "/node/wal";

fn options() -> WalOptions {
    WalOptions {
        // Small segments: rollover, checkpoints and deletions happen often.
        segment_bytes: 1500,
        max_cache_bytes: 2000,
        max_group_bytes: 1 << 20,
        preallocate_bytes: 600,
    }
}

fn open(fs: &FaultyFs) -> longship_storage::Result<Wal> {
    Wal::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        Path::new(DIR),
        options(),
    )
}

/// `models[i]`: the state after the first `i` actions.
fn models_after_each(actions: &[Action]) -> Vec<Model> {
    let mut m = Model::default();
    let mut out = vec![m.clone()];
    for a in actions {
        m.apply(a).expect("workload is valid");
        out.push(m.clone());
    }
    out
}

/// A short random workload that regularly compacts every replica, so that
/// segments are created and deleted often.
fn workload_with_compactions(seed: u64) -> Vec<Action> {
    let mut w = Workload::new(seed, 4);
    w.rare_percent = 10;
    let mut m = Model::default();
    let mut out = Vec::new();
    for i in 0..22 {
        let a = w.next(&m);
        if m.apply(&a).is_ok() {
            out.push(a);
        }
        if i % 5 == 4 {
            let keys: Vec<_> = m.replicas.keys().copied().collect();
            for k in keys {
                let last = m.replicas[&k].last();
                let a = Action::Compact(k, Index(last.saturating_sub(1)));
                m.apply(&a).unwrap();
                out.push(a);
            }
        }
    }
    out
}

#[test]
fn crash_at_every_operation() {
    let mut crash_points = 0;
    let mut segments_deleted = 0;
    let mut relocations = 0;
    for seed in 0..12u64 {
        let mode = if seed % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::KeepRandomPrefix
        };
        let actions = workload_with_compactions(seed);
        let models = models_after_each(&actions);
        let fs = FaultyFs::over_mem(seed);
        // Record what a crash before each operation would leave on disk.
        fs.record_crash_images(Some(mode));
        let wal = open(&fs).unwrap();
        // ops_done[i]: operations done once action i returned.
        let mut ops_done = Vec::with_capacity(actions.len());
        for a in &actions {
            run(&wal, a).unwrap();
            ops_done.push(fs.op_count());
        }
        segments_deleted += wal.stats().segments_deleted;
        relocations += wal.stats().relocations;
        drop(wal);
        let images = fs.take_crash_images().unwrap();
        let total = images.len();
        for (n, (done, image)) in images.into_iter().enumerate() {
            let acked = ops_done.iter().filter(|&&x| x <= done).count();
            let ctx = format!("seed {seed} crash after op {done} ({n} of {total}, {mode:?})");
            let image: Arc<dyn FileSystem> = Arc::new(image);
            let wal = Wal::open(image.clone(), Path::new(DIR), options())
                .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
            wal.check_invariants().unwrap();
            let got = dump(&wal).unwrap_or_else(|e| panic!("{ctx}: read failed: {e}"));
            // Everything acknowledged; the action in flight entirely or not at all.
            // A damaged in-flight batch is discarded, but the term and
            // vote it wrote may be restored (and a guard given).
            if !(acked < actions.len() && got == models[acked + 1]) {
                assert_recovered(&got, &models[acked], actions.get(acked), &ctx);
            }
            if n % 3 == 0 {
                // The recovered log keeps working, and survives another restart.
                let mut expect = got.clone();
                let more = Workload::new(seed + 77, 4).next(&expect);
                assert_eq!(
                    run(&wal, &more).is_ok(),
                    expect.apply(&more).is_ok(),
                    "{ctx}"
                );
                drop(wal);
                let wal = Wal::open(image, Path::new(DIR), options()).unwrap();
                assert_same(
                    &dump(&wal).unwrap(),
                    &expect,
                    &format!("{ctx}: one more action"),
                );
            }
            crash_points += 1;
        }
    }
    assert!(crash_points >= 1000, "only {crash_points} crash points");
    assert!(
        segments_deleted >= 12,
        "only {segments_deleted} segments deleted"
    );
    assert!(relocations >= 5, "only {relocations} relocations");
    eprintln!(
        "{crash_points} crash points, {segments_deleted} segments deleted, {relocations} relocations"
    );
}

#[test]
fn injected_io_errors_then_reopen_with_or_without_crash() {
    let mut failures = 0;
    for seed in 0..6u64 {
        let fs = FaultyFs::over_mem(seed);
        fs.set_probabilities(FaultProbabilities {
            write_error: 0.02,
            torn_write: 0.02,
            sync_error: 0.03,
        });
        let mut rng = Rng::new(seed);
        let mut w = Workload::new(seed, 5);
        let mut acked = Model::default();
        let mut wal: Option<Wal> = None;
        for step in 0..300 {
            let db = match &wal {
                Some(db) => db,
                None => match open(&fs) {
                    Ok(db) => {
                        let got = dump(&db).unwrap();
                        assert_same(&got, &acked, &format!("seed {seed} step {step}: reopened"));
                        wal.insert(db)
                    }
                    Err(e) if !e.is_corruption() => continue,
                    Err(e) => panic!("seed {seed} step {step}: {e}"),
                },
            };
            let a = w.next(&acked);
            let mut next = acked.clone();
            let valid = next.apply(&a).is_ok();
            match run(db, &a) {
                Ok(()) => {
                    assert!(valid);
                    // (Work after the durable write, a new segment say, may
                    // have failed the log: the next operation says so.)
                    acked = next;
                }
                Err(longship_storage::Error::InvalidArgument(_)) => assert!(!valid),
                Err(e) => {
                    // The log says so until it is reopened.
                    assert!(db.failure().is_some(), "seed {seed} step {step}: {e}");
                    assert!(matches!(
                        run(db, &a),
                        Err(longship_storage::Error::Failed(_))
                    ));
                    failures += 1;
                    // The process dies; sometimes the machine too.
                    drop(wal.take());
                    let crash = rng.chance(0.5);
                    if crash {
                        fs.crash(CrashMode::KeepRandomPrefix).unwrap();
                    }
                    // Faults stay on, so reopening may fail too: retry until it works.
                    let reopened = loop {
                        match open(&fs) {
                            Ok(db) => break db,
                            Err(e) if !e.is_corruption() => {}
                            Err(e) => panic!("seed {seed} step {step}: {e}"),
                        }
                    };
                    assert_eq!(reopened.failure(), None);
                    let got = dump(&reopened).unwrap();
                    if valid && got == next {
                        acked = next;
                    } else {
                        assert_recovered(
                            &got,
                            &acked,
                            Some(&a),
                            &format!("seed {seed} step {step} crash {crash}"),
                        );
                        acked = got;
                    }
                    wal = Some(reopened);
                }
            }
        }
    }
    assert!(
        failures > 20,
        "only {failures} injected failures hit a write"
    );
}
