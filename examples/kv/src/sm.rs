//! The replicated key-value state machine and its command encoding.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use longship::{SmEntry, SmError, StateMachine, StopFlag};

/// Result codes in `SmResult::value`.
pub mod status {
    /// Done.
    pub const OK: u64 = 0;
    /// SET NX/XX condition not met: nothing written.
    pub const NOT_SET: u64 = 1;
    /// INCR on a value that is not an integer.
    pub const NOT_INTEGER: u64 = 2;
    /// INCR would overflow.
    pub const OVERFLOW: u64 = 3;
    /// The command could not be decoded (never proposed by this server).
    pub const BAD_COMMAND: u64 = 4;
}

/// A write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvWrite {
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
    /// DEL.
    Del {
        /// The key.
        key: Vec<u8>,
    },
    /// INCRBY.
    IncrBy {
        /// The key.
        key: Vec<u8>,
        /// Added to the integer value.
        delta: i64,
    },
    /// APPEND.
    Append {
        /// The key.
        key: Vec<u8>,
        /// Appended bytes.
        value: Vec<u8>,
    },
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn take<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    if buf.len() < 4 {
        return None;
    }
    let n = u32::from_le_bytes(buf[..4].try_into().ok()?) as usize;
    if buf.len() < 4 + n {
        return None;
    }
    let v = &buf[4..4 + n];
    *buf = &buf[4 + n..];
    Some(v)
}

impl KvWrite {
    /// The key written.
    pub fn key(&self) -> &[u8] {
        match self {
            KvWrite::Set { key, .. }
            | KvWrite::Del { key }
            | KvWrite::IncrBy { key, .. }
            | KvWrite::Append { key, .. } => key,
        }
    }

    /// Encodes the write as a proposal payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            KvWrite::Set { key, value, nx, xx } => {
                out.push(1);
                out.push((*nx as u8) | ((*xx as u8) << 1));
                put(&mut out, key);
                put(&mut out, value);
            }
            KvWrite::Del { key } => {
                out.push(2);
                put(&mut out, key);
            }
            KvWrite::IncrBy { key, delta } => {
                out.push(3);
                put(&mut out, key);
                out.extend_from_slice(&delta.to_le_bytes());
            }
            KvWrite::Append { key, value } => {
                out.push(4);
                put(&mut out, key);
                put(&mut out, value);
            }
        }
        out
    }

    /// Decodes a payload (bounded; never panics).
    pub fn decode(mut buf: &[u8]) -> Option<KvWrite> {
        let (&op, rest) = buf.split_first()?;
        buf = rest;
        let w = match op {
            1 => {
                let (&flags, rest) = buf.split_first()?;
                buf = rest;
                let key = take(&mut buf)?.to_vec();
                let value = take(&mut buf)?.to_vec();
                KvWrite::Set {
                    key,
                    value,
                    nx: flags & 1 != 0,
                    xx: flags & 2 != 0,
                }
            }
            2 => KvWrite::Del {
                key: take(&mut buf)?.to_vec(),
            },
            3 => {
                let key = take(&mut buf)?.to_vec();
                let delta = i64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
                buf = &buf[8..];
                KvWrite::IncrBy { key, delta }
            }
            4 => {
                let key = take(&mut buf)?.to_vec();
                let value = take(&mut buf)?.to_vec();
                KvWrite::Append { key, value }
            }
            _ => return None,
        };
        buf.is_empty().then_some(w)
    }
}

/// Read queries.
pub mod query {
    /// GET key → `[present] ++ value`.
    pub const GET: u8 = 1;
    /// Number of keys (8 bytes LE).
    pub const DBSIZE: u8 = 2;
    /// A digest of the whole state (8 bytes LE), for consistency checks.
    pub const DIGEST: u8 = 3;
}

/// Encodes a GET query.
pub fn get_query(key: &[u8]) -> Vec<u8> {
    let mut q = vec![query::GET];
    q.extend_from_slice(key);
    q
}

/// The state machine: an ordered map of bytes to bytes.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Most bytes of one key or value in a snapshot (bounds recovery).
const MAX_ITEM_BYTES: usize = 512 << 20;

impl KvStateMachine {
    /// Applies one write; returns (status, data).
    pub fn apply(&mut self, w: KvWrite) -> (u64, Vec<u8>) {
        match w {
            KvWrite::Set { key, value, nx, xx } => {
                let exists = self.map.contains_key(&key);
                if (nx && exists) || (xx && !exists) {
                    return (status::NOT_SET, Vec::new());
                }
                self.map.insert(key, value);
                (status::OK, Vec::new())
            }
            KvWrite::Del { key } => {
                let n = self.map.remove(&key).is_some() as u8;
                (status::OK, vec![n])
            }
            KvWrite::IncrBy { key, delta } => {
                let cur = match self.map.get(&key) {
                    None => 0i64,
                    Some(v) => match std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return (status::NOT_INTEGER, Vec::new()),
                    },
                };
                let Some(next) = cur.checked_add(delta) else {
                    return (status::OVERFLOW, Vec::new());
                };
                let s = next.to_string().into_bytes();
                self.map.insert(key, s.clone());
                (status::OK, s)
            }
            KvWrite::Append { key, value } => {
                let v = self.map.entry(key).or_default();
                v.extend_from_slice(&value);
                (status::OK, v.len().to_string().into_bytes())
            }
        }
    }

    /// Answers a query.
    pub fn query(&self, q: &[u8]) -> Vec<u8> {
        match q.first() {
            Some(&query::GET) => match self.map.get(&q[1..]) {
                Some(v) => {
                    let mut out = Vec::with_capacity(v.len() + 1);
                    out.push(1);
                    out.extend_from_slice(v);
                    out
                }
                None => vec![0],
            },
            Some(&query::DBSIZE) => (self.map.len() as u64).to_le_bytes().to_vec(),
            Some(&query::DIGEST) => {
                // FNV-1a over every key and value, in order.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for (k, v) in &self.map {
                    for b in k.iter().chain(&[0xff]).chain(v).chain(&[0xfe]) {
                        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
                    }
                }
                h.to_le_bytes().to_vec()
            }
            _ => Vec::new(),
        }
    }
}

