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
