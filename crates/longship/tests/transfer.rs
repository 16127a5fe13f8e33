//! Leadership transfer (thesis §3.10) through the public API on three
//! NodeHosts.

mod common;

use std::time::Duration;

use common::*;
use longship::{Config, Error, ReplicaId, ShardId};

const SHARD: u64 = 1;

fn sid() -> ShardId {
    ShardId(SHARD)
}

/// Whether every host names `leader` as the shard's leader.
fn all_agree_on(c: &TestCluster, leader: u64) -> bool {
    (1..=3).all(|h| c.leader_seen_by(h, SHARD) == leader)
}

fn term_seen_by(c: &TestCluster, h: u64) -> u64 {
    c.nh(h).get_leader(sid()).unwrap().unwrap().term.0
}

/// Asks `from` to move leadership to `target` until every host agrees
/// (a transfer may be abandoned if the target lags; asking again is safe).
fn transfer(c: &TestCluster, from: u64, target: u64) {
    wait_until(
        &format!("leadership moves to {target}"),
        Duration::from_secs(10),
        || {
            if all_agree_on(c, target) {
                return true;
            }
            c.nh(from)
                .request_leader_transfer(sid(), ReplicaId(target))
                .unwrap();
            std::thread::sleep(Duration::from_millis(10 * RTT_MS));
            all_agree_on(c, target)
        },
    );
}

#[test]
fn leader_transfer_moves_leadership() {
    let c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let old = c.wait_leader(SHARD);
    c.propose(old, SHARD, "set t 1");
    let target = if old == 3 { 1 } else { old + 1 };
    let term = term_seen_by(&c, old);

    transfer(&c, old, target);
    // The target won an election in a later term, seen by every host.
    let new_term = term_seen_by(&c, target);
    assert!(
        new_term > term,
        "term {new_term} after transfer from term {term}"
    );
    for h in 1..=3 {
        let l = c.nh(h).get_leader(sid()).unwrap().expect("a known leader");
        assert_eq!(
            (l.replica_id, l.term.0),
            (ReplicaId(target), new_term),
            "host {h}"
        );
    }
    // The new leader commits; nothing committed before is lost.
    c.propose(target, SHARD, "set t 2");
    c.propose(old, SHARD, "set u 1");
    for h in 1..=3 {
        assert_eq!(c.read(h, SHARD, "get t"), b"2");
        assert_eq!(c.read(h, SHARD, "count"), b"3");
    }

    // A follower's request is forwarded to the leader: move it back.
    let third = 6 - old - target;
    transfer(&c, third, old);
    assert_eq!(c.wait_leader(SHARD), old);
}

#[test]
fn transfer_to_a_non_member_changes_nothing() {
    let c = TestCluster::new(3);
    // Longer election timeouts: no spurious election on a loaded machine.
    c.start_shard_with(&[1, 2, 3], |i| Config {
        election_rtt: 20,
        ..config(SHARD, i)
    });
    let leader = c.wait_leader(SHARD);
    c.propose(leader, SHARD, "set t 1");
    let term = term_seen_by(&c, leader);

    c.nh(leader)
        .request_leader_transfer(sid(), ReplicaId(99))
        .unwrap();
    // Proposals are not held back by a transfer that never started.
    let mut s = c.nh(leader).get_noop_session(sid());
    c.nh(leader)
        .sync_propose(&mut s, b"set t 2".to_vec(), TIMEOUT)
        .unwrap();
    // Several election timeouts later the same leader leads in the same term.
    wait_ticks(c.nh(leader), 2 * 20);
    wait_until("hosts agree on the leader", Duration::from_secs(5), || {
        all_agree_on(&c, leader)
    });
    for h in 1..=3 {
        assert_eq!(term_seen_by(&c, h), term, "host {h}");
    }
    assert_eq!(c.read(1, SHARD, "get t"), b"2");

    // Replica id 0 names nobody.
    assert!(matches!(
        c.nh(leader).request_leader_transfer(sid(), ReplicaId(0)),
        Err(Error::InvalidConfig { .. })
    ));
    // Nor does a shard this host does not run.
    assert!(matches!(
        c.nh(leader)
            .request_leader_transfer(ShardId(77), ReplicaId(1)),
        Err(Error::ShardNotFound(_))
    ));
}
