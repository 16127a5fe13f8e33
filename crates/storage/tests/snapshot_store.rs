//! Snapshot store: create, commit, list, open, read, cancel, remove,
//! export and import, on the in-memory and the OS file system.

mod snapshot_util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use longship_raft::{Index, ReplicaId, ShardId};
use longship_storage::snapshot::{
    DATA_FILE_NAME, META_FILE_NAME, SnapshotError, SnapshotStore, Verify, replica_dir_name,
    snapshot_dir_name,
};
use longship_storage::vfs::{FileSystem, OsFs};
use snapshot_util::*;

/// The full round trip, run on every file system.
fn round_trip(fs: Arc<dyn FileSystem>, root: &Path) {
    let store = open_store(&fs, root);
    assert_eq!(store.dir(), root.join(replica_dir_name(SHARD, REPLICA)));
    assert!(store.list().unwrap().is_empty());
    // Opening creates nothing (a host with many replicas that never
    // snapshot makes no directory per replica); the first snapshot does,
    // and a reopened store that never wrote lists nothing.
    assert!(!fs.exists(store.dir()), "opening created the directory");
    assert!(open_store(&fs, root).list().unwrap().is_empty());

    let data_a = bytes(1, 100_000);
    let data_b = bytes(2, 1_000_003);
    let ext = bytes(3, 4_321);
    let a = write_snapshot(&store, 100, &data_a, &[]);
    assert!(fs.is_dir(store.dir()));
    let b = write_snapshot(&store, 250, &data_b, &[("sst-000001", ext.clone())]);
    let c = write_snapshot(&store, 0x1_0000_0000, &[], &[("empty", Vec::new())]);

    assert_eq!(
        store.list().unwrap(),
        vec![Index(0x1_0000_0000), Index(250), Index(100)]
    );

    // What commit returned is what the metadata file says.
    assert_eq!(store.info(Index(100)).unwrap(), a);
    assert_eq!(store.info(Index(250)).unwrap(), b);
    assert_eq!(store.info(Index(0x1_0000_0000)).unwrap(), c);
    assert_eq!(b.shard, SHARD);
    assert_eq!(b.replica, REPLICA);
    assert_eq!(b.meta, {
        let mut m = meta(250);
        m.file_size = data_b.len() as u64;
        m
    });
    assert_eq!(b.meta.membership.config_change_id, Index(249));
    assert_eq!(b.data_version, 3);
    assert_eq!(b.data_size_bytes, data_b.len() as u64);
    assert_eq!(b.data_crc32c, crc32c::crc32c(&data_b));
    assert_eq!(b.external_files.len(), 1);
    assert_eq!(b.external_files[0].name, "sst-000001");
    assert_eq!(b.external_files[0].size_bytes, ext.len() as u64);

    assert_eq!(read_data(&store, 100).unwrap(), data_a);
    assert_eq!(read_data(&store, 250).unwrap(), data_b);
    assert_eq!(read_data(&store, 0x1_0000_0000).unwrap(), Vec::<u8>::new());
    let mut ext_read = Vec::new();
    store
        .open_external(Index(250), "sst-000001")
        .unwrap()
        .read_to_end(&mut ext_read)
        .unwrap();
    assert_eq!(ext_read, ext);
    for i in [100, 250, 0x1_0000_0000] {
        store.verify(Index(i)).unwrap();
    }

    let loaded = store.load_newest().unwrap();
    assert_eq!(loaded.info, c);
    assert!(loaded.skipped.is_empty());

    // Reopening sees the same snapshots.
    drop(store);
    let store = open_store(&fs, root);
    assert_eq!(store.list().unwrap().len(), 3);
    assert_eq!(read_data(&store, 250).unwrap(), data_b);

    // Only committed snapshot directories are in the store directory.
    assert_eq!(
        names(&*fs, store.dir()),
        vec![
            snapshot_dir_name(Index(100)),
            snapshot_dir_name(Index(250)),
            snapshot_dir_name(Index(0x1_0000_0000)),
        ]
    );
    let mut files = names(&*fs, &store.snapshot_dir(Index(250)));
    files.sort();
    assert_eq!(files, vec![DATA_FILE_NAME, META_FILE_NAME, "sst-000001"]);
}

