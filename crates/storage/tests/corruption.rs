//! Corruption tests: bits are flipped and files cut at many offsets of
//! every segment of a write-ahead log. Each case must either be repaired as
//! a torn tail (only possible in the last segment, and then the log holds
//! exactly the batches before the damage) or be reported as
//! `Error::Corruption` naming a segment file and an offset — never a panic,
//! never wrong data. Arbitrary bytes as segment files must not panic either.

mod logdb_util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use logdb_util::*;
use longship_raft::Index;
use longship_storage::vfs::{FileSystem, MemFs};
use longship_storage::{Error, Wal, WalOptions};
use proptest::prelude::*;

const DIR: &str = "/wal";

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 1200,
        max_cache_bytes: 4096,
        max_group_bytes: 1 << 20,
        preallocate_bytes: 500,
    }
}

/// The log files after a workload, with what every prefix of it holds.
struct Fixture {
    /// `(path, bytes)` of every segment, oldest first.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// `models[i]`: the state after `i` actions.
    models: Vec<Model>,
    /// For each action: the segment id and its length once it was written.
    ends: Vec<(u64, u64)>,
    /// The accepted actions, in order.
    actions: Vec<Action>,
}

fn fixture(seed: u64, n: usize) -> Fixture {
    let fs = MemFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), Path::new(DIR), options()).unwrap();
    let mut w = Workload::new(seed, 4);
    w.rare_percent = 10;
    let mut m = Model::default();
    let mut models = vec![m.clone()];
    let mut ends = Vec::new();
    let mut actions = Vec::new();
    for i in 0..n {
        let a = if i % 6 == 5 {
            // Compact one replica to near its end, so segments get deleted.
            let k = *m
                .replicas
                .keys()
                .nth(i % m.replicas.len().max(1))
                .unwrap_or(&key(1, 2));
            let last = m.replicas.get(&k).map_or(0, |r| r.last());
            Action::Compact(k, Index(last.saturating_sub(2)))
        } else {
            w.next(&m)
        };
        let ok = m.apply(&a).is_ok();
        assert_eq!(run(&wal, &a).is_ok(), ok);
        if ok {
            models.push(m.clone());
            ends.push(wal.write_position());
            actions.push(a);
        }
    }
    drop(wal);
    let files = fs
        .list(Path::new(DIR))
        .unwrap()
        .into_iter()
        .map(|p| {
            let f = fs.open_read(&p).unwrap();
            let mut b = vec![0; f.len().unwrap() as usize];
            f.read_at(0, &mut b).unwrap();
            (p, b)
        })
        .collect();
    Fixture {
        files,
        models,
        ends,
        actions,
    }
}

fn segment_path(id: u64) -> PathBuf {
    Path::new(DIR).join(longship_storage::logdb::wal::segment_file_name(id))
}

fn segment_id(path: &Path) -> u64 {
    longship_storage::logdb::wal::parse_segment_file_name(
        path.file_name().unwrap().to_str().unwrap(),
    )
    .unwrap()
}

/// A file system holding the fixture's files, with file `which` replaced.
fn damaged(fx: &Fixture, which: usize, bytes: Vec<u8>) -> Arc<dyn FileSystem> {
    let fs = MemFs::new();
    fs.create_dir_all(Path::new(DIR)).unwrap();
    for (i, (p, b)) in fx.files.iter().enumerate() {
        let data = if i == which { &bytes } else { b };
        fs.create(p).unwrap().write_at(0, data).unwrap();
    }
    Arc::new(fs)
}

/// Opens a damaged copy and checks the outcome. `at`: first damaged byte.
/// Returns `None` if it was repaired, else the reason reported.
fn check_case(fx: &Fixture, which: usize, bytes: Vec<u8>, at: u64, what: &str) -> Option<String> {
    let (path, _) = &fx.files[which];
    let id = segment_id(path);
    let is_last = which + 1 == fx.files.len();
    let ctx = format!("{what} at {at} of {}", path.display());
    let fs = damaged(fx, which, bytes);
    match Wal::open(fs.clone(), Path::new(DIR), options()) {
        Ok(wal) => {
            wal.check_invariants().unwrap();
            let got = dump(&wal).unwrap_or_else(|e| panic!("{ctx}: repaired log unreadable: {e}"));
            if is_last {
                // Exactly the batches before the damaged one survive.
                let kept = fx
                    .ends
                    .iter()
                    .filter(|&&(seg, end)| seg < id || (seg == id && end <= at))
                    .count();
                // The damaged batch's term and vote may be restored.
                assert_recovered(&got, &fx.models[kept], fx.actions.get(kept), &ctx);
            } else {
                // Damage in an older segment is never repaired, unless it
                // changed nothing at all.
                assert_same(&got, fx.models.last().unwrap(), &ctx);
            }
            None
        }
        Err(Error::Corruption {
            file,
            offset,
            reason,
        }) => {
            let len = fs.open_read(&file).map(|f| f.len().unwrap()).unwrap_or(0);
            assert!(
                file.starts_with(DIR) && offset <= len.max(1),
                "{ctx}: corruption reported at {offset} of {}",
                file.display()
            );
            Some(reason)
        }
        Err(e) => panic!("{ctx}: unexpected error {e}"),
    }
}

