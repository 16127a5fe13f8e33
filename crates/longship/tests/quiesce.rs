//! Quiesce: a shard without traffic stops heartbeating after a number of
//! election timeouts, keeps its leader, and wakes on the first proposal or
//! read.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use longship::{Config, Leader, NodeHost, ShardId};

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

/// How many of host 1's ticks (RTTs) the message counter must stay still
/// to call the shard quiet: many heartbeat intervals.
const QUIET_TICKS: u64 = 20;

fn ticks(c: &TestCluster) -> u64 {
    c.nh(1).metrics().ticks.load(Ordering::Relaxed)
}

/// Waits until no message was sent for `QUIET_TICKS` ticks; returns the
/// counter.
fn wait_quiet(c: &TestCluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = sent(c);
    let mut since = ticks(c);
    loop {
        std::thread::sleep(Duration::from_millis(RTT_MS));
        let now = sent(c);
        if now != last {
            last = now;
            since = ticks(c);
        } else if ticks(c) >= since + QUIET_TICKS {
            return now;
        }
        assert!(Instant::now() < deadline, "the shard never went quiet");
    }
}

fn leaders(c: &TestCluster) -> Vec<Option<Leader>> {
    (1..=3)
        .map(|h| c.nh(h).get_leader(ShardId(1)).unwrap())
        .collect()
}

#[test]
fn idle_shard_quiesces_and_wakes_on_a_proposal() {
    let (q, leader) = cluster(true);
    let (busy, _) = cluster(false);
    let quiet_at = wait_quiet(&q);
    let roles = leaders(&q);
    assert!(
        roles
            .iter()
            .all(|l| l.is_some_and(|l| l.replica_id.0 == leader))
    );
    let elections_before = elections(&q);
    let busy_before = sent(&busy);

    // Idle for a good while: nothing is sent, nobody campaigns.
    wait_ticks(q.nh(leader), 60);
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

fn is_quiesced(c: &TestCluster, h: u64) -> bool {
    c.nh(h)
        .get_node_host_info()
        .shards
        .iter()
        .any(|s| s.shard_id == ShardId(1) && s.quiesced)
}

/// A Quiesce message from `from` to the replica on host `to`, in `term`.
fn send_quiesce(c: &TestCluster, from: u64, to: u64, term: longship::Term) {
    let m = longship_raft::Message {
        term,
        ..longship_raft::Message::new(
            longship_raft::MessageType::Quiesce,
            ShardId(1),
            longship::ReplicaId(from),
            longship::ReplicaId(to),
        )
    };
    c.send_raw(from, to, vec![m]);
}

// Any replica could quiesce a follower: one that is not the leader, or a
// deposed leader whose Quiesce arrives late. A quiesced follower counts no
// election ticks and heartbeats do not wake it, so it would not notice the
// real leader's failure. Only the leader it follows, in its term, may.
#[test]
fn only_the_followed_leader_quiesces_a_follower() {
    let c = TestCluster::new(3);
    // Long timeouts: the shard does not go quiet by itself meanwhile.
    c.start_shard_with(&[1, 2, 3], |i| Config {
        quiesce: true,
        election_rtt: 100,
        ..config(1, i)
    });
    let leader = c.wait_leader(1);
    assert_eq!(propose(c.nh(leader), "set a 1"), 1);
    let mut followers = (1..=3).filter(|&h| h != leader);
    let (f1, f2) = (followers.next().unwrap(), followers.next().unwrap());
    wait_until("followers know the leader", TIMEOUT, || {
        c.leader_seen_by(f1, 1) == leader && c.leader_seen_by(f2, 1) == leader
    });
    let term = c.nh(f1).get_leader(ShardId(1)).unwrap().unwrap().term;

    send_quiesce(&c, f2, f1, term);
    send_quiesce(&c, leader, f1, longship::Term(term.0 - 1));
    wait_ticks(c.nh(f1), 20);
    assert!(!is_quiesced(&c, f1), "quiesced by a non-leader");

    send_quiesce(&c, leader, f1, term);
    wait_until("the leader's Quiesce is taken", TIMEOUT, || {
        is_quiesced(&c, f1)
    });
}
