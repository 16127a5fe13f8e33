//! The events of dragonboat's system event listener, over TCP on loopback:
//! connection established and failed, snapshot send started / sent,
//! received, recovered, compacted, log compacted, membership changed, and
//! the NodeHost shutting down. Each is awaited, none is assumed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{Kv, TIMEOUT, retry, wait_until};
use longship::events::{SnapshotEvent, SnapshotSendEvent};
use longship::{
    Config, EventListener, Index, NodeHost, NodeHostConfig, ReplicaId, ShardId, SnapshotOption,
    Start,
};

const SHARD: ShardId = ShardId(1);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Connected(String, bool),
    ConnectFailed(String, bool),
    SendStarted(SnapshotSendEvent),
    Sent(SnapshotSendEvent),
    SendAborted(SnapshotSendEvent),
    Received(SnapshotEvent),
    Recovered(SnapshotEvent),
    SnapshotCompacted(SnapshotEvent),
    LogCompacted(SnapshotEvent),
    Membership(ReplicaId, Index),
    ShuttingDown,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn push(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
    fn any(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.0.lock().unwrap().iter().any(f)
    }
}

impl EventListener for Recorder {
    fn connection_established(&self, address: &str, snapshot: bool) {
        self.push(Event::Connected(address.to_string(), snapshot));
    }
    fn connection_failed(&self, address: &str, snapshot: bool) {
        self.push(Event::ConnectFailed(address.to_string(), snapshot));
    }
    fn snapshot_send_started(&self, info: SnapshotSendEvent) {
        self.push(Event::SendStarted(info));
    }
    fn snapshot_sent(&self, info: SnapshotSendEvent) {
        self.push(Event::Sent(info));
    }
    fn snapshot_send_aborted(&self, info: SnapshotSendEvent) {
        self.push(Event::SendAborted(info));
    }
    fn snapshot_received(&self, info: SnapshotEvent) {
        self.push(Event::Received(info));
    }
    fn snapshot_recovered(&self, info: SnapshotEvent) {
        self.push(Event::Recovered(info));
    }
    fn snapshot_compacted(&self, info: SnapshotEvent) {
        self.push(Event::SnapshotCompacted(info));
    }
    fn log_compacted(&self, info: SnapshotEvent) {
        self.push(Event::LogCompacted(info));
    }
    fn membership_changed(&self, _shard: ShardId, replica: ReplicaId, index: Index) {
        self.push(Event::Membership(replica, index));
    }
    fn node_host_shutting_down(&self) {
        self.push(Event::ShuttingDown);
    }
}

use longship_testkit::free_addr;

struct Hosts {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    hosts: BTreeMap<u64, NodeHost>,
    recorders: BTreeMap<u64, Arc<Recorder>>,
}

impl Hosts {
    fn start_host(&mut self, i: u64) {
        let rec = self.recorders[&i].clone();
        let cfg = NodeHostConfig {
            node_host_dir: self.dir.path().join(format!("nh{i}")),
            rtt_ms: 10,
            raft_address: self.addrs[&i].clone(),
            seed: Some(i),
            ..NodeHostConfig::default()
        };
        let nh = NodeHost::builder(cfg)
            .event_listener(rec.clone())
            .build()
            .unwrap();
        self.hosts.insert(i, nh);
    }

    fn start_replica(&self, i: u64, start: Start) {
        self.hosts[&i]
            .start_replica(
                start,
                |_, _| Box::new(Kv::default()),
                Config {
                    election_rtt: 10,
                    heartbeat_rtt: 1,
                    ..Config::new(SHARD, ReplicaId(i))
                },
            )
            .unwrap();
    }

    fn members(&self) -> BTreeMap<ReplicaId, String> {
        self.addrs
            .iter()
            .map(|(i, a)| (ReplicaId(*i), a.clone()))
            .collect()
    }

    fn leader(&self) -> u64 {
        let mut found = 0;
        wait_until("a leader", TIMEOUT, || {
            for (&i, nh) in &self.hosts {
                if let Ok(Some(l)) = nh.get_leader(SHARD)
                    && l.replica_id == ReplicaId(i)
                {
                    found = i;
                    return true;
                }
            }
            false
        });
        found
    }
}