#[test]
fn bit_flips_are_repaired_at_the_tail_or_reported() {
    let mut cases = 0;
    let (mut repaired, mut reported) = (0, 0);
    for seed in 0..2 {
        let fx = fixture(seed, 30);
        assert!(fx.files.len() >= 3, "want several segments");
        for (which, (_, bytes)) in fx.files.iter().enumerate() {
            // Every byte of the header, then a spread of offsets.
            let offsets = (0..bytes.len()).filter(|&o| o < 48 || o % 5 == (which % 5));
            for o in offsets {
                let mut b = bytes.clone();
                b[o] ^= 1 << (o % 8);
                if check_case(&fx, which, b, o as u64, "bit flip").is_none() {
                    repaired += 1;
                } else {
                    reported += 1;
                }
                cases += 1;
            }
        }
    }
    assert!(
        cases > 500 && repaired > 0 && reported > 0,
        "{cases} {repaired} {reported}"
    );
}

#[test]
fn truncations_are_repaired_at_the_tail_or_reported() {
    let (mut cases, mut tail_cuts, mut tail_repaired) = (0, 0, 0);
    for seed in 0..2 {
        let fx = fixture(seed + 10, 30);
        for (which, (_, bytes)) in fx.files.iter().enumerate() {
            let is_last = which + 1 == fx.files.len();
            // Densely in the last segment, where cuts are repaired.
            let stride = if is_last { 2 } else { 13 };
            for cut in (0..bytes.len()).filter(|c| c % stride == 0) {
                let reported = check_case(&fx, which, bytes[..cut].to_vec(), cut as u64, "cut");
                if is_last {
                    tail_cuts += 1;
                    match reported {
                        None => tail_repaired += 1,
                        // Entries relocated into the cut bytes from a
                        // segment deleted since are gone for good.
                        Some(r) => assert!(r.contains("no longer exists"), "cut at {cut}: {r}"),
                    }
                }
                cases += 1;
            }
        }
    }
    // A cut of the last segment is a damaged tail, unless it removes entries
    // copied there from a segment since deleted: then it is reported.
    assert!(cases > 300, "{cases}");
    assert!(
        tail_repaired * 3 > tail_cuts,
        "{tail_repaired} of {tail_cuts} repaired"
    );
}

#[test]
fn zeroed_tail_of_the_last_segment_is_torn() {
    // After a crash the file system may show zeros past the last write.
    let fx = fixture(3, 20);
    let which = fx.files.len() - 1;
    let mut b = fx.files[which].1.clone();
    let len = b.len();
    b.resize(len + 4096, 0);
    assert_eq!(check_case(&fx, which, b, len as u64, "zero tail"), None);
}

fn arbitrary_segment(header_ok: bool, body: Vec<u8>) -> Vec<u8> {
    // A real segment of an empty log, then arbitrary bytes.
    let fs = MemFs::new();
    drop(Wal::open(Arc::new(fs.clone()), Path::new(DIR), options()).unwrap());
    let f = fs.open_read(&segment_path(1)).unwrap();
    let mut b = vec![0; f.len().unwrap() as usize];
    f.read_at(0, &mut b).unwrap();
    if !header_ok {
        b.clear();
    }
    b.extend_from_slice(&body);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_segment_bytes_never_panic(header_ok: bool, body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new(DIR)).unwrap();
        fs.create(&segment_path(1)).unwrap().write_at(0, &arbitrary_segment(header_ok, body)).unwrap();
        if let Ok(wal) = Wal::open(Arc::new(fs), Path::new(DIR), options()) {
            wal.check_invariants().unwrap();
            let _ = dump(&wal);
        }
    }

    #[test]
    fn mutated_segments_never_panic(seed in 0u64..4, edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8)) {
        let fx = fixture(seed, 12);
        let which = (edits[0].0 as usize) % fx.files.len();
        let mut b = fx.files[which].1.clone();
        for (pos, v) in &edits {
            let len = b.len().max(1);
            if let Some(x) = b.get_mut(*pos as usize % len) {
                *x = *v;
            }
        }
        let fs = damaged(&fx, which, b);
        if let Ok(wal) = Wal::open(fs, Path::new(DIR), options()) {
            wal.check_invariants().unwrap();
            let _ = dump(&wal);
        }
    }
}
