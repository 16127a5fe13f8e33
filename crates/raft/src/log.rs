//! The replica's view of its log: the durable part (through [`LogReader`])
//! followed by entries and a snapshot not yet persisted ("unstable").

use crate::entry::{Entry, SnapshotMeta};
use crate::ids::{Index, Term};
use crate::log_reader::{LogError, LogReader};
use crate::memlog::limit_size;

/// Entries and a snapshot received or created but not yet durable.
///
/// Invariant: when `snapshot` is set, `offset == snapshot.index + 1`;
/// `entries[i].index == offset + i`; `offset <= in_progress <= offset +
/// entries.len()`.
#[derive(Debug)]
struct Unstable {
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    offset: Index,
    /// The first index not yet handed out to be written: entries below it
    /// are in a write in flight (asynchronous storage writes), readable
    /// here until that write is reported durable.
    in_progress: Index,
}

impl Unstable {
    fn maybe_first_index(&self) -> Option<Index> {
        self.snapshot.as_ref().map(|s| s.index.next())
    }

    fn maybe_last_index(&self) -> Option<Index> {
        if let Some(last) = self.entries.last() {
            return Some(last.index);
        }
        self.snapshot.as_ref().map(|s| s.index)
    }

    fn maybe_term(&self, i: Index) -> Option<Term> {
        if i < self.offset {
            return self
                .snapshot
                .as_ref()
                .filter(|s| s.index == i)
                .map(|s| s.term);
        }
        let off = (i.0 - self.offset.0) as usize;
        self.entries.get(off).map(|e| e.term)
    }

    fn truncate_and_append(&mut self, ents: &[Entry]) {
        let after = ents[0].index;
        let end = self.offset.plus(self.entries.len() as u64);
        if after == end {
            self.entries.extend_from_slice(ents);
        } else if after <= self.offset {
            // Replaces everything unstable (and, once persisted, the durable tail).
            self.offset = after;
            self.entries = ents.to_vec();
        } else {
            self.entries.truncate((after.0 - self.offset.0) as usize);
            self.entries.extend_from_slice(ents);
        }
        // Replaced entries that were handed out are written again: the new
        // write, later in order, replaces them in storage too.
        self.in_progress = self.in_progress.min(after).max(self.offset);
    }

    /// The entries not yet handed out to be written.
    fn not_in_progress(&self) -> &[Entry] {
        let from = (self.in_progress.0 - self.offset.0) as usize;
        &self.entries[from.min(self.entries.len())..]
    }

    fn stable_to(&mut self, i: Index, t: Term) {
        if i < self.offset || self.maybe_term(i) != Some(t) {
            return;
        }
        let n = (i.0 - self.offset.0 + 1) as usize;
        self.entries.drain(..n);
        self.offset = i.next();
        self.in_progress = self.in_progress.max(self.offset);
    }
}

/// A replica's log.
///
/// Invariants: `applied <= applying <= committed <= last_index()`; committed
/// never decreases; entries at or below `committed` are never replaced.
pub struct RaftLog<L: LogReader> {
    reader: L,
    unstable: Unstable,
    /// Highest index known committed.
    committed: Index,
    /// Highest index handed out for applying.
    applying: Index,
    /// Highest index the state machine applied.
    applied: Index,
    /// Batches handed out and not yet applied: (last index, bytes).
    applying_batches: std::collections::VecDeque<(Index, u64)>,
    /// Sum of the bytes of `applying_batches`.
    applying_bytes: u64,
    /// Most bytes handed out and not yet applied (a slow state machine
    /// must not make the apply queue grow without bound).
    max_applying_bytes: u64,
    /// The first storage error a read of the durable log returned; once
    /// set, the log hands out nothing more to apply (see
    /// [`storage_error`](Self::storage_error)).
    storage_error: std::sync::OnceLock<LogError>,
}

impl<L: LogReader> RaftLog<L> {
    /// A log over `reader`, resuming at `commit` and `applied`.
    pub fn new(reader: L, commit: Index, applied: Index) -> RaftLog<L> {
        let snap_index = reader.snapshot().index;
        let last = reader.last_index();
        let committed = commit.max(snap_index).min(last);
        // Applied below the recorded snapshot only where the log still holds
        // every entry after it: a replica whose newest snapshot is damaged
        // restarts from an older one and re-applies (docs/recovery.md).
        let applied = if applied.next() >= reader.first_index() {
            applied
        } else {
            applied.max(snap_index)
        }
        .min(committed);
        RaftLog {
            unstable: Unstable {
                snapshot: None,
                entries: Vec::new(),
                offset: last.next(),
                in_progress: last.next(),
            },
            reader,
            committed,
            applying: applied,
            applied,
            applying_batches: Default::default(),
            applying_bytes: 0,
            max_applying_bytes: u64::MAX,
            storage_error: std::sync::OnceLock::new(),
        }
    }

