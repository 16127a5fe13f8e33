//! The shape of a replica's log — where it starts, where it ends and the
//! term of every entry — and the rules that change it: append (with tail
//! replacement), snapshot installation and compaction.
//!
//! Every [`LogDb`](super::LogDb) implementation runs the same rules, and the
//! write-ahead log runs them again, identically, when it replays its records
//! at restart; that is what makes replay reproduce the state a running
//! process had.

use std::collections::{HashMap, VecDeque};

use longship_raft::{
    Entry, HardState, Index, RecoveryGuard, ReplicaId, ShardId, SnapshotMeta, Term,
};

use crate::error::{Error, Result};

/// A replica's identity in log storage.
pub(crate) type Key = (ShardId, ReplicaId);

/// Position and terms of a replica's log, without the entries.
///
/// Invariants (checked by [`Shape::check`]): `marker <= last`;
/// `terms` is empty iff `last == marker`, otherwise its first run starts at
/// `marker + 1`, starts strictly ascend and stay `<= last`, and neighbouring
/// runs have different terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Entries at or below this index are gone (compacted or covered by a
    /// snapshot); `term(marker)` is still known.
    pub marker: Index,
    /// Term of the entry at `marker`.
    pub marker_term: Term,
    /// Index of the last entry (`marker` when the log is empty).
    pub last: Index,
    /// Term runs: `(first index with this term, term)`, covering `(marker, last]`.
    pub terms: VecDeque<(Index, Term)>,
    /// Index of the newest snapshot recorded (0 if none).
    pub snapshot_index: Index,
}

/// What installing a snapshot did to the entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Installed {
    /// Not newer than the snapshot already recorded: nothing changed.
    Stale,
    /// Recorded; entries after the snapshot index (if any) stay.
    Kept,
    /// Recorded; every entry is gone and the log restarts after it.
    Cleared,
}

impl Shape {
    /// Index of the first entry still available.
    pub fn first_index(&self) -> Index {
        self.marker.next()
    }

    /// Term of the entry at `index`.
    pub fn term(&self, index: Index) -> Result<Term> {
        if index == self.marker {
            return Ok(self.marker_term);
        }
        if index < self.marker {
            return Err(Error::Compacted);
        }
        if index > self.last {
            return Err(Error::Unavailable);
        }
        let pos = self.terms.partition_point(|&(start, _)| start <= index);
        // `pos >= 1`: the first run starts at marker + 1 <= index.
        Ok(self.terms[pos - 1].1)
    }

    /// Checks an append of `count` entries starting at `first` without
    /// changing anything: `Ok(None)` if every entry is at or below the
    /// marker, else `(entries to skip, index the kept entries start at)`.
    pub fn check_append(&self, first: Index, count: usize) -> Result<Option<(usize, Index)>> {
        if count == 0 || first.plus(count as u64 - 1) <= self.marker {
            return Ok(None);
        }
        let skip = if first <= self.marker {
            (self.marker.0 - first.0 + 1) as usize
        } else {
            0
        };
        let from = first.plus(skip as u64);
        if from > self.last.next() {
            return Err(Error::InvalidArgument(format!(
                "append at {from} leaves a gap after last index {}",
                self.last
            )));
        }
        Ok(Some((skip, from)))
    }

    /// Appends entries `first ..` (terms given by `term_of(i)` for the
    /// `i`-th), replacing every entry from the first kept index on (Raft log
    /// truncation on conflict, Raft §5.3). Entries at or below the marker are
    /// skipped. Returns what [`Shape::check_append`] returned.
    pub fn append(
        &mut self,
        first: Index,
        count: usize,
        term_of: impl Fn(usize) -> Term,
    ) -> Result<Option<(usize, Index)>> {
        let Some((skip, from)) = self.check_append(first, count)? else {
            return Ok(None);
        };
        self.truncate_from(from);
        for i in skip..count {
            let t = term_of(i);
            if self.terms.back().is_none_or(|&(_, last)| last != t) {
                self.terms.push_back((first.plus(i as u64), t));
            }
        }
        self.last = first.plus(count as u64 - 1);
        Ok(Some((skip, from)))
    }

    /// Drops every entry at or after `from` (`from > marker`).
    fn truncate_from(&mut self, from: Index) {
        debug_assert!(from > self.marker);
        while self.terms.back().is_some_and(|&(start, _)| start >= from) {
            self.terms.pop_back();
        }
        if from <= self.last {
            self.last = from.prev();
        }
    }

    /// Installs a snapshot received from a leader (Raft §7, InstallSnapshot):
    /// entries up to its index are dropped; later entries stay only if the
    /// log holds the snapshot's index with the snapshot's term.
    pub fn install(&mut self, index: Index, term: Term) -> Installed {
        if index <= self.snapshot_index {
            return Installed::Stale;
        }
        self.snapshot_index = index;
        if index <= self.marker {
            return Installed::Kept;
        }
        if index <= self.last && self.term(index).ok() == Some(term) {
            self.compact(index);
            return Installed::Kept;
        }
        self.marker = index;
        self.marker_term = term;
        self.last = index;
        self.terms.clear();
        Installed::Cleared
    }

