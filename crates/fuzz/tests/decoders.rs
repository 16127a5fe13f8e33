//! Fuzz targets over every decoder that takes untrusted bytes: message
//! batches (the codec), transport frames, snapshot descriptions and WAL
//! segments at replay. Each must answer any input with a value or an error,
//! never a panic; what decodes re-encodes to what decodes the same
//! (canonical encodings).
//!
//! `FUZZ_INPUTS=1000000 cargo test --release -p longship-fuzz` for the long run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use longship_fuzz::{DEFAULT_INPUTS, inputs, run};
use longship_raft::codec::{Limits, decode_batch, encode_batch};
use longship_raft::{
    Entry, EntryType, Index, MESSAGE_BATCH_VERSION, Membership, Message, MessageBatch, MessageType,
    ReplicaId, ShardId, SnapshotMeta, Term,
};
use longship_storage::logdb::{LogDb, LogUpdate, Wal, WalOptions};
use longship_storage::snapshot::{ExternalFile, SnapshotInfo};
use longship_storage::vfs::{FileSystem, MemFs};
use longship_transport::SnapshotChunk;
use longship_transport::frame::{
    FRAME_HEADER_BYTES, FrameType, check_body, decode_chunk, decode_header, encode_chunk,
    encode_frame,
};

const DEPLOYMENT: u64 = 7;
const MAX_FRAME: u32 = 1 << 20;

fn membership() -> Membership {
    let mut m = Membership {
        config_change_id: Index(12),
        ..Membership::default()
    };
    for i in 1..=3 {
        m.voters.insert(ReplicaId(i), format!("host{i}:6300{i}"));
    }
    m.witnesses.insert(ReplicaId(4), "host4:63004".into());
    m.removed.insert(ReplicaId(9));
    m
}

fn entry(index: u64, kind: EntryType, cmd: &[u8]) -> Entry {
    Entry {
        term: Term(3),
        index: Index(index),
        entry_type: kind,
        key: 77 + index,
        client_id: 5,
        series_id: index,
        responded_to: index.saturating_sub(1),
        cmd: cmd.to_vec().into(),
    }
}

/// Batches covering every message type and field.
fn batches() -> Vec<MessageBatch> {
    let mut out = Vec::new();
    for t in 0..=16u8 {
        let msg_type = MessageType::from_u8(t).expect("a message type");
        let mut m = Message {
            term: Term(3),
            log_term: Term(2),
            log_index: Index(10),
            commit: Index(9),
            reject: t % 2 == 0,
            hint: Index(4),
            hint_term: Term(1),
            context: 0xdead_beef,
            ..Message::new(msg_type, ShardId(1), ReplicaId(2), ReplicaId(1))
        };
        match msg_type {
            MessageType::Replicate | MessageType::Propose => {
                m.entries = vec![
                    entry(11, EntryType::Normal, b"set a 1"),
                    entry(12, EntryType::ConfigChange, b"\x01\x02\x03"),
                    entry(13, EntryType::NoOp, b""),
                ];
            }
            MessageType::InstallSnapshot => {
                m.snapshot = Some(SnapshotMeta {
                    index: Index(100),
                    term: Term(3),
                    membership: membership(),
                    file_size: 4096,
                    ..SnapshotMeta::default()
                });
            }
            _ => {}
        }
        out.push(MessageBatch {
            deployment_id: DEPLOYMENT,
            source_address: "host1:63001".into(),
            bin_ver: MESSAGE_BATCH_VERSION,
            messages: vec![m],
        });
    }
    out.push(MessageBatch {
        deployment_id: DEPLOYMENT,
        source_address: String::new(),
        bin_ver: MESSAGE_BATCH_VERSION,
        messages: out.iter().flat_map(|b| b.messages.clone()).collect(),
    });
    out
}