#[test]
fn round_trip_on_mem_fs() {
    round_trip(mem_fs(), Path::new("/node/snapshots"));
}

#[test]
fn round_trip_on_os_fs() {
    let tmp = tempfile::tempdir().unwrap();
    round_trip(Arc::new(OsFs::new()), &tmp.path().join("node"));
}

#[test]
fn reader_streams_in_small_reads() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    let data = bytes(9, 600_000);
    write_snapshot(&store, 5, &data, &[]);
    let (info, mut reader) = store.open_snapshot(Index(5)).unwrap();
    assert_eq!(reader.size_bytes(), info.data_size_bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        let n = reader.read(&mut buf[..1 + got.len() % 999]).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(reader.position(), data.len() as u64);
    assert_eq!(got, data);
    // Reading past the end keeps saying "end".
    assert_eq!(reader.read(&mut buf).unwrap(), 0);
}

#[test]
fn cancel_and_drop_leave_nothing() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    let mut sink = store.create(meta(10), 1).unwrap();
    sink.write_all(&bytes(1, 500_000)).unwrap();
    sink.write_external_file("x", &mut &b"abc"[..]).unwrap();
    assert_eq!(
        names(&*fs, store.dir()).len(),
        1,
        "temp dir exists while writing"
    );
    assert!(
        store.list().unwrap().is_empty(),
        "nothing visible before commit"
    );
    sink.cancel().unwrap();
    assert!(names(&*fs, store.dir()).is_empty());

    let mut sink = store.create(meta(10), 1).unwrap();
    sink.write_all(b"partial").unwrap();
    drop(sink);
    assert!(names(&*fs, store.dir()).is_empty());
    assert!(matches!(
        store.load_newest(),
        Err(SnapshotError::NoSnapshot)
    ));
}

#[test]
fn distinct_errors_for_no_snapshot_empty_snapshot_and_missing() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    assert!(matches!(
        store.load_newest(),
        Err(SnapshotError::NoSnapshot)
    ));
    assert!(matches!(
        store.create(meta(0), 1),
        Err(SnapshotError::EmptySnapshot { .. })
    ));
    assert!(matches!(
        store.info(Index(3)),
        Err(SnapshotError::NotFound(Index(3)))
    ));
    assert!(matches!(
        store.open_snapshot(Index(3)),
        Err(SnapshotError::NotFound(Index(3)))
    ));
    assert!(matches!(
        store.remove(Index(3)),
        Err(SnapshotError::NotFound(Index(3)))
    ));
    // An empty metadata file is an empty snapshot, not a checksum error.
    write_snapshot(&store, 3, b"abc", &[]);
    truncate(&*fs, &store.snapshot_dir(Index(3)).join(META_FILE_NAME), 0);
    assert!(matches!(
        store.info(Index(3)),
        Err(SnapshotError::EmptySnapshot { .. })
    ));
}

#[test]
fn same_index_twice_is_refused_unless_the_old_one_is_damaged() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    write_snapshot(&store, 10, b"first", &[]);
    assert!(matches!(
        store.create(meta(10), 1),
        Err(SnapshotError::AlreadyExists(Index(10)))
    ));
    // Two sinks racing for one index: the second commit is refused and leaves nothing.
    let mut s1 = store.create(meta(20), 1).unwrap();
    let mut s2 = store.create(meta(20), 1).unwrap();
    s1.write_all(b"one").unwrap();
    s2.write_all(b"two").unwrap();
    s1.commit().unwrap();
    assert!(matches!(
        s2.commit(),
        Err(SnapshotError::AlreadyExists(Index(20)))
    ));
    assert_eq!(read_data(&store, 20).unwrap(), b"one");
    assert_eq!(names(&*fs, store.dir()).len(), 2);

    // A damaged snapshot at an index is replaced by a new one.
    truncate(&*fs, &store.snapshot_dir(Index(10)).join(DATA_FILE_NAME), 2);
    write_snapshot(&store, 10, b"second", &[]);
    assert_eq!(read_data(&store, 10).unwrap(), b"second");
    assert_eq!(names(&*fs, store.dir()).len(), 2);
}

