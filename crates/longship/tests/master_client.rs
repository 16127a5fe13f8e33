//! The NodeHost side of a master: a [`MasterReporter`] reports what the
//! host runs and carries out what a (scripted) master answers: start a
//! shard, add a non-voting replica on another host and start it there,
//! promote it, transfer leadership, delete a replica, and stop a removed
//! replica and delete its data. A master of another deployment is refused.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use common::{Kv, TestCluster, addr, wait_until};
use longship::{
    Config, HostReport, MasterClient, MasterClientError, MasterReporter, MasterRequest, NodeHost,
    ReplicaFactory, ReplicaId, ReportingOptions, Role, ShardId, Start,
};
use parking_lot::Mutex;

const WAIT: Duration = Duration::from_secs(30);
const SHARD: ShardId = ShardId(7);

/// A master that answers each report with the next scripted batch for
/// that host and keeps the last report.
struct ScriptedMaster {
    deployment_id: u64,
    answers: Mutex<VecDeque<Vec<MasterRequest>>>,
    last: Mutex<Option<HostReport>>,
}

impl ScriptedMaster {
    fn new(deployment_id: u64) -> Arc<ScriptedMaster> {
        Arc::new(ScriptedMaster {
            deployment_id,
            answers: Mutex::new(VecDeque::new()),
            last: Mutex::new(None),
        })
    }

    fn answer(&self, reqs: Vec<MasterRequest>) {
        self.answers.lock().push_back(reqs);
    }

    fn last_report(&self) -> Option<HostReport> {
        self.last.lock().clone()
    }
}

impl MasterClient for ScriptedMaster {
    fn deployment_id(&self) -> Result<u64, MasterClientError> {
        Ok(self.deployment_id)
    }

    fn report(&self, report: &HostReport) -> Result<Vec<MasterRequest>, MasterClientError> {
        *self.last.lock() = Some(report.clone());
        Ok(self.answers.lock().pop_front().unwrap_or_default())
    }
}

struct KvFactory;

impl ReplicaFactory for KvFactory {
    fn start_replica(
        &self,
        nh: &NodeHost,
        shard_id: ShardId,
        replica_id: ReplicaId,
        start: Start,
        non_voting: bool,
    ) -> longship::Result<()> {
        let cfg = Config {
            is_non_voting: non_voting,
            ..common::config(shard_id.0, replica_id.0)
        };
        nh.start_replica(start, |_, _| Box::new(Kv::default()), cfg)
    }
}

fn options() -> ReportingOptions {
    ReportingOptions {
        interval: Duration::from_millis(20),
        capacity: 10,
        request_timeout: Duration::from_secs(5),
        metadata: "redis=127.0.0.1:6379".into(),
    }
}

/// Moves the hosts of a test cluster into `Arc`s (reporters hold weak
/// references to their NodeHost).
fn arc_hosts(c: &mut TestCluster) -> Vec<Arc<NodeHost>> {
    std::mem::take(&mut c.hosts)
        .into_values()
        .map(Arc::new)
        .collect()
}

fn runs(nh: &NodeHost, shard: ShardId, replica: ReplicaId) -> bool {
    nh.get_node_host_info()
        .shards
        .iter()
        .any(|s| s.shard_id == shard && s.replica_id == replica)
}

