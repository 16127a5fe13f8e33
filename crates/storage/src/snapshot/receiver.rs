//! Receiving a snapshot in chunks: [`SnapshotReceiver`].

use std::sync::Arc;

use super::DATA_FILE_NAME;
use super::error::{Result, SnapshotError};
use super::io::CrcFileWriter;
use super::meta::SnapshotInfo;
use super::staging::Staging;
use super::store::Shared;

/// Receives a snapshot as a sequence of chunks `(file, offset, bytes)` into
/// a temporary directory, and publishes it in the store only once every
/// file is complete and matches its checksum. Returned by
/// [`SnapshotStore::begin_receive`](super::SnapshotStore::begin_receive).
///
/// Chunks must come in transfer order: the data file ([`DATA_FILE_NAME`])
/// from offset 0 to its end, then each external file in the order the
/// metadata lists them, each from offset 0 to its end, every chunk starting
/// where the previous one ended. Empty files need no chunk. A file's
/// checksum is checked as soon as its last byte arrives.
///
/// Any refused chunk poisons the receiver: every later call fails with
/// [`SnapshotError::Poisoned`] and the transfer must start again with a new
/// receiver. Dropping a receiver (or [`abort`](Self::abort)) removes
/// everything received; nothing half-received is ever visible in the store.
pub struct SnapshotReceiver {
    shared: Arc<Shared>,
    staging: Staging,
    info: SnapshotInfo,
    /// The file being received: 0 is the data file, `i > 0` is external
    /// file `i - 1`; `file_count()` once everything was received.
    current: usize,
    /// Writer of file `current`; `None` only when `current == file_count()`.
    writer: Option<CrcFileWriter>,
    poisoned: bool,
}

impl SnapshotReceiver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        staging: Staging,
        info: SnapshotInfo,
    ) -> Result<SnapshotReceiver> {
        let mut r = SnapshotReceiver {
            shared,
            staging,
            info,
            current: 0,
            writer: None,
            poisoned: false,
        };
        r.writer = Some(r.create_writer(0)?);
        r.advance_past_complete()?;
        Ok(r)
    }

    /// The metadata of the snapshot being received (with this store's replica id).
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// The file and offset the next chunk must have, or `None` when every
    /// file was received and [`finish`](Self::finish) may be called.
    pub fn next_expected(&self) -> Option<(&str, u64)> {
        let w = self.writer.as_ref()?;
        Some((self.file(self.current).0, w.len()))
    }

    fn file_count(&self) -> usize {
        1 + self.info.external_files.len()
    }

    /// Name, size and checksum of file `i` in transfer order.
    fn file(&self, i: usize) -> (&str, u64, u32) {
        if i == 0 {
            (
                DATA_FILE_NAME,
                self.info.data_size_bytes,
                self.info.data_crc32c,
            )
        } else {
            let f = &self.info.external_files[i - 1];
            (&f.name, f.size_bytes, f.crc32c)
        }
    }

    fn create_writer(&self, i: usize) -> Result<CrcFileWriter> {
        let path = self.staging.file_path(self.file(i).0);
        CrcFileWriter::create(self.staging.fs(), path)
    }

    /// Finishes every file at and after `current` that has all its bytes
    /// (checking its checksum), stopping at the first incomplete one.
    fn advance_past_complete(&mut self) -> Result<()> {
        while let Some(w) = self.writer.take() {
            let (_, size, expected) = self.file(self.current);
            if w.len() < size {
                self.writer = Some(w);
                return Ok(());
            }
            let path = w.path().to_path_buf();
            let (_, actual) = w.finish()?;
            if actual != expected {
                return Err(SnapshotError::ChecksumMismatch {
                    file: path,
                    expected,
                    actual,
                });
            }
            self.current += 1;
            if self.current < self.file_count() {
                self.writer = Some(self.create_writer(self.current)?);
            }
        }
        Ok(())
    }

    /// Writes `bytes` at `offset` of `file`. Refused (and the receiver
    /// poisoned) with `ChunkOutOfOrder` unless the chunk continues exactly
    /// where the transfer stands, `ChunkOverrun` if it runs past the file's
    /// announced size, `ChecksumMismatch` if it completes a file whose
    /// checksum does not match.
    pub fn write_chunk(&mut self, file: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        if self.poisoned {
            return Err(SnapshotError::Poisoned);
        }
        let result = self.write_chunk_inner(file, offset, bytes);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn write_chunk_inner(&mut self, file: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let Some(w) = self.writer.as_ref() else {
            return Err(SnapshotError::ChunkOutOfOrder {
                expected_file: "<end of snapshot>".into(),
                expected_offset: 0,
                file: file.into(),
                offset,
            });
        };
        let (name, size, _) = self.file(self.current);
        if file != name || offset != w.len() {
            return Err(SnapshotError::ChunkOutOfOrder {
                expected_file: name.into(),
                expected_offset: w.len(),
                file: file.into(),
                offset,
            });
        }
        let end = offset.saturating_add(bytes.len() as u64);
        if end > size {
            return Err(SnapshotError::ChunkOverrun {
                file: file.into(),
                size,
                end,
            });
        }
        if let Some(w) = self.writer.as_mut() {
            w.write_all(bytes)?;
        }
        self.advance_past_complete()
    }

    /// Completes the transfer: every file must be complete (else
    /// `Incomplete`, and nothing is kept); then the snapshot is committed
    /// atomically like [`SnapshotSink::commit`](super::SnapshotSink::commit).
    /// Returns its metadata.
    pub fn finish(self) -> Result<SnapshotInfo> {
        if self.poisoned {
            return Err(SnapshotError::Poisoned);
        }
        if let Some(w) = &self.writer {
            let (name, size, _) = self.file(self.current);
            return Err(SnapshotError::Incomplete {
                file: name.into(),
                received: w.len(),
                expected: size,
            });
        }
        let SnapshotReceiver {
            shared,
            staging,
            info,
            ..
        } = self;
        shared.publish(staging, &info)?;
        tracing::info!(shard = %info.shard, replica = %info.replica, index = %info.meta.index,
            size_bytes = info.data_size_bytes, "snapshot received");
        Ok(info)
    }

    /// Abandons the transfer and removes everything received.
    pub fn abort(self) -> Result<()> {
        let SnapshotReceiver {
            staging, writer, ..
        } = self;
        drop(writer);
        staging.discard()
    }
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReceiver")
            .field("index", &self.info.meta.index)
            .field("next_expected", &self.next_expected())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}
