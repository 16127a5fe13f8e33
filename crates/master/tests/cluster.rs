//! The master on real NodeHosts: five NodeHosts over loopback TCP in one
//! process, the master shard on three of them, eight application shards of
//! three replicas created through the master. A NodeHost stopped for good
//! (one that is not a master member, then one that is) has its replicas
//! replaced: every shard is back to three live replicas and still holds
//! what was written before; a sixth NodeHost receives replicas until every
//! host is within one of the mean. Master members report in process;
//! the other hosts report over TCP to the master servers (as NodeHosts of
//! other processes do), and a host is drained through that RPC.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use longship::{
    Config, MasterReporter, NodeHost, NodeHostConfig, ReplicaFactory, ReplicaId, ReportingOptions,
    ShardId, SmEntry, SmError, Start, StateMachine, StopFlag,
};
use longship_master::decide::{leader_counts, leader_view, loads, running};
use longship_master::rpc::{MasterServer, TcpMasterClient};
use longship_master::{
    InProcessMasterClient, MASTER_SHARD_ID, MasterAwareFactory, MasterConfig, MasterNode,
    MasterOptions, MasterState, create_shard, read_state,
};

const RTT_MS: u64 = 10;
const TIMEOUT: Duration = Duration::from_secs(5);
/// Generous: two cores shared with other builds.
const WAIT: Duration = Duration::from_secs(60);
const SHARDS: u64 = 8;
const DEAD_AFTER_MS: u64 = 3_000;

/// A map of strings: `set k v` stores; a lookup of `k` returns the value.
#[derive(Default)]
struct Kv(BTreeMap<String, String>);

impl StateMachine for Kv {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            let s = String::from_utf8_lossy(&e.cmd);
            let mut p = s.splitn(3, ' ');
            if p.next() == Some("set")
                && let (Some(k), Some(v)) = (p.next(), p.next())
            {
                self.0.insert(k.into(), v.into());
            }
            e.result.value = self.0.len() as u64;
        }
        Ok(())
    }
    fn lookup(&self, q: &[u8]) -> Result<Vec<u8>, SmError> {
        let k = String::from_utf8_lossy(q);
        Ok(self
            .0
            .get(k.as_ref())
            .cloned()
            .unwrap_or_default()
            .into_bytes())
    }
    fn save_snapshot(&self, w: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        for (k, v) in &self.0 {
            writeln!(w, "{k}\t{v}")?;
        }
        Ok(())
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut s = String::new();
        r.read_to_string(&mut s)?;
        self.0 = s
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Ok(())
    }
}

/// Starts application replicas as the master asks.
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
            election_rtt: 10,
            heartbeat_rtt: 1,
            check_quorum: true,
            snapshot_entries: 50,
            compaction_overhead: 10,
            is_non_voting: non_voting,
            ..Config::new(shard_id, replica_id)
        };
        nh.start_replica(start, |_, _| Box::new(Kv::default()), cfg)
    }
}

use longship_testkit::free_addr;

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    hosts: BTreeMap<u64, Arc<NodeHost>>,
    reporters: BTreeMap<u64, MasterReporter>,
    masters: BTreeMap<u64, MasterNode>,
    servers: BTreeMap<u64, MasterServer>,
    /// For master members.
    client: Arc<InProcessMasterClient>,
    /// For the other hosts.
    tcp_client: Arc<TcpMasterClient>,
    options: MasterOptions,
    /// The master manages its own shard: every host starts master replicas
    /// on request and reports in process to whichever hosts run one.
    manage_master: bool,
}

const MASTER_HOSTS: [u64; 3] = [1, 2, 3];

impl Cluster {
    fn host_config(&self, i: u64) -> NodeHostConfig {
        NodeHostConfig {
            node_host_dir: self.dir.path().join(format!("nh{i}")),
            rtt_ms: RTT_MS,
            raft_address: self.addrs[&i].clone(),
            seed: Some(i),
            step_workers: 1,
            apply_workers: 1,
            connections_per_host: 1,
            ..NodeHostConfig::default()
        }
    }

    fn new_host(&mut self, i: u64) -> Arc<NodeHost> {
        for attempt in 0.. {
            self.addrs.entry(i).or_insert_with(free_addr);
            match NodeHost::new(self.host_config(i)) {
                Ok(nh) => return Arc::new(nh),
                Err(longship::Error::TransportSetup(e)) if attempt < 5 && e.contains("in use") => {
                    self.addrs.insert(i, free_addr());
                }
                Err(e) => panic!("host {i}: {e}"),
            }
        }
        unreachable!()
    }

