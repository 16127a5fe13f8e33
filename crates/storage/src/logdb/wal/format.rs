//! Byte format of write-ahead log segments (see docs/formats.md, "Write-ahead
//! log"): a segment header, then records, each with a CRC32C.
//!
//! Decoding takes untrusted bytes: every length is bounded before anything
//! is allocated, and no input makes it panic.

use longship_raft::codec::{
    DecodeError, Decoder, ENTRY_FORMAT_VERSION, Limits, decode_entry, decode_hard_state,
    decode_snapshot_meta, encode_entry, encode_hard_state, encode_snapshot_meta, put_uvarint,
};
use longship_raft::{
    Entry, HardState, Index, RecoveryGuard, ReplicaId, ShardId, SnapshotMeta, Term,
};

use crate::logdb::shape::{Key, Op, Shape};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LSHIPWAL";
/// Version of the segment and record layout. Version 2 added batch
/// headers, recovery guards and repair batches; logs of version 1 are
/// refused.
pub const WAL_FORMAT_VERSION: u32 = 2;
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
/// The header of a batch, written twice at its start: what every record
/// of the batch changes, so a damaged batch still says what it held.
pub const KIND_BATCH_HEADER: u8 = 7;
/// An [`Op::SetGuard`].
pub const KIND_SET_GUARD: u8 = 8;
/// First record of a repair batch: the bytes from an offset up to the
/// repair batch are a damaged tail that replay skips.
pub const KIND_DISCARD: u8 = 9;
/// Highest record kind.
const KIND_MAX: u8 = KIND_DISCARD;

/// Record flag: the last record of its batch.
pub const FLAG_LAST: u8 = 0x01;

const UPDATE_HAS_SNAPSHOT: u8 = 0x01;
const UPDATE_HAS_HARD_STATE: u8 = 0x02;
const UPDATE_CLEAR_RECOVERY: u8 = 0x04;

const GUARD_PRESENT: u8 = 0x01;
const GUARD_ACKED_KNOWN: u8 = 0x02;

/// Batch header summary flags of an update.
const SUMMARY_SNAPSHOT: u8 = 0x01;
const SUMMARY_HARD_STATE: u8 = 0x02;
const SUMMARY_ENTRIES: u8 = 0x04;
const SUMMARY_CLEAR_RECOVERY: u8 = 0x08;

/// Offset of the batch start field in a batch header record (after the
/// record header and the copy byte).
pub(crate) const BATCH_START_FIELD: usize = RECORD_HEADER_BYTES + 1;
/// Bytes of a batch header payload before its summaries: copy (1), batch
/// start (8), batch length (4).
const BATCH_HEADER_FIXED_BYTES: usize = 13;

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
    if !(KIND_CHECKPOINT..=KIND_MAX).contains(&kind) {
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
    let mut found = false;
    let scanned = scan_valid_records(buf, from, seed, |_, _| {
        found = true;
        std::ops::ControlFlow::Break(())
    });
    scanned.is_err() || found
}

