//! Plain values the [`NodeHost`](crate::NodeHost) API takes and returns:
//! how a replica starts, who leads, what a snapshot request asks and got.

use std::collections::BTreeMap;
use std::path::PathBuf;

use longship_raft::{Index, ReplicaId, Term};

/// Options of a requested snapshot ([`NodeHost::request_snapshot`](crate::NodeHost::request_snapshot)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotOption {
    /// Export a snapshot into this directory instead of taking a local one,
    /// as its child `snapshot-<index as 16 hex digits>` (a copy
    /// [`tools::import_snapshot`](crate::tools::import_snapshot) takes). The directory is created if
    /// missing (and interrupted exports' temporary directories in it are
    /// removed). The completed request names the exported directory
    /// ([`SnapshotResult::export_dir`]).
    ///
    /// An export is a backup: it changes nothing on the replica (no local
    /// snapshot, no log compaction), and it is taken whenever the replica
    /// has applied anything, idle or not. Exports are named by index only:
    /// exporting an index that the directory already holds (a second export
    /// of an idle shard, another shard's snapshot at the same index) fails
    /// with [`Error::Snapshot`](crate::Error::Snapshot) ("already exists") and leaves the first
    /// export as it was; use one directory per shard. A witness has no
    /// state to export ([`Error::Witness`](crate::Error::Witness)).
    ///
    /// [`tools::import_snapshot`](crate::tools::import_snapshot): crate::tools::import_snapshot
    pub export_path: Option<PathBuf>,
    /// Entries to keep in the log behind this snapshot instead of the
    /// replica's `compaction_overhead`; for this request only (automatic
    /// snapshots and other requests keep theirs). Refused with
    /// `export_path` ([`Error::InvalidConfig`](crate::Error::InvalidConfig)): an export compacts nothing.
    pub compaction_overhead: Option<u64>,
}

/// A completed snapshot request ([`NodeHost::request_snapshot`](crate::NodeHost::request_snapshot)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotResult {
    /// Index of the snapshot (the last entry it covers).
    pub index: Index,
    /// The exported snapshot's directory (`<export_path>/snapshot-<index as
    /// 16 hex digits>`) when [`SnapshotOption::export_path`] was set: pass it
    /// to [`tools::import_snapshot`](crate::tools::import_snapshot) as is.
    pub export_dir: Option<PathBuf>,
}

/// The leader of a shard as known by the local replica
/// ([`NodeHost::get_leader`](crate::NodeHost::get_leader)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leading replica.
    pub replica_id: ReplicaId,
    /// The term it leads in.
    pub term: Term,
}

/// How [`NodeHost::start_replica`](crate::NodeHost::start_replica) starts a replica: bootstrap a new shard,
/// restart one with data on this host, or join an existing shard.
///
/// Which one fits depends on what this NodeHost's log storage holds of the
/// replica ([`NodeHost::has_node_info`](crate::NodeHost::has_node_info) tells): `New` and `Join` need it to
/// hold nothing, `Restart` needs it to hold data. A wrong choice changes
/// nothing and fails with [`Error::ReplicaHasData`](crate::Error::ReplicaHasData) or
/// [`Error::ReplicaHasNoData`](crate::Error::ReplicaHasNoData).
///
/// Why the check, rather than ignoring the members of a replica that
/// already has data (as dragonboat does): a replica repaired with
/// [`tools::import_snapshot`](crate::tools::import_snapshot) owns the
/// imported membership, and a later `New` with the old members (or a
/// `Join`) would be silently ignored, hiding a mistake in a repair script.
/// After an import, every member of the new membership (survivors and new
/// hosts alike) is started with `Restart`.
///
/// A program that starts the same way after every reboot picks the variant
/// from stored data:
///
/// ```no_run
/// # use longship::{NodeHost, ReplicaId, ShardId, Start};
/// # use std::collections::BTreeMap;
/// # fn f(nh: &NodeHost, members: BTreeMap<ReplicaId, String>) {
/// let start = if nh.has_node_info(ShardId(128), ReplicaId(1)) {
///     Start::Restart
/// } else {
///     Start::New(members)
/// };
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Bootstrap a new shard whose initial voters are these replicas (replica
    /// id → raft address; this replica among them). Every initial member is
    /// started with the same map. Witness and non-voting replicas cannot be
    /// initial members: they are added to a running shard and `Join`.
    New(BTreeMap<ReplicaId, String>),
    /// Restart a replica from the data this NodeHost holds of it: after a
    /// reboot, [`NodeHost::stop_replica`](crate::NodeHost::stop_replica), or an import by
    /// [`tools::import_snapshot`](crate::tools::import_snapshot).
    Restart,
    /// Start a replica that was added to a running shard
    /// ([`NodeHost::request_add_replica`](crate::NodeHost::request_add_replica) and the like) and has never run on
    /// this host: it learns the membership and the state from the leader.
    /// The start records the replica in the log storage (durably), so every
    /// later start of it, even one before it received anything, is a
    /// `Restart`.
    Join,
}
