//! The replicated key-value state machine and its command encoding.
//!
//! Every proposal is a *batch*: a versioned, ordered list of operations
//! ([`Op`]) on keys of one shard, applied in order inside one log entry.
//! Writes (SET, DEL, INCRBY, APPEND) and reads (GET, STRLEN, EXISTS,
//! DBSIZE) may be mixed: a read inside a batch executes at apply time, at
//! its place in the log, so it sees exactly the writes that precede it
//! (linearizable, and in the order the client sent). The entry's result
//! (`SmResult::data`) holds one encoded [`OpResult`] per executed
//! operation, in order (see [`encode_results`]).
//!
//! Lookups (`read_local` after a `read_index`) take a batch of reads only
//! and answer with the same result encoding.
//!
//! Reads inside a batch return at most [`MAX_BATCH_RESULT_BYTES`] of values
//! in all (a result stays in the replicated session table until the
//! client's next proposal, so it must stay small). When a read's value
//! would pass that budget, the batch *stops* at that read: the read and
//! every later op of the batch are not applied, and the result list is
//! shorter than the batch. The proposer then does that read with a
//! linearizable ReadIndex read and proposes the rest again; this keeps the
//! order and is deterministic on every replica.
//!
//! Every decoder takes untrusted bytes: bounded, never panics.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use longship::{SmEntry, SmError, StateMachine, StopFlag};

/// Result codes in `SmResult::value`.
pub mod status {
    /// Done: `SmResult::data` holds the encoded results.
    pub const OK: u64 = 0;
    /// The command could not be decoded (never proposed by this server).
    pub const BAD_COMMAND: u64 = 4;
}

/// First byte of a batch (tells it from the single-byte queries of [`query`]).
pub const BATCH_MAGIC: u8 = 0xb7;
/// Version of the batch encoding (second byte).
pub const BATCH_VERSION: u8 = 1;
/// Version of the result encoding (first byte of `SmResult::data`).
pub const RESULTS_VERSION: u8 = 1;
/// Bytes of a batch header: magic, version and the op count.
pub const BATCH_HEADER_BYTES: usize = 2 + 8;
/// Most bytes of values that reads inside one replicated batch return (see
/// the module docs: a bigger read stops the batch and is done by ReadIndex).
pub const MAX_BATCH_RESULT_BYTES: usize = 1 << 20;
/// Largest key or value a snapshot may hold (bounds recovery; the server
/// never lets a value grow past its `proto-max-bulk-len`, which is capped
/// at this).
pub const MAX_SNAPSHOT_ITEM_BYTES: u64 = 1 << 32;

/// Single-byte queries (outside batches).
pub mod query {
    /// A digest of the whole state (8 bytes LE), for consistency checks.
    pub const DIGEST: u8 = 3;
}

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// SET with NX (only if absent) / XX (only if present).
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Only if absent.
        nx: bool,
        /// Only if present.
        xx: bool,
    },
    /// DEL of one key: `Int(1)` if it existed, else `Int(0)`.
    Del {
        /// The key.
        key: Vec<u8>,
    },
    /// INCRBY: `Int(new value)`.
    IncrBy {
        /// The key.
        key: Vec<u8>,
        /// Added to the integer value.
        delta: i64,
    },
    /// APPEND: `Int(new length)`, or `TooLarge(max_len)` with the value
    /// unchanged when the new length would pass `max_len`.
    Append {
        /// The key.
        key: Vec<u8>,
        /// Appended bytes.
        value: Vec<u8>,
        /// Longest value allowed (the server's proto-max-bulk-len).
        max_len: u64,
    },
    /// GET: `Value(Some)` or `Value(None)`.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// STRLEN: `Int(length)` (0 when absent).
    Strlen {
        /// The key.
        key: Vec<u8>,
    },
    /// EXISTS of one key: `Int(0 or 1)`.
    Exists {
        /// The key.
        key: Vec<u8>,
    },
    /// Number of keys of the shard: `Int(n)`.
    DbSize,
}