#[test]
fn codec_message_batches() {
    let seeds: Vec<Vec<u8>> = batches().iter().map(encode_batch).collect();
    let limits = Limits::default();
    run("codec", 1, &seeds, inputs(DEFAULT_INPUTS * 4), |b| {
        let Ok(batch) = decode_batch(b, &limits) else {
            return false;
        };
        let again = decode_batch(&encode_batch(&batch), &limits)
            .expect("a decoded batch re-encodes to a valid one");
        assert_eq!(again, batch, "re-encoding changed a decoded batch");
        true
    });
}

fn chunk() -> SnapshotChunk {
    SnapshotChunk {
        deployment_id: DEPLOYMENT,
        shard_id: ShardId(1),
        to: ReplicaId(2),
        from: ReplicaId(1),
        index: Index(100),
        term: Term(3),
        chunk_id: 0,
        info: vec![1, 2, 3, 4],
        file_name: "snapshot.data".into(),
        offset: 0,
        data: vec![7; 300],
        last: true,
        message: vec![9, 9, 9],
    }
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = batches()
        .iter()
        .map(|b| encode_frame(FrameType::Batch, DEPLOYMENT, &encode_batch(b)))
        .collect();
    seeds.push(encode_frame(
        FrameType::Chunk,
        DEPLOYMENT,
        &encode_chunk(&chunk()),
    ));
    seeds.push(encode_frame(FrameType::SnapshotAck, DEPLOYMENT, &[1]));
    seeds
}

/// What a reader does with the bytes of a connection: header, body, decode.
/// Whether some frame's body decoded.
fn read_frames(mut b: &[u8]) -> bool {
    let mut decoded = false;
    let limits = Limits {
        max_payload_bytes: MAX_FRAME as u64,
        ..Limits::default()
    };
    while b.len() >= FRAME_HEADER_BYTES {
        let h: [u8; FRAME_HEADER_BYTES] = b[..FRAME_HEADER_BYTES].try_into().unwrap();
        let Ok(hdr) = decode_header(&h, DEPLOYMENT, MAX_FRAME) else {
            return decoded;
        };
        let len = hdr.body_len as usize;
        let Some(body) = b.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else {
            return decoded;
        };
        if check_body(&hdr, body).is_err() {
            return decoded;
        }
        decoded |= match hdr.frame_type {
            FrameType::Batch => decode_batch(body, &limits).is_ok(),
            FrameType::Chunk => decode_chunk(body, MAX_FRAME as u64).is_ok(),
            FrameType::SnapshotAck => true,
        };
        b = &b[FRAME_HEADER_BYTES + len..];
    }
    decoded
}

/// Recomputes a frame's checksums (header fields at their documented
/// offsets), so that mutations reach the body decoders behind the CRCs.
fn fix_crcs(b: &mut [u8]) {
    if b.len() < FRAME_HEADER_BYTES {
        return;
    }
    let len = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    let body_end = (FRAME_HEADER_BYTES + len).min(b.len());
    let body_crc = crc32c::crc32c(&b[FRAME_HEADER_BYTES..body_end]);
    b[20..24].copy_from_slice(&body_crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&b[..24]);
    b[24..28].copy_from_slice(&hcrc.to_le_bytes());
}

#[test]
fn transport_frames() {
    run(
        "frames",
        2,
        &frame_seeds(),
        inputs(DEFAULT_INPUTS * 2),
        read_frames,
    );
}

#[test]
fn transport_frames_with_valid_checksums() {
    run(
        "frames-crc",
        3,
        &frame_seeds(),
        inputs(DEFAULT_INPUTS * 2),
        |b| {
            let mut b = b.to_vec();
            fix_crcs(&mut b);
            let mut ok = read_frames(&b);
            if b.len() >= FRAME_HEADER_BYTES {
                ok |= decode_chunk(&b[FRAME_HEADER_BYTES..], MAX_FRAME as u64).is_ok();
            }
            ok
        },
    );
}

