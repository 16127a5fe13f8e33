//! Offline tools: repairing a shard that lost its quorum for good by
//! importing an exported snapshot ([`import_snapshot`]), and inspecting a
//! NodeHost's directory ([`inspect`]).
//!
//! # Repairing a shard that lost its quorum
//!
//! 1. Before anything is lost (e.g. nightly), export a snapshot:
//!    [`NodeHost::request_snapshot`](crate::NodeHost::request_snapshot) with
//!    [`SnapshotOption::export_path`](crate::SnapshotOption::export_path);
//!    the completed request names the exported directory
//!    ([`SnapshotResult::export_dir`](crate::SnapshotResult::export_dir)).
//!    Keep the membership too
//!    ([`NodeHost::sync_get_shard_membership`](crate::NodeHost::sync_get_shard_membership)).
//! 2. When a majority of the shard's hosts is lost for good, choose the new
//!    members: the surviving replicas, plus replicas with new ids on new
//!    hosts (removed ids are never reused).
//! 3. Stop the NodeHost on every host of the new membership, copy the
//!    exported directory there (under the same name), and run
//!    [`import_snapshot`] (or `longship import-snapshot`) on each with the
//!    same snapshot and the same members. New hosts need no earlier data:
//!    the import creates it.
//! 4. Start the NodeHosts and each replica with
//!    [`Start::Restart`](crate::Start::Restart): every member, new ones
//!    included, restarts from the import.
//!
//! The whole scenario, runnable (`cargo run --example repair`; also run by
//! `cargo test` as this documentation's test):
//!
//! ```
#![doc = include_str!("../examples/repair.rs")]
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use longship_raft::{Index, Membership, RecoveryGuard, ReplicaId, ShardId, SnapshotMeta};
use longship_storage::logdb::{Damage, LogDb, Wal, WalOptions};
use longship_storage::snapshot::{META_FILE_NAME, SnapshotInfo, SnapshotStore};
use longship_storage::vfs::{FileSystem, OsFs};

use crate::builder::DirLock;
use crate::config::NodeHostConfig;
use crate::error::{Error, Result};
#[allow(unused_imports)] // links in the documentation
use crate::info::MembershipInfo;

/// What [`import_snapshot`] installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedSnapshot {
    /// The shard, from the snapshot's metadata.
    pub shard_id: ShardId,
    /// The replica whose history was rewritten.
    pub replica_id: ReplicaId,
    /// Index of the snapshot: the replica's log now starts after it.
    pub index: Index,
}

/// Rewrites the history of replica `replica_id` on the NodeHost of
/// `nh_config` so that it owns the snapshot exported in `snapshot_dir` and
/// the shard's membership becomes `members` (replica id → raft address, all
/// voters). The shard is the one of the snapshot (its metadata names it);
/// there is no shard argument. Entries after the snapshot are gone; replicas
/// of the old membership that are not in `members` are removed for good
/// (their ids can never be used again).
///
/// `snapshot_dir` is the directory [`NodeHost::request_snapshot`] returned
/// in [`SnapshotResult::export_dir`] (`<export_path>/snapshot-<index as 16
/// hex digits>`), or a copy of it under the same name; `members` can be the
/// [`MembershipInfo::voters`] of a membership read earlier, edited.
///
/// Use it only when a shard lost its quorum permanently: stop the NodeHost
/// on every host of the new membership (survivors and new hosts alike), run
/// it there for each one's replica with the same snapshot and the same
/// `members`, then start the NodeHosts and each replica with
/// [`Start::Restart`](crate::Start::Restart): after an import every member
/// restarts from the imported data, none bootstraps or joins. The module
/// documentation walks through the whole repair.
///
/// Checks before changing anything (dragonboat's): `members` is non-empty,
/// contains `replica_id` at this host's raft address
/// (`nh_config.raft_address`), reuses no removed id, keeps every surviving
/// member's address, and makes no former non-voting replica or witness a
/// voter ([`Error::InvalidMembers`], [`Error::ReplicaRemoved`]); the
/// directory exists ([`Error::SnapshotPathNotFound`]), holds a complete
/// snapshot ([`Error::IncompleteSnapshot`]) whose every checksum matches;
/// no running NodeHost holds the directory, and the replica's data was not
/// removed ([`Error::ReplicaDataRemoved`]). The imported membership's
/// config change id is the snapshot's index.
///
/// [`NodeHost::request_snapshot`]: crate::NodeHost::request_snapshot
/// [`SnapshotResult::export_dir`]: crate::SnapshotResult::export_dir
/// [`MembershipInfo::voters`]: crate::MembershipInfo::voters
pub fn import_snapshot(
    nh_config: &NodeHostConfig,
    snapshot_dir: &Path,
    members: &BTreeMap<ReplicaId, String>,
    replica_id: ReplicaId,
) -> Result<ImportedSnapshot> {
    import_on(
        nh_config,
        Arc::new(OsFs::new()),
        true,
        snapshot_dir,
        members,
        replica_id,
    )
}

