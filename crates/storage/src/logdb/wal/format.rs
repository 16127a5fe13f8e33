//! Byte format of write-ahead log segments (see docs/formats.md, "Write-ahead
//! log"): a segment header, then records, each with a CRC32C.
//!
//! Decoding takes untrusted bytes: every length is bounded before anything
//! is allocated, and no input makes it panic.

use longship_raft::codec::{
    DecodeError, Decoder, ENTRY_FORMAT_VERSION, Limits, decode_entry, decode_hard_state,
    decode_snapshot_meta, encode_entry, encode_hard_state, encode_snapshot_meta, put_uvarint,
};
use longship_raft::{Entry, HardState, Index, ReplicaId, ShardId, SnapshotMeta, Term};

use crate::logdb::shape::{Key, Op, Shape};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LSHIPWAL";
/// Version of the segment and record layout.
pub const WAL_FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 12;
/// Largest record payload accepted (an entry payload is at most 64 MiB).
pub const RECORD_PAYLOAD_MAX: u32 = 128 << 20;
/// An entry list is split into another record once a record holds this many bytes.
pub const RECORD_SPLIT_BYTES: usize = 1 << 20;
/// Largest entry payload accepted (the codec's default limit).
pub const ENTRY_PAYLOAD_MAX: u64 = 64 << 20;

/// Record kinds.
pub const KIND_CHECKPOINT: u8 = 1;
/// An [`Op::Update`].
pub const KIND_UPDATE: u8 = 2;
/// An [`Op::SaveSnapshot`].
pub const KIND_SAVE_SNAPSHOT: u8 = 3;
/// An [`Op::Compact`].
pub const KIND_COMPACT: u8 = 4;
/// An [`Op::Remove`].
pub const KIND_REMOVE: u8 = 5;
/// Entries copied out of an old segment so it can be deleted: same payload
/// as an update without snapshot and hard state; sets where the entries
/// are, never truncates.
pub const KIND_RELOCATE: u8 = 6;

/// Record flag: the last record of its batch.
pub const FLAG_LAST: u8 = 0x01;

const UPDATE_HAS_SNAPSHOT: u8 = 0x01;
const UPDATE_HAS_HARD_STATE: u8 = 0x02;

/// Decoding limits: the codec defaults, with the entry count bounded only by
/// the bytes present.
pub fn limits() -> Limits {
    Limits {
        max_payload_bytes: ENTRY_PAYLOAD_MAX,
        max_entries: u64::MAX,
        ..Limits::default()
    }
}

/// Name of the segment file with id `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.wal")
}

/// The id of a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// CRC seed of a segment: record checksums start from it, so a record copied
/// from another segment (or embedded in a payload) never checks out.
pub fn segment_seed(id: u64) -> u32 {
    crc32c::crc32c(&id.to_le_bytes())
}

/// The segment header: magic, format version, entry format version,
/// segment id, CRC32C of the preceding 24 bytes, 4 reserved zero bytes.
pub fn encode_segment_header(id: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ENTRY_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    debug_assert_eq!(out.len() - start, SEGMENT_HEADER_BYTES);
}

