//! The snapshot store of one replica: create, list, open, verify, load the
//! newest valid snapshot, remove.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use longship_raft::{Index, ReplicaId, ShardId, SnapshotMeta};
use parking_lot::Mutex;

use crate::vfs::FileSystem;

use super::error::{Result, SkippedSnapshot, SnapshotError, io_err};
use super::io::{SnapshotReader, read_meta_file};
use super::meta::{SnapshotInfo, validate_external_name};
use super::sink::SnapshotSink;
use super::staging::Staging;
use super::{
    DATA_FILE_NAME, META_FILE_NAME, delete_dir_name, is_leftover_name, parse_snapshot_dir_name,
    replica_dir_name, snapshot_dir_name, temp_dir_name,
};

/// How thoroughly [`SnapshotStore::load_newest_with`] checks a snapshot
/// before accepting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Metadata checksum, presence and length of every file, and the
    /// checksum of every file (reads all the data once).
    Full,
    /// Metadata checksum, presence and length of every file; file checksums
    /// are then only checked when the files are read.
    Structure,
}

/// What [`SnapshotStore::load_newest`] found.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The newest snapshot that passed the checks.
    pub info: SnapshotInfo,
    /// Newer snapshots that were corrupt or incomplete, newest first. Each
    /// was also logged as a warning. Not empty means something damaged the
    /// snapshot directory; the caller decides whether that is acceptable
    /// (for example, whether the log still reaches back to `info`).
    pub skipped: Vec<SkippedSnapshot>,
}

/// State shared by a store and the sinks and receivers it hands out.
pub(crate) struct Shared {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    pub(crate) shard: ShardId,
    pub(crate) replica: ReplicaId,
    /// Serialises "is the final name free?" with the rename that takes it,
    /// and removals.
    publish_lock: Mutex<()>,
    /// Makes temporary and deletion directory names unique within this store.
    next_temp_id: AtomicU64,
    /// How many directories, from `dir`'s parent up, hold an entry this
    /// store may have to create (see [`Shared::ensure_dir`]).
    ancestors_to_sync: usize,
    /// `ensure_dir` succeeded: `dir` and its entries up the tree are durable.
    dir_durable: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn snapshot_dir(&self, index: Index) -> PathBuf {
        self.dir.join(snapshot_dir_name(index))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_temp_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new temporary directory for a snapshot at `index`. The store's
    /// directory is created (durably) by the first snapshot written into
    /// it, not when the store is opened: most replicas of a host with many
    /// shards never snapshot, and a directory and its parent's fsync each
    /// made starting 30,000 replicas take tens of seconds.
    pub(crate) fn new_staging(&self, index: Index) -> Result<Staging> {
        self.ensure_dir()?;
        Staging::create(
            self.fs.clone(),
            &self.dir,
            &temp_dir_name(index, self.next_id()),
        )
    }

    /// Creates the store's directory if needed and makes it durable: syncs
    /// each of the `ancestors_to_sync` directories above it, whether or
    /// not this call created anything. A directory that exists is not
    /// necessarily durable: an earlier attempt may have created it and
    /// then failed to sync its parent (an I/O error), and a snapshot
    /// published into it would vanish with it at a crash while the log
    /// storage, compacted behind the snapshot, remembers it (simulator seed
    /// 13101315). Done once per store.
    fn ensure_dir(&self) -> Result<()> {
        if self.dir_durable.load(Ordering::Acquire) {
            return Ok(());
        }
        self.fs
            .create_dir_all(&self.dir)
            .map_err(io_err("create directory", &self.dir))?;
        let mut at = self.dir.parent();
        for _ in 0..self.ancestors_to_sync {
            let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) else {
                break;
            };
            self.fs.sync_dir(d).map_err(io_err("fsync directory", d))?;
            at = d.parent();
        }
        self.dir_durable.store(true, Ordering::Release);
        Ok(())
    }

    /// Reads and checks the metadata of the snapshot at `index`.
    pub(crate) fn read_info(&self, index: Index) -> Result<SnapshotInfo> {
        let dir = self.snapshot_dir(index);
        if !self.fs.exists(&dir) {
            return Err(SnapshotError::NotFound(index));
        }
        let meta_path = dir.join(META_FILE_NAME);
        let info = read_meta_file(&*self.fs, &meta_path)?;
        if info.meta.index != index {
            return Err(SnapshotError::Corruption {
                file: meta_path,
                offset: 0,
                reason: format!(
                    "directory of index {index} holds a snapshot at index {}",
                    info.meta.index
                ),
            });
        }
        if info.shard != self.shard {
            return Err(SnapshotError::Corruption {
                file: meta_path,
                offset: 0,
                reason: format!(
                    "snapshot of shard {} in the store of shard {}",
                    info.shard, self.shard
                ),
            });
        }
        Ok(info)
    }

