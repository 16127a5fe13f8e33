//! The replicated key-value state machine and its entry encoding.
//!
//! Every proposal is a *batch* ([`Batch`]): a versioned, ordered list of
//! Redis commands on keys of one shard, with the proposing node's wall
//! clock (`stamp_ms`) and the largest value the server allows. The state
//! machine executes the commands itself ([`exec`](KvStateMachine::exec)),
//! in order, inside one log entry, and answers one RESP reply per command:
//! writes and reads may be mixed, and a read inside a batch sees exactly
//! the writes before it. The entry's result (`SmResult::data`) holds the
//! encoded replies (see [`encode_results`]).
//!
//! # Time
//!
//! The shard has a replicated clock: applying a batch sets it to
//! `max(clock, stamp_ms)`, so it never goes back (not even when the leader
//! changes to a node whose clock is behind), and every replica computes the
//! same thing. Every command runs at that time: a key whose expiry is at or
//! before it is absent, `EX 10` means 10 s after it, `TTL` counts from it.
//! A replica's own clock is never read in apply. Applying a batch also
//! deletes up to [`SWEEP_PER_BATCH`] expired keys; a node proposes empty
//! batches for the shards it leads while they hold expired keys (see the
//! server), so expired keys are deleted by replicated commands.
//!
//! Lookups (`read_local` after a `read_index`) take a batch of read
//! commands and run them at the shard's clock as of the applied state. The
//! batch's `stamp_ms` is the reading node's clock: if a command touches a
//! key that expired by that clock but not by the shard's, its result is
//! [`CmdResult::NeedsClock`] and the server advances the shard's clock
//! through the log (an empty batch) and reads again — so a read never
//! returns a key after its expiry by the clock of the node that serves it,
//! and what it returns stays consistent with the log's order.
//!
//! Reads inside a batch return at most [`MAX_BATCH_RESULT_BYTES`] in all (a
//! result stays in the replicated session table until the client's next
//! proposal, so it must stay small). When a read's reply would pass that
//! budget, the batch *stops* at that read: the read and every later command
//! are not applied, and the result list is shorter than the batch. The
//! proposer then does that read with a linearizable ReadIndex read and
//! proposes the rest again; this keeps the order and is deterministic.
//!
//! Every decoder takes untrusted bytes: bounded, never panics.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use longship::{SmEntry, SmError, StateMachine, StopFlag};

use crate::resp::Reply;

/// Result codes in `SmResult::value`.
pub mod status {
    /// Done: `SmResult::data` holds the encoded results.
    pub const OK: u64 = 0;
    /// The command could not be decoded (never proposed by this server).
    pub const BAD_COMMAND: u64 = 4;
}

/// First byte of a batch (tells it from the single-byte queries of [`query`]).
pub const BATCH_MAGIC: u8 = 0xb7;
/// Version of the batch encoding (second byte): 2 carries commands, the
/// stamp and the value limit. Version 1 (typed operations, no clock) is
/// not read: data from before is refused at start (see `cluster`).
pub const BATCH_VERSION: u8 = 2;
/// Version of the result encoding (first byte of `SmResult::data`).
pub const RESULTS_VERSION: u8 = 2;
/// Bytes of a batch header: magic, version, stamp, value limit, count.
pub const BATCH_HEADER_BYTES: usize = 2 + 8 + 8 + 8;
/// Most bytes of replies that reads inside one replicated batch return (see
/// the module docs: a bigger read stops the batch and is done by ReadIndex).
pub const MAX_BATCH_RESULT_BYTES: usize = 1 << 20;
/// Largest key or value a snapshot may hold (bounds recovery; the server
/// never lets a value grow past its `proto-max-bulk-len`, which is capped
/// at this).
pub const MAX_SNAPSHOT_ITEM_BYTES: u64 = 1 << 32;
/// Expired keys deleted when a batch is applied (before its commands).
pub const SWEEP_PER_BATCH: usize = 1000;
/// Deepest nesting of arrays in a decoded reply.
const MAX_REPLY_DEPTH: usize = 8;

