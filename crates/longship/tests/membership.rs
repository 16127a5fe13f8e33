//! Membership changes through the public API on several NodeHosts: adding
//! voters, non-voting replicas and witnesses, promotion, removal (also of
//! the leader), ordered config changes and the membership query.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use longship::{Config, Error, Index, ReplicaId, ShardId, Start};

const SHARD: u64 = 1;

fn sid() -> ShardId {
    ShardId(SHARD)
}

fn rid(i: u64) -> ReplicaId {
    ReplicaId(i)
}

/// Adds voter `id` through host `on` (retrying while the shard is busy).
fn add_replica(c: &TestCluster, on: u64, id: u64, ccid: Index) -> Result<(), Error> {
    retry_outcome(|| {
        c.nh(on)
            .request_add_replica(sid(), rid(id), addr(id), ccid, TIMEOUT)?
            .wait()
    })
}

fn add_non_voting(c: &TestCluster, on: u64, id: u64, ccid: Index) -> Result<(), Error> {
    retry_outcome(|| {
        c.nh(on)
            .request_add_non_voting(sid(), rid(id), addr(id), ccid, TIMEOUT)?
            .wait()
    })
}

fn add_witness(c: &TestCluster, on: u64, id: u64, ccid: Index) -> Result<(), Error> {
    retry_outcome(|| {
        c.nh(on)
            .request_add_witness(sid(), rid(id), addr(id), ccid, TIMEOUT)?
            .wait()
    })
}

fn delete_replica(c: &TestCluster, on: u64, id: u64, ccid: Index) -> Result<(), Error> {
    retry_outcome(|| {
        c.nh(on)
            .request_delete_replica(sid(), rid(id), ccid, TIMEOUT)?
            .wait()
    })
}

fn membership(c: &TestCluster, on: u64) -> longship::MembershipInfo {
    retry(|| c.nh(on).sync_get_shard_membership(sid(), TIMEOUT))
}

fn ids<V>(m: &BTreeMap<ReplicaId, V>) -> Vec<u64> {
    m.keys().map(|r| r.0).collect()
}

fn applied_on(c: &TestCluster, i: u64) -> u64 {
    c.nh(i)
        .get_node_host_info()
        .shards
        .iter()
        .find(|s| s.shard_id == sid())
        .map(|s| s.applied.0)
        .unwrap_or(0)
}

/// Some host other than `not` that leads the shard in its own view.
fn wait_new_leader(c: &TestCluster, hosts: &[u64], not: u64) -> u64 {
    let mut found = 0;
    wait_until("a new leader", Duration::from_secs(10), || {
        found = hosts
            .iter()
            .copied()
            .find(|&h| h != not && c.leader_seen_by(h, SHARD) == h)
            .unwrap_or(0);
        found != 0
    });
    found
}

#[test]
fn added_voter_catches_up_and_serves_reads() {
    let c = TestCluster::new(4);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    for i in 0..10 {
        c.propose(leader, SHARD, format!("set k{i} v{i}"));
    }
    add_replica(&c, leader, 4, Index(0)).unwrap();
    c.start_replica_on(4, Start::Join, config(SHARD, 4));

    // The joiner receives the whole history and answers linearizable reads.
    assert_eq!(c.read(4, SHARD, "get k9"), b"v9");
    assert_eq!(c.read(4, SHARD, "get k0"), b"v0");
    // It takes proposals too (forwarded to the leader).
    c.propose(4, SHARD, "set k10 v10");
    for h in 1..=4 {
        assert_eq!(c.read(h, SHARD, "get k10"), b"v10", "host {h}");
    }
    let m = membership(&c, 4);
    assert_eq!(ids(&m.voters), vec![1, 2, 3, 4]);
    assert_eq!(m.voters[&rid(4)], addr(4));
    assert!(m.non_votings.is_empty() && m.witnesses.is_empty() && m.removed.is_empty());
}