    /// [`read_info`](Self::read_info) plus: every file it lists is present
    /// with the recorded length.
    pub(crate) fn check_structure(&self, index: Index) -> Result<SnapshotInfo> {
        let info = self.read_info(index)?;
        self.open_data(&info)?;
        for f in &info.external_files {
            self.open_external(&info, &f.name)?;
        }
        Ok(info)
    }

    pub(crate) fn open_data(&self, info: &SnapshotInfo) -> Result<SnapshotReader> {
        let path = self.snapshot_dir(info.meta.index).join(DATA_FILE_NAME);
        SnapshotReader::open(&*self.fs, path, info.data_size_bytes, info.data_crc32c)
    }

    pub(crate) fn open_external(&self, info: &SnapshotInfo, name: &str) -> Result<SnapshotReader> {
        let f = info
            .external_files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| {
                SnapshotError::InvalidArgument(format!(
                    "snapshot {} has no external file {name:?}",
                    info.meta.index
                ))
            })?;
        let path = self.snapshot_dir(info.meta.index).join(&f.name);
        SnapshotReader::open(&*self.fs, path, f.size_bytes, f.crc32c)
    }

    /// Fails with `AlreadyExists` if a structurally valid snapshot sits at `index`.
    pub(crate) fn check_free(&self, index: Index) -> Result<()> {
        if self.fs.exists(&self.snapshot_dir(index)) && self.check_structure(index).is_ok() {
            return Err(SnapshotError::AlreadyExists(index));
        }
        Ok(())
    }

    /// Seals `staging` with `info` and publishes it under the final name of
    /// `info.meta.index`. A corrupt or incomplete snapshot at that index is
    /// replaced; a valid one makes this fail with `AlreadyExists`.
    pub(crate) fn publish(&self, staging: Staging, info: &SnapshotInfo) -> Result<PathBuf> {
        let index = info.meta.index;
        staging.seal(info)?;
        let _guard = self.publish_lock.lock();
        if self.fs.exists(&self.snapshot_dir(index)) {
            match self.check_structure(index) {
                Ok(_) => return Err(SnapshotError::AlreadyExists(index)),
                Err(e) => {
                    tracing::warn!(shard = %self.shard, replica = %self.replica, %index, error = %e,
                        "replacing a damaged snapshot with a new one at the same index");
                    self.remove_locked(index)?;
                }
            }
        }
        let path = staging.publish(&snapshot_dir_name(index))?;
        tracing::debug!(shard = %self.shard, replica = %self.replica, %index,
            size_bytes = info.data_size_bytes, "snapshot committed");
        Ok(path)
    }

    /// Removes the snapshot at `index`: first renamed out of the way
    /// (atomically, durably) so no half-removed snapshot is ever visible
    /// under its final name, then deleted.
    fn remove_locked(&self, index: Index) -> Result<()> {
        let dir = self.snapshot_dir(index);
        let doomed = self.dir.join(delete_dir_name(index, self.next_id()));
        self.fs
            .rename(&dir, &doomed)
            .map_err(io_err("rename", &dir))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("fsync directory", &self.dir))?;
        self.fs
            .remove_dir_all(&doomed)
            .map_err(io_err("remove", &doomed))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err("fsync directory", &self.dir))
    }
}

/// The snapshots of one replica, in one directory.
///
/// Cheap to share behind an `Arc`; every method takes `&self`. Sinks and
/// receivers it hands out may outlive it.
pub struct SnapshotStore {
    shared: Arc<Shared>,
}

