//! Errors of the snapshot store.

use std::io;
use std::path::{Path, PathBuf};

use longship_raft::{Index, ReplicaId, ShardId};

/// What can go wrong in the snapshot store. Each variant is a case a caller
/// can act on.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The store holds no snapshot at all.
    #[error("no snapshot available")]
    NoSnapshot,
    /// The store holds snapshots but every one of them is corrupt or
    /// incomplete.
    #[error("no valid snapshot: {} snapshot(s) skipped as corrupt or incomplete", skipped.len())]
    NoValidSnapshot {
        /// The snapshots that were tried, newest first, with the reason each was refused.
        skipped: Vec<SkippedSnapshot>,
    },
    /// A snapshot that describes nothing: index 0, or an empty metadata file.
    #[error("empty snapshot at {}", path.display())]
    EmptySnapshot {
        /// The metadata file or snapshot directory concerned.
        path: PathBuf,
    },
    /// A checksum did not match the bytes it covers.
    #[error("checksum mismatch in {}: expected {expected:#010x}, computed {actual:#010x}", file.display())]
    ChecksumMismatch {
        /// The file whose content does not match its checksum.
        file: PathBuf,
        /// The checksum recorded for it.
        expected: u32,
        /// The checksum of the bytes found.
        actual: u32,
    },
    /// A file is structurally damaged: bad magic, impossible length, truncated,
    /// a missing file, bytes that do not decode.
    #[error("corrupt snapshot file {} at offset {offset}: {reason}", file.display())]
    Corruption {
        /// The damaged file (or directory, for a missing file).
        file: PathBuf,
        /// Byte offset of the damage within the file (0 when not applicable).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The requested snapshot does not exist.
    #[error("snapshot at index {0} not found")]
    NotFound(Index),
    /// A valid snapshot at this index already exists.
    #[error("snapshot at index {0} already exists")]
    AlreadyExists(Index),
    /// The snapshot belongs to another shard than this store.
    #[error("snapshot belongs to shard {found}, this store holds shard {expected}")]
    WrongShard {
        /// The store's shard.
        expected: ShardId,
        /// The shard named by the snapshot.
        found: ShardId,
    },
    /// A chunk arrived that does not continue the transfer where it stands.
    #[error(
        "snapshot chunk out of order: expected {expected_file} at offset {expected_offset}, got {file} at offset {offset}"
    )]
    ChunkOutOfOrder {
        /// The file the receiver expected a chunk of.
        expected_file: String,
        /// The offset it expected.
        expected_offset: u64,
        /// The file the chunk named.
        file: String,
        /// The offset the chunk named.
        offset: u64,
    },
    /// A transfer ended before every file was received in full.
    #[error("snapshot transfer incomplete: {file} has {received} of {expected} bytes")]
    Incomplete {
        /// The first file that is not complete.
        file: String,
        /// Bytes received for it.
        received: u64,
        /// Bytes announced for it.
        expected: u64,
    },
    /// A chunk would write past the size announced for its file.
    #[error("snapshot chunk for {file} ends at {end}, past its announced size {size}")]
    ChunkOverrun {
        /// The file the chunk named.
        file: String,
        /// The announced size of that file.
        size: u64,
        /// Where the chunk would end.
        end: u64,
    },
    /// An earlier write to this sink or receiver failed, so what it holds is
    /// unknown; it accepts nothing more and the snapshot must be written (or
    /// transferred) again.
    #[error("an earlier write failed; the snapshot must be written again")]
    Poisoned,
    /// The replica's state cannot be brought back from its own files: the
    /// newest snapshots are damaged and the log no longer holds the entries
    /// after the newest valid one (or there is none). Falling back would
    /// silently lose applied state; the replica must be rebuilt (removed
    /// and added again, or repaired from another replica's snapshot).
    #[error(
        "shard {shard} replica {replica} must be rebuilt: {}; the log starts at index {log_first_index}{}",
        describe_damaged(damaged),
        match fallback {
            Some(i) => format!(", so the valid snapshot at {i} cannot stand in for them"),
            None => ", and no valid snapshot is older".to_string(),
        }
    )]
    MustRebuild {
        /// The shard.
        shard: ShardId,
        /// The replica.
        replica: ReplicaId,
        /// The damaged snapshots, newest first: index, directory and why.
        damaged: Vec<(Index, PathBuf, String)>,
        /// The newest valid snapshot, if any.
        fallback: Option<Index>,
        /// First index the log still holds.
        log_first_index: Index,
    },
    /// The caller passed something unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An I/O operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn describe_damaged(damaged: &[(Index, PathBuf, String)]) -> String {
    if damaged.is_empty() {
        return "it has no snapshot".into();
    }
    let parts: Vec<String> = damaged
        .iter()
        .map(|(i, dir, why)| format!("snapshot {i} ({}) is damaged: {why}", dir.display()))
        .collect();
    parts.join("; ")
}