mod tag {
    pub const SET: u8 = 1;
    pub const DEL: u8 = 2;
    pub const INCRBY: u8 = 3;
    pub const APPEND: u8 = 4;
    pub const GET: u8 = 16;
    pub const STRLEN: u8 = 17;
    pub const EXISTS: u8 = 18;
    pub const DBSIZE: u8 = 19;
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn take_u64(buf: &mut &[u8]) -> Option<u64> {
    let (head, rest) = buf.split_at_checked(8)?;
    *buf = rest;
    Some(u64::from_le_bytes(head.try_into().ok()?))
}

fn take_u8(buf: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = buf.split_first()?;
    *buf = rest;
    Some(b)
}

fn take<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = usize::try_from(take_u64(buf)?).ok()?;
    let (v, rest) = buf.split_at_checked(n)?;
    *buf = rest;
    Some(v)
}

impl Op {
    /// Whether the op changes the state.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Set { .. } | Op::Del { .. } | Op::IncrBy { .. } | Op::Append { .. }
        )
    }

    /// The key the op touches (`None` for DBSIZE).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Set { key, .. }
            | Op::Del { key }
            | Op::IncrBy { key, .. }
            | Op::Append { key, .. }
            | Op::Get { key }
            | Op::Strlen { key }
            | Op::Exists { key } => Some(key),
            Op::DbSize => None,
        }
    }

    /// Bytes of the op's encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Op::Set { key, value, .. } => 2 + 16 + key.len() + value.len(),
            Op::Append { key, value, .. } => 1 + 24 + key.len() + value.len(),
            Op::IncrBy { key, .. } => 1 + 16 + key.len(),
            Op::Del { key } | Op::Get { key } | Op::Strlen { key } | Op::Exists { key } => {
                1 + 8 + key.len()
            }
            Op::DbSize => 1,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Op::Set { key, value, nx, xx } => {
                out.push(tag::SET);
                out.push((*nx as u8) | ((*xx as u8) << 1));
                put(out, key);
                put(out, value);
            }
            Op::Del { key } => {
                out.push(tag::DEL);
                put(out, key);
            }
            Op::IncrBy { key, delta } => {
                out.push(tag::INCRBY);
                put(out, key);
                out.extend_from_slice(&delta.to_le_bytes());
            }
            Op::Append {
                key,
                value,
                max_len,
            } => {
                out.push(tag::APPEND);
                put(out, key);
                put(out, value);
                out.extend_from_slice(&max_len.to_le_bytes());
            }
            Op::Get { key } => {
                out.push(tag::GET);
                put(out, key);
            }
            Op::Strlen { key } => {
                out.push(tag::STRLEN);
                put(out, key);
            }
            Op::Exists { key } => {
                out.push(tag::EXISTS);
                put(out, key);
            }
            Op::DbSize => out.push(tag::DBSIZE),
        }
    }

    fn decode_from(buf: &mut &[u8]) -> Option<Op> {
        Some(match take_u8(buf)? {
            tag::SET => {
                let flags = take_u8(buf)?;
                if flags > 3 {
                    return None;
                }
                let key = take(buf)?.to_vec();
                let value = take(buf)?.to_vec();
                Op::Set {
                    key,
                    value,
                    nx: flags & 1 != 0,
                    xx: flags & 2 != 0,
                }
            }
            tag::DEL => Op::Del {
                key: take(buf)?.to_vec(),
            },
            tag::INCRBY => {
                let key = take(buf)?.to_vec();
                let delta = take_u64(buf)? as i64;
                Op::IncrBy { key, delta }
            }
            tag::APPEND => {
                let key = take(buf)?.to_vec();
                let value = take(buf)?.to_vec();
                let max_len = take_u64(buf)?;
                Op::Append {
                    key,
                    value,
                    max_len,
                }
            }
            tag::GET => Op::Get {
                key: take(buf)?.to_vec(),
            },
            tag::STRLEN => Op::Strlen {
                key: take(buf)?.to_vec(),
            },
            tag::EXISTS => Op::Exists {
                key: take(buf)?.to_vec(),
            },
            tag::DBSIZE => Op::DbSize,
            _ => return None,
        })
    }
}

