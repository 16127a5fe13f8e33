//! Placed mode: kv nodes that form a cluster through the longship master
//! (`--join`), each shard on 3 of N nodes.
//!
//! Every node runs a NodeHost and reports to the master
//! ([`longship::MasterReporter`] over [`TcpMasterClient`], its Redis
//! address in the report's metadata); the master tells it which replicas
//! to start, and replaces and rebalances them (docs/master.md). Three (or
//! five) nodes also run a master replica and its RPC server
//! (`--master-peers`, `--master-addr`); they create the kv shards once
//! enough nodes reported.
//!
//! A request for a key whose shard has no replica on the node is answered
//! `-MOVED slot host:port` with the Redis address of the node that leads
//! the shard (or holds a replica of it), from a [`MasterDirectory`]
//! refreshed from the master's state. Shards with a local replica are
//! served as in the classic mode (a follower forwards to its leader).
//! `CLUSTER SLOTS`, `CLUSTER SHARDS`, `CLUSTER NODES`, `CLUSTER INFO` and
//! `CLUSTER MYID` describe the master's placement ([`topology_of`]): each
//! slot range's nodes are those of its shard's replicas, its leader's
//! node first (the one cluster clients send its keys to); node ids are
//! derived from raft addresses ([`placed_node_id`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use longship::{
    MasterReporter, NodeHost, NodeHostConfig, ReplicaFactory, ReplicaId, ReportingOptions, ShardId,
    Start,
};
use longship_master::rpc::{MasterServer, TcpMasterClient};
use longship_master::{MASTER_SHARD_ID, MasterConfig, MasterNode, MasterOptions, MasterState};
use parking_lot::RwLock;

use crate::cluster::{DEPLOYMENT_ID, replica_config};
use crate::server::{KvNode, ServerConfig, ShardDirectory, Topology, placed_node_id};
use crate::sm::KvStateMachine;

/// Prefix of the Redis address in a report's metadata.
const REDIS_META: &str = "redis=";

/// Replicas per kv shard in placed mode.
pub const REPLICAS_PER_SHARD: u32 = 3;

/// A master replica this node runs.
#[derive(Clone, Debug)]
pub struct MasterSpec {
    /// This node's replica id in the master shard.
    pub replica_id: u64,
    /// The master members: replica id → raft address.
    pub members: BTreeMap<u64, String>,
    /// Where the master RPC listens.
    pub rpc_addr: String,
    /// Hosts silent this long are declared dead.
    pub dead_after: Duration,
}

/// What one placed node runs.
#[derive(Clone, Debug)]
pub struct PlacedSpec {
    /// Raft address (the node's identity).
    pub raft_addr: String,
    /// Redis address clients reach the node at.
    pub redis_addr: String,
    /// Master RPC addresses to report to.
    pub join: Vec<String>,
    /// Run a master replica too.
    pub master: Option<MasterSpec>,
    /// Number of kv shards (created by the master members).
    pub shards: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// RTT in milliseconds.
    pub rtt_ms: u64,
    /// Snapshot every this many entries per shard.
    pub snapshot_entries: u64,
    /// Leader-lease reads.
    pub lease_reads: bool,
    /// Front end limits.
    pub server: ServerConfig,
    /// Mutual TLS on the raft port.
    pub raft_tls: Option<longship::transport::TlsPaths>,
    /// Report interval.
    pub report_interval: Duration,
}

/// A running placed node: keep it alive as long as the node serves.
pub struct PlacedNode {
    /// The Redis front end.
    pub node: Arc<KvNode>,
    _reporter: MasterReporter,
    _master: Option<(MasterNode, MasterServer)>,
    stop: Arc<AtomicBool>,
}

impl Drop for PlacedNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts kv replicas as the master asks.
struct KvFactory {
    snapshot_entries: u64,
    lease_reads: bool,
}

impl ReplicaFactory for KvFactory {
    fn start_replica(
        &self,
        nh: &NodeHost,
        shard_id: ShardId,
        replica_id: ReplicaId,
        start: Start,
        non_voting: bool,
    ) -> longship::Result<()> {
        if shard_id == MASTER_SHARD_ID {
            return Err(longship::Error::Rejected(
                "the master shard is started by the master members".into(),
            ));
        }
        let cfg = longship::Config {
            is_non_voting: non_voting,
            ..replica_config(
                shard_id.0,
                replica_id.0,
                self.snapshot_entries,
                self.lease_reads,
            )
        };
        nh.start_replica(start, |_, _| Box::new(KvStateMachine::default()), cfg)
    }
}