/// [`import_snapshot`] on a given file system (tests, simulator). The
/// directory lock is then only checked against NodeHosts of this process.
pub fn import_snapshot_with(
    nh_config: &NodeHostConfig,
    fs: Arc<dyn FileSystem>,
    snapshot_dir: &Path,
    members: &BTreeMap<ReplicaId, String>,
    replica_id: ReplicaId,
) -> Result<ImportedSnapshot> {
    import_on(nh_config, fs, false, snapshot_dir, members, replica_id)
}

fn import_on(
    nh_config: &NodeHostConfig,
    fs: Arc<dyn FileSystem>,
    os: bool,
    snapshot_dir: &Path,
    members: &BTreeMap<ReplicaId, String>,
    replica_id: ReplicaId,
) -> Result<ImportedSnapshot> {
    if nh_config.node_host_dir.as_os_str().is_empty() {
        return Err(Error::invalid_config("node_host_dir", "must be set"));
    }
    check_members_alone(nh_config, members, replica_id)?;
    if !fs.exists(snapshot_dir) {
        return Err(Error::SnapshotPathNotFound(snapshot_dir.to_path_buf()));
    }
    if !fs.is_dir(snapshot_dir) {
        return Err(Error::invalid_config(
            "snapshot_dir",
            format!(
                "{} is not a directory: pass the directory request_snapshot returned \
                 in SnapshotResult::export_dir",
                snapshot_dir.display()
            ),
        ));
    }
    // The exported snapshot: read its description, then verify every byte.
    let src_info = read_info(&*fs, snapshot_dir)?;
    let shard = src_info.shard;
    let index = src_info.meta.index;
    let parent = snapshot_dir
        .parent()
        .ok_or_else(|| Error::invalid_config("snapshot_dir", "has no parent directory"))?;
    let src_store =
        SnapshotStore::open_dir(fs.clone(), parent.to_path_buf(), shard, src_info.replica)?;
    let expected = src_store.snapshot_dir(index);
    if expected != snapshot_dir {
        return Err(Error::invalid_config(
            "snapshot_dir",
            format!(
                "{} holds the snapshot at index {index}, which an export names {}: \
                 keep the name the export gave it",
                snapshot_dir.display(),
                expected.file_name().unwrap_or_default().to_string_lossy(),
            ),
        ));
    }
    check_complete(&*fs, snapshot_dir, &src_info)?;
    src_store
        .verify(index)
        .map_err(|e| incomplete_or(e, snapshot_dir))?;

    let old = &src_info.meta.membership;
    check_members_against(old, members)?;
    // The new membership is the snapshot's last config change (as
    // dragonboat's import sets it): an ordered change based on it works.
    let mut membership = Membership {
        config_change_id: index,
        voters: members.clone(),
        removed: old.removed.clone(),
        ..Membership::default()
    };
    for id in old.all_members() {
        if !membership.voters.contains_key(&id) {
            membership.removed.insert(id);
        }
    }
    if let Some(id) = membership
        .voters
        .keys()
        .find(|id| membership.removed.contains(id))
    {
        return Err(Error::ReplicaRemoved(*id));
    }

    fs.create_dir_all(&nh_config.node_host_dir)?;
    let _lock = DirLock::acquire(&nh_config.node_host_dir, os)?;
    crate::tombstone::check_not_removed_in(&*fs, &nh_config.node_host_dir, shard, replica_id)?;
    let me = replica_id;
    let store = SnapshotStore::open(
        fs.clone(),
        &nh_config.node_host_dir.join("snapshots"),
        shard,
        me,
    )?;
    let meta = SnapshotMeta {
        membership,
        witness: false,
        ..src_info.meta.clone()
    };
    // Write the snapshot with the new membership into the replica's store.
    for old_index in store.list()? {
        store.remove(old_index)?;
    }
    let mut sink = store.create(meta, src_info.data_version)?;
    {
        let (_, mut reader) = src_store.open_snapshot(index)?;
        std::io::copy(&mut reader, &mut sink)?;
        sink.flush()?;
    }
    for f in &src_info.external_files {
        let mut r = src_store.open_external(index, &f.name)?;
        sink.write_external_file(&f.name, &mut r)?;
    }
    let info = sink.commit()?;
    let wal = Wal::open(fs.clone(), &nh_config.wal_dir(), WalOptions::default())?;
    wal.import_snapshot(shard, me, &info.meta)?;
    wal.close()?;
    tracing::info!(%shard, replica = %me, %index, "snapshot imported; history rewritten");
    Ok(ImportedSnapshot {
        shard_id: shard,
        replica_id: me,
        index,
    })
}

