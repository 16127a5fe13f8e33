//! Receiving a snapshot in chunks: complete transfers are accepted,
//! out-of-order, missing, overrunning or damaged chunks are refused, and a
//! refused or abandoned transfer leaves nothing behind.

mod snapshot_util;

use std::io::Read;
use std::path::Path;

use longship_raft::{Index, ReplicaId, ShardId};
use longship_storage::snapshot::{
    DATA_FILE_NAME, SnapshotError, SnapshotInfo, SnapshotReceiver, SnapshotStore,
};
use snapshot_util::*;

/// One chunk as the transport would carry it.
struct Chunk {
    file: String,
    offset: u64,
    bytes: Vec<u8>,
}

/// Splits every file of the sender's snapshot at `index` into chunks of at
/// most `chunk_bytes`, in transfer order.
fn chunks_of(sender: &SnapshotStore, index: u64, chunk_bytes: usize) -> (SnapshotInfo, Vec<Chunk>) {
    let (info, mut data) = sender.open_snapshot(Index(index)).unwrap();
    let mut files = vec![(DATA_FILE_NAME.to_string(), {
        let mut v = Vec::new();
        data.read_to_end(&mut v).unwrap();
        v
    })];
    for f in &info.external_files {
        let mut v = Vec::new();
        sender
            .open_external(Index(index), &f.name)
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        files.push((f.name.clone(), v));
    }
    let mut chunks = Vec::new();
    for (name, content) in files {
        for (i, c) in content.chunks(chunk_bytes).enumerate() {
            chunks.push(Chunk {
                file: name.clone(),
                offset: (i * chunk_bytes) as u64,
                bytes: c.to_vec(),
            });
        }
    }
    (info, chunks)
}

fn setup() -> (
    std::sync::Arc<dyn longship_storage::vfs::FileSystem>,
    SnapshotStore,
    SnapshotStore,
) {
    let fs = mem_fs();
    let sender = open_store(&fs, Path::new("/sender"));
    write_snapshot(
        &sender,
        40,
        &bytes(1, 200_000),
        &[("a.sst", bytes(2, 30_000)), ("b.sst", bytes(3, 5))],
    );
    let receiver =
        SnapshotStore::open(fs.clone(), Path::new("/receiver"), SHARD, ReplicaId(9)).unwrap();
    (fs, sender, receiver)
}

fn send(r: &mut SnapshotReceiver, c: &Chunk) -> Result<(), SnapshotError> {
    r.write_chunk(&c.file, c.offset, &c.bytes)
}

#[test]
fn complete_transfer_is_accepted() {
    let (_fs, sender, receiver) = setup();
    for chunk_bytes in [1 << 20, 65_536, 4_999] {
        let (info, chunks) = chunks_of(&sender, 40, chunk_bytes);
        let mut r = receiver.begin_receive(info.clone()).unwrap();
        assert_eq!(r.next_expected(), Some((DATA_FILE_NAME, 0)));
        for c in &chunks {
            send(&mut r, c).unwrap();
        }
        assert_eq!(r.next_expected(), None);
        assert!(
            receiver.list().unwrap().is_empty(),
            "not visible before finish"
        );
        let got = r.finish().unwrap();
        assert_eq!(got.replica, ReplicaId(9));
        assert_eq!(got.meta, info.meta);
        assert_eq!(got.data_crc32c, info.data_crc32c);
        assert_eq!(got.external_files, info.external_files);
        receiver.verify(Index(40)).unwrap();
        assert_eq!(
            read_data(&receiver, 40).unwrap(),
            read_data(&sender, 40).unwrap()
        );
        receiver.remove(Index(40)).unwrap();
    }
}

#[test]
fn encoded_metadata_starts_a_transfer() {
    // The transport ships the metadata file's bytes first.
    let (_fs, sender, receiver) = setup();
    let (info, chunks) = chunks_of(&sender, 40, 100_000);
    let wire = info.encode().unwrap();
    let decoded = SnapshotInfo::decode(&wire, Path::new("<wire>")).unwrap();
    let mut r = receiver.begin_receive(decoded).unwrap();
    for c in &chunks {
        send(&mut r, c).unwrap();
    }
    r.finish().unwrap();
}