#[test]
fn external_file_names_are_checked() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    let mut sink = store.create(meta(1), 1).unwrap();
    for bad in [
        "",
        "../x",
        "a/b",
        ".hidden",
        DATA_FILE_NAME,
        META_FILE_NAME,
        "é",
        &"x".repeat(256),
    ] {
        assert!(
            matches!(
                sink.write_external_file(bad, &mut &b""[..]),
                Err(SnapshotError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    sink.write_external_file("ok-1.sst", &mut &b"1"[..])
        .unwrap();
    assert!(matches!(
        sink.write_external_file("ok-1.sst", &mut &b"1"[..]),
        Err(SnapshotError::InvalidArgument(_))
    ));
    let src = Path::new("/sm/000042.sst");
    fs.create_dir_all(src.parent().unwrap()).unwrap();
    fs.create(src).unwrap().append(&bytes(4, 70_000)).unwrap();
    assert_eq!(sink.copy_external_file("000042.sst", src).unwrap(), 70_000);
    let info = sink.commit().unwrap();
    assert_eq!(info.external_files.len(), 2);
    let mut got = Vec::new();
    store
        .open_external(Index(1), "000042.sst")
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, bytes(4, 70_000));
    assert!(matches!(
        store.open_external(Index(1), "missing"),
        Err(SnapshotError::InvalidArgument(_))
    ));
}

#[test]
fn open_removes_leftovers_of_interrupted_writes_and_removals() {
    let fs = mem_fs();
    let root = Path::new("/s");
    let store = open_store(&fs, root);
    write_snapshot(&store, 10, b"keep", &[]);
    let dir = store.dir().to_path_buf();
    drop(store);
    for leftover in [
        format!("{}.tmp-0", snapshot_dir_name(Index(20))),
        format!("{}.tmp-export-4", snapshot_dir_name(Index(30))),
        format!("{}.del-2", snapshot_dir_name(Index(5))),
    ] {
        let d = dir.join(leftover);
        fs.create_dir_all(&d).unwrap();
        fs.create(&d.join(DATA_FILE_NAME))
            .unwrap()
            .append(b"junk")
            .unwrap();
    }
    fs.create(&dir.join("unrelated.txt")).unwrap();
    let store = open_store(&fs, root);
    assert_eq!(
        names(&*fs, &dir),
        vec![snapshot_dir_name(Index(10)), "unrelated.txt".to_string()]
    );
    assert_eq!(store.list().unwrap(), vec![Index(10)]);
}

#[test]
fn remove_and_keep_newest() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    for i in 1..=5 {
        write_snapshot(&store, i * 10, &bytes(i, 1000), &[]);
    }
    store.remove(Index(30)).unwrap();
    assert_eq!(
        store.list().unwrap(),
        vec![Index(50), Index(40), Index(20), Index(10)]
    );
    assert_eq!(store.keep_newest(2).unwrap(), vec![Index(20), Index(10)]);
    assert_eq!(store.list().unwrap(), vec![Index(50), Index(40)]);
    assert!(store.keep_newest(5).unwrap().is_empty());
    assert_eq!(names(&*fs, store.dir()).len(), 2, "no deletion leftovers");

    // A damaged newest snapshot does not count: the valid one below it stays.
    truncate(&*fs, &store.snapshot_dir(Index(50)).join(DATA_FILE_NAME), 3);
    assert!(store.keep_newest(1).unwrap().is_empty());
    assert_eq!(store.list().unwrap(), vec![Index(50), Index(40)]);
    write_snapshot(&store, 60, b"x", &[]);
    assert_eq!(store.keep_newest(1).unwrap(), vec![Index(50), Index(40)]);
    assert_eq!(store.list().unwrap(), vec![Index(60)]);
    assert_eq!(store.keep_newest(0).unwrap(), vec![Index(60)]);
    assert!(names(&*fs, store.dir()).is_empty());
}

/// Snapshots above the recorded one (a crash cut off their recording) do
/// not count among the kept: the recorded one and the one before it stay.
#[test]
fn keep_newest_upto_leaves_and_ignores_snapshots_above_the_recorded_one() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/s"));
    for i in [118, 131, 156, 157, 158] {
        write_snapshot(&store, i, &bytes(i, 100), &[]);
    }
    assert_eq!(
        store.keep_newest_upto(2, Index(156)).unwrap(),
        vec![Index(118)]
    );
    assert_eq!(
        store.list().unwrap(),
        vec![Index(158), Index(157), Index(156), Index(131)]
    );
    // keep_newest counts them all (what lost the recorded one before).
    assert_eq!(store.keep_newest(2).unwrap(), vec![Index(156), Index(131)]);
}

