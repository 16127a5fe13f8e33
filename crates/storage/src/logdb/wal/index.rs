//! The in-memory index of the write-ahead log: per replica, its log shape,
//! hard state, snapshot metadata, where its entries live on disk and a
//! bounded cache of its newest entries; per segment, how many entry runs
//! still point into it.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use longship_raft::{Entry, HardState, Index, RecoveryGuard, SnapshotMeta, Term};

use super::format::CheckpointReplica;
use crate::error::{Error, Result};
use crate::logdb::shape::{Installed, Key, Op, Shape};
use crate::vfs::File;

/// Segment id of a run whose record is in a segment deleted before the
/// oldest one replayed. Such runs must all be gone by the end of replay.
pub(crate) const PHANTOM: u64 = u64::MAX;

/// Where a record is: segment id, offset of its header, total length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Segment id.
    pub segment: u64,
    /// Offset of the record header in the segment.
    pub offset: u32,
    /// Header plus payload length.
    pub len: u32,
}

/// Entries `[first, first + count)` of a replica, all stored in the record
/// at `loc` (which may hold more entries, outside the run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// First live entry of the run.
    pub first: Index,
    /// Number of live entries (> 0).
    pub count: u64,
    /// The record holding them.
    pub loc: Loc,
}

impl Run {
    /// One past the last entry.
    pub fn end(&self) -> Index {
        self.first.plus(self.count)
    }
}

/// A segment file in use.
pub(crate) struct Segment {
    /// Its path.
    pub path: PathBuf,
    /// An open handle for reads (and, for the active one, writes).
    pub file: Arc<dyn File>,
    /// Number of runs pointing into it; it can be deleted at 0 (if it is
    /// not the active segment and every older one is gone).
    pub live_runs: u64,
    /// Sum of the record lengths of those runs (an estimate of the live
    /// bytes: a record counts whole while any entry of it is live).
    pub live_bytes: u64,
    /// Bytes of records in it (its length once it is no longer active).
    pub len: u64,
}

/// What [`IndexState::apply_update`] applies.
pub(crate) struct UpdateArgs<'a> {
    /// The replica.
    pub key: Key,
    /// A snapshot to install first.
    pub snapshot: Option<&'a SnapshotMeta>,
    /// A hard state to set last.
    pub hard_state: Option<&'a HardState>,
    /// Forget the recovery guard (after the hard state).
    pub clear_recovery: bool,
    /// Index of the first entry (ignored when `count` is 0).
    pub first: Index,
    /// Number of entries.
    pub count: usize,
    /// The record holding the entries.
    pub loc: Option<Loc>,
    /// The entries themselves, to cache (`None` during replay).
    pub cached: Option<&'a [Entry]>,
}

/// Everything about one replica.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplicaIndex {
    /// Log shape.
    pub shape: Shape,
    /// Last hard state saved.
    pub hard_state: HardState,
    /// Newest snapshot recorded. Invariant: `snapshot.index == shape.snapshot_index`.
    pub snapshot: SnapshotMeta,
    /// The recovery guard the replica runs under, if any.
    pub recovery: Option<RecoveryGuard>,
    /// Entry locations. Invariant (outside replay): contiguous, ascending,
    /// covering exactly `(shape.marker, shape.last]`.
    pub runs: VecDeque<Run>,
    /// Newest entries. Invariant: contiguous, within `(marker, last]`, and
    /// ending at `last` when not empty.
    pub cache: VecDeque<Entry>,
    /// Sum of `size_bytes` over `cache`.
    pub cache_bytes: u64,
}

/// The whole index.
pub(crate) struct IndexState {
    /// Replicas with something stored.
    pub replicas: BTreeMap<Key, ReplicaIndex>,
    /// Segments not yet deleted, by id.
    pub segments: BTreeMap<u64, Segment>,
    /// Sum of every replica's `cache_bytes`.
    pub cache_bytes: u64,
    /// Bound on `cache_bytes` after each write.
    pub max_cache_bytes: u64,
    /// Where cache eviction continues (round robin over replicas).
    evict_cursor: Option<Key>,
}

fn release(segments: &mut BTreeMap<u64, Segment>, loc: &Loc) {
    if let Some(s) = segments.get_mut(&loc.segment) {
        debug_assert!(s.live_runs > 0);
        s.live_runs -= 1;
        s.live_bytes -= u64::from(loc.len);
    }
}

fn retain(segments: &mut BTreeMap<u64, Segment>, loc: &Loc) {
    if let Some(s) = segments.get_mut(&loc.segment) {
        s.live_runs += 1;
        s.live_bytes += u64::from(loc.len);
    }
}

