//! Shared by the log storage tests: a reference model of `LogDb` semantics,
//! written independently of the implementations, a seeded random workload,
//! and a full-state comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use longship_raft::{
    Entry, EntryType, HardState, Index, Membership, ReplicaId, Rng, ShardId, SnapshotMeta, Term,
};
use longship_storage::{Error, LogDb, LogUpdate};

pub type Key = (ShardId, ReplicaId);

/// The reference model of one replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelReplica {
    pub marker: u64,
    pub marker_term: u64,
    /// Entries `marker + 1 ..`.
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
}

impl ModelReplica {
    pub fn last(&self) -> u64 {
        self.marker + self.entries.len() as u64
    }

    pub fn term(&self, i: u64) -> Option<u64> {
        if i == self.marker {
            return Some(self.marker_term);
        }
        if i < self.marker || i > self.last() {
            return None;
        }
        Some(self.entries[(i - self.marker - 1) as usize].term.0)
    }

    fn install(&mut self, s: &SnapshotMeta) {
        if s.index <= self.snapshot.index {
            return;
        }
        self.snapshot = s.clone();
        let i = s.index.0;
        if i <= self.marker {
            return;
        }
        if self.term(i) == Some(s.term.0) {
            self.entries.drain(..(i - self.marker) as usize);
        } else {
            self.entries.clear();
        }
        self.marker = i;
        self.marker_term = s.term.0;
    }

    fn append(&mut self, es: &[Entry]) -> Result<(), ()> {
        let es: Vec<&Entry> = es.iter().filter(|e| e.index.0 > self.marker).collect();
        let Some(first) = es.first() else {
            return Ok(());
        };
        if first.index.0 > self.last() + 1 {
            return Err(());
        }
        self.entries
            .truncate((first.index.0 - self.marker - 1) as usize);
        self.entries.extend(es.into_iter().cloned());
        Ok(())
    }

    fn compact(&mut self, i: u64) {
        let i = i.min(self.last());
        if i <= self.marker {
            return;
        }
        self.marker_term = self.term(i).unwrap();
        self.entries.drain(..(i - self.marker) as usize);
        self.marker = i;
    }
}

/// One operation of a workload.
#[derive(Clone, Debug)]
pub enum Action {
    Save(Vec<LogUpdate>),
    Compact(Key, Index),
    SaveSnapshot(Key, SnapshotMeta),
    Remove(Key),
    Import(Key, SnapshotMeta),
}

/// The reference model of a whole store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub replicas: BTreeMap<Key, ModelReplica>,
}

impl Model {
    /// Applies an action; `Err` (and no change) if the store must refuse it.
    pub fn apply(&mut self, a: &Action) -> Result<(), ()> {
        let mut next = self.clone();
        match a {
            Action::Save(updates) => {
                for u in updates.iter().filter(|u| !u.is_empty()) {
                    let r = next.replicas.entry((u.shard_id, u.replica_id)).or_default();
                    if let Some(s) = &u.snapshot {
                        r.install(s);
                    }
                    r.append(&u.entries)?;
                    if let Some(h) = u.hard_state {
                        r.hard_state = h;
                    }
                }
            }
            Action::Compact(k, i) => {
                if let Some(r) = next.replicas.get_mut(k) {
                    r.compact(i.0);
                }
            }
            Action::SaveSnapshot(k, s) => {
                let r = next.replicas.entry(*k).or_default();
                if s.index > r.snapshot.index {
                    r.snapshot = s.clone();
                }
            }
            Action::Remove(k) => {
                next.replicas.remove(k);
            }
            Action::Import(k, s) => {
                let mut r = ModelReplica::default();
                r.install(s);
                r.hard_state = HardState {
                    term: s.term,
                    vote: ReplicaId::NONE,
                    commit: s.index,
                };
                next.replicas.insert(*k, r);
            }
        }
        *self = next;
        Ok(())
    }
}

/// Runs an action against a store.
pub fn run(db: &dyn LogDb, a: &Action) -> Result<(), Error> {
    match a {
        Action::Save(u) => db.save_raft_state(u),
        Action::Compact(k, i) => db.remove_entries_to(k.0, k.1, *i),
        Action::SaveSnapshot(k, s) => db.save_snapshot(k.0, k.1, s),
        Action::Remove(k) => db.remove_node_data(k.0, k.1),
        Action::Import(k, s) => db.import_snapshot(k.0, k.1, s),
    }
}