    /// Records a snapshot taken locally: entries are not touched. Returns
    /// whether it is newer than the one recorded.
    pub fn record_snapshot(&mut self, index: Index) -> bool {
        if index <= self.snapshot_index {
            return false;
        }
        self.snapshot_index = index;
        true
    }

    /// Makes entries up to `index` (at most the last index) unavailable.
    /// Returns whether anything changed.
    pub fn compact(&mut self, index: Index) -> bool {
        let index = index.min(self.last);
        if index <= self.marker {
            return false;
        }
        let term = self.term(index).expect("marker < index <= last has a term");
        self.marker = index;
        self.marker_term = term;
        while self.terms.len() >= 2 && self.terms[1].0 <= index.next() {
            self.terms.pop_front();
        }
        if self.last == self.marker {
            self.terms.clear();
        } else if let Some(front) = self.terms.front_mut() {
            front.0 = index.next();
        }
        true
    }

    /// Whether the invariants hold (used by asserts and by replay, which
    /// must not trust decoded values).
    pub fn check(&self) -> bool {
        if self.marker > self.last {
            return false;
        }
        if self.terms.is_empty() {
            return self.last == self.marker;
        }
        if self.terms[0].0 != self.marker.next() {
            return false;
        }
        let mut prev: Option<(Index, Term)> = None;
        for &(start, term) in &self.terms {
            if start > self.last {
                return false;
            }
            if let Some((ps, pt)) = prev
                && (start <= ps || term == pt)
            {
                return false;
            }
            prev = Some((start, term));
        }
        true
    }
}

/// One change to log storage, in the order it is applied. Every `LogDb`
/// turns its calls into these, validates a whole batch of them and only
/// then applies it, so a batch is all or nothing.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// The persistent part of a Raft update: install `snapshot`, append
    /// `entries`, then set `hard_state`.
    Update {
        /// The replica.
        key: Key,
        /// A snapshot to install, if any.
        snapshot: Option<SnapshotMeta>,
        /// Entries to append (contiguous, ascending).
        entries: Vec<Entry>,
        /// Hard state to set, if any.
        hard_state: Option<HardState>,
        /// Forget the replica's recovery guard (after the hard state).
        clear_recovery: bool,
    },
    /// Put the replica under a recovery guard, merged with any it has
    /// ([`RecoveryGuard::merge`]).
    SetGuard {
        /// The replica.
        key: Key,
        /// The guard.
        guard: RecoveryGuard,
    },
    /// Record metadata of a snapshot taken locally; entries stay.
    SaveSnapshot {
        /// The replica.
        key: Key,
        /// The snapshot.
        meta: SnapshotMeta,
    },
    /// Make entries up to `index` unavailable.
    Compact {
        /// The replica.
        key: Key,
        /// Last index to remove.
        index: Index,
    },
    /// Remove everything stored for a replica.
    Remove {
        /// The replica.
        key: Key,
    },
}

impl Op {
    /// The replica the op concerns.
    pub fn key(&self) -> Key {
        match self {
            Op::Update { key, .. }
            | Op::SetGuard { key, .. }
            | Op::SaveSnapshot { key, .. }
            | Op::Compact { key, .. }
            | Op::Remove { key } => *key,
        }
    }

    /// Applies the op to a shape (`None` = nothing stored); fails only on a gap.
    pub fn apply_to_shape(&self, shape: &mut Option<Shape>) -> Result<()> {
        match self {
            Op::Update {
                snapshot,
                entries,
                hard_state,
                ..
            } => {
                let s = shape.get_or_insert_with(Shape::default);
                if let Some(m) = snapshot {
                    s.install(m.index, m.term);
                }
                if let Some(first) = entries.first() {
                    s.append(first.index, entries.len(), |i| entries[i].term)?;
                }
                let _ = hard_state;
            }
            Op::SetGuard { .. } => {
                shape.get_or_insert_with(Shape::default);
            }
            Op::SaveSnapshot { meta, .. } => {
                shape
                    .get_or_insert_with(Shape::default)
                    .record_snapshot(meta.index);
            }
            Op::Compact { index, .. } => {
                if let Some(s) = shape {
                    s.compact(*index);
                }
            }
            Op::Remove { .. } => *shape = None,
        }
        Ok(())
    }
}

