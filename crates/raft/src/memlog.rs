//! An in-memory [`LogReader`] with the write operations an engine performs,
//! for tests, benches and the simulator.

use crate::entry::{Entry, SnapshotMeta};
use crate::ids::{Index, Term};
use crate::log_reader::{LogError, LogReader};

/// An in-memory durable log: a snapshot position followed by entries.
///
/// Invariant: `entries[i].index == snapshot.index + 1 + i`.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// Appends entries, replacing any existing entries from the first new
    /// index on (Raft log truncation on conflict).
    ///
    /// # Panics
    /// If the entries would leave a gap or overwrite the snapshot.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index > self.snapshot.index,
            "append at {} overwrites snapshot {}",
            first.index,
            self.snapshot.index
        );
        let offset = (first.index.0 - self.snapshot.index.0 - 1) as usize;
        assert!(
            offset <= self.entries.len(),
            "append at {} leaves a gap",
            first.index
        );
        self.entries.truncate(offset);
        self.entries.extend_from_slice(entries);
    }

    /// Drops entries up to and including `index`, keeping its term as the
    /// compaction point. Entries beyond `last_index` are not required.
    pub fn compact(&mut self, index: Index) {
        if index <= self.snapshot.index {
            return;
        }
        let term = self.term(index).expect("compact: index unavailable");
        let n = (index.0 - self.snapshot.index.0) as usize;
        self.entries.drain(..n.min(self.entries.len()));
        self.snapshot.index = index;
        self.snapshot.term = term;
    }

    /// Installs a snapshot: every entry is discarded unless the log holds the
    /// snapshot's index with its term, in which case later entries stay.
    pub fn apply_snapshot(&mut self, snapshot: SnapshotMeta) {
        if snapshot.index <= self.snapshot.index {
            return;
        }
        if self.term(snapshot.index) == Ok(snapshot.term) {
            let n = (snapshot.index.0 - self.snapshot.index.0) as usize;
            self.entries.drain(..n);
        } else {
            self.entries.clear();
        }
        self.snapshot = snapshot;
    }

    /// Records newer snapshot metadata without touching entries (a snapshot
    /// taken locally at an index already in the log).
    pub fn set_snapshot(&mut self, snapshot: SnapshotMeta) {
        if snapshot.index > self.snapshot.index {
            self.compact(snapshot.index);
            self.snapshot = snapshot;
        }
    }

    /// Drops every entry after `index` (a storage fault that lost the
    /// newest entries; for tests). Entries at or below the snapshot stay.
    pub fn truncate_after(&mut self, index: Index) {
        let keep = index.0.saturating_sub(self.snapshot.index.0) as usize;
        self.entries.truncate(keep);
    }

    /// All entries held.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl LogReader for MemLog {
    fn first_index(&self) -> Index {
        self.snapshot.index.next()
    }

    fn last_index(&self) -> Index {
        self.snapshot.index.plus(self.entries.len() as u64)
    }

    fn term(&self, index: Index) -> Result<Term, LogError> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.snapshot.index {
            return Err(LogError::Compacted);
        }
        let off = (index.0 - self.snapshot.index.0 - 1) as usize;
        self.entries
            .get(off)
            .map(|e| e.term)
            .ok_or(LogError::Unavailable)
    }

    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        if low <= self.snapshot.index {
            return Err(LogError::Compacted);
        }
        if high > self.last_index().next() {
            return Err(LogError::Unavailable);
        }
        let start = (low.0 - self.snapshot.index.0 - 1) as usize;
        let end = (high.0.saturating_sub(self.snapshot.index.0 + 1)) as usize;
        Ok(limit_size(&self.entries[start..end.max(start)], max_bytes))
    }

    fn snapshot(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }
}

/// The longest prefix of `entries` within `max_bytes`, but at least one entry.
pub fn limit_size(entries: &[Entry], max_bytes: u64) -> Vec<Entry> {
    let mut total = 0u64;
    let mut n = 0;
    for e in entries {
        total += e.size_bytes();
        if n > 0 && total > max_bytes {
            break;
        }
        n += 1;
    }
    entries[..n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index: Index(index),
            term: Term(term),
            ..Entry::default()
        }
    }

    #[test]
    fn append_truncates_tail_and_compact_keeps_term() {
        let mut log = MemLog::new();
        log.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        log.append(&[e(2, 2)]);
        assert_eq!(log.last_index(), Index(2));
        assert_eq!(log.term(Index(2)), Ok(Term(2)));
        log.compact(Index(1));
        assert_eq!(log.first_index(), Index(2));
        assert_eq!(log.term(Index(1)), Ok(Term(1)));
        assert_eq!(log.term(Index(0)), Err(LogError::Compacted));
        assert_eq!(
            log.entries(Index(1), Index(3), u64::MAX),
            Err(LogError::Compacted)
        );
        assert_eq!(log.entries(Index(2), Index(3), 0).unwrap().len(), 1);
    }
}
