//! Binary codec for entries, hard state, membership, snapshot metadata,
//! config changes, messages and message batches.
//!
//! This is longship's wire and disk format; every byte is documented in
//! `docs/formats.md` ("Wire and entry codec"). Integers are unsigned LEB128
//! varints ("uvarints") where values are mostly small, little-endian fixed
//! width otherwise. Decoders take untrusted input: every length and count is
//! checked against [`Limits`] and against the bytes actually left before
//! anything is allocated, every loop is bounded by the input length, unknown
//! enum values, reserved bits, non-canonical encodings and trailing bytes are
//! rejected, and no byte sequence makes a decoder panic.
//!
//! The element encodings (entry, hard state, membership, snapshot metadata,
//! message) carry no version of their own: they are versioned by the
//! container that holds them — [`MESSAGE_BATCH_VERSION`] on the wire, and
//! [`ENTRY_FORMAT_VERSION`], which log storage and snapshot files record in
//! their own headers. A [`ConfigChange`] payload starts with its own version
//! byte because it lives inside entry payloads forever.

use bytes::Bytes;

use crate::entry::{Entry, EntryType, HardState, SnapshotMeta};
use crate::ids::{Index, ReplicaId, ShardId, Term};
use crate::membership::{ConfigChange, ConfigChangeType, Membership};
use crate::message::{MESSAGE_BATCH_VERSION, Message, MessageBatch, MessageType};

/// Version of the element encodings (entry, hard state, membership, snapshot
/// metadata, message). Containers that persist them (log storage, snapshot
/// files) record it and refuse versions they do not know.
pub const ENTRY_FORMAT_VERSION: u32 = 1;

/// Version byte at the start of an encoded [`ConfigChange`].
pub const CONFIG_CHANGE_VERSION: u8 = 1;

/// The four bytes that start every encoded [`MessageBatch`]: `"LSMB"`.
pub const BATCH_MAGIC: [u8; 4] = *b"LSMB";

/// Longest possible uvarint encoding of a `u64`.
pub const MAX_UVARINT_LEN: usize = 10;

/// Why a byte sequence could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the value was complete.
    #[error("truncated input: the value continues past the end of the bytes")]
    Truncated,
    /// A length or count exceeds its limit; nothing was allocated for it.
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// The length or count the input claimed.
        len: u64,
        /// The limit it exceeded.
        max: u64,
    },
    /// The bytes do not form a valid value.
    #[error("invalid encoding: {0}")]
    Invalid(&'static str),
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    BadChecksum {
        /// The checksum stored in the input.
        expected: u32,
        /// The checksum computed over the input.
        actual: u32,
    },
    /// The format version is not one this build can read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// The input does not start with the expected magic bytes.
    #[error("bad magic bytes: not a longship message batch")]
    BadMagic,
    /// Bytes were left over after a complete value.
    #[error("{0} unexpected trailing bytes after the value")]
    TrailingBytes(usize),
}

/// Limits applied while decoding untrusted bytes.
///
/// Every length and count read from the input is compared with its limit
/// before anything is allocated for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload (`Entry::cmd`) of one entry, in bytes.
    pub max_payload_bytes: u64,
    /// Most entries in one message (or one entry list).
    pub max_entries: u64,
    /// Most messages in one batch.
    pub max_messages: u64,
    /// Longest string (raft addresses), in bytes.
    pub max_string_bytes: u64,
    /// Most replicas in each set of one membership (voters, non-voting,
    /// witnesses, removed).
    pub max_members: u64,
}

impl Default for Limits {
    /// Production defaults: 64 MiB payload, 2^20 entries per message, 2^20
    /// messages per batch, 256-byte addresses, 2^16 members per set.
    fn default() -> Limits {
        Limits {
            max_payload_bytes: 64 << 20,
            max_entries: 1 << 20,
            max_messages: 1 << 20,
            max_string_bytes: 256,
            max_members: 1 << 16,
        }
    }
}

