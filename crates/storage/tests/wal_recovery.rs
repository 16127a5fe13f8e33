//! Protocol-aware recovery of the write-ahead log: damage to the last batch
//! (which may have been fsynced and acknowledged) is never taken for a
//! write that never happened. For a batch of entries with hard states and
//! for a hard-state-only batch, a bit flip at every byte offset and a cut
//! (or zeroing) at every offset must either keep the batch or report
//! exactly which replicas may have lost what, restore their term and vote
//! (never older than written) and give them a recovery guard that survives
//! any number of restarts until an update clears it. Damage before the last
//! batch stays `Error::Corruption`; an all-zero tail is clean.

mod logdb_util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use logdb_util::*;
use longship_raft::{HardState, Index, RecoveryGuard, ReplicaId, Term};
use longship_storage::logdb::Damage;
use longship_storage::vfs::{CrashMode, FaultyFs, FileSystem, MemFs};
use longship_storage::{Error, LogDb, LogUpdate, Wal, WalOptions};
use proptest::prelude::*;

const DIR: &str = "/wal";

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 1 << 20,
        max_cache_bytes: 1 << 20,
        max_group_bytes: 1 << 20,
        preallocate_bytes: 4096,
    }
}

fn open(fs: &Arc<dyn FileSystem>) -> longship_storage::Result<Wal> {
    Wal::open(fs.clone(), Path::new(DIR), options())
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: ReplicaId(vote),
        commit: Index(commit),
    }
}

/// Ten batches of three replicas: the history before the last batch.
fn base_history(wal: &Wal) {
    for i in 1..=10u64 {
        let mut a = update(key(1, 1), entries(i, 1, 3, 20));
        a.hard_state = Some(hs(3, 1, i - 1));
        let b = update(key(2, 1), entries(i, 1, 3, 5));
        let mut c = update(key(3, 2), entries(i, 1, 2, 9));
        c.hard_state = Some(hs(2, 2, i - 1));
        wal.save_raft_state(&[a, b, c]).unwrap();
    }
}

/// Entries and hard states for two replicas, a hard state only for a third.
fn batch_with_entries() -> Vec<LogUpdate> {
    let mut a = update(key(1, 1), entries(11, 3, 4, 30));
    a.hard_state = Some(hs(4, 2, 10));
    let mut b = update(key(2, 1), vec![]);
    b.hard_state = Some(hs(5, 3, 9));
    let mut c = update(key(3, 2), entries(8, 2, 4, 7));
    c.hard_state = Some(hs(4, 0, 7));
    vec![a, b, c]
}

/// A hard-state-only batch (a vote).
fn hard_state_only_batch() -> Vec<LogUpdate> {
    let mut a = update(key(1, 1), vec![]);
    a.hard_state = Some(hs(6, 3, 10));
    vec![a]
}

/// A log whose last batch is `last`, and what it held before and after it.
struct Scenario {
    files: Vec<(PathBuf, Vec<u8>)>,
    /// The segment holding the last batch.
    path: PathBuf,
    /// Offsets of the last batch in it.
    start: usize,
    end: usize,
    /// Offset of the batch before it.
    prev_start: usize,
    last: Vec<LogUpdate>,
    before: Model,
    after: Model,
}

fn read_all(fs: &dyn FileSystem, p: &Path) -> Vec<u8> {
    let f = fs.open_read(p).unwrap();
    let mut b = vec![0; f.len().unwrap() as usize];
    let n = f.read_at(0, &mut b).unwrap();
    b.truncate(n);
    b
}

fn scenario(last: Vec<LogUpdate>) -> Scenario {
    scenario_padded(last, None)
}