    /// Bounds the bytes of committed entries handed out by
    /// [`take_next_committed`](Self::take_next_committed) and not yet
    /// reported applied (at least one entry is always handed out when
    /// nothing is outstanding). Unbounded by default.
    pub fn set_max_applying_bytes(&mut self, max: u64) {
        self.max_applying_bytes = max.max(1);
    }

    /// Bytes handed out for applying and not yet reported applied.
    pub fn applying_bytes(&self) -> u64 {
        self.applying_bytes
    }

    /// The durable log.
    pub fn reader(&self) -> &L {
        &self.reader
    }

    /// The durable log, mutably (tests and engines that own it).
    pub fn reader_mut(&mut self) -> &mut L {
        &mut self.reader
    }

    /// Index of the first available entry.
    pub fn first_index(&self) -> Index {
        self.unstable
            .maybe_first_index()
            .unwrap_or_else(|| self.reader.first_index())
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> Index {
        self.unstable
            .maybe_last_index()
            .unwrap_or_else(|| self.reader.last_index())
    }

    /// Term of the last entry. Fails only if the storage fails to read it
    /// (the error is also kept, see [`storage_error`](Self::storage_error)).
    pub fn last_term(&self) -> Result<Term, LogError> {
        self.term(self.last_index())
    }

    /// The first storage error ([`LogError::Storage`]) a read of the durable
    /// log returned, if any. Reads never panic on one: they fail (or, where
    /// a caller cannot fail, hand out nothing), and the error is kept here
    /// for the engine, which fails the replica (DESIGN: a fault fails only
    /// its replica).
    pub fn storage_error(&self) -> Option<&LogError> {
        self.storage_error.get()
    }

    /// Records a storage failure found outside a read (e.g. a log the
    /// storage reports compacted without a snapshot).
    pub fn record_storage_error(&self, e: LogError) {
        let _ = self.storage_error.set(e);
    }

    /// Keeps the first storage error of a read of the durable log.
    fn note<T>(&self, r: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e @ LogError::Storage(_)) = &r {
            let _ = self.storage_error.set(e.clone());
        }
        r
    }

    /// Last index that is durable locally.
    pub fn stable_last_index(&self) -> Index {
        self.unstable.offset.prev().min(self.reader.last_index())
    }

    /// Highest committed index.
    pub fn committed(&self) -> Index {
        self.committed
    }

    /// Highest applied index.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Highest index handed out for applying.
    pub fn applying(&self) -> Index {
        self.applying
    }

    /// Term of the entry at `i`.
    pub fn term(&self, i: Index) -> Result<Term, LogError> {
        let dummy = self.first_index().prev();
        if i < dummy {
            return Err(LogError::Compacted);
        }
        if i > self.last_index() {
            return Err(LogError::Unavailable);
        }
        if let Some(t) = self.unstable.maybe_term(i) {
            return Ok(t);
        }
        self.note(self.reader.term(i))
    }

    /// Term at `i`, or 0 if unknown (compacted or beyond the end).
    pub fn term_or_zero(&self, i: Index) -> Term {
        self.term(i).unwrap_or(Term(0))
    }

    /// Whether the entry at `i` has term `t`.
    pub fn match_term(&self, i: Index, t: Term) -> bool {
        self.term(i) == Ok(t)
    }

    /// Raft §5.4.1: is a log ending at (`index`, `term`) at least as up to date as ours?
    /// A log whose last term cannot be read is never behind: no vote is
    /// granted on a guess.
    pub fn is_up_to_date(&self, index: Index, term: Term) -> bool {
        let Ok(last_term) = self.last_term() else {
            return false;
        };
        term > last_term || (term == last_term && index >= self.last_index())
    }

