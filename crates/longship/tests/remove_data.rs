//! `NodeHost::remove_data` and `sync_remove_data`: a stopped replica's log,
//! snapshots and directory go durably, and it can never be started again.

mod common;

use std::time::Duration;

use common::*;
use longship::{Config, Error, Index, ReplicaId, ShardId, SnapshotOption, Start};

const SHARD: u64 = 1;

fn snapshot_dir(c: &TestCluster, host: u64, replica: u64) -> std::path::PathBuf {
    c.host_dir(host)
        .join("snapshots")
        .join(format!("snapshot-{SHARD}-{replica}"))
}

/// Every way to start replica 3 of the shard on host 3 is refused as removed.
fn assert_start_refused(c: &TestCluster) {
    for start in [
        Start::Restart,
        Start::Join,
        Start::New(TestCluster::members(&[1, 2, 3])),
    ] {
        let err = c
            .nh(3)
            .start_replica(
                start.clone(),
                |_, _| Box::new(Kv::default()),
                config(SHARD, 3),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ReplicaDataRemoved { shard_id, replica_id }
                    if shard_id == ShardId(SHARD) && replica_id == ReplicaId(3)
            ),
            "{start:?}: {err}"
        );
        assert!(!err.is_temporary());
    }
}

#[test]
fn removed_data_is_gone_for_good_and_the_replica_never_restarts() {
    let mut c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    for i in 0..5 {
        c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    // Host 3 has a snapshot and a log.
    retry(|| c.nh(3).sync_read(ShardId(SHARD), b"get k4", TIMEOUT));
    retry(|| {
        c.nh(3)
            .request_snapshot(ShardId(SHARD), SnapshotOption::default(), TIMEOUT)?
            .wait()
    });
    assert!(snapshot_dir(&c, 3, 3).is_dir());

    // Refused while it runs; nothing is removed.
    let err = c
        .nh(3)
        .remove_data(ShardId(SHARD), ReplicaId(3))
        .unwrap_err();
    assert!(
        matches!(err, Error::ShardNotStopped(s) if s == ShardId(SHARD)),
        "{err}"
    );
    let err = c
        .nh(3)
        .sync_remove_data(ShardId(SHARD), ReplicaId(3), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err}");
    assert!(c.nh(3).has_node_info(ShardId(SHARD), ReplicaId(3)));
    assert!(snapshot_dir(&c, 3, 3).is_dir());
    assert_eq!(c.read(3, SHARD, "get k0"), b"v0");

    // Removed from the shard, stopped, then its data removed.
    let leader = if leader == 3 {
        c.nh(3)
            .request_leader_transfer(ShardId(SHARD), ReplicaId(1))
            .unwrap();
        wait_until("host 1 leads", TIMEOUT, || c.leader_seen_by(1, SHARD) == 1);
        1
    } else {
        leader
    };
    retry(|| {
        c.nh(leader)
            .request_delete_replica(ShardId(SHARD), ReplicaId(3), Index(0), TIMEOUT)?
            .wait()
    });
    c.nh(3).stop_replica(ShardId(SHARD), ReplicaId(3)).unwrap();
    c.nh(3).remove_data(ShardId(SHARD), ReplicaId(3)).unwrap();
    assert!(!c.nh(3).has_node_info(ShardId(SHARD), ReplicaId(3)));
    assert!(!snapshot_dir(&c, 3, 3).exists());
    assert!(
        !c.nh(3)
            .get_node_host_info()
            .log_info
            .iter()
            .any(|l| l.shard_id == ShardId(SHARD))
    );
    assert_start_refused(&c);
    // Again: harmless.
    c.nh(3).remove_data(ShardId(SHARD), ReplicaId(3)).unwrap();

    // Durable: after a restart of the host, still gone and still refused.
    c.stop_host(3);
    c.start_host(3);
    assert!(!c.nh(3).has_node_info(ShardId(SHARD), ReplicaId(3)));
    assert!(!snapshot_dir(&c, 3, 3).exists());
    assert_start_refused(&c);
    // The shard goes on without it.
    c.propose(leader, SHARD, "set after removal");
    assert_eq!(c.read(leader, SHARD, "get after"), b"removal");
    // Other shards run on the host as before.
    c.nh(3)
        .start_replica(
            Start::New(TestCluster::members(&[4])),
            |_, _| Box::new(Kv::default()),
            Config {
                shard_id: ShardId(2),
                ..config(2, 4)
            },
        )
        .unwrap();
}

#[test]
fn sync_remove_data_waits_for_the_replica_to_stop() {
    let c = TestCluster::new(1);
    c.start_shard(SHARD, &[1]);
    c.wait_leader(SHARD);
    c.propose(1, SHARD, "set a 1");
    std::thread::scope(|s| {
        let nh = c.nh(1);
        let remover = s.spawn(move || nh.sync_remove_data(ShardId(SHARD), ReplicaId(1), TIMEOUT));
        // The remover started while the replica ran: it waits for the stop
        // instead of refusing (remove_data alone would refuse now).
        c.nh(1).stop_shard(ShardId(SHARD)).unwrap();
        remover.join().unwrap().unwrap();
    });
    assert!(!c.nh(1).has_node_info(ShardId(SHARD), ReplicaId(1)));
    let err = c
        .nh(1)
        .start_replica(
            Start::Restart,
            |_, _| Box::new(Kv::default()),
            config(SHARD, 1),
        )
        .unwrap_err();
    assert!(matches!(err, Error::ReplicaDataRemoved { .. }), "{err}");
}