/// [`scenario`], with an entry of `pad` bytes for a fourth replica in the
/// batch before the last (to move the last batch's offset).
fn scenario_padded(last: Vec<LogUpdate>, pad: Option<usize>) -> Scenario {
    let fs = MemFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), Path::new(DIR), options()).unwrap();
    base_history(&wal);
    let (_, prev_start) = {
        // The batch before the last: one more base batch.
        let p = wal.write_position();
        let mut a = update(key(1, 1), entries(11, 0, 3, 0));
        a.hard_state = Some(hs(3, 1, 10));
        let mut batch = vec![a];
        if let Some(pad) = pad {
            batch.push(update(key(4, 1), entries(1, 1, 1, pad)));
        }
        wal.save_raft_state(&batch).unwrap();
        p
    };
    let before = dump(&wal).unwrap();
    let (seg, start) = wal.write_position();
    wal.save_raft_state(&last).unwrap();
    let (seg2, end) = wal.write_position();
    assert_eq!(seg, seg2, "the last batch is in the active segment");
    let after = dump(&wal).unwrap();
    drop(wal);
    let path = Path::new(DIR).join(longship_storage::logdb::wal::segment_file_name(seg));
    let files = fs
        .list(Path::new(DIR))
        .unwrap()
        .into_iter()
        .map(|p| {
            let b = read_all(&fs, &p);
            (p, b)
        })
        .collect();
    Scenario {
        files,
        path,
        start: start as usize,
        end: end as usize,
        prev_start: prev_start as usize,
        last,
        before,
        after,
    }
}

impl Scenario {
    fn segment(&self) -> &[u8] {
        &self.files.iter().find(|(p, _)| *p == self.path).unwrap().1
    }

    /// A file system with the scenario's files, the last segment replaced.
    fn with_segment(&self, bytes: &[u8]) -> Arc<dyn FileSystem> {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new(DIR)).unwrap();
        for (p, b) in &self.files {
            let data = if *p == self.path { bytes } else { b };
            fs.create(p).unwrap().write_at(0, data).unwrap();
        }
        Arc::new(fs)
    }

    /// The highest index the last batch says `k` may hold, over its old last.
    fn acked_through(&self, k: Key) -> Index {
        let old = self.before.replicas.get(&k).map_or(0, |r| r.last());
        let new = self
            .last
            .iter()
            .filter(|u| (u.shard_id, u.replica_id) == k)
            .filter_map(|u| u.entries.last())
            .map(|e| e.index.0)
            .max()
            .unwrap_or(0);
        Index(old.max(new))
    }

    /// Whether the last batch wrote entries (or a snapshot) for `k`.
    fn wrote_log(&self, k: Key) -> bool {
        self.last
            .iter()
            .filter(|u| (u.shard_id, u.replica_id) == k)
            .any(|u| !u.entries.is_empty() || u.snapshot.is_some())
    }

    fn written(&self, k: Key) -> Option<HardState> {
        self.last
            .iter()
            .filter(|u| (u.shard_id, u.replica_id) == k)
            .filter_map(|u| u.hard_state)
            .next_back()
    }

    fn named(&self) -> Vec<Key> {
        let mut v: Vec<Key> = self
            .last
            .iter()
            .map(|u| (u.shard_id, u.replica_id))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Whether losing action `a` could take from replica `k` something it
/// acknowledged (entries, an installed snapshot) or its removal: what a
/// recovery guard is for. Losing a hard state only (restored from the
/// header), a compaction or a local snapshot record guards nobody.
fn may_change_log(a: &Action, k: Key) -> bool {
    match a {
        Action::Save(us) => us
            .iter()
            .filter(|u| (u.shard_id, u.replica_id) == k)
            .any(|u| !u.entries.is_empty() || u.snapshot.is_some()),
        Action::Compact(..) | Action::SaveSnapshot(..) => false,
        Action::Remove(r) | Action::Import(r, _) => *r == k,
    }
}

/// What opening a damaged copy did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The last batch survived whole.
    Kept,
    /// Nothing of it was there (an all-zero or absent tail).
    Clean,
    /// Reported, with its replicas known (those whose log the batch wrote
    /// are guarded).
    Guarded,
    /// Reported, affected replicas unknown: every replica guarded.
    GuardedAll,
    /// Reported as a torn write (the file ends inside the batch): never
    /// acknowledged, nothing restored, nobody guarded.
    Torn,
}