#[test]
fn a_reporter_carries_out_what_the_master_asks() {
    let mut c = TestCluster::new(3);
    let hosts = arc_hosts(&mut c);
    let deployment = hosts[0].config().deployment_id;
    let masters: Vec<Arc<ScriptedMaster>> =
        (0..3).map(|_| ScriptedMaster::new(deployment)).collect();
    let members = TestCluster::members(&[1, 2]);
    // Hosts 1 and 2 bootstrap the shard when the master says so.
    for (i, m) in masters.iter().enumerate().take(2) {
        m.answer(vec![MasterRequest::StartReplica {
            shard_id: SHARD,
            replica_id: ReplicaId(i as u64 + 1),
            start: Start::New(members.clone()),
            non_voting: false,
        }]);
    }
    let reporters: Vec<MasterReporter> = hosts
        .iter()
        .zip(&masters)
        .map(|(nh, m)| {
            MasterReporter::start(nh, m.clone(), Arc::new(KvFactory), options()).unwrap()
        })
        .collect();
    wait_until("a leader reported", WAIT, || {
        masters.iter().take(2).any(|m| {
            m.last_report().is_some_and(|r| {
                r.replicas.iter().any(|x| {
                    x.shard_id == SHARD && x.role == Role::Leader && x.membership.is_some()
                })
            })
        })
    });
    let leader = (0..2)
        .find(|&i| {
            masters[i]
                .last_report()
                .unwrap()
                .replicas
                .iter()
                .any(|x| x.role == Role::Leader)
        })
        .unwrap();
    let report = masters[leader].last_report().unwrap();
    assert_eq!(report.raft_address, addr(leader as u64 + 1));
    assert_eq!(report.capacity, 10);
    assert_eq!(report.metadata, "redis=127.0.0.1:6379");
    let m = report.replicas[0].membership.clone().unwrap();
    assert_eq!(m.voters, members);
    // Add replica 3 on host 3 as non-voting, start it there, promote it.
    masters[2].answer(vec![MasterRequest::StartReplica {
        shard_id: SHARD,
        replica_id: ReplicaId(3),
        start: Start::Join,
        non_voting: true,
    }]);
    // Ordered on the membership the report showed, as a master asks.
    masters[leader].answer(vec![MasterRequest::AddNonVoting {
        shard_id: SHARD,
        replica_id: ReplicaId(3),
        address: addr(3),
        config_change_id: m.config_change_id,
    }]);
    wait_until("replica 3 runs on host 3", WAIT, || {
        runs(&hosts[2], SHARD, ReplicaId(3))
    });
    let membership = || {
        hosts[leader]
            .sync_get_shard_membership(SHARD, Duration::from_secs(5))
            .unwrap()
    };
    wait_until("replica 3 is a non-voting member", WAIT, || {
        membership().non_votings.contains_key(&ReplicaId(3))
    });
    let m = membership();
    masters[leader].answer(vec![MasterRequest::PromoteNonVoting {
        shard_id: SHARD,
        replica_id: ReplicaId(3),
        config_change_id: m.config_change_id,
    }]);
    wait_until("replica 3 votes", WAIT, || {
        masters[leader].last_report().is_some_and(|r| {
            r.replicas.iter().any(|x| {
                x.membership
                    .as_ref()
                    .is_some_and(|m| m.voters.contains_key(&ReplicaId(3)))
            })
        })
    });
    // Leadership to replica 3, then the old leader's replica removed.
    masters[leader].answer(vec![MasterRequest::TransferLeader {
        shard_id: SHARD,
        target: ReplicaId(3),
    }]);
    wait_until("replica 3 leads", WAIT, || {
        hosts[2]
            .get_leader(SHARD)
            .ok()
            .flatten()
            .map(|l| l.replica_id)
            == Some(ReplicaId(3))
    });
    let old = ReplicaId(leader as u64 + 1);
    let m = hosts[2]
        .sync_get_shard_membership(SHARD, Duration::from_secs(5))
        .unwrap();
    masters[2].answer(vec![MasterRequest::DeleteReplica {
        shard_id: SHARD,
        replica_id: old,
        config_change_id: m.config_change_id,
    }]);
    wait_until("the old leader removed", WAIT, || {
        hosts[2]
            .sync_get_shard_membership(SHARD, Duration::from_secs(5))
            .is_ok_and(|m| m.removed.contains(&old))
    });
    // The removed replica's host stops it and deletes its data.
    assert!(hosts[leader].has_node_info(SHARD, old));
    masters[leader].answer(vec![MasterRequest::RemoveReplica {
        shard_id: SHARD,
        replica_id: old,
    }]);
    wait_until("the removed replica's data deleted", WAIT, || {
        !hosts[leader].has_node_info(SHARD, old) && !runs(&hosts[leader], SHARD, old)
    });
    // The shard goes on with replicas 3 and the other original one.
    let other = if leader == 0 { 1 } else { 0 };
    let mut s = hosts[2].get_noop_session(SHARD);
    common::retry(|| hosts[2].sync_propose(&mut s, "set a b", Duration::from_secs(5)));
    assert_eq!(
        common::retry(|| hosts[other].sync_read(SHARD, b"get a", Duration::from_secs(5))),
        b"b"
    );
    assert!(reporters.iter().all(|r| r.rounds() > 0));
    drop(reporters);
}

#[test]
fn a_master_of_another_deployment_is_refused() {
    let mut c = TestCluster::new(1);
    let hosts = arc_hosts(&mut c);
    let other = hosts[0].config().deployment_id.wrapping_add(1);
    let r = MasterReporter::start(
        &hosts[0],
        ScriptedMaster::new(other),
        Arc::new(KvFactory),
        options(),
    );
    assert!(
        matches!(r, Err(longship::Error::InvalidConfig { .. })),
        "{:?}",
        r.err()
    );
}

#[test]
fn a_running_replicas_data_is_not_removed_and_a_closed_host_stops_reporting() {
    let mut c = TestCluster::new(1);
    c.start_shard(SHARD.0, &[1]);
    let hosts = arc_hosts(&mut c);
    assert!(matches!(
        hosts[0].remove_data(SHARD, ReplicaId(1)),
        Err(longship::Error::ShardNotStopped(_))
    ));
    assert!(hosts[0].has_node_info(SHARD, ReplicaId(1)));
    let m = ScriptedMaster::new(hosts[0].config().deployment_id);
    let r = MasterReporter::start(&hosts[0], m.clone(), Arc::new(KvFactory), options()).unwrap();
    wait_until("a report", WAIT, || m.last_report().is_some());
    assert!(r.is_running());
    hosts[0].close();
    wait_until("the loop ends by itself", WAIT, || !r.is_running());
    assert!(r.rounds() >= 1);
    r.stop();
}