/// Checks the stateless rules of a batch of ops: ids are not zero, entries
/// are contiguous and ascending from index 1 up, snapshots are not empty.
pub(crate) fn check_stateless(ops: &[Op]) -> Result<()> {
    for op in ops {
        let (shard, replica) = op.key();
        if shard.0 == 0 || replica.is_none() {
            return Err(Error::InvalidArgument(format!(
                "shard {shard} replica {replica}: ids must not be 0"
            )));
        }
        match op {
            Op::Update {
                snapshot, entries, ..
            } => {
                if snapshot.as_ref().is_some_and(|s| s.index.0 == 0) {
                    return Err(Error::InvalidArgument("snapshot at index 0".into()));
                }
                if entries.first().is_some_and(|e| e.index.0 == 0) {
                    return Err(Error::InvalidArgument("entry at index 0".into()));
                }
                for w in entries.windows(2) {
                    if w[1].index != w[0].index.next() {
                        return Err(Error::InvalidArgument(format!(
                            "entries not contiguous: {} then {}",
                            w[0].index, w[1].index
                        )));
                    }
                }
            }
            Op::SaveSnapshot { meta, .. } if meta.index.0 == 0 => {
                return Err(Error::InvalidArgument("snapshot at index 0".into()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates one op against a shape without changing it, when that is
/// possible without a copy; `None` when the op needs the copying path.
fn check_in_place(op: &Op, current: Option<&Shape>) -> Option<Result<()>> {
    match op {
        Op::Update {
            snapshot: None,
            entries,
            ..
        } => {
            let first = entries.first()?;
            let empty = Shape::default();
            Some(
                current
                    .unwrap_or(&empty)
                    .check_append(first.index, entries.len())
                    .map(|_| ()),
            )
        }
        Op::Update {
            snapshot: Some(_), ..
        } => None,
        Op::SetGuard { .. } | Op::SaveSnapshot { .. } | Op::Compact { .. } | Op::Remove { .. } => {
            Some(Ok(()))
        }
    }
}

/// Validates a group of batches in order, each against the state the
/// earlier accepted ones leave; returns each batch's verdict. When no
/// replica appears twice in the group (the common case), every op is
/// checked in place, without copying any shape.
pub(crate) fn validate_group<'a>(
    batches: impl Iterator<Item = &'a [Op]> + Clone,
    current: impl Fn(&Key) -> Option<&'a Shape>,
) -> Vec<Result<()>> {
    let mut keys: Vec<Key> = batches.clone().flatten().map(Op::key).collect();
    keys.sort_unstable();
    let distinct = keys.windows(2).all(|w| w[0] != w[1]);
    let mut staged: HashMap<Key, Option<Shape>> = HashMap::new();
    batches
        .map(|ops| {
            if distinct {
                let mut verdict = Ok(());
                for op in ops {
                    let r = match check_in_place(op, current(&op.key())) {
                        Some(r) => r,
                        None => {
                            let mut s = current(&op.key()).cloned();
                            op.apply_to_shape(&mut s)
                        }
                    };
                    if r.is_err() {
                        verdict = r;
                        break;
                    }
                }
                verdict
            } else {
                stage_batch(ops, &mut staged, |k| current(k).cloned())
            }
        })
        .collect()
}

/// Validates `ops` in order against shapes given by `staged` (changes of
/// earlier accepted batches) and then `current` (the stored state). On
/// success the batch's shape changes are merged into `staged`.
pub(crate) fn stage_batch(
    ops: &[Op],
    staged: &mut HashMap<Key, Option<Shape>>,
    current: impl Fn(&Key) -> Option<Shape>,
) -> Result<()> {
    let mut scratch: HashMap<Key, Option<Shape>> = HashMap::new();
    for op in ops {
        let key = op.key();
        let shape = scratch
            .entry(key)
            .or_insert_with(|| match staged.get(&key) {
                Some(s) => s.clone(),
                None => current(&key),
            });
        op.apply_to_shape(shape)?;
    }
    staged.extend(scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_with(terms: &[u64]) -> Shape {
        let mut s = Shape::default();
        s.append(Index(1), terms.len(), |i| Term(terms[i])).unwrap();
        s
    }

    #[test]
    fn append_truncates_and_tracks_terms() {
        let mut s = shape_with(&[1, 1, 2, 2, 3]);
        assert!(s.check());
        assert_eq!(s.term(Index(4)).unwrap(), Term(2));
        assert_eq!(
            s.append(Index(3), 1, |_| Term(4)).unwrap(),
            Some((0, Index(3)))
        );
        assert_eq!(s.last, Index(3));
        assert_eq!(s.term(Index(3)).unwrap(), Term(4));
        assert!(s.check());
        assert!(s.append(Index(9), 1, |_| Term(4)).is_err());
    }

    #[test]
    fn compact_and_install() {
        let mut s = shape_with(&[1, 1, 2, 2, 3]);
        assert!(s.compact(Index(3)));
        assert_eq!(s.first_index(), Index(4));
        assert_eq!(s.term(Index(3)).unwrap(), Term(2));
        assert!(matches!(s.term(Index(2)), Err(Error::Compacted)));
        assert!(s.check());
        // Same index and term: later entries stay (Raft §7).
        assert_eq!(s.install(Index(4), Term(2)), Installed::Kept);
        assert_eq!((s.marker, s.last), (Index(4), Index(5)));
        // Unknown term: the log restarts after the snapshot.
        assert_eq!(s.install(Index(5), Term(9)), Installed::Cleared);
        assert_eq!((s.marker, s.last), (Index(5), Index(5)));
        assert_eq!(s.install(Index(5), Term(9)), Installed::Stale);
        // Entries at or below the marker are skipped.
        assert_eq!(
            s.append(Index(4), 3, |_| Term(9)).unwrap(),
            Some((2, Index(6)))
        );
        assert_eq!(s.last, Index(6));
        assert!(s.check());
    }
}
