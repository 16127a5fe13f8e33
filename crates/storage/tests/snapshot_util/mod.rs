//! Helpers shared by the snapshot store tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use longship_raft::{Index, Membership, ReplicaId, ShardId, SnapshotMeta, Term};
use longship_storage::snapshot::{SnapshotError, SnapshotInfo, SnapshotStore};
use longship_storage::vfs::{FileSystem, MemFs};

/// Shard of every test store.
pub const SHARD: ShardId = ShardId(7);
/// Replica of every test store.
pub const REPLICA: ReplicaId = ReplicaId(2);

/// A fresh in-memory file system.
pub fn mem_fs() -> Arc<dyn FileSystem> {
    Arc::new(MemFs::new())
}

/// Opens the test store under `root`.
pub fn open_store(fs: &Arc<dyn FileSystem>, root: &Path) -> SnapshotStore {
    SnapshotStore::open(fs.clone(), root, SHARD, REPLICA).expect("open store")
}

/// Snapshot metadata at `index` with a three-voter membership whose
/// config-change index is `index - 1`.
pub fn meta(index: u64) -> SnapshotMeta {
    let mut membership = Membership::with_voters([(1, "n1:1"), (2, "n2:1"), (3, "n3:1")]);
    membership.config_change_id = Index(index.saturating_sub(1));
    SnapshotMeta {
        index: Index(index),
        term: Term(index / 10 + 1),
        membership,
        ..SnapshotMeta::default()
    }
}

/// Deterministic pseudo-random bytes, different per `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes and commits a snapshot at `index` with `data` (in a few writes of
/// uneven size) and the given external files.
pub fn write_snapshot(
    store: &SnapshotStore,
    index: u64,
    data: &[u8],
    externals: &[(&str, Vec<u8>)],
) -> SnapshotInfo {
    let mut sink = store.create(meta(index), 3).expect("create");
    for chunk in data.chunks(7919) {
        sink.write_all(chunk).expect("write");
    }
    for (name, content) in externals {
        sink.write_external_file(name, &mut &content[..])
            .expect("external");
    }
    sink.commit().expect("commit")
}

/// Reads the whole data file of the snapshot at `index` through the
/// streaming reader (which checks the checksum at the end).
pub fn read_data(store: &SnapshotStore, index: u64) -> Result<Vec<u8>, SnapshotError> {
    let (_, mut reader) = store.open_snapshot(Index(index))?;
    let path = reader.path().to_path_buf();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(SnapshotError::from_io(e, "read", path)),
        }
    }
}

/// Reads a whole file through the vfs.
pub fn read_file(fs: &dyn FileSystem, path: &Path) -> Vec<u8> {
    let f = fs.open_read(path).expect("open");
    let len = f.len().expect("len") as usize;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(done as u64, &mut buf[done..]).expect("read");
        assert!(n > 0);
        done += n;
    }
    buf
}

/// Flips bit `bit` of the file at `path`.
pub fn flip_bit(fs: &dyn FileSystem, path: &Path, bit: u64) {
    let f = fs.open(path).expect("open");
    let mut b = [0u8; 1];
    assert_eq!(f.read_at(bit / 8, &mut b).expect("read"), 1);
    b[0] ^= 1 << (bit % 8);
    f.write_at(bit / 8, &b).expect("write");
}

/// Cuts the file at `path` to `len` bytes.
pub fn truncate(fs: &dyn FileSystem, path: &Path, len: u64) {
    fs.open(path).expect("open").set_len(len).expect("set_len");
}

/// Names (last components) of the entries of `dir`; none if it does not
/// exist (a store's directory is created by its first snapshot).
pub fn names(fs: &dyn FileSystem, dir: &Path) -> Vec<String> {
    if !fs.exists(dir) {
        return Vec::new();
    }
    fs.list(dir)
        .expect("list")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}