#[test]
fn removed_replica_stops_receiving_and_cannot_come_back() {
    let c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    let victim = if leader == 3 { 2 } else { 3 };
    let other = 6 - leader - victim;
    c.propose(leader, SHARD, "set a 1");
    assert_eq!(c.read(victim, SHARD, "get a"), b"1");

    delete_replica(&c, leader, victim, Index(0)).unwrap();
    let m = membership(&c, leader);
    assert!(!m.voters.contains_key(&rid(victim)));
    assert_eq!(m.removed, BTreeSet::from([rid(victim)]));

    // The two remaining voters keep committing; the removed one sees none
    // of it. (It may still learn that its own removal committed, and
    // apply that entry, after the leader applied it: the removal's index
    // bounds what it applies, not its applied index at this moment.)
    let frozen = m.config_change_id.0;
    for i in 2..=5 {
        c.propose(leader, SHARD, format!("set a {i}"));
    }
    assert_eq!(c.read(other, SHARD, "get a"), b"5");
    wait_ticks(c.nh(victim), 20);
    assert!(
        applied_on(&c, victim) <= frozen,
        "removed replica still applies"
    );
    assert_eq!(c.nh(victim).stale_read(sid(), b"get a").unwrap(), b"1");
    assert!(applied_on(&c, leader) > frozen);

    // A removed id is never reused, in any role.
    match add_replica(&c, leader, victim, Index(0)) {
        Err(Error::ReplicaRemoved(r)) => assert_eq!(r, rid(victim)),
        other => panic!("re-adding a removed replica: {other:?}"),
    }
    match add_non_voting(&c, leader, victim, Index(0)) {
        Err(Error::ReplicaRemoved(r)) => assert_eq!(r, rid(victim)),
        other => panic!("re-adding a removed replica as non-voting: {other:?}"),
    }
    assert_eq!(
        ids(&membership(&c, other).voters),
        vec![leader.min(other), leader.max(other)]
    );
}

#[test]
fn non_voting_replica_follows_and_is_promoted() {
    let c = TestCluster::new(4);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    c.propose(leader, SHARD, "set x 1");
    add_non_voting(&c, leader, 4, Index(0)).unwrap();
    let cfg = Config {
        is_non_voting: true,
        ..config(SHARD, 4)
    };
    c.start_replica_on(4, Start::Join, cfg);
    assert_eq!(c.read(4, SHARD, "get x"), b"1");
    let m = membership(&c, leader);
    assert_eq!(ids(&m.voters), vec![1, 2, 3]);
    assert_eq!(ids(&m.non_votings), vec![4]);

    // A non-voting replica cannot lead: a transfer to it changes nothing.
    c.nh(leader).request_leader_transfer(sid(), rid(4)).unwrap();
    c.propose(leader, SHARD, "set x 2");
    assert_eq!(c.leader_seen_by(leader, SHARD), leader);

    let ccid = m.config_change_id;
    retry_outcome(|| {
        c.nh(leader)
            .request_promote_non_voting(sid(), rid(4), ccid, TIMEOUT)?
            .wait()
    })
    .unwrap();
    let m = membership(&c, 4);
    assert_eq!(ids(&m.voters), vec![1, 2, 3, 4]);
    assert_eq!(m.voters[&rid(4)], addr(4), "promotion keeps the address");
    assert!(m.non_votings.is_empty());
    // Promoted, it can lead: leadership moves to it on request.
    wait_until(
        "replica 4 leads after promotion",
        Duration::from_secs(10),
        || {
            if c.leader_seen_by(4, SHARD) == 4 {
                return true;
            }
            let l = c.leader_seen_by(leader, SHARD);
            if l != 0 {
                let _ = c.nh(l).request_leader_transfer(sid(), rid(4));
            }
            std::thread::sleep(Duration::from_millis(10 * RTT_MS));
            false
        },
    );
    c.propose(4, SHARD, "set x 3");
    assert_eq!(c.read(1, SHARD, "get x"), b"3");
}

