//! What a NodeHost runs and stores, for operators and master clients
//! ([`NodeHost::get_node_host_info_with`](crate::NodeHost::get_node_host_info_with), dragonboat's `GetNodeHostInfo`).

use std::sync::atomic::Ordering;

use std::collections::{BTreeMap, BTreeSet};

use longship_raft::{Index, Membership, ReplicaId, ShardId, Term};

use crate::nodehost::NodeHost;
use crate::replica::Replica;
use crate::types::Leader;

/// What [`NodeHost::get_node_host_info_with`](crate::NodeHost::get_node_host_info_with) gathers (dragonboat's
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

/// A shard's membership, as returned by [`NodeHost::sync_get_shard_membership`](crate::NodeHost::sync_get_shard_membership).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipInfo {
    /// Index of the config change that produced it; pass it as the
    /// `config_change_index` of the next membership change (checked when
    /// [`Config::ordered_config_change`](crate::Config::ordered_config_change) is set).
    pub config_change_id: Index,
    /// Voting replicas and their addresses (the shape [`Start::New`](crate::Start::New) and
    /// [`tools::import_snapshot`](crate::tools::import_snapshot) take).
    pub voters: BTreeMap<ReplicaId, String>,
    /// Non-voting replicas.
    pub non_votings: BTreeMap<ReplicaId, String>,
    /// Witnesses.
    pub witnesses: BTreeMap<ReplicaId, String>,
    /// Removed replica ids (never usable again).
    pub removed: BTreeSet<ReplicaId>,
}

impl From<&Membership> for MembershipInfo {
    fn from(m: &Membership) -> Self {
        MembershipInfo {
            config_change_id: m.config_change_id,
            voters: m.voters.clone(),
            non_votings: m.non_votings.clone(),
            witnesses: m.witnesses.clone(),
            removed: m.removed.clone(),
        }
    }
}

/// One replica in [`NodeHostInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard.
    pub shard_id: ShardId,
    /// The local replica.
    pub replica_id: ReplicaId,
    /// The known leader ([`ReplicaId::NONE`] when none is known).
    pub leader_id: ReplicaId,
    /// The current term of the local replica.
    pub term: Term,
    /// Whether the local replica leads.
    pub is_leader: bool,
    /// Applied index.
    pub applied: Index,
    /// Index of the newest snapshot.
    pub snapshot_index: Index,
    /// Whether the replica stopped after a failure.
    pub failed: bool,
    /// Whether the replica is quiesced (its shard idle, no heartbeats).
    pub quiesced: bool,
    /// The config-change id of the membership the replica applied (the
    /// base for an ordered membership change; not linearizable, see
    /// [`NodeHost::sync_get_shard_membership`](crate::NodeHost::sync_get_shard_membership)).
    pub config_change_id: Index,
    /// The membership the replica applied (dragonboat's `Nodes`, with the
    /// non-voting replicas, witnesses and removed ids; not linearizable).
    pub membership: MembershipInfo,
    /// A membership change is in progress: proposed and not yet applied,
    /// as this host knows it (the leader's log, or a change requested
    /// through this host still waiting).
    pub pending_config_change: bool,
    /// The replica is still catching up (dragonboat's `Pending`): it has
    /// applied nothing yet, or fewer entries than it knows are committed
    /// (a replica just started, joined or restored from a snapshot).
    pub catching_up: bool,
    /// The local replica is non-voting.
    pub is_non_voting: bool,
    /// The local replica is a witness.
    pub is_witness: bool,
    /// The local replica runs under a recovery guard: its storage lost
    /// data it may have acknowledged, and it neither votes nor campaigns
    /// until a leader has brought its log past that (docs/recovery.md).
    pub recovery_guard: Option<longship_raft::RecoveryGuard>,
}

impl ShardInfo {
    /// The known leader and its term, as [`NodeHost::get_leader`](crate::NodeHost::get_leader) reports
    /// it (`None` while no leader is known).
    pub fn leader(&self) -> Option<Leader> {
        (!self.leader_id.is_none()).then_some(Leader {
            replica_id: self.leader_id,
            term: self.term,
        })
    }
}

/// What a NodeHost hosts, from [`NodeHost::get_node_host_info`](crate::NodeHost::get_node_host_info).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHostInfo {
    /// The host's raft address.
    pub raft_address: String,
    /// Running replicas.
    pub shards: Vec<ShardInfo>,
    /// Replicas with data in log storage, running or not (empty when
    /// asked without, see `log_info_included`).
    pub log_info: Vec<LogInfo>,
    /// Whether `log_info` was gathered
    /// ([`NodeHostInfoOption::skip_log_info`](crate::NodeHostInfoOption::skip_log_info)
    /// unset).
    pub log_info_included: bool,
}

/// One replica's log in [`NodeHostInfo::log_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogInfo {
    /// The shard.
    pub shard_id: ShardId,
    /// The replica.
    pub replica_id: ReplicaId,
    /// First index the log holds (entries before it were compacted).
    pub first_index: Index,
    /// Last index the log holds.
    pub last_index: Index,
}
