//! A proposal made on a follower is forwarded to the leader; when it dies
//! there, the follower's caller hears of it at once (`ProposeDropped`), not
//! at its timeout.

mod common;

use std::time::Duration;

use common::*;
use longship::{Config, Error, ReplicaId, ShardId};

const SHARD: u64 = 1;

/// The leader refuses proposals while a leadership transfer is in
/// progress (thesis §3.10). One forwarded meanwhile fails with `Dropped`
/// well before its 20 s timeout: without the answer it would end in
/// `Timeout`.
#[test]
fn proposal_refused_by_the_leader_fails_fast_on_the_follower() {
    let mut c = TestCluster::new(3);
    // Long election timeouts (2 s): the transfer to a stopped replica stays
    // in progress that long.
    c.start_shard_with(&[1, 2, 3], |i| Config {
        election_rtt: 400,
        ..config(SHARD, i)
    });
    let leader = c.wait_leader(SHARD);
    c.propose(leader, SHARD, "set a 1");
    let mut others = (1..=3).filter(|&h| h != leader);
    let (target, follower) = (others.next().unwrap(), others.next().unwrap());
    wait_until(
        "the follower knows the leader",
        Duration::from_secs(10),
        || c.leader_seen_by(follower, SHARD) == leader,
    );
    c.stop_host(target);
    // The transfer to the stopped replica holds proposals back until the
    // leader gives it up (an election timeout). The request is taken
    // asynchronously, so a proposal may reach the leader before it, or
    // after the transfer was given up, and is then simply committed: ask
    // again (a few times; one refusal is what is shown).
    let mut s = c.nh(follower).get_noop_session(ShardId(SHARD));
    let mut outcomes = Vec::new();
    for attempt in 0..10 {
        c.nh(leader)
            .request_leader_transfer(ShardId(SHARD), ReplicaId(target))
            .unwrap();
        let r = c.nh(follower).sync_propose(
            &mut s,
            format!("set a {attempt}").into_bytes(),
            Duration::from_secs(20),
        );
        match r {
            Err(Error::Dropped { leader: hint }) => {
                // The refusing leader still leads while it transfers: the
                // error names it, for the caller's retry.
                assert_eq!(hint, Some(ReplicaId(leader)));
                outcomes.push("dropped");
                break;
            }
            Ok(_) => outcomes.push("committed"),
            other => panic!("expected Dropped (or a commit), got {other:?}"),
        }
    }
    assert_eq!(outcomes.last(), Some(&"dropped"), "{outcomes:?}");
    assert!(
        c.nh(follower)
            .metrics()
            .proposals_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}
