//! Asynchronous log writes (`NodeHostConfig::async_log_writes`) through the
//! public API: many clients on several shards at once, membership changes
//! with writes in flight, and a restart that must find every acknowledged
//! write. The whole suite also runs in this mode with
//! `LONGSHIP_TEST_ASYNC_LOG_WRITES=1`.

mod common;

use common::*;
use longship::{Index, ReplicaId, ShardId, Start};

const SHARDS: [u64; 4] = [1, 2, 3, 4];
const CLIENTS: usize = 16;
const PER_CLIENT: usize = 40;

fn shard_of(client: usize) -> u64 {
    SHARDS[client % SHARDS.len()]
}

/// Every client's last write, read on every host.
fn check_all_writes(c: &TestCluster) {
    for client in 0..CLIENTS {
        let q = format!("get c{client}-{}", PER_CLIENT - 1);
        for h in 1..=3 {
            let v = c.read(h, shard_of(client), &q);
            assert_eq!(
                v,
                (PER_CLIENT - 1).to_string().into_bytes(),
                "client {client} host {h}"
            );
        }
    }
}

#[test]
fn concurrent_clients_on_many_shards_are_applied_everywhere_and_survive_a_restart() {
    let mut c = TestCluster::new_async(3);
    for s in SHARDS {
        c.start_shard(s, &[1, 2, 3]);
    }
    for s in SHARDS {
        c.wait_leader(s);
    }
    std::thread::scope(|scope| {
        for client in 0..CLIENTS {
            let c = &c;
            scope.spawn(move || {
                // Through every host, leader or not (a follower forwards).
                let host = 1 + (client as u64 % 3);
                for i in 0..PER_CLIENT {
                    c.propose(host, shard_of(client), format!("set c{client}-{i} {i}"));
                }
            });
        }
    });
    check_all_writes(&c);
    for h in 1..=3 {
        c.stop_host(h);
    }
    for h in 1..=3 {
        c.start_host(h);
        for s in SHARDS {
            c.start_replica_on(h, Start::Restart, config(s, h));
        }
    }
    check_all_writes(&c);
}

#[test]
fn membership_changes_take_effect_with_writes_in_flight() {
    let c = TestCluster::new_async(4);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    for i in 0..20 {
        c.propose(leader, 1, format!("set a{i} {i}"));
    }
    // Replica 4 joins as non-voting, catches up and is promoted; then a
    // voter other than the leader leaves.
    retry_outcome(|| {
        c.nh(leader)
            .request_add_non_voting(ShardId(1), ReplicaId(4), addr(4), Index(0), TIMEOUT)?
            .wait()
    })
    .unwrap();
    c.start_replica_on(4, Start::Join, config(1, 4));
    assert_eq!(c.read(4, 1, "get a19"), b"19");
    retry_outcome(|| {
        c.nh(leader)
            .request_add_replica(ShardId(1), ReplicaId(4), addr(4), Index(0), TIMEOUT)?
            .wait()
    })
    .unwrap();
    let leader = c.wait_leader(1);
    let leaving = if leader == 3 { 2 } else { 3 };
    retry_outcome(|| {
        c.nh(leader)
            .request_delete_replica(ShardId(1), ReplicaId(leaving), Index(0), TIMEOUT)?
            .wait()
    })
    .unwrap();
    let leader = c.wait_leader(1);
    c.propose(leader, 1, "set after change");
    for h in (1..=4).filter(|&h| h != leaving) {
        assert_eq!(c.read(h, 1, "get after"), b"change", "host {h}");
    }
    let m = retry(|| c.nh(leader).sync_get_shard_membership(ShardId(1), TIMEOUT));
    let mut voters: Vec<u64> = m.voters.keys().map(|r| r.0).collect();
    voters.sort_unstable();
    let mut want: Vec<u64> = (1..=4).filter(|&h| h != leaving).collect();
    want.sort_unstable();
    assert_eq!(voters, want);
}