/// Single-byte queries (outside batches).
pub mod query {
    /// A digest of the whole state (8 bytes LE), for consistency checks.
    pub const DIGEST: u8 = 3;
    /// The earliest expiry time of any key (8 bytes LE, `u64::MAX` when no
    /// key expires) and the shard's clock (8 bytes LE).
    pub const NEXT_EXPIRY: u8 = 4;
    /// Keys stored (expired ones not yet deleted included) and keys with an
    /// expiry (8 bytes LE each).
    pub const STATS: u8 = 5;
}

/// Name of the internal command that runs a transaction: its arguments
/// are the commands, each as its argument count then its arguments.
pub const EXEC_CMD: &[u8] = b"\x00EXEC";

/// One command: its arguments, the name first.
pub type Cmd = Vec<Vec<u8>>;

/// A batch: what one log entry (or one lookup) carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The proposing (or reading) node's wall clock, in ms since the epoch.
    pub stamp_ms: u64,
    /// Longest value a command may make (the server's proto-max-bulk-len).
    pub max_len: u64,
    /// The commands, in order.
    pub cmds: Vec<Cmd>,
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

/// Bytes of a command's encoding in a batch.
pub fn cmd_encoded_len(cmd: &[Vec<u8>]) -> usize {
    8 + cmd.iter().map(|a| 8 + a.len()).sum::<usize>()
}

/// Encodes a batch. Its length is `BATCH_HEADER_BYTES` plus the commands'
/// [`cmd_encoded_len`].
pub fn encode_batch(stamp_ms: u64, max_len: u64, cmds: &[Cmd]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        BATCH_HEADER_BYTES + cmds.iter().map(|c| cmd_encoded_len(c)).sum::<usize>(),
    );
    out.push(BATCH_MAGIC);
    out.push(BATCH_VERSION);
    out.extend_from_slice(&stamp_ms.to_le_bytes());
    out.extend_from_slice(&max_len.to_le_bytes());
    out.extend_from_slice(&(cmds.len() as u64).to_le_bytes());
    for c in cmds {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        for a in c {
            put(&mut out, a);
        }
    }
    out
}

/// Decodes a batch (untrusted bytes: bounded by their length, never panics).
pub fn decode_batch(mut buf: &[u8]) -> Option<Batch> {
    if take_u8(&mut buf)? != BATCH_MAGIC || take_u8(&mut buf)? != BATCH_VERSION {
        return None;
    }
    let stamp_ms = take_u64(&mut buf)?;
    let max_len = take_u64(&mut buf)?;
    let n = take_u64(&mut buf)?;
    // Every command takes at least 8 bytes: no count allocates past the input.
    if n > buf.len() as u64 / 8 {
        return None;
    }
    let mut cmds = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let argc = take_u64(&mut buf)?;
        if argc > buf.len() as u64 / 8 {
            return None;
        }
        let mut args = Vec::with_capacity(argc as usize);
        for _ in 0..argc {
            args.push(take(&mut buf)?.to_vec());
        }
        cmds.push(args);
    }
    buf.is_empty().then_some(Batch {
        stamp_ms,
        max_len,
        cmds,
    })
}

/// The outcome of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdResult {
    /// Its reply.
    Reply(Reply),
    /// (Lookups only.) It touched a key that expired by the reader's clock
    /// but not by the shard's: advance the shard's clock and read again.
    NeedsClock,
}

mod rtag {
    pub const SIMPLE: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const INT: u8 = 2;
    pub const BULK: u8 = 3;
    pub const NIL: u8 = 4;
    pub const ARRAY: u8 = 5;
    pub const NIL_ARRAY: u8 = 6;
    pub const NEEDS_CLOCK: u8 = 7;
    pub const MAP: u8 = 8;
}

fn encode_reply(r: &Reply, out: &mut Vec<u8>) {
    match r {
        Reply::Simple(s) => {
            out.push(rtag::SIMPLE);
            put(out, s.as_bytes());
        }
        Reply::Error(s) => {
            out.push(rtag::ERROR);
            put(out, s.as_bytes());
        }
        Reply::Int(n) => {
            out.push(rtag::INT);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Reply::Bulk(b) => {
            out.push(rtag::BULK);
            put(out, b);
        }
        Reply::Nil => out.push(rtag::NIL),
        Reply::NilArray => out.push(rtag::NIL_ARRAY),
        Reply::Array(items) => {
            out.push(rtag::ARRAY);
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                encode_reply(i, out);
            }
        }
        Reply::Map(pairs) => {
            out.push(rtag::MAP);
            out.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
            for (k, v) in pairs {
                encode_reply(k, out);
                encode_reply(v, out);
            }
        }
    }
}

