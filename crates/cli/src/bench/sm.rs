//! The benchmark's state machine: counts the entries it applied and keeps
//! the length of the last one, so that applying costs next to nothing and
//! the figures show longship's own cost. For the snapshot stream figure it
//! can also hold a synthetic blob of any size (set by one command), which
//! its snapshots carry in full.

use std::io::{Read, Write};

use longship::{SmEntry, SmError, StateMachine, StopFlag};

/// Prefix of the command that sets the blob's size (8 bytes LE follow).
pub const BLOB_COMMAND: &[u8] = b"\0longship-bench-blob\0";

/// Bytes of blob written per `write_all` when saving a snapshot.
const BLOB_WRITE_BYTES: usize = 1 << 20;

/// See the module documentation.
#[derive(Default)]
pub struct BenchSm {
    /// Entries applied.
    count: u64,
    /// Length of the last command.
    last_len: u64,
    /// Size of the synthetic blob carried by snapshots.
    blob_bytes: u64,
}

/// The command that makes the state `bytes` large.
pub fn blob_command(bytes: u64) -> Vec<u8> {
    let mut cmd = BLOB_COMMAND.to_vec();
    cmd.extend_from_slice(&bytes.to_le_bytes());
    cmd
}

/// The blob's content at `offset` (a pattern that does not compress away).
fn blob_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

impl StateMachine for BenchSm {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            self.count += 1;
            self.last_len = e.cmd.len() as u64;
            if let Some(n) = e.cmd.strip_prefix(BLOB_COMMAND) {
                let n: [u8; 8] = n
                    .try_into()
                    .map_err(|_| SmError::new("blob command needs 8 bytes"))?;
                self.blob_bytes = u64::from_le_bytes(n);
            }
            e.result.value = self.count;
        }
        Ok(())
    }

    fn lookup(&self, _query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.count.to_le_bytes().to_vec())
    }

    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        w.write_all(&self.count.to_le_bytes())?;
        w.write_all(&self.last_len.to_le_bytes())?;
        w.write_all(&self.blob_bytes.to_le_bytes())?;
        let mut buf = vec![0u8; BLOB_WRITE_BYTES];
        let mut offset = 0;
        while offset < self.blob_bytes {
            if stop.is_set() {
                return Err(SmError::new("stopped"));
            }
            let n = (self.blob_bytes - offset).min(BLOB_WRITE_BYTES as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = blob_byte(offset + i as u64);
            }
            w.write_all(&buf[..n])?;
            offset += n as u64;
        }
        Ok(())
    }

    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        let mut word = [0u8; 8];
        r.read_exact(&mut word)?;
        self.count = u64::from_le_bytes(word);
        r.read_exact(&mut word)?;
        self.last_len = u64::from_le_bytes(word);
        r.read_exact(&mut word)?;
        self.blob_bytes = u64::from_le_bytes(word);
        // Read (and check) the blob as a real state machine would load it.
        let mut buf = vec![0u8; BLOB_WRITE_BYTES];
        let mut offset = 0;
        while offset < self.blob_bytes {
            if stop.is_set() {
                return Err(SmError::new("stopped"));
            }
            let n = (self.blob_bytes - offset).min(BLOB_WRITE_BYTES as u64) as usize;
            r.read_exact(&mut buf[..n])?;
            if buf[0] != blob_byte(offset) || buf[n - 1] != blob_byte(offset + n as u64 - 1) {
                return Err(SmError::new(format!("blob differs at {offset}")));
            }
            offset += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trip_carries_count_and_blob() {
        let mut sm = BenchSm::default();
        let mut entries = vec![
            SmEntry {
                cmd: b"x".to_vec().into(),
                ..SmEntry::default()
            },
            SmEntry {
                cmd: blob_command(3 << 20 | 7).into(),
                ..SmEntry::default()
            },
        ];
        sm.update(&mut entries).unwrap();
        assert_eq!(entries[1].result.value, 2);
        let mut buf = Vec::new();
        sm.save_snapshot(&mut buf, &StopFlag::new()).unwrap();
        assert_eq!(buf.len(), 24 + (3 << 20 | 7));
        let mut other = BenchSm::default();
        other
            .recover_from_snapshot(&mut &buf[..], &StopFlag::new())
            .unwrap();
        assert_eq!(other.count, 2);
        assert_eq!(other.blob_bytes, 3 << 20 | 7);
        assert_eq!(other.lookup(b"").unwrap(), 2u64.to_le_bytes());
    }
}
