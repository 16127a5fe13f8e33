//! Event listeners and metrics through the public API: leadership,
//! membership, snapshot (created, received, recovered), compaction and
//! replica lifecycle events; counters as Prometheus text.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use longship::events::{LeaderEvent, SnapshotEvent};
use longship::{Config, EventListener, Index, NodeHost, ReplicaId, ShardId, SnapshotOption};
use longship_transport::MemNetwork;

/// Polls `f` until it holds; panics with `what` after `within`.
fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Leader(LeaderEvent),
    Membership(ShardId, ReplicaId, Index),
    SnapshotCreated(SnapshotEvent),
    SnapshotRecovered(SnapshotEvent),
    SnapshotReceived(SnapshotEvent),
    LogCompacted(SnapshotEvent),
    Ready(ShardId, ReplicaId),
    Unloaded(ShardId, ReplicaId),
}

/// Records every event.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    fn any(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(f)
    }

    fn push(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

impl EventListener for Recorder {
    fn leader_updated(&self, info: LeaderEvent) {
        self.push(Event::Leader(info));
    }
    fn membership_changed(&self, shard: ShardId, replica: ReplicaId, index: Index) {
        self.push(Event::Membership(shard, replica, index));
    }
    fn snapshot_created(&self, info: SnapshotEvent) {
        self.push(Event::SnapshotCreated(info));
    }
    fn snapshot_recovered(&self, info: SnapshotEvent) {
        self.push(Event::SnapshotRecovered(info));
    }
    fn snapshot_received(&self, info: SnapshotEvent) {
        self.push(Event::SnapshotReceived(info));
    }
    fn log_compacted(&self, info: SnapshotEvent) {
        self.push(Event::LogCompacted(info));
    }
    fn replica_ready(&self, shard: ShardId, replica: ReplicaId) {
        self.push(Event::Ready(shard, replica));
    }
    fn replica_unloaded(&self, shard: ShardId, replica: ReplicaId) {
        self.push(Event::Unloaded(shard, replica));
    }
}

/// NodeHosts with a recorder each.
struct Hosts {
    net: MemNetwork,
    dir: tempfile::TempDir,
    hosts: BTreeMap<u64, NodeHost>,
    recorders: BTreeMap<u64, Arc<Recorder>>,
}

impl Hosts {
    fn new(n: u64) -> Hosts {
        let mut h = Hosts {
            net: MemNetwork::new(),
            dir: tempfile::tempdir().unwrap(),
            hosts: BTreeMap::new(),
            recorders: BTreeMap::new(),
        };
        for i in 1..=n {
            h.start_host(i);
        }
        h
    }

    fn start_host(&mut self, i: u64) {
        let rec = Arc::new(Recorder::default());
        let cfg = longship::NodeHostConfig {
            node_host_dir: self.dir.path().join(format!("nh{i}")),
            rtt_ms: RTT_MS,
            raft_address: addr(i),
            seed: Some(i),
            ..Default::default()
        };
        let nh = NodeHost::builder(cfg)
            .transport(Arc::new(self.net.transport(&addr(i))))
            .event_listener(rec.clone())
            .build()
            .unwrap();
        self.hosts.insert(i, nh);
        self.recorders.insert(i, rec);
    }

    fn stop_host(&mut self, i: u64) {
        self.hosts.remove(&i).unwrap().close();
    }

    fn nh(&self, i: u64) -> &NodeHost {
        &self.hosts[&i]
    }

    fn rec(&self, i: u64) -> &Recorder {
        &self.recorders[&i]
    }

    fn start(&self, i: u64, members: &[u64], cfg: Config) {
        self.nh(i)
            .start_replica(
                new_or_restart(self.nh(i), cfg.shard_id.0, i, members),
                |_, _| Box::new(Kv::default()),
                cfg,
            )
            .unwrap();
    }

    /// The host whose replica of `shard` leads now (0 if none).
    fn leader_now(&self, shard: u64) -> u64 {
        self.hosts
            .iter()
            .find(|(i, nh)| {
                nh.get_leader(ShardId(shard))
                    .is_ok_and(|l| l.is_some_and(|l| l.replica_id.0 == **i))
            })
            .map_or(0, |(i, _)| *i)
    }

    fn wait_leader(&self, shard: u64) -> u64 {
        let mut found = 0;
        wait_for("a leader", Duration::from_secs(10), || {
            found = self.leader_now(shard);
            found != 0
        });
        found
    }
}

fn propose(nh: &NodeHost, shard: u64, cmd: &str) -> u64 {
    let mut s = nh.get_noop_session(ShardId(shard));
    retry(|| nh.sync_propose(&mut s, cmd.as_bytes().to_vec(), TIMEOUT)).value
}

#[test]
fn listener_sees_leadership_membership_and_lifecycle() {
    let mut h = Hosts::new(3);
    // Long election timeouts: on a loaded machine a 5 ms RTT would let
    // spurious elections change the leader between the steps below.
    let steady = |i| Config {
        election_rtt: 60,
        ..config(1, i)
    };
    for i in 1..=3 {
        h.start(i, &[1, 2, 3], steady(i));
        assert!(
            h.rec(i)
                .events()
                .contains(&Event::Ready(ShardId(1), ReplicaId(i)))
        );
    }
    let leader = h.wait_leader(1);
    let term = h.nh(leader).get_leader(ShardId(1)).unwrap().unwrap().term;
    // Every replica reports the leader it learnt, in the leader's term.
    for i in 1..=3 {
        wait_for("leader_updated", TIMEOUT, || {
            h.rec(i).any(|e| {
                matches!(e, Event::Leader(l) if l.shard_id == ShardId(1)
                    && l.replica_id == ReplicaId(i)
                    && l.leader_id == ReplicaId(leader)
                    && l.term == term)
            })
        });
    }

    // A membership change is reported by every replica with its index.
    propose(h.nh(leader), 1, "x");
    retry(|| {
        h.nh(leader)
            .request_add_non_voting(ShardId(1), ReplicaId(4), addr(4), Index(0), TIMEOUT)?
            .wait()
    });
    let m = retry(|| h.nh(leader).sync_get_shard_membership(ShardId(1), TIMEOUT));
    assert!(m.non_votings.contains_key(&ReplicaId(4)));
    for i in 1..=3 {
        let want = Event::Membership(ShardId(1), ReplicaId(i), m.config_change_id);
        wait_for("membership_changed", TIMEOUT, || {
            h.rec(i).events().contains(&want)
        });
    }

    // A leadership transfer is reported with the new leader and a higher term.
    let target = (1..=3).find(|&i| i != leader).unwrap();
    // A transfer may be aborted (the target did not catch up within an
    // election timeout): ask again until it happens.
    let mut moved = false;
    for _ in 0..10 {
        let _ = h
            .nh(leader)
            .request_leader_transfer(ShardId(1), ReplicaId(target));
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !moved {
            moved = h.leader_now(1) == target;
            std::thread::sleep(Duration::from_millis(5));
        }
        if moved {
            break;
        }
    }
    assert!(moved, "leadership never moved to {target}");
    for i in 1..=3 {
        wait_for("leader_updated after transfer", TIMEOUT, || {
            h.rec(i).any(|e| {
                matches!(e, Event::Leader(l) if l.replica_id == ReplicaId(i)
                    && l.leader_id == ReplicaId(target)
                    && l.term > term)
            })
        });
    }

    // Stopping a replica and closing a host unload replicas, once each.
    h.nh(target).stop_shard(ShardId(1)).unwrap();
    assert_eq!(unloaded(&h, target), 1);
    let other = (1..=3).find(|&i| i != target).unwrap();
    assert_eq!(unloaded(&h, other), 0);
    h.stop_host(other);
    assert_eq!(unloaded(&h, other), 1);
    h.stop_host(target);
    assert_eq!(
        unloaded(&h, target),
        1,
        "close does not unload a stopped replica again"
    );
}

#[test]
fn listener_sees_automatic_snapshots_and_compaction() {
    let h = Hosts::new(3);
    let cfg = |i| Config {
        snapshot_entries: 5,
        compaction_overhead: 2,
        ..config(1, i)
    };
    for i in 1..=3 {
        h.start(i, &[1, 2, 3], cfg(i));
    }
    let leader = h.wait_leader(1);
    for i in 0..12 {
        propose(h.nh(leader), 1, &format!("set k{i} {i}"));
    }
    // Every replica snapshots every 5 applied entries, each snapshot
    // followed by a compaction that keeps 2 entries.
    for r in 1..=3 {
        wait_for("automatic snapshots", TIMEOUT, || {
            h.rec(r)
                .events()
                .iter()
                .filter(|e| matches!(e, Event::SnapshotCreated(_)))
                .count()
                >= 2
        });
        let events = h.rec(r).events();
        let mut last = Index(0);
        for e in &events {
            if let Event::SnapshotCreated(s) = e {
                assert_eq!((s.shard_id, s.replica_id), (ShardId(1), ReplicaId(r)));
                assert!(
                    s.index.0 >= last.0 + 5,
                    "snapshots every 5 entries: {events:?}"
                );
                last = s.index;
                let compacted = Event::LogCompacted(SnapshotEvent {
                    index: Index(s.index.0 - 2),
                    ..*s
                });
                wait_for("log_compacted", TIMEOUT, || {
                    h.rec(r).events().contains(&compacted)
                });
            }
        }
    }
}

#[test]
fn listener_sees_requested_snapshot_and_catch_up() {
    let mut h = Hosts::new(3);
    for i in 1..=3 {
        h.start(i, &[1, 2, 3], config(1, i));
    }
    let leader = h.wait_leader(1);
    let lagging = (1..=3).find(|&i| i != leader).unwrap();
    h.stop_host(lagging);
    for i in 0..12 {
        propose(h.nh(leader), 1, &format!("set k{i} {i}"));
    }
    // A requested snapshot reports the index it returns, and the
    // compaction (no entries kept) up to it; on both running replicas, so
    // that whichever leads must stream a snapshot.
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..Default::default()
    };
    for r in (1..=3).filter(|&r| r != lagging) {
        let index = retry(|| {
            h.nh(r)
                .request_snapshot(ShardId(1), opt.clone(), TIMEOUT)?
                .wait()
        })
        .index;
        let created = SnapshotEvent {
            shard_id: ShardId(1),
            replica_id: ReplicaId(r),
            index,
        };
        let events = h.rec(r).events();
        assert!(
            events.contains(&Event::SnapshotCreated(created)),
            "{events:?}"
        );
        assert!(events.contains(&Event::LogCompacted(created)), "{events:?}");
    }

    // The lagging replica catches up from a streamed snapshot.
    h.start_host(lagging);
    h.start(lagging, &[], config(1, lagging));
    wait_for("snapshot received and recovered", TIMEOUT, || {
        let ev = h.rec(lagging).events();
        ev.iter()
            .any(|e| matches!(e, Event::SnapshotReceived(s) if s.index.0 > 0))
            && ev
                .iter()
                .any(|e| matches!(e, Event::SnapshotRecovered(s) if s.index.0 > 0))
    });
    let v = retry(|| h.nh(lagging).sync_read(ShardId(1), b"get k11", TIMEOUT));
    assert_eq!(v, b"11");
    let sent = h
        .hosts
        .values()
        .map(|nh| nh.metrics().snapshot_bytes_sent.load(Ordering::Relaxed))
        .sum::<u64>();
    assert!(sent > 0);
    assert!(
        h.nh(lagging)
            .metrics()
            .snapshots_received
            .load(Ordering::Relaxed)
            >= 1
    );
}

