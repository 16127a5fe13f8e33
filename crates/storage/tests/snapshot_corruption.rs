//! Damaged snapshot files: bit flips and truncations at many offsets of the
//! data, external and metadata files are each reported (checksum mismatch,
//! corruption, empty snapshot), never returned as good data, and
//! `load_newest` falls back to the newest undamaged snapshot.

mod snapshot_util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use longship_raft::Index;
use longship_storage::snapshot::{
    DATA_FILE_NAME, META_FILE_NAME, SnapshotError, SnapshotStore, Verify,
};
use longship_storage::vfs::FileSystem;
use snapshot_util::*;

const DATA_BYTES: usize = 20_000;
const EXT_BYTES: usize = 3_000;

/// A store with a valid snapshot at 10 and the snapshot under test at 20.
fn setup() -> (Arc<dyn FileSystem>, SnapshotStore) {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    write_snapshot(&store, 10, &bytes(10, DATA_BYTES), &[]);
    write_snapshot(
        &store,
        20,
        &bytes(20, DATA_BYTES),
        &[("ext", bytes(21, EXT_BYTES))],
    );
    (fs, store)
}

fn file(store: &SnapshotStore, name: &str) -> PathBuf {
    store.snapshot_dir(Index(20)).join(name)
}

/// Checks that the damaged snapshot 20 is refused by every way of reading
/// it, and that `load_newest` falls back to 10 and reports 20.
fn assert_refused_and_fallback(store: &SnapshotStore, what: &str, data_damaged: bool) {
    let err = store.verify(Index(20)).unwrap_err();
    assert!(err.is_corruption(), "{what}: verify said {err}");
    if data_damaged {
        match read_data(store, 20) {
            Ok(_) => panic!("{what}: damaged data was read as good"),
            Err(e) => assert!(e.is_corruption(), "{what}: read said {e}"),
        }
    }
    let loaded = store.load_newest().unwrap();
    assert_eq!(loaded.info.meta.index, Index(10), "{what}");
    assert_eq!(loaded.skipped.len(), 1, "{what}");
    assert_eq!(loaded.skipped[0].index, Index(20), "{what}");
    assert!(loaded.skipped[0].error.is_corruption(), "{what}");
}

/// Offsets to damage in a file of `len` bytes: the first and last 64, and a
/// stride through the middle.
fn offsets(len: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..len.min(64)).collect();
    v.extend((64..len.saturating_sub(64)).step_by(211));
    v.extend(len.saturating_sub(64).max(64)..len);
    v
}

#[test]
fn data_bit_flips_are_checksum_mismatches() {
    let (fs, store) = setup();
    let path = file(&store, DATA_FILE_NAME);
    let mut n = 0;
    for off in offsets(DATA_BYTES as u64) {
        let bit = off * 8 + off % 8;
        flip_bit(&*fs, &path, bit);
        assert!(
            matches!(
                store.verify(Index(20)),
                Err(SnapshotError::ChecksumMismatch { .. })
            ),
            "offset {off}"
        );
        // Structure is intact: open succeeds, the reader refuses at the end.
        assert!(matches!(
            read_data(&store, 20),
            Err(SnapshotError::ChecksumMismatch { .. })
        ));
        assert_refused_and_fallback(&store, &format!("data bit flip at {off}"), true);
        flip_bit(&*fs, &path, bit);
        n += 1;
    }
    assert!(n > 200);
    assert_eq!(store.load_newest().unwrap().info.meta.index, Index(20));
}

#[test]
fn external_file_bit_flips_are_checksum_mismatches() {
    let (fs, store) = setup();
    let path = file(&store, "ext");
    for off in offsets(EXT_BYTES as u64) {
        flip_bit(&*fs, &path, off * 8 + 3);
        assert!(matches!(
            store.verify(Index(20)),
            Err(SnapshotError::ChecksumMismatch { .. })
        ));
        assert_refused_and_fallback(&store, &format!("external bit flip at {off}"), false);
        flip_bit(&*fs, &path, off * 8 + 3);
    }
    store.verify(Index(20)).unwrap();
}

#[test]
fn data_truncation_and_extension_are_corruption() {
    let (fs, store) = setup();
    let path = file(&store, DATA_FILE_NAME);
    let original = read_file(&*fs, &path);
    for len in offsets(DATA_BYTES as u64) {
        truncate(&*fs, &path, len);
        // Caught without reading the data: open already refuses.
        assert!(matches!(
            store.open_snapshot(Index(20)),
            Err(SnapshotError::Corruption { .. })
        ));
        assert_eq!(
            store
                .load_newest_with(Verify::Structure)
                .unwrap()
                .info
                .meta
                .index,
            Index(10)
        );
        assert_refused_and_fallback(&store, &format!("data truncated to {len}"), true);
        fs.create(&path).unwrap().write_at(0, &original).unwrap();
    }
    fs.open(&path).unwrap().append(b"extra").unwrap();
    assert!(matches!(
        store.info(Index(20)),
        Err(SnapshotError::Corruption { .. })
    ));
    assert_refused_and_fallback(&store, "data extended", true);
}

