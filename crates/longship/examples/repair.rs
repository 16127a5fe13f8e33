//! Repairing a shard that lost its quorum for good (dragonboat's
//! `ImportSnapshot` example), end to end in one process: shard 100 runs on
//! hosts m1, m2 and m3; a snapshot is exported; m2 and m3 are lost; the
//! snapshot is imported on m1 and on two new hosts m4 and m5 with the
//! members {1: m1, 4: m4, 5: m5}; every member restarts from the import and
//! the shard serves the exported state again. Removed replicas 2 and 3 can
//! never come back.
//!
//! Run it with `cargo run --example repair`; `cargo test` runs it as the
//! documentation test of `longship::tools`. The hosts share an in-memory
//! network here; on real machines each is a process with a TCP address, and
//! the import runs there (`longship import-snapshot` does the same from a
//! shell).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use longship::tools::import_snapshot;
use longship::transport::MemNetwork;
use longship::{
    Config, Error, NodeHost, NodeHostConfig, ReplicaId, ShardId, SmEntry, SmError, SnapshotOption,
    Start, StateMachine, StopFlag,
};

const SHARD: ShardId = ShardId(100);
const TIMEOUT: Duration = Duration::from_secs(5);

/// The state: every command applied, in order, one per line.
#[derive(Default)]
struct Lines(Vec<String>);

impl StateMachine for Lines {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            self.0.push(String::from_utf8_lossy(&e.cmd).into_owned());
            e.result.value = self.0.len() as u64;
        }
        Ok(())
    }
    fn lookup(&self, _query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.0.join("\n").into_bytes())
    }
    fn save_snapshot(&self, w: &mut dyn std::io::Write, _: &StopFlag) -> Result<(), SmError> {
        Ok(w.write_all(self.0.join("\n").as_bytes())?)
    }
    fn recover_from_snapshot(
        &mut self,
        r: &mut dyn std::io::Read,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        let mut s = String::new();
        r.read_to_string(&mut s)?;
        self.0 = s.lines().map(str::to_string).collect();
        Ok(())
    }
}

/// Host `m<i>`: its directory under `root` and its raft address.
fn host_config(root: &Path, i: u64) -> NodeHostConfig {
    NodeHostConfig {
        node_host_dir: root.join(format!("m{i}")),
        rtt_ms: 10,
        raft_address: format!("m{i}:63001"),
        ..NodeHostConfig::default()
    }
}

fn start_host(net: &MemNetwork, root: &Path, i: u64) -> NodeHost {
    let cfg = host_config(root, i);
    let transport = Arc::new(net.transport(&cfg.raft_address));
    NodeHost::builder(cfg)
        .transport(transport)
        .build()
        .expect("NodeHost")
}

/// Starts replica `i` of the shard on `nh`, as `start` says.
fn start_replica(nh: &NodeHost, start: Start, i: u64) {
    nh.start_replica(
        start,
        |_, _| Box::new(Lines::default()),
        Config::new(SHARD, ReplicaId(i)),
    )
    .expect("replica started");
}