#[test]
fn witness_keeps_the_shard_available_with_one_voter_down() {
    let mut c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2]);
    let leader = c.wait_leader(SHARD);
    c.propose(leader, SHARD, "set w 1");
    add_witness(&c, leader, 3, Index(0)).unwrap();
    let cfg = Config {
        is_witness: true,
        // Its own snapshots (metadata only) compact its log.
        snapshot_entries: 4,
        compaction_overhead: 0,
        ..config(SHARD, 3)
    };
    c.start_replica_on(3, Start::Join, cfg);
    let m = membership(&c, leader);
    assert_eq!(ids(&m.voters), vec![1, 2]);
    assert_eq!(ids(&m.witnesses), vec![3]);
    assert_eq!(m.witnesses[&rid(3)], addr(3));

    // The witness follows the log (metadata only).
    c.propose(leader, SHARD, "set w 2");
    let target = applied_on(&c, leader);
    wait_until("witness catches up", Duration::from_secs(10), || {
        applied_on(&c, 3) >= target
    });

    for i in 0..8 {
        c.propose(leader, SHARD, format!("count {i}"));
    }
    let target = applied_on(&c, leader);
    wait_until(
        "the witness snapshots and compacts",
        Duration::from_secs(10),
        || {
            let info = c.nh(3).get_node_host_info();
            let snap = info.shards[0].snapshot_index.0;
            let first = info.log_info[0].first_index.0;
            snap + 4 >= target && first == snap + 1
        },
    );

    // A witness has no state machine data: what needs it is refused there
    // (a read used to be answered from its never-updated state machine).
    let w = c.nh(3);
    let noop = w.get_noop_session(sid());
    assert!(matches!(
        w.propose(&noop, b"set w 9".to_vec(), TIMEOUT),
        Err(Error::Witness(_))
    ));
    assert!(matches!(
        w.sync_read(sid(), b"get w", TIMEOUT),
        Err(Error::Witness(_))
    ));
    assert!(matches!(
        w.stale_read(sid(), b"get w"),
        Err(Error::Witness(_))
    ));
    assert!(matches!(
        w.sync_get_session(sid(), TIMEOUT),
        Err(Error::Witness(_))
    ));
    assert_eq!(c.read(leader, SHARD, "get w"), b"2", "nothing was proposed");
    // Membership is metadata: a witness knows it.
    assert_eq!(membership(&c, 3), membership(&c, leader));

    // Of two voters one goes down, leader included: the survivor is elected
    // with the witness's vote and keeps committing with its acknowledgements.
    let survivor = 3 - leader;
    c.stop_host(leader);
    let v = c.propose(survivor, SHARD, "set w 3");
    assert!(v >= 3, "count after three proposals: {v}");
    assert_eq!(c.read(survivor, SHARD, "get w"), b"3");
    assert_eq!(c.leader_seen_by(survivor, SHARD), survivor);
    assert_ne!(c.leader_seen_by(3, SHARD), 3, "a witness never leads");
}

#[test]
fn ordered_config_change_rejects_a_stale_base() {
    let c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], |i| Config {
        ordered_config_change: true,
        ..config(SHARD, i)
    });
    let leader = c.wait_leader(SHARD);
    let m0 = membership(&c, leader);
    add_non_voting(&c, leader, 4, m0.config_change_id).unwrap();
    let m1 = membership(&c, leader);
    assert!(m1.config_change_id > m0.config_change_id);
    assert_eq!(ids(&m1.non_votings), vec![4]);

    // Based on the membership before the last change: refused, nothing changes.
    let stale = add_non_voting(&c, leader, 5, m0.config_change_id);
    assert!(
        matches!(stale, Err(Error::StaleConfigChange { .. })),
        "{stale:?}"
    );
    let m = membership(&c, leader);
    assert_eq!(m, m1);

    // Based on the current one: accepted.
    add_non_voting(&c, leader, 5, m1.config_change_id).unwrap();
    let m2 = membership(&c, leader);
    assert_eq!(ids(&m2.non_votings), vec![4, 5]);
    assert!(m2.config_change_id > m1.config_change_id);
    let stale = delete_replica(&c, leader, 4, m1.config_change_id);
    assert!(
        matches!(stale, Err(Error::StaleConfigChange { .. })),
        "{stale:?}"
    );
    delete_replica(&c, leader, 4, m2.config_change_id).unwrap();
}

#[test]
fn membership_query_reports_every_role_and_the_change_id() {
    let c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    let m0 = membership(&c, leader);
    assert_eq!(ids(&m0.voters), vec![1, 2, 3]);
    for i in 1..=3 {
        assert_eq!(m0.voters[&rid(i)], addr(i));
    }
    assert!(m0.non_votings.is_empty() && m0.witnesses.is_empty() && m0.removed.is_empty());

    // Replicas 4 and 5 exist only in the membership (not started): neither a
    // non-voting replica nor one witness among three voters blocks commits.
    add_non_voting(&c, leader, 4, Index(0)).unwrap();
    let m1 = membership(&c, leader);
    add_witness(&c, leader, 5, Index(0)).unwrap();
    let m2 = membership(&c, leader);
    let victim = if leader == 3 { 2 } else { 3 };
    delete_replica(&c, leader, victim, Index(0)).unwrap();
    let m3 = membership(&c, leader);
    assert!(m0.config_change_id < m1.config_change_id);
    assert!(m1.config_change_id < m2.config_change_id);
    assert!(m2.config_change_id < m3.config_change_id);

    let remaining: Vec<u64> = (1..=3).filter(|&i| i != victim).collect();
    // The query is linearizable on every member, followers included.
    for &h in &remaining {
        let m = membership(&c, h);
        assert_eq!(m, m3, "host {h}");
        assert_eq!(ids(&m.voters), remaining);
        assert_eq!(m.non_votings, BTreeMap::from([(rid(4), addr(4))]));
        assert_eq!(m.witnesses, BTreeMap::from([(rid(5), addr(5))]));
        assert_eq!(m.removed, BTreeSet::from([rid(victim)]));
    }
    // The change id is the index of the change's entry: below the applied index.
    assert!(m3.config_change_id.0 <= applied_on(&c, leader));
}