    /// Five hosts, the master on hosts 1-3, every host reporting.
    fn start() -> Cluster {
        Cluster::start_with(false)
    }

    fn start_with(manage_master: bool) -> Cluster {
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            addrs: BTreeMap::new(),
            hosts: BTreeMap::new(),
            reporters: BTreeMap::new(),
            masters: BTreeMap::new(),
            servers: BTreeMap::new(),
            client: Arc::new(InProcessMasterClient::new(&[], 0, TIMEOUT)),
            tcp_client: Arc::new(TcpMasterClient::new(Vec::new(), TIMEOUT)),
            options: MasterOptions::default(),
            manage_master,
        };
        for i in 1..=5 {
            let nh = c.new_host(i);
            c.hosts.insert(i, nh);
        }
        let deployment_id = c.hosts[&1].config().deployment_id;
        let members: BTreeMap<ReplicaId, String> = MASTER_HOSTS
            .iter()
            .map(|i| (ReplicaId(*i), c.addrs[i].clone()))
            .collect();
        let options = MasterOptions {
            config: MasterConfig {
                deployment_id,
                dead_after_ms: DEAD_AFTER_MS,
                catch_up_lag: 20,
                balance_interval_ms: 300,
                ..MasterConfig::default()
            },
            tick_interval: Duration::from_millis(100),
            propose_timeout: Duration::from_secs(2),
            manage_master_shard: manage_master,
        };
        c.options = options.clone();
        for i in MASTER_HOSTS {
            let m = MasterNode::start(
                &c.hosts[&i],
                ReplicaId(i),
                Start::New(members.clone()),
                options.clone(),
            )
            .unwrap();
            c.masters.insert(i, m);
            let server =
                MasterServer::start(&c.hosts[&i], "127.0.0.1:0", deployment_id, TIMEOUT).unwrap();
            c.servers.insert(i, server);
        }
        c.tcp_client = Arc::new(TcpMasterClient::new(
            c.servers
                .values()
                .map(|s| s.local_addr().to_string())
                .collect(),
            TIMEOUT,
        ));
        // With a self-managed master any host may come to run a master
        // replica: the client tries them all (the leading one first).
        let master_hosts: Vec<Arc<NodeHost>> = if manage_master {
            c.hosts.values().cloned().collect()
        } else {
            MASTER_HOSTS.iter().map(|i| c.hosts[i].clone()).collect()
        };
        c.client = Arc::new(InProcessMasterClient::new(
            &master_hosts,
            deployment_id,
            TIMEOUT,
        ));
        for i in 1..=5 {
            c.start_reporting(i);
        }
        c
    }

    fn start_reporting(&mut self, i: u64) {
        let client: Arc<dyn longship::MasterClient> =
            if MASTER_HOSTS.contains(&i) || self.manage_master {
                self.client.clone()
            } else {
                self.tcp_client.clone()
            };
        let factory: Arc<dyn ReplicaFactory> = if self.manage_master {
            Arc::new(MasterAwareFactory::new(
                &self.hosts[&i],
                Arc::new(KvFactory),
                self.options.clone(),
            ))
        } else {
            Arc::new(KvFactory)
        };
        let r = MasterReporter::start(
            &self.hosts[&i],
            client,
            factory,
            ReportingOptions {
                interval: Duration::from_millis(200),
                ..ReportingOptions::default()
            },
        )
        .unwrap();
        self.reporters.insert(i, r);
    }

    /// Adds host `i` (not a master member) and starts its reporting.
    fn add_host(&mut self, i: u64) {
        let nh = self.new_host(i);
        self.hosts.insert(i, nh);
        self.start_reporting(i);
    }

    /// Stops host `i` for good.
    fn kill(&mut self, i: u64) {
        if let Some(r) = self.reporters.remove(&i) {
            r.stop();
        }
        if let Some(m) = self.masters.remove(&i) {
            m.stop();
        }
        self.servers.remove(&i);
        let nh = self.hosts.remove(&i).unwrap();
        nh.close();
    }

    /// The master's state through any live host that runs a master replica.
    fn state(&self) -> Option<MasterState> {
        self.hosts
            .values()
            .filter(|nh| nh.raft_status(MASTER_SHARD_ID).is_ok())
            .find_map(|nh| read_state(nh, TIMEOUT).ok())
    }

    /// A live host that runs a replica of `shard`.
    fn holder(&self, shard: u64) -> Option<&Arc<NodeHost>> {
        self.hosts.values().find(|nh| {
            nh.get_node_host_info()
                .shards
                .iter()
                .any(|s| s.shard_id == ShardId(shard) && !s.failed)
        })
    }

    fn write(&self, shard: u64, key: &str, value: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(nh) = self.holder(shard) {
                let mut s = nh.get_noop_session(ShardId(shard));
                match nh.sync_propose(&mut s, format!("set {key} {value}"), TIMEOUT) {
                    Ok(_) => return,
                    Err(e)
                        if e.is_temporary() || matches!(e, longship::Error::ShardNotFound(_)) => {}
                    Err(e) => panic!("write to shard {shard}: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "write to shard {shard} timed out"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A linearizable read of `key` on every voter of `shard` (as its
    /// leader reports the membership to the master).
    fn read_everywhere(&self, shard: u64, key: &str) -> Vec<String> {
        let s = self.state().expect("the master answers");
        let voters = leader_view(&s, shard)
            .expect("the shard has a leader")
            .membership
            .voters
            .clone();
        voters
            .values()
            .map(|addr| {
                let nh = self
                    .hosts
                    .values()
                    .find(|nh| nh.raft_address() == addr)
                    .unwrap_or_else(|| panic!("voter host {addr} is not running"));
                // Retried: an election or a loaded machine may time a read out.
                let deadline = Instant::now() + WAIT;
                loop {
                    match nh.sync_read(ShardId(shard), key.as_bytes(), TIMEOUT) {
                        Ok(v) => return String::from_utf8(v).unwrap(),
                        Err(e) if e.is_temporary() && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => panic!("read of shard {shard} on {addr}: {e}"),
                    }
                }
            })
            .collect()
    }

    /// Whether the master sees every shard fully replicated on live hosts
    /// with nothing in flight, and every running replica is a member.
    fn fully_replicated(&self, dead: &[String]) -> bool {
        let Some(s) = self.state() else { return false };
        let managed = SHARDS as usize + usize::from(self.manage_master);
        if !s.ops.is_empty() || s.shards.len() != managed {
            return false;
        }
        s.shards.iter().all(|(shard, rec)| {
            let Some(v) = leader_view(&s, *shard) else {
                return false;
            };
            v.membership.voters.len() == 3
                && v.membership.non_votings.is_empty()
                && v.membership.voters.values().all(|h| !dead.contains(h))
                && v.membership
                    .voters
                    .iter()
                    .all(|(r, h)| running(&s, h, *shard, *r).is_some())
                && rec.placement.len() == 3
        })
    }

    fn balanced(&self) -> bool {
        let Some(s) = self.state() else { return false };
        let l = loads(&s);
        s.ops.is_empty()
            && l.len() == self.hosts.len()
            && l.values().max().unwrap() - l.values().min().unwrap() <= 1
    }
}

/// Creates the shards and writes one key to each.
fn create_and_fill(c: &Cluster) {
    wait_until("every host reported", WAIT, || {
        c.state().is_some_and(|s| s.hosts.len() == 5)
    });
    for shard in 1..=SHARDS {
        // Retried while the master elects a leader; a retry of a creation
        // whose first answer was lost is refused as existing.
        let deadline = Instant::now() + WAIT;
        loop {
            match create_shard(&c.hosts[&1], ShardId(shard), 3, TIMEOUT) {
                Ok(()) => break,
                Err(longship_master::MasterError::Longship(e))
                    if e.is_temporary() && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(longship_master::MasterError::Refused(r)) if r.contains("exists") => break,
                Err(e) => panic!("creating shard {shard}: {e}"),
            }
        }
    }
    wait_until("the shards are created", WAIT, || c.fully_replicated(&[]));
    for shard in 1..=SHARDS {
        c.write(shard, "k", &format!("v{shard}"));
    }
}

fn check_data(c: &Cluster) {
    for shard in 1..=SHARDS {
        let values = c.read_everywhere(shard, "k");
        assert_eq!(values.len(), 3, "shard {shard}: live replicas answering");
        assert!(
            values.iter().all(|v| *v == format!("v{shard}")),
            "shard {shard}: {values:?}"
        );
    }
}

fn replace_after_losing(victim: u64) {
    let mut c = Cluster::start();
    create_and_fill(&c);
    let dead = c.addrs[&victim].clone();
    let lost = c.hosts[&victim]
        .get_node_host_info()
        .shards
        .iter()
        .filter(|s| s.shard_id != MASTER_SHARD_ID)
        .count();
    assert!(lost > 0, "host {victim} held replicas");
    let t = Instant::now();
    c.kill(victim);
    wait_until("every shard back to three live replicas", WAIT, || {
        c.fully_replicated(std::slice::from_ref(&dead))
    });
    eprintln!(
        "host {victim}: {lost} replicas replaced in {:?} (dead_after {DEAD_AFTER_MS} ms)",
        t.elapsed()
    );
    let s = c.state().unwrap();
    assert!(s.hosts[&dead].dead);
    assert!(s.counters.moves_done >= lost as u64);
    check_data(&c);
    // Written after the repair too.
    for shard in 1..=SHARDS {
        c.write(shard, "after", "yes");
    }
}

#[test]
fn a_lost_host_that_is_not_a_master_member_is_replaced() {
    replace_after_losing(5);
}

#[test]
fn a_lost_master_member_is_replaced_and_the_master_goes_on() {
    replace_after_losing(1);
}

#[test]
fn a_new_host_receives_replicas_until_balanced() {
    let mut c = Cluster::start();
    create_and_fill(&c);
    c.add_host(6);
    wait_until("host 6 reported", WAIT, || {
        c.state().is_some_and(|s| s.hosts.len() == 6)
    });
    wait_until("replicas within one of the mean", WAIT, || c.balanced());
    let s = c.state().unwrap();
    let l = loads(&s);
    assert!(l[&c.addrs[&6]] >= 3, "loads {l:?}");
    // Leaders too: 8 shards over 6 hosts, each within one of the mean.
    wait_until("leaders within one of the mean", WAIT, || {
        c.state().is_some_and(|s| {
            let lc = leader_counts(&s);
            lc.len() == 6 && lc.values().max().unwrap() - lc.values().min().unwrap() <= 1
        })
    });
    wait_until("nothing in flight", WAIT, || c.fully_replicated(&[]));
    check_data(&c);
}

#[test]
fn a_host_declared_dead_that_comes_back_has_its_removed_replicas_deleted() {
    let mut c = Cluster::start();
    create_and_fill(&c);
    let victim = 5;
    let addr = c.addrs[&victim].clone();
    let held: Vec<(ShardId, ReplicaId)> = c.hosts[&victim]
        .get_node_host_info()
        .shards
        .iter()
        .map(|s| (s.shard_id, s.replica_id))
        .collect();
    assert!(!held.is_empty());
    // Silent (its reporter stops) but running: the master declares it dead
    // and replaces its replicas.
    c.reporters.remove(&victim).unwrap().stop();
    wait_until("its replicas replaced", WAIT, || {
        c.fully_replicated(std::slice::from_ref(&addr))
    });
    assert!(c.state().unwrap().hosts[&addr].dead);
    // It reports again: alive, and its removed replicas are stopped and
    // their data deleted (not rejoined).
    c.start_reporting(victim);
    let nh = c.hosts[&victim].clone();
    wait_until("removed replicas stopped and deleted", WAIT, || {
        held.iter().all(|(s, r)| !nh.has_node_info(*s, *r))
            && nh.get_node_host_info().shards.is_empty()
    });
    assert!(!c.state().unwrap().hosts[&addr].dead);
    // The host is empty, so the rebalancer gives it replicas again (new ids).
    wait_until("replicas within one of the mean", WAIT, || c.balanced());
    for (s, r) in &held {
        assert!(
            !nh.has_node_info(*s, *r),
            "removed replica {r} of {s} is back"
        );
    }
    check_data(&c);
}

#[test]
fn a_host_drained_over_tcp_is_emptied() {
    let c = Cluster::start();
    create_and_fill(&c);
    let drained = c.addrs[&4].clone();
    assert!(c.tcp_client.state().unwrap().hosts.contains_key(&drained));
    c.tcp_client.drain(&drained, true).unwrap();
    let nh = c.hosts[&4].clone();
    wait_until("host 4 holds no replica", WAIT, || {
        nh.get_node_host_info().shards.is_empty()
            && nh.get_node_host_info().log_info.is_empty()
            && c.fully_replicated(&[])
    });
    let s = c.tcp_client.state().unwrap();
    assert!(
        s.shards
            .values()
            .all(|r| r.placement.values().all(|h| *h != drained))
    );
    check_data(&c);
    // A refused call says why.
    assert!(c.tcp_client.drain("nowhere:1", true).is_err());
}

/// Leadership of the master shard moves between its members again and
/// again while replicas of a lost host are being replaced: every replica
/// is replaced exactly once (one move each, one fresh id each), none is
/// lost or repeated.
#[test]
fn master_leader_changes_mid_repair_neither_repeat_nor_lose_an_operation() {
    let mut c = Cluster::start();
    create_and_fill(&c);
    let victim = 5;
    let dead = c.addrs[&victim].clone();
    let lost = c.hosts[&victim].get_node_host_info().shards.len() as u64;
    assert!(lost > 0);
    let before = c.state().unwrap();
    c.kill(victim);
    let mut transfers = 0;
    let mut last_transfer = Instant::now();
    let deadline = Instant::now() + WAIT;
    while !c.fully_replicated(std::slice::from_ref(&dead)) {
        assert!(
            Instant::now() < deadline,
            "repair did not finish: {:?}",
            c.state().map(|s| (s.counters, s.ops))
        );
        // While moves are in flight, hand master leadership to the next
        // member (a few times, a second apart).
        let in_flight = c.state().is_some_and(|s| !s.ops.is_empty());
        if in_flight
            && transfers < 4
            && last_transfer.elapsed() > Duration::from_secs(1)
            && let Some(leader) = MASTER_HOSTS.iter().find(|i| {
                c.hosts[i]
                    .get_leader(MASTER_SHARD_ID)
                    .ok()
                    .flatten()
                    .is_some_and(|l| l.replica_id == ReplicaId(**i))
            })
        {
            let next =
                MASTER_HOSTS[(MASTER_HOSTS.iter().position(|i| i == leader).unwrap() + 1) % 3];
            if c.hosts[leader]
                .request_leader_transfer(MASTER_SHARD_ID, ReplicaId(next))
                .is_ok()
            {
                transfers += 1;
                last_transfer = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = c.state().unwrap();
    assert!(transfers >= 2, "master leadership moved {transfers} times");
    assert_eq!(
        after.counters.repairs_done - before.counters.repairs_done,
        lost,
        "one repair per lost replica: {:?} -> {:?}",
        before.counters,
        after.counters
    );
    // Every move (repairs, and balancing moves that may follow) took
    // exactly one fresh id: no operation was started twice.
    let moves = after.counters.moves_done + after.counters.moves_aborted
        - before.counters.moves_done
        - before.counters.moves_aborted;
    let ids_used: u64 = after
        .shards
        .iter()
        .map(|(s, r)| r.next_replica_id - before.shards[s].next_replica_id)
        .sum();
    assert_eq!(ids_used, moves, "one fresh replica id per move");
    check_data(&c);
}

/// The master manages its own shard: a master member lost for good is
/// replaced on another host (which starts a master replica on request),
/// so the master survives losing a second original member afterwards.
#[test]
fn the_master_replaces_its_own_lost_replicas() {
    let mut c = Cluster::start_with(true);
    create_and_fill(&c);
    let master_placement = |c: &Cluster| {
        c.state().and_then(|s| {
            s.shards
                .get(&MASTER_SHARD_ID.0)
                .map(|r| r.placement.clone())
        })
    };
    wait_until("the master shard adopted", WAIT, || {
        master_placement(&c).is_some()
    });
    // The first original member goes for good.
    let first = c.addrs[&1].clone();
    c.kill(1);
    wait_until("the master shard back to three live replicas", WAIT, || {
        c.fully_replicated(std::slice::from_ref(&first))
            && master_placement(&c)
                .is_some_and(|p| p.len() == 3 && !p.values().any(|h| *h == first))
    });
    let placed: Vec<String> = master_placement(&c).unwrap().into_values().collect();
    let newcomer = [4u64, 5]
        .into_iter()
        .find(|i| placed.contains(&c.addrs[i]))
        .expect("a master replica on host 4 or 5");
    assert!(c.hosts[&newcomer].raft_status(MASTER_SHARD_ID).is_ok());
    // A second original member goes: the master still has a quorum
    // (without the repair it would be down to 1 of 3) and repairs again.
    let second = c.addrs[&2].clone();
    c.kill(2);
    let dead = [first, second];
    wait_until("everything repaired after the second loss", WAIT, || {
        c.fully_replicated(&dead)
            && master_placement(&c)
                .is_some_and(|p| p.len() == 3 && !p.values().any(|h| dead.contains(h)))
    });
    check_data(&c);
}