pub fn entry(index: u64, term: u64, payload: usize, salt: u64) -> Entry {
    Entry {
        index: Index(index),
        term: Term(term),
        entry_type: EntryType::Normal,
        key: salt,
        client_id: salt % 3,
        series_id: salt % 5,
        responded_to: 0,
        cmd: Bytes::from(
            (0..payload)
                .map(|i| (i as u64 ^ salt ^ index) as u8)
                .collect::<Vec<u8>>(),
        ),
    }
}

pub fn entries(first: u64, n: u64, term: u64, payload: usize) -> Vec<Entry> {
    (first..first + n)
        .map(|i| entry(i, term, payload, i * 7 + term))
        .collect()
}

pub fn snapshot(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(index),
        term: Term(term),
        membership: Membership::with_voters([(1, "a1"), (2, "a2"), (3, "a3")]),
        on_disk_index: Index(0),
        witness: false,
        file_size: index * 10,
    }
}

pub fn key(shard: u64, replica: u64) -> Key {
    (ShardId(shard), ReplicaId(replica))
}

pub fn update(k: Key, entries: Vec<Entry>) -> LogUpdate {
    LogUpdate {
        shard_id: k.0,
        replica_id: k.1,
        entries,
        hard_state: None,
        snapshot: None,
        clear_recovery: false,
    }
}

/// A seeded random workload generator over `shards` replicas.
pub struct Workload {
    pub rng: Rng,
    pub shards: u64,
    /// Largest payload of a normal entry; an occasional entry is larger.
    pub payload_max: usize,
    /// Most entries appended per update.
    pub entries_max: u64,
    /// Most updates per batch.
    pub updates_max: u64,
    /// Whether to generate removals, imports and snapshots.
    pub rare_actions: bool,
    /// Percent of actions that are not `Save` (when `rare_actions`).
    pub rare_percent: u64,
}

impl Workload {
    pub fn new(seed: u64, shards: u64) -> Workload {
        Workload {
            rng: Rng::new(seed),
            shards,
            payload_max: 40,
            entries_max: 6,
            updates_max: 4,
            rare_actions: true,
            rare_percent: 6,
        }
    }

    fn pick_key(&mut self) -> Key {
        let s = 1 + self.rng.below(self.shards);
        key(s, 1 + s % 3)
    }

    fn payload(&mut self) -> usize {
        if self.rng.chance(0.02) {
            1000 + self.rng.below(3000) as usize
        } else {
            self.rng.below(self.payload_max as u64 + 1) as usize
        }
    }

    /// The next action, given the current model (so most actions are valid).
    pub fn next(&mut self, m: &Model) -> Action {
        if self.rare_actions && self.rng.below(100) < self.rare_percent {
            let k = self.pick_key();
            let r = m.replicas.get(&k).cloned().unwrap_or_default();
            return match self.rng.below(6) {
                0 => Action::Remove(k),
                1 => Action::Import(k, snapshot(r.last() + 1 + self.rng.below(5), 50)),
                2 | 3 => {
                    let i = r.marker + self.rng.below(r.last() - r.marker + 3);
                    Action::Compact(k, Index(i))
                }
                _ => {
                    let i = r.marker + self.rng.below(r.last() - r.marker + 1);
                    Action::SaveSnapshot(k, snapshot(i.max(1), r.term(i).unwrap_or(1)))
                }
            };
        }
        let n = 1 + self.rng.below(self.updates_max);
        let mut updates = Vec::new();
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..n {
            let k = self.pick_key();
            if !used.insert(k) {
                continue;
            }
            let r = m.replicas.get(&k).cloned().unwrap_or_default();
            let term = r
                .hard_state
                .term
                .0
                .max(r.term(r.last()).unwrap_or(0))
                .max(1);
            let mut u = update(k, vec![]);
            let what = self.rng.below(100);
            if what < 70 {
                let count = 1 + self.rng.below(self.entries_max);
                let first = r.last() + 1;
                u.entries = (first..first + count)
                    .map(|i| {
                        let p = self.payload();
                        entry(i, term, p, self.rng.next_u64())
                    })
                    .collect();
            } else if what < 85 && r.last() > r.marker {
                // Overwrite a tail with a higher term (Raft §5.3).
                let from = r.marker + 1 + self.rng.below(r.last() - r.marker);
                let count = 1 + self.rng.below(self.entries_max);
                u.entries = (from..from + count)
                    .map(|i| {
                        let p = self.payload();
                        entry(i, term + 1, p, self.rng.next_u64())
                    })
                    .collect();
            } else if what < 88 && self.rare_actions {
                // A snapshot from a leader: matching an entry or past the end.
                let i = if r.last() > r.marker && self.rng.chance(0.5) {
                    r.marker + 1 + self.rng.below(r.last() - r.marker)
                } else {
                    r.last() + 1 + self.rng.below(10)
                };
                let t = r.term(i).unwrap_or(term + 1);
                u.snapshot = Some(snapshot(i, t));
                if self.rng.chance(0.5) {
                    u.entries = entries(i + 1, 1 + self.rng.below(3), t, 8);
                }
            }
            if self.rng.chance(0.5) || u.is_empty() {
                u.hard_state = Some(HardState {
                    term: Term(term + self.rng.below(2)),
                    vote: ReplicaId(self.rng.below(4)),
                    commit: Index(self.rng.below(r.last() + 1)),
                });
            }
            updates.push(u);
        }
        Action::Save(updates)
    }
}