impl ReplicaIndex {
    /// Drops runs and cached entries outside `(marker, last]`.
    fn trim(&mut self, segments: &mut BTreeMap<u64, Segment>, total_cache: &mut u64) {
        let (lo, hi) = (self.shape.marker.next(), self.shape.last);
        while let Some(front) = self.runs.front_mut() {
            if front.end() <= lo {
                release(segments, &front.loc);
                self.runs.pop_front();
            } else {
                if front.first < lo {
                    front.count -= lo.0 - front.first.0;
                    front.first = lo;
                }
                break;
            }
        }
        self.truncate_runs_from(hi.next(), segments);
        while self.cache.front().is_some_and(|e| e.index < lo) {
            self.pop_cache_front(total_cache);
        }
        while self.cache.back().is_some_and(|e| e.index > hi) {
            let e = self.cache.pop_back().expect("checked");
            self.cache_bytes -= e.size_bytes();
            *total_cache -= e.size_bytes();
        }
    }

    /// Drops runs at or after `from`.
    fn truncate_runs_from(&mut self, from: Index, segments: &mut BTreeMap<u64, Segment>) {
        while let Some(back) = self.runs.back_mut() {
            if back.first >= from {
                release(segments, &back.loc);
                self.runs.pop_back();
            } else {
                if back.end() > from {
                    back.count = from.0 - back.first.0;
                }
                break;
            }
        }
    }

    fn pop_cache_front(&mut self, total_cache: &mut u64) {
        if let Some(e) = self.cache.pop_front() {
            self.cache_bytes -= e.size_bytes();
            *total_cache -= e.size_bytes();
        }
    }

    fn clear_cache(&mut self, total_cache: &mut u64) {
        *total_cache -= self.cache_bytes;
        self.cache_bytes = 0;
        self.cache.clear();
    }

    /// Whether the runs cover `(marker, last]` exactly, contiguously.
    pub fn runs_consistent(&self) -> bool {
        let mut next = self.shape.marker.next();
        for r in &self.runs {
            if r.first != next || r.count == 0 {
                return false;
            }
            next = r.end();
        }
        next == self.shape.last.next()
    }
}

impl IndexState {
    /// An empty index.
    pub fn new(max_cache_bytes: u64) -> IndexState {
        IndexState {
            replicas: BTreeMap::new(),
            segments: BTreeMap::new(),
            cache_bytes: 0,
            max_cache_bytes,
            evict_cursor: None,
        }
    }

    /// Applies one op whose record is at `loc`. `fill_cache` puts appended
    /// entries in the cache (not during replay, where entries are not kept).
    /// Fails only when the op does not fit the shape (a gap), which the
    /// writer rules out beforehand and replay reports as corruption.
    pub fn apply(&mut self, op: &Op, loc: Option<Loc>, fill_cache: bool) -> Result<()> {
        let key = op.key();
        match op {
            Op::Update {
                snapshot,
                entries,
                hard_state,
                clear_recovery,
                ..
            } => {
                let first = entries.first().map_or(Index(0), |e| e.index);
                let cached = if fill_cache { Some(&entries[..]) } else { None };
                self.apply_update(
                    UpdateArgs {
                        key,
                        snapshot: snapshot.as_ref(),
                        hard_state: hard_state.as_ref(),
                        clear_recovery: *clear_recovery,
                        first,
                        count: entries.len(),
                        loc,
                        cached,
                    },
                    |i| entries[i].term,
                )?;
            }
            Op::SetGuard { guard, .. } => {
                let r = self.replicas.entry(key).or_default();
                r.recovery = Some(r.recovery.map_or(*guard, |g| g.merge(*guard)));
            }
            Op::SaveSnapshot { meta, .. } => {
                let r = self.replicas.entry(key).or_default();
                if r.shape.record_snapshot(meta.index) {
                    r.snapshot = meta.clone();
                }
            }
            Op::Compact { index, .. } => {
                if let Some(r) = self.replicas.get_mut(&key)
                    && r.shape.compact(*index)
                {
                    r.trim(&mut self.segments, &mut self.cache_bytes);
                }
            }
            Op::Remove { .. } => {
                if let Some(mut r) = self.replicas.remove(&key) {
                    for run in &r.runs {
                        release(&mut self.segments, &run.loc);
                    }
                    r.clear_cache(&mut self.cache_bytes);
                }
            }
        }
        if let Some(r) = self.replicas.get(&key) {
            debug_assert!(r.shape.check());
            debug_assert_eq!(r.snapshot.index, r.shape.snapshot_index);
        }
        Ok(())
    }

