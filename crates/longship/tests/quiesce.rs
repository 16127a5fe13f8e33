//! Quiesce: a shard without traffic stops heartbeating after a number of
//! election timeouts, keeps its leader, and wakes on the first proposal or
//! read.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use longship::{Config, LeaderId, NodeHost, ShardId};

fn sent(c: &TestCluster) -> u64 {
    c.hosts
        .values()
        .map(|nh| nh.metrics().messages_sent.load(Ordering::Relaxed))
        .sum()
}

fn elections(c: &TestCluster) -> u64 {
    c.hosts
        .values()
        .map(|nh| nh.metrics().elections_won.load(Ordering::Relaxed))
        .sum()
}

fn propose(nh: &NodeHost, cmd: &str) -> u64 {
    let mut s = nh.get_noop_session(ShardId(1));
    retry(|| nh.sync_propose(&mut s, cmd.as_bytes().to_vec(), TIMEOUT)).value
}

fn cluster(quiesce: bool) -> (TestCluster, u64) {
    let c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], |i| Config {
        quiesce,
        ..config(1, i)
    });
    let leader = c.wait_leader(1);
    assert_eq!(propose(c.nh(leader), "set a 1"), 1);
    (c, leader)
}

/// How long the message counter must stay still to call the shard quiet:
/// many heartbeat intervals.
const QUIET: Duration = Duration::from_millis(20 * RTT_MS);

/// Waits until no message was sent for `QUIET`; returns the counter.
fn wait_quiet(c: &TestCluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = sent(c);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(RTT_MS));
        let now = sent(c);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return now;
        }
        assert!(Instant::now() < deadline, "the shard never went quiet");
    }
}

fn leaders(c: &TestCluster) -> Vec<LeaderId> {
    (1..=3)
        .map(|h| c.nh(h).get_leader_id(ShardId(1)).unwrap())
        .collect()
}

#[test]
fn idle_shard_quiesces_and_wakes_on_a_proposal() {
    let (q, leader) = cluster(true);
    let (busy, _) = cluster(false);
    let quiet_at = wait_quiet(&q);
    let roles = leaders(&q);
    assert!(roles.iter().all(|l| l.valid && l.leader_id.0 == leader));
    let elections_before = elections(&q);
    let busy_before = sent(&busy);

    // Idle for a good while: nothing is sent, nobody campaigns.
    std::thread::sleep(Duration::from_millis(60 * RTT_MS));
    assert_eq!(sent(&q), quiet_at, "a quiesced shard sent messages");
    assert_eq!(elections(&q), elections_before);
    assert_eq!(leaders(&q), roles, "leadership changed while quiesced");
    // The same shard without quiesce keeps heartbeating meanwhile.
    assert!(
        sent(&busy) > busy_before + 20,
        "a shard without quiesce went silent too"
    );

    // The first proposal wakes it, on a follower too, and completes.
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    assert_eq!(propose(q.nh(follower), "set b 2"), 2);
    assert!(sent(&q) > quiet_at, "waking sends messages");
    for h in 1..=3 {
        let v = retry(|| q.nh(h).sync_read(ShardId(1), b"get b", TIMEOUT));
        assert_eq!(v, b"2");
    }
    assert_eq!(leaders(&q), roles, "waking kept the leader");
    assert_eq!(elections(&q), elections_before);

    // And it goes quiet again once idle.
    let again = wait_quiet(&q);
    assert!(again > quiet_at);
}

#[test]
fn quiesced_shard_wakes_on_a_read_and_on_the_leader() {
    let (q, leader) = cluster(true);
    let quiet_at = wait_quiet(&q);
    // A linearizable read needs a heartbeat round: it wakes the shard.
    let v = retry(|| q.nh(leader).sync_read(ShardId(1), b"get a", TIMEOUT));
    assert_eq!(v, b"1");
    assert!(sent(&q) > quiet_at);
    let quiet_at = wait_quiet(&q);
    // A proposal on the leader, while everyone is quiesced.
    let start = Instant::now();
    assert_eq!(propose(q.nh(leader), "set c 3"), 2);
    assert!(start.elapsed() < TIMEOUT);
    assert!(sent(&q) > quiet_at);
    for h in 1..=3 {
        let v = retry(|| q.nh(h).sync_read(ShardId(1), b"get c", TIMEOUT));
        assert_eq!(v, b"3");
    }
}
