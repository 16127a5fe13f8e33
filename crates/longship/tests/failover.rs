//! Requests that went to a leader which is gone end at once when another
//! leader is elected, instead of waiting for their whole timeout.

mod common;

use std::time::Duration;

use common::*;
use longship::{Error, ShardId};

#[test]
fn a_read_forwarded_to_a_lost_leader_is_dropped_when_another_wins() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    c.propose(leader, 1, "set a 1");
    let follower = if leader == 1 { 2 } else { 1 };
    // The leader is cut off: what the follower forwards to it is lost.
    for h in 1..=3 {
        if h != leader {
            c.net.cut(&addr(leader), &addr(h));
            c.net.cut(&addr(h), &addr(leader));
        }
    }
    let read = c
        .nh(follower)
        .read_index(ShardId(1), Duration::from_secs(30))
        .unwrap();
    // The two others elect a new leader; the read ends then (Dropped: ask
    // again), not after its 30 s.
    match read.wait() {
        Err(Error::Dropped { .. }) => {}
        Ok(_) => {} // answered by the new leader: also fine, not stuck
        Err(e) => panic!("the forwarded read ended with {e}"),
    }
    // Asked again, it is served by the new leader.
    let v = retry(|| c.nh(follower).sync_read(ShardId(1), b"get a", TIMEOUT));
    assert_eq!(v, b"1");
}

/// An overloaded host still elects leaders. Three manual NodeHosts get 30
/// ticks (three election timeouts) between two runs of their workers, as a
/// host does whose step cycle takes longer than an election timeout
/// (thousands of shards electing at once). Taking every queued tick, each
/// candidate timed out again before it read the vote answers queued
/// behind the ticks, and no leader was ever elected (5,000 shards × 3
/// started at once: 18 leaders in 110 s). A replica that does not lead
/// takes at most a fifth of an election timeout per cycle, so the answers
/// are read in time.
#[test]
fn a_host_whose_cycles_outlast_an_election_timeout_still_elects() {
    let c = TestCluster::new(0);
    let hosts: Vec<longship::NodeHost> = (1..=3)
        .map(|i| {
            longship::NodeHost::builder(c.host_config(i))
                .transport(std::sync::Arc::new(c.net.transport(&addr(i))))
                .mem_log_db()
                .manual()
                .build()
                .unwrap()
        })
        .collect();
    for (i, nh) in (1..=3).zip(&hosts) {
        nh.start_replica(
            longship::Start::New(TestCluster::members(&[1, 2, 3])),
            |_, _| Box::new(Kv::default()),
            config(1, i),
        )
        .unwrap();
    }
    let leader = |nh: &longship::NodeHost| {
        nh.get_leader(ShardId(1))
            .ok()
            .flatten()
            .map(|l| (l.replica_id, l.term))
    };
    for _ in 0..100 {
        for nh in &hosts {
            for _ in 0..30 {
                nh.tick();
            }
        }
        for _ in 0..2 {
            for nh in &hosts {
                nh.run_once();
            }
        }
        if hosts.iter().all(|nh| leader(nh).is_some()) {
            let l = leader(&hosts[0]).unwrap();
            assert!(hosts.iter().all(|nh| leader(nh) == Some(l)));
            for nh in hosts {
                nh.close();
            }
            return;
        }
    }
    panic!("no leader after 100 rounds of 30 ticks");
}