/// The checks of `members` that need no snapshot: non-empty, valid ids and
/// addresses, the repaired replica listed, at this host's raft address.
fn check_members_alone(
    nh_config: &NodeHostConfig,
    members: &BTreeMap<ReplicaId, String>,
    replica_id: ReplicaId,
) -> Result<()> {
    if members.is_empty() {
        return Err(Error::InvalidMembers("the member list is empty".into()));
    }
    if members.contains_key(&ReplicaId::NONE)
        || members.values().any(|a| a.is_empty() || a.len() > 255)
    {
        return Err(Error::InvalidMembers(
            "ids must be non-zero and addresses 1..=255 bytes".into(),
        ));
    }
    let Some(address) = members.get(&replica_id) else {
        return Err(Error::InvalidMembers(format!(
            "the member list must contain the replica being repaired ({replica_id})"
        )));
    };
    if *address != nh_config.raft_address {
        return Err(Error::InvalidMembers(format!(
            "replica {replica_id} is listed at {address}, but this NodeHost's raft address is {}: \
             import on the host the list names, with its NodeHostConfig",
            nh_config.raft_address
        )));
    }
    Ok(())
}

/// The checks of `members` against the snapshot's membership `old`: a
/// member that survives keeps its address (its peers' data names it there),
/// and a former non-voting replica or witness cannot come back as a voter
/// (it may lack entries a voter must hold, or any state at all).
fn check_members_against(old: &Membership, members: &BTreeMap<ReplicaId, String>) -> Result<()> {
    for (id, address) in members {
        if let Some(before) = old.voters.get(id)
            && before != address
        {
            return Err(Error::InvalidMembers(format!(
                "replica {id} was at {before} and is listed at {address}: a surviving member \
                 keeps its address (give a moved host a new replica id)"
            )));
        }
        if old.non_votings.contains_key(id) {
            return Err(Error::InvalidMembers(format!(
                "replica {id} was non-voting: it cannot come back as a voter (give it a new id)"
            )));
        }
        if old.witnesses.contains_key(id) {
            return Err(Error::InvalidMembers(format!(
                "replica {id} was a witness: it holds no state and cannot come back as a voter \
                 (give it a new id)"
            )));
        }
    }
    Ok(())
}

/// Every file the snapshot's metadata lists is there, at least as long as
/// recorded (a partial copy is [`Error::IncompleteSnapshot`]; whether the
/// bytes are right is the checksums' job).
fn check_complete(fs: &dyn FileSystem, dir: &Path, info: &SnapshotInfo) -> Result<()> {
    let files = std::iter::once((
        longship_storage::snapshot::DATA_FILE_NAME,
        info.data_size_bytes,
    ))
    .chain(
        info.external_files
            .iter()
            .map(|f| (f.name.as_str(), f.size_bytes)),
    );
    for (name, size) in files {
        let path = dir.join(name);
        let len = if fs.exists(&path) {
            fs.open_read(&path)?.len()?
        } else {
            return Err(Error::IncompleteSnapshot {
                dir: dir.to_path_buf(),
                reason: format!("{name} is missing"),
            });
        };
        if len < size {
            return Err(Error::IncompleteSnapshot {
                dir: dir.to_path_buf(),
                reason: format!("{name} has {len} of its {size} bytes"),
            });
        }
    }
    Ok(())
}

/// A verification error of the source snapshot: a missing or short file is
/// [`Error::IncompleteSnapshot`], anything else (a checksum) stays as it is.
fn incomplete_or(e: longship_storage::snapshot::SnapshotError, dir: &Path) -> Error {
    use longship_storage::snapshot::SnapshotError as E;
    match e {
        E::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::IncompleteSnapshot {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            }
        }
        E::Incomplete { .. } | E::NotFound(_) => Error::IncompleteSnapshot {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        },
        e => Error::Snapshot(e),
    }
}

/// The raft address the NodeHost directory `node_host_dir` was started
/// under (its owner record), or `None` if no NodeHost ever started there
/// (a new host of a repair). For offline tools that take the directory
/// alone: pass it as [`NodeHostConfig::raft_address`] to
/// [`import_snapshot`].
pub fn recorded_raft_address(node_host_dir: &Path) -> Result<Option<String>> {
    crate::owner::recorded_address(&OsFs::new(), node_host_dir)
}

fn read_info(fs: &dyn FileSystem, dir: &Path) -> Result<SnapshotInfo> {
    let path = dir.join(META_FILE_NAME);
    if !fs.exists(&path) {
        return Err(not_a_snapshot(fs, dir));
    }
    let f = fs.open_read(&path)?;
    let len = f.len()?;
    if len > longship_storage::snapshot::META_BODY_MAX_BYTES as u64 + 64 {
        return Err(Error::invalid_config(
            "snapshot_dir",
            "snapshot metadata file too large",
        ));
    }
    let mut buf = vec![0u8; len as usize];
    let mut read = 0;
    while read < buf.len() {
        let n = f.read_at(read as u64, &mut buf[read..])?;
        if n == 0 {
            break;
        }
        read += n;
    }
    buf.truncate(read);
    Ok(SnapshotInfo::decode(&buf, &path)?)
}