/// Every way of breaking the sequence is refused, poisons the receiver and
/// leaves nothing behind once it is dropped.
#[test]
fn broken_sequences_are_refused() {
    let (fs, sender, receiver) = setup();
    let (info, chunks) = chunks_of(&sender, 40, 10_000);
    let n = chunks.len();
    // chunks: 20 of the data file, 3 of a.sst, 1 of b.sst.
    assert_eq!(n, 24);
    type Plan = Box<dyn Fn(&[Chunk]) -> Vec<Chunk>>;
    let copy = |c: &Chunk| Chunk {
        file: c.file.clone(),
        offset: c.offset,
        bytes: c.bytes.clone(),
    };
    let plans: Vec<(&str, Plan)> = vec![
        (
            "skip a data chunk",
            Box::new(move |c| {
                c.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 5)
                    .map(|(_, c)| copy(c))
                    .collect()
            }),
        ),
        (
            "swap two chunks",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                v.swap(3, 4);
                v
            }),
        ),
        (
            "repeat a chunk",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                v.insert(7, copy(&c[6]));
                v
            }),
        ),
        (
            "external file before the data file is complete",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                let ext = v.remove(20);
                v.insert(10, ext);
                v
            }),
        ),
        (
            "files in the wrong order",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                let b = v.remove(23);
                v.insert(20, b);
                v
            }),
        ),
        (
            "unknown file",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                v[21].file = "c.sst".into();
                v
            }),
        ),
        (
            "chunk past the end of a file",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                v[19].bytes.push(0);
                v
            }),
        ),
        (
            "chunk after the last file",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                v.push(Chunk {
                    file: "b.sst".into(),
                    offset: 5,
                    bytes: vec![1],
                });
                v
            }),
        ),
        (
            "damaged byte in the data file",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                v[12].bytes[77] ^= 0x40;
                v
            }),
        ),
        (
            "damaged byte in the last external file",
            Box::new(move |c| {
                let mut v: Vec<Chunk> = c.iter().map(copy).collect();
                v[23].bytes[0] ^= 1;
                v
            }),
        ),
    ];
    for (what, plan) in plans {
        let mut r = receiver.begin_receive(info.clone()).unwrap();
        let mut refused = None;
        for c in plan(&chunks) {
            if let Err(e) = send(&mut r, &c) {
                refused = Some(e);
                break;
            }
        }
        let err = refused.unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            matches!(
                err,
                SnapshotError::ChunkOutOfOrder { .. }
                    | SnapshotError::ChunkOverrun { .. }
                    | SnapshotError::ChecksumMismatch { .. }
            ),
            "{what}: {err}"
        );
        // Poisoned: even the right next chunk is refused now, and so is finish.
        assert!(
            matches!(send(&mut r, &chunks[0]), Err(SnapshotError::Poisoned)),
            "{what}"
        );
        assert!(matches!(r.finish(), Err(SnapshotError::Poisoned)), "{what}");
        assert!(
            names(&*fs, receiver.dir()).is_empty(),
            "{what}: left something behind"
        );
        assert!(receiver.list().unwrap().is_empty());
    }
}

#[test]
fn missing_last_chunk_is_refused_at_finish() {
    let (fs, sender, receiver) = setup();
    let (info, chunks) = chunks_of(&sender, 40, 10_000);
    for missing_from in [0, 5, 20, chunks.len() - 1] {
        let mut r = receiver.begin_receive(info.clone()).unwrap();
        for c in &chunks[..missing_from] {
            send(&mut r, c).unwrap();
        }
        let err = r.finish().unwrap_err();
        assert!(matches!(err, SnapshotError::Incomplete { .. }), "{err}");
        assert!(names(&*fs, receiver.dir()).is_empty());
    }
}

#[test]
fn abort_leaves_nothing() {
    let (fs, sender, receiver) = setup();
    let (info, chunks) = chunks_of(&sender, 40, 10_000);
    let mut r = receiver.begin_receive(info).unwrap();
    for c in &chunks[..10] {
        send(&mut r, c).unwrap();
    }
    r.abort().unwrap();
    assert!(names(&*fs, receiver.dir()).is_empty());
}

#[test]
fn empty_files_need_no_chunks() {
    let fs = mem_fs();
    let sender = open_store(&fs, Path::new("/s"));
    write_snapshot(&sender, 3, &[], &[("empty", Vec::new()), ("one", vec![7])]);
    let receiver = SnapshotStore::open(fs.clone(), Path::new("/r"), SHARD, ReplicaId(4)).unwrap();
    let info = sender.info(Index(3)).unwrap();
    let mut r = receiver.begin_receive(info.clone()).unwrap();
    assert_eq!(r.next_expected(), Some(("one", 0)));
    // A zero-length chunk at the right place is harmless.
    r.write_chunk("one", 0, &[]).unwrap();
    r.write_chunk("one", 0, &[7]).unwrap();
    r.finish().unwrap();
    receiver.verify(Index(3)).unwrap();

    // All files empty: complete from the start.
    write_snapshot(&sender, 4, &[], &[]);
    let r = receiver
        .begin_receive(sender.info(Index(4)).unwrap())
        .unwrap();
    assert_eq!(r.next_expected(), None);
    r.finish().unwrap();
}

#[test]
fn begin_receive_checks_the_metadata() {
    let (_fs, sender, receiver) = setup();
    let info = sender.info(Index(40)).unwrap();

    let mut wrong_shard = info.clone();
    wrong_shard.shard = ShardId(99);
    assert!(matches!(
        receiver.begin_receive(wrong_shard),
        Err(SnapshotError::WrongShard { .. })
    ));

    let mut empty = info.clone();
    empty.meta.index = Index(0);
    assert!(matches!(
        receiver.begin_receive(empty),
        Err(SnapshotError::EmptySnapshot { .. })
    ));

    let mut inconsistent = info.clone();
    inconsistent.data_size_bytes += 1;
    assert!(matches!(
        receiver.begin_receive(inconsistent),
        Err(SnapshotError::InvalidArgument(_))
    ));

    let mut bad_name = info.clone();
    bad_name.external_files[0].name = "../../etc/passwd".into();
    assert!(matches!(
        receiver.begin_receive(bad_name),
        Err(SnapshotError::InvalidArgument(_))
    ));

    receiver.import(&sender.snapshot_dir(Index(40))).unwrap();
    assert!(matches!(
        receiver.begin_receive(info),
        Err(SnapshotError::AlreadyExists(Index(40)))
    ));
}