impl SnapshotStore {
    /// Opens the store of `shard`/`replica` in
    /// `root/snapshot-<shard>-<replica>/`. The directory is created when
    /// the first snapshot is written; until then the store lists nothing.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        root: &Path,
        shard: ShardId,
        replica: ReplicaId,
    ) -> Result<SnapshotStore> {
        // The replica's directory lives in `root`, which may itself be
        // new (a NodeHost's `snapshots/`): two directories hold entries
        // this store may create.
        Self::open_in(
            fs,
            root.join(replica_dir_name(shard, replica)),
            shard,
            replica,
            2,
        )
    }

    /// Opens a store in exactly `dir` (created by its first snapshot).
    ///
    /// Temporary and half-deleted snapshot directories left by a crash are
    /// removed here.
    pub fn open_dir(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        shard: ShardId,
        replica: ReplicaId,
    ) -> Result<SnapshotStore> {
        // E.g. a directory inside a replica's store, inside the snapshot
        // root: three directories up may need their new entries synced.
        Self::open_in(fs, dir, shard, replica, 3)
    }

    fn open_in(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        shard: ShardId,
        replica: ReplicaId,
        ancestors_to_sync: usize,
    ) -> Result<SnapshotStore> {
        let mut removed = 0usize;
        let existing = if fs.exists(&dir) {
            fs.list(&dir).map_err(io_err("list", &dir))?
        } else {
            Vec::new()
        };
        for path in existing {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !is_leftover_name(name) {
                continue;
            }
            tracing::info!(path = %path.display(), "removing a snapshot directory left by an interrupted write or removal");
            if fs.is_dir(&path) {
                fs.remove_dir_all(&path).map_err(io_err("remove", &path))?;
            } else {
                fs.remove_file(&path).map_err(io_err("remove", &path))?;
            }
            removed += 1;
        }
        if removed > 0 {
            fs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
        }
        Ok(SnapshotStore {
            shared: Arc::new(Shared {
                fs,
                dir,
                shard,
                replica,
                publish_lock: Mutex::new(()),
                next_temp_id: AtomicU64::new(0),
                ancestors_to_sync,
                dir_durable: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Opens the existing store of `shard`/`replica` under `root` without
    /// changing anything: no directory is created and leftovers of
    /// interrupted writes are not removed (they are never listed anyway).
    /// For inspection tools; use only the reading methods on it.
    pub fn open_read_only(
        fs: Arc<dyn FileSystem>,
        root: &Path,
        shard: ShardId,
        replica: ReplicaId,
    ) -> Result<SnapshotStore> {
        let dir = root.join(replica_dir_name(shard, replica));
        if !fs.is_dir(&dir) {
            return Err(SnapshotError::Io {
                op: "open",
                path: dir,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        }
        Ok(SnapshotStore {
            shared: Arc::new(Shared {
                fs,
                dir,
                shard,
                replica,
                publish_lock: Mutex::new(()),
                next_temp_id: AtomicU64::new(0),
                ancestors_to_sync: 0,
                // Read-only: never writes.
                dir_durable: std::sync::atomic::AtomicBool::new(true),
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The file system the store lives on.
    pub fn file_system(&self) -> &Arc<dyn FileSystem> {
        &self.shared.fs
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The shard whose snapshots this store holds.
    pub fn shard(&self) -> ShardId {
        self.shared.shard
    }

    /// The replica whose snapshots this store holds.
    pub fn replica(&self) -> ReplicaId {
        self.shared.replica
    }

    /// The directory the snapshot at `index` has (or would have) once committed.
    pub fn snapshot_dir(&self, index: Index) -> PathBuf {
        self.shared.snapshot_dir(index)
    }

    /// Starts writing a snapshot described by `meta` (index, term,
    /// membership with its config-change index, on-disk index, witness flag)
    /// whose data is in format `data_version` of the state machine.
    /// `meta.file_size` is replaced by the size actually written.
    ///
    /// Fails with `EmptySnapshot` for index 0 and `AlreadyExists` if a valid
    /// snapshot at that index is already there.
    pub fn create(&self, meta: SnapshotMeta, data_version: u32) -> Result<SnapshotSink> {
        if meta.is_empty() {
            return Err(SnapshotError::EmptySnapshot {
                path: self.snapshot_dir(meta.index),
            });
        }
        self.shared.check_free(meta.index)?;
        let staging = self.shared.new_staging(meta.index)?;
        SnapshotSink::new(self.shared.clone(), staging, meta, data_version)
    }

    /// Indexes of the committed snapshots, newest first. Only names are
    /// looked at; a listed snapshot may still turn out corrupt.
    pub fn list(&self) -> Result<Vec<Index>> {
        let dir = &self.shared.dir;
        if !self.shared.fs.exists(dir) {
            // Nothing was ever written (see `Shared::new_staging`).
            return Ok(Vec::new());
        }
        let mut out: Vec<Index> = self
            .shared
            .fs
            .list(dir)
            .map_err(io_err("list", dir))?
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(parse_snapshot_dir_name))
            .collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    }

    /// The metadata of the snapshot at `index`, with its checksum verified
    /// and every file it lists checked for presence and length.
    pub fn info(&self, index: Index) -> Result<SnapshotInfo> {
        self.shared.check_structure(index)
    }

    /// Opens the snapshot at `index` for reading: checks as [`info`](Self::info)
    /// does and returns a streaming reader of the data file, which checks the
    /// data checksum when it reaches the end.
    pub fn open_snapshot(&self, index: Index) -> Result<(SnapshotInfo, SnapshotReader)> {
        let info = self.shared.check_structure(index)?;
        let reader = self.shared.open_data(&info)?;
        Ok((info, reader))
    }

    /// Opens the external file `name` of the snapshot at `index` for reading
    /// (checked the same way as the data file).
    pub fn open_external(&self, index: Index, name: &str) -> Result<SnapshotReader> {
        validate_external_name(name)?;
        let info = self.shared.read_info(index)?;
        self.shared.open_external(&info, name)
    }

    /// Reads every file of the snapshot at `index` and checks all lengths
    /// and checksums.
    pub fn verify(&self, index: Index) -> Result<SnapshotInfo> {
        let info = self.shared.check_structure(index)?;
        self.shared.open_data(&info)?.verify_to_end()?;
        for f in &info.external_files {
            self.shared.open_external(&info, &f.name)?.verify_to_end()?;
        }
        Ok(info)
    }

    /// The newest snapshot that passes full verification
    /// ([`Verify::Full`]); see [`load_newest_with`](Self::load_newest_with).
    pub fn load_newest(&self) -> Result<LoadedSnapshot> {
        self.load_newest_with(Verify::Full)
    }

    /// The newest snapshot that passes `verify`. Corrupt or incomplete newer
    /// ones are skipped, logged and listed in the result.
    ///
    /// Errors: `NoSnapshot` if there is none at all, `NoValidSnapshot` if
    /// every one is damaged. An I/O error is returned as such rather than
    /// skipped, since it says nothing about the snapshot's bytes.
    pub fn load_newest_with(&self, verify: Verify) -> Result<LoadedSnapshot> {
        self.load_newest_upto(Index(u64::MAX), verify)
    }

    /// As [`load_newest_with`](Self::load_newest_with), among the snapshots
    /// at or below `upto` only.
    fn load_newest_upto(&self, upto: Index, verify: Verify) -> Result<LoadedSnapshot> {
        let indexes: Vec<Index> = self.list()?.into_iter().filter(|&i| i <= upto).collect();
        if indexes.is_empty() {
            return Err(SnapshotError::NoSnapshot);
        }
        let mut skipped = Vec::new();
        for index in indexes {
            let checked = match verify {
                Verify::Full => self.verify(index),
                Verify::Structure => self.shared.check_structure(index),
            };
            match checked {
                Ok(info) => return Ok(LoadedSnapshot { info, skipped }),
                // NotFound: removed since it was listed.
                Err(error)
                    if error.is_corruption() || matches!(error, SnapshotError::NotFound(_)) =>
                {
                    tracing::warn!(shard = %self.shard(), replica = %self.replica(), %index, %error,
                        "skipping a corrupt or incomplete snapshot");
                    skipped.push(SkippedSnapshot { index, error });
                }
                Err(e) => return Err(e),
            }
        }
        Err(SnapshotError::NoValidSnapshot { skipped })
    }

    /// The snapshot a restarting replica may recover its state machine
    /// from, given the first index its log still holds.
    ///
    /// The newest snapshot that passes `verify` is used. When newer ones
    /// are damaged, falling back to it is safe only if the log still holds
    /// every entry after it (`log_first_index <= index + 1`): the state
    /// machine then re-applies them and ends where the damaged snapshot
    /// would have put it. Otherwise the state those entries made is gone
    /// from this replica, and guessing would lose it silently: the result
    /// is [`SnapshotError::MustRebuild`], naming the shard, the replica and
    /// the damaged snapshot directories. The same holds when no snapshot is
    /// valid (or none exists) but the log was compacted.
    ///
    /// `Ok(None)`: no snapshot is needed, the log holds everything from
    /// index 1 (a new replica, or every snapshot damaged before the log
    /// was ever compacted; damaged ones are logged).
    pub fn load_for_restart(
        &self,
        log_first_index: Index,
        verify: Verify,
    ) -> Result<Option<LoadedSnapshot>> {
        self.load_for_restart_upto(Index(u64::MAX), log_first_index, verify)
    }

    /// As [`load_for_restart`](Self::load_for_restart), among the snapshots
    /// at or below `upto` only: the snapshot the log storage recorded last.
    /// A newer one in the store was committed but never recorded (a crash
    /// in between); the commit index the log storage holds may be below
    /// it, so a replica must not start from it.
    pub fn load_for_restart_upto(
        &self,
        upto: Index,
        log_first_index: Index,
        verify: Verify,
    ) -> Result<Option<LoadedSnapshot>> {
        let must_rebuild =
            |skipped: &[SkippedSnapshot], fallback: Option<Index>| SnapshotError::MustRebuild {
                shard: self.shard(),
                replica: self.replica(),
                damaged: skipped
                    .iter()
                    .map(|s| (s.index, self.snapshot_dir(s.index), s.error.to_string()))
                    .collect(),
                fallback,
                log_first_index,
            };
        let covers = |index: Index| log_first_index.0 <= index.0.saturating_add(1);
        match self.load_newest_upto(upto, verify) {
            Ok(loaded) if loaded.skipped.is_empty() || covers(loaded.info.meta.index) => {
                Ok(Some(loaded))
            }
            Ok(loaded) => Err(must_rebuild(&loaded.skipped, Some(loaded.info.meta.index))),
            Err(SnapshotError::NoSnapshot) if log_first_index.0 <= 1 => Ok(None),
            Err(SnapshotError::NoSnapshot) => Err(must_rebuild(&[], None)),
            Err(SnapshotError::NoValidSnapshot { skipped }) if log_first_index.0 <= 1 => {
                tracing::warn!(shard = %self.shard(), replica = %self.replica(), damaged = skipped.len(),
                    "every snapshot is damaged; the log holds every entry, so none is needed");
                Ok(None)
            }
            Err(SnapshotError::NoValidSnapshot { skipped }) => Err(must_rebuild(&skipped, None)),
            Err(e) => Err(e),
        }
    }

    /// Removes the snapshot at `index` (for example once the log was
    /// compacted past a newer one). Fails with `NotFound` if it is not there.
    pub fn remove(&self, index: Index) -> Result<()> {
        let _guard = self.shared.publish_lock.lock();
        if !self.shared.fs.exists(&self.snapshot_dir(index)) {
            return Err(SnapshotError::NotFound(index));
        }
        self.shared.remove_locked(index)
    }

    /// Keeps the newest `keep` snapshots whose structure is valid (see
    /// [`Verify::Structure`]) and removes every snapshot older than the
    /// oldest of those. Damaged snapshots newer than that are left for
    /// inspection, so a damaged newest snapshot never causes the removal of
    /// the valid one before it. Returns the removed indexes, newest first.
    pub fn keep_newest(&self, keep: usize) -> Result<Vec<Index>> {
        self.keep_newest_upto(keep, Index(u64::MAX))
    }

    /// [`SnapshotStore::keep_newest`] among the snapshots at or below
    /// `upto` (the snapshot the log storage records): those above it are
    /// left alone and do not count. A snapshot above the recorded one is
    /// one whose recording a crash cut off (never a restart point) or one
    /// being recorded now; counting it among the kept could remove the
    /// recorded one, which a restart needs once the log is compacted
    /// behind it.
    pub fn keep_newest_upto(&self, keep: usize, upto: Index) -> Result<Vec<Index>> {
        let mut valid = 0usize;
        let mut removed = Vec::new();
        for index in self.list()?.into_iter().filter(|i| *i <= upto) {
            if valid < keep {
                if self.shared.check_structure(index).is_ok() {
                    valid += 1;
                }
                continue;
            }
            match self.remove(index) {
                Ok(()) | Err(SnapshotError::NotFound(_)) => removed.push(index),
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.shared.dir)
            .field("shard", &self.shared.shard)
            .field("replica", &self.shared.replica)
            .finish()
    }
}

/// Creates `dir` and its missing parents, then fsyncs the parent of each
/// directory created so the new names survive a crash.
pub(crate) fn create_dir_durable(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || fs.exists(d) {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)
        .map_err(io_err("create directory", dir))?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)
                .map_err(io_err("fsync directory", parent))?;
        }
    }
    Ok(())
}