    /// Applies an update: install the snapshot, append `count` entries from
    /// `first` (terms by `term_of`), set the hard state. Checks first, so a
    /// failure (a gap) changes nothing.
    pub fn apply_update(
        &mut self,
        u: UpdateArgs<'_>,
        term_of: impl Fn(usize) -> Term,
    ) -> Result<()> {
        let r = self.replicas.entry(u.key).or_default();
        if u.count > 0 {
            match u.snapshot {
                None => r.shape.check_append(u.first, u.count).map(|_| ())?,
                Some(s) => {
                    let mut probe = r.shape.clone();
                    probe.install(s.index, s.term);
                    probe.check_append(u.first, u.count)?;
                }
            }
        }
        if let Some(s) = u.snapshot
            && r.shape.install(s.index, s.term) != Installed::Stale
        {
            r.snapshot = s.clone();
            r.trim(&mut self.segments, &mut self.cache_bytes);
        }
        if u.count > 0 {
            let appended = r
                .shape
                .append(u.first, u.count, term_of)
                .expect("checked above");
            if let Some((skip, from)) = appended {
                r.truncate_runs_from(from, &mut self.segments);
                while r.cache.back().is_some_and(|e| e.index >= from) {
                    let e = r.cache.pop_back().expect("checked");
                    r.cache_bytes -= e.size_bytes();
                    self.cache_bytes -= e.size_bytes();
                }
                let loc = u.loc.expect("an update with entries has a record");
                retain(&mut self.segments, &loc);
                r.runs.push_back(Run {
                    first: from,
                    count: (u.count - skip) as u64,
                    loc,
                });
                if let Some(entries) = u.cached {
                    if r.cache.back().is_some_and(|e| e.index.next() != from) {
                        r.clear_cache(&mut self.cache_bytes);
                    }
                    for e in &entries[skip..] {
                        r.cache_bytes += e.size_bytes();
                        self.cache_bytes += e.size_bytes();
                        r.cache.push_back(e.clone());
                    }
                }
            }
        }
        if let Some(hs) = u.hard_state {
            r.hard_state = *hs;
        }
        if u.clear_recovery {
            r.recovery = None;
        }
        debug_assert!(r.shape.check());
        Ok(())
    }

    /// Records that entries `[first, first + count)` of `key` (terms by
    /// `term_of`) are now in the record at `loc`. They must be in the log
    /// with those terms; nothing else changes.
    pub fn relocate(
        &mut self,
        key: Key,
        first: Index,
        count: u64,
        term_of: impl Fn(u64) -> Term,
        loc: Loc,
    ) -> Result<()> {
        let Some(r) = self.replicas.get_mut(&key) else {
            return Err(Error::InvalidArgument(
                "relocated entries of an unknown replica".into(),
            ));
        };
        let end = first.plus(count);
        if count == 0 || first <= r.shape.marker || end > r.shape.last.next() {
            return Err(Error::InvalidArgument(format!(
                "relocated entries {first}..{end} outside the log"
            )));
        }
        for i in 0..count {
            if r.shape.term(first.plus(i)).ok() != Some(term_of(i)) {
                return Err(Error::InvalidArgument(
                    "relocated entry with another term".into(),
                ));
            }
        }
        // Split the runs at `first` and `end`, then swap the covered ones
        // for one run at `loc`.
        for at in [first, end] {
            let pos = r.runs.partition_point(|run| run.end() <= at);
            if let Some(run) = r.runs.get(pos).copied()
                && run.first < at
            {
                let head = Run {
                    count: at.0 - run.first.0,
                    ..run
                };
                let tail = Run {
                    first: at,
                    count: run.end().0 - at.0,
                    ..run
                };
                retain(&mut self.segments, &run.loc);
                r.runs[pos] = tail;
                r.runs.insert(pos, head);
            }
        }
        let from = r.runs.partition_point(|run| run.end() <= first);
        let to = r.runs.partition_point(|run| run.first < end);
        for run in r.runs.drain(from..to) {
            release(&mut self.segments, &run.loc);
        }
        r.runs.insert(from, Run { first, count, loc });
        retain(&mut self.segments, &loc);
        debug_assert!(r.runs_consistent() || r.runs.iter().any(|x| x.loc.segment == PHANTOM));
        Ok(())
    }

    /// The live runs in segment `id`, with their replicas.
    pub fn runs_in(&self, id: u64) -> Vec<(Key, Run)> {
        self.replicas
            .iter()
            .flat_map(|(k, r)| {
                r.runs
                    .iter()
                    .filter(move |run| run.loc.segment == id)
                    .map(move |run| (*k, *run))
            })
            .collect()
    }