/// Opens the damaged copy in `fs` and checks everything recovery promises.
fn check_recovery(sc: &Scenario, fs: &Arc<dyn FileSystem>, ctx: &str) -> Outcome {
    let wal = open(fs).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
    wal.check_invariants().unwrap();
    let got = dump(&wal).unwrap_or_else(|e| panic!("{ctx}: unreadable: {e}"));
    let damage = wal.damage_found();
    let outcome = if damage.is_empty() {
        if got == sc.after {
            Outcome::Kept
        } else {
            assert_same(&got, &sc.before, &format!("{ctx}: silent loss?"));
            // Losing the batch silently is allowed only if nothing of it was on disk.
            Outcome::Clean
        }
    } else {
        assert_eq!(damage.len(), 1, "{ctx}: {damage:?}");
        let d: &Damage = &damage[0];
        assert_eq!(
            (&d.file, d.offset),
            (&sc.path, sc.start as u64),
            "{ctx}: {d}"
        );
        assert!(d.bytes > 0, "{ctx}");
        if d.torn {
            // The file ends inside the batch: its fsync never completed.
            assert!(!d.replicas_unknown, "{ctx}: {d}");
            assert_same(&got, &sc.before, ctx);
            for k in sc.before.replicas.keys() {
                let st = wal.read_state(k.0, k.1).unwrap();
                assert_eq!(st.recovery, None, "{ctx}: torn, yet {k:?} guarded");
            }
            Outcome::Torn
        } else if d.replicas_unknown {
            // Nothing says what the batch held: nothing restored, all guarded.
            assert_same(&got, &sc.before, ctx);
            for (k, r) in &sc.before.replicas {
                let st = wal.read_state(k.0, k.1).unwrap();
                assert_eq!(
                    st.recovery,
                    Some(RecoveryGuard {
                        acked_through: None,
                        restart_term: r.hard_state.term,
                    }),
                    "{ctx}: guard of {k:?}"
                );
            }
            Outcome::GuardedAll
        } else {
            let reported: Vec<Key> = d
                .replicas
                .iter()
                .map(|r| (r.shard_id, r.replica_id))
                .collect();
            assert_eq!(reported, sc.named(), "{ctx}: {d}");
            assert_recovered(&got, &sc.before, Some(&Action::Save(sc.last.clone())), ctx);
            for (k, r) in &got.replicas {
                let st = wal.read_state(k.0, k.1).unwrap();
                if !sc.named().contains(k) {
                    assert_eq!(st.recovery, None, "{ctx}: {k:?} is not affected");
                    continue;
                }
                // The vote is never older than the one written.
                let term = match sc.written(*k) {
                    Some(w) => {
                        assert_eq!(
                            (r.hard_state.term, r.hard_state.vote),
                            (w.term, w.vote),
                            "{ctx}: restored vote of {k:?}"
                        );
                        w.term
                    }
                    None => r.hard_state.term,
                };
                // Guarded only if the batch could have changed its log: a
                // lost hard state alone is restored and needs no guard.
                let want = sc.wrote_log(*k).then_some(RecoveryGuard {
                    acked_through: Some(sc.acked_through(*k)),
                    restart_term: term,
                });
                assert_eq!(st.recovery, want, "{ctx}: guard of {k:?}");
            }
            Outcome::Guarded
        }
    };
    // Recovery is durable and done once: a restart finds nothing new.
    let guards: Vec<_> = wal
        .list_replicas()
        .into_iter()
        .map(|(s, r)| wal.read_state(s, r).unwrap().recovery)
        .collect();
    drop(wal);
    let wal = open(fs).unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    assert!(wal.damage_found().is_empty(), "{ctx}: damage found twice");
    assert_same(&dump(&wal).unwrap(), &got, &format!("{ctx}: reopened"));
    let again: Vec<_> = wal
        .list_replicas()
        .into_iter()
        .map(|(s, r)| wal.read_state(s, r).unwrap().recovery)
        .collect();
    assert_eq!(guards, again, "{ctx}: guards after reopen");
    outcome
}