/// Checks a segment header; returns why it is bad.
pub fn check_segment_header(buf: &[u8], id: u64) -> Result<(), String> {
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err("segment shorter than its header".into());
    }
    if buf[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let crc = u32::from_le_bytes(buf[24..28].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&buf[..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if version != WAL_FORMAT_VERSION {
        return Err(format!("unsupported WAL format version {version}"));
    }
    let entry_version = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes"));
    if entry_version != ENTRY_FORMAT_VERSION {
        return Err(format!("unsupported entry format version {entry_version}"));
    }
    let stored = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
    if stored != id {
        return Err(format!("segment header names id {stored}, file name {id}"));
    }
    if buf[28..32] != [0; 4] {
        return Err("reserved header bytes not zero".into());
    }
    Ok(())
}

/// Starts a record of `kind` at the end of `out`; returns its offset.
/// Finish it with [`finish_record`].
pub fn begin_record(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    out[start + 8] = kind;
    start
}

/// Fills in the payload length of the record begun at `start` (the payload
/// is everything after its header). The checksum is set by [`seal_record`].
pub fn finish_record(out: &mut [u8], start: usize) {
    let len = (out.len() - start - RECORD_HEADER_BYTES) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
}

/// Sets the flags and the checksum of a finished record, once the segment
/// it goes to is known.
pub fn seal_record(record: &mut [u8], flags: u8, seed: u32) {
    record[9] = flags;
    let crc = crc32c::crc32c_append(seed, &record[4..]);
    record[..4].copy_from_slice(&crc.to_le_bytes());
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length.
    pub len: u32,
    /// Record kind.
    pub kind: u8,
    /// Flags ([`FLAG_LAST`]).
    pub flags: u8,
}

/// Why the bytes at some offset are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// The record continues past the end of the file.
    Incomplete,
    /// The record is damaged (or the bytes are not a record).
    Bad(String),
}

/// Checks the record starting at `buf[0]`: header, bounds and checksum.
/// Returns the header; the payload is `buf[12 .. 12 + len]`.
pub fn check_record(buf: &[u8], seed: u32) -> Result<RecordHeader, RecordError> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::Incomplete);
    }
    let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let (kind, flags) = (buf[8], buf[9]);
    if len > RECORD_PAYLOAD_MAX {
        return Err(RecordError::Bad(format!("record length {len} over limit")));
    }
    let end = RECORD_HEADER_BYTES + len as usize;
    if end > buf.len() {
        return Err(RecordError::Incomplete);
    }
    if crc32c::crc32c_append(seed, &buf[4..end]) != crc {
        return Err(RecordError::Bad("record checksum mismatch".into()));
    }
    if !(KIND_CHECKPOINT..=KIND_RELOCATE).contains(&kind) {
        return Err(RecordError::Bad(format!("unknown record kind {kind}")));
    }
    if flags & !FLAG_LAST != 0 || buf[10] != 0 || buf[11] != 0 {
        return Err(RecordError::Bad("reserved record bits set".into()));
    }
    Ok(RecordHeader { len, kind, flags })
}

/// Whether a valid record starts anywhere in `buf[from..]`: a damaged record
/// followed by a valid one is corruption, not a torn tail.
///
/// Linear in the bytes searched: a candidate offset is checksummed only if
/// its cheap header fields (kind, flags, reserved bytes, length within the
/// buffer) could belong to a record, and the checksummed bytes are capped
/// at twice the buffer. Past the cap (only crafted bytes get there) the
/// answer is `true`: the damage is reported as corruption, never cut away
/// as a torn tail.
pub fn valid_record_after(buf: &[u8], from: usize, seed: u32) -> bool {
    let mut p = from;
    let mut budget = 2 * buf.len() as u64 + 4096;
    while p + RECORD_HEADER_BYTES <= buf.len() {
        let h = &buf[p..];
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as u64;
        let plausible = (KIND_CHECKPOINT..=KIND_RELOCATE).contains(&h[8])
            && h[9] & !FLAG_LAST == 0
            && h[10] == 0
            && h[11] == 0
            && len <= RECORD_PAYLOAD_MAX as u64
            && RECORD_HEADER_BYTES as u64 + len <= h.len() as u64;
        if plausible {
            if budget < len {
                return true;
            }
            budget -= len;
            if check_record(h, seed).is_ok() {
                return true;
            }
        }
        p += 1;
    }
    false
}

fn put_key(key: Key, out: &mut Vec<u8>) {
    put_uvarint(out, key.0.0);
    put_uvarint(out, key.1.0);
}

/// Appends the payload of an update record holding `entries` (and the
/// snapshot and hard state when given). The entries are preceded by a
/// summary — first index, count and term runs — so replay never has to
/// parse them.
pub(crate) fn encode_update_payload(
    key: Key,
    snapshot: Option<&SnapshotMeta>,
    hard_state: Option<&HardState>,
    entries: &[Entry],
    out: &mut Vec<u8>,
) {
    put_key(key, out);
    let mut flags = 0;
    if snapshot.is_some() {
        flags |= UPDATE_HAS_SNAPSHOT;
    }
    if hard_state.is_some() {
        flags |= UPDATE_HAS_HARD_STATE;
    }
    out.push(flags);
    if let Some(s) = snapshot {
        encode_snapshot_meta(s, out);
    }
    if let Some(h) = hard_state {
        encode_hard_state(h, out);
    }
    put_uvarint(out, entries.len() as u64);
    if let Some(first) = entries.first() {
        put_uvarint(out, first.index.0);
        let runs = entries
            .iter()
            .enumerate()
            .filter(|(i, e)| *i == 0 || entries[i - 1].term != e.term);
        put_uvarint(out, runs.clone().count() as u64);
        for (i, e) in runs {
            put_uvarint(out, i as u64);
            put_uvarint(out, e.term.0);
        }
    }
    for e in entries {
        encode_entry(e, out);
    }
}