/// The error for a `snapshot_dir` without snapshot metadata, with a hint
/// when it is the export directory itself (its `snapshot-*` children are
/// the snapshots).
fn not_a_snapshot(fs: &dyn FileSystem, dir: &Path) -> Error {
    let mut children: Vec<String> = fs
        .list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let is_snapshot = name.starts_with("snapshot-")
                && !name.contains(".tmp")
                && fs.exists(&dir.join(&name).join(META_FILE_NAME));
            is_snapshot.then_some(name)
        })
        .collect();
    children.sort();
    let reason = match children.last() {
        Some(newest) => format!(
            "{} is a directory of exported snapshots, not a snapshot: pass one of its \
             snapshot-<index> children (the newest is {})",
            dir.display(),
            dir.join(newest).display()
        ),
        None => {
            return Error::IncompleteSnapshot {
                dir: dir.to_path_buf(),
                reason: format!(
                    "it has no {META_FILE_NAME} (pass the directory request_snapshot returned \
                     in SnapshotResult::export_dir)"
                ),
            };
        }
    };
    Error::invalid_config("snapshot_dir", reason)
}

/// One replica found by [`inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    /// The shard.
    pub shard_id: ShardId,
    /// The replica.
    pub replica_id: ReplicaId,
    /// First available log index.
    pub first_index: Index,
    /// Last log index.
    pub last_index: Index,
    /// Term and vote, and the commit index as last persisted: commit is
    /// written lazily, so the shard may have committed more (up to
    /// `last_index`).
    pub hard_state: longship_raft::HardState,
    /// Snapshot recorded in the log storage.
    pub snapshot_index: Index,
    /// Snapshots in the replica's snapshot store, newest first, each with
    /// `Ok(size)` or the verification error.
    pub snapshots: Vec<(Index, std::result::Result<u64, String>)>,
    /// The recovery guard the replica runs under (damaged log storage may
    /// have cost it acknowledged data; it grants no votes until the guard
    /// is lifted), including one that opening the log would give it now.
    pub recovery: Option<RecoveryGuard>,
}

/// What [`inspect`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Every replica stored, sorted.
    pub replicas: Vec<ReplicaReport>,
    /// Damage at the end of the write-ahead log that opening it would
    /// discard (putting the affected replicas under a recovery guard).
    pub damage: Vec<Damage>,
}

impl Inspection {
    /// Whether anything needs attention: damage, a replica under a guard,
    /// or a snapshot that fails verification.
    pub fn needs_attention(&self) -> bool {
        !self.damage.is_empty()
            || self
                .replicas
                .iter()
                .any(|r| r.recovery.is_some() || r.snapshots.iter().any(|(_, v)| v.is_err()))
    }
}

/// Reads a (stopped) NodeHost's directory without changing anything: the
/// write-ahead log is replayed read-only ([`Wal::inspect`]: every record's
/// checksum is checked, a damaged tail is reported as opening would report
/// it, but nothing is repaired) and every snapshot file is verified. An
/// error names the damaged file and offset (damage that opening would
/// refuse, `Corruption`).
pub fn inspect(nh_config: &NodeHostConfig) -> Result<Inspection> {
    let fs: Arc<dyn FileSystem> = Arc::new(OsFs::new());
    // Nothing is written, but a running NodeHost would be a moving target.
    let _lock = DirLock::acquire(&nh_config.node_host_dir, true)?;
    let seen = Wal::inspect(&*fs, &nh_config.wal_dir())?;
    let root = nh_config.node_host_dir.join("snapshots");
    let mut out = Vec::new();
    for (shard, replica, state) in seen.replicas {
        let mut snapshots = Vec::new();
        let store_dir = root.join(longship_storage::snapshot::replica_dir_name(shard, replica));
        if fs.is_dir(&store_dir) {
            let store = SnapshotStore::open_read_only(fs.clone(), &root, shard, replica)?;
            for index in store.list()? {
                let v = store
                    .verify(index)
                    .map(|i| i.data_size_bytes)
                    .map_err(|e| e.to_string());
                snapshots.push((index, v));
            }
        }
        out.push(ReplicaReport {
            shard_id: shard,
            replica_id: replica,
            first_index: state.first_index,
            last_index: state.last_index,
            hard_state: state.hard_state,
            snapshot_index: state.snapshot.index,
            snapshots,
            recovery: state.recovery,
        });
    }
    Ok(Inspection {
        replicas: out,
        damage: seen.damage,
    })
}
