//! Starting kv nodes: one NodeHost per node with a replica of every shard.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use longship::{Config, NodeHost, NodeHostConfig, ReplicaId, ShardId, Start};

use crate::server::{KvNode, ServerConfig};
use crate::sm::KvStateMachine;

/// Deployment id of longship-kv clusters.
pub const DEPLOYMENT_ID: u64 = 0x6b76_6c6f_6e67; // "kvlong"

/// What one node runs.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node id (= replica id in every shard).
    pub node_id: u64,
    /// Raft address of this node.
    pub raft_addr: String,
    /// Every node's raft address, by node id (this one included).
    pub peers: BTreeMap<u64, String>,
    /// Number of shards.
    pub shards: u64,
    /// Data directory of this node.
    pub data_dir: PathBuf,
    /// RTT in milliseconds.
    pub rtt_ms: u64,
    /// Snapshot every this many applied entries per shard.
    pub snapshot_entries: u64,
    /// Limits of the Redis front end.
    pub server: ServerConfig,
    /// Mutual TLS for the raft port (every node's certificate signed by the
    /// same CA); plain TCP when `None`.
    pub raft_tls: Option<longship::transport::TlsPaths>,
    /// Linearizable reads served by leader leases (`Config::lease_read`)
    /// instead of a heartbeat round per read batch.
    pub lease_reads: bool,
    /// Where the NodeHost serves its Prometheus metrics over HTTP
    /// (`GET /metrics`, `NodeHostConfig::metrics_address`); empty: nowhere.
    pub metrics_address: String,
}

/// The replica config of a shard on this node.
pub fn replica_config(
    shard: u64,
    node_id: u64,
    snapshot_entries: u64,
    lease_reads: bool,
) -> Config {
    Config {
        lease_read: lease_reads,
        election_rtt: 10,
        heartbeat_rtt: 1,
        snapshot_entries,
        compaction_overhead: snapshot_entries / 10,
        max_uncommitted_bytes: 64 << 20,
        // Idle shards stop ticking and heartbeating (any request wakes them).
        quiesce: true,
        // The kv state machine is an in-memory map: small committed batches
        // are applied by the step worker, without a hand-off.
        max_inline_apply_bytes: 64 << 10,
        ..Config::new(ShardId(shard), ReplicaId(node_id))
    }
}

/// File in a node's data directory that records how keys are placed on
/// shards; data without it (from a longship-kv that placed keys by an FNV
/// hash) or with another shard count is refused.
pub const LAYOUT_FILE: &str = "kv-layout";

fn layout_line(shards: u64) -> String {
    format!("longship-kv key layout 2: 16384 hash slots (CRC16) over {shards} shards\n")
}

/// Checks that `dir` is empty or holds data placed as `shards` shards of
/// hash slots place it.
pub(crate) fn check_layout(dir: &std::path::Path, shards: u64) -> longship::Result<()> {
    let bad = |reason: String| longship::Error::InvalidConfig {
        field: "data_dir",
        reason,
    };
    match std::fs::read_to_string(dir.join(LAYOUT_FILE)) {
        Ok(s) if s == layout_line(shards) => Ok(()),
        Ok(s) => Err(bad(format!(
            "{} holds data laid out as \"{}\", not over {shards} shards: use the same --shards, or wipe the directory",
            dir.display(),
            s.trim()
        ))),
        Err(_) => {
            let used = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
            if used {
                Err(bad(format!(
                    "{} holds data of an older longship-kv that placed keys by an FNV hash; keys now go by Redis Cluster hash slots: wipe the directory (rm -r) and reload",
                    dir.display()
                )))
            } else {
                Ok(())
            }
        }
    }
}

/// Records in `dir` how keys are placed on `shards` shards.
pub(crate) fn write_layout(dir: &std::path::Path, shards: u64) -> longship::Result<()> {
    std::fs::write(dir.join(LAYOUT_FILE), layout_line(shards)).map_err(|e| {
        longship::Error::InvalidConfig {
            field: "data_dir",
            reason: format!("cannot write {LAYOUT_FILE}: {e}"),
        }
    })
}

/// Starts the NodeHost of `spec` and every shard's replica on it (a
/// restart when data is already there).
pub fn start_node(spec: &NodeSpec) -> longship::Result<Arc<KvNode>> {
    check_layout(&spec.data_dir, spec.shards)?;
    if let Err(reason) = spec.server.validate() {
        return Err(longship::Error::InvalidConfig {
            field: "server",
            reason,
        });
    }
    if !spec.peers.contains_key(&spec.node_id) {
        return Err(longship::Error::InvalidConfig {
            field: "peers",
            reason: "must contain this node".into(),
        });
    }
    let cfg = NodeHostConfig {
        node_host_dir: spec.data_dir.clone(),
        rtt_ms: spec.rtt_ms,
        raft_address: spec.raft_addr.clone(),
        deployment_id: DEPLOYMENT_ID,
        mutual_tls: spec.raft_tls.clone(),
        metrics_address: spec.metrics_address.clone(),
        ..NodeHostConfig::default()
    };
    let nh = Arc::new(NodeHost::new(cfg)?);
    std::fs::write(spec.data_dir.join(LAYOUT_FILE), layout_line(spec.shards)).map_err(|e| {
        longship::Error::InvalidConfig {
            field: "data_dir",
            reason: format!("cannot write {LAYOUT_FILE}: {e}"),
        }
    })?;
    for shard in 1..=spec.shards {
        let start = if nh.has_node_info(ShardId(shard), ReplicaId(spec.node_id)) {
            Start::Restart
        } else {
            Start::New(
                spec.peers
                    .iter()
                    .map(|(id, a)| (ReplicaId(*id), a.clone()))
                    .collect(),
            )
        };
        nh.start_replica(
            start,
            |_, _| Box::new(KvStateMachine::default()),
            replica_config(shard, spec.node_id, spec.snapshot_entries, spec.lease_reads),
        )?;
    }
    Ok(KvNode::with_config(
        nh,
        spec.shards,
        spec.node_id,
        spec.server.clone(),
    ))
}