fn decode_reply(buf: &mut &[u8], depth: usize) -> Option<Reply> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    Some(match take_u8(buf)? {
        rtag::SIMPLE => Reply::Simple(text(take(buf)?)?),
        rtag::ERROR => Reply::Error(text(take(buf)?)?),
        rtag::INT => Reply::Int(take_u64(buf)? as i64),
        rtag::BULK => Reply::Bulk(take(buf)?.to_vec()),
        rtag::NIL => Reply::Nil,
        rtag::NIL_ARRAY => Reply::NilArray,
        rtag::ARRAY if depth < MAX_REPLY_DEPTH => {
            let n = take_u64(buf)?;
            if n > buf.len() as u64 {
                return None;
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(decode_reply(buf, depth + 1)?);
            }
            Reply::Array(items)
        }
        rtag::MAP if depth < MAX_REPLY_DEPTH => {
            let n = take_u64(buf)?;
            if n > buf.len() as u64 / 2 {
                return None;
            }
            let mut pairs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let k = decode_reply(buf, depth + 1)?;
                let v = decode_reply(buf, depth + 1)?;
                pairs.push((k, v));
            }
            Reply::Map(pairs)
        }
        _ => return None,
    })
}

/// Encodes results: version, count (8 bytes LE), then each result.
pub fn encode_results(results: &[CmdResult]) -> Vec<u8> {
    let mut out = vec![RESULTS_VERSION];
    out.extend_from_slice(&(results.len() as u64).to_le_bytes());
    for r in results {
        match r {
            CmdResult::Reply(r) => encode_reply(r, &mut out),
            CmdResult::NeedsClock => out.push(rtag::NEEDS_CLOCK),
        }
    }
    out
}

/// Decodes results (bounded, never panics).
pub fn decode_results(mut buf: &[u8]) -> Option<Vec<CmdResult>> {
    if take_u8(&mut buf)? != RESULTS_VERSION {
        return None;
    }
    let n = take_u64(&mut buf)?;
    if n > buf.len() as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if buf.first() == Some(&rtag::NEEDS_CLOCK) {
            buf = &buf[1..];
            out.push(CmdResult::NeedsClock);
        } else {
            out.push(CmdResult::Reply(decode_reply(&mut buf, 0)?));
        }
    }
    buf.is_empty().then_some(out)
}

/// A value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(Vec<u8>),
    /// A hash: field to value.
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
}

/// A key's value and expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// When it expires (ms since the epoch, on the shard's clock).
    pub expire_at: Option<u64>,
}

/// A key's place in the map: a 48-bit hash of the key, then the key. The
/// map is ordered by it, so SCAN's cursor is a hash (keys added during a
/// scan never move the ones not yet returned).
pub type MapKey = (u64, Vec<u8>);

/// The 48-bit hash ordering a key (FNV-1a).
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h >> 16
}

fn mk(key: &[u8]) -> MapKey {
    (key_hash(key), key.to_vec())
}

/// The time a command runs at, and what a lookup watches for.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// The shard's clock: keys expiring at or before it are absent.
    pub now: u64,
    /// (Lookups) the reader's clock: a live key expiring at or before it
    /// makes the result [`CmdResult::NeedsClock`]. 0 in the log.
    pub probe: u64,
    /// Longest value a command may make.
    pub max_len: u64,
}

/// The state machine: keys (strings and hashes, with expiry) and the
/// shard's replicated clock.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<MapKey, Entry>,
    /// (expire_at, hash, key) of every key with an expiry.
    expiries: BTreeSet<(u64, u64, Vec<u8>)>,
    /// The shard's clock (ms): the largest stamp applied.
    clock: u64,
}