    /// Entries in `[lo, hi)` bounded by `max_bytes` (at least one).
    pub fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < self.first_index() {
            return Err(LogError::Compacted);
        }
        if hi > self.last_index().next() {
            return Err(LogError::Unavailable);
        }
        let offset = self.unstable.offset;
        let mut out = if lo < offset {
            self.note(self.reader.entries(lo, hi.min(offset), max_bytes))?
        } else {
            Vec::new()
        };
        let got_all_stable =
            lo >= offset || out.last().map(|e| e.index.next()) == Some(hi.min(offset));
        if hi > offset && got_all_stable {
            let from = lo.max(offset);
            let a = (from.0 - offset.0) as usize;
            let b = (hi.0 - offset.0) as usize;
            let used: u64 = out.iter().map(Entry::size_bytes).sum();
            if out.is_empty() {
                out = limit_size(&self.unstable.entries[a..b], max_bytes);
            } else {
                for e in &self.unstable.entries[a..b] {
                    if used + e.size_bytes() > max_bytes {
                        break;
                    }
                    out.push(e.clone());
                }
            }
        }
        Ok(out)
    }

    /// Index of the first entry of `ents` that is not already in the log with
    /// the same term, or `None` if all are present (Raft §5.3).
    fn find_conflict(&self, ents: &[Entry]) -> Option<Index> {
        ents.iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map(|e| e.index)
    }

    /// Handles the entries of an append whose previous entry is
    /// (`prev_index`, `prev_term`). Returns the index of the last entry the
    /// message proves matching, or `None` if the previous entry does not match.
    ///
    /// Entries already present with the same term are never rewritten, so a
    /// stale or reordered append cannot truncate the log (Raft §5.3).
    pub fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        leader_commit: Index,
        ents: &[Entry],
    ) -> Option<Index> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index.plus(ents.len() as u64);
        if let Some(conflict) = self.find_conflict(ents) {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry (commit {})",
                self.committed
            );
            let start = (conflict.0 - prev_index.0 - 1) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(leader_commit.min(last_new));
        Some(last_new)
    }

    /// Appends entries after (possibly replacing) the tail. Returns the new last index.
    pub fn append(&mut self, ents: &[Entry]) -> Index {
        if let Some(first) = ents.first() {
            assert!(
                first.index > self.committed,
                "append at {} would overwrite committed {}",
                first.index,
                self.committed
            );
            assert!(
                first.index <= self.last_index().next(),
                "append at {} leaves a gap after {}",
                first.index,
                self.last_index()
            );
            self.unstable.truncate_and_append(ents);
        }
        self.last_index()
    }

    /// Advances the commit index (never backwards).
    pub fn commit_to(&mut self, to: Index) {
        if to > self.committed {
            assert!(
                to <= self.last_index(),
                "commit {to} beyond last index {}",
                self.last_index()
            );
            self.committed = to;
        }
    }

    /// Records that the state machine applied up to `i`.
    pub fn applied_to(&mut self, i: Index) {
        if i > self.applied {
            assert!(
                i <= self.committed,
                "applied {i} beyond commit {}",
                self.committed
            );
            self.applied = i;
            if self.applying < i {
                self.applying = i;
            }
        }
        while let Some(&(last, bytes)) = self.applying_batches.front()
            && last <= self.applied
        {
            self.applying_bytes -= bytes;
            self.applying_batches.pop_front();
        }
    }

    /// Whether committed entries can be handed out now.
    pub fn has_next_committed(&self) -> bool {
        self.committed_waiting() && self.applying_bytes < self.max_applying_bytes
    }

    /// Whether committed entries are held back only because the bytes
    /// handed out and not yet applied reached their bound.
    pub fn apply_throttled(&self) -> bool {
        self.committed_waiting() && self.applying_bytes >= self.max_applying_bytes
    }

    fn committed_waiting(&self) -> bool {
        self.storage_error.get().is_none()
            && self.unstable.snapshot.is_none()
            && self.applying < self.committed.min(self.stable_last_index())
    }

    /// Committed, locally durable entries not yet handed out (bounded by
    /// `max_bytes` and by what the bound on bytes not yet applied leaves);
    /// marks them handed out. If the storage fails to read them, nothing is
    /// handed out, now or later, and the error is kept in
    /// [`storage_error`](Self::storage_error).
    pub fn take_next_committed(&mut self, max_bytes: u64) -> Vec<Entry> {
        self.take_next_committed_holding(max_bytes, Index(u64::MAX))
            .0
    }

    /// As [`take_next_committed`](Self::take_next_committed), but stops
    /// before the first config change above `hold_above` (a config change
    /// is handed out only once the durable commit index covers it, see
    /// [`Raft::persisted`](crate::Raft::persisted)); returns the index of
    /// the config change it stopped at, if any.
    pub fn take_next_committed_holding(
        &mut self,
        max_bytes: u64,
        hold_above: Index,
    ) -> (Vec<Entry>, Option<Index>) {
        if !self.has_next_committed() {
            return (Vec::new(), None);
        }
        let hi = self.committed.min(self.stable_last_index()).next();
        let budget = max_bytes.min(self.max_applying_bytes - self.applying_bytes);
        let ents = match self.entries(self.applying.next(), hi, budget) {
            Ok(ents) => ents,
            Err(e) => {
                // Compacted or unavailable would be a storage bug: the
                // durable log lost committed entries not yet applied.
                let _ = self.storage_error.set(match e {
                    LogError::Storage(_) => e,
                    other => LogError::Storage(format!(
                        "committed entries from {}: {other}",
                        self.applying.next()
                    )),
                });
                return (Vec::new(), None);
            }
        };
        let mut ents = ents;
        let mut held = None;
        if let Some(cut) = ents
            .iter()
            .position(|e| e.is_config_change() && e.index > hold_above)
        {
            held = Some(ents[cut].index);
            ents.truncate(cut);
        }
        if let Some(last) = ents.last() {
            self.applying = last.index;
            let bytes: u64 = ents.iter().map(Entry::size_bytes).sum();
            self.applying_bytes += bytes;
            self.applying_batches.push_back((last.index, bytes));
        }
        (ents, held)
    }

    /// Committed entries not yet applied (for the config-change-before-campaign check).
    pub fn unapplied_committed(&self, max_bytes: u64) -> Vec<Entry> {
        let hi = self.committed.min(self.last_index()).next();
        if self.applied.next() >= hi {
            return Vec::new();
        }
        self.entries(self.applied.next(), hi, max_bytes)
            .unwrap_or_default()
    }

    /// Entries not yet durable (including those in a write in flight).
    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable.entries
    }

    /// Entries not yet durable and not yet handed out to be written.
    pub fn unstable_not_in_progress(&self) -> &[Entry] {
        self.unstable.not_in_progress()
    }

    /// Marks every unstable entry handed out to be written.
    pub fn mark_in_progress(&mut self) {
        self.unstable.in_progress = self
            .unstable
            .offset
            .plus(self.unstable.entries.len() as u64);
    }

    /// The last unstable entry's index and term, if any: once a write
    /// taken after it was handed out is durable, so is every entry up to it.
    pub fn unstable_last(&self) -> Option<(Index, Term)> {
        self.unstable.entries.last().map(|e| (e.index, e.term))
    }

    /// A snapshot received but not yet durable.
    pub fn unstable_snapshot(&self) -> Option<&SnapshotMeta> {
        self.unstable.snapshot.as_ref()
    }

    /// The newest snapshot metadata (unstable first).
    pub fn snapshot(&self) -> SnapshotMeta {
        match &self.unstable.snapshot {
            Some(s) => s.clone(),
            None => self.reader.snapshot(),
        }
    }

    /// Entries up to (`i`, `t`) are durable.
    pub fn stable_to(&mut self, i: Index, t: Term) {
        self.unstable.stable_to(i, t);
    }

    /// The unstable snapshot at `i` is durable.
    pub fn stable_snap_to(&mut self, i: Index) {
        if self.unstable.snapshot.as_ref().map(|s| s.index) == Some(i) {
            self.unstable.snapshot = None;
        }
    }

    /// Replaces the log by a snapshot received from the leader.
    pub fn restore(&mut self, snap: SnapshotMeta) {
        assert!(
            snap.index > self.committed,
            "restore of snapshot {} at or below commit {}",
            snap.index,
            self.committed
        );
        self.committed = snap.index;
        self.applying = snap.index;
        self.unstable.offset = snap.index.next();
        self.unstable.in_progress = snap.index.next();
        self.unstable.entries.clear();
        self.unstable.snapshot = Some(snap);
    }

    /// Raft §5.3 fast backtracking: the largest index `<= index` whose term
    /// is `<= term`, with its term (or the first available position).
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term && i > Index(0) => i = i.prev(),
                Ok(t) => return (i, t),
                Err(_) => return (i, Term(0)),
            }
        }
    }
}
