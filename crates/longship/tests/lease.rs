//! Leader leases for reads (`Config::lease_read`): a leader that heard from
//! a quorum recently answers a read without a heartbeat round, so a read
//! succeeds while its followers are (briefly) unreachable; without the
//! lease the same read needs their answers.

mod common;

use std::time::Duration;

use common::*;
use longship::{Config, ShardId};

fn cut_off(c: &TestCluster, leader: u64) {
    for h in 1..=3 {
        if h != leader {
            c.net.cut(&addr(leader), &addr(h));
            c.net.cut(&addr(h), &addr(leader));
        }
    }
}

fn read_with_followers_cut_off(lease_read: bool) -> Result<Vec<u8>, longship::Error> {
    let c = TestCluster::new(3);
    // A long election timeout (200 ticks of 5 ms): the lease outlives the test.
    c.start_shard_with(&[1, 2, 3], |i| Config {
        election_rtt: 200,
        heartbeat_rtt: 2,
        lease_read,
        ..config(1, i)
    });
    let leader = c.wait_leader(1);
    c.propose(leader, 1, "set a 1");
    // A few heartbeat rounds answered: the leader holds a lease (counted
    // from the send time of answered heartbeats).
    std::thread::sleep(Duration::from_millis(100));
    cut_off(&c, leader);
    c.nh(leader)
        .sync_read(ShardId(1), b"get a", Duration::from_millis(300))
}

#[test]
fn a_leader_with_a_lease_reads_without_a_heartbeat_round() {
    assert_eq!(read_with_followers_cut_off(true).unwrap(), b"1");
}

#[test]
fn without_a_lease_a_read_needs_a_quorum_s_answers() {
    assert!(read_with_followers_cut_off(false).is_err());
}

#[test]
fn lease_read_needs_check_quorum() {
    let c = TestCluster::new(1);
    let err = c
        .nh(1)
        .start_replica(
            longship::Start::New(TestCluster::members(&[1])),
            |_, _| Box::new(Kv::default()),
            Config {
                lease_read: true,
                check_quorum: false,
                ..config(1, 1)
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("lease_read"), "{err}");
}
