//! The checker agrees with every verdict of the Jepsen-recorded histories in
//! `testdata/linearizability-vectors` (see its NOTE.md), each within a
//! bounded time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use longship_sim::linearizability::kv::KvModel;
use longship_sim::linearizability::register::RegisterModel;
use longship_sim::linearizability::{Budget, Verdict, check, jepsen};

/// Each history must be decided within this long (debug build included).
const TIME_MAX: Duration = Duration::from_secs(20);

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/linearizability-vectors")
}

fn budget() -> Budget {
    Budget {
        steps_max: u64::MAX,
        time_max: Some(TIME_MAX),
    }
}

fn expect<K: std::fmt::Debug>(
    name: &str,
    want_linearizable: bool,
    verdict: &Verdict<K>,
    took: Duration,
) -> Option<String> {
    let ok = match verdict {
        Verdict::Linearizable => want_linearizable,
        Verdict::NotLinearizable { .. } => !want_linearizable,
        Verdict::Unknown => false,
    };
    (!ok).then(|| {
        let verdict = match verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::NotLinearizable { key, .. } => format!("not linearizable (key {key:?})"),
            Verdict::Unknown => "unknown (budget ran out)".to_string(),
        };
        format!("{name}: want linearizable={want_linearizable}, got {verdict} in {took:?}")
    })
}

#[test]
fn etcd_register_verdicts() {
    let dir = vectors().join("etcd-register");
    let verdicts = std::fs::read_to_string(dir.join("VERDICTS")).expect("VERDICTS");
    let mut failures = Vec::new();
    let mut count = [0usize; 2];
    let mut slowest = (Duration::ZERO, String::new());
    for line in verdicts.lines().filter(|l| !l.trim().is_empty()) {
        let (file, verdict) = line.split_once(' ').expect("`file verdict` line");
        let want = match verdict.trim() {
            "linearizable" => true,
            "not-linearizable" => false,
            other => panic!("unknown verdict {other:?}"),
        };
        count[want as usize] += 1;
        let text = std::fs::read_to_string(dir.join(file)).expect("history file");
        let history = jepsen::parse_etcd(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let start = Instant::now();
        let verdict = check(&RegisterModel, &history, budget());
        let took = start.elapsed();
        if took > slowest.0 {
            slowest = (took, file.to_string());
        }
        failures.extend(expect(file, want, &verdict, took));
    }
    eprintln!("etcd-register: slowest {} in {:?}", slowest.1, slowest.0);
    assert_eq!(count, [79, 23], "VERDICTS has 79 bad and 23 good histories");
    assert!(
        failures.is_empty(),
        "disagreements:\n{}",
        failures.join("\n")
    );
}

#[test]
fn kv_append_verdicts() {
    let dir = vectors().join("kv-append");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("kv-append dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .filter(|name| name.ends_with(".txt"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6);
    let mut failures = Vec::new();
    for file in &files {
        let want = if file.ends_with("-ok.txt") {
            true
        } else if file.ends_with("-bad.txt") {
            false
        } else {
            panic!("{file}: name ends neither -ok nor -bad")
        };
        let text = std::fs::read_to_string(dir.join(file)).expect("history file");
        let history = jepsen::parse_kv(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let start = Instant::now();
        let verdict = check(&KvModel, &history, budget());
        failures.extend(expect(file, want, &verdict, start.elapsed()));
    }
    assert!(
        failures.is_empty(),
        "disagreements:\n{}",
        failures.join("\n")
    );
}