/// Why a read must go through the log (see [`CmdResult::NeedsClock`]).
#[derive(Debug)]
pub struct NeedsClock;

/// A command's reply, or [`NeedsClock`].
pub type Exec = Result<Reply, NeedsClock>;

impl KvStateMachine {
    /// The shard's clock (ms).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Live keys (those not expired at the shard's clock).
    pub fn len(&self) -> usize {
        let expired = self
            .expiries
            .range(..(self.clock.saturating_add(1), 0, Vec::new()))
            .count();
        self.map.len() - expired
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an entry is live at `ctx`; `Err` when it is live but
    /// expired by the lookup's probe clock.
    pub(crate) fn live_entry<'a>(ctx: &Ctx, e: &'a Entry) -> Result<Option<&'a Entry>, NeedsClock> {
        match e.expire_at {
            Some(at) if at <= ctx.now => Ok(None),
            Some(at) if at <= ctx.probe => Err(NeedsClock),
            _ => Ok(Some(e)),
        }
    }

    /// The live entry of `key`.
    pub(crate) fn get(&self, ctx: &Ctx, key: &[u8]) -> Result<Option<&Entry>, NeedsClock> {
        match self.map.get(&mk(key)) {
            Some(e) => Self::live_entry(ctx, e),
            None => Ok(None),
        }
    }

    /// All live entries in map order, from `from` on.
    pub(crate) fn iter_from<'a>(
        &'a self,
        from: u64,
    ) -> impl Iterator<Item = (&'a MapKey, &'a Entry)> + 'a {
        self.map.range((from, Vec::new())..)
    }

    /// The live entry of `key` for a write: an expired one is deleted first.
    pub(crate) fn get_mut(&mut self, ctx: &Ctx, key: &[u8]) -> Option<&mut Entry> {
        let k = mk(key);
        let expired =
            matches!(self.map.get(&k), Some(e) if e.expire_at.is_some_and(|at| at <= ctx.now));
        if expired {
            self.remove(key);
            return None;
        }
        self.map.get_mut(&k)
    }

    /// Removes a key (live or not); its entry.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let k = mk(key);
        let e = self.map.remove(&k)?;
        if let Some(at) = e.expire_at {
            self.expiries.remove(&(at, k.0, k.1));
        }
        Some(e)
    }

    /// Sets a key's value and expiry.
    pub(crate) fn insert(&mut self, key: &[u8], value: Value, expire_at: Option<u64>) {
        self.remove(key);
        let k = mk(key);
        if let Some(at) = expire_at {
            self.expiries.insert((at, k.0, k.1.clone()));
        }
        self.map.insert(k, Entry { value, expire_at });
    }

    /// Changes the expiry of an existing key.
    pub(crate) fn set_expiry(&mut self, key: &[u8], expire_at: Option<u64>) {
        let k = mk(key);
        let Some(e) = self.map.get_mut(&k) else {
            return;
        };
        if let Some(at) = e.expire_at {
            self.expiries.remove(&(at, k.0, k.1.clone()));
        }
        e.expire_at = expire_at;
        if let Some(at) = expire_at {
            self.expiries.insert((at, k.0, k.1));
        }
    }

    /// Deletes every key (FLUSHALL).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.expiries.clear();
    }

    /// Deletes up to `max` keys expired at the shard's clock; how many.
    pub fn sweep(&mut self, max: usize) -> usize {
        let due: Vec<(u64, u64, Vec<u8>)> = self
            .expiries
            .range(..(self.clock.saturating_add(1), 0, Vec::new()))
            .take(max)
            .cloned()
            .collect();
        for (_, _, key) in &due {
            self.remove(key);
        }
        due.len()
    }

    /// Whether a key expires in `(after, until]`.
    pub fn expiring_between(&self, after: u64, until: u64) -> bool {
        self.expiries
            .range((after.saturating_add(1), 0, Vec::new())..)
            .next()
            .is_some_and(|e| e.0 <= until)
    }

    /// The earliest expiry of any key (`u64::MAX`: none).
    pub fn next_expiry(&self) -> u64 {
        self.expiries.first().map_or(u64::MAX, |e| e.0)
    }

    /// Applies a batch: advances the clock, sweeps, then runs the commands
    /// in order. Stops before a read whose reply would pass
    /// [`MAX_BATCH_RESULT_BYTES`] (see the module docs): the reply list is
    /// then shorter than the batch.
    pub fn apply_batch(&mut self, batch: Batch) -> Vec<Reply> {
        self.clock = self.clock.max(batch.stamp_ms);
        self.sweep(SWEEP_PER_BATCH);
        let ctx = Ctx {
            now: self.clock,
            probe: 0,
            max_len: batch.max_len.min(MAX_SNAPSHOT_ITEM_BYTES),
        };
        let mut out = Vec::with_capacity(batch.cmds.len());
        let mut budget = MAX_BATCH_RESULT_BYTES;
        for cmd in batch.cmds {
            if crate::exec::is_read(&cmd) {
                let r = self
                    .read(&ctx, &cmd)
                    .unwrap_or_else(|_| Reply::err("internal"));
                let n = reply_bytes(&r);
                if n > budget {
                    break;
                }
                budget -= n;
                out.push(r);
            } else {
                out.push(self.exec(&ctx, &cmd));
            }
        }
        out
    }

    /// Runs one command (a write, or a read) in the log.
    pub fn exec(&mut self, ctx: &Ctx, cmd: &[Vec<u8>]) -> Reply {
        crate::exec::exec(self, ctx, cmd)
    }

    /// Runs one read command.
    pub fn read(&self, ctx: &Ctx, cmd: &[Vec<u8>]) -> Exec {
        crate::exec::read(self, ctx, cmd)
    }

    /// Answers a lookup: a batch of read commands (encoded results), or a
    /// single-byte [`query`].
    pub fn query(&self, q: &[u8]) -> Result<Vec<u8>, SmError> {
        if q == [query::DIGEST] {
            // FNV-1a over every key, value and expiry, in order, and the clock.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            let mut eat = |b: &[u8]| {
                for x in b {
                    h = (h ^ *x as u64).wrapping_mul(0x100_0000_01b3);
                }
            };
            eat(&self.clock.to_le_bytes());
            for ((_, k), e) in &self.map {
                eat(k);
                eat(&[0xff]);
                eat(&e.expire_at.unwrap_or(0).to_le_bytes());
                match &e.value {
                    Value::Str(v) => eat(v),
                    Value::Hash(m) => {
                        for (f, v) in m {
                            eat(f);
                            eat(&[0xfd]);
                            eat(v);
                        }
                    }
                }
                eat(&[0xfe]);
            }
            return Ok(h.to_le_bytes().to_vec());
        }
        if q == [query::STATS] {
            let mut out = (self.map.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&(self.expiries.len() as u64).to_le_bytes());
            return Ok(out);
        }
        if q == [query::NEXT_EXPIRY] {
            let mut out = self.next_expiry().to_le_bytes().to_vec();
            out.extend_from_slice(&self.clock.to_le_bytes());
            return Ok(out);
        }
        let batch = decode_batch(q).ok_or_else(|| SmError::new("bad query"))?;
        if !batch.cmds.iter().all(|c| crate::exec::is_read(c)) {
            return Err(SmError::new("a lookup cannot write"));
        }
        let ctx = Ctx {
            now: self.clock,
            probe: batch.stamp_ms,
            max_len: batch.max_len,
        };
        let results: Vec<CmdResult> = batch
            .cmds
            .iter()
            .map(|c| match self.read(&ctx, c) {
                Ok(r) => CmdResult::Reply(r),
                Err(NeedsClock) => CmdResult::NeedsClock,
            })
            .collect();
        Ok(encode_results(&results))
    }
}