fn unloaded(h: &Hosts, i: u64) -> usize {
    h.rec(i)
        .events()
        .iter()
        .filter(|e| **e == Event::Unloaded(ShardId(1), ReplicaId(i)))
        .count()
}

/// Parses Prometheus text into name -> value, checking every sample has
/// its TYPE line. Of a histogram only `<name>_count` is kept (its buckets
/// and sum are checked in `metrics_http.rs`).
fn parse_prometheus(text: &str) -> BTreeMap<String, u64> {
    let mut types: Vec<(String, String)> = Vec::new();
    let mut values = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                kind == "counter" || kind == "gauge" || kind == "histogram",
                "{line}"
            );
            types.push((name.to_string(), kind.to_string()));
        } else {
            let (name, v) = line.split_once(' ').expect("name value");
            assert!(name.starts_with("longship_"), "{line}");
            let (typed, kind) = types.last().expect("a TYPE line first");
            if kind == "histogram" {
                let base = name
                    .split_once("_bucket{")
                    .map(|(b, _)| b)
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"));
                assert_eq!(base, Some(typed.as_str()), "no TYPE for {name}");
                if !name.ends_with("_count") {
                    continue;
                }
            } else {
                assert_eq!(typed, name, "no TYPE for {name}");
            }
            let prev = values.insert(name.to_string(), v.parse::<u64>().unwrap());
            assert!(prev.is_none(), "duplicate {name}");
        }
    }
    values
}