/// The search behind [`valid_record_after`] and [`valid_records_after`]:
/// calls `visit` with each valid record starting in `buf[from..]` (offset
/// and header) until it breaks. `Err(())` when the checksum budget ran out
/// first.
fn scan_valid_records(
    buf: &[u8],
    from: usize,
    seed: u32,
    mut visit: impl FnMut(usize, RecordHeader) -> std::ops::ControlFlow<()>,
) -> Result<(), ()> {
    let mut p = from;
    let mut budget = 2 * buf.len() as u64 + 4096;
    while p + RECORD_HEADER_BYTES <= buf.len() {
        let h = &buf[p..];
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as u64;
        let plausible = (KIND_CHECKPOINT..=KIND_MAX).contains(&h[8])
            && h[9] & !FLAG_LAST == 0
            && h[10] == 0
            && h[11] == 0
            && len <= RECORD_PAYLOAD_MAX as u64
            && RECORD_HEADER_BYTES as u64 + len <= h.len() as u64;
        if plausible {
            if budget < len {
                return Err(());
            }
            budget -= len;
            if let Ok(rh) = check_record(h, seed)
                && visit(p, rh).is_break()
            {
                return Ok(());
            }
        }
        p += 1;
    }
    Ok(())
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
    clear_recovery: bool,
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
    if clear_recovery {
        flags |= UPDATE_CLEAR_RECOVERY;
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
            clear_recovery,
        } => {
            encode_update_payload(
                *key,
                snapshot.as_ref(),
                hard_state.as_ref(),
                *clear_recovery,
                entries,
                out,
            );
            KIND_UPDATE
        }
        Op::SetGuard { key, guard } => {
            put_key(*key, out);
            put_guard(guard, out);
            KIND_SET_GUARD
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
    /// Its recovery guard.
    pub recovery: Option<RecoveryGuard>,
}

/// Appends a recovery guard: flags (bit 0: acked_through known), restart
/// term, [acked_through].
fn put_guard(g: &RecoveryGuard, out: &mut Vec<u8>) {
    out.push(u8::from(g.acked_through.is_some()));
    put_uvarint(out, g.restart_term.0);
    if let Some(a) = g.acked_through {
        put_uvarint(out, a.0);
    }
}

fn get_guard(d: &mut Decoder<'_>) -> Result<RecoveryGuard, DecodeError> {
    let flags = d.u8()?;
    if flags & !1 != 0 {
        return Err(DecodeError::Invalid("reserved guard flag bits set"));
    }
    let restart_term = Term(d.uvarint()?);
    let acked_through = if flags & 1 != 0 {
        Some(Index(d.uvarint()?))
    } else {
        None
    };
    Ok(RecoveryGuard {
        acked_through,
        restart_term,
    })
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
    match &c.recovery {
        None => out.push(0),
        Some(g) => {
            let mut flags = GUARD_PRESENT;
            if g.acked_through.is_some() {
                flags |= GUARD_ACKED_KNOWN;
            }
            out.push(flags);
            put_uvarint(out, g.restart_term.0);
            if let Some(a) = g.acked_through {
                put_uvarint(out, a.0);
            }
        }
    }
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
    /// Forget the recovery guard (after the hard state).
    pub clear_recovery: bool,
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
    /// One copy of a batch header.
    BatchHeader(BatchHeader),
    /// The bytes from `from` up to the batch holding this record are a
    /// damaged tail that replay skips.
    Discard {
        /// Offset of the first skipped byte.
        from: u64,
    },
}

fn get_key(d: &mut Decoder<'_>) -> Result<Key, DecodeError> {
    Ok((ShardId(d.uvarint()?), ReplicaId(d.uvarint()?)))
}

fn decode_update_header(d: &mut Decoder<'_>) -> Result<UpdateHeader, DecodeError> {
    let key = get_key(d)?;
    let flags = d.u8()?;
    if flags & !(UPDATE_HAS_SNAPSHOT | UPDATE_HAS_HARD_STATE | UPDATE_CLEAR_RECOVERY) != 0 {
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
        clear_recovery: flags & UPDATE_CLEAR_RECOVERY != 0,
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
        let guard_flags = d.u8()?;
        if guard_flags & !(GUARD_PRESENT | GUARD_ACKED_KNOWN) != 0
            || guard_flags == GUARD_ACKED_KNOWN
        {
            return Err(DecodeError::Invalid("bad checkpoint guard flags"));
        }
        let recovery = if guard_flags & GUARD_PRESENT != 0 {
            let restart_term = Term(d.uvarint()?);
            let acked_through = if guard_flags & GUARD_ACKED_KNOWN != 0 {
                Some(Index(d.uvarint()?))
            } else {
                None
            };
            Some(RecoveryGuard {
                acked_through,
                restart_term,
            })
        } else {
            None
        };
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
            recovery,
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
            if h.snapshot.is_some() || h.hard_state.is_some() || h.clear_recovery || h.count == 0 {
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
        KIND_SET_GUARD => {
            let key = get_key(&mut d)?;
            Record::Op(Op::SetGuard {
                key,
                guard: get_guard(&mut d)?,
            })
        }
        KIND_BATCH_HEADER => Record::BatchHeader(decode_batch_header(&mut d)?),
        KIND_DISCARD => Record::Discard { from: d.u64_le()? },
        _ => return Err(DecodeError::Invalid("unknown record kind")),
    };
    d.finish()?;
    Ok(rec)
}

/// What one record of a batch changes, as its batch header lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Summary {
    /// An update (kind [`KIND_UPDATE`]) or relocation ([`KIND_RELOCATE`]).
    Update {
        /// [`KIND_UPDATE`] or [`KIND_RELOCATE`].
        kind: u8,
        /// The replica.
        key: Key,
        /// Index and term of a snapshot to install.
        snapshot: Option<(Index, Term)>,
        /// The hard state it sets.
        hard_state: Option<HardState>,
        /// First and last index of its entries.
        entries: Option<(Index, Index)>,
        /// Whether it forgets the recovery guard.
        clear_recovery: bool,
    },
    /// A snapshot taken locally, at this index.
    SaveSnapshot {
        /// The replica.
        key: Key,
        /// The snapshot's index.
        index: Index,
    },
    /// A compaction up to this index.
    Compact {
        /// The replica.
        key: Key,
        /// Last index removed.
        index: Index,
    },
    /// A removal.
    Remove {
        /// The replica.
        key: Key,
    },
    /// A recovery guard set.
    SetGuard {
        /// The replica.
        key: Key,
    },
    /// A discard record (repair batches only).
    Discard {
        /// Offset of the first skipped byte.
        from: u64,
    },
}

impl Summary {
    /// The record kind it summarises.
    pub fn kind(&self) -> u8 {
        match self {
            Summary::Update { kind, .. } => *kind,
            Summary::SaveSnapshot { .. } => KIND_SAVE_SNAPSHOT,
            Summary::Compact { .. } => KIND_COMPACT,
            Summary::Remove { .. } => KIND_REMOVE,
            Summary::SetGuard { .. } => KIND_SET_GUARD,
            Summary::Discard { .. } => KIND_DISCARD,
        }
    }

    /// The replica it concerns, if any.
    pub fn key(&self) -> Option<Key> {
        match self {
            Summary::Update { key, .. }
            | Summary::SaveSnapshot { key, .. }
            | Summary::Compact { key, .. }
            | Summary::Remove { key }
            | Summary::SetGuard { key } => Some(*key),
            Summary::Discard { .. } => None,
        }
    }

    /// The summary of an op's record.
    pub fn of_op(op: &Op) -> Summary {
        match op {
            Op::Update {
                key,
                snapshot,
                entries,
                hard_state,
                clear_recovery,
            } => Summary::Update {
                kind: KIND_UPDATE,
                key: *key,
                snapshot: snapshot.as_ref().map(|s| (s.index, s.term)),
                hard_state: *hard_state,
                entries: entries
                    .first()
                    .zip(entries.last())
                    .map(|(f, l)| (f.index, l.index)),
                clear_recovery: *clear_recovery,
            },
            Op::SetGuard { key, .. } => Summary::SetGuard { key: *key },
            Op::SaveSnapshot { key, meta } => Summary::SaveSnapshot {
                key: *key,
                index: meta.index,
            },
            Op::Compact { key, index } => Summary::Compact {
                key: *key,
                index: *index,
            },
            Op::Remove { key } => Summary::Remove { key: *key },
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind());
        match self {
            Summary::Update {
                key,
                snapshot,
                hard_state,
                entries,
                clear_recovery,
                ..
            } => {
                put_key(*key, out);
                let mut flags = 0;
                if snapshot.is_some() {
                    flags |= SUMMARY_SNAPSHOT;
                }
                if hard_state.is_some() {
                    flags |= SUMMARY_HARD_STATE;
                }
                if entries.is_some() {
                    flags |= SUMMARY_ENTRIES;
                }
                if *clear_recovery {
                    flags |= SUMMARY_CLEAR_RECOVERY;
                }
                out.push(flags);
                if let Some((i, t)) = snapshot {
                    put_uvarint(out, i.0);
                    put_uvarint(out, t.0);
                }
                if let Some(h) = hard_state {
                    encode_hard_state(h, out);
                }
                if let Some((f, l)) = entries {
                    put_uvarint(out, f.0);
                    put_uvarint(out, l.0);
                }
            }
            Summary::SaveSnapshot { key, index } | Summary::Compact { key, index } => {
                put_key(*key, out);
                put_uvarint(out, index.0);
            }
            Summary::Remove { key } | Summary::SetGuard { key } => put_key(*key, out),
            Summary::Discard { from } => put_uvarint(out, *from),
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Summary, DecodeError> {
        let kind = d.u8()?;
        Ok(match kind {
            KIND_UPDATE | KIND_RELOCATE => {
                let key = get_key(d)?;
                let flags = d.u8()?;
                if flags
                    & !(SUMMARY_SNAPSHOT
                        | SUMMARY_HARD_STATE
                        | SUMMARY_ENTRIES
                        | SUMMARY_CLEAR_RECOVERY)
                    != 0
                {
                    return Err(DecodeError::Invalid("reserved summary flag bits set"));
                }
                let snapshot = if flags & SUMMARY_SNAPSHOT != 0 {
                    Some((Index(d.uvarint()?), Term(d.uvarint()?)))
                } else {
                    None
                };
                let hard_state = if flags & SUMMARY_HARD_STATE != 0 {
                    Some(decode_hard_state(d)?)
                } else {
                    None
                };
                let entries = if flags & SUMMARY_ENTRIES != 0 {
                    let (f, l) = (Index(d.uvarint()?), Index(d.uvarint()?));
                    if f.0 == 0 || l < f {
                        return Err(DecodeError::Invalid("bad entry range in a batch header"));
                    }
                    Some((f, l))
                } else {
                    None
                };
                Summary::Update {
                    kind,
                    key,
                    snapshot,
                    hard_state,
                    entries,
                    clear_recovery: flags & SUMMARY_CLEAR_RECOVERY != 0,
                }
            }
            KIND_SAVE_SNAPSHOT => Summary::SaveSnapshot {
                key: get_key(d)?,
                index: Index(d.uvarint()?),
            },
            KIND_COMPACT => Summary::Compact {
                key: get_key(d)?,
                index: Index(d.uvarint()?),
            },
            KIND_REMOVE => Summary::Remove { key: get_key(d)? },
            KIND_SET_GUARD => Summary::SetGuard { key: get_key(d)? },
            KIND_DISCARD => Summary::Discard { from: d.uvarint()? },
            _ => return Err(DecodeError::Invalid("bad record kind in a batch header")),
        })
    }
}

/// One copy of a batch header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    /// 0 for the first copy, 1 for the second.
    pub copy: u8,
    /// Offset of the batch (its first header copy) in the segment.
    pub start: u64,
    /// Bytes of the whole batch, both header copies included.
    pub len: u32,
    /// One summary per record after the two header copies, in order.
    pub items: Vec<Summary>,
}

impl BatchHeader {
    /// Whether `other` is the other copy of the same header.
    pub fn same_batch(&self, other: &BatchHeader) -> bool {
        self.start == other.start && self.len == other.len && self.items == other.items
    }

    /// Offset just past the batch.
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.len)
    }
}

