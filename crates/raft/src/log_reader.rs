//! Read access to the durable part of a replica's log.
//!
//! The core never writes storage: it hands entries to persist to its caller
//! in an [`Update`](crate::Update) and is told when they are durable. It reads
//! the durable log through this trait, which the storage crate implements.

use crate::entry::{Entry, SnapshotMeta};
use crate::ids::{Index, Term};

/// Why a log read failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The entry was compacted away (it is covered by a snapshot).
    #[error("log entry compacted")]
    Compacted,
    /// The entry is beyond the end of the durable log.
    #[error("log entry unavailable")]
    Unavailable,
    /// The storage failed to read. The core treats this as fatal.
    #[error("log storage failure: {0}")]
    Storage(String),
}

/// Read-only view of the durable log of one replica.
///
/// Invariants an implementation keeps: `first_index() == snapshot().index + 1`
/// once anything was compacted; `last_index() >= first_index() - 1`;
/// `term(snapshot().index)` is the snapshot's term; `term(Index(0))` is `Term(0)`.
pub trait LogReader {
    /// Index of the first entry still available.
    fn first_index(&self) -> Index;
    /// Index of the last durable entry (snapshot index if the log is empty).
    fn last_index(&self) -> Index;
    /// Term of the entry at `index`, valid for `first_index()-1 ..= last_index()`.
    fn term(&self, index: Index) -> Result<Term, LogError>;
    /// Entries in `[low, high)`, stopping once `max_bytes` (by
    /// [`Entry::size_bytes`]) would be exceeded but always returning at least
    /// one entry when the range is not empty.
    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, LogError>;
    /// Metadata of the most recent snapshot (empty if none).
    fn snapshot(&self) -> SnapshotMeta;
}

/// Forwards every method of [`LogReader`] through a pointer type.
macro_rules! forward_log_reader {
    ($($ptr:ty),*) => {$(
        impl<T: LogReader + ?Sized> LogReader for $ptr {
            fn first_index(&self) -> Index {
                (**self).first_index()
            }
            fn last_index(&self) -> Index {
                (**self).last_index()
            }
            fn term(&self, index: Index) -> Result<Term, LogError> {
                (**self).term(index)
            }
            fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
                (**self).entries(low, high, max_bytes)
            }
            fn snapshot(&self) -> SnapshotMeta {
                (**self).snapshot()
            }
        }
    )*};
}

forward_log_reader!(&T, std::sync::Arc<T>);
