//! Moving whole snapshots in and out of a store: export to and import from
//! an arbitrary directory, and receiving one in chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use longship_raft::Index;

use crate::vfs::FileSystem;

use super::error::{Result, SnapshotError};
use super::io::{SnapshotReader, copy_verified, read_meta_file};
use super::meta::SnapshotInfo;
use super::receiver::SnapshotReceiver;
use super::staging::Staging;
use super::store::{SnapshotStore, create_dir_durable};
use super::{DATA_FILE_NAME, META_FILE_NAME, snapshot_dir_name};

impl SnapshotStore {
    /// Exports the snapshot at `index` into `dest_dir` (created if needed)
    /// on the store's own file system; see [`export_to`](Self::export_to).
    pub fn export(&self, index: Index, dest_dir: &Path) -> Result<PathBuf> {
        self.export_to(index, self.shared().fs.clone(), dest_dir)
    }

    /// Exports the snapshot at `index` as the directory
    /// `dest_dir/snapshot-<index>` on `dest_fs`, written atomically like a
    /// commit. Every file's checksum is verified while it is copied, so a
    /// damaged snapshot is never exported. Returns the new directory, which
    /// [`import`](Self::import) accepts.
    ///
    /// Fails with `AlreadyExists` if that directory exists.
    pub fn export_to(
        &self,
        index: Index,
        dest_fs: Arc<dyn FileSystem>,
        dest_dir: &Path,
    ) -> Result<PathBuf> {
        let shared = self.shared();
        let info = shared.check_structure(index)?;
        create_dir_durable(&*dest_fs, dest_dir)?;
        let final_name = snapshot_dir_name(index);
        if dest_fs.exists(&dest_dir.join(&final_name)) {
            return Err(SnapshotError::AlreadyExists(index));
        }
        let temp_name = format!("{final_name}.tmp-export-{}", shared.next_id());
        let staging = Staging::create(dest_fs, dest_dir, &temp_name)?;
        copy_verified(
            shared.open_data(&info)?,
            staging.fs(),
            staging.file_path(DATA_FILE_NAME),
        )?;
        for f in &info.external_files {
            copy_verified(
                shared.open_external(&info, &f.name)?,
                staging.fs(),
                staging.file_path(&f.name),
            )?;
        }
        staging.seal(&info)?;
        staging.publish(&final_name)
    }

    /// Imports the snapshot directory `src_dir` (one written by
    /// [`export`](Self::export) or a committed snapshot directory of another
    /// store) from the store's own file system; see
    /// [`import_from`](Self::import_from).
    pub fn import(&self, src_dir: &Path) -> Result<SnapshotInfo> {
        let fs = self.shared().fs.clone();
        self.import_from(&*fs, src_dir)
    }

    /// Imports the snapshot directory `src_dir` on `src_fs` into this store.
    ///
    /// The source is validated fully while it is copied (metadata checksum,
    /// presence, length and checksum of every file it lists); files it does
    /// not list are ignored. The snapshot must belong to this store's shard;
    /// it is recorded as held by this store's replica. The import is atomic
    /// like a commit: on any failure nothing becomes visible.
    ///
    /// Fails with `AlreadyExists` if a valid snapshot at that index is
    /// already in the store.
    pub fn import_from(&self, src_fs: &dyn FileSystem, src_dir: &Path) -> Result<SnapshotInfo> {
        let shared = self.shared();
        if !src_fs.is_dir(src_dir) {
            return Err(SnapshotError::InvalidArgument(format!(
                "{} is not a directory",
                src_dir.display()
            )));
        }
        let mut info = read_meta_file(src_fs, &src_dir.join(META_FILE_NAME))?;
        if info.shard != shared.shard {
            return Err(SnapshotError::WrongShard {
                expected: shared.shard,
                found: info.shard,
            });
        }
        info.replica = shared.replica;
        let index = info.meta.index;
        shared.check_free(index)?;
        let staging = shared.new_staging(index)?;
        let data = SnapshotReader::open(
            src_fs,
            src_dir.join(DATA_FILE_NAME),
            info.data_size_bytes,
            info.data_crc32c,
        )?;
        copy_verified(data, staging.fs(), staging.file_path(DATA_FILE_NAME))?;
        for f in &info.external_files {
            let src = SnapshotReader::open(src_fs, src_dir.join(&f.name), f.size_bytes, f.crc32c)?;
            copy_verified(src, staging.fs(), staging.file_path(&f.name))?;
        }
        shared.publish(staging, &info)?;
        tracing::info!(shard = %shared.shard, replica = %shared.replica, %index,
            src = %src_dir.display(), "snapshot imported");
        Ok(info)
    }

    /// Starts receiving the snapshot described by `info` in chunks (see
    /// [`SnapshotReceiver`]). `info` is what the sender's metadata file
    /// records ([`SnapshotInfo::decode`] of its bytes); the snapshot must
    /// belong to this store's shard and is recorded as held by this store's
    /// replica.
    ///
    /// Fails with `EmptySnapshot` for index 0, `WrongShard`, `InvalidArgument`
    /// for metadata that breaks the invariants of [`SnapshotInfo`], and
    /// `AlreadyExists` if a valid snapshot at that index is already there.
    pub fn begin_receive(&self, mut info: SnapshotInfo) -> Result<SnapshotReceiver> {
        let shared = self.shared();
        if info.meta.is_empty() {
            return Err(SnapshotError::EmptySnapshot {
                path: shared.snapshot_dir(info.meta.index),
            });
        }
        if info.shard != shared.shard {
            return Err(SnapshotError::WrongShard {
                expected: shared.shard,
                found: info.shard,
            });
        }
        info.validate()?;
        info.replica = shared.replica;
        shared.check_free(info.meta.index)?;
        let staging = shared.new_staging(info.meta.index)?;
        SnapshotReceiver::new(shared.clone(), staging, info)
    }
}