#[test]
fn snapshot_descriptions() {
    let info = SnapshotInfo {
        shard: ShardId(1),
        replica: ReplicaId(2),
        meta: SnapshotMeta {
            index: Index(100),
            term: Term(3),
            membership: membership(),
            file_size: 4096,
            ..SnapshotMeta::default()
        },
        data_version: 1,
        data_size_bytes: 4096,
        data_crc32c: 0x1234_5678,
        external_files: vec![
            ExternalFile {
                name: "000001.sst".into(),
                size_bytes: 1 << 20,
                crc32c: 42,
            },
            ExternalFile {
                name: "MANIFEST-1".into(),
                size_bytes: 77,
                crc32c: 43,
            },
        ],
    };
    let seeds = vec![info.encode().unwrap()];
    let path = Path::new("snapshots/1/snapshot-0000000000000064/snapshot.meta");
    run(
        "snapshot-info",
        4,
        &seeds,
        inputs(DEFAULT_INPUTS * 2),
        |b| {
            let Ok(i) = SnapshotInfo::decode(b, path) else {
                return false;
            };
            let again =
                SnapshotInfo::decode(&i.encode().expect("a decoded description is valid"), path)
                    .expect("re-encoded description decodes");
            assert_eq!(again, i);
            true
        },
    );
}

/// A WAL with a few batches of three replicas, in small segments.
fn wal_files() -> Vec<(PathBuf, Vec<u8>)> {
    let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
    let dir = Path::new("/wal");
    let wal = Wal::open(fs.clone(), dir, wal_options()).unwrap();
    for i in 1..=20u64 {
        let updates: Vec<LogUpdate> = (1..=3)
            .map(|r| LogUpdate {
                shard_id: ShardId(r),
                replica_id: ReplicaId(1),
                entries: vec![entry(
                    i,
                    EntryType::Normal,
                    &vec![r as u8; (i * 7) as usize],
                )],
                hard_state: Some(longship_raft::HardState {
                    term: Term(3),
                    vote: ReplicaId(1),
                    commit: Index(i - 1),
                }),
                snapshot: None,
                clear_recovery: false,
            })
            .collect();
        wal.save_raft_state(&updates).unwrap();
    }
    wal.remove_entries_to(ShardId(2), ReplicaId(1), Index(5))
        .unwrap();
    wal.close().unwrap();
    let mut files = Vec::new();
    for p in fs.list(dir).unwrap() {
        let f = fs.open_read(&p).unwrap();
        let mut buf = vec![0u8; f.len().unwrap() as usize];
        let n = f.read_at(0, &mut buf).unwrap();
        buf.truncate(n);
        // Preallocated zeros after the last record: keep a few.
        let end = buf.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        buf.truncate((end + 64).min(buf.len()));
        files.push((p, buf));
    }
    files
}

fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 8 << 10,
        preallocate_bytes: 0,
        ..WalOptions::default()
    }
}

#[test]
fn wal_replay() {
    let files = wal_files();
    assert!(!files.is_empty());
    // Each input replaces one file (the i-th, by the input's first byte).
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .enumerate()
        .map(|(i, (_, b))| {
            let mut s = vec![i as u8];
            s.extend_from_slice(b);
            s
        })
        .collect();
    run(
        "wal-replay",
        5,
        &seeds,
        inputs(DEFAULT_INPUTS / 2),
        |input| {
            let Some((&which, bytes)) = input.split_first() else {
                return false;
            };
            let which = which as usize % files.len();
            let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
            fs.create_dir_all(Path::new("/wal")).unwrap();
            for (i, (p, b)) in files.iter().enumerate() {
                let f = fs.create(p).unwrap();
                f.write_at(0, if i == which { bytes } else { b }).unwrap();
            }
            let Ok(wal) = Wal::open(fs, Path::new("/wal"), wal_options()) else {
                return false;
            };
            for (s, r) in wal.list_replicas() {
                let (first, last) = (wal.first_index(s, r), wal.last_index(s, r));
                let _ = wal.entries(s, r, first, Index(last.0.saturating_add(1)), u64::MAX);
                let _ = wal.term(s, r, last);
                let _ = wal.read_state(s, r);
            }
            true
        },
    );
}