#[test]
fn export_import_round_trip() {
    let fs = mem_fs();
    let src = open_store(&fs, Path::new("/a"));
    let data = bytes(5, 300_000);
    let ext = bytes(6, 1234);
    let info = write_snapshot(&src, 77, &data, &[("ext.bin", ext.clone())]);

    let exported = src.export(Index(77), Path::new("/backup/shard7")).unwrap();
    assert_eq!(
        exported,
        PathBuf::from("/backup/shard7").join(snapshot_dir_name(Index(77)))
    );
    assert_eq!(
        names(&*fs, Path::new("/backup/shard7")),
        vec![snapshot_dir_name(Index(77))]
    );
    assert!(matches!(
        src.export(Index(77), Path::new("/backup/shard7")),
        Err(SnapshotError::AlreadyExists(Index(77)))
    ));

    // Another replica of the same shard imports it.
    let dst = SnapshotStore::open(fs.clone(), Path::new("/b"), SHARD, ReplicaId(5)).unwrap();
    let imported = dst.import(&exported).unwrap();
    assert_eq!(imported.replica, ReplicaId(5));
    assert_eq!(SnapshotInfoView::of(&imported), SnapshotInfoView::of(&info));
    assert_eq!(dst.info(Index(77)).unwrap(), imported);
    assert_eq!(read_data(&dst, 77).unwrap(), data);
    let mut got = Vec::new();
    dst.open_external(Index(77), "ext.bin")
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, ext);
    assert!(matches!(
        dst.import(&exported),
        Err(SnapshotError::AlreadyExists(Index(77)))
    ));

    // A committed snapshot directory of another store imports too.
    let dst2 = SnapshotStore::open(fs.clone(), Path::new("/c"), SHARD, ReplicaId(6)).unwrap();
    dst2.import(&src.snapshot_dir(Index(77))).unwrap();
    dst2.verify(Index(77)).unwrap();

    // A snapshot of another shard is refused.
    let other = SnapshotStore::open(fs.clone(), Path::new("/d"), ShardId(8), REPLICA).unwrap();
    assert!(matches!(
        other.import(&exported),
        Err(SnapshotError::WrongShard { .. })
    ));
    assert!(matches!(
        other.import(Path::new("/nowhere")),
        Err(SnapshotError::InvalidArgument(_))
    ));
    assert!(names(&*fs, other.dir()).is_empty());
}

#[test]
fn export_to_os_fs_and_import_into_mem_fs() {
    let tmp = tempfile::tempdir().unwrap();
    let os: Arc<dyn FileSystem> = Arc::new(OsFs::new());
    let mem = mem_fs();
    let src = open_store(&mem, Path::new("/a"));
    let data = bytes(8, 70_000);
    write_snapshot(&src, 9, &data, &[("e", b"ext".to_vec())]);
    let exported = src.export_to(Index(9), os.clone(), tmp.path()).unwrap();
    assert!(exported.join(META_FILE_NAME).is_file());
    assert_eq!(std::fs::read(exported.join(DATA_FILE_NAME)).unwrap(), data);

    let dst = open_store(&mem, Path::new("/b"));
    dst.import_from(&*os, &exported).unwrap();
    assert_eq!(read_data(&dst, 9).unwrap(), data);
}