/// Where shards are served, from the master's state: shard → Redis address
/// of its leader's node (or of a node holding it).
pub struct MasterDirectory {
    table: RwLock<BTreeMap<ShardId, String>>,
    topology: RwLock<Option<Topology>>,
}

impl MasterDirectory {
    /// The table from one master state.
    pub fn table_of(state: &MasterState) -> BTreeMap<ShardId, String> {
        let redis = |host: &str| {
            state
                .hosts
                .get(host)
                .filter(|h| !h.dead)
                .and_then(|h| h.report.metadata.strip_prefix(REDIS_META))
                .map(str::to_string)
        };
        let mut out = BTreeMap::new();
        for (shard, rec) in &state.shards {
            let leader =
                longship_master::decide::leader_view(state, *shard).map(|v| v.host.clone());
            let addr = leader
                .as_deref()
                .and_then(redis)
                .or_else(|| rec.placement.values().find_map(|h| redis(h)));
            if let Some(a) = addr {
                out.insert(ShardId(*shard), a);
            }
        }
        out
    }
}

impl ShardDirectory for MasterDirectory {
    fn redis_addr(&self, shard: ShardId) -> Option<String> {
        self.table.read().get(&shard).cloned()
    }

    fn topology(&self) -> Option<Topology> {
        self.topology.read().clone()
    }
}

/// The layout cluster-aware clients are given, from one master state: the
/// live nodes that told their Redis address, and per shard the nodes of
/// its live placed replicas, its leader's node first.
pub fn topology_of(state: &MasterState) -> Topology {
    let redis = |host: &str| {
        state
            .hosts
            .get(host)
            .filter(|h| !h.dead)
            .and_then(|h| h.report.metadata.strip_prefix(REDIS_META))
            .map(str::to_string)
    };
    let nodes: BTreeMap<String, String> = state
        .hosts
        .keys()
        .filter_map(|h| redis(h).map(|a| (placed_node_id(h), a)))
        .collect();
    let mut shards = BTreeMap::new();
    for (shard, rec) in &state.shards {
        if *shard == MASTER_SHARD_ID.0 {
            continue;
        }
        let leader = longship_master::decide::leader_view(state, *shard).map(|v| v.host.clone());
        let mut hosts: Vec<&String> = rec
            .placement
            .values()
            .filter(|h| redis(h).is_some())
            .collect();
        hosts.sort_by_key(|h| Some(*h) != leader.as_ref());
        shards.insert(
            ShardId(*shard),
            hosts.into_iter().map(|h| placed_node_id(h)).collect(),
        );
    }
    Topology { nodes, shards }
}

