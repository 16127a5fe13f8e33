//! The simulator's replicated key-value state machine.
//!
//! Commands are text: `p KEY VALUE` sets a key, `a KEY VALUE` appends to
//! it. Queries: `g KEY` returns the value (empty for a missing key); `d`
//! returns the digest, `INDEX DIGEST [ERROR]`: the log index of the last
//! entry applied, a hash of the whole map, and the first misbehaviour the
//! state machine noticed in what longship fed it (entries out of order).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use longship::{SmEntry, SmError, StateMachine, StopFlag};

/// A command that sets `key` to `value`.
pub fn put_command(key: &str, value: &str) -> Vec<u8> {
    format!("p {key} {value}").into_bytes()
}

/// A command that appends `value` to `key`.
pub fn append_command(key: &str, value: &str) -> Vec<u8> {
    format!("a {key} {value}").into_bytes()
}

/// The query that reads `key`.
pub fn get_query(key: &str) -> Vec<u8> {
    format!("g {key}").into_bytes()
}

/// The query that returns the digest (see [`Digest`]).
pub const DIGEST_QUERY: &[u8] = b"d";

/// What the digest query returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// Log index of the last entry the state machine applied (or of the
    /// snapshot it recovered from).
    pub index: u64,
    /// FNV-1a hash of every key and value.
    pub hash: u64,
    /// The first misbehaviour noticed, if any.
    pub error: Option<String>,
}

impl Digest {
    /// Decodes the answer to [`DIGEST_QUERY`].
    pub fn decode(bytes: &[u8]) -> Option<Digest> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, ' ');
        let index = parts.next()?.parse().ok()?;
        let hash = u64::from_str_radix(parts.next()?, 16).ok()?;
        let error = parts.next().map(str::to_string);
        Some(Digest { index, hash, error })
    }
}

/// 64-bit FNV-1a, fed incrementally.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Mixes in `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Mixes in a number.
    pub fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
}

/// The key-value state machine.
#[derive(Debug, Default)]
pub struct SimKv {
    map: BTreeMap<String, String>,
    /// Index of the last entry applied.
    index: u64,
    /// The first misbehaviour noticed.
    error: Option<String>,
}

impl SimKv {
    /// An empty map.
    pub fn new() -> SimKv {
        SimKv::default()
    }

    fn digest(&self) -> Digest {
        let mut h = Fnv::default();
        for (k, v) in &self.map {
            h.write(k.as_bytes());
            h.write(b"=");
            h.write(v.as_bytes());
            h.write(b";");
        }
        Digest {
            index: self.index,
            hash: h.0,
            error: self.error.clone(),
        }
    }

    fn apply(&mut self, cmd: &[u8]) -> Result<u64, SmError> {
        let text = std::str::from_utf8(cmd).map_err(|_| SmError::new("command is not UTF-8"))?;
        let mut parts = text.splitn(3, ' ');
        let (op, key, value) = match (parts.next(), parts.next(), parts.next()) {
            (Some(op), Some(key), Some(value)) => (op, key, value),
            _ => return Err(SmError::new(format!("bad command {text:?}"))),
        };
        let slot = self.map.entry(key.to_string()).or_default();
        match op {
            "p" => {
                slot.clear();
                slot.push_str(value);
            }
            "a" => slot.push_str(value),
            _ => return Err(SmError::new(format!("bad command {text:?}"))),
        }
        Ok(slot.len() as u64)
    }
}

impl StateMachine for SimKv {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            if e.index.0 <= self.index && self.error.is_none() {
                self.error = Some(format!(
                    "entry {} applied after entry {}",
                    e.index.0, self.index
                ));
            }
            self.index = e.index.0;
            e.result.value = self.apply(&e.cmd)?;
        }
        Ok(())
    }

    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        if query == DIGEST_QUERY {
            let d = self.digest();
            let mut out = format!("{} {:016x}", d.index, d.hash);
            if let Some(e) = d.error {
                out.push(' ');
                out.push_str(&e);
            }
            return Ok(out.into_bytes());
        }
        match query.strip_prefix(b"g ") {
            Some(key) => {
                let key = std::str::from_utf8(key).map_err(|_| SmError::new("key not UTF-8"))?;
                Ok(self.map.get(key).cloned().unwrap_or_default().into_bytes())
            }
            None => Err(SmError::new("unknown query")),
        }
    }

    fn save_snapshot(&self, w: &mut dyn Write, _stop: &StopFlag) -> Result<(), SmError> {
        let mut out = format!("{}\n", self.index);
        for (k, v) in &self.map {
            out.push_str(&format!("{k}\t{v}\n"));
        }
        Ok(w.write_all(out.as_bytes())?)
    }

    fn recover_from_snapshot(&mut self, r: &mut dyn Read, _stop: &StopFlag) -> Result<(), SmError> {
        let mut text = String::new();
        r.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let index = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| SmError::new("snapshot without index"))?;
        let mut map = BTreeMap::new();
        for line in lines {
            let (k, v) = line
                .split_once('\t')
                .ok_or_else(|| SmError::new("bad snapshot line"))?;
            map.insert(k.to_string(), v.to_string());
        }
        self.map = map;
        self.index = index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longship::Index;

    fn entry(index: u64, cmd: Vec<u8>) -> SmEntry {
        SmEntry {
            index: Index(index),
            cmd: cmd.into(),
            ..SmEntry::default()
        }
    }

    #[test]
    fn put_append_get_digest_and_snapshot_round_trip() {
        let mut kv = SimKv::new();
        let mut es = [
            entry(3, put_command("k", "x")),
            entry(4, append_command("k", "y")),
        ];
        kv.update(&mut es).unwrap();
        assert_eq!(es[1].result.value, 2);
        assert_eq!(kv.lookup(&get_query("k")).unwrap(), b"xy");
        assert_eq!(kv.lookup(&get_query("missing")).unwrap(), b"");
        let d = Digest::decode(&kv.lookup(DIGEST_QUERY).unwrap()).unwrap();
        assert_eq!(d.index, 4);
        assert!(d.error.is_none());
        let mut buf = Vec::new();
        kv.save_snapshot(&mut buf, &StopFlag::new()).unwrap();
        let mut other = SimKv::new();
        other
            .recover_from_snapshot(&mut &buf[..], &StopFlag::new())
            .unwrap();
        assert_eq!(
            Digest::decode(&other.lookup(DIGEST_QUERY).unwrap()),
            Some(d)
        );
    }

    #[test]
    fn out_of_order_entries_are_reported() {
        let mut kv = SimKv::new();
        kv.update(&mut [entry(5, put_command("k", "x"))]).unwrap();
        kv.update(&mut [entry(5, append_command("k", "x"))])
            .unwrap();
        let d = Digest::decode(&kv.lookup(DIGEST_QUERY).unwrap()).unwrap();
        assert!(d.error.unwrap().contains("entry 5 applied after entry 5"));
    }
}
