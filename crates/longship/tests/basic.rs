//! Proposals, reads and restart through the public API on three NodeHosts.

mod common;

use common::*;
use longship::ShardId;
use longship::Start;

#[test]
fn three_hosts_replicate_and_read_linearizably() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    let follower = if leader == 1 { 2 } else { 1 };
    for (i, host) in [(0, leader), (1, follower)].iter().map(|&(i, h)| (i, h)) {
        let mut s = c.nh(host).get_noop_session(ShardId(1));
        let r = retry(|| {
            c.nh(host)
                .sync_propose(&mut s, format!("set k{i} v{i}").into_bytes(), TIMEOUT)
        });
        assert_eq!(r.value as usize, i + 1);
    }
    for h in 1..=3 {
        let v = retry(|| c.nh(h).sync_read(ShardId(1), b"get k1", TIMEOUT));
        assert_eq!(v, b"v1");
    }
}

#[test]
fn restart_keeps_applied_state() {
    let mut c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    let mut s = c.nh(leader).get_noop_session(ShardId(1));
    for i in 0..20 {
        retry(|| {
            c.nh(leader)
                .sync_propose(&mut s, format!("set a{i} {i}").into_bytes(), TIMEOUT)
        });
    }
    for h in 1..=3 {
        c.stop_host(h);
    }
    for h in 1..=3 {
        c.start_host(h);
        assert!(c.nh(h).has_node_info(ShardId(1), longship::ReplicaId(h)));
        c.nh(h)
            .start_replica(Start::Restart, |_, _| Box::new(Kv::default()), config(1, h))
            .unwrap();
    }
    for h in 1..=3 {
        let v = retry(|| c.nh(h).sync_read(ShardId(1), b"get a19", TIMEOUT));
        assert_eq!(v, b"19");
    }
}

#[test]
fn a_restarted_host_with_a_fixed_seed_does_not_reuse_client_ids() {
    let mut c = TestCluster::new(1);
    c.start_shard(1, &[1]);
    c.wait_leader(1);
    let before = retry(|| c.nh(1).sync_get_session(ShardId(1), TIMEOUT));
    c.stop_host(1);
    c.start_host(1);
    c.nh(1)
        .start_replica(Start::Restart, |_, _| Box::new(Kv::default()), config(1, 1))
        .unwrap();
    c.wait_leader(1);
    let after = retry(|| c.nh(1).sync_get_session(ShardId(1), TIMEOUT));
    assert_ne!(
        before.client_id, after.client_id,
        "the same seed drew the same client id after a restart"
    );
}