/// Appends the payload of a non-update op's record; returns its kind.
pub(crate) fn encode_op_payload(op: &Op, out: &mut Vec<u8>) -> u8 {
    match op {
        Op::Update {
            key,
            snapshot,
            entries,
            hard_state,
        } => {
            encode_update_payload(*key, snapshot.as_ref(), hard_state.as_ref(), entries, out);
            KIND_UPDATE
        }
        Op::SaveSnapshot { key, meta } => {
            put_key(*key, out);
            encode_snapshot_meta(meta, out);
            KIND_SAVE_SNAPSHOT
        }
        Op::Compact { key, index } => {
            put_key(*key, out);
            put_uvarint(out, index.0);
            KIND_COMPACT
        }
        Op::Remove { key } => {
            put_key(*key, out);
            KIND_REMOVE
        }
    }
}

/// What a checkpoint says about one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckpointReplica {
    /// The replica.
    pub key: Key,
    /// Its log shape.
    pub shape: Shape,
    /// Its hard state.
    pub hard_state: HardState,
    /// Its snapshot metadata.
    pub snapshot: SnapshotMeta,
}

/// Appends the checkpoint entry of one replica.
pub(crate) fn encode_checkpoint_replica(c: &CheckpointReplica, out: &mut Vec<u8>) {
    put_key(c.key, out);
    put_uvarint(out, c.shape.marker.0);
    put_uvarint(out, c.shape.marker_term.0);
    put_uvarint(out, c.shape.last.0);
    put_uvarint(out, c.shape.terms.len() as u64);
    for &(start, term) in &c.shape.terms {
        put_uvarint(out, start.0);
        put_uvarint(out, term.0);
    }
    encode_hard_state(&c.hard_state, out);
    encode_snapshot_meta(&c.snapshot, out);
}

/// The header of an update record: everything but the entries themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpdateHeader {
    /// The replica.
    pub key: Key,
    /// A snapshot to install first.
    pub snapshot: Option<SnapshotMeta>,
    /// A hard state to set last.
    pub hard_state: Option<HardState>,
    /// Index of the first entry (0 when there are none).
    pub first: Index,
    /// Number of entries.
    pub count: u64,
    /// Term runs: `(offset from first, term)`, offsets strictly ascending
    /// from 0, below `count`; neighbouring terms differ.
    pub terms: Vec<(u64, Term)>,
}

impl UpdateHeader {
    /// Term of the `i`-th entry (`i < count`).
    pub fn term_of(&self, i: u64) -> Term {
        let pos = self.terms.partition_point(|&(off, _)| off <= i);
        self.terms[pos.max(1) - 1].1
    }
}

/// A decoded record.
#[derive(Clone, Debug)]
pub(crate) enum Record {
    /// Part of a checkpoint: the state of some replicas.
    Checkpoint(Vec<CheckpointReplica>),
    /// An update; its entries are not decoded.
    Update(UpdateHeader),
    /// Relocated entries (no snapshot, no hard state, at least one entry).
    Relocate(UpdateHeader),
    /// Any other change.
    Op(Op),
}

fn get_key(d: &mut Decoder<'_>) -> Result<Key, DecodeError> {
    Ok((ShardId(d.uvarint()?), ReplicaId(d.uvarint()?)))
}