/// Bytes of a reply's payload (what a batch result holds of it).
pub fn reply_bytes(r: &Reply) -> usize {
    match r {
        Reply::Simple(s) | Reply::Error(s) => s.len(),
        Reply::Bulk(b) => b.len(),
        Reply::Array(items) => items.iter().map(|i| 9 + reply_bytes(i)).sum(),
        Reply::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| 18 + reply_bytes(k) + reply_bytes(v))
            .sum(),
        Reply::Int(_) | Reply::Nil | Reply::NilArray => 0,
    }
}

/// Magic of the snapshot format with 64-bit lengths (version 2: strings
/// only, no expiry). Version 1 (32-bit lengths) began directly with the
/// key count, which can never equal a magic in practice.
const SNAPSHOT_MAGIC_V2: u64 = u64::from_le_bytes(*b"LSKVSNP2");
/// Magic of version 3: the clock, then typed values with expiry.
const SNAPSHOT_MAGIC_V3: u64 = u64::from_le_bytes(*b"LSKVSNP3");

fn read_u64(r: &mut dyn Read) -> Result<u64, SmError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u8(r: &mut dyn Read) -> Result<u8, SmError> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_item(r: &mut dyn Read, wide: bool) -> Result<Vec<u8>, SmError> {
    let len = if wide {
        read_u64(r)?
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

mod vtag {
    pub const STR: u8 = 0;
    pub const HASH: u8 = 1;
}

impl StateMachine for KvStateMachine {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            let (value, data) = match decode_batch(&e.cmd) {
                Some(batch) => {
                    let replies = self.apply_batch(batch);
                    let results: Vec<CmdResult> =
                        replies.into_iter().map(CmdResult::Reply).collect();
                    (status::OK, encode_results(&results))
                }
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

    /// Format v3: magic, clock, key count, then per key: type (0 string,
    /// 1 hash), expiry (`u64`, 0: none), `u64 len, key`, then the string
    /// (`u64 len, bytes`) or the hash (`u64` field count, then `u64 len,
    /// field, u64 len, value` per field). All integers LE.
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        w.write_all(&SNAPSHOT_MAGIC_V3.to_le_bytes())?;
        w.write_all(&self.clock.to_le_bytes())?;
        w.write_all(&(self.map.len() as u64).to_le_bytes())?;
        let item = |w: &mut dyn Write, b: &[u8]| -> Result<(), SmError> {
            w.write_all(&(b.len() as u64).to_le_bytes())?;
            w.write_all(b)?;
            Ok(())
        };
        for ((_, k), e) in &self.map {
            if stop.is_set() {
                return Err(SmError::new("stopped"));
            }
            let t = match e.value {
                Value::Str(_) => vtag::STR,
                Value::Hash(_) => vtag::HASH,
            };
            w.write_all(&[t])?;
            w.write_all(&e.expire_at.unwrap_or(0).to_le_bytes())?;
            item(w, k)?;
            match &e.value {
                Value::Str(v) => item(w, v)?,
                Value::Hash(m) => {
                    w.write_all(&(m.len() as u64).to_le_bytes())?;
                    for (f, v) in m {
                        item(w, f)?;
                        item(w, v)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        let first = read_u64(r)?;
        let mut sm = KvStateMachine::default();
        if first == SNAPSHOT_MAGIC_V3 {
            sm.clock = read_u64(r)?;
            let n = read_u64(r)?;
            for _ in 0..n {
                if stop.is_set() {
                    return Err(SmError::new("stopped"));
                }
                let t = read_u8(r)?;
                let at = read_u64(r)?;
                let k = read_item(r, true)?;
                let value = match t {
                    vtag::STR => Value::Str(read_item(r, true)?),
                    vtag::HASH => {
                        let fields = read_u64(r)?;
                        let mut m = BTreeMap::new();
                        for _ in 0..fields {
                            let f = read_item(r, true)?;
                            let v = read_item(r, true)?;
                            m.insert(f, v);
                        }
                        Value::Hash(m)
                    }
                    other => return Err(SmError::new(format!("unknown value type {other}"))),
                };
                sm.insert(&k, value, (at != 0).then_some(at));
            }
        } else {
            // Versions 1 and 2: strings without expiry.
            let wide = first == SNAPSHOT_MAGIC_V2;
            let n = if wide { read_u64(r)? } else { first };
            for _ in 0..n {
                if stop.is_set() {
                    return Err(SmError::new("stopped"));
                }
                let k = read_item(r, wide)?;
                let v = read_item(r, wide)?;
                sm.insert(&k, Value::Str(v), None);
            }
        }
        *self = sm;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