fn decode_batch_header(d: &mut Decoder<'_>) -> Result<BatchHeader, DecodeError> {
    let copy = d.u8()?;
    if copy > 1 {
        return Err(DecodeError::Invalid("bad batch header copy number"));
    }
    let start = d.u64_le()?;
    let len = d.u32_le()?;
    // Every summary takes at least 2 bytes.
    let n = d.count("batch records", u64::MAX)?;
    let mut items = Vec::with_capacity(n.min(d.remaining() / 2));
    for _ in 0..n {
        items.push(Summary::decode(d)?);
    }
    if items.is_empty() {
        return Err(DecodeError::Invalid("batch without records"));
    }
    Ok(BatchHeader {
        copy,
        start,
        len,
        items,
    })
}

/// Builds a batch: two header copies, then one record per pushed item.
/// Seal it with [`seal_batch`] once its segment and offset are known.
#[derive(Default)]
pub(crate) struct BatchBuilder {
    records: Vec<u8>,
    spans: Vec<(usize, usize)>,
    summary: Vec<u8>,
    count: u64,
}

impl BatchBuilder {
    /// An empty builder with room for `capacity` bytes of records.
    pub fn with_capacity(capacity: usize) -> BatchBuilder {
        BatchBuilder {
            records: Vec::with_capacity(capacity),
            ..BatchBuilder::default()
        }
    }