fn decode_update_header(d: &mut Decoder<'_>) -> Result<UpdateHeader, DecodeError> {
    let key = get_key(d)?;
    let flags = d.u8()?;
    if flags & !(UPDATE_HAS_SNAPSHOT | UPDATE_HAS_HARD_STATE) != 0 {
        return Err(DecodeError::Invalid("reserved update flag bits set"));
    }
    let snapshot = if flags & UPDATE_HAS_SNAPSHOT != 0 {
        Some(decode_snapshot_meta(d)?)
    } else {
        None
    };
    let hard_state = if flags & UPDATE_HAS_HARD_STATE != 0 {
        Some(decode_hard_state(d)?)
    } else {
        None
    };
    // Every entry takes at least 4 bytes: the count is bounded by the input.
    let count = d.uvarint()?;
    if count > (d.remaining() / 4) as u64 {
        return Err(DecodeError::Truncated);
    }
    let mut header = UpdateHeader {
        key,
        snapshot,
        hard_state,
        first: Index(0),
        count,
        terms: Vec::new(),
    };
    if count == 0 {
        return Ok(header);
    }
    header.first = Index(d.uvarint()?);
    if header.first.0 == 0 || header.first.0.checked_add(count).is_none() {
        return Err(DecodeError::Invalid("entry indexes out of range"));
    }
    let nterms = d.count("term runs", count)?;
    if nterms == 0 {
        return Err(DecodeError::Invalid("entries without terms"));
    }
    header.terms.reserve(nterms);
    for i in 0..nterms {
        let off = d.uvarint()?;
        let term = Term(d.uvarint()?);
        let ok = match header.terms.last() {
            None => off == 0,
            Some(&(prev, t)) => off > prev && off < count && t != term,
        };
        if !ok || (i == 0 && off != 0) {
            return Err(DecodeError::Invalid("bad term runs"));
        }
        header.terms.push((off, term));
    }
    Ok(header)
}

/// Decodes a whole update record: its header and its entries, which must
/// agree with the header.
pub(crate) fn decode_update(payload: &[u8]) -> Result<(UpdateHeader, Vec<Entry>), DecodeError> {
    let mut d = Decoder::new(payload, limits());
    let header = decode_update_header(&mut d)?;
    // `count` is bounded by the input (checked in the header).
    let mut entries = Vec::with_capacity(header.count as usize);
    for i in 0..header.count {
        let e = decode_entry(&mut d)?;
        if e.index != header.first.plus(i) || e.term != header.term_of(i) {
            return Err(DecodeError::Invalid(
                "entry does not match the record header",
            ));
        }
        entries.push(e);
    }
    d.finish()?;
    Ok((header, entries))
}

fn decode_checkpoint(d: &mut Decoder<'_>) -> Result<Vec<CheckpointReplica>, DecodeError> {
    // Every replica takes well over 8 bytes.
    let n = d.count("checkpoint replicas", u64::MAX)?;
    let mut out = Vec::with_capacity(n.min(d.remaining() / 8));
    for _ in 0..n {
        let key = get_key(d)?;
        let marker = Index(d.uvarint()?);
        let marker_term = Term(d.uvarint()?);
        let last = Index(d.uvarint()?);
        let nterms = d.count("term runs", u64::MAX)?;
        let mut terms = std::collections::VecDeque::with_capacity(nterms.min(d.remaining() / 2));
        for _ in 0..nterms {
            terms.push_back((Index(d.uvarint()?), Term(d.uvarint()?)));
        }
        let hard_state = decode_hard_state(d)?;
        let snapshot = decode_snapshot_meta(d)?;
        let shape = Shape {
            marker,
            marker_term,
            last,
            terms,
            snapshot_index: snapshot.index,
        };
        if !shape.check() {
            return Err(DecodeError::Invalid("checkpoint log shape inconsistent"));
        }
        out.push(CheckpointReplica {
            key,
            shape,
            hard_state,
            snapshot,
        });
    }
    Ok(out)
}