/// A snapshot that [`load_newest`](crate::snapshot::SnapshotStore::load_newest)
/// passed over, and why.
#[derive(Debug)]
pub struct SkippedSnapshot {
    /// Index the snapshot's directory is named by.
    pub index: Index,
    /// Why it was refused.
    pub error: SnapshotError,
}

impl SnapshotError {
    /// Whether the error says the snapshot's bytes are damaged (checksum,
    /// structure or an empty metadata file), as opposed to an I/O failure or
    /// a usage error.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            SnapshotError::ChecksumMismatch { .. }
                | SnapshotError::Corruption { .. }
                | SnapshotError::EmptySnapshot { .. }
        )
    }

    /// Recovers a `SnapshotError` carried through a `std::io::Error` (as the
    /// [`SnapshotReader`](crate::snapshot::SnapshotReader) must return it from
    /// `Read::read`); other I/O errors become [`SnapshotError::Io`].
    pub fn from_io(err: io::Error, op: &'static str, path: PathBuf) -> SnapshotError {
        match err.downcast::<SnapshotError>() {
            Ok(e) => e,
            Err(source) => SnapshotError::Io { op, path, source },
        }
    }

    /// Wraps the error in a `std::io::Error` (kind `InvalidData` for
    /// corruption, `Other` otherwise), for `Read`/`Write` implementations.
    pub fn into_io(self) -> io::Error {
        let kind = if self.is_corruption() {
            io::ErrorKind::InvalidData
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, self)
    }
}

/// Shorthand used throughout the module: attach an operation and path to an
/// I/O error (the path is copied only if there is an error).
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::from_io(source, op, path.to_path_buf())
}

/// The result type of the snapshot store.
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

impl From<SnapshotError> for crate::Error {
    /// Maps to the crate's error: damage of any kind (checksum, structure,
    /// an empty metadata file, every snapshot damaged) becomes
    /// `Corruption` with the file and offset; no snapshot becomes
    /// `NotFound`; a poisoned sink or receiver becomes `Failed`; I/O errors
    /// keep their kind and name the path; the rest is `InvalidArgument`.
    fn from(e: SnapshotError) -> crate::Error {
        use crate::Error;
        match e {
            SnapshotError::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file,
                offset,
                reason,
            },
            SnapshotError::ChecksumMismatch {
                ref file,
                expected,
                actual,
            } => Error::corruption(
                file,
                0,
                format!("checksum mismatch: expected {expected:#010x}, computed {actual:#010x}"),
            ),
            SnapshotError::EmptySnapshot { ref path } => {
                Error::corruption(path, 0, "empty snapshot")
            }
            SnapshotError::NoValidSnapshot { mut skipped } if !skipped.is_empty() => {
                match Error::from(skipped.remove(0).error) {
                    Error::Corruption {
                        file,
                        offset,
                        reason,
                    } => Error::Corruption {
                        file,
                        offset,
                        reason: format!("no valid snapshot; the newest is damaged: {reason}"),
                    },
                    other => other,
                }
            }
            SnapshotError::NoSnapshot
            | SnapshotError::NoValidSnapshot { .. }
            | SnapshotError::NotFound(_) => Error::NotFound,
            SnapshotError::Poisoned => Error::Failed(e.to_string()),
            SnapshotError::MustRebuild { ref damaged, .. } => {
                let file = damaged
                    .first()
                    .map(|(_, d, _)| d.clone())
                    .unwrap_or_default();
                Error::corruption(&file, 0, e.to_string())
            }
            SnapshotError::Io { op, path, source } => Error::io_at(source, op, &path),
            SnapshotError::AlreadyExists(_)
            | SnapshotError::WrongShard { .. }
            | SnapshotError::ChunkOutOfOrder { .. }
            | SnapshotError::ChunkOverrun { .. }
            | SnapshotError::Incomplete { .. }
            | SnapshotError::InvalidArgument(_) => Error::InvalidArgument(e.to_string()),
        }
    }
}