// ---------------------------------------------------------------------------
// Primitive encoding.

/// Appends `v` as an unsigned LEB128 varint (1 to 10 bytes).
#[inline]
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes [`put_uvarint`] writes for `v`.
#[inline]
pub const fn uvarint_len(v: u64) -> usize {
    // 1 byte per started group of 7 significant bits; 0 takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `v` as 4 little-endian bytes.
#[inline]
pub fn put_u32_le(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` as 8 little-endian bytes.
#[inline]
pub fn put_u64_le(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `b` prefixed with its length as a uvarint.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

// ---------------------------------------------------------------------------
// Primitive decoding.

/// A cursor over untrusted bytes, carrying the [`Limits`] to apply.
///
/// Every read checks the bytes left first and fails with
/// [`DecodeError::Truncated`] instead of panicking.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    limits: Limits,
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `buf`.
    pub fn new(buf: &'a [u8], limits: Limits) -> Decoder<'a> {
        Decoder {
            buf,
            pos: 0,
            limits,
        }
    }

    /// The limits this decoder applies.
    #[inline]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes not yet consumed.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes consumed so far (offset of the next read).
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Reads exactly `n` bytes.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads one byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a 4-byte little-endian integer.
    pub fn u32_le(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.raw(4)?);
        Ok(u32::from_le_bytes(a))
    }

    /// Reads an 8-byte little-endian integer.
    pub fn u64_le(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.raw(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads a uvarint. Rejects encodings longer than 10 bytes, values over
    /// `u64::MAX` and non-canonical (zero-padded) encodings.
    pub fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..MAX_UVARINT_LEN {
            let b = self.u8()?;
            if i == MAX_UVARINT_LEN - 1 && b > 1 {
                return Err(DecodeError::Invalid("uvarint overflows u64"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::Invalid("non-canonical uvarint"));
                }
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("uvarint longer than 10 bytes"))
    }

    /// Reads a uvarint-length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: u64) -> Result<&'a [u8], DecodeError> {
        self.bytes_named("byte string", max)
    }

    /// Like [`Decoder::bytes`], naming the value in a `TooLarge` error.
    pub fn bytes_named(&mut self, what: &'static str, max: u64) -> Result<&'a [u8], DecodeError> {
        let len = self.uvarint()?;
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        if len > self.remaining() as u64 {
            return Err(DecodeError::Truncated);
        }
        // `len <= remaining()`, which is a usize.
        self.raw(len as usize)
    }

    /// Reads a length-prefixed UTF-8 string of at most `max_string_bytes`.
    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes_named(what, self.limits.max_string_bytes)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::Invalid("string is not UTF-8")),
        }
    }

    /// Reads an element count: at most `max`, and at most the bytes left
    /// (every element takes at least one byte), so a count can never make
    /// the caller loop or allocate beyond the input.
    pub fn count(&mut self, what: &'static str, max: u64) -> Result<usize, DecodeError> {
        let n = self.uvarint()?;
        if n > max {
            return Err(DecodeError::TooLarge { what, len: n, max });
        }
        if n > self.remaining() as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(n as usize)
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Decodes `buf` with `f` and requires that it consumes every byte.
pub fn decode_exact<'a, T>(
    buf: &'a [u8],
    limits: &Limits,
    f: impl FnOnce(&mut Decoder<'a>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut d = Decoder::new(buf, *limits);
    let v = f(&mut d)?;
    d.finish()?;
    Ok(v)
}

/// A `Vec` for `n` decoded elements of at least `min_bytes` encoded bytes
/// each, with a capacity the input can actually fill.
fn bounded_vec<T>(d: &Decoder<'_>, n: usize, min_bytes: usize) -> Vec<T> {
    Vec::with_capacity(n.min(d.remaining() / min_bytes.max(1)))
}

/// Reads a uvarint that the encoder only writes when it is non-zero.
fn nonzero_uvarint(d: &mut Decoder<'_>, what: &'static str) -> Result<u64, DecodeError> {
    match d.uvarint()? {
        0 => Err(DecodeError::Invalid(what)),
        v => Ok(v),
    }
}

// ---------------------------------------------------------------------------
// Entry.

const ENTRY_TYPE_MASK: u8 = 0x0f;
const ENTRY_HAS_KEY: u8 = 0x10;
const ENTRY_HAS_CLIENT_ID: u8 = 0x20;
const ENTRY_HAS_SERIES_ID: u8 = 0x40;
const ENTRY_HAS_RESPONDED_TO: u8 = 0x80;

fn entry_flags(e: &Entry) -> u8 {
    let mut f = e.entry_type as u8;
    if e.key != 0 {
        f |= ENTRY_HAS_KEY;
    }
    if e.client_id != 0 {
        f |= ENTRY_HAS_CLIENT_ID;
    }
    if e.series_id != 0 {
        f |= ENTRY_HAS_SERIES_ID;
    }
    if e.responded_to != 0 {
        f |= ENTRY_HAS_RESPONDED_TO;
    }
    f
}

/// Appends the encoding of `e`: a flags byte (entry type and which optional
/// fields follow), term, index, the non-zero optional fields, then the
/// length-prefixed payload. Exactly [`encoded_entry_size`] bytes.
pub fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    out.reserve(encoded_entry_size(e));
    out.push(entry_flags(e));
    put_uvarint(out, e.term.0);
    put_uvarint(out, e.index.0);
    for v in [e.key, e.client_id, e.series_id, e.responded_to] {
        if v != 0 {
            put_uvarint(out, v);
        }
    }
    put_bytes(out, &e.cmd);
}

/// The exact number of bytes [`encode_entry`] writes for `e`.
pub fn encoded_entry_size(e: &Entry) -> usize {
    let optional: usize = [e.key, e.client_id, e.series_id, e.responded_to]
        .into_iter()
        .filter(|&v| v != 0)
        .map(uvarint_len)
        .sum();
    1 + uvarint_len(e.term.0)
        + uvarint_len(e.index.0)
        + optional
        + uvarint_len(e.cmd.len() as u64)
        + e.cmd.len()
}

/// Decodes one entry written by [`encode_entry`]; the payload is copied out
/// of the input and may be at most `max_payload_bytes`.
pub fn decode_entry(d: &mut Decoder<'_>) -> Result<Entry, DecodeError> {
    let flags = d.u8()?;
    let entry_type = EntryType::from_u8(flags & ENTRY_TYPE_MASK)
        .ok_or(DecodeError::Invalid("unknown entry type"))?;
    let term = Term(d.uvarint()?);
    let index = Index(d.uvarint()?);
    let mut optional = [0u64; 4];
    let bits = [
        ENTRY_HAS_KEY,
        ENTRY_HAS_CLIENT_ID,
        ENTRY_HAS_SERIES_ID,
        ENTRY_HAS_RESPONDED_TO,
    ];
    for (slot, bit) in optional.iter_mut().zip(bits) {
        if flags & bit != 0 {
            *slot = nonzero_uvarint(d, "entry field flagged present but zero")?;
        }
    }
    let max = d.limits().max_payload_bytes;
    let cmd = d.bytes_named("entry payload", max)?;
    let [key, client_id, series_id, responded_to] = optional;
    Ok(Entry {
        term,
        index,
        entry_type,
        key,
        client_id,
        series_id,
        responded_to,
        cmd: Bytes::copy_from_slice(cmd),
    })
}

/// Smallest possible encoded entry: flags, term, index, payload length.
const MIN_ENTRY_BYTES: usize = 4;

/// Appends a uvarint count followed by each entry.
pub fn encode_entries(entries: &[Entry], out: &mut Vec<u8>) {
    put_uvarint(out, entries.len() as u64);
    for e in entries {
        encode_entry(e, out);
    }
}

/// Decodes a list written by [`encode_entries`] (at most `max_entries`).
pub fn decode_entries(d: &mut Decoder<'_>) -> Result<Vec<Entry>, DecodeError> {
    let max = d.limits().max_entries;
    let n = d.count("entry count", max)?;
    let mut v = bounded_vec(d, n, MIN_ENTRY_BYTES);
    for _ in 0..n {
        v.push(decode_entry(d)?);
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// Hard state.

/// Appends term, vote and commit as three uvarints.
pub fn encode_hard_state(h: &HardState, out: &mut Vec<u8>) {
    put_uvarint(out, h.term.0);
    put_uvarint(out, h.vote.0);
    put_uvarint(out, h.commit.0);
}

/// Decodes a hard state written by [`encode_hard_state`].
pub fn decode_hard_state(d: &mut Decoder<'_>) -> Result<HardState, DecodeError> {
    Ok(HardState {
        term: Term(d.uvarint()?),
        vote: ReplicaId(d.uvarint()?),
        commit: Index(d.uvarint()?),
    })
}

// ---------------------------------------------------------------------------
// Membership.

fn encode_member_map(m: &std::collections::BTreeMap<ReplicaId, String>, out: &mut Vec<u8>) {
    put_uvarint(out, m.len() as u64);
    for (id, addr) in m {
        put_uvarint(out, id.0);
        put_bytes(out, addr.as_bytes());
    }
}

/// Reads replica ids that must be strictly ascending (which also rules out
/// duplicates, so decoding is exact).
fn ascending_id(d: &mut Decoder<'_>, prev: Option<ReplicaId>) -> Result<ReplicaId, DecodeError> {
    let id = ReplicaId(d.uvarint()?);
    if prev.is_some_and(|p| id <= p) {
        return Err(DecodeError::Invalid(
            "membership ids not strictly ascending",
        ));
    }
    Ok(id)
}

fn decode_member_map(
    d: &mut Decoder<'_>,
) -> Result<std::collections::BTreeMap<ReplicaId, String>, DecodeError> {
    let max = d.limits().max_members;
    let n = d.count("membership set size", max)?;
    let mut m = std::collections::BTreeMap::new();
    let mut prev = None;
    for _ in 0..n {
        let id = ascending_id(d, prev)?;
        let addr = d.string("replica address")?;
        m.insert(id, addr);
        prev = Some(id);
    }
    Ok(m)
}

/// Appends `config_change_id`, then voters, non-voting replicas and
/// witnesses (each a count and `(id, address)` pairs in ascending id order),
/// then the removed ids (a count and ascending ids).
pub fn encode_membership(m: &Membership, out: &mut Vec<u8>) {
    put_uvarint(out, m.config_change_id.0);
    encode_member_map(&m.voters, out);
    encode_member_map(&m.non_votings, out);
    encode_member_map(&m.witnesses, out);
    put_uvarint(out, m.removed.len() as u64);
    for id in &m.removed {
        put_uvarint(out, id.0);
    }
}

/// Decodes a membership written by [`encode_membership`]; rejects ids out of
/// order and memberships whose sets overlap ([`Membership::is_consistent`]).
pub fn decode_membership(d: &mut Decoder<'_>) -> Result<Membership, DecodeError> {
    let config_change_id = Index(d.uvarint()?);
    let voters = decode_member_map(d)?;
    let non_votings = decode_member_map(d)?;
    let witnesses = decode_member_map(d)?;
    let max = d.limits().max_members;
    let n = d.count("removed set size", max)?;
    let mut removed = std::collections::BTreeSet::new();
    let mut prev = None;
    for _ in 0..n {
        let id = ascending_id(d, prev)?;
        removed.insert(id);
        prev = Some(id);
    }
    let m = Membership {
        config_change_id,
        voters,
        non_votings,
        witnesses,
        removed,
    };
    if !m.is_consistent() {
        return Err(DecodeError::Invalid("membership sets overlap"));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------
// Snapshot metadata.

const SNAPSHOT_WITNESS: u8 = 0x01;

/// Appends index, term, a flags byte (bit 0: witness), `on_disk_index`,
/// `file_size` and the membership.
pub fn encode_snapshot_meta(s: &SnapshotMeta, out: &mut Vec<u8>) {
    put_uvarint(out, s.index.0);
    put_uvarint(out, s.term.0);
    out.push(if s.witness { SNAPSHOT_WITNESS } else { 0 });
    put_uvarint(out, s.on_disk_index.0);
    put_uvarint(out, s.file_size);
    encode_membership(&s.membership, out);
}

/// Decodes snapshot metadata written by [`encode_snapshot_meta`].
pub fn decode_snapshot_meta(d: &mut Decoder<'_>) -> Result<SnapshotMeta, DecodeError> {
    let index = Index(d.uvarint()?);
    let term = Term(d.uvarint()?);
    let flags = d.u8()?;
    if flags & !SNAPSHOT_WITNESS != 0 {
        return Err(DecodeError::Invalid("reserved snapshot flag bits set"));
    }
    let on_disk_index = Index(d.uvarint()?);
    let file_size = d.uvarint()?;
    let membership = decode_membership(d)?;
    Ok(SnapshotMeta {
        index,
        term,
        membership,
        on_disk_index,
        witness: flags & SNAPSHOT_WITNESS != 0,
        file_size,
    })
}

// ---------------------------------------------------------------------------
// Config change.

/// Encodes a config change as a whole buffer (an `Entry::cmd` payload):
/// version byte, change type, replica id, `config_change_id`, address.
pub fn encode_config_change(cc: &ConfigChange) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 2 * MAX_UVARINT_LEN + 2 + cc.address.len());
    out.push(CONFIG_CHANGE_VERSION);
    out.push(cc.change_type as u8);
    put_uvarint(&mut out, cc.replica_id.0);
    put_uvarint(&mut out, cc.config_change_id.0);
    put_bytes(&mut out, cc.address.as_bytes());
    out
}

/// Decodes a whole buffer written by [`encode_config_change`], with the
/// default [`Limits`]; rejects unknown versions, change types and trailing bytes.
pub fn decode_config_change(buf: &[u8]) -> Result<ConfigChange, DecodeError> {
    decode_exact(buf, &Limits::default(), |d| {
        let ver = d.u8()?;
        if ver != CONFIG_CHANGE_VERSION {
            return Err(DecodeError::UnsupportedVersion(u32::from(ver)));
        }
        let change_type = ConfigChangeType::from_u8(d.u8()?)
            .ok_or(DecodeError::Invalid("unknown config change type"))?;
        let replica_id = ReplicaId(d.uvarint()?);
        let config_change_id = Index(d.uvarint()?);
        let address = d.string("replica address")?;
        Ok(ConfigChange {
            change_type,
            replica_id,
            address,
            config_change_id,
        })
    })
}

// ---------------------------------------------------------------------------
// Message.

// Bits of the message field-presence bitmap, in encoding order.
const MSG_TERM: u64 = 1 << 0;
const MSG_LOG_TERM: u64 = 1 << 1;
const MSG_LOG_INDEX: u64 = 1 << 2;
const MSG_COMMIT: u64 = 1 << 3;
const MSG_ENTRIES: u64 = 1 << 4;
const MSG_CONTEXT: u64 = 1 << 5;
const MSG_REJECT: u64 = 1 << 6;
const MSG_HINT: u64 = 1 << 7;
const MSG_HINT_TERM: u64 = 1 << 8;
const MSG_SNAPSHOT: u64 = 1 << 9;
const MSG_KNOWN_FIELDS: u64 = (1 << 10) - 1;

/// Smallest possible encoded message: type, fields, shard, from, to.
const MIN_MESSAGE_BYTES: usize = 5;

fn message_fields(m: &Message) -> u64 {
    let mut f = 0;
    for (present, bit) in [
        (m.term.0 != 0, MSG_TERM),
        (m.log_term.0 != 0, MSG_LOG_TERM),
        (m.log_index.0 != 0, MSG_LOG_INDEX),
        (m.commit.0 != 0, MSG_COMMIT),
        (!m.entries.is_empty(), MSG_ENTRIES),
        (m.context != 0, MSG_CONTEXT),
        (m.reject, MSG_REJECT),
        (m.hint.0 != 0, MSG_HINT),
        (m.hint_term.0 != 0, MSG_HINT_TERM),
        (m.snapshot.is_some(), MSG_SNAPSHOT),
    ] {
        if present {
            f |= bit;
        }
    }
    f
}

/// Appends the encoding of `m`: type byte, field-presence bitmap, shard,
/// from, to, then each present field in bitmap order. Zero fields, `false`
/// and empty entry lists take no bytes.
///
/// Local message types ([`MessageType::is_local`]) are encoded like any
/// other, but [`decode_message`] refuses them: they must never be sent.
pub fn encode_message(m: &Message, out: &mut Vec<u8>) {
    let fields = message_fields(m);
    out.push(m.msg_type as u8);
    put_uvarint(out, fields);
    put_uvarint(out, m.shard_id.0);
    put_uvarint(out, m.from.0);
    put_uvarint(out, m.to.0);
    for (v, bit) in [
        (m.term.0, MSG_TERM),
        (m.log_term.0, MSG_LOG_TERM),
        (m.log_index.0, MSG_LOG_INDEX),
        (m.commit.0, MSG_COMMIT),
    ] {
        if fields & bit != 0 {
            put_uvarint(out, v);
        }
    }
    if fields & MSG_ENTRIES != 0 {
        encode_entries(&m.entries, out);
    }
    for (v, bit) in [
        (m.context, MSG_CONTEXT),
        (m.hint.0, MSG_HINT),
        (m.hint_term.0, MSG_HINT_TERM),
    ] {
        if fields & bit != 0 {
            put_uvarint(out, v);
        }
    }
    if let Some(s) = &m.snapshot {
        encode_snapshot_meta(s, out);
    }
}

/// Decodes a message written by [`encode_message`]; rejects unknown and
/// local message types, unknown field bits, fields flagged present but zero
/// and entry lists flagged present but empty.
pub fn decode_message(d: &mut Decoder<'_>) -> Result<Message, DecodeError> {
    const ZERO: &str = "message field flagged present but zero";
    let msg_type =
        MessageType::from_u8(d.u8()?).ok_or(DecodeError::Invalid("unknown message type"))?;
    if msg_type.is_local() {
        return Err(DecodeError::Invalid("local-only message type on the wire"));
    }
    let fields = d.uvarint()?;
    if fields & !MSG_KNOWN_FIELDS != 0 {
        return Err(DecodeError::Invalid("unknown message field bits"));
    }
    let mut m = Message::new(
        msg_type,
        ShardId(d.uvarint()?),
        ReplicaId(d.uvarint()?),
        ReplicaId(d.uvarint()?),
    );
    let opt = |d: &mut Decoder<'_>, bit: u64| -> Result<u64, DecodeError> {
        if fields & bit != 0 {
            nonzero_uvarint(d, ZERO)
        } else {
            Ok(0)
        }
    };
    m.term = Term(opt(d, MSG_TERM)?);
    m.log_term = Term(opt(d, MSG_LOG_TERM)?);
    m.log_index = Index(opt(d, MSG_LOG_INDEX)?);
    m.commit = Index(opt(d, MSG_COMMIT)?);
    if fields & MSG_ENTRIES != 0 {
        m.entries = decode_entries(d)?;
        if m.entries.is_empty() {
            return Err(DecodeError::Invalid("entry list flagged present but empty"));
        }
    }
    m.context = opt(d, MSG_CONTEXT)?;
    m.reject = fields & MSG_REJECT != 0;
    m.hint = Index(opt(d, MSG_HINT)?);
    m.hint_term = Term(opt(d, MSG_HINT_TERM)?);
    if fields & MSG_SNAPSHOT != 0 {
        m.snapshot = Some(decode_snapshot_meta(d)?);
    }
    Ok(m)
}

// ---------------------------------------------------------------------------
// Message batch.

/// Bytes before the body of a batch: magic and version.
const BATCH_HEADER_BYTES: usize = 8;
/// Bytes of the trailing CRC32C.
const BATCH_CRC_BYTES: usize = 4;

/// Encodes a batch: magic, version, deployment id, source address, message
/// count, messages, and a CRC32C of all the bytes before it.
///
/// The version written is always [`MESSAGE_BATCH_VERSION`], the only
/// format this encoder produces; `b.bin_ver` is not consulted.
pub fn encode_batch(b: &MessageBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + b
            .messages
            .iter()
            .map(|m| m.size_bytes() as usize)
            .sum::<usize>(),
    );
    out.extend_from_slice(&BATCH_MAGIC);
    put_u32_le(&mut out, MESSAGE_BATCH_VERSION);
    put_u64_le(&mut out, b.deployment_id);
    put_bytes(&mut out, b.source_address.as_bytes());
    put_uvarint(&mut out, b.messages.len() as u64);
    for m in &b.messages {
        encode_message(m, &mut out);
    }
    let crc = crc32c::crc32c(&out);
    put_u32_le(&mut out, crc);
    out
}

/// Decodes a whole buffer written by [`encode_batch`].
///
/// Checks, in order: magic ([`DecodeError::BadMagic`]), version
/// ([`DecodeError::UnsupportedVersion`]), the CRC32C over everything before
/// it ([`DecodeError::BadChecksum`]), then the body under `limits`, which must
/// end exactly at the CRC ([`DecodeError::TrailingBytes`]).
pub fn decode_batch(buf: &[u8], limits: &Limits) -> Result<MessageBatch, DecodeError> {
    let mut d = Decoder::new(buf, *limits);
    if d.raw(BATCH_MAGIC.len())? != BATCH_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let bin_ver = d.u32_le()?;
    if bin_ver != MESSAGE_BATCH_VERSION {
        return Err(DecodeError::UnsupportedVersion(bin_ver));
    }
    let Some(body_end) = buf.len().checked_sub(BATCH_CRC_BYTES) else {
        return Err(DecodeError::Truncated);
    };
    if body_end < BATCH_HEADER_BYTES {
        return Err(DecodeError::Truncated);
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&buf[body_end..]);
    let expected = u32::from_le_bytes(crc);
    let actual = crc32c::crc32c(&buf[..body_end]);
    if expected != actual {
        return Err(DecodeError::BadChecksum { expected, actual });
    }
    let mut d = Decoder::new(&buf[..body_end], *limits);
    d.raw(BATCH_HEADER_BYTES)?;
    let deployment_id = d.u64_le()?;
    let source_address = d.string("source address")?;
    let n = d.count("message count", limits.max_messages)?;
    let mut messages = bounded_vec(&d, n, MIN_MESSAGE_BYTES);
    for _ in 0..n {
        messages.push(decode_message(&mut d)?);
    }
    d.finish()?;
    Ok(MessageBatch {
        deployment_id,
        source_address,
        bin_ver,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_len_matches_encoding() {
        for v in [0, 1, 127, 128, 16383, 16384, u64::MAX >> 1, u64::MAX] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(out.len(), uvarint_len(v), "{v}");
            let mut d = Decoder::new(&out, Limits::default());
            assert_eq!(d.uvarint(), Ok(v));
            assert_eq!(d.finish(), Ok(()));
        }
    }

    #[test]
    fn uvarint_rejects_overflow_and_padding() {
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(
            Decoder::new(&over, Limits::default()).uvarint(),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            Decoder::new(&[0x80, 0x00], Limits::default()).uvarint(),
            Err(DecodeError::Invalid(_))
        ));
        assert_eq!(
            Decoder::new(&[0x80], Limits::default()).uvarint(),
            Err(DecodeError::Truncated)
        );
    }
}