/// Encodes an ordered list of ops as one batch (a proposal payload or a
/// lookup query). Its length is `BATCH_HEADER_BYTES` plus the ops' `encoded_len`.
pub fn encode_batch(ops: &[Op]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(BATCH_HEADER_BYTES + ops.iter().map(Op::encoded_len).sum::<usize>());
    out.push(BATCH_MAGIC);
    out.push(BATCH_VERSION);
    out.extend_from_slice(&(ops.len() as u64).to_le_bytes());
    for op in ops {
        op.encode_into(&mut out);
    }
    out
}

/// Decodes a batch (untrusted bytes: bounded by their length, never panics).
pub fn decode_batch(mut buf: &[u8]) -> Option<Vec<Op>> {
    if take_u8(&mut buf)? != BATCH_MAGIC || take_u8(&mut buf)? != BATCH_VERSION {
        return None;
    }
    let n = take_u64(&mut buf)?;
    // Every op takes at least one byte: no count can allocate past the input.
    if n > buf.len() as u64 {
        return None;
    }
    let mut ops = Vec::with_capacity(n as usize);
    for _ in 0..n {
        ops.push(Op::decode_from(&mut buf)?);
    }
    buf.is_empty().then_some(ops)
}

/// The outcome of one op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Done (SET).
    Ok,
    /// SET NX/XX condition not met: nothing written.
    NotSet,
    /// An integer (INCRBY, APPEND, DEL, STRLEN, EXISTS, DBSIZE).
    Int(i64),
    /// A value or its absence (GET).
    Value(Option<Vec<u8>>),
    /// INCRBY on a value that is not an integer.
    NotInteger,
    /// INCRBY would overflow.
    Overflow,
    /// APPEND would make the value longer than this limit: nothing written.
    TooLarge(u64),
}

mod rtag {
    pub const OK: u8 = 0;
    pub const NOT_SET: u8 = 1;
    pub const INT: u8 = 2;
    pub const VALUE: u8 = 3;
    pub const NIL: u8 = 4;
    pub const NOT_INTEGER: u8 = 5;
    pub const OVERFLOW: u8 = 6;
    pub const TOO_LARGE: u8 = 7;
}

