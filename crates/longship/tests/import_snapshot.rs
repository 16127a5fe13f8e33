//! The repair tool: dragonboat's documented ImportSnapshot example, in longship.
//! Shard 100 runs on m1, m2, m3; a snapshot is exported; m2 and m3 are lost
//! for good; the snapshot is imported on m1, m4 and m5 with members
//! {1: m1, 4: m4, 5: m5}; the shard serves the snapshot's state, accepts new
//! writes, and replicas 2 and 3 cannot rejoin.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use longship::tools::import_snapshot;
use longship::{Error, Index, ReplicaId, ShardId, SnapshotOption, Start};

const SHARD: u64 = 100;

fn members(ids: &[u64]) -> BTreeMap<ReplicaId, String> {
    ids.iter().map(|&i| (ReplicaId(i), addr(i))).collect()
}

#[test]
fn import_snapshot_repairs_a_shard_that_lost_its_quorum() {
    let mut c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    let mut s = c.nh(leader).get_noop_session(ShardId(SHARD));
    for i in 0..10 {
        retry(|| {
            c.nh(leader)
                .sync_propose(&mut s, format!("set k{i} before").into_bytes(), TIMEOUT)
        });
    }
    // A non-voting replica 6 (on m6, never started) is in the exported
    // membership: it may not come back as a voter.
    retry(|| {
        c.nh(leader)
            .request_add_non_voting(ShardId(SHARD), ReplicaId(6), addr(6), Index(0), TIMEOUT)?
            .wait()
    });
    // Export a snapshot from m1 (its replica must have applied everything).
    retry(|| c.nh(1).sync_read(ShardId(SHARD), b"get k9", TIMEOUT));
    let export = c.dir.path().join("backup");
    let opt = SnapshotOption {
        export_path: Some(export.clone()),
        compaction_overhead: None,
    };
    let done = retry(|| {
        c.nh(1)
            .request_snapshot(ShardId(SHARD), opt.clone(), TIMEOUT)?
            .wait()
    });
    // The request names the exported directory.
    let snapshot_dir = done.export_dir.expect("an export names its directory");
    assert_eq!(
        snapshot_dir,
        export.join(format!("snapshot-{:016x}", done.index.0))
    );
    assert!(snapshot_dir.is_dir());
    // The membership as read before the loss, edited, is the new member list.
    let mut new_members =
        retry(|| c.nh(1).sync_get_shard_membership(ShardId(SHARD), TIMEOUT)).voters;
    new_members.retain(|id, _| *id == ReplicaId(1));
    new_members.extend(members(&[4, 5]));
    // Writes after the export are lost by the repair.
    retry(|| {
        c.nh(leader)
            .sync_propose(&mut s, b"set after lost".to_vec(), TIMEOUT)
    });
    for h in 1..=3 {
        c.stop_host(h);
    }

    // Bad inputs change nothing; each check fails with its own error.
    let cfg1 = c.host_config(1);
    let invalid_members = |err: Error, says: &str| {
        assert!(
            matches!(&err, Error::InvalidMembers(why) if why.contains(says)),
            "expected InvalidMembers ({says}): {err}"
        );
    };
    invalid_members(
        import_snapshot(&cfg1, &snapshot_dir, &BTreeMap::new(), ReplicaId(1)).unwrap_err(),
        "empty",
    );
    invalid_members(
        import_snapshot(&cfg1, &snapshot_dir, &members(&[4, 5]), ReplicaId(1)).unwrap_err(),
        "must contain the replica",
    );
    // The host's raft address must be the one listed for the replica.
    invalid_members(
        import_snapshot(&c.host_config(4), &snapshot_dir, &new_members, ReplicaId(5)).unwrap_err(),
        "raft address",
    );
    // A surviving member keeps its address.
    let mut moved = new_members.clone();
    moved.insert(ReplicaId(1), "elsewhere:1".into());
    invalid_members(
        import_snapshot(&c.host_config(4), &snapshot_dir, &moved, ReplicaId(4)).unwrap_err(),
        "keeps its address",
    );
    // A former non-voting replica cannot come back as a voter.
    invalid_members(
        import_snapshot(
            &c.host_config(6),
            &snapshot_dir,
            &members(&[1, 4, 6]),
            ReplicaId(6),
        )
        .unwrap_err(),
        "was non-voting",
    );
    let err = import_snapshot(
        &cfg1,
        &c.dir.path().join("nope"),
        &new_members,
        ReplicaId(1),
    )
    .unwrap_err();
    assert!(matches!(err, Error::SnapshotPathNotFound(_)), "{err}");
    // A copy without its data file, and a directory without metadata.
    let partial = c
        .dir
        .path()
        .join("partial")
        .join(snapshot_dir.file_name().unwrap());
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        snapshot_dir.join("snapshot.meta"),
        partial.join("snapshot.meta"),
    )
    .unwrap();
    let err = import_snapshot(&cfg1, &partial, &new_members, ReplicaId(1)).unwrap_err();
    assert!(matches!(err, Error::IncompleteSnapshot { .. }), "{err}");
    let empty = c.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = import_snapshot(&cfg1, &empty, &new_members, ReplicaId(1)).unwrap_err();
    assert!(matches!(err, Error::IncompleteSnapshot { .. }), "{err}");
    for h in [4, 5, 6] {
        assert!(
            !c.host_dir(h).exists(),
            "a refused import wrote on host {h}"
        );
    }
    // The export directory itself: the error points at its snapshot-* child,
    // and names each path once.
    let err = import_snapshot(&cfg1, &export, &new_members, ReplicaId(1)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "snapshot_dir",
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&snapshot_dir.display().to_string()),
        "no hint at the snapshot-* child: {msg}"
    );
    assert!(!msg.contains("incomplete"), "{msg}");
    assert_eq!(
        msg.matches(&export.display().to_string()).count(),
        2,
        "the export dir, then its child: {msg}"
    );

    // Repair on m1, m4 and m5.
    for id in [1, 4, 5] {
        let imported = import_snapshot(
            &c.host_config(id),
            &snapshot_dir,
            &new_members,
            ReplicaId(id),
        )
        .unwrap();
        // The shard comes from the snapshot's metadata.
        assert_eq!(imported.shard_id, ShardId(SHARD));
        assert_eq!(imported.index, done.index);
    }
    for id in [1, 4, 5] {
        c.start_host(id);
        // An imported replica restarts: bootstrapping or joining is refused.
        for start in [Start::New(new_members.clone()), Start::Join] {
            let err = c
                .nh(id)
                .start_replica(start, |_, _| Box::new(Kv::default()), config(SHARD, id))
                .unwrap_err();
            assert!(matches!(err, Error::ReplicaHasData { .. }), "{err}");
        }
        c.nh(id)
            .start_replica(
                Start::Restart,
                |_, _| Box::new(Kv::default()),
                config(SHARD, id),
            )
            .unwrap();
    }
    let leader = c.wait_leader(SHARD);
    assert!([1, 4, 5].contains(&leader));
    for id in [1, 4, 5] {
        assert_eq!(
            retry(|| c.nh(id).sync_read(ShardId(SHARD), b"get k9", TIMEOUT)),
            b"before"
        );
        assert_eq!(
            retry(|| c.nh(id).sync_read(ShardId(SHARD), b"get after", TIMEOUT)),
            b""
        );
    }
    let m = retry(|| {
        c.nh(leader)
            .sync_get_shard_membership(ShardId(SHARD), TIMEOUT)
    });
    assert_eq!(
        m.voters.keys().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 4, 5]
    );
    assert!(m.removed.contains(&ReplicaId(2)) && m.removed.contains(&ReplicaId(3)));
    assert!(
        m.removed.contains(&ReplicaId(6)),
        "the non-voting replica is gone"
    );
    // The imported membership's config change id is the snapshot's index.
    assert_eq!(m.config_change_id, done.index);
    let mut s = c.nh(leader).get_noop_session(ShardId(SHARD));
    retry(|| {
        c.nh(leader)
            .sync_propose(&mut s, b"set new yes".to_vec(), TIMEOUT)
    });

    // Replica 2 comes back with its old data: it cannot disrupt or rejoin.
    c.start_host(2);
    c.nh(2)
        .start_replica(
            Start::Restart,
            |_, _| Box::new(Kv::default()),
            config(SHARD, 2),
        )
        .unwrap();
    // Three election timeouts of host 2's own time: room to campaign.
    wait_ticks(c.nh(2), 30);
    assert_eq!(
        c.wait_leader(SHARD),
        leader,
        "a removed replica deposed the leader"
    );
    let mut s2 = c.nh(2).get_noop_session(ShardId(SHARD));
    let r = c
        .nh(2)
        .sync_propose(&mut s2, b"set from2 x".to_vec(), Duration::from_millis(300));
    assert!(r.is_err(), "a removed replica's proposal went through");
    assert_eq!(
        retry(|| c
            .nh(leader)
            .sync_read(ShardId(SHARD), b"get from2", TIMEOUT)),
        b""
    );
    // Re-adding a removed id is refused.
    let err = c
        .nh(leader)
        .request_add_replica(ShardId(SHARD), ReplicaId(3), addr(3), Index(0), TIMEOUT)
        .unwrap()
        .wait();
    assert!(
        matches!(err, Err(Error::ReplicaRemoved(ReplicaId(3)))),
        "{err:?}"
    );
}