#[test]
fn every_system_event_fires() {
    let mut h = Hosts {
        dir: tempfile::tempdir().unwrap(),
        addrs: (1..=3).map(|i| (i, free_addr())).collect(),
        hosts: BTreeMap::new(),
        recorders: (1..=3).map(|i| (i, Arc::default())).collect(),
    };
    // Hosts 1 and 2 run; host 3's address has no listener yet.
    for i in 1..=2 {
        h.start_host(i);
        h.start_replica(i, Start::New(h.members()));
    }
    let leader = h.leader();
    let other = 3 - leader;
    let recorders = h.recorders.clone();
    let rec = |i: u64| recorders[&i].clone();
    let (a_other, a3) = (h.addrs[&other].clone(), h.addrs[&3].clone());
    wait_until("connections made and refused", TIMEOUT, || {
        rec(leader).any(|e| *e == Event::Connected(a_other.clone(), false))
            && rec(leader).any(|e| *e == Event::ConnectFailed(a3.clone(), false))
    });

    // Writes, then three snapshots on both running replicas, each
    // compacting the whole log: the third removes the first snapshot.
    let mut s = h.hosts[&leader].get_noop_session(SHARD);
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    for round in 0..3 {
        for k in 0..4 {
            let cmd = format!("set k{round}{k} v").into_bytes();
            retry(|| h.hosts[&leader].sync_propose(&mut s, cmd.clone(), TIMEOUT));
        }
        for i in [leader, other] {
            retry(|| h.hosts[&i].sync_read(SHARD, b"get k", TIMEOUT));
            retry(|| {
                h.hosts[&i]
                    .request_snapshot(SHARD, opt.clone(), TIMEOUT)?
                    .wait()
            });
        }
    }
    for i in [leader, other] {
        assert!(rec(i).any(|e| matches!(e, Event::LogCompacted(s) if s.index.0 > 0)));
        assert!(rec(i).any(|e| matches!(e, Event::SnapshotCompacted(s) if s.index.0 > 0)));
    }

    // Host 3 comes up behind the compacted log: it gets a snapshot stream.
    h.start_host(3);
    h.start_replica(3, Start::New(h.members()));
    wait_until("snapshot streamed and recovered", TIMEOUT, || {
        rec(3).any(|e| matches!(e, Event::Received(s) if s.replica_id == ReplicaId(3)))
            && rec(3).any(|e| matches!(e, Event::Recovered(s) if s.index.0 > 0))
    });
    let sender = h.leader();
    wait_until("the leader reports the stream", TIMEOUT, || {
        rec(sender).any(|e| matches!(e, Event::SendStarted(s) if s.to == ReplicaId(3)))
            && rec(sender).any(|e| matches!(e, Event::Sent(s) if s.to == ReplicaId(3)))
            && rec(sender).any(|e| *e == Event::Connected(a3.clone(), true))
    });
    assert!(!rec(sender).any(|e| matches!(e, Event::SendAborted(_))));
    assert_eq!(
        retry(|| h.hosts[&3].sync_read(SHARD, b"get k23", TIMEOUT)),
        b"v"
    );

    // A membership change is reported by every replica that applies it.
    retry(|| {
        h.hosts[&sender]
            .request_add_non_voting(SHARD, ReplicaId(4), free_addr(), Index(0), TIMEOUT)?
            .wait()
    });
    for i in 1..=3 {
        wait_until(&format!("host {i} applied the change"), TIMEOUT, || {
            rec(i).any(|e| matches!(e, Event::Membership(r, _) if *r == ReplicaId(i)))
        });
    }

    // Closing a host announces it first.
    let nh = h.hosts.remove(&1).unwrap();
    nh.close();
    assert!(rec(1).any(|e| *e == Event::ShuttingDown));
    assert!(!rec(2).any(|e| *e == Event::ShuttingDown));
}