/// Encodes results: version, count (8 bytes LE), then each result.
pub fn encode_results(results: &[OpResult]) -> Vec<u8> {
    let mut out = vec![RESULTS_VERSION];
    out.extend_from_slice(&(results.len() as u64).to_le_bytes());
    for r in results {
        match r {
            OpResult::Ok => out.push(rtag::OK),
            OpResult::NotSet => out.push(rtag::NOT_SET),
            OpResult::Int(n) => {
                out.push(rtag::INT);
                out.extend_from_slice(&n.to_le_bytes());
            }
            OpResult::Value(Some(v)) => {
                out.push(rtag::VALUE);
                put(&mut out, v);
            }
            OpResult::Value(None) => out.push(rtag::NIL),
            OpResult::NotInteger => out.push(rtag::NOT_INTEGER),
            OpResult::Overflow => out.push(rtag::OVERFLOW),
            OpResult::TooLarge(max) => {
                out.push(rtag::TOO_LARGE);
                out.extend_from_slice(&max.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes results (bounded, never panics).
pub fn decode_results(mut buf: &[u8]) -> Option<Vec<OpResult>> {
    if take_u8(&mut buf)? != RESULTS_VERSION {
        return None;
    }
    let n = take_u64(&mut buf)?;
    if n > buf.len() as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        out.push(match take_u8(&mut buf)? {
            rtag::OK => OpResult::Ok,
            rtag::NOT_SET => OpResult::NotSet,
            rtag::INT => OpResult::Int(take_u64(&mut buf)? as i64),
            rtag::VALUE => OpResult::Value(Some(take(&mut buf)?.to_vec())),
            rtag::NIL => OpResult::Value(None),
            rtag::NOT_INTEGER => OpResult::NotInteger,
            rtag::OVERFLOW => OpResult::Overflow,
            rtag::TOO_LARGE => OpResult::TooLarge(take_u64(&mut buf)?),
            _ => return None,
        });
    }
    buf.is_empty().then_some(out)
}

/// The state machine: an ordered map of bytes to bytes.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStateMachine {
    /// Applies one op.
    pub fn apply(&mut self, op: Op) -> OpResult {
        match op {
            Op::Set { key, value, nx, xx } => {
                let exists = self.map.contains_key(&key);
                if (nx && exists) || (xx && !exists) {
                    return OpResult::NotSet;
                }
                self.map.insert(key, value);
                OpResult::Ok
            }
            Op::Del { key } => OpResult::Int(self.map.remove(&key).is_some() as i64),
            Op::IncrBy { key, delta } => {
                let cur = match self.map.get(&key) {
                    None => 0i64,
                    Some(v) => match std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return OpResult::NotInteger,
                    },
                };
                let Some(next) = cur.checked_add(delta) else {
                    return OpResult::Overflow;
                };
                self.map.insert(key, next.to_string().into_bytes());
                OpResult::Int(next)
            }
            Op::Append {
                key,
                value,
                max_len,
            } => {
                let cur = self.map.get(&key).map_or(0, Vec::len) as u64;
                let new_len = cur.saturating_add(value.len() as u64);
                if new_len > max_len.min(MAX_SNAPSHOT_ITEM_BYTES) {
                    return OpResult::TooLarge(max_len.min(MAX_SNAPSHOT_ITEM_BYTES));
                }
                let v = self.map.entry(key).or_default();
                v.extend_from_slice(&value);
                OpResult::Int(v.len() as i64)
            }
            read => self.read(&read),
        }
    }

    /// Answers a read op (a write answers `NotInteger`: never asked).
    pub fn read(&self, op: &Op) -> OpResult {
        match op {
            Op::Get { key } => OpResult::Value(self.map.get(key).cloned()),
            Op::Strlen { key } => OpResult::Int(self.map.get(key).map_or(0, Vec::len) as i64),
            Op::Exists { key } => OpResult::Int(self.map.contains_key(key) as i64),
            Op::DbSize => OpResult::Int(self.map.len() as i64),
            _ => OpResult::NotInteger,
        }
    }

    /// Bytes a read op would return.
    fn read_bytes(&self, op: &Op) -> usize {
        match op {
            Op::Get { key } => self.map.get(key).map_or(0, Vec::len),
            _ => 0,
        }
    }

    /// Applies a batch in order. Stops before a read whose value would
    /// pass [`MAX_BATCH_RESULT_BYTES`] (see the module docs): the result
    /// list is then shorter than the batch.
    pub fn apply_batch(&mut self, ops: Vec<Op>) -> Vec<OpResult> {
        let mut out = Vec::with_capacity(ops.len());
        let mut budget = MAX_BATCH_RESULT_BYTES;
        for op in ops {
            if !op.is_write() {
                let n = self.read_bytes(&op);
                if n > budget {
                    break;
                }
                budget -= n;
            }
            out.push(self.apply(op));
        }
        out
    }

    /// Answers a lookup: a batch of reads (encoded results), or a
    /// single-byte [`query`].
    pub fn query(&self, q: &[u8]) -> Result<Vec<u8>, SmError> {
        if q == [query::DIGEST] {
            // FNV-1a over every key and value, in order.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for (k, v) in &self.map {
                for b in k.iter().chain(&[0xff]).chain(v).chain(&[0xfe]) {
                    h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
            return Ok(h.to_le_bytes().to_vec());
        }
        let ops = decode_batch(q).ok_or_else(|| SmError::new("bad query"))?;
        if ops.iter().any(Op::is_write) {
            return Err(SmError::new("a lookup cannot write"));
        }
        let results: Vec<OpResult> = ops.iter().map(|op| self.read(op)).collect();
        Ok(encode_results(&results))
    }
}

/// Magic of the snapshot format with 64-bit lengths (version 2). Version 1
/// (32-bit lengths) began directly with the key count, which can never
/// equal this value in practice, so both are read.
const SNAPSHOT_MAGIC_V2: u64 = u64::from_le_bytes(*b"LSKVSNP2");

fn read_item(r: &mut dyn Read, wide: bool) -> Result<Vec<u8>, SmError> {
    let len = if wide {
        let mut l = [0u8; 8];
        r.read_exact(&mut l)?;
        u64::from_le_bytes(l)
    } else {
        let mut l = [0u8; 4];
        r.read_exact(&mut l)?;
        u32::from_le_bytes(l) as u64
    };
    if len > MAX_SNAPSHOT_ITEM_BYTES {
        return Err(SmError::new(format!(
            "snapshot item of {len} bytes over the limit of {MAX_SNAPSHOT_ITEM_BYTES}"
        )));
    }
    // Grows with the bytes actually read: a corrupt length allocates nothing up front.
    let mut v = Vec::new();
    r.take(len).read_to_end(&mut v)?;
    if v.len() as u64 != len {
        return Err(SmError::new("snapshot truncated"));
    }
    Ok(v)
}

impl StateMachine for KvStateMachine {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            let (value, data) = match decode_batch(&e.cmd) {
                Some(ops) => (status::OK, encode_results(&self.apply_batch(ops))),
                None => (status::BAD_COMMAND, Vec::new()),
            };
            e.result.value = value;
            e.result.data = data;
        }
        Ok(())
    }

    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        self.query(query)
    }

    /// Format v2: magic, key count, then per key `u64 len, key, u64 len, value` (LE).
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        w.write_all(&SNAPSHOT_MAGIC_V2.to_le_bytes())?;
        w.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (k, v) in &self.map {
            if stop.is_set() {
                return Err(SmError::new("stopped"));
            }
            w.write_all(&(k.len() as u64).to_le_bytes())?;
            w.write_all(k)?;
            w.write_all(&(v.len() as u64).to_le_bytes())?;
            w.write_all(v)?;
        }
        Ok(())
    }

    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        let mut n8 = [0u8; 8];
        r.read_exact(&mut n8)?;
        let mut n = u64::from_le_bytes(n8);
        let wide = n == SNAPSHOT_MAGIC_V2;
        if wide {
            r.read_exact(&mut n8)?;
            n = u64::from_le_bytes(n8);
        }
        let mut map = BTreeMap::new();
        for _ in 0..n {
            if stop.is_set() {
                return Err(SmError::new("stopped"));
            }
            let k = read_item(r, wide)?;
            let v = read_item(r, wide)?;
            map.insert(k, v);
        }
        self.map = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ops() -> Vec<Op> {
        vec![
            Op::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                nx: true,
                xx: false,
            },
            Op::Del { key: b"k".to_vec() },
            Op::IncrBy {
                key: b"n".to_vec(),
                delta: -5,
            },
            Op::Append {
                key: b"a".to_vec(),
                value: b"xyz".to_vec(),
                max_len: 10,
            },
            Op::Get { key: b"a".to_vec() },
            Op::Strlen { key: b"a".to_vec() },
            Op::Exists { key: b"a".to_vec() },
            Op::DbSize,
        ]
    }

    #[test]
    fn batches_round_trip_and_every_prefix_is_refused() {
        let ops = all_ops();
        let enc = encode_batch(&ops);
        assert_eq!(
            enc.len(),
            BATCH_HEADER_BYTES + ops.iter().map(Op::encoded_len).sum::<usize>()
        );
        assert_eq!(decode_batch(&enc), Some(ops.clone()));
        for cut in 0..enc.len() {
            assert_eq!(decode_batch(&enc[..cut]), None, "prefix of {cut} bytes");
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert_eq!(decode_batch(&longer), None);
        assert_eq!(decode_batch(&encode_batch(&[])), Some(vec![]));
        // A count far larger than the bytes present allocates nothing.
        let mut huge = vec![BATCH_MAGIC, BATCH_VERSION];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_batch(&huge), None);
        let mut wrong_version = enc;
        wrong_version[1] = 9;
        assert_eq!(decode_batch(&wrong_version), None);
    }

    #[test]
    fn results_round_trip_and_every_prefix_is_refused() {
        let results = vec![
            OpResult::Ok,
            OpResult::NotSet,
            OpResult::Int(-7),
            OpResult::Value(Some(b"val".to_vec())),
            OpResult::Value(None),
            OpResult::NotInteger,
            OpResult::Overflow,
            OpResult::TooLarge(512),
        ];
        let enc = encode_results(&results);
        assert_eq!(decode_results(&enc), Some(results));
        for cut in 0..enc.len() {
            assert_eq!(decode_results(&enc[..cut]), None, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: deterministic pseudo-random inputs, some starting with a valid header.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = encode_batch(&all_ops());
        for i in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 && !b.is_empty() {
                // Keep a valid prefix and corrupt the rest.
                let keep = (next() as usize) % valid.len();
                b = valid[..keep].iter().copied().chain(b).collect();
            }
            let _ = decode_batch(&b);
            let _ = decode_results(&b);
            let sm = KvStateMachine::default();
            let _ = sm.query(&b);
            let mut sm2 = KvStateMachine::default();
            let _ = sm2.recover_from_snapshot(&mut &b[..], &StopFlag::new());
        }
    }

    #[test]
    fn semantics_of_set_incr_append_del() {
        let mut sm = KvStateMachine::default();
        let set = |k: &str, v: &str, nx, xx| Op::Set {
            key: k.into(),
            value: v.into(),
            nx,
            xx,
        };
        assert_eq!(sm.apply(set("a", "1", false, true)), OpResult::NotSet);
        assert_eq!(sm.apply(set("a", "1", true, false)), OpResult::Ok);
        assert_eq!(sm.apply(set("a", "2", true, false)), OpResult::NotSet);
        let incr = |k: &str, d| Op::IncrBy {
            key: k.into(),
            delta: d,
        };
        assert_eq!(sm.apply(incr("a", 41)), OpResult::Int(42));
        let append = |k: &str, v: &str, max_len| Op::Append {
            key: k.into(),
            value: v.into(),
            max_len,
        };
        assert_eq!(sm.apply(append("a", "x", 100)), OpResult::Int(3));
        // APPEND never grows a value past its limit; the value is unchanged.
        assert_eq!(sm.apply(append("a", "yz", 4)), OpResult::TooLarge(4));
        assert_eq!(
            sm.read(&Op::Get { key: b"a".to_vec() }),
            OpResult::Value(Some(b"42x".to_vec()))
        );
        assert_eq!(sm.apply(append("a", "y", 4)), OpResult::Int(4));
        assert_eq!(sm.apply(incr("a", 1)), OpResult::NotInteger);
        sm.apply(set("m", &i64::MAX.to_string(), false, false));
        assert_eq!(sm.apply(incr("m", 1)), OpResult::Overflow);
        assert_eq!(sm.apply(Op::Del { key: b"a".to_vec() }), OpResult::Int(1));
        assert_eq!(sm.apply(Op::Del { key: b"a".to_vec() }), OpResult::Int(0));
        assert_eq!(
            sm.read(&Op::Get { key: b"a".to_vec() }),
            OpResult::Value(None)
        );
        assert_eq!(sm.read(&Op::DbSize), OpResult::Int(1));
        let mut buf = Vec::new();
        sm.save_snapshot(&mut buf, &StopFlag::new()).unwrap();
        let mut back = KvStateMachine::default();
        back.recover_from_snapshot(&mut &buf[..], &StopFlag::new())
            .unwrap();
        assert_eq!(back, sm);
        assert_eq!(
            back.query(&[query::DIGEST]).unwrap(),
            sm.query(&[query::DIGEST]).unwrap()
        );
    }

    #[test]
    fn a_batch_applies_in_order_and_reads_see_earlier_writes() {
        let mut sm = KvStateMachine::default();
        let mut ops = Vec::new();
        for i in 0..200 {
            ops.push(Op::Set {
                key: b"k".to_vec(),
                value: format!("v{i}").into_bytes(),
                nx: false,
                xx: false,
            });
        }
        ops.push(Op::Get { key: b"k".to_vec() });
        ops.push(Op::IncrBy {
            key: b"c".to_vec(),
            delta: 1,
        });
        ops.push(Op::Strlen { key: b"k".to_vec() });
        ops.push(Op::Exists { key: b"c".to_vec() });
        let r = sm.apply_batch(ops);
        assert_eq!(r.len(), 204);
        assert!(r[..200].iter().all(|x| *x == OpResult::Ok));
        assert_eq!(r[200], OpResult::Value(Some(b"v199".to_vec())));
        assert_eq!(r[201], OpResult::Int(1));
        assert_eq!(r[202], OpResult::Int(4));
        assert_eq!(r[203], OpResult::Int(1));
        // The same reads as a lookup.
        let q = encode_batch(&[Op::Get { key: b"k".to_vec() }, Op::DbSize]);
        assert_eq!(
            decode_results(&sm.query(&q).unwrap()).unwrap(),
            vec![OpResult::Value(Some(b"v199".to_vec())), OpResult::Int(2)]
        );
        assert!(
            sm.query(&encode_batch(&[Op::Del { key: b"k".to_vec() }]))
                .is_err()
        );
    }

    #[test]
    fn a_batch_stops_before_a_read_over_the_result_budget() {
        let mut sm = KvStateMachine::default();
        let big = vec![b'x'; MAX_BATCH_RESULT_BYTES];
        let r = sm.apply_batch(vec![
            Op::Set {
                key: b"big".to_vec(),
                value: big.clone(),
                nx: false,
                xx: false,
            },
            Op::Get {
                key: b"big".to_vec(),
            },
            Op::Get {
                key: b"big".to_vec(),
            },
            Op::Del {
                key: b"big".to_vec(),
            },
        ]);
        // The first read fits the budget exactly; the second stops the batch.
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], OpResult::Value(Some(big)));
        // The DEL after the stop was not applied.
        assert_eq!(
            sm.read(&Op::Exists {
                key: b"big".to_vec()
            }),
            OpResult::Int(1)
        );
    }

    #[test]
    fn snapshots_use_64_bit_lengths_and_read_the_old_format() {
        let mut sm = KvStateMachine::default();
        sm.apply(Op::Set {
            key: b"k".to_vec(),
            value: b"value".to_vec(),
            nx: false,
            xx: false,
        });
        let mut buf = Vec::new();
        sm.save_snapshot(&mut buf, &StopFlag::new()).unwrap();
        assert_eq!(&buf[..8], b"LSKVSNP2");
        assert_eq!(&buf[16..24], &1u64.to_le_bytes()); // key length, 64 bits
        // Version 1: count, then 32-bit lengths.
        let mut old = 1u64.to_le_bytes().to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        old.push(b'k');
        old.extend_from_slice(&5u32.to_le_bytes());
        old.extend_from_slice(b"value");
        let mut back = KvStateMachine::default();
        back.recover_from_snapshot(&mut &old[..], &StopFlag::new())
            .unwrap();
        assert_eq!(back, sm);
        // A length over the bound is refused before any allocation.
        let mut bad = SNAPSHOT_MAGIC_V2.to_le_bytes().to_vec();
        bad.extend_from_slice(&1u64.to_le_bytes());
        bad.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            KvStateMachine::default()
                .recover_from_snapshot(&mut &bad[..], &StopFlag::new())
                .is_err()
        );
        for cut in 0..buf.len() {
            assert!(
                KvStateMachine::default()
                    .recover_from_snapshot(&mut &buf[..cut], &StopFlag::new())
                    .is_err(),
                "prefix of {cut} bytes"
            );
        }
    }
}