/// Asserts that `db` holds exactly what `m` says, reading everything.
pub fn assert_matches(db: &dyn LogDb, m: &Model, ctx: &str) {
    let listed = db.list_replicas();
    let expected: Vec<Key> = m.replicas.keys().copied().collect();
    assert_eq!(listed, expected, "{ctx}: replicas");
    for (k, r) in &m.replicas {
        let (s, rep) = *k;
        let st = db
            .read_state(s, rep)
            .unwrap_or_else(|| panic!("{ctx}: no state for {k:?}"));
        assert_eq!(st.hard_state, r.hard_state, "{ctx}: hard state of {k:?}");
        assert_eq!(st.snapshot, r.snapshot, "{ctx}: snapshot of {k:?}");
        assert_eq!(st.first_index, Index(r.marker + 1), "{ctx}: first of {k:?}");
        assert_eq!(st.last_index, Index(r.last()), "{ctx}: last of {k:?}");
        assert_eq!(db.first_index(s, rep), Index(r.marker + 1));
        assert_eq!(db.last_index(s, rep), Index(r.last()));
        assert_eq!(db.snapshot(s, rep), r.snapshot);
        for i in r.marker..=r.last() {
            assert_eq!(
                db.term(s, rep, Index(i)).unwrap().0,
                r.term(i).unwrap(),
                "{ctx}: term {i} of {k:?}"
            );
        }
        if r.marker > 0 {
            assert!(matches!(
                db.term(s, rep, Index(r.marker - 1)),
                Err(Error::Compacted)
            ));
        }
        assert!(matches!(
            db.term(s, rep, Index(r.last() + 1)),
            Err(Error::Unavailable)
        ));
        let got = db
            .entries(s, rep, Index(r.marker + 1), Index(r.last() + 1), u64::MAX)
            .unwrap_or_else(|e| panic!("{ctx}: entries of {k:?}: {e}"));
        assert_eq!(got.len(), r.entries.len(), "{ctx}: entry count of {k:?}");
        assert!(got == r.entries, "{ctx}: entries of {k:?} differ");
    }
}

/// Reads everything `db` holds into a model (for comparisons that must not panic).
pub fn dump(db: &dyn LogDb) -> Result<Model, Error> {
    let mut m = Model::default();
    for (s, r) in db.list_replicas() {
        let st = db.read_state(s, r).ok_or(Error::NotFound)?;
        let marker = st.first_index.0 - 1;
        let entries = if st.last_index >= st.first_index {
            db.entries(s, r, st.first_index, st.last_index.next(), u64::MAX)?
        } else {
            Vec::new()
        };
        for e in &entries {
            if db.term(s, r, e.index)? != e.term {
                return Err(Error::InvalidArgument(format!(
                    "term of {} differs",
                    e.index
                )));
            }
        }
        m.replicas.insert(
            (s, r),
            ModelReplica {
                marker,
                marker_term: db.term(s, r, Index(marker))?.0,
                entries,
                hard_state: st.hard_state,
                snapshot: st.snapshot,
            },
        );
    }
    Ok(m)
}

/// A valid workload of `n` actions (each accepted by the model).
pub fn valid_actions(seed: u64, shards: u64, n: usize) -> Vec<Action> {
    valid_actions_from(Workload::new(seed, shards), n)
}

