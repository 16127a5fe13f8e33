//! The master's replicated state and the commands that change it.
//!
//! Everything here is plain data (serialised with serde as JSON in the
//! master shard's log and snapshots). Ids are bare `u64`s and hosts are
//! named by their raft address ([`HostId`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A host's identity: its raft address (unique in a deployment).
pub type HostId = String;

/// What the master decides with. Part of the replicated state (set when
/// the master shard's state machine is created; every replica is created
/// with the same settings), so every replica decides alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterConfig {
    /// The deployment the master manages (NodeHosts of others are refused).
    pub deployment_id: u64,
    /// A host whose last report is older than this (in replicated time) is
    /// declared dead and its replicas are replaced.
    pub dead_after_ms: u64,
    /// A new replica counts as caught up once its applied index is at most
    /// this many entries behind the leader's.
    pub catch_up_lag: u64,
    /// Whether to move replicas and leaders for balance.
    pub rebalance: bool,
    /// Least replicated time between two balancing decisions (rate limit).
    pub balance_interval_ms: u64,
    /// A leadership transfer not seen done after this long is given up.
    pub transfer_timeout_ms: u64,
    /// Most replicated time one tick may add (a leader that stalled, or
    /// was elected after a long outage, does not jump time forward).
    pub max_tick_ms: u64,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            deployment_id: 0,
            dead_after_ms: 30_000,
            catch_up_lag: 100,
            rebalance: true,
            balance_interval_ms: 1_000,
            transfer_timeout_ms: 10_000,
            max_tick_ms: 1_000,
        }
    }
}

/// A shard's membership as its leader reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Index of the config change that produced it.
    pub config_change_id: u64,
    /// Voters: replica id → host.
    pub voters: BTreeMap<u64, HostId>,
    /// Non-voting replicas: replica id → host.
    pub non_votings: BTreeMap<u64, HostId>,
}

impl Membership {
    /// Whether `replica` is a voter or a non-voting member.
    pub fn contains(&self, replica: u64) -> bool {
        self.voters.contains_key(&replica) || self.non_votings.contains_key(&replica)
    }
}

/// One replica in a host's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The shard.
    pub shard: u64,
    /// The replica.
    pub replica: u64,
    /// Whether it leads.
    pub leader: bool,
    /// Its term.
    pub term: u64,
    /// The leader it knows (0 when none).
    pub leader_id: u64,
    /// Its applied index.
    pub applied: u64,
    /// Entries its log holds (last − first + 1, 0 when empty).
    pub log_entries: u64,
    /// The membership it applied (leaders only).
    pub membership: Option<Membership>,
    /// Whether it stopped after a failure.
    pub failed: bool,
    /// A membership change is proposed and not applied yet, as this
    /// replica knows it (`longship::ReplicaReport::pending_config_change`).
    #[serde(default)]
    pub pending_change: bool,
}

/// A host's report as the master stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The reporting host.
    pub host: HostId,
    /// Its deployment id.
    pub deployment_id: u64,
    /// Replicas it is willing to hold.
    pub capacity: u32,
    /// Running replicas.
    pub replicas: Vec<ReplicaState>,
    /// Replicas it stores data of but does not run: (shard, replica).
    pub stored: Vec<(u64, u64)>,
    /// What the application says about the host (its client address, say).
    #[serde(default)]
    pub metadata: String,
}

/// How a replica should be started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartKind {
    /// A new shard with these initial voters (replica id → host).
    New(BTreeMap<u64, HostId>),
    /// A replica added to a running shard.
    Join,
}

/// What the master asks one host to do (the wire form of
/// `longship::MasterRequest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start a replica on the host.
    StartReplica {
        /// The shard.
        shard: u64,
        /// The replica.
        replica: u64,
        /// New shard or join.
        start: StartKind,
        /// As a non-voting replica.
        non_voting: bool,
    },
    /// (To the shard's leader) add a non-voting replica on `host`.
    AddNonVoting {
        /// The shard.
        shard: u64,
        /// The new replica.
        replica: u64,
        /// Its host.
        host: HostId,
        /// The `config_change_id` of the membership the change is based
        /// on: the change takes effect only on that membership (see
        /// [`Membership::config_change_id`]).
        #[serde(default)]
        based_on: u64,
    },
    /// (To the shard's leader) promote a non-voting replica.
    Promote {
        /// The shard.
        shard: u64,
        /// The replica.
        replica: u64,
        /// As for `AddNonVoting`.
        #[serde(default)]
        based_on: u64,
    },
    /// (To the shard's leader) remove a replica for good.
    Delete {
        /// The shard.
        shard: u64,
        /// The replica.
        replica: u64,
        /// As for `AddNonVoting`.
        #[serde(default)]
        based_on: u64,
    },
    /// (To the shard's leader) move leadership to `target`.
    TransferLeader {
        /// The shard.
        shard: u64,
        /// The replica that should lead.
        target: u64,
    },
    /// Stop a removed replica and delete its data.
    RemoveReplica {
        /// The shard.
        shard: u64,
        /// The replica.
        replica: u64,
    },
}

/// Why a move was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveReason {
    /// A replica was lost (its host is dead) or the shard has too few.
    Repair,
    /// Replicas per host were out of balance.
    Balance,
}