    /// Appends a record of `kind` whose payload `payload` writes, listed
    /// in the header as `summary`.
    pub fn push(&mut self, summary: &Summary, payload: impl FnOnce(&mut Vec<u8>)) {
        let start = begin_record(&mut self.records, summary.kind());
        payload(&mut self.records);
        finish_record(&mut self.records, start);
        self.spans.push((start, self.records.len() - start));
        summary.encode(&mut self.summary);
        self.count += 1;
    }

    /// Appends the record of an op.
    pub fn push_op(&mut self, op: &Op) {
        let summary = Summary::of_op(op);
        self.push(&summary, |out| {
            encode_op_payload(op, out);
        });
    }

    /// Bytes of records so far.
    pub fn records_len(&self) -> usize {
        self.records.len()
    }

    /// The batch bytes and the `(offset, length)` of each pushed record in
    /// them. Panics if nothing was pushed.
    pub fn finish(self) -> (Vec<u8>, Vec<(usize, usize)>) {
        assert!(self.count > 0, "a batch holds at least one record");
        let mut payload = Vec::with_capacity(BATCH_HEADER_FIXED_BYTES + 10 + self.summary.len());
        payload.push(0);
        payload.extend_from_slice(&[0; 8]);
        payload.extend_from_slice(&[0; 4]);
        put_uvarint(&mut payload, self.count);
        payload.extend_from_slice(&self.summary);
        let header_bytes = 2 * (RECORD_HEADER_BYTES + payload.len());
        let total = header_bytes + self.records.len();
        let mut buf = Vec::with_capacity(total);
        for copy in 0..2u8 {
            let start = begin_record(&mut buf, KIND_BATCH_HEADER);
            buf.extend_from_slice(&payload);
            buf[start + RECORD_HEADER_BYTES] = copy;
            let len = (total as u64).min(u64::from(u32::MAX)) as u32;
            buf[start + RECORD_HEADER_BYTES + 9..start + RECORD_HEADER_BYTES + 13]
                .copy_from_slice(&len.to_le_bytes());
            finish_record(&mut buf, start);
        }
        buf.extend_from_slice(&self.records);
        let spans = self
            .spans
            .into_iter()
            .map(|(o, l)| (o + header_bytes, l))
            .collect();
        (buf, spans)
    }
}