/// A valid workload of `n` actions from a configured generator.
pub fn valid_actions_from(mut w: Workload, n: usize) -> Vec<Action> {
    let mut m = Model::default();
    let mut out = Vec::with_capacity(n);
    // Bounded: invalid actions are rare; give up after 10 n tries.
    for _ in 0..n * 10 {
        if out.len() == n {
            break;
        }
        let a = w.next(&m);
        if m.apply(&a).is_ok() {
            out.push(a);
        }
    }
    out
}

/// Panics with a short description of how two models differ.
pub fn assert_same(got: &Model, want: &Model, ctx: &str) {
    if got == want {
        return;
    }
    let brief = |r: Option<&ModelReplica>| {
        r.map(|r| {
            format!(
                "({}..={} hs {:?} snap {})",
                r.marker,
                r.last(),
                r.hard_state,
                r.snapshot.index
            )
        })
    };
    let mut diff = Vec::new();
    for k in got.replicas.keys().chain(want.replicas.keys()) {
        let (g, w) = (got.replicas.get(k), want.replicas.get(k));
        if g != w {
            diff.push(format!("{k:?}: got {:?} want {:?}", brief(g), brief(w)));
        }
    }
    diff.dedup();
    panic!("{ctx}: state differs: {}", diff.join("; "));
}

/// The hard states `a` sets, last one per replica.
pub fn hard_states_of(a: &Action) -> BTreeMap<Key, HardState> {
    let mut out = BTreeMap::new();
    match a {
        Action::Save(updates) => {
            for u in updates {
                if let Some(h) = u.hard_state {
                    out.insert((u.shard_id, u.replica_id), h);
                }
            }
        }
        Action::Import(k, s) => {
            out.insert(
                *k,
                HardState {
                    term: s.term,
                    vote: ReplicaId::NONE,
                    commit: s.index,
                },
            );
        }
        Action::Compact(..) | Action::SaveSnapshot(..) | Action::Remove(..) => {}
    }
    out
}

/// The replicas `a` names.
pub fn keys_of(a: &Action) -> Vec<Key> {
    match a {
        Action::Save(updates) => updates.iter().map(|u| (u.shard_id, u.replica_id)).collect(),
        Action::Compact(k, _)
        | Action::SaveSnapshot(k, _)
        | Action::Remove(k)
        | Action::Import(k, _) => vec![*k],
    }
}

/// Asserts that `got` is what recovery may leave when the batch of
/// `in_flight` was damaged and discarded after `acked`: the logs and
/// snapshots of `acked`, and for each replica either its acknowledged hard
/// state or that hard state with the term and vote `in_flight` wrote (a
/// vote is never forgotten). A replica only `in_flight` named may exist
/// with an empty log.
pub fn assert_recovered(got: &Model, acked: &Model, in_flight: Option<&Action>, ctx: &str) {
    if got == acked {
        return;
    }
    let written = in_flight.map(hard_states_of).unwrap_or_default();
    let named = in_flight.map(keys_of).unwrap_or_default();
    for k in got.replicas.keys().chain(acked.replicas.keys()) {
        let (g, a) = (got.replicas.get(k), acked.replicas.get(k));
        let empty = ModelReplica::default();
        let a = match (g, a) {
            (None, None) => continue,
            (Some(_), None) if named.contains(k) => &empty,
            _ => a.unwrap_or_else(|| panic!("{ctx}: unexpected replica {k:?}")),
        };
        let Some(g) = g else {
            panic!("{ctx}: replica {k:?} lost");
        };
        assert_eq!(
            (g.marker, g.marker_term, &g.snapshot),
            (a.marker, a.marker_term, &a.snapshot),
            "{ctx}: log start of {k:?}"
        );
        assert!(g.entries == a.entries, "{ctx}: entries of {k:?} differ");
        if g.hard_state == a.hard_state {
            continue;
        }
        let w = written
            .get(k)
            .unwrap_or_else(|| panic!("{ctx}: hard state of {k:?} changed: {:?}", g.hard_state));
        // A later term brings its vote; in the same term a vote is only
        // added, never replaced (the workload is not bound by Raft rules).
        let newer = w.term > a.hard_state.term
            || (w.term == a.hard_state.term && a.hard_state.vote.is_none());
        let (term, vote) = if newer {
            (w.term, w.vote)
        } else {
            (a.hard_state.term, a.hard_state.vote)
        };
        assert_eq!(
            (g.hard_state.term, g.hard_state.vote),
            (term, vote),
            "{ctx}: restored term and vote of {k:?}"
        );
        assert_eq!(
            g.hard_state.commit,
            a.hard_state.commit.min(Index(a.last())),
            "{ctx}: commit of {k:?}"
        );
    }
}