#[test]
fn every_metadata_bit_flip_is_detected() {
    let (fs, store) = setup();
    let path = file(&store, META_FILE_NAME);
    let len = read_file(&*fs, &path).len() as u64;
    for bit in 0..len * 8 {
        flip_bit(&*fs, &path, bit);
        let err = store.info(Index(20)).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::ChecksumMismatch { .. } | SnapshotError::Corruption { .. }
            ),
            "bit {bit}: {err}"
        );
        assert!(store.open_snapshot(Index(20)).is_err());
        if bit % 7 == 0 {
            assert_refused_and_fallback(&store, &format!("meta bit {bit}"), false);
        }
        flip_bit(&*fs, &path, bit);
    }
    store.verify(Index(20)).unwrap();
}

#[test]
fn every_metadata_truncation_is_detected() {
    let (fs, store) = setup();
    let path = file(&store, META_FILE_NAME);
    let original = read_file(&*fs, &path);
    for len in 0..original.len() as u64 {
        truncate(&*fs, &path, len);
        let err = store.info(Index(20)).unwrap_err();
        if len == 0 {
            assert!(matches!(err, SnapshotError::EmptySnapshot { .. }), "{err}");
        } else {
            assert!(
                matches!(err, SnapshotError::Corruption { .. }),
                "len {len}: {err}"
            );
        }
        assert_refused_and_fallback(&store, &format!("meta truncated to {len}"), false);
        fs.create(&path).unwrap().write_at(0, &original).unwrap();
    }
    store.verify(Index(20)).unwrap();
}

#[test]
fn missing_files_are_corruption() {
    for victim in [META_FILE_NAME, DATA_FILE_NAME, "ext"] {
        let (fs, store) = setup();
        fs.remove_file(&file(&store, victim)).unwrap();
        assert!(matches!(
            store.info(Index(20)),
            Err(SnapshotError::Corruption { .. })
        ));
        assert_refused_and_fallback(&store, &format!("{victim} missing"), false);
    }
}

#[test]
fn metadata_of_another_index_or_shard_is_corruption() {
    let (fs, store) = setup();
    // The metadata of snapshot 10 copied into the directory of 20.
    let meta10 = read_file(&*fs, &store.snapshot_dir(Index(10)).join(META_FILE_NAME));
    fs.create(&file(&store, META_FILE_NAME))
        .unwrap()
        .write_at(0, &meta10)
        .unwrap();
    assert!(matches!(
        store.info(Index(20)),
        Err(SnapshotError::Corruption { .. })
    ));
    assert_refused_and_fallback(&store, "meta of another index", false);

    // A store of another shard over the same directory refuses every snapshot.
    let other = SnapshotStore::open_dir(
        fs.clone(),
        store.dir().to_path_buf(),
        longship_raft::ShardId(1),
        REPLICA,
    )
    .unwrap();
    assert!(matches!(
        other.info(Index(10)),
        Err(SnapshotError::Corruption { .. })
    ));
}

#[test]
fn when_every_snapshot_is_damaged_load_newest_says_so() {
    let (fs, store) = setup();
    flip_bit(&*fs, &file(&store, DATA_FILE_NAME), 1);
    truncate(
        &*fs,
        &store.snapshot_dir(Index(10)).join(META_FILE_NAME),
        10,
    );
    match store.load_newest() {
        Err(SnapshotError::NoValidSnapshot { skipped }) => {
            let idx: Vec<Index> = skipped.iter().map(|s| s.index).collect();
            assert_eq!(idx, vec![Index(20), Index(10)]);
            assert!(matches!(
                skipped[0].error,
                SnapshotError::ChecksumMismatch { .. }
            ));
            assert!(matches!(skipped[1].error, SnapshotError::Corruption { .. }));
        }
        other => panic!("expected NoValidSnapshot, got {other:?}"),
    }
}

#[test]
fn checksum_error_survives_the_io_error_wrapper() {
    use std::io::Read;
    let (fs, store) = setup();
    flip_bit(&*fs, &file(&store, DATA_FILE_NAME), 100);
    let (_, mut reader) = store.open_snapshot(Index(20)).unwrap();
    let mut sink = Vec::new();
    let err = reader.read_to_end(&mut sink).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // Every byte was handed out; only the final check failed.
    assert_eq!(sink.len(), DATA_BYTES);
    let typed = SnapshotError::from_io(err, "read", PathBuf::new());
    assert!(matches!(typed, SnapshotError::ChecksumMismatch { .. }));
}

#[test]
fn converts_to_the_crate_error_with_file_and_offset() {
    let (fs, store) = setup();
    let path = file(&store, DATA_FILE_NAME);
    truncate(&*fs, &path, 1234);
    let err: longship_storage::Error = store.info(Index(20)).unwrap_err().into();
    match err {
        longship_storage::Error::Corruption { file, offset, .. } => {
            assert_eq!(file, path);
            assert_eq!(offset, 1234);
        }
        other => panic!("expected Corruption, got {other}"),
    }
    let err: longship_storage::Error = store.verify(Index(99)).unwrap_err().into();
    assert!(matches!(err, longship_storage::Error::NotFound));
}