/// Seals a batch built by [`BatchBuilder`] that goes to offset `start` of
/// the segment with CRC seed `seed`: sets the batch start in both header
/// copies, flags the last record and checksums every record.
pub(crate) fn seal_batch(buf: &mut [u8], start: u64, seed: u32) {
    let mut pos = 0;
    let mut copies = 0;
    // Bounded: every round moves past one record of the batch.
    while pos < buf.len() {
        let len = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let end = pos + RECORD_HEADER_BYTES + len;
        if copies < 2 {
            buf[pos + BATCH_START_FIELD..pos + BATCH_START_FIELD + 8]
                .copy_from_slice(&start.to_le_bytes());
            copies += 1;
        }
        let flags = if end == buf.len() { FLAG_LAST } else { 0 };
        seal_record(&mut buf[pos..end], flags, seed);
        pos = end;
    }
}

/// Reads the record at `buf[pos..]` if it is valid and decodes it as a
/// batch header copy (`None` otherwise). A first copy must name `pos` as
/// its start; a second one an earlier offset.
pub(crate) fn batch_header_at(buf: &[u8], pos: usize, seed: u32) -> Option<(BatchHeader, usize)> {
    let h = check_record(buf.get(pos..)?, seed).ok()?;
    if h.kind != KIND_BATCH_HEADER {
        return None;
    }
    let end = pos + RECORD_HEADER_BYTES + h.len as usize;
    let Ok(Record::BatchHeader(b)) = decode_record(h.kind, &buf[pos + RECORD_HEADER_BYTES..end])
    else {
        return None;
    };
    let placed = match b.copy {
        0 => b.start == pos as u64,
        _ => b.start < pos as u64,
    };
    placed.then_some((b, end))
}

