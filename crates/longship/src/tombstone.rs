//! Removing a replica's data for good ([`NodeHost::remove_data`]): its log
//! entries and state, its snapshots and its snapshot directory go, and a
//! durable tombstone makes every later start of it fail
//! ([`Error::ReplicaDataRemoved`]), so that a replica removed from its
//! shard can never come back by accident (a restart script, a `Start::New`
//! with old members) holding nothing and voting as if it were new.
//!
//! The tombstone is written first: a crash part-way leaves the replica
//! refused, with whatever is left removed by the next `remove_data` call.
//! It is an empty-bodied text file per replica,
//! `<node_host_dir>/removed/<shard>-<replica>`, written atomically
//! (temporary file, fsync, rename, directory fsync).
//!
//! [`NodeHost::remove_data`]: crate::NodeHost::remove_data

use std::path::{Path, PathBuf};

use longship_raft::{ReplicaId, ShardId};
use longship_storage::snapshot::replica_dir_name;
use longship_storage::vfs::FileSystem;

use crate::error::{Error, Result};
use crate::host::HostState;

/// Directory of the tombstones, in the NodeHost directory.
pub(crate) const REMOVED_DIR: &str = "removed";
const HEADER: &str = "longship removed replica v1\n";

fn tombstone_path(node_host_dir: &Path, shard: ShardId, replica: ReplicaId) -> PathBuf {
    node_host_dir
        .join(REMOVED_DIR)
        .join(format!("{}-{}", shard.0, replica.0))
}

/// Refuses a start (or an import) of a replica whose data was removed
/// from the NodeHost directory `node_host_dir` on `fs`.
pub(crate) fn check_not_removed_in(
    fs: &dyn FileSystem,
    node_host_dir: &Path,
    shard: ShardId,
    replica: ReplicaId,
) -> Result<()> {
    if fs.exists(&tombstone_path(node_host_dir, shard, replica)) {
        return Err(Error::ReplicaDataRemoved {
            shard_id: shard,
            replica_id: replica,
        });
    }
    Ok(())
}

/// [`check_not_removed_in`] the NodeHost's own directory.
pub(crate) fn check_not_removed(
    host: &HostState,
    shard: ShardId,
    replica: ReplicaId,
) -> Result<()> {
    check_not_removed_in(&*host.fs, &host.cfg.node_host_dir, shard, replica)
}

/// Writes the tombstone, then removes the replica's log data and snapshot
/// directory, each durably. The caller made sure the replica does not run
/// and cannot start meanwhile.
pub(crate) fn remove_replica_data(
    host: &HostState,
    shard: ShardId,
    replica: ReplicaId,
) -> Result<()> {
    let fs = &host.fs;
    let dir = host.cfg.node_host_dir.join(REMOVED_DIR);
    let path = tombstone_path(&host.cfg.node_host_dir, shard, replica);
    if !fs.exists(&path) {
        fs.create_dir_all(&dir)?;
        fs.sync_dir(&host.cfg.node_host_dir)?;
        let tmp = dir.join(format!("{}-{}.tmp", shard.0, replica.0));
        let f = fs.create(&tmp)?;
        let body = format!("{HEADER}shard={}\nreplica={}\n", shard.0, replica.0);
        f.write_at(0, body.as_bytes())?;
        f.sync()?;
        drop(f);
        fs.rename(&tmp, &path)?;
        fs.sync_dir(&dir)?;
    }
    host.logdb.remove_node_data(shard, replica)?;
    let snapshots = host.snapshot_root.join(replica_dir_name(shard, replica));
    if fs.exists(&snapshots) {
        fs.remove_dir_all(&snapshots)?;
        fs.sync_dir(&host.snapshot_root)?;
    }
    tracing::info!(shard = %shard, replica = %replica, "replica data removed");
    Ok(())
}
