//! Writing a new snapshot: [`SnapshotSink`].

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use longship_raft::{Index, SnapshotMeta};

use super::DATA_FILE_NAME;
use super::error::{Result, SnapshotError, io_err};
use super::io::{CrcFileWriter, copy_from_reader};
use super::meta::{EXTERNAL_FILES_MAX, ExternalFile, SnapshotInfo, validate_external_name};
use super::staging::Staging;
use super::store::Shared;
use crate::vfs::File;

/// A snapshot being written, returned by
/// [`SnapshotStore::create`](super::SnapshotStore::create).
///
/// Write the state machine's data through `std::io::Write` (streamed to
/// disk, checksummed on the way), add external files if any, then
/// [`commit`](Self::commit). [`cancel`](Self::cancel) or dropping the sink
/// removes everything it wrote; until `commit` returns, nothing of the
/// snapshot is visible in the store.
///
/// If a write fails, the sink is poisoned: further writes and `commit` fail
/// with [`SnapshotError::Poisoned`].
pub struct SnapshotSink {
    shared: Arc<Shared>,
    staging: Staging,
    meta: SnapshotMeta,
    data_version: u32,
    data: CrcFileWriter,
    external_files: Vec<ExternalFile>,
    poisoned: bool,
}

impl SnapshotSink {
    pub(crate) fn new(
        shared: Arc<Shared>,
        staging: Staging,
        meta: SnapshotMeta,
        data_version: u32,
    ) -> Result<SnapshotSink> {
        let data = CrcFileWriter::create(staging.fs(), staging.file_path(DATA_FILE_NAME))?;
        Ok(SnapshotSink {
            shared,
            staging,
            meta,
            data_version,
            data,
            external_files: Vec::new(),
            poisoned: false,
        })
    }

    /// Index of the snapshot being written.
    pub fn index(&self) -> Index {
        self.meta.index
    }

    /// Data bytes written so far.
    pub fn data_size_bytes(&self) -> u64 {
        self.data.len()
    }

    /// Adds an external file `name` (see
    /// [`validate_external_name`](super::validate_external_name)) with the
    /// content `content` yields until its end; the file is checksummed and
    /// fsynced. Returns its length.
    pub fn write_external_file(&mut self, name: &str, content: &mut dyn Read) -> Result<u64> {
        if self.poisoned {
            return Err(SnapshotError::Poisoned);
        }
        validate_external_name(name)?;
        if self.external_files.iter().any(|f| f.name == name) {
            return Err(SnapshotError::InvalidArgument(format!(
                "external file {name:?} added twice"
            )));
        }
        if self.external_files.len() >= EXTERNAL_FILES_MAX as usize {
            return Err(SnapshotError::InvalidArgument(format!(
                "more than {EXTERNAL_FILES_MAX} external files"
            )));
        }
        let written = CrcFileWriter::create(self.staging.fs(), self.staging.file_path(name))
            .and_then(|mut w| {
                copy_from_reader(content, &mut w)?;
                w.finish()
            });
        match written {
            Ok((size_bytes, crc32c)) => {
                self.external_files.push(ExternalFile {
                    name: name.to_string(),
                    size_bytes,
                    crc32c,
                });
                Ok(size_bytes)
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Adds an external file `name` copied from the file at `src` on the
    /// store's file system (for example a file an on-disk state machine
    /// produced). Returns its length.
    pub fn copy_external_file(&mut self, name: &str, src: &Path) -> Result<u64> {
        let file = self.shared.fs.open_read(src).map_err(io_err("open", src))?;
        let mut reader = VfsFileReader { file, offset: 0 };
        self.write_external_file(name, &mut reader)
    }

    /// Makes the snapshot durable and visible, atomically: fsyncs the data,
    /// writes and fsyncs the metadata file (sizes and checksums of every
    /// file, and its own checksum), fsyncs the temporary directory, renames
    /// it to its final name and fsyncs the store directory.
    ///
    /// Returns the metadata as recorded. Fails with `AlreadyExists` if a
    /// valid snapshot at this index was committed meanwhile; on any failure
    /// the temporary directory is removed.
    pub fn commit(self) -> Result<SnapshotInfo> {
        if self.poisoned {
            return Err(SnapshotError::Poisoned);
        }
        let SnapshotSink {
            shared,
            staging,
            mut meta,
            data_version,
            data,
            external_files,
            ..
        } = self;
        let (data_size_bytes, data_crc32c) = data.finish()?;
        meta.file_size = data_size_bytes;
        let info = SnapshotInfo {
            shard: shared.shard,
            replica: shared.replica,
            meta,
            data_version,
            data_size_bytes,
            data_crc32c,
            external_files,
        };
        shared.publish(staging, &info)?;
        Ok(info)
    }

    /// Abandons the snapshot and removes everything written for it.
    pub fn cancel(self) -> Result<()> {
        let SnapshotSink { staging, data, .. } = self;
        drop(data);
        staging.discard()
    }
}

impl Write for SnapshotSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.poisoned {
            return Err(SnapshotError::Poisoned.into_io());
        }
        match self.data.write_all(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.poisoned = true;
                Err(e.into_io())
            }
        }
    }

    /// Buffered bytes reach the file at the latest in `commit`; durability
    /// comes only from `commit`, so there is nothing to do here.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sequential `Read` over a vfs file.
struct VfsFileReader {
    file: Box<dyn File>,
    offset: u64,
}

impl Read for VfsFileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(self.offset, buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl std::fmt::Debug for SnapshotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSink")
            .field("index", &self.meta.index)
            .field("data_size_bytes", &self.data.len())
            .field("external_files", &self.external_files.len())
            .finish_non_exhaustive()
    }
}