/// Starts a placed node (see the module doc).
pub fn start_placed(spec: &PlacedSpec) -> Result<PlacedNode, String> {
    spec.server.validate()?;
    std::fs::create_dir_all(&spec.data_dir)
        .map_err(|e| format!("{}: {e}", spec.data_dir.display()))?;
    crate::cluster::check_layout(&spec.data_dir, spec.shards).map_err(|e| e.to_string())?;
    let cfg = NodeHostConfig {
        node_host_dir: spec.data_dir.clone(),
        rtt_ms: spec.rtt_ms,
        raft_address: spec.raft_addr.clone(),
        deployment_id: DEPLOYMENT_ID,
        mutual_tls: spec.raft_tls.clone(),
        ..NodeHostConfig::default()
    };
    let nh = Arc::new(NodeHost::new(cfg).map_err(|e| e.to_string())?);
    crate::cluster::write_layout(&spec.data_dir, spec.shards).map_err(|e| e.to_string())?;
    let factory = Arc::new(KvFactory {
        snapshot_entries: spec.snapshot_entries,
        lease_reads: spec.lease_reads,
    });
    // Replicas this node held before a restart run again at once (the
    // master removes those it removed meanwhile).
    for l in nh.get_node_host_info().log_info {
        if l.shard_id != MASTER_SHARD_ID {
            match factory.start_replica(&nh, l.shard_id, l.replica_id, Start::Restart, false) {
                Ok(()) => {}
                // A removal the master asked for that a crash interrupted
                // (its tombstone is durable): finish it, start nothing.
                Err(longship::Error::ReplicaDataRemoved { .. }) => nh
                    .remove_data(l.shard_id, l.replica_id)
                    .map_err(|e| format!("finishing the removal of shard {}: {e}", l.shard_id))?,
                Err(e) => return Err(format!("restarting shard {}: {e}", l.shard_id)),
            }
        }
    }
    let master = match &spec.master {
        None => None,
        Some(m) => {
            let start = if nh.has_node_info(MASTER_SHARD_ID, ReplicaId(m.replica_id)) {
                Start::Restart
            } else {
                Start::New(
                    m.members
                        .iter()
                        .map(|(id, a)| (ReplicaId(*id), a.clone()))
                        .collect(),
                )
            };
            let options = MasterOptions {
                config: MasterConfig {
                    deployment_id: DEPLOYMENT_ID,
                    dead_after_ms: m.dead_after.as_millis() as u64,
                    ..MasterConfig::default()
                },
                ..MasterOptions::default()
            };
            let node = MasterNode::start(&nh, ReplicaId(m.replica_id), start, options)
                .map_err(|e| e.to_string())?;
            let server =
                MasterServer::start(&nh, &m.rpc_addr, DEPLOYMENT_ID, Duration::from_secs(5))
                    .map_err(|e| format!("master RPC on {}: {e}", m.rpc_addr))?;
            Some((node, server))
        }
    };
    let client = Arc::new(TcpMasterClient::new(
        spec.join.clone(),
        Duration::from_secs(5),
    ));
    // The master may not be up yet (its members start together).
    let reporter = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match MasterReporter::start(
                &nh,
                client.clone(),
                factory.clone(),
                ReportingOptions {
                    interval: spec.report_interval,
                    metadata: format!("{REDIS_META}{}", spec.redis_addr),
                    ..ReportingOptions::default()
                },
            ) {
                Ok(r) => break r,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "master not reachable yet");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("cannot reach the master: {e}")),
            }
        }
    };
    let mut server = spec.server.clone();
    server.redis_addrs = BTreeMap::new();
    let node = KvNode::with_config(nh.clone(), spec.shards, 0, server);
    let directory = Arc::new(MasterDirectory {
        table: RwLock::new(BTreeMap::new()),
        topology: RwLock::new(None),
    });
    node.set_directory(directory.clone());
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, client) = (stop.clone(), client.clone());
        let shards = spec.shards;
        let creates = spec.master.is_some();
        std::thread::Builder::new()
            .name("kv-directory".into())
            .spawn(move || directory_loop(client, directory, shards, creates, stop))
            .map_err(|e| e.to_string())?;
    }
    Ok(PlacedNode {
        node,
        _reporter: reporter,
        _master: master,
        stop,
    })
}

/// Refreshes the directory from the master twice a second; a master member
/// also creates the kv shards that do not exist yet once enough nodes
/// reported (a shard created twice is refused, harmlessly).
fn directory_loop(
    client: Arc<TcpMasterClient>,
    directory: Arc<MasterDirectory>,
    shards: u64,
    creates: bool,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Acquire) {
        if let Ok(state) = client.state() {
            *directory.table.write() = MasterDirectory::table_of(&state);
            *directory.topology.write() = Some(topology_of(&state));
            let live = state.hosts.values().filter(|h| !h.dead).count();
            if creates && live >= REPLICAS_PER_SHARD as usize {
                for s in 1..=shards {
                    if !state.shards.contains_key(&s)
                        && let Err(e) = client.create_shard(ShardId(s), REPLICAS_PER_SHARD)
                    {
                        tracing::debug!(shard = s, error = %e, "creating a shard");
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `longship-kv cluster show`: one line per node and per shard.
pub fn show(state: &MasterState) -> String {
    let mut out = String::new();
    let load = longship_master::decide::loads(state);
    let leaders = longship_master::decide::leader_counts(state);
    out.push_str(&format!(
        "time {} ms, {} nodes, {} shards, {} operations in flight\n",
        state.now_ms,
        state.hosts.len(),
        state.shards.len(),
        state.ops.len()
    ));
    for (host, h) in &state.hosts {
        let status = if h.dead {
            "dead"
        } else if h.draining {
            "draining"
        } else {
            "up"
        };
        out.push_str(&format!(
            "node {host} {} {status} replicas {} leaders {}\n",
            h.report.metadata,
            load.get(host).copied().unwrap_or(0),
            leaders.get(host).copied().unwrap_or(0)
        ));
    }
    for (shard, rec) in &state.shards {
        let leader = longship_master::decide::leader_view(state, *shard)
            .map_or("-".to_string(), |v| v.host.clone());
        let placement: Vec<String> = rec
            .placement
            .iter()
            .map(|(r, h)| format!("{r}@{h}"))
            .collect();
        let op = state
            .ops
            .get(shard)
            .map_or(String::new(), |o| format!(" op {:?}", o.op));
        out.push_str(&format!(
            "shard {shard} leader {leader} replicas {}{op}\n",
            placement.join(",")
        ));
    }
    out
}
