//! A snapshot directory under construction: created under a temporary name,
//! published by an atomic rename, removed if dropped unpublished.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vfs::FileSystem;

use super::META_FILE_NAME;
use super::error::{Result, io_err};
use super::io::write_synced_file;
use super::meta::SnapshotInfo;

/// A temporary snapshot directory. Dropping it unpublished removes it (best
/// effort; whatever a crash leaves is removed when the store is opened).
pub(crate) struct Staging {
    fs: Arc<dyn FileSystem>,
    /// The directory the snapshot will be published in.
    parent: PathBuf,
    /// The temporary directory, a child of `parent`.
    temp: PathBuf,
    /// Set once the directory was renamed away or removed.
    done: bool,
}

impl Staging {
    /// Creates the temporary directory `parent/temp_name`.
    pub(crate) fn create(
        fs: Arc<dyn FileSystem>,
        parent: &Path,
        temp_name: &str,
    ) -> Result<Staging> {
        let temp = parent.join(temp_name);
        if fs.exists(&temp) {
            // A leftover with the same name (a previous store instance in this
            // process); it was never published, so it is garbage.
            fs.remove_dir_all(&temp).map_err(io_err("remove", &temp))?;
        }
        fs.create_dir_all(&temp)
            .map_err(io_err("create directory", &temp))?;
        Ok(Staging {
            fs,
            parent: parent.to_path_buf(),
            temp,
            done: false,
        })
    }

    /// Path of the file `name` inside the temporary directory.
    pub(crate) fn file_path(&self, name: &str) -> PathBuf {
        self.temp.join(name)
    }

    /// The file system the directory lives on.
    pub(crate) fn fs(&self) -> &dyn FileSystem {
        &*self.fs
    }

    /// Writes the metadata file and fsyncs it and the temporary directory:
    /// after this the directory's content is durable, only its name is not.
    /// Every other file must already be written and fsynced.
    pub(crate) fn seal(&self, info: &SnapshotInfo) -> Result<()> {
        let bytes = info.encode()?;
        write_synced_file(&*self.fs, &self.file_path(META_FILE_NAME), &bytes)?;
        self.fs
            .sync_dir(&self.temp)
            .map_err(io_err("fsync directory", &self.temp))
    }

    /// Renames the sealed directory to `final_name` in the parent and fsyncs
    /// the parent. The caller has made sure `final_name` is free.
    ///
    /// If the rename succeeded but the parent fsync fails, the snapshot is
    /// in place and complete but its name may not survive a crash; the error
    /// is returned all the same.
    pub(crate) fn publish(mut self, final_name: &str) -> Result<PathBuf> {
        let target = self.parent.join(final_name);
        self.fs
            .rename(&self.temp, &target)
            .map_err(io_err("rename", &self.temp))?;
        self.done = true;
        self.fs
            .sync_dir(&self.parent)
            .map_err(io_err("fsync directory", &self.parent))?;
        Ok(target)
    }

    /// Removes the temporary directory.
    pub(crate) fn discard(mut self) -> Result<()> {
        self.done = true;
        self.fs
            .remove_dir_all(&self.temp)
            .map_err(io_err("remove", &self.temp))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = self.fs.remove_dir_all(&self.temp)
        {
            tracing::warn!(dir = %self.temp.display(), error = %e,
                    "could not remove an unpublished snapshot directory; it is removed when the store is next opened");
        }
    }
}