#[test]
fn removing_the_leader_elects_another() {
    let c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let old = c.wait_leader(SHARD);
    c.propose(old, SHARD, "set r 1");
    delete_replica(&c, old, old, Index(0)).unwrap();

    let new = wait_new_leader(&c, &[1, 2, 3], old);
    assert_ne!(new, old);
    c.propose(new, SHARD, "set r 2");
    let other = 6 - old - new;
    assert_eq!(c.read(other, SHARD, "get r"), b"2");
    let m = membership(&c, new);
    let mut expect = vec![new, other];
    expect.sort();
    assert_eq!(ids(&m.voters), expect);
    assert!(m.removed.contains(&rid(old)));
    // The removed replica never leads again.
    wait_ticks(c.nh(old), 30);
    assert_ne!(c.leader_seen_by(old, SHARD), old);
    assert_eq!(c.leader_seen_by(other, SHARD), new);
}

/// A membership change takes effect when applied, so a replica's commit
/// index is made durable past it before it is applied: restarted with an
/// older commit index, the replica would see the change as uncommitted and
/// could campaign in the membership before it (two leaders in one term, in
/// the master's simulator). Every replica's stored commit index covers the
/// change once it applied it, though nothing was written after it.
#[test]
fn a_replica_applies_a_membership_change_only_once_its_commit_is_durable() {
    let mut c = TestCluster::new(3);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    c.propose(leader, SHARD, "set a 1");
    add_non_voting(&c, leader, 4, Index(0)).unwrap();
    let cc = membership(&c, leader).config_change_id;
    for h in 1..=3 {
        wait_until("the change applied", TIMEOUT, || {
            c.nh(h)
                .get_node_host_info()
                .shards
                .iter()
                .any(|s| s.shard_id == sid() && s.config_change_id >= cc)
        });
    }
    for h in 1..=3 {
        let cfg = c.host_config(h);
        c.stop_host(h);
        let seen = longship::tools::inspect(&cfg).unwrap();
        let r = seen
            .replicas
            .iter()
            .find(|r| r.shard_id == sid())
            .expect("the replica is stored");
        assert!(
            r.hard_state.commit >= cc,
            "host {h}: stored commit {} below the applied change at {cc}",
            r.hard_state.commit
        );
    }
}

/// A joining replica is recorded durably when it starts: its host's
/// restart before anything reached it starts it again (with `Restart`; a
/// second `Join` is refused), and it then catches up like any joiner.
/// Without the record, the host forgot such a replica on restart although
/// the shard may already count it as a voter (master seed 11690: a shard
/// lost its quorum for ever).
#[test]
fn a_joining_replica_is_recorded_before_it_receives_anything() {
    let mut c = TestCluster::new(2);
    c.start_shard(SHARD, &[1]);
    c.wait_leader(SHARD);
    c.propose(1, SHARD, "set k v");
    // Not a member yet: nothing reaches it.
    c.start_replica_on(2, Start::Join, config(SHARD, 2));
    assert!(c.nh(2).has_node_info(sid(), rid(2)));
    c.stop_host(2);
    c.start_host(2);
    assert!(c.nh(2).has_node_info(sid(), rid(2)));
    let err = c
        .nh(2)
        .start_replica(
            Start::Join,
            |_, _| Box::new(Kv::default()),
            config(SHARD, 2),
        )
        .unwrap_err();
    assert!(matches!(err, Error::ReplicaHasData { .. }), "{err}");
    c.start_replica_on(2, Start::Restart, config(SHARD, 2));
    add_replica(&c, 1, 2, Index(0)).unwrap();
    assert_eq!(c.read(2, SHARD, "get k"), b"v");
}