/// Retries `f` while it fails with a temporary error (no leader yet).
fn retry<T>(mut f: impl FnMut() -> longship::Result<T>) -> longship::Result<T> {
    for _ in 0..100 {
        match f() {
            Err(e) if e.is_temporary() => std::thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
    f()
}

fn main() {
    let root = std::env::temp_dir().join(format!("longship-repair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let net = MemNetwork::new();
    let mut hosts: BTreeMap<u64, NodeHost> = BTreeMap::new();

    // 1. Shard 100 runs on m1, m2 and m3 and takes a few writes.
    let members: BTreeMap<ReplicaId, String> = (1..=3)
        .map(|i| (ReplicaId(i), host_config(&root, i).raft_address))
        .collect();
    for i in 1..=3 {
        let nh = start_host(&net, &root, i);
        start_replica(&nh, Start::New(members.clone()), i);
        hosts.insert(i, nh);
    }
    let m1 = &hosts[&1];
    let mut session = m1.get_noop_session(SHARD);
    for cmd in ["a", "b", "c"] {
        retry(|| m1.sync_propose(&mut session, cmd, TIMEOUT)).expect("write");
    }

    // 2. Export a snapshot from m1. A linearizable read first makes sure m1
    //    applied every write; the completed request names the directory.
    retry(|| m1.sync_read(SHARD, b"", TIMEOUT)).expect("read");
    let opt = SnapshotOption {
        export_path: Some(root.join("backup")),
        ..SnapshotOption::default()
    };
    let exported = retry(|| m1.request_snapshot(SHARD, opt.clone(), TIMEOUT)?.wait())
        .expect("snapshot exported");
    let snapshot_dir = exported.export_dir.expect("an export names its directory");
    println!(
        "exported index {} to {}",
        exported.index,
        snapshot_dir.display()
    );
    // The membership, to build the new member list from.
    let before = retry(|| m1.sync_get_shard_membership(SHARD, TIMEOUT)).expect("membership");

    // 3. m2 and m3 are lost for good: m1 alone has no quorum, a write times
    //    out (its outcome unknown). Then m1 stops too, as the import needs.
    for i in [2, 3] {
        hosts.remove(&i).expect("host").close();
    }
    let m1 = &hosts[&1];
    let r = m1.sync_propose(&mut session, "lost", Duration::from_millis(300));
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    hosts.remove(&1).expect("host").close();

    // 4. The new membership: survivor 1, and replicas 4 and 5 on the new
    //    hosts m4 and m5 (new ids: removed ones are never reused).
    let mut new_members = before.voters.clone();
    new_members.retain(|id, _| *id == ReplicaId(1));
    for i in [4, 5] {
        new_members.insert(ReplicaId(i), host_config(&root, i).raft_address);
    }

    // 5. Import the same snapshot with the same members on every host of the
    //    new membership, new hosts included. The shard comes from the
    //    snapshot's metadata.
    for i in [1, 4, 5] {
        let imported = import_snapshot(
            &host_config(&root, i),
            &snapshot_dir,
            &new_members,
            ReplicaId(i),
        )
        .expect("imported");
        assert_eq!((imported.shard_id, imported.index), (SHARD, exported.index));
    }

    // 6. Start the NodeHosts and restart every member from the import
    //    (Start::New or Start::Join would be refused: the replicas have data).
    for i in [1, 4, 5] {
        let nh = start_host(&net, &root, i);
        start_replica(&nh, Start::Restart, i);
        hosts.insert(i, nh);
    }

    // 7. Every member serves the exported state; writes go through again.
    for nh in hosts.values() {
        let state = retry(|| nh.sync_read(SHARD, b"", TIMEOUT)).expect("read");
        assert_eq!(state, b"a\nb\nc");
    }
    let m4 = &hosts[&4];
    let mut session = m4.get_noop_session(SHARD);
    let applied = retry(|| m4.sync_propose(&mut session, "d", TIMEOUT)).expect("write");
    assert_eq!(applied.value, 4);
    let m = retry(|| m4.sync_get_shard_membership(SHARD, TIMEOUT)).expect("membership");
    assert_eq!(m.voters, new_members);
    assert!(m.removed.contains(&ReplicaId(2)) && m.removed.contains(&ReplicaId(3)));

    // 8. A removed replica id can never be added again.
    let r = retry(|| {
        m4.request_add_replica(SHARD, ReplicaId(2), "m2:63001", m.config_change_id, TIMEOUT)?
            .wait()
    });
    assert!(
        matches!(r, Err(Error::ReplicaRemoved(ReplicaId(2)))),
        "{r:?}"
    );
    println!("shard {SHARD} repaired: members {:?}", m.voters);

    for nh in hosts.into_values() {
        nh.close();
    }
    let _ = std::fs::remove_dir_all(&root);
}