/// Where a move is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The new replica is started (joining, non-voting) and its addition
    /// proposed.
    AddLearner,
    /// The new replica is a non-voting member; waiting until its applied
    /// index is close to the leader's.
    CatchUp,
    /// Promoting the new replica to voter.
    Promote,
    /// Removing the old replica (leadership moved off it first).
    Remove,
    /// The new replica's host died before promotion: removing the new
    /// (non-voting) replica instead.
    Abort,
}

/// An operation in flight on one shard (at most one per shard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Bootstrapping a new shard on these replicas (replica id → host).
    Create {
        /// The initial voters.
        members: BTreeMap<u64, HostId>,
    },
    /// Adding a replica (then removing one): add-catch-up-promote-remove.
    Move {
        /// The new replica's id (fresh, never used in the shard before).
        add: u64,
        /// Its host.
        to: HostId,
        /// The replica to remove once the new one votes, and its host.
        remove: Option<(u64, HostId)>,
        /// Where the move is.
        phase: Phase,
        /// Why.
        reason: MoveReason,
    },
    /// Moving leadership to replica `to`.
    Transfer {
        /// The replica that should lead.
        to: u64,
    },
    /// Removing a member the master did not place (a stray): a request
    /// that took effect after the master had given up its operation (an
    /// answer carried out late adds a replica whose move was aborted, say).
    Evict {
        /// The stray member.
        replica: u64,
    },
}

/// An operation and when it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// The operation.
    pub op: Op,
    /// Replicated time it started at.
    pub started_ms: u64,
}

/// What the master knows of a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Replicated time of its last report.
    pub last_seen_ms: u64,
    /// Declared dead (silent for longer than `dead_after_ms`); cleared when
    /// it reports again.
    pub dead: bool,
    /// Being drained: it receives no new replicas and its replicas are
    /// moved to other hosts (set by [`Command::Drain`], kept across
    /// reports).
    #[serde(default)]
    pub draining: bool,
    /// Its last report.
    pub report: Report,
}

/// A shard the master manages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Replicas the shard should have.
    pub desired: u32,
    /// The voters the master placed: replica id → host.
    pub placement: BTreeMap<u64, HostId>,
    /// The id the next new replica gets. Greater than every id the shard
    /// ever used: ids are never reused.
    pub next_replica_id: u64,
    /// Replicas removed from the shard (their data is deleted where found).
    pub removed: BTreeSet<u64>,
}

/// Counters of what the master did (for operators and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Hosts declared dead.
    pub hosts_declared_dead: u64,
    /// Moves finished (replica added and, where asked, one removed).
    pub moves_done: u64,
    /// Of `moves_done`, those that repaired a shard (replaced a replica
    /// of a dead or drained host, or added a missing one).
    #[serde(default)]
    pub repairs_done: u64,
    /// Moves given up (the new replica's host died first).
    pub moves_aborted: u64,
    /// Leadership transfers finished or given up.
    pub transfers: u64,
    /// Stray members removed ([`Op::Evict`]).
    #[serde(default)]
    pub strays_removed: u64,
}

/// The master's whole replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterState {
    /// Decision settings.
    pub config: MasterConfig,
    /// Replicated time: the sum of the leader's tick intervals.
    pub now_ms: u64,
    /// Hosts that ever reported.
    pub hosts: BTreeMap<HostId, HostRecord>,
    /// Managed shards.
    pub shards: BTreeMap<u64, ShardRecord>,
    /// Operations in flight, by shard: at most one per shard.
    pub ops: BTreeMap<u64, OpRecord>,
    /// Replicated time of the last balancing decision.
    pub last_balance_ms: u64,
    /// Replicated time at which the current master leader proposed its
    /// first tick: silence is counted only from then on, so every host
    /// gets a full `dead_after_ms` to reach a new master leader.
    #[serde(default)]
    pub leader_since_ms: u64,
    /// What the master did.
    pub counters: Counters,
}

impl MasterState {
    /// An empty state deciding with `config`.
    pub fn new(config: MasterConfig) -> MasterState {
        MasterState {
            config,
            now_ms: 0,
            hosts: BTreeMap::new(),
            shards: BTreeMap::new(),
            ops: BTreeMap::new(),
            last_balance_ms: 0,
            leader_since_ms: 0,
            counters: Counters::default(),
        }
    }
}

/// A command of the master shard's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Proposed by the master shard's leader every tick: advances
    /// replicated time by `elapsed_ms` (at most `max_tick_ms`) and runs
    /// the decision function.
    Tick {
        /// Time since the leader's previous tick (0 for its first).
        elapsed_ms: u64,
        /// The first tick of a leadership (restarts the count of every
        /// host's silence).
        #[serde(default)]
        first: bool,
    },
    /// A host's report; the result lists what the host should do.
    Report(Report),
    /// Create a shard with `replicas` replicas on as many live hosts.
    CreateShard {
        /// The new shard's id.
        shard: u64,
        /// How many replicas.
        replicas: u32,
    },
    /// Take a running shard under management (the master's own shard, say):
    /// its voters and removed ids as its leader sees them. Refused when the
    /// shard is known.
    AdoptShard {
        /// The shard.
        shard: u64,
        /// Replicas it should have.
        desired: u32,
        /// Its voters: replica id → host.
        voters: BTreeMap<u64, HostId>,
        /// Its removed replica ids.
        removed: BTreeSet<u64>,
    },
    /// Start (`drain`) or end draining a known host: while draining it
    /// receives no new replica and its replicas are moved off it.
    Drain {
        /// The host.
        host: HostId,
        /// Drain or not.
        drain: bool,
    },
}