fn flip_every_byte(sc: &Scenario, what: &str) {
    let mut counts = std::collections::BTreeMap::new();
    for o in sc.start..sc.end {
        for bit in [o % 8, (o + 3) % 8] {
            let mut b = sc.segment().to_vec();
            b[o] ^= 1 << bit;
            let ctx = format!("{what}: bit {bit} of byte {o} ({}..{})", sc.start, sc.end);
            let outcome = check_recovery(sc, &sc.with_segment(&b), &ctx);
            assert!(
                matches!(outcome, Outcome::Kept | Outcome::Guarded),
                "{ctx}: {outcome:?} (one flip leaves a header copy)"
            );
            *counts.entry(format!("{outcome:?}")).or_insert(0) += 1;
        }
    }
    assert!(counts.contains_key("Guarded"), "{counts:?}");
}

#[test]
fn a_flipped_bit_anywhere_in_the_last_batch_restores_votes_and_guards() {
    flip_every_byte(&scenario(batch_with_entries()), "entries batch");
}

#[test]
fn a_flipped_bit_anywhere_in_a_hard_state_only_batch_restores_the_vote() {
    flip_every_byte(&scenario(hard_state_only_batch()), "hard-state batch");
}

fn cut_at_every_offset(sc: &Scenario, what: &str) {
    let mut seen = std::collections::BTreeSet::new();
    for cut in sc.start..=sc.end {
        // The file ends at the cut; or keeps its length with zeros after it
        // (a write torn inside preallocated space).
        let seg = sc.segment();
        let mut zeroed = seg.to_vec();
        zeroed[cut..].fill(0);
        for (variant, bytes) in [("cut", seg[..cut].to_vec()), ("zeroed", zeroed)] {
            let ctx = format!("{what}: {variant} at {cut} ({}..{})", sc.start, sc.end);
            let outcome = check_recovery(sc, &sc.with_segment(&bytes), &ctx);
            // Zeroing bytes that were zero already changes nothing.
            let unchanged = variant == "zeroed" && seg[cut..sc.end].iter().all(|&x| x == 0);
            match cut {
                c if c == sc.start => assert_eq!(outcome, Outcome::Clean, "{ctx}"),
                c if c == sc.end || unchanged => assert_eq!(outcome, Outcome::Kept, "{ctx}"),
                // The file ends inside the batch: a torn write.
                _ if variant == "cut" => assert_eq!(outcome, Outcome::Torn, "{ctx}"),
                // Zeros inside the file's length may hide a synced batch's
                // lost bytes: guarded.
                _ => assert!(
                    matches!(outcome, Outcome::Guarded | Outcome::GuardedAll),
                    "{ctx}: {outcome:?}"
                ),
            }
            seen.insert(format!("{outcome:?}"));
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
}

#[test]
fn a_cut_anywhere_in_the_last_batch_is_reported_as_torn_and_zeros_are_guarded() {
    cut_at_every_offset(&scenario(batch_with_entries()), "entries batch");
}

#[test]
fn a_cut_anywhere_in_a_hard_state_only_batch_is_reported_as_torn_and_zeros_are_guarded() {
    cut_at_every_offset(&scenario(hard_state_only_batch()), "hard-state batch");
}

/// A batch cut inside its own trailing zero bytes (an update record ends
/// with a zero entry count): the repair must not be placed where the zeros
/// that fill the gap to it would make the damaged batch whole again.
#[test]
fn a_batch_cut_in_its_trailing_zeros_stays_damaged_after_the_repair() {
    for pad in 0..8 {
        let sc = scenario_padded(hard_state_only_batch(), Some(pad));
        let seg = sc.segment();
        assert_eq!(seg[sc.end - 1], 0, "the batch ends with a zero byte");
        let ctx = format!(
            "pad {pad}: cut at {} ({}..{})",
            sc.end - 1,
            sc.start,
            sc.end
        );
        let fs = sc.with_segment(&seg[..sc.end - 1]);
        assert_eq!(check_recovery(&sc, &fs, &ctx), Outcome::Torn, "{ctx}");
        // The same cut with the file's length kept (preallocated space).
        let mut zeroed = seg.to_vec();
        zeroed[sc.end - 1..].fill(0);
        let ctx = format!("{ctx}, zeroed");
        let outcome = check_recovery(&sc, &sc.with_segment(&zeroed), &ctx);
        assert!(
            matches!(outcome, Outcome::Guarded | Outcome::Kept),
            "{ctx}: {outcome:?}"
        );
    }
}

#[test]
fn a_flipped_bit_before_the_last_batch_is_corruption() {
    let sc = scenario(batch_with_entries());
    for o in sc.prev_start..sc.start {
        let mut b = sc.segment().to_vec();
        b[o] ^= 1 << (o % 8);
        match open(&sc.with_segment(&b)) {
            Err(Error::Corruption { file, offset, .. }) => {
                assert_eq!(file, sc.path);
                assert_eq!(offset, sc.prev_start as u64, "flip at {o}");
            }
            Ok(_) => panic!("flip at {o} of the batch before the last was not reported"),
            Err(e) => panic!("flip at {o}: {e}"),
        }
    }
}

#[test]
fn an_all_zero_tail_is_clean() {
    let sc = scenario(batch_with_entries());
    let mut b = sc.segment().to_vec();
    b.resize(b.len() + 10_000, 0);
    assert_eq!(
        check_recovery(&sc, &sc.with_segment(&b), "zero tail"),
        Outcome::Kept
    );
    let mut b = sc.segment()[..sc.end].to_vec();
    b.truncate(sc.end);
    assert_eq!(
        check_recovery(&sc, &sc.with_segment(&b), "no tail"),
        Outcome::Kept
    );
}

#[test]
fn a_stray_bit_in_preallocated_space_guards_every_replica() {
    // Nothing says which replica the bytes were for: all are guarded.
    let sc = scenario(batch_with_entries());
    let mut b = sc.segment().to_vec();
    assert!(b.len() > sc.end + 100, "preallocated space follows");
    b[sc.end + 50] = 0x40;
    let fs = sc.with_segment(&b);
    let wal = open(&fs).unwrap();
    let d = wal.damage_found();
    assert_eq!(d.len(), 1);
    assert!(
        d[0].replicas_unknown && d[0].offset == sc.end as u64,
        "{}",
        d[0]
    );
    assert_same(&dump(&wal).unwrap(), &sc.after, "stray bit");
    for (s, r) in wal.list_replicas() {
        let g = wal.read_state(s, r).unwrap().recovery.unwrap();
        assert_eq!(g.acked_through, None);
    }
}

#[test]
fn guards_survive_restarts_and_checkpoints_until_cleared() {
    let sc = scenario(batch_with_entries());
    let mut b = sc.segment().to_vec();
    b[sc.end - 1] ^= 0x80;
    let fs = sc.with_segment(&b);
    assert_eq!(check_recovery(&sc, &fs, "flip"), Outcome::Guarded);
    let damaged_segment = longship_storage::logdb::wal::parse_segment_file_name(
        sc.path.file_name().unwrap().to_str().unwrap(),
    )
    .unwrap();
    let guard_of = |wal: &Wal, k: Key| wal.read_state(k.0, k.1).unwrap().recovery;
    let (k1, k2) = (key(1, 1), key(3, 2));
    let g1 = {
        let wal = open(&fs).unwrap();
        // Compact everything so the damaged segment can be deleted: the
        // guards then live only in checkpoints.
        for (s, r) in wal.list_replicas() {
            let last = wal.last_index(s, r);
            wal.remove_entries_to(s, r, last).unwrap();
        }
        guard_of(&wal, k1)
    };
    assert!(g1.is_some());
    for round in 0..3 {
        let wal = open(&fs).unwrap();
        assert_eq!(guard_of(&wal, k1), g1, "round {round}");
        assert!(guard_of(&wal, k2).is_some(), "round {round}");
    }
    {
        let wal = open(&fs).unwrap();
        assert!(
            !wal.segment_ids().contains(&damaged_segment),
            "{:?}",
            wal.segment_ids()
        );
        // An update clearing the guard (what the core sends once satisfied).
        let clear = LogUpdate {
            clear_recovery: true,
            ..update(k1, vec![])
        };
        assert!(!clear.is_empty());
        wal.save_raft_state(&[clear]).unwrap();
        assert_eq!(guard_of(&wal, k1), None);
        // A new guard merges with an existing one.
        let extra = RecoveryGuard {
            acked_through: Some(Index(1000)),
            restart_term: Term(1),
        };
        wal.set_recovery_guard(k2.0, k2.1, extra).unwrap();
        let merged = guard_of(&wal, k2).unwrap();
        assert_eq!(merged.acked_through, Some(Index(1000)));
        assert_eq!(merged.restart_term, Term(4));
    }
    for round in 0..2 {
        let wal = open(&fs).unwrap();
        assert_eq!(guard_of(&wal, k1), None, "cleared stays cleared ({round})");
        assert_eq!(guard_of(&wal, k2).unwrap().acked_through, Some(Index(1000)));
        assert!(wal.damage_found().is_empty());
    }
}

/// A crash at any point of the open that records a damaged tail (while the
/// repair batch is written, or the space after it cut) loses neither the
/// guards nor the restored votes: the next open finds the same.
#[test]
fn a_crash_while_recording_the_repair_loses_no_guard() {
    let sc = scenario(batch_with_entries());
    let mut damaged = sc.segment().to_vec();
    damaged[sc.start + 60] ^= 0x08;
    // What a completed recovery leaves.
    let expected = |fs: &Arc<dyn FileSystem>| {
        let wal = open(fs).unwrap();
        let g: Vec<_> = wal
            .list_replicas()
            .into_iter()
            .map(|(s, r)| wal.read_state(s, r).unwrap())
            .collect();
        (dump(&wal).unwrap(), g)
    };
    let want = expected(&sc.with_segment(&damaged));
    let mut crashed_during_open = 0;
    for k in 1..40u64 {
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepRandomPrefix] {
            let fs = FaultyFs::over_mem(k);
            fs.create_dir_all(Path::new(DIR)).unwrap();
            for (p, b) in &sc.files {
                let f = fs.create(p).unwrap();
                f.write_at(0, if *p == sc.path { &damaged } else { b })
                    .unwrap();
                f.sync().unwrap();
            }
            fs.sync_dir(Path::new(DIR)).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            fs.crash_after_op(Some(fs.op_count() + k));
            let dynfs: Arc<dyn FileSystem> = Arc::new(fs.clone());
            if open(&dynfs).is_err() {
                crashed_during_open += 1;
            }
            fs.crash(mode).unwrap();
            let ctx = format!("crash after {k} operations of open ({mode:?})");
            let got = expected(&dynfs);
            assert_same(&got.0, &want.0, &ctx);
            assert_eq!(got.1, want.1, "{ctx}: replica states and guards");
        }
    }
    assert!(crashed_during_open > 10, "{crashed_during_open}");
}

#[test]
fn inspect_reports_what_open_would_and_writes_nothing() {
    let sc = scenario(batch_with_entries());
    let mut b = sc.segment().to_vec();
    b[sc.start + 40] ^= 0x02;
    let fs = sc.with_segment(&b);
    let files_before: Vec<_> = fs
        .list(Path::new(DIR))
        .unwrap()
        .into_iter()
        .map(|p| (p.clone(), read_all(&*fs, &p)))
        .collect();
    let seen = Wal::inspect(&*fs, Path::new(DIR)).unwrap();
    let files_after: Vec<_> = fs
        .list(Path::new(DIR))
        .unwrap()
        .into_iter()
        .map(|p| (p.clone(), read_all(&*fs, &p)))
        .collect();
    assert!(files_before == files_after, "inspect changed the files");
    assert_eq!(seen.damage.len(), 1);
    let wal = open(&fs).unwrap();
    assert_eq!(seen.damage, wal.damage_found());
    for (s, r, st) in &seen.replicas {
        assert_eq!(Some(st), wal.read_state(*s, *r).as_ref());
    }
    drop(wal);
    // After open repaired it, inspect sees the guards but no new damage.
    let seen = Wal::inspect(&*fs, Path::new(DIR)).unwrap();
    assert!(seen.damage.is_empty());
    assert!(seen.replicas.iter().any(|(_, _, st)| st.recovery.is_some()));
    // A missing directory is an error, not created.
    let empty = MemFs::new();
    assert!(Wal::inspect(&empty, Path::new(DIR)).is_err());
    assert!(!empty.exists(Path::new(DIR)));
}

#[test]
fn a_version_1_log_is_refused() {
    let sc = scenario(batch_with_entries());
    let mut b = sc.segment().to_vec();
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    match open(&sc.with_segment(&b)) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(
                reason.contains("unsupported WAL format version 1"),
                "{reason}"
            )
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn mem_log_db_keeps_and_clears_guards() {
    let db = longship_storage::MemLogDb::new();
    let k = key(4, 2);
    db.save_raft_state(&[update(k, entries(1, 3, 1, 4))])
        .unwrap();
    let g = RecoveryGuard {
        acked_through: Some(Index(3)),
        restart_term: Term(1),
    };
    db.set_recovery_guard(k.0, k.1, g).unwrap();
    assert_eq!(db.read_state(k.0, k.1).unwrap().recovery, Some(g));
    let unknown = RecoveryGuard {
        acked_through: None,
        restart_term: Term(2),
    };
    db.set_recovery_guard(k.0, k.1, unknown).unwrap();
    assert_eq!(
        db.read_state(k.0, k.1).unwrap().recovery,
        Some(g.merge(unknown))
    );
    db.save_raft_state(&[LogUpdate {
        clear_recovery: true,
        ..update(k, vec![])
    }])
    .unwrap();
    assert_eq!(db.read_state(k.0, k.1).unwrap().recovery, None);
    assert!(db.damage_found().is_empty());
}

/// The last batch written with a later fsync (then a synced bit damaged by
/// the disk) and without (a prefix of it written back before the crash).
#[test]
fn synced_and_unsynced_last_batches_over_faulty_fs() {
    let mut outcomes = std::collections::BTreeSet::new();
    // No preallocation: a crash keeps a random prefix of appended bytes.
    let options = WalOptions {
        preallocate_bytes: 0,
        ..options()
    };
    let open = |fs: &Arc<dyn FileSystem>| Wal::open(fs.clone(), Path::new(DIR), options.clone());
    for seed in 0..40u64 {
        let fs = FaultyFs::over_mem(seed);
        let dynfs: Arc<dyn FileSystem> = Arc::new(fs.clone());
        let wal = open(&dynfs).unwrap();
        base_history(&wal);
        let before = dump(&wal).unwrap();
        let (seg, start) = wal.write_position();
        let path = Path::new(DIR).join(longship_storage::logdb::wal::segment_file_name(seg));
        let synced = seed % 2 == 0;
        if !synced {
            // The write happens, its fsync never does.
            fs.crash_after_op(Some(fs.op_count() + 1));
            assert!(wal.save_raft_state(&batch_with_entries()).is_err());
        } else {
            wal.save_raft_state(&batch_with_entries()).unwrap();
        }
        let (_, end) = wal.write_position();
        drop(wal);
        if synced {
            let at = fs
                .damage_synced_tail(&path, end - start, seed)
                .unwrap()
                .unwrap();
            assert!((start..end).contains(&at), "{at} outside {start}..{end}");
            fs.crash(CrashMode::DropUnsynced).unwrap();
        } else {
            fs.crash(CrashMode::KeepRandomPrefix).unwrap();
        }
        let ctx = format!("seed {seed} synced {synced}");
        let wal = open(&dynfs).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let got = dump(&wal).unwrap();
        let d = wal.damage_found();
        let in_flight = Action::Save(batch_with_entries());
        assert_recovered(&got, &before, Some(&in_flight), &ctx);
        if synced {
            // Acknowledged and damaged: always reported; the replicas
            // whose entries it held are guarded, the one whose hard state
            // alone it held is restored without a guard.
            assert_eq!(d.len(), 1, "{ctx}");
            assert!(!d[0].replicas_unknown, "{ctx}: {}", d[0]);
            for (k, guarded) in [(key(1, 1), true), (key(2, 1), false), (key(3, 2), true)] {
                assert_eq!(
                    wal.read_state(k.0, k.1).unwrap().recovery.is_some(),
                    guarded,
                    "{ctx}: {k:?}"
                );
            }
        }
        outcomes.insert((synced, d.is_empty()));
    }
    // Unsynced: a written-back prefix is reported too (it may have been
    // acknowledged as far as the bytes can tell).
    assert!(outcomes.contains(&(false, false)), "{outcomes:?}");
}

#[test]
fn damage_synced_tail_is_deterministic_and_skips_preallocated_zeros() {
    let run = |seed| {
        let fs = FaultyFs::over_mem(1);
        let dynfs: Arc<dyn FileSystem> = Arc::new(fs.clone());
        let wal = open(&dynfs).unwrap();
        base_history(&wal);
        let (seg, end) = wal.write_position();
        drop(wal);
        let path = Path::new(DIR).join(longship_storage::logdb::wal::segment_file_name(seg));
        let at = fs.damage_synced_tail(&path, 16, seed).unwrap().unwrap();
        assert!(at < end && at >= end - 16, "{at} {end}");
        (at, read_all(&fs, &path))
    };
    assert_eq!(run(5), run(5));
    let fs = FaultyFs::over_mem(1);
    fs.create_dir_all(Path::new("/d")).unwrap();
    let f = fs.create(Path::new("/d/zeros")).unwrap();
    f.write_at(0, &[0; 100]).unwrap();
    f.sync().unwrap();
    assert_eq!(
        fs.damage_synced_tail(Path::new("/d/zeros"), 10, 1).unwrap(),
        None
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random workloads, random damage of the last batch (flips and a cut):
    /// the batch is kept, or reported: torn (cut: nobody guarded) or
    /// damaged (its replicas guarded, their votes restored); never
    /// silently lost, never a refusal to open.
    #[test]
    fn random_damage_of_the_last_batch_is_never_silent(
        seed in 0u64..1000,
        n in 2usize..25,
        flips in proptest::collection::vec((any::<u32>(), 0u8..8), 0..4),
        cut in proptest::option::of(any::<u32>()),
    ) {
        let actions = valid_actions(seed, 3, n);
        let Some((last, rest)) = actions.split_last() else { return Ok(()) };
        let fs = MemFs::new();
        let dynfs: Arc<dyn FileSystem> = Arc::new(fs.clone());
        let wal = open(&dynfs).unwrap();
        let mut before = Model::default();
        for a in rest {
            run(&wal, a).unwrap();
            before.apply(a).unwrap();
        }
        let (seg, start) = wal.write_position();
        run(&wal, last).unwrap();
        let (seg2, end) = wal.write_position();
        let after = dump(&wal).unwrap();
        drop(wal);
        prop_assume!(seg == seg2 && end > start);
        let path = Path::new(DIR).join(longship_storage::logdb::wal::segment_file_name(seg));
        let mut b = read_all(&fs, &path);
        let len = end - start;
        for (o, bit) in &flips {
            b[(start + u64::from(*o) % len) as usize] ^= 1 << bit;
        }
        if let Some(c) = cut {
            b.truncate((start + u64::from(c) % (len + 1)) as usize);
        }
        fs.create(&path).unwrap().write_at(0, &b).unwrap();
        let wal = open(&dynfs).unwrap();
        let got = dump(&wal).unwrap();
        let d = wal.damage_found();
        if d.is_empty() {
            // Kept whole, or nothing of it was on disk (cut at its start).
            prop_assert!(got == after || (got == before && b.len() as u64 <= start),
                "silent change");
        } else {
            prop_assert_eq!(d.len(), 1);
            prop_assert_eq!(d[0].offset, start);
            assert_recovered(&got, &before, Some(last), "random damage");
            // Torn only when the file ends inside the batch; always so
            // for a plain cut (with flips too, the bytes may say less).
            // The design holds against one fault: two flips (one in each
            // header copy, one making the first copy's length run past the
            // end) can make a whole batch look torn (docs/recovery.md).
            let short = (b.len() as u64) < end;
            prop_assert!(!d[0].torn || short || flips.len() >= 2);
            if flips.is_empty() && short {
                prop_assert!(d[0].torn);
            }
            let listed: Vec<Key> = d[0].replicas.iter().map(|r| (r.shard_id, r.replica_id)).collect();
            for k in listed {
                if let Some(st) = wal.read_state(k.0, k.1) {
                    prop_assert_eq!(
                        st.recovery.is_some(),
                        !d[0].torn && (d[0].replicas_unknown || may_change_log(last, k)),
                        "{:?} {}",
                        k,
                        d[0]
                    );
                }
            }
        }
    }
}