#[test]
fn import_of_a_damaged_snapshot_is_refused_and_leaves_nothing() {
    let fs = mem_fs();
    let src = open_store(&fs, Path::new("/a"));
    write_snapshot(&src, 12, &bytes(1, 50_000), &[("ext", bytes(2, 999))]);
    let dst = open_store(&fs, Path::new("/b"));
    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "data bit flip",
            Box::new(|d: &Path| flip_bit(&*fs, &d.join(DATA_FILE_NAME), 12_345)),
        ),
        (
            "external bit flip",
            Box::new(|d: &Path| flip_bit(&*fs, &d.join("ext"), 7_000)),
        ),
        (
            "meta bit flip",
            Box::new(|d: &Path| flip_bit(&*fs, &d.join(META_FILE_NAME), 200)),
        ),
        (
            "data truncated",
            Box::new(|d: &Path| truncate(&*fs, &d.join(DATA_FILE_NAME), 49_999)),
        ),
        (
            "external missing",
            Box::new(|d: &Path| fs.remove_file(&d.join("ext")).unwrap()),
        ),
        (
            "meta missing",
            Box::new(|d: &Path| fs.remove_file(&d.join(META_FILE_NAME)).unwrap()),
        ),
        (
            "meta empty",
            Box::new(|d: &Path| truncate(&*fs, &d.join(META_FILE_NAME), 0)),
        ),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let out = PathBuf::from(format!("/export/{i}"));
        let exported = src.export(Index(12), &out).unwrap();
        damage(&exported);
        let err = dst.import(&exported).unwrap_err();
        assert!(err.is_corruption(), "{what}: {err}");
        assert!(
            names(&*fs, dst.dir()).is_empty(),
            "{what}: left something behind"
        );
    }
}

#[test]
fn export_of_a_damaged_snapshot_is_refused() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/a"));
    write_snapshot(&store, 12, &bytes(1, 50_000), &[]);
    flip_bit(
        &*fs,
        &store.snapshot_dir(Index(12)).join(DATA_FILE_NAME),
        99,
    );
    let err = store.export(Index(12), Path::new("/out")).unwrap_err();
    assert!(
        matches!(err, SnapshotError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(names(&*fs, Path::new("/out")).is_empty());
}

#[test]
fn load_newest_structure_check_does_not_read_data() {
    let fs = mem_fs();
    let store = open_store(&fs, Path::new("/a"));
    write_snapshot(&store, 1, b"old", &[]);
    write_snapshot(&store, 2, b"new", &[]);
    flip_bit(&*fs, &store.snapshot_dir(Index(2)).join(DATA_FILE_NAME), 3);
    // Same length, so only reading the data finds the damage.
    assert_eq!(
        store
            .load_newest_with(Verify::Structure)
            .unwrap()
            .info
            .meta
            .index,
        Index(2)
    );
    assert_eq!(store.load_newest().unwrap().info.meta.index, Index(1));
}

/// The parts of a `SnapshotInfo` an import must keep unchanged.
#[derive(Debug, PartialEq)]
struct SnapshotInfoView {
    shard: ShardId,
    meta: longship_raft::SnapshotMeta,
    data_version: u32,
    data_size_bytes: u64,
    data_crc32c: u32,
    external_files: Vec<longship_storage::snapshot::ExternalFile>,
}

impl SnapshotInfoView {
    fn of(i: &longship_storage::snapshot::SnapshotInfo) -> SnapshotInfoView {
        SnapshotInfoView {
            shard: i.shard,
            meta: i.meta.clone(),
            data_version: i.data_version,
            data_size_bytes: i.data_size_bytes,
            data_crc32c: i.data_crc32c,
            external_files: i.external_files.clone(),
        }
    }
}
