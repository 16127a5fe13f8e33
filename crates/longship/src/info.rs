//! What a NodeHost runs and stores, for operators and master clients
//! ([`NodeHost::get_node_host_info_with`], dragonboat's `GetNodeHostInfo`).

use std::sync::atomic::Ordering;

use longship_raft::Index;

use crate::nodehost::{LogInfo, MembershipInfo, NodeHost, NodeHostInfo, ShardInfo};
use crate::replica::Replica;

/// What [`NodeHost::get_node_host_info_with`] gathers (dragonboat's
/// `NodeHostInfoOption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeHostInfoOption {
    /// Leave out [`NodeHostInfo::log_info`]: listing every replica's log
    /// range reads log storage for each, which a frequent report (a master
    /// client's) may not want to pay.
    pub skip_log_info: bool,
}

impl NodeHost {
    /// What this host runs and, unless `opt` skips it, what its log
    /// storage holds. Every replica's core is locked briefly for its
    /// commit index and pending membership change.
    pub fn get_node_host_info_with(&self, opt: NodeHostInfoOption) -> NodeHostInfo {
        let host = &self.host;
        let replicas: Vec<_> = host.replicas.read().values().cloned().collect();
        let mut shards: Vec<ShardInfo> = replicas.iter().map(|r| shard_info(r)).collect();
        shards.sort_by_key(|s| s.shard_id);
        let log_info = if opt.skip_log_info {
            Vec::new()
        } else {
            host.logdb
                .list_replicas()
                .into_iter()
                .map(|(shard_id, replica_id)| LogInfo {
                    shard_id,
                    replica_id,
                    first_index: host.logdb.first_index(shard_id, replica_id),
                    last_index: host.logdb.last_index(shard_id, replica_id),
                })
                .collect()
        };
        NodeHostInfo {
            raft_address: host.cfg.raft_address.clone(),
            shards,
            log_info,
            log_info_included: !opt.skip_log_info,
        }
    }
}

fn shard_info(r: &Replica) -> ShardInfo {
    let (leader_id, term) = r.leader();
    let applied_state = r.rsm.applied();
    let applied = r.applied();
    let (commit, core_pending, recovery_guard) = {
        let core = r.core.lock();
        (
            core.raft.status().hard_state.commit,
            core.raft.has_pending_config_change(),
            core.raft.recovery_guard(),
        )
    };
    let requested = !r.pending.lock().config_changes.is_empty();
    ShardInfo {
        shard_id: r.shard_id,
        replica_id: r.replica_id,
        leader_id,
        term,
        is_leader: leader_id == r.replica_id,
        applied,
        snapshot_index: Index(r.snapshot_index.load(Ordering::Acquire)),
        failed: r.failed.lock().is_some(),
        quiesced: r.quiesced.load(Ordering::Relaxed),
        config_change_id: r.rsm.config_change_id(),
        membership: MembershipInfo::from(&applied_state.membership),
        pending_config_change: core_pending || requested,
        catching_up: applied == Index(0) || applied < commit,
        is_non_voting: r.config.is_non_voting,
        is_witness: r.config.is_witness,
        recovery_guard,
    }
}
