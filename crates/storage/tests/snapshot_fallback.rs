//! A replica restarting with a damaged newest snapshot falls back to an
//! older one only when its log still holds every entry after that one;
//! otherwise it is told, naming shard, replica and files, that it must be
//! rebuilt (`SnapshotStore::load_for_restart`).

mod snapshot_util;

use std::path::Path;

use longship_raft::Index;
use longship_storage::snapshot::{DATA_FILE_NAME, SnapshotError, Verify};
use snapshot_util::*;

#[test]
fn a_damaged_newest_snapshot_falls_back_only_when_the_log_covers_the_gap() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    write_snapshot(&store, 10, &bytes(10, 5000), &[]);
    write_snapshot(&store, 20, &bytes(20, 5000), &[]);
    // Healthy: the newest, whatever the log holds.
    for first in [1, 11, 21] {
        let got = store.load_for_restart(Index(first), Verify::Full).unwrap();
        assert_eq!(got.unwrap().info.meta.index, Index(20));
    }
    flip_bit(
        &*fs,
        &store.snapshot_dir(Index(20)).join(DATA_FILE_NAME),
        1234,
    );
    // The log still holds 11.. : snapshot 10 plus the log rebuild the state.
    for first in [1, 5, 11] {
        let got = store
            .load_for_restart(Index(first), Verify::Full)
            .unwrap()
            .unwrap();
        assert_eq!(got.info.meta.index, Index(10), "log from {first}");
        assert_eq!(got.skipped.len(), 1);
        assert_eq!(got.skipped[0].index, Index(20));
    }
    // The log starts at 12: entry 11 exists nowhere else.
    let err = store.load_for_restart(Index(12), Verify::Full).unwrap_err();
    match &err {
        SnapshotError::MustRebuild {
            shard,
            replica,
            damaged,
            fallback,
            log_first_index,
        } => {
            assert_eq!((*shard, *replica), (SHARD, REPLICA));
            assert_eq!(damaged.len(), 1);
            assert_eq!(damaged[0].1, store.snapshot_dir(Index(20)));
            assert_eq!(*fallback, Some(Index(10)));
            assert_eq!(*log_first_index, Index(12));
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("shard 7 replica 2 must be rebuilt"), "{msg}");
    assert!(
        msg.contains(&store.snapshot_dir(Index(20)).display().to_string()),
        "{msg}"
    );
    assert!(longship_storage::Error::from(err).is_corruption());
}

#[test]
fn every_snapshot_damaged_or_none_needs_a_log_from_index_one() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    assert!(
        store
            .load_for_restart(Index(1), Verify::Full)
            .unwrap()
            .is_none()
    );
    let err = store.load_for_restart(Index(5), Verify::Full).unwrap_err();
    assert!(err.to_string().contains("has no snapshot"), "{err}");
    write_snapshot(&store, 10, &bytes(10, 3000), &[]);
    write_snapshot(&store, 20, &bytes(20, 3000), &[]);
    for i in [10, 20] {
        truncate(
            &*fs,
            &store.snapshot_dir(Index(i)).join(DATA_FILE_NAME),
            100,
        );
    }
    assert!(
        store
            .load_for_restart(Index(1), Verify::Structure)
            .unwrap()
            .is_none()
    );
    match store.load_for_restart(Index(21), Verify::Structure) {
        Err(SnapshotError::MustRebuild {
            damaged, fallback, ..
        }) => {
            let indexes: Vec<Index> = damaged.iter().map(|d| d.0).collect();
            assert_eq!(indexes, vec![Index(20), Index(10)]);
            assert_eq!(fallback, None);
        }
        other => panic!("{other:?}"),
    }
}

/// A snapshot newer than the one the log storage recorded (committed, then
/// a crash before it was recorded) is never the restart point.
#[test]
fn restart_ignores_snapshots_newer_than_the_recorded_one() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    write_snapshot(&store, 10, &bytes(10, 500), &[]);
    write_snapshot(&store, 20, &bytes(20, 500), &[]);
    let got = store
        .load_for_restart_upto(Index(10), Index(1), Verify::Full)
        .unwrap()
        .unwrap();
    assert_eq!(got.info.meta.index, Index(10));
    assert!(got.skipped.is_empty());
    let got = store
        .load_for_restart_upto(Index(20), Index(1), Verify::Full)
        .unwrap()
        .unwrap();
    assert_eq!(got.info.meta.index, Index(20));
    // Nothing at or below: as if there were no snapshot.
    assert!(
        store
            .load_for_restart_upto(Index(9), Index(1), Verify::Full)
            .unwrap()
            .is_none()
    );
}