impl StateMachine for KvStateMachine {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            let (value, data) = match KvWrite::decode(&e.cmd) {
                Some(w) => self.apply(w),
                None => (status::BAD_COMMAND, Vec::new()),
            };
            e.result.value = value;
            e.result.data = data;
        }
        Ok(())
    }

    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.query(query))
    }

    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        w.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (k, v) in &self.map {
            if stop.is_set() {
                return Err(SmError::new("stopped"));
            }
            w.write_all(&(k.len() as u32).to_le_bytes())?;
            w.write_all(k)?;
            w.write_all(&(v.len() as u32).to_le_bytes())?;
            w.write_all(v)?;
        }
        Ok(())
    }

    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        let mut n8 = [0u8; 8];
        r.read_exact(&mut n8)?;
        let n = u64::from_le_bytes(n8);
        let mut map = BTreeMap::new();
        let item = |r: &mut dyn Read| -> Result<Vec<u8>, SmError> {
            let mut l = [0u8; 4];
            r.read_exact(&mut l)?;
            let len = u32::from_le_bytes(l) as usize;
            if len > MAX_ITEM_BYTES {
                return Err(SmError::new("snapshot item too large"));
            }
            let mut v = vec![0u8; len];
            r.read_exact(&mut v)?;
            Ok(v)
        };
        for _ in 0..n {
            if stop.is_set() {
                return Err(SmError::new("stopped"));
            }
            let k = item(r)?;
            let v = item(r)?;
            map.insert(k, v);
        }
        self.map = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_round_trip_and_garbage_decodes_to_none() {
        for w in [
            KvWrite::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                nx: true,
                xx: false,
            },
            KvWrite::Del { key: b"k".to_vec() },
            KvWrite::IncrBy {
                key: b"n".to_vec(),
                delta: -5,
            },
            KvWrite::Append {
                key: b"a".to_vec(),
                value: b"xyz".to_vec(),
            },
        ] {
            let enc = w.encode();
            assert_eq!(KvWrite::decode(&enc), Some(w.clone()));
            for cut in 0..enc.len() {
                assert_eq!(KvWrite::decode(&enc[..cut]), None);
            }
        }
        assert_eq!(KvWrite::decode(&[9, 1, 2]), None);
    }

    #[test]
    fn semantics_of_set_incr_append_del() {
        let mut sm = KvStateMachine::default();
        let set = |k: &str, v: &str, nx, xx| KvWrite::Set {
            key: k.into(),
            value: v.into(),
            nx,
            xx,
        };
        assert_eq!(sm.apply(set("a", "1", false, true)).0, status::NOT_SET);
        assert_eq!(sm.apply(set("a", "1", true, false)).0, status::OK);
        assert_eq!(sm.apply(set("a", "2", true, false)).0, status::NOT_SET);
        assert_eq!(
            sm.apply(KvWrite::IncrBy {
                key: b"a".to_vec(),
                delta: 41
            }),
            (status::OK, b"42".to_vec())
        );
        assert_eq!(
            sm.apply(KvWrite::Append {
                key: b"a".to_vec(),
                value: b"x".to_vec()
            })
            .1,
            b"3"
        );
        assert_eq!(
            sm.apply(KvWrite::IncrBy {
                key: b"a".to_vec(),
                delta: 1
            })
            .0,
            status::NOT_INTEGER
        );
        sm.apply(set("m", &i64::MAX.to_string(), false, false));
        assert_eq!(
            sm.apply(KvWrite::IncrBy {
                key: b"m".to_vec(),
                delta: 1
            })
            .0,
            status::OVERFLOW
        );
        assert_eq!(sm.apply(KvWrite::Del { key: b"a".to_vec() }).1, vec![1]);
        assert_eq!(sm.query(&get_query(b"a")), vec![0]);
        let mut buf = Vec::new();
        sm.save_snapshot(&mut buf, &StopFlag::new()).unwrap();
        let mut back = KvStateMachine::default();
        back.recover_from_snapshot(&mut &buf[..], &StopFlag::new())
            .unwrap();
        assert_eq!(back, sm);
        assert_eq!(back.query(&[query::DIGEST]), sm.query(&[query::DIGEST]));
    }
}