/// Decodes a record payload of `kind` (already checksummed); the entries
/// of an update are skipped (see [`decode_update`]).
pub(crate) fn decode_record(kind: u8, payload: &[u8]) -> Result<Record, DecodeError> {
    let mut d = Decoder::new(payload, limits());
    let rec = match kind {
        KIND_CHECKPOINT => Record::Checkpoint(decode_checkpoint(&mut d)?),
        KIND_RELOCATE => {
            let h = decode_update_header(&mut d)?;
            if h.snapshot.is_some() || h.hard_state.is_some() || h.count == 0 {
                return Err(DecodeError::Invalid("bad relocation record"));
            }
            return Ok(Record::Relocate(h));
        }
        KIND_UPDATE => {
            // The entries are checked by the record CRC; they are parsed
            // only when read.
            let h = decode_update_header(&mut d)?;
            return Ok(Record::Update(h));
        }
        KIND_SAVE_SNAPSHOT => {
            let key = get_key(&mut d)?;
            Record::Op(Op::SaveSnapshot {
                key,
                meta: decode_snapshot_meta(&mut d)?,
            })
        }
        KIND_COMPACT => {
            let key = get_key(&mut d)?;
            Record::Op(Op::Compact {
                key,
                index: Index(d.uvarint()?),
            })
        }
        KIND_REMOVE => Record::Op(Op::Remove {
            key: get_key(&mut d)?,
        }),
        _ => return Err(DecodeError::Invalid("unknown record kind")),
    };
    d.finish()?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_damage() {
        let key = (ShardId(3), ReplicaId(2));
        let entries: Vec<Entry> = (5..8)
            .map(|i| Entry {
                index: Index(i),
                term: Term(2),
                cmd: bytes::Bytes::from(vec![i as u8; 10]),
                ..Entry::default()
            })
            .collect();
        let op = Op::Update {
            key,
            snapshot: None,
            entries: entries.clone(),
            hard_state: Some(HardState {
                term: Term(2),
                vote: ReplicaId(1),
                commit: Index(4),
            }),
        };
        let mut buf = Vec::new();
        let start = begin_record(&mut buf, KIND_UPDATE);
        assert_eq!(encode_op_payload(&op, &mut buf), KIND_UPDATE);
        finish_record(&mut buf, start);
        seal_record(&mut buf, FLAG_LAST, segment_seed(7));
        let h = check_record(&buf, segment_seed(7)).unwrap();
        assert_eq!(h.flags, FLAG_LAST);
        let Record::Update(header) = decode_record(h.kind, &buf[RECORD_HEADER_BYTES..]).unwrap()
        else {
            panic!("wrong record")
        };
        assert_eq!((header.first, header.count), (Index(5), 3));
        let (_, got) = decode_update(&buf[RECORD_HEADER_BYTES..]).unwrap();
        assert_eq!(got, entries);
        // Another segment's seed does not check out.
        assert!(check_record(&buf, segment_seed(8)).is_err());
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(check_record(&b, segment_seed(7)).is_err());
        }
        assert_eq!(
            check_record(&buf[..buf.len() - 1], segment_seed(7)),
            Err(RecordError::Incomplete)
        );
    }

    // Torn-tail search over crafted bytes: plausible headers whose lengths
    // reach to the end of the buffer cost a checksum each (quadratic
    // before the budget). Past the budget the damage counts as corruption;
    // zeros and implausible headers are passed over without a checksum.
    #[test]
    fn the_torn_tail_search_is_bounded_and_fails_safe() {
        let n = 256 << 10;
        let mut crafted = vec![0u8; n];
        let mut p = 0;
        while p + RECORD_HEADER_BYTES <= n {
            let len = (n - p - RECORD_HEADER_BYTES) as u32;
            crafted[p + 4..p + 8].copy_from_slice(&len.to_le_bytes());
            crafted[p + 8] = KIND_CHECKPOINT;
            p += 64;
        }
        assert!(
            valid_record_after(&crafted, 0, segment_seed(1)),
            "an exhausted budget must report corruption, not a torn tail"
        );
        assert!(!valid_record_after(&vec![0u8; n], 0, segment_seed(1)));
        let mut noise = vec![0u8; n];
        let mut x: u32 = 1;
        for b in noise.iter_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *b = (x >> 16) as u8;
        }
        assert!(!valid_record_after(&noise, 0, segment_seed(1)));
    }

    #[test]
    fn segment_names_and_header() {
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.wal"), None);
        let mut h = Vec::new();
        encode_segment_header(9, &mut h);
        assert!(check_segment_header(&h, 9).is_ok());
        assert!(check_segment_header(&h, 8).is_err());
        assert!(check_segment_header(&h[..31], 9).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            kind in 0u8..8,
        ) {
            let _ = check_record(&bytes, segment_seed(1));
            let _ = valid_record_after(&bytes, 0, segment_seed(1));
            let _ = check_segment_header(&bytes, 1);
            let _ = decode_record(kind, &bytes);
            let _ = decode_update(&bytes);
        }

        #[test]
        fn records_with_valid_checksums_but_arbitrary_payloads_never_panic(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            kind in 1u8..=5,
        ) {
            let mut buf = Vec::new();
            let start = begin_record(&mut buf, kind);
            buf.extend_from_slice(&payload);
            finish_record(&mut buf, start);
            seal_record(&mut buf, FLAG_LAST, segment_seed(3));
            let h = check_record(&buf, segment_seed(3)).unwrap();
            let _ = decode_record(h.kind, &buf[RECORD_HEADER_BYTES..]);
            let _ = decode_update(&buf[RECORD_HEADER_BYTES..]);
        }
    }
}
