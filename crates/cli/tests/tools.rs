//! `longship inspect` and `longship import-snapshot` on a real NodeHost
//! directory: inspect labels the commit index as last persisted (it is
//! written lazily, so it may lag the log far behind) and names snapshot
//! directories as exports do; import-snapshot takes the directory a
//! snapshot request returned and says how to start the replica afterwards.
//! With the last write of the log damaged, inspect (which changes nothing)
//! reports the damage and the guarded replica and exits with code 3.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use longship::transport::MemNetwork;
use longship::{
    Config, NodeHost, NodeHostConfig, ReplicaId, ShardId, SmEntry, SmError, SnapshotOption, Start,
    StateMachine, StopFlag,
};

const SHARD: ShardId = ShardId(7);
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Count(u64);

impl StateMachine for Count {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            self.0 += 1;
            e.result.value = self.0;
        }
        Ok(())
    }
    fn lookup(&self, _: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn save_snapshot(&self, w: &mut dyn std::io::Write, _: &StopFlag) -> Result<(), SmError> {
        Ok(w.write_all(&self.0.to_le_bytes())?)
    }
    fn recover_from_snapshot(
        &mut self,
        r: &mut dyn std::io::Read,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        self.0 = u64::from_le_bytes(b);
        Ok(())
    }
}

fn longship(args: &[&str]) -> (bool, String) {
    let (code, text) = longship_code(args);
    (code == Some(0), text)
}

fn longship_code(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_longship"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The contents of every file under `dir`, recursively, sorted by path.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "LOCK") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn inspect_and_import_snapshot_say_what_they_found_and_did() {
    let dir = tempfile::tempdir().unwrap();
    let nh_dir = dir.path().join("nh1");
    let net = MemNetwork::new();
    let cfg = NodeHostConfig {
        node_host_dir: nh_dir.clone(),
        rtt_ms: 5,
        raft_address: "h1:1".into(),
        ..NodeHostConfig::default()
    };
    let nh = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport("h1:1")))
        .build()
        .unwrap();
    let members = [(ReplicaId(1), "h1:1".to_string())].into();
    nh.start_replica(
        Start::New(members),
        |_, _| Box::new(Count::default()),
        Config::new(SHARD, ReplicaId(1)),
    )
    .unwrap();
    let mut session = nh.get_noop_session(SHARD);
    for _ in 0..20 {
        loop {
            match nh.sync_propose(&mut session, "x", TIMEOUT) {
                Ok(_) => break,
                Err(e) if e.is_temporary() => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        }
    }
    // A local snapshot (inspect lists it) and an export of the same index
    // (an export is a backup: it takes no local snapshot of its own).
    nh.request_snapshot(SHARD, SnapshotOption::default(), TIMEOUT)
        .unwrap()
        .wait()
        .unwrap();
    let opt = SnapshotOption {
        export_path: Some(dir.path().join("backup")),
        ..SnapshotOption::default()
    };
    let exported = nh
        .request_snapshot(SHARD, opt, TIMEOUT)
        .unwrap()
        .wait()
        .unwrap();
    let snapshot_dir = exported.export_dir.unwrap();
    nh.close();

    let nh_dir_s = nh_dir.display().to_string();
    let (ok, out) = longship(&["inspect", &nh_dir_s]);
    assert!(ok, "{out}");
    assert!(out.contains("shard 7 replica 1: log "), "{out}");
    assert!(out.contains("(as last persisted)"), "{out}");
    let name = snapshot_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        out.contains(&format!("({name}): ")) && out.contains("checksums ok"),
        "{out}"
    );

    // The export directory itself is refused with a pointer to its child.
    let backup = dir.path().join("backup").display().to_string();
    let args = |snap: &str| {
        vec![
            "import-snapshot".to_string(),
            "--node-host-dir".into(),
            nh_dir_s.clone(),
            "--snapshot-dir".into(),
            snap.to_string(),
            "--members".into(),
            "1=h1:1,4=h4:1".into(),
            "--replica-id".into(),
            "1".into(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        longship(&a)
    };
    let (ok, out) = run(args(&backup));
    assert!(!ok, "{out}");
    assert!(out.contains(&snapshot_dir.display().to_string()), "{out}");
    // The host's raft address (from its directory, or --raft-address) must
    // be the one the members list for the replica.
    let mut elsewhere = args(&snapshot_dir.display().to_string());
    elsewhere.extend(["--raft-address".to_string(), "h9:1".to_string()]);
    let (ok, out) = run(elsewhere);
    assert!(!ok && out.contains("invalid members"), "{out}");
    // A new host's directory records no address: it must be given.
    let mut new_host = args(&snapshot_dir.display().to_string());
    new_host[2] = dir.path().join("nh4").display().to_string();
    new_host[8] = "4".into();
    let (ok, out) = run(new_host);
    assert!(!ok && out.contains("--raft-address"), "{out}");
    let (ok, out) = run(args(&snapshot_dir.display().to_string()));
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "imported the snapshot of shard 7 at index {} as replica 1",
            exported.index
        )) && out.contains("Start::Restart"),
        "{out}"
    );

    // Damage the last write of the log (the import's batch): inspect
    // reports it, with the replica it may have cost data, changes nothing,
    // and exits with 3.
    let wal_dir = nh_dir.join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end - 3] ^= 0x10;
    std::fs::write(last, &bytes).unwrap();
    let before = tree(&nh_dir);
    for _ in 0..2 {
        let (code, out) = longship_code(&["inspect", &nh_dir_s]);
        assert_eq!(code, Some(3), "{out}");
        assert!(
            out.contains("DAMAGE: ") && out.contains(".wal at offset "),
            "{out}"
        );
        assert!(out.contains("may have lost: shard 7 replica 1"), "{out}");
        assert!(out.contains("UNDER RECOVERY GUARD"), "{out}");
        assert!(out.contains("shard 7 replica 1: log "), "{out}");
        assert!(tree(&nh_dir) == before, "inspect changed the directory");
    }
    let (_, help) = longship_code(&["inspect", "--help"]);
    assert!(help.contains("3 damage at"), "{help}");

    // The library's logs reach stderr, filtered by RUST_LOG; with
    // `--log-format json`, one JSON object a line (for log shippers).
    for (format, json) in [("text", false), ("json", true)] {
        let out = Command::new(env!("CARGO_BIN_EXE_longship"))
            .args(["--log-format", format, "inspect", &nh_dir_s])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.contains("damaged tail of the log"))
            .unwrap_or_else(|| panic!("{format}: no warning logged: {stderr}"));
        if json {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON object a line ({e}): {line}"));
            assert_eq!(v["level"], "WARN", "{line}");
        } else {
            assert!(line.contains("WARN"), "{line}");
        }
    }
    let quiet = Command::new(env!("CARGO_BIN_EXE_longship"))
        .args(["inspect", &nh_dir_s])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("damaged tail"), "RUST_LOG=error: {stderr}");
}