    /// Evicts cached entries, round robin over replicas, until the cache is
    /// within its bound.
    pub fn evict(&mut self) {
        let mut idle_visits = 0;
        // Bounded: each visit either drops entries or counts towards one
        // full idle round over the replicas.
        while self.cache_bytes > self.max_cache_bytes && idle_visits <= self.replicas.len() {
            let next = match self.evict_cursor {
                Some(k) => self
                    .replicas
                    .range((Bound::Excluded(k), Bound::Unbounded))
                    .next()
                    .map(|(k, _)| *k),
                None => None,
            }
            .or_else(|| self.replicas.keys().next().copied());
            let Some(key) = next else { break };
            self.evict_cursor = Some(key);
            let r = self.replicas.get_mut(&key).expect("listed");
            if r.cache.is_empty() {
                idle_visits += 1;
                continue;
            }
            idle_visits = 0;
            let n = r.cache.len().div_ceil(2);
            for _ in 0..n {
                r.pop_cache_front(&mut self.cache_bytes);
            }
        }
    }

    /// The state of every replica, for a checkpoint.
    pub fn checkpoint(&self) -> Vec<CheckpointReplica> {
        self.replicas
            .iter()
            .map(|(k, r)| CheckpointReplica {
                key: *k,
                shape: r.shape.clone(),
                hard_state: r.hard_state,
                snapshot: r.snapshot.clone(),
                recovery: r.recovery,
            })
            .collect()
    }

    /// Starts replay from a checkpoint: entries it covers are in segments
    /// that are gone, so their runs are phantoms until replaced.
    pub fn load_checkpoint(&mut self, replicas: Vec<CheckpointReplica>) {
        self.replicas.clear();
        for c in replicas {
            let mut runs = VecDeque::new();
            if c.shape.last > c.shape.marker {
                runs.push_back(Run {
                    first: c.shape.marker.next(),
                    count: c.shape.last.0 - c.shape.marker.0,
                    loc: Loc {
                        segment: PHANTOM,
                        offset: 0,
                        len: 0,
                    },
                });
            }
            self.replicas.insert(
                c.key,
                ReplicaIndex {
                    shape: c.shape,
                    hard_state: c.hard_state,
                    snapshot: c.snapshot,
                    recovery: c.recovery,
                    runs,
                    ..ReplicaIndex::default()
                },
            );
        }
    }

    /// Compares a checkpoint met during replay with the replayed state.
    pub fn matches_checkpoint(&self, replicas: &[CheckpointReplica]) -> bool {
        replicas.len() == self.replicas.len()
            && replicas.iter().all(|c| {
                self.replicas.get(&c.key).is_some_and(|r| {
                    r.shape == c.shape
                        && r.hard_state == c.hard_state
                        && r.snapshot == c.snapshot
                        && r.recovery == c.recovery
                })
            })
    }

    /// A replica with entries whose record was not found, if any.
    pub fn find_phantom(&self) -> Option<(Key, Run)> {
        self.replicas.iter().find_map(|(k, r)| {
            r.runs
                .iter()
                .find(|run| run.loc.segment == PHANTOM)
                .map(|run| (*k, *run))
        })
    }

    /// Ids of the oldest segments that nothing needs any more: a prefix of
    /// the segments, each without live runs, all older than `active`.
    pub fn deletable_prefix(&self, active: u64) -> Vec<u64> {
        self.segments
            .iter()
            .take_while(|(id, s)| **id < active && s.live_runs == 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Checks the cross-structure invariants (tests and debug builds).
    pub fn check(&self) -> Result<()> {
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        let mut live_bytes: BTreeMap<u64, u64> = BTreeMap::new();
        let mut cache = 0;
        for (k, r) in &self.replicas {
            if !r.shape.check() || !r.runs_consistent() {
                return Err(Error::InvalidArgument(format!(
                    "index of {k:?} inconsistent"
                )));
            }
            for run in &r.runs {
                *live.entry(run.loc.segment).or_default() += 1;
                *live_bytes.entry(run.loc.segment).or_default() += u64::from(run.loc.len);
            }
            cache += r.cache_bytes;
        }
        for (id, s) in &self.segments {
            if live.get(id).copied().unwrap_or(0) != s.live_runs
                || live_bytes.get(id).copied().unwrap_or(0) != s.live_bytes
            {
                return Err(Error::InvalidArgument(format!(
                    "segment {id} live run count wrong"
                )));
            }
        }
        if cache != self.cache_bytes {
            return Err(Error::InvalidArgument("cache bytes wrong".into()));
        }
        Ok(())
    }
}