#[test]
fn metrics_count_what_happened() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    let nh = c.nh(leader);
    let before = parse_prometheus(&nh.metrics().prometheus_text());
    for i in 0..10 {
        propose(nh, 1, &format!("set k{i} {i}"));
    }
    for _ in 0..3 {
        retry(|| nh.sync_read(ShardId(1), b"count", TIMEOUT));
    }
    retry(|| {
        nh.request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)?
            .wait()
    });
    let text = nh.metrics().prometheus_text();
    let after = parse_prometheus(&text);
    for (name, _) in nh.metrics().values() {
        assert!(
            after.contains_key(&format!("longship_{name}")),
            "{name} missing:\n{text}"
        );
    }
    let grew = |name: &str| after[name] - before[name];
    assert!(grew("longship_proposals") >= 10, "{text}");
    assert!(grew("longship_entries_applied") >= 10, "{text}");
    assert!(grew("longship_entries_persisted") >= 10, "{text}");
    assert!(grew("longship_persist_batches") >= 1, "{text}");
    // One write per cycle covers many entries at most once each.
    assert!(
        after["longship_persist_batches"] <= after["longship_step_cycles"],
        "{text}"
    );
    assert!(grew("longship_reads") >= 3, "{text}");
    assert!(grew("longship_messages_sent") > 0, "{text}");
    assert!(after["longship_elections_won"] >= 1, "{text}");
    assert_eq!(grew("longship_snapshots_saved"), 1, "{text}");
    assert_eq!(after["longship_proposals_busy"], 0, "{text}");
    // Followers received what the leader sent, and never won an election
    // in this quiet run unless they lead.
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    // The follower applies in its own time (the leader answered already).
    wait_for("the follower applied", TIMEOUT, || {
        parse_prometheus(&c.nh(follower).metrics().prometheus_text())["longship_entries_applied"]
            >= 10
    });
    let f = parse_prometheus(&c.nh(follower).metrics().prometheus_text());
    assert!(f["longship_messages_received"] > 0);
    assert_eq!(f["longship_snapshots_saved"], 0);

    // Gauges: the host's state now, with the counters in one scrape.
    let all = parse_prometheus(&nh.prometheus_text());
    assert_eq!(all["longship_replicas"], 1);
    assert_eq!(all["longship_replicas_failed"], 0);
    assert_eq!(all["longship_proposals_pending"], 0, "all completed");
    assert!(all["longship_proposals"] >= 10, "counters included");
    for (name, _) in nh.gauges().values() {
        assert!(all.contains_key(&format!("longship_{name}")), "{name}");
    }
}
