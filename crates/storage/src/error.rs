//! The error type of log storage.

use std::io;
use std::path::{Path, PathBuf};

use longship_raft::LogError;

/// What went wrong in log storage. Each variant is a case a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed. The message names the file.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// Stored bytes are damaged at `offset` of `file` (a checksum mismatch or
    /// an impossible record before the tail). Never repaired silently.
    #[error("corruption in {} at offset {offset}: {reason}", file.display())]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged record in `file`.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The requested entries were compacted away (they are covered by a
    /// snapshot or were removed with `remove_entries_to`).
    #[error("log entries compacted")]
    Compacted,
    /// The requested entries are beyond the end of the log.
    #[error("log entries unavailable")]
    Unavailable,
    /// Nothing is stored for the requested replica, file or snapshot.
    #[error("not found")]
    NotFound,
    /// The caller passed something invalid (a gap in appended entries, a
    /// zero shard id, ...). Nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier write or fsync failed, so what is on disk is unknown; the
    /// log storage refuses further work until it is reopened (which repairs
    /// or reports the tail).
    #[error("log storage failed earlier and must be reopened: {0}")]
    Failed(String),
    /// The log storage was closed.
    #[error("log storage closed")]
    Closed,
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error whose message names `path` and what was being done.
    pub fn io_at(e: io::Error, what: &str, path: &Path) -> Error {
        Error::Io(io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.display()),
        ))
    }

    /// A corruption report.
    pub fn corruption(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// Whether this is [`Error::Corruption`].
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }

    /// A copy of this error for another waiter of the same failed operation
    /// (I/O errors are not `Clone`; the copy keeps kind and message).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::Compacted => Error::Compacted,
            Error::Unavailable => Error::Unavailable,
            Error::NotFound => Error::NotFound,
            Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
            Error::Failed(s) => Error::Failed(s.clone()),
            Error::Closed => Error::Closed,
        }
    }
}

impl From<Error> for LogError {
    /// Maps to the core's read error: compacted and unavailable keep their
    /// meaning, everything else is a storage failure.
    fn from(e: Error) -> LogError {
        match e {
            Error::Compacted => LogError::Compacted,
            Error::Unavailable => LogError::Unavailable,
            other => LogError::Storage(other.to_string()),
        }
    }
}

impl From<LogError> for Error {
    fn from(e: LogError) -> Error {
        match e {
            LogError::Compacted => Error::Compacted,
            LogError::Unavailable => Error::Unavailable,
            LogError::Storage(s) => Error::Io(io::Error::other(s)),
        }
    }
}