/// Offsets of the valid records starting in `buf[from..]`, with their
/// headers, searched like [`valid_record_after`] (same budget). `Err(())`
/// when the budget ran out: the caller must then assume the worst.
pub(crate) fn valid_records_after(
    buf: &[u8],
    from: usize,
    seed: u32,
) -> Result<Vec<(usize, RecordHeader)>, ()> {
    let mut out = Vec::new();
    scan_valid_records(buf, from, seed, |p, rh| {
        out.push((p, rh));
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(out)
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
            clear_recovery: false,
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
    fn batch_headers_round_trip_and_locate_their_batch() {
        let key = (ShardId(3), ReplicaId(2));
        let ops = vec![
            Op::Update {
                key,
                snapshot: None,
                entries: vec![Entry {
                    index: Index(9),
                    term: Term(2),
                    ..Entry::default()
                }],
                hard_state: Some(HardState {
                    term: Term(2),
                    vote: ReplicaId(1),
                    commit: Index(8),
                }),
                clear_recovery: true,
            },
            Op::SetGuard {
                key,
                guard: RecoveryGuard {
                    acked_through: None,
                    restart_term: Term(2),
                },
            },
        ];
        let mut b = BatchBuilder::default();
        for op in &ops {
            b.push_op(op);
        }
        let (mut buf, spans) = b.finish();
        let at = 4096usize;
        seal_batch(&mut buf, at as u64, segment_seed(5));
        let mut seg = vec![0u8; at];
        seg.extend_from_slice(&buf);
        let (h0, end0) = batch_header_at(&seg, at, segment_seed(5)).unwrap();
        let (h1, _) = batch_header_at(&seg, end0, segment_seed(5)).unwrap();
        assert_eq!((h0.copy, h1.copy), (0, 1));
        assert!(h0.same_batch(&h1));
        assert_eq!(h0.end(), seg.len() as u64);
        assert_eq!(h0.items, ops.iter().map(Summary::of_op).collect::<Vec<_>>());
        // A copy 0 is valid only where it says it is.
        let mut moved = vec![0u8; 8];
        moved.extend_from_slice(&seg[at..]);
        assert!(batch_header_at(&moved, 8, segment_seed(5)).is_none());
        // Only the last record is flagged.
        let (last_off, _) = spans[spans.len() - 1];
        assert_eq!(buf[last_off + 9], FLAG_LAST);
        assert_eq!(buf[spans[0].0 + 9], 0);
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
            kind in 0u8..11,
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
            kind in 1u8..=9,
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
